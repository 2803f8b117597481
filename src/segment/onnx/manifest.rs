//! The model manifest `models/<name>/model.toml`: everything the engine needs
//! to feed a model and to describe its output as DICOM-SEG segments
//! (PS3.3 C.8.20.2 Segment Sequence).
//!
//! ```toml
//! [model]
//! version = "1.0"                 # AlgorithmVersion (0066,0031)
//! file = "model.onnx"             # default
//!
//! [input]
//! tensor = "input"                # ONNX input name
//! channels = ["water", "fat"]     # or ["any"], ["ct"], ["mr"], ["t1"], ...
//! dimensions = "3d"               # "2d": one slice along z per run, NCHW; "3d": NCDHW
//! spacing_mm = [3.0, 1.5, 1.5]    # (z, y, x); 0 = keep the source spacing on that axis
//! context_slices = 0              # 2d only: neighbouring slices per side as extra channels (2.5D)
//!
//! [normalization]
//! scheme = "zscore"               # "zscore" | "ct" | "percentile" | "none"
//! foreground_only = true          # zscore: statistics over voxels > foreground_threshold
//!
//! [inference]
//! patch_size = [64, 128, 128]     # (z, y, x) for 3d, (y, x) for 2d
//! overlap = 0.5                   # fraction of the patch shared by neighbours
//! mirroring = false               # test-time augmentation over all spatial flips
//!
//! [output]
//! tensor = "logits"
//! kind = "logits"                 # "logits" | "probabilities" | "labels"
//! class_weights = [0.2, 1, 1]     # optional: decision weight per class (see OutputSection)
//!
//! [[labels]]
//! value = 1
//! name = "Left quadriceps"
//! category = { value = "91723000", scheme = "SCT", meaning = "Anatomical Structure" }
//! type = { value = "...", scheme = "SCT", meaning = "..." }
//! laterality = { value = "7771000", scheme = "SCT", meaning = "Left" }   # optional
//! color = [230, 80, 60]
//! largest_component = true        # keep only the largest 26-connected component
//! fill_holes = true               # fill enclosed background
//! ```
//!
//! [`Manifest::load`] validates everything that can be checked without the
//! ONNX file; errors name the file and the key (`inference.patch_size`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pipeline::messages::{AlgorithmIdentification, Code, SegmentAlgorithmType, SegmentDescription};

/// File name of the manifest inside a model directory.
pub const MANIFEST_FILE: &str = "model.toml";

/// Errors reading or validating a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// TOML syntax error, unknown key or wrong type (the message names the key).
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range or inconsistent.
    #[error("{path}: key `{key}`: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

/// Whether the network sees one slice (2D, NCHW) or a block (3D, NCDHW).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimensions {
    /// Input `(1, C, y, x)`: one slice along the volume's `z` axis per run.
    #[serde(rename = "2d")]
    TwoD,
    /// Input `(1, C, z, y, x)`.
    #[serde(rename = "3d")]
    ThreeD,
}

/// Intensity normalisation, applied per channel on the source grid before resampling.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "scheme", rename_all = "lowercase", deny_unknown_fields)]
pub enum Normalization {
    /// No change.
    None,
    /// `(v - mean) / max(std, 1e-8)`; mean/std (population) over all voxels or, with
    /// `foreground_only`, over voxels `> foreground_threshold` (nnU-Net "ZScoreNormalization").
    Zscore {
        #[serde(default)]
        foreground_only: bool,
        #[serde(default)]
        foreground_threshold: f32,
    },
    /// CT: clip to `clip = [lo, hi]` (HU), then `(v - offset) / scale`.
    Ct { clip: [f32; 2], offset: f32, scale: f32 },
    /// Clip to the `lower`/`upper` percentiles (0..100, linear interpolation between
    /// order statistics as NumPy's default), then map that range linearly to [0, 1].
    Percentile { lower: f32, upper: f32 },
}

/// What the output tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Unnormalised class scores `(1, K, ...)`; class `k` is label value `k`.
    Logits,
    /// Class probabilities `(1, K, ...)`; class `k` is label value `k`.
    Probabilities,
    /// A label map `(1, ...)` or `(1, 1, ...)` of label values (any numeric type).
    Labels,
}

