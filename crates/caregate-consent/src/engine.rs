//! The Consent engine.
//!
//! Matching a provision against a request (each present element is a condition):
//! - `period`: the decision time lies inside it;
//! - `actor`: one actor's `reference` is the caller's organization, practitioner, or a
//!   CareTeam the caller belongs to. The entry's `role` (required by R4) is not a condition:
//!   a request carries no role to compare it with, and Consents in the field name recipients
//!   with `IRCP`/`PRCP` for contributions too;
//! - `action`: one coding equals the request's `consentaction`;
//! - `purpose`: one coding equals the caller's purpose of use;
//! - `securityLabel`: one label is on the resource. Confidentiality codes are a high-water
//!   mark: a *permit* at level N covers data labelled up to N; a *deny* at level R covers
//!   data labelled R or above. Obligation codes (v3-ActCode `REDACT`, `MASK`) are not
//!   conditions: a permit that carries one releases the data redacted (see [`crate::redact`]);
//! - `class`: the resource type (`resource-types`) or one of its `meta.profile`s;
//! - `code`: a coding of the resource's `code` (or `medicationCodeableConcept`, `vaccineCode`);
//! - `dataPeriod`: the resource's clinical date lies inside it;
//! - `data`: `instance` (this resource), `related`/`dependents` (it references the data),
//!   `authoredby` (the data authored it).
//!
//! Combining Consents: by default the most recent `dateTime` wins for ordinary data (see
//! [`Combiner`]); for data labelled 42CFRPart2, SUD or ETH any deny wins. Without an
//! applicable Consent the configured default applies — but data labelled PSY, PSYTHPN,
//! ETH/SUD/42CFRPart2 or HIV is only released by a permit whose provision (or an enclosing
//! one) names each of those sensitivity categories the data carries.

use std::cell::OnceCell;

use caregate_core::parse_date_range;
use serde_json::Value;

use crate::labels::{self, CONFIDENTIALITY};
use crate::{
    Actor, ConsentAction, ConsentPolicy, ConsentRequest, Decision, DecisionSource, Obligation,
    Verdict,
};

/// What happens when no Consent applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Share unless the patient objected (sensitive data still needs an explicit permit).
    OptOut,
    /// Share only what the patient permitted.
    OptIn,
}

/// How the outcomes of several applicable Consents combine for ordinary data. Data labelled
/// 42CFRPart2, SUD or ETH always combines by [`Combiner::DenyOverrides`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Combiner {
    /// The Consent with the latest `dateTime` decides (a deny wins a tie).
    #[default]
    MostRecent,
    /// Any deny wins.
    DenyOverrides,
}

/// A configured redaction: data carrying `label` is released only redacted, except to the
/// actors listed (e.g. psychotherapy notes, PSYTHPN, whole only to the psychiatry practice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactionRule {
    pub label: String,
    /// References (`Organization/…`, `Practitioner/…`, `CareTeam/…`) that see the data whole.
    pub except: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ConsentEngine {
    pub default: DefaultPolicy,
    /// Purposes of use that break the glass (emergency access), if the caller may assert them.
    pub break_glass_purposes: Vec<String>,
    pub combiner: Combiner,
    pub redaction: Vec<RedactionRule>,
}

impl Default for ConsentEngine {
    fn default() -> Self {
        ConsentEngine {
            default: DefaultPolicy::OptOut,
            break_glass_purposes: vec!["ETREAT".into(), "BTG".into()],
            combiner: Combiner::MostRecent,
            redaction: Vec::new(),
        }
    }
}

/// Sensitivity categories as bits: a permit must name every category the data carries.
/// ETH, SUD and 42CFRPart2 are one category (substance use).
fn sensitivity_bit(code: &str) -> u8 {
    match code {
        "PSY" => 1,
        "PSYTHPN" => 2,
        "ETH" | "SUD" | "42CFRPart2" => 4,
        "HIV" => 8,
        _ => 0,
    }
}

/// Obligation codes that may appear in `provision.securityLabel` (v3-ActCode
/// ObligationPolicy): both mean "release only redacted" here.
const REDACT_CODES: [&str; 2] = ["REDACT", "MASK"];

fn is_obligation(system: &str, code: &str) -> bool {
    REDACT_CODES.contains(&code) && (system.is_empty() || system == labels::OBLIGATION)
}

