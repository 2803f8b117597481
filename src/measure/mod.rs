//! measure stage: quantitative results per segment.
//!
//! For each segment of a [`Segmentation`] (label map on the source grid,
//! `(nz, ny, nx)`), with voxel spacing `(sz, sy, sx)` mm from the source (sz
//! measured along the slice normal):
//! * voxel count `n`;
//! * volume (mL) = `n · sz·sy·sx / 1000`;
//! * cross-sectional area of slice `z` (cm²) = voxels of the segment in that slice
//!   `· sy·sx / 100`, i.e. the area in the slice plane; the maximum over slices and
//!   the area at the slice nearest the segment's centroid are reported;
//! * centroid (LPS, mm) = mean position of the segment's voxel centres;
//! * mean and population standard deviation of the source intensity inside the
//!   segment (real-world values after Rescale Slope/Intercept; reported as mean
//!   attenuation in HU when the modality is CT);
//! * left/right split: voxels whose centre lies on the patient's left (LPS `x` greater
//!   than the midline) versus right, where the midline is the sagittal plane
//!   through the centroid of all segmented voxels of the job (robust to a patient
//!   lying off the scanner's x = 0). Meaningful for bilateral structures (both
//!   thighs or calves in one field of view); reported for every segment.
//!
//! * fat fraction (%), when the job carries Dixon water and fat channels
//!   ([`StudyJob::channel`], same grid as the primary volume): voxel-wise
//!   `FF = F / (F + W)` from the fat `F` and water `W` images, averaged over the
//!   segment's voxels (and over each side's voxels), times 100. Voxels whose signal
//!   `F + W` is not above [`FF_SIGNAL_FLOOR`] × the largest `F + W` of the job (no signal:
//!   FF undefined) or not finite are left out of the average.
//!
//!   **Caveat — magnitude bias at low FF.** Dixon water and fat images reconstructed as
//!   magnitudes carry Rician noise whose mean is positive, so in a nearly fat-free tissue the
//!   fat image is the noise floor, not zero, and FF = F/(F+W) is biased upwards (and by
//!   symmetry downwards near 100 %); the bias grows as SNR falls. Uncorrected T1 weighting
//!   (fat's shorter T1 at high flip angles) biases FF upwards too. Values of a few percent in
//!   lean muscle are therefore not reliable absolute numbers. Source: C.-Y. Liu, C. A.
//!   McKenzie, H. Yu, J. H. Brittain, S. B. Reeder, "Fat quantification with IDEAL gradient
//!   echo imaging: correction of bias from T1 and noise", Magn. Reson. Med. 58(2):354–364,
//!   2007 (they remove it with magnitude discrimination / phase-constrained reconstruction and
//!   low flip angles; this node reports the plain ratio of the images it receives).
//!
//! Results are written per job as `measurements.json` and `measurements.csv`.

use std::path::Path;

use crossbeam_channel::{Receiver, Sender};
use tracing::{info, info_span, warn};

use crate::pipeline::messages::{
    ChannelKind, Findings, SegmentMeasurements, Segmentation, SideMeasurements, StudyJob,
};

/// Relative signal floor of the fat-fraction guard: a voxel enters the FF average only if
/// `F + W > FF_SIGNAL_FLOOR · max(F + W)` over the job (i.e. `F + W` is not ≈ 0).
pub const FF_SIGNAL_FLOOR: f64 = 1e-6;

