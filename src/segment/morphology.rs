//! Generic, iterative (non-recursive) image operations on `[z][y][x]` arrays used by
//! built-in analyses: a robust Otsu threshold, the largest 6-connected 3-D component,
//! and per-slice hole filling.
//!
//! Masks are `Array3<bool>` of shape `(nz, ny, nx)` in standard (C) layout. Flood fills
//! use an explicit stack of flat `u32` indices, so they need at most 4 bytes per
//! foreground voxel of extra memory and never recurse.

use ndarray::{Array3, ArrayView3, Axis};

/// Number of bins of the histogram Otsu's threshold is computed on.
pub const OTSU_BINS: usize = 256;

/// Bins of the fine histogram used to find the robust intensity range.
const FINE_BINS: usize = 65_536;

/// Lower and upper percentiles (in %) that bound the robust intensity range.
pub const ROBUST_PERCENTILES: (f64, f64) = (0.5, 99.5);

/// Result of [`otsu_threshold`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OtsuThreshold {
    /// Intensity threshold: voxels with value `> threshold` are foreground (same units as the volume).
    pub threshold: f32,
    /// Robust minimum (the [`ROBUST_PERCENTILES`] lower percentile).
    pub low: f32,
    /// Robust maximum (the [`ROBUST_PERCENTILES`] upper percentile).
    pub high: f32,
}

/// Otsu's threshold (N. Otsu, "A threshold selection method from gray-level histograms",
/// IEEE Trans. SMC 9(1):62–66, 1979) over the finite values of `data`.
///
/// The histogram has [`OTSU_BINS`] bins spanning the robust range `[low, high]` given by the
/// 0.5th and 99.5th percentiles (from a 65 536-bin histogram between the true min and max), so a few
/// extreme voxels (metal, padding values such as −3024 HU) do not squeeze the useful range into a
/// handful of bins. Values outside the range are counted in the end bins, so they still weigh in
/// the class statistics. The threshold is the upper edge of the bin that maximises the
/// between-class variance.
///
/// Returns `None` when `data` has no finite values or all finite values are equal.
pub fn otsu_threshold(data: ArrayView3<'_, f32>) -> Option<OtsuThreshold> {
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut count = 0usize;
    for &v in data.iter().filter(|v| v.is_finite()) {
        min = min.min(v);
        max = max.max(v);
        count += 1;
    }
    if count == 0 || !(max > min) {
        return None;
    }
    // Robust range from a fine histogram.
    let fine = histogram(data, min, max, FINE_BINS);
    let bin_width = (max as f64 - min as f64) / FINE_BINS as f64;
    let percentile_value = |p: f64| -> f32 {
        let target = (p / 100.0 * count as f64).max(1.0);
        let mut acc = 0.0;
        for (i, &c) in fine.iter().enumerate() {
            acc += c as f64;
            if acc >= target {
                return (min as f64 + (i as f64 + 0.5) * bin_width) as f32;
            }
        }
        max
    };
    let (mut low, mut high) = (percentile_value(ROBUST_PERCENTILES.0), percentile_value(ROBUST_PERCENTILES.1));
    if !(high > low) {
        // Heavily concentrated data (e.g. > 99 % zeros): fall back to the full range.
        low = min;
        high = max;
    }
    let hist = histogram(data, low, high, OTSU_BINS);
    let total: f64 = hist.iter().map(|&c| c as f64).sum();
    let sum_all: f64 = hist.iter().enumerate().map(|(i, &c)| i as f64 * c as f64).sum();
    let (mut w0, mut sum0) = (0.0f64, 0.0f64);
    let (mut best, mut best_bin) = (-1.0f64, 0usize);
    for (i, &c) in hist.iter().enumerate().take(OTSU_BINS - 1) {
        w0 += c as f64;
        sum0 += i as f64 * c as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let mu0 = sum0 / w0;
        let mu1 = (sum_all - sum0) / w1;
        let between = w0 * w1 * (mu0 - mu1) * (mu0 - mu1);
        if between > best {
            best = between;
            best_bin = i;
        }
    }
    let width = (high as f64 - low as f64) / OTSU_BINS as f64;
    let threshold = (low as f64 + (best_bin as f64 + 1.0) * width) as f32;
    Some(OtsuThreshold { threshold, low, high })
}

