//! Splitting one series into stacks, the way dcm2niix's `isSameSet` decides whether two
//! images belong to one volume (rules re-derived from its documented behaviour, not its code).
//!
//! Images (single-frame instances, or frames of enhanced objects) go into one stack only if
//! they share all of:
//! * ImageOrientationPatient (within [`ORIENTATION_TOLERANCE`] per cosine),
//! * Rows/Columns and PixelSpacing (within [`PIXEL_SPACING_TOLERANCE_MM`]),
//! * EchoNumbers and EchoTime / EffectiveEchoTime (within [`ECHO_TIME_TOLERANCE_MS`]),
//! * ImageType / FrameType (all values: ORIGINAL/DERIVED, M/P/R/I or MAGNITUDE/PHASE/REAL/IMAGINARY,
//!   Dixon WATER/FAT/IN_PHASE/OUT_PHASE tokens, ...),
//! * StackID (0020,9056) of enhanced frames.
//!
//! AcquisitionNumber (0020,0012) and the temporal position (TemporalPositionIdentifier
//! (0020,0100) / TemporalPositionIndex (0020,9128)) split a stack only when they
//! disambiguate repeated slice positions (a second acquisition or time point of the same
//! slices); vendors that number every slice as its own acquisition do not get one stack per
//! slice. Localizers (ImageType value 3 LOCALIZER) drop out with a reason.
//!
//! Each stack is then planned on its own with [`plan_images`] (sorting along the normal,
//! spacing, duplicates, missing slices, tilt), so one bad stack never hides a good one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;

use super::volume_builder::{
    check_identity, plan_images, read_images, AssembleError, ImageFacts, SeriesPlan, DUPLICATE_POSITION_FLOOR_MM,
    ORIENTATION_TOLERANCE, PIXEL_SPACING_TOLERANCE_MM,
};
use crate::config::AssembleConfig;
use crate::volume::{cross, dot, norm};

/// Two echo times are the same echo when they differ by at most this much (ms).
pub const ECHO_TIME_TOLERANCE_MS: f64 = 0.01;

/// The attributes that make a stack (see the module documentation).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StackKey {
    /// ImageOrientationPatient of the stack's first image.
    pub orientation: [f64; 6],
    pub rows: usize,
    pub columns: usize,
    /// PixelSpacing (row, column), mm.
    pub pixel_spacing: [f64; 2],
    pub echo_number: Option<i64>,
    /// EchoTime / EffectiveEchoTime, ms.
    pub echo_time_ms: Option<f64>,
    /// ImageType / FrameType values, upper case.
    pub image_type: Vec<String>,
    /// StackID of enhanced frames.
    pub stack_id: Option<String>,
    /// Set only when the acquisition number had to split repeated positions.
    pub acquisition_number: Option<i64>,
    /// Set only when the temporal position had to split repeated positions.
    pub temporal_position: Option<i64>,
}

impl StackKey {
    fn of(f: &ImageFacts) -> Self {
        StackKey {
            orientation: f.orientation,
            rows: f.rows,
            columns: f.columns,
            pixel_spacing: f.pixel_spacing,
            echo_number: f.echo_number,
            echo_time_ms: f.echo_time_ms,
            image_type: f.image_type.clone(),
            stack_id: f.stack_id.clone(),
            acquisition_number: None,
            temporal_position: None,
        }
    }

    fn matches(&self, f: &ImageFacts) -> bool {
        let close = |a: &[f64], b: &[f64], tol: f64| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol);
        close(&self.orientation, &f.orientation, ORIENTATION_TOLERANCE)
            && (self.rows, self.columns) == (f.rows, f.columns)
            && close(&self.pixel_spacing, &f.pixel_spacing, PIXEL_SPACING_TOLERANCE_MM)
            && self.echo_number == f.echo_number
            && match (self.echo_time_ms, f.echo_time_ms) {
                (Some(a), Some(b)) => (a - b).abs() <= ECHO_TIME_TOLERANCE_MS,
                (a, b) => a.is_none() && b.is_none(),
            }
            && self.image_type == f.image_type
            && self.stack_id == f.stack_id
    }

    /// The names of the attributes in which `self` and `other` differ (dcm2niix-like wording).
    pub fn differences(&self, other: &StackKey) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.orientation.iter().zip(&other.orientation).any(|(a, b)| (a - b).abs() > ORIENTATION_TOLERANCE) {
            d.push("orientation");
        }
        if (self.rows, self.columns) != (other.rows, other.columns) {
            d.push("Rows/Columns");
        }
        if self.pixel_spacing.iter().zip(&other.pixel_spacing).any(|(a, b)| (a - b).abs() > PIXEL_SPACING_TOLERANCE_MM) {
            d.push("PixelSpacing");
        }
        if self.echo_number != other.echo_number {
            d.push("EchoNumbers");
        }
        let te_differs = match (self.echo_time_ms, other.echo_time_ms) {
            (Some(a), Some(b)) => (a - b).abs() > ECHO_TIME_TOLERANCE_MS,
            (a, b) => a.is_some() != b.is_some(),
        };
        if te_differs {
            d.push("EchoTime");
        }
        if self.image_type != other.image_type {
            d.push("ImageType");
        }
        if self.stack_id != other.stack_id {
            d.push("StackID");
        }
        if self.acquisition_number != other.acquisition_number {
            d.push("AcquisitionNumber");
        }
        if self.temporal_position != other.temporal_position {
            d.push("temporal position");
        }
        d
    }

    /// One-line description: orientation label, size, spacing, echo, ImageType, ...
    pub fn describe(&self) -> String {
        let (row, col) = directions(&self.orientation);
        let mut s = format!(
            "{} {}x{} (Columns x Rows) at {:.4}x{:.4} mm",
            orientation_label(row, col),
            self.columns,
            self.rows,
            self.pixel_spacing[1],
            self.pixel_spacing[0]
        );
        if let Some(e) = self.echo_number {
            s.push_str(&format!(", echo {e}"));
        }
        if let Some(te) = self.echo_time_ms {
            s.push_str(&format!(", TE {te} ms"));
        }
        if !self.image_type.is_empty() {
            s.push_str(&format!(", ImageType {}", self.image_type.join("\\")));
        }
        if let Some(id) = &self.stack_id {
            s.push_str(&format!(", StackID {id}"));
        }
        if let Some(a) = self.acquisition_number {
            s.push_str(&format!(", acquisition {a}"));
        }
        if let Some(t) = self.temporal_position {
            s.push_str(&format!(", temporal position {t}"));
        }
        s
    }
}

