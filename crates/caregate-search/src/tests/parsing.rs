//! Search request parsing: every rule, with its error cases.

use caregate_core::{ErrorKind, FhirError, IssueCode};
use caregate_store::index::{
    Condition, Filter, IncludeSpec, IndexKind, Prefix, SortField, SortKey, StringMatch,
    TokenSystem, UriMatch,
};

use super::registry;
use crate::{ParsedSearch, Summary, DEFAULT_COUNT, MAX_COUNT};

fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
    query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[track_caller]
fn parse(ty: &str, query: &[(&str, &str)]) -> ParsedSearch {
    registry()
        .parse(Some(ty), &pairs(query), true)
        .unwrap_or_else(|e| panic!("{query:?}: {e}"))
}

#[track_caller]
fn parse_err(ty: Option<&str>, query: &[(&str, &str)], strict: bool) -> FhirError {
    match registry().parse(ty, &pairs(query), strict) {
        Ok(p) => panic!("{query:?} should fail, got {p:?}"),
        Err(e) => e,
    }
}

/// The single filter's conditions.
#[track_caller]
fn only_filter(p: &ParsedSearch) -> &[Condition] {
    assert_eq!(p.query.filters.len(), 1, "{:?}", p.query.filters);
    &p.query.filters[0].any_of
}

#[track_caller]
fn assert_bad_request(e: &FhirError, param: &str, needle: &str) {
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
    let issue = &e.issues[0];
    assert_eq!(issue.expression, vec![param.to_string()], "{e}");
    assert!(
        issue.diagnostics.contains(needle),
        "diagnostics {:?} should mention {needle:?}",
        issue.diagnostics
    );
}

fn string_cond(param: &str, value: &str, mode: StringMatch) -> Condition {
    Condition::String {
        param: param.into(),
        value: value.into(),
        mode,
    }
}

fn token_cond(param: &str, system: TokenSystem, code: Option<&str>) -> Condition {
    Condition::Token {
        param: param.into(),
        system,
        code: code.map(str::to_string),
    }
}

fn ref_cond(param: &str, ty: Option<&str>, id: Option<&str>, url: Option<&str>) -> Condition {
    Condition::Reference {
        param: param.into(),
        target_type: ty.map(str::to_string),
        target_id: id.map(str::to_string),
        url: url.map(str::to_string),
    }
}

fn range(text: &str) -> caregate_core::DateRange {
    caregate_core::parse_date_range(text).expect("test date")
}

#[test]
fn strings_with_modifiers_or_and_escapes() {
    let p = parse("Patient", &[("family", "Chälmers ")]);
    assert_eq!(
        only_filter(&p),
        [string_cond(
            "Patient:family",
            "chalmers",
            StringMatch::StartsWith
        )]
    );
    assert_eq!(p.query.resource_type.as_deref(), Some("Patient"));
    let p = parse("Patient", &[("family:exact", "Chalmers")]);
    assert_eq!(
        only_filter(&p),
        [string_cond(
            "Patient:family",
            "Chalmers",
            StringMatch::Exact
        )]
    );
    let p = parse("Patient", &[("name:contains", "ALM")]);
    assert_eq!(
        only_filter(&p),
        [string_cond("Patient:name", "alm", StringMatch::Contains)]
    );
    // Comma ORs, repetition ANDs.
    let p = parse("Patient", &[("given", "peter,jim"), ("family", "chalmers")]);
    assert_eq!(
        p.query.filters,
        vec![
            Filter {
                any_of: vec![
                    string_cond("Patient:given", "peter", StringMatch::StartsWith),
                    string_cond("Patient:given", "jim", StringMatch::StartsWith),
                ]
            },
            Filter {
                any_of: vec![string_cond(
                    "Patient:family",
                    "chalmers",
                    StringMatch::StartsWith
                )]
            },
        ]
    );
    // `\,` is a literal comma, `\\` a backslash.
    let p = parse("Patient", &[("family:exact", r"a\,b\\c")]);
    assert_eq!(
        only_filter(&p),
        [string_cond("Patient:family", r"a,b\c", StringMatch::Exact)]
    );
    assert_eq!(
        parse_err(Some("Patient"), &[("family", ",")], true).issues[0].expression,
        ["family"]
    );
    // Unsupported string modifier.
    let e = parse_err(Some("Patient"), &[("family:below", "x")], true);
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
}

