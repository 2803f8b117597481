//! Render the built-in tissue analyses on the shared real data as PNG overlays for
//! docs/TISSUE.md and print muscle and fat cross-sectional areas per leg.
//!
//! ```text
//! MYONODE_DATA=../shared/data cargo run --example tissue_overlays [OUT_DIR]
//! ```
//! `OUT_DIR` defaults to `docs/images`. Inputs (read-only): `volumes/thigh-calf-mr/{thigh,calf}.nii.gz`
//! (single fat-bright images, so `dixon-composition-mr` runs its intensity model) and
//! `volumes/ct-abdomen-pelvis-3mm/ct.nii.gz` (`tissue-composition-ct` with the trunk allowed, to
//! show why the trunk is refused by default). Images are in radiological convention (patient's
//! right on the image's left, anterior at the top), one slice at the middle of the volume; red =
//! skeletal muscle, yellow = adipose tissue, blue = bone.

#[path = "../tests/nifti/mod.rs"]
mod nifti;

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use ndarray::Array3;

use myonode::segment::tissue_ct::{TissueCt, ADIPOSE_LABEL, BONE_LABEL, MUSCLE_LABEL};
use myonode::segment::tissue_mr::{IntensityContrast, TissueMr};
use myonode::volume::Volume;

/// Cross-sectional areas (cm²) of muscle and fat per leg on slice `z`: (right, left), split at
/// the sagittal plane through the centroid of all labelled voxels (as the measure stage does).
fn areas_per_leg(vol: &Volume, labels: &Array3<u8>, z: usize) -> [[f64; 2]; 2] {
    let lps_x =
        |zz: usize, y: usize, x: usize| vol.voxel_to_patient(zz as f64, y as f64, x as f64)[0];
    let (mut n, mut sx) = (0f64, 0f64);
    for ((zz, y, x), &l) in labels.indexed_iter() {
        if l != 0 {
            n += 1.0;
            sx += lps_x(zz, y, x);
        }
    }
    let midline = sx / n.max(1.0);
    let px_cm2 = vol.spacing[1] * vol.spacing[2] / 100.0;
    let mut out = [[0.0; 2]; 2]; // [class muscle/fat][side right/left]
    for ((zz, y, x), &l) in labels.indexed_iter() {
        if zz != z || !(l == MUSCLE_LABEL || l == ADIPOSE_LABEL) {
            continue;
        }
        let class = (l == ADIPOSE_LABEL) as usize;
        let side = (lps_x(z, y, x) > midline) as usize; // LPS +x = patient's left
        out[class][side] += px_cm2;
    }
    out
}

/// Slice `z` as an RGB image, grey = intensity windowed to [lo, hi], labels blended in.
fn overlay(vol: &Volume, labels: &Array3<u8>, z: usize, lo: f32, hi: f32) -> RgbImage {
    let (_, ny, nx) = vol.shape();
    // radiological display: LPS x increasing to the right, LPS y (posterior) increasing downwards
    let flip_x = vol.row_direction[0] < 0.0;
    let flip_y = vol.column_direction[1] < 0.0;
    RgbImage::from_fn(nx as u32, ny as u32, |c, r| {
        let x = if flip_x {
            nx - 1 - c as usize
        } else {
            c as usize
        };
        let y = if flip_y {
            ny - 1 - r as usize
        } else {
            r as usize
        };
        let g = ((vol.data[[z, y, x]] - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0;
        let colour = match labels[[z, y, x]] {
            MUSCLE_LABEL => Some([220.0, 40.0, 40.0]),
            ADIPOSE_LABEL => Some([240.0, 220.0, 40.0]),
            BONE_LABEL => Some([60.0, 120.0, 255.0]),
            _ => None,
        };
        let px = match colour {
            Some(c) => [
                0.55 * g + 0.45 * c[0],
                0.55 * g + 0.45 * c[1],
                0.55 * g + 0.45 * c[2],
            ],
            None => [g, g, g],
        };
        Rgb(px.map(|v| v.round() as u8))
    })
}

/// Greyscale slice next to its overlay, scaled up `scale` times (nearest neighbour).
fn side_by_side(
    vol: &Volume,
    labels: &Array3<u8>,
    z: usize,
    lo: f32,
    hi: f32,
    scale: u32,
) -> RgbImage {
    let empty = Array3::<u8>::zeros(labels.dim());
    let a = overlay(vol, &empty, z, lo, hi);
    let b = overlay(vol, labels, z, lo, hi);
    let (w, h) = a.dimensions();
    RgbImage::from_fn(2 * w * scale, h * scale, |c, r| {
        let (c, r) = (c / scale, r / scale);
        if c < w {
            *a.get_pixel(c, r)
        } else {
            *b.get_pixel(c - w, r)
        }
    })
}

fn percentile(data: &Array3<f32>, p: f64) -> f32 {
    let mut v: Vec<f32> = data
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((p / 100.0) * (v.len() - 1) as f64) as usize]
}

fn main() {
    let data = std::env::var_os("MYONODE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("docs/images"));
    std::fs::create_dir_all(&out).expect("create the output directory");

    println!("| region | slice | muscle right cm² | muscle left cm² | fat right cm² | fat left cm² | thresholds (body, fat) |");
    println!("|---|---|---|---|---|---|---|");
    for name in ["thigh", "calf"] {
        let path = data.join(format!("volumes/thigh-calf-mr/{name}.nii.gz"));
        let vol = nifti::read_nifti(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut mr = TissueMr::new();
        let labels = mr
            .classify_intensity(&vol, IntensityContrast::FatDark)
            .expect("intensity model");
        let z = vol.shape().0 / 2;
        let a = areas_per_leg(&vol, &labels, z);
        let (tb, tf) = mr.last_thresholds.unwrap();
        println!(
            "| {name} MR | {z} | {:.1} | {:.1} | {:.1} | {:.1} | {tb:.0}, {:.0} |",
            a[0][0],
            a[0][1],
            a[1][0],
            a[1][1],
            tf.unwrap()
        );
        let img = side_by_side(&vol, &labels, z, 0.0, percentile(&vol.data, 99.5), 2);
        img.save(out.join(format!("{name}_mr_tissue.png")))
            .expect("write PNG");
    }
    let ct = nifti::read_nifti(&data.join("volumes/ct-abdomen-pelvis-3mm/ct.nii.gz"))
        .unwrap_or_else(|e| panic!("{e}"));
    let labels = TissueCt::new(200.0, true)
        .unwrap()
        .classify(&ct)
        .expect("CT analysis");
    let z = ct.shape().0 / 2;
    side_by_side(&ct, &labels, z, -250.0, 250.0, 3)
        .save(out.join("ct_abdomen_tissue.png"))
        .expect("write PNG");
    println!(
        "\nwrote {}/{{thigh,calf}}_mr_tissue.png and ct_abdomen_tissue.png",
        out.display()
    );
}
