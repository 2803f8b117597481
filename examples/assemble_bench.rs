//! Reassembly benchmark: throughput (slices/s) and peak memory of planning + decoding one
//! series into a `Volume`.
//!
//! ```sh
//! cargo run --release --example assemble_bench -- [SLICES]     # default 80 (the knee DESS as is)
//! ```
//! With SLICES > 80 a synthetic series is written to a temporary directory first: the knee's
//! real pixels (slice i uses knee slice i mod 80) with GENERATED headers (new SOPInstanceUIDs,
//! ImagePositionPatient stepping 1.5 mm along the normal). Memory is the process's peak
//! resident set (VmHWM, Linux) minus the resident set before reassembly; the target is about
//! one copy of the volume (f32) plus one decoded file. Test data: `MYONODE_DATA`
//! (default `../shared/data`).

use std::path::PathBuf;
use std::time::Instant;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use myonode::assemble::plan_series;
use myonode::config::AssembleConfig;

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let slices: usize = std::env::args().nth(1).map(|s| s.parse().expect("SLICES must be a number")).unwrap_or(80);
    let data = std::env::var_os("MYONODE_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("../shared/data"));
    let knee_dir = data.join("series/mr-knee-dess-echo1");
    let mut knee: Vec<PathBuf> = std::fs::read_dir(&knee_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", knee_dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    knee.sort();
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = if slices <= knee.len() {
        knee.into_iter().take(slices).collect()
    } else {
        // synthetic positions along the knee's normal (IOP 0\1\0\0\0\-1 → normal (-1, 0, 0))
        let first = dicom_object::open_file(&knee[0]).unwrap();
        let p0 = first.element(tags::IMAGE_POSITION_PATIENT).unwrap().to_multi_float64().unwrap();
        (0..slices)
            .map(|i| {
                let mut obj = dicom_object::open_file(&knee[i % knee.len()]).unwrap();
                let sop = format!("2.25.9{i:07}");
                let ipp = format!("{}\\{}\\{}", p0[0] - 1.5 * i as f64, p0[1], p0[2]);
                obj.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop.as_str())));
                obj.put(DataElement::new(
                    tags::IMAGE_POSITION_PATIENT,
                    VR::DS,
                    PrimitiveValue::Strs(ipp.split('\\').map(String::from).collect()),
                ));
                obj.update_meta(|m| m.media_storage_sop_instance_uid = sop.clone());
                let p = tmp.path().join(format!("{i:05}.dcm"));
                obj.write_to_file(&p).unwrap();
                p
            })
            .collect()
    };
    let cfg = AssembleConfig { min_slices: 3, ..AssembleConfig::default() };
    let rss_before = status_kib("VmRSS:");
    let t0 = Instant::now();
    let plan = plan_series(&files, &cfg).expect("series plans");
    let t_plan = t0.elapsed().as_secs_f64();
    let vol = plan.decode().expect("series decodes");
    let total = t0.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:");
    let (nz, ny, nx) = vol.shape();
    let volume_mib = (nz * ny * nx * 4) as f64 / 1048576.0;
    let slice_mib = (ny * nx * 4) as f64 / 1048576.0;
    println!(
        "{}",
        serde_json::json!({
            "slices": nz, "rows": ny, "columns": nx,
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "plan_s": t_plan, "total_s": total, "slices_per_s": nz as f64 / total,
            "volume_mib": volume_mib, "one_slice_f32_mib": slice_mib,
            "rss_before_mib": rss_before as f64 / 1024.0, "peak_rss_mib": peak as f64 / 1024.0,
            "peak_minus_before_mib": (peak.saturating_sub(rss_before)) as f64 / 1024.0,
        })
    );
}
