//! The SearchParameter registry: which parameters each resource type supports, with their
//! compiled FHIRPath, precomputed per type so extraction on write is a flat loop.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use caregate_core::{is_resource_type, RESOURCE_TYPES};
use caregate_fhirpath::{Expression, Item, PlainPaths};
use caregate_store::index::{IndexEntry, IndexKind, ParamKey};
use serde_json::Value;

/// The FHIR `search-param-type`s caregate indexes (`composite` and `special` are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Quantity,
    Uri,
}

impl ParamType {
    /// The `search-param-type` code, as used in a CapabilityStatement.
    pub fn code(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
        }
    }

    pub fn from_code(code: &str) -> Option<ParamType> {
        Some(match code {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            _ => return None,
        })
    }

    /// The store's index table for this type.
    pub fn index_kind(self) -> IndexKind {
        match self {
            ParamType::Number => IndexKind::Number,
            ParamType::Date => IndexKind::Date,
            ParamType::String => IndexKind::String,
            ParamType::Token => IndexKind::Token,
            ParamType::Reference => IndexKind::Reference,
            ParamType::Quantity => IndexKind::Quantity,
            ParamType::Uri => IndexKind::Uri,
        }
    }
}

/// A supported search parameter on one resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// The resource type it is registered on (parameters on `Resource` appear per type).
    pub resource_type: String,
    pub code: String,
    /// The index key, `"{resource_type}:{code}"`.
    pub key: ParamKey,
    pub param_type: ParamType,
    /// The SearchParameter's canonical URL.
    pub url: String,
    /// The SearchParameter's description.
    pub documentation: String,
    /// For reference parameters, the resource types it may point at.
    pub targets: Vec<String>,
    /// The parameters whose index rows hold this one's values, when it keeps none of its
    /// own (see [`SearchRegistry::from_definitions`]); empty when it does.
    pub stored_as: Vec<ParamKey>,
}

impl ParamInfo {
    /// The keys this parameter's values are stored under.
    pub fn row_keys(&self) -> Vec<ParamKey> {
        if self.stored_as.is_empty() {
            vec![self.key.clone()]
        } else {
            self.stored_as.clone()
        }
    }
}

/// One parameter to extract for a type.
#[derive(Debug)]
pub(crate) struct Extractor {
    pub key: ParamKey,
    pub param_type: ParamType,
    pub plan: Extraction,
    /// The definition's whole expression, which `plan` answers exactly (the tests compare
    /// the two; the product needs only `plan`).
    #[cfg(test)]
    pub expression: Arc<Expression>,
}

/// How a parameter's values are found in a resource of one type: by walking plain paths
/// directly, or by the FHIRPath evaluator over the expression's branches for that type.
#[derive(Debug)]
pub(crate) enum Extraction {
    Paths(PlainPaths),
    Evaluate(Expression),
}

impl Extraction {
    fn for_type(expr: &Expression, resource_type: &str) -> Extraction {
        match expr.plain_paths(resource_type) {
            Some(paths) => Extraction::Paths(paths),
            None => Extraction::Evaluate(
                expr.for_resource_type(resource_type)
                    .unwrap_or_else(|| expr.clone()),
            ),
        }
    }

