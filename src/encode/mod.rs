//! encode stage (being written).
