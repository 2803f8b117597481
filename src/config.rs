//! Node configuration, read with the `config` crate.
//!
//! Sources, later ones overriding earlier ones:
//! 1. the embedded defaults (`conf/myonode.toml`, compiled into the binary);
//! 2. the file given with `--config` (TOML), if any;
//! 3. environment variables `MYONODE__SECTION__KEY`, e.g.
//!    `MYONODE__RECEIVE__PORT=11112` or `MYONODE__ASSEMBLE__QUIET_PERIOD_SECONDS=1`.
//!
//! [`Config::validate`] checks values that types alone cannot, and every error
//! names the offending key (`section.key`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default configuration shipped in `conf/myonode.toml`, embedded at build time.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../conf/myonode.toml");

/// Errors from loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration could not be read or did not deserialize (message names the key).
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent.
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// A TLS certificate, key or CA file is missing or unusable (the message names the key,
    /// e.g. `receive.tls.private_key` or `destinations[0].tls.ca`).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The whole configuration. Sections mirror the pipeline stages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub receive: ReceiveConfig,
    pub spool: SpoolConfig,
    pub assemble: AssembleConfig,
    pub segment: SegmentConfig,
    pub pipeline: PipelineConfig,
    pub log: LogConfig,
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// `[http]`: status API, page and metrics.
    #[serde(default)]
    pub http: HttpConfig,
}

/// `[node]`: identity of this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// AE title of this node (1–16 characters, no backslash).
    pub ae_title: String,
    /// Institution name written to Enhanced General Equipment of derived objects (optional).
    #[serde(default)]
    pub institution_name: String,
    /// On SIGTERM/SIGINT: seconds to let running associations and pipeline work finish before
    /// exiting anyway (unfinished work stays in the spool and resumes at the next start).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_seconds: f64,
    /// A pipeline stage busy on one item (e.g. inference of a large volume) for longer than
    /// this many seconds counts as hung: the systemd watchdog pings stop and `/readyz` reports
    /// it (see [`crate::pipeline::health`]). > 0.
    #[serde(default = "default_stage_stall_seconds")]
    pub stage_stall_seconds: f64,
}

fn default_shutdown_timeout() -> f64 {
    30.0
}

fn default_stage_stall_seconds() -> f64 {
    3600.0
}

/// `[receive]`: the C-STORE / C-ECHO SCP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveConfig {
    /// Address to listen on.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Maximum PDU length we accept, bytes (≥ 16384; DCMTK's A-ASSOCIATE-RQ needs more than 8192 in strict mode).
    pub max_pdu_length: u32,
    /// Calling AE titles allowed to associate; empty = any.
    pub allowed_calling_ae_titles: Vec<String>,
    /// Maximum concurrent associations.
    pub max_associations: usize,
    /// Idle timeout of an association, seconds.
    pub association_timeout_seconds: f64,
    /// Largest data set of one C-STORE, bytes; a larger message aborts the association
    /// (A-ABORT) before it is buffered further.
    #[serde(default = "default_max_instance_bytes")]
    pub max_instance_bytes: u64,
    /// Instances stored per series at most; further new instances of the series are refused
    /// with A700H (Refused: Out of Resources).
    #[serde(default = "default_max_instances_per_series")]
    pub max_instances_per_series: usize,
    /// Host binding of calling AE titles: `AE → [IP addresses]`. A calling AE title listed
    /// here is accepted only from one of its addresses (in addition to the allow-list).
    #[serde(default)]
    pub calling_ae_hosts: std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
    /// `[receive.tls]`: DICOM TLS listener (PS3.15 B.1); off by default.
    #[serde(default)]
    pub tls: ReceiveTlsConfig,
}

fn default_max_instance_bytes() -> u64 {
    2 << 30
}
fn default_max_instances_per_series() -> usize {
    10_000
}

/// `[spool]`: durable on-disk storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Spool root; holds `incoming/`, `jobs/`, `outbox/`, `sent/`, `failed/`, `quarantine/`.
    pub dir: PathBuf,
    /// fsync every instance (and its directory) before acknowledging. Turn off only for benchmarks.
    pub fsync: bool,
}

