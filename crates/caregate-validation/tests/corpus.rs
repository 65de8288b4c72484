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
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.file_name().is_some_and(|n| n != "index.json"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn errors_in(dir: &str) -> (usize, Vec<String>) {
    let model = StructureModel::r4_core();
    let files = json_files(&corpora().join(dir));
    let mut problems = Vec::new();
    for file in &files {
        for issue in model.validate(&load(file)) {
            problems.push(format!("{}: {} {:?} {}", file.display(), issue.code.as_str(), issue.expression, issue.diagnostics));
        }
    }
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
