//! The shared care-plan view over HTTP: two sources' Patients linked by an insurer id, their
//! plans merged into one CarePlan, conflicts flagged, ETag polling, and Patient/$match.

mod careplan_scenario;
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

/// `GET Patient/{id}/$care-plan` with `If-None-Match: etag`.
async fn care_plan_if_none_match(s: &TestServer, id: &str, etag: &str) -> reqwest::Response {
    s.http
        .get(s.url(&format!("Patient/{id}/$care-plan")))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("request")
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
    let again = care_plan_if_none_match(&s, &a, &etag).await;
    assert_eq!(again.status(), 304);
    // A new item from either source shows at once (the cached view is invalidated), with a
    // new ETag; the old one no longer matches.
    s.create(goal_coded(&pb, "new-goal", "Sleep 7 hours")).await;
    let r = care_plan_if_none_match(&s, &a, &etag).await;
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
    let view: Value = r.json().await.unwrap();
    assert!(view.to_string().contains("Sleep 7 hours"));
    // A third record of the same person registered later joins the (cached) view at once;
    // an unrelated registration changes nothing.
    s.create(
        json!({"resourceType": "Patient", "name": [{"family": "Okafor", "given": ["Tom"]}],
                    "birthDate": "1971-01-01"}),
    )
    .await;
    let members = |view: &Value| {
        view["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .map_or(0, |p| p["resource"]["link"].as_array().map_or(0, Vec::len))
    };
    assert_eq!(
        members(&s.get_json(&format!("Patient/{a}/$care-plan")).await),
        2
    );
    s.create(patient("urn:mrn:therapy", "T-3")).await;
    assert_eq!(
        members(&s.get_json(&format!("Patient/{a}/$care-plan")).await),
        3
    );
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
    assert!(html.contains("<li class=\"flag"), "{html}");

    // $match finds the three records with certainty through the insurer id.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": patient("urn:mrn:other", "X")},
        {"name": "onlyCertainMatches", "valueBoolean": true}
    ]});
    let r = s.post("Patient/$match", &params).await;
    assert_eq!(r.status(), 200);
    let found: Value = r.json().await.unwrap();
    assert_eq!(found["total"], 3, "{found}");
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

fn goal_coded(patient: &str, code: &str, text: &str) -> Value {
    json!({
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"coding": [{"system": "http://loinc.org", "code": code}], "text": text},
        "subject": {"reference": patient}
    })
}

fn other(patient: &str) -> Value {
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "other", "valueReference": {"reference": patient}}
    ]})
}

