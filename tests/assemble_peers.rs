//! Our volumes against peers, in one coordinate convention:
//! * dicom2nifti's own ground-truth NIfTIs shipped with the awkward cases (values + affine);
//! * `dcm2niix` (Debian package `dcm2niix`, installed by scripts/setup.sh) run on the real series.
//!
//! Convention: NIfTI affines map voxel (i, j, k) to RAS mm; our [`Volume`] maps (x, y, z) to
//! LPS mm (DICOM PS3.3 C.7.6.2.1.1); RAS = diag(−1, −1, 1) · LPS. Every NIfTI voxel centre is
//! converted to LPS and then to our fractional index, which must be a grid point (within
//! 1e-3 voxel) inside our volume holding the same value (relative 1e-3).

mod common;
use common::{data_dir, files_in};
use std::path::{Path, PathBuf};
use std::process::Command;

use myonode::assemble::{build_volume, plan_series};
use myonode::config::AssembleConfig;
use myonode::volume::Volume;

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

/// Load a NIfTI with nibabel: (affine 4x4 row-major, shape, voxel values in C order of (i, j, k)).
fn load_nifti(path: &Path) -> ([[f64; 4]; 4], Vec<usize>, Vec<f64>) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let script = r#"
import sys, json, nibabel as nib, numpy as np
img = nib.load(sys.argv[1])
a = np.asarray(img.dataobj, dtype='<f8')
a = a.reshape(a.shape[:3])
a.tofile(sys.argv[2])
print(json.dumps({"affine": img.affine.tolist(), "shape": list(a.shape)}))
"#;
    let out = Command::new(python()).arg("-c").arg(script).arg(path).arg(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut affine = [[0.0; 4]; 4];
    for r in 0..4 {
        for c in 0..4 {
            affine[r][c] = j["affine"][r][c].as_f64().unwrap();
        }
    }
    let shape: Vec<usize> = j["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let bytes = std::fs::read(tmp.path()).unwrap();
    let values = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
    (affine, shape, values)
}

/// Compare our volume with a NIfTI in one convention. NIfTI's affine maps voxel (i, j, k) to
/// RAS mm; ours maps (x, y, z) to LPS mm, and RAS = diag(-1, -1, 1) · LPS. For every NIfTI
/// voxel, its RAS centre is converted to LPS and then to our fractional index, which must be
/// an exact grid point (within 1e-3 voxel) inside our volume holding the same value.
fn assert_same_as_nifti(v: &Volume, nifti: &Path) {
    assert_same_as_nifti_strided(v, nifti, 1, 1e-3)
}

/// As [`assert_same_as_nifti`], values of every `stride`-th voxel along k, grid points matched
/// within `tol` voxel.
fn assert_same_as_nifti_strided(v: &Volume, nifti: &Path, stride: usize, tol: f64) {
    let (a, shape, values) = load_nifti(nifti);
    let (nz, ny, nx) = v.shape();
    assert_eq!(shape.iter().product::<usize>(), nz * ny * nx, "{}: voxel count", nifti.display());
    // our LPS axes as columns: x → row_direction·sx, y → column_direction·sy, z → slice_direction·sz
    let cols = [
        v.row_direction.map(|c| c * v.spacing[2]),
        v.column_direction.map(|c| c * v.spacing[1]),
        v.slice_direction.map(|c| c * v.spacing[0]),
    ];
    let m = [[cols[0][0], cols[1][0], cols[2][0]], [cols[0][1], cols[1][1], cols[2][1]], [cols[0][2], cols[1][2], cols[2][2]]];
    let inv = invert3(m);
    let to_ours = |i: f64, j: f64, k: f64| {
        let ras = [0, 1, 2].map(|r| a[r][0] * i + a[r][1] * j + a[r][2] * k + a[r][3]);
        let lps = [-ras[0], -ras[1], ras[2]];
        let d = [lps[0] - v.origin[0], lps[1] - v.origin[1], lps[2] - v.origin[2]];
        [0, 1, 2].map(|r| inv[r][0] * d[0] + inv[r][1] * d[1] + inv[r][2] * d[2])
    };
    let (si, sj, sk) = (shape[0], shape[1], shape[2]);
    let mut mismatches = 0usize;
    for i in 0..si {
        for j in 0..sj {
            for k in (0..sk).step_by(stride) {
                let q = to_ours(i as f64, j as f64, k as f64);
                let r = q.map(|x| x.round());
                assert!(
                    q.iter().zip(&r).all(|(x, y)| (x - y).abs() < tol),
                    "{}: NIfTI voxel ({i},{j},{k}) lands between our grid points at {q:?}",
                    nifti.display()
                );
                let (x, y, z) = (r[0] as isize, r[1] as isize, r[2] as isize);
                assert!(
                    (0..nx as isize).contains(&x) && (0..ny as isize).contains(&y) && (0..nz as isize).contains(&z),
                    "{}: NIfTI voxel ({i},{j},{k}) maps outside our volume: {r:?}",
                    nifti.display()
                );
                let ours = v.data[[z as usize, y as usize, x as usize]] as f64;
                let theirs = values[(i * sj + j) * sk + k];
                if (ours - theirs).abs() > 1e-3 * theirs.abs().max(1.0) {
                    mismatches += 1;
                }
            }
        }
    }
    assert_eq!(mismatches, 0, "{}: voxel values differ", nifti.display());
}

fn invert3(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    assert!(det.abs() > 1e-12, "singular geometry");
    let c = |r1: usize, c1: usize, r2: usize, c2: usize| m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1];
    [
        [c(1, 1, 2, 2) / det, -c(0, 1, 2, 2) / det, c(0, 1, 1, 2) / det],
        [-c(1, 0, 2, 2) / det, c(0, 0, 2, 2) / det, -c(0, 0, 1, 2) / det],
        [c(1, 0, 2, 1) / det, -c(0, 0, 2, 1) / det, c(0, 0, 1, 1) / det],
    ]
}

