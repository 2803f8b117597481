//! The segment stage's worker loop: one [`Analysis`](super::Analysis) per
//! worker thread (so per-worker state such as an ONNX session is never
//! shared), pulling jobs from a shared bounded channel. The label map is
//! also written to the job directory as `labels.npy` (uint8, axis order
//! `[z][y][x]` as in [`Volume`](crate::volume::Volume)).

use std::collections::HashMap;

use crossbeam_channel::{Receiver, Sender};
use tracing::{error, info, info_span};

use crate::pipeline::messages::{Segmentation, StudyJob};

/// File name of the label map written into each job directory.
pub const LABELS_FILE: &str = "labels.npy";

/// Run one worker until `rx` disconnects. Each job's analysis is chosen by
/// [`routing::choose`](super::routing::choose) from `routes` (else `cfg.analysis`) and
/// created on first use, then kept for later jobs of this worker. (Creating every routed
/// model when the worker starts would spare the first job on each worker the ONNX Runtime
/// session creation, ~0.1–0.2 s for the shipped model, but puts ONNX Runtime and a session
/// per worker of every routed model in memory at start: peak RSS of the knee series with
/// body-mask 148 → 375 MiB, against the 3× goal of issue #8; measured 2026-12-02.) A job whose analysis
/// cannot be created or fails is logged, its error written to `<job_dir>/ERROR.txt`,
/// and the worker continues with the next job (the series stays in `incoming/`).
pub fn run_worker(
    worker: usize,
    cfg: crate::config::SegmentConfig,
    routes: Vec<crate::config::RouteConfig>,
    rx: Receiver<StudyJob>,
    tx: Sender<Segmentation>,
) {
    let mut analyses: HashMap<String, Box<dyn super::Analysis>> = HashMap::new();
    for job in crate::pipeline::health::iter(&rx) {
        let routed = super::routing::choose(&routes, &cfg.analysis, &job.header);
        let analysis_name = routed.analysis.to_string();
        let span = info_span!("segment", job = %job.job_id, analysis = %analysis_name, route = routed.route.unwrap_or("default"));
        let _g = span.enter();
        let started = std::time::Instant::now();
        let job_dir = job.job_dir.clone();
        if !analyses.contains_key(&analysis_name) {
            match super::create_analysis_with(&analysis_name, &cfg) {
                Ok(a) => {
                    analyses.insert(analysis_name.clone(), a);
                }
                Err(e) => {
                    error!(worker, error = %e, "cannot create analysis; job failed");
                    let _ = std::fs::write(job_dir.join("ERROR.txt"), format!("segment: analysis `{analysis_name}`: {e}\n"));
                    continue;
                }
            }
        }
        let analysis = analyses.get_mut(&analysis_name).expect("inserted above");
        let model_before = analysis.model_time();
        match { let _t = crate::http::metrics::StageTimer::new("segment"); super::segment_job(analysis.as_mut(), job) } {
            Ok(seg) => {
                let fg = seg.labels.iter().filter(|&&l| l != 0).count();
                // model_ms: time inside the model (Session::run) of this job, for analyses with a model
                let model_ms = analysis.model_time().zip(model_before).map(|(a, b)| a.saturating_sub(b).as_secs_f64() * 1e3);
                info!(worker, foreground_voxels = fg, ms = started.elapsed().as_millis() as u64, model_ms, "segmented");
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
