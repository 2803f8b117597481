//! Series completion: tracks open series and decides when each is complete.
//!
//! Walking-skeleton rule: a series is complete when no new instance has arrived
//! for `assemble.quiet_period_seconds` (the same rule as Orthanc's StableAge or
//! mercure's series timeout). Instances that arrive for a series after it was
//! completed re-open it as a new version (all instances of the series, old and
//! new, are assembled again), so a late instance never produces a partial
//! second result.
//!
//! The tracker is pure state (no threads, no clock of its own): the caller
//! passes `now`, which keeps it deterministic to test.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::pipeline::messages::InstanceStored;

/// A series whose quiet period has elapsed, ready for reassembly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedSeries {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    /// Version of this completion: 1 for the first, +1 for each re-opening by late instances.
    pub version: u32,
    /// Every instance file of the series known to the tracker, sorted.
    pub files: Vec<PathBuf>,
}

#[derive(Debug)]
struct OpenSeries {
    study_instance_uid: String,
    files: BTreeSet<PathBuf>,
    last_arrival: Instant,
    /// Whether an instance not yet part of a completed version arrived.
    dirty: bool,
}

/// Tracks open series and their completion (see module docs).
#[derive(Debug)]
pub struct SeriesTracker {
    quiet_period: Duration,
    series: HashMap<String, OpenSeries>,
    versions: HashMap<String, u32>,
}

impl SeriesTracker {
    /// A tracker completing series after `quiet_period` without new instances.
    pub fn new(quiet_period: Duration) -> Self {
        SeriesTracker { quiet_period, series: HashMap::new(), versions: HashMap::new() }
    }

    /// Record that a series already completed `version` times (restart recovery),
    /// so the next completion gets `version + 1`.
    pub fn set_completed_version(&mut self, series_instance_uid: &str, version: u32) {
        self.versions.insert(series_instance_uid.to_string(), version);
    }

    /// Register a stored instance at time `now`. A duplicate of a file already
    /// known does not restart the quiet period.
    pub fn on_instance(&mut self, msg: &InstanceStored, now: Instant) {
        let entry = self.series.entry(msg.series_instance_uid.clone()).or_insert_with(|| OpenSeries {
            study_instance_uid: msg.study_instance_uid.clone(),
            files: BTreeSet::new(),
            last_arrival: now,
            dirty: false,
        });
        if entry.files.insert(msg.path.clone()) {
            entry.last_arrival = now;
            entry.dirty = true;
        }
    }

    /// Number of series with instances not yet handed out as complete.
    pub fn open_count(&self) -> usize {
        self.series.values().filter(|s| s.dirty).count()
    }

    /// Earliest instant at which a currently open series becomes due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.series.values().filter(|s| s.dirty).map(|s| s.last_arrival + self.quiet_period).min()
    }

    /// Series whose quiet period has elapsed at `now`, each returned once per version.
    pub fn take_due(&mut self, now: Instant) -> Vec<CompletedSeries> {
        let quiet = self.quiet_period;
        self.take_where(|s| now.duration_since(s.last_arrival) >= quiet)
    }

    /// Every open series, due or not (used when input ends, e.g. `myonode process`).
    pub fn take_all(&mut self) -> Vec<CompletedSeries> {
        self.take_where(|_| true)
    }

    fn take_where(&mut self, due: impl Fn(&OpenSeries) -> bool) -> Vec<CompletedSeries> {
        let mut out = Vec::new();
        for (uid, s) in self.series.iter_mut() {
            if s.dirty && due(s) {
                s.dirty = false;
                let v = self.versions.entry(uid.clone()).or_insert(0);
                *v += 1;
                out.push(CompletedSeries {
                    study_instance_uid: s.study_instance_uid.clone(),
                    series_instance_uid: uid.clone(),
                    version: *v,
                    files: s.files.iter().cloned().collect(),
                });
            }
        }
        out.sort_by(|a, b| a.series_instance_uid.cmp(&b.series_instance_uid));
        out
    }

    /// Forget a series entirely (after it was quarantined: its files moved away).
    pub fn forget(&mut self, series_instance_uid: &str) {
        self.series.remove(series_instance_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn msg(series: &str, file: &str) -> InstanceStored {
        InstanceStored {
            study_instance_uid: "1.2".into(),
            series_instance_uid: series.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
            sop_instance_uid: file.into(),
            path: PathBuf::from(file),
            calling_ae_title: "SCU".into(),
            received_at: SystemTime::now(),
            duplicate: false,
        }
    }

    #[test]
    fn completes_after_quiet_period_only() {
        let t0 = Instant::now();
        let q = Duration::from_secs(10);
        let mut t = SeriesTracker::new(q);
        t.on_instance(&msg("1.1", "a"), t0);
        t.on_instance(&msg("1.1", "b"), t0 + Duration::from_secs(5));
        assert!(t.take_due(t0 + Duration::from_secs(14)).is_empty(), "quiet period restarts with each instance");
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(15)));
        let done = t.take_due(t0 + Duration::from_secs(15));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].files, vec![PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(done[0].version, 1);
        assert!(t.take_due(t0 + Duration::from_secs(100)).is_empty(), "handed out once");
    }

    #[test]
    fn late_instance_reopens_as_new_version_with_all_files() {
        let t0 = Instant::now();
        let mut t = SeriesTracker::new(Duration::from_secs(1));
        t.on_instance(&msg("1.1", "a"), t0);
        assert_eq!(t.take_due(t0 + Duration::from_secs(2))[0].version, 1);
        // a duplicate of a known file does not reopen
        t.on_instance(&msg("1.1", "a"), t0 + Duration::from_secs(3));
        assert!(t.take_due(t0 + Duration::from_secs(10)).is_empty());
        t.on_instance(&msg("1.1", "c"), t0 + Duration::from_secs(11));
        let d = t.take_due(t0 + Duration::from_secs(12));
        assert_eq!(d[0].version, 2);
        assert_eq!(d[0].files.len(), 2);
    }

    #[test]
    fn series_are_independent_and_take_all_flushes() {
        let t0 = Instant::now();
        let mut t = SeriesTracker::new(Duration::from_secs(5));
        t.on_instance(&msg("1.1", "a"), t0);
        t.on_instance(&msg("1.2", "b"), t0 + Duration::from_secs(4));
        let d = t.take_due(t0 + Duration::from_secs(6));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].series_instance_uid, "1.1");
        let rest = t.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].series_instance_uid, "1.2");
        assert_eq!(t.open_count(), 0);
    }
}
