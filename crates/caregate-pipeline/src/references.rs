//! Reference rewriting for transactions: `urn:uuid:` (and other) fullUrls become the
//! `Type/id` the server assigned, everywhere a `reference` names them.

use std::collections::HashMap;

use serde_json::Value;

/// Replaces every `reference` value found in `map` (and every `Attachment.url` /
/// `uri`-typed value that is exactly a mapped `urn:uuid:`).
pub(crate) fn rewrite(value: &mut Value, map: &HashMap<String, String>) {
    match value {
        Value::Object(obj) => {
            for (key, v) in obj.iter_mut() {
                match v {
                    Value::String(s) if key == "reference" => {
                        if let Some(new) = map.get(s.as_str()) {
                            *s = new.clone();
                        }
                    }
                    Value::String(s) if s.starts_with("urn:uuid:") => {
                        if let Some(new) = map.get(s.as_str()) {
                            *s = new.clone();
                        }
                    }
                    _ => rewrite(v, map),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite(item, map);
            }
        }
        _ => {}
    }
}

/// Every distinct conditional reference (`Patient?identifier=...`) in a resource.
pub(crate) fn conditional_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(obj) => {
            for (key, v) in obj {
                match v {
                    Value::String(s) if key == "reference" && is_conditional(s) => {
                        if !out.contains(s) {
                            out.push(s.clone());
                        }
                    }
                    _ => conditional_references(v, out),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                conditional_references(item, out);
            }
        }
        _ => {}
    }
}

fn is_conditional(reference: &str) -> bool {
    match reference.split_once('?') {
        Some((ty, _)) => caregate_core::is_resource_type(ty),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rewrites_nested_references() {
        let mut v = json!({
            "resourceType": "CarePlan",
            "subject": {"reference": "urn:uuid:1"},
            "activity": [{"detail": {"performer": [{"reference": "urn:uuid:2"}, {"reference": "Practitioner/x"}]}}]
        });
        let map = HashMap::from([
            ("urn:uuid:1".to_string(), "Patient/a".to_string()),
            ("urn:uuid:2".to_string(), "Practitioner/b".to_string()),
        ]);
        rewrite(&mut v, &map);
        assert_eq!(v["subject"]["reference"], "Patient/a");
        assert_eq!(
            v["activity"][0]["detail"]["performer"][0]["reference"],
            "Practitioner/b"
        );
        assert_eq!(
            v["activity"][0]["detail"]["performer"][1]["reference"],
            "Practitioner/x"
        );
    }

    #[test]
    fn finds_conditional_references() {
        let v = json!({"subject": {"reference": "Patient?identifier=a|1"}, "x": {"reference": "Patient/1"}});
        let mut out = Vec::new();
        conditional_references(&v, &mut out);
        assert_eq!(out, vec!["Patient?identifier=a|1".to_string()]);
    }
}
