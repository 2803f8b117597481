//! The delivery queue of one destination: attempts, exponential backoff, dead letters.
//!
//! Objects that failed wait in a delay queue ordered by their next attempt time, so one
//! object being retried does not hold back the others. Objects ready at the same time (the
//! SEG and SR of a job, a backlog after an outage) are sent over one association, up to
//! [`MAX_OBJECTS_PER_ASSOCIATION`]; each keeps its own attempt count and outcome.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{debug, error, info, warn};

use super::scu::{c_store_many, MAX_OBJECTS_PER_ASSOCIATION};
use super::SendError;
use crate::config::DestinationConfig;
use crate::dimse::status::{describe, StatusKind};
use crate::pipeline::health;
use crate::spool::Spool;

/// What happened to the objects of one destination during [`super::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationReport {
    /// Destination name.
    pub name: String,
    /// Objects delivered (success or warning) and moved to `sent/`.
    pub delivered: u64,
    /// Objects dead-lettered to `failed/`.
    pub failed: u64,
    /// C-STORE attempts that failed and were retried later.
    pub retries: u64,
}

/// An object waiting for its next attempt.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Delayed {
    due: Instant,
    seq: u64,
    item: QueueItem,
    attempts: u32,
}

/// One object to deliver: its outbox file and the job that produced it (for the `job` span
/// of every send log line; empty when unknown).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct QueueItem {
    /// The Part-10 file in `outbox/<destination>/`.
    pub path: PathBuf,
    /// Job id (`<SeriesInstanceUID>-v<version>`), or empty.
    pub job: String,
}

/// Delay before attempt `attempts + 1`: `retry_delay_seconds · 2^(attempts − 1)`, capped at one hour.
pub fn backoff(retry_delay_seconds: f64, attempts: u32) -> Duration {
    let secs = retry_delay_seconds.max(0.0) * 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
    Duration::from_secs_f64(secs.min(3600.0))
}

