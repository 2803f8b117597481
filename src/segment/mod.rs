//! segment stage: run an *analysis* on a reassembled volume and produce a label map.
//!
//! An [`Analysis`] is either built in (currently [`body_mask::BodyMask`]) or a
//! learned ONNX model installed under `models/<name>/` ([`onnx`]; [`resample`]
//! moves images and label maps between the source grid and a model's grid). The stage's worker threads each own one analysis instance
//! (created with [`create_analysis`]) and call [`segment_job`] for every
//! [`StudyJob`], which checks the analysis' output (shape, label values) and
//! packages the [`Segmentation`] message for the measure stage.
//!
//! Generic image operations used by built-in analyses (Otsu threshold, connected
//! components, hole filling) live in [`morphology`].

pub mod body_mask;
pub mod morphology;
pub mod onnx;
pub mod resample;
pub mod routing;
pub mod stage;
pub mod tissue_ct;
pub mod tissue_mr;

use std::sync::Arc;

use ndarray::Array3;

use crate::config::SegmentConfig;
use crate::pipeline::messages::{AlgorithmIdentification, Segmentation, SegmentDescription, StudyJob};
use crate::volume::Volume;

pub use body_mask::BodyMask;

/// Names of the built-in analyses selectable with `segment.analysis`.
pub const BUILTIN_ANALYSES: &[&str] = &["body-mask", tissue_ct::NAME, tissue_mr::NAME];

/// Why an analysis could not produce a segmentation.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// `segment.analysis` names no known analysis.
    #[error("unknown analysis `{name}`; built-in analyses: {available:?}, and no model directory of that name")]
    UnknownAnalysis { name: String, available: Vec<String> },
    /// The ONNX engine failed (library, session, manifest, inference, input mismatch).
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
    /// The volume has no voxels, or no finite intensity values.
    #[error("analysis `{analysis}`: volume of shape {shape:?} has no usable (finite) voxels")]
    EmptyVolume { analysis: String, shape: (usize, usize, usize) },
    /// The volume is larger than the analysis can index.
    #[error("analysis `{analysis}`: volume of shape {shape:?} is too large ({voxels} voxels, at most {max})")]
    VolumeTooLarge { analysis: String, shape: (usize, usize, usize), voxels: usize, max: usize },
    /// The analysis returned a label map whose shape differs from the volume's.
    #[error("analysis `{analysis}` returned labels of shape {found:?}, volume is {expected:?}")]
    ShapeMismatch { analysis: String, expected: (usize, usize, usize), found: (usize, usize, usize) },
    /// The analysis returned a label value it does not describe in [`Analysis::segments`].
    #[error("analysis `{analysis}` returned label value {value}, which is not among its segments {described:?}")]
    UndescribedLabel { analysis: String, value: u8, described: Vec<u8> },
    /// The analysis' segment descriptions are not label values 1..N in order.
    #[error("analysis `{analysis}`: segment label values {found:?} are not 1..N in increasing order")]
    BadSegmentNumbering { analysis: String, found: Vec<u8> },
    /// The job lies outside the analysis' declared scope (modality, anatomical region).
    #[error("analysis `{analysis}` refuses this job: {reason}")]
    OutOfScope { analysis: String, reason: String },
    /// The analysis itself failed (model error, numerical problem, ...).
    #[error("analysis `{analysis}` failed: {reason}")]
    Failed { analysis: String, reason: String },
}

