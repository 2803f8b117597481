//! Integration tests of the C-ECHO / C-STORE SCP (`myonode::receive::serve`) against DCMTK
//! `echoscu` / `storescu` and against this crate's own SCU, with real data from
//! `MYONODE_DATA` (default `<crate>/../shared/data`).

mod common;
#[allow(unused_imports)]
use common::{data_dir, files_in};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::DefaultDicomObject;
use myonode::config::{DestinationConfig, OutputKind, ReceiveConfig};
use myonode::dimse::status;
use myonode::pipeline::messages::InstanceStored;
use myonode::receive::{serve, ReceiveContext};
use myonode::spool::Spool;



fn require_tool(name: &str) {
    let ok = Command::new(name).arg("--version").output().is_ok();
    assert!(ok, "DCMTK `{name}` not found in PATH (install dcmtk)");
}

/// A running SCP on 127.0.0.1:<ephemeral port> with a temporary spool.
struct Scp {
    port: u16,
    spool_dir: tempfile::TempDir,
    spool: Arc<Spool>,
    rx: crossbeam_channel::Receiver<InstanceStored>,
    events: crossbeam_channel::Receiver<myonode::pipeline::messages::AssociationEnded>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), myonode::receive::ReceiveError>>>,
    rt: tokio::runtime::Runtime,
}

impl Scp {
    fn start(allowed: &[&str]) -> Scp {
        Scp::start_with(allowed, 4, 30.0)
    }

    fn start_with(allowed: &[&str], max_associations: usize, association_timeout_seconds: f64) -> Scp {
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("myonode=debug").try_init();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let spool_dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(spool_dir.path(), true).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        let (etx, events) = crossbeam_channel::unbounded();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = ReceiveConfig {
            host: "127.0.0.1".into(),
            port,
            max_pdu_length: 131_072,
            allowed_calling_ae_titles: allowed.iter().map(|s| s.to_string()).collect(),
            max_associations,
            association_timeout_seconds,
            max_instance_bytes: 2 << 30,
            max_instances_per_series: 10_000,
            calling_ae_hosts: Default::default(),
            tls: Default::default(),
        };
        let ctx = Arc::new(ReceiveContext { ae_title: "MYONODE".into(), cfg, spool: spool.clone(), tx, association_events: Some(etx), series_counts: Default::default() });
        let (shutdown, srx) = tokio::sync::watch::channel(false);
        let task = rt.spawn(serve(ctx, listener, srx));
        Scp { port, spool_dir, spool, rx, events, shutdown, task: Some(task), rt }
    }

    fn dest(&self) -> DestinationConfig {
        DestinationConfig {
            name: "myonode".into(),
            ae_title: "MYONODE".into(),
            host: "127.0.0.1".into(),
            port: self.port,
            max_attempts: 1,
            retry_delay_seconds: 0.1,
            outputs: vec![OutputKind::SegBinary, OutputKind::Sr],
            tls: None,
        }
    }

    fn drain(&self) -> Vec<InstanceStored> {
        self.rx.try_iter().collect()
    }

    fn stored_files(&self) -> Vec<PathBuf> {
        self.spool.incoming_files()
    }

    /// Stop the server and wait for it (checks the graceful shutdown path).
    fn stop(mut self) {
        self.shutdown.send(true).unwrap();
        let task = self.task.take().unwrap();
        self.rt.block_on(task).unwrap().unwrap();
    }
}

fn storescu(port: u16, calling: &str, extra: &[&str], dir: &Path) -> std::process::Output {
    require_tool("storescu");
    Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args(["-aet", calling, "-aec", "MYONODE", "-nh", "+sd"])
        .args(extra)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .arg(dir)
        .output()
        .expect("run storescu")
}