/// `[assemble]`: series completion and volume reassembly.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssembleConfig {
    /// A series is complete after this many seconds with no new instance.
    pub quiet_period_seconds: f64,
    /// Fewest slices that form a volume.
    pub min_slices: usize,
    /// Allowed deviation of slice spacing from the median, mm (dcm2niix uses 0.2).
    pub spacing_tolerance_mm: f64,
    /// Complete a series when the association that delivered it ends (A-RELEASE, A-ABORT or
    /// connection loss), after [`Self::association_end_grace_seconds`].
    #[serde(default = "default_true")]
    pub complete_on_association_end: bool,
    /// Grace period after the end of the delivering association, seconds (≥ 0): a sender that
    /// opens a new association for the rest of the series within it keeps the series open.
    #[serde(default = "default_association_end_grace_seconds")]
    pub association_end_grace_seconds: f64,
    /// Complete a series as soon as the number of images stated by its headers has arrived
    /// (ImagesInAcquisition (0020,1002); NumberOfFrames (0028,0008) of an enhanced multi-frame object).
    #[serde(default = "default_true")]
    pub complete_on_expected_count: bool,
    /// Complete a series at the latest this many seconds after its first instance arrived,
    /// even while instances keep coming (late ones then make a new version). Must be > 0.
    #[serde(default = "default_max_wait_seconds")]
    pub max_wait_seconds: f64,
    /// Study-level window for multi-series jobs (Dixon pairing), seconds: a completed series
    /// waits at most this long for its partner series of the same study before its job starts; 0 = no pairing.
    #[serde(default = "default_study_window_seconds")]
    pub study_window_seconds: f64,
    /// The Dixon images the site's scanners send per acquisition (`water`, `fat`, `in_phase`,
    /// `opposed_phase`): a group is released as soon as all of these are in on one grid,
    /// instead of waiting out [`Self::study_window_seconds`]. Default: all four.
    #[serde(default = "default_dixon_channels")]
    pub dixon_channels: Vec<crate::pipeline::messages::ChannelKind>,
}

