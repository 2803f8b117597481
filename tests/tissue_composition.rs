//! Built-in tissue-composition analyses and fat-fraction measurement on phantoms built in
//! code with known geometry, attenuation and fat fraction:
//! * `tissue-composition-ct`: a limb cross-section (bone core, muscle ring, fat ring in air):
//!   per-class area (cm²) and volume (mL) within 1 % of the analytic values; anatomical scope;
//! * `dixon-composition-mr`: two legs with different muscle fat fractions, water/fat channels:
//!   areas within 1 %, mean FF per segment and per side within 0.5 percentage points;
//! * the same legs as one fat-bright image (no Dixon): intensity model, marked lower confidence.

use std::f64::consts::PI;
use std::path::Path;
use std::sync::Arc;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use ndarray::Array3;

use myonode::measure::{measure, write_measurements};
use myonode::pipeline::messages::{
    Channel, ChannelKind, SegmentMeasurements, SeriesHeader, StudyJob,
};
use myonode::segment::tissue_ct::{TissueCt, ADIPOSE_LABEL, BONE_LABEL, MUSCLE_LABEL};
use myonode::segment::tissue_mr::{TissueMr, MODEL_FILE};
use myonode::segment::{create_analysis, segment_job, Analysis, SegmentError, BUILTIN_ANALYSES};
use myonode::volume::Volume;

fn volume(data: Array3<f32>, spacing: [f64; 3], origin: [f64; 3]) -> Volume {
    Volume {
        data,
        spacing,
        origin,
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 1.0, 0.0],
        slice_direction: [0.0, 0.0, 1.0],
        slices: vec![],
    }
}

fn header(modality: &str, body_part: Option<&str>) -> SeriesHeader {
    let mut ds = InMemDicomObject::new_empty();
    ds.put(DataElement::new(
        tags::MODALITY,
        VR::CS,
        PrimitiveValue::from(modality),
    ));
    if let Some(bp) = body_part {
        ds.put(DataElement::new(
            tags::BODY_PART_EXAMINED,
            VR::CS,
            PrimitiveValue::from(bp),
        ));
    }
    SeriesHeader {
        study_instance_uid: "1.2.3".into(),
        series_instance_uid: "1.2.3.4".into(),
        frame_of_reference_uid: "1.2.3.5".into(),
        modality: modality.into(),
        dataset: Arc::new(ds),
    }
}

fn job(
    modality: &str,
    body_part: Option<&str>,
    vol: Volume,
    dir: &Path,
    channels: Vec<(ChannelKind, Volume)>,
) -> StudyJob {
    let h = header(modality, body_part);
    StudyJob {
        job_id: "phantom".into(),
        version: 1,
        header: h.clone(),
        volume: Arc::new(vol),
        job_dir: dir.to_path_buf(),
        channels: channels
            .into_iter()
            .map(|(kind, v)| Channel {
                kind,
                header: h.clone(),
                volume: Arc::new(v),
            })
            .collect(),
    }
}

