//! C-STORE request handling (PS3.4 B.2, PS3.7 9.1.1): validate the data set, store it
//! durably in the spool, announce it to `assemble`, and choose the response status.
//!
//! Parsing and the spool write (which fsyncs) run on tokio's blocking pool, and so does
//! the blocking crossbeam send, so the async runtime never stalls.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tracing::{debug, error, warn};

use super::scan::{scan_data_set, DataSetEncoding, ScanOutcome};
use super::ReceiveContext;
use crate::assemble::tracker::InstanceHints;
use crate::dimse::{status, CommandSet};
use crate::pipeline::messages::InstanceStored;
use crate::spool::{is_valid_uid, InstanceIdentity, SpoolError, StagedInstance, StoreOutcome};

/// The outcome of one C-STORE, to be sent back in the C-STORE-RSP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReply {
    /// Status (0000,0900).
    pub status: u16,
    /// ErrorComment (0000,0902) for failures.
    pub comment: Option<String>,
    /// The instance was already in the spool (status is success, nothing written).
    pub duplicate: bool,
    /// SeriesInstanceUID (0020,000E) of the stored instance (success only).
    pub series_instance_uid: Option<String>,
}

impl StoreReply {
    fn failure(status: u16, comment: impl Into<String>) -> Self {
        StoreReply { status, comment: Some(comment.into()), duplicate: false, series_instance_uid: None }
    }
}

/// How the data set bytes of `transfer_syntax` are encoded, if [`scan_data_set`] handles it:
/// not deflated (little endian, or Explicit VR Big Endian) (PS3.5 A.1-A.4); Implicit VR Little Endian is 1.2.840.10008.1.2.
fn data_set_encoding(transfer_syntax: &str, ts: &dicom_encoding::TransferSyntax) -> Option<DataSetEncoding> {
    if matches!(ts.codec(), dicom_encoding::Codec::Dataset(_)) {
        return None;
    }
    if ts.endianness() != dicom_encoding::Endianness::Little {
        // Explicit VR Big Endian; scanned too, so a bogus length never reaches the decoder
        return Some(DataSetEncoding::ExplicitBig);
    }
    Some(if transfer_syntax.trim_end_matches('\0') == "1.2.840.10008.1.2" {
        DataSetEncoding::ImplicitLittle
    } else {
        DataSetEncoding::ExplicitLittle
    })
}

/// Explicit VR Little Endian transfer syntax UID (PS3.5 A.2).
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// Largest inflated size of a deflated data set, bytes (1 GiB): a deflate stream can expand
/// ~1000-fold, so a small message must not be able to claim unbounded memory.
const MAX_INFLATED_BYTES: u64 = 1 << 30;

/// Inflate a Deflated Explicit VR Little Endian data set (PS3.5 A.5: raw deflate, RFC 1951, no
/// zlib header), at most [`MAX_INFLATED_BYTES`].
///
/// # Errors
/// [`ReadUidsError::Malformed`] for a corrupt stream or one that inflates past the bound.
fn inflate_data_set(deflated: &[u8]) -> Result<Vec<u8>, ReadUidsError> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut reader = flate2::read::DeflateDecoder::new(deflated).take(MAX_INFLATED_BYTES + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| ReadUidsError::Malformed { offset: 0, reason: format!("deflated data set: {e}") })?;
    if out.len() as u64 > MAX_INFLATED_BYTES {
        return Err(ReadUidsError::Malformed {
            offset: 0,
            reason: format!("deflated data set inflates past {MAX_INFLATED_BYTES} bytes"),
        });
    }
    Ok(out)
}

/// Why a data set's UIDs could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadUidsError {
    /// The structural scan found the data set malformed (truncated, inconsistent lengths) or in
    /// an encoding this node refuses.
    #[error("{reason} at byte {offset}")]
    Malformed { offset: usize, reason: String },
    /// The transfer syntax's data set encoding is not one the scan reads.
    #[error("data sets in transfer syntax {0} are not accepted")]
    Encoding(String),
}

