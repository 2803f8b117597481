//! Delivery of results:
//! * per-destination outputs (`[[destinations]] outputs`): the encode stage writes only
//!   what some destination wants, enqueues per destination, and each SR references the
//!   SEG that its destination receives;
//! * bad peers (DCMTK `storescp` on loopback): a destination that does not accept the SEG
//!   SOP classes, and one that refuses the association, get their objects dead-lettered
//!   with the reason while another destination receives everything.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use ndarray::Array3;

use myonode::config::DestinationConfig;
use myonode::config::OutputKind::{self, SegBinary, SegLabelmap, Sr, SrPlanar};
use myonode::encode::sr_planar::PLANAR_SERIES_DESCRIPTION;
use myonode::encode::stage::{
    encode_findings, EncodeContext, EncodeDestination, JOB_FILE, LABELMAP_SEG_FILE,
    LABELMAP_SR_FILE, PLANAR_LABELMAP_SR_FILE, PLANAR_SR_FILE, SEG_FILE, SR_FILE,
};
use myonode::encode::LABEL_MAP_SEGMENTATION_STORAGE;
use myonode::pipeline::messages::{
    AlgorithmIdentification, Code, Findings, Outbound, SegmentAlgorithmType, SegmentDescription,
    SegmentMeasurements, Segmentation, SeriesHeader, SideMeasurements, StudyJob,
};
use myonode::spool::Spool;
use myonode::uid::new_uid;
use myonode::volume::{SliceRef, Volume};

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const COMPREHENSIVE_3D_SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";

fn findings(job_dir: PathBuf) -> Findings {
    let (study, series) = (new_uid(), new_uid());
    let mut ds = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::PATIENT_NAME, VR::PN, "Test^Outputs"),
        (tags::PATIENT_ID, VR::LO, "P-1"),
        (tags::STUDY_INSTANCE_UID, VR::UI, study.as_str()),
        (tags::SERIES_INSTANCE_UID, VR::UI, series.as_str()),
        (tags::MODALITY, VR::CS, "CT"),
    ] {
        ds.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    let volume = Volume {
        data: Array3::zeros((3, 4, 5)),
        spacing: [2.0, 0.5, 0.5],
        origin: [0.0, 0.0, 0.0],
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 1.0, 0.0],
        slice_direction: [0.0, 0.0, 1.0],
        slices: (0..3)
            .map(|_| SliceRef { sop_class_uid: CT_IMAGE_STORAGE.into(), sop_instance_uid: new_uid(), frame_number: None })
            .collect(),
    };
    let job = StudyJob {
        job_id: "job-1".into(),
        version: 1,
        header: SeriesHeader {
            study_instance_uid: study,
            series_instance_uid: series,
            frame_of_reference_uid: new_uid(),
            modality: "CT".into(),
            dataset: Arc::new(ds),
        },
        volume: Arc::new(volume),
        job_dir,
        channels: Vec::new(),
    };
    let mut labels = Array3::<u8>::zeros((3, 4, 5));
    labels[[1, 2, 3]] = 1;
    labels[[2, 0, 0]] = 1;
    Findings {
        segmentation: Segmentation {
            job,
            labels: Arc::new(labels),
            segments: vec![SegmentDescription {
                label_value: 1,
                label: "Liver".into(),
                category: Code::new("91723000", "SCT", "Anatomical Structure"),
                property_type: Code::new("10200004", "SCT", "Liver"),
                type_modifier: None,
                anatomic_region: None,
                color_rgb: [200, 100, 50],
                algorithm_type: SegmentAlgorithmType::Automatic,
            }],
            algorithm: AlgorithmIdentification {
                family: Code::new("123110", "DCM", "Artificial Intelligence"),
                name: "test".into(),
                version: "1".into(),
            },
        },
        measurements: vec![SegmentMeasurements {
            label_value: 1,
            label: "Liver".into(),
            voxel_count: 2,
            volume_ml: 0.001,
            cross_sectional_area_cm2: vec![0.0, 0.0025, 0.0025],
            max_cross_sectional_area_cm2: 0.0025,
            centroid_slice: Some(1),
            area_at_centroid_slice_cm2: 0.0025,
            centroid_lps_mm: Some([1.0, 1.0, 3.0]),
            mean_intensity: 50.0,
            sd_intensity: 1.0,
            mean_attenuation_hu: Some(50.0),
            fat_fraction_percent: None,
            left: SideMeasurements::default(),
            right: SideMeasurements::default(),
        }],
    }
}

