//! Parsing of search requests (decoded query pairs) into a [`ParsedSearch`].
//!
//! Two kinds of failure are kept apart: a parameter caregate does not support (unknown
//! name, unsupported modifier) is an error only under `Prefer: handling=strict` and is
//! otherwise ignored and reported; a supported parameter with a malformed value is always
//! an error, because silently widening a search could return data the client did not ask for.

use caregate_core::{
    is_resource_type, parse_date_range, DateRange, ErrorKind, FhirError, IssueCode, RESOURCE_TYPES,
};
use caregate_store::index::{
    Condition, Filter, IncludeSpec, Prefix, SearchQuery, SortField, SortKey, StringMatch,
    TokenSystem, UriMatch,
};

use crate::extract::{is_absolute, split_reference};
use crate::registry::{ParamInfo, ParamType, SearchRegistry};
use crate::text::{normalize_string, split_once_unescaped, split_unescaped, unescape};
use crate::{ParsedSearch, Summary, DEFAULT_COUNT, MAX_COUNT};

/// Parameters a system-level search (`GET [base]?...`) accepts besides the result
/// parameters: the ones every resource type shares.
const SYSTEM_PARAMS: &[&str] = &[
    "_id",
    "_lastUpdated",
    "_profile",
    "_tag",
    "_security",
    "_source",
];

/// Why one parameter could not be used.
enum ParamError {
    /// Not supported by caregate: strict → error, lenient → ignored.
    Unsupported(String),
    /// Supported, but the value is malformed: always an error.
    Invalid(String),
}

type PResult<T> = Result<T, ParamError>;

fn invalid<T>(msg: impl Into<String>) -> PResult<T> {
    Err(ParamError::Invalid(msg.into()))
}

fn unsupported<T>(msg: impl Into<String>) -> PResult<T> {
    Err(ParamError::Unsupported(msg.into()))
}

struct State<'r> {
    reg: &'r SearchRegistry,
    resource_type: Option<&'r str>,
    strict: bool,
    out: ParsedSearch,
    summary_count: bool,
}

impl SearchRegistry {
    /// Parses a search request. `resource_type` `None` is a system-level search; `params`
    /// are the decoded query pairs in order (a repeated name ANDs, commas OR). With
    /// `strict`, unknown or unsupported parameters are a `BadRequest` naming the parameter;
    /// otherwise they are skipped and listed in [`ParsedSearch::ignored`]. Malformed values
    /// of supported parameters are a `BadRequest` either way.
    pub fn parse(
        &self,
        resource_type: Option<&str>,
        params: &[(String, String)],
        strict: bool,
    ) -> Result<ParsedSearch, FhirError> {
        if let Some(t) = resource_type {
            if !self.types.contains_key(t) {
                return Err(FhirError::new(
                    ErrorKind::NotFound,
                    format!("Unknown resource type '{t}'"),
                ));
            }
        }
        let mut st = State {
            reg: self,
            resource_type,
            strict,
            out: ParsedSearch {
                query: SearchQuery::new(resource_type),
                includes: Vec::new(),
                summary: None,
                elements: None,
                ignored: Vec::new(),
                self_params: Vec::new(),
            },
            summary_count: false,
        };
        st.out.query.count = DEFAULT_COUNT;
        // `_type` narrows which per-type keys system-level parameters use, wherever it appears.
        if resource_type.is_none() {
            for (name, value) in params.iter().filter(|(n, v)| n == "_type" && !v.is_empty()) {
                match parse_types(value) {
                    Ok(types) => st.restrict_types(types),
                    Err(ParamError::Invalid(msg)) => return Err(bad_value(name, msg)),
                    Err(ParamError::Unsupported(msg)) => st.unsupported(name, msg)?,
                }
            }
        }
        for (name, value) in params {
            if value.is_empty() {
                // FHIR: parameters without a value are ignored.
                continue;
            }
            match st.param(name, value) {
                Ok(()) => {}
                Err(ParamError::Invalid(msg)) => return Err(bad_value(name, msg)),
                Err(ParamError::Unsupported(msg)) => st.unsupported(name, msg)?,
            }
        }
        if st.summary_count {
            st.out.query.total = true;
            st.out.query.count = 0;
        }
        Ok(st.out)
    }
}