/// Deterministic zero-mean pseudo-noise in [-1, 1] for voxel (z, y, x).
fn noise(z: usize, y: usize, x: usize) -> f32 {
    let mut h = (z as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (x as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    (h % 20001) as f32 / 10000.0 - 1.0
}

fn rel(a: f64, b: f64) -> f64 {
    (a / b - 1.0).abs()
}

fn by_label(m: &[SegmentMeasurements], l: u8) -> &SegmentMeasurements {
    m.iter().find(|s| s.label_value == l).unwrap()
}

// ---------------------------------------------------------------------------------------------
// CT
// ---------------------------------------------------------------------------------------------

const H: f64 = 0.4; // in-plane spacing, mm
const R_BONE: f64 = 14.0;
const R_MUSCLE: f64 = 45.0;
const R_FAT: f64 = 60.0;
const R_SKIN: f64 = 62.5;

/// Limb phantom: concentric cylinders along z (bone 1000 HU r < 14 mm, muscle 45 HU to 45 mm,
/// fat −100 HU to 60 mm, skin 40 HU to 62.5 mm) in air (−1000 HU), ±10 HU noise, 8 slices of
/// 5 mm, 0.4 mm pixels. The skin lies in the muscle HU range and must not count as muscle.
fn ct_limb() -> Volume {
    let n = 340; // 136 mm field of view
    let c = (n as f64 - 1.0) / 2.0;
    let data = Array3::from_shape_fn((8, n, n), |(z, y, x)| {
        let r = (((y as f64 - c) * H).powi(2) + ((x as f64 - c) * H).powi(2)).sqrt();
        let base = if r < R_BONE {
            1000.0
        } else if r < R_MUSCLE {
            45.0
        } else if r < R_FAT {
            -100.0
        } else if r < R_SKIN {
            40.0
        } else {
            -1000.0
        };
        base + 10.0 * noise(z, y, x)
    });
    volume(data, [5.0, H, H], [0.0; 3])
}

#[test]
fn builtin_analyses_are_registered() {
    for name in ["tissue-composition-ct", "dixon-composition-mr"] {
        assert!(BUILTIN_ANALYSES.contains(&name));
        let a = create_analysis(name).unwrap();
        assert_eq!(a.name(), name);
        let segs = a.segments();
        assert_eq!(
            segs[0].property_type.value, "127954009",
            "skeletal muscle, SCT"
        );
        assert_eq!(
            segs[1].property_type.value, "55603005",
            "adipose tissue, SCT"
        );
        assert!(
            segs.iter().all(|s| s.category.value == "85756007"),
            "category Tissue"
        );
    }
}

#[test]
fn ct_limb_phantom_areas_and_volumes_within_one_percent() {
    let dir = tempfile::tempdir().unwrap();
    let j = job("CT", Some("THIGH"), ct_limb(), dir.path(), vec![]);
    let mut a = TissueCt::default();
    let seg = segment_job(&mut a, j).unwrap();
    let m = measure(&seg);
    let area = |r_in: f64, r_out: f64| PI * (r_out * r_out - r_in * r_in) / 100.0; // cm²
    let length_cm = 8.0 * 5.0 / 10.0;
    for (label, expected_cm2, hu) in [
        (MUSCLE_LABEL, area(R_BONE, R_MUSCLE), 45.0),
        (ADIPOSE_LABEL, area(R_MUSCLE, R_FAT), -100.0),
        (BONE_LABEL, area(0.0, R_BONE), 1000.0),
    ] {
        let s = by_label(&m, label);
        assert!(
            rel(s.area_at_centroid_slice_cm2, expected_cm2) < 0.01,
            "{}: {} vs {expected_cm2}",
            s.label,
            s.area_at_centroid_slice_cm2
        );
        assert!(
            rel(s.volume_ml, expected_cm2 * length_cm) < 0.01,
            "{}: {} mL",
            s.label,
            s.volume_ml
        );
        let mean = s.mean_attenuation_hu.unwrap();
        assert!(
            (mean - hu).abs() < 1.0,
            "{}: mean {mean} HU, expected {hu}",
            s.label
        );
        assert_eq!(s.fat_fraction_percent, None, "no Dixon channels, no FF");
    }
}

#[test]
fn ct_scope_trunk_and_unknown_regions_are_refused_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let small = || {
        let v = ct_limb();
        volume(
            v.data.slice(ndarray::s![0..2, .., ..]).to_owned(),
            v.spacing,
            v.origin,
        )
    };
    for bp in [Some("ABDOMEN"), Some("CHEST"), Some("PELVIS"), None] {
        let err = segment_job(
            &mut TissueCt::default(),
            job("CT", bp, small(), dir.path(), vec![]),
        )
        .unwrap_err();
        assert!(
            matches!(err, SegmentError::OutOfScope { .. }),
            "{bp:?}: {err}"
        );
        assert!(err.to_string().contains("tissue_ct_allow_trunk"), "{err}");
    }
    // limb spellings are accepted
    for bp in ["LEG", "lower limb", "Lower_Leg", "CALF"] {
        segment_job(
            &mut TissueCt::default(),
            job("CT", Some(bp), small(), dir.path(), vec![]),
        )
        .unwrap();
    }
    // trunk allowed by configuration
    let mut allow = TissueCt::new(200.0, true).unwrap();
    segment_job(
        &mut allow,
        job("CT", Some("ABDOMEN"), small(), dir.path(), vec![]),
    )
    .unwrap();
    // MR is refused even when the trunk is allowed
    let err = segment_job(
        &mut allow,
        job("MR", Some("THIGH"), small(), dir.path(), vec![]),
    )
    .unwrap_err();
    assert!(matches!(err, SegmentError::OutOfScope { .. }), "{err}");
    // a bone threshold overlapping the muscle range is a configuration error
    assert!(TissueCt::new(150.0, false).is_err());
    assert!(TissueCt::new(f32::NAN, false).is_err());
}

// ---------------------------------------------------------------------------------------------
// MR (Dixon and intensity model)
// ---------------------------------------------------------------------------------------------

const MR_H: f64 = 0.5;
const LEG_R_MUSCLE: f64 = 40.0;
const LEG_R_FAT: f64 = 52.0;
/// Muscle fat fraction of the patient's right leg (LPS x < midline) and left leg, fraction.
const FF_RIGHT: f64 = 0.04;
const FF_LEFT: f64 = 0.15;
const FF_FAT: f64 = 0.92;

/// Two legs along z: cores of muscle (FF 4 % right, 15 % left), rings of fat (FF 92 %),
/// signal W + F = 1000 inside, 0 outside; water and fat each get ±3 % multiplicative noise.
/// Returns (water, fat, leg centres x in mm).
fn mr_legs() -> (Volume, Volume) {
    let (nz, ny, nx) = (4, 240, 440);
    let cy = (ny as f64 - 1.0) / 2.0 * MR_H;
    let centres = [(55.0, FF_RIGHT), (165.0, FF_LEFT)]; // x mm; LPS +x = patient's left
    let ff_at = |y: usize, x: usize| -> Option<f64> {
        let (py, px) = (y as f64 * MR_H, x as f64 * MR_H);
        centres.iter().find_map(|&(cx, ff_muscle)| {
            let r = ((px - cx).powi(2) + (py - cy).powi(2)).sqrt();
            if r < LEG_R_MUSCLE {
                Some(ff_muscle)
            } else if r < LEG_R_FAT {
                Some(FF_FAT)
            } else {
                None
            }
        })
    };
    let s = 1000.0;
    let w = Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| match ff_at(y, x) {
        Some(ff) => (s * (1.0 - ff)) as f32 * (1.0 + 0.03 * noise(z, y, x)),
        None => 0.0,
    });
    let f = Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| match ff_at(y, x) {
        Some(ff) => (s * ff) as f32 * (1.0 + 0.03 * noise(z + 100, y, x)),
        None => 0.0,
    });
    (
        volume(w, [6.0, MR_H, MR_H], [0.0; 3]),
        volume(f, [6.0, MR_H, MR_H], [0.0; 3]),
    )
}

