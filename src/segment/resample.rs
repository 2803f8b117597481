//! Resampling between a [`Volume`](crate::volume::Volume)'s grid and a model's grid.
//!
//! Axis order is `[z][y][x]` throughout, spacing `(z, y, x)` in mm, as in
//! `Volume`. Only the voxel grid changes: orientation (direction cosines) and
//! the physical extent `n · spacing` are kept, so resampling to a target
//! spacing and back with the source shape lands exactly on the source grid.
//!
//! Coordinate mapping (extent-preserving, voxel centres; the convention of
//! `skimage.transform.resize` that nnU-Net uses): output index `o` on an axis
//! with `n_in` input and `n_out` output voxels samples the input at
//! `i = (o + 0.5) · n_in / n_out − 0.5`, clamped to `[0, n_in − 1]`.
//!
//! * [`resample_linear`] — separable (tri)linear interpolation, for images and
//!   per-class scores/probabilities ("probability resampling" of labels).
//! * [`resample_nearest`] — nearest neighbour, for label maps.

use ndarray::{Array3, ArrayView3, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Shape after resampling `shape` with `spacing` (mm, z-y-x) to `target` spacing (mm);
/// a target entry `<= 0` keeps that axis. Each extent is `max(1, round(n · spacing / target))`.
pub fn resampled_shape(shape: [usize; 3], spacing: [f64; 3], target: [f64; 3]) -> [usize; 3] {
    let mut out = shape;
    for i in 0..3 {
        if target[i] > 0.0 && spacing[i] > 0.0 {
            out[i] = ((shape[i] as f64 * spacing[i] / target[i]).round() as usize).max(1);
        }
    }
    out
}

/// Spacing (mm) of a grid of `new_shape` voxels covering the same extent as `shape` × `spacing`.
pub fn resampled_spacing(shape: [usize; 3], spacing: [f64; 3], new_shape: [usize; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| spacing[i] * shape[i] as f64 / new_shape[i] as f64)
}

/// For each output index: the two input indices and the weight of the second.
fn linear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let pos = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f64);
            let i0 = pos.floor() as usize;
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, (pos - i0 as f64) as f32)
        })
        .collect()
}

/// Run `f(z, plane)` on every `plane`-sized chunk of `out`: one rayon task per plane, or on
/// this thread for a single plane (a slice-by-slice caller on its own thread then does not hand
/// each slice to the pool). The planes are independent, so both give the same result.
fn per_plane(out: &mut [f32], plane: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if out.len() <= plane {
        if !out.is_empty() {
            f(0, out);
        }
        return;
    }
    out.par_chunks_mut(plane).enumerate().for_each(|(z, dst)| f(z, dst));
}

/// One linear pass along `axis` of `a` (shape `(nz, ny, nx)`), output extent `n_out` on that
/// axis. The output is computed in parallel, one output `z` plane per task (rayon); every
/// voxel is `src[i0] · (1 − w) + src[i1] · w` with the taps of [`linear_taps`], evaluated in
/// the same order whatever the thread count, so results are bit-identical to a serial pass.
fn resample_axis_linear(a: ArrayView3<f32>, axis: usize, n_out: usize) -> Array3<f32> {
    let mut shape = [a.shape()[0], a.shape()[1], a.shape()[2]];
    let n_in = shape[axis];
    shape[axis] = n_out;
    let taps = linear_taps(n_in, n_out);
    let plane = shape[1] * shape[2];
    let mut out = vec![0f32; shape[0] * plane];
    per_plane(&mut out, plane, |z, dst| {
        let mut dst = ArrayViewMut2::from_shape((shape[1], shape[2]), dst).expect("plane shape");
        if axis == 0 {
            let (i0, i1, w) = taps[z];
            let (s0, s1) = (a.index_axis(Axis(0), i0), a.index_axis(Axis(0), i1));
            ndarray::Zip::from(&mut dst).and(&s0).and(&s1).for_each(|d, &p, &q| *d = p * (1.0 - w) + q * w);
        } else {
            let src = a.index_axis(Axis(0), z);
            let lane_axis = Axis(axis - 1);
            for (s, mut d) in src.lanes(lane_axis).into_iter().zip(dst.lanes_mut(lane_axis)) {
                for (d, &(i0, i1, w)) in d.iter_mut().zip(&taps) {
                    *d = s[i0] * (1.0 - w) + s[i1] * w;
                }
            }
        }
    });
    Array3::from_shape_vec(shape, out).expect("output shape")
}

