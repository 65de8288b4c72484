//! Evaluates the AST over a JSON resource. Collections are `Vec<Val>`; navigation borrows
//! from the resource, so evaluating a search path allocates only the result vectors.

use std::sync::Arc;

use serde_json::Value;

use crate::parser::{Ast, BinOp, Func, Kind, TypeName, Var};
use crate::types::{choice_suffix, shape_matches, type_matches};

#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    /// An element of the resource. `ty` is the type a choice key revealed (`Quantity` for
    /// `valueQuantity`); other elements are typed by shape when a type test needs it.
    Node {
        v: &'a Value,
        ty: Option<&'a str>,
    },
    Str(Arc<str>),
    Bool(bool),
    Num(f64),
    /// What `resolve()` yields for a Reference: only its target's type is known.
    Resolved(&'a str),
}

pub(crate) struct Env<'a> {
    pub resource: &'a Value,
}

type Coll<'a> = Vec<Val<'a>>;

pub(crate) fn eval<'a>(ast: &Ast, focus: &[Val<'a>], env: &Env<'a>) -> Coll<'a> {
    match &ast.kind {
        Kind::Empty => Vec::new(),
        Kind::Str(s) => vec![Val::Str(s.clone())],
        Kind::Bool(b) => vec![Val::Bool(*b)],
        Kind::Num(n) => vec![Val::Num(*n)],
        Kind::Var(Var::Resource) => vec![node(env.resource)],
        Kind::Var(Var::This) => focus.to_vec(),
        Kind::Member(receiver, name) => {
            let mut out = Vec::new();
            match receiver {
                Some(r) => {
                    for item in &eval(r, focus, env) {
                        navigate(item, name, &mut out);
                    }
                }
                None => {
                    for item in focus {
                        navigate(item, name, &mut out);
                    }
                }
            }
            out
        }
        Kind::Call(receiver, func) => match receiver {
            Some(r) => {
                let input = eval(r, focus, env);
                call(func, &input, focus, env)
            }
            None => call(func, focus, focus, env),
        },
        Kind::Index(base, index) => {
            let base = eval(base, focus, env);
            match single_number(&eval(index, focus, env)) {
                Some(i) if i >= 0.0 && i.fract() == 0.0 => {
                    base.into_iter().nth(i as usize).into_iter().collect()
                }
                _ => Vec::new(),
            }
        }
        Kind::Neg(inner) => match single_number(&eval(inner, focus, env)) {
            Some(n) => vec![Val::Num(-n)],
            None => Vec::new(),
        },
        Kind::Union(branches) => {
            let mut out = Vec::new();
            for b in branches {
                for item in eval(b, focus, env) {
                    push_distinct(&mut out, item);
                }
            }
            out
        }
        Kind::Binary(op, l, r) => binary(*op, l, r, focus, env),
        Kind::Is(inner, ty) => {
            let input = eval(inner, focus, env);
            match input.as_slice() {
                [item] => vec![Val::Bool(is_type(item, ty))],
                _ => Vec::new(),
            }
        }
        Kind::As(inner, ty) => eval(inner, focus, env)
            .into_iter()
            .filter(|item| is_type(item, ty))
            .collect(),
    }
}

fn node(v: &Value) -> Val<'_> {
    Val::Node { v, ty: None }
}

/// Adds a child value, flattening arrays (FHIR repeats) and skipping JSON nulls.
fn push_value<'a>(out: &mut Coll<'a>, v: &'a Value, ty: Option<&'a str>) {
    match v {
        Value::Array(items) => out.extend(
            items
                .iter()
                .filter(|i| !i.is_null())
                .map(|i| Val::Node { v: i, ty }),
        ),
        Value::Null => {}
        other => out.push(Val::Node { v: other, ty }),
    }
}

/// `item.name`: a child element, the matching choice elements (`value` → `valueString`),
/// or — for a capitalised name on a resource — the resource itself when it is of that type.
fn navigate<'a>(item: &Val<'a>, name: &str, out: &mut Coll<'a>) {
    let Val::Node {
        v: Value::Object(m),
        ..
    } = item
    else {
        return;
    };
    if name.starts_with(|c: char| c.is_ascii_uppercase()) {
        if let Some(rt) = m.get("resourceType").and_then(Value::as_str) {
            if rt == name || name == "Resource" || name == "DomainResource" {
                out.push(item.clone());
            }
            return;
        }
    }
    if let Some(child) = m.get(name) {
        push_value(out, child, None);
        return;
    }
    for (key, child) in m {
        if let Some(suffix) = choice_suffix(key, name) {
            push_value(out, child, Some(suffix));
        }
    }
}

fn same_item(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Node { v: x, .. }, Val::Node { v: y, .. }) => std::ptr::eq(*x, *y),
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Num(x), Val::Num(y)) => x == y,
        (Val::Resolved(x), Val::Resolved(y)) => x == y,
        _ => false,
    }
}

