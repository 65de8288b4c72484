//! The conformance suite in `conformance-tests/` passes against caregate itself, and its
//! reports are written.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The DOM of an HTML file as a real headless Chromium builds it. CI installs Debian's
/// `chromium` and sets CAREGATE_REQUIRE_CHROMIUM; elsewhere the check is skipped with a note.
fn chromium_dom(file: &std::path::Path) -> Option<String> {
    let binary = ["chromium", "/usr/bin/chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    let Some(binary) = binary else {
        assert!(
            std::env::var_os("CAREGATE_REQUIRE_CHROMIUM").is_none(),
            "chromium is required (CAREGATE_REQUIRE_CHROMIUM is set) but not installed"
        );
        eprintln!(
            "note: chromium not installed; the browser check of {} is skipped",
            file.display()
        );
        return None;
    };
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("run chromium");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn caregate_passes_its_own_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let suite =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance-tests/cases");
    let out = dir.path().join("report");
    let run = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args([
            "conformance",
            "run",
            "--target",
            &format!("http://127.0.0.1:{port}"),
            "--suite",
        ])
        .arg(&suite)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run suite");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let cases = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance-tests/cases"),
    )
    .expect("cases folder")
    .count();
    assert!(cases >= 11, "{cases}");
    assert!(
        stdout.contains(&format!("{cases} passed, 0 failed")),
        "{stdout}"
    );
    // The REST, validation, consent and shared care-plan areas are all covered.
    for id in [
        "create-read-update-delete",
        "required-bindings",
        "consent-sensitive-data",
        "shared-care-plan",
    ] {
        assert!(stdout.contains(&format!("PASS {id}")), "{id}: {stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("TestReport.json")).expect("TestReport"))
            .expect("json");
    assert_eq!(report["resourceType"], "TestReport");
    assert_eq!(report["result"], "pass");
    let junit = std::fs::read_to_string(out.join("junit.xml")).expect("junit");
    assert!(
        junit.contains(&format!("tests=\"{cases}\" failures=\"0\"")),
        "{junit}"
    );
    let passed = format!("{cases} of {cases} cases passed");
    assert!(std::fs::read_to_string(out.join("report.html"))
        .expect("html")
        .contains(&passed));
    if let Some(dom) = chromium_dom(&out.join("report.html")) {
        assert!(dom.contains("<h1>FHIR conformance report</h1>"), "{dom}");
        assert!(dom.contains(&passed), "{dom}");
        assert_eq!(dom.matches("<tr class=\"pass\">").count(), cases, "{dom}");
    }
    // The per-source statistics page, rendered offline from the data directory.
    let page = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args(["conformance", "report", "--format", "html", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .expect("conformance report");
    assert_eq!(
        page.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&page.stderr)
    );
    let html_file = dir.path().join("conformance.html");
    std::fs::write(&html_file, &page.stdout).expect("write page");
    let text = String::from_utf8_lossy(&page.stdout).into_owned();
    assert!(text.contains("<td>local</td><td>Patient</td>"), "{text}");
    if let Some(dom) = chromium_dom(&html_file) {
        assert!(dom.contains("Conformance by source system"), "{dom}");
        assert!(
            dom.contains("Patient.birthDate"),
            "the rejected birthDate shows among the top issues: {dom}"
        );
    }
}

/// A server that answers every request with 200 and an empty object must fail the suite,
/// and the error-handling case must be among the failures.
#[test]
fn a_broken_server_fails_the_suite() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 65536];
            let _ = stream.read(&mut buf);
            let body = "{}";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let suite =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance-tests/cases");
    let run = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args([
            "conformance",
            "run",
            "--target",
            &format!("http://127.0.0.1:{port}"),
            "--suite",
        ])
        .arg(&suite)
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("run suite");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL errors-are-operation-outcomes"),
        "{stdout}"
    );
    let html = std::fs::read_to_string(dir.path().join("report.html")).expect("html");
    assert!(
        html.contains("=&gt; HTTP 200"),
        "failed steps show the exchange"
    );
}
