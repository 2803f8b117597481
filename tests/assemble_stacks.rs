//! Stacks and enhanced multi-frame objects (comparisons with peers: `assemble_peers.rs`).
//!
//! Synthetic cases are made from the real knee DESS files by rewriting header attributes
//! (EchoNumbers, EchoTime, ImageType, AcquisitionNumber, orientation, UIDs) into a temporary
//! directory: real pixels, generated headers.

mod common;
use common::{data_dir, files_in};
use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use myonode::assemble::{build_from_plan, build_volume, plan_series, plan_stacks, AssembleError};
use myonode::config::AssembleConfig;

fn cfg(min_slices: usize) -> AssembleConfig {
    AssembleConfig { min_slices, ..AssembleConfig::default() }
}

fn awkward(case: &str) -> Vec<PathBuf> {
    files_in(&data_dir().join("awkward").join(case))
}

fn python() -> PathBuf {
    let py = std::env::var_os("MYONODE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(py.exists(), "Python for cross-checks not found at {} (set MYONODE_PYTHON)", py.display());
    py
}

/// Copy `src` to `dst` with header changes applied (generated header, real pixels).
fn rewrite(src: &Path, dst: &Path, edits: &[(dicom_core::Tag, VR, &str)]) {
    let mut obj = dicom_object::open_file(src).unwrap();
    for (tag, vr, value) in edits {
        let v = if value.contains('\\') {
            PrimitiveValue::Strs(value.split('\\').map(|s| s.to_string()).collect())
        } else {
            PrimitiveValue::from(*value)
        };
        obj.put(DataElement::new(*tag, *vr, v));
        if *tag == tags::SOP_INSTANCE_UID {
            obj.update_meta(|m| m.media_storage_sop_instance_uid = value.to_string());
        }
    }
    obj.write_to_file(dst).unwrap();
}

fn knee(n: usize) -> Vec<PathBuf> {
    files_in(&data_dir().join("series/mr-knee-dess-echo1")).into_iter().take(n).collect()
}

#[test]
fn echoes_image_types_and_localizers_split_into_stacks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, f) in knee(6).iter().enumerate() {
        // echo 1 as sent, plus a second echo of the same slices in the same series
        let a = tmp.path().join(format!("e1-{i}.dcm"));
        std::fs::copy(f, &a).unwrap();
        let b = tmp.path().join(format!("e2-{i}.dcm"));
        rewrite(f, &b, &[
            (tags::SOP_INSTANCE_UID, VR::UI, &format!("2.25.1000{i}")),
            (tags::ECHO_NUMBERS, VR::IS, "2"),
            (tags::ECHO_TIME, VR::DS, "42.52"),
        ]);
        // a phase image of echo 1 (ImageType value 3 P)
        let c = tmp.path().join(format!("p-{i}.dcm"));
        rewrite(f, &c, &[
            (tags::SOP_INSTANCE_UID, VR::UI, &format!("2.25.2000{i}")),
            (tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\P"),
        ]);
        files.extend([a, b, c]);
    }
    // three localizer images in another orientation
    for (i, f) in knee(3).iter().enumerate() {
        let l = tmp.path().join(format!("loc-{i}.dcm"));
        rewrite(f, &l, &[
            (tags::SOP_INSTANCE_UID, VR::UI, &format!("2.25.3000{i}")),
            (tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\LOCALIZER"),
            (tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0"),
        ]);
        files.push(l);
    }
    files.reverse();
    let (stacks, dropped) = plan_stacks(&files, &cfg(3)).unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].images.len(), 3);
    assert!(dropped[0].reason.contains("LOCALIZER"), "{}", dropped[0].reason);
    assert_eq!(stacks.len(), 3, "{:#?}", stacks.iter().map(|s| s.key.describe()).collect::<Vec<_>>());
    for s in &stacks {
        assert_eq!(s.images, 6);
        let plan = s.plan.as_ref().expect("each stack is a regular volume");
        assert_eq!(plan.len(), 6);
        assert!(plan.slices.windows(2).all(|w| w[1].distance > w[0].distance));
    }
    // stable order: echo 1 (ImageType M-like, then P), then echo 2
    assert_eq!(stacks[0].key.echo_number, Some(1));
    assert_eq!(stacks[2].key.echo_number, Some(2));
    assert!(stacks[2].distinguished_by.contains(&"EchoNumbers") && stacks[2].distinguished_by.contains(&"EchoTime"));
    assert!(stacks.iter().any(|s| s.key.image_type.get(2).map(String::as_str) == Some("P")));
    assert!(stacks[0].key.describe().starts_with("sagittal"), "{}", stacks[0].key.describe());
    // the echo-2 stack decodes to the same pixels as echo 1 (same source pixels)
    let v1 = build_from_plan(stacks[0].plan.as_ref().unwrap()).unwrap().1;
    let v2 = build_from_plan(stacks[2].plan.as_ref().unwrap()).unwrap().1;
    assert_eq!(v1.data, v2.data);
    // the strict single-stack path still refuses the mixture
    assert!(plan_series(&files, &cfg(3)).is_err());
}

