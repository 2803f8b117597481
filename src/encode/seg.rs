//! DICOM Segmentation of a label map on the grid of its source volume: BINARY
//! (Segmentation Storage, 1.2.840.10008.5.1.4.1.1.66.4) or LABELMAP (Label Map
//! Segmentation Storage, 1.2.840.10008.5.1.4.1.1.66.7, PS3.3 C.8.20 as amended by
//! Supplement 243; see [`encode_labelmap_seg`] for how it differs).
//!
//! IOD: PS3.3 A.51 (Segmentation IOD). Modules written: Patient, General
//! Study, Patient Study (when present in the source), General Series,
//! Segmentation Series (C.8.20.1), Frame of Reference, General Equipment,
//! Enhanced General Equipment (C.7.5.2), General Image, Image Pixel,
//! Segmentation Image (C.8.20.2), Multi-frame Functional Groups (C.7.6.16),
//! Multi-frame Dimension (C.7.6.17), Common Instance Reference (C.12.2) and
//! SOP Common (C.12.1).
//!
//! BINARY frame layout (the convention of highdicom and dcmqi):
//! * Frames are segment-major: all frames of segment 1, then segment 2, ...
//! * Within a segment, frames follow the source planes in ascending position
//!   along the slice normal `n = row_direction × column_direction`
//!   (ImageOrientationPatient row × column cosines).
//! * A (segment, plane) frame that would be all zero is omitted; if the whole
//!   label map is empty, every (segment, plane) frame is kept so the object
//!   still covers the source series.
//! * Dimension index 1 is ReferencedSegmentNumber (0062,000B) in the
//!   Segment Identification Sequence (0062,000A); dimension index 2 is
//!   ImagePositionPatient (0020,0032) in the Plane Position Sequence
//!   (0020,9113), its value being the 1-based rank of the plane along `n`
//!   among the planes that occur in the SEG.

use std::collections::BTreeSet;

use chrono::Local;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use ndarray::{Array3, Axis};
use rayon::prelude::*;

use super::cielab::srgb_to_dicom_lab;
use super::EncodeError;
use crate::pipeline::messages::{
    AlgorithmIdentification, Code, SegmentAlgorithmType, SegmentDescription, Segmentation,
};
use crate::spool::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::uid::new_uid;
use crate::volume::{cross, dot, norm, Volume};

/// Descriptive attributes of the SEG series and of the equipment that made it.
///
/// Manufacturer, ManufacturerModelName, DeviceSerialNumber and
/// SoftwareVersions are Type 1 in the Enhanced General Equipment module
/// (PS3.3 C.7.5.2): when left empty, the [`Default`] values are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegOptions {
    /// SeriesNumber (0020,0011) of the new SEG series.
    pub series_number: i32,
    /// SeriesDescription (0008,103E); also used as ContentDescription (0070,0081).
    pub series_description: String,
    /// ContentLabel (0070,0080): a Code String, at most 16 characters of
    /// `A–Z 0–9 _ space`; other characters are replaced by `_` and upper-cased.
    pub content_label: String,
    /// Manufacturer (0008,0070), e.g. `myonode`.
    pub manufacturer: String,
    /// ManufacturerModelName (0008,1090), Type 1 in Enhanced General Equipment.
    pub manufacturer_model_name: String,
    /// SoftwareVersions (0018,1020).
    pub software_versions: String,
    /// InstitutionName (0008,0080); omitted when empty.
    pub institution_name: String,
    /// DeviceSerialNumber (0018,1000), e.g. the node's AE title.
    pub device_serial_number: String,
}

impl Default for SegOptions {
    fn default() -> Self {
        SegOptions {
            series_number: 9901,
            series_description: "myonode segmentation".into(),
            content_label: "SEGMENTATION".into(),
            manufacturer: "myonode".into(),
            manufacturer_model_name: "myonode".into(),
            software_versions: env!("CARGO_PKG_VERSION").into(),
            institution_name: String::new(),
            device_serial_number: "MYONODE".into(),
        }
    }
}

/// A complete encoded DICOM object ready for the outbox.
#[derive(Debug, Clone)]
pub struct EncodedObject {
    /// The complete Part-10 file (preamble, `DICM`, File Meta Information,
    /// data set in Explicit VR Little Endian).
    pub bytes: Vec<u8>,
    /// SOPClassUID (0008,0016).
    pub sop_class_uid: String,
    /// SOPInstanceUID (0008,0018), newly generated.
    pub sop_instance_uid: String,
    /// SeriesInstanceUID (0020,000E) of the new SEG series.
    pub series_instance_uid: String,
}

/// One frame of a SEG: which segment, which source plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePlan {
    /// SegmentNumber (1-based) this frame belongs to.
    pub segment_number: u16,
    /// Value of the segment in the label map.
    pub label_value: u8,
    /// Index `z` of the source plane in the volume / label map (axis 0).
    pub slice: usize,
    /// Second DimensionIndexValues entry: 1-based rank of the plane along the
    /// slice normal among the planes present in the SEG.
    pub position_index: u32,
}