/// Voxel-wise fat fraction `F / (F + W)` (fraction 0–1 for magnitude images) on the grid of
/// the job's primary volume, shape `(nz, ny, nx)`; `NaN` where undefined (signal `F + W` at or
/// below [`FF_SIGNAL_FLOOR`] × its maximum, or a non-finite input).
///
/// Returns `None` when the job has no [`ChannelKind::Water`] or no [`ChannelKind::Fat`]
/// channel, or when a channel's shape differs from the primary volume's (logged).
/// Source of the formula: signal fat fraction of chemical-shift (Dixon) imaging, e.g.
/// Reeder et al., JMRI 34(4):729–749, 2011; bias caveat: Liu et al., MRM 58:354, 2007.
pub fn fat_fraction_map(job: &StudyJob) -> Option<ndarray::Array3<f32>> {
    let w = job.channel(ChannelKind::Water)?;
    let f = job.channel(ChannelKind::Fat)?;
    let shape = job.volume.data.shape();
    if w.volume.data.shape() != shape || f.volume.data.shape() != shape {
        warn!(
            volume = ?shape,
            water = ?w.volume.data.shape(),
            fat = ?f.volume.data.shape(),
            "Dixon channels are not on the primary grid; no fat fraction"
        );
        return None;
    }
    let max_sum = ndarray::Zip::from(&w.volume.data)
        .and(&f.volume.data)
        .fold(0f64, |m, &w, &f| {
            let s = w as f64 + f as f64;
            if s.is_finite() { m.max(s) } else { m }
        });
    let floor = FF_SIGNAL_FLOOR * max_sum;
    Some(ndarray::Zip::from(&w.volume.data).and(&f.volume.data).map_collect(|&w, &f| {
        let s = w as f64 + f as f64;
        if s.is_finite() && s > floor && s > 0.0 {
            (f as f64 / s) as f32
        } else {
            f32::NAN
        }
    }))
}

#[derive(Default, Clone)]
struct Acc {
    n: u64,
    sum: f64,
    sumsq: f64,
    pos: [f64; 3],
    per_slice: Vec<u64>,
    left_n: u64,
    left_sum: f64,
    right_n: u64,
    right_sum: f64,
    /// fat fraction sums (fraction 0–1) and counts of voxels with a defined FF
    ff_n: u64,
    ff_sum: f64,
    left_ff_n: u64,
    left_ff_sum: f64,
    right_ff_n: u64,
    right_ff_sum: f64,
}

