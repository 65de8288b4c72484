//! How long `caregate audit verify` takes over a large audit trail.
//!
//!     cargo bench -p caregate-store --bench audit_chain            # 1,000,000 events
//!     cargo bench -p caregate-store --bench audit_chain -- 100000  # fewer
//!
//! Appends N AuditEvents of a realistic size (~1 KB of JSON, like a BALP read event) in
//! batches, then walks and re-hashes the whole chain.

use std::time::Instant;

use caregate_store::{AuditRecord, SqliteOptions, SqliteStore, Store};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("audit.sqlite"), SqliteOptions::default())
        .expect("store");
    let filler = "x".repeat(700);
    let started = Instant::now();
    let batch = 10_000;
    let mut written = 0;
    while written < n {
        let records: Vec<AuditRecord> = (written..(written + batch).min(n))
            .map(|i| AuditRecord {
                id: format!("event-{i}"),
                recorded_ms: 1_700_000_000_000 + i as i64,
                patient: Some(format!("Patient/{}", i % 5000)),
                client: Some("bench".into()),
                event_type: "rest".into(),
                subtype: "read".into(),
                outcome: "0".into(),
                purpose: Some("TREAT".into()),
                entities: vec![format!("Patient/{}/_history/1", i % 5000)],
                content: format!(
                    "{{\"resourceType\":\"AuditEvent\",\"id\":\"event-{i}\",\"recorded\":\"2024-01-01T00:00:00.000Z\",\"note\":\"{filler}\"}}"
                )
                .into_bytes(),
            })
            .collect();
        written += records.len();
        store.commit(Vec::new(), records).expect("append");
    }
    let appended = started.elapsed();
    let started = Instant::now();
    let report = store.verify_audit_chain().expect("verify");
    let verified = started.elapsed();
    assert!(report.first_break.is_none(), "{report:?}");
    assert_eq!(report.events, n as u64);
    println!(
        "{n} audit events: appended in {:.1} s ({:.0} events/s)",
        appended.as_secs_f64(),
        n as f64 / appended.as_secs_f64()
    );
    println!(
        "verify: {:.2} s ({:.0} events/s)",
        verified.as_secs_f64(),
        n as f64 / verified.as_secs_f64()
    );
}
