//! Focused tests of the rules added to agree with the HL7 reference validator: each builds
//! a small resource that breaks one rule (and, where it matters, a twin that keeps it) and
//! checks the error, its code and its FHIRPath location.

use std::sync::Arc;

use caregate_core::Issue;
use caregate_validation::{Registry, ValidationOptions, Validator};
use serde_json::{json, Value};

fn validator_with(resources: Vec<Value>) -> Validator {
    let mut b = Registry::builder();
    b.add_resources(resources);
    Validator::with_fhirpath(Arc::new(b.build()))
}

fn core() -> Validator {
    Validator::with_fhirpath(Registry::standard().clone())
}

fn errors(v: &Validator, r: &Value) -> Vec<Issue> {
    errors_with(v, r, &ValidationOptions::default())
}

fn errors_with(v: &Validator, r: &Value, opts: &ValidationOptions) -> Vec<Issue> {
    v.validate(r, opts)
        .into_iter()
        .filter(|i| i.severity.is_error())
        .collect()
}

/// The errors as `code location: message`, for assertion messages.
fn show(issues: &[Issue]) -> Vec<String> {
    issues
        .iter()
        .map(|i| format!("{} {:?}: {}", i.code.as_str(), i.expression, i.diagnostics))
        .collect()
}

/// One error at `loc` whose message contains `needle`.
fn has(issues: &[Issue], loc: &str, needle: &str) -> bool {
    issues
        .iter()
        .any(|i| i.expression.iter().any(|e| e == loc) && i.diagnostics.contains(needle))
}

fn questionnaire() -> Value {
    json!({
        "resourceType": "Questionnaire",
        "url": "http://example.org/Questionnaire/q",
        "status": "active",
        "item": [
            {"linkId": "name", "type": "string", "required": true, "maxLength": 5},
            {"linkId": "age", "type": "integer",
             "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/minValue", "valueInteger": 0},
                           {"url": "http://hl7.org/fhir/StructureDefinition/maxValue", "valueInteger": 130}]},
            {"linkId": "colour", "type": "choice", "repeats": true, "answerOption": [
                {"valueCoding": {"system": "http://example.org/c", "code": "red"}},
                {"valueCoding": {"system": "http://example.org/c", "code": "none"},
                 "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/questionnaire-optionExclusive", "valueBoolean": true}]}
            ]},
            {"linkId": "later", "type": "string", "required": true,
             "enableWhen": [{"question": "age", "operator": ">", "answerInteger": 60}]},
            {"linkId": "grp", "type": "group", "required": true, "item": [
                {"linkId": "inner", "type": "boolean", "required": true}
            ]}
        ]
    })
}

fn response(items: Value) -> Value {
    json!({
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "http://example.org/Questionnaire/q",
        "status": "completed",
        "item": items
    })
}

#[test]
fn questionnaire_response_against_its_questionnaire() {
    let v = validator_with(vec![questionnaire()]);
    let good = response(json!([
        {"linkId": "name", "answer": [{"valueString": "Ann"}]},
        {"linkId": "age", "answer": [{"valueInteger": 42}]},
        {"linkId": "colour", "answer": [{"valueCoding": {"system": "http://example.org/c", "code": "red"}}]},
        {"linkId": "grp", "item": [{"linkId": "inner", "answer": [{"valueBoolean": true}]}]}
    ]));
    // `later` is required but conditional (enableWhen): not demanded.
    assert!(
        errors(&v, &good).is_empty(),
        "{:?}",
        show(&errors(&v, &good))
    );

    let bad = response(json!([
        {"linkId": "name", "answer": [{"valueString": "Annabel"}, {"valueString": "B"}]},
        {"linkId": "age", "answer": [{"valueString": "42"}]},
        {"linkId": "colour", "answer": [
            {"valueCoding": {"system": "http://example.org/c", "code": "none"}},
            {"valueCoding": {"system": "http://example.org/c", "code": "blue"}}
        ]},
        {"linkId": "grp"},
        {"linkId": "nope", "answer": [{"valueString": "x"}]}
    ]));
    let errs = errors(&v, &bad);
    let s = show(&errs);
    let item = |i: usize| format!("QuestionnaireResponse.item[{i}]");
    assert!(has(&errs, &item(0), "Only one answer"), "{s:?}");
    assert!(
        has(
            &errs,
            &format!("{}.answer[0].value.ofType(string)", item(0)),
            "maximum length of 5"
        ),
        "{s:?}"
    );
    assert!(
        has(
            &errs,
            &format!("{}.answer[0].value.ofType(string)", item(1)),
            "must be of the type integer"
        ),
        "{s:?}"
    );
    assert!(
        has(&errs, &format!("{}.answer[0]", item(2)), "exclusive option"),
        "{s:?}"
    );
    assert!(
        has(&errs, &format!("{}.answer[1]", item(2)), "permitted values"),
        "{s:?}"
    );
    assert!(
        has(&errs, &item(3), "No sub-items found for required group"),
        "{s:?}"
    );
    assert!(has(&errs, &item(4), "LinkId 'nope' not found"), "{s:?}");

    let out_of_range = response(json!([
        {"linkId": "name"},
        {"linkId": "age", "answer": [{"valueInteger": 131}]},
        {"linkId": "grp", "item": [{"linkId": "inner", "answer": [{"valueBoolean": false}]}]}
    ]));
    let errs = errors(&v, &out_of_range);
    let s = show(&errs);
    assert!(
        has(
            &errs,
            &item(0),
            "No response answer found for required item 'name'"
        ),
        "{s:?}"
    );
    assert!(
        has(
            &errs,
            &format!("{}.answer[0].value.ofType(integer)", item(1)),
            "greater than the allowed maximum of 130"
        ),
        "{s:?}"
    );
}