fn run(dests: &[(&str, &[OutputKind])]) -> (tempfile::TempDir, PathBuf, Vec<Outbound>) {
    run_with(dests, findings)
}

/// [`run`] with other findings (built for the job directory given).
fn run_with(dests: &[(&str, &[OutputKind])], make: fn(PathBuf) -> Findings) -> (tempfile::TempDir, PathBuf, Vec<Outbound>) {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(tmp.path().join("spool"), false).unwrap());
    let job_dir = tmp.path().join("spool/jobs/job-1");
    std::fs::create_dir_all(&job_dir).unwrap();
    let ctx = EncodeContext {
        spool,
        destinations: dests
            .iter()
            .map(|(n, o)| EncodeDestination { name: n.to_string(), outputs: o.to_vec() })
            .collect(),
        ae_title: "MYONODE".into(),
        institution_name: String::new(),
    };
    let out = encode_findings(&make(job_dir.clone()), &ctx).expect("encode");
    (tmp, job_dir, out)
}

fn sop_class(path: &Path) -> String {
    let o = dicom_object::open_file(path).unwrap();
    o.element(tags::SOP_CLASS_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string()
}

/// The SEG SOP Instance UIDs an SR references (Current Requested Procedure Evidence Sequence).
fn sr_references(path: &Path) -> Vec<String> {
    let o = dicom_object::open_file(path).unwrap();
    let mut uids = Vec::new();
    for study in o.element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE).unwrap().items().unwrap() {
        for series in study.element(tags::REFERENCED_SERIES_SEQUENCE).unwrap().items().unwrap() {
            for sop in series.element(tags::REFERENCED_SOP_SEQUENCE).unwrap().items().unwrap() {
                let class = sop.element(tags::REFERENCED_SOP_CLASS_UID).unwrap().to_str().unwrap();
                if class.trim_end_matches('\0') != CT_IMAGE_STORAGE {
                    let uid = sop.element(tags::REFERENCED_SOP_INSTANCE_UID).unwrap().to_str().unwrap();
                    uids.push(uid.trim_end_matches('\0').to_string());
                }
            }
        }
    }
    uids
}

/// SeriesDescription of a DICOM file (tells the planar report from the volumetric one).
fn series_description(path: &Path) -> String {
    let o = dicom_object::open_file(path).unwrap();
    o.element(tags::SERIES_DESCRIPTION).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

fn of<'a>(out: &'a [Outbound], dest: &str) -> Vec<&'a Outbound> {
    out.iter().filter(|o| o.destination == dest).collect()
}

#[test]
fn each_destination_gets_its_outputs_and_srs_reference_its_seg() {
    let (_tmp, job, out) = run(&[
        ("default", &[SegBinary, Sr]),
        ("lm", &[SegLabelmap, Sr]),
        ("all", &[SegBinary, SegLabelmap, Sr]),
        ("sronly", &[Sr]),
        ("lmonly", &[SegLabelmap]),
    ]);
    let classes = |d: &str| of(&out, d).iter().map(|o| o.sop_class_uid.clone()).collect::<Vec<_>>();
    assert_eq!(classes("default"), [uids::SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR]);
    assert_eq!(classes("lm"), [LABEL_MAP_SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR]);
    assert_eq!(classes("all"), [uids::SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR]);
    assert_eq!(classes("sronly"), [COMPREHENSIVE_3D_SR]);
    assert_eq!(classes("lmonly"), [LABEL_MAP_SEGMENTATION_STORAGE]);
    for o in &out {
        assert!(o.path.is_file(), "{} not in the outbox", o.path.display());
        assert_eq!(sop_class(&o.path), o.sop_class_uid);
    }
    let uid_of = |d: &str, i: usize| of(&out, d)[i].sop_instance_uid.clone();
    let binary = uid_of("default", 0);
    let labelmap = uid_of("lm", 0);
    assert_eq!(uid_of("all", 0), binary, "one BINARY SEG for every destination");
    assert_eq!(uid_of("lmonly", 0), labelmap, "one LABELMAP SEG for every destination");
    assert_eq!(sr_references(&of(&out, "default")[1].path), [binary.clone()]);
    assert_eq!(sr_references(&of(&out, "lm")[1].path), [labelmap.clone()]);
    assert_eq!(sr_references(&of(&out, "all")[2].path), [binary.clone()]);
    assert_eq!(sr_references(&of(&out, "sronly")[0].path), [binary.clone()]);
    for f in [SEG_FILE, LABELMAP_SEG_FILE, SR_FILE, LABELMAP_SR_FILE, JOB_FILE] {
        assert!(job.join(f).is_file(), "{f} missing from the job directory");
    }
    assert_eq!(sr_references(&job.join(LABELMAP_SR_FILE)), [labelmap.clone()]);
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(job.join(JOB_FILE)).unwrap()).unwrap();
    assert_eq!(summary["seg"]["sop_instance_uid"], binary.as_str());
    assert_eq!(summary["seg_labelmap"]["sop_instance_uid"], labelmap.as_str());
}

