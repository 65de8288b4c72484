//! Member lookup on the small JSON objects FHIR resources are made of, prefetching what a
//! walk over a tree touches next, parsing (objects built at their final size, the content
//! limits applied while parsing) and parsing only the members a caller needs.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::ContentLimits;

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

/// Parses `bytes` into a [`Value`], exactly as `serde_json::from_slice` does, but builds
/// each object with its final size: the members are gathered first (on one scratch stack
/// shared by the whole parse) and the map is allocated once. serde_json's own visitor
/// inserts into an empty ordered map, which regrows its entries and rehashes its index
/// table one to three times for the handful of members a FHIR element has; those
/// reallocations were most of the allocator's time during an import.
pub fn parse_value(bytes: &[u8]) -> serde_json::Result<Value> {
    let unlimited = ContentLimits {
        max_depth: usize::MAX,
        max_elements: usize::MAX,
        max_string_bytes: usize::MAX,
    };
    parse_within(bytes, &unlimited).map_err(|e| match e {
        ParseFailure::Json(e) => e,
        // Unreachable with no limits; kept total rather than panicking.
        ParseFailure::OverLimit => serde::de::Error::custom("content limit"),
    })
}

/// Why [`parse_within`] gave no value.
#[derive(Debug)]
pub enum ParseFailure {
    /// Not JSON (as `serde_json::from_slice` reports it).
    Json(serde_json::Error),
    /// Well-formed so far, but past one of the limits: [`crate::check_content`] on the
    /// fully parsed body names the element and the limit (the parse stops at the breach,
    /// without the element's location).
    OverLimit,
}

/// [`parse_value`] that also applies [`crate::check_content`]'s limits as it parses, so a
/// body that passes needs no second walk over its tree: the same counts (every value, the
/// root included), the same depth (objects and arrays, the root at 1) and the same string
/// lengths (values, not member names).
pub fn parse_within(bytes: &[u8], limits: &ContentLimits) -> Result<Value, ParseFailure> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut state = ParseState {
        scratch: Vec::new(),
        elements: 0,
        limits: *limits,
        over_limit: false,
    };
    let parsed = Sized {
        state: &mut state,
        depth: 1,
    }
    .deserialize(&mut de);
    match parsed {
        Ok(value) => {
            de.end().map_err(ParseFailure::Json)?;
            Ok(value)
        }
        Err(_) if state.over_limit => Err(ParseFailure::OverLimit),
        Err(e) => Err(ParseFailure::Json(e)),
    }
}

/// The member name serde_json's `arbitrary_precision` feature hands a number's text
/// under (it is the crate's private `number::TOKEN`; a JSON object with exactly this key
/// is read as a number by serde_json itself too).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

struct ParseState {
    scratch: Vec<(String, Value)>,
    elements: usize,
    limits: ContentLimits,
    over_limit: bool,
}

impl ParseState {
    fn over<E: serde::de::Error>(&mut self) -> E {
        self.over_limit = true;
        E::custom("content limit")
    }

    /// Counts one value.
    fn element<E: serde::de::Error>(&mut self) -> Result<(), E> {
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(self.over());
        }
        Ok(())
    }

    fn string<E: serde::de::Error>(&mut self, len: usize) -> Result<(), E> {
        self.element()?;
        if len > self.limits.max_string_bytes {
            return Err(self.over());
        }
        Ok(())
    }

    /// Counts an object or array at `depth`.
    fn container<E: serde::de::Error>(&mut self, depth: usize) -> Result<(), E> {
        self.element()?;
        if depth > self.limits.max_depth {
            return Err(self.over());
        }
        Ok(())
    }
}

struct Sized<'s> {
    state: &'s mut ParseState,
    depth: usize,
}

