//! Pipeline wiring: the only place that connects the stages.
//!
//! ```text
//! receive ─InstanceStored─▶ assemble ─StudyJob─▶ segment ×N ─Segmentation─▶ measure ─Findings─▶ encode ─Outbound─▶ send
//! ```
//! Every arrow is a bounded `crossbeam-channel` of capacity
//! `pipeline.channel_capacity`, so a slow stage holds back the one before it
//! instead of growing memory. Each stage runs on its own OS thread(s); the
//! async receive side hands over through [`Pipeline::instances`].
//! Dropping the input sender shuts the pipeline down stage by stage;
//! [`Pipeline::join`] waits for that.

pub mod health;
pub mod messages;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Sender};
use tracing::info;

use crate::assemble::{stage as assemble_stage, tracker::{CompletionPolicy, SeriesTracker}};
use crate::config::Config;
use crate::encode::stage::{self as encode_stage, EncodeContext};
use crate::spool::Spool;
use messages::InstanceStored;

/// How the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `myonode serve`: recover the spool at start, keep open series for the next start at shutdown,
    /// deliver to the configured destinations.
    Serve,
    /// `myonode process`: complete every series when input ends, never move input files, no delivery.
    Offline,
}

/// A running pipeline.
pub struct Pipeline {
    /// Feed stored instances here (the receive stage, or the offline file reader).
    pub instances: Sender<InstanceStored>,
    /// Depth samplers of the channels between the stages (for `/metrics`).
    pub queue_depths: crate::http::metrics::QueueDepths,
    /// Feed the end of associations here (the receive stage), for series completion by association end.
    pub association_events: Sender<messages::AssociationEnded>,
    /// Heartbeats of the stage threads (for the systemd watchdog and `/readyz`).
    pub health: Arc<health::PipelineHealth>,
    handles: Vec<(&'static str, JoinHandle<()>)>,
}

/// Start stage thread `name` with a heartbeat registered in `health` as `stage`.
fn spawn(
    health: &health::PipelineHealth,
    name: &'static str,
    stage: String,
    f: impl FnOnce() + Send + 'static,
) -> (&'static str, JoinHandle<()>) {
    let hb = health.register(stage);
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _beat = health::attach(hb);
            f()
        })
        .expect("spawn stage thread");
    (name, h)
}

impl Pipeline {
    /// Start every stage's threads.
    pub fn start(cfg: &Config, spool: Arc<Spool>, mode: Mode) -> Pipeline {
        let cap = cfg.pipeline.channel_capacity;
        let (inst_tx, inst_rx) = bounded(cap);
        let (assoc_tx, assoc_rx) = bounded(cap);
        let (job_tx, job_rx) = bounded(cap);
        let (seg_tx, seg_rx) = bounded(cap);
        let (find_tx, find_rx) = bounded(cap);
        let (out_tx, out_rx) = bounded(cap);
        let mut handles = Vec::new();
        let health = Arc::new(health::PipelineHealth::new(health::HealthLimits::with_stall_seconds(cfg.node.stage_stall_seconds)));
        let mut queue_depths = crate::http::metrics::QueueDepths::default();
        queue_depths.add("assemble", &inst_rx);
        queue_depths.add("segment", &job_rx);
        queue_depths.add("measure", &seg_rx);
        queue_depths.add("encode", &find_rx);
        queue_depths.add("send", &out_rx);

        let mut tracker = SeriesTracker::with_policy(CompletionPolicy::from_config(&cfg.assemble));
        if mode == Mode::Serve {
            let n = assemble_stage::recover(&spool, &mut tracker, Instant::now());
            if n > 0 {
                info!(instances = n, "recovered unfinished series from incoming/");
            }
        }
        {
            let (cfg, spool) = (cfg.assemble.clone(), spool.clone());
            let offline = mode == Mode::Offline;
            handles.push(spawn(&health, "assemble", "assemble".into(), move || assemble_stage::run(inst_rx, assoc_rx, job_tx, cfg, spool, tracker, offline)));
        }
        for w in 0..cfg.segment.workers {
            let (rx, tx, seg_cfg, routes) = (job_rx.clone(), seg_tx.clone(), cfg.segment.clone(), cfg.routes.clone());
            handles.push(spawn(&health, "segment", format!("segment#{w}"), move || crate::segment::stage::run_worker(w, seg_cfg, routes, rx, tx)));
        }
        drop((job_rx, seg_tx));
        handles.push(spawn(&health, "measure", "measure".into(), move || crate::measure::run(seg_rx, find_tx)));
        let destinations: Vec<_> = if mode == Mode::Serve { cfg.destinations.clone() } else { vec![] };
        let ctx = EncodeContext {
            spool: spool.clone(),
            destinations: destinations.iter().map(Into::into).collect(),
            ae_title: cfg.node.ae_title.clone(),
            institution_name: cfg.node.institution_name.clone(),
        };
        handles.push(spawn(&health, "encode", "encode".into(), move || encode_stage::run(find_rx, out_tx, ctx)));
        let ae = cfg.node.ae_title.clone();
        let send_health = health.clone();
        handles.push(spawn(&health, "send", "send".into(), move || {
            for r in crate::send::run(out_rx, destinations, ae, spool, Some(send_health)) {
                info!(report = ?r, "send queue finished");
            }
        }));
        Pipeline { instances: inst_tx, association_events: assoc_tx, queue_depths, health, handles }
    }

    /// Close the input and wait until every stage has finished its work and exited.
    pub fn join(self) {
        self.health.begin_shutdown();
        drop(self.instances);
        drop(self.association_events);
        for (name, h) in self.handles {
            if h.join().is_err() {
                tracing::error!(stage = name, "stage thread panicked");
            }
        }
    }
}
