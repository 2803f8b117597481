//! Intensity normalisation of model input channels (manifest `[normalization]`).
//!
//! Applied per channel on the source grid (before resampling to the model
//! spacing), in `f32`, with statistics accumulated in `f64`.

use ndarray::Array3;

use super::manifest::Normalization;

/// Normalise `data` in place according to `n` (see [`Normalization`] for formulas).
pub fn normalize(data: &mut Array3<f32>, n: &Normalization) {
    match *n {
        Normalization::None => {}
        Normalization::Zscore { foreground_only, foreground_threshold } => {
            let (mut count, mut sum) = (0u64, 0f64);
            for &v in data.iter() {
                if !foreground_only || v > foreground_threshold {
                    count += 1;
                    sum += v as f64;
                }
            }
            if count == 0 {
                return;
            }
            let mean = sum / count as f64;
            let mut ss = 0f64;
            for &v in data.iter() {
                if !foreground_only || v > foreground_threshold {
                    ss += (v as f64 - mean).powi(2);
                }
            }
            let std = (ss / count as f64).sqrt().max(1e-8);
            let (mean, inv) = (mean as f32, (1.0 / std) as f32);
            data.mapv_inplace(|v| (v - mean) * inv);
        }
        Normalization::Ct { clip, offset, scale } => {
            let inv = 1.0 / scale;
            data.mapv_inplace(|v| (v.clamp(clip[0], clip[1]) - offset) * inv);
        }
        Normalization::Percentile { lower, upper } => {
            let mut values: Vec<f32> = data.iter().copied().collect();
            let lo = percentile_unsorted(&mut values, lower as f64);
            let hi = percentile_unsorted(&mut values, upper as f64);
            let range = (hi - lo).max(1e-8);
            data.mapv_inplace(|v| ((v.clamp(lo, hi) - lo) as f64 / range as f64) as f32);
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
