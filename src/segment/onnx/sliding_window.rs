//! Sliding-window inference with Gaussian importance weighting (as nnU-Net,
//! Isensee et al. 2021, `predict_sliding_window_return_logits`).
//!
//! Arrays are channel-first `(C, z, y, x)`. A 2D model is driven with a patch
//! of `(1, py, px)`: each window is then one slice, and the `(C, 1, py, px)`
//! buffer has the same memory layout as the NCHW tensor `(1, C, py, px)`.
//!
//! * The input is zero-padded at the high end of each axis that is smaller
//!   than the patch (zero = the mean after z-score normalisation); the output
//!   is cropped back.
//! * Window starts per axis ([`window_starts`]): `n = ceil((size − patch) /
//!   (patch · (1 − overlap))) + 1` windows, spread evenly from `0` to
//!   `size − patch` (rounded).
//! * Each window's output is multiplied by the importance map
//!   ([`gaussian_importance`]: a Gaussian with σ = patch/8 per axis, centred at
//!   `patch/2`, maximum 1) and accumulated together with the weights; the
//!   result is the weighted mean.

use ndarray::{s, Array3, Array4, ArrayView4, Zip};

/// Start indices of the windows along one axis (see module docs). `size >= patch` is assumed;
/// returns `[0]` when `size <= patch`.
pub fn window_starts(size: usize, patch: usize, overlap: f64) -> Vec<usize> {
    if size <= patch {
        return vec![0];
    }
    let target_step = (patch as f64 * (1.0 - overlap)).max(1.0);
    let n = ((size - patch) as f64 / target_step).ceil() as usize + 1;
    let actual = (size - patch) as f64 / (n - 1) as f64;
    (0..n).map(|i| (actual * i as f64).round() as usize).collect()
}

/// Gaussian importance map of shape `patch` (z, y, x): `exp(−Σ (i − c)² / (2σ²))` with
/// `c = patch/2` (integer division) and `σ = patch/8`, scaled to maximum 1.
pub fn gaussian_importance(patch: [usize; 3]) -> Array3<f32> {
    let axis = |n: usize| -> Vec<f64> {
        let c = (n / 2) as f64;
        let sigma = n as f64 / 8.0;
        (0..n).map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp()).collect()
    };
    let (gz, gy, gx) = (axis(patch[0]), axis(patch[1]), axis(patch[2]));
    let mut g = Array3::from_shape_fn(patch, |(z, y, x)| (gz[z] * gy[y] * gx[x]) as f32);
    let max = g.iter().copied().fold(0.0f32, f32::max);
    let min_pos = g.iter().copied().filter(|&v| v > 0.0).fold(f32::MAX, f32::min);
    g.mapv_inplace(|v| if v > 0.0 { v / max } else { min_pos / max });
    g
}

/// Input of one window: the channel-first patch `(C, pz, py, px)` in standard (C) layout.
pub struct Window<'a> {
    /// Patch voxels, length `C·pz·py·px`.
    pub data: &'a [f32],
    /// `[C, pz, py, px]`.
    pub shape: [usize; 4],
    /// Start `(z, y, x)` of the window in the padded input.
    pub start: [usize; 3],
}

/// Accumulates window outputs into their Gaussian-weighted mean ([`sliding_window`]'s
/// blending, usable on its own when the windows are produced elsewhere, e.g. on another
/// thread): [`Blender::add`] each window's `(K, pz, py, px)` output at its start, in the order
/// [`sliding_window`] visits them, then [`Blender::finish`]. The arithmetic per voxel is the
/// same as in [`sliding_window`], so both give bit-identical results.
pub struct Blender {
    patch: [usize; 3],
    padded_size: [usize; 3],
    weights: Array3<f32>,
    acc: Option<Array4<f32>>,
    wsum: Array3<f32>,
}

