//! FHIRPath invariants through the full validator: the peers' invariant cases are caught,
//! and the official examples raise no invariant (or other) errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use caregate_core::{IssueCode, Severity};
use caregate_validation::{Registry, ValidationOptions, Validator};
use serde_json::{json, Value};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn validator() -> Validator {
    Validator::with_fhirpath(Registry::standard().clone())
}

/// Core-spec validation as the examples need it: claimed profiles are not loaded here, and
/// the examples use extensions the core package does not define.
fn core_opts() -> ValidationOptions {
    ValidationOptions {
        meta_profiles: false,
        unknown_extension: Some(Severity::Warning),
        ..ValidationOptions::default()
    }
}

#[test]
fn peers_invariant_cases_are_caught() {
    let dir = shared().join("peers/validators/corpus");
    let (Ok(lines), Ok(labels)) = (
        std::fs::read_to_string(dir.join("invalid.ndjson")),
        std::fs::read_to_string(dir.join("invalid.labels.jsonl")),
    ) else {
        eprintln!("peers corpus not present, skipped");
        return;
    };
    let lines: Vec<&str> = lines.lines().collect();
    let v = validator();
    let opts = core_opts();
    let (mut total, mut caught, mut missed) = (0, 0, Vec::new());
    for label in labels.lines() {
        let label: Value = serde_json::from_str(label).expect("label line");
        if label["kind"] != "invariant_violation" {
            continue;
        }
        total += 1;
        let n = label["line"].as_u64().unwrap_or(0) as usize;
        let resource: Value = serde_json::from_str(lines[n - 1]).expect("corpus line");
        let issues = v.validate(&resource, &opts);
        // The constraint key the case breaks (`ctm-1 onBehalfOf ...`).
        let key = label["detail"]
            .as_str()
            .and_then(|d| d.split_whitespace().next())
            .unwrap_or("");
        if issues
            .iter()
            .any(|i| i.severity.is_error() && i.diagnostics.contains(key))
        {
            caught += 1;
        } else {
            missed.push(format!("{}: {}", label["id"], label["detail"]));
        }
    }
    eprintln!(
        "invariant cases caught: {caught}/{total}\n{}",
        missed.join("\n")
    );
    assert_eq!(total, 28);
    assert!(
        caught >= 28,
        "{caught}/{total}: missed\n{}",
        missed.join("\n")
    );
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| {
        p.extension().is_some_and(|x| x == "json")
            && p.file_name().is_some_and(|n| n != "index.json")
    });
    files.sort();
    files
}

fn example_errors(dir: &str) -> (usize, Vec<String>) {
    let v = validator();
    let opts = core_opts();
    let files = json_files(&shared().join("corpora/examples").join(dir));
    let mut problems = Vec::new();
    let mut warnings = 0;
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let Ok(resource) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        for i in v.validate(&resource, &opts) {
            if i.severity.is_error() {
                problems.push(format!(
                    "{}: {} {:?} {}",
                    f.display(),
                    i.code.as_str(),
                    i.expression,
                    i.diagnostics
                ));
            } else if i.code == IssueCode::Invariant {
                warnings += 1;
                if std::env::var_os("CORPUS_VERBOSE").is_some() {
                    eprintln!("{}: {:?} {}", f.display(), i.expression, i.diagnostics);
                }
            }
        }
    }
    eprintln!(
        "{dir}: {} files, {warnings} invariant warnings",
        files.len()
    );
    (files.len(), problems)
}

#[test]
fn r4_spec_examples_have_no_errors() {
    let (n, problems) = example_errors("r4-spec");
    assert!(n >= 70, "{n}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn mcc_examples_have_no_errors() {
    let (n, problems) = example_errors("mcc-ig");
    assert!(n >= 30, "{n}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn synthea_bundles_have_no_errors() {
    let (_, problems) = example_errors("synthea");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn invariant_issue_shape() {
    let v = validator();
    // per-1: start <= end, on a datatype inside a backbone element.
    let enc = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "participant": [{"period": {"start": "2020-02-01", "end": "2020-01-01"}}]});
    let issues = v.validate(&enc, &core_opts());
    let inv: Vec<_> = issues
        .iter()
        .filter(|i| i.code == IssueCode::Invariant && i.severity.is_error())
        .collect();
    assert_eq!(inv.len(), 1, "{issues:#?}");
    assert!(inv[0].severity.is_error());
    assert!(
        inv[0].diagnostics.contains("per-1"),
        "{}",
        inv[0].diagnostics
    );
    assert_eq!(inv[0].expression, vec!["Encounter.participant[0].period"]);
    // A constraint that does not compile is a warning naming the key.
    let bad = caregate_validation::FhirPathInvariants::default();
    let c = caregate_validation::Constraint::new(
        "x-1",
        Severity::Error,
        "broken",
        Some("name.where("),
        None,
    );
    use caregate_validation::{InvariantContext, InvariantEvaluator, InvariantOutcome};
    let out = bad.evaluate(&InvariantContext {
        constraint: &c,
        focus: &enc,
        resource: &enc,
        container: &enc,
        root: &enc,
        fhir_type: Some("Encounter"),
    });
    assert!(matches!(out, InvariantOutcome::NotEvaluated(_)));
    let _ = Arc::new(0);
}

#[test]
fn ext_1_is_checked_natively() {
    let v = validator();
    let p = json!({"resourceType": "Patient", "extension": [{
        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
        "valueAddress": {"city": "X"},
        "extension": [{"url": "a", "valueString": "b"}]}]});
    let issues = v.validate(&p, &core_opts());
    assert!(
        issues.iter().any(|i| i.severity.is_error()
            && i.diagnostics.contains("ext-1")
            && i.expression == vec!["Patient.extension[0]"]),
        "{issues:#?}"
    );
}

#[test]
fn peers_mixed_corpus_has_no_errors() {
    let path = shared().join("peers/validators/corpus/mixed.ndjson");
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("peers corpus not present, skipped");
        return;
    };
    let v = validator();
    let opts = core_opts();
    let mut problems = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let resource: Value = serde_json::from_str(line).expect("corpus line");
        for i in v.validate(&resource, &opts) {
            if i.severity.is_error() {
                problems.push(format!("{}: {:?} {}", n + 1, i.expression, i.diagnostics));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        problems[..problems.len().min(30)].join("\n")
    );
}

/// Invariants of datatypes nested in datatypes that have none of their own (a Period in an
/// Identifier or a HumanName) are checked, with or without extensions in the resource:
/// the core pass once reached them only when something else (an extension, a reference)
/// made it walk the outer datatype.
#[test]
fn nested_datatype_invariants_are_checked() {
    let v = validator();
    let backwards = json!({"start": "2020-02-01", "end": "2020-01-01"});
    let plain = json!({"resourceType": "Patient",
        "identifier": [{"system": "http://x", "value": "1", "period": backwards}],
        "name": [{"family": "A", "period": backwards}]});
    let mut extended = plain.clone();
    extended["extension"] = json!([{"url": "http://example.org/x", "valueString": "y"}]);
    for patient in [plain, extended] {
        let issues = v.validate(&patient, &core_opts());
        let mut failed: Vec<_> = issues
            .iter()
            .filter(|i| i.severity.is_error() && i.diagnostics.contains("per-1"))
            .map(|i| i.expression.join(","))
            .collect();
        failed.sort();
        assert_eq!(
            failed,
            ["Patient.identifier[0].period", "Patient.name[0].period"],
            "{issues:#?}"
        );
    }
}
