//! TID 1500 SR encoder: content-tree structure, and a full round trip through
//! `integration/check_sr.py` (dciodvfy, dsrdump, pydicom/highdicom).
//!
//! The round trip needs Python with pydicom + highdicom, found via `MYONODE_PYTHON`
//! (default `<crate root>/.venv/bin/python`), plus `dciodvfy` and `dsrdump`; it fails
//! with a clear message when any of them is missing.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use dicom_core::header::HasLength;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use ndarray::Array3;
use serde_json::json;

use myonode::encode::codes;
use myonode::encode::sr::{
    build_content_tree, encode_tid1500, ContentItem, ContentValue, Relationship, SegReference,
    SrOptions,
};
use myonode::pipeline::messages::{
    AlgorithmIdentification, Code, Findings, SegmentAlgorithmType, SegmentDescription,
    SegmentMeasurements, Segmentation, SeriesHeader, SideMeasurements, StudyJob,
};
use myonode::uid::new_uid;
use myonode::volume::{SliceRef, Volume};

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const SEG_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

fn header_dataset(study_uid: &str, series_uid: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    let s = |o: &mut InMemDicomObject, tag, vr, v: &str| {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    s(&mut o, tags::PATIENT_NAME, VR::PN, "Müller^Hans");
    s(&mut o, tags::PATIENT_ID, VR::LO, "P-0042");
    s(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, "19700101");
    s(&mut o, tags::PATIENT_SEX, VR::CS, "M");
    s(&mut o, tags::PATIENT_AGE, VR::AS, "056Y");
    s(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, study_uid);
    s(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    s(&mut o, tags::STUDY_DATE, VR::DA, "20260101");
    s(&mut o, tags::STUDY_TIME, VR::TM, "101500");
    s(&mut o, tags::STUDY_ID, VR::SH, "S1");
    s(&mut o, tags::ACCESSION_NUMBER, VR::SH, "ACC123");
    s(&mut o, tags::MODALITY, VR::CS, "CT");
    s(&mut o, tags::SERIES_NUMBER, VR::IS, "3");
    // ReferringPhysicianName deliberately absent: Type 2, must be written empty.
    o
}

fn measurements(
    label_value: u8,
    label: &str,
    volume_ml: f64,
    hu: Option<f64>,
) -> SegmentMeasurements {
    SegmentMeasurements {
        label_value,
        label: label.into(),
        voxel_count: 10,
        volume_ml,
        cross_sectional_area_cm2: vec![0.0, 1.5, 0.0],
        max_cross_sectional_area_cm2: 1.5,
        centroid_slice: Some(1),
        area_at_centroid_slice_cm2: 1.5,
        centroid_lps_mm: Some([1.0, 2.0, 3.0]),
        mean_intensity: hu.unwrap_or(100.0),
        sd_intensity: 5.0,
        mean_attenuation_hu: hu,
        fat_fraction_percent: None,
        left: SideMeasurements::default(),
        right: SideMeasurements::default(),
    }
}

/// A CT job with three segment descriptions (labels 1, 2, 3); measurements exist for
/// labels 3 and 1 only (given out of order), so the SR has two groups referencing SEG
/// segments 1 and 3.
fn findings(modality: &str) -> Findings {
    let study_uid = new_uid();
    let series_uid = new_uid();
    let slices: Vec<SliceRef> = (0..3)
        .map(|_| SliceRef {
            sop_class_uid: CT_IMAGE_STORAGE.into(),
            sop_instance_uid: new_uid(),
            frame_number: None,
        })
        .collect();
    let volume = Volume {
        data: Array3::zeros((3, 4, 4)),
        spacing: [2.0, 0.5, 0.5],
        origin: [0.0, 0.0, 0.0],
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 1.0, 0.0],
        slice_direction: [0.0, 0.0, 1.0],
        slices,
    };
    let header = SeriesHeader {
        study_instance_uid: study_uid.clone(),
        series_instance_uid: series_uid.clone(),
        frame_of_reference_uid: new_uid(),
        modality: modality.into(),
        dataset: Arc::new(header_dataset(&study_uid, &series_uid)),
    };
    let job = StudyJob {
        job_id: "job-1".into(),
        version: 1,
        header,
        volume: Arc::new(volume),
        job_dir: PathBuf::from("/nonexistent"),
        channels: Vec::new(),
    };
    let segment = |label_value, label: &str, category: Code, ptype: Code, modifier, region| {
        SegmentDescription {
            label_value,
            label: label.into(),
            category,
            property_type: ptype,
            type_modifier: modifier,
            anatomic_region: region,
            color_rgb: [255, 0, 0],
            algorithm_type: SegmentAlgorithmType::Automatic,
        }
    };
    let segments = vec![
        // Anatomical-structure category with an explicit anatomic region and Right laterality.
        segment(
            3,
            "Right thigh muscles",
            codes::ANATOMICAL_STRUCTURE.code(),
            Code::new("102292000", "SCT", "Muscle of lower limb"),
            Some(codes::RIGHT.code()),
            Some(Code::new("68367000", "SCT", "Thigh")),
        ),
        // Tissue category without a region: no finding site, hence no laterality item.
        segment(
            1,
            "Left skeletal muscle",
            Code::new("85756007", "SCT", "Tissue"),
            Code::new("127954009", "SCT", "Skeletal muscle"),
            Some(codes::LEFT.code()),
            None,
        ),
        // No measurements for this one: it must be skipped but still count in SEG numbering.
        segment(
            2,
            "Unmeasured",
            Code::new("85756007", "SCT", "Tissue"),
            Code::new("127954009", "SCT", "Skeletal muscle"),
            None,
            None,
        ),
    ];
    let segmentation = Segmentation {
        job,
        labels: Arc::new(Array3::zeros((3, 4, 4))),
        segments,
        algorithm: AlgorithmIdentification {
            family: Code::new("123110", "DCM", "Artificial Intelligence"),
            name: "test".into(),
            version: "0".into(),
        },
    };
    let is_ct = modality == "CT";
    Findings {
        segmentation,
        measurements: vec![
            measurements(
                3,
                "Right thigh muscles",
                123.45678901234568,
                is_ct.then_some(45.5),
            ),
            measurements(
                1,
                "Left skeletal muscle",
                0.001953125,
                is_ct.then_some(-87.12345678901235),
            ),
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
        series_number: 1003,
        manufacturer: "myonode".into(),
        software_versions: "0.1.0".into(),
        institution_name: "Test Hospital".into(),
        device_observer_uid: new_uid(),
        device_observer_name: "MYONODE".into(),
    }
}

fn code_of(item: &ContentItem) -> &Code {
    match &item.value {
        ContentValue::Code(c) => c,
        other => panic!("expected a CODE item, got {other:?}"),
    }
}

fn one<'a>(parent: &'a ContentItem, name: &codes::CodeConst) -> &'a ContentItem {
    let found: Vec<_> = parent.children_named(name).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {:?} under {:?}",
        name.meaning,
        parent.concept_name
    );
    found[0]
}

