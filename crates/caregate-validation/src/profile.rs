//! Profiles compiled for validation: a snapshot turned into a tree of element rules
//! (children, slices, cardinality, types, fixed/pattern values, bindings, constraints).
//!
//! Compiled once per profile URL and cached in the [`Registry`]; the validator walks the
//! instance and this tree side by side (see [`crate::validator`]).

use std::sync::Arc;

use caregate_core::Severity;
use serde_json::Value;

use crate::model::{BindingStrength, FxMap};
use crate::registry::Registry;

/// A compiled profile, or why it could not be compiled (unknown, snapshot failed, ...).
pub(crate) type ProfileResult = Result<Arc<Profile>, String>;

/// R4 DomainResource invariants whose expressions start at `contained` and hold when it
/// is empty (`contained.contained.empty()`, `contained.where(...).empty()`,
/// `contained.meta.versionId.empty() and ...`, `contained.meta.security.empty()`).
const CONTAINED_ONLY: &[&str] = &["dom-2", "dom-3", "dom-4", "dom-5"];

/// A constraint an invariant evaluator checks, with what the validator decides about it
/// before evaluating (found once, when the profile compiles).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckedConstraint {
    /// Into the element's `constraints`.
    pub index: usize,
    /// The core specification defines it (the R4 snapshots name their source).
    pub from_core: bool,
    /// dom-2..dom-5: true whenever the resource has no contained resources.
    pub contained_only: bool,
    /// dom-3, answered natively.
    pub dom_3: bool,
}

/// One ElementDefinition.constraint, as handed to an [`crate::InvariantEvaluator`].
#[derive(Debug, Clone)]
pub struct Constraint {
    pub key: String,
    pub severity: Severity,
    pub human: String,
    /// FHIRPath expression; `None` for constraints stated only in XPath.
    pub expression: Option<String>,
    /// Canonical URL of the definition that introduced it.
    pub source: Option<String>,
    /// What the FHIRPath evaluator made of `expression`, on first use.
    pub(crate) prepared: std::sync::OnceLock<crate::invariants::Prepared>,
}