#[test]
fn dixon_phantom_areas_within_one_percent_and_ff_within_half_a_point() {
    let dir = tempfile::tempdir().unwrap();
    let (w, f) = mr_legs();
    let inphase = volume(&w.data + &f.data, w.spacing, w.origin);
    let j = job(
        "MR",
        Some("THIGH"),
        inphase,
        dir.path(),
        vec![(ChannelKind::Water, w), (ChannelKind::Fat, f)],
    );
    let mut a = TissueMr::new();
    let seg = segment_job(&mut a, j).unwrap();
    assert_eq!(seg.algorithm.name, "myonode dixon-composition-mr");
    let m = measure(&seg);
    let muscle = by_label(&m, MUSCLE_LABEL);
    let fat = by_label(&m, ADIPOSE_LABEL);
    let muscle_cm2 = 2.0 * PI * LEG_R_MUSCLE.powi(2) / 100.0;
    let fat_cm2 = 2.0 * PI * (LEG_R_FAT.powi(2) - LEG_R_MUSCLE.powi(2)) / 100.0;
    assert!(
        rel(muscle.area_at_centroid_slice_cm2, muscle_cm2) < 0.01,
        "{}",
        muscle.area_at_centroid_slice_cm2
    );
    assert!(
        rel(fat.area_at_centroid_slice_cm2, fat_cm2) < 0.01,
        "{}",
        fat.area_at_centroid_slice_cm2
    );
    assert!(rel(muscle.volume_ml, muscle_cm2 * 2.4) < 0.01);
    // per side: left leg (x = 165 mm) and right leg (x = 55 mm) are split at the midline
    assert!(rel(muscle.left.volume_ml, muscle.right.volume_ml) < 0.01);
    let pp = |got: Option<f64>, truth: f64| {
        let got = got.expect("FF present");
        assert!(
            (got - 100.0 * truth).abs() < 0.5,
            "FF {got:.3} % vs {:.3} %",
            100.0 * truth
        );
    };
    pp(muscle.left.fat_fraction_percent, FF_LEFT);
    pp(muscle.right.fat_fraction_percent, FF_RIGHT);
    pp(muscle.fat_fraction_percent, (FF_LEFT + FF_RIGHT) / 2.0);
    pp(fat.fat_fraction_percent, FF_FAT);
    // the FF map and the model notes land in the job directory
    assert!(dir.path().join("fat_fraction.npy").is_file());
    let notes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(MODEL_FILE)).unwrap()).unwrap();
    assert_eq!(notes["model"], "dixon");
    // JSON and CSV carry the fat fraction
    write_measurements(dir.path(), &m).unwrap();
    let back: Vec<SegmentMeasurements> =
        serde_json::from_slice(&std::fs::read(dir.path().join("measurements.json")).unwrap())
            .unwrap();
    assert_eq!(back.len(), m.len());
    for (b, s) in back.iter().zip(&m) {
        assert_eq!(b.voxel_count, s.voxel_count);
        let close = |a: Option<f64>, b: Option<f64>| (a.unwrap() - b.unwrap()).abs() < 1e-9;
        assert!(close(b.fat_fraction_percent, s.fat_fraction_percent));
        assert!(close(
            b.left.fat_fraction_percent,
            s.left.fat_fraction_percent
        ));
        assert!(close(
            b.right.fat_fraction_percent,
            s.right.fat_fraction_percent
        ));
    }
    let csv = std::fs::read_to_string(dir.path().join("measurements.csv")).unwrap();
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .ends_with("fat_fraction_percent,left_fat_fraction_percent,right_fat_fraction_percent"));
    assert!(csv
        .lines()
        .nth(1)
        .unwrap()
        .contains(&format!("{:.4}", muscle.fat_fraction_percent.unwrap())));
}

