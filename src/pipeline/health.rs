//! Liveness of the pipeline's stage threads, for the systemd watchdog ([`crate::node`]) and
//! `/readyz` ([`crate::http`]).
//!
//! Every stage thread started by [`super::Pipeline::start`] gets a [`StageHeartbeat`]
//! (attached to the thread, see [`attach`]). The stage loop reports through it:
//! - *idle*: waiting for its next input with a timeout of [`HEARTBEAT_INTERVAL`]
//!   ([`iter`] / [`idle`]), refreshing the heartbeat timestamp at every wake-up;
//! - *busy*: working on one item since a moment in time ([`iter`] marks the item it yields,
//!   [`busy`] marks explicitly), which includes waiting to hand the result on (backpressure);
//! - *exited* or *panicked*: the thread function returned or unwound (recorded by the guard
//!   of [`attach`], so it needs no cooperation from the stage).
//!
//! [`assess`] turns one stage's [`StageSnapshot`] into a [`StageProblem`] (or none):
//! a busy stage is only *stalled* after [`HealthLimits::stall`] (`node.stage_stall_seconds`,
//! generous: one inference of a large volume may take many minutes); an idle stage whose
//! heartbeat is older than [`HealthLimits::idle_silence`] is *silent* (its loop no longer
//! runs); a thread that ended while the node is not shutting down is a failure. The design
//! follows systemd's watchdog contract (sd_watchdog_enabled(3), systemd.service(5)
//! `WatchdogSec=`): the service keeps sending `WATCHDOG=1` only while it really works, so a
//! hung pipeline gets the unit restarted even though the tokio runtime still runs.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::Serialize;

/// How long an idle stage waits for input before it refreshes its heartbeat (and waits again).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Default [`HealthLimits::idle_silence`]: an idle stage refreshes its heartbeat every
/// [`HEARTBEAT_INTERVAL`]; 60 heartbeats missed means its loop is no longer running.
pub const DEFAULT_IDLE_SILENCE: Duration = Duration::from_secs(60);

/// Marker of `busy_since_ms`: the stage is idle.
const IDLE: u64 = u64::MAX;

/// Lifecycle of a stage thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    /// The thread function is running.
    Running,
    /// The thread function returned (normal at shutdown, a failure before).
    Exited,
    /// The thread unwound from a panic.
    Panicked,
}

impl StageState {
    fn from_u8(v: u8) -> StageState {
        match v {
            0 => StageState::Running,
            1 => StageState::Exited,
            _ => StageState::Panicked,
        }
    }
}

/// Limits of [`assess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthLimits {
    /// A stage busy on one item for longer than this is stalled (`node.stage_stall_seconds`).
    pub stall: Duration,
    /// An idle stage whose heartbeat is older than this is silent (default [`DEFAULT_IDLE_SILENCE`]).
    pub idle_silence: Duration,
}

impl HealthLimits {
    /// Limits with the given stall limit (seconds, > 0) and the default idle silence.
    pub fn with_stall_seconds(stall_seconds: f64) -> HealthLimits {
        HealthLimits { stall: Duration::from_secs_f64(stall_seconds.max(0.0)), idle_silence: DEFAULT_IDLE_SILENCE }
    }
}

/// The heartbeat of one stage thread: timestamps in milliseconds since the pipeline's start
/// (a monotonic clock, [`Instant`]), written by the stage thread, read by the monitor.
#[derive(Debug)]
pub struct StageHeartbeat {
    name: String,
    epoch: Instant,
    last_beat_ms: AtomicU64,
    busy_since_ms: AtomicU64,
    state: AtomicU8,
}

