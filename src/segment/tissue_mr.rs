//! Built-in analysis `dixon-composition-mr`: skeletal muscle and adipose tissue on MR.
//!
//! **With Dixon** (the job has [`ChannelKind::Water`] and [`ChannelKind::Fat`] channels on the
//! primary grid, [`StudyJob::channels`]):
//! 1. signal `S = W + F` (≈ the in-phase image);
//! 2. body = `S` above its Otsu threshold ([`morphology::otsu_threshold`], the noise / tissue
//!    split), 6-connected components of at least [`LIMB_COMPONENT_FRACTION`] of the largest
//!    one's size ([`morphology::keep_large_components`]: both legs), holes
//!    filled per slice ([`morphology::fill_holes_per_slice`]);
//! 3. inside the body, voxels with signal (`S` above the threshold: cortical bone, tendons and
//!    air in the filled holes stay unlabelled) are classified by their signal fat fraction
//!    `FF = F / (F + W)`: muscle = water-dominant (`FF <` [`FAT_DOMINANT_FF`] = 0.5), adipose =
//!    fat-dominant (`FF ≥ 0.5`). The FF map (fraction 0–1, `NaN` where undefined) is written to
//!    the job directory as `fat_fraction.npy` (float32, shape `(nz, ny, nx)`); the measure stage
//!    reports mean FF per segment (see [`crate::measure`] for the low-FF magnitude bias caveat).
//!
//! **Without Dixon** (a single image): an intensity model,
//! **lower confidence**. A three-class Otsu ([`morphology::otsu_two_thresholds`]) splits the
//! image into background/noise, intermediate (muscle) and bright (fat) intensities; body =
//! above the first threshold, components of at least [`LIMB_COMPONENT_FRACTION`] of the
//! largest (both legs), holes filled per slice; inside it, voxels above the second threshold
//! are adipose, voxels between the two are muscle, darker ones (cortical bone, tendons, air)
//! stay unlabelled. The contrast is taken from ImageType (0008,0008): an image whose ImageType
//! contains `WATER` (a Dixon water image alone) is fat-dark and the classes swap (bright =
//! muscle, intermediate = residual fat signal), see [`IntensityContrast`]. Bias-field inhomogeneity, flow artefacts and
//! T2-weighted contrasts (fluid bright) break this model. The lower confidence is recorded as:
//! AlgorithmName `myonode dixon-composition-mr (no Dixon: intensity model)` in the SEG's
//! Segmentation Algorithm Identification, a warning in the job log, and
//! `tissue_composition.json` in the job directory (`"model": "intensity"`, `"confidence":
//! "lower"`, `"note": "no Dixon: intensity model"`). SegmentAlgorithmType stays AUTOMATIC.
//!
//! Segments: label 1 skeletal muscle, 2 adipose tissue, with the same descriptions as
//! `tissue-composition-ct` ([`super::tissue_ct::tissue_segments`]). Algorithm family
//! (123105, DCM, "Histogram Analysis"), CID 7162. Source of the water/fat separation: W. T.
//! Dixon, "Simple proton spectroscopic imaging", Radiology 153(1):189–194, 1984.

use std::path::Path;

use ndarray::{Array3, Zip};

use super::morphology::{self, MAX_VOXELS};
use super::tissue_ct::{tissue_segments, ADIPOSE_LABEL, LIMB_COMPONENT_FRACTION, MUSCLE_LABEL};
use super::{Analysis, SegmentError};
use crate::encode::codes;
use crate::pipeline::messages::{
    AlgorithmIdentification, ChannelKind, SegmentDescription, StudyJob,
};
use crate::volume::Volume;

/// Name of this analysis in config (`segment.analysis = "dixon-composition-mr"`).
pub const NAME: &str = "dixon-composition-mr";
/// Signal fat fraction at and above which a voxel is adipose tissue (fat-dominant).
pub const FAT_DOMINANT_FF: f32 = 0.5;
/// File (in the job directory) holding the Dixon fat-fraction map.
pub const FF_MAP_FILE: &str = "fat_fraction.npy";
/// File (in the job directory) recording which model labelled the job.
pub const MODEL_FILE: &str = "tissue_composition.json";

/// Contrast of a single (non-Dixon) MR image for the intensity model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntensityContrast {
    /// Fat brighter than muscle (T1-weighted, in-phase, fat image): the brightest class is fat.
    #[default]
    FatBright,
    /// Fat darker than muscle (Dixon water image, fat-suppressed): the brightest class is muscle,
    /// the intermediate class (residual fat signal) is fat.
    FatDark,
}

