//! Profile validation: a resource checked against the core definition of its type (reference
//! targets, extensions, nested resources) and against every profile it claims
//! (`meta.profile`) or the caller requires: cardinality, fixed/pattern values, bindings,
//! type restrictions, reference target profiles, slicing and extensions.
//!
//! The structural walk ([`StructureModel`]) runs first; this pass adds what needs the
//! profile tree and never repeats what the structural pass already reported (core
//! cardinality, core bindings, JSON shapes).

use std::sync::{Arc, OnceLock};

use caregate_core::keys::KeyIndex;

use caregate_core::{Issue, IssueCode, Severity};
use serde_json::{Map, Value};

use crate::model::{BindingStrength, ElementKind, FxMap, TableId};
use crate::profile::{is_core_definition, Constraint, DiscKind, Elem, Profile, Rules, TypeRule};
use crate::registry::Registry;
use crate::terminology::CodeCheck;
use crate::validate::{decimal, Location, WalkHooks, Walker};
use crate::StructureModel;
use caregate_core::json::{field, member};

/// Evaluates FHIRPath invariants (ElementDefinition.constraint). The validator calls it
/// for each constraint of each element it visits; caregate-fhirpath provides the
/// implementation. Without one, invariants are not evaluated.
pub trait InvariantEvaluator: Send + Sync {
    fn evaluate(&self, ctx: &InvariantContext<'_>) -> InvariantOutcome;
}

/// What an invariant is evaluated on.
pub struct InvariantContext<'a> {
    pub constraint: &'a Constraint,
    /// The element the constraint is defined on (`$this`).
    pub focus: &'a Value,
    /// The resource containing the focus (`%resource`).
    pub resource: &'a Value,
    /// The resource that contains `resource` when it is contained, else `resource`
    /// itself (`%rootResource`).
    pub container: &'a Value,
    /// The outermost resource, e.g. the Bundle (`%rootResource`), for `resolve()`.
    pub root: &'a Value,
    /// The FHIR type of the focus: the element path of its definition (`Patient.contact`,
    /// `HumanName`, `Observation`), which FHIRPath uses to type backbone elements.
    pub fhir_type: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvariantOutcome {
    Satisfied,
    Violated,
    /// The expression could not be evaluated (unsupported function, syntax): a warning.
    NotEvaluated(String),
}

/// Per-call choices.
#[derive(Debug, Clone)]
pub struct ValidationOptions {
    /// Profiles the resource must meet in addition to those it claims (by configuration for
    /// its source and type, `$validate?profile=`, `caregate validate --profile`).
    pub profiles: Vec<String>,
    /// Check the profiles listed in `meta.profile` (default true).
    pub meta_profiles: bool,
    /// Severity for a claimed or required profile that is not known (default error).
    pub unknown_profile: Severity,
    /// Severity for an extension whose definition is not known (default error, as the
    /// reference validator; `None` ignores them).
    pub unknown_extension: Option<Severity>,
    /// Run the structural validator first (default true).
    pub structure: bool,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        ValidationOptions {
            profiles: Vec::new(),
            meta_profiles: true,
            unknown_profile: Severity::Error,
            unknown_extension: Some(Severity::Error),
            structure: true,
        }
    }
}

/// The validator for `$validate`, `caregate validate` and (with configured profiles) the
/// write path. Cheap to clone; shares the registry and the compiled profiles.
#[derive(Clone)]
pub struct Validator {
    registry: Arc<Registry>,
    pub(crate) model: &'static StructureModel,
    invariants: Option<Arc<dyn InvariantEvaluator>>,
    /// Reject strings that carry HTML markup (see [`Validator::with_security_checks`]).
    security_checks: bool,
    /// Reject HTML tags in markdown (see [`Validator::with_no_html_in_markdown`]).
    no_html_in_markdown: bool,
    /// The core definition of each R4 resource type and complex datatype, compiled on
    /// first use; every resource's base pass starts here, without building and hashing
    /// its URL.
    core_profiles: Arc<KeyIndex<OnceLock<crate::profile::ProfileResult>>>,
    /// By structure-model table: what the core definitions check on its objects.
    table_rules: Arc<[OnceLock<TableRules>]>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("invariants", &self.invariants.is_some())
            .finish_non_exhaustive()
    }
}

/// Deepest nesting of profiles-within-profiles (extensions of extensions, datatype
/// profiles) followed; guards against definitions that refer to themselves.
const MAX_DEPTH: u32 = 24;

const CORE_SD: &str = "http://hl7.org/fhir/StructureDefinition/";

impl Validator {
    pub fn new(registry: Arc<Registry>) -> Validator {
        let model = StructureModel::r4_core();
        Validator {
            registry,
            model,
            invariants: None,
            security_checks: false,
            no_html_in_markdown: false,
            core_profiles: Arc::new(
                model
                    .types
                    .iter()
                    .filter(|(_, t)| !matches!(t.kind, crate::model::TypeKind::Primitive(_)))
                    .map(|(name, _)| (Box::from(name), OnceLock::new()))
                    .collect(),
            ),
            table_rules: (0..model.tables.len()).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The core definition of resource type or datatype `name`.
    fn core_profile(&self, name: &str) -> crate::profile::ProfileResult {
        let uncached = || self.registry.profile(&format!("{CORE_SD}{name}"));
        match self.core_profiles.get(name) {
            Some(slot) => slot.get_or_init(uncached).clone(),
            None => uncached(),
        }
    }

    /// Security checks on inbound text (the reference validator's `security-checks`): a
    /// string element (other than the narrative, which has its own rules) that contains
    /// HTML markup is an error, since a consumer that renders it unescaped would run it.
    pub fn with_security_checks(mut self, on: bool) -> Validator {
        self.security_checks = on;
        self
    }

    /// Markdown must not embed HTML tags (the reference validator's `noHtmlInMarkdown`):
    /// presentation layers should escape them, but not all do.
    pub fn with_no_html_in_markdown(mut self, on: bool) -> Validator {
        self.no_html_in_markdown = on;
        self
    }

    /// The validator with FHIRPath invariants (caregate-fhirpath; `memberOf()` answered by
    /// the registry's terminology).
    pub fn with_fhirpath(registry: Arc<Registry>) -> Validator {
        let evaluator =
            crate::invariants::FhirPathInvariants::new(Some(registry.terminology().clone()));
        Validator::new(registry).with_invariants(Arc::new(evaluator))
    }

    /// Evaluates invariants with `evaluator` (the FHIRPath engine).
    pub fn with_invariants(mut self, evaluator: Arc<dyn InvariantEvaluator>) -> Validator {
        self.invariants = Some(evaluator);
        self
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// All issues for one resource (a Bundle includes its entries), in walk order;
    /// any error means invalid.
    pub fn validate(&self, resource: &Value, opts: &ValidationOptions) -> Vec<Issue> {
        if !opts.structure {
            // Without the structural walk nobody looked: assume extensions may be anywhere.
            return self.after_structure(resource, opts, Vec::new(), true);
        }
        match self.walk(resource, opts) {
            Walked::Complete(issues) => issues,
            Walked::Structure { issues, extensions } => {
                self.after_structure(resource, opts, issues, extensions)
            }
        }
    }

    /// The write path's order: the structural walk, and only when it found no error the
    /// profile passes (which would restate its findings). Returns the issues and whether
    /// the structure was sound (`opts.structure` is ignored: the walk always runs, once).
    pub fn validate_staged(
        &self,
        resource: &Value,
        opts: &ValidationOptions,
    ) -> (Vec<Issue>, bool) {
        match self.walk(resource, opts) {
            Walked::Complete(issues) => (issues, true),
            Walked::Structure { issues, .. } if issues.iter().any(|i| i.severity.is_error()) => {
                (issues, false)
            }
            Walked::Structure { issues, extensions } => (
                self.after_structure(resource, opts, issues, extensions),
                true,
            ),
        }
    }

    /// The structural walk, making the core definitions' checks on the way (references,
    /// invariants, datatype profiles, nested resources: [`BaseChecks`]) while each value is
    /// in cache. That answer is complete when the walk found no error and no extension
    /// anywhere, which is the common case; otherwise the core-definition pass runs after
    /// the walk as before ([`Walked::Structure`]), since extensions need their definitions
    /// found and checked, and a structurally broken resource is reported as the walk saw it.
    fn walk(&self, resource: &Value, opts: &ValidationOptions) -> Walked {
        let rt = field(resource, "resourceType")
            .and_then(Value::as_str)
            .filter(|rt| self.model.is_resource_type(rt));
        let Some(rt) = rt.filter(|_| !self.no_html_in_markdown) else {
            let (issues, extensions) = self.model.validate_noting_extensions(resource);
            return Walked::Structure { issues, extensions };
        };
        let ctx = Ctx::new(self, opts, resource, rt, false);
        let mut walker = Walker::with_hooks(self.model, BaseChecks::new(&ctx));
        walker.resource(resource, false);
        let issues = walker.issues;
        if walker.saw_extensions || issues.iter().any(|i| i.severity.is_error()) {
            return Walked::Structure {
                issues,
                extensions: walker.saw_extensions,
            };
        }
        let hooks = walker.hooks;
        Walked::Complete(self.after_walk(resource, rt, issues, |out| {
            hooks.finish(&opts.profiles, out)
        }))
    }

    pub(crate) fn after_structure(
        &self,
        resource: &Value,
        opts: &ValidationOptions,
        issues: Vec<Issue>,
        extensions: bool,
    ) -> Vec<Issue> {
        let Some(rt) = field(resource, "resourceType").and_then(Value::as_str) else {
            return issues;
        };
        if !self.model.is_resource_type(rt) {
            return issues;
        }
        let ctx = Ctx::new(self, opts, resource, rt, extensions);
        self.after_walk(resource, rt, issues, |out| {
            ctx.resource(resource, rt, resource, &opts.profiles, out, 0)
        })
    }

    /// The walk's issues, then the security checks and `checks` (the core-definition and
    /// profile passes); a problem another pass restates is kept once.
    fn after_walk(
        &self,
        resource: &Value,
        rt: &str,
        mut issues: Vec<Issue>,
        checks: impl FnOnce(&mut Vec<Issue>),
    ) -> Vec<Issue> {
        let mut out = Vec::new();
        if self.security_checks {
            html_in_strings(resource, rt, &mut out);
        }
        checks(&mut out);
        for issue in out {
            if !issues.contains(&issue) {
                issues.push(issue);
            }
        }
        issues
    }

    /// What the core-definition pass checks on objects of model table `t`, compiled on
    /// first use from the core definition that describes them.
    fn table_rules(&self, t: TableId) -> Option<&TableRules> {
        let slot = self.table_rules.get(t as usize)?;
        Some(slot.get_or_init(|| TableRules::compile(self, t)))
    }
}

/// The result of [`Validator::walk`].
enum Walked {
    /// Every check made: the issues to report.
    Complete(Vec<Issue>),
    /// Only the structural walk counts; the core-definition pass is still to run.
    Structure {
        issues: Vec<Issue>,
        extensions: bool,
    },
}

/// The entries of a Bundle being validated, by `fullUrl`, for resolving references.
fn bundle_entries<'v>(resource: &'v Value, rt: &str) -> FxMap<&'v str, &'v Value> {
    let mut bundle: FxMap<&str, &Value> = FxMap::default();
    if rt == "Bundle" {
        for e in field(resource, "entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(url), Some(r)) = (
                field(e, "fullUrl").and_then(Value::as_str),
                field(e, "resource"),
            ) {
                bundle.insert(url, r);
            }
        }
    }
    bundle
}

/// What the core-definition pass checks on the objects of one structure-model table, so
/// the structural walk can check it as it goes ([`BaseChecks`]).
pub(crate) struct TableRules {
    /// The core definition describing the table's objects (its root type's).
    profile: Option<Arc<Profile>>,
    /// The element of `profile` whose constraints hold on every object of the table (a
    /// resource's root, a backbone element, a datatype's root), when it has any.
    own: Option<usize>,
    /// Attachments: their stated size is checked against their data.
    attachment: bool,
    /// By the table's element index: checks on each object value of that element.
    elements: Vec<Option<ElementRule>>,
}

/// Checks a value makes through the element that holds it (not through its own type).
struct ElementRule {
    /// In the table's `profile`.
    elem: usize,
    /// Into that element's types: the value's type.
    type_index: usize,
    /// A Reference with target profiles: its target's type is checked.
    reference: bool,
    /// Profiles on the type (SimpleQuantity, Duration, ...) the value must meet.
    profiles: Vec<String>,
}

impl TableRules {
    fn compile(v: &Validator, t: TableId) -> TableRules {
        let none = TableRules {
            profile: None,
            own: None,
            attachment: false,
            elements: Vec::new(),
        };
        let model = v.model;
        let Some(table) = model.tables.get(t as usize) else {
            return none;
        };
        let root_type = table.path.split('.').next().unwrap_or_default();
        let Ok(profile) = v.core_profile(root_type) else {
            return none;
        };
        let by_path = |path: &str| {
            profile
                .elems
                .iter()
                .position(|e| e.path == path && e.slice_name.is_none())
        };
        let own =
            by_path(&table.path).filter(|&e| !profile.elems[e].checked_constraints.is_empty());
        let checked = |p: &&String| !is_core_definition(p) || p.ends_with("Quantity");
        let elements = table
            .elements
            .iter()
            .map(|info| {
                let ElementKind::Complex(inner) = info.kind else {
                    return None;
                };
                let code = &*model.tables.get(inner as usize)?.path;
                let e = by_path(&info.path)?;
                let el = &profile.elems[e];
                if !el.children.is_empty() {
                    return None;
                }
                let (type_index, rule) = if info.choice.is_some() {
                    el.types.iter().enumerate().find(|(_, r)| r.code == code)?
                } else {
                    match el.types.as_slice() {
                        [one] => (0, one),
                        _ => return None,
                    }
                };
                let reference = rule.code == "Reference" && !rule.target_profiles.is_empty();
                let profiles: Vec<String> = if rule.code == "Extension" {
                    Vec::new()
                } else {
                    rule.profiles.iter().filter(checked).cloned().collect()
                };
                (reference || !profiles.is_empty()).then_some(ElementRule {
                    elem: e,
                    type_index,
                    reference,
                    profiles,
                })
            })
            .collect();
        TableRules {
            attachment: &*table.path == "Attachment",
            profile: Some(profile),
            own,
            elements,
        }
    }
}

/// The core-definition pass of a resource without extensions, made by the structural walk
/// on each object as it visits it (see [`Validator::walk`]): the same checks
/// [`Pass`] makes (reference targets, invariants, datatype profiles, attachment sizes),
/// found through [`TableRules`] instead of a second walk over the definitions.
struct BaseChecks<'c, 'v> {
    ctx: &'c Ctx<'v>,
    out: Vec<Issue>,
    /// The resources the walk is inside, innermost last: (resource, container, depth).
    frames: Vec<(&'v Value, &'v Value, u32)>,
    /// Every resource met, for the rules that look at a resource as a whole.
    resources: Vec<(&'v Value, &'v Value, String, u32)>,
    /// The current location, rebuilt in place when a check needs it.
    loc: String,
}

impl<'c, 'v> BaseChecks<'c, 'v> {
    fn new(ctx: &'c Ctx<'v>) -> Self {
        BaseChecks {
            ctx,
            out: Vec::new(),
            frames: Vec::with_capacity(4),
            resources: Vec::with_capacity(1),
            loc: String::with_capacity(64),
        }
    }

