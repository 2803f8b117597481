//! Top-level entry points behind the CLI: `serve` (the node) and `process`
//! (the same pipeline offline over a folder). `main.rs` only parses arguments.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tracing::{info, warn};

use crate::config::Config;
use crate::pipeline::{messages::InstanceStored, Mode, Pipeline};
use crate::receive::ReceiveContext;
use crate::spool::Spool;

/// Run the node: C-STORE/C-ECHO SCP feeding the pipeline, until SIGINT/SIGTERM.
///
/// Start-up: open the spool (recovering unfinished series and unsent results),
/// start the pipeline threads, bind the listener, log `listening on`.
/// Shutdown: stop accepting associations, let in-flight ones end, close the
/// pipeline input and wait for the stages to drain.
///
/// # Errors
/// Spool cannot be opened, address cannot be bound, or the SCP fails fatally.
pub fn serve(cfg: Config) -> anyhow::Result<()> {
    let spool = Arc::new(Spool::open(&cfg.spool.dir, cfg.spool.fsync).context("opening the spool")?);
    let pipeline = Pipeline::start(&cfg, spool.clone(), Mode::Serve);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("receive")
        .build()
        .context("starting the tokio runtime")?;
    let ctx = Arc::new(ReceiveContext {
        ae_title: cfg.node.ae_title.clone(),
        cfg: cfg.receive.clone(),
        spool,
        tx: pipeline.instances.clone(),
        association_events: Some(pipeline.association_events.clone()),
    });
    let addr = format!("{}:{}", cfg.receive.host, cfg.receive.port);
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
        info!(address = %listener.local_addr()?, ae_title = %ctx.ae_title, "listening on {}", listener.local_addr()?);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("shutdown requested; no new associations");
            let _ = stop_tx.send(true);
        });
        crate::receive::serve(ctx, listener, stop_rx).await.context("C-STORE SCP")
    });
    drop(rt);
    info!("waiting for the pipeline to drain");
    pipeline.join();
    info!("stopped");
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// What `process` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ProcessSummary {
    /// DICOM files fed into the pipeline.
    pub instances: usize,
    /// Files skipped (not DICOM, or without Study/Series/SOP Instance UIDs), with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Job directories that hold a SEG.
    pub jobs: Vec<PathBuf>,
    /// Quarantine directories (series that did not form a volume).
    pub quarantined: Vec<PathBuf>,
}

/// Run the pipeline offline over every file below `input`, writing results under `out`
/// (`out/jobs/<job_id>/{seg.dcm, labels.npy, job.json, measurements.*}`,
/// `out/quarantine/<series>/REASON.txt`). Input files are only read.
///
/// # Errors
/// `out` cannot be created, or `input` cannot be read.
pub fn process(cfg: &Config, input: &Path, out: &Path) -> anyhow::Result<ProcessSummary> {
    let spool = Arc::new(Spool::open(out, cfg.spool.fsync).context("creating the output folder")?);
    let pipeline = Pipeline::start(cfg, spool, Mode::Offline);
    let mut summary = ProcessSummary::default();
    let mut files = Vec::new();
    collect_files(input, &mut files).with_context(|| format!("reading {}", input.display()))?;
    files.sort();
    for f in files {
        match read_identity(&f) {
            Ok(msg) => {
                summary.instances += 1;
                pipeline.instances.send(msg).context("pipeline stopped unexpectedly")?;
            }
            Err(reason) => {
                warn!(file = %f.display(), %reason, "skipped");
                summary.skipped.push((f, reason));
            }
        }
    }
    pipeline.join();
    for (area, list) in [("jobs", &mut summary.jobs), ("quarantine", &mut summary.quarantined)] {
        if let Ok(rd) = std::fs::read_dir(out.join(area)) {
            let mut v: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            if area == "jobs" {
                v.retain(|p| p.join(crate::encode::stage::SEG_FILE).exists());
            }
            v.sort();
            *list = v;
        }
    }
    Ok(summary)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// Read a file's identifying UIDs (header only, stops before PixelData).
fn read_identity(path: &Path) -> Result<InstanceStored, String> {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| format!("not a readable DICOM file: {e}"))?;
    let get = |tag, name: &str| -> Result<String, String> {
        let v = obj
            .element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default();
        if crate::spool::is_valid_uid(&v) {
            Ok(v)
        } else {
            Err(format!("{name} missing or invalid (`{v}`)"))
        }
    };
    Ok(InstanceStored {
        study_instance_uid: get(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
        series_instance_uid: get(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
        sop_class_uid: get(tags::SOP_CLASS_UID, "SOPClassUID")?,
        sop_instance_uid: get(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
        path: path.to_path_buf(),
        calling_ae_title: String::new(),
        received_at: std::time::SystemTime::now(),
        duplicate: false,
    })
}
