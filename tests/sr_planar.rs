//! Planar measurement report (`encode::sr_planar`): TID 1410 groups with the outline
//! of each segment on its key slice, checked structurally, then by dciodvfy, DCMTK
//! dsrdump and highdicom (an independent TID 1500 reader) on the written file.
//!
//! The external checks need `MYONODE_PYTHON` (default `<crate root>/.venv/bin/python`)
//! with pydicom + highdicom, `dciodvfy` beside it, and DCMTK `dsrdump` on PATH.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use ndarray::Array3;

use myonode::encode::codes;
use myonode::encode::sr::{SegReference, SrOptions};
use myonode::encode::sr_planar::{
    encode_planar_tid1500, planar_groups, PlanarSrError, AREA, IMAGE_REGION,
};
use myonode::pipeline::messages::{
    AlgorithmIdentification, Code, Findings, SegmentAlgorithmType, SegmentDescription,
    SegmentMeasurements, Segmentation, SeriesHeader, SideMeasurements, StudyJob,
};
use myonode::uid::new_uid;
use myonode::volume::{SliceRef, Volume};

const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
const SEG_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

fn header_dataset(study_uid: &str, series_uid: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::PATIENT_NAME, VR::PN, "Planar^Test"),
        (tags::PATIENT_ID, VR::LO, "P-7"),
        (tags::PATIENT_BIRTH_DATE, VR::DA, "19800101"),
        (tags::PATIENT_SEX, VR::CS, "F"),
        (tags::STUDY_INSTANCE_UID, VR::UI, study_uid),
        (tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
        (tags::STUDY_DATE, VR::DA, "20260101"),
        (tags::STUDY_TIME, VR::TM, "101500"),
        (tags::STUDY_ID, VR::SH, "S1"),
        (tags::ACCESSION_NUMBER, VR::SH, "ACC7"),
        (tags::MODALITY, VR::CS, "MR"),
        (tags::SERIES_NUMBER, VR::IS, "5"),
    ] {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    o
}

fn measured(label_value: u8, label: &str, centroid_slice: Option<usize>) -> SegmentMeasurements {
    SegmentMeasurements {
        label_value,
        label: label.into(),
        voxel_count: 10,
        volume_ml: 1.25,
        cross_sectional_area_cm2: vec![0.0; 3],
        max_cross_sectional_area_cm2: 1.0,
        centroid_slice,
        area_at_centroid_slice_cm2: 1.0,
        centroid_lps_mm: Some([1.0, 2.0, 3.0]),
        mean_intensity: 100.0,
        sd_intensity: 5.0,
        mean_attenuation_hu: None,
        fat_fraction_percent: None,
        left: SideMeasurements::default(),
        right: SideMeasurements::default(),
    }
}

/// An MR job, 3 slices of 8 rows × 10 columns, pixel spacing 0.5 mm (rows) × 0.25 mm
/// (columns). On slice 1: label 1 is a 4×5 ring around a 2×3 hole (rows 1..5, columns
/// 2..7) plus a stray pixel; label 2 is an L (rows 6..8, columns 0..3 without (6, 1..3)).
fn findings() -> Findings {
    let study_uid = new_uid();
    let series_uid = new_uid();
    let slices: Vec<SliceRef> = (0..3)
        .map(|_| SliceRef {
            sop_class_uid: MR_IMAGE_STORAGE.into(),
            sop_instance_uid: new_uid(),
            frame_number: None,
        })
        .collect();
    let volume = Volume {
        data: Array3::zeros((3, 8, 10)),
        spacing: [3.0, 0.5, 0.25],
        origin: [0.0, 0.0, 0.0],
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 1.0, 0.0],
        slice_direction: [0.0, 0.0, 1.0],
        slices,
    };
    let mut labels = Array3::<u8>::zeros((3, 8, 10));
    for r in 1..5 {
        for c in 2..7 {
            labels[[1, r, c]] = 1;
        }
    }
    for r in 2..4 {
        for c in 3..6 {
            labels[[1, r, c]] = 0;
        }
    }
    labels[[1, 0, 9]] = 1; // stray pixel: a separate, smaller region
    labels[[1, 6, 0]] = 2;
    labels[[1, 7, 0]] = 2;
    labels[[1, 7, 1]] = 2;
    labels[[1, 7, 2]] = 2;
    labels[[0, 3, 3]] = 2; // another slice: not the key slice
    let header = SeriesHeader {
        study_instance_uid: study_uid.clone(),
        series_instance_uid: series_uid.clone(),
        frame_of_reference_uid: new_uid(),
        modality: "MR".into(),
        dataset: Arc::new(header_dataset(&study_uid, &series_uid)),
    };
    let job = StudyJob {
        job_id: "job-planar".into(),
        version: 1,
        header,
        volume: Arc::new(volume),
        job_dir: PathBuf::from("/nonexistent"),
        channels: Vec::new(),
    };
    let segment = |label_value, label: &str| SegmentDescription {
        label_value,
        label: label.into(),
        category: Code::new("85756007", "SCT", "Tissue"),
        property_type: Code::new("127954009", "SCT", "Skeletal muscle"),
        type_modifier: None,
        anatomic_region: None,
        color_rgb: [255, 0, 0],
        algorithm_type: SegmentAlgorithmType::Automatic,
    };
    Findings {
        segmentation: Segmentation {
            job,
            labels: Arc::new(labels),
            segments: vec![
                segment(1, "Ring"),
                segment(2, "Ell"),
                segment(3, "Never measured"),
            ],
            algorithm: AlgorithmIdentification {
                family: Code::new("123110", "DCM", "Artificial Intelligence"),
                name: "test".into(),
                version: "0".into(),
            },
        },
        // Out of label order; label 3 has no key slice.
        measurements: vec![
            measured(2, "Ell", Some(1)),
            measured(1, "Ring", Some(1)),
            measured(3, "Never measured", None),
        ],
    }
}

