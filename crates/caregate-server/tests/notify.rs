//! Subscription rest-hook notifications, against a local receiver: delivered to permitted
//! subscribers with the resource as payload, withheld from a subscriber the consent
//! excludes, and a dead endpoint turns its Subscription's status to `error`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{client, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (path, authorization header, body) of every request received.
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

async fn receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received: Received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let head = &text[..end];
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                            let auth = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .starts_with("authorization:")
                                        .then(|| l[14..].trim().to_string())
                                })
                                .unwrap_or_default();
                            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length])
                                .to_string();
                            log.lock().unwrap().push((path, auth, body));
                            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), received)
}

fn subscription(criteria: &str, endpoint: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "status": "active",
        "reason": "Keep the team's EHR in step with the shared care plan",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json", "header": ["Authorization: Bearer hook-secret"]}
    })
}

async fn post(s: &TestServer, token: &str, path: &str, body: &Value) -> Value {
    let r = s
        .http
        .post(s.url(path))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .json(body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 201, "POST {path}");
    r.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribers_are_notified_as_their_consent_allows() {
    let s = TestServer::start_with(|c| {
        c.clients = vec![
            client(
                "psych",
                "psych-token",
                &["system/*.*", "system/Consent.cud"],
            ),
            client("casemgr", "cm-token", &["system/*.*"]),
        ]
    })
    .await;
    let (hook, received) = receiver().await;
    let patient = post(
        &s,
        "psych-token",
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "Notified"}]}),
    )
    .await;
    let pid = patient["id"].as_str().unwrap().to_string();
    let consent = json!({
        "resourceType": "Consent", "status": "active", "dateTime": "2024-01-01",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "patient": {"reference": format!("Patient/{pid}")},
        "provision": {"type": "permit", "provision": [{"type": "deny", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}, "reference": {"reference": "Organization/casemgr"}}]}]}
    });
    post(&s, "psych-token", "Consent", &consent).await;
    let criteria = format!("CarePlan?subject=Patient/{pid}");
    post(
        &s,
        "psych-token",
        "Subscription",
        &subscription(&criteria, &format!("{hook}/psych")),
    )
    .await;
    post(
        &s,
        "cm-token",
        "Subscription",
        &subscription(&criteria, &format!("{hook}/casemgr")),
    )
    .await;
    let dead = post(
        &s,
        "psych-token",
        "Subscription",
        &subscription(&criteria, "http://127.0.0.1:9/nobody"),
    )
    .await;

    let plan = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": format!("Patient/{pid}")}});
    let created = post(&s, "psych-token", "CarePlan", &plan).await;
    // Unrelated changes notify nobody.
    post(&s, "psych-token", "CarePlan", &json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"display": "someone else"}})).await;

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let current: Value = s
            .http
            .get(s.url(&format!("Subscription/{}", dead["id"].as_str().unwrap())))
            .bearer_auth("psych-token")
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        let status = current["status"].clone();
        if (!received.lock().unwrap().is_empty() && status == "error") || Instant::now() > deadline
        {
            assert_eq!(
                status, "error",
                "a dead endpoint puts its Subscription in error"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let (path, auth, body) = &got[0];
    assert_eq!(path, "/psych");
    assert_eq!(auth, "Bearer hook-secret");
    let delivered: Value = serde_json::from_str(body).expect("payload is the resource");
    assert_eq!(delivered["id"], created["id"]);
    s.stop().await;
}
