//! In-process ingest benchmark: Synthea transaction Bundles through the whole pipeline
//! (validate, index, store with durable commits), compared with merely parsing their JSON.
//!
//!     cargo bench -p caregate-server --bench ingest
//!
//! Runs single-threaded so the numbers are per core; the HTTP layer is not involved.

use std::path::PathBuf;
use std::time::Instant;

use caregate_pipeline::{Caller, ReturnPreference};
use caregate_store::{SqliteOptions, SqliteStore};
use serde_json::Value;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/examples/synthea");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            eprintln!("no Synthea corpus at {}: {e}", dir.display());
            return;
        }
    };
    files.retain(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("index.json"));
    files.sort();
    let texts: Vec<Vec<u8>> = files.iter().filter_map(|f| std::fs::read(f).ok()).collect();
    let resources: usize = texts
        .iter()
        .filter_map(|t| serde_json::from_slice::<Value>(t).ok())
        .map(|b| b["entry"].as_array().map_or(0, Vec::len))
        .sum();
    let rounds = 3;

    let started = Instant::now();
    for _ in 0..rounds {
        for t in &texts {
            let v: Value = serde_json::from_slice(t).expect("bundle parses");
            std::hint::black_box(v);
        }
    }
    let parse = started.elapsed().as_secs_f64();

    let tmp = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&tmp.path().join("bench.sqlite"), SqliteOptions::default())
        .expect("store");
    let pipeline = caregate_server::build_pipeline(store);
    let caller = Caller::default();
    let started = Instant::now();
    for _ in 0..rounds {
        for t in &texts {
            let v: Value = serde_json::from_slice(t).expect("bundle parses");
            pipeline
                .process_bundle(&caller, v, ReturnPreference::Minimal, "http://bench")
                .expect("bundle imports");
        }
    }
    let ingest = started.elapsed().as_secs_f64();
    let n = (resources * rounds) as f64;
    println!(
        "Synthea transaction bundles: {} bundles, {resources} resources, {rounds} rounds",
        texts.len()
    );
    println!("  parse JSON only          {:>10.0} resources/s", n / parse);
    println!(
        "  full ingest (1 thread)   {:>10.0} resources/s   ({:.1}x the cost of parsing)",
        n / ingest,
        ingest / parse
    );
}
