//! HL7's official FHIRPath R4 test suite (`../shared/corpora/fhirpath/tests.json`, 935 tests).
//!
//! Every test runs; the pass rate must not fall below `FLOOR`, every failure must be listed
//! in `tests/known-failures.txt` with its reason, and a listed test that starts passing fails
//! this test too, so the list stays honest. Tests marked `mode: strict` run with
//! [`Context::strict`], as the suite's notes prescribe.

use std::collections::{BTreeMap, HashMap};

use caregate_fhirpath::{Context, Expression, Item, TemporalKind};
use serde_json::Value;

/// Lowest acceptable pass rate (passed / total).
const FLOOR: f64 = 0.996;

fn corpus(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpora/fhirpath")
        .join(rel)
}

/// The suite's text form of a result item: `@` before dates and times, `v 'unit'` for
/// quantities; and its type name in the suite's spelling.
fn render(item: &Item<'_>) -> (String, String) {
    match item {
        Item::Node { value, fhir_type } => {
            let ty = fhir_type.unwrap_or("").to_string();
            let text = match value {
                Value::String(s) => match ty.as_str() {
                    "date" | "dateTime" | "instant" => format!("@{s}"),
                    "time" => format!("@T{s}"),
                    _ => s.clone(),
                },
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => other.to_string(),
            };
            (ty, text)
        }
        Item::Str(s) => ("string".into(), s.clone()),
        Item::Bool(b) => ("boolean".into(), b.to_string()),
        Item::Integer(i) => ("integer".into(), i.to_string()),
        Item::Decimal(d) => ("decimal".into(), d.to_string()),
        Item::Temporal(t) => match t.kind {
            TemporalKind::Date => ("date".into(), format!("@{t}")),
            TemporalKind::DateTime => ("dateTime".into(), format!("@{t}")),
            TemporalKind::Time => ("time".into(), format!("@T{t}")),
        },
        Item::Quantity(q) => ("Quantity".into(), q.to_string()),
        Item::TypeInfo { namespace, name } => ("TypeInfo".into(), format!("{namespace}.{name}")),
    }
}

/// Runs one test; `Err` says why it failed.
fn run(test: &Value, inputs: &HashMap<String, Value>) -> Result<(), String> {
    let expr = test["expression"].as_str().unwrap_or_default();
    let expect_error = test["expect_error"].as_bool().unwrap_or(false);
    let null = Value::Null;
    let input = match test["input_file"].as_str() {
        Some(f) => inputs.get(f).ok_or_else(|| format!("missing input {f}"))?,
        None => &null,
    };
    let compiled = match Expression::compile(expr) {
        Ok(c) => c,
        Err(_) if expect_error => return Ok(()),
        Err(e) => return Err(format!("compile error: {e}")),
    };
    let ctx = Context::new(input).strict(test["mode"] == "strict");
    let result = match compiled.evaluate_in(&ctx) {
        Ok(r) if expect_error => return Err(format!("expected an error, got {} item(s)", r.len())),
        Ok(r) => r,
        Err(_) if expect_error => return Ok(()),
        Err(e) => return Err(format!("evaluation error: {e}")),
    };
    let mut got: Vec<(String, String)> = if test["predicate"] == true {
        let truth = match result.as_slice() {
            [] => false,
            [Item::Bool(b)] => *b,
            _ => true,
        };
        vec![("boolean".into(), truth.to_string())]
    } else {
        result.iter().map(render).collect()
    };
    let mut want: Vec<(Option<String>, String)> = test["expected"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    (
                        o["type"].as_str().map(str::to_string),
                        o["value"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if test["ordered"] == false {
        got.sort_by(|a, b| a.1.cmp(&b.1));
        want.sort_by(|a, b| a.1.cmp(&b.1));
    }
    let same = got.len() == want.len()
        && got.iter().zip(&want).all(|((gt, gv), (wt, wv))| {
            gv == wv && wt.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(gt))
        });
    if same {
        Ok(())
    } else {
        Err(format!("got {got:?}, want {want:?}"))
    }
}

#[test]
fn hl7_fhirpath_r4_suite() {
    let text = std::fs::read_to_string(corpus("tests.json")).expect("fhirpath tests.json");
    let suite: Value = serde_json::from_str(&text).expect("tests.json is JSON");
    let tests = suite["tests"].as_array().expect("tests array");
    let mut inputs = HashMap::new();
    for t in tests {
        if let Some(f) = t["input_file"].as_str() {
            if !inputs.contains_key(f) {
                let body = std::fs::read_to_string(corpus(f)).expect("input file");
                inputs.insert(
                    f.to_string(),
                    serde_json::from_str::<Value>(&body).expect("input JSON"),
                );
            }
        }
    }
    let known_text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/known-failures.txt"
    ))
    .expect("tests/known-failures.txt");
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    for line in known_text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once(" | ").expect("`name | reason` lines");
        assert!(!reason.trim().is_empty(), "{name}: a reason is required");
        known.insert(name.trim().to_string(), reason.trim().to_string());
    }

    let mut seen: HashMap<String, usize> = HashMap::new();
    let (mut passed, mut unexpected, mut fixed) = (0usize, Vec::new(), Vec::new());
    for t in tests {
        let base = t["name"].as_str().unwrap_or_default().to_string();
        let n = seen.entry(base.clone()).or_insert(0);
        *n += 1;
        let name = if *n > 1 { format!("{base}#{n}") } else { base };
        let outcome = std::panic::catch_unwind(|| run(t, &inputs))
            .unwrap_or_else(|_| Err("panicked".to_string()));
        match (outcome, known.contains_key(&name)) {
            (Ok(()), false) => passed += 1,
            (Ok(()), true) => {
                passed += 1;
                fixed.push(name);
            }
            (Err(_), true) => {}
            (Err(why), false) => unexpected.push(format!(
                "{name}: {} => {why}",
                t["expression"].as_str().unwrap_or_default()
            )),
        }
    }
    let total = tests.len();
    let rate = passed as f64 / total as f64;
    eprintln!(
        "FHIRPath R4 suite: {passed}/{total} passed ({:.1}%)",
        rate * 100.0
    );
    assert!(
        unexpected.is_empty(),
        "{} unlisted failure(s):\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "listed as known failures but passing now (remove them): {fixed:?}"
    );
    assert!(rate >= FLOOR, "pass rate {rate:.3} fell below {FLOOR}");
}