    /// The whole-resource rules (Bundle, QuestionnaireResponse, ... and claimed profiles)
    /// of every resource met, nested ones first as the core pass reaches them.
    fn finish(self, required: &[String], out: &mut Vec<Issue>) {
        out.extend(self.out);
        let mut resources = self.resources;
        if !resources.is_empty() {
            let root = resources.remove(0);
            resources.push(root);
        }
        let last = resources.len().saturating_sub(1);
        for (i, (res, container, loc, depth)) in resources.into_iter().enumerate() {
            let Some(rt) = field(res, "resourceType").and_then(Value::as_str) else {
                continue;
            };
            let required = if i == last { required } else { &[] };
            self.ctx
                .after_base(res, rt, &loc, container, required, out, depth);
        }
    }
}

impl<'c, 'v> WalkHooks<'v> for BaseChecks<'c, 'v> {
    fn enter_resource(&mut self, resource: &'v Value, contained: bool, at: Location<'_, 'v>) {
        let (container, depth) = match self.frames.last() {
            None => (resource, 0),
            Some(&(parent, _, d)) => (if contained { parent } else { resource }, d + 1),
        };
        self.frames.push((resource, container, depth));
        if depth <= MAX_DEPTH {
            at.write_into(&mut self.loc);
            self.resources
                .push((resource, container, self.loc.clone(), depth));
        }
    }

    fn leave_resource(&mut self) {
        self.frames.pop();
    }

    fn object(
        &mut self,
        via: Option<(TableId, u32)>,
        table: TableId,
        value: &'v Value,
        at: Location<'_, 'v>,
    ) {
        let Some(&frame) = self.frames.last() else {
            return;
        };
        let (_, _, depth) = frame;
        if depth > MAX_DEPTH {
            return;
        }
        let v = self.ctx.v;
        if let Some((parent, index)) = via {
            let rules = v.table_rules(parent);
            if let Some((profile, rule)) = rules.and_then(|r| {
                Some((
                    r.profile.as_deref()?,
                    r.elements.get(index as usize)?.as_ref()?,
                ))
            }) {
                at.write_into(&mut self.loc);
                let el = &profile.elems[rule.elem];
                let mut pass = Pass::base(self.ctx, profile, frame, &mut self.out);
                if rule.reference {
                    pass.reference(&el.types[rule.type_index], value, &self.loc);
                }
                if !rule.profiles.is_empty() {
                    pass.against_any_profile(&rule.profiles, value, &self.loc, Some(&el.path));
                }
            }
        }
        let Some(rules) = v.table_rules(table) else {
            return;
        };
        let Some(profile) = rules.profile.as_deref() else {
            return;
        };
        if rules.attachment {
            at.write_into(&mut self.loc);
            attachment_size(value, &self.loc, &mut self.out);
        }
        if let Some(e) = rules.own {
            Pass::base(self.ctx, profile, frame, &mut self.out).invariants(e, value, &at);
        }
    }
}

/// A location formatted only when an issue needs it.
trait LazyLoc {
    fn get(&self) -> std::borrow::Cow<'_, str>;
}

impl LazyLoc for str {
    fn get(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(self)
    }
}

impl LazyLoc for Location<'_, '_> {
    fn get(&self) -> std::borrow::Cow<'_, str> {
        let mut out = String::new();
        self.write_into(&mut out);
        std::borrow::Cow::Owned(out)
    }
}

struct Ctx<'v> {
    v: &'v Validator,
    opts: &'v ValidationOptions,
    root: &'v Value,
    bundle: FxMap<&'v str, &'v Value>,
    /// The structural walk saw an extension somewhere (or was not run). Without any, the
    /// core pass skips subtrees with nothing else to check ([`Profile::inert`]).
    extensions: bool,
}

/// One value found in the instance for an element definition.
struct Item<'v, 'c> {
    /// `None`: a primitive given only as `_name` (extensions, no value).
    value: Option<&'v Value>,
    loc: Loc,
    /// The type of a choice variant (`Quantity` for `valueQuantity`).
    type_code: Option<&'c str>,
    /// The `_name` entry of a primitive (its id and extensions).
    ext: Option<&'v Value>,
}

/// The children of one object a pass visits: on the stack for the usual handful, in a
/// vector beyond that.
#[derive(Default)]
struct ChildSet {
    inline: [usize; 16],
    len: usize,
    spill: Vec<usize>,
}

impl ChildSet {
    fn insert(&mut self, c: usize) {
        if self.inline[..self.len].contains(&c) || self.spill.contains(&c) {
            return;
        }
        if self.len < self.inline.len() {
            self.inline[self.len] = c;
            self.len += 1;
        } else {
            self.spill.push(c);
        }
    }

    /// In definition order, as a full walk visits them.
    fn sorted(mut self) -> impl Iterator<Item = usize> {
        let mut all = std::mem::take(&mut self.spill);
        if all.is_empty() {
            self.inline[..self.len].sort_unstable();
        } else {
            all.extend_from_slice(&self.inline[..self.len]);
            all.sort_unstable();
            self.len = 0;
        }
        let inline = self.inline;
        let len = self.len;
        (0..len).map(move |i| inline[i]).chain(all)
    }
}

/// A FHIRPath location of a visited value, kept inline when it fits (nearly always): a
/// pass builds one for every value it visits and reads it only to report an issue.
#[derive(Clone)]
enum Loc {
    Inline { len: u8, buf: [u8; LOC_INLINE] },
    Heap(String),
}

const LOC_INLINE: usize = 110;

impl Loc {
    fn as_str(&self) -> &str {
        match self {
            Loc::Inline { len, buf } => {
                let bytes = &buf[..usize::from(*len)];
                // SAFETY: `buf[..len]` is only ever written by `Loc::build`, which copies
                // whole `&str` pieces end to end, so it is valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Loc::Heap(s) => s,
        }
    }

    /// The concatenation of `parts`.
    fn build(parts: &[&str]) -> Loc {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > LOC_INLINE {
            return Loc::Heap(parts.concat());
        }
        let mut buf = [0u8; LOC_INLINE];
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p.as_bytes());
            at += p.len();
        }
        Loc::Inline {
            len: len as u8,
            buf,
        }
    }
}