/// `[model]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// AlgorithmName; defaults to the directory name.
    #[serde(default)]
    pub name: Option<String>,
    /// AlgorithmVersion.
    pub version: String,
    /// ONNX file relative to the model directory.
    #[serde(default = "default_model_file")]
    pub file: PathBuf,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

fn default_model_file() -> PathBuf {
    PathBuf::from("model.onnx")
}

/// `[input]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    /// ONNX input tensor name.
    pub tensor: String,
    /// One entry per input channel: `any` (any single image), a modality (`ct`, `mr`)
    /// or an image kind (`water`, `fat`, `in-phase`, `opposed-phase`, `t1`, `t2`, ...).
    pub channels: Vec<String>,
    /// 2D or 3D network.
    pub dimensions: Dimensions,
    /// Target spacing `(z, y, x)` in mm; `0` keeps the source spacing of that axis.
    /// For 2D models the `z` entry is ignored (slices are never resampled along z).
    pub spacing_mm: [f64; 3],
    /// 2.5D input for `dimensions = "2d"`: the `n` neighbouring slices on each side of the
    /// slice being segmented are fed as extra input channels, so the graph input has
    /// `channels.len() · (2n + 1)` channels, ordered image channel first, then slice offset
    /// `-n..=n` (channel `c·(2n+1) + j` holds slice `clamp(z - n + j)` of image channel `c`;
    /// slices beyond the volume repeat the edge slice). Default 0 (plain 2D).
    #[serde(default)]
    pub context_slices: usize,
}

/// `[inference]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSection {
    /// Patch size in voxels: `(z, y, x)` for 3D, `(y, x)` for 2D.
    pub patch_size: Vec<usize>,
    /// Fraction of a patch shared with its neighbour, `0 <= overlap < 1` (nnU-Net: 0.5).
    #[serde(default = "default_overlap")]
    pub overlap: f64,
    /// Test-time augmentation: average over all flips of the spatial axes.
    #[serde(default)]
    pub mirroring: bool,
}

fn default_overlap() -> f64 {
    0.5
}

/// `[output]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// ONNX output tensor name.
    pub tensor: String,
    /// What it holds.
    pub kind: OutputKind,
    /// Optional decision weight `w_k > 0` per class `k = 0..K` (class 0 = background): the label
    /// is `argmax_k w_k·p_k` instead of `argmax_k p_k` (Bayes decision with unequal
    /// misclassification costs; Duda, Hart & Stork, *Pattern Classification*, 2nd ed., §2.2).
    /// For logits this adds `ln w_k` to class `k`'s logit, which commutes with the linear
    /// resampling back to the source grid. Used to correct a model's systematic under- or
    /// over-segmentation; the weights must be chosen on validation data, never on test data.
    /// Only for `kind = "logits"` or `"probabilities"`; length must be `K` (highest label value + 1).
    #[serde(default)]
    pub class_weights: Option<Vec<f64>>,
    /// Optional `[output.level_order]`: give the bodies of a chain of serially ordered
    /// structures (vertebral levels) consecutive labels head to foot, after the decision
    /// weights and before the connected-component steps ([`super::postprocess::order_levels`]).
    #[serde(default)]
    pub level_order: Option<LevelOrder>,
}

/// `[output.level_order]`: labels of a chain of structures that follow each other head to
/// foot (L1–L5 vertebral bodies), relabelled so that body `j` from the head gets level `j + o`
/// ([`super::postprocess::order_levels`]).
///
/// ```toml
/// [output.level_order]
/// labels = [1, 2, 3, 4, 5]   # label values, head to foot
/// min_volume_ml = 2.0        # smaller 6-connected pieces become background
/// merge_mm = 15.0            # pieces whose head-foot centroids are closer are one body
/// split_factor = 1.5         # optional: split pieces > 1.5 x the median into the network's labels
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelOrder {
    /// Label values of the levels, head to foot (each a `[[labels]]` value, no repeats).
    pub labels: Vec<u8>,
    /// Pieces (6-connected components of the level labels) below this volume, in mL, become
    /// background. Default 2.0 mL (2,000 voxels at 1 mm³).
    #[serde(default = "default_min_volume_ml")]
    pub min_volume_ml: f64,
    /// Pieces whose head-foot centroids (mm along patient S, PS3.3 C.7.6.2.1.1) lie closer than
    /// this to the first piece of the current body join that body (one vertebral body cut in
    /// parts by dark marrow). Default 15 mm.
    #[serde(default = "default_merge_mm")]
    pub merge_mm: f64,
    /// A piece with more than `split_factor` times the median piece's voxels holds several
    /// bodies joined through a disc and is split into the network's own labels first. `None`
    /// (the default) never splits; must be > 1.
    #[serde(default)]
    pub split_factor: Option<f64>,
}