#[test]
fn questionnaire_canonical_must_name_a_questionnaire() {
    let v = core();
    let mut qr = response(json!([]));
    qr["questionnaire"] = json!("http://hl7.org/fhir/ValueSet/administrative-gender");
    let errs = errors(&v, &qr);
    assert!(
        has(
            &errs,
            "QuestionnaireResponse.questionnaire",
            "not a Questionnaire"
        ),
        "{:?}",
        show(&errs)
    );
}

#[test]
fn attachment_size_must_match_data() {
    let v = core();
    let mut media = json!({
        "resourceType": "Media", "status": "completed",
        "content": {"contentType": "text/plain", "data": "aGVscCBpJ20gYSBidWc=", "size": 14}
    });
    assert!(
        errors(&v, &media).is_empty(),
        "{:?}",
        show(&errors(&v, &media))
    );
    media["content"]["size"] = json!(100);
    let errs = errors(&v, &media);
    assert!(has(&errs, "Media.content", "size 100"), "{:?}", show(&errs));
}

#[test]
fn bundle_full_urls_links_and_versioned_references() {
    let v = core();
    let relative = json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": [{"fullUrl": "Patient/1", "resource": {"resourceType": "Patient", "id": "1"}}]
    });
    let errs = errors(&v, &relative);
    assert!(
        has(&errs, "Bundle.entry[0]", "absolute URL"),
        "{:?}",
        show(&errs)
    );

    let links = json!({
        "resourceType": "Bundle", "type": "searchset",
        "link": [{"relation": "self", "url": "http://x/Patient"}, {"relation": "self", "url": "http://x/Patient"}]
    });
    let errs = errors(&v, &links);
    assert!(
        has(&errs, "Bundle.link[1]", "'self' can only occur once"),
        "{:?}",
        show(&errs)
    );

    let obs = |version: &str| {
        json!({"fullUrl": "http://x/Observation/o", "resource": {
            "resourceType": "Observation", "id": "o", "meta": {"versionId": version},
            "status": "final", "code": {"text": "t"}}})
    };
    let with_refs = |refs: Value| {
        json!({
            "resourceType": "Bundle", "type": "collection",
            "entry": [
                {"fullUrl": "http://x/List/l", "resource": {"resourceType": "List", "id": "l",
                    "status": "current", "mode": "snapshot", "entry": refs}},
                obs("1"), obs("2")
            ]
        })
    };
    let good = with_refs(json!([{"item": {"reference": "Observation/o/_history/1"}}]));
    assert!(
        errors(&v, &good).is_empty(),
        "{:?}",
        show(&errors(&v, &good))
    );
    let bad = with_refs(json!([
        {"item": {"reference": "Observation/o"}},
        {"item": {"reference": "Observation/o/_history/3"}}
    ]));
    let errs = errors(&v, &bad);
    let s = show(&errs);
    assert!(
        has(
            &errs,
            "Bundle.entry[0].resource.entry[0].item",
            "Found 2 matches"
        ),
        "{s:?}"
    );
    assert!(
        has(
            &errs,
            "Bundle.entry[0].resource.entry[1].item",
            "none that version"
        ),
        "{s:?}"
    );
}

