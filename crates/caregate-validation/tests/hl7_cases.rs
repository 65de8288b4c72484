//! The HL7 validator test cases (FHIR/fhir-test-cases, R4 JSON subset; see
//! shared/corpora/README.md).
//!
//! * No expected-valid case may get an error from the structural validator. That holds for
//!   all of them, not only those that need no terminology server or extra profiles: a
//!   resource the reference validator accepts is structurally sound whatever else it is
//!   checked against.
//! * Of the expected-invalid cases whose expected errors include a structural code
//!   (structure / required / value), we count how many the structural validator flags.
//!   Most of the misses need profiles, extension definitions or terminology (slices,
//!   fixed values, unknown extensions), which are the later profile-validation task.
//!
//! Set `HL7_CASES_VERBOSE=1` to print each case's expected and actual issues.

use std::path::{Path, PathBuf};

use caregate_validation::StructureModel;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/validator")
}

/// Codes of the issues a structural check reports.
const STRUCTURAL_CODES: &[&str] = &["structure", "required", "value"];

/// Expected-valid cases the structural validator rightly disagrees with, and why.
const VALID_EXCEPTIONS: &[(&str, &str)] = &[(
    "contained-resource-bad-id-ignore",
    "runs with validateContains=IGNORE, which skips contained resources; caregate always checks them (the same file with CHECK_VALID is expected invalid)",
)];

struct Case {
    id: String,
    /// `None` when the file is not JSON (the JSON-syntax cases; parsing is not this layer).
    value: Option<Value>,
    expected_valid: bool,
    structural: bool,
    /// Needs neither a terminology server nor extra profiles.
    plain: bool,
    expected_paths: Vec<String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(dir().join("cases.json")).expect("cases.json");
    let doc: Value = serde_json::from_str(&text).expect("cases.json parses");
    let mut out = Vec::new();
    for case in doc["cases"].as_array().expect("cases array") {
        let file = case["file"].as_str().expect("file");
        let value = std::fs::read_to_string(dir().join(file))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let expected = &case["expected"];
        let errors: Vec<&Value> = expected["issues"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| matches!(i["severity"].as_str(), Some("error" | "fatal")))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Case {
            id: case["id"].as_str().unwrap_or("?").to_string(),
            value,
            expected_valid: expected["valid"].as_bool().unwrap_or(false),
            structural: errors
                .iter()
                .any(|i| STRUCTURAL_CODES.contains(&i["code"].as_str().unwrap_or(""))),
            plain: !case["needs_terminology_server"].as_bool().unwrap_or(true)
                && case["profiles"].as_array().is_some_and(|p| p.is_empty())
                && case["validate_against"].is_null(),
            expected_paths: errors
                .iter()
                .flat_map(|i| i["expression"].as_array().into_iter().flatten())
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect(),
        });
    }
    out
}

#[test]
fn hl7_validator_cases() {
    let model = StructureModel::r4_core();
    let all = cases();
    assert!(all.len() >= 200, "{} cases", all.len());
    let verbose = std::env::var_os("HL7_CASES_VERBOSE").is_some();

    let mut false_positives = Vec::new();
    let (mut valid_checked, mut valid_plain) = (0, 0);
    let (mut structural, mut structural_caught, mut invalid, mut invalid_caught) = (0, 0, 0, 0);
    for case in &all {
        let Some(value) = &case.value else {
            continue;
        };
        let issues: Vec<_> = model
            .validate(value)
            .into_iter()
            .filter(|i| i.severity.is_error())
            .collect();
        if case.expected_valid {
            if VALID_EXCEPTIONS.iter().any(|(id, _)| *id == case.id) {
                continue;
            }
            valid_checked += 1;
            valid_plain += usize::from(case.plain);
            if !issues.is_empty() {
                false_positives.push(format!("{} (plain={}): {issues:?}", case.id, case.plain));
            }
            continue;
        }
        invalid += 1;
        invalid_caught += usize::from(!issues.is_empty());
        if case.structural {
            structural += 1;
            structural_caught += usize::from(!issues.is_empty());
        }
        if verbose {
            let ours: Vec<String> = issues
                .iter()
                .map(|i| format!("{} {:?} {}", i.code.as_str(), i.expression, i.diagnostics))
                .collect();
            eprintln!(
                "{} structural={} caught={} expected={:?} ours={ours:?}",
                case.id,
                case.structural,
                !issues.is_empty(),
                case.expected_paths
            );
        }
    }
    eprintln!(
        "HL7 cases: {valid_checked} expected-valid checked ({valid_plain} need no tx/profiles), {} false positives; \
         caught {structural_caught}/{structural} expected-invalid with structural errors, \
         {invalid_caught}/{invalid} expected-invalid overall",
        false_positives.len()
    );
    assert!(false_positives.is_empty(), "{}", false_positives.join("\n"));
    assert!(valid_plain >= 50, "{valid_plain}");
    // Regression floor: what the structural checks caught when this test was written.
    assert!(structural_caught >= 14, "{structural_caught}/{structural}");
    assert!(invalid_caught >= 23, "{invalid_caught}/{invalid}");
}

