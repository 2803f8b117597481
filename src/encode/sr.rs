//! TID 1500 "Measurement Report" encoder: a Comprehensive 3D SR
//! (SOP class 1.2.840.10008.5.1.4.1.1.88.34, PS3.3 A.35.13) that reports the
//! per-segment measurements of a job against the DICOM-SEG encoded for it.
//!
//! Content tree (PS3.16 TID 1500, with TID 1204, 1001/1002/1004, 1600, 1411, 1419/300):
//!
//! ```text
//! CONTAINER (126000, DCM, "Imaging Measurement Report")            [DCMR 1500, SEPARATE]
//! ├─ HAS CONCEPT MOD  CODE   Language of Content … = en-US                (TID 1204)
//! ├─ HAS OBS CONTEXT  CODE   Observer Type = Device                       (TID 1002)
//! ├─ HAS OBS CONTEXT  UIDREF Device Observer UID / TEXT Name, Manufacturer, Model Name (TID 1004)
//! ├─ HAS CONCEPT MOD  CODE   Procedure reported = CID 100 code for the source modality
//! ├─ CONTAINS CONTAINER Image Library → CONTAINER Image Library Group → IMAGE per source instance (TID 1600)
//! └─ CONTAINS CONTAINER Imaging Measurements
//!    └─ CONTAINS CONTAINER Measurement Group [DCMR 1411], one per reported segment
//!       ├─ HAS OBS CONTEXT TEXT   Tracking Identifier = SegmentLabel
//!       ├─ HAS OBS CONTEXT UIDREF Tracking Unique Identifier = new UID
//!       ├─ CONTAINS        CODE   Finding = SegmentedPropertyType
//!       ├─ HAS CONCEPT MOD CODE   Finding Site = AnatomicRegion (or the type of an
//!       │                         "Anatomical Structure" segment)
//!       │  └─ HAS CONCEPT MOD CODE Laterality = Left/Right/Bilateral (from the type modifier)
//!       ├─ CONTAINS        IMAGE  Referenced Segment → SEG + ReferencedSegmentNumber
//!       ├─ CONTAINS        UIDREF Source series for segmentation = source SeriesInstanceUID
//!       ├─ CONTAINS        NUM    Volume [cm3]
//!       └─ CONTAINS        NUM    Attenuation Coefficient [hnsf'U]   (CT only)
//!          └─ HAS CONCEPT MOD CODE Derivation = Mean
//! ```
//!
//! Areas (maximum cross-sectional area, area at the centroid slice) are *not* reported:
//! a single-plane area is a planar ROI measurement, which TID 1500 carries in a TID 1410
//! group that references the plane (a Referenced Segmentation Frame), not in the
//! TID 1411 volumetric group.
//!
//! Codes come from [`super::codes`], where each one names its source.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::codes::{self, CodeConst};
use super::seg::EncodedObject;
use crate::pipeline::messages::{Code, Findings, SegmentDescription, SegmentMeasurements};

/// SOPClassUID of Comprehensive 3D SR Storage (PS3.4 B.5).
pub const COMPREHENSIVE_3D_SR_STORAGE: &str = uids::COMPREHENSIVE3_DSR_STORAGE;

/// Maximum length of a DS (Decimal String) value in bytes (PS3.5 6.2).
pub const DS_MAX_LEN: usize = 16;

/// Settings of the SR document that do not come from the findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrOptions {
    /// SeriesNumber (0020,0011) of the new SR series.
    pub series_number: i32,
    /// Manufacturer (0008,0070) and Device Observer Manufacturer (121014), e.g. `"myonode"`.
    pub manufacturer: String,
    /// SoftwareVersions (0018,1020).
    pub software_versions: String,
    /// InstitutionName (0008,0080); omitted when empty.
    pub institution_name: String,
    /// Device Observer UID (121012): a stable UID identifying this node.
    pub device_observer_uid: String,
    /// Device Observer Name (121013): the node's AE title; also DeviceSerialNumber (0018,1000).
    pub device_observer_name: String,
}

/// What the SR references: the SEG it reports on.
///
/// Segment numbers: segment k (1-based) of the SEG is the k-th entry of
/// `findings.segmentation.segments` sorted by `label_value` (the SEG encoder
/// numbers them that way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegReference {
    /// SOPClassUID of the SEG (Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4).
    pub sop_class_uid: String,
    /// SOPInstanceUID of the SEG.
    pub sop_instance_uid: String,
    /// SeriesInstanceUID of the SEG (listed in the evidence sequence).
    pub series_instance_uid: String,
}

