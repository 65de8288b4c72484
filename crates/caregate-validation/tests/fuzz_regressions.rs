//! Inputs the fuzz targets (`fuzz/`) once crashed on, kept so they never do again: each
//! file in `tests/fuzz_regressions/` goes through the same steps as the `ingest_json`
//! target (structure, then the full validator with invariants and claimed profiles) and
//! must come back with an answer, not a panic.

use std::path::Path;

use caregate_validation::{Registry, StructureModel, ValidationOptions, Validator};
use serde_json::Value;

#[test]
fn fuzz_crashes_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let validator = Validator::with_fhirpath(Registry::standard().clone());
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions folder") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        let Ok(resource) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        let structure = StructureModel::r4_core().validate(&resource);
        if !structure.iter().any(|i| i.severity.is_error()) {
            let options = ValidationOptions {
                meta_profiles: true,
                ..ValidationOptions::default()
            };
            let _ = validator.validate(&resource, &options);
        }
        checked += 1;
    }
    assert!(checked >= 1, "no regression inputs in {}", dir.display());
}
