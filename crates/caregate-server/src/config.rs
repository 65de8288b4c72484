//! Gateway configuration (`caregate serve --config FILE`, TOML).
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! data = "./caregate-data"
//! base_url = "https://gateway.example.org/fhir"   # optional; else taken from each request
//! max_body_bytes = 16777216
//!
//! [[client]]
//! id = "psychiatry-ehr"
//! organization = "Organization/riverside-psychiatry"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! scopes = ["system/*.read", "system/CarePlan.write"]
//! purposes = ["TREAT"]
//!
//! [[client]]                      # a SMART Backend Services client (private_key_jwt)
//! id = "county-hie"
//! scopes = ["system/*.rs"]
//! jwks_url = "https://hie.example.org/.well-known/jwks.json"   # or jwks = '{"keys":[...]}'
//! cert_sha256 = "ab12..."         # optional: its mutual-TLS certificate identifies it too
//!
//! [smart]
//! token_secret = "<64+ hex digits shared by every gateway node>"
//!
//! [validation]
//! unknown_profile = "error"       # a meta.profile / required profile not loaded: error|warning
//! unknown_extension = "warning"   # an extension whose definition is not loaded: error|warning
//! ig = ["igs/hl7.fhir.us.core-3.1.0.tgz"]   # extra packages: .tgz, package folder, or file
//!
//! [[validation.require]]          # profiles writes must meet
//! client = "psychiatry-ehr"       # optional: only this client's writes
//! resource = "CarePlan"
//! profile = "http://example.org/StructureDefinition/shared-careplan"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_data")]
    pub data: PathBuf,
    /// The public base URL used in Location headers and Bundle links.
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// HTTP worker threads; defaults to the number of cores.
    #[serde(default)]
    pub workers: Option<usize>,
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientConfig>,
    #[serde(default)]
    pub consent: ConsentConfig,
    #[serde(default)]
    pub linking: LinkingConfig,
    /// Serve HTTPS (and optionally require client certificates).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    #[serde(default)]
    pub validation: ValidationConfig,
    /// Request shape limits and timeouts.
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// SMART Backend Services (`/.well-known/smart-configuration`, `POST /auth/token`).
    #[serde(default)]
    pub smart: Option<SmartConfig>,
}

/// `[smart]`: SMART Backend Services. The token endpoint is served when this section is
/// present or any client registers a key set (`jwks` / `jwks_url`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmartConfig {
    /// Hex HMAC-SHA256 key (at least 32 bytes) that signs access tokens. Every gateway node
    /// behind one load balancer must share it; when absent a random key is made at start,
    /// and tokens then survive neither a restart nor a hop to another node.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// Lifetime of access tokens in seconds (at most 300, the default).
    #[serde(default)]
    pub token_lifetime_secs: Option<u64>,
    /// How long a fetched `jwks_url` key set is used before it is fetched again
    /// (default 3600 s). A `kid` not in the cached set triggers a refetch at most once
    /// every `jwks_min_refetch_secs` (default 10 s) per URL.
    #[serde(default)]
    pub jwks_cache_secs: Option<u64>,
    #[serde(default)]
    pub jwks_min_refetch_secs: Option<u64>,
}

/// `[validation]`: what inbound resources are validated against.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// Severity when a resource claims (`meta.profile`) or must meet a profile that is not
    /// loaded: `error` (default) or `warning`.
    #[serde(default = "default_error")]
    pub unknown_profile: String,
    /// Severity for an extension whose definition is not loaded: `warning` (default; EHRs
    /// send local extensions) or `error`.
    #[serde(default = "default_warning")]
    pub unknown_extension: String,
    /// Extra conformance packages (`.tgz`, package folders, single resource files).
    #[serde(default)]
    pub ig: Vec<PathBuf>,
    /// Profiles that writes of a resource type (optionally only from one client) must meet.
    #[serde(default)]
    pub require: Vec<RequiredProfile>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            unknown_profile: default_error(),
            unknown_extension: default_warning(),
            ig: Vec::new(),
            require: Vec::new(),
        }
    }
}

