//! Client registry: bearer tokens and scopes, and the loopback-only development mode.

mod support;

use serde_json::json;
use support::{client, TestServer};

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_scopes_are_enforced() {
    let s = TestServer::start_with(|c| {
        c.clients = vec![
            client("reader", "reader-token", &["system/*.read"]),
            client(
                "writer",
                "writer-token",
                &["system/Patient.cruds", "system/CarePlan.write"],
            ),
        ]
    })
    .await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Auth"}]});
    // No token → 401 with WWW-Authenticate and an OperationOutcome.
    let r = s.post("Patient", &patient).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["issue"][0]["code"],
        "login"
    );
    // Wrong token → 401
    let r = s.get_as("nope", "Patient").await;
    assert_eq!(r.status(), 401);
    // Reader cannot create → 403
    let r = s.post_as("reader-token", "Patient", &patient).await;
    assert_eq!(r.status(), 403);
    // Writer can.
    let r = s.post_as("writer-token", "Patient", &patient).await;
    assert_eq!(r.status(), 201);
    // Reader can search; writer cannot read CarePlans (write only).
    let r = s.get_as("reader-token", "Patient?family=auth").await;
    assert_eq!(r.status(), 200);
    let r = s.get_as("writer-token", "CarePlan").await;
    assert_eq!(r.status(), 403);
    // Scopes apply to each entry of a transaction too.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}, "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = s.post_as("writer-token", "", &tx).await;
    assert_eq!(r.status(), 403);
    s.stop().await;
}

