//! measure stage: quantitative results per segment.
//!
//! For each segment of a [`Segmentation`] (label map on the source grid):
//! * voxel count;
//! * volume in mL = voxel count × voxel volume (mm³) / 1000, voxel volume from the
//!   source spacing (z spacing measured along the slice normal);
//! * cross-sectional area per slice in cm² = voxels in the slice × row spacing ×
//!   column spacing (mm²) / 100, i.e. the area in the slice plane; the maximum over slices is reported;
//! * mean and standard deviation (population, N in the denominator) of the source intensity
//!   inside the segment — HU on CT after Rescale Slope/Intercept.
//!
//! Results are written per job as `measurements.json` and `measurements.csv`.

use std::path::Path;

use crossbeam_channel::{Receiver, Sender};
use tracing::{info, info_span, warn};

use crate::pipeline::messages::{Findings, SegmentMeasurements, Segmentation};

/// Measure every segment listed in `seg.segments` (also those with zero voxels).
///
/// Shapes: `seg.labels` and `seg.job.volume.data` are both `(nz, ny, nx)`; a mismatch
/// is a programming error upstream and yields zero-voxel results for safety.
pub fn measure(seg: &Segmentation) -> Vec<SegmentMeasurements> {
    let vol = &seg.job.volume;
    let labels = &seg.labels;
    let (nz, ny, nx) = vol.shape();
    let max_label = seg.segments.iter().map(|s| s.label_value as usize).max().unwrap_or(0);
    // accumulators per label value: count, sum, sum of squares, per-slice counts
    let mut count = vec![0u64; max_label + 1];
    let mut sum = vec![0f64; max_label + 1];
    let mut sumsq = vec![0f64; max_label + 1];
    let mut max_slice = vec![0u64; max_label + 1];
    if labels.shape() == vol.data.shape() {
        let mut slice_count = vec![0u64; max_label + 1];
        for z in 0..nz {
            slice_count.iter_mut().for_each(|c| *c = 0);
            let ls = labels.index_axis(ndarray::Axis(0), z);
            let vs = vol.data.index_axis(ndarray::Axis(0), z);
            for (l, v) in ls.iter().zip(vs.iter()) {
                let l = *l as usize;
                if l != 0 && l <= max_label {
                    slice_count[l] += 1;
                    let v = *v as f64;
                    sum[l] += v;
                    sumsq[l] += v * v;
                }
            }
            for l in 1..=max_label {
                count[l] += slice_count[l];
                max_slice[l] = max_slice[l].max(slice_count[l]);
            }
        }
        let _ = (ny, nx);
    }
    let voxel_mm3 = vol.voxel_volume_mm3();
    let pixel_mm2 = vol.spacing[1] * vol.spacing[2];
    seg.segments
        .iter()
        .map(|s| {
            let l = s.label_value as usize;
            let n = count[l];
            let (mean, sd) = if n > 0 {
                let m = sum[l] / n as f64;
                (m, (sumsq[l] / n as f64 - m * m).max(0.0).sqrt())
            } else {
                (0.0, 0.0)
            };
            SegmentMeasurements {
                label_value: s.label_value,
                label: s.label.clone(),
                voxel_count: n,
                volume_ml: n as f64 * voxel_mm3 / 1000.0,
                max_cross_sectional_area_cm2: max_slice[l] as f64 * pixel_mm2 / 100.0,
                mean_intensity: mean,
                sd_intensity: sd,
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
    let mut csv = String::from("label_value,label,voxel_count,volume_ml,max_cross_sectional_area_cm2,mean_intensity,sd_intensity\n");
    for r in m {
        csv.push_str(&format!(
            "{},\"{}\",{},{:.4},{:.4},{:.4},{:.4}\n",
            r.label_value, r.label.replace('"', "\"\""), r.voxel_count, r.volume_ml,
            r.max_cross_sectional_area_cm2, r.mean_intensity, r.sd_intensity
        ));
    }
    std::fs::write(dir.join("measurements.csv"), csv)
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
        info!(segment = %m.label, voxels = m.voxel_count, volume_ml = format!("{:.1}", m.volume_ml), "measured");
    }
    Findings { segmentation: seg, measurements }
}

/// Run the stage until `rx` disconnects.
pub fn run(rx: Receiver<Segmentation>, tx: Sender<Findings>) {
    for seg in rx {
        if tx.send(measure_job(seg)).is_err() {
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
        let vol = Volume {
            data,
            spacing,
            origin: [0.0; 3],
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
}