fn bad_value(name: &str, msg: String) -> FhirError {
    FhirError::at(ErrorKind::BadRequest, name, msg)
}

fn parse_types(value: &str) -> PResult<Vec<String>> {
    let mut types = Vec::new();
    for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !is_resource_type(t) {
            return invalid(format!("'{t}' is not a resource type"));
        }
        types.push(t.to_string());
    }
    Ok(types)
}

impl State<'_> {
    fn unsupported(&mut self, name: &str, msg: String) -> Result<(), FhirError> {
        if self.strict {
            return Err(
                FhirError::at(ErrorKind::BadRequest, name, msg).with_code(IssueCode::NotSupported)
            );
        }
        self.ignore(name, &msg);
        Ok(())
    }

    fn ignore(&mut self, name: &str, msg: &str) {
        tracing::debug!(param = name, reason = msg, "ignoring search parameter");
        if !self.out.ignored.iter().any(|n| n == name) {
            self.out.ignored.push(name.to_string());
        }
    }

    fn restrict_types(&mut self, types: Vec<String>) {
        let q = &mut self.out.query;
        if q.types.is_empty() {
            q.types = types;
        } else {
            // Repeated `_type` parameters AND: keep the types all of them allow.
            q.types.retain(|t| types.contains(t));
            if q.types.is_empty() {
                // Nothing can match; keep an impossible restriction rather than "all types".
                q.filters.push(Filter { any_of: Vec::new() });
            }
        }
    }

    fn keep(&mut self, name: &str, value: impl Into<String>) {
        self.out.self_params.push((name.to_string(), value.into()));
    }

    fn param(&mut self, name: &str, value: &str) -> PResult<()> {
        match name {
            "_format" | "_pretty" => Ok(()),
            "_count" => {
                let n = parse_count(value)?;
                self.out.query.count = n.min(MAX_COUNT);
                self.keep(name, self.out.query.count.to_string());
                Ok(())
            }
            "_offset" => {
                self.out.query.offset = parse_count(value)?;
                Ok(())
            }
            "_total" => {
                self.out.query.total = match value {
                    "none" => false,
                    "estimate" | "accurate" => true,
                    other => {
                        return invalid(format!(
                            "_total must be none, estimate or accurate, not '{other}'"
                        ))
                    }
                };
                self.keep(name, value);
                Ok(())
            }
            "_summary" => {
                let s = match value {
                    "true" => Summary::True,
                    "text" => Summary::Text,
                    "data" => Summary::Data,
                    "count" => Summary::Count,
                    "false" => Summary::False,
                    other => {
                        return invalid(format!(
                            "_summary must be true, text, data, count or false, not '{other}'"
                        ))
                    }
                };
                self.summary_count = s == Summary::Count;
                self.out.summary = Some(s);
                self.keep(name, value);
                Ok(())
            }
            "_elements" => {
                let names: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect();
                if names.is_empty() {
                    return Ok(());
                }
                self.keep(name, names.join(","));
                self.out.elements.get_or_insert_with(Vec::new).extend(names);
                Ok(())
            }
            "_sort" => self.sort(value),
            "_type" => match self.resource_type {
                // Already applied before the loop.
                None => {
                    self.keep(name, value);
                    Ok(())
                }
                Some(_) => unsupported("_type is only allowed in a system-level search"),
            },
            _ if name == "_include" || name.starts_with("_include:") => {
                self.include(name, value, false)
            }
            _ if name == "_revinclude" || name.starts_with("_revinclude:") => {
                self.include(name, value, true)
            }
            _ if name.starts_with("_has:") => {
                let filters = self.has(name, value)?;
                self.apply(name, value, filters);
                Ok(())
            }
            _ => {
                let filters = self.search_param(name, value)?;
                self.apply(name, value, filters);
                Ok(())
            }
        }
    }

    fn apply(&mut self, name: &str, value: &str, filters: Vec<Filter>) {
        self.out.query.filters.extend(filters);
        self.keep(name, value);
    }

    /// An ordinary (possibly chained) search parameter.
    fn search_param(&self, name: &str, value: &str) -> PResult<Vec<Filter>> {
        let (head, chain) = match name.split_once('.') {
            Some((h, c)) => (h, Some(c)),
            None => (name, None),
        };
        let (code, modifier) = match head.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (head, None),
        };
        let Some(ty) = self.resource_type else {
            if !SYSTEM_PARAMS.contains(&code) {
                return unsupported(format!(
                    "'{code}' is not supported in a system-level search (allowed: _id, _lastUpdated, _type, _profile, _tag, _security, _source)"
                ));
            }
            if chain.is_some() {
                return unsupported("chaining is not supported in a system-level search");
            }
            return self.system_param(code, modifier, value);
        };
        if let Some(chain) = chain {
            return self.chain(ty, code, modifier, chain, value);
        }
        self.filters_on(ty, code, modifier, value)
    }

    /// Filters for `code[:modifier]=value` on one resource type.
    fn filters_on(
        &self,
        ty: &str,
        code: &str,
        modifier: Option<&str>,
        value: &str,
    ) -> PResult<Vec<Filter>> {
        match code {
            "_id" => {
                if modifier.is_some() {
                    return unsupported("_id takes no modifiers");
                }
                let ids: Vec<Condition> = values(value)?.into_iter().map(Condition::Id).collect();
                Ok(vec![Filter { any_of: ids }])
            }
            "_lastUpdated" => {
                if modifier.is_some() {
                    return unsupported("_lastUpdated takes no modifiers");
                }
                let mut any_of = Vec::new();
                for v in values(value)? {
                    let (prefix, range) = parse_date(&v)?;
                    any_of.push(Condition::LastUpdated { prefix, range });
                }
                Ok(vec![Filter { any_of }])
            }
            _ => match self.reg.param(ty, code) {
                Some(info) => value_filters(info, modifier, value),
                None => unsupported(format!("Unknown search parameter '{code}' for {ty}")),
            },
        }
    }

    /// A system-level parameter: keys are per type, so positive conditions are ORed over the
    /// searched types and negative ones (`:not`, `:missing=true`) ANDed.
    fn system_param(
        &self,
        code: &str,
        modifier: Option<&str>,
        value: &str,
    ) -> PResult<Vec<Filter>> {
        if code == "_id" || code == "_lastUpdated" {
            return self.filters_on("Resource", code, modifier, value);
        }
        let types: Vec<&str> = if self.out.query.types.is_empty() {
            RESOURCE_TYPES.to_vec()
        } else {
            self.out.query.types.iter().map(String::as_str).collect()
        };
        let mut per_type: Vec<Vec<Filter>> = Vec::new();
        for ty in types {
            if let Some(info) = self.reg.param(ty, code) {
                per_type.push(value_filters(info, modifier, value)?);
            }
        }
        if per_type.is_empty() {
            return unsupported(format!("'{code}' is not supported for the searched types"));
        }
        let negative = per_type.iter().flatten().flat_map(|f| &f.any_of).any(|c| {
            matches!(
                c,
                Condition::Not(_) | Condition::Missing { missing: true, .. }
            )
        });
        if negative || per_type.iter().any(|f| f.len() != 1) {
            return Ok(per_type.into_iter().flatten().collect());
        }
        let any_of = per_type
            .into_iter()
            .flatten()
            .flat_map(|f| f.any_of)
            .collect();
        Ok(vec![Filter { any_of }])
    }

    /// `ref[:Type].param[:mod]=value`: one level of chaining.
    fn chain(
        &self,
        ty: &str,
        code: &str,
        modifier: Option<&str>,
        chain: &str,
        value: &str,
    ) -> PResult<Vec<Filter>> {
        let Some(info) = self.reg.param(ty, code) else {
            return unsupported(format!("Unknown search parameter '{code}' for {ty}"));
        };
        if info.param_type != ParamType::Reference {
            return invalid(format!(
                "'{code}' is not a reference parameter and cannot be chained"
            ));
        }
        if chain.contains('.') {
            return unsupported("only one level of chaining is supported");
        }
        let target = match modifier {
            Some(t) if is_resource_type(t) => {
                if !info.targets.is_empty() && !info.targets.iter().any(|x| x == t) {
                    return invalid(format!("'{code}' cannot refer to {t}"));
                }
                t.to_string()
            }
            Some(m) => return unsupported(format!("modifier ':{m}' cannot be used for chaining")),
            None => match info.targets.as_slice() {
                [only] => only.clone(),
                many => {
                    return invalid(format!(
                        "'{code}' can refer to several types ({}); add a type modifier, e.g. {code}:{}.{chain}",
                        many.join(", "),
                        many.first().map_or("Patient", String::as_str)
                    ))
                }
            },
        };
        let (inner_code, inner_mod) = match chain.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (chain, None),
        };
        let inner = self.filters_on(&target, inner_code, inner_mod, value)?;
        Ok(wrap(inner, |c| Condition::Chain {
            param: info.key.clone(),
            target_type: target.clone(),
            inner: Box::new(c),
        }))
    }

    /// `_has:Type:refParam:param[:mod]=value`: reverse chaining.
    fn has(&self, name: &str, value: &str) -> PResult<Vec<Filter>> {
        let Some(ty) = self.resource_type else {
            return unsupported("_has is not supported in a system-level search");
        };
        let rest = name.strip_prefix("_has:").unwrap_or(name);
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(ref_code), Some(inner)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return invalid("_has needs the form _has:Type:reference:parameter");
        };
        if !is_resource_type(source) {
            return invalid(format!("'{source}' is not a resource type"));
        }
        if inner.starts_with("_has:") || inner.contains('.') {
            return unsupported("nested _has and chains inside _has are not supported");
        }
        let Some(ref_info) = self.reg.param(source, ref_code) else {
            return unsupported(format!(
                "Unknown search parameter '{ref_code}' for {source}"
            ));
        };
        if ref_info.param_type != ParamType::Reference {
            return invalid(format!(
                "'{source}:{ref_code}' is not a reference parameter"
            ));
        }
        if !ref_info.targets.is_empty() && !ref_info.targets.iter().any(|t| t == ty) {
            return invalid(format!("{source}.{ref_code} cannot refer to {ty}"));
        }
        let (inner_code, inner_mod) = match inner.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (inner, None),
        };
        let filters = self.filters_on(source, inner_code, inner_mod, value)?;
        Ok(wrap(filters, |c| Condition::Has {
            source_type: source.to_string(),
            param: ref_info.key.clone(),
            inner: Box::new(c),
        }))
    }

    fn sort(&mut self, value: &str) -> PResult<()> {
        let mut used = Vec::new();
        for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (descending, code) = match field.strip_prefix('-') {
                Some(c) => (true, c),
                None => (false, field),
            };
            let sort_field = match code {
                "_id" => Some(SortField::Id),
                "_lastUpdated" => Some(SortField::LastUpdated),
                _ => self
                    .resource_type
                    .and_then(|t| self.reg.param(t, code))
                    .map(|info| SortField::Param {
                        params: info.row_keys(),
                        kind: info.param_type.index_kind(),
                    }),
            };
            match sort_field {
                Some(field) => {
                    self.out.query.sort.push(SortKey { field, descending });
                    used.push(if descending {
                        format!("-{code}")
                    } else {
                        code.to_string()
                    });
                }
                None => {
                    let msg = match self.resource_type {
                        Some(t) => {
                            format!("cannot sort by '{code}': not a search parameter of {t}")
                        }
                        None => format!("cannot sort by '{code}' in a system-level search"),
                    };
                    if self.strict {
                        return unsupported(msg);
                    }
                    // The other sort keys still apply.
                    self.ignore("_sort", &msg);
                }
            }
        }
        if !used.is_empty() {
            self.keep("_sort", used.join(","));
        }
        Ok(())
    }

    fn include(&mut self, name: &str, value: &str, reverse: bool) -> PResult<()> {
        let iterate = match name.split_once(':').map(|(_, m)| m) {
            None => false,
            Some("iterate" | "recurse") => true,
            Some(m) => return unsupported(format!("modifier ':{m}' is not supported on {name}")),
        };
        let mut specs = Vec::new();
        if value == "*" {
            let Some(ty) = self.resource_type else {
                return unsupported("'*' needs a resource type");
            };
            specs.extend(self.reference_params(ty, reverse, iterate, None));
        } else {
            let mut parts = value.split(':');
            let (Some(source), Some(code), target, None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return invalid(format!(
                    "{name} must look like Type:parameter or Type:parameter:TargetType"
                ));
            };
            if !is_resource_type(source) {
                return invalid(format!("'{source}' is not a resource type"));
            }
            if let Some(t) = target {
                if !is_resource_type(t) {
                    return invalid(format!("'{t}' is not a resource type"));
                }
            }
            if code == "*" {
                specs.extend(self.reference_params(source, reverse, iterate, target));
            } else {
                match self.reg.param(source, code) {
                    Some(info) if info.param_type == ParamType::Reference => {
                        if let Some(t) = target {
                            if !info.targets.is_empty() && !info.targets.iter().any(|x| x == t) {
                                return invalid(format!("{source}:{code} cannot refer to {t}"));
                            }
                        }
                        specs.push(IncludeSpec {
                            source_type: source.to_string(),
                            param: info.key.clone(),
                            target_type: target.map(str::to_string),
                            reverse,
                            iterate,
                        });
                    }
                    Some(_) => {
                        return invalid(format!("{source}:{code} is not a reference parameter"))
                    }
                    None => {
                        return unsupported(format!(
                            "Unknown search parameter '{code}' for {source}"
                        ))
                    }
                }
            }
        }
        self.out.includes.extend(specs);
        self.keep(name, value);
        Ok(())
    }

    fn reference_params(
        &self,
        ty: &str,
        reverse: bool,
        iterate: bool,
        target: Option<&str>,
    ) -> Vec<IncludeSpec> {
        self.reg
            .params_for(ty)
            .into_iter()
            .filter(|p| p.param_type == ParamType::Reference)
            .filter(|p| {
                target.is_none_or(|t| p.targets.is_empty() || p.targets.iter().any(|x| x == t))
            })
            .map(|p| IncludeSpec {
                source_type: ty.to_string(),
                param: p.key,
                target_type: target.map(str::to_string),
                reverse,
                iterate,
            })
            .collect()
    }
}