#[test]
fn only_wanted_objects_are_encoded() {
    // LABELMAP only: no BINARY SEG and no SR anywhere.
    let (_tmp, job, out) = run(&[("lm", &[SegLabelmap])]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].sop_class_uid, LABEL_MAP_SEGMENTATION_STORAGE);
    assert!(job.join(LABELMAP_SEG_FILE).is_file());
    assert!(!job.join(SEG_FILE).exists() && !job.join(SR_FILE).exists());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(job.join(JOB_FILE)).unwrap()).unwrap();
    assert!(summary["seg"].is_null() && summary["sr"].is_null());

    // SR only: the SR's BINARY SEG is kept in the job directory (not sent) so its reference resolves.
    let (_tmp, job, out) = run(&[("sr", &[Sr])]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].sop_class_uid, COMPREHENSIVE_3D_SR);
    let seg_uid = {
        let o = dicom_object::open_file(job.join(SEG_FILE)).unwrap();
        o.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string()
    };
    assert_eq!(sr_references(&out[0].path), [seg_uid]);

    // LABELMAP + SR-only destinations, nobody wants BINARY: the SR references the LABELMAP SEG.
    let (_tmp, job, out) = run(&[("lm", &[SegLabelmap]), ("sr", &[Sr])]);
    assert!(!job.join(SEG_FILE).exists());
    let lm = &of(&out, "lm")[0];
    assert_eq!(sr_references(&of(&out, "sr")[0].path), [lm.sop_instance_uid.clone()]);

    // Offline (no destinations): BINARY SEG and SR in the job directory, nothing enqueued.
    let (_tmp, job, out) = run(&[]);
    assert!(out.is_empty());
    assert!(job.join(SEG_FILE).is_file() && job.join(SR_FILE).is_file());
    assert!(!job.join(LABELMAP_SEG_FILE).exists());
}

// ---------------------------------------------------------------- bad peers

