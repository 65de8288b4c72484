//! Consent on the pipeline's paths: gathers what the engine needs (the patient's Consents,
//! the caller's CareTeams) once per request, asks, and remembers what must be audited as a
//! security alert (denials and break-the-glass).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use caregate_audit::{patient_reference, Subtype};
use caregate_consent::{
    Actor, ConsentAction, ConsentRequest, ConsentSet, Decision, DecisionSource, PreparedConsent,
    Verdict,
};
use caregate_core::FhirResult;
use serde_json::Value;

use crate::write::parse_record;
use crate::{store_error, Caller, Pipeline};

/// Compiled Consents by the SHA-256 of their stored content (`None`: the version never
/// applies — inactive, another scope). Content-addressed, so it is shared safely by every
/// pipeline in the process and never stale: a new version has a new hash. Cleared when it
/// grows past [`PREPARED_LIMIT`] entries.
type PreparedCache = parking_lot::Mutex<HashMap<String, Option<Arc<PreparedConsent>>>>;

const PREPARED_LIMIT: usize = 100_000;

fn prepared(record: &caregate_store::VersionRecord) -> FhirResult<Option<Arc<PreparedConsent>>> {
    static CACHE: OnceLock<PreparedCache> = OnceLock::new();
    if record.hash.is_empty() {
        // Nothing to key on: compile without caching.
        return Ok(PreparedConsent::prepare(&parse_record(record)?).map(Arc::new));
    }
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().get(&record.hash) {
        return Ok(hit.clone());
    }
    // Parsed and compiled outside the lock; a concurrent miss compiles the same thing twice.
    let compiled = PreparedConsent::prepare(&parse_record(record)?).map(Arc::new);
    let mut cache = cache.lock();
    if cache.len() >= PREPARED_LIMIT {
        cache.clear();
    }
    cache.insert(record.hash.clone(), compiled.clone());
    Ok(compiled)
}

/// Patients' compiled Consents, kept across requests so that a page of reads costs one
/// map lookup rather than a store query. Any Consent write drops them all; the generation
/// makes sure a set read from the store before that write is not cached after it. Like
/// the "any Consents" flag this is per process: gateway nodes sharing a database need a
/// store-side signal instead.
#[derive(Default)]
pub(crate) struct ConsentSets {
    inner: parking_lot::Mutex<(u64, HashMap<String, Arc<ConsentSet>>)>,
}

/// Patients whose Consents are kept at most; beyond that the cache starts over.
const CONSENT_SETS_LIMIT: usize = 100_000;

impl ConsentSets {
    /// The cached set, or the generation to pass to [`ConsentSets::insert`].
    fn get(&self, patient: &str) -> Result<Arc<ConsentSet>, u64> {
        let inner = self.inner.lock();
        inner.1.get(patient).cloned().ok_or(inner.0)
    }

    fn insert(&self, generation: u64, patient: &str, set: Arc<ConsentSet>) {
        let mut inner = self.inner.lock();
        if inner.0 != generation {
            return;
        }
        if inner.1.len() >= CONSENT_SETS_LIMIT {
            inner.1.clear();
        }
        inner.1.insert(patient.to_string(), set);
    }

    fn invalidate(&self) {
        let mut inner = self.inner.lock();
        inner.0 += 1;
        inner.1.clear();
    }
}

/// How one resource may be released to a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    Hidden,
    Whole,
    /// Only as [`caregate_consent::redact::redact`] leaves it.
    Redacted,
}

impl Release {
    fn of(decision: &Decision) -> Release {
        if !decision.is_permit() {
            Release::Hidden
        } else if decision.requires_redaction() {
            Release::Redacted
        } else {
            Release::Whole
        }
    }
}

/// Consent state for one request.
pub(crate) struct ConsentScope<'p> {
    pipeline: &'p Pipeline,
    enforced: bool,
    actor: Actor,
    /// The caller's CareTeams are yet to be looked up.
    care_teams_pending: bool,
    /// Who contributes or holds data on this caller's behalf (organization or client).
    contributor: String,
    /// The patient's Consents specialised for this caller, per patient and action.
    consents: HashMap<String, Vec<(ConsentAction, Arc<ConsentSet>)>>,
    /// (basis, patient) of decisions to audit as security alerts.
    alerts: Vec<(String, Option<String>)>,
    now_ms: i64,
    /// How many Consent resources the store holds (looked up once per request).
    consent_count: Option<u64>,
}

