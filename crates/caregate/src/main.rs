//! The `caregate` command: thin glue over the library crates.

mod bench;
mod clients;
mod conformance;

// The ingest path allocates many small JSON nodes; mimalloc handles that pattern far
// better than the system allocator (measured with `cargo bench -p caregate-server --bench ingest`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "caregate",
    version,
    about = "A FHIR R4 gateway for coordinated mental-health care"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (FHIR R4 REST API).
    Serve {
        /// Address to listen on (default 127.0.0.1:8080, or the config's `listen`).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory; the SQLite database is created there on first run.
        #[arg(long)]
        data: Option<PathBuf>,
        /// TOML configuration file (clients, limits, base URL).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate resources (JSON or XML files, NDJSON, or `-` for stdin) against the R4 core
    /// definitions (structure, bindings, FHIRPath invariants), the profiles they claim in
    /// `meta.profile` and any `--profile`. Exit status 1 when any resource has errors, 2 for
    /// usage or I/O errors.
    Validate {
        /// A profile (canonical URL) every resource must meet; repeatable.
        #[arg(long = "profile", value_name = "URL")]
        profiles: Vec<String>,
        /// An extra conformance package: a package folder, a `.tgz`, or a single
        /// StructureDefinition/ValueSet/CodeSystem file; repeatable.
        #[arg(long = "ig", value_name = "PATH")]
        igs: Vec<PathBuf>,
        /// `ndjson` (one JSON line per resource, the default) or `text`.
        #[arg(long, default_value = "ndjson")]
        format: String,
        /// Severity of an extension whose definition is not loaded: `error` (the default,
        /// as the HL7 validator) or `warning`.
        #[arg(long, default_value = "error", value_name = "SEVERITY")]
        unknown_extension: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Evaluate a FHIRPath expression over a resource and print the result as a JSON array.
    Fhirpath {
        /// The resource (JSON); stdin when omitted.
        #[arg(long)]
        input: Option<PathBuf>,
        expression: String,
    },
    /// Load-test any FHIR R4 server: creates, bundle import, reads and searches.
    Bench(bench::BenchArgs),
    /// Print the SHA-256 of a bearer token, for a client's `token_sha256` in the config.
    HashToken { token: String },
    /// Write a development CA, a server certificate for localhost and a client certificate
    /// (PEM files) for trying TLS and mutual TLS locally.
    DevCerts {
        #[arg(long, default_value = "caregate-certs")]
        out: PathBuf,
        /// Name (CN) of the client certificate.
        #[arg(long, default_value = "dev-client")]
        client: String,
    },
    /// Manage registered clients in a configuration file.
    Clients {
        #[command(subcommand)]
        command: clients::ClientsCommand,
    },
    /// The conformance suite (`conformance-tests/`), against any FHIR R4 server.
    Conformance {
        #[command(subcommand)]
        command: ConformanceCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum ConformanceCommand {
    /// Run the cases; write TestReport.json, report.html and junit.xml; exit 1 on failures.
    Run(conformance::RunArgs),
    /// Print the per-source conformance statistics of a gateway's data directory.
    Report {
        #[arg(long, default_value = "caregate-data")]
        data: PathBuf,
        /// `json` or `html`.
        #[arg(long, default_value = "json")]
        format: String,
        /// Only this client (source system).
        #[arg(long)]
        source: Option<String>,
        /// Only since this day (YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the AuditEvent hash chain; exit status 1 if any event was changed, removed or
    /// reordered, naming the first.
    Verify {
        /// The gateway's data directory.
        #[arg(long, default_value = "caregate-data")]
        data: PathBuf,
    },
}

fn main() {
    if !caregate_core::memory::disable_transparent_huge_pages() {
        eprintln!("caregate: could not opt out of transparent huge pages");
    }
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("caregate: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Serve {
            listen,
            data,
            config,
        } => serve(listen, data, config),
        Command::Validate {
            profiles,
            igs,
            format,
            unknown_extension,
            files,
        } => validate(&files, &profiles, &igs, &format, &unknown_extension),
        Command::Fhirpath { input, expression } => fhirpath(input, &expression),
        Command::Bench(args) => bench::run(args),
        Command::Conformance {
            command: ConformanceCommand::Run(args),
        } => conformance::run(args),
        Command::Conformance {
            command:
                ConformanceCommand::Report {
                    data,
                    format,
                    source,
                    since,
                },
        } => conformance_report(&data, &format, source.as_deref(), since.as_deref()),
        Command::Audit {
            command: AuditCommand::Verify { data },
        } => audit_verify(&data),
        Command::Clients { command } => clients::run(command),
        Command::DevCerts { out, client } => {
            let files = caregate_server::tls::write_dev_certs(&out, &client)?;
            println!(
                "wrote {}, {}, {}, {}, {}\nconfigure:\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"   # optional: require client certificates",
                files.ca.display(),
                files.server_cert.display(),
                files.server_key.display(),
                files.client_cert.display(),
                files.client_key.display(),
                files.server_cert.display(),
                files.server_key.display(),
                files.ca.display()
            );
            Ok(0)
        }
        Command::HashToken { token } => {
            println!("{}", caregate_server::token_hash_hex(&token));
            Ok(0)
        }
    }
}

fn serve(
    listen: Option<std::net::SocketAddr>,
    data: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<i32> {
    // Colours only on a terminal: a log redirected to a file or collector gets plain text.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut cfg = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            caregate_server::ServerConfig::from_toml(&text)?
        }
        None => caregate_server::ServerConfig::default(),
    };
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(d) = data {
        cfg.data = d;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let running = caregate_server::start(&cfg)?;
        if cfg.development_mode() {
            tracing::warn!(
                "LOCAL DEVELOPMENT MODE: no clients are registered, so requests are NOT authenticated. \
                 caregate listens on loopback only; register clients in a config file before serving a network."
            );
        }
        tracing::info!(
            "caregate listening on http://{} (data in {})",
            running.addr,
            cfg.data.display()
        );
        let handle = running.handle.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
            handle.stop(true).await;
        });
        running.server.await?;
        anyhow::Ok(())
    })?;
    Ok(0)
}

