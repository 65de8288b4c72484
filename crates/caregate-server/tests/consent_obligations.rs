//! Consent obligations end to end: a permit carrying `REDACT` releases psychotherapy notes
//! to the primary-care clinic only redacted — on read, search, history and in
//! `Consent/$evaluate` — while the psychiatry practice sees them whole. And the caregate
//! Consent profile: a Consent missing what the gateway needs is refused with 422 naming the
//! element.

mod support;

use serde_json::{json, Value};
use support::{client, TestServer};

const ACT: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.clients = vec![
            client(
                "psychiatry",
                "psy-token",
                &["system/*.*", "system/Consent.cud"],
            ),
            client("primary", "pc-token", &["system/*.*"]),
        ]
    })
    .await
}

async fn get(s: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let r = s
        .http
        .get(s.url(path))
        .bearer_auth(token)
        .header("x-purpose-of-use", "TREAT")
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn security_codes(resource: &Value) -> Vec<String> {
    resource["meta"]["security"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["code"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn consent(patient: &str) -> Value {
    json!({
        "resourceType": "Consent", "status": "active", "dateTime": "2025-01-01",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": ACT, "code": "OPTIN"}]},
        "patient": {"reference": patient},
        "provision": {"type": "deny", "provision": [
            {"type": "permit",
             "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                        "reference": {"reference": "Organization/psychiatry"}}],
             "securityLabel": [{"system": ACT, "code": "PSYTHPN"}]},
            {"type": "permit",
             "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                        "reference": {"reference": "Organization/primary"}}],
             "securityLabel": [{"system": ACT, "code": "PSYTHPN"}, {"system": ACT, "code": "REDACT"}]}
        ]}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn psychotherapy_notes_reach_primary_care_redacted() {
    let s = start().await;
    let pid = s
        .create_as(
            "psy-token",
            &json!({"resourceType": "Patient", "name": [{"family": "Redacted"}]}),
        )
        .await;
    let patient = format!("Patient/{pid}");
    let r = s.post_as("psy-token", "Consent", &consent(&patient)).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    // The default labelling rules mark the note PSYTHPN (and V) on ingest.
    let note = json!({
        "resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": "urn:caregate:note-type", "code": "psychotherapy-note"}]},
        "subject": {"reference": patient},
        "date": "2025-03-04T10:00:00Z",
        "description": "Session 4: discussed the divorce",
        "content": [{"attachment": {"contentType": "text/plain", "data": "U2Vzc2lvbiBub3Rlcw=="}}]
    });
    let nid = s.create_as("psy-token", &note).await;
    let path = format!("DocumentReference/{nid}");

    // Psychiatry: the note whole.
    let (status, whole) = get(&s, "psy-token", &path).await;
    assert_eq!(status, 200);
    assert_eq!(whole["description"], "Session 4: discussed the divorce");
    assert!(security_codes(&whole).contains(&"PSYTHPN".to_string()));
    assert!(!security_codes(&whole).contains(&"REDACTED".to_string()));

    // Primary care: that a note exists, whose and when — not what it says.
    let (status, redacted) = get(&s, "pc-token", &path).await;
    assert_eq!(status, 200, "{redacted}");
    assert!(redacted.get("description").is_none(), "{redacted}");
    assert!(redacted.get("type").is_none(), "{redacted}");
    assert!(redacted["content"][0]["attachment"].get("data").is_none());
    assert_eq!(
        redacted["content"][0]["attachment"]["extension"][0]["valueCode"],
        "masked"
    );
    assert_eq!(redacted["subject"]["reference"], patient.as_str());
    assert_eq!(redacted["date"], "2025-03-04T10:00:00Z");
    assert_eq!(redacted["id"], nid.as_str());
    let codes = security_codes(&redacted);
    assert!(codes.contains(&"REDACTED".to_string()), "{codes:?}");
    assert!(codes.contains(&"PSYTHPN".to_string()), "{codes:?}");

    // The same in search, in the count, and in history.
    let (status, bundle) = get(
        &s,
        "pc-token",
        &format!("DocumentReference?subject={patient}"),
    )
    .await;
    assert_eq!(status, 200);
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{bundle}");
    assert!(entries[0]["resource"].get("description").is_none());
    assert!(security_codes(&entries[0]["resource"]).contains(&"REDACTED".to_string()));
    let (_, count) = get(
        &s,
        "pc-token",
        &format!("DocumentReference?subject={patient}&_summary=count"),
    )
    .await;
    assert_eq!(count["total"], 1, "{count}");
    let (status, history) = get(&s, "pc-token", &format!("{path}/_history")).await;
    assert_eq!(status, 200);
    let versions = history["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(versions.len(), 1, "{history}");
    assert!(versions[0]["resource"].get("description").is_none());
    let (_, psy_search) = get(
        &s,
        "psy-token",
        &format!("DocumentReference?subject={patient}"),
    )
    .await;
    assert_eq!(
        psy_search["entry"][0]["resource"]["description"],
        "Session 4: discussed the divorce"
    );

    // $evaluate lists the obligation and where it comes from.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": patient}},
        {"name": "actor", "valueReference": {"reference": "Organization/primary"}},
        {"name": "action", "valueCode": "access"},
        {"name": "purpose", "valueCode": "TREAT"},
        {"name": "type", "valueCode": "DocumentReference"},
        {"name": "label", "valueCoding": {"system": ACT, "code": "PSYTHPN"}}
    ]});
    let r = s.post_as("psy-token", "Consent/$evaluate", &params).await;
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.expect("json");
    let parameter = out["parameter"].as_array().cloned().unwrap_or_default();
    let named = |n: &str| parameter.iter().find(|p| p["name"] == n).cloned();
    assert_eq!(
        named("decision").map(|p| p["valueCode"].clone()),
        Some(json!("permit"))
    );
    assert_eq!(
        named("provision").map(|p| p["valueString"].clone()),
        Some(json!("Consent.provision.provision[1]"))
    );
    let obligation = named("obligation").expect("an obligation parameter");
    assert_eq!(obligation["part"][0]["valueCoding"]["code"], "REDACT");
    assert!(obligation["part"][1]["valueString"]
        .as_str()
        .unwrap_or_default()
        .contains("redacted"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consents_must_meet_the_caregate_profile() {
    let s = start().await;
    let pid = s
        .create_as(
            "psy-token",
            &json!({"resourceType": "Patient", "name": [{"family": "Profiled"}]}),
        )
        .await;
    let good = consent(&format!("Patient/{pid}"));
    // Each missing or wrong element is refused naming it: 422 for the profile's rules and
    // base invariants (ppc-1: policy or policyRule); category is required by base R4, so
    // its absence is a structural 400.
    type Change = Box<dyn Fn(&mut Value)>;
    let without = |element: &'static str| -> Change {
        Box::new(move |c: &mut Value| {
            c.as_object_mut().map(|o| o.remove(element));
        })
    };
    let cases: Vec<(&str, Change, &str, u16)> = vec![
        (
            "no provision",
            without("provision"),
            "Consent.provision",
            422,
        ),
        ("no dateTime", without("dateTime"), "Consent.dateTime", 422),
        ("no patient", without("patient"), "Consent.patient", 422),
        ("no category", without("category"), "Consent.category", 400),
        (
            "neither policyRule nor policy",
            without("policyRule"),
            "Consent",
            422,
        ),
        (
            "scope other than patient-privacy",
            Box::new(|c| {
                c["scope"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]});
            }),
            "Consent.scope",
            422,
        ),
    ];
    for (what, change, element, status) in cases {
        let mut bad = good.clone();
        change(&mut bad);
        let r = s.post_as("psy-token", "Consent", &bad).await;
        assert_eq!(r.status(), status, "{what}");
        let oo: Value = r.json().await.expect("json");
        let error = oo["issue"]
            .as_array()
            .and_then(|issues| issues.iter().find(|i| i["severity"] == "error"))
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(error["expression"][0], element, "{what}: {oo}");
        // The profile's own rules name it; base R4 rules (category 1..*, ppc-1) do not.
        if status == 422 && element != "Consent" {
            assert!(oo.to_string().contains("caregate-consent"), "{what}: {oo}");
        }
    }
    let r = s.post_as("psy-token", "Consent", &good).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    s.stop().await;
}

/// CareTeam membership counts as the actor: a Consent naming a CareTeam lets its members
/// in (looked up only because the Consent names a CareTeam), and nobody else.
#[tokio::test(flavor = "multi_thread")]
async fn care_team_membership_counts_as_the_actor() {
    let s = start().await;
    let pid = s
        .create_as(
            "psy-token",
            &json!({"resourceType": "Patient", "name": [{"family": "Teamed"}]}),
        )
        .await;
    let patient = format!("Patient/{pid}");
    let team = json!({"resourceType": "CareTeam", "status": "active",
        "subject": {"reference": patient},
        "participant": [{"member": {"reference": "Organization/primary"}}]});
    let team_id = s.create_as("psy-token", &team).await;
    let mut c = consent(&patient);
    c["provision"] = json!({"type": "deny", "provision": [
        {"type": "permit", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                                      "reference": {"reference": format!("CareTeam/{team_id}")}}]}
    ]});
    let r = s.post_as("psy-token", "Consent", &c).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let r = s
        .post_as(
            "psy-token",
            "Observation",
            &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "subject": {"reference": patient}, "effectiveDateTime": "2025-02-01",
                "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}),
        )
        .await;
    // The psychiatry practice is not in the team: its contribution is refused too.
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap_or_default());
    let oid = s.create_as("pc-token", &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "subject": {"reference": patient}, "effectiveDateTime": "2025-02-01",
                "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}})).await;
    let (status, _) = get(&s, "pc-token", &format!("Observation/{oid}")).await;
    assert_eq!(status, 200);
    let (status, _) = get(&s, "psy-token", &format!("Observation/{oid}")).await;
    assert_eq!(status, 404);
    let (_, count) = get(
        &s,
        "psy-token",
        &format!("Observation?subject={patient}&_summary=count"),
    )
    .await;
    assert_eq!(count["total"], 0, "{count}");
    s.stop().await;
}

