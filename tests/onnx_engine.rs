//! ONNX engine tests against the Python `onnxruntime` package and a NumPy
//! reference of the whole analysis (scripts/make-fixture-models.py).
//!
//! Needs: the ONNX Runtime library (env MYONODE_ORT_LIBRARY, default
//! `<crate>/.onnxruntime/lib/libonnxruntime.so.1.31.1`) and Python with numpy,
//! onnx, onnxruntime (env MYONODE_PYTHON, default `<crate>/.venv/bin/python`).
//! Missing either is a test FAILURE with a message, never a silent pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use ndarray::{Array3, Array4, ArrayD};
use ndarray_npy::{read_npy, write_npy};

use myonode::config::SegmentConfig;
use myonode::pipeline::messages::{Channel, ChannelKind, SeriesHeader, StudyJob};
use myonode::segment::onnx::{self, runtime, OnnxError, OnnxModel};
use myonode::segment::{create_analysis_with, segment_job, SegmentError};
use myonode::volume::Volume;

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let p = std::env::var_os("MYONODE_PYTHON").map(PathBuf::from).unwrap_or_else(|| crate_root().join(".venv/bin/python"));
    assert!(p.is_file(), "Python not found at {} (set MYONODE_PYTHON to a python with numpy, onnx, onnxruntime)", p.display());
    p
}

