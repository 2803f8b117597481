//! STUB
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct SendError;
pub fn c_store(_d: &crate::config::DestinationConfig, _c: &str, _f: &std::path::Path) -> Result<u16, SendError> { Ok(0) }
pub fn c_echo(_a: &str, _h: &str, _p: u16, _c: &str) -> Result<u16, SendError> { Ok(0) }
pub fn run(rx: crossbeam_channel::Receiver<crate::pipeline::messages::Outbound>, _d: Vec<crate::config::DestinationConfig>, _c: String, _s: std::sync::Arc<crate::spool::Spool>) { for _ in rx {} }