#[test]
fn tokens() {
    let p = parse(
        "Patient",
        &[("identifier", "http://x/mrn|123,|456,789,http://x/mrn|")],
    );
    assert_eq!(
        only_filter(&p),
        [
            token_cond(
                "Patient:identifier",
                TokenSystem::Is("http://x/mrn".into()),
                Some("123")
            ),
            token_cond("Patient:identifier", TokenSystem::None, Some("456")),
            token_cond("Patient:identifier", TokenSystem::Any, Some("789")),
            token_cond(
                "Patient:identifier",
                TokenSystem::Is("http://x/mrn".into()),
                None
            ),
        ]
    );
    // Escaped `|` belongs to the code.
    let p = parse("Patient", &[("identifier", r"a\|b")]);
    assert_eq!(
        only_filter(&p),
        [token_cond(
            "Patient:identifier",
            TokenSystem::Any,
            Some("a|b")
        )]
    );
    // `:not` with several values: none of them (one negated filter each).
    let p = parse("Patient", &[("gender:not", "male,other")]);
    assert_eq!(
        p.query.filters,
        vec![
            Filter {
                any_of: vec![Condition::Not(Box::new(token_cond(
                    "Patient:gender",
                    TokenSystem::Any,
                    Some("male")
                )))]
            },
            Filter {
                any_of: vec![Condition::Not(Box::new(token_cond(
                    "Patient:gender",
                    TokenSystem::Any,
                    Some("other")
                )))]
            },
        ]
    );
    let p = parse("Condition", &[("code:text", "Burnt EAR")]);
    assert_eq!(
        only_filter(&p),
        [Condition::TokenText {
            param: "Condition:code".into(),
            text: "burnt ear".into()
        }]
    );
    assert_bad_request(
        &parse_err(Some("Patient"), &[("identifier", "|")], true),
        "identifier",
        "code",
    );
    let e = parse_err(Some("Condition"), &[("code:in", "http://vs")], true);
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
    assert_eq!(e.issues[0].expression, ["code:in"]);
}

#[test]
fn missing_on_every_type() {
    for (ty, param, kind) in [
        ("Patient", "family", IndexKind::String),
        ("Patient", "gender", IndexKind::Token),
        ("Patient", "birthdate", IndexKind::Date),
        ("CarePlan", "subject", IndexKind::Reference),
        ("Observation", "value-quantity", IndexKind::Quantity),
        ("RiskAssessment", "probability", IndexKind::Number),
        ("CarePlan", "instantiates-uri", IndexKind::Uri),
    ] {
        let name = format!("{param}:missing");
        let p = parse(ty, &[(&name, "true")]);
        assert_eq!(
            only_filter(&p),
            [Condition::Missing {
                param: format!("{ty}:{param}"),
                kind,
                missing: true
            }]
        );
    }
    let p = parse("Patient", &[("gender:missing", "false")]);
    assert!(matches!(
        only_filter(&p),
        [Condition::Missing { missing: false, .. }]
    ));
    assert_bad_request(
        &parse_err(Some("Patient"), &[("gender:missing", "maybe")], false),
        "gender:missing",
        "true or false",
    );
}