/// The values of SOPClassUID, SOPInstanceUID, StudyInstanceUID and SeriesInstanceUID (in this
/// order, as stored, padding not yet removed; `None` where absent from the top level) of a data
/// set encoded in `transfer_syntax`.
///
/// The whole data set is checked by [`scan_data_set`] and the values are read from the byte
/// ranges it reports (UI values are characters of the default repertoire, PS3.5 6.2 and 9.1, so
/// no character set applies; other bytes become U+FFFD and fail UID validation). No decoder
/// that trusts declared lengths reads the received bytes here: dicom-rs reserves and zero-fills
/// a value's declared length before reading it, so a short crafted message could make it touch
/// up to ~1 GiB (found by the `received_data_set` fuzz target).
///
/// Also returns the series tracker's completion hints read from the same scan
/// ([`InstanceHints::from_received_values`]; `None` when a count has an unexpected VR, and the
/// assemble stage then reads them from the stored file).
///
/// # Errors
/// [`ReadUidsError::Malformed`] from the scan or a corrupt deflate stream,
/// [`ReadUidsError::Encoding`] for a data set encoding the scan does not read.
fn read_uids(
    dataset: &[u8],
    transfer_syntax: &str,
    ts: &dicom_encoding::TransferSyntax,
) -> Result<([Option<String>; 4], Option<InstanceHints>), ReadUidsError> {
    // Deflated Explicit VR Little Endian (PS3.5 A.5): inflate here, bounded, and scan the result
    // as Explicit VR Little Endian.
    let inflated;
    let (dataset, transfer_syntax, ts) = if matches!(ts.codec(), dicom_encoding::Codec::Dataset(_)) {
        inflated = inflate_data_set(dataset)?;
        let explicit = TransferSyntaxRegistry
            .get(EXPLICIT_VR_LITTLE_ENDIAN)
            .expect("Explicit VR Little Endian is in the registry");
        (&inflated[..], EXPLICIT_VR_LITTLE_ENDIAN, explicit)
    } else {
        (dataset, transfer_syntax, ts)
    };
    let encoding =
        data_set_encoding(transfer_syntax, ts).ok_or_else(|| ReadUidsError::Encoding(transfer_syntax.to_string()))?;
    match scan_data_set(dataset, encoding) {
        ScanOutcome::Malformed { offset, reason } => Err(ReadUidsError::Malformed { offset, reason }),
        ScanOutcome::WellFormed { uids, counts, .. } => {
            let hints = InstanceHints::from_received_values(counts.map(|c| c.map(|(r, vr)| (&dataset[r], vr))));
            Ok((uids.map(|r| r.map(|r| String::from_utf8_lossy(&dataset[r]).into_owned())), hints))
        }
    }
}

/// Handle a C-STORE-RQ: see [`store_instance_blocking`]; runs it on the blocking pool.
pub async fn handle_c_store(
    ctx: Arc<ReceiveContext>,
    abstract_syntax: &str,
    transfer_syntax: &str,
    command: &CommandSet,
    dataset: Option<Vec<u8>>,
    staged: Option<StagedInstance>,
    calling_ae: &str,
) -> StoreReply {
    let abstract_syntax = abstract_syntax.to_string();
    let transfer_syntax = transfer_syntax.to_string();
    let command = command.clone();
    let calling_ae = calling_ae.to_string();
    match tokio::task::spawn_blocking(move || {
        store_instance_blocking(&ctx, &abstract_syntax, &transfer_syntax, &command, dataset, staged, &calling_ae)
    })
    .await
    {
        Ok(reply) => reply,
        Err(e) => {
            error!(error = %e, "C-STORE handler panicked");
            StoreReply::failure(status::PROCESSING_FAILURE, "internal error while storing")
        }
    }
}

