//! segment stage: runs an [`Analysis`] on each job and hands on a label map on
//! the exact source grid. Analyses are built-in (e.g. `body-mask`) or learned
//! ONNX models installed under `models/<name>/` ([`onnx`]); [`resample`]
//! moves images and label maps between the source grid and a model's grid.
//!
//! NOTE (wt-onnx): the trait and `create_analysis` here are the agreed
//! interface; the built-in `body-mask` lives in the other engineer's version
//! of this file and the lead merges the two.

pub mod onnx;
pub mod resample;
pub mod stage;

use crate::config::SegmentConfig;
use crate::pipeline::messages::{AlgorithmIdentification, SegmentDescription, Segmentation, StudyJob};

/// Names of the built-in analyses selectable with `segment.analysis`.
pub const BUILTIN_ANALYSES: &[&str] = &["body-mask"];

/// Errors of the segment stage.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// No built-in analysis and no installed model has this name.
    #[error("unknown analysis `{name}`: not built-in ({builtin:?}) and no model directory `{models_dir}/{name}`")]
    UnknownAnalysis { name: String, builtin: Vec<String>, models_dir: String },
    /// The ONNX engine failed (library, session, manifest, inference, input mismatch).
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
    /// The analysis returned a label map whose shape differs from the volume.
    #[error("analysis `{analysis}` returned a label map of shape {got:?}, expected the volume shape {expected:?}")]
    ShapeMismatch { analysis: String, got: [usize; 3], expected: [usize; 3] },
}

/// An analysis turns a [`Volume`](crate::volume::Volume) into a label map.
/// One instance runs per worker thread, so it may hold per-worker state
/// (e.g. an ONNX Runtime session) and need not be `Sync`.
pub trait Analysis: Send {
    /// Name as selected with `segment.analysis`.
    fn name(&self) -> &str;
    /// One description per non-zero label value the analysis can produce, in increasing label order.
    fn segments(&self) -> Vec<SegmentDescription>;
    /// Segmentation Algorithm Identification (PS3.3 C.8.20.2).
    fn algorithm(&self) -> AlgorithmIdentification;
    /// Label map on the exact grid of `volume.data`, shape (nz, ny, nx).
    fn run(&mut self, volume: &crate::volume::Volume) -> Result<ndarray::Array3<u8>, SegmentError>;
}

/// Create a built-in analysis by name.
///
/// # Errors
/// [`SegmentError::UnknownAnalysis`] when `name` is not in [`BUILTIN_ANALYSES`]
/// (the built-ins are provided by the merged version of this module).
pub fn create_analysis(name: &str) -> Result<Box<dyn Analysis>, SegmentError> {
    Err(SegmentError::UnknownAnalysis {
        name: name.to_string(),
        builtin: BUILTIN_ANALYSES.iter().map(|s| s.to_string()).collect(),
        models_dir: "models".into(),
    })
}

/// Create the analysis `name`: a built-in one, else the ONNX model installed in
/// `<cfg.models_dir>/<name>/` (manifest validated, ONNX Runtime session opened
/// with the configured execution providers).
///
/// # Errors
/// [`SegmentError::Onnx`] when the model exists but cannot be loaded;
/// [`SegmentError::UnknownAnalysis`] when neither exists.
pub fn create_analysis_with(name: &str, cfg: &SegmentConfig) -> Result<Box<dyn Analysis>, SegmentError> {
    if BUILTIN_ANALYSES.contains(&name) {
        return create_analysis(name);
    }
    let dir = cfg.models_dir.join(name);
    if dir.join(onnx::manifest::MANIFEST_FILE).is_file() {
        return Ok(Box::new(onnx::OnnxAnalysis::load(&dir, cfg)?));
    }
    Err(SegmentError::UnknownAnalysis {
        name: name.to_string(),
        builtin: BUILTIN_ANALYSES.iter().map(|s| s.to_string()).collect(),
        models_dir: cfg.models_dir.display().to_string(),
    })
}

/// Run `analysis` on `job` and package the result as a [`Segmentation`].
///
/// # Errors
/// The analysis' error, or [`SegmentError::ShapeMismatch`] if its label map is not on the source grid.
pub fn segment_job(analysis: &mut dyn Analysis, job: StudyJob) -> Result<Segmentation, SegmentError> {
    let labels = analysis.run(&job.volume)?;
    let (nz, ny, nx) = job.volume.shape();
    let s = labels.shape();
    if s != [nz, ny, nx] {
        return Err(SegmentError::ShapeMismatch {
            analysis: analysis.name().to_string(),
            got: [s[0], s[1], s[2]],
            expected: [nz, ny, nx],
        });
    }
    Ok(Segmentation {
        labels: std::sync::Arc::new(labels),
        segments: analysis.segments(),
        algorithm: analysis.algorithm(),
        job,
    })
}