/// dicom2nifti's ground truths (plain and reoriented) against our volumes: same voxels, same
/// patient positions. The cases lack FrameOfReferenceUID, so `plan_series` + `decode` are used.
#[test]
fn volumes_equal_dicom2nifti_ground_truth_in_values_and_affine() {
    let cases = [
        ("compressed-j2k/001", "compressed-j2k/001_ground_truth", 2),
        ("compressed-jpeg/001", "compressed-jpeg/001_ground_truth", 2),
        ("slicecount/001", "slicecount/001_ground_truth", 2),
        ("enhanced-mr-philips/001", "enhanced-mr-philips/001_ground_truth", 3),
        ("enhanced-mr-philips/001_implicit", "enhanced-mr-philips/001_implicit_ground_truth", 3),
    ];
    for (case, gt, min) in cases {
        let v = plan_series(&awkward(case), &cfg(min)).unwrap().decode().unwrap();
        for suffix in ["", "_reoriented"] {
            assert_same_as_nifti(&v, &data_dir().join("awkward").join(format!("{gt}{suffix}.nii.gz")));
        }
    }
}

/// Run dcm2niix on a series folder; the single NIfTI it writes (uncompressed, no sidecar).
fn dcm2niix(series: &Path, out: &Path) -> PathBuf {
    let ok = Command::new("dcm2niix").arg("-h").output().is_ok();
    assert!(ok, "dcm2niix not found in PATH (apt-get install dcm2niix; scripts/setup.sh installs it)");
    let o = Command::new("dcm2niix")
        .args(["-z", "n", "-b", "n", "-f", "%s_%j", "-o"])
        .arg(out)
        .arg(series)
        .output()
        .unwrap();
    assert!(o.status.success(), "dcm2niix failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let nii: Vec<PathBuf> = files_in(out).into_iter().filter(|p| p.extension().is_some_and(|e| e == "nii")).collect();
    assert_eq!(nii.len(), 1, "dcm2niix wrote {nii:?}\n{}", String::from_utf8_lossy(&o.stdout));
    nii.into_iter().next().unwrap()
}

/// The real series against dcm2niix: same grid (affine) and same voxel values (dcm2niix keeps
/// stored values with scl_slope/scl_inter, which nibabel applies: HU for the CT). Grid points
/// must agree within 0.01 voxel: dcm2niix derives the slice spacing from the first and last
/// positions, we use the median step (both within the 0.2 mm uniformity check); on the ADC
/// series this differs by 3 µm over 20 slices (0.001 voxel).
#[test]
fn real_series_equal_dcm2niix_in_geometry_and_values() {
    for (series, stride) in [("ct-abdomen-j2k", 1), ("mr-pelvis-adc", 1), ("mr-knee-dess-echo1", 5)] {
        let dir = data_dir().join("series").join(series);
        let tmp = tempfile::tempdir().unwrap();
        let nii = dcm2niix(&dir, tmp.path());
        let (_, v) = build_volume(&files_in(&dir), &cfg(3)).unwrap();
        assert_same_as_nifti_strided(&v, &nii, stride, 1e-2);
    }
}

/// Stored values (no Modality LUT) of every frame, decoded by dicom-pixeldata (our decode path).
fn ours_stored(path: &Path) -> Vec<i32> {
    use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
    let obj = dicom_object::open_file(path).unwrap();
    let decoded = obj.decode_pixel_data().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decoded.to_vec_with_options::<i32>(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None)).unwrap()
}