fn open(p: &Path) -> DefaultDicomObject {
    dicom_object::open_file(p).unwrap_or_else(|e| panic!("cannot open {}: {e}", p.display()))
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

/// Pixel Data as comparable bytes: native value bytes, or each encapsulated fragment with its length.
fn pixel_bytes(obj: &DefaultDicomObject) -> Vec<u8> {
    let e: &InMemElement = obj.element(tags::PIXEL_DATA).unwrap();
    match e.value() {
        dicom_core::DicomValue::Primitive(p) => p.to_bytes().to_vec(),
        dicom_core::DicomValue::PixelSequence(seq) => {
            let mut out = Vec::new();
            for f in seq.fragments() {
                out.extend_from_slice(&(f.len() as u32).to_le_bytes());
                out.extend_from_slice(f);
            }
            out
        }
        dicom_core::DicomValue::Sequence(_) => panic!("PixelData is a sequence"),
    }
}

/// Every source file is in the spool with the same SOPInstanceUID, transfer syntax and pixel data;
/// returns SOPInstanceUID → spool path.
fn assert_spool_matches(scp: &Scp, sources: &[PathBuf]) -> HashMap<String, PathBuf> {
    let by_uid: HashMap<String, PathBuf> = scp
        .stored_files()
        .into_iter()
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    for src in sources {
        let a = open(src);
        let uid = text(&a, tags::SOP_INSTANCE_UID);
        let stored = by_uid.get(&uid).unwrap_or_else(|| panic!("{uid} ({}) not in the spool", src.display()));
        let b = open(stored);
        assert_eq!(text(&b, tags::SOP_INSTANCE_UID), uid);
        assert_eq!(b.meta().media_storage_sop_instance_uid(), uid);
        assert_eq!(b.meta().transfer_syntax(), a.meta().transfer_syntax(), "{uid}");
        assert_eq!(text(&b, tags::SERIES_INSTANCE_UID), text(&a, tags::SERIES_INSTANCE_UID));
        assert!(pixel_bytes(&a) == pixel_bytes(&b), "pixel data differs for {uid}");
    }
    by_uid
}

#[test]
fn echo_and_store_series_from_dcmtk_once_each() {
    let data = data_dir();
    let scp = Scp::start(&[]);
    require_tool("echoscu");
    let echo = Command::new("echoscu")
        .env("TCP_NODELAY", "1")
        .args(["-aet", "SCANNER", "-aec", "MYONODE", "127.0.0.1"])
        .arg(scp.port.to_string())
        .output()
        .unwrap();
    assert!(echo.status.success(), "echoscu failed: {}", String::from_utf8_lossy(&echo.stderr));

    // JPEG 2000 lossless CT: propose JPEG 2000 lossless (the files' own transfer syntax).
    let ct_dir = data.join("series/ct-abdomen-j2k");
    let ct = files_in(&ct_dir);
    assert_eq!(ct.len(), 20);
    let out = storescu(scp.port, "SCANNER", &["-xv"], &ct_dir);
    assert!(out.status.success(), "storescu CT: {}", String::from_utf8_lossy(&out.stderr));
    let msgs = scp.drain();
    assert_eq!(msgs.len(), 20, "one InstanceStored per CT instance");
    assert!(msgs.iter().all(|m| !m.duplicate && m.calling_ae_title == "SCANNER" && m.path.is_file()));
    assert_spool_matches(&scp, &ct);
    let ct_stored = open(&msgs[0].path);
    // The end of the storing association is reported once, naming the series it delivered
    // (the C-ECHO-only association before it stored nothing and reports nothing).
    let ended = scp.events.recv_timeout(std::time::Duration::from_secs(30)).expect("association end reported");
    assert_eq!(ended.calling_ae_title, "SCANNER");
    assert_eq!(ended.series_instance_uids, vec![msgs[0].series_instance_uid.clone()]);
    assert!(scp.events.try_recv().is_err(), "one event per association");
    assert_eq!(ct_stored.meta().transfer_syntax(), "1.2.840.10008.1.2.4.90");

    // Explicit VR LE MR, 80 slices.
    let mr_dir = data.join("series/mr-knee-dess-echo1");
    let mr = files_in(&mr_dir);
    assert_eq!(mr.len(), 80);
    let out = storescu(scp.port, "SCANNER", &[], &mr_dir);
    assert!(out.status.success(), "storescu MR: {}", String::from_utf8_lossy(&out.stderr));
    let msgs = scp.drain();
    assert_eq!(msgs.len(), 80);
    assert!(msgs.iter().all(|m| !m.duplicate));
    let mr_series = text(&open(&mr[0]), tags::SERIES_INSTANCE_UID);
    assert!(msgs.iter().all(|m| m.series_instance_uid == mr_series && m.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4"));
    assert_spool_matches(&scp, &mr);
    assert_eq!(scp.stored_files().len(), 100);

    // The same CT series again: success, flagged duplicates, nothing stored twice.
    let before: Vec<(PathBuf, std::time::SystemTime)> =
        scp.stored_files().into_iter().map(|p| (p.clone(), p.metadata().unwrap().modified().unwrap())).collect();
    // (this time in 4 KiB PDUs, so every data set arrives in many fragments)
    let out = storescu(scp.port, "SCANNER", &["-xv", "--max-send-pdu", "4096"], &ct_dir);
    assert!(out.status.success(), "storescu CT again: {}", String::from_utf8_lossy(&out.stderr));
    let msgs = scp.drain();
    assert_eq!(msgs.len(), 20);
    assert!(msgs.iter().all(|m| m.duplicate), "re-sent instances must be flagged duplicate");
    let after: Vec<(PathBuf, std::time::SystemTime)> =
        scp.stored_files().into_iter().map(|p| (p.clone(), p.metadata().unwrap().modified().unwrap())).collect();
    assert_eq!(before, after, "duplicates must not be rewritten");
    assert_eq!(std::fs::read_dir(scp.spool_dir.path().join("tmp")).unwrap().count(), 0);
    scp.stop();
}

#[test]
fn calling_ae_not_in_allow_list_is_rejected() {
    let data = data_dir();
    let scp = Scp::start(&["SCANNER"]);
    let mr_dir = data.join("series/mr-knee-dess-echo1");
    let out = storescu(scp.port, "INTRUDER", &[], &mr_dir);
    assert!(!out.status.success(), "storescu from an unlisted AE must fail");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase() + &String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(err.contains("reject"), "expected an association rejection, got: {err}");
    assert!(scp.drain().is_empty());
    assert!(scp.stored_files().is_empty());
    // our own SCU sees the rejection as an association error
    let file = &files_in(&mr_dir)[0];
    let e = myonode::send::c_store(&scp.dest(), "INTRUDER", file).unwrap_err();
    assert!(matches!(e, myonode::send::SendError::Association { .. }), "{e}");
    // a listed caller gets through
    assert_eq!(myonode::send::c_store(&scp.dest(), "SCANNER", file).unwrap(), status::SUCCESS);
    assert_eq!(scp.drain().len(), 1);
    scp.stop();
}

#[test]
fn truncated_dataset_is_refused_and_next_store_succeeds() {
    let data = data_dir();
    let scp = Scp::start(&[]);
    let src = files_in(&data.join("series/mr-knee-dess-echo1"))[3].clone();
    let bytes = std::fs::read(&src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let truncated = tmp.path().join("truncated.dcm");
    // cut in the middle of Pixel Data (512x512x2 bytes at the end)
    std::fs::write(&truncated, &bytes[..bytes.len() - 100_001]).unwrap();
    let st = myonode::send::c_store(&scp.dest(), "SCANNER", &truncated).unwrap();
    assert_eq!(st & 0xF000, 0xC000, "expected a Cxxx failure, got {st:04X}");
    assert!(scp.stored_files().is_empty(), "nothing may be stored");
    assert!(scp.drain().is_empty());
    // a following valid store on a new association succeeds
    assert_eq!(myonode::send::c_store(&scp.dest(), "SCANNER", &src).unwrap(), status::SUCCESS);
    assert_eq!(scp.stored_files().len(), 1);
    assert_eq!(scp.drain().len(), 1);
    scp.stop();
}

#[test]
fn missing_uids_are_refused() {
    let data = data_dir();
    let scp = Scp::start(&[]);
    let files = files_in(&data.join("awkward/missing-uids"));
    assert!(!files.is_empty());
    for f in &files {
        let st = myonode::send::c_store(&scp.dest(), "SCANNER", f).unwrap();
        assert_eq!(st, status::ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "{}", f.display());
    }
    assert!(scp.stored_files().is_empty());
    assert!(scp.drain().is_empty());
    // storescu takes the SOP class from the data set, finds it empty and cannot even propose
    // a presentation context; nothing may arrive that way either.
    let _ = storescu(scp.port, "SCANNER", &["-xv"], &data.join("awkward/missing-uids"));
    assert!(scp.stored_files().is_empty());
    assert!(scp.drain().is_empty());
    scp.stop();
}

#[test]
fn spool_write_failure_is_out_of_resources() {
    let data = data_dir();
    let scp = Scp::start(&[]);
    let src = files_in(&data.join("series/mr-knee-dess-echo1"))[0].clone();
    let study = text(&open(&src), tags::STUDY_INSTANCE_UID);
    // a regular file where the study directory should be: create_dir_all fails
    std::fs::write(scp.spool_dir.path().join("incoming").join(&study), b"not a directory").unwrap();
    let st = myonode::send::c_store(&scp.dest(), "SCANNER", &src).unwrap();
    assert_eq!(st, status::REFUSED_OUT_OF_RESOURCES);
    assert!(scp.drain().is_empty());
    assert_eq!(std::fs::read_dir(scp.spool_dir.path().join("tmp")).unwrap().count(), 0);
    scp.stop();
}

#[test]
fn associations_beyond_the_limit_are_rejected_transiently() {
    let scp = Scp::start_with(&[], 1, 30.0);
    // hold the only association slot open
    let held = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("HOLDER")
        .called_ae_title("MYONODE")
        .with_abstract_syntax("1.2.840.10008.1.1")
        .establish(("127.0.0.1", scp.port))
        .expect("first association");
    match myonode::send::c_echo("MYONODE", "127.0.0.1", scp.port, "SECOND") {
        Err(myonode::send::SendError::Association { source, .. }) => match *source {
            dicom_ul::association::Error::Rejected { association_rj, .. } => {
                assert_eq!(association_rj.result, dicom_ul::pdu::AssociationRJResult::Transient);
                assert_eq!(
                    association_rj.source,
                    dicom_ul::pdu::AssociationRJSource::ServiceProviderPresentation(
                        dicom_ul::pdu::AssociationRJServiceProviderPresentationReason::LocalLimitExceeded
                    )
                );
            }
            other => panic!("expected A-ASSOCIATE-RJ, got {other}"),
        },
        other => panic!("expected a rejected association, got {other:?}"),
    }
    held.release().expect("release");
    // the slot frees once the first association's task has ended
    let mut echo_status = None;
    for _ in 0..400 {
        if let Ok(s) = myonode::send::c_echo("MYONODE", "127.0.0.1", scp.port, "SECOND") {
            echo_status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(echo_status, Some(status::SUCCESS));
    scp.stop();
}

#[test]
fn deflated_transfer_syntax_is_accepted_and_stored_as_received() {
    let data = data_dir();
    let scp = Scp::start(&[]);
    let files: Vec<PathBuf> = files_in(&data.join("series/mr-knee-dess-echo1")).into_iter().take(3).collect();
    require_tool("storescu");
    let out = Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args(["-aet", "SCANNER", "-aec", "MYONODE", "-xd", "127.0.0.1"])
        .arg(scp.port.to_string())
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "storescu -xd: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(scp.drain().len(), 3);
    let stored = scp.stored_files();
    assert_eq!(stored.len(), 3);
    for p in &stored {
        let o = open(p);
        assert_eq!(o.meta().transfer_syntax(), "1.2.840.10008.1.2.1.99", "stored in the negotiated (deflated) transfer syntax");
    }
    for src in &files {
        let a = open(src);
        let uid = text(&a, tags::SOP_INSTANCE_UID);
        let b = open(stored.iter().find(|p| p.file_stem().unwrap().to_string_lossy() == uid).unwrap());
        assert!(pixel_bytes(&a) == pixel_bytes(&b), "pixel data differs for {uid}");
    }
    scp.stop();
}

/// A client association from `SCANNER` proposing `sop_class` in `transfer_syntax`, with 16 KiB
/// PDUs (so a data set arrives in many fragments).
fn store_association(port: u16, sop_class: &str, transfer_syntax: &str) -> dicom_ul::ClientAssociation<std::net::TcpStream> {
    dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("SCANNER")
        .called_ae_title("MYONODE")
        .with_presentation_context(sop_class, vec![transfer_syntax])
        .max_pdu_length(16_384)
        .establish(("127.0.0.1", port))
        .unwrap()
}

#[test]
fn association_continues_after_refused_store_and_unknown_operation() {
    use myonode::dimse::command::{command_field, priority, NO_DATA_SET};
    use myonode::dimse::{read_message, send_message, AssociationEvent, CommandSet, MessageAssembler};
    let data = data_dir();
    let scp = Scp::start(&[]);
    let src = files_in(&data.join("series/mr-knee-dess-echo1"))[7].clone();
    let part = myonode::send::scu::read_part10(&src).unwrap();
    let mr = "1.2.840.10008.5.1.4.1.1.4";
    let sop = part.meta.media_storage_sop_instance_uid().to_string();
    let mut assoc = store_association(scp.port, mr, part.meta.transfer_syntax());
    let pc = assoc.presentation_contexts()[0].id;
    let mut asm = MessageAssembler::new();
    let mut roundtrip = |assoc: &mut dicom_ul::ClientAssociation<std::net::TcpStream>, cmd: &CommandSet, ds: Option<&[u8]>| {
        send_message(assoc, pc, cmd, ds).unwrap();
        match read_message(assoc, &mut asm).unwrap() {
            AssociationEvent::Message(m) => m.command,
            other => panic!("expected a response, got {other:?}"),
        }
    };
    // 1. truncated data set: Cxxx with a comment
    let rsp = roundtrip(&mut assoc, &CommandSet::c_store_rq(1, mr, &sop, priority::MEDIUM), Some(&part.dataset[..part.dataset.len() - 1001]));
    assert_eq!(rsp.command_field, command_field::C_STORE_RSP);
    assert_eq!(rsp.message_id_being_responded_to, Some(1));
    assert_eq!(rsp.status.unwrap() & 0xF000, 0xC000);
    assert!(rsp.error_comment.unwrap().contains("cannot be parsed"));
    // 2. command SOP Instance UID differs from the data set's: refused
    let rsp = roundtrip(&mut assoc, &CommandSet::c_store_rq(2, mr, "1.2.3.4", priority::MEDIUM), Some(&part.dataset));
    assert_eq!(rsp.status, Some(status::ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS));
    // 3. an operation this node does not provide: 0211
    let find = CommandSet {
        command_field: command_field::C_FIND_RQ,
        affected_sop_class_uid: Some(mr.into()),
        message_id: Some(3),
        priority: Some(priority::MEDIUM),
        command_data_set_type: NO_DATA_SET,
        ..Default::default()
    };
    let rsp = roundtrip(&mut assoc, &find, None);
    assert_eq!(rsp.command_field, command_field::C_FIND_RQ | command_field::RESPONSE_BIT);
    assert_eq!(rsp.status, Some(status::UNRECOGNIZED_OPERATION));
    // 4. the valid instance, same association, in 16 KiB PDUs
    let rsp = roundtrip(&mut assoc, &CommandSet::c_store_rq(4, mr, &sop, priority::MEDIUM), Some(&part.dataset));
    assert_eq!(rsp.status, Some(status::SUCCESS));
    assert_eq!(rsp.message_id_being_responded_to, Some(4));
    assoc.release().unwrap();
    let stored = scp.stored_files();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].file_stem().unwrap().to_string_lossy(), sop);
    // the spooled file holds the data set bytes exactly as sent
    // (written while the 16 KiB fragments arrived: receive::staging) with the File Meta
    // Information of the checked instance
    let spooled = std::fs::read(&stored[0]).unwrap();
    let header = myonode::spool::part10_header(mr, &sop, &part.meta.transfer_syntax().trim_end_matches('\0'));
    assert!(spooled == [&header[..], &part.dataset[..]].concat(), "spooled file is not header + data set");
    let msgs = scp.drain();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].sop_instance_uid, sop);
    scp.stop();
}

/// Open an association as `calling` and wait for whatever the SCP does next.
fn open_and_wait(port: u16, calling: &str) -> (dicom_ul::ClientAssociation<std::net::TcpStream>, myonode::dimse::MessageAssembler) {
    let assoc = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title(calling.to_string())
        .called_ae_title("MYONODE")
        .with_abstract_syntax("1.2.840.10008.1.1")
        .read_timeout(std::time::Duration::from_secs(60)) // a hanging SCP fails the test instead of blocking it
        .establish(("127.0.0.1", port))
        .unwrap();
    (assoc, myonode::dimse::MessageAssembler::new())
}

#[test]
fn idle_association_is_aborted_and_shutdown_aborts_open_ones() {
    use myonode::dimse::{read_message, AssociationEvent};
    // idle timeout: the SCP aborts an association that sends nothing
    let short = Scp::start_with(&[], 4, 0.3);
    let (mut idle, mut asm) = open_and_wait(short.port, "IDLE");
    match read_message(&mut idle, &mut asm) {
        Ok(AssociationEvent::Aborted(_)) => {}
        other => panic!("expected A-ABORT after the idle timeout, got {other:?}"),
    }
    short.stop();
    let scp = Scp::start(&[]);
    // shutdown: an open association is aborted and serve() returns
    let (mut open, mut asm) = open_and_wait(scp.port, "OPEN");
    let waiter = std::thread::spawn(move || read_message(&mut open, &mut asm).map(|e| matches!(e, AssociationEvent::Aborted(_))));
    scp.stop();
    assert!(waiter.join().unwrap().unwrap(), "expected A-ABORT on shutdown");
}

/// A connection that never completes the association negotiation (here: sends nothing) does
/// not hold up a shutdown until `receive.association_timeout_seconds` (60 s here): the server
/// closes it and stops at once.
#[test]
fn shutdown_closes_connections_still_negotiating() {
    let scp = Scp::start_with(&[], 4, 60.0);
    let silent = std::net::TcpStream::connect(("127.0.0.1", scp.port)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300)); // accepted, waiting for A-ASSOCIATE-RQ
    let t0 = std::time::Instant::now();
    scp.stop();
    let took = t0.elapsed();
    assert!(took < std::time::Duration::from_secs(20), "shutdown waited {took:?} for a negotiating connection");
    // the server side closed it: reading gives end of file (or a reset)
    silent.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut &silent, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "connection still open after shutdown");
}

