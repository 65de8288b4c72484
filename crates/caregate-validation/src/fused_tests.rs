//! The structural walk's own core-definition checks ([`Validator::walk`]) must report
//! exactly what the separate core-definition pass reports, on every resource of the
//! corpora where they apply (no structural error, no extension). Order may differ: the
//! walk reports in the order it meets values, the pass in definition order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::{FhirPathInvariants, Registry, ValidationOptions, Validator};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn json_files(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect()
}

fn ndjson(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn corpus() -> Vec<Value> {
    let mut all = Vec::new();
    let examples = shared().join("corpora/examples");
    all.extend(json_files(&examples.join("r4-spec")));
    all.extend(json_files(&examples.join("mcc-ig")));
    let bundles = json_files(&examples.join("synthea"));
    for b in &bundles {
        for e in b
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = e.get("resource") {
                all.push(r.clone());
            }
        }
    }
    all.extend(bundles);
    all.extend(json_files(&shared().join("corpora/validator/files")));
    let peers = shared().join("peers/validators/corpus");
    all.extend(ndjson(&peers.join("mixed.ndjson")));
    all.extend(ndjson(&peers.join("invalid.ndjson")));
    all.extend(ndjson(&peers.join("profile-cases.ndjson")));
    all.extend(corner_cases());
    all
}

