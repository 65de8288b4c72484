//! The consent engine as a decision table: each row names the rule it checks, the patient's
//! Consents, the actor, the action, the resource, and the expected verdict with its basis
//! (which Consent and provision path, no applicable consent, or break-the-glass) and
//! whether the permit carries a redaction obligation.

use caregate_consent::{
    Actor, Combiner, ConsentAction, ConsentEngine, ConsentPolicy, ConsentRequest, ConsentSet,
    DecisionSource, DefaultPolicy, RedactionRule, Verdict,
};
use caregate_core::parse_date_range;
use serde_json::{json, Value};

const NOW: &str = "2025-06-01T12:00:00Z";
const ACT: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const CONF: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const ACTION: &str = "http://terminology.hl7.org/CodeSystem/consentaction";
const TYPES: &str = "http://hl7.org/fhir/resource-types";
const SCT: &str = "http://snomed.info/sct";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const PROFILE: &str = "http://example.org/fhir/StructureDefinition/bh-condition";

// ---- building blocks -------------------------------------------------------------------

fn consent(id: &str, date: &str, provision: Value) -> Value {
    json!({
        "resourceType": "Consent", "id": id, "status": "active", "dateTime": date,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn actor(reference: &str) -> Value {
    json!([{"reference": {"reference": reference}}])
}

fn actor_role(reference: &str, role: &str) -> Value {
    json!([{"role": {"coding": [{"system": PARTICIPATION, "code": role}]}, "reference": {"reference": reference}}])
}

fn labels(codes: &[&str]) -> Value {
    Value::Array(
        codes
            .iter()
            .map(|c| {
                let system = if ["U", "L", "M", "N", "R", "V"].contains(c) {
                    CONF
                } else {
                    ACT
                };
                json!({"system": system, "code": c})
            })
            .collect(),
    )
}

fn class(codes: &[&str]) -> Value {
    Value::Array(
        codes
            .iter()
            .map(|c| {
                if c.starts_with("http") {
                    json!({"system": "urn:ietf:rfc:3986", "code": c})
                } else {
                    json!({"system": TYPES, "code": c})
                }
            })
            .collect(),
    )
}

fn purpose(codes: &[&str]) -> Value {
    Value::Array(
        codes
            .iter()
            .map(|c| json!({"system": REASON, "code": c}))
            .collect(),
    )
}

fn action(codes: &[&str]) -> Value {
    Value::Array(
        codes
            .iter()
            .map(|c| json!({"coding": [{"system": ACTION, "code": c}]}))
            .collect(),
    )
}

fn data(meaning: &str, reference: &str) -> Value {
    json!([{"meaning": meaning, "reference": {"reference": reference}}])
}

/// Root `deny` with one nested provision.
fn deny_except(nested: Value) -> Value {
    json!({"type": "deny", "provision": [nested]})
}

/// Root `permit` with one nested provision.
fn permit_except(nested: Value) -> Value {
    json!({"type": "permit", "provision": [nested]})
}

fn permit() -> Value {
    json!({"type": "permit"})
}

fn deny() -> Value {
    json!({"type": "deny"})
}

/// The primary-care clinic: an Organization, a practitioner, member of CareTeam/team,
/// treating.
fn clinic() -> Actor {
    Actor {
        client_id: Some("clinic-client".into()),
        organization: Some("Organization/clinic".into()),
        practitioner: Some("Practitioner/dr".into()),
        care_teams: vec!["CareTeam/team".into()],
        purpose_of_use: Some("TREAT".into()),
    }
}

fn clinic_for(purpose: Option<&str>) -> Actor {
    Actor {
        purpose_of_use: purpose.map(str::to_string),
        ..clinic()
    }
}

fn psychiatry() -> Actor {
    Actor {
        client_id: Some("psy-client".into()),
        organization: Some("Organization/psychiatry".into()),
        practitioner: None,
        care_teams: Vec::new(),
        purpose_of_use: Some("TREAT".into()),
    }
}

/// A Condition of Patient/p recorded 2024-02-01, with the given security labels.
fn condition(label_codes: &[&str]) -> Value {
    let mut c = json!({"resourceType": "Condition", "id": "c1",
        "code": {"coding": [{"system": SCT, "code": "44054006"}]},
        "subject": {"reference": "Patient/p"}, "recordedDate": "2024-02-01",
        "encounter": {"reference": "Encounter/e1"},
        "recorder": {"reference": "Practitioner/psy"}});
    if !label_codes.is_empty() {
        c["meta"] = json!({"security": labels(label_codes)});
    }
    c
}

fn observation() -> Value {
    json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2025-03-01",
        "derivedFrom": [{"reference": "Observation/panel"}],
        "performer": [{"reference": "Practitioner/other"}]})
}

// ---- the table ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Basis {
    /// `Consent/{id}` at `Consent.provision{suffix}`.
    At(&'static str, &'static str),
    NoConsent,
    Glass,
}

