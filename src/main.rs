//! `myonode` command line: parses arguments and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use myonode::config::Config;

/// Streaming DICOM node: receives MR/CT series, segments them, sends DICOM-SEG to PACS.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML) overriding the embedded defaults; `MYONODE__SECTION__KEY`
    /// environment variables override both.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: C-ECHO/C-STORE SCP and the processing pipeline, until SIGTERM/SIGINT.
    Serve,
    /// Run the pipeline offline over a folder of DICOM files; results go to --out.
    Process {
        /// Folder with DICOM files (searched recursively).
        input: PathBuf,
        /// Output folder: jobs/<job_id>/ with seg.dcm, labels.npy, job.json, measurements.*.
        #[arg(long)]
        out: PathBuf,
    },
    /// Validate the configuration; names the offending key on error.
    CheckConfig {
        /// Print the effective configuration as TOML-like JSON.
        #[arg(long)]
        print: bool,
    },
    /// List installed models (models/<name>/model.toml) and whether each loads.
    Models,
    /// Show what the node would make of a folder of DICOM files (headers only): per series and
    /// stack the images, stack reason, dimensions, spacing, orientation, transfer syntaxes,
    /// problems, and the job or refusal.
    Inspect {
        /// Folder with DICOM files (searched recursively).
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// C-ECHO (verification) to a DICOM node.
    Echo {
        /// Echo this configured destination (its host, port, AE title and `tls` settings)
        /// instead of `--host/--port/--aet`.
        #[arg(long, conflicts_with_all = ["host", "port", "aet", "tls_ca"])]
        destination: Option<String>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, required_unless_present = "destination")]
        port: Option<u16>,
        /// Called AE title.
        #[arg(long, default_value = "ANY-SCP")]
        aet: String,
        /// DICOM TLS (PS3.15 B.1): PEM file with the CA certificate(s) the peer's server
        /// certificate must chain to. Without it the association is plain TCP.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// PEM client certificate chain, for peers that require client authentication (with `--tls-key`).
        #[arg(long, requires_all = ["tls_ca", "tls_key"])]
        tls_cert: Option<PathBuf>,
        /// PEM private key of `--tls-cert`.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Name the server certificate must be valid for (default: `--host`).
        #[arg(long, requires = "tls_ca")]
        tls_server_name: Option<String>,
    },
    /// C-STORE files to a configured destination (by name).
    Send {
        /// Destination name from the configuration.
        #[arg(long)]
        destination: String,
        /// Part-10 files to send.
        files: Vec<PathBuf>,
    },
}

fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rustls' `ring` provider as the process default (DICOM TLS, `myonode::tls`)
    myonode::tls::install_default_provider();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("myonode: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg.log.level, cfg.log.json);
    let result = match cli.command {
        Command::Serve => myonode::node::serve(cfg),
        Command::Process { input, out } => myonode::node::process(&cfg, &input, &out).map(|s| {
            println!("{}", serde_json::to_string_pretty(&s).expect("json"));
        }),
        Command::CheckConfig { print } => {
            if print {
                println!("{}", serde_json::to_string_pretty(&cfg).expect("json"));
            }
            println!("configuration OK");
            Ok(())
        }
        Command::Echo { destination, host, port, aet, tls_ca, tls_cert, tls_key, tls_server_name } => {
            echo_destination(&cfg, destination, host, port, aet, tls_ca, tls_cert, tls_key, tls_server_name)
                .and_then(|dest| myonode::send::c_echo_destination(&dest, &cfg.node.ae_title).map_err(anyhow::Error::from))
                .and_then(|status| {
                println!("C-ECHO-RSP status 0x{status:04X}");
                    if status == 0 { Ok(()) } else { Err(anyhow::anyhow!("C-ECHO failed with status 0x{status:04X}")) }
                })
        }
        Command::Send { destination, files } => send_files(&cfg, &destination, &files),
        Command::Models => list_models(&cfg),
        Command::Inspect { dir, json } => myonode::assemble::inspect::inspect(&dir, &cfg.assemble)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
            .map(|r| {
                if json {
                    println!("{}", serde_json::to_string_pretty(&r).expect("json"));
                } else {
                    print!("{}", r.to_table());
                }
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("myonode: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The peer `myonode echo` talks to: a configured destination by name, or one built from the
/// command-line options (with DICOM TLS when `--tls-ca` is given; files checked as at start-up).
#[allow(clippy::too_many_arguments)]
fn echo_destination(
    cfg: &Config,
    destination: Option<String>,
    host: String,
    port: Option<u16>,
    aet: String,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_server_name: Option<String>,
) -> anyhow::Result<myonode::config::DestinationConfig> {
    if let Some(name) = destination {
        return cfg
            .destinations
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no destination named `{name}` in the configuration"));
    }
    let tls = tls_ca.map(|ca| myonode::config::DestinationTlsConfig { ca, cert: tls_cert, key: tls_key, server_name: tls_server_name });
    Ok(myonode::config::DestinationConfig {
        name: "echo".into(),
        ae_title: aet,
        host,
        port: port.expect("clap requires --port without --destination"),
        max_attempts: 1,
        retry_delay_seconds: 0.0,
        outputs: vec![],
        tls,
    })
}

fn send_files(cfg: &Config, destination: &str, files: &[PathBuf]) -> anyhow::Result<()> {
    let dest = cfg
        .destinations
        .iter()
        .find(|d| d.name == destination)
        .ok_or_else(|| anyhow::anyhow!("no destination named `{destination}` in the configuration"))?;
    let mut failed = 0;
    for f in files {
        match myonode::send::c_store(dest, &cfg.node.ae_title, f) {
            Ok(status) if status == 0 || (status & 0xF000) == 0xB000 => println!("{}: status 0x{status:04X}", f.display()),
            Ok(status) => {
                failed += 1;
                println!("{}: FAILED status 0x{status:04X}", f.display());
            }
            Err(e) => {
                failed += 1;
                println!("{}: FAILED {e}", f.display());
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files not stored", files.len());
    }
    Ok(())
}

fn list_models(cfg: &Config) -> anyhow::Result<()> {
    println!("built-in analyses: {}", myonode::segment::BUILTIN_ANALYSES.join(", "));
    let models = myonode::segment::onnx::list_models(&cfg.segment);
    if models.is_empty() {
        println!("no models installed in {}", cfg.segment.models_dir.display());
    }
    let mut broken = 0;
    for m in &models {
        match &m.error {
            None => println!("{}: loads ({})", m.name, m.dir.display()),
            Some(e) => {
                broken += 1;
                println!("{}: DOES NOT LOAD ({}): {e}", m.name, m.dir.display());
            }
        }
    }
    if broken > 0 {
        anyhow::bail!("{broken} model(s) do not load");
    }
    Ok(())
}