impl StageHeartbeat {
    fn new(name: String, epoch: Instant) -> StageHeartbeat {
        let hb = StageHeartbeat {
            name,
            epoch,
            last_beat_ms: AtomicU64::new(0),
            busy_since_ms: AtomicU64::new(IDLE),
            state: AtomicU8::new(0),
        };
        // starting up (recovery, loading) counts as busy until the loop first waits for input
        let now = hb.now_ms();
        hb.last_beat_ms.store(now, Ordering::Relaxed);
        hb.busy_since_ms.store(now, Ordering::Relaxed);
        hb
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The stage name (`assemble`, `segment#0`, `measure`, `encode`, `send`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stage is waiting for input: refresh the heartbeat, clear "busy".
    pub fn beat_idle(&self) {
        self.last_beat_ms.store(self.now_ms(), Ordering::Relaxed);
        self.busy_since_ms.store(IDLE, Ordering::Relaxed);
    }

    /// The stage starts working on an item now (unless it is busy already).
    pub fn start_busy(&self) {
        let now = self.now_ms();
        self.last_beat_ms.store(now, Ordering::Relaxed);
        let _ = self.busy_since_ms.compare_exchange(IDLE, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn finish(&self, panicked: bool) {
        self.last_beat_ms.store(self.now_ms(), Ordering::Relaxed);
        self.state.store(if panicked { 2 } else { 1 }, Ordering::Relaxed);
    }

    /// The state as seen now.
    pub fn snapshot(&self) -> StageSnapshot {
        let now = self.now_ms();
        let busy = self.busy_since_ms.load(Ordering::Relaxed);
        StageSnapshot {
            stage: self.name.clone(),
            state: StageState::from_u8(self.state.load(Ordering::Relaxed)),
            silent_for: Duration::from_millis(now.saturating_sub(self.last_beat_ms.load(Ordering::Relaxed))),
            busy_for: (busy != IDLE).then(|| Duration::from_millis(now.saturating_sub(busy))),
        }
    }
}

/// One stage's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSnapshot {
    /// Stage name, see [`StageHeartbeat::name`].
    pub stage: String,
    /// Thread lifecycle.
    pub state: StageState,
    /// Time since the last heartbeat.
    pub silent_for: Duration,
    /// `Some(t)`: busy on one item for `t`; `None`: idle (waiting for input).
    pub busy_for: Option<Duration>,
}

/// Why a stage is unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageProblem {
    /// The thread panicked.
    #[error("stage thread panicked")]
    Panicked,
    /// The thread ended although the node is not shutting down.
    #[error("stage thread exited")]
    Exited,
    /// Busy on one item for longer than [`HealthLimits::stall`].
    #[error("busy on one item for {:.0} s (limit {:.0} s)", busy_for.as_secs_f64(), limit.as_secs_f64())]
    Stalled {
        /// How long it has been busy.
        busy_for: Duration,
        /// The limit.
        limit: Duration,
    },
    /// Idle, but no heartbeat for longer than [`HealthLimits::idle_silence`].
    #[error("no heartbeat for {:.0} s while idle (limit {:.0} s)", silent_for.as_secs_f64(), limit.as_secs_f64())]
    Silent {
        /// Time since the last heartbeat.
        silent_for: Duration,
        /// The limit.
        limit: Duration,
    },
}

/// The health decision for one stage: `None` = healthy. A panicked thread is always a
/// failure; an exited one unless `stopping` (the pipeline is shutting down and stages end as
/// their input closes); a running one is stalled when busy longer than `limits.stall`, silent
/// when idle without heartbeat for longer than `limits.idle_silence`.
pub fn assess(s: &StageSnapshot, limits: &HealthLimits, stopping: bool) -> Option<StageProblem> {
    match s.state {
        StageState::Panicked => Some(StageProblem::Panicked),
        StageState::Exited if stopping => None,
        StageState::Exited => Some(StageProblem::Exited),
        StageState::Running => match s.busy_for {
            Some(busy_for) if busy_for > limits.stall => Some(StageProblem::Stalled { busy_for, limit: limits.stall }),
            Some(_) => None,
            None if s.silent_for > limits.idle_silence => {
                Some(StageProblem::Silent { silent_for: s.silent_for, limit: limits.idle_silence })
            }
            None => None,
        },
    }
}

/// One stage in a [`PipelineHealth::report`].
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub stage: String,
    /// Thread lifecycle.
    pub state: StageState,
    /// Seconds busy on the current item; `None` when idle.
    pub busy_seconds: Option<f64>,
    /// Seconds since the last heartbeat.
    pub heartbeat_age_seconds: f64,
    /// `None` = healthy; otherwise why not (text of [`StageProblem`]).
    pub problem: Option<String>,
}

/// The heartbeats of every stage thread of a pipeline, and the limits to judge them by.
#[derive(Debug)]
pub struct PipelineHealth {
    epoch: Instant,
    limits: HealthLimits,
    stages: Mutex<Vec<Arc<StageHeartbeat>>>,
    stopping: AtomicBool,
}

impl PipelineHealth {
    /// No stages yet; judged by `limits`.
    pub fn new(limits: HealthLimits) -> PipelineHealth {
        PipelineHealth { epoch: Instant::now(), limits, stages: Mutex::new(Vec::new()), stopping: AtomicBool::new(false) }
    }

