//! The assemble stage's run loop: feeds [`SeriesTracker`] from the receive
//! stage, turns complete series into [`StudyJob`]s with
//! [`build_volume`](super::volume_builder::build_volume), and quarantines
//! series that do not form a volume (reason in `quarantine/<series>/REASON.txt`
//! and in the log). It never panics on bad input: every failure is per series.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tracing::{error, info, info_span, warn};

use super::tracker::{instance_hints, CompletedSeries, InstanceHints, SeriesTracker};
use super::dixon::DixonPairer;
use super::stacks::plan_stacks;
use super::volume_builder::build_from_plan;
use crate::config::AssembleConfig;
use crate::pipeline::messages::{AssociationEnded, InstanceStored, StudyJob};
use crate::spool::Spool;

/// Name of the marker file written into `incoming/<study>/<series>/` once a
/// version of the series has produced its results (see [`mark_series_done`]).
pub const DONE_MARKER: &str = "DONE.json";

/// Contents of the [`DONE_MARKER`] file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DoneMarker {
    /// Job version that completed.
    pub version: u32,
    /// Number of instance files the version was built from.
    pub instances: usize,
    pub job_id: String,
}

/// Marker written into `incoming/<study>/<series>/` when a version of the series became jobs
/// but some of its instance files are in none of them (refused stacks, localizers), so restart
/// recovery counts them as handled ([`DONE_MARKER`] counts only the files the jobs used).
pub const UNUSED_MARKER: &str = "UNUSED.json";

/// Contents of the [`UNUSED_MARKER`] file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnusedMarker {
    /// Series version the count belongs to.
    pub version: u32,
    /// Instance files of that version used by no job.
    pub instances: usize,
}

/// Job identifier of a series version: `<SeriesInstanceUID>-v<version>` (safe as a file name,
/// since UIDs are validated before they are stored).
pub fn job_id(series_instance_uid: &str, version: u32) -> String {
    format!("{series_instance_uid}-v{version}")
}

/// Record durably that `job` produced its results (called by `encode` after the
/// outbox holds them), so restart recovery does not run the series again.
///
/// The marker counts instance files (distinct SOPInstanceUIDs of the job's slices; an
/// enhanced object is one file however many frames it has), summed over the stack jobs of
/// one version of a series. `_images` (the caller's slice count) is not used for that reason.
/// Each Dixon channel's series gets its own marker.
///
/// # Errors
/// Spool I/O errors.
pub fn mark_series_done(spool: &Spool, job: &StudyJob, _images: usize) -> Result<(), crate::spool::SpoolError> {
    mark_one(spool, &job.header, &job.volume, job.version, &job.job_id)?;
    for c in &job.channels {
        if c.header.series_instance_uid != job.header.series_instance_uid {
            mark_one(spool, &c.header, &c.volume, job.version, &job.job_id)?;
        }
    }
    Ok(())
}

fn mark_one(
    spool: &Spool,
    header: &crate::pipeline::messages::SeriesHeader,
    volume: &crate::volume::Volume,
    version: u32,
    job_id: &str,
) -> Result<(), crate::spool::SpoolError> {
    let dir = spool.series_dir(&header.study_instance_uid, &header.series_instance_uid);
    if !dir.is_dir() {
        return Ok(()); // offline `process` mode: the source folder is not in the spool
    }
    let files: std::collections::BTreeSet<&str> = volume.slices.iter().map(|s| s.sop_instance_uid.as_str()).collect();
    let mut instances = files.len();
    let path = dir.join(DONE_MARKER);
    if let Some(old) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<DoneMarker>(&b).ok()) {
        // another stack job of the same version already recorded its instances
        if old.version == version && old.job_id != job_id {
            instances += old.instances;
        }
    }
    let m = DoneMarker { version, instances, job_id: job_id.to_string() };
    let bytes = serde_json::to_vec_pretty(&m).expect("marker serializes");
    spool.write_atomically(&path, &[&bytes])
}

