//! The XML ingest path: the depth pre-check, XML → JSON (fhirbolt), shape limits, then the
//! same validation as JSON, and back to XML for responses.
#![no_main]

use caregate_core::{check_content, xml_depth, ContentLimits};
use caregate_validation::StructureModel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ContentLimits::default();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if xml_depth(data) > limits.max_depth {
        return;
    }
    let Ok(resource) = caregate_format::xml_to_json(text) else {
        return;
    };
    if check_content(&resource, &limits).is_err() {
        return;
    }
    let issues = StructureModel::r4_core().validate(&resource);
    if !issues.iter().any(|i| i.severity.is_error()) {
        let _ = caregate_format::json_to_xml(&resource);
    }
});
