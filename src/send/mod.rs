//! Send stage: delivers encoded objects from `spool/outbox/<destination>/` to the configured
//! destinations with the C-STORE SCU ([`scu`]).
//!
//! [`run`] reads [`Outbound`] messages and routes them to one queue (thread) per destination
//! ([`queue`]). An object leaves the outbox only after the destination answered success or
//! warning (moved to `sent/`); failures are retried with exponential backoff and finally
//! dead-lettered to `failed/` with a reason file. At start the outbox is scanned, so objects
//! left over by a previous run are delivered too.
//!
//! [`Outbound`]: crate::pipeline::messages::Outbound

pub mod queue;
pub mod scu;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info, warn};

pub use queue::DestinationReport;
pub use scu::{c_echo, c_echo_destination, c_store, c_store_many, MAX_OBJECTS_PER_ASSOCIATION};

/// Errors of the C-STORE / C-ECHO SCU.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The file to send could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a DICOM Part-10 file with usable File Meta Information (PS3.10 7.1).
    #[error("{} is not a usable DICOM Part-10 file: {message}", path.display())]
    NotPart10 {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Connecting, A-ASSOCIATE negotiation or rejection (A-ASSOCIATE-RJ, no accepted context).
    #[error("association with {address}: {source}")]
    Association {
        /// `host:port`.
        address: String,
        /// dicom-ul's error.
        #[source]
        source: Box<dicom_ul::association::Error>,
    },
    /// The destination accepted the SOP class only with transfer syntaxes the data set is not
    /// in and cannot be converted to without transcoding pixel data.
    #[error("destination {destination} accepted {sop_class_uid} only in {accepted:?}, not in {transfer_syntax} (transcoding not supported)")]
    TransferSyntaxNotAccepted {
        /// Destination name.
        destination: String,
        /// SOP class of the object.
        sop_class_uid: String,
        /// Transfer syntax of the object.
        transfer_syntax: String,
        /// Transfer syntaxes the destination accepted.
        accepted: Vec<String>,
    },
    /// Re-encoding between Explicit and Implicit VR Little Endian failed.
    #[error("re-encoding from {from} to {to}: {message}")]
    Transcode {
        /// Source transfer syntax.
        from: String,
        /// Target transfer syntax.
        to: String,
        /// The parser's or writer's message.
        message: String,
    },
    /// The destination accepted the association but none of the presentation contexts proposed
    /// for the object's SOP class (PS3.8 9.3.3.2 result "abstract-syntax-not-supported" or
    /// similar): it does not take this kind of object. Permanent: retrying cannot help.
    #[error("destination {destination} ({address}) accepts no presentation context for SOP class {sop_class_uid} (it does not store this kind of object)")]
    SopClassNotAccepted {
        /// Destination name.
        destination: String,
        /// `host:port`.
        address: String,
        /// The object's SOP Class UID.
        sop_class_uid: String,
    },
    /// DIMSE exchange failed (transport, timeout, protocol).
    #[error("DIMSE: {0}")]
    Dimse(#[from] crate::dimse::DimseError),
    /// The peer ended the association or sent an incomplete response.
    #[error("{0}")]
    UnexpectedEnd(String),
    /// The destination's TLS files (`tls.ca`, `tls.cert`, `tls.key`) cannot be used. Retried
    /// like a network error: the files may be fixed or rotated while the object waits.
    #[error("DICOM TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl SendError {
    /// `true` when trying again later cannot succeed without a change of the object or of the
    /// destination's configuration (unreadable file, not Part 10, SOP class or transfer syntax
    /// not accepted, re-encoding impossible). The send queue dead-letters such objects at
    /// once instead of retrying; network, association and DIMSE errors stay retryable.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SendError::ReadFile { .. }
                | SendError::NotPart10 { .. }
                | SendError::SopClassNotAccepted { .. }
                | SendError::TransferSyntaxNotAccepted { .. }
                | SendError::Transcode { .. }
        )
    }
}

