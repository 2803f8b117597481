//! Series completion: tracks open series and decides when each is complete.
//!
//! DICOM has no "end of series" message (PS3.4 Annex B stores instances one by one), so a
//! series is complete at the FIRST of these events ([`CompletionPolicy`], `[assemble]` config):
//!
//! 1. **expected count** — the number of images its headers announce has arrived:
//!    ImagesInAcquisition (0020,1002) when every instance states the same value, else for an
//!    enhanced multi-frame object its NumberOfFrames (0028,0008) (one such object holds the
//!    whole stack). Images are counted as frames (1 per single-frame instance). The rule
//!    fires when exactly that many arrived; once MORE arrive than announced (ImagesInAcquisition
//!    of one of several acquisitions, headers copied from another series), the count is known
//!    wrong and the rule no longer applies to the series, so the rules below complete it — one
//!    new version, not one per further instance;
//! 2. **association end** — the association that delivered its instances ended (release,
//!    abort, connection loss) and `association_end_grace` passed without a new instance;
//! 3. **quiet period** — no new instance for `quiet_period` (Orthanc's StableAge, mercure's
//!    series timeout);
//! 4. **maximum wait** — `max_wait` after its first instance, even if instances keep coming.
//!
//! Instances that arrive for a series after it was completed re-open it as a new version
//! (all instances of the series, old and new, are assembled again), so a late instance never
//! produces a partial second result.
//!
//! The tracker is pure state (no threads, no clock of its own): the caller
//! passes `now`, which keeps it deterministic to test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;

use crate::config::AssembleConfig;
use crate::pipeline::messages::{AssociationEnded, InstanceStored};

/// Which completion rule fired for a series (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionReason {
    /// The image count announced by the headers arrived.
    ExpectedCount,
    /// The delivering association ended and its grace period passed.
    AssociationEnded,
    /// No new instance for the quiet period.
    QuietPeriod,
    /// The maximum wait since the first instance elapsed.
    MaxWait,
    /// Input ended (offline `myonode process`): everything open is complete.
    InputEnded,
}

impl CompletionReason {
    /// Lower-case name for logs (`expected_count`, `association_ended`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            CompletionReason::ExpectedCount => "expected_count",
            CompletionReason::AssociationEnded => "association_ended",
            CompletionReason::QuietPeriod => "quiet_period",
            CompletionReason::MaxWait => "max_wait",
            CompletionReason::InputEnded => "input_ended",
        }
    }
}

/// When a series counts as complete; built from `[assemble]` by [`CompletionPolicy::from_config`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompletionPolicy {
    /// Complete after this long without a new instance.
    pub quiet_period: Duration,
    /// Complete this long after the delivering association ended; `None` = rule off.
    pub association_end_grace: Option<Duration>,
    /// Complete when the announced image count arrived.
    pub expected_count: bool,
    /// Complete at the latest this long after the first instance of the version; `None` = no limit.
    pub max_wait: Option<Duration>,
}

impl CompletionPolicy {
    /// Quiet period only (the other rules off).
    pub fn quiet_only(quiet_period: Duration) -> Self {
        CompletionPolicy { quiet_period, association_end_grace: None, expected_count: false, max_wait: None }
    }

    /// The policy of an `[assemble]` section (values validated by `Config::validate`).
    pub fn from_config(cfg: &AssembleConfig) -> Self {
        CompletionPolicy {
            quiet_period: Duration::from_secs_f64(cfg.quiet_period_seconds),
            association_end_grace: cfg
                .complete_on_association_end
                .then(|| Duration::from_secs_f64(cfg.association_end_grace_seconds)),
            expected_count: cfg.complete_on_expected_count,
            max_wait: Some(Duration::from_secs_f64(cfg.max_wait_seconds)),
        }
    }
}

/// What an instance's header says about the series' size (see [`instance_hints`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceHints {
    /// Images (frames) this instance holds: NumberOfFrames (0028,0008), 1 when absent.
    pub images: u32,
    /// Images the whole series is expected to hold, if the header states it
    /// (ImagesInAcquisition (0020,1002); else NumberOfFrames of a multi-frame object).
    pub expected_images: Option<u32>,
}

