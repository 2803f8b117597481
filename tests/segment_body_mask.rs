//! The segment stage: `body-mask` on synthetic phantoms and a real knee MR, and the
//! `segment_job` packaging checks.

mod common;
#[allow(unused_imports)]
use common::{data_dir, files_in};
use std::path::PathBuf;
use std::sync::Arc;

use dicom_object::InMemDicomObject;
use myonode::assemble::build_volume;
use myonode::config::AssembleConfig;
use myonode::pipeline::messages::{SeriesHeader, StudyJob};
use myonode::segment::{create_analysis, segment_job, Analysis, BodyMask, SegmentError, BUILTIN_ANALYSES};
use myonode::volume::Volume;
use ndarray::Array3;

/// Deterministic uniform noise in [0, 1) (64-bit LCG, Knuth's MMIX constants).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

fn volume_from(data: Array3<f32>) -> Volume {
    let nz = data.shape()[0];
    Volume {
        data,
        spacing: [1.0, 1.0, 1.0],
        origin: [0.0, 0.0, 0.0],
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 1.0, 0.0],
        slice_direction: [0.0, 0.0, 1.0],
        slices: (0..nz)
            .map(|z| myonode::volume::SliceRef {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".into(),
                sop_instance_uid: format!("2.25.{}", z + 1),
                frame_number: None,
            })
            .collect(),
    }
}

const C: [f64; 3] = [20.0, 32.0, 32.0];
const R_OUTER: f64 = 14.0;
const R_HOLE: f64 = 5.0;

fn dist(z: usize, y: usize, x: usize) -> f64 {
    ((z as f64 - C[0]).powi(2) + (y as f64 - C[1]).powi(2) + (x as f64 - C[2]).powi(2)).sqrt()
}

/// 40×64×64 phantom: bright sphere (radius 14) with a dark spherical hole (radius 5) inside,
/// noise outside, and a separate small bright 3×3×3 blob near a corner.
fn phantom() -> Array3<f32> {
    let mut rng = Lcg(42);
    Array3::from_shape_fn((40, 64, 64), |(z, y, x)| {
        let d = dist(z, y, x);
        let noise = 20.0 * rng.next();
        let in_blob = (4..7).contains(&z) && (4..7).contains(&y) && (4..7).contains(&x);
        if (d <= R_OUTER && d > R_HOLE) || in_blob {
            100.0 + noise
        } else {
            noise
        }
    })
}

#[test]
fn phantom_mask_is_the_filled_sphere_without_the_blob() {
    let vol = volume_from(phantom());
    let mut bm = BodyMask::new();
    let labels = bm.run(&vol).unwrap();
    assert_eq!(labels.dim(), (40, 64, 64));
    let t = bm.last_threshold.unwrap();
    assert!(t > 20.0 && t < 100.0, "Otsu threshold {t} should separate noise (0..20) from sphere (100..120)");

    let mut wrong = 0;
    for ((z, y, x), &l) in labels.indexed_iter() {
        let expected = dist(z, y, x) <= R_OUTER;
        assert!(l == 0 || l == 1);
        if (l == 1) != expected {
            wrong += 1;
            assert!((dist(z, y, x) - R_OUTER).abs() < 1.0, "mismatch away from the boundary at ({z},{y},{x})");
        }
    }
    assert!(wrong <= 10, "{wrong} voxels differ from the filled sphere");
    assert_eq!(labels[[20, 32, 32]], 1, "the hole must be filled");
    assert_eq!(labels[[5, 5, 5]], 0, "the separate blob must be removed");
    let count = labels.iter().filter(|&&l| l == 1).count();
    let ideal = 4.0 / 3.0 * std::f64::consts::PI * R_OUTER.powi(3);
    assert!((count as f64 - ideal).abs() / ideal < 0.03, "{count} voxels vs {ideal:.0} ideal");
}

#[test]
fn holes_open_at_both_ends_are_filled_per_slice() {
    // A tube along z (wall radius 6..10) with a dark lumen that runs through the whole volume:
    // open in 3-D, enclosed in every slice → filled (documented per-slice behaviour).
    let data = Array3::from_shape_fn((12, 32, 32), |(_, y, x)| {
        let r = ((y as f64 - 16.0).powi(2) + (x as f64 - 16.0).powi(2)).sqrt();
        if (6.0..=10.0).contains(&r) {
            200.0
        } else {
            0.0
        }
    });
    let vol = volume_from(data);
    let labels = BodyMask::new().run(&vol).unwrap();
    for z in 0..12 {
        assert_eq!(labels[[z, 16, 16]], 1, "lumen at slice {z}");
        assert_eq!(labels[[z, 0, 0]], 0);
    }
    let expected = Array3::from_shape_fn((12, 32, 32), |(_, y, x)| {
        (((y as f64 - 16.0).powi(2) + (x as f64 - 16.0).powi(2)).sqrt() <= 10.0) as u8
    });
    assert_eq!(labels, expected);
}