/// Plan the frames of a BINARY SEG (see the module docs for the ordering).
///
/// * `labels`: label map `(nz, ny, nx)`.
/// * `label_values`: the segments' label values; segment number `i + 1` is
///   the `i`-th value in ascending order. Must be non-zero and distinct.
/// * `plane_offsets`: per `z`, the position of the plane along the slice
///   normal (mm; `ImagePositionPatient · n`). Length `nz`.
///
/// # Errors
/// [`EncodeError::UndeclaredLabelValue`] if the label map holds a non-zero
/// value not in `label_values`; [`EncodeError::InvalidInput`] if
/// `plane_offsets` has the wrong length or `label_values` is invalid.
pub fn plan_frames(
    labels: &Array3<u8>,
    label_values: &[u8],
    plane_offsets: &[f64],
) -> Result<Vec<FramePlan>, EncodeError> {
    let nz = labels.len_of(Axis(0));
    if plane_offsets.len() != nz {
        return Err(EncodeError::InvalidInput(format!(
            "{} plane offsets for {} slices",
            plane_offsets.len(),
            nz
        )));
    }
    let mut sorted: Vec<u8> = label_values.to_vec();
    sorted.sort_unstable();
    // Lookup: label value → segment index.
    let mut lut: [Option<usize>; 256] = [None; 256];
    for (i, &v) in sorted.iter().enumerate() {
        if v == 0 {
            return Err(EncodeError::InvalidInput(
                "label value 0 is background".into(),
            ));
        }
        if lut[v as usize].is_some() {
            return Err(EncodeError::DuplicateLabelValue(v));
        }
        lut[v as usize] = Some(i);
    }

    // present[segment][z]; planes are scanned in parallel (rayon) for the values they hold,
    // and the first undeclared voxel in [z][y][x] order is reported, as a serial scan would
    let hits: Vec<[bool; 256]> = (0..nz)
        .into_par_iter()
        .map(|z| {
            let mut hit = [false; 256];
            for &v in labels.index_axis(Axis(0), z).iter() {
                hit[v as usize] = true;
            }
            hit
        })
        .collect();
    let mut present = vec![vec![false; nz]; sorted.len()];
    for (z, hit) in hits.iter().enumerate() {
        for v in 1..256 {
            if !hit[v] {
                continue;
            }
            match lut[v] {
                Some(s) => present[s][z] = true,
                None => {
                    let plane = labels.index_axis(Axis(0), z);
                    let ((y, x), &value) = plane
                        .indexed_iter()
                        .find(|(_, &l)| l != 0 && lut[l as usize].is_none())
                        .expect("the plane holds an undeclared value");
                    return Err(EncodeError::UndeclaredLabelValue { value, voxel: [z, y, x] });
                }
            }
        }
    }

    let any = present.iter().any(|p| p.iter().any(|&b| b));
    let kept: Vec<usize> = (0..nz)
        .filter(|&z| !any || present.iter().any(|p| p[z]))
        .collect();
    // Planes in ascending position along the normal; ties keep slice order.
    let mut ordered = kept;
    ordered.sort_by(|&a, &b| {
        plane_offsets[a]
            .total_cmp(&plane_offsets[b])
            .then(a.cmp(&b))
    });
    let mut rank = vec![0u32; nz];
    for (r, &z) in ordered.iter().enumerate() {
        rank[z] = r as u32 + 1;
    }

    let mut frames = Vec::new();
    for (s, &value) in sorted.iter().enumerate() {
        for &z in &ordered {
            if !any || present[s][z] {
                frames.push(FramePlan {
                    segment_number: (s + 1) as u16,
                    label_value: value,
                    slice: z,
                    position_index: rank[z],
                });
            }
        }
    }
    Ok(frames)
}

/// Encode a BINARY DICOM-SEG (Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4,
/// PS3.3 A.51) of `seg.labels` on the grid of `seg.job.volume`.
///
/// * Segments: one per entry of `seg.segments`, numbered 1..N in ascending
///   `label_value`; frame `k` of segment `s` is `labels[z] == label_value`.
/// * Geometry: Rows = `ny`, Columns = `nx`; PixelSpacing =
///   `[spacing[1], spacing[2]]` (row, column spacing, mm); SliceThickness and
///   SpacingBetweenSlices = `spacing[0]`; ImageOrientationPatient =
///   `volume.image_orientation()`; per-frame ImagePositionPatient =
///   `volume.slice_position(z)`.
/// * References: each frame references `volume.slices[z]` in its
///   Derivation Image / Source Image Sequence (with ReferencedFrameNumber
///   for multi-frame sources); the Common Instance Reference module lists
///   every distinct source instance under the source SeriesInstanceUID.
/// * Patient, General Study, Patient Study and Frame of Reference attributes
///   are copied from `seg.job.header.dataset` (Type 2 attributes are written
///   empty when absent). SpecificCharacterSet is `ISO_IR 192` if any text is
///   non-ASCII, absent otherwise.
///
/// The result is a Part-10 file in Explicit VR Little Endian.
///
/// # Errors
/// [`EncodeError`] for a label map whose shape differs from the volume, a
/// slice-reference count that differs from `nz`, an empty grid, no or
/// duplicate segment descriptions, label values in the map that no segment
/// declares, degenerate orientation or spacing, two slices at one position
/// along the normal (within 0.001 mm), missing StudyInstanceUID /
/// SeriesInstanceUID / FrameOfReferenceUID, oversized pixel data, or a
/// serialisation failure.
pub fn encode_binary_seg(
    seg: &Segmentation,
    opts: &SegOptions,
) -> Result<EncodedObject, EncodeError> {
    encode_seg(seg, opts, SegmentationKind::Binary)
}

