//! Built-in analysis `tissue-composition-ct`: skeletal muscle, adipose tissue and bone by
//! CT attenuation (Hounsfield units) inside the body.
//!
//! Steps, on the volume's real-world values (HU after Rescale Slope/Intercept):
//! 1. Body mask ([`BodyMask::mask_keeping`]: Otsu threshold, connected components of at least
//!    [`LIMB_COMPONENT_FRACTION`] of the largest one — both legs —, holes filled per slice).
//! 2. Inside the body, per voxel value `v` (HU):
//!    * skeletal muscle: [`MUSCLE_HU`] = −29 ≤ v ≤ 150, except within [`DEFAULT_SKIN_MM`] of the
//!      body surface (in-plane Euclidean distance, [`morphology::distance_to_background_per_slice`]):
//!      skin (≈ 1–3 mm, soft-tissue attenuation) is not muscle — the Alberta protocol excludes
//!      it by hand;
//!    * adipose tissue:  [`ADIPOSE_HU`] = −190 ≤ v ≤ −30;
//!    * bone: v ≥ the configured `bone_threshold_hu` (default [`DEFAULT_BONE_THRESHOLD_HU`]);
//!      it must lie above the muscle range. Voxels between 150 HU and the bone threshold
//!      (partial volume at bone surfaces, contrast-enhanced vessels) and below −190 HU
//!      (air, gas) stay unlabelled.
//!
//! The muscle and adipose ranges are the standard CT body-composition thresholds of the
//! "Alberta protocol": N. Mitsiopoulos et al., "Cadaver validation of skeletal muscle
//! measurement by magnetic resonance imaging and computerized tomography", J. Appl. Physiol.
//! 85(1):115–122, 1998 (validated on arm and **leg** cross-sections against cadavers), as used
//! by M. Mourtzakis et al., "A practical and precise approach to quantification of body
//! composition in cancer patients using computed tomography images acquired during routine
//! care", Appl. Physiol. Nutr. Metab. 33(5):997–1006, 2008.
//!
//! # Anatomical scope
//! The ranges separate *tissues*, not organs. In a limb (thigh, calf, arm) everything in the
//! −29…150 HU range inside the body is in practice skeletal muscle (plus vessels and nerves).
//! In the trunk, liver, spleen, kidneys, bowel wall, heart and unenhanced vessels fall into the
//! same range and would be reported as "skeletal muscle". The analysis therefore refuses a job
//! ([`SegmentError::OutOfScope`]) unless BodyPartExamined (0018,0015) names a limb
//! ([`LIMB_BODY_PARTS`]) or `segment.tissue_ct_allow_trunk = true` is configured; a missing
//! BodyPartExamined counts as unknown scope and is refused too. Non-CT jobs are refused.
//!
//! Output labels: 1 skeletal muscle (SCT 127954009), 2 adipose tissue (SCT 55603005 "Fat"),
//! 3 bone (SCT 3138006), category Tissue (SCT 85756007); see [`crate::encode::codes`].
//! Algorithm family (123105, DCM, "Histogram Analysis"), CID 7162.

use dicom_dictionary_std::tags;
use ndarray::{Array3, Zip};

use super::body_mask::BodyMask;
use super::morphology;
use super::{Analysis, SegmentError};
use crate::encode::codes;
use crate::pipeline::messages::{
    AlgorithmIdentification, SegmentAlgorithmType, SegmentDescription, StudyJob,
};
use crate::volume::Volume;

