//! The messages that travel between pipeline stages, in flow order.
//!
//! ```text
//! receive ──InstanceStored──▶ assemble ──StudyJob──▶ segment ──Segmentation──▶ measure ──Findings──▶ encode ──Outbound──▶ send
//! ```
//!
//! Every message is owned data (`Send`), moved through a bounded
//! `crossbeam-channel`; no stage keeps references into another stage.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use dicom_object::InMemDicomObject;
use ndarray::Array3;

use crate::volume::Volume;

/// receive → assemble: one instance was written durably to `spool/incoming/`
/// and acknowledged with a C-STORE-RSP success (or found already stored).
#[derive(Debug, Clone)]
pub struct InstanceStored {
    /// StudyInstanceUID (0020,000D).
    pub study_instance_uid: String,
    /// SeriesInstanceUID (0020,000E).
    pub series_instance_uid: String,
    /// SOPClassUID (0008,0016).
    pub sop_class_uid: String,
    /// SOPInstanceUID (0008,0018).
    pub sop_instance_uid: String,
    /// The Part-10 file in the spool.
    pub path: PathBuf,
    /// Calling AE title of the association that delivered it (empty for files read offline).
    pub calling_ae_title: String,
    /// When the C-STORE completed.
    pub received_at: SystemTime,
    /// `true` if this SOPInstanceUID was already in the spool (nothing new was written).
    pub duplicate: bool,
    /// The completion hints (NumberOfFrames, ImagesInAcquisition) the C-STORE path read from the
    /// received data set; `None` when not known (files read offline or at recovery, or a count
    /// with an unexpected VR): the assemble stage then reads them from `path`.
    pub hints: Option<crate::assemble::tracker::InstanceHints>,
}

/// receive → assemble: an association that stored at least one instance ended (A-RELEASE,
/// A-ABORT, idle timeout or connection loss). Sent after every [`InstanceStored`] of the
/// association, so a series it names is, from this sender's view, complete (PS3.4 does not
/// define series completion; the end of the delivering association is the usual hint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssociationEnded {
    /// Calling AE title of the association.
    pub calling_ae_title: String,
    /// SeriesInstanceUIDs (0020,000E) of the instances it stored (incl. duplicates), sorted, unique.
    pub series_instance_uids: Vec<String>,
    /// When the association ended.
    pub ended_at: SystemTime,
}

/// A coded concept (PS3.3 8.8 Code Sequence Macro): CodeValue, CodingSchemeDesignator, CodeMeaning.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Code {
    pub value: String,
    pub scheme: String,
    pub meaning: String,
}

impl Code {
    /// Build a code from its value, scheme designator (e.g. `SCT`, `DCM`) and meaning.
    pub fn new(value: &str, scheme: &str, meaning: &str) -> Self {
        Code { value: value.into(), scheme: scheme.into(), meaning: meaning.into() }
    }
}

/// SegmentAlgorithmType (0062,0008), PS3.3 C.8.20.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SegmentAlgorithmType {
    Automatic,
    Semiautomatic,
    Manual,
}

impl SegmentAlgorithmType {
    /// The defined term written into the SEG.
    pub fn as_str(&self) -> &'static str {
        match self {
            SegmentAlgorithmType::Automatic => "AUTOMATIC",
            SegmentAlgorithmType::Semiautomatic => "SEMIAUTOMATIC",
            SegmentAlgorithmType::Manual => "MANUAL",
        }
    }
}

/// Algorithm identification (PS3.3 C.8.20.2 Segmentation Algorithm Identification Sequence / PS3.16 CID 7162).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlgorithmIdentification {
    /// AlgorithmFamilyCodeSequence, e.g. (123110, DCM, "Artificial Intelligence")
    /// or (123109, DCM, "Manual Processing")-like families for built-in analyses.
    pub family: Code,
    /// AlgorithmName (0066,0036).
    pub name: String,
    /// AlgorithmVersion (0066,0031).
    pub version: String,
}

/// One segment of a segmentation: the label value in the label map and how
/// it is described in the SEG Segment Sequence (PS3.3 C.8.20.2).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentDescription {
    /// Value of this segment in [`Segmentation::labels`] (1..=255); becomes SegmentNumber
    /// after renumbering to 1..N in label order.
    pub label_value: u8,
    /// SegmentLabel (0062,0005).
    pub label: String,
    /// SegmentedPropertyCategoryCodeSequence (0062,0003), e.g. (85756007, SCT, "Tissue").
    pub category: Code,
    /// SegmentedPropertyTypeCodeSequence (0062,000F).
    pub property_type: Code,
    /// SegmentedPropertyTypeModifierCodeSequence (0062,0011), e.g. laterality (7771000, SCT, "Left").
    pub type_modifier: Option<Code>,
    /// AnatomicRegionSequence (0008,2218), optional.
    pub anatomic_region: Option<Code>,
    /// Display colour as sRGB; encoded as RecommendedDisplayCIELabValue (0062,000D).
    pub color_rgb: [u8; 3],
    /// SegmentAlgorithmType (0062,0008).
    pub algorithm_type: SegmentAlgorithmType,
}

/// The source series a job was built from: its header (first instance's
/// dataset, pixel data removed) for copying Patient / General Study / Frame of
/// Reference attributes into derived objects.
#[derive(Debug, Clone)]
pub struct SeriesHeader {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    /// FrameOfReferenceUID (0020,0052).
    pub frame_of_reference_uid: String,
    /// Modality (0008,0060) of the source, e.g. `MR`, `CT`.
    pub modality: String,
    /// First instance's dataset without PixelData.
    pub dataset: Arc<InMemDicomObject>,
}