fn ort_library() -> PathBuf {
    let p = std::env::var_os("MYONODE_ORT_LIBRARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join(".onnxruntime/lib/libonnxruntime.so.1.31.1"));
    assert!(p.is_file(), "ONNX Runtime library not found at {} (run scripts/fetch-onnxruntime.sh or set MYONODE_ORT_LIBRARY)", p.display());
    p
}

fn run_python(args: &[&str]) {
    let script = crate_root().join("scripts/make-fixture-models.py");
    let out = Command::new(python()).arg(&script).args(args).output().expect("run python");
    assert!(
        out.status.success(),
        "python {} {:?} failed:\n{}\n{}",
        script.display(),
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fixture models, generated once per test process into the target tmp dir.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("onnx-fixtures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        run_python(&["models", d.to_str().unwrap()]);
        d
    })
}

fn cfg() -> SegmentConfig {
    SegmentConfig {
        analysis: "conv3d".into(),
        workers: 1,
        models_dir: fixtures().to_path_buf(),
        onnxruntime_library: ort_library(),
        execution_providers: vec!["cpu".into()],
        require_gpu: false,
        intra_op_threads: 1,
        tissue_ct_allow_trunk: false,
        tissue_ct_bone_threshold_hu: 200.0,
    }
}

/// A smooth synthetic image with blobs (so segmentations have several components and holes).
fn volume(shape: (usize, usize, usize), spacing: [f64; 3]) -> Volume {
    let (nz, ny, nx) = shape;
    let data = Array3::from_shape_fn(shape, |(z, y, x)| {
        let (fz, fy, fx) = (z as f32 / nz as f32, y as f32 / ny as f32, x as f32 / nx as f32);
        100.0 * ((fx * 7.0).sin() * (fy * 5.0).cos() + 0.6 * (fz * 4.0 + fx * 3.0).sin())
            + 40.0 * ((x * 7 + y * 13 + z * 29) % 11) as f32 / 11.0
    });
    Volume {
        data,
        spacing,
        origin: [0.0; 3],
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 1.0, 0.0],
        slice_direction: [0.0, 0.0, 1.0],
        slices: vec![],
    }
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("onnx-test").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn compare_raw_with_python(model: &str, shape: &[usize]) {
    let mut m = OnnxModel::load(&fixtures().join(model), &cfg()).unwrap();
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
    let (oshape, out) = m.run_tensor(&data, shape).unwrap();
    let d = tmpdir();
    let inp = d.path().join("in.npy");
    let outp = d.path().join("out.npy");
    write_npy(&inp, &ArrayD::from_shape_vec(shape.to_vec(), data).unwrap()).unwrap();
    run_python(&[
        "run-ort",
        fixtures().join(model).join("model.onnx").to_str().unwrap(),
        inp.to_str().unwrap(),
        outp.to_str().unwrap(),
    ]);
    let py: ArrayD<f32> = read_npy(&outp).unwrap();
    assert_eq!(py.shape(), oshape.as_slice());
    let diff = max_abs_diff(&out, py.as_slice().unwrap());
    assert!(diff <= 1e-5, "{model}: max abs diff vs Python onnxruntime {diff}");
    // the output is not trivial
    assert!(out.iter().any(|v| v.abs() > 0.1), "{model}: output all ~0");
}

#[test]
fn raw_output_matches_python_onnxruntime_3d() {
    compare_raw_with_python("conv3d", &[1, 1, 9, 14, 11]);
}

#[test]
fn raw_output_matches_python_onnxruntime_2d() {
    compare_raw_with_python("conv2d", &[1, 1, 21, 17]);
}

/// Whole analysis vs the NumPy reference: model-grid input, blended scores and the final label map.
fn compare_with_reference(model: &str, vol: &Volume) -> Array3<u8> {
    compare_with_reference_modality(model, vol, None)
}

fn compare_with_reference_modality(model: &str, vol: &Volume, modality: Option<&str>) -> Array3<u8> {
    let d = tmpdir();
    let vpath = d.path().join("volume.npy");
    write_npy(&vpath, &vol.data).unwrap();
    let [sz, sy, sx] = vol.spacing.map(|v| v.to_string());
    run_python(&[
        "reference",
        fixtures().join(model).to_str().unwrap(),
        vpath.to_str().unwrap(),
        &sz,
        &sy,
        &sx,
        d.path().to_str().unwrap(),
    ]);
    let mut m = OnnxModel::load(&fixtures().join(model), &cfg()).unwrap();
    let input = m.preprocess(&[("image", vol)]);
    let ref_input: Array4<f32> = read_npy(d.path().join("model_input.npy")).unwrap();
    assert_eq!(input.shape(), ref_input.shape(), "{model}: model-grid input shape");
    let di = max_abs_diff(input.as_slice().unwrap(), ref_input.as_slice().unwrap());
    assert!(di <= 1e-5, "{model}: preprocessed input differs from NumPy by {di}");
    let scores = m.predict(input.view()).unwrap();
    let ref_scores: Array4<f32> = read_npy(d.path().join("model_scores.npy")).unwrap();
    assert_eq!(scores.shape(), ref_scores.shape(), "{model}: score shape");
    let ds = max_abs_diff(scores.as_slice().unwrap(), ref_scores.as_slice().unwrap());
    assert!(ds <= 1e-5, "{model}: blended scores differ from NumPy by {ds}");
    let labels = m.segment(&[("image", vol)], modality).unwrap();
    // 2D models run slice-streamed in `segment`: the same label map, bit for bit, as every
    // step on the whole volume
    let whole = m.segment_whole_volume(&[("image", vol)], modality).unwrap();
    assert_eq!(labels, whole, "{model}: segment and segment_whole_volume differ");
    let ref_labels: Array3<u8> = read_npy(d.path().join("labels.npy")).unwrap();
    assert_eq!(labels.dim(), vol.data.dim(), "{model}: label map not on the source grid");
    let mismatched = labels.iter().zip(ref_labels.iter()).filter(|(a, b)| a != b).count();
    // only exact score ties could flip a voxel; allow at most 1 in 10 000
    assert!(mismatched * 10_000 <= labels.len(), "{model}: {mismatched} of {} voxels differ from NumPy", labels.len());
    let fg = labels.iter().filter(|&&v| v == 1).count();
    assert!(fg > labels.len() / 50 && fg < labels.len() * 19 / 20, "{model}: degenerate segmentation ({fg} fg)");
    labels
}

#[test]
fn analysis_3d_matches_numpy_reference() {
    // 3-D sliding window (patch 8x12x10 on 13x29x23), no resampling
    compare_with_reference("conv3d", &volume((13, 29, 23), [2.0, 0.8, 0.9]));
}

#[test]
fn analysis_3d_with_resampling_and_postprocessing_matches_numpy_reference() {
    // spacing 2.0/0.8/0.9 -> 1.5/1.0/1.25: all three axes resampled there and back;
    // largest component + hole filling on label 1
    let labels = compare_with_reference("conv3d-pp", &volume((11, 30, 27), [2.0, 0.8, 0.9]));
    assert_eq!(count_components(&labels, 1), 1, "largest component not applied");
    // a bright spherical shell with a dark core (a hole) and a separate small bright blob
    let mut vol = volume((16, 30, 30), [2.0, 0.8, 0.9]);
    for ((z, y, x), v) in vol.data.indexed_iter_mut() {
        let d = |c: [f64; 3]| {
            ((z as f64 * 2.0 - c[0]).powi(2) + (y as f64 * 0.8 - c[1]).powi(2) + (x as f64 * 0.9 - c[2]).powi(2)).sqrt()
        };
        let r = d([16.0, 12.0, 13.5]);
        let blob = d([28.0, 21.0, 23.0]);
        *v = if (5.0..11.0).contains(&r) || blob < 3.0 { 100.0 } else { 0.0 } + 5.0 * ((z + 3 * y + 7 * x) % 5) as f32;
    }
    let labels = compare_with_reference("conv3d-pp", &vol);
    assert_eq!(labels[[8, 15, 15]], 1, "hole in the shell not filled");
    assert_eq!(labels[[14, 26, 25]], 0, "small separate blob not removed");
    assert_eq!(count_components(&labels, 1), 1);
}

#[test]
fn analysis_labels_output_ct_matches_numpy_reference() {
    // int64 label-map output (one-hot voting in overlaps), CT clip + scale, z resampled 2.0 -> 2.5 mm
    let mut vol = volume((15, 26, 24), [2.0, 0.8, 0.9]);
    vol.data.mapv_inplace(|v| v - 30.0);
    compare_with_reference_modality("conv3d-labels", &vol, Some("CT"));
}

#[test]
fn analysis_2d_probabilities_padded_matches_numpy_reference() {
    // probabilities output; 35x31 slices zero-padded to the 48x40 patch and cropped back
    compare_with_reference("conv2d-prob", &volume((4, 35, 31), [3.0, 0.7, 0.8]));
}

#[test]
fn analysis_2d_with_mirroring_matches_numpy_reference() {
    // 2-D: per-slice, y/x resampled to 1.1/0.9 mm, percentile normalisation, mirroring TTA
    compare_with_reference("conv2d", &volume((5, 37, 29), [3.0, 0.7, 0.8]));
}

#[test]
fn context_slices_2_5d_matches_numpy_reference() {
    // 2.5D: slices z-1, z, z+1 as three input channels (edges repeated); the model weights
    // previous and next slice differently, so a wrong channel order changes the labels
    let mut vol = volume((6, 21, 19), [2.5, 0.9, 0.9]);
    for ((z, y, x), v) in vol.data.indexed_iter_mut() {
        *v += 40.0 * ((z * 7 + y * 3 + x) % 11) as f32 / 11.0;
    }
    let labels = compare_with_reference("conv2d-ctx", &vol);
    let m = OnnxModel::load(&fixtures().join("conv2d-ctx"), &cfg()).unwrap();
    assert_eq!(m.preprocess(&[("image", &vol)]).dim().0, 3, "2.5D input must have 3 channels");
    assert_eq!(labels.dim(), (6, 21, 19));
}

#[test]
fn class_weights_shift_the_decision_as_the_numpy_reference_does() {
    // [output] class_weights: background weight 0.25 on logits (conv3d-pp-cw) grows the
    // foreground; foreground weight 0.6 on probabilities (conv2d-prob-cw) shrinks it.
    let fg = |l: &Array3<u8>| l.iter().filter(|&&v| v == 1).count();
    let vol = volume((11, 30, 27), [2.0, 0.8, 0.9]);
    let plain = compare_with_reference("conv3d-pp", &vol);
    let weighted = compare_with_reference("conv3d-pp-cw", &vol);
    assert!(fg(&weighted) > fg(&plain), "background weight 0.25 must add foreground: {} vs {}", fg(&weighted), fg(&plain));
    let vol = volume((4, 35, 31), [3.0, 0.7, 0.8]);
    let plain = compare_with_reference("conv2d-prob", &vol);
    let weighted = compare_with_reference("conv2d-prob-cw", &vol);
    assert!(fg(&weighted) < fg(&plain), "foreground weight 0.6 must remove foreground: {} vs {}", fg(&weighted), fg(&plain));
}

fn count_components(l: &Array3<u8>, v: u8) -> usize {
    let (nz, ny, nx) = l.dim();
    let mut seen = Array3::<bool>::from_elem(l.dim(), false);
    let mut n = 0;
    for start in ndarray::indices(l.dim()) {
        if l[start] != v || seen[start] {
            continue;
        }
        n += 1;
        let mut stack = vec![start];
        seen[start] = true;
        while let Some((z, y, x)) = stack.pop() {
            for dz in -1i64..=1 {
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (a, b, c) = (z as i64 + dz, y as i64 + dy, x as i64 + dx);
                        if a < 0 || b < 0 || c < 0 || a >= nz as i64 || b >= ny as i64 || c >= nx as i64 {
                            continue;
                        }
                        let p = (a as usize, b as usize, c as usize);
                        if l[p] == v && !seen[p] {
                            seen[p] = true;
                            stack.push(p);
                        }
                    }
                }
            }
        }
    }
    n
}

