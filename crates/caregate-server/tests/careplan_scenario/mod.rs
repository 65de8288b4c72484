//! The mental-health team of issue 6, loaded through the real API by the five provider
//! systems that keep it: psychiatry, primary care, a therapy practice, peer support and
//! community case management. Each keeps its own Patient under its own MRN system; all
//! carry the person's insurer member id (the trusted identifier that links them).
//!
//! What the shared view must show: sertraline ordered by the psychiatrist (100 mg) and the
//! primary-care physician (50 mg) — a dose conflict; weekly CBT-skills sessions planned by
//! therapy and by peer support — one merged activity with two sources; a goal "PHQ-9 below
//! 10" with no activity — a gap; an inpatient stay discharged 10 days ago with no follow-up
//! — a gap; the case manager's housing referral with its status; and the psychiatrist's
//! opioid-use-disorder Condition, labelled 42CFRPart2/SUD/ETH on ingest, which the
//! patient's Consent releases to psychiatry and denies to case management.
#![allow(dead_code)]

use serde_json::{json, Value};

use crate::support::{client, TestServer};

pub const INSURER: &str = "urn:insurer:member";
pub const PSYCH: &str = "psych-token";
pub const PRIMARY: &str = "primary-token";
pub const THERAPY: &str = "therapy-token";
pub const PEER: &str = "peer-token";
pub const CASE_MANAGER: &str = "casemgmt-token";

/// Display of the SUD Condition (only psychiatry may see it).
pub const SUD_CONDITION: &str = "Opioid dependence, uncomplicated";

/// The loaded scenario: the five source Patient ids, psychiatry's first.
pub struct Scenario {
    pub patients: Vec<String>,
}

impl Scenario {
    pub fn psychiatry_patient(&self) -> &str {
        &self.patients[0]
    }
}

/// Starts a server with the team's five clients registered and the insurer id trusted;
/// `configure` may adjust the configuration further.
pub async fn server(configure: impl FnOnce(&mut caregate_server::ServerConfig)) -> TestServer {
    TestServer::start_with(|c| {
        c.linking.trusted_systems = vec![INSURER.into()];
        c.clients = vec![
            client("psych", PSYCH, &["system/*.*", "system/Consent.cud"]),
            client("primary", PRIMARY, &["system/*.*"]),
            client("therapy", THERAPY, &["system/*.*"]),
            client("peer", PEER, &["system/*.*"]),
            client("casemgmt", CASE_MANAGER, &["system/*.*"]),
        ];
        configure(c);
    })
    .await
}

async fn create(s: &TestServer, token: &str, body: Value) -> String {
    let rtype = body["resourceType"]
        .as_str()
        .expect("resourceType")
        .to_string();
    let r = s.post_as(token, &rtype, &body).await;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 201, "create {rtype} as {token}: {text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["id"].as_str().expect("id").to_string()
}

fn patient(mrn_system: &str, mrn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [
            {"system": mrn_system, "value": mrn},
            {"system": INSURER, "value": "M-778812"}
        ],
        "name": [{"family": "Rivera", "given": ["Alex"]}],
        "gender": "other",
        "birthDate": "1990-06-01"
    })
}

fn coded(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

const SCT: &str = "http://snomed.info/sct";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

fn sertraline(patient: &str, requester: &str, display: &str, mg: u32) -> Value {
    json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": coded("http://www.nlm.nih.gov/research/umls/rxnorm", "36437", "sertraline"),
        "subject": {"reference": patient},
        "requester": {"reference": requester, "display": display},
        "dosageInstruction": [{
            "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}]
        }]
    })
}

fn cbt(patient: &str, performer: &str) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "plan",
        "code": coded(SCT, "304891004", "Cognitive behavioural therapy: weekly skills session"),
        "subject": {"reference": patient},
        "occurrenceTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}},
        "performer": [{"display": performer}]
    })
}

fn care_team(patient: &str, name: &str, role: &str, phone: &str) -> Value {
    json!({
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"reference": patient},
        "participant": [{
            "role": [{"text": role}],
            "member": {"display": name}
        }],
        "telecom": [{"system": "phone", "value": phone}]
    })
}

/// The patient's Consent: the five team organisations may see and contribute, mental-health
/// data (PSY) included; only psychiatry may see substance-use data (42 CFR Part 2); case
/// management is denied it.
pub fn consent(patient: &str) -> Value {
    let org = |o: &str| {
        json!({"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
               "reference": {"reference": format!("Organization/{o}")}})
    };
    let label = |c: &str| json!({"system": ACT_CODE, "code": c});
    let team: Vec<Value> = ["psych", "primary", "therapy", "peer", "casemgmt"]
        .map(org)
        .to_vec();
    json!({
        "resourceType": "Consent", "status": "active", "dateTime": "2026-01-01",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
        "patient": {"reference": patient},
        // The engine decides by the first provision that matches, and sensitive data only
        // by one naming its category: the specific provisions come first.
        "provision": {"type": "deny", "provision": [
            {"type": "deny", "actor": [org("casemgmt")], "securityLabel": [label("42CFRPart2"), label("SUD"), label("ETH")]},
            {"type": "permit", "actor": [org("psych")], "securityLabel": [label("42CFRPart2"), label("SUD"), label("ETH")]},
            {"type": "permit", "actor": team.clone(), "securityLabel": [label("PSY")]},
            {"type": "permit", "actor": team}
        ]}
    })
}

