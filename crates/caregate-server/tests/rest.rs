//! End-to-end: the real server on a loopback port, spoken to over HTTP.

mod support;

use serde_json::{json, Value};
use support::{first_expression, TestServer};

fn patient(family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": format!("mrn-{family}")}],
        "name": [{"family": family, "given": ["Ann"]}],
        "gender": "female",
        "birthDate": "1980-02-03"
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn create_read_vread_update_delete() {
    let s = TestServer::start().await;
    let r = s.post("Patient", &patient("Smith")).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    assert!(r.headers().contains_key("last-modified"));
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location, s.url(&format!("Patient/{id}/_history/1")));
    assert_eq!(created["meta"]["versionId"], "1");

    let read = s.get(&format!("Patient/{id}")).await;
    assert_eq!(read.status(), 200);
    assert_eq!(
        read.headers()["content-type"],
        "application/fhir+json; charset=utf-8"
    );
    let body: Value = read.json().await.unwrap();
    assert_eq!(body["name"][0]["family"], "Smith");

    let mut changed = body.clone();
    changed["name"][0]["family"] = json!("Smythe");
    let r = s.put(&format!("Patient/{id}"), &changed).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"2\"");

    let v1: Value = s.get_json(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(v1["name"][0]["family"], "Smith");
    let v2: Value = s.get_json(&format!("Patient/{id}/_history/2")).await;
    assert_eq!(v2["name"][0]["family"], "Smythe");
    assert_eq!(
        s.get(&format!("Patient/{id}/_history/9")).await.status(),
        404
    );

    // update-as-create with a client-chosen id
    let mut mine = patient("Client");
    mine["id"] = json!("client-chosen-1");
    let r = s.put("Patient/client-chosen-1", &mine).await;
    assert_eq!(r.status(), 201);

    let r = s.delete(&format!("Patient/{id}")).await;
    assert_eq!(r.status(), 204);
    let gone = s.get(&format!("Patient/{id}")).await;
    assert_eq!(gone.status(), 410);
    let oo: Value = gone.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    // Deleting twice is fine; old versions stay readable.
    assert_eq!(s.delete(&format!("Patient/{id}")).await.status(), 204);
    assert_eq!(
        s.get(&format!("Patient/{id}/_history/1")).await.status(),
        200
    );
    assert_eq!(s.get("Patient/never-existed").await.status(), 404);
    assert_eq!(s.delete("Patient/never-existed").await.status(), 404);

    let hist = s.get_json(&format!("Patient/{id}/_history")).await;
    assert_eq!(hist["type"], "history");
    assert_eq!(hist["total"], 3);
    let methods: Vec<&str> = hist["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, vec!["DELETE", "PUT", "POST"]);
    assert!(hist["entry"][0].get("resource").is_none());
    let type_hist = s.get_json("Patient/_history?_count=2").await;
    assert_eq!(type_hist["total"], 4);
    assert_eq!(type_hist["entry"].as_array().unwrap().len(), 2);
    assert!(type_hist["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["relation"] == "next"));
    let future = s.get_json("_history?_since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["total"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn versioning_preconditions() {
    let s = TestServer::start().await;
    let id = s.create(patient("Lock")).await;
    let current: Value = s.get_json(&format!("Patient/{id}")).await;

    // If-None-Match on read → 304
    let r = s
        .http
        .get(s.url(&format!("Patient/{id}")))
        .header("if-none-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // Stale If-Match → 412
    let r = s
        .http
        .put(s.url(&format!("Patient/{id}")))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"7\"")
        .json(&current)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);

    // Two concurrent updates with the same If-Match: exactly one wins.
    let mut tasks = Vec::new();
    for n in 0..6 {
        let http = s.http.clone();
        let url = s.url(&format!("Patient/{id}"));
        let mut body = current.clone();
        body["name"][0]["given"] = json!([format!("Racer{n}")]);
        tasks.push(tokio::spawn(async move {
            http.put(url)
                .header("content-type", "application/fhir+json")
                .header("if-match", "W/\"1\"")
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 412),
        "{statuses:?}"
    );
    let after: Value = s.get_json(&format!("Patient/{id}")).await;
    assert_eq!(after["meta"]["versionId"], "2");

    // Update without id in the body, or with a different one → 400 naming Patient.id
    let mut wrong = current.clone();
    wrong["id"] = json!("other");
    let r = s.put(&format!("Patient/{id}"), &wrong).await;
    assert_eq!(r.status(), 400);
    assert_eq!(first_expression(&r.json().await.unwrap()), "Patient.id");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_interactions() {
    let s = TestServer::start().await;
    let id = s.create(patient("Cond")).await;
    // Conditional create matching one → 200 with the existing resource, nothing new.
    let r = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=urn:test:mrn|mrn-Cond")
        .json(&patient("Cond"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], id.as_str());
    let all = s.get_json("Patient?_summary=count").await;
    assert_eq!(all["total"], 1);

    // Conditional update: one match → updates it.
    let mut changed = patient("Cond");
    changed["gender"] = json!("other");
    let r = s
        .http
        .put(s.url("Patient?identifier=urn:test:mrn|mrn-Cond"))
        .header("content-type", "application/fhir+json")
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["meta"]["versionId"], "2");
    // No match → creates.
    let r = s
        .http
        .put(s.url("Patient?identifier=urn:test:mrn|nobody"))
        .header("content-type", "application/fhir+json")
        .json(&patient("New"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Several matches → 412.
    s.create(patient("Cond2")).await;
    let r = s
        .http
        .put(s.url("Patient?gender=female"))
        .header("content-type", "application/fhir+json")
        .json(&patient("X"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    // Conditional delete of one match.
    let r = s
        .http
        .delete(s.url("Patient?identifier=urn:test:mrn|mrn-Cond"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.get(&format!("Patient/{id}")).await.status(), 410);
    // Unknown parameter in conditional criteria must not match everything.
    let r = s
        .http
        .delete(s.url("Patient?nonsense=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prefer_return() {
    let s = TestServer::start().await;
    let r = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .json(&patient("Min"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("location"));
    assert!(r.bytes().await.unwrap().is_empty());
    let r = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .json(&patient("Oo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["resourceType"], "OperationOutcome");
    // Stored, so no errors; dom-6 (no narrative) is the warning a bare Patient earns.
    assert!(
        v["issue"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["severity"] != "error"),
        "{v}"
    );

    // A resource stored with warnings (an extension caregate has no definition for) says
    // so, naming the element, when the client asks for the OperationOutcome.
    let mut warned = patient("Warned");
    warned["extension"] =
        json!([{"url": "http://ehr.example.org/fhir/local-flag", "valueBoolean": true}]);
    let r = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .json(&warned)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("location"));
    let v: Value = r.json().await.unwrap();
    let issues = v["issue"].as_array().unwrap();
    assert!(
        issues.iter().any(|i| i["severity"] == "warning"
            && i["expression"][0]
                .as_str()
                .is_some_and(|e| e.starts_with("Patient.extension[0]"))),
        "{v}"
    );
    assert!(issues.iter().all(|i| i["severity"] != "error"), "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_operation_outcomes_with_locations() {
    let s = TestServer::start_with(|c| c.max_body_bytes = 64 * 1024).await;
    // Malformed JSON
    let r = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+json")
        .body("{\"resourceType\": \"Patient\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.unwrap();
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("line 1"));
    // Unknown element, wrong primitive type, bad date: each located.
    let r = s
        .post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "A", "given": ["B", 7]}], "nickname": "x"}))
        .await;
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.unwrap();
    let exprs: Vec<String> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap_or("").to_string())
        .collect();
    assert!(exprs.contains(&"Patient.nickname".to_string()), "{exprs:?}");
    assert!(
        exprs.contains(&"Patient.name[0].given[1]".to_string()),
        "{exprs:?}"
    );
    let r = s
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "birthDate": "1990-13-45"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        first_expression(&r.json().await.unwrap()),
        "Patient.birthDate"
    );
    // Type mismatch between URL and body
    let r = s.post("Observation", &patient("X")).await;
    assert_eq!(r.status(), 400);
    // Unknown resource type
    let r = s.get("Nonsense/1").await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["resourceType"],
        "OperationOutcome"
    );
    let r = s
        .post("Nonsense", &json!({"resourceType": "Nonsense"}))
        .await;
    assert_eq!(r.status(), 404);
    // Method not allowed
    let r = s.http.patch(s.url("Patient/1")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // Unsupported media type
    let r = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Too large
    let big = json!({"resourceType": "Patient", "name": [{"text": "x".repeat(100_000)}]});
    let r = s.post("Patient", &big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["resourceType"],
        "OperationOutcome"
    );
    // Not acceptable
    let r = s
        .http
        .get(s.url("metadata"))
        .header("accept", "image/png")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    // Bad search parameter value names the parameter
    let r = s.get("Patient?birthdate=notadate").await;
    assert_eq!(r.status(), 400);
    assert_eq!(first_expression(&r.json().await.unwrap()), "birthdate");
    // Nothing above was stored.
    assert_eq!(s.get_json("Patient?_summary=count").await["total"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_rewrites_references_and_rolls_back() {
    let s = TestServer::start().await;
    let tx = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:9d0e0b3c-0000-4000-8000-000000000001",
             "resource": patient("Tx"),
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:9d0e0b3c-0000-4000-8000-000000000002",
             "resource": {"resourceType": "CarePlan", "status": "active", "intent": "plan",
                          "subject": {"reference": "urn:uuid:9d0e0b3c-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "CarePlan"}}
        ]
    });
    let r = s.post("", &tx).await;
    assert_eq!(r.status(), 200);
    let resp: Value = r.json().await.unwrap();
    assert_eq!(resp["type"], "transaction-response");
    assert_eq!(resp["entry"][0]["response"]["status"], "201 Created");
    let patient_loc = resp["entry"][0]["response"]["location"].as_str().unwrap();
    let patient_id = patient_loc.split('/').nth(1).unwrap();
    let plans = s
        .get_json(&format!("CarePlan?subject=Patient/{patient_id}"))
        .await;
    assert_eq!(plans["total"], 1);
    assert_eq!(
        plans["entry"][0]["resource"]["subject"]["reference"],
        format!("Patient/{patient_id}")
    );

    // One bad entry → nothing stored, the error names the entry.
    let before = s.get_json("Patient?_summary=count").await["total"].clone();
    let bad = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient("Good"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "birthDate": "not-a-date"}, "request": {"method": "POST", "url": "Patient"}}
        ]
    });
    let r = s.post("", &bad).await;
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(first_expression(&oo), "Bundle.entry[1].resource.birthDate");
    assert_eq!(s.get_json("Patient?_summary=count").await["total"], before);

    // A transaction whose If-Match is stale → 412, nothing written.
    let tx = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": patient("Other"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": patient_id, "gender": "male"},
             "request": {"method": "PUT", "url": format!("Patient/{patient_id}"), "ifMatch": "W/\"5\""}}
        ]
    });
    assert_eq!(s.post("", &tx).await.status(), 412);
    assert_eq!(s.get_json("Patient?_summary=count").await["total"], before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_entries_succeed_or_fail_alone() {
    let s = TestServer::start().await;
    let id = s.create(patient("Batch")).await;
    let batch = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient("B1"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "gender": 12}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": format!("Patient/{id}")}},
            {"request": {"method": "GET", "url": "Patient?family=b1"}},
            {"request": {"method": "DELETE", "url": format!("Patient/{id}")}}
        ]
    });
    let r = s.post("", &batch).await;
    assert_eq!(r.status(), 200);
    let resp: Value = r.json().await.unwrap();
    assert_eq!(resp["type"], "batch-response");
    let statuses: Vec<&str> = resp["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec![
            "201 Created",
            "400 Bad Request",
            "200 OK",
            "200 OK",
            "204 No Content"
        ]
    );
    assert_eq!(
        resp["entry"][1]["response"]["outcome"]["issue"][0]["expression"][0],
        "Bundle.entry[1].resource.gender"
    );
    assert_eq!(resp["entry"][2]["resource"]["id"], id.as_str());
    assert_eq!(resp["entry"][3]["resource"]["total"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_through_250_results_is_stable() {
    let s = TestServer::start().await;
    let entries: Vec<Value> = (0..250)
        .map(|i| json!({"resource": patient(&format!("Page{i:03}")), "request": {"method": "POST", "url": "Patient"}}))
        .collect();
    let r = s
        .post(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut url = s.url("Patient?family=page&_count=40");
    let mut ids = std::collections::HashSet::new();
    let mut pages = 0;
    loop {
        let page: Value = s.http.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(page["total"], 250);
        for e in page["entry"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            assert!(
                ids.insert(e["resource"]["id"].as_str().unwrap().to_string()),
                "duplicate across pages"
            );
        }
        pages += 1;
        match page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(ids.len(), 250);
    assert_eq!(pages, 7);
    // Sorted descending by family: first is Page249.
    let sorted = s
        .get_json("Patient?family=page&_sort=-family&_count=1")
        .await;
    assert_eq!(
        sorted["entry"][0]["resource"]["name"][0]["family"],
        "Page249"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn include_and_revinclude() {
    let s = TestServer::start().await;
    let pid = s.create(patient("Inc")).await;
    let plan = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": format!("Patient/{pid}")}});
    let cid = s.create(plan).await;
    let prov = json!({"resourceType": "Provenance", "target": [{"reference": format!("CarePlan/{cid}")}],
                      "recorded": "2024-01-01T00:00:00Z", "agent": [{"who": {"display": "EHR"}}]});
    s.create(prov).await;
    let b = s
        .get_json(&format!(
            "CarePlan?_id={cid}&_include=CarePlan:subject&_revinclude=Provenance:target"
        ))
        .await;
    let modes: Vec<(String, String)> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["resource"]["resourceType"].as_str().unwrap().to_string(),
                e["search"]["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(b["total"], 1);
    assert!(modes.contains(&("CarePlan".into(), "match".into())));
    assert!(modes.contains(&("Patient".into(), "include".into())));
    assert!(modes.contains(&("Provenance".into(), "include".into())));
    // Chained search
    let chained = s
        .get_json("CarePlan?subject:Patient.identifier=urn:test:mrn|mrn-Inc")
        .await;
    assert_eq!(chained["total"], 1);
    // _elements subsets and tags SUBSETTED
    let el = s
        .get_json(&format!("Patient?_id={pid}&_elements=gender"))
        .await;
    let res = &el["entry"][0]["resource"];
    assert_eq!(res["gender"], "female");
    assert!(res.get("name").is_none());
    assert_eq!(res["meta"]["tag"][0]["code"], "SUBSETTED");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn xml_round_trip() {
    let s = TestServer::start().await;
    let xml = r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="Xml"/><given value="Round"/></name><gender value="male"/><birthDate value="1970-01-01"/></Patient>"#;
    let r = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+xml")
        .header("accept", "application/fhir+xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/fhir+xml"));
    let body = r.text().await.unwrap();
    assert!(body.contains("<family value=\"Xml\"/>"), "{body}");
    let id = body
        .split("<id value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let json: Value = s.get_json(&format!("Patient/{id}")).await;
    assert_eq!(json["name"][0]["given"][0], "Round");
    let back = s
        .get(&format!("Patient/{id}?_format=xml"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        back.contains("<Patient xmlns=\"http://hl7.org/fhir\">"),
        "{back}"
    );
    assert!(back.contains("<birthDate value=\"1970-01-01\"/>"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn synthea_bundle_imports_and_searches_back() {
    let dir = support::shared("corpora/examples/synthea");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("synthea corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("index.json"));
    files.sort();
    let bundle: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    let entries = bundle["entry"].as_array().unwrap().len();
    let patient = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Patient")
        .unwrap()["resource"]
        .clone();
    let family = patient["name"][0]["family"].as_str().unwrap().to_string();
    let s = TestServer::start().await;
    let r = s
        .http
        .post(s.url(""))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .json(&bundle)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let resp: Value = r.json().await.unwrap();
    assert_eq!(resp["entry"].as_array().unwrap().len(), entries);
    let found = s.get_json(&format!("Patient?family={family}")).await;
    assert_eq!(found["total"], 1);
    let pid = found["entry"][0]["resource"]["id"].as_str().unwrap();
    let encounters = s
        .get_json(&format!("Encounter?subject=Patient/{pid}&_summary=count"))
        .await;
    let expected = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Encounter")
        .count();
    assert_eq!(encounters["total"], expected as u64);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn capability_statement_describes_the_server() {
    let s = TestServer::start().await;
    let cs = s.get_json("metadata").await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let careplan = resources.iter().find(|r| r["type"] == "CarePlan").unwrap();
    let params: Vec<&str> = careplan["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        params.contains(&"subject") && params.contains(&"status"),
        "{params:?}"
    );
    assert_eq!(careplan["conditionalDelete"], "single");
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let ops: Vec<&str> = patient["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for op in [
        "validate",
        "match",
        "care-plan",
        "disclosures",
        "link",
        "unlink",
    ] {
        assert!(ops.contains(&op), "{op} missing from {ops:?}");
    }
    let xml = s.get("metadata?_format=xml").await.text().await.unwrap();
    assert!(
        xml.contains("<CapabilityStatement xmlns=\"http://hl7.org/fhir\">"),
        "{xml}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn search_parameters_modifiers_and_handling() {
    let s = TestServer::start().await;
    let mut a = patient("Ångström");
    a["birthDate"] = json!("1990-06-15");
    a["telecom"] = json!([{"system": "email", "value": "a@example.org"}]);
    let a_id = s.create(a).await;
    let mut b = patient("Anders");
    b["gender"] = json!("male");
    b["birthDate"] = json!("2001-01-01");
    let b_id = s.create(b).await;
    let mut c = patient("Smith");
    c.as_object_mut().unwrap().remove("birthDate");
    let c_id = s.create(c).await;

    let ids = |b: Value| -> Vec<String> {
        let mut v: Vec<String> = b["entry"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    // Accent- and case-insensitive prefix; :exact is neither.
    assert_eq!(
        ids(s.get_json("Patient?family=angs").await),
        vec![a_id.clone()]
    );
    assert_eq!(
        ids(s.get_json("Patient?family:exact=Ångström").await),
        vec![a_id.clone()]
    );
    assert!(ids(s.get_json("Patient?family:exact=ångström").await).is_empty());
    assert_eq!(
        ids(s.get_json("Patient?name:contains=mit").await),
        vec![c_id.clone()]
    );
    // OR within a parameter, AND across repeats.
    assert_eq!(
        ids(s.get_json("Patient?family=smith,anders").await),
        sorted(vec![b_id.clone(), c_id.clone()])
    );
    assert_eq!(
        ids(s.get_json("Patient?family=a&gender=male").await),
        vec![b_id.clone()]
    );
    // Tokens, :not, :missing
    assert_eq!(
        ids(s
            .get_json("Patient?identifier=urn:test:mrn|mrn-Smith")
            .await),
        vec![c_id.clone()]
    );
    assert_eq!(
        ids(s.get_json("Patient?gender:not=female").await),
        vec![b_id.clone()]
    );
    assert_eq!(
        ids(s.get_json("Patient?birthdate:missing=true").await),
        vec![c_id.clone()]
    );
    assert_eq!(
        ids(s.get_json("Patient?email=a@example.org").await),
        vec![a_id.clone()]
    );
    // Dates with prefixes and precision
    assert_eq!(
        ids(s.get_json("Patient?birthdate=1990").await),
        vec![a_id.clone()]
    );
    assert_eq!(
        ids(s.get_json("Patient?birthdate=ge2000-01-01").await),
        vec![b_id.clone()]
    );
    assert_eq!(
        ids(s
            .get_json("Patient?birthdate=lt1991&birthdate=gt1990-06-01")
            .await),
        vec![a_id.clone()]
    );
    assert_eq!(
        ids(s.get_json("Patient?_lastUpdated=gt2000-01-01").await).len(),
        3
    );
    assert!(ids(s.get_json("Patient?_lastUpdated=lt2000-01-01").await).is_empty());
    assert_eq!(
        ids(s.get_json("Patient?birthdate:missing=false").await),
        sorted(vec![a_id.clone(), b_id.clone()])
    );
    // _sort on a parameter: by value in either direction, resources without one last.
    let ordered = |b: Value| -> Vec<String> {
        b["entry"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ordered(s.get_json("Patient?_sort=birthdate").await),
        vec![a_id.clone(), b_id.clone(), c_id.clone()]
    );
    assert_eq!(
        ordered(s.get_json("Patient?_sort=-birthdate").await),
        vec![b_id.clone(), a_id.clone(), c_id.clone()]
    );
    // :text on a token: case-insensitive prefix of the display text (beyond ASCII too,
    // which SQL's LIKE alone would not give).
    let condition = json!({
        "resourceType": "Condition",
        "subject": {"reference": format!("Patient/{a_id}")},
        "code": {"text": "Ödem and Essential Hypertension", "coding": [{"system": "http://snomed.info/sct", "code": "59621000", "display": "Essential hypertension"}]}
    });
    let condition_id = s.create(condition).await;
    assert_eq!(
        ids(s.get_json("Condition?code:text=%C3%B6dem%20AND").await),
        vec![condition_id.clone()]
    );
    assert!(ids(s.get_json("Condition?code:text=hypotension").await).is_empty());
    // _has: Patients some CarePlan points at
    let cp = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": format!("Patient/{b_id}")}});
    let cp_id = s.create(cp).await;
    assert_eq!(
        ids(s
            .get_json("Patient?_has:CarePlan:subject:status=active")
            .await),
        vec![b_id.clone()]
    );
    // System-level search across types
    let sys = s.get_json(&format!("?_id={cp_id},{a_id}")).await;
    assert_eq!(sys["total"], 2);
    // Unknown parameters: lenient reports them, strict refuses them.
    let lenient = s.get_json("Patient?family=smith&frobnicate=1").await;
    assert_eq!(lenient["total"], 1);
    let outcome = lenient["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("outcome entry");
    assert_eq!(
        outcome["resource"]["issue"][0]["expression"][0],
        "frobnicate"
    );
    let strict = s
        .http
        .get(s.url("Patient?frobnicate=1"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(strict.status(), 400);
    assert_eq!(
        first_expression(&strict.json().await.unwrap()),
        "frobnicate"
    );
    // POST _search with a form body
    let r = s
        .http
        .post(s.url("Patient/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=smith")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(ids(r.json().await.unwrap()), vec![c_id.clone()]);
    // Deleted resources leave search
    assert_eq!(s.delete(&format!("Patient/{c_id}")).await.status(), 204);
    assert!(ids(s.get_json("Patient?family=smith").await).is_empty());
    s.stop().await;
}

/// Polls the audit trail until `query` finds `expected` events (read events are written
/// without waiting for an fsync, so they land a moment after the response).
async fn audit_total(s: &TestServer, query: &str, expected: u64) -> u64 {
    let mut total = 0;
    for _ in 0..60 {
        total = s.get_json(&format!("AuditEvent?{query}")).await["total"]
            .as_u64()
            .unwrap_or(0);
        if total == expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn every_interaction_leaves_an_audit_event() {
    let s = TestServer::start().await;
    let a = s.create(patient("AuditA")).await;
    let b = s.create(patient("AuditB")).await;
    for p in [&a, &b] {
        let plan = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": format!("Patient/{p}")}});
        s.create(plan).await;
    }
    assert_eq!(
        audit_total(&s, &format!("patient={a}&subtype=create"), 2).await,
        2
    );
    // A search writes one event per patient returned, carrying the query.
    let found = s.get_json("CarePlan?status=active").await;
    assert_eq!(found["total"], 2);
    assert_eq!(
        audit_total(&s, &format!("patient=Patient/{a}&subtype=search-type"), 1).await,
        1
    );
    assert_eq!(
        audit_total(&s, &format!("patient=Patient/{b}&subtype=search-type"), 1).await,
        1
    );
    let event = &s
        .get_json(&format!(
            "AuditEvent?patient=Patient/{b}&subtype=search-type"
        ))
        .await["entry"][0]["resource"];
    assert!(event["entity"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["role"]["code"] == "24"));
    // Reads and failures are recorded too.
    s.get_json(&format!("Patient/{a}")).await;
    assert_eq!(
        audit_total(&s, &format!("patient=Patient/{a}&subtype=read"), 1).await,
        1
    );
    let r = s
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "birthDate": "nope"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(audit_total(&s, "outcome=4&subtype=create", 1).await, 1);
    // By entity, and the chain of everything so far is intact.
    assert!(audit_total(&s, &format!("entity=Patient/{a}"), 99).await >= 2);
    s.stop().await;
}
