//! Intensity normalisation of model input channels (manifest `[normalization]`).
//!
//! Applied per channel on the source grid (before resampling to the model
//! spacing), in `f32`, with statistics accumulated in `f64`.

use ndarray::{Array3, ArrayView3, Axis};
use rayon::prelude::*;

use super::manifest::Normalization;

/// Normalise `data` in place according to `n` (see [`Normalization`] for formulas):
/// [`Normalizer::fit`] then [`Normalizer::apply`] on every voxel.
pub fn normalize(data: &mut Array3<f32>, n: &Normalization) {
    let norm = Normalizer::fit(data.view(), n);
    if !matches!(norm, Normalizer::Identity) {
        match data.as_slice_mut() {
            Some(d) => d.par_iter_mut().for_each(|v| *v = norm.apply(*v)),
            None => data.mapv_inplace(|v| norm.apply(v)),
        }
    }
}

/// The element-wise map of one channel's normalisation, with its statistics computed from the
/// channel ([`Normalizer::fit`]); [`Normalizer::apply`] maps one intensity. Splitting fit and
/// apply lets the engine normalise while resampling (`resample::resample_linear_map`) instead
/// of writing a normalised copy of the volume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalizer {
    /// No change.
    Identity,
    /// `(v − mean) · inv_std`.
    Zscore { mean: f32, inv_std: f32 },
    /// `(clamp(v, lo, hi) − offset) · inv_scale`.
    Ct { lo: f32, hi: f32, offset: f32, inv_scale: f32 },
    /// `(clamp(v, lo, hi) − lo) / range`, evaluated in f64.
    Percentile { lo: f32, hi: f32, range: f32 },
}

impl Normalizer {
    /// Statistics of `data` (any layout) for scheme `n`. Z-score sums run in f64 per `z` plane
    /// in parallel and are combined in plane order, so the result does not depend on the
    /// thread count. A z-score over no voxels (empty foreground) is the identity.
    pub fn fit(data: ArrayView3<f32>, n: &Normalization) -> Normalizer {
        match *n {
            Normalization::None => Normalizer::Identity,
            Normalization::Zscore { foreground_only, foreground_threshold } => {
                let fg = |v: f32| !foreground_only || v > foreground_threshold;
                let planes: Vec<(u64, f64)> = (0..data.shape()[0])
                    .into_par_iter()
                    .map(|z| {
                        data.index_axis(Axis(0), z)
                            .iter()
                            .filter(|&&v| fg(v))
                            .fold((0u64, 0f64), |(c, s), &v| (c + 1, s + v as f64))
                    })
                    .collect();
                let (count, sum) = planes.iter().fold((0u64, 0f64), |(c, s), &(pc, ps)| (c + pc, s + ps));
                if count == 0 {
                    return Normalizer::Identity;
                }
                let mean = sum / count as f64;
                let ss: f64 = (0..data.shape()[0])
                    .into_par_iter()
                    .map(|z| {
                        data.index_axis(Axis(0), z).iter().filter(|&&v| fg(v)).map(|&v| (v as f64 - mean).powi(2)).sum::<f64>()
                    })
                    .collect::<Vec<f64>>()
                    .iter()
                    .sum();
                let std = (ss / count as f64).sqrt().max(1e-8);
                Normalizer::Zscore { mean: mean as f32, inv_std: (1.0 / std) as f32 }
            }
            Normalization::Ct { clip, offset, scale } => {
                Normalizer::Ct { lo: clip[0], hi: clip[1], offset, inv_scale: 1.0 / scale }
            }
            Normalization::Percentile { lower, upper } => {
                let mut values: Vec<f32> = data.iter().copied().collect();
                let lo = percentile_unsorted(&mut values, lower as f64);
                let hi = percentile_unsorted(&mut values, upper as f64);
                Normalizer::Percentile { lo, hi, range: (hi - lo).max(1e-8) }
            }
        }
    }

    /// The normalised value of intensity `v`.
    #[inline]
    pub fn apply(&self, v: f32) -> f32 {
        match *self {
            Normalizer::Identity => v,
            Normalizer::Zscore { mean, inv_std } => (v - mean) * inv_std,
            Normalizer::Ct { lo, hi, offset, inv_scale } => (v.clamp(lo, hi) - offset) * inv_scale,
            Normalizer::Percentile { lo, hi, range } => ((v.clamp(lo, hi) - lo) as f64 / range as f64) as f32,
        }
    }
}

/// Percentile `q` (0..100) of ascending `sorted` values with linear interpolation
/// between order statistics (NumPy's default `method="linear"`).
pub fn percentile(sorted: &[f32], q: f64) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(sorted.len() - 1);
    let f = pos - i as f64;
    (sorted[i] as f64 * (1.0 - f) + sorted[j] as f64 * f) as f32
}

/// [`percentile`] of unsorted `values` by selection (O(n), no full sort); reorders `values`.
pub fn percentile_unsorted(values: &mut [f32], q: f64) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let pos = q / 100.0 * (values.len() - 1) as f64;
    let i = pos.floor() as usize;
    let f = pos - i as f64;
    let (_, &mut a, rest) = values.select_nth_unstable_by(i, |x, y| x.total_cmp(y));
    // the next order statistic is the minimum of the elements above rank i
    let b = if rest.is_empty() { a } else { rest.iter().copied().fold(f32::INFINITY, f32::min) };
    (a as f64 * (1.0 - f) + b as f64 * f) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zscore_over_foreground() {
        let mut a = Array3::from_shape_vec((1, 1, 4), vec![0.0, 2.0, 4.0, 6.0]).unwrap();
        normalize(&mut a, &Normalization::Zscore { foreground_only: true, foreground_threshold: 0.0 });
        // foreground 2,4,6: mean 4, population std sqrt(8/3)
        let s = (8.0f32 / 3.0).sqrt();
        assert!((a[[0, 0, 0]] + 4.0 / s).abs() < 1e-6);
        assert!((a[[0, 0, 3]] - 2.0 / s).abs() < 1e-6);
    }

    #[test]
    fn ct_and_percentile() {
        let mut a = Array3::from_shape_vec((1, 1, 3), vec![-2000.0, 0.0, 3000.0]).unwrap();
        normalize(&mut a, &Normalization::Ct { clip: [-1000.0, 1000.0], offset: 0.0, scale: 1000.0 });
        assert_eq!(a.as_slice().unwrap(), &[-1.0, 0.0, 1.0]);
        let sorted = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&sorted, 50.0), 3.0);
        assert_eq!(percentile(&sorted, 10.0), 1.4);
        let mut shuffled = [4.0, 1.0, 5.0, 3.0, 2.0];
        assert_eq!(percentile_unsorted(&mut shuffled, 10.0), 1.4);
        assert_eq!(percentile_unsorted(&mut shuffled, 100.0), 5.0);
        assert_eq!(percentile_unsorted(&mut shuffled, 62.5), 3.5);
        let mut b = Array3::from_shape_vec((1, 1, 5), sorted.to_vec()).unwrap();
        normalize(&mut b, &Normalization::Percentile { lower: 25.0, upper: 75.0 });
        assert_eq!(b.as_slice().unwrap(), &[0.0, 0.0, 0.5, 1.0, 1.0]);
    }
}
