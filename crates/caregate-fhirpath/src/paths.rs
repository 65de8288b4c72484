//! Search-parameter expressions specialised to one resource type.
//!
//! Indexing evaluates every parameter of a resource's type on every write. The R4
//! definitions share one expression among many types (`clinical-patient` is a union of
//! 30 branches, one per type), and most branches are plain paths (`Observation.code`,
//! `Observation.subject.where(resolve() is Patient)`, `(Observation.value as Quantity)`).
//! [`Expression::for_resource_type`] drops the branches that cannot select anything in a
//! resource of the given type, and [`Expression::plain_paths`] turns a union of plain
//! paths into [`PlainPaths`], which walks the JSON directly with the element types looked
//! up once. Both give exactly what the lenient [`Expression::evaluate`] gives; anything
//! else stays with the evaluator.

use caregate_core::json::{field, member};
use serde_json::{Map, Value};

use crate::model::{ModelInfo, TypeId, TypeKind};
use crate::parser::{Expr, Fun, Lit, Op};
use crate::value::UNKNOWN;
use crate::{Expression, Item};

static NULL: Value = Value::Null;

/// A union of plain paths from a resource's root, compiled against the R4 model for one
/// resource type (see the module docs).
#[derive(Debug, Clone)]
pub struct PlainPaths {
    branches: Box<[Branch]>,
}

#[derive(Debug, Clone, PartialEq)]
struct Branch {
    steps: Box<[Step]>,
    /// `.where(resolve() is T)`: keep references whose target is a `T`.
    target: Option<TypeId>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A child element: one JSON key for an ordinary element, the allowed `nameType` keys
    /// (in the order the evaluator finds them) for a choice element.
    Member {
        keys: Box<[Box<str>]>,
        choice: bool,
        /// `_name` keys (a primitive's id and extensions), parallel to `keys`; empty
        /// strings for complex elements.
        ext_keys: Box<[Box<str>]>,
        /// FHIR type of what each key holds, parallel to `keys`.
        types: Box<[TypeId]>,
    },
    /// `extension('url')`: the extensions with that URL.
    Extension { url: Box<str>, ty: TypeId },
}

impl PlainPaths {
    /// Whether every branch of `self` is one of `other`'s.
    pub fn is_within(&self, other: &PlainPaths) -> bool {
        self.branches.iter().all(|b| other.branches.contains(b))
    }

    /// Whether `self` selects exactly what the union of `parts` selects: each of its
    /// branches is a branch of some part, and each part's branches are among its own.
    pub fn is_union_of(&self, parts: &[&PlainPaths]) -> bool {
        parts.iter().all(|p| p.is_within(self))
            && self
                .branches
                .iter()
                .all(|b| parts.iter().any(|p| p.branches.contains(b)))
    }

    /// How many branches the union has.
    pub fn branch_count(&self) -> usize {
        self.branches.len()
    }
}

impl Expression {
    /// This expression restricted to resources of `resource_type`: branches of a top-level
    /// union that start with another resource type's name (`Patient.name` in a
    /// multi-type parameter evaluated on an Observation) select nothing there and are
    /// dropped. `None` when no branch is left or the type is unknown.
    pub fn for_resource_type(&self, resource_type: &str) -> Option<Expression> {
        let model = ModelInfo::r4();
        let ty = model.type_id(resource_type)?;
        let mut kept: Vec<&Expr> = Vec::new();
        let mut all = Vec::new();
        union_branches(&self.ast, &mut all);
        for b in all {
            match leftmost_type(b) {
                Some(root)
                    if model.kind(root) == Some(TypeKind::Resource)
                        && !model.is_subtype(ty, root) => {}
                _ => kept.push(b),
            }
        }
        let mut it = kept.into_iter().cloned();
        let first = it.next()?;
        let ast = it.fold(first, |l, r| Expr::Bin(Op::Union, Box::new(l), Box::new(r)));
        Some(Expression {
            source: self.source.clone(),
            ast,
        })
    }

