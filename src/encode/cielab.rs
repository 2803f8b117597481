//! sRGB → CIELab conversion for Recommended Display CIELab Value (0062,000D).
//!
//! DICOM stores segment display colours as CIELab PCS-Values (PS3.3
//! C.10.7.1.1), each component linearly scaled to an unsigned 16-bit integer.
//! We compute CIELab relative to the D65 white point of sRGB, as highdicom
//! and dcmqi do (the ICC profile connection space itself is D50; the
//! difference is a slight hue shift irrelevant for display colours):
//!
//! * `L*` in `[0, 100]` → `[0x0000, 0xFFFF]`
//! * `a*`, `b*` in `[-128, 127]` → `[0x0000, 0xFFFF]`
//!
//! The conversion chain is sRGB (IEC 61966-2-1) → linear RGB → CIE XYZ (D65,
//! Y of white = 1) → CIELab (CIE 15).

/// D65 reference white, CIE XYZ with `Y = 1` (IEC 61966-2-1).
const WHITE_D65: [f64; 3] = [0.950_47, 1.0, 1.088_83];

/// Linear-RGB → XYZ matrix for sRGB primaries and D65 white (IEC 61966-2-1).
const SRGB_TO_XYZ: [[f64; 3]; 3] = [
    [0.412_456_4, 0.357_576_1, 0.180_437_5],
    [0.212_672_9, 0.715_152_2, 0.072_175_0],
    [0.019_333_9, 0.119_192_0, 0.950_304_1],
];

/// Inverse sRGB companding of one 8-bit channel: returns linear light in `[0, 1]`.
fn srgb_to_linear(c: u8) -> f64 {
    let c = f64::from(c) / 255.0;
    if c <= 0.040_45 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// The CIELab companding function `f(t)` (CIE 15, with δ = 6/29).
fn lab_f(t: f64) -> f64 {
    const DELTA: f64 = 6.0 / 29.0;
    if t > DELTA * DELTA * DELTA {
        t.cbrt()
    } else {
        t / (3.0 * DELTA * DELTA) + 4.0 / 29.0
    }
}

/// Convert an 8-bit sRGB colour `[R, G, B]` to CIELab `[L*, a*, b*]` (D65).
///
/// `L*` is in `[0, 100]`; `a*` and `b*` are unbounded in principle but lie
/// within about `[-87, 99]` for sRGB colours. Pure red `[255, 0, 0]` gives
/// approximately `[53.24, 80.09, 67.20]`.
pub fn srgb_to_cielab(rgb: [u8; 3]) -> [f64; 3] {
    let lin = rgb.map(srgb_to_linear);
    let mut xyz = [0.0; 3];
    for (i, row) in SRGB_TO_XYZ.iter().enumerate() {
        xyz[i] = row[0] * lin[0] + row[1] * lin[1] + row[2] * lin[2];
    }
    let fx = lab_f(xyz[0] / WHITE_D65[0]);
    let fy = lab_f(xyz[1] / WHITE_D65[1]);
    let fz = lab_f(xyz[2] / WHITE_D65[2]);
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// Scale CIELab `[L*, a*, b*]` to the DICOM 16-bit PCS-Value encoding
/// (PS3.3 C.10.7.1.1): `L·65535/100`, `(a+128)·65535/255`, `(b+128)·65535/255`,
/// rounded to nearest and clamped to `[0, 65535]`.
pub fn cielab_to_dicom(lab: [f64; 3]) -> [u16; 3] {
    let scale = |v: f64| -> u16 { v.round().clamp(0.0, 65535.0) as u16 };
    [
        scale(lab[0] * 65535.0 / 100.0),
        scale((lab[1] + 128.0) * 65535.0 / 255.0),
        scale((lab[2] + 128.0) * 65535.0 / 255.0),
    ]
}

/// Recommended Display CIELab Value (0062,000D) for an 8-bit sRGB colour:
/// [`srgb_to_cielab`] followed by [`cielab_to_dicom`].
pub fn srgb_to_dicom_lab(rgb: [u8; 3]) -> [u16; 3] {
    cielab_to_dicom(srgb_to_cielab(rgb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_lab(rgb: [u8; 3], expected: [f64; 3]) {
        let lab = srgb_to_cielab(rgb);
        for i in 0..3 {
            assert!(
                (lab[i] - expected[i]).abs() < 0.01,
                "{rgb:?}: got {lab:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn primaries_and_greys_match_reference_values() {
        // Reference values: Bruce Lindbloom's calculator / colormath, sRGB D65.
        assert_lab([255, 0, 0], [53.2408, 80.0925, 67.2032]);
        assert_lab([0, 255, 0], [87.7347, -86.1827, 83.1793]);
        assert_lab([0, 0, 255], [32.2970, 79.1875, -107.8602]);
        assert_lab([255, 255, 255], [100.0, 0.0, 0.0]);
        assert_lab([0, 0, 0], [0.0, 0.0, 0.0]);
        assert_lab([128, 128, 128], [53.5850, 0.0, 0.0]);
    }

    #[test]
    fn dicom_scaling_of_known_colours() {
        assert_eq!(srgb_to_dicom_lab([255, 255, 255]), [65535, 32896, 32896]);
        assert_eq!(srgb_to_dicom_lab([0, 0, 0]), [0, 32896, 32896]);
        // Red: L 53.2408·655.35 = 34891.4; (80.0925+128)·257 = 53479.8; (67.2032+128)·257 = 50167.2
        assert_eq!(srgb_to_dicom_lab([255, 0, 0]), [34891, 53480, 50167]);
        assert_eq!(srgb_to_dicom_lab([0, 0, 255]), [21166, 53247, 5176]);
    }

    #[test]
    fn scaling_clamps_out_of_range() {
        assert_eq!(cielab_to_dicom([120.0, -200.0, 200.0]), [65535, 0, 65535]);
    }
}
