//! The built-in R4 model (`src/r4.model`) must be what the R4 core package says.
//! Regenerate with `REGENERATE_R4_MODEL=1 cargo test -p caregate-fhirpath --test model_sync`.

use std::io::{BufRead, BufReader};

use caregate_fhirpath::ModelInfo;
use serde_json::Value;

#[test]
fn r4_model_matches_the_core_package() {
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../profiles/r4-core.ndjson.gz"
    );
    let file = std::fs::File::open(root).expect("profiles/r4-core.ndjson.gz");
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let mut defs = Vec::new();
    for line in reader.lines() {
        let line = line.expect("readable package");
        if !line.contains("\"StructureDefinition\"") {
            continue;
        }
        let v: Value = serde_json::from_str(&line).expect("JSON");
        if v["resourceType"] == "StructureDefinition" {
            defs.push(v);
        }
    }
    let built = ModelInfo::from_structure_definitions(&defs).to_compact();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/r4.model");
    if std::env::var_os("REGENERATE_R4_MODEL").is_some() {
        std::fs::write(path, &built).expect("write r4.model");
    }
    let shipped = ModelInfo::r4().to_compact();
    assert!(
        built == shipped,
        "src/r4.model is stale; regenerate it (see this file's docs)"
    );
}
