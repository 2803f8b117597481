//! Volume reassembly: turn the images of ONE stack into a [`Volume`].
//!
//! The series tracker decides *when* a series is complete; [`super::stacks`] splits it into
//! stacks; this module plans and decodes one stack. Reassembly runs in two phases:
//!
//! 1. [`read_images`] reads every file's header only (stopping before PixelData
//!    (7FE0,0010)) into one [`ImageFacts`] per image — a single-frame instance, or one frame
//!    of an enhanced multi-frame object with its values from the Per-frame / Shared Functional
//!    Groups (PS3.3 C.7.6.16). [`plan_images`] sorts a stack along the slice normal and checks
//!    its positions. Geometry follows PS3.3 C.7.6.2.1.1 (Image Position / Image Orientation
//!    (Patient)): the normal is `n = row_direction × column_direction` and each slice's
//!    position along the stack is `n · ImagePositionPatient`.
//! 2. [`SeriesPlan::decode`] decodes the pixel data file by file (one file in memory at a
//!    time, every frame it holds) into a preallocated `(nz, Rows, Columns)` array, applying the
//!    Modality LUT (Rescale Slope / Intercept, PS3.3 C.11.1; per frame from the Pixel Value
//!    Transformation functional group for enhanced objects).
//!
//! [`build_volume`] (strict: the files must be exactly one stack) and [`build_from_plan`]
//! additionally require a FrameOfReferenceUID (0020,0052), which every derived object
//! (DICOM-SEG) must reference.
//!
//! Anything that is not a regular stack is refused with a specific [`AssembleError`] (worded
//! after dcm2niix where it has an equivalent); nothing is ever silently resampled.
//!
//! Checks, in order:
//! * per file: readable Part-10 header; a multi-frame object has functional groups
//!   (else [`AssembleError::MultiFrameNotSupported`]); non-empty SOPClassUID, SOPInstanceUID,
//!   StudyInstanceUID, SeriesInstanceUID; SamplesPerPixel 1, MONOCHROME1/2; Rows, Columns,
//!   PixelSpacing, ImageOrientationPatient, ImagePositionPatient present and valid per image;
//! * strict path only: no LOCALIZER (ImageType value 3); identical Rows/Columns, PixelSpacing,
//!   orientation ([`super::stacks`] splits instead);
//! * across images: one SeriesInstanceUID / StudyInstanceUID / FrameOfReferenceUID, no repeated
//!   (SOPInstanceUID, frame);
//! * at least `min_slices` slices;
//! * positions: not all identical (→ `NotAVolume`), no duplicate positions with different pixels,
//!   uniform spacing along the normal within `spacing_tolerance_mm` of the median,
//!   positions on one line, and that line parallel to the normal (else `GantryTilt`);
//!   a duplicate position holding an exact copy of the other image is dropped instead
//!   ([`SeriesPlan::duplicates_dropped`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, PixelDecoder};
use ndarray::Array3;
use rayon::prelude::*;

use crate::config::AssembleConfig;
use crate::pipeline::messages::SeriesHeader;
use crate::volume::{cross, dot, norm, SliceRef, Volume};

/// Largest angle (degrees) between the stack direction (difference of
/// ImagePositionPatient) and the slice normal that is still treated as "not tilted".
pub const MAX_TILT_DEGREES: f64 = 0.1;

/// Two ImageOrientationPatient values are the same orientation when every
/// direction cosine differs by at most this much (≈ 0.06°).
pub const ORIENTATION_TOLERANCE: f64 = 1e-3;

/// Two PixelSpacing values are equal when both components differ by at most this much (mm).
pub const PIXEL_SPACING_TOLERANCE_MM: f64 = 1e-4;

/// Absolute floor (mm) below which two slice positions count as the same position.
pub const DUPLICATE_POSITION_FLOOR_MM: f64 = 0.01;