#[test]
fn ff_guard_leaves_out_voxels_without_signal() {
    // one segment of 4 voxels: FF 0.2, 0.4, and two voxels with W + F = 0 (undefined)
    let dir = tempfile::tempdir().unwrap();
    let w = Array3::from_shape_vec((1, 1, 4), vec![80.0, 60.0, 0.0, 0.0]).unwrap();
    let f = Array3::from_shape_vec((1, 1, 4), vec![20.0, 40.0, 0.0, 0.0]).unwrap();
    let v = |d: Array3<f32>| volume(d, [1.0; 3], [0.0; 3]);
    let j = job(
        "MR",
        None,
        v(&w + &f),
        dir.path(),
        vec![(ChannelKind::Water, v(w)), (ChannelKind::Fat, v(f))],
    );
    let seg = myonode::pipeline::messages::Segmentation {
        job: j,
        labels: Arc::new(Array3::from_elem((1, 1, 4), 1u8)),
        segments: TissueMr::new().segments()[..1].to_vec(),
        algorithm: TissueMr::new().algorithm(),
    };
    let m = measure(&seg);
    assert_eq!(m[0].voxel_count, 4);
    let ff = m[0].fat_fraction_percent.unwrap();
    assert!((ff - 30.0).abs() < 1e-4, "{ff}");
    assert!(ff.is_finite());
}