#[test]
fn references() {
    // Several targets: a bare id matches any type.
    let p = parse("CarePlan", &[("subject", "123")]);
    assert_eq!(
        only_filter(&p),
        [ref_cond("CarePlan:subject", None, Some("123"), None)]
    );
    // A single target fills the type in.
    let p = parse("CarePlan", &[("care-team", "ct1")]);
    assert_eq!(
        only_filter(&p),
        [ref_cond(
            "CarePlan:care-team",
            Some("CareTeam"),
            Some("ct1"),
            None
        )]
    );
    let p = parse("CarePlan", &[("subject", "Patient/123,Group/g/_history/2")]);
    assert_eq!(
        only_filter(&p),
        [
            ref_cond("CarePlan:subject", Some("Patient"), Some("123"), None),
            ref_cond("CarePlan:subject", Some("Group"), Some("g"), None),
        ]
    );
    let p = parse("CarePlan", &[("subject:Patient", "123")]);
    assert_eq!(
        only_filter(&p),
        [ref_cond(
            "CarePlan:subject",
            Some("Patient"),
            Some("123"),
            None
        )]
    );
    let p = parse(
        "CarePlan",
        &[("subject", "https://other.org/fhir/Patient/9")],
    );
    assert_eq!(
        only_filter(&p),
        [ref_cond(
            "CarePlan:subject",
            None,
            None,
            Some("https://other.org/fhir/Patient/9")
        )]
    );
    let p = parse(
        "CarePlan",
        &[("instantiates-canonical", "http://x.org/PlanDefinition/p")],
    );
    assert_eq!(
        only_filter(&p),
        [ref_cond(
            "CarePlan:instantiates-canonical",
            None,
            None,
            Some("http://x.org/PlanDefinition/p")
        )]
    );
    assert_bad_request(
        &parse_err(Some("CarePlan"), &[("subject:Patient", "Group/1")], true),
        "subject:Patient",
        "not a Patient reference",
    );
    assert_bad_request(
        &parse_err(Some("CarePlan"), &[("subject:Observation", "1")], true),
        "subject:Observation",
        "cannot refer to Observation",
    );
    assert_bad_request(
        &parse_err(Some("CarePlan"), &[("subject", "Nope/1")], false),
        "subject",
        "not a valid reference",
    );
    // `:identifier` is not supported: strict error, lenient ignore.
    let e = parse_err(Some("CarePlan"), &[("subject:identifier", "sys|1")], true);
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
    assert_eq!(e.issues[0].expression, ["subject:identifier"]);
    let p = registry()
        .parse(
            Some("CarePlan"),
            &pairs(&[("subject:identifier", "sys|1"), ("status", "active")]),
            false,
        )
        .expect("lenient");
    assert_eq!(p.ignored, ["subject:identifier"]);
    assert_eq!(p.query.filters.len(), 1);
    assert_eq!(p.self_params, pairs(&[("status", "active")]));
}

#[test]
fn dates_and_prefixes() {
    let p = parse("Patient", &[("birthdate", "1974-12-25")]);
    assert_eq!(
        only_filter(&p),
        [Condition::Date {
            param: "Patient:birthdate".into(),
            prefix: Prefix::Eq,
            range: range("1974-12-25")
        }]
    );
    for (text, prefix) in [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ] {
        let p = parse("CarePlan", &[("date", &format!("{text}2024-05"))]);
        assert_eq!(
            only_filter(&p),
            [Condition::Date {
                param: "CarePlan:date".into(),
                prefix,
                range: range("2024-05")
            }]
        );
    }
    // A `+` that arrived as a space (not percent-encoded) still parses.
    let p = parse("Patient", &[("birthdate", "ge2024-05-01T10:00:00 02:00")]);
    assert!(
        matches!(only_filter(&p), [Condition::Date { prefix: Prefix::Ge, range, .. }]
        if *range == range_of("2024-05-01T10:00:00+02:00"))
    );
    assert_bad_request(
        &parse_err(Some("Patient"), &[("birthdate", "1974-13-45")], false),
        "birthdate",
        "not a valid date",
    );
    assert_bad_request(
        &parse_err(Some("Patient"), &[("birthdate", "xx1974")], false),
        "birthdate",
        "unknown prefix 'xx'",
    );
    assert_bad_request(
        &parse_err(Some("Patient"), &[("birthdate", "ge")], false),
        "birthdate",
        "no value",
    );
    assert_bad_request(
        &parse_err(Some("Patient"), &[("birthdate", "yesterday")], false),
        "birthdate",
        "'yesterday' is not a valid date",
    );
    let e = parse_err(Some("Patient"), &[("birthdate:exact", "1974")], true);
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
}

