//! Local terminology: ValueSet expansion from the CodeSystems and ValueSets of the loaded
//! packages, and code membership checks for bindings (and, later, FHIRPath `memberOf()`).
//!
//! caregate has no terminology server. A value set is expanded here from its `compose`:
//! enumerated concepts, whole code systems, `is-a`/`descendent-of`/`=` filters on local
//! hierarchies, `valueSet` imports and exclusions. What cannot be decided locally (SNOMED CT,
//! LOINC, RxNorm, a filter on a system we do not have, a missing imported value set) is
//! remembered as *open*: a code that would fall there answers [`CodeCheck::CannotCheck`]
//! with the reason, so a binding check can warn instead of passing silently.
//!
//! Expansions are computed on first use and kept (lock-free reads afterwards): a binding
//! check is then one or two hash lookups.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::model::{FxHasher, FxMap};
use crate::package::PackageRef;

pub(crate) type FxSet<T> = HashSet<T, BuildHasherDefault<FxHasher>>;

/// The answer to "is this code in that value set?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeCheck {
    Valid,
    Invalid,
    /// Membership cannot be decided locally (external code system, unknown value set, ...).
    CannotCheck(String),
}

/// Code systems defined by a grammar rather than a list: checked by syntax, which is what
/// the reference validator does for them too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grammar {
    /// `urn:ietf:bcp:13`, MIME types (`application/fhir+json; charset=utf-8`).
    MimeType,
    /// `urn:ietf:bcp:47`, language tags (`en-US`).
    Language,
    /// `urn:iso:std:iso:4217`, currencies: a fixed list carried here.
    Currency,
}

fn grammar_of(system: &str) -> Option<Grammar> {
    match system {
        "urn:ietf:bcp:13" => Some(Grammar::MimeType),
        "urn:ietf:bcp:47" => Some(Grammar::Language),
        "urn:iso:std:iso:4217" => Some(Grammar::Currency),
        _ => None,
    }
}

/// Human name of the large external systems, for messages that say why nothing was checked.
fn external_name(system: &str) -> Option<&'static str> {
    Some(match system {
        "http://snomed.info/sct" => "SNOMED CT",
        "http://loinc.org" => "LOINC",
        "http://www.nlm.nih.gov/research/umls/rxnorm" => "RxNorm",
        "http://unitsofmeasure.org" => "UCUM",
        "http://hl7.org/fhir/sid/ndc" => "NDC",
        "http://www.ama-assn.org/go/cpt" => "CPT",
        "http://hl7.org/fhir/sid/cvx" => "CVX",
        "http://nucc.org/provider-taxonomy" => "NUCC provider taxonomy",
        "urn:iso:std:iso:3166" => "ISO 3166",
        s if s.starts_with("http://hl7.org/fhir/sid/icd-10") => "ICD-10",
        s if s.starts_with("http://hl7.org/fhir/sid/icd-9") => "ICD-9",
        _ => return None,
    })
}

fn not_available(system: &str) -> String {
    match external_name(system) {
        Some(name) => format!("{name} ({system}) is not available locally"),
        None => format!("the code system {system} is not available locally"),
    }
}

fn strip_version(url: &str) -> (&str, Option<&str>) {
    match url.split_once('|') {
        Some((u, v)) => (u, Some(v)),
        None => (url, None),
    }
}

/// The codes a value set contains, as far as they are known locally.
#[derive(Debug, Default)]
pub struct Expansion {
    /// system → codes, for everything that could be enumerated.
    codes: FxMap<Box<str>, FxSet<Box<str>>>,
    /// Systems (partly) included that cannot be enumerated here, with the reason.
    open: Vec<(Box<str>, String)>,
    /// Systems included whole that are checked by grammar.
    grammar: Vec<(Box<str>, Grammar)>,
    /// Set when part of the definition could not be resolved at all (a missing imported
    /// value set): any code not found is then undecidable.
    incomplete: Option<String>,
}

impl Expansion {
    /// Membership of `code` (in `system`, or in any system when the element is a bare
    /// `code` whose system is implied by the binding).
    pub fn check(&self, system: Option<&str>, code: &str) -> CodeCheck {
        match system {
            Some(system) => {
                if self.codes.get(system).is_some_and(|c| c.contains(code)) {
                    return CodeCheck::Valid;
                }
                if let Some((_, g)) = self.grammar.iter().find(|(s, _)| &**s == system) {
                    return if grammar_ok(*g, code) {
                        CodeCheck::Valid
                    } else {
                        CodeCheck::Invalid
                    };
                }
                if let Some((_, reason)) = self.open.iter().find(|(s, _)| &**s == system) {
                    return CodeCheck::CannotCheck(reason.clone());
                }
            }
            None => {
                if self.codes.values().any(|c| c.contains(code)) {
                    return CodeCheck::Valid;
                }
                if self.grammar.iter().any(|(_, g)| grammar_ok(*g, code)) {
                    return CodeCheck::Valid;
                }
                if let Some((_, reason)) = self.open.first() {
                    return CodeCheck::CannotCheck(reason.clone());
                }
            }
        }
        match &self.incomplete {
            Some(reason) => CodeCheck::CannotCheck(reason.clone()),
            None => CodeCheck::Invalid,
        }
    }

