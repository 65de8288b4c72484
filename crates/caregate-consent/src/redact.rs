//! What "release redacted" (the `REDACT` obligation) does to a FHIR resource.
//!
//! Redaction keeps what a reader needs to know that the data exists and to whom and when it
//! belongs — so care can be coordinated and the full record asked for through the right
//! channel — and removes everything that says what it is about:
//!
//! - kept: `resourceType`, `id`, `meta` (labels included), `language`, the status elements
//!   (`status`, `clinicalStatus`, `verificationStatus`, `intent`), the patient (`subject`,
//!   `patient`), `encounter`, and the clinical and record dates;
//! - removed: everything else — narrative `text`, `note`, `value[x]`, `description`, codes
//!   and categories, `contained`, extensions, performers and authors, attachments;
//! - elements the base resource requires (e.g. `Observation.code`) are kept present but
//!   empty of content, carrying the `data-absent-reason` extension with code `masked`;
//! - `meta.security` gains `REDACTED` (v3-ObservationValue), so the reader (and anything
//!   it forwards the resource to) can tell the copy is incomplete.
//!
//! An allow-list rather than a list of sensitive elements: a resource type or an extension
//! nobody thought of is removed, not leaked.

use serde_json::{json, Map, Value};

pub const OBSERVATION_VALUE: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
const DATA_ABSENT_REASON: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

/// Elements kept on every resource type.
const KEPT: [&str; 29] = [
    "resourceType",
    "id",
    "meta",
    "language",
    "status",
    "clinicalStatus",
    "verificationStatus",
    "intent",
    "subject",
    "patient",
    "encounter",
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveInstant",
    "issued",
    "onsetDateTime",
    "onsetPeriod",
    "abatementDateTime",
    "recordedDate",
    "authoredOn",
    "occurrenceDateTime",
    "occurrencePeriod",
    "performedDateTime",
    "performedPeriod",
    "period",
    "date",
    "created",
    "lastModified",
    "sent",
];

/// How a required element is kept present without content.
enum Masked {
    /// A CodeableConcept (or other complex datatype) holding only the masked extension.
    Complex,
    /// A list of one element of the given shape.
    ListOf(&'static str),
}

/// Elements the base R4 resource requires (min 1) that are not in [`KEPT`].
fn required(resource_type: &str) -> &'static [(&'static str, Masked)] {
    match resource_type {
        "Observation" | "DiagnosticReport" => &[("code", Masked::Complex)],
        "MedicationRequest" | "MedicationStatement" | "MedicationAdministration" => {
            &[("medicationCodeableConcept", Masked::Complex)]
        }
        "DocumentReference" => &[("content", Masked::ListOf("attachment"))],
        "Composition" => &[("type", Masked::Complex), ("author", Masked::ListOf(""))],
        _ => &[],
    }
}

fn masked() -> Value {
    json!({"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]})
}

/// Removes the sensitive content of `resource` in place (see the module docs).
pub fn redact(resource: &mut Value) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let rtype = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    obj.retain(|k, _| KEPT.contains(&k.as_str()));
    for (key, shape) in required(&rtype) {
        let v = match shape {
            Masked::Complex => masked(),
            Masked::ListOf("") => json!([masked()]),
            Masked::ListOf(inner) => {
                let mut m = Map::new();
                m.insert((*inner).to_string(), masked());
                json!([m])
            }
        };
        obj.insert((*key).to_string(), v);
    }
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    if let Some(meta) = meta.as_object_mut() {
        let security = meta.entry("security").or_insert_with(|| json!([]));
        if !security.is_array() {
            *security = json!([]);
        }
        if let Some(security) = security.as_array_mut() {
            if !is_redacted_labels(security) {
                security.push(json!({
                    "system": OBSERVATION_VALUE,
                    "code": "REDACTED",
                    "display": "redacted"
                }));
            }
        }
    }
}

fn is_redacted_labels(security: &[Value]) -> bool {
    security.iter().any(|l| {
        l.get("system").and_then(Value::as_str) == Some(OBSERVATION_VALUE)
            && l.get("code").and_then(Value::as_str) == Some("REDACTED")
    })
}

/// Whether `resource` is a redacted copy.
pub fn is_redacted(resource: &Value) -> bool {
    resource
        .pointer("/meta/security")
        .and_then(Value::as_array)
        .is_some_and(|s| is_redacted_labels(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_who_and_when_and_removes_what() {
        let mut note = json!({
            "resourceType": "Observation", "id": "o1",
            "meta": {"versionId": "2", "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSYTHPN"}]},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">talked about the divorce</div>"},
            "status": "final",
            "category": [{"coding": [{"code": "social-history"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}], "text": "Consult note"},
            "subject": {"reference": "Patient/p"},
            "effectiveDateTime": "2025-01-02",
            "performer": [{"reference": "Practitioner/psy"}],
            "valueString": "patient disclosed ...",
            "note": [{"text": "details"}],
            "extension": [{"url": "urn:x", "valueString": "secret"}]
        });
        redact(&mut note);
        let keys: Vec<&str> = note
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for gone in [
            "text",
            "category",
            "performer",
            "valueString",
            "note",
            "extension",
        ] {
            assert!(!keys.contains(&gone), "{gone} kept: {note}");
        }
        assert_eq!(note["subject"]["reference"], "Patient/p");
        assert_eq!(note["effectiveDateTime"], "2025-01-02");
        assert_eq!(note["status"], "final");
        assert_eq!(note["meta"]["versionId"], "2");
        // Observation.code is required: present, but only saying it was masked.
        assert_eq!(
            note["code"]["extension"][0]["valueCode"], "masked",
            "{note}"
        );
        assert!(note["code"].get("coding").is_none());
        assert!(is_redacted(&note));
        // The source's labels stay; REDACTED is added once even when redacted twice.
        redact(&mut note);
        let codes: Vec<&str> = note["meta"]["security"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l["code"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(codes, vec!["PSYTHPN", "REDACTED"]);
    }

    #[test]
    fn required_lists_stay_present_and_unknown_types_keep_only_the_allow_list() {
        let mut doc = json!({"resourceType": "DocumentReference", "id": "d", "status": "current",
            "content": [{"attachment": {"contentType": "text/plain", "data": "c2VjcmV0"}}],
            "description": "session 4"});
        redact(&mut doc);
        assert_eq!(
            doc["content"][0]["attachment"]["extension"][0]["valueCode"],
            "masked"
        );
        assert!(doc.get("description").is_none());
        assert!(doc["content"][0]["attachment"].get("data").is_none());
        let mut other = json!({"resourceType": "Basic", "id": "b", "code": {"text": "x"}, "subject": {"reference": "Patient/p"}});
        redact(&mut other);
        assert!(other.get("code").is_none());
        assert_eq!(other["subject"]["reference"], "Patient/p");
        assert!(is_redacted(&other));
        assert!(!is_redacted(&json!({"resourceType": "Basic"})));
    }
}
