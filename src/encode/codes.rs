//! Coded concepts used by the TID 1500 measurement report encoder ([`super::sr`]).
//!
//! Every row was checked against pydicom 3.0.2's concept dictionary
//! (`pydicom.sr._concepts_dict.concepts`, generated from PS3.16 Annex D / the
//! DCMR context groups) and, where the code is a member of a context group,
//! against `pydicom.sr._cid_dict.cid_concepts`. The comment on each constant
//! names its source: the CID it was verified in, or "pydicom concept
//! dictionary" for concept names that belong to no CID (template concept
//! names fixed by an EV in PS3.16 Annex A).
//!
//! Codes are `(CodeValue, CodingSchemeDesignator, CodeMeaning)` per the PS3.3
//! 8.8 Code Sequence Macro. Use [`CodeConst::code`] to get an owned
//! [`Code`].

use crate::pipeline::messages::Code;

/// A compile-time coded concept: `(value, scheme designator, meaning)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeConst {
    /// CodeValue (0008,0100).
    pub value: &'static str,
    /// CodingSchemeDesignator (0008,0102), e.g. `DCM`, `SCT`, `UCUM`, `LN`.
    pub scheme: &'static str,
    /// CodeMeaning (0008,0104).
    pub meaning: &'static str,
}

impl CodeConst {
    /// The owned [`Code`] for this constant.
    pub fn code(&self) -> Code {
        Code::new(self.value, self.scheme, self.meaning)
    }

    /// `true` if `code` has the same CodeValue and CodingSchemeDesignator
    /// (the meaning is not compared: it is not part of a code's identity, PS3.3 8.8).
    pub fn matches(&self, code: &Code) -> bool {
        code.value == self.value && code.scheme == self.scheme
    }
}

const fn c(value: &'static str, scheme: &'static str, meaning: &'static str) -> CodeConst {
    CodeConst {
        value,
        scheme,
        meaning,
    }
}

// ---------------------------------------------------------------------------
// TID 1500 Measurement Report: document title and header content
// ---------------------------------------------------------------------------

/// Document title, root CONTAINER of TID 1500. Source: CID 7021 "Measurement Report Document Title".
pub const IMAGING_MEASUREMENT_REPORT: CodeConst = c("126000", "DCM", "Imaging Measurement Report");
/// Concept name of TID 1204 row 1. Source: pydicom concept dictionary (DCM 121049).
pub const LANGUAGE_OF_CONTENT: CodeConst =
    c("121049", "DCM", "Language of Content Item and Descendants");
/// Value of the language item. Source: PS3.16 CID 5000 "Language" (RFC5646 tags are not in
/// pydicom's dictionary); the same triple is highdicom's `DEFAULT_LANGUAGE`.
pub const LANGUAGE_EN_US: CodeConst = c("en-US", "RFC5646", "English (United States)");
/// TID 1002 Observer Type concept name. Source: pydicom concept dictionary (DCM 121005).
pub const OBSERVER_TYPE: CodeConst = c("121005", "DCM", "Observer Type");
/// Observer Type value "Device". Source: CID 270 "Observer Type".
pub const DEVICE: CodeConst = c("121007", "DCM", "Device");
/// TID 1004 row 1. Source: pydicom concept dictionary (DCM 121012).
pub const DEVICE_OBSERVER_UID: CodeConst = c("121012", "DCM", "Device Observer UID");
/// TID 1004 row 2. Source: pydicom concept dictionary (DCM 121013).
pub const DEVICE_OBSERVER_NAME: CodeConst = c("121013", "DCM", "Device Observer Name");
/// TID 1004 row 3. Source: pydicom concept dictionary (DCM 121014).
pub const DEVICE_OBSERVER_MANUFACTURER: CodeConst =
    c("121014", "DCM", "Device Observer Manufacturer");
/// TID 1004 row 4. Source: pydicom concept dictionary (DCM 121015).
pub const DEVICE_OBSERVER_MODEL_NAME: CodeConst = c("121015", "DCM", "Device Observer Model Name");
/// TID 1500 row 4 concept name. Source: pydicom concept dictionary (DCM 121058; in CIDs 6052, 6053).
pub const PROCEDURE_REPORTED: CodeConst = c("121058", "DCM", "Procedure reported");