/// Wraps every condition (keeping the filter structure) — for chains and `_has`.
fn wrap(filters: Vec<Filter>, f: impl Fn(Condition) -> Condition) -> Vec<Filter> {
    filters
        .into_iter()
        .map(|filter| Filter {
            any_of: filter.any_of.into_iter().map(&f).collect(),
        })
        .collect()
}

fn parse_count(value: &str) -> PResult<usize> {
    value
        .trim()
        .parse::<usize>()
        .or_else(|_| invalid(format!("'{value}' is not a non-negative integer")))
}

/// The comma-separated values of a parameter, unescaped; empty pieces are dropped.
fn values(value: &str) -> PResult<Vec<String>> {
    let vals: Vec<String> = split_unescaped(value, ',')
        .into_iter()
        .filter(|v| !v.is_empty())
        .map(unescape)
        .collect();
    if vals.is_empty() {
        return invalid("no value given");
    }
    Ok(vals)
}

/// The raw (still escaped) comma-separated pieces, for types that split further on `|`.
fn raw_values(value: &str) -> PResult<Vec<&str>> {
    let vals: Vec<&str> = split_unescaped(value, ',')
        .into_iter()
        .filter(|v| !v.is_empty())
        .collect();
    if vals.is_empty() {
        return invalid("no value given");
    }
    Ok(vals)
}