/// Name of this analysis in config (`segment.analysis = "tissue-composition-ct"`).
pub const NAME: &str = "tissue-composition-ct";
/// Label value of skeletal muscle.
pub const MUSCLE_LABEL: u8 = 1;
/// Label value of adipose tissue.
pub const ADIPOSE_LABEL: u8 = 2;
/// Label value of bone.
pub const BONE_LABEL: u8 = 3;
/// Skeletal-muscle attenuation range, HU, inclusive (Mitsiopoulos et al. 1998).
pub const MUSCLE_HU: (f32, f32) = (-29.0, 150.0);
/// Adipose-tissue attenuation range, HU, inclusive (Mitsiopoulos et al. 1998).
pub const ADIPOSE_HU: (f32, f32) = (-190.0, -30.0);
/// Connected body parts kept by the body mask: every component of at least this fraction of the
/// largest one (both legs of a bilateral limb scan are separate components; specks, markers and
/// small objects are dropped). A table or positioning aid of a quarter of a limb's size survives:
/// inspect the overlays when a scan has one.
pub const LIMB_COMPONENT_FRACTION: f64 = 0.25;
/// Depth below the body surface (mm) treated as skin: soft-tissue-range voxels there are not
/// labelled muscle. Thigh and calf skin is about 1–3 mm thick.
pub const DEFAULT_SKIN_MM: f32 = 3.0;
/// Default lower bound of bone, HU (cancellous bone is ≳ 200 HU; cortical bone ≳ 700 HU).
pub const DEFAULT_BONE_THRESHOLD_HU: f32 = 200.0;
/// BodyPartExamined (0018,0015) values (compared case-insensitively, spaces and underscores
/// ignored) accepted as limbs, where the HU ranges label skeletal muscle; defined terms of
/// PS3.16 Annex L plus common vendor spellings.
pub const LIMB_BODY_PARTS: &[&str] = &[
    "LEG",
    "THIGH",
    "KNEE",
    "CALF",
    "LOWERLEG",
    "LOWERLIMB",
    "LOWEREXTREMITY",
    "EXTREMITY",
    "ANKLE",
    "FOOT",
    "ARM",
    "UPPERARM",
    "FOREARM",
    "ELBOW",
    "UPPERLIMB",
    "UPPEREXTREMITY",
];

/// The three tissue segments shared by `tissue-composition-ct` and `dixon-composition-mr`
/// (label values 1 muscle, 2 adipose, 3 bone); `with_bone = false` gives only 1 and 2
/// (the MR analysis: cortical bone has no MR signal).
pub fn tissue_segments(with_bone: bool) -> Vec<SegmentDescription> {
    let seg = |label_value, label: &str, ty: codes::CodeConst, rgb| SegmentDescription {
        label_value,
        label: label.into(),
        category: codes::TISSUE.code(),
        property_type: ty.code(),
        type_modifier: None,
        anatomic_region: None,
        color_rgb: rgb,
        algorithm_type: SegmentAlgorithmType::Automatic,
    };
    let mut v = vec![
        seg(
            MUSCLE_LABEL,
            "Skeletal muscle",
            codes::SKELETAL_MUSCLE,
            [192, 104, 88],
        ),
        seg(
            ADIPOSE_LABEL,
            "Adipose tissue",
            codes::ADIPOSE_TISSUE,
            [230, 220, 70],
        ),
    ];
    if with_bone {
        v.push(seg(BONE_LABEL, "Bone", codes::BONE_TISSUE, [241, 214, 145]));
    }
    v
}

/// The `tissue-composition-ct` analysis.
#[derive(Debug, Clone)]
pub struct TissueCt {
    /// Lower bound of bone, HU (inclusive); greater than the muscle range's upper bound.
    pub bone_threshold_hu: f32,
    /// Label trunk (and unknown-region) CT as well; off by default (see the module docs).
    pub allow_trunk: bool,
    /// Skin depth (mm) excluded from the muscle class; [`DEFAULT_SKIN_MM`].
    pub skin_mm: f32,
}

impl TissueCt {
    /// A new analysis.
    ///
    /// # Errors
    /// [`SegmentError::Failed`] when `bone_threshold_hu` is not finite or not above
    /// [`MUSCLE_HU`]'s upper bound (bone would overlap muscle).
    pub fn new(bone_threshold_hu: f32, allow_trunk: bool) -> Result<Self, SegmentError> {
        if !bone_threshold_hu.is_finite() || bone_threshold_hu <= MUSCLE_HU.1 {
            return Err(SegmentError::Failed {
                analysis: NAME.into(),
                reason: format!(
                    "segment.tissue_ct_bone_threshold_hu = {bone_threshold_hu} must be a number above the \
                     skeletal-muscle range's upper bound {} HU",
                    MUSCLE_HU.1
                ),
            });
        }
        Ok(TissueCt {
            bone_threshold_hu,
            allow_trunk,
            skin_mm: DEFAULT_SKIN_MM,
        })
    }

