//! One association of the SCP, from A-ASSOCIATE to release or abort (PS3.8 chapter 7).
//!
//! Connection handling only: negotiation, the message loop, idle timeout, shutdown and
//! logging. What a C-STORE does with its data set lives in [`super::store`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::association::Association;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource, Pdu, PresentationContextResultReason,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::store::{handle_c_store, StoreReply};
use super::{shutdown_requested, ReceiveContext, ScpOptions};
use crate::dimse::command::command_field;
use crate::dimse::{read_message_async, send_message_async, status, AssociationEvent, CommandSet, DimseError, DimseMessage};

/// Counters of one association, logged when it ends.
#[derive(Debug, Default, Clone, Copy)]
struct AssociationStats {
    stored: u64,
    duplicates: u64,
    failed: u64,
    echoes: u64,
}

/// Serve one accepted connection until release, abort, idle timeout, error or shutdown.
pub(crate) async fn run_association(
    ctx: Arc<ReceiveContext>,
    options: Arc<ScpOptions>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let peer_s = peer.to_string();
    let mut assoc = match options.establish_async(stream).await {
        Ok(a) => a,
        Err(dicom_ul::association::Error::Rejected { association_rj, .. }) => {
            warn!(peer = %peer_s, result = ?association_rj.result, source = ?association_rj.source, "association rejected");
            return;
        }
        Err(e) => {
            warn!(peer = %peer_s, error = %e, "association negotiation failed");
            return;
        }
    };
    let calling = assoc.peer_ae_title().trim().to_string();
    let called = assoc.called_ae_title().trim().to_string();
    let accepted: Vec<String> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| format!("{}:{}/{}", pc.id, pc.abstract_syntax, pc.transfer_syntax))
        .collect();
    metrics::counter!("myonode_associations_total").increment(1);
    info!(
        peer = %peer_s, calling_ae = %calling, called_ae = %called,
        peer_max_pdu = assoc.requestor_max_pdu_length(),
        accepted_contexts = accepted.len(),
        proposed_contexts = assoc.presentation_contexts().len(),
        "association established"
    );
    debug!(peer = %peer_s, contexts = ?accepted, "accepted presentation contexts");

    let mut stats = AssociationStats::default();
    let mut series_seen: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    // limit: the data set plus its command set (a few hundred bytes; 64 KiB allowed)
    let limit = ctx.cfg.max_instance_bytes.saturating_add(65_536).min(usize::MAX as u64) as usize;
    let mut asm = crate::dimse::MessageAssembler::with_limit(limit);
    let outcome: &str = loop {
        let event = tokio::select! {
            biased;
            _ = shutdown_requested(&mut shutdown) => {
                abort(&mut assoc).await;
                break "aborted: node shutting down";
            }
            ev = read_message_async(&mut assoc, &mut asm) => ev,
        };
        match event {
            Ok(AssociationEvent::Message(m)) => {
                if let Err(e) = handle_message(&ctx, &mut assoc, m, &calling, &peer_s, &mut stats, &mut series_seen).await {
                    warn!(peer = %peer_s, calling_ae = %calling, error = %e, "DIMSE failure, aborting association");
                    abort(&mut assoc).await;
                    break "aborted: DIMSE failure";
                }
            }
            Ok(AssociationEvent::Released) => break "released",
            Ok(AssociationEvent::Aborted(source)) => {
                warn!(peer = %peer_s, calling_ae = %calling, source = ?source, "association aborted by peer");
                break "aborted by peer";
            }
            Err(e) if e.is_connection_closed() => break "connection closed by peer",
            Err(e) if e.is_timeout() => {
                warn!(peer = %peer_s, calling_ae = %calling, timeout_s = ctx.cfg.association_timeout_seconds, "association idle timeout");
                abort(&mut assoc).await;
                break "aborted: idle timeout";
            }
            Err(e) => {
                warn!(peer = %peer_s, calling_ae = %calling, error = %e, "protocol error, aborting association");
                abort(&mut assoc).await;
                break "aborted: protocol error";
            }
        }
    };
    let _ = assoc.inner_stream().shutdown().await;
    info!(
        peer = %peer_s, calling_ae = %calling, called_ae = %called,
        stored = stats.stored, duplicates = stats.duplicates, failed = stats.failed, echoes = stats.echoes,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome,
        "association ended"
    );
    if let (Some(tx), false) = (&ctx.association_events, series_seen.is_empty()) {
        let event = crate::pipeline::messages::AssociationEnded {
            calling_ae_title: calling.clone(),
            series_instance_uids: series_seen.into_iter().collect(),
            ended_at: std::time::SystemTime::now(),
        };
        let tx = tx.clone();
        // The channel is bounded: send from the blocking pool so the runtime never stalls.
        if let Ok(Err(_)) = tokio::task::spawn_blocking(move || tx.send(event)).await {
            debug!(peer = %peer_s, "assemble stage is gone; association end not reported");
        }
    }
}