    pub(crate) fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Item<'a>> {
        match self {
            Extraction::Paths(p) => p.evaluate(resource),
            Extraction::Evaluate(e) => e.evaluate(resource),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct TypeParams {
    /// Sorted by code, so `params_for` is deterministic.
    pub params: BTreeMap<String, ParamInfo>,
    pub extractors: Vec<Extractor>,
    /// The extractors of parameters that share other parameters' rows, kept for the tests.
    #[cfg(test)]
    pub shared: Vec<Extractor>,
}

/// Compiled SearchParameters by resource type. Immutable after construction, so one
/// instance is shared by all request threads.
#[derive(Debug, Default)]
pub struct SearchRegistry {
    pub(crate) types: HashMap<String, TypeParams>,
}

/// Parameters whose search semantics are not plain index lookups (or that need an engine
/// caregate does not have); they are left out rather than advertised and half-implemented.
const UNSUPPORTED_CODES: &[&str] = &[
    "_text",
    "_content",
    "_query",
    "_list",
    "_has",
    "_type",
    "_filter",
    "_containedType",
    "_contained",
];

/// Resource types that are not DomainResources (no text, contained or extensions).
const NOT_DOMAIN_RESOURCES: &[&str] = &["Binary", "Bundle", "Parameters"];

/// Whether an expression can select anything on `ty`: R4 expressions start each union
/// branch with a type name (`Patient.name | Person.name`); one that never names `ty`, nor
/// `Resource` / `DomainResource`, is a mistake in the definition (the package's example
/// `Patient:part-agree` is `DocumentReference.extension(...)`).
fn applies_to(expression: &str, ty: &str) -> bool {
    if expression.is_empty()
        || !expression.starts_with(|c: char| c.is_ascii_uppercase() || c == '(')
    {
        return true;
    }
    let names_type = |name: &str| {
        expression.match_indices(name).any(|(i, _)| {
            let before = expression[..i].chars().next_back();
            let after = expression[i + name.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_alphanumeric())
                && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    names_type(ty) || names_type("Resource") || names_type("DomainResource")
}

impl SearchRegistry {
    /// Compiles every SearchParameter. Those that cannot be supported — composite/special
    /// types, no or uncompilable expression, phonetic/nearby matching, expressions that never
    /// select anything on their base — are skipped with a
    /// `debug!`, so the registry only advertises what actually works. `_id` and
    /// `_lastUpdated` are always present: the store answers them without index entries.
    pub fn from_definitions<'a>(params: impl IntoIterator<Item = &'a Value>) -> SearchRegistry {
        let mut reg = SearchRegistry::default();
        for ty in RESOURCE_TYPES {
            reg.insert_builtin(
                ty,
                "_id",
                ParamType::Token,
                "http://hl7.org/fhir/SearchParameter/Resource-id",
            );
            reg.insert_builtin(
                ty,
                "_lastUpdated",
                ParamType::Date,
                "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
            );
        }
        // Expressions shared by many bases (e.g. `patient`) are compiled once.
        let mut compiled: HashMap<String, Arc<Expression>> = HashMap::new();
        let (experimental, regular): (Vec<&Value>, Vec<&Value>) = params
            .into_iter()
            .partition(|sp| sp.get("experimental").and_then(Value::as_bool) == Some(true));
        for sp in regular.into_iter().chain(experimental) {
            reg.add_definition(sp, &mut compiled);
        }
        reg.share_rows();
        reg
    }

    /// As [`SearchRegistry::from_definitions`], but every parameter keeps its own rows:
    /// the reference the tests compare row sharing against.
    #[cfg(test)]
    pub(crate) fn from_definitions_unshared<'a>(
        params: impl IntoIterator<Item = &'a Value>,
    ) -> SearchRegistry {
        let mut reg = SearchRegistry::default();
        let shared = SearchRegistry::from_definitions(params);
        for (ty, params) in shared.types {
            let TypeParams {
                params,
                mut extractors,
                shared,
            } = params;
            extractors.extend(shared);
            let mut unshared = TypeParams {
                params,
                extractors,
                shared: Vec::new(),
            };
            for info in unshared.params.values_mut() {
                info.stored_as.clear();
            }
            reg.types.insert(ty, unshared);
        }
        reg
    }

    /// A parameter whose values are exactly the union of other parameters' of the same
    /// type and kind (`Observation:combo-code` is `code | component-code`, as plain paths)
    /// keeps no index rows of its own: writes do not extract it, and searches ask for its
    /// members' rows ([`ParamInfo::stored_as`]). Such copies were about a seventh of a
    /// Synthea import's index rows. Reference parameters keep their rows, as `_include`,
    /// chains and `_has` name them.
    fn share_rows(&mut self) {
        for params in self.types.values_mut() {
            fn paths(e: &Extractor) -> Option<&PlainPaths> {
                match &e.plan {
                    Extraction::Paths(p) if e.param_type != ParamType::Reference => Some(p),
                    _ => None,
                }
            }
            // Fewest branches first, so members are decided before the unions over them;
            // of two identical parameters the first by key keeps the rows.
            let mut order: Vec<(usize, &PlainPaths)> = params
                .extractors
                .iter()
                .enumerate()
                .filter_map(|(i, e)| paths(e).map(|p| (i, p)))
                .collect();
            order.sort_by(|(a, pa), (b, pb)| {
                (pa.branch_count(), &params.extractors[*a].key)
                    .cmp(&(pb.branch_count(), &params.extractors[*b].key))
            });
            let mut own: Vec<(usize, &PlainPaths)> = Vec::new();
            let mut shared: Vec<(usize, Vec<ParamKey>)> = Vec::new();
            for (i, p) in order {
                let kind = params.extractors[i].param_type;
                let within: Vec<&(usize, &PlainPaths)> = own
                    .iter()
                    .filter(|(j, q)| params.extractors[*j].param_type == kind && q.is_within(p))
                    .collect();
                // Members that another member already covers add nothing.
                let members: Vec<&(usize, &PlainPaths)> = within
                    .iter()
                    .enumerate()
                    .filter(|(n, (_, q))| {
                        !within.iter().enumerate().any(|(m, (_, r))| {
                            m != *n && q.is_within(r) && (!r.is_within(q) || m < *n)
                        })
                    })
                    .map(|(_, member)| *member)
                    .collect();
                let parts: Vec<&PlainPaths> = members.iter().map(|(_, q)| *q).collect();
                if !members.is_empty() && p.is_union_of(&parts) {
                    let keys = members
                        .iter()
                        .map(|(j, _)| params.extractors[*j].key.clone())
                        .collect();
                    shared.push((i, keys));
                } else {
                    own.push((i, p));
                }
            }
            shared.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
            for (i, keys) in shared {
                let extractor = params.extractors.remove(i);
                if let Some(info) = params
                    .params
                    .values_mut()
                    .find(|info| info.key == extractor.key)
                {
                    info.stored_as = keys;
                }
                #[cfg(test)]
                params.shared.push(extractor);
            }
        }
    }

    fn insert_builtin(&mut self, ty: &str, code: &str, param_type: ParamType, url: &str) {
        let documentation = match code {
            "_id" => "Logical id of this artifact",
            _ => "When the resource version last changed",
        };
        self.types.entry(ty.to_string()).or_default().params.insert(
            code.to_string(),
            ParamInfo {
                resource_type: ty.to_string(),
                code: code.to_string(),
                key: format!("{ty}:{code}"),
                param_type,
                url: url.to_string(),
                documentation: documentation.to_string(),
                targets: Vec::new(),
                stored_as: Vec::new(),
            },
        );
    }

    fn add_definition(&mut self, sp: &Value, compiled: &mut HashMap<String, Arc<Expression>>) {
        let text = |k: &str| sp.get(k).and_then(Value::as_str).unwrap_or("");
        let (code, url) = (text("code"), text("url"));
        if code.is_empty() {
            tracing::debug!(url, "skipping SearchParameter without code");
            return;
        }
        let Some(param_type) = ParamType::from_code(text("type")) else {
            tracing::debug!(
                url,
                code,
                kind = text("type"),
                "skipping SearchParameter of unsupported type"
            );
            return;
        };
        if UNSUPPORTED_CODES.contains(&code) {
            tracing::debug!(url, code, "skipping SearchParameter with special semantics");
            return;
        }
        // The R4 package ships its example SearchParameters (e.g. a `Condition:subject` that
        // only targets Organization) marked experimental, next to genuine experimental
        // extension parameters: experimental definitions may add parameters but never
        // replace one (they are added after all others).
        let experimental = sp.get("experimental").and_then(Value::as_bool) == Some(true);
        if matches!(text("xpathUsage"), "phonetic" | "nearby" | "distance") {
            tracing::debug!(
                url,
                code,
                "skipping SearchParameter needing phonetic/geographic matching"
            );
            return;
        }
        let bases: Vec<&str> = sp
            .get("base")
            .and_then(Value::as_array)
            .map(|b| b.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let targets: Vec<String> = sp
            .get("target")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let documentation = text("description").to_string();
        let builtin = code == "_id" || code == "_lastUpdated";
        let expr = if builtin {
            None
        } else {
            let source = text("expression");
            if source.is_empty() {
                tracing::debug!(url, code, "skipping SearchParameter without expression");
                return;
            }
            let expr = match compiled.get(source) {
                Some(e) => e.clone(),
                None => match Expression::compile(source) {
                    Ok(e) => {
                        let e = Arc::new(e);
                        compiled.insert(source.to_string(), e.clone());
                        e
                    }
                    Err(err) => {
                        tracing::debug!(url, code, %err, "skipping SearchParameter whose expression does not compile");
                        return;
                    }
                },
            };
            Some(expr)
        };
        let mut types: Vec<&str> = Vec::new();
        for base in bases {
            match base {
                "Resource" => types.extend(RESOURCE_TYPES.iter().copied()),
                "DomainResource" => types.extend(
                    RESOURCE_TYPES
                        .iter()
                        .copied()
                        .filter(|t| !NOT_DOMAIN_RESOURCES.contains(t)),
                ),
                other if is_resource_type(other) => types.push(other),
                other => tracing::debug!(
                    url,
                    code,
                    base = other,
                    "ignoring unknown SearchParameter base"
                ),
            }
        }
        for ty in types {
            if !applies_to(text("expression"), ty) {
                tracing::debug!(
                    url,
                    code,
                    ty,
                    "skipping SearchParameter whose expression never applies to its base"
                );
                continue;
            }
            let key = format!("{ty}:{code}");
            let entry = self.types.entry(ty.to_string()).or_default();
            if experimental && entry.params.contains_key(code) {
                tracing::debug!(
                    url,
                    key,
                    "experimental SearchParameter does not replace an existing one"
                );
                continue;
            }
            if builtin {
                // Keep the built-in semantics, adopt the definition's documentation.
                if let Some(info) = entry.params.get_mut(code) {
                    info.url = url.to_string();
                    info.documentation = documentation.clone();
                }
                continue;
            }
            if entry.params.contains_key(code) {
                tracing::debug!(url, key, "SearchParameter replaces an earlier definition");
                entry.extractors.retain(|e| e.key != key);
            }
            if let Some(expr) = &expr {
                entry.extractors.push(Extractor {
                    key: key.clone(),
                    param_type,
                    plan: Extraction::for_type(expr, ty),
                    #[cfg(test)]
                    expression: expr.clone(),
                });
            }
            entry.params.insert(
                code.to_string(),
                ParamInfo {
                    resource_type: ty.to_string(),
                    code: code.to_string(),
                    key,
                    param_type,
                    url: url.to_string(),
                    documentation: documentation.clone(),
                    targets: targets.clone(),
                    stored_as: Vec::new(),
                },
            );
        }
    }

    /// Every supported parameter of `resource_type`, sorted by code (for the
    /// CapabilityStatement); empty for unknown types.
    pub fn params_for(&self, resource_type: &str) -> Vec<ParamInfo> {
        self.types
            .get(resource_type)
            .map(|t| t.params.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One parameter by type and code.
    pub fn param(&self, resource_type: &str, code: &str) -> Option<&ParamInfo> {
        self.types.get(resource_type)?.params.get(code)
    }

    /// Number of (type, parameter) pairs with an extraction expression.
    pub fn extractor_count(&self) -> usize {
        self.types.values().map(|t| t.extractors.len()).sum()
    }

    /// All index entries for a resource: every parameter of its type evaluated and the
    /// results converted by parameter type. Duplicate entries for one parameter are dropped.
    /// Unknown or missing `resourceType` yields nothing.
    pub fn extract(&self, resource: &Value) -> Vec<IndexEntry> {
        let Some(params) = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .and_then(|t| self.types.get(t))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for ex in &params.extractors {
            let start = out.len();
            for item in ex.plan.evaluate(resource) {
                crate::extract::index_item(&ex.key, ex.param_type, &item, &mut out);
            }
            crate::extract::dedup_from(&mut out, start);
        }
        out
    }
}