    /// The limits.
    pub fn limits(&self) -> HealthLimits {
        self.limits
    }

    /// A new heartbeat for a stage named `name` (starts busy: the stage is starting up).
    pub fn register(&self, name: impl Into<String>) -> Arc<StageHeartbeat> {
        let hb = Arc::new(StageHeartbeat::new(name.into(), self.epoch));
        self.stages.lock().unwrap_or_else(|e| e.into_inner()).push(hb.clone());
        hb
    }

    /// The pipeline is shutting down: stages that exit from now on are not failures.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::begin_shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Snapshots of every stage, in registration order.
    pub fn snapshots(&self) -> Vec<StageSnapshot> {
        self.stages.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|s| s.snapshot()).collect()
    }

    /// The unhealthy stages now (empty = healthy), with [`assess`].
    pub fn problems(&self) -> Vec<(String, StageProblem)> {
        let stopping = self.is_stopping();
        self.snapshots()
            .into_iter()
            .filter_map(|s| assess(&s, &self.limits, stopping).map(|p| (s.stage, p)))
            .collect()
    }

    /// Every stage with its state and problem (for `/readyz`).
    pub fn report(&self) -> Vec<StageReport> {
        let stopping = self.is_stopping();
        self.snapshots()
            .into_iter()
            .map(|s| StageReport {
                problem: assess(&s, &self.limits, stopping).map(|p| p.to_string()),
                busy_seconds: s.busy_for.map(|d| d.as_secs_f64()),
                heartbeat_age_seconds: s.silent_for.as_secs_f64(),
                state: s.state,
                stage: s.stage,
            })
            .collect()
    }
}

/// Decides, at each watchdog tick, whether to send `WATCHDOG=1`, and logs changes of the
/// pipeline's health: an error naming each stage that becomes unhealthy, an info line when
/// all are healthy again.
#[derive(Debug, Default)]
pub struct WatchdogGate {
    failing: Vec<String>,
}

impl WatchdogGate {
    /// Judge `health` now; `true` = healthy, ping the watchdog.
    pub fn tick(&mut self, health: &PipelineHealth) -> bool {
        let problems = health.problems();
        for (stage, p) in &problems {
            if !self.failing.contains(stage) {
                tracing::error!(stage = %stage, problem = %p, "pipeline stage unhealthy; no more watchdog pings (systemd restarts the node)");
            }
        }
        let now: Vec<String> = problems.into_iter().map(|(s, _)| s).collect();
        if now.is_empty() && !self.failing.is_empty() {
            tracing::info!(stages = ?self.failing, "pipeline stages healthy again");
        }
        self.failing = now;
        self.failing.is_empty()
    }

