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

/// Agreement with the reference validator on valid/invalid over the cases that need no
/// terminology server, as reached; a floor that only rises.
const NO_TX_AGREEMENT_FLOOR: usize = 165;

/// The same for the cases that need a terminology server (codes checked locally where the
/// code system is loaded, the rest reported).
const TX_AGREEMENT_FLOOR: usize = 31;

/// The known disagreements on cases that need no terminology server: `case-id<TAB>reason`
/// per line (`#` comments). Every such disagreement must be listed, and no listed case may
/// agree (so the file stays honest).
fn known_disagreements() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hl7_known_disagreements.txt");
    let text = std::fs::read_to_string(&path).expect("hl7_known_disagreements.txt");
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (id, reason) = l
                .split_once('\t')
                .unwrap_or_else(|| panic!("no tab-separated reason: {l}"));
            assert!(!reason.trim().is_empty(), "empty reason: {l}");
            (id.to_string(), reason.trim().to_string())
        })
        .collect()
}

/// The first expected error of a case, as the reason a terminology-dependent case differs.
fn expected_error(case: &Value) -> String {
    case["expected"]["issues"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| matches!(i["severity"].as_str(), Some("error" | "fatal")))
        .and_then(|i| i["text"].as_str())
        .map(|t| t.chars().take(160).collect())
        .unwrap_or_default()
}

/// The same cases through the full [`Validator`]: the case's supporting files loaded
/// (`profiles[]`), `validate_against` required, the validator options the case runs with
/// that caregate has (`security-checks`, `noHtmlInMarkdown`). Agreement on validity is
/// counted separately for the cases that need no terminology server (asserted against a
/// floor, every disagreement explained in `hl7_known_disagreements.txt`) and those that do
/// (reported with the reference validator's terminology finding).
#[test]
fn hl7_validator_cases_with_profiles() {
    use std::sync::Arc;

    use caregate_validation::{Registry, ValidationOptions, Validator};

    let text = std::fs::read_to_string(dir().join("cases.json")).expect("cases.json");
    let doc: Value = serde_json::from_str(&text).expect("cases.json parses");
    let verbose = std::env::var_os("HL7_CASES_VERBOSE").is_some();
    let known = known_disagreements();
    let mut false_positives = Vec::new();
    let mut tx_disagreements = Vec::new();
    let mut unexplained = Vec::new();
    let mut no_tx_disagreeing = Vec::new();
    let (mut plain_invalid, mut plain_caught, mut tx_invalid, mut tx_caught) = (0, 0, 0, 0);
    let (mut agree_no_tx, mut total_no_tx, mut agree_tx, mut total_tx) = (0, 0, 0, 0);
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
        let errors: Vec<String> = issues
            .iter()
            .filter(|i| i.severity.is_error())
            .map(|i| format!("{:?} {}", i.expression, i.diagnostics))
            .collect();
        let expected_valid = case["expected"]["valid"].as_bool().unwrap_or(false);
        let tx = case["needs_terminology_server"].as_bool().unwrap_or(true);
        let invalid = !errors.is_empty();
        let agrees = expected_valid != invalid;
        if verbose {
            eprintln!("{id} tx={tx} expected_valid={expected_valid} ours={errors:?}");
        }
        if tx {
            total_tx += 1;
            agree_tx += usize::from(agrees);
            if !agrees {
                tx_disagreements.push(format!(
                    "{id} (expected {}): reference validator: {}; ours: {errors:?}",
                    if expected_valid { "valid" } else { "invalid" },
                    expected_error(case)
                ));
            }
        } else {
            total_no_tx += 1;
            agree_no_tx += usize::from(agrees);
            if !agrees {
                no_tx_disagreeing.push(id.to_string());
                if !known.iter().any(|(k, _)| k == id) {
                    unexplained.push(format!(
                        "{id} (expected {}): {errors:?}",
                        if expected_valid { "valid" } else { "invalid" }
                    ));
                }
                if expected_valid {
                    false_positives.push(format!("{id}: {errors:?}"));
                }
            }
        }
        if !expected_valid {
            if tx {
                tx_invalid += 1;
                tx_caught += usize::from(invalid);
            } else {
                plain_invalid += 1;
                plain_caught += usize::from(invalid);
            }
        }
    }
    let stale: Vec<&String> = known
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !no_tx_disagreeing.contains(id))
        .collect();
    eprintln!(
        "HL7 cases, full validator: agreement on validity {agree_no_tx}/{total_no_tx} without a \
         terminology server ({:.1}%), {agree_tx}/{total_tx} needing one; \
         caught {plain_caught}/{plain_invalid} expected-invalid (no tx), {tx_caught}/{tx_invalid} (tx)\n\
         no-tx disagreements: {no_tx_disagreeing:?}\n\
         terminology-dependent disagreements: {tx_disagreements:#?}",
        100.0 * agree_no_tx as f64 / total_no_tx.max(1) as f64,
    );
    assert!(
        unexplained.is_empty(),
        "disagreements not in hl7_known_disagreements.txt: {unexplained:#?}"
    );
    assert!(
        stale.is_empty(),
        "listed in hl7_known_disagreements.txt but now agreeing (remove them): {stale:?}"
    );
    assert!(false_positives.is_empty(), "{false_positives:#?}");
    assert!(
        agree_no_tx >= NO_TX_AGREEMENT_FLOOR,
        "{agree_no_tx}/{total_no_tx} < {NO_TX_AGREEMENT_FLOOR}"
    );
    assert!(
        agree_no_tx * 100 >= total_no_tx * 95,
        "{agree_no_tx}/{total_no_tx} is below 95%"
    );
    assert!(
        agree_tx >= TX_AGREEMENT_FLOOR,
        "{agree_tx}/{total_tx} < {TX_AGREEMENT_FLOOR}"
    );
    // Regression floors: what the full validator (with FHIRPath invariants) caught.
    assert!(plain_caught >= 82, "{plain_caught}/{plain_invalid}");
    assert!(tx_caught >= 22, "{tx_caught}/{tx_invalid}");
}
