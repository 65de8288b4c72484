//! Turning evaluated FHIRPath items into index values, by parameter type and by the JSON
//! shape of the element (the evaluator does not know FHIR types, the shapes are distinctive).

use caregate_core::json::{field, member};
use caregate_core::{is_resource_type, parse_date_range, DateRange};
use caregate_fhirpath::Item;
use caregate_store::index::{IndexEntry, IndexValue};
use serde_json::{Map, Value};

use crate::registry::ParamType;
use crate::text::normalize_string;

/// Elements of HumanName and Address indexed by a string parameter on the whole datatype.
const STRING_PARTS: &[&str] = &[
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
];

/// `ContactPoint.system` codes: a `{system, value}` object with one of these is a
/// ContactPoint, otherwise an Identifier.
const CONTACT_SYSTEMS: &[&str] = &["phone", "fax", "email", "pager", "url", "sms", "other"];

pub(crate) fn index_item(key: &str, ty: ParamType, item: &Item<'_>, out: &mut Vec<IndexEntry>) {
    let mut push = |value: IndexValue| {
        out.push(IndexEntry {
            param: key.to_string(),
            value,
        })
    };
    match item {
        Item::Node { value, .. } => index_value(ty, unwrap_extension(value), &mut push),
        Item::Str(s) => index_value(ty, &Value::String(s.clone()), &mut push),
        Item::Bool(b) => {
            if ty == ParamType::Token {
                push(token(None, Some(if *b { "true" } else { "false" }), None));
            }
        }
        Item::Integer(_) | Item::Decimal(_) => {
            let text = match item {
                Item::Integer(i) => i.to_string(),
                Item::Decimal(d) => d.to_string(),
                _ => return,
            };
            match ty {
                ParamType::Number => {
                    if let Ok(n) = text.parse::<f64>() {
                        push(IndexValue::Number(n));
                    }
                }
                ParamType::Token => push(token(None, Some(&text), None)),
                _ => {}
            }
        }
        // Computed dates and quantities index like their FHIR JSON form.
        Item::Temporal(_) | Item::Quantity(_) => index_value(ty, &item.to_json(), &mut push),
        Item::TypeInfo { .. } => {}
    }
}

/// Drops entries after `start` equal to an earlier one of the same parameter.
pub(crate) fn dedup_from(out: &mut Vec<IndexEntry>, start: usize) {
    let mut i = start + 1;
    while i < out.len() {
        if out[start..i].iter().any(|e| e.value == out[i].value) {
            out.remove(i);
        } else {
            i += 1;
        }
    }
}

/// An Extension (reached through `extension('url')`) is indexed by its `value[x]`.
fn unwrap_extension(v: &Value) -> &Value {
    let Value::Object(m) = v else { return v };
    if !member(m, "url").is_some_and(Value::is_string) {
        return v;
    }
    m.iter()
        .find(|(k, _)| {
            k.strip_prefix("value")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        })
        .map_or(v, |(_, value)| value)
}

fn index_value(ty: ParamType, v: &Value, push: &mut impl FnMut(IndexValue)) {
    match ty {
        ParamType::String => string_values(v, push),
        ParamType::Token => token_values(v, push),
        ParamType::Reference => reference_values(v, push),
        ParamType::Date => date_values(v, push),
        ParamType::Number => {
            if let Some(n) = v.as_number().and_then(serde_json::Number::as_f64) {
                push(IndexValue::Number(n));
            }
        }
        ParamType::Quantity => quantity_values(v, push),
        ParamType::Uri => {
            if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
                push(IndexValue::Uri(s.to_string()));
            }
        }
    }
}

fn string_value(s: &str) -> Option<IndexValue> {
    if s.trim().is_empty() {
        return None;
    }
    Some(IndexValue::String {
        normalized: normalize_string(s),
        exact: s.to_string(),
    })
}

fn string_values(v: &Value, push: &mut impl FnMut(IndexValue)) {
    match v {
        Value::String(s) => push_opt(push, string_value(s)),
        Value::Object(m) => {
            for part in STRING_PARTS {
                for s in strings_of(member(m, part)) {
                    push_opt(push, string_value(s));
                }
            }
        }
        _ => {}
    }
}

fn push_opt(push: &mut impl FnMut(IndexValue), v: Option<IndexValue>) {
    if let Some(v) = v {
        push(v);
    }
}

