//! The node's HTTP server (axum on the receive stage's tokio runtime), for operators and
//! monitoring. No authentication: bind it to loopback or a management network.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | status page ([`page`]): recent jobs with state, deliveries, preview image |
//! | `GET /healthz` | liveness: `200 ok` while the process serves HTTP |
//! | `GET /readyz` | readiness ([`readiness`]): `200` when every check passed, else `503`; JSON body; includes the pipeline stage threads' health (`stage:<name>`, live) |
//! | `GET /metrics` | Prometheus text format 0.0.4 ([`metrics`]) |
//! | `GET /api/jobs` | JSON array of the `http.recent_jobs` newest jobs ([`jobs::JobStatus`]) |
//! | `GET /api/jobs/{id}` | one job with findings and volume geometry; `404` if unknown |
//! | `GET /api/jobs/{id}/preview.png` | the job's preview PNG ([`preview`]); `404` if none |
//!
//! Job information is read from the spool at each request, so it survives restarts.

pub mod jobs;
pub mod metrics;
pub mod page;
pub mod preview;
pub mod readiness;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// The node's configuration (destinations, spool root, AE title, `[http]`).
    pub cfg: Arc<Config>,
    /// Prometheus renderer; `None` = `/metrics` answers 503.
    pub metrics: Option<PrometheusHandle>,
    /// Channel depth samplers of the running pipeline.
    pub queues: Arc<metrics::QueueDepths>,
    /// Last readiness result (`None` until the first check finished).
    pub readiness: Arc<RwLock<Option<readiness::Readiness>>>,
    /// Heartbeats of the pipeline's stage threads (`None`: not reported by `/readyz`).
    pub pipeline_health: Option<Arc<crate::pipeline::health::PipelineHealth>>,
}

impl HttpState {
    /// State for `cfg` with the given metrics handle and queue samplers, no readiness yet.
    pub fn new(cfg: Arc<Config>, metrics: Option<PrometheusHandle>, queues: metrics::QueueDepths) -> Self {
        HttpState { cfg, metrics, queues: Arc::new(queues), readiness: Arc::new(RwLock::new(None)), pipeline_health: None }
    }

    /// Report the health of the pipeline's stage threads in `/readyz` (checks `stage:<name>`).
    pub fn with_pipeline_health(mut self, health: Arc<crate::pipeline::health::PipelineHealth>) -> Self {
        self.pipeline_health = Some(health);
        self
    }

    fn spool(&self) -> PathBuf {
        self.cfg.spool.dir.clone()
    }

    fn destination_names(&self) -> Vec<String> {
        self.cfg.destinations.iter().map(|d| d.name.clone()).collect()
    }
}

/// The router with every route of this module.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/jobs", get(api_jobs))
        .route("/api/jobs/{id}", get(api_job))
        .route("/api/jobs/{id}/preview.png", get(api_preview))
        .with_state(state)
}

/// Serve `router(state)` on `listener` until `shutdown` becomes true; also runs the
/// readiness checker every `cfg.http.readiness_interval_seconds` on a blocking thread.
///
/// # Errors
/// The I/O error that ended the server.
pub async fn serve(listener: tokio::net::TcpListener, state: HttpState, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(address = %addr, "HTTP listening on {addr}");
    let checker_state = state.clone();
    let mut checker_stop = shutdown.clone();
    let checker = tokio::spawn(async move {
        let interval = Duration::from_secs_f64(checker_state.cfg.http.readiness_interval_seconds);
        let mut checker = readiness::Checker::default();
        loop {
            let cfg = checker_state.cfg.clone();
            let (c, r) = match tokio::task::spawn_blocking(move || {
                let r = checker.run(&cfg);
                (checker, r)
            })
            .await
            {
                Ok(v) => v,
                Err(e) => {
                    warn!(error = %e, "readiness check panicked");
                    return;
                }
            };
            checker = c;
            if !r.ready {
                warn!(failed = ?r.checks.iter().filter(|c| !c.ok).collect::<Vec<_>>(), "not ready");
            }
            *checker_state.readiness.write().expect("readiness lock") = Some(r);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = crate::receive::shutdown_requested(&mut checker_stop) => return,
            }
        }
    });
    let mut stop = shutdown;
    let r = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { crate::receive::shutdown_requested(&mut stop).await })
        .await;
    checker.abort();
    info!(address = %addr, "HTTP stopped");
    r
}

async fn index(State(s): State<HttpState>) -> Html<String> {
    let s2 = s.clone();
    let jobs = tokio::task::spawn_blocking(move || recent(&s2)).await.unwrap_or_default();
    let r = s.readiness.read().expect("readiness lock").clone();
    Html(page::render(&s.cfg.node.ae_title, &jobs, r.as_ref()))
}

fn recent(s: &HttpState) -> Vec<jobs::JobStatus> {
    let mut v = jobs::list_jobs(&s.spool(), &s.destination_names());
    v.truncate(s.cfg.http.recent_jobs);
    v
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let stages = s.pipeline_health.as_ref().map(|h| readiness::stage_checks(h)).unwrap_or_default();
    match s.readiness.read().expect("readiness lock").clone() {
        Some(mut r) => {
            r.add_checks(stages);
            (if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(r)).into_response()
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"ready": false, "checks": stages, "detail": "first check still running"})))
            .into_response(),
    }
}

async fn metrics_text(State(s): State<HttpState>) -> Response {
    let Some(h) = s.metrics.clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder not installed\n").into_response();
    };
    s.queues.record();
    let s2 = s.clone();
    let counts = tokio::task::spawn_blocking(move || jobs::list_jobs(&s2.spool(), &s2.destination_names()))
        .await
        .unwrap_or_default();
    for st in jobs::JobState::ALL {
        let n = counts.iter().filter(|j| j.state == st).count();
        ::metrics::gauge!("myonode_jobs", "state" => st.as_str()).set(n as f64);
    }
    h.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], h.render()).into_response()
}

async fn api_jobs(State(s): State<HttpState>) -> Json<Vec<jobs::JobStatus>> {
    Json(tokio::task::spawn_blocking(move || recent(&s)).await.unwrap_or_default())
}

async fn api_job(State(s): State<HttpState>, UrlPath(id): UrlPath<String>) -> Response {
    let found = tokio::task::spawn_blocking(move || jobs::read_job(&s.spool(), &id, &s.destination_names(), true))
        .await
        .ok()
        .flatten();
    match found {
        Some(j) => Json(j).into_response(),
        None => (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": "no such job"}))).into_response(),
    }
}

async fn api_preview(State(s): State<HttpState>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(p) = jobs::preview_path(&s.spool(), &id) else {
        return (StatusCode::NOT_FOUND, "no preview\n").into_response();
    };
    match tokio::task::spawn_blocking(move || std::fs::read(&p)).await {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-cache")], bytes).into_response(),
        _ => (StatusCode::NOT_FOUND, "no preview\n").into_response(),
    }
}