fn directions(o: &[f64; 6]) -> ([f64; 3], [f64; 3]) {
    ([o[0], o[1], o[2]], [o[3], o[4], o[5]])
}

/// Label of an image plane from its direction cosines (LPS): `axial`, `coronal` or `sagittal`
/// after the largest component of the normal `row × column`, with `oblique ` in front when that
/// component is below cos 10° (0.985), and the patient axes the rows and columns run along,
/// e.g. `axial (rows L, columns P)` for the usual head-first supine CT (PS3.3 C.7.6.2.1.1).
pub fn orientation_label(row: [f64; 3], column: [f64; 3]) -> String {
    let n = cross(row, column);
    let len = norm(n);
    let n = [n[0] / len, n[1] / len, n[2] / len];
    let (axis, comp) = (0..3).map(|i| (i, n[i].abs())).fold((0, -1.0), |a, b| if b.1 > a.1 { b } else { a });
    let plane = ["sagittal", "coronal", "axial"][axis];
    let letter = |v: [f64; 3]| {
        let (i, c) = (0..3).map(|i| (i, v[i])).fold((0, 0.0f64), |a, b| if b.1.abs() > a.1.abs() { b } else { a });
        let pos = ["L", "P", "S"][i];
        let neg = ["R", "A", "I"][i];
        if c >= 0.0 { pos } else { neg }
    };
    let oblique = if comp < 0.985 { "oblique " } else { "" };
    format!("{oblique}{plane} (rows {}, columns {})", letter(row), letter(column))
}

/// One stack of a series: images sharing a [`StackKey`].
#[derive(Debug, Clone)]
pub struct Stack {
    pub key: StackKey,
    /// Attributes that set this stack apart from the series' other stacks (empty for a lone stack).
    pub distinguished_by: Vec<&'static str>,
    pub images: Vec<ImageFacts>,
}

/// Images that were left out of every stack, and why.
#[derive(Debug, Clone)]
pub struct DroppedImages {
    pub reason: String,
    pub images: Vec<ImageFacts>,
}

/// A series split into stacks.
#[derive(Debug, Clone)]
pub struct SeriesStacks {
    /// Stacks in a stable order (by echo number, echo time, ImageType, StackID, acquisition, time, orientation).
    pub stacks: Vec<Stack>,
    pub dropped: Vec<DroppedImages>,
}

/// Read every file of ONE series (one [`ImageFacts`] per image) and check their identity
/// (one series, study and frame of reference; no image twice).
///
/// # Errors
/// [`AssembleError::NoFiles`], any per-file error of [`read_images`],
/// [`AssembleError::MixedSeries`], [`AssembleError::DuplicateInstance`].
pub fn read_series(files: &[PathBuf]) -> Result<Vec<ImageFacts>, AssembleError> {
    if files.is_empty() {
        return Err(AssembleError::NoFiles);
    }
    // headers are read in parallel (rayon); results and the first error keep the file order
    let per_file: Vec<Result<Vec<ImageFacts>, AssembleError>> = files.par_iter().map(|f| read_images(f)).collect();
    let mut images = Vec::with_capacity(files.len());
    for r in per_file {
        images.extend(r?);
    }
    check_identity(&images)?;
    Ok(images)
}

