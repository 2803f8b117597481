//! Loading the ONNX Runtime library: a missing or invalid library is an error,
//! never a panic, and a failed load can be retried with the right library.
//! Own test binary, because a process loads ONNX Runtime only once.
//!
//! Needs the library (env MYONODE_ORT_LIBRARY, default
//! `<crate>/.onnxruntime/lib/libonnxruntime.so.1.31.1`); FAILS if it is missing.

use std::path::{Path, PathBuf};

use myonode::segment::onnx::{runtime, OnnxError};

#[test]
fn missing_or_invalid_library_is_an_error_and_retry_works() {
    let e = runtime::environment(Path::new("/nonexistent/libonnxruntime.so.1.31.1")).err().expect("must fail");
    let msg = e.to_string();
    assert!(matches!(e, OnnxError::Library { .. }), "{msg}");
    assert!(msg.contains("/nonexistent/libonnxruntime.so.1.31.1") && msg.contains("not found"), "{msg}");

    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fake = d.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let e = runtime::environment(&fake).err().expect("must fail");
    assert!(matches!(e, OnnxError::Library { .. }), "{e}");
    assert!(e.to_string().contains(fake.to_str().unwrap()), "{e}");

    let real = std::env::var_os("MYONODE_ORT_LIBRARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".onnxruntime/lib/libonnxruntime.so.1.31.1"));
    assert!(real.is_file(), "ONNX Runtime library not found at {} (run scripts/fetch-onnxruntime.sh or set MYONODE_ORT_LIBRARY)", real.display());
    runtime::environment(&real).expect("the real library loads after failed attempts");
    runtime::environment(&real).expect("and again (same environment)");
    let e = runtime::environment(&fake).err().expect("a second, different library is refused").to_string();
    assert!(e.contains("already loaded"), "{e}");
}
