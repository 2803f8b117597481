//! `receive.calling_ae_hosts` end to end: the SCP accepts a host-bound calling AE title only
//! from its bound address (A-ASSOCIATE-RJ otherwise), other listed titles from anywhere.
//! Uses this crate's SCU (connections come from 127.0.0.1) and a real MR instance.

mod common;
use std::collections::BTreeMap;
use std::sync::Arc;

use common::{data_dir, files_in};
use myonode::config::{DestinationConfig, ReceiveConfig};
use myonode::receive::{serve, ReceiveContext};
use myonode::spool::Spool;

fn run_scp(hosts: BTreeMap<String, Vec<std::net::IpAddr>>, f: impl FnOnce(&DestinationConfig)) -> usize {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), false).unwrap());
    let (tx, rx) = crossbeam_channel::unbounded();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = ReceiveConfig {
        host: "127.0.0.1".into(),
        port,
        max_pdu_length: 131_072,
        allowed_calling_ae_titles: vec!["SCANNER".into(), "ROUTER".into()],
        max_associations: 4,
        association_timeout_seconds: 30.0,
        max_instance_bytes: 2 << 30,
        max_instances_per_series: 10_000,
        calling_ae_hosts: hosts,
        tls: Default::default(),
    };
    let ctx = Arc::new(ReceiveContext { ae_title: "MYONODE".into(), cfg, spool, tx, association_events: None, series_counts: Default::default() });
    let (stop, srx) = tokio::sync::watch::channel(false);
    let task = rt.spawn(serve(ctx, listener, srx));
    let dest = DestinationConfig {
        name: "scp".into(),
        ae_title: "MYONODE".into(),
        host: "127.0.0.1".into(),
        port,
        max_attempts: 1,
        retry_delay_seconds: 0.1,
        outputs: vec![myonode::config::OutputKind::SegBinary, myonode::config::OutputKind::Sr],
        tls: None,
    };
    f(&dest);
    stop.send(true).unwrap();
    rt.block_on(task).unwrap().unwrap();
    rx.try_iter().count()
}

#[test]
fn bound_calling_ae_only_from_its_host() {
    let file = files_in(&data_dir().join("series/mr-pelvis-adc"))[0].clone();
    let elsewhere: BTreeMap<_, _> = [("SCANNER".to_string(), vec!["127.0.0.2".parse().unwrap()])].into();
    let stored = run_scp(elsewhere, |d| {
        let e = myonode::send::c_store(d, "SCANNER", &file).unwrap_err();
        assert!(matches!(e, myonode::send::SendError::Association { .. }), "{e}");
        // an unbound, listed title still gets through from here
        assert_eq!(myonode::send::c_store(d, "ROUTER", &file).unwrap(), 0);
    });
    assert_eq!(stored, 1);
    let here: BTreeMap<_, _> = [("SCANNER".to_string(), vec!["127.0.0.1".parse().unwrap()])].into();
    let stored = run_scp(here, |d| assert_eq!(myonode::send::c_store(d, "SCANNER", &file).unwrap(), 0));
    assert_eq!(stored, 1);
}