impl Default for InstanceHints {
    fn default() -> Self {
        InstanceHints { images: 1, expected_images: None }
    }
}

/// Read the completion hints of one stored Part-10 file (header only, up to PixelData).
/// An unreadable file or unusable values give the default (1 image, nothing expected):
/// hints only ever make completion earlier, never block it.
pub fn instance_hints(path: &Path) -> InstanceHints {
    let Ok(file) = dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(path) else {
        return InstanceHints::default();
    };
    let int = |tag| file.get(tag).and_then(|e| e.to_int::<i64>().ok());
    InstanceHints::from_counts(int(tags::NUMBER_OF_FRAMES), int(tags::IMAGES_IN_ACQUISITION))
}

impl InstanceHints {
    /// The hints from NumberOfFrames (0028,0008) and ImagesInAcquisition (0020,1002) as
    /// integers (`None`: absent or unreadable); values outside 1..=u32::MAX count as absent.
    pub fn from_counts(number_of_frames: Option<i64>, images_in_acquisition: Option<i64>) -> InstanceHints {
        let valid = |v: Option<i64>| v.filter(|v| *v > 0 && *v <= u32::MAX as i64).map(|v| v as u32);
        let frames = valid(number_of_frames);
        let images = frames.unwrap_or(1);
        let expected_images = valid(images_in_acquisition).or(frames.filter(|n| *n > 1));
        InstanceHints { images, expected_images }
    }

    /// The hints from the raw top-level values of NumberOfFrames and ImagesInAcquisition as the
    /// C-STORE path's structural scan found them (`receive::scan::COUNT_TAGS`: value bytes and
    /// VR), without a second read of the stored file; equal to [`instance_hints`] of that file.
    /// An IS value is read as dicom-rs reads it (first value, whitespace and NUL trimmed, decimal
    /// integer; PS3.5 6.2 IS); a present value of any other VR gives `None` (the caller then
    /// falls back to [`instance_hints`]).
    pub fn from_received_values(values: [Option<(&[u8], [u8; 2])>; 2]) -> Option<InstanceHints> {
        let mut ints = [None; 2];
        for (slot, value) in ints.iter_mut().zip(values) {
            let Some((bytes, vr)) = value else { continue };
            if &vr != b"IS" {
                return None;
            }
            *slot = std::str::from_utf8(bytes).ok().and_then(|s| {
                s.split('\\').next().unwrap_or("").trim_matches(|c: char| c.is_whitespace() || c == '\0').parse::<i64>().ok()
            });
        }
        Some(InstanceHints::from_counts(ints[0], ints[1]))
    }
}

/// A series that is complete, ready for reassembly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedSeries {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    /// Version of this completion: 1 for the first, +1 for each re-opening by late instances.
    pub version: u32,
    /// Every instance file of the series known to the tracker, sorted.
    pub files: Vec<PathBuf>,
    /// The rule that completed it.
    pub reason: CompletionReason,
}

#[derive(Debug)]
struct OpenSeries {
    study_instance_uid: String,
    /// Instance files and the images (frames) each holds.
    files: std::collections::BTreeMap<PathBuf, u32>,
    /// First arrival of the current (dirty) version.
    first_arrival: Instant,
    last_arrival: Instant,
    /// Due time from the end of the delivering association (cleared by a newer instance).
    association_due: Option<Instant>,
    /// Expected image count, `Err(())` once instances disagreed about it.
    expected: Option<Result<u32, ()>>,
    /// Whether an instance not yet part of a completed version arrived.
    dirty: bool,
}

impl OpenSeries {
    fn images(&self) -> u64 {
        self.files.values().map(|&n| n as u64).sum()
    }

