//! STUB (replaced by merge)
pub struct ReceiveContext { pub ae_title: String, pub cfg: crate::config::ReceiveConfig, pub spool: std::sync::Arc<crate::spool::Spool>, pub tx: crossbeam_channel::Sender<crate::pipeline::messages::InstanceStored> }
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct ReceiveError;
pub async fn serve(_c: std::sync::Arc<ReceiveContext>, _l: tokio::net::TcpListener, _s: tokio::sync::watch::Receiver<bool>) -> Result<(), ReceiveError> { Ok(()) }