#[test]
fn regular_extension_is_not_a_modifier_and_back() {
    let ext = json!({
        "resourceType": "StructureDefinition",
        "url": "http://example.org/StructureDefinition/plain",
        "name": "Plain", "status": "active", "kind": "complex-type", "abstract": false,
        "context": [{"type": "element", "expression": "Element"}],
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {"element": [
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": "http://example.org/StructureDefinition/plain"},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "type": [{"code": "boolean"}]}
        ]}
    });
    let v = validator_with(vec![ext]);
    let use_as = |key: &str| {
        let mut p = json!({"resourceType": "Patient"});
        p[key] =
            json!([{"url": "http://example.org/StructureDefinition/plain", "valueBoolean": true}]);
        p
    };
    assert!(errors(&v, &use_as("extension")).is_empty());
    let errs = errors(&v, &use_as("modifierExtension"));
    assert!(
        has(
            &errs,
            "Patient.modifierExtension[0]",
            "must not be used as a modifierExtension"
        ),
        "{:?}",
        show(&errs)
    );
}

fn patient_profile(birth_date: Value) -> Value {
    let mut el = json!({"id": "Patient.birthDate", "path": "Patient.birthDate"});
    for (k, v) in birth_date.as_object().expect("object") {
        el[k] = v.clone();
    }
    json!({
        "resourceType": "StructureDefinition",
        "url": "http://example.org/StructureDefinition/p",
        "name": "P", "status": "active", "kind": "resource", "abstract": false,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {"element": [
            el,
            {"id": "Patient.name.family", "path": "Patient.name.family", "maxLength": 5}
        ]}
    })
}

#[test]
fn profile_min_max_values_and_max_length() {
    let opts = ValidationOptions {
        profiles: vec!["http://example.org/StructureDefinition/p".into()],
        ..ValidationOptions::default()
    };
    let v = validator_with(vec![patient_profile(json!({"minValueDate": "1900-01-01"}))]);
    let p = |birth: &str, family: &str| json!({"resourceType": "Patient", "birthDate": birth, "name": [{"family": family}]});
    assert!(errors_with(&v, &p("1950-02-03", "Ng"), &opts).is_empty());
    let errs = errors_with(&v, &p("1850-02-03", "Abernathy"), &opts);
    let s = show(&errs);
    assert!(
        has(&errs, "Patient.birthDate", "minimum 1900-01-01"),
        "{s:?}"
    );
    assert!(
        has(&errs, "Patient.name[0].family", "maximum length 5"),
        "{s:?}"
    );

    // A Duration bound on a date is relative to today: the minimum is today minus 100
    // years, so a birth date before that is out of range.
    let century = json!({"minValueDuration": {"value": 100, "system": "http://unitsofmeasure.org", "code": "a"}});
    let v = validator_with(vec![patient_profile(century)]);
    assert!(!errors_with(&v, &p("1850-02-03", "Ng"), &opts).is_empty());
    assert!(errors_with(&v, &p("1950-02-03", "Ng"), &opts).is_empty());
}

#[test]
fn differential_only_definitions_must_generate() {
    let v = core();
    let sd = |path: &str| {
        json!({
            "resourceType": "StructureDefinition",
            "url": "http://example.org/StructureDefinition/o",
            "name": "O", "status": "active", "kind": "resource", "abstract": false,
            "type": "Observation",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
            "derivation": "constraint",
            "differential": {"element": [{"id": "Observation.valueQuantity", "path": path}]}
        })
    };
    let ok = sd("Observation.valueQuantity");
    assert!(errors(&v, &ok).is_empty(), "{:?}", show(&errors(&v, &ok)));
    let errs = errors(&v, &sd("Observation.valueBla"));
    assert!(
        has(
            &errs,
            "StructureDefinition",
            "the path must be 'Observation.value[x]'"
        ),
        "{:?}",
        show(&errs)
    );
    // Re-fixing what the base fixes: Extension.url of a derived extension.
    let ext = json!({
        "resourceType": "StructureDefinition",
        "url": "http://example.org/StructureDefinition/derived",
        "name": "D", "status": "active", "kind": "complex-type", "abstract": false,
        "context": [{"type": "element", "expression": "Element"}],
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
        "derivation": "constraint",
        "differential": {"element": [
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": "http://example.org/StructureDefinition/derived"}
        ]}
    });
    let errs = errors(&v, &ext);
    assert!(
        has(&errs, "StructureDefinition", "the base fixes it"),
        "{:?}",
        show(&errs)
    );
}