    /// Number of enumerated codes (tests and diagnostics).
    pub fn len(&self) -> usize {
        self.codes.values().map(FxSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when every code of the value set is known here (nothing open, no grammar).
    pub fn is_closed(&self) -> bool {
        self.open.is_empty() && self.grammar.is_empty() && self.incomplete.is_none()
    }

    fn add_open(&mut self, system: &str, reason: String) {
        if !self.open.iter().any(|(s, _)| &**s == system) {
            self.open.push((system.into(), reason));
        }
    }

    fn add_codes<'c>(&mut self, system: &str, codes: impl IntoIterator<Item = &'c str>) {
        let set = self.codes.entry(system.into()).or_default();
        set.extend(codes.into_iter().map(Box::from));
    }

    fn union(&mut self, other: Expansion) {
        for (s, codes) in other.codes {
            self.codes.entry(s).or_default().extend(codes);
        }
        for (s, r) in other.open {
            self.add_open(&s, r);
        }
        for (s, g) in other.grammar {
            if !self.grammar.iter().any(|(x, _)| *x == s) {
                self.grammar.push((s, g));
            }
        }
        if self.incomplete.is_none() {
            self.incomplete = other.incomplete;
        }
    }

    /// Intersection (codes in both); where one side is open for a system, the other side's
    /// codes are kept: an open side may contain them.
    fn intersect(self, other: &Expansion) -> Expansion {
        let mut out = Expansion::default();
        for (s, codes) in self.codes {
            let kept: FxSet<Box<str>> = if other.open.iter().any(|(o, _)| *o == s) {
                codes
            } else {
                match other.codes.get(&s) {
                    Some(o) => codes.into_iter().filter(|c| o.contains(c)).collect(),
                    None => FxSet::default(),
                }
            };
            if !kept.is_empty() {
                out.codes.insert(s, kept);
            }
        }
        for (s, r) in self.open {
            if let Some(o) = other.codes.get(&s) {
                out.add_codes(&s, o.iter().map(|c| &**c));
            } else if other.open.iter().any(|(o, _)| *o == s) {
                out.add_open(&s, r);
            }
        }
        out.incomplete = self.incomplete.or_else(|| other.incomplete.clone());
        out
    }
}

fn grammar_ok(g: Grammar, code: &str) -> bool {
    match g {
        Grammar::MimeType => is_mime_type(code),
        Grammar::Language => is_language_tag(code),
        Grammar::Currency => CURRENCIES.binary_search(&code).is_ok(),
    }
}

/// `type/subtype` with optional `; parameters`, registered top-level types only.
fn is_mime_type(s: &str) -> bool {
    let main = s.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = main.split_once('/') else {
        return false;
    };
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    matches!(
        ty.to_ascii_lowercase().as_str(),
        "application"
            | "audio"
            | "font"
            | "example"
            | "image"
            | "message"
            | "model"
            | "multipart"
            | "text"
            | "video"
    ) && token(sub)
}

/// BCP 47 shape: a 2–3 (or 4–8) letter primary language, or `x-`/`i-`, then subtags of
/// 1–8 alphanumerics.
fn is_language_tag(s: &str) -> bool {
    let mut parts = s.split('-');
    let Some(first) = parts.next() else {
        return false;
    };
    let first_ok = (first.len() >= 2 && first.len() <= 8
        || first.eq_ignore_ascii_case("x")
        || first.eq_ignore_ascii_case("i"))
        && first.bytes().all(|b| b.is_ascii_alphabetic());
    first_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// ISO 4217 alphabetic codes (current list, sorted for binary search).
const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BYR",
    "BZD", "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC",
    "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP",
    "GBP", "GEL", "GGP", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HRK", "HTG",
    "HUF", "IDR", "ILS", "IMP", "INR", "IQD", "IRR", "ISK", "JEP", "JMD", "JOD", "JPY", "KES",
    "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL",
    "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN",
    "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK",
    "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG",
    "SEK", "SGD", "SHP", "SLE", "SLL", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TVD", "TWD", "TZS", "UAH", "UGX", "USD", "USN",
    "UYI", "UYU", "UYW", "UZS", "VED", "VEF", "VES", "VND", "VUV", "WST", "XAF", "XAG", "XAU",
    "XBA", "XBB", "XBC", "XBD", "XCD", "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XTS", "XUA",
    "XXX", "YER", "ZAR", "ZMW", "ZWL",
];

/// Where a resource lives: package index, resource index.
#[derive(Debug, Clone, Copy)]
struct Loc {
    pkg: u32,
    idx: u32,
}

#[derive(Debug)]
struct CsSlot {
    loc: Loc,
    version: Option<Box<str>>,
    index: OnceLock<Arc<CsIndex>>,
}

#[derive(Debug)]
struct VsSlot {
    loc: Loc,
    version: Option<Box<str>>,
    expansion: OnceLock<Arc<Expansion>>,
}

/// One code system's concepts, with the hierarchy (nesting, `parent`/`subsumedBy`/`child`
/// properties) resolved to indices.
#[derive(Debug)]
struct CsIndex {
    /// `content = complete`: a code not listed is not in the system.
    complete: bool,
    codes: FxMap<Box<str>, u32>,
    names: Vec<Box<str>>,
    children: Vec<Vec<u32>>,
    parents: Vec<Vec<u32>>,
    /// (concept, property code, value as text)
    properties: Vec<(u32, Box<str>, Box<str>)>,
}

impl CsIndex {
    fn build(cs: &Value) -> CsIndex {
        let mut idx = CsIndex {
            complete: cs.get("content").and_then(Value::as_str) == Some("complete"),
            codes: FxMap::default(),
            names: Vec::new(),
            children: Vec::new(),
            parents: Vec::new(),
            properties: Vec::new(),
        };
        let mut links: Vec<(u32, &str, bool)> = Vec::new(); // (concept, other, other-is-parent)
        fn walk<'v>(
            idx: &mut CsIndex,
            links: &mut Vec<(u32, &'v str, bool)>,
            concepts: &'v [Value],
            parent: Option<u32>,
        ) {
            for c in concepts {
                let Some(code) = c.get("code").and_then(Value::as_str) else {
                    continue;
                };
                let id = match idx.codes.get(code) {
                    Some(&id) => id,
                    None => {
                        let id = idx.names.len() as u32;
                        idx.codes.insert(code.into(), id);
                        idx.names.push(code.into());
                        idx.children.push(Vec::new());
                        idx.parents.push(Vec::new());
                        id
                    }
                };
                if let Some(p) = parent {
                    idx.link(p, id);
                }
                for prop in c
                    .get("property")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(pcode) = prop.get("code").and_then(Value::as_str) else {
                        continue;
                    };
                    let value = property_text(prop);
                    match (pcode, prop.get("valueCode").and_then(Value::as_str)) {
                        ("parent" | "subsumedBy", Some(other)) => links.push((id, other, true)),
                        ("child", Some(other)) => links.push((id, other, false)),
                        _ => {}
                    }
                    if let Some(v) = value {
                        idx.properties.push((id, pcode.into(), v.into()));
                    }
                }
                if let Some(sub) = c.get("concept").and_then(Value::as_array) {
                    walk(idx, links, sub, Some(id));
                }
            }
        }
        if let Some(concepts) = cs.get("concept").and_then(Value::as_array) {
            walk(&mut idx, &mut links, concepts, None);
        }
        for (id, other, other_is_parent) in links {
            if let Some(&o) = idx.codes.get(other) {
                if other_is_parent {
                    idx.link(o, id);
                } else {
                    idx.link(id, o);
                }
            }
        }
        idx
    }

