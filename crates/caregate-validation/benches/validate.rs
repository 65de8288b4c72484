//! Throughput of the structural validator, in resources per second on one core.
//!
//! Run with `cargo bench -p caregate-validation --bench validate [-- --only TEXT]` (`--only`
//! keeps the runs whose label contains TEXT, e.g. `invariants, peers`, for profiling). Inputs, each measured
//! when present (missing ones are skipped):
//! * the peers' mixed corpus (`shared/peers/validators/corpus/mixed.ndjson`, one resource
//!   per line), the number to compare with the other validators;
//! * the resources of the Synthea bundles, each validated on its own as a single write;
//! * the Synthea bundles whole, as a transaction arrives;
//! * the full [`Validator`] (structure, then the core-definition pass: reference targets,
//!   extensions) on the mixed corpus and the Synthea entries, without and with FHIRPath
//!   invariants.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caregate_validation::{
    FhirPathInvariants, InvariantContext, InvariantEvaluator, InvariantOutcome, Registry,
    StructureModel, ValidationOptions, Validator,
};
use serde_json::Value;

// The allocator the `caregate` binary uses, so start-up and throughput are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cpu_seconds() -> f64 {
    caregate_core::cpu_time::thread_cpu_seconds().unwrap_or(0.0)
}

/// (median, fastest) of the pass times.
fn median_and_best(passes: &mut [f64]) -> (f64, f64) {
    passes.sort_by(f64::total_cmp);
    let median = passes.get(passes.len() / 2).copied().unwrap_or(f64::NAN);
    (median, passes.first().copied().unwrap_or(f64::NAN))
}

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// `--limit N`: only the first N resources of the mixed corpus (N small enough for the
/// trees to stay in cache shows how much of a pass is waiting on memory).
fn limit() -> usize {
    caregate_core::bench::flag("--limit", usize::MAX)
}

fn mixed_ndjson() -> Vec<Value> {
    let path = shared().join("peers/validators/corpus/mixed.ndjson");
    std::fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .take(limit())
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn synthea_bundles() -> Vec<Value> {
    let dir = shared().join("corpora/examples/synthea");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|f| {
            f.extension().is_some_and(|x| x == "json")
                && f.file_name().is_some_and(|n| n != "index.json")
        })
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
        .collect()
}

fn count_resources(v: &Value) -> usize {
    1 + v
        .get("entry")
        .and_then(Value::as_array)
        .map_or(0, |entries| entries.len())
}

/// The bytes-to-`Value` parse alone, the floor every validator's rate is compared with.
fn parse_only(label: &str, lines: &[String]) {
    if !selected(label) {
        return;
    }
    if lines.is_empty() {
        println!("{label}: no input, skipped");
        return;
    }
    let start = Instant::now();
    let mut passes = Vec::new();
    while start.elapsed() < Duration::from_secs(2) {
        let pass = cpu_seconds();
        for l in lines {
            black_box(serde_json::from_str::<Value>(black_box(l)).ok());
        }
        passes.push(cpu_seconds() - pass);
    }
    let (median, best) = median_and_best(&mut passes);
    let n = lines.len() as f64;
    println!(
        "{label}: {} resources -> {:.0} resources/s (best pass {:.0}/s; one thread, CPU time, \
         median of {} passes)",
        lines.len(),
        n / median,
        n / best,
        passes.len()
    );
}

/// Validates `inputs` repeatedly for about two seconds and prints the rates.
fn measure(model: &StructureModel, label: &str, inputs: &[Value]) {
    measure_with(label, inputs, |r| model.validate(r).len());
}

/// `--only TEXT` measures just the runs whose label contains TEXT (for profiling one).
fn selected(label: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--only") {
        Some(i) => args
            .get(i + 1)
            .is_some_and(|only| label.contains(only.as_str())),
        None => true,
    }
}

fn measure_with(label: &str, inputs: &[Value], validate: impl Fn(&Value) -> usize) {
    if !selected(label) {
        return;
    }
    if inputs.is_empty() {
        println!("{label}: no input, skipped");
        return;
    }
    let resources: usize = inputs.iter().map(count_resources).sum();
    let bytes: usize = inputs.iter().map(|r| r.to_string().len()).sum();
    let issues: usize = inputs.iter().map(&validate).sum();
    for r in inputs {
        black_box(validate(black_box(r)));
    }
    // Passes over the whole input for about two seconds, each timed in CPU time of this
    // thread; the median pass is the rate (as the peers report the median of their runs),
    // the fastest is shown beside it.
    let start = Instant::now();
    let mut passes = Vec::new();
    while start.elapsed() < Duration::from_secs(2) {
        let pass = cpu_seconds();
        for r in inputs {
            black_box(validate(black_box(r)));
        }
        passes.push(cpu_seconds() - pass);
    }
    let (median, best) = median_and_best(&mut passes);
    let n = resources as f64;
    println!(
        "{label}: {} inputs, {resources} resources, {:.1} MB, {issues} issues -> \
         {:.0} resources/s (best pass {:.0}/s), {:.0} MB/s, {:.2} µs/resource \
         (one thread, CPU time, median of {} passes)",
        inputs.len(),
        bytes as f64 / 1e6,
        n / median,
        n / best,
        bytes as f64 / median / 1e6,
        median / n * 1e6,
        passes.len()
    );
}