/// Errors of [`encode_tid1500`].
#[derive(Debug, thiserror::Error)]
pub enum SrError {
    /// A UID given to the encoder is not a valid DICOM UID (PS3.5 9.1).
    #[error("invalid {what} {uid:?}: not a DICOM UID (PS3.5 9.1)")]
    InvalidUid {
        /// Which UID (e.g. "SEG SOPInstanceUID").
        what: &'static str,
        /// The offending value.
        uid: String,
    },
    /// Two segment descriptions share a label value, so SEG segment numbers are ambiguous.
    #[error("segment label value {0} is described more than once")]
    DuplicateLabel(u8),
    /// A measurement refers to a label value that has no segment description.
    #[error("measurements for label value {label_value} ({label:?}) have no segment description")]
    UnknownLabel {
        /// The label value of the orphan measurement.
        label_value: u8,
        /// Its label text.
        label: String,
    },
    /// None of the segments has measurements: TID 1500 needs at least one measurement group.
    #[error("no segment has measurements; a TID 1500 report needs at least one measurement group")]
    NothingToReport,
    /// A value cannot be written as a DS (NaN or infinite).
    #[error("cannot encode {value} as a DS (PS3.5 6.2): not a finite number")]
    NonFiniteDs {
        /// The value (NaN or ±∞).
        value: f64,
    },
    /// The File Meta Information could not be built or written (PS3.10 7.1).
    #[error("file meta information of the SR: {0}")]
    Meta(#[source] Box<dicom_object::meta::Error>),
    /// The data set could not be serialized.
    #[error("writing the SR data set: {0}")]
    Write(#[source] Box<dicom_object::WriteError>),
    /// Explicit VR Little Endian is not in the transfer syntax registry (build problem).
    #[error("transfer syntax {0} is not registered")]
    TransferSyntax(&'static str),
}

// ---------------------------------------------------------------------------
// DS formatting
// ---------------------------------------------------------------------------

/// Format `v` as a DICOM DS value of at most 16 characters (PS3.5 6.2), as
/// precisely as 16 characters allow.
///
/// The shortest round-trip decimal representation is used when it fits;
/// otherwise the more precise of a fixed-point and an exponent form trimmed to
/// 16 characters. `-0.0` becomes `"0"`.
///
/// Errors: [`SrError::NonFiniteDs`] for NaN and ±infinity (DS cannot hold them).
pub fn format_ds(v: f64) -> Result<String, SrError> {
    if !v.is_finite() {
        return Err(SrError::NonFiniteDs { value: v });
    }
    if v == 0.0 {
        return Ok("0".to_string());
    }
    let shortest = format!("{v}");
    if shortest.len() <= DS_MAX_LEN {
        return Ok(shortest);
    }
    let mut candidates: Vec<String> = Vec::with_capacity(2);
    // Fixed point: as many decimals as fit after the integer part.
    let int_len = format!("{:.0}", v.trunc()).len();
    if int_len <= DS_MAX_LEN {
        let mut decimals = DS_MAX_LEN.saturating_sub(int_len + 1);
        loop {
            let s = trim_fraction(format!("{v:.decimals$}"));
            if s.len() <= DS_MAX_LEN {
                if s.parse::<f64>().map(|p| p != 0.0).unwrap_or(false) {
                    candidates.push(s);
                }
                break;
            }
            if decimals == 0 {
                break;
            }
            decimals -= 1; // rounding carried into a new integer digit
        }
    }
    // Exponent form: mantissa digits shrink until the whole string fits (and, next to
    // ±f64::MAX, until rounding no longer overflows to infinity).
    for digits in (0..=15usize).rev() {
        let s = format!("{v:.digits$e}");
        if s.len() <= DS_MAX_LEN && s.parse::<f64>().is_ok_and(f64::is_finite) {
            candidates.push(s);
            break;
        }
    }
    let err = |s: &String| (s.parse::<f64>().unwrap_or(f64::INFINITY) - v).abs();
    candidates
        .into_iter()
        .min_by(|a, b| err(a).total_cmp(&err(b)).then(a.len().cmp(&b.len())))
        .ok_or(SrError::NonFiniteDs { value: v })
}

/// Strip trailing zeros of a fixed-point fraction (and a dangling '.').
fn trim_fraction(s: String) -> String {
    if !s.contains('.') {
        return s;
    }
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

// ---------------------------------------------------------------------------
// Content tree model (PS3.3 C.17.3 SR Document Content Module)
// ---------------------------------------------------------------------------

/// RelationshipType (0040,A010) of a content item with its parent (PS3.3 C.17.3.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relationship {
    /// `CONTAINS`: the child is part of the parent's content.
    Contains,
    /// `HAS OBS CONTEXT`: the child sets observation context (observer, tracking identifiers).
    HasObsContext,
    /// `HAS CONCEPT MOD`: the child qualifies the parent's concept (language, site, derivation).
    HasConceptMod,
}

impl Relationship {
    /// The defined term written into RelationshipType.
    pub fn as_str(&self) -> &'static str {
        match self {
            Relationship::Contains => "CONTAINS",
            Relationship::HasObsContext => "HAS OBS CONTEXT",
            Relationship::HasConceptMod => "HAS CONCEPT MOD",
        }
    }
}

/// The value of one content item; the variant determines ValueType (0040,A040).
#[derive(Debug, Clone, PartialEq)]
pub enum ContentValue {
    /// `CONTAINER`, ContinuityOfContent `SEPARATE`, with an optional DCMR template
    /// identifier written as ContentTemplateSequence (e.g. `"1500"`, `"1411"`).
    Container { template: Option<&'static str> },
    /// `TEXT`: TextValue (0040,A160).
    Text(String),
    /// `CODE`: ConceptCodeSequence (0040,A168).
    Code(Code),
    /// `UIDREF`: UID (0040,A124).
    UidRef(String),
    /// `NUM`: MeasuredValueSequence with NumericValue (DS) in `unit` (UCUM).
    Num {
        /// The measured value, written as NumericValue (DS, ≤ 16 characters, see [`format_ds`])
        /// plus FloatingPointValue (FD) when the DS is not exact.
        value: f64,
        /// MeasurementUnitsCodeSequence (UCUM).
        unit: Code,
    },
    /// `IMAGE`: ReferencedSOPSequence with an optional ReferencedSegmentNumber
    /// (0062,000B) and ReferencedFrameNumber (0008,1160).
    Image {
        /// ReferencedSOPClassUID (0008,1150).
        sop_class_uid: String,
        /// ReferencedSOPInstanceUID (0008,1155).
        sop_instance_uid: String,
        /// ReferencedSegmentNumber (0062,000B), for a Referenced Segment of a SEG.
        segment_number: Option<u16>,
        /// ReferencedFrameNumber (0008,1160), for a frame of a multi-frame source.
        frame_number: Option<u32>,
    },
}

impl ContentValue {
    /// The ValueType (0040,A040) defined term.
    pub fn value_type(&self) -> &'static str {
        match self {
            ContentValue::Container { .. } => "CONTAINER",
            ContentValue::Text(_) => "TEXT",
            ContentValue::Code(_) => "CODE",
            ContentValue::UidRef(_) => "UIDREF",
            ContentValue::Num { .. } => "NUM",
            ContentValue::Image { .. } => "IMAGE",
        }
    }
}

/// One SR content item and its children (by-value relationships only).
#[derive(Debug, Clone, PartialEq)]
pub struct ContentItem {
    /// Relationship with the parent; `None` only for the root.
    pub relationship: Option<Relationship>,
    /// ConceptNameCodeSequence; `None` is allowed only for IMAGE entries of the image library (TID 1601).
    pub concept_name: Option<Code>,
    /// The item's value; its variant gives ValueType (0040,A040).
    pub value: ContentValue,
    /// ContentSequence (0040,A730), in order.
    pub children: Vec<ContentItem>,
}

impl ContentItem {
    fn new(rel: Relationship, name: CodeConst, value: ContentValue) -> Self {
        ContentItem {
            relationship: Some(rel),
            concept_name: Some(name.code()),
            value,
            children: vec![],
        }
    }

    fn with_children(mut self, children: Vec<ContentItem>) -> Self {
        self.children = children;
        self
    }

    /// Direct children whose concept name matches `name` (value and scheme).
    pub fn children_named(&self, name: &CodeConst) -> impl Iterator<Item = &ContentItem> + '_ {
        let name = *name;
        self.children
            .iter()
            .filter(move |c| c.concept_name.as_ref().is_some_and(|n| name.matches(n)))
    }
}

// ---------------------------------------------------------------------------
// Building the tree
// ---------------------------------------------------------------------------

/// One reported segment: its description, SEG segment number and measurements.
struct Reported<'a> {
    segment_number: u16,
    description: &'a SegmentDescription,
    measurements: &'a SegmentMeasurements,
}

