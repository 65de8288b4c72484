//! Consent engine throughput, and what consent filtering adds to a search page.
//!
//! `cargo bench -p caregate-consent --bench consent` (release build; `-- --runs N`).
//!
//! (a) decisions/s: one patient with 5 active Consents of 10 provisions each (actors,
//!     purposes, labels, classes, codes, data periods, data references, nested exceptions),
//!     deciding `access` for a treating clinic over a mix of 100 resources (a fifth of them
//!     labelled R, PSY or SUD/42CFRPart2).
//! (b) filtering cost on a 100-resource search page. What the pipeline does for a page
//!     anyway — parse each stored resource, build the searchset Bundle, serialise it — is
//!     timed without and with what consent enforcement adds per request: assembling the
//!     patient's ConsentSet from the compiled Consents the pipeline caches, specialised for
//!     the caller (actor, purpose, action and period conditions evaluated once), and one
//!     decision per resource. Reported three ways: the added work timed alone as a
//!     share of the unfiltered page (the headline; goal < 10%), the median difference of
//!     paired filtered/unfiltered runs (noisier: a difference of two timings), and the cost
//!     of a cache miss (parse + compile the 5 Consents; once per Consent version). Store
//!     I/O is left out of both sides — the page's own SQLite read and the one indexed
//!     lookup of the patient's Consents — so the share is an upper bound for a real request.
//!
//! Times are the thread's CPU time (`caregate_core::cpu_time`) so other load on the
//! shared machine counts less; the best of the runs is reported.

use std::sync::Arc;

use caregate_consent::{
    Actor, ConsentAction, ConsentEngine, ConsentPolicy, ConsentRequest, ConsentSet, Decision,
    PreparedConsent,
};
use caregate_core::bench::{best, flag, thread_cpu_of};
use serde_json::{json, Value};