    /// The earliest rule deadline and its reason (only meaningful while dirty).
    fn deadline(&self, p: &CompletionPolicy) -> (Instant, CompletionReason) {
        let mut best = (self.last_arrival + p.quiet_period, CompletionReason::QuietPeriod);
        let mut consider = |t: Instant, r: CompletionReason| {
            if t < best.0 {
                best = (t, r);
            }
        };
        if p.expected_count {
            if let Some(Ok(n)) = self.expected {
                // exactly the announced count: more images than announced disable the
                // rule (see `on_instance_with_hints`), so it never fires once per late instance
                if self.images() == n as u64 {
                    consider(self.last_arrival, CompletionReason::ExpectedCount);
                }
            }
        }
        if let Some(t) = self.association_due {
            consider(t, CompletionReason::AssociationEnded);
        }
        if let Some(m) = p.max_wait {
            consider(self.first_arrival + m, CompletionReason::MaxWait);
        }
        best
    }
}

/// Tracks open series and their completion (see module docs).
#[derive(Debug)]
pub struct SeriesTracker {
    policy: CompletionPolicy,
    series: HashMap<String, OpenSeries>,
    versions: HashMap<String, u32>,
}

impl SeriesTracker {
    /// A tracker completing series after `quiet_period` without new instances (other rules off).
    pub fn new(quiet_period: Duration) -> Self {
        Self::with_policy(CompletionPolicy::quiet_only(quiet_period))
    }

    /// A tracker applying every rule of `policy`.
    pub fn with_policy(policy: CompletionPolicy) -> Self {
        SeriesTracker { policy, series: HashMap::new(), versions: HashMap::new() }
    }

    /// The completion policy in force.
    pub fn policy(&self) -> &CompletionPolicy {
        &self.policy
    }

    /// Record that a series already completed `version` times (restart recovery),
    /// so the next completion gets `version + 1`.
    pub fn set_completed_version(&mut self, series_instance_uid: &str, version: u32) {
        self.versions.insert(series_instance_uid.to_string(), version);
    }

    /// Register a stored instance at time `now` without header hints (one image, no
    /// expected count). A duplicate of a file already known does not restart the quiet period.
    pub fn on_instance(&mut self, msg: &InstanceStored, now: Instant) {
        self.on_instance_with_hints(msg, InstanceHints::default(), now);
    }

    /// Register a stored instance at time `now` with its [`InstanceHints`].
    pub fn on_instance_with_hints(&mut self, msg: &InstanceStored, hints: InstanceHints, now: Instant) {
        let entry = self.series.entry(msg.series_instance_uid.clone()).or_insert_with(|| OpenSeries {
            study_instance_uid: msg.study_instance_uid.clone(),
            files: Default::default(),
            first_arrival: now,
            last_arrival: now,
            association_due: None,
            expected: None,
            dirty: false,
        });
        if entry.files.contains_key(&msg.path) {
            return;
        }
        entry.files.insert(msg.path.clone(), hints.images.max(1));
        if !entry.dirty {
            entry.first_arrival = now;
        }
        entry.last_arrival = now;
        entry.association_due = None;
        entry.dirty = true;
        if let Some(n) = hints.expected_images {
            entry.expected = match entry.expected {
                None => Some(Ok(n)),
                Some(Ok(m)) if m == n => Some(Ok(n)),
                _ => Some(Err(())),
            };
        }
        // More images than the headers announce: the count is not the series' size (e.g.
        // ImagesInAcquisition of one of several acquisitions, or headers copied from another
        // series), so the rule stops applying to this series and the others decide. Without
        // this, every further instance would complete a new version at once.
        if let Some(Ok(n)) = entry.expected {
            if entry.images() > n as u64 {
                tracing::warn!(
                    series = %msg.series_instance_uid,
                    announced = n,
                    images = entry.images(),
                    "more images than ImagesInAcquisition/NumberOfFrames announce; completing this series by the other rules"
                );
                entry.expected = Some(Err(()));
            }
        }
    }

    /// The association that delivered `event.series_instance_uids` ended at `now`: those still
    /// open become due after the grace period (no effect when the rule is off).
    pub fn on_association_ended(&mut self, event: &AssociationEnded, now: Instant) {
        let Some(grace) = self.policy.association_end_grace else { return };
        for uid in &event.series_instance_uids {
            if let Some(s) = self.series.get_mut(uid) {
                if s.dirty {
                    s.association_due = Some(now + grace);
                }
            }
        }
    }

