//! assemble stage: decides when a series is complete ([`tracker`]) and
//! reassembles it into a [`Volume`](crate::volume::Volume) ([`volume_builder`]);
//! [`stage`] is the run loop.
pub mod stage;
pub mod tracker;
pub mod volume_builder;