/// Expected-valid cases (no terminology server needed) on which the full validator
/// rightly or knowingly disagrees, and why. Kept short; every entry is a known gap.
const PROFILE_VALID_EXCEPTIONS: &[(&str, &str)] = &[];

/// The same cases through the full [`Validator`]: the case's supporting files loaded
/// (`profiles[]`), `validate_against` required. Counts the expected-invalid cases now
/// caught; no expected-valid case that needs no terminology server may get an error.
#[test]
fn hl7_validator_cases_with_profiles() {
    use std::sync::Arc;

    use caregate_validation::{Registry, ValidationOptions, Validator};

    let text = std::fs::read_to_string(dir().join("cases.json")).expect("cases.json");
    let doc: Value = serde_json::from_str(&text).expect("cases.json parses");
    let verbose = std::env::var_os("HL7_CASES_VERBOSE").is_some();
    let mut false_positives = Vec::new();
    let mut tx_disagreements = Vec::new();
    let (mut plain_invalid, mut plain_caught, mut tx_invalid, mut tx_caught) = (0, 0, 0, 0);
    let (mut valid_checked, mut agree, mut total) = (0, 0, 0);
    let mut missed = Vec::new();
    for case in doc["cases"].as_array().expect("cases") {
        let id = case["id"].as_str().unwrap_or("?");
        let Some(resource) =
            std::fs::read_to_string(dir().join(case["file"].as_str().unwrap_or("")))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        else {
            continue;
        };
        if VALID_EXCEPTIONS.iter().any(|(x, _)| *x == id) {
            continue;
        }
        let mut b = Registry::builder();
        let against = case["validate_against"]["file"].as_str();
        for p in case["profiles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .chain(against)
        {
            // Supporting files that are not JSON resources (XML originals) are skipped.
            let _ = b.load_path(&dir().join(p));
        }
        let options = &case["options"];
        let validator = Validator::with_fhirpath(Arc::new(b.build()))
            .with_security_checks(options["security-checks"].as_bool() == Some(true))
            .with_no_html_in_markdown(options["noHtmlInMarkdown"].as_bool() == Some(true));
        let opts = ValidationOptions {
            profiles: case["validate_against"]["url"]
                .as_str()
                .or_else(|| case["validate_against"].as_str())
                .map(|u| vec![u.to_string()])
                .unwrap_or_default(),
            // The reference validator warns about profiles it cannot find.
            unknown_profile: caregate_core::Severity::Warning,
            ..ValidationOptions::default()
        };
        let issues = validator.validate(&resource, &opts);
        let errors: Vec<&caregate_core::Issue> =
            issues.iter().filter(|i| i.severity.is_error()).collect();
        let expected_valid = case["expected"]["valid"].as_bool().unwrap_or(false);
        let tx = case["needs_terminology_server"].as_bool().unwrap_or(true);
        let invalid = !errors.is_empty();
        total += 1;
        agree += usize::from(expected_valid != invalid);
        if verbose {
            eprintln!(
                "{id} tx={tx} expected_valid={expected_valid} ours={:?}",
                errors
                    .iter()
                    .map(|i| format!("{:?} {}", i.expression, i.diagnostics))
                    .collect::<Vec<_>>()
            );
        }
        if expected_valid {
            valid_checked += 1;
            if invalid {
                let line = format!(
                    "{id}: {:?}",
                    errors
                        .iter()
                        .map(|i| format!("{:?} {}", i.expression, i.diagnostics))
                        .collect::<Vec<_>>()
                );
                if tx {
                    tx_disagreements.push(line);
                } else if !PROFILE_VALID_EXCEPTIONS.iter().any(|(x, _)| *x == id) {
                    false_positives.push(line);
                }
            }
            continue;
        }
        if tx {
            tx_invalid += 1;
            tx_caught += usize::from(invalid);
        } else {
            plain_invalid += 1;
            plain_caught += usize::from(invalid);
            if !invalid {
                missed.push(id.to_string());
            }
        }
    }
    eprintln!(
        "HL7 cases, full validator: {total} run, agreement on validity {agree}/{total}; \
         {valid_checked} expected-valid, {} false positives without tx, {} with tx; \
         caught {plain_caught}/{plain_invalid} expected-invalid (no tx), {tx_caught}/{tx_invalid} (tx)\n\
         tx-dependent disagreements on valid cases: {tx_disagreements:#?}\nmissed (no tx): {missed:?}",
        false_positives.len(),
        tx_disagreements.len()
    );
    assert!(false_positives.is_empty(), "{false_positives:#?}");
    // Regression floor: what the full validator (with FHIRPath invariants) caught.
    assert!(plain_caught >= 41, "{plain_caught}/{plain_invalid}");
    assert!(tx_caught >= 8, "{tx_caught}/{tx_invalid}");
}