/// Procedure reported for CT sources. Source: CID 100 "Quantitative Diagnostic Imaging Procedure".
pub const CT_UNSPECIFIED_BODY_REGION: CodeConst = c("25045-6", "LN", "CT unspecified body region");
/// Procedure reported for MR sources. Source: CID 100 "Quantitative Diagnostic Imaging Procedure".
pub const MRI_UNSPECIFIED_BODY_REGION: CodeConst =
    c("25056-3", "LN", "MRI unspecified body region");
/// Procedure reported for any other source modality. Source: CID 100 (also CID 634).
pub const IMAGING_PROCEDURE: CodeConst = c("363679005", "SCT", "Imaging procedure");

/// TID 1600 root container. Source: pydicom concept dictionary (DCM 111028).
pub const IMAGE_LIBRARY: CodeConst = c("111028", "DCM", "Image Library");
/// TID 1600 row 2 container. Source: pydicom concept dictionary (DCM 126200).
pub const IMAGE_LIBRARY_GROUP: CodeConst = c("126200", "DCM", "Image Library Group");
/// TID 1500 row 6 container. Source: pydicom concept dictionary (DCM 126010).
pub const IMAGING_MEASUREMENTS: CodeConst = c("126010", "DCM", "Imaging Measurements");

// ---------------------------------------------------------------------------
// TID 1411 Volumetric ROI Measurements and Qualitative Evaluations
// ---------------------------------------------------------------------------

/// TID 1411 row 1 container. Source: pydicom concept dictionary (DCM 125007).
pub const MEASUREMENT_GROUP: CodeConst = c("125007", "DCM", "Measurement Group");
/// TID 4108 Tracking Identifier. Source: pydicom concept dictionary (DCM 112039).
pub const TRACKING_IDENTIFIER: CodeConst = c("112039", "DCM", "Tracking Identifier");
/// TID 4108 Tracking Unique Identifier. Source: pydicom concept dictionary (DCM 112040).
pub const TRACKING_UNIQUE_IDENTIFIER: CodeConst = c("112040", "DCM", "Tracking Unique Identifier");
/// TID 1411 Finding concept name. Source: pydicom concept dictionary (DCM 121071; in CIDs 3419, 6053, 7002, 9000).
pub const FINDING: CodeConst = c("121071", "DCM", "Finding");
/// Finding Site concept name. Source: CID 9000 (SCT 363698007).
pub const FINDING_SITE: CodeConst = c("363698007", "SCT", "Finding Site");
/// Laterality concept name (child of Finding Site). Source: CID 210 (SCT 272741003).
pub const LATERALITY: CodeConst = c("272741003", "SCT", "Laterality");
/// Laterality value. Source: CID 244 "Laterality".
pub const LEFT: CodeConst = c("7771000", "SCT", "Left");
/// Laterality value. Source: CID 244 "Laterality".
pub const RIGHT: CodeConst = c("24028007", "SCT", "Right");
/// Laterality value. Source: CID 244 "Laterality".
pub const BILATERAL: CodeConst = c("51440002", "SCT", "Bilateral");
/// SegmentedPropertyCategory meaning the segment *is* an anatomic structure, so its type
/// doubles as the finding site. Source: CID 7150 "Segmentation Property Category".
pub const ANATOMICAL_STRUCTURE: CodeConst = c("91723000", "SCT", "Anatomical Structure");
/// TID 1411 Referenced Segment IMAGE item. Source: CID 7250 (DCM 121191).
pub const REFERENCED_SEGMENT: CodeConst = c("121191", "DCM", "Referenced Segment");
/// TID 1411 Source series for segmentation UIDREF item. Source: pydicom concept dictionary (DCM 121232).
pub const SOURCE_SERIES_FOR_SEGMENTATION: CodeConst =
    c("121232", "DCM", "Source series for segmentation");

// ---------------------------------------------------------------------------
// Measurements (TID 1419 / TID 300) and units
// ---------------------------------------------------------------------------