#[test]
fn tree_has_tid1500_header_and_groups_in_segment_order() {
    let f = findings("CT");
    let seg = seg_ref();
    let o = opts();
    let root = build_content_tree(&f, &seg, &o).unwrap();
    assert_eq!(root.relationship, None);
    assert!(codes::IMAGING_MEASUREMENT_REPORT.matches(root.concept_name.as_ref().unwrap()));
    assert_eq!(
        root.value,
        ContentValue::Container {
            template: Some("1500")
        }
    );

    let lang = one(&root, &codes::LANGUAGE_OF_CONTENT);
    assert_eq!(lang.relationship, Some(Relationship::HasConceptMod));
    assert!(codes::LANGUAGE_EN_US.matches(code_of(lang)));
    let obs = one(&root, &codes::OBSERVER_TYPE);
    assert_eq!(obs.relationship, Some(Relationship::HasObsContext));
    assert!(codes::DEVICE.matches(code_of(obs)));
    assert_eq!(
        one(&root, &codes::DEVICE_OBSERVER_UID).value,
        ContentValue::UidRef(o.device_observer_uid.clone())
    );
    assert_eq!(
        one(&root, &codes::DEVICE_OBSERVER_NAME).value,
        ContentValue::Text("MYONODE".into())
    );
    let proc_ = one(&root, &codes::PROCEDURE_REPORTED);
    assert!(codes::CT_UNSPECIFIED_BODY_REGION.matches(code_of(proc_)));

    let library = one(&root, &codes::IMAGE_LIBRARY);
    let group = one(library, &codes::IMAGE_LIBRARY_GROUP);
    assert_eq!(group.children.len(), 3);
    let first_slice = &f.segmentation.job.volume.slices[0];
    assert!(matches!(&group.children[0].value,
        ContentValue::Image { sop_instance_uid, segment_number: None, .. } if *sop_instance_uid == first_slice.sop_instance_uid));

    let im = one(&root, &codes::IMAGING_MEASUREMENTS);
    let groups: Vec<_> = im.children_named(&codes::MEASUREMENT_GROUP).collect();
    assert_eq!(groups.len(), 2, "label 2 has no measurements");
    for g in &groups {
        assert_eq!(
            g.value,
            ContentValue::Container {
                template: Some("1411")
            }
        );
        assert_eq!(g.relationship, Some(Relationship::Contains));
    }

    // Group 1: label 1 → SEG segment 1, tissue category: no finding site.
    let g1 = groups[0];
    assert_eq!(
        one(g1, &codes::TRACKING_IDENTIFIER).value,
        ContentValue::Text("Left skeletal muscle".into())
    );
    assert_eq!(
        one(g1, &codes::FINDING).value,
        ContentValue::Code(Code::new("127954009", "SCT", "Skeletal muscle"))
    );
    assert_eq!(g1.children_named(&codes::FINDING_SITE).count(), 0);
    let r1 = one(g1, &codes::REFERENCED_SEGMENT);
    assert_eq!(
        r1.value,
        ContentValue::Image {
            sop_class_uid: SEG_STORAGE.into(),
            sop_instance_uid: seg.sop_instance_uid.clone(),
            segment_number: Some(1),
            frame_number: None
        }
    );
    assert_eq!(
        one(g1, &codes::SOURCE_SERIES_FOR_SEGMENTATION).value,
        ContentValue::UidRef(f.segmentation.job.header.series_instance_uid.clone())
    );
    let vol = one(g1, &codes::VOLUME);
    assert_eq!(
        vol.value,
        ContentValue::Num {
            value: 0.001953125,
            unit: codes::UNIT_CUBIC_CENTIMETER.code()
        }
    );
    let att = one(g1, &codes::ATTENUATION_COEFFICIENT);
    assert_eq!(
        att.value,
        ContentValue::Num {
            value: -87.12345678901235,
            unit: codes::UNIT_HOUNSFIELD.code()
        }
    );
    let der = one(att, &codes::DERIVATION);
    assert_eq!(der.relationship, Some(Relationship::HasConceptMod));
    assert!(codes::MEAN.matches(code_of(der)));

    // Group 2: label 3 → SEG segment 3, Thigh with Right laterality.
    let g2 = groups[1];
    let site = one(g2, &codes::FINDING_SITE);
    assert_eq!(site.relationship, Some(Relationship::HasConceptMod));
    assert_eq!(code_of(site), &Code::new("68367000", "SCT", "Thigh"));
    assert!(codes::RIGHT.matches(code_of(one(site, &codes::LATERALITY))));
    assert!(matches!(
        one(g2, &codes::REFERENCED_SEGMENT).value,
        ContentValue::Image {
            segment_number: Some(3),
            ..
        }
    ));
    // Tracking UIDs differ per group.
    assert_ne!(
        one(g1, &codes::TRACKING_UNIQUE_IDENTIFIER).value,
        one(g2, &codes::TRACKING_UNIQUE_IDENTIFIER).value
    );
}

