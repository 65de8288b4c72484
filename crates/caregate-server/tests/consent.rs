//! Consent end to end: the patient's Consent decides who sees and who contributes, hidden
//! data does not leak through counts, denials and emergency access raise security alerts.

mod support;

use serde_json::{json, Value};
use support::{client, TestServer};

async fn as_client(
    s: &TestServer,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    purpose: Option<&str>,
) -> reqwest::Response {
    let mut r = s.http.request(method, s.url(path)).bearer_auth(token);
    if let Some(b) = body {
        r = r.header("content-type", "application/fhir+json").json(b);
    }
    if let Some(p) = purpose {
        r = r.header("x-purpose-of-use", p);
    }
    r.send().await.expect("request")
}

fn condition(patient: &str, labels: &[&str]) -> Value {
    let security: Vec<Value> = labels
        .iter()
        .map(|c| json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": c}))
        .collect();
    let mut c = json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2"}]},
        "subject": {"reference": patient}
    });
    if !security.is_empty() {
        c["meta"] = json!({"security": security});
    }
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn the_patients_consent_decides() {
    let s = TestServer::start_with(|c| {
        c.clients = vec![
            client("clinic-a", "a-token", &["system/*.*", "system/Consent.cud"]),
            client("clinic-b", "b-token", &["system/*.*"]),
            client("auditor", "audit-token", &["system/AuditEvent.rs"]),
        ]
    })
    .await;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let r = as_client(
        &s,
        "a-token",
        post.clone(),
        "Patient",
        Some(&json!({"resourceType": "Patient", "name": [{"family": "Consenting"}]})),
        None,
    )
    .await;
    assert_eq!(r.status(), 201);
    let pid = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let patient = format!("Patient/{pid}");
    // Deny by default; clinic A may see data for treatment; nobody may add data from clinic B.
    let consent = json!({
        "resourceType": "Consent", "status": "active", "dateTime": "2024-01-01",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "patient": {"reference": patient},
        "provision": {"type": "deny", "provision": [
            {"type": "permit",
             "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                        "reference": {"reference": "Organization/clinic-a"}}],
             "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
             "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]},
                        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "collect"}]}]}
        ]}
    });
    assert_eq!(
        as_client(&s, "a-token", post.clone(), "Consent", Some(&consent), None)
            .await
            .status(),
        201
    );
    let r = as_client(
        &s,
        "a-token",
        post.clone(),
        "Condition",
        Some(&condition(&patient, &[])),
        Some("TREAT"),
    )
    .await;
    assert_eq!(r.status(), 201);
    let cid = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = as_client(
        &s,
        "a-token",
        post.clone(),
        "Condition",
        Some(&condition(&patient, &["SUD", "42CFRPart2"])),
        Some("TREAT"),
    )
    .await;
    assert_eq!(r.status(), 201);

    // Clinic A, treating: sees the ordinary Condition, not the Part 2 one (never named).
    let r = as_client(
        &s,
        "a-token",
        get.clone(),
        &format!("Condition/{cid}"),
        None,
        Some("TREAT"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let b: Value = as_client(
        &s,
        "a-token",
        get.clone(),
        &format!("Condition?subject={patient}"),
        None,
        Some("TREAT"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(b["total"], 1);
    // Without the purpose the permit does not apply.
    let b: Value = as_client(
        &s,
        "a-token",
        get.clone(),
        &format!("Condition?subject={patient}"),
        None,
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(b["total"], 0);
    // Clinic B sees nothing, not even through a count; a direct read looks like a missing resource.
    let b: Value = as_client(
        &s,
        "b-token",
        get.clone(),
        &format!("Condition?subject={patient}&_summary=count"),
        None,
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(b["total"], 0);
    let r = as_client(
        &s,
        "b-token",
        get.clone(),
        &format!("Condition/{cid}"),
        None,
        None,
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = as_client(
        &s,
        "b-token",
        get.clone(),
        &format!("Condition?subject={patient}"),
        None,
        None,
    )
    .await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["total"], 0);
    let notice = page["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .any(|e| e["resource"]["issue"][0]["code"] == "suppressed");
    assert!(notice, "{page}");
    // Only consent management may record Consents: a wildcard scope is not enough.
    let r = as_client(&s, "b-token", post.clone(), "Consent", Some(&consent), None).await;
    assert_eq!(r.status(), 403);
    // Clinic B may not contribute to this patient's record.
    let r = as_client(
        &s,
        "b-token",
        post.clone(),
        "Condition",
        Some(&condition(&patient, &[])),
        None,
    )
    .await;
    assert_eq!(r.status(), 403);
    // $evaluate explains the decision for a described request.
    let ask = |org: &str, labels: Value| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": patient}},
            {"name": "actor", "valueReference": {"reference": org}},
            {"name": "action", "valueCode": "access"},
            {"name": "purpose", "valueCode": "TREAT"},
            {"name": "type", "valueCode": "Condition"},
            {"name": "label", "valueCoding": labels}
        ]})
    };
    let value = |out: &Value, name: &str| -> Value {
        out["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let label =
        json!({"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"});
    let r = as_client(
        &s,
        "a-token",
        post.clone(),
        "Consent/$evaluate",
        Some(&ask("Organization/clinic-a", label.clone())),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(value(&out, "decision")["valueCode"], "permit", "{out}");
    assert_eq!(
        value(&out, "provision")["valueString"],
        "Consent.provision.provision[0]"
    );
    let r = as_client(
        &s,
        "a-token",
        post.clone(),
        "Consent/$evaluate",
        Some(&ask("Organization/clinic-b", label)),
        None,
    )
    .await;
    let out: Value = r.json().await.unwrap();
    assert_eq!(value(&out, "decision")["valueCode"], "deny", "{out}");
    assert_eq!(value(&out, "provision")["valueString"], "Consent.provision");
    let sud = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUD"});
    let r = as_client(
        &s,
        "a-token",
        post.clone(),
        "Consent/$evaluate",
        Some(&ask("Organization/clinic-a", sud)),
        None,
    )
    .await;
    let out: Value = r.json().await.unwrap();
    assert_eq!(
        value(&out, "decision")["valueCode"],
        "deny",
        "SUD data needs a permit naming the label: {out}"
    );
    // Break the glass: emergency treatment reads anyway, and it is flagged.
    let r = as_client(
        &s,
        "b-token",
        get.clone(),
        &format!("Condition/{cid}"),
        None,
        Some("ETREAT"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut alerts = 0;
    for _ in 0..60 {
        let b: Value = as_client(
            &s,
            "audit-token",
            get.clone(),
            &format!("AuditEvent?type=110113&patient={patient}"),
            None,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
        alerts = b["total"].as_u64().unwrap_or(0);
        if alerts >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        alerts >= 3,
        "expected alerts for the denials and the emergency access, found {alerts}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sensitive_data_is_withheld_without_an_explicit_permit() {
    // Development mode, consent enforced with the default opt-out policy.
    let s = TestServer::start().await;
    let pid = s
        .create(json!({"resourceType": "Patient", "name": [{"family": "Labelled"}]}))
        .await;
    let patient = format!("Patient/{pid}");
    s.create(condition(&patient, &[])).await;
    s.create(condition(&patient, &["PSY"])).await;
    let b = s.get_json(&format!("Condition?subject={patient}")).await;
    assert_eq!(b["total"], 1);
    // The patient permits mental-health data explicitly.
    let consent = json!({
        "resourceType": "Consent", "status": "active", "dateTime": "2024-01-01",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "patient": {"reference": patient},
        "provision": {"type": "permit", "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]}
    });
    s.create(consent).await;
    let b = s.get_json(&format!("Condition?subject={patient}")).await;
    assert_eq!(b["total"], 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn denials_can_be_explained_when_configured() {
    let s = TestServer::start_with(|c| {
        c.consent.explain_denials = true;
        c.consent.default = "opt-in".into();
    })
    .await;
    let pid = s
        .create(json!({"resourceType": "Patient", "name": [{"family": "OptIn"}]}))
        .await;
    let cid = s.create(condition(&format!("Patient/{pid}"), &[])).await;
    let r = s.get(&format!("Condition/{cid}")).await;
    assert_eq!(r.status(), 403);
    let oo: Value = r.json().await.unwrap();
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("opt-in"),
        "{oo}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_labels_sensitive_data() {
    let s = TestServer::start().await;
    let pid = s
        .create(json!({"resourceType": "Patient", "name": [{"family": "Labels"}]}))
        .await;
    let mut oud = condition(&format!("Patient/{pid}"), &[]);
    oud["code"] = json!({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F11.20", "display": "Opioid dependence, uncomplicated"}]});
    let r = s.post("Condition", &oud).await;
    assert_eq!(r.status(), 201);
    let stored: Value = r.json().await.unwrap();
    let codes: Vec<&str> = stored["meta"]["security"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["code"].as_str())
        .collect();
    for expected in ["ETH", "42CFRPart2", "R", "NORDSCLCD"] {
        assert!(codes.contains(&expected), "{codes:?}");
    }
    // Without the patient's explicit permit the labelled Condition stays out of searches.
    assert_eq!(
        s.get_json(&format!("Condition?subject=Patient/{pid}"))
            .await["total"],
        0
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_without_consent_is_held_until_a_consent_arrives() {
    let s = TestServer::start_with(|c| {
        c.consent.without_consent = "hold".into();
        c.clients = vec![
            client("psych", "p-token", &["system/*.*", "system/Consent.cud"]),
            client("primary", "pc-token", &["system/*.*"]),
        ]
    })
    .await;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let r = as_client(
        &s,
        "p-token",
        post.clone(),
        "Patient",
        Some(&json!({"resourceType": "Patient", "name": [{"family": "Held"}]})),
        None,
    )
    .await;
    let pid = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let patient = format!("Patient/{pid}");
    let r = as_client(
        &s,
        "p-token",
        post.clone(),
        "Condition",
        Some(&condition(&patient, &[])),
        None,
    )
    .await;
    assert_eq!(r.status(), 201, "held data is stored");
    let total = |token: &'static str| {
        let (s, patient, get) = (&s, patient.clone(), get.clone());
        async move {
            as_client(
                s,
                token,
                get,
                &format!("Condition?subject={patient}"),
                None,
                None,
            )
            .await
            .json::<Value>()
            .await
            .unwrap()["total"]
                .clone()
        }
    };
    assert_eq!(total("p-token").await, 1, "its source sees it");
    assert_eq!(total("pc-token").await, 0, "others do not, yet");
    let held: Value = as_client(
        &s,
        "p-token",
        get.clone(),
        &format!("Condition?subject={patient}"),
        None,
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let held_id = held["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = as_client(
        &s,
        "pc-token",
        get.clone(),
        &format!("Condition/{held_id}"),
        None,
        None,
    )
    .await;
    assert_eq!(
        r.status(),
        404,
        "a direct read does not reveal held data either"
    );
    let consent = json!({
        "resourceType": "Consent", "status": "active", "dateTime": "2024-01-01",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "patient": {"reference": patient},
        "provision": {"type": "permit"}
    });
    assert_eq!(
        as_client(&s, "p-token", post.clone(), "Consent", Some(&consent), None)
            .await
            .status(),
        201
    );
    assert_eq!(
        total("pc-token").await,
        1,
        "released once the patient's consent is on file"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_without_consent_can_be_refused() {
    let s = TestServer::start_with(|c| c.consent.without_consent = "reject".into()).await;
    let pid = s
        .create(json!({"resourceType": "Patient", "name": [{"family": "NoConsent"}]}))
        .await;
    let r = s
        .post("Condition", &condition(&format!("Patient/{pid}"), &[]))
        .await;
    assert_eq!(r.status(), 403);
    // Records about no patient are outside every Consent and are accepted.
    let r = s
        .post(
            "Organization",
            &json!({"resourceType": "Organization", "name": "Riverside Psychiatry"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    s.stop().await;
}

/// Three organisations; the patient shares with all of them but keeps substance-use data
/// from the case manager. What the case manager cannot see must not show through search
/// totals, `_summary=count`, `_revinclude`, paging or history, while psychiatry sees it all.
#[tokio::test(flavor = "multi_thread")]
async fn hidden_data_does_not_leak_through_includes_paging_or_history() {
    let s = TestServer::start_with(|c| {
        c.clients = vec![
            client("psychiatry", "psy", &["system/*.*", "system/Consent.cud"]),
            client("primary", "pc", &["system/*.*"]),
            client("casemgmt", "cm", &["system/*.*"]),
        ]
    })
    .await;
    let (get, post) = (reqwest::Method::GET, reqwest::Method::POST);
    let create = |token: &'static str, path: &'static str, body: Value| {
        let s = &s;
        let post = post.clone();
        async move {
            let r = as_client(s, token, post, path, Some(&body), Some("TREAT")).await;
            assert_eq!(
                r.status(),
                201,
                "{path}: {}",
                r.text().await.unwrap_or_default()
            );
            r.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_string()
        }
    };
    let pid = create(
        "psy",
        "Patient",
        json!({"resourceType": "Patient", "name": [{"family": "Threeway"}]}),
    )
    .await;
    let patient = format!("Patient/{pid}");
    let act = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
    let ircp = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]});
    let actor = |org: &str| json!({"role": ircp, "reference": {"reference": format!("Organization/{org}")}});
    let consent = json!({
        "resourceType": "Consent", "status": "active", "dateTime": "2025-01-01",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": act, "code": "OPTIN"}]},
        "patient": {"reference": patient},
        "provision": {"type": "deny", "provision": [
            {"type": "permit", "actor": [actor("psychiatry"), actor("primary"), actor("casemgmt")]},
            {"type": "permit", "actor": [actor("psychiatry")],
             "securityLabel": [{"system": act, "code": "ETH"}]},
            {"type": "deny", "actor": [actor("casemgmt")],
             "securityLabel": [{"system": act, "code": "ETH"}]}
        ]}
    });
    create("psy", "Consent", consent).await;
    let ordinary = create("pc", "Condition", condition(&patient, &[])).await;
    let mut sud = condition(&patient, &[]);
    sud["code"] = json!({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F11.20", "display": "Opioid dependence, uncomplicated"}]});
    let sud = create("psy", "Condition", sud).await;

    let fetch = |token: &'static str, path: String| {
        let s = &s;
        let get = get.clone();
        async move {
            let r = as_client(s, token, get, &path, None, Some("TREAT")).await;
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let ids = |bundle: &Value, rtype: &str| -> Vec<String> {
        bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["resource"]["resourceType"] == rtype)
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
            .collect()
    };
    // The SUD Condition was labelled on ingest; psychiatry sees it.
    let (status, whole) = fetch("psy", format!("Condition/{sud}")).await;
    assert_eq!(status, 200);
    assert!(whole.to_string().contains("42CFRPart2"), "{whole}");

    for (token, sees_sud) in [("psy", true), ("pc", false), ("cm", false)] {
        let expected: Vec<String> = if sees_sud {
            let mut v = vec![ordinary.clone(), sud.clone()];
            v.sort();
            v
        } else {
            vec![ordinary.clone()]
        };
        let (status, _) = fetch(token, format!("Condition/{sud}")).await;
        assert_eq!(status, if sees_sud { 200 } else { 404 }, "{token} read");
        let (status, _) = fetch(token, format!("Condition/{sud}/_history")).await;
        assert_eq!(status, if sees_sud { 200 } else { 404 }, "{token} history");

        let (_, page) = fetch(token, format!("Condition?subject={patient}")).await;
        let mut found = ids(&page, "Condition");
        found.sort();
        assert_eq!(found, expected, "{token} search");
        assert_eq!(page["total"], expected.len(), "{token} total");
        let (_, count) = fetch(token, format!("Condition?subject={patient}&_summary=count")).await;
        assert_eq!(count["total"], expected.len(), "{token} _summary=count");

        let (_, with) = fetch(
            token,
            format!("Patient?_id={pid}&_revinclude=Condition:subject"),
        )
        .await;
        let mut included = ids(&with, "Condition");
        included.sort();
        assert_eq!(included, expected, "{token} _revinclude");

        // Page by page: every page and its links agree with what the reader may see.
        let (_, first) = fetch(token, format!("Condition?subject={patient}&_count=1")).await;
        assert_eq!(first["total"], expected.len(), "{token} paged total");
        let next = first["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
        assert_eq!(next.is_some(), sees_sud, "{token} next link: {first}");
        let mut paged = ids(&first, "Condition");
        if let Some(url) = next {
            let path = url.trim_start_matches(&s.base).trim_start_matches('/');
            let (_, second) = fetch(token, path.to_string()).await;
            paged.extend(ids(&second, "Condition"));
        }
        paged.sort();
        assert_eq!(paged, expected, "{token} pages");

        let (_, history) = fetch(token, "Condition/_history".to_string()).await;
        assert_eq!(
            ids(&history, "Condition").contains(&sud),
            sees_sud,
            "{token} type history"
        );
    }
    s.stop().await;
}
