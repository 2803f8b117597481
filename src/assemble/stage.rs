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
use super::volume_builder::build_volume;
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

/// Job identifier of a series version: `<SeriesInstanceUID>-v<version>` (safe as a file name,
/// since UIDs are validated before they are stored).
pub fn job_id(series_instance_uid: &str, version: u32) -> String {
    format!("{series_instance_uid}-v{version}")
}

/// Record durably that `job` produced its results (called by `encode` after the
/// outbox holds them), so restart recovery does not run the series again.
///
/// # Errors
/// Spool I/O errors.
pub fn mark_series_done(spool: &Spool, job: &StudyJob, instances: usize) -> Result<(), crate::spool::SpoolError> {
    let dir = spool.series_dir(&job.header.study_instance_uid, &job.header.series_instance_uid);
    if !dir.is_dir() {
        return Ok(()); // offline `process` mode: the source folder is not in the spool
    }
    let m = DoneMarker { version: job.version, instances, job_id: job.job_id.clone() };
    let bytes = serde_json::to_vec_pretty(&m).expect("marker serializes");
    spool.write_atomically(&dir.join(DONE_MARKER), &[&bytes])
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
            if d.instances == files.len() {
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

/// Build the job for one completed series, or quarantine it.
/// With `move_to_quarantine = false` (offline mode) only the reason and file list are written; no file is moved.
pub fn assemble_series(
    done: &CompletedSeries,
    cfg: &AssembleConfig,
    spool: &Spool,
    move_to_quarantine: bool,
) -> Option<StudyJob> {
    let job_id = job_id(&done.series_instance_uid, done.version);
    let span = info_span!("assemble", series = %done.series_instance_uid, job = %job_id, completed_by = done.reason.as_str());
    let _g = span.enter();
    let started = Instant::now();
    match build_volume(&done.files, cfg) {
        Ok((header, volume)) => {
            let job_dir = match spool.job_dir(&job_id) {
                Ok(d) => d,
                Err(e) => {
                    error!(error = %e, "cannot create job directory; series left in incoming/ for retry");
                    return None;
                }
            };
            let (nz, ny, nx) = volume.shape();
            info!(
                slices = nz, rows = ny, columns = nx,
                spacing_mm = ?volume.spacing, ms = started.elapsed().as_millis() as u64,
                "series complete, volume assembled"
            );
            Some(StudyJob { job_id, version: done.version, header, volume: Arc::new(volume), job_dir, channels: Vec::new() })
        }
        Err(e) => {
            let reason = format!("series {} (version {}): {e}", done.series_instance_uid, done.version);
            let result = if move_to_quarantine {
                spool.quarantine_series(&done.files, &done.series_instance_uid, &reason)
            } else {
                let listing: String = done.files.iter().map(|f| format!("{}\n", f.display())).collect();
                spool.quarantine_series(&[], &done.series_instance_uid, &format!("{reason}\nfiles:\n{listing}"))
            };
            match result {
                Ok(q) => warn!(reason = %e, quarantine = %q.display(), "series quarantined"),
                Err(qe) => error!(reason = %e, error = %qe, "series failed and could not be quarantined"),
            }
            None
        }
    }
}

/// Run the stage until `rx` disconnects. Series still open at that point stay
/// in `incoming/` and are picked up by [`recover`] at the next start. In
/// `offline` mode (`myonode process`) they are completed immediately instead,
/// and failed series are not moved (the input folder is the user's): only
/// their reason is written under `quarantine/`.
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
    let use_hints = cfg.complete_on_expected_count;
    let on_instance = |tracker: &mut SeriesTracker, msg: InstanceStored| {
        let hints = if use_hints && !msg.duplicate { instance_hints(&msg.path) } else { InstanceHints::default() };
        tracker.on_instance_with_hints(&msg, hints, Instant::now());
    };
    loop {
        let wait = tracker
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()).min(tick))
            .unwrap_or(tick);
        crossbeam_channel::select! {
            recv(rx) -> msg => match msg {
                Ok(msg) => on_instance(&mut tracker, msg),
                Err(_) => {
                    if flush_on_close {
                        for done in tracker.take_all() {
                            dispatch(&done, &cfg, &spool, &mut tracker, &tx, !offline);
                        }
                    } else if tracker.open_count() > 0 {
                        info!(open = tracker.open_count(), "shutting down; open series stay in incoming/ for recovery");
                    }
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
        for done in tracker.take_due(Instant::now()) {
            dispatch(&done, &cfg, &spool, &mut tracker, &tx, !offline);
        }
    }
}

fn dispatch(
    done: &CompletedSeries,
    cfg: &AssembleConfig,
    spool: &Spool,
    tracker: &mut SeriesTracker,
    tx: &Sender<StudyJob>,
    move_to_quarantine: bool,
) {
    match assemble_series(done, cfg, spool, move_to_quarantine) {
        Some(job) => {
            if tx.send(job).is_err() {
                warn!("segment stage gone; job dropped (series stays in incoming/)");
            }
        }
        None => tracker.forget(&done.series_instance_uid),
    }
}
