//! Reference rewriting for transactions: `urn:uuid:` (and other) fullUrls become the
//! `Type/id` the server assigned, everywhere a `reference` names them.

use std::collections::HashMap;

use serde_json::Value;

/// Where a resource's rewritable strings are: every `reference` value, and every other
/// member whose string is a `urn:uuid:` (an `Attachment.url` or `uri` naming another
/// entry). Found in one walk; a transaction reads its conditional references and rewrites
/// fullUrls from this list instead of walking each resource twice more. Positions are
/// member and item indexes, so they hold only while the resource's existing members stay
/// where they are (replacing a value or appending a member keeps them).
#[derive(Debug, Default)]
pub(crate) struct ReferenceSites {
    /// Every site's positions, one after another.
    positions: Vec<u32>,
    sites: Vec<Site>,
}

#[derive(Debug, Clone, Copy)]
struct Site {
    /// Where this site's positions end in `positions` (they start where the previous end).
    end: u32,
    /// A `reference` value (not only a `urn:uuid:` string).
    is_reference: bool,
}

impl ReferenceSites {
    pub(crate) fn scan(resource: &Value) -> ReferenceSites {
        fn walk(value: &Value, path: &mut Vec<u32>, out: &mut ReferenceSites) {
            match value {
                Value::Object(map) => {
                    for (i, (key, child)) in map.iter().enumerate() {
                        let i = i as u32;
                        match child {
                            Value::String(s)
                                if key == "reference" || s.starts_with("urn:uuid:") =>
                            {
                                out.positions.extend_from_slice(path);
                                out.positions.push(i);
                                out.sites.push(Site {
                                    end: out.positions.len() as u32,
                                    is_reference: key == "reference",
                                });
                            }
                            Value::Object(_) | Value::Array(_) => {
                                path.push(i);
                                walk(child, path, out);
                                path.pop();
                            }
                            _ => {}
                        }
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if matches!(item, Value::Object(_) | Value::Array(_)) {
                            path.push(i as u32);
                            walk(item, path, out);
                            path.pop();
                        }
                    }
                }
                _ => {}
            }
        }
        let mut out = ReferenceSites::default();
        walk(resource, &mut Vec::new(), &mut out);
        out
    }

    fn paths(&self) -> impl Iterator<Item = (&[u32], Site)> + '_ {
        let mut start = 0;
        self.sites.iter().map(move |site| {
            let path = &self.positions[start..site.end as usize];
            start = site.end as usize;
            (path, *site)
        })
    }

    /// Adds every distinct conditional reference (`Patient?identifier=...`) to `out`.
    pub(crate) fn conditional_references(&self, resource: &Value, out: &mut Vec<String>) {
        for (path, site) in self.paths() {
            if !site.is_reference {
                continue;
            }
            if let Some(Value::String(s)) = at(resource, path) {
                if is_conditional(s) && !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
    }

    /// Replaces each site's string that `map` names (a `urn:uuid:` or other fullUrl, a
    /// conditional reference) with the `Type/id` it was given; returns the resource's
    /// `reference` values as rewritten, in document order (what
    /// [`caregate_core::json::reference_values`] would list), for the stages after the
    /// commit.
    pub(crate) fn rewrite(
        &self,
        resource: &mut Value,
        map: &HashMap<String, String>,
    ) -> Vec<String> {
        let mut references = Vec::new();
        for (path, site) in self.paths() {
            if let Some(Value::String(s)) = at_mut(resource, path) {
                if let Some(new) = map.get(s.as_str()) {
                    s.clone_from(new);
                }
                if site.is_reference {
                    references.push(s.clone());
                }
            }
        }
        references
    }
}

fn at<'v>(mut value: &'v Value, path: &[u32]) -> Option<&'v Value> {
    for &i in path {
        value = match value {
            Value::Object(map) => map.values().nth(i as usize)?,
            Value::Array(items) => items.get(i as usize)?,
            _ => return None,
        };
    }
    Some(value)
}

fn at_mut<'v>(mut value: &'v mut Value, path: &[u32]) -> Option<&'v mut Value> {
    for &i in path {
        value = match value {
            Value::Object(map) => map.values_mut().nth(i as usize)?,
            Value::Array(items) => items.get_mut(i as usize)?,
            _ => return None,
        };
    }
    Some(value)
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
        let references = ReferenceSites::scan(&v).rewrite(&mut v, &map);
        assert_eq!(
            references,
            vec!["Patient/a", "Practitioner/b", "Practitioner/x"]
        );
        assert_eq!(
            references,
            caregate_core::json::reference_values(&v),
            "what the stages after the commit would find"
        );
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
        let v = json!({"subject": {"reference": "Patient?identifier=a|1"}, "x": {"reference": "Patient/1"},
            "y": [{"reference": "Patient?identifier=a|1"}, {"reference": "Group?name=b"}],
            "z": {"url": "Patient?identifier=c|1"}});
        let mut out = Vec::new();
        ReferenceSites::scan(&v).conditional_references(&v, &mut out);
        assert_eq!(out, vec!["Patient?identifier=a|1", "Group?name=b"]);
    }

    #[test]
    fn rewrites_uuid_members_and_keeps_sites_when_a_member_is_appended() {
        let mut v = json!({"resourceType": "DocumentReference",
            "content": [{"attachment": {"url": "urn:uuid:3", "title": "urn:uuid:3 notes"}}],
            "relatesTo": [{"target": {"reference": "urn:uuid:4"}}],
            "note": ["urn:uuid:3"]});
        let map = HashMap::from([
            ("urn:uuid:3".to_string(), "Binary/b".to_string()),
            ("urn:uuid:4".to_string(), "DocumentReference/d".to_string()),
        ]);
        let sites = ReferenceSites::scan(&v);
        // The transaction sets the id after the scan.
        if let Some(obj) = v.as_object_mut() {
            obj.insert("id".into(), json!("new"));
        }
        let references = sites.rewrite(&mut v, &map);
        assert_eq!(references, vec!["DocumentReference/d"]);
        assert_eq!(v["content"][0]["attachment"]["url"], "Binary/b");
        assert_eq!(v["content"][0]["attachment"]["title"], "urn:uuid:3 notes");
        assert_eq!(
            v["relatesTo"][0]["target"]["reference"],
            "DocumentReference/d"
        );
        assert_eq!(v["note"][0], "urn:uuid:3");
        assert_eq!(v["id"], "new");
    }
}
