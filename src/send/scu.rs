//! C-STORE and C-ECHO SCU (PS3.4 B.2 / A.2, PS3.7 9.1.1 / 9.1.5) over dicom-ul's sync client,
//! on plain TCP or DICOM TLS (PS3.15 B.1, a destination's `tls`; see [`crate::tls`]).
//!
//! One association per call: A-ASSOCIATE with the needed presentation contexts, the DIMSE
//! requests (one C-ECHO, or one C-STORE per object of a batch, [`c_store_many`]) and their
//! responses through [`crate::dimse`], A-RELEASE. Runs on worker threads.

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use dicom_dictionary_std::uids;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTable;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use std::io::{Read, Write};

use dicom_ul::association::client::{ClientAssociation, TlsStream};
use dicom_ul::association::CloseSocket;
use dicom_ul::pdu::{AbortRQSource, Pdu};
use dicom_ul::ClientAssociationOptions;
use tracing::{debug, warn};

use super::SendError;
use crate::dimse::command::{command_field, priority};
use crate::dimse::{read_message, send_message, AssociationEvent, CommandSet, MessageAssembler};

/// Maximum PDU length this SCU announces for receiving (PS3.8 D.1).
pub const SCU_MAX_PDU_LENGTH: u32 = 131_072;
/// TCP connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read/write timeout of every PDU (a PACS may take a while to answer a C-STORE).
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

const EXPLICIT_LE: &str = uids::EXPLICIT_VR_LITTLE_ENDIAN;
const IMPLICIT_LE: &str = uids::IMPLICIT_VR_LITTLE_ENDIAN;

/// A Part-10 file split into its File Meta Information and the data set bytes that follow.
#[derive(Debug)]
pub struct Part10 {
    /// File Meta Information (group 0002).
    pub meta: FileMetaTable,
    /// Everything after the meta group: the data set in `meta.transfer_syntax()`.
    pub dataset: Vec<u8>,
}

/// Read a DICOM Part-10 file (PS3.10 7.1): 128-byte preamble, `DICM`, meta group, data set.
///
/// # Errors
/// [`SendError::ReadFile`] if the file cannot be read; [`SendError::NotPart10`] if it has no
/// valid preamble/meta group or lacks MediaStorageSOPClassUID, MediaStorageSOPInstanceUID or
/// TransferSyntaxUID.
pub fn read_part10(path: &Path) -> Result<Part10, SendError> {
    let bytes = std::fs::read(path).map_err(|source| SendError::ReadFile { path: path.to_path_buf(), source })?;
    let not = |message: String| SendError::NotPart10 { path: path.to_path_buf(), message };
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(not("no 128-byte preamble followed by DICM".into()));
    }
    let mut rest: &[u8] = &bytes[128..];
    let meta = FileMetaTable::from_reader(&mut rest).map_err(|e| not(format!("file meta information: {e}")))?;
    if meta.media_storage_sop_class_uid().is_empty()
        || meta.media_storage_sop_instance_uid().is_empty()
        || meta.transfer_syntax().is_empty()
    {
        return Err(not("MediaStorageSOPClassUID, MediaStorageSOPInstanceUID or TransferSyntaxUID empty".into()));
    }
    let dataset = rest.to_vec();
    Ok(Part10 { meta, dataset })
}

fn establish(
    options: ClientAssociationOptions<'_>,
    host: &str,
    port: u16,
) -> Result<ClientAssociation<TcpStream>, SendError> {
    let addr = format!("{host}:{port}");
    let mut assoc = with_timeouts(options)
        .establish((host, port))
        .map_err(|e| SendError::Association { address: addr.clone(), source: Box::new(e) })?;
    if let Err(e) = assoc.inner_stream().set_nodelay(true) {
        warn!(address = %addr, error = %e, "cannot set TCP_NODELAY");
    }
    Ok(assoc)
}