/// Validate, store and announce one received instance. Blocking (parses, fsyncs, may wait
/// on a full channel): call from a blocking thread.
///
/// Order of checks and the status each failure gets (PS3.4 Table B.2-1):
/// 1. no data set, or AffectedSOPClassUID / AffectedSOPInstanceUID missing → C000;
/// 2. AffectedSOPClassUID ≠ the presentation context's abstract syntax → 0122;
/// 3. data set unparsable in the negotiated transfer syntax (truncated, malformed) → C000. The
///    whole data set is checked structurally by [`scan_data_set`] (element headers, lengths,
///    sequences, encapsulated fragments) and the four UIDs are read from the value ranges it
///    reports, so nothing is decoded and pixel data are never copied on receipt; UN of
///    undefined length and nesting deeper than [`super::scan::MAX_NESTING`] are refused too;
/// 4. SOPClassUID, SOPInstanceUID, StudyInstanceUID or SeriesInstanceUID missing, empty or
///    not a valid UID → A900;
/// 5. SOPInstanceUID / SOPClassUID of the data set ≠ those of the command → A900;
/// 6. spool write failure (disk full, I/O error) → A700.
///
/// Otherwise the data set bytes are stored exactly as received with a Part-10 header
/// (nothing is written twice for a known SOPInstanceUID), an [`InstanceStored`] is sent on
/// `ctx.tx` (`duplicate: true` for a known instance), and the status is 0000. If `assemble`
/// has gone away the instance stays durably in the spool (found again at start-up) and the
/// status is still 0000.
///
/// `staged`: the data set as already written to an unnamed spool file while it arrived
/// ([`Spool::stage_instance`](crate::spool::Spool::stage_instance)); after the checks above it
/// is named by [`Spool::store_staged_instance`](crate::spool::Spool::store_staged_instance)
/// instead of writing the data set now (same file, same guarantee). A refused instance's staged
/// file is dropped, which frees it.
pub fn store_instance_blocking(
    ctx: &ReceiveContext,
    abstract_syntax: &str,
    transfer_syntax: &str,
    command: &CommandSet,
    dataset: Option<Vec<u8>>,
    staged: Option<StagedInstance>,
    calling_ae: &str,
) -> StoreReply {
    let Some(dataset) = dataset else {
        return StoreReply::failure(status::ERROR_CANNOT_UNDERSTAND, "C-STORE-RQ without a data set");
    };
    let (Some(cmd_class), Some(cmd_instance)) =
        (command.affected_sop_class_uid.as_deref(), command.affected_sop_instance_uid.as_deref())
    else {
        return StoreReply::failure(
            status::ERROR_CANNOT_UNDERSTAND,
            "C-STORE-RQ lacks AffectedSOPClassUID or AffectedSOPInstanceUID",
        );
    };
    if cmd_class != abstract_syntax {
        return StoreReply::failure(
            status::REFUSED_SOP_CLASS_NOT_SUPPORTED,
            format!("AffectedSOPClassUID {cmd_class} differs from the presentation context"),
        );
    }
    let Some(ts) = TransferSyntaxRegistry.get(transfer_syntax) else {
        return StoreReply::failure(status::ERROR_CANNOT_UNDERSTAND, format!("unknown transfer syntax {transfer_syntax}"));
    };
    let started = Instant::now();
    // Check the structure of the whole data set without decoding values (scan.rs) and take the
    // four UIDs from it; pixel data are never decoded or copied, and no length-trusting decoder
    // reads the received bytes.
    let (raw, hints) = match read_uids(&dataset, transfer_syntax, ts) {
        Ok(v) => v,
        Err(e) => {
            debug!(error = %e, sop_instance_uid = cmd_instance, "unparsable data set");
            return StoreReply::failure(status::ERROR_CANNOT_UNDERSTAND, format!("data set cannot be parsed: {e}"));
        }
    };
    let uid = |value: &Option<String>, tag: Tag, name: &'static str| -> Result<String, StoreReply> {
        let value = value.as_deref().map(|s| s.trim_end_matches(['\0', ' ']).trim_start().to_string()).unwrap_or_default();
        if value.is_empty() {
            Err(StoreReply::failure(status::ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS, format!("{name} {tag} missing or empty")))
        } else if !is_valid_uid(&value) {
            Err(StoreReply::failure(status::ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS, format!("{name} {tag} is not a valid UID")))
        } else {
            Ok(value)
        }
    };
    let ids = (|| {
        Ok::<_, StoreReply>((
            uid(&raw[0], tags::SOP_CLASS_UID, "SOPClassUID")?,
            uid(&raw[1], tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
            uid(&raw[2], tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
            uid(&raw[3], tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
        ))
    })();
    let (sop_class, sop_instance, study, series) = match ids {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    if sop_instance != cmd_instance {
        return StoreReply::failure(
            status::ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPInstanceUID differs from AffectedSOPInstanceUID",
        );
    }
    if sop_class != cmd_class {
        return StoreReply::failure(
            status::ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPClassUID differs from AffectedSOPClassUID",
        );
    }
    let id = InstanceIdentity {
        study_instance_uid: &study,
        series_instance_uid: &series,
        sop_class_uid: &sop_class,
        sop_instance_uid: &sop_instance,
        transfer_syntax_uid: transfer_syntax,
    };
    if let Some(reply) = series_full(ctx, &id) {
        return reply;
    }
    let parsed = Instant::now();
    let was_staged = staged.is_some();
    let stored = match staged {
        Some(staged) => ctx.spool.store_staged_instance(&id, staged, &dataset),
        None => ctx.spool.store_instance(&id, &dataset),
    };
    let outcome = match stored {
        Ok(o) => o,
        Err(e @ SpoolError::InvalidUid { .. }) => {
            return StoreReply::failure(status::ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS, e.to_string());
        }
        Err(e @ SpoolError::Io { .. }) => {
            error!(error = %e, sop_instance_uid = %sop_instance, "spool write failed");
            return StoreReply::failure(status::REFUSED_OUT_OF_RESOURCES, "cannot store the instance (spool write failed)");
        }
    };
    let duplicate = matches!(outcome, StoreOutcome::Duplicate(_));
    let written = Instant::now();
    debug!(
        sop_instance_uid = %sop_instance, path = %outcome.path().display(), duplicate, bytes = dataset.len(), staged = was_staged,
        parse_us = (parsed - started).as_micros() as u64, write_us = (written - parsed).as_micros() as u64,
        "instance stored"
    );
    let msg = InstanceStored {
        study_instance_uid: study,
        series_instance_uid: series,
        sop_class_uid: sop_class,
        sop_instance_uid: sop_instance,
        path: outcome.path().to_path_buf(),
        calling_ae_title: calling_ae.to_string(),
        received_at: SystemTime::now(),
        duplicate,
        hints,
    };
    let series_instance_uid = Some(msg.series_instance_uid.clone());
    if let Err(e) = ctx.tx.send(msg) {
        error!(sop_instance_uid = %e.0.sop_instance_uid, "assemble stage is gone; instance stays in the spool for recovery");
    }
    crate::http::metrics::instance_received(dataset.len(), duplicate);
    StoreReply { status: status::SUCCESS, comment: None, duplicate, series_instance_uid }
}

/// `receive.max_instances_per_series`: a new instance of a series that already holds that many
/// instances in `incoming/` is refused with A700H (Refused: Out of Resources, PS3.4 B.2.3);
/// a re-sent instance already stored is still answered as a duplicate.
fn series_full(ctx: &ReceiveContext, id: &InstanceIdentity<'_>) -> Option<StoreReply> {
    if !is_valid_uid(id.study_instance_uid) || !is_valid_uid(id.series_instance_uid) || !is_valid_uid(id.sop_instance_uid) {
        return None; // store_instance reports the invalid UID
    }
    let limit = ctx.cfg.max_instances_per_series;
    if ctx.spool.instance_path(id).exists() {
        return None;
    }
    let dir = ctx.spool.series_dir(id.study_instance_uid, id.series_instance_uid);
    let count = ctx.series_counts.reserve(&dir, limit)?;
    warn!(series_instance_uid = %id.series_instance_uid, limit, "series instance limit reached; C-STORE refused");
    Some(StoreReply::failure(
        status::REFUSED_OUT_OF_RESOURCES,
        format!("series already holds {count} instances (receive.max_instances_per_series = {limit})"),
    ))
}

/// Number of `.dcm` files in a series folder of `incoming/` (0 if it does not exist).
fn count_instances(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "dcm")).count())
        .unwrap_or(0)
}