/// `send::c_store_many` sends a batch over one association: every object with its own result
/// in order (an unreadable file and a SOP class this SCP does not accept fail alone), one
/// association end reported by the SCP naming both series, every stored file byte-identical
/// in its data set.
#[test]
fn c_store_many_sends_a_batch_over_one_association() {
    use myonode::send::{c_store_many, SendError};
    let data = data_dir();
    let scp = Scp::start(&[]);
    let mr = files_in(&data.join("series/mr-knee-dess-echo1"));
    let ct = files_in(&data.join("series/ct-abdomen-j2k"));
    let tmp = tempfile::tempdir().unwrap();
    // a Part-10 file that claims the Segmentation Storage SOP class (not accepted by this SCP)
    let seg_class = "1.2.840.10008.5.1.4.1.1.66.4";
    let part = myonode::send::scu::read_part10(&mr[5]).unwrap();
    let fake_seg = tmp.path().join("seg.dcm");
    let header = myonode::spool::part10_header(seg_class, "1.2.826.0.1.3680043.10.1.99", part.meta.transfer_syntax().trim_end_matches('\0'));
    std::fs::write(&fake_seg, [&header[..], &part.dataset[..]].concat()).unwrap();
    let missing = tmp.path().join("gone.dcm");
    let batch: Vec<&Path> = vec![&mr[0], &mr[1], &fake_seg, &missing, &ct[0], &mr[2]];
    let results = c_store_many(&scp.dest(), "SCANNER", &batch).unwrap();
    assert_eq!(results.len(), batch.len());
    for i in [0, 1, 4, 5] {
        assert_eq!(results[i].as_ref().ok(), Some(&status::SUCCESS), "object {i}: {:?}", results[i]);
    }
    assert!(matches!(&results[2], Err(SendError::SopClassNotAccepted { sop_class_uid, .. }) if sop_class_uid == seg_class), "{:?}", results[2]);
    assert!(matches!(&results[3], Err(SendError::ReadFile { .. })), "{:?}", results[3]);
    let ended = scp.events.recv_timeout(std::time::Duration::from_secs(30)).expect("association end reported");
    let mut series = vec![text(&open(&mr[0]), tags::SERIES_INSTANCE_UID), text(&open(&ct[0]), tags::SERIES_INSTANCE_UID)];
    series.sort();
    assert_eq!(ended.series_instance_uids, series, "one association carried both series");
    assert!(scp.events.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "exactly one association");
    assert_eq!(scp.drain().len(), 4);
    assert_spool_matches(&scp, &[mr[0].clone(), mr[1].clone(), ct[0].clone(), mr[2].clone()]);
    // nothing listening: the association error is the outer error
    let mut dead = scp.dest();
    scp.stop();
    dead.port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert!(matches!(c_store_many(&dead, "SCANNER", &batch), Err(SendError::Association { .. })));
}

