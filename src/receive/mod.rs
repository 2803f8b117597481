//! Receive stage: the C-ECHO / C-STORE SCP (PS3.4 Annex A Verification, Annex B Storage).
//!
//! [`serve`] accepts TCP connections on a tokio listener and runs one task per
//! association ([`association`]): A-ASSOCIATE negotiation through `dicom-ul` with the
//! calling-AE allow-list ([`CallingAeAllowList`]) and the supported abstract/transfer
//! syntaxes, then DIMSE messages through [`crate::dimse`]. C-STORE requests are handled in
//! [`store`]: the data set is parsed with the negotiated transfer syntax, checked, written
//! to the spool (fsync + rename) off the async threads, and only then answered; each stored
//! instance is announced to `assemble` as an [`InstanceStored`] on the crossbeam channel.
//!
//! [`InstanceStored`]: crate::pipeline::messages::InstanceStored

pub mod association;
pub mod scan;
mod staging;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use dicom_dictionary_std::uids;
use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::{AccessControl, DefaultNegotiation, ServerAssociationOptions};
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// Everything an association task needs; shared by all of them (`Arc`).
pub struct ReceiveContext {
    /// Our AE title (`node.ae_title`).
    pub ae_title: String,
    /// `[receive]` configuration.
    pub cfg: crate::config::ReceiveConfig,
    /// The durable spool instances are written to.
    pub spool: Arc<crate::spool::Spool>,
    /// Channel to `assemble`; one [`InstanceStored`](crate::pipeline::messages::InstanceStored) per stored instance.
    pub tx: crossbeam_channel::Sender<crate::pipeline::messages::InstanceStored>,
    /// Channel to `assemble` for the end of associations that stored instances (series
    /// completion by association end); `None` = not reported.
    pub association_events: Option<crossbeam_channel::Sender<crate::pipeline::messages::AssociationEnded>>,
    /// Instance counts per series folder in `incoming/`, for `receive.max_instances_per_series`
    /// without listing the folder on every C-STORE (see [`store::SeriesCounts`]).
    pub series_counts: store::SeriesCounts,
}

/// Errors that stop [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The listener's local address could not be read (the socket is unusable).
    #[error("C-STORE SCP listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// Abstract syntaxes (SOP classes) accepted in presentation contexts (PS3.4 A, B.5):
/// Verification plus the MR, CT and Secondary Capture image storage SOP classes.
/// Other abstract syntaxes are rejected per presentation context
/// (result 3, abstract-syntax-not-supported, PS3.8 9.3.3.2).
pub const SUPPORTED_ABSTRACT_SYNTAXES: &[&str] = &[
    uids::VERIFICATION,
    uids::MR_IMAGE_STORAGE,
    uids::ENHANCED_MR_IMAGE_STORAGE,
    uids::LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE,
    uids::CT_IMAGE_STORAGE,
    uids::ENHANCED_CT_IMAGE_STORAGE,
    uids::LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
    uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_SINGLE_BIT_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_TRUE_COLOR_SECONDARY_CAPTURE_IMAGE_STORAGE,
];

/// Transfer syntaxes accepted: every transfer syntax of dicom-rs's registry whose data sets
/// can be parsed (native, deflated when built with `deflate`, and all encapsulated ones —
/// JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE, … — whose pixel data stays encapsulated
/// and is stored exactly as received). Sorted by UID for stable logs.
pub fn supported_transfer_syntaxes() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = TransferSyntaxRegistry
        .iter()
        .filter(|ts| !ts.is_unsupported())
        .map(|ts| ts.uid())
        .filter(|uid| TransferSyntaxRegistry.get(uid).is_some())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Access control by calling AE title (PS3.8 9.3.4): an association is accepted when the
/// list is empty or contains the calling AE title (compared without surrounding spaces);
/// otherwise A-ASSOCIATE-RJ permanent, service-user, "calling-AE-title-not-recognized".
/// The called AE title is not checked (any called AE reaches this node).
///
/// Host binding (`receive.calling_ae_hosts`): a calling AE title with bound addresses is
/// accepted only when the connection comes from one of them (the peer address is set per
/// connection with [`CallingAeAllowList::with_peer`]; unknown peer = not accepted).
#[derive(Debug, Clone, Default)]
pub struct CallingAeAllowList {
    allowed: Vec<String>,
    hosts: std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
    peer: Option<std::net::IpAddr>,
}