impl Pipeline {
    pub(crate) fn consent_scope(&self, caller: &Caller) -> FhirResult<ConsentScope<'_>> {
        let enforced = self.stages.consent.filters_reads();
        let actor = caller.actor.clone();
        Ok(ConsentScope {
            pipeline: self,
            enforced,
            // CareTeam membership counts as the actor, but is looked up only when a
            // Consent of the patient names a CareTeam.
            care_teams_pending: enforced && actor.care_teams.is_empty(),
            contributor: contributor_of(&actor),
            actor,
            consents: HashMap::new(),
            alerts: Vec::new(),
            now_ms: chrono::Utc::now().timestamp_millis(),
            consent_count: None,
        })
    }
}

impl ConsentScope<'_> {
    /// Adds the CareTeams the caller's organization or practitioner participates in.
    fn load_care_teams(&mut self) -> FhirResult<()> {
        self.care_teams_pending = false;
        let members: Vec<String> = self
            .actor
            .organization
            .iter()
            .chain(self.actor.practitioner.iter())
            .cloned()
            .collect();
        for member in members {
            let params = vec![("participant".to_string(), member)];
            let mut parsed = self
                .pipeline
                .search
                .parse(Some("CareTeam"), &params, true)?;
            parsed.query.count = 200;
            parsed.query.total = false;
            for team in self
                .pipeline
                .store
                .search(&parsed.query)
                .map_err(store_error)?
                .matches
            {
                self.actor.care_teams.push(format!("CareTeam/{}", team.id));
            }
        }
        Ok(())
    }
}