/// Goals' texts and the members listed on the view's synthesized Patient.
async fn view_of(s: &TestServer, token: &str, id: &str) -> (Vec<String>, Vec<String>) {
    let r = s.get_as(token, &format!("Patient/{id}/$care-plan")).await;
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    let entries = view["entry"].as_array().unwrap();
    let mut goals: Vec<String> = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Goal")
        .map(|e| {
            e["resource"]["description"]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    goals.sort();
    let person: Vec<&Value> = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Patient")
        .collect();
    assert_eq!(person.len(), 1, "one synthesized Patient: {view}");
    let members = person[0]["resource"]["link"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["type"], "seealso");
            l["other"]["reference"].as_str().unwrap().to_string()
        })
        .collect();
    (goals, members)
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_link_and_unlink_are_recorded_audited_and_lose_nothing() {
    let s = TestServer::start_with(|c| {
        c.linking.trusted_systems = vec!["urn:insurer:member".into()];
        c.clients = vec![
            support::client("psych", "psych-token", &["system/*.*"]),
            support::client("idm", "idm-token", &["system/*.*", "system/Linkage.cu"]),
            support::client("auditor", "audit-token", &["system/AuditEvent.rs"]),
        ];
    })
    .await;
    let create = |body: Value| {
        let s = &s;
        async move {
            let r = s
                .post_as("psych-token", body["resourceType"].as_str().unwrap(), &body)
                .await;
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    // a and c share the insurer id (linked by rule); b shares nothing with either.
    let a = create(patient("urn:mrn:psychiatry", "P-1")).await;
    let mut b_patient = patient("urn:mrn:community", "CM-4");
    b_patient["identifier"] = json!([{"system": "urn:mrn:community", "value": "CM-4"}]);
    b_patient["name"] = json!([{"family": "Rivera-Lopez", "given": ["Samantha"]}]);
    let b = create(b_patient).await;
    let c = create(patient("urn:mrn:primary-care", "PC-9")).await;
    let (pa, pb, pc) = (
        format!("Patient/{a}"),
        format!("Patient/{b}"),
        format!("Patient/{c}"),
    );
    create(goal_coded(&pa, "a-goal", "Goal from a")).await;
    create(goal_coded(&pb, "b-goal", "Goal from b")).await;
    create(goal_coded(&pc, "c-goal", "Goal from c")).await;
    let patient_before: Value = s.get_as("psych-token", &pb).await.json().await.unwrap();

    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let (goals, members) = view_of(&s, "psych-token", &a).await;
    assert_eq!(goals, vec!["Goal from a", "Goal from c"]);
    assert_eq!(members, sorted(vec![pa.clone(), pc.clone()]));
    let (goals, members) = view_of(&s, "psych-token", &b).await;
    assert_eq!(
        (goals, members),
        (vec!["Goal from b".to_string()], vec![pb.clone()])
    );

    // Linking is identity management: the wildcard scope is not enough.
    let r = s
        .post_as("psych-token", &format!("Patient/{a}/$link"), &other(&pb))
        .await;
    assert_eq!(r.status(), 403);
    // Bad input names the element.
    let r = s
        .post_as(
            "idm-token",
            &format!("Patient/{a}/$link"),
            &json!({"resourceType": "Parameters"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(
        support::first_expression(&oo),
        "Parameters.parameter.where(name='other').valueReference"
    );
    let r = s
        .post_as(
            "idm-token",
            &format!("Patient/{a}/$link"),
            &other("Observation/x"),
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = s
        .post_as(
            "idm-token",
            &format!("Patient/{a}/$link"),
            &other("Patient/nope"),
        )
        .await;
    assert_eq!(r.status(), 404);

    // Link b to a: one person of three, seen from any of them.
    let r = s
        .post_as("idm-token", &format!("Patient/{a}/$link"), &other(&pb))
        .await;
    assert_eq!(r.status(), 200);
    let linkage: Value = r.json().await.unwrap();
    assert_eq!(linkage["resourceType"], "Linkage");
    assert_eq!(linkage["active"], true);
    assert_eq!(linkage["author"]["reference"], "Organization/idm");
    let linkage_id = linkage["id"].as_str().unwrap().to_string();
    let all = vec!["Goal from a", "Goal from b", "Goal from c"];
    for id in [&a, &b, &c] {
        let (goals, members) = view_of(&s, "psych-token", id).await;
        assert_eq!(goals, all, "view of {id}");
        assert_eq!(members, sorted(vec![pa.clone(), pb.clone(), pc.clone()]));
    }

    // The link was wrong: undo it. Each Patient's view again holds only its own sources.
    let r = s
        .post_as("idm-token", &format!("Patient/{b}/$unlink"), &other(&pa))
        .await;
    assert_eq!(r.status(), 200);
    let unlinked: Value = r.json().await.unwrap();
    assert_eq!(unlinked["id"], linkage_id.as_str(), "one Linkage per pair");
    assert_eq!(unlinked["active"], false);
    assert_eq!(unlinked["meta"]["versionId"], "2");
    let (goals, members) = view_of(&s, "psych-token", &b).await;
    assert_eq!(
        (goals, members),
        (vec!["Goal from b".to_string()], vec![pb.clone()])
    );
    let (goals, members) = view_of(&s, "psych-token", &a).await;
    assert_eq!(goals, vec!["Goal from a", "Goal from c"]);
    assert_eq!(members, sorted(vec![pa.clone(), pc.clone()]));

    // An unlink beats the rules: a and c share a trusted identifier, yet are split.
    let r = s
        .post_as("idm-token", &format!("Patient/{c}/$unlink"), &other(&pa))
        .await;
    assert_eq!(r.status(), 200);
    let (goals, members) = view_of(&s, "psych-token", &a).await;
    assert_eq!(
        (goals, members),
        (vec!["Goal from a".to_string()], vec![pa.clone()])
    );
    let (goals, _) = view_of(&s, "psych-token", &c).await;
    assert_eq!(goals, vec!["Goal from c"]);

    // The sources' Patients were never touched; the decisions are a versioned log.
    let patient_after: Value = s.get_as("psych-token", &pb).await.json().await.unwrap();
    assert_eq!(patient_after, patient_before);
    let history: Value = s
        .get_as("psych-token", &format!("Linkage/{linkage_id}/_history"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["total"], 2, "{history}");

    // Every decision left an operation AuditEvent naming both Patients and the Linkage.
    let mut found = Vec::new();
    for _ in 0..60 {
        let events: Value = s
            .get_as(
                "audit-token",
                &format!("AuditEvent?patient={pb}&subtype=operation"),
            )
            .await
            .json()
            .await
            .unwrap();
        found = events["entry"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|e| e["resource"].to_string())
            .filter(|t| t.contains(&format!("Linkage/{linkage_id}")))
            .collect();
        if found.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(found.len(), 2, "the $link and the $unlink: {found:?}");
    for event in &found {
        assert!(event.contains(&pa) && event.contains(&pb), "{event}");
    }
    s.stop().await;
}

async fn view_as(s: &TestServer, token: &str, id: String) -> Value {
    let r = s.get_as(token, &format!("Patient/{id}/$care-plan")).await;
    assert_eq!(r.status(), 200, "{token}");
    r.json::<Value>().await.unwrap()
}

/// The mental-health scenario read by three members of the team: the same person's view,
/// merged and flagged for all, with the substance-use Condition (labelled 42CFRPart2 on
/// ingest) shown to psychiatry and withheld from case management, neutrally marked.
#[tokio::test(flavor = "multi_thread")]
async fn mental_health_team_each_reader_sees_what_the_consent_allows() {
    use careplan_scenario as sc;
    let s = sc::server(|_| {}).await;
    let scenario = sc::load(&s).await;
    let condition_names = |view: &Value| -> Vec<String> {
        let mut names: Vec<String> = sc::of_type(view, "Condition")
            .iter()
            .filter_map(|c| c["code"]["text"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let withheld = |view: &Value| {
        sc::of_type(view, "OperationOutcome")
            .iter()
            .any(|o| o["issue"][0]["code"] == "suppressed")
    };

    // Any of the five records opens the same person's view.
    let psych = view_as(&s, sc::PSYCH, scenario.patients[1].clone()).await;
    let psych_members = sc::of_type(&psych, "Patient")[0]["link"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(psych_members, 5);
    assert_eq!(
        sc::flag_codes(&psych),
        vec![
            "discharge-without-follow-up",
            "goal-without-activity",
            "medication-dose-conflict"
        ]
    );
    let cbt: Vec<&Value> = sc::of_type(&psych, "ServiceRequest")
        .into_iter()
        .filter(|r| r["code"]["coding"][0]["code"] == "304891004")
        .collect();
    assert_eq!(cbt.len(), 1, "therapy's and peer support's sessions merged");
    assert_eq!(cbt[0]["extension"].as_array().unwrap().len(), 2);
    let housing = sc::of_type(&psych, "ServiceRequest")
        .into_iter()
        .find(|r| r["code"]["coding"][0]["code"] == "710920002")
        .expect("the housing referral");
    assert_eq!(housing["status"], "active");
    assert_eq!(
        condition_names(&psych),
        vec!["Major depressive disorder", sc::SUD_CONDITION],
        "psychiatry sees the Part 2 Condition"
    );
    assert!(!withheld(&psych), "nothing is withheld from psychiatry");

    let cm = view_as(
        &s,
        sc::CASE_MANAGER,
        scenario.psychiatry_patient().to_string(),
    )
    .await;
    assert_eq!(
        condition_names(&cm),
        vec!["Major depressive disorder"],
        "case management does not see the Part 2 Condition"
    );
    assert!(
        !cm.to_string().contains("F11.20"),
        "no trace of it anywhere in the view"
    );
    assert!(
        withheld(&cm),
        "a neutral withheld marker says something is missing"
    );
    // Everything else is the same shared plan.
    assert_eq!(sc::flag_codes(&cm), sc::flag_codes(&psych));
    assert_eq!(
        sc::of_type(&cm, "ServiceRequest").len(),
        sc::of_type(&psych, "ServiceRequest").len()
    );
    // Primary care holds no explicit Part 2 permit either.
    let primary = view_as(&s, sc::PRIMARY, scenario.patients[1].clone()).await;
    assert_eq!(condition_names(&primary), vec!["Major depressive disorder"]);
    // Repeated reads (served from the view cache) decide the same way.
    let again = view_as(
        &s,
        sc::CASE_MANAGER,
        scenario.psychiatry_patient().to_string(),
    )
    .await;
    assert_eq!(condition_names(&again), vec!["Major depressive disorder"]);
    let again = view_as(&s, sc::PSYCH, scenario.patients[1].clone()).await;
    assert_eq!(again, psych);
    s.stop().await;

    // Without the notice configured, the view is silent about what it left out.
    let s = sc::server(|c| c.consent.withheld_notice = false).await;
    let scenario = sc::load(&s).await;
    let cm = view_as(
        &s,
        sc::CASE_MANAGER,
        scenario.psychiatry_patient().to_string(),
    )
    .await;
    assert_eq!(condition_names(&cm), vec!["Major depressive disorder"]);
    assert!(!withheld(&cm));
    s.stop().await;
}
