//! XML ↔ JSON round trips on official examples, and the errors clients see.

use std::path::{Path, PathBuf};

use caregate_format::{json_to_xml, xml_to_json, FormatError};
use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/examples")
}

fn load(rel: &str) -> Value {
    let path = examples().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The first location where two JSON values differ (member order ignored), for readable
/// failures on megabyte-sized bundles.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{path}.{k}: missing after the round trip")),
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{path}.{k}: added by the round trip"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} != {b}")),
    }
}

/// JSON → XML → JSON gives the same resource (member order aside: XML imposes the FHIR
/// order), and XML → JSON → XML gives the same XML text.
#[track_caller]
fn round_trips(rel: &str) {
    let original = load(rel);
    let xml = json_to_xml(&original).unwrap_or_else(|e| panic!("{rel}: to XML: {e}"));
    assert!(xml.contains("xmlns=\"http://hl7.org/fhir\""), "{rel}");
    let back = xml_to_json(&xml).unwrap_or_else(|e| panic!("{rel}: back to JSON: {e}"));
    if let Some(diff) = first_difference(&original, &back, "") {
        panic!("{rel}: JSON -> XML -> JSON differs at {diff}");
    }
    let xml_again = json_to_xml(&back).unwrap_or_else(|e| panic!("{rel}: to XML again: {e}"));
    assert_eq!(xml_again, xml, "{rel}: XML -> JSON -> XML");
}

#[test]
fn patient_round_trips() {
    round_trips("r4-spec/Patient-example.json");
    round_trips("r4-spec/Patient-glossy.json");
}

#[test]
fn care_plan_round_trips() {
    round_trips("r4-spec/CarePlan-example.json");
    round_trips("mcc-ig/CarePlan-MCCCarePlan.json");
}

#[test]
fn observation_with_decimals_round_trips() {
    round_trips("mcc-ig/Observation-MCCweight.json");
    round_trips("mcc-ig/Observation-bunMCC.json");
}

#[test]
fn questionnaire_and_consent_round_trip() {
    round_trips("mcc-ig/Questionnaire-QuestionnaireHungerVitalSign.json");
    round_trips("r4-spec/Consent-consent-example-signature.json");
}

#[test]
fn bundle_round_trips() {
    let dir = examples().join("synthea");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("synthea dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_name().is_some_and(|n| n != "index.json")
        })
        .collect();
    files.sort();
    let first = files.first().expect("a synthea bundle");
    round_trips(&format!(
        "synthea/{}",
        first
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    ));
}

#[test]
fn every_spec_example_round_trips() {
    for dir in ["r4-spec", "mcc-ig"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(examples().join(dir))
            .expect("examples dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for file in files {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            round_trips(&format!("{dir}/{name}"));
        }
    }
}

#[test]
fn decimals_keep_their_lexical_form() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Observation xmlns="http://hl7.org/fhir">
  <status value="final"/>
  <code><text value="weight"/></code>
  <valueQuantity>
    <value value="72.50"/>
    <unit value="kg"/>
  </valueQuantity>
</Observation>"#;
    let json = xml_to_json(xml).expect("valid XML");
    let value = &json["valueQuantity"]["value"];
    assert_eq!(value.to_string(), "72.50");
    let back = json_to_xml(&json).expect("to XML");
    assert!(back.contains("<value value=\"72.50\"/>"), "{back}");
    // and from JSON text, as a client would send it
    let parsed: Value = serde_json::from_str(r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}"#)
        .expect("json");
    let xml = json_to_xml(&parsed).expect("to XML");
    assert!(xml.contains("<value value=\"1.50\"/>"), "{xml}");
}

#[test]
fn narrative_is_kept_verbatim() {
    // fhirbolt alone would drop the spaces around <b>, the lang attribute and the comment.
    let xml = "<Patient xmlns=\"http://hl7.org/fhir\"><text><status value=\"generated\"/>\
        <div xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">Hello <b>big</b> <!-- c --> world</div></text></Patient>";
    let json = xml_to_json(xml).expect("valid");
    assert_eq!(
        json["text"]["div"],
        "<div xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">Hello <b>big</b> <!-- c --> world</div>"
    );
    let back = json_to_xml(&json).expect("to XML");
    assert!(
        back.contains("lang=\"en\">Hello <b>big</b> <!-- c --> world</div>"),
        "{back}"
    );
    assert_eq!(xml_to_json(&back).expect("again"), json);
}

#[test]
fn malformed_narrative_in_json_is_an_error() {
    let mut patient = load("r4-spec/Patient-example.json");
    patient["text"]["div"] =
        Value::String("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>unclosed</div>".into());
    let err = json_to_xml(&patient).expect_err("bad xhtml");
    assert!(matches!(err, FormatError::InvalidJson { .. }), "{err:?}");
    patient["text"]["div"] = Value::String("<div>no namespace</div>".into());
    assert!(json_to_xml(&patient).is_err());
}

#[test]
fn doctype_is_refused() {
    let xml = "<?xml version=\"1.0\"?>\n<!DOCTYPE Patient [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\n<Patient xmlns=\"http://hl7.org/fhir\"/>";
    assert!(xml_to_json(xml).is_err());
}

#[test]
fn repeating_elements_become_arrays() {
    let xml = r#"<Patient xmlns="http://hl7.org/fhir"><name><given value="Peter"/></name><birthDate value="1974-12-25"/></Patient>"#;
    let json = xml_to_json(xml).expect("valid");
    assert_eq!(json["name"][0]["given"][0], "Peter");
    assert_eq!(json["birthDate"], "1974-12-25");
}

#[test]
fn malformed_xml_is_an_error_with_a_line() {
    let xml = "<Patient xmlns=\"http://hl7.org/fhir\">\n  <active value=\"true\">\n</Patient>";
    let err = xml_to_json(xml).expect_err("malformed");
    assert!(matches!(err, FormatError::MalformedXml { .. }), "{err:?}");
    assert!(err.to_string().contains("line"), "{err}");
    let err = xml_to_json("not xml at all").expect_err("not xml");
    assert!(
        matches!(
            err,
            FormatError::MalformedXml { .. } | FormatError::InvalidXml { .. }
        ),
        "{err:?}"
    );
    assert!(xml_to_json("").is_err());
}

#[test]
fn unknown_element_is_an_error_naming_it() {
    let xml = "<Patient xmlns=\"http://hl7.org/fhir\">\n  <active value=\"true\"/>\n  <foo value=\"1\"/>\n</Patient>";
    let err = xml_to_json(xml).expect_err("unknown element");
    let FormatError::InvalidXml { message, line } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(message, "unknown element 'foo'");
    assert_eq!(*line, Some(3));
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn wrong_namespace_or_unknown_resource_is_an_error() {
    assert!(xml_to_json("<Patient><active value=\"true\"/></Patient>").is_err());
    assert!(xml_to_json("<Patinet xmlns=\"http://hl7.org/fhir\"/>").is_err());
}

#[test]
fn invalid_json_has_no_xml_form() {
    let err = json_to_xml(&serde_json::json!({"resourceType": "Patient", "foo": 1}))
        .expect_err("unknown element");
    assert!(matches!(err, FormatError::InvalidJson { .. }), "{err:?}");
    assert!(err.to_string().contains("foo"), "{err}");
    assert!(json_to_xml(&serde_json::json!([1])).is_err());
    assert!(json_to_xml(&serde_json::json!({"resourceType": "Nope"})).is_err());
}