/// Pair each measurement with its segment and SEG segment number (1-based rank of the
/// label value among all segment descriptions). Segments without measurements are skipped.
fn reported_segments(findings: &Findings) -> Result<Vec<Reported<'_>>, SrError> {
    let mut segments: Vec<&SegmentDescription> = findings.segmentation.segments.iter().collect();
    segments.sort_by_key(|s| s.label_value);
    if let Some(w) = segments
        .windows(2)
        .find(|w| w[0].label_value == w[1].label_value)
    {
        return Err(SrError::DuplicateLabel(w[0].label_value));
    }
    for m in &findings.measurements {
        if !segments.iter().any(|s| s.label_value == m.label_value) {
            return Err(SrError::UnknownLabel {
                label_value: m.label_value,
                label: m.label.clone(),
            });
        }
    }
    let mut out = Vec::new();
    for (i, description) in segments.into_iter().enumerate() {
        match findings
            .measurements
            .iter()
            .find(|m| m.label_value == description.label_value)
        {
            Some(measurements) => out.push(Reported {
                segment_number: (i + 1) as u16,
                description,
                measurements,
            }),
            None => tracing::warn!(
                label_value = description.label_value,
                label = %description.label,
                "segment has no measurements; it is left out of the SR"
            ),
        }
    }
    if out.is_empty() {
        return Err(SrError::NothingToReport);
    }
    Ok(out)
}