/// `[[validation.require]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredProfile {
    /// The client (source system) this applies to; every client when absent.
    #[serde(default)]
    pub client: Option<String>,
    pub resource: String,
    /// Canonical URL of the profile (`url` or `url|version`).
    pub profile: String,
}

fn default_error() -> String {
    "error".into()
}

fn default_warning() -> String {
    "warning".into()
}

/// `[linking]`: how Patients from different sources are recognised as one person.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkingConfig {
    /// Identifier systems that name one person everywhere (national id, insurer member id).
    #[serde(default)]
    pub trusted_systems: Vec<String>,
}

/// `[consent]`: how the patient's Consent resources are enforced.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// Decide every read and write from the patients' Consents (default true).
    #[serde(default = "default_true")]
    pub enforce: bool,
    /// `opt-out` (share unless the patient objected; the default) or `opt-in`.
    #[serde(default = "default_policy")]
    pub default: String,
    /// Answer reads of hidden resources with 403 and the reason (default: 404, as if missing).
    #[serde(default)]
    pub explain_denials: bool,
    /// Tell searchers, neutrally, that something was withheld (default true).
    #[serde(default = "default_true")]
    pub withheld_notice: bool,
    /// Data for a patient with no Consent on file: `accept` (default), `hold` (visible only
    /// to its source until a permitting Consent arrives) or `reject`.
    #[serde(default = "default_without_consent")]
    pub without_consent: String,
    /// Data carrying a label is released redacted to everyone but the listed readers
    /// (`[[consent.redact]] label = "PSYTHPN"`, `except = ["Organization/psychiatry"]`).
    #[serde(default)]
    pub redact: Vec<RedactConfig>,
}

/// `[[consent.redact]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// A security label code (`PSYTHPN`, `ETH`, ...).
    pub label: String,
    /// References (`Organization/…`, `Practitioner/…`, `CareTeam/…`) that see the data whole.
    #[serde(default)]
    pub except: Vec<String>,
}