/// Encode a LABELMAP DICOM-SEG (Label Map Segmentation Storage
/// 1.2.840.10008.5.1.4.1.1.66.7, PS3.3 A.51 / C.8.20 as amended by
/// Supplement 243) of `seg.labels` on the grid of `seg.job.volume`.
///
/// Same modules, geometry, derivation and source references as
/// [`encode_binary_seg`]; the differences (Sup 243):
/// * One frame per source plane (not per segment × plane); planes in
///   ascending position along the slice normal; planes without any segment
///   are omitted unless the whole map is empty (then all planes are kept).
/// * Pixel value = SegmentNumber. Segments are numbered 1..N in ascending
///   `label_value` exactly as in the BINARY SEG, so a TID 1500 report's
///   Referenced Segment numbers are valid for either encoding. Pixel value 0
///   is background: it is described by a Segment Sequence item with
///   SegmentNumber 0 and category and type (125040, DCM, "Background"), and
///   PixelPaddingValue (0028,0120) = 0 marks it as background.
/// * Bits Allocated = Bits Stored = 8 (16 when N > 255), High Bit = Bits
///   Stored − 1, unsigned, MONOCHROME2 with Presentation LUT Shape IDENTITY;
///   frames concatenated row-major (x fastest), 16-bit samples little endian,
///   total padded to even length.
/// * No Segment Identification Sequence per frame; the only dimension index
///   is ImagePositionPatient (0020,0032) in the Plane Position Sequence.
///
/// # Errors
/// As [`encode_binary_seg`].
pub fn encode_labelmap_seg(
    seg: &Segmentation,
    opts: &SegOptions,
) -> Result<EncodedObject, EncodeError> {
    encode_seg(seg, opts, SegmentationKind::Labelmap)
}

/// Which Segmentation Type (0062,0001) to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentationKind {
    /// BINARY: Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.4), 1 bit per pixel,
    /// one frame per (segment, plane).
    Binary,
    /// LABELMAP: Label Map Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.7),
    /// 8/16-bit segment numbers, one frame per plane (PS3.3 C.8.20, Sup 243).
    Labelmap,
}

impl SegmentationKind {
    /// SOPClassUID (0008,0016) of this kind.
    pub fn sop_class_uid(self) -> &'static str {
        match self {
            SegmentationKind::Binary => uids::SEGMENTATION_STORAGE,
            SegmentationKind::Labelmap => LABEL_MAP_SEGMENTATION_STORAGE,
        }
    }

    /// Segmentation Type (0062,0001) defined term.
    pub fn segmentation_type(self) -> &'static str {
        match self {
            SegmentationKind::Binary => "BINARY",
            SegmentationKind::Labelmap => "LABELMAP",
        }
    }
}

/// Label Map Segmentation Storage SOP Class UID (PS3.4 B.5, Sup 243).
pub const LABEL_MAP_SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.7";