    /// The expression as [`PlainPaths`] for resources of `resource_type`, when every branch
    /// of its top-level union is a plain path from the root (optionally ending in a choice
    /// element, `as T`, or `.where(resolve() is T)`); `None` otherwise.
    pub fn plain_paths(&self, resource_type: &str) -> Option<PlainPaths> {
        let model = ModelInfo::r4();
        let ty = model.type_id(resource_type)?;
        // Bundles resolve references among their entries; keep those with the evaluator.
        if model.kind(ty) != Some(TypeKind::Resource) || resource_type == "Bundle" {
            return None;
        }
        let mut all = Vec::new();
        union_branches(&self.ast, &mut all);
        let branches = all
            .into_iter()
            .map(|b| branch(model, ty, b))
            .collect::<Option<Vec<_>>>()?;
        Some(PlainPaths {
            branches: branches.into_iter().flatten().collect(),
        })
    }
}

fn union_branches<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::Bin(Op::Union, l, r) => {
            union_branches(l, out);
            union_branches(r, out);
        }
        other => out.push(other),
    }
}

/// The type named by the identifier a path starts with (`Observation` in
/// `Observation.code.where(...)`), if it names one.
fn leftmost_type(e: &Expr) -> Option<TypeId> {
    match e {
        Expr::Ident(name, ty) if name.starts_with(|c: char| c.is_ascii_uppercase()) => *ty,
        Expr::Member(recv, _) | Expr::Indexer(recv, _) | Expr::As(recv, _) | Expr::Is(recv, _) => {
            leftmost_type(recv)
        }
        Expr::Call(c) => c.recv.as_ref().and_then(leftmost_type),
        _ => None,
    }
}

/// One union branch as steps; `Some(None)` for a branch that selects nothing in this type
/// (another resource type's path), `None` when the branch is not a plain path.
fn branch(model: &ModelInfo, ty: TypeId, e: &Expr) -> Option<Option<Branch>> {
    let (path, target) = match e {
        Expr::Call(c) if c.fun == Fun::Where => {
            let [Expr::Is(inner, spec)] = c.args.as_slice() else {
                return None;
            };
            let Expr::Call(r) = &**inner else { return None };
            if r.fun != Fun::Resolve || r.recv.is_some() || spec.namespace.is_some() {
                return None;
            }
            (c.recv.as_ref()?, Some(model.type_id(&spec.name)?))
        }
        other => (other, None),
    };
    let mut steps = Vec::new();
    match walk(model, ty, path, &mut steps)? {
        Walked::Nothing => return Some(None),
        Walked::At(at) => {
            // A reference filter needs one known element type to stand on.
            if steps.is_empty() || (target.is_some() && at == UNKNOWN) {
                return None;
            }
        }
    }
    Some(Some(Branch {
        steps: steps.into(),
        target,
    }))
}

/// Where a path's steps end.
enum Walked {
    /// At elements of this type (`UNKNOWN` after a choice with several variants, where no
    /// further step may follow).
    At(TypeId),
    /// The path selects nothing in this resource type.
    Nothing,
}

