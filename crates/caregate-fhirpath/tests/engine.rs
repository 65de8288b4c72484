//! The caregate-specific parts of the engine, through the public API: variables,
//! `resolve()` in Bundles and contained resources, `memberOf` via a terminology callback,
//! decimal, date/time and UCUM edge cases, errors, and robustness on hostile input.

use std::cell::RefCell;

use caregate_fhirpath::{Context, Expression, Item, Resolver, Terminology};
use serde_json::{json, Value};

fn texts(items: &[Item<'_>]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i.to_json() {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .collect()
}

fn eval(expr: &str, r: &Value) -> Vec<String> {
    let e = Expression::compile(expr).unwrap_or_else(|err| panic!("{expr}: {err}"));
    texts(
        &e.evaluate_checked(r)
            .unwrap_or_else(|err| panic!("{expr}: {err}")),
    )
}

fn eval_ctx(expr: &str, ctx: &Context<'_>) -> Vec<String> {
    let e = Expression::compile(expr).unwrap_or_else(|err| panic!("{expr}: {err}"));
    texts(
        &e.evaluate_in(ctx)
            .unwrap_or_else(|err| panic!("{expr}: {err}")),
    )
}

fn is_err(expr: &str, r: &Value) -> bool {
    Expression::compile(expr)
        .map(|e| e.evaluate_checked(r).is_err())
        .unwrap_or(true)
}

#[test]
fn variables_and_environment() {
    let p = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe"}]});
    let ctx = Context::new(&p)
        .variable("limit", vec![Item::Integer(3)])
        .variable("who", vec![Item::Str("Doe".into())]);
    assert_eq!(eval_ctx("%limit + 1", &ctx), ["4"]);
    assert_eq!(
        eval_ctx("name.where(family = %who).exists()", &ctx),
        ["true"]
    );
    assert_eq!(eval_ctx("%resource.id", &ctx), ["p1"]);
    assert_eq!(eval_ctx("%rootResource.id", &ctx), ["p1"]);
    assert_eq!(eval_ctx("%context.id", &ctx), ["p1"]);
    assert_eq!(eval("%ucum", &p), ["http://unitsofmeasure.org"]);
    assert_eq!(eval("%sct", &p), ["http://snomed.info/sct"]);
    assert_eq!(eval("%loinc", &p), ["http://loinc.org"]);
    assert_eq!(
        eval("%`vs-administrative-gender`", &p),
        ["http://hl7.org/fhir/ValueSet/administrative-gender"]
    );
    assert_eq!(
        eval("%`ext-patient-birthTime`", &p),
        ["http://hl7.org/fhir/StructureDefinition/patient-birthTime"]
    );
    // An undefined variable is an error, not an empty result.
    assert!(is_err("%nope", &p));
    // %context at an element: the invariant's focus.
    let contact = json!({"name": {"family": "X"}});
    let ctx = Context::new(&p).focus(&contact, Some("Patient.contact"));
    assert_eq!(eval_ctx("name.family", &ctx), ["X"]);
    assert_eq!(eval_ctx("%context.name.family", &ctx), ["X"]);
    assert_eq!(eval_ctx("%resource.id", &ctx), ["p1"]);
}

#[test]
fn resolve_in_contained_and_bundles() {
    let obs = json!({
        "resourceType": "Observation",
        "contained": [{"resourceType": "Patient", "id": "pat", "gender": "female"}],
        "subject": {"reference": "#pat"},
        "performer": [{"reference": "Practitioner/dr"}]
    });
    assert_eq!(eval("subject.resolve().gender", &obs), ["female"]);
    assert_eq!(eval("subject.resolve() is Patient", &obs), ["true"]);
    // Outside the document: nothing (spec) ...
    assert!(eval("performer.resolve()", &obs).is_empty());
    // ... unless placeholders are asked for (search indexing).
    let e = Expression::compile("performer.where(resolve() is Practitioner)").unwrap();
    assert_eq!(e.evaluate(&obs).len(), 1);

    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:a1", "resource": {"resourceType": "Patient", "id": "a1", "name": [{"family": "Uuid"}]}},
            {"fullUrl": "http://x.org/fhir/Patient/p2", "resource": {"resourceType": "Patient", "id": "p2", "name": [{"family": "Abs"}]}},
            {"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Observation", "id": "o1",
                "subject": {"reference": "urn:uuid:a1"},
                "performer": [{"reference": "Patient/p2"}, {"reference": "http://x.org/fhir/Patient/p2"}]}}
        ]
    });
    let entry_obs = &bundle["entry"][2]["resource"];
    let ctx = Context::new(entry_obs).root_resource(&bundle);
    assert_eq!(eval_ctx("subject.resolve().name.family", &ctx), ["Uuid"]);
    assert_eq!(
        eval_ctx("performer.resolve().name.family", &ctx),
        ["Abs", "Abs"]
    );
    assert_eq!(
        eval("Bundle.entry[2].resource.subject.resolve().id", &bundle),
        ["a1"]
    );

    // The resolver callback answers what the document cannot.
    struct Store(Value);
    impl<'a> Resolver<'a> for &'a Store {
        fn resolve(&self, reference: &str) -> Option<&'a Value> {
            (reference == "Practitioner/dr").then_some(&self.0)
        }
    }
    let store = Store(json!({"resourceType": "Practitioner", "id": "dr", "active": true}));
    let r = &store;
    let ctx = Context::new(&obs).resolver(&r);
    assert_eq!(eval_ctx("performer.resolve().active", &ctx), ["true"]);
}