    /// The stages found unhealthy at the last [`Self::tick`].
    pub fn failing(&self) -> &[String] {
        &self.failing
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<StageHeartbeat>>> = const { RefCell::new(None) };
}

/// Attaches `hb` to the current thread (for [`iter`], [`idle`], [`busy`]) until the returned
/// guard drops; the guard records the thread's end in `hb` ([`StageState::Exited`], or
/// [`StageState::Panicked`] when dropped while unwinding). Keep the guard alive for the whole
/// thread function.
pub fn attach(hb: Arc<StageHeartbeat>) -> StageGuard {
    CURRENT.with(|c| *c.borrow_mut() = Some(hb.clone()));
    StageGuard(hb)
}

/// See [`attach`].
#[derive(Debug)]
pub struct StageGuard(Arc<StageHeartbeat>);

impl Drop for StageGuard {
    fn drop(&mut self) {
        self.0.finish(std::thread::panicking());
        let _ = CURRENT.try_with(|c| c.borrow_mut().take());
    }
}

fn with_current(f: impl FnOnce(&StageHeartbeat)) {
    let _ = CURRENT.try_with(|c| {
        if let Some(hb) = c.borrow().as_ref() {
            f(hb)
        }
    });
}

/// Mark the current stage thread idle (waiting for input) and refresh its heartbeat.
/// A no-op on a thread without [`attach`].
pub fn idle() {
    with_current(StageHeartbeat::beat_idle);
}

/// Mark the current stage thread busy from now (unless it is busy already). A no-op on a
/// thread without [`attach`].
pub fn busy() {
    with_current(StageHeartbeat::start_busy);
}

/// Iterate over `rx` like `for x in rx`, with heartbeats: each `next()` marks the current
/// stage idle, waits with [`Receiver::recv_timeout`] ([`HEARTBEAT_INTERVAL`]) refreshing the
/// heartbeat at every timeout, and marks the stage busy from the moment an item arrives until
/// the next `next()`. Ends when `rx` is disconnected and empty.
pub fn iter<T>(rx: &Receiver<T>) -> HeartbeatIter<'_, T> {
    HeartbeatIter { rx }
}