#[test]
fn slice_streamed_2d_segmentation_equals_the_whole_volume_steps() {
    // several windows per slice with overlap and mirroring (conv2d), 2.5D context at the volume
    // edges (conv2d-ctx), padding and probabilities with decision weights (conv2d-prob-cw);
    // more slices than the channels between the threads hold at once
    for (model, shape, spacing) in [
        ("conv2d", (40, 45, 38), [3.0, 0.7, 0.8]),
        ("conv2d-ctx", (23, 30, 27), [2.5, 0.9, 0.9]),
        ("conv2d-prob-cw", (19, 35, 31), [3.0, 0.7, 0.8]),
    ] {
        let mut vol = volume(shape, spacing);
        for ((z, y, x), v) in vol.data.indexed_iter_mut() {
            *v += 30.0 * ((z * 5 + y * 3 + x) % 7) as f32 / 7.0;
        }
        let mut m = OnnxModel::load(&fixtures().join(model), &cfg()).unwrap();
        m.reset_timing();
        let streamed = m.segment(&[("image", &vol)], None).unwrap();
        let streamed_runs = m.timing().runs;
        m.reset_timing();
        let whole = m.segment_whole_volume(&[("image", &vol)], None).unwrap();
        assert_eq!(m.timing().runs, streamed_runs, "{model}: both paths run the same windows");
        assert!(streamed_runs >= shape.0 as u64, "{model}: at least one run per slice");
        assert_eq!(streamed.dim(), vol.data.dim());
        let differ = streamed.iter().zip(whole.iter()).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{model}: {differ} voxels differ between the streamed and the whole-volume path");
        let fg = streamed.iter().filter(|&&v| v != 0).count();
        assert!(fg > 0 && fg < streamed.len(), "{model}: degenerate segmentation ({fg} fg)");
    }
}

