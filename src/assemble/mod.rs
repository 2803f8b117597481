//! assemble stage: series completion (tracker, written separately) and volume reassembly.
//!
//! [`volume_builder`] turns the files of one complete series into a
//! [`Volume`](crate::volume::Volume) or a specific [`AssembleError`].

pub mod volume_builder;

pub use volume_builder::{build_volume, plan_series, AssembleError, PlannedSlice, SeriesPlan};
