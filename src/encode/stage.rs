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
//!
//! Exactly once across such a re-run: `job.json` lists under `encoded` the objects written
//! for the job version; a re-run of the same job id and version re-uses them (same SOP
//! Instance UIDs) instead of encoding new ones, and places in each outbox only what is not
//! already there, in `sent/` or in `failed/` ([`Spool::put_outbox_linked`]: hard links to the
//! job directory's files, one directory fsync per outbox). Only when the
//! configuration now wants an output that was not encoded then is the job encoded anew.
//!
//! The planar report (`sr-planar`, [`encode_planar_tid1500`]) follows the same SEG-reference
//! rule as `sr` and is kept as [`PLANAR_SR_FILE`]. When every segment is empty it is skipped
//! with a warning (recorded as skipped in `job.json`, so a re-run does not retry it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use serde_json::json;
use tracing::{error, info, info_span, warn};

use super::seg::{encode_seg, EncodedObject, SegOptions, SegmentationKind};
use super::sr::{encode_tid1500, SegReference, SrError, SrOptions};
use super::sr_planar::{encode_planar_tid1500, PlanarSrError};
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
/// File name of the planar SR copy kept in each job directory (`sr-planar`: the planar
/// report that references [`SEG_FILE`], or [`LABELMAP_SEG_FILE`] when no BINARY SEG was encoded).
pub const PLANAR_SR_FILE: &str = "sr-planar.dcm";
/// File name of the planar SR that references [`LABELMAP_SEG_FILE`], when [`PLANAR_SR_FILE`]
/// references the BINARY SEG.
pub const PLANAR_LABELMAP_SR_FILE: &str = "sr-planar-labelmap.dcm";
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
    #[error("encoding the planar measurement report failed: {0}")]
    PlanarSr(#[from] PlanarSrError),
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
        // SeriesDescription / ContentDescription (LO, 64 chars) name the job version
        series_description: super::truncate_chars(
            &format!("{} (myonode, {})", f.segmentation.algorithm.name, super::result_version_note(job.version)),
            64,
        ),
        content_label: "MYONODE".into(),
        manufacturer: "myonode".into(),
        manufacturer_model_name: "myonode".into(),
        software_versions: env!("CARGO_PKG_VERSION").into(),
        institution_name: ctx.institution_name.clone(),
        device_serial_number: ctx.ae_title.clone(),
    };
    let offline = ctx.destinations.is_empty();
    let wants = |k: OutputKind| {
        offline && matches!(k, OutputKind::SegBinary | OutputKind::Sr) || ctx.destinations.iter().any(|d| d.outputs.contains(&k))
    };
    let want_sr = wants(OutputKind::Sr);
    let want_planar = wants(OutputKind::SrPlanar);
    let want_labelmap = wants(OutputKind::SegLabelmap);
    // BINARY also when an SR must reference some SEG and nobody takes a SEG at all.
    let want_binary = wants(OutputKind::SegBinary) || ((want_sr || want_planar) && !want_labelmap);

    // Which SRs of report kind `k` (`sr` or `sr-planar`) are needed: the report each
    // destination gets references the SEG it receives (see the module docs).
    let report_binary_needed = |k: OutputKind| {
        wants(k)
            && want_binary
            && (offline
                || ctx.destinations.iter().any(|d| {
                    d.outputs.contains(&k)
                        && (d.outputs.contains(&OutputKind::SegBinary) || !d.outputs.contains(&OutputKind::SegLabelmap))
                }))
    };
    let report_labelmap_needed = |k: OutputKind| {
        wants(k)
            && want_labelmap
            && ctx.destinations.iter().any(|d| {
                d.outputs.contains(&k)
                    && !d.outputs.contains(&OutputKind::SegBinary)
                    && (d.outputs.contains(&OutputKind::SegLabelmap) || !want_binary)
            })
    };
    let sr_binary_needed = report_binary_needed(OutputKind::Sr);
    let sr_labelmap_needed = report_labelmap_needed(OutputKind::Sr);
    let wanted = Encoded {
        binary: want_binary,
        labelmap: want_labelmap,
        sr_binary: sr_binary_needed,
        sr_labelmap: sr_labelmap_needed,
        planar_binary: report_binary_needed(OutputKind::SrPlanar),
        planar_labelmap: report_labelmap_needed(OutputKind::SrPlanar),
    };
    // A re-run of a job version that was already encoded (crash after encoding, before the
    // series was marked done): reuse its objects and UIDs, so no destination gets a second copy.
    if let Some(prev) = previously_encoded(job, &wanted) {
        info!(job = %job.job_id, version = job.version, "job version already encoded before a restart; re-using its objects");
        let out = fill_outboxes(ctx, job, &prev)?;
        crate::assemble::stage::mark_series_done(&ctx.spool, job, job.volume.slices.len())?;
        return Ok(out);
    }

    // seg.dcm, sr.dcm, ... and job.json become durable with one directory fsync, before any
    // outbox entry exists (a crash in between leaves a job.json whose files may be missing:
    // `previously_encoded` then encodes again, nothing was handed out yet)
    let batch = ctx.spool.batch(&job.job_dir);
    let binary = if want_binary {
        let enc = encode_seg(&f.segmentation, &opts, SegmentationKind::Binary)?;
        batch.write(SEG_FILE, &[&enc.bytes])?;
        Some(enc)
    } else {
        None
    };
    let labelmap = if want_labelmap {
        let enc = encode_seg(&f.segmentation, &opts, SegmentationKind::Labelmap)?;
        batch.write(LABELMAP_SEG_FILE, &[&enc.bytes])?;
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
    let sr_binary = match (&binary, sr_binary_needed) {
        (Some(seg), true) => {
            let sr = sr_for(seg)?;
            batch.write(SR_FILE, &[&sr.bytes])?;
            Some(sr)
        }
        _ => None,
    };
    let sr_labelmap = match (&labelmap, sr_labelmap_needed) {
        (Some(seg), true) => {
            let sr = sr_for(seg)?;
            let file = if sr_binary.is_some() { LABELMAP_SR_FILE } else { SR_FILE };
            batch.write(file, &[&sr.bytes])?;
            Some(sr)
        }
        _ => None,
    };
    // The planar reports (`sr-planar`); all segments empty → nothing to draw: skip, warn.
    let mut planar_skipped = false;
    let mut planar_for = |seg: &Option<EncodedObject>, needed: bool, file: &str| -> Result<Option<EncodedObject>, EncodeStageError> {
        let (Some(seg), true) = (seg, needed) else { return Ok(None) };
        let seg_ref = SegReference {
            sop_class_uid: seg.sop_class_uid.clone(),
            sop_instance_uid: seg.sop_instance_uid.clone(),
            series_instance_uid: seg.series_instance_uid.clone(),
        };
        let planar_opts = SrOptions { series_number: sr_opts.series_number + 1, ..sr_opts.clone() };
        match encode_planar_tid1500(f, &seg_ref, &planar_opts) {
            Ok(sr) => {
                batch.write(file, &[&sr.bytes])?;
                Ok(Some(sr))
            }
            Err(PlanarSrError::NothingToReport | PlanarSrError::Sr(SrError::NothingToReport)) => {
                warn!(job = %job.job_id, "every segment is empty: no planar measurement report (sr-planar) to send");
                planar_skipped = true;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    };
    let planar_binary = planar_for(&binary, wanted.planar_binary, PLANAR_SR_FILE)?;
    let planar_labelmap_file = if planar_binary.is_some() { PLANAR_LABELMAP_SR_FILE } else { PLANAR_SR_FILE };
    let planar_labelmap = planar_for(&labelmap, wanted.planar_labelmap, planar_labelmap_file)?;
    let describe = |o: &Option<EncodedObject>, file: &str| match o {
        Some(o) => json!({ "sop_class_uid": o.sop_class_uid, "sop_instance_uid": o.sop_instance_uid,
                           "series_instance_uid": o.series_instance_uid, "file": file }),
        None => serde_json::Value::Null,
    };
    // In `encoded`: a planar report that was wanted but skipped (nothing to report) is
    // recorded as such, so a re-run counts it as done.
    let describe_planar = |o: &Option<EncodedObject>, needed: bool, file: &str| match o {
        None if needed && planar_skipped => json!({ "skipped": "every segment is empty" }),
        _ => describe(o, file),
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
        "sr_planar": describe(if planar_binary.is_some() { &planar_binary } else { &planar_labelmap }, PLANAR_SR_FILE),
        "sr_planar_labelmap": if planar_binary.is_some() {
            describe(&planar_labelmap, PLANAR_LABELMAP_SR_FILE)
        } else {
            serde_json::Value::Null
        },
        "labels_file": crate::segment::stage::LABELS_FILE,
        "encoded": {
            "seg_binary": describe(&binary, SEG_FILE),
            "seg_labelmap": describe(&labelmap, LABELMAP_SEG_FILE),
            "sr_binary": describe(&sr_binary, SR_FILE),
            "sr_labelmap": describe(&sr_labelmap, if sr_binary.is_some() { LABELMAP_SR_FILE } else { SR_FILE }),
            "sr_planar_binary": describe_planar(&planar_binary, wanted.planar_binary, PLANAR_SR_FILE),
            "sr_planar_labelmap": describe_planar(&planar_labelmap, wanted.planar_labelmap, planar_labelmap_file),
        },
    });
    batch.write(JOB_FILE, &[&serde_json::to_vec_pretty(&summary).expect("json")])?;
    batch.commit()?;
    crate::http::preview::write_preview_logged(&f.segmentation);
    let encoded = Encoded { binary, labelmap, sr_binary, sr_labelmap, planar_binary, planar_labelmap };
    let out = fill_outboxes(ctx, job, &encoded)?;
    let Encoded { binary, labelmap, sr_binary, sr_labelmap, planar_binary, planar_labelmap } = encoded;
    crate::assemble::stage::mark_series_done(&ctx.spool, job, v.slices.len())?;
    metrics::counter!("myonode_series_completed_total").increment(1);
    info!(
        seg = binary.as_ref().map(|o| o.sop_instance_uid.as_str()),
        seg_labelmap = labelmap.as_ref().map(|o| o.sop_instance_uid.as_str()),
        sr = sr_binary.as_ref().or(sr_labelmap.as_ref()).map(|o| o.sop_instance_uid.as_str()),
        sr_planar = planar_binary.as_ref().or(planar_labelmap.as_ref()).map(|o| o.sop_instance_uid.as_str()),
        outbound = out.len(),
        "results encoded"
    );
    Ok(out)
}

/// Which objects a job needs / an earlier run encoded.
struct Encoded<T> {
    binary: T,
    labelmap: T,
    sr_binary: T,
    sr_labelmap: T,
    /// `sr-planar` referencing the BINARY / the LABELMAP SEG.
    planar_binary: T,
    planar_labelmap: T,
}

/// The objects an earlier run of the same job id and version wrote into the job directory
/// (listed in its `job.json` under `encoded`), if they cover everything `wanted` now.
/// `None` when there was no earlier run, it was another version, a file is missing, or the
/// configuration now wants an output that was not encoded then.
fn previously_encoded(job: &crate::pipeline::messages::StudyJob, wanted: &Encoded<bool>) -> Option<Encoded<Option<EncodedObject>>> {
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(job.job_dir.join(JOB_FILE)).ok()?).ok()?;
    if summary["job_id"].as_str()? != job.job_id || summary["version"].as_u64()? != u64::from(job.version) {
        return None;
    }
    let enc = summary.get("encoded")?;
    // Outer `None`: unusable entry; `Some((None, skipped))`: not encoded (skipped: wanted,
    // but there was nothing to report).
    let load_entry = |key: &str| -> Option<(Option<EncodedObject>, bool)> {
        let e = &enc[key];
        if e.is_null() {
            return Some((None, false));
        }
        if e.get("skipped").is_some() {
            return Some((None, true));
        }
        let file = e["file"].as_str()?;
        if file.contains('/') || file.contains("..") {
            return None;
        }
        Some((
            Some(EncodedObject {
                bytes: std::fs::read(job.job_dir.join(file)).ok()?,
                sop_class_uid: e["sop_class_uid"].as_str()?.to_string(),
                sop_instance_uid: e["sop_instance_uid"].as_str()?.to_string(),
                series_instance_uid: e["series_instance_uid"].as_str()?.to_string(),
            }),
            false,
        ))
    };
    let load = |key: &str| load_entry(key).map(|(o, _)| o);
    let (planar_binary, planar_binary_skipped) = load_entry("sr_planar_binary")?;
    let (planar_labelmap, planar_labelmap_skipped) = load_entry("sr_planar_labelmap")?;
    let prev = Encoded {
        binary: load("seg_binary")?,
        labelmap: load("seg_labelmap")?,
        sr_binary: load("sr_binary")?,
        sr_labelmap: load("sr_labelmap")?,
        planar_binary,
        planar_labelmap,
    };
    let covers = |want: bool, have: &Option<EncodedObject>| !want || have.is_some();
    (covers(wanted.binary, &prev.binary)
        && covers(wanted.labelmap, &prev.labelmap)
        && covers(wanted.sr_binary, &prev.sr_binary)
        && covers(wanted.sr_labelmap, &prev.sr_labelmap)
        && (planar_binary_skipped || covers(wanted.planar_binary, &prev.planar_binary))
        && (planar_labelmap_skipped || covers(wanted.planar_labelmap, &prev.planar_labelmap)))
    .then_some(prev)
}

