//! Hardened limits end to end: oversized, deeply nested, element-heavy and slow requests get
//! their 4xx OperationOutcome, nothing is stored, and the server keeps serving others.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{first_expression, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn nested_extensions(levels: usize) -> Value {
    let mut v = json!({"url": "http://example.org/leaf", "valueString": "x"});
    for _ in 0..levels {
        v = json!({"url": "http://example.org/nested", "extension": [v]});
    }
    json!({"resourceType": "Patient", "extension": [v]})
}

async fn patient_count(server: &TestServer) -> u64 {
    let bundle = server.get_json("Patient?_summary=count").await;
    bundle["total"].as_u64().expect("total")
}

fn issue_code(oo: &Value) -> &str {
    oo["issue"][0]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn deep_nesting_is_refused_with_the_element_named() {
    let server = TestServer::start().await;
    let r = server.post("Patient", &nested_extensions(55)).await;
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.expect("json");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(issue_code(&oo), "too-costly");
    assert!(
        first_expression(&oo).starts_with("Patient.extension[0].extension[0].extension[0]"),
        "{oo}"
    );

    // Beyond serde_json's own recursion limit the answer is the same kind of 400.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let r = server
        .post_raw("Patient", "application/fhir+json", deep)
        .await;
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.expect("json");
    assert_eq!(issue_code(&oo), "too-costly", "{oo}");

    // The same in XML: refused before the XML reader recurses.
    let xml = format!(
        r#"<Patient xmlns="http://hl7.org/fhir">{}{}</Patient>"#,
        r#"<extension url="http://example.org/n">"#.repeat(3000),
        "</extension>".repeat(3000)
    );
    let r = server
        .post_raw("Patient", "application/fhir+xml", xml)
        .await;
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.expect("json");
    assert_eq!(issue_code(&oo), "too-costly", "{oo}");

    // Ordinary nesting still goes through, and nothing refused was stored.
    assert_eq!(
        server
            .post("Patient", &nested_extensions(10))
            .await
            .status(),
        201
    );
    assert_eq!(patient_count(&server).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn element_and_string_limits_are_configurable() {
    let server = TestServer::start_with(|c| {
        c.limits.max_elements = 200;
        c.limits.max_string_bytes = 1024;
    })
    .await;
    let names: Vec<Value> = (0..100)
        .map(|i| json!({"family": format!("F{i}"), "given": ["G"]}))
        .collect();
    let r = server
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": names}),
        )
        .await;
    assert_eq!(r.status(), 413);
    let oo: Value = r.json().await.expect("json");
    assert_eq!(issue_code(&oo), "too-costly");
    assert!(first_expression(&oo).starts_with("Patient.name["), "{oo}");

    let r = server
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "x".repeat(2000)}]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await.expect("json");
    assert_eq!(issue_code(&oo), "too-long");
    assert_eq!(first_expression(&oo), "Patient.name[0].family");

    // Limits cover transaction Bundles too, and refuse them whole.
    let entries: Vec<Value> = (0..60)
        .map(|i| {
            json!({
                "resource": {"resourceType": "Patient", "name": [{"family": format!("B{i}")}]},
                "request": {"method": "POST", "url": "Patient"}
            })
        })
        .collect();
    let r = server
        .post(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await;
    assert_eq!(r.status(), 413);
    assert_eq!(patient_count(&server).await, 0);
    server.stop().await;
}

#[tokio::test]
async fn oversized_body_is_refused_before_it_is_read() {
    let server = TestServer::start_with(|c| c.max_body_bytes = 4096).await;
    let big = json!({"resourceType": "Patient", "name": [{"family": "y".repeat(8000)}]});
    let r = server.post("Patient", &big).await;
    assert_eq!(r.status(), 413);
    let oo: Value = r.json().await.expect("json");
    assert_eq!(issue_code(&oo), "too-long");
    assert_eq!(patient_count(&server).await, 0);
    server.stop().await;
}

/// Sends a request head promising a body, then trickles nothing; the server answers 408
/// once the body timeout passes, and serves other clients meanwhile.
#[tokio::test]
async fn slow_body_times_out_while_others_are_served() {
    let server = TestServer::start_with(|c| c.limits.body_timeout_ms = 4000).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut slow = TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(
        b"POST /Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{\"resourceType\":",
    )
    .await
    .expect("write");
    let started = Instant::now();

    // Meanwhile the server serves others normally.
    for _ in 0..2 {
        assert_eq!(
            server
                .post("Patient", &json!({"resourceType": "Patient"}))
                .await
                .status(),
            201
        );
    }
    assert_eq!(server.get("metadata").await.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(4000));

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to the slow request");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"timeout\""), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(3900));
    assert_eq!(patient_count(&server).await, 2);
    server.stop().await;
}

/// A client that never finishes its headers (slow-loris) is cut off by the header timeout.
#[tokio::test]
async fn slow_headers_are_cut_off() {
    let server = TestServer::start_with(|c| c.limits.header_timeout_ms = 1000).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut slow = TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(b"GET /metadata HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let started = Instant::now();
    assert_eq!(server.get("metadata").await.status(), 200);
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(started.elapsed() < Duration::from_secs(8));
    server.stop().await;
}

#[test]
fn limits_are_checked_in_the_configuration() {
    let err = caregate_server::ServerConfig::from_toml("[limits]\nmax_depth = 2\n")
        .expect_err("too small a depth is refused");
    assert!(err.to_string().contains("max_depth"), "{err}");
    let ok = caregate_server::ServerConfig::from_toml(
        "[limits]\nmax_depth = 40\nbody_timeout_ms = 1000\n",
    )
    .expect("valid");
    assert_eq!(ok.limits.max_depth, 40);
    assert_eq!(ok.limits.max_elements, 1_000_000);
}