impl IntensityContrast {
    /// Contrast of a job's primary image from ImageType (0008,0008): `WATER` among its values
    /// (the Dixon water image) → [`IntensityContrast::FatDark`], anything else → `FatBright`.
    pub fn of_job(job: &StudyJob) -> Self {
        let water = job
            .header
            .dataset
            .element(dicom_dictionary_std::tags::IMAGE_TYPE)
            .ok()
            .and_then(|e| {
                e.to_multi_str()
                    .ok()
                    .map(|v| v.iter().any(|s| s.trim().eq_ignore_ascii_case("WATER")))
            })
            .unwrap_or(false);
        if water {
            IntensityContrast::FatDark
        } else {
            IntensityContrast::FatBright
        }
    }
}

/// Which model the last job was labelled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TissueModel {
    /// Water/fat channels: fat fraction classification.
    Dixon,
    /// Single image: two-class intensity model (lower confidence).
    Intensity,
}

/// The `dixon-composition-mr` analysis. Keeps the model used for the last job so that
/// [`Analysis::algorithm`] (called after [`Analysis::run_job`]) can name it.
#[derive(Debug, Clone, Default)]
pub struct TissueMr {
    /// Model of the last labelled job (`None` before the first).
    pub last_model: Option<TissueModel>,
    /// Thresholds of the last job: (body/noise threshold, muscle/fat threshold), image units;
    /// the second is `None` for Dixon (FF 0.5 is used).
    pub last_thresholds: Option<(f32, Option<f32>)>,
    /// Contrast assumed by the intensity model for the last job (`None` for Dixon).
    pub last_contrast: Option<IntensityContrast>,
}

impl TissueMr {
    /// A new analysis.
    pub fn new() -> Self {
        TissueMr::default()
    }

    /// Dixon classification of water `w` and fat `f` (same shape `(nz, ny, nx)`): label map and
    /// FF map (fraction, `NaN` where `W + F ≤ 0` or non-finite).
    ///
    /// # Errors
    /// [`SegmentError::ShapeMismatch`] when the shapes differ; [`SegmentError::EmptyVolume`]
    /// when `W + F` has no finite variation; [`SegmentError::VolumeTooLarge`].
    pub fn classify_dixon(
        &mut self,
        w: &Array3<f32>,
        f: &Array3<f32>,
    ) -> Result<(Array3<u8>, Array3<f32>), SegmentError> {
        let dim = |a: &Array3<f32>| {
            let s = a.shape();
            (s[0], s[1], s[2])
        };
        if w.shape() != f.shape() {
            return Err(SegmentError::ShapeMismatch {
                analysis: NAME.into(),
                expected: dim(w),
                found: dim(f),
            });
        }
        let shape = dim(w);
        if w.len() > MAX_VOXELS {
            return Err(SegmentError::VolumeTooLarge {
                analysis: NAME.into(),
                shape,
                voxels: w.len(),
                max: MAX_VOXELS,
            });
        }
        let s = w + f;
        let otsu =
            morphology::otsu_threshold(s.view()).ok_or_else(|| SegmentError::EmptyVolume {
                analysis: NAME.into(),
                shape,
            })?;
        let t = otsu.threshold;
        let mut body = s.mapv(|v| v > t);
        morphology::keep_large_components(&mut body, LIMB_COMPONENT_FRACTION);
        morphology::fill_holes_per_slice(&mut body);
        let ff = Zip::from(w).and(f).map_collect(|&w, &f| {
            let s = w + f;
            if s.is_finite() && s > 0.0 {
                f / s
            } else {
                f32::NAN
            }
        });
        let labels = Zip::from(&body)
            .and(&s)
            .and(&ff)
            .map_collect(|&inside, &s, &ff| {
                if !inside || !(s > t) || !ff.is_finite() {
                    0
                } else if ff < FAT_DOMINANT_FF {
                    MUSCLE_LABEL
                } else {
                    ADIPOSE_LABEL
                }
            });
        self.last_model = Some(TissueModel::Dixon);
        self.last_contrast = None;
        self.last_thresholds = Some((t, None));
        Ok((labels, ff))
    }

