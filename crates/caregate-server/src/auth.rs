//! Who is calling: a bearer token (a client's static token, or a SMART access token from
//! `POST /auth/token`) or a mutual-TLS client certificate, checked against the client
//! registry.
//!
//! Precedence: a request with an `Authorization` header is authenticated by its token. If
//! it also came over mutual TLS with a certificate registered to a *different* client,
//! it is refused (401) — a token must not be replayed over another client's connection. A
//! request without a token is authenticated by its certificate when the certificate is
//! registered (`cert_sha256`); a verified certificate that maps to no client is 401.

use std::sync::Arc;

use caregate_consent::Actor;
use caregate_core::{ErrorKind, FhirError, IssueCode};
use caregate_pipeline::{Caller, Scopes};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ClientConfig;
use crate::smart::{TokenError, TokenKey};

struct RegisteredClient {
    id: String,
    organization: Option<String>,
    /// SHA-256 of the static bearer token, when the client has one.
    token_hash: Option<[u8; 32]>,
    scopes: Scopes,
    /// Purposes of use the client may assert; empty means any.
    purposes: Vec<String>,
    /// SHA-256 of the client's mutual-TLS certificate (DER).
    cert_sha256: Option<[u8; 32]>,
}

/// The registered clients; empty in local development mode.
pub struct ClientRegistry {
    clients: Vec<RegisteredClient>,
    /// Verifies SMART access tokens (when SMART Backend Services are configured).
    token_key: Option<Arc<TokenKey>>,
}

/// A SHA-256 fingerprint written as hex, optionally with `:` separators.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&digits).map_err(|e| format!("not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| "must be a SHA-256 (32 bytes, 64 hex digits)".to_string())
}

impl ClientRegistry {
    pub fn new(clients: &[ClientConfig]) -> Result<ClientRegistry, String> {
        let mut out = Vec::new();
        for c in clients {
            let token_hash = if c.token_sha256.is_empty() {
                None
            } else {
                let bytes =
                    hex::decode(&c.token_sha256).map_err(|e| format!("client '{}': {e}", c.id))?;
                Some(
                    bytes
                        .try_into()
                        .map_err(|_| format!("client '{}': token_sha256 must be 32 bytes", c.id))?,
                )
            };
            let cert_sha256 = c
                .cert_sha256
                .as_deref()
                .map(parse_fingerprint)
                .transpose()
                .map_err(|e| format!("client '{}': cert_sha256: {e}", c.id))?;
            let scopes =
                Scopes::parse(c.scopes.iter().map(String::as_str)).map_err(|e| e.to_string())?;
            out.push(RegisteredClient {
                id: c.id.clone(),
                organization: c.organization.clone(),
                token_hash,
                scopes,
                purposes: c.purposes.clone(),
                cert_sha256,
            });
        }
        Ok(ClientRegistry {
            clients: out,
            token_key: None,
        })
    }

    /// Accept SMART access tokens signed with this key.
    pub fn with_token_key(mut self, key: Arc<TokenKey>) -> ClientRegistry {
        self.token_key = Some(key);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The Organization a registered client acts for.
    pub fn organization_of(&self, client_id: &str) -> Option<String> {
        self.clients
            .iter()
            .find(|c| c.id == client_id)
            .and_then(|c| c.organization.clone())
    }

    /// The caller for an `Authorization` header value. In development mode everyone is an
    /// unrestricted anonymous caller.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        purpose: Option<String>,
    ) -> Result<Caller, FhirError> {
        self.authenticate_request(authorization, purpose, None)
    }