impl Constraint {
    pub fn new(
        key: &str,
        severity: Severity,
        human: &str,
        expression: Option<&str>,
        source: Option<&str>,
    ) -> Constraint {
        Constraint {
            key: key.to_string(),
            severity,
            human: human.to_string(),
            expression: expression.map(str::to_string),
            source: source.map(str::to_string),
            prepared: std::sync::OnceLock::new(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct TypeRule {
    pub code: String,
    pub profiles: Vec<String>,
    pub target_profiles: Vec<String>,
    /// The resource types `target_profiles` allow, resolved on first use (the profiles'
    /// definitions may load after this one is compiled).
    pub target_types: std::sync::OnceLock<Vec<String>>,
    /// Some target profile is more than a core resource type's definition: a target
    /// found locally (contained, in the Bundle) is checked against it.
    pub profiled_targets: bool,
    /// The core definition of a complex datatype (`Address`), for walking values of this
    /// type; looked up on first use. Profiles can reach each other in a cycle this way
    /// (Extension's elements are Extensions): the registry keeps them for the process's
    /// life anyway.
    pub core_type: std::sync::OnceLock<Option<Arc<Profile>>>,
}

// By hand: printing `core_type` would follow the cycles above.
impl std::fmt::Debug for TypeRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypeRule")
            .field("code", &self.code)
            .field("profiles", &self.profiles)
            .field("target_profiles", &self.target_profiles)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiscKind {
    Value,
    Pattern,
    Type,
    Profile,
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rules {
    Open,
    Closed,
    OpenAtEnd,
}

#[derive(Debug, Clone)]
pub(crate) struct Slicing {
    pub discriminators: Vec<(DiscKind, String)>,
    pub ordered: bool,
    pub rules: Rules,
}

#[derive(Debug)]
pub(crate) struct Elem {
    pub id: String,
    pub path: String,
    /// Last path segment (`value[x]`, `category`).
    pub name: String,
    /// `_name`: the key of a primitive's id and extensions.
    pub ext_name: String,
    /// `value` for `value[x]`: the prefix of a choice's JSON keys.
    pub choice_base: Option<String>,
    pub slice_name: Option<String>,
    pub min: u32,
    /// `None` = `*`.
    pub max: Option<u32>,
    pub base_min: u32,
    pub base_max: Option<u32>,
    pub types: Vec<TypeRule>,
    pub fixed: Option<Value>,
    pub pattern: Option<Value>,
    /// `minValue[x]` / `maxValue[x]`: (type suffix, bound), e.g. (`Quantity`, {..}).
    pub min_value: Option<(String, Value)>,
    pub max_value: Option<(String, Value)>,
    /// `maxLength` of a string-based element.
    pub max_length: Option<u64>,
    pub binding: Option<(BindingStrength, String)>,
    /// The binding is the one the core definition already has: the structural validator
    /// checked it, so it is not checked twice.
    pub binding_is_core: bool,
    pub slicing: Option<Slicing>,
    pub constraints: Vec<Constraint>,
    /// Direct children (unsliced elements one level down).
    pub children: Vec<usize>,
    /// The children by JSON key (`name`, and for a choice each `valueQuantity`...; the
    /// `_name` of a primitive is found by stripping the underscore), so a pass that only
    /// looks at what is present walks the object's keys instead of every definition.
    pub child_keys: caregate_core::keys::KeyIndex<usize>,
    /// Slices of this element, in definition order.
    pub slices: Vec<usize>,
    /// A primitive element with nothing for a pass to check on its value (no fixed or
    /// pattern value, limits, non-core binding, invariant, slicing or children): the core
    /// pass skips it unless the object carries `_name` extensions. Most of a resource's
    /// leaves are such.
    pub plain_primitive: bool,
    /// The constraints an invariant evaluator checks (with an expression, not in
    /// [`crate::invariants::SKIPPED_INVARIANTS`]): (index into `constraints`, whether the
    /// core specification defines it).
    pub checked_constraints: Vec<CheckedConstraint>,
    /// Whether nothing in this element's subtree (its children, its types' core
    /// definitions) needs the core pass once extensions are ruled out: see
    /// [`Profile::inert`]. Found on first use.
    pub inert: std::sync::OnceLock<bool>,
    /// The children that are not inert, in definition order, when none of them is a
    /// choice (whose JSON keys vary): see [`Profile::active_children`].
    pub active_children: std::sync::OnceLock<Option<Vec<usize>>>,
    /// The element whose definition this one reuses (`contentReference`, as
    /// `Questionnaire.item.item` names `Questionnaire.item`): its children and constraints
    /// hold here too.
    pub content_reference: Option<usize>,
}

#[derive(Debug)]
pub struct Profile {
    pub url: String,
    /// The resource or datatype constrained (`Patient`, `Extension`).
    pub type_name: String,
    pub(crate) elems: Vec<Elem>,
    /// Extension definitions: where the extension may be used.
    pub(crate) contexts: Vec<(String, String)>,
    /// The root element is a modifier (an extension that must be a `modifierExtension`).
    pub(crate) is_modifier: bool,
    /// Some element has a FHIRPath constraint the invariant evaluator checks (anything
    /// but the keys in [`crate::invariants::SKIPPED_INVARIANTS`]).
    pub(crate) has_invariants: bool,
}

fn card(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::String(s) if s == "*" => None,
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64().map(|n| n as u32),
        _ => None,
    }
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn strip_version(s: &str) -> &str {
    s.split('|').next().unwrap_or(s)
}

/// `Observation.component:a.code` → parent `Observation.component:a`; a slice id
/// (`Observation.component:a`) → its base element `Observation.component`.
fn split_id(id: &str) -> (Option<&str>, Option<(&str, &str)>) {
    let (head, last) = match id.rsplit_once('.') {
        Some((h, l)) => (Some(h), l),
        None => (None, id),
    };
    match last.split_once(':') {
        Some((_, slice)) => {
            let base_len = id.len() - slice.len() - 1;
            (head, Some((&id[..base_len], slice)))
        }
        None => (head, None),
    }
}

impl Profile {
    /// Compiles a snapshot. `core_binding` answers the core binding at a base path, to
    /// mark bindings the structural validator already checks.
    pub(crate) fn compile(reg: &Registry, sd: &Value, elements: &[Value]) -> Profile {
        let url = sd
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let type_name = sd
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut elems: Vec<Elem> = Vec::with_capacity(elements.len());
        let mut by_id: FxMap<String, usize> = FxMap::default();
        let mut content_references: Vec<(usize, &str)> = Vec::new();
        for e in elements {
            let id = e
                .get("id")
                .or_else(|| e.get("path"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let path = e
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let name = path.rsplit('.').next().unwrap_or("").to_string();
            let min = e.get("min").and_then(Value::as_u64).unwrap_or(0) as u32;
            let max = card(e.get("max"));
            let base = e.get("base");
            let base_min = base
                .and_then(|b| b.get("min"))
                .and_then(Value::as_u64)
                .map_or(min, |m| m as u32);
            let base_max = match base.and_then(|b| b.get("max")) {
                Some(m) => card(Some(m)),
                None => max,
            };
            let types = e
                .get("type")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|t| {
                    let target_profiles = strs(t.get("targetProfile"));
                    TypeRule {
                        code: type_code(t),
                        profiles: strs(t.get("profile")),
                        profiled_targets: target_profiles.iter().any(|p| !is_core_definition(p)),
                        target_profiles,
                        target_types: std::sync::OnceLock::new(),
                        core_type: std::sync::OnceLock::new(),
                    }
                })
                .collect();
            let mut fixed = None;
            let mut pattern = None;
            let (mut min_value, mut max_value) = (None, None);
            if let Value::Object(m) = e {
                for (k, v) in m {
                    if k.starts_with("fixed") {
                        fixed = Some(v.clone());
                    } else if k.starts_with("pattern") {
                        pattern = Some(v.clone());
                    } else if let Some(t) = k.strip_prefix("minValue") {
                        min_value = Some((t.to_string(), v.clone()));
                    } else if let Some(t) = k.strip_prefix("maxValue") {
                        max_value = Some((t.to_string(), v.clone()));
                    }
                }
            }
            let max_length = e.get("maxLength").and_then(Value::as_u64);
            let binding = e.get("binding").and_then(|b| {
                let strength = BindingStrength::from_code(b.get("strength")?.as_str()?)?;
                Some((strength, b.get("valueSet")?.as_str()?.to_string()))
            });
            let binding_is_core = match &binding {
                None => true,
                Some((strength, vs)) => {
                    let base_path = base
                        .and_then(|b| b.get("path"))
                        .and_then(Value::as_str)
                        .unwrap_or(&path);
                    core_binding(reg, base_path).is_some_and(|(s, v)| {
                        s == *strength && strip_version(&v) == strip_version(vs)
                    })
                }
            };
            let slicing = e.get("slicing").map(|s| Slicing {
                discriminators: s
                    .get("discriminator")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|d| {
                        let kind = match d.get("type")?.as_str()? {
                            "value" => DiscKind::Value,
                            "pattern" => DiscKind::Pattern,
                            "type" => DiscKind::Type,
                            "profile" => DiscKind::Profile,
                            "exists" => DiscKind::Exists,
                            _ => return None,
                        };
                        Some((kind, d.get("path")?.as_str()?.to_string()))
                    })
                    .collect(),
                ordered: s.get("ordered").and_then(Value::as_bool).unwrap_or(false),
                rules: match s.get("rules").and_then(Value::as_str) {
                    Some("closed") => Rules::Closed,
                    Some("openAtEnd") => Rules::OpenAtEnd,
                    _ => Rules::Open,
                },
            });
            let constraints = e
                .get("constraint")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some(Constraint::new(
                        c.get("key")?.as_str()?,
                        match c.get("severity").and_then(Value::as_str) {
                            Some("warning") => Severity::Warning,
                            _ => Severity::Error,
                        },
                        c.get("human").and_then(Value::as_str).unwrap_or(""),
                        c.get("expression").and_then(Value::as_str),
                        c.get("source").and_then(Value::as_str),
                    ))
                })
                .collect();
            let slice_name = split_id(&id).1.map(|(_, s)| s.to_string());
            let idx = elems.len();
            if let Some(r) = e.get("contentReference").and_then(Value::as_str) {
                // `#Questionnaire.item`, or a full URL ending in `#id` in later versions.
                let target = r.rsplit_once('#').map_or(r, |(_, id)| id);
                content_references.push((idx, target));
            }
            by_id.insert(id.clone(), idx);
            elems.push(Elem {
                id,
                path,
                ext_name: format!("_{name}"),
                choice_base: name.strip_suffix("[x]").map(str::to_string),
                name,
                slice_name,
                min,
                max,
                base_min,
                base_max,
                types,
                fixed,
                pattern,
                min_value,
                max_value,
                max_length,
                binding,
                binding_is_core,
                slicing,
                constraints,
                children: Vec::new(),
                child_keys: Default::default(),
                slices: Vec::new(),
                plain_primitive: false,
                checked_constraints: Vec::new(),
                inert: std::sync::OnceLock::new(),
                active_children: std::sync::OnceLock::new(),
                content_reference: None,
            });
        }
        for (idx, target) in content_references {
            elems[idx].content_reference = by_id.get(target).copied();
        }
        for i in 0..elems.len() {
            let (parent, slice_of) = split_id(&elems[i].id);
            match slice_of {
                Some((base, _)) => {
                    if let Some(&b) = by_id.get(base) {
                        elems[b].slices.push(i);
                    }
                }
                None => {
                    if let Some(&p) = parent.and_then(|p| by_id.get(p)) {
                        elems[p].children.push(i);
                    }
                }
            }
        }
        for p in 0..elems.len() {
            let mut keys = caregate_core::keys::KeyIndex::default();
            for &c in &elems[p].children {
                let ch = &elems[c];
                match &ch.choice_base {
                    Some(base) => {
                        for t in &ch.types {
                            let mut cs = t.code.chars();
                            let cap: String = cs
                                .next()
                                .map(|f| f.to_ascii_uppercase().to_string() + cs.as_str())
                                .unwrap_or_default();
                            keys.insert(format!("{base}{cap}").into(), c);
                        }
                    }
                    None => {
                        keys.insert(ch.name.as_str().into(), c);
                    }
                }
            }
            elems[p].child_keys = keys;
        }
        for e in &mut elems {
            e.checked_constraints = e
                .constraints
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.expression.is_some()
                        && !crate::invariants::SKIPPED_INVARIANTS.contains(&c.key.as_str())
                })
                .map(|(i, c)| {
                    let from_core = c.source.as_deref().is_some_and(is_core_definition);
                    CheckedConstraint {
                        index: i,
                        from_core,
                        contained_only: from_core && CONTAINED_ONLY.contains(&c.key.as_str()),
                        dom_3: from_core && c.key == "dom-3",
                    }
                })
                .collect();
            e.plain_primitive = e.children.is_empty()
                && !e.types.is_empty()
                && e.types.iter().all(|t| {
                    t.code.starts_with(|c: char| c.is_ascii_lowercase()) && t.code != "markdown"
                })
                && e.has_no_rules();
        }
        let contexts = sd
            .get("context")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    c.get("type")?.as_str()?.to_string(),
                    c.get("expression")?.as_str()?.to_string(),
                ))
            })
            .collect();
        let has_invariants = elems.iter().any(|e| {
            e.constraints.iter().any(|c| {
                c.expression.is_some()
                    && !crate::invariants::SKIPPED_INVARIANTS.contains(&c.key.as_str())
            })
        });
        let is_modifier = elements
            .first()
            .and_then(|e| e.get("isModifier"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Profile {
            url,
            type_name,
            elems,
            contexts,
            is_modifier,
            has_invariants,
        }
    }
}