/// Open file descriptors of this process (the SCP runs in it) on unnamed spool files: staged
/// instances (O_TMPFILE in `incoming/`, shown by Linux as `incoming/#<inode> (deleted)`).
fn open_staged_files(spool_dir: &Path) -> usize {
    let incoming = spool_dir.join("incoming");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.starts_with(&incoming) && target.to_string_lossy().ends_with("(deleted)"))
        .count()
}

/// An association aborted (or a connection dropped) in the middle of a data set that was
/// being written while it arrived (receive::staging) leaves nothing: no instance in the spool,
/// no file descriptor held, nothing reported to assemble; the next association stores the
/// same instance normally.
#[test]
fn data_set_cut_off_mid_transfer_leaves_nothing() {
    use myonode::dimse::command::priority;
    use myonode::dimse::{message_pdus, read_message, AssociationEvent, CommandSet, MessageAssembler};
    let data = data_dir();
    let scp = Scp::start(&[]);
    let src = files_in(&data.join("series/mr-knee-dess-echo1"))[9].clone();
    let part = myonode::send::scu::read_part10(&src).unwrap();
    let mr = "1.2.840.10008.5.1.4.1.1.4";
    let sop = part.meta.media_storage_sop_instance_uid().to_string();
    let cmd = CommandSet::c_store_rq(1, mr, &sop, priority::MEDIUM).encode().unwrap();
    for how in ["abort", "drop"] {
        let mut assoc = store_association(scp.port, mr, part.meta.transfer_syntax());
        let pc = assoc.presentation_contexts()[0].id;
        let pdus: Vec<_> = message_pdus(pc, &cmd, Some(&part.dataset), 16_384).collect();
        assert!(pdus.len() > 10, "the data set must arrive in many fragments");
        // the command and the first half of the data set
        for p in &pdus[..pdus.len() / 2] {
            assoc.send(p).unwrap();
        }
        // the SCP has staged it by now: an unnamed file is open
        let t0 = std::time::Instant::now();
        while open_staged_files(scp.spool_dir.path()) == 0 && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(open_staged_files(scp.spool_dir.path()), 1, "{how}: the data set is being written while it arrives");
        match how {
            "abort" => assoc.abort().unwrap(),
            _ => drop(assoc),
        }
        let t0 = std::time::Instant::now();
        while open_staged_files(scp.spool_dir.path()) > 0 && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(open_staged_files(scp.spool_dir.path()), 0, "{how}: the unnamed file is closed (freed)");
        assert!(scp.stored_files().is_empty(), "{how}: nothing may be stored");
        assert!(scp.drain().is_empty());
    }
    // the whole instance on a new association: stored once, byte for byte
    let mut assoc = store_association(scp.port, mr, part.meta.transfer_syntax());
    let pc = assoc.presentation_contexts()[0].id;
    myonode::dimse::send_message(&mut assoc, pc, &CommandSet::c_store_rq(2, mr, &sop, priority::MEDIUM), Some(&part.dataset)).unwrap();
    let mut asm = MessageAssembler::new();
    match read_message(&mut assoc, &mut asm).unwrap() {
        AssociationEvent::Message(m) => assert_eq!(m.command.status, Some(status::SUCCESS)),
        other => panic!("expected C-STORE-RSP, got {other:?}"),
    }
    assoc.release().unwrap();
    let stored = scp.stored_files();
    assert_eq!(stored.len(), 1);
    assert!(std::fs::read(&stored[0]).unwrap().ends_with(&part.dataset));
    assert_eq!(open_staged_files(scp.spool_dir.path()), 0);
    scp.stop();
}
