//! `caregate clients add|list|remove`: manage the client registry in the configuration file.
//! Tokens are generated here, shown once, and only their SHA-256 is stored.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(clap::Subcommand)]
pub enum ClientsCommand {
    /// Register a client and print its new bearer token (shown only this once). A SMART
    /// Backend Services client registers its keys (--jwks-url or --jwks-file); a
    /// mutual-TLS client its certificate (--cert-file or --cert-sha256).
    Add {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        id: String,
        /// The Organization the client acts for, e.g. Organization/riverside-psychiatry.
        #[arg(long)]
        organization: Option<String>,
        /// SMART scopes (repeatable), e.g. system/*.read or system/CarePlan.cruds.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Purposes of use the client may assert (repeatable), e.g. TREAT.
        #[arg(long = "purpose")]
        purposes: Vec<String>,
        /// SMART Backend Services: URL of the client's JWKS (fetched and cached).
        #[arg(long)]
        jwks_url: Option<String>,
        /// SMART Backend Services: a file with the client's public JWKS (stored inline).
        #[arg(long)]
        jwks_file: Option<PathBuf>,
        /// Mutual TLS: SHA-256 of the client's certificate (hex, colons allowed).
        #[arg(long, conflicts_with = "cert_file")]
        cert_sha256: Option<String>,
        /// Mutual TLS: the client's certificate (PEM); its SHA-256 is stored.
        #[arg(long)]
        cert_file: Option<PathBuf>,
        /// Do not create a static bearer token (a SMART or mutual-TLS-only client).
        #[arg(long)]
        no_token: bool,
    },
    /// Show every registered client with its organisation, scopes and purposes.
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove a client.
    Remove {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        id: String,
    },
}

fn load(path: &Path) -> Result<toml::Table> {
    if !path.exists() {
        return Ok(toml::Table::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.parse::<toml::Table>()?)
}

fn save(path: &Path, table: &toml::Table) -> Result<()> {
    let text = toml::to_string(table)?;
    // The result must still be a valid gateway configuration.
    caregate_server::ServerConfig::from_toml(&text)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn clients_of(table: &mut toml::Table) -> Result<&mut Vec<toml::Value>> {
    let entry = table
        .entry("client")
        .or_insert_with(|| toml::Value::Array(Vec::new()));
    match entry {
        toml::Value::Array(a) => Ok(a),
        _ => bail!("'client' in the configuration must be an array of tables ([[client]])"),
    }
}

fn field<'a>(c: &'a toml::Value, key: &str) -> &'a str {
    c.get(key).and_then(toml::Value::as_str).unwrap_or("")
}

fn list_of(c: &toml::Value, key: &str) -> String {
    c.get(key)
        .and_then(toml::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(toml::Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// How a client authenticates, e.g. `token,jwks_url=https://...,cert=ab12cd34...`.
fn credentials(c: &toml::Value) -> String {
    let mut out = Vec::new();
    if !field(c, "token_sha256").is_empty() {
        out.push("token".to_string());
    }
    if c.get("jwks").is_some() {
        out.push("jwks".to_string());
    }
    if !field(c, "jwks_url").is_empty() {
        out.push(format!("jwks_url={}", field(c, "jwks_url")));
    }
    let cert = field(c, "cert_sha256");
    if !cert.is_empty() {
        let short: String = cert.chars().filter(|c| *c != ':').take(16).collect();
        out.push(format!("cert={short}..."));
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(",")
    }
}

pub fn run(command: ClientsCommand) -> Result<i32> {
    match command {
        ClientsCommand::Add {
            config,
            id,
            organization,
            scopes,
            purposes,
            jwks_url,
            jwks_file,
            cert_sha256,
            cert_file,
            no_token,
        } => {
            let mut table = load(&config)?;
            let clients = clients_of(&mut table)?;
            if clients.iter().any(|c| field(c, "id") == id) {
                bail!("a client '{id}' is already registered");
            }
            let token = (!no_token).then(|| {
                format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                )
            });
            let mut entry = toml::Table::new();
            entry.insert("id".into(), toml::Value::String(id.clone()));
            if let Some(org) = organization {
                entry.insert("organization".into(), toml::Value::String(org));
            }
            if let Some(token) = &token {
                entry.insert(
                    "token_sha256".into(),
                    toml::Value::String(caregate_server::token_hash_hex(token)),
                );
            }
            if let Some(url) = jwks_url {
                entry.insert("jwks_url".into(), toml::Value::String(url));
            }
            if let Some(path) = jwks_file {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                // Checked here for a clear message; stored compact, as a JSON string.
                let jwks: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                entry.insert("jwks".into(), toml::Value::String(jwks.to_string()));
            }
            let fingerprint = match (cert_sha256, cert_file) {
                (Some(fp), _) => Some(fp),
                (None, Some(path)) => Some(caregate_server::tls::certificate_sha256(&path)?),
                (None, None) => None,
            };
            if let Some(fp) = fingerprint {
                entry.insert("cert_sha256".into(), toml::Value::String(fp));
            }
            entry.insert(
                "scopes".into(),
                toml::Value::Array(scopes.into_iter().map(toml::Value::String).collect()),
            );
            entry.insert(
                "purposes".into(),
                toml::Value::Array(purposes.into_iter().map(toml::Value::String).collect()),
            );
            clients.push(toml::Value::Table(entry));
            save(&config, &table)?;
            match token {
                Some(token) => {
                    println!("registered '{id}'; its bearer token (shown only now):\n{token}")
                }
                None => println!("registered '{id}' (no static bearer token)"),
            }
            Ok(0)
        }
        ClientsCommand::List { config } => {
            let mut table = load(&config)?;
            let clients = clients_of(&mut table)?;
            if clients.is_empty() {
                println!("no clients registered (local development mode)");
            }
            for c in clients.iter() {
                println!(
                    "{}\torganization={}\tscopes={}\tpurposes={}\tcredentials={}",
                    field(c, "id"),
                    field(c, "organization"),
                    list_of(c, "scopes"),
                    list_of(c, "purposes"),
                    credentials(c)
                );
            }
            Ok(0)
        }
        ClientsCommand::Remove { config, id } => {
            let mut table = load(&config)?;
            let clients = clients_of(&mut table)?;
            let before = clients.len();
            clients.retain(|c| field(c, "id") != id);
            if clients.len() == before {
                bail!("no client '{id}' is registered");
            }
            save(&config, &table)?;
            println!("removed '{id}'");
            Ok(0)
        }
    }
}
