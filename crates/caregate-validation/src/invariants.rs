//! The FHIRPath implementation of the [`InvariantEvaluator`] hook: each constraint
//! expression is compiled once (cached by its text) and evaluated with the element as
//! `%context`, typed by its element path, `%resource` the resource that holds it and
//! `%rootResource` the outermost one (a Bundle, for `resolve()` of its entries).
//!
//! `ele-1` and `ext-1` are not evaluated through FHIRPath: the structural walk already
//! rejects empty objects, arrays and strings (ele-1), and the validator checks `ext-1`
//! (value and nested extensions together, or neither) natively on each extension.
//! Evaluated through FHIRPath they would run on every element and every extension.

use std::sync::{Arc, RwLock};

use caregate_core::json::member;
use caregate_fhirpath::{Context, Existence, Expression};
use serde_json::{Map, Value};

use crate::model::FxMap;
use crate::terminology::{CodeCheck, Terminology};
use crate::validator::{InvariantContext, InvariantEvaluator, InvariantOutcome};

/// Constraint keys the evaluator does not evaluate (see the module documentation).
pub const SKIPPED_INVARIANTS: &[&str] = &["ele-1", "ext-1"];

type Compiled = Result<Arc<Expression>, String>;

/// Evaluates invariants with caregate-fhirpath; `memberOf()` is answered by the
/// registry's terminology.
pub struct FhirPathInvariants {
    /// By expression text; FxHash, as every evaluation looks its expression up.
    cache: RwLock<FxMap<Box<str>, Compiled>>,
    terminology: Option<Arc<Terminology>>,
    /// Answer the shapes of [`Shape`] natively (always, except in the tests that compare
    /// both ways).
    native_shapes: bool,
}

impl std::fmt::Debug for FhirPathInvariants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirPathInvariants").finish_non_exhaustive()
    }
}

impl Default for FhirPathInvariants {
    fn default() -> Self {
        FhirPathInvariants::new(None)
    }
}

impl FhirPathInvariants {
    pub fn new(terminology: Option<Arc<Terminology>>) -> FhirPathInvariants {
        FhirPathInvariants {
            cache: RwLock::new(FxMap::default()),
            terminology,
            native_shapes: true,
        }
    }

    /// Every constraint through FHIRPath, for comparing the native answers with.
    #[cfg(test)]
    pub(crate) fn fhirpath_only(terminology: Option<Arc<Terminology>>) -> FhirPathInvariants {
        FhirPathInvariants {
            native_shapes: false,
            ..FhirPathInvariants::new(terminology)
        }
    }

    /// Compiles every constraint expression of `definitions` (StructureDefinitions) up
    /// front, so the first resources validated do not pay for it.
    pub fn precompile<'a>(&self, definitions: impl IntoIterator<Item = &'a Value>) {
        for sd in definitions {
            for key in ["snapshot", "differential"] {
                let elements = sd
                    .get(key)
                    .and_then(|s| s.get("element"))
                    .and_then(Value::as_array);
                for e in elements.into_iter().flatten() {
                    let constraints = e.get("constraint").and_then(Value::as_array);
                    for c in constraints.into_iter().flatten() {
                        let skipped = c
                            .get("key")
                            .and_then(Value::as_str)
                            .is_some_and(|k| SKIPPED_INVARIANTS.contains(&k));
                        if let (false, Some(expr)) =
                            (skipped, c.get("expression").and_then(Value::as_str))
                        {
                            let _ = self.compiled(expr);
                        }
                    }
                }
            }
        }
    }

    /// Number of distinct expressions compiled so far.
    pub fn compiled_count(&self) -> usize {
        self.cache.read().map_or(0, |c| c.len())
    }

    fn compiled(&self, expr: &str) -> Compiled {
        if let Ok(cache) = self.cache.read() {
            if let Some(c) = cache.get(expr) {
                return c.clone();
            }
        }
        // R4 constraints (dom-3: `descendants().as(canonical)`) call the `as()` function on
        // collections, which FHIRPath N1 makes an error and every reference validator
        // treats as a filter; `ofType()` is that filter, and equal to `as()` on one item.
        let lenient = expr.replace(".as(", ".ofType(");
        let compiled = Expression::compile(&lenient)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(expr.into(), compiled.clone());
        }
        compiled
    }
}