fn with_timeouts(options: ClientAssociationOptions<'_>) -> ClientAssociationOptions<'_> {
    options
        .max_pdu_length(SCU_MAX_PDU_LENGTH)
        .connection_timeout(CONNECT_TIMEOUT)
        .read_timeout(IO_TIMEOUT)
        .write_timeout(IO_TIMEOUT)
}

/// Connect, complete the TLS handshake (PS3.15 B.1; server certificate checked against
/// `tls.ca` and the server name, client certificate sent when configured), then A-ASSOCIATE.
fn establish_tls(
    options: ClientAssociationOptions<'_>,
    host: &str,
    port: u16,
    tls: &crate::config::DestinationTlsConfig,
    key_prefix: &str,
) -> Result<ClientAssociation<TlsStream>, SendError> {
    let addr = format!("{host}:{port}");
    let config = crate::tls::client_config(key_prefix, tls)?;
    let mut assoc = with_timeouts(options)
        .tls_config(config)
        .server_name(tls.server_name_or(host))
        .establish_tls((host, port))
        .map_err(|e| SendError::Association { address: addr.clone(), source: Box::new(e) })?;
    if let Err(e) = assoc.inner_stream().sock.set_nodelay(true) {
        warn!(address = %addr, error = %e, "cannot set TCP_NODELAY");
    }
    Ok(assoc)
}

/// Send `request` and wait for the response to it (on an open association).
fn exchange<S: Read + Write + CloseSocket>(
    assoc: &mut ClientAssociation<S>,
    pc_id: u8,
    request: &CommandSet,
    dataset: Option<&[u8]>,
    expected_response: u16,
) -> Result<CommandSet, SendError> {
    send_message(assoc, pc_id, request, dataset).map_err(SendError::Dimse)?;
    let mut asm = MessageAssembler::new();
    loop {
        match read_message(assoc, &mut asm).map_err(SendError::Dimse)? {
            AssociationEvent::Message(m) => {
                let c = m.command;
                if c.command_field == expected_response && c.message_id_being_responded_to == request.message_id {
                    return Ok(c);
                }
                debug!(command_field = format!("{:04X}H", c.command_field), "ignoring unrelated DIMSE message");
            }
            AssociationEvent::Released => {
                return Err(SendError::UnexpectedEnd("the peer released the association before responding".into()))
            }
            AssociationEvent::Aborted(source) => {
                return Err(SendError::UnexpectedEnd(format!("the peer aborted the association ({source:?})")))
            }
        }
    }
}

/// How an association ends after its exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The exchanges went well: A-RELEASE (a sloppy release does not undo the responses).
    Release,
    /// An exchange failed on our side or in transit: A-ABORT (service user).
    Abort,
    /// The peer released or aborted it already: nothing to send.
    PeerEnded,
}

impl Ending {
    /// The ending after an exchange that failed with `e`.
    fn after(e: &SendError) -> Ending {
        if matches!(e, SendError::UnexpectedEnd(_)) {
            Ending::PeerEnded
        } else {
            Ending::Abort
        }
    }
}

fn close<S: Read + Write + CloseSocket>(mut assoc: ClientAssociation<S>, ending: Ending) {
    match ending {
        Ending::Release => {
            if let Err(e) = assoc.release() {
                warn!(error = %e, "A-RELEASE failed after the responses were received");
            }
        }
        Ending::Abort => {
            let _ = assoc.send(&Pdu::AbortRQ { source: AbortRQSource::ServiceUser });
        }
        Ending::PeerEnded => {}
    }
}

/// Send `request` and wait for the response to it; then release the association.
fn request_response<S: Read + Write + CloseSocket>(
    mut assoc: ClientAssociation<S>,
    pc_id: u8,
    request: &CommandSet,
    dataset: Option<&[u8]>,
    expected_response: u16,
) -> Result<CommandSet, SendError> {
    let result = exchange(&mut assoc, pc_id, request, dataset, expected_response);
    close(assoc, result.as_ref().err().map_or(Ending::Release, Ending::after));
    result
}