impl ConsentScope<'_> {
    pub(crate) fn enforced(&self) -> bool {
        self.enforced
    }

    /// True when no patient has any Consent: then every decision is the default one and
    /// per-patient lookups can be skipped.
    pub(crate) fn no_consents_anywhere(&mut self) -> FhirResult<bool> {
        if self.consent_count.is_none() {
            self.consent_count = Some(if self.pipeline.any_consents()? { 1 } else { 0 });
        }
        Ok(self.consent_count == Some(0))
    }

    pub(crate) fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The patient's Consents, compiled: fetched once per request, compiled once per
    /// Consent version (see [`prepared`]).
    fn consents_of(&mut self, patient: &str) -> FhirResult<Arc<ConsentSet>> {
        if self.no_consents_anywhere()? {
            return Ok(Arc::default());
        }
        let sets = &self.pipeline.consent_sets;
        let generation = match sets.get(patient) {
            Ok(set) => return Ok(set),
            Err(generation) => generation,
        };
        let params = vec![("patient".to_string(), patient.to_string())];
        let mut parsed = self.pipeline.search.parse(Some("Consent"), &params, true)?;
        parsed.query.count = 200;
        parsed.query.total = false;
        let records = self
            .pipeline
            .store
            .search(&parsed.query)
            .map_err(store_error)?
            .matches;
        let mut compiled = Vec::with_capacity(records.len());
        for record in &records {
            if let Some(c) = prepared(record)? {
                compiled.push(c);
            }
        }
        let set = Arc::new(ConsentSet::from_prepared(compiled));
        sets.insert(generation, patient, set.clone());
        Ok(set)
    }

    /// Whether the resource's patient has any Consent: only then can a decision depend on
    /// more than the resource's type, `meta` (labels, held tag) and subject.
    pub(crate) fn patient_has_consents(&mut self, resource: &Value) -> FhirResult<bool> {
        if !self.enforced || self.no_consents_anywhere()? {
            return Ok(false);
        }
        match patient_reference(resource) {
            Some(p) => Ok(!self.consents_of(&p)?.is_empty()),
            None => Ok(false),
        }
    }

    /// The patient's Consents with their request-level conditions (actor, purpose, action,
    /// period) evaluated once for this caller, so each resource is decided on its own facts.
    fn consents_for(
        &mut self,
        patient: &str,
        action: ConsentAction,
    ) -> FhirResult<Arc<ConsentSet>> {
        if let Some((_, set)) = self
            .consents
            .get(patient)
            .and_then(|sets| sets.iter().find(|(a, _)| *a == action))
        {
            return Ok(set.clone());
        }
        let set = self.consents_of(patient)?;
        if self.care_teams_pending && set.names_care_teams() {
            self.load_care_teams()?;
        }
        let set = Arc::new(set.for_request(&self.actor, action, self.now_ms));
        self.consents
            .entry(patient.to_string())
            .or_default()
            .push((action, set.clone()));
        Ok(set)
    }

    /// The engine's decision for one resource.
    pub(crate) fn decide(
        &mut self,
        action: ConsentAction,
        resource: &Value,
    ) -> FhirResult<Decision> {
        let patient = patient_reference(resource);
        let consents = self.consents_about(patient.as_deref(), action)?;
        Ok(self.decide_with(action, resource, patient.map(Cow::into_owned), &consents))
    }

    fn consents_about(
        &mut self,
        patient: Option<&str>,
        action: ConsentAction,
    ) -> FhirResult<Arc<ConsentSet>> {
        match patient {
            Some(p) if self.enforced => self.consents_for(p, action),
            _ => Ok(Arc::default()),
        }
    }

    fn decide_with(
        &mut self,
        action: ConsentAction,
        resource: &Value,
        patient: Option<String>,
        consents: &ConsentSet,
    ) -> Decision {
        let mut decision = self.pipeline.stages.consent.decide(&ConsentRequest {
            actor: &self.actor,
            action,
            resource,
            consents,
            now_ms: self.now_ms,
        });
        // Break-the-glass opens the patient's record to that client for a while: later
        // requests inside the window need not repeat the emergency purpose, but each one is
        // still a security alert.
        if let Some(p) = &patient {
            let who = &self.contributor;
            if decision.source == DecisionSource::BreakTheGlass {
                self.pipeline.grant_emergency_access(who, p, self.now_ms);
            } else if !decision.is_permit()
                && matches!(action, ConsentAction::Access | ConsentAction::Use)
                && self
                    .pipeline
                    .emergency_access_until(who, p, self.now_ms)
                    .is_some()
            {
                decision = Decision {
                    verdict: Verdict::Permit,
                    source: DecisionSource::BreakTheGlass,
                    basis: format!(
                        "emergency access granted earlier to {who} for {p} is still open"
                    ),
                    obligations: Vec::new(),
                };
            }
        }
        let alert = matches!(
            (&decision.verdict, &decision.source),
            (_, DecisionSource::BreakTheGlass) | (Verdict::Deny, DecisionSource::Consent { .. })
        );
        if alert
            && !self
                .alerts
                .iter()
                .any(|(b, p)| *b == decision.basis && *p == patient)
        {
            self.alerts.push((decision.basis.clone(), patient));
        }
        decision
    }

    /// How this resource may be released to the reader: hidden, whole, or redacted (a
    /// permit with a `REDACT` obligation). Held data is shown to its source, and to others
    /// only under a permitting Consent.
    pub(crate) fn release_of(&mut self, resource: &Value) -> FhirResult<Release> {
        if !self.enforced {
            return Ok(Release::Whole);
        }
        if let Some(contributor) = held_by(resource) {
            if contributor == self.contributor {
                return Ok(Release::Whole);
            }
            let d = self.decide(ConsentAction::Access, resource)?;
            if !(d.is_permit() && matches!(d.source, DecisionSource::Consent { .. })) {
                return Ok(Release::Hidden);
            }
            return Ok(Release::of(&d));
        }
        let patient = patient_reference(resource);
        let consents = self.consents_about(patient.as_deref(), ConsentAction::Access)?;
        // Most reads are plain permits: answered without building an explanation. Denials
        // and emergency access take the explained path, which audits them.
        let request = ConsentRequest {
            actor: &self.actor,
            action: ConsentAction::Access,
            resource,
            consents: &consents,
            now_ms: self.now_ms,
        };
        if let Some(redact) = self.pipeline.stages.consent.quiet_permit(&request) {
            return Ok(if redact {
                Release::Redacted
            } else {
                Release::Whole
            });
        }
        let d = self.decide_with(
            ConsentAction::Access,
            resource,
            patient.map(Cow::into_owned),
            &consents,
        );
        Ok(Release::of(&d))
    }

    /// May this resource be shown whole? Callers that cannot show a redacted copy (the
    /// care-plan view, subscription deliveries) use this and leave redacted data out.
    pub(crate) fn readable(&mut self, resource: &Value) -> FhirResult<bool> {
        Ok(self.release_of(resource)? == Release::Whole)
    }

    /// The resource as this reader may see it: `None` when hidden, redacted when a permit
    /// says so.
    pub(crate) fn visible(&mut self, mut resource: Value) -> FhirResult<Option<Value>> {
        match self.release_of(&resource)? {
            Release::Hidden => Ok(None),
            Release::Whole => Ok(Some(resource)),
            Release::Redacted => {
                caregate_consent::redact::redact(&mut resource);
                Ok(Some(resource))
            }
        }
    }

    /// Writes one security-alert AuditEvent per distinct denial or emergency access.
    pub(crate) fn audit_alerts(&mut self, caller: &Caller, subtype: Subtype) {
        let alerts = std::mem::take(&mut self.alerts);
        let entries: Vec<_> = alerts
            .into_iter()
            .map(|(basis, patient)| {
                let mut e = self.pipeline.audit_entry(caller, subtype);
                e.patient = patient;
                e.security_alert = Some(basis);
                e
            })
            .collect();
        if !entries.is_empty() {
            self.pipeline.audit_async(&entries);
        }
    }
}