#[test]
fn mr_report_has_no_attenuation_and_mr_procedure() {
    let f = findings("MR");
    let root = build_content_tree(&f, &seg_ref(), &opts()).unwrap();
    assert!(
        codes::MRI_UNSPECIFIED_BODY_REGION.matches(code_of(one(&root, &codes::PROCEDURE_REPORTED)))
    );
    let im = one(&root, &codes::IMAGING_MEASUREMENTS);
    for g in im.children_named(&codes::MEASUREMENT_GROUP) {
        assert_eq!(g.children_named(&codes::ATTENUATION_COEFFICIENT).count(), 0);
        assert_eq!(g.children_named(&codes::VOLUME).count(), 1);
    }
}

#[test]
fn measurement_for_unknown_label_is_an_error() {
    let mut f = findings("CT");
    f.measurements.push(measurements(9, "ghost", 1.0, None));
    let err = build_content_tree(&f, &seg_ref(), &opts()).unwrap_err();
    assert!(
        matches!(
            err,
            myonode::encode::sr::SrError::UnknownLabel { label_value: 9, .. }
        ),
        "{err}"
    );
}

#[test]
fn invalid_seg_uid_is_rejected() {
    let mut seg = seg_ref();
    seg.sop_instance_uid = "1.2.abc".into();
    let err = match encode_tid1500(&findings("CT"), &seg, &opts()) {
        Ok(_) => panic!("an invalid SEG SOPInstanceUID was accepted"),
        Err(e) => e,
    };
    assert!(
        matches!(err, myonode::encode::sr::SrError::InvalidUid { .. }),
        "{err}"
    );
}

