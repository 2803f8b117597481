//! Volume reassembly on real series (MYONODE_DATA, default `<crate>/../shared/data`).
//!
//! Python cross-checks use MYONODE_PYTHON (default `<crate>/.venv/bin/python`) with pydicom
//! and fail with a clear message when the interpreter is missing.

mod common;
#[allow(unused_imports)]
use common::{data_dir, files_in};
use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_dictionary_std::tags;
use myonode::assemble::{build_volume, plan_series, AssembleError};
use myonode::config::AssembleConfig;
use myonode::volume::{cross, dot};


fn python() -> PathBuf {
    let py = std::env::var_os("MYONODE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        py.exists(),
        "Python interpreter for cross-checks not found at {} (set MYONODE_PYTHON to a python with pydicom)",
        py.display()
    );
    py
}

fn run_python(script: &str, args: &[&Path]) -> String {
    let out = Command::new(python()).arg("-c").arg(script).args(args).output().expect("failed to start python");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}


fn cfg(min_slices: usize) -> AssembleConfig {
    AssembleConfig { quiet_period_seconds: 10.0, min_slices, spacing_tolerance_mm: 0.2, ..AssembleConfig::default() }
}

fn floats(obj: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> Vec<f64> {
    obj.element(tag).unwrap().to_multi_float64().unwrap()
}

/// Reverse and rotate the file order so the builder cannot rely on the listing order.
fn shuffled(mut files: Vec<PathBuf>) -> Vec<PathBuf> {
    files.reverse();
    let k = files.len() / 3;
    files.rotate_left(k);
    files
}

#[test]
fn mr_knee_builds_sorted_volume_with_raw_values() {
    let dir = data_dir().join("series/mr-knee-dess-echo1");
    let files = shuffled(files_in(&dir));
    assert_eq!(files.len(), 80);
    let (header, vol) = build_volume(&files, &cfg(3)).expect("knee series must assemble");

    assert_eq!(vol.shape(), (80, 512, 512));
    assert!((vol.spacing[0] - 1.5).abs() < 1e-3, "z spacing {}", vol.spacing[0]);
    assert!((vol.spacing[1] - 0.3125).abs() < 1e-9 && (vol.spacing[2] - 0.3125).abs() < 1e-9, "{:?}", vol.spacing);
    assert_eq!(header.modality, "MR");
    assert!(!header.frame_of_reference_uid.is_empty());
    assert!(header.dataset.get(tags::PIXEL_DATA).is_none(), "header must not hold PixelData");
    assert_eq!(vol.slices.len(), 80);
    assert!(vol.slices.iter().all(|s| s.frame_number.is_none()));

    // Independent geometry: the slice with the smallest projection on the normal is the origin.
    let mut best: Option<(f64, [f64; 3], String, PathBuf)> = None;
    let mut projections = Vec::new();
    for f in &files {
        let obj = dicom_object::open_file(f).unwrap();
        let iop = floats(&obj, tags::IMAGE_ORIENTATION_PATIENT);
        let ipp = floats(&obj, tags::IMAGE_POSITION_PATIENT);
        let n = cross([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
        let d = dot(n, [ipp[0], ipp[1], ipp[2]]);
        projections.push(d);
        let uid = obj.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
        if best.as_ref().is_none_or(|b| d < b.0) {
            best = Some((d, [ipp[0], ipp[1], ipp[2]], uid, f.clone()));
        }
    }
    let (_, origin, first_uid, _) = best.unwrap();
    for i in 0..3 {
        assert!((vol.origin[i] - origin[i]).abs() < 1e-9, "origin {:?} vs {:?}", vol.origin, origin);
    }
    assert_eq!(vol.slices[0].sop_instance_uid, first_uid);
    // Slice direction is the normal (ascending sort) and positions advance by the spacing.
    let last = vol.slice_position(79);
    projections.sort_by(|a, b| a.total_cmp(b));
    assert!((dot(vol.slice_direction, last) - projections[79]).abs() < 1e-3);

    // Voxel values of one slice equal the stored int16 values (no Rescale in these files).
    let z = 37;
    let uid = &vol.slices[z].sop_instance_uid;
    let path = files
        .iter()
        .find(|f| {
            let o = dicom_object::open_file(f).unwrap();
            o.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0') == uid
        })
        .unwrap();
    let obj = dicom_object::open_file(path).unwrap();
    assert_eq!(obj.element(tags::PIXEL_REPRESENTATION).unwrap().to_int::<u16>().unwrap(), 1);
    assert!(obj.get(tags::RESCALE_SLOPE).is_none_or(|e| e.to_float64().unwrap() == 1.0));
    let bytes = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let raw: Vec<i16> = bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(raw.len(), 512 * 512);
    let slice = vol.data.index_axis(ndarray::Axis(0), z);
    let mut nonzero = 0;
    for (v, r) in slice.iter().zip(raw.iter()) {
        assert_eq!(*v, *r as f32);
        nonzero += (*r != 0) as usize;
    }
    assert!(nonzero > 10_000, "slice {z} should contain anatomy");
}

const PYDICOM_SLICE_STATS: &str = r#"
import sys, pydicom, numpy as np
ds = pydicom.dcmread(sys.argv[1])
a = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
print(ds.SOPInstanceUID)
print(repr(float(a.mean())))
for (r, c) in [(0, 0), (256, 256), (300, 120), (100, 400), (511, 511)]:
    print(r, c, repr(float(a[r, c])))
"#;

#[test]
fn ct_j2k_builds_hounsfield_volume_matching_pydicom() {
    let dir = data_dir().join("series/ct-abdomen-j2k");
    let files = shuffled(files_in(&dir));
    let (header, vol) = build_volume(&files, &cfg(3)).expect("CT series must assemble");
    assert_eq!(vol.shape(), (20, 512, 512));
    assert!((vol.spacing[0] - 2.0).abs() < 1e-3, "z spacing {}", vol.spacing[0]);
    assert!((vol.spacing[1] - 0.9765625).abs() < 1e-9);
    assert_eq!(header.modality, "CT");
    // Ascending along the normal (0,0,1) for IOP 1\0\0\0\1\0.
    assert!((vol.slice_direction[2] - 1.0).abs() < 1e-12);
    assert!(vol.slice_position(19)[2] > vol.origin[2]);

    for pick in [0usize, 7, 19] {
        let path = &files[pick];
        let out = run_python(PYDICOM_SLICE_STATS, &[path]);
        let mut lines = out.lines();
        let uid = lines.next().unwrap().trim();
        let mean: f64 = lines.next().unwrap().trim().parse().unwrap();
        let z = vol.slices.iter().position(|s| s.sop_instance_uid == uid).expect("slice present");
        let slice = vol.data.index_axis(ndarray::Axis(0), z);
        let ours = slice.iter().map(|&v| v as f64).sum::<f64>() / slice.len() as f64;
        assert!((ours - mean).abs() < 1e-3, "slice {z}: mean HU {ours} vs pydicom {mean}");
        for line in lines {
            let p: Vec<&str> = line.split_whitespace().collect();
            let (r, c, v): (usize, usize, f64) = (p[0].parse().unwrap(), p[1].parse().unwrap(), p[2].parse().unwrap());
            assert_eq!(vol.data[[z, r, c]] as f64, v, "voxel ({z},{r},{c})");
        }
    }
    // Plausible HU: air outside, soft tissue at the centre.
    assert!(vol.data[[10, 5, 5]] < -900.0);
}

#[test]
fn plan_reads_headers_only_and_sorts() {
    let dir = data_dir().join("series/ct-abdomen-j2k");
    let plan = plan_series(&shuffled(files_in(&dir)), &cfg(3)).unwrap();
    assert_eq!(plan.len(), 20);
    assert!(plan.slices.windows(2).all(|w| w[1].distance > w[0].distance));
    assert!(plan.header.get(tags::PIXEL_DATA).is_none());
    assert_eq!((plan.rows, plan.columns), (512, 512));
}

// ---------- awkward inputs ----------

fn awkward(case: &str) -> Vec<PathBuf> {
    files_in(&data_dir().join("awkward").join(case))
}

#[test]
fn gantry_tilt_is_refused_with_angle() {
    match build_volume(&awkward("gantrytilting/001"), &cfg(3)) {
        // IOP column direction (0, 0.9703, -0.2419) with IPP stepping along z: tilt = asin(0.2419) ≈ 14.0°.
        Err(AssembleError::GantryTilt { degrees }) => assert!((degrees - 14.0).abs() < 0.1, "{degrees}"),
        other => panic!("expected GantryTilt, got {other:?}"),
    }
}

#[test]
fn identical_positions_are_not_a_volume() {
    match build_volume(&awkward("notavolume/001"), &cfg(3)) {
        Err(AssembleError::NotAVolume { reason }) => assert!(reason.contains("share one position"), "{reason}"),
        other => panic!("expected NotAVolume, got {other:?}"),
    }
}

#[test]
fn mixed_orientation_is_refused() {
    match build_volume(&awkward("sliceorientation/001"), &cfg(3)) {
        Err(AssembleError::MixedOrientation { expected, found, .. }) => assert_ne!(expected, found),
        other => panic!("expected MixedOrientation, got {other:?}"),
    }
}

#[test]
fn too_few_slices_is_refused() {
    match build_volume(&awkward("slicecount/001"), &cfg(3)) {
        Err(AssembleError::TooFewSlices { found: 2, min: 3 }) => {}
        other => panic!("expected TooFewSlices, got {other:?}"),
    }
}

#[test]
fn missing_slice_gives_interslice_distance_error() {
    // Case 001: positions z = 18.1, 23.1, 28.1, 38.1 (one slice missing).
    match build_volume(&awkward("sliceincrement/001"), &cfg(3)) {
        Err(e @ AssembleError::NonUniformSpacing { .. }) => {
            let AssembleError::NonUniformSpacing { expected, found, index, .. } = e else { unreachable!() };
            assert!((expected - 5.0).abs() < 1e-3 && (found - 10.0).abs() < 1e-3 && index == 2, "{expected} {found} {index}");
        }
        other => panic!("expected NonUniformSpacing, got {other:?}"),
    }
    // Case 002: tilted gantry and a missing slice; the spacing problem is reported first.
    match build_volume(&awkward("sliceincrement/002"), &cfg(3)) {
        Err(AssembleError::NonUniformSpacing { .. }) => {}
        other => panic!("expected NonUniformSpacing, got {other:?}"),
    }
}

/// Two of the 11 GE CT slices share z = -90 with byte-identical pixels (CT26 and CT28, one
/// InstanceNumber, two SOPInstanceUIDs): the copy is dropped (not a DuplicatePosition error);
/// the remaining 10 positions are a sparse, irregular sampling (steps of 32.5 mm and more), so
/// the series is still refused — for its spacing. Different pixels at one position are refused
/// as duplicates (`assemble_stacks.rs`).
#[test]
fn identical_duplicate_is_dropped_then_spacing_decides() {
    match plan_series(&awkward("duplicate-positions"), &cfg(3)) {
        Err(AssembleError::NonUniformSpacing { expected, found, .. }) => {
            assert!((expected - 32.5).abs() < 1e-6 && (found - 112.5).abs() < 1e-6, "{expected} {found}")
        }
        other => panic!("expected NonUniformSpacing after dropping the copy, got {other:?}"),
    }
}

#[test]
fn multiframe_without_functional_groups_is_refused() {
    let dir = data_dir().join("awkward/enhanced-single");
    for (file, frames) in [("emri_small.dcm", 10), ("emri_small_jpeg_ls_lossless.dcm", 10)] {
        match build_volume(&[dir.join(file)], &cfg(2)) {
            Err(AssembleError::MultiFrameNotSupported { number_of_frames, .. }) => assert_eq!(number_of_frames, frames),
            other => panic!("{file}: expected MultiFrameNotSupported, got {other:?}"),
        }
    }
}

#[test]
fn empty_uids_are_refused() {
    match build_volume(&awkward("missing-uids"), &cfg(3)) {
        Err(AssembleError::MissingAttribute { attribute, .. }) => {
            assert!(attribute.ends_with("UID"), "{attribute}")
        }
        other => panic!("expected MissingAttribute for a UID, got {other:?}"),
    }
}

#[test]
fn unreadable_and_empty_inputs_are_errors() {
    assert!(matches!(build_volume(&[], &cfg(3)), Err(AssembleError::NoFiles)));
    let tmp = tempfile::tempdir().unwrap();
    let bogus = tmp.path().join("not-dicom.dcm");
    std::fs::write(&bogus, b"definitely not a DICOM file").unwrap();
    assert!(matches!(build_volume(&[bogus], &cfg(3)), Err(AssembleError::Unreadable { .. })));
}

#[test]
fn mixing_two_series_is_refused() {
    let d = data_dir();
    let mut files = files_in(&d.join("series/mr-knee-dess-echo1"));
    files.extend(files_in(&d.join("series/mr-knee-dess-echo2")));
    match plan_series(&files, &cfg(3)) {
        Err(AssembleError::MixedSeries { attribute, .. }) => assert_eq!(attribute, "SeriesInstanceUID"),
        other => panic!("expected MixedSeries, got {other:?}"),
    }
}

const NIFTI_STATS: &str = r#"
import sys, nibabel as nib, numpy as np
a = np.asarray(nib.load(sys.argv[1]).get_fdata(), dtype=np.float64)
print(a.size, repr(float(a.sum())), repr(float(a.min())), repr(float(a.max())))
"#;

/// The compressed MR cases (4 slices) carry no FrameOfReferenceUID, so `build_volume` refuses
/// them; the geometry and pixel path is checked through `plan_series` + `decode`, and voxel
/// values against dicom2nifti's ground truth. The NIfTI is in RAS with its own axis order, so
/// the comparison uses order-independent statistics (sum, min, max) plus JPEG 2000 vs JPEG
/// lossless equality voxel by voxel.
#[test]
fn compressed_mr_decodes_and_matches_ground_truth() {
    let mut volumes = Vec::new();
    for case in ["compressed-j2k", "compressed-jpeg"] {
        let files = awkward(&format!("{case}/001"));
        match build_volume(&files, &cfg(2)) {
            Err(AssembleError::MissingAttribute { attribute: "FrameOfReferenceUID", .. }) => {}
            other => panic!("{case}: expected missing FrameOfReferenceUID, got {other:?}"),
        }
        let plan = plan_series(&shuffled(files), &cfg(2)).unwrap();
        assert!(plan.frame_of_reference_uid.is_none());
        let vol = plan.decode().unwrap();
        assert_eq!(vol.shape(), (4, 256, 256));
        assert!((vol.spacing[0] - 1.0).abs() < 1e-6, "{:?}", vol.spacing);
        // IOP 0\1\0\0\0\-1 → normal (-1, 0, 0); ascending along it = decreasing x.
        assert!((vol.slice_direction[0] + 1.0).abs() < 1e-12, "{:?}", vol.slice_direction);
        assert!((vol.origin[0] - (-100.79415804148)).abs() < 1e-9, "{:?}", vol.origin);

        let gt = data_dir().join(format!("awkward/{case}/001_ground_truth.nii.gz"));
        let out = run_python(NIFTI_STATS, &[&gt]);
        let p: Vec<f64> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
        assert_eq!(p[0] as usize, vol.data.len());
        let sum: f64 = vol.data.iter().map(|&v| v as f64).sum();
        assert!((sum - p[1]).abs() < 1e-6 * p[1].abs().max(1.0), "{case}: sum {sum} vs ground truth {}", p[1]);
        let min = vol.data.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
        let max = vol.data.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        assert_eq!((min, max), (p[2], p[3]), "{case}");
        volumes.push(vol);
    }
    assert_eq!(volumes[0].data, volumes[1].data, "JPEG 2000 and JPEG lossless decode to the same voxels");
}
