//! FHIRPath (N1, plus the FHIR-specific functions) over `serde_json::Value` resources.
//!
//! One engine serves invariants (validation on every write), search-parameter extraction
//! and slicing discriminators, so it is built for compile-once / evaluate-many:
//!
//! * [`Expression::compile`] parses once into an immutable, `Send + Sync` AST with function
//!   names resolved and arities checked — syntax errors carry a position.
//! * Evaluation is synchronous and borrows the resource: elements are never copied, only
//!   result vectors are allocated.
//! * Types come from a [`ModelInfo`] (the R4 core model is built in), so `birthDate`
//!   compares as a date, `Observation.value` finds `valueQuantity`, and `is`/`as`/`ofType`
//!   know that `Age` is a `Quantity` and `code` a `string`.
//! * Decimals are exact ([`Decimal`]); dates keep their precision ([`Temporal`]);
//!   quantities compare across UCUM units ([`Quantity`]).
//!
//! Entry points: [`Expression::evaluate`] (lenient, used by search indexing: errors give an
//! empty result, unresolvable references resolve to type-only stubs so that
//! `where(resolve() is Patient)` works), and [`Expression::evaluate_in`] with a [`Context`]
//! (spec behaviour: errors are `Err`, variables, resolver, terminology, tracing).

mod decimal;
mod eval;
mod existence;
mod lexer;
mod model;
mod parser;
mod paths;
mod quantity;
mod temporal;
mod types;
mod value;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

pub use decimal::Decimal;
pub use existence::Existence;
pub use model::{ModelInfo, TypeKind};
pub use paths::PlainPaths;
pub use quantity::Quantity;
pub use temporal::{Precision, Temporal, TemporalKind};

use eval::{Env, Scope};
use value::{Node, Val, UNKNOWN};

/// Why an expression was rejected: where (character offset in the source) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath error at {position}: {message}")]
pub struct FhirPathError {
    pub position: usize,
    pub message: String,
}

impl FhirPathError {
    pub(crate) fn new(position: usize, message: impl Into<String>) -> Self {
        FhirPathError {
            position,
            message: message.into(),
        }
    }
}

/// An evaluation error the spec requires (a collection where one item is needed, operands
/// of incompatible types, an unknown type or variable, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath evaluation error: {message}")]
pub struct EvalError {
    pub message: String,
}

impl EvalError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        EvalError {
            message: message.into(),
        }
    }

    /// Prefixes the function and source position the first time an error passes a call.
    pub(crate) fn at(self, pos: usize, function: &str) -> Self {
        if self.message.starts_with("at ") {
            return self;
        }
        EvalError {
            message: format!("at {pos} in {function}(): {}", self.message),
        }
    }
}

/// One item of an evaluation result.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// An element of the evaluated document (object, string, number or boolean — never an
    /// array: repeating elements are flattened). `fhir_type` is its FHIR type when known
    /// (`date`, `code`, `HumanName`, `Patient`). A primitive that has only an extension
    /// (`_given`) has `Value::Null` here.
    Node {
        value: &'a Value,
        fhir_type: Option<&'a str>,
    },
    Str(String),
    Bool(bool),
    Integer(i64),
    Decimal(Decimal),
    /// A Date, DateTime or Time (see [`Temporal::kind`]).
    Temporal(Temporal),
    Quantity(Quantity),
    /// A `type()` result.
    TypeInfo {
        namespace: String,
        name: String,
    },
}

