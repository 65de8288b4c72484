//! The evaluator: walks the compiled AST over borrowed JSON.
//!
//! Collections are `Vec<Val>`; navigation borrows from the documents, so a path allocates
//! only its result vectors, and lambdas (`where`, `exists`, ...) evaluate their argument on a
//! one-item slice of the input without copying it. Errors the spec calls errors (several
//! items where one is required, mismatched operand types, unknown types) are `Err`; the
//! lenient API turns them into empty results.

use std::borrow::Cow;
use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use caregate_core::json::member;
use serde_json::Value;

use crate::decimal::Decimal;
use crate::model::{ModelInfo, TypeId, TypeKind};
use crate::parser::{compile_regex, Call, Expr, Fun, Lit, Op, TypeSpec, VarRef};
use crate::quantity::Quantity;
use crate::temporal::{Temporal, TemporalKind};
use crate::value::{infer_type, is_resource, json_equal, to_prim, Node, Prim, Val, NULL, UNKNOWN};
use crate::{Conformance, EvalError, Item, Resolver, Terminology};

pub(crate) type R<T> = Result<T, EvalError>;
pub(crate) type Coll<'a> = Vec<Val<'a>>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(EvalError::new(msg))
}

/// Everything an evaluation can see besides the focus.
pub(crate) struct Env<'a, 'e> {
    pub model: &'a ModelInfo,
    pub resource: Option<Val<'a>>,
    pub root_resource: Option<Val<'a>>,
    pub context: Option<Val<'a>>,
    pub vars: &'e HashMap<String, Vec<Val<'a>>>,
    pub resolver: Option<&'e dyn Resolver<'a>>,
    pub terminology: Option<&'e dyn Terminology>,
    pub conformance: Option<&'e dyn Conformance>,
    pub trace: Option<&'e crate::TraceFn<'a>>,
    pub strict: bool,
    pub stubs: bool,
    /// `now()` is fixed for the whole evaluation.
    pub now: Cell<Option<Temporal>>,
}

/// `$this`, `$index` and `$total` at a point of evaluation.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'s, 'a> {
    pub this: &'s [Val<'a>],
    pub index: Option<usize>,
    pub total: Option<&'s [Val<'a>]>,
}

impl<'s, 'a> Scope<'s, 'a> {
    pub fn root(this: &'s [Val<'a>]) -> Scope<'s, 'a> {
        Scope {
            this,
            index: None,
            total: None,
        }
    }
}

fn lit_val<'a>(l: &Lit) -> Val<'a> {
    match l {
        Lit::Bool(b) => Val::Bool(*b),
        Lit::Int(i) => Val::Int(*i),
        Lit::Dec(d) => Val::Dec(*d),
        Lit::Str(s) => Val::Str(s.clone()),
        Lit::Temporal(t) => Val::Temporal(*t),
        Lit::Quantity(q) => Val::Quantity(q.clone()),
    }
}

const SYSTEM_TYPES: &[&str] = &[
    "Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity",
];

