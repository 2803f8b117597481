//! Preview image of a job: the segmentation overlaid on the middle slice of the source
//! volume, written as `preview.png` into the job directory by the encode stage and served by
//! `/api/jobs/{id}/preview.png`.
//!
//! Rendering: slice `z = nz / 2` of `Volume::data` (`[z][y][x]`, rows top to bottom as
//! stored), grey levels windowed linearly between the 1st and 99th percentile of that slice,
//! each labelled pixel blended with its segment's display colour (`color_rgb`, alpha
//! [`FILL_ALPHA`]) and segment borders (4-neighbourhood) drawn opaque. Pixels are resampled
//! to square pixels using the row/column spacing (`spacing[1]` = row spacing along y,
//! `spacing[2]` = column spacing along x, mm) so anatomy keeps its proportions, and the longer
//! side is limited to [`MAX_SIDE`] pixels.

use std::path::{Path, PathBuf};

use image::{imageops, ImageEncoder, Rgb, RgbImage};
use ndarray::{Array3, ArrayView2, Axis};

use crate::pipeline::messages::{SegmentDescription, Segmentation};
use crate::volume::Volume;

/// File name of the preview in the job directory.
pub const PREVIEW_FILE: &str = "preview.png";
/// Opacity of the segment fill over the grey image (0..1).
pub const FILL_ALPHA: f32 = 0.4;
/// Largest width or height of the preview, pixels.
pub const MAX_SIDE: u32 = 512;

/// Errors of preview rendering.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// Volume and label map differ in shape, or the volume is empty.
    #[error("cannot render a preview: {0}")]
    Shape(String),
    /// PNG encoding failed.
    #[error("PNG encoding: {0}")]
    Png(#[from] image::ImageError),
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Render the middle slice of `volume` with `labels` (same `(nz, ny, nx)` shape) overlaid in
/// the colours of `segments`. Labels without a description are drawn yellow.
///
/// # Errors
/// [`PreviewError::Shape`] if the shapes differ or the volume has no voxels.
pub fn render(volume: &Volume, labels: &Array3<u8>, segments: &[SegmentDescription]) -> Result<RgbImage, PreviewError> {
    let (nz, ny, nx) = volume.data.dim();
    if labels.dim() != (nz, ny, nx) {
        return Err(PreviewError::Shape(format!("volume {:?} vs labels {:?}", volume.data.dim(), labels.dim())));
    }
    if nz == 0 || ny == 0 || nx == 0 {
        return Err(PreviewError::Shape("empty volume".into()));
    }
    let z = nz / 2;
    let img = volume.data.index_axis(Axis(0), z);
    let lab = labels.index_axis(Axis(0), z);
    let (lo, hi) = window(img);
    let mut colors = [[255u8, 255, 0]; 256];
    for s in segments {
        colors[s.label_value as usize] = s.color_rgb;
    }
    let mut out = RgbImage::new(nx as u32, ny as u32);
    for ((y, x), &v) in img.indexed_iter() {
        let g = if hi > lo { ((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0 } else { 0.0 };
        let l = lab[[y, x]];
        let px = if l == 0 {
            [g as u8; 3]
        } else if is_border(lab, y, x) {
            colors[l as usize]
        } else {
            let c = colors[l as usize];
            let mix = |c: u8| (g * (1.0 - FILL_ALPHA) + c as f32 * FILL_ALPHA).round() as u8;
            [mix(c[0]), mix(c[1]), mix(c[2])]
        };
        out.put_pixel(x as u32, y as u32, Rgb(px));
    }
    // square pixels: width ∝ nx·col_spacing, height ∝ ny·row_spacing
    let (row_mm, col_mm) = (volume.spacing[1].abs(), volume.spacing[2].abs());
    let (w_mm, h_mm) = (nx as f64 * if col_mm > 0.0 { col_mm } else { 1.0 }, ny as f64 * if row_mm > 0.0 { row_mm } else { 1.0 });
    // the longer side keeps its pixel count (capped at MAX_SIDE), the other follows the mm ratio
    let scale = (nx.max(ny) as f64).min(MAX_SIDE as f64) / w_mm.max(h_mm).max(1e-9);
    let (w, h) = (((w_mm * scale).round() as u32).max(1), ((h_mm * scale).round() as u32).max(1));
    if (w, h) != (nx as u32, ny as u32) {
        out = imageops::resize(&out, w, h, imageops::FilterType::Triangle);
    }
    Ok(out)
}

/// 1st and 99th percentile of the slice (NaN ignored), the display window.
fn window(img: ArrayView2<'_, f32>) -> (f32, f32) {
    let mut v: Vec<f32> = img.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_unstable_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.01), at(0.99))
}

fn is_border(lab: ArrayView2<'_, u8>, y: usize, x: usize) -> bool {
    let (ny, nx) = lab.dim();
    let l = lab[[y, x]];
    (y == 0 || lab[[y - 1, x]] != l)
        || (y + 1 == ny || lab[[y + 1, x]] != l)
        || (x == 0 || lab[[y, x - 1]] != l)
        || (x + 1 == nx || lab[[y, x + 1]] != l)
}

/// Encode `img` as PNG.
///
/// # Errors
/// [`PreviewError::Png`].
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>, PreviewError> {
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf).write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(buf)
}