impl CallingAeAllowList {
    /// An allow-list of these AE titles; empty = accept any caller.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(titles: I) -> Self {
        CallingAeAllowList {
            allowed: titles.into_iter().map(|s| s.as_ref().trim().to_string()).collect(),
            ..Default::default()
        }
    }

    /// Add host bindings: AE title → addresses it may connect from.
    pub fn with_hosts(mut self, hosts: &std::collections::BTreeMap<String, Vec<std::net::IpAddr>>) -> Self {
        self.hosts = hosts.iter().map(|(k, v)| (k.trim().to_string(), v.clone())).collect();
        self
    }

    /// The list for one connection from `peer` (IPv4-mapped IPv6 addresses compare as IPv4).
    pub fn with_peer(mut self, peer: std::net::IpAddr) -> Self {
        self.peer = Some(peer.to_canonical());
        self
    }

    /// `true` if `calling_ae_title` may associate (allow-list and host binding).
    pub fn allows(&self, calling_ae_title: &str) -> bool {
        let ae = calling_ae_title.trim();
        let listed = self.allowed.is_empty() || self.allowed.iter().any(|a| a == ae);
        let from_bound_host = match self.hosts.get(ae) {
            None => true,
            Some(ips) => self.peer.is_some_and(|p| ips.iter().any(|ip| ip.to_canonical() == p)),
        };
        listed && from_bound_host
    }
}

