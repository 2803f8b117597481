//! send stage (being written).
