//! Minimal NIfTI-1 reader for test data (`.nii.gz`, single file, little endian), returning
//! a [`Volume`] in DICOM conventions.
//!
//! Format: NIfTI-1 header of 348 bytes (NIfTI Data Format Working Group, `nifti1.h`), data
//! from `vox_offset` (at least 352 for `n+1` files; some writers store 0, read as 352) in
//! Fortran order (`i` fastest). The voxel→world map is the sform (`srow_x/y/z`) when
//! `sform_code > 0`, else the qform quaternion (`qform_code > 0`), else `pixdim` scaling.
//! NIfTI world coordinates are RAS+; they are turned into DICOM LPS by negating x and y.
//! The array is returned as `(nz, ny, nx) = (k, j, i)`, so `row_direction` is the `i` axis,
//! `column_direction` the `j` axis and `slice_direction` the `k` axis; values are scaled by
//! `scl_slope`/`scl_inter` when the slope is finite and non-zero.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;

use ndarray::Array3;

use myonode::volume::Volume;

/// Read a `.nii` or `.nii.gz` file. Errors are strings naming the problem.
pub fn read_nifti(path: &Path) -> Result<Volume, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: gzip: {e}", path.display()))?;
        out
    } else {
        raw
    };
    parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(b: &[u8]) -> Result<Volume, String> {
    if b.len() < 352 {
        return Err("shorter than a NIfTI-1 header".into());
    }
    let i32_at = |o: usize| i32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let i16_at = |o: usize| i16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    let f32_at = |o: usize| f32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    if i32_at(0) != 348 {
        return Err(format!(
            "sizeof_hdr {} (only little-endian NIfTI-1 is supported)",
            i32_at(0)
        ));
    }
    if &b[344..347] != b"n+1" {
        return Err("magic is not n+1 (single-file NIfTI-1)".into());
    }
    let ndim = i16_at(40);
    if !(3..=4).contains(&ndim) {
        return Err(format!("dim[0] = {ndim}, expected a 3-D volume"));
    }
    let (ni, nj, nk) = (
        i16_at(42) as usize,
        i16_at(44) as usize,
        i16_at(46) as usize,
    );
    if ndim == 4 && i16_at(48) > 1 {
        return Err("4-D volumes with more than one frame are not supported".into());
    }
    let datatype = i16_at(70);
    let pixdim = [f32_at(80) as f64, f32_at(84) as f64, f32_at(88) as f64];
    let mut offset = f32_at(108) as usize;
    if offset < 352 {
        offset = 352;
    }
    let (slope, inter) = (f32_at(112), f32_at(116));
    let n = ni * nj * nk;
    let size = match datatype {
        2 | 256 => 1,
        4 | 512 => 2,
        8 | 16 => 4,
        64 => 8,
        other => return Err(format!("datatype {other} not supported")),
    };
    if b.len() < offset + n * size {
        return Err(format!(
            "data truncated: {} bytes, need {}",
            b.len(),
            offset + n * size
        ));
    }
    let d = &b[offset..offset + n * size];
    let value = |idx: usize| -> f32 {
        let o = idx * size;
        match datatype {
            2 => d[o] as f32,
            256 => d[o] as i8 as f32,
            4 => i16::from_le_bytes([d[o], d[o + 1]]) as f32,
            512 => u16::from_le_bytes([d[o], d[o + 1]]) as f32,
            8 => i32::from_le_bytes(d[o..o + 4].try_into().unwrap()) as f32,
            16 => f32::from_le_bytes(d[o..o + 4].try_into().unwrap()),
            _ => f64::from_le_bytes(d[o..o + 8].try_into().unwrap()) as f32,
        }
    };
    let scale = slope.is_finite() && slope != 0.0;
    let data = Array3::from_shape_fn((nk, nj, ni), |(k, j, i)| {
        let v = value(i + ni * (j + nj * k));
        if scale {
            v * slope + inter
        } else {
            v
        }
    });
    // voxel → RAS affine: columns = i, j, k axis vectors (mm per voxel), plus offset
    let (cols, origin_ras) = if i16_at(254) > 0 {
        let row = |o: usize| {
            [
                f32_at(o) as f64,
                f32_at(o + 4) as f64,
                f32_at(o + 8) as f64,
                f32_at(o + 12) as f64,
            ]
        };
        let (x, y, z) = (row(280), row(296), row(312));
        (
            [[x[0], y[0], z[0]], [x[1], y[1], z[1]], [x[2], y[2], z[2]]],
            [x[3], y[3], z[3]],
        )
    } else if i16_at(252) > 0 {
        let (qb, qc, qd) = (f32_at(256) as f64, f32_at(260) as f64, f32_at(264) as f64);
        let qa = (1.0 - (qb * qb + qc * qc + qd * qd)).max(0.0).sqrt();
        let qfac = if f32_at(76) < 0.0 { -1.0 } else { 1.0 };
        let r = [
            [
                qa * qa + qb * qb - qc * qc - qd * qd,
                2.0 * (qb * qc - qa * qd),
                2.0 * (qb * qd + qa * qc),
            ],
            [
                2.0 * (qb * qc + qa * qd),
                qa * qa + qc * qc - qb * qb - qd * qd,
                2.0 * (qc * qd - qa * qb),
            ],
            [
                2.0 * (qb * qd - qa * qc),
                2.0 * (qc * qd + qa * qb),
                qa * qa + qd * qd - qb * qb - qc * qc,
            ],
        ];
        let col = |c: usize, s: f64| [r[0][c] * s, r[1][c] * s, r[2][c] * s];
        (
            [
                col(0, pixdim[0]),
                col(1, pixdim[1]),
                col(2, pixdim[2] * qfac),
            ],
            [f32_at(268) as f64, f32_at(272) as f64, f32_at(276) as f64],
        )
    } else {
        (
            [
                [pixdim[0], 0.0, 0.0],
                [0.0, pixdim[1], 0.0],
                [0.0, 0.0, pixdim[2]],
            ],
            [0.0; 3],
        )
    };
    let to_lps = |v: [f64; 3]| [-v[0], -v[1], v[2]];
    let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let unit = |v: [f64; 3]| {
        let n = norm(v);
        [v[0] / n, v[1] / n, v[2] / n]
    };
    if cols.iter().any(|c| norm(*c) == 0.0) {
        return Err("degenerate voxel-to-world matrix".into());
    }
    Ok(Volume {
        data,
        spacing: [norm(cols[2]), norm(cols[1]), norm(cols[0])],
        origin: to_lps(origin_ras),
        row_direction: unit(to_lps(cols[0])),
        column_direction: unit(to_lps(cols[1])),
        slice_direction: unit(to_lps(cols[2])),
        slices: vec![],
    })
}

/// Root of the shared test data: `MYONODE_DATA`, else `<crate>/../shared/data`.
pub fn data_root() -> std::path::PathBuf {
    std::env::var_os("MYONODE_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}