impl Default for AssembleConfig {
    /// The embedded defaults of `conf/myonode.toml` `[assemble]`.
    fn default() -> Self {
        AssembleConfig {
            quiet_period_seconds: 10.0,
            min_slices: 3,
            spacing_tolerance_mm: 0.2,
            complete_on_association_end: true,
            association_end_grace_seconds: default_association_end_grace_seconds(),
            complete_on_expected_count: true,
            max_wait_seconds: default_max_wait_seconds(),
            study_window_seconds: default_study_window_seconds(),
            dixon_channels: default_dixon_channels(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_association_end_grace_seconds() -> f64 {
    2.0
}
fn default_max_wait_seconds() -> f64 {
    600.0
}
fn default_study_window_seconds() -> f64 {
    30.0
}
fn default_dixon_channels() -> Vec<crate::pipeline::messages::ChannelKind> {
    use crate::pipeline::messages::ChannelKind::*;
    vec![Water, Fat, InPhase, OpposedPhase]
}

/// `[segment]`: which analysis runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    /// Analysis to run on every job. Built-in: `body-mask`.
    pub analysis: String,
    /// Worker threads running analyses.
    pub workers: usize,
    /// Directory holding installed models, one `<name>/model.toml` + `model.onnx` each.
    /// Relative paths are relative to the working directory.
    #[serde(default = "default_models_dir")]
    pub models_dir: PathBuf,
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.31.1`), loaded at run time
    /// with `ort::init_from`; a missing or wrong library is an error of the ONNX analysis, not a crash.
    #[serde(default = "default_onnxruntime_library")]
    pub onnxruntime_library: PathBuf,
    /// ONNX Runtime execution providers, tried in this order: `tensorrt`, `cuda`, `cpu`.
    /// One asked for but unavailable is logged as an error; ORT always falls back to CPU.
    #[serde(default = "default_execution_providers")]
    pub execution_providers: Vec<String>,
    /// Refuse to run (the analysis fails to load) unless a GPU provider (`cuda`/`tensorrt`) registers.
    #[serde(default)]
    pub require_gpu: bool,
    /// Intra-op threads of each worker's ONNX Runtime session; 0 = automatic: ONNX Runtime's
    /// default (one per core) with one worker, `max(1, cores / workers)` with several.
    #[serde(default)]
    pub intra_op_threads: usize,
    /// `tissue-composition-ct`: also label CT whose BodyPartExamined is not a limb (trunk or
    /// missing), where organs share the skeletal-muscle HU range. Off by default.
    #[serde(default)]
    pub tissue_ct_allow_trunk: bool,
    /// `tissue-composition-ct`: lower bound of bone, HU (inclusive); must be above 150 HU.
    #[serde(default = "default_tissue_ct_bone_threshold_hu")]
    pub tissue_ct_bone_threshold_hu: f32,
}

fn default_tissue_ct_bone_threshold_hu() -> f32 {
    crate::segment::tissue_ct::DEFAULT_BONE_THRESHOLD_HU
}

fn default_models_dir() -> PathBuf {
    PathBuf::from("models")
}
fn default_onnxruntime_library() -> PathBuf {
    PathBuf::from(".onnxruntime/lib/libonnxruntime.so.1.31.1")
}
fn default_execution_providers() -> Vec<String> {
    vec!["cpu".into()]
}

/// `[pipeline]`: channel capacities between stages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Capacity of each bounded channel between stages (back-pressure beyond it).
    pub channel_capacity: usize,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `myonode=debug`. `RUST_LOG` overrides it.
    pub level: String,
    /// Emit JSON lines instead of human-readable text.
    pub json: bool,
}

/// `[[destinations]]`: a PACS or other C-STORE SCP that receives results.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Name used in logs and as the outbox folder (letters, digits, `-`, `_`).
    pub name: String,
    /// Called AE title of the destination.
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// How many association attempts before an object is dead-lettered to `failed/`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay in seconds; doubles after each failure.
    #[serde(default = "default_retry_delay")]
    pub retry_delay_seconds: f64,
    /// Which result objects this destination receives (default `["seg-binary", "sr"]`).
    #[serde(default = "default_outputs")]
    pub outputs: Vec<OutputKind>,
    /// Send over DICOM TLS (PS3.15 B.1): `tls = { ca = "…", cert = "…", key = "…", server_name = "…" }`.
    /// Absent = plain TCP.
    #[serde(default)]
    pub tls: Option<DestinationTlsConfig>,
}

/// `[receive.tls]`: the DICOM TLS listener (PS3.15 Annex B.1, TLS 1.2 or 1.3; see `crate::tls`).
///
/// A separate port (well-known DICOM TLS port 2762, PS3.15 B.1) next to the plain
/// `receive.port`; `plain_listener = false` makes the node TLS-only. Every receive limit,
/// the calling-AE allow-list and host binding apply to TLS associations as well.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveTlsConfig {
    /// Open the TLS listener.
    #[serde(default)]
    pub enabled: bool,
    /// TCP port of the TLS listener (on `receive.host`); must differ from `receive.port`.
    #[serde(default = "default_tls_port")]
    pub port: u16,
    /// Also listen for plain (unencrypted) associations on `receive.port`; `false` = TLS only.
    #[serde(default = "default_true")]
    pub plain_listener: bool,
    /// PEM file with our certificate chain (leaf first, then intermediates).
    #[serde(default)]
    pub certificate: PathBuf,
    /// PEM file with the private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub private_key: PathBuf,
    /// PEM file with the CA certificate(s) that issue client certificates. When set, every
    /// TLS client must present a certificate chaining to one of them (handshake refused
    /// otherwise); unset = no client certificate requested.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl Default for ReceiveTlsConfig {
    /// TLS off, port 2762, plain listener on, no files.
    fn default() -> Self {
        ReceiveTlsConfig {
            enabled: false,
            port: default_tls_port(),
            plain_listener: true,
            certificate: PathBuf::new(),
            private_key: PathBuf::new(),
            client_ca: None,
        }
    }
}

fn default_tls_port() -> u16 {
    2762
}

/// `tls` of a `[[destinations]]` entry: DICOM TLS to that destination (PS3.15 Annex B.1).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationTlsConfig {
    /// PEM file with the CA certificate(s) the destination's server certificate must chain to.
    pub ca: PathBuf,
    /// PEM file with our client certificate chain (client authentication); set with `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM file with the private key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Name the server certificate must be valid for (DNS name or IP address); default: `host`.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl DestinationTlsConfig {
    /// The name the server certificate is checked against: `server_name`, else `host`.
    pub fn server_name_or<'a>(&'a self, host: &'a str) -> &'a str {
        self.server_name.as_deref().filter(|s| !s.is_empty()).unwrap_or(host)
    }
}

/// One kind of result object a destination can receive (`[[destinations]] outputs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum OutputKind {
    /// `seg-binary`: BINARY DICOM-SEG, Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4 (PS3.3 A.51).
    #[serde(rename = "seg-binary")]
    SegBinary,
    /// `seg-labelmap`: LABELMAP DICOM-SEG, Label Map Segmentation Storage
    /// 1.2.840.10008.5.1.4.1.1.66.7 (PS3.3 A.51 as amended by Sup 243).
    #[serde(rename = "seg-labelmap")]
    SegLabelmap,
    /// `sr`: TID 1500 measurement report, Comprehensive 3D SR (PS3.16 TID 1500).
    #[serde(rename = "sr")]
    Sr,
    /// `sr-planar`: viewer-friendly TID 1500 measurement report, Comprehensive 3D SR with one
    /// TID 1410 Planar ROI Measurements group per segment (outline POLYLINE on the segment's
    /// key slice + Area in cm²; PS3.16 TID 1500/1410), see `encode::sr_planar`.
    #[serde(rename = "sr-planar")]
    SrPlanar,
}

impl OutputKind {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::SegBinary => "seg-binary",
            OutputKind::SegLabelmap => "seg-labelmap",
            OutputKind::Sr => "sr",
            OutputKind::SrPlanar => "sr-planar",
        }
    }
}

impl TryFrom<String> for OutputKind {
    type Error = String;