fn range_of(text: &str) -> caregate_core::DateRange {
    range(text)
}

#[test]
fn numbers_and_quantities() {
    let p = parse("RiskAssessment", &[("probability", "gt0.5")]);
    assert_eq!(
        only_filter(&p),
        [Condition::Number {
            param: "RiskAssessment:probability".into(),
            prefix: Prefix::Gt,
            value: 0.5,
            tolerance: 0.05
        }]
    );
    let p = parse("RiskAssessment", &[("probability", "100")]);
    assert!(matches!(only_filter(&p), [Condition::Number { tolerance, .. }] if *tolerance == 0.5));
    assert_bad_request(
        &parse_err(Some("RiskAssessment"), &[("probability", "abc")], false),
        "probability",
        "not a valid number",
    );
    let p = parse(
        "Observation",
        &[(
            "value-quantity",
            "le5.4|http://unitsofmeasure.org|mg,5.40||mg,7",
        )],
    );
    let q =
        |prefix, value, tolerance, system: Option<&str>, code: Option<&str>| Condition::Quantity {
            param: "Observation:value-quantity".into(),
            prefix,
            value,
            tolerance,
            system: system.map(str::to_string),
            code: code.map(str::to_string),
        };
    let close = |a: &Condition, b: &Condition| match (a, b) {
        (
            Condition::Quantity {
                value: v1,
                tolerance: t1,
                prefix: p1,
                system: s1,
                code: c1,
                ..
            },
            Condition::Quantity {
                value: v2,
                tolerance: t2,
                prefix: p2,
                system: s2,
                code: c2,
                ..
            },
        ) => (v1 - v2).abs() < 1e-12 && (t1 - t2).abs() < 1e-12 && p1 == p2 && s1 == s2 && c1 == c2,
        _ => false,
    };
    let expected = [
        q(
            Prefix::Le,
            5.4,
            0.05,
            Some("http://unitsofmeasure.org"),
            Some("mg"),
        ),
        q(Prefix::Eq, 5.4, 0.005, None, Some("mg")),
        q(Prefix::Eq, 7.0, 0.5, None, None),
    ];
    let got = only_filter(&p);
    assert_eq!(got.len(), 3);
    for (g, e) in got.iter().zip(&expected) {
        assert!(close(g, e), "{g:?} != {e:?}");
    }
    assert_bad_request(
        &parse_err(Some("Observation"), &[("value-quantity", "5|mg")], false),
        "value-quantity",
        "not a quantity",
    );
    assert_bad_request(
        &parse_err(Some("Observation"), &[("value-quantity", "zz5")], false),
        "value-quantity",
        "unknown prefix",
    );
}

#[test]
fn uris() {
    let p = parse(
        "CarePlan",
        &[("instantiates-uri", "http://example.org/protocol")],
    );
    assert_eq!(
        only_filter(&p),
        [Condition::Uri {
            param: "CarePlan:instantiates-uri".into(),
            uri: "http://example.org/protocol".into(),
            mode: UriMatch::Exact
        }]
    );
    let p = parse(
        "CarePlan",
        &[("instantiates-uri:below", "http://example.org/")],
    );
    assert!(matches!(
        only_filter(&p),
        [Condition::Uri {
            mode: UriMatch::Below,
            ..
        }]
    ));
    let p = parse("Patient", &[("_profile:above", "http://x/a/b")]);
    assert!(
        matches!(only_filter(&p), [Condition::Uri { mode: UriMatch::Above, param, .. }] if param == "Patient:_profile")
    );
}