fn default_min_volume_ml() -> f64 {
    2.0
}

fn default_merge_mm() -> f64 {
    15.0
}

/// A coded concept in the manifest (PS3.3 8.8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestCode {
    pub value: String,
    pub scheme: String,
    pub meaning: String,
}

impl From<&ManifestCode> for Code {
    fn from(c: &ManifestCode) -> Code {
        Code::new(&c.value, &c.scheme, &c.meaning)
    }
}

/// `[[labels]]`: one output label value and its SEG description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelEntry {
    /// Label value (1..=255); for logits/probabilities also the class channel index.
    pub value: u8,
    /// SegmentLabel.
    pub name: String,
    /// SegmentedPropertyCategoryCodeSequence.
    pub category: ManifestCode,
    /// SegmentedPropertyTypeCodeSequence.
    #[serde(rename = "type")]
    pub property_type: ManifestCode,
    /// SegmentedPropertyTypeModifierCodeSequence (laterality), optional.
    #[serde(default)]
    pub laterality: Option<ManifestCode>,
    /// AnatomicRegionSequence, optional.
    #[serde(default)]
    pub anatomic_region: Option<ManifestCode>,
    /// Display colour, sRGB.
    pub color: [u8; 3],
    /// Keep only the largest 26-connected component of this label.
    #[serde(default)]
    pub largest_component: bool,
    /// Fill background regions of this label not 6-connected to the volume border.
    #[serde(default)]
    pub fill_holes: bool,
}

/// A parsed, validated `model.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: ModelSection,
    pub input: InputSection,
    #[serde(default = "default_normalization")]
    pub normalization: Normalization,
    pub inference: InferenceSection,
    pub output: OutputSection,
    pub labels: Vec<LabelEntry>,
    /// Directory name (filled by [`Manifest::load`]).
    #[serde(skip)]
    pub dir_name: String,
    /// The manifest file (filled by [`Manifest::load`]).
    #[serde(skip)]
    pub path: PathBuf,
}

fn default_normalization() -> Normalization {
    Normalization::None
}