impl Item<'_> {
    /// The item's type name as FHIRPath reports it: FHIR types for elements (`code`),
    /// System types for computed values (`Integer`).
    pub fn type_name(&self) -> String {
        match self {
            Item::Node { fhir_type, value } => fhir_type.map(str::to_string).unwrap_or_else(|| {
                match value {
                    Value::String(_) => "string",
                    Value::Bool(_) => "boolean",
                    Value::Number(_) => "decimal",
                    _ => "Element",
                }
                .to_string()
            }),
            Item::Str(_) => "String".into(),
            Item::Bool(_) => "Boolean".into(),
            Item::Integer(_) => "Integer".into(),
            Item::Decimal(_) => "Decimal".into(),
            Item::Temporal(t) => match t.kind {
                TemporalKind::Date => "Date",
                TemporalKind::DateTime => "DateTime",
                TemporalKind::Time => "Time",
            }
            .into(),
            Item::Quantity(_) => "Quantity".into(),
            Item::TypeInfo { .. } => "TypeInfo".into(),
        }
    }

    /// The item in FHIR JSON form: elements as they are, dates/times as strings, decimals
    /// as numbers keeping their digits, quantities as `{"value", "unit"}` (plus `system` and
    /// `code` for UCUM units).
    pub fn to_json(&self) -> Value {
        match self {
            Item::Node { value, .. } => (*value).clone(),
            Item::Str(s) => Value::String(s.clone()),
            Item::Bool(b) => Value::Bool(*b),
            Item::Integer(i) => Value::from(*i),
            Item::Decimal(d) => decimal_json(d),
            Item::Temporal(t) => Value::String(t.to_string()),
            Item::Quantity(q) => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), decimal_json(&q.value));
                let ucum = match &*q.unit {
                    "week" => Some("wk"),
                    "day" => Some("d"),
                    "hour" => Some("h"),
                    "minute" => Some("min"),
                    "second" => Some("s"),
                    "millisecond" => Some("ms"),
                    "year" | "month" => None,
                    u if quantity::is_known_unit(u) || u.starts_with('{') => Some(u),
                    _ => None,
                };
                m.insert("unit".into(), Value::String(q.unit.to_string()));
                if let Some(code) = ucum {
                    m.insert(
                        "system".into(),
                        Value::String("http://unitsofmeasure.org".into()),
                    );
                    m.insert("code".into(), Value::String(code.to_string()));
                }
                Value::Object(m)
            }
            Item::TypeInfo { namespace, name } => {
                serde_json::json!({"namespace": namespace, "name": name})
            }
        }
    }
}

fn decimal_json(d: &Decimal) -> Value {
    serde_json::from_str::<Value>(&d.to_string()).unwrap_or(Value::Null)
}

pub(crate) fn to_item<'a>(v: &Val<'a>, model: &'a ModelInfo) -> Option<Item<'a>> {
    Some(match v {
        Val::Node(n) => Item::Node {
            value: n.v,
            fhir_type: (n.ty != UNKNOWN).then(|| model.name(n.ty)),
        },
        Val::Bool(b) => Item::Bool(*b),
        Val::Int(i) => Item::Integer(*i),
        Val::Dec(d) => Item::Decimal(*d),
        Val::Str(s) => Item::Str(s.to_string()),
        Val::Temporal(t) => Item::Temporal(*t),
        Val::Quantity(q) => Item::Quantity((**q).clone()),
        Val::TypeInfo(ns, n) => Item::TypeInfo {
            namespace: ns.to_string(),
            name: n.to_string(),
        },
        Val::Stub(_) => return None,
    })
}

fn from_item<'a>(item: &Item<'a>, model: &ModelInfo) -> Val<'a> {
    match item {
        Item::Node { value, fhir_type } => {
            let ty = fhir_type
                .and_then(|t| model.type_id(t))
                .unwrap_or_else(|| value::infer_type(value, model));
            Val::node(value, ty)
        }
        Item::Str(s) => Val::str(s),
        Item::Bool(b) => Val::Bool(*b),
        Item::Integer(i) => Val::Int(*i),
        Item::Decimal(d) => Val::Dec(*d),
        Item::Temporal(t) => Val::Temporal(*t),
        Item::Quantity(q) => Val::Quantity(Arc::new(q.clone())),
        Item::TypeInfo { namespace, name } => Val::TypeInfo(
            if namespace == "System" {
                "System"
            } else {
                "FHIR"
            },
            Arc::from(name.as_str()),
        ),
    }
}