// The gateway binary runs on mimalloc; allocation-heavy work (parsing, serialising)
// behaves differently under glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ACT: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const CONF: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// Consent `n` of the patient: a root deny with 10 provisions, some with nested exceptions.
fn consent(n: usize) -> Value {
    let org = |i: usize| {
        json!([{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                                 "reference": {"reference": format!("Organization/org-{n}-{i}")}}])
    };
    let provisions = json!([
        {"type": "permit", "actor": org(0), "purpose": [{"system": REASON, "code": "TREAT"}]},
        {"type": "permit", "actor": org(1), "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]},
        {"type": "deny", "securityLabel": [{"system": CONF, "code": "R"}]},
        {"type": "permit", "actor": [{"reference": {"reference": "Organization/clinic"}}],
         "securityLabel": [{"system": ACT, "code": "PSY"}],
         "provision": [{"type": "deny", "purpose": [{"system": REASON, "code": "HPAYMT"}]}]},
        {"type": "deny", "dataPeriod": {"end": "2019-12-31"}},
        {"type": "deny", "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "86406008"}]}]},
        {"type": "permit", "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}],
         "actor": [{"reference": {"reference": "CareTeam/team"}}]},
        {"type": "deny", "data": [{"meaning": "related", "reference": {"reference": format!("Encounter/sensitive-{n}")}}]},
        {"type": "permit", "class": [{"system": "urn:ietf:rfc:3986", "code": "http://example.org/fhir/StructureDefinition/shared-obs"}],
         "period": {"start": "2024-01-01", "end": "2030-01-01"}},
        {"type": "deny", "actor": org(2), "purpose": [{"system": REASON, "code": "HMARKT"}]}
    ]);
    json!({
        "resourceType": "Consent", "id": format!("consent-{n}"), "status": "active",
        "dateTime": format!("202{n}-01-01"),
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": ACT, "code": "OPTIN"}]},
        "patient": {"reference": "Patient/p"},
        "provision": {"type": "deny", "provision": provisions}
    })
}

/// Resource `i` of the page: Observations and Conditions of about 1.2 KB with narrative,
/// every fifth labelled (R, PSY, or SUD with 42CFRPart2).
fn resource(i: usize) -> Value {
    let labels = match i % 15 {
        0 => json!([{"system": CONF, "code": "R"}]),
        5 => json!([{"system": ACT, "code": "PSY"}, {"system": CONF, "code": "R"}]),
        10 => {
            json!([{"system": ACT, "code": "SUD"}, {"system": ACT, "code": "42CFRPart2"}, {"system": CONF, "code": "R"}])
        }
        _ => json!([]),
    };
    let narrative = format!(
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Entry {i}: {}</p></div>",
        "measured during the visit, reviewed with the patient, follow-up planned. ".repeat(4)
    );
    if i.is_multiple_of(2) {
        json!({
            "resourceType": "Observation", "id": format!("obs-{i}"),
            "meta": {"versionId": "1", "lastUpdated": "2025-03-01T10:00:00Z", "security": labels,
                     "profile": ["http://example.org/fhir/StructureDefinition/shared-obs"]},
            "text": {"status": "generated", "div": narrative},
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]},
            "subject": {"reference": "Patient/p"},
            "encounter": {"reference": format!("Encounter/e{}", i % 7)},
            "effectiveDateTime": format!("20{:02}-03-01T10:00:00Z", 15 + i % 11),
            "performer": [{"reference": "Practitioner/dr"}],
            "valueQuantity": {"value": 120 + i, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
            "referenceRange": [{"low": {"value": 90, "unit": "mmHg"}, "high": {"value": 140, "unit": "mmHg"}}]
        })
    } else {
        json!({
            "resourceType": "Condition", "id": format!("cond-{i}"),
            "meta": {"versionId": "1", "lastUpdated": "2025-03-01T10:00:00Z", "security": labels},
            "text": {"status": "generated", "div": narrative},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2"}]},
            "subject": {"reference": "Patient/p"},
            "encounter": {"reference": format!("Encounter/e{}", i % 7)},
            "onsetDateTime": "2018-05-01",
            "recordedDate": format!("20{:02}-05-02", 15 + i % 11),
            "recorder": {"reference": "Practitioner/dr"}
        })
    }
}

fn clinic() -> Actor {
    Actor {
        client_id: Some("clinic".into()),
        organization: Some("Organization/clinic".into()),
        practitioner: Some("Practitioner/dr".into()),
        care_teams: vec!["CareTeam/team".into()],
        purpose_of_use: Some("TREAT".into()),
    }
}

/// The decision time (parsed once: the pipeline takes the clock once per request).
fn now_ms() -> i64 {
    static NOW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *NOW.get_or_init(|| {
        caregate_core::parse_date_range("2025-06-01T00:00:00Z")
            .map(|r| r.start)
            .unwrap_or_default()
    })
}

fn decide(
    engine: &ConsentEngine,
    actor: &Actor,
    resource: &Value,
    consents: &ConsentSet,
) -> Decision {
    engine.decide(&ConsentRequest {
        actor,
        action: ConsentAction::Access,
        resource,
        consents,
        now_ms: now_ms(),
    })
}

/// The page the pipeline builds: parse each stored resource, wrap it in a searchset Bundle,
/// serialise. With `consent`, the request's ConsentSet is assembled from the compiled
/// Consents the pipeline caches (by content hash) and each resource is decided; returns
/// how many were permitted.
fn page(
    stored: &[Vec<u8>],
    consent: Option<(&ConsentEngine, &Actor, &[Arc<PreparedConsent>])>,
) -> (Vec<u8>, usize) {
    let set = consent
        .map(|(_, actor, prepared)| {
            ConsentSet::from_prepared(prepared.to_vec()).for_request(
                actor,
                ConsentAction::Access,
                now_ms(),
            )
        })
        .unwrap_or_default();
    let mut entries = Vec::with_capacity(stored.len());
    let mut permitted = 0;
    for bytes in stored {
        let Ok(resource) = serde_json::from_slice::<Value>(bytes) else {
            continue;
        };
        if let Some((engine, actor, _)) = consent {
            // Every entry is kept either way, so that both variants serialise the same
            // page and the difference is the filtering work alone (a real filtered page
            // is smaller and cheaper to serialise).
            if decide(engine, actor, &resource, &set).is_permit() {
                permitted += 1;
            }
        }
        let url = format!(
            "https://gw.example/fhir/{}/{}",
            resource["resourceType"].as_str().unwrap_or(""),
            resource["id"].as_str().unwrap_or("")
        );
        entries.push(json!({"fullUrl": url, "resource": resource, "search": {"mode": "match"}}));
    }
    let bundle = json!({
        "resourceType": "Bundle", "id": "b", "type": "searchset",
        "link": [{"relation": "self", "url": "https://gw.example/fhir/Observation?subject=Patient/p&_count=100"}],
        "entry": entries
    });
    (serde_json::to_vec(&bundle).unwrap_or_default(), permitted)
}

fn main() {
    let runs: usize = flag("--runs", 7);
    let engine = ConsentEngine::default();
    let actor = clinic();
    let consents: Vec<Value> = (0..5).map(consent).collect();
    let resources: Vec<Value> = (0..100).map(resource).collect();
    // Specialised for the request, as the pipeline does once per request and patient.
    let set = ConsentSet::new(&consents).for_request(&actor, ConsentAction::Access, now_ms());
    let provisions: usize = consents
        .iter()
        .map(|c| {
            fn count(p: &Value) -> usize {
                p["provision"]
                    .as_array()
                    .map(|a| a.iter().map(|c| 1 + count(c)).sum())
                    .unwrap_or(0)
            }
            count(&c["provision"])
        })
        .sum();
    let permitted = resources
        .iter()
        .filter(|r| decide(&engine, &actor, r, &set).is_permit())
        .count();
    println!(
        "patient: {} Consents, {provisions} nested provisions in all; {permitted} of {} resources permitted",
        consents.len(),
        resources.len()
    );

    // (a) decisions per CPU-second.
    let rounds = 200;
    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(thread_cpu_of(|| {
            for _ in 0..rounds {
                for r in &resources {
                    std::hint::black_box(decide(&engine, &actor, r, &set));
                }
            }
        }));
    }
    let per_decision = best(&times) / (rounds * resources.len()) as f64;
    println!(
        "(a) decisions: {:.0}/s ({:.2} µs each; best of {runs} runs of {} decisions)",
        1.0 / per_decision,
        per_decision * 1e6,
        rounds * resources.len()
    );

    // (b) a 100-resource page with and without consent filtering.
    let stored: Vec<Vec<u8>> = resources
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap_or_default())
        .collect();
    let stored_consents: Vec<Vec<u8>> = consents
        .iter()
        .map(|c| serde_json::to_vec(c).unwrap_or_default())
        .collect();
    let page_bytes = page(&stored, None).0.len();
    let parsed: Vec<Value> = stored
        .iter()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .collect();
    let prepared: Vec<Arc<PreparedConsent>> = consents
        .iter()
        .filter_map(PreparedConsent::prepare)
        .map(Arc::new)
        .collect();
    let pages = 50;
    let (mut plain, mut filtered, mut added, mut cold, mut ratios) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut shown = 0;
    for _ in 0..runs {
        // Interleaved, so that load from others on the machine hits both alike.
        let p = thread_cpu_of(|| {
            for _ in 0..pages {
                std::hint::black_box(page(&stored, None));
            }
        });
        let f = thread_cpu_of(|| {
            for _ in 0..pages {
                let with = Some((&engine, &actor, prepared.as_slice()));
                shown = std::hint::black_box(page(&stored, with)).1;
            }
        });
        // The added work alone: the request's ConsentSet and 100 decisions.
        let a = thread_cpu_of(|| {
            for _ in 0..pages {
                let set = ConsentSet::from_prepared(prepared.clone()).for_request(
                    &actor,
                    ConsentAction::Access,
                    now_ms(),
                );
                for r in &parsed {
                    std::hint::black_box(decide(&engine, &actor, r, &set));
                }
            }
        });
        // A cache miss: the patient's 5 Consents parsed from storage and compiled.
        let c = thread_cpu_of(|| {
            for _ in 0..pages {
                let values: Vec<Value> = stored_consents
                    .iter()
                    .filter_map(|b| serde_json::from_slice(b).ok())
                    .collect();
                std::hint::black_box(ConsentSet::new(&values));
            }
        });
        ratios.push((f - p) / p * 100.0);
        plain.push(p / pages as f64);
        filtered.push(f / pages as f64);
        added.push(a / pages as f64);
        cold.push(c / pages as f64);
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        xs[xs.len() / 2]
    };
    let (plain, filtered, added, cold) = (best(&plain), best(&filtered), best(&added), best(&cold));
    println!(
        "(b) 100-resource page ({} KB): unfiltered {:.0} µs, filtered {:.0} µs (+{:.1}%; {shown} permitted)\n    \
         filtering work alone {:.0} µs = {:.1}% of the unfiltered page (goal < 10%); paired runs: median difference {:.1}%\n    \
         Consent cache miss (parse + compile the patient's 5 Consents, once per change): {:.0} µs",
        page_bytes / 1024,
        plain * 1e6,
        filtered * 1e6,
        (filtered - plain) / plain * 100.0,
        added * 1e6,
        added / plain * 100.0,
        median(ratios),
        cold * 1e6,
    );
}
