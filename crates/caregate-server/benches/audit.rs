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

/// A pipeline over a fresh store (audited or not) and the raw SQLite store underneath, for
/// flushing the writer's queue.
fn pipeline(audited: bool) -> (tempfile::TempDir, Pipeline, Arc<dyn Store>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let raw: Arc<dyn Store> =
        SqliteStore::open(&tmp.path().join("bench.sqlite"), SqliteOptions::default())
            .expect("store");
    let store = if audited {
        raw.clone()
    } else {
        Arc::new(WithoutAudit(raw.clone()))
    };
    (tmp, caregate_server::build_pipeline(store), raw)
}

/// Waits until the writer has committed everything queued before (read AuditEvents and
/// conformance statistics are queued without waiting), so their cost is counted.
fn flush(raw: &dyn Store) {
    let mut marker = caregate_audit::AuditEntry::new(caregate_audit::Subtype::Operation);
    marker.query = Some("bench flush".into());
    raw.commit(Vec::new(), vec![Pipeline::audit_record(&marker)])
        .expect("flush");
}

/// CPU seconds this process has used, every thread included (the writer's work is part of
/// what auditing costs, even when another core does it).
fn cpu_seconds() -> f64 {
    caregate_core::cpu_time::process_cpu_seconds().unwrap_or(0.0)
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

    // Alternate the two set-ups so drift in the machine hits both alike. Wall time is the
    // best round of each; CPU time is summed over all rounds and includes the writer
    // thread, so it is what auditing takes from the machine's capacity.
    let ingest_rounds: usize = std::env::var("AUDIT_INGEST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut with, mut without) = (f64::MAX, f64::MAX);
    let (mut cpu_with, mut cpu_without) = (0.0, 0.0);
    let mut kept = Vec::new();
    for round in 0..ingest_rounds {
        for audited_round in [true, false] {
            let (dir, p, raw) = pipeline(audited_round);
            let cpu = cpu_seconds();
            let wall = ingest(&p, &bundles);
            flush(raw.as_ref());
            let cpu = cpu_seconds() - cpu;
            if audited_round {
                with = with.min(wall);
                cpu_with += cpu;
            } else {
                without = without.min(wall);
                cpu_without += cpu;
            }
            if round + 1 == ingest_rounds {
                kept.push((dir, p, raw));
            }
        }
    }
    let total = resources as f64;
    println!(
        "ingest ({} bundles, {resources} resources, {ingest_rounds} rounds): audited {:.0} res/s, without audit {:.0} res/s (best round); CPU {:.2} s vs {:.2} s -> auditing costs {:.1}% CPU",
        bundles.len(),
        total / with,
        total / without,
        cpu_with,
        cpu_without,
        (cpu_with / cpu_without - 1.0) * 100.0
    );

    let (_, audited, audited_raw) = &kept[0];
    let (_, plain, plain_raw) = &kept[1];
    // Server-assigned ids differ between the two stores: each gets its own list.
    let patients = patient_ids(audited);
    let plain_patients = patient_ids(plain);
    assert_eq!(patients.len(), plain_patients.len());
    let rounds: usize = std::env::var("AUDIT_SEARCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    if std::env::var_os("AUDIT_PROFILE_SEARCH").is_some() {
        // For attaching a profiler to the audited search loop alone.
        println!("profiling audited searches");
        loop {
            searches(audited, &patients, 1);
        }
    }
    // Warm both (page cache, statement cache) before measuring.
    searches(audited, &patients, 1);
    searches(plain, &plain_patients, 1);
    flush(audited_raw.as_ref());
    flush(plain_raw.as_ref());
    let (mut t_with, mut t_without, mut n) = (f64::MAX, f64::MAX, 0);
    let (mut cpu_with, mut cpu_without) = (0.0, 0.0);
    for _ in 0..rounds {
        let cpu = cpu_seconds();
        let (t, count) = searches(audited, &patients, 1);
        flush(audited_raw.as_ref());
        cpu_with += cpu_seconds() - cpu;
        t_with = t_with.min(t);
        n = count;
        let cpu = cpu_seconds();
        let (t, _) = searches(plain, &plain_patients, 1);
        flush(plain_raw.as_ref());
        cpu_without += cpu_seconds() - cpu;
        t_without = t_without.min(t);
    }
    println!(
        "search ({n} searches over {} patients x {rounds} rounds, a 50-patient page each round): audited {:.0}/s, without audit {:.0}/s (best round); CPU {:.2} s vs {:.2} s -> auditing costs {:.1}% CPU",
        patients.len(),
        n as f64 / t_with,
        n as f64 / t_without,
        cpu_with,
        cpu_without,
        (cpu_with / cpu_without - 1.0) * 100.0
    );
    drop(kept);
}