/// Two-threshold (three-class) Otsu over the finite values of `data`: `(t1, t2)` with
/// `t1 < t2` maximising the between-class variance `Σ w_k μ_k²` of the classes
/// `v ≤ t1`, `t1 < v ≤ t2`, `v > t2` (P.-S. Liao, T.-S. Chen, P.-C. Chung, "A fast algorithm for
/// multilevel thresholding", J. Inf. Sci. Eng. 17:713–727, 2001; Otsu 1979 for the criterion).
///
/// Same histogram as [`otsu_threshold`]: [`OTSU_BINS`] bins over the robust
/// [`ROBUST_PERCENTILES`] range, out-of-range values counted in the end bins; thresholds are
/// upper bin edges. Used for images with three intensity classes such as background, muscle and
/// fat on fat-bright (T1-weighted-like) MR.
///
/// Returns `None` when `data` has no finite values or all finite values are equal.
pub fn otsu_two_thresholds(data: ArrayView3<'_, f32>) -> Option<(f32, f32)> {
    let range = otsu_threshold(data)?; // validates the data and gives the robust range
    let (low, high) = (range.low, range.high);
    let hist = histogram(data, low, high, OTSU_BINS);
    // prefix sums of counts and first moments
    let mut p = vec![0f64; OTSU_BINS + 1];
    let mut m = vec![0f64; OTSU_BINS + 1];
    for (i, &c) in hist.iter().enumerate() {
        p[i + 1] = p[i] + c as f64;
        m[i + 1] = m[i] + i as f64 * c as f64;
    }
    let term = |a: usize, b: usize| {
        // bins a..b (exclusive end)
        let w = p[b] - p[a];
        if w > 0.0 {
            let mu = (m[b] - m[a]) / w;
            Some(w * mu * mu)
        } else {
            None
        }
    };
    let (mut best, mut best_pair) = (-1.0f64, None);
    for i in 1..OTSU_BINS - 1 {
        let Some(c0) = term(0, i) else { continue };
        for j in i + 1..OTSU_BINS {
            let (Some(c1), Some(c2)) = (term(i, j), term(j, OTSU_BINS)) else { continue };
            let v = c0 + c1 + c2;
            if v > best {
                best = v;
                best_pair = Some((i, j));
            }
        }
    }
    let (i, j) = best_pair?;
    let width = (high as f64 - low as f64) / OTSU_BINS as f64;
    Some(((low as f64 + i as f64 * width) as f32, (low as f64 + j as f64 * width) as f32))
}

/// In-plane Euclidean distance (mm) of every voxel of `mask` to the nearest voxel outside it
/// in the same slice `z` (0 outside the mask), shape `(nz, ny, nx)`; pixels beyond the slice
/// border count as outside. `spacing_yx` = (row spacing `sy`, column spacing `sx`) in mm.
///
/// Exact squared-distance transform by separable lower envelopes of parabolas
/// (P. F. Felzenszwalb, D. P. Huttenlocher, "Distance transforms of sampled functions",
/// Theory of Computing 8:415–428, 2012), along x then y, with anisotropic spacing.
pub fn distance_to_background_per_slice(mask: &Array3<bool>, spacing_yx: (f64, f64)) -> Array3<f32> {
    let (nz, ny, nx) = mask.dim();
    let (sy, sx) = spacing_yx;
    // padded by one background pixel on every side so the border counts as outside
    let (py, px) = (ny + 2, nx + 2);
    let mut out = Array3::<f32>::zeros((nz, ny, nx));
    let inf = f64::INFINITY;
    let mut f = vec![0f64; py.max(px)];
    let mut d = vec![0f64; py.max(px)];
    let mut grid = vec![0f64; py * px];
    for z in 0..nz {
        for y in 0..py {
            for x in 0..px {
                let inside = y >= 1 && y <= ny && x >= 1 && x <= nx && mask[[z, y - 1, x - 1]];
                grid[y * px + x] = if inside { inf } else { 0.0 };
            }
        }
        for y in 0..py {
            f[..px].copy_from_slice(&grid[y * px..(y + 1) * px]);
            edt_1d(&f[..px], sx, &mut d[..px]);
            grid[y * px..(y + 1) * px].copy_from_slice(&d[..px]);
        }
        for x in 0..px {
            for y in 0..py {
                f[y] = grid[y * px + x];
            }
            edt_1d(&f[..py], sy, &mut d[..py]);
            for y in 0..py {
                grid[y * px + x] = d[y];
            }
        }
        for y in 0..ny {
            for x in 0..nx {
                out[[z, y, x]] = grid[(y + 1) * px + x + 1].sqrt() as f32;
            }
        }
    }
    out
}