/// What a provision inherits from the one enclosing it.
#[derive(Clone, Copy)]
struct Parent {
    depth: usize,
    verdict: Verdict,
    named: u8,
}

/// The outcome of one provision tree.
struct Matched {
    verdict: Verdict,
    /// Child indexes from the root provision to the deciding one.
    path: Vec<usize>,
    /// Sensitivity categories named by the deciding provision or an enclosing one.
    named: u8,
    /// The deciding provision carries a redaction obligation.
    redact: bool,
}

impl Matched {
    fn path_string(&self) -> String {
        let mut s = String::from("Consent.provision");
        for i in &self.path {
            s.push_str(&format!(".provision[{i}]"));
        }
        s
    }
}

/// Everything about the request the provisions test, extracted once per decision so that a
/// patient with many provisions does not re-walk the resource for each.
struct Facts<'a> {
    resource: &'a Value,
    action: ConsentAction,
    purpose: Option<&'a str>,
    now_ms: i64,
    actor_refs: Vec<&'a str>,
    rtype: &'a str,
    me: Option<String>,
    profiles: Vec<&'a str>,
    labels: Vec<(&'a str, &'a str)>,
    level: u8,
    /// Sensitivity categories a release must be explicitly permitted for.
    required: u8,
    codes: Vec<(&'a str, &'a str)>,
    clinical_date: Option<i64>,
    refs: OnceCell<Vec<String>>,
}

impl<'a> Facts<'a> {
    fn of(req: &ConsentRequest<'a>) -> Facts<'a> {
        let resource = req.resource;
        let labels = labels::security_labels(resource);
        let releasing = is_release(req.action);
        let required = if releasing {
            labels.iter().fold(0, |m, (_, c)| m | sensitivity_bit(c))
        } else {
            0
        };
        let mut codes = Vec::new();
        for key in ["code", "medicationCodeableConcept", "vaccineCode"] {
            if let Some(cc) = resource.get(key) {
                for c in cc
                    .get("coding")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    if let Some(code) = c.get("code").and_then(Value::as_str) {
                        codes.push((c.get("system").and_then(Value::as_str).unwrap_or(""), code));
                    }
                }
            }
        }
        Facts {
            resource,
            action: req.action,
            purpose: req.actor.purpose_of_use.as_deref(),
            now_ms: req.now_ms,
            actor_refs: req.actor.references().map(strip_base).collect(),
            rtype: resource
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or(""),
            me: resource_reference(resource),
            profiles: resource
                .pointer("/meta/profile")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|p| p.split('|').next().unwrap_or(p))
                        .collect()
                })
                .unwrap_or_default(),
            level: labels::confidentiality_of(resource),
            labels,
            required,
            codes,
            clinical_date: clinical_date(resource),
            refs: OnceCell::new(),
        }
    }

    fn refs(&self) -> &[String] {
        self.refs.get_or_init(|| {
            let mut out = Vec::new();
            all_references(self.resource, &mut out);
            out
        })
    }

    fn sensitive_codes(&self) -> Vec<&'a str> {
        self.labels
            .iter()
            .map(|(_, c)| *c)
            .filter(|c| sensitivity_bit(c) & self.required != 0)
            .collect()
    }

    fn part2(&self) -> bool {
        self.required & 4 != 0
    }
}

fn is_release(action: ConsentAction) -> bool {
    matches!(
        action,
        ConsentAction::Access | ConsentAction::Use | ConsentAction::Disclose
    )
}

