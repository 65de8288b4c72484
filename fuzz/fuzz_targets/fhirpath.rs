//! The FHIRPath parser and evaluator. The first line of the input is the expression; the
//! rest, when it is JSON, the resource it runs on (else a small Patient).
#![no_main]

use caregate_fhirpath::Expression;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, rest) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(expression) = Expression::compile(source) else {
        return;
    };
    let resource = serde_json::from_str::<Value>(rest).unwrap_or_else(|_| {
        json!({
            "resourceType": "Patient",
            "id": "example",
            "active": true,
            "birthDate": "1974-12-25",
            "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
            "telecom": [{"system": "phone", "value": "(03) 5555 6473", "rank": 2}],
            "extension": [{"url": "http://example.org/x", "valueDecimal": 1.50}]
        })
    });
    let _ = expression.evaluate_checked(&resource);
});