#[test]
fn sliding_window_equals_whole_volume_for_translation_equivariant_model() {
    let mut m = OnnxModel::load(&fixtures().join("conv3d"), &cfg()).unwrap();
    let vol = volume((20, 40, 36), [1.0, 1.0, 1.0]);
    let input = m.preprocess(&[("image", &vol)]);
    let (c, nz, ny, nx) = input.dim();
    assert_eq!(m.manifest().patch_zyx(), [8, 12, 10]);
    // whole volume in one Session::run
    let (oshape, whole) = m.run_tensor(input.as_slice().unwrap(), &[1, c, nz, ny, nx]).unwrap();
    assert_eq!(oshape, vec![1, 2, nz, ny, nx]);
    m.reset_timing();
    let windowed = m.predict(input.view()).unwrap();
    assert!(m.timing().runs > 20, "expected many windows, got {}", m.timing().runs);
    let range = whole.iter().fold(0f32, |a, v| a.max(v.abs()));
    let diff = max_abs_diff(windowed.as_slice().unwrap(), &whole);
    // only the 1-voxel rim of each window (Gaussian weight <= exp(-8) relative) differs
    assert!(diff <= 1e-2 * range, "max diff {diff} vs output range {range}");
    let labels = |s: &[f32]| -> Vec<bool> {
        let n = nz * ny * nx;
        (0..n).map(|i| s[n + i] > s[i]).collect()
    };
    let (a, b) = (labels(windowed.as_slice().unwrap()), labels(&whole));
    let flips = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(flips * 1000 <= a.len(), "{flips} label flips");
}

