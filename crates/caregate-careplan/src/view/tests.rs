use super::*;
use crate::linking::Person;

const NOW: &str = "2026-11-27T00:00:00.000Z";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
const SCT: &str = "http://snomed.info/sct";

fn source<'a>(r: &'a Value, org: &str, updated: &str) -> Source<'a> {
    Source {
        resource: r,
        source_org: Some(org.to_string()),
        source_system: Some(format!(
            "urn:system:{}",
            org.to_lowercase().replace(' ', "-")
        )),
        last_updated: updated.to_string(),
    }
}

fn person(members: &[&str]) -> Person {
    let mut members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    members.sort();
    Person {
        members,
        links: Vec::new(),
    }
}

fn opts() -> ViewOptions {
    ViewOptions {
        now: NOW.into(),
        since: None,
        withheld: false,
    }
}

fn resources<'a>(bundle: &'a Value, rtype: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| &e["resource"])
                .filter(|r| r["resourceType"] == rtype)
                .collect()
        })
        .unwrap_or_default()
}

/// `(organization display or reference, originalReference)` of each item-source extension.
fn sources_of(r: &Value) -> Vec<(String, String)> {
    r["extension"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["url"] == ITEM_SOURCE_EXTENSION)
                .map(|e| {
                    let sub = |name: &str| {
                        e["extension"]
                            .as_array()
                            .and_then(|s| s.iter().find(|x| x["url"] == name))
                            .cloned()
                            .unwrap_or(Value::Null)
                    };
                    let org_ext = sub("organization");
                    let org = &org_ext["valueReference"];
                    let org = org["display"]
                        .as_str()
                        .or(org["reference"].as_str())
                        .unwrap_or_default()
                        .to_string();
                    let orig = sub("originalReference")["valueReference"]["reference"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    (org, orig)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Implicated references of each DetectedIssue with the given caregate flag code.
fn flags(bundle: &Value, code: &str) -> Vec<Vec<String>> {
    resources(bundle, "DetectedIssue")
        .into_iter()
        .filter(|d| {
            d["code"]["coding"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|x| x["system"] == FLAG_SYSTEM && x["code"] == code)
            })
        })
        .map(|d| {
            d["implicated"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r["reference"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

fn mcc(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpora/examples/mcc-ig")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("MCC example");
    serde_json::from_str(&text).expect("MCC example JSON")
}

fn set(mut v: Value, key: &str, value: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert(key.into(), value);
    }
    v
}

fn coded(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

#[test]
fn mcc_examples_split_across_two_sources() {
    let a: Vec<Value> = [
        "CarePlan-MCCCarePlan.json",
        "Condition-ConditionCKD.json",
        "Goal-WGT-loss.json",
        "Goal-HPT-WNL.json",
        "CareTeam-MCCCareTeamexample.json",
        "MedicationRequest-MCCMedExample.json",
    ]
    .iter()
    .map(|f| mcc(f))
    .collect();
    let b_patient = json!({"reference": "Patient/b-pat"});
    let b: Vec<Value> = vec![
        mcc("ServiceRequest-foodpantry-referral.json"),
        mcc("CareTeam-careteam-of-noelle.json"),
        // The same coded goal and condition, recorded by the second source.
        set(
            set(mcc("Goal-WGT-loss.json"), "id", json!("b-wgt")),
            "subject",
            b_patient.clone(),
        ),
        set(
            set(mcc("Condition-ConditionCKD.json"), "id", json!("b-ckd")),
            "subject",
            b_patient,
        ),
    ];
    let mut sources: Vec<Source<'_>> = a
        .iter()
        .map(|r| source(r, "Org A", "2026-11-01T10:00:00.000Z"))
        .collect();
    sources.extend(
        b.iter()
            .map(|r| source(r, "Org B", "2026-11-02T10:00:00.000Z")),
    );
    let p = person(&["Patient/cc-pat-pnoelle", "Patient/b-pat"]);
    let view = build_view(&p, &sources, &opts());

    assert_eq!(view["resourceType"], "Bundle");
    assert_eq!(view["type"], "collection");
    let plan = &view["entry"][0]["resource"];
    assert_eq!(plan["resourceType"], "CarePlan");
    assert_eq!(plan["status"], "active");
    assert_eq!(plan["intent"], "plan");
    assert_eq!(plan["subject"]["reference"], "Patient/b-pat");
    assert_eq!(resources(&view, "CarePlan").len(), 1);

    // The duplicated condition and goal are merged, listing both sources.
    let conditions = resources(&view, "Condition");
    assert_eq!(conditions.len(), 1);
    assert_eq!(
        sources_of(conditions[0]),
        vec![
            ("Org A".to_string(), "Condition/ConditionCKD".to_string()),
            ("Org B".to_string(), "Condition/b-ckd".to_string()),
        ]
    );
    let goals = resources(&view, "Goal");
    assert_eq!(goals.len(), 2);
    let wgt = goals
        .iter()
        .find(|g| sources_of(g).len() == 2)
        .expect("merged goal");
    let wgt_sources: Vec<String> = sources_of(wgt).into_iter().map(|s| s.1).collect();
    assert_eq!(wgt_sources, vec!["Goal/WGT-loss", "Goal/b-wgt"]);
    assert_eq!(resources(&view, "ServiceRequest").len(), 1);
    assert_eq!(resources(&view, "MedicationRequest").len(), 1);

    // One care team; members de-duplicated by reference, each with their source orgs.
    let teams = resources(&view, "CareTeam");
    assert_eq!(teams.len(), 1);
    let parts = teams[0]["participant"].as_array().expect("participants");
    let members: Vec<&str> = parts
        .iter()
        .filter_map(|p| p["member"]["reference"].as_str())
        .collect();
    assert_eq!(
        members,
        vec![
            "Practitioner/practitionerMCC-1",
            "Practitioner/practitionerMCC-2",
            "Practitioner/practitionerMCC-3",
            "Patient/cc-pat-pnoelle",
            "RelatedPerson/caregiver-of-noelle",
        ]
    );
    let orgs: Vec<String> = sources_of(&parts[0]).into_iter().map(|s| s.0).collect();
    assert_eq!(orgs, vec!["Org A", "Org B"]);
    assert_eq!(sources_of(&parts[1]).len(), 1);

    // Nothing dropped: every source resource is listed by some item.
    let mut listed: BTreeSet<String> = BTreeSet::new();
    for e in view["entry"].as_array().expect("entries") {
        listed.extend(sources_of(&e["resource"]).into_iter().map(|s| s.1));
    }
    for r in a.iter().chain(b.iter()) {
        let reference = format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap_or_default(),
            r["id"].as_str().unwrap_or_default()
        );
        assert!(
            listed.contains(&reference),
            "{reference} missing from the view"
        );
    }
    // The plan's references point at the view's entries; its external activities are kept.
    assert_eq!(plan["addresses"].as_array().map(Vec::len), Some(1));
    assert_eq!(plan["goal"].as_array().map(Vec::len), Some(2));
    assert_eq!(plan["careTeam"].as_array().map(Vec::len), Some(1));
    let activities = plan["activity"].as_array().expect("activities");
    assert_eq!(activities.len(), 4);
    let full_urls: BTreeSet<&str> = view["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["fullUrl"].as_str())
        .collect();
    for r in plan["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(plan["goal"].as_array().into_iter().flatten())
        .chain(activities.iter().take(2).map(|a| &a["reference"]))
    {
        let target = r["reference"].as_str().unwrap_or_default();
        assert!(full_urls.contains(target), "{target} does not resolve");
    }
    let external: Vec<&str> = activities
        .iter()
        .filter_map(|a| a["reference"]["reference"].as_str())
        .filter(|r| r.starts_with("http://example.org/"))
        .collect();
    assert_eq!(
        external,
        vec![
            "http://example.org/Task/123",
            "http://example.org/Appointment/AVShunt"
        ]
    );
    // The SR's pertainsToGoal now points at the merged HPT goal.
    let sr = resources(&view, "ServiceRequest")[0];
    let goal_ref = sr["extension"][0]["valueReference"]["reference"]
        .as_str()
        .unwrap_or_default();
    assert!(goal_ref.starts_with("urn:uuid:") && full_urls.contains(goal_ref));

    // One Provenance per item (condition, 2 goals, SR, MR, care team).
    let provenances = resources(&view, "Provenance");
    assert_eq!(provenances.len(), 6);
    for prov in &provenances {
        let target = prov["target"][0]["reference"].as_str().unwrap_or_default();
        assert!(full_urls.contains(target));
    }
    // Both goals are addressed (plan activities, pertainsToGoal); the food-pantry
    // referral's occurrence date (2021-11-20) has passed while it is still active.
    assert!(flags(&view, flag::GOAL_WITHOUT_ACTIVITY).is_empty());
    assert_eq!(
        flags(&view, flag::OVERDUE_ACTIVITY),
        vec![vec!["ServiceRequest/foodpantry-referral".to_string()]]
    );
    assert!(resources(&view, "OperationOutcome").is_empty());

    // Deterministic, whatever the input order.
    let mut reversed = sources.clone();
    reversed.reverse();
    let again = build_view(&p, &reversed, &opts());
    assert_eq!(view.to_string(), again.to_string());
}

fn med(id: &str, requester: &str, dose: i64, frequency: i64, status: &str) -> Value {
    json!({
        "resourceType": "MedicationRequest",
        "id": id,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": coded(RXNORM, "312940", "sertraline 50 MG Oral Tablet"),
        "subject": {"reference": "Patient/p1"},
        "requester": {"reference": requester},
        "dosageInstruction": [{
            "timing": {"repeat": {"frequency": frequency, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": dose, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}],
        }],
    })
}

#[test]
fn medication_dose_conflict() {
    let psych = med("rx-psych", "Practitioner/psychiatrist", 50, 1, "active");
    let pcp = med("rx-pcp", "Practitioner/pcp", 100, 1, "active");
    let sources = [
        source(&psych, "Psychiatry", "2026-11-20T00:00:00Z"),
        source(&pcp, "Primary care", "2026-11-21T00:00:00Z"),
    ];
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert_eq!(
        flags(&view, flag::MEDICATION_DOSE_CONFLICT),
        vec![vec![
            "MedicationRequest/rx-pcp".to_string(),
            "MedicationRequest/rx-psych".to_string()
        ]]
    );
    let issue = resources(&view, "DetectedIssue")[0];
    assert_eq!(issue["code"]["coding"][0]["system"], ACT_CODE_SYSTEM);
    assert_eq!(issue["code"]["coding"][0]["code"], "DUPTHPY");
    assert_eq!(issue["patient"]["reference"], "Patient/p1");
    assert!(issue["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("sertraline"));
    // Different dosing is never merged away: both orders stay visible.
    assert_eq!(resources(&view, "MedicationRequest").len(), 2);

    // Different frequency counts too.
    let twice = med("rx-twice", "Practitioner/pcp", 50, 2, "active");
    let sources = [
        source(&psych, "Psychiatry", "2026-11-20T00:00:00Z"),
        source(&twice, "Primary care", "2026-11-21T00:00:00Z"),
    ];
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert_eq!(flags(&view, flag::MEDICATION_DOSE_CONFLICT).len(), 1);

    // Same dose from two prescribers: merged, no conflict.
    let same = med("rx-same", "Practitioner/pcp", 50, 1, "active");
    let sources = [
        source(&psych, "Psychiatry", "2026-11-20T00:00:00Z"),
        source(&same, "Primary care", "2026-11-21T00:00:00Z"),
    ];
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert!(flags(&view, flag::MEDICATION_DOSE_CONFLICT).is_empty());
    let meds = resources(&view, "MedicationRequest");
    assert_eq!(meds.len(), 1);
    assert_eq!(sources_of(meds[0]).len(), 2);

    // One prescriber changing the dose, or a stopped order, is not a conflict.
    let own = med("rx-own", "Practitioner/psychiatrist", 100, 1, "active");
    let stopped = med("rx-stopped", "Practitioner/pcp", 100, 1, "stopped");
    let sources = [
        source(&psych, "Psychiatry", "2026-11-20T00:00:00Z"),
        source(&own, "Psychiatry", "2026-11-21T00:00:00Z"),
        source(&stopped, "Primary care", "2026-11-21T00:00:00Z"),
    ];
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert!(flags(&view, flag::MEDICATION_DOSE_CONFLICT).is_empty());
}

fn cbt(id: &str, status: &str) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "id": id,
        "status": status,
        "intent": "order",
        "code": coded(SCT, "304891004", "Cognitive behavioural therapy"),
        "subject": {"reference": "Patient/p1"},
        "occurrenceTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}},
    })
}

#[test]
fn status_conflict_and_merged_activity() {
    let therapist = cbt("cbt-therapist", "active");
    let peer = cbt("cbt-peer", "active");
    let sources = [
        source(&therapist, "Therapy", "2026-11-20T00:00:00Z"),
        source(&peer, "Peer support", "2026-11-21T00:00:00Z"),
    ];
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    let srs = resources(&view, "ServiceRequest");
    assert_eq!(
        srs.len(),
        1,
        "same coded activity from two sources is one item"
    );
    let orgs: Vec<String> = sources_of(srs[0]).into_iter().map(|s| s.0).collect();
    assert_eq!(orgs, vec!["Peer support", "Therapy"]);
    assert!(flags(&view, flag::STATUS_CONFLICT).is_empty());

    let revoked = cbt("cbt-revoked", "revoked");
    let sources = [
        source(&therapist, "Therapy", "2026-11-20T00:00:00Z"),
        source(&revoked, "Peer support", "2026-11-21T00:00:00Z"),
    ];
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert_eq!(
        flags(&view, flag::STATUS_CONFLICT),
        vec![vec![
            "ServiceRequest/cbt-revoked".to_string(),
            "ServiceRequest/cbt-therapist".to_string()
        ]]
    );
    // Still one item, each source's status visible.
    let srs = resources(&view, "ServiceRequest");
    assert_eq!(srs.len(), 1);
    let statuses: Vec<&str> = srs[0]["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["extension"].as_array())
        .flatten()
        .filter(|s| s["url"] == "status")
        .filter_map(|s| s["valueCode"].as_str())
        .collect();
    assert_eq!(statuses, vec!["revoked", "active"]);

    // An inline plan activity (entered-in-error) against an active order from another source.
    let plan = json!({
        "resourceType": "CarePlan", "id": "plan-peer", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "activity": [{"detail": {"code": coded(SCT, "304891004", "CBT"), "status": "entered-in-error"}}],
    });
    let sources = [
        source(&therapist, "Therapy", "2026-11-20T00:00:00Z"),
        source(&plan, "Peer support", "2026-11-21T00:00:00Z"),
    ];
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert_eq!(
        flags(&view, flag::STATUS_CONFLICT),
        vec![vec![
            "CarePlan/plan-peer".to_string(),
            "ServiceRequest/cbt-therapist".to_string()
        ]]
    );

    // The same source revising its own order is not a conflict.
    let sources = [
        source(&therapist, "Therapy", "2026-11-20T00:00:00Z"),
        source(&revoked, "Therapy", "2026-11-21T00:00:00Z"),
    ];
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert!(flags(&view, flag::STATUS_CONFLICT).is_empty());
}

fn goal(id: &str, code: &str, text: &str) -> Value {
    json!({
        "resourceType": "Goal", "id": id, "lifecycleStatus": "active",
        "description": coded("http://loinc.org", code, text),
        "subject": {"reference": "Patient/p1"},
    })
}

#[test]
fn goal_without_activity() {
    let phq = goal("phq9", "44261-6", "PHQ-9 below 10");
    let by_reason = goal("sleep", "sleep-1", "Sleep 7 hours");
    let by_plan = goal("housing", "housing-1", "Stable housing");
    let empty_plan_goal = goal("work", "work-1", "Return to work");
    let done = set(
        goal("old", "old-1", "Old goal"),
        "lifecycleStatus",
        json!("completed"),
    );
    let sr = json!({
        "resourceType": "ServiceRequest", "id": "sleep-clinic", "status": "completed", "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "reasonReference": [{"reference": "Goal/sleep"}],
    });
    let plan = json!({
        "resourceType": "CarePlan", "id": "cm-plan", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "goal": [{"reference": "Goal/housing"}],
        "activity": [{"detail": {"status": "in-progress", "description": "Housing search"}}],
    });
    let plan2 = json!({
        "resourceType": "CarePlan", "id": "voc-plan", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "goal": [{"reference": "Goal/work"}],
    });
    let plan3 = json!({
        "resourceType": "CarePlan", "id": "sleep-plan", "status": "active", "intent": "plan",
        "activity": [{"reference": {"reference": "ServiceRequest/sleep-clinic"},
                      "progress": [{"text": "Attended twice"}],
                      "outcomeReference": [{"reference": "Goal/sleep"}]}],
    });
    let all = [
        &phq,
        &by_reason,
        &by_plan,
        &empty_plan_goal,
        &done,
        &sr,
        &plan,
        &plan2,
        &plan3,
    ];
    let sources: Vec<Source<'_>> = all
        .iter()
        .map(|r| source(r, "Org", "2026-11-20T00:00:00Z"))
        .collect();
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert_eq!(
        flags(&view, flag::GOAL_WITHOUT_ACTIVITY),
        vec![vec!["Goal/phq9".to_string()], vec!["Goal/work".to_string()]]
    );
    let issue = resources(&view, "DetectedIssue")
        .into_iter()
        .find(|d| d["implicated"][0]["reference"] == "Goal/phq9")
        .expect("flag");
    assert!(issue["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("PHQ-9 below 10"));
    // The uncoded inline activity is kept in the synthesized plan.
    let plan_out = &view["entry"][0]["resource"];
    // A source plan's progress notes and outcomes on a referenced activity are kept.
    let sleep_goal = resources(&view, "Goal")
        .into_iter()
        .find(|g| sources_of(g)[0].1 == "Goal/sleep")
        .and_then(|g| g["id"].as_str())
        .map(|id| format!("urn:uuid:{id}"))
        .expect("sleep goal");
    let referenced = plan_out["activity"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["progress"][0]["text"] == "Attended twice")
        .expect("activity with progress");
    assert_eq!(
        referenced["outcomeReference"][0]["reference"],
        sleep_goal.as_str()
    );
    assert!(referenced["reference"]["reference"]
        .as_str()
        .is_some_and(|r| r.starts_with("urn:uuid:")));
    assert!(plan_out["activity"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["detail"]["description"] == "Housing search"));
}

#[test]
fn overdue_activities() {
    let past = json!({
        "resourceType": "ServiceRequest", "id": "labs", "status": "active", "intent": "order",
        "code": coded(SCT, "labs", "Lithium level"), "subject": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2026-11-01",
    });
    let done = set(
        set(past.clone(), "id", json!("labs-done")),
        "status",
        json!("completed"),
    );
    let future = set(
        set(past.clone(), "id", json!("labs-future")),
        "occurrenceDateTime",
        json!("2026-12-15"),
    );
    let task = json!({
        "resourceType": "Task", "id": "call", "status": "in-progress", "intent": "order",
        "executionPeriod": {"start": "2026-11-01", "end": "2026-11-10T12:00:00Z"},
    });
    let plan = json!({
        "resourceType": "CarePlan", "id": "peer-plan", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "activity": [
            {"detail": {"status": "scheduled", "description": "Peer meeting",
                        "scheduledPeriod": {"start": "2026-11-01", "end": "2026-11-05"}}},
            {"detail": {"status": "completed", "description": "Done meeting",
                        "scheduledPeriod": {"start": "2026-11-01", "end": "2026-11-05"}}},
        ],
    });
    let all = [&past, &done, &future, &task, &plan];
    let sources: Vec<Source<'_>> = all
        .iter()
        .map(|r| source(r, "Org", "2026-11-20T00:00:00Z"))
        .collect();
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert_eq!(
        flags(&view, flag::OVERDUE_ACTIVITY),
        vec![
            vec!["CarePlan/peer-plan".to_string()],
            vec!["ServiceRequest/labs".to_string()],
            vec!["Task/call".to_string()],
        ]
    );
    // Uncoded activities are never merged: both inline details stay.
    let plan_out = &view["entry"][0]["resource"];
    let inline = plan_out["activity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a.get("detail").is_some())
        .count();
    assert_eq!(inline, 2);
    // Same two ServiceRequests are coded alike but keep separate lab orders merged as one
    // item listing both sources (plus the future one).
    assert_eq!(resources(&view, "ServiceRequest").len(), 1);
    assert_eq!(sources_of(resources(&view, "ServiceRequest")[0]).len(), 3);
}

fn encounter(id: &str, class: &str, end: &str) -> Value {
    json!({
        "resourceType": "Encounter", "id": id, "status": "finished",
        "class": {"system": ACT_CODE_SYSTEM, "code": class},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2026-11-10", "end": end},
    })
}

#[test]
fn discharge_without_follow_up() {
    let lonely = encounter("stay-1", "IMP", "2026-11-17T09:00:00Z");
    let acute = encounter("stay-2", "ACUTE", "2026-11-01T09:00:00Z");
    let followed = encounter("stay-3", "IMP", "2026-10-01T09:00:00Z");
    let outpatient = encounter("visit", "AMB", "2026-11-17T09:00:00Z");
    let ancient = encounter("stay-old", "IMP", "2019-01-01T09:00:00Z");
    let appointment = json!({
        "resourceType": "Appointment", "id": "follow-up", "status": "booked",
        "start": "2026-10-04T10:00:00Z", "end": "2026-10-04T11:00:00Z",
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
    });
    // Authored within 7 days of the ACUTE discharge but cancelled: does not count.
    let cancelled = json!({
        "resourceType": "ServiceRequest", "id": "cancelled-fu", "status": "revoked", "intent": "order",
        "authoredOn": "2026-11-02",
    });
    let all = [
        &lonely,
        &acute,
        &followed,
        &outpatient,
        &ancient,
        &appointment,
        &cancelled,
    ];
    let sources: Vec<Source<'_>> = all
        .iter()
        .map(|r| source(r, "Hospital", "2026-11-20T00:00:00Z"))
        .collect();
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert_eq!(
        flags(&view, flag::DISCHARGE_WITHOUT_FOLLOW_UP),
        vec![
            vec!["Encounter/stay-1".to_string()],
            vec!["Encounter/stay-2".to_string()]
        ]
    );
    // A Task authored within the window resolves the first one.
    let task = json!({
        "resourceType": "Task", "id": "call-after-discharge", "status": "requested", "intent": "order",
        "authoredOn": "2026-11-20T08:00:00Z",
    });
    let mut sources = sources;
    sources.push(source(&task, "Hospital", "2026-11-20T00:00:00Z"));
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert_eq!(
        flags(&view, flag::DISCHARGE_WITHOUT_FOLLOW_UP),
        vec![vec!["Encounter/stay-2".to_string()]]
    );
}

fn referral(id: &str, authored: &str) -> Value {
    json!({
        "resourceType": "ServiceRequest", "id": id, "status": "active", "intent": "order",
        "category": [coded(SCT, "3457005", "Patient referral")],
        "code": coded(SCT, format!("housing-{id}").as_str(), "Referral to housing service"),
        "subject": {"reference": "Patient/p1"},
        "authoredOn": authored,
    })
}

#[test]
fn referral_without_response() {
    let old = referral("housing", "2026-11-01");
    let answered = referral("answered", "2026-11-01");
    let recent = referral("recent", "2026-11-20");
    let encounter_answered = referral("seen", "2026-11-01");
    let task = json!({
        "resourceType": "Task", "id": "accept", "status": "accepted", "intent": "order",
        "basedOn": [{"reference": "ServiceRequest/answered"}],
    });
    let visit = json!({
        "resourceType": "Encounter", "id": "intake", "status": "in-progress",
        "class": {"system": ACT_CODE_SYSTEM, "code": "AMB"},
        "basedOn": [{"reference": "ServiceRequest/seen"}],
    });
    let all = [&old, &answered, &recent, &encounter_answered, &task, &visit];
    let sources: Vec<Source<'_>> = all
        .iter()
        .map(|r| source(r, "Case management", "2026-11-20T00:00:00Z"))
        .collect();
    let view = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert_eq!(
        flags(&view, flag::REFERRAL_WITHOUT_RESPONSE),
        vec![vec!["ServiceRequest/housing".to_string()]]
    );
    // The referral itself is in the view with its status.
    assert!(resources(&view, "ServiceRequest")
        .iter()
        .any(|r| r["status"] == "active" && sources_of(r)[0].1 == "ServiceRequest/housing"));
}

#[test]
fn since_filters_items_not_flags() {
    let old_goal = goal("phq9", "44261-6", "PHQ-9 below 10");
    let new_goal = goal("sleep", "sleep-1", "Sleep 7 hours");
    let condition = json!({
        "resourceType": "Condition", "id": "mdd",
        "code": coded(SCT, "370143000", "Major depressive disorder"),
        "subject": {"reference": "Patient/p1"},
    });
    let sources = [
        source(&old_goal, "Psychiatry", "2026-10-01T00:00:00Z"),
        source(&condition, "Psychiatry", "2026-10-01T00:00:00Z"),
        source(&new_goal, "Therapy", "2026-11-25T00:00:00Z"),
    ];
    let mut o = opts();
    o.since = Some("2026-11-01T00:00:00Z".into());
    let view = build_view(&person(&["Patient/p1"]), &sources, &o);
    let goals = resources(&view, "Goal");
    assert_eq!(goals.len(), 1);
    assert_eq!(sources_of(goals[0])[0].1, "Goal/sleep");
    assert!(resources(&view, "Condition").is_empty());
    assert_eq!(resources(&view, "Provenance").len(), 1);
    assert_eq!(
        view["entry"][0]["resource"]["goal"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // Flags still consider everything.
    assert_eq!(flags(&view, flag::GOAL_WITHOUT_ACTIVITY).len(), 2);
    // Without `since` everything is back.
    let full = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert_eq!(resources(&full, "Goal").len(), 2);
    assert_eq!(resources(&full, "Condition").len(), 1);
}

#[test]
fn withheld_marker() {
    let g = goal("phq9", "44261-6", "PHQ-9 below 10");
    let sources = [source(&g, "Org", "2026-11-20T00:00:00Z")];
    let mut o = opts();
    o.withheld = true;
    let view = build_view(&person(&["Patient/p1"]), &sources, &o);
    let outcomes = resources(&view, "OperationOutcome");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0]["issue"][0]["diagnostics"], WITHHELD_TEXT);
    assert_eq!(outcomes[0]["issue"][0]["severity"], "information");
    let plain = build_view(&person(&["Patient/p1"]), &sources, &opts());
    assert!(resources(&plain, "OperationOutcome").is_empty());
}

#[test]
fn deterministic_and_ids_from_sources() {
    let a = med("rx-psych", "Practitioner/psychiatrist", 50, 1, "active");
    let b = med("rx-pcp", "Practitioner/pcp", 100, 1, "active");
    let c = cbt("cbt", "active");
    let g = goal("phq9", "44261-6", "PHQ-9 below 10");
    let team = json!({
        "resourceType": "CareTeam", "id": "t1", "status": "active",
        "contained": [{"resourceType": "Practitioner", "id": "peer",
                        "name": [{"text": "Sam Peer"}],
                        "telecom": [{"system": "phone", "value": "555-0100"}]}],
        "participant": [{"role": [coded(SCT, "peer", "Peer support specialist")],
                          "member": {"reference": "#peer", "display": "Sam Peer"}}],
    });
    let team2 = json!({
        "resourceType": "CareTeam", "id": "t2", "status": "active",
        "contained": [{"resourceType": "Practitioner", "id": "x",
                        "name": [{"given": ["Sam"], "family": "Peer"}],
                        "telecom": [{"system": "phone", "value": "555-0100"}]}],
        "participant": [{"role": [coded(SCT, "cm", "Case manager")],
                          "member": {"reference": "#x"}}],
    });
    let sources = vec![
        source(&a, "Psychiatry", "2026-11-20T00:00:00Z"),
        source(&b, "Primary care", "2026-11-21T00:00:00Z"),
        source(&c, "Therapy", "2026-11-22T00:00:00Z"),
        source(&g, "Therapy", "2026-11-22T00:00:00Z"),
        source(&team, "Peer support", "2026-11-22T00:00:00Z"),
        source(&team2, "Case management", "2026-11-23T00:00:00Z"),
    ];
    let p = person(&["Patient/p1", "Patient/p2"]);
    let one = build_view(&p, &sources, &opts());
    let mut shuffled = sources.clone();
    shuffled.rotate_left(2);
    shuffled.swap(0, 3);
    let two = build_view(&p, &shuffled, &opts());
    assert_eq!(
        serde_json::to_string(&one).unwrap_or_default(),
        serde_json::to_string(&two).unwrap_or_default()
    );
    assert_eq!(one["meta"]["lastUpdated"], "2026-11-23T00:00:00Z");
    assert_eq!(view_etag(&one), view_etag(&two));
    assert!(view_etag(&one).starts_with('"') && view_etag(&one).len() == 66);
    // Every entry has a urn:uuid fullUrl matching its id; ids are unique.
    let mut ids = BTreeSet::new();
    for e in one["entry"].as_array().into_iter().flatten() {
        let id = e["resource"]["id"].as_str().unwrap_or_default();
        assert_eq!(e["fullUrl"], format!("urn:uuid:{id}"));
        assert!(caregate_core::is_valid_id(id));
        assert!(ids.insert(id.to_string()));
    }
    // Members without a shared reference merge by name + telecom, with both roles and contacts.
    let teams = resources(&one, "CareTeam");
    let parts = teams[0]["participant"].as_array().expect("participants");
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0]["role"].as_array().map(Vec::len), Some(2));
    assert_eq!(sources_of(&parts[0]).len(), 2);
    let member = parts[0]["member"]["reference"].as_str().unwrap_or_default();
    let cid = member.trim_start_matches('#');
    assert!(teams[0]["contained"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["id"] == cid && c["telecom"][0]["value"] == "555-0100"));
    // A newer version of one source changes the view (and so the ETag) but not the item ids.
    let a2 = set(a.clone(), "note", json!([{"text": "titrating"}]));
    let mut changed = sources.clone();
    changed[0] = source(&a2, "Psychiatry", "2026-11-26T00:00:00Z");
    let three = build_view(&p, &changed, &opts());
    assert_ne!(one.to_string(), three.to_string());
    assert_ne!(view_etag(&one), view_etag(&three));
    let ids_three: BTreeSet<String> = three["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, ids_three);
}

#[test]
fn malformed_input_does_not_panic() {
    let odd = [
        json!({"resourceType": "Goal"}),
        json!({"resourceType": "MedicationRequest", "id": "m", "status": "active",
               "medicationCodeableConcept": {"coding": "not-an-array"},
               "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": "x"}}]}]}),
        json!({"resourceType": "Encounter", "id": "e", "status": "finished", "class": [],
               "period": {"end": "not a date"}}),
        json!({"resourceType": "CarePlan", "id": "c", "activity": [{"reference": 7}, {}]}),
        json!({"resourceType": "CareTeam", "id": "t", "participant": [{"member": {"reference": "#missing"}}]}),
        json!("not an object"),
        json!({"resourceType": "ServiceRequest", "id": "s", "status": "active",
               "category": [{"coding": [{"code": "referral"}]}], "authoredOn": 5}),
    ];
    let sources: Vec<Source<'_>> = odd.iter().map(|r| source(r, "Org", "garbage")).collect();
    let mut o = opts();
    o.since = Some("also garbage".into());
    let view = build_view(&person(&[]), &sources, &o);
    assert_eq!(view["resourceType"], "Bundle");
    let view = build_view(
        &person(&["Patient/p"]),
        &sources,
        &ViewOptions {
            now: "bad".into(),
            since: None,
            withheld: true,
        },
    );
    assert_eq!(resources(&view, "Goal").len(), 1);
}

/// Synthea bundles as caregate stores them: `urn:uuid:` references rewritten to `Type/id`.
fn synthea_bundles() -> Vec<(String, Vec<Value>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpora/examples/synthea");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("synthea corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "index.json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("bundle");
            let bundle: Value = serde_json::from_str(&text).expect("bundle JSON");
            let mut map = BTreeMap::new();
            for e in bundle["entry"].as_array().into_iter().flatten() {
                if let (Some(full), Some(t), Some(id)) = (
                    e["fullUrl"].as_str(),
                    e["resource"]["resourceType"].as_str(),
                    e["resource"]["id"].as_str(),
                ) {
                    map.insert(full.to_string(), format!("{t}/{id}"));
                }
            }
            let mut out = Vec::new();
            for e in bundle["entry"].as_array().into_iter().flatten() {
                let mut r = e["resource"].clone();
                rewrite_references(&mut r, &map);
                out.push(r);
            }
            (path.display().to_string(), out)
        })
        .collect()
}

#[test]
fn synthea_views_lose_nothing() {
    const VIEW_TYPES: [&str; 10] = [
        "CarePlan",
        "Goal",
        "Condition",
        "ServiceRequest",
        "MedicationRequest",
        "Task",
        "Appointment",
        "CareTeam",
        "Encounter",
        "Provenance",
    ];
    let bundles = synthea_bundles();
    assert!(!bundles.is_empty());
    for (name, resources_in) in &bundles {
        let patient = resources_in
            .iter()
            .find(|r| r["resourceType"] == "Patient")
            .and_then(|r| r["id"].as_str())
            .map(|id| format!("Patient/{id}"))
            .expect("patient");
        let picked: Vec<&Value> = resources_in
            .iter()
            .filter(|r| VIEW_TYPES.iter().any(|t| r["resourceType"] == *t))
            .collect();
        let sources: Vec<Source<'_>> = picked
            .iter()
            .map(|r| source(r, "Synthea General", "2026-01-01T00:00:00Z"))
            .collect();
        let view = build_view(&person(&[&patient]), &sources, &opts());
        let mut listed: BTreeSet<String> = BTreeSet::new();
        for e in view["entry"].as_array().into_iter().flatten() {
            listed.extend(sources_of(&e["resource"]).into_iter().map(|s| s.1));
        }
        for r in &picked {
            let t = r["resourceType"].as_str().unwrap_or_default();
            if t == "Encounter" || t == "Provenance" {
                continue;
            }
            let reference = format!("{t}/{}", r["id"].as_str().unwrap_or_default());
            assert!(listed.contains(&reference), "{name}: {reference} lost");
        }
        // Merging never creates items: at most one view item per input resource.
        for t in ["Goal", "Condition", "MedicationRequest"] {
            let input = picked.iter().filter(|r| r["resourceType"] == t).count();
            let output = resources(&view, t).len();
            assert!(
                output <= input && (input == 0) == (output == 0),
                "{name}: {t}"
            );
        }
        // Synthea's plans list their goals and carry activities: no goal is left unaddressed
        // unless no plan lists it.
        let plan = &view["entry"][0]["resource"];
        assert_eq!(plan["resourceType"], "CarePlan");
        assert_eq!(plan["subject"]["reference"], patient.as_str());
        let again = build_view(&person(&[&patient]), &sources, &opts());
        assert_eq!(view.to_string(), again.to_string(), "{name}");
    }
}

/// The mental-health team of issue 6: three EHRs, three MRNs, one person.
#[test]
fn mental_health_team_scenario() {
    use crate::linking::{group_people, LinkConfig};
    let member_id = |id: &str, mrn_system: &str| {
        json!({
            "resourceType": "Patient", "id": id,
            "identifier": [
                {"system": mrn_system, "value": format!("{id}-mrn")},
                {"system": "urn:insurer:member", "value": "M-778812"},
            ],
            "name": [{"family": "Rivera", "given": ["Alex"]}],
            "gender": "other", "birthDate": "1990-06-01",
        })
    };
    let patients = [
        member_id("psych-alex", "urn:ehr:psychiatry:mrn"),
        member_id("pcp-alex", "urn:ehr:primary:mrn"),
        member_id("cm-alex", "urn:ehr:community:mrn"),
    ];
    let cfg = LinkConfig {
        trusted_systems: vec!["urn:insurer:member".into()],
    };
    let people = group_people(&patients, &cfg);
    assert_eq!(people.len(), 1);
    let p = &people[0];
    assert_eq!(p.members.len(), 3);

    let sertraline_psych = set(
        med("sert-psych", "Practitioner/psychiatrist", 100, 1, "active"),
        "subject",
        json!({"reference": "Patient/psych-alex"}),
    );
    let sertraline_pcp = set(
        med("sert-pcp", "Practitioner/pcp", 50, 1, "active"),
        "subject",
        json!({"reference": "Patient/pcp-alex"}),
    );
    let cbt_therapist = cbt("cbt-therapist", "active");
    let cbt_peer = cbt("cbt-peer", "active");
    let phq = goal("phq9-goal", "44261-6", "PHQ-9 below 10");
    let stay = encounter("inpatient", "IMP", "2026-11-17T09:00:00Z");
    let housing = referral("housing", "2026-11-25");
    let sources = [
        source(&sertraline_psych, "Psychiatry", "2026-11-20T00:00:00Z"),
        source(&phq, "Psychiatry", "2026-11-20T00:00:00Z"),
        source(&stay, "Psychiatry", "2026-11-17T10:00:00Z"),
        source(&sertraline_pcp, "Primary care", "2026-11-21T00:00:00Z"),
        source(&cbt_therapist, "Therapy practice", "2026-11-22T00:00:00Z"),
        source(&cbt_peer, "Peer support", "2026-11-22T00:00:00Z"),
        source(&housing, "Community services", "2026-11-25T00:00:00Z"),
    ];
    let view = build_view(p, &sources, &opts());
    assert_eq!(
        flags(&view, flag::MEDICATION_DOSE_CONFLICT),
        vec![vec![
            "MedicationRequest/sert-pcp".to_string(),
            "MedicationRequest/sert-psych".to_string()
        ]]
    );
    let cbt_items = resources(&view, "ServiceRequest")
        .into_iter()
        .filter(|r| {
            sources_of(r)
                .iter()
                .any(|s| s.1.starts_with("ServiceRequest/cbt"))
        })
        .collect::<Vec<_>>();
    assert_eq!(cbt_items.len(), 1);
    assert_eq!(sources_of(cbt_items[0]).len(), 2);
    assert_eq!(
        flags(&view, flag::GOAL_WITHOUT_ACTIVITY),
        vec![vec!["Goal/phq9-goal".to_string()]]
    );
    assert_eq!(
        flags(&view, flag::DISCHARGE_WITHOUT_FOLLOW_UP),
        vec![vec!["Encounter/inpatient".to_string()]]
    );
    let housing_item = resources(&view, "ServiceRequest")
        .into_iter()
        .find(|r| {
            sources_of(r)
                .iter()
                .any(|s| s.1 == "ServiceRequest/housing")
        })
        .expect("housing referral");
    assert_eq!(housing_item["status"], "active");
    // Authored two days ago: not yet a missing response.
    assert!(flags(&view, flag::REFERRAL_WITHOUT_RESPONSE).is_empty());
}

/// The benchmark shape of issue 6: 8 sources × 25 activities (half of them shared codes).
#[test]
fn eight_sources_by_twenty_five_activities() {
    let mut owned = Vec::new();
    for src in 0..8 {
        for n in 0..25 {
            // Codes 0..12 are shared by every source, the rest are per source.
            let code = if n < 12 {
                format!("shared-{n}")
            } else {
                format!("own-{src}-{n}")
            };
            owned.push((
                src,
                json!({
                    "resourceType": "ServiceRequest", "id": format!("sr-{src}-{n}"),
                    "status": "active", "intent": "order",
                    "code": coded(SCT, &code, "Activity"),
                    "subject": {"reference": format!("Patient/p{src}")},
                    "reasonReference": [{"reference": format!("Goal/g-{src}")}],
                    "occurrenceDateTime": "2027-01-01",
                }),
            ));
        }
        owned.push((src, goal(&format!("g-{src}"), "phq", "PHQ-9 below 10")));
    }
    let orgs: Vec<String> = (0..8).map(|i| format!("Org {i}")).collect();
    let sources: Vec<Source<'_>> = owned
        .iter()
        .map(|(s, r)| source(r, &orgs[*s], "2026-11-20T00:00:00Z"))
        .collect();
    let members: Vec<String> = (0..8).map(|i| format!("Patient/p{i}")).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let view = build_view(&person(&refs), &sources, &opts());
    let elapsed = started.elapsed();
    assert_eq!(resources(&view, "ServiceRequest").len(), 12 + 8 * 13);
    assert_eq!(resources(&view, "Goal").len(), 1);
    assert_eq!(sources_of(resources(&view, "Goal")[0]).len(), 8);
    assert!(resources(&view, "DetectedIssue").is_empty());
    // Generous bound for an unoptimised test build on a shared machine.
    assert!(elapsed.as_secs() < 5, "{elapsed:?}");
}

#[test]
fn person_patient_links_every_source_patient() {
    use crate::linking::{Match, MatchGrade};
    let mut p = person(&["Patient/a", "Patient/b", "Patient/c"]);
    let m = |grade, reason: &str| Match {
        grade,
        score: 1.0,
        reasons: vec![reason.to_string()],
    };
    p.links = vec![
        (
            "Patient/a".into(),
            "Patient/b".into(),
            m(MatchGrade::Certain, "id"),
        ),
        (
            "Patient/b".into(),
            "Patient/c".into(),
            m(MatchGrade::Probable, "name"),
        ),
        (
            "Patient/a".into(),
            "Patient/c".into(),
            m(MatchGrade::Certain, crate::linking::MANUAL_LINK_REASON),
        ),
        // A possible match with someone else never counts as a basis.
        (
            "Patient/c".into(),
            "Patient/z".into(),
            m(MatchGrade::Possible, "name"),
        ),
    ];
    let view = build_view(&p, &[], &opts());
    let patients = resources(&view, "Patient");
    assert_eq!(patients.len(), 1);
    let links: Vec<(String, String, String)> = patients[0]["link"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["other"]["reference"].as_str().unwrap().to_string(),
                l["type"].as_str().unwrap().to_string(),
                l["extension"][0]["valueCode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |r: &str, basis: &str| (r.to_string(), "seealso".to_string(), basis.to_string());
    assert_eq!(
        links,
        vec![
            expect("Patient/a", "manual"),
            expect("Patient/b", "certain"),
            expect("Patient/c", "manual")
        ]
    );
    // A lone Patient is linked to itself without a basis.
    let alone = build_view(&person(&["Patient/x"]), &[], &opts());
    let lone = resources(&alone, "Patient");
    assert_eq!(lone[0]["link"][0]["other"]["reference"], "Patient/x");
    assert!(lone[0]["link"][0].get("extension").is_none());
}

#[test]
fn etag_from_the_json_bytes_is_the_view_etag() {
    let view = build_view(&person(&["Patient/a"]), &[], &opts());
    let bytes = serde_json::to_vec(&view).expect("json");
    assert_eq!(etag_of_json(&bytes), view_etag(&view));
}
