//! STUB
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct AssembleError;
pub fn build_volume(_f: &[std::path::PathBuf], _c: &crate::config::AssembleConfig) -> Result<(crate::pipeline::messages::SeriesHeader, crate::volume::Volume), AssembleError> { Err(AssembleError) }