/// (Tri)linear resampling of `src` (shape `(nz, ny, nx)`) to `out_shape`, axis by axis
/// (x, then y, then z), with the extent-preserving mapping of the module docs.
/// Axes whose size does not change are copied unchanged.
///
/// # Panics
/// If any input or output extent is 0.
pub fn resample_linear(src: ArrayView3<f32>, out_shape: [usize; 3]) -> Array3<f32> {
    assert!(src.iter().len() > 0 && out_shape.iter().all(|&n| n > 0), "empty grid");
    let mut cur: Option<Array3<f32>> = None;
    for axis in [2usize, 1, 0] {
        let view = cur.as_ref().map(|c| c.view()).unwrap_or(src.view());
        if view.shape()[axis] != out_shape[axis] {
            cur = Some(resample_axis_linear(view, axis, out_shape[axis]));
        }
    }
    cur.unwrap_or_else(|| src.to_owned())
}

/// [`resample_linear`] of `f(src)`: `f` (an element-wise map, e.g. intensity normalisation) is
/// applied to each input value as the first pass reads it, so `f(src)` is never materialised.
/// Bit-identical to mapping first and resampling after (each output voxel combines the same
/// `f(src[i])` values with the same expression); with no axis to resample it is `src.mapv(f)`,
/// computed in parallel.
///
/// # Panics
/// If any input or output extent is 0.
pub fn resample_linear_map(src: ArrayView3<f32>, out_shape: [usize; 3], f: impl Fn(f32) -> f32 + Sync) -> Array3<f32> {
    assert!(src.iter().len() > 0 && out_shape.iter().all(|&n| n > 0), "empty grid");
    let shape = [src.shape()[0], src.shape()[1], src.shape()[2]];
    let axes: Vec<usize> = [2usize, 1, 0].into_iter().filter(|&a| shape[a] != out_shape[a]).collect();
    let Some((&first, rest)) = axes.split_first() else {
        let plane = shape[1] * shape[2];
        let mut out = vec![0f32; shape[0] * plane];
        per_plane(&mut out, plane, |z, dst| {
            for (d, &v) in dst.iter_mut().zip(src.index_axis(Axis(0), z).iter()) {
                *d = f(v);
            }
        });
        return Array3::from_shape_vec(shape, out).expect("output shape");
    };
    let mut cur = resample_axis_linear_with(src, first, out_shape[first], &f);
    for &axis in rest {
        cur = resample_axis_linear(cur.view(), axis, out_shape[axis]);
    }
    cur
}

/// [`resample_axis_linear`] reading `f(a)` instead of `a`.
fn resample_axis_linear_with(a: ArrayView3<f32>, axis: usize, n_out: usize, f: &(impl Fn(f32) -> f32 + Sync)) -> Array3<f32> {
    let mut shape = [a.shape()[0], a.shape()[1], a.shape()[2]];
    let n_in = shape[axis];
    shape[axis] = n_out;
    let taps = linear_taps(n_in, n_out);
    let plane = shape[1] * shape[2];
    let mut out = vec![0f32; shape[0] * plane];
    per_plane(&mut out, plane, |z, dst| {
        let mut dst = ArrayViewMut2::from_shape((shape[1], shape[2]), dst).expect("plane shape");
        if axis == 0 {
            let (i0, i1, w) = taps[z];
            let (s0, s1) = (a.index_axis(Axis(0), i0), a.index_axis(Axis(0), i1));
            ndarray::Zip::from(&mut dst).and(&s0).and(&s1).for_each(|d, &p, &q| *d = f(p) * (1.0 - w) + f(q) * w);
        } else {
            let src = a.index_axis(Axis(0), z);
            let lane_axis = Axis(axis - 1);
            let mut lane = Vec::new();
            for (s, mut d) in src.lanes(lane_axis).into_iter().zip(dst.lanes_mut(lane_axis)) {
                lane.clear();
                lane.extend(s.iter().map(|&v| f(v)));
                for (d, &(i0, i1, w)) in d.iter_mut().zip(&taps) {
                    *d = lane[i0] * (1.0 - w) + lane[i1] * w;
                }
            }
        }
    });
    Array3::from_shape_vec(shape, out).expect("output shape")
}

/// `mask[v]` is true for the values in `valid`.
fn valid_mask(valid: &[u8]) -> [bool; 256] {
    let mut ok = [false; 256];
    for &v in valid {
        ok[v as usize] = true;
    }
    ok
}

