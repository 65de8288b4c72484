//! The shared care-plan view at the size issue 6 names: one person with 8 sources (8 Patients
//! from 8 organisations linked by a trusted insurer id), each with 25 activities plus goals,
//! conditions, a care team and a plan. In process, through the pipeline (consent enforced,
//! every read audited), single-threaded:
//!
//!     cargo bench -p caregate-server --bench careplan
//!
//! Measures `$care-plan` latency (p50/p99) served from the view cache and built afresh, the
//! cost of rendering the Bundle as JSON, the same over loopback HTTP against the real server
//! (full body and the ETag poll), the rebuild after one ingested resource, and ingest with
//! the view bookkeeping on versus off. Views are built
//! on read; what ingest maintains is the cache's invalidation (generation counters bumped
//! for the patients a committed resource references), so "view maintenance" is that.

use std::time::{Duration, Instant};

use caregate_careplan::{Committed, ViewCache};
use caregate_consent::Actor;
use caregate_pipeline::{Caller, Pipeline};
use caregate_store::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SOURCES: usize = 8;
const ACTIVITIES: usize = 25;
const INSURER: &str = "urn:insurer:member";
const SCT: &str = "http://snomed.info/sct";

fn caller(org: usize) -> Caller {
    Caller {
        actor: Actor {
            client_id: Some(format!("ehr-{org}")),
            organization: Some(format!("Organization/org{org}")),
            purpose_of_use: Some("TREAT".into()),
            ..Actor::default()
        },
        ..Caller::default()
    }
}

fn pipeline(dir: &std::path::Path) -> Pipeline {
    let store =
        SqliteStore::open(&dir.join("bench.sqlite"), SqliteOptions::default()).expect("store");
    caregate_server::build_pipeline(store).with_trusted_identifier_systems(vec![INSURER.into()])
}

fn coded(code: &str, display: &str) -> Value {
    json!({"coding": [{"system": SCT, "code": code, "display": display}], "text": display})
}

/// The resources of source `src` for its Patient `patient` (`Patient/{id}`): 25 activities
/// (12 with codes every source shares, so they merge 8-fold), 2 goals, 2 conditions, a
/// care team and a plan.
fn source_resources(src: usize, patient: &str, salt: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for n in 0..ACTIVITIES {
        let code = if n < 12 {
            format!("shared-{n}")
        } else {
            format!("own-{src}-{n}-{salt}")
        };
        let r = match n % 5 {
            0..=2 => json!({
                "resourceType": "ServiceRequest", "status": "active", "intent": "order",
                "code": coded(&code, "Activity"),
                "subject": {"reference": patient},
                "occurrenceDateTime": "2027-01-01"
            }),
            3 => json!({
                "resourceType": "Task", "status": "requested", "intent": "order",
                "code": coded(&code, "Task"),
                "for": {"reference": patient},
                "executionPeriod": {"end": "2027-02-01"}
            }),
            _ => json!({
                "resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code}]},
                "subject": {"reference": patient},
                "requester": {"reference": format!("Practitioner/prescriber-{src}")},
                "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": [{"doseQuantity": {"value": 50, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}]}]
            }),
        };
        out.push(r);
    }
    for g in 0..2 {
        out.push(json!({
            "resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"coding": [{"system": "http://loinc.org", "code": format!("goal-{g}")}], "text": format!("Goal {g}")},
            "subject": {"reference": patient}
        }));
    }
    for c in 0..2 {
        out.push(json!({
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": coded(&format!("condition-{c}-{src}"), "Condition"),
            "subject": {"reference": patient}
        }));
    }
    out.push(json!({
        "resourceType": "CareTeam", "status": "active",
        "subject": {"reference": patient},
        "participant": [{"role": [{"text": format!("Clinician of source {src}")}],
                         "member": {"display": format!("Clinician {src}")}}]
    }));
    out.push(json!({
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": patient}, "title": format!("Plan of source {src}")
    }));
    out
}

/// Creates the person: 8 Patients and their resources. Returns the Patient ids.
fn load(p: &Pipeline) -> Vec<String> {
    let mut ids = Vec::new();
    for src in 0..SOURCES {
        let c = caller(src);
        let patient = source_patient(src);
        let id = p
            .create(&c, "Patient", patient, None)
            .expect("patient")
            .record
            .id;
        for r in source_resources(src, &format!("Patient/{id}"), 0) {
            let rtype = r["resourceType"].as_str().unwrap_or_default().to_string();
            p.create(&c, &rtype, r, None).expect("resource");
        }
        ids.push(id);
    }
    ids
}