/// Volume of the segment. Source: CID 7469 "Generic Intensity and Size Measurement" (also CID 218).
pub const VOLUME: CodeConst = c("118565006", "SCT", "Volume");
/// Mean CT attenuation. Source: CID 7180 / CID 218 / CID 7469 (DCM 112031).
pub const ATTENUATION_COEFFICIENT: CodeConst = c("112031", "DCM", "Attenuation Coefficient");
/// TID 300 row 4 Derivation concept name. Source: CID 9000 (DCM 121401).
pub const DERIVATION: CodeConst = c("121401", "DCM", "Derivation");
/// Derivation value. Source: CID 7464 "General Region of Interest Measurement Modifier".
pub const MEAN: CodeConst = c("373098007", "SCT", "Mean");
/// Unit of [`VOLUME`]: 1 cm³ = 1 mL. Source: CID 7462 "Volume Measurement Unit" (UCUM `ml`
/// is not in pydicom's dictionary, so the CID 7462 member `cm3` is used).
pub const UNIT_CUBIC_CENTIMETER: CodeConst = c("cm3", "UCUM", "cubic centimeter");
/// Unit of [`ATTENUATION_COEFFICIENT`]. Source: CID 7181 (also CID 83, 301).
pub const UNIT_HOUNSFIELD: CodeConst = c("[hnsf'U]", "UCUM", "Hounsfield unit");

/// Fat fraction of a segment (mean of the voxel-wise F/(F+W) of Dixon images, in %).
/// Source: pydicom concept dictionary (DCM 129100 "Fat fraction"; member of CIDs 218
/// "Quantitative Image Feature", 7180, 7469 "Generic Intensity and Size Measurement").
pub const FAT_FRACTION: CodeConst = c("129100", "DCM", "Fat fraction");
/// Unit of [`FAT_FRACTION`]. Source: CID 83 "Units for Real World Value Mapping" (also 84, 301, 7181).
pub const UNIT_PERCENT: CodeConst = c("%", "UCUM", "Percent");

// ---------------------------------------------------------------------------
// Segment descriptions of the tissue-composition analyses (SEG Segment Sequence)
// ---------------------------------------------------------------------------

/// SegmentedPropertyCategory of tissue classes. Source: CID 7150 "Segmentation Property Category".
pub const TISSUE: CodeConst = c("85756007", "SCT", "Tissue");
/// SegmentedPropertyType of the muscle class. Source: pydicom concept dictionary (SCT 127954009,
/// CIDs 7710, 8134 "Anatomic Structure"; CID 7151 is extensible and lists only the broader
/// "Muscle" 91727004, so the specific skeletal-muscle concept is used as the issue asks).
pub const SKELETAL_MUSCLE: CodeConst = c("127954009", "SCT", "Skeletal muscle");
/// SegmentedPropertyType of the adipose class. Source: CID 7151 "Segmentation Property Type"
/// (also 7166, 7191; pydicom keyword `AdiposeTissue`, meaning "Fat").
pub const ADIPOSE_TISSUE: CodeConst = c("55603005", "SCT", "Fat");
/// SegmentedPropertyType of the bone class. Source: CID 7151 "Segmentation Property Type"
/// (also 7166, 7191; pydicom keyword `BoneTissue`).
pub const BONE_TISSUE: CodeConst = c("3138006", "SCT", "Bone");
/// Algorithm family of the threshold-based tissue analyses. Source: CID 7162
/// "Surface Processing Algorithm Families" (DCM 123105).
pub const HISTOGRAM_ANALYSIS: CodeConst = c("123105", "DCM", "Histogram Analysis");

/// The CID 100 "Procedure reported" code for a source Modality (0008,0060):
/// `CT` → [`CT_UNSPECIFIED_BODY_REGION`], `MR` → [`MRI_UNSPECIFIED_BODY_REGION`],
/// anything else → [`IMAGING_PROCEDURE`].
pub fn procedure_reported_for_modality(modality: &str) -> CodeConst {
    match modality.trim() {
        "CT" => CT_UNSPECIFIED_BODY_REGION,
        "MR" => MRI_UNSPECIFIED_BODY_REGION,
        _ => IMAGING_PROCEDURE,
    }
}