#[test]
fn acquisition_number_splits_only_repeated_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, f) in knee(5).iter().enumerate() {
        for acq in ["1", "2"] {
            let p = tmp.path().join(format!("a{acq}-{i}.dcm"));
            rewrite(f, &p, &[(tags::SOP_INSTANCE_UID, VR::UI, &format!("2.25.4{acq}00{i}")), (tags::ACQUISITION_NUMBER, VR::IS, acq)]);
            files.push(p);
        }
    }
    let (stacks, _) = plan_stacks(&files, &cfg(3)).unwrap();
    assert_eq!(stacks.len(), 2);
    assert_eq!((stacks[0].key.acquisition_number, stacks[1].key.acquisition_number), (Some(1), Some(2)));
    assert!(stacks.iter().all(|s| s.plan.as_ref().map(|p| p.len()) .ok() == Some(5)));

    // one acquisition number per slice, positions distinct: one stack
    let mut files = Vec::new();
    for (i, f) in knee(5).iter().enumerate() {
        let p = tmp.path().join(format!("b-{i}.dcm"));
        rewrite(f, &p, &[(tags::ACQUISITION_NUMBER, VR::IS, &format!("{}", 10 + i))]);
        files.push(p);
    }
    let (stacks, _) = plan_stacks(&files, &cfg(3)).unwrap();
    assert_eq!(stacks.len(), 1);
    assert_eq!(stacks[0].key.acquisition_number, None);

    // notavolume: 4 CT slices at one position, one acquisition number each: one stack, refused
    let (stacks, _) = plan_stacks(&awkward("notavolume/001"), &cfg(3)).unwrap();
    assert_eq!(stacks.len(), 1);
    match &stacks[0].plan {
        Err(AssembleError::NotAVolume { reason }) => assert!(reason.contains("share one position"), "{reason}"),
        other => panic!("expected NotAVolume, got {other:?}"),
    }
}

#[test]
fn awkward_cases_split_or_refuse_with_specific_reasons() {
    // two orientations, two slices each
    let (stacks, _) = plan_stacks(&awkward("sliceorientation/001"), &cfg(2)).unwrap();
    assert_eq!(stacks.len(), 2);
    for s in &stacks {
        assert!(s.distinguished_by.contains(&"orientation"), "{:?}", s.distinguished_by);
        assert_eq!(s.plan.as_ref().unwrap().len(), 2);
    }
    let (stacks, _) = plan_stacks(&awkward("sliceorientation/001"), &cfg(3)).unwrap();
    assert!(stacks.iter().all(|s| matches!(s.plan, Err(AssembleError::TooFewSlices { found: 2, min: 3 }))));
    // the existing single-stack refusals are unchanged per stack
    let (stacks, _) = plan_stacks(&awkward("gantrytilting/001"), &cfg(3)).unwrap();
    assert!(matches!(stacks[0].plan, Err(AssembleError::GantryTilt { .. })));
    let (stacks, _) = plan_stacks(&awkward("sliceincrement/001"), &cfg(3)).unwrap();
    assert!(matches!(stacks[0].plan, Err(AssembleError::NonUniformSpacing { .. })));
    let (stacks, _) = plan_stacks(&awkward("duplicate-positions"), &cfg(3)).unwrap();
    // the identical copy at z = -90 is dropped; the sparse positions then fail the spacing check
    assert!(matches!(stacks[0].plan, Err(AssembleError::NonUniformSpacing { .. })));
    // series-level problems stay errors of the whole series
    assert!(matches!(plan_stacks(&awkward("missing-uids"), &cfg(3)), Err(AssembleError::MissingAttribute { .. })));
    let d = data_dir();
    let mut two = files_in(&d.join("series/mr-knee-dess-echo1"));
    two.extend(files_in(&d.join("series/mr-knee-dess-echo2")));
    assert!(matches!(plan_stacks(&two, &cfg(3)), Err(AssembleError::MixedSeries { .. })));
}

