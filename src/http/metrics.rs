//! Prometheus metrics of the node (`/metrics`), recorded through the `metrics` facade and
//! rendered in the Prometheus text exposition format (version 0.0.4) by
//! `metrics-exporter-prometheus`.
//!
//! Metric names (all prefixed `myonode_`; units in the name as Prometheus recommends):
//!
//! | name | type | labels | recorded at |
//! |---|---|---|---|
//! | `myonode_instances_received_total` | counter | `duplicate` | receive, after the instance is durable |
//! | `myonode_received_bytes_total` | counter | | receive (data set bytes as received) |
//! | `myonode_associations_total` | counter | | receive, association established |
//! | `myonode_series_completed_total` | counter | | encode, results in the outbox |
//! | `myonode_stage_duration_seconds` | histogram | `stage` | [`StageTimer`] in the stages |
//! | `myonode_queue_depth` | gauge | `queue` | sampled at each scrape ([`QueueDepths`]) |
//! | `myonode_jobs` | gauge | `state` | sampled at each scrape from `spool/jobs/` |
//! | `myonode_send_retries_total` | counter | `destination` | send, failed attempt that will be retried |
//! | `myonode_dead_letters_total` | counter | `destination` | send, object moved to `failed/` |
//! | `myonode_delivered_total` | counter | `destination` | send, object moved to `sent/` |

use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets of `myonode_stage_duration_seconds`, seconds: 1 ms … 30 min.
pub const STAGE_DURATION_BUCKETS_SECONDS: &[f64] =
    &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Errors of [`install`].
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Prometheus recorder could not be built or another global recorder is installed.
    #[error("installing the Prometheus metrics recorder: {0}")]
    Install(#[from] metrics_exporter_prometheus::BuildError),
}

/// Install the process-wide Prometheus recorder (once; later calls return the same handle).
///
/// # Errors
/// [`MetricsError::Install`] if a different global `metrics` recorder was installed first.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("myonode_stage_duration_seconds".into()),
            STAGE_DURATION_BUCKETS_SECONDS,
        )?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("myonode_instances_received_total", "C-STORE instances stored durably and acknowledged");
    describe_counter!("myonode_received_bytes_total", Unit::Bytes, "data set bytes of acknowledged C-STOREs");
    describe_counter!("myonode_associations_total", "associations established by callers");
    describe_counter!("myonode_series_completed_total", "series whose SEG and SR reached the outbox");
    describe_histogram!("myonode_stage_duration_seconds", Unit::Seconds, "time one job spent in a pipeline stage");
    describe_gauge!("myonode_queue_depth", "messages waiting in the channel in front of a stage");
    describe_gauge!("myonode_jobs", "jobs in spool/jobs/ by state");
    describe_counter!("myonode_send_retries_total", "failed C-STORE attempts to a destination that will be retried");
    describe_counter!("myonode_dead_letters_total", "objects moved to failed/ after the last attempt");
    describe_counter!("myonode_delivered_total", "objects delivered to a destination");
}

/// Count one acknowledged C-STORE of `bytes` data-set bytes (`duplicate`: already in the spool).
pub fn instance_received(bytes: usize, duplicate: bool) {
    metrics::counter!("myonode_instances_received_total", "duplicate" => if duplicate { "true" } else { "false" })
        .increment(1);
    metrics::counter!("myonode_received_bytes_total").increment(bytes as u64);
}

/// Records the wall time from its creation to its drop into
/// `myonode_stage_duration_seconds{stage=…}` (seconds). Create one per job at the top of a
/// stage's per-job work: `let _t = StageTimer::new("segment");`.
#[derive(Debug)]
pub struct StageTimer {
    stage: &'static str,
    started: Instant,
}

impl StageTimer {
    /// Start timing `stage` (`assemble`, `segment`, `measure`, `encode`, …).
    pub fn new(stage: &'static str) -> Self {
        StageTimer { stage, started: Instant::now() }
    }
}

impl Drop for StageTimer {
    fn drop(&mut self) {
        metrics::histogram!("myonode_stage_duration_seconds", "stage" => self.stage)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Samplers of the pipeline's channel lengths, named after the stage that reads the channel.
/// Set into `myonode_queue_depth{queue=…}` at each scrape.
#[derive(Default)]
pub struct QueueDepths {
    samplers: Vec<(&'static str, Box<dyn Fn() -> usize + Send + Sync>)>,
}

impl std::fmt::Debug for QueueDepths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.samplers.iter().map(|(n, _)| n)).finish()
    }
}

impl QueueDepths {
    /// Add the channel read by stage `name`. Holds a clone of the receiver, so call it only
    /// with channels whose readers live as long as the pipeline.
    pub fn add<T: Send + 'static>(&mut self, name: &'static str, rx: &crossbeam_channel::Receiver<T>) {
        let rx = rx.clone();
        self.samplers.push((name, Box::new(move || rx.len())));
    }

    /// Current depth of every channel, in the order added.
    pub fn sample(&self) -> Vec<(&'static str, usize)> {
        self.samplers.iter().map(|(n, f)| (*n, f())).collect()
    }

    /// Write the current depths into the `myonode_queue_depth` gauges.
    pub fn record(&self) {
        for (name, depth) in self.sample() {
            metrics::gauge!("myonode_queue_depth", "queue" => name).set(depth as f64);
        }
    }
}