/// The same person over loopback HTTP (the real server, development mode, 2 workers):
/// `GET /Patient/{id}/$care-plan` with the body read, and the `If-None-Match` poll (304).
fn http_section(requests: usize) -> Duration {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let mut config = caregate_server::ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data: dir.path().join("data"),
            workers: Some(2),
            ..caregate_server::ServerConfig::default()
        };
        config.linking.trusted_systems = vec![INSURER.into()];
        let running = caregate_server::start(&config).expect("server starts");
        let handle = running.handle.clone();
        tokio::spawn(running.server);
        let base = format!("http://{}", running.addr);
        let http = reqwest::Client::new();
        let post = |rtype: String, body: Value| {
            let (http, url) = (http.clone(), format!("{base}/{rtype}"));
            async move {
                let r = http
                    .post(url)
                    .header("content-type", "application/fhir+json")
                    .json(&body)
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
                r.json::<Value>().await.expect("json")["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        let mut ids = Vec::new();
        for src in 0..SOURCES {
            let id = post("Patient".into(), source_patient(src)).await;
            for r in source_resources(src, &format!("Patient/{id}"), 0) {
                post(
                    r["resourceType"].as_str().unwrap_or_default().to_string(),
                    r,
                )
                .await;
            }
            ids.push(id);
        }
        let get = |id: &str, etag: Option<&str>| {
            let mut r = http.get(format!("{base}/Patient/{id}/$care-plan"));
            if let Some(e) = etag {
                r = r.header("if-none-match", e);
            }
            r.send()
        };
        let mut etags = Vec::new();
        for id in &ids {
            let r = get(id, None).await.expect("get");
            etags.push(r.headers()["etag"].to_str().unwrap_or_default().to_string());
            r.bytes().await.expect("body");
        }
        let mut full = Vec::with_capacity(requests);
        let mut polls = Vec::with_capacity(requests);
        for i in 0..requests {
            let id = &ids[i % SOURCES];
            let started = Instant::now();
            let r = get(id, None).await.expect("get");
            assert_eq!(r.status(), 200);
            std::hint::black_box(r.bytes().await.expect("body"));
            full.push(started.elapsed());
            let started = Instant::now();
            let r = get(id, Some(&etags[i % SOURCES])).await.expect("poll");
            assert_eq!(r.status(), 304);
            polls.push(started.elapsed());
        }
        let (_, p99) = report("HTTP GET $care-plan (cached, 300 KiB body)", full);
        report("HTTP poll with If-None-Match (304)", polls);
        handle.stop(true).await;
        p99
    })
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "  {label:<44} p50 {:>8.3} ms   p99 {:>8.3} ms   ({} requests)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples.len()
    );
    (p50, p99)
}

