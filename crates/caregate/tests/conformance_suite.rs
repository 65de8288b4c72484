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
    let suite = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance-tests/cases");
    let out = dir.path().join("report");
    let run = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args(["conformance", "run", "--target", &format!("http://127.0.0.1:{port}"), "--suite"])
        .arg(&suite)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run suite");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("9 passed, 0 failed"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("TestReport.json")).expect("TestReport")).expect("json");
    assert_eq!(report["resourceType"], "TestReport");
    assert_eq!(report["result"], "pass");
    let junit = std::fs::read_to_string(out.join("junit.xml")).expect("junit");
    assert!(junit.contains("tests=\"9\" failures=\"0\""), "{junit}");
    assert!(std::fs::read_to_string(out.join("report.html")).expect("html").contains("9 of 9 cases passed"));
}
