//! Pipeline wiring: the only place that connects the stages with bounded channels.
pub mod messages;