use Basis::*;

struct Case {
    rule: &'static str,
    consents: Vec<Value>,
    actor: Actor,
    action: ConsentAction,
    resource: Value,
    engine: ConsentEngine,
    verdict: Verdict,
    basis: Basis,
    redacted: bool,
}

fn case(rule: &'static str) -> Case {
    Case {
        rule,
        consents: Vec::new(),
        actor: clinic(),
        action: ConsentAction::Access,
        resource: condition(&[]),
        engine: ConsentEngine::default(),
        verdict: Verdict::Permit,
        basis: NoConsent,
        redacted: false,
    }
}

impl Case {
    fn consents(mut self, c: Vec<Value>) -> Case {
        self.consents = c;
        self
    }
    fn one(self, provision: Value) -> Case {
        self.consents(vec![consent("c", "2025-01-01", provision)])
    }
    fn actor(mut self, a: Actor) -> Case {
        self.actor = a;
        self
    }
    fn action(mut self, a: ConsentAction) -> Case {
        self.action = a;
        self
    }
    fn resource(mut self, r: Value) -> Case {
        self.resource = r;
        self
    }
    fn engine(mut self, e: ConsentEngine) -> Case {
        self.engine = e;
        self
    }
    fn opt_in(self) -> Case {
        self.engine(ConsentEngine {
            default: DefaultPolicy::OptIn,
            ..ConsentEngine::default()
        })
    }
    fn permit(mut self, basis: Basis) -> Case {
        self.verdict = Verdict::Permit;
        self.basis = basis;
        self
    }
    fn deny(mut self, basis: Basis) -> Case {
        self.verdict = Verdict::Deny;
        self.basis = basis;
        self
    }
    fn redacted(mut self) -> Case {
        self.redacted = true;
        self
    }
}

