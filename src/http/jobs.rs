//! Job status read from the spool (so it survives restarts): `spool/jobs/<job_id>/`
//! (`labels.npy`, `measurements.json`, `job.json`, `preview.png`, `ERROR.txt`), the series'
//! `incoming/<study>/<series>/DONE.json`, and per destination the SEG/SR objects in
//! `outbox/`, `sent/` or `failed/` (with `.reason.txt`).
//!
//! Stage timestamps are file times (RFC 3339, UTC): `started` = job directory creation (or
//! modification when the file system keeps no birth time), `segmented` = `labels.npy`,
//! `measured` = `measurements.json`, `encoded` = `job.json`, a delivery's `at` = when the
//! object was moved to `sent/`/`failed/` (inode change time).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use crate::assemble::stage::DONE_MARKER;
use crate::encode::stage::{JOB_FILE, SEG_FILE};
use crate::segment::stage::LABELS_FILE;

/// File written by `measure` into the job directory.
pub const MEASUREMENTS_FILE: &str = "measurements.json";
/// File written by a stage that failed the job.
pub const ERROR_FILE: &str = "ERROR.txt";

/// Where a job stands, derived from the files present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Job directory exists, no label map yet (segmentation running or queued).
    Segmenting,
    /// Label map written, measurements not yet.
    Measuring,
    /// Measurements written, SEG/SR not yet.
    Encoding,
    /// Results encoded; some objects still wait in an outbox.
    Delivering,
    /// Every object reached every destination (or there are no destinations).
    Done,
    /// At least one object was dead-lettered to `failed/`.
    DeliveryFailed,
    /// A stage wrote `ERROR.txt`.
    Failed,
}

impl JobState {
    /// Every state, for the `myonode_jobs{state}` gauge.
    pub const ALL: [JobState; 7] = [
        JobState::Segmenting,
        JobState::Measuring,
        JobState::Encoding,
        JobState::Delivering,
        JobState::Done,
        JobState::DeliveryFailed,
        JobState::Failed,
    ];

    /// The snake_case name used in JSON and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Segmenting => "segmenting",
            JobState::Measuring => "measuring",
            JobState::Encoding => "encoding",
            JobState::Delivering => "delivering",
            JobState::Done => "done",
            JobState::DeliveryFailed => "delivery_failed",
            JobState::Failed => "failed",
        }
    }
}

/// Delivery state of one object at one destination.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub destination: String,
    /// `seg` or `sr`.
    pub object: &'static str,
    pub sop_instance_uid: String,
    /// `pending` (in the outbox), `delivered` (in `sent/`), `failed` (in `failed/`) or `unknown`.
    pub state: &'static str,
    /// When it moved to `sent/` or `failed/` (RFC 3339).
    pub at: Option<String>,
    /// Content of the dead letter's `.reason.txt`.
    pub reason: Option<String>,
}

/// Stage timestamps of a job (RFC 3339, UTC), `None` while the stage has not finished.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimes {
    pub started: Option<String>,
    pub segmented: Option<String>,
    pub measured: Option<String>,
    pub encoded: Option<String>,
    /// Latest delivery of any object (when all are delivered).
    pub delivered: Option<String>,
    /// `DONE.json` of the series in `incoming/` (the series will not re-run at restart).
    pub series_done: Option<String>,
}

/// One job as shown by `/api/jobs` and the status page.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    /// `<SeriesInstanceUID>-v<version>`.
    pub job_id: String,
    pub version: Option<u32>,
    pub state: JobState,
    pub series_instance_uid: String,
    pub study_instance_uid: Option<String>,
    pub modality: Option<String>,
    /// `job.json` → `analysis` (algorithm identification: name, version, family).
    pub analysis: Option<Value>,
    /// Segment labels (from `job.json` → `segments`).
    pub segments: Vec<String>,
    pub times: StageTimes,
    pub deliveries: Vec<Delivery>,
    /// `ERROR.txt` contents, if any.
    pub errors: Vec<String>,
    /// `true` when `preview.png` exists (`/api/jobs/{id}/preview.png`).
    pub preview: bool,
    /// Measurements (`measurements.json`): only in `/api/jobs/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings: Option<Value>,
    /// Volume geometry from `job.json`: only in `/api/jobs/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<Value>,
    #[serde(skip)]
    sort_key: SystemTime,
}

/// `true` if `id` has the form of a job id, `<UID>-v<digits>` (so it is safe as a path component).
pub fn is_valid_job_id(id: &str) -> bool {
    match id.rsplit_once("-v") {
        Some((uid, v)) => crate::spool::is_valid_uid(uid) && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn ctime(p: &Path) -> Option<SystemTime> {
    let m = std::fs::metadata(p).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().clamp(0, 999_999_999) as u32))
}

