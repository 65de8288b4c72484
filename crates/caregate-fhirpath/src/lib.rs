//! A small FHIRPath evaluator over `serde_json::Value` resources.
//!
//! It covers what the R4 core SearchParameter expressions use — paths with type-name roots,
//! choice elements, unions, `where`/`exists`/`first`/..., `as`/`is`/`ofType`,
//! `resolve() is T` on References, `extension('url')`, indexers, comparisons and boolean
//! logic — so search indexing can run without the StructureDefinitions. Anything outside that
//! subset is refused by [`Expression::compile`] rather than evaluated wrongly. The API is kept
//! to `compile` + `evaluate` so a complete engine can replace this one later.
//!
//! Known simplifications: no quantity/date arithmetic, dates compare as text, `resolve()`
//! yields only the reference's target type (enough for `resolve() is Patient`), and
//! primitive extensions (`_birthDate`) are not visible.

mod eval;
mod lexer;
mod parser;
mod types;

use serde_json::Value;

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

/// A compiled FHIRPath expression; immutable, so one instance can serve all threads.
#[derive(Debug, Clone)]
pub struct Expression {
    source: String,
    ast: parser::Ast,
}

/// One item of an evaluation result.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// An element inside the evaluated resource (an object, string, number or boolean; never
    /// an array — repeating elements are flattened).
    Node(&'a Value),
    Str(String),
    Bool(bool),
    Number(f64),
}

impl Expression {
    /// Parses `src`; fails (never panics) on syntax errors and on features this evaluator
    /// does not implement, so a compiled expression always evaluates meaningfully.
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

    /// Evaluates against `resource` (which is also `%resource` and the initial focus).
    /// Results of `resolve()` that are not resources in this document are left out.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Item<'a>> {
        let env = eval::Env { resource };
        let focus = [eval::Val::Node {
            v: resource,
            ty: None,
        }];
        eval::eval(&self.ast, &focus, &env)
            .into_iter()
            .filter_map(|v| match v {
                eval::Val::Node { v, .. } => Some(Item::Node(v)),
                eval::Val::Str(s) => Some(Item::Str(s.to_string())),
                eval::Val::Bool(b) => Some(Item::Bool(b)),
                eval::Val::Num(n) => Some(Item::Number(n)),
                eval::Val::Resolved(_) => None,
            })
            .collect()
    }

    /// Evaluates as a condition: `Some(b)` for a single boolean (or any single item, which
    /// counts as `true`), `None` for an empty or multi-item result.
    pub fn evaluate_bool(&self, resource: &Value) -> Option<bool> {
        match self.evaluate(resource).as_slice() {
            [Item::Bool(b)] | [Item::Node(Value::Bool(b))] => Some(*b),
            [_] => Some(true),
            _ => None,
        }
    }
}

impl std::fmt::Display for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests;
