//! SMART scopes (v1 `system/Patient.read`, v2 `system/CarePlan.cruds`) and the check the
//! pipeline makes before each interaction — inside the pipeline, so every entry of a Bundle
//! is checked like a single request.

use caregate_core::{ErrorKind, FhirError, FhirResult, IssueCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    fn bit(self) -> u8 {
        match self {
            Permission::Create => 1,
            Permission::Read => 2,
            Permission::Update => 4,
            Permission::Delete => 8,
            Permission::Search => 16,
        }
    }

    fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }
}

/// The resource-level grants a client holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    /// (resource type or `*`, permission bits)
    grants: Vec<(String, u8)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "'{0}' is not a SMART resource scope (expected e.g. system/Patient.read or system/CarePlan.rs)"
)]
pub struct ScopeError(pub String);

impl Scopes {
    /// Parses space- or list-separated scopes. Scopes that are not resource scopes
    /// (`openid`, `launch/patient`, ...) are kept out of the grants.
    pub fn parse<'a>(scopes: impl IntoIterator<Item = &'a str>) -> Result<Scopes, ScopeError> {
        let mut grants = Vec::new();
        for scope in scopes.into_iter().flat_map(str::split_whitespace) {
            let Some((context, rest)) = scope.split_once('/') else {
                continue;
            };
            if !matches!(context, "system" | "user" | "patient") {
                continue;
            }
            let rest = rest.split('?').next().unwrap_or(rest);
            let (ty, access) = rest
                .split_once('.')
                .ok_or_else(|| ScopeError(scope.to_string()))?;
            if ty != "*" && !caregate_core::is_resource_type(ty) {
                return Err(ScopeError(scope.to_string()));
            }
            let bits = match access {
                "read" => Permission::Read.bit() | Permission::Search.bit(),
                "write" => {
                    Permission::Create.bit() | Permission::Update.bit() | Permission::Delete.bit()
                }
                "*" => 31,
                letters => {
                    let mut bits = 0;
                    let mut last = 0usize;
                    for ch in letters.chars() {
                        // v2 letters must appear in c-r-u-d-s order.
                        let pos = "cruds"
                            .find(ch)
                            .ok_or_else(|| ScopeError(scope.to_string()))?;
                        if pos < last && bits != 0 {
                            return Err(ScopeError(scope.to_string()));
                        }
                        last = pos;
                        bits |= 1 << pos;
                    }
                    if bits == 0 {
                        return Err(ScopeError(scope.to_string()));
                    }
                    bits
                }
            };
            grants.push((ty.to_string(), bits));
        }
        Ok(Scopes { grants })
    }

    pub fn allows(&self, resource_type: &str, permission: Permission) -> bool {
        // The audit trail is for auditors, recording a patient's consent is for consent
        // management, and deciding that two records are (not) one person is for identity
        // management (a wrong link shows one person's record to another's team): a
        // wildcard grant reaches neither AuditEvent nor writes of Consent or Linkage; only
        // an explicit grant (system/AuditEvent.rs, system/Consent.cud, system/Linkage.cu)
        // does.
        let wildcard_applies = match resource_type {
            "AuditEvent" => false,
            "Consent" | "Linkage" => matches!(permission, Permission::Read | Permission::Search),
            _ => true,
        };
        self.grants.iter().any(|(ty, bits)| {
            ((ty == "*" && wildcard_applies) || ty == resource_type) && bits & permission.bit() != 0
        })
    }

    /// The intersection with another grant set (what a token may hold of what is registered).
    pub fn intersect(&self, other: &Scopes) -> Scopes {
        let mut grants = Vec::new();
        for (ty, bits) in &self.grants {
            for (oty, obits) in &other.grants {
                let t = match (ty.as_str(), oty.as_str()) {
                    ("*", o) => o,
                    (s, "*") => s,
                    (s, o) if s == o => s,
                    _ => continue,
                };
                if bits & obits != 0 {
                    grants.push((t.to_string(), bits & obits));
                }
            }
        }
        Scopes { grants }
    }
}

/// Checks a caller's scopes; `None` means unrestricted (local development mode).
pub(crate) fn require(
    scopes: Option<&Scopes>,
    resource_type: &str,
    permission: Permission,
) -> FhirResult<()> {
    match scopes {
        None => Ok(()),
        Some(s) if s.allows(resource_type, permission) => Ok(()),
        Some(_) => Err(FhirError::new(
            ErrorKind::Forbidden,
            format!(
                "This client's scopes do not allow '{}' on {resource_type} (needs e.g. system/{resource_type}.{})",
                format!("{permission:?}").to_lowercase(),
                permission.letter()
            ),
        )
        .with_code(IssueCode::Forbidden)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_scopes() {
        let s = Scopes::parse(["system/*.read system/CarePlan.write", "openid"]).unwrap();
        assert!(s.allows("Patient", Permission::Read));
        assert!(s.allows("Patient", Permission::Search));
        assert!(!s.allows("Patient", Permission::Create));
        assert!(s.allows("CarePlan", Permission::Create));
        let v2 = Scopes::parse(["system/CarePlan.rs"]).unwrap();
        assert!(v2.allows("CarePlan", Permission::Search));
        assert!(!v2.allows("CarePlan", Permission::Update));
        assert!(!v2.allows("Patient", Permission::Read));
        assert!(Scopes::parse(["system/CarePlan.sr"]).is_err());
        assert!(Scopes::parse(["system/Nope.read"]).is_err());
        assert!(require(Some(&v2), "Patient", Permission::Read).is_err());
        assert!(require(None, "Patient", Permission::Delete).is_ok());
    }

    #[test]
    fn audit_and_consent_management_need_explicit_grants() {
        let all = Scopes::parse(["system/*.*"]).unwrap();
        assert!(!all.allows("AuditEvent", Permission::Read));
        assert!(all.allows("Consent", Permission::Read));
        assert!(!all.allows("Consent", Permission::Create));
        let manager = Scopes::parse(["system/*.*", "system/Consent.cud"]).unwrap();
        assert!(manager.allows("Consent", Permission::Create));
        assert!(manager.allows("Consent", Permission::Delete));
        assert!(all.allows("Linkage", Permission::Search));
        assert!(!all.allows("Linkage", Permission::Create));
        assert!(!all.allows("Linkage", Permission::Update));
        let linker = Scopes::parse(["system/*.*", "system/Linkage.cu"]).unwrap();
        assert!(linker.allows("Linkage", Permission::Update));
        assert!(!linker.allows("Linkage", Permission::Delete));
    }

    #[test]
    fn intersection() {
        let registered = Scopes::parse(["system/*.read"]).unwrap();
        let requested = Scopes::parse(["system/Patient.cruds"]).unwrap();
        let granted = registered.intersect(&requested);
        assert!(granted.allows("Patient", Permission::Read));
        assert!(!granted.allows("Patient", Permission::Create));
        assert!(!granted.allows("CarePlan", Permission::Read));
    }
}