/// The same person as one source system records them: its own MRN, the shared insurer id.
fn source_patient(src: usize) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [
            {"system": format!("urn:mrn:source-{src}"), "value": format!("MRN-{src}")},
            {"system": INSURER, "value": "M-100200"}
        ],
        "name": [{"family": "Rivera", "given": ["Alex"]}],
        "gender": "other", "birthDate": "1990-06-01"
    })
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = pipeline(tmp.path());
    let ids = load(&p);
    let reader = caller(0);
    let view = p.care_plan(&reader, &ids[3], None).expect("view");
    let entries = view.bundle["entry"].as_array().map_or(0, Vec::len);
    let json_bytes = serde_json::to_vec(&*view.bundle).expect("json").len();
    println!(
        "$care-plan of one person: {SOURCES} sources x {ACTIVITIES} activities (+2 goals, 2 conditions, care team, plan each)"
    );
    println!(
        "  view: {entries} entries, {} KiB of JSON",
        json_bytes / 1024
    );
    let requests = 400;

    // Served from the cache: any of the 8 Patient ids, each warmed once.
    for id in &ids {
        p.care_plan(&reader, id, None).expect("warm");
    }
    let mut cached = Vec::with_capacity(requests);
    for i in 0..requests {
        let started = Instant::now();
        let v = p.care_plan(&reader, &ids[i % SOURCES], None).expect("view");
        cached.push(started.elapsed());
        std::hint::black_box(v);
    }
    let (_, cached_p99) = report("cached view (unchanged person)", cached);

    // What the HTTP layer adds: rendering the Bundle as compact JSON.
    let mut render = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        std::hint::black_box(serde_json::to_vec(&*view.bundle).expect("json"));
        render.push(started.elapsed());
    }
    report("  + rendering the Bundle as JSON", render);

    // Built afresh every time (cache off): gather 8 x 10 searches, consent, merge, flags.
    p.set_view_cache(false);
    let mut built = Vec::with_capacity(requests);
    for i in 0..requests {
        let started = Instant::now();
        let v = p.care_plan(&reader, &ids[i % SOURCES], None).expect("view");
        built.push(started.elapsed());
        std::hint::black_box(v);
    }
    report("built afresh (cache off)", built);
    p.set_view_cache(true);

    let http_p99 = http_section(requests);

    // One source updates one activity, then the view is read: one rebuild, then cached.
    let rounds = 50;
    let mut after_change = Vec::with_capacity(rounds);
    let mut next = Vec::with_capacity(rounds);
    let c = caller(5);
    for i in 0..rounds {
        let r = json!({
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "code": coded(&format!("new-{i}"), "New activity"),
            "subject": {"reference": format!("Patient/{}", ids[5])}
        });
        p.create(&c, "ServiceRequest", r, None).expect("create");
        let started = Instant::now();
        p.care_plan(&reader, &ids[0], None).expect("view");
        after_change.push(started.elapsed());
        let started = Instant::now();
        p.care_plan(&reader, &ids[0], None).expect("view");
        next.push(started.elapsed());
    }
    report("first read after one ingested resource", after_change);
    report("second read after it", next);

    // Ingest with the view bookkeeping on and off: two fresh stores, resources alternating
    // between them one by one, so that disk and machine noise fall on both alike.
    let on_dir = tempfile::tempdir().expect("tempdir");
    let off_dir = tempfile::tempdir().expect("tempdir");
    let on = pipeline(on_dir.path());
    let off = pipeline(off_dir.path());
    off.set_view_cache(false);
    let (on_ids, off_ids) = (load(&on), load(&off));
    let (mut s_on, mut s_off) = (Vec::new(), Vec::new());
    let mut n = 0;
    for block in 0..6 {
        for src in 0..SOURCES {
            let c = caller(src);
            let on_rs = source_resources(src, &format!("Patient/{}", on_ids[src]), block + 1);
            let off_rs = source_resources(src, &format!("Patient/{}", off_ids[src]), block + 1);
            for (r_on, r_off) in on_rs.into_iter().zip(off_rs) {
                let rtype = r_on["resourceType"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                // Alternate which goes first, so neither always follows the other's fsync.
                let order: [(&Pipeline, Value, bool); 2] = if n % 2 == 0 {
                    [(&on, r_on, true), (&off, r_off, false)]
                } else {
                    [(&off, r_off, false), (&on, r_on, true)]
                };
                for (pl, r, is_on) in order {
                    let started = Instant::now();
                    pl.create(&c, &rtype, r, None).expect("ingest");
                    if is_on {
                        s_on.push(started.elapsed());
                    } else {
                        s_off.push(started.elapsed());
                    }
                }
                n += 1;
            }
        }
    }
    let t_on: Duration = s_on.iter().sum();
    let t_off: Duration = s_off.iter().sum();
    let per = |t: Duration| t.as_secs_f64() * 1e6 / n as f64;
    s_on.sort();
    s_off.sort();
    let (m_on, m_off) = (percentile(&s_on, 0.5), percentile(&s_off, 0.5));
    println!("ingest of {n} resources, one at a time, durable commits (1 thread):");
    println!(
        "  view bookkeeping on   mean {:>8.1} us   median {:>8.1} us",
        per(t_on),
        m_on.as_secs_f64() * 1e6
    );
    println!(
        "  view bookkeeping off  mean {:>8.1} us   median {:>8.1} us",
        per(t_off),
        m_off.as_secs_f64() * 1e6
    );
    println!(
        "  difference            mean {:>+8.1} %    median {:>+8.1} %   (fsync noise; the bookkeeping alone is below)",
        (t_on.as_secs_f64() / t_off.as_secs_f64() - 1.0) * 100.0,
        (m_on.as_secs_f64() / m_off.as_secs_f64() - 1.0) * 100.0
    );

    // The bookkeeping in isolation: what after_commit does per resource.
    let cache: ViewCache<u8> = ViewCache::new(Duration::from_secs(30), 16);
    let sample = source_resources(1, "Patient/abc", 0);
    let iterations = 200_000;
    let started = Instant::now();
    for i in 0..iterations {
        let r = &sample[i % sample.len()];
        let committed = [Committed {
            resource_type: r["resourceType"].as_str().unwrap_or_default(),
            id: "x",
            version: 1,
            resource: Some(r),
            references: caregate_core::json::reference_values(r),
        }];
        cache.invalidate(&committed);
    }
    let per_resource = started.elapsed().as_secs_f64() * 1e9 / iterations as f64;
    println!(
        "  invalidation alone    {:>8.0} ns/resource   ({:.3} % of the median ingest)",
        per_resource,
        per_resource / (m_off.as_secs_f64() * 1e9) * 100.0
    );
    let verdict = |p99: Duration| {
        if p99 < Duration::from_millis(10) {
            "met"
        } else {
            "MISSED"
        }
    };
    println!(
        "goal p99 < 10 ms for an unchanged person: in process {}, over HTTP {}",
        verdict(cached_p99),
        verdict(http_p99)
    );
}