/// Loads the scenario through the API.
pub async fn load(s: &TestServer) -> Scenario {
    let sources = [
        (PSYCH, "urn:mrn:psychiatry", "PSY-1001"),
        (PRIMARY, "urn:mrn:primary-care", "PC-77"),
        (THERAPY, "urn:mrn:therapy", "TH-5"),
        (PEER, "urn:mrn:peer-support", "PS-12"),
        (CASE_MANAGER, "urn:mrn:case-management", "CM-340"),
    ];
    let mut patients = Vec::new();
    for (token, system, mrn) in sources {
        patients.push(create(s, token, patient(system, mrn)).await);
    }
    // The person's consent, on file with each of their records.
    for p in &patients {
        create(s, PSYCH, consent(&format!("Patient/{p}"))).await;
    }
    let [psych, primary, therapy, peer, cm] =
        [0, 1, 2, 3, 4].map(|i| format!("Patient/{}", patients[i]));
    let now = chrono::Utc::now();
    let day = |offset: i64| {
        (now + chrono::Duration::days(offset))
            .format("%Y-%m-%d")
            .to_string()
    };

    // Psychiatry.
    create(
        s,
        PSYCH,
        sertraline(
            &psych,
            "Practitioner/psychiatrist",
            "Dr. Priya Shah (psychiatrist)",
            100,
        ),
    )
    .await;
    create(
        s,
        PSYCH,
        json!({
            "resourceType": "Goal", "lifecycleStatus": "active",
            "description": coded("http://loinc.org", "44261-6", "PHQ-9 below 10"),
            "subject": {"reference": psych}
        }),
    )
    .await;
    create(s, PSYCH, json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": coded(SCT, "370143000", "Major depressive disorder"),
        "subject": {"reference": psych}
    })).await;
    create(s, PSYCH, json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": coded("http://hl7.org/fhir/sid/icd-10-cm", "F11.20", SUD_CONDITION),
        "subject": {"reference": psych}
    })).await;
    create(
        s,
        PSYCH,
        json!({
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
            "subject": {"reference": psych},
            "period": {"start": day(-16), "end": day(-10)}
        }),
    )
    .await;
    create(
        s,
        PSYCH,
        care_team(&psych, "Dr. Priya Shah", "Psychiatrist", "+1 555 0100"),
    )
    .await;

    // Primary care.
    create(
        s,
        PRIMARY,
        sertraline(
            &primary,
            "Practitioner/gp",
            "Dr. Tom Okafor (primary care)",
            50,
        ),
    )
    .await;
    create(
        s,
        PRIMARY,
        care_team(
            &primary,
            "Dr. Tom Okafor",
            "Primary care physician",
            "+1 555 0101",
        ),
    )
    .await;

    // Therapy and peer support plan the same weekly sessions.
    create(s, THERAPY, cbt(&therapy, "Jordan Lee, LCSW")).await;
    create(
        s,
        THERAPY,
        care_team(&therapy, "Jordan Lee", "Therapist", "+1 555 0102"),
    )
    .await;
    create(s, PEER, cbt(&peer, "Sam Ortiz, peer specialist")).await;
    create(
        s,
        PEER,
        care_team(&peer, "Sam Ortiz", "Peer support specialist", "+1 555 0103"),
    )
    .await;

    // Case management: a housing referral, sent two days ago.
    create(
        s,
        CASE_MANAGER,
        json!({
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "category": [coded(SCT, "3457005", "Patient referral")],
            "code": coded(SCT, "710920002", "Referral to housing support service"),
            "subject": {"reference": cm},
            "authoredOn": day(-2)
        }),
    )
    .await;
    create(
        s,
        CASE_MANAGER,
        care_team(&cm, "Maria Chen", "Case manager", "+1 555 0104"),
    )
    .await;
    Scenario { patients }
}

/// Every resource of the given type in a view Bundle.
pub fn of_type<'a>(view: &'a Value, rtype: &str) -> Vec<&'a Value> {
    view["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == rtype)
        .collect()
}

/// The `care-plan-flag` codes of the view's DetectedIssues, sorted.
pub fn flag_codes(view: &Value) -> Vec<String> {
    let mut codes: Vec<String> = of_type(view, "DetectedIssue")
        .iter()
        .flat_map(|d| d["code"]["coding"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["system"] == caregate_careplan::FLAG_SYSTEM)
        .filter_map(|c| c["code"].as_str().map(str::to_string))
        .collect();
    codes.sort();
    codes
}