fn default_without_consent() -> String {
    "accept".into()
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            enforce: true,
            default: default_policy(),
            explain_denials: false,
            withheld_notice: true,
            without_consent: default_without_consent(),
            redact: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_policy() -> String {
    "opt-out".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub id: String,
    /// The Organization the client acts for (`Organization/{id}`).
    pub organization: Option<String>,
    /// SHA-256 (hex) of the client's static bearer token; the token itself is never
    /// stored. Empty (or absent) for a client that only uses SMART or mutual TLS.
    #[serde(default)]
    pub token_sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Purposes of use (v3-ActReason) the client may assert.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// SMART Backend Services: the client's public keys as a JWKS, either a JSON string
    /// (`jwks = '{"keys": [...]}'`) or a TOML table (`[client.jwks]` with `keys = [...]`).
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// SMART Backend Services: where the client publishes its JWKS (fetched and cached).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Mutual TLS: SHA-256 (hex, colons allowed) of the client certificate (DER) that
    /// identifies this client without a bearer token.
    #[serde(default)]
    pub cert_sha256: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_data() -> PathBuf {
    PathBuf::from("caregate-data")
}

fn default_max_body() -> usize {
    16 * 1024 * 1024
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            data: default_data(),
            base_url: None,
            max_body_bytes: default_max_body(),
            workers: None,
            clients: Vec::new(),
            consent: ConsentConfig::default(),
            linking: LinkingConfig::default(),
            tls: None,
            validation: ValidationConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            smart: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    pub fn from_toml(text: &str) -> Result<ServerConfig, ConfigError> {
        let config: ServerConfig = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        self.limits.check().map_err(ConfigError::Invalid)?;
        if !matches!(
            self.consent.without_consent.as_str(),
            "accept" | "hold" | "reject"
        ) {
            return Err(ConfigError::Invalid(format!(
                "consent.without_consent must be \"accept\", \"hold\" or \"reject\", not \"{}\"",
                self.consent.without_consent
            )));
        }
        if !matches!(self.consent.default.as_str(), "opt-out" | "opt-in") {
            return Err(ConfigError::Invalid(format!(
                "consent.default must be \"opt-out\" or \"opt-in\", not \"{}\"",
                self.consent.default
            )));
        }
        for (key, value) in [
            (
                "validation.unknown_profile",
                &self.validation.unknown_profile,
            ),
            (
                "validation.unknown_extension",
                &self.validation.unknown_extension,
            ),
        ] {
            if !matches!(value.as_str(), "error" | "warning") {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be \"error\" or \"warning\", not \"{value}\""
                )));
            }
        }
        for r in &self.validation.require {
            if !caregate_core::is_resource_type(&r.resource) {
                return Err(ConfigError::Invalid(format!(
                    "validation.require: '{}' is not a resource type",
                    r.resource
                )));
            }
            if let Some(c) = &r.client {
                if !self.clients.iter().any(|k| &k.id == c) {
                    return Err(ConfigError::Invalid(format!(
                        "validation.require: client '{c}' is not a configured [[client]]"
                    )));
                }
            }
        }
        for c in &self.clients {
            if !c.token_sha256.is_empty()
                && (c.token_sha256.len() != 64
                    || !c.token_sha256.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(ConfigError::Invalid(format!(
                    "client '{}': token_sha256 must be 64 hex digits (sha256 of the token)",
                    c.id
                )));
            }
            if c.token_sha256.is_empty()
                && c.jwks.is_none()
                && c.jwks_url.is_none()
                && c.cert_sha256.is_none()
            {
                return Err(ConfigError::Invalid(format!(
                    "client '{}': needs a credential: token_sha256, jwks, jwks_url or cert_sha256",
                    c.id
                )));
            }
            if let Some(fp) = &c.cert_sha256 {
                crate::auth::parse_fingerprint(fp).map_err(|e| {
                    ConfigError::Invalid(format!("client '{}': cert_sha256: {e}", c.id))
                })?;
            }
            if let Some(jwks) = &c.jwks {
                crate::smart::Jwks::from_config(jwks)
                    .map_err(|e| ConfigError::Invalid(format!("client '{}': jwks: {e}", c.id)))?;
            }
            if let Some(url) = &c.jwks_url {
                // Keys fetched in the clear could be swapped in transit: plain http only
                // for a key host on this machine (development and tests).
                let ok = reqwest::Url::parse(url).is_ok_and(|u| match u.scheme() {
                    "https" => u.host().is_some(),
                    "http" => matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")),
                    _ => false,
                });
                if !ok {
                    return Err(ConfigError::Invalid(format!(
                        "client '{}': jwks_url must be an https URL (http only for localhost)",
                        c.id
                    )));
                }
            }
            caregate_pipeline::Scopes::parse(c.scopes.iter().map(String::as_str))
                .map_err(|e| ConfigError::Invalid(format!("client '{}': {e}", c.id)))?;
        }
        if let Some(secret) = self.smart.as_ref().and_then(|s| s.token_secret.as_ref()) {
            match hex::decode(secret) {
                Ok(bytes) if bytes.len() >= 32 => {}
                _ => {
                    return Err(ConfigError::Invalid(
                        "smart.token_secret must be at least 32 bytes as hex (64+ hex digits)"
                            .into(),
                    ))
                }
            }
        }
        if self
            .smart
            .as_ref()
            .and_then(|s| s.token_lifetime_secs)
            .is_some_and(|l| l == 0 || l > 300)
        {
            return Err(ConfigError::Invalid(
                "smart.token_lifetime_secs must be between 1 and 300".into(),
            ));
        }
        Ok(())
    }

    /// SMART Backend Services are served when `[smart]` is present or a client has keys.
    pub fn smart_enabled(&self) -> bool {
        !self.development_mode()
            && (self.smart.is_some()
                || self
                    .clients
                    .iter()
                    .any(|c| c.jwks.is_some() || c.jwks_url.is_some()))
    }

    /// Without registered clients the gateway is in local development mode.
    pub fn development_mode(&self) -> bool {
        self.clients.is_empty()
    }
}