#[test]
fn derived_search_parameters_keep_type_and_bases() {
    let v = core();
    let sp = |t: &str, base: &str| {
        json!({
            "resourceType": "SearchParameter",
            "url": "http://example.org/SearchParameter/n",
            "name": "n", "status": "active", "description": "d", "code": "n",
            "derivedFrom": "http://hl7.org/fhir/SearchParameter/Organization-name",
            "base": [base], "type": t, "expression": "Organization.name"
        })
    };
    let ok = sp("string", "Organization");
    assert!(errors(&v, &ok).is_empty(), "{:?}", show(&errors(&v, &ok)));
    assert!(has(
        &errors(&v, &sp("token", "Organization")),
        "SearchParameter",
        "type token"
    ));
    assert!(has(
        &errors(&v, &sp("string", "Patient")),
        "SearchParameter",
        "Patient"
    ));
}

#[test]
fn narrative_without_active_content() {
    let v = core();
    let p =
        |div: &str| json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
    let ok = p("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Ann</p></div>");
    assert!(errors(&v, &ok).is_empty());
    let errs = errors(
        &v,
        &p("<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann <script>x()</script></div>"),
    );
    assert!(has(&errs, "Patient.text.div", "txt-1"), "{:?}", show(&errs));
}

#[test]
fn security_checks_and_html_in_markdown_are_opt_in() {
    let patient =
        json!({"resourceType": "Patient", "name": [{"text": "Ann <script>x()</script>"}]});
    assert!(errors(&core(), &patient).is_empty());
    let secure = core().with_security_checks(true);
    let errs = errors(&secure, &patient);
    assert!(
        has(&errs, "Patient.name[0].text", "embedded HTML"),
        "{:?}",
        show(&errs)
    );

    let comm = json!({"resourceType": "Communication", "status": "completed",
        "note": [{"text": "see <b>here</b>"}]});
    assert!(errors(&core(), &comm).is_empty());
    let strict = core().with_no_html_in_markdown(true);
    let errs = errors(&strict, &comm);
    assert!(
        has(&errs, "Communication.note[0].text", "HTML tag"),
        "{:?}",
        show(&errs)
    );
}

#[test]
fn code_systems_are_named_absolutely() {
    let v = core();
    let obs = |system: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": system, "code": "x"}]}})
    };
    assert!(errors(&v, &obs("http://example.org/cs")).is_empty());
    let errs = errors(&v, &obs("Location1"));
    assert!(
        has(&errs, "Observation.code.coding[0].system", "absolute URI"),
        "{:?}",
        show(&errs)
    );

    let vs = json!({"resourceType": "ValueSet", "status": "active",
        "compose": {"include": [{"system": "urn:iso:std:iso:3166"}, {"system": "c1"}]}});
    let errs = errors(&v, &vs);
    assert!(
        has(&errs, "ValueSet.compose.include[1]", "must be absolute"),
        "{:?}",
        show(&errs)
    );
    assert!(!has(
        &errs,
        "ValueSet.compose.include[0]",
        "must be absolute"
    ));

    let cs = json!({"resourceType": "CodeSystem", "status": "active", "content": "complete",
        "url": "http://example.org/sup", "supplements": "http://loinc.org"});
    let errs = errors(&v, &cs);
    assert!(
        has(&errs, "CodeSystem.content", "supplement"),
        "{:?}",
        show(&errs)
    );
}

