use std::io::{BufRead, BufReader};

use serde_json::{json, Value};

use super::*;

fn eval<'a>(expr: &str, resource: &'a Value) -> Vec<Item<'a>> {
    Expression::compile(expr)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
        .evaluate(resource)
}

fn render(i: Item<'_>) -> String {
    match i {
        Item::Node {
            value: Value::String(s),
            ..
        } => s.clone(),
        Item::Node { value, .. } => value.to_string(),
        Item::Str(s) => s,
        Item::Bool(b) => b.to_string(),
        Item::Integer(n) => n.to_string(),
        Item::Decimal(d) => d.to_string(),
        Item::Temporal(t) => t.to_string(),
        Item::Quantity(q) => q.to_string(),
        Item::TypeInfo { namespace, name } => format!("{namespace}.{name}"),
    }
}

fn strings(expr: &str, resource: &Value) -> Vec<String> {
    eval(expr, resource).into_iter().map(render).collect()
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "name": [
            {"family": "Chalmers", "given": ["Peter", "James"]},
            {"family": "Windsor", "given": ["Jim"]}
        ],
        "telecom": [
            {"system": "phone", "value": "555-1"},
            {"system": "email", "value": "p@example.org"},
            {"system": "phone", "value": "555-2"}
        ],
        "deceasedBoolean": false,
        "extension": [
            {"url": "http://x/ext-a", "valueString": "A"},
            {"url": "http://x/ext-b", "valueCode": "B"}
        ],
        "generalPractitioner": [
            {"reference": "Practitioner/dr1"},
            {"reference": "https://other.example/fhir/Organization/o1/_history/3"}
        ]
    })
}

#[test]
fn paths_flatten_arrays_and_check_root_type() {
    let p = patient();
    assert_eq!(strings("Patient.name.given", &p), ["Peter", "James", "Jim"]);
    assert_eq!(strings("name.family", &p), ["Chalmers", "Windsor"]);
    assert!(eval("Observation.name", &p).is_empty());
    assert_eq!(strings("Resource.id", &p), ["p1"]);
    assert_eq!(strings("DomainResource.id", &p), ["p1"]);
    assert_eq!(strings("%resource.id", &p), ["p1"]);
    assert!(eval("Patient.nothing.here", &p).is_empty());
}

#[test]
fn choice_elements_and_type_casts() {
    let obs = json!({"resourceType": "Observation", "valueQuantity": {"value": 1.5, "unit": "mg"},
        "component": [{"valueString": "x"}, {"valueCodeableConcept": {"text": "t"}}]});
    assert_eq!(eval("Observation.value", &obs).len(), 1);
    assert_eq!(eval("(Observation.value as Quantity)", &obs).len(), 1);
    assert!(eval("(Observation.value as string)", &obs).is_empty());
    assert_eq!(strings("Observation.value.as(Quantity).unit", &obs), ["mg"]);
    assert_eq!(
        strings("Observation.component.value.ofType(string)", &obs),
        ["x"]
    );
    assert_eq!(
        strings(
            "(Observation.component.value as CodeableConcept).text",
            &obs
        ),
        ["t"]
    );
    assert_eq!(strings("Observation.value is Quantity", &obs), ["true"]);
    assert_eq!(strings("Observation.value is Period", &obs), ["false"]);
    // Age is a Quantity specialisation.
    let cond = json!({"resourceType": "Condition", "onsetAge": {"value": 40}});
    assert_eq!(eval("Condition.onset.as(Quantity)", &cond).len(), 1);
    assert_eq!(
        eval("Condition.onset.as(Age) | Condition.onset.as(Range)", &cond).len(),
        1
    );
    assert!(eval("Condition.onset.as(dateTime)", &cond).is_empty());
}

#[test]
fn where_with_comparison_and_resolve() {
    let p = patient();
    assert_eq!(
        strings("Patient.telecom.where(system='phone').value", &p),
        ["555-1", "555-2"]
    );
    assert_eq!(
        strings("Patient.telecom.where(system!='phone').value", &p),
        ["p@example.org"]
    );
    assert_eq!(
        strings(
            "Patient.generalPractitioner.where(resolve() is Practitioner).reference",
            &p
        ),
        ["Practitioner/dr1"]
    );
    assert_eq!(
        eval(
            "Patient.generalPractitioner.where(resolve() is Organization)",
            &p
        )
        .len(),
        1
    );
    assert!(eval(
        "Patient.generalPractitioner.where(resolve() is Patient)",
        &p
    )
    .is_empty());
    let typed = json!({"resourceType": "Encounter", "subject": {"type": "Group", "identifier": {"value": "x"}}});
    assert_eq!(
        eval("Encounter.subject.where(resolve() is Group)", &typed).len(),
        1
    );
}

#[test]
fn functions() {
    let p = patient();
    assert_eq!(strings("Patient.name.exists()", &p), ["true"]);
    assert_eq!(strings("Patient.photo.exists()", &p), ["false"]);
    assert_eq!(strings("Patient.photo.empty()", &p), ["true"]);
    assert_eq!(strings("Patient.name.first().family", &p), ["Chalmers"]);
    assert_eq!(strings("Patient.name.last().family", &p), ["Windsor"]);
    assert_eq!(strings("Patient.name[1].given", &p), ["Jim"]);
    assert_eq!(strings("Patient.name.given[2]", &p), ["Jim"]);
    assert!(eval("Patient.name[5]", &p).is_empty());
    assert_eq!(strings("Patient.active.not()", &p), ["false"]);
    assert_eq!(strings("Patient.name.count()", &p), ["2"]);
    assert_eq!(
        strings("Patient.name.exists(family = 'Windsor')", &p),
        ["true"]
    );
    assert_eq!(
        strings("Patient.extension('http://x/ext-b').value", &p),
        ["B"]
    );
    assert_eq!(
        strings("Patient.extension.where(url='http://x/ext-a').value", &p),
        ["A"]
    );
    assert_eq!(
        strings("Patient.hasExtension('http://x/ext-a')", &p),
        ["true"]
    );
    assert_eq!(
        strings("Patient.hasExtension('http://x/none')", &p),
        ["false"]
    );
    assert_eq!(
        strings("Patient.name.select(given.first())", &p),
        ["Peter", "Jim"]
    );
    assert_eq!(
        strings("Patient.name.given.where($this.startsWith('J'))", &p),
        ["James", "Jim"]
    );
}