fn conformance_report(
    data: &std::path::Path,
    format: &str,
    source: Option<&str>,
    since: Option<&str>,
) -> Result<i32> {
    use caregate_store::Store;
    let db = data.join("caregate.sqlite");
    if !db.exists() {
        bail!("no caregate database at {}", db.display());
    }
    let store = caregate_store::SqliteStore::open(&db, caregate_store::SqliteOptions::default())?;
    let report = store.conformance_report(source, since)?;
    store.close();
    match format {
        "html" => print!(
            "{}",
            caregate_pipeline::conformance_html(&report, source, since)
        ),
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&caregate_pipeline::conformance_json(
                &report, source, since
            ))?
        ),
        other => bail!("--format must be json or html, not {other}"),
    }
    Ok(0)
}

fn audit_verify(data: &std::path::Path) -> Result<i32> {
    use caregate_store::Store;
    let db = data.join("caregate.sqlite");
    if !db.exists() {
        bail!("no caregate database at {}", db.display());
    }
    let store = caregate_store::SqliteStore::open(&db, caregate_store::SqliteOptions::default())?;
    let report = store.verify_audit_chain()?;
    store.close();
    match &report.first_break {
        None => {
            match &report.head {
                Some((seq, hash)) => println!(
                    "audit chain intact: {} events; head is event {seq} with hash {hash} (record it to detect truncation later)",
                    report.events
                ),
                None => println!("audit chain intact: no events yet"),
            }
            Ok(0)
        }
        Some(b) => {
            println!(
                "audit chain BROKEN at event {} (AuditEvent/{}): {}",
                b.seq, b.id, b.problem
            );
            Ok(1)
        }
    }
}

fn read_input(path: &PathBuf) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

