//! dimse stage (being written).
