//! ONNX Runtime: loading the shared library, execution-provider selection and
//! session creation.
//!
//! * The library (`segment.onnxruntime_library`) is loaded with
//!   `ort::init_from`, once per process; a missing or incompatible library is
//!   an [`OnnxError::Library`], never a panic. A failed load may be retried.
//! * Execution providers are registered per session, in the configured order,
//!   each with `error_on_failure` so that we see (and log) every failure
//!   instead of ONNX Runtime's silent CPU fallback. A provider that cannot be
//!   used is logged at `error` level and recorded in
//!   [`execution_provider_report`]; with `segment.require_gpu = true` a session
//!   without a GPU provider is an [`OnnxError::ExecutionProvider`].
//! * One [`ort::session::Session`] per worker (`Session::run` takes `&mut self`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use tracing::{error, info, warn};

use super::OnnxError;
use crate::config::SegmentConfig;

/// Execution provider names accepted in `segment.execution_providers`.
pub const KNOWN_EXECUTION_PROVIDERS: &[&str] = &["tensorrt", "cuda", "cpu"];

/// Outcome of registering one requested execution provider on a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExecutionProviderStatus {
    /// Config name (`tensorrt`, `cuda`, `cpu`).
    pub name: String,
    /// Registered on the session.
    pub active: bool,
    /// Why not, when not active.
    pub error: Option<String>,
}

static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);
static EP_REPORT: Mutex<Vec<ExecutionProviderStatus>> = Mutex::new(Vec::new());

/// Execution-provider outcome of the most recently created session (for the status API).
pub fn execution_provider_report() -> Vec<ExecutionProviderStatus> {
    EP_REPORT.lock().map(|r| r.clone()).unwrap_or_default()
}

/// The process-wide ONNX Runtime environment, loading `library` on first use.
///
/// Later calls with the same path return the same environment; a different path is an
/// error (a process can hold one ONNX Runtime). A failed load may be retried.
///
/// # Errors
/// [`OnnxError::Library`] when the file does not exist, is not an ONNX Runtime
/// library, has an API version older than ort needs, or the environment cannot be created.
pub fn environment(library: &Path) -> Result<Environment, OnnxError> {
    let lib_err = |message: String| OnnxError::Library { path: library.to_path_buf(), message };
    if !library.is_file() {
        return Err(lib_err(
            "file not found; run scripts/fetch-onnxruntime.sh or set segment.onnxruntime_library \
             (env MYONODE__SEGMENT__ONNXRUNTIME_LIBRARY)"
                .into(),
        ));
    }
    let mut guard = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((loaded, env)) = guard.as_ref() {
        if loaded != library {
            return Err(lib_err(format!(
                "this process already loaded ONNX Runtime from {}; one library per process",
                loaded.display()
            )));
        }
        return Ok(env.clone());
    }
    let env = ort::init_from(library)
        .map_err(|e| lib_err(e.to_string()))?
        .with_name("myonode")
        .with_telemetry(false)
        .build()
        .map_err(|e| lib_err(format!("cannot create the ONNX Runtime environment: {e}")))?;
    info!(library = %library.display(), "ONNX Runtime loaded");
    *guard = Some((library.to_path_buf(), env.clone()));
    Ok(env)
}

fn try_register(
    builder: SessionBuilder,
    name: &str,
) -> (SessionBuilder, Result<(), String>) {
    let dispatch = match name {
        "cpu" => Some(ort::ep::CPU::default().build()),
        #[cfg(feature = "cuda")]
        "cuda" => Some(ort::ep::CUDA::default().build()),
        #[cfg(feature = "tensorrt")]
        "tensorrt" => Some(ort::ep::TensorRT::default().build()),
        _ => None,
    };
    let Some(dispatch) = dispatch else {
        let why = if KNOWN_EXECUTION_PROVIDERS.contains(&name) {
            format!("myonode was built without the `{name}` cargo feature")
        } else {
            format!("unknown execution provider `{name}`")
        };
        return (builder, Err(why));
    };
    match builder.with_execution_providers([dispatch.error_on_failure()]) {
        Ok(b) => (b, Ok(())),
        Err(e) => {
            let msg = e.message().to_string();
            (e.recover(), Err(msg))
        }
    }
}

/// Intra-op threads for each worker's session: `cfg.intra_op_threads` when set (> 0); with
/// the default 0 and one worker, 0 (ONNX Runtime's own default, one per physical core); with
/// the default 0 and `W > 1` workers, the available cores split between them,
/// `max(1, cores / W)`, so concurrent analyses do not oversubscribe the CPU.
pub fn effective_intra_op_threads(cfg: &SegmentConfig) -> usize {
    if cfg.intra_op_threads > 0 || cfg.workers <= 1 {
        return cfg.intra_op_threads;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / cfg.workers).max(1)
}

