//! encode stage: turns a [`Segmentation`](crate::pipeline::messages::Segmentation)
//! and its measurements into DICOM objects for the PACS.
//!
//! * [`seg`] — BINARY DICOM-SEG (Segmentation Storage, PS3.3 A.51) on the
//!   exact source grid, bit-packed, empty frames omitted: [`encode_binary_seg`].
//! * LABELMAP DICOM-SEG (Label Map Segmentation Storage, Sup 243): [`encode_labelmap_seg`].
//! * [`sr`] — TID 1500 measurement report (Comprehensive 3D SR) referencing the SEG's segments.
//! * [`codes`] — the coded concepts used, each with its source.
//! * [`packing`] — Bits Allocated = 1 pixel packing (PS3.5 8.1.1).
//! * [`cielab`] — sRGB → Recommended Display CIELab Value (PS3.3 C.10.7.1.1).
//! * [`stage`] — the stage loop: job files, outbox, hand-over to `send`.

pub mod cielab;
pub mod codes;
pub mod packing;
pub mod seg;
pub mod sr;
pub mod sr_planar;
pub mod stage;

pub use seg::{
    encode_binary_seg, encode_labelmap_seg, encode_seg, plan_frames, EncodedObject, FramePlan,
    SegOptions, SegmentationKind, LABEL_MAP_SEGMENTATION_STORAGE,
};

use dicom_core::Tag;

/// How a derived object names the job version it belongs to (PS3.3 has no attribute for
/// "this result supersedes an earlier one", so SeriesDescription / ContentDescription carry
/// it): `"result v1"`, or `"result v3, supersedes v2"` when late instances re-opened the
/// series (issue: a new job version replaces the old result, never a second partial one).
pub fn result_version_note(version: u32) -> String {
    if version > 1 {
        format!("result v{version}, supersedes v{}", version - 1)
    } else {
        format!("result v{version}")
    }
}

/// `text` cut to at most `max` characters (LO and similar VRs hold 64), at a character boundary.
pub fn truncate_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Why a DICOM object could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The label map and the volume grid differ; shapes are `(nz, ny, nx)`.
    #[error("label map shape {labels:?} differs from volume shape {volume:?} (z, y, x)")]
    ShapeMismatch {
        labels: [usize; 3],
        volume: [usize; 3],
    },
    /// `Volume::slices` must have one entry per slice.
    #[error("volume has {slices} source slice references for {nz} slices")]
    SliceRefCountMismatch { slices: usize, nz: usize },
    /// A dimension of the grid is zero; shape is `(nz, ny, nx)`.
    #[error("volume is empty (shape {shape:?}, z, y, x)")]
    EmptyVolume { shape: [usize; 3] },
    /// The segmentation carries no segment descriptions.
    #[error("segmentation has no segment descriptions")]
    NoSegments,
    /// Two segment descriptions use the same label value.
    #[error("label value {0} is used by more than one segment description")]
    DuplicateLabelValue(u8),
    /// A segment description uses label value 0 (background).
    #[error("segment {label:?} uses label value 0, which is reserved for background")]
    BackgroundLabelValue { label: String },
    /// The label map contains a value no segment description declares.
    #[error("label map holds value {value} at voxel {voxel:?} (z, y, x) that no segment description declares")]
    UndeclaredLabelValue { value: u8, voxel: [usize; 3] },
    /// A required attribute is missing from the source series header.
    #[error("source header lacks required attribute {name} {tag}")]
    MissingAttribute { name: &'static str, tag: Tag },
    /// The volume geometry does not define a grid (degenerate orientation or spacing).
    #[error("invalid volume geometry: {0}")]
    Geometry(String),
    /// Other inconsistent input.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The packed Pixel Data would not fit a 32-bit value length.
    #[error(
        "pixel data of {bytes} bytes exceeds the 32-bit value length of Pixel Data (7FE0,0010)"
    )]
    PixelDataTooLarge { bytes: u64 },
    /// Building the File Meta Information failed.
    #[error("cannot build the File Meta Information")]
    FileMeta(#[source] Box<dicom_object::WithMetaError>),
    /// Serialising the data set failed.
    #[error("cannot serialise the data set")]
    Write(#[source] Box<dicom_object::WriteError>),
}