/// 1-D squared distance transform of sampled function `f` (0 at sites, ∞ elsewhere) with
/// sample spacing `h` mm; result (mm²) in `d` (Felzenszwalb & Huttenlocher 2012, algorithm 1).
fn edt_1d(f: &[f64], h: f64, d: &mut [f64]) {
    let n = f.len();
    let mut v = vec![0usize; n];
    let mut zb = vec![0f64; n + 1];
    let mut k = 0usize;
    let pos = |q: usize| q as f64 * h;
    // first finite site
    let Some(first) = (0..n).find(|&q| f[q].is_finite()) else {
        d.iter_mut().for_each(|x| *x = f64::INFINITY);
        return;
    };
    v[0] = first;
    zb[0] = f64::NEG_INFINITY;
    zb[1] = f64::INFINITY;
    for q in first + 1..n {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            let p = v[k];
            let s = ((f[q] + pos(q) * pos(q)) - (f[p] + pos(p) * pos(p))) / (2.0 * (pos(q) - pos(p)));
            if s <= zb[k] && k > 0 {
                k -= 1;
                continue;
            }
            if s <= zb[k] {
                // k == 0 and the new parabola dominates everywhere
                v[0] = q;
                zb[1] = f64::INFINITY;
                break;
            }
            k += 1;
            v[k] = q;
            zb[k] = s;
            zb[k + 1] = f64::INFINITY;
            break;
        }
    }
    k = 0;
    for q in 0..n {
        while zb[k + 1] < pos(q) {
            k += 1;
        }
        let dq = pos(q) - pos(v[k]);
        d[q] = dq * dq + f[v[k]];
    }
}

/// Histogram of the finite values of `data` with `bins` equal bins over `[lo, hi]`;
/// values outside are counted in the first / last bin.
fn histogram(data: ArrayView3<'_, f32>, lo: f32, hi: f32, bins: usize) -> Vec<u64> {
    let mut h = vec![0u64; bins];
    let scale = bins as f64 / (hi as f64 - lo as f64);
    for &v in data.iter() {
        if !v.is_finite() {
            continue;
        }
        let b = ((v as f64 - lo as f64) * scale).floor();
        let b = if b < 0.0 { 0 } else if b >= bins as f64 { bins - 1 } else { b as usize };
        h[b] += 1;
    }
    h
}

/// Keep only the largest 6-connected (face-adjacent) component of `mask`, in place.
///
/// Returns the number of voxels kept (0 if the mask was empty). Ties are broken by the
/// component found first in `[z][y][x]` scan order.
///
/// # Panics
/// Never for masks of at most `u32::MAX` voxels; callers must check larger volumes
/// beforehand (see [`MAX_VOXELS`]).
pub fn keep_largest_component(mask: &mut Array3<bool>) -> usize {
    let (nz, ny, nx) = mask.dim();
    assert!(nz * ny * nx <= MAX_VOXELS, "mask too large for u32 indices");
    let mut state: Vec<u8> = mask.iter().map(|&b| b as u8).collect(); // 0 bg, 1 fg, 2 visited
    let mut stack: Vec<u32> = Vec::new();
    let (mut best_seed, mut best_size) = (None, 0usize);
    for seed in 0..state.len() {
        if state[seed] != 1 {
            continue;
        }
        let size = flood_6(&mut state, (nz, ny, nx), seed, 1, 2, &mut stack);
        if size > best_size {
            best_size = size;
            best_seed = Some(seed);
        }
    }
    mask.fill(false);
    if let Some(seed) = best_seed {
        flood_6(&mut state, (nz, ny, nx), seed, 2, 3, &mut stack);
        for (m, &s) in mask.iter_mut().zip(state.iter()) {
            *m = s == 3;
        }
    }
    best_size
}

/// Keep every 6-connected component of `mask` whose size is at least `min_fraction` (0–1) of
/// the largest component's, in place; smaller ones are cleared. Returns the voxels kept.
///
/// Used where a field of view legitimately holds several body parts of similar size (both
/// thighs or calves in one axial slab, which do not touch), while specks, markers and thin
/// objects far smaller than a limb are dropped. `min_fraction = 1.0` keeps all components
/// tied for the largest size.
///
/// # Panics
/// Never for masks of at most [`MAX_VOXELS`] voxels; callers must check larger volumes.
pub fn keep_large_components(mask: &mut Array3<bool>, min_fraction: f64) -> usize {
    let (nz, ny, nx) = mask.dim();
    assert!(nz * ny * nx <= MAX_VOXELS, "mask too large for u32 indices");
    let mut state: Vec<u8> = mask.iter().map(|&b| b as u8).collect(); // 0 bg, 1 fg, 2 visited
    let mut stack: Vec<u32> = Vec::new();
    let mut components: Vec<(usize, usize)> = Vec::new(); // (seed, size)
    for seed in 0..state.len() {
        if state[seed] == 1 {
            components.push((seed, flood_6(&mut state, (nz, ny, nx), seed, 1, 2, &mut stack)));
        }
    }
    let largest = components.iter().map(|c| c.1).max().unwrap_or(0);
    let mut kept = 0;
    for &(seed, size) in &components {
        if size as f64 >= min_fraction * largest as f64 {
            kept += flood_6(&mut state, (nz, ny, nx), seed, 2, 3, &mut stack);
        }
    }
    for (m, &s) in mask.iter_mut().zip(state.iter()) {
        *m = s == 3;
    }
    kept
}

