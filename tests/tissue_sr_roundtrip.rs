//! SR round trip of the tissue-composition measurements: a Dixon MR phantom (two legs,
//! water/fat channels) labelled by `dixon-composition-mr`, and a CT limb phantom labelled by
//! `tissue-composition-ct`, are measured (measurements.json), encoded as TID 1500 and read back
//! by `integration/check_sr.py` (dciodvfy, dsrdump, pydicom/highdicom): every volume, mean
//! attenuation and fat fraction in the SR equals the JSON number (to DS precision); FF with
//! concept Fat fraction (129100, DCM), unit `%` (UCUM), derivation Mean.
//!
//! Needs Python with pydicom + highdicom (`MYONODE_PYTHON`, default `<crate>/.venv/bin/python`),
//! dciodvfy and dsrdump; fails with a clear message when they are missing.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use ndarray::Array3;
use serde_json::json;

use myonode::encode::codes;
use myonode::encode::sr::{encode_tid1500, SegReference, SrOptions};
use myonode::measure::measure_job;
use myonode::pipeline::messages::{
    Channel, ChannelKind, Code, Findings, SegmentMeasurements, SeriesHeader, StudyJob,
};
use myonode::segment::segment_job;
use myonode::segment::tissue_ct::TissueCt;
use myonode::segment::tissue_mr::TissueMr;
use myonode::uid::new_uid;
use myonode::volume::{SliceRef, Volume};

const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
const SEG_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

fn code_json(c: &Code) -> serde_json::Value {
    json!({"value": c.value, "scheme": c.scheme})
}

/// Two legs (muscle FF 6 % and 20 %, fat ring FF 90 %) on a 3 × 120 × 220 grid, 1 mm pixels.
fn dixon_job(dir: &std::path::Path) -> StudyJob {
    let (nz, ny, nx) = (3, 120, 220);
    let ff_at = |y: usize, x: usize| -> Option<f32> {
        [(55.0, 0.06f32), (165.0, 0.20f32)]
            .iter()
            .find_map(|&(cx, ffm)| {
                let r = ((x as f64 - cx).powi(2) + (y as f64 - 60.0).powi(2)).sqrt();
                (r < 40.0).then_some(if r < 30.0 { ffm } else { 0.90 })
            })
    };
    let w = Array3::from_shape_fn((nz, ny, nx), |(_, y, x)| {
        ff_at(y, x).map_or(0.0, |ff| 800.0 * (1.0 - ff))
    });
    let f = Array3::from_shape_fn((nz, ny, nx), |(_, y, x)| {
        ff_at(y, x).map_or(0.0, |ff| 800.0 * ff)
    });
    let slices: Vec<SliceRef> = (0..nz)
        .map(|_| SliceRef {
            sop_class_uid: MR_IMAGE_STORAGE.into(),
            sop_instance_uid: new_uid(),
            frame_number: None,
        })
        .collect();
    let vol = |data: Array3<f32>| Volume {
        data,
        spacing: [5.0, 1.0, 1.0],
        origin: [-110.0, -60.0, 0.0],
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 1.0, 0.0],
        slice_direction: [0.0, 0.0, 1.0],
        slices: slices.clone(),
    };
    let (study, series) = (new_uid(), new_uid());
    let mut ds = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::PATIENT_NAME, VR::PN, "Phantom^Dixon"),
        (tags::PATIENT_ID, VR::LO, "PH-1"),
        (tags::STUDY_INSTANCE_UID, VR::UI, study.as_str()),
        (tags::SERIES_INSTANCE_UID, VR::UI, series.as_str()),
        (tags::STUDY_DATE, VR::DA, "20260101"),
        (tags::STUDY_TIME, VR::TM, "120000"),
        (tags::MODALITY, VR::CS, "MR"),
        (tags::BODY_PART_EXAMINED, VR::CS, "THIGH"),
    ] {
        ds.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    let header = SeriesHeader {
        study_instance_uid: study,
        series_instance_uid: series,
        frame_of_reference_uid: new_uid(),
        modality: "MR".into(),
        dataset: Arc::new(ds),
    };
    let channel = |kind, data| Channel {
        kind,
        header: header.clone(),
        volume: Arc::new(vol(data)),
    };
    StudyJob {
        job_id: "dixon-sr".into(),
        version: 1,
        header: header.clone(),
        volume: Arc::new(vol(&w + &f)),
        job_dir: dir.to_path_buf(),
        channels: vec![channel(ChannelKind::Water, w), channel(ChannelKind::Fat, f)],
    }
}