impl Manifest {
    /// Read and validate `<dir>/model.toml`.
    ///
    /// # Errors
    /// [`ManifestError`] naming the file and, for invalid values, the key.
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io { path: path.clone(), source })?;
        let mut m = Manifest::parse(&text, &path)?;
        m.dir_name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(m)
    }

    /// Parse and validate manifest text; `path` is used in error messages.
    ///
    /// # Errors
    /// [`ManifestError::Parse`] / [`ManifestError::Invalid`].
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let mut m: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Parse { path: path.into(), message: e.to_string() })?;
        m.path = path.to_path_buf();
        m.validate()?;
        Ok(m)
    }

    /// The ONNX file (absolute if the manifest path is).
    pub fn model_file(&self) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(&self.model.file)
    }

    /// Algorithm name: `model.name` or the directory name.
    pub fn name(&self) -> String {
        self.model.name.clone().unwrap_or_else(|| self.dir_name.clone())
    }

    /// Channels of the graph input: `input.channels.len() · (2·context_slices + 1)`.
    pub fn input_channels(&self) -> usize {
        self.input.channels.len() * (2 * self.input.context_slices + 1)
    }

    /// Number of classes `K` the network's class channels cover: highest label value + 1.
    pub fn num_classes(&self) -> usize {
        self.labels.iter().map(|l| l.value as usize).max().unwrap_or(0) + 1
    }

    /// Patch size as `(z, y, x)`; for 2D models `z` is 1.
    pub fn patch_zyx(&self) -> [usize; 3] {
        let p = &self.inference.patch_size;
        match self.input.dimensions {
            Dimensions::ThreeD => [p[0], p[1], p[2]],
            Dimensions::TwoD => [1, p[0], p[1]],
        }
    }

    /// SEG segment descriptions, in increasing label value.
    pub fn segment_descriptions(&self) -> Vec<SegmentDescription> {
        let mut v: Vec<SegmentDescription> = self
            .labels
            .iter()
            .map(|l| SegmentDescription {
                label_value: l.value,
                label: l.name.clone(),
                category: (&l.category).into(),
                property_type: (&l.property_type).into(),
                type_modifier: l.laterality.as_ref().map(Into::into),
                anatomic_region: l.anatomic_region.as_ref().map(Into::into),
                color_rgb: l.color,
                algorithm_type: SegmentAlgorithmType::Automatic,
            })
            .collect();
        v.sort_by_key(|s| s.label_value);
        v
    }

    /// Algorithm identification: family (123110, DCM, "Artificial Intelligence").
    pub fn algorithm(&self) -> AlgorithmIdentification {
        AlgorithmIdentification {
            family: Code::new("123110", "DCM", "Artificial Intelligence"),
            name: self.name(),
            version: self.model.version.clone(),
        }
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ManifestError {
        ManifestError::Invalid { path: self.path.clone(), key: key.into(), message: message.into() }
    }

    fn validate(&self) -> Result<(), ManifestError> {
        if self.model.version.trim().is_empty() {
            return Err(self.invalid("model.version", "must not be empty"));
        }
        if self.input.tensor.is_empty() {
            return Err(self.invalid("input.tensor", "must not be empty"));
        }
        if self.output.tensor.is_empty() {
            return Err(self.invalid("output.tensor", "must not be empty"));
        }
        if self.input.channels.is_empty() {
            return Err(self.invalid("input.channels", "must list at least one channel, e.g. [\"any\"]"));
        }
        for (i, c) in self.input.channels.iter().enumerate() {
            if c.trim().is_empty() || c.chars().any(|ch| ch.is_whitespace()) {
                return Err(self.invalid(&format!("input.channels[{i}]"), format!("`{c}` is not a channel name")));
            }
        }
        if self.input.channels.len() > 1 && self.input.channels.iter().any(|c| c.eq_ignore_ascii_case("any")) {
            return Err(self.invalid("input.channels", "`any` is only allowed as the single channel"));
        }
        for (i, s) in self.input.spacing_mm.iter().enumerate() {
            if !(s.is_finite() && *s >= 0.0) {
                return Err(self.invalid(&format!("input.spacing_mm[{i}]"), format!("{s} must be >= 0 (0 = keep source)")));
            }
        }
        if self.input.context_slices > 0 && self.input.dimensions != Dimensions::TwoD {
            return Err(self.invalid("input.context_slices", "only applies to dimensions = \"2d\""));
        }
        if self.input.context_slices > 16 {
            return Err(self.invalid("input.context_slices", "at most 16 slices on each side"));
        }
        let want = match self.input.dimensions {
            Dimensions::TwoD => 2,
            Dimensions::ThreeD => 3,
        };
        if self.inference.patch_size.len() != want {
            return Err(self.invalid(
                "inference.patch_size",
                format!("needs {want} entries for a {want}D model, got {}", self.inference.patch_size.len()),
            ));
        }
        if self.inference.patch_size.iter().any(|&p| p == 0 || p > 4096) {
            return Err(self.invalid("inference.patch_size", "entries must be 1..=4096"));
        }
        if !(self.inference.overlap >= 0.0 && self.inference.overlap < 1.0) {
            return Err(self.invalid("inference.overlap", "must be in [0, 1)"));
        }
        match &self.normalization {
            Normalization::Ct { clip, scale, .. } => {
                if !(clip[0] < clip[1]) {
                    return Err(self.invalid("normalization.clip", "needs lo < hi"));
                }
                if !(scale.is_finite() && *scale != 0.0) {
                    return Err(self.invalid("normalization.scale", "must be finite and non-zero"));
                }
            }
            Normalization::Percentile { lower, upper } => {
                if !(0.0 <= *lower && lower < upper && *upper <= 100.0) {
                    return Err(self.invalid("normalization.lower", "needs 0 <= lower < upper <= 100"));
                }
            }
            _ => {}
        }
        if self.labels.is_empty() {
            return Err(self.invalid("labels", "at least one [[labels]] entry is required"));
        }
        if let Some(w) = &self.output.class_weights {
            if self.output.kind == OutputKind::Labels {
                return Err(self.invalid("output.class_weights", "only applies to kind = \"logits\" or \"probabilities\""));
            }
            let k = self.labels.iter().map(|l| l.value as usize).max().unwrap_or(0) + 1;
            if w.len() != k {
                return Err(self.invalid(
                    "output.class_weights",
                    format!("needs one weight per class 0..={} ({k} entries), got {}", k - 1, w.len()),
                ));
            }
            if let Some((i, v)) = w.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v > 0.0)) {
                return Err(self.invalid(&format!("output.class_weights[{i}]"), format!("{v} must be finite and > 0")));
            }
        }
        if let Some(order) = &self.output.level_order {
            if order.labels.is_empty() {
                return Err(self.invalid("output.level_order.labels", "needs at least one label value"));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, v) in order.labels.iter().enumerate() {
                if !self.labels.iter().any(|l| l.value == *v) {
                    return Err(self.invalid(&format!("output.level_order.labels[{i}]"), format!("{v} is not a [[labels]] value")));
                }
                if !seen.insert(*v) {
                    return Err(self.invalid(&format!("output.level_order.labels[{i}]"), format!("{v} appears twice")));
                }
            }
            if !(order.min_volume_ml.is_finite() && order.min_volume_ml >= 0.0) {
                return Err(self.invalid("output.level_order.min_volume_ml", format!("{} must be finite and >= 0", order.min_volume_ml)));
            }
            if !(order.merge_mm.is_finite() && order.merge_mm >= 0.0) {
                return Err(self.invalid("output.level_order.merge_mm", format!("{} must be finite and >= 0", order.merge_mm)));
            }
            if let Some(f) = order.split_factor {
                if !(f.is_finite() && f > 1.0) {
                    return Err(self.invalid("output.level_order.split_factor", format!("{f} must be finite and > 1")));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.labels.iter().enumerate() {
            let key = |k: &str| format!("labels[{i}].{k}");
            if l.value == 0 {
                return Err(self.invalid(&key("value"), "0 is the background; label values are 1..=255"));
            }
            if !seen.insert(l.value) {
                return Err(self.invalid(&key("value"), format!("duplicate label value {}", l.value)));
            }
            if l.name.trim().is_empty() || l.name.len() > 64 {
                return Err(self.invalid(&key("name"), "must be 1..=64 characters (SegmentLabel, LO)"));
            }
            for (k, c) in [("category", Some(&l.category)), ("type", Some(&l.property_type)), ("laterality", l.laterality.as_ref())]
            {
                if let Some(c) = c {
                    if c.value.is_empty() || c.scheme.is_empty() || c.meaning.is_empty() {
                        return Err(self.invalid(&key(k), "value, scheme and meaning must all be non-empty"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A complete, valid manifest (3-D, water + fat, two labels); used in tests and as a template.
pub const EXAMPLE_MANIFEST: &str = r#"
[model]
version = "1.0"
[input]
tensor = "input"
channels = ["water", "fat"]
dimensions = "3d"
spacing_mm = [3.0, 1.5, 0]
[normalization]
scheme = "zscore"
foreground_only = true
[inference]
patch_size = [16, 32, 32]
[output]
tensor = "logits"
kind = "logits"
[[labels]]
value = 2
name = "Muscle"
category = { value = "85756007", scheme = "SCT", meaning = "Tissue" }
type = { value = "91727004", scheme = "SCT", meaning = "Muscle" }
color = [200, 60, 60]
[[labels]]
value = 1
name = "Fat"
category = { value = "85756007", scheme = "SCT", meaning = "Tissue" }
type = { value = "248325000", scheme = "SCT", meaning = "Subcutaneous fat" }
laterality = { value = "7771000", scheme = "SCT", meaning = "Left" }
color = [250, 220, 80]
largest_component = true
"#;

#[cfg(test)]
mod tests {
    use super::*;


    #[test]
    fn parses_example() {
        let m = Manifest::parse(EXAMPLE_MANIFEST, Path::new("models/x/model.toml")).unwrap();
        assert_eq!(m.input.dimensions, Dimensions::ThreeD);
        assert_eq!(m.num_classes(), 3);
        assert_eq!(m.patch_zyx(), [16, 32, 32]);
        assert_eq!(m.inference.overlap, 0.5);
        assert_eq!(m.normalization, Normalization::Zscore { foreground_only: true, foreground_threshold: 0.0 });
        let segs = m.segment_descriptions();
        assert_eq!(segs[0].label_value, 1);
        assert_eq!(segs[0].type_modifier.as_ref().unwrap().value, "7771000");
        assert_eq!(segs[1].property_type.meaning, "Muscle");
        assert_eq!(m.model_file(), PathBuf::from("models/x/model.onnx"));
    }

    #[test]
    fn errors_name_file_and_key() {
        let bad = EXAMPLE_MANIFEST.replace("patch_size = [16, 32, 32]", "patch_size = [32, 32]");
        let e = Manifest::parse(&bad, Path::new("m/model.toml")).unwrap_err().to_string();
        assert!(e.contains("m/model.toml") && e.contains("inference.patch_size"), "{e}");
        let bad = EXAMPLE_MANIFEST.replace("value = 2\n", "value = 1\n");
        let e = Manifest::parse(&bad, Path::new("m/model.toml")).unwrap_err().to_string();
        assert!(e.contains("labels[1].value") && e.contains("duplicate"), "{e}");
        let bad = EXAMPLE_MANIFEST.replace("kind = \"logits\"", "kind = \"scores\"");
        let e = Manifest::parse(&bad, Path::new("m/model.toml")).unwrap_err().to_string();
        assert!(e.contains("m/model.toml") && e.contains("kind"), "{e}");
        let bad = EXAMPLE_MANIFEST.replace("[normalization]", "[normalization]\nbogus = 1");
        let e = Manifest::parse(&bad, Path::new("m/model.toml")).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn level_order_is_parsed_and_validated() {
        let with = |t: &str| EXAMPLE_MANIFEST.replace("kind = \"logits\"\n", &format!("kind = \"logits\"\n[output.level_order]\n{t}\n"));
        let m = Manifest::parse(&with("labels = [1, 2]"), Path::new("m/model.toml")).unwrap();
        assert_eq!(
            m.output.level_order,
            Some(LevelOrder { labels: vec![1, 2], min_volume_ml: 2.0, merge_mm: 15.0, split_factor: None })
        );
        let m = Manifest::parse(&with("labels = [2, 1]\nmin_volume_ml = 0.5\nmerge_mm = 10\nsplit_factor = 1.5"), Path::new("m/model.toml")).unwrap();
        assert_eq!(
            m.output.level_order,
            Some(LevelOrder { labels: vec![2, 1], min_volume_ml: 0.5, merge_mm: 10.0, split_factor: Some(1.5) })
        );
        assert!(Manifest::parse(EXAMPLE_MANIFEST, Path::new("m/model.toml")).unwrap().output.level_order.is_none());
        for (bad, key) in [
            ("labels = []", "output.level_order.labels"),
            ("labels = [1, 3]", "output.level_order.labels[1]"),
            ("labels = [1, 1]", "output.level_order.labels[1]"),
            ("labels = [1, 2]\nmin_volume_ml = -1", "output.level_order.min_volume_ml"),
            ("labels = [1, 2]\nmerge_mm = nan", "output.level_order.merge_mm"),
            ("labels = [1, 2]\nsplit_factor = 1.0", "output.level_order.split_factor"),
            ("labels = [1, 2]\nbogus = 1", "bogus"),
        ] {
            let e = Manifest::parse(&with(bad), Path::new("m/model.toml")).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn class_weights_are_validated() {
        let with = |w: &str| EXAMPLE_MANIFEST.replace("kind = \"logits\"", &format!("kind = \"logits\"\nclass_weights = {w}"));
        let m = Manifest::parse(&with("[0.2, 1.0, 1.0]"), Path::new("m/model.toml")).unwrap();
        assert_eq!(m.output.class_weights.as_deref(), Some(&[0.2, 1.0, 1.0][..]));
        let e = Manifest::parse(&with("[0.2, 1.0]"), Path::new("m/model.toml")).unwrap_err().to_string();
        assert!(e.contains("output.class_weights") && e.contains("3 entries"), "{e}");
        let e = Manifest::parse(&with("[0.2, 0.0, 1.0]"), Path::new("m/model.toml")).unwrap_err().to_string();
        assert!(e.contains("output.class_weights[1]"), "{e}");
        let labels = with("[1.0, 1.0, 1.0]").replace("kind = \"logits\"", "kind = \"labels\"");
        let e = Manifest::parse(&labels, Path::new("m/model.toml")).unwrap_err().to_string();
        assert!(e.contains("output.class_weights") && e.contains("only applies"), "{e}");
    }
}
