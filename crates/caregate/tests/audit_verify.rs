//! `caregate audit verify`: an intact chain passes; an edited or removed AuditEvent is named.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn verify(data: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args(["audit", "verify", "--data"])
        .arg(data)
        .output()
        .expect("run caregate audit verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_the_first_tampered_event() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn caregate serve");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http
            .get(format!("{base}/metadata"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..5 {
        let r = http
            .post(format!("{base}/Patient"))
            .header("content-type", "application/fhir+json")
            .json(&json!({"resourceType": "Patient", "name": [{"family": format!("Chain{n}")}]}))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 201);
    }
    let _ = child.kill();
    let _ = child.wait();

    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");

    let db = dir.path().join("caregate.sqlite");
    {
        let c = rusqlite::Connection::open(&db).expect("open db");
        c.execute(
            "UPDATE audit_event SET content = CAST(REPLACE(CAST(content AS TEXT), 'create', 'read') AS BLOB) WHERE seq = 3",
            [],
        )
        .expect("tamper");
    }
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("event 3"), "{out}");
    assert!(out.contains("changed"), "{out}");
}