/// Upper bounds of the instance counts of series folders in `incoming/`, so the
/// `receive.max_instances_per_series` check does not list the folder on every C-STORE (a
/// listing costs O(n) per instance, O(n²) per series).
///
/// An entry starts from a listing of the folder and grows by one per instance let through.
/// Folders lose files only outside the receive path (assemble moves a finished series away),
/// so an entry is never below the true count. When an entry reaches the limit the folder is
/// listed again and the entry corrected, so an instance is refused exactly when the folder
/// really holds `limit` files, as with a listing per instance. (Instances let through that then
/// fail to be written or are duplicates can leave an entry high; the next listing corrects it.)
/// The map is cleared when it holds more than [`Self::MAX_ENTRIES`] folders; entries are then
/// rebuilt from listings.
#[derive(Debug, Default)]
pub struct SeriesCounts {
    counts: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, usize>>,
}

impl SeriesCounts {
    /// Folders remembered before the map is cleared.
    pub const MAX_ENTRIES: usize = 10_000;

    /// Let one more instance into series folder `dir` if it holds fewer than `limit` instances:
    /// `None` = let through (and counted), `Some(n)` = refused, the folder holds `n` ≥ `limit`
    /// files now.
    pub fn reserve(&self, dir: &std::path::Path, limit: usize) -> Option<usize> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() >= Self::MAX_ENTRIES && !counts.contains_key(dir) {
            counts.clear();
        }
        let entry = counts.entry(dir.to_path_buf()).or_insert_with(|| count_instances(dir));
        if *entry >= limit {
            *entry = count_instances(dir);
            if *entry >= limit {
                return Some(*entry);
            }
        }
        *entry += 1;
        None
    }
}