/// Model name written as ManufacturerModelName and Device Observer Model Name (121015).
const MODEL_NAME: &str = env!("CARGO_PKG_NAME");

/// Build the TID 1500 content tree for `findings` (see the module documentation for its shape).
///
/// Measurement groups follow SEG segment order; a segment without a
/// [`SegmentMeasurements`] entry gets no group (logged). Non-finite measurement
/// values are left out of their group (logged).
///
/// Errors: [`SrError::DuplicateLabel`], [`SrError::UnknownLabel`], [`SrError::NothingToReport`].
pub fn build_content_tree(
    findings: &Findings,
    seg: &SegReference,
    opts: &SrOptions,
) -> Result<ContentItem, SrError> {
    use ContentValue as V;
    use Relationship::*;
    let job = &findings.segmentation.job;
    let header = &job.header;
    let reported = reported_segments(findings)?;

    let mut root_children = vec![
        ContentItem::new(
            HasConceptMod,
            codes::LANGUAGE_OF_CONTENT,
            V::Code(codes::LANGUAGE_EN_US.code()),
        ),
        ContentItem::new(
            HasObsContext,
            codes::OBSERVER_TYPE,
            V::Code(codes::DEVICE.code()),
        ),
        ContentItem::new(
            HasObsContext,
            codes::DEVICE_OBSERVER_UID,
            V::UidRef(opts.device_observer_uid.clone()),
        ),
    ];
    if !opts.device_observer_name.is_empty() {
        root_children.push(ContentItem::new(
            HasObsContext,
            codes::DEVICE_OBSERVER_NAME,
            V::Text(opts.device_observer_name.clone()),
        ));
    }
    if !opts.manufacturer.is_empty() {
        root_children.push(ContentItem::new(
            HasObsContext,
            codes::DEVICE_OBSERVER_MANUFACTURER,
            V::Text(opts.manufacturer.clone()),
        ));
    }
    root_children.push(ContentItem::new(
        HasObsContext,
        codes::DEVICE_OBSERVER_MODEL_NAME,
        V::Text(MODEL_NAME.into()),
    ));
    root_children.push(ContentItem::new(
        HasConceptMod,
        codes::PROCEDURE_REPORTED,
        V::Code(codes::procedure_reported_for_modality(&header.modality).code()),
    ));

    // TID 1600 Image Library: one group listing the source instances.
    let mut seen = std::collections::HashSet::new();
    let entries: Vec<ContentItem> = job
        .volume
        .slices
        .iter()
        .filter(|s| seen.insert((s.sop_instance_uid.as_str(), s.frame_number)))
        .map(|s| ContentItem {
            relationship: Some(Contains),
            concept_name: None,
            value: V::Image {
                sop_class_uid: s.sop_class_uid.clone(),
                sop_instance_uid: s.sop_instance_uid.clone(),
                segment_number: None,
                frame_number: s.frame_number,
            },
            children: vec![],
        })
        .collect();
    if !entries.is_empty() {
        let group = ContentItem::new(
            Contains,
            codes::IMAGE_LIBRARY_GROUP,
            V::Container { template: None },
        )
        .with_children(entries);
        root_children.push(
            ContentItem::new(
                Contains,
                codes::IMAGE_LIBRARY,
                V::Container { template: None },
            )
            .with_children(vec![group]),
        );
    }

    let is_ct = header.modality.trim() == "CT";
    let groups = reported
        .iter()
        .map(|r| measurement_group(r, seg, &header.series_instance_uid, is_ct))
        .collect();
    root_children.push(
        ContentItem::new(
            Contains,
            codes::IMAGING_MEASUREMENTS,
            V::Container { template: None },
        )
        .with_children(groups),
    );

    Ok(ContentItem {
        relationship: None,
        concept_name: Some(codes::IMAGING_MEASUREMENT_REPORT.code()),
        value: V::Container {
            template: Some("1500"),
        },
        children: root_children,
    })
}

