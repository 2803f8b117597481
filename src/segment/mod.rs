//! segment stage (being written).
/// Names of the built-in analyses selectable with `segment.analysis`.
pub const BUILTIN_ANALYSES: &[&str] = &["body-mask"];