/// The filters for `code[:modifier]=value` on one parameter, asked of the rows its values
/// are stored under.
fn value_filters(info: &ParamInfo, modifier: Option<&str>, value: &str) -> PResult<Vec<Filter>> {
    let filters = own_value_filters(info, modifier, value)?;
    if info.stored_as.is_empty() {
        return Ok(filters);
    }
    Ok(filters
        .into_iter()
        .map(|f| Filter {
            any_of: f
                .any_of
                .into_iter()
                .map(|c| on_stored_rows(&info.stored_as, c))
                .collect(),
        })
        .collect())
}

/// A condition on a parameter that shares other parameters' rows, as a condition on
/// theirs: some member matches; `:missing=true` when no member has a value.
fn on_stored_rows(members: &[caregate_store::index::ParamKey], c: Condition) -> Condition {
    let any =
        |c: &Condition| Condition::AnyOf(members.iter().map(|m| c.clone().on_param(m)).collect());
    match c {
        Condition::Not(inner) => Condition::Not(Box::new(on_stored_rows(members, *inner))),
        Condition::Missing {
            param,
            kind,
            missing: true,
        } => Condition::Not(Box::new(any(&Condition::Missing {
            param,
            kind,
            missing: false,
        }))),
        other => any(&other),
    }
}

