//! SMART Backend Services (SMART App Launch 2.x, `backend-services.html`): the discovery
//! document, the token endpoint for `client_credentials` with `private_key_jwt` client
//! authentication (RS384 and ES384), and the gateway's own access tokens.
//!
//! - **Assertions** are verified with `ring` against the client's registered JWKS: inline in
//!   the configuration, or fetched from its `jwks_url` and cached (fetched again after
//!   `jwks_cache_secs`, or when an unknown `kid` arrives — at most once per
//!   `jwks_min_refetch_secs` per URL, so a client cannot make the gateway hammer a host).
//!   `iss` = `sub` = client id, `aud` = the token URL, `exp` in the future and at most five
//!   minutes ahead (10 s clock skew allowed), and a `jti` never seen before.
//! - **Replay cache**: the `jti`s are remembered until their assertion expires. The cache
//!   is per node: behind a load balancer an assertion replayed to a *different* node within
//!   its (at most five-minute) lifetime is not detected. Sticky routing of `/auth/token`,
//!   or a single token node, closes that gap.
//! - **Access tokens** are self-contained: `cg1.<base64url(JSON claims)>.<base64url(HMAC)>`
//!   signed with HMAC-SHA256 under `[smart] token_secret`, so any node sharing the secret
//!   verifies them without shared state. They carry the client id, the granted scopes,
//!   the expiry and, when requested, the purpose of use and the acting practitioner.
//! - **Purpose of use and practitioner** are requested with the extra form parameters
//!   `purpose_of_use` (a v3-ActReason code the client is registered for) and
//!   `practitioner` (`Practitioner/{id}` or `PractitionerRole/{id}`) on the token request.
//!   The client is authenticated by its assertion on that same request, so they are as
//!   trustworthy as the client itself; they end up in `Actor.purpose_of_use` and
//!   `Actor.practitioner` for the consent decision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{ClientConfig, ServerConfig};
use crate::AppState;

/// The JWT client-assertion type (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How far client and gateway clocks may disagree, in seconds.
const CLOCK_SKEW: i64 = 10;
/// Assertions may expire at most this far ahead (SMART: five minutes).
const MAX_ASSERTION_LIFETIME: i64 = 300;
/// Largest JWKS document accepted from a `jwks_url`.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Largest token request body.
const MAX_FORM_BYTES: usize = 64 * 1024;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// JWKS

/// A public key from a JWKS that can verify RS384 or ES384 signatures.
#[derive(Debug, Clone)]
enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (`04 || x || y`) on P-384.
    EcP384(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    key: PublicKey,
}

/// A client's public key set.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("a JWKS is an object with a 'keys' array")]
    Shape,
    #[error("key {index}: {reason}")]
    Key { index: usize, reason: String },
}

fn b64_field(key: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = key
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing '{name}'"))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| format!("'{name}' is not base64url: {e}"))
}

impl Jwks {
    /// From the configuration: a JSON string or a TOML table.
    pub fn from_config(value: &Value) -> Result<Jwks, JwksError> {
        match value {
            Value::String(text) => {
                let parsed: Value =
                    serde_json::from_str(text).map_err(|e| JwksError::Json(e.to_string()))?;
                Jwks::parse(&parsed)
            }
            other => Jwks::parse(other),
        }
    }

    /// Keys this gateway cannot use (other key types or curves, encryption keys) are
    /// skipped: a published JWKS often holds more than signing keys.
    pub fn parse(value: &Value) -> Result<Jwks, JwksError> {
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::Shape)?;
        let mut out = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            let bad = |reason: String| JwksError::Key { index, reason };
            if key.get("use").and_then(Value::as_str) == Some("enc") {
                continue;
            }
            let public = match key.get("kty").and_then(Value::as_str) {
                Some("RSA") => PublicKey::Rsa {
                    n: b64_field(key, "n").map_err(bad)?,
                    e: b64_field(key, "e").map_err(bad)?,
                },
                Some("EC") if key.get("crv").and_then(Value::as_str) == Some("P-384") => {
                    let x = b64_field(key, "x").map_err(bad)?;
                    let y = b64_field(key, "y").map_err(bad)?;
                    if x.len() != 48 || y.len() != 48 {
                        return Err(bad("P-384 'x' and 'y' must be 48 bytes each".into()));
                    }
                    let mut point = Vec::with_capacity(97);
                    point.push(4);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    PublicKey::EcP384(point)
                }
                _ => continue,
            };
            out.push(Jwk {
                kid: key.get("kid").and_then(Value::as_str).map(str::to_string),
                alg: key.get("alg").and_then(Value::as_str).map(str::to_string),
                key: public,
            });
        }
        Ok(Jwks { keys: out })
    }

    fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Verifies a JWS signature with a key, for the algorithms SMART names.