/// Outcome of [`read_uids_checked`]: what the C-STORE path would do with a data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceivedUids {
    /// SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID (trailing NUL/space
    /// padding removed), each a valid UID (PS3.5 9.1) and therefore safe as a file name.
    Valid([String; 4]),
    /// The data set would be refused; the reason (malformed, undecodable, UID missing/invalid,
    /// unknown transfer syntax).
    Refused(String),
}

/// The UID extraction and validation the C-STORE path applies to a received data set
/// (`dataset` bytes in `transfer_syntax`, a transfer syntax UID): the structural scan of
/// [`scan_data_set`] (after bounded inflation for Deflated Explicit VR Little Endian) and
/// [`is_valid_uid`] on the four UIDs.
/// Never panics, for any input; the robustness entry point of the fuzz target
/// `received_data_set` (fuzz/) and of tests/fuzz_corpus.rs.
pub fn read_uids_checked(dataset: &[u8], transfer_syntax: &str) -> ReceivedUids {
    let Some(ts) = TransferSyntaxRegistry.get(transfer_syntax) else {
        return ReceivedUids::Refused(format!("unknown transfer syntax {transfer_syntax}"));
    };
    let raw = match read_uids(dataset, transfer_syntax, ts) {
        Ok((r, _)) => r,
        Err(e) => return ReceivedUids::Refused(e.to_string()),
    };
    let mut out: [String; 4] = Default::default();
    for (slot, value) in out.iter_mut().zip(raw) {
        let Some(v) = value else { return ReceivedUids::Refused("UID missing".into()) };
        let v = v.trim_end_matches(['\0', ' ']).trim_start().to_string();
        if !is_valid_uid(&v) {
            return ReceivedUids::Refused(format!("invalid UID {v:?}"));
        }
        *slot = v;
    }
    ReceivedUids::Valid(out)
}

#[cfg(test)]
mod tests {
    use super::SeriesCounts;

    /// The count is listed once, then kept; the limit refuses only when the folder really holds
    /// `limit` files, and a folder emptied by assemble is admitted again.
    #[test]
    fn series_counts_refuse_only_at_the_true_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("series");
        std::fs::create_dir(&dir).unwrap();
        let put = |n: usize| std::fs::write(dir.join(format!("{n}.dcm")), b"x").unwrap();
        put(0);
        put(1);
        let counts = SeriesCounts::default();
        assert_eq!(counts.reserve(&dir, 3), None); // listed: 2, +1
        put(2);
        // the entry (3) reached the limit: listed again, 3 files really there → refused
        assert_eq!(counts.reserve(&dir, 3), Some(3));
        // a file written without going through reserve is not seen until the next listing,
        // but the entry never drops below the number let through
        std::fs::remove_file(dir.join("2.dcm")).unwrap();
        assert_eq!(counts.reserve(&dir, 3), None); // listed: 2, +1
        // an instance let through but never written leaves the entry high; the listing corrects it
        assert_eq!(counts.reserve(&dir, 3), None);
        // assemble moved the series away: admitted again
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(counts.reserve(&dir, 3), None);
        assert_eq!(counts.reserve(&dir, 1), None); // entry 1 ≥ 1, listed: 0 files
    }
}
