//! Consent decisions: may this caller contribute or see this resource, given the patient's
//! FHIR `Consent` resources? The pipeline asks on every write and every read.
//!
//! Only the interface and the policy that permits everything exist so far; the Consent
//! engine (provisions, actors, purposes, security labels, break-the-glass) fills in
//! [`ConsentPolicy`] without touching the pipeline or the routes.

use serde_json::Value;

/// The `consentaction` a request performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentAction {
    Collect,
    Access,
    Use,
    Disclose,
    Correct,
}

/// Who is asking and why.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// The registered client (`None` in local development mode).
    pub client_id: Option<String>,
    /// The Organization the client acts for, as `Organization/{id}`.
    pub organization: Option<String>,
    /// v3-ActReason code (TREAT, ETREAT, HPAYMT, ...).
    pub purpose_of_use: Option<String>,
}

/// One question to the consent engine.
pub struct ConsentRequest<'a> {
    pub actor: &'a Actor,
    pub action: ConsentAction,
    /// The resource written or read.
    pub resource: &'a Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Permit,
    Deny,
}

/// A decision and what it rests on, so it can be explained and audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Human-readable basis, e.g. which Consent and provision matched.
    pub basis: String,
}

impl Decision {
    pub fn is_permit(&self) -> bool {
        self.verdict == Verdict::Permit
    }
}

pub trait ConsentPolicy: Send + Sync {
    fn decide(&self, request: &ConsentRequest<'_>) -> Decision;

    /// Whether reads must be decided resource by resource. A policy that permits every
    /// read says `false`, letting the read path skip parsing stored resources.
    fn filters_reads(&self) -> bool {
        true
    }
}

/// Permits everything: the behaviour until Consent evaluation is configured. Named so that
/// logs and decisions say plainly that no consent rules were applied.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConsentNotEnforced;

impl ConsentPolicy for ConsentNotEnforced {
    fn decide(&self, _request: &ConsentRequest<'_>) -> Decision {
        Decision {
            verdict: Verdict::Permit,
            basis: "consent enforcement is not enabled on this gateway".into(),
        }
    }

    fn filters_reads(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_enforced_permits_and_says_why() {
        let actor = Actor::default();
        let r = serde_json::json!({"resourceType": "Patient"});
        let d = ConsentNotEnforced.decide(&ConsentRequest {
            actor: &actor,
            action: ConsentAction::Access,
            resource: &r,
        });
        assert!(d.is_permit());
        assert!(d.basis.contains("not enabled"));
    }
}
