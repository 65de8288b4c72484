//! Snapshot generation for StructureDefinitions that carry only a differential.
//!
//! The snapshot starts as a copy of the base definition's snapshot; each differential
//! element is then located by its id and its constraints merged in:
//!
//! * an element below a datatype that the base does not expand (`Patient.identifier.system`)
//!   makes the datatype's own definition (or the profile named on the type) be copied in
//!   under it first;
//! * a choice named by type (`Observation.valueQuantity`) becomes `value[x]` restricted to
//!   that type;
//! * `Element:slice` creates the slice from its base element (and that element's children),
//!   placed after the base element and the slices already there;
//! * merging replaces cardinality, types, fixed/pattern values, slicing, mustSupport and
//!   texts, overlays the binding, and appends constraints and conditions.
//!
//! This follows the published algorithm closely enough to reproduce the US Core 3.1.0
//! snapshots (see `tests/snapshots.rs` for the measured agreement and the known
//! differences); it does not reorder a differential that is out of order.

use serde_json::{Map, Value};

use crate::registry::Registry;

/// Why a snapshot could not be produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SnapshotError {
    #[error("StructureDefinition {0} is not loaded")]
    NotFound(String),
    #[error("StructureDefinition {0} derives from itself")]
    Cycle(String),
    #[error("StructureDefinition {0} has neither a snapshot nor a differential with a base")]
    NoDifferential(String),
    #[error("{profile}: differential element '{id}': {reason}")]
    Element {
        profile: String,
        id: String,
        reason: String,
    },
}

fn s<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn id_of(e: &Value) -> &str {
    s(e, "id").or_else(|| s(e, "path")).unwrap_or("")
}

/// `a.b:c.d` → `["a", "b:c", "d"]`, keeping dots inside slice names that contain `/`
/// (re-slices) intact enough for lookup.
fn segments(id: &str) -> Vec<&str> {
    id.split('.').collect()
}

fn capitalised(code: &str) -> String {
    let mut c = code.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

struct Gen<'r> {
    reg: &'r Registry,
    url: String,
    elems: Vec<Value>,
    /// The base snapshot as it was before this differential: new slices are copied from
    /// the base definition's element, not from the element as this profile constrained it.
    original: std::sync::Arc<Vec<Value>>,
    stack: &'r mut Vec<String>,
}

pub(crate) fn generate(
    reg: &Registry,
    sd: &Value,
    stack: &mut Vec<String>,
) -> Result<Vec<Value>, SnapshotError> {
    let url = s(sd, "url").unwrap_or("?").to_string();
    let (Some(base_url), Some(diff)) = (
        s(sd, "baseDefinition"),
        sd.get("differential")
            .and_then(|d| d.get("element"))
            .and_then(Value::as_array),
    ) else {
        return Err(SnapshotError::NoDifferential(url));
    };
    let base = reg.snapshot_inner(base_url, stack)?;
    let mut gen = Gen {
        reg,
        url,
        elems: (*base).clone(),
        original: base,
        stack,
    };
    let mut tracker = IdTracker::default();
    for d in diff {
        let id = tracker.id_for(d);
        gen.apply(&id, d)?;
    }
    Ok(gen.elems)
}

/// Derives ids for differential elements that lack them (older profiles) from the path,
/// the slice names seen so far, and `sliceName`.
#[derive(Default)]
struct IdTracker {
    /// (path, id) of the most recent slice at each sliced path.
    slices: Vec<(String, String)>,
}

impl IdTracker {
    fn id_for(&mut self, d: &Value) -> String {
        if let Some(id) = s(d, "id") {
            return id.to_string();
        }
        let path = s(d, "path").unwrap_or("");
        // Re-base the path on the innermost enclosing slice.
        let mut id = path.to_string();
        let mut best = 0;
        for (p, sid) in &self.slices {
            if p.len() > best
                && path.len() > p.len()
                && path.starts_with(p.as_str())
                && path.as_bytes()[p.len()] == b'.'
            {
                best = p.len();
                id = format!("{sid}{}", &path[p.len()..]);
            }
        }
        match s(d, "sliceName") {
            Some(slice) => {
                let sid = format!("{id}:{slice}");
                self.slices
                    .retain(|(p, _)| p != path && !p.starts_with(&format!("{path}.")));
                self.slices.push((path.to_string(), sid.clone()));
                sid
            }
            None => {
                // The unsliced element itself ends any slice context at or below it.
                if best == 0 {
                    self.slices
                        .retain(|(p, _)| p != path && !p.starts_with(&format!("{path}.")));
                }
                id
            }
        }
    }
}

