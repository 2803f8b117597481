//! assemble stage: decides when a series is complete ([`tracker`]) and
//! reassembles it into a [`Volume`](crate::volume::Volume) or a specific
//! [`AssembleError`] ([`volume_builder`]) per stack ([`stacks`]); [`stage`] is the run loop.
pub mod dixon;
pub mod inspect;
pub mod stacks;
pub mod stage;
pub mod tracker;
pub mod volume_builder;

pub use stacks::{plan_stacks, read_series, split_stacks, SeriesStacks, Stack, StackKey, StackOutcome};
pub use volume_builder::{
    build_from_plan, build_volume, plan_images, plan_series, read_images, AssembleError, ImageFacts, PlannedSlice, SeriesPlan,
};
