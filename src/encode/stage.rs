//! The encode stage's run loop: encodes each job's findings as the outputs the
//! destinations want (`[[destinations]] outputs`: BINARY DICOM-SEG, LABELMAP
//! DICOM-SEG, TID 1500 measurement report (SR) that references a SEG's
//! segments), keeps copies and a `job.json` summary in the job directory, and
//! places one copy of each wanted object per destination durably in
//! `outbox/<destination>/` before handing it to `send`.
//!
//! Which SEG an SR references: a destination gets the SR that references the
//! SEG it receives itself (BINARY if it takes both); a destination taking only
//! `sr` gets the SR referencing the BINARY SEG, or the LABELMAP SEG when no
//! destination takes BINARY. If no destination takes any SEG, the BINARY SEG is
//! still encoded into the job directory (not sent) so the SR's reference resolves
//! to a kept object. With no destinations (offline mode) BINARY SEG and SR are written. Only then is the series marked done
//! ([`mark_series_done`](crate::assemble::stage::mark_series_done)), so a crash
//! before that point re-runs the series at restart and never loses a result.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use serde_json::json;
use tracing::{error, info, info_span};

use super::seg::{encode_seg, EncodedObject, SegOptions, SegmentationKind};
use super::sr::{encode_tid1500, SegReference, SrError, SrOptions};
use super::EncodeError;
use crate::config::OutputKind;
use crate::pipeline::messages::{Findings, Outbound};
use crate::spool::Spool;

/// File name of the SEG copy kept in each job directory.
pub const SEG_FILE: &str = "seg.dcm";
/// File name of the SR copy kept in each job directory (the SR that references
/// [`SEG_FILE`], or [`LABELMAP_SEG_FILE`] when no BINARY SEG was encoded).
pub const SR_FILE: &str = "sr.dcm";
/// File name of the LABELMAP SEG copy kept in a job directory (when some destination wants it).
pub const LABELMAP_SEG_FILE: &str = "seg-labelmap.dcm";
/// File name of the SR that references [`LABELMAP_SEG_FILE`], when [`SR_FILE`] references the BINARY SEG.
pub const LABELMAP_SR_FILE: &str = "sr-labelmap.dcm";
/// File name of the job summary in each job directory.
pub const JOB_FILE: &str = "job.json";

/// What the encode stage needs besides the findings.
#[derive(Debug, Clone)]
pub struct EncodeContext {
    pub spool: Arc<Spool>,
    /// The destinations and what each receives.
    pub destinations: Vec<EncodeDestination>,
    /// Our AE title (DeviceSerialNumber of the equipment module).
    pub ae_title: String,
    pub institution_name: String,
}

/// A destination as the encode stage sees it: its name (outbox folder) and outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeDestination {
    /// Destination name (`[[destinations]] name`).
    pub name: String,
    /// Objects it receives (`[[destinations]] outputs`).
    pub outputs: Vec<OutputKind>,
}

impl From<&crate::config::DestinationConfig> for EncodeDestination {
    fn from(d: &crate::config::DestinationConfig) -> Self {
        EncodeDestination { name: d.name.clone(), outputs: d.outputs.clone() }
    }
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
    let offline = ctx.destinations.is_empty();
    let wants = |k: OutputKind| offline && k != OutputKind::SegLabelmap || ctx.destinations.iter().any(|d| d.outputs.contains(&k));
    let want_sr = wants(OutputKind::Sr);
    let want_labelmap = wants(OutputKind::SegLabelmap);
    // BINARY also when an SR must reference some SEG and nobody takes a SEG at all.
    let want_binary = wants(OutputKind::SegBinary) || (want_sr && !want_labelmap);