#[test]
fn single_fat_bright_image_uses_the_intensity_model_marked_lower_confidence() {
    let dir = tempfile::tempdir().unwrap();
    let (w, f) = mr_legs();
    // T1-like: fat bright (≈ 3× muscle), background noise floor
    let t1 = ndarray::Zip::indexed(&w.data)
        .and(&f.data)
        .map_collect(|(z, y, x), &w, &f| {
            if w + f > 0.0 {
                300.0 * (f / (w + f)) + 100.0 + 5.0 * noise(z, y, x)
            } else {
                3.0 + 2.0 * noise(z, y, x)
            }
        });
    let j = job(
        "MR",
        Some("THIGH"),
        volume(t1, w.spacing, w.origin),
        dir.path(),
        vec![],
    );
    let mut a = TissueMr::new();
    let seg = segment_job(&mut a, j).unwrap();
    assert!(
        seg.algorithm.name.contains("no Dixon: intensity model"),
        "{}",
        seg.algorithm.name
    );
    let notes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(MODEL_FILE)).unwrap()).unwrap();
    assert_eq!(notes["model"], "intensity");
    assert_eq!(notes["confidence"], "lower");
    assert_eq!(notes["note"], "no Dixon: intensity model");
    assert_eq!(notes["intensity_contrast"], "fat_bright");
    let m = measure(&seg);
    let muscle_cm2 = 2.0 * PI * LEG_R_MUSCLE.powi(2) / 100.0;
    let fat_cm2 = 2.0 * PI * (LEG_R_FAT.powi(2) - LEG_R_MUSCLE.powi(2)) / 100.0;
    let muscle = by_label(&m, MUSCLE_LABEL);
    let fat = by_label(&m, ADIPOSE_LABEL);
    assert!(
        rel(muscle.area_at_centroid_slice_cm2, muscle_cm2) < 0.01,
        "{}",
        muscle.area_at_centroid_slice_cm2
    );
    assert!(
        rel(fat.area_at_centroid_slice_cm2, fat_cm2) < 0.01,
        "{}",
        fat.area_at_centroid_slice_cm2
    );
    assert_eq!(muscle.fat_fraction_percent, None);
}

#[test]
fn lone_water_image_is_fat_dark_by_image_type() {
    let dir = tempfile::tempdir().unwrap();
    let (w, f) = mr_legs();
    // water-like: muscle bright, fat intermediate (residual signal), background noise floor
    let water = ndarray::Zip::indexed(&w.data)
        .and(&f.data)
        .map_collect(|(z, y, x), &w, &f| {
            if w + f > 0.0 {
                300.0 - 180.0 * (f / (w + f)) + 5.0 * noise(z, y, x)
            } else {
                3.0 + 2.0 * noise(z, y, x)
            }
        });
    let mut j = job(
        "MR",
        Some("THIGH"),
        volume(water, w.spacing, w.origin),
        dir.path(),
        vec![],
    );
    let mut ds = (*j.header.dataset).clone();
    ds.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(
            ["DERIVED", "PRIMARY", "DIXON", "WATER"]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
    ));
    j.header.dataset = Arc::new(ds);
    let seg = segment_job(&mut TissueMr::new(), j).unwrap();
    let notes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(MODEL_FILE)).unwrap()).unwrap();
    assert_eq!(notes["intensity_contrast"], "fat_dark");
    let m = measure(&seg);
    let muscle_cm2 = 2.0 * PI * LEG_R_MUSCLE.powi(2) / 100.0;
    let fat_cm2 = 2.0 * PI * (LEG_R_FAT.powi(2) - LEG_R_MUSCLE.powi(2)) / 100.0;
    let muscle = by_label(&m, MUSCLE_LABEL);
    let fat = by_label(&m, ADIPOSE_LABEL);
    assert!(
        rel(muscle.area_at_centroid_slice_cm2, muscle_cm2) < 0.01,
        "{}",
        muscle.area_at_centroid_slice_cm2
    );
    assert!(
        rel(fat.area_at_centroid_slice_cm2, fat_cm2) < 0.01,
        "{}",
        fat.area_at_centroid_slice_cm2
    );
}
