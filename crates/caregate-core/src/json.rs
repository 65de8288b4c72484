//! Member lookup on the small JSON objects FHIR resources are made of.

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
            .find_map(|(k, v)| (k.len() == key.len() && k == key).then_some(v))
    } else {
        obj.get(key)
    }
}

/// [`member`] of a value that may not be an object.
#[inline]
pub fn field<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    member(value.as_object()?, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