/// Wraps the FHIRPath evaluator and adds up the time each constraint key takes
/// (`--invariant-costs`): which invariants are worth answering natively.
struct CostedInvariants {
    inner: FhirPathInvariants,
    costs: std::sync::Mutex<std::collections::HashMap<String, (u64, f64, f64)>>,
}

impl InvariantEvaluator for CostedInvariants {
    fn evaluate(&self, ctx: &InvariantContext<'_>) -> InvariantOutcome {
        // Wall clock: it is read through the vDSO (tens of ns), unlike the thread CPU clock.
        let start = Instant::now();
        let outcome = self.inner.evaluate(ctx);
        let spent = start.elapsed().as_secs_f64();
        if let Ok(mut costs) = self.costs.lock() {
            let entry = costs.entry(ctx.constraint.key.clone()).or_default();
            entry.0 += 1;
            entry.1 += spent;
            entry.2 = entry.2.max(spent);
        }
        outcome
    }
}

fn invariant_costs(inputs: &[Value]) {
    let registry = Registry::standard().clone();
    let costed = Arc::new(CostedInvariants {
        inner: FhirPathInvariants::new(Some(registry.terminology().clone())),
        costs: Default::default(),
    });
    let validator = Validator::new(registry).with_invariants(costed.clone());
    let opts = ValidationOptions::default();
    for _ in 0..3 {
        for r in inputs {
            black_box(validator.validate(r, &opts));
        }
    }
    let costs = costed.costs.lock().map(|c| c.clone()).unwrap_or_default();
    let mut rows: Vec<_> = costs.into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let total: f64 = rows.iter().map(|r| r.1 .1).sum();
    println!("invariant costs over 3 passes (wall clock, timer overhead included): {total:.3} s");
    for (key, (n, secs, slowest)) in rows.iter().take(25) {
        println!(
            "  {key:<12} {n:>8} evaluations {:>8.1} ms (slowest {:.0} µs)",
            secs * 1e3,
            slowest * 1e6
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--invariant-costs") {
        invariant_costs(&mixed_ndjson());
        return;
    }
    let started = Instant::now();
    let model = StructureModel::r4_core();
    println!(
        "model built in {:?} (unpacking the core package and compiling it)",
        started.elapsed()
    );

    let mixed_lines: Vec<String> =
        std::fs::read_to_string(shared().join("peers/validators/corpus/mixed.ndjson"))
            .map(|t| {
                t.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
    parse_only("peers mixed.ndjson, serde_json parse only", &mixed_lines);
    measure(model, "structure only, peers mixed.ndjson", &mixed_ndjson());
    let bundles = synthea_bundles();
    let entries: Vec<Value> = bundles
        .iter()
        .filter_map(|b| b.get("entry").and_then(Value::as_array))
        .flatten()
        .filter_map(|e| e.get("resource").cloned())
        .collect();
    measure(
        model,
        "structure only, synthea entries one by one",
        &entries,
    );
    measure(model, "structure only, synthea bundles whole", &bundles);

    // The full validator: structure and core bindings, then the core-definition pass
    // (reference targets, extensions, nested resources), no profiles claimed.
    let started = Instant::now();
    let validator = Validator::new(Registry::standard().clone());
    let opts = ValidationOptions::default();
    black_box(validator.validate(&serde_json::json!({"resourceType": "Patient"}), &opts));
    println!("validator ready in {:?}", started.elapsed());
    measure_with("full validator, peers mixed.ndjson", &mixed_ndjson(), |r| {
        validator.validate(r, &opts).len()
    });
    measure_with(
        "full validator, synthea entries one by one",
        &entries,
        |r| validator.validate(r, &opts).len(),
    );

    // The same with FHIRPath invariants (every core resource and datatype constraint but
    // ele-1/ext-1, see `caregate_validation::invariants`).
    let started = Instant::now();
    let with_invariants = Validator::with_fhirpath(Registry::standard().clone());
    black_box(with_invariants.validate(&serde_json::json!({"resourceType": "Patient"}), &opts));
    println!("validator with invariants ready in {:?}", started.elapsed());
    measure_with(
        "full validator + invariants, peers mixed.ndjson",
        &mixed_ndjson(),
        |r| with_invariants.validate(r, &opts).len(),
    );
    measure_with(
        "full validator + invariants, synthea entries one by one",
        &entries,
        |r| with_invariants.validate(r, &opts).len(),
    );
}
