//! `caregate bench`: a load generator for any FHIR R4 server (reqwest + tokio), so users can
//! compare servers on their own hardware with the same workload.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Base URL of the FHIR server, e.g. http://127.0.0.1:8080
    #[arg(long)]
    target: String,
    /// Concurrent clients for the concurrent phases.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Resources created in each create phase (and requests in read/search phases).
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Folder of transaction bundles to import (Synthea); skipped when absent.
    #[arg(long, default_value = "../shared/corpora/examples/synthea")]
    bundles: PathBuf,
    /// Times the folder's bundles are imported, one round after another (each round creates
    /// new resources: entries are POSTs with `urn:uuid` fullUrls). More rounds make the
    /// import long enough to measure steadily.
    #[arg(long, default_value_t = 1, value_name = "N")]
    import_rounds: usize,
    /// Bearer token, when the server requires one.
    #[arg(long)]
    token: Option<String>,
    /// Print the results as JSON too.
    #[arg(long)]
    json: bool,
}

struct Phase {
    name: &'static str,
    ops: usize,
    resources: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.resources as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut l = self.latencies.clone();
        l.sort();
        let idx = ((l.len() as f64 - 1.0) * p).round() as usize;
        l[idx.min(l.len() - 1)]
    }
}

const FAMILIES: [&str; 12] = [
    "Smith", "Johnson", "Garcia", "Nguyen", "Okafor", "Müller", "Kowalski", "Haddad", "Tanaka",
    "Silva", "Ivanova", "Brown",
];

const GENDERS: [&str; 4] = ["female", "male", "other", "unknown"];

/// A Patient of about 2 KB, varied by `n`.
fn patient(n: usize) -> Value {
    let family = format!("{}{}", FAMILIES[n % FAMILIES.len()], n / FAMILIES.len());
    json!({
        "resourceType": "Patient",
        "identifier": [
            {"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical record number"}]},
             "system": "urn:oid:2.16.840.1.113883.19.5.99999.1", "value": format!("MRN-{n:08}")},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": format!("999-{:02}-{:04}", n % 100, n % 10000)}
        ],
        "active": true,
        "name": [
            {"use": "official", "family": family, "given": ["Alex", format!("J{n}")], "prefix": ["Mx."]},
            {"use": "nickname", "given": ["AJ"]}
        ],
        "telecom": [
            {"system": "phone", "value": format!("+1-555-{:04}", n % 10000), "use": "mobile"},
            {"system": "email", "value": format!("patient{n}@example.org"), "use": "home"}
        ],
        "gender": GENDERS[n % 4],
        "birthDate": format!("{}-{:02}-{:02}", 1940 + n % 70, 1 + n % 12, 1 + n % 28),
        "address": [{"use": "home", "line": [format!("{} Main Street", n % 900 + 1), "Apt 4"], "city": "Springfield", "state": "IL", "postalCode": format!("62{:03}", n % 1000), "country": "US"}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "S", "display": "Never Married"}]},
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US", "display": "English (United States)"}]}, "preferred": true}],
        "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N", "display": "Next-of-Kin"}]}],
                     "name": {"family": "Doe", "given": ["Jordan"]}, "telecom": [{"system": "phone", "value": "+1-555-0100"}]}],
        "managingOrganization": {"reference": "Organization/bench-clinic", "display": "Bench Clinic"},
        "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "F"}]
    })
}

fn client(args: &BenchArgs) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("accept", "application/fhir+json".parse()?);
    if let Some(t) = &args.token {
        headers.insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.clients.max(1) * 2)
        .timeout(Duration::from_secs(120))
        .build()?)
}

fn progress(name: &str, done: usize, total: usize) {
    if total >= 20 && done.is_multiple_of((total / 20).max(1)) {
        eprint!("\r  {name}: {done}/{total}   ");
    }
}

/// Runs `total` requests spread over `workers` tasks; `make(i)` builds the i-th request.
async fn run_phase<F>(
    name: &'static str,
    workers: usize,
    total: usize,
    resources_per_op: usize,
    make: F,
) -> Phase
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let make = make.clone();
        let next = next.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                match make(i).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        errors += 1;
                        if errors <= 3 {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            eprintln!(
                                "\n  {name}: HTTP {status}: {}",
                                body.chars().take(300).collect::<String>()
                            );
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("\n  {name}: {e}");
                        }
                    }
                }
                lat.push(t.elapsed());
                progress(name, done.fetch_add(1, Ordering::Relaxed) + 1, total);
            }
            (lat, errors)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "\r  {name}: done in {:.2}s{}",
        elapsed.as_secs_f64(),
        " ".repeat(20)
    );
    Phase {
        name,
        ops: total,
        resources: total * resources_per_op,
        elapsed,
        latencies,
        errors,
    }
}