struct StubTerminology;

impl Terminology for StubTerminology {
    fn member_of(&self, item: &Value, value_set: &str) -> Option<bool> {
        if value_set != "http://example.org/vs/colors" {
            return None;
        }
        let code = match item {
            Value::String(s) => Some(s.as_str()),
            Value::Object(_) => item
                .get("code")
                .or_else(|| item.pointer("/coding/0/code"))
                .and_then(Value::as_str),
            _ => None,
        };
        Some(matches!(code, Some("red" | "green")))
    }
}

#[test]
fn member_of_uses_the_terminology_callback() {
    let r = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://x", "code": "red"}]},
        "valueCodeableConcept": {"coding": [{"code": "blue"}]}});
    let term = StubTerminology;
    let ctx = Context::new(&r).terminology(&term);
    let vs = "'http://example.org/vs/colors'";
    assert_eq!(eval_ctx(&format!("code.memberOf({vs})"), &ctx), ["true"]);
    assert_eq!(
        eval_ctx(&format!("code.coding.memberOf({vs})"), &ctx),
        ["true"]
    );
    assert_eq!(eval_ctx(&format!("value.memberOf({vs})"), &ctx), ["false"]);
    assert_eq!(eval_ctx(&format!("'green'.memberOf({vs})"), &ctx), ["true"]);
    // Unknown value set, or no terminology at all: unknown, i.e. empty.
    assert!(eval_ctx("code.memberOf('http://other')", &ctx).is_empty());
    assert!(eval(&format!("code.memberOf({vs})"), &r).is_empty());
}

#[test]
fn decimals_are_exact() {
    let r: Value = serde_json::from_str(
        r#"{"resourceType": "Observation", "valueQuantity": {"value": 1.50, "unit": "mg"}}"#,
    )
    .unwrap();
    assert_eq!(eval("0.1 + 0.2 = 0.3", &r), ["true"]);
    assert_eq!(eval("0.1 + 0.2", &r), ["0.3"]);
    assert_eq!(eval("1.2 * 1.8", &r), ["2.16"]);
    assert_eq!(eval("1 / 3", &r), ["0.33333333"]);
    assert_eq!(eval("10 / 4", &r), ["2.5"]);
    assert_eq!(eval("7 div 2", &r), ["3"]);
    assert_eq!(eval("-7 mod 2", &r), ["-1"]);
    assert_eq!(eval("2.2 mod 1.8", &r), ["0.4"]);
    assert!(eval("1 / 0", &r).is_empty());
    // JSON numbers keep their lexical precision.
    assert_eq!(eval("Observation.value.value", &r), ["1.50"]);
    assert_eq!(eval("Observation.value.value.precision()", &r), ["2"]);
    assert_eq!(eval("Observation.value.value = 1.5", &r), ["true"]);
    assert_eq!(eval("Observation.value.value ~ 1.5", &r), ["true"]);
    assert_eq!(eval("1.005.round(2)", &r), ["1.01"]);
    assert_eq!(eval("(-1.5).round()", &r), ["-2"]);
    // Integer overflow is empty, not a wrapped number or a panic.
    assert!(eval("9223372036854775807 + 1", &r).is_empty());
    assert_eq!(eval("2.power(10)", &r), ["1024"]);
    assert_eq!(eval("1.5.power(2)", &r), ["2.25"]);
}

