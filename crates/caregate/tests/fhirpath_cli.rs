//! `caregate fhirpath`: output in FHIR JSON form and the exit statuses (0 ok, 1 evaluation
//! error, 2 syntax error).

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn run(expression: &str, resource: &Value) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args(["fhirpath", expression])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start caregate");
    // A syntax error exits before reading stdin, so the write may find the pipe closed.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(resource.to_string().as_bytes());
    child.wait_with_output().expect("caregate runs")
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "birthDate": "1974-12-25",
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "extension": [{"url": "http://x/weight", "valueQuantity": {"value": 72.50, "unit": "kg",
            "system": "http://unitsofmeasure.org", "code": "kg"}}]
    })
}

#[test]
fn prints_results_in_fhir_json_form() {
    let p = patient();
    let o = run("name.given", &p);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_out(&o), json!(["Peter", "James"]));

    let o = run("birthDate + 1 day", &p);
    assert_eq!(json_out(&o), json!(["1974-12-26"]));

    // Decimals keep their digits (1.50 stays 1.50).
    let o = run("1.50 + 0", &p);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[1.50]");

    // 1000 mg is 1.000 g, so the sum keeps three decimals.
    let o = run("4 'g' + 1000 'mg'", &p);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        r#"[{"value":5.000,"unit":"g","system":"http://unitsofmeasure.org","code":"g"}]"#
    );

    let o = run("extension.value", &p);
    assert_eq!(
        json_out(&o),
        json!([{"value": 72.50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}])
    );

    let o = run("name", &p);
    assert_eq!(json_out(&o)[0]["family"], "Chalmers");

    let o = run("name.where(family = 'Nobody')", &p);
    assert_eq!(json_out(&o), json!([]));
}

#[test]
fn reads_the_input_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.json");
    std::fs::write(&path, patient().to_string()).expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args(["fhirpath", "--input"])
        .arg(&path)
        .arg("Patient.id")
        .output()
        .expect("caregate runs");
    assert!(o.status.success());
    assert_eq!(json_out(&o), json!(["p1"]));
}

#[test]
fn exit_status_tells_syntax_from_evaluation_errors() {
    let p = patient();
    let o = run("name.given.", &p);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("syntax error"));
    assert!(o.stdout.is_empty());

    let o = run("name.given.single()", &p);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("evaluation error"));

    let o = run("'a' - 'b'", &p);
    assert_eq!(o.status.code(), Some(1));
}
