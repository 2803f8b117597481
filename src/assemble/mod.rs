//! assemble stage: decides when a series is complete ([`tracker`]) and
//! reassembles it into a [`Volume`](crate::volume::Volume) or a specific
//! [`AssembleError`] ([`volume_builder`]); [`stage`] is the run loop.
pub mod stage;
pub mod tracker;
pub mod volume_builder;

pub use volume_builder::{build_volume, plan_series, AssembleError, PlannedSlice, SeriesPlan};
