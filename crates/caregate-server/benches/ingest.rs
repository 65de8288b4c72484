//! In-process ingest benchmark: Synthea transaction Bundles through the whole pipeline
//! (validate, index, store with durable commits), compared with merely parsing their JSON.
//!
//!     cargo bench -p caregate-server --bench ingest
//!
//! Runs single-threaded so the numbers are per core; the HTTP layer is not involved.

use std::path::PathBuf;
use std::time::Instant;

use caregate_core::cpu_time;
use caregate_pipeline::{Caller, ReturnPreference};
use caregate_store::{SqliteOptions, SqliteStore};
use serde_json::Value;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As the server does (see `caregate_core::memory`); otherwise huge-page zeroing dominates.
    caregate_core::memory::disable_transparent_huge_pages();
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
    // The same with the parser the server uses for request bodies (maps built at their
    // final size), alternating so both see the same machine.
    let (mut ours, mut theirs) = (0.0, 0.0);
    for _ in 0..rounds {
        for t in &texts {
            let started = Instant::now();
            std::hint::black_box(caregate_core::json::parse_value(t).expect("bundle parses"));
            ours += started.elapsed().as_secs_f64();
            let started = Instant::now();
            std::hint::black_box(serde_json::from_slice::<Value>(t).expect("bundle parses"));
            theirs += started.elapsed().as_secs_f64();
        }
    }

    // Search-index extraction alone (every parameter of each entry's type), in this
    // thread's CPU time, best of five passes.
    let registry = caregate_search::SearchRegistry::from_definitions(
        caregate_validation::Package::r4_core().of_type("SearchParameter"),
    );
    let entries: Vec<Value> = texts
        .iter()
        .filter_map(|t| serde_json::from_slice::<Value>(t).ok())
        .flat_map(|b| b["entry"].as_array().cloned().unwrap_or_default())
        .map(|e| e["resource"].clone())
        .collect();
    let extract = caregate_core::bench::best(
        &(0..5)
            .map(|_| {
                caregate_core::bench::thread_cpu_of(|| {
                    for r in &entries {
                        std::hint::black_box(registry.extract(r));
                    }
                })
            })
            .collect::<Vec<_>>(),
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&tmp.path().join("bench.sqlite"), SqliteOptions::default())
        .expect("store");
    let pipeline = caregate_server::build_pipeline(store);
    let caller = Caller::default();
    let cpu = || {
        (
            cpu_time::thread_cpu_seconds().unwrap_or(f64::NAN),
            cpu_time::process_cpu_seconds().unwrap_or(f64::NAN),
        )
    };
    let (thread_before, process_before) = cpu();
    let started = Instant::now();
    for _ in 0..rounds {
        for t in &texts {
            // Parsed as the server parses request bodies.
            let v = caregate_core::json::parse_value(t).expect("bundle parses");
            pipeline
                .process_bundle(&caller, v, ReturnPreference::Minimal, "http://bench")
                .expect("bundle imports");
        }
    }
    let ingest = started.elapsed().as_secs_f64();
    let (thread_after, process_after) = cpu();
    let request_cpu = thread_after - thread_before;
    let store_cpu = (process_after - process_before) - request_cpu;
    let n = (resources * rounds) as f64;
    println!(
        "Synthea transaction bundles: {} bundles, {resources} resources, {rounds} rounds",
        texts.len()
    );
    println!("  parse JSON only          {:>10.0} resources/s", n / parse);
    println!(
        "  parse, sized maps        {:>10.0} resources/s   (serde_json alternately: {:.0})",
        n / ours,
        n / theirs
    );
    println!(
        "  index extraction only    {:>10.0} resources/s   ({:.1} µs each, thread CPU time)",
        entries.len() as f64 / extract,
        extract / entries.len() as f64 * 1e6
    );
    println!(
        "  full ingest (1 thread)   {:>10.0} resources/s   ({:.1}x the cost of parsing)",
        n / ingest,
        ingest / parse
    );
    println!(
        "  CPU per resource         {:>10.1} µs in the request thread, {:.1} µs in the store's \
         threads (writer, checkpoints)",
        request_cpu / n * 1e6,
        store_cpu / n * 1e6
    );
}
