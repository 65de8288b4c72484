//! Consent decisions: may this caller contribute or see this resource, given the patient's
//! FHIR `Consent` resources? The pipeline asks on every write and every read.
//!
//! [`ConsentEngine`] evaluates R4 Consents (scope `patient-privacy`, status `active`):
//! the root provision's `type` is the base decision and nested provisions are exceptions —
//! the deepest matching provision decides. Within a provision, present elements are ANDed
//! conditions and absent ones wildcards; repeats of one element are ORed. See
//! [`engine`] for the matching rules of each element. A permit may carry obligations
//! ([`Obligation`]): `REDACT` releases the resource as [`redact::redact`] leaves it.

pub mod engine;
pub mod labelling;
pub mod labels;
pub mod redact;

use serde_json::Value;

pub use engine::{
    Combiner, ConsentEngine, ConsentSet, DefaultPolicy, PreparedConsent, RedactionRule,
};
pub use labelling::LabelRules;

/// The `consentaction` a request performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentAction {
    Collect,
    Access,
    Use,
    Disclose,
    Correct,
}

impl ConsentAction {
    pub fn code(self) -> &'static str {
        match self {
            ConsentAction::Collect => "collect",
            ConsentAction::Access => "access",
            ConsentAction::Use => "use",
            ConsentAction::Disclose => "disclose",
            ConsentAction::Correct => "correct",
        }
    }
}

/// Who is asking and why.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// The registered client (`None` in local development mode).
    pub client_id: Option<String>,
    /// The Organization the client acts for, as `Organization/{id}`.
    pub organization: Option<String>,
    /// The acting Practitioner or PractitionerRole, when the token names one.
    pub practitioner: Option<String>,
    /// The CareTeams the organization or practitioner belongs to (`CareTeam/{id}`).
    pub care_teams: Vec<String>,
    /// v3-ActReason code (TREAT, ETREAT, HPAYMT, ...).
    pub purpose_of_use: Option<String>,
}

impl Actor {
    /// Every reference that identifies this actor, for matching `provision.actor.reference`.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.organization
            .iter()
            .chain(self.practitioner.iter())
            .chain(self.care_teams.iter())
            .map(String::as_str)
    }
}

/// One question to the consent engine.
pub struct ConsentRequest<'a> {
    pub actor: &'a Actor,
    pub action: ConsentAction,
    /// The resource written or read.
    pub resource: &'a Value,
    /// The Consents of the resource's patient, compiled ([`ConsentSet::new`] keeps the
    /// active privacy Consents of whatever it is given).
    pub consents: &'a ConsentSet,
    /// The decision time, epoch millis.
    pub now_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Permit,
    Deny,
}

/// Where a decision came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionSource {
    /// A provision of a Consent: `Consent/{id}` and the provision's path.
    Consent { consent: String, provision: String },
    /// No Consent applied; the configured default (or the rule that sensitive data needs an
    /// explicit permit) decided.
    NoApplicableConsent,
    /// An emergency (ETREAT/BTG) purpose overrode the Consents.
    BreakTheGlass,
    /// Consent enforcement is switched off.
    NotEnforced,
}

/// A decision and what it rests on, so it can be explained and audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub source: DecisionSource,
    /// Human-readable basis.
    pub basis: String,
    /// What the gateway must do when it releases the data (only ever set on a permit).
    pub obligations: Vec<Obligation>,
}

/// A condition on a permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obligation {
    /// Release the resource only in its redacted form ([`redact::redact`]), saying why.
    Redact { reason: String },
}

impl Obligation {
    /// The v3-ActCode ObligationPolicy code, for explanations (`$evaluate`).
    pub fn code(&self) -> &'static str {
        match self {
            Obligation::Redact { .. } => "REDACT",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Obligation::Redact { reason } => reason,
        }
    }
}

impl Decision {
    pub fn is_permit(&self) -> bool {
        self.verdict == Verdict::Permit
    }

    /// Whether a permit releases the data only redacted.
    pub fn requires_redaction(&self) -> bool {
        self.is_permit()
            && self
                .obligations
                .iter()
                .any(|o| matches!(o, Obligation::Redact { .. }))
    }
}

pub trait ConsentPolicy: Send + Sync {
    fn decide(&self, request: &ConsentRequest<'_>) -> Decision;

    /// The same decision without its explanation, for the read path's per-resource
    /// filtering: `Some(redact)` when the request is permitted (whole, or only redacted)
    /// other than by emergency access, which must be audited; `None` when the caller needs
    /// the full [`Decision`] (a deny, or break-the-glass). Engines override it to skip
    /// building the explanation text.
    fn quiet_permit(&self, request: &ConsentRequest<'_>) -> Option<bool> {
        let d = self.decide(request);
        (d.is_permit() && d.source != DecisionSource::BreakTheGlass).then(|| d.requires_redaction())
    }

    /// Whether decisions need the patient's Consents and the resource; a policy that permits
    /// everything says `false`, letting the read path skip parsing stored resources.
    fn filters_reads(&self) -> bool {
        true
    }

    /// Whether ordinary (unlabelled) data is released when the patient has no Consent at all.
    fn permits_without_consent(&self) -> bool {
        false
    }

    /// Whether this actor's requests bypass the Consents altogether (emergency access).
    fn overrides_for(&self, _actor: &Actor) -> bool {
        false
    }
}

/// Permits everything. Named so that logs and decisions say plainly that no consent rules
/// were applied.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConsentNotEnforced;

impl ConsentPolicy for ConsentNotEnforced {
    fn decide(&self, _request: &ConsentRequest<'_>) -> Decision {
        Decision {
            verdict: Verdict::Permit,
            source: DecisionSource::NotEnforced,
            basis: "consent enforcement is not enabled on this gateway".into(),
            obligations: Vec::new(),
        }
    }

    fn filters_reads(&self) -> bool {
        false
    }

    fn permits_without_consent(&self) -> bool {
        true
    }

    fn overrides_for(&self, _actor: &Actor) -> bool {
        true
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
            consents: &ConsentSet::default(),
            now_ms: 0,
        });
        assert!(d.is_permit());
        assert_eq!(d.source, DecisionSource::NotEnforced);
        assert!(d.basis.contains("not enabled"));
    }
}