/// Running argmax: where `vals[i] > best[i]`, `best[i] = vals[i]` and `idx[i] = c` (the first
/// maximum wins).
fn fold_max(best: &mut [f32], idx: &mut [u8], vals: &[f32], c: u8) {
    for ((b, i), &s) in best.iter_mut().zip(idx.iter_mut()).zip(vals) {
        if s > *b {
            *b = s;
            *i = c;
        }
    }
}

/// One `z` plane of [`resample_linear_argmax`] for grids with the same `z` (2-D models): class
/// scores `(K, my, mx)` of one model-grid slice → labels of the source slice `(ny, nx)`, row
/// major. Holds the taps and plane buffers, so a worker resamples slice after slice without
/// allocating; the result is bit-identical to that plane of [`resample_linear_argmax`] (which
/// runs this per plane).
pub struct PlaneArgmax {
    model: [usize; 2],
    out: [usize; 2],
    tx: Vec<(usize, usize, f32)>,
    ty: Vec<(usize, usize, f32)>,
    ok: [bool; 256],
    xbuf: Vec<f32>,
    vals: Vec<f32>,
    best: Vec<f32>,
}

impl PlaneArgmax {
    /// For model-grid slices of `model` = `(my, mx)` and source slices of `out` = `(ny, nx)`;
    /// class indices not in `valid` become 0.
    pub fn new(model: [usize; 2], out: [usize; 2], valid: &[u8]) -> PlaneArgmax {
        let ([my, mx], [ny, nx]) = (model, out);
        PlaneArgmax {
            model,
            out,
            tx: linear_taps(mx, nx),
            ty: linear_taps(my, ny),
            ok: valid_mask(valid),
            xbuf: vec![0f32; my * nx],
            vals: vec![0f32; ny * nx],
            best: vec![0f32; ny * nx],
        }
    }

    /// Labels of one slice into `idx` (length `ny·nx`) from `scores` `(K, my, mx)`, K ≤ 256.
    ///
    /// # Panics
    /// When the shapes differ from those given to [`PlaneArgmax::new`].
    pub fn run(&mut self, scores: ndarray::ArrayView3<f32>, idx: &mut [u8]) {
        let (k, my, mx) = scores.dim();
        let ([ny, nx], k) = (self.out, k.min(256));
        assert_eq!([my, mx], self.model, "model slice shape");
        assert_eq!(idx.len(), ny * nx, "label slice length");
        let (tx, ty, xbuf, vals, best) = (&self.tx, &self.ty, &mut self.xbuf, &mut self.vals, &mut self.best);
        best.fill(f32::NEG_INFINITY);
        idx.fill(0);
        for c in 0..k {
            let src = scores.index_axis(Axis(0), c);
            // x pass (skipped when nx == mx, as resample_linear skips it)
            if nx != mx {
                for (row, dst) in src.outer_iter().zip(xbuf.chunks_mut(nx)) {
                    for (d, &(i0, i1, w)) in dst.iter_mut().zip(tx) {
                        *d = row[i0] * (1.0 - w) + row[i1] * w;
                    }
                }
            } else {
                for (row, dst) in src.outer_iter().zip(xbuf.chunks_mut(nx)) {
                    dst.iter_mut().zip(row.iter()).for_each(|(d, &v)| *d = v);
                }
            }
            let plane_vals: &[f32] = if ny != my {
                for (y, dst) in vals.chunks_mut(nx).enumerate() {
                    let (i0, i1, w) = ty[y];
                    let (r0, r1) = (&xbuf[i0 * nx..(i0 + 1) * nx], &xbuf[i1 * nx..(i1 + 1) * nx]);
                    for ((d, &p), &q) in dst.iter_mut().zip(r0).zip(r1) {
                        *d = p * (1.0 - w) + q * w;
                    }
                }
                vals
            } else {
                xbuf
            };
            fold_max(best, idx, plane_vals, c as u8);
        }
        let ok = &self.ok;
        idx.iter_mut().for_each(|v| *v = if ok[*v as usize] { *v } else { 0 });
    }
}

