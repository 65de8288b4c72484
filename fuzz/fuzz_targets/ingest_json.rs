//! The JSON ingest path up to storage: parse, shape limits, structure, then the full
//! validator (core definitions, bindings, FHIRPath invariants, claimed profiles).
#![no_main]

use std::sync::OnceLock;

use caregate_core::json::{parse_within, ParseFailure};
use caregate_core::{check_content, ContentLimits};
use caregate_validation::{Registry, StructureModel, ValidationOptions, Validator};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn validator() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator::with_fhirpath(Registry::standard().clone()))
}

/// The server's parser (`parse_within`: maps built at their final size, limits applied
/// while parsing) must agree with serde_json followed by `check_content`, here under limits
/// small enough for fuzzed inputs to break each of them.
fn check_parser_agrees(data: &[u8]) {
    let small = ContentLimits {
        max_depth: 6,
        max_elements: 120,
        max_string_bytes: 48,
    };
    let reference = serde_json::from_slice::<Value>(data);
    for limits in [small, ContentLimits::default()] {
        match (parse_within(data, &limits), &reference) {
            (Ok(ours), Ok(theirs)) => {
                assert_eq!(&ours, theirs);
                assert_eq!(
                    serde_json::to_vec(&ours).ok(),
                    serde_json::to_vec(theirs).ok()
                );
                assert!(check_content(theirs, &limits).is_ok());
            }
            // Usually `check_content` refuses it too. With repeated member names it may
            // not: `parse_within` counts every value it read, `check_content` only the
            // last of each name. The server then parses in full, checks, and accepts.
            (Err(ParseFailure::OverLimit), Ok(_)) => {}
            // A limit broken before a syntax error: the server parses in full to report it.
            (Err(ParseFailure::OverLimit), Err(_)) | (Err(ParseFailure::Json(_)), Err(_)) => {}
            (ours, theirs) => panic!("parse_within {ours:?} but serde_json {theirs:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_parser_agrees(data);
    let Ok(resource) = parse_within(data, &ContentLimits::default()) else {
        return;
    };
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