fn verify_signature(jwk: &Jwk, alg: &str, message: &[u8], sig: &[u8]) -> Result<(), String> {
    if let Some(key_alg) = &jwk.alg {
        if key_alg != alg {
            return Err(format!(
                "the key is registered for {key_alg}, the assertion is signed with {alg}"
            ));
        }
    }
    let ok = match (&jwk.key, alg) {
        (PublicKey::Rsa { n, e }, "RS384") => signature::RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA384, message, sig)
            .is_ok(),
        (PublicKey::EcP384(point), "ES384") => {
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(message, sig)
                .is_ok()
        }
        _ => {
            return Err(format!(
                "the key with this kid cannot verify {alg} signatures"
            ))
        }
    };
    if ok {
        Ok(())
    } else {
        Err("the assertion's signature does not verify".into())
    }
}

// ---------------------------------------------------------------------------------------
// Scopes

/// One SMART resource scope, as far as intersection needs it.
struct ScopeItem<'a> {
    text: &'a str,
    resource: &'a str,
    bits: u8,
    /// A v2 granular scope (`?category=...`): granted only when registered verbatim.
    granular: bool,
}

const LETTERS: &str = "cruds";
const READ_SEARCH: u8 = 0b10010;
const ALL: u8 = 0b11111;

fn parse_scope(text: &str) -> Option<ScopeItem<'_>> {
    let rest = text.strip_prefix("system/")?;
    let (base, granular) = match rest.split_once('?') {
        Some((b, _)) => (b, true),
        None => (rest, false),
    };
    let (resource, access) = base.split_once('.')?;
    if resource != "*" && !caregate_core::is_resource_type(resource) {
        return None;
    }
    let bits = match access {
        "read" => READ_SEARCH,
        "write" => 0b01101,
        "*" => ALL,
        letters => {
            let mut bits = 0u8;
            let mut last = 0usize;
            for ch in letters.chars() {
                let pos = LETTERS.find(ch)?;
                if bits != 0 && pos <= last {
                    return None;
                }
                last = pos;
                bits |= 1 << pos;
            }
            bits
        }
    };
    (bits != 0).then_some(ScopeItem {
        text,
        resource,
        bits,
        granular,
    })
}

fn v2_scope(resource: &str, bits: u8) -> String {
    let letters: String = LETTERS
        .chars()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, c)| c)
        .collect();
    format!("system/{resource}.{letters}")
}