#[test]
fn encoded_file_reads_back_with_dicom_rs() {
    let f = findings("CT");
    let seg = seg_ref();
    let enc = encode_tid1500(&f, &seg, &opts()).unwrap();
    assert_eq!(enc.sop_class_uid, "1.2.840.10008.5.1.4.1.1.88.34");
    let obj = dicom_object::from_reader(&enc.bytes[128..]).expect("SR parses");
    let s = |tag| {
        obj.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .trim()
            .to_string()
    };
    assert_eq!(
        obj.meta().transfer_syntax().trim_end_matches('\0'),
        "1.2.840.10008.1.2.1"
    );
    assert_eq!(s(tags::SOP_INSTANCE_UID), enc.sop_instance_uid);
    assert_eq!(s(tags::SERIES_INSTANCE_UID), enc.series_instance_uid);
    assert_ne!(
        enc.series_instance_uid,
        f.segmentation.job.header.series_instance_uid
    );
    assert_eq!(
        s(tags::STUDY_INSTANCE_UID),
        f.segmentation.job.header.study_instance_uid
    );
    assert_eq!(s(tags::PATIENT_NAME), "Müller^Hans");
    assert_eq!(s(tags::MODALITY), "SR");
    assert_eq!(s(tags::SERIES_NUMBER), "1003");
    assert_eq!(s(tags::VALUE_TYPE), "CONTAINER");
    assert!(obj
        .element(tags::REFERRING_PHYSICIAN_NAME)
        .unwrap()
        .is_empty());
}

fn code_json(c: &Code) -> serde_json::Value {
    json!({"value": c.value, "scheme": c.scheme})
}

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("MYONODE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    assert!(
        python.exists(),
        "Python interpreter {} not found: set MYONODE_PYTHON to a Python with pydicom + highdicom \
         (and dciodvfy beside it or on PATH; DCMTK dsrdump on PATH)",
        python.display()
    );
    python
}