/// A segmentation analysis: built-in or (later) an ONNX model. Implementations are used by one worker thread
/// at a time (`&mut self`), so they may hold per-worker state (e.g. an ONNX session).
pub trait Analysis: Send {
    /// Name as selected in config (`segment.analysis`).
    fn name(&self) -> &str;
    /// Segment descriptions this analysis can produce (label values 1..N, contiguous).
    fn segments(&self) -> Vec<SegmentDescription>;
    /// SegmentationAlgorithmIdentificationSequence content (PS3.3 C.8.20.2, CID 7162 family).
    fn algorithm(&self) -> AlgorithmIdentification;
    /// Label map on the exact grid of `volume.data`, shape (nz, ny, nx); 0 = background,
    /// other values as listed in [`Analysis::segments`].
    ///
    /// # Errors
    /// [`SegmentError`] when the volume cannot be analysed.
    fn run(&mut self, volume: &Volume) -> Result<Array3<u8>, SegmentError>;
    /// Label map for a whole job. Analyses that use several channels (Dixon water/fat,
    /// [`StudyJob::channels`]) override this; the default runs [`Analysis::run`] on the
    /// primary volume. Same output contract as [`Analysis::run`].
    ///
    /// # Errors
    /// [`SegmentError`] when the job cannot be analysed.
    fn run_job(&mut self, job: &StudyJob) -> Result<Array3<u8>, SegmentError> {
        self.run(&job.volume)
    }
    /// Wall time spent inside model inference (ONNX Runtime `Session::run`) since the analysis
    /// was created, for analyses that run a model; `None` for the built-in analyses. The segment
    /// stage logs the difference per job (`model_ms`), so the work outside the model can be told
    /// apart from model compute in one process (docs/PERFORMANCE.md).
    fn model_time(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Build the analysis named in config (`segment.analysis`).
///
/// # Errors
/// [`SegmentError::UnknownAnalysis`] when `name` is not one of [`BUILTIN_ANALYSES`].
pub fn create_analysis(name: &str) -> Result<Box<dyn Analysis>, SegmentError> {
    match name {
        body_mask::NAME => Ok(Box::new(BodyMask::new())),
        tissue_ct::NAME => Ok(Box::new(tissue_ct::TissueCt::default())),
        tissue_mr::NAME => Ok(Box::new(tissue_mr::TissueMr::new())),
        _ => Err(SegmentError::UnknownAnalysis {
            name: name.to_string(),
            available: BUILTIN_ANALYSES.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

/// Create the analysis `name`: a built-in one, else the ONNX model installed in
/// `<cfg.models_dir>/<name>/` (manifest validated, ONNX Runtime session opened
/// with the configured execution providers).
///
/// # Errors
/// [`SegmentError::Onnx`] when the model exists but cannot be loaded;
/// [`SegmentError::UnknownAnalysis`] when neither exists.
pub fn create_analysis_with(name: &str, cfg: &SegmentConfig) -> Result<Box<dyn Analysis>, SegmentError> {
    if name == tissue_ct::NAME {
        return Ok(Box::new(tissue_ct::TissueCt::new(cfg.tissue_ct_bone_threshold_hu, cfg.tissue_ct_allow_trunk)?));
    }
    if BUILTIN_ANALYSES.contains(&name) {
        return create_analysis(name);
    }
    let dir = cfg.models_dir.join(name);
    if dir.join(onnx::manifest::MANIFEST_FILE).is_file() {
        return Ok(Box::new(onnx::OnnxAnalysis::load(&dir, cfg)?));
    }
    create_analysis(name)
}

/// Run `analysis` on a job and package the [`Segmentation`] message.
///
/// Checks that the segment descriptions are numbered 1..N in increasing order, that the
/// label map has exactly the volume's shape `(nz, ny, nx)`, and that every non-zero label
/// value is described.
///
/// # Errors
/// Whatever [`Analysis::run`] returns, plus [`SegmentError::BadSegmentNumbering`],
/// [`SegmentError::ShapeMismatch`] and [`SegmentError::UndescribedLabel`].
pub fn segment_job(analysis: &mut dyn Analysis, job: StudyJob) -> Result<Segmentation, SegmentError> {
    let name = analysis.name().to_string();
    let segments = analysis.segments();
    let described: Vec<u8> = segments.iter().map(|s| s.label_value).collect();
    if described.iter().enumerate().any(|(i, v)| *v as usize != i + 1) {
        return Err(SegmentError::BadSegmentNumbering { analysis: name, found: described });
    }
    let labels = analysis.run_job(&job)?;
    let expected = job.volume.shape();
    let s = labels.shape();
    let found = (s[0], s[1], s[2]);
    if found != expected {
        return Err(SegmentError::ShapeMismatch { analysis: name, expected, found });
    }
    let max_label = described.len();
    if let Some(&value) = labels.iter().find(|&&v| v as usize > max_label) {
        return Err(SegmentError::UndescribedLabel { analysis: name, value, described });
    }
    Ok(Segmentation { algorithm: analysis.algorithm(), job, labels: Arc::new(labels), segments })
}