pub fn run(args: BenchArgs) -> Result<i32> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: BenchArgs) -> Result<i32> {
    let base = args.target.trim_end_matches('/').to_string();
    let http = client(&args)?;
    let meta = http
        .get(format!("{base}/metadata"))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    if !meta.status().is_success() {
        bail!("{base}/metadata answered {}", meta.status());
    }
    eprintln!(
        "caregate bench against {base}: {} clients, {} resources per phase",
        args.clients, args.count
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut phases = Vec::new();

    let body_of = |i: usize, offset: usize, run: &str| {
        let mut p = patient(i + offset);
        p["identifier"][0]["value"] = json!(format!("{run}-{}", i + offset));
        Bytes::from(serde_json::to_vec(&p).unwrap_or_default())
    };

    let seq_count = (args.count / 4).max(1);
    // Bodies are `Bytes`: each request shares its body instead of copying it, so the load
    // generator spends less of the CPU it shares with the server.
    let bodies: Arc<Vec<Bytes>> =
        Arc::new((0..seq_count).map(|i| body_of(i, 0, &run_id)).collect());
    let (h, b, u) = (http.clone(), bodies.clone(), format!("{base}/Patient"));
    phases.push(
        run_phase("create, 1 client", 1, seq_count, 1, move |i| {
            h.post(&u)
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=minimal")
                .body(b[i].clone())
        })
        .await,
    );
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..args.count)
            .map(|i| body_of(i, seq_count, &run_id))
            .collect(),
    );
    let (h, b, u) = (http.clone(), bodies.clone(), format!("{base}/Patient"));
    phases.push(
        run_phase(
            "create, concurrent",
            args.clients,
            args.count,
            1,
            move |i| {
                h.post(&u)
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(b[i].clone())
            },
        )
        .await,
    );

    // Transaction import of Synthea bundles.
    let mut bundle_files: Vec<PathBuf> = std::fs::read_dir(&args.bundles)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    bundle_files
        .retain(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("index.json"));
    bundle_files.sort();
    if !bundle_files.is_empty() {
        let mut bodies = Vec::new();
        let mut resources = 0;
        for f in &bundle_files {
            let text = std::fs::read(f)?;
            let v: Value = serde_json::from_slice(&text)?;
            resources += v["entry"].as_array().map_or(0, Vec::len);
            bodies.push(Bytes::from(text));
        }
        let files = bodies.len();
        let rounds = args.import_rounds.max(1);
        resources *= rounds;
        let n = files * rounds;
        let per = resources / n.max(1);
        let (h, b, u) = (http.clone(), Arc::new(bodies), base.clone());
        let mut phase = run_phase(
            "transaction import",
            args.clients.min(4),
            n,
            per,
            move |i| {
                h.post(&u)
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(b[i % files].clone())
            },
        )
        .await;
        phase.resources = resources;
        phases.push(phase);
    }

    // Ids to read: a page of the Patients just created.
    let page: Value = http
        .get(format!("{base}/Patient?identifier={run_id}-1&_count=1"))
        .send()
        .await?
        .json()
        .await
        .unwrap_or(Value::Null);
    let mut ids: Vec<String> = Vec::new();
    if let Some(id) = page["entry"][0]["resource"]["id"].as_str() {
        ids.push(id.to_string());
    }
    let listing: Value = http
        .get(format!("{base}/Patient?_count=200&_elements=id"))
        .send()
        .await?
        .json()
        .await
        .unwrap_or(Value::Null);
    for e in listing["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if let Some(id) = e["resource"]["id"].as_str() {
            ids.push(id.to_string());
        }
    }
    if ids.is_empty() {
        bail!("could not list any Patient ids to read back");
    }
    let (h, ids, b) = (http.clone(), Arc::new(ids), base.clone());
    phases.push(
        run_phase("read by id", args.clients, args.count * 2, 1, move |i| {
            h.get(format!("{b}/Patient/{}", ids[i % ids.len()]))
        })
        .await,
    );
    let (h, b) = (http.clone(), base.clone());
    phases.push(
        run_phase("search family=", args.clients, args.count, 1, move |i| {
            h.get(format!(
                "{b}/Patient?family={}&_count=10",
                FAMILIES[i % FAMILIES.len()].to_lowercase()
            ))
        })
        .await,
    );

    println!(
        "{:<22} {:>8} {:>10} {:>12} {:>10} {:>10} {:>7}",
        "phase", "requests", "resources", "resources/s", "p50 ms", "p99 ms", "errors"
    );
    for p in &phases {
        println!(
            "{:<22} {:>8} {:>10} {:>12.0} {:>10.2} {:>10.2} {:>7}",
            p.name,
            p.ops,
            p.resources,
            p.rate(),
            p.percentile(0.5).as_secs_f64() * 1000.0,
            p.percentile(0.99).as_secs_f64() * 1000.0,
            p.errors
        );
    }
    if args.json {
        let v: Vec<Value> = phases
            .iter()
            .map(|p| {
                json!({"phase": p.name, "requests": p.ops, "resources": p.resources, "per_second": p.rate(),
                       "p50_ms": p.percentile(0.5).as_secs_f64() * 1000.0, "p99_ms": p.percentile(0.99).as_secs_f64() * 1000.0, "errors": p.errors})
            })
            .collect();
        println!("{}", Value::Array(v));
    }
    let errors: usize = phases.iter().map(|p| p.errors).sum();
    Ok(if errors > 0 { 1 } else { 0 })
}
