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
        let issues = model.validate(value);
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
