//! measure stage (being written).