/// Why a series could not be turned into a volume (dcm2niix-style wording where it applies).
///
/// Every variant names the offending file or quantity, so the caller can log it
/// and quarantine the series.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// The file list was empty.
    #[error("no files given for the series")]
    NoFiles,
    /// A file could not be read as a DICOM Part-10 file.
    #[error("unreadable DICOM file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: dicom_object::ReadError,
    },
    /// A required attribute is absent or empty.
    #[error("{path}: required attribute {attribute} is missing or empty")]
    MissingAttribute { path: PathBuf, attribute: &'static str },
    /// An attribute is present but its value cannot be used.
    #[error("{path}: invalid {attribute}: {reason}")]
    InvalidAttribute { path: PathBuf, attribute: &'static str, reason: String },
    /// A multi-frame object without Shared / Per-frame Functional Groups Sequences: no
    /// per-frame geometry to place its frames (PS3.3 C.7.6.16).
    #[error("{path}: multi-frame image without functional groups, so without per-frame geometry (SOPClassUID {sop_class_uid}, NumberOfFrames {number_of_frames})")]
    MultiFrameNotSupported { path: PathBuf, sop_class_uid: String, number_of_frames: u32 },
    /// The pixel data is not single-sample greyscale, or could not be interpreted.
    #[error("{path}: unsupported pixel data: {reason}")]
    UnsupportedPixelData { path: PathBuf, reason: String },
    /// Pixel data could not be decoded (codec error, truncated data, ...).
    #[error("{path}: pixel data could not be decoded: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: dicom_pixeldata::Error,
    },
    /// The files do not share one value of an identifying attribute
    /// (SeriesInstanceUID, StudyInstanceUID, FrameOfReferenceUID).
    #[error("{path}: {attribute} `{found}` differs from `{expected}` of the first file")]
    MixedSeries { path: PathBuf, attribute: &'static str, expected: String, found: String },
    /// The same SOPInstanceUID appears in more than one file.
    #[error("SOPInstanceUID {sop_instance_uid} occurs in more than one file ({path})")]
    DuplicateInstance { path: PathBuf, sop_instance_uid: String },
    /// Slices have different ImageOrientationPatient (dcm2niix splits such series).
    #[error("{path}: slice orientation {found:?} differs from {expected:?} of the first file")]
    MixedOrientation { path: PathBuf, expected: [f64; 6], found: [f64; 6] },
    /// Slices differ in Rows/Columns or PixelSpacing.
    #[error("{path}: {attribute} {found} differs from {expected} of the first file")]
    MixedDimensions { path: PathBuf, attribute: &'static str, expected: String, found: String },
    /// Fewer slices than `assemble.min_slices`.
    #[error("too few slices for a volume: found {found}, need at least {min}")]
    TooFewSlices { found: usize, min: usize },
    /// The instances do not form a volume (e.g. all at one position, a localizer, positions off a line).
    #[error("not a volume: {reason}")]
    NotAVolume { reason: String },
    /// Two slices share one position along the slice normal.
    #[error("duplicate slice position {position:?} (mm, LPS): SOPInstanceUIDs {first} and {second}")]
    DuplicatePosition { position: [f64; 3], first: String, second: String },
    /// dcm2niix: "Interslice distance varies" — a spacing step deviates from the median.
    #[error("Interslice distance varies: step {found:.4} mm between sorted slices {index} and {next} differs from median {expected:.4} mm by more than {tolerance} mm (missing or extra slices?)", next = index + 1)]
    NonUniformSpacing { expected: f64, found: f64, index: usize, tolerance: f64 },
    /// The stack direction is not perpendicular to the image plane (CT gantry tilt);
    /// correcting it needs resampling, which this node never does silently.
    #[error("gantry tilt of {degrees:.2}° between the slice normal and the stack direction")]
    GantryTilt { degrees: f64 },
}

/// One slice of a planned series (header facts only, pixel data not yet read).
#[derive(Debug, Clone)]
pub struct PlannedSlice {
    /// The Part-10 file.
    pub path: PathBuf,
    /// SOPClassUID (0008,0016).
    pub sop_class_uid: String,
    /// SOPInstanceUID (0008,0018).
    pub sop_instance_uid: String,
    /// ImagePositionPatient (0020,0032), mm, LPS.
    pub position: [f64; 3],
    /// `n · position` (mm): the slice's coordinate along the normal; ascending in plan order.
    pub distance: f64,
    /// 1-based frame number in a multi-frame instance; `None` for single-frame instances.
    pub frame_number: Option<u32>,
}

/// A validated, sorted stack of single-frame instances, ready to decode.
///
/// Produced by [`plan_series`]; geometry fields use the conventions of [`Volume`].
#[derive(Debug, Clone)]
pub struct SeriesPlan {
    /// StudyInstanceUID (0020,000D).
    pub study_instance_uid: String,
    /// SeriesInstanceUID (0020,000E).
    pub series_instance_uid: String,
    /// FrameOfReferenceUID (0020,0052), if present and non-empty in every file.
    pub frame_of_reference_uid: Option<String>,
    /// Modality (0008,0060) of the first sorted instance (empty if absent).
    pub modality: String,
    /// Rows (0028,0010): `ny`.
    pub rows: usize,
    /// Columns (0028,0011): `nx`.
    pub columns: usize,
    /// `(z, y, x)` spacing in mm: median step along the normal, PixelSpacing[0], PixelSpacing[1].
    pub spacing: [f64; 3],
    /// Unit row direction (ImageOrientationPatient[0..3], normalised).
    pub row_direction: [f64; 3],
    /// Unit column direction (ImageOrientationPatient[3..6], normalised).
    pub column_direction: [f64; 3],
    /// Unit slice normal `row × column`; slices are sorted ascending along it.
    pub slice_direction: [f64; 3],
    /// Slices in sorted (ascending along the normal) order.
    pub slices: Vec<PlannedSlice>,
    /// First sorted instance's dataset, read up to (excluding) PixelData (7FE0,0010).
    pub header: Arc<InMemDicomObject>,
    /// SOPInstanceUIDs of images dropped as exact duplicates of another image at the same
    /// position (same PixelData bytes, transfer syntax and Rescale Slope/Intercept).
    pub duplicates_dropped: Vec<String>,
}

/// Header facts of one image: a single-frame instance, or one frame of an enhanced
/// multi-frame instance (values from its Per-frame / Shared Functional Groups, PS3.3 C.7.6.16).
///
/// Produced by [`read_images`]; geometry in LPS mm (PS3.3 C.7.6.2.1.1).
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// The Part-10 file.
    pub path: PathBuf,
    /// The file's dataset up to (excluding) PixelData, shared by all frames of the file.
    pub dataset: Arc<InMemDicomObject>,
    /// SOPClassUID (0008,0016).
    pub sop_class_uid: String,
    /// SOPInstanceUID (0008,0018).
    pub sop_instance_uid: String,
    /// StudyInstanceUID (0020,000D).
    pub study_instance_uid: String,
    /// SeriesInstanceUID (0020,000E).
    pub series_instance_uid: String,
    /// FrameOfReferenceUID (0020,0052), `None` when absent or empty.
    pub frame_of_reference_uid: Option<String>,
    /// TransferSyntaxUID (0002,0010) of the file.
    pub transfer_syntax_uid: String,
    /// 1-based frame number within a multi-frame instance (ReferencedFrameNumber for derived
    /// objects); `None` for a single-frame instance.
    pub frame_number: Option<u32>,
    /// Rows (0028,0010).
    pub rows: usize,
    /// Columns (0028,0011).
    pub columns: usize,
    /// PixelSpacing (0028,0030): (row spacing, column spacing), mm.
    pub pixel_spacing: [f64; 2],
    /// ImageOrientationPatient (0020,0037): row then column direction cosines.
    pub orientation: [f64; 6],
    /// ImagePositionPatient (0020,0032), mm, LPS.
    pub position: [f64; 3],
    /// ImageType (0008,0008), or FrameType (0008,9007) of an enhanced frame, upper case.
    pub image_type: Vec<String>,
    /// EchoNumbers (0018,0086), first value.
    pub echo_number: Option<i64>,
    /// EchoTime (0018,0081), or EffectiveEchoTime (0018,9082) of an enhanced frame, ms.
    pub echo_time_ms: Option<f64>,
    /// AcquisitionNumber (0020,0012).
    pub acquisition_number: Option<i64>,
    /// TemporalPositionIdentifier (0020,0100), or TemporalPositionIndex (0020,9128) of an enhanced frame.
    pub temporal_position: Option<i64>,
    /// StackID (0020,9056) of an enhanced frame.
    pub stack_id: Option<String>,
    /// InStackPositionNumber (0020,9057) of an enhanced frame.
    pub in_stack_position: Option<u32>,
    /// SeriesDescription (0008,103E), empty when absent.
    pub series_description: String,
}

impl ImageFacts {
    /// `true` if ImageType value 3 is LOCALIZER (PS3.3 C.8.3.1.1.1, C.8.2.1.1.1).
    pub fn is_localizer(&self) -> bool {
        self.image_type.get(2).is_some_and(|v| v == "LOCALIZER")
    }
}

/// Read the given Part-10 files of ONE series, check they form a single stack, sort,
/// decode, and build a [`Volume`] plus the [`SeriesHeader`] of the first sorted instance.
///
/// The volume's `data` has shape `(nz, Rows, Columns)` = `[z][y][x]`, values after
/// Rescale Slope/Intercept (HU for CT). See the module documentation for all checks.
///
/// # Errors
/// Any [`AssembleError`] from [`plan_series`] or [`SeriesPlan::decode`], and
/// [`AssembleError::MissingAttribute`] for FrameOfReferenceUID (0020,0052), which is
/// required here because derived objects must reference it (PS3.3 C.7.4.1).
pub fn build_volume(files: &[PathBuf], cfg: &AssembleConfig) -> Result<(SeriesHeader, Volume), AssembleError> {
    build_from_plan(&plan_series(files, cfg)?)
}

/// Decode a plan into a [`Volume`] plus the [`SeriesHeader`] of its first sorted image.
///
/// # Errors
/// [`AssembleError::MissingAttribute`] for FrameOfReferenceUID (0020,0052) (derived objects
/// must reference it, PS3.3 C.7.4.1), and the errors of [`SeriesPlan::decode`].
pub fn build_from_plan(plan: &SeriesPlan) -> Result<(SeriesHeader, Volume), AssembleError> {
    let frame_of_reference_uid = match &plan.frame_of_reference_uid {
        Some(uid) => uid.clone(),
        None => {
            return Err(AssembleError::MissingAttribute {
                path: plan.slices[0].path.clone(),
                attribute: "FrameOfReferenceUID",
            })
        }
    };
    let volume = plan.decode()?;
    let header = SeriesHeader {
        study_instance_uid: plan.study_instance_uid.clone(),
        series_instance_uid: plan.series_instance_uid.clone(),
        frame_of_reference_uid,
        modality: plan.modality.clone(),
        dataset: plan.header.clone(),
    };
    Ok((header, volume))
}

/// Phase 1: read headers only, validate that `files` form one regular stack, and sort it.
///
/// Reads each file up to (excluding) PixelData, so memory stays small. Sorting is by
/// `n · ImagePositionPatient` ascending, `n = row_direction × column_direction`; the
/// z spacing is the median of consecutive differences (along the normal, not the table step).
///
/// # Errors
/// See [`AssembleError`]; the checks and their order are listed in the module documentation.
pub fn plan_series(files: &[PathBuf], cfg: &AssembleConfig) -> Result<SeriesPlan, AssembleError> {
    if files.is_empty() {
        return Err(AssembleError::NoFiles);
    }
    let mut facts: Vec<ImageFacts> = Vec::with_capacity(files.len());
    for path in files {
        facts.extend(read_images(path)?);
    }
    if let Some(l) = facts.iter().find(|f| f.is_localizer()) {
        return Err(AssembleError::NotAVolume {
            reason: format!("{} is a LOCALIZER (ImageType {})", l.path.display(), l.image_type.join("\\")),
        });
    }
    check_consistency(&facts)?;
    plan_images(facts, cfg)
}

/// Plan images already known to form one stack (same orientation, size and spacing — as
/// [`super::stacks::split_stacks`] groups them): count, sort along the normal and check
/// positions (duplicates, uniform spacing, collinearity, gantry tilt).
///
/// # Errors
/// [`AssembleError::NoFiles`] for no images, [`AssembleError::TooFewSlices`],
/// [`AssembleError::NotAVolume`], [`AssembleError::DuplicatePosition`],
/// [`AssembleError::NonUniformSpacing`], [`AssembleError::GantryTilt`].
pub fn plan_images(mut facts: Vec<ImageFacts>, cfg: &AssembleConfig) -> Result<SeriesPlan, AssembleError> {
    if facts.is_empty() {
        return Err(AssembleError::NoFiles);
    }
    if facts.len() < cfg.min_slices {
        return Err(AssembleError::TooFewSlices { found: facts.len(), min: cfg.min_slices });
    }

    let first = &facts[0];
    let o = first.orientation;
    let row = normalize([o[0], o[1], o[2]]);
    let col = normalize([o[3], o[4], o[5]]);
    let normal = normalize(cross(row, col));

    let mut order: Vec<(f64, usize)> = facts.iter().enumerate().map(|(i, f)| (dot(normal, f.position), i)).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));

    let distances: Vec<f64> = order.iter().map(|(d, _)| *d).collect();
    let n = distances.len();
    if distances[n - 1] - distances[0] < DUPLICATE_POSITION_FLOOR_MM {
        return Err(AssembleError::NotAVolume {
            reason: format!("all {n} slices share one position along the slice normal ({:.3} mm)", distances[0]),
        });
    }
    let steps: Vec<f64> = distances.windows(2).map(|w| w[1] - w[0]).collect();
    let median_step = median(&steps);
    let duplicate_tolerance = DUPLICATE_POSITION_FLOOR_MM.max(1e-3 * median_step);
    // Duplicate positions: an exact copy (same pixel data and rescale, e.g. a slice re-sent
    // under a new SOPInstanceUID) is dropped, keeping the smaller SOPInstanceUID; anything else
    // is refused, since choosing one of two different images would be a guess.
    let mut drop_idx: Vec<usize> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if *step < duplicate_tolerance {
            let (ia, ib) = (order[i].1, order[i + 1].1);
            let (a, b) = (&facts[ia], &facts[ib]);
            if !drop_idx.contains(&ia) && !drop_idx.contains(&ib) && identical_pixels(a, b) {
                drop_idx.push(if a.sop_instance_uid <= b.sop_instance_uid { ib } else { ia });
                continue;
            }
            return Err(AssembleError::DuplicatePosition {
                position: b.position,
                first: a.sop_instance_uid.clone(),
                second: b.sop_instance_uid.clone(),
            });
        }
    }
    if !drop_idx.is_empty() {
        drop_idx.sort_unstable();
        let mut dropped = Vec::new();
        for i in drop_idx.into_iter().rev() {
            let f = facts.swap_remove(i);
            tracing::warn!(sop_instance_uid = %f.sop_instance_uid, path = %f.path.display(), "identical duplicate slice dropped");
            dropped.push(f.sop_instance_uid);
        }
        let mut plan = plan_images(facts, cfg)?;
        plan.duplicates_dropped.extend(dropped);
        plan.duplicates_dropped.sort();
        return Ok(plan);
    }
    for (i, step) in steps.iter().enumerate() {
        if (step - median_step).abs() > cfg.spacing_tolerance_mm {
            return Err(AssembleError::NonUniformSpacing {
                expected: median_step,
                found: *step,
                index: i,
                tolerance: cfg.spacing_tolerance_mm,
            });
        }
    }
    check_collinear_and_tilt(&facts, &order, normal, first.pixel_spacing)?;

    let first_sorted = order[0].1;
    let slices: Vec<PlannedSlice> = order
        .iter()
        .map(|&(distance, i)| PlannedSlice {
            frame_number: facts[i].frame_number,
            path: facts[i].path.clone(),
            sop_class_uid: facts[i].sop_class_uid.clone(),
            sop_instance_uid: facts[i].sop_instance_uid.clone(),
            position: facts[i].position,
            distance,
        })
        .collect();
    let (rows, columns, pixel_spacing) = (first.rows, first.columns, first.pixel_spacing);
    let study_instance_uid = first.study_instance_uid.clone();
    let series_instance_uid = first.series_instance_uid.clone();
    let frame_of_reference_uid = first.frame_of_reference_uid.clone();
    let header = facts.swap_remove(first_sorted).dataset;
    drop(facts);
    let header = strip_functional_groups(header);
    let modality = string_of(&header, tags::MODALITY).unwrap_or_default();
    Ok(SeriesPlan {
        study_instance_uid,
        series_instance_uid,
        frame_of_reference_uid,
        modality,
        rows,
        columns,
        spacing: [median_step, pixel_spacing[0], pixel_spacing[1]],
        row_direction: row,
        column_direction: col,
        slice_direction: normal,
        slices,
        header,
        duplicates_dropped: Vec::new(),
    })
}