    let binary = if want_binary {
        let enc = encode_seg(&f.segmentation, &opts, SegmentationKind::Binary)?;
        ctx.spool.write_atomically(&job.job_dir.join(SEG_FILE), &[&enc.bytes])?;
        Some(enc)
    } else {
        None
    };
    let labelmap = if want_labelmap {
        let enc = encode_seg(&f.segmentation, &opts, SegmentationKind::Labelmap)?;
        ctx.spool.write_atomically(&job.job_dir.join(LABELMAP_SEG_FILE), &[&enc.bytes])?;
        Some(enc)
    } else {
        None
    };
    let sr_opts = SrOptions {
        series_number: opts.series_number + 1,
        manufacturer: "myonode".into(),
        software_versions: env!("CARGO_PKG_VERSION").into(),
        institution_name: ctx.institution_name.clone(),
        device_observer_uid: ctx.spool.device_observer_uid()?,
        device_observer_name: ctx.ae_title.clone(),
    };
    let sr_for = |seg: &EncodedObject| -> Result<EncodedObject, EncodeStageError> {
        let seg_ref = SegReference {
            sop_class_uid: seg.sop_class_uid.clone(),
            sop_instance_uid: seg.sop_instance_uid.clone(),
            series_instance_uid: seg.series_instance_uid.clone(),
        };
        Ok(encode_tid1500(f, &seg_ref, &sr_opts)?)
    };
    // The SR each destination gets references the SEG it receives (see the module docs).
    let sr_binary_needed = want_sr
        && binary.is_some()
        && (offline
            || ctx.destinations.iter().any(|d| {
                d.outputs.contains(&OutputKind::Sr)
                    && (d.outputs.contains(&OutputKind::SegBinary) || !d.outputs.contains(&OutputKind::SegLabelmap))
            }));
    let sr_labelmap_needed = want_sr
        && labelmap.is_some()
        && ctx.destinations.iter().any(|d| {
            d.outputs.contains(&OutputKind::Sr)
                && !d.outputs.contains(&OutputKind::SegBinary)
                && (d.outputs.contains(&OutputKind::SegLabelmap) || binary.is_none())
        });
    let sr_binary = match (&binary, sr_binary_needed) {
        (Some(seg), true) => {
            let sr = sr_for(seg)?;
            ctx.spool.write_atomically(&job.job_dir.join(SR_FILE), &[&sr.bytes])?;
            Some(sr)
        }
        _ => None,
    };
    let sr_labelmap = match (&labelmap, sr_labelmap_needed) {
        (Some(seg), true) => {
            let sr = sr_for(seg)?;
            let file = if sr_binary.is_some() { LABELMAP_SR_FILE } else { SR_FILE };
            ctx.spool.write_atomically(&job.job_dir.join(file), &[&sr.bytes])?;
            Some(sr)
        }
        _ => None,
    };
    let describe = |o: &Option<EncodedObject>, file: &str| match o {
        Some(o) => json!({ "sop_class_uid": o.sop_class_uid, "sop_instance_uid": o.sop_instance_uid,
                           "series_instance_uid": o.series_instance_uid, "file": file }),
        None => serde_json::Value::Null,
    };
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
        "seg": describe(&binary, SEG_FILE),
        "seg_labelmap": describe(&labelmap, LABELMAP_SEG_FILE),
        "sr": describe(if sr_binary.is_some() { &sr_binary } else { &sr_labelmap }, SR_FILE),
        "sr_labelmap": if sr_binary.is_some() { describe(&sr_labelmap, LABELMAP_SR_FILE) } else { serde_json::Value::Null },
        "labels_file": crate::segment::stage::LABELS_FILE,
    });
    ctx.spool.write_atomically(&job.job_dir.join(JOB_FILE), &[&serde_json::to_vec_pretty(&summary).expect("json")])?;
    crate::http::preview::write_preview_logged(&f.segmentation);
    let mut out = Vec::new();
    for dest in &ctx.destinations {
        let has = |k: OutputKind| dest.outputs.contains(&k);
        // SEGs first, then the SR that references one of them.
        let mut objects: Vec<&EncodedObject> = Vec::new();
        if has(OutputKind::SegBinary) {
            objects.extend(binary.as_ref());
        }
        if has(OutputKind::SegLabelmap) {
            objects.extend(labelmap.as_ref());
        }
        if has(OutputKind::Sr) {
            let sr = if has(OutputKind::SegBinary) || !has(OutputKind::SegLabelmap) {
                sr_binary.as_ref().or(sr_labelmap.as_ref())
            } else {
                sr_labelmap.as_ref()
            };
            objects.extend(sr);
        }
        for obj in objects {
            let path = ctx.spool.put_outbox(&dest.name, &format!("{}.dcm", obj.sop_instance_uid), &obj.bytes)?;
            out.push(Outbound {
                job_id: job.job_id.clone(),
                destination: dest.name.clone(),
                path,
                sop_class_uid: obj.sop_class_uid.clone(),
                sop_instance_uid: obj.sop_instance_uid.clone(),
            });
        }
    }
    crate::assemble::stage::mark_series_done(&ctx.spool, job, v.slices.len())?;
    metrics::counter!("myonode_series_completed_total").increment(1);
    info!(
        seg = binary.as_ref().map(|o| o.sop_instance_uid.as_str()),
        seg_labelmap = labelmap.as_ref().map(|o| o.sop_instance_uid.as_str()),
        sr = sr_binary.as_ref().or(sr_labelmap.as_ref()).map(|o| o.sop_instance_uid.as_str()),
        outbound = out.len(),
        "results encoded"
    );
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
