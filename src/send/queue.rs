//! The delivery queue of one destination: attempts, exponential backoff, dead letters.
//!
//! Objects that failed wait in a delay queue ordered by their next attempt time, so one
//! object being retried does not hold back the others.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{error, info, warn};

use super::scu::c_store;
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
    rx: Receiver<QueueItem>,
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
                    Ok(p) => ready.push_back((p, 0)),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        if let Some((item, attempts)) = ready.pop_front() {
            health::busy();
            let span = tracing::info_span!("send", job = %item.job, destination = %dest.name);
            let retry = span.in_scope(|| attempt(&dest, &calling_ae, &spool, item.path.clone(), attempts, &mut report));
            if let Some((_, tried)) = retry {
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
                Ok(p) => ready.push_back((p, 0)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            },
            (false, due) => std::thread::sleep(wait(due)),
        }
    }
    info!(destination = %report.name, delivered = report.delivered, failed = report.failed, retries = report.retries, "send queue drained");
    report
}

/// One C-STORE attempt. Returns `Some((path, attempts_so_far))` if the object must be retried.
fn attempt(
    dest: &DestinationConfig,
    calling_ae: &str,
    spool: &Spool,
    path: PathBuf,
    previous_attempts: u32,
    report: &mut DestinationReport,
) -> Option<(PathBuf, u32)> {
    if !path.is_file() {
        // Already delivered or dead-lettered (queued twice), or removed by hand.
        warn!(destination = %dest.name, path = %path.display(), "object no longer in the outbox; skipped");
        return None;
    }
    let attempts = previous_attempts + 1;
    let outcome = c_store(dest, calling_ae, &path);
    let reason = match &outcome {
        Ok(status) if StatusKind::of(*status).is_completed() => {
            let status = *status;
            if status != 0 {
                warn!(destination = %dest.name, path = %path.display(), status = format!("{status:04X}H"), meaning = describe(status), "delivered with warning");
            } else {
                info!(destination = %dest.name, path = %path.display(), attempts, "delivered");
            }
            match spool.mark_sent(&dest.name, &path) {
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
        return Some((path, attempts));
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
    match spool.mark_failed(&dest.name, &path, &full) {
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
        tx.send(QueueItem { path: path.clone(), job: "1.2.840.99-v1".into() }).unwrap();
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