/// A string or each string of an array.
fn strings_of(v: Option<&Value>) -> impl Iterator<Item = &str> {
    let (one, many) = match v {
        Some(Value::String(s)) => (Some(s.as_str()), None),
        Some(Value::Array(a)) => (None, Some(a.iter().filter_map(Value::as_str))),
        _ => (None, None),
    };
    one.into_iter().chain(many.into_iter().flatten())
}

fn token(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
    let own = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
    IndexValue::Token {
        system: own(system),
        code: own(code),
        text: text.filter(|s| !s.is_empty()).map(str::to_lowercase),
    }
}

/// Pushes a token unless it carries nothing at all (e.g. an Identifier with only `use`).
fn push_token(
    push: &mut impl FnMut(IndexValue),
    system: Option<&str>,
    code: Option<&str>,
    text: Option<&str>,
) {
    push_unless_empty(push, token(system, code, text));
}

fn push_unless_empty(push: &mut impl FnMut(IndexValue), value: IndexValue) {
    if !matches!(
        &value,
        IndexValue::Token {
            system: None,
            code: None,
            text: None
        }
    ) {
        push(value);
    }
}

fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    member(m, k).and_then(Value::as_str)
}

fn token_values(v: &Value, push: &mut impl FnMut(IndexValue)) {
    match v {
        Value::String(s) if !s.is_empty() => push(token(None, Some(s), None)),
        Value::Bool(b) => push(token(None, Some(if *b { "true" } else { "false" }), None)),
        Value::Number(n) => push(token(None, Some(&n.to_string()), None)),
        Value::Object(m) => {
            if let Some(codings) = member(m, "coding") {
                // CodeableConcept: each coding, plus its text for `:text`. `:text` matches
                // a coding's display or the text alike, so a text that some display already
                // says (after the same lower-casing) needs no row of its own: such copies
                // were a twelfth of a Synthea import's index rows.
                let text = token(None, None, str_field(m, "text"));
                let mut said = false;
                if let Value::Array(codings) = codings {
                    for c in codings.iter().filter_map(Value::as_object) {
                        let coding = coding_token(c);
                        if let (
                            IndexValue::Token { text: Some(t), .. },
                            IndexValue::Token { text: Some(d), .. },
                        ) = (&text, &coding)
                        {
                            said |= t == d;
                        }
                        push_unless_empty(push, coding);
                    }
                }
                if !said {
                    push_unless_empty(push, text);
                }
            } else if let Some(value) = member(m, "value") {
                let value = match value {
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                };
                let system = str_field(m, "system");
                if system.is_some_and(|s| CONTACT_SYSTEMS.contains(&s))
                    || member(m, "rank").is_some()
                {
                    // ContactPoint: `phone|555-1234`, and `555-1234` alone via any system.
                    push_token(push, system, value, None);
                } else {
                    // Identifier; `type.text` feeds `:text`.
                    let type_text = member(m, "type")
                        .and_then(|t| field(t, "text"))
                        .and_then(Value::as_str);
                    push_token(push, system, value, type_text);
                }
            } else if member(m, "code").is_some() || member(m, "system").is_some() {
                coding_value(m, push);
            } else {
                push_token(push, None, None, str_field(m, "text"));
            }
        }
        _ => {}
    }
}

fn coding_value(c: &Map<String, Value>, push: &mut impl FnMut(IndexValue)) {
    push_unless_empty(push, coding_token(c));
}

fn coding_token(c: &Map<String, Value>) -> IndexValue {
    token(
        str_field(c, "system"),
        str_field(c, "code"),
        str_field(c, "display"),
    )
}

/// Splits a literal reference into `(type, id)`: `Patient/1`, `Patient/1/_history/2`, or an
/// absolute URL ending in `Patient/1`. Contained (`#x`) references give nothing.
pub(crate) fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let path = match reference.find("/_history/") {
        Some(i) => &reference[..i],
        None => reference,
    };
    let mut segments = path.rsplit('/');
    let id = segments.next()?;
    let ty = segments.next()?;
    let relative = !reference.contains("://") && !reference.starts_with("urn:");
    if relative && segments.next().is_some() {
        return None;
    }
    (is_resource_type(ty) && caregate_core::is_valid_id(id)).then_some((ty, id))
}