/// The filters for one parameter value on one type, on the parameter's own key.
fn own_value_filters(
    info: &ParamInfo,
    modifier: Option<&str>,
    value: &str,
) -> PResult<Vec<Filter>> {
    let key = &info.key;
    let one = |any_of: Vec<Condition>| Ok(vec![Filter { any_of }]);
    if modifier == Some("missing") {
        let mut any_of = Vec::new();
        for v in values(value)? {
            let missing = match v.as_str() {
                "true" => true,
                "false" => false,
                other => return invalid(format!(":missing takes true or false, not '{other}'")),
            };
            any_of.push(Condition::Missing {
                param: key.clone(),
                kind: info.param_type.index_kind(),
                missing,
            });
        }
        return one(any_of);
    }
    let unsupported_modifier = |m: &str| {
        unsupported(format!(
            "modifier ':{m}' is not supported on '{}'",
            info.code
        ))
    };
    match info.param_type {
        ParamType::String => {
            let mode = match modifier {
                None => StringMatch::StartsWith,
                Some("exact") => StringMatch::Exact,
                Some("contains") => StringMatch::Contains,
                Some(m) => return unsupported_modifier(m),
            };
            let mut any_of = Vec::new();
            for v in values(value)? {
                let value = if mode == StringMatch::Exact {
                    v
                } else {
                    normalize_string(&v)
                };
                any_of.push(Condition::String {
                    param: key.clone(),
                    value,
                    mode,
                });
            }
            one(any_of)
        }
        ParamType::Token => match modifier {
            None => one(raw_values(value)?
                .into_iter()
                .map(|v| token_condition(key, v))
                .collect::<PResult<_>>()?),
            // `:not=a,b` means neither a nor b: one negated filter per value, ANDed.
            Some("not") => raw_values(value)?
                .into_iter()
                .map(|v| {
                    Ok(Filter {
                        any_of: vec![Condition::Not(Box::new(token_condition(key, v)?))],
                    })
                })
                .collect(),
            Some("text") => one(values(value)?
                .into_iter()
                .map(|v| Condition::TokenText {
                    param: key.clone(),
                    text: v.trim().to_lowercase(),
                })
                .collect()),
            Some(m) => unsupported_modifier(m),
        },
        ParamType::Reference => {
            let type_modifier = match modifier {
                None => None,
                Some(t) if is_resource_type(t) => {
                    if !info.targets.is_empty() && !info.targets.iter().any(|x| x == t) {
                        return invalid(format!("'{}' cannot refer to {t}", info.code));
                    }
                    Some(t)
                }
                Some(m) => return unsupported_modifier(m),
            };
            one(values(value)?
                .into_iter()
                .map(|v| reference_condition(info, type_modifier, &v))
                .collect::<PResult<_>>()?)
        }
        ParamType::Date => {
            if let Some(m) = modifier {
                return unsupported_modifier(m);
            }
            let mut any_of = Vec::new();
            for v in values(value)? {
                let (prefix, range) = parse_date(&v)?;
                any_of.push(Condition::Date {
                    param: key.clone(),
                    prefix,
                    range,
                });
            }
            one(any_of)
        }
        ParamType::Number => {
            if let Some(m) = modifier {
                return unsupported_modifier(m);
            }
            let mut any_of = Vec::new();
            for v in values(value)? {
                let (prefix, rest) = split_prefix(&v)?;
                let (value, tolerance) = parse_number(rest)?;
                any_of.push(Condition::Number {
                    param: key.clone(),
                    prefix,
                    value,
                    tolerance,
                });
            }
            one(any_of)
        }
        ParamType::Quantity => {
            if let Some(m) = modifier {
                return unsupported_modifier(m);
            }
            one(raw_values(value)?
                .into_iter()
                .map(|v| quantity_condition(key, v))
                .collect::<PResult<_>>()?)
        }
        ParamType::Uri => {
            let mode = match modifier {
                None => UriMatch::Exact,
                Some("below") => UriMatch::Below,
                Some("above") => UriMatch::Above,
                Some(m) => return unsupported_modifier(m),
            };
            one(values(value)?
                .into_iter()
                .map(|uri| Condition::Uri {
                    param: key.clone(),
                    uri,
                    mode,
                })
                .collect())
        }
    }
}