    fn link(&mut self, parent: u32, child: u32) {
        if parent == child {
            return;
        }
        let kids = &mut self.children[parent as usize];
        if !kids.contains(&child) {
            kids.push(child);
            self.parents[child as usize].push(parent);
        }
    }

    /// The concept and everything below it (`self_too`), or only below it.
    fn descendants(&self, root: u32, self_too: bool) -> FxSet<u32> {
        let mut out = FxSet::default();
        let mut stack = vec![root];
        if self_too {
            out.insert(root);
        }
        while let Some(n) = stack.pop() {
            for &c in &self.children[n as usize] {
                if out.insert(c) {
                    stack.push(c);
                }
            }
        }
        if !self_too {
            out.remove(&root);
        }
        out
    }

    fn ancestors(&self, root: u32) -> FxSet<u32> {
        let mut out = FxSet::default();
        out.insert(root);
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            for &p in &self.parents[n as usize] {
                if out.insert(p) {
                    stack.push(p);
                }
            }
        }
        out
    }

    /// The concepts one filter selects, or `None` when the filter cannot be evaluated here.
    fn filter(&self, property: &str, op: &str, value: &str) -> Option<FxSet<u32>> {
        let hierarchy = matches!(property, "concept" | "code");
        let code = |c: &str| self.codes.get(c).copied();
        match (hierarchy, op) {
            (true, "is-a") => {
                Some(code(value).map_or_else(FxSet::default, |r| self.descendants(r, true)))
            }
            (true, "descendent-of") => {
                Some(code(value).map_or_else(FxSet::default, |r| self.descendants(r, false)))
            }
            (true, "is-not-a") => {
                let below = code(value).map_or_else(FxSet::default, |r| self.descendants(r, true));
                Some(
                    (0..self.names.len() as u32)
                        .filter(|c| !below.contains(c))
                        .collect(),
                )
            }
            (true, "generalizes") => {
                Some(code(value).map_or_else(FxSet::default, |r| self.ancestors(r)))
            }
            (true, "in") => Some(value.split(',').filter_map(|c| code(c.trim())).collect()),
            (true, "=") => Some(code(value).into_iter().collect()),
            (false, "=") if property == "parent" => {
                Some(code(value).map_or_else(FxSet::default, |r| {
                    self.children[r as usize].iter().copied().collect()
                }))
            }
            (false, "=") if property == "child" => {
                Some(code(value).map_or_else(FxSet::default, |r| {
                    self.parents[r as usize].iter().copied().collect()
                }))
            }
            (false, "=") => Some(
                self.properties
                    .iter()
                    .filter(|(_, p, v)| &**p == property && &**v == value)
                    .map(|(c, _, _)| *c)
                    .collect(),
            ),
            (false, "in") => {
                let wanted: Vec<&str> = value.split(',').map(str::trim).collect();
                Some(
                    self.properties
                        .iter()
                        .filter(|(_, p, v)| &**p == property && wanted.contains(&&**v))
                        .map(|(c, _, _)| *c)
                        .collect(),
                )
            }
            (false, "exists") => {
                let has: FxSet<u32> = self
                    .properties
                    .iter()
                    .filter(|(_, p, _)| &**p == property)
                    .map(|(c, _, _)| *c)
                    .collect();
                Some(if value == "true" {
                    has
                } else {
                    (0..self.names.len() as u32)
                        .filter(|c| !has.contains(c))
                        .collect()
                })
            }
            _ => None,
        }
    }
}