#[test]
fn chaining() {
    let p = parse("CarePlan", &[("subject:Patient.identifier", "sys|val")]);
    assert_eq!(
        only_filter(&p),
        [Condition::Chain {
            param: "CarePlan:subject".into(),
            target_type: "Patient".into(),
            inner: Box::new(token_cond(
                "Patient:identifier",
                TokenSystem::Is("sys".into()),
                Some("val")
            )),
        }]
    );
    let p = parse("CarePlan", &[("subject:Patient.name", "peter,jim")]);
    assert_eq!(only_filter(&p).len(), 2);
    // A single target type needs no modifier; inner modifiers apply.
    let p = parse("Condition", &[("encounter.status", "finished")]);
    assert!(
        matches!(only_filter(&p), [Condition::Chain { target_type, inner, .. }]
        if target_type == "Encounter" && matches!(**inner, Condition::Token { .. }))
    );
    let p = parse("CarePlan", &[("subject:Patient.family:exact", "Chalmers")]);
    assert!(matches!(only_filter(&p), [Condition::Chain { inner, .. }]
        if matches!(&**inner, Condition::String { mode: StringMatch::Exact, .. })));
    let p = parse("CarePlan", &[("subject:Patient._id", "p1")]);
    assert!(
        matches!(only_filter(&p), [Condition::Chain { inner, .. }] if **inner == Condition::Id("p1".into()))
    );
    // Ambiguous target: a clear error naming the parameter.
    assert_bad_request(
        &parse_err(Some("CarePlan"), &[("subject.name", "x")], false),
        "subject.name",
        "add a type modifier",
    );
    assert_bad_request(
        &parse_err(Some("CarePlan"), &[("status.name", "x")], false),
        "status.name",
        "not a reference parameter",
    );
    let e = parse_err(
        Some("CarePlan"),
        &[("subject:Patient.organization.name", "x")],
        true,
    );
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
    let e = parse_err(Some("CarePlan"), &[("subject:Patient.nosuch", "x")], true);
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
    assert_bad_request(
        &parse_err(
            Some("CarePlan"),
            &[("subject:Patient.birthdate", "nope")],
            true,
        ),
        "subject:Patient.birthdate",
        "valid date",
    );
}

#[test]
fn reverse_chaining() {
    let p = parse("Patient", &[("_has:Observation:patient:code", "1234-5")]);
    assert_eq!(
        only_filter(&p),
        [Condition::Has {
            source_type: "Observation".into(),
            param: "Observation:patient".into(),
            inner: Box::new(token_cond(
                "Observation:code",
                TokenSystem::Any,
                Some("1234-5")
            )),
        }]
    );
    let p = parse(
        "Patient",
        &[("_has:CarePlan:subject:status", "active,draft")],
    );
    assert_eq!(only_filter(&p).len(), 2);
    assert_bad_request(
        &parse_err(Some("Patient"), &[("_has:Nope:patient:code", "x")], true),
        "_has:Nope:patient:code",
        "not a resource type",
    );
    assert_bad_request(
        &parse_err(Some("Patient"), &[("_has:Observation:patient", "x")], true),
        "_has:Observation:patient",
        "_has:Type:reference:parameter",
    );
    assert_bad_request(
        &parse_err(
            Some("Practitioner"),
            &[("_has:Observation:patient:code", "x")],
            true,
        ),
        "_has:Observation:patient:code",
        "cannot refer to Practitioner",
    );
    let e = parse_err(
        Some("Patient"),
        &[("_has:Observation:patient:_has:X:y:z", "x")],
        true,
    );
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
}