/// `code`, `system|code`, `|code` or `system|`.
fn token_condition(key: &str, raw: &str) -> PResult<Condition> {
    let (system, code) = match split_once_unescaped(raw, '|') {
        None => (TokenSystem::Any, Some(unescape(raw))),
        Some((sys, code)) => {
            let (sys, code) = (unescape(sys), unescape(code));
            match (sys.is_empty(), code.is_empty()) {
                (true, true) => return invalid("a token needs a code or a system"),
                (true, false) => (TokenSystem::None, Some(code)),
                (false, true) => (TokenSystem::Is(sys), None),
                (false, false) => (TokenSystem::Is(sys), Some(code)),
            }
        }
    };
    Ok(Condition::Token {
        param: key.to_string(),
        system,
        code,
    })
}

/// `123`, `Patient/123`, `Patient/123/_history/2` or an absolute URL / canonical.
fn reference_condition(
    info: &ParamInfo,
    type_modifier: Option<&str>,
    v: &str,
) -> PResult<Condition> {
    let cond = |target_type: Option<&str>, target_id: Option<&str>, url: Option<&str>| {
        Condition::Reference {
            param: info.key.clone(),
            target_type: target_type.map(str::to_string),
            target_id: target_id.map(str::to_string),
            url: url.map(str::to_string),
        }
    };
    if is_absolute(v) {
        if let (Some(t), Some((ty, _))) = (type_modifier, split_reference(v)) {
            if t != ty {
                return invalid(format!("'{v}' is not a {t} reference"));
            }
        }
        return Ok(cond(None, None, Some(v)));
    }
    if v.contains('/') {
        let Some((ty, id)) = split_reference(v) else {
            return invalid(format!("'{v}' is not a valid reference (expected Type/id)"));
        };
        if type_modifier.is_some_and(|t| t != ty) {
            return invalid(format!(
                "'{v}' is not a {} reference",
                type_modifier.unwrap_or_default()
            ));
        }
        return Ok(cond(Some(ty), Some(id), None));
    }
    let ty = type_modifier.or(match info.targets.as_slice() {
        [only] => Some(only.as_str()),
        _ => None,
    });
    Ok(cond(ty, Some(v), None))
}