fn push_distinct<'a>(out: &mut Coll<'a>, item: Val<'a>) {
    if !out.iter().any(|o| same_item(o, &item)) {
        out.push(item);
    }
}

/// The type of an item, when known without guessing from its shape.
fn known_type<'a>(item: &Val<'a>) -> Option<&'a str> {
    match item {
        Val::Node { ty: Some(t), .. } => Some(t),
        Val::Node { v, ty: None } => v.get("resourceType").and_then(Value::as_str),
        Val::Resolved(t) => Some(t),
        Val::Str(_) => Some("string"),
        Val::Bool(_) => Some("boolean"),
        Val::Num(_) => Some("decimal"),
    }
}

fn is_type(item: &Val<'_>, ty: &TypeName) -> bool {
    let wanted = &*ty.0;
    if let Val::Resolved(t) = item {
        return *t == wanted || wanted == "Resource" || wanted == "DomainResource";
    }
    if let Val::Node { v, ty: None } = item {
        return shape_matches(v, wanted);
    }
    match known_type(item) {
        Some(t) => type_matches(t, wanted),
        None => false,
    }
}

/// FHIRPath's singleton evaluation of a collection as a boolean: empty is unknown, a single
/// boolean is itself, any other single item is `true`; several items are an error (unknown).
fn to_bool(c: &[Val<'_>]) -> Option<bool> {
    match c {
        [] => None,
        [Val::Bool(b)] => Some(*b),
        [Val::Node {
            v: Value::Bool(b), ..
        }] => Some(*b),
        [_] => Some(true),
        _ => None,
    }
}

fn bool_coll<'a>(b: Option<bool>) -> Coll<'a> {
    b.map(Val::Bool).into_iter().collect()
}

fn as_number(item: &Val<'_>) -> Option<f64> {
    match item {
        Val::Num(n) => Some(*n),
        Val::Node {
            v: Value::Number(n),
            ..
        } => n.as_f64(),
        _ => None,
    }
}

fn single_number(c: &[Val<'_>]) -> Option<f64> {
    match c {
        [item] => as_number(item),
        _ => None,
    }
}

fn as_str<'v>(item: &'v Val<'_>) -> Option<&'v str> {
    match item {
        Val::Str(s) => Some(s),
        Val::Node {
            v: Value::String(s),
            ..
        } => Some(s),
        _ => None,
    }
}

fn single_str<'v>(c: &'v [Val<'_>]) -> Option<&'v str> {
    match c {
        [item] => as_str(item),
        _ => None,
    }
}

/// `=` on single items; `None` when they cannot be compared.
fn item_equal(a: &Val<'_>, b: &Val<'_>) -> Option<bool> {
    if let (Some(x), Some(y)) = (as_str(a), as_str(b)) {
        return Some(x == y);
    }
    if let (Some(x), Some(y)) = (as_number(a), as_number(b)) {
        return Some(x == y);
    }
    match (a, b) {
        (
            Val::Bool(x)
            | Val::Node {
                v: Value::Bool(x), ..
            },
            Val::Bool(y)
            | Val::Node {
                v: Value::Bool(y), ..
            },
        ) => Some(x == y),
        (Val::Node { v: x, .. }, Val::Node { v: y, .. }) => Some(json_equal(x, y)),
        (Val::Resolved(x), Val::Resolved(y)) => Some(x == y),
        _ => Some(false),
    }
}

/// Deep equality that compares numbers by value (`1.0` = `1`), not by lexical form.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
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

fn item_equivalent(a: &Val<'_>, b: &Val<'_>) -> bool {
    if let (Some(x), Some(y)) = (as_str(a), as_str(b)) {
        let norm = |s: &str| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
        };
        return norm(x) == norm(y);
    }
    item_equal(a, b).unwrap_or(false)
}

fn collection_equal(l: &[Val<'_>], r: &[Val<'_>]) -> Option<bool> {
    if l.is_empty() || r.is_empty() {
        return None;
    }
    if l.len() != r.len() {
        return Some(false);
    }
    let mut all = true;
    for (a, b) in l.iter().zip(r) {
        match item_equal(a, b) {
            Some(true) => {}
            Some(false) => all = false,
            None => return None,
        }
    }
    Some(all)
}

fn binary<'a>(op: BinOp, l: &Ast, r: &Ast, focus: &[Val<'a>], env: &Env<'a>) -> Coll<'a> {
    // Boolean operators evaluate the right side lazily where the left decides.
    match op {
        BinOp::And => {
            let a = to_bool(&eval(l, focus, env));
            if a == Some(false) {
                return bool_coll(Some(false));
            }
            let b = to_bool(&eval(r, focus, env));
            return bool_coll(match (a, b) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            });
        }
        BinOp::Or => {
            let a = to_bool(&eval(l, focus, env));
            if a == Some(true) {
                return bool_coll(Some(true));
            }
            let b = to_bool(&eval(r, focus, env));
            return bool_coll(match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            });
        }
        BinOp::Implies => {
            let a = to_bool(&eval(l, focus, env));
            if a == Some(false) {
                return bool_coll(Some(true));
            }
            let b = to_bool(&eval(r, focus, env));
            return bool_coll(match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(true), Some(false)) => Some(false),
                _ => None,
            });
        }
        _ => {}
    }
    let a = eval(l, focus, env);
    let b = eval(r, focus, env);
    match op {
        BinOp::Xor => bool_coll(match (to_bool(&a), to_bool(&b)) {
            (Some(x), Some(y)) => Some(x != y),
            _ => None,
        }),
        BinOp::Eq => bool_coll(collection_equal(&a, &b)),
        BinOp::Ne => bool_coll(collection_equal(&a, &b).map(|e| !e)),
        BinOp::Equiv | BinOp::NotEquiv => {
            let eq = a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| item_equivalent(x, y));
            bool_coll(Some(if op == BinOp::Equiv { eq } else { !eq }))
        }
        BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
            let ord = match (a.as_slice(), b.as_slice()) {
                ([x], [y]) => match (as_number(x), as_number(y)) {
                    (Some(p), Some(q)) => p.partial_cmp(&q),
                    _ => match (as_str(x), as_str(y)) {
                        (Some(p), Some(q)) => Some(p.cmp(q)),
                        _ => None,
                    },
                },
                _ => None,
            };
            bool_coll(ord.map(|o| match op {
                BinOp::Lt => o.is_lt(),
                BinOp::Gt => o.is_gt(),
                BinOp::Le => o.is_le(),
                _ => o.is_ge(),
            }))
        }
        BinOp::In | BinOp::Contains => {
            let (needle, hay) = if op == BinOp::In { (&a, &b) } else { (&b, &a) };
            match needle.as_slice() {
                [] => Vec::new(),
                [x] => bool_coll(Some(hay.iter().any(|h| item_equal(x, h) == Some(true)))),
                _ => Vec::new(),
            }
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
            match (single_number(&a), single_number(&b)) {
                (Some(x), Some(y)) => {
                    let n = match op {
                        BinOp::Add => x + y,
                        BinOp::Sub => x - y,
                        BinOp::Mul => x * y,
                        _ if y == 0.0 => return Vec::new(),
                        _ => x / y,
                    };
                    vec![Val::Num(n)]
                }
                _ if op == BinOp::Add => match (single_str(&a), single_str(&b)) {
                    (Some(x), Some(y)) => vec![Val::Str(Arc::from(format!("{x}{y}")))],
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            }
        }
        BinOp::Concat => {
            let x = single_str(&a).unwrap_or("");
            let y = single_str(&b).unwrap_or("");
            vec![Val::Str(Arc::from(format!("{x}{y}")))]
        }
        BinOp::And | BinOp::Or | BinOp::Implies => Vec::new(),
    }
}