impl Gen<'_> {
    fn err(&self, id: &str, reason: impl Into<String>) -> SnapshotError {
        SnapshotError::Element {
            profile: self.url.clone(),
            id: id.to_string(),
            reason: reason.into(),
        }
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.elems.iter().position(|e| id_of(e) == id)
    }

    fn has_children(&self, idx: usize) -> bool {
        let id = id_of(&self.elems[idx]);
        self.elems.get(idx + 1).is_some_and(|n| {
            id_of(n)
                .strip_prefix(id)
                .is_some_and(|r| r.starts_with('.'))
        })
    }

    /// Index after the element's subtree including its slices (where a new slice goes).
    fn end_of_slices(&self, idx: usize) -> usize {
        let id = id_of(&self.elems[idx]).to_string();
        let mut j = idx + 1;
        while let Some(e) = self.elems.get(j) {
            let eid = id_of(e);
            match eid.strip_prefix(id.as_str()) {
                Some(r) if r.starts_with('.') || r.starts_with(':') => j += 1,
                _ => break,
            }
        }
        j
    }

    fn apply(&mut self, id: &str, d: &Value) -> Result<(), SnapshotError> {
        let idx = self.locate(id)?;
        self.check_path(id, idx, d)?;
        self.check_fixed(id, idx, d)?;
        merge(&mut self.elems[idx], d);
        Ok(())
    }

    /// The differential's `path` names the element its id located: the same path, or a
    /// choice renamed by one of its types (`valueQuantity` for `value[x]`); a path naming
    /// something else (`Observation.valueBla`) is a broken differential.
    fn check_path(&self, id: &str, idx: usize, d: &Value) -> Result<(), SnapshotError> {
        let (Some(dp), Some(ep)) = (s(d, "path"), s(&self.elems[idx], "path")) else {
            return Ok(());
        };
        if dp == ep {
            return Ok(());
        }
        let (dsegs, esegs): (Vec<&str>, Vec<&str>) =
            (dp.split('.').collect(), ep.split('.').collect());
        let last = esegs.len().saturating_sub(1);
        let ok = dsegs.len() == esegs.len()
            && dsegs.iter().zip(&esegs).enumerate().all(|(k, (ds, es))| {
                if ds == es {
                    return true;
                }
                let Some(type_part) = es.strip_suffix("[x]").and_then(|b| ds.strip_prefix(b))
                else {
                    return false;
                };
                if k < last {
                    return type_part.starts_with(|c: char| c.is_ascii_uppercase());
                }
                self.elems[idx]
                    .get("type")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|t| s(t, "code"))
                    .any(|c| capitalised(c) == type_part)
            });
        if ok {
            Ok(())
        } else {
            Err(self.err(id, format!("the path must be '{ep}', not '{dp}'")))
        }
    }

    /// A fixed value the base already fixes cannot be changed (ext-derived fixing
    /// `Extension.url` to its own URL when its base fixed it to the base's).
    fn check_fixed(&self, id: &str, idx: usize, d: &Value) -> Result<(), SnapshotError> {
        let (Value::Object(dm), Value::Object(em)) = (d, &self.elems[idx]) else {
            return Ok(());
        };
        for (k, v) in dm.iter().filter(|(k, _)| k.starts_with("fixed")) {
            if let Some(old) = em.get(k) {
                if old != v {
                    return Err(self.err(
                        id,
                        format!("{k} is {v} but the base fixes it to {old}: the value must match the fixed value of the base"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Finds (creating as needed) the snapshot element for a differential id.
    fn locate(&mut self, id: &str) -> Result<usize, SnapshotError> {
        if let Some(i) = self.find(id) {
            return Ok(i);
        }
        let segs = segments(id);
        let Some(root) = self.elems.first().map(|e| id_of(e).to_string()) else {
            return Err(self.err(id, "the base snapshot is empty"));
        };
        let (first, first_slice) = split_slice(segs[0]);
        if first != root && !root.starts_with(&format!("{first}:")) {
            return Err(self.err(id, format!("does not start at the root element '{root}'")));
        }
        if first_slice.is_some() {
            return Err(self.err(id, "the root element cannot be sliced"));
        }
        let mut cur = 0usize;
        for (k, seg) in segs.iter().enumerate().skip(1) {
            let (name, slice) = split_slice(seg);
            let parent_id = id_of(&self.elems[cur]).to_string();
            let want = format!("{parent_id}.{name}");
            if self.find(&want).is_none() && !self.has_children(cur) {
                self.expand(cur, Some(name))?;
            }
            if self.find(&want).is_none() {
                // A choice named by its type: `valueQuantity` → `value[x]`.
                let choice = self.find_renamed_choice(&parent_id, name);
                match choice {
                    Some((choice_id, type_code)) => {
                        // As the published snapshots do it: the choice keeps only that
                        // type and gets a type slice named like the element, which takes
                        // the constraints (`value[x]:valueQuantity`).
                        let Some(ci) = self.find(&choice_id) else {
                            return Err(self.err(id, format!("no element '{choice_id}'")));
                        };
                        self.restrict_choice(ci, &type_code);
                        let sid = format!("{choice_id}:{name}");
                        let si = match self.find(&sid) {
                            Some(i) => i,
                            None => self.create_slice(ci, name),
                        };
                        if k < segs.len() - 1 && !self.has_children(si) {
                            self.expand_as(si, &type_code)?;
                        }
                        cur = si;
                        if slice.is_some() {
                            return Err(self.err(id, "a slice of a type slice is not supported"));
                        }
                        continue;
                    }
                    None => {
                        return Err(self.err(id, format!("no element '{name}' under '{parent_id}'")))
                    }
                }
            }
            let Some(base_idx) = self.find(&want) else {
                return Err(self.err(id, format!("no element '{want}'")));
            };
            cur = match slice {
                None => base_idx,
                Some(slice) => {
                    let sid = format!("{want}:{slice}");
                    match self.find(&sid) {
                        Some(i) => i,
                        None => self.create_slice(base_idx, slice),
                    }
                }
            };
        }
        Ok(cur)
    }

    /// Keeps only `type_code` among a choice element's types and declares the type
    /// slicing the renamed-choice slices rely on.
    fn restrict_choice(&mut self, idx: usize, type_code: &str) {
        if let Value::Object(m) = &mut self.elems[idx] {
            if let Some(Value::Array(types)) = m.get_mut("type") {
                if types.len() > 1 {
                    types.retain(|t| s(t, "code") == Some(type_code));
                }
            }
            m.entry("slicing").or_insert_with(|| {
                serde_json::json!({
                    "discriminator": [{"type": "type", "path": "$this"}],
                    "ordered": false,
                    "rules": "open"
                })
            });
        }
    }

    fn find_renamed_choice(&self, parent_id: &str, name: &str) -> Option<(String, String)> {
        let prefix = format!("{parent_id}.");
        self.elems.iter().find_map(|e| {
            let rest = id_of(e).strip_prefix(prefix.as_str())?;
            let base = rest.strip_suffix("[x]")?;
            let type_part = name.strip_prefix(base)?;
            let types = e.get("type").and_then(Value::as_array)?;
            let t = types
                .iter()
                .filter_map(|t| s(t, "code"))
                .find(|c| capitalised(c) == type_part)?;
            Some((id_of(e).to_string(), t.to_string()))
        })
    }

    /// Copies the children of an element's type under it (the element has none yet).
    fn expand(&mut self, idx: usize, hint: Option<&str>) -> Result<(), SnapshotError> {
        let e = &self.elems[idx];
        let id = id_of(e).to_string();
        if let Some(reference) = s(e, "contentReference").map(str::to_string) {
            return self.expand_content_reference(idx, &reference);
        }
        let types: Vec<&Value> = e
            .get("type")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let codes: Vec<&str> = types.iter().filter_map(|t| s(t, "code")).collect();
        let code = match codes.as_slice() {
            [one] => one.to_string(),
            [] => return Err(self.err(&id, "element has no type to expand")),
            many => {
                // Several types: only an element named after one of them is unambiguous.
                let Some(h) = hint else {
                    return Err(self.err(&id, "element has several types"));
                };
                match many.iter().find(|c| capitalised(c) == h || **c == h) {
                    Some(c) => c.to_string(),
                    None => {
                        return Err(
                            self.err(&id, format!("cannot tell which of {many:?} to expand"))
                        )
                    }
                }
            }
        };
        // A single profile on the type defines the children (extensions by profile,
        // datatype profiles); otherwise the base type does.
        let profile = types
            .iter()
            .find(|t| s(t, "code") == Some(code.as_str()))
            .and_then(|t| t.get("profile"))
            .and_then(Value::as_array)
            .and_then(|p| match p.as_slice() {
                [one] => one.as_str(),
                _ => None,
            })
            .map(str::to_string);
        self.expand_from(idx, &code, profile.as_deref())
    }

    fn expand_as(&mut self, idx: usize, code: &str) -> Result<(), SnapshotError> {
        self.expand_from(idx, code, None)
    }

    fn expand_from(
        &mut self,
        idx: usize,
        code: &str,
        profile: Option<&str>,
    ) -> Result<(), SnapshotError> {
        let id = id_of(&self.elems[idx]).to_string();
        let path = s(&self.elems[idx], "path").unwrap_or(&id).to_string();
        let type_url = if code.contains(':') {
            code.to_string()
        } else {
            format!("http://hl7.org/fhir/StructureDefinition/{code}")
        };
        let source = match profile {
            Some(p) => match self.reg.snapshot_inner(p, self.stack) {
                Ok(s) => s,
                // An unknown profile on the type: fall back to the base type.
                Err(_) => self.reg.snapshot_inner(&type_url, self.stack)?,
            },
            None => self.reg.snapshot_inner(&type_url, self.stack)?,
        };
        let Some(type_root) = source.first() else {
            return Err(self.err(&id, format!("type {code} has an empty snapshot")));
        };
        let root_id = id_of(type_root).to_string();
        let root_path = s(type_root, "path").unwrap_or(&root_id).to_string();
        let mut children = Vec::new();
        for c in source.iter().skip(1) {
            let mut c = c.clone();
            let cid = id_of(&c).to_string();
            let cpath = s(&c, "path").unwrap_or("").to_string();
            let new_id = match cid.strip_prefix(root_id.as_str()) {
                Some(rest) => format!("{id}{rest}"),
                None => continue,
            };
            let new_path = match cpath.strip_prefix(root_path.as_str()) {
                Some(rest) => format!("{path}{rest}"),
                None => continue,
            };
            if let Value::Object(m) = &mut c {
                m.insert("id".into(), Value::String(new_id));
                m.insert("path".into(), Value::String(new_path));
            }
            children.push(c);
        }
        let at = idx + 1;
        self.elems.splice(at..at, children);
        Ok(())
    }

    fn expand_content_reference(
        &mut self,
        idx: usize,
        reference: &str,
    ) -> Result<(), SnapshotError> {
        let id = id_of(&self.elems[idx]).to_string();
        let path = s(&self.elems[idx], "path").unwrap_or(&id).to_string();
        let target = reference
            .rsplit_once('#')
            .map_or(reference, |(_, t)| t)
            .to_string();
        let prefix = format!("{target}.");
        // The referenced element's children as the base defines them, not as this
        // profile has constrained them so far.
        let original = self.original.clone();
        let source: &[Value] = if original
            .iter()
            .any(|e| id_of(e).starts_with(prefix.as_str()))
        {
            &original
        } else {
            &self.elems
        };
        let children: Vec<Value> = source
            .iter()
            .filter(|e| id_of(e).starts_with(prefix.as_str()))
            .map(|e| {
                let mut c = e.clone();
                let cid = id_of(e)[target.len()..].to_string();
                let cpath = s(e, "path")
                    .unwrap_or("")
                    .get(target.len()..)
                    .unwrap_or("")
                    .to_string();
                if let Value::Object(m) = &mut c {
                    m.insert("id".into(), Value::String(format!("{id}{cid}")));
                    m.insert("path".into(), Value::String(format!("{path}{cpath}")));
                }
                c
            })
            .collect();
        if children.is_empty() {
            return Err(self.err(&id, format!("contentReference {reference} has no children")));
        }
        if let Value::Object(m) = &mut self.elems[idx] {
            // The element now carries its own children.
            m.remove("contentReference");
            m.insert(
                "type".into(),
                serde_json::json!([{"code": "BackboneElement"}]),
            );
        }
        let at = idx + 1;
        self.elems.splice(at..at, children);
        Ok(())
    }

    /// Creates slice `name` of the element at `base_idx` (a copy of it and its children),
    /// after the element's subtree and existing slices. Returns the new slice's index.
    fn create_slice(&mut self, base_idx: usize, name: &str) -> usize {
        let base_id = id_of(&self.elems[base_idx]).to_string();
        let slice_id = format!("{base_id}:{name}");
        let end = self.end_of_slices(base_idx);
        let mut copies = Vec::new();
        // Copy from the base definition when the element is there (see `original`).
        let original = self.original.clone();
        let (source, src_idx) = match original.iter().position(|e| id_of(e) == base_id) {
            Some(i) => (&original[..], i),
            None => (&self.elems[..], base_idx),
        };
        let src_end = {
            let mut j = src_idx + 1;
            while source.get(j).is_some_and(|e| {
                id_of(e)
                    .strip_prefix(base_id.as_str())
                    .is_some_and(|r| r.starts_with('.') || r.starts_with(':'))
            }) {
                j += 1;
            }
            j
        };
        let mut head = source[src_idx].clone();
        // The type restriction made on the element itself (a renamed choice) holds for
        // its slices too.
        if let Some(t) = self.elems[base_idx].get("type") {
            if let Value::Object(m) = &mut head {
                m.insert("type".into(), t.clone());
            }
        }
        if let Value::Object(m) = &mut head {
            m.insert("id".into(), Value::String(slice_id.clone()));
            m.insert("sliceName".into(), Value::String(name.to_string()));
            m.remove("slicing");
            // Each slice is optional unless the profile says otherwise; the base
            // element's minimum applies to all slices together.
            m.insert("min".into(), Value::from(0));
        }
        copies.push(head);
        let prefix = format!("{base_id}.");
        for e in &source[src_idx + 1..src_end] {
            let eid = id_of(e);
            if let Some(rest) = eid.strip_prefix(prefix.as_str()) {
                let mut c = e.clone();
                if let Value::Object(m) = &mut c {
                    m.insert("id".into(), Value::String(format!("{slice_id}.{rest}")));
                }
                copies.push(c);
            }
        }
        self.elems.splice(end..end, copies);
        end
    }
}

fn split_slice(seg: &str) -> (&str, Option<&str>) {
    match seg.split_once(':') {
        Some((n, sl)) => (n, Some(sl)),
        None => (seg, None),
    }
}

/// Merges one differential element into its snapshot element.
fn merge(e: &mut Value, d: &Value) {
    let (Value::Object(e), Value::Object(d)) = (e, d) else {
        return;
    };
    // fixed[x]/pattern[x] replace whatever value constraint the base had.
    if d.keys()
        .any(|k| k.starts_with("fixed") || k.starts_with("pattern"))
    {
        e.retain(|k, _| !k.starts_with("fixed") && !k.starts_with("pattern"));
    }
    for (k, v) in d {
        match k.as_str() {
            "id" | "path" | "base" => {}
            "constraint" | "condition" | "mapping" => append_unique(e, k, v),
            "binding" | "slicing" => overlay(e, k, v),
            _ => {
                e.insert(k.clone(), v.clone());
            }
        }
    }
}

fn append_unique(e: &mut Map<String, Value>, key: &str, add: &Value) {
    let Value::Array(add) = add else {
        return;
    };
    let list = e
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(list) = list else {
        return;
    };
    for item in add {
        let item_key = item.get("key").or_else(|| item.get("identity"));
        let dup = list.iter().any(|x| match item_key {
            Some(k) => x.get("key").or_else(|| x.get("identity")) == Some(k),
            None => x == item,
        });
        if !dup {
            list.push(item.clone());
        }
    }
}

fn overlay(e: &mut Map<String, Value>, key: &str, v: &Value) {
    match (e.get_mut(key), v) {
        (Some(Value::Object(base)), Value::Object(over)) => {
            // A new value set replaces the old one with its own strength and description.
            if over.contains_key("valueSet") {
                base.remove("description");
            }
            for (k, x) in over {
                base.insert(k.clone(), x.clone());
            }
        }
        _ => {
            e.insert(key.to_string(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_derived_when_missing() {
        let mut t = IdTracker::default();
        assert_eq!(
            t.id_for(&json!({"path": "Observation.component"})),
            "Observation.component"
        );
        assert_eq!(
            t.id_for(&json!({"path": "Observation.component", "sliceName": "a"})),
            "Observation.component:a"
        );
        assert_eq!(
            t.id_for(&json!({"path": "Observation.component.code"})),
            "Observation.component:a.code"
        );
        assert_eq!(
            t.id_for(&json!({"path": "Observation.status"})),
            "Observation.status"
        );
    }
}
