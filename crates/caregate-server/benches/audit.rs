//! What auditing costs: the same ingest and searches through the whole pipeline with the
//! audit trail on, and with a store that drops every AuditEvent. (`audit verify` over a
//! million events is `cargo bench -p caregate-store --bench audit_chain`.)
//!
//!     cargo bench -p caregate-server --bench audit
//!
//! Single-threaded and in-process, so the numbers are per core without HTTP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use caregate_pipeline::{Caller, Pipeline, ReturnPreference};
use caregate_store::{
    AuditQuery, AuditRecord, ChainReport, ConformanceRecord, ConformanceReport, HistoryPage,
    HistoryQuery, IncludeSpec, Key, SearchPage, SearchQuery, SqliteOptions, SqliteStore, Store,
    StoreError, VersionRecord, WriteOp,
};
use serde_json::Value;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A store that forgets AuditEvents: the baseline "without auditing".
struct WithoutAudit(Arc<dyn Store>);

impl Store for WithoutAudit {
    fn read(&self, t: &str, id: &str) -> Result<Option<VersionRecord>, StoreError> {
        self.0.read(t, id)
    }
    fn current_versions(&self, keys: &[Key]) -> Result<Vec<(Key, u64)>, StoreError> {
        self.0.current_versions(keys)
    }
    fn vread(&self, t: &str, id: &str, v: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.0.vread(t, id, v)
    }
    fn commit(&self, ops: Vec<WriteOp>, _audit: Vec<AuditRecord>) -> Result<(), StoreError> {
        self.0.commit(ops, Vec::new())
    }
    fn record_audit(&self, _audit: Vec<AuditRecord>) -> Result<(), StoreError> {
        Ok(())
    }
    fn audit_search(&self, q: &AuditQuery) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
        self.0.audit_search(q)
    }
    fn verify_audit_chain(&self) -> Result<ChainReport, StoreError> {
        self.0.verify_audit_chain()
    }
    fn record_conformance(&self, stats: Vec<ConformanceRecord>) -> Result<(), StoreError> {
        self.0.record_conformance(stats)
    }
    fn conformance_report(
        &self,
        client: Option<&str>,
        since: Option<&str>,
    ) -> Result<ConformanceReport, StoreError> {
        self.0.conformance_report(client, since)
    }
    fn search(&self, q: &SearchQuery) -> Result<SearchPage, StoreError> {
        self.0.search(q)
    }
    fn include(&self, m: &[Key], s: &IncludeSpec) -> Result<Vec<VersionRecord>, StoreError> {
        self.0.include(m, s)
    }
    fn history(&self, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.0.history(q)
    }
}

fn synthea() -> Vec<Vec<u8>> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/examples/synthea");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            eprintln!("no Synthea corpus at {}: {e}", dir.display());
            return Vec::new();
        }
    };
    files.retain(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("index.json"));
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

fn pipeline(audited: bool) -> (tempfile::TempDir, Pipeline) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        SqliteStore::open(&tmp.path().join("bench.sqlite"), SqliteOptions::default())
            .expect("store");
    let store = if audited {
        store
    } else {
        Arc::new(WithoutAudit(store))
    };
    (tmp, caregate_server::build_pipeline(store))
}

/// Seconds to import every bundle once.
fn ingest(pipeline: &Pipeline, bundles: &[Vec<u8>]) -> f64 {
    let caller = Caller::default();
    let started = Instant::now();
    for b in bundles {
        let v: Value = serde_json::from_slice(b).expect("bundle parses");
        pipeline
            .process_bundle(&caller, v, ReturnPreference::Minimal, "http://bench")
            .expect("bundle imports");
    }
    started.elapsed().as_secs_f64()
}

/// Seconds for `rounds` of: a page of 50 Patients (50 per-patient AuditEvents) and every
/// patient's Observations (one patient each).
fn searches(pipeline: &Pipeline, patients: &[String], rounds: usize) -> (f64, usize) {
    let caller = Caller::default();
    let mut n = 0;
    let started = Instant::now();
    for _ in 0..rounds {
        let params = vec![("_count".to_string(), "50".to_string())];
        pipeline
            .search(&caller, Some("Patient"), &params, false, "http://bench")
            .expect("search");
        n += 1;
        for p in patients {
            let params = vec![
                ("patient".to_string(), p.clone()),
                ("_count".to_string(), "100".to_string()),
            ];
            pipeline
                .search(&caller, Some("Observation"), &params, false, "http://bench")
                .expect("search");
            n += 1;
        }
    }
    (started.elapsed().as_secs_f64(), n)
}

fn patient_ids(pipeline: &Pipeline) -> Vec<String> {
    let params = vec![
        ("_count".to_string(), "1000".to_string()),
        ("_elements".to_string(), "id".to_string()),
    ];
    let bundle = pipeline
        .search(
            &Caller::default(),
            Some("Patient"),
            &params,
            false,
            "http://bench",
        )
        .expect("patients")
        .bundle;
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.pointer("/resource/id").and_then(Value::as_str))
                .map(|id| format!("Patient/{id}"))
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    let bundles = synthea();
    if bundles.is_empty() {
        return;
    }
    let resources: usize = bundles
        .iter()
        .filter_map(|t| serde_json::from_slice::<Value>(t).ok())
        .map(|b| b["entry"].as_array().map_or(0, Vec::len))
        .sum();

    // Ingest: alternate the two set-ups so drift in the machine hits both alike, and
    // compare the best round of each (the least disturbed by anything else running).
    let ingest_rounds: usize = std::env::var("AUDIT_INGEST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut with, mut without) = (f64::MAX, f64::MAX);
    let mut kept = Vec::new();
    for round in 0..ingest_rounds {
        let (dir_a, audited) = pipeline(true);
        with = with.min(ingest(&audited, &bundles));
        let (dir_b, plain) = pipeline(false);
        without = without.min(ingest(&plain, &bundles));
        if round + 1 == ingest_rounds {
            kept.push((dir_a, audited));
            kept.push((dir_b, plain));
        }
    }
    let total = resources as f64;
    println!(
        "ingest ({} bundles, {resources} resources, best of {ingest_rounds}): audited {:.0} res/s, without audit {:.0} res/s -> auditing costs {:.1}%",
        bundles.len(),
        total / with,
        total / without,
        (with / without - 1.0) * 100.0
    );

    let (_, audited) = &kept[0];
    let (_, plain) = &kept[1];
    // Server-assigned ids differ between the two stores: each gets its own list.
    let patients = patient_ids(audited);
    let plain_patients = patient_ids(plain);
    assert_eq!(patients.len(), plain_patients.len());
    let rounds: usize = std::env::var("AUDIT_SEARCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    if std::env::var_os("AUDIT_PROFILE_SEARCH").is_some() {
        // For attaching a profiler to the audited search loop alone.
        println!("profiling audited searches");
        loop {
            searches(audited, &patients, 1);
        }
    }
    // Warm both (page cache, statement cache) before timing.
    searches(audited, &patients, 1);
    searches(plain, &plain_patients, 1);
    let (t_with, n) = searches(audited, &patients, rounds);
    let (t_without, _) = searches(plain, &plain_patients, rounds);
    println!(
        "search ({n} searches over {} patients): audited {:.0}/s, without audit {:.0}/s -> auditing costs {:.1}%",
        patients.len(),
        n as f64 / t_with,
        n as f64 / t_without,
        (t_with / t_without - 1.0) * 100.0
    );
    drop(kept);
}
