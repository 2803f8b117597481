//! Readiness (`/readyz`): the node can do its work.
//!
//! Checks, run by a background task every `http.readiness_interval_seconds` (so a request
//! never waits on the network):
//! - `spool`: a probe file can be created, written, synced and removed in the spool root;
//! - `analysis:<name>`: every analysis the configuration can route to (`segment.analysis`
//!   and each `[[routes]]` analysis) can be created — built-ins always, models by loading
//!   the manifest and an ONNX Runtime session. Checked once per process (a session costs
//!   memory and seconds); the outcome is kept;
//! - `destination:<name>`: C-ECHO (PS3.4 A, Verification SOP Class) to each destination
//!   answers status 0000H;
//! - `stage:<name>`: each pipeline stage thread is alive and not stalled
//!   ([`crate::pipeline::health`]); evaluated at each request (cheap), see [`stage_checks`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::config::Config;

/// Outcome of one check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// `spool`, `analysis:<name>` or `destination:<name>`.
    pub name: String,
    pub ok: bool,
    /// What was found (error message when not ok).
    pub detail: String,
}

/// All checks at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Every check passed.
    pub ready: bool,
    /// When the checks ran (RFC 3339, UTC).
    pub checked_at: String,
    pub checks: Vec<Check>,
}

/// Check that `spool` is writable: create, write, fsync and remove `.readyz-probe`.
///
/// # Errors
/// The I/O error, as text naming the path.
pub fn check_spool(spool: &Path) -> Result<(), String> {
    let p = spool.join(".readyz-probe");
    let r = (|| {
        let mut f = std::fs::File::create(&p)?;
        f.write_all(b"probe\n")?;
        f.sync_all()?;
        std::fs::remove_file(&p)
    })();
    r.map_err(|e| {
        let _ = std::fs::remove_file(&p);
        format!("{}: {e}", p.display())
    })
}

/// Load every analysis `cfg` can route to; one check per analysis name.
pub fn check_analyses(cfg: &Config) -> Vec<Check> {
    let mut names: Vec<&str> = vec![cfg.segment.analysis.as_str()];
    names.extend(cfg.routes.iter().map(|r| r.analysis.as_str()));
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| match crate::segment::create_analysis_with(n, &cfg.segment) {
            Ok(_) => Check { name: format!("analysis:{n}"), ok: true, detail: "loads".into() },
            Err(e) => Check { name: format!("analysis:{n}"), ok: false, detail: e.to_string() },
        })
        .collect()
}

/// C-ECHO every destination; one check per destination.
pub fn check_destinations(cfg: &Config) -> Vec<Check> {
    cfg.destinations
        .iter()
        .map(|d| {
            let name = format!("destination:{}", d.name);
            match crate::send::c_echo_destination(d, &cfg.node.ae_title) {
                Ok(0) => Check { name, ok: true, detail: format!("C-ECHO {}@{}:{} status 0000H", d.ae_title, d.host, d.port) },
                Ok(s) => Check { name, ok: false, detail: format!("C-ECHO {}@{}:{} status {s:04X}H", d.ae_title, d.host, d.port) },
                Err(e) => Check { name, ok: false, detail: format!("C-ECHO {}@{}:{}: {e}", d.ae_title, d.host, d.port) },
            }
        })
        .collect()
}

/// Runs the checks; keeps the analysis outcomes after the first run. Blocking (network, ONNX
/// Runtime): call from a blocking thread.
#[derive(Debug, Default)]
pub struct Checker {
    analyses: Option<Vec<Check>>,
}

impl Checker {
    /// Run all checks now.
    pub fn run(&mut self, cfg: &Config) -> Readiness {
        let mut checks = vec![match check_spool(&cfg.spool.dir) {
            Ok(()) => Check { name: "spool".into(), ok: true, detail: format!("{} writable", cfg.spool.dir.display()) },
            Err(e) => Check { name: "spool".into(), ok: false, detail: e },
        }];
        checks.extend(self.analyses.get_or_insert_with(|| check_analyses(cfg)).iter().cloned());
        checks.extend(check_destinations(cfg));
        // stable order, unique names
        let checks: Vec<Check> =
            checks.into_iter().map(|c| (c.name.clone(), c)).collect::<BTreeMap<_, _>>().into_values().collect();
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checked_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            checks,
        }
    }
}

/// One check `stage:<name>` per pipeline stage thread from its heartbeat, judged by
/// [`crate::pipeline::health::assess`]; the detail says idle/busy since how long, or the problem.
pub fn stage_checks(health: &crate::pipeline::health::PipelineHealth) -> Vec<Check> {
    health
        .report()
        .into_iter()
        .map(|r| {
            let detail = match (&r.problem, r.busy_seconds) {
                (Some(p), _) => p.clone(),
                (None, Some(b)) => format!("{:?}, busy for {b:.1} s", r.state),
                (None, None) => format!("{:?}, idle (heartbeat {:.1} s ago)", r.state, r.heartbeat_age_seconds),
            };
            Check { name: format!("stage:{}", r.stage), ok: r.problem.is_none(), detail: detail.to_lowercase() }
        })
        .collect()
}

impl Readiness {
    /// Add `checks` (e.g. [`stage_checks`], evaluated at request time) and recompute `ready`.
    pub fn add_checks(&mut self, checks: Vec<Check>) {
        self.checks.extend(checks);
        self.ready = self.checks.iter().all(|c| c.ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_probe() {
        let t = tempfile::tempdir().unwrap();
        assert!(check_spool(t.path()).is_ok());
        assert!(!t.path().join(".readyz-probe").exists());
        assert!(check_spool(&t.path().join("missing")).unwrap_err().contains("missing"));
    }

    #[test]
    fn stage_checks_follow_the_stage_health() {
        use crate::pipeline::health::{attach, HealthLimits, PipelineHealth};
        let health = PipelineHealth::new(HealthLimits::with_stall_seconds(3600.0));
        let hb = health.register("measure");
        hb.beat_idle();
        let mut r = Readiness { ready: true, checked_at: String::new(), checks: vec![] };
        r.add_checks(stage_checks(&health));
        assert!(r.ready, "{r:?}");
        assert_eq!(r.checks[0].name, "stage:measure");
        assert!(r.checks[0].detail.contains("idle"), "{:?}", r.checks[0]);
        // the thread ends before shutdown: not ready, and the check says why
        drop(attach(hb));
        let mut r = Readiness { ready: true, checked_at: String::new(), checks: vec![] };
        r.add_checks(stage_checks(&health));
        assert!(!r.ready);
        assert_eq!(r.checks[0].detail, "stage thread exited");
    }
}