/// The scopes granted for a request: the intersection of what is requested and what is
/// registered, per resource type and permission letter. A requested scope fully covered
/// keeps its own spelling (v1 or v2); a partly covered one is granted in v2 syntax with
/// the covered letters (`system/Patient.cruds` against `system/*.read` → `system/Patient.rs`).
/// Only `system/` scopes are granted (Backend Services have no user or patient context).
///
/// A registered wildcard does not reach what the pipeline keeps out of wildcards:
/// `AuditEvent` at all and `Consent` beyond read/search — otherwise asking for
/// `system/AuditEvent.rs` with only `system/*.read` registered would mint an explicit
/// audit grant the client was never given.
pub fn grant_scopes(requested: &str, registered: &[String]) -> Vec<String> {
    let registered: Vec<ScopeItem> = registered
        .iter()
        .flat_map(|s| s.split_whitespace())
        .filter_map(parse_scope)
        .collect();
    // (resource, bits, spelling); granular scopes carry no bits (never subsumed).
    let mut granted: Vec<(String, u8, String)> = Vec::new();
    for text in requested.split_whitespace() {
        let Some(req) = parse_scope(text) else {
            continue;
        };
        if req.granular {
            if registered.iter().any(|g| g.text == req.text)
                && !granted.iter().any(|g| g.2 == req.text)
            {
                granted.push((String::new(), 0, req.text.to_string()));
            }
            continue;
        }
        // (resource, bits), merged per resource.
        let mut pieces: Vec<(&str, u8)> = Vec::new();
        for reg in registered.iter().filter(|g| !g.granular) {
            let (resource, mask) = match (reg.resource, req.resource) {
                ("*", "*") => ("*", ALL),
                ("*", "AuditEvent") => continue,
                ("*", "Consent") => ("Consent", READ_SEARCH),
                ("*", r) => (r, ALL),
                (g, "*") => (g, ALL),
                (g, r) if g == r => (g, ALL),
                _ => continue,
            };
            let bits = reg.bits & req.bits & mask;
            if bits == 0 {
                continue;
            }
            match pieces.iter_mut().find(|(r, _)| *r == resource) {
                Some(p) => p.1 |= bits,
                None => pieces.push((resource, bits)),
            }
        }
        for (resource, bits) in pieces {
            let scope = if resource == req.resource && bits == req.bits {
                req.text.to_string()
            } else {
                v2_scope(resource, bits)
            };
            if !granted.iter().any(|g| g.2 == scope) {
                granted.push((resource.to_string(), bits, scope));
            }
        }
    }
    // A type grant that a granted wildcard already covers says nothing more
    // (`system/*.read` with `system/CarePlan.rs`); the types wildcards do not reach stay.
    let wildcard: u8 = granted
        .iter()
        .filter(|g| g.0 == "*")
        .fold(0, |acc, g| acc | g.1);
    granted
        .iter()
        .filter(|(resource, bits, _)| {
            let reach = match resource.as_str() {
                "" | "*" | "AuditEvent" => 0,
                "Consent" => wildcard & READ_SEARCH,
                _ => wildcard,
            };
            *bits == 0 || bits & !reach != 0
        })
        .map(|g| g.2.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Access tokens

const TOKEN_PREFIX: &str = "cg1.";

/// What an access token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The client id.
    pub sub: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_of_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("The access token is not valid")]
    Invalid,
    #[error("The access token has expired")]
    Expired,
}

/// The HMAC key that signs and verifies access tokens.
pub struct TokenKey(ring::hmac::Key);

impl TokenKey {
    pub fn new(secret: &[u8]) -> TokenKey {
        TokenKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// From `[smart] token_secret`, or a random key (logged: tokens then are per node and
    /// per run).
    pub fn from_config(secret: Option<&str>) -> Result<TokenKey, String> {
        match secret {
            Some(hex_secret) => {
                let bytes = hex::decode(hex_secret)
                    .map_err(|e| format!("smart.token_secret is not hex: {e}"))?;
                Ok(TokenKey::new(&bytes))
            }
            None => {
                use ring::rand::SecureRandom;
                let mut bytes = [0u8; 32];
                ring::rand::SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| "no randomness for the token secret".to_string())?;
                tracing::warn!(
                    "smart.token_secret is not configured: access tokens are signed with a random key made at start; they will not survive a restart and other gateway nodes will not accept them"
                );
                Ok(TokenKey::new(&bytes))
            }
        }
    }