/// Measure every segment listed in `seg.segments` (also those with zero voxels).
///
/// `seg.labels` must have the shape of `seg.job.volume.data`; otherwise every
/// segment is reported with zero voxels and a warning is logged (an upstream bug).
pub fn measure(seg: &Segmentation) -> Vec<SegmentMeasurements> {
    let vol = &seg.job.volume;
    let labels = &seg.labels;
    let (nz, ny, nx) = vol.shape();
    let max_label = seg.segments.iter().map(|s| s.label_value as usize).max().unwrap_or(0);
    let mut acc = vec![Acc { per_slice: vec![0; nz], ..Default::default() }; max_label + 1];
    let shapes_match = labels.shape() == vol.data.shape();
    if !shapes_match {
        warn!(labels = ?labels.shape(), volume = ?vol.data.shape(), "label map and volume differ in shape");
    }
    // LPS x of voxel (z, y, x) is affine: x0 + z·dz + y·dy + x·dx.
    let dx = [
        vol.spacing[0] * vol.slice_direction[0],
        vol.spacing[1] * vol.column_direction[0],
        vol.spacing[2] * vol.row_direction[0],
    ];
    let ff_map = fat_fraction_map(&seg.job);
    let mut midline = 0.0;
    if shapes_match {
        // Both passes walk the label map row by row (z, y) in memory order and skip rows
        // without a label at once: a segmentation labels a small part of the field of view,
        // and this visits each label byte once per pass without any list of voxels.
        // pass 1: midline from the centroid of all labelled voxels
        let (mut n_all, mut sx_all) = (0u64, 0f64);
        for (z, plane) in labels.outer_iter().enumerate() {
            for (y, row) in plane.outer_iter().enumerate() {
                if row.iter().all(|&l| l == 0) {
                    continue;
                }
                let base = z as f64 * dx[0] + y as f64 * dx[1];
                for (x, &l) in row.iter().enumerate() {
                    if l != 0 {
                        n_all += 1;
                        sx_all += base + x as f64 * dx[2];
                    }
                }
            }
        }
        if n_all > 0 {
            midline = sx_all / n_all as f64;
        }
        // pass 2: per-label sums
        for (z, plane) in labels.outer_iter().enumerate() {
            for (y, row) in plane.outer_iter().enumerate() {
                if row.iter().all(|&l| l == 0) {
                    continue;
                }
                let base = z as f64 * dx[0] + y as f64 * dx[1];
                let data_row = vol.data.slice(ndarray::s![z, y, ..]);
                let ff_row = ff_map.as_ref().map(|m| m.slice(ndarray::s![z, y, ..]));
                for (x, &l) in row.iter().enumerate() {
                    let l = l as usize;
                    if l == 0 || l > max_label {
                        continue;
                    }
                    let v = data_row[x] as f64;
                    let a = &mut acc[l];
                    a.n += 1;
                    a.sum += v;
                    a.sumsq += v * v;
                    a.pos[0] += z as f64;
                    a.pos[1] += y as f64;
                    a.pos[2] += x as f64;
                    a.per_slice[z] += 1;
                    let is_left = base + x as f64 * dx[2] > midline;
                    if is_left {
                        a.left_n += 1;
                        a.left_sum += v;
                    } else {
                        a.right_n += 1;
                        a.right_sum += v;
                    }
                    if let Some(ff) = ff_row.as_ref().map(|m| m[x] as f64).filter(|f| f.is_finite()) {
                        a.ff_n += 1;
                        a.ff_sum += ff;
                        if is_left {
                            a.left_ff_n += 1;
                            a.left_ff_sum += ff;
                        } else {
                            a.right_ff_n += 1;
                            a.right_ff_sum += ff;
                        }
                    }
                }
            }
        }
    }
    let _ = (ny, nx);
    let voxel_ml = vol.voxel_volume_mm3() / 1000.0;
    let pixel_cm2 = vol.spacing[1] * vol.spacing[2] / 100.0;
    let is_ct = seg.job.header.modality == "CT";
    let mean_of = |sum: f64, n: u64| if n > 0 { sum / n as f64 } else { 0.0 };
    // mean FF in %, only where the job has Dixon channels and the segment has defined voxels
    let ff_percent =
        |sum: f64, n: u64| (ff_map.is_some() && n > 0).then(|| 100.0 * sum / n as f64);
    seg.segments
        .iter()
        .map(|s| {
            let a = &acc[s.label_value as usize];
            let mean = mean_of(a.sum, a.n);
            let sd = if a.n > 0 { (a.sumsq / a.n as f64 - mean * mean).max(0.0).sqrt() } else { 0.0 };
            let csa: Vec<f64> = a.per_slice.iter().map(|&c| c as f64 * pixel_cm2).collect();
            let (centroid_slice, centroid_lps_mm) = if a.n > 0 {
                let c = [a.pos[0] / a.n as f64, a.pos[1] / a.n as f64, a.pos[2] / a.n as f64];
                let zc = (c[0].round() as usize).min(nz.saturating_sub(1));
                (Some(zc), Some(vol.voxel_to_patient(c[0], c[1], c[2])))
            } else {
                (None, None)
            };
            SegmentMeasurements {
                label_value: s.label_value,
                label: s.label.clone(),
                voxel_count: a.n,
                volume_ml: a.n as f64 * voxel_ml,
                max_cross_sectional_area_cm2: csa.iter().cloned().fold(0.0, f64::max),
                area_at_centroid_slice_cm2: centroid_slice.map(|z| csa[z]).unwrap_or(0.0),
                cross_sectional_area_cm2: csa,
                centroid_slice,
                centroid_lps_mm,
                mean_intensity: mean,
                sd_intensity: sd,
                mean_attenuation_hu: (is_ct && a.n > 0).then_some(mean),
                left: SideMeasurements {
                    voxel_count: a.left_n,
                    volume_ml: a.left_n as f64 * voxel_ml,
                    mean_intensity: mean_of(a.left_sum, a.left_n),
                    fat_fraction_percent: ff_percent(a.left_ff_sum, a.left_ff_n),
                },
                right: SideMeasurements {
                    voxel_count: a.right_n,
                    volume_ml: a.right_n as f64 * voxel_ml,
                    mean_intensity: mean_of(a.right_sum, a.right_n),
                    fat_fraction_percent: ff_percent(a.right_ff_sum, a.right_ff_n),
                },
                fat_fraction_percent: ff_percent(a.ff_sum, a.ff_n),
            }
        })
        .collect()
}

