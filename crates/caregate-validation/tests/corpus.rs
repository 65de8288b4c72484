//! The structural validator against external corpora: official examples, Synthea bundles
//! and the HL7 validator test cases.

use std::path::{Path, PathBuf};

use caregate_validation::StructureModel;
use serde_json::Value;

fn corpora() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_name().is_some_and(|n| n != "index.json")
        })
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Errors in every file of `dir`; warnings and information (binding checks that could not
/// be decided locally, extensible bindings) are counted and printed, not failures.
fn errors_in(dir: &str) -> (usize, Vec<String>) {
    let model = StructureModel::r4_core();
    let files = json_files(&corpora().join(dir));
    let mut problems = Vec::new();
    let mut others: std::collections::BTreeMap<String, usize> = Default::default();
    for file in &files {
        for issue in model.validate(&load(file)) {
            if !issue.severity.is_error() {
                let key = format!("{} {}", issue.severity.as_str(), issue.code.as_str());
                *others.entry(key).or_default() += 1;
                if std::env::var_os("CORPUS_VERBOSE").is_some() {
                    eprintln!(
                        "{}: {:?} {}",
                        file.display(),
                        issue.expression,
                        issue.diagnostics
                    );
                }
                continue;
            }
            problems.push(format!(
                "{}: {} {:?} {}",
                file.display(),
                issue.code.as_str(),
                issue.expression,
                issue.diagnostics
            ));
        }
    }
    eprintln!("{dir}: {} files, non-error issues {others:?}", files.len());
    (files.len(), problems)
}

#[test]
fn r4_spec_examples_are_valid() {
    let (n, problems) = errors_in("examples/r4-spec");
    assert!(n >= 70, "{n} examples");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn mcc_ig_examples_are_valid() {
    let (n, problems) = errors_in("examples/mcc-ig");
    assert!(n >= 30, "{n} examples");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn synthea_bundles_are_valid() {
    let (n, problems) = errors_in("examples/synthea");
    assert_eq!(n, 15);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The peers' generated corpus (shared/peers/validators/corpus), when present: every
/// resource of mixed.ndjson is valid, and every structural defect of invalid.ndjson
/// (unknown element, bad primitive, missing required element, cardinality) is caught.
/// Bindings, reference types and invariants are the later profile-validation task.
#[test]
fn peers_corpus_when_present() {
    let dir = corpora().join("../peers/validators/corpus");
    let model = StructureModel::r4_core();
    if let Ok(text) = std::fs::read_to_string(dir.join("mixed.ndjson")) {
        let mut problems = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("mixed.ndjson line {}: {e}", n + 1));
            for issue in model.validate(&value) {
                if !issue.severity.is_error() {
                    continue;
                }
                problems.push(format!(
                    "line {}: {:?} {}",
                    n + 1,
                    issue.expression,
                    issue.diagnostics
                ));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
    let (Ok(invalid), Ok(labels)) = (
        std::fs::read_to_string(dir.join("invalid.ndjson")),
        std::fs::read_to_string(dir.join("invalid.labels.jsonl")),
    ) else {
        return;
    };
    let mut by_kind: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let mut missed = Vec::new();
    for (line, label) in invalid.lines().zip(labels.lines()) {
        let value: Value = serde_json::from_str(line).expect("invalid.ndjson line parses");
        let label: Value = serde_json::from_str(label).expect("label parses");
        let kind = label["kind"].as_str().unwrap_or("?").to_string();
        let caught = model.validate(&value).iter().any(|i| i.severity.is_error());
        let entry = by_kind.entry(kind.clone()).or_default();
        entry.0 += 1;
        entry.1 += usize::from(caught);
        if !caught
            && [
                "unknown_element",
                "bad_primitive_format",
                "missing_required",
                "cardinality_violation",
            ]
            .contains(&kind.as_str())
        {
            missed.push(format!("{kind}: {}", label["detail"]));
        }
    }
    eprintln!("peers invalid.ndjson detection (caught/total): {by_kind:?}");
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}