#[test]
fn id_last_updated_and_system_level() {
    let p = parse(
        "Patient",
        &[("_id", "a,b"), ("_lastUpdated", "gt2024-01-01")],
    );
    assert_eq!(
        p.query.filters,
        vec![
            Filter {
                any_of: vec![Condition::Id("a".into()), Condition::Id("b".into())]
            },
            Filter {
                any_of: vec![Condition::LastUpdated {
                    prefix: Prefix::Gt,
                    range: range("2024-01-01")
                }]
            },
        ]
    );
    assert_bad_request(
        &parse_err(Some("Patient"), &[("_lastUpdated", "yesterday")], true),
        "_lastUpdated",
        "not a valid date",
    );

    let reg = registry();
    let p = reg
        .parse(
            None,
            &pairs(&[
                ("_tag", "http://x|t"),
                ("_type", "Patient,Observation"),
                ("_id", "1"),
            ]),
            true,
        )
        .expect("system search");
    assert_eq!(p.query.resource_type, None);
    assert_eq!(p.query.types, ["Patient", "Observation"]);
    // `_tag` on both types' keys, ORed; `_id` as usual.
    assert_eq!(
        p.query.filters[0].any_of,
        [
            token_cond(
                "Patient:_tag",
                TokenSystem::Is("http://x".into()),
                Some("t")
            ),
            token_cond(
                "Observation:_tag",
                TokenSystem::Is("http://x".into()),
                Some("t")
            ),
        ]
    );
    assert_eq!(p.query.filters[1].any_of, [Condition::Id("1".into())]);
    // Without `_type`, every type's key is searched.
    let p = reg
        .parse(None, &pairs(&[("_profile", "http://p")]), true)
        .expect("system search");
    assert_eq!(
        p.query.filters[0].any_of.len(),
        caregate_core::RESOURCE_TYPES.len()
    );
    // Negations AND over the types.
    let p = reg
        .parse(
            None,
            &pairs(&[("_type", "Patient,Goal"), ("_security:not", "R")]),
            true,
        )
        .expect("system search");
    assert_eq!(p.query.filters.len(), 2);
    // Type-specific parameters, chains and _has are not for system-level search.
    for name in [
        "family",
        "subject:Patient.name",
        "_has:Observation:patient:code",
        "_text",
    ] {
        let e = parse_err(None, &[(name, "x")], true);
        assert_eq!(e.issues[0].code, IssueCode::NotSupported, "{name}");
        assert_eq!(e.issues[0].expression, [name]);
    }
    let p = reg
        .parse(None, &pairs(&[("family", "x")]), false)
        .expect("lenient");
    assert_eq!(p.ignored, ["family"]);
    assert_bad_request(
        &parse_err(None, &[("_type", "Patient,Nope")], true),
        "_type",
        "'Nope'",
    );
    // `_type` only at system level.
    let e = parse_err(Some("Patient"), &[("_type", "Patient")], true);
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
    let p = reg
        .parse(None, &pairs(&[("_sort", "-_lastUpdated")]), true)
        .expect("sort");
    assert_eq!(
        p.query.sort,
        [SortKey {
            field: SortField::LastUpdated,
            descending: true
        }]
    );
}

#[test]
fn result_parameters() {
    let p = parse("Patient", &[]);
    assert_eq!(p.query.count, DEFAULT_COUNT);
    assert_eq!(p.query.offset, 0);
    assert!(p.query.total);
    assert!(p.query.filters.is_empty() && p.includes.is_empty() && p.self_params.is_empty());
    assert_eq!(
        parse("Patient", &[("_count", "5000")]).query.count,
        MAX_COUNT
    );
    assert_eq!(parse("Patient", &[("_count", "0")]).query.count, 0);
    assert_eq!(parse("Patient", &[("_offset", "40")]).query.offset, 40);
    for (name, value) in [
        ("_count", "abc"),
        ("_count", "-1"),
        ("_offset", "-5"),
        ("_offset", "1.5"),
    ] {
        assert_bad_request(
            &parse_err(Some("Patient"), &[(name, value)], false),
            name,
            "non-negative integer",
        );
    }
    assert!(!parse("Patient", &[("_total", "none")]).query.total);
    assert!(parse("Patient", &[("_total", "accurate")]).query.total);
    assert!(parse("Patient", &[("_total", "estimate")]).query.total);
    assert_bad_request(
        &parse_err(Some("Patient"), &[("_total", "all")], false),
        "_total",
        "none",
    );

    let p = parse(
        "Patient",
        &[("_summary", "count"), ("_total", "none"), ("_count", "10")],
    );
    assert_eq!(p.summary, Some(Summary::Count));
    assert!(p.query.total);
    assert_eq!(p.query.count, 0);
    for (text, s) in [
        ("true", Summary::True),
        ("text", Summary::Text),
        ("data", Summary::Data),
        ("false", Summary::False),
    ] {
        assert_eq!(parse("Patient", &[("_summary", text)]).summary, Some(s));
        assert_eq!(s.as_str(), text);
    }
    assert_bad_request(
        &parse_err(Some("Patient"), &[("_summary", "maybe")], false),
        "_summary",
        "count",
    );

    let p = parse(
        "Patient",
        &[("_elements", "name, birthDate,"), ("_elements", "gender")],
    );
    assert_eq!(
        p.elements,
        Some(vec!["name".into(), "birthDate".into(), "gender".into()])
    );

    // _format / _pretty: silently ignored (not listed).
    let p = registry()
        .parse(
            Some("Patient"),
            &pairs(&[("_format", "json"), ("_pretty", "true")]),
            true,
        )
        .expect("format");
    assert!(p.ignored.is_empty() && p.self_params.is_empty());
}