/// Place each destination's objects in its outbox (SEGs first, then the SRs that reference
/// one of them), idempotently, as hard links to the job directory's files
/// ([`Spool::put_outbox_linked`]; the job directory must be committed before).
fn fill_outboxes(
    ctx: &EncodeContext,
    job: &crate::pipeline::messages::StudyJob,
    enc: &Encoded<Option<EncodedObject>>,
) -> Result<Vec<Outbound>, EncodeStageError> {
    // each object with the job-directory file that holds it (the names `job.json` lists)
    fn with_file<'a>(o: &'a Option<EncodedObject>, file: &'static str) -> Option<(&'a EncodedObject, &'static str)> {
        o.as_ref().map(|o| (o, file))
    }
    let binary = with_file(&enc.binary, SEG_FILE);
    let labelmap = with_file(&enc.labelmap, LABELMAP_SEG_FILE);
    let sr_binary = with_file(&enc.sr_binary, SR_FILE);
    let sr_labelmap = with_file(&enc.sr_labelmap, if enc.sr_binary.is_some() { LABELMAP_SR_FILE } else { SR_FILE });
    let planar_binary = with_file(&enc.planar_binary, PLANAR_SR_FILE);
    let planar_labelmap = with_file(
        &enc.planar_labelmap,
        if enc.planar_binary.is_some() { PLANAR_LABELMAP_SR_FILE } else { PLANAR_SR_FILE },
    );
    let mut out = Vec::new();
    for dest in &ctx.destinations {
        let has = |k: OutputKind| dest.outputs.contains(&k);
        // SEGs first, then the SR that references one of them.
        let mut objects: Vec<(&EncodedObject, &str)> = Vec::new();
        if has(OutputKind::SegBinary) {
            objects.extend(binary);
        }
        if has(OutputKind::SegLabelmap) {
            objects.extend(labelmap);
        }
        if has(OutputKind::Sr) {
            let sr = if has(OutputKind::SegBinary) || !has(OutputKind::SegLabelmap) {
                sr_binary.or(sr_labelmap)
            } else {
                sr_labelmap
            };
            objects.extend(sr);
        }
        if has(OutputKind::SrPlanar) {
            let sr = if has(OutputKind::SegBinary) || !has(OutputKind::SegLabelmap) {
                planar_binary.or(planar_labelmap)
            } else {
                planar_labelmap
            };
            objects.extend(sr);
        }
        let names: Vec<String> = objects.iter().map(|(o, _)| format!("{}.dcm", o.sop_instance_uid)).collect();
        let sources: Vec<PathBuf> = objects.iter().map(|(_, file)| job.job_dir.join(file)).collect();
        let entries: Vec<(&str, &Path, &[u8])> = objects
            .iter()
            .zip(&names)
            .zip(&sources)
            .map(|(((o, _), n), src)| (n.as_str(), src.as_path(), o.bytes.as_slice()))
            .collect();
        let placed = ctx.spool.put_outbox_linked(&dest.name, &entries)?;
        for ((obj, _), path) in objects.into_iter().zip(placed) {
            let Some(path) = path else {
                continue; // delivered or dead-lettered before a restart
            };
            out.push(Outbound {
                job_id: job.job_id.clone(),
                destination: dest.name.clone(),
                path,
                sop_class_uid: obj.sop_class_uid.clone(),
                sop_instance_uid: obj.sop_instance_uid.clone(),
            });
        }
    }
    Ok(out)
}

/// Run the stage until `rx` disconnects.
pub fn run(rx: Receiver<Findings>, tx: Sender<Outbound>, ctx: EncodeContext) {
    for f in crate::pipeline::health::iter(&rx) {
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