impl Blender {
    /// A blender for windows of `patch` (z, y, x) over a padded grid of `padded_size`
    /// (each axis at least the patch); `gaussian = false` weighs all windows 1.
    pub fn new(padded_size: [usize; 3], patch: [usize; 3], gaussian: bool) -> Blender {
        let weights = if gaussian { gaussian_importance(patch) } else { Array3::from_elem(patch, 1.0f32) };
        Blender { patch, padded_size, weights, acc: None, wsum: Array3::zeros(padded_size) }
    }

    /// Add the output `out` (`(K, pz, py, px)` flattened) of the window starting at `start`.
    ///
    /// # Errors
    /// A message when `out` is not a whole number of patch-sized channels or `K` differs from
    /// the first window's.
    pub fn add(&mut self, start: [usize; 3], out: &[f32]) -> Result<(), String> {
        let patch = self.patch;
        let patch_len = patch[0] * patch[1] * patch[2];
        if out.is_empty() || out.len() % patch_len != 0 {
            return Err(format!("output has {} values, not a whole number of channels of the patch {:?}", out.len(), patch));
        }
        let k = out.len() / patch_len;
        let padded = self.padded_size;
        let acc = self.acc.get_or_insert_with(|| Array4::zeros((k, padded[0], padded[1], padded[2])));
        if acc.dim().0 != k {
            return Err(format!("output channel count changed from {} to {k}", acc.dim().0));
        }
        let [z0, y0, x0] = start;
        let out = ArrayView4::from_shape((k, patch[0], patch[1], patch[2]), out).expect("length checked");
        let mut region = acc.slice_mut(s![.., z0..z0 + patch[0], y0..y0 + patch[1], x0..x0 + patch[2]]);
        for ch in 0..k {
            Zip::from(region.index_axis_mut(ndarray::Axis(0), ch))
                .and(out.index_axis(ndarray::Axis(0), ch))
                .and(&self.weights)
                .for_each(|a, &o, &w| *a += o * w);
        }
        Zip::from(self.wsum.slice_mut(s![z0..z0 + patch[0], y0..y0 + patch[1], x0..x0 + patch[2]]))
            .and(&self.weights)
            .for_each(|a, &w| *a += w);
        Ok(())
    }

    /// The blended scores `(K, z, y, x)` cropped to `size` (the unpadded grid); `None` when no
    /// window was added.
    pub fn finish(self, size: [usize; 3]) -> Option<Array4<f32>> {
        let mut acc = self.acc?;
        for mut ch in acc.outer_iter_mut() {
            Zip::from(&mut ch).and(&self.wsum).for_each(|a, &w| *a /= w);
        }
        if self.padded_size != size {
            Some(acc.slice(s![.., ..size[0], ..size[1], ..size[2]]).to_owned())
        } else {
            Some(acc)
        }
    }
}

/// The padded grid of an input of `size` for windows of `patch` (each axis at least the patch)
/// and the window starts per axis ([`window_starts`]).
pub fn window_grid(size: [usize; 3], patch: [usize; 3], overlap: f64) -> ([usize; 3], [Vec<usize>; 3]) {
    let padded_size = [0, 1, 2].map(|i| size[i].max(patch[i]));
    let starts = [0, 1, 2].map(|i| window_starts(padded_size[i], patch[i], overlap));
    (padded_size, starts)
}

/// Copy the window of `patch` starting at `start` out of `input` (`(C, z, y, x)`) into `buf`
/// (cleared first) in standard layout; the parts beyond `input`'s high end are zero (the
/// padding of the module docs).
pub fn copy_window(input: ArrayView4<f32>, start: [usize; 3], patch: [usize; 3], buf: &mut Vec<f32>) {
    let (c, nz, ny, nx) = input.dim();
    let [z0, y0, x0] = start;
    let (z1, y1, x1) = ((z0 + patch[0]).min(nz), (y0 + patch[1]).min(ny), (x0 + patch[2]).min(nx));
    buf.clear();
    if (z1 - z0, y1 - y0, x1 - x0) == (patch[0], patch[1], patch[2]) {
        buf.extend(input.slice(s![.., z0..z1, y0..y1, x0..x1]).iter().copied());
        return;
    }
    buf.resize(c * patch[0] * patch[1] * patch[2], 0.0);
    let mut dst = ndarray::ArrayViewMut4::from_shape((c, patch[0], patch[1], patch[2]), &mut buf[..]).expect("buffer length");
    dst.slice_mut(s![.., ..z1 - z0, ..y1 - y0, ..x1 - x0]).assign(&input.slice(s![.., z0..z1, y0..y1, x0..x1]));
}