/// `[prefix]number[|system|code]`.
fn quantity_condition(key: &str, raw: &str) -> PResult<Condition> {
    let parts = split_unescaped(raw, '|');
    let (number, system, code) = match parts.as_slice() {
        [n] => (*n, None, None),
        [n, s, c] => {
            let opt = |x: &str| Some(unescape(x)).filter(|x| !x.is_empty());
            (*n, opt(s), opt(c))
        }
        _ => {
            return invalid(format!(
                "'{raw}' is not a quantity (expected number|system|code)"
            ))
        }
    };
    let number = unescape(number);
    let (prefix, rest) = split_prefix(&number)?;
    let (value, tolerance) = parse_number(rest)?;
    Ok(Condition::Quantity {
        param: key.to_string(),
        prefix,
        value,
        tolerance,
        system,
        code,
    })
}

/// Splits a leading comparison prefix (`ge2020`); no prefix means `eq`.
fn split_prefix(v: &str) -> PResult<(Prefix, &str)> {
    let head: Vec<char> = v.chars().take(3).collect();
    // Two letters then a digit or sign is a prefix attempt (`xx2020`); other text is left
    // for the value parser to reject as a whole (`yesterday` is "not a valid date").
    let looks_like_prefix = head.len() == 3
        && head[..2].iter().all(char::is_ascii_alphabetic)
        && (head[2].is_ascii_digit() || head[2] == '-' || head[2] == '+' || head[2] == '.');
    if head.len() == 2 && head.iter().all(char::is_ascii_alphabetic) {
        // A bare prefix with nothing after it.
        return invalid(format!("'{v}' has no value after the prefix"));
    }
    if !looks_like_prefix {
        return Ok((Prefix::Eq, v));
    }
    let prefix = match &v[..2] {
        "eq" => Prefix::Eq,
        "ne" => Prefix::Ne,
        "gt" => Prefix::Gt,
        "lt" => Prefix::Lt,
        "ge" => Prefix::Ge,
        "le" => Prefix::Le,
        "sa" => Prefix::Sa,
        "eb" => Prefix::Eb,
        "ap" => Prefix::Ap,
        other => {
            return invalid(format!(
                "unknown prefix '{other}' (expected eq, ne, gt, lt, ge, le, sa, eb or ap)"
            ))
        }
    };
    Ok((prefix, &v[2..]))
}