impl Pipeline {
    /// Whether `caller` may see `resource` under the patient's consent (for deliveries made
    /// on a subscriber's behalf).
    pub fn may_see(&self, caller: &Caller, resource: &Value) -> FhirResult<bool> {
        let mut scope = self.consent_scope(caller)?;
        scope.readable(resource)
    }
}

impl Pipeline {
    /// Whether the store holds any Consent (counted once, then kept up to date by writes).
    pub(crate) fn any_consents(&self) -> FhirResult<bool> {
        use std::sync::atomic::Ordering;
        match self.consents_exist.load(Ordering::Acquire) {
            1 => return Ok(false),
            2 => return Ok(true),
            _ => {}
        }
        let mut q = caregate_store::SearchQuery::new(Some("Consent"));
        q.count = 0;
        q.total = true;
        let count = self
            .store
            .search(&q)
            .map_err(store_error)?
            .total
            .unwrap_or(0);
        // A Consent written meanwhile has already set "some"; never overwrite that.
        let _ = self.consents_exist.compare_exchange(
            0,
            if count > 0 { 2 } else { 1 },
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        Ok(self.consents_exist.load(Ordering::Acquire) == 2)
    }

    /// Called for every committed Consent (create, update, delete, in Bundles too).
    pub(crate) fn consent_written(&self) {
        self.consent_sets.invalidate();
        self.consents_exist
            .store(2, std::sync::atomic::Ordering::Release);
    }
}

impl Pipeline {
    /// `POST /Consent/$evaluate`: the decision the engine would make, and why — for
    /// integrators and auditors. Parameters in: `patient` (Reference), `actor`
    /// (Reference, repeatable: Organization, Practitioner or CareTeam), `action` (code),
    /// `purpose` (code), and `resource` (a resource) or `type` (code) with `label`s
    /// (Coding, repeatable). Out: `decision`, `source`, `basis`, `consent`, `provision`, and one
    /// `obligation` (parts `code`, `reason`) per obligation of a permit.
    pub fn evaluate_consent(&self, caller: &Caller, parameters: &Value) -> FhirResult<Value> {
        use caregate_core::{ErrorKind, FhirError};
        use serde_json::json;
        caller.require("Consent", crate::Permission::Read)?;
        let params = parameters
            .get("parameter")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        fn named<'a>(params: &'a [Value], name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
            params
                .iter()
                .filter(move |p| p.get("name").and_then(Value::as_str) == Some(name))
        }
        let bad = |what: &str| {
            FhirError::at(
                ErrorKind::BadRequest,
                "Parameters.parameter",
                what.to_string(),
            )
        };
        let patient = named(params, "patient")
            .find_map(|p| {
                p.pointer("/valueReference/reference")
                    .and_then(Value::as_str)
            })
            .ok_or_else(|| bad("$evaluate needs a 'patient' reference"))?
            .to_string();
        let action = match named(params, "action")
            .find_map(|p| p.get("valueCode").and_then(Value::as_str))
            .unwrap_or("access")
        {
            "collect" => ConsentAction::Collect,
            "access" => ConsentAction::Access,
            "use" => ConsentAction::Use,
            "disclose" => ConsentAction::Disclose,
            "correct" => ConsentAction::Correct,
            other => return Err(bad(&format!("'{other}' is not a consentaction code"))),
        };
        let mut actor = Actor {
            purpose_of_use: named(params, "purpose")
                .find_map(|p| p.get("valueCode").and_then(Value::as_str))
                .map(str::to_string),
            ..Actor::default()
        };
        for reference in named(params, "actor").filter_map(|p| {
            p.pointer("/valueReference/reference")
                .and_then(Value::as_str)
        }) {
            match reference.split('/').next() {
                Some("Organization") => actor.organization = Some(reference.to_string()),
                Some("CareTeam") => actor.care_teams.push(reference.to_string()),
                _ => actor.practitioner = Some(reference.to_string()),
            }
        }
        let resource = match named(params, "resource").find_map(|p| p.get("resource")) {
            Some(r) => {
                let mut r = r.clone();
                // The decision is about this patient's data, whatever the sample says.
                if r.get("resourceType").and_then(Value::as_str) != Some("Patient") {
                    r["subject"] = json!({"reference": patient});
                }
                r
            }
            None => {
                let rtype = named(params, "type")
                    .find_map(|p| p.get("valueCode").and_then(Value::as_str))
                    .ok_or_else(|| bad("$evaluate needs a 'resource' or a 'type'"))?;
                let labels: Vec<Value> = named(params, "label")
                    .filter_map(|p| p.get("valueCoding").cloned())
                    .collect();
                let mut r = json!({"resourceType": rtype, "subject": {"reference": patient}});
                if !labels.is_empty() {
                    r["meta"] = json!({"security": labels});
                }
                r
            }
        };
        let probe = Caller {
            actor,
            ..Caller::default()
        };
        let mut scope = self.consent_scope(&probe)?;
        // The caller asked about someone else's access: no alerts for a hypothetical.
        let decision = scope.decide(action, &resource)?;
        let (source, consent, provision) = match &decision.source {
            DecisionSource::Consent { consent, provision } => {
                ("consent", Some(consent.clone()), Some(provision.clone()))
            }
            DecisionSource::NoApplicableConsent => ("no-consent", None, None),
            DecisionSource::BreakTheGlass => ("break-the-glass", None, None),
            DecisionSource::NotEnforced => ("not-enforced", None, None),
        };
        let mut out = vec![
            json!({"name": "decision", "valueCode": if decision.is_permit() { "permit" } else { "deny" }}),
            json!({"name": "source", "valueCode": source}),
            json!({"name": "basis", "valueString": decision.basis}),
        ];
        if let Some(c) = consent {
            out.push(json!({"name": "consent", "valueReference": {"reference": c}}));
        }
        if let Some(p) = provision {
            out.push(json!({"name": "provision", "valueString": p}));
        }
        for o in &decision.obligations {
            out.push(json!({"name": "obligation", "part": [
                {"name": "code", "valueCoding": {"system": caregate_consent::labels::OBLIGATION, "code": o.code()}},
                {"name": "reason", "valueString": o.reason()}
            ]}));
        }
        Ok(json!({"resourceType": "Parameters", "parameter": out}))
    }
}