/// A port nobody listens on right now.
#[test]
fn rerun_of_an_encoded_job_version_sends_nothing_twice() {
    // A crash after the outboxes were filled but before the series was marked done re-runs
    // the job at restart. The re-run must re-use the objects (same SOP Instance UIDs), leave
    // objects already delivered alone and not put a second copy anywhere.
    let dests: &[(&str, &[OutputKind])] = &[("pacs", &[SegBinary, Sr, SrPlanar]), ("lm", &[SegLabelmap])];
    let tmp = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(tmp.path().join("spool"), false).unwrap());
    let job_dir = tmp.path().join("spool/jobs/job-1");
    std::fs::create_dir_all(&job_dir).unwrap();
    let ctx = |d: &[(&str, &[OutputKind])]| EncodeContext {
        spool: spool.clone(),
        destinations: d.iter().map(|(n, o)| EncodeDestination { name: n.to_string(), outputs: o.to_vec() }).collect(),
        ae_title: "MYONODE".into(),
        institution_name: String::new(),
    };
    let first = encode_findings(&findings(job_dir.clone()), &ctx(dests)).expect("encode");
    assert_eq!(first.len(), 4);
    let planar = first.iter().find(|o| series_description(&o.path).starts_with(PLANAR_SERIES_DESCRIPTION)).expect("planar SR enqueued");
    // the SEG reached the PACS before the crash; the SR and the label map did not
    let seg = first.iter().find(|o| o.destination == "pacs" && o.sop_class_uid == uids::SEGMENTATION_STORAGE).unwrap();
    spool.mark_sent("pacs", &seg.path).unwrap();
    let second = encode_findings(&findings(job_dir.clone()), &ctx(dests)).expect("re-run");
    let uids_of = |v: &[Outbound]| {
        let mut u: Vec<(String, String)> = v.iter().map(|o| (o.destination.clone(), o.sop_instance_uid.clone())).collect();
        u.sort();
        u
    };
    let mut expected: Vec<Outbound> = first.iter().filter(|o| o.sop_instance_uid != seg.sop_instance_uid).cloned().collect();
    expected.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(uids_of(&second), uids_of(&expected), "re-run must re-use the first run's objects, minus the delivered one");
    assert!(second.iter().any(|o| o.sop_instance_uid == planar.sop_instance_uid), "re-run re-uses the planar SR");
    for d in ["pacs", "lm"] {
        let outbox = std::fs::read_dir(tmp.path().join("spool/outbox").join(d)).unwrap().count();
        let sent = std::fs::read_dir(tmp.path().join("spool/sent").join(d)).map(|r| r.count()).unwrap_or(0);
        assert_eq!(outbox + sent, of(&first, d).len(), "{d}: one copy of each object in outbox + sent");
    }
    // A configuration that now wants an output the first run did not encode (an SR that
    // references the LABELMAP SEG): encode anew.
    let third = encode_findings(&findings(job_dir), &ctx(&[("pacs", &[SegBinary, Sr]), ("lm", &[SegLabelmap, Sr])]))
        .expect("encode anew");
    assert!(third.iter().all(|o| first.iter().all(|f| f.sop_instance_uid != o.sop_instance_uid)), "new outputs wanted: new objects");
}