impl Sized<'_> {
    fn child(&mut self) -> Sized<'_> {
        Sized {
            state: &mut *self.state,
            depth: self.depth + 1,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Sized<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Sized<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.state.element()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.state.element()?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.state.element()?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.state.element()?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.state.string(v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.state.string(v.len())?;
        Ok(Value::String(v))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.state.element()?;
        Ok(Value::Null)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.state.element()?;
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        self.state.container(self.depth)?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self.child())? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            self.state.container(self.depth)?;
            return Ok(Value::Object(Map::new()));
        };
        if first == NUMBER_TOKEN {
            self.state.element()?;
            let text: String = map.next_value()?;
            return text
                .parse::<serde_json::Number>()
                .map(Value::Number)
                .map_err(serde::de::Error::custom);
        }
        self.state.container(self.depth)?;
        let start = self.state.scratch.len();
        let value = map.next_value_seed(self.child())?;
        self.state.scratch.push((first, value));
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.child())?;
            self.state.scratch.push((key, value));
        }
        let mut members = Map::with_capacity(self.state.scratch.len() - start);
        for (key, value) in self.state.scratch.drain(start..) {
            // A repeated name keeps its first position and takes the last value, as
            // serde_json's own insert does.
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
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
    fn parses_as_serde_json_does() {
        let cases: &[&str] = &[
            r#"{"resourceType":"Observation","valueQuantity":{"value":1.50,"unit":"mg"},
                "n":[0,-0,1e3,-1.25E-2,12345678901234567890123,3.0],"b":[true,false,null],
                "s":"a\"b\u00e9\ud83d\ude00","e":{},"a":[],"nested":[[{"x":[{}]}]]}"#,
            r#"{"a":1,"b":2,"a":3}"#,
            r#"{"$serde_json::private::Number":"12.50"}"#,
            r#"[1,"two",{"three":3}]"#,
            r#""text""#,
            "17",
            "null",
        ];
        for text in cases {
            let ours = parse_value(text.as_bytes()).expect("parses");
            let theirs: Value = serde_json::from_slice(text.as_bytes()).expect("parses");
            assert_eq!(ours, theirs, "{text}");
            // Same member order and number text, not only equal maps.
            assert_eq!(
                serde_json::to_string(&ours).expect("renders"),
                serde_json::to_string(&theirs).expect("renders"),
                "{text}"
            );
        }
        for bad in [
            "{",
            r#"{"a":}"#,
            r#"{"a":1} x"#,
            "[1,]",
            r#"{"a" 1}"#,
            "",
            "01",
            r#""\x""#,
            r#"{"$serde_json::private::Number":"x"}"#,
        ] {
            assert!(parse_value(bad.as_bytes()).is_err(), "{bad}");
            assert!(
                serde_json::from_slice::<Value>(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_value(deep.as_bytes()).is_err());
    }

    /// `parse_within` refuses exactly the bodies `check_content` refuses, over the shared
    /// corpora and limits small enough that many files break each of them.
    #[test]
    fn parse_within_refuses_what_check_content_refuses() {
        let limits = [
            ContentLimits {
                max_depth: 4,
                max_elements: usize::MAX,
                max_string_bytes: usize::MAX,
            },
            ContentLimits {
                max_depth: 5,
                max_elements: usize::MAX,
                max_string_bytes: usize::MAX,
            },
            ContentLimits {
                max_depth: usize::MAX,
                max_elements: 60,
                max_string_bytes: usize::MAX,
            },
            ContentLimits {
                max_depth: usize::MAX,
                max_elements: 500,
                max_string_bytes: usize::MAX,
            },
            ContentLimits {
                max_depth: usize::MAX,
                max_elements: usize::MAX,
                max_string_bytes: 40,
            },
            ContentLimits {
                max_depth: 6,
                max_elements: 2_000,
                max_string_bytes: 200,
            },
            ContentLimits::default(),
        ];
        let mut texts: Vec<Vec<u8>> = [
            "{}",
            "[]",
            "[[[[[]]]]]",
            r#"{"a":{"b":{"c":{"d":{}}}}}"#,
            r#"{"a":{"b":{"c":{"d":1}}}}"#,
            r#"{"a":[[[1]]]}"#,
            r#"{"n":[1,2.5,-3,1e9,null,true]}"#,
            r#"{"$serde_json::private::Number":"5"}"#,
        ]
        .iter()
        .map(|t| t.as_bytes().to_vec())
        .collect();
        for path in corpus_json_files("examples") {
            texts.extend(std::fs::read(&path));
        }
        let (mut refused, mut accepted) = (0, 0);
        for text in &texts {
            let Ok(full) = serde_json::from_slice::<Value>(text) else {
                continue;
            };
            for limit in &limits {
                let expected = crate::check_content(&full, limit).is_ok();
                match parse_within(text, limit) {
                    Ok(v) => {
                        assert!(expected, "{limit:?} passed what check_content refuses");
                        assert_eq!(v, full);
                        accepted += 1;
                    }
                    Err(ParseFailure::OverLimit) => {
                        assert!(!expected, "{limit:?} refused what check_content passes");
                        refused += 1;
                    }
                    Err(ParseFailure::Json(e)) => panic!("{e}"),
                }
            }
        }
        assert!(
            refused > 200 && accepted > 200,
            "{refused} refused, {accepted} accepted"
        );
    }

    /// Found by fuzzing: a repeated member name whose first value breaks a limit. The
    /// parse counts what it read; the walk sees only the last value of each name.
    #[test]
    fn repeated_names_are_counted_as_read() {
        let limits = ContentLimits {
            max_depth: usize::MAX,
            max_elements: usize::MAX,
            max_string_bytes: 8,
        };
        let text = br#"{"a":"longer than eight","a":"short"}"#;
        assert!(matches!(
            parse_within(text, &limits),
            Err(ParseFailure::OverLimit)
        ));
        let kept = parse_value(text).expect("parses");
        assert_eq!(kept["a"], "short");
        assert!(crate::check_content(&kept, &limits).is_ok());
    }

    #[test]
    fn parses_the_shared_corpora_as_serde_json_does() {
        let mut files = 0;
        for path in corpus_json_files("") {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let theirs = serde_json::from_slice::<Value>(&bytes);
            let ours = parse_value(&bytes);
            match (ours, theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(
                        serde_json::to_vec(&a).expect("renders"),
                        serde_json::to_vec(&b).expect("renders"),
                        "{}",
                        path.display()
                    );
                    files += 1;
                }
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{}: {a:?} against {b:?}", path.display()),
            }
        }
        assert!(files > 4000, "only {files} corpus files compared");
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

    /// Every `.json` file under `../shared/corpora/{sub}` (the whole corpora for "").
    fn corpus_json_files(sub: &str) -> Vec<std::path::PathBuf> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/corpora")
            .join(sub);
        let mut stack = vec![root];
        let mut files = Vec::new();
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    files.push(path);
                }
            }
        }
        files
    }
}