/// `true` when two single-frame images carry byte-identical PixelData in the same transfer
/// syntax with the same Rescale Slope/Intercept (so they decode to the same values). Frames of
/// multi-frame objects and unreadable files are never "identical" (conservative: refuse).
fn identical_pixels(a: &ImageFacts, b: &ImageFacts) -> bool {
    if a.frame_number.is_some() || b.frame_number.is_some() || a.transfer_syntax_uid != b.transfer_syntax_uid {
        return false;
    }
    let rescale = |f: &ImageFacts| (float_of(&f.dataset, tags::RESCALE_SLOPE), float_of(&f.dataset, tags::RESCALE_INTERCEPT));
    if rescale(a) != rescale(b) {
        return false;
    }
    let (Ok(oa), Ok(ob)) = (dicom_object::open_file(&a.path), dicom_object::open_file(&b.path)) else { return false };
    match (oa.get(tags::PIXEL_DATA), ob.get(tags::PIXEL_DATA)) {
        (Some(pa), Some(pb)) => pa.value() == pb.value(),
        _ => false,
    }
}

impl SeriesPlan {
    /// Number of slices `nz`.
    pub fn len(&self) -> usize {
        self.slices.len()
    }

    /// `true` if the plan has no slices (never the case for a plan from [`plan_series`]).
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// Phase 2: decode every slice (in plan order) into a [`Volume`] of shape `(nz, Rows, Columns)`.
    ///
    /// Each file is opened, decoded with `dicom-pixeldata` (native, JPEG lossless, JPEG 2000, RLE, …)
    /// and converted to `f32` through the Modality LUT — Rescale Slope/Intercept when present,
    /// identity otherwise (PS3.3 C.11.1.1.2) — then dropped before the next one is read.
    ///
    /// MONOCHROME1: values are kept as rescaled, **not inverted**. MONOCHROME1 only tells a
    /// display to show the minimum as white (PS3.3 C.7.6.3.1.2); the stored values (and HU after
    /// rescale) keep their physical meaning, which is what analyses and measurements need.
    ///
    /// # Errors
    /// [`AssembleError::Unreadable`], [`AssembleError::Decode`], and
    /// [`AssembleError::UnsupportedPixelData`] when the decoded frame does not match the planned
    /// Rows/Columns or is not single-sample greyscale.
    pub fn decode(&self) -> Result<Volume, AssembleError> {
        let (nz, ny, nx) = (self.slices.len(), self.rows, self.columns);
        let mut data = Array3::<f32>::zeros((nz, ny, nx));
        let options = ConvertOptions::new();
        // Each file is opened and decoded once, filling every slice it holds (all frames of a
        // multi-frame object), then dropped: one file's pixels per decoding thread besides the volume.
        let mut by_file: Vec<(&PathBuf, Vec<(usize, Option<u32>)>)> = Vec::new();
        let mut index: std::collections::HashMap<&PathBuf, usize> = std::collections::HashMap::new();
        for (z, slice) in self.slices.iter().enumerate() {
            let k = *index.entry(&slice.path).or_insert_with(|| {
                by_file.push((&slice.path, Vec::new()));
                by_file.len() - 1
            });
            by_file[k].1.push((z, slice.frame_number));
        }
        // Files are decoded in parallel (rayon; one file's pixels per thread in memory); each
        // file fills only its own slices, so the plane views are handed out disjointly. The
        // first error in slice order is returned, as a serial loop would.
        let planes: Vec<std::sync::Mutex<ndarray::ArrayViewMut2<f32>>> =
            data.outer_iter_mut().map(std::sync::Mutex::new).collect();
        let results: Vec<Result<(), AssembleError>> = by_file
            .into_par_iter()
            .map(|(path, targets)| -> Result<(), AssembleError> {
                let path: &PathBuf = path;
                let obj = dicom_object::open_file(path)
                    .map_err(|source| AssembleError::Unreadable { path: path.clone(), source })?;
                if obj.get(tags::PIXEL_DATA).is_none() {
                    return Err(AssembleError::MissingAttribute { path: path.clone(), attribute: "PixelData" });
                }
                let decoded = obj
                    .decode_pixel_data()
                    .map_err(|source| AssembleError::Decode { path: path.clone(), source })?;
                let unsupported = |reason: String| AssembleError::UnsupportedPixelData { path: path.clone(), reason };
                if decoded.samples_per_pixel() != 1 || !decoded.photometric_interpretation().is_monochrome() {
                    return Err(unsupported(format!(
                        "decoded as {} with {} samples per pixel; only MONOCHROME1/MONOCHROME2 with 1 sample is supported",
                        decoded.photometric_interpretation(),
                        decoded.samples_per_pixel()
                    )));
                }
                if decoded.rows() as usize != ny || decoded.columns() as usize != nx {
                    return Err(unsupported(format!(
                        "decoded frame is {}x{}, header says {}x{} (Rows x Columns)",
                        decoded.rows(),
                        decoded.columns(),
                        ny,
                        nx
                    )));
                }
                for (z, frame_number) in targets {
                    let frame = frame_number.map(|f| f - 1).unwrap_or(0);
                    if frame >= decoded.number_of_frames() {
                        return Err(unsupported(format!(
                            "frame {} requested, the pixel data holds {} frame(s)",
                            frame + 1,
                            decoded.number_of_frames()
                        )));
                    }
                    let values: Vec<f32> = decoded
                        .to_vec_frame_with_options(frame, &options)
                        .map_err(|source| AssembleError::Decode { path: path.clone(), source })?;
                    if values.len() != ny * nx {
                        return Err(unsupported(format!("decoded {} values, expected {}", values.len(), ny * nx)));
                    }
                    let view = ndarray::ArrayView2::from_shape((ny, nx), &values)
                        .map_err(|e| unsupported(format!("decoded frame has an unexpected layout: {e}")))?;
                    planes[z].lock().expect("plane lock").assign(&view);
                }
                Ok(())
            })
            .collect();
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        drop(planes);
        Ok(Volume {
            data,
            spacing: self.spacing,
            origin: self.slices[0].position,
            row_direction: self.row_direction,
            column_direction: self.column_direction,
            slice_direction: self.slice_direction,
            slices: self
                .slices
                .iter()
                .map(|s| SliceRef {
                    sop_class_uid: s.sop_class_uid.clone(),
                    sop_instance_uid: s.sop_instance_uid.clone(),
                    frame_number: s.frame_number,
                })
                .collect(),
        })
    }
}