    pub fn sign(&self, claims: &AccessClaims) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("{TOKEN_PREFIX}{payload}");
        let tag = ring::hmac::sign(&self.0, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Checks the signature (in constant time, by `ring`) and then the expiry.
    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims, TokenError> {
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let payload = signed
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        ring::hmac::verify(&self.0, signed.as_bytes(), &tag).map_err(|_| TokenError::Invalid)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid)?;
        let claims: AccessClaims =
            serde_json::from_slice(&bytes).map_err(|_| TokenError::Invalid)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Whether a bearer token is one of ours (rather than a static client token).
pub fn is_access_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

// ---------------------------------------------------------------------------------------
// The service

struct SmartClient {
    scopes: Vec<String>,
    purposes: Vec<String>,
    inline: Option<Jwks>,
    jwks_url: Option<String>,
}

/// (client id, jti) → expiry of the assertion that used it.
#[derive(Default)]
struct ReplayCache {
    entries: HashMap<(String, String), i64>,
    next_prune: i64,
}

#[derive(Default)]
struct CachedJwks {
    jwks: Option<Arc<Jwks>>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// The token endpoint's state: registered keys, the JWKS cache and the replay cache.
pub struct SmartService {
    key: Arc<TokenKey>,
    lifetime: i64,
    clients: HashMap<String, SmartClient>,
    /// (client id, jti) → expiry of the assertion that used it.
    seen: Mutex<ReplayCache>,
    jwks_cache: Mutex<HashMap<String, Arc<tokio::sync::Mutex<CachedJwks>>>>,
    cache_ttl: Duration,
    min_refetch: Duration,
    http: reqwest::Client,
}

/// A refused token request: the RFC 6749 §5.2 error code and a description.
#[derive(Debug)]
pub struct OAuthError {
    pub code: &'static str,
    pub description: String,
}

fn invalid_client(description: impl Into<String>) -> OAuthError {
    OAuthError {
        code: "invalid_client",
        description: description.into(),
    }
}

fn invalid_request(description: impl Into<String>) -> OAuthError {
    OAuthError {
        code: "invalid_request",
        description: description.into(),
    }
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
}

/// The token request's parameters.
pub struct TokenRequest<'a> {
    pub form: &'a [(String, String)],
    /// The token URL the assertion's `aud` must name.
    pub token_url: &'a str,
}

impl TokenRequest<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A granted token.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
    /// The client id (not part of the wire format; for logging).
    #[serde(skip)]
    pub client_id: String,
}

impl SmartService {
    pub fn new(config: &ServerConfig, key: Arc<TokenKey>) -> Result<SmartService, String> {
        let smart = config.smart.clone().unwrap_or_default();
        let mut clients = HashMap::new();
        for c in &config.clients {
            clients.insert(c.id.clone(), smart_client(c)?);
        }
        // reqwest is built without a default crypto provider; ring is the one we use.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("SMART: no HTTP client for jwks_url: {e}"))?;
        Ok(SmartService {
            key,
            lifetime: smart.token_lifetime_secs.unwrap_or(300).min(300) as i64,
            clients,
            seen: Mutex::new(ReplayCache::default()),
            jwks_cache: Mutex::new(HashMap::new()),
            cache_ttl: Duration::from_secs(smart.jwks_cache_secs.unwrap_or(3600)),
            min_refetch: Duration::from_secs(smart.jwks_min_refetch_secs.unwrap_or(10)),
            http,
        })
    }

    /// Every scope some client is registered for, for the discovery document.
    fn scopes_supported(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .clients
            .values()
            .flat_map(|c| c.scopes.iter().flat_map(|s| s.split_whitespace()))
            .filter(|s| s.starts_with("system/"))
            .map(str::to_string)
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// `/.well-known/smart-configuration`.
    pub fn configuration(&self, token_url: &str) -> Value {
        json!({
            "token_endpoint": token_url,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": self.scopes_supported(),
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        })
    }

    /// Handles one token request (RFC 6749 §4.4 with RFC 7523 client authentication).
    pub async fn token(&self, request: &TokenRequest<'_>) -> Result<TokenResponse, OAuthError> {
        // RFC 6749 §3.2: request parameters must not be repeated.
        for (i, (name, _)) in request.form.iter().enumerate() {
            if request.form[..i].iter().any(|(n, _)| n == name) {
                return Err(invalid_request(format!(
                    "the parameter '{name}' is repeated"
                )));
            }
        }
        match request.param("grant_type") {
            None => return Err(invalid_request("grant_type is required")),
            Some("client_credentials") => {}
            Some(other) => {
                return Err(OAuthError {
                    code: "unsupported_grant_type",
                    description: format!(
                        "grant_type '{other}' is not supported (only client_credentials)"
                    ),
                })
            }
        }
        match request.param("client_assertion_type") {
            None => return Err(invalid_request("client_assertion_type is required")),
            Some(JWT_BEARER) => {}
            Some(other) => {
                return Err(invalid_client(format!(
                    "client_assertion_type '{other}' is not supported (only {JWT_BEARER})"
                )))
            }
        }
        let assertion = request
            .param("client_assertion")
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid_request("client_assertion is required"))?;
        let scope = request
            .param("scope")
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid_request("scope is required"))?;