fn property_text(prop: &Value) -> Option<String> {
    for key in ["valueCode", "valueString", "valueDateTime", "valueDecimal"] {
        if let Some(s) = prop.get(key).and_then(Value::as_str) {
            return Some(s.to_string());
        }
    }
    if let Some(b) = prop.get("valueBoolean").and_then(Value::as_bool) {
        return Some(b.to_string());
    }
    if let Some(n) = prop.get("valueInteger") {
        return Some(n.to_string());
    }
    prop.get("valueCoding")
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Deepest chain of value set imports followed before giving up (cycles end sooner).
const MAX_IMPORT_DEPTH: usize = 16;

/// Value sets and code systems of the loaded packages, with expansions cached.
///
/// Immutable after construction apart from the caches, and `Send + Sync`: one instance is
/// shared by the validators of all threads.
#[derive(Debug, Default)]
pub struct Terminology {
    packages: Vec<PackageRef>,
    code_systems: FxMap<Box<str>, Vec<CsSlot>>,
    value_sets: FxMap<Box<str>, Vec<VsSlot>>,
}

impl Terminology {
    /// Terminology of the R4 core package, built once per process.
    pub fn r4_core() -> &'static Arc<Terminology> {
        static CORE: OnceLock<Arc<Terminology>> = OnceLock::new();
        CORE.get_or_init(|| {
            Arc::new(Terminology::new(vec![PackageRef::Static(
                crate::Package::r4_core(),
            )]))
        })
    }

    /// Indexes the CodeSystems and ValueSets of `packages`; on duplicate canonical URLs
    /// (same version or none), the later package wins.
    pub fn new(packages: Vec<PackageRef>) -> Terminology {
        let mut t = Terminology {
            packages,
            ..Terminology::default()
        };
        for (p, pkg) in t.packages.iter().enumerate() {
            for (i, r) in pkg.resources().iter().enumerate() {
                let rt = r.get("resourceType").and_then(Value::as_str);
                let Some(url) = r.get("url").and_then(Value::as_str) else {
                    continue;
                };
                let version = r.get("version").and_then(Value::as_str).map(Box::from);
                let loc = Loc {
                    pkg: p as u32,
                    idx: i as u32,
                };
                match rt {
                    Some("CodeSystem") => {
                        // A supplement adds designations/properties to another system; it
                        // does not define the system's codes.
                        if r.get("content").and_then(Value::as_str) == Some("supplement") {
                            continue;
                        }
                        let slots = t.code_systems.entry(url.into()).or_default();
                        slots.retain(|s| s.version != version);
                        slots.push(CsSlot {
                            loc,
                            version,
                            index: OnceLock::new(),
                        });
                    }
                    Some("ValueSet") => {
                        let slots = t.value_sets.entry(url.into()).or_default();
                        slots.retain(|s| s.version != version);
                        slots.push(VsSlot {
                            loc,
                            version,
                            expansion: OnceLock::new(),
                        });
                    }
                    _ => {}
                }
            }
        }
        t
    }

    fn resource(&self, loc: Loc) -> Option<&Value> {
        self.packages
            .get(loc.pkg as usize)?
            .resources()
            .get(loc.idx as usize)
    }

    /// Picks the slot with the requested version, else the last loaded one: a version we do
    /// not have is answered with the one we do (R4 core value sets are cited as `|4.0.1`
    /// while the resources themselves carry that version anyway).
    fn pick<'s, S>(
        slots: &'s [S],
        version: Option<&str>,
        v: impl Fn(&S) -> Option<&str>,
    ) -> Option<&'s S> {
        version
            .and_then(|want| slots.iter().rev().find(|s| v(s) == Some(want)))
            .or_else(|| slots.last())
    }

    /// The ValueSet resource of that canonical (`url` or `url|version`).
    pub fn value_set(&self, canonical: &str) -> Option<&Value> {
        let (url, version) = strip_version(canonical);
        let slot = Self::pick(self.value_sets.get(url)?, version, |s| s.version.as_deref())?;
        self.resource(slot.loc)
    }

    /// The CodeSystem resource of that canonical.
    pub fn code_system(&self, canonical: &str) -> Option<&Value> {
        let (url, version) = strip_version(canonical);
        let slot = Self::pick(self.code_systems.get(url)?, version, |s| {
            s.version.as_deref()
        })?;
        self.resource(slot.loc)
    }

    /// A readable name for messages: title, else name, else the URL.
    pub fn value_set_label(&self, canonical: &str) -> String {
        let vs = self.value_set(canonical);
        let title = vs
            .and_then(|v| v.get("title").or_else(|| v.get("name")))
            .and_then(Value::as_str);
        match title {
            Some(t) => format!("'{t}' ({canonical})"),
            None => format!("'{canonical}'"),
        }
    }

    fn cs_index(&self, system: &str) -> Option<Arc<CsIndex>> {
        let slot = self.code_systems.get(system)?.last()?;
        if let Some(idx) = slot.index.get() {
            return Some(idx.clone());
        }
        let cs = self.resource(slot.loc)?;
        let idx = Arc::new(CsIndex::build(cs));
        Some(slot.index.get_or_init(|| idx).clone())
    }

    /// The (cached) expansion of a value set; `None` when the value set is not loaded.
    pub fn expansion(&self, canonical: &str) -> Option<Arc<Expansion>> {
        let mut stack = Vec::new();
        self.expand_inner(canonical, &mut stack)
    }

    fn expand_inner(&self, canonical: &str, stack: &mut Vec<String>) -> Option<Arc<Expansion>> {
        let (url, version) = strip_version(canonical);
        let slot = Self::pick(self.value_sets.get(url)?, version, |s| s.version.as_deref())?;
        if let Some(e) = slot.expansion.get() {
            return Some(e.clone());
        }
        if stack.iter().any(|s| s == url) || stack.len() >= MAX_IMPORT_DEPTH {
            // A cycle (or an absurd chain): this part is undecidable, and not cached.
            return Some(Arc::new(Expansion {
                incomplete: Some(format!("value set {url} imports itself")),
                ..Expansion::default()
            }));
        }
        let vs = self.resource(slot.loc)?;
        stack.push(url.to_string());
        let e = Arc::new(self.expand_value_set(vs, stack));
        stack.pop();
        Some(slot.expansion.get_or_init(|| e).clone())
    }

    fn expand_value_set(&self, vs: &Value, stack: &mut Vec<String>) -> Expansion {
        let mut out = Expansion::default();
        let Some(compose) = vs.get("compose") else {
            // Expansion-only value sets (rare in packages): take the listed codes.
            return self.stated_expansion(vs);
        };
        for inc in compose
            .get("include")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let part = self.include(inc, stack);
            out.union(part);
        }
        for exc in compose
            .get("exclude")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let part = self.include(exc, stack);
            for (s, codes) in &part.codes {
                if let Some(mine) = out.codes.get_mut(s) {
                    mine.retain(|c| !codes.contains(c));
                }
            }
            for (s, reason) in part.open {
                // Cannot tell which codes are excluded: the system becomes undecidable.
                if out.codes.remove(&s).is_some() {
                    out.add_open(&s, reason);
                }
            }
        }
        out
    }

    fn stated_expansion(&self, vs: &Value) -> Expansion {
        let mut out = Expansion::default();
        fn walk(out: &mut Expansion, items: &[Value]) {
            for c in items {
                if let (Some(s), Some(code)) = (
                    c.get("system").and_then(Value::as_str),
                    c.get("code").and_then(Value::as_str),
                ) {
                    out.add_codes(s, [code]);
                }
                if let Some(sub) = c.get("contains").and_then(Value::as_array) {
                    walk(out, sub);
                }
            }
        }
        match vs
            .get("expansion")
            .and_then(|e| e.get("contains"))
            .and_then(Value::as_array)
        {
            Some(items) => walk(&mut out, items),
            None => {
                let url = vs.get("url").and_then(Value::as_str).unwrap_or("?");
                out.incomplete = Some(format!("value set {url} has neither compose nor expansion"));
            }
        }
        out
    }

    /// One `compose.include` (or `exclude`) entry.
    fn include(&self, inc: &Value, stack: &mut Vec<String>) -> Expansion {
        let mut part = match inc.get("system").and_then(Value::as_str) {
            Some(system) => self.system_part(system, inc),
            None => {
                // Only value sets: their intersection.
                let mut acc: Option<Expansion> = None;
                for vs in inc
                    .get("valueSet")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    let e = self.import(vs, stack);
                    acc = Some(match acc {
                        None => {
                            let mut fresh = Expansion::default();
                            fresh.union(e);
                            fresh
                        }
                        Some(a) => a.intersect(&e),
                    });
                }
                return acc.unwrap_or_default();
            }
        };
        // A system together with value sets: the system part restricted to each of them.
        for vs in inc
            .get("valueSet")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let e = self.import(vs, stack);
            part = part.intersect(&e);
        }
        part
    }

    fn import(&self, canonical: &str, stack: &mut Vec<String>) -> Expansion {
        match self.expand_inner(canonical, stack) {
            Some(e) => {
                let mut copy = Expansion::default();
                for (s, codes) in &e.codes {
                    copy.codes.insert(s.clone(), codes.clone());
                }
                copy.open = e.open.clone();
                copy.grammar = e.grammar.clone();
                copy.incomplete = e.incomplete.clone();
                copy
            }
            None => Expansion {
                incomplete: Some(format!(
                    "the imported value set {canonical} is not available"
                )),
                ..Expansion::default()
            },
        }
    }

    fn system_part(&self, system: &str, inc: &Value) -> Expansion {
        let mut out = Expansion::default();
        let concepts = inc.get("concept").and_then(Value::as_array);
        let filters = inc.get("filter").and_then(Value::as_array);
        if let Some(concepts) = concepts {
            // An enumeration is decidable whether or not we have the system.
            out.add_codes(
                system,
                concepts
                    .iter()
                    .filter_map(|c| c.get("code").and_then(Value::as_str)),
            );
            return out;
        }
        // A CodeSystem resource with content `not-present` (SNOMED CT in the core package)
        // is as good as none.
        let index = self
            .cs_index(system)
            .filter(|i| i.complete || !i.names.is_empty());
        match (filters, index) {
            (Some(filters), Some(index)) => {
                let mut selected: Option<FxSet<u32>> = None;
                for f in filters {
                    let prop = f.get("property").and_then(Value::as_str).unwrap_or("");
                    let op = f.get("op").and_then(Value::as_str).unwrap_or("");
                    let value = f.get("value").and_then(Value::as_str).unwrap_or("");
                    let Some(set) = index.filter(prop, op, value) else {
                        out.add_open(
                            system,
                            format!("the filter '{prop} {op} {value}' on {system} cannot be evaluated locally"),
                        );
                        return out;
                    };
                    selected = Some(match selected {
                        None => set,
                        Some(prev) => prev.intersection(&set).copied().collect(),
                    });
                }
                let names = &index.names;
                out.add_codes(
                    system,
                    selected
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|i| names.get(i as usize).map(|n| &**n)),
                );
                if !index.complete {
                    out.add_open(
                        system,
                        format!("the code system {system} is only partly available locally"),
                    );
                }
            }
            (Some(_), None) => out.add_open(system, not_available(system)),
            (None, Some(index)) => {
                out.add_codes(system, index.names.iter().map(|n| &**n));
                if !index.complete {
                    if let Some(g) = grammar_of(system) {
                        out.grammar.push((system.into(), g));
                    } else {
                        out.add_open(system, not_available(system));
                    }
                }
            }
            (None, None) => match grammar_of(system) {
                Some(g) => out.grammar.push((system.into(), g)),
                None => out.add_open(system, not_available(system)),
            },
        }
        out
    }

    /// Is `code` (of `system`, when known) in the value set? This is the entry point for
    /// binding checks and FHIRPath `memberOf()`.
    pub fn validate_code(&self, value_set: &str, system: Option<&str>, code: &str) -> CodeCheck {
        match self.expansion(value_set) {
            Some(e) => e.check(system, code),
            None => CodeCheck::CannotCheck(format!("the value set {value_set} is not available")),
        }
    }

    /// Is the code defined by the code system? `CannotCheck` when the system is not
    /// available or not complete here.
    pub fn validate_system_code(&self, system: &str, code: &str) -> CodeCheck {
        match self.cs_index(system) {
            Some(idx) if idx.codes.contains_key(code) => CodeCheck::Valid,
            Some(idx) if idx.complete => CodeCheck::Invalid,
            _ => match grammar_of(system) {
                Some(g) if grammar_ok(g, code) => CodeCheck::Valid,
                Some(_) => CodeCheck::Invalid,
                None => CodeCheck::CannotCheck(not_available(system)),
            },
        }
    }

    /// True when the code system is defined (completely) by a loaded package.
    pub fn has_code_system(&self, system: &str) -> bool {
        self.cs_index(system).is_some_and(|i| i.complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn core() -> &'static Terminology {
        Terminology::r4_core()
    }

    #[test]
    fn enumerated_whole_system() {
        let t = core();
        let vs = "http://hl7.org/fhir/ValueSet/administrative-gender";
        let sys = Some("http://hl7.org/fhir/administrative-gender");
        assert_eq!(t.validate_code(vs, sys, "female"), CodeCheck::Valid);
        assert_eq!(t.validate_code(vs, None, "other"), CodeCheck::Valid);
        assert_eq!(t.validate_code(vs, None, "robot"), CodeCheck::Invalid);
        assert_eq!(
            t.validate_code(&format!("{vs}|4.0.1"), sys, "male"),
            CodeCheck::Valid
        );
        assert_eq!(
            t.validate_code(vs, Some("http://other"), "male"),
            CodeCheck::Invalid
        );
        assert!(t.expansion(vs).expect("expands").is_closed());
    }

    #[test]
    fn is_a_filter_with_exclusion() {
        let t = core();
        let vs = "http://terminology.hl7.org/ValueSet/v3-ActEncounterCode";
        let sys = Some("http://terminology.hl7.org/CodeSystem/v3-ActCode");
        assert_eq!(t.validate_code(vs, sys, "AMB"), CodeCheck::Valid);
        assert_eq!(t.validate_code(vs, sys, "IMP"), CodeCheck::Valid);
        // The root is excluded; codes outside the branch are not members.
        assert_eq!(
            t.validate_code(vs, sys, "_ActEncounterCode"),
            CodeCheck::Invalid
        );
        assert_eq!(t.validate_code(vs, sys, "CASH"), CodeCheck::Invalid);
    }

    #[test]
    fn external_systems_cannot_be_checked() {
        let t = core();
        // Condition.code's example binding: SNOMED CT is-a 404684003.
        let vs = "http://hl7.org/fhir/ValueSet/condition-code";
        match t.validate_code(vs, Some("http://snomed.info/sct"), "44054006") {
            CodeCheck::CannotCheck(reason) => assert!(reason.contains("SNOMED CT"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A system the value set does not include at all is not a member.
        assert_eq!(
            t.validate_code(vs, Some("http://example.org/x"), "1"),
            CodeCheck::Invalid
        );
        assert!(matches!(
            t.validate_code("http://example.org/no-such-vs", None, "x"),
            CodeCheck::CannotCheck(_)
        ));
        assert!(matches!(
            t.validate_system_code("http://loinc.org", "1234-5"),
            CodeCheck::CannotCheck(_)
        ));
    }

    #[test]
    fn enumerated_external_codes_are_decidable() {
        let t = core();
        let vs = "http://hl7.org/fhir/ValueSet/age-units";
        let ucum = Some("http://unitsofmeasure.org");
        assert_eq!(t.validate_code(vs, ucum, "a"), CodeCheck::Valid);
        assert_eq!(t.validate_code(vs, ucum, "m"), CodeCheck::Invalid);
    }

    #[test]
    fn value_set_imports() {
        let t = core();
        let vs = "http://hl7.org/fhir/ValueSet/security-labels";
        let conf = Some("http://terminology.hl7.org/CodeSystem/v3-Confidentiality");
        assert_eq!(t.validate_code(vs, conf, "R"), CodeCheck::Valid);
        assert_eq!(t.validate_code(vs, conf, "ZZZ"), CodeCheck::Invalid);
    }

    #[test]
    fn grammar_systems() {
        let t = core();
        let mime = "http://hl7.org/fhir/ValueSet/mimetypes";
        let bcp13 = Some("urn:ietf:bcp:13");
        assert_eq!(
            t.validate_code(mime, bcp13, "application/pdf"),
            CodeCheck::Valid
        );
        assert_eq!(
            t.validate_code(mime, None, "text/plain; charset=utf-8"),
            CodeCheck::Valid
        );
        assert_eq!(t.validate_code(mime, None, "pdf"), CodeCheck::Invalid);
        let cur = "http://hl7.org/fhir/ValueSet/currencies";
        assert_eq!(t.validate_code(cur, None, "USD"), CodeCheck::Valid);
        assert_eq!(t.validate_code(cur, None, "XYZ"), CodeCheck::Invalid);
        assert!(CURRENCIES.windows(2).all(|w| w[0] < w[1]));
        assert!(is_language_tag("en-US") && is_language_tag("zh-Hant-TW") && !is_language_tag("e"));
    }

    #[test]
    fn local_hierarchy_filters_and_cycles() {
        let cs = json!({"resourceType": "CodeSystem", "url": "http://x/cs", "content": "complete",
            "concept": [{"code": "root", "concept": [{"code": "a", "concept": [{"code": "a1"}]}, {"code": "b",
                "property": [{"code": "colour", "valueCode": "red"}]}]},
                {"code": "c", "property": [{"code": "parent", "valueCode": "b"}]}]});
        let vs = |id: &str, compose: Value| json!({"resourceType": "ValueSet", "url": format!("http://x/vs/{id}"), "compose": compose});
        let pkg = crate::Package::from_resources(vec![
            cs,
            vs(
                "isa",
                json!({"include": [{"system": "http://x/cs", "filter": [{"property": "concept", "op": "is-a", "value": "a"}]}]}),
            ),
            vs(
                "desc",
                json!({"include": [{"system": "http://x/cs", "filter": [{"property": "concept", "op": "descendent-of", "value": "root"}]}]}),
            ),
            vs(
                "eq",
                json!({"include": [{"system": "http://x/cs", "filter": [{"property": "colour", "op": "=", "value": "red"}]}]}),
            ),
            vs(
                "loop1",
                json!({"include": [{"valueSet": ["http://x/vs/loop2"]}, {"system": "http://x/cs", "concept": [{"code": "a"}]}]}),
            ),
            vs(
                "loop2",
                json!({"include": [{"valueSet": ["http://x/vs/loop1"]}]}),
            ),
        ]);
        let t = Terminology::new(vec![PackageRef::Shared(Arc::new(pkg))]);
        let s = Some("http://x/cs");
        assert_eq!(
            t.validate_code("http://x/vs/isa", s, "a1"),
            CodeCheck::Valid
        );
        assert_eq!(t.validate_code("http://x/vs/isa", s, "a"), CodeCheck::Valid);
        assert_eq!(
            t.validate_code("http://x/vs/isa", s, "b"),
            CodeCheck::Invalid
        );
        assert_eq!(
            t.validate_code("http://x/vs/desc", s, "root"),
            CodeCheck::Invalid
        );
        // `c` is below `b` through its parent property.
        assert_eq!(
            t.validate_code("http://x/vs/desc", s, "c"),
            CodeCheck::Valid
        );
        assert_eq!(t.validate_code("http://x/vs/eq", s, "b"), CodeCheck::Valid);
        assert_eq!(
            t.validate_code("http://x/vs/eq", s, "a"),
            CodeCheck::Invalid
        );
        assert_eq!(
            t.validate_code("http://x/vs/loop1", s, "a"),
            CodeCheck::Valid
        );
        assert!(matches!(
            t.validate_code("http://x/vs/loop1", s, "b"),
            CodeCheck::CannotCheck(_)
        ));
    }

    #[test]
    fn every_core_value_set_expands() {
        let t = core();
        let mut n = 0;
        for vs in crate::Package::r4_core().of_type("ValueSet") {
            let url = vs["url"].as_str().expect("url");
            assert!(t.expansion(url).is_some(), "{url}");
            n += 1;
        }
        assert!(n > 1000);
    }
}