/// The type a Reference (or canonical / uri string) points at: `Patient` for
/// `Patient/1`, `http://x/fhir/Patient/1/_history/2` or a Reference with only `type`.
fn reference_target_type(v: &Value) -> Option<&str> {
    let text = match v {
        Value::String(s) => s.as_str(),
        Value::Object(m) => match m.get("reference").and_then(Value::as_str) {
            Some(r) => r,
            None => {
                return m
                    .get("type")
                    .and_then(Value::as_str)
                    .filter(|t| caregate_core::is_resource_type(t))
            }
        },
        _ => return None,
    };
    if text.starts_with('#') {
        return None;
    }
    let path = text.split(['?', '#']).next().unwrap_or(text);
    let path = match path.find("/_history/") {
        Some(i) => &path[..i],
        None => path,
    };
    let mut segments = path.rsplit('/');
    let id = segments.next()?;
    let ty = segments.next()?;
    (!id.is_empty() && caregate_core::is_resource_type(ty)).then_some(ty)
}

fn call<'a>(func: &Func, input: &[Val<'a>], focus: &[Val<'a>], env: &Env<'a>) -> Coll<'a> {
    match func {
        Func::Where(crit) => input
            .iter()
            .filter(|item| to_bool(&eval(crit, std::slice::from_ref(*item), env)) == Some(true))
            .cloned()
            .collect(),
        Func::Select(proj) => input
            .iter()
            .flat_map(|item| eval(proj, std::slice::from_ref(item), env))
            .collect(),
        Func::All(crit) => {
            bool_coll(Some(input.iter().all(|item| {
                to_bool(&eval(crit, std::slice::from_ref(item), env)) == Some(true)
            })))
        }
        Func::Exists(None) => bool_coll(Some(!input.is_empty())),
        Func::Exists(Some(crit)) => {
            bool_coll(Some(input.iter().any(|item| {
                to_bool(&eval(crit, std::slice::from_ref(item), env)) == Some(true)
            })))
        }
        Func::Empty => bool_coll(Some(input.is_empty())),
        Func::First => input.first().cloned().into_iter().collect(),
        Func::Last => input.last().cloned().into_iter().collect(),
        Func::Tail => input.iter().skip(1).cloned().collect(),
        Func::Single => match input {
            [one] => vec![one.clone()],
            _ => Vec::new(),
        },
        Func::Skip(n) | Func::Take(n) => {
            let Some(n) = single_number(&eval(n, focus, env)) else {
                return Vec::new();
            };
            let n = if n.is_finite() && n > 0.0 {
                n as usize
            } else {
                0
            };
            if matches!(func, Func::Skip(_)) {
                input.iter().skip(n).cloned().collect()
            } else {
                input.iter().take(n).cloned().collect()
            }
        }
        Func::Count => vec![Val::Num(input.len() as f64)],
        Func::Distinct => {
            let mut out = Vec::new();
            for item in input {
                push_distinct(&mut out, item.clone());
            }
            out
        }
        Func::Not => bool_coll(to_bool(input).map(|b| !b)),
        Func::HasValue => bool_coll(Some(matches!(
            input,
            [Val::Node {
                v: Value::String(_) | Value::Bool(_) | Value::Number(_),
                ..
            }]
        ))),
        Func::Extension(url) => extensions(input, url),
        Func::HasExtension(url) => bool_coll(Some(!extensions(input, url).is_empty())),
        Func::OfType(ty) => input.iter().filter(|i| is_type(i, ty)).cloned().collect(),
        Func::Is(ty) => match input {
            [item] => vec![Val::Bool(is_type(item, ty))],
            _ => Vec::new(),
        },
        Func::Resolve => input
            .iter()
            .filter_map(|item| match item {
                Val::Node { v, .. } if v.get("resourceType").is_some() => Some(item.clone()),
                Val::Node { v, .. } => reference_target_type(v).map(Val::Resolved),
                _ => None,
            })
            .collect(),
        Func::Union(other) => {
            let mut out = Vec::new();
            for item in input.iter().cloned().chain(eval(other, focus, env)) {
                push_distinct(&mut out, item);
            }
            out
        }
        Func::Combine(other) => input
            .iter()
            .cloned()
            .chain(eval(other, focus, env))
            .collect(),
        Func::StartsWith(arg) | Func::EndsWith(arg) | Func::StrContains(arg) => {
            let arg = eval(arg, focus, env);
            match (single_str(input), single_str(&arg)) {
                (Some(s), Some(p)) => bool_coll(Some(match func {
                    Func::StartsWith(_) => s.starts_with(p),
                    Func::EndsWith(_) => s.ends_with(p),
                    _ => s.contains(p),
                })),
                _ => Vec::new(),
            }
        }
        Func::Lower | Func::Upper => match single_str(input) {
            Some(s) => {
                let t = if matches!(func, Func::Lower) {
                    s.to_lowercase()
                } else {
                    s.to_uppercase()
                };
                vec![Val::Str(Arc::from(t))]
            }
            None => Vec::new(),
        },
        Func::Length => match single_str(input) {
            Some(s) => vec![Val::Num(s.chars().count() as f64)],
            None => Vec::new(),
        },
        Func::ToString => match input {
            [item] => match item {
                Val::Str(s) => vec![Val::Str(s.clone())],
                Val::Node {
                    v: Value::String(s),
                    ..
                } => vec![Val::Str(Arc::from(s.as_str()))],
                Val::Node {
                    v: Value::Number(n),
                    ..
                } => vec![Val::Str(Arc::from(n.to_string()))],
                Val::Node {
                    v: Value::Bool(b), ..
                }
                | Val::Bool(b) => vec![Val::Str(Arc::from(b.to_string()))],
                Val::Num(n) => vec![Val::Str(Arc::from(n.to_string()))],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        },
        Func::Iif(cond, then, otherwise) => {
            if to_bool(&eval(cond, input, env)) == Some(true) {
                eval(then, input, env)
            } else {
                otherwise
                    .as_ref()
                    .map(|o| eval(o, input, env))
                    .unwrap_or_default()
            }
        }
    }
}

fn extensions<'a>(input: &[Val<'a>], url: &str) -> Coll<'a> {
    let mut out = Vec::new();
    for item in input {
        if let Val::Node { v, .. } = item {
            if let Some(Value::Array(exts)) = v.get("extension") {
                out.extend(
                    exts.iter()
                        .filter(|e| e.get("url").and_then(Value::as_str) == Some(url))
                        .map(node),
                );
            }
        }
    }
    out
}