/// `resolve()` of references to other entries of the Bundle being validated (by
/// `fullUrl`, or `Type/id` of an entry).
struct BundleResolver<'a>(&'a Value);

impl<'a> caregate_fhirpath::Resolver<'a> for BundleResolver<'a> {
    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        let entries = self.0.get("entry")?.as_array()?;
        let by_url = entries
            .iter()
            .find(|e| e.get("fullUrl").and_then(Value::as_str) == Some(reference))
            .and_then(|e| e.get("resource"));
        if by_url.is_some() {
            return by_url;
        }
        let (rt, id) = reference.rsplit_once('/')?;
        let rt = rt.rsplit('/').next()?;
        entries.iter().filter_map(|e| e.get("resource")).find(|r| {
            r.get("resourceType").and_then(Value::as_str) == Some(rt)
                && r.get("id").and_then(Value::as_str) == Some(id)
        })
    }
}

struct MemberOf<'t>(&'t Terminology);

impl caregate_fhirpath::Terminology for MemberOf<'_> {
    fn member_of(&self, item: &Value, value_set: &str) -> Option<bool> {
        let check =
            |system: Option<&str>, code: &str| self.0.validate_code(value_set, system, code);
        let codings: Vec<(Option<&str>, &str)> = match item {
            Value::String(code) => vec![(None, code.as_str())],
            Value::Object(o) if o.contains_key("coding") => o
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some((
                        c.get("system").and_then(Value::as_str),
                        c.get("code")?.as_str()?,
                    ))
                })
                .collect(),
            Value::Object(o) => vec![(
                o.get("system").and_then(Value::as_str),
                o.get("code")?.as_str()?,
            )],
            _ => return None,
        };
        let mut unknown = false;
        for (s, c) in codings {
            match check(s, c) {
                CodeCheck::Valid => return Some(true),
                CodeCheck::CannotCheck(_) => unknown = true,
                CodeCheck::Invalid => {}
            }
        }
        if unknown {
            None
        } else {
            Some(false)
        }
    }
}

/// What the evaluator makes of one constraint, decided on its first evaluation and kept on
/// the [`Constraint`](crate::Constraint): every later evaluation goes straight to the
/// native check or the compiled expression, without matching or hashing the text again.
#[derive(Debug, Clone)]
pub(crate) enum Prepared {
    /// Not evaluated here: `ele-1`, `ext-1`, or no FHIRPath expression.
    Skipped,
    Ready {
        /// A shape answered natively (when the data allows; see [`native`]).
        shape: Option<Shape>,
        /// The expression, for everything the shape does not answer.
        compiled: Compiled,
    },
}

impl FhirPathInvariants {
    fn prepare(&self, c: &crate::Constraint) -> Prepared {
        if SKIPPED_INVARIANTS.contains(&c.key.as_str()) {
            return Prepared::Skipped;
        }
        let Some(src) = c.expression.as_deref() else {
            return Prepared::Skipped;
        };
        let compiled = self.compiled(src);
        Prepared::Ready {
            shape: shape_of(src, &compiled),
            compiled,
        }
    }
}

impl InvariantEvaluator for FhirPathInvariants {
    fn evaluate(&self, ctx: &InvariantContext<'_>) -> InvariantOutcome {
        let c = ctx.constraint;
        let Prepared::Ready { shape, compiled } = c.prepared.get_or_init(|| self.prepare(c)) else {
            return InvariantOutcome::Satisfied;
        };
        let shape = shape.as_ref().filter(|_| self.native_shapes);
        if let Some(answer) = shape.and_then(|s| native(s, ctx)) {
            return if answer {
                InvariantOutcome::Satisfied
            } else {
                InvariantOutcome::Violated
            };
        }
        let expr = match compiled {
            Ok(e) => e,
            Err(e) => return InvariantOutcome::NotEvaluated(format!("cannot compile: {e}")),
        };
        let member_of = self.terminology.as_deref().map(MemberOf);
        let bundle = BundleResolver(ctx.root);
        let mut fctx = Context::new(ctx.resource)
            .root_resource(ctx.container)
            .focus(ctx.focus, ctx.fhir_type)
            .reference_stubs(true);
        if !std::ptr::eq(ctx.root, ctx.resource) {
            fctx = fctx.resolver(&bundle);
        }
        if let Some(t) = &member_of {
            fctx = fctx.terminology(t);
        }
        match expr.evaluate_bool_in(&fctx) {
            // An empty result is not a failure (per the spec, only `false` is).
            Ok(Some(false)) => InvariantOutcome::Violated,
            Ok(_) => InvariantOutcome::Satisfied,
            Err(e) => InvariantOutcome::NotEvaluated(e.to_string()),
        }
    }
}