/// Deliver everything arriving on `rx` to `dest` until `rx` disconnects and nothing waits for a retry.
pub(crate) fn run_destination(
    dest: DestinationConfig,
    calling_ae: String,
    spool: Arc<Spool>,
    rx: Receiver<Vec<QueueItem>>,
) -> DestinationReport {
    let mut report = DestinationReport { name: dest.name.clone(), ..Default::default() };
    let mut ready: VecDeque<(QueueItem, u32)> = VecDeque::new();
    let mut delayed: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut open = true;
    loop {
        let now = Instant::now();
        while delayed.peek().is_some_and(|d| d.0.due <= now) {
            let Reverse(d) = delayed.pop().expect("peeked");
            ready.push_back((d.item, d.attempts));
        }
        if open {
            loop {
                match rx.try_recv() {
                    Ok(items) => ready.extend(items.into_iter().map(|p| (p, 0))),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        if !ready.is_empty() {
            health::busy();
            // everything ready (the SEG and SR of a job, a backlog), up to the batch size, goes
            // over one association
            let n = ready.len().min(MAX_OBJECTS_PER_ASSOCIATION);
            let batch: Vec<(QueueItem, u32)> = ready.drain(..n).collect();
            for (item, tried) in attempt_batch(&dest, &calling_ae, &spool, &batch, &mut report) {
                seq += 1;
                let wait = backoff(dest.retry_delay_seconds, tried);
                delayed.push(Reverse(Delayed { due: Instant::now() + wait, seq, item, attempts: tried }));
            }
            continue;
        }
        // waiting (for work or for a retry): idle, with a heartbeat at least every HEARTBEAT_INTERVAL
        health::idle();
        let next_due = delayed.peek().map(|d| d.0.due);
        let wait = |due: Option<Instant>| {
            due.map_or(health::HEARTBEAT_INTERVAL, |d| d.saturating_duration_since(Instant::now()).min(health::HEARTBEAT_INTERVAL))
        };
        match (open, next_due) {
            (false, None) => break,
            (true, due) => match rx.recv_timeout(wait(due)) {
                Ok(items) => ready.extend(items.into_iter().map(|p| (p, 0))),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            },
            (false, due) => std::thread::sleep(wait(due)),
        }
    }
    info!(destination = %report.name, delivered = report.delivered, failed = report.failed, retries = report.retries, "send queue drained");
    report
}

/// One C-STORE attempt for each object of `batch` (item, attempts so far), all over one
/// association ([`c_store_many`]). Returns the items to retry with their attempt counts.
fn attempt_batch(
    dest: &DestinationConfig,
    calling_ae: &str,
    spool: &Spool,
    batch: &[(QueueItem, u32)],
    report: &mut DestinationReport,
) -> Vec<(QueueItem, u32)> {
    let mut todo: Vec<&(QueueItem, u32)> = Vec::with_capacity(batch.len());
    for entry in batch {
        if entry.0.path.is_file() {
            todo.push(entry);
        } else {
            // Already delivered or dead-lettered (queued twice), or removed by hand.
            let _span = tracing::info_span!("send", job = %entry.0.job, destination = %dest.name).entered();
            warn!(destination = %dest.name, path = %entry.0.path.display(), "object no longer in the outbox; skipped");
        }
    }
    if todo.is_empty() {
        return Vec::new();
    }
    let paths: Vec<&std::path::Path> = todo.iter().map(|(item, _)| item.path.as_path()).collect();
    if todo.len() > 1 {
        debug!(destination = %dest.name, objects = todo.len(), "sending over one association");
    }
    let outcome = c_store_many(dest, calling_ae, &paths);
    let mut retry = Vec::new();
    for (k, (item, previous_attempts)) in todo.into_iter().enumerate() {
        let result = match &outcome {
            Ok(results) => results[k].as_ref().map(|s| *s),
            Err(e) => Err(e),
        };
        let span = tracing::info_span!("send", job = %item.job, destination = %dest.name);
        if let Some(tried) = span.in_scope(|| settle(dest, spool, &item.path, previous_attempts + 1, result, report)) {
            retry.push((item.clone(), tried));
        }
    }
    retry
}

/// What one C-STORE attempt (the `attempts`-th) of the object at `path` leads to: moved to
/// `sent/` (success or warning), retried later (returns `Some(attempts)`), or dead-lettered to
/// `failed/` with a reason file once `max_attempts` are used up or the failure is permanent.
fn settle(
    dest: &DestinationConfig,
    spool: &Spool,
    path: &std::path::Path,
    attempts: u32,
    outcome: Result<u16, &SendError>,
    report: &mut DestinationReport,
) -> Option<u32> {
    let reason = match &outcome {
        Ok(status) if StatusKind::of(*status).is_completed() => {
            let status = *status;
            if status != 0 {
                warn!(destination = %dest.name, path = %path.display(), status = format!("{status:04X}H"), meaning = describe(status), "delivered with warning");
            } else {
                info!(destination = %dest.name, path = %path.display(), attempts, "delivered");
            }
            match spool.mark_sent(&dest.name, path) {
                Ok(_) => { report.delivered += 1; metrics::counter!("myonode_delivered_total", "destination" => dest.name.clone()).increment(1) }
                Err(e) => error!(destination = %dest.name, error = %e, "delivered but cannot move to sent/ (will be sent again after restart)"),
            }
            return None;
        }
        Ok(status) => format!("C-STORE-RSP status {status:04X}H ({})", describe(*status)),
        Err(e) => e.to_string(),
    };
    // Permanent failures are not retried: a rejected SOP class / transfer syntax, an unreadable
    // object, or the DIMSE status "Refused: SOP Class not supported" (0122H, PS3.4 B.2.3).
    let permanent = match &outcome {
        Ok(status) => *status == crate::dimse::status::REFUSED_SOP_CLASS_NOT_SUPPORTED,
        Err(e) => e.is_permanent(),
    };
    if attempts < dest.max_attempts && !permanent {
        report.retries += 1;
        metrics::counter!("myonode_send_retries_total", "destination" => dest.name.clone()).increment(1);
        warn!(destination = %dest.name, path = %path.display(), attempt = attempts, max_attempts = dest.max_attempts,
            retry_in_s = backoff(dest.retry_delay_seconds, attempts).as_secs_f64(), reason = %reason, "delivery failed; will retry");
        return Some(attempts);
    }
    let full = format!(
        "delivery to {} ({}@{}:{}) failed after {} attempt(s){}; last error: {}",
        dest.name,
        dest.ae_title,
        dest.host,
        dest.port,
        attempts,
        if permanent { " (permanent failure, not retried)" } else { "" },
        reason
    );
    error!(destination = %dest.name, path = %path.display(), reason = %full, "dead-lettering");
    match spool.mark_failed(&dest.name, path, &full) {
        Ok(_) => { report.failed += 1; metrics::counter!("myonode_dead_letters_total", "destination" => dest.name.clone()).increment(1) }
        Err(e) => error!(destination = %dest.name, error = %e, "cannot move object to failed/"),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log sink for one thread's subscriber.
    #[derive(Clone, Default)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_send_log_line_carries_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), false).unwrap());
        // not a Part-10 file: a permanent failure, dead-lettered at once (no network needed)
        let path = spool.put_outbox("d", "1.2.3.dcm", b"not dicom").unwrap();
        let dest = DestinationConfig {
            name: "d".into(),
            ae_title: "D".into(),
            host: "127.0.0.1".into(),
            port: 9,
            max_attempts: 3,
            retry_delay_seconds: 0.01,
            outputs: vec![crate::config::OutputKind::Sr],
            tls: None,
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(vec![QueueItem { path: path.clone(), job: "1.2.840.99-v1".into() }]).unwrap();
        drop(tx);
        let sink = Sink::default();
        let w = sink.clone();
        let sub = tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::DEBUG).with_writer(move || w.clone()).finish();
        let report = tracing::subscriber::with_default(sub, || run_destination(dest, "ME".into(), spool.clone(), rx));
        assert_eq!(report.failed, 1);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("1.2.3.dcm")).collect();
        assert!(!lines.is_empty(), "{text}");
        for l in lines {
            assert!(l.contains("job=1.2.840.99-v1"), "no job span: {l}");
        }
    }

    #[test]
    fn backoff_doubles() {
        assert_eq!(backoff(2.0, 1), Duration::from_secs(2));
        assert_eq!(backoff(2.0, 2), Duration::from_secs(4));
        assert_eq!(backoff(2.0, 4), Duration::from_secs(16));
        assert_eq!(backoff(0.1, 3), Duration::from_secs_f64(0.4));
        assert_eq!(backoff(10.0, 40), Duration::from_secs(3600));
    }
}
