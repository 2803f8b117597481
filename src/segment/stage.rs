//! The segment stage's worker loop: one [`Analysis`](super::Analysis) per
//! worker thread (so per-worker state such as an ONNX session is never
//! shared), pulling jobs from a shared bounded channel. The label map is
//! also written to the job directory as `labels.npy` (uint8, axis order
//! `[z][y][x]` as in [`Volume`](crate::volume::Volume)).

use crossbeam_channel::{Receiver, Sender};
use tracing::{error, info, info_span};

use crate::pipeline::messages::{Segmentation, StudyJob};

/// File name of the label map written into each job directory.
pub const LABELS_FILE: &str = "labels.npy";

/// Run one worker until `rx` disconnects. A failing job is logged and its
/// error written to `<job_dir>/ERROR.txt`; the worker continues with the next job.
pub fn run_worker(
    worker: usize,
    cfg: crate::config::SegmentConfig,
    rx: Receiver<StudyJob>,
    tx: Sender<Segmentation>,
) {
    let analysis_name = cfg.analysis.clone();
    let mut analysis = match super::create_analysis_with(&analysis_name, &cfg) {
        Ok(a) => a,
        Err(e) => {
            error!(worker, analysis = %analysis_name, error = %e, "cannot create analysis; worker stops");
            return;
        }
    };
    for job in rx {
        let span = info_span!("segment", job = %job.job_id, analysis = %analysis_name);
        let _g = span.enter();
        let started = std::time::Instant::now();
        let job_dir = job.job_dir.clone();
        match super::segment_job(analysis.as_mut(), job) {
            Ok(seg) => {
                let fg = seg.labels.iter().filter(|&&l| l != 0).count();
                info!(worker, foreground_voxels = fg, ms = started.elapsed().as_millis() as u64, "segmented");
                if let Err(e) = ndarray_npy::write_npy(job_dir.join(LABELS_FILE), seg.labels.as_ref()) {
                    error!(error = %e, "could not write labels.npy");
                }
                if tx.send(seg).is_err() {
                    return;
                }
            }
            Err(e) => {
                error!(error = %e, "segmentation failed");
                let _ = std::fs::write(job_dir.join("ERROR.txt"), format!("segment: {e}\n"));
            }
        }
    }
}