/// R4 ref-1, on every Reference.
const REF_1: &str = "reference.startsWith('#').not() or (reference.substring(1).trace('url') in %rootResource.contained.id.trace('ids'))";

/// R4 per-1, on every Period.
const PER_1: &str = "start.hasValue().not() or end.hasValue().not() or (start <= end)";

/// The commonest constraint shapes, answered without FHIRPath with the same result:
/// ref-1, per-1 (when the dates compare as text), and any [`Existence`] (`and`, `or`,
/// `implies`, `.not()` over `a.exists()` and `a.empty()` of child paths): cpt-2 and qty-3
/// (`a.empty() or b.exists()`), dom-6 (``text.`div`.exists()``), cpl-3
/// (`detail.empty() or reference.empty()`), gol-1
/// (`(detail.exists() and measure.exists()) or detail.exists().not()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    Ref1,
    Per1,
    Existence(Existence),
}

fn shape_of(expr: &str, compiled: &Compiled) -> Option<Shape> {
    if expr == REF_1 {
        return Some(Shape::Ref1);
    }
    if expr == PER_1 {
        return Some(Shape::Per1);
    }
    compiled.as_ref().ok()?.existence().map(Shape::Existence)
}

/// `shape` on this focus; `None` when the data needs FHIRPath (choices, other syntax).
fn native(shape: &Shape, ctx: &InvariantContext<'_>) -> Option<bool> {
    let focus = ctx.focus.as_object()?;
    match shape {
        Shape::Ref1 => Some(match member(focus, "reference").and_then(Value::as_str) {
            Some(r) => match r.strip_prefix('#') {
                Some(id) => caregate_core::json::field(ctx.container, "contained")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            caregate_core::json::field(c, "id").and_then(Value::as_str) == Some(id)
                        })
                    }),
                None => true,
            },
            None => true,
        }),
        Shape::Per1 => {
            let start = member(focus, "start").and_then(Value::as_str);
            let end = member(focus, "end").and_then(Value::as_str);
            match (start, end) {
                (Some(start), Some(end)) => dates_in_order(start, end),
                _ => Some(true),
            }
        }
        Shape::Existence(e) => evaluate_existence(e, focus),
    }
}

/// An [`Existence`] on `focus`; `exists()` and `empty()` are always true or false in
/// FHIRPath, so the connectives are two-valued and may stop early as FHIRPath's do.
fn evaluate_existence(e: &Existence, focus: &Map<String, Value>) -> Option<bool> {
    Some(match e {
        Existence::Exists(path) => path_exists(focus, path)?,
        Existence::Not(a) => !evaluate_existence(a, focus)?,
        Existence::And(a, b) => evaluate_existence(a, focus)? && evaluate_existence(b, focus)?,
        Existence::Or(a, b) => evaluate_existence(a, focus)? || evaluate_existence(b, focus)?,
        Existence::Implies(a, b) => !evaluate_existence(a, focus)? || evaluate_existence(b, focus)?,
    })
}

/// `start <= end` for two FHIR dates or dateTimes when comparing the text gives
/// FHIRPath's answer: the same precision (length) and, with a time, the same timezone.
/// `None` otherwise (FHIRPath normalises zones and answers empty across precisions).
fn dates_in_order(start: &str, end: &str) -> Option<bool> {
    if start.len() != end.len() || !start.is_ascii() || !end.is_ascii() {
        return None;
    }
    let zone = |s: &str| -> Option<usize> {
        if s.ends_with('Z') {
            Some(s.len() - 1)
        } else {
            let at = s.len().checked_sub(6)?;
            matches!(s.as_bytes().get(at), Some(b'+' | b'-')).then_some(at)
        }
    };
    match start.len() {
        4 | 7 | 10 => Some(start <= end),
        n if n > 10 => {
            let (zs, ze) = (zone(start)?, zone(end)?);
            (zs == ze && start[zs..] == end[ze..]).then(|| start <= end)
        }
        _ => None,
    }
}

