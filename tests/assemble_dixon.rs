//! Dixon pairing on series made in the test: real knee DESS pixels with GENERATED headers
//! (new series UIDs, Dixon ImageType / SeriesDescription) and generated pixel values
//! (water = original, fat = original / 4, in-phase = water + fat, opposed = |water − fat|).
//! Plus the real knee DESS echoes, which share a FrameOfReferenceUID but not a study and
//! must not pair.

mod common;
use common::{data_dir, files_in};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use myonode::assemble::dixon::{DixonPairer, DIXON_FILE};
use myonode::assemble::stage::assemble_series;
use myonode::assemble::tracker::{CompletedSeries, CompletionReason};
use myonode::config::AssembleConfig;
use myonode::pipeline::messages::{ChannelKind, StudyJob};
use myonode::spool::Spool;

const WINDOW: Duration = Duration::from_secs(30);

/// Write `n` knee slices as a new series of `kind` with pixel values `f(original)`.
fn make_series(dir: &Path, tag: &str, n: usize, image_type: &str, description: &str, f: impl Fn(i16) -> i16) -> (String, Vec<PathBuf>) {
    let out = dir.join(tag);
    std::fs::create_dir_all(&out).unwrap();
    let series_uid = format!("2.25.77{}", tag.bytes().map(|b| b as u32).sum::<u32>());
    let mut files = Vec::new();
    for (i, src) in files_in(&data_dir().join("series/mr-knee-dess-echo1")).iter().take(n).enumerate() {
        let mut obj = dicom_object::open_file(src).unwrap();
        let raw = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().into_owned();
        let px: Vec<u8> = raw
            .chunks_exact(2)
            .flat_map(|c| f(i16::from_le_bytes([c[0], c[1]])).to_le_bytes())
            .collect();
        let sop = format!("{series_uid}.{i}");
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(px)));
        obj.put(DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(series_uid.as_str())));
        obj.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop.as_str())));
        obj.put(DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(image_type.split('\\').map(String::from).collect()),
        ));
        obj.put(DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, PrimitiveValue::from(description)));
        obj.update_meta(|m| m.media_storage_sop_instance_uid = sop.clone());
        let p = out.join(format!("{i}.dcm"));
        obj.write_to_file(&p).unwrap();
        files.push(p);
    }
    (series_uid, files)
}

fn assemble(spool: &Spool, series_uid: &str, files: Vec<PathBuf>) -> StudyJob {
    let done = CompletedSeries {
        study_instance_uid: String::new(),
        series_instance_uid: series_uid.to_string(),
        version: 1,
        files,
        reason: CompletionReason::InputEnded,
    };
    let mut jobs = assemble_series(&done, &AssembleConfig::default(), spool, false);
    assert_eq!(jobs.len(), 1, "{series_uid}: one stack, one job");
    jobs.pop().unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    spool: Spool,
    dir: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(tmp.path().join("spool"), false).unwrap();
    let dir = tmp.path().join("src");
    Fixture { dir, spool, _tmp: tmp }
}

fn dixon_json(job: &StudyJob) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(job.job_dir.join(DIXON_FILE)).unwrap()).unwrap()
}

#[test]
fn four_dixon_series_become_one_job_with_consistent_channels() {
    let fx = fixture();
    let now = Instant::now();
    let mut pairer = DixonPairer::new(WINDOW);
    // offered in an arbitrary order; the channel kinds come from ImageType (Siemens style)
    // except opposed-phase, which is named only by its SeriesDescription
    let specs: [(&str, &str, &str, fn(i16) -> i16); 4] = [
        ("opp", "ORIGINAL\\PRIMARY\\M\\DIXON", "t1_vibe_dixon_tra_opp", |v| (v - v / 4).abs()),
        ("fat", "DERIVED\\PRIMARY\\DIXON\\FAT", "t1_vibe_dixon_tra_F", |v| v / 4),
        ("in", "DERIVED\\PRIMARY\\DIXON\\IN_PHASE", "t1_vibe_dixon_tra_in", |v| v + v / 4),
        ("water", "DERIVED\\PRIMARY\\DIXON\\WATER", "t1_vibe_dixon_tra_W", |v| v),
    ];
    let mut uids = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for (i, (tag, it, desc, f)) in specs.into_iter().enumerate() {
        let (uid, files) = make_series(&fx.dir, tag, 6, it, desc, f);
        uids.insert(tag, uid.clone());
        let job = assemble(&fx.spool, &uid, files);
        out = pairer.offer(job, now + Duration::from_secs(i as u64));
        if i < 3 {
            assert!(out.is_empty(), "held until all four kinds are in");
        }
    }
    assert_eq!(out.len(), 1);
    let job = &out[0];
    assert_eq!(job.header.series_instance_uid, uids["water"], "water is the primary series");
    let kinds: Vec<ChannelKind> = job.channels.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, vec![ChannelKind::Water, ChannelKind::Fat, ChannelKind::InPhase, ChannelKind::OpposedPhase]);
    assert_eq!(job.channel(ChannelKind::OpposedPhase).unwrap().header.series_instance_uid, uids["opp"]);
    for c in &job.channels {
        assert_eq!(c.volume.shape(), job.volume.shape());
        assert_eq!(c.volume.origin, job.volume.origin);
    }
    let w = &job.channel(ChannelKind::Water).unwrap().volume.data;
    let f = &job.channel(ChannelKind::Fat).unwrap().volume.data;
    let ip = &job.channel(ChannelKind::InPhase).unwrap().volume.data;
    assert_eq!(&(w + f), ip, "generated in-phase = water + fat exactly");
    let d = dixon_json(job);
    assert_eq!(d["in_phase_residual_ratio"].as_f64(), Some(0.0));
    assert_eq!(d["consistent"], serde_json::Value::Bool(true));
    assert_eq!(d["channels"].as_array().unwrap().len(), 4);
    assert_eq!(pairer.pending_jobs(), 0);
}