    /// The caller for a request: its `Authorization` header value, its
    /// `X-Purpose-Of-Use`, and the SHA-256 of the client certificate verified in the TLS
    /// handshake (mutual TLS), if any.
    pub fn authenticate_request(
        &self,
        authorization: Option<&str>,
        purpose: Option<String>,
        client_cert_sha256: Option<&[u8; 32]>,
    ) -> Result<Caller, FhirError> {
        if self.clients.is_empty() {
            return Ok(Caller {
                actor: Actor {
                    purpose_of_use: purpose,
                    ..Actor::default()
                },
                scopes: None,
                ..Caller::default()
            });
        }
        let cert_client = client_cert_sha256.and_then(|fp| {
            // Fingerprints are not secrets, but compare them like tokens all the same.
            let mut found = None;
            for c in &self.clients {
                if c.cert_sha256.is_some_and(|h| bool::from(h.ct_eq(fp))) {
                    found = Some(c);
                }
            }
            found
        });
        let Some(authorization) = authorization else {
            return match (client_cert_sha256, cert_client) {
                (_, Some(client)) => self.caller(client, None, purpose, None),
                (Some(_), None) => Err(unauthorized(
                    "The client certificate is not registered to any client",
                )),
                (None, None) => Err(unauthorized(
                    "This gateway requires a bearer token (Authorization: Bearer ...)",
                )),
            };
        };
        let token = Some(authorization)
            .and_then(|h| {
                let (scheme, token) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized("This gateway requires a bearer token (Authorization: Bearer ...)")
            })?;
        let (client, granted, token_purpose, practitioner) = if crate::smart::is_access_token(token)
        {
            let key = self
                .token_key
                .as_ref()
                .ok_or_else(|| unauthorized("The bearer token is not valid"))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let claims = key.verify(token, now).map_err(|e| match e {
                TokenError::Expired => unauthorized("The access token has expired"),
                TokenError::Invalid => unauthorized("The bearer token is not valid"),
            })?;
            // A client removed from the registry loses its outstanding tokens.
            let client = self
                .clients
                .iter()
                .find(|c| c.id == claims.sub)
                .ok_or_else(|| unauthorized("The bearer token's client is not registered"))?;
            let granted = Scopes::parse(claims.scope.split_whitespace())
                .map_err(|_| unauthorized("The bearer token is not valid"))?;
            (
                client,
                Some(granted),
                claims.purpose_of_use,
                claims.practitioner,
            )
        } else {
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // Compare against every client in constant time so timing reveals nothing.
            let mut found = None;
            for c in &self.clients {
                if c.token_hash.is_some_and(|h| bool::from(h.ct_eq(&hash))) {
                    found = Some(c);
                }
            }
            (
                found.ok_or_else(|| unauthorized("The bearer token is not valid"))?,
                None,
                None,
                None,
            )
        };
        if cert_client.is_some_and(|c| c.id != client.id) {
            return Err(unauthorized(
                "The bearer token and the client certificate belong to different clients",
            ));
        }
        // A purpose fixed in the access token wins; a header may only repeat it.
        let purpose = match (token_purpose, purpose) {
            (Some(t), Some(h)) if t != h => {
                return Err(FhirError::new(
                    ErrorKind::Forbidden,
                    format!(
                        "X-Purpose-Of-Use '{h}' differs from the purpose of use '{t}' the access token was issued for"
                    ),
                )
                .with_code(IssueCode::Forbidden))
            }
            (Some(t), _) => Some(t),
            (None, h) => h,
        };
        self.caller(client, granted, purpose, practitioner)
    }

    fn caller(
        &self,
        client: &RegisteredClient,
        granted: Option<Scopes>,
        purpose: Option<String>,
        practitioner: Option<String>,
    ) -> Result<Caller, FhirError> {
        if let Some(p) = &purpose {
            if !client.purposes.is_empty() && !client.purposes.contains(p) {
                return Err(FhirError::new(
                    ErrorKind::Forbidden,
                    format!(
                        "Client '{}' may not assert the purpose of use '{p}'",
                        client.id
                    ),
                )
                .with_code(IssueCode::Forbidden));
            }
        }
        Ok(Caller {
            actor: Actor {
                client_id: Some(client.id.clone()),
                organization: client.organization.clone(),
                practitioner,
                purpose_of_use: purpose,
                ..Actor::default()
            },
            scopes: Some(granted.unwrap_or_else(|| client.scopes.clone())),
            ..Caller::default()
        })
    }
}

fn unauthorized(message: &str) -> FhirError {
    FhirError::new(ErrorKind::Unauthorized, message).with_code(IssueCode::Login)
}

