//! Integration tests of the C-STORE / C-ECHO SCU and the send stage (`myonode::send`)
//! against DCMTK `storescp`, with real data from `MYONODE_DATA` (default `<crate>/../shared/data`).

mod common;
#[allow(unused_imports)]
use common::{data_dir, files_in};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use dicom_dictionary_std::tags;
use myonode::config::{DestinationConfig, OutputKind};
use myonode::dimse::status;
use myonode::pipeline::messages::Outbound;
use myonode::send::{c_echo, c_store, run, SendError};
use myonode::spool::Spool;



/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn sop_instance_uid(p: &Path) -> String {
    let o = dicom_object::open_file(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    o.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

/// DCMTK storescp (AE `PACS`) on a free loopback port, writing into a temporary directory.
struct StoreScp {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// storescp's standard error (its log; `-v` for association events).
    log: tempfile::NamedTempFile,
}

impl StoreScp {
    fn start(extra: &[&str]) -> StoreScp {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let log = tempfile::NamedTempFile::new().unwrap();
            let port = free_port();
            let child = Command::new("storescp")
                .env("TCP_NODELAY", "1")
                .args(["-aet", "PACS", "-od"])
                .arg(dir.path())
                .args(extra)
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(log.reopen().unwrap())
                .spawn()
                .expect("DCMTK `storescp` not found in PATH (install dcmtk)");
            let mut scp = StoreScp { child, port, dir, log };
            // readiness: poll with C-ECHO until storescp answers (or has exited)
            for _ in 0..200 {
                if let Ok(Some(_)) = scp.child.try_wait() {
                    break;
                }
                if c_echo("PACS", "127.0.0.1", port, "MYONODE").is_ok() {
                    return scp;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            drop(scp); // kills it; try another port
        }
        panic!("storescp did not start");
    }

    fn dest(&self, name: &str) -> DestinationConfig {
        DestinationConfig {
            name: name.into(),
            ae_title: "PACS".into(),
            host: "127.0.0.1".into(),
            port: self.port,
            max_attempts: 3,
            retry_delay_seconds: 0.1,
            outputs: vec![OutputKind::SegBinary, OutputKind::Sr],
            tls: None,
        }
    }

    /// Associations storescp received (needs `-v`), C-ECHO readiness probes included.
    fn associations(&self) -> usize {
        std::fs::read_to_string(self.log.path()).unwrap().matches("Association Received").count()
    }

    /// SOPInstanceUIDs of the files storescp wrote.
    fn received(&self) -> Vec<String> {
        let mut v: Vec<String> = files_in(self.dir.path()).iter().map(|p| sop_instance_uid(p)).collect();
        v.sort();
        v
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn c_store_and_c_echo_to_storescp() {
    let data = data_dir();
    let scp = StoreScp::start(&[]);
    assert_eq!(c_echo("PACS", "127.0.0.1", scp.port, "MYONODE").unwrap(), status::SUCCESS);

    let mr = files_in(&data.join("series/mr-knee-dess-echo1"))[10].clone();
    assert_eq!(c_store(&scp.dest("pacs"), "MYONODE", &mr).unwrap(), status::SUCCESS);
    assert_eq!(scp.received(), vec![sop_instance_uid(&mr)]);
    // the received file carries the same pixel data
    let a = dicom_object::open_file(&mr).unwrap();
    let b = dicom_object::open_file(&files_in(scp.dir.path())[0]).unwrap();
    assert_eq!(
        a.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap(),
        b.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap()
    );

    // storescp accepts only uncompressed transfer syntaxes by default: a JPEG 2000 file
    // cannot be sent without transcoding, and the error says so.
    let ct = files_in(&data.join("series/ct-abdomen-j2k"))[0].clone();
    match c_store(&scp.dest("pacs"), "MYONODE", &ct) {
        Err(SendError::TransferSyntaxNotAccepted { transfer_syntax, accepted, .. }) => {
            assert_eq!(transfer_syntax, "1.2.840.10008.1.2.4.90");
            assert!(accepted.iter().all(|t| t.starts_with("1.2.840.10008.1.2.1") || t == "1.2.840.10008.1.2"), "{accepted:?}");
        }
        other => panic!("expected TransferSyntaxNotAccepted, got {other:?}"),
    }
    assert_eq!(scp.received().len(), 1);
}

#[test]
fn c_store_compressed_to_scp_accepting_all() {
    let data = data_dir();
    let scp = StoreScp::start(&["+xa"]);
    let ct = files_in(&data.join("series/ct-abdomen-j2k"))[5].clone();
    assert_eq!(c_store(&scp.dest("pacs"), "MYONODE", &ct).unwrap(), status::SUCCESS);
    assert_eq!(scp.received(), vec![sop_instance_uid(&ct)]);
    let got = dicom_object::open_file(&files_in(scp.dir.path())[0]).unwrap();
    assert_eq!(got.meta().transfer_syntax(), "1.2.840.10008.1.2.4.90");
}

#[test]
fn c_store_reencodes_explicit_to_implicit_when_only_implicit_is_accepted() {
    let data = data_dir();
    // implicit VR LE only, and a small PDU so the data set goes out in many fragments
    let scp = StoreScp::start(&["+xi", "-pdu", "4096"]);
    let mr = files_in(&data.join("series/mr-knee-dess-echo1"))[0].clone();
    assert_eq!(c_store(&scp.dest("pacs"), "MYONODE", &mr).unwrap(), status::SUCCESS);
    let got = dicom_object::open_file(&files_in(scp.dir.path())[0]).unwrap();
    assert_eq!(got.meta().transfer_syntax(), "1.2.840.10008.1.2");
    assert_eq!(scp.received(), vec![sop_instance_uid(&mr)]);
}

fn outbound(spool: &Spool, dest: &str, src: &Path) -> Outbound {
    let name = format!("{}.dcm", sop_instance_uid(src));
    let path = spool.put_outbox(dest, &name, &std::fs::read(src).unwrap()).unwrap();
    let obj = dicom_object::open_file(src).unwrap();
    Outbound {
        job_id: "job-1".into(),
        destination: dest.into(),
        path,
        sop_class_uid: obj.meta().media_storage_sop_class_uid().to_string(),
        sop_instance_uid: obj.meta().media_storage_sop_instance_uid().to_string(),
    }
}

#[test]
fn send_stage_delivers_and_moves_to_sent() {
    let data = data_dir();
    let scp = StoreScp::start(&[]);
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(spool_dir.path(), true).unwrap());
    let files = files_in(&data.join("series/mr-knee-dess-echo1"));
    // one object left in the outbox by a "previous run" ...
    let recovered = outbound(&spool, "pacs", &files[20]);
    let (tx, rx) = crossbeam_channel::unbounded();
    let stage = {
        let spool = spool.clone();
        let dest = scp.dest("pacs");
        std::thread::spawn(move || run(rx, vec![dest], "MYONODE".into(), spool, None))
    };
    // ... and one arriving on the channel while the stage runs
    let fresh = outbound(&spool, "pacs", &files[21]);
    tx.send(fresh.clone()).unwrap();
    drop(tx);
    let reports = stage.join().unwrap();
    assert!(!recovered.path.exists() && !fresh.path.exists());
    assert_eq!(reports.len(), 1);
    assert_eq!((reports[0].delivered, reports[0].failed, reports[0].retries), (2, 0, 0));
    assert!(spool.pending_outbox("pacs").is_empty());
    let sent: Vec<PathBuf> = files_in(&spool_dir.path().join("sent/pacs"));
    assert_eq!(sent.len(), 2);
    let mut expected = vec![sop_instance_uid(&files[20]), sop_instance_uid(&files[21])];
    expected.sort();
    assert_eq!(scp.received(), expected);
}

/// Objects ready at the same time (here the SEG and SR of a job left in the outbox, plus
/// more) go to DCMTK storescp over one association, one C-STORE each.
#[test]
fn send_stage_sends_ready_objects_over_one_association() {
    let data = data_dir();
    let scp = StoreScp::start(&["-v"]);
    let probes = scp.associations(); // the readiness C-ECHOs
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(spool_dir.path(), true).unwrap());
    let files = files_in(&data.join("series/mr-knee-dess-echo1"));
    let n = 5;
    let queued: Vec<_> = files[30..30 + n].iter().map(|f| outbound(&spool, "pacs", f)).collect();
    let (tx, rx) = crossbeam_channel::unbounded();
    drop(tx);
    let reports = run(rx, vec![scp.dest("pacs")], "MYONODE".into(), spool.clone(), None);
    assert_eq!((reports[0].delivered, reports[0].failed, reports[0].retries), (n as u64, 0, 0));
    assert!(queued.iter().all(|o| !o.path.exists()));
    let mut expected: Vec<String> = files[30..30 + n].iter().map(|f| sop_instance_uid(f)).collect();
    expected.sort();
    assert_eq!(scp.received(), expected);
    assert_eq!(scp.associations() - probes, 1, "all ready objects over one association");

    // objects handed over on the channel back to back (as encode hands over a job's SEG and
    // SR) are forwarded to the destination's queue together: one association too
    let scp = StoreScp::start(&["-v"]);
    let probes = scp.associations();
    let (tx, rx) = crossbeam_channel::unbounded();
    for f in &files[40..43] {
        tx.send(outbound(&spool, "pacs", f)).unwrap();
    }
    drop(tx);
    let reports = run(rx, vec![scp.dest("pacs")], "MYONODE".into(), spool.clone(), None);
    assert_eq!((reports[0].delivered, reports[0].failed), (3, 0));
    assert_eq!(scp.received().len(), 3);
    assert_eq!(scp.associations() - probes, 1, "a job's objects over one association");
}

#[test]
fn send_stage_retries_then_dead_letters() {
    let data = data_dir();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(spool_dir.path(), true).unwrap());
    let src = files_in(&data.join("series/mr-knee-dess-echo1"))[0].clone();
    let dead = DestinationConfig {
        name: "nowhere".into(),
        ae_title: "PACS".into(),
        host: "127.0.0.1".into(),
        port: free_port(),
        max_attempts: 2,
        retry_delay_seconds: 0.1,
        outputs: vec![OutputKind::SegBinary, OutputKind::Sr],
        tls: None,
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let o = outbound(&spool, "nowhere", &src);
    tx.send(o.clone()).unwrap();
    // an object for a destination that is not configured is dead-lettered at once
    let stray = outbound(&spool, "unknown", &src);
    tx.send(stray).unwrap();
    drop(tx);
    let reports = run(rx, vec![dead], "MYONODE".into(), spool.clone(), None);
    assert_eq!((reports[0].delivered, reports[0].failed, reports[0].retries), (0, 1, 1));
    assert!(!o.path.exists());
    let failed = spool_dir.path().join("failed/nowhere").join(o.path.file_name().unwrap());
    assert!(failed.is_file());
    let mut reason_path = failed.clone().into_os_string();
    reason_path.push(".reason.txt");
    let reason = std::fs::read_to_string(PathBuf::from(reason_path)).unwrap();
    assert!(reason.contains("after 2 attempt(s)"), "{reason}");
    assert!(reason.contains("association"), "{reason}");
    assert_eq!(files_in(&spool_dir.path().join("failed/unknown")).iter().filter(|p| !p.to_string_lossy().ends_with(".reason.txt")).count(), 1);
    assert!(!spool_dir.path().join("sent/nowhere").exists());
}