/// Largest number of voxels the flood fills can index (flat `u32` indices).
pub const MAX_VOXELS: usize = u32::MAX as usize;

/// Flood fill over 6-neighbours: every voxel reachable from `seed` with value `from` is set
/// to `to`; returns how many were changed.
fn flood_6(state: &mut [u8], dim: (usize, usize, usize), seed: usize, from: u8, to: u8, stack: &mut Vec<u32>) -> usize {
    let (nz, ny, nx) = dim;
    let plane = ny * nx;
    stack.clear();
    state[seed] = to;
    stack.push(seed as u32);
    let mut size = 0usize;
    while let Some(i) = stack.pop() {
        let i = i as usize;
        size += 1;
        let z = i / plane;
        let rem = i - z * plane;
        let y = rem / nx;
        let x = rem - y * nx;
        let mut visit = |j: usize, state: &mut [u8]| {
            if state[j] == from {
                state[j] = to;
                stack.push(j as u32);
            }
        };
        if x > 0 {
            visit(i - 1, state);
        }
        if x + 1 < nx {
            visit(i + 1, state);
        }
        if y > 0 {
            visit(i - nx, state);
        }
        if y + 1 < ny {
            visit(i + nx, state);
        }
        if z > 0 {
            visit(i - plane, state);
        }
        if z + 1 < nz {
            visit(i + plane, state);
        }
    }
    size
}