    /// Parse a configuration name; the error lists the accepted names.
    fn try_from(v: String) -> Result<Self, Self::Error> {
        [OutputKind::SegBinary, OutputKind::SegLabelmap, OutputKind::Sr, OutputKind::SrPlanar]
            .into_iter()
            .find(|k| k.as_str() == v)
            .ok_or_else(|| {
                format!("unknown output \"{v}\"; expected one of \"seg-binary\", \"seg-labelmap\", \"sr\", \"sr-planar\"")
            })
    }
}

fn default_outputs() -> Vec<OutputKind> {
    vec![OutputKind::SegBinary, OutputKind::Sr]
}

fn default_max_attempts() -> u32 {
    5
}
fn default_retry_delay() -> f64 {
    2.0
}

impl Config {
    /// Load embedded defaults, then `path` (if given), then `MYONODE__…` environment variables; validate.
    ///
    /// # Errors
    /// [`ConfigError::Load`] when a file is unreadable or a value has the wrong type or an unknown key;
    /// [`ConfigError::Invalid`] when [`Config::validate`] fails.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            EMBEDDED_DEFAULTS,
            config::FileFormat::Toml,
        ));
        if let Some(p) = path {
            builder = builder.add_source(config::File::from(p).format(config::FileFormat::Toml).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("MYONODE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("receive.allowed_calling_ae_titles")
                .with_list_parse_key("segment.execution_providers")
                .with_list_parse_key("assemble.dixon_channels"),
        );
        let cfg: Config = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check values that deserialization cannot; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key: key.into(), message: message.into() })
        }
        check_ae_title("node.ae_title", &self.node.ae_title)?;
        if self.receive.port == 0 {
            return bad("receive.port", "must be 1..65535");
        }
        if self.receive.max_pdu_length < 16_384 || self.receive.max_pdu_length > 16_777_216 {
            return bad("receive.max_pdu_length", "must be between 16384 and 16777216 bytes");
        }
        for (i, ae) in self.receive.allowed_calling_ae_titles.iter().enumerate() {
            check_ae_title(&format!("receive.allowed_calling_ae_titles[{i}]"), ae)?;
        }
        if self.receive.max_associations == 0 {
            return bad("receive.max_associations", "must be at least 1");
        }
        for (ae, hosts) in &self.receive.calling_ae_hosts {
            check_ae_title(&format!("receive.calling_ae_hosts.{ae}"), ae)?;
            if hosts.is_empty() {
                return bad(&format!("receive.calling_ae_hosts.{ae}"), "list at least one IP address");
            }
        }
        if self.receive.tls.enabled {
            if self.receive.tls.port == 0 {
                return bad("receive.tls.port", "must be 1..65535");
            }
            if self.receive.tls.plain_listener && self.receive.tls.port == self.receive.port {
                return bad("receive.tls.port", "must differ from receive.port (or set receive.tls.plain_listener = false)");
            }
            crate::tls::server_config(&self.receive.tls)?;
        } else if !self.receive.tls.plain_listener {
            return bad("receive.tls.plain_listener", "cannot be false while receive.tls.enabled is false (no listener at all)");
        }
        if self.receive.max_instance_bytes < 1024 {
            return bad("receive.max_instance_bytes", "must be at least 1024 bytes");
        }
        if self.receive.max_instances_per_series == 0 {
            return bad("receive.max_instances_per_series", "must be at least 1");
        }
        if !(self.receive.association_timeout_seconds > 0.0) {
            return bad("receive.association_timeout_seconds", "must be > 0");
        }
        if let Err(e) = crate::segment::tissue_ct::TissueCt::new(self.segment.tissue_ct_bone_threshold_hu, false) {
            return bad("segment.tissue_ct_bone_threshold_hu", e.to_string());
        }
        if self.spool.dir.as_os_str().is_empty() {
            return bad("spool.dir", "must not be empty");
        }
        if !(self.assemble.quiet_period_seconds > 0.0) {
            return bad("assemble.quiet_period_seconds", "must be > 0");
        }
        if self.assemble.min_slices < 2 {
            return bad("assemble.min_slices", "must be at least 2");
        }
        if !(self.assemble.spacing_tolerance_mm > 0.0) {
            return bad("assemble.spacing_tolerance_mm", "must be > 0");
        }
        let a = &self.assemble;
        if !(a.association_end_grace_seconds >= 0.0 && a.association_end_grace_seconds.is_finite()) {
            return bad("assemble.association_end_grace_seconds", "must be a finite number >= 0");
        }
        if !(a.max_wait_seconds.is_finite() && a.max_wait_seconds > 0.0) {
            return bad("assemble.max_wait_seconds", "must be a finite number > 0");
        }
        if !(a.study_window_seconds >= 0.0 && a.study_window_seconds.is_finite()) {
            return bad("assemble.study_window_seconds", "must be a finite number >= 0");
        }
        if a.dixon_channels.is_empty() {
            return bad("assemble.dixon_channels", "must name at least one of water, fat, in_phase, opposed_phase");
        }
        if let Some(k) = a.dixon_channels.iter().enumerate().find(|(i, k)| a.dixon_channels[..*i].contains(k)).map(|(_, k)| k) {
            return bad("assemble.dixon_channels", format!("`{}` is listed twice", k.as_str()));
        }
        self.check_analysis("segment.analysis", &self.segment.analysis)?;
        let mut route_names = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            if r.name.trim().is_empty() || !route_names.insert(r.name.clone()) {
                return bad(&key("name"), format!("must be a non-empty, unique name (got `{}`)", r.name));
            }
            if r.modality.is_empty() && r.body_part_examined.is_empty() && r.series_description_contains.is_empty() {
                return bad(&key("modality"), "a route needs at least one criterion (modality, body_part_examined, series_description_contains)");
            }
            self.check_analysis(&key("analysis"), &r.analysis)?;
        }
        for (i, ep) in self.segment.execution_providers.iter().enumerate() {
            if !crate::segment::onnx::runtime::KNOWN_EXECUTION_PROVIDERS.contains(&ep.as_str()) {
                return bad(
                    &format!("segment.execution_providers[{i}]"),
                    format!(
                        "unknown execution provider `{ep}`; known: {:?}",
                        crate::segment::onnx::runtime::KNOWN_EXECUTION_PROVIDERS
                    ),
                );
            }
        }
        if self.segment.execution_providers.is_empty() {
            return bad("segment.execution_providers", "must list at least one provider, e.g. [\"cpu\"]");
        }
        if self.segment.onnxruntime_library.as_os_str().is_empty() {
            return bad("segment.onnxruntime_library", "must not be empty");
        }
        if self.segment.workers == 0 {
            return bad("segment.workers", "must be at least 1");
        }
        if !(self.node.shutdown_timeout_seconds > 0.0) {
            return bad("node.shutdown_timeout_seconds", "must be > 0");
        }
        if !(self.node.stage_stall_seconds > 0.0 && self.node.stage_stall_seconds.is_finite()) {
            return bad("node.stage_stall_seconds", "must be > 0");
        }
        if self.http.enabled && self.http.bind.parse::<std::net::SocketAddr>().is_err() {
            return bad("http.bind", format!("must be an IP address and port like 127.0.0.1:8080 (got `{}`)", self.http.bind));
        }
        if !(self.http.readiness_interval_seconds > 0.0) {
            return bad("http.readiness_interval_seconds", "must be > 0");
        }
        if self.pipeline.channel_capacity == 0 {
            return bad("pipeline.channel_capacity", "must be at least 1");
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let key = |k: &str| format!("destinations[{i}].{k}");
            if d.name.is_empty() || !d.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return bad(&key("name"), "must be non-empty letters, digits, '-' or '_'");
            }
            if !names.insert(d.name.clone()) {
                return bad(&key("name"), format!("duplicate destination name `{}`", d.name));
            }
            check_ae_title(&key("ae_title"), &d.ae_title)?;
            if d.port == 0 {
                return bad(&key("port"), "must be 1..65535");
            }
            if d.max_attempts == 0 {
                return bad(&key("max_attempts"), "must be at least 1");
            }
            if d.outputs.is_empty() {
                return bad(&key("outputs"), "must name at least one of \"seg-binary\", \"seg-labelmap\", \"sr\"");
            }
            let mut seen_outputs = std::collections::HashSet::new();
            if let Some(dup) = d.outputs.iter().find(|o| !seen_outputs.insert(**o)) {
                return bad(&key("outputs"), format!("lists \"{}\" more than once", dup.as_str()));
            }
            if let Some(tls) = &d.tls {
                crate::tls::check_server_name(&key("tls.server_name"), tls.server_name_or(&d.host))?;
                crate::tls::client_config(&key("tls"), tls)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// `name` must be a built-in analysis or a model installed under `segment.models_dir`
    /// with a valid manifest; the error names `key`.
    fn check_analysis(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        if crate::segment::BUILTIN_ANALYSES.contains(&name) {
            return Ok(());
        }
        let dir = self.segment.models_dir.join(name);
        let manifest = dir.join(crate::segment::onnx::manifest::MANIFEST_FILE);
        if !manifest.is_file() {
            return Err(ConfigError::Invalid {
                key: key.into(),
                message: format!(
                    "unknown analysis `{name}`; built-in: {:?}, and no model manifest {} \
                     (segment.models_dir is relative to the working directory)",
                    crate::segment::BUILTIN_ANALYSES,
                    manifest.display()
                ),
            });
        }
        // an installed model: its manifest must be valid at start (the error names file and key)
        crate::segment::onnx::manifest::Manifest::load(&dir)
            .map(|_| ())
            .map_err(|e| ConfigError::Invalid { key: key.into(), message: format!("model `{name}`: {e}") })
    }
}

