//! Translates a [`SearchQuery`] into SQL over the index tables. Every condition becomes a
//! `rid IN (subquery on one index table)` so SQLite can drive each from its `(param, value)`
//! index; conditions nest for chaining and `_has`.

use crate::index::{Condition, Prefix, SearchQuery, SortField, StringMatch, TokenSystem, UriMatch};
use crate::manifest;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlArg {
    Text(String),
    Int(i64),
    Real(f64),
}

pub(crate) struct BuiltQuery {
    pub select_sql: String,
    pub select_args: Vec<SqlArg>,
    pub count_sql: String,
    pub count_args: Vec<SqlArg>,
}

struct Builder {
    args: Vec<SqlArg>,
}

impl Builder {
    fn arg(&mut self, a: SqlArg) -> String {
        self.args.push(a);
        format!("?{}", self.args.len())
    }
    fn text(&mut self, s: &str) -> String {
        self.arg(SqlArg::Text(s.to_string()))
    }
    /// A parameter key, resolved to its integer id inside the query.
    fn param(&mut self, key: &str) -> String {
        let p = self.text(key);
        format!("(SELECT pid FROM param WHERE key = {p})")
    }
    fn int(&mut self, i: i64) -> String {
        self.arg(SqlArg::Int(i))
    }
    fn real(&mut self, f: f64) -> String {
        self.arg(SqlArg::Real(f))
    }
}

pub(crate) fn build_search(q: &SearchQuery) -> BuiltQuery {
    let mut b = Builder { args: Vec::new() };
    let mut where_sql = String::from("r.deleted = 0");
    // With filters, the index subqueries are far more selective than the type: the unary
    // `+` keeps SQLite from scanning every resource of the type and probing each.
    let type_column = if q.filters.iter().any(|f| !f.any_of.is_empty()) {
        "+r.rtype"
    } else {
        "r.rtype"
    };
    if let Some(t) = &q.resource_type {
        let p = b.text(t);
        where_sql.push_str(&format!(" AND {type_column} = {p}"));
    } else if !q.types.is_empty() {
        let list: Vec<String> = q.types.iter().map(|t| b.text(t)).collect();
        where_sql.push_str(&format!(" AND {type_column} IN ({})", list.join(", ")));
    }
    for filter in &q.filters {
        if filter.any_of.is_empty() {
            continue;
        }
        let parts: Vec<String> = filter
            .any_of
            .iter()
            .map(|c| condition(&mut b, c, "r"))
            .collect();
        where_sql.push_str(&format!(" AND ({})", parts.join(" OR ")));
    }
    let count_args = b.args.clone();
    let count_sql = format!("SELECT COUNT(*) FROM resource r WHERE {where_sql}");

    // The page is chosen over the resource rows alone, each sort key computed once per row
    // as a column of the inner query; only the page's rows then fetch their version (and
    // content), instead of every match carrying its content through the sort.
    let mut keys = Vec::new();
    let mut inner_order = Vec::new();
    let mut outer_order = Vec::new();
    for (i, key) in q.sort.iter().enumerate() {
        let dir = if key.descending { "DESC" } else { "ASC" };
        let expr = match &key.field {
            SortField::Id => "r.id".to_string(),
            SortField::LastUpdated => "r.last_updated_ms".to_string(),
            SortField::Param { params, kind } => {
                let tag = manifest::kind_tag(*kind);
                let descending = i32::from(key.descending);
                let params: String = params.iter().map(|p| format!(", {}", b.param(p))).collect();
                format!(
                    "cg_sort_key((SELECT ix FROM resource_ix WHERE rid = r.rid), {tag}, {descending}{params})"
                )
            }
        };
        keys.push(format!(", {expr} AS k{i}"));
        // Resources without a value sort last in either direction.
        inner_order.push(format!("k{i} IS NULL, k{i} {dir}"));
        outer_order.push(format!("page.k{i} IS NULL, page.k{i} {dir}"));
    }
    inner_order.push("r.rid ASC".to_string());
    outer_order.push("page.rid ASC".to_string());
    let limit = b.int(q.count as i64);
    let offset = b.int(q.offset as i64);
    let select_sql = format!(
        "SELECT page.rtype, page.id, v.version, v.last_updated, v.last_updated_ms, v.method, v.hash, v.content
         FROM (SELECT r.rid, r.rtype, r.id, r.seq{} FROM resource r
               WHERE {where_sql} ORDER BY {} LIMIT {limit} OFFSET {offset}) AS page
         JOIN version v ON v.seq = page.seq
         ORDER BY {}",
        keys.concat(),
        inner_order.join(", "),
        outer_order.join(", ")
    );
    BuiltQuery {
        select_sql,
        select_args: b.args,
        count_sql,
        count_args,
    }
}