/// EXPECT.json for [`findings`]`("CT")` encoded against `seg` (see `integration/check_sr.py`).
fn expectation(f: &Findings, seg: &SegReference) -> serde_json::Value {
    let by_label = |lv: u8| {
        f.segmentation
            .segments
            .iter()
            .find(|s| s.label_value == lv)
            .unwrap()
    };
    let meas = |lv: u8| f.measurements.iter().find(|m| m.label_value == lv).unwrap();
    let group = |lv: u8, segment_number: u16, site: Option<Code>, laterality: Option<Code>| {
        let d = by_label(lv);
        let m = meas(lv);
        json!({
            "label": d.label,
            "segment_number": segment_number,
            "seg_sop_class_uid": seg.sop_class_uid,
            "seg_sop_instance_uid": seg.sop_instance_uid,
            "finding": code_json(&d.property_type),
            "finding_site": site.as_ref().map(code_json),
            "laterality": laterality.as_ref().map(code_json),
            "measurements": [
                {"concept": code_json(&codes::VOLUME.code()),
                 "unit": code_json(&codes::UNIT_CUBIC_CENTIMETER.code()),
                 "value": m.volume_ml, "derivation": null},
                {"concept": code_json(&codes::ATTENUATION_COEFFICIENT.code()),
                 "unit": code_json(&codes::UNIT_HOUNSFIELD.code()),
                 "value": m.mean_attenuation_hu.unwrap(),
                 "derivation": code_json(&codes::MEAN.code())},
            ],
        })
    };
    json!({
        "study_instance_uid": f.segmentation.job.header.study_instance_uid,
        "source_series_instance_uid": f.segmentation.job.header.series_instance_uid,
        "patient_name": "Müller^Hans",
        "procedure_reported": code_json(&codes::CT_UNSPECIFIED_BODY_REGION.code()),
        "segments": [
            group(1, 1, None, None),
            group(3, 3, Some(Code::new("68367000", "SCT", "Thigh")), Some(codes::RIGHT.code())),
        ],
    })
}

/// Write `sr_bytes` and `expect`, run check_sr.py; returns (success, stdout, stderr).
fn run_check_sr(sr_bytes: &[u8], expect: &serde_json::Value) -> (bool, String, String) {
    let python = python();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let sr_path = dir.path().join("sr.dcm");
    std::fs::write(&sr_path, sr_bytes).unwrap();
    if let Some(keep) = std::env::var_os("MYONODE_KEEP_SR") {
        std::fs::copy(&sr_path, keep).unwrap();
    }
    let expect_path = dir.path().join("EXPECT.json");
    std::fs::write(&expect_path, serde_json::to_vec_pretty(expect).unwrap()).unwrap();
    let out = Command::new(&python)
        .arg(root.join("integration/check_sr.py"))
        .arg(&sr_path)
        .arg("--expect")
        .arg(&expect_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code() != Some(2),
        "check_sr.py could not run (missing tool or package):\n{stdout}\n{stderr}"
    );
    (out.status.success(), stdout, stderr)
}

