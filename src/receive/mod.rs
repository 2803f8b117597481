//! receive stage (being written).