/// C-STORE one Part-10 file to a destination; returns the DIMSE status of the C-STORE-RSP
/// (PS3.4 Table B.2-1; see [`crate::dimse::status::StatusKind`] to classify it).
/// [`c_store_many`] with one file.
///
/// # Errors
/// As [`c_store_many`], the file's own error or the association's.
pub fn c_store(dest: &crate::config::DestinationConfig, calling_ae: &str, file: &Path) -> Result<u16, SendError> {
    c_store_many(dest, calling_ae, &[file])?.pop().expect("one result per file")
}

/// The most objects [`c_store_many`] sends over one association (the send queue's batch).
pub const MAX_OBJECTS_PER_ASSOCIATION: usize = 16;

/// C-STORE several Part-10 files to a destination over **one** association (PS3.7 9.1.1, one
/// C-STORE-RQ after the other, message IDs 1, 2, …); returns one result per file, in order:
/// the DIMSE status of its C-STORE-RSP (PS3.4 Table B.2-1; see
/// [`crate::dimse::status::StatusKind`] to classify it) or why it was not stored.
///
/// Proposes each SOP class of the files twice: with the file's own transfer syntax, and with
/// Explicit and Implicit VR Little Endian (PS3.8 9.3.2.2; one context per distinct SOP class and
/// transfer syntax list, at most 2 × [`MAX_OBJECTS_PER_ASSOCIATION`]). A data set is sent byte
/// for byte when its transfer syntax is accepted; a native (uncompressed) data set is
/// re-encoded between Explicit and Implicit VR Little Endian if only the other one is accepted.
/// Anything else would need transcoding, which is not done. A failed exchange ends the
/// association (A-ABORT); the files after it get [`SendError::UnexpectedEnd`] ("not sent").
///
/// # Errors
/// Per file: [`SendError::ReadFile`] / [`SendError::NotPart10`] (not proposed);
/// [`SendError::SopClassNotAccepted`] when the destination accepted no context for its SOP
/// class; [`SendError::TransferSyntaxNotAccepted`] / [`SendError::Transcode`] when only a
/// transfer syntax it cannot be converted to was accepted; [`SendError::Dimse`] /
/// [`SendError::UnexpectedEnd`] when its exchange failed.
/// For all files (the outer error): [`SendError::Association`] when the destination cannot be
/// reached or rejects the association, [`SendError::SopClassNotAccepted`] (all SOP classes
/// listed, comma-separated) when it accepts no context at all, [`SendError::Tls`].
pub fn c_store_many(
    dest: &crate::config::DestinationConfig,
    calling_ae: &str,
    files: &[&Path],
) -> Result<Vec<Result<u16, SendError>>, SendError> {
    let mut results: Vec<Option<Result<u16, SendError>>> = Vec::with_capacity(files.len());
    let mut objects: Vec<(usize, Part10)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        match read_part10(f) {
            Ok(p) => {
                objects.push((i, p));
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    if !objects.is_empty() {
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(calling_ae.to_string())
            .called_ae_title(dest.ae_title.clone());
        let mut proposed: Vec<(String, Vec<String>)> = Vec::new();
        for (_, p) in &objects {
            let class = p.meta.media_storage_sop_class_uid().to_string();
            let ts = p.meta.transfer_syntax().to_string();
            let native = ts == EXPLICIT_LE || ts == IMPLICIT_LE;
            let second = if native {
                vec![if ts == EXPLICIT_LE { IMPLICIT_LE } else { EXPLICIT_LE }.to_string()]
            } else {
                vec![EXPLICIT_LE.to_string(), IMPLICIT_LE.to_string()]
            };
            for ctx in [(class.clone(), vec![ts.clone()]), (class.clone(), second)] {
                if !proposed.contains(&ctx) {
                    options = options.with_presentation_context(ctx.0.clone(), ctx.1.clone());
                    proposed.push(ctx);
                }
            }
        }
        let classes = || {
            let mut c: Vec<&str> = objects.iter().map(|(_, p)| p.meta.media_storage_sop_class_uid()).collect();
            c.sort_unstable();
            c.dedup();
            c.join(", ")
        };
        let map_no_context = |e: SendError| match e {
            SendError::Association { address, source }
                if matches!(*source, dicom_ul::association::Error::NoAcceptedPresentationContexts { .. }) =>
            {
                SendError::SopClassNotAccepted { destination: dest.name.clone(), address, sop_class_uid: classes() }
            }
            other => other,
        };
        let sent = match &dest.tls {
            None => {
                let assoc = establish(options, &dest.host, dest.port).map_err(map_no_context)?;
                store_all(assoc, dest, &objects)
            }
            Some(tls) => {
                let key = format!("destination `{}` tls", dest.name);
                let assoc = establish_tls(options, &dest.host, dest.port, tls, &key).map_err(map_no_context)?;
                store_all(assoc, dest, &objects)
            }
        };
        for ((i, _), r) in objects.iter().zip(sent) {
            results[*i] = Some(r);
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every file has a result")).collect())
}

/// The C-STORE exchanges of [`c_store_many`] on an established association (plain or TLS),
/// one result per object; releases or aborts the association.
fn store_all<S: Read + Write + CloseSocket>(
    mut assoc: ClientAssociation<S>,
    dest: &crate::config::DestinationConfig,
    objects: &[(usize, Part10)],
) -> Vec<Result<u16, SendError>> {
    let accepted: Vec<(u8, String, String)> = assoc
        .presentation_contexts()
        .iter()
        .map(|pc| (pc.id, pc.abstract_syntax.clone(), pc.transfer_syntax.clone()))
        .collect();
    let address = format!("{}:{}", dest.host, dest.port);
    let mut out = Vec::with_capacity(objects.len());
    let mut broken: Option<String> = None;
    let mut ending = Ending::Release;
    for (n, (_, part10)) in objects.iter().enumerate() {
        if let Some(why) = &broken {
            out.push(Err(SendError::UnexpectedEnd(format!("not sent: the association ended after an earlier object failed ({why})"))));
            continue;
        }
        let sop_class = part10.meta.media_storage_sop_class_uid();
        let sop_instance = part10.meta.media_storage_sop_instance_uid();
        let ts = part10.meta.transfer_syntax();
        let native = ts == EXPLICIT_LE || ts == IMPLICIT_LE;
        let for_class: Vec<&(u8, String, String)> = accepted.iter().filter(|(_, a, _)| a == sop_class).collect();
        let chosen: Result<(u8, std::borrow::Cow<'_, [u8]>), SendError> = if for_class.is_empty() {
            Err(SendError::SopClassNotAccepted {
                destination: dest.name.clone(),
                address: address.clone(),
                sop_class_uid: sop_class.to_string(),
            })
        } else if let Some((id, _, _)) = for_class.iter().find(|(_, _, t)| t == ts) {
            Ok((*id, std::borrow::Cow::Borrowed(&part10.dataset[..])))
        } else if let (true, Some((id, _, t))) = (native, for_class.iter().find(|(_, _, t)| t == EXPLICIT_LE || t == IMPLICIT_LE)) {
            reencode_native(&part10.dataset, ts, t).map(|bytes| (*id, std::borrow::Cow::Owned(bytes)))
        } else {
            Err(SendError::TransferSyntaxNotAccepted {
                destination: dest.name.clone(),
                sop_class_uid: sop_class.to_string(),
                transfer_syntax: ts.to_string(),
                accepted: for_class.iter().map(|(_, _, t)| t.clone()).collect(),
            })
        };
        let (pc_id, dataset) = match chosen {
            Ok(c) => c,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        let rq = CommandSet::c_store_rq((n + 1) as u16, sop_class, sop_instance, priority::MEDIUM);
        match exchange(&mut assoc, pc_id, &rq, Some(&dataset), command_field::C_STORE_RSP) {
            Ok(rsp) => {
                if let Some(c) = rsp.error_comment.as_deref() {
                    debug!(destination = %dest.name, comment = c, "C-STORE-RSP error comment");
                }
                let status = rsp.status.ok_or_else(|| SendError::UnexpectedEnd("C-STORE-RSP without Status".into()));
                if let Ok(st) = &status {
                    debug!(destination = %dest.name, sop_instance_uid = %sop_instance, status = format!("{st:04X}H"), tls = dest.tls.is_some(), "C-STORE-RSP");
                }
                out.push(status);
            }
            Err(e) => {
                broken = Some(e.to_string());
                ending = Ending::after(&e);
                out.push(Err(e));
            }
        }
    }
    close(assoc, ending);
    out
}

/// Re-encode a native data set between Explicit and Implicit VR Little Endian.
fn reencode_native(dataset: &[u8], from: &str, to: &str) -> Result<Vec<u8>, SendError> {
    let conv = |message: String| SendError::Transcode { from: from.to_string(), to: to.to_string(), message };
    let from_ts = TransferSyntaxRegistry.get(from).ok_or_else(|| conv("unknown source transfer syntax".into()))?;
    let to_ts = TransferSyntaxRegistry.get(to).ok_or_else(|| conv("unknown target transfer syntax".into()))?;
    let obj = InMemDicomObject::read_dataset_with_ts(dataset, from_ts).map_err(|e| conv(e.to_string()))?;
    let mut out = Vec::with_capacity(dataset.len() + 1024);
    obj.write_dataset_with_ts(&mut out, to_ts).map_err(|e| conv(e.to_string()))?;
    Ok(out)
}

/// C-ECHO (Verification, PS3.4 A.4) to `called_ae` at `host:port`; returns the DIMSE status
/// of the C-ECHO-RSP (0000 = success).
///
/// # Errors
/// [`SendError::Association`] if the peer cannot be reached or rejects the association;
/// [`SendError::Dimse`] / [`SendError::UnexpectedEnd`] if the exchange fails.
pub fn c_echo(called_ae: &str, host: &str, port: u16, calling_ae: &str) -> Result<u16, SendError> {
    let assoc = establish(echo_options(called_ae, calling_ae), host, port)?;
    echo_on(assoc)
}

/// C-ECHO to a configured destination, over DICOM TLS when it has `tls` (the readiness check
/// of `/readyz`); returns the DIMSE status of the C-ECHO-RSP (0000 = success).
///
/// # Errors
/// As [`c_echo`], plus [`SendError::Tls`] when the destination's TLS files cannot be used
/// and [`SendError::Association`] when the TLS handshake fails.
pub fn c_echo_destination(dest: &crate::config::DestinationConfig, calling_ae: &str) -> Result<u16, SendError> {
    match &dest.tls {
        None => c_echo(&dest.ae_title, &dest.host, dest.port, calling_ae),
        Some(tls) => {
            let key = format!("destination `{}` tls", dest.name);
            echo_on(establish_tls(echo_options(&dest.ae_title, calling_ae), &dest.host, dest.port, tls, &key)?)
        }
    }
}

fn echo_options<'a>(called_ae: &str, calling_ae: &str) -> ClientAssociationOptions<'a> {
    ClientAssociationOptions::new()
        .calling_ae_title(calling_ae.to_string())
        .called_ae_title(called_ae.to_string())
        .with_presentation_context(uids::VERIFICATION.to_string(), vec![IMPLICIT_LE.to_string(), EXPLICIT_LE.to_string()])
}

fn echo_on<S: Read + Write + CloseSocket>(assoc: ClientAssociation<S>) -> Result<u16, SendError> {
    let pc_id = assoc
        .presentation_contexts()
        .first()
        .map(|pc| pc.id)
        .ok_or_else(|| SendError::UnexpectedEnd("no presentation context accepted".into()))?;
    let rsp = request_response(assoc, pc_id, &CommandSet::c_echo_rq(1), None, command_field::C_ECHO_RSP)?;
    rsp.status.ok_or_else(|| SendError::UnexpectedEnd("C-ECHO-RSP without Status".into()))
}
