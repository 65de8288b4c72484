//! Logs never contain resource content or patient identifiers, even at debug level.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn debug_logs_carry_no_phi() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path())
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drain both pipes continuously: a full pipe would block the server's logging.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out_reader = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_reader = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(format!("{base}/metadata")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secret_name = "Zyxwvutsrq";
    let secret_mrn = "MRN-7781-SECRET";
    let patient = json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": secret_mrn}],
                         "name": [{"family": secret_name}], "birthDate": "1961-07-19"});
    let r = http
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .json(&patient)
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    // A successful read, a search by identifier, an invalid write naming the patient, a transaction.
    let _ = http.get(format!("{base}/Patient/{id}")).send().await;
    let _ = http
        .get(format!(
            "{base}/Patient?identifier=urn:mrn|{secret_mrn}&family={secret_name}"
        ))
        .send()
        .await;
    let bad = json!({"resourceType": "Patient", "name": [{"family": secret_name}], "birthDate": "1961-13-19"});
    let _ = http
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .json(&bad)
        .send()
        .await;
    let _ = http
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .body(format!(
            "{{\"resourceType\": \"Patient\", \"name\": [{{\"family\": \"{secret_name}\""
        ))
        .send()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    let mut logs = out_reader.join().unwrap_or_default();
    logs.push_str(&err_reader.join().unwrap_or_default());
    assert!(
        logs.contains("caregate listening"),
        "the log was captured: {logs}"
    );
    for secret in [secret_name, secret_mrn, "1961-07-19"] {
        assert!(
            !logs.contains(secret),
            "'{secret}' leaked into the log:\n{logs}"
        );
    }
}