    /// Intensity model for a single image (values in image units): three-class Otsu into
    /// background, intermediate and bright; with [`IntensityContrast::FatBright`] bright = fat and
    /// intermediate = muscle, with [`IntensityContrast::FatDark`] the other way round.
    ///
    /// # Errors
    /// [`SegmentError::EmptyVolume`] when the volume or the body has no intensity variation;
    /// [`SegmentError::VolumeTooLarge`].
    pub fn classify_intensity(
        &mut self,
        volume: &Volume,
        contrast: IntensityContrast,
    ) -> Result<Array3<u8>, SegmentError> {
        let shape = volume.shape();
        if volume.data.len() > MAX_VOXELS {
            return Err(SegmentError::VolumeTooLarge {
                analysis: NAME.into(),
                shape,
                voxels: volume.data.len(),
                max: MAX_VOXELS,
            });
        }
        let (t_body, t_fat) =
            morphology::otsu_two_thresholds(volume.data.view()).ok_or_else(|| {
                SegmentError::EmptyVolume {
                    analysis: NAME.into(),
                    shape,
                }
            })?;
        let mut body = volume.data.mapv(|v| v > t_body);
        morphology::keep_large_components(&mut body, LIMB_COMPONENT_FRACTION);
        morphology::fill_holes_per_slice(&mut body);
        let labels = Zip::from(&volume.data)
            .and(&body)
            .map_collect(|&v, &inside| {
                let bright = v > t_fat;
                if !inside || !(v > t_body) {
                    0
                } else if bright == (contrast == IntensityContrast::FatBright) {
                    ADIPOSE_LABEL
                } else {
                    MUSCLE_LABEL
                }
            });
        self.last_model = Some(TissueModel::Intensity);
        self.last_thresholds = Some((t_body, Some(t_fat)));
        Ok(labels)
    }

    /// Write `tissue_composition.json` (model, confidence, thresholds) and, for Dixon, the FF map
    /// into `dir`. Failures are logged, not returned: the label map is still valid.
    fn write_notes(&self, dir: &Path, ff: Option<&Array3<f32>>) {
        let model = self.last_model;
        let note = match model {
            Some(TissueModel::Intensity) => "no Dixon: intensity model",
            _ => "Dixon water/fat: fat-fraction model",
        };
        let (t_body, t_fat) = self.last_thresholds.unwrap_or((f32::NAN, None));
        let json = serde_json::json!({
            "analysis": NAME,
            "model": model,
            "confidence": if model == Some(TissueModel::Intensity) { "lower" } else { "normal" },
            "note": note,
            "body_threshold": t_body,
            "fat_threshold": t_fat,
            "fat_dominant_ff": FAT_DOMINANT_FF,
            "intensity_contrast": self.last_contrast,
        });
        if let Err(e) = std::fs::write(
            dir.join(MODEL_FILE),
            serde_json::to_vec_pretty(&json).expect("serializes"),
        ) {
            tracing::warn!(error = %e, file = MODEL_FILE, "could not write tissue model notes");
        }
        if let Some(ff) = ff {
            if let Err(e) = ndarray_npy::write_npy(dir.join(FF_MAP_FILE), ff) {
                tracing::warn!(error = %e, file = FF_MAP_FILE, "could not write the fat-fraction map");
            }
        }
    }
}

impl Analysis for TissueMr {
    fn name(&self) -> &str {
        NAME
    }

    fn segments(&self) -> Vec<SegmentDescription> {
        tissue_segments(false)
    }

    fn algorithm(&self) -> AlgorithmIdentification {
        let name = match self.last_model {
            Some(TissueModel::Intensity) => {
                "myonode dixon-composition-mr (no Dixon: intensity model)"
            }
            _ => "myonode dixon-composition-mr",
        };
        AlgorithmIdentification {
            family: codes::HISTOGRAM_ANALYSIS.code(),
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Single-image path (intensity model, lower confidence).
    fn run(&mut self, volume: &Volume) -> Result<Array3<u8>, SegmentError> {
        self.classify_intensity(volume, IntensityContrast::FatBright)
    }

    /// Dixon path when the job has water and fat channels, otherwise the intensity model on the
    /// primary volume; writes the notes (and FF map) into the job directory.
    fn run_job(&mut self, job: &StudyJob) -> Result<Array3<u8>, SegmentError> {
        match (
            job.channel(ChannelKind::Water),
            job.channel(ChannelKind::Fat),
        ) {
            (Some(w), Some(f)) => {
                let expected = job.volume.shape();
                for c in [w, f] {
                    if c.volume.shape() != expected {
                        return Err(SegmentError::ShapeMismatch {
                            analysis: NAME.into(),
                            expected,
                            found: c.volume.shape(),
                        });
                    }
                }
                let (labels, ff) = self.classify_dixon(&w.volume.data, &f.volume.data)?;
                tracing::info!(job = %job.job_id, model = "dixon", "dixon-composition-mr");
                self.write_notes(&job.job_dir, Some(&ff));
                Ok(labels)
            }
            _ => {
                let contrast = IntensityContrast::of_job(job);
                let labels = self.classify_intensity(&job.volume, contrast)?;
                self.last_contrast = Some(contrast);
                tracing::warn!(
                    job = %job.job_id,
                    model = "intensity",
                    contrast = ?contrast,
                    "no Dixon: intensity model (two classes, fat bright; lower confidence)"
                );
                self.write_notes(&job.job_dir, None);
                Ok(labels)
            }
        }
    }
}