/// The smallest string greater than every string starting with `prefix`, for index range scans.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// SQL for one condition on the resource aliased `alias`.
fn condition(b: &mut Builder, c: &Condition, alias: &str) -> String {
    let rid = format!("{alias}.rid");
    match c {
        Condition::Id(id) => {
            let p = b.text(id);
            format!("{alias}.id = {p}")
        }
        Condition::LastUpdated { prefix, range } => {
            let col = format!("{alias}.last_updated_ms");
            // A stored instant is a point: [t, t+1ms).
            range_predicate(
                b,
                *prefix,
                &col,
                &format!("({col} + 1)"),
                range.start,
                range.end,
            )
        }
        Condition::String { param, value, mode } => {
            let p = b.param(param);
            let pred = match mode {
                StringMatch::Exact => {
                    let v = b.text(value);
                    format!("exact = {v}")
                }
                StringMatch::StartsWith => {
                    let lo = b.text(value);
                    match prefix_upper_bound(value) {
                        Some(hi) => {
                            let hi = b.text(&hi);
                            format!("norm >= {lo} AND norm < {hi}")
                        }
                        None => format!("norm >= {lo}"),
                    }
                }
                StringMatch::Contains => {
                    let v = b.text(&format!("%{}%", escape_like(value)));
                    format!("norm LIKE {v} ESCAPE '\\'")
                }
            };
            format!("{rid} IN (SELECT rid FROM ix_string WHERE param = {p} AND {pred})")
        }
        Condition::Token {
            param,
            system,
            code,
        } => {
            let p = b.param(param);
            let mut pred = String::new();
            if let Some(code) = code {
                let v = b.text(code);
                pred.push_str(&format!(" AND code = {v}"));
            }
            match system {
                TokenSystem::Any => {}
                TokenSystem::None => pred.push_str(" AND system = ''"),
                TokenSystem::Is(s) => {
                    let v = b.text(s);
                    pred.push_str(&format!(" AND system = {v}"));
                }
            }
            format!("{rid} IN (SELECT rid FROM ix_token WHERE param = {p}{pred})")
        }
        Condition::TokenText { param, text } => {
            let p = b.param(param);
            let v = b.text(&format!("{}%", escape_like(&text.to_lowercase())));
            format!("{rid} IN (SELECT rid FROM ix_token WHERE param = {p} AND text LIKE {v} ESCAPE '\\')")
        }
        Condition::Reference {
            param,
            target_type,
            target_id,
            url,
        } => {
            let p = b.param(param);
            let mut pred = String::new();
            if let Some(id) = target_id {
                let v = b.text(id);
                pred.push_str(&format!(" AND tid = {v}"));
            }
            if let Some(t) = target_type {
                let v = b.text(t);
                pred.push_str(&format!(" AND ttype = {v}"));
            }
            if let Some(u) = url {
                let v = b.text(u);
                pred.push_str(&format!(" AND url = {v}"));
            }
            format!("{rid} IN (SELECT rid FROM ix_reference WHERE param = {p}{pred})")
        }
        Condition::Date {
            param,
            prefix,
            range,
        } => {
            let p = b.param(param);
            let pred = range_predicate(b, *prefix, "lo", "hi", range.start, range.end);
            format!("{rid} IN (SELECT rid FROM ix_date WHERE param = {p} AND {pred})")
        }
        Condition::Number {
            param,
            prefix,
            value,
            tolerance,
        } => {
            let p = b.param(param);
            let pred = number_predicate(b, *prefix, *value, *tolerance);
            format!("{rid} IN (SELECT rid FROM ix_number WHERE param = {p} AND {pred})")
        }
        Condition::Quantity {
            param,
            prefix,
            value,
            tolerance,
            system,
            code,
        } => {
            let p = b.param(param);
            let mut pred = number_predicate(b, *prefix, *value, *tolerance);
            if let Some(s) = system {
                let v = b.text(s);
                pred.push_str(&format!(" AND system = {v}"));
            }
            if let Some(cd) = code {
                let v = b.text(cd);
                let u = b.text(cd);
                pred.push_str(&format!(" AND (code = {v} OR (code = '' AND unit = {u}))"));
            }
            format!("{rid} IN (SELECT rid FROM ix_quantity WHERE param = {p} AND {pred})")
        }
        Condition::Uri { param, uri, mode } => {
            let p = b.param(param);
            let pred = match mode {
                UriMatch::Exact => {
                    let v = b.text(uri);
                    format!("uri = {v}")
                }
                UriMatch::Below => {
                    let v = b.text(&format!("{}%", escape_like(uri)));
                    format!("uri LIKE {v} ESCAPE '\\'")
                }
                UriMatch::Above => {
                    let v = b.text(uri);
                    format!("{v} LIKE (REPLACE(REPLACE(REPLACE(uri, '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%') ESCAPE '\\'")
                }
            };
            format!("{rid} IN (SELECT rid FROM ix_uri WHERE param = {p} AND {pred})")
        }
        Condition::Missing {
            param,
            kind,
            missing,
        } => {
            let p = b.param(param);
            let tag = manifest::kind_tag(*kind);
            let exists =
                format!("cg_has((SELECT ix FROM resource_ix WHERE rid = {rid}), {tag}, {p})");
            if *missing {
                format!("NOT {exists}")
            } else {
                exists
            }
        }
        Condition::AnyOf(conditions) if conditions.is_empty() => "0".to_string(),
        Condition::AnyOf(conditions) => {
            let parts: Vec<String> = conditions.iter().map(|c| condition(b, c, alias)).collect();
            format!("({})", parts.join(" OR "))
        }
        Condition::Not(inner) => {
            let inner = condition(b, inner, alias);
            format!("NOT ({inner})")
        }
        Condition::Chain {
            param,
            target_type,
            inner,
        } => {
            let p = b.param(param);
            let t = b.text(target_type);
            let t2 = b.text(target_type);
            let inner_sql = condition(b, inner, "c");
            format!(
                "{rid} IN (SELECT x.rid FROM ix_reference x WHERE x.param = {p} AND x.ttype = {t} AND x.tid IN \
                 (SELECT c.id FROM resource c WHERE c.rtype = {t2} AND c.deleted = 0 AND {inner_sql}))"
            )
        }
        Condition::Has {
            source_type,
            param,
            inner,
        } => {
            let p = b.param(param);
            let s = b.text(source_type);
            let inner_sql = condition(b, inner, "h");
            format!(
                "{alias}.id IN (SELECT x.tid FROM ix_reference x JOIN resource h ON h.rid = x.rid \
                 WHERE x.param = {p} AND x.ttype = {alias}.rtype AND h.rtype = {s} AND h.deleted = 0 AND {inner_sql})"
            )
        }
    }
}