/// Follows references `resolve()` cannot answer from the document itself (e.g. into the
/// store). Called with the reference text (`Patient/1`, an absolute URL, a canonical).
pub trait Resolver<'a> {
    fn resolve(&self, reference: &str) -> Option<&'a Value>;
}

/// Answers `memberOf()`. `item` is a code (JSON string), a Coding or a CodeableConcept;
/// `None` means unknown (the result is then empty).
pub trait Terminology {
    fn member_of(&self, item: &Value, value_set: &str) -> Option<bool>;
}

/// Answers `conformsTo()` for profiles beyond the core types; `None` falls back to the
/// built-in check (core StructureDefinition URLs only; other URLs are an error).
pub trait Conformance {
    fn conforms_to(&self, resource: &Value, profile: &str) -> Option<bool>;
}

/// Callback receiving `trace(name)` output.
pub type TraceFn<'a> = dyn Fn(&str, &[Item<'a>]) + 'a;

/// Everything an evaluation needs besides the expression: the resource(s), variables,
/// callbacks and options. Cheap to build (no allocation unless variables are added).
pub struct Context<'a> {
    model: &'a ModelInfo,
    resource: &'a Value,
    /// The resource's type, looked up once.
    resource_ty: model::TypeId,
    root_resource: Option<&'a Value>,
    focus: Option<(&'a Value, Option<&'a str>)>,
    vars: HashMap<String, Vec<Val<'a>>>,
    resolver: Option<&'a dyn Resolver<'a>>,
    terminology: Option<&'a dyn Terminology>,
    conformance: Option<&'a dyn Conformance>,
    trace: Option<&'a TraceFn<'a>>,
    strict: bool,
    stubs: bool,
}

impl<'a> Context<'a> {
    /// Evaluation over `resource`, which is also `%resource`, `%rootResource`, `%context`
    /// and the initial focus; the R4 model.
    pub fn new(resource: &'a Value) -> Context<'a> {
        let model = ModelInfo::r4();
        Context {
            model,
            resource,
            resource_ty: value::infer_type(resource, model),
            root_resource: None,
            focus: None,
            vars: HashMap::new(),
            resolver: None,
            terminology: None,
            conformance: None,
            trace: None,
            strict: false,
            stubs: false,
        }
    }

    /// Another model (another FHIR version, or one built from extra StructureDefinitions).
    pub fn model(mut self, model: &'a ModelInfo) -> Self {
        self.model = model;
        self.resource_ty = value::infer_type(self.resource, model);
        self
    }

    /// `%rootResource` when `resource` is contained in (or is an entry of) another one;
    /// `resolve()` also searches its `contained` and, for a Bundle, its entries.
    pub fn root_resource(mut self, root: &'a Value) -> Self {
        self.root_resource = Some(root);
        self
    }

    /// Evaluates at an element inside the resource (an invariant on `Patient.contact`):
    /// the element becomes the focus and `%context`. `fhir_type` types it (`Patient.contact`,
    /// `HumanName`); without it the element is typed from the JSON only.
    pub fn focus(mut self, element: &'a Value, fhir_type: Option<&'a str>) -> Self {
        self.focus = Some((element, fhir_type));
        self
    }

    /// A user variable (`%name`).
    pub fn variable(mut self, name: &str, value: Vec<Item<'a>>) -> Self {
        let vals = value.iter().map(|i| from_item(i, self.model)).collect();
        self.vars.insert(name.to_string(), vals);
        self
    }

    pub fn resolver(mut self, r: &'a dyn Resolver<'a>) -> Self {
        self.resolver = Some(r);
        self
    }

    pub fn terminology(mut self, t: &'a dyn Terminology) -> Self {
        self.terminology = Some(t);
        self
    }

    pub fn conformance(mut self, c: &'a dyn Conformance) -> Self {
        self.conformance = Some(c);
        self
    }

    pub fn trace(mut self, f: &'a TraceFn<'a>) -> Self {
        self.trace = Some(f);
        self
    }

    /// Strict mode: navigating to an element the model does not define, or a type name
    /// that does not match the resource, is an error instead of an empty result.
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }

    /// Lets `resolve()` return a type-only placeholder for references outside the document,
    /// so `where(resolve() is Patient)` can test a reference's target type (search
    /// indexing). Placeholders never appear in results.
    pub fn reference_stubs(mut self, on: bool) -> Self {
        self.stubs = on;
        self
    }

    fn resource_val(&self, v: &'a Value) -> Val<'a> {
        Val::node(v, value::infer_type(v, self.model))
    }
}

/// A compiled FHIRPath expression; immutable, so one instance can serve all threads.
#[derive(Debug, Clone)]
pub struct Expression {
    source: String,
    ast: parser::Expr,
}

impl Expression {
    /// Parses `src`; fails (never panics) on syntax errors, unknown functions and wrong
    /// argument counts, with the character position.
    pub fn compile(src: &str) -> Result<Expression, FhirPathError> {
        let ast = parser::parse(src)?;
        Ok(Expression {
            source: src.to_string(),
            ast,
        })
    }

    /// The source text this expression was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Lenient evaluation for indexing: errors give an empty result and references outside
    /// the document resolve to type-only placeholders (left out of the result).
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Item<'a>> {
        self.evaluate_in(&Context::new(resource).reference_stubs(true))
            .unwrap_or_default()
    }

    /// Evaluation per the spec over `resource` with the R4 model: errors are returned.
    pub fn evaluate_checked<'a>(&self, resource: &'a Value) -> Result<Vec<Item<'a>>, EvalError> {
        self.evaluate_in(&Context::new(resource))
    }

    /// Evaluation with everything a [`Context`] can set.
    pub fn evaluate_in<'a>(&self, ctx: &Context<'a>) -> Result<Vec<Item<'a>>, EvalError> {
        let vals = self.run(ctx)?;
        Ok(vals.iter().filter_map(|v| to_item(v, ctx.model)).collect())
    }

    /// Evaluates as a condition: `Some(b)` for a single boolean (any other single item
    /// counts as `true`), `None` for an empty result, several items or an error.
    pub fn evaluate_bool(&self, resource: &Value) -> Option<bool> {
        self.evaluate_bool_in(&Context::new(resource))
            .ok()
            .flatten()
    }

    /// An invariant check: `Ok(Some(b))` for a boolean result, `Ok(None)` when empty; an
    /// error for several items or an evaluation error. Avoids building result items.
    pub fn evaluate_bool_in(&self, ctx: &Context<'_>) -> Result<Option<bool>, EvalError> {
        let env = self.env(ctx);
        let focus = [self.focus_val(ctx)];
        env.eval_bool(&self.ast, Scope::root(&focus))
    }

    fn env<'a, 'e>(&self, ctx: &'e Context<'a>) -> Env<'a, 'e> {
        Env {
            model: ctx.model,
            resource: Some(Val::node(ctx.resource, ctx.resource_ty)),
            root_resource: ctx.root_resource.map(|r| ctx.resource_val(r)),
            context: Some(self.focus_val(ctx)),
            vars: &ctx.vars,
            resolver: ctx.resolver,
            terminology: ctx.terminology,
            conformance: ctx.conformance,
            trace: ctx.trace,
            strict: ctx.strict,
            stubs: ctx.stubs,
            now: Cell::new(None),
        }
    }

    fn focus_val<'a>(&self, ctx: &Context<'a>) -> Val<'a> {
        match ctx.focus {
            Some((v, ty)) => {
                let t = ty
                    .and_then(|t| ctx.model.type_id(t))
                    .unwrap_or_else(|| value::infer_type(v, ctx.model));
                Val::Node(Node {
                    v,
                    ext: None,
                    ty: t,
                })
            }
            None => Val::node(ctx.resource, ctx.resource_ty),
        }
    }

    fn run<'a>(&self, ctx: &Context<'a>) -> Result<Vec<Val<'a>>, EvalError> {
        let env = self.env(ctx);
        let focus = [self.focus_val(ctx)];
        env.eval(&self.ast, Scope::root(&focus))
    }
}

impl std::fmt::Display for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests;