/// `[[routes]]`: choose the analysis of a series by its header. The first route whose
/// criteria all match wins; a series no route matches gets `segment.analysis`.
/// Within one criterion any listed value may match; comparisons ignore case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name of the route (logs, job.json).
    pub name: String,
    /// Analysis to run: built-in name or model folder under `segment.models_dir`.
    pub analysis: String,
    /// Modality (0008,0060) values, e.g. `["MR"]`.
    #[serde(default)]
    pub modality: Vec<String>,
    /// BodyPartExamined (0018,0015) values, e.g. `["LSPINE", "SPINE"]`.
    #[serde(default)]
    pub body_part_examined: Vec<String>,
    /// Substrings of SeriesDescription (0008,103E), e.g. `["lumbar", "lws"]`.
    #[serde(default)]
    pub series_description_contains: Vec<String>,
}

/// An AE title is 1–16 characters of the Default Character Repertoire without backslash
/// or control characters, and not all spaces (PS3.5 6.2, VR AE).
pub fn check_ae_title(key: &str, ae: &str) -> Result<(), ConfigError> {
    let ok = !ae.trim().is_empty()
        && ae.len() <= 16
        && ae.chars().all(|c| c.is_ascii() && !c.is_ascii_control() && c != '\\');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key: key.into(),
            message: format!("`{ae}` is not a valid AE title (1-16 ASCII characters, no backslash)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.node.ae_title, "MYONODE");
        assert_eq!(c.receive.port, 11112);
        assert_eq!(c.assemble.quiet_period_seconds, 10.0);
        let d = AssembleConfig::default();
        assert_eq!(
            (c.assemble.complete_on_association_end, c.assemble.association_end_grace_seconds, c.assemble.complete_on_expected_count),
            (d.complete_on_association_end, d.association_end_grace_seconds, d.complete_on_expected_count)
        );
        assert_eq!((c.assemble.max_wait_seconds, c.assemble.study_window_seconds), (d.max_wait_seconds, d.study_window_seconds));
        assert_eq!((c.assemble.min_slices, c.assemble.spacing_tolerance_mm), (d.min_slices, d.spacing_tolerance_mm));
    }

    #[test]
    fn segment_onnx_keys_defaults_and_validation() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.segment.execution_providers, vec!["cpu".to_string()]);
        assert_eq!(c.segment.onnxruntime_library, PathBuf::from(".onnxruntime/lib/libonnxruntime.so.1.31.1"));
        assert_eq!(c.segment.models_dir, PathBuf::from("models"));
        assert!(!c.segment.require_gpu);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[segment]\nexecution_providers = [\"cuda\", \"npu\"]\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("segment.execution_providers[1]") && e.contains("npu"), "{e}");
        std::fs::write(&p, "[segment]\nanalysis = \"no-such-model\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("segment.analysis") && e.contains("no-such-model"), "{e}");
        // an installed model (a directory with model.toml) is a valid analysis name
        let models = dir.path().join("models");
        std::fs::create_dir_all(models.join("thigh")).unwrap();
        std::fs::write(models.join("thigh/model.toml"), "[model]\nversion = \"1\"\n").unwrap();
        std::fs::write(
            &p,
            // `routes = []` drops the embedded default routes (their model lives in the repo's models/)
            format!(
                "routes = []\n[segment]\nanalysis = \"thigh\"\nmodels_dir = \"{}\"\nrequire_gpu = true\n",
                models.display()
            ),
        )
        .unwrap();
        // its manifest is validated at start
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("segment.analysis") && e.contains("thigh/model.toml") && e.contains("input"), "{e}");
        std::fs::write(
            models.join("thigh/model.toml"),
            crate::segment::onnx::manifest::EXAMPLE_MANIFEST,
        )
        .unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.segment.analysis, "thigh");
        assert!(c.segment.require_gpu);
    }

    #[test]
    fn bad_value_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[assemble]\nquiet_period_seconds = -1\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("assemble.quiet_period_seconds"), "{e}");
        std::fs::write(&p, "[assemble]\nmax_wait_seconds = 0\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("assemble.max_wait_seconds"), "{e}");
        std::fs::write(&p, "[assemble]\nassociation_end_grace_seconds = -0.5\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("assemble.association_end_grace_seconds"), "{e}");
        std::fs::write(&p, "[assemble]\nstudy_window_seconds = -1\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("assemble.study_window_seconds"), "{e}");
        for (value, says) in [("[]", "at least one"), ("[\"water\", \"fat\", \"water\"]", "`water` is listed twice"), ("[\"wasser\"]", "wasser")] {
            std::fs::write(&p, format!("[assemble]\ndixon_channels = {value}\n")).unwrap();
            let e = Config::load(Some(&p)).unwrap_err().to_string();
            assert!(e.contains("dixon_channels") && e.contains(says), "{value}: {e}");
        }
        std::fs::write(&p, "[assemble]\ndixon_channels = [\"water\", \"fat\"]\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        use crate::pipeline::messages::ChannelKind;
        assert_eq!(c.assemble.dixon_channels, vec![ChannelKind::Water, ChannelKind::Fat]);
        std::fs::write(&p, "[receive]\nport = \"abc\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("receive.port"), "{e}");
        std::fs::write(&p, "[node]\nae_title = \"THIS_TITLE_IS_MUCH_TOO_LONG\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("node.ae_title"), "{e}");
    }
}

/// `[http]`: the status/metrics HTTP server (see `crate::http`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Socket address to listen on, `IP:port` (e.g. `127.0.0.1:8080`; port 0 = any free port).
    #[serde(default = "default_http_bind")]
    pub bind: String,
    /// Seconds between readiness checks (spool writable, analyses load, C-ECHO to each destination);
    /// `/readyz` answers from the last result.
    #[serde(default = "default_readiness_interval")]
    pub readiness_interval_seconds: f64,
    /// Jobs listed by `/api/jobs` and the status page (newest first).
    #[serde(default = "default_recent_jobs")]
    pub recent_jobs: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            bind: default_http_bind(),
            readiness_interval_seconds: default_readiness_interval(),
            recent_jobs: default_recent_jobs(),
        }
    }
}

fn default_http_bind() -> String {
    "127.0.0.1:8080".into()
}
fn default_readiness_interval() -> f64 {
    30.0
}
fn default_recent_jobs() -> usize {
    50
}

#[cfg(test)]
mod tls_config_tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        Config::load(Some(&p))
    }

    #[test]
    fn tls_defaults_and_validation() {
        let c = Config::load(None).unwrap();
        assert!(!c.receive.tls.enabled && c.receive.tls.plain_listener);
        assert_eq!(c.receive.tls.port, 2762);
        assert!(c.destinations.iter().all(|d| d.tls.is_none()));
        let e = load("[receive.tls]\nplain_listener = false\n").unwrap_err().to_string();
        assert!(e.contains("receive.tls.plain_listener"), "{e}");
        let e = load("[receive]\nport = 2762\n[receive.tls]\nenabled = true\n").unwrap_err().to_string();
        assert!(e.contains("receive.tls.port"), "{e}");
        let e = load("[receive.tls]\nenabled = true\ncertificate = \"/nonexistent/node.crt\"\n").unwrap_err().to_string();
        assert!(e.contains("receive.tls.certificate") && e.contains("/nonexistent/node.crt"), "{e}");
        let e = load("[receive.tls]\nenabled = true\nciphers = 1\n").unwrap_err().to_string();
        assert!(e.contains("ciphers"), "{e}");
        let dest = "[[destinations]]\nname = \"a\"\nae_title = \"A\"\nhost = \"127.0.0.1\"\nport = 104\n";
        let e = load(&format!("{dest}tls = {{ ca = \"/nonexistent/ca.crt\" }}\n")).unwrap_err().to_string();
        assert!(e.contains("destinations[0].tls.ca"), "{e}");
        let e = load(&format!("{dest}tls = {{ ca = \"/x\", server_name = \"bad name\" }}\n")).unwrap_err().to_string();
        assert!(e.contains("destinations[0].tls.server_name"), "{e}");
    }
}