/// SHA-256 hex of a token, as the configuration stores it.
pub fn token_hash_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smart::AccessClaims;

    const CERT_A: [u8; 32] = [0xaa; 32];
    const CERT_B: [u8; 32] = [0xbb; 32];

    fn registry() -> (ClientRegistry, Arc<TokenKey>) {
        let key = Arc::new(TokenKey::new(&[1u8; 32]));
        let clients = [
            ClientConfig {
                id: "a".into(),
                organization: Some("Organization/a".into()),
                token_sha256: token_hash_hex("a-token"),
                scopes: vec!["system/*.*".into()],
                purposes: vec!["TREAT".into()],
                cert_sha256: Some(hex::encode(CERT_A)),
                ..ClientConfig::default()
            },
            ClientConfig {
                id: "b".into(),
                scopes: vec!["system/*.read".into()],
                cert_sha256: Some(hex::encode(CERT_B)),
                ..ClientConfig::default()
            },
        ];
        let registry = ClientRegistry::new(&clients)
            .expect("registry")
            .with_token_key(key.clone());
        (registry, key)
    }

    fn smart_token(key: &TokenKey, sub: &str, purpose: Option<&str>) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
            + 60;
        let token = key.sign(&AccessClaims {
            sub: sub.into(),
            scope: "system/Patient.rs".into(),
            exp,
            purpose_of_use: purpose.map(str::to_string),
            practitioner: Some("Practitioner/dr-who".into()),
        });
        format!("Bearer {token}")
    }

    fn status(r: Result<Caller, FhirError>) -> ErrorKind {
        r.expect_err("refused").kind
    }

    #[test]
    fn smart_tokens_carry_scopes_purpose_and_practitioner() {
        let (registry, key) = registry();
        let caller = registry
            .authenticate(Some(&smart_token(&key, "a", Some("TREAT"))), None)
            .expect("valid token");
        assert_eq!(caller.actor.client_id.as_deref(), Some("a"));
        assert_eq!(caller.actor.organization.as_deref(), Some("Organization/a"));
        assert_eq!(caller.actor.purpose_of_use.as_deref(), Some("TREAT"));
        assert_eq!(
            caller.actor.practitioner.as_deref(),
            Some("Practitioner/dr-who")
        );
        // The token's scopes, not the client's registered ones.
        let scopes = caller.scopes.expect("scopes");
        assert!(scopes.allows("Patient", caregate_pipeline::Permission::Read));
        assert!(!scopes.allows("CarePlan", caregate_pipeline::Permission::Read));
        // The header may repeat the token's purpose, not change it.
        let token = smart_token(&key, "a", Some("TREAT"));
        assert!(registry
            .authenticate(Some(&token), Some("TREAT".into()))
            .is_ok());
        assert_eq!(
            status(registry.authenticate(Some(&token), Some("HPAYMT".into()))),
            ErrorKind::Forbidden
        );
        // A purpose the client is not (or no longer) registered for.
        assert_eq!(
            status(registry.authenticate(Some(&smart_token(&key, "a", Some("HMARKT"))), None)),
            ErrorKind::Forbidden
        );
        // Without a token key (SMART not configured) our tokens mean nothing.
        let plain = ClientRegistry::new(&[ClientConfig {
            id: "a".into(),
            token_sha256: token_hash_hex("a-token"),
            ..ClientConfig::default()
        }])
        .expect("registry");
        assert_eq!(
            status(plain.authenticate(Some(&smart_token(&key, "a", None)), None)),
            ErrorKind::Unauthorized
        );
    }

    #[test]
    fn client_certificates() {
        let (registry, key) = registry();
        let by_cert = registry
            .authenticate_request(None, None, Some(&CERT_B))
            .expect("registered certificate");
        assert_eq!(by_cert.actor.client_id.as_deref(), Some("b"));
        assert_eq!(
            status(registry.authenticate_request(None, None, Some(&[0xcc; 32]))),
            ErrorKind::Unauthorized
        );
        assert_eq!(
            status(registry.authenticate_request(None, None, None)),
            ErrorKind::Unauthorized
        );
        // A token over the connection of the same client, of no client, of another one.
        assert!(registry
            .authenticate_request(Some("Bearer a-token"), None, Some(&CERT_A))
            .is_ok());
        assert!(registry
            .authenticate_request(Some("Bearer a-token"), None, Some(&[0xcc; 32]))
            .is_ok());
        assert_eq!(
            status(registry.authenticate_request(Some("Bearer a-token"), None, Some(&CERT_B))),
            ErrorKind::Unauthorized
        );
        assert_eq!(
            status(registry.authenticate_request(
                Some(&smart_token(&key, "a", None)),
                None,
                Some(&CERT_B)
            )),
            ErrorKind::Unauthorized
        );
        assert_eq!(parse_fingerprint(&["AB"; 32].join(":")), Ok([0xab; 32]));
        assert!(parse_fingerprint("abcd").is_err());
    }
}