/// Date/instant comparison between a stored range `[lo, hi)` and the searched range
/// `[start, end)`, following the R4 prefix definitions (search.html#prefix).
fn range_predicate(
    b: &mut Builder,
    prefix: Prefix,
    lo: &str,
    hi: &str,
    start: i64,
    end: i64,
) -> String {
    let s = b.int(start);
    let e = b.int(end);
    match prefix {
        Prefix::Eq => format!("({lo} >= {s} AND {hi} <= {e})"),
        Prefix::Ne => format!("NOT ({lo} >= {s} AND {hi} <= {e})"),
        Prefix::Gt => format!("({hi} > {e})"),
        Prefix::Lt => format!("({lo} < {s})"),
        Prefix::Ge => format!("({hi} > {e} OR ({lo} >= {s} AND {hi} <= {e}))"),
        Prefix::Le => format!("({lo} < {s} OR ({lo} >= {s} AND {hi} <= {e}))"),
        Prefix::Sa => format!("({lo} >= {e})"),
        Prefix::Eb => format!("({hi} <= {s})"),
        Prefix::Ap => {
            // Approximately: overlapping the searched range widened by 10% of its distance from now.
            let now = chrono::Utc::now().timestamp_millis();
            let slack = ((now - start).abs() / 10).max(86_400_000);
            let ws = b.int(start.saturating_sub(slack));
            let we = b.int(end.saturating_add(slack));
            format!("({lo} < {we} AND {hi} > {ws})")
        }
    }
}

fn number_predicate(b: &mut Builder, prefix: Prefix, value: f64, tolerance: f64) -> String {
    match prefix {
        Prefix::Eq | Prefix::Ne => {
            let lo = b.real(value - tolerance);
            let hi = b.real(value + tolerance);
            let inside = format!("(value >= {lo} AND value < {hi})");
            if prefix == Prefix::Ne {
                format!("NOT {inside}")
            } else {
                inside
            }
        }
        Prefix::Gt | Prefix::Sa => {
            let v = b.real(value);
            format!("value > {v}")
        }
        Prefix::Lt | Prefix::Eb => {
            let v = b.real(value);
            format!("value < {v}")
        }
        Prefix::Ge => {
            let v = b.real(value);
            format!("value >= {v}")
        }
        Prefix::Le => {
            let v = b.real(value);
            format!("value <= {v}")
        }
        Prefix::Ap => {
            let slack = (value.abs() * 0.1).max(tolerance);
            let lo = b.real(value - slack);
            let hi = b.real(value + slack);
            format!("(value >= {lo} AND value <= {hi})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound("smi").as_deref(), Some("smj"));
        assert_eq!(prefix_upper_bound("").as_deref(), None);
    }
}