#[test]
fn constant_volume_is_an_error() {
    let vol = volume_from(Array3::from_elem((3, 8, 8), 5.0));
    assert!(matches!(BodyMask::new().run(&vol), Err(SegmentError::EmptyVolume { .. })));
    let vol = volume_from(Array3::from_elem((3, 8, 8), f32::NAN));
    assert!(matches!(BodyMask::new().run(&vol), Err(SegmentError::EmptyVolume { .. })));
}

fn job_for(vol: Volume) -> StudyJob {
    StudyJob {
        job_id: "job-1".into(),
        version: 1,
        header: SeriesHeader {
            study_instance_uid: "2.25.1".into(),
            series_instance_uid: "2.25.2".into(),
            frame_of_reference_uid: "2.25.3".into(),
            modality: "MR".into(),
            dataset: Arc::new(InMemDicomObject::new_empty()),
        },
        volume: Arc::new(vol),
        job_dir: PathBuf::from("/nonexistent"),
        channels: Vec::new(),
    }
}

#[test]
fn segment_job_packages_body_mask() {
    assert!(BUILTIN_ANALYSES.contains(&"body-mask"));
    let mut analysis = create_analysis("body-mask").unwrap();
    assert_eq!(analysis.name(), "body-mask");
    let seg = segment_job(analysis.as_mut(), job_for(volume_from(phantom()))).unwrap();
    assert_eq!(seg.labels.dim(), (40, 64, 64));
    assert_eq!(seg.segments.len(), 1);
    let s = &seg.segments[0];
    assert_eq!((s.label_value, s.label.as_str()), (1, "Body"));
    assert_eq!((s.category.value.as_str(), s.category.scheme.as_str()), ("91723000", "SCT"));
    assert_eq!((s.property_type.value.as_str(), s.property_type.meaning.as_str()), ("38266002", "Entire body"));
    assert_eq!(s.algorithm_type.as_str(), "AUTOMATIC");
    assert_eq!(seg.algorithm.family.value, "123105");
    assert_eq!(seg.algorithm.family.meaning, "Histogram Analysis");
    assert_eq!(seg.algorithm.name, "myonode body-mask");
    assert_eq!(seg.algorithm.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(seg.job.job_id, "job-1");
    assert!(seg.labels.iter().any(|&l| l == 1));
}

#[test]
fn unknown_analysis_is_an_error() {
    match create_analysis("no-such-analysis") {
        Err(SegmentError::UnknownAnalysis { name, available }) => {
            assert_eq!(name, "no-such-analysis");
            assert_eq!(available, myonode::segment::BUILTIN_ANALYSES.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert!(available.contains(&"body-mask".to_string()));
        }
        Err(other) => panic!("expected UnknownAnalysis, got {other:?}"),
        Ok(_) => panic!("expected UnknownAnalysis, got an analysis"),
    }
}

/// An analysis that returns whatever label map it was given, to test `segment_job`'s checks.
struct Fixed(Array3<u8>);
impl Analysis for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }
    fn segments(&self) -> Vec<myonode::pipeline::messages::SegmentDescription> {
        BodyMask::new().segments()
    }
    fn algorithm(&self) -> myonode::pipeline::messages::AlgorithmIdentification {
        BodyMask::new().algorithm()
    }
    fn run(&mut self, _volume: &Volume) -> Result<Array3<u8>, SegmentError> {
        Ok(self.0.clone())
    }
}