#[test]
fn seg_and_sr_name_the_job_version() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(tmp.path().join("spool"), false).unwrap());
    let job_dir = tmp.path().join("spool/jobs/job-1");
    std::fs::create_dir_all(&job_dir).unwrap();
    let ctx = EncodeContext {
        spool,
        destinations: vec![EncodeDestination { name: "pacs".into(), outputs: vec![SegBinary, Sr] }],
        ae_title: "MYONODE".into(),
        institution_name: String::new(),
    };
    let description = |o: &Outbound| {
        let obj = dicom_object::open_file(&o.path).unwrap();
        obj.element(tags::SERIES_DESCRIPTION).unwrap().to_str().unwrap().trim().to_string()
    };
    let mut f = findings(job_dir);
    f.segmentation.job.version = 3;
    let out = encode_findings(&f, &ctx).expect("encode");
    assert_eq!(out.len(), 2);
    for o in &out {
        let d = description(o);
        assert!(d.ends_with("result v3, supersedes v2)"), "{}: {d}", o.sop_class_uid);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// DCMTK storescp (AE `PACS`) on a free loopback port, storing into a temporary directory.
struct StoreScp {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl StoreScp {
    fn start(extra: &[&str]) -> StoreScp {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = std::process::Command::new("storescp")
            .env("TCP_NODELAY", "1")
            .args(["-aet", "PACS", "-od"])
            .arg(dir.path())
            .args(extra)
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("DCMTK `storescp` not found in PATH (install dcmtk)");
        let mut scp = StoreScp { child, port, dir };
        // Ready when the port takes TCP connections (a refusing SCP answers no C-ECHO).
        for _ in 0..400 {
            if let Ok(Some(st)) = scp.child.try_wait() {
                panic!("storescp {extra:?} exited at start: {st}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return scp;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("storescp did not start listening on {port}");
    }

    fn dest(&self, name: &str) -> DestinationConfig {
        DestinationConfig {
            name: name.into(),
            ae_title: "PACS".into(),
            host: "127.0.0.1".into(),
            port: self.port,
            max_attempts: 2,
            retry_delay_seconds: 0.05,
            outputs: vec![SegBinary, Sr],
            tls: None,
        }
    }

    /// SOP Instance UIDs of the objects storescp stored.
    fn received(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                let o = dicom_object::open_file(&p).unwrap();
                o.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string()
            })
            .collect();
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

/// DCMTK association negotiation profile accepting only Verification and Comprehensive 3D SR:
/// a PACS that does not take segmentations.
const NO_SEG_PROFILE: &str = "\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[NoSeg]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = 1.2.840.10008.5.1.4.1.1.88.34\\Uncompressed

[[Profiles]]
[Default]
PresentationContexts = NoSeg
";

/// The dead letters of `dest` under `spool/failed/`: (file name, reason text).
fn dead_letters(spool_root: &Path, dest: &str) -> Vec<(String, String)> {
    let dir = spool_root.join("failed").join(dest);
    let mut v = Vec::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".reason.txt") {
            continue;
        }
        let reason = std::fs::read_to_string(dir.join(format!("{name}.reason.txt")))
            .unwrap_or_else(|e| panic!("no reason file beside {}: {e}", p.display()));
        v.push((name, reason));
    }
    v.sort();
    v
}

#[test]
fn rejected_sop_class_and_refused_association_are_dead_lettered_others_unaffected() {
    let good = StoreScp::start(&[]);
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("noseg.cfg");
    std::fs::write(&cfg, NO_SEG_PROFILE).unwrap();
    let noseg = StoreScp::start(&["-xf", cfg.to_str().unwrap(), "Default"]);
    let refusing = StoreScp::start(&["--refuse"]);

    let mut dests = vec![good.dest("good"), noseg.dest("noseg"), refusing.dest("refusing")];
    dests[1].outputs = vec![SegBinary, SegLabelmap, Sr];
    let spec: Vec<(&str, &[OutputKind])> = dests.iter().map(|d| (d.name.as_str(), d.outputs.as_slice())).collect();
    let (tmp, _job, out) = run(&spec);
    let spool_root = tmp.path().join("spool");
    let spool = Arc::new(Spool::open(&spool_root, false).unwrap());
    let (tx, rx) = crossbeam_channel::unbounded();
    for o in &out {
        tx.send(o.clone()).unwrap();
    }
    drop(tx);
    let reports = myonode::send::run(rx, dests, "MYONODE".into(), spool.clone(), None);
    let counts: Vec<(&str, u64, u64)> = reports.iter().map(|r| (r.name.as_str(), r.delivered, r.failed)).collect();
    assert_eq!(counts, [("good", 2, 0), ("noseg", 1, 2), ("refusing", 0, 2)]);

    // The good destination got the SEG and the SR.
    let mut want: Vec<String> = of(&out, "good").iter().map(|o| o.sop_instance_uid.clone()).collect();
    want.sort();
    assert_eq!(good.received(), want);
    assert!(spool.pending_outbox("good").is_empty());

    // The SEG-less PACS got the SR; both SEGs are dead letters naming their SOP class.
    let sr_uid = of(&out, "noseg").iter().find(|o| o.sop_class_uid == COMPREHENSIVE_3D_SR).unwrap().sop_instance_uid.clone();
    assert_eq!(noseg.received(), [sr_uid]);
    let letters = dead_letters(&spool_root, "noseg");
    assert_eq!(letters.len(), 2, "{letters:?}");
    for o in of(&out, "noseg").iter().filter(|o| o.sop_class_uid != COMPREHENSIVE_3D_SR) {
        let (_, reason) = letters
            .iter()
            .find(|(n, _)| n.contains(&o.sop_instance_uid))
            .unwrap_or_else(|| panic!("{} not dead-lettered: {letters:?}", o.sop_instance_uid));
        assert!(reason.contains(&o.sop_class_uid), "reason does not name the SOP class: {reason}");
        assert!(reason.contains("after 1 attempt(s)"), "a rejected SOP class is permanent, not retried: {reason}");
    }

    // The refusing PACS: both objects dead-lettered with the association rejection.
    let letters = dead_letters(&spool_root, "refusing");
    assert_eq!(letters.len(), 2, "{letters:?}");
    for (_, reason) in &letters {
        assert!(reason.contains("association rejected"), "{reason}");
        assert!(reason.contains("after 2 attempt(s)"), "a refused association is retried: {reason}");
    }
    assert!(refusing.received().is_empty());
    for d in ["noseg", "refusing"] {
        assert!(spool.pending_outbox(d).is_empty(), "{d}: outbox not empty");
    }
}

// ---------------------------------------------------------------- planar SR (sr-planar)

#[test]
fn planar_sr_goes_where_wanted_and_references_that_destinations_seg() {
    let (_tmp, job, out) = run(&[
        ("ohif", &[SegBinary, Sr, SrPlanar]),
        ("lm", &[SegLabelmap, SrPlanar]),
        ("planaronly", &[SrPlanar]),
        ("plain", &[SegBinary, Sr]),
    ]);
    let classes = |d: &str| of(&out, d).iter().map(|o| o.sop_class_uid.clone()).collect::<Vec<_>>();
    assert_eq!(classes("ohif"), [uids::SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR, COMPREHENSIVE_3D_SR]);
    assert_eq!(classes("lm"), [LABEL_MAP_SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR]);
    assert_eq!(classes("planaronly"), [COMPREHENSIVE_3D_SR]);
    assert_eq!(classes("plain"), [uids::SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR]);
    let (ohif, lm) = (of(&out, "ohif"), of(&out, "lm"));
    let (binary, labelmap) = (ohif[0].sop_instance_uid.clone(), lm[0].sop_instance_uid.clone());
    // the volumetric SR first, then the planar one; "plain" gets no planar report
    assert!(!series_description(&ohif[1].path).starts_with(PLANAR_SERIES_DESCRIPTION));
    assert!(series_description(&ohif[2].path).starts_with(PLANAR_SERIES_DESCRIPTION));
    assert!(series_description(&lm[1].path).starts_with(PLANAR_SERIES_DESCRIPTION));
    assert!(series_description(&of(&out, "planaronly")[0].path).starts_with(PLANAR_SERIES_DESCRIPTION));
    assert!(!series_description(&of(&out, "plain")[1].path).starts_with(PLANAR_SERIES_DESCRIPTION));
    assert_ne!(ohif[1].sop_instance_uid, ohif[2].sop_instance_uid);
    assert_eq!(sr_references(&ohif[2].path), [binary.clone()]);
    assert_eq!(sr_references(&lm[1].path), [labelmap.clone()]);
    assert_eq!(of(&out, "planaronly")[0].sop_instance_uid, ohif[2].sop_instance_uid, "one planar SR per referenced SEG");
    // kept in the job directory and listed in job.json
    assert_eq!(sr_references(&job.join(PLANAR_SR_FILE)), [binary.clone()]);
    assert_eq!(sr_references(&job.join(PLANAR_LABELMAP_SR_FILE)), [labelmap.clone()]);
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(job.join(JOB_FILE)).unwrap()).unwrap();
    assert_eq!(summary["sr_planar"]["sop_instance_uid"], ohif[2].sop_instance_uid.as_str());
    assert_eq!(summary["sr_planar"]["file"], PLANAR_SR_FILE);
    assert_eq!(summary["sr_planar_labelmap"]["sop_instance_uid"], lm[1].sop_instance_uid.as_str());
    assert_eq!(summary["encoded"]["sr_planar_binary"]["sop_instance_uid"], ohif[2].sop_instance_uid.as_str());
    assert_eq!(summary["encoded"]["sr_planar_labelmap"]["file"], PLANAR_LABELMAP_SR_FILE);

    // Only a planar SR wanted: the BINARY SEG it references is kept (not sent).
    let (_tmp, job, out) = run(&[("p", &[SrPlanar])]);
    assert_eq!(out.len(), 1);
    assert!(job.join(SEG_FILE).is_file() && job.join(PLANAR_SR_FILE).is_file() && !job.join(SR_FILE).exists());
    // Offline mode is unchanged: no planar report.
    let (_tmp, job, _) = run(&[]);
    assert!(!job.join(PLANAR_SR_FILE).exists());
}

/// [`findings`] with every segment empty.
fn empty_findings(job_dir: PathBuf) -> Findings {
    let mut f = findings(job_dir);
    f.segmentation.labels = Arc::new(Array3::<u8>::zeros((3, 4, 5)));
    for m in &mut f.measurements {
        m.voxel_count = 0;
        m.volume_ml = 0.0;
        m.cross_sectional_area_cm2 = vec![0.0; 3];
        m.max_cross_sectional_area_cm2 = 0.0;
        m.centroid_slice = None;
        m.area_at_centroid_slice_cm2 = 0.0;
        m.centroid_lps_mm = None;
    }
    f
}

#[test]
fn planar_sr_with_nothing_to_draw_is_skipped_and_a_rerun_does_not_retry_it() {
    let dests: &[(&str, &[OutputKind])] = &[("ohif", &[SegBinary, SrPlanar])];
    let (tmp, job, out) = run_with(dests, empty_findings);
    // the SEG is still delivered; no planar report, no error
    assert_eq!(out.iter().map(|o| o.sop_class_uid.as_str()).collect::<Vec<_>>(), [uids::SEGMENTATION_STORAGE]);
    assert!(!job.join(PLANAR_SR_FILE).exists() && !job.join("ERROR.txt").exists());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(job.join(JOB_FILE)).unwrap()).unwrap();
    assert!(summary["sr_planar"].is_null());
    assert!(summary["encoded"]["sr_planar_binary"]["skipped"].is_string(), "{}", summary["encoded"]);
    // a re-run of that job version re-uses the SEG (skip recorded), nothing new is encoded
    let ctx = EncodeContext {
        spool: Arc::new(Spool::open(tmp.path().join("spool"), false).unwrap()),
        destinations: dests.iter().map(|(n, o)| EncodeDestination { name: n.to_string(), outputs: o.to_vec() }).collect(),
        ae_title: "MYONODE".into(),
        institution_name: String::new(),
    };
    let again = encode_findings(&empty_findings(job.clone()), &ctx).expect("re-run");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].sop_instance_uid, out[0].sop_instance_uid, "re-run re-uses the SEG instead of encoding anew");
    assert_eq!(std::fs::read_dir(tmp.path().join("spool/outbox/ohif")).unwrap().count(), 1);
}

