//! myonode: a streaming DICOM node for musculoskeletal segmentation.
//!
//! Flow (see `shared/DESIGN.md` and [`pipeline`]):
//! `receive` (C-STORE SCP) → `assemble` (series completion, volume) → `segment`
//! (analysis) → `measure` → `encode` (DICOM-SEG) → `send` (C-STORE SCU).

pub mod assemble;
pub mod config;
pub mod dimse;
pub mod encode;
pub mod fuzzing;
pub mod http;
pub mod measure;
pub mod node;
pub mod pipeline;
pub mod receive;
pub mod segment;
pub mod send;
pub mod spool;
pub mod tls;
pub mod uid;
pub mod volume;
