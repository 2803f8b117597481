//! Helpers shared by the integration tests: where the test data and the tools' Python are.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The shared test data folder: `MYONODE_DATA`, default `<crate>/../shared/data`.
/// Panics with a clear message when it is missing (tests must not pass without data).
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("MYONODE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    assert!(
        dir.join("series").is_dir(),
        "test data not found at {} (set MYONODE_DATA to the shared data folder)",
        dir.display()
    );
    dir
}

/// The regular files directly in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}