fn seg_ref() -> SegReference {
    SegReference {
        sop_class_uid: SEG_STORAGE.into(),
        sop_instance_uid: new_uid(),
        series_instance_uid: new_uid(),
    }
}

fn opts() -> SrOptions {
    SrOptions {
        series_number: 1006,
        manufacturer: "myonode".into(),
        software_versions: "0.1.0".into(),
        institution_name: "Test Hospital".into(),
        device_observer_uid: new_uid(),
        device_observer_name: "MYONODE".into(),
    }
}

const RING_OUTLINE: [f32; 10] = [2.0, 1.0, 7.0, 1.0, 7.0, 5.0, 2.0, 5.0, 2.0, 1.0];
const ELL_OUTLINE: [f32; 14] = [
    0.0, 6.0, 1.0, 6.0, 1.0, 7.0, 3.0, 7.0, 3.0, 8.0, 0.0, 8.0, 0.0, 6.0,
];

#[test]
fn groups_are_outlines_on_the_key_slice_in_label_order() {
    let f = findings();
    let g = planar_groups(&f).unwrap();
    assert_eq!(g.len(), 2);
    assert_eq!((g[0].label.as_str(), g[0].slice), ("Ring", 1));
    assert_eq!(g[0].outline.graphic_data(), RING_OUTLINE);
    assert_eq!(g[0].outline.region_pixels, 14);
    assert_eq!(g[0].outline.enclosed_pixels, 20);
    // 20 px × 0.5 mm × 0.25 mm = 2.5 mm² = 0.025 cm²
    assert!((g[0].area_cm2 - 0.025).abs() < 1e-12);
    assert_eq!(g[1].label, "Ell");
    assert_eq!(g[1].outline.graphic_data(), ELL_OUTLINE);
    assert!((g[1].area_cm2 - 4.0 * 0.125 / 100.0).abs() < 1e-12);
}

fn items(o: &InMemDicomObject) -> Vec<InMemDicomObject> {
    o.element(tags::CONTENT_SEQUENCE)
        .ok()
        .and_then(|e| e.items().map(|i| i.to_vec()))
        .unwrap_or_default()
}

fn concept(o: &InMemDicomObject) -> String {
    let seq = o.element(tags::CONCEPT_NAME_CODE_SEQUENCE).unwrap();
    seq.items().unwrap()[0]
        .element(tags::CODE_VALUE)
        .unwrap()
        .to_str()
        .unwrap()
        .trim()
        .to_string()
}

fn text(o: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    o.element(tag).unwrap().to_str().unwrap().trim().to_string()
}

