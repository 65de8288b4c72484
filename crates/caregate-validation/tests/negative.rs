//! One targeted test per structural check: the exact FHIRPath location and issue code.

use caregate_core::{Issue, IssueCode, Severity};
use caregate_validation::StructureModel;
use serde_json::{json, Value};

fn issues(resource: Value) -> Vec<Issue> {
    StructureModel::r4_core().validate(&resource)
}

/// Asserts exactly one error, at `expression`, with `code`; returns its diagnostics.
#[track_caller]
fn single(resource: Value, expression: &str, code: IssueCode) -> String {
    let found = issues(resource);
    assert_eq!(found.len(), 1, "expected one issue, got {found:#?}");
    let issue = &found[0];
    assert_eq!(issue.severity, Severity::Error);
    assert_eq!(issue.expression, vec![expression.to_string()], "{issue:?}");
    assert_eq!(issue.code, code, "{issue:?}");
    issue.diagnostics.clone()
}

#[track_caller]
fn valid(resource: Value) {
    let found = issues(resource);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn minimal_resources_are_valid() {
    valid(json!({"resourceType": "Patient"}));
    valid(
        json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male", "birthDate": "1974-12-25", "deceasedBoolean": false, "multipleBirthInteger": 2}),
    );
    valid(
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
        "valueQuantity": {"value": 72.50, "unit": "kg"}}),
    );
}

#[test]
fn root_must_be_a_known_resource() {
    let found = issues(json!([1, 2]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].code, IssueCode::Structure);
    let found = issues(json!({"id": "x"}));
    assert_eq!(found[0].code, IssueCode::Structure);
    assert!(found[0].diagnostics.contains("resourceType"));
    let found = issues(json!({"resourceType": "Patinet"}));
    assert_eq!(found[0].code, IssueCode::Invalid);
    assert!(found[0].diagnostics.contains("Patinet"));
    let found = issues(json!({"resourceType": "DomainResource"}));
    assert_eq!(found[0].code, IssueCode::Invalid);
    // A datatype is not a resource; root issues have no location.
    let found = issues(json!({"resourceType": "Attachment"}));
    assert_eq!(found[0].code, IssueCode::Invalid);
    assert!(found[0].expression.is_empty());
    let found = issues(json!({"resourceType": 12}));
    assert_eq!(found[0].code, IssueCode::Structure);
}

#[test]
fn unknown_elements() {
    let d = single(
        json!({"resourceType": "Patient", "foo": 1}),
        "Patient.foo",
        IssueCode::Structure,
    );
    assert_eq!(d, "Unknown element 'foo'");
    single(
        json!({"resourceType": "Patient", "name": [{"family": "x"}, {"given": ["a"], "nickname": "b"}]}),
        "Patient.name[1].nickname",
        IssueCode::Structure,
    );
    // resourceType is only a property of resources.
    single(
        json!({"resourceType": "Patient", "name": [{"resourceType": "HumanName", "family": "x"}]}),
        "Patient.name[0].resourceType",
        IssueCode::Structure,
    );
    // A choice variant that the element does not allow.
    single(
        json!({"resourceType": "Patient", "deceasedString": "yes"}),
        "Patient.deceasedString",
        IssueCode::Structure,
    );
}

#[test]
fn array_versus_single() {
    let d = single(
        json!({"resourceType": "Patient", "name": {"family": "x"}}),
        "Patient.name",
        IssueCode::Structure,
    );
    assert!(d.contains("array"), "{d}");
    single(
        json!({"resourceType": "Patient", "gender": ["male"]}),
        "Patient.gender",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "name": [{"given": "Peter"}]}),
        "Patient.name[0].given",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "maritalStatus": [{"text": "x"}]}),
        "Patient.maritalStatus",
        IssueCode::Structure,
    );
}

#[test]
fn json_types_of_primitives() {
    single(
        json!({"resourceType": "Patient", "active": "true"}),
        "Patient.active",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "birthDate": 1974}),
        "Patient.birthDate",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "multipleBirthInteger": "2"}),
        "Patient.multipleBirthInteger",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "multipleBirthInteger": 2.5}),
        "Patient.multipleBirthInteger",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "multipleBirthInteger": 2147483648_i64}),
        "Patient.multipleBirthInteger",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "72.5"}}),
        "Observation.valueQuantity.value",
        IssueCode::Structure,
    );
    // positiveInt ≥ 1, unsignedInt ≥ 0
    let timing = |count: Value| {
        json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": "Patient/1"},
        "activity": [{"detail": {"status": "scheduled", "scheduledTiming": {"repeat": {"count": count}}}}]})
    };
    single(
        timing(json!(0)),
        "CarePlan.activity[0].detail.scheduledTiming.repeat.count",
        IssueCode::Value,
    );
    valid(timing(json!(1)));
}

#[test]
fn unsigned_int_accepts_zero_and_rejects_negative() {
    let bundle =
        |total: Value| json!({"resourceType": "Bundle", "type": "searchset", "total": total});
    valid(bundle(json!(0)));
    single(bundle(json!(-1)), "Bundle.total", IssueCode::Value);
}