/// Open a session for `model` with the execution providers and threads of `cfg`.
///
/// Returns the session and the per-provider outcome (also stored for
/// [`execution_provider_report`]).
///
/// # Errors
/// [`OnnxError::Library`] (see [`environment`]); [`OnnxError::ExecutionProvider`] when
/// `require_gpu` is set and no GPU provider registered; [`OnnxError::Session`] when ONNX
/// Runtime rejects the options or the model file.
pub fn open_session(model: &Path, cfg: &SegmentConfig) -> Result<(Session, Vec<ExecutionProviderStatus>), OnnxError> {
    let env = environment(&cfg.onnxruntime_library)?;
    let sess_err = |message: String| OnnxError::Session { path: model.to_path_buf(), message };
    let mut builder = Session::builder(&env).map_err(|e| sess_err(e.to_string()))?;
    let intra = effective_intra_op_threads(cfg);
    if intra > 0 {
        builder = builder
            .with_intra_threads(intra)
            .map_err(|e| sess_err(format!("intra_op_threads: {}", e.message())))?;
    }
    let mut report = Vec::new();
    for name in &cfg.execution_providers {
        let (b, r) = try_register(builder, name);
        builder = b;
        match r {
            Ok(()) => {
                info!(provider = %name, model = %model.display(), "execution provider registered");
                report.push(ExecutionProviderStatus { name: name.clone(), active: true, error: None });
            }
            Err(why) => {
                error!(provider = %name, model = %model.display(), reason = %why,
                    "EXECUTION PROVIDER UNAVAILABLE: requested in segment.execution_providers but not usable");
                report.push(ExecutionProviderStatus { name: name.clone(), active: false, error: Some(why) });
            }
        }
    }
    if let Ok(mut r) = EP_REPORT.lock() {
        *r = report.clone();
    }
    let gpu_active = report.iter().any(|s| s.active && s.name != "cpu");
    if cfg.require_gpu && !gpu_active {
        let reasons: Vec<String> =
            report.iter().filter(|s| !s.active).map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or(""))).collect();
        return Err(OnnxError::ExecutionProvider {
            message: format!(
                "segment.require_gpu = true but no GPU execution provider registered (requested {:?}; {})",
                cfg.execution_providers,
                if reasons.is_empty() { "no GPU provider requested".to_string() } else { reasons.join("; ") }
            ),
        });
    }
    if !report.iter().any(|s| s.active) {
        warn!(model = %model.display(), "no requested execution provider registered; ONNX Runtime falls back to CPU");
    }
    let session = with_load_heap(|| builder.commit_from_file(model)).map_err(|e| sess_err(e.to_string()))?;
    Ok((session, report))
}

/// glibc's `M_MMAP_THRESHOLD` while a session is created: blocks of at least this size get
/// their own mapping, so the load's transient buffers go back to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const LOAD_MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// glibc's `M_MMAP_THRESHOLD` after a session is created: 32 MiB, the largest value glibc's
/// own dynamic threshold reaches on 64-bit systems (`DEFAULT_MMAP_THRESHOLD_MAX`), so that
/// the buffers of every `Session::run` are reused from the heap instead of being mapped
/// (and page-faulted in) afresh on each run.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RUN_MMAP_THRESHOLD: libc::c_int = 32 * 1024 * 1024;

/// Run `load` (ONNX Runtime session creation) so that the memory it only needs while loading
/// is returned to the system afterwards; sessions are created one at a time.
///
/// Creating a session parses the model, copies its initializers, optimises the graph and
/// prepacks weights; most of those buffers are freed again, but with glibc's default
/// (dynamic) mmap threshold they are taken from the heap and stay resident below live data.
/// For the shipped 29.7 MiB model that was ~40 MiB of the ~83 MiB a session seemed to hold
/// (`docs/PERFORMANCE.md`, tenth round). Here the threshold is lowered to
/// [`LOAD_MMAP_THRESHOLD`] during the load, then fixed at [`RUN_MMAP_THRESHOLD`] with the trim
/// threshold at twice that (what glibc's dynamic rule would set; a fixed mmap threshold
/// otherwise leaves the trim threshold at 128 KiB, and every run would give back and fault in
/// its buffers again), and `malloc_trim(0)` releases the free pages of every arena. The threshold is process-wide:
/// an inference running on another worker during a load gets its large buffers mapped for
/// that time, which costs speed, not memory. Other C libraries: `load` runs unchanged.
fn with_load_heap<T>(load: impl FnOnce() -> T) -> T {
    static LOADING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt and malloc_trim only change glibc's allocation policy and release free
    // pages; they are thread-safe (each takes the arena locks) and touch no Rust-owned memory.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LOAD_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * LOAD_MMAP_THRESHOLD);
    }
    let out = load();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as above.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, RUN_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * RUN_MMAP_THRESHOLD);
        libc::malloc_trim(0);
    }
    out
}