/// Restart recovery: feed every instance in `incoming/` to the tracker, except
/// series whose [`DONE_MARKER`] says they were completed with the same number of
/// instances. Returns how many instances were re-queued.
pub fn recover(spool: &Spool, tracker: &mut SeriesTracker, now: Instant) -> usize {
    let mut n = 0;
    let mut by_series: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
    for f in spool.incoming_files() {
        if let Some(dir) = f.parent() {
            by_series.entry(dir.to_path_buf()).or_default().push(f);
        }
    }
    for (dir, files) in by_series {
        let series = name_of(&dir);
        let study = dir.parent().map(name_of).unwrap_or_default();
        let done: Option<DoneMarker> = std::fs::read(dir.join(DONE_MARKER))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(d) = &done {
            tracker.set_completed_version(&series, d.version);
            // instance files the same version left out (refused stacks, localizers) count as handled
            let unused = std::fs::read(dir.join(UNUSED_MARKER))
                .ok()
                .and_then(|b| serde_json::from_slice::<UnusedMarker>(&b).ok())
                .filter(|u| u.version == d.version)
                .map_or(0, |u| u.instances);
            if d.instances + unused == files.len() {
                continue;
            }
        }
        for f in files {
            let sop = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            tracker.on_instance(
                &InstanceStored {
                    study_instance_uid: study.clone(),
                    series_instance_uid: series.clone(),
                    sop_class_uid: String::new(),
                    sop_instance_uid: sop,
                    path: f,
                    calling_ae_title: String::new(),
                    received_at: std::time::SystemTime::now(),
                    duplicate: false,
                    hints: None,
                },
                now,
            );
            n += 1;
        }
    }
    n
}

