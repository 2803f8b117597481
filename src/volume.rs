//! `Volume`: the reassembled image grid every stage after `assemble` works on.
//!
//! Axis order is `[z][y][x]` (slice, row, column), matching DICOM frame order
//! after sorting along the slice normal. Geometry follows DICOM PS3.3
//! C.7.6.2.1.1 (Image Position / Image Orientation (Patient)), in the patient
//! coordinate system LPS (x → patient Left, y → Posterior, z → Superior), mm.
//!
//! The physical position of voxel `(z, y, x)` (its centre) is
//! `origin + x·spacing[2]·row_direction + y·spacing[1]·column_direction + z·spacing[0]·slice_direction`.

use ndarray::Array3;

/// Identifies the source image a slice of a [`Volume`] came from, so derived
/// objects (DICOM-SEG Derivation Image / Source Image Sequence, SR) can
/// reference it (PS3.3 C.7.6.16.2.6, C.8.20.2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SliceRef {
    /// SOPClassUID (0008,0016) of the source instance.
    pub sop_class_uid: String,
    /// SOPInstanceUID (0008,0018) of the source instance.
    pub sop_instance_uid: String,
    /// ReferencedFrameNumber (1-based) when the source is a multi-frame instance; `None` for single-frame.
    pub frame_number: Option<u32>,
}

/// A 3-D scalar image on a regular grid with exact patient geometry.
///
/// * `data`: voxel values, shape `(nz, ny, nx)` = (slices, Rows, Columns), in
///   real-world units after Rescale Slope/Intercept (HU for CT, arbitrary units for MR).
/// * `spacing`: `(z, y, x)` in mm; `z` is the distance between slice centres
///   measured along the slice normal (not the table step), `y` is the row spacing
///   (PixelSpacing[0]), `x` the column spacing (PixelSpacing[1]).
/// * `origin`: LPS position in mm of the centre of voxel `(0,0,0)` (the
///   ImagePositionPatient of the first slice after sorting).
/// * `row_direction`: unit vector (LPS) along increasing column index `x`
///   (ImageOrientationPatient[0..3]).
/// * `column_direction`: unit vector (LPS) along increasing row index `y`
///   (ImageOrientationPatient[3..6]).
/// * `slice_direction`: unit vector (LPS) along increasing slice index `z`; equals
///   `±(row_direction × column_direction)` for a non-tilted stack.
/// * `slices`: one [`SliceRef`] per `z`, in the same order as `data`.
#[derive(Debug, Clone)]
pub struct Volume {
    pub data: Array3<f32>,
    pub spacing: [f64; 3],
    pub origin: [f64; 3],
    pub row_direction: [f64; 3],
    pub column_direction: [f64; 3],
    pub slice_direction: [f64; 3],
    pub slices: Vec<SliceRef>,
}

impl Volume {
    /// Shape as `(nz, ny, nx)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        let s = self.data.shape();
        (s[0], s[1], s[2])
    }

    /// Volume of one voxel in mm³ (`spacing[0]·spacing[1]·spacing[2]`).
    pub fn voxel_volume_mm3(&self) -> f64 {
        self.spacing[0] * self.spacing[1] * self.spacing[2]
    }

    /// LPS position (mm) of the centre of voxel `(z, y, x)`; fractional indices allowed.
    pub fn voxel_to_patient(&self, z: f64, y: f64, x: f64) -> [f64; 3] {
        let mut p = self.origin;
        for i in 0..3 {
            p[i] += x * self.spacing[2] * self.row_direction[i]
                + y * self.spacing[1] * self.column_direction[i]
                + z * self.spacing[0] * self.slice_direction[i];
        }
        p
    }

    /// ImagePositionPatient (mm, LPS) of slice `z`: the centre of its first transmitted pixel.
    pub fn slice_position(&self, z: usize) -> [f64; 3] {
        self.voxel_to_patient(z as f64, 0.0, 0.0)
    }

    /// ImageOrientationPatient as six direction cosines (row, then column).
    pub fn image_orientation(&self) -> [f64; 6] {
        let r = self.row_direction;
        let c = self.column_direction;
        [r[0], r[1], r[2], c[0], c[1], c[2]]
    }
}

/// Cross product `a × b`.
pub fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Dot product `a · b`.
pub fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Euclidean norm of `a`.
pub fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voxel_to_patient_follows_directions_and_spacing() {
        let v = Volume {
            data: Array3::zeros((3, 4, 5)),
            spacing: [2.0, 0.5, 0.25],
            origin: [10.0, 20.0, 30.0],
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 0.0, -1.0],
            slice_direction: [0.0, 1.0, 0.0],
            slices: vec![],
        };
        assert_eq!(v.voxel_to_patient(1.0, 2.0, 4.0), [11.0, 22.0, 29.0]);
        assert_eq!(v.slice_position(2), [10.0, 24.0, 30.0]);
        assert_eq!(v.voxel_volume_mm3(), 0.25);
        assert_eq!(cross([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]), [0.0, 0.0, 1.0]);
    }
}