impl std::ops::Deref for Loc {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{loc}.{name}` or `{loc}.{name}[{index}]`: built for every value a pass visits, so
/// without the formatting machinery or (usually) the heap.
fn child_loc(loc: &str, name: &str, index: Option<usize>) -> Loc {
    match index {
        None => Loc::build(&[loc, ".", name]),
        Some(i) => {
            let mut digits = [0u8; 20];
            let text = decimal(&mut digits, i);
            Loc::build(&[loc, ".", name, "[", text, "]"])
        }
    }
}

/// `rest` is the type code with its first letter upper-cased, as a choice element's JSON
/// name carries it (`DateTime` for `dateTime`); FHIR type codes are ASCII.
fn is_capitalised(code: &str, rest: &str) -> bool {
    let (c, r) = (code.as_bytes(), rest.as_bytes());
    !c.is_empty() && c.len() == r.len() && c[0].to_ascii_uppercase() == r[0] && c[1..] == r[1..]
}

fn issue(severity: Severity, code: IssueCode, loc: &str, msg: String) -> Issue {
    Issue::new(severity, code, msg).at(loc)
}

/// The resource type a reference string points at (`Patient/1`, `http://x/fhir/Patient/1`,
/// `Patient/1/_history/2`); `None` for `#contained`, `urn:` and unknown shapes.
pub(crate) fn reference_type(reference: &str) -> Option<&str> {
    // Byte scans: every reference of every resource comes through here.
    let end = reference
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(reference.len());
    let path = &reference[..end];
    // From the end: `…/Type/id` or `…/Type/id/_history/version`.
    let mut parts = path.rsplit('/');
    let _last = parts.next()?;
    let second = parts.next()?;
    if second == "_history" {
        if let (Some(_id), Some(t)) = (parts.next(), parts.next()) {
            return Some(t);
        }
    }
    Some(second)
}

/// `pattern` ⊆ `value`: every property of the pattern present with a matching value; each
/// array entry of the pattern matched by some entry of the value.
fn pattern_matches(pattern: &Value, value: &Value) -> bool {
    match (pattern, value) {
        (Value::Object(p), Value::Object(v)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| pattern_matches(pv, vv))),
        (Value::Array(p), Value::Array(v)) => p
            .iter()
            .all(|pi| v.iter().any(|vi| pattern_matches(pi, vi))),
        (Value::Array(p), single) => p.iter().all(|pi| pattern_matches(pi, single)),
        (Value::Number(a), Value::Number(b)) => a.to_string() == b.to_string(),
        (a, b) => a == b,
    }
}

/// dom-3: every contained resource is referenced (`#id`) from somewhere in the resource
/// (its other contained resources included), or itself refers to its container (`#`).
/// Any string equal to `#id` counts as a reference: the FHIRPath form accepts a
/// Reference.reference, canonical, uri or url, and no other string type holds `#id`.
fn contained_all_referenced(resource: &Value) -> bool {
    let contained = arr(resource, "contained");
    if contained.is_empty() {
        return true;
    }
    let mut refs: Vec<&str> = Vec::new();
    collect_local_refs(resource, &mut refs);
    contained.iter().all(|c| {
        let Some(id) = field(c, "id").and_then(Value::as_str) else {
            // Without an id it cannot be referenced; structure reports the missing id.
            return true;
        };
        if refs.iter().any(|r| r.strip_prefix('#') == Some(id)) {
            return true;
        }
        let mut inner = Vec::new();
        collect_local_refs(c, &mut inner);
        inner.contains(&"#")
    })
}

/// Every string starting with `#` inside `v`.
fn collect_local_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) if s.starts_with('#') => out.push(s),
        Value::Object(m) => m.values().for_each(|x| collect_local_refs(x, out)),
        Value::Array(a) => a.iter().for_each(|x| collect_local_refs(x, out)),
        _ => {}
    }
}

/// Bundle rules the definitions do not state as invariants: each `fullUrl` is an absolute
/// URL (R4 Bundle.entry.fullUrl: "fullUrl SHALL NOT disagree with the id in the resource";
/// the reference validator requires it absolute), and the paging/self link relations occur
/// at most once.
fn bundle_rules(bundle: &Value, loc: &str, out: &mut Vec<Issue>) {
    for (i, e) in arr(bundle, "entry").iter().enumerate() {
        if let Some(url) = field(e, "fullUrl").and_then(Value::as_str) {
            if !url.contains(':') {
                out.push(issue(
                    Severity::Error,
                    IssueCode::Invalid,
                    &format!("{loc}.entry[{i}]"),
                    format!("The fullUrl must be an absolute URL (not '{url}')"),
                ));
            }
        }
    }
    bundle_references(bundle, loc, out);
    let links = arr(bundle, "link");
    for (i, l) in links.iter().enumerate() {
        let Some(rel) = field(l, "relation").and_then(Value::as_str) else {
            continue;
        };
        let unique = matches!(
            rel,
            "self" | "first" | "previous" | "prev" | "next" | "last"
        );
        let earlier = links[..i]
            .iter()
            .any(|o| field(o, "relation").and_then(Value::as_str) == Some(rel));
        if unique && earlier {
            out.push(issue(
                Severity::Error,
                IssueCode::Invalid,
                &format!("{loc}.link[{i}]"),
                format!("The link relationship type '{rel}' can only occur once"),
            ));
        }
    }
}

