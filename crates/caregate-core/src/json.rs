//! Member lookup on the small JSON objects FHIR resources are made of, prefetching what a
//! walk over a tree touches next, and parsing only the members a caller needs.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Objects up to this size are scanned rather than hashed.
const SCAN_LIMIT: usize = 16;

/// `obj[key]`, found by comparing keys when the object is small. serde_json's ordered map
/// hashes every lookup with SipHash, which costs more than comparing the handful of keys a
/// FHIR element has; the hot paths (validation, consent filtering) look up a few members
/// of every object they visit.
#[inline]
pub fn member<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    if obj.len() <= SCAN_LIMIT {
        obj.iter()
            .find_map(|(k, v)| crate::keys::short_eq(k, key).then_some(v))
    } else {
        obj.get(key)
    }
}

/// [`member`] of a value that may not be an object.
#[inline]
pub fn field<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    member(value.as_object()?, key)
}

/// Asks the CPU to start loading what the walk over `obj` touches next: each key's bytes,
/// each string value's bytes and the member arrays of nested objects and arrays. Parsed
/// trees are far larger than the caches and every key is its own allocation, so the walk
/// waits on memory one miss at a time unless the misses are started together.
#[inline]
pub fn prefetch_members(obj: &Map<String, Value>) {
    for (key, value) in obj {
        prefetch(key.as_ptr());
        match value {
            Value::String(s) => prefetch(s.as_ptr()),
            Value::Object(m) => {
                if let (Some((first, _)), Some((_, last))) = (m.iter().next(), m.iter().next_back())
                {
                    prefetch_range(
                        (first as *const String).cast(),
                        (last as *const Value).cast(),
                    );
                }
            }
            Value::Array(items) => {
                if let (Some(first), Some(last)) = (items.first(), items.last()) {
                    prefetch_range(
                        (first as *const Value).cast(),
                        (last as *const Value).cast(),
                    );
                }
            }
            _ => {}
        }
    }
}

/// Prefetches the cache lines from `first` to `last` (the members of one container, which
/// lie side by side), at most eight of them.
#[inline(always)]
fn prefetch_range(first: *const u8, last: *const u8) {
    const LINE: usize = 64;
    let lines = ((last as usize).saturating_sub(first as usize) / LINE + 1).min(8);
    for i in 0..lines {
        prefetch(first.wrapping_add(i * LINE));
    }
}

#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The top-level members named in `keep` of the JSON object in `bytes`, as an object; the
/// other members are checked for well-formedness and skipped without being built. Reads
/// that decide on a resource's `meta` and subject need a fraction of a full parse.
pub fn parse_members(bytes: &[u8], keep: &[&str]) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let members = Members(keep).deserialize(&mut de)?;
    de.end()?;
    Ok(Value::Object(members))
}

struct Members<'k>(&'k [&'k str]);

impl<'de> DeserializeSeed<'de> for Members<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Members<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Kept(self.0))? {
            match key {
                Some(name) => {
                    let value: Value = map.next_value()?;
                    out.insert(name.to_string(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A member name: which of the kept names it is, if any (no allocation for the others).
struct Kept<'k>(&'k [&'k str]);

impl<'de, 'k> DeserializeSeed<'de> for Kept<'k> {
    type Value = Option<&'k str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'k> Visitor<'de> for Kept<'k> {
    type Value = Option<&'k str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().copied().find(|k| *k == name))
    }
}

/// Every string under a `reference` key anywhere in `value`, in document order: what a
/// resource points at. One walk, for stages that would otherwise each walk the tree.
pub fn reference_values(value: &Value) -> Vec<&str> {
    fn walk<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    match child {
                        Value::String(s) if key == "reference" => out.push(s),
                        Value::Object(_) | Value::Array(_) => walk(child, out),
                        _ => {}
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_every_reference_value() {
        let v = json!({"subject": {"reference": "Patient/a"}, "reference": 3,
            "performer": [{"reference": "Practitioner/b", "display": "Patient/x"}, {"display": "c"}],
            "contained": [{"item": [{"answer": [{"valueReference": {"reference": "Patient/c"}}]}]}]});
        assert_eq!(
            reference_values(&v),
            vec!["Patient/a", "Practitioner/b", "Patient/c"]
        );
        assert!(reference_values(&json!("Patient/a")).is_empty());
    }

    #[test]
    fn finds_members_of_small_and_large_objects() {
        let small = json!({"a": 1, "ab": 2, "b": null});
        assert_eq!(field(&small, "ab"), Some(&json!(2)));
        assert_eq!(field(&small, "b"), Some(&Value::Null));
        assert_eq!(field(&small, "c"), None);
        assert_eq!(field(&json!([1]), "a"), None);
        let large: Map<String, Value> = (0..40).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(member(&large, "k33"), Some(&json!(33)));
        assert_eq!(member(&large, "k40"), None);
    }

    #[test]
    fn parses_only_the_kept_members() {
        let text = br#"{"resourceType":"Observation","id":"o","text":{"div":"<div>x</div>"},
            "meta":{"security":[{"code":"R"}]},"valu\u0065":1,"subject":{"reference":"Patient/p"}}"#;
        let v = parse_members(text, &["resourceType", "meta", "subject", "value"]).expect("parses");
        assert_eq!(
            v,
            json!({"resourceType": "Observation", "meta": {"security": [{"code": "R"}]},
                   "value": 1, "subject": {"reference": "Patient/p"}})
        );
        // Skipped members must still be well-formed, and nothing may follow the object.
        assert!(parse_members(br#"{"a":[1,}"#, &["b"]).is_err());
        assert!(parse_members(br#"{"a":1} x"#, &["a"]).is_err());
        assert!(parse_members(br#"[1]"#, &["a"]).is_err());
    }
}