/// Label map from class scores `(K, mz, my, mx)` on a model grid, resampled back to
/// `out_shape` `(nz, ny, nx)`: `labels[v] = argmax_k resample_linear(scores[k])[v]` (first
/// maximum wins, as `numpy.argmax`; at most 256 classes), then class indices not in `valid`
/// become 0. Bit-identical to resampling each class with [`resample_linear`] and taking the
/// argmax (same per-voxel expressions in the same order), without materialising any class at
/// the output resolution:
///
/// * `z` unchanged (2-D models): one output `z` plane per rayon task; per class the plane is
///   resampled along x then y into a plane buffer and folded into the plane's running maximum.
///   Working memory: a few planes per thread.
/// * `z` resampled: per class, the x and y passes are materialised on the model's `z` grid and
///   the z pass is folded into a running maximum over the whole output (one f32 + one u8
///   per output voxel).
///
/// # Panics
/// If any extent is 0.
pub fn resample_linear_argmax(scores: ndarray::ArrayView4<f32>, out_shape: [usize; 3], valid: &[u8]) -> Array3<u8> {
    let (k, mz, my, mx) = scores.dim();
    assert!(k > 0 && mz * my * mx > 0 && out_shape.iter().all(|&n| n > 0), "empty grid");
    let k = k.min(256);
    let [nz, ny, nx] = out_shape;
    let ok = valid_mask(valid);
    let plane = ny * nx;
    let mut labels = vec![0u8; nz * plane];
    if mz == nz {
        labels.par_chunks_mut(plane).enumerate().for_each_init(
            || PlaneArgmax::new([my, mx], [ny, nx], valid),
            |pa, (z, idx)| pa.run(scores.index_axis(Axis(1), z), idx),
        );
    } else {
        let tz = linear_taps(mz, nz);
        let mut best = vec![f32::NEG_INFINITY; nz * plane];
        for c in 0..k {
            let ch = scores.index_axis(Axis(0), c);
            let xy = if (my, mx) != (ny, nx) { resample_linear(ch, [mz, ny, nx]) } else { ch.to_owned() };
            best.par_chunks_mut(plane).zip(labels.par_chunks_mut(plane)).enumerate().for_each_init(
                || vec![0f32; plane],
                |vals, (z, (best, idx))| {
                    let (i0, i1, w) = tz[z];
                    let (s0, s1) = (xy.index_axis(Axis(0), i0), xy.index_axis(Axis(0), i1));
                    for ((d, &p), &q) in vals.iter_mut().zip(s0.iter()).zip(s1.iter()) {
                        *d = p * (1.0 - w) + q * w;
                    }
                    fold_max(best, idx, vals, c as u8);
                },
            );
        }
        labels.iter_mut().for_each(|v| *v = if ok[*v as usize] { *v } else { 0 });
    }
    Array3::from_shape_vec(out_shape, labels).expect("output shape")
}