fn name_of(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Job identifier of one stack of a series version that split into several stacks:
/// `<SeriesInstanceUID>-s<stack>-v<version>` (`stack` 1-based, in [`split_stacks`](super::stacks::split_stacks) order).
pub fn stack_job_id(series_instance_uid: &str, stack: usize, version: u32) -> String {
    format!("{series_instance_uid}-s{stack}-v{version}")
}

/// Build the jobs for one completed series — one per stack that forms a volume — or
/// quarantine it when no stack does.
///
/// Stacks that are refused while others succeed are logged with their reason and listed in
/// `quarantine/<series>/REASON.txt` without moving any file (the good stacks' files are in use).
/// With `move_to_quarantine = false` (offline mode) only the reason and file list are written; no file is moved.
pub fn assemble_series(
    done: &CompletedSeries,
    cfg: &AssembleConfig,
    spool: &Spool,
    move_to_quarantine: bool,
) -> Vec<StudyJob> {
    let span = info_span!("assemble", series = %done.series_instance_uid, version = done.version, completed_by = done.reason.as_str());
    let _g = span.enter();
    let started = Instant::now();
    let (outcomes, dropped) = match plan_stacks(&done.files, cfg) {
        Ok(v) => v,
        Err(e) => {
            quarantine(done, spool, move_to_quarantine, &e.to_string());
            return Vec::new();
        }
    };
    for d in &dropped {
        warn!(images = d.images.len(), reason = %d.reason, "images left out of every stack");
    }
    let n = outcomes.len();
    let mut jobs = Vec::new();
    let mut refused = Vec::new();
    for (k, o) in outcomes.into_iter().enumerate() {
        let job_id = if n == 1 { job_id(&done.series_instance_uid, done.version) } else { stack_job_id(&done.series_instance_uid, k + 1, done.version) };
        let what = format!("stack {}/{n} ({}; {} images)", k + 1, o.key.describe(), o.images);
        match o.plan.and_then(|p| build_from_plan(&p)) {
            Ok((header, volume)) => {
                let job_dir = match spool.job_dir(&job_id) {
                    Ok(d) => d,
                    Err(e) => {
                        error!(error = %e, job = %job_id, "cannot create job directory; series left in incoming/ for retry");
                        continue;
                    }
                };
                let (nz, ny, nx) = volume.shape();
                info!(
                    job = %job_id, stack = %what, distinguished_by = ?o.distinguished_by,
                    slices = nz, rows = ny, columns = nx,
                    spacing_mm = ?volume.spacing, ms = started.elapsed().as_millis() as u64,
                    "series complete, volume assembled"
                );
                jobs.push(StudyJob { job_id, version: done.version, header, volume: Arc::new(volume), job_dir, channels: Vec::new() });
            }
            Err(e) => {
                warn!(job = %job_id, stack = %what, reason = %e, "stack refused");
                refused.push(format!("{what}: {e}"));
            }
        }
    }
    let used: std::collections::BTreeSet<&str> =
        jobs.iter().flat_map(|j| j.volume.slices.iter().map(|s| s.sop_instance_uid.as_str())).collect();
    let unused = done.files.len().saturating_sub(used.len());
    if !jobs.is_empty() && move_to_quarantine {
        let dir = spool.series_dir(&done.study_instance_uid, &done.series_instance_uid);
        if dir.is_dir() {
            let m = UnusedMarker { version: done.version, instances: unused };
            let bytes = serde_json::to_vec_pretty(&m).expect("marker serializes");
            if let Err(e) = spool.write_atomically(&dir.join(UNUSED_MARKER), &[&bytes]) {
                error!(error = %e, "could not write the unused-instances marker");
            }
        }
    }
    let mut reasons = refused;
    reasons.extend(dropped.iter().map(|d| d.reason.clone()));
    if jobs.is_empty() {
        let reason = if reasons.is_empty() { "no images".to_string() } else { reasons.join("\n") };
        quarantine(done, spool, move_to_quarantine, &reason);
    } else if !reasons.is_empty() {
        let text = format!(
            "series {} (version {}): {} stack(s) became jobs; not used:\n{}",
            done.series_instance_uid,
            done.version,
            jobs.len(),
            reasons.join("\n")
        );
        if let Err(e) = spool.quarantine_series(&[], &done.series_instance_uid, &text) {
            error!(error = %e, "could not write the refusal note");
        }
    }
    jobs
}

/// Quarantine a whole series version with `reason` (files moved unless offline).
fn quarantine(done: &CompletedSeries, spool: &Spool, move_to_quarantine: bool, reason: &str) {
    let reason = format!("series {} (version {}): {reason}", done.series_instance_uid, done.version);
    let result = if move_to_quarantine {
        spool.quarantine_series(&done.files, &done.series_instance_uid, &reason)
    } else {
        let listing: String = done.files.iter().map(|f| format!("{}\n", f.display())).collect();
        spool.quarantine_series(&[], &done.series_instance_uid, &format!("{reason}\nfiles:\n{listing}"))
    };
    match result {
        Ok(q) => warn!(reason = %reason, quarantine = %q.display(), "series quarantined"),
        Err(qe) => error!(reason = %reason, error = %qe, "series failed and could not be quarantined"),
    }
}

/// Run the stage until `rx` disconnects. Series still open at that point stay
/// in `incoming/` and are picked up by [`recover`] at the next start. In
/// `offline` mode (`myonode process`) series complete only then, all at once (no
/// completion rule applies while the input is read, so no partial versions), and
/// failed series are not moved (the input folder is the user's): only
/// their reason is written under `quarantine/`.
///
/// Assembled jobs pass through a [`DixonPairer`] (window `assemble.study_window_seconds`,
/// released early once the kinds of `assemble.dixon_channels` are in), which holds Dixon
/// channels until their partners arrive; other jobs go on at once.
///
/// `events` carries the end of associations (series completion by association end,
/// see [`super::tracker`]); its disconnection only switches that input off.
pub fn run(
    rx: Receiver<InstanceStored>,
    events: Receiver<AssociationEnded>,
    tx: Sender<StudyJob>,
    cfg: AssembleConfig,
    spool: Arc<Spool>,
    mut tracker: SeriesTracker,
    offline: bool,
) {
    let flush_on_close = offline;
    let tick = Duration::from_millis(100);
    let mut events = events;
    let use_hints = cfg.complete_on_expected_count && !offline; // offline: no rule applies
    let mut pairer = DixonPairer::expecting(Duration::from_secs_f64(cfg.study_window_seconds), &cfg.dixon_channels);
    let on_instance = |tracker: &mut SeriesTracker, msg: InstanceStored| {
        // the receive path's scan already read them; only files without (offline, recovery) are opened
        let hints = if use_hints && !msg.duplicate {
            msg.hints.unwrap_or_else(|| instance_hints(&msg.path))
        } else {
            InstanceHints::default()
        };
        tracker.on_instance_with_hints(&msg, hints, Instant::now());
    };
    let send = |jobs: Vec<StudyJob>| {
        for job in jobs {
            if tx.send(job).is_err() {
                warn!("segment stage gone; job dropped (series stays in incoming/)");
            }
        }
    };
    loop {
        crate::pipeline::health::idle(); // heartbeat: waiting at most `tick` below
        let deadline = match (tracker.next_deadline(), pairer.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()).min(tick)).unwrap_or(tick);
        crossbeam_channel::select! {
            recv(rx) -> msg => match msg {
                Ok(msg) => on_instance(&mut tracker, msg),
                Err(_) => {
                    if flush_on_close {
                        for done in tracker.take_all() {
                            for job in dispatch(&done, &cfg, &spool, &mut tracker, !offline) {
                                send(pairer.offer(job, Instant::now()));
                            }
                        }
                    } else if tracker.open_count() > 0 {
                        info!(open = tracker.open_count(), "shutting down; open series stay in incoming/ for recovery");
                    }
                    // Dixon jobs waiting for partners are complete series: run them now.
                    send(pairer.take_all());
                    return;
                }
            },
            recv(events) -> ev => match ev {
                Ok(ev) => {
                    // Every InstanceStored of the association was sent before this event:
                    // take them in first so the event applies to complete series.
                    while let Ok(msg) = rx.try_recv() {
                        on_instance(&mut tracker, msg);
                    }
                    tracker.on_association_ended(&ev, Instant::now());
                }
                Err(_) => events = crossbeam_channel::never(),
            },
            default(wait) => {}
        }
        crate::pipeline::health::busy(); // assembling due series (reads them) and handing jobs on
        // Offline, every file is known to come: series complete when the input ends (above),
        // never by a rule while the folder is still being read (a partial first version).
        let due = if offline { Vec::new() } else { tracker.take_due(Instant::now()) };
        for done in due {
            for job in dispatch(&done, &cfg, &spool, &mut tracker, !offline) {
                send(pairer.offer(job, Instant::now()));
            }
        }
        send(pairer.take_due(Instant::now()));
    }
}