#[test]
fn segment_job_rejects_wrong_shape_and_undescribed_labels() {
    let vol = volume_from(Array3::zeros((2, 4, 4)));
    let mut wrong_shape = Fixed(Array3::zeros((2, 4, 5)));
    match segment_job(&mut wrong_shape, job_for(vol.clone())) {
        Err(SegmentError::ShapeMismatch { expected, found, .. }) => {
            assert_eq!((expected, found), ((2, 4, 4), (2, 4, 5)))
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let mut labels = Array3::zeros((2, 4, 4));
    labels[[1, 2, 3]] = 2;
    match segment_job(&mut Fixed(labels), job_for(vol)) {
        Err(SegmentError::UndescribedLabel { value: 2, .. }) => {}
        other => panic!("expected UndescribedLabel, got {other:?}"),
    }
}


/// Reassemble a real series from the shared data and run `body-mask` on it.
fn body_mask_of(series: &str) -> (Volume, BodyMask, Array3<u8>) {
    let files = files_in(&data_dir().join(series));
    let cfg = AssembleConfig { quiet_period_seconds: 10.0, min_slices: 3, spacing_tolerance_mm: 0.2, ..AssembleConfig::default() };
    let (_, vol) = build_volume(&files, &cfg).unwrap();
    let mut bm = BodyMask::new();
    let labels = bm.run(&vol).unwrap();
    (vol, bm, labels)
}

#[test]
fn knee_mr_body_mask_is_plausible() {
    let (vol, bm, labels) = body_mask_of("series/mr-knee-dess-echo1");
    let (nz, ny, nx) = labels.dim();
    assert_eq!((nz, ny, nx), (80, 512, 512));
    let inside = labels.iter().filter(|&&l| l == 1).count();
    let fraction = inside as f64 / labels.len() as f64;

    // Border of every slice (rows 0 / ny-1, columns 0 / nx-1).
    let (mut border, mut border_on) = (0usize, 0usize);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                if y == 0 || x == 0 || y == ny - 1 || x == nx - 1 {
                    border += 1;
                    border_on += (labels[[z, y, x]] == 1) as usize;
                }
            }
        }
    }
    let border_fraction = border_on as f64 / border as f64;
    // Mean intensity inside clearly above outside (the mask holds the bright tissue).
    let (mut sum_in, mut sum_out) = (0.0f64, 0.0f64);
    for (&v, &l) in vol.data.iter().zip(labels.iter()) {
        if l == 1 {
            sum_in += v as f64;
        } else {
            sum_out += v as f64;
        }
    }
    let mean_in = sum_in / inside as f64;
    let mean_out = sum_out / (labels.len() - inside) as f64;
    println!(
        "knee body-mask: threshold {:?}, {inside} voxels = {:.1}% of the volume ({:.1} mL), border voxels in mask {:.1}%, mean inside {mean_in:.1} vs outside {mean_out:.1}",
        bm.last_threshold,
        100.0 * fraction,
        inside as f64 * vol.voxel_volume_mm3() / 1000.0,
        100.0 * border_fraction
    );
    assert!(fraction > 0.15 && fraction < 0.85, "body fraction {fraction}");
    assert!(border_fraction < 0.3, "border fraction {border_fraction}");
    assert!(mean_in > 3.0 * mean_out, "inside {mean_in} vs outside {mean_out}");
    // Known limitation (fat-suppressed DESS): dark bone marrow that leaves the field of view
    // is not enclosed in any slice, so it is not filled; the centre voxel is not asserted here.
}

/// CT: the body is everything above air; the centre of the abdomen is inside, air outside is
/// not, and enclosed gas (lung bases, bowel) is filled per slice.
#[test]
fn ct_body_mask_is_plausible() {
    let (vol, bm, labels) = body_mask_of("series/ct-abdomen-j2k");
    let (nz, ny, nx) = labels.dim();
    assert_eq!((nz, ny, nx), (20, 512, 512));
    let t = bm.last_threshold.unwrap();
    assert!(t > -700.0 && t < -150.0, "air/tissue threshold {t} HU");
    assert_eq!(labels[[nz / 2, ny / 2, nx / 2]], 1, "centre of the abdomen is body");
    assert_eq!(labels[[nz / 2, 5, 5]], 0, "image corner is air");
    let (mut n_in, mut sum_in, mut n_out, mut sum_out) = (0usize, 0f64, 0usize, 0f64);
    for (&v, &l) in vol.data.iter().zip(labels.iter()) {
        if l == 1 {
            n_in += 1;
            sum_in += v as f64;
        } else {
            n_out += 1;
            sum_out += v as f64;
        }
    }
    let (mean_in, mean_out) = (sum_in / n_in as f64, sum_out / n_out as f64);
    println!("CT body-mask: threshold {t} HU, {n_in} voxels, mean inside {mean_in:.1} HU, outside {mean_out:.1} HU");
    assert!(mean_in > -150.0 && mean_in < 150.0, "mean HU inside {mean_in}");
    assert!(mean_out < -700.0, "mean HU outside {mean_out}");
}