#[test]
fn channel_mismatch_fails_the_job_with_both_named() {
    let mut a = create_analysis_with("dixon", &cfg()).unwrap();
    let vol = volume((6, 10, 10), [1.0, 1.0, 1.0]);
    let e = a.run(&vol).err().expect("must fail");
    let msg = e.to_string();
    assert!(matches!(e, SegmentError::Onnx(OnnxError::InputMismatch { .. })), "{msg}");
    assert!(msg.contains("water") && msg.contains("fat") && msg.contains("1 image"), "{msg}");
    // and the same model still works with the right channels afterwards (the node keeps running)
    let mut m = OnnxModel::load(&fixtures().join("dixon"), &cfg()).unwrap();
    let fat = volume((6, 10, 10), [1.0, 1.0, 1.0]);
    let l = m.segment(&[("water", &vol), ("fat", &fat)], Some("MR")).unwrap();
    assert_eq!(l.dim(), (6, 10, 10));
    let e = m.segment(&[("fat", &fat), ("water", &vol)], Some("MR")).err().unwrap().to_string();
    assert!(e.contains("[\"water\", \"fat\"]") && e.contains("fat (6, 10, 10), water"), "{e}");
    // a CT model offered an MR series
    let mut ct = OnnxModel::load(&fixtures().join("conv3d-labels"), &cfg()).unwrap();
    let e = ct.segment(&[("image", &vol)], Some("MR")).err().unwrap().to_string();
    assert!(e.contains("[\"ct\"]") && e.contains("Modality MR"), "{e}");
    assert!(ct.segment(&[("image", &vol)], Some("CT")).is_ok());
}

#[test]
fn graph_manifest_shape_mismatch_names_both() {
    let e = OnnxModel::load(&fixtures().join("fixed"), &cfg()).err().expect("must fail").to_string();
    assert!(e.contains("inference.patch_size[0] = 16") && e.contains("fixed size 8"), "{e}");
    assert!(e.contains("fixed/model.toml"), "{e}");
}

#[test]
fn analysis_trait_describes_segments() {
    let mut a = create_analysis_with("conv3d", &cfg()).unwrap();
    assert_eq!(a.name(), "conv3d");
    let segs = a.segments();
    assert_eq!(segs.len(), 1);
    assert_eq!((segs[0].label_value, segs[0].property_type.value.as_str()), (1, "91727004"));
    assert_eq!(a.algorithm().family.value, "123110");
    let vol = volume((9, 16, 15), [1.0, 1.0, 1.0]);
    let l = a.run(&vol).unwrap();
    assert_eq!(l.dim(), (9, 16, 15));
    assert!(l.iter().all(|&v| v <= 1));
}

#[test]
fn list_models_reports_each_model() {
    let d = tmpdir();
    for m in ["conv3d", "fixed"] {
        let dst = d.path().join(m);
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["model.toml", "model.onnx"] {
            std::fs::copy(fixtures().join(m).join(f), dst.join(f)).unwrap();
        }
    }
    let bad = d.path().join("broken");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("model.toml"), "[model]\nversion = \"1\"\n").unwrap();
    std::fs::create_dir_all(d.path().join("not-a-model")).unwrap();
    let mut c = cfg();
    c.models_dir = d.path().to_path_buf();
    let list = onnx::list_models(&c);
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["broken", "conv3d", "fixed"]);
    assert!(!list[0].loads && list[0].error.as_deref().unwrap().contains("broken/model.toml"), "{:?}", list[0]);
    assert!(list[1].loads && list[1].error.is_none(), "{:?}", list[1]);
    assert_eq!(list[1].labels, ["Muscle"]);
    assert_eq!(list[1].execution_providers[0].name, "cpu");
    assert!(list[1].execution_providers[0].active);
    assert!(!list[2].loads && list[2].error.as_deref().unwrap().contains("patch_size"), "{:?}", list[2]);
}

