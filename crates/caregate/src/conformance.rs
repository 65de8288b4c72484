//! `caregate conformance run`: runs the cases in `conformance-tests/cases` against any FHIR
//! R4 server and writes a TestReport resource, an HTML report and JUnit XML.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Base URL of the FHIR server under test.
    #[arg(long)]
    target: String,
    /// Folder of case files.
    #[arg(long, default_value = "conformance-tests/cases")]
    suite: PathBuf,
    /// Folder for TestReport.json, report.html and junit.xml.
    #[arg(long, default_value = "conformance-report")]
    out: PathBuf,
    /// Bearer token for steps that name no client, when the server requires one.
    #[arg(long)]
    token: Option<String>,
    /// Named clients for steps with `"client": "NAME"`: NAME=TOKEN (repeatable).
    #[arg(long = "client", value_parser = parse_client)]
    clients: Vec<(String, String)>,
}

fn parse_client(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .ok_or_else(|| format!("'{s}' is not NAME=TOKEN"))
}

/// The outcome of one step.
struct StepResult {
    description: String,
    passed: bool,
    message: String,
    /// The exchange, kept for failed steps' reports.
    exchange: Option<String>,
}

struct CaseResult {
    id: String,
    name: String,
    spec: String,
    steps: Vec<StepResult>,
    elapsed: Duration,
}

impl CaseResult {
    fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.passed)
    }
}

fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    out
}