/// Encode `findings` as TID 1500 and check with `integration/check_sr.py` that every group's
/// measurements equal `json_numbers` (read from measurements.json): volume (cm³), mean
/// attenuation (HU, CT only) and fat fraction (%, when present), in that order.
fn check_sr_against_json(
    findings: &Findings,
    json_numbers: &[SegmentMeasurements],
    patient_name: &str,
) {
    let seg_ref = SegReference {
        sop_class_uid: SEG_STORAGE.into(),
        sop_instance_uid: new_uid(),
        series_instance_uid: new_uid(),
    };
    let opts = SrOptions {
        series_number: 1003,
        manufacturer: "myonode".into(),
        software_versions: "0.1.0".into(),
        institution_name: String::new(),
        device_observer_uid: new_uid(),
        device_observer_name: "MYONODE".into(),
    };
    let enc = encode_tid1500(findings, &seg_ref, &opts).unwrap();
    let header = &findings.segmentation.job.header;
    let segments = &findings.segmentation.segments;
    let expect = json!({
        "study_instance_uid": header.study_instance_uid,
        "source_series_instance_uid": header.series_instance_uid,
        "patient_name": patient_name,
        "procedure_reported": code_json(&codes::procedure_reported_for_modality(&header.modality).code()),
        "segments": json_numbers.iter().map(|m| {
            let d = segments.iter().find(|s| s.label_value == m.label_value).unwrap();
            let mut measurements = vec![json!({
                "concept": code_json(&codes::VOLUME.code()),
                "unit": code_json(&codes::UNIT_CUBIC_CENTIMETER.code()),
                "value": m.volume_ml, "derivation": null})];
            if let Some(hu) = m.mean_attenuation_hu {
                measurements.push(json!({
                    "concept": code_json(&codes::ATTENUATION_COEFFICIENT.code()),
                    "unit": code_json(&codes::UNIT_HOUNSFIELD.code()),
                    "value": hu, "derivation": code_json(&codes::MEAN.code())}));
            }
            if let Some(ff) = m.fat_fraction_percent {
                measurements.push(json!({
                    "concept": {"value": "129100", "scheme": "DCM"},
                    "unit": {"value": "%", "scheme": "UCUM"},
                    "value": ff, "derivation": code_json(&codes::MEAN.code())}));
            }
            json!({
                "label": d.label,
                "segment_number": m.label_value,
                "seg_sop_class_uid": seg_ref.sop_class_uid,
                "seg_sop_instance_uid": seg_ref.sop_instance_uid,
                "finding": code_json(&d.property_type),
                "finding_site": null,
                "laterality": null,
                "measurements": measurements,
            })
        }).collect::<Vec<_>>(),
    });

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("MYONODE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    assert!(
        python.exists(),
        "Python {} not found: set MYONODE_PYTHON (pydicom + highdicom)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let sr_path = dir.path().join("sr.dcm");
    std::fs::write(&sr_path, &enc.bytes).unwrap();
    let expect_path = dir.path().join("EXPECT.json");
    std::fs::write(&expect_path, serde_json::to_vec_pretty(&expect).unwrap()).unwrap();
    let out = Command::new(&python)
        .arg(root.join("integration/check_sr.py"))
        .arg(&sr_path)
        .arg("--expect")
        .arg(&expect_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_ne!(
        out.status.code(),
        Some(2),
        "check_sr.py could not run:\n{stdout}\n{stderr}"
    );
    assert!(
        out.status.success(),
        "check_sr.py failed:\n{stdout}\n{stderr}"
    );
}

fn read_json(dir: &std::path::Path) -> Vec<SegmentMeasurements> {
    serde_json::from_slice(&std::fs::read(dir.join("measurements.json")).unwrap()).unwrap()
}

#[test]
fn fat_fraction_and_volume_read_back_from_the_sr_equal_the_json() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment_job(&mut TissueMr::new(), dixon_job(dir.path())).unwrap();
    let findings = measure_job(seg);
    let json_numbers = read_json(dir.path());
    assert_eq!(json_numbers.len(), 2);
    assert!(json_numbers
        .iter()
        .all(|m| m.fat_fraction_percent.is_some()));
    check_sr_against_json(&findings, &json_numbers, "Phantom^Dixon");
    // the phantom's truth, as a sanity check of the numbers that went through
    let muscle = &json_numbers[0];
    assert!((muscle.left.fat_fraction_percent.unwrap() - 20.0).abs() < 0.01);
    assert!((muscle.right.fat_fraction_percent.unwrap() - 6.0).abs() < 0.01);
}

#[test]
fn ct_tissue_volume_and_attenuation_read_back_from_the_sr_equal_the_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = dixon_job(dir.path());
    // a CT limb: bone 900 HU core, muscle 50 HU, fat −90 HU ring, air −1000 HU (same geometry)
    let ff = job.channel(ChannelKind::Fat).unwrap().volume.data.clone();
    let w = job.channel(ChannelKind::Water).unwrap().volume.data.clone();
    let hu = ndarray::Zip::indexed(&w)
        .and(&ff)
        .map_collect(|(_, y, x), &w, &f| {
            let centre = [(55.0, 60.0), (165.0, 60.0)]
                .iter()
                .any(|&(cx, cy): &(f64, f64)| {
                    ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt() < 6.0
                });
            if w + f <= 0.0 {
                -1000.0
            } else if centre {
                900.0
            } else if f / (w + f) > 0.5 {
                -90.0
            } else {
                50.0
            }
        });
    let mut volume = (*job.volume).clone();
    volume.data = hu;
    job.volume = Arc::new(volume);
    job.channels.clear();
    let mut ds = (*job.header.dataset).clone();
    ds.put(DataElement::new(
        tags::MODALITY,
        VR::CS,
        PrimitiveValue::from("CT"),
    ));
    job.header.dataset = Arc::new(ds);
    job.header.modality = "CT".into();
    let seg = segment_job(&mut TissueCt::default(), job).unwrap();
    let findings = measure_job(seg);
    let json_numbers = read_json(dir.path());
    assert_eq!(json_numbers.len(), 3);
    assert!(json_numbers
        .iter()
        .all(|m| m.mean_attenuation_hu.is_some() && m.fat_fraction_percent.is_none()));
    check_sr_against_json(&findings, &json_numbers, "Phantom^Dixon");
}