impl AccessControl for CallingAeAllowList {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        _called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if self.allows(calling_ae_title) {
            Ok(())
        } else {
            tracing::warn!(calling_ae = calling_ae_title, called_ae = _called_ae_title,
                peer = %self.peer.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
                "calling AE title not in the allow-list or not from its bound host; association rejected");
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// The negotiation options of this SCP.
pub type ScpOptions = ServerAssociationOptions<'static, CallingAeAllowList, DefaultNegotiation>;

/// Build the association acceptor options from the context: our AE title, allow-list,
/// [`SUPPORTED_ABSTRACT_SYNTAXES`], [`supported_transfer_syntaxes`], strict PDU length
/// checking at `cfg.max_pdu_length`, and `cfg.association_timeout_seconds` as the read
/// (idle) and write timeout of every PDU.
pub fn scp_options(ctx: &ReceiveContext) -> ScpOptions {
    scp_options_for(ctx, None)
}

/// [`scp_options`] for a connection from `peer` (checked against `receive.calling_ae_hosts`).
pub fn scp_options_for(ctx: &ReceiveContext, peer: Option<std::net::IpAddr>) -> ScpOptions {
    let timeout = Duration::from_secs_f64(ctx.cfg.association_timeout_seconds.max(0.001));
    let mut acl = CallingAeAllowList::new(&ctx.cfg.allowed_calling_ae_titles).with_hosts(&ctx.cfg.calling_ae_hosts);
    if let Some(p) = peer {
        acl = acl.with_peer(p);
    }
    let mut o = ServerAssociationOptions::new()
        .ae_access_control(acl)
        .ae_title(ctx.ae_title.clone())
        .max_pdu_length(ctx.cfg.max_pdu_length)
        .strict(true)
        .promiscuous(false)
        .read_timeout(timeout)
        .write_timeout(timeout);
    for a in SUPPORTED_ABSTRACT_SYNTAXES {
        o = o.with_abstract_syntax(*a);
    }
    for t in supported_transfer_syntaxes() {
        o = o.with_transfer_syntax(t);
    }
    o
}

/// Bind the SCP's listening socket at `cfg.host:cfg.port` (pass it to [`serve`]).
///
/// # Errors
/// The I/O error of `bind` (address in use, permission denied for ports < 1024, …).
pub async fn bind(cfg: &crate::config::ReceiveConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind((cfg.host.as_str(), cfg.port)).await
}

/// Bind the DICOM TLS listening socket at `cfg.host:cfg.tls.port` (pass it to [`serve_all`]).
///
/// # Errors
/// The I/O error of `bind`.
pub async fn bind_tls(cfg: &crate::config::ReceiveConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind((cfg.host.as_str(), cfg.tls.port)).await
}

/// Accept associations on `listener` until `shutdown` becomes true (or its sender is dropped).
///
/// Each accepted connection gets TCP_NODELAY and its own task. At most
/// `cfg.max_associations` associations run at once; a further request is answered with
/// A-ASSOCIATE-RJ transient, service-provider (presentation), "local-limit-exceeded"
/// (PS3.8 9.3.4). On shutdown no new connection is accepted, running associations are
/// aborted (A-ABORT) at their next PDU wait — a C-STORE already being written to the spool
/// completes and is answered first — and `serve` returns once all tasks have ended.
///
/// # Errors
/// [`ReceiveError::Listener`] if the listener is unusable. Errors of single connections
/// and associations are logged, never returned.
pub async fn serve(
    ctx: Arc<ReceiveContext>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ReceiveError> {
    let slots = Arc::new(Semaphore::new(ctx.cfg.max_associations.max(1)));
    serve_listener(ctx, listener, None, slots, shutdown).await
}

/// Serve the plain listener and/or the DICOM TLS listener (`[receive.tls]`, PS3.15 Annex
/// B.1) until shutdown, like [`serve`]; `max_associations` counts the associations of both
/// together.
///
/// On the TLS listener every connection first completes a TLS handshake with the
/// `rustls::ServerConfig` (built by [`crate::tls::server_config`]; with a client CA, clients
/// without a valid certificate are refused in the handshake and logged with their address),
/// then runs exactly like a plain association — same allow-list, host binding, limits and
/// logging (`tls=true` and the client certificate's subject in "association established").
/// A busy rejection (A-ASSOCIATE-RJ) is sent inside TLS.
///
/// # Errors
/// [`ReceiveError::Listener`] if a listener is unusable (returned once both have stopped).
pub async fn serve_all(
    ctx: Arc<ReceiveContext>,
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ReceiveError> {
    let slots = Arc::new(Semaphore::new(ctx.cfg.max_associations.max(1)));
    let plain = async {
        match plain {
            Some(l) => serve_listener(ctx.clone(), l, None, slots.clone(), shutdown.clone()).await,
            None => Ok(()),
        }
    };
    let tls = async {
        match tls {
            Some((l, cfg)) => serve_listener(ctx.clone(), l, Some(cfg), slots.clone(), shutdown.clone()).await,
            None => Ok(()),
        }
    };
    let (a, b) = tokio::join!(plain, tls);
    a.and(b)
}

async fn serve_listener(
    ctx: Arc<ReceiveContext>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ReceiveError> {
    let local = listener.local_addr().map_err(ReceiveError::Listener)?;
    let mut tasks: JoinSet<()> = JoinSet::new();
    info!(
        address = %local,
        ae_title = %ctx.ae_title,
        max_associations = ctx.cfg.max_associations,
        max_pdu_length = ctx.cfg.max_pdu_length,
        allowed_calling_ae_titles = ?ctx.cfg.allowed_calling_ae_titles,
        tls = tls.is_some(),
        client_certificate_required = ctx.cfg.tls.client_ca.as_ref().is_some_and(|p| !p.as_os_str().is_empty()) && tls.is_some(),
        "C-STORE SCP listening"
    );
    loop {
        tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        warn!(%peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let ctx = ctx.clone();
                            // per connection: the allow-list knows the peer address (host binding, and the
                            // rejection log names the peer)
                            let mut options = scp_options_for(&ctx, Some(peer.ip()));
                            if let Some(t) = &tls {
                                options = options.tls_config(t.clone());
                            }
                            let options = Arc::new(options);
                            let shutdown = shutdown.clone();
                            let is_tls = tls.is_some();
                            tasks.spawn(async move {
                                let span = tracing::info_span!("association", peer = %peer, tls = is_tls);
                                tracing::Instrument::instrument(association::run_association(ctx, options, stream, peer, shutdown, is_tls), span).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            let timeout = Duration::from_secs_f64(ctx.cfg.association_timeout_seconds.max(0.001));
                            match &tls {
                                None => { tasks.spawn(association::reject_busy(stream, peer, timeout)); }
                                Some(t) => {
                                    // the rejection travels inside TLS: handshake first (bounded by the timeout)
                                    let acceptor = tokio_rustls::TlsAcceptor::from(t.clone());
                                    tasks.spawn(async move {
                                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                            Ok(Ok(s)) => association::reject_busy(s, peer, timeout).await,
                                            Ok(Err(e)) => warn!(%peer, tls = true, error = %e, "TLS handshake failed; connection refused"),
                                            Err(_) => warn!(%peer, tls = true, "TLS handshake timed out; connection closed"),
                                        }
                                    });
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    // e.g. EMFILE: keep serving, give the system a moment.
                    warn!(address = %local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(joined),
        }
    }
    info!(address = %local, running = tasks.len(), "C-STORE SCP shutting down");
    drop(listener);
    while let Some(joined) = tasks.join_next().await {
        log_join(joined);
    }
    info!(address = %local, "C-STORE SCP stopped");
    Ok(())
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        error!(error = %e, "association task failed");
    }
}

/// Resolves when `*shutdown` is true or the sender is gone.
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list() {
        let any = CallingAeAllowList::new(Vec::<String>::new());
        assert!(any.allows("WHOEVER"));
        let l = CallingAeAllowList::new(["MR1", "CT_ROUTER "]);
        assert!(l.allows("MR1"));
        assert!(l.allows("CT_ROUTER"));
        assert!(l.allows("MR1 "));
        assert!(!l.allows("MR2"));
        assert_eq!(
            l.check_access("MYONODE", "EVIL", "MYONODE", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
    }

    #[test]
    fn host_binding() {
        let hosts: std::collections::BTreeMap<String, Vec<std::net::IpAddr>> =
            [("MR1".to_string(), vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()])].into();
        let l = CallingAeAllowList::new(["MR1", "CT"]).with_hosts(&hosts);
        assert!(!l.allows("MR1"), "bound AE with unknown peer");
        assert!(l.clone().with_peer("10.0.0.5".parse().unwrap()).allows("MR1"));
        assert!(l.clone().with_peer("::ffff:10.0.0.5".parse().unwrap()).allows("MR1"), "IPv4-mapped");
        assert!(l.clone().with_peer("fd00::5".parse().unwrap()).allows("MR1"));
        assert!(!l.clone().with_peer("10.0.0.6".parse().unwrap()).allows("MR1"));
        assert!(l.clone().with_peer("10.9.9.9".parse().unwrap()).allows("CT"), "unbound AE from anywhere");
        assert!(!l.clone().with_peer("10.0.0.5".parse().unwrap()).allows("MR2"), "still an allow-list");
        // binding without an allow-list: others from anywhere, the bound AE only from its host
        let open = CallingAeAllowList::new(Vec::<String>::new()).with_hosts(&hosts).with_peer("127.0.0.1".parse().unwrap());
        assert!(open.allows("ANY") && !open.allows("MR1"));
    }

    #[test]
    fn transfer_syntaxes_include_encapsulated() {
        let ts = supported_transfer_syntaxes();
        for uid in [
            "1.2.840.10008.1.2",      // implicit VR LE
            "1.2.840.10008.1.2.1",    // explicit VR LE
            "1.2.840.10008.1.2.4.50", // JPEG baseline
            "1.2.840.10008.1.2.4.70", // JPEG lossless SV1
            "1.2.840.10008.1.2.4.80", // JPEG-LS lossless
            "1.2.840.10008.1.2.4.90", // JPEG 2000 lossless
            "1.2.840.10008.1.2.4.91", // JPEG 2000
            "1.2.840.10008.1.2.5",    // RLE lossless
            "1.2.840.10008.1.2.1.99", // deflated explicit VR LE
        ] {
            assert!(ts.contains(&uid), "{uid} missing from {ts:?}");
        }
    }
}