#[test]
fn primitive_formats() {
    let d = single(
        json!({"resourceType": "Patient", "birthDate": "2023-02-30"}),
        "Patient.birthDate",
        IssueCode::Value,
    );
    assert!(d.contains("date") && d.contains("2023-02-30"), "{d}");
    single(
        json!({"resourceType": "Patient", "deceasedDateTime": "2023-02-01T10:00:00"}),
        "Patient.deceasedDateTime",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "meta": {"lastUpdated": "2023-02-01"}}),
        "Patient.meta.lastUpdated",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "gender": " male"}),
        "Patient.gender",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "gender": "a  b"}),
        "Patient.gender",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "id": "a_b"}),
        "Patient.id",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "implicitRules": "http://a b"}),
        "Patient.implicitRules",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "name": [{"given": ["Peter", ""]}]}),
        "Patient.name[0].given[1]",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "name": [{"text": "bell\u{7}"}]}),
        "Patient.name[0].text",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "photo": [{"data": "not base64!"}]}),
        "Patient.photo[0].data",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "1"}, {"system": "urn:oid:01"}]}),
        "Patient.identifier[1].system",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "meta": {"profile": ["http://x y"]}}),
        "Patient.meta.profile[0]",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Patient", "text": {"status": "generated", "div": "no markup"}}),
        "Patient.text.div",
        IssueCode::Value,
    );
    single(
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueTime": "25:00:00"}),
        "Observation.valueTime",
        IssueCode::Value,
    );
}

#[test]
fn primitive_extensions() {
    let ext = json!({"extension": [{"url": "http://example.org/x", "valueString": "y"}]});
    valid(
        json!({"resourceType": "Patient", "birthDate": "1970", "_birthDate": {"id": "b1", "extension": ext["extension"]}}),
    );
    // extension instead of a value
    valid(json!({"resourceType": "Patient", "_birthDate": ext}));
    // array alignment, null where the extension carries the content
    valid(
        json!({"resourceType": "Patient", "name": [{"given": ["a", null], "_given": [null, ext]}]}),
    );
    // _x without x and without extensions
    single(
        json!({"resourceType": "Patient", "_birthDate": {"id": "b1"}}),
        "Patient.birthDate",
        IssueCode::Structure,
    );
    // content of _x is checked as Element
    single(
        json!({"resourceType": "Patient", "birthDate": "1970", "_birthDate": {"foo": 1}}),
        "Patient.birthDate.foo",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "name": [{"given": ["a"], "_given": [{"extension": [{"valueString": "y"}]}]}]}),
        "Patient.name[0].given[0].extension[0].url",
        IssueCode::Required,
    );
    // null without a matching _ entry
    single(
        json!({"resourceType": "Patient", "name": [{"given": ["a", null]}]}),
        "Patient.name[0].given[1]",
        IssueCode::Structure,
    );
    // misaligned arrays
    single(
        json!({"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [null, ext, null]}]}),
        "Patient.name[0].given",
        IssueCode::Structure,
    );
    // _x of a complex element
    single(
        json!({"resourceType": "Patient", "_name": ext}),
        "Patient._name",
        IssueCode::Structure,
    );
    // single-valued _x must not be an array
    single(
        json!({"resourceType": "Patient", "birthDate": "1970", "_birthDate": [ext]}),
        "Patient.birthDate",
        IssueCode::Structure,
    );
}

#[test]
fn nulls_and_empties() {
    single(
        json!({"resourceType": "Patient", "gender": null}),
        "Patient.gender",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "name": []}),
        "Patient.name",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "maritalStatus": {}}),
        "Patient.maritalStatus",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "name": [{}]}),
        "Patient.name[0]",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "name": [null]}),
        "Patient.name[0]",
        IssueCode::Structure,
    );
}

#[test]
fn required_elements() {
    let d = single(
        json!({"resourceType": "CarePlan", "intent": "plan", "subject": {"reference": "Patient/1"}}),
        "CarePlan.status",
        IssueCode::Required,
    );
    assert_eq!(d, "Missing required element 'status'");
    // inside a backbone element
    single(
        json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": "Patient/1"},
            "activity": [{"detail": {"code": {"text": "x"}}}]}),
        "CarePlan.activity[0].detail.status",
        IssueCode::Required,
    );
    // a required choice: one variant is enough, none is an error
    valid(
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationReference": {"reference": "Medication/1"}, "subject": {"reference": "Patient/1"}}),
    );
    let d = single(
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/1"}}),
        "MedicationRequest.medication",
        IssueCode::Required,
    );
    assert!(d.contains("medication[x]"), "{d}");
    // a required primitive given only as an extension counts as present
    valid(
        json!({"resourceType": "CarePlan", "_status": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]},
        "intent": "plan", "subject": {"reference": "Patient/1"}}),
    );
}

#[test]
fn only_one_choice_variant() {
    single(
        json!({"resourceType": "Patient", "deceasedBoolean": true, "deceasedDateTime": "2020"}),
        "Patient.deceasedDateTime",
        IssueCode::Structure,
    );
}

