//! FHIRPath throughput, in evaluations per CPU-second.
//!
//! `cargo bench -p caregate-fhirpath --bench fhirpath` (release build; pass `-- --runs N`).
//!
//! (a) invariants: every error-severity `constraint.expression` of the R4 core resource
//!     StructureDefinitions (ele-1 skipped), as `<path>.all(<expr>)` for element-level ones,
//!     evaluated over each resource of `../shared/peers/validators/corpus/mixed.ndjson` of
//!     the right type — what fhirpath.js's `bench-fhirpath.mjs invariants` does.
//! (b) the expression set of `bench-fhirpath.mjs exprs` over the same file, compiled once,
//!     full result collections built (as fhirpath.js returns arrays).
//!
//! CPU time is the thread's own (`caregate_core::cpu_time`), so other load on the
//! machine does not count; wall time is reported too.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::time::Instant;

use caregate_fhirpath::{Context, Expression};
use serde_json::Value;

fn cpu_ns() -> Option<u64> {
    caregate_core::cpu_time::thread_cpu_seconds().map(|s| (s * 1e9) as u64)
}

struct Timer {
    wall: Instant,
    cpu: Option<u64>,
}

impl Timer {
    fn start() -> Timer {
        Timer {
            wall: Instant::now(),
            cpu: cpu_ns(),
        }
    }