/// Read one Part-10 file's header (up to PixelData) into one [`ImageFacts`] per image:
/// one for a single-frame instance, one per frame for an enhanced multi-frame instance.
///
/// Enhanced objects (PS3.3 C.7.6.16 Multi-frame Functional Groups): each frame's values are
/// taken from its Per-frame Functional Groups item, else the Shared Functional Groups item,
/// else the top-level attribute — Plane Position (ImagePositionPatient), Plane Orientation
/// (ImageOrientationPatient), Pixel Measures (PixelSpacing), MR Echo (EffectiveEchoTime),
/// MR/CT Image Frame Type (FrameType), Frame Content (StackID, InStackPositionNumber,
/// TemporalPositionIndex).
///
/// # Errors
/// [`AssembleError::Unreadable`]; [`AssembleError::MissingAttribute`] /
/// [`AssembleError::InvalidAttribute`] for absent or unusable SOP/Study/Series UIDs, Rows,
/// Columns, PixelSpacing, ImageOrientationPatient (not unit / not orthogonal),
/// ImagePositionPatient; [`AssembleError::UnsupportedPixelData`] for colour images;
/// [`AssembleError::MultiFrameNotSupported`] for a multi-frame object without functional groups.
pub fn read_images(path: &Path) -> Result<Vec<ImageFacts>, AssembleError> {
    let file = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|source| AssembleError::Unreadable { path: path.to_path_buf(), source })?;
    let transfer_syntax_uid = file.meta().transfer_syntax().trim_end_matches(['\0', ' ']).to_string();
    let dataset = Arc::new(file.into_inner());
    let p = path.to_path_buf();
    let missing = |attribute: &'static str| AssembleError::MissingAttribute { path: p.clone(), attribute };
    let invalid =
        |attribute: &'static str, reason: String| AssembleError::InvalidAttribute { path: p.clone(), attribute, reason };

    let sop_class_uid = string_of(&dataset, tags::SOP_CLASS_UID).unwrap_or_default();
    let number_of_frames = match dataset.get(tags::NUMBER_OF_FRAMES) {
        Some(e) => e.to_int::<i64>().map_err(|e| invalid("NumberOfFrames", e.to_string()))?,
        None => 1,
    };
    if number_of_frames < 1 {
        return Err(invalid("NumberOfFrames", format!("{number_of_frames} must be at least 1")));
    }
    let shared = first_item(&dataset, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame: Option<&[InMemDicomObject]> =
        dataset.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|e| e.items());
    let enhanced = shared.is_some() || per_frame.is_some();
    if number_of_frames > 1 && !enhanced {
        return Err(AssembleError::MultiFrameNotSupported {
            path: p.clone(),
            sop_class_uid,
            number_of_frames: number_of_frames.clamp(0, u32::MAX as i64) as u32,
        });
    }
    if sop_class_uid.is_empty() {
        return Err(missing("SOPClassUID"));
    }
    let sop_instance_uid = string_of(&dataset, tags::SOP_INSTANCE_UID).ok_or_else(|| missing("SOPInstanceUID"))?;
    let study_instance_uid =
        string_of(&dataset, tags::STUDY_INSTANCE_UID).ok_or_else(|| missing("StudyInstanceUID"))?;
    let series_instance_uid =
        string_of(&dataset, tags::SERIES_INSTANCE_UID).ok_or_else(|| missing("SeriesInstanceUID"))?;
    let frame_of_reference_uid = string_of(&dataset, tags::FRAME_OF_REFERENCE_UID);

    let samples_per_pixel = match dataset.get(tags::SAMPLES_PER_PIXEL) {
        Some(e) => e.to_int::<u16>().map_err(|e| invalid("SamplesPerPixel", e.to_string()))?,
        None => return Err(missing("SamplesPerPixel")),
    };
    let photometric = string_of(&dataset, tags::PHOTOMETRIC_INTERPRETATION)
        .ok_or_else(|| missing("PhotometricInterpretation"))?;
    if samples_per_pixel != 1 || !(photometric == "MONOCHROME2" || photometric == "MONOCHROME1") {
        return Err(AssembleError::UnsupportedPixelData {
            path: p.clone(),
            reason: format!(
                "PhotometricInterpretation {photometric} with SamplesPerPixel {samples_per_pixel}; \
                 only MONOCHROME1/MONOCHROME2 with 1 sample is supported"
            ),
        });
    }
    let rows = positive_int(&dataset, tags::ROWS, "Rows", &p)?;
    let columns = positive_int(&dataset, tags::COLUMNS, "Columns", &p)?;
    let image_type_top: Vec<String> = match dataset.get(tags::IMAGE_TYPE) {
        Some(e) => e
            .to_multi_str()
            .map_err(|e| invalid("ImageType", e.to_string()))?
            .iter()
            .map(|v| v.trim().to_ascii_uppercase())
            .collect(),
        None => Vec::new(),
    };
    let series_description = string_of(&dataset, tags::SERIES_DESCRIPTION).unwrap_or_default();
    let acquisition_number = int_of(&dataset, tags::ACQUISITION_NUMBER);
    let echo_number = int_of(&dataset, tags::ECHO_NUMBERS);

    if !enhanced {
        let pixel_spacing = floats(&dataset, tags::PIXEL_SPACING, "PixelSpacing", 2, &p)?;
        let orientation = floats(&dataset, tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient", 6, &p)?;
        let position = floats(&dataset, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient", 3, &p)?;
        let (pixel_spacing, orientation) = check_plane(pixel_spacing, orientation, &p)?;
        return Ok(vec![ImageFacts {
            path: p.clone(),
            dataset: dataset.clone(),
            sop_class_uid,
            sop_instance_uid,
            study_instance_uid,
            series_instance_uid,
            frame_of_reference_uid,
            transfer_syntax_uid,
            frame_number: None,
            rows,
            columns,
            pixel_spacing,
            orientation,
            position: [position[0], position[1], position[2]],
            image_type: image_type_top,
            echo_number,
            echo_time_ms: float_of(&dataset, tags::ECHO_TIME),
            acquisition_number,
            temporal_position: int_of(&dataset, tags::TEMPORAL_POSITION_IDENTIFIER),
            stack_id: None,
            in_stack_position: None,
            series_description,
        }]);
    }

    let n = number_of_frames as usize;
    let per_frame = per_frame.unwrap_or(&[]);
    if per_frame.len() != n && !(per_frame.is_empty() && n == 1) {
        return Err(invalid(
            "PerFrameFunctionalGroupsSequence",
            format!("{} items for NumberOfFrames {n} (PS3.3 C.7.6.16: one item per frame)", per_frame.len()),
        ));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let frame = per_frame.get(i);
        // Functional group macro `seq` → attribute `tag`: per-frame item first, then shared, then top level.
        let find = |seq: dicom_core::Tag, tag: dicom_core::Tag| -> Option<&InMemDicomObject> {
            [frame, shared]
                .into_iter()
                .flatten()
                .filter_map(|g| first_item(g, seq))
                .find(|item| item.get(tag).is_some())
                .or_else(|| dataset.get(tag).map(|_| dataset.as_ref()))
        };
        let need = |seq, tag, name: &'static str| find(seq, tag).ok_or_else(|| missing(name));
        let pixel_spacing = floats(need(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING, "PixelSpacing")?, tags::PIXEL_SPACING, "PixelSpacing", 2, &p)?;
        let orientation = floats(
            need(tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient")?,
            tags::IMAGE_ORIENTATION_PATIENT,
            "ImageOrientationPatient",
            6,
            &p,
        )?;
        let position = floats(
            need(tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient")?,
            tags::IMAGE_POSITION_PATIENT,
            "ImagePositionPatient",
            3,
            &p,
        )?;
        let (pixel_spacing, orientation) = check_plane(pixel_spacing, orientation, &p)?;
        let frame_type: Option<Vec<String>> = [tags::MR_IMAGE_FRAME_TYPE_SEQUENCE, tags::CT_IMAGE_FRAME_TYPE_SEQUENCE]
            .into_iter()
            .find_map(|seq| {
                [frame, shared].into_iter().flatten().filter_map(|g| first_item(g, seq)).find_map(|item| {
                    item.get(tags::FRAME_TYPE)
                        .and_then(|e| e.to_multi_str().ok())
                        .map(|v| v.iter().map(|s| s.trim().to_ascii_uppercase()).collect())
                })
            });
        let content = [frame, shared].into_iter().flatten().find_map(|g| first_item(g, tags::FRAME_CONTENT_SEQUENCE));
        let echo_item = [frame, shared].into_iter().flatten().find_map(|g| first_item(g, tags::MR_ECHO_SEQUENCE));
        out.push(ImageFacts {
            path: p.clone(),
            dataset: dataset.clone(),
            sop_class_uid: sop_class_uid.clone(),
            sop_instance_uid: sop_instance_uid.clone(),
            study_instance_uid: study_instance_uid.clone(),
            series_instance_uid: series_instance_uid.clone(),
            frame_of_reference_uid: frame_of_reference_uid.clone(),
            transfer_syntax_uid: transfer_syntax_uid.clone(),
            frame_number: Some(i as u32 + 1),
            rows,
            columns,
            pixel_spacing,
            orientation,
            position: [position[0], position[1], position[2]],
            image_type: frame_type.unwrap_or_else(|| image_type_top.clone()),
            echo_number,
            echo_time_ms: echo_item
                .and_then(|e| float_of(e, tags::EFFECTIVE_ECHO_TIME))
                .or_else(|| float_of(&dataset, tags::ECHO_TIME)),
            acquisition_number,
            temporal_position: content.and_then(|c| int_of(c, tags::TEMPORAL_POSITION_INDEX)),
            stack_id: content.and_then(|c| string_of(c, tags::STACK_ID)),
            in_stack_position: content
                .and_then(|c| int_of(c, tags::IN_STACK_POSITION_NUMBER))
                .and_then(|v| u32::try_from(v).ok()),
            series_description: series_description.clone(),
        });
    }
    Ok(out)
}

/// Validate PixelSpacing (positive) and ImageOrientationPatient (unit, orthogonal directions).
fn check_plane(pixel_spacing: Vec<f64>, orientation: Vec<f64>, p: &Path) -> Result<([f64; 2], [f64; 6]), AssembleError> {
    let invalid =
        |attribute: &'static str, reason: String| AssembleError::InvalidAttribute { path: p.to_path_buf(), attribute, reason };
    if pixel_spacing.iter().any(|v| !(*v > 0.0)) {
        return Err(invalid("PixelSpacing", format!("{pixel_spacing:?} must be positive")));
    }
    let (r, c) = ([orientation[0], orientation[1], orientation[2]], [orientation[3], orientation[4], orientation[5]]);
    let (nr, nc) = (norm(r), norm(c));
    if (nr - 1.0).abs() > 1e-2 || (nc - 1.0).abs() > 1e-2 {
        return Err(invalid(
            "ImageOrientationPatient",
            format!("direction cosines {orientation:?} are not unit vectors (norms {nr:.4}, {nc:.4})"),
        ));
    }
    let cos = dot(r, c) / (nr * nc);
    if cos.abs() > ORIENTATION_TOLERANCE {
        return Err(invalid(
            "ImageOrientationPatient",
            format!("row and column directions {orientation:?} are not orthogonal (cosine {cos:.5})"),
        ));
    }
    Ok((
        [pixel_spacing[0], pixel_spacing[1]],
        [orientation[0], orientation[1], orientation[2], orientation[3], orientation[4], orientation[5]],
    ))
}

/// First item of the sequence `tag`, if present and non-empty.
fn first_item(ds: &InMemDicomObject, tag: dicom_core::Tag) -> Option<&InMemDicomObject> {
    ds.get(tag).and_then(|e| e.items()).and_then(|items| items.first())
}

/// First integer value of `tag`, `None` when absent, empty or not an integer.
fn int_of(ds: &InMemDicomObject, tag: dicom_core::Tag) -> Option<i64> {
    ds.get(tag).and_then(|e| e.to_int::<i64>().ok())
}

/// First floating-point value of `tag`, `None` when absent, empty or not finite.
fn float_of(ds: &InMemDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    ds.get(tag).and_then(|e| e.to_float64().ok()).filter(|v| v.is_finite())
}

/// The header kept for derived objects: without the (possibly large) Per-frame Functional Groups.
fn strip_functional_groups(ds: Arc<InMemDicomObject>) -> Arc<InMemDicomObject> {
    if ds.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).is_none() {
        return ds;
    }
    let mut d = (*ds).clone();
    d.remove_element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    Arc::new(d)
}

/// All files must belong to one series/study/frame of reference and share size, spacing, orientation.
fn check_consistency(facts: &[ImageFacts]) -> Result<(), AssembleError> {
    check_identity(facts)?;
    check_same_plane(facts)
}

/// All images must belong to one series, study and frame of reference, and no image
/// (SOPInstanceUID, frame number) may occur twice.
///
/// # Errors
/// [`AssembleError::DuplicateInstance`], [`AssembleError::MixedSeries`].
pub(crate) fn check_identity(facts: &[ImageFacts]) -> Result<(), AssembleError> {
    let Some(first) = facts.first() else { return Ok(()) };
    let mut seen = HashSet::with_capacity(facts.len());
    for f in facts {
        if !seen.insert((f.sop_instance_uid.as_str(), f.frame_number)) {
            return Err(AssembleError::DuplicateInstance {
                path: f.path.clone(),
                sop_instance_uid: f.sop_instance_uid.clone(),
            });
        }
        let mixed = |attribute: &'static str, expected: &str, found: &str| AssembleError::MixedSeries {
            path: f.path.clone(),
            attribute,
            expected: expected.to_string(),
            found: found.to_string(),
        };
        if f.series_instance_uid != first.series_instance_uid {
            return Err(mixed("SeriesInstanceUID", &first.series_instance_uid, &f.series_instance_uid));
        }
        if f.study_instance_uid != first.study_instance_uid {
            return Err(mixed("StudyInstanceUID", &first.study_instance_uid, &f.study_instance_uid));
        }
        if f.frame_of_reference_uid != first.frame_of_reference_uid {
            let show = |o: &Option<String>| o.clone().unwrap_or_else(|| "(absent)".into());
            return Err(mixed(
                "FrameOfReferenceUID",
                &show(&first.frame_of_reference_uid),
                &show(&f.frame_of_reference_uid),
            ));
        }
    }
    Ok(())
}

/// Images must share orientation, Rows/Columns and PixelSpacing.
fn check_same_plane(facts: &[ImageFacts]) -> Result<(), AssembleError> {
    let Some(first) = facts.first() else { return Ok(()) };
    for f in facts {
        if f.orientation.iter().zip(first.orientation.iter()).any(|(a, b)| (a - b).abs() > ORIENTATION_TOLERANCE) {
            return Err(AssembleError::MixedOrientation {
                path: f.path.clone(),
                expected: first.orientation,
                found: f.orientation,
            });
        }
        if (f.rows, f.columns) != (first.rows, first.columns) {
            return Err(AssembleError::MixedDimensions {
                path: f.path.clone(),
                attribute: "Rows/Columns",
                expected: format!("{}x{}", first.rows, first.columns),
                found: format!("{}x{}", f.rows, f.columns),
            });
        }
        if f.pixel_spacing.iter().zip(first.pixel_spacing.iter()).any(|(a, b)| (a - b).abs() > PIXEL_SPACING_TOLERANCE_MM)
        {
            return Err(AssembleError::MixedDimensions {
                path: f.path.clone(),
                attribute: "PixelSpacing",
                expected: format!("{:?}", first.pixel_spacing),
                found: format!("{:?}", f.pixel_spacing),
            });
        }
    }
    Ok(())
}

/// Positions must lie on one line (within a tenth of the smallest pixel spacing), and that
/// line must be parallel to the normal within [`MAX_TILT_DEGREES`].
fn check_collinear_and_tilt(
    facts: &[ImageFacts],
    order: &[(f64, usize)],
    normal: [f64; 3],
    pixel_spacing: [f64; 2],
) -> Result<(), AssembleError> {
    let p0 = facts[order[0].1].position;
    let plast = facts[order[order.len() - 1].1].position;
    let axis = sub(plast, p0);
    let length = norm(axis);
    let unit = [axis[0] / length, axis[1] / length, axis[2] / length];
    let tolerance = 0.1 * pixel_spacing[0].min(pixel_spacing[1]);
    for &(_, i) in order.iter() {
        let d = sub(facts[i].position, p0);
        let along = dot(d, unit);
        let off = norm([d[0] - along * unit[0], d[1] - along * unit[1], d[2] - along * unit[2]]);
        if off > tolerance {
            return Err(AssembleError::NotAVolume {
                reason: format!(
                    "slice positions are not on one line: {} lies {off:.3} mm off the line through the first and last slice",
                    facts[i].path.display()
                ),
            });
        }
    }
    // `along normal` is > 0 because the sort is ascending and positions are distinct.
    let cos = (dot(unit, normal)).clamp(-1.0, 1.0);
    let degrees = cos.acos().to_degrees();
    if degrees > MAX_TILT_DEGREES {
        return Err(AssembleError::GantryTilt { degrees });
    }
    Ok(())
}

/// Trimmed string value of `tag`, `None` when absent, unconvertible or empty (trailing NUL/space removed).
fn string_of(ds: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let e = ds.get(tag)?;
    let s = e.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

fn positive_int(ds: &InMemDicomObject, tag: dicom_core::Tag, name: &'static str, path: &Path) -> Result<usize, AssembleError> {
    let e = ds.get(tag).ok_or_else(|| AssembleError::MissingAttribute { path: path.to_path_buf(), attribute: name })?;
    let v = e.to_int::<i64>().map_err(|err| AssembleError::InvalidAttribute {
        path: path.to_path_buf(),
        attribute: name,
        reason: err.to_string(),
    })?;
    if v <= 0 {
        return Err(AssembleError::InvalidAttribute { path: path.to_path_buf(), attribute: name, reason: format!("{v} must be positive") });
    }
    Ok(v as usize)
}

fn floats(ds: &InMemDicomObject, tag: dicom_core::Tag, name: &'static str, count: usize, path: &Path) -> Result<Vec<f64>, AssembleError> {
    let e = ds.get(tag).ok_or_else(|| AssembleError::MissingAttribute { path: path.to_path_buf(), attribute: name })?;
    let invalid = |reason: String| AssembleError::InvalidAttribute { path: path.to_path_buf(), attribute: name, reason };
    let v = e.to_multi_float64().map_err(|err| invalid(err.to_string()))?;
    if v.is_empty() {
        return Err(AssembleError::MissingAttribute { path: path.to_path_buf(), attribute: name });
    }
    if v.len() != count {
        return Err(invalid(format!("expected {count} values, found {}", v.len())));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(invalid(format!("non-finite value in {v:?}")));
    }
    Ok(v)
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn normalize(a: [f64; 3]) -> [f64; 3] {
    let n = norm(a);
    [a[0] / n, a[1] / n, a[2] / n]
}

/// Median of a non-empty slice (mean of the two middle values for even length).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn error_messages_use_dcm2niix_wording() {
        let e = AssembleError::NonUniformSpacing { expected: 5.0, found: 10.0, index: 2, tolerance: 0.2 };
        let msg = e.to_string();
        assert!(msg.starts_with("Interslice distance varies"), "{msg}");
        assert!(msg.contains("slices 2 and 3"), "{msg}");
    }
}