fn substitute_json(v: &Value, vars: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => Value::String(substitute(s, vars)),
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute_json(x, vars)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), substitute_json(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Numbers compare by value (a server may write `1` where the case says `1`), the rest exactly.
fn same(actual: &Value, expected: &Value) -> bool {
    match (actual.as_f64(), expected.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => actual == expected,
    }
}

async fn run_step(
    http: &reqwest::Client,
    base: &str,
    step: &Value,
    vars: &mut HashMap<String, String>,
    clients: &HashMap<String, String>,
) -> StepResult {
    let method = step.get("method").and_then(Value::as_str).unwrap_or("GET");
    let path = substitute(step.get("path").and_then(Value::as_str).unwrap_or(""), vars);
    let url = if path.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{path}")
    };
    let description = format!(
        "{method} {}",
        if path.is_empty() { "[base]" } else { &path }
    );
    let fail = |message: String| StepResult {
        description: description.clone(),
        passed: false,
        message,
        exchange: None,
    };
    let Ok(m) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return fail(format!("unknown method {method}"));
    };
    let sets_accept = step
        .get("headers")
        .and_then(Value::as_object)
        .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("accept")));
    let mut request = http.request(m, &url);
    if !sets_accept {
        request = request.header("Accept", "application/fhir+json");
    }
    if let Some(name) = step.get("client").and_then(Value::as_str) {
        match clients.get(name) {
            Some(token) => request = request.bearer_auth(token),
            None => {
                return fail(format!(
                    "no token for client '{name}' (pass --client {name}=TOKEN)"
                ))
            }
        }
    }
    let request_text = format!(
        "{method} {url}\n{}",
        step.get("body")
            .map(|b| substitute_json(b, vars).to_string())
            .unwrap_or_default()
    );
    if let Some(headers) = step.get("headers").and_then(Value::as_object) {
        for (k, v) in headers {
            if let Some(v) = v.as_str() {
                request = request.header(k.as_str(), substitute(v, vars));
            }
        }
    }
    if let Some(body) = step.get("body") {
        let body = substitute_json(body, vars);
        request = request
            .header("Content-Type", "application/fhir+json")
            .body(serde_json::to_vec(&body).unwrap_or_default());
    } else if let Some(raw) = step.get("raw").and_then(Value::as_str) {
        request = request
            .header("Content-Type", "application/fhir+json")
            .body(substitute(raw, vars));
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return fail(format!("request failed: {e}")),
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let expect = step.get("expect").cloned().unwrap_or(Value::Null);
    let mut problems = Vec::new();
    let allowed: Vec<u64> = match expect.get("status") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
        Some(v) => v.as_u64().into_iter().collect(),
        None => Vec::new(),
    };
    if !allowed.is_empty() && !allowed.contains(&u64::from(status)) {
        problems.push(format!("status {status}, expected {allowed:?}"));
    }
    for h in expect
        .get("headers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if let Some(h) = h.as_str() {
            if !headers.contains_key(h) {
                problems.push(format!("header {h} missing"));
            }
        }
    }
    if let Some(ct) = expect.get("contentType").and_then(Value::as_str) {
        let actual = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !actual.starts_with(ct) {
            problems.push(format!("Content-Type '{actual}', expected {ct}"));
        }
    }
    if let Some(needle) = expect.get("bodyContains").and_then(Value::as_str) {
        if !text.contains(&substitute(needle, vars)) {
            problems.push(format!("body does not contain {needle}"));
        }
    }
    for (pointer, expected) in expect
        .get("json")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let expected = substitute_json(expected, vars);
        match json.pointer(pointer) {
            Some(actual) if same(actual, &expected) => {}
            Some(actual) => problems.push(format!("{pointer} is {actual}, expected {expected}")),
            None => problems.push(format!("{pointer} is missing, expected {expected}")),
        }
    }
    for p in expect
        .get("present")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if let Some(p) = p.as_str() {
            if json.pointer(p).is_none() {
                problems.push(format!("{p} is missing"));
            }
        }
    }
    for expr in expect
        .get("fhirpath")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(expr) = expr.as_str() else { continue };
        let expr = substitute(expr, vars);
        match caregate_fhirpath::Expression::compile(&expr) {
            Ok(compiled) => {
                if compiled.evaluate_bool(&json) != Some(true) {
                    problems.push(format!("FHIRPath '{expr}' is not true"));
                }
            }
            Err(e) => problems.push(format!("FHIRPath '{expr}' does not compile: {e}")),
        }
    }
    for (name, pointer) in step
        .get("capture")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        // `header:NAME` captures a response header (an ETag for a later If-None-Match).
        if let Some(header) = pointer.as_str().and_then(|p| p.strip_prefix("header:")) {
            match headers.get(header).and_then(|v| v.to_str().ok()) {
                Some(v) => {
                    vars.insert(name.clone(), v.to_string());
                }
                None => problems.push(format!("cannot capture {name}: header {header} missing")),
            }
            continue;
        }
        match pointer.as_str().and_then(|p| json.pointer(p)) {
            Some(Value::String(s)) => {
                vars.insert(name.clone(), s.clone());
            }
            Some(other) => {
                vars.insert(name.clone(), other.to_string());
            }
            None => problems.push(format!("cannot capture {name}: {pointer} missing")),
        }
    }
    if problems.is_empty() {
        StepResult {
            description,
            passed: true,
            message: format!("HTTP {status}"),
            exchange: None,
        }
    } else {
        if status >= 400 {
            if let Some(d) = json.pointer("/issue/0/diagnostics").and_then(Value::as_str) {
                problems.push(format!("server said: {d}"));
            }
        }
        let mut r = fail(problems.join("; "));
        let shown: String = text.chars().take(2000).collect();
        r.exchange = Some(format!("{request_text}\n\n=> HTTP {status}\n{shown}"));
        r
    }
}

fn load_cases(dir: &Path) -> Result<Vec<Value>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        cases.push(v);
    }
    if cases.is_empty() {
        bail!("no cases in {}", dir.display());
    }
    Ok(cases)
}