/// Write `measurements.json` and `measurements.csv` into `dir`.
///
/// # Errors
/// I/O errors.
pub fn write_measurements(dir: &Path, m: &[SegmentMeasurements]) -> std::io::Result<()> {
    std::fs::write(dir.join("measurements.json"), serde_json::to_vec_pretty(m).expect("serializes"))?;
    let mut csv = String::from(
        "label_value,label,voxel_count,volume_ml,max_cross_sectional_area_cm2,area_at_centroid_slice_cm2,\
         mean_intensity,sd_intensity,left_volume_ml,right_volume_ml,\
         fat_fraction_percent,left_fat_fraction_percent,right_fat_fraction_percent\n",
    );
    for r in m {
        csv.push_str(&format!(
            "{},\"{}\",{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{}\n",
            r.label_value,
            r.label.replace('"', "\"\""),
            r.voxel_count,
            r.volume_ml,
            r.max_cross_sectional_area_cm2,
            r.area_at_centroid_slice_cm2,
            r.mean_intensity,
            r.sd_intensity,
            r.left.volume_ml,
            r.right.volume_ml,
            opt4(r.fat_fraction_percent),
            opt4(r.left.fat_fraction_percent),
            opt4(r.right.fat_fraction_percent)
        ));
    }
    std::fs::write(dir.join("measurements.csv"), csv)
}

/// An optional value for the CSV: 4 decimals, or an empty field when absent.
fn opt4(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_default()
}

/// Measure one segmentation and write its files into the job directory.
pub fn measure_job(seg: Segmentation) -> Findings {
    let span = info_span!("measure", job = %seg.job.job_id);
    let _g = span.enter();
    let measurements = measure(&seg);
    if let Err(e) = write_measurements(&seg.job.job_dir, &measurements) {
        warn!(error = %e, "could not write measurement files");
    }
    for m in &measurements {
        info!(
            segment = %m.label,
            voxels = m.voxel_count,
            volume_ml = format!("{:.1}", m.volume_ml),
            fat_fraction_percent = m.fat_fraction_percent.map(|f| format!("{f:.1}")),
            "measured"
        );
    }
    Findings { segmentation: seg, measurements }
}