/// Each destination's send thread keeps its own heartbeat `send-<destination>` (issue #7):
/// registered when the send stage starts, idle and refreshed while waiting for work, busy while
/// delivering, and marked exited when the queue drains at shutdown, so `/readyz` and the
/// systemd watchdog see a destination thread that died or hangs.
#[test]
fn destination_threads_keep_heartbeats() {
    use myonode::pipeline::health::{HealthLimits, PipelineHealth, StageState};
    let pacs = StoreScp::start(&[]);
    let dests = vec![pacs.dest("pacs")];
    let (tmp, _job, out) = run(&[("pacs", &[SegBinary])]);
    let spool = Arc::new(Spool::open(&tmp.path().join("spool"), false).unwrap());
    let health = Arc::new(PipelineHealth::new(HealthLimits::with_stall_seconds(3600.0)));
    let (tx, rx) = crossbeam_channel::unbounded();
    let h = health.clone();
    let sender = std::thread::spawn(move || myonode::send::run(rx, dests, "MYONODE".into(), spool, Some(h)));
    let snapshot = |name: &str| health.snapshots().into_iter().find(|s| s.stage == name);
    // waiting for work: running, idle, heartbeat refreshed within HEARTBEAT_INTERVAL
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let s = snapshot("send-pacs").expect("send-pacs registered");
    assert_eq!((s.state, s.busy_for), (StageState::Running, None), "{s:?}");
    assert!(s.silent_for < std::time::Duration::from_millis(1500), "{s:?}");
    assert!(health.problems().is_empty(), "{:?}", health.problems());
    for o in of(&out, "pacs") {
        tx.send(o.clone()).unwrap();
    }
    drop(tx);
    health.begin_shutdown();
    let reports = sender.join().unwrap();
    assert_eq!(reports[0].delivered, 1);
    assert_eq!(snapshot("send-pacs").unwrap().state, StageState::Exited);
    // exited during shutdown is not a problem
    assert!(health.problems().is_empty(), "{:?}", health.problems());
}