/// Marks data held until the patient's consent arrives (`meta.tag`), naming its source.
const HOLD_SYSTEM: &str = "https://caregate.example.org/fhir/CodeSystem/held-by";

fn contributor_of(actor: &Actor) -> String {
    actor
        .organization
        .clone()
        .or_else(|| actor.client_id.clone())
        .unwrap_or_else(|| "local".into())
}

pub(crate) fn mark_held(resource: &mut Value, actor: &Actor) {
    let tag = serde_json::json!({"system": HOLD_SYSTEM, "code": contributor_of(actor), "display": "held until the patient's consent is on file"});
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj.entry("meta").or_insert_with(|| serde_json::json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| serde_json::json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(tag);
        }
    }
}

fn held_by(resource: &Value) -> Option<&str> {
    resource
        .get("meta")?
        .get("tag")?
        .as_array()?
        .iter()
        .find(|t| t.get("system").and_then(Value::as_str) == Some(HOLD_SYSTEM))
        .and_then(|t| t.get("code").and_then(Value::as_str))
}

/// How long a break-the-glass grant stays open.
pub const EMERGENCY_ACCESS_MS: i64 = 60 * 60 * 1000;

impl Pipeline {
    fn grant_emergency_access(&self, who: &str, patient: &str, now_ms: i64) {
        let mut grants = self.emergency_grants.lock();
        grants.retain(|_, until| *until > now_ms);
        grants.insert(
            (who.to_string(), patient.to_string()),
            now_ms + EMERGENCY_ACCESS_MS,
        );
    }