fn table() -> Vec<Case> {
    use ConsentAction::*;
    let psy_redact = ConsentEngine {
        redaction: vec![RedactionRule {
            label: "PSYTHPN".into(),
            except: vec!["Organization/psychiatry".into()],
        }],
        ..ConsentEngine::default()
    };
    vec![
        // -- root type is the base; nested provisions are exceptions; deepest wins
        case("root permit is the base decision")
            .one(permit())
            .permit(At("c", "")),
        case("root deny is the base decision")
            .one(deny())
            .deny(At("c", "")),
        case("nested permit is an exception to a root deny")
            .one(deny_except(json!({"type": "permit", "actor": actor("Organization/clinic")})))
            .permit(At("c", ".provision[0]")),
        case("a nested exception for another actor leaves the base")
            .one(deny_except(json!({"type": "permit", "actor": actor("Organization/other")})))
            .deny(At("c", "")),
        case("three levels: the deepest matching provision (deny Observations) wins")
            .one(deny_except(json!({"type": "permit", "actor": actor("Organization/clinic"),
                "provision": [{"type": "deny", "class": class(&["Observation"])}]})))
            .resource(observation())
            .deny(At("c", ".provision[0].provision[0]")),
        case("three levels: where the third level does not match, the second decides")
            .one(deny_except(json!({"type": "permit", "actor": actor("Organization/clinic"),
                "provision": [{"type": "deny", "class": class(&["Observation"])}]})))
            .permit(At("c", ".provision[0]")),
        case("three levels: permit for treatment inside a deny for the clinic inside a permit")
            .one(permit_except(json!({"type": "deny", "actor": actor("Organization/clinic"),
                "provision": [{"type": "permit", "purpose": purpose(&["TREAT"])}]})))
            .permit(At("c", ".provision[0].provision[0]")),
        case("three levels: payment purpose stops at the second level")
            .one(permit_except(json!({"type": "deny", "actor": actor("Organization/clinic"),
                "provision": [{"type": "permit", "purpose": purpose(&["TREAT"])}]})))
            .actor(clinic_for(Some("HPAYMT")))
            .deny(At("c", ".provision[0]")),
        case("siblings at equal depth: deny wins")
            .one(json!({"type": "permit", "provision": [
                {"type": "permit", "actor": actor("Organization/clinic")},
                {"type": "deny", "class": class(&["Condition"])}]}))
            .deny(At("c", ".provision[1]")),
        case("sibling permits: the one naming the data's sensitivity releases it, whatever the order")
            .one(json!({"type": "deny", "provision": [
                {"type": "permit", "actor": actor("Organization/clinic")},
                {"type": "permit", "actor": actor("Organization/clinic"), "securityLabel": labels(&["ETH"])}]}))
            .resource(condition(&["ETH", "R"]))
            .permit(At("c", ".provision[1]")),
        case("a deeper match in one branch beats a shallower one in another")
            .one(json!({"type": "permit", "provision": [
                {"type": "deny", "class": class(&["Condition"])},
                {"type": "permit", "actor": actor("Organization/clinic"),
                 "provision": [{"type": "permit", "purpose": purpose(&["TREAT"])}]}]}))
            .permit(At("c", ".provision[1].provision[0]")),
        case("children of a provision that does not match are not considered")
            .one(permit_except(json!({"type": "deny", "actor": actor("Organization/other"),
                "provision": [{"type": "deny"}]})))
            .permit(At("c", "")),
        case("an untyped nested provision refines its parent's type")
            .one(deny_except(json!({"actor": actor("Organization/clinic")})))
            .deny(At("c", ".provision[0]")),
        case("a Consent nested deeper than the engine walks fails closed")
            .one({
                let mut p = json!({"type": "permit"});
                for _ in 0..33 {
                    p = json!({"type": "permit", "provision": [p]});
                }
                p
            })
            .deny(At("c", "")),
        case("a root provision that does not match: the Consent does not apply (opt-out)")
            .one(json!({"type": "deny", "actor": actor("Organization/other")}))
            .permit(NoConsent),
        // -- present elements ANDed, absent ones wildcards, repeats ORed
        case("AND: actor matches but class does not")
            .one(deny_except(json!({"type": "permit", "actor": actor("Organization/clinic"), "class": class(&["Observation"])})))
            .deny(At("c", "")),
        case("AND: actor, class, action and purpose all match")
            .one(deny_except(json!({"type": "permit", "actor": actor("Organization/clinic"),
                "class": class(&["Condition"]), "action": action(&["access"]), "purpose": purpose(&["TREAT"])})))
            .permit(At("c", ".provision[0]")),
        case("absent elements are wildcards: only an action")
            .one(deny_except(json!({"type": "permit", "action": action(&["access"])})))
            .permit(At("c", ".provision[0]")),
        case("repeated actors are ORed")
            .one(deny_except(json!({"type": "permit", "actor": [
                {"reference": {"reference": "Organization/other"}},
                {"reference": {"reference": "Organization/clinic"}}]})))
            .permit(At("c", ".provision[0]")),
        case("repeated classes are ORed")
            .one(deny_except(json!({"type": "permit", "class": class(&["Observation", "Condition"])})))
            .permit(At("c", ".provision[0]")),
        case("repeated purposes are ORed")
            .one(deny_except(json!({"type": "permit", "purpose": purpose(&["HPAYMT", "TREAT"])})))
            .permit(At("c", ".provision[0]")),
        // -- actor: reference, role, CareTeam membership
        case("actor by the acting practitioner")
            .one(deny_except(json!({"type": "permit", "actor": actor("Practitioner/dr")})))
            .permit(At("c", ".provision[0]")),
        case("actor by absolute URL names the same organization")
            .one(deny_except(json!({"type": "permit", "actor": actor("https://gw.example/fhir/Organization/clinic")})))
            .permit(At("c", ".provision[0]")),
        case("CareTeam membership counts as the actor")
            .one(deny_except(json!({"type": "permit", "actor": actor("CareTeam/team")})))
            .permit(At("c", ".provision[0]")),
        case("a CareTeam the caller is not in does not")
            .one(deny_except(json!({"type": "permit", "actor": actor("CareTeam/other")})))
            .deny(At("c", "")),
        case("actor with a recipient role (PRCP) matches by its reference")
            .one(deny_except(json!({"type": "permit", "actor": actor_role("Organization/clinic", "PRCP")})))
            .permit(At("c", ".provision[0]")),
        case("the role is not a condition: an IRCP entry covers the actor's contributions too")
            .one(deny_except(json!({"type": "permit", "actor": actor_role("Organization/clinic", "IRCP")})))
            .action(Collect)
            .permit(At("c", ".provision[0]")),
        case("a role with another actor's reference does not match")
            .one(deny_except(json!({"type": "permit", "actor": actor_role("Organization/other", "PRCP")})))
            .deny(At("c", "")),
        // -- purpose of use
        case("purpose matches")
            .one(deny_except(json!({"type": "permit", "purpose": purpose(&["TREAT"])})))
            .permit(At("c", ".provision[0]")),
        case("purpose mismatch (payment)")
            .one(deny_except(json!({"type": "permit", "purpose": purpose(&["TREAT"])})))
            .actor(clinic_for(Some("HPAYMT")))
            .deny(At("c", "")),
        case("a provision with a purpose does not match a caller that states none")
            .one(deny_except(json!({"type": "permit", "purpose": purpose(&["TREAT"])})))
            .actor(clinic_for(None))
            .deny(At("c", "")),
        // -- securityLabel, confidentiality as a high-water mark (N < R < V)
        case("permit up to N covers M")
            .one(deny_except(json!({"type": "permit", "securityLabel": labels(&["N"])})))
            .resource(condition(&["M"]))
            .permit(At("c", ".provision[0]")),
        case("permit up to N covers unlabelled data (N by default)")
            .one(deny_except(json!({"type": "permit", "securityLabel": labels(&["N"])})))
            .permit(At("c", ".provision[0]")),
        case("permit up to N does not cover R")
            .one(deny_except(json!({"type": "permit", "securityLabel": labels(&["N"])})))
            .resource(condition(&["R"]))
            .deny(At("c", "")),
        case("permit up to V covers R")
            .one(deny_except(json!({"type": "permit", "securityLabel": labels(&["V"])})))
            .resource(condition(&["R"]))
            .permit(At("c", ".provision[0]")),
        case("deny from R covers V")
            .one(permit_except(json!({"type": "deny", "securityLabel": labels(&["R"])})))
            .resource(condition(&["V"]))
            .deny(At("c", ".provision[0]")),
        case("deny from R covers R")
            .one(permit_except(json!({"type": "deny", "securityLabel": labels(&["R"])})))
            .resource(condition(&["R"]))
            .deny(At("c", ".provision[0]")),
        case("deny from R does not cover N")
            .one(permit_except(json!({"type": "deny", "securityLabel": labels(&["R"])})))
            .resource(condition(&["N"]))
            .permit(At("c", "")),
        case("an untyped provision under a deny uses the deny high-water mark")
            .one(deny_except(json!({"securityLabel": labels(&["R"])})))
            .resource(condition(&["V"]))
            .deny(At("c", ".provision[0]")),
        case("a non-confidentiality label matches when the data carries it")
            .one(permit_except(json!({"type": "deny", "securityLabel": labels(&["TBOO"])})))
            .resource(condition(&["TBOO"]))
            .deny(At("c", ".provision[0]")),
        case("a non-confidentiality label the data lacks does not match")
            .one(permit_except(json!({"type": "deny", "securityLabel": labels(&["TBOO"])})))
            .permit(At("c", "")),
        // -- class: resource type or profile
        case("class by resource type (mismatch)")
            .one(deny_except(json!({"type": "permit", "class": class(&["Condition"])})))
            .resource(json!({"resourceType": "CarePlan", "id": "cp", "subject": {"reference": "Patient/p"}}))
            .deny(At("c", "")),
        case("class by profile, versioned canonical on the data")
            .one(permit_except(json!({"type": "deny", "class": class(&[PROFILE])})))
            .resource(with(condition(&[]), "meta", json!({"profile": [format!("{PROFILE}|1.0.0")]})))
            .deny(At("c", ".provision[0]")),
        case("class by profile the data does not claim")
            .one(permit_except(json!({"type": "deny", "class": class(&[PROFILE])})))
            .permit(At("c", "")),
        // -- code
        case("code matches")
            .one(permit_except(json!({"type": "deny", "code": [{"coding": [{"system": SCT, "code": "44054006"}]}]})))
            .deny(At("c", ".provision[0]")),
        case("code differs")
            .one(permit_except(json!({"type": "deny", "code": [{"coding": [{"system": SCT, "code": "73211009"}]}]})))
            .permit(At("c", "")),
        case("same code in another system does not match")
            .one(permit_except(json!({"type": "deny", "code": [{"coding": [{"system": "http://loinc.org", "code": "44054006"}]}]})))
            .permit(At("c", "")),
        // -- dataPeriod
        case("dataPeriod holds the clinical date")
            .one(permit_except(json!({"type": "deny", "dataPeriod": {"start": "2024-01-01", "end": "2024-12-31"}})))
            .deny(At("c", ".provision[0]")),
        case("dataPeriod before the clinical date")
            .one(permit_except(json!({"type": "deny", "dataPeriod": {"end": "2023-12-31"}})))
            .permit(At("c", "")),
        case("data without a date is outside every dataPeriod")
            .one(permit_except(json!({"type": "deny", "dataPeriod": {"start": "2000-01-01"}})))
            .resource(json!({"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p"}}))
            .permit(At("c", "")),
        // -- data references and their meaning
        case("data instance: this very resource")
            .one(permit_except(json!({"type": "deny", "data": data("instance", "Condition/c1")})))
            .deny(At("c", ".provision[0]")),
        case("data instance: another resource")
            .one(permit_except(json!({"type": "deny", "data": data("instance", "Condition/c9")})))
            .permit(At("c", "")),
        case("data related: the resource references it (its encounter)")
            .one(permit_except(json!({"type": "deny", "data": data("related", "Encounter/e1")})))
            .deny(At("c", ".provision[0]")),
        case("data dependents: derived from the named observation")
            .one(permit_except(json!({"type": "deny", "data": data("dependents", "Observation/panel")})))
            .resource(observation())
            .deny(At("c", ".provision[0]")),
        case("data authoredby: the recorder is the named practitioner")
            .one(permit_except(json!({"type": "deny", "data": data("authoredby", "Practitioner/psy")})))
            .deny(At("c", ".provision[0]")),
        case("data authoredby: someone else authored it")
            .one(permit_except(json!({"type": "deny", "data": data("authoredby", "Practitioner/psy")})))
            .resource(observation())
            .permit(At("c", "")),
        // -- provision.period
        case("expired root period: the Consent no longer applies")
            .one(json!({"type": "deny", "period": {"start": "2020-01-01", "end": "2024-12-31"}}))
            .opt_in()
            .deny(NoConsent),
        case("future root period: not yet in force")
            .one(json!({"type": "permit", "period": {"start": "2026-01-01"}}))
            .opt_in()
            .deny(NoConsent),
        case("current period applies")
            .one(json!({"type": "permit", "period": {"start": "2025-01-01", "end": "2025-12-31"}}))
            .opt_in()
            .permit(At("c", "")),
        case("an expired nested exception falls back to the base")
            .one(deny_except(json!({"type": "permit", "period": {"end": "2025-05-31"}})))
            .deny(At("c", "")),
        // -- status and scope
        case("inactive Consent is ignored")
            .consents(vec![with(consent("c", "2025-01-01", deny()), "status", json!("inactive"))])
            .permit(NoConsent),
        case("draft Consent is ignored")
            .consents(vec![with(consent("c", "2025-01-01", deny()), "status", json!("draft"))])
            .permit(NoConsent),
        case("entered-in-error Consent is ignored")
            .consents(vec![with(consent("c", "2025-01-01", deny()), "status", json!("entered-in-error"))])
            .permit(NoConsent),
        case("scope adr (advance directive) is not a privacy consent")
            .consents(vec![with(consent("c", "2025-01-01", deny()), "scope",
                json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "adr"}]}))])
            .permit(NoConsent),
        case("scope treatment is not a privacy consent")
            .consents(vec![with(consent("c", "2025-01-01", permit()), "scope",
                json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}]}))])
            .opt_in()
            .deny(NoConsent),
        // -- several Consents: most recent dateTime
        case("most recent permit beats an older deny")
            .consents(vec![consent("old", "2024-01-01", deny()), consent("new", "2025-01-01", permit())])
            .permit(At("new", "")),
        case("most recent deny beats an older permit")
            .consents(vec![consent("new", "2025-01-01", deny()), consent("old", "2024-01-01", permit())])
            .deny(At("new", "")),
        case("equal dateTime: deny wins")
            .consents(vec![consent("a", "2025-01-01", permit()), consent("b", "2025-01-01", deny())])
            .deny(At("b", "")),
        case("the newest Consent that applies decides; newer ones for other actors are skipped")
            .consents(vec![
                consent("newest", "2026-01-01", json!({"type": "permit", "actor": actor("Organization/other")})),
                consent("older", "2025-01-01", deny()),
                consent("oldest", "2024-01-01", permit())])
            .deny(At("older", "")),
        case("equal newest dateTime among three: the deny wins wherever it is listed")
            .consents(vec![
                consent("b", "2025-01-01", deny()),
                consent("a", "2025-01-01", permit()),
                consent("old", "2020-01-01", permit())])
            .deny(At("b", "")),
        case("a Consent without dateTime is the oldest")
            .consents(vec![
                with(consent("undated", "2025-01-01", permit()), "dateTime", Value::Null),
                consent("dated", "2020-01-01", deny())])
            .deny(At("dated", "")),
        case("configured deny-overrides: an older deny beats a newer permit")
            .consents(vec![consent("old", "2024-01-01", deny()), consent("new", "2025-01-01", permit())])
            .engine(ConsentEngine { combiner: Combiner::DenyOverrides, ..ConsentEngine::default() })
            .deny(At("old", "")),
        // -- Part 2 / SUD / ETH: deny overrides
        case("42CFRPart2: an older deny overrides a newer explicit permit")
            .consents(vec![
                consent("old", "2024-01-01", deny()),
                consent("new", "2025-01-01", deny_except(json!({"type": "permit", "securityLabel": labels(&["42CFRPart2"])})))])
            .resource(condition(&["42CFRPart2"]))
            .deny(At("old", "")),
        case("SUD: deny overrides too")
            .consents(vec![
                consent("old", "2024-01-01", permit_except(json!({"type": "deny", "actor": actor("Organization/clinic")}))),
                consent("new", "2025-01-01", deny_except(json!({"type": "permit", "securityLabel": labels(&["SUD"])})))])
            .resource(condition(&["SUD"]))
            .deny(At("old", ".provision[0]")),
        case("ETH: deny overrides too")
            .consents(vec![
                consent("old", "2024-01-01", deny()),
                consent("new", "2025-01-01", deny_except(json!({"type": "permit", "securityLabel": labels(&["ETH"])})))])
            .resource(condition(&["ETH"]))
            .deny(At("old", "")),
        case("Part 2 without any deny: the explicit permit releases it, not the newer blanket one")
            .consents(vec![
                consent("explicit", "2024-01-01", deny_except(json!({"type": "permit", "securityLabel": labels(&["SUD"])}))),
                consent("blanket", "2025-01-01", permit())])
            .resource(condition(&["SUD", "42CFRPart2", "ETH", "R"]))
            .permit(At("explicit", ".provision[0]")),
        case("ordinary data is not deny-overrides: the newer permit wins")
            .consents(vec![consent("old", "2024-01-01", deny()), consent("new", "2025-01-01", permit())])
            .resource(condition(&["R"]))
            .permit(At("new", "")),
        // -- no applicable Consent: the configured default
        case("opt-out default, no Consent: shared")
            .permit(NoConsent),
        case("opt-in default, no Consent: not shared")
            .opt_in()
            .deny(NoConsent),
        case("opt-in default, Consents that do not apply")
            .one(json!({"type": "permit", "actor": actor("Organization/other")}))
            .opt_in()
            .deny(NoConsent),
        // -- sensitive labels need an explicit permit
        case("PSY without Consent is withheld even under opt-out")
            .resource(condition(&["PSY"]))
            .deny(NoConsent),
        case("PSYTHPN without Consent is withheld")
            .resource(condition(&["PSYTHPN"]))
            .deny(NoConsent),
        case("HIV without Consent is withheld")
            .resource(condition(&["HIV"]))
            .deny(NoConsent),
        case("42CFRPart2 without Consent is withheld")
            .resource(condition(&["42CFRPart2"]))
            .deny(NoConsent),
        case("ETH without Consent is withheld")
            .resource(condition(&["ETH"]))
            .deny(NoConsent),
        case("a blanket permit does not release PSY")
            .one(permit())
            .resource(condition(&["PSY"]))
            .deny(At("c", "")),
        case("a permit naming PSY releases it")
            .one(deny_except(json!({"type": "permit", "securityLabel": labels(&["PSY"])})))
            .resource(condition(&["PSY", "R"]))
            .permit(At("c", ".provision[0]")),
        case("PSY and HIV: a permit naming only PSY does not release the HIV part")
            .one(deny_except(json!({"type": "permit", "securityLabel": labels(&["PSY"])})))
            .resource(condition(&["PSY", "HIV"]))
            .deny(At("c", ".provision[0]")),
        case("PSY and HIV: a permit naming both releases it")
            .one(deny_except(json!({"type": "permit", "securityLabel": [
                {"system": ACT, "code": "PSY"}, {"system": ACT, "code": "HIV"}]})))
            .resource(condition(&["PSY", "HIV"]))
            .permit(At("c", ".provision[0]")),
        case("a label named by an enclosing provision counts for its exceptions")
            .one(deny_except(json!({"type": "permit", "securityLabel": labels(&["PSY"]),
                "provision": [{"type": "permit", "actor": actor("Organization/clinic")}]})))
            .resource(condition(&["PSY"]))
            .permit(At("c", ".provision[0].provision[0]")),
        case("a permit naming PSY does not release PSYTHPN (psychotherapy notes)")
            .one(deny_except(json!({"type": "permit", "securityLabel": labels(&["PSY"])})))
            .resource(condition(&["PSY", "PSYTHPN"]))
            .deny(At("c", ".provision[0]")),
        case("collecting labelled data needs no explicit permit")
            .one(permit())
            .resource(condition(&["SUD", "42CFRPart2"]))
            .action(Collect)
            .permit(At("c", "")),
        // -- actions
        case("action collect")
            .one(deny_except(json!({"type": "permit", "action": action(&["collect"])})))
            .action(Collect)
            .permit(At("c", ".provision[0]")),
        case("a collect-only permit does not cover access")
            .one(deny_except(json!({"type": "permit", "action": action(&["collect"])})))
            .deny(At("c", "")),
        case("action use")
            .one(deny_except(json!({"type": "permit", "action": action(&["use"])})))
            .action(Use)
            .permit(At("c", ".provision[0]")),
        case("action disclose")
            .one(permit_except(json!({"type": "deny", "action": action(&["disclose"])})))
            .action(Disclose)
            .deny(At("c", ".provision[0]")),
        case("action correct")
            .one(permit_except(json!({"type": "deny", "action": action(&["correct"])})))
            .action(Correct)
            .deny(At("c", ".provision[0]")),
        case("a correct-only deny does not block access")
            .one(permit_except(json!({"type": "deny", "action": action(&["correct"])})))
            .permit(At("c", "")),
        // -- break-the-glass
        case("ETREAT overrides a deny for access")
            .one(deny())
            .actor(clinic_for(Some("ETREAT")))
            .permit(Glass),
        case("BTG overrides the sensitive-label rule for use")
            .resource(condition(&["PSY", "SUD"]))
            .actor(clinic_for(Some("BTG")))
            .action(Use)
            .permit(Glass),
        case("break-the-glass does not cover disclose")
            .one(deny())
            .actor(clinic_for(Some("ETREAT")))
            .action(Disclose)
            .deny(At("c", "")),
        case("break-the-glass does not cover collect")
            .one(deny())
            .actor(clinic_for(Some("BTG")))
            .action(Collect)
            .deny(At("c", "")),
        case("a gateway without emergency purposes treats ETREAT as any purpose")
            .one(deny())
            .actor(clinic_for(Some("ETREAT")))
            .engine(ConsentEngine { break_glass_purposes: Vec::new(), ..ConsentEngine::default() })
            .deny(At("c", "")),
        // -- obligations
        case("a permit carrying REDACT releases the data redacted")
            .one(deny_except(json!({"type": "permit", "actor": actor("Organization/clinic"),
                "securityLabel": [{"system": ACT, "code": "PSYTHPN"}, {"system": ACT, "code": "REDACT"}]})))
            .resource(condition(&["PSYTHPN"]))
            .permit(At("c", ".provision[0]"))
            .redacted(),
        case("an obligation code alone sets no label condition")
            .one(deny_except(json!({"type": "permit", "securityLabel": [{"system": ACT, "code": "REDACT"}]})))
            .permit(At("c", ".provision[0]"))
            .redacted(),
        case("REDACT on a provision that does not decide has no effect")
            .one(json!({"type": "permit", "securityLabel": [{"system": ACT, "code": "REDACT"}],
                "provision": [{"type": "permit", "actor": actor("Organization/clinic")}]}))
            .permit(At("c", ".provision[0]")),
        case("configured rule: psychotherapy notes reach other readers redacted")
            .one(deny_except(json!({"type": "permit", "securityLabel": labels(&["PSYTHPN"])})))
            .resource(condition(&["PSYTHPN"]))
            .engine(psy_redact.clone())
            .permit(At("c", ".provision[0]"))
            .redacted(),
        case("configured rule: the psychiatry practice sees them whole")
            .one(deny_except(json!({"type": "permit", "securityLabel": labels(&["PSYTHPN"])})))
            .resource(condition(&["PSYTHPN"]))
            .actor(psychiatry())
            .engine(psy_redact.clone())
            .permit(At("c", ".provision[0]")),
        case("a deny carries no obligations")
            .one(deny())
            .resource(condition(&["PSYTHPN"]))
            .engine(psy_redact.clone())
            .deny(At("c", "")),
        case("collect carries no redaction")
            .one(permit())
            .resource(condition(&["PSYTHPN"]))
            .engine(psy_redact)
            .action(Collect)
            .permit(At("c", "")),
    ]
}

