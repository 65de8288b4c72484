//! The Bundle transaction/batch planner and the whole write path behind it: entries,
//! urn:uuid rewriting, conditional references and operations, atomic rollback, on a real
//! SQLite store with full validation, labelling and consent.
#![no_main]

use std::sync::OnceLock;

use caregate_core::{check_content, ContentLimits};
use caregate_pipeline::{Caller, Pipeline, ReturnPreference};
use caregate_store::{SqliteOptions, SqliteStore};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn pipeline() -> &'static Pipeline {
    static P: OnceLock<(tempfile::TempDir, Pipeline)> = OnceLock::new();
    &P.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("fuzz.sqlite"), SqliteOptions::default())
            .expect("store");
        let pipeline = caregate_server::build_pipeline(store);
        (dir, pipeline)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if check_content(&bundle, &ContentLimits::default()).is_err() {
        return;
    }
    let _ = pipeline().process_bundle(
        &Caller::default(),
        bundle,
        ReturnPreference::Minimal,
        "http://fuzz.example/fhir",
    );
});
