//! STUB
pub mod stage;
pub const BUILTIN_ANALYSES: &[&str] = &["body-mask"];
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct SegmentError;
pub trait Analysis: Send { fn name(&self) -> &str; }
pub fn create_analysis(_n: &str) -> Result<Box<dyn Analysis>, SegmentError> { Err(SegmentError) }
pub fn segment_job(_a: &mut dyn Analysis, _j: crate::pipeline::messages::StudyJob) -> Result<crate::pipeline::messages::Segmentation, SegmentError> { Err(SegmentError) }