fn now() -> i64 {
    parse_date_range(NOW).map(|r| r.start).unwrap_or_default()
}

#[test]
fn decision_table() {
    let cases = table();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let set = ConsentSet::new(&c.consents);
        let decide = |consents: &ConsentSet| {
            c.engine.decide(&ConsentRequest {
                actor: &c.actor,
                action: c.action,
                resource: &c.resource,
                consents,
                now_ms: now(),
            })
        };
        let d = decide(&set);
        // The set specialised for this request decides the same; one specialised for
        // another caller or action is not used for this one.
        assert_eq!(
            decide(&set.for_request(&c.actor, c.action, now())),
            d,
            "#{i} {}: specialised set differs",
            c.rule
        );
        let other = if c.action == ConsentAction::Access {
            ConsentAction::Collect
        } else {
            ConsentAction::Access
        };
        assert_eq!(
            decide(&set.for_request(&psychiatry(), other, now())),
            d,
            "#{i} {}: a set specialised for another request was used",
            c.rule
        );
        let basis = match &d.source {
            DecisionSource::Consent { consent, provision } => {
                let id = consent.strip_prefix("Consent/").unwrap_or(consent);
                let suffix = provision
                    .strip_prefix("Consent.provision")
                    .unwrap_or(provision);
                format!("At({id:?}, {suffix:?})")
            }
            DecisionSource::NoApplicableConsent => "NoConsent".into(),
            DecisionSource::BreakTheGlass => "Glass".into(),
            DecisionSource::NotEnforced => "NotEnforced".into(),
        };
        let expected = match &c.basis {
            At(id, suffix) => format!("At({id:?}, {suffix:?})"),
            NoConsent => "NoConsent".into(),
            Glass => "Glass".into(),
        };
        if d.verdict != c.verdict || basis != expected || d.requires_redaction() != c.redacted {
            failures.push(format!(
                "#{i} {}: expected {:?} {expected} redacted={}, got {:?} {basis} redacted={} ({})",
                c.rule,
                c.verdict,
                c.redacted,
                d.verdict,
                d.requires_redaction(),
                d.basis
            ));
        }
        // Every decision explains itself in words, naming the Consent when one decided.
        assert!(!d.basis.is_empty(), "#{i} {}: empty basis", c.rule);
        if let DecisionSource::Consent { consent, .. } = &d.source {
            assert!(d.basis.contains(consent.as_str()), "#{i}: {}", d.basis);
        }
        // Obligations are only ever attached to permits.
        assert!(d.obligations.is_empty() || d.is_permit(), "#{i} {}", c.rule);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn rules_are_named_uniquely() {
    let cases = table();
    let mut names: Vec<&str> = cases.iter().map(|c| c.rule).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "two cases share a rule name");
}