/// A StructureDefinition of the core specification (`…/StructureDefinition/Patient`), not
/// a profile or extension of it (those have a `-` in their id).
pub(crate) fn is_core_definition(canonical: &str) -> bool {
    canonical
        .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
        .is_some_and(|id| !id.contains('-'))
}

/// The FHIR type an ElementDefinition.type names (System types resolved to `string`...).
fn type_code(t: &Value) -> String {
    let code = t.get("code").and_then(Value::as_str).unwrap_or("");
    if let Some(sys) = code.strip_prefix("http://hl7.org/fhirpath/System.") {
        let ext = t
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|x| {
                x.get("valueUrl")
                    .or_else(|| x.get("valueUri"))
                    .and_then(Value::as_str)
            });
        return ext.unwrap_or(&sys.to_ascii_lowercase()).to_string();
    }
    code.to_string()
}

/// The binding the core definition of a type has at `path` (`ContactPoint.system`).
fn core_binding(reg: &Registry, path: &str) -> Option<(BindingStrength, String)> {
    let type_name = path.split('.').next()?;
    let sd = reg.structure_definition(&format!(
        "http://hl7.org/fhir/StructureDefinition/{type_name}"
    ))?;
    let e = sd
        .get("snapshot")?
        .get("element")?
        .as_array()?
        .iter()
        .find(|e| e.get("path").and_then(Value::as_str) == Some(path))?;
    let b = e.get("binding")?;
    Some((
        BindingStrength::from_code(b.get("strength")?.as_str()?)?,
        b.get("valueSet")?.as_str()?.to_string(),
    ))
}