/// Nearest-neighbour resampling of a label map to `out_shape`: output index `o`
/// takes input index `floor((o + 0.5) · n_in / n_out)` (clamped).
///
/// # Panics
/// If any input or output extent is 0.
pub fn resample_nearest<T: Copy + Default>(src: ArrayView3<T>, out_shape: [usize; 3]) -> Array3<T> {
    assert!(src.iter().len() > 0 && out_shape.iter().all(|&n| n > 0), "empty grid");
    let idx: Vec<Vec<usize>> = (0..3)
        .map(|a| {
            let (n_in, n_out) = (src.shape()[a], out_shape[a]);
            (0..n_out).map(|o| (((o as f64 + 0.5) * n_in as f64 / n_out as f64) as usize).min(n_in - 1)).collect()
        })
        .collect();
    let mut out = Array3::<T>::default(out_shape);
    for ((z, y, x), v) in out.indexed_iter_mut() {
        *v = src[[idx[0][z], idx[1][y], idx[2][x]]];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn shape_and_spacing_round_trip() {
        let s = resampled_shape([10, 100, 50], [3.0, 0.5, 1.0], [1.5, 1.0, 0.0]);
        assert_eq!(s, [20, 50, 50]);
        assert_eq!(resampled_spacing([10, 100, 50], [3.0, 0.5, 1.0], s), [1.5, 1.0, 1.0]);
    }

    #[test]
    fn linear_reproduces_a_linear_ramp_inside() {
        // v = x; upsampling by 2 along x: centres at (o+0.5)/2-0.5.
        let a = Array3::from_shape_fn((1, 1, 4), |(_, _, x)| x as f32);
        let b = resample_linear(a.view(), [1, 1, 8]);
        let want = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
        for (g, w) in b.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{b:?}");
        }
        // downsample 8 -> 4 of that gives back the mean positions
        let c = resample_linear(b.view(), [1, 1, 4]);
        assert!((c[[0, 0, 1]] - 1.0).abs() < 1e-6, "{c:?}");
    }

    #[test]
    fn linear_is_separable_trilinear() {
        let a = Array3::from_shape_fn((3, 4, 5), |(z, y, x)| (z * 100 + y * 10 + x) as f32);
        let b = resample_linear(a.view(), [5, 7, 3]);
        // affine function is reproduced exactly by linear interpolation (no clamping inside)
        let pos = |o: usize, ni: usize, no: usize| ((o as f64 + 0.5) * ni as f64 / no as f64 - 0.5).clamp(0.0, (ni - 1) as f64);
        for ((z, y, x), v) in b.indexed_iter() {
            let w = 100.0 * pos(z, 3, 5) + 10.0 * pos(y, 4, 7) + pos(x, 5, 3);
            assert!((*v as f64 - w).abs() < 1e-4, "{z},{y},{x}: {v} vs {w}");
        }
    }

    #[test]
    fn nearest_round_trip_is_identity_for_integer_factors() {
        let a = Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 12 + y * 4 + x) as u8);
        let up = resample_nearest(a.view(), [4, 6, 8]);
        assert_eq!(up[[3, 5, 7]], a[[1, 2, 3]]);
        assert_eq!(resample_nearest(up.view(), [2, 3, 4]), a);
    }

    /// Straightforward serial reference of one linear pass (lane by lane).
    fn serial_axis(a: ArrayView3<f32>, axis: usize, n_out: usize) -> Array3<f32> {
        let mut shape = [a.shape()[0], a.shape()[1], a.shape()[2]];
        let taps = linear_taps(shape[axis], n_out);
        shape[axis] = n_out;
        let mut out = Array3::<f32>::zeros(shape);
        for (src, mut dst) in a.lanes(Axis(axis)).into_iter().zip(out.lanes_mut(Axis(axis))) {
            for (d, &(i0, i1, w)) in dst.iter_mut().zip(&taps) {
                *d = src[i0] * (1.0 - w) + src[i1] * w;
            }
        }
        out
    }

    #[test]
    fn parallel_passes_are_bit_identical_to_serial() {
        // irregular values, non-integer factors, up- and downsampling, a non-standard-layout input
        let a = Array3::from_shape_fn((7, 13, 11), |(z, y, x)| ((z * 131 + y * 17 + x * 7) % 97) as f32 * 0.37 - 9.1);
        let t = a.clone().reversed_axes();
        for (src, axis, n) in [(a.view(), 2, 29), (a.view(), 1, 5), (a.view(), 0, 16), (t.view(), 0, 4), (t.view(), 2, 9)] {
            let got = resample_axis_linear(src, axis, n);
            let want = serial_axis(src, axis, n);
            assert_eq!(got.shape(), want.shape());
            assert!(got.iter().zip(want.iter()).all(|(g, w)| g.to_bits() == w.to_bits()), "axis {axis} -> {n}");
        }
    }

    #[test]
    fn map_on_read_is_bit_identical_to_map_then_resample() {
        let a = Array3::from_shape_fn((5, 9, 11), |(z, y, x)| ((z * 31 + y * 7 + x * 3) % 23) as f32 * 1.7 - 4.0);
        let f = |v: f32| (v - 0.3) * 1.37;
        for shape in [[5, 9, 11], [5, 4, 23], [8, 9, 11], [3, 17, 6], [5, 9, 4]] {
            let want = resample_linear(a.mapv(f).view(), shape);
            let got = resample_linear_map(a.view(), shape, f);
            assert!(got.iter().zip(want.iter()).all(|(g, w)| g.to_bits() == w.to_bits()), "{shape:?}");
        }
    }

    #[test]
    fn fused_argmax_is_bit_identical_to_resample_then_argmax() {
        use crate::segment::onnx::postprocess::RunningArgmax;
        // 4 classes with near-ties so that rounding differences would show
        let s = ndarray::Array4::from_shape_fn((4, 3, 7, 5), |(k, z, y, x)| {
            (((k * 13 + z * 5 + y * 3 + x) % 7) as f32) * 0.25 + (k as f32) * 1e-7
        });
        for out in [[3, 19, 13], [3, 7, 12], [3, 4, 5], [8, 19, 13], [2, 7, 5]] {
            let mut r = RunningArgmax::new((out[0], out[1], out[2]));
            for ch in s.outer_iter() {
                r.push(resample_linear(ch, out).view());
            }
            let want = r.finish(&[1, 3]);
            let got = resample_linear_argmax(s.view(), out, &[1, 3]);
            assert_eq!(got, want, "{out:?}");
        }
    }
}
