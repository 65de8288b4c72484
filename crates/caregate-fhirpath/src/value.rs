//! The evaluator's item type and conversions between FHIR JSON and FHIRPath System values.
//!
//! Elements of the resource stay borrowed (`Val::Node`) with their FHIR type; they are
//! converted to System values (`Prim`) only where an operator needs one, so navigating and
//! filtering allocate nothing per element.

use std::borrow::Cow;
use std::sync::Arc;

use caregate_core::json::member;
use serde_json::Value;

use crate::decimal::Decimal;
use crate::model::{ModelInfo, PrimKind, TypeId, TypeKind};
use crate::quantity::Quantity;
use crate::temporal::Temporal;

/// Stands in for a primitive whose value is absent but whose `_name` extension exists.
pub(crate) static NULL: Value = Value::Null;
/// The type of an element the model does not describe.
pub(crate) const UNKNOWN: TypeId = u32::MAX;

/// An element of a JSON document.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node<'a> {
    pub v: &'a Value,
    /// The `_name` sibling of a primitive (its `id` and `extension`).
    pub ext: Option<&'a Value>,
    pub ty: TypeId,
}

#[derive(Clone, Debug)]
pub(crate) enum Val<'a> {
    Node(Node<'a>),
    Bool(bool),
    Int(i64),
    Dec(Decimal),
    Str(Arc<str>),
    Temporal(Temporal),
    Quantity(Arc<Quantity>),
    /// A `type()` result: `namespace` and `name`.
    TypeInfo(&'static str, Arc<str>),
    /// What `resolve()` gives for a reference outside the document when the caller asked for
    /// stubs (search indexing): only the target's type is known, enough for
    /// `where(resolve() is Patient)`.
    Stub(TypeId),
}

/// A System value borrowed from a `Val`.
#[derive(Clone, Debug)]
pub(crate) enum Prim<'v> {
    Bool(bool),
    Int(i64),
    Dec(Decimal),
    Str(&'v str),
    Temporal(Temporal),
    Quantity(Cow<'v, Quantity>),
}

impl<'a> Val<'a> {
    pub fn node(v: &'a Value, ty: TypeId) -> Val<'a> {
        Val::Node(Node { v, ext: None, ty })
    }

    pub fn str(s: &str) -> Val<'a> {
        Val::Str(Arc::from(s))
    }
}

/// Decimal/integer from a JSON number, keeping its lexical precision.
pub(crate) fn number_prim<'v>(n: &serde_json::Number, kind: PrimKind) -> Option<Prim<'v>> {
    let text = n.as_str();
    if kind != PrimKind::Dec && !text.contains(['.', 'e', 'E']) {
        if let Ok(i) = text.parse::<i64>() {
            return Some(Prim::Int(i));
        }
    }
    Decimal::parse(text).map(Prim::Dec)
}

/// The System value of an item, if it is (or holds) a primitive or a Quantity.
pub(crate) fn to_prim<'v>(v: &'v Val<'_>, model: &ModelInfo) -> Option<Prim<'v>> {
    match v {
        Val::Bool(b) => Some(Prim::Bool(*b)),
        Val::Int(i) => Some(Prim::Int(*i)),
        Val::Dec(d) => Some(Prim::Dec(*d)),
        Val::Str(s) => Some(Prim::Str(s)),
        Val::Temporal(t) => Some(Prim::Temporal(*t)),
        Val::Quantity(q) => Some(Prim::Quantity(Cow::Borrowed(q))),
        Val::Node(n) => {
            let td = model.get(n.ty);
            let kind = td.map_or(PrimKind::None, |t| t.prim);
            match n.v {
                Value::Bool(b) => Some(Prim::Bool(*b)),
                Value::Number(num) => number_prim(num, kind),
                Value::String(s) => Some(match kind {
                    PrimKind::Date => Temporal::parse_date(s).map_or(Prim::Str(s), Prim::Temporal),
                    PrimKind::DateTime => {
                        Temporal::parse_datetime(s).map_or(Prim::Str(s), Prim::Temporal)
                    }
                    PrimKind::Time => Temporal::parse_time(s).map_or(Prim::Str(s), Prim::Temporal),
                    _ => Prim::Str(s),
                }),
                Value::Object(_) if td.is_some_and(|t| t.quantity) || n.ty == UNKNOWN => {
                    node_quantity(n.v).map(|q| Prim::Quantity(Cow::Owned(q)))
                }
                _ => None,
            }
        }
        Val::TypeInfo(..) | Val::Stub(_) => None,
    }
}

/// A FHIR Quantity element as a System Quantity: its UCUM code when the system is UCUM,
/// else its unit text.
pub(crate) fn node_quantity(v: &Value) -> Option<Quantity> {
    let m = v.as_object()?;
    let value = Decimal::parse(member(m, "value")?.as_number()?.as_str())?;
    let ucum = member(m, "system").and_then(Value::as_str) == Some("http://unitsofmeasure.org");
    let code = member(m, "code").and_then(Value::as_str);
    let unit = member(m, "unit").and_then(Value::as_str);
    let u = match (ucum, code, unit) {
        (true, Some(c), _) => c,
        (_, _, Some(u)) => u,
        (_, Some(c), _) => c,
        _ => "1",
    };
    Some(Quantity::new(value, u))
}

/// The FHIR type of a JSON value the model could not type, guessed from the JSON.
pub(crate) fn infer_type(v: &Value, model: &ModelInfo) -> TypeId {
    let name = match v {
        Value::Object(m) => match member(m, "resourceType").and_then(Value::as_str) {
            Some(rt) => rt,
            None => return UNKNOWN,
        },
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Number(n) if !n.as_str().contains(['.', 'e', 'E']) => "integer",
        Value::Number(_) => "decimal",
        _ => return UNKNOWN,
    };
    model.type_id(name).unwrap_or(UNKNOWN)
}

/// Whether the node is a resource (its type is a resource type).
pub(crate) fn is_resource(n: &Node<'_>, model: &ModelInfo) -> bool {
    model.kind(n.ty) == Some(TypeKind::Resource)
}

/// Deep equality that compares numbers by value (`1.0` = `1`), not by lexical form.
pub(crate) fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (Decimal::parse(x.as_str()), Decimal::parse(y.as_str())) {
                (Some(p), Some(q)) => p.eq_value(&q),
                _ => x.as_str() == y.as_str(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}