/// Calls `f` with each (system, code) of an array of Codings or of CodeableConcepts.
fn each_code<'a>(v: &'a Value, key: &str, mut f: impl FnMut(&'a str, &'a str) -> bool) -> bool {
    for item in v
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        match item.get("coding").and_then(Value::as_array) {
            Some(codings) => {
                for c in codings {
                    if let Some(code) = c.get("code").and_then(Value::as_str) {
                        if f(c.get("system").and_then(Value::as_str).unwrap_or(""), code) {
                            return true;
                        }
                    }
                }
            }
            None => {
                if let Some(code) = item.get("code").and_then(Value::as_str) {
                    if f(
                        item.get("system").and_then(Value::as_str).unwrap_or(""),
                        code,
                    ) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

fn in_period(period: &Value, at_ms: i64) -> bool {
    let start = period
        .get("start")
        .and_then(Value::as_str)
        .and_then(parse_date_range);
    let end = period
        .get("end")
        .and_then(Value::as_str)
        .and_then(parse_date_range);
    start.is_none_or(|s| at_ms >= s.start) && end.is_none_or(|e| at_ms < e.end)
}

fn strip_base(reference: &str) -> &str {
    // `https://x/fhir/Organization/1` and `Organization/1` name the same thing here.
    let parts: Vec<&str> = reference.rsplitn(3, '/').collect();
    if parts.len() == 3 && reference.contains("://") {
        let len = parts[0].len() + parts[1].len() + 1;
        &reference[reference.len() - len..]
    } else {
        reference
    }
}

fn resource_reference(resource: &Value) -> Option<String> {
    Some(format!(
        "{}/{}",
        resource.get("resourceType")?.as_str()?,
        resource.get("id")?.as_str()?
    ))
}

fn all_references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x {
                    Value::String(s) if k == "reference" => out.push(strip_base(s).to_string()),
                    _ => all_references(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| all_references(x, out)),
        _ => {}
    }
}

fn clinical_date(resource: &Value) -> Option<i64> {
    let candidates = [
        "/effectiveDateTime",
        "/effectivePeriod/start",
        "/onsetDateTime",
        "/authoredOn",
        "/recordedDate",
        "/occurrenceDateTime",
        "/performedDateTime",
        "/period/start",
        "/issued",
        "/date",
        "/created",
        "/meta/lastUpdated",
    ];
    candidates
        .iter()
        .find_map(|p| resource.pointer(p).and_then(Value::as_str))
        .and_then(parse_date_range)
        .map(|r| r.start)
}

impl ConsentEngine {
    fn provision_matches(&self, p: &Value, f: &Facts<'_>, verdict: Verdict) -> bool {
        if let Some(period) = p.get("period") {
            if !in_period(period, f.now_ms) {
                return false;
            }
        }
        if let Some(actors) = p.get("actor").and_then(Value::as_array) {
            let hit = actors.iter().any(|a| {
                a.pointer("/reference/reference")
                    .and_then(Value::as_str)
                    .map(strip_base)
                    .is_some_and(|r| f.actor_refs.contains(&r))
            });
            if !hit {
                return false;
            }
        }
        if p.get("action").is_some() && !each_code(p, "action", |_, c| c == f.action.code()) {
            return false;
        }
        if p.get("purpose").is_some() {
            let Some(purpose) = f.purpose else {
                return false;
            };
            if !each_code(p, "purpose", |_, c| c == purpose) {
                return false;
            }
        }
        if p.get("securityLabel").is_some() {
            let mut conditions = false;
            let hit = each_code(p, "securityLabel", |system, code| {
                if is_obligation(system, code) {
                    return false;
                }
                conditions = true;
                match labels::confidentiality_rank(code)
                    .filter(|_| system.is_empty() || system == CONFIDENTIALITY)
                {
                    // The high-water mark follows the provision's effective type.
                    Some(rank) => match verdict {
                        Verdict::Deny => f.level >= rank,
                        Verdict::Permit => f.level <= rank,
                    },
                    None => f.labels.iter().any(|(s, c)| {
                        *c == code && (system.is_empty() || s.is_empty() || *s == system)
                    }),
                }
            });
            // A securityLabel holding only obligation codes sets no condition.
            if conditions && !hit {
                return false;
            }
        }
        if p.get("class").is_some()
            && !each_code(p, "class", |_, c| {
                c == f.rtype || f.profiles.contains(&c.split('|').next().unwrap_or(c))
            })
        {
            return false;
        }
        if p.get("code").is_some()
            && !each_code(p, "code", |s, c| {
                f.codes
                    .iter()
                    .any(|(rs, rc)| *rc == c && (s.is_empty() || *rs == s))
            })
        {
            return false;
        }
        if let Some(dp) = p.get("dataPeriod") {
            match f.clinical_date {
                Some(at) if in_period(dp, at) => {}
                _ => return false,
            }
        }
        if let Some(data) = p.get("data").and_then(Value::as_array) {
            let hit = data.iter().any(|d| {
                let Some(target) = d
                    .pointer("/reference/reference")
                    .and_then(Value::as_str)
                    .map(strip_base)
                else {
                    return false;
                };
                match d.get("meaning").and_then(Value::as_str) {
                    Some("instance") => f.me.as_deref() == Some(target),
                    Some("related") | Some("dependents") => {
                        f.me.as_deref() == Some(target) || f.refs().iter().any(|r| r == target)
                    }
                    Some("authoredby") => {
                        ["author", "recorder", "requester", "asserter", "performer"]
                            .iter()
                            .any(|k| {
                                let mut authors = Vec::new();
                                if let Some(v) = f.resource.get(*k) {
                                    all_references(v, &mut authors);
                                }
                                authors.iter().any(|a| a == target)
                            })
                    }
                    _ => false,
                }
            });
            if !hit {
                return false;
            }
        }
        true
    }

    /// The deepest matching provision under (and including) `p`.
    fn evaluate(
        &self,
        p: &Value,
        path: &mut Vec<usize>,
        parent: Parent,
        f: &Facts<'_>,
    ) -> Option<Matched> {
        let verdict = match p.get("type").and_then(Value::as_str) {
            Some("permit") => Verdict::Permit,
            Some("deny") => Verdict::Deny,
            // An untyped nested provision refines its parent's decision.
            _ => parent.verdict,
        };
        if !self.provision_matches(p, f, verdict) {
            return None;
        }
        let mut named = parent.named;
        let mut redact = false;
        each_code(p, "securityLabel", |system, code| {
            named |= sensitivity_bit(code);
            redact |= is_obligation(system, code);
            false
        });
        let mut best = Matched {
            verdict,
            path: path.clone(),
            named,
            redact,
        };
        let mut best_depth = parent.depth;
        for (i, child) in p
            .get("provision")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            path.push(i);
            let inner = Parent {
                depth: parent.depth + 1,
                verdict,
                named,
            };
            let found = self.evaluate(child, path, inner, f);
            path.pop();
            if let Some(m) = found {
                let depth = m.path.len();
                // Deeper wins; at equal depth a deny wins.
                if depth > best_depth
                    || (depth == best_depth
                        && m.verdict == Verdict::Deny
                        && best.verdict == Verdict::Permit)
                {
                    best = m;
                    best_depth = depth;
                }
            }
        }
        Some(best)
    }

    fn applicable(consent: &Value) -> bool {
        consent.get("resourceType").and_then(Value::as_str) == Some("Consent")
            && consent.get("status").and_then(Value::as_str) == Some("active")
            && consent
                .pointer("/scope/coding")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.get("code").and_then(Value::as_str) == Some("patient-privacy"))
                })
    }

    /// Redactions the configured rules require for this release.
    fn rule_obligations(&self, f: &Facts<'_>, actor: &Actor) -> Vec<Obligation> {
        self.redaction
            .iter()
            .filter(|r| f.labels.iter().any(|(_, c)| *c == r.label))
            .filter(|r| {
                !actor
                    .references()
                    .any(|a| r.except.iter().any(|e| strip_base(e) == strip_base(a)))
            })
            .map(|r| Obligation::Redact {
                reason: format!(
                    "data labelled {} is released to this reader only redacted",
                    r.label
                ),
            })
            .collect()
    }
}

