//! Tests against the R4 core SearchParameters and the official example resources.

mod extraction;
mod parsing;

use std::sync::OnceLock;

use caregate_store::index::{IndexEntry, IndexValue};
use caregate_validation::Package;
use serde_json::Value;

use crate::SearchRegistry;

/// The registry over all R4 core SearchParameters, built once for all tests.
pub(crate) fn registry() -> &'static SearchRegistry {
    static REG: OnceLock<SearchRegistry> = OnceLock::new();
    REG.get_or_init(|| {
        SearchRegistry::from_definitions(Package::r4_core().of_type("SearchParameter"))
    })
}

/// An example resource from the shared corpora, e.g. `"r4-spec/Patient-example.json"`.
pub(crate) fn example(path: &str) -> Value {
    let full = format!(
        "{}/../../../shared/corpora/examples/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Index values of one parameter (`"Patient:family"`).
pub(crate) fn values_of(entries: &[IndexEntry], key: &str) -> Vec<IndexValue> {
    entries
        .iter()
        .filter(|e| e.param == key)
        .map(|e| e.value.clone())
        .collect()
}

pub(crate) fn token(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
    IndexValue::Token {
        system: system.map(str::to_string),
        code: code.map(str::to_string),
        text: text.map(str::to_lowercase),
    }
}

pub(crate) fn code(code: &str) -> IndexValue {
    token(None, Some(code), None)
}

pub(crate) fn reference(ty: &str, id: &str) -> IndexValue {
    IndexValue::Reference {
        target_type: Some(ty.to_string()),
        target_id: Some(id.to_string()),
        url: None,
    }
}

pub(crate) fn string(exact: &str) -> IndexValue {
    IndexValue::String {
        normalized: crate::normalize_string(exact),
        exact: exact.to_string(),
    }
}

pub(crate) fn date(text: &str) -> IndexValue {
    IndexValue::Date(caregate_core::parse_date_range(text).expect("test date"))
}

#[test]
fn r4_core_parameters_compile() {
    let reg = registry();
    let defs: Vec<&Value> = Package::r4_core().of_type("SearchParameter").collect();
    assert_eq!(defs.len(), 1400);
    // Every non-composite, non-special R4 expression compiles with caregate-fhirpath.
    let mut compiled = 0;
    let mut failed = Vec::new();
    for sp in &defs {
        let Some(expr) = sp["expression"].as_str() else {
            continue;
        };
        if sp["type"] == "composite" || sp["type"] == "special" {
            continue;
        }
        match caregate_fhirpath::Expression::compile(expr) {
            Ok(_) => compiled += 1,
            Err(e) => failed.push(format!("{}: {e}", sp["url"])),
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
    assert!(compiled >= 1336, "{compiled}");
    // Definitions registered (type, code) pairs; Resource-level ones count once per type.
    let all: Vec<crate::ParamInfo> = caregate_core::RESOURCE_TYPES
        .iter()
        .flat_map(|t| reg.params_for(t))
        .collect();
    assert!(all.len() > 2450, "{}", all.len());
    let definitions: std::collections::HashSet<&str> = all.iter().map(|p| p.url.as_str()).collect();
    eprintln!(
        "supported: {} definitions, {} (type, code) pairs",
        definitions.len(),
        all.len()
    );
    assert!(definitions.len() >= 1300, "{}", definitions.len());
    assert!(reg.extractor_count() > 1900, "{}", reg.extractor_count());
}

#[test]
fn registry_lookups() {
    let reg = registry();
    let family = reg.param("Patient", "family").expect("Patient:family");
    assert_eq!(family.key, "Patient:family");
    assert_eq!(family.param_type.code(), "string");
    assert_eq!(
        family.url,
        "http://hl7.org/fhir/SearchParameter/individual-family"
    );
    assert!(!family.documentation.is_empty());
    // Resource-level parameters register on every type; special ones do not.
    for ty in ["Patient", "CarePlan", "Bundle"] {
        assert!(reg.param(ty, "_profile").is_some(), "{ty}");
        assert!(reg.param(ty, "_tag").is_some(), "{ty}");
        assert!(reg.param(ty, "_id").is_some(), "{ty}");
        assert!(reg.param(ty, "_lastUpdated").is_some(), "{ty}");
        assert!(reg.param(ty, "_text").is_none(), "{ty}");
        assert!(reg.param(ty, "_content").is_none(), "{ty}");
    }
    // Composite, phonetic and expression-less parameters are not advertised.
    assert!(reg.param("Observation", "code-value-quantity").is_none());
    assert!(reg.param("Patient", "phonetic").is_none());
    assert!(reg.param("Location", "near").is_none());
    assert!(reg.param("Patient", "age").is_none());
    // The package's experimental example definitions do not shadow the real ones.
    let subject = reg
        .param("Condition", "subject")
        .expect("Condition:subject");
    assert_eq!(subject.targets, ["Group", "Patient"]);
    assert!(reg.param("Patient", "part-agree").is_none());
    // Sorted, and `_id` documented from the definition.
    let codes: Vec<String> = reg
        .params_for("CarePlan")
        .into_iter()
        .map(|p| p.code)
        .collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(codes, sorted);
    assert!(codes.contains(&"subject".to_string()) && codes.contains(&"_id".to_string()));
    assert_eq!(
        reg.param("CarePlan", "_id").map(|p| p.url.as_str()),
        Some("http://hl7.org/fhir/SearchParameter/Resource-id")
    );
    assert!(reg.params_for("NoSuchType").is_empty());
    assert!(reg.param("NoSuchType", "x").is_none());
}

#[test]
fn registry_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SearchRegistry>();
    check::<caregate_fhirpath::Expression>();
}

#[test]
fn custom_definitions_and_bad_ones_are_skipped() {
    let defs = [
        serde_json::json!({"resourceType": "SearchParameter", "url": "http://x/sp/a", "code": "nick",
            "base": ["Patient"], "type": "string", "expression": "Patient.name.where(use='nickname').given"}),
        serde_json::json!({"resourceType": "SearchParameter", "url": "http://x/sp/b", "code": "broken",
            "base": ["Patient"], "type": "string", "expression": "Patient.name.("}),
        serde_json::json!({"resourceType": "SearchParameter", "url": "http://x/sp/c", "code": "comp",
            "base": ["Patient"], "type": "composite", "expression": "Patient"}),
        serde_json::json!({"resourceType": "SearchParameter", "url": "http://x/sp/d", "code": "noexpr",
            "base": ["Patient"], "type": "token"}),
        serde_json::json!({"resourceType": "SearchParameter", "url": "http://x/sp/e", "code": "unknownbase",
            "base": ["NotAType"], "type": "token", "expression": "NotAType.x"}),
        serde_json::json!({"type": "token"}),
        serde_json::json!("not an object"),
    ];
    let reg = SearchRegistry::from_definitions(defs.iter());
    assert!(reg.param("Patient", "nick").is_some());
    assert!(reg.param("Patient", "broken").is_none());
    assert!(reg.param("Patient", "comp").is_none());
    assert!(reg.param("Patient", "noexpr").is_none());
    assert!(reg.param("NotAType", "unknownbase").is_none());
    // Built-ins exist without definitions.
    assert!(reg.param("Patient", "_id").is_some());
    let p = serde_json::json!({"resourceType": "Patient", "name": [{"use": "nickname", "given": ["Bob"]}, {"given": ["Robert"]}]});
    assert_eq!(
        values_of(&reg.extract(&p), "Patient:nick"),
        vec![string("Bob")]
    );
}
mod sharing;
