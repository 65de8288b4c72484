//! Durability: a `caregate serve` child process receiving a stream of creates is killed with
//! SIGKILL mid-stream; after a restart, every create that was answered 201 is readable.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn_server(port: u16, data: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn caregate serve")
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/metadata")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server at {base} did not come up");
}

/// The server opts out of transparent huge pages (see `disable_transparent_huge_pages` in
/// main.rs); kernels older than 5.0 do not report the setting.
fn assert_no_transparent_huge_pages(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_creates_survive_sigkill() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut child = spawn_server(port, dir.path());
    wait_ready(&http, &base).await;
    assert_no_transparent_huge_pages(child.id());

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let http = http.clone();
        let base = base.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..10_000 {
                let body = json!({"resourceType": "Patient", "name": [{"family": format!("Durable{w}x{n}")}]});
                let sent = http
                    .post(format!("{base}/Patient"))
                    .header("content-type", "application/fhir+json")
                    .json(&body)
                    .send()
                    .await;
                let Ok(r) = sent else { break };
                if r.status() != 201 {
                    break;
                }
                let Ok(v) = r.json::<Value>().await else { break };
                if let Some(id) = v["id"].as_str() {
                    acknowledged.lock().unwrap().push(id.to_string());
                }
            }
        }));
    }
    // Let the stream run, then kill the server without warning.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    for w in writers {
        let _ = w.await;
    }
    let ids = acknowledged.lock().unwrap().clone();
    assert!(
        ids.len() >= 300,
        "only {} creates acknowledged before the kill",
        ids.len()
    );

    let mut child = spawn_server(port, dir.path());
    wait_ready(&http, &base).await;
    let mut missing = Vec::new();
    for id in &ids {
        let r = http
            .get(format!("{base}/Patient/{id}"))
            .send()
            .await
            .expect("read");
        if r.status() != 200 {
            missing.push(id.clone());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged creates lost: {:?}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(5)]
    );
}