        let now = now_secs();
        let (client_id, jti, exp) = self
            .verify_assertion(assertion, request.token_url, now)
            .await?;
        // RFC 7523 §3: a client_id sent alongside must name the assertion's client.
        if request.param("client_id").is_some_and(|id| id != client_id) {
            return Err(invalid_client(
                "client_id differs from the client_assertion's iss",
            ));
        }
        let client = self
            .clients
            .get(&client_id)
            .ok_or_else(|| invalid_client("unknown client"))?;

        let granted = grant_scopes(scope, &client.scopes);
        if granted.is_empty() {
            return Err(OAuthError {
                code: "invalid_scope",
                description: format!(
                    "none of the requested scopes is granted to client '{client_id}'"
                ),
            });
        }
        let purpose_of_use = request
            .param("purpose_of_use")
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        if let Some(p) = &purpose_of_use {
            if !client.purposes.is_empty() && !client.purposes.contains(p) {
                return Err(invalid_request(format!(
                    "client '{client_id}' may not assert the purpose of use '{p}'"
                )));
            }
            if p.len() > 64 || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(invalid_request(
                    "purpose_of_use must be a v3-ActReason code",
                ));
            }
        }
        let practitioner = request
            .param("practitioner")
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        if let Some(p) = &practitioner {
            let valid = p.split_once('/').is_some_and(|(ty, id)| {
                matches!(ty, "Practitioner" | "PractitionerRole") && caregate_core::is_valid_id(id)
            });
            if !valid {
                return Err(invalid_request(
                    "practitioner must be Practitioner/{id} or PractitionerRole/{id}",
                ));
            }
        }

        // Only now, with everything else checked, is the jti spent.
        self.remember_jti(&client_id, jti, exp, now)?;