#[test]
fn unavailable_gpu_provider_is_reported_and_fatal_only_with_require_gpu() {
    let mut c = cfg();
    c.execution_providers = vec!["cuda".into(), "cpu".into()];
    // the CPU-only library (or a build without the feature) cannot provide CUDA
    let m = OnnxModel::load(&fixtures().join("conv3d"), &c).unwrap();
    let eps = m.execution_providers();
    assert_eq!(eps.len(), 2);
    assert!(!eps[0].active && eps[0].name == "cuda" && eps[0].error.is_some(), "{eps:?}");
    assert!(eps[1].active, "{eps:?}");
    assert_eq!(runtime::execution_provider_report().len(), 2);
    c.require_gpu = true;
    let e = OnnxModel::load(&fixtures().join("conv3d"), &c).err().expect("must fail").to_string();
    assert!(e.contains("require_gpu") && e.contains("cuda"), "{e}");
}

#[test]
fn workers_each_own_a_session_and_agree() {
    let vol = std::sync::Arc::new(volume((10, 24, 20), [1.0, 1.0, 1.0]));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let vol = vol.clone();
            let c = cfg();
            std::thread::spawn(move || {
                let mut a = create_analysis_with("conv3d", &c).expect("load in worker");
                (0..2).map(|_| a.run(&vol).expect("run")).collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<Array3<u8>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &results {
        for l in r {
            assert_eq!(l, &results[0][0]);
        }
    }
    assert!(results[0][0].iter().any(|&v| v == 1));
}

// ------------------------------------------------------------------ jobs: which images a model gets

/// A job as assemble hands it on: header with Modality and ImageType, primary volume, and the
/// paired Dixon channels (`channels`, empty for a lone series).
fn study_job(modality: &str, image_type: &str, vol: &Volume, channels: Vec<(ChannelKind, Volume)>) -> StudyJob {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let mut ds = dicom_object::InMemDicomObject::new_empty();
    ds.put(DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from(modality)));
    ds.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(image_type.split('\\').map(String::from).collect()),
    ));
    let header = SeriesHeader {
        study_instance_uid: "1.2.3".into(),
        series_instance_uid: "1.2.3.4".into(),
        frame_of_reference_uid: "1.2.3.5".into(),
        modality: modality.into(),
        dataset: Arc::new(ds),
    };
    StudyJob {
        job_id: "job".into(),
        version: 1,
        header: header.clone(),
        volume: Arc::new(vol.clone()),
        job_dir: std::env::temp_dir(),
        channels: channels
            .into_iter()
            .map(|(kind, v)| Channel { kind, header: header.clone(), volume: Arc::new(v) })
            .collect(),
    }
}

fn input_mismatch(e: SegmentError) -> String {
    let msg = e.to_string();
    assert!(matches!(e, SegmentError::Onnx(OnnxError::InputMismatch { .. })), "{msg}");
    msg
}