/// One TID 1411 Volumetric ROI Measurements group.
fn measurement_group(
    r: &Reported<'_>,
    seg: &SegReference,
    source_series_uid: &str,
    is_ct: bool,
) -> ContentItem {
    use ContentValue as V;
    use Relationship::*;
    let d = r.description;
    let m = r.measurements;
    let label = if d.label.trim().is_empty() {
        format!("Segment {}", r.segment_number)
    } else {
        d.label.clone()
    };
    let mut items = vec![
        ContentItem::new(HasObsContext, codes::TRACKING_IDENTIFIER, V::Text(label)),
        ContentItem::new(
            HasObsContext,
            codes::TRACKING_UNIQUE_IDENTIFIER,
            V::UidRef(crate::uid::new_uid()),
        ),
        ContentItem::new(Contains, codes::FINDING, V::Code(d.property_type.clone())),
    ];
    // Finding site: the anatomic region, or the segment itself when it is an anatomical structure.
    let site = d.anatomic_region.clone().or_else(|| {
        codes::ANATOMICAL_STRUCTURE
            .matches(&d.category)
            .then(|| d.property_type.clone())
    });
    if let Some(site) = site {
        let mut site_item = ContentItem::new(HasConceptMod, codes::FINDING_SITE, V::Code(site));
        if let Some(lat) = d.type_modifier.as_ref().and_then(codes::laterality_of) {
            site_item.children.push(ContentItem::new(
                HasConceptMod,
                codes::LATERALITY,
                V::Code(lat.code()),
            ));
        }
        items.push(site_item);
    }
    items.push(ContentItem::new(
        Contains,
        codes::REFERENCED_SEGMENT,
        V::Image {
            sop_class_uid: seg.sop_class_uid.clone(),
            sop_instance_uid: seg.sop_instance_uid.clone(),
            segment_number: Some(r.segment_number),
            frame_number: None,
        },
    ));
    items.push(ContentItem::new(
        Contains,
        codes::SOURCE_SERIES_FOR_SEGMENTATION,
        V::UidRef(source_series_uid.to_string()),
    ));
    if m.volume_ml.is_finite() {
        // 1 mL = 1 cm³
        items.push(ContentItem::new(
            Contains,
            codes::VOLUME,
            V::Num {
                value: m.volume_ml,
                unit: codes::UNIT_CUBIC_CENTIMETER.code(),
            },
        ));
    } else {
        tracing::warn!(label = %d.label, value = m.volume_ml, "non-finite volume left out of the SR");
    }
    if is_ct {
        match m.mean_attenuation_hu {
            Some(hu) if hu.is_finite() => items.push(
                ContentItem::new(
                    Contains,
                    codes::ATTENUATION_COEFFICIENT,
                    V::Num {
                        value: hu,
                        unit: codes::UNIT_HOUNSFIELD.code(),
                    },
                )
                .with_children(vec![ContentItem::new(
                    HasConceptMod,
                    codes::DERIVATION,
                    V::Code(codes::MEAN.code()),
                )]),
            ),
            Some(hu) => {
                tracing::warn!(label = %d.label, value = hu, "non-finite mean attenuation left out of the SR")
            }
            None => {}
        }
    }
    push_fat_fraction(&mut items, m, &d.label);
    ContentItem::new(
        Contains,
        codes::MEASUREMENT_GROUP,
        V::Container {
            template: Some("1411"),
        },
    )
    .with_children(items)
}

/// Append the mean fat fraction (DCM 129100 "Fat fraction", UCUM `%`, Derivation Mean) to a
/// TID 1411 group's items when the segment has one (Dixon jobs); a non-finite value is left
/// out (logged). Any modality: the value only exists when water/fat channels were measured.
fn push_fat_fraction(items: &mut Vec<ContentItem>, m: &SegmentMeasurements, label: &str) {
    match m.fat_fraction_percent {
        Some(ff) if ff.is_finite() => items.push(
            ContentItem::new(
                Relationship::Contains,
                codes::FAT_FRACTION,
                ContentValue::Num { value: ff, unit: codes::UNIT_PERCENT.code() },
            )
            .with_children(vec![ContentItem::new(
                Relationship::HasConceptMod,
                codes::DERIVATION,
                ContentValue::Code(codes::MEAN.code()),
            )]),
        ),
        Some(ff) => tracing::warn!(label = %label, value = ff, "non-finite fat fraction left out of the SR"),
        None => {}
    }
}

// ---------------------------------------------------------------------------
// Encoding to a data set
// ---------------------------------------------------------------------------

/// One data element with a primitive value (shared by the SR encoders of this module).
pub(super) fn el(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value.into())
}

fn empty(tag: Tag, vr: VR) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::Empty)
}

/// A sequence (SQ) element of `items`.
pub(super) fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// A Code Sequence Macro item (PS3.3 8.8); values longer than 16 characters go to
/// LongCodeValue (0008,0119), URNs/URLs to URNCodeValue (0008,0120).
pub(super) fn code_item(code: &Code) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    if code.value.contains(':') {
        o.put(el(tags::URN_CODE_VALUE, VR::UR, code.value.as_str()));
    } else if code.value.len() > 16 {
        o.put(el(tags::LONG_CODE_VALUE, VR::UC, code.value.as_str()));
    } else {
        o.put(el(tags::CODE_VALUE, VR::SH, code.value.as_str()));
    }
    o.put(el(
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        code.scheme.as_str(),
    ));
    o.put(el(tags::CODE_MEANING, VR::LO, code.meaning.as_str()));
    o
}