        let claims = AccessClaims {
            sub: client_id.clone(),
            scope: granted.join(" "),
            exp: now + self.lifetime,
            purpose_of_use,
            practitioner,
        };
        Ok(TokenResponse {
            access_token: self.key.sign(&claims),
            token_type: "bearer",
            expires_in: self.lifetime,
            scope: claims.scope,
            client_id,
        })
    }

    /// Returns (client id, jti, exp) of a valid assertion.
    async fn verify_assertion(
        &self,
        assertion: &str,
        token_url: &str,
        now: i64,
    ) -> Result<(String, String, i64), OAuthError> {
        let mut parts = assertion.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid_client(
                "client_assertion is not a compact JWS (header.claims.signature)",
            ));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| invalid_client(format!("client_assertion {what} is not base64url")))
        };
        let header: JoseHeader = serde_json::from_slice(&decode(h, "header")?)
            .map_err(|_| invalid_client("client_assertion header is not a JSON object"))?;
        let claims: Value = serde_json::from_slice(&decode(c, "claims")?)
            .map_err(|_| invalid_client("client_assertion claims are not JSON"))?;
        let sig = decode(s, "signature")?;
        if !claims.is_object() {
            return Err(invalid_client(
                "client_assertion claims are not a JSON object",
            ));
        }

        let alg = header.alg.as_deref().unwrap_or("");
        if !matches!(alg, "RS384" | "ES384") {
            return Err(invalid_client(format!(
                "client_assertion alg '{alg}' is not allowed (RS384 or ES384)"
            )));
        }
        if header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("JWT"))
        {
            return Err(invalid_client("client_assertion typ must be JWT"));
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or_else(|| invalid_client("client_assertion header has no kid"))?;

        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let iss = text("iss").ok_or_else(|| invalid_client("client_assertion has no iss"))?;
        let sub = text("sub").ok_or_else(|| invalid_client("client_assertion has no sub"))?;
        if iss != sub {
            return Err(invalid_client("client_assertion iss and sub differ"));
        }
        let client = self
            .clients
            .get(iss)
            .ok_or_else(|| invalid_client("client_assertion iss is not a registered client"))?;
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == token_url,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(token_url)),
            _ => false,
        };
        if !aud_ok {
            return Err(invalid_client(format!(
                "client_assertion aud must be the token URL {token_url}"
            )));
        }
        // NumericDate may carry a fraction; whole seconds are enough here.
        let numeric = |name: &str| {
            claims
                .get(name)
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        };
        let exp =
            numeric("exp").ok_or_else(|| invalid_client("client_assertion has no numeric exp"))?;
        if numeric("nbf").is_some_and(|nbf| nbf > now + CLOCK_SKEW) {
            return Err(invalid_client("client_assertion is not valid yet (nbf)"));
        }
        // Saturating: exp is the client's number and may be anything.
        if exp.saturating_add(CLOCK_SKEW) <= now {
            return Err(invalid_client("client_assertion has expired"));
        }
        if exp > now + MAX_ASSERTION_LIFETIME + CLOCK_SKEW {
            return Err(invalid_client(
                "client_assertion exp is more than five minutes in the future",
            ));
        }
        let jti = text("jti")
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| invalid_client("client_assertion has no jti"))?;
        if self.jti_seen(iss, jti) {
            return Err(invalid_client("client_assertion jti has been used before"));
        }

        let message_len = h.len() + 1 + c.len();
        let message = &assertion.as_bytes()[..message_len];
        let jwk = self.key_for(iss, client, &kid).await?;
        verify_signature(&jwk, alg, message, &sig).map_err(invalid_client)?;
        Ok((iss.to_string(), jti.to_string(), exp))
    }

    fn jti_seen(&self, client: &str, jti: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entries
            .contains_key(&(client.to_string(), jti.to_string()))
    }

    /// Records a jti, refusing one seen before (checked again under the lock, so two
    /// concurrent requests with one assertion cannot both pass). Expired entries are
    /// pruned here: an assertion past its `exp` is refused anyway.
    fn remember_jti(
        &self,
        client: &str,
        jti: String,
        exp: i64,
        now: i64,
    ) -> Result<(), OAuthError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Pruning walks every entry, so it runs at most once a second, not per request.
        if now >= seen.next_prune {
            seen.entries
                .retain(|_, e| e.saturating_add(CLOCK_SKEW) > now);
            seen.next_prune = now + 1;
        }
        match seen.entries.entry((client.to_string(), jti)) {
            std::collections::hash_map::Entry::Occupied(_) => {
                Err(invalid_client("client_assertion jti has been used before"))
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(exp);
                Ok(())
            }
        }
    }

    async fn key_for(&self, id: &str, client: &SmartClient, kid: &str) -> Result<Jwk, OAuthError> {
        if let Some(jwks) = &client.inline {
            if let Some(k) = jwks.find(kid) {
                return Ok(k.clone());
            }
        }
        let Some(url) = &client.jwks_url else {
            return Err(invalid_client(if client.inline.is_some() {
                format!("no registered key of client '{id}' has kid '{kid}'")
            } else {
                format!("client '{id}' has no registered keys (jwks or jwks_url)")
            }));
        };
        let entry = {
            let mut cache = self.jwks_cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.entry(url.clone()).or_default().clone()
        };
        // One fetch per URL at a time; other URLs are not held up.
        let mut entry = entry.lock().await;
        let fresh = entry.fetched.is_some_and(|t| t.elapsed() < self.cache_ttl);
        if fresh {
            if let Some(k) = entry.jwks.as_ref().and_then(|j| j.find(kid)) {
                return Ok(k.clone());
            }
        }
        let may_fetch = entry
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.min_refetch);
        let mut fetch_error = None;
        if may_fetch {
            entry.last_attempt = Some(Instant::now());
            match self.fetch_jwks(url).await {
                Ok(jwks) => {
                    entry.jwks = Some(Arc::new(jwks));
                    entry.fetched = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(client = id, error = %e, "jwks_url could not be fetched");
                    fetch_error = Some(e);
                }
            }
        }
        // After a failed fetch the last good key set still serves: an outage of the
        // client's key host should not lock it out while its keys are unchanged.
        if let Some(k) = entry.jwks.as_ref().and_then(|j| j.find(kid)) {
            return Ok(k.clone());
        }
        Err(invalid_client(match fetch_error {
            Some(e) => format!("the JWKS of client '{id}' could not be fetched: {e}"),
            None => format!("no key of client '{id}' has kid '{kid}'"),
        }))
    }

    async fn fetch_jwks(&self, url: &str) -> Result<Jwks, String> {
        let mut response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Jwks::parse(&value).map_err(|e| e.to_string())
    }
}