#[test]
fn partial_groups_lone_series_and_inconsistency_after_the_window() {
    let fx = fixture();
    let now = Instant::now();
    let mut pairer = DixonPairer::new(WINDOW);
    let (w, wf) = make_series(&fx.dir, "w", 6, "DERIVED\\PRIMARY\\DIXON\\WATER", "dixon W", |v| v);
    let (f, ff) = make_series(&fx.dir, "f", 6, "DERIVED\\PRIMARY\\DIXON\\FAT", "dixon F", |v| v / 4);
    // in-phase NOT equal to water + fat: reported, not fatal
    let (i, fi) = make_series(&fx.dir, "i", 6, "DERIVED\\PRIMARY\\DIXON\\IN_PHASE", "dixon in", |v| v / 8);
    // opposed-phase on another grid (5 slices): cannot be a channel of the 6-slice job
    let (o, fo) = make_series(&fx.dir, "o", 5, "DERIVED\\PRIMARY\\DIXON\\OPP_PHASE", "dixon opp", |v| v);
    for (uid, files) in [(&w, wf), (&f, ff), (&i, fi), (&o, fo)] {
        assert!(pairer.offer(assemble(&fx.spool, uid, files), now).is_empty());
    }
    assert_eq!(pairer.next_deadline(), Some(now + WINDOW));
    assert!(pairer.take_due(now + WINDOW - Duration::from_millis(1)).is_empty());
    let mut jobs = pairer.take_due(now + WINDOW);
    jobs.sort_by_key(|j| j.channels.len());
    assert_eq!(jobs.len(), 2, "the 6-slice group and the lone 5-slice series");
    assert_eq!(jobs[0].header.series_instance_uid, o);
    assert!(jobs[0].channels.is_empty(), "a lone series is a plain job");
    assert_eq!(jobs[1].header.series_instance_uid, w);
    assert_eq!(jobs[1].channels.len(), 3);
    let d = dixon_json(&jobs[1]);
    let r = d["in_phase_residual_ratio"].as_f64().unwrap();
    assert!(r > 0.5, "{r}");
    assert_eq!(d["consistent"], serde_json::Value::Bool(false));
}

#[test]
fn knee_dess_echoes_do_not_pair() {
    let fx = fixture();
    let now = Instant::now();
    let mut pairer = DixonPairer::new(WINDOW);
    for echo in ["mr-knee-dess-echo1", "mr-knee-dess-echo2"] {
        let files: Vec<PathBuf> = files_in(&data_dir().join("series").join(echo));
        let uid = myonode::assemble::read_images(&files[0]).unwrap()[0].series_instance_uid.clone();
        let job = assemble(&fx.spool, &uid, files);
        let out = pairer.offer(job, now);
        assert_eq!(out.len(), 1, "{echo}: not a Dixon channel, passes straight through");
        assert!(out[0].channels.is_empty());
    }
    assert_eq!(pairer.pending_jobs(), 0);
    assert!(pairer.take_all().is_empty());
}

#[test]
fn a_site_sending_water_and_fat_gets_the_pair_at_once_not_after_the_window() {
    let fx = fixture();
    let now = Instant::now();
    // assemble.dixon_channels = ["water", "fat"]: what this site's scanners send
    let mut pairer = DixonPairer::expecting(WINDOW, &[ChannelKind::Water, ChannelKind::Fat]);
    let (w, wf) = make_series(&fx.dir, "w", 6, "DERIVED\\PRIMARY\\DIXON\\WATER", "dixon W", |v| v);
    let (f, ff) = make_series(&fx.dir, "f", 6, "DERIVED\\PRIMARY\\DIXON\\FAT", "dixon F", |v| v / 4);
    assert!(pairer.offer(assemble(&fx.spool, &w, wf), now).is_empty(), "water alone waits for fat");
    let out = pairer.offer(assemble(&fx.spool, &f, ff), now + Duration::from_secs(1));
    assert_eq!(out.len(), 1, "released when the expected kinds are in, 29 s before the window ends");
    assert_eq!(out[0].header.series_instance_uid, w);
    let kinds: Vec<ChannelKind> = out[0].channels.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, vec![ChannelKind::Water, ChannelKind::Fat]);
    assert_eq!(pairer.pending_jobs(), 0);
    // the default pairer keeps waiting for in-phase and opposed-phase
    let mut default = DixonPairer::new(WINDOW);
    let (w2, wf2) = make_series(&fx.dir, "w2", 6, "DERIVED\\PRIMARY\\DIXON\\WATER", "dixon W", |v| v);
    let (f2, ff2) = make_series(&fx.dir, "f2", 6, "DERIVED\\PRIMARY\\DIXON\\FAT", "dixon F", |v| v / 4);
    assert!(default.offer(assemble(&fx.spool, &w2, wf2), now).is_empty());
    assert!(default.offer(assemble(&fx.spool, &f2, ff2), now).is_empty());
    assert_eq!(default.take_due(now + WINDOW).len(), 1);
}
