//! The JSON ingest path up to storage: parse, shape limits, structure, then the full
//! validator (core definitions, bindings, FHIRPath invariants, claimed profiles).
#![no_main]

use std::sync::OnceLock;

use caregate_core::{check_content, ContentLimits};
use caregate_validation::{Registry, StructureModel, ValidationOptions, Validator};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator::with_fhirpath(Registry::standard().clone()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(resource) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if check_content(&resource, &ContentLimits::default()).is_err() {
        return;
    }
    let structure = StructureModel::r4_core().validate(&resource);
    if structure.iter().any(|i| i.severity.is_error()) {
        return;
    }
    let options = ValidationOptions {
        meta_profiles: true,
        ..ValidationOptions::default()
    };
    let _ = validator().validate(&resource, &options);
});