fn smart_client(c: &ClientConfig) -> Result<SmartClient, String> {
    let inline = c
        .jwks
        .as_ref()
        .map(Jwks::from_config)
        .transpose()
        .map_err(|e| format!("client '{}': jwks: {e}", c.id))?;
    Ok(SmartClient {
        scopes: c.scopes.clone(),
        purposes: c.purposes.clone(),
        inline,
        jwks_url: c.jwks_url.clone(),
    })
}

// ---------------------------------------------------------------------------------------
// HTTP

/// The token URL: `base_url` + `/auth/token`, or this request's own URL without one.
fn token_url(req: &HttpRequest, state: &AppState) -> String {
    format!("{}/auth/token", crate::routes::base_url(req, state))
}

fn not_served() -> HttpResponse {
    crate::format::error_response(
        &caregate_core::FhirError::new(
            caregate_core::ErrorKind::NotFound,
            "SMART Backend Services are not configured on this gateway",
        ),
        crate::format::Rendering {
            format: crate::format::Format::Json,
            pretty: false,
        },
    )
}

/// `GET /.well-known/smart-configuration`
pub async fn smart_configuration(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match &state.smart {
        Some(smart) => HttpResponse::Ok()
            .content_type("application/json")
            .json(smart.configuration(&token_url(&req, &state))),
        None => not_served(),
    }
}

/// Every refusal answers 400 (RFC 6749 §5.2; SMART Backend Services uses 400 for
/// `invalid_client` too, where RFC 6749 would allow 401 with a challenge).
fn oauth_error(e: &OAuthError) -> HttpResponse {
    HttpResponse::BadRequest()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(json!({"error": e.code, "error_description": e.description}))
}