fn template_seq(id: &str) -> DataElement<InMemDicomObject> {
    let mut t = InMemDicomObject::new_empty();
    t.put(el(tags::MAPPING_RESOURCE, VR::CS, "DCMR"));
    t.put(el(tags::TEMPLATE_IDENTIFIER, VR::CS, id));
    seq(tags::CONTENT_TEMPLATE_SEQUENCE, vec![t])
}

/// Write a content item's attributes (PS3.3 Table C.17-5 Document Content Macro and
/// C.17.3 Document Relationship Macro) into `o`.
fn put_content_item(o: &mut InMemDicomObject, item: &ContentItem) -> Result<(), SrError> {
    if let Some(rel) = item.relationship {
        o.put(el(tags::RELATIONSHIP_TYPE, VR::CS, rel.as_str()));
    }
    o.put(el(tags::VALUE_TYPE, VR::CS, item.value.value_type()));
    if let Some(name) = &item.concept_name {
        o.put(seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(name)]));
    }
    match &item.value {
        ContentValue::Container { template } => {
            o.put(el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
            if let Some(id) = template {
                o.put(template_seq(id));
            }
        }
        ContentValue::Text(t) => {
            o.put(el(tags::TEXT_VALUE, VR::UT, t.as_str()));
        }
        ContentValue::Code(c) => {
            o.put(seq(tags::CONCEPT_CODE_SEQUENCE, vec![code_item(c)]));
        }
        ContentValue::UidRef(u) => {
            o.put(el(tags::UID, VR::UI, u.as_str()));
        }
        ContentValue::Num { value, unit } => {
            let ds = format_ds(*value)?;
            let mut mv = InMemDicomObject::new_empty();
            mv.put(seq(
                tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                vec![code_item(unit)],
            ));
            // FloatingPointValue is Type 1C: required when the DS loses precision (PS3.3 C.18.1).
            if ds.parse::<f64>().ok() != Some(*value) {
                mv.put(el(tags::FLOATING_POINT_VALUE, VR::FD, *value));
            }
            mv.put(el(tags::NUMERIC_VALUE, VR::DS, ds));
            o.put(seq(tags::MEASURED_VALUE_SEQUENCE, vec![mv]));
        }
        ContentValue::Image {
            sop_class_uid,
            sop_instance_uid,
            segment_number,
            frame_number,
        } => {
            let mut r = InMemDicomObject::new_empty();
            r.put(el(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                sop_class_uid.as_str(),
            ));
            r.put(el(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                sop_instance_uid.as_str(),
            ));
            if let Some(f) = frame_number {
                r.put(el(tags::REFERENCED_FRAME_NUMBER, VR::IS, f.to_string()));
            }
            if let Some(n) = segment_number {
                r.put(el(tags::REFERENCED_SEGMENT_NUMBER, VR::US, *n));
            }
            o.put(seq(tags::REFERENCED_SOP_SEQUENCE, vec![r]));
        }
    }
    if !item.children.is_empty() {
        let mut children = Vec::with_capacity(item.children.len());
        for child in &item.children {
            let mut c = InMemDicomObject::new_empty();
            put_content_item(&mut c, child)?;
            children.push(c);
        }
        o.put(seq(tags::CONTENT_SEQUENCE, children));
    }
    Ok(())
}

/// Patient, General Study and Patient Study attributes copied from the source header:
/// `(tag, VR, type 2?)` — Type 2 attributes are written empty when the source lacks them.
const COPIED_FROM_SOURCE: &[(Tag, VR, bool)] = &[
    // Patient module (PS3.3 C.7.1.1)
    (tags::PATIENT_NAME, VR::PN, true),
    (tags::PATIENT_ID, VR::LO, true),
    (tags::ISSUER_OF_PATIENT_ID, VR::LO, false),
    (tags::PATIENT_BIRTH_DATE, VR::DA, true),
    (tags::PATIENT_SEX, VR::CS, true),
    (tags::PATIENT_IDENTITY_REMOVED, VR::CS, false),
    (tags::DEIDENTIFICATION_METHOD, VR::LO, false),
    // General Study module (PS3.3 C.7.2.1)
    (tags::STUDY_DATE, VR::DA, true),
    (tags::STUDY_TIME, VR::TM, true),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN, true),
    (tags::STUDY_ID, VR::SH, true),
    (tags::ACCESSION_NUMBER, VR::SH, true),
    (tags::STUDY_DESCRIPTION, VR::LO, false),
    // Patient Study module (PS3.3 C.7.2.2)
    (tags::PATIENT_AGE, VR::AS, false),
    (tags::PATIENT_SIZE, VR::DS, false),
    (tags::PATIENT_WEIGHT, VR::DS, false),
];

fn check_uid(what: &'static str, uid: &str) -> Result<(), SrError> {
    if crate::spool::is_valid_uid(uid) {
        Ok(())
    } else {
        Err(SrError::InvalidUid {
            what,
            uid: uid.to_string(),
        })
    }
}