/// Render the preview of `seg` and write it to `<job_dir>/preview.png` (temporary file, then
/// rename, so readers never see a partial PNG). Returns the path.
///
/// # Errors
/// [`PreviewError`] from rendering, encoding or writing.
pub fn write_preview(seg: &Segmentation) -> Result<PathBuf, PreviewError> {
    let img = render(&seg.job.volume, &seg.labels, &seg.segments)?;
    let bytes = png_bytes(&img)?;
    let path = seg.job.job_dir.join(PREVIEW_FILE);
    write_replace(&path, &bytes)?;
    Ok(path)
}

fn write_replace(path: &Path, bytes: &[u8]) -> Result<(), PreviewError> {
    let tmp = path.with_extension("png.tmp");
    let io = |source| PreviewError::Io { path: path.to_path_buf(), source };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// [`write_preview`] for the encode stage: a preview is a convenience, so a failure is only
/// logged (warning) and never fails the job.
pub fn write_preview_logged(seg: &Segmentation) {
    if let Err(e) = write_preview(seg) {
        tracing::warn!(job = %seg.job.job_id, error = %e, "no preview image");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(nz: usize, ny: usize, nx: usize, spacing: [f64; 3]) -> Volume {
        let data = Array3::from_shape_fn((nz, ny, nx), |(_, y, x)| (y * nx + x) as f32);
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

    fn seg_desc(label_value: u8, color_rgb: [u8; 3]) -> SegmentDescription {
        use crate::pipeline::messages::{Code, SegmentAlgorithmType};
        SegmentDescription {
            label_value,
            label: "x".into(),
            category: Code::new("85756007", "SCT", "Tissue"),
            property_type: Code::new("85756007", "SCT", "Tissue"),
            type_modifier: None,
            anatomic_region: None,
            color_rgb,
            algorithm_type: SegmentAlgorithmType::Automatic,
        }
    }

    #[test]
    fn overlay_colours_and_border_on_middle_slice() {
        let v = volume(3, 20, 20, [2.0, 1.0, 1.0]);
        let mut labels = Array3::<u8>::zeros((3, 20, 20));
        // a 10×10 square on the middle slice only
        labels.slice_mut(ndarray::s![1, 5..15, 5..15]).fill(1);
        let img = render(&v, &labels, &[seg_desc(1, [255, 0, 0])]).unwrap();
        assert_eq!(img.dimensions(), (20, 20), "square pixels already: no resampling");
        // border pixel of the square: pure segment colour
        let border = img.get_pixel(5, 10).0;
        assert_eq!(border, [255, 0, 0]);
        // inside: red dominates over green/blue (blend), outside: grey (r=g=b)
        let inside = img.get_pixel(10, 10).0;
        assert!(inside[0] > inside[1] && inside[1] == inside[2], "{inside:?}");
        let outside = img.get_pixel(2, 2).0;
        assert!(outside[0] == outside[1] && outside[1] == outside[2], "{outside:?}");
    }

    #[test]
    fn anisotropic_pixels_are_made_square() {
        let v = volume(1, 100, 50, [1.0, 1.0, 2.0]); // columns 2 mm apart → 100 mm × 100 mm
        let labels = Array3::<u8>::zeros((1, 100, 50));
        let img = render(&v, &labels, &[]).unwrap();
        assert_eq!(img.dimensions(), (100, 100));
        let png = png_bytes(&img).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let v = volume(2, 4, 4, [1.0; 3]);
        let labels = Array3::<u8>::zeros((2, 4, 5));
        assert!(matches!(render(&v, &labels, &[]), Err(PreviewError::Shape(_))));
    }
}
