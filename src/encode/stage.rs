//! The encode stage's run loop: encodes each job's findings as a BINARY
//! DICOM-SEG and a TID 1500 measurement report (SR) that references the SEG's
//! segments, keeps copies and a `job.json` summary in the job directory, and
//! places one copy of each per destination durably in `outbox/<destination>/` before
//! handing it to `send`. Only then is the series marked done
//! ([`mark_series_done`](crate::assemble::stage::mark_series_done)), so a crash
//! before that point re-runs the series at restart and never loses a result.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use serde_json::json;
use tracing::{error, info, info_span};

use super::seg::{encode_binary_seg, SegOptions};
use super::sr::{encode_tid1500, SegReference, SrError, SrOptions};
use super::EncodeError;
use crate::pipeline::messages::{Findings, Outbound};
use crate::spool::Spool;

/// File name of the SEG copy kept in each job directory.
pub const SEG_FILE: &str = "seg.dcm";
/// File name of the SR copy kept in each job directory.
pub const SR_FILE: &str = "sr.dcm";
/// File name of the job summary in each job directory.
pub const JOB_FILE: &str = "job.json";

/// What the encode stage needs besides the findings.
#[derive(Debug, Clone)]
pub struct EncodeContext {
    pub spool: Arc<Spool>,
    /// Names of the destinations that receive every result.
    pub destinations: Vec<String>,
    /// Our AE title (DeviceSerialNumber of the equipment module).
    pub ae_title: String,
    pub institution_name: String,
}

/// Errors of the encode stage for one job.
#[derive(Debug, thiserror::Error)]
pub enum EncodeStageError {
    #[error("encoding the SEG failed: {0}")]
    Encode(#[from] EncodeError),
    #[error("encoding the measurement report failed: {0}")]
    Sr(#[from] SrError),
    #[error("{0}")]
    Spool(#[from] crate::spool::SpoolError),
}

/// Series number of a derived SEG: the source SeriesNumber + 1000 (or 1000 when absent),
/// a common convention so viewers list it beside its source.
fn derived_series_number(f: &Findings) -> i32 {
    use dicom_dictionary_std::tags;
    let src = f
        .segmentation
        .job
        .header
        .dataset
        .element(tags::SERIES_NUMBER)
        .ok()
        .and_then(|e| e.to_int::<i32>().ok())
        .unwrap_or(0);
    1000 + src.clamp(0, 1_000_000)
}

/// Encode one job's findings, write job files, fill the outboxes.
///
/// # Errors
/// [`EncodeStageError`] if encoding or a spool write fails (nothing is marked done then).
pub fn encode_findings(f: &Findings, ctx: &EncodeContext) -> Result<Vec<Outbound>, EncodeStageError> {
    let job = &f.segmentation.job;
    let opts = SegOptions {
        series_number: derived_series_number(f),
        series_description: format!("{} (myonode)", f.segmentation.algorithm.name),
        content_label: "MYONODE".into(),
        manufacturer: "myonode".into(),
        manufacturer_model_name: "myonode".into(),
        software_versions: env!("CARGO_PKG_VERSION").into(),
        institution_name: ctx.institution_name.clone(),
        device_serial_number: ctx.ae_title.clone(),
    };
    let enc = encode_binary_seg(&f.segmentation, &opts)?;
    ctx.spool.write_atomically(&job.job_dir.join(SEG_FILE), &[&enc.bytes])?;
    let sr_opts = SrOptions {
        series_number: opts.series_number + 1,
        manufacturer: "myonode".into(),
        software_versions: env!("CARGO_PKG_VERSION").into(),
        institution_name: ctx.institution_name.clone(),
        device_observer_uid: ctx.spool.device_observer_uid()?,
        device_observer_name: ctx.ae_title.clone(),
    };
    let seg_ref = SegReference {
        sop_class_uid: enc.sop_class_uid.clone(),
        sop_instance_uid: enc.sop_instance_uid.clone(),
        series_instance_uid: enc.series_instance_uid.clone(),
    };
    let sr = encode_tid1500(f, &seg_ref, &sr_opts)?;
    ctx.spool.write_atomically(&job.job_dir.join(SR_FILE), &[&sr.bytes])?;
    let v = &job.volume;
    let summary = json!({
        "job_id": job.job_id,
        "version": job.version,
        "study_instance_uid": job.header.study_instance_uid,
        "series_instance_uid": job.header.series_instance_uid,
        "frame_of_reference_uid": job.header.frame_of_reference_uid,
        "modality": job.header.modality,
        "volume": {
            "shape_zyx": v.shape(),
            "spacing_zyx_mm": v.spacing,
            "origin_lps_mm": v.origin,
            "row_direction": v.row_direction,
            "column_direction": v.column_direction,
            "slice_direction": v.slice_direction,
            "slice_sop_instance_uids": v.slices.iter().map(|s| s.sop_instance_uid.as_str()).collect::<Vec<_>>(),
        },
        "analysis": f.segmentation.algorithm,
        "segments": f.segmentation.segments,
        "measurements": f.measurements,
        "seg": { "sop_class_uid": enc.sop_class_uid, "sop_instance_uid": enc.sop_instance_uid,
                 "series_instance_uid": enc.series_instance_uid, "file": SEG_FILE },
        "sr": { "sop_class_uid": sr.sop_class_uid, "sop_instance_uid": sr.sop_instance_uid,
                "series_instance_uid": sr.series_instance_uid, "file": SR_FILE },
        "labels_file": crate::segment::stage::LABELS_FILE,
    });
    ctx.spool.write_atomically(&job.job_dir.join(JOB_FILE), &[&serde_json::to_vec_pretty(&summary).expect("json")])?;
    crate::http::preview::write_preview_logged(&f.segmentation);
    let mut out = Vec::new();
    for dest in &ctx.destinations {
        // SEG first, then the SR that references it
        for obj in [&enc, &sr] {
            let path = ctx.spool.put_outbox(dest, &format!("{}.dcm", obj.sop_instance_uid), &obj.bytes)?;
            out.push(Outbound {
                job_id: job.job_id.clone(),
                destination: dest.clone(),
                path,
                sop_class_uid: obj.sop_class_uid.clone(),
                sop_instance_uid: obj.sop_instance_uid.clone(),
            });
        }
    }
    crate::assemble::stage::mark_series_done(&ctx.spool, job, v.slices.len())?;
    metrics::counter!("myonode_series_completed_total").increment(1);
    info!(seg = %enc.sop_instance_uid, sr = %sr.sop_instance_uid, bytes = enc.bytes.len(), outbound = out.len(), "SEG and SR encoded");
    Ok(out)
}

/// Run the stage until `rx` disconnects.
pub fn run(rx: Receiver<Findings>, tx: Sender<Outbound>, ctx: EncodeContext) {
    for f in rx {
        let span = info_span!("encode", job = %f.segmentation.job.job_id);
        let _g = span.enter();
        match { let _t = crate::http::metrics::StageTimer::new("encode"); encode_findings(&f, &ctx) } {
            Ok(items) => {
                for o in items {
                    if tx.send(o).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                error!(error = %e, "encode failed; series stays in incoming/ and re-runs at restart");
                let _ = std::fs::write(f.segmentation.job.job_dir.join("ERROR.txt"), format!("encode: {e}\n"));
            }
        }
    }
}