#[test]
fn unions_deduplicate_and_boolean_logic() {
    let p = patient();
    assert_eq!(
        strings("Patient.name.family | Patient.name.family", &p),
        ["Chalmers", "Windsor"]
    );
    assert_eq!(
        strings("(Patient.name | Patient.telecom).count()", &p),
        ["5"]
    );
    assert_eq!(
        strings(
            "Patient.deceased.exists() and Patient.deceased != false",
            &p
        ),
        ["false"]
    );
    let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
    assert_eq!(
        strings(
            "Patient.deceased.exists() and Patient.deceased != false",
            &dead
        ),
        ["true"]
    );
    assert_eq!(strings("true or {}", &p), ["true"]);
    assert!(eval("false or {}", &p).is_empty());
    assert_eq!(strings("{} and false", &p), ["false"]);
    assert_eq!(strings("1.5 > 1 and 'b' > 'a' and 2 + 3 = 5", &p), ["true"]);
    assert_eq!(strings("'x' in ('x' | 'y')", &p), ["true"]);
    assert_eq!(strings("'a\\'b'", &p), ["a'b"]);
    assert_eq!(strings("Patient.active = true", &p), ["true"]);
}

#[test]
fn bundle_entry_indexer() {
    let b = json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Composition", "id": "c"}}]});
    assert_eq!(strings("Bundle.entry[0].resource.id", &b), ["c"]);
    assert_eq!(eval("Bundle.entry[0].resource", &b).len(), 1);
}

#[test]
fn invalid_expressions_are_compile_errors() {
    for bad in [
        "Patient.name.foo()",
        "Patient.first(1)",
        "where()",
        "iif(a)",
        "'a'.matches('(')",
        "@2015-13-01",
        "@T14:34:28Z",
        "1 +",
        "a.b(c",
    ] {
        assert!(
            Expression::compile(bad).is_err(),
            "{bad} should be rejected"
        );
    }
    let err = Expression::compile("Patient.name.where(").unwrap_err();
    assert!(err.position > 0, "{err}");
}

#[test]
fn junk_never_panics() {
    let samples = [
        "",
        " ",
        "(",
        ")",
        "[",
        "]",
        ".",
        "..",
        "a.",
        ".a",
        "a..b",
        "a[",
        "a[]",
        "a[0",
        "'",
        "'\\",
        "`",
        "`a",
        "%",
        "%'",
        "$",
        "@",
        "a is",
        "a as",
        "a is 5",
        "where(",
        "where()",
        "exists(,)",
        "a |",
        "| a",
        "a = ",
        "1.",
        "1..2",
        "a[-1]",
        "a['x']",
        "{",
        "{a}",
        "iif()",
        "iif(a)",
        "-",
        "--a",
        "a and",
        "é",
        "a.é",
        "/*",
        "a // b",
        "\u{0}",
        "a.b(c",
        "extension()",
        "extension(1)",
        "as(5)",
        "ofType()",
        "a.as(FHIR.)",
        "9999999999999999999999999999999999999999[0]",
    ];
    let resource = patient();
    for s in samples {
        if let Ok(e) = Expression::compile(s) {
            let _ = e.evaluate(&resource);
        }
    }
    // Every prefix of a long real expression, and every byte-level mutation of it.
    let base =
        "(Observation.value as Quantity) | Observation.component.where(code.coding.exists() and \
                resolve() is Patient).value[0].extension('u').first().not()";
    for end in 0..=base.len() {
        if let Some(prefix) = base.get(..end) {
            if let Ok(e) = Expression::compile(prefix) {
                let _ = e.evaluate(&resource);
            }
        }
    }
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let alphabet: Vec<char> = "ab.()[]|=!~<>'`\\%$@{},01 and or is as where"
        .chars()
        .collect();
    for _ in 0..3000 {
        let mut s = String::new();
        for _ in 0..(seed % 24) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        if let Ok(e) = Expression::compile(&s) {
            let _ = e.evaluate(&resource);
        }
    }
}

fn r4_search_parameters() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../profiles/r4-core.ndjson.gz"
    );
    let file = std::fs::File::open(path).expect("R4 core package");
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(|r| r["resourceType"] == "SearchParameter")
        .collect()
}

#[test]
fn all_r4_search_parameter_expressions_compile() {
    let params = r4_search_parameters();
    assert_eq!(params.len(), 1400);
    let mut with_expr = 0;
    let mut failed = Vec::new();
    for sp in &params {
        if sp["type"] == "composite" {
            continue;
        }
        let Some(expr) = sp["expression"].as_str() else {
            continue;
        };
        with_expr += 1;
        if let Err(e) = Expression::compile(expr) {
            failed.push(format!("{}: {expr}: {e}", sp["id"]));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {with_expr} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert_eq!(
        with_expr, 1338,
        "non-composite R4 SearchParameters with an expression"
    );
}