fn read_json(p: &Path) -> Option<Value> {
    std::fs::read(p).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Names of the destination folders under `outbox/`, `sent/` and `failed/` plus `configured`, sorted.
fn destinations(spool: &Path, configured: &[String]) -> Vec<String> {
    let mut v: Vec<String> = configured.to_vec();
    for area in ["outbox", "sent", "failed"] {
        for e in std::fs::read_dir(spool.join(area)).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                v.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Read one job's status from `spool` (`None` if `jobs/<job_id>/` does not exist or the id is
/// malformed). `detail` adds findings and volume geometry. `configured` are the destination
/// names of the configuration (others found in the spool are included too).
pub fn read_job(spool: &Path, job_id: &str, configured: &[String], detail: bool) -> Option<JobStatus> {
    if !is_valid_job_id(job_id) {
        return None;
    }
    let dir = spool.join("jobs").join(job_id);
    let meta = std::fs::metadata(&dir).ok().filter(|m| m.is_dir())?;
    let started = meta.created().or_else(|_| meta.modified()).ok();
    let (series_uid, version) = job_id.rsplit_once("-v").map(|(s, v)| (s.to_string(), v.parse().ok()))?;
    let job = read_json(&dir.join(JOB_FILE));
    let js = |k: &str| job.as_ref().and_then(|j| j.get(k)).and_then(|v| v.as_str()).map(str::to_string);
    let study = js("study_instance_uid");
    let mut times = StageTimes {
        started: started.map(rfc3339),
        segmented: mtime(&dir.join(LABELS_FILE)).map(rfc3339),
        measured: mtime(&dir.join(MEASUREMENTS_FILE)).map(rfc3339),
        encoded: if job.is_some() && dir.join(SEG_FILE).is_file() { mtime(&dir.join(JOB_FILE)).map(rfc3339) } else { None },
        ..Default::default()
    };
    if let Some(study) = &study {
        if crate::spool::is_valid_uid(study) {
            let done = spool.join("incoming").join(study).join(&series_uid).join(DONE_MARKER);
            let done_json = read_json(&done);
            if done_json.as_ref().and_then(|d| d.get("job_id")).and_then(|v| v.as_str()) == Some(job_id) {
                times.series_done = mtime(&done).map(rfc3339);
            }
        }
    }
    let mut deliveries = Vec::new();
    if let Some(j) = &job {
        for dest in destinations(spool, configured) {
            for object in ["seg", "sr"] {
                let Some(uid) = j.get(object).and_then(|o| o.get("sop_instance_uid")).and_then(|v| v.as_str()) else {
                    continue;
                };
                if !crate::spool::is_valid_uid(uid) {
                    continue;
                }
                let name = format!("{uid}.dcm");
                let (state, at, reason) = if spool.join("sent").join(&dest).join(&name).is_file() {
                    ("delivered", ctime(&spool.join("sent").join(&dest).join(&name)), None)
                } else if spool.join("failed").join(&dest).join(&name).is_file() {
                    let p = spool.join("failed").join(&dest).join(&name);
                    let reason = std::fs::read_to_string(spool.join("failed").join(&dest).join(format!("{name}.reason.txt")))
                        .ok()
                        .map(|s| s.trim().to_string());
                    ("failed", ctime(&p), reason)
                } else if spool.join("outbox").join(&dest).join(&name).is_file() {
                    ("pending", None, None)
                } else if configured.contains(&dest) {
                    ("unknown", None, None)
                } else {
                    continue; // a destination folder this job never used
                };
                deliveries.push(Delivery { destination: dest.clone(), object, sop_instance_uid: uid.into(), state, at: at.map(rfc3339), reason });
            }
        }
    }
    let errors: Vec<String> = std::fs::read_to_string(dir.join(ERROR_FILE))
        .ok()
        .map(|s| s.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let state = if !errors.is_empty() {
        JobState::Failed
    } else if times.encoded.is_some() {
        if deliveries.iter().any(|d| d.state == "failed") {
            JobState::DeliveryFailed
        } else if deliveries.iter().all(|d| d.state == "delivered") {
            JobState::Done
        } else {
            JobState::Delivering
        }
    } else if times.measured.is_some() {
        JobState::Encoding
    } else if times.segmented.is_some() {
        JobState::Measuring
    } else {
        JobState::Segmenting
    };
    if state == JobState::Done && !deliveries.is_empty() {
        times.delivered = deliveries.iter().filter_map(|d| d.at.clone()).max();
    }
    let segments = job
        .as_ref()
        .and_then(|j| j.get("segments"))
        .and_then(|s| s.as_array())
        .map(|a| a.iter().filter_map(|s| s.get("label").and_then(|l| l.as_str()).map(str::to_string)).collect())
        .unwrap_or_default();
    Some(JobStatus {
        job_id: job_id.to_string(),
        version,
        state,
        series_instance_uid: series_uid,
        study_instance_uid: study,
        modality: js("modality"),
        analysis: job.as_ref().and_then(|j| j.get("analysis").cloned()),
        segments,
        times,
        deliveries,
        errors,
        preview: dir.join(super::preview::PREVIEW_FILE).is_file(),
        findings: if detail { read_json(&dir.join(MEASUREMENTS_FILE)) } else { None },
        volume: if detail { job.as_ref().and_then(|j| j.get("volume").cloned()) } else { None },
        sort_key: started.unwrap_or(SystemTime::UNIX_EPOCH),
    })
}

/// Every job in `spool/jobs/`, newest first (by job directory creation time, then id).
pub fn list_jobs(spool: &Path, configured: &[String]) -> Vec<JobStatus> {
    let mut v: Vec<JobStatus> = std::fs::read_dir(spool.join("jobs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|id| read_job(spool, id, configured, false)))
        .collect();
    v.sort_by(|a, b| b.sort_key.cmp(&a.sort_key).then_with(|| b.job_id.cmp(&a.job_id)));
    v
}

/// Path of a job's preview PNG, if the id is valid and the file exists.
pub fn preview_path(spool: &Path, job_id: &str) -> Option<PathBuf> {
    if !is_valid_job_id(job_id) {
        return None;
    }
    let p = spool.join("jobs").join(job_id).join(super::preview::PREVIEW_FILE);
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        assert!(is_valid_job_id("1.2.840.1-v1"));
        assert!(is_valid_job_id("1.2.3-v12"));
        assert!(!is_valid_job_id("../etc-v1"));
        assert!(!is_valid_job_id("1.2.3-v"));
        assert!(!is_valid_job_id("1.2.3-vx"));
        assert!(!is_valid_job_id("1.2.3"));
        assert!(!is_valid_job_id("1.2.3-v1/.."));
    }

    #[test]
    fn states_from_files() {
        let t = tempfile::tempdir().unwrap();
        let spool = t.path();
        let id = "1.2.3-v1";
        let dir = spool.join("jobs").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let dests = vec!["pacs".to_string()];
        assert_eq!(read_job(spool, id, &dests, false).unwrap().state, JobState::Segmenting);
        std::fs::write(dir.join(LABELS_FILE), b"x").unwrap();
        assert_eq!(read_job(spool, id, &dests, false).unwrap().state, JobState::Measuring);
        std::fs::write(dir.join(MEASUREMENTS_FILE), b"[{\"label\":\"Body\",\"volume_ml\":1.5}]").unwrap();
        assert_eq!(read_job(spool, id, &dests, false).unwrap().state, JobState::Encoding);
        let job = serde_json::json!({"study_instance_uid": "1.2", "modality": "MR",
            "seg": {"sop_instance_uid": "1.2.3.4"}, "sr": {"sop_instance_uid": "1.2.3.5"},
            "segments": [{"label": "Body"}], "analysis": {"name": "body-mask"}});
        std::fs::write(dir.join(JOB_FILE), serde_json::to_vec(&job).unwrap()).unwrap();
        std::fs::write(dir.join(SEG_FILE), b"x").unwrap();
        for (area, uid) in [("outbox", "1.2.3.4"), ("outbox", "1.2.3.5")] {
            std::fs::create_dir_all(spool.join(area).join("pacs")).unwrap();
            std::fs::write(spool.join(area).join("pacs").join(format!("{uid}.dcm")), b"x").unwrap();
        }
        let s = read_job(spool, id, &dests, false).unwrap();
        assert_eq!(s.state, JobState::Delivering);
        assert_eq!(s.deliveries.len(), 2);
        assert_eq!(s.segments, vec!["Body"]);
        assert!(s.findings.is_none());
        // SEG delivered, SR dead-lettered
        std::fs::create_dir_all(spool.join("sent/pacs")).unwrap();
        std::fs::create_dir_all(spool.join("failed/pacs")).unwrap();
        std::fs::rename(spool.join("outbox/pacs/1.2.3.4.dcm"), spool.join("sent/pacs/1.2.3.4.dcm")).unwrap();
        std::fs::rename(spool.join("outbox/pacs/1.2.3.5.dcm"), spool.join("failed/pacs/1.2.3.5.dcm")).unwrap();
        std::fs::write(spool.join("failed/pacs/1.2.3.5.dcm.reason.txt"), b"refused\n").unwrap();
        let s = read_job(spool, id, &dests, true).unwrap();
        assert_eq!(s.state, JobState::DeliveryFailed);
        assert_eq!(s.deliveries.iter().find(|d| d.object == "sr").unwrap().reason.as_deref(), Some("refused"));
        assert_eq!(s.findings.unwrap()[0]["volume_ml"], 1.5);
        std::fs::rename(spool.join("failed/pacs/1.2.3.5.dcm"), spool.join("sent/pacs/1.2.3.5.dcm")).unwrap();
        let s = read_job(spool, id, &dests, false).unwrap();
        assert_eq!(s.state, JobState::Done);
        assert!(s.times.delivered.is_some());
        std::fs::write(dir.join(ERROR_FILE), b"encode: boom\n").unwrap();
        let s = read_job(spool, id, &dests, false).unwrap();
        assert_eq!((s.state, s.errors.clone()), (JobState::Failed, vec!["encode: boom".to_string()]));
        assert_eq!(list_jobs(spool, &dests).len(), 1);
        assert!(read_job(spool, "../x-v1", &dests, false).is_none());
    }
}