/// Whether `path` (child names from the focus; at most two are answered) has a value under
/// `focus`. An element is present with a value or with only its `_name` (id,
/// extensions), as FHIRPath sees the FHIR model. `None` for what is FHIRPath's to decide:
/// choices (`value` for `valueString`), longer paths, primitives along the way.
fn path_exists(focus: &Map<String, Value>, path: &[Arc<str>]) -> Option<bool> {
    let (first, second) = match path {
        [first] => return child_exists(focus, first),
        [first, second] => (first, second),
        _ => return None,
    };
    // Two steps (dom-6's ``text.`div` ``): any object under the first has the second.
    child_exists(focus, first)?;
    let mut any = false;
    let mut check = |v: &Value| -> Option<()> {
        let obj = v.as_object()?;
        any |= child_exists(obj, second)?;
        Some(())
    };
    match member(focus, first) {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items.iter().filter(|v| !v.is_null()) {
                check(item)?;
            }
        }
        Some(v) => check(v)?,
    }
    Some(any)
}

fn child_exists(focus: &Map<String, Value>, name: &str) -> Option<bool> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let mut present = false;
    for (k, v) in focus {
        let key = k.strip_prefix('_').unwrap_or(k).as_bytes();
        let Some(head) = key.get(..name.len()) else {
            continue;
        };
        if !caregate_core::keys::short_eq_bytes(head, name.as_bytes()) {
            continue;
        }
        let rest = &key[name.len()..];
        if rest.is_empty() {
            present |= !v.is_null();
        } else if rest[0].is_ascii_uppercase() {
            // A choice (`value` for `valueString`) is left to FHIRPath.
            return None;
        }
    }
    Some(present)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Constraint;
    use caregate_core::Severity;
    use serde_json::json;

    fn native_of(expr: &str, ctx: &InvariantContext<'_>) -> Option<bool> {
        let compiled = Expression::compile(expr)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        native(&shape_of(expr, &compiled)?, ctx)
    }

    /// The native answers equal FHIRPath's on the shapes they cover, and anything else
    /// (choices, other expressions) is left to FHIRPath.
    #[test]
    fn native_answers_match_fhirpath() {
        let engine = FhirPathInvariants::new(None);
        let container = json!({"resourceType": "Observation",
            "contained": [{"resourceType": "Patient", "id": "p"}]});
        let cases = [
            ("value.empty() or system.exists()", json!({"value": "1"})),
            (
                "value.empty() or system.exists()",
                json!({"value": "1", "system": "phone"}),
            ),
            (
                "value.empty() or system.exists()",
                json!({"system": "phone"}),
            ),
            ("comparator.empty()", json!({"comparator": "<"})),
            ("comparator.empty()", json!({"value": 1})),
            ("system.exists()", json!({"value": 1})),
            (REF_1, json!({"reference": "#p"})),
            (REF_1, json!({"reference": "#q"})),
            (REF_1, json!({"reference": "Patient/1"})),
            (REF_1, json!({"display": "x"})),
            (
                "text.`div`.exists()",
                json!({"text": {"status": "generated", "div": "<div/>"}}),
            ),
            (
                "text.`div`.exists()",
                json!({"text": {"status": "generated"}}),
            ),
            ("text.`div`.exists()", json!({"id": "x"})),
            (
                "name.given.exists()",
                json!({"name": [{"family": "a"}, {"given": ["b"]}]}),
            ),
            ("name.given.exists()", json!({"name": [{"family": "a"}]})),
            (
                "detail.empty() or reference.empty()",
                json!({"detail": {"kind": "x"}}),
            ),
            (
                "detail.empty() or reference.empty()",
                json!({"detail": {"kind": "x"}, "reference": {"reference": "x"}}),
            ),
            (
                "policy.exists() or policyRule.exists()",
                json!({"scope": 1}),
            ),
            (
                "policy.exists() or policyRule.exists()",
                json!({"policy": [{"uri": "x"}]}),
            ),
            (
                "(detail.exists() and measure.exists()) or detail.exists().not()",
                json!({"detail": "1"}),
            ),
            (
                "(detail.exists() and measure.exists()) or detail.exists().not()",
                json!({"detail": "1", "measure": {"text": "m"}}),
            ),
            (
                "(detail.exists() and measure.exists()) or detail.exists().not()",
                json!({"due": "x"}),
            ),
            (
                "onBehalfOf.exists() implies member.exists()",
                json!({"onBehalfOf": {}}),
            ),
            (
                "onBehalfOf.exists() implies member.exists()",
                json!({"onBehalfOf": {}, "member": {}}),
            ),
            (
                "onBehalfOf.exists() implies member.exists()",
                json!({"member": {}}),
            ),
            (
                "timeOfDay.empty() or when.empty()",
                json!({"when": ["MORN"], "timeOfDay": ["10:00:00"]}),
            ),
            (
                "(a.exists() or b.exists()).not() and c.empty()",
                json!({"c": 1}),
            ),
            (
                "(a.exists() or b.exists()).not() and c.empty()",
                json!({"x": 1}),
            ),
            (PER_1, json!({"start": "2020-01-01", "end": "2020-02-01"})),
            (PER_1, json!({"start": "2020-03-01", "end": "2020-02-01"})),
            (
                PER_1,
                json!({"start": "2020-03-01T10:00:00+01:00", "end": "2020-03-01T09:59:59+01:00"}),
            ),
            (
                PER_1,
                json!({"start": "2020-03-01T10:00:00Z", "end": "2020-03-01T10:00:00Z"}),
            ),
            (
                PER_1,
                json!({"start": "2020-03-01T10:00:00.123Z", "end": "2020-03-01T10:00:01.000Z"}),
            ),
            (PER_1, json!({"start": "2020-03-01T10:00:00Z"})),
            (PER_1, json!({"end": "2020"})),
        ];
        for (expr, focus) in cases {
            let constraint = Constraint::new("t-1", Severity::Error, "", Some(expr), None);
            let ctx = InvariantContext {
                constraint: &constraint,
                focus: &focus,
                resource: &container,
                container: &container,
                root: &container,
                fhir_type: None,
            };
            let native =
                native_of(expr, &ctx).unwrap_or_else(|| panic!("native shape: {expr} on {focus}"));
            let compiled = engine.compiled(expr).expect("compiles");
            let fctx = Context::new(&container)
                .root_resource(&container)
                .focus(&focus, None);
            let fhirpath = compiled.evaluate_bool_in(&fctx).expect("evaluates");
            assert_eq!(Some(native), fhirpath.or(Some(true)), "{expr} on {focus}");
        }
        // A primitive given only by its extensions exists in the FHIR model (as the
        // reference validator sees it); caregate-fhirpath reads the JSON value only.
        let sys_ext =
            json!({"code": "kg", "_system": {"extension": [{"url": "u", "valueString": "x"}]}});
        let constraint = Constraint::new(
            "qty-3",
            Severity::Error,
            "",
            Some("code.empty() or system.exists()"),
            None,
        );
        let ctx = InvariantContext {
            constraint: &constraint,
            focus: &sys_ext,
            resource: &sys_ext,
            container: &sys_ext,
            root: &sys_ext,
            fhir_type: None,
        };
        assert_eq!(
            native_of("code.empty() or system.exists()", &ctx),
            Some(true)
        );
        // A choice is FHIRPath's to resolve.
        let ext = json!({"url": "u", "valueString": "x"});
        let constraint = Constraint::new("t-2", Severity::Error, "", Some("value.exists()"), None);
        let ctx = InvariantContext {
            constraint: &constraint,
            focus: &ext,
            resource: &ext,
            container: &ext,
            root: &ext,
            fhir_type: None,
        };
        assert_eq!(native_of("value.exists()", &ctx), None);
        // Other shapes are FHIRPath's, whatever the data.
        for expr in [
            "a.b.c.exists()",
            "url.exists() xor system.exists()",
            "code.where(system = 'x').exists()",
            "url.exists() = true",
            "url.count() > 1",
            "(url.exists() or system.exists()",
            ".exists()",
        ] {
            assert_eq!(native_of(expr, &ctx), None, "{expr}");
        }
        // Dates that do not compare as text are FHIRPath's.
        assert_eq!(
            dates_in_order("2020-03-01T10:00:00+01:00", "2020-03-01T09:30:00Z"),
            None
        );
        assert_eq!(dates_in_order("2020-03", "2020-03-01"), None);
        assert_eq!(
            dates_in_order("2020-03-01T10:00:00+01:00", "2020-03-01T10:00:00-01:00"),
            None
        );
    }
}