    /// Label map of `volume` (HU), shape `(nz, ny, nx)`, without the scope check.
    ///
    /// # Errors
    /// Those of [`BodyMask::mask`] (empty/constant or too large volume).
    pub fn classify(&self, volume: &Volume) -> Result<Array3<u8>, SegmentError> {
        let body = BodyMask::new()
            .mask_keeping(volume, LIMB_COMPONENT_FRACTION)
            .map_err(|e| rename(e, NAME))?;
        let bone = self.bone_threshold_hu;
        let depth = morphology::distance_to_background_per_slice(
            &body,
            (volume.spacing[1], volume.spacing[2]),
        );
        let skin = self.skin_mm;
        Ok(Zip::from(&volume.data)
            .and(&body)
            .and(&depth)
            .map_collect(|&v, &inside, &d| {
                if !inside || !v.is_finite() {
                    0
                } else if (MUSCLE_HU.0..=MUSCLE_HU.1).contains(&v) {
                    if d <= skin {
                        0
                    } else {
                        MUSCLE_LABEL
                    }
                } else if (ADIPOSE_HU.0..=ADIPOSE_HU.1).contains(&v) {
                    ADIPOSE_LABEL
                } else if v >= bone {
                    BONE_LABEL
                } else {
                    0
                }
            }))
    }

    /// Check that the job is CT of a limb (or that trunk/unknown regions are allowed).
    ///
    /// # Errors
    /// [`SegmentError::OutOfScope`] for a non-CT job, or a BodyPartExamined that is missing or
    /// not in [`LIMB_BODY_PARTS`] while `allow_trunk` is off.
    pub fn check_scope(&self, job: &StudyJob) -> Result<(), SegmentError> {
        let modality = job.header.modality.trim();
        if modality != "CT" {
            return Err(SegmentError::OutOfScope {
                analysis: NAME.into(),
                reason: format!("Modality is {modality:?}; HU thresholds need CT"),
            });
        }
        if self.allow_trunk {
            return Ok(());
        }
        let part = body_part_examined(job);
        let normalised: String = part
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '_')
            .collect::<String>()
            .to_uppercase();
        if LIMB_BODY_PARTS.contains(&normalised.as_str()) {
            return Ok(());
        }
        Err(SegmentError::OutOfScope {
            analysis: NAME.into(),
            reason: format!(
                "BodyPartExamined is {part:?}, not a limb ({LIMB_BODY_PARTS:?}): in the trunk organs share the \
                 skeletal-muscle HU range and would be labelled as muscle; set segment.tissue_ct_allow_trunk = true \
                 to label them anyway"
            ),
        })
    }
}

impl Default for TissueCt {
    fn default() -> Self {
        TissueCt {
            bone_threshold_hu: DEFAULT_BONE_THRESHOLD_HU,
            allow_trunk: false,
            skin_mm: DEFAULT_SKIN_MM,
        }
    }
}

/// BodyPartExamined (0018,0015) of the job's header, trimmed; empty when absent.
pub fn body_part_examined(job: &StudyJob) -> String {
    job.header
        .dataset
        .element(tags::BODY_PART_EXAMINED)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Re-attribute a body-mask error to the analysis that used it.
pub(crate) fn rename(e: SegmentError, name: &str) -> SegmentError {
    match e {
        SegmentError::EmptyVolume { shape, .. } => SegmentError::EmptyVolume {
            analysis: name.into(),
            shape,
        },
        SegmentError::VolumeTooLarge {
            shape, voxels, max, ..
        } => SegmentError::VolumeTooLarge {
            analysis: name.into(),
            shape,
            voxels,
            max,
        },
        other => other,
    }
}

impl Analysis for TissueCt {
    fn name(&self) -> &str {
        NAME
    }

    fn segments(&self) -> Vec<SegmentDescription> {
        tissue_segments(true)
    }

    fn algorithm(&self) -> AlgorithmIdentification {
        AlgorithmIdentification {
            family: codes::HISTOGRAM_ANALYSIS.code(),
            name: "myonode tissue-composition-ct".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Label map without the scope check (no header available): prefer [`Analysis::run_job`].
    fn run(&mut self, volume: &Volume) -> Result<Array3<u8>, SegmentError> {
        self.classify(volume)
    }

    /// Scope check ([`TissueCt::check_scope`]), then [`TissueCt::classify`].
    fn run_job(&mut self, job: &StudyJob) -> Result<Array3<u8>, SegmentError> {
        self.check_scope(job)?;
        self.classify(&job.volume)
    }
}