/// An operand: one literal item without a vector, or a collection.
enum Small<'a> {
    One(Val<'a>),
    Many(Coll<'a>),
}

impl<'a> Small<'a> {
    fn as_slice(&self) -> &[Val<'a>] {
        match self {
            Small::One(v) => std::slice::from_ref(v),
            Small::Many(c) => c,
        }
    }
}

/// A resolved type specifier.
enum WantType {
    System(&'static str),
    Fhir(TypeId),
    /// `System.Patient`: a valid specifier naming no System type; nothing is of it.
    Nothing,
}

/// Singleton evaluation of a collection as a boolean (empty: unknown).
fn to_bool3(c: &[Val<'_>]) -> R<Option<bool>> {
    match c {
        [] => Ok(None),
        [Val::Bool(b)] => Ok(Some(*b)),
        [Val::Node(Node {
            v: Value::Bool(b), ..
        })] => Ok(Some(*b)),
        [_] => Ok(Some(true)),
        _ => err("a boolean operator needs a single item, found a collection"),
    }
}

fn bool_of(v: &Val<'_>) -> Option<bool> {
    match v {
        Val::Bool(b) => Some(*b),
        Val::Node(Node {
            v: Value::Bool(b), ..
        }) => Some(*b),
        _ => None,
    }
}

fn one_bool<'a>(b: Option<bool>) -> Coll<'a> {
    b.map(Val::Bool).into_iter().collect()
}

fn single<'v, 'a>(c: &'v [Val<'a>], what: &str) -> R<Option<&'v Val<'a>>> {
    match c {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => err(format!("{what} expects a single item, found {}", c.len())),
    }
}

fn int_of(v: &Val<'_>, model: &ModelInfo) -> Option<i64> {
    match to_prim(v, model)? {
        Prim::Int(i) => Some(i),
        Prim::Dec(d) => d.to_integer(),
        _ => None,
    }
}

fn dec_of(p: &Prim<'_>) -> Option<Decimal> {
    match p {
        Prim::Int(i) => Some(Decimal::from_i64(*i)),
        Prim::Dec(d) => Some(*d),
        _ => None,
    }
}

fn normalize_ws(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn prim_eq(a: &Prim<'_>, b: &Prim<'_>) -> Option<bool> {
    use Prim::*;
    match (a, b) {
        (Int(x), Int(y)) => Some(x == y),
        (Int(_) | Dec(_), Int(_) | Dec(_)) => Some(dec_of(a)?.eq_value(&dec_of(b)?)),
        (Str(x), Str(y)) => Some(x == y),
        (Bool(x), Bool(y)) => Some(x == y),
        (Temporal(x), Temporal(y)) => match x.compare(y) {
            Some(o) => Some(o == Ordering::Equal),
            None if !x.same_kind(y) => Some(false),
            None => None,
        },
        (Str(s), Temporal(t)) | (Temporal(t), Str(s)) => match parse_like(s, t) {
            Some(p) => prim_eq(&Temporal(p), &Temporal(*t)),
            None => Some(false),
        },
        (Quantity(x), Quantity(y)) => x.compare(y).map(|o| o == Ordering::Equal),
        _ => Some(false),
    }
}

/// A string compared with a date/time is read as one of the same kind (FHIR JSON strings
/// of unknown type, e.g. in extensions).
fn parse_like(s: &str, t: &Temporal) -> Option<Temporal> {
    match t.kind {
        TemporalKind::Time => Temporal::parse_time(s),
        _ => Temporal::parse_datetime(s).or_else(|| Temporal::parse_date(s)),
    }
}

fn prim_equiv(a: &Prim<'_>, b: &Prim<'_>) -> bool {
    use Prim::*;
    match (a, b) {
        (Int(_) | Dec(_), Int(_) | Dec(_)) => match (dec_of(a), dec_of(b)) {
            (Some(x), Some(y)) => x.equivalent(&y),
            _ => false,
        },
        (Str(x), Str(y)) => normalize_ws(x) == normalize_ws(y),
        (Bool(x), Bool(y)) => x == y,
        (Temporal(x), Temporal(y)) => x.equivalent(y),
        (Quantity(x), Quantity(y)) => x.equivalent(y),
        _ => false,
    }
}

fn prim_cmp(a: &Prim<'_>, b: &Prim<'_>) -> R<Option<Ordering>> {
    use Prim::*;
    Ok(match (a, b) {
        (Int(x), Int(y)) => Some(x.cmp(y)),
        (Int(_) | Dec(_), Int(_) | Dec(_)) => match (dec_of(a), dec_of(b)) {
            (Some(x), Some(y)) => Some(x.cmp_value(&y)),
            _ => None,
        },
        (Str(x), Str(y)) => Some(x.cmp(y)),
        (Temporal(x), Temporal(y)) => {
            if !x.same_kind(y) {
                return err("cannot compare a time with a date");
            }
            x.compare(y)
        }
        (Str(s), Temporal(t)) => match parse_like(s, t) {
            Some(p) => p.compare(t),
            None => return err("cannot compare a string with a date/time"),
        },
        (Temporal(t), Str(s)) => match parse_like(s, t) {
            Some(p) => t.compare(&p),
            None => return err("cannot compare a date/time with a string"),
        },
        (Quantity(x), Quantity(y)) => x.compare(y),
        _ => return err("cannot compare values of different types"),
    })
}

fn prim_to_val<'a>(p: Prim<'_>) -> Val<'a> {
    match p {
        Prim::Bool(b) => Val::Bool(b),
        Prim::Int(i) => Val::Int(i),
        Prim::Dec(d) => Val::Dec(d),
        Prim::Str(s) => Val::str(s),
        Prim::Temporal(t) => Val::Temporal(t),
        Prim::Quantity(q) => Val::Quantity(Arc::new(q.into_owned())),
    }
}

/// The type a Reference (or canonical/uri) points at: `Patient` for `Patient/1`,
/// `http://x/fhir/Patient/1/_history/2`, or a Reference with only `type`.
pub(crate) fn reference_target_type(v: &Value) -> Option<&str> {
    let text = match v {
        Value::String(s) => s.as_str(),
        Value::Object(m) => match member(m, "reference").and_then(Value::as_str) {
            Some(r) => r,
            None => return member(m, "type").and_then(Value::as_str),
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
    (!id.is_empty() && ty.starts_with(|c: char| c.is_ascii_uppercase())).then_some(ty)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8], url: bool) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                let c = B64[((n >> (18 - 6 * k)) & 63) as usize];
                out.push(match (url, c) {
                    (true, b'+') => '-',
                    (true, b'/') => '_',
                    _ => c as char,
                });
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    Some(out)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn json_escape(s: &str) -> String {
    let quoted = Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// Undoes JSON string escapes (`\"`, `\n`, `\u0041`); other characters pass through.
fn json_unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

impl<'a> Env<'a, '_> {
    pub fn eval(&self, e: &Expr, sc: Scope<'_, 'a>) -> R<Coll<'a>> {
        match e {
            Expr::Empty => Ok(Vec::new()),
            Expr::Lit(l) => Ok(vec![lit_val(l)]),
            Expr::This => Ok(sc.this.to_vec()),
            Expr::Index => Ok(sc
                .index
                .map(|i| Val::Int(i64::try_from(i).unwrap_or(i64::MAX)))
                .into_iter()
                .collect()),
            Expr::Total => Ok(sc.total.map(<[Val<'a>]>::to_vec).unwrap_or_default()),
            Expr::Var(v) => self.var(v),
            Expr::Ident(name, r4) => {
                let mut out = Vec::new();
                for item in sc.this {
                    self.ident(item, name, *r4, &mut out)?;
                }
                Ok(out)
            }
            Expr::Member(..) => self.path(e, sc),
            Expr::Call(c) => self.call(c, sc),
            Expr::Indexer(b, i) => {
                let base = self.eval(b, sc)?;
                let idx = self.eval(i, sc)?;
                let Some(iv) = single(&idx, "an indexer")? else {
                    return Ok(Vec::new());
                };
                let Some(n) = int_of(iv, self.model) else {
                    return err("an index must be an integer");
                };
                Ok(usize::try_from(n)
                    .ok()
                    .and_then(|n| base.into_iter().nth(n))
                    .into_iter()
                    .collect())
            }
            Expr::Neg(x) => {
                let c = self.eval(x, sc)?;
                let Some(v) = single(&c, "unary minus")? else {
                    return Ok(Vec::new());
                };
                Ok(match to_prim(v, self.model) {
                    Some(Prim::Int(i)) => i.checked_neg().map(Val::Int).into_iter().collect(),
                    Some(Prim::Dec(d)) => vec![Val::Dec(d.neg())],
                    Some(Prim::Quantity(q)) => vec![Val::Quantity(Arc::new(Quantity {
                        value: q.value.neg(),
                        unit: q.unit.clone(),
                    }))],
                    _ => return err("unary minus needs a number or a quantity"),
                })
            }
            Expr::Bin(op, l, r) => self.binary(*op, l, r, sc),
            Expr::Is(x, t) => {
                let c = self.eval(x, sc)?;
                match single(&c, "is")? {
                    None => Ok(Vec::new()),
                    Some(v) => Ok(vec![Val::Bool(self.is_type(v, t, false)?)]),
                }
            }
            Expr::As(x, t) => {
                // The operator form filters (R4 search expressions apply it to repeating
                // elements); the function form insists on a single item, as the spec says.
                let c = self.eval(x, sc)?;
                let mut out = Vec::new();
                for v in c {
                    if self.is_type(&v, t, true)? {
                        out.push(v);
                    }
                }
                Ok(out)
            }
        }
    }

    /// A chain of member steps (`a.b.c`): the base once, then each step into one of two
    /// buffers that are swapped and reused, instead of a new vector per step.
    fn path(&self, e: &Expr, sc: Scope<'_, 'a>) -> R<Coll<'a>> {
        // Up to 16 steps without allocating; a longer chain evaluates its base recursively.
        let mut names: [&str; 16] = [""; 16];
        let mut n = 0;
        let mut cur = e;
        while let Expr::Member(r, name) = cur {
            if n == names.len() {
                break;
            }
            if self.strict {
                self.check_declared_member(r, name)?;
            }
            names[n] = name;
            n += 1;
            cur = r;
        }
        let mut input = match cur {
            Expr::Ident(name, r4) => {
                let mut out = Vec::new();
                for item in sc.this {
                    self.ident(item, name, *r4, &mut out)?;
                }
                out
            }
            other => self.eval(other, sc)?,
        };
        let mut out = Vec::with_capacity(input.len());
        for name in names[..n].iter().rev() {
            out.clear();
            for item in &input {
                self.navigate(item, name, &mut out)?;
            }
            std::mem::swap(&mut input, &mut out);
            if input.is_empty() {
                break;
            }
        }
        Ok(input)
    }

    /// Like `eval`, but a literal operand does not need a vector.
    fn eval_small(&self, e: &Expr, sc: Scope<'_, 'a>) -> R<Small<'a>> {
        Ok(match e {
            Expr::Lit(l) => Small::One(lit_val(l)),
            other => Small::Many(self.eval(other, sc)?),
        })
    }

    /// Evaluates in a boolean context without building the intermediate collections of the
    /// common shapes (`a and b`, `x.exists()`, `not()`).
    pub fn eval_bool(&self, e: &Expr, sc: Scope<'_, 'a>) -> R<Option<bool>> {
        match e {
            Expr::Bin(op @ (Op::And | Op::Or | Op::Implies), l, r) => {
                self.eval_bool_bin(*op, l, r, sc)
            }
            Expr::Bin(op @ (Op::Eq | Op::Ne), l, r) => {
                let a = self.eval_small(l, sc)?;
                let b = self.eval_small(r, sc)?;
                let eq = self.coll_eq(a.as_slice(), b.as_slice());
                Ok(if *op == Op::Eq { eq } else { eq.map(|e| !e) })
            }
            Expr::Call(c) if c.args.is_empty() && matches!(c.fun, Fun::Exists | Fun::Empty) => {
                let nonempty = match &c.recv {
                    Some(r) => self.exists(r, sc)?,
                    None => !sc.this.is_empty(),
                };
                Ok(Some(if c.fun == Fun::Exists {
                    nonempty
                } else {
                    !nonempty
                }))
            }
            _ => to_bool3(&self.eval(e, sc)?),
        }
    }

    /// Whether `e` yields anything, stopping at the first item of a path where possible.
    fn exists(&self, e: &Expr, sc: Scope<'_, 'a>) -> R<bool> {
        match e {
            Expr::Ident(name, r4) if !self.strict => {
                for item in sc.this {
                    let mut out = Vec::new();
                    self.ident(item, name, *r4, &mut out)?;
                    if !out.is_empty() {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            _ => Ok(!self.eval(e, sc)?.is_empty()),
        }
    }

    /// Strict mode: `(x as Period).unit` is an error even when `x` is not a Period, because
    /// the declared type of the receiver has no `unit`.
    fn check_declared_member(&self, recv: &Expr, name: &str) -> R<()> {
        let spec = match recv {
            Expr::As(_, t) => t,
            Expr::Call(c) if matches!(c.fun, Fun::As | Fun::OfType) => match &c.ty {
                Some(t) => t,
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        if let Ok(WantType::Fhir(id)) = self.resolve_type(spec) {
            if self.model.kind(id) != Some(TypeKind::Primitive)
                && self.model.element(id, name).is_none()
            {
                return err(format!("{} has no element '{name}'", self.model.name(id)));
            }
        }
        Ok(())
    }

    /// Strict mode: order-dependent functions on `children()`/`descendants()`, whose order
    /// the spec leaves undefined, are errors.
    fn check_ordered(&self, c: &Call) -> R<()> {
        if let Some(Expr::Call(inner)) = &c.recv {
            if matches!(inner.fun, Fun::Children | Fun::Descendants) {
                return err(format!(
                    "{}() depends on order, and {}() is unordered",
                    c.fun.name(),
                    inner.fun.name()
                ));
            }
        }
        Ok(())
    }

    fn var(&self, v: &VarRef) -> R<Coll<'a>> {
        Ok(match v {
            VarRef::Resource => self.resource.clone().into_iter().collect(),
            VarRef::RootResource => self
                .root_resource
                .clone()
                .or_else(|| self.resource.clone())
                .into_iter()
                .collect(),
            VarRef::Context => self.context.clone().into_iter().collect(),
            VarRef::User(name) => match self.vars.get(&**name) {
                Some(c) => c.clone(),
                None => return err(format!("undefined variable %{name}")),
            },
        })
    }

    /// An identifier at the start of a path: a type name selecting a resource of that type,
    /// or a child element.
    fn ident(&self, item: &Val<'a>, name: &str, r4: Option<TypeId>, out: &mut Coll<'a>) -> R<()> {
        if name.starts_with(|c: char| c.is_ascii_uppercase()) {
            if let Val::Node(n) = item {
                if is_resource(n, self.model) {
                    let id = if std::ptr::eq(self.model, ModelInfo::r4()) {
                        r4
                    } else {
                        self.model.type_id(name)
                    };
                    match id {
                        Some(t) if self.model.is_subtype(n.ty, t) => out.push(item.clone()),
                        Some(_) if self.strict => {
                            return err(format!(
                                "the context is a {}, not a {name}",
                                self.model.name(n.ty)
                            ))
                        }
                        Some(_) => {}
                        None => return self.navigate(item, name, out),
                    }
                    return Ok(());
                }
            }
        }
        self.navigate(item, name, out)
    }

    fn refine(&self, v: &Value, ty: TypeId) -> TypeId {
        if ty == UNKNOWN || self.model.kind(ty) == Some(TypeKind::Resource) {
            if let Some(rt) = v.get("resourceType").and_then(Value::as_str) {
                return self.model.type_id(rt).unwrap_or(ty);
            }
        }
        ty
    }

    /// Adds a child value, flattening arrays (FHIR repeats) and pairing primitives with
    /// their `_name` extension siblings; JSON nulls without an extension are skipped.
    fn push_child(
        &self,
        out: &mut Coll<'a>,
        v: Option<&'a Value>,
        ext: Option<&'a Value>,
        ty: TypeId,
    ) {
        match v {
            Some(Value::Array(items)) => {
                let exts = ext.and_then(Value::as_array);
                for (i, it) in items.iter().enumerate() {
                    let e = exts.and_then(|a| a.get(i)).filter(|e| !e.is_null());
                    if it.is_null() && e.is_none() {
                        continue;
                    }
                    out.push(Val::Node(Node {
                        v: it,
                        ext: e,
                        ty: self.refine(it, ty),
                    }));
                }
            }
            Some(Value::Null) | None => match ext {
                Some(Value::Array(exts)) => {
                    for e in exts.iter().filter(|e| !e.is_null()) {
                        out.push(Val::Node(Node {
                            v: &NULL,
                            ext: Some(e),
                            ty,
                        }));
                    }
                }
                Some(e @ Value::Object(_)) => out.push(Val::Node(Node {
                    v: &NULL,
                    ext: Some(e),
                    ty,
                })),
                _ => {}
            },
            Some(other) => out.push(Val::Node(Node {
                v: other,
                ext: ext.filter(|e| e.is_object()),
                ty: self.refine(other, ty),
            })),
        }
    }

    /// `item.name`: the child element(s) called `name`, or the matching choice element.
    fn navigate(&self, item: &Val<'a>, name: &str, out: &mut Coll<'a>) -> R<()> {
        let n = match item {
            Val::Node(n) => n,
            Val::TypeInfo(ns, tn) => {
                match name {
                    "namespace" => out.push(Val::str(ns)),
                    "name" => out.push(Val::Str(tn.clone())),
                    _ => {}
                }
                return Ok(());
            }
            Val::Quantity(q) => {
                match name {
                    "value" => out.push(Val::Dec(q.value)),
                    "unit" | "code" => out.push(Val::Str(Arc::from(&*q.unit))),
                    _ => {}
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let Value::Object(m) = n.v else {
            if n.ty != UNKNOWN && self.strict && self.model.element(n.ty, name).is_none() {
                return err(format!("{} has no element '{name}'", self.model.name(n.ty)));
            }
            return Ok(());
        };
        if n.ty != UNKNOWN {
            match self.model.element(n.ty, name) {
                Some(el) if el.expanded => {
                    return err(format!(
                        "'{name}' is a choice element's JSON name; use the element name and ofType()"
                    ));
                }
                Some(el) if !el.choice => {
                    let ty = el.types.first().copied().unwrap_or(UNKNOWN);
                    let ext = if self.model.kind(ty) == Some(TypeKind::Primitive) {
                        member(m, &el.ext_key)
                    } else {
                        None
                    };
                    self.push_child(out, member(m, name), ext, ty);
                    return Ok(());
                }
                Some(_) => {
                    for (key, child) in m {
                        let Some(suffix) = key.strip_prefix(name) else {
                            continue;
                        };
                        if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                            continue;
                        }
                        if let Some(el) = self.model.element(n.ty, key) {
                            let ty = el.types.first().copied().unwrap_or(UNKNOWN);
                            let ext = if self.model.kind(ty) == Some(TypeKind::Primitive) {
                                member(m, &el.ext_key)
                            } else {
                                None
                            };
                            self.push_child(out, Some(child), ext, ty);
                        }
                    }
                    return Ok(());
                }
                None if self.strict => {
                    return err(format!("{} has no element '{name}'", self.model.name(n.ty)));
                }
                None => {}
            }
        }
        // Untyped (or unknown to the model): plain JSON navigation plus choice suffixes.
        if let Some(child) = member(m, name) {
            let ty = match child {
                Value::Array(a) => a.first().map_or(UNKNOWN, |c| infer_type(c, self.model)),
                c => infer_type(c, self.model),
            };
            let ty = if self.model.kind(ty) == Some(TypeKind::Resource) {
                UNKNOWN
            } else {
                ty
            };
            self.push_child(out, Some(child), None, ty);
            return Ok(());
        }
        for (key, child) in m {
            if let Some(suffix) = crate::types::choice_suffix(key, name) {
                let lower: String = suffix
                    .chars()
                    .next()
                    .map(|c| c.to_ascii_lowercase())
                    .into_iter()
                    .chain(suffix.chars().skip(1))
                    .collect();
                let ty = self
                    .model
                    .type_id(suffix)
                    .or_else(|| self.model.type_id(&lower))
                    .unwrap_or(UNKNOWN);
                self.push_child(out, Some(child), None, ty);
            }
        }
        Ok(())
    }

    fn children(&self, n: &Node<'a>, out: &mut Coll<'a>) {
        let Value::Object(m) = n.v else {
            return;
        };
        for (key, child) in m {
            if key == "resourceType" {
                continue;
            }
            if let Some(plain) = key.strip_prefix('_') {
                // Primitives present only through their extension.
                if !m.contains_key(plain) {
                    let ty = self.elem_type(n.ty, plain);
                    self.push_child(out, None, Some(child), ty);
                }
                continue;
            }
            let ty = self.elem_type(n.ty, key);
            let ext = if self.model.kind(ty) == Some(TypeKind::Primitive) {
                m.get(&format!("_{key}"))
            } else {
                None
            };
            let ty = if ty == UNKNOWN {
                match child {
                    Value::Array(a) => a.first().map_or(UNKNOWN, |c| infer_type(c, self.model)),
                    c => infer_type(c, self.model),
                }
            } else {
                ty
            };
            self.push_child(out, Some(child), ext, ty);
        }
    }

    fn elem_type(&self, ty: TypeId, key: &str) -> TypeId {
        if ty == UNKNOWN {
            return UNKNOWN;
        }
        self.model
            .element(ty, key)
            .and_then(|e| e.types.first().copied())
            .unwrap_or(UNKNOWN)
    }

    fn resolve_type(&self, t: &TypeSpec) -> R<WantType> {
        let sys = |name: &str| SYSTEM_TYPES.iter().find(|s| **s == name).copied();
        match t.namespace.as_deref() {
            Some("System") => Ok(sys(&t.name).map_or(WantType::Nothing, WantType::System)),
            Some("FHIR") => match self.model.type_id(&t.name) {
                Some(id) => Ok(WantType::Fhir(id)),
                None => err(format!("unknown type FHIR.{}", t.name)),
            },
            Some(ns) => err(format!("unknown namespace {ns}")),
            None => match self.model.type_id(&t.name) {
                Some(id) => Ok(WantType::Fhir(id)),
                None => match sys(&t.name) {
                    Some(s) => Ok(WantType::System(s)),
                    None => err(format!("unknown type {}", t.name)),
                },
            },
        }
    }

    fn system_type(v: &Val<'_>) -> Option<&'static str> {
        Some(match v {
            Val::Bool(_) => "Boolean",
            Val::Int(_) => "Integer",
            Val::Dec(_) => "Decimal",
            Val::Str(_) => "String",
            Val::Temporal(t) => match t.kind {
                TemporalKind::Date => "Date",
                TemporalKind::DateTime => "DateTime",
                TemporalKind::Time => "Time",
            },
            Val::Quantity(_) => "Quantity",
            _ => return None,
        })
    }

    /// `is` (and, with `exact_primitive`, `as`/`ofType`, which do not treat a `code` as a
    /// `string` — HL7's suite expects `gender.as(string)` to be empty).
    fn is_type(&self, v: &Val<'a>, t: &TypeSpec, exact_primitive: bool) -> R<bool> {
        let want = self.resolve_type(t)?;
        Ok(match (v, want) {
            (Val::Node(n), WantType::Fhir(id)) => {
                let ty = if n.ty == UNKNOWN {
                    infer_type(n.v, self.model)
                } else {
                    n.ty
                };
                if ty == UNKNOWN {
                    crate::types::shape_matches(n.v, self.model.name(id))
                } else if exact_primitive && self.model.kind(ty) == Some(TypeKind::Primitive) {
                    ty == id
                } else {
                    self.model.is_subtype(ty, id)
                }
            }
            (Val::Stub(ty), WantType::Fhir(id)) => self.model.is_subtype(*ty, id),
            (Val::Node(_) | Val::Stub(_), WantType::System(_)) => false,
            (other, WantType::System(s)) => Env::system_type(other) == Some(s),
            (_, WantType::Fhir(_) | WantType::Nothing) => false,
        })
    }

    fn type_info(&self, v: &Val<'a>) -> Option<Val<'a>> {
        match v {
            Val::Node(n) => {
                let ty = if n.ty == UNKNOWN {
                    infer_type(n.v, self.model)
                } else {
                    n.ty
                };
                (ty != UNKNOWN).then(|| Val::TypeInfo("FHIR", Arc::from(self.model.name(ty))))
            }
            Val::Stub(ty) => Some(Val::TypeInfo("FHIR", Arc::from(self.model.name(*ty)))),
            other => Env::system_type(other).map(|s| Val::TypeInfo("System", Arc::from(s))),
        }
    }

    // ---- equality -------------------------------------------------------------------

    fn is_complex(&self, v: &Val<'_>) -> bool {
        matches!(v, Val::Node(n) if n.v.is_object()
            && !self.model.get(n.ty).is_some_and(|t| t.quantity))
    }

    fn item_eq(&self, a: &Val<'a>, b: &Val<'a>) -> Option<bool> {
        if let (Val::Node(x), Val::Node(y)) = (a, b) {
            if std::ptr::eq(x.v, y.v) && !x.v.is_null() {
                return Some(true);
            }
        }
        if self.is_complex(a) || self.is_complex(b) {
            return Some(match (a, b) {
                (Val::Node(x), Val::Node(y)) => json_equal(x.v, y.v),
                _ => false,
            });
        }
        match (a, b) {
            (Val::TypeInfo(n1, t1), Val::TypeInfo(n2, t2)) => return Some(n1 == n2 && t1 == t2),
            (Val::Stub(x), Val::Stub(y)) => return Some(x == y),
            _ => {}
        }
        match (to_prim(a, self.model), to_prim(b, self.model)) {
            (Some(x), Some(y)) => prim_eq(&x, &y),
            _ => Some(false),
        }
    }

    fn item_equiv(&self, a: &Val<'a>, b: &Val<'a>) -> bool {
        if self.is_complex(a) || self.is_complex(b) {
            return match (a, b) {
                (Val::Node(x), Val::Node(y)) => json_equal(x.v, y.v),
                _ => false,
            };
        }
        match (to_prim(a, self.model), to_prim(b, self.model)) {
            (Some(x), Some(y)) => prim_equiv(&x, &y),
            _ => false,
        }
    }

    fn coll_eq(&self, l: &[Val<'a>], r: &[Val<'a>]) -> Option<bool> {
        if l.is_empty() || r.is_empty() {
            return None;
        }
        if l.len() != r.len() {
            return Some(false);
        }
        let mut all = true;
        for (a, b) in l.iter().zip(r) {
            match self.item_eq(a, b) {
                Some(true) => {}
                Some(false) => all = false,
                None => return None,
            }
        }
        Some(all)
    }

    fn coll_equiv(&self, l: &[Val<'a>], r: &[Val<'a>]) -> bool {
        if l.len() != r.len() {
            return false;
        }
        let mut used = vec![false; r.len()];
        for a in l {
            let hit = r
                .iter()
                .enumerate()
                .find(|(i, b)| !used[*i] && self.item_equiv(a, b));
            match hit {
                Some((i, _)) => used[i] = true,
                None => return false,
            }
        }
        true
    }

    fn contains_item(&self, hay: &[Val<'a>], x: &Val<'a>) -> bool {
        hay.iter().any(|h| self.item_eq(h, x) == Some(true))
    }

    fn push_distinct(&self, out: &mut Coll<'a>, v: Val<'a>) {
        if !self.contains_item(out, &v) {
            out.push(v);
        }
    }

    // ---- operators ------------------------------------------------------------------

    fn binary(&self, op: Op, l: &Expr, r: &Expr, sc: Scope<'_, 'a>) -> R<Coll<'a>> {
        match op {
            Op::And | Op::Or | Op::Implies => {
                return Ok(one_bool(self.eval_bool_bin(op, l, r, sc)?));
            }
            _ => {}
        }
        if op == Op::Union {
            let mut a = self.eval(l, sc)?;
            let b = self.eval(r, sc)?;
            let mut out = Vec::with_capacity(a.len() + b.len());
            for v in a.drain(..).chain(b) {
                self.push_distinct(&mut out, v);
            }
            return Ok(out);
        }
        let a = self.eval_small(l, sc)?;
        let b = self.eval_small(r, sc)?;
        let (a, b) = (a.as_slice(), b.as_slice());
        match op {
            Op::Xor => Ok(one_bool(match (to_bool3(a)?, to_bool3(b)?) {
                (Some(x), Some(y)) => Some(x != y),
                _ => None,
            })),
            Op::Eq => Ok(one_bool(self.coll_eq(a, b))),
            Op::Ne => Ok(one_bool(self.coll_eq(a, b).map(|e| !e))),
            Op::Equiv => Ok(vec![Val::Bool(self.coll_equiv(a, b))]),
            Op::NotEquiv => Ok(vec![Val::Bool(!self.coll_equiv(a, b))]),
            Op::Lt | Op::Gt | Op::Le | Op::Ge => {
                let (Some(x), Some(y)) = (single(a, "a comparison")?, single(b, "a comparison")?)
                else {
                    return Ok(Vec::new());
                };
                let (Some(p), Some(q)) = (to_prim(x, self.model), to_prim(y, self.model)) else {
                    return err("comparison needs primitive values");
                };
                let ord = prim_cmp(&p, &q)?;
                Ok(one_bool(ord.map(|o| match op {
                    Op::Lt => o.is_lt(),
                    Op::Gt => o.is_gt(),
                    Op::Le => o.is_le(),
                    _ => o.is_ge(),
                })))
            }
            Op::In | Op::Contains => {
                let (needle, hay) = if op == Op::In { (a, b) } else { (b, a) };
                match single(needle, "in/contains")? {
                    None => Ok(Vec::new()),
                    Some(x) => Ok(vec![Val::Bool(self.contains_item(hay, x))]),
                }
            }
            Op::Concat => {
                let s = |c: &[Val<'a>]| -> R<String> {
                    Ok(match single(c, "&")? {
                        None => String::new(),
                        Some(v) => match to_prim(v, self.model) {
                            Some(Prim::Str(s)) => s.to_string(),
                            _ => return err("& needs strings"),
                        },
                    })
                };
                Ok(vec![Val::Str(Arc::from(s(a)? + &s(b)?))])
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::IntDiv | Op::Mod => {
                let (Some(x), Some(y)) = (single(a, "arithmetic")?, single(b, "arithmetic")?)
                else {
                    return Ok(Vec::new());
                };
                let (Some(p), Some(q)) = (to_prim(x, self.model), to_prim(y, self.model)) else {
                    return err("arithmetic needs primitive values");
                };
                self.arith(op, p, q)
            }
            Op::And | Op::Or | Op::Implies | Op::Union => Ok(Vec::new()),
        }
    }

    fn eval_bool_bin(&self, op: Op, l: &Expr, r: &Expr, sc: Scope<'_, 'a>) -> R<Option<bool>> {
        let a = self.eval_bool(l, sc)?;
        match (op, a) {
            (Op::And, Some(false)) => return Ok(Some(false)),
            (Op::Or, Some(true)) => return Ok(Some(true)),
            (Op::Implies, Some(false)) => return Ok(Some(true)),
            _ => {}
        }
        let b = self.eval_bool(r, sc)?;
        Ok(match op {
            Op::And => match (a, b) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Op::Or => match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            _ => match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(true), Some(false)) => Some(false),
                _ => None,
            },
        })
    }

    fn arith(&self, op: Op, p: Prim<'_>, q: Prim<'_>) -> R<Coll<'a>> {
        use Prim::*;
        let one = |v: Option<Val<'a>>| -> R<Coll<'a>> { Ok(v.into_iter().collect()) };
        match (op, &p, &q) {
            (Op::Add, Str(x), Str(y)) => one(Some(Val::Str(Arc::from(format!("{x}{y}").as_str())))),
            (Op::Add | Op::Sub | Op::Mul | Op::IntDiv | Op::Mod, Int(x), Int(y)) => one(match op {
                Op::Add => x.checked_add(*y).map(Val::Int),
                Op::Sub => x.checked_sub(*y).map(Val::Int),
                Op::Mul => x.checked_mul(*y).map(Val::Int),
                Op::IntDiv => x.checked_div(*y).map(Val::Int),
                _ => x.checked_rem(*y).map(Val::Int),
            }),
            (_, Int(_) | Dec(_), Int(_) | Dec(_)) => {
                let (Some(x), Some(y)) = (dec_of(&p), dec_of(&q)) else {
                    return Ok(Vec::new());
                };
                one(match op {
                    Op::Add => x.checked_add(&y),
                    Op::Sub => x.checked_sub(&y),
                    Op::Mul => x.checked_mul(&y),
                    Op::Div => x.checked_div(&y),
                    Op::IntDiv => {
                        return one(x.div_trunc(&y).and_then(|d| d.to_integer()).map(Val::Int))
                    }
                    _ => x.rem(&y),
                }
                .map(Val::Dec))
            }
            (Op::Add | Op::Sub, Temporal(t), Quantity(qty)) => {
                let unit = qty.calendar_unit().ok_or_else(|| {
                    EvalError::new(format!("cannot add '{}' to a date/time", qty.unit))
                })?;
                let Some(n) = qty.value.trunc() else {
                    return Ok(Vec::new());
                };
                let n = if op == Op::Sub { -n } else { n };
                one(t.add(n, unit).map(Val::Temporal))
            }
            (Op::Add | Op::Sub, Quantity(x), Quantity(y)) => {
                one(x.add(y, op == Op::Sub).map(|q| Val::Quantity(Arc::new(q))))
            }
            (Op::Mul | Op::Div, Quantity(_) | Int(_) | Dec(_), Quantity(_) | Int(_) | Dec(_)) => {
                let as_q = |p: &Prim<'_>| match p {
                    Quantity(q) => Some(q.clone().into_owned()),
                    other => dec_of(other).map(|d| crate::quantity::Quantity::new(d, "1")),
                };
                let (Some(x), Some(y)) = (as_q(&p), as_q(&q)) else {
                    return Ok(Vec::new());
                };
                let r = if op == Op::Mul { x.mul(&y) } else { x.div(&y) };
                one(r.map(|q| Val::Quantity(Arc::new(q))))
            }
            _ => err(format!(
                "operator {op:?} cannot combine these operand types"
            )),
        }
    }

    // ---- functions ------------------------------------------------------------------

    fn lambda(&self, e: &Expr, item: &Val<'a>, i: usize, total: Option<&[Val<'a>]>) -> R<Coll<'a>> {
        self.eval(
            e,
            Scope {
                this: std::slice::from_ref(item),
                index: Some(i),
                total,
            },
        )
    }

    fn lambda_bool(&self, e: &Expr, item: &Val<'a>, i: usize) -> R<Option<bool>> {
        self.eval_bool(
            e,
            Scope {
                this: std::slice::from_ref(item),
                index: Some(i),
                total: None,
            },
        )
    }

    fn arg(&self, c: &Call, i: usize, sc: Scope<'_, 'a>) -> R<Coll<'a>> {
        match c.args.get(i) {
            Some(a) => self.eval(a, sc),
            None => Ok(Vec::new()),
        }
    }

    /// A single string argument; `None` when empty.
    fn str_arg(&self, c: &Call, i: usize, sc: Scope<'_, 'a>) -> R<Option<String>> {
        let v = self.arg(c, i, sc)?;
        Ok(match single(&v, c.fun.name())? {
            None => None,
            Some(x) => match to_prim(x, self.model) {
                Some(Prim::Str(s)) => Some(s.to_string()),
                _ => return err(format!("{}() expects a string argument", c.fun.name())),
            },
        })
    }

    fn int_arg(&self, c: &Call, i: usize, sc: Scope<'_, 'a>) -> R<Option<i64>> {
        let v = self.arg(c, i, sc)?;
        Ok(match single(&v, c.fun.name())? {
            None => None,
            Some(x) => match int_of(x, self.model) {
                Some(n) => Some(n),
                None => return err(format!("{}() expects an integer argument", c.fun.name())),
            },
        })
    }

    /// The single string input of a string function; `None` for empty input.
    fn str_input<'v>(&self, input: &'v [Val<'a>], f: Fun) -> R<Option<Cow<'v, str>>> {
        match single(input, f.name())? {
            None => Ok(None),
            Some(Val::Str(s)) => Ok(Some(Cow::Borrowed(&**s))),
            Some(Val::Node(Node {
                v: Value::String(s),
                ..
            })) => Ok(Some(Cow::Borrowed(s.as_str()))),
            Some(Val::Node(Node { v: Value::Null, .. })) => Ok(None),
            Some(_) => err(format!("{}() expects a string input", f.name())),
        }
    }

    fn call(&self, c: &Call, sc: Scope<'_, 'a>) -> R<Coll<'a>> {
        if self.strict
            && matches!(
                c.fun,
                Fun::Skip | Fun::Take | Fun::First | Fun::Last | Fun::Tail
            )
        {
            self.check_ordered(c)?;
        }
        let owned;
        let input: &[Val<'a>] = match &c.recv {
            Some(r) => {
                owned = self.eval(r, sc)?;
                &owned
            }
            None => sc.this,
        };
        self.call_with(c, input, sc)
            .map_err(|e| e.at(c.pos, c.fun.name()))
    }

    fn call_with(&self, c: &Call, input: &[Val<'a>], sc: Scope<'_, 'a>) -> R<Coll<'a>> {
        let m = self.model;
        let b = |x: bool| -> R<Coll<'a>> { Ok(vec![Val::Bool(x)]) };
        match c.fun {
            Fun::Empty => b(input.is_empty()),
            Fun::Exists => match c.args.first() {
                None => b(!input.is_empty()),
                Some(crit) => {
                    for (i, item) in input.iter().enumerate() {
                        if self.lambda_bool(crit, item, i)? == Some(true) {
                            return b(true);
                        }
                    }
                    b(false)
                }
            },
            Fun::All => {
                for (i, item) in input.iter().enumerate() {
                    if self.lambda_bool(&c.args[0], item, i)? != Some(true) {
                        return b(false);
                    }
                }
                b(true)
            }
            Fun::AllTrue | Fun::AnyTrue | Fun::AllFalse | Fun::AnyFalse => {
                let mut bools = Vec::with_capacity(input.len());
                for v in input {
                    match bool_of(v) {
                        Some(x) => bools.push(x),
                        None => return err(format!("{}() needs booleans", c.fun.name())),
                    }
                }
                b(match c.fun {
                    Fun::AllTrue => bools.iter().all(|x| *x),
                    Fun::AnyTrue => bools.iter().any(|x| *x),
                    Fun::AllFalse => bools.iter().all(|x| !*x),
                    _ => bools.iter().any(|x| !*x),
                })
            }
            Fun::SubsetOf | Fun::SupersetOf => {
                let other = self.arg(c, 0, sc)?;
                let (small, big) = if c.fun == Fun::SubsetOf {
                    (input, other.as_slice())
                } else {
                    (other.as_slice(), input)
                };
                b(small.iter().all(|x| self.contains_item(big, x)))
            }
            Fun::Count => Ok(vec![Val::Int(
                i64::try_from(input.len()).unwrap_or(i64::MAX),
            )]),
            Fun::Distinct => {
                let mut out = Vec::with_capacity(input.len());
                for v in input {
                    self.push_distinct(&mut out, v.clone());
                }
                Ok(out)
            }
            Fun::IsDistinct => {
                let mut out = Vec::with_capacity(input.len());
                for v in input {
                    self.push_distinct(&mut out, v.clone());
                }
                b(out.len() == input.len())
            }
            Fun::Where => {
                let mut out = Vec::new();
                for (i, item) in input.iter().enumerate() {
                    if self.lambda_bool(&c.args[0], item, i)? == Some(true) {
                        out.push(item.clone());
                    }
                }
                Ok(out)
            }
            Fun::Select => {
                let mut out = Vec::new();
                for (i, item) in input.iter().enumerate() {
                    out.extend(self.lambda(&c.args[0], item, i, None)?);
                }
                Ok(out)
            }
            Fun::Repeat => {
                let mut out: Coll<'a> = Vec::new();
                let mut frontier: Coll<'a> = input.to_vec();
                let mut rounds = 0;
                while !frontier.is_empty() {
                    rounds += 1;
                    if rounds > 10_000 || out.len() > 1_000_000 {
                        return err("repeat() does not terminate");
                    }
                    let mut next = Vec::new();
                    for (i, item) in frontier.iter().enumerate() {
                        for v in self.lambda(&c.args[0], item, i, None)? {
                            if !self.contains_item(&out, &v) {
                                out.push(v.clone());
                                next.push(v);
                            }
                        }
                    }
                    frontier = next;
                }
                Ok(out)
            }
            Fun::OfType => {
                let Some(t) = &c.ty else {
                    return Ok(Vec::new());
                };
                let mut out = Vec::new();
                for v in input {
                    if self.is_type(v, t, true)? {
                        out.push(v.clone());
                    }
                }
                Ok(out)
            }
            Fun::Is => {
                let Some(t) = &c.ty else {
                    return Ok(Vec::new());
                };
                match single(input, "is()")? {
                    None => Ok(Vec::new()),
                    Some(v) => b(self.is_type(v, t, false)?),
                }
            }
            Fun::As => {
                let Some(t) = &c.ty else {
                    return Ok(Vec::new());
                };
                match single(input, "as()")? {
                    None => {
                        self.resolve_type(t)?;
                        Ok(Vec::new())
                    }
                    Some(v) => Ok(if self.is_type(v, t, true)? {
                        vec![v.clone()]
                    } else {
                        Vec::new()
                    }),
                }
            }
            Fun::Type => Ok(input.iter().filter_map(|v| self.type_info(v)).collect()),
            Fun::Single => match input {
                [] => Ok(Vec::new()),
                [one] => Ok(vec![one.clone()]),
                _ => err("single() found several items"),
            },
            Fun::First => Ok(input.first().cloned().into_iter().collect()),
            Fun::Last => Ok(input.last().cloned().into_iter().collect()),
            Fun::Tail => Ok(input.iter().skip(1).cloned().collect()),
            Fun::Skip | Fun::Take => {
                let Some(n) = self.int_arg(c, 0, sc)? else {
                    return Ok(Vec::new());
                };
                let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
                Ok(if c.fun == Fun::Skip {
                    input.iter().skip(n).cloned().collect()
                } else {
                    input.iter().take(n).cloned().collect()
                })
            }
            Fun::Intersect => {
                let other = self.arg(c, 0, sc)?;
                let mut out = Vec::new();
                for v in input {
                    if self.contains_item(&other, v) {
                        self.push_distinct(&mut out, v.clone());
                    }
                }
                Ok(out)
            }
            Fun::Exclude => {
                let other = self.arg(c, 0, sc)?;
                Ok(input
                    .iter()
                    .filter(|v| !self.contains_item(&other, v))
                    .cloned()
                    .collect())
            }
            Fun::Union => {
                let other = self.arg(c, 0, sc)?;
                let mut out = Vec::with_capacity(input.len() + other.len());
                for v in input.iter().cloned().chain(other) {
                    self.push_distinct(&mut out, v);
                }
                Ok(out)
            }
            Fun::Combine => {
                let mut out = input.to_vec();
                out.extend(self.arg(c, 0, sc)?);
                Ok(out)
            }
            Fun::Iif => {
                if input.len() > 1 {
                    return err("iif() applies to at most one item");
                }
                let inner = if c.recv.is_some() {
                    Scope {
                        this: input,
                        index: None,
                        total: None,
                    }
                } else {
                    sc
                };
                let cond = self.eval(&c.args[0], inner)?;
                let truth = match cond.as_slice() {
                    [] => false,
                    [v] => match bool_of(v) {
                        Some(x) => x,
                        None => return err("iif() criterion must be a boolean"),
                    },
                    _ => return err("iif() criterion must be a single boolean"),
                };
                if truth {
                    self.eval(&c.args[1], inner)
                } else {
                    match c.args.get(2) {
                        Some(e) => self.eval(e, inner),
                        None => Ok(Vec::new()),
                    }
                }
            }
            Fun::Not => Ok(one_bool(to_bool3(input)?.map(|x| !x))),
            Fun::ToBoolean
            | Fun::ToInteger
            | Fun::ToDecimal
            | Fun::ToString
            | Fun::ToDate
            | Fun::ToDateTime
            | Fun::ToTime
            | Fun::ToQuantity => {
                let Some(v) = single(input, c.fun.name())? else {
                    return Ok(Vec::new());
                };
                let unit = if c.fun == Fun::ToQuantity {
                    self.str_arg(c, 0, sc)?
                } else {
                    None
                };
                Ok(self
                    .convert(v, c.fun, unit.as_deref())
                    .into_iter()
                    .collect())
            }
            Fun::ConvertsToBoolean
            | Fun::ConvertsToInteger
            | Fun::ConvertsToDecimal
            | Fun::ConvertsToString
            | Fun::ConvertsToDate
            | Fun::ConvertsToDateTime
            | Fun::ConvertsToTime
            | Fun::ConvertsToQuantity => {
                let Some(v) = single(input, c.fun.name())? else {
                    return Ok(Vec::new());
                };
                let target = match c.fun {
                    Fun::ConvertsToBoolean => Fun::ToBoolean,
                    Fun::ConvertsToInteger => Fun::ToInteger,
                    Fun::ConvertsToDecimal => Fun::ToDecimal,
                    Fun::ConvertsToString => Fun::ToString,
                    Fun::ConvertsToDate => Fun::ToDate,
                    Fun::ConvertsToDateTime => Fun::ToDateTime,
                    Fun::ConvertsToTime => Fun::ToTime,
                    _ => Fun::ToQuantity,
                };
                let unit = if target == Fun::ToQuantity {
                    self.str_arg(c, 0, sc)?
                } else {
                    None
                };
                b(self.convert(v, target, unit.as_deref()).is_some())
            }
            Fun::IndexOf | Fun::LastIndexOf => {
                let Some(s) = self.str_input(input, c.fun)? else {
                    return Ok(Vec::new());
                };
                let Some(p) = self.str_arg(c, 0, sc)? else {
                    return Ok(Vec::new());
                };
                let found = if c.fun == Fun::IndexOf {
                    s.find(p.as_str())
                } else {
                    s.rfind(p.as_str())
                };
                let idx = found.map_or(-1, |byte| s[..byte].chars().count() as i64);
                Ok(vec![Val::Int(idx)])
            }
            Fun::Substring => {
                let Some(s) = self.str_input(input, c.fun)? else {
                    return Ok(Vec::new());
                };
                let Some(start) = self.int_arg(c, 0, sc)? else {
                    return Ok(Vec::new());
                };
                let len = self.int_arg(c, 1, sc)?;
                let n = s.chars().count() as i64;
                if start < 0 || start >= n {
                    return Ok(Vec::new());
                }
                let take = match len {
                    Some(l) if l <= 0 => 0,
                    Some(l) => l,
                    None => n,
                };
                let out: String = s
                    .chars()
                    .skip(usize::try_from(start).unwrap_or(0))
                    .take(usize::try_from(take).unwrap_or(usize::MAX))
                    .collect();
                Ok(vec![Val::Str(Arc::from(out))])
            }
            Fun::StartsWith | Fun::EndsWith | Fun::Contains => {
                let Some(s) = self.str_input(input, c.fun)? else {
                    return Ok(Vec::new());
                };
                let Some(p) = self.str_arg(c, 0, sc)? else {
                    return Ok(Vec::new());
                };
                b(match c.fun {
                    Fun::StartsWith => s.starts_with(p.as_str()),
                    Fun::EndsWith => s.ends_with(p.as_str()),
                    _ => s.contains(p.as_str()),
                })
            }
            Fun::Upper | Fun::Lower | Fun::Trim | Fun::ToChars | Fun::Length => {
                let Some(s) = self.str_input(input, c.fun)? else {
                    return Ok(Vec::new());
                };
                Ok(match c.fun {
                    Fun::Upper => vec![Val::Str(Arc::from(s.to_uppercase()))],
                    Fun::Lower => vec![Val::Str(Arc::from(s.to_lowercase()))],
                    Fun::Trim => vec![Val::str(s.trim())],
                    Fun::Length => vec![Val::Int(s.chars().count() as i64)],
                    _ => s
                        .chars()
                        .map(|ch| Val::Str(Arc::from(ch.to_string())))
                        .collect(),
                })
            }
            Fun::Replace => {
                let Some(s) = self.str_input(input, c.fun)? else {
                    return Ok(Vec::new());
                };
                let (Some(p), Some(r)) = (self.str_arg(c, 0, sc)?, self.str_arg(c, 1, sc)?) else {
                    return Ok(Vec::new());
                };
                Ok(vec![Val::Str(Arc::from(s.replace(p.as_str(), &r)))])
            }
            Fun::Matches | Fun::MatchesFull | Fun::ReplaceMatches => {
                let Some(s) = self.str_input(input, c.fun)? else {
                    return Ok(Vec::new());
                };
                let Some(p) = self.str_arg(c, 0, sc)? else {
                    return Ok(Vec::new());
                };
                let re = match &c.regex {
                    Some(re) => re.clone(),
                    None => match compile_regex(&p, c.fun == Fun::MatchesFull) {
                        Some(re) => Arc::new(re),
                        None => return err(format!("invalid regular expression '{p}'")),
                    },
                };
                if c.fun == Fun::ReplaceMatches {
                    let Some(r) = self.str_arg(c, 1, sc)? else {
                        return Ok(Vec::new());
                    };
                    if p.is_empty() {
                        return Ok(vec![Val::str(&s)]);
                    }
                    return Ok(vec![Val::Str(Arc::from(
                        re.replace_all(&s, r.as_str()).as_ref(),
                    ))]);
                }
                b(re.is_match(&s))
            }
            Fun::Split => {
                let Some(s) = self.str_input(input, c.fun)? else {
                    return Ok(Vec::new());
                };
                let Some(sep) = self.str_arg(c, 0, sc)? else {
                    return Ok(Vec::new());
                };
                if sep.is_empty() {
                    return Ok(vec![Val::str(&s)]);
                }
                Ok(s.split(sep.as_str()).map(Val::str).collect())
            }
            Fun::Join => {
                let sep = self.str_arg(c, 0, sc)?.unwrap_or_default();
                let mut parts = Vec::with_capacity(input.len());
                for v in input {
                    match to_prim(v, m) {
                        Some(Prim::Str(s)) => parts.push(s.to_string()),
                        _ => return err("join() needs strings"),
                    }
                }
                Ok(vec![Val::Str(Arc::from(parts.join(&sep)))])
            }
            Fun::Encode | Fun::Decode | Fun::Escape | Fun::Unescape => {
                let Some(s) = self.str_input(input, c.fun)? else {
                    return Ok(Vec::new());
                };
                let Some(fmt) = self.str_arg(c, 0, sc)? else {
                    return Ok(Vec::new());
                };
                let out = match (c.fun, fmt.as_str()) {
                    (Fun::Encode, "base64") => Some(base64_encode(s.as_bytes(), false)),
                    (Fun::Encode, "urlbase64") => Some(base64_encode(s.as_bytes(), true)),
                    (Fun::Encode, "hex") => {
                        Some(s.bytes().map(|x| format!("{x:02x}")).collect::<String>())
                    }
                    (Fun::Decode, "base64" | "urlbase64") => {
                        base64_decode(&s).and_then(|v| String::from_utf8(v).ok())
                    }
                    (Fun::Decode, "hex") => hex_decode(&s).and_then(|v| String::from_utf8(v).ok()),
                    (Fun::Escape, "html") => Some(html_escape(&s)),
                    (Fun::Escape, "json") => Some(json_escape(&s)),
                    (Fun::Unescape, "html") => Some(html_unescape(&s)),
                    (Fun::Unescape, "json") => json_unescape(&s),
                    _ => None,
                };
                Ok(out.map(|o| Val::Str(Arc::from(o))).into_iter().collect())
            }
            Fun::Abs
            | Fun::Ceiling
            | Fun::Floor
            | Fun::Truncate
            | Fun::Exp
            | Fun::Ln
            | Fun::Sqrt
            | Fun::Round
            | Fun::Log
            | Fun::Power => self.math(c, input, sc),
            Fun::Children => {
                let mut out = Vec::new();
                for v in input {
                    if let Val::Node(n) = v {
                        self.children(n, &mut out);
                    }
                }
                Ok(out)
            }
            Fun::Descendants => {
                let mut out = Vec::new();
                let mut frontier: Vec<Node<'a>> = input
                    .iter()
                    .filter_map(|v| match v {
                        Val::Node(n) => Some(*n),
                        _ => None,
                    })
                    .collect();
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for n in &frontier {
                        self.children(n, &mut next);
                    }
                    frontier = next
                        .iter()
                        .filter_map(|v| match v {
                            Val::Node(n) if n.v.is_object() => Some(*n),
                            _ => None,
                        })
                        .collect();
                    out.extend(next);
                }
                Ok(out)
            }
            Fun::Trace => {
                let name = self.str_arg(c, 0, sc)?.unwrap_or_default();
                if let Some(t) = self.trace {
                    let shown = match c.args.get(1) {
                        Some(p) => {
                            let mut o = Vec::new();
                            for (i, item) in input.iter().enumerate() {
                                o.extend(self.lambda(p, item, i, None)?);
                            }
                            o
                        }
                        None => input.to_vec(),
                    };
                    let items: Vec<Item<'a>> =
                        shown.iter().filter_map(|v| crate::to_item(v, m)).collect();
                    t(&name, &items);
                }
                Ok(input.to_vec())
            }
            Fun::Now | Fun::Today | Fun::TimeOfDay => {
                let now = match self.now.get() {
                    Some(n) => n,
                    None => {
                        let n = Temporal::now();
                        self.now.set(Some(n));
                        n
                    }
                };
                let v = match c.fun {
                    Fun::Now => now,
                    Fun::Today => {
                        let mut t = Temporal::today();
                        t.year = now.year;
                        t.month = now.month;
                        t.day = now.day;
                        t
                    }
                    _ => {
                        let mut t = now;
                        t.kind = TemporalKind::Time;
                        t.tz = None;
                        t.zulu = false;
                        t
                    }
                };
                Ok(vec![Val::Temporal(v)])
            }
            Fun::Aggregate => {
                let mut total = match c.args.get(1) {
                    Some(init) => self.eval(init, sc)?,
                    None => Vec::new(),
                };
                for (i, item) in input.iter().enumerate() {
                    total = self.lambda(&c.args[0], item, i, Some(&total))?;
                }
                Ok(total)
            }
            Fun::Sort => self.sort(c, input),
            Fun::Extension | Fun::HasExtension => {
                let Some(url) = self.str_arg(c, 0, sc)? else {
                    return Ok(Vec::new());
                };
                let ext_ty = m.type_id("Extension").unwrap_or(UNKNOWN);
                let mut out = Vec::new();
                for v in input {
                    let Val::Node(n) = v else { continue };
                    let holder = if n.v.is_object() { Some(n.v) } else { n.ext };
                    if let Some(Value::Array(exts)) = holder.and_then(|h| h.get("extension")) {
                        for e in exts {
                            if e.get("url").and_then(Value::as_str) == Some(url.as_str()) {
                                out.push(Val::node(e, ext_ty));
                            }
                        }
                    }
                }
                if c.fun == Fun::HasExtension {
                    return b(!out.is_empty());
                }
                Ok(out)
            }
            Fun::HasValue => b(match input {
                [Val::Node(n)] => !n.v.is_null() && !n.v.is_object() && !n.v.is_array(),
                [Val::Stub(_) | Val::TypeInfo(..)] => false,
                [_] => true,
                _ => false,
            }),
            Fun::GetValue => Ok(match input {
                [v @ Val::Node(n)] if !n.v.is_object() && !n.v.is_null() => {
                    to_prim(v, m).map(prim_to_val).into_iter().collect()
                }
                _ => Vec::new(),
            }),
            Fun::Resolve => {
                let mut out = Vec::new();
                for v in input {
                    self.resolve(v, &mut out);
                }
                Ok(out)
            }
            Fun::MemberOf => {
                let Some(vs) = self.str_arg(c, 0, sc)? else {
                    return Ok(Vec::new());
                };
                let Some(term) = self.terminology else {
                    return Ok(Vec::new());
                };
                let Some(v) = single(input, "memberOf()")? else {
                    return Ok(Vec::new());
                };
                let answer = match v {
                    Val::Node(n) if !n.v.is_null() => term.member_of(n.v, &vs),
                    other => match to_prim(other, m) {
                        Some(Prim::Str(s)) => term.member_of(&Value::String(s.to_string()), &vs),
                        _ => None,
                    },
                };
                Ok(one_bool(answer))
            }
            Fun::Subsumes | Fun::SubsumedBy => Ok(Vec::new()),
            Fun::ConformsTo => {
                let Some(url) = self.str_arg(c, 0, sc)? else {
                    return Ok(Vec::new());
                };
                let mut out = Vec::new();
                for v in input {
                    let Val::Node(n) = v else { continue };
                    let answer = match self.conformance.and_then(|cf| cf.conforms_to(n.v, &url)) {
                        Some(a) => a,
                        None => {
                            let Some(name) =
                                url.strip_prefix("http://hl7.org/fhir/StructureDefinition/")
                            else {
                                return err(format!("unknown profile {url}"));
                            };
                            let Some(t) = m.type_id(name) else {
                                return err(format!("unknown profile {url}"));
                            };
                            m.is_subtype(n.ty, t)
                        }
                    };
                    out.push(Val::Bool(answer));
                }
                Ok(out)
            }
            Fun::HtmlChecks | Fun::HtmlChecks2 => b(true),
            Fun::HasTemplateIdOf => b(false),
            Fun::LowBoundary | Fun::HighBoundary => {
                let Some(v) = single(input, c.fun.name())? else {
                    return Ok(Vec::new());
                };
                let p = self.int_arg(c, 0, sc)?;
                let high = c.fun == Fun::HighBoundary;
                let prec = match p {
                    Some(p) if p < 0 => return Ok(Vec::new()),
                    Some(p) => Some(u32::try_from(p).unwrap_or(u32::MAX)),
                    None => None,
                };
                Ok(match to_prim(v, m) {
                    Some(Prim::Int(i)) => Decimal::from_i64(i)
                        .boundary(prec.unwrap_or(8), high)
                        .map(Val::Dec),
                    Some(Prim::Dec(d)) => d.boundary(prec.unwrap_or(8), high).map(Val::Dec),
                    Some(Prim::Quantity(q)) => q.value.boundary(prec.unwrap_or(8), high).map(|d| {
                        Val::Quantity(Arc::new(Quantity {
                            value: d,
                            unit: q.unit.clone(),
                        }))
                    }),
                    Some(Prim::Temporal(t)) => t.boundary(prec, high).map(Val::Temporal),
                    _ => None,
                }
                .into_iter()
                .collect())
            }
            Fun::Precision => {
                let Some(v) = single(input, "precision()")? else {
                    return Ok(Vec::new());
                };
                Ok(match to_prim(v, m) {
                    Some(Prim::Dec(d)) => Some(Val::Int(i64::from(d.scale()))),
                    Some(Prim::Int(_)) => Some(Val::Int(0)),
                    Some(Prim::Temporal(t)) => Some(Val::Int(i64::from(t.digits()))),
                    _ => None,
                }
                .into_iter()
                .collect())
            }
            Fun::Comparable => {
                let other = self.arg(c, 0, sc)?;
                let (Some(x), Some(y)) = (
                    single(input, "comparable()")?,
                    single(&other, "comparable()")?,
                ) else {
                    return Ok(Vec::new());
                };
                match (to_prim(x, m), to_prim(y, m)) {
                    (Some(Prim::Quantity(p)), Some(Prim::Quantity(q))) => b(p.comparable(&q)),
                    _ => err("comparable() needs quantities"),
                }
            }
        }
    }

    fn math(&self, c: &Call, input: &[Val<'a>], sc: Scope<'_, 'a>) -> R<Coll<'a>> {
        let Some(v) = single(input, c.fun.name())? else {
            return Ok(Vec::new());
        };
        let p = match to_prim(v, self.model) {
            Some(p @ (Prim::Int(_) | Prim::Dec(_))) => p,
            Some(Prim::Quantity(q)) if c.fun == Fun::Abs => {
                return Ok(vec![Val::Quantity(Arc::new(Quantity {
                    value: q.value.abs(),
                    unit: q.unit.clone(),
                }))])
            }
            _ => return err(format!("{}() needs a number", c.fun.name())),
        };
        let d = dec_of(&p).unwrap_or(Decimal::ZERO);
        let int = |x: Option<i64>| -> R<Coll<'a>> { Ok(x.map(Val::Int).into_iter().collect()) };
        let dec = |x: Option<Decimal>| -> R<Coll<'a>> { Ok(x.map(Val::Dec).into_iter().collect()) };
        match c.fun {
            Fun::Abs => match p {
                Prim::Int(i) => int(i.checked_abs()),
                _ => dec(Some(d.abs())),
            },
            Fun::Ceiling => int(d.ceiling()),
            Fun::Floor => int(d.floor()),
            Fun::Truncate => int(d.trunc()),
            Fun::Round => {
                let digits = self.int_arg(c, 0, sc)?.unwrap_or(0);
                if digits < 0 {
                    return err("round() precision must not be negative");
                }
                dec(d.round(u32::try_from(digits).unwrap_or(u32::MAX)))
            }
            Fun::Exp => dec(Decimal::from_f64(d.to_f64().exp())),
            Fun::Ln => {
                if d.is_negative() || d.is_zero() {
                    return Ok(Vec::new());
                }
                dec(Decimal::from_f64(d.to_f64().ln()))
            }
            Fun::Sqrt => {
                if d.is_negative() {
                    return Ok(Vec::new());
                }
                dec(Decimal::from_f64(d.to_f64().sqrt()))
            }
            Fun::Log => {
                let base = self.arg(c, 0, sc)?;
                let Some(bv) = single(&base, "log()")? else {
                    return Ok(Vec::new());
                };
                let Some(bd) = to_prim(bv, self.model).as_ref().and_then(dec_of) else {
                    return err("log() needs a numeric base");
                };
                let (x, b) = (d.to_f64(), bd.to_f64());
                if x <= 0.0 || b <= 0.0 || b == 1.0 {
                    return Ok(Vec::new());
                }
                let r = if b == 10.0 {
                    x.log10()
                } else {
                    x.ln() / b.ln()
                };
                dec(Decimal::from_f64(r))
            }
            Fun::Power => {
                let e = self.arg(c, 0, sc)?;
                let Some(ev) = single(&e, "power()")? else {
                    return Ok(Vec::new());
                };
                let Some(ep) = to_prim(ev, self.model) else {
                    return err("power() needs a numeric exponent");
                };
                if let (Prim::Int(base), Prim::Int(exp)) = (&p, &ep) {
                    if *exp >= 0 {
                        return int(u32::try_from(*exp).ok().and_then(|e| base.checked_pow(e)));
                    }
                }
                let Some(ed) = dec_of(&ep) else {
                    return err("power() needs a numeric exponent");
                };
                if let Some(n) = ed.to_integer().filter(|n| (0..=64).contains(n)) {
                    let mut acc = Decimal::ONE;
                    for _ in 0..n {
                        match acc.checked_mul(&d) {
                            Some(x) => acc = x,
                            None => return Ok(Vec::new()),
                        }
                    }
                    return dec(Some(acc));
                }
                let r = d.to_f64().powf(ed.to_f64());
                dec(Decimal::from_f64(r))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn sort(&self, c: &Call, input: &[Val<'a>]) -> R<Coll<'a>> {
        let mut keyed: Vec<(Vec<Option<Val<'a>>>, Val<'a>)> = Vec::with_capacity(input.len());
        let keys: Vec<(&Expr, bool)> = c
            .args
            .iter()
            .map(|a| match a {
                Expr::Neg(inner) => (&**inner, true),
                other => (other, false),
            })
            .collect();
        for (i, item) in input.iter().enumerate() {
            let mut k = Vec::with_capacity(keys.len().max(1));
            if keys.is_empty() {
                k.push(Some(item.clone()));
            }
            for (e, _) in &keys {
                let r = self.lambda(e, item, i, None)?;
                k.push(single(&r, "a sort key")?.cloned());
            }
            keyed.push((k, item.clone()));
        }
        let m = self.model;
        let mut failed = None;
        keyed.sort_by(|(ka, _), (kb, _)| {
            for (idx, (a, b)) in ka.iter().zip(kb).enumerate() {
                let desc = keys.get(idx).is_some_and(|k| k.1);
                let o = match (a, b) {
                    (None, None) => Ordering::Equal,
                    // Items without a key sort after those with one.
                    (None, Some(_)) => Ordering::Greater,
                    (Some(_), None) => Ordering::Less,
                    (Some(x), Some(y)) => match (to_prim(x, m), to_prim(y, m)) {
                        (Some(p), Some(q)) => match prim_cmp(&p, &q) {
                            Ok(o) => o.unwrap_or(Ordering::Equal),
                            Err(e) => {
                                failed = Some(e);
                                Ordering::Equal
                            }
                        },
                        _ => Ordering::Equal,
                    },
                };
                let o = if desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(keyed.into_iter().map(|(_, v)| v).collect())
    }

    /// Conversions (`toInteger()` etc.); `None` when the value does not convert.
    fn convert(&self, v: &Val<'a>, f: Fun, unit: Option<&str>) -> Option<Val<'a>> {
        let p = to_prim(v, self.model)?;
        match f {
            Fun::ToBoolean => match p {
                Prim::Bool(b) => Some(Val::Bool(b)),
                Prim::Int(1) => Some(Val::Bool(true)),
                Prim::Int(0) => Some(Val::Bool(false)),
                Prim::Dec(d) if d.eq_value(&Decimal::ONE) => Some(Val::Bool(true)),
                Prim::Dec(d) if d.is_zero() => Some(Val::Bool(false)),
                Prim::Str(s) => match s.to_ascii_lowercase().as_str() {
                    "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(Val::Bool(true)),
                    "false" | "f" | "no" | "n" | "0" | "0.0" => Some(Val::Bool(false)),
                    _ => None,
                },
                _ => None,
            },
            Fun::ToInteger => match p {
                Prim::Int(i) => Some(Val::Int(i)),
                Prim::Bool(b) => Some(Val::Int(i64::from(b))),
                Prim::Str(s) => {
                    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
                    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                        return None;
                    }
                    s.parse::<i32>().ok().map(|i| Val::Int(i64::from(i)))
                }
                _ => None,
            },
            Fun::ToDecimal => match p {
                Prim::Int(i) => Some(Val::Dec(Decimal::from_i64(i))),
                Prim::Dec(d) => Some(Val::Dec(d)),
                Prim::Bool(b) => Some(Val::Dec(Decimal::from_i64(i64::from(b)))),
                Prim::Str(s) if !s.contains(['e', 'E']) => Decimal::parse(s).map(Val::Dec),
                _ => None,
            },
            Fun::ToString => Some(Val::Str(Arc::from(match p {
                Prim::Bool(b) => b.to_string(),
                Prim::Int(i) => i.to_string(),
                Prim::Dec(d) => d.to_string(),
                Prim::Str(s) => s.to_string(),
                Prim::Temporal(t) => t.to_string(),
                Prim::Quantity(q) => q.to_string(),
            }))),
            Fun::ToDate => match p {
                Prim::Temporal(t) if t.kind != TemporalKind::Time => {
                    let mut d = t;
                    d.kind = TemporalKind::Date;
                    d.precision = d.precision.min(crate::temporal::Precision::Day);
                    d.tz = None;
                    d.zulu = false;
                    d.hour = 0;
                    d.minute = 0;
                    d.second = 0;
                    d.millis = 0;
                    Some(Val::Temporal(d))
                }
                Prim::Str(s) => Temporal::parse_date(s).map(Val::Temporal),
                _ => None,
            },
            Fun::ToDateTime => match p {
                Prim::Temporal(t) if t.kind != TemporalKind::Time => {
                    Some(Val::Temporal(t.as_datetime()))
                }
                Prim::Str(s) => Temporal::parse_datetime(s).map(Val::Temporal),
                _ => None,
            },
            Fun::ToTime => match p {
                Prim::Temporal(t) if t.kind == TemporalKind::Time => Some(Val::Temporal(t)),
                Prim::Str(s) => Temporal::parse_time(s).map(Val::Temporal),
                _ => None,
            },
            Fun::ToQuantity => {
                let q = match p {
                    Prim::Int(i) => Quantity::new(Decimal::from_i64(i), "1"),
                    Prim::Dec(d) => Quantity::new(d, "1"),
                    Prim::Bool(b) => Quantity::new(Decimal::from_i64(i64::from(b)), "1"),
                    Prim::Str(s) => Quantity::parse(s)?,
                    Prim::Quantity(q) => q.into_owned(),
                    Prim::Temporal(_) => return None,
                };
                let q = match unit {
                    Some(u) => q.convert_to(u)?,
                    None => q,
                };
                Some(Val::Quantity(Arc::new(q)))
            }
            _ => None,
        }
    }

    /// `resolve()`: contained resources (`#id`), Bundle entries, the resolver callback, and
    /// — when asked for — type-only stubs for references that cannot be followed.
    fn resolve(&self, v: &Val<'a>, out: &mut Coll<'a>) {
        let (text, node_v) = match v {
            Val::Node(n) if is_resource(n, self.model) => {
                out.push(v.clone());
                return;
            }
            Val::Node(n) => match n.v {
                Value::Object(m) => (member(m, "reference").and_then(Value::as_str), Some(n.v)),
                Value::String(s) => (Some(s.as_str()), Some(n.v)),
                _ => (None, None),
            },
            Val::Str(s) => {
                if let Some(found) = self.find_reference(s) {
                    out.push(found);
                }
                return;
            }
            _ => return,
        };
        if let Some(text) = text {
            if let Some(found) = self.find_reference(text) {
                out.push(found);
                return;
            }
        }
        if self.stubs {
            if let Some(t) = node_v
                .and_then(reference_target_type)
                .and_then(|t| self.model.type_id(t))
            {
                out.push(Val::Stub(t));
            }
        }
    }

    fn resource_node(&self, v: &'a Value) -> Val<'a> {
        Val::node(v, infer_type(v, self.model))
    }

    fn find_reference(&self, text: &str) -> Option<Val<'a>> {
        let docs: Vec<&'a Value> = [&self.resource, &self.root_resource]
            .into_iter()
            .flatten()
            .filter_map(|v| match v {
                Val::Node(n) => Some(n.v),
                _ => None,
            })
            .collect();
        if let Some(id) = text.strip_prefix('#') {
            for doc in &docs {
                if id.is_empty() {
                    return Some(self.resource_node(doc));
                }
                if let Some(Value::Array(cs)) = doc.get("contained") {
                    if let Some(c) = cs
                        .iter()
                        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
                    {
                        return Some(self.resource_node(c));
                    }
                }
            }
            return None;
        }
        for doc in &docs {
            if doc.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
                continue;
            }
            let Some(Value::Array(entries)) = doc.get("entry") else {
                continue;
            };
            let path = text.split(['?', '#']).next().unwrap_or(text);
            let path = path.find("/_history/").map_or(path, |i| &path[..i]);
            let mut segs = path.rsplit('/');
            let (id, ty) = (segs.next(), segs.next());
            for e in entries {
                let Some(r) = e.get("resource") else { continue };
                if e.get("fullUrl").and_then(Value::as_str) == Some(text) {
                    return Some(self.resource_node(r));
                }
                if let (Some(id), Some(ty)) = (id, ty) {
                    let same = r.get("resourceType").and_then(Value::as_str) == Some(ty)
                        && r.get("id").and_then(Value::as_str) == Some(id);
                    let full_ok = !path.contains("://")
                        || e.get("fullUrl")
                            .and_then(Value::as_str)
                            .is_none_or(|f| f == path);
                    if same && full_ok {
                        return Some(self.resource_node(r));
                    }
                }
            }
        }
        let found = self.resolver?.resolve(text)?;
        Some(self.resource_node(found))
    }
}