#[test]
fn sorting() {
    let p = parse("CarePlan", &[("_sort", "-date,_id,status,subject")]);
    assert_eq!(
        p.query.sort,
        [
            SortKey {
                field: SortField::Param {
                    params: vec!["CarePlan:date".into()],
                    kind: IndexKind::Date
                },
                descending: true
            },
            SortKey {
                field: SortField::Id,
                descending: false
            },
            SortKey {
                field: SortField::Param {
                    params: vec!["CarePlan:status".into()],
                    kind: IndexKind::Token
                },
                descending: false
            },
            SortKey {
                field: SortField::Param {
                    params: vec!["CarePlan:subject".into()],
                    kind: IndexKind::Reference
                },
                descending: false
            },
        ]
    );
    assert_eq!(
        p.self_params,
        pairs(&[("_sort", "-date,_id,status,subject")])
    );
    let e = parse_err(Some("CarePlan"), &[("_sort", "nosuch")], true);
    assert_eq!(e.issues[0].expression, ["_sort"]);
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
    let p = registry()
        .parse(
            Some("CarePlan"),
            &pairs(&[("_sort", "nosuch,-_lastUpdated")]),
            false,
        )
        .expect("lenient");
    assert_eq!(p.ignored, ["_sort"]);
    assert_eq!(
        p.query.sort,
        [SortKey {
            field: SortField::LastUpdated,
            descending: true
        }]
    );
    assert_eq!(p.self_params, pairs(&[("_sort", "-_lastUpdated")]));
}

#[test]
fn includes() {
    let p = parse(
        "CarePlan",
        &[
            ("_include", "CarePlan:subject"),
            ("_include:iterate", "CareTeam:participant:Practitioner"),
            ("_revinclude", "Provenance:target"),
            ("_revinclude:iterate", "Goal:subject"),
        ],
    );
    assert_eq!(
        p.includes,
        [
            IncludeSpec {
                source_type: "CarePlan".into(),
                param: "CarePlan:subject".into(),
                target_type: None,
                reverse: false,
                iterate: false
            },
            IncludeSpec {
                source_type: "CareTeam".into(),
                param: "CareTeam:participant".into(),
                target_type: Some("Practitioner".into()),
                reverse: false,
                iterate: true
            },
            IncludeSpec {
                source_type: "Provenance".into(),
                param: "Provenance:target".into(),
                target_type: None,
                reverse: true,
                iterate: false
            },
            IncludeSpec {
                source_type: "Goal".into(),
                param: "Goal:subject".into(),
                target_type: None,
                reverse: true,
                iterate: true
            },
        ]
    );
    assert_eq!(p.self_params.len(), 4);
    // `*` and `Type:*`: every reference parameter.
    let all = parse("CarePlan", &[("_include", "*")]);
    assert!(all.includes.len() > 10);
    assert!(all
        .includes
        .iter()
        .all(|i| i.source_type == "CarePlan" && !i.reverse));
    assert_eq!(
        parse("CarePlan", &[("_include", "CarePlan:*")]).includes,
        all.includes
    );
    // Errors.
    assert_bad_request(
        &parse_err(Some("CarePlan"), &[("_include", "subject")], false),
        "_include",
        "Type:parameter",
    );
    assert_bad_request(
        &parse_err(Some("CarePlan"), &[("_include", "Nope:subject")], false),
        "_include",
        "'Nope'",
    );
    assert_bad_request(
        &parse_err(Some("CarePlan"), &[("_include", "CarePlan:status")], false),
        "_include",
        "not a reference parameter",
    );
    assert_bad_request(
        &parse_err(
            Some("CarePlan"),
            &[("_include", "CarePlan:subject:Observation")],
            false,
        ),
        "_include",
        "cannot refer to Observation",
    );
    let e = parse_err(Some("CarePlan"), &[("_include", "CarePlan:nosuch")], true);
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
    let e = parse_err(
        Some("CarePlan"),
        &[("_include:deep", "CarePlan:subject")],
        true,
    );
    assert_eq!(e.issues[0].code, IssueCode::NotSupported);
}

