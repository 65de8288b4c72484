//! The Consent engine.
//!
//! Matching a provision against a request (each present element is a condition):
//! - `period`: the decision time lies inside it;
//! - `actor`: one actor's `reference` is the caller's organization, practitioner, or a
//!   CareTeam the caller belongs to;
//! - `action`: one coding equals the request's `consentaction`;
//! - `purpose`: one coding equals the caller's purpose of use;
//! - `securityLabel`: one label is on the resource. Confidentiality codes are a high-water
//!   mark: a *permit* at level N covers data labelled up to N; a *deny* at level R covers
//!   data labelled R or above;
//! - `class`: the resource type (`resource-types`) or one of its `meta.profile`s;
//! - `code`: a coding of the resource's `code` (or `medicationCodeableConcept`);
//! - `dataPeriod`: the resource's clinical date lies inside it;
//! - `data`: `instance` (this resource), `related`/`dependents` (it references the data),
//!   `authoredby` (the data authored it).
//!
//! Combining Consents: the most recent `dateTime` wins for ordinary data; for data labelled
//! 42CFRPart2, SUD or ETH any deny wins. Without an applicable Consent the configured default
//! applies — but data labelled PSY, PSYTHPN, ETH, SUD, HIV or 42CFRPart2 is only released by a
//! permit whose provision (or an enclosing one) names that label.

use caregate_core::parse_date_range;
use serde_json::Value;

use crate::labels::{self, CONFIDENTIALITY};
use crate::{ConsentAction, ConsentPolicy, ConsentRequest, Decision, DecisionSource, Verdict};

/// What happens when no Consent applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Share unless the patient objected (sensitive data still needs an explicit permit).
    OptOut,
    /// Share only what the patient permitted.
    OptIn,
}

#[derive(Debug, Clone)]
pub struct ConsentEngine {
    pub default: DefaultPolicy,
    /// Purposes of use that break the glass (emergency access), if the caller may assert them.
    pub break_glass_purposes: Vec<String>,
}

impl Default for ConsentEngine {
    fn default() -> Self {
        ConsentEngine {
            default: DefaultPolicy::OptOut,
            break_glass_purposes: vec!["ETREAT".into(), "BTG".into()],
        }
    }
}

/// What a provision inherits from the one enclosing it.
#[derive(Clone, Copy)]
struct Parent {
    depth: usize,
    verdict: Verdict,
    names_sensitive: bool,
}

/// The outcome of one provision tree.
struct Matched {
    verdict: Verdict,
    path: String,
    depth: usize,
    /// The deciding provision or an enclosing one names one of the resource's sensitivity codes.
    names_sensitive: bool,
}