fn dispatch(
    done: &CompletedSeries,
    cfg: &AssembleConfig,
    spool: &Spool,
    tracker: &mut SeriesTracker,
    move_to_quarantine: bool,
) -> Vec<StudyJob> {
    let jobs = {
        let _t = crate::http::metrics::StageTimer::new("assemble");
        assemble_series(done, cfg, spool, move_to_quarantine)
    };
    if jobs.is_empty() {
        tracker.forget(&done.series_instance_uid);
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_counts_used_and_unused_instances_of_the_done_version() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(tmp.path(), false).unwrap();
        let dir = spool.series_dir("1.2.3", "1.2.3.4");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["a", "b", "c"] {
            std::fs::write(dir.join(format!("{f}.dcm")), b"x").unwrap();
        }
        let write = |name: &str, v: serde_json::Value| std::fs::write(dir.join(name), v.to_string()).unwrap();
        let recover_count = || recover(&spool, &mut SeriesTracker::new(Duration::from_secs(1)), Instant::now());
        assert_eq!(recover_count(), 3, "no marker: everything is re-queued");
        // two files became jobs (e.g. stack 1), one was a refused stack or a localizer
        write(DONE_MARKER, serde_json::json!({"version": 2, "instances": 2, "job_id": "1.2.3.4-s1-v2"}));
        assert_eq!(recover_count(), 3, "without the unused count the series looks unfinished");
        write(UNUSED_MARKER, serde_json::json!({"version": 1, "instances": 1}));
        assert_eq!(recover_count(), 3, "an unused count of another version does not apply");
        write(UNUSED_MARKER, serde_json::json!({"version": 2, "instances": 1}));
        assert_eq!(recover_count(), 0, "2 used + 1 unused = all 3 files handled");
        // a late instance after that version: re-queued as the next version
        std::fs::write(dir.join("d.dcm"), b"x").unwrap();
        let mut t = SeriesTracker::new(Duration::from_secs(1));
        assert_eq!(recover(&spool, &mut t, Instant::now()), 4);
        assert_eq!(t.take_all()[0].version, 3);
    }
}