#[cfg(test)]
mod destination_outputs_tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        Config::load(Some(&p))
    }

    const DEST: &str = "[[destinations]]\nname = \"a\"\nae_title = \"A\"\nhost = \"127.0.0.1\"\nport = 104\n";

    #[test]
    fn outputs_default_to_binary_seg_and_sr() {
        let c = load(DEST).unwrap();
        assert_eq!(c.destinations[0].outputs, vec![OutputKind::SegBinary, OutputKind::Sr]);
    }

    #[test]
    fn outputs_are_parsed_and_validated() {
        let c = load(&format!("{DEST}outputs = [\"seg-labelmap\"]\n")).unwrap();
        assert_eq!(c.destinations[0].outputs, vec![OutputKind::SegLabelmap]);
        let e = load(&format!("{DEST}outputs = []\n")).unwrap_err().to_string();
        assert!(e.contains("destinations[0].outputs"), "{e}");
        let e = load(&format!("{DEST}outputs = [\"sr\", \"sr\"]\n")).unwrap_err().to_string();
        assert!(e.contains("destinations[0].outputs") && e.contains("more than once"), "{e}");
        let e = load(&format!("{DEST}outputs = [\"seg-fractional\"]\n")).unwrap_err().to_string();
        assert!(e.contains("seg-fractional") && e.contains("seg-labelmap") && e.contains("sr-planar"), "{e}");
        let c = load(&format!("{DEST}outputs = [\"seg-binary\", \"sr\", \"sr-planar\"]\n")).unwrap();
        assert_eq!(c.destinations[0].outputs, vec![OutputKind::SegBinary, OutputKind::Sr, OutputKind::SrPlanar]);
    }
}
