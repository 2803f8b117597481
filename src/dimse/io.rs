//! Reading and writing whole DIMSE messages over a dicom-ul association.
//!
//! [`read_message_async`] / [`read_message`] pull PDUs from an async (SCP) or sync (SCU)
//! association into a [`MessageAssembler`] until a message is complete, answering
//! A-RELEASE-RQ with A-RELEASE-RP (PS3.8 7.2) and reporting A-ABORT (PS3.8 7.3).
//! [`send_message_async`] / [`send_message`] write a command and optional data set as
//! P-DATA-TF PDUs no longer than the peer's maximum PDU length.

use dicom_ul::association::{AsyncAssociation, CloseSocket, SyncAssociation};
use dicom_ul::pdu::{AbortRQSource, Pdu};

use super::command::CommandSet;
use super::message::{message_pdus, DimseMessage, MessageAssembler};
use super::DimseError;

/// What the peer did next on an association.
#[derive(Debug)]
pub enum AssociationEvent {
    /// A complete DIMSE message.
    Message(DimseMessage),
    /// The peer sent A-RELEASE-RQ; A-RELEASE-RP has been sent. The association is over.
    Released,
    /// The peer sent A-ABORT (PS3.8 9.3.8). The association is over.
    Aborted(AbortRQSource),
}

fn handle_pdu(pdu: Pdu, asm: &mut MessageAssembler) -> Result<Option<AssociationEvent>, DimseError> {
    match pdu {
        Pdu::PData { data } => {
            asm.push_pdu(data)?;
            Ok(None)
        }
        Pdu::ReleaseRQ => Ok(Some(AssociationEvent::Released)),
        Pdu::AbortRQ { source } => Ok(Some(AssociationEvent::Aborted(source))),
        other => Err(DimseError::Protocol(format!("unexpected PDU {}", other.short_description()))),
    }
}

/// Read the next complete message from an async association (SCP side).
///
/// A-RELEASE-RQ is answered with A-RELEASE-RP before [`AssociationEvent::Released`] is returned
/// (a release in the middle of a message is a protocol error and yields
/// [`DimseError::Protocol`]).
///
/// # Errors
/// [`DimseError::Association`] for transport errors, timeouts and oversized PDUs (strict mode);
/// [`DimseError::Protocol`] / command decoding errors from the [`MessageAssembler`]. After an
/// error the caller should abort the association.
pub async fn read_message_async<S, A>(assoc: &mut A, asm: &mut MessageAssembler) -> Result<AssociationEvent, DimseError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    A: AsyncAssociation<S> + Send,
{
    read_message_async_observed(assoc, asm, |_| {}).await
}

/// [`read_message_async`], calling `after_pdu` with the assembler after every P-DATA-TF PDU
/// that did not complete a message (e.g. to write [`MessageAssembler::data_in_progress`] to
/// disk while the rest of a large data set is still arriving). `after_pdu` runs on the async
/// task: it must not block for long.
///
/// # Errors
/// As [`read_message_async`].
pub async fn read_message_async_observed<S, A, F>(
    assoc: &mut A,
    asm: &mut MessageAssembler,
    mut after_pdu: F,
) -> Result<AssociationEvent, DimseError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    A: AsyncAssociation<S> + Send,
    F: FnMut(&MessageAssembler) + Send,
{
    loop {
        if let Some(m) = asm.next_message() {
            return Ok(AssociationEvent::Message(m));
        }
        let pdu = AsyncAssociation::receive(assoc).await.map_err(DimseError::association)?;
        match handle_pdu(pdu, asm)? {
            None => {
                if asm.data_in_progress().is_some() {
                    after_pdu(asm);
                }
                continue;
            }
            Some(AssociationEvent::Released) => {
                if !asm.is_between_messages() {
                    return Err(DimseError::Protocol("A-RELEASE-RQ in the middle of a DIMSE message".into()));
                }
                AsyncAssociation::send(assoc, &Pdu::ReleaseRP).await.map_err(DimseError::association)?;
                return Ok(AssociationEvent::Released);
            }
            Some(ev) => return Ok(ev),
        }
    }
}

/// Read the next complete message from a sync association (SCU side). Same contract as
/// [`read_message_async`].
///
/// # Errors
/// As [`read_message_async`].
pub fn read_message<S, A>(assoc: &mut A, asm: &mut MessageAssembler) -> Result<AssociationEvent, DimseError>
where
    S: std::io::Read + std::io::Write + CloseSocket,
    A: SyncAssociation<S>,
{
    loop {
        if let Some(m) = asm.next_message() {
            return Ok(AssociationEvent::Message(m));
        }
        let pdu = SyncAssociation::receive(assoc).map_err(DimseError::association)?;
        match handle_pdu(pdu, asm)? {
            None => continue,
            Some(AssociationEvent::Released) => {
                if !asm.is_between_messages() {
                    return Err(DimseError::Protocol("A-RELEASE-RQ in the middle of a DIMSE message".into()));
                }
                SyncAssociation::send(assoc, &Pdu::ReleaseRP).map_err(DimseError::association)?;
                return Ok(AssociationEvent::Released);
            }
            Some(ev) => return Ok(ev),
        }
    }
}

/// Send `command` (and `dataset`, encoded in the presentation context's transfer syntax)
/// on presentation context `pc_id` of an async association, fragmented to the peer's
/// maximum PDU length.
///
/// # Errors
/// [`DimseError::CommandEncode`]; [`DimseError::Association`] if writing fails.
pub async fn send_message_async<S, A>(
    assoc: &mut A,
    pc_id: u8,
    command: &CommandSet,
    dataset: Option<&[u8]>,
) -> Result<(), DimseError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    A: AsyncAssociation<S> + Send,
{
    let cmd = command.encode()?;
    let max = assoc.peer_max_pdu_length();
    for pdu in message_pdus(pc_id, &cmd, dataset, max) {
        AsyncAssociation::send(assoc, &pdu).await.map_err(DimseError::association)?;
    }
    Ok(())
}

/// Sync counterpart of [`send_message_async`] (SCU side).
///
/// # Errors
/// As [`send_message_async`].
pub fn send_message<S, A>(assoc: &mut A, pc_id: u8, command: &CommandSet, dataset: Option<&[u8]>) -> Result<(), DimseError>
where
    S: std::io::Read + std::io::Write + CloseSocket,
    A: SyncAssociation<S>,
{
    let cmd = command.encode()?;
    let max = assoc.peer_max_pdu_length();
    for pdu in message_pdus(pc_id, &cmd, dataset, max) {
        SyncAssociation::send(assoc, &pdu).map_err(DimseError::association)?;
    }
    Ok(())
}