#[test]
fn dates_and_times_follow_precision_rules() {
    let p = json!({"resourceType": "Patient", "birthDate": "1974-12", "meta": {"lastUpdated": "2024-10-14T07:00:00Z"}});
    // Partial dates: unknown when the shared components are equal.
    assert!(eval("birthDate = @1974-12-25", &p).is_empty());
    assert_eq!(eval("birthDate < @1975-01-01", &p), ["true"]);
    assert_eq!(eval("birthDate ~ @1974-12-25", &p), ["false"]);
    assert_eq!(eval("birthDate = @1974-12", &p), ["true"]);
    // instant vs dateTime across zones.
    assert_eq!(
        eval("meta.lastUpdated = @2024-10-14T09:00:00+02:00", &p),
        ["true"]
    );
    assert!(eval("meta.lastUpdated = @2024-10-14T07:00:00", &p).is_empty());
    // Same day, but the date has no time: unknown.
    assert!(eval("meta.lastUpdated > @2024-10-14", &p).is_empty());
    assert_eq!(eval("meta.lastUpdated > @2024-10-13", &p), ["true"]);
    // Calendar arithmetic clamps to the month's end and crosses years.
    assert_eq!(eval("@2024-01-31 + 1 month", &p), ["2024-02-29"]);
    assert_eq!(
        eval("@2023-12-31T23:30:00Z + 45 minutes", &p),
        ["2024-01-01T00:15:00Z"]
    );
    assert_eq!(eval("@2024-03-01 - 1 day", &p), ["2024-02-29"]);
    assert!(is_err("@2024-03-01 + 1 'mo'", &p));
    assert_eq!(eval("@T23:30 + 1 hour", &p), ["00:30"]);
    assert_eq!(eval("@2014.lowBoundary(8)", &p), ["2014-01-01"]);
    assert_eq!(eval("@2014-02.highBoundary(8)", &p), ["2014-02-28"]);
    assert!(is_err("@T10:00 < @2014-01-01", &p));
    assert_eq!(eval("'2014-01-05'.toDate() = @2014-01-05", &p), ["true"]);
    assert_eq!(eval("now() >= today()", &p).len(), 0);
    assert_eq!(eval("today() < today() + 1 day", &p), ["true"]);
}

#[test]
fn ucum_comparisons() {
    let r = json!({"resourceType": "Observation",
        "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        "component": [{"valueQuantity": {"value": 7, "unit": "score", "system": "http://unitsofmeasure.org", "code": "{score}"}}]});
    assert_eq!(eval("Observation.value > 15 'kPa'", &r), ["true"]);
    assert_eq!(eval("Observation.value < 16 'kPa'", &r), ["true"]);
    assert_eq!(eval("Observation.value = 120 'mm[Hg]'", &r), ["true"]);
    assert!(eval("Observation.value = 120 'mg'", &r).is_empty());
    assert_eq!(eval("component.value > 5 '{score}'", &r), ["true"]);
    assert_eq!(eval("1 'g' = 1000 'mg'", &r), ["true"]);
    assert_eq!(eval("1 'kg' > 999 'g'", &r), ["true"]);
    assert_eq!(eval("1 'L' = 1000 'mL'", &r), ["true"]);
    assert_eq!(eval("2 'h' = 120 'min'", &r), ["true"]);
    assert_eq!(eval("1 'd' = 24 'h'", &r), ["true"]);
    assert_eq!(eval("1 'wk' = 7 days", &r), ["true"]);
    assert_eq!(eval("1 'a' > 12 'mo'", &r), ["false"]);
    assert_eq!(eval("50 '%' = 0.5 '1'", &r), ["true"]);
    assert!(eval("1 year = 1 'a'", &r).is_empty());
    assert_eq!(eval("1 year = 12 months", &r), ["true"]);
    assert_eq!(eval("4 'g' ~ 4040 'mg'", &r), ["true"]);
    assert_eq!(eval("(10 'mg').toQuantity('g').value", &r), ["0.010"]);
}

#[test]
fn evaluation_errors_are_reported() {
    let p = json!({"resourceType": "Patient", "name": [{"given": ["a", "b"]}], "active": true});
    assert!(is_err("name.given.single()", &p));
    assert!(is_err("name.given + 'x'", &p));
    assert!(is_err("active < 1", &p));
    assert!(is_err("name.given.startsWith(1)", &p));
    assert!(is_err("name.as(Foo)", &p));
    // The lenient API turns errors into empty results.
    let e = Expression::compile("name.given.single()").unwrap();
    assert!(e.evaluate(&p).is_empty());
    assert_eq!(e.evaluate_bool(&p), None);
    // Strict mode rejects elements the model does not define.
    let e = Expression::compile("name.given1").unwrap();
    assert!(e.evaluate_checked(&p).unwrap().is_empty());
    assert!(e.evaluate_in(&Context::new(&p).strict(true)).is_err());
}

#[test]
fn trace_reports_to_the_callback() {
    let p = json!({"resourceType": "Patient", "name": [{"given": ["a", "b"]}]});
    let seen = RefCell::new(Vec::new());
    let f =
        |name: &str, items: &[Item<'_>]| seen.borrow_mut().push(format!("{name}:{}", items.len()));
    let ctx = Context::new(&p).trace(&f);
    assert_eq!(eval_ctx("name.given.trace('g').count()", &ctx), ["2"]);
    assert_eq!(seen.borrow().as_slice(), ["g:2"]);
}

#[test]
fn typing_from_the_model() {
    let p = json!({"resourceType": "Patient", "gender": "male", "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://x/time", "valueTime": "14:35"}]},
        "contact": [{"name": {"family": "K"}}], "multipleBirthInteger": 2});
    assert_eq!(eval("gender.type().name", &p), ["code"]);
    assert_eq!(eval("birthDate.is(date)", &p), ["true"]);
    assert_eq!(
        eval("birthDate.extension('http://x/time').value.is(time)", &p),
        ["true"]
    );
    assert_eq!(eval("contact.name.family", &p), ["K"]);
    assert_eq!(eval("multipleBirth.ofType(integer) + 1", &p), ["3"]);
    assert_eq!(eval("multipleBirth is boolean", &p), ["false"]);
    assert_eq!(eval("children().count()", &p), ["4"]);
    assert_eq!(eval("descendants().ofType(HumanName).family", &p), ["K"]);
    assert_eq!(
        eval(
            "conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')",
            &p
        ),
        ["true"]
    );
}

