//! assemble stage (being written).