#[test]
fn roundtrip_through_dciodvfy_dsrdump_and_highdicom() {
    let f = findings("CT");
    let seg = seg_ref();
    let enc = encode_tid1500(&f, &seg, &opts()).unwrap();
    let (ok, stdout, stderr) = run_check_sr(&enc.bytes, &expectation(&f, &seg));
    println!("{stdout}");
    assert!(ok, "check_sr.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("dciodvfy: no errors"), "{stdout}");
    assert!(
        stdout.contains("check_sr: OK (2 measurement groups)"),
        "{stdout}"
    );
}

/// A report that references a LABELMAP SEG (Label Map Segmentation Storage, Sup 243): same
/// segment numbers, the referenced SOP class is the LABELMAP one; dsrdump and highdicom
/// accept it, and dciodvfy reports nothing but its known limitation (it does not count
/// LABELMAP as a segmentation for ReferencedSegmentNumber; see check_sr.py).
#[test]
fn report_referencing_a_labelmap_seg_round_trips() {
    let f = findings("CT");
    let mut seg = seg_ref();
    seg.sop_class_uid = myonode::encode::LABEL_MAP_SEGMENTATION_STORAGE.into();
    let enc = encode_tid1500(&f, &seg, &opts()).unwrap();
    let (ok, stdout, stderr) = run_check_sr(&enc.bytes, &expectation(&f, &seg));
    println!("{stdout}");
    assert!(ok, "check_sr.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("dciodvfy: no errors"), "{stdout}");
    assert!(stdout.contains("check_sr: OK (2 measurement groups)"), "{stdout}");
}

#[test]
fn check_sr_rejects_a_wrong_segment_number_and_value() {
    let f = findings("CT");
    let seg = seg_ref();
    let enc = encode_tid1500(&f, &seg, &opts()).unwrap();

    let mut wrong_number = expectation(&f, &seg);
    wrong_number["segments"][1]["segment_number"] = json!(2);
    let (ok, _, stderr) = run_check_sr(&enc.bytes, &wrong_number);
    assert!(
        !ok && stderr.contains("referenced segment numbers"),
        "{stderr}"
    );

    let mut wrong_value = expectation(&f, &seg);
    wrong_value["segments"][0]["measurements"][1]["value"] = json!(-87.1234);
    let (ok, _, stderr) = run_check_sr(&enc.bytes, &wrong_value);
    assert!(!ok && stderr.contains("NumericValue"), "{stderr}");
}

/// The report for a real CT series (shared test data `series/ct-abdomen-j2k`): its first
/// instance's header supplies the Patient / Study attributes (ISO_IR 100 source, written as
/// UTF-8), all 20 instances go into the image library and the evidence. Measurements are
/// the synthetic ones of [`findings`]. Skips with a message when the data set is absent.
#[test]
fn real_ct_header_roundtrip() {
    let data = std::env::var_os("MYONODE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let dir = data.join("series/ct-abdomen-j2k");
    if !dir.is_dir() {
        eprintln!(
            "SKIPPED real_ct_header_roundtrip: {} not found (set MYONODE_DATA)",
            dir.display()
        );
        return;
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert_eq!(
        paths.len(),
        20,
        "expected the 20 slices described in the data README"
    );
    let mut header: Option<InMemDicomObject> = None;
    let mut slices = Vec::new();
    for p in &paths {
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let s = |tag| {
            obj.element(tag)
                .unwrap()
                .to_str()
                .unwrap()
                .trim()
                .to_string()
        };
        slices.push(SliceRef {
            sop_class_uid: s(tags::SOP_CLASS_UID),
            sop_instance_uid: s(tags::SOP_INSTANCE_UID),
            frame_number: None,
        });
        if header.is_none() {
            header = Some(obj.into_inner());
        }
    }
    let header = header.unwrap();
    let s = |tag| {
        header
            .element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_string()
    };
    let patient_name = s(tags::PATIENT_NAME);

    let mut f = findings("CT");
    let job = &mut f.segmentation.job;
    job.header.study_instance_uid = s(tags::STUDY_INSTANCE_UID);
    job.header.series_instance_uid = s(tags::SERIES_INSTANCE_UID);
    let mut volume = (*job.volume).clone();
    volume.slices = slices;
    job.volume = Arc::new(volume);
    job.header.dataset = Arc::new(header);

    let seg = seg_ref();
    let enc = encode_tid1500(&f, &seg, &opts()).unwrap();
    let mut expect = expectation(&f, &seg);
    expect["patient_name"] = json!(patient_name);
    let (ok, stdout, stderr) = run_check_sr(&enc.bytes, &expect);
    assert!(ok, "check_sr.py failed:\n{stdout}\n{stderr}");

    let obj = dicom_object::from_reader(&enc.bytes[128..]).unwrap();
    let evidence = obj
        .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let series = evidence[0]
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let counts: Vec<usize> = series
        .iter()
        .map(|s| {
            s.element(tags::REFERENCED_SOP_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(
        counts,
        vec![1, 20],
        "SEG series with 1 instance, source series with 20"
    );
}