impl Elem {
    /// Nothing on the element itself for a pass to check: no invariant, slicing, fixed or
    /// pattern value, limit, or binding beyond the core one.
    fn has_no_rules(&self) -> bool {
        self.checked_constraints.is_empty()
            && self.slices.is_empty()
            && self.slicing.is_none()
            && self.fixed.is_none()
            && self.pattern.is_none()
            && self.min_value.is_none()
            && self.max_value.is_none()
            && self.max_length.is_none()
            && self.binding_is_core
    }
}

impl Profile {
    /// Whether element `e` is inert for the core pass of a resource without extensions:
    /// no invariant, fixed or pattern value, limit, slicing or non-core binding in its
    /// subtree, and no type that needs checking (Reference, Resource, Attachment, markdown,
    /// Extension, profiled types). Computed once per element without blocking: a cycle
    /// between definitions counts as not inert.
    pub(crate) fn inert(&self, reg: &Registry, e: usize) -> bool {
        let mut visiting = Vec::new();
        self.inert_in(reg, e, &mut visiting)
    }

    /// The children of `e` a core pass without extensions must visit (not inert), or
    /// `None` when one of them is a choice: then the object's keys are walked instead.
    pub(crate) fn active_children(&self, reg: &Registry, e: usize) -> Option<&[usize]> {
        let el = self.elems.get(e)?;
        el.active_children
            .get_or_init(|| {
                let active: Vec<usize> = el
                    .children
                    .iter()
                    .copied()
                    .filter(|&c| !self.elems[c].plain_primitive && !self.inert(reg, c))
                    .collect();
                let choice = active.iter().any(|&c| self.elems[c].choice_base.is_some());
                (!choice).then_some(active)
            })
            .as_deref()
    }