/// Encode a Comprehensive 3D SR (1.2.840.10008.5.1.4.1.1.88.34) following PS3.16 TID 1500
/// with one TID 1411 Volumetric ROI Measurements group per segment that has measurements;
/// returns a complete Part-10 file (PS3.10, Explicit VR Little Endian, SpecificCharacterSet
/// `ISO_IR 192`).
///
/// Modules (PS3.3 A.35.13): Patient, General Study, Patient Study (copied from
/// `findings.segmentation.job.header.dataset`), SR Document Series (Modality `SR`, new
/// SeriesInstanceUID), General Equipment, Enhanced General Equipment, SR Document General
/// (evidence: the SEG and every source instance), SR Document Content, SOP Common.
///
/// Errors: [`SrError::InvalidUid`] when a UID of `seg`, the source series/study or
/// `opts.device_observer_uid` is malformed; the errors of [`build_content_tree`];
/// [`SrError::NonFiniteDs`] should not occur (non-finite values are skipped);
/// [`SrError::Meta`] / [`SrError::Write`] on serialization failures.
pub fn encode_tid1500(
    findings: &Findings,
    seg: &SegReference,
    opts: &SrOptions,
) -> Result<EncodedObject, SrError> {
    let job = &findings.segmentation.job;
    let header = &job.header;
    check_uid("SEG SOPClassUID", &seg.sop_class_uid)?;
    check_uid("SEG SOPInstanceUID", &seg.sop_instance_uid)?;
    check_uid("SEG SeriesInstanceUID", &seg.series_instance_uid)?;
    check_uid("source StudyInstanceUID", &header.study_instance_uid)?;
    check_uid("source SeriesInstanceUID", &header.series_instance_uid)?;
    check_uid("Device Observer UID", &opts.device_observer_uid)?;

    let tree = build_content_tree(findings, seg, opts)?;
    let sop_instance_uid = crate::uid::new_uid();
    let series_instance_uid = crate::uid::new_uid();
    let now = chrono::Local::now();
    let date = now.format("%Y%m%d").to_string();
    let time = now.format("%H%M%S%.6f").to_string();

    let mut o = InMemDicomObject::new_empty();
    // SOP Common (C.12.1)
    o.put(el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    o.put(el(tags::SOP_CLASS_UID, VR::UI, COMPREHENSIVE_3D_SR_STORAGE));
    o.put(el(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        sop_instance_uid.as_str(),
    ));
    o.put(el(tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str()));
    o.put(el(tags::INSTANCE_CREATION_TIME, VR::TM, time.as_str()));

    // Patient / General Study / Patient Study: copied.
    let src = &header.dataset;
    for &(tag, vr, type2) in COPIED_FROM_SOURCE {
        match src.element(tag) {
            Ok(e) => {
                o.put(e.clone());
            }
            Err(_) if type2 => {
                o.put(empty(tag, vr));
            }
            Err(_) => {}
        }
    }
    o.put(el(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        header.study_instance_uid.as_str(),
    ));

    // SR Document Series (C.17.1)
    o.put(el(tags::MODALITY, VR::CS, "SR"));
    o.put(el(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        series_instance_uid.as_str(),
    ));
    o.put(el(
        tags::SERIES_NUMBER,
        VR::IS,
        opts.series_number.to_string(),
    ));
    o.put(el(tags::SERIES_DATE, VR::DA, date.as_str()));
    o.put(el(tags::SERIES_TIME, VR::TM, time.as_str()));
    // names the job version (a result of late instances supersedes the earlier one)
    o.put(el(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        format!(
            "Imaging Measurement Report ({})",
            super::result_version_note(findings.segmentation.job.version)
        )
        .as_str(),
    ));
    o.put(seq(
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    ));

    // General Equipment (C.7.5.1) and Enhanced General Equipment (C.7.5.2)
    o.put(el(tags::MANUFACTURER, VR::LO, opts.manufacturer.as_str()));
    if !opts.institution_name.is_empty() {
        o.put(el(
            tags::INSTITUTION_NAME,
            VR::LO,
            opts.institution_name.as_str(),
        ));
    }
    o.put(el(tags::MANUFACTURER_MODEL_NAME, VR::LO, MODEL_NAME));
    let serial = if opts.device_observer_name.is_empty() {
        MODEL_NAME
    } else {
        opts.device_observer_name.as_str()
    };
    o.put(el(tags::DEVICE_SERIAL_NUMBER, VR::LO, serial));
    o.put(el(
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        opts.software_versions.as_str(),
    ));

    // SR Document General (C.17.2)
    o.put(el(tags::INSTANCE_NUMBER, VR::IS, "1"));
    o.put(el(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"));
    o.put(el(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"));
    o.put(el(tags::CONTENT_DATE, VR::DA, date.as_str()));
    o.put(el(tags::CONTENT_TIME, VR::TM, time.as_str()));
    o.put(seq(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]));
    o.put(evidence(findings, seg));

    // SR Document Content (C.17.3): the root content item's attributes sit at the top level.
    put_content_item(&mut o, &tree)?;

    // Part-10 file
    let ts = TransferSyntaxRegistry
        .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .ok_or(SrError::TransferSyntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))?;
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(COMPREHENSIVE_3D_SR_STORAGE)
        .media_storage_sop_instance_uid(sop_instance_uid.as_str())
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .map_err(|e| SrError::Meta(Box::new(e)))?;
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    meta.write(&mut bytes)
        .map_err(|e| SrError::Meta(Box::new(e)))?;
    o.write_dataset_with_ts(&mut bytes, ts)
        .map_err(|e| SrError::Write(Box::new(e)))?;

    Ok(EncodedObject {
        bytes,
        sop_class_uid: COMPREHENSIVE_3D_SR_STORAGE.to_string(),
        sop_instance_uid,
        series_instance_uid,
    })
}

/// CurrentRequestedProcedureEvidenceSequence (0040,A375), PS3.3 C.17.2.3: the study with
/// two series — the SEG and the source series with all its instances.
fn evidence(findings: &Findings, seg: &SegReference) -> DataElement<InMemDicomObject> {
    let job = &findings.segmentation.job;
    let sop_ref = |class: &str, inst: &str| {
        let mut r = InMemDicomObject::new_empty();
        r.put(el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class));
        r.put(el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, inst));
        r
    };
    let series = |uid: &str, refs: Vec<InMemDicomObject>| {
        let mut s = InMemDicomObject::new_empty();
        s.put(el(tags::SERIES_INSTANCE_UID, VR::UI, uid));
        s.put(seq(tags::REFERENCED_SOP_SEQUENCE, refs));
        s
    };
    let mut seen = std::collections::HashSet::new();
    let source_refs: Vec<InMemDicomObject> = job
        .volume
        .slices
        .iter()
        .filter(|s| seen.insert(s.sop_instance_uid.as_str()))
        .map(|s| sop_ref(&s.sop_class_uid, &s.sop_instance_uid))
        .collect();
    let mut series_items = vec![series(
        &seg.series_instance_uid,
        vec![sop_ref(&seg.sop_class_uid, &seg.sop_instance_uid)],
    )];
    if !source_refs.is_empty() {
        series_items.push(series(&job.header.series_instance_uid, source_refs));
    }
    let mut study = InMemDicomObject::new_empty();
    study.put(el(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        job.header.study_instance_uid.as_str(),
    ));
    study.put(seq(tags::REFERENCED_SERIES_SEQUENCE, series_items));
    seq(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![study],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds_ok(v: f64) -> String {
        let s = format_ds(v).unwrap();
        assert!(s.len() <= DS_MAX_LEN, "{v} → {s:?} is {} chars", s.len());
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)),
            "{s:?} has characters outside the DS repertoire"
        );
        s
    }

    #[test]
    fn short_values_are_exact() {
        for v in [
            1.0,
            -1.5,
            0.001953125,
            123.25,
            1e-5,
            45.5,
            1234567890123456.0,
        ] {
            let s = ds_ok(v);
            assert_eq!(s.parse::<f64>().unwrap(), v, "{s}");
        }
        assert_eq!(ds_ok(0.0), "0");
        assert_eq!(ds_ok(-0.0), "0");
        assert_eq!(ds_ok(2.5), "2.5");
    }

    #[test]
    fn long_values_keep_near_full_precision() {
        let cases = [
            (1.0 / 3.0, 1e-13),
            (-2.0 / 3.0, 1e-13),
            (123.45678901234568, 1e-13),
            (-87.12345678901235, 1e-13),
            (1.0e20 / 3.0, 1e-9),
            (-1.0e-20 / 3.0, 1e-9),
            (f64::MAX, 1e-8), // 1.7976931349e308 would overflow; one digit fewer
            (f64::MIN_POSITIVE, 1e-9),
            (5e-324, 1e-3),
            (12_345_678_901_234_568.0, 1e-11), // 17 integer digits: exponent form, 12 significant
            (9_999_999_999_999_998.0, 1e-13),
        ];
        for (v, tol) in cases {
            let s = ds_ok(v);
            let back: f64 = s.parse().unwrap();
            let rel = ((back - v) / v).abs();
            assert!(rel <= tol, "{v} → {s} (relative error {rel:e} > {tol:e})");
        }
    }

    #[test]
    fn fixed_point_rounding_carry_stays_within_16() {
        // 99999.99999999999 rounds up to 100000.0000000000 at 10 decimals.
        let s = ds_ok(99999.99999999999);
        assert!((s.parse::<f64>().unwrap() - 100000.0).abs() < 1e-9, "{s}");
    }

    #[test]
    fn non_finite_is_an_error() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(format_ds(v), Err(SrError::NonFiniteDs { .. })));
        }
    }
}