/// Fill holes slice by slice (each `z` separately), in place: background pixels not
/// 4-connected to the border of their slice through background become foreground.
///
/// Per slice rather than 3-D on purpose: a body is cut open by the first and last slice of
/// the field of view, so cavities such as the airways, lungs, bowel gas or a joint space are
/// usually connected to the *volume* boundary through those end slices and a 3-D fill would
/// leave them out; within one cross-section they are enclosed and get filled, which is what a
/// body contour should contain. Returns the number of pixels filled.
pub fn fill_holes_per_slice(mask: &mut Array3<bool>) -> usize {
    let (_, ny, nx) = mask.dim();
    let mut filled = 0usize;
    let mut outside = vec![false; ny * nx];
    let mut stack: Vec<u32> = Vec::new();
    for mut slice in mask.axis_iter_mut(Axis(0)) {
        outside.iter_mut().for_each(|o| *o = false);
        let fg: Vec<bool> = slice.iter().copied().collect();
        stack.clear();
        let seed = |i: usize, outside: &mut [bool], stack: &mut Vec<u32>| {
            if !fg[i] && !outside[i] {
                outside[i] = true;
                stack.push(i as u32);
            }
        };
        for x in 0..nx {
            seed(x, &mut outside, &mut stack);
            seed((ny - 1) * nx + x, &mut outside, &mut stack);
        }
        for y in 0..ny {
            seed(y * nx, &mut outside, &mut stack);
            seed(y * nx + nx - 1, &mut outside, &mut stack);
        }
        while let Some(i) = stack.pop() {
            let i = i as usize;
            let (y, x) = (i / nx, i % nx);
            if x > 0 {
                seed(i - 1, &mut outside, &mut stack);
            }
            if x + 1 < nx {
                seed(i + 1, &mut outside, &mut stack);
            }
            if y > 0 {
                seed(i - nx, &mut outside, &mut stack);
            }
            if y + 1 < ny {
                seed(i + nx, &mut outside, &mut stack);
            }
        }
        for ((m, &o), &f) in slice.iter_mut().zip(outside.iter()).zip(fg.iter()) {
            if !f && !o {
                *m = true;
                filled += 1;
            }
        }
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_transform_matches_brute_force() {
        let mut m = Array3::<bool>::from_elem((2, 13, 17), false);
        for ((z, y, x), v) in m.indexed_iter_mut() {
            *v = (2..11).contains(&y) && (1..15).contains(&x) && !(z == 1 && y == 6 && x == 7) && !(y == 3 && x > 10);
        }
        let (sy, sx) = (0.7, 1.3);
        let d = distance_to_background_per_slice(&m, (sy, sx));
        for ((z, y, x), &inside) in m.indexed_iter() {
            let mut best = f64::INFINITY;
            for yy in -1i64..=13 {
                for xx in -1i64..=17 {
                    let outside = yy < 0 || xx < 0 || yy >= 13 || xx >= 17 || !m[[z, yy as usize, xx as usize]];
                    if outside {
                        let dist = (((yy - y as i64) as f64 * sy).powi(2) + ((xx - x as i64) as f64 * sx).powi(2)).sqrt();
                        best = best.min(dist);
                    }
                }
            }
            let expected = if inside { best } else { 0.0 };
            assert!((d[[z, y, x]] as f64 - expected).abs() < 1e-4, "({z},{y},{x}): {} vs {expected}", d[[z, y, x]]);
        }
    }

    #[test]
    fn two_thresholds_separate_three_classes() {
        // background 0 (60 %), muscle ≈ 100 (25 %), fat ≈ 300 (15 %)
        let data = Array3::from_shape_fn((1, 20, 100), |(_, y, x)| {
            let i = y * 100 + x;
            let jitter = (i % 7) as f32;
            if i < 1200 {
                jitter
            } else if i < 1700 {
                100.0 + jitter
            } else {
                300.0 + jitter
            }
        });
        let (t1, t2) = otsu_two_thresholds(data.view()).unwrap();
        assert!(t1 > 6.0 && t1 <= 100.0, "{t1}");
        assert!(t2 > 106.0 && t2 <= 300.0, "{t2}");
        assert!(otsu_two_thresholds(Array3::<f32>::zeros((1, 2, 2)).view()).is_none());
    }

    #[test]
    fn keep_large_components_keeps_both_legs_and_drops_specks() {
        let mut m = Array3::<bool>::from_elem((1, 10, 30), false);
        for y in 1..9 {
            for x in 1..9 {
                m[[0, y, x]] = true; // 64 voxels
            }
            for x in 12..19 {
                m[[0, y, x]] = true; // 56 voxels
            }
        }
        m[[0, 5, 25]] = true; // speck
        assert_eq!(keep_large_components(&mut m, 0.25), 120);
        assert!(!m[[0, 5, 25]] && m[[0, 4, 4]] && m[[0, 4, 15]]);
        assert_eq!(keep_large_components(&mut m, 1.0), 64);
        assert!(!m[[0, 4, 15]]);
    }

    #[test]
    fn otsu_separates_two_levels() {
        let mut a = Array3::<f32>::zeros((1, 10, 10));
        for (i, v) in a.iter_mut().enumerate() {
            *v = if i < 60 { 10.0 + (i % 3) as f32 } else { 200.0 + (i % 5) as f32 };
        }
        let t = otsu_threshold(a.view()).unwrap();
        assert!(t.threshold > 12.0 && t.threshold < 200.0, "{t:?}");
        assert!(otsu_threshold(Array3::<f32>::zeros((2, 2, 2)).view()).is_none());
    }

    #[test]
    fn largest_component_uses_face_connectivity() {
        let mut m = Array3::<bool>::from_elem((1, 3, 3), false);
        // Diagonal pair is two components under 6-connectivity; the L of 3 voxels wins.
        m[[0, 0, 0]] = true;
        m[[0, 1, 1]] = true;
        m[[0, 2, 1]] = true;
        m[[0, 2, 2]] = true;
        assert_eq!(keep_largest_component(&mut m), 3);
        assert!(!m[[0, 0, 0]]);
        assert!(m[[0, 1, 1]] && m[[0, 2, 1]] && m[[0, 2, 2]]);
    }

    #[test]
    fn fills_enclosed_hole_but_not_open_bay() {
        let mut m = Array3::<bool>::from_elem((1, 5, 6), false);
        for y in 0..5 {
            for x in 0..3 {
                m[[0, y, x]] = !(y == 2 && x == 1); // ring with hole at (2,1)
            }
        }
        // bay touching the border at column 5 stays empty
        m[[0, 1, 4]] = true;
        m[[0, 3, 4]] = true;
        assert_eq!(fill_holes_per_slice(&mut m), 1);
        assert!(m[[0, 2, 1]]);
        assert!(!m[[0, 2, 4]] && !m[[0, 2, 5]]);
    }
}
