//! Throughput of the structural validator, in resources per second on one core.
//!
//! Run with `cargo bench -p caregate-validation --bench validate`. Input: the peers'
//! mixed corpus (`shared/peers/validators/corpus/mixed.ndjson`, one resource per line) when
//! it exists, else the resources of the Synthea bundles, each validated on its own as it
//! would arrive on a write (plus the whole bundles, as a transaction would).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caregate_validation::StructureModel;
use serde_json::Value;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn load_resources() -> (String, Vec<Value>) {
    let mixed = shared().join("peers/validators/corpus/mixed.ndjson");
    if let Ok(text) = std::fs::read_to_string(&mixed) {
        let resources: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if !resources.is_empty() {
            return (mixed.display().to_string(), resources);
        }
    }
    let dir = shared().join("corpora/examples/synthea");
    let mut resources = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for file in files {
        if file.file_name().is_some_and(|n| n == "index.json") || file.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(bundle) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        else {
            continue;
        };
        if let Some(entries) = bundle.get("entry").and_then(Value::as_array) {
            resources.extend(entries.iter().filter_map(|e| e.get("resource").cloned()));
        }
    }
    (format!("{} (bundle entries)", dir.display()), resources)
}

fn main() {
    let started = Instant::now();
    let model = StructureModel::r4_core();
    println!("model compiled in {:?} (includes unpacking the core package)", started.elapsed());

    let (source, resources) = load_resources();
    if resources.is_empty() {
        println!("no input found under {}; nothing to measure", shared().display());
        return;
    }
    let bytes: usize = resources.iter().map(|r| r.to_string().len()).sum();
    println!(
        "input: {source}: {} resources, {:.1} MB of JSON",
        resources.len(),
        bytes as f64 / 1e6
    );

    let issues: usize = resources.iter().map(|r| model.validate(r).len()).sum();
    println!("issues found: {issues}");

    // Warm up, then run whole passes for at least two seconds.
    for r in &resources {
        black_box(model.validate(black_box(r)));
    }
    let mut passes = 0u32;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        for r in &resources {
            black_box(model.validate(black_box(r)));
        }
        passes += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = resources.len() as f64 * f64::from(passes);
    println!(
        "validate: {:.0} resources/s, {:.1} MB/s, {:.2} µs/resource (single thread)",
        n / elapsed,
        bytes as f64 * f64::from(passes) / elapsed / 1e6,
        elapsed / n * 1e6
    );
}