/// Shapes the corpora hold few or no failing examples of.
fn corner_cases() -> Vec<Value> {
    let dosage = |dose: Value, bounds: Value| {
        serde_json::json!({
            "resourceType": "MedicationRequest", "id": "m", "status": "active",
            "intent": "order", "subject": {"reference": "Patient/p"},
            "medicationCodeableConcept": {"text": "x"},
            "dosageInstruction": [{
                "timing": {"repeat": {"boundsDuration": bounds, "frequency": 1,
                    "period": -1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": dose}]
            }]
        })
    };
    vec![
        // SimpleQuantity forbids a comparator; Duration needs a UCUM code with a value.
        dosage(
            serde_json::json!({"value": 1, "comparator": "<", "unit": "mg"}),
            serde_json::json!({"value": 3, "code": "d", "system": "http://example.org"}),
        ),
        dosage(
            serde_json::json!({"value": 1, "code": "mg"}),
            serde_json::json!({"code": "d", "system": "http://unitsofmeasure.org"}),
        ),
        // Contained resources: referenced, unreferenced, and a reference to none.
        serde_json::json!({
            "resourceType": "Observation", "id": "o", "status": "final",
            "code": {"text": "x"},
            "contained": [
                {"resourceType": "Patient", "id": "p1"},
                {"resourceType": "Practitioner", "id": "u1"},
                {"resourceType": "Group", "id": "g1", "type": "person", "actual": true}
            ],
            "subject": {"reference": "#p1"},
            "performer": [{"reference": "#g1"}, {"reference": "#missing"}],
            "hasMember": [{"reference": "Patient/x"}],
            "valueQuantity": {"value": 1, "code": "kg"},
            "effectivePeriod": {"start": "2020-02-01", "end": "2020-01-01"}
        }),
        // An attachment whose size disagrees with its data; a wrongly typed reference
        // inside a datatype (Identifier.assigner).
        serde_json::json!({
            "resourceType": "Patient", "id": "a",
            "photo": [{"contentType": "image/png", "data": "AAAA", "size": 99}],
            "identifier": [{"value": "1", "assigner": {"reference": "Patient/z"},
                "period": {"start": "2021", "end": "2020"}}],
            "managingOrganization": {"reference": "Practitioner/q"}
        }),
        // Nested Questionnaire items reach their definition through a contentReference
        // (a display item must not be required: que-6).
        serde_json::json!({
            "resourceType": "Questionnaire", "id": "q", "status": "active",
            "item": [{"linkId": "1", "type": "group", "item": [
                {"linkId": "1.1", "type": "display", "required": true,
                 "enableWhen": [{"question": "1", "operator": "exists", "answerBoolean": true}]}
            ]}]
        }),
        // A transaction whose entries refer to each other and to nothing.
        serde_json::json!({
            "resourceType": "Bundle", "id": "b", "type": "transaction",
            "entry": [
                {"fullUrl": "urn:uuid:0a0e6f5e-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient", "id": "p"},
                 "request": {"method": "POST", "url": "Patient"}},
                {"fullUrl": "urn:uuid:0a0e6f5e-0000-4000-8000-000000000002", "resource": {"resourceType": "Observation",
                    "status": "final", "code": {"text": "x"},
                    "subject": {"reference": "urn:uuid:0a0e6f5e-0000-4000-8000-000000000001"},
                    "performer": [{"reference": "urn:uuid:0a0e6f5e-0000-4000-8000-000000000001"}, {"reference": "urn:uuid:0a0e6f5e-0000-4000-8000-000000000009"}],
                    "contained": [{"resourceType": "Device", "id": "d"}],
                    "device": {"reference": "#d"}},
                 "request": {"method": "POST", "url": "Observation"}},
                {"fullUrl": "urn:uuid:0a0e6f5e-0000-4000-8000-000000000003", "resource": {"resourceType": "Encounter",
                    "status": "planned", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": "urn:uuid:0a0e6f5e-0000-4000-8000-000000000002"}},
                 "request": {"method": "POST", "url": "Encounter"}}
            ]
        }),
        // A resource in a parameter part, inside a contentReference.
        serde_json::json!({
            "resourceType": "Parameters",
            "parameter": [
                {"name": "a", "resource": {"resourceType": "Patient",
                    "managingOrganization": {"reference": "Patient/1"}}},
                {"name": "b", "part": [{"name": "c", "resource": {"resourceType": "Patient",
                    "managingOrganization": {"reference": "Patient/1"}}}]}
            ]
        }),
    ]
}

fn assert_none_differ(differences: &[String], compared: usize) {
    assert!(
        differences.is_empty(),
        "{} of {compared} differ, first: {}",
        differences.len(),
        differences[..differences.len().min(3)].join("\n")
    );
}

/// An issue as text, for comparing lists regardless of order.
fn key(i: &caregate_core::Issue) -> String {
    format!(
        "{} {} {:?} {}",
        i.severity.as_str(),
        i.code.as_str(),
        i.expression,
        i.diagnostics
    )
}

fn sorted(issues: &[caregate_core::Issue]) -> Vec<String> {
    let mut keys: Vec<String> = issues.iter().map(key).collect();
    keys.sort();
    keys
}

#[test]
fn the_walks_checks_equal_the_core_definition_pass() {
    let registry: Arc<Registry> = Registry::standard().clone();
    let validator = Validator::new(registry.clone()).with_invariants(Arc::new(
        FhirPathInvariants::new(Some(registry.terminology().clone())),
    ));
    let with_profile = ValidationOptions {
        profiles: vec!["http://hl7.org/fhir/StructureDefinition/vitalsigns".into()],
        ..Default::default()
    };
    let options = [ValidationOptions::default(), with_profile];
    let resources = corpus();
    assert!(resources.len() > 10_000, "{} resources", resources.len());
    let (mut compared, mut with_issues, mut differences) = (0, 0, Vec::new());
    for opts in &options {
        for r in &resources {
            let (structure, extensions) = validator.model.validate_noting_extensions(r);
            if extensions || structure.iter().any(|i| i.severity.is_error()) {
                continue;
            }
            let two_pass = validator.after_structure(r, opts, structure, extensions);
            let walked = validator.validate(r, opts);
            compared += 1;
            with_issues += usize::from(!walked.is_empty());
            if sorted(&walked) != sorted(&two_pass) {
                differences.push(format!(
                    "{} {:?}:\n  walk: {:#?}\n  pass: {:#?}",
                    r.get("resourceType").and_then(Value::as_str).unwrap_or("?"),
                    r.get("id"),
                    sorted(&walked),
                    sorted(&two_pass)
                ));
            }
            // The write path gives the same answer.
            let (staged, sound) = validator.validate_staged(r, opts);
            assert!(sound);
            assert_eq!(sorted(&staged), sorted(&walked));
        }
    }
    eprintln!("compared {compared} validations, {with_issues} with issues");
    assert!(compared > 10_000, "{compared}");
    assert_none_differ(&differences, compared);
}

#[test]
fn corner_cases_are_walked_and_report_what_they_break() {
    let registry: Arc<Registry> = Registry::standard().clone();
    let validator = Validator::new(registry.clone()).with_invariants(Arc::new(
        FhirPathInvariants::new(Some(registry.terminology().clone())),
    ));
    let expected: [&[&str]; 7] = [
        &[
            "sqty-1",
            "'Quantity.comparator' is not allowed",
            "drt-1",
            "tim-5",
        ],
        &["qty-3", "drt-1"],
        &[
            "dom-3",
            "per-1",
            "ref-1",
            "'#missing' is not found",
            "points to a Patient",
            "points to a Group",
        ],
        &[
            "per-1",
            "points to a Patient",
            "points to a Practitioner",
            "size 99",
        ],
        // Nested items and parameter parts are checked against the element they name.
        &["Questionnaire.item[0].item[0]\"] Constraint failed: que-6"],
        &["entry[2].resource.subject\"] The reference points to a Observation"],
        &[
            "parameter[0].resource.managingOrganization",
            "parameter[1].part[0].resource.managingOrganization",
        ],
    ];
    for (r, wanted) in corner_cases().iter().zip(expected) {
        let (structure, extensions) = validator.model.validate_noting_extensions(r);
        assert!(
            structure.iter().all(|i| !i.severity.is_error()) && !extensions,
            "{} is walked with its checks: {structure:?}",
            r["resourceType"]
        );
        let found = sorted(&validator.validate(r, &ValidationOptions::default())).join("\n");
        for w in wanted {
            assert!(
                found.contains(w),
                "{}: {w} not in\n{found}",
                r["resourceType"]
            );
        }
    }
}

/// The invariants answered natively ([`crate::invariants`]'s shapes) give FHIRPath's
/// answers on every resource of the corpora.
#[test]
fn native_invariant_answers_equal_fhirpath_on_the_corpora() {
    let registry: Arc<Registry> = Registry::standard().clone();
    let terminology = Some(registry.terminology().clone());
    let native = Validator::new(registry.clone())
        .with_invariants(Arc::new(FhirPathInvariants::new(terminology.clone())));
    let fhirpath = Validator::new(registry.clone()).with_invariants(Arc::new(
        crate::invariants::FhirPathInvariants::fhirpath_only(terminology),
    ));
    let opts = ValidationOptions::default();
    let mut differences = Vec::new();
    let resources = corpus();
    for r in &resources {
        let a = sorted(&native.validate(r, &opts));
        let b = sorted(&fhirpath.validate(r, &opts));
        if a != b {
            differences.push(format!(
                "{} {:?}:\n  native: {a:#?}\n  fhirpath: {b:#?}",
                r.get("resourceType").and_then(Value::as_str).unwrap_or("?"),
                r.get("id")
            ));
        }
    }
    assert_none_differ(&differences, resources.len());
}