/// Run `run` on every window of `input` (`(C, z, y, x)`) and blend the outputs ([`Blender`]).
///
/// `run` returns the window's output as `K` channels of the patch shape, flattened
/// `(K, pz, py, px)`; `K` must be the same for every window. With `gaussian = false`
/// all windows weigh 1 (plain averaging in overlaps). Windows are visited z-start outermost,
/// then y, then x.
///
/// Returns `(K, z, y, x)` on the grid of `input`.
///
/// # Errors
/// Whatever `run` returns; `Err(mismatch(..))` when a window's output length is not a
/// multiple of the patch size or `K` changes between windows.
pub fn sliding_window<E>(
    input: ArrayView4<f32>,
    patch: [usize; 3],
    overlap: f64,
    gaussian: bool,
    mut run: impl FnMut(Window<'_>) -> Result<Vec<f32>, E>,
    mismatch: impl Fn(String) -> E,
) -> Result<Array4<f32>, E> {
    let (c, nz, ny, nx) = input.dim();
    let size = [nz, ny, nx];
    let (padded_size, starts) = window_grid(size, patch, overlap);
    let mut blender = Blender::new(padded_size, patch, gaussian);
    let mut buf: Vec<f32> = Vec::with_capacity(c * patch[0] * patch[1] * patch[2]);
    for &z0 in &starts[0] {
        for &y0 in &starts[1] {
            for &x0 in &starts[2] {
                copy_window(input, [z0, y0, x0], patch, &mut buf);
                let out = run(Window { data: &buf, shape: [c, patch[0], patch[1], patch[2]], start: [z0, y0, x0] })?;
                blender.add([z0, y0, x0], &out).map_err(&mismatch)?;
            }
        }
    }
    Ok(blender.finish(size).expect("at least one window"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_match_nnunet() {
        assert_eq!(window_starts(10, 10, 0.5), vec![0]);
        assert_eq!(window_starts(5, 10, 0.5), vec![0]);
        // (100-64)/32 = 1.125 -> 3 windows, step 18
        assert_eq!(window_starts(100, 64, 0.5), vec![0, 18, 36]);
        assert_eq!(window_starts(20, 8, 0.0), vec![0, 6, 12]);
    }

    #[test]
    fn gaussian_peak_and_sigma() {
        let g = gaussian_importance([1, 16, 8]);
        assert_eq!(g[[0, 8, 4]], 1.0);
        // one sigma (=2 voxels) off-centre along y: exp(-1/2)
        assert!((g[[0, 10, 4]] - (-0.5f32).exp()).abs() < 1e-6);
    }

    #[test]
    fn identity_network_reproduces_input() {
        let input = Array4::from_shape_fn((2, 5, 9, 7), |(c, z, y, x)| (c * 1000 + z * 100 + y * 10 + x) as f32);
        let mut calls = 0;
        let out = sliding_window::<String>(
            input.view(),
            [4, 4, 4],
            0.5,
            true,
            |w| {
                calls += 1;
                Ok(w.data.to_vec())
            },
            |m| m,
        )
        .unwrap();
        assert_eq!(calls, 2 * 4 * 3);
        assert_eq!(out.dim(), (2, 5, 9, 7));
        for (a, b) in out.iter().zip(input.iter()) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        // smaller than the patch: padded and cropped
        let small = Array4::from_elem((1, 2, 2, 2), 3.0f32);
        let out = sliding_window::<String>(small.view(), [4, 4, 4], 0.5, true, |w| Ok(w.data.to_vec()), |m| m).unwrap();
        assert_eq!(out.dim(), small.dim());
        assert!(out.iter().all(|v| (v - 3.0).abs() < 1e-5), "{out:?}");
    }
}
