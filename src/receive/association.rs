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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::staging::{AcceptedContext, Staging};
use super::store::{handle_c_store, StoreReply};
use super::{shutdown_requested, ReceiveContext, ScpOptions};
use crate::dimse::command::command_field;
use crate::dimse::{read_message_async_observed, send_message_async, status, AssociationEvent, CommandSet, DimseError, DimseMessage};

/// Counters of one association, logged when it ends.
#[derive(Debug, Default, Clone, Copy)]
struct AssociationStats {
    stored: u64,
    duplicates: u64,
    failed: u64,
    echoes: u64,
}

/// How an association's connection is carried, for logs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Transport {
    /// DICOM TLS (PS3.15 B.1) rather than plain TCP.
    pub tls: bool,
    /// Subject DN of the verified client certificate (TLS with client authentication).
    pub client_subject: Option<String>,
}

/// `e` and its chain of sources, `: `-separated (dicom-ul's TLS errors keep the rustls cause
/// in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Log why an association could not be established (nothing was stored on it).
fn log_not_established(peer: &str, tls: bool, e: dicom_ul::association::Error) {
    match e {
        dicom_ul::association::Error::Rejected { association_rj, .. } => {
            warn!(peer = %peer, tls, result = ?association_rj.result, source = ?association_rj.source, "association rejected");
        }
        e @ (dicom_ul::association::Error::TlsHandshake { .. } | dicom_ul::association::Error::TlsConnection { .. }) => {
            warn!(peer = %peer, tls, error = %error_chain(&e), "TLS handshake failed; connection refused");
        }
        e @ dicom_ul::association::Error::TlsNotSupported { .. } => {
            warn!(peer = %peer, tls, error = %error_chain(&e), "client started a TLS handshake on the plain DICOM port; connection refused");
        }
        e => warn!(peer = %peer, tls, error = %error_chain(&e), "association negotiation failed"),
    }
}

/// Serve one accepted connection until release, abort, idle timeout, error or shutdown.
///
/// With `tls` the TLS handshake (PS3.15 B.1; `options` must carry the listener's
/// `rustls::ServerConfig`) comes first; handshake and A-ASSOCIATE negotiation together are
/// bounded by `receive.association_timeout_seconds`. A shutdown while the connection is still
/// in the handshake or negotiation closes it at once (nothing has been acknowledged on it yet),
/// so a stalled or slow client cannot hold up the node's stop for the timeout.
pub(crate) async fn run_association(
    ctx: Arc<ReceiveContext>,
    options: Arc<ScpOptions>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    tls: bool,
) {
    let started = Instant::now();
    let peer_s = peer.to_string();
    let timeout = Duration::from_secs_f64(ctx.cfg.association_timeout_seconds.max(0.001));
    let timed_out = || warn!(peer = %peer_s, tls, timeout_s = timeout.as_secs_f64(), "no association within the timeout; connection closed");
    let stopping = || info!(peer = %peer_s, tls, "node shutting down; connection closed before an association was established");
    if tls {
        let establish = tokio::time::timeout(timeout, options.establish_tls_async(stream));
        let established = tokio::select! {
            r = establish => r,
            _ = shutdown_requested(&mut shutdown) => return stopping(),
        };
        match established {
            Ok(Ok(mut assoc)) => {
                let client_subject = assoc
                    .inner_stream()
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(crate::tls::certificate_subject);
                let transport = Transport { tls: true, client_subject };
                serve_established(ctx, assoc, peer_s, shutdown, started, transport).await
            }
            Ok(Err(e)) => log_not_established(&peer_s, tls, e),
            Err(_) => timed_out(),
        }
    } else {
        let establish = tokio::time::timeout(timeout, options.establish_async(stream));
        let established = tokio::select! {
            r = establish => r,
            _ = shutdown_requested(&mut shutdown) => return stopping(),
        };
        match established {
            Ok(Ok(assoc)) => serve_established(ctx, assoc, peer_s, shutdown, started, Transport::default()).await,
            Ok(Err(e)) => log_not_established(&peer_s, tls, e),
            Err(_) => timed_out(),
        }
    }
}

/// The message loop of an established association, over any transport stream `S`
/// (plain TCP or TLS).
async fn serve_established<S>(
    ctx: Arc<ReceiveContext>,
    mut assoc: AsyncServerAssociation<S>,
    peer_s: String,
    mut shutdown: watch::Receiver<bool>,
    started: Instant,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
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
        tls = transport.tls,
        client_certificate = transport.client_subject.as_deref().unwrap_or(""),
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
    // C-STORE data sets are written to the spool while they arrive (staging.rs)
    let mut staging = Staging::default();
    let contexts: Vec<(u8, String, String)> = assoc
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| (pc.id, pc.abstract_syntax.clone(), pc.transfer_syntax.clone()))
        .collect();
    let contexts: Vec<AcceptedContext<'_>> = contexts
        .iter()
        .map(|(id, a, t)| AcceptedContext { id: *id, abstract_syntax: a, transfer_syntax: t })
        .collect();
    let outcome: &str = loop {
        let event = tokio::select! {
            biased;
            _ = shutdown_requested(&mut shutdown) => {
                abort(&mut assoc).await;
                break "aborted: node shutting down";
            }
            ev = read_message_async_observed(&mut assoc, &mut asm, |asm| staging.observe(&ctx.spool, &contexts, asm)) => ev,
        };
        match event {
            Ok(AssociationEvent::Message(m)) => {
                let staged = staging.take(m.presentation_context_id, &m.command, m.dataset.as_deref());
                if let Err(e) =
                    handle_message(&ctx, &mut assoc, m, staged, &calling, &peer_s, &mut stats, &mut series_seen).await
                {
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
        peer = %peer_s, calling_ae = %calling, called_ae = %called, tls = transport.tls,
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
async fn abort<S: AsyncRead + AsyncWrite + Unpin + Send>(assoc: &mut AsyncServerAssociation<S>) {
    let pdu = Pdu::AbortRQ { source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::ReasonNotSpecified) };
    let _ = assoc.send(&pdu).await;
}

/// Dispatch one DIMSE request and send its response. `staged`: the C-STORE data set as
/// already written to the spool while it arrived (staging.rs), if it was.
async fn handle_message<S: AsyncRead + AsyncWrite + Unpin + Send>(
    ctx: &Arc<ReceiveContext>,
    assoc: &mut AsyncServerAssociation<S>,
    message: DimseMessage,
    staged: Option<crate::spool::StagedInstance>,
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
                    handle_c_store(ctx.clone(), &pc.abstract_syntax, &pc.transfer_syntax, &command, message.dataset, staged, calling),
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
///
/// Works on any stream: the plain TCP connection, or the TLS stream after the handshake.
pub(crate) async fn reject_busy<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, peer: SocketAddr, timeout: Duration) {
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