#[test]
fn development_mode_refuses_non_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = caregate_server::ServerConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        data: dir.path().to_path_buf(),
        ..Default::default()
    };
    let err = caregate_server::start(&config).err().expect("must refuse");
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[test]
fn config_file_parses_and_checks_token_hashes() {
    let ok = caregate_server::ServerConfig::from_toml(&format!(
        "listen = \"127.0.0.1:9000\"\n[[client]]\nid = \"a\"\ntoken_sha256 = \"{}\"\nscopes = [\"system/*.read\"]\n",
        caregate_server::token_hash_hex("t")
    ))
    .unwrap();
    assert_eq!(ok.clients.len(), 1);
    assert!(!ok.development_mode());
    assert!(caregate_server::ServerConfig::from_toml(
        "[[client]]\nid = \"a\"\ntoken_sha256 = \"short\"\n"
    )
    .is_err());
    assert!(caregate_server::ServerConfig::from_toml(&format!(
        "[[client]]\nid = \"a\"\ntoken_sha256 = \"{}\"\nscopes = [\"system/Nope.read\"]\n",
        caregate_server::token_hash_hex("t")
    ))
    .is_err());
    assert!(caregate_server::ServerConfig::from_toml("unknown_key = 1").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_events_are_for_auditors_only() {
    let s = TestServer::start_with(|c| {
        c.clients = vec![
            client("ehr", "ehr-token", &["system/*.*"]),
            client("auditor", "auditor-token", &["system/AuditEvent.rs"]),
        ]
    })
    .await;
    let r = s
        .post_as(
            "ehr-token",
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Audited"}]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A wildcard grant does not reach the audit trail.
    let r = s.get_as("ehr-token", "AuditEvent").await;
    assert_eq!(r.status(), 403);
    let r = s
        .get_as("auditor-token", &format!("AuditEvent?patient=Patient/{id}"))
        .await;
    assert_eq!(r.status(), 200);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["total"], 1);
    let event = &b["entry"][0]["resource"];
    assert_eq!(event["subtype"][0]["code"], "create");
    assert_eq!(event["agent"][0]["who"]["identifier"]["value"], "ehr");
    assert_eq!(event["agent"][1]["who"]["reference"], "Organization/ehr");
    // Nobody changes the trail through the API.
    let r = s.post_as("auditor-token", "AuditEvent", event).await;
    assert!(r.status() == 403 || r.status() == 405, "{}", r.status());
    let eid = event["id"].as_str().unwrap();
    let r = s
        .http
        .delete(s.url(&format!("AuditEvent/{eid}")))
        .bearer_auth("ehr-token")
        .send()
        .await
        .unwrap();
    assert!(r.status() == 403 || r.status() == 405, "{}", r.status());
    let r = s
        .get_as("auditor-token", &format!("AuditEvent/{eid}"))
        .await;
    assert_eq!(r.status(), 200);
    // A refused token leaves a security-alert event.
    let r = s.get_as("stolen", "Patient").await;
    assert_eq!(r.status(), 401);
    let mut alerts = 0;
    for _ in 0..50 {
        let b: serde_json::Value = s
            .get_as("auditor-token", "AuditEvent?type=110113")
            .await
            .json()
            .await
            .unwrap();
        alerts = b["total"].as_u64().unwrap_or(0);
        if alerts > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(alerts, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accounting_of_disclosures() {
    let s = TestServer::start_with(|c| {
        c.clients = vec![
            client("psych", "psych-token", &["system/*.*"]),
            client("primary", "primary-token", &["system/*.read"]),
            client("auditor", "auditor-token", &["system/AuditEvent.read"]),
        ]
    })
    .await;
    let r = s
        .post_as(
            "psych-token",
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Disclosed"}]}),
        )
        .await;
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .http
        .get(s.url(&format!("Patient/{id}")))
        .bearer_auth("primary-token")
        .header("x-purpose-of-use", "TREAT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Only auditors may see the accounting.
    let r = s
        .get_as("primary-token", &format!("Patient/{id}/$disclosures"))
        .await;
    assert_eq!(r.status(), 403);
    let mut found = serde_json::Value::Null;
    for _ in 0..60 {
        found = s
            .get_as(
                "auditor-token",
                &format!("Patient/{id}/$disclosures?start=2000-01-01"),
            )
            .await
            .json()
            .await
            .unwrap();
        if found["parameter"].as_array().is_some_and(|p| p.len() > 1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let disclosures: Vec<&serde_json::Value> = found["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "disclosure")
        .collect();
    assert_eq!(disclosures.len(), 1, "{found}");
    let parts = disclosures[0]["part"].as_array().unwrap();
    let value = |name: &str| {
        parts
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(value("recipient")["valueString"], "Organization/primary");
    assert_eq!(value("purpose")["valueCoding"]["code"], "TREAT");
    assert_eq!(value("interaction")["valueCode"], "read");
    let html = s
        .get_as(
            "auditor-token",
            &format!("Patient/{id}/$disclosures?_format=html"),
        )
        .await;
    assert!(html.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let body = html.text().await.unwrap();
    assert!(body.contains("<td>Organization/primary</td>"), "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_statistics_per_source() {
    let s = TestServer::start_with(|c| {
        c.clients = vec![
            client("ehr-a", "a-token", &["system/*.*"]),
            client("auditor", "auditor-token", &["system/AuditEvent.read"]),
        ]
    })
    .await;
    let post = |body: serde_json::Value| {
        let http = s.http.clone();
        let url = s.url("Patient");
        async move {
            http.post(url)
                .bearer_auth("a-token")
                .header("content-type", "application/fhir+json")
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(json!({"resourceType": "Patient", "name": [{"family": "Good"}]})).await,
        201
    );
    assert_eq!(
        post(json!({"resourceType": "Patient", "birthDate": "1990-13-45"})).await,
        400
    );
    assert_eq!(
        post(json!({"resourceType": "Patient", "name": [{"family": "X", "given": ["A", 7]}]}))
            .await,
        400
    );
    assert_eq!(
        s.get_as("a-token", "conformance/report").await.status(),
        403
    );
    let mut report = serde_json::Value::Null;
    for _ in 0..60 {
        report = s
            .get_as("auditor-token", "conformance/report?source=ehr-a")
            .await
            .json()
            .await
            .unwrap();
        if report["bySource"][0]["received"] == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let row = &report["bySource"][0];
    assert_eq!(row["resourceType"], "Patient");
    assert_eq!(row["received"], 3, "{report}");
    assert_eq!(row["accepted"], 1);
    assert_eq!(row["rejected"], 2);
    let elements: Vec<&str> = report["topIssues"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["element"].as_str())
        .collect();
    assert!(
        elements.contains(&"Patient.birthDate") && elements.contains(&"Patient.name.given"),
        "{elements:?}"
    );
    let html = s
        .get_as("auditor-token", "ui/conformance")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("<td>ehr-a</td><td>Patient</td>"), "{html}");
    s.stop().await;
}

#[test]
fn smart_and_certificate_clients_in_the_config_file() {
    use caregate_server::ServerConfig;
    let es384 = r#"{"kty": "EC", "crv": "P-384", "kid": "k1",
        "x": "6kdg7T78N2k6QcdBjakSQsCB97xzpYLibpf7y8kQ5ZuFeH8o-PFHjdsJURlOY7fx",
        "y": "wbtM7s7nvuX3ZQQcLFwsWjEFfyOXkHQ2zB26J_hyoYKECBbIxFrG8H5gtUZ-UOk9"}"#;
    // The JWKS inline as a JSON string, as a TOML table, or as a URL; no static token.
    let as_string = ServerConfig::from_toml(&format!(
        "[[client]]\nid = \"hie\"\nscopes = [\"system/*.rs\"]\njwks = '{{\"keys\": [{}]}}'\n",
        es384.replace('\n', " ")
    ))
    .expect("jwks as a JSON string");
    assert!(as_string.smart_enabled());
    let as_table = ServerConfig::from_toml(
        "[[client]]\nid = \"hie\"\nscopes = [\"system/*.rs\"]\n[client.jwks]\nkeys = [{ kty = \"RSA\", kid = \"r\", n = \"AQAB\", e = \"AQAB\" }]\n",
    )
    .expect("jwks as a TOML table");
    assert!(as_table.clients[0].jwks.is_some());
    let by_url = ServerConfig::from_toml(
        "[[client]]\nid = \"hie\"\njwks_url = \"https://hie.example.org/jwks.json\"\n[smart]\ntoken_secret = \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"\ntoken_lifetime_secs = 120\n",
    )
    .expect("jwks_url and [smart]");
    assert!(by_url.smart_enabled());
    let by_cert = ServerConfig::from_toml(&format!(
        "[[client]]\nid = \"lab\"\ncert_sha256 = \"{}\"\n",
        ["ab"; 32].join(":")
    ))
    .expect("certificate fingerprint with colons");
    assert!(
        !by_cert.smart_enabled(),
        "no keys, no [smart]: no token endpoint"
    );

    let refused = |text: &str, what: &str| {
        let e = ServerConfig::from_toml(text).expect_err(what);
        e.to_string()
    };
    assert!(refused("[[client]]\nid = \"x\"\n", "no credential").contains("credential"));
    assert!(refused(
        "[[client]]\nid = \"x\"\njwks = '{\"nokeys\": 1}'\n",
        "not a JWKS"
    )
    .contains("jwks"));
    assert!(refused(
        "[[client]]\nid = \"x\"\njwks_url = \"ftp://x/jwks\"\n",
        "not http"
    )
    .contains("jwks_url"));
    assert!(refused(
        "[[client]]\nid = \"x\"\njwks_url = \"http://keys.example.org/jwks\"\n",
        "plain http to another host"
    )
    .contains("jwks_url"));
    assert!(ServerConfig::from_toml(
        "[[client]]\nid = \"x\"\njwks_url = \"http://127.0.0.1:8081/jwks\"\n"
    )
    .is_ok());
    assert!(refused(
        "[[client]]\nid = \"x\"\ncert_sha256 = \"abcd\"\n",
        "short fingerprint"
    )
    .contains("cert_sha256"));
    assert!(refused(
        "[[client]]\nid = \"x\"\njwks_url = \"https://x/j\"\n[smart]\ntoken_secret = \"00ff\"\n",
        "short secret"
    )
    .contains("token_secret"));
    assert!(refused(
        "[[client]]\nid = \"x\"\njwks_url = \"https://x/j\"\n[smart]\ntoken_lifetime_secs = 3600\n",
        "token lifetime over 300 s"
    )
    .contains("token_lifetime_secs"));
}