pub(crate) fn is_absolute(reference: &str) -> bool {
    reference.contains("://") || reference.starts_with("urn:")
}

fn reference_values(v: &Value, push: &mut impl FnMut(IndexValue)) {
    match v {
        Value::Object(m) => {
            if let Some(r) = str_field(m, "reference") {
                push_opt(push, reference_value(r));
            } else if let (Some(ty), Some(id)) = (str_field(m, "resourceType"), str_field(m, "id"))
            {
                // A resource reached by the expression (e.g. `Bundle.entry[0].resource`).
                push(IndexValue::Reference {
                    target_type: Some(ty.to_string()),
                    target_id: Some(id.to_string()),
                    url: None,
                });
            }
        }
        // canonical / uri elements.
        Value::String(s) if !s.is_empty() => push(IndexValue::Reference {
            target_type: None,
            target_id: None,
            url: Some(s.clone()),
        }),
        _ => {}
    }
}

fn reference_value(r: &str) -> Option<IndexValue> {
    if r.is_empty() || r.starts_with('#') {
        return None;
    }
    let absolute = is_absolute(r);
    Some(match split_reference(r) {
        Some((ty, id)) => IndexValue::Reference {
            target_type: Some(ty.to_string()),
            target_id: Some(id.to_string()),
            url: absolute.then(|| r.to_string()),
        },
        None => IndexValue::Reference {
            target_type: None,
            target_id: None,
            url: Some(r.to_string()),
        },
    })
}

fn date_values(v: &Value, push: &mut impl FnMut(IndexValue)) {
    match v {
        Value::String(s) => {
            if let Some(r) = parse_date_range(s) {
                push(IndexValue::Date(r));
            }
        }
        Value::Object(m) => {
            if member(m, "start").is_some() || member(m, "end").is_some() {
                push_opt(push, period(m));
            } else if member(m, "event").is_some() || member(m, "repeat").is_some() {
                // Timing: each event, and the repeat bounds.
                for s in strings_of(member(m, "event")) {
                    if let Some(r) = parse_date_range(s) {
                        push(IndexValue::Date(r));
                    }
                }
                if let Some(Value::Object(bounds)) =
                    member(m, "repeat").and_then(|r| field(r, "boundsPeriod"))
                {
                    push_opt(push, period(bounds));
                }
            }
        }
        _ => {}
    }
}

/// A Period's span; an open end runs to `i64::MAX`, an open start from `i64::MIN`.
fn period(m: &Map<String, Value>) -> Option<IndexValue> {
    let start = match str_field(m, "start") {
        Some(s) => parse_date_range(s)?.start,
        None => i64::MIN,
    };
    let end = match str_field(m, "end") {
        Some(s) => parse_date_range(s)?.end,
        None => i64::MAX,
    };
    if start == i64::MIN && end == i64::MAX {
        return None;
    }
    Some(IndexValue::Date(DateRange { start, end }))
}

fn quantity_values(v: &Value, push: &mut impl FnMut(IndexValue)) {
    let Value::Object(m) = v else { return };
    let Some(value) = member(m, "value")
        .and_then(Value::as_number)
        .and_then(serde_json::Number::as_f64)
    else {
        return;
    };
    let own = |s: Option<&str>| s.map(str::to_string);
    let (system, code) = match str_field(m, "currency") {
        // Money: the currency is a code in ISO 4217.
        Some(cur) => (
            Some("urn:iso:std:iso:4217".to_string()),
            Some(cur.to_string()),
        ),
        None => (own(str_field(m, "system")), own(str_field(m, "code"))),
    };
    push(IndexValue::Quantity {
        value,
        system,
        code,
        unit: own(str_field(m, "unit")),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split() {
        assert_eq!(split_reference("Patient/1"), Some(("Patient", "1")));
        assert_eq!(
            split_reference("Patient/1/_history/3"),
            Some(("Patient", "1"))
        );
        assert_eq!(
            split_reference("http://x.org/fhir/Patient/1"),
            Some(("Patient", "1"))
        );
        assert_eq!(split_reference("a/Patient/1"), None);
        assert_eq!(split_reference("Patient"), None);
        assert_eq!(split_reference("Foo/1"), None);
        assert_eq!(split_reference("urn:uuid:1234"), None);
    }
}