pub fn run(args: RunArgs) -> Result<i32> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> Result<i32> {
    let base = args.target.trim_end_matches('/').to_string();
    let cases = load_cases(&args.suite)?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = &args.token {
        headers.insert("authorization", format!("Bearer {t}").parse()?);
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()?;
    let clients: HashMap<String, String> = args.clients.iter().cloned().collect();
    let run_id: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(12)
        .collect();
    let started = chrono::Utc::now();
    let mut results = Vec::new();
    for case in &cases {
        let t = Instant::now();
        eprint!(
            "  running {} ...\r",
            case.get("id").and_then(Value::as_str).unwrap_or("case")
        );
        let mut vars = HashMap::from([("run".to_string(), run_id.clone())]);
        let mut steps = Vec::new();
        for step in case
            .get("steps")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let r = run_step(&http, &base, step, &mut vars, &clients).await;
            let stop = !r.passed;
            steps.push(r);
            if stop {
                break;
            }
        }
        let result = CaseResult {
            id: case
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("case")
                .to_string(),
            name: case
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            spec: case
                .get("spec")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            steps,
            elapsed: t.elapsed(),
        };
        println!(
            "{} {} — {}",
            if result.passed() { "PASS" } else { "FAIL" },
            result.id,
            result.name
        );
        for s in result.steps.iter().filter(|s| !s.passed) {
            println!("     {}: {}", s.description, s.message);
        }
        results.push(result);
    }
    std::fs::create_dir_all(&args.out)?;
    let report = test_report(&base, &results, &started.to_rfc3339());
    std::fs::write(
        args.out.join("TestReport.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("report.html"), html(&base, &results))?;
    std::fs::write(args.out.join("junit.xml"), junit(&results))?;
    let failed = results.iter().filter(|r| !r.passed()).count();
    println!("{} passed, {failed} failed", results.len() - failed);
    println!("reports in {}", args.out.display());
    Ok(if failed > 0 { 1 } else { 0 })
}

fn test_report(base: &str, results: &[CaseResult], issued: &str) -> Value {
    let all_pass = results.iter().all(CaseResult::passed);
    let tests: Vec<Value> = results
        .iter()
        .map(|r| {
            let actions: Vec<Value> = r
                .steps
                .iter()
                .map(|s| json!({"operation": {"result": if s.passed { "pass" } else { "fail" }, "message": format!("{}: {}", s.description, s.message)}}))
                .collect();
            json!({"name": r.id, "description": r.name, "action": actions})
        })
        .collect();
    json!({
        "resourceType": "TestReport",
        "status": "completed",
        "testScript": {"display": "caregate conformance suite"},
        "result": if all_pass { "pass" } else { "fail" },
        "score": (results.iter().filter(|r| r.passed()).count() as f64) * 100.0 / (results.len().max(1) as f64),
        "tester": "caregate conformance run",
        "issued": issued,
        "participant": [{"type": "server", "uri": base}],
        "test": tests
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(base: &str, results: &[CaseResult]) -> String {
    let passed = results.iter().filter(|r| r.passed()).count();
    let mut rows = String::new();
    for r in results {
        let detail: Vec<String> = r
            .steps
            .iter()
            .map(|s| {
                let mut line = format!(
                    "{} {} — {}",
                    if s.passed { "✔" } else { "✘" },
                    escape(&s.description),
                    escape(&s.message)
                );
                if let Some(x) = &s.exchange {
                    line.push_str(&format!("<pre>{}</pre>", escape(x)));
                }
                line
            })
            .collect();
        rows.push_str(&format!(
            "<tr class=\"{}\"><td>{}</td><td>{}<br><small><a href=\"{}\">{}</a></small></td><td>{}</td><td>{:.0} ms</td></tr>\n",
            if r.passed() { "pass" } else { "fail" },
            if r.passed() { "PASS" } else { "FAIL" },
            escape(&r.name),
            escape(&r.spec),
            escape(&r.spec),
            detail.join("<br>"),
            r.elapsed.as_secs_f64() * 1000.0
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Conformance report</title><style>\
         body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:4px 8px;vertical-align:top;text-align:left}}\
         tr.fail td:first-child{{background:#f8d0d0}}tr.pass td:first-child{{background:#d0f0d0}}</style></head><body>\
         <h1>FHIR conformance report</h1><p>Server: {}<br>{passed} of {} cases passed.</p>\
         <table><thead><tr><th>Result</th><th>Case</th><th>Steps</th><th>Time</th></tr></thead><tbody>\n{rows}</tbody></table></body></html>\n",
        escape(base),
        results.len()
    )
}

fn junit(results: &[CaseResult]) -> String {
    let failures = results.iter().filter(|r| !r.passed()).count();
    let total: f64 = results.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"caregate conformance\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n",
        results.len()
    );
    for r in results {
        out.push_str(&format!(
            "  <testcase classname=\"conformance\" name=\"{}\" time=\"{:.3}\">",
            escape(&r.id),
            r.elapsed.as_secs_f64()
        ));
        if let Some(f) = r.steps.iter().find(|s| !s.passed) {
            out.push_str(&format!(
                "<failure message=\"{}\">{}</failure>",
                escape(&f.message),
                escape(&f.description)
            ));
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("</testsuite>\n");
    out
}
