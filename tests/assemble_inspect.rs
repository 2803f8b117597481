//! `myonode inspect <dir> [--json]` on real and awkward folders (the built binary).

mod common;
use common::data_dir;
use std::process::Command;

fn inspect(dir: &std::path::Path, json: bool) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_myonode"));
    c.arg("inspect").arg(dir);
    if json {
        c.arg("--json");
    }
    c.env_remove("RUST_LOG").output().unwrap()
}

fn report(dir: &std::path::Path) -> serde_json::Value {
    let out = inspect(dir, true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn knee_series_is_one_sagittal_job() {
    let r = report(&data_dir().join("series/mr-knee-dess-echo1"));
    assert_eq!(r["files"], 80);
    let s = &r["series"][0];
    assert_eq!((s["instances"].as_u64(), s["images"].as_u64()), (Some(80), Some(80)));
    assert_eq!(s["transfer_syntaxes"][0], "1.2.840.10008.1.2.1");
    assert_eq!(s["expected_images"], 160, "GE announces both DESS echoes");
    assert!(s["dixon"].is_null());
    let st = &s["stacks"][0];
    assert_eq!(st["dimensions"], serde_json::json!([512, 512, 80]));
    let sp: Vec<f64> = st["spacing_mm"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!((sp[0] - 0.3125).abs() < 1e-9 && (sp[2] - 1.5).abs() < 1e-3, "{sp:?}");
    assert!(st["orientation"].as_str().unwrap().starts_with("sagittal"));
    assert!(st["action"].as_str().unwrap().starts_with("job "), "{}", st["action"]);
    // the table names the same facts
    let table = String::from_utf8(inspect(&data_dir().join("series/mr-knee-dess-echo1"), false).stdout).unwrap();
    assert!(table.contains("512x512x80") && table.contains("single stack") && table.contains("=> 1 job(s)"), "{table}");
}

#[test]
fn awkward_folders_show_stacks_problems_and_refusals() {
    let r = report(&data_dir().join("awkward/sliceorientation"));
    let s = &r["series"][0];
    assert_eq!(s["stacks"].as_array().unwrap().len(), 2);
    for st in s["stacks"].as_array().unwrap() {
        assert!(st["distinguished_by"].as_array().unwrap().iter().any(|d| d == "orientation"));
        assert!(st["action"].as_str().unwrap().starts_with("refuse: too few slices"), "{}", st["action"]);
    }
    assert!(s["action"].as_str().unwrap().starts_with("quarantine"));

    let r = report(&data_dir().join("awkward/enhanced-single"));
    assert_eq!(r["unusable_files"].as_array().unwrap().len(), 2, "multi-frame files without functional groups");
    let s = &r["series"][0];
    assert_eq!((s["instances"].as_u64(), s["images"].as_u64()), (Some(1), Some(2)), "one Enhanced CT object, two frames");

    let r = report(&data_dir().join("awkward/missing-uids"));
    assert_eq!(r["series"].as_array().unwrap().len(), 0);
    assert_eq!(r["unusable_files"].as_array().unwrap().len(), 20);

    let r = report(&data_dir().join("awkward/gantrytilting"));
    let action = r["series"][0]["stacks"][0]["action"].as_str().unwrap().to_string();
    assert!(action.contains("gantry tilt of 14."), "{action}");

    let out = inspect(&data_dir().join("no/such/folder"), true);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/folder"));
}