/// Send A-ABORT (service-provider, reason not specified); errors are irrelevant at this point.
async fn abort(assoc: &mut AsyncServerAssociation<TcpStream>) {
    let pdu = Pdu::AbortRQ { source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::ReasonNotSpecified) };
    let _ = assoc.send(&pdu).await;
}

/// Dispatch one DIMSE request and send its response.
async fn handle_message(
    ctx: &Arc<ReceiveContext>,
    assoc: &mut AsyncServerAssociation<TcpStream>,
    message: DimseMessage,
    calling: &str,
    peer: &str,
    stats: &mut AssociationStats,
    series_seen: &mut std::collections::BTreeSet<String>,
) -> Result<(), DimseError> {
    let pc_id = message.presentation_context_id;
    let pc = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.id == pc_id && pc.reason == PresentationContextResultReason::Acceptance)
        .cloned()
        .ok_or_else(|| DimseError::Protocol(format!("message on presentation context {pc_id}, which was not accepted")))?;
    let command = message.command;
    match command.command_field {
        command_field::C_ECHO_RQ => {
            stats.echoes += 1;
            debug!(peer, calling_ae = calling, "C-ECHO");
            send_message_async(assoc, pc_id, &CommandSet::c_echo_rsp(&command, status::SUCCESS), None).await
        }
        command_field::C_STORE_RQ => {
            let reply: StoreReply =
                tracing::Instrument::instrument(
                    handle_c_store(ctx.clone(), &pc.abstract_syntax, &pc.transfer_syntax, &command, message.dataset, calling),
                    tracing::info_span!("c_store", calling_ae = calling,
                        sop_instance = command.affected_sop_instance_uid.as_deref().unwrap_or("")),
                )
                .await;
            if let Some(series) = &reply.series_instance_uid {
                series_seen.insert(series.clone());
            }
            match (reply.status, reply.duplicate) {
                (status::SUCCESS, false) => stats.stored += 1,
                (status::SUCCESS, true) => stats.duplicates += 1,
                _ => {
                    stats.failed += 1;
                    warn!(
                        peer, calling_ae = calling,
                        sop_instance_uid = command.affected_sop_instance_uid.as_deref().unwrap_or(""),
                        status = format!("{:04X}H", reply.status),
                        comment = reply.comment.as_deref().unwrap_or(""),
                        "C-STORE refused"
                    );
                }
            }
            let rsp = CommandSet::c_store_rsp(&command, reply.status, reply.comment.as_deref());
            send_message_async(assoc, pc_id, &rsp, None).await
        }
        command_field::C_CANCEL_RQ => Ok(()), // nothing in progress to cancel; C-CANCEL has no response
        f if f & command_field::RESPONSE_BIT != 0 => {
            warn!(peer, calling_ae = calling, command_field = format!("{f:04X}H"), "unexpected response message ignored");
            Ok(())
        }
        f => {
            warn!(peer, calling_ae = calling, command_field = format!("{f:04X}H"), "unsupported DIMSE operation");
            send_message_async(assoc, pc_id, &CommandSet::unrecognized_operation_rsp(&command), None).await
        }
    }
}

/// Answer an A-ASSOCIATE-RQ with A-ASSOCIATE-RJ transient, service-provider (presentation
/// related), "local-limit-exceeded" (PS3.8 9.3.4) because `max_associations` is reached.
pub(crate) async fn reject_busy(mut stream: TcpStream, peer: SocketAddr, timeout: Duration) {
    let read = async {
        let mut header = [0u8; 6];
        stream.read_exact(&mut header).await?;
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        // Only the fixed part is of interest (calling AE title); discard the rest in bounded reads.
        let mut fixed = vec![0u8; len.min(68)];
        stream.read_exact(&mut fixed).await?;
        let mut remaining = len - fixed.len();
        let mut sink = [0u8; 4096];
        while remaining > 0 {
            let n = stream.read(&mut sink[..remaining.min(4096)]).await?;
            if n == 0 {
                break;
            }
            remaining -= n;
        }
        Ok::<_, std::io::Error>((header[0], fixed))
    };
    let calling = match tokio::time::timeout(timeout, read).await {
        Ok(Ok((0x01, fixed))) if fixed.len() >= 36 => String::from_utf8_lossy(&fixed[20..36]).trim().to_string(),
        Ok(Ok((t, _))) => {
            warn!(peer = %peer, pdu_type = t, "expected A-ASSOCIATE-RQ on a new connection; closing");
            return;
        }
        _ => {
            warn!(peer = %peer, "no A-ASSOCIATE-RQ on a new connection while busy; closing");
            return;
        }
    };
    warn!(peer = %peer, calling_ae = %calling, "association rejected (transient): max_associations reached");
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut buf = Vec::with_capacity(16);
    if dicom_ul::write_pdu(&mut buf, &rj).is_ok() {
        let _ = tokio::time::timeout(timeout, stream.write_all(&buf)).await;
    }
    let _ = stream.shutdown().await;
}