#[test]
fn hostile_input_never_panics() {
    let p = json!({"resourceType": "Patient", "name": [{"given": ["a"]}]});
    let deep = "(".repeat(3000) + "1" + &")".repeat(3000);
    assert!(Expression::compile(&deep).is_err());
    let chain = "name".to_string() + &".where(given.exists())".repeat(300);
    let _ = Expression::compile(&chain).map(|e| e.evaluate(&p));
    let nested = "name.where(".to_string() + &"where(".repeat(19) + "true" + &")".repeat(20);
    let e = Expression::compile(&nested).expect("20 nested where() compile");
    assert_eq!(e.evaluate(&p).len(), 1);
    let ops = (0..2000).map(|_| "1").collect::<Vec<_>>().join(" + ");
    assert!(Expression::compile(&ops).is_err());
    // The deepest trees accepted evaluate within a test thread's stack (debug build).
    for op in [" + ", " and ", " | ", " = "] {
        let src = (0..120)
            .map(|_| "name.given.first()")
            .collect::<Vec<_>>()
            .join(op);
        if let Ok(e) = Expression::compile(&src) {
            let _ = e.evaluate(&p);
        }
    }
    let src = (0..120).map(|_| "(name.given").collect::<String>() + &")".repeat(120);
    let _ = Expression::compile(&src).map(|e| e.evaluate(&p));
    for s in [
        "'\\u'",
        "@",
        "@T",
        "@2020-",
        "1 'm[",
        "(1 'm((((').toQuantity('g')",
        "''.matches('a{99999999}')",
        "'x'.replaceMatches('(', 'y')",
        "1.toQuantity('((((((((((((((((((((m')",
        "descendants().descendants().count()",
        "repeat($this).count()",
        "aggregate($total + $this, 0)",
        "%resource.repeat(children())",
        "'a'.substring(-5, 99999999999)",
        "'abc'.substring(1, -3)",
        "1.lowBoundary(2147483647)",
        "99999999999999999999999999999999999999.0 * 99999999999999999999999999999999999.0",
    ] {
        if let Ok(e) = Expression::compile(s) {
            let _ = e.evaluate(&p);
            let _ = e.evaluate_checked(&p);
        }
    }
    // Deeply nested JSON (at serde's own recursion limit) is walked without overflow.
    let mut v = json!({"given": ["x"]});
    for _ in 0..120 {
        v = json!({"extension": [{"url": "u", "valueHumanName": v}]});
    }
    let deep_doc = json!({"resourceType": "Patient", "name": [v]});
    let e = Expression::compile("descendants().count()").unwrap();
    assert!(!e.evaluate(&deep_doc).is_empty());
}
