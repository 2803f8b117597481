//! The shipped configuration (conf/myonode.toml, embedded) has the calling AE allow-list on:
//! only DCMTK's default tool titles ECHOSCU/STORESCU, bound to loopback; and the
//! environment override `MYONODE__RECEIVE__ALLOWED_CALLING_AE_TITLES=A,B` parses as a list.
//! Runs `myonode check-config --print` (a fresh process: no environment leaks between tests).

use std::net::IpAddr;
use std::process::Command;

use myonode::receive::CallingAeAllowList;

/// The effective `[receive]` section printed by `myonode check-config --print` with `env`.
fn receive_section(env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_myonode"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(["check-config", "--print"]);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MYONODE__")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run myonode check-config");
    assert!(out.status.success(), "check-config failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    // the JSON document, then the line "configuration OK"
    let v: serde_json::Value = serde_json::Deserializer::from_str(&text)
        .into_iter()
        .next()
        .expect("check-config --print prints JSON")
        .expect("valid JSON");
    v["receive"].clone()
}

fn acl(receive: &serde_json::Value) -> CallingAeAllowList {
    let titles: Vec<String> = serde_json::from_value(receive["allowed_calling_ae_titles"].clone()).unwrap();
    let hosts: std::collections::BTreeMap<String, Vec<IpAddr>> =
        serde_json::from_value(receive["calling_ae_hosts"].clone()).unwrap();
    CallingAeAllowList::new(titles).with_hosts(&hosts)
}

#[test]
fn shipped_default_admits_only_local_dcmtk_tools() {
    let r = receive_section(&[]);
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let remote: IpAddr = "10.20.0.11".parse().unwrap();
    let on_local = acl(&r).with_peer(local);
    let on_remote = acl(&r).with_peer(remote);
    assert!(on_local.allows("ECHOSCU") && on_local.allows("STORESCU"));
    assert!(!on_local.allows("MR_SCANNER1"), "the default list must not admit an unlisted scanner");
    assert!(!on_remote.allows("STORESCU"), "default tool titles are bound to loopback");
    assert!(acl(&r).with_peer("::1".parse().unwrap()).allows("ECHOSCU"));
}

#[test]
fn env_override_is_a_comma_separated_list() {
    let r = receive_section(&[("MYONODE__RECEIVE__ALLOWED_CALLING_AE_TITLES", "MR_SCANNER1,CT_ROUTER")]);
    assert_eq!(r["allowed_calling_ae_titles"], serde_json::json!(["MR_SCANNER1", "CT_ROUTER"]));
    let remote = acl(&r).with_peer("10.20.0.11".parse().unwrap());
    assert!(remote.allows("MR_SCANNER1") && remote.allows("CT_ROUTER"));
    assert!(!remote.allows("STORESCU"), "not listed any more");
    let one = receive_section(&[("MYONODE__RECEIVE__ALLOWED_CALLING_AE_TITLES", "MR_SCANNER1")]);
    assert_eq!(one["allowed_calling_ae_titles"], serde_json::json!(["MR_SCANNER1"]));
}
