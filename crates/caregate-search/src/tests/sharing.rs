//! Parameters that share other parameters' rows (`SearchRegistry::share_rows`): they must
//! answer every search exactly as they would with rows of their own.

use std::collections::BTreeSet;
use std::sync::Arc;

use caregate_store::index::{IndexEntry, IndexValue};
use caregate_store::{content_hash, SqliteOptions, SqliteStore, Store, WriteMethod, WriteOp};
use caregate_validation::Package;
use serde_json::{json, Value};

use super::registry;
use crate::SearchRegistry;

fn stored_as(ty: &str, code: &str) -> Vec<String> {
    registry()
        .param(ty, code)
        .unwrap_or_else(|| panic!("{ty}:{code} is registered"))
        .stored_as
        .clone()
}

#[test]
fn unions_of_other_parameters_share_their_rows() {
    assert_eq!(
        stored_as("Observation", "combo-code"),
        ["Observation:code", "Observation:component-code"]
    );
    assert_eq!(
        stored_as("Observation", "combo-value-quantity"),
        [
            "Observation:component-value-quantity",
            "Observation:value-quantity"
        ]
    );
    // Identical expressions: the first by key keeps the rows.
    assert_eq!(stored_as("CodeSystem", "url"), ["CodeSystem:system"]);
    assert!(stored_as("CodeSystem", "system").is_empty());
    // Members keep their own rows; references always do.
    assert!(stored_as("Observation", "code").is_empty());
    assert!(stored_as("Observation", "patient").is_empty());
    // Shared parameters are not extracted on writes.
    let observation = json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                       "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]
    });
    let keys: BTreeSet<String> = registry()
        .extract(&observation)
        .into_iter()
        .map(|e| e.param)
        .collect();
    assert!(keys.contains("Observation:component-code"), "{keys:?}");
    assert!(!keys.contains("Observation:combo-code"), "{keys:?}");
}

/// Resources that give the shared parameters values: the Synthea bundles' entries (blood
/// pressure components, quantities, concepts), the R4 CodeSystems and CapabilityStatements,
/// and a few hand-written edge cases.
fn corpus() -> Vec<Value> {
    let dir = format!(
        "{}/../../../shared/corpora/examples/synthea",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("index.json"))
        .collect();
    files.sort();
    for f in files.iter().take(4) {
        let bundle: Value =
            serde_json::from_slice(&std::fs::read(f).expect("bundle")).expect("bundle parses");
        for e in bundle["entry"].as_array().into_iter().flatten() {
            out.push(e["resource"].clone());
        }
    }
    let core = Package::r4_core();
    out.extend(core.of_type("CodeSystem").take(150).cloned());
    out.extend(core.of_type("CapabilityStatement").cloned());
    out.push(json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "X-1"}], "text": "Both Ways"},
        "dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}]},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "X-1"}]},
             "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "373066001"}], "text": "Yes"}},
            {"code": {"text": "Only Text"},
             "dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "masked"}]}}
        ]
    }));
    out.push(
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "no coding"}}),
    );
    out
}

fn store_with(reg: &SearchRegistry, resources: &[Value]) -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        SqliteStore::open(&dir.path().join("db.sqlite"), SqliteOptions::default()).expect("open");
    let ops: Vec<WriteOp> = resources
        .iter()
        .enumerate()
        .map(|(n, r)| {
            let content = serde_json::to_vec(r).expect("serialises");
            WriteOp {
                resource_type: r["resourceType"].as_str().unwrap_or_default().to_string(),
                id: format!("r{n}"),
                expected_version: None,
                version: 1,
                last_updated: "2026-01-01T00:00:00.000Z".into(),
                last_updated_ms: 1_767_225_600_000 + n as i64,
                method: WriteMethod::Post,
                hash: content_hash(Some(&content)),
                content: Some(content),
                index: reg.extract(r),
            }
        })
        .collect();
    for chunk in ops.chunks(500) {
        store.commit(chunk.to_vec(), Vec::new()).expect("commit");
    }
    (dir, store)
}

/// Query values for one parameter's index value (as its search syntax writes it).
fn queries_for(code: &str, value: &IndexValue) -> Vec<String> {
    let mut out = Vec::new();
    match value {
        IndexValue::Token {
            system,
            code: c,
            text,
        } => {
            if let Some(c) = c {
                out.push(format!("{code}={}|{c}", system.as_deref().unwrap_or("")));
                out.push(format!("{code}={c}"));
                out.push(format!("{code}:not={c}"));
            }
            if let Some(first) = text.as_deref().and_then(|t| t.split_whitespace().next()) {
                out.push(format!("{code}:text={first}"));
            }
        }
        IndexValue::Quantity {
            value,
            system,
            code: c,
            ..
        } => {
            out.push(format!(
                "{code}={value}|{}|{}",
                system.as_deref().unwrap_or(""),
                c.as_deref().unwrap_or("")
            ));
            out.push(format!("{code}=gt{value}"));
        }
        IndexValue::Uri(uri) => out.push(format!("{code}={uri}")),
        IndexValue::String { exact, .. } => out.push(format!("{code}:exact={exact}")),
        IndexValue::Number(n) => out.push(format!("{code}={n}")),
        IndexValue::Date(_) | IndexValue::Reference { .. } => {}
    }
    out
}

fn answer(reg: &SearchRegistry, store: &SqliteStore, ty: &str, query: &str) -> Vec<String> {
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let parsed = reg
        .parse(Some(ty), &pairs, true)
        .unwrap_or_else(|e| panic!("{ty}?{query}: {e:?}"));
    let page = store
        .search(&parsed.query)
        .unwrap_or_else(|e| panic!("{ty}?{query}: {e:?}"));
    let mut ids: Vec<String> = page.matches.iter().map(|m| m.id.clone()).collect();
    ids.push(format!("total={:?}", page.total));
    ids
}

#[test]
fn shared_rows_answer_as_own_rows_would() {
    let unshared =
        SearchRegistry::from_definitions_unshared(Package::r4_core().of_type("SearchParameter"));
    let shared = registry();
    let resources = corpus();
    let (_a, own_rows) = store_with(&unshared, &resources);
    let (_b, shared_rows) = store_with(shared, &resources);

    let mut asked = 0;
    let mut matched = 0;
    let mut types: Vec<&String> = shared.types.keys().collect();
    types.sort();
    for ty in types {
        for info in shared.types[ty].params.values() {
            if info.stored_as.is_empty() {
                continue;
            }
            let code = &info.code;
            let mut queries: BTreeSet<String> = [
                format!("{code}:missing=true"),
                format!("{code}:missing=false"),
                format!("_sort={code}&_count=40"),
                format!("_sort=-{code}&_count=40"),
            ]
            .into();
            for r in resources
                .iter()
                .filter(|r| r["resourceType"] == ty.as_str())
            {
                let entries: Vec<IndexEntry> = unshared.extract(r);
                for e in entries.iter().filter(|e| e.param == info.key) {
                    queries.extend(queries_for(code, &e.value));
                }
            }
            for q in queries.iter().take(120) {
                let own = answer(&unshared, &own_rows, ty, q);
                let via_members = answer(shared, &shared_rows, ty, q);
                assert_eq!(own, via_members, "{ty}?{q}");
                asked += 1;
                if own.len() > 1 {
                    matched += 1;
                }
            }
        }
    }
    // The comparison covered real matches, not just empty answers.
    assert!(
        asked > 300 && matched > 200,
        "asked {asked}, matched {matched}"
    );
}