fn codes<'a>(v: &'a Value, key: &str) -> Vec<(&'a str, &'a str)> {
    // Accepts an array of Codings or of CodeableConcepts.
    let mut out = Vec::new();
    for item in v
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let codings: Vec<&Value> = match item.get("coding").and_then(Value::as_array) {
            Some(c) => c.iter().collect(),
            None => vec![item],
        };
        for c in codings {
            if let Some(code) = c.get("code").and_then(Value::as_str) {
                out.push((c.get("system").and_then(Value::as_str).unwrap_or(""), code));
            }
        }
    }
    out
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
    fn provision_matches(
        &self,
        p: &Value,
        req: &ConsentRequest<'_>,
        own_type: Option<Verdict>,
    ) -> bool {
        if let Some(period) = p.get("period") {
            if !in_period(period, req.now_ms) {
                return false;
            }
        }
        if let Some(actors) = p.get("actor").and_then(Value::as_array) {
            let mine: Vec<&str> = req.actor.references().map(strip_base).collect();
            let hit = actors.iter().any(|a| {
                a.pointer("/reference/reference")
                    .and_then(Value::as_str)
                    .map(strip_base)
                    .is_some_and(|r| mine.contains(&r))
            });
            if !hit {
                return false;
            }
        }
        if p.get("action").is_some()
            && !codes(p, "action")
                .iter()
                .any(|(_, c)| *c == req.action.code())
        {
            return false;
        }
        if p.get("purpose").is_some() {
            let Some(purpose) = req.actor.purpose_of_use.as_deref() else {
                return false;
            };
            if !codes(p, "purpose").iter().any(|(_, c)| *c == purpose) {
                return false;
            }
        }
        if p.get("securityLabel").is_some() {
            let on_resource = labels::security_labels(req.resource);
            let level = labels::confidentiality_of(req.resource);
            let hit = codes(p, "securityLabel").iter().any(|(system, code)| {
                match labels::confidentiality_rank(code)
                    .filter(|_| system.is_empty() || *system == CONFIDENTIALITY)
                {
                    Some(rank) => match own_type {
                        Some(Verdict::Deny) => level >= rank,
                        _ => level <= rank,
                    },
                    None => on_resource.iter().any(|(s, c)| {
                        c == code && (system.is_empty() || s.is_empty() || s == system)
                    }),
                }
            });
            if !hit {
                return false;
            }
        }
        if p.get("class").is_some() {
            let rtype = req
                .resource
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("");
            let profiles: Vec<&str> = req
                .resource
                .pointer("/meta/profile")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let hit = codes(p, "class").iter().any(|(_, c)| {
                *c == rtype || profiles.iter().any(|pr| pr.split('|').next() == Some(*c))
            });
            if !hit {
                return false;
            }
        }
        if p.get("code").is_some() {
            let mut resource_codes = Vec::new();
            for key in ["code", "medicationCodeableConcept", "vaccineCode"] {
                if let Some(cc) = req.resource.get(key) {
                    for c in cc
                        .get("coding")
                        .and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                    {
                        if let Some(code) = c.get("code").and_then(Value::as_str) {
                            resource_codes.push((
                                c.get("system")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_string(),
                                code.to_string(),
                            ));
                        }
                    }
                }
            }
            let hit = codes(p, "code").iter().any(|(s, c)| {
                resource_codes
                    .iter()
                    .any(|(rs, rc)| rc == c && (s.is_empty() || rs == s))
            });
            if !hit {
                return false;
            }
        }
        if let Some(dp) = p.get("dataPeriod") {
            match clinical_date(req.resource) {
                Some(at) if in_period(dp, at) => {}
                _ => return false,
            }
        }
        if let Some(data) = p.get("data").and_then(Value::as_array) {
            let me = resource_reference(req.resource);
            let mut refs = Vec::new();
            all_references(req.resource, &mut refs);
            let hit = data.iter().any(|d| {
                let Some(target) = d
                    .pointer("/reference/reference")
                    .and_then(Value::as_str)
                    .map(strip_base)
                else {
                    return false;
                };
                match d.get("meaning").and_then(Value::as_str) {
                    Some("instance") => me.as_deref() == Some(target),
                    Some("related") | Some("dependents") => {
                        me.as_deref() == Some(target) || refs.iter().any(|r| r == target)
                    }
                    Some("authoredby") => {
                        ["author", "recorder", "requester", "asserter", "performer"]
                            .iter()
                            .any(|k| {
                                let mut authors = Vec::new();
                                if let Some(v) = req.resource.get(*k) {
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
        path: &str,
        parent: Parent,
        sensitive: &[&str],
        req: &ConsentRequest<'_>,
    ) -> Option<Matched> {
        let Parent {
            depth,
            verdict: inherited,
            names_sensitive: inherited_names_sensitive,
        } = parent;
        let own = match p.get("type").and_then(Value::as_str) {
            Some("permit") => Some(Verdict::Permit),
            Some("deny") => Some(Verdict::Deny),
            _ => None,
        };
        if !self.provision_matches(p, req, own) {
            return None;
        }
        let verdict = own.unwrap_or(inherited);
        let names_sensitive = inherited_names_sensitive
            || codes(p, "securityLabel")
                .iter()
                .any(|(_, c)| sensitive.contains(c));
        let mut best = Matched {
            verdict,
            path: path.to_string(),
            depth,
            names_sensitive,
        };
        for (i, child) in p
            .get("provision")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let child_path = format!("{path}.provision[{i}]");
            let parent = Parent {
                depth: depth + 1,
                verdict,
                names_sensitive,
            };
            if let Some(m) = self.evaluate(child, &child_path, parent, sensitive, req) {
                // Deeper wins; at equal depth a deny wins.
                if m.depth > best.depth
                    || (m.depth == best.depth
                        && m.verdict == Verdict::Deny
                        && best.verdict == Verdict::Permit)
                {
                    best = m;
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
        // Sensitivity rules govern release; collecting or correcting labelled data is
        // decided like any other data.
        let releasing = matches!(
            req.action,
            ConsentAction::Access | ConsentAction::Use | ConsentAction::Disclose
        );
        let sensitive = if releasing {
            labels::sensitivity_codes(req.resource)
        } else {
            Vec::new()
        };
        if let Some(purpose) = req.actor.purpose_of_use.as_deref() {
            if self.break_glass_purposes.iter().any(|p| p == purpose)
                && matches!(req.action, ConsentAction::Access | ConsentAction::Use)
            {
                return Decision {
                    verdict: Verdict::Permit,
                    source: DecisionSource::BreakTheGlass,
                    basis: format!("emergency access (purpose {purpose}) overrides the patient's consent; this access raises a security alert"),
                };
            }
        }
        let part2 = sensitive.iter().any(|c| labels::PART2.contains(c));
        // (dateTime, consent reference, matched provision)
        let mut outcomes: Vec<(i64, String, Matched)> = Vec::new();
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
                names_sensitive: false,
            };
            if let Some(m) = self.evaluate(root, "Consent.provision", parent, &sensitive, req) {
                let when = consent
                    .get("dateTime")
                    .and_then(Value::as_str)
                    .and_then(parse_date_range)
                    .map_or(i64::MIN, |r| r.start);
                let reference =
                    resource_reference(consent).unwrap_or_else(|| "Consent (no id)".into());
                outcomes.push((when, reference, m));
            }
        }
        let chosen = if part2 {
            outcomes
                .iter()
                .find(|(_, _, m)| m.verdict == Verdict::Deny)
                .or_else(|| outcomes.iter().max_by_key(|(w, _, _)| *w))
        } else {
            // Most recent wins; on equal dateTime a deny wins.
            outcomes.iter().max_by(|a, b| {
                a.0.cmp(&b.0)
                    .then((a.2.verdict == Verdict::Deny).cmp(&(b.2.verdict == Verdict::Deny)))
            })
        };
        match chosen {
            Some((_, consent, m)) => {
                if m.verdict == Verdict::Permit && !sensitive.is_empty() && !m.names_sensitive {
                    return Decision {
                        verdict: Verdict::Deny,
                        source: DecisionSource::Consent {
                            consent: consent.clone(),
                            provision: m.path.clone(),
                        },
                        basis: format!(
                            "{consent} permits at {}, but the data is labelled {} and no provision names that label explicitly",
                            m.path,
                            sensitive.join(", ")
                        ),
                    };
                }
                Decision {
                    verdict: m.verdict,
                    source: DecisionSource::Consent {
                        consent: consent.clone(),
                        provision: m.path.clone(),
                    },
                    basis: format!(
                        "{consent} {} at {}{}",
                        if m.verdict == Verdict::Permit { "permits" } else { "denies" },
                        m.path,
                        if part2 { " (42 CFR Part 2 data: deny overrides)" } else { "" }
                    ),
                }
            }
            None if !sensitive.is_empty() => Decision {
                verdict: Verdict::Deny,
                source: DecisionSource::NoApplicableConsent,
                basis: format!(
                    "no consent applies and the data is labelled {}, which needs the patient's explicit permit",
                    sensitive.join(", ")
                ),
            },
            None => Decision {
                verdict: if self.default == DefaultPolicy::OptOut { Verdict::Permit } else { Verdict::Deny },
                source: DecisionSource::NoApplicableConsent,
                basis: format!(
                    "no consent applies; the gateway's default policy is {}",
                    if self.default == DefaultPolicy::OptOut { "opt-out (share)" } else { "opt-in (do not share)" }
                ),
            },
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