/// Compiles the path `e` into `steps`; `None` when it is not a plain path.
fn walk(model: &ModelInfo, ty: TypeId, e: &Expr, steps: &mut Vec<Step>) -> Option<Walked> {
    match e {
        Expr::Ident(root, Some(root_ty)) if root.starts_with(|c: char| c.is_ascii_uppercase()) => {
            if model.is_subtype(ty, *root_ty) {
                Some(Walked::At(ty))
            } else {
                (model.kind(*root_ty) == Some(TypeKind::Resource)).then_some(Walked::Nothing)
            }
        }
        Expr::Member(recv, name) => {
            let Some(at) = complex_parent(model, ty, recv, steps)? else {
                return Some(Walked::Nothing);
            };
            let el = model.element(at, name)?;
            if el.expanded {
                return None;
            }
            if el.choice {
                let def = model.get(at)?;
                let mut keys: Vec<(&str, TypeId)> = def
                    .elements
                    .iter()
                    .filter(|(k, e)| {
                        e.expanded
                            && k.strip_prefix(&**name)
                                .is_some_and(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
                    })
                    .filter_map(|(k, e)| Some((k, *e.types.first()?)))
                    .collect();
                keys.sort_unstable();
                steps.push(Step::Member {
                    ext_keys: keys.iter().map(|(k, t)| ext_key(model, k, *t)).collect(),
                    keys: keys.iter().map(|(k, _)| Box::from(*k)).collect(),
                    types: keys.iter().map(|&(_, t)| t).collect(),
                    choice: true,
                });
                return Some(Walked::At(UNKNOWN));
            }
            let [t] = *el.types else { return None };
            if !matches!(
                model.kind(t),
                Some(TypeKind::Complex | TypeKind::Backbone | TypeKind::Primitive)
            ) {
                return None;
            }
            steps.push(Step::Member {
                keys: Box::new([Box::from(&**name)]),
                ext_keys: Box::new([ext_key(model, name, t)]),
                types: Box::new([t]),
                choice: false,
            });
            Some(Walked::At(t))
        }
        // The operator form filters by type (the function form insists on one item).
        Expr::As(recv, spec) if spec.namespace.is_none() => {
            let want = model.type_id(&spec.name)?;
            match walk(model, ty, recv, steps)? {
                Walked::Nothing => Some(Walked::Nothing),
                Walked::At(at) => {
                    let Some(Step::Member {
                        keys,
                        choice,
                        ext_keys,
                        types,
                    }) = steps.last_mut()
                    else {
                        return None;
                    };
                    let keep: Vec<usize> = (0..types.len())
                        .filter(|&i| casts_to(model, types[i], want))
                        .collect();
                    if keep.is_empty() {
                        return Some(Walked::Nothing);
                    }
                    *keys = keep.iter().map(|&i| keys[i].clone()).collect();
                    *ext_keys = keep.iter().map(|&i| ext_keys[i].clone()).collect();
                    *types = keep.iter().map(|&i| types[i]).collect();
                    Some(Walked::At(match **types {
                        // One variant left: the value has a known type again.
                        [only] if *choice => only,
                        _ => at,
                    }))
                }
            }
        }
        Expr::Call(c) if c.fun == Fun::Extension => {
            let [Expr::Lit(Lit::Str(url))] = c.args.as_slice() else {
                return None;
            };
            if complex_parent(model, ty, c.recv.as_ref()?, steps)?.is_none() {
                return Some(Walked::Nothing);
            }
            let ext = model.type_id("Extension")?;
            steps.push(Step::Extension {
                url: Box::from(&**url),
                ty: ext,
            });
            Some(Walked::At(ext))
        }
        _ => None,
    }
}

/// Compiles `recv`, the path to the values a member or `extension()` step starts from:
/// `Some(Some(type))` when it ends at complex values of one known type (the root, a
/// datatype or a backbone element; steps never enter nested resources), `Some(None)` when
/// it selects nothing here, `None` when it is not a plain path or ends at primitives
/// (whose children are their extensions, not elements).
fn complex_parent(
    model: &ModelInfo,
    ty: TypeId,
    recv: &Expr,
    steps: &mut Vec<Step>,
) -> Option<Option<TypeId>> {
    match walk(model, ty, recv, steps)? {
        Walked::Nothing => Some(None),
        Walked::At(at)
            if at != UNKNOWN
                && matches!(
                    model.kind(at),
                    Some(TypeKind::Complex | TypeKind::Backbone | TypeKind::Resource)
                ) =>
        {
            Some(Some(at))
        }
        Walked::At(_) => None,
    }
}

/// Whether `as T` keeps an element of type `ty` (primitives by exact type, as the
/// evaluator's `as` does).
fn casts_to(model: &ModelInfo, ty: TypeId, want: TypeId) -> bool {
    if model.kind(ty) == Some(TypeKind::Primitive) {
        ty == want
    } else {
        model.is_subtype(ty, want)
    }
}

fn ext_key(model: &ModelInfo, key: &str, ty: TypeId) -> Box<str> {
    if model.kind(ty) == Some(TypeKind::Primitive) {
        format!("_{key}").into()
    } else {
        "".into()
    }
}

impl PlainPaths {
    /// The items the expression selects in `resource` (a resource of the type the paths
    /// were compiled for), in the evaluator's order; duplicates across branches are kept.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Item<'a>> {
        let model = ModelInfo::r4();
        let mut out = Vec::new();
        let mut cur: Vec<(&'a Value, TypeId)> = Vec::new();
        let mut next: Vec<(&'a Value, TypeId)> = Vec::new();
        for b in self.branches.iter() {
            // The first step reads the root directly: a parameter whose element is absent
            // (most of them, for any one resource) allocates nothing.
            let Some((first, rest)) = b.steps.split_first() else {
                continue;
            };
            cur.clear();
            first.children(resource, &mut cur);
            for step in rest {
                if cur.is_empty() {
                    break;
                }
                next.clear();
                for &(v, _) in &cur {
                    step.children(v, &mut next);
                }
                std::mem::swap(&mut cur, &mut next);
            }
            for &(v, ty) in &cur {
                if let Some(target) = b.target {
                    if !resolves_to(model, resource, v, target) {
                        continue;
                    }
                }
                out.push(Item::Node {
                    value: v,
                    fhir_type: (ty != UNKNOWN).then(|| model.name(ty)),
                });
            }
        }
        out
    }
}

impl Step {
    fn children<'a>(&self, v: &'a Value, out: &mut Vec<(&'a Value, TypeId)>) {
        let Value::Object(m) = v else { return };
        match self {
            Step::Member {
                keys, choice: true, ..
            } => {
                for (key, child) in m {
                    if let Some(i) = keys.iter().position(|k| **k == **key) {
                        self.push(m, i, Some(child), out);
                    }
                }
            }
            Step::Member { keys, .. } => self.push(m, 0, member(m, &keys[0]), out),
            Step::Extension { url, ty } => {
                if let Some(Value::Array(exts)) = member(m, "extension") {
                    out.extend(
                        exts.iter()
                            .filter(|e| field(e, "url").and_then(Value::as_str) == Some(&**url))
                            .map(|e| (e, *ty)),
                    );
                }
            }
        }
    }

    /// The evaluator's navigation (`push_child`): arrays flattened, nulls skipped unless
    /// their `_name` sibling holds an extension, which stands in as a null value.
    fn push<'a>(
        &self,
        m: &'a Map<String, Value>,
        i: usize,
        v: Option<&'a Value>,
        out: &mut Vec<(&'a Value, TypeId)>,
    ) {
        let Step::Member {
            ext_keys, types, ..
        } = self
        else {
            return;
        };
        let ty = types[i];
        let ext = match &*ext_keys[i] {
            "" => None,
            k => member(m, k),
        };
        match v {
            Some(Value::Array(items)) => {
                let exts = ext.and_then(Value::as_array);
                for (j, it) in items.iter().enumerate() {
                    let e = exts.and_then(|a| a.get(j)).filter(|e| !e.is_null());
                    if it.is_null() && e.is_none() {
                        continue;
                    }
                    out.push((it, ty));
                }
            }
            Some(Value::Null) | None => match ext {
                Some(Value::Array(exts)) => {
                    out.extend(exts.iter().filter(|e| !e.is_null()).map(|_| (&NULL, ty)));
                }
                Some(Value::Object(_)) => out.push((&NULL, ty)),
                _ => {}
            },
            Some(other) => out.push((other, ty)),
        }
    }
}

/// `resolve() is target` for a reference inside `resource`, as the lenient evaluator
/// answers it: a contained resource (`#id`) by its type, any other reference by the type
/// its URL (or `type`) names.
fn resolves_to(model: &ModelInfo, resource: &Value, reference: &Value, target: TypeId) -> bool {
    let text = match reference {
        Value::Object(m) => member(m, "reference").and_then(Value::as_str),
        Value::String(s) => Some(s.as_str()),
        _ => None,
    };
    if let Some(id) = text.and_then(|t| t.strip_prefix('#')) {
        let found = if id.is_empty() {
            Some(resource)
        } else {
            resource
                .get("contained")
                .and_then(Value::as_array)
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
                })
        };
        return found
            .and_then(|r| r.get("resourceType"))
            .and_then(Value::as_str)
            .and_then(|t| model.type_id(t))
            .is_some_and(|t| model.is_subtype(t, target));
    }
    crate::eval::reference_target_type(reference)
        .and_then(|t| model.type_id(t))
        .is_some_and(|t| model.is_subtype(t, target))
}