    fn emergency_access_until(&self, who: &str, patient: &str, now_ms: i64) -> Option<i64> {
        self.emergency_grants
            .lock()
            .get(&(who.to_string(), patient.to_string()))
            .copied()
            .filter(|until| *until > now_ms)
    }

    /// Open break-the-glass grants, for auditors (an explicit AuditEvent grant).
    pub fn emergency_grants_for(&self, caller: &Caller) -> FhirResult<Vec<(String, String, i64)>> {
        caller.require("AuditEvent", crate::Permission::Read)?;
        Ok(self.emergency_grants())
    }

    /// Open break-the-glass grants: (client or organisation, patient, open until, epoch ms).
    pub fn emergency_grants(&self) -> Vec<(String, String, i64)> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut out: Vec<(String, String, i64)> = self
            .emergency_grants
            .lock()
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|((who, patient), until)| (who.clone(), patient.clone(), *until))
            .collect();
        out.sort();
        out
    }
}

/// The caregate Consent profile (`profiles/caregate/StructureDefinition-caregate-consent.json`):
/// what the engine needs from a Consent to decide anything.
pub const CONSENT_PROFILE: &str =
    "http://caregate.example/fhir/StructureDefinition/caregate-consent";

/// Wraps the validation stage so that every Consent written is also checked against
/// [`CONSENT_PROFILE`]; its errors answer 422 naming the element.
pub(crate) fn with_consent_profile(
    inner: std::sync::Arc<dyn crate::Validator>,
) -> std::sync::Arc<dyn crate::Validator> {
    std::sync::Arc::new(ConsentProfileCheck(inner))
}

struct ConsentProfileCheck(std::sync::Arc<dyn crate::Validator>);

impl crate::Validator for ConsentProfileCheck {
    fn validate(&self, resource: &Value) -> Vec<caregate_core::Issue> {
        self.0.validate(resource)
    }

    fn validate_write(&self, client: Option<&str>, resource: &Value) -> crate::Verdict {
        let is_consent = resource.get("resourceType").and_then(Value::as_str) == Some("Consent");
        if !is_consent {
            return self.0.validate_write(client, resource);
        }
        self.0
            .validate_write_also(client, resource, &[CONSENT_PROFILE.to_string()])
    }

    fn validate_against(&self, resource: &Value, profiles: &[String]) -> Vec<caregate_core::Issue> {
        self.0.validate_against(resource, profiles)
    }
}
