//! Fallbacks for JSON the model does not describe (unknown elements, documents of another
//! version): the data type names that can end a choice element's JSON key
//! (`valueQuantity`), and a shape-based guess for values whose type nothing else tells.

use serde_json::Value;

/// R4 data types that can appear as the suffix of a choice element (`value[x]`).
const CHOICE_TYPES: &[&str] = &[
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "CodeableConcept",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Contributor",
    "Count",
    "DataRequirement",
    "Date",
    "DateTime",
    "Decimal",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "HumanName",
    "Id",
    "Identifier",
    "Instant",
    "Integer",
    "Markdown",
    "Meta",
    "Money",
    "Oid",
    "ParameterDefinition",
    "Period",
    "PositiveInt",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "String",
    "Time",
    "Timing",
    "TriggerDefinition",
    "UnsignedInt",
    "Uri",
    "Url",
    "UsageContext",
    "Uuid",
];

/// When `key` is `name` followed by a choice type (`valueQuantity` for `value`), that type.
pub(crate) fn choice_suffix<'k>(key: &'k str, name: &str) -> Option<&'k str> {
    let suffix = key.strip_prefix(name)?;
    if suffix.starts_with(|c: char| c.is_ascii_uppercase()) && CHOICE_TYPES.contains(&suffix) {
        Some(suffix)
    } else {
        None
    }
}

/// Best guess whether an untyped JSON value (not reached through a choice key) is a `wanted`.
/// Resources answer by `resourceType`; data types by their characteristic elements.
pub(crate) fn shape_matches(v: &Value, wanted: &str) -> bool {
    let w = wanted.to_ascii_lowercase();
    match v {
        Value::String(s) => match w.as_str() {
            "string" | "code" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid"
            | "markdown" | "base64binary" => true,
            "date" | "datetime" | "instant" => caregate_core::parse_date_range(s).is_some(),
            "time" => s.len() >= 5 && s.as_bytes().get(2) == Some(&b':'),
            _ => false,
        },
        Value::Bool(_) => w == "boolean",
        Value::Number(n) => match w.as_str() {
            "decimal" => true,
            "integer" | "positiveint" | "unsignedint" => {
                n.as_i64().is_some() || n.as_u64().is_some()
            }
            _ => false,
        },
        Value::Object(m) => {
            if let Some(rt) = m.get("resourceType").and_then(Value::as_str) {
                return rt == wanted || wanted == "Resource" || wanted == "DomainResource";
            }
            let has = |k: &str| m.contains_key(k);
            match w.as_str() {
                "reference" => {
                    has("reference")
                        || (has("identifier") && !has("system"))
                        || (has("display") && !has("code"))
                }
                "codeableconcept" => has("coding") || (has("text") && m.len() == 1),
                "coding" => {
                    (has("code") && !has("value"))
                        || (has("system") && !has("value") && !has("coding"))
                }
                "identifier" => has("value") && !m.get("value").is_some_and(Value::is_number),
                "contactpoint" => {
                    has("value") && has("system") && !m.get("value").is_some_and(Value::is_number)
                }
                "quantity" | "age" | "duration" | "distance" | "count" | "simplequantity" => {
                    m.get("value").is_some_and(Value::is_number) || has("comparator")
                }
                "money" => has("currency"),
                "period" => has("start") || has("end"),
                "range" => has("low") || has("high"),
                "ratio" => has("numerator") || has("denominator"),
                "humanname" => has("family") || has("given"),
                "address" => has("line") || has("city") || has("postalCode") || has("country"),
                "attachment" => has("contentType") || has("data") || (has("url") && has("title")),
                "timing" => has("event") || has("repeat"),
                "extension" => has("url") && !has("resourceType"),
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn choice_suffixes() {
        assert_eq!(choice_suffix("valueQuantity", "value"), Some("Quantity"));
        assert_eq!(choice_suffix("valueSet", "value"), None);
        assert_eq!(choice_suffix("value", "value"), None);
        assert_eq!(choice_suffix("valuequantity", "value"), None);
    }

    #[test]
    fn type_tests() {
        assert!(shape_matches(
            &json!({"reference": "Patient/1"}),
            "Reference"
        ));
        assert!(shape_matches(
            &json!({"resourceType": "Patient"}),
            "Patient"
        ));
        assert!(shape_matches(
            &json!({"resourceType": "Patient"}),
            "Resource"
        ));
        assert!(!shape_matches(&json!("x"), "boolean"));
        assert!(shape_matches(&json!("2024-01-01"), "date"));
    }
}
