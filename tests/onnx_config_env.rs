//! Environment overrides of the `[segment]` ONNX keys (own test binary: it sets
//! process environment variables).

use std::path::PathBuf;

use myonode::config::Config;

#[test]
fn onnx_keys_can_be_overridden_from_the_environment() {
    std::env::set_var("MYONODE__SEGMENT__ONNXRUNTIME_LIBRARY", "/opt/ort/libonnxruntime.so.1.31.1");
    std::env::set_var("MYONODE__SEGMENT__EXECUTION_PROVIDERS", "cuda,cpu");
    std::env::set_var("MYONODE__SEGMENT__INTRA_OP_THREADS", "3");
    let c = Config::load(None).unwrap();
    assert_eq!(c.segment.onnxruntime_library, PathBuf::from("/opt/ort/libonnxruntime.so.1.31.1"));
    assert_eq!(c.segment.execution_providers, vec!["cuda".to_string(), "cpu".to_string()]);
    assert_eq!(c.segment.intra_op_threads, 3);
}