#[test]
fn contained_and_nested_resources() {
    single(
        json!({"resourceType": "Patient", "contained": [{"resourceType": "Practitioner", "id": "p", "name": [{"family": "x", "foo": 1}]}]}),
        "Patient.contained[0].name[0].foo",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "contained": [{"id": "p"}]}),
        "Patient.contained[0]",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o",
            "contained": [{"resourceType": "Organization", "id": "o2"}]}]}),
        "Patient.contained[0].contained",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient"}},
            {"resource": {"resourceType": "Patient"}},
            {"resource": {"resourceType": "CarePlan", "intent": "plan", "subject": {"reference": "Patient/1"}}}]}),
        "Bundle.entry[2].resource.status",
        IssueCode::Required,
    );
    single(
        json!({"resourceType": "Parameters", "parameter": [{"name": "p", "resource": {"resourceType": "Patient", "gender": 1}}]}),
        "Parameters.parameter[0].resource.gender",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Parameters", "parameter": [{"name": "p", "resource": {"resourceType": "Nope"}}]}),
        "Parameters.parameter[0].resource",
        IssueCode::Invalid,
    );
    single(
        json!({"resourceType": "Patient", "contained": [{"resourceType": "Practitioner", "id": "bad id"}]}),
        "Patient.contained[0].id",
        IssueCode::Value,
    );
}

#[test]
fn content_references_reuse_backbone_tables() {
    valid(json!({"resourceType": "Questionnaire", "status": "draft",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}]}));
    single(
        json!({"resourceType": "Questionnaire", "status": "draft",
            "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "bogus": true}]}]}),
        "Questionnaire.item[0].item[0].bogus",
        IssueCode::Structure,
    );
    single(
        json!({"resourceType": "Questionnaire", "status": "draft",
            "item": [{"linkId": "1", "type": "group", "item": [{"type": "string"}]}]}),
        "Questionnaire.item[0].item[0].linkId",
        IssueCode::Required,
    );
}

#[test]
fn required_binding_on_code() {
    let d = single(
        json!({"resourceType": "Patient", "gender": "robot"}),
        "Patient.gender",
        IssueCode::CodeInvalid,
    );
    assert!(
        d.contains("robot") && d.contains("administrative-gender"),
        "{d}"
    );
    valid(json!({"resourceType": "Patient", "gender": "unknown"}));
    // Repeating bound codes carry the index.
    single(
        json!({"resourceType": "Patient", "name": [{"family": "x", "use": "nick"}]}),
        "Patient.name[0].use",
        IssueCode::CodeInvalid,
    );
}

#[test]
fn required_binding_on_codeable_concept() {
    let cc = |code: &str| {
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": code}]}})
    };
    valid(cc("active"));
    let d = single(
        cc("dormant"),
        "Condition.clinicalStatus",
        IssueCode::CodeInvalid,
    );
    assert!(d.contains("dormant"), "{d}");
    // Text alone does not satisfy a required binding.
    single(
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": {"text": "active"}}),
        "Condition.clinicalStatus",
        IssueCode::CodeInvalid,
    );
}

#[test]
fn extensible_and_uncheckable_bindings_warn() {
    // Extensible: text only passes; a code outside the value set is a warning.
    let text_only =
        issues(json!({"resourceType": "Patient", "maritalStatus": {"text": "it's complicated"}}));
    assert!(text_only.is_empty(), "{text_only:?}");
    let found = issues(
        json!({"resourceType": "Patient", "maritalStatus": {"coding": [{"system": "http://example.org/ms", "code": "X"}]}}),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].severity, Severity::Warning);
    assert_eq!(found[0].expression, vec!["Patient.maritalStatus"]);
    // Preferred LOINC binding: cannot be checked here, said so as information.
    let found = issues(
        json!({"resourceType": "DiagnosticReport", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]}}),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].severity, Severity::Information);
    assert!(
        found[0].diagnostics.contains("LOINC"),
        "{}",
        found[0].diagnostics
    );
}

#[test]
fn quantity_units_under_required_binding() {
    let age = |code: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/1"},
            "valueQuantity": {"value": 1},
            "component": [{"code": {"text": "age"}, "valueQuantity": {"value": 3, "system": "http://unitsofmeasure.org", "code": code}}]})
    };
    // Observation.value[x] Quantity has no binding in core: anything passes.
    valid(age("m"));
    // Money.currency is required: ISO 4217 is carried locally.
    single(
        json!({"resourceType": "Claim", "status": "active", "type": {"text": "x"}, "use": "claim",
            "patient": {"reference": "Patient/1"}, "created": "2020-01-01", "provider": {"reference": "Organization/1"},
            "priority": {"text": "normal"}, "insurance": [{"sequence": 1, "focal": true, "coverage": {"reference": "Coverage/1"}}],
            "total": {"value": 1, "currency": "XYZ"}}),
        "Claim.total.currency",
        IssueCode::CodeInvalid,
    );
}