/// Encode either kind of SEG; see [`encode_binary_seg`] and [`encode_labelmap_seg`].
///
/// # Errors
/// As [`encode_binary_seg`].
pub fn encode_seg(
    seg: &Segmentation,
    opts: &SegOptions,
    kind: SegmentationKind,
) -> Result<EncodedObject, EncodeError> {
    let volume: &Volume = &seg.job.volume;
    let labels: &Array3<u8> = &seg.labels;
    let (nz, ny, nx) = volume.shape();
    let lshape = labels.shape();
    if lshape != [nz, ny, nx] {
        return Err(EncodeError::ShapeMismatch {
            labels: [lshape[0], lshape[1], lshape[2]],
            volume: [nz, ny, nx],
        });
    }
    if nz == 0 || ny == 0 || nx == 0 {
        return Err(EncodeError::EmptyVolume {
            shape: [nz, ny, nx],
        });
    }
    if volume.slices.len() != nz {
        return Err(EncodeError::SliceRefCountMismatch {
            slices: volume.slices.len(),
            nz,
        });
    }
    if ny > u16::MAX as usize || nx > u16::MAX as usize {
        return Err(EncodeError::InvalidInput(format!(
            "frame of {ny} rows × {nx} columns exceeds the US range of Rows/Columns"
        )));
    }
    if seg.segments.is_empty() {
        return Err(EncodeError::NoSegments);
    }
    let mut segments: Vec<&SegmentDescription> = seg.segments.iter().collect();
    segments.sort_by_key(|s| s.label_value);
    if segments.len() > u16::MAX as usize {
        return Err(EncodeError::InvalidInput("more than 65535 segments".into()));
    }
    for s in &segments {
        if s.label_value == 0 {
            return Err(EncodeError::BackgroundLabelValue {
                label: s.label.clone(),
            });
        }
    }

    let header = &seg.job.header;
    let study_uid = non_empty(&header.study_instance_uid)
        .or_else(|| dataset_str(&header.dataset, tags::STUDY_INSTANCE_UID))
        .ok_or(EncodeError::MissingAttribute {
            name: "StudyInstanceUID",
            tag: tags::STUDY_INSTANCE_UID,
        })?;
    let source_series_uid = non_empty(&header.series_instance_uid)
        .or_else(|| dataset_str(&header.dataset, tags::SERIES_INSTANCE_UID))
        .ok_or(EncodeError::MissingAttribute {
            name: "SeriesInstanceUID",
            tag: tags::SERIES_INSTANCE_UID,
        })?;
    let for_uid = non_empty(&header.frame_of_reference_uid)
        .or_else(|| dataset_str(&header.dataset, tags::FRAME_OF_REFERENCE_UID))
        .ok_or(EncodeError::MissingAttribute {
            name: "FrameOfReferenceUID",
            tag: tags::FRAME_OF_REFERENCE_UID,
        })?;

    // Geometry.
    let normal = cross(volume.row_direction, volume.column_direction);
    let n_len = norm(normal);
    if n_len.is_nan() || n_len <= 1e-3 || !volume.spacing.iter().all(|s| s.is_finite() && *s > 0.0)
    {
        return Err(EncodeError::Geometry(format!(
            "row_direction {:?}, column_direction {:?}, spacing {:?} do not define a grid",
            volume.row_direction, volume.column_direction, volume.spacing
        )));
    }
    let normal = normal.map(|c| c / n_len);
    let offsets: Vec<f64> = (0..nz)
        .map(|z| dot(volume.slice_position(z), normal))
        .collect();
    // Two planes at one position would give one ImagePositionPatient two
    // dimension index values: refuse rather than write an ambiguous SEG.
    let mut by_offset: Vec<usize> = (0..nz).collect();
    by_offset.sort_by(|&a, &b| offsets[a].total_cmp(&offsets[b]));
    if let Some(w) = by_offset
        .windows(2)
        .find(|w| (offsets[w[1]] - offsets[w[0]]).abs() < 1e-3)
    {
        return Err(EncodeError::Geometry(format!(
            "slices {} and {} lie at the same position along the slice normal ({:.4} mm)",
            w[0], w[1], offsets[w[0]]
        )));
    }

    let label_values: Vec<u8> = segments.iter().map(|s| s.label_value).collect();
    let mut frames = plan_frames(labels, &label_values, &offsets)?;
    // LABELMAP: one frame per kept plane (the planes of the BINARY plan, whose
    // ranks already count exactly those planes), pixel value = segment number.
    let bits_allocated: u16 = match kind {
        SegmentationKind::Binary => 1,
        SegmentationKind::Labelmap if segments.len() > u8::MAX as usize => 16,
        SegmentationKind::Labelmap => 8,
    };
    if kind == SegmentationKind::Labelmap {
        let mut planes: Vec<FramePlan> = Vec::new();
        let mut seen_planes = BTreeSet::new();
        for f in &frames {
            if seen_planes.insert(f.slice) {
                planes.push(FramePlan {
                    segment_number: 0,
                    label_value: 0,
                    slice: f.slice,
                    position_index: f.position_index,
                });
            }
        }
        planes.sort_by_key(|f| f.position_index);
        frames = planes;
    }

    // Pixel data.
    let frame_pixels = (ny * nx) as u64;
    let total_bytes = (frames.len() as u64 * frame_pixels * u64::from(bits_allocated)).div_ceil(8);
    if total_bytes + 1 >= u32::MAX as u64 {
        return Err(EncodeError::PixelDataTooLarge { bytes: total_bytes });
    }
    let pixel_data = match kind {
        SegmentationKind::Binary => {
            let planes: Vec<(usize, u8)> = frames.iter().map(|f| (f.slice, f.label_value)).collect();
            super::packing::pack_label_frames(labels.view(), &planes)
        }
        SegmentationKind::Labelmap => {
            // label value → segment number (1-based rank of the value); 0 stays 0.
            let mut lut = [0u16; 256];
            for (i, &v) in label_values.iter().enumerate() {
                lut[v as usize] = (i + 1) as u16;
            }
            let mut out = Vec::with_capacity(total_bytes as usize + 1);
            for f in &frames {
                let plane = labels.index_axis(Axis(0), f.slice);
                for &v in plane.iter() {
                    let n = lut[v as usize];
                    if bits_allocated == 8 {
                        out.push(n as u8);
                    } else {
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                }
            }
            if out.len() % 2 == 1 {
                out.push(0);
            }
            out
        }
    };

    // Identifiers and times.
    let sop_instance_uid = new_uid();
    let series_instance_uid = new_uid();
    let dimension_organization_uid = new_uid();
    let now = Local::now();
    let date = now.format("%Y%m%d").to_string();
    let time = now.format("%H%M%S%.6f").to_string();

    let mut obj = InMemDicomObject::new_empty();
    let src = &header.dataset;

    // SOP Common (C.12.1).
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, kind.sop_class_uid());
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &sop_instance_uid);
    put_str(&mut obj, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
    put_str(&mut obj, tags::INSTANCE_CREATION_TIME, VR::TM, &time);

    // Patient (C.7.1.1), General Study (C.7.2.1), Patient Study (C.7.2.2).
    for &(tag, vr) in COPIED_TYPE2 {
        copy_or_empty(&mut obj, src, tag, vr);
    }
    for &tag in COPIED_OPTIONAL {
        copy_if_present(&mut obj, src, tag);
    }
    put_str(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, &study_uid);

    // General Series (C.7.3.1) + Segmentation Series (C.8.20.1).
    put_str(&mut obj, tags::MODALITY, VR::CS, "SEG");
    put_str(
        &mut obj,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &series_instance_uid,
    );
    put_str(
        &mut obj,
        tags::SERIES_NUMBER,
        VR::IS,
        &opts.series_number.to_string(),
    );
    put_str(&mut obj, tags::SERIES_DATE, VR::DA, &date);
    put_str(&mut obj, tags::SERIES_TIME, VR::TM, &time);
    if !opts.series_description.is_empty() {
        put_str(
            &mut obj,
            tags::SERIES_DESCRIPTION,
            VR::LO,
            &opts.series_description,
        );
    }

    // Frame of Reference (C.7.4.1).
    put_str(&mut obj, tags::FRAME_OF_REFERENCE_UID, VR::UI, &for_uid);
    copy_or_empty(&mut obj, src, tags::POSITION_REFERENCE_INDICATOR, VR::LO);

    // General Equipment (C.7.5.1) + Enhanced General Equipment (C.7.5.2):
    // all four are Type 1 there, so empty options fall back to the defaults.
    let defaults = SegOptions::default();
    let or_default = |v: &'_ str, d: &str| {
        if v.trim().is_empty() {
            d.to_string()
        } else {
            v.to_string()
        }
    };
    put_str(
        &mut obj,
        tags::MANUFACTURER,
        VR::LO,
        &or_default(&opts.manufacturer, &defaults.manufacturer),
    );
    put_str(
        &mut obj,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        &or_default(
            &opts.manufacturer_model_name,
            &defaults.manufacturer_model_name,
        ),
    );
    put_str(
        &mut obj,
        tags::DEVICE_SERIAL_NUMBER,
        VR::LO,
        &or_default(&opts.device_serial_number, &defaults.device_serial_number),
    );
    put_str(
        &mut obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &or_default(&opts.software_versions, &defaults.software_versions),
    );
    if !opts.institution_name.is_empty() {
        put_str(
            &mut obj,
            tags::INSTITUTION_NAME,
            VR::LO,
            &opts.institution_name,
        );
    }

    // General Image (C.7.6.1) / Multi-frame Functional Groups (C.7.6.16) /
    // Content Identification macro (in Segmentation Image, C.8.20.2).
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    put_str(
        &mut obj,
        tags::CONTENT_LABEL,
        VR::CS,
        &content_label(&opts.content_label),
    );
    put_str(
        &mut obj,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        &opts.series_description,
    );
    put_str(&mut obj, tags::CONTENT_CREATOR_NAME, VR::PN, "");

    // Image Pixel (C.7.6.3) as constrained by Segmentation Image (C.8.20.2).
    put_strs(&mut obj, tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"]);
    put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, &[1]);
    put_str(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    put_u16(&mut obj, tags::ROWS, &[ny as u16]);
    put_u16(&mut obj, tags::COLUMNS, &[nx as u16]);
    put_u16(&mut obj, tags::BITS_ALLOCATED, &[bits_allocated]);
    put_u16(&mut obj, tags::BITS_STORED, &[bits_allocated]);
    put_u16(&mut obj, tags::HIGH_BIT, &[bits_allocated - 1]);
    put_u16(&mut obj, tags::PIXEL_REPRESENTATION, &[0]);
    if kind == SegmentationKind::Labelmap {
        // Background is pixel value 0 (Sup 243: indicated by Pixel Padding Value).
        put_u16(&mut obj, tags::PIXEL_PADDING_VALUE, &[0]);
        put_str(&mut obj, tags::PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY");
    }
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(
        &mut obj,
        tags::SEGMENTATION_TYPE,
        VR::CS,
        kind.segmentation_type(),
    );
    put_str(&mut obj, tags::SEGMENTS_OVERLAP, VR::CS, "NO");
    let mut segment_items: Vec<InMemDicomObject> = Vec::with_capacity(segments.len() + 1);
    if kind == SegmentationKind::Labelmap {
        segment_items.push(background_segment_item(segments[0], &seg.algorithm));
    }
    segment_items.extend(
        segments
            .iter()
            .enumerate()
            .map(|(i, s)| segment_item((i + 1) as u16, s, &seg.algorithm)),
    );
    put_seq(&mut obj, tags::SEGMENT_SEQUENCE, segment_items);

    // Multi-frame Dimension (C.7.6.17).
    put_seq(
        &mut obj,
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![item(|o| {
            put_str(
                o,
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                &dimension_organization_uid,
            )
        })],
    );
    let mut dimension_items = Vec::with_capacity(2);
    if kind == SegmentationKind::Binary {
        dimension_items.push(dimension_index_item(
            &dimension_organization_uid,
            tags::REFERENCED_SEGMENT_NUMBER,
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            "Segment Number",
        ));
    }
    dimension_items.push(dimension_index_item(
        &dimension_organization_uid,
        tags::IMAGE_POSITION_PATIENT,
        tags::PLANE_POSITION_SEQUENCE,
        "Image Position Patient",
    ));
    put_seq(&mut obj, tags::DIMENSION_INDEX_SEQUENCE, dimension_items);

    // Multi-frame Functional Groups (C.7.6.16).
    put_str(
        &mut obj,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &frames.len().to_string(),
    );
    let shared = item(|o| {
        put_seq(
            o,
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![item(|pm| {
                put_strs(
                    pm,
                    tags::PIXEL_SPACING,
                    VR::DS,
                    &[format_ds(volume.spacing[1]), format_ds(volume.spacing[2])],
                );
                put_str(
                    pm,
                    tags::SLICE_THICKNESS,
                    VR::DS,
                    &format_ds(volume.spacing[0]),
                );
                put_str(
                    pm,
                    tags::SPACING_BETWEEN_SLICES,
                    VR::DS,
                    &format_ds(volume.spacing[0]),
                );
            })],
        );
        put_seq(
            o,
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item(|po| {
                let iop = volume.image_orientation().map(format_ds);
                put_strs(po, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &iop);
            })],
        );
    });
    put_seq(
        &mut obj,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared],
    );
    let per_frame: Vec<InMemDicomObject> =
        frames.iter().map(|f| per_frame_item(f, volume, kind)).collect();
    put_seq(
        &mut obj,
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    );

    // Common Instance Reference (C.12.2): every distinct source instance.
    let mut seen = BTreeSet::new();
    let referenced: Vec<InMemDicomObject> = volume
        .slices
        .iter()
        .filter(|s| seen.insert(s.sop_instance_uid.clone()))
        .map(|s| {
            item(|o| {
                put_str(o, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &s.sop_class_uid);
                put_str(
                    o,
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    &s.sop_instance_uid,
                );
            })
        })
        .collect();
    put_seq(
        &mut obj,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![item(|o| {
            put_str(o, tags::SERIES_INSTANCE_UID, VR::UI, &source_series_uid);
            put_seq(o, tags::REFERENCED_INSTANCE_SEQUENCE, referenced);
        })],
    );

    // Pixel Data, OB (PS3.5 A.2 / 8.1.1 for Bits Allocated 1).
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(pixel_data.into()),
    ));

    if has_non_ascii_text(&obj) {
        put_str(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    } else {
        obj.remove_element(tags::SPECIFIC_CHARACTER_SET);
    }

    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
        )
        .map_err(|e| EncodeError::FileMeta(Box::new(e)))?;
    let mut bytes = Vec::with_capacity(total_bytes as usize + 64 * 1024);
    file.write_all(&mut bytes)
        .map_err(|e| EncodeError::Write(Box::new(e)))?;

    Ok(EncodedObject {
        bytes,
        sop_class_uid: kind.sop_class_uid().to_string(),
        sop_instance_uid,
        series_instance_uid,
    })
}

