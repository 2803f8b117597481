//! Top-level entry points behind the CLI: `serve` (the node) and `process`
//! (the same pipeline offline over a folder). `main.rs` only parses arguments.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

use crate::config::Config;
use crate::pipeline::{messages::InstanceStored, Mode, Pipeline};
use crate::receive::ReceiveContext;
use crate::spool::Spool;

/// Run the node: C-STORE/C-ECHO SCP feeding the pipeline, plus the HTTP status server
/// ([`crate::http`], when `http.enabled`), until SIGINT/SIGTERM.
///
/// Start-up: install the Prometheus recorder, open the spool (recovering unfinished series
/// and unsent results), start the pipeline threads, bind the DICOM and HTTP listeners, log
/// `listening on`, then tell systemd `READY=1` (sd_notify; a no-op outside systemd) and, when
/// the unit sets `WatchdogSec=`, send `WATCHDOG=1` every half watchdog interval.
///
/// Shutdown (SIGTERM/SIGINT): `STOPPING=1`, stop accepting associations and HTTP requests,
/// let running associations end (a C-STORE being written completes and is answered), close
/// the pipeline input and let the stages finish their jobs — all within
/// `node.shutdown_timeout_seconds` from the signal. Whatever is unfinished then stays durable
/// in the spool (series in `incoming/`, results in `outbox/`) and resumes at the next start;
/// the process exits 0 either way.
///
/// # Errors
/// Spool cannot be opened, an address cannot be bound, or the SCP fails fatally.
pub fn serve(cfg: Config) -> anyhow::Result<()> {
    let metrics = match crate::http::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            warn!(error = %e, "metrics disabled");
            None
        }
    };
    let spool = Arc::new(Spool::open(&cfg.spool.dir, cfg.spool.fsync).context("opening the spool")?);
    let mut pipeline = Pipeline::start(&cfg, spool.clone(), Mode::Serve);
    let queues = std::mem::take(&mut pipeline.queue_depths);
    let health = pipeline.health.clone();
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
        series_counts: Default::default(),
    });
    let addr = format!("{}:{}", cfg.receive.host, cfg.receive.port);
    let shutdown_timeout = Duration::from_secs_f64(cfg.node.shutdown_timeout_seconds);
    let stop_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let cfg = Arc::new(cfg);
    let stop_at2 = stop_at.clone();
    let result = rt.block_on(async move {
        let listener = if cfg.receive.tls.plain_listener {
            Some(tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?)
        } else {
            None
        };
        // DICOM TLS listener (`[receive.tls]`, PS3.15 B.1); the configuration was checked by Config::validate
        let tls_listener = if cfg.receive.tls.enabled {
            let tls_cfg = crate::tls::server_config(&cfg.receive.tls)?;
            let l = crate::receive::bind_tls(&cfg.receive)
                .await
                .with_context(|| format!("binding DICOM TLS {}:{}", cfg.receive.host, cfg.receive.tls.port))?;
            info!(address = %l.local_addr()?, ae_title = %ctx.ae_title, "DICOM TLS listening on {}", l.local_addr()?);
            Some((l, tls_cfg))
        } else {
            None
        };
        let http_listener = if cfg.http.enabled {
            Some(tokio::net::TcpListener::bind(&cfg.http.bind).await.with_context(|| format!("binding HTTP {}", cfg.http.bind))?)
        } else {
            None
        };
        if let Some(listener) = &listener {
            info!(address = %listener.local_addr()?, ae_title = %ctx.ae_title, "listening on {}", listener.local_addr()?);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let http = http_listener.map(|l| {
            let state = crate::http::HttpState::new(cfg.clone(), metrics, queues).with_pipeline_health(health.clone());
            tokio::spawn(crate::http::serve(l, state, stop_rx.clone()))
        });
        let health2 = health.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            health2.begin_shutdown();
            let _ = stop_at2.set(Instant::now());
            info!(timeout_s = shutdown_timeout.as_secs_f64(), "shutdown requested; no new associations");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            let _ = stop_tx.send(true);
        });
        notify_ready_and_start_watchdog(health);
        let mut stop = stop_rx.clone();
        let receive = crate::receive::serve_all(ctx, listener, tls_listener, stop_rx);
        tokio::pin!(receive);
        let r = tokio::select! {
            r = &mut receive => r.context("C-STORE SCP"),
            _ = async { crate::receive::shutdown_requested(&mut stop).await; tokio::time::sleep(shutdown_timeout).await } => {
                warn!("associations still running at the shutdown timeout; abandoning them (unacknowledged instances are not stored)");
                Ok(())
            }
        };
        if let Some(h) = http {
            match tokio::time::timeout(Duration::from_secs(2), h).await {
                Ok(Ok(Err(e))) => warn!(error = %e, "HTTP server failed"),
                Ok(_) => {}
                Err(_) => warn!("HTTP server did not stop in time"),
            }
        }
        r
    });
    let remaining = |stop_at: &OnceLock<Instant>| {
        stop_at.get().map(|t| shutdown_timeout.saturating_sub(t.elapsed())).unwrap_or(shutdown_timeout)
    };
    // Blocking C-STORE writes in progress finish (bounded by the remaining time).
    rt.shutdown_timeout(remaining(&stop_at));
    info!("waiting for the pipeline to drain");
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            pipeline.join();
            let _ = done_tx.send(());
        })
        .context("starting the drain thread")?;
    match done_rx.recv_timeout(remaining(&stop_at).max(Duration::from_millis(100))) {
        Ok(()) => info!("stopped"),
        Err(_) => warn!(
            timeout_s = shutdown_timeout.as_secs_f64(),
            "pipeline still busy at the shutdown timeout; exiting, unfinished series and results resume at the next start"
        ),
    }
    result
}

/// Tell systemd the node is ready (`READY=1`) and watch the pipeline's health
/// ([`crate::pipeline::health`]) from the tokio runtime: every half watchdog interval when
/// the service manager asked for a watchdog (`WATCHDOG_USEC`), else every 5 s. `WATCHDOG=1`
/// is sent only while every stage thread is healthy (alive, not stalled on one item beyond
/// `node.stage_stall_seconds`, heartbeat fresh when idle); while one is not, the pings stop —
/// systemd then restarts the unit after `WatchdogSec=` — and an error naming the stage is
/// logged. sd_notify calls are no-ops when not started by systemd (`NOTIFY_SOCKET` unset).
fn notify_ready_and_start_watchdog(health: Arc<crate::pipeline::health::PipelineHealth>) {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %e, "sd_notify READY=1 failed");
    }
    let mut usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec) && usec > 0;
    let period = if watchdog { Duration::from_micros(usec / 2) } else { Duration::from_secs(5) };
    if watchdog {
        info!(period_ms = period.as_millis() as u64, "systemd watchdog enabled");
    }
    tokio::spawn(async move {
        let mut t = tokio::time::interval(period);
        let mut gate = crate::pipeline::health::WatchdogGate::default();
        loop {
            t.tick().await;
            if gate.tick(&health) && watchdog {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }
    });
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
        hints: None,
    })
}
