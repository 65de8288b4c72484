//! Who is calling: bearer tokens checked against the client registry.

use caregate_consent::Actor;
use caregate_core::{ErrorKind, FhirError, IssueCode};
use caregate_pipeline::{Caller, Scopes};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ClientConfig;

struct RegisteredClient {
    id: String,
    organization: Option<String>,
    token_hash: [u8; 32],
    scopes: Scopes,
    /// Purposes of use the client may assert; empty means any.
    purposes: Vec<String>,
}

/// The registered clients; empty in local development mode.
pub struct ClientRegistry {
    clients: Vec<RegisteredClient>,
}

impl ClientRegistry {
    pub fn new(clients: &[ClientConfig]) -> Result<ClientRegistry, String> {
        let mut out = Vec::new();
        for c in clients {
            let bytes =
                hex::decode(&c.token_sha256).map_err(|e| format!("client '{}': {e}", c.id))?;
            let token_hash: [u8; 32] = bytes
                .try_into()
                .map_err(|_| format!("client '{}': token_sha256 must be 32 bytes", c.id))?;
            let scopes =
                Scopes::parse(c.scopes.iter().map(String::as_str)).map_err(|e| e.to_string())?;
            out.push(RegisteredClient {
                id: c.id.clone(),
                organization: c.organization.clone(),
                token_hash,
                scopes,
                purposes: c.purposes.clone(),
            });
        }
        Ok(ClientRegistry { clients: out })
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The caller for an `Authorization` header value. In development mode everyone is an
    /// unrestricted anonymous caller.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        purpose: Option<String>,
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
        let token = authorization
            .and_then(|h| {
                let (scheme, token) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized("This gateway requires a bearer token (Authorization: Bearer ...)")
            })?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every client in constant time so timing reveals nothing.
        let mut found = None;
        for c in &self.clients {
            if bool::from(c.token_hash.ct_eq(&hash)) {
                found = Some(c);
            }
        }
        let client = found.ok_or_else(|| unauthorized("The bearer token is not valid"))?;
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
                purpose_of_use: purpose,
                ..Actor::default()
            },
            scopes: Some(client.scopes.clone()),
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