/// `POST /auth/token`
pub async fn token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(smart) = &state.smart else {
        return not_served();
    };
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
        .unwrap_or(false);
    if !form_type {
        return oauth_error(&invalid_request(
            "the token request must be application/x-www-form-urlencoded",
        ));
    }
    let body = match crate::routes::read_body(&req, payload, MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return oauth_error(&invalid_request(
                "the token request body is too large or unreadable",
            ))
        }
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let url = token_url(&req, &state);
    match smart
        .token(&TokenRequest {
            form: &form,
            token_url: &url,
        })
        .await
    {
        Ok(granted) => {
            tracing::info!(client = %granted.client_id, scope = %granted.scope, "SMART access token issued");
            state.pipeline.audit_token_issued(
                &granted.client_id,
                state.clients.organization_of(&granted.client_id),
                &granted.scope,
                req.peer_addr().map(|a| a.ip().to_string()),
                req.extensions()
                    .get::<crate::routes::RequestId>()
                    .map(|r| r.0.clone()),
            );
            HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header((header::PRAGMA, "no-cache"))
                .json(&granted)
        }
        Err(e) => {
            tracing::info!(error = e.code, reason = %e.description, "SMART token request refused");
            if e.code == "invalid_client" {
                // A failed client authentication is a security event, like a bad token.
                let error = caregate_core::FhirError::new(
                    caregate_core::ErrorKind::Unauthorized,
                    format!("token request refused: {}", e.description),
                );
                state.pipeline.audit_rejected_credentials(
                    req.peer_addr().map(|a| a.ip().to_string()),
                    req.extensions()
                        .get::<crate::routes::RequestId>()
                        .map(|r| r.0.clone()),
                    &error,
                );
            }
            oauth_error(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scope_intersection() {
        // v1 request fully covered keeps its spelling.
        assert_eq!(
            grant_scopes("system/*.read", &reg(&["system/*.read"])),
            ["system/*.read"]
        );
        // A wildcard registration narrows to the requested type; letters intersect.
        assert_eq!(
            grant_scopes("system/Patient.cruds", &reg(&["system/*.read"])),
            ["system/Patient.rs"]
        );
        // A wildcard request narrows to the registered types.
        assert_eq!(
            grant_scopes(
                "system/*.rs",
                &reg(&["system/CarePlan.read", "system/Patient.cruds"])
            ),
            ["system/CarePlan.rs", "system/Patient.rs"]
        );
        // v1 write against v2 letters.
        assert_eq!(
            grant_scopes("system/CarePlan.write", &reg(&["system/CarePlan.cu"])),
            ["system/CarePlan.cu"]
        );
        // A wildcard grant makes a covered type grant redundant, not a wider one.
        assert_eq!(
            grant_scopes(
                "system/*.read",
                &reg(&["system/*.read", "system/CarePlan.cruds"])
            ),
            ["system/*.read"]
        );
        assert_eq!(
            grant_scopes(
                "system/*.*",
                &reg(&["system/*.read", "system/CarePlan.cruds"])
            ),
            ["system/*.rs", "system/CarePlan.cruds"]
        );
        // Nothing in common, other contexts and unknown scopes grant nothing.
        assert!(grant_scopes("system/Patient.c", &reg(&["system/*.read"])).is_empty());
        assert!(grant_scopes("patient/*.read openid", &reg(&["system/*.*"])).is_empty());
        assert!(grant_scopes("system/Observation.rs", &reg(&["system/Patient.rs"])).is_empty());
    }

    #[test]
    fn wildcards_do_not_mint_audit_or_consent_management_grants() {
        assert!(grant_scopes("system/AuditEvent.rs", &reg(&["system/*.read"])).is_empty());
        assert_eq!(
            grant_scopes("system/Consent.cruds", &reg(&["system/*.*"])),
            ["system/Consent.rs"]
        );
        assert_eq!(
            grant_scopes(
                "system/AuditEvent.rs",
                &reg(&["system/*.read", "system/AuditEvent.rs"])
            ),
            ["system/AuditEvent.rs"]
        );
        // A wildcard request stays a wildcard: the pipeline applies the same rule to it.
        assert_eq!(
            grant_scopes("system/*.*", &reg(&["system/*.*", "system/Consent.cud"])),
            ["system/*.*", "system/Consent.cud"]
        );
    }

    #[test]
    fn granular_scopes_only_verbatim() {
        let registered = reg(&["system/Observation.rs?category=laboratory"]);
        assert_eq!(
            grant_scopes("system/Observation.rs?category=laboratory", &registered),
            ["system/Observation.rs?category=laboratory"]
        );
        assert!(grant_scopes("system/Observation.rs", &registered).is_empty());
        assert!(grant_scopes("system/Observation.rs?category=vital-signs", &registered).is_empty());
    }

    #[test]
    fn access_tokens_round_trip_and_expire() {
        let key = TokenKey::new(&[7u8; 32]);
        let claims = AccessClaims {
            sub: "hie".into(),
            scope: "system/Patient.rs".into(),
            exp: 1_000,
            purpose_of_use: Some("TREAT".into()),
            practitioner: None,
        };
        let token = key.sign(&claims);
        assert!(is_access_token(&token));
        assert_eq!(key.verify(&token, 999), Ok(claims.clone()));
        assert_eq!(key.verify(&token, 1_000), Err(TokenError::Expired));
        // Another node's key, or a changed payload, does not verify.
        assert_eq!(
            TokenKey::new(&[8u8; 32]).verify(&token, 0),
            Err(TokenError::Invalid)
        );
        let forged = AccessClaims {
            scope: "system/*.*".into(),
            ..claims
        };
        let (_, tag) = token.rsplit_once('.').unwrap();
        let (forged_signed, _) = key
            .sign(&forged)
            .rsplit_once('.')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .unwrap();
        assert_eq!(
            key.verify(&format!("{forged_signed}.{tag}"), 0),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn jwks_parsing_skips_unusable_keys() {
        let jwks = Jwks::parse(&json!({"keys": [
            {"kty": "oct", "k": "AAAA", "kid": "sym"},
            {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "kid": "p256"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "enc", "use": "enc"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "r1"}
        ]}))
        .unwrap();
        assert_eq!(jwks.keys.len(), 1);
        assert!(jwks.find("r1").is_some());
        assert!(Jwks::from_config(&json!("not json")).is_err());
        assert!(Jwks::parse(
            &json!({"keys": [{"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA"}]})
        )
        .is_err());
    }
}