fn validate(
    files: &[PathBuf],
    profiles: &[String],
    igs: &[PathBuf],
    format: &str,
    unknown_extension: &str,
) -> Result<i32> {
    use caregate_validation::{Registry, ValidationOptions, Validator};
    if !matches!(format, "ndjson" | "text") {
        bail!("--format must be ndjson or text, not {format}");
    }
    let unknown_extension = match unknown_extension {
        "error" => caregate_core::Severity::Error,
        "warning" => caregate_core::Severity::Warning,
        other => bail!("--unknown-extension must be error or warning, not {other}"),
    };
    let registry = if igs.is_empty() {
        Registry::standard().clone()
    } else {
        let mut b = Registry::builder();
        for ig in igs {
            b.load_path(ig)
                .with_context(|| format!("loading --ig {}", ig.display()))?;
        }
        std::sync::Arc::new(b.build())
    };
    let validator = Validator::with_fhirpath(registry);
    let opts = ValidationOptions {
        profiles: profiles.to_vec(),
        unknown_extension: Some(unknown_extension),
        ..ValidationOptions::default()
    };
    let mut failed = 0usize;
    let mut total = 0usize;
    for path in files {
        let text = read_input(path)?;
        let trimmed = text.trim_start();
        let resources: Vec<(String, Result<Value, String>)> = if trimmed.starts_with('<') {
            vec![(
                path.display().to_string(),
                caregate_format::xml_to_json(&text).map_err(|e| e.to_string()),
            )]
        } else if path.extension().is_some_and(|e| e == "ndjson") {
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(n, l)| {
                    (
                        format!("{}:{}", path.display(), n + 1),
                        serde_json::from_str(l).map_err(|e| e.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(
                path.display().to_string(),
                serde_json::from_str(&text).map_err(|e| e.to_string()),
            )]
        };
        for (name, parsed) in resources {
            total += 1;
            let (issues, rt, id) = match &parsed {
                Ok(v) => (
                    validator.validate(v, &opts),
                    v.get("resourceType").cloned().unwrap_or(Value::Null),
                    v.get("id").cloned().unwrap_or(Value::Null),
                ),
                Err(e) => (
                    vec![caregate_core::Issue::error(
                        caregate_core::IssueCode::Structure,
                        format!("not parseable: {e}"),
                    )],
                    Value::Null,
                    Value::Null,
                ),
            };
            let errors = issues.iter().filter(|i| i.severity.is_error()).count();
            if errors > 0 {
                failed += 1;
            }
            if format == "text" {
                let what = match (rt.as_str(), id.as_str()) {
                    (Some(t), Some(i)) => format!(" {t}/{i}"),
                    (Some(t), None) => format!(" {t}"),
                    _ => String::new(),
                };
                println!(
                    "{name}{what}: {}",
                    if errors == 0 { "valid" } else { "INVALID" }
                );
                for i in &issues {
                    println!(
                        "  {} {} {}: {}",
                        i.severity.as_str(),
                        i.code.as_str(),
                        i.expression.join(", "),
                        i.diagnostics
                    );
                }
            } else {
                let outcome = caregate_core::OperationOutcome { issues }.to_json();
                println!(
                    "{}",
                    serde_json::json!({ "source": name, "resourceType": rt, "id": id, "valid": errors == 0, "outcome": outcome })
                );
            }
        }
    }
    eprintln!("{total} resources, {failed} with errors");
    Ok(if failed > 0 { 1 } else { 0 })
}

/// `caregate fhirpath`: the result collection as a JSON array in FHIR JSON form. Exit status
/// 2 for a syntax error, 1 for an evaluation error (the spec's errors, e.g. `single()` on
/// several items), each with a message on stderr.
fn fhirpath(input: Option<PathBuf>, expression: &str) -> Result<i32> {
    let compiled = match caregate_fhirpath::Expression::compile(expression) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("syntax error: {e}");
            return Ok(2);
        }
    };
    let text = read_input(&input.unwrap_or_else(|| PathBuf::from("-")))?;
    let resource: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => bail!("the input is not JSON: {e}"),
    };
    match compiled.evaluate_checked(&resource) {
        Ok(items) => {
            let out: Vec<Value> = items.iter().map(caregate_fhirpath::Item::to_json).collect();
            println!("{}", Value::Array(out));
            Ok(0)
        }
        Err(e) => {
            eprintln!("evaluation error: {e}");
            Ok(1)
        }
    }
}