#[test]
fn unknown_parameters_strict_and_lenient() {
    let e = parse_err(Some("Patient"), &[("nosuch", "1")], true);
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert_eq!(e.issues[0].expression, ["nosuch"]);
    assert!(e.issues[0].diagnostics.contains("nosuch"), "{e}");
    for name in [
        "_text",
        "_content",
        "_list",
        "_contained",
        "_query",
        "_filter",
        "phonetic",
    ] {
        let e = parse_err(Some("Patient"), &[(name, "x")], true);
        assert_eq!(e.issues[0].code, IssueCode::NotSupported, "{name}");
    }
    let p = registry()
        .parse(
            Some("Patient"),
            &pairs(&[
                ("nosuch", "1"),
                ("family", "x"),
                ("_offset", "20"),
                ("_count", "10"),
                ("_text", "y"),
                ("given", ""),
            ]),
            false,
        )
        .expect("lenient");
    assert_eq!(p.ignored, ["nosuch", "_text"]);
    assert_eq!(p.self_params, pairs(&[("family", "x"), ("_count", "10")]));
    assert_eq!(p.query.offset, 20);
    // Bad values fail even when lenient.
    assert!(registry()
        .parse(Some("Patient"), &pairs(&[("birthdate", "x")]), false)
        .is_err());
    let e = parse_err(Some("NoSuchType"), &[], true);
    assert_eq!(e.kind, ErrorKind::NotFound);
}

#[test]
fn junk_never_panics() {
    let names = [
        "",
        ":",
        ".",
        "..",
        "family:",
        ":exact",
        "subject:",
        "subject:.",
        "subject.",
        "_has",
        "_has:",
        "_has::::",
        "_has:Observation::",
        "_include:",
        "_sort",
        "_count",
        "name:missing",
        "é",
        "subject:Patient.",
        "identifier:not",
        "birthdate",
        "_lastUpdated",
        "value-quantity",
        "probability",
        "_type",
        "_id",
    ];
    let values = [
        "",
        ",",
        "|",
        "||",
        "|||",
        "\\",
        "\\\\,",
        "a\\",
        "é",
        "ge",
        "gé2020",
        "e",
        "1e",
        "-",
        "*",
        ":",
        "::",
        "Patient/",
        "/1",
        "http://",
        "2024-02-30",
        "9999999999999999999999",
        "1e308",
        "-1e-400",
        "ap1.",
        "Patient:subject:Patient:x",
    ];
    let reg = registry();
    for ty in [Some("Patient"), Some("CarePlan"), Some("Observation"), None] {
        for n in names {
            for v in values {
                for strict in [true, false] {
                    let _ = reg.parse(ty, &[(n.to_string(), v.to_string())], strict);
                }
            }
        }
    }
}