/// One Consent's outcome: (dateTime, `Consent/{id}`, matched provision).
struct Outcome {
    when: i64,
    consent: String,
    m: Matched,
}

impl ConsentPolicy for ConsentEngine {
    fn permits_without_consent(&self) -> bool {
        self.default == DefaultPolicy::OptOut
    }

    fn overrides_for(&self, actor: &crate::Actor) -> bool {
        actor
            .purpose_of_use
            .as_deref()
            .is_some_and(|p| self.break_glass_purposes.iter().any(|b| b == p))
    }

    fn decide(&self, req: &ConsentRequest<'_>) -> Decision {
        if let Some(purpose) = req.actor.purpose_of_use.as_deref() {
            if self.break_glass_purposes.iter().any(|p| p == purpose)
                && matches!(req.action, ConsentAction::Access | ConsentAction::Use)
            {
                return Decision {
                    verdict: Verdict::Permit,
                    source: DecisionSource::BreakTheGlass,
                    basis: format!("emergency access (purpose {purpose}) overrides the patient's consent; this access raises a security alert"),
                    obligations: Vec::new(),
                };
            }
        }
        // Sensitivity rules govern release; collecting or correcting labelled data is
        // decided like any other data.
        let f = Facts::of(req);
        let part2 = f.part2();
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut path = Vec::new();
        for consent in req.consents.iter().filter(|c| Self::applicable(c)) {
            let Some(root) = consent.get("provision") else {
                continue;
            };
            let base = match root.get("type").and_then(Value::as_str) {
                Some("permit") => Verdict::Permit,
                _ => Verdict::Deny,
            };
            let parent = Parent {
                depth: 0,
                verdict: base,
                named: 0,
            };
            path.clear();
            if let Some(m) = self.evaluate(root, &mut path, parent, &f) {
                outcomes.push(Outcome {
                    when: consent
                        .get("dateTime")
                        .and_then(Value::as_str)
                        .and_then(parse_date_range)
                        .map_or(i64::MIN, |r| r.start),
                    consent: resource_reference(consent)
                        .unwrap_or_else(|| "Consent (no id)".into()),
                    m,
                });
            }
        }
        let combiner = if part2 {
            Combiner::DenyOverrides
        } else {
            self.combiner
        };
        let latest = |o: &&Outcome| o.when;
        let latest_deny = outcomes
            .iter()
            .filter(|o| o.m.verdict == Verdict::Deny)
            .max_by_key(latest);
        let chosen = match combiner {
            Combiner::DenyOverrides => latest_deny.or_else(|| outcomes.iter().max_by_key(latest)),
            // Most recent wins; on equal dateTime a deny wins.
            Combiner::MostRecent => outcomes.iter().max_by(|a, b| {
                a.when
                    .cmp(&b.when)
                    .then((a.m.verdict == Verdict::Deny).cmp(&(b.m.verdict == Verdict::Deny)))
            }),
        };
        let explicit = |o: &Outcome| f.required & !o.m.named == 0;
        // A permit that does not name the data's sensitivity yields to one (not overruled by
        // a later deny) that does: both permit, and only the latter covers this data.
        let chosen = match chosen {
            Some(c) if c.m.verdict == Verdict::Permit && !explicit(c) => Some(
                outcomes
                    .iter()
                    .filter(|o| o.m.verdict == Verdict::Permit && explicit(o))
                    .filter(|o| latest_deny.is_none_or(|d| o.when >= d.when))
                    .max_by_key(latest)
                    .unwrap_or(c),
            ),
            other => other,
        };
        match chosen {
            Some(o) => {
                let source = DecisionSource::Consent {
                    consent: o.consent.clone(),
                    provision: o.m.path_string(),
                };
                if o.m.verdict == Verdict::Permit && !explicit(o) {
                    return Decision {
                        verdict: Verdict::Deny,
                        source,
                        basis: format!(
                            "{} permits at {}, but the data is labelled {} and no provision names that label explicitly",
                            o.consent,
                            o.m.path_string(),
                            f.sensitive_codes().join(", ")
                        ),
                        obligations: Vec::new(),
                    };
                }
                let mut obligations = Vec::new();
                if o.m.verdict == Verdict::Permit {
                    if o.m.redact && is_release(req.action) {
                        obligations.push(Obligation::Redact {
                            reason: format!(
                                "{} at {} permits this data only redacted",
                                o.consent,
                                o.m.path_string()
                            ),
                        });
                    }
                    if is_release(req.action) {
                        obligations.extend(self.rule_obligations(&f, req.actor));
                    }
                }
                Decision {
                    verdict: o.m.verdict,
                    basis: format!(
                        "{} {} at {}{}",
                        o.consent,
                        if o.m.verdict == Verdict::Permit {
                            "permits"
                        } else {
                            "denies"
                        },
                        o.m.path_string(),
                        if part2 {
                            " (42 CFR Part 2 data: deny overrides)"
                        } else {
                            ""
                        }
                    ),
                    source,
                    obligations,
                }
            }
            None if f.required != 0 => Decision {
                verdict: Verdict::Deny,
                source: DecisionSource::NoApplicableConsent,
                basis: format!(
                    "no consent applies and the data is labelled {}, which needs the patient's explicit permit",
                    f.sensitive_codes().join(", ")
                ),
                obligations: Vec::new(),
            },
            None => {
                let permit = self.default == DefaultPolicy::OptOut;
                Decision {
                    verdict: if permit { Verdict::Permit } else { Verdict::Deny },
                    source: DecisionSource::NoApplicableConsent,
                    basis: format!(
                        "no consent applies; the gateway's default policy is {}",
                        if permit {
                            "opt-out (share)"
                        } else {
                            "opt-in (do not share)"
                        }
                    ),
                    obligations: if permit && is_release(req.action) {
                        self.rule_obligations(&f, req.actor)
                    } else {
                        Vec::new()
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Actor;
    use serde_json::json;

    const NOW: &str = "2025-06-01T00:00:00Z";

    fn now() -> i64 {
        parse_date_range(NOW).map(|r| r.start).unwrap_or_default()
    }

    fn consent(id: &str, date: &str, provision: Value) -> Value {
        json!({
            "resourceType": "Consent", "id": id, "status": "active", "dateTime": date,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient/p"},
            "provision": provision
        })
    }

    fn clinic() -> Actor {
        Actor {
            organization: Some("Organization/clinic".into()),
            purpose_of_use: Some("TREAT".into()),
            care_teams: vec!["CareTeam/team".into()],
            ..Actor::default()
        }
    }

    fn decide(
        engine: &ConsentEngine,
        actor: &Actor,
        resource: &Value,
        consents: &[Value],
    ) -> Decision {
        engine.decide(&ConsentRequest {
            actor,
            action: ConsentAction::Access,
            resource,
            consents,
            now_ms: now(),
        })
    }

    fn condition(labels: &[&str]) -> Value {
        let security: Vec<Value> = labels
            .iter()
            .map(|c| json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": c}))
            .collect();
        json!({"resourceType": "Condition", "id": "c1", "meta": {"security": security},
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]},
               "subject": {"reference": "Patient/p"}, "recordedDate": "2024-02-01"})
    }

    #[test]
    fn root_deny_with_nested_permit_for_an_actor() {
        let c = consent(
            "c",
            "2025-01-01",
            json!({"type": "deny", "provision": [
                {"type": "permit", "actor": [{"role": {"text": "recipient"}, "reference": {"reference": "Organization/clinic"}}],
                 "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}]}
            ]}),
        );
        let e = ConsentEngine::default();
        let d = decide(&e, &clinic(), &condition(&[]), std::slice::from_ref(&c));
        assert!(d.is_permit(), "{d:?}");
        assert_eq!(
            d.source,
            DecisionSource::Consent {
                consent: "Consent/c".into(),
                provision: "Consent.provision.provision[0]".into()
            }
        );
        let other = Actor {
            organization: Some("Organization/other".into()),
            ..Actor::default()
        };
        let d = decide(&e, &other, &condition(&[]), &[c]);
        assert!(!d.is_permit());
        assert_eq!(
            d.source,
            DecisionSource::Consent {
                consent: "Consent/c".into(),
                provision: "Consent.provision".into()
            }
        );
    }

    #[test]
    fn care_team_membership_and_purpose() {
        let c = consent(
            "c",
            "2025-01-01",
            json!({"type": "deny", "provision": [
                {"type": "permit", "actor": [{"reference": {"reference": "CareTeam/team"}}],
                 "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}
            ]}),
        );
        let e = ConsentEngine::default();
        assert!(decide(&e, &clinic(), &condition(&[]), std::slice::from_ref(&c)).is_permit());
        let mut payer = clinic();
        payer.purpose_of_use = Some("HPAYMT".into());
        assert!(!decide(&e, &payer, &condition(&[]), &[c]).is_permit());
    }

    #[test]
    fn sensitive_data_needs_an_explicit_permit() {
        let e = ConsentEngine::default();
        // No consent: ordinary data follows opt-out, SUD data stays hidden.
        assert!(decide(&e, &clinic(), &condition(&[]), &[]).is_permit());
        let d = decide(&e, &clinic(), &condition(&["SUD", "42CFRPart2"]), &[]);
        assert!(!d.is_permit());
        assert_eq!(d.source, DecisionSource::NoApplicableConsent);
        // A blanket permit does not release it; one naming the label does.
        let blanket = consent("b", "2025-01-01", json!({"type": "permit"}));
        assert!(!decide(
            &e,
            &clinic(),
            &condition(&["SUD"]),
            std::slice::from_ref(&blanket)
        )
        .is_permit());
        let explicit = consent(
            "x",
            "2025-02-01",
            json!({"type": "deny", "provision": [
                {"type": "permit", "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUD"}],
                 "actor": [{"reference": {"reference": "Organization/clinic"}}]}
            ]}),
        );
        assert!(decide(
            &e,
            &clinic(),
            &condition(&["SUD"]),
            std::slice::from_ref(&explicit)
        )
        .is_permit());
        // For Part 2 data any deny wins, even an older one.
        let older_deny = consent("d", "2024-01-01", json!({"type": "deny"}));
        assert!(!decide(
            &e,
            &clinic(),
            &condition(&["SUD", "42CFRPart2"]),
            &[explicit.clone(), older_deny.clone()]
        )
        .is_permit());
        // For ordinary data the most recent wins.
        assert!(decide(&e, &clinic(), &condition(&[]), &[blanket, older_deny]).is_permit());
    }

    #[test]
    fn opt_in_periods_classes_and_inactive_consents() {
        let e = ConsentEngine {
            default: DefaultPolicy::OptIn,
            ..ConsentEngine::default()
        };
        assert!(!decide(&e, &clinic(), &condition(&[]), &[]).is_permit());
        let expired = consent(
            "e",
            "2024-01-01",
            json!({"type": "permit", "period": {"end": "2024-12-31"}}),
        );
        assert!(!decide(
            &e,
            &clinic(),
            &condition(&[]),
            std::slice::from_ref(&expired)
        )
        .is_permit());
        let mut inactive = consent("i", "2025-01-01", json!({"type": "permit"}));
        inactive["status"] = json!("inactive");
        assert!(!decide(&e, &clinic(), &condition(&[]), &[inactive]).is_permit());
        let conditions_only = consent(
            "k",
            "2025-01-01",
            json!({"type": "deny", "provision": [
                {"type": "permit", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]}
            ]}),
        );
        assert!(decide(
            &e,
            &clinic(),
            &condition(&[]),
            std::slice::from_ref(&conditions_only)
        )
        .is_permit());
        let plan =
            json!({"resourceType": "CarePlan", "id": "cp", "subject": {"reference": "Patient/p"}});
        assert!(!decide(&e, &clinic(), &plan, &[conditions_only]).is_permit());
    }

    #[test]
    fn confidentiality_is_a_high_water_mark_and_data_periods_apply() {
        let e = ConsentEngine::default();
        let up_to_normal = consent(
            "n",
            "2025-01-01",
            json!({"type": "deny", "provision": [
                {"type": "permit", "securityLabel": [{"system": CONFIDENTIALITY, "code": "N"}]}
            ]}),
        );
        let mut restricted = condition(&[]);
        restricted["meta"]["security"] = json!([{"system": CONFIDENTIALITY, "code": "R"}]);
        let mut normal = condition(&[]);
        normal["meta"]["security"] = json!([{"system": CONFIDENTIALITY, "code": "M"}]);
        assert!(decide(&e, &clinic(), &normal, std::slice::from_ref(&up_to_normal)).is_permit());
        assert!(!decide(&e, &clinic(), &restricted, &[up_to_normal]).is_permit());
        let old_data_hidden = consent(
            "dp",
            "2025-01-01",
            json!({"type": "permit", "provision": [
                {"type": "deny", "dataPeriod": {"end": "2023-12-31"}}
            ]}),
        );
        let mut old = condition(&[]);
        old["recordedDate"] = json!("2020-01-01");
        assert!(!decide(&e, &clinic(), &old, std::slice::from_ref(&old_data_hidden)).is_permit());
        assert!(decide(&e, &clinic(), &condition(&[]), &[old_data_hidden]).is_permit());
    }

    #[test]
    fn break_the_glass() {
        let e = ConsentEngine::default();
        let deny = consent("d", "2025-01-01", json!({"type": "deny"}));
        let mut er = clinic();
        er.purpose_of_use = Some("ETREAT".into());
        let d = decide(&e, &er, &condition(&["PSY"]), &[deny]);
        assert!(d.is_permit());
        assert_eq!(d.source, DecisionSource::BreakTheGlass);
    }
}