    /// Number of series with instances not yet handed out as complete.
    pub fn open_count(&self) -> usize {
        self.series.values().filter(|s| s.dirty).count()
    }

    /// Earliest instant at which a currently open series becomes due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.series.values().filter(|s| s.dirty).map(|s| s.deadline(&self.policy).0).min()
    }

    /// Series complete at `now` by any rule, each returned once per version.
    pub fn take_due(&mut self, now: Instant) -> Vec<CompletedSeries> {
        let policy = self.policy;
        self.take_where(|s| {
            let (t, reason) = s.deadline(&policy);
            (t <= now).then_some(reason)
        })
    }

    /// Every open series, due or not (used when input ends, e.g. `myonode process`).
    pub fn take_all(&mut self) -> Vec<CompletedSeries> {
        self.take_where(|_| Some(CompletionReason::InputEnded))
    }

    fn take_where(&mut self, due: impl Fn(&OpenSeries) -> Option<CompletionReason>) -> Vec<CompletedSeries> {
        let mut out = Vec::new();
        for (uid, s) in self.series.iter_mut() {
            if !s.dirty {
                continue;
            }
            if let Some(reason) = due(s) {
                s.dirty = false;
                s.association_due = None;
                let v = self.versions.entry(uid.clone()).or_insert(0);
                *v += 1;
                out.push(CompletedSeries {
                    study_instance_uid: s.study_instance_uid.clone(),
                    series_instance_uid: uid.clone(),
                    version: *v,
                    files: s.files.keys().cloned().collect(),
                    reason,
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
            hints: None,
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

    fn policy() -> CompletionPolicy {
        CompletionPolicy {
            quiet_period: Duration::from_secs(10),
            association_end_grace: Some(Duration::from_secs(2)),
            expected_count: true,
            max_wait: Some(Duration::from_secs(60)),
        }
    }

    fn ended(series: &[&str]) -> AssociationEnded {
        AssociationEnded {
            calling_ae_title: "SCU".into(),
            series_instance_uids: series.iter().map(|s| s.to_string()).collect(),
            ended_at: SystemTime::now(),
        }
    }

    #[test]
    fn association_end_completes_after_grace_unless_a_new_instance_arrives() {
        let t0 = Instant::now();
        let mut t = SeriesTracker::with_policy(policy());
        t.on_instance(&msg("1.1", "a"), t0);
        t.on_instance(&msg("1.2", "b"), t0);
        t.on_association_ended(&ended(&["1.1", "1.2"]), t0 + Duration::from_secs(1));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(3)));
        assert!(t.take_due(t0 + Duration::from_millis(2900)).is_empty(), "grace period not over");
        // series 1.2 continues on a new association within the grace period: stays open
        t.on_instance(&msg("1.2", "c"), t0 + Duration::from_millis(2500));
        let d = t.take_due(t0 + Duration::from_secs(3));
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].series_instance_uid.as_str(), d[0].reason), ("1.1", CompletionReason::AssociationEnded));
        let d = t.take_due(t0 + Duration::from_millis(12_500));
        assert_eq!((d[0].series_instance_uid.as_str(), d[0].reason), ("1.2", CompletionReason::QuietPeriod));
        assert_eq!(d[0].files.len(), 2);
        // an event for a completed series does not re-open it
        t.on_association_ended(&ended(&["1.1"]), t0 + Duration::from_secs(20));
        assert_eq!(t.open_count(), 0);
        assert!(t.take_due(t0 + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn association_end_rule_can_be_switched_off() {
        let t0 = Instant::now();
        let mut t = SeriesTracker::with_policy(CompletionPolicy { association_end_grace: None, ..policy() });
        t.on_instance(&msg("1.1", "a"), t0);
        t.on_association_ended(&ended(&["1.1"]), t0);
        assert!(t.take_due(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(t.take_due(t0 + Duration::from_secs(10))[0].reason, CompletionReason::QuietPeriod);
    }

    #[test]
    fn expected_count_completes_at_once_and_disagreement_disables_it() {
        let t0 = Instant::now();
        let mut t = SeriesTracker::with_policy(policy());
        let h = InstanceHints { images: 1, expected_images: Some(3) };
        for (i, f) in ["a", "b"].iter().enumerate() {
            t.on_instance_with_hints(&msg("1.1", f), h, t0 + Duration::from_secs(i as u64));
            assert!(t.take_due(t0 + Duration::from_secs(i as u64)).is_empty());
        }
        t.on_instance_with_hints(&msg("1.1", "c"), h, t0 + Duration::from_secs(2));
        let d = t.take_due(t0 + Duration::from_secs(2));
        assert_eq!((d.len(), d[0].reason, d[0].files.len()), (1, CompletionReason::ExpectedCount, 3));
        // one enhanced multi-frame object holding all 8 frames
        t.on_instance_with_hints(&msg("2.1", "mf"), InstanceHints { images: 8, expected_images: Some(8) }, t0);
        assert_eq!(t.take_due(t0)[0].reason, CompletionReason::ExpectedCount);
        // instances that disagree about the count: the rule no longer applies to that series
        t.on_instance_with_hints(&msg("3.1", "x"), InstanceHints { images: 1, expected_images: Some(2) }, t0);
        t.on_instance_with_hints(&msg("3.1", "y"), InstanceHints { images: 1, expected_images: Some(160) }, t0);
        assert!(t.take_due(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(t.take_due(t0 + Duration::from_secs(10))[0].reason, CompletionReason::QuietPeriod);
        // switched off: waits for the quiet period
        let mut t = SeriesTracker::with_policy(CompletionPolicy { expected_count: false, ..policy() });
        t.on_instance_with_hints(&msg("2.1", "mf"), InstanceHints { images: 8, expected_images: Some(8) }, t0);
        assert!(t.take_due(t0 + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn more_images_than_announced_fall_back_to_the_other_rules_instead_of_a_version_per_instance() {
        // A 1,000-slice series whose headers were copied from an 80-slice one: completes once
        // at 80 (the count cannot be known wrong before), then the rest form ONE new version
        // by the quiet period, not 920 versions of one instance each.
        let t0 = Instant::now();
        let mut t = SeriesTracker::with_policy(CompletionPolicy { association_end_grace: None, ..policy() });
        let h = InstanceHints { images: 1, expected_images: Some(80) };
        let mut done = Vec::new();
        let mut now = t0;
        for i in 0..1000 {
            t.on_instance_with_hints(&msg("1.1", &format!("f{i:04}")), h, now);
            done.extend(t.take_due(now));
            now += Duration::from_millis(5);
        }
        assert_eq!(done.len(), 1, "{:?}", done.iter().map(|d| (d.version, d.files.len())).collect::<Vec<_>>());
        assert_eq!((done[0].reason, done[0].files.len()), (CompletionReason::ExpectedCount, 80));
        assert!(t.take_due(now + Duration::from_secs(9)).is_empty());
        let d = t.take_due(now + Duration::from_secs(10));
        assert_eq!((d.len(), d[0].reason, d[0].version, d[0].files.len()), (1, CompletionReason::QuietPeriod, 2, 1000));
        // a late instance after a correct expected-count completion: quiet period, one version
        let mut t = SeriesTracker::with_policy(CompletionPolicy { association_end_grace: None, ..policy() });
        let h = InstanceHints { images: 1, expected_images: Some(2) };
        t.on_instance_with_hints(&msg("2.1", "a"), h, t0);
        t.on_instance_with_hints(&msg("2.1", "b"), h, t0);
        assert_eq!(t.take_due(t0)[0].reason, CompletionReason::ExpectedCount);
        t.on_instance_with_hints(&msg("2.1", "c"), h, t0 + Duration::from_secs(1));
        assert!(t.take_due(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(t.take_due(t0 + Duration::from_secs(11))[0].version, 2);
        // switched off: the same series still waits for the quiet period
        let mut t = SeriesTracker::with_policy(CompletionPolicy { expected_count: false, ..policy() });
        t.on_instance_with_hints(&msg("2.1", "mf"), InstanceHints { images: 8, expected_images: Some(8) }, t0);
        assert!(t.take_due(t0 + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn max_wait_caps_a_trickling_series_and_later_instances_make_new_versions() {
        let t0 = Instant::now();
        let mut t = SeriesTracker::with_policy(policy());
        let mut now = t0;
        let mut done = Vec::new();
        for i in 0..40 {
            t.on_instance(&msg("1.1", &format!("f{i:02}")), now);
            done.extend(t.take_due(now));
            now += Duration::from_secs(5); // always inside the 10 s quiet period
        }
        // 60 s after the first instance of each version, never a 10 s gap: max wait fires each time
        let got: Vec<_> = done.iter().map(|d| (d.version, d.files.len(), d.reason)).collect();
        let mw = CompletionReason::MaxWait;
        assert_eq!(got, vec![(1, 13, mw), (2, 26, mw), (3, 39, mw)]);
        let d = t.take_due(now + Duration::from_secs(10));
        assert_eq!((d[0].version, d[0].files.len(), d[0].reason), (4, 40, CompletionReason::QuietPeriod));
    }

    #[test]
    fn hints_from_real_headers() {
        let Some(data) = std::env::var_os("MYONODE_DATA").map(PathBuf::from) else {
            eprintln!("MYONODE_DATA not set; skipping");
            return;
        };
        let knee = data.join("series/mr-knee-dess-echo1");
        let Ok(rd) = std::fs::read_dir(&knee) else {
            eprintln!("{} absent; skipping", knee.display());
            return;
        };
        let f = rd.flatten().map(|e| e.path()).find(|p| p.is_file()).unwrap();
        // GE states ImagesInAcquisition 160 (both DESS echoes), more than the 80 of one series:
        // the count never completes the series early, the other rules do.
        assert_eq!(instance_hints(&f), InstanceHints { images: 1, expected_images: Some(160) });
        let mut found_mf = false;
        for e in std::fs::read_dir(data.join("awkward/enhanced-mr-philips/001")).unwrap().flatten() {
            let h = instance_hints(&e.path());
            if h.images > 1 {
                assert_eq!(h, InstanceHints { images: 8, expected_images: Some(8) });
                found_mf = true;
            }
        }
        assert!(found_mf, "enhanced-mr-philips holds an 8-frame object");
        assert_eq!(instance_hints(Path::new("/nonexistent/file.dcm")), InstanceHints::default());
    }

    #[test]
    fn hints_from_received_values_read_is_as_dicom_rs_does() {
        let h = |frames: Option<&[u8]>, images: Option<&[u8]>| {
            InstanceHints::from_received_values([frames.map(|b| (b, *b"IS")), images.map(|b| (b, *b"IS"))])
        };
        let hints = |images, expected_images| Some(InstanceHints { images, expected_images });
        assert_eq!(h(None, None), Some(InstanceHints::default()));
        assert_eq!(h(None, Some(b"160 ")), hints(1, Some(160)));
        assert_eq!(h(None, Some(b" +12\\0")), hints(1, Some(12)), "first value, leading space and sign");
        assert_eq!(h(None, Some(b"12\0")), hints(1, Some(12)));
        assert_eq!(h(Some(b"25"), None), hints(25, Some(25)), "multi-frame: the frames are the series");
        assert_eq!(h(Some(b"1 "), Some(b"40")), hints(1, Some(40)));
        assert_eq!(h(Some(b"0"), Some(b"-3")), hints(1, None), "out of range counts as absent");
        assert_eq!(h(Some(b"x"), Some(b"")), hints(1, None), "unreadable counts as absent");
        assert_eq!(h(None, Some(b"4294967296")), hints(1, None), "above u32");
        assert_eq!(h(None, Some(&[0xFF, b'1'])), hints(1, None), "not text");
        // another VR: unknown here, the stage reads the file instead
        assert_eq!(InstanceHints::from_received_values([Some((&[1u8, 0][..], *b"US")), None]), None);
    }
}