/// Split images of one series into stacks (see the module documentation). Never fails:
/// every image ends in a stack or in [`SeriesStacks::dropped`].
pub fn split_stacks(images: Vec<ImageFacts>) -> SeriesStacks {
    let mut dropped = Vec::new();
    let (localizers, images): (Vec<_>, Vec<_>) = images.into_iter().partition(|f| f.is_localizer());
    if !localizers.is_empty() {
        dropped.push(DroppedImages {
            reason: format!("{} LOCALIZER image(s) (ImageType value 3) are not part of a volume", localizers.len()),
            images: localizers,
        });
    }
    let mut groups: Vec<(StackKey, Vec<ImageFacts>)> = Vec::new();
    for f in images {
        match groups.iter_mut().find(|(k, _)| k.matches(&f)) {
            Some((_, g)) => g.push(f),
            None => groups.push((StackKey::of(&f), vec![f])),
        }
    }
    let mut split: Vec<(StackKey, Vec<ImageFacts>)> = Vec::new();
    for (key, images) in groups {
        for (key, images) in split_repeats(key, images, |f| f.acquisition_number, |k, v| k.acquisition_number = v) {
            split.extend(split_repeats(key, images, |f| f.temporal_position, |k, v| k.temporal_position = v));
        }
    }
    split.sort_by(|a, b| {
        let k = |x: &StackKey| {
            (
                x.echo_number,
                x.echo_time_ms.map(|t| (t * 1000.0).round() as i64),
                x.image_type.clone(),
                x.stack_id.clone(),
                x.acquisition_number,
                x.temporal_position,
            )
        };
        k(&a.0).cmp(&k(&b.0)).then_with(|| {
            a.0.orientation.iter().zip(&b.0.orientation).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal)
        })
    });
    let keys: Vec<StackKey> = split.iter().map(|(k, _)| k.clone()).collect();
    let stacks = split
        .into_iter()
        .enumerate()
        .map(|(i, (key, images))| {
            let mut distinguished_by: Vec<&'static str> = Vec::new();
            for (j, other) in keys.iter().enumerate() {
                if i != j {
                    for d in key.differences(other) {
                        if !distinguished_by.contains(&d) {
                            distinguished_by.push(d);
                        }
                    }
                }
            }
            Stack { key, distinguished_by, images }
        })
        .collect();
    SeriesStacks { stacks, dropped }
}

/// Split `images` by `attr` if (and only if) positions along the normal repeat and `attr`
/// takes several values; the key records the value of each part.
fn split_repeats(
    key: StackKey,
    images: Vec<ImageFacts>,
    attr: impl Fn(&ImageFacts) -> Option<i64>,
    set: impl Fn(&mut StackKey, Option<i64>),
) -> Vec<(StackKey, Vec<ImageFacts>)> {
    let (row, col) = directions(&key.orientation);
    let n = cross(row, col);
    let mut d: Vec<f64> = images.iter().map(|f| dot(n, f.position)).collect();
    d.sort_by(|a, b| a.total_cmp(b));
    let repeats = d.windows(2).any(|w| w[1] - w[0] < DUPLICATE_POSITION_FLOOR_MM);
    let values: std::collections::BTreeSet<Option<i64>> = images.iter().map(&attr).collect();
    if !repeats || values.len() < 2 {
        return vec![(key, images)];
    }
    let mut parts: BTreeMap<Option<i64>, Vec<ImageFacts>> = BTreeMap::new();
    for f in images {
        parts.entry(attr(&f)).or_default().push(f);
    }
    // A value per image (e.g. CT numbering each slice of a repeated position as its own
    // acquisition) does not describe stacks: keep the images together and let planning report it.
    if parts.values().any(|p| p.len() < 2) {
        return vec![(key, parts.into_values().flatten().collect())];
    }
    parts
        .into_iter()
        .map(|(v, imgs)| {
            let mut k = key.clone();
            set(&mut k, v);
            (k, imgs)
        })
        .collect()
}

/// A stack and its outcome: a plan ready to decode, or the reason it is refused.
#[derive(Debug)]
pub struct StackOutcome {
    pub key: StackKey,
    pub distinguished_by: Vec<&'static str>,
    /// Number of images in the stack.
    pub images: usize,
    pub plan: Result<SeriesPlan, AssembleError>,
}

/// Read, split and plan the files of ONE series: one [`StackOutcome`] per stack, plus the
/// dropped images.
///
/// # Errors
/// Only series-level problems ([`read_series`]); per-stack problems are in each outcome.
pub fn plan_stacks(
    files: &[PathBuf],
    cfg: &AssembleConfig,
) -> Result<(Vec<StackOutcome>, Vec<DroppedImages>), AssembleError> {
    let split = split_stacks(read_series(files)?);
    let outcomes = split
        .stacks
        .into_iter()
        .map(|s| StackOutcome {
            images: s.images.len(),
            key: s.key,
            distinguished_by: s.distinguished_by,
            plan: plan_images(s.images, cfg),
        })
        .collect();
    Ok((outcomes, split.dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientation_labels() {
        assert_eq!(orientation_label([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]), "axial (rows L, columns P)");
        assert_eq!(orientation_label([0.0, 1.0, 0.0], [0.0, 0.0, -1.0]), "sagittal (rows P, columns I)");
        assert_eq!(orientation_label([1.0, 0.0, 0.0], [0.0, 0.0, -1.0]), "coronal (rows L, columns I)");
        let c = 30f64.to_radians();
        assert!(orientation_label([1.0, 0.0, 0.0], [0.0, c.cos(), -c.sin()]).starts_with("oblique axial"));
    }
}