/// Run the stage until `rx` disconnects.
pub fn run(rx: Receiver<Segmentation>, tx: Sender<Findings>) {
    for seg in crate::pipeline::health::iter(&rx) {
        if tx.send({ let _t = crate::http::metrics::StageTimer::new("measure"); measure_job(seg) }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::messages::*;
    use crate::volume::Volume;
    use ndarray::Array3;
    use std::sync::Arc;

    fn seg_of(data: Array3<f32>, labels: Array3<u8>, spacing: [f64; 3]) -> Segmentation {
        seg_at(data, labels, spacing, [0.0; 3])
    }

    fn seg_at(data: Array3<f32>, labels: Array3<u8>, spacing: [f64; 3], origin: [f64; 3]) -> Segmentation {
        let vol = Volume {
            data,
            spacing,
            origin,
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 1.0, 0.0],
            slice_direction: [0.0, 0.0, 1.0],
            slices: vec![],
        };
        let code = Code::new("85756007", "SCT", "Tissue");
        let desc = |v: u8, l: &str| SegmentDescription {
            label_value: v,
            label: l.into(),
            category: code.clone(),
            property_type: code.clone(),
            type_modifier: None,
            anatomic_region: None,
            color_rgb: [1, 2, 3],
            algorithm_type: SegmentAlgorithmType::Automatic,
        };
        Segmentation {
            job: StudyJob {
                job_id: "j".into(),
                version: 1,
                header: SeriesHeader {
                    study_instance_uid: "1".into(),
                    series_instance_uid: "2".into(),
                    frame_of_reference_uid: "3".into(),
                    modality: "CT".into(),
                    dataset: Arc::new(dicom_object::InMemDicomObject::new_empty()),
                },
                volume: Arc::new(vol),
                job_dir: std::env::temp_dir(),
                channels: Vec::new(),
            },
            labels: Arc::new(labels),
            segments: vec![desc(1, "a"), desc(2, "b")],
            algorithm: AlgorithmIdentification { family: code.clone(), name: "t".into(), version: "1".into() },
        }
    }

    #[test]
    fn cuboid_known_answers() {
        // 4 slices of 10x10, spacing z=2 mm, y=0.5 mm, x=0.5 mm.
        let mut labels = Array3::<u8>::zeros((4, 10, 10));
        let mut data = Array3::<f32>::zeros((4, 10, 10));
        // segment 1: slices 0..3, 4x5 block → 60 voxels; values 10 on slice 0..2, 40 on slice 2
        for z in 0..3 {
            for y in 0..4 {
                for x in 0..5 {
                    labels[[z, y, x]] = 1;
                    data[[z, y, x]] = if z == 2 { 40.0 } else { 10.0 };
                }
            }
        }
        // segment 2: a single 6x6 plane on slice 3
        for y in 2..8 {
            for x in 2..8 {
                labels[[3, y, x]] = 2;
                data[[3, y, x]] = -5.0;
            }
        }
        let m = measure(&seg_of(data, labels, [2.0, 0.5, 0.5]));
        assert_eq!(m[0].voxel_count, 60);
        assert!((m[0].volume_ml - 60.0 * 0.5 / 1000.0).abs() < 1e-12);
        assert!((m[0].max_cross_sectional_area_cm2 - 20.0 * 0.25 / 100.0).abs() < 1e-12);
        assert!((m[0].mean_intensity - 20.0).abs() < 1e-9);
        // values: 40 voxels of 10 and 20 of 40 → mean 20, var = (40·100 + 20·400)/60 − 400 = 200
        assert!((m[0].sd_intensity - 200f64.sqrt()).abs() < 1e-9);
        assert_eq!(m[1].voxel_count, 36);
        assert!((m[1].max_cross_sectional_area_cm2 - 0.09).abs() < 1e-12);
        assert_eq!(m[1].mean_intensity, -5.0);
        assert_eq!(m[1].sd_intensity, 0.0);
    }

    /// The row-wise passes against a plain voxel-by-voxel computation on sparse random label
    /// maps with an oblique geometry (so the left/right test depends on z, y and x): counts
    /// and sums are exact (same summation order), including the left/right split.
    #[test]
    fn row_wise_passes_equal_a_voxel_by_voxel_computation() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..20 {
            let (nz, ny, nx) = (3 + case % 4, 5 + case % 7, 4 + case % 9);
            let labels = Array3::from_shape_fn((nz, ny, nx), |_| {
                let r = next();
                // ~85 % of rows-worth of voxels empty; labels 1, 2 and an unlisted 3
                if r % 100 < 85 { 0 } else { (r % 3) as u8 + 1 }
            });
            let data = Array3::from_shape_fn((nz, ny, nx), |_| (next() % 2000) as f32 - 1000.0);
            let mut seg = seg_of(data.clone(), labels.clone(), [1.5, 0.7, 0.9]);
            let v = Arc::get_mut(&mut seg.job.volume).unwrap();
            let (c, s_) = (0.8f64, 0.6f64);
            v.row_direction = [c, s_, 0.0];
            v.column_direction = [-s_, c, 0.0];
            v.slice_direction = [0.0, 0.0, 1.0];
            let m = measure(&seg);
            let dx = [1.5 * 0.0, 0.7 * -s_, 0.9 * c];
            let (mut n_all, mut sx_all) = (0u64, 0f64);
            for ((z, y, x), &l) in labels.indexed_iter() {
                if l != 0 {
                    n_all += 1;
                    sx_all += z as f64 * dx[0] + y as f64 * dx[1] + x as f64 * dx[2];
                }
            }
            let midline = if n_all > 0 { sx_all / n_all as f64 } else { 0.0 };
            for (k, label) in [1u8, 2].into_iter().enumerate() {
                let (mut n, mut sum, mut left) = (0u64, 0f64, 0u64);
                let mut per_slice = vec![0u64; nz];
                for ((z, y, x), &l) in labels.indexed_iter() {
                    if l == label {
                        n += 1;
                        sum += data[[z, y, x]] as f64;
                        per_slice[z] += 1;
                        left += (z as f64 * dx[0] + y as f64 * dx[1] + x as f64 * dx[2] > midline) as u64;
                    }
                }
                assert_eq!(m[k].voxel_count, n, "case {case} label {label}");
                assert_eq!(m[k].left.voxel_count, left, "case {case} label {label}");
                assert_eq!(m[k].right.voxel_count, n - left, "case {case} label {label}");
                let mean = if n > 0 { sum / n as f64 } else { 0.0 };
                assert_eq!(m[k].mean_intensity, mean, "case {case} label {label}");
                let area = 0.7 * 0.9 / 100.0;
                let csa: Vec<f64> = per_slice.iter().map(|&c| c as f64 * area).collect();
                assert_eq!(m[k].cross_sectional_area_cm2, csa, "case {case} label {label}");
            }
        }
    }

    /// Sphere of radius 20 mm on a 0.5 mm grid: volume 4/3·π·r³ = 33.510 mL within 1 %.
    #[test]
    fn sphere_volume_within_one_percent() {
        let n = 90;
        let h = 0.5;
        let r = 20.0;
        let c = (n as f64 - 1.0) / 2.0;
        let labels = Array3::from_shape_fn((n, n, n), |(z, y, x)| {
            let d2 = ((z as f64 - c) * h).powi(2) + ((y as f64 - c) * h).powi(2) + ((x as f64 - c) * h).powi(2);
            (d2 <= r * r) as u8
        });
        let data = labels.mapv(|l| l as f32 * 100.0);
        let m = measure(&seg_of(data, labels, [h, h, h]));
        let expected = 4.0 / 3.0 * std::f64::consts::PI * r.powi(3) / 1000.0;
        assert!((m[0].volume_ml / expected - 1.0).abs() < 0.01, "{} vs {expected}", m[0].volume_ml);
        // the largest cross-section is the equator: π r² = 12.566 cm²
        let equator = std::f64::consts::PI * r * r / 100.0;
        assert!((m[0].max_cross_sectional_area_cm2 / equator - 1.0).abs() < 0.01);
        assert_eq!(m[0].centroid_slice, Some(45));
        assert_eq!(m[0].mean_attenuation_hu, Some(100.0), "CT: mean reported as HU");
    }

    /// Two cylinders (legs) along z, radius 15 mm, the patient lying 30 mm off x = 0:
    /// area in the slice plane π r², left/right split at the midline between them.
    #[test]
    fn cylinders_area_and_left_right_split() {
        let (nz, ny, nx) = (20, 80, 240);
        let h = 0.5; // in-plane spacing, mm
        let r = 15.0;
        // voxel x index i sits at LPS x = origin_x + i·h; origin_x = -20 → cylinders at x = +10 and x = +70 mm
        let origin = [-20.0, 0.0, 0.0];
        let cy = 40.0;
        let centres = [(10.0, 1u8, 30.0f32), (70.0, 2u8, 60.0f32)];
        let mut labels = Array3::<u8>::zeros((nz, ny, nx));
        let mut data = Array3::<f32>::zeros((nz, ny, nx));
        for ((z, y, x), l) in labels.indexed_iter_mut() {
            let px = origin[0] + x as f64 * h;
            for (cx, lab, hu) in centres {
                if (px - cx).powi(2) + ((y as f64 - cy) * h).powi(2) <= r * r {
                    *l = lab;
                    data[[z, y, x]] = hu;
                }
            }
        }
        let m = measure(&seg_at(data, labels, [3.0, h, h], origin));
        let area = std::f64::consts::PI * r * r / 100.0;
        for s in &m {
            assert!((s.area_at_centroid_slice_cm2 / area - 1.0).abs() < 0.01, "{}", s.area_at_centroid_slice_cm2);
            let len_cm = 20.0 * 3.0 / 10.0;
            assert!((s.volume_ml / (area * len_cm) - 1.0).abs() < 0.01);
        }
        // label 1 at x = +10 mm is right of the midline (x = 40), label 2 at x = +70 mm is left (LPS +x = left)
        assert_eq!(m[0].left.voxel_count, 0);
        assert_eq!(m[0].right.voxel_count, m[0].voxel_count);
        assert_eq!(m[1].left.voxel_count, m[1].voxel_count);
        assert_eq!(m[1].left.mean_intensity, 60.0);
        assert_eq!(m[0].right.mean_intensity, 30.0);
        let c = m[1].centroid_lps_mm.unwrap();
        assert!((c[0] - 70.0).abs() < 0.1 && (c[1] - 20.0).abs() < 0.1 && (c[2] - 28.5).abs() < 1e-9, "{c:?}");
    }
}
