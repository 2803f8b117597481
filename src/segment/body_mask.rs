//! Built-in analysis `body-mask`: the patient's body (everything that is not air or
//! background noise) as one segment.
//!
//! Steps, on the volume's real-world intensities (HU on CT, arbitrary units on MR):
//! 1. Otsu threshold over a 256-bin histogram between the 0.5th and 99.5th percentiles
//!    ([`morphology::otsu_threshold`]); voxels `> threshold` are foreground.
//! 2. Keep the largest 3-D 6-connected component ([`morphology::keep_largest_component`]):
//!    drops the table, noise specks, markers and other disconnected objects.
//! 3. Fill holes per slice ([`morphology::fill_holes_per_slice`]): lungs, bowel gas and dark
//!    tissue enclosed in a cross-section belong to the body.
//!
//! Output label value 1 = "Body": category (91723000, SCT, "Anatomical Structure"), type
//! (38266002, SCT, "Entire body") — CID 7150 / 7151; algorithm family (123105, DCM,
//! "Histogram Analysis") — CID 7162.

use ndarray::Array3;

use super::morphology::{self, MAX_VOXELS};
use super::{Analysis, SegmentError};
use crate::pipeline::messages::{AlgorithmIdentification, Code, SegmentAlgorithmType, SegmentDescription};
use crate::volume::Volume;

/// Name of this analysis in config (`segment.analysis = "body-mask"`).
pub const NAME: &str = "body-mask";

/// Label value of the body in the label map.
pub const BODY_LABEL: u8 = 1;

/// The `body-mask` analysis (stateless).
#[derive(Debug, Default, Clone)]
pub struct BodyMask {
    /// Threshold used by the last [`Analysis::run`] (same units as the volume), for logging.
    pub last_threshold: Option<f32>,
}

impl BodyMask {
    /// A new body-mask analysis.
    pub fn new() -> Self {
        BodyMask::default()
    }

    /// Compute the body mask of `volume` as booleans, shape `(nz, ny, nx)`.
    ///
    /// # Errors
    /// [`SegmentError::EmptyVolume`] when the volume has no finite voxels or is constant;
    /// [`SegmentError::VolumeTooLarge`] beyond `u32::MAX` voxels.
    pub fn mask(&mut self, volume: &Volume) -> Result<Array3<bool>, SegmentError> {
        self.mask_keeping(volume, 1.0)
    }

    /// As [`BodyMask::mask`], but step 2 keeps every component of at least `min_fraction` of the
    /// largest one's size ([`morphology::keep_large_components`]) — e.g. both legs of a
    /// bilateral thigh or calf scan, which are not connected. `min_fraction = 1.0` is
    /// [`BodyMask::mask`] (barring exact ties).
    ///
    /// # Errors
    /// As [`BodyMask::mask`].
    pub fn mask_keeping(&mut self, volume: &Volume, min_fraction: f64) -> Result<Array3<bool>, SegmentError> {
        let shape = volume.shape();
        let voxels = volume.data.len();
        if voxels > MAX_VOXELS {
            return Err(SegmentError::VolumeTooLarge { analysis: NAME.into(), shape, voxels, max: MAX_VOXELS });
        }
        let otsu = morphology::otsu_threshold(volume.data.view())
            .ok_or_else(|| SegmentError::EmptyVolume { analysis: NAME.into(), shape })?;
        self.last_threshold = Some(otsu.threshold);
        let mut mask = volume.data.mapv(|v| v > otsu.threshold);
        let kept = if min_fraction >= 1.0 {
            morphology::keep_largest_component(&mut mask)
        } else {
            morphology::keep_large_components(&mut mask, min_fraction)
        };
        let filled = morphology::fill_holes_per_slice(&mut mask);
        tracing::debug!(
            threshold = otsu.threshold,
            low = otsu.low,
            high = otsu.high,
            component_voxels = kept,
            filled_voxels = filled,
            "body-mask"
        );
        Ok(mask)
    }
}

impl Analysis for BodyMask {
    fn name(&self) -> &str {
        NAME
    }

    fn segments(&self) -> Vec<SegmentDescription> {
        vec![SegmentDescription {
            label_value: BODY_LABEL,
            label: "Body".into(),
            category: Code::new("91723000", "SCT", "Anatomical Structure"),
            property_type: Code::new("38266002", "SCT", "Entire body"),
            type_modifier: None,
            anatomic_region: None,
            color_rgb: [241, 214, 145],
            algorithm_type: SegmentAlgorithmType::Automatic,
        }]
    }

    fn algorithm(&self) -> AlgorithmIdentification {
        AlgorithmIdentification {
            family: Code::new("123105", "DCM", "Histogram Analysis"),
            name: "myonode body-mask".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Label map: [`BODY_LABEL`] inside the body, 0 elsewhere; shape `(nz, ny, nx)` of `volume.data`.
    fn run(&mut self, volume: &Volume) -> Result<Array3<u8>, SegmentError> {
        Ok(self.mask(volume)?.mapv(|b| if b { BODY_LABEL } else { 0 }))
    }
}