    /// (wall seconds, CPU seconds — wall when the kernel does not say).
    fn stop(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = match (self.cpu, cpu_ns()) {
            (Some(a), Some(b)) => (b.saturating_sub(a)) as f64 / 1e9,
            _ => wall,
        };
        (wall, cpu)
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    xs[xs.len() / 2]
}

fn best(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn repo(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn load_corpus() -> Vec<Value> {
    // FHIRPATH_BENCH_CORPUS points at another NDJSON file (e.g. the invalid corpus).
    let path = std::env::var_os("FHIRPATH_BENCH_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo("../../../shared/peers/validators/corpus/mixed.ndjson"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `(key, path, expression)` of every error invariant of the R4 core resources.
fn load_invariants() -> HashMap<String, Vec<(String, Expression)>> {
    let file = std::fs::File::open(repo("../../profiles/r4-core.ndjson.gz")).expect("r4 package");
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let mut by_type: HashMap<String, Vec<(String, Expression)>> = HashMap::new();
    let (mut ok, mut bad) = (0, 0);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if !line.contains("\"StructureDefinition\"") {
            continue;
        }
        let Ok(sd) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if sd["resourceType"] != "StructureDefinition"
            || sd["kind"] != "resource"
            || sd["derivation"] == "constraint"
        {
            continue;
        }
        let Some(ty) = sd["type"].as_str() else {
            continue;
        };
        let list = by_type.entry(ty.to_string()).or_default();
        for el in sd["snapshot"]["element"].as_array().into_iter().flatten() {
            let path = el["path"].as_str().unwrap_or_default();
            let path = path.strip_suffix("[x]").unwrap_or(path);
            for c in el["constraint"].as_array().into_iter().flatten() {
                let (Some(key), Some(expr)) = (c["key"].as_str(), c["expression"].as_str()) else {
                    continue;
                };
                if c["severity"] != "error" || key == "ele-1" {
                    continue;
                }
                let full = if path == ty {
                    expr.to_string()
                } else {
                    format!("{path}.all({expr})")
                };
                match Expression::compile(&full) {
                    Ok(e) => {
                        ok += 1;
                        list.push((key.to_string(), e));
                    }
                    Err(e) => {
                        bad += 1;
                        eprintln!("  does not compile: {key}: {e}");
                    }
                }
            }
        }
    }
    eprintln!("invariants: {ok} compiled, {bad} rejected");
    by_type
}

const EXPRS: &[(&str, &[&str])] = &[
    ("*", &["id", "meta.lastUpdated", "text.status = 'generated'"]),
    (
        "Patient",
        &[
            "Patient.name.where(use='official').given.first()",
            "Patient.identifier.where(system='urn:oid:2.16.840.1.113883.19.5').value",
            "contact.all(name.exists() or telecom.exists() or address.exists() or organization.exists())",
            "Patient.birthDate < @2000-01-01",
            "Patient.telecom.where(system='email').value",
        ],
    ),
    (
        "Observation",
        &[
            "Observation.value.ofType(Quantity).value > 100",
            "Observation.code.coding.where(system='http://loinc.org').code",
            "dataAbsentReason.empty() or value.empty()",
            "Observation.component.code.coding.code",
            "Observation.subject.reference",
        ],
    ),
    (
        "Condition",
        &[
            "abatement.empty() or clinicalStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/condition-clinical' and (code='resolved' or code='remission' or code='inactive')).exists()",
            "Condition.code.coding.code",
            "Condition.onset.ofType(dateTime)",
        ],
    ),
    (
        "CarePlan",
        &[
            "CarePlan.subject.reference.startsWith('Patient/')",
            "activity.all(detail.empty() or reference.empty())",
            "CarePlan.category.coding.code",
            "CarePlan.activity.detail.status",
        ],
    ),
    ("CareTeam", &["CareTeam.participant.member.reference", "CareTeam.participant.role.coding.code"]),
    (
        "Goal",
        &[
            "target.all((detail.exists() and measure.exists()) or detail.exists().not())",
            "Goal.description.coding.code",
        ],
    ),
    ("Consent", &["policy.exists() or policyRule.exists()", "Consent.patient.reference"]),
    (
        "Encounter",
        &[
            "Encounter.period.start",
            "Encounter.class.code = 'AMB'",
            "Encounter.participant.individual.reference",
        ],
    ),
    (
        "MedicationRequest",
        &[
            "MedicationRequest.medication.ofType(CodeableConcept).coding.code",
            "MedicationRequest.dosageInstruction.timing.repeat.frequency",
        ],
    ),
];

fn main() {
    let runs: usize = caregate_core::bench::flag("--runs", 5);
    // Each run passes over the corpus this many times, so a run lasts long enough to time.
    let passes: usize = caregate_core::bench::flag("--passes", 5);
    let resources = load_corpus();
    eprintln!("corpus: {} resources", resources.len());

    // (b) the fhirpath.js expression set.
    let compiled: HashMap<&str, Vec<Expression>> = EXPRS
        .iter()
        .map(|(t, list)| {
            let exprs = list
                .iter()
                .map(|e| Expression::compile(e).unwrap_or_else(|err| panic!("{e}: {err}")))
                .collect();
            (*t, exprs)
        })
        .collect();
    let none = Vec::new();
    let (mut cpus, mut walls, mut evals, mut items) = (Vec::new(), Vec::new(), 0u64, 0usize);
    for _ in 0..runs {
        evals = 0;
        items = 0;
        let t = Timer::start();
        for r in resources.iter().cycle().take(resources.len() * passes) {
            let rt = r["resourceType"].as_str().unwrap_or_default();
            let own = compiled.get(rt).unwrap_or(&none);
            for e in compiled["*"].iter().chain(own) {
                let ctx = Context::new(r);
                items += e.evaluate_in(&ctx).map_or(0, |v| v.len());
                evals += 1;
            }
        }
        let (w, c) = t.stop();
        walls.push(w);
        cpus.push(c);
    }
    let b = best(&cpus);
    let (w, c) = (median(walls), median(cpus));
    println!(
        "{{\"bench\":\"exprs\",\"resources\":{},\"passes\":{passes},\"evals\":{evals},\"result_items\":{items},\"median_wall_ms\":{:.1},\"median_cpu_ms\":{:.1},\"cpu_evals_per_s\":{:.0},\"best_cpu_evals_per_s\":{:.0},\"cpu_resources_per_s\":{:.0}}}",
        resources.len(),
        w * 1000.0,
        c * 1000.0,
        evals as f64 / c,
        evals as f64 / b,
        (resources.len() * passes) as f64 / c
    );

    // (a) invariants.
    let inv = load_invariants();
    let (mut cpus, mut walls, mut evals, mut failed, mut errors) =
        (Vec::new(), Vec::new(), 0u64, 0u64, 0u64);
    let mut failing: HashMap<String, u64> = HashMap::new();
    for run in 0..runs {
        evals = 0;
        failed = 0;
        errors = 0;
        let t = Timer::start();
        for r in resources.iter().cycle().take(resources.len() * passes) {
            let rt = r["resourceType"].as_str().unwrap_or_default();
            for (key, e) in inv.get(rt).into_iter().flatten() {
                evals += 1;
                match e.evaluate_bool_in(&Context::new(r)) {
                    Ok(Some(true)) | Ok(None) => {}
                    Ok(Some(false)) => {
                        failed += 1;
                        if run == 0 {
                            *failing.entry(key.clone()).or_default() += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        if run == 0 {
                            *failing.entry(format!("{key} (error)")).or_default() += 1;
                        }
                    }
                }
            }
        }
        let (w, c) = t.stop();
        walls.push(w);
        cpus.push(c);
    }
    let b = best(&cpus);
    let (w, c) = (median(walls), median(cpus));
    let mut top: Vec<_> = failing.into_iter().collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    top.truncate(8);
    println!(
        "{{\"bench\":\"invariants\",\"resources\":{},\"passes\":{passes},\"evals\":{evals},\"false\":{failed},\"errors\":{errors},\"median_wall_ms\":{:.1},\"median_cpu_ms\":{:.1},\"cpu_evals_per_s\":{:.0},\"best_cpu_evals_per_s\":{:.0},\"cpu_resources_per_s\":{:.0},\"top_failing\":{:?}}}",
        resources.len(),
        w * 1000.0,
        c * 1000.0,
        evals as f64 / c,
        evals as f64 / b,
        (resources.len() * passes) as f64 / c,
        top
    );
}