/// Stored values of every frame decoded by pydicom (pylibjpeg-libjpeg for JPEG lossless,
/// pyjpegls for JPEG-LS, pillow/openjpeg for JPEG 2000), with the transfer syntax UID.
fn pydicom_stored(path: &Path) -> (String, Vec<i32>) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let script = r#"
import sys, pydicom, numpy as np
ds = pydicom.dcmread(sys.argv[1])
np.asarray(ds.pixel_array, dtype='<i4').tofile(sys.argv[2])
print(ds.file_meta.TransferSyntaxUID)
"#;
    let out = Command::new(python()).arg("-c").arg(script).arg(path).arg(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(tmp.path()).unwrap();
    let ts = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (ts, bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect())
}

/// Every lossless compressed file in the test data decodes to exactly pydicom's values:
/// JPEG 2000 lossless (.90; real CT and MR), JPEG lossless process 14 (.70), JPEG-LS lossless
/// (.80, through the `charls` feature), and the JPEG-LS object equals its uncompressed twin.
#[test]
fn lossless_decodes_equal_pydicom_bit_for_bit() {
    let d = data_dir();
    let mut files: Vec<PathBuf> = files_in(&d.join("series/ct-abdomen-j2k")).into_iter().take(3).collect();
    files.extend(awkward("compressed-j2k/001"));
    files.extend(awkward("compressed-jpeg/001"));
    let jpeg_ls = d.join("awkward/enhanced-single/emri_small_jpeg_ls_lossless.dcm");
    files.push(jpeg_ls.clone());
    let mut syntaxes = std::collections::BTreeSet::new();
    for f in &files {
        let (ts, theirs) = pydicom_stored(f);
        let ours = ours_stored(f);
        assert_eq!(ours.len(), theirs.len(), "{}", f.display());
        assert!(ours == theirs, "{} ({ts}): decoded values differ from pydicom", f.display());
        syntaxes.insert(ts);
    }
    let expected: std::collections::BTreeSet<String> =
        ["1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"].iter().map(|s| s.to_string()).collect();
    assert_eq!(syntaxes, expected);
    let native = d.join("awkward/enhanced-single/emri_small.dcm");
    assert_eq!(ours_stored(&jpeg_ls), ours_stored(&native), "JPEG-LS lossless equals the uncompressed object");
}
