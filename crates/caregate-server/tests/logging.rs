//! Logs never hold patient data: drive the server with names, identifiers, birth dates and
//! ids in bodies, paths and queries (and through its error paths), capture every log line
//! at the most verbose level, and look for them.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::TestServer;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const FAMILY: &str = "Quixote-Farnsworth";
const GIVEN: &str = "Zebediah";
const MRN: &str = "MRN-99887766";
const BIRTH: &str = "1987-03-14";
const PHONE: &str = "555-0142-7788";

#[tokio::test]
async fn logs_never_contain_resource_content_or_patient_identifiers() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .init();

    let server = TestServer::start_with(|c| {
        c.max_body_bytes = 64 * 1024;
        c.limits.max_depth = 30;
    })
    .await;
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://hospital.example.org/mrn", "value": MRN}],
        "name": [{"family": FAMILY, "given": [GIVEN]}],
        "birthDate": BIRTH,
        "telecom": [{"system": "phone", "value": PHONE}]
    });
    let id = server.create(patient.clone()).await;
    let mut requests = 1;

    let gets = [
        format!("Patient/{id}"),
        format!("Patient/{id}/_history"),
        format!("Patient?family={FAMILY}"),
        format!("Patient?identifier={MRN}&birthdate={BIRTH}"),
        format!("Patient?name:contains={GIVEN}&_total=accurate"),
        format!("Patient?telecom={PHONE}&unknown-param={FAMILY}"),
        format!("Patient/{id}/$care-plan"),
        format!("Patient/{MRN}"),
    ];
    for path in &gets {
        let status = server.get(path).await.status();
        assert!(status.as_u16() < 500, "{path}: {status}");
        requests += 1;
    }

    // Error paths: invalid content (422 naming the value), malformed JSON quoting the
    // input, a too-deep body, an oversized body, an invalid update, a conditional create.
    let mut invalid = patient.clone();
    invalid["gender"] = json!(format!("robot-{FAMILY}"));
    assert!(server
        .post("Patient", &invalid)
        .await
        .status()
        .is_client_error());
    let malformed = format!("{{\"resourceType\":\"Patient\",\"name\":[{{\"family\":\"{FAMILY}\"");
    let r = server
        .post_raw("Patient", "application/fhir+json", malformed)
        .await;
    assert_eq!(r.status(), 400);
    let mut deep = json!({"url": "http://example.org/x", "valueString": MRN});
    for _ in 0..30 {
        deep = json!({"url": "http://example.org/x", "extension": [deep]});
    }
    let mut too_deep = patient.clone();
    too_deep["extension"] = json!([deep]);
    assert_eq!(server.post("Patient", &too_deep).await.status(), 400);
    let mut big = patient.clone();
    big["text"] = json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", FAMILY.repeat(5000))});
    assert_eq!(server.post("Patient", &big).await.status(), 413);
    let mut update = patient.clone();
    update["id"] = json!("another-id");
    assert_eq!(
        server.put(&format!("Patient/{id}"), &update).await.status(),
        400
    );
    let r = server
        .http
        .post(server.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", format!("identifier={MRN}"))
        .json(&patient)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    requests += 6;
    server.stop().await;

    let bytes = captured.0.lock().expect("log buffer").clone();
    let logs = String::from_utf8_lossy(&bytes);
    let access_lines = logs
        .lines()
        .filter(|l| l.contains("caregate::access"))
        .count();
    assert!(
        access_lines >= requests,
        "expected an access line per request ({requests}), found {access_lines}:\n{logs}"
    );
    assert!(logs.contains("route=/{type}/{id}"), "{logs}");
    assert!(logs.contains("resource_type=Patient"), "{logs}");
    assert!(logs.contains("status=413"), "{logs}");
    for secret in [FAMILY, GIVEN, MRN, BIRTH, PHONE, id.as_str()] {
        let leaked: Vec<&str> = logs.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaked.is_empty(),
            "'{secret}' appears in the logs: {leaked:#?}"
        );
    }
}