/// The send stage: one queue (thread) per destination; objects leave the outbox only after
/// success/warning; retry with exponential backoff (`dest.retry_delay_seconds` doubling,
/// `dest.max_attempts` attempts), then `spool.mark_failed(..)` with a reason that names the
/// DIMSE status or the association error. Runs until `rx` disconnects and all queues are
/// drained. On start it first enqueues `spool.pending_outbox(dest)` (restart recovery).
///
/// An [`Outbound`](crate::pipeline::messages::Outbound) for an unknown destination is moved
/// to `failed/<destination>/` at once. Returns one [`DestinationReport`] per destination
/// (in configuration order). Blocking: run it on its own thread. With `health`, each
/// destination's thread registers a heartbeat named `send-<destination>` (idle while waiting,
/// busy during a delivery attempt; see [`crate::pipeline::health`]), so `/readyz` and the
/// systemd watchdog notice a destination thread that died or hangs.
pub fn run(
    rx: crossbeam_channel::Receiver<crate::pipeline::messages::Outbound>,
    destinations: Vec<crate::config::DestinationConfig>,
    calling_ae: String,
    spool: Arc<crate::spool::Spool>,
    health: Option<Arc<crate::pipeline::health::PipelineHealth>>,
) -> Vec<DestinationReport> {
    let mut senders: HashMap<String, crossbeam_channel::Sender<Vec<queue::QueueItem>>> = HashMap::new();
    let mut workers = Vec::new();
    let mut recovered: HashSet<PathBuf> = HashSet::new();
    let mut job_of: Option<HashMap<String, String>> = None;
    for dest in &destinations {
        let (tx, qrx) = crossbeam_channel::unbounded::<Vec<queue::QueueItem>>();
        let pending = spool.pending_outbox(&dest.name);
        if !pending.is_empty() {
            info!(destination = %dest.name, count = pending.len(), "re-queueing objects left in the outbox");
        }
        let mut left = Vec::with_capacity(pending.len());
        for p in pending {
            recovered.insert(p.clone());
            let jobs = job_of.get_or_insert_with(|| outbox_job_ids(spool.root()));
            let job = p.file_stem().and_then(|s| s.to_str()).and_then(|uid| jobs.get(uid)).cloned().unwrap_or_default();
            left.push(queue::QueueItem { path: p, job });
        }
        if !left.is_empty() {
            let _ = tx.send(left);
        }
        senders.insert(dest.name.clone(), tx);
        let d = dest.clone();
        let ae = calling_ae.clone();
        let sp = spool.clone();
        // each destination thread keeps its own heartbeat (`send-<name>` in /readyz and the
        // watchdog): a delivery stuck longer than node.stage_stall_seconds fails the check
        let hb = health.as_ref().map(|h| h.register(format!("send-{}", dest.name)));
        let handle = std::thread::Builder::new().name(format!("send-{}", dest.name)).spawn(move || {
            let _beat = hb.map(crate::pipeline::health::attach);
            queue::run_destination(d, ae, sp, qrx)
        });
        match handle {
            Ok(h) => workers.push((dest.name.clone(), Some(h))),
            Err(e) => {
                error!(destination = %dest.name, error = %e, "cannot start send thread");
                workers.push((dest.name.clone(), None));
            }
        }
    }
    // Everything already waiting is forwarded together (encode hands over the objects of a
    // job back to back), so each destination's queue can send them over one association.
    let mut incoming = crate::pipeline::health::iter(&rx);
    while let Some(first) = incoming.next() {
        let mut groups: HashMap<String, Vec<queue::QueueItem>> = HashMap::new();
        for o in std::iter::once(first).chain(rx.try_iter()) {
            if recovered.remove(&o.path) {
                continue; // already queued from the outbox scan
            }
            let _job = tracing::info_span!("send", job = %o.job_id, destination = %o.destination).entered();
            if senders.contains_key(&o.destination) {
                groups.entry(o.destination.clone()).or_default().push(queue::QueueItem { path: o.path, job: o.job_id });
            } else {
                warn!(destination = %o.destination, path = %o.path.display(), "unknown destination; dead-lettering");
                if let Err(e) = spool.mark_failed(&o.destination, &o.path, &format!("unknown destination `{}`", o.destination)) {
                    error!(error = %e, "cannot dead-letter object");
                }
            }
        }
        for (destination, items) in groups {
            let tx = &senders[&destination];
            if let Err(e) = tx.send(items) {
                for item in e.0 {
                    let _job = tracing::info_span!("send", job = %item.job, destination = %destination).entered();
                    error!(destination = %destination, path = %item.path.display(), "send queue is gone; object stays in the outbox");
                }
            }
        }
    }
    drop(senders);
    workers
        .into_iter()
        .map(|(name, h)| match h.map(|h| h.join()) {
            Some(Ok(report)) => report,
            Some(Err(_)) | None => {
                error!(destination = %name, "send thread failed");
                DestinationReport { name, ..Default::default() }
            }
        })
        .collect()
}

/// Job ids of the objects in the outbox, for objects re-queued at start: SOP Instance UID →
/// `job_id`, read from every `jobs/<job>/job.json` (each `sop_instance_uid` value in it, as
/// written by `encode`). Unreadable files are skipped; unknown objects get an empty job id.
fn outbox_job_ids(spool_root: &std::path::Path) -> HashMap<String, String> {
    fn collect(v: &serde_json::Value, job: &str, out: &mut HashMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("sop_instance_uid", serde_json::Value::String(uid)) => {
                            out.entry(uid.clone()).or_insert_with(|| job.to_string());
                        }
                        _ => collect(x, job, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, job, out)),
            _ => {}
        }
    }
    let mut out = HashMap::new();
    let Ok(dirs) = std::fs::read_dir(spool_root.join("jobs")) else { return out };
    for d in dirs.flatten() {
        let Ok(text) = std::fs::read_to_string(d.path().join("job.json")) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let job = v.get("job_id").and_then(|j| j.as_str()).map(str::to_string).unwrap_or_else(|| d.file_name().to_string_lossy().into_owned());
        collect(&v, &job, &mut out);
    }
    out
}