/// See [`iter`].
#[derive(Debug)]
pub struct HeartbeatIter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for HeartbeatIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        loop {
            idle();
            match self.rx.recv_timeout(HEARTBEAT_INTERVAL) {
                Ok(item) => {
                    busy();
                    return Some(item);
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    busy(); // finishing (draining, joining workers) until the thread ends
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(state: StageState, silent_s: u64, busy_s: Option<u64>) -> StageSnapshot {
        StageSnapshot {
            stage: "segment#0".into(),
            state,
            silent_for: Duration::from_secs(silent_s),
            busy_for: busy_s.map(Duration::from_secs),
        }
    }

    const LIMITS: HealthLimits = HealthLimits { stall: Duration::from_secs(3600), idle_silence: Duration::from_secs(60) };

    #[test]
    fn long_busy_item_is_healthy_until_the_stall_limit() {
        // a 50-minute inference: no heartbeat for 50 minutes, still healthy
        assert_eq!(assess(&snap(StageState::Running, 3000, Some(3000)), &LIMITS, false), None);
        assert_eq!(assess(&snap(StageState::Running, 3600, Some(3600)), &LIMITS, false), None);
        assert_eq!(
            assess(&snap(StageState::Running, 3601, Some(3601)), &LIMITS, false),
            Some(StageProblem::Stalled { busy_for: Duration::from_secs(3601), limit: LIMITS.stall })
        );
        // a stall is a stall during shutdown too
        assert!(assess(&snap(StageState::Running, 4000, Some(4000)), &LIMITS, true).is_some());
    }

    #[test]
    fn idle_stage_must_keep_beating() {
        assert_eq!(assess(&snap(StageState::Running, 1, None), &LIMITS, false), None);
        assert_eq!(assess(&snap(StageState::Running, 60, None), &LIMITS, false), None);
        assert_eq!(
            assess(&snap(StageState::Running, 61, None), &LIMITS, false),
            Some(StageProblem::Silent { silent_for: Duration::from_secs(61), limit: LIMITS.idle_silence })
        );
    }

    #[test]
    fn ended_threads() {
        assert_eq!(assess(&snap(StageState::Panicked, 0, None), &LIMITS, false), Some(StageProblem::Panicked));
        assert_eq!(assess(&snap(StageState::Panicked, 0, None), &LIMITS, true), Some(StageProblem::Panicked));
        assert_eq!(assess(&snap(StageState::Exited, 0, None), &LIMITS, false), Some(StageProblem::Exited));
        assert_eq!(assess(&snap(StageState::Exited, 9999, Some(9999)), &LIMITS, true), None);
    }

    #[test]
    fn problems_name_the_stage_in_their_text() {
        let p = StageProblem::Stalled { busy_for: Duration::from_secs(4000), limit: Duration::from_secs(3600) };
        assert_eq!(p.to_string(), "busy on one item for 4000 s (limit 3600 s)");
    }

    /// Real threads: an idle stage iterating with heartbeats stays healthy, a busy one
    /// becomes stalled past a (tiny) limit, a panicking and an exiting one are reported, and
    /// the watchdog gate stops pinging while any is unhealthy.
    #[test]
    fn threads_report_idle_busy_exit_and_panic() {
        let health = Arc::new(PipelineHealth::new(HealthLimits { stall: Duration::ZERO, idle_silence: Duration::from_secs(60) }));
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            let hb = health.register(name);
            std::thread::spawn(move || {
                let _g = attach(hb);
                f()
            })
        };
        // idle: waits on a channel with heartbeats; busy: takes one item and blocks on it
        let (idle_tx, idle_rx) = crossbeam_channel::bounded::<u32>(1);
        let (busy_tx, busy_rx) = crossbeam_channel::bounded::<u32>(1);
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
        let (took_tx, took_rx) = crossbeam_channel::bounded::<()>(1);
        let idle_t = spawn("idle", Box::new(move || for _ in iter(&idle_rx) {}));
        let busy_t = spawn(
            "busy",
            Box::new(move || {
                for _ in iter(&busy_rx) {
                    took_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                }
            }),
        );
        busy_tx.send(1).unwrap();
        took_rx.recv().unwrap();
        // the idle stage has entered its wait (iter marks it idle first)
        while health.snapshots()[0].busy_for.is_some() {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(5)); // busy_for > 0 = the zero stall limit
        let problems = health.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "busy");
        assert!(matches!(problems[0].1, StageProblem::Stalled { .. }));
        let mut gate = WatchdogGate::default();
        assert!(!gate.tick(&health), "no ping while a stage is stalled");
        assert_eq!(gate.failing(), ["busy".to_string()]);
        release_tx.send(()).unwrap();
        // after the item the busy stage waits again: healthy, pings resume
        while health.snapshots()[1].busy_for.is_some() {
            std::thread::yield_now();
        }
        assert!(gate.tick(&health), "{:?}", health.problems());

        // a stage that panics, and one whose input closes before shutdown
        let p = spawn("panics", Box::new(|| panic!("test panic in a stage")));
        assert!(p.join().is_err());
        drop(idle_tx);
        idle_t.join().unwrap();
        let problems = health.problems();
        assert_eq!(
            problems.iter().map(|(s, p)| (s.as_str(), p.clone())).collect::<Vec<_>>(),
            [("idle", StageProblem::Exited), ("panics", StageProblem::Panicked)]
        );
        assert!(!gate.tick(&health));
        // at shutdown, exits are expected; the panic stays a failure
        health.begin_shutdown();
        drop(busy_tx);
        busy_t.join().unwrap();
        let report = health.report();
        assert_eq!(report.len(), 3);
        assert!(report[0].problem.is_none() && report[1].problem.is_none(), "{report:?}");
        assert_eq!(report[2].problem.as_deref(), Some("stage thread panicked"));
        assert_eq!(report[2].state, StageState::Panicked);
    }

    #[test]
    fn helpers_are_no_ops_without_a_stage() {
        idle();
        busy();
        let (tx, rx) = crossbeam_channel::bounded::<u8>(1);
        tx.send(7).unwrap();
        drop(tx);
        assert_eq!(iter(&rx).collect::<Vec<_>>(), [7]);
    }
}