/// The role of one series in a multi-series job: the images of a Dixon (chemical-shift
/// water–fat) acquisition, as named by ImageType (0008,0008) values 3/4 (PS3.3 C.8.13.1.1.1
/// defined terms WATER, FAT, IN_PHASE, OUT_PHASE / OPP_PHASE used by vendors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// Water-only image.
    Water,
    /// Fat-only image.
    Fat,
    /// In-phase image (water + fat).
    InPhase,
    /// Opposed-phase image (|water − fat|).
    OpposedPhase,
}

impl ChannelKind {
    /// Lower-case name used in logs, job.json and config (`water`, `fat`, `in_phase`, `opposed_phase`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelKind::Water => "water",
            ChannelKind::Fat => "fat",
            ChannelKind::InPhase => "in_phase",
            ChannelKind::OpposedPhase => "opposed_phase",
        }
    }
}

/// One named image channel of a multi-series job: a series of the same study and
/// FrameOfReferenceUID reassembled on exactly the grid of the job's primary
/// [`StudyJob::volume`] (same shape, spacing, origin and directions).
#[derive(Debug, Clone)]
pub struct Channel {
    pub kind: ChannelKind,
    pub header: SeriesHeader,
    pub volume: Arc<Volume>,
}

/// assemble → segment: a complete series reassembled into a volume.
///
/// `header`/`volume` are the primary series (the one the SEG and SR reference).
/// For a Dixon job, `channels` holds every paired series including the primary
/// one under its [`ChannelKind`]; for a lone series it is empty.
#[derive(Debug, Clone)]
pub struct StudyJob {
    /// Stable job identifier (derived from the SeriesInstanceUID and version).
    pub job_id: String,
    /// Job version: 1 for the first completion of a series, incremented when late instances re-open it.
    pub version: u32,
    pub header: SeriesHeader,
    pub volume: Arc<Volume>,
    /// Working directory of this job under `spool/jobs/`.
    pub job_dir: PathBuf,
    /// Paired series on the primary grid (Dixon water/fat/in-phase/opposed-phase); empty for a lone series.
    pub channels: Vec<Channel>,
}

impl StudyJob {
    /// The channel of the given kind, if this job has it.
    pub fn channel(&self, kind: ChannelKind) -> Option<&Channel> {
        self.channels.iter().find(|c| c.kind == kind)
    }
}

/// segment → measure: a label map on the exact source grid.
#[derive(Debug, Clone)]
pub struct Segmentation {
    pub job: StudyJob,
    /// Label map, shape `(nz, ny, nx)` identical to `job.volume.data`; 0 = background,
    /// other values as listed in `segments`.
    pub labels: Arc<Array3<u8>>,
    /// One entry per non-zero label value that the analysis can produce, in increasing label order.
    pub segments: Vec<SegmentDescription>,
    pub algorithm: AlgorithmIdentification,
}

/// Measurements of one segment (units in field names; formulas in `measure`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentMeasurements {
    pub label_value: u8,
    pub label: String,
    pub voxel_count: u64,
    /// Volume in mL (= cm³): voxel count × voxel volume.
    pub volume_ml: f64,
    /// Cross-sectional area in the slice plane per slice `z` (cm²), length = number of slices.
    pub cross_sectional_area_cm2: Vec<f64>,
    /// Largest cross-sectional area over the slices, cm².
    pub max_cross_sectional_area_cm2: f64,
    /// Slice index `z` nearest the segment's centroid (None when the segment is empty).
    pub centroid_slice: Option<usize>,
    /// Cross-sectional area at `centroid_slice`, cm² (0 when empty).
    pub area_at_centroid_slice_cm2: f64,
    /// Centroid of the segment in patient coordinates (LPS, mm).
    pub centroid_lps_mm: Option<[f64; 3]>,
    /// Mean of the source intensity inside the segment (real-world values: HU on CT).
    pub mean_intensity: f64,
    /// Standard deviation (population) of the source intensity inside the segment.
    pub sd_intensity: f64,
    /// Mean attenuation in HU, present when the source modality is CT.
    pub mean_attenuation_hu: Option<f64>,
    /// The part of the segment on the patient's left (LPS x > 0) and right (x < 0) of the
    /// patient coordinate origin's sagittal plane x = 0 (voxel centres; x = 0 counts as right).
    pub left: SideMeasurements,
    pub right: SideMeasurements,
    /// Mean voxel-wise fat fraction FF = F / (F + W) inside the segment, in % (0–100), present
    /// when the job has Dixon water and fat channels (see `measure` for the formula and the
    /// low-FF magnitude-bias caveat). Absent in JSON from older versions.
    #[serde(default)]
    pub fat_fraction_percent: Option<f64>,
}

/// Measurements of the part of a segment on one side of the patient.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SideMeasurements {
    pub voxel_count: u64,
    pub volume_ml: f64,
    pub mean_intensity: f64,
    /// Mean fat fraction (%) of this side's voxels, as [`SegmentMeasurements::fat_fraction_percent`].
    #[serde(default)]
    pub fat_fraction_percent: Option<f64>,
}

/// measure → encode.
#[derive(Debug, Clone)]
pub struct Findings {
    pub segmentation: Segmentation,
    pub measurements: Vec<SegmentMeasurements>,
}

/// encode → send: one encoded object waiting in `spool/outbox/<destination>/`.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub job_id: String,
    /// Destination name as in the config's `[[destinations]]`.
    pub destination: String,
    /// The Part-10 file in the outbox.
    pub path: PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}
