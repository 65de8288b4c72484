//! The shared care-plan view over HTTP: two sources' Patients linked by an insurer id, their
//! plans merged into one CarePlan, conflicts flagged, ETag polling, and Patient/$match.

mod support;

use serde_json::{json, Value};
use support::TestServer;

fn patient(mrn_system: &str, mrn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [
            {"system": mrn_system, "value": mrn},
            {"system": "urn:insurer:member", "value": "M-778899"}
        ],
        "name": [{"family": "Rivera", "given": ["Sam"]}],
        "gender": "female",
        "birthDate": "1988-04-02"
    })
}

fn goal(patient: &str, source: &str) -> Value {
    json!({
        "resourceType": "Goal",
        "meta": {"source": source},
        "lifecycleStatus": "active",
        "description": {"coding": [{"system": "http://snomed.info/sct", "code": "226234005", "display": "Healthy diet"}]},
        "subject": {"reference": patient}
    })
}

fn sertraline(patient: &str, requester: &str, mg: u32) -> Value {
    json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "36437", "display": "sertraline"}]},
        "subject": {"reference": patient},
        "requester": {"reference": requester},
        "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                               "doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}]}]
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn one_person_one_shared_care_plan() {
    let s =
        TestServer::start_with(|c| c.linking.trusted_systems = vec!["urn:insurer:member".into()])
            .await;
    let a = s.create(patient("urn:mrn:psychiatry", "P-1")).await;
    let b = s.create(patient("urn:mrn:primary-care", "PC-9")).await;
    let (pa, pb) = (format!("Patient/{a}"), format!("Patient/{b}"));
    s.create(goal(&pa, "urn:ehr:psychiatry")).await;
    s.create(goal(&pb, "urn:ehr:primary-care")).await;
    s.create(sertraline(&pa, "Practitioner/psychiatrist", 50))
        .await;
    s.create(sertraline(&pb, "Practitioner/gp", 100)).await;
    s.create(json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": pa},
                    "title": "Psychiatry plan"})).await;

    let r = s.get(&format!("Patient/{a}/$care-plan")).await;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["type"], "collection");
    let entries = view["entry"].as_array().unwrap();
    let of = |t: &str| {
        entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == t)
            .collect::<Vec<_>>()
    };
    assert_eq!(of("CarePlan").len(), 1, "one synthesized CarePlan");
    let goals = of("Goal");
    assert_eq!(
        goals.len(),
        1,
        "the same coded goal from both sources is merged"
    );
    let sources = goals[0]["resource"]["extension"]
        .as_array()
        .map_or(0, |e| e.len());
    assert_eq!(
        sources, 2,
        "the merged goal lists both sources: {}",
        goals[0]
    );
    assert_eq!(
        of("MedicationRequest").len(),
        2,
        "different doses are never merged away"
    );
    assert!(
        !of("DetectedIssue").is_empty(),
        "the dose conflict is flagged"
    );

    // Any linked Patient id gives the same person's view; unchanged views answer 304.
    let r = s.get(&format!("Patient/{b}/$care-plan")).await;
    assert_eq!(r.status(), 200);
    let again = s
        .http
        .get(s.url(&format!("Patient/{a}/$care-plan")))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(s.get("Patient/nope/$care-plan").await.status(), 404);
    // The clinician page shows the merged items and the flag.
    let page = s.get(&format!("ui/patients/{a}/care-plan")).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("Healthy diet"), "{html}");
    assert!(
        html.contains("urn:ehr:psychiatry") && html.contains("urn:ehr:primary-care"),
        "{html}"
    );
    assert!(html.contains("class=\"flag\""), "{html}");

    // $match finds both records with certainty through the insurer id.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": patient("urn:mrn:other", "X")},
        {"name": "onlyCertainMatches", "valueBoolean": true}
    ]});
    let r = s.post("Patient/$match", &params).await;
    assert_eq!(r.status(), 200);
    let found: Value = r.json().await.unwrap();
    assert_eq!(found["total"], 2, "{found}");
    assert_eq!(
        found["entry"][0]["search"]["extension"][0]["valueCode"],
        "certain"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_item_names_the_organisation_that_contributed_it() {
    let s = TestServer::start_with(|c| {
        c.linking.trusted_systems = vec!["urn:insurer:member".into()];
        c.clients = vec![
            support::client("psych", "psych-token", &["system/*.*"]),
            support::client("primary", "primary-token", &["system/*.*"]),
        ];
    })
    .await;
    let post = |token: &'static str, body: Value| {
        let (http, url) = (
            s.http.clone(),
            s.url(body["resourceType"].as_str().unwrap()),
        );
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let a = post("psych-token", patient("urn:mrn:psychiatry", "P-1")).await;
    let b = post("primary-token", patient("urn:mrn:primary-care", "PC-9")).await;
    post(
        "psych-token",
        goal(&format!("Patient/{a}"), "urn:ehr:psychiatry"),
    )
    .await;
    post(
        "primary-token",
        goal(&format!("Patient/{b}"), "urn:ehr:primary-care"),
    )
    .await;
    let view: Value = s
        .http
        .get(s.url(&format!("Patient/{a}/$care-plan")))
        .bearer_auth("psych-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let goal = view["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Goal")
        .expect("merged goal");
    let text = goal.to_string();
    assert!(
        text.contains("Organization/psych") && text.contains("Organization/primary"),
        "{text}"
    );
    s.stop().await;
}