#[test]
fn enhanced_multiframe_uses_per_frame_functional_groups() {
    // (case, spacing along the normal in mm: 001 is sagittal 1.2 mm, 001_implicit an oblique 1.0 mm stack)
    for (case, dz) in [("enhanced-mr-philips/001", 1.2), ("enhanced-mr-philips/001_implicit", 1.0)] {
        let files = awkward(case);
        // no FrameOfReferenceUID in these files: planned and decoded, but not a job
        match build_volume(&files, &cfg(3)) {
            Err(AssembleError::MissingAttribute { attribute: "FrameOfReferenceUID", .. }) => {}
            other => panic!("{case}: expected missing FrameOfReferenceUID, got {other:?}"),
        }
        let plan = plan_series(&files, &cfg(3)).unwrap();
        assert_eq!(plan.len(), 8);
        assert!(plan.header.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).is_none(), "header kept small");
        // frame positions step along the normal: ascending distance = frames 1..8
        let frames: Vec<_> = plan.slices.iter().map(|s| s.frame_number).collect();
        assert_eq!(frames, (1..=8).map(Some).collect::<Vec<_>>());
        assert!((plan.spacing[0] - dz).abs() < 1e-4, "{case}: {:?}", plan.spacing);
        let v = plan.decode().unwrap();
        assert!(v.slices.iter().enumerate().all(|(z, s)| s.frame_number == Some(z as u32 + 1)));
    }
    let dir = data_dir().join("awkward/enhanced-single");
    // Enhanced CT, 2 frames with Frame Content / Plane Position per frame, orientation shared
    let (header, v) = build_volume(&[dir.join("eCT_Supplemental.dcm")], &cfg(2)).unwrap();
    assert_eq!(header.modality, "CT");
    assert_eq!(v.shape(), (2, 512, 512));
    assert!((v.spacing[0] - 10.0).abs() < 1e-6);
    // IOP -1\0\0\0\1\0: normal (0, 0, -1). Frame 1 is at z = -159 (InStackPositionNumber 2),
    // frame 2 at -149 (InStackPositionNumber 1): ascending along the normal puts frame 2 first.
    assert_eq!(v.slices.iter().map(|s| s.frame_number).collect::<Vec<_>>(), vec![Some(2), Some(1)]);
    assert_eq!(v.origin[2], -149.0);
    let script = r#"
import sys, pydicom, numpy as np
from pydicom.pixels import apply_rescale
ds = pydicom.dcmread(sys.argv[1])
a = ds.pixel_array.astype(np.float64)
fg = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
a = a * float(fg.RescaleSlope) + float(fg.RescaleIntercept)
print(repr(float(a[1].sum())), repr(float(a[0].sum())))  # frame 2, frame 1
"#;
    let out = Command::new(python()).arg("-c").arg(script).arg(dir.join("eCT_Supplemental.dcm")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sums: Vec<f64> = String::from_utf8(out.stdout).unwrap().split_whitespace().map(|s| s.parse().unwrap()).collect();
    for z in 0..2 {
        let ours: f64 = v.data.index_axis(ndarray::Axis(0), z).iter().map(|&x| x as f64).sum();
        assert_eq!(ours, sums[z], "frame sum (HU) of slice {z}");
    }
    // a multi-frame object without functional groups has no per-frame geometry
    match build_volume(&[dir.join("emri_small.dcm")], &cfg(2)) {
        Err(AssembleError::MultiFrameNotSupported { number_of_frames: 10, .. }) => {}
        other => panic!("expected MultiFrameNotSupported, got {other:?}"),
    }
}

#[test]
fn duplicate_position_with_different_pixels_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = knee(5);
    let mut files = src.clone();
    // slice 2 again under a new SOPInstanceUID: an exact copy is dropped ...
    let copy = tmp.path().join("copy.dcm");
    rewrite(&src[2], &copy, &[(tags::SOP_INSTANCE_UID, VR::UI, "2.25.5001")]);
    files.push(copy);
    let plan = plan_series(&files, &cfg(3)).unwrap();
    assert_eq!((plan.len(), plan.duplicates_dropped.clone()), (5, vec!["2.25.5001".to_string()]));
    // ... a different image at that position is refused, naming both instances
    let mut obj = dicom_object::open_file(&src[2]).unwrap();
    let mut px = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().into_owned();
    px[1000] ^= 0x01;
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(px)));
    obj.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("2.25.5002")));
    obj.update_meta(|m| m.media_storage_sop_instance_uid = "2.25.5002".into());
    let other = tmp.path().join("other.dcm");
    obj.write_to_file(&other).unwrap();
    files.pop();
    files.push(other);
    match plan_series(&files, &cfg(3)) {
        Err(AssembleError::DuplicatePosition { first, second, .. }) => {
            assert!(first == "2.25.5002" || second == "2.25.5002", "{first} {second}")
        }
        other => panic!("expected DuplicatePosition, got {other:?}"),
    }
}