#[test]
fn document_has_tid1410_groups_with_polyline_selected_from_the_source_image() {
    let f = findings();
    let enc = encode_planar_tid1500(&f, &seg_ref(), &opts()).unwrap();
    assert_eq!(&enc.bytes[128..132], b"DICM");
    let obj = dicom_object::from_reader(&enc.bytes[128..]).unwrap();
    assert_eq!(text(&obj, tags::SOP_INSTANCE_UID), enc.sop_instance_uid);
    assert_eq!(
        text(&obj, tags::SERIES_DESCRIPTION),
        format!("Planar Measurement Report (result v{})", f.segmentation.job.version)
    );
    let root = items(&obj);
    let measurements: Vec<_> = root
        .iter()
        .filter(|c| concept(c) == codes::IMAGING_MEASUREMENTS.value)
        .collect();
    assert_eq!(measurements.len(), 1);
    let groups = items(measurements[0]);
    assert_eq!(groups.len(), 2);
    let key_slice = &f.segmentation.job.volume.slices[1].sop_instance_uid;
    for (group, (label, outline)) in groups
        .iter()
        .zip([("Ring", &RING_OUTLINE[..]), ("Ell", &ELL_OUTLINE[..])])
    {
        assert_eq!(concept(group), codes::MEASUREMENT_GROUP.value);
        let tpl = group
            .element(tags::CONTENT_TEMPLATE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .clone();
        assert_eq!(text(&tpl, tags::TEMPLATE_IDENTIFIER), "1410");
        let children = items(group);
        let by = |v: &str| {
            children
                .iter()
                .find(|c| concept(c) == v)
                .unwrap_or_else(|| panic!("no {v} in {label}"))
        };
        assert_eq!(
            text(by(codes::TRACKING_IDENTIFIER.value), tags::TEXT_VALUE),
            label
        );
        // No Referenced Segment: OHIF 3.13 fails on groups that reference SEG segments.
        assert!(children
            .iter()
            .all(|c| concept(c) != codes::REFERENCED_SEGMENT.value));
        let scoord = by(IMAGE_REGION.value);
        assert_eq!(text(scoord, tags::VALUE_TYPE), "SCOORD");
        assert_eq!(text(scoord, tags::GRAPHIC_TYPE), "POLYLINE");
        let data = scoord
            .element(tags::GRAPHIC_DATA)
            .unwrap()
            .to_multi_float32()
            .unwrap();
        assert_eq!(data, outline);
        let image = &items(scoord)[0];
        assert_eq!(text(image, tags::RELATIONSHIP_TYPE), "SELECTED FROM");
        let r = image
            .element(tags::REFERENCED_SOP_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .clone();
        assert_eq!(&text(&r, tags::REFERENCED_SOP_INSTANCE_UID), key_slice);
        let area = by(AREA.value);
        let mv = area
            .element(tags::MEASURED_VALUE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .clone();
        let value: f64 = text(&mv, tags::NUMERIC_VALUE).parse().unwrap();
        let expected = if label == "Ring" { 0.025 } else { 0.005 };
        assert!((value - expected).abs() < 1e-12, "{label}: area {value}");
    }
}

#[test]
fn nothing_to_report_is_a_typed_error() {
    let mut f = findings();
    for m in &mut f.measurements {
        m.centroid_slice = None;
    }
    assert!(matches!(
        encode_planar_tid1500(&f, &seg_ref(), &opts()),
        Err(PlanarSrError::NothingToReport)
    ));
}

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("MYONODE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    assert!(
        python.exists(),
        "Python {} not found: set MYONODE_PYTHON (pydicom, highdicom, dciodvfy)",
        python.display()
    );
    python
}

/// dciodvfy (no "Error" line), dsrdump (exit 0), and highdicom's TID 1500 parser reading
/// both planar groups with their polyline, source image and area.
#[test]
fn dciodvfy_dsrdump_and_highdicom_accept_the_planar_report() {
    let f = findings();
    let enc = encode_planar_tid1500(&f, &seg_ref(), &opts()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("planar.dcm");
    std::fs::write(&path, &enc.bytes).unwrap();
    let python = python();

    let dciodvfy = python.parent().unwrap().join("dciodvfy");
    let dciodvfy = if dciodvfy.exists() {
        dciodvfy
    } else {
        PathBuf::from("dciodvfy")
    };
    let out = Command::new(&dciodvfy)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run dciodvfy: {e}"));
    let report =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy errors:\n{report}");

    let out = Command::new("dsrdump")
        .args(["-v", "+Pt"])
        .arg(&path)
        .output()
        .expect("DCMTK dsrdump on PATH");
    let dump = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dsrdump failed:\n{dump}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dump.contains("SCOORD") && dump.contains("POLYLINE"),
        "{dump}"
    );

    let script = r#"
import sys, highdicom as hd
sr = hd.sr.srread(sys.argv[1])
report = hd.sr.MeasurementReport.from_sequence([sr], is_root=True)
groups = report.get_planar_roi_measurement_groups()
for g in groups:
    region = g.roi
    refs = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    m = g.get_measurements()[0]
    print(g.tracking_identifier, region.GraphicType, refs, m.name.value, m.value, m.unit.value)
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "highdicom could not read the planar report:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_slice = &f.segmentation.job.volume.slices[1].sop_instance_uid;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(
        lines[0],
        format!("Ring POLYLINE {key_slice} 42798000 0.025 cm2"),
        "{stdout}"
    );
    assert_eq!(
        lines[1],
        format!("Ell POLYLINE {key_slice} 42798000 0.005 cm2"),
        "{stdout}"
    );
}