fn parse_date(v: &str) -> PResult<(Prefix, DateRange)> {
    let (prefix, rest) = split_prefix(v)?;
    // A `+` in a time zone arrives as a space when the client did not percent-encode it.
    let range = parse_date_range(rest).or_else(|| parse_date_range(&rest.replace(' ', "+")));
    match range {
        Some(r) => Ok((prefix, r)),
        None => invalid(format!(
            "'{rest}' is not a valid date (expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][Z|±hh:mm])"
        )),
    }
}

/// A decimal and half the unit of its last significant digit: `100` → ±0.5, `1.50` → ±0.005.
fn parse_number(v: &str) -> PResult<(f64, f64)> {
    let bad = || invalid(format!("'{v}' is not a valid number"));
    let (mantissa, exponent) = match v.find(['e', 'E']) {
        Some(i) => match v[i + 1..].parse::<i32>() {
            Ok(e) => (&v[..i], e),
            Err(_) => return bad(),
        },
        None => (v, 0),
    };
    let digits = mantissa.strip_prefix(['-', '+']).unwrap_or(mantissa);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || !all_digits(int)
        || !all_digits(frac)
        || (digits.contains('.') && frac.is_empty())
    {
        return bad();
    }
    let Ok(value) = v.parse::<f64>() else {
        return bad();
    };
    if !value.is_finite() {
        return bad();
    }
    let decimals = i32::try_from(frac.len()).unwrap_or(i32::MAX);
    let tolerance = 0.5 * 10f64.powi(exponent.saturating_sub(decimals));
    Ok((value, tolerance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_precision() {
        let ok = |v: &str| parse_number(v).ok().expect("valid");
        assert_eq!(ok("100"), (100.0, 0.5));
        assert_eq!(ok("1.50"), (1.5, 0.005));
        assert_eq!(ok("-2.5"), (-2.5, 0.05));
        assert_eq!(ok("1e2"), (100.0, 50.0));
        for bad in [
            "", "abc", "1.", ".5", "1e", "1x", "--1", "NaN", "inf", "1e999",
        ] {
            assert!(parse_number(bad).is_err(), "{bad}");
        }
    }
}