/// The CID 244 laterality value matching a SegmentedPropertyTypeModifier, if the
/// modifier is Left, Right or Bilateral (compared by value and scheme).
pub fn laterality_of(modifier: &Code) -> Option<CodeConst> {
    [LEFT, RIGHT, BILATERAL]
        .into_iter()
        .find(|l| l.matches(modifier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procedure_by_modality() {
        assert_eq!(procedure_reported_for_modality("CT").value, "25045-6");
        assert_eq!(procedure_reported_for_modality("MR").value, "25056-3");
        assert_eq!(procedure_reported_for_modality("PT").value, "363679005");
    }

    #[test]
    fn laterality_matches_by_value_and_scheme_only() {
        assert_eq!(
            laterality_of(&Code::new("7771000", "SCT", "left")),
            Some(LEFT)
        );
        assert_eq!(
            laterality_of(&Code::new("24028007", "SCT", "Right")),
            Some(RIGHT)
        );
        assert_eq!(laterality_of(&Code::new("7771000", "DCM", "Left")), None);
        assert_eq!(
            laterality_of(&Code::new("99999999", "99TEST", "not a laterality")),
            None
        );
    }
}

// ---------------------------------------------------------------------------
// Segmentation (PS3.3 C.8.20)
// ---------------------------------------------------------------------------

/// Category and type of the LABELMAP background segment (SegmentNumber 0, pixel value 0).
/// Source: pydicom concept dictionary (DCM 125040, in CIDs 7151, 7159, 7165, 7168, 7169,
/// 7194, 7196, 12322); highdicom 0.28 writes the same triple for its LABELMAP background.
pub const BACKGROUND: CodeConst = c("125040", "DCM", "Background");

// ---------------------------------------------------------------------------
// TotalSegmentator classes (segment coding for label maps made by TotalSegmentator)
// ---------------------------------------------------------------------------

/// Segment coding of one TotalSegmentator class.
///
/// Source of every row: TotalSegmentator's own mapping
/// `totalsegmentator/resources/totalsegmentator_snomed_mapping.csv`
/// (github.com/wasserth/TotalSegmentator, Apache-2.0; columns Structure,
/// SegmentedPropertyType…, SegmentedPropertyTypeModifier…, DicomRGBColor), taken verbatim
/// for the classes listed. Each type code was also looked up in pydicom 3.0.2's concept
/// dictionary: [`TotalSegmentatorClass::in_dicom_dictionary`] says whether it is there.
/// The category is not taken from that file: it uses (123037004, SCT, "Body structure"), a
/// code in no DICOM context group, so every row gets CID 7150 "Segmentation Property
/// Categories" (91723000, SCT, "Anatomical Structure") = [`ANATOMICAL_STRUCTURE`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotalSegmentatorClass {
    /// TotalSegmentator class name (the `Structure` column; label names in its NIfTI outputs).
    pub name: &'static str,
    /// SegmentedPropertyTypeCodeSequence (0062,000F).
    pub property_type: CodeConst,
    /// SegmentedPropertyTypeModifierCodeSequence (0062,0011): laterality, if any.
    pub type_modifier: Option<CodeConst>,
    /// Display colour, sRGB (the `DicomRGBColor` column).
    pub color_rgb: [u8; 3],
    /// `true` if the type code is in pydicom 3.0.2's SCT concept dictionary (DICOM PS3.16);
    /// `false`: only TotalSegmentator's mapping vouches for it.
    pub in_dicom_dictionary: bool,
}

/// Category of every [`TOTALSEGMENTATOR_CLASSES`] row (see [`TotalSegmentatorClass`]).
pub const TOTALSEGMENTATOR_CATEGORY: CodeConst = ANATOMICAL_STRUCTURE;

/// The TotalSegmentator classes this node can code (those of the `total` task found in the
/// project's test data; extend from the file cited on [`TotalSegmentatorClass`]).
pub const TOTALSEGMENTATOR_CLASSES: &[TotalSegmentatorClass] = &[
    TotalSegmentatorClass { name: "spleen", property_type: c("78961009", "SCT", "Spleen"), type_modifier: None, color_rgb: [50, 170, 60], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "liver", property_type: c("10200004", "SCT", "Liver"), type_modifier: None, color_rgb: [40, 140, 40], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "stomach", property_type: c("69695003", "SCT", "Stomach"), type_modifier: None, color_rgb: [180, 70, 160], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "pancreas", property_type: c("15776009", "SCT", "Pancreas"), type_modifier: None, color_rgb: [60, 150, 80], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "adrenal_gland_right", property_type: c("23451007", "SCT", "Adrenal gland"), type_modifier: Some(RIGHT), color_rgb: [178, 128, 26], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "colon", property_type: c("71854001", "SCT", "Colon"), type_modifier: None, color_rgb: [150, 40, 170], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "vertebrae_T12", property_type: c("23215003", "SCT", "T12 vertebra"), type_modifier: None, color_rgb: [69, 44, 9], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "vertebrae_T11", property_type: c("12989004", "SCT", "T11 vertebra"), type_modifier: None, color_rgb: [32, 7, 228], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "aorta", property_type: c("15825003", "SCT", "Aorta"), type_modifier: None, color_rgb: [216, 108, 54], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "inferior_vena_cava", property_type: c("64131007", "SCT", "Inferior vena cava"), type_modifier: None, color_rgb: [0, 70, 200], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "portal_vein_and_splenic_vein", property_type: c("110765007", "SCT", "Portal vein and splenic vein"), type_modifier: None, color_rgb: [0, 90, 220], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "humerus_left", property_type: c("85050009", "SCT", "Humerus"), type_modifier: Some(LEFT), color_rgb: [71, 62, 248], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "humerus_right", property_type: c("85050009", "SCT", "Humerus"), type_modifier: Some(RIGHT), color_rgb: [115, 46, 184], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "spinal_cord", property_type: c("2748008", "SCT", "Spinal cord"), type_modifier: None, color_rgb: [255, 215, 0], in_dicom_dictionary: true },
    TotalSegmentatorClass { name: "autochthon_left", property_type: c("244849004", "SCT", "Deep muscle of back"), type_modifier: Some(LEFT), color_rgb: [241, 126, 57], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "autochthon_right", property_type: c("244849004", "SCT", "Deep muscle of back"), type_modifier: Some(RIGHT), color_rgb: [178, 94, 42], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_left_6", property_type: c("59558009", "SCT", "Sixth rib"), type_modifier: Some(LEFT), color_rgb: [121, 216, 54], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_left_7", property_type: c("24915002", "SCT", "Seventh rib"), type_modifier: Some(LEFT), color_rgb: [149, 54, 216], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_left_8", property_type: c("5953002", "SCT", "Eighth rib"), type_modifier: Some(LEFT), color_rgb: [216, 81, 54], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_left_9", property_type: c("22565002", "SCT", "Ninth rib"), type_modifier: Some(LEFT), color_rgb: [216, 54, 167], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_left_10", property_type: c("77644006", "SCT", "Tenth rib"), type_modifier: Some(LEFT), color_rgb: [54, 146, 216], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_left_11", property_type: c("58830002", "SCT", "Eleventh rib"), type_modifier: Some(LEFT), color_rgb: [158, 253, 91], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_left_12", property_type: c("43993008", "SCT", "Twelfth rib"), type_modifier: Some(LEFT), color_rgb: [216, 54, 86], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_right_6", property_type: c("59558009", "SCT", "Sixth rib"), type_modifier: Some(RIGHT), color_rgb: [216, 54, 189], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_right_7", property_type: c("24915002", "SCT", "Seventh rib"), type_modifier: Some(RIGHT), color_rgb: [216, 54, 132], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_right_8", property_type: c("5953002", "SCT", "Eighth rib"), type_modifier: Some(RIGHT), color_rgb: [216, 203, 54], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_right_9", property_type: c("22565002", "SCT", "Ninth rib"), type_modifier: Some(RIGHT), color_rgb: [216, 197, 54], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_right_10", property_type: c("77644006", "SCT", "Tenth rib"), type_modifier: Some(RIGHT), color_rgb: [216, 159, 54], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_right_11", property_type: c("58830002", "SCT", "Eleventh rib"), type_modifier: Some(RIGHT), color_rgb: [54, 135, 216], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "rib_right_12", property_type: c("43993008", "SCT", "Twelfth rib"), type_modifier: Some(RIGHT), color_rgb: [181, 216, 54], in_dicom_dictionary: false },
    TotalSegmentatorClass { name: "costal_cartilages", property_type: c("50016007", "SCT", "Costal cartilage"), type_modifier: None, color_rgb: [250, 220, 190], in_dicom_dictionary: true },
];

/// The coding of TotalSegmentator class `name`, if this node knows it.
pub fn totalsegmentator_class(name: &str) -> Option<&'static TotalSegmentatorClass> {
    TOTALSEGMENTATOR_CLASSES.iter().find(|c| c.name == name)
}