/// Relative references between entries of a Bundle that holds several versions of one
/// resource (same type and id): an unversioned reference is ambiguous, and a versioned one
/// must name a version that is there. History and search bundles are lists, not graphs.
/// Walks the entries only when such duplicates exist (rare), so common bundles cost a
/// pass over the entry ids.
fn bundle_references(bundle: &Value, loc: &str, out: &mut Vec<Issue>) {
    if matches!(
        field(bundle, "type").and_then(Value::as_str),
        Some("history" | "searchset")
    ) {
        return;
    }
    let entries = arr(bundle, "entry");
    let key = |r: &'_ Value| -> Option<(String, String)> {
        Some((
            field(r, "resourceType")?.as_str()?.to_string(),
            field(r, "id")?.as_str()?.to_string(),
        ))
    };
    let mut seen: FxMap<(String, String), u32> = FxMap::default();
    for r in entries.iter().filter_map(|e| field(e, "resource")) {
        if let Some(k) = key(r) {
            *seen.entry(k).or_default() += 1;
        }
    }
    if seen.values().all(|n| *n < 2) {
        return;
    }
    for (i, e) in entries.iter().enumerate() {
        let Some(r) = field(e, "resource") else {
            continue;
        };
        let mut refs = Vec::new();
        collect_references(r, &format!("{loc}.entry[{i}].resource"), &mut refs);
        for (reference, at) in refs {
            if reference.contains(':') || reference.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = reference.split('/').collect();
            let (k, version) = match parts.as_slice() {
                [t, id] => ((t.to_string(), id.to_string()), None),
                [t, id, "_history", v] => ((t.to_string(), id.to_string()), Some(*v)),
                _ => continue,
            };
            let n = seen.get(&k).copied().unwrap_or(0);
            match version {
                None if n > 1 => out.push(issue(
                    Severity::Error,
                    IssueCode::Invalid,
                    &at,
                    format!("Found {n} matches for '{reference}' in the bundle: the reference must name the version"),
                )),
                Some(v) if n > 1 => {
                    let found = entries.iter().filter_map(|e| field(e, "resource")).any(|r| {
                        key(r).as_ref() == Some(&k)
                            && field(r, "meta").and_then(|m| field(m, "versionId")).and_then(Value::as_str)
                                == Some(v)
                    });
                    if !found {
                        out.push(issue(
                            Severity::Error,
                            IssueCode::Invalid,
                            &at,
                            format!("Can't find '{reference}' in the bundle: {n} resources there have that type and id, none that version"),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Every `reference` string inside `v` with its FHIRPath location (not descending into
/// contained resources, whose references are their own).
fn collect_references<'a>(v: &'a Value, loc: &str, out: &mut Vec<(&'a str, String)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "contained" {
                    continue;
                }
                if k == "reference" {
                    if let Some(r) = child.as_str() {
                        out.push((r, loc.to_string()));
                    }
                    continue;
                }
                if child.is_object() || child.is_array() {
                    collect_references(child, &format!("{loc}.{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            let base = loc;
            for (i, child) in a.iter().enumerate() {
                collect_references(child, &format!("{base}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// ValueSet.compose include/exclude name code systems by absolute URI (a contained code
/// system is referenced by its full canonical, not by a local name).
fn value_set_rules(vs: &Value, loc: &str, out: &mut Vec<Issue>) {
    let Some(compose) = field(vs, "compose") else {
        return;
    };
    for part in ["include", "exclude"] {
        for (i, inc) in arr(compose, part).iter().enumerate() {
            if let Some(system) = field(inc, "system").and_then(Value::as_str) {
                if !system.contains(':') {
                    out.push(issue(
                        Severity::Error,
                        IssueCode::Invalid,
                        &format!("{loc}.compose.{part}[{i}]"),
                        format!("URI values in ValueSet.compose.{part}.system must be absolute, not '{system}'"),
                    ));
                }
            }
        }
    }
}

/// A CodeSystem that supplements another says so in `content`.
fn code_system_rules(cs: &Value, loc: &str, out: &mut Vec<Issue>) {
    if field(cs, "supplements").is_some()
        && field(cs, "content").and_then(Value::as_str) != Some("supplement")
    {
        out.push(issue(
            Severity::Error,
            IssueCode::BusinessRule,
            &format!("{loc}.content"),
            "CodeSystem supplements SHALL have a content value of 'supplement'".to_string(),
        ));
    }
}

/// A tag: `<` then a letter, `/` or `!`, closed by a later `>`.
fn looks_like_html(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'<'
            && b.get(i + 1)
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == b'/' || *n == b'!')
            && b[i + 1..].contains(&b'>')
    })
}

/// Every string of the resource except narrative `div`s, checked for HTML markup.
fn html_in_strings(v: &Value, loc: &str, out: &mut Vec<Issue>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "div" || k == "resourceType" {
                    continue;
                }
                html_in_strings(child, &format!("{loc}.{}", k.trim_start_matches('_')), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                html_in_strings(child, &format!("{loc}[{i}]"), out);
            }
        }
        Value::String(s) if looks_like_html(s) => out.push(issue(
            Severity::Error,
            IssueCode::Invalid,
            loc,
            "The string value contains text that looks like embedded HTML tags, which are not \
             allowed for security reasons"
                .to_string(),
        )),
        _ => {}
    }
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Attachment.size states the size of `data` when both are present (decoded byte count of
/// the base64; computed from its length, without decoding).
fn attachment_size(att: &Value, loc: &str, out: &mut Vec<Issue>) {
    let (Some(data), Some(size)) = (
        field(att, "data").and_then(Value::as_str),
        field(att, "size").and_then(Value::as_u64),
    ) else {
        return;
    };
    let chars = data.bytes().filter(|b| !b.is_ascii_whitespace()).count() as u64;
    let padding = data
        .trim_end()
        .bytes()
        .rev()
        .take_while(|b| *b == b'=')
        .count() as u64;
    let actual = (chars / 4 * 3 + (chars % 4).saturating_sub(1)).saturating_sub(padding);
    if actual != size {
        out.push(issue(
            Severity::Error,
            IssueCode::Structure,
            loc,
            format!(
                "Stated Attachment size {size} does not match the actual size of the data {actual}"
            ),
        ));
    }
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(120).collect();
        format!("{cut}...")
    } else {
        s
    }
}

impl<'v> Ctx<'v> {
    fn new(
        v: &'v Validator,
        opts: &'v ValidationOptions,
        root: &'v Value,
        rt: &str,
        extensions: bool,
    ) -> Ctx<'v> {
        Ctx {
            v,
            opts,
            root,
            bundle: bundle_entries(root, rt),
            extensions,
        }
    }

    fn registry(&self) -> &'v Registry {
        &self.v.registry
    }

    /// A resource at `loc`: base pass against its type's core definition, then each
    /// claimed (and, for the root, required) profile.
    fn resource(
        &self,
        res: &'v Value,
        loc: &str,
        container: &'v Value,
        required: &[String],
        out: &mut Vec<Issue>,
        depth: u32,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        let Some(rt) = field(res, "resourceType").and_then(Value::as_str) else {
            return;
        };
        if !self.v.model.is_resource_type(rt) {
            return;
        }
        if let Ok(core) = self.v.core_profile(rt) {
            let mut pass = Pass {
                ctx: self,
                profile: &core,
                base: true,
                resource: res,
                container,
                out,
                depth,
                alias: None,
            };
            pass.element(0, res, loc);
        }
        self.after_base(res, rt, loc, container, required, out, depth);
    }

    /// The checks on a resource as a whole, after its core definition's: the rules of
    /// its type (Bundle, QuestionnaireResponse, conformance resources) and the profiles
    /// it claims in `meta.profile` or must meet (`required`).
    #[allow(clippy::too_many_arguments)]
    fn after_base(
        &self,
        res: &'v Value,
        rt: &str,
        loc: &str,
        container: &'v Value,
        required: &[String],
        out: &mut Vec<Issue>,
        depth: u32,
    ) {
        match rt {
            "QuestionnaireResponse" => {
                crate::questionnaire::check(self.registry(), self.v.model, res, loc, out)
            }
            "Bundle" => bundle_rules(res, loc, out),
            "StructureDefinition" => self.structure_definition(res, loc, out),
            "SearchParameter" => self.search_parameter(res, loc, out),
            "ValueSet" => value_set_rules(res, loc, out),
            "CodeSystem" => code_system_rules(res, loc, out),
            _ => {}
        }
        let mut claims: Vec<(String, String)> = Vec::new();
        if self.opts.meta_profiles {
            if let Some(list) = field(res, "meta")
                .and_then(|m| field(m, "profile"))
                .and_then(Value::as_array)
            {
                for (i, p) in list.iter().enumerate() {
                    if let Some(p) = p.as_str() {
                        claims.push((p.to_string(), format!("{loc}.meta.profile[{i}]")));
                    }
                }
            }
        }
        for p in required {
            if !claims.iter().any(|(c, _)| c == p) {
                claims.push((p.clone(), loc.to_string()));
            }
        }
        for (url, at) in claims {
            match self.registry().profile(&url) {
                Err(reason) => out.push(issue(
                    self.opts.unknown_profile,
                    IssueCode::NotFound,
                    &at,
                    format!("Profile {url} could not be checked: {reason}"),
                )),
                Ok(p) if p.type_name != rt => out.push(issue(
                    Severity::Error,
                    IssueCode::Invalid,
                    &at,
                    format!("Profile {url} is a profile on {}, not on {rt}", p.type_name),
                )),
                Ok(p) => {
                    let mut pass = Pass {
                        ctx: self,
                        profile: &p,
                        base: false,
                        resource: res,
                        container,
                        out,
                        depth,
                        alias: None,
                    };
                    pass.element(0, res, loc);
                }
            }
        }
    }

    /// A StructureDefinition given only as a differential must produce a snapshot from
    /// its base (paths that exist, fixed values that agree with the base's). Only checked
    /// when the base is loaded; one with a snapshot is taken as published.
    fn structure_definition(&self, sd: &Value, loc: &str, out: &mut Vec<Issue>) {
        let has_snapshot = field(sd, "snapshot")
            .and_then(|s| field(s, "element"))
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        let base_known = field(sd, "baseDefinition")
            .and_then(Value::as_str)
            .is_some_and(|b| self.registry().structure_definition(b).is_some());
        if has_snapshot || !base_known || field(sd, "differential").is_none() {
            return;
        }
        match self.registry().generate_snapshot(sd) {
            Err(e) => out.push(issue(
                Severity::Error,
                IssueCode::Exception,
                loc,
                format!("Error generating the snapshot: {e}"),
            )),
            Ok(snapshot) => self.discriminator_paths(sd, &snapshot, loc, out),
        }
    }

    /// Each slicing discriminator of the differential names an element of what is sliced
    /// (`url` of an extension, `code` of a backbone element): a path that names nothing
    /// cannot tell slices apart. Functions (`resolve()`, `extension(...)`) and `$this`
    /// are taken as written.
    fn discriminator_paths(&self, sd: &Value, snapshot: &[Value], loc: &str, out: &mut Vec<Issue>) {
        let diff = field(sd, "differential").map_or(&[][..], |d| arr(d, "element"));
        for (i, d) in diff.iter().enumerate() {
            let Some(slicing) = field(d, "slicing") else {
                continue;
            };
            let id = field(d, "id")
                .or_else(|| field(d, "path"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let Some(el) = snapshot
                .iter()
                .find(|e| field(e, "id").and_then(Value::as_str) == Some(id))
            else {
                continue;
            };
            let path = field(el, "path").and_then(Value::as_str).unwrap_or("");
            for (j, disc) in arr(slicing, "discriminator").iter().enumerate() {
                let Some(dpath) = field(disc, "path").and_then(Value::as_str) else {
                    continue;
                };
                let first = dpath.split('.').next().unwrap_or("").trim();
                if first.is_empty() || first.starts_with('$') || first.contains('(') {
                    continue;
                }
                if !self.names_child(snapshot, path, el, first) {
                    out.push(issue(
                        Severity::Error,
                        IssueCode::Invalid,
                        &format!("{loc}.differential.element[{i}].slicing.discriminator[{j}]"),
                        format!("The discriminator path '{dpath}' does not name an element of the sliced element '{path}'"),
                    ));
                }
            }
        }
    }

    /// `name` is a child of the element at `path`: in the snapshot (backbone elements),
    /// or in the core definition of one of its types.
    fn names_child(&self, snapshot: &[Value], path: &str, el: &Value, name: &str) -> bool {
        let is_child = |p: &str, parent: &str| {
            p.strip_prefix(parent)
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|r| r == name || r.strip_suffix("[x]") == Some(name))
        };
        if snapshot
            .iter()
            .filter_map(|e| field(e, "path").and_then(Value::as_str))
            .any(|p| is_child(p, path))
        {
            return true;
        }
        let types: Vec<&str> = arr(el, "type")
            .iter()
            .filter_map(|t| field(t, "code").and_then(Value::as_str))
            .collect();
        if types.is_empty() {
            // Nothing to check against: not a finding.
            return true;
        }
        types.iter().any(
            |t| match self.registry().snapshot(&format!("{CORE_SD}{t}")) {
                Ok(elements) => elements
                    .iter()
                    .filter_map(|e| field(e, "path").and_then(Value::as_str))
                    .any(|p| is_child(p, t)),
                // A type whose definition is not loaded cannot be checked.
                Err(_) => true,
            },
        )
    }

    /// A SearchParameter derived from another (`derivedFrom`, when loaded) keeps its type
    /// and applies only to resource types the original covers.
    fn search_parameter(&self, sp: &Value, loc: &str, out: &mut Vec<Issue>) {
        let Some(parent_url) = field(sp, "derivedFrom").and_then(Value::as_str) else {
            return;
        };
        let Some(parent) = self.registry().resolve(parent_url).filter(|p| {
            field(p, "resourceType").and_then(Value::as_str) == Some("SearchParameter")
        }) else {
            return;
        };
        let (t, pt) = (
            field(sp, "type").and_then(Value::as_str),
            field(parent, "type").and_then(Value::as_str),
        );
        if let (Some(t), Some(pt)) = (t, pt) {
            if t != pt {
                out.push(issue(
                    Severity::Error,
                    IssueCode::BusinessRule,
                    loc,
                    format!("The type {t} is different to the type {pt} of the SearchParameter {parent_url} it is derived from"),
                ));
            }
        }
        let parent_bases = arr(parent, "base");
        for b in arr(sp, "base") {
            if !parent_bases.contains(b) {
                out.push(issue(
                    Severity::Error,
                    IssueCode::BusinessRule,
                    loc,
                    format!("The resource type {} is not listed as a base in the SearchParameter {parent_url} it is derived from", show(b)),
                ));
            }
        }
    }

    /// The resource a reference points at when it is in hand: contained in `container`,
    /// or an entry of the Bundle being validated (by `fullUrl`, or a relative `Type/id`
    /// matching exactly one entry).
    fn resolve_local(&self, reference: &str, container: &'v Value) -> Option<&'v Value> {
        if let Some(id) = reference.strip_prefix('#') {
            return arr(container, "contained")
                .iter()
                .find(|c| field(c, "id").and_then(Value::as_str) == Some(id));
        }
        if let Some(r) = self.bundle.get(reference) {
            return Some(r);
        }
        if reference.contains(':') || self.bundle.is_empty() {
            return None;
        }
        let (t, id) = reference.split_once('/')?;
        let mut hits = self.bundle.values().filter(|r| {
            field(r, "resourceType").and_then(Value::as_str) == Some(t)
                && field(r, "id").and_then(Value::as_str) == Some(id)
        });
        let first = hits.next()?;
        hits.next().is_none().then_some(*first)
    }

    /// The type of what a reference points at: contained, in the Bundle, or from the URL.
    fn target_type(&self, reference: &str, container: &'v Value) -> Option<&'v str> {
        if let Some(id) = reference.strip_prefix('#') {
            return field(container, "contained")
                .and_then(Value::as_array)?
                .iter()
                .find(|c| field(c, "id").and_then(Value::as_str) == Some(id))?
                .get("resourceType")?
                .as_str();
        }
        if let Some(r) = (!self.bundle.is_empty())
            .then(|| self.bundle.get(reference))
            .flatten()
        {
            return field(r, "resourceType").and_then(Value::as_str);
        }
        if reference.starts_with("urn:") {
            return None;
        }
        // Only resource type names count (not `fhir` in `http://x/fhir/1`).
        let t = reference_type(reference)?;
        crate::model_type_name(self.v.model, t)
    }
}

struct Pass<'c, 'v> {
    ctx: &'c Ctx<'v>,
    profile: &'c Profile,
    /// The core definition of the type: checks reference targets, extensions and nested
    /// resources, and descends into datatypes.
    base: bool,
    resource: &'v Value,
    container: &'v Value,
    out: &'c mut Vec<Issue>,
    depth: u32,
    /// Path of the element a datatype sub-pass stands for (`Patient.address`), for
    /// extension contexts.
    alias: Option<&'c str>,
}

impl<'c, 'v> Pass<'c, 'v> {
    /// The core-definition pass of `profile` over the resource of `frame`
    /// (resource, container, depth).
    fn base(
        ctx: &'c Ctx<'v>,
        profile: &'c Profile,
        (resource, container, depth): (&'v Value, &'v Value, u32),
        out: &'c mut Vec<Issue>,
    ) -> Pass<'c, 'v> {
        Pass {
            ctx,
            profile,
            base: true,
            resource,
            container,
            out,
            depth,
            alias: None,
        }
    }

    fn elem(&self, i: usize) -> &'c Elem {
        &self.profile.elems[i]
    }

    fn push(&mut self, severity: Severity, code: IssueCode, loc: &str, msg: String) {
        self.out.push(issue(severity, code, loc, msg));
    }

    /// Checks an object against element `e`'s children and constraints.
    fn element(&mut self, e: usize, value: &'v Value, loc: &str) {
        let Value::Object(obj) = value else {
            return;
        };
        let el = self.elem(e);
        // Most objects carry no `_name` entries: then none is looked up per element. When
        // the structural walk saw none anywhere, no key needs looking at.
        let underscore = self.ctx.extensions && obj.keys().any(|k| k.starts_with('_'));
        let quiet = self.base && !self.ctx.extensions && !underscore;
        if let Some(active) = quiet
            .then(|| self.profile.active_children(self.ctx.registry(), e))
            .flatten()
        {
            // No extensions anywhere: only the children that hold something to check
            // (references, invariants, nested resources) are looked up, by name.
            for &c in active {
                if member(obj, &self.elem(c).name).is_some() {
                    self.child(c, obj, loc, false);
                }
            }
        } else if self.base {
            // The core definition requires nothing the structural walk did not already
            // check, so only the elements present matter: found from the object's keys
            // (a handful) rather than by looking up each of the definition's elements
            // (dozens). Visited in definition order, as the full walk does.
            let mut present = ChildSet::default();
            for k in obj.keys() {
                let key = k.strip_prefix('_').unwrap_or(k);
                if let Some(&c) = el.child_keys.get(key) {
                    // The structural walk checked the value; there is nothing more here.
                    if !underscore && self.elem(c).plain_primitive {
                        continue;
                    }
                    if !self.ctx.extensions && self.profile.inert(self.ctx.registry(), c) {
                        continue;
                    }
                    present.insert(c);
                }
            }
            for c in present.sorted() {
                self.child(c, obj, loc, underscore);
            }
        } else {
            for &c in &el.children {
                self.child(c, obj, loc, underscore);
            }
        }
        self.invariants(e, value, loc);
    }

    /// The constraints of element `e` on `focus`. The location is formatted only for an
    /// issue: most invariants hold, and the walk's callers would otherwise build a string
    /// for every datatype value (every Reference has ref-1).
    fn invariants<L: LazyLoc + ?Sized>(&mut self, e: usize, focus: &'v Value, loc: &L) {
        let ctx = self.ctx;
        let Some(evaluator) = ctx.v.invariants.as_deref() else {
            return;
        };
        let el = self.elem(e);
        if el.checked_constraints.is_empty() {
            return;
        }
        let fhir_type = Some(el.path.as_str()).filter(|p| !p.ends_with("[x]"));
        for checked in &el.checked_constraints {
            let from_core = checked.from_core;
            let c = &el.constraints[checked.index];
            // Core invariants (the R4 snapshots name their source) are evaluated in the
            // base pass only; a profile pass evaluates what the profile added.
            if !self.base && from_core {
                continue;
            }
            // dom-2..dom-5 (DomainResource) constrain only contained resources: each is
            // true when there are none, as most resources have. Answered without running
            // FHIRPath (dom-3 walks every descendant).
            if checked.contained_only && caregate_core::json::field(focus, "contained").is_none() {
                continue;
            }
            if checked.dom_3 {
                // Natively: the FHIRPath form walks every descendant once per contained
                // resource, and misses references held in primitive extensions
                // (`_system` with a valueset-system `#id`), which FHIRPath counts.
                if !contained_all_referenced(focus) {
                    self.push(
                        c.severity,
                        IssueCode::Invariant,
                        &loc.get(),
                        format!("Constraint failed: {}: {}", c.key, c.human),
                    );
                }
                continue;
            }
            let outcome = evaluator.evaluate(&InvariantContext {
                constraint: c,
                focus,
                resource: self.resource,
                container: self.container,
                root: self.ctx.root,
                fhir_type,
            });
            match outcome {
                InvariantOutcome::Satisfied => {}
                InvariantOutcome::Violated => self.push(
                    c.severity,
                    IssueCode::Invariant,
                    &loc.get(),
                    format!("Constraint failed: {}: {}", c.key, c.human),
                ),
                InvariantOutcome::NotEvaluated(reason) => self.push(
                    Severity::Warning,
                    IssueCode::Invariant,
                    &loc.get(),
                    format!("Constraint {} was not evaluated: {reason}", c.key),
                ),
            }
        }
    }

    /// The instance values for child element `c` of `obj`.
    fn items(
        &mut self,
        c: usize,
        obj: &'v Map<String, Value>,
        loc: &str,
        underscore: bool,
    ) -> Vec<Item<'v, 'c>> {
        let el = self.elem(c);
        if el.choice_base.is_none() {
            // The common case first: a plain element, absent or present, looked up once.
            let name = el.name.as_str();
            let value = member(obj, name);
            let ext = if underscore {
                member(obj, el.ext_name.as_str())
            } else {
                None
            };
            if value.is_none() && ext.is_none() {
                return Vec::new();
            }
        }
        let mut items = Vec::with_capacity(1);
        let mut add = |key: &str,
                       value: &'v Value,
                       ext: Option<&'v Value>,
                       type_code: Option<&'c str>| match value {
            Value::Array(a) => {
                items.reserve(a.len());
                for (i, v) in a.iter().enumerate() {
                    let has_ext = ext.and_then(|e| e.get(i)).is_some_and(|x| !x.is_null());
                    if v.is_null() && !has_ext {
                        continue;
                    }
                    items.push(Item {
                        value: (!v.is_null()).then_some(v),
                        loc: child_loc(loc, key, Some(i)),
                        type_code,
                        ext: ext.and_then(|e| e.get(i)).filter(|x| x.is_object()),
                    });
                }
            }
            v => items.push(Item {
                value: (!v.is_null()).then_some(v),
                loc: child_loc(loc, key, None),
                type_code,
                ext: ext.filter(|x| x.is_object()),
            }),
        };
        if let Some(base) = el.choice_base.as_deref() {
            for (k, v) in obj {
                let (key, is_ext_key) = match k.strip_prefix('_') {
                    Some(k) => (k, true),
                    None => (k.as_str(), false),
                };
                let Some(rest) = key.strip_prefix(base) else {
                    continue;
                };
                if !rest.starts_with(|ch: char| ch.is_ascii_uppercase()) {
                    continue;
                }
                let Some(t) = el.types.iter().find(|t| is_capitalised(&t.code, rest)) else {
                    // Only a real FHIR type name makes this a variant of the choice.
                    let lower = {
                        let mut c = rest.chars();
                        c.next()
                            .map(|f| f.to_lowercase().chain(c).collect::<String>())
                            .unwrap_or_default()
                    };
                    let model = self.ctx.v.model;
                    if !is_ext_key
                        && !self.base
                        && (model.is_known_type(rest) || model.primitive(&lower).is_some())
                    {
                        let types: Vec<&str> = el.types.iter().map(|t| t.code.as_str()).collect();
                        self.out.push(issue(
                            Severity::Error,
                            IssueCode::Structure,
                            &format!("{loc}.{key}"),
                            format!(
                                "The type {rest} is not allowed for '{}' by the profile {} (allowed: {})",
                                el.name,
                                self.profile.url,
                                types.join(", ")
                            ),
                        ));
                    }
                    continue;
                };
                if is_ext_key {
                    if member(obj, key).is_none() {
                        add(key, &Value::Null, Some(v), Some(t.code.as_str()));
                    }
                    continue;
                }
                let ext = if underscore {
                    obj.iter()
                        .find_map(|(k, x)| (k.strip_prefix('_') == Some(key)).then_some(x))
                } else {
                    None
                };
                add(key, v, ext, Some(t.code.as_str()));
            }
        } else {
            let name = el.name.as_str();
            let ext_name = el.ext_name.as_str();
            match member(obj, name) {
                Some(v) => {
                    let ext = if underscore {
                        member(obj, ext_name)
                    } else {
                        None
                    };
                    add(name, v, ext, None);
                }
                None => {
                    if let Some(x) = member(obj, ext_name) {
                        // `_name` alone: present, without a value.
                        match x {
                            Value::Array(a) => {
                                for (i, e) in a.iter().enumerate() {
                                    items.push(Item {
                                        value: None,
                                        loc: child_loc(loc, name, Some(i)),
                                        type_code: None,
                                        ext: Some(e).filter(|x| x.is_object()),
                                    });
                                }
                            }
                            other => items.push(Item {
                                value: None,
                                loc: child_loc(loc, name, None),
                                type_code: None,
                                ext: Some(other).filter(|x| x.is_object()),
                            }),
                        }
                    }
                }
            }
        }
        items
    }

    fn child(&mut self, c: usize, obj: &'v Map<String, Value>, loc: &str, underscore: bool) {
        let items = self.items(c, obj, loc, underscore);
        let el = self.elem(c);
        let count = items.len() as u32;
        if count < el.min && el.min > el.base_min {
            self.push(
                Severity::Error,
                IssueCode::Required,
                &format!("{loc}.{}", el.name.replace("[x]", "")),
                format!(
                    "'{}' has {count} value(s) but the profile {} requires at least {}",
                    el.path, self.profile.url, el.min
                ),
            );
        }
        if let Some(max) = el.max {
            if count > max && el.base_max.is_none_or(|b| max < b) {
                let at = items
                    .get(max as usize)
                    .map_or(loc.to_string(), |i| i.loc.to_string());
                self.push(
                    Severity::Error,
                    IssueCode::Structure,
                    &at,
                    if max == 0 {
                        format!(
                            "'{}' is not allowed by the profile {}",
                            el.path, self.profile.url
                        )
                    } else {
                        format!(
                            "'{}' has {count} values but the profile {} allows at most {max}",
                            el.path, self.profile.url
                        )
                    },
                );
            }
        }
        if items.is_empty() {
            return;
        }
        let matched = if el.slices.is_empty() {
            Vec::new()
        } else {
            self.slices(c, &items)
        };
        let is_ext = matches!(el.name.as_str(), "extension" | "modifierExtension");
        for (i, item) in items.iter().enumerate() {
            let slice = matched.get(i).copied().flatten();
            if self.base {
                self.primitive_extensions(item, &el.path);
            }
            self.value(c, item);
            if let Some(s) = slice {
                self.value(s, item);
            } else if is_ext && self.base {
                self.extension(item, &el.path);
            }
        }
    }

    /// Checks one value against element `c`: fixed/pattern, binding, references, type
    /// profiles, then its children.
    fn value(&mut self, c: usize, item: &Item<'v, 'c>) {
        let Some(value) = item.value else {
            return;
        };
        let el = self.elem(c);
        let loc = item.loc.as_str();
        if let Some(f) = &el.fixed {
            if !pattern_matches(f, value) || !pattern_matches(value, f) {
                self.push(
                    Severity::Error,
                    IssueCode::Value,
                    loc,
                    format!(
                        "Value must be exactly {} (profile {}), found {}",
                        show(f),
                        self.profile.url,
                        show(value)
                    ),
                );
            }
        }
        if let Some(p) = &el.pattern {
            if !pattern_matches(p, value) {
                self.push(
                    Severity::Error,
                    IssueCode::Value,
                    loc,
                    format!(
                        "Value does not match the pattern {} required by the profile {}",
                        show(p),
                        self.profile.url
                    ),
                );
            }
        }
        if el.min_value.is_some() || el.max_value.is_some() || el.max_length.is_some() {
            self.limits(c, value, loc);
        }
        if let Some((strength, vs)) = &el.binding {
            if !el.binding_is_core
                && matches!(
                    strength,
                    BindingStrength::Required | BindingStrength::Extensible
                )
            {
                self.binding(*strength, vs, value, item, loc);
            }
        }
        let type_rule: Option<&TypeRule> = match &item.type_code {
            Some(t) => el.types.iter().find(|r| &r.code == t),
            None => match el.types.as_slice() {
                [one] => Some(one),
                _ => None,
            },
        };
        if let Some(t) = type_rule {
            if self.base && t.code == "markdown" && self.ctx.v.no_html_in_markdown {
                if let Some(text) = value.as_str().filter(|s| looks_like_html(s)) {
                    self.push(
                        Severity::Error,
                        IssueCode::Invalid,
                        loc,
                        format!(
                            "The markdown contains what looks like an embedded HTML tag: {}",
                            show(&Value::String(text.to_string()))
                        ),
                    );
                }
            }
            if self.base && t.code == "Attachment" {
                attachment_size(value, loc, self.out);
            }
            if t.code == "Reference" && !t.target_profiles.is_empty() {
                self.reference(t, value, loc);
            }
            if t.code == "Resource" {
                if self.base {
                    let rt = field(value, "resourceType")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let container = if el.name == "contained" {
                        self.resource
                    } else {
                        value
                    };
                    let _ = rt;
                    let ctx = self.ctx;
                    ctx.resource(value, loc, container, &[], self.out, self.depth + 1);
                }
                for p in t.profiles.clone() {
                    self.against_profile(&p, value, loc, None);
                }
                return;
            }
            let checked = |p: &&String| !is_core_definition(p) || p.ends_with("Quantity");
            if t.profiles.iter().any(|p| checked(&p)) && !(self.base && t.code == "Extension") {
                let profiles: Vec<String> = t.profiles.iter().filter(checked).cloned().collect();
                self.against_any_profile(&profiles, value, loc, Some(&el.path));
            }
        }
        if !el.children.is_empty() {
            self.element(c, value, loc);
        } else if let Some(r) = el.content_reference.filter(|_| self.base) {
            // Only the core definition's: a profile's constraints on the element named
            // (slices of `Parameters.parameter`, say) do not carry over to the nested
            // use, which the reference validator checks against the base definition.
            self.element(r, value, loc);
        } else if self.base && value.is_object() {
            // The base definition does not list a datatype's elements: walk the datatype's
            // own definition (references and extensions inside it, its invariants).
            if let Some(t) = type_rule {
                if t.code != "Extension" && t.code.starts_with(|ch: char| ch.is_ascii_uppercase()) {
                    // Markdown inside datatypes (Annotation.text) is only seen by walking them.
                    // What the datatype's definition holds (references, invariants at any
                    // depth) decides, and extensions in this value when the resource has any.
                    let checkable = (self.ctx.extensions && has_checkable(value))
                        || self.ctx.v.no_html_in_markdown;
                    let registry = self.ctx.registry();
                    let v = self.ctx.v;
                    let dt = t.core_type.get_or_init(|| v.core_profile(&t.code).ok());
                    if let Some(dt) = dt.as_deref() {
                        let invariants = self.ctx.v.invariants.is_some() && dt.has_invariants;
                        let structural = !dt.inert(registry, 0);
                        if checkable || invariants || structural {
                            self.sub_pass(dt, true, value, loc, Some(&el.path));
                        }
                    }
                }
            }
        }
    }

    /// `minValue[x]`, `maxValue[x]` and `maxLength` of element `c` on one value.
    fn limits(&mut self, c: usize, value: &Value, loc: &str) {
        let el = self.elem(c);
        let url = &self.profile.url;
        let mut found = Vec::new();
        for (bound, is_min) in [(&el.min_value, true), (&el.max_value, false)] {
            let Some((t, b)) = bound else {
                continue;
            };
            if let Some(msg) = crate::limits::violation(t, b, value, is_min) {
                found.push(format!("{msg} (profile {url})"));
            }
        }
        if let (Some(max), Some(s)) = (el.max_length, value.as_str()) {
            let len = s.chars().count() as u64;
            if len > max {
                found.push(format!(
                    "The value is {len} characters long, more than the maximum length {max} of the profile {url}"
                ));
            }
        }
        for msg in found {
            self.push(Severity::Error, IssueCode::Invalid, loc, msg);
        }
    }

    fn sub_pass(
        &mut self,
        p: &Profile,
        base: bool,
        value: &'v Value,
        loc: &str,
        alias: Option<&str>,
    ) {
        if self.depth >= MAX_DEPTH {
            return;
        }
        let mut pass = Pass {
            ctx: self.ctx,
            profile: p,
            base,
            resource: self.resource,
            container: self.container,
            out: self.out,
            depth: self.depth + 1,
            alias,
        };
        pass.element(0, value, loc);
    }

    fn against_profile(&mut self, url: &str, value: &'v Value, loc: &str, alias: Option<&str>) {
        match self.ctx.registry().profile(url) {
            Ok(p) => self.sub_pass(&p, false, value, loc, alias),
            Err(reason) => self.push(
                self.ctx.opts.unknown_profile,
                IssueCode::NotFound,
                loc,
                format!("Profile {url} could not be checked: {reason}"),
            ),
        }
    }

    /// The value must conform to one of `profiles` (ElementDefinition.type.profile).
    fn against_any_profile(
        &mut self,
        profiles: &[String],
        value: &'v Value,
        loc: &str,
        alias: Option<&str>,
    ) {
        if let [one] = profiles {
            self.against_profile(one, value, loc, alias);
            return;
        }
        let mut first: Option<Vec<Issue>> = None;
        for p in profiles {
            let issues = self.trial(p, value, loc, alias);
            if !issues.iter().any(|i| i.severity.is_error()) {
                self.out.extend(issues);
                return;
            }
            first.get_or_insert(issues);
        }
        self.out.extend(first.unwrap_or_default());
    }

    /// Validates against a profile into a separate list (slice and profile matching).
    fn trial(&mut self, url: &str, value: &'v Value, loc: &str, alias: Option<&str>) -> Vec<Issue> {
        let mut issues = Vec::new();
        let Ok(p) = self.ctx.registry().profile(url) else {
            issues.push(issue(
                Severity::Error,
                IssueCode::NotFound,
                loc,
                format!("Profile {url} is not known"),
            ));
            return issues;
        };
        if self.depth >= MAX_DEPTH {
            return issues;
        }
        if let Some(rt) = field(value, "resourceType").and_then(Value::as_str) {
            if rt != p.type_name {
                issues.push(issue(
                    Severity::Error,
                    IssueCode::Invalid,
                    loc,
                    format!(
                        "A {rt} cannot conform to {url}, a profile on {}",
                        p.type_name
                    ),
                ));
                return issues;
            }
        }
        let mut pass = Pass {
            ctx: self.ctx,
            profile: &p,
            base: false,
            resource: self.resource,
            container: self.container,
            out: &mut issues,
            depth: self.depth + 1,
            alias,
        };
        pass.element(0, value, loc);
        issues
    }

    fn binding(
        &mut self,
        strength: BindingStrength,
        vs: &str,
        value: &Value,
        item: &Item<'v, 'c>,
        loc: &str,
    ) {
        let terminology = self.ctx.registry().terminology().clone();
        let check = |system: Option<&str>, code: &str| terminology.validate_code(vs, system, code);
        let label = || terminology.value_set_label(vs);
        let codings: Vec<(Option<&str>, &str)> = match value {
            Value::String(code) => vec![(None, code.as_str())],
            Value::Object(o)
                if o.contains_key("coding")
                    || o.contains_key("text") && !o.contains_key("code") =>
            {
                member(o, "coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        Some((
                            field(c, "system").and_then(Value::as_str),
                            field(c, "code")?.as_str()?,
                        ))
                    })
                    .collect()
            }
            Value::Object(o) => match member(o, "code").and_then(Value::as_str) {
                Some(code) => vec![(member(o, "system").and_then(Value::as_str), code)],
                None => return,
            },
            _ => return,
        };
        let _ = item;
        if codings.is_empty() {
            if strength == BindingStrength::Required && field(value, "text").is_some() {
                self.push(
                    Severity::Error,
                    IssueCode::CodeInvalid,
                    loc,
                    format!(
                        "No code provided, and a code from the value set {} is required",
                        label()
                    ),
                );
            }
            return;
        }
        let mut cannot = None;
        for (s, c) in &codings {
            match check(*s, c) {
                CodeCheck::Valid => return,
                CodeCheck::CannotCheck(r) => {
                    cannot.get_or_insert(r);
                }
                CodeCheck::Invalid => {}
            }
        }
        let shown = codings
            .iter()
            .map(|(s, c)| match s {
                Some(s) => format!("'{s}#{c}'"),
                None => format!("'{c}'"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        match cannot {
            Some(reason) => self.push(
                Severity::Warning,
                IssueCode::NotFound,
                loc,
                format!("The code {shown} could not be checked against the value set {} ({} binding): {reason}", label(), strength.as_str()),
            ),
            None => self.push(
                if strength == BindingStrength::Required {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                IssueCode::CodeInvalid,
                loc,
                format!(
                    "The code {shown} is not in the value set {}, which is {} for this element (profile {})",
                    label(),
                    strength.as_str(),
                    self.profile.url
                ),
            ),
        }
    }

    /// Reference target type against `targetProfile`s.
    fn reference(&mut self, t: &TypeRule, value: &Value, loc: &str) {
        let Some(reference) = field(value, "reference").and_then(Value::as_str) else {
            return;
        };
        let reg = self.ctx.registry();
        let allowed = t.target_types.get_or_init(|| {
            t.target_profiles
                .iter()
                .map(|p| {
                    reg.structure_definition(p)
                        .and_then(|sd| field(sd, "type").and_then(Value::as_str))
                        .map(str::to_string)
                        .unwrap_or_else(|| p.rsplit('/').next().unwrap_or(p).to_string())
                })
                .collect()
        });
        if allowed
            .iter()
            .any(|a| a == "Resource" || a == "DomainResource")
        {
            return;
        }
        let target = match self.ctx.target_type(reference, self.container) {
            Some(t) => Some(t),
            None if reference.starts_with('#') => {
                self.push(
                    Severity::Error,
                    IssueCode::NotFound,
                    loc,
                    format!("The contained resource '{reference}' is not found"),
                );
                return;
            }
            None => None,
        };
        let stated = field(value, "type").and_then(Value::as_str);
        for (ty, what) in [(target, "reference"), (stated, "Reference.type")] {
            if let Some(ty) = ty {
                if !allowed.iter().any(|a| a == ty) {
                    self.push(
                        Severity::Error,
                        IssueCode::Structure,
                        loc,
                        format!(
                            "The {what} points to a {ty}, which is not a valid target here (allowed: {})",
                            allowed.join(", ")
                        ),
                    );
                    return;
                }
            }
        }
        // Target profiles beyond the core type: checked when the target is in hand
        // (contained or in the Bundle); a remote target cannot be checked here.
        if !t.profiled_targets {
            return;
        }
        let Some(target) = self.ctx.resolve_local(reference, self.container) else {
            return;
        };
        let Some(rt) = field(target, "resourceType").and_then(Value::as_str) else {
            return;
        };
        let candidates: Vec<String> = t
            .target_profiles
            .iter()
            .filter(|p| {
                reg.structure_definition(p)
                    .and_then(|sd| field(sd, "type").and_then(Value::as_str))
                    == Some(rt)
            })
            .cloned()
            .collect();
        if candidates.is_empty() {
            return;
        }
        let conforms = candidates.iter().any(|p| {
            let Ok(profile) = reg.profile(p) else {
                // Unknown profiles are reported where they are claimed, not here.
                return true;
            };
            if self.depth + 1 >= MAX_DEPTH {
                return true;
            }
            let mut issues = Vec::new();
            let mut pass = Pass {
                ctx: self.ctx,
                profile: &profile,
                base: false,
                resource: target,
                container: target,
                out: &mut issues,
                depth: self.depth + 1,
                alias: None,
            };
            pass.element(0, target, loc);
            !issues.iter().any(|i| i.severity.is_error())
        });
        if !conforms {
            self.push(
                Severity::Error,
                IssueCode::Structure,
                loc,
                format!(
                    "The {rt} that {reference} points to does not conform to the target profile {}",
                    candidates.join(" or ")
                ),
            );
        }
    }

    /// Extensions on a primitive value (`_birthDate.extension`), checked like any other.
    fn primitive_extensions(&mut self, item: &Item<'v, 'c>, element_path: &str) {
        let Some(list) = item
            .ext
            .and_then(|e| field(e, "extension"))
            .and_then(Value::as_array)
        else {
            return;
        };
        let ext_path = format!("{element_path}.extension");
        for (i, e) in list.iter().enumerate() {
            let ext_item = Item {
                value: Some(e),
                loc: child_loc(&item.loc, "extension", Some(i)),
                type_code: None,
                ext: None,
            };
            self.extension(&ext_item, &ext_path);
        }
    }

    /// An extension not matched by any slice: its definition must be known, used in an
    /// allowed context, and the value must conform.
    fn extension(&mut self, item: &Item<'v, 'c>, element_path: &str) {
        let Some(value) = item.value else {
            return;
        };
        let Some(url) = field(value, "url").and_then(Value::as_str) else {
            return;
        };
        // ext-1, checked here rather than through FHIRPath on every extension.
        if let Value::Object(o) = value {
            let nested = member(o, "extension")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            let has_value = o.keys().any(|k| {
                k.strip_prefix("value")
                    .is_some_and(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))
            });
            if nested == has_value {
                self.push(
                    Severity::Error,
                    IssueCode::Invariant,
                    &item.loc,
                    "Constraint failed: ext-1: Must have either extensions or value[x], not both"
                        .to_string(),
                );
            }
        }
        let reg = self.ctx.registry();
        let known = reg
            .structure_definition(url)
            .is_some_and(|sd| field(sd, "type").and_then(Value::as_str) == Some("Extension"));
        if !known {
            if let Some(sev) = self.ctx.opts.unknown_extension {
                let modifier = element_path.ends_with("modifierExtension");
                // HL7's own extensions published after R4 (the extensions pack, IG
                // tooling such as instance-name) are not in the core package; using one
                // is no reason to reject a resource.
                let hl7 = url.starts_with("http://hl7.org/fhir/");
                let xver = is_cross_version(url);
                let (severity, note) = match (modifier, hl7) {
                    _ if xver => (
                        Severity::Warning,
                        " (a cross-version extension; its definition is derived from another FHIR version and is not checked here)",
                    ),
                    (true, _) => (Severity::Error, ""),
                    (false, true) => (
                        Severity::Warning,
                        " (an HL7 extension not in the R4 core package; load the package that defines it to check it)",
                    ),
                    (false, false) => (sev, ""),
                };
                self.push(
                    severity,
                    IssueCode::Structure,
                    &item.loc,
                    format!("The extension {url} could not be found so is not allowed here{note}"),
                );
            }
            return;
        }
        let Ok(p) = reg.profile(url) else {
            return;
        };
        // Where it is used: the element holding the extension.
        let host = element_path
            .rsplit_once('.')
            .map_or(element_path, |(h, _)| h);
        if !context_allows(&p, host, self.alias, self.profile, self.ctx.v.model) {
            let contexts: Vec<String> = p.contexts.iter().map(|(_, e)| e.clone()).collect();
            self.push(
                Severity::Error,
                IssueCode::Structure,
                &item.loc,
                format!(
                    "The extension {url} is not allowed to be used at this point (allowed: {})",
                    contexts.join(", ")
                ),
            );
        }
        let modifier_use = element_path.ends_with("modifierExtension");
        if p.is_modifier != modifier_use {
            self.push(
                Severity::Error,
                IssueCode::Structure,
                &item.loc,
                if modifier_use {
                    format!("The extension {url} must not be used as a modifierExtension (it is a regular extension)")
                } else {
                    format!("The extension {url} must not be used as an extension (it is a modifierExtension)")
                },
            );
        }
        self.sub_pass(&p, false, value, &item.loc.clone(), None);
    }

    /// Assigns each item to the first slice it matches; checks slice cardinality, closed
    /// and ordered slicing. Returns the slice of each item.
    fn slices(&mut self, c: usize, items: &[Item<'v, 'c>]) -> Vec<Option<usize>> {
        let el = self.elem(c);
        let slices = el.slices.clone();
        let slicing = el.slicing.clone();
        let mut assigned = Vec::with_capacity(items.len());
        for item in items {
            let mut hit = None;
            if let (Some(value), Some(slicing)) = (item.value, &slicing) {
                for &s in &slices {
                    if self.slice_matches(s, &slicing.discriminators, value, item) {
                        hit = Some(s);
                        break;
                    }
                }
            }
            assigned.push(hit);
        }
        let Some(slicing) = slicing else {
            return assigned;
        };
        let mut counts: FxMap<usize, u32> = FxMap::default();
        for s in assigned.iter().flatten() {
            *counts.entry(*s).or_default() += 1;
        }
        let base_loc = items
            .first()
            .map(|i| {
                i.loc
                    .rsplit_once('[')
                    .map_or(&*i.loc, |(h, _)| h)
                    .to_string()
            })
            .unwrap_or_default();
        for &s in &slices {
            let se = self.elem(s);
            let n = counts.get(&s).copied().unwrap_or(0);
            let name = se.slice_name.clone().unwrap_or_default();
            if n < se.min {
                self.push(
                    Severity::Error,
                    IssueCode::Structure,
                    &base_loc,
                    format!(
                        "Slice '{name}' of '{}' requires at least {} value(s) but found {n} (profile {})",
                        se.path, se.min, self.profile.url
                    ),
                );
            }
            if let Some(max) = se.max {
                if n > max {
                    self.push(
                        Severity::Error,
                        IssueCode::Structure,
                        &base_loc,
                        format!(
                            "Slice '{name}' of '{}' allows at most {max} value(s) but found {n} (profile {})",
                            se.path, self.profile.url
                        ),
                    );
                }
            }
        }
        let mut seen_match = false;
        let mut last_slice_pos = 0usize;
        for (item, a) in items.iter().zip(&assigned) {
            match a {
                None => {
                    if slicing.rules == Rules::Closed {
                        self.push(
                            Severity::Error,
                            IssueCode::Structure,
                            &item.loc,
                            format!("This element does not match any known slice of the closed slicing (profile {})", self.profile.url),
                        );
                    }
                    if slicing.rules == Rules::OpenAtEnd {
                        seen_match = true;
                    }
                }
                Some(s) => {
                    if slicing.rules == Rules::OpenAtEnd && seen_match {
                        self.push(
                            Severity::Error,
                            IssueCode::Structure,
                            &item.loc,
                            "Unmatched elements must come after all slices (openAtEnd)".to_string(),
                        );
                    }
                    let pos = slices.iter().position(|x| x == s).unwrap_or(0);
                    if slicing.ordered && pos < last_slice_pos {
                        self.push(
                            Severity::Error,
                            IssueCode::Structure,
                            &item.loc,
                            "The slices are out of the order the profile defines".to_string(),
                        );
                    }
                    last_slice_pos = last_slice_pos.max(pos);
                }
            }
        }
        assigned
    }

    fn find_elem(&self, id: &str) -> Option<usize> {
        self.profile.elems.iter().position(|e| e.id == id)
    }

    /// The element a discriminator path names inside slice `s` (`code` → `X:s.code`).
    fn disc_elem(&self, s: usize, path: &str) -> Option<usize> {
        let se = self.elem(s);
        if path == "$this" {
            return Some(s);
        }
        let mut id = se.id.clone();
        for seg in path.split('.') {
            let seg = seg.trim();
            if seg.starts_with("ofType(") || seg == "$this" {
                continue;
            }
            let plain = format!("{id}.{seg}");
            if self.find_elem(&plain).is_some() {
                id = plain;
                continue;
            }
            // `value` for `value[x]`, or `valueQuantity` for its type slice.
            let choice = format!("{id}.{seg}[x]");
            if self.find_elem(&choice).is_some() {
                id = choice;
                continue;
            }
            return None;
        }
        self.find_elem(&id)
    }

    fn slice_matches(
        &mut self,
        s: usize,
        discs: &[(DiscKind, String)],
        value: &'v Value,
        item: &Item<'v, 'c>,
    ) -> bool {
        for (kind, path) in discs {
            let ok = match kind {
                DiscKind::Value | DiscKind::Pattern => self.disc_value(s, path, value),
                DiscKind::Exists => {
                    let found = !eval_path(value, path).is_empty();
                    match self.disc_elem(s, path).map(|d| self.elem(d)) {
                        Some(d) if d.min >= 1 => found,
                        Some(d) if d.max == Some(0) => !found,
                        _ => true,
                    }
                }
                DiscKind::Type => {
                    let se = self.elem(s);
                    let types: Vec<String> =
                        match self.disc_elem(s, path.trim_end_matches(".resolve()")) {
                            Some(d) => self.elem(d).types.iter().map(|t| t.code.clone()).collect(),
                            None => se.types.iter().map(|t| t.code.clone()).collect(),
                        };
                    let actual: Option<String> = if path == "$this" {
                        item.type_code
                            .or_else(|| field(value, "resourceType").and_then(Value::as_str))
                            .map(str::to_string)
                    } else if path.ends_with("resolve()") {
                        eval_path(
                            value,
                            path.trim_end_matches(".resolve()")
                                .trim_end_matches("resolve()"),
                        )
                        .first()
                        .and_then(|r| field(r, "reference").and_then(Value::as_str))
                        .and_then(|r| self.ctx.target_type(r, self.container))
                        .map(str::to_string)
                    } else {
                        None
                    };
                    match actual {
                        Some(a) => types.contains(&a),
                        None => true,
                    }
                }
                DiscKind::Profile if path.ends_with("resolve()") => {
                    let ref_path = path.trim_end_matches("resolve()").trim_end_matches('.');
                    let targets: Vec<String> = self
                        .disc_elem(s, ref_path)
                        .map(|d| {
                            self.elem(d)
                                .types
                                .iter()
                                .flat_map(|t| t.target_profiles.clone())
                                .collect()
                        })
                        .unwrap_or_default();
                    if targets.is_empty() {
                        true
                    } else {
                        let reg = self.ctx.registry();
                        let types: Vec<&str> = targets
                            .iter()
                            .filter_map(|p| reg.structure_definition(p)?.get("type")?.as_str())
                            .collect();
                        let actual = eval_path(value, ref_path)
                            .first()
                            .and_then(|r| field(r, "reference").and_then(Value::as_str))
                            .and_then(|r| self.ctx.target_type(r, self.container));
                        match actual {
                            Some(a) => types.contains(&a),
                            None => false,
                        }
                    }
                }
                DiscKind::Profile => {
                    let de = self.disc_elem(s, path).unwrap_or(s);
                    let profiles: Vec<String> = self
                        .elem(de)
                        .types
                        .iter()
                        .flat_map(|t| t.profiles.clone())
                        .collect();
                    if profiles.is_empty() {
                        true
                    } else {
                        let target = if path == "$this" {
                            Some(value)
                        } else {
                            eval_path(value, path.trim_end_matches(".resolve()"))
                                .into_iter()
                                .next()
                        };
                        match target {
                            Some(t) => profiles.iter().any(|p| {
                                !self
                                    .trial(p, t, &item.loc, None)
                                    .iter()
                                    .any(|i| i.severity.is_error())
                            }),
                            None => false,
                        }
                    }
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// value/pattern discriminator: the instance at `path` must equal the slice's fixed
    /// value, contain its pattern, or be in its required value set. When the path goes
    /// below the element that carries the value (`role.coding.code` under a pattern on
    /// `role`), the pattern is followed along the rest of the path.
    fn disc_value(&self, s: usize, path: &str, value: &'v Value) -> bool {
        let se = self.elem(s);
        // Extensions are sliced by url: the slice's url is its definition's URL.
        if path == "url" {
            if let Some(p) = se
                .types
                .iter()
                .find(|t| t.code == "Extension")
                .and_then(|t| t.profiles.first())
            {
                let want = p.split('|').next().unwrap_or(p);
                if self
                    .disc_elem(s, path)
                    .is_none_or(|d| self.elem(d).fixed.is_none())
                {
                    return field(value, "url").and_then(Value::as_str) == Some(want);
                }
            }
        }
        let found = eval_path(value, path);
        let segs = split_path(path);
        // The deepest element along the path that states a value.
        for cut in (0..=segs.len()).rev() {
            let prefix = if cut == 0 {
                "$this".to_string()
            } else {
                segs[..cut].join(".")
            };
            let Some(d) = self.disc_elem(s, &prefix) else {
                continue;
            };
            let de = self.elem(d);
            let rest = segs[cut..].join(".");
            if let Some(f) = &de.fixed {
                let expected = eval_path(f, &rest);
                return found.iter().any(|v| {
                    expected
                        .iter()
                        .any(|e| pattern_matches(e, v) && pattern_matches(v, e))
                });
            }
            if let Some(p) = &de.pattern {
                let expected = eval_path(p, &rest);
                return found
                    .iter()
                    .any(|v| expected.iter().any(|e| pattern_matches(e, v)));
            }
            if cut == segs.len() {
                if let Some((BindingStrength::Required, vs)) = &de.binding {
                    let t = self.ctx.registry().terminology();
                    // Undecidable membership (value set or code system not available) does
                    // not exclude the slice.
                    let member = |r: CodeCheck| r != CodeCheck::Invalid;
                    return found.iter().any(|v| match v {
                        Value::String(c) => member(t.validate_code(vs, None, c)),
                        Value::Object(o) => {
                            let codings: Vec<&Value> =
                                match caregate_core::json::member(o, "coding")
                                    .and_then(Value::as_array)
                                {
                                    Some(a) => a.iter().collect(),
                                    None => vec![v],
                                };
                            codings.iter().any(|c| {
                                field(c, "code")
                                    .and_then(Value::as_str)
                                    .is_some_and(|code| {
                                        member(t.validate_code(
                                            vs,
                                            field(c, "system").and_then(Value::as_str),
                                            code,
                                        ))
                                    })
                            })
                        }
                        _ => false,
                    });
                }
            }
        }
        // The slice states no value here: this discriminator does not tell slices apart.
        true
    }
}

/// Whether a datatype value holds anything the base pass checks inside it (extensions,
/// references); most Codings, Periods and HumanNames do not, and skipping them keeps the
/// base pass cheap.
fn has_checkable(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.iter().any(|(k, x)| {
            matches!(k.as_str(), "extension" | "modifierExtension" | "reference")
                || k.starts_with('_')
                || has_checkable(x)
        }),
        Value::Array(a) => a.iter().any(has_checkable),
        _ => false,
    }
}

/// Evaluates the simple FHIRPath a discriminator uses: names, `$this`,
/// `extension('url')`, `ofType(T)` (ignored), `resolve()` (stops).
fn eval_path<'a>(value: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut cur = vec![value];
    for seg in split_path(path) {
        let seg = seg.trim();
        if seg.is_empty() || seg == "$this" || seg.starts_with("ofType(") {
            continue;
        }
        if seg == "resolve()" {
            break;
        }
        let mut next = Vec::new();
        if let Some(arg) = seg
            .strip_prefix("extension(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let url = arg.trim_matches(|c| c == '\'' || c == '"');
            for v in &cur {
                for e in field(v, "extension")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if field(e, "url").and_then(Value::as_str) == Some(url) {
                        next.push(e);
                    }
                }
            }
        } else {
            for v in &cur {
                let Value::Object(o) = v else {
                    continue;
                };
                match o.get(seg) {
                    Some(Value::Array(a)) => next.extend(a.iter()),
                    Some(x) => next.push(x),
                    None => {
                        // A choice element named without its type (`value`).
                        for (k, x) in o {
                            if k.len() > seg.len()
                                && k.starts_with(seg)
                                && k[seg.len()..].starts_with(|c: char| c.is_ascii_uppercase())
                            {
                                match x {
                                    Value::Array(a) => next.extend(a.iter()),
                                    x => next.push(x),
                                }
                            }
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

/// Splits a path at dots outside parentheses and quotes.
fn split_path(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, false, 0usize);
    for (i, ch) in path.char_indices() {
        match ch {
            '\'' => quote = !quote,
            '(' if !quote => depth += 1,
            ')' if !quote => depth -= 1,
            '.' if !quote && depth == 0 => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&path[start..]);
    out
}

/// Whether an extension definition allows use on the element at `host` (a profile path
/// such as `Patient` or `Address`, with `alias` the outer element a datatype stands for).
fn context_allows(
    ext: &Profile,
    host: &str,
    alias: Option<&str>,
    within: &Profile,
    model: &StructureModel,
) -> bool {
    if ext.contexts.is_empty() {
        return true;
    }
    let host_type = host.split('.').next().unwrap_or(host);
    ext.contexts.iter().any(|(kind, expr)| {
        if kind != "element" {
            // fhirpath contexts need the FHIRPath engine; extension contexts name the
            // extension that nests this one.
            return kind != "extension" || within.url == *expr || within.type_name == "Extension";
        }
        let expr = expr.as_str();
        let expr_root = expr.split('.').next().unwrap_or(expr);
        matches!(expr, "Element" | "Resource" | "DomainResource" | "BackboneElement")
            // Types of later FHIR versions (CanonicalResource) cannot be judged here.
            || !model.is_known_type(expr_root)
            // An element or one of its own elements (primitive extensions sit on the
            // element that holds the value).
            || expr == host
            || expr.strip_prefix(host).is_some_and(|r| r.starts_with('.'))
            || alias.is_some_and(|a| a == expr)
            || (expr == host_type && !host.contains('.'))
            || (!host.contains('.') && is_domain_resource(host) && expr == "DomainResource")
            || within.type_name == expr && host == within.type_name
    })
}

/// `http://hl7.org/fhir/5.0/StructureDefinition/extension-DeviceRequest.doNotPerform`:
/// an element of another FHIR version used as an extension.
fn is_cross_version(url: &str) -> bool {
    url.strip_prefix("http://hl7.org/fhir/")
        .and_then(|r| r.split_once("/StructureDefinition/extension-"))
        .is_some_and(|(v, _)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

fn is_domain_resource(name: &str) -> bool {
    !matches!(name, "Bundle" | "Binary" | "Parameters")
}

#[cfg(test)]
mod tests {
    use super::{child_loc, reference_type, Loc, LOC_INLINE};

    #[test]
    fn reference_types() {
        assert_eq!(reference_type("Patient/1"), Some("Patient"));
        assert_eq!(reference_type("http://x/fhir/Patient/1"), Some("Patient"));
        assert_eq!(reference_type("Patient/1/_history/2"), Some("Patient"));
        assert_eq!(
            reference_type("http://x/Observation/o/_history/3#frag"),
            Some("Observation")
        );
        assert_eq!(reference_type("Patient/1?x=y"), Some("Patient"));
        assert_eq!(reference_type("1/_history/2"), Some("_history"));
        assert_eq!(reference_type("Patient"), None);
    }

    #[test]
    fn child_locations_carry_indices() {
        assert_eq!(child_loc("Patient", "name", None).as_str(), "Patient.name");
        assert_eq!(
            child_loc("Patient", "name", Some(0)).as_str(),
            "Patient.name[0]"
        );
        assert_eq!(child_loc("A.b[3]", "c", Some(10)).as_str(), "A.b[3].c[10]");
        assert_eq!(
            child_loc("A", "c", Some(1234567890)).as_str(),
            "A.c[1234567890]"
        );
        assert_eq!(
            child_loc("A", "c", Some(usize::MAX)).as_str(),
            format!("A.c[{}]", usize::MAX)
        );
        // Past the inline capacity the location moves to the heap, unchanged.
        let long = "Bundle.entry[12].resource.contained[3]".repeat(4);
        for name in ["x", &"y".repeat(LOC_INLINE)] {
            let built = child_loc(&long, name, Some(7));
            assert_eq!(built.as_str(), format!("{long}.{name}[7]"));
            assert_eq!(built.to_string(), built.as_str());
        }
        let edge = "z".repeat(LOC_INLINE - 2);
        assert_eq!(child_loc(&edge, "a", None).as_str(), format!("{edge}.a"));
        assert!(matches!(child_loc(&edge, "a", None), Loc::Inline { .. }));
        assert!(matches!(child_loc(&edge, "ab", None), Loc::Heap(_)));
    }
}