/// Type 2 attributes of the Patient, General Study and Frame of Reference
/// modules copied from the source (written empty when absent there).
const COPIED_TYPE2: &[(Tag, VR)] = &[
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
];

/// Type 3 attributes of the Patient, General Study and Patient Study modules
/// copied verbatim when the source has them.
const COPIED_OPTIONAL: &[Tag] = &[
    tags::ISSUER_OF_PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
    tags::OTHER_PATIENT_I_DS_SEQUENCE,
    tags::PATIENT_BIRTH_TIME,
    tags::PATIENT_COMMENTS,
    tags::PATIENT_IDENTITY_REMOVED,
    tags::DEIDENTIFICATION_METHOD,
    tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
    tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
    tags::STUDY_DESCRIPTION,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
];

/// One item of the Per-frame Functional Groups Sequence.
/// For [`SegmentationKind::Labelmap`] the frame has no Segment Identification
/// Sequence and one Dimension Index Value (the plane rank).
fn per_frame_item(f: &FramePlan, volume: &Volume, kind: SegmentationKind) -> InMemDicomObject {
    let source = &volume.slices[f.slice];
    item(|o| {
        put_seq(
            o,
            tags::DERIVATION_IMAGE_SEQUENCE,
            vec![item(|d| {
                put_seq(
                    d,
                    tags::DERIVATION_CODE_SEQUENCE,
                    vec![code_item(&Code::new("113076", "DCM", "Segmentation"))],
                );
                put_seq(
                    d,
                    tags::SOURCE_IMAGE_SEQUENCE,
                    vec![item(|s| {
                        put_str(
                            s,
                            tags::REFERENCED_SOP_CLASS_UID,
                            VR::UI,
                            &source.sop_class_uid,
                        );
                        put_str(
                            s,
                            tags::REFERENCED_SOP_INSTANCE_UID,
                            VR::UI,
                            &source.sop_instance_uid,
                        );
                        if let Some(n) = source.frame_number {
                            put_str(s, tags::REFERENCED_FRAME_NUMBER, VR::IS, &n.to_string());
                        }
                        put_str(s, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
                        put_seq(
                            s,
                            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                            vec![code_item(&Code::new(
                                "121322",
                                "DCM",
                                "Source image for image processing operation",
                            ))],
                        );
                    })],
                );
            })],
        );
        put_seq(
            o,
            tags::FRAME_CONTENT_SEQUENCE,
            vec![item(|fc| {
                let values = match kind {
                    SegmentationKind::Binary => vec![u32::from(f.segment_number), f.position_index],
                    SegmentationKind::Labelmap => vec![f.position_index],
                };
                fc.put(DataElement::new(
                    tags::DIMENSION_INDEX_VALUES,
                    VR::UL,
                    PrimitiveValue::U32(values.into()),
                ));
            })],
        );
        put_seq(
            o,
            tags::PLANE_POSITION_SEQUENCE,
            vec![item(|pp| {
                let ipp = volume.slice_position(f.slice).map(format_ds);
                put_strs(pp, tags::IMAGE_POSITION_PATIENT, VR::DS, &ipp);
            })],
        );
        if kind == SegmentationKind::Binary {
            put_seq(
                o,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                vec![item(|si| {
                    put_u16(si, tags::REFERENCED_SEGMENT_NUMBER, &[f.segment_number])
                })],
            );
        }
    })
}

/// The LABELMAP background item of the Segment Sequence: SegmentNumber 0,
/// category and type [`BACKGROUND`](super::codes::BACKGROUND), displayed black; the
/// algorithm type and identification are those of the first real segment (`first`).
fn background_segment_item(
    first: &SegmentDescription,
    algorithm: &AlgorithmIdentification,
) -> InMemDicomObject {
    let background = SegmentDescription {
        label: "Background".into(),
        category: super::codes::BACKGROUND.code(),
        property_type: super::codes::BACKGROUND.code(),
        type_modifier: None,
        anatomic_region: None,
        color_rgb: [0, 0, 0],
        ..first.clone()
    };
    segment_item(0, &background, algorithm)
}

/// One item of the Segment Sequence (PS3.3 C.8.20.2, Segment Description macro).
fn segment_item(
    number: u16,
    s: &SegmentDescription,
    algorithm: &AlgorithmIdentification,
) -> InMemDicomObject {
    item(|o| {
        put_u16(o, tags::SEGMENT_NUMBER, &[number]);
        put_str(o, tags::SEGMENT_LABEL, VR::LO, &s.label);
        put_seq(
            o,
            tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
            vec![code_item(&s.category)],
        );
        let mut type_item = code_item(&s.property_type);
        if let Some(m) = &s.type_modifier {
            put_seq(
                &mut type_item,
                tags::SEGMENTED_PROPERTY_TYPE_MODIFIER_CODE_SEQUENCE,
                vec![code_item(m)],
            );
        }
        put_seq(
            o,
            tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
            vec![type_item],
        );
        if let Some(region) = &s.anatomic_region {
            put_seq(o, tags::ANATOMIC_REGION_SEQUENCE, vec![code_item(region)]);
        }
        put_str(
            o,
            tags::SEGMENT_ALGORITHM_TYPE,
            VR::CS,
            s.algorithm_type.as_str(),
        );
        if s.algorithm_type != SegmentAlgorithmType::Manual {
            put_str(o, tags::SEGMENT_ALGORITHM_NAME, VR::LO, &algorithm.name);
            put_seq(
                o,
                tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
                vec![item(|a| {
                    put_seq(
                        a,
                        tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
                        vec![code_item(&algorithm.family)],
                    );
                    put_str(a, tags::ALGORITHM_NAME, VR::LO, &algorithm.name);
                    put_str(a, tags::ALGORITHM_VERSION, VR::LO, &algorithm.version);
                })],
            );
        }
        put_u16(
            o,
            tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
            &srgb_to_dicom_lab(s.color_rgb),
        );
    })
}

/// One item of the Dimension Index Sequence (PS3.3 C.7.6.17.1).
fn dimension_index_item(org_uid: &str, pointer: Tag, group: Tag, label: &str) -> InMemDicomObject {
    item(|o| {
        put_str(o, tags::DIMENSION_ORGANIZATION_UID, VR::UI, org_uid);
        o.put(DataElement::new(
            tags::DIMENSION_INDEX_POINTER,
            VR::AT,
            PrimitiveValue::Tags(vec![pointer].into()),
        ));
        o.put(DataElement::new(
            tags::FUNCTIONAL_GROUP_POINTER,
            VR::AT,
            PrimitiveValue::Tags(vec![group].into()),
        ));
        put_str(o, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
    })
}

/// A Code Sequence Macro item (PS3.3 8.8): CodeValue (or LongCodeValue when
/// longer than 16 characters, 8.8.1.2), CodingSchemeDesignator, CodeMeaning.
fn code_item(code: &Code) -> InMemDicomObject {
    item(|o| {
        if code.value.chars().count() > 16 {
            put_str(o, tags::LONG_CODE_VALUE, VR::UC, &code.value);
        } else {
            put_str(o, tags::CODE_VALUE, VR::SH, &code.value);
        }
        put_str(o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, &code.scheme);
        put_str(o, tags::CODE_MEANING, VR::LO, &code.meaning);
    })
}

/// Format a number as a Decimal String (PS3.5 6.2, DS): at most 16
/// characters, as many significant digits as fit, no trailing zeros.
pub fn format_ds(v: f64) -> String {
    if !v.is_finite() {
        return "0".into();
    }
    for prec in (0..=15).rev() {
        let s = format!("{v:.prec$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        let s = if s == "-0" { "0".to_string() } else { s };
        if s.len() <= 16 {
            return s;
        }
    }
    // Magnitude ≥ 1e16: scientific notation.
    for prec in (0..=10).rev() {
        let s = format!("{v:.prec$e}");
        if s.len() <= 16 {
            return s;
        }
    }
    "0".into()
}

/// ContentLabel (0070,0080) is a Code String: upper case, `A–Z 0–9 _ space`, ≤ 16 characters.
fn content_label(s: &str) -> String {
    let cs: String = s
        .chars()
        .map(|c| c.to_ascii_uppercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .take(16)
        .collect();
    let cs = cs.trim().to_string();
    if cs.is_empty() {
        "SEGMENTATION".into()
    } else {
        cs
    }
}

fn non_empty(s: &str) -> Option<String> {
    let t = s.trim_end_matches(['\0', ' ']).trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn dataset_str(ds: &InMemDicomObject, tag: Tag) -> Option<String> {
    ds.get(tag)
        .and_then(|e| e.to_str().ok())
        .and_then(|s| non_empty(&s))
}

fn item(f: impl FnOnce(&mut InMemDicomObject)) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    f(&mut o);
    o
}

/// Put a single string value. Values longer than the VR's maximum length in
/// characters (PS3.5 6.2: SH 16, LO 64) are truncated, with a warning, so the
/// object stays valid.
fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    let max = match vr {
        VR::SH => Some(16),
        VR::LO => Some(64),
        _ => None,
    };
    let value = match max {
        Some(max) if value.chars().count() > max => {
            let cut: String = value.chars().take(max).collect();
            tracing::warn!(%tag, ?vr, original = value, truncated = %cut, "value longer than its VR allows; truncated");
            cut
        }
        _ => value.to_string(),
    };
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn put_strs<S: AsRef<str>>(obj: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[S]) {
    let v: Vec<String> = values.iter().map(|s| s.as_ref().to_string()).collect();
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Strs(v.into())));
}

fn put_u16(obj: &mut InMemDicomObject, tag: Tag, values: &[u16]) {
    obj.put(DataElement::new(
        tag,
        VR::US,
        PrimitiveValue::U16(values.to_vec().into()),
    ));
}

fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

fn copy_if_present(obj: &mut InMemDicomObject, src: &InMemDicomObject, tag: Tag) {
    if let Some(e) = src.get(tag) {
        obj.put(e.clone());
    }
}

fn copy_or_empty(obj: &mut InMemDicomObject, src: &InMemDicomObject, tag: Tag, vr: VR) {
    match src.get(tag) {
        Some(e) => {
            obj.put(e.clone());
        }
        None => put_str(obj, tag, vr, ""),
    }
}

/// `true` if any textual value in `obj` (recursively) has a non-ASCII character.
fn has_non_ascii_text(obj: &InMemDicomObject) -> bool {
    use dicom_core::value::Value;
    obj.iter().any(|e| match e.value() {
        Value::Primitive(PrimitiveValue::Str(s)) => !s.is_ascii(),
        Value::Primitive(PrimitiveValue::Strs(v)) => v.iter().any(|s| !s.is_ascii()),
        Value::Sequence(seq) => seq.items().iter().any(has_non_ascii_text),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn frames_are_segment_major_in_position_order_and_skip_empty_planes() {
        // 4 slices; slice order along the normal is reversed (z=3 lowest).
        let mut labels = Array3::<u8>::zeros((4, 2, 3));
        labels[[0, 0, 0]] = 1;
        labels[[2, 1, 2]] = 1;
        labels[[3, 0, 1]] = 2;
        labels[[2, 0, 0]] = 2;
        let offsets = [30.0, 20.0, 10.0, 0.0];
        let frames = plan_frames(&labels, &[2, 1], &offsets).unwrap();
        // Kept planes: z = 0, 2, 3 (z = 1 empty) → ascending offsets: 3, 2, 0 → ranks 1, 2, 3.
        let got: Vec<(u16, u8, usize, u32)> = frames
            .iter()
            .map(|f| (f.segment_number, f.label_value, f.slice, f.position_index))
            .collect();
        assert_eq!(
            got,
            vec![(1, 1, 2, 2), (1, 1, 0, 3), (2, 2, 3, 1), (2, 2, 2, 2)]
        );
    }

    #[test]
    fn empty_mask_keeps_every_segment_and_plane() {
        let labels = Array3::<u8>::zeros((3, 2, 2));
        let frames = plan_frames(&labels, &[1, 2], &[0.0, 1.0, 2.0]).unwrap();
        assert_eq!(frames.len(), 6);
        assert_eq!(
            frames
                .iter()
                .map(|f| (f.segment_number, f.slice, f.position_index))
                .collect::<Vec<_>>(),
            vec![
                (1, 0, 1),
                (1, 1, 2),
                (1, 2, 3),
                (2, 0, 1),
                (2, 1, 2),
                (2, 2, 3)
            ]
        );
    }

    #[test]
    fn undeclared_and_duplicate_labels_are_rejected() {
        let mut labels = Array3::<u8>::zeros((2, 2, 2));
        labels[[1, 1, 0]] = 7;
        match plan_frames(&labels, &[1], &[0.0, 1.0]) {
            Err(EncodeError::UndeclaredLabelValue {
                value: 7,
                voxel: [1, 1, 0],
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            plan_frames(&labels, &[7, 7], &[0.0, 1.0]),
            Err(EncodeError::DuplicateLabelValue(7))
        ));
    }

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(format_ds(1.5), "1.5");
        assert_eq!(format_ds(-804.5), "-804.5");
        assert_eq!(format_ds(0.0), "0");
        assert_eq!(format_ds(-0.0), "0");
        assert_eq!(format_ds(1.0 / 3.0), "0.33333333333333");
        assert_eq!(format_ds(-1000.0 / 7.0), "-142.85714285714");
        assert_eq!(
            format_ds(-std::f64::consts::FRAC_1_SQRT_2),
            "-0.7071067811865"
        );
        assert!(format_ds(1.0e20).len() <= 16);
        assert_eq!(format_ds(1.0e20).parse::<f64>().unwrap(), 1.0e20);
    }

    #[test]
    fn long_lo_and_sh_values_are_truncated_to_the_vr_maximum() {
        let mut o = InMemDicomObject::new_empty();
        let long = "é".repeat(70);
        put_str(&mut o, tags::SEGMENT_LABEL, VR::LO, &long);
        put_str(&mut o, tags::CODE_VALUE, VR::SH, "12345678901234567890");
        put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3");
        assert_eq!(
            o.element(tags::SEGMENT_LABEL)
                .unwrap()
                .to_str()
                .unwrap()
                .chars()
                .count(),
            64
        );
        assert_eq!(
            o.element(tags::CODE_VALUE).unwrap().to_str().unwrap(),
            "1234567890123456"
        );
        assert_eq!(
            o.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap(),
            "1.2.3"
        );
    }

    #[test]
    fn content_label_is_a_valid_code_string() {
        assert_eq!(content_label("Muscle seg-v2 (thigh)"), "MUSCLE SEG_V2 _T");
        assert_eq!(content_label(""), "SEGMENTATION");
    }
}