/// `[[consent.redact]]`: a deployment rule (not the patient's Consent) that psychotherapy
/// notes reach everyone but the psychiatry practice redacted, even under a plain permit.
#[tokio::test(flavor = "multi_thread")]
async fn configured_redaction_rule_applies_to_every_other_reader() {
    let s = TestServer::start_with(|c| {
        c.clients = vec![
            client(
                "psychiatry",
                "psy-token",
                &["system/*.*", "system/Consent.cud"],
            ),
            client("primary", "pc-token", &["system/*.*"]),
        ];
        c.consent.redact = vec![caregate_server::RedactConfig {
            label: "PSYTHPN".into(),
            except: vec!["Organization/psychiatry".into()],
        }];
    })
    .await;
    let pid = s
        .create_as(
            "psy-token",
            &json!({"resourceType": "Patient", "name": [{"family": "Rule"}]}),
        )
        .await;
    let patient = format!("Patient/{pid}");
    // A plain permit of psychotherapy notes to both organisations: no REDACT in it.
    let mut plain = consent(&patient);
    plain["provision"]["provision"][1]["securityLabel"] =
        json!([{"system": ACT, "code": "PSYTHPN"}]);
    let r = s.post_as("psy-token", "Consent", &plain).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let note = json!({
        "resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": "urn:caregate:note-type", "code": "psychotherapy-note"}]},
        "subject": {"reference": patient},
        "description": "Session 9: talked about the new job",
        "content": [{"attachment": {"contentType": "text/plain", "data": "U2Vzc2lvbg=="}}]
    });
    let nid = s.create_as("psy-token", &note).await;
    let path = format!("DocumentReference/{nid}");
    let (_, whole) = get(&s, "psy-token", &path).await;
    assert_eq!(whole["description"], "Session 9: talked about the new job");
    let (status, redacted) = get(&s, "pc-token", &path).await;
    assert_eq!(status, 200, "{redacted}");
    assert!(redacted.get("description").is_none(), "{redacted}");
    assert!(security_codes(&redacted).contains(&"REDACTED".to_string()));
    s.stop().await;
}
