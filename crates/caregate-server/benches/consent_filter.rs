//! What consent filtering adds to a 100-resource search page, through the whole pipeline.
//!
//!     cargo bench -p caregate-server --bench consent_filter [-- --runs N]
//!
//! One SQLite store, two pipelines over it: consent enforced (the default configuration)
//! and not enforced. The patient has 5 active Consents of 10 provisions each, written so
//! that the treating clinic may see every one of the 100 Observations searched: both pages
//! hold the same 100 entries, and the difference is the filtering work alone (the caller's
//! CareTeam lookup, the patient's Consents fetched and — first time only — compiled, 100
//! decisions). Each page is `Observation?subject=…&_count=100` answered as a Bundle and
//! serialised, as the server does; the HTTP exchange is not included. Goal: filtering under
//! 10% of the unfiltered page.
//!
//! Times are the calling thread's CPU time (the search runs synchronously on it), best of
//! the runs (`--runs`, default 40, of `--pages` pages, default 10), filtered and
//! unfiltered interleaved; the median of the paired runs' differences is shown too.

use std::sync::Arc;

use caregate_consent::Actor;
use caregate_core::bench::{best, flag, thread_cpu_of};
use caregate_pipeline::Caller;
use caregate_server::config::ConsentConfig;
use caregate_store::{SqliteOptions, SqliteStore, Store};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ACT: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const CONF: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// A permit-based Consent whose 10 provisions are each evaluated for every resource but
/// none takes the clinic's access away.
fn consent(n: usize, patient: &str) -> Value {
    let org = |i: usize| {
        json!([{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                                 "reference": {"reference": format!("Organization/org-{n}-{i}")}}])
    };
    json!({
        "resourceType": "Consent", "status": "active", "dateTime": format!("202{n}-01-01"),
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": ACT, "code": "OPTIN"}]},
        "patient": {"reference": patient},
        "provision": {"type": "permit", "provision": [
            {"type": "deny", "actor": org(0)},
            {"type": "deny", "actor": org(1), "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]},
            {"type": "deny", "securityLabel": [{"system": CONF, "code": "V"}]},
            {"type": "permit", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}, "reference": {"reference": "Organization/clinic"}}],
             "securityLabel": [{"system": ACT, "code": "PSY"}],
             "provision": [{"type": "deny", "purpose": [{"system": REASON, "code": "HPAYMT"}]}]},
            {"type": "deny", "dataPeriod": {"end": "2009-12-31"}},
            {"type": "deny", "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "86406008"}]}]},
            {"type": "permit", "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}]},
            {"type": "deny", "data": [{"meaning": "related", "reference": {"reference": format!("Encounter/sensitive-{n}")}}]},
            {"type": "deny", "purpose": [{"system": REASON, "code": "HMARKT"}]},
            {"type": "deny", "actor": org(2), "purpose": [{"system": REASON, "code": "HPAYMT"}]}
        ]}
    })
}

fn observation(i: usize, patient: &str) -> Value {
    json!({
        "resourceType": "Observation", "status": "final",
        "text": {"status": "generated", "div": format!(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Entry {i}: {}</p></div>",
            "measured during the visit, reviewed with the patient, follow-up planned. ".repeat(4))},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": format!("20{:02}-03-01T10:00:00Z", 15 + i % 11),
        "valueQuantity": {"value": 120 + i, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        "referenceRange": [{"low": {"value": 90, "unit": "mmHg"}, "high": {"value": 140, "unit": "mmHg"}}]
    })
}

fn main() {
    let runs: usize = flag("--runs", 40);
    let pages: usize = flag("--pages", 10);
    let tmp = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        SqliteStore::open(&tmp.path().join("bench.sqlite"), SqliteOptions::default())
            .expect("store");
    let enforced = caregate_server::build_pipeline_with(store.clone(), &ConsentConfig::default());
    let open = caregate_server::build_pipeline_with(
        store,
        &ConsentConfig {
            enforce: false,
            ..ConsentConfig::default()
        },
    );
    let local = Caller::default();
    let create = |resource: Value| -> String {
        let rt = resource["resourceType"].as_str().unwrap_or("").to_string();
        let out = enforced
            .create(&local, &rt, resource, None)
            .expect("resource stored");
        out.record.id.clone()
    };
    let pid = create(json!({"resourceType": "Patient", "name": [{"family": "Bench"}]}));
    let patient = format!("Patient/{pid}");
    for n in 0..5 {
        create(consent(n, &patient));
    }
    for i in 0..100 {
        create(observation(i, &patient));
    }
    let clinic = Caller {
        actor: Actor {
            client_id: Some("clinic".into()),
            organization: Some("Organization/clinic".into()),
            purpose_of_use: Some("TREAT".into()),
            ..Actor::default()
        },
        ..Caller::default()
    };
    let params = vec![
        ("subject".to_string(), patient.clone()),
        ("_count".to_string(), "100".to_string()),
    ];
    let page = |pipeline: &caregate_pipeline::Pipeline| -> (usize, usize) {
        let out = pipeline
            .search(
                &clinic,
                Some("Observation"),
                &params,
                true,
                "http://bench/fhir",
            )
            .expect("search");
        let entries = out.bundle["entry"].as_array().map_or(0, Vec::len);
        let bytes = serde_json::to_vec(&out.bundle).unwrap_or_default();
        (entries, bytes.len())
    };
    let (open_entries, bytes) = page(&open);
    let (enforced_entries, _) = page(&enforced);
    println!(
        "page: {open_entries} entries unfiltered, {enforced_entries} with consent enforced, {} KB",
        bytes / 1024
    );
    let (mut plain, mut filtered) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        // Warm both (caches, the compiled Consents) before timing.
        page(&open);
        page(&enforced);
    }
    for _ in 0..runs {
        plain.push(thread_cpu_of(|| {
            for _ in 0..pages {
                std::hint::black_box(page(&open));
            }
        }));
        filtered.push(thread_cpu_of(|| {
            for _ in 0..pages {
                std::hint::black_box(page(&enforced));
            }
        }));
    }
    let mut diffs: Vec<f64> = plain
        .iter()
        .zip(&filtered)
        .map(|(p, f)| (f - p) / p * 100.0)
        .collect();
    diffs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let plain = best(&plain) / pages as f64;
    let filtered = best(&filtered) / pages as f64;
    println!(
        "100-resource search page (best of {runs} runs of {pages}): unfiltered {:.0} µs, consent-filtered {:.0} µs: \
         filtering adds {:.1}% (goal < 10%); median of paired runs {:.1}%",
        plain * 1e6,
        filtered * 1e6,
        (filtered - plain) / plain * 100.0,
        diffs[diffs.len() / 2]
    );
}