    fn inert_in(
        &self,
        reg: &Registry,
        e: usize,
        visiting: &mut Vec<(*const Profile, usize)>,
    ) -> bool {
        let Some(el) = self.elems.get(e) else {
            return false;
        };
        if let Some(known) = el.inert.get() {
            return *known;
        }
        let me = (self as *const Profile, e);
        if visiting.contains(&me) || visiting.len() > 32 {
            return false;
        }
        visiting.push(me);
        let inert = el.has_no_rules()
            && el.children.iter().all(|&c| self.inert_in(reg, c, visiting))
            && el.types.iter().all(|t| type_inert(reg, t, visiting))
            && el
                .content_reference
                .is_none_or(|r| self.inert_in(reg, r, visiting));
        visiting.pop();
        // Another thread may have got there first with the same answer.
        let _ = el.inert.set(inert);
        inert
    }
}

fn type_inert(reg: &Registry, t: &TypeRule, visiting: &mut Vec<(*const Profile, usize)>) -> bool {
    if t.profiles
        .iter()
        .any(|p| !is_core_definition(p) || p.ends_with("Quantity"))
    {
        return false;
    }
    match t.code.as_str() {
        "markdown" | "Reference" | "Resource" | "Attachment" | "Extension" => false,
        // Their elements are the element's own children, judged above.
        "BackboneElement" | "Element" => true,
        code if code.starts_with(|c: char| c.is_ascii_lowercase()) => true,
        code => {
            let dt = t.core_type.get_or_init(|| {
                reg.profile(&format!("http://hl7.org/fhir/StructureDefinition/{code}"))
                    .ok()
            });
            dt.as_deref()
                .is_some_and(|dt| dt.inert_in(reg, 0, visiting))
        }
    }
}

impl Registry {
    /// The compiled profile of that canonical (cached; errors are cached too).
    pub(crate) fn profile(&self, canonical: &str) -> ProfileResult {
        if let Some(hit) = self
            .profiles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(canonical)
        {
            return (**hit).clone();
        }
        let result = match self.structure_definition(canonical) {
            None => Err(format!("the profile {canonical} is not known")),
            Some(sd) => match self.snapshot(canonical) {
                Ok(elements) => Ok(Arc::new(Profile::compile(self, sd, &elements))),
                Err(e) => Err(format!("the profile {canonical} cannot be used: {e}")),
            },
        };
        self.profiles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(canonical.to_string(), Arc::new(result.clone()));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_into_parent_and_slice() {
        assert_eq!(split_id("Observation.code"), (Some("Observation"), None));
        assert_eq!(
            split_id("Observation.component:a"),
            (Some("Observation"), Some(("Observation.component", "a")))
        );
        assert_eq!(
            split_id("Observation.component:a.code"),
            (Some("Observation.component:a"), None)
        );
        assert_eq!(split_id("Observation"), (None, None));
    }

    #[test]
    fn core_profile_compiles() {
        let reg = Registry::standard();
        let p = reg
            .profile("http://hl7.org/fhir/StructureDefinition/Patient")
            .expect("Patient");
        let root = &p.elems[0];
        assert!(root.children.len() > 15);
        let gender = p
            .elems
            .iter()
            .find(|e| e.id == "Patient.gender")
            .expect("gender");
        assert!(gender.binding_is_core);
    }
}