#[test]
fn paired_dixon_job_gives_a_water_fat_model_both_images_in_manifest_order() {
    let water = volume((6, 10, 10), [1.0, 1.0, 1.0]);
    // a different image (each channel is z-scored on its own, so a scaled copy would not do)
    let mut fat = volume((6, 10, 10), [1.0, 1.0, 1.0]);
    fat.data = Array3::from_shape_fn((6, 10, 10), |(z, y, x)| if (x + 2 * y + 3 * z) % 7 < 3 { 300.0 } else { 10.0 * x as f32 });
    // channels listed fat first: the manifest order (water, fat) decides what goes where
    let job = study_job(
        "MR",
        "DERIVED\\PRIMARY\\DIXON\\FAT",
        &fat,
        vec![(ChannelKind::Fat, fat.clone()), (ChannelKind::Water, water.clone())],
    );
    let mut a = create_analysis_with("dixon", &cfg()).unwrap();
    let got = segment_job(a.as_mut(), job).expect("a paired job runs the two-channel model").labels;
    let mut m = OnnxModel::load(&fixtures().join("dixon"), &cfg()).unwrap();
    let want = m.segment(&[("water", &water), ("fat", &fat)], Some("MR")).unwrap();
    assert_eq!(*got, want, "the node must feed water, fat in the manifest's order");
    let swapped = m.segment(&[("water", &fat), ("fat", &water)], Some("MR")).unwrap();
    assert_ne!(want, swapped, "the fixture must tell the channels apart, or this test proves nothing");
}

#[test]
fn a_job_without_the_images_a_model_needs_is_refused_naming_both() {
    let vol = volume((6, 10, 10), [1.0, 1.0, 1.0]);
    // a water + fat model and a lone water series (its partners never came)
    let mut dixon = create_analysis_with("dixon", &cfg()).unwrap();
    let lone_water = study_job("MR", "DERIVED\\PRIMARY\\DIXON\\WATER", &vol, vec![]);
    let msg = input_mismatch(segment_job(dixon.as_mut(), lone_water).err().expect("must be refused"));
    assert!(msg.contains("[\"water\", \"fat\"]") && msg.contains("water (6, 10, 10)"), "{msg}");
    // a CT model and an MR job (Modality from the header)
    let mut ct = create_analysis_with("conv3d-labels", &cfg()).unwrap();
    let msg = input_mismatch(segment_job(ct.as_mut(), study_job("MR", "ORIGINAL\\PRIMARY", &vol, vec![])).err().unwrap());
    assert!(msg.contains("[\"ct\"]") && msg.contains("Modality MR"), "{msg}");
    assert!(segment_job(ct.as_mut(), study_job("CT", "ORIGINAL\\PRIMARY\\AXIAL", &vol, vec![])).is_ok());
    // a model for any image runs on the primary of a paired job
    let mut any = create_analysis_with("conv3d", &cfg()).unwrap();
    let paired = study_job("MR", "DERIVED\\PRIMARY\\DIXON\\WATER", &vol, vec![(ChannelKind::Water, vol.clone()), (ChannelKind::Fat, vol.clone())]);
    assert!(segment_job(any.as_mut(), paired).is_ok());
}

#[test]
fn the_shipped_water_model_runs_on_dixon_water_and_refuses_other_contrasts() {
    let cfg = SegmentConfig { models_dir: crate_root().join("models"), ..cfg() };
    let mut a = create_analysis_with("lumbar-vertebrae-mr", &cfg).unwrap();
    let vol = volume((3, 40, 40), [1.0, 1.0, 1.0]);
    // a lone Dixon water series (Siemens ImageType), and the water channel of a paired job
    assert!(segment_job(a.as_mut(), study_job("MR", "DERIVED\\PRIMARY\\DIXON\\WATER", &vol, vec![])).is_ok());
    let paired = study_job(
        "MR",
        "DERIVED\\PRIMARY\\DIXON\\WATER",
        &vol,
        vec![(ChannelKind::Water, vol.clone()), (ChannelKind::Fat, vol.clone()), (ChannelKind::InPhase, vol.clone())],
    );
    assert!(segment_job(a.as_mut(), paired).is_ok());
    // a lone fat series and a plain (non-Dixon) lumbar MR series: not what the model was trained on
    for (image_type, offered) in [("DERIVED\\PRIMARY\\DIXON\\FAT", "fat (3, 40, 40)"), ("ORIGINAL\\PRIMARY\\M\\ND", "image (3, 40, 40)")] {
        let msg = input_mismatch(segment_job(a.as_mut(), study_job("MR", image_type, &vol, vec![])).err().expect(image_type));
        assert!(msg.contains("[\"water\"]") && msg.contains(offered) && msg.contains("Modality MR"), "{image_type}: {msg}");
    }
}