#[test]
fn bundle_local_reference_targets_meet_target_profiles() {
    let patient_profile = json!({
        "resourceType": "StructureDefinition",
        "url": "http://example.org/StructureDefinition/identified-patient",
        "name": "IP", "status": "active", "kind": "resource", "abstract": false,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Patient.identifier", "path": "Patient.identifier", "min": 1}]}
    });
    let obs_profile = json!({
        "resourceType": "StructureDefinition",
        "url": "http://example.org/StructureDefinition/obs",
        "name": "OP", "status": "active", "kind": "resource", "abstract": false,
        "type": "Observation",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Observation.subject", "path": "Observation.subject",
            "type": [{"code": "Reference", "targetProfile": ["http://example.org/StructureDefinition/identified-patient"]}]}]}
    });
    let v = validator_with(vec![patient_profile, obs_profile]);
    let bundle = |patient: Value| {
        json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "http://x/Observation/o", "resource": {"resourceType": "Observation", "id": "o",
                "meta": {"profile": ["http://example.org/StructureDefinition/obs"]},
                "status": "final", "code": {"text": "t"}, "subject": {"reference": "Patient/p"}}},
            {"fullUrl": "http://x/Patient/p", "resource": patient}
        ]})
    };
    let good =
        bundle(json!({"resourceType": "Patient", "id": "p", "identifier": [{"value": "1"}]}));
    assert!(
        errors(&v, &good).is_empty(),
        "{:?}",
        show(&errors(&v, &good))
    );
    let errs = errors(&v, &bundle(json!({"resourceType": "Patient", "id": "p"})));
    assert!(
        has(
            &errs,
            "Bundle.entry[0].resource.subject",
            "does not conform to the target profile"
        ),
        "{:?}",
        show(&errs)
    );
}

#[test]
fn slicing_discriminators_name_elements_of_the_sliced_element() {
    let v = core();
    let sd = |disc: &str| {
        json!({
            "resourceType": "StructureDefinition",
            "url": "http://example.org/StructureDefinition/ae",
            "name": "AE", "status": "active", "kind": "resource", "abstract": false,
            "type": "AuditEvent",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
            "derivation": "constraint",
            "differential": {"element": [
                {"id": "AuditEvent.agent", "path": "AuditEvent.agent",
                 "slicing": {"discriminator": [{"type": "pattern", "path": "type"}], "rules": "open"}},
                {"id": "AuditEvent.agent.extension", "path": "AuditEvent.agent.extension",
                 "slicing": {"discriminator": [{"type": "value", "path": disc}], "rules": "open"}}
            ]}
        })
    };
    let ok = sd("url");
    assert!(errors(&v, &ok).is_empty(), "{:?}", show(&errors(&v, &ok)));
    let errs = errors(&v, &sd("type"));
    assert!(
        has(
            &errs,
            "StructureDefinition.differential.element[1].slicing.discriminator[0]",
            "'type' does not name an element"
        ),
        "{:?}",
        show(&errs)
    );
}

/// dom-2..dom-5 are answered without FHIRPath when nothing is contained; with contained
/// resources they are still evaluated (dom-3: a contained resource must be referenced).
#[test]
fn contained_invariants_still_apply_when_something_is_contained() {
    let v = core();
    let obs = |reference: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "t"},
            "contained": [{"resourceType": "Patient", "id": "p"}],
            "subject": {"reference": reference}})
    };
    let ok = obs("#p");
    assert!(errors(&v, &ok).is_empty(), "{:?}", show(&errors(&v, &ok)));
    let errs = errors(&v, &obs("Patient/elsewhere"));
    assert!(has(&errs, "Observation", "dom-3"), "{:?}", show(&errs));
    // ref-1: a local reference names a contained resource.
    let errs = errors(&v, &obs("#nope"));
    assert!(
        has(&errs, "Observation.subject", "ref-1"),
        "{:?}",
        show(&errs)
    );
    let none = json!({"resourceType": "Observation", "status": "final", "code": {"text": "t"}});
    assert!(errors(&v, &none).is_empty());
    // A reference held in a primitive's extension counts (valueset-system on `_system`).
    let vs = json!({
        "resourceType": "ValueSet", "status": "active",
        "contained": [{"resourceType": "CodeSystem", "id": "c1", "status": "active",
            "content": "complete", "url": "http://example.org/cs/c1"}],
        "compose": {"include": [{"system": "http://example.org/cs/c1", "_system": {"extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/valueset-system", "valueCanonical": "#c1"}
        ]}}]}
    });
    assert!(errors(&v, &vs).is_empty(), "{:?}", show(&errors(&v, &vs)));
}
