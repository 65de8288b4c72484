//! Expressions that only ask whether child elements are present.
//!
//! Many FHIR invariants are boolean combinations of `path.exists()` and `path.empty()`
//! (`value.empty() or system.exists()`, ``text.`div`.exists()``,
//! `(detail.exists() and measure.exists()) or detail.exists().not()`). A validator can
//! answer those from the JSON members without running the evaluator;
//! [`Expression::existence`] gives it the expression in that form, read from the parsed
//! syntax tree (so spacing, parentheses and backticks are FHIRPath's, not a second parser's).

use std::sync::Arc;

use crate::parser::{Expr, Fun, Op};
use crate::Expression;

/// A boolean combination of `path.exists()` over child paths of the focus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existence {
    /// `a.b.exists()`: the child names from the focus, in order.
    Exists(Box<[Arc<str>]>),
    Not(Box<Existence>),
    And(Box<Existence>, Box<Existence>),
    Or(Box<Existence>, Box<Existence>),
    Implies(Box<Existence>, Box<Existence>),
}

impl Expression {
    /// The expression as an [`Existence`] when it is nothing but `exists()` and `empty()`
    /// (without criteria) on paths of child names, combined with `and`, `or`, `implies`
    /// and `.not()`; `None` for anything else.
    pub fn existence(&self) -> Option<Existence> {
        existence(&self.ast)
    }
}

fn existence(e: &Expr) -> Option<Existence> {
    match e {
        Expr::Bin(op, a, b) => {
            let (a, b) = (Box::new(existence(a)?), Box::new(existence(b)?));
            match op {
                Op::And => Some(Existence::And(a, b)),
                Op::Or => Some(Existence::Or(a, b)),
                Op::Implies => Some(Existence::Implies(a, b)),
                _ => None,
            }
        }
        Expr::Call(call) if call.args.is_empty() => {
            let recv = call.recv.as_ref()?;
            match call.fun {
                Fun::Exists => Some(Existence::Exists(child_path(recv)?.into())),
                Fun::Empty => Some(Existence::Not(Box::new(Existence::Exists(
                    child_path(recv)?.into(),
                )))),
                Fun::Not => Some(Existence::Not(Box::new(existence(recv)?))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `a.b.c` as child names from the focus. A first name that is a type (`Patient.name`,
/// capitalised) filters the focus by type instead, so it is not a child path.
fn child_path(e: &Expr) -> Option<Vec<Arc<str>>> {
    match e {
        Expr::Ident(name, _) if name.starts_with(|c: char| c.is_ascii_lowercase()) => {
            Some(vec![name.clone()])
        }
        Expr::Member(recv, name) => {
            let mut path = child_path(recv)?;
            path.push(name.clone());
            Some(path)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(src: &str) -> Option<Existence> {
        Expression::compile(src).ok()?.existence()
    }

    fn exists(path: &[&str]) -> Existence {
        Existence::Exists(path.iter().map(|&p| Arc::from(p)).collect())
    }

    #[test]
    fn reads_existence_combinations() {
        let not = |e| Existence::Not(Box::new(e));
        assert_eq!(
            of("value.empty() or system.exists()"),
            Some(Existence::Or(
                Box::new(not(exists(&["value"]))),
                Box::new(exists(&["system"]))
            ))
        );
        assert_eq!(of("text.`div`.exists()"), Some(exists(&["text", "div"])));
        assert_eq!(
            of("(detail.exists() and measure.exists()) or detail.exists().not()"),
            Some(Existence::Or(
                Box::new(Existence::And(
                    Box::new(exists(&["detail"])),
                    Box::new(exists(&["measure"]))
                )),
                Box::new(not(exists(&["detail"])))
            ))
        );
        // FHIRPath's own spacing and associativity.
        assert_eq!(
            of("a.exists()  or b.exists()"),
            of("a.exists() or b.exists()")
        );
        assert_eq!(
            of("a.exists() implies b.exists() implies c.exists()"),
            Some(Existence::Implies(
                Box::new(Existence::Implies(
                    Box::new(exists(&["a"])),
                    Box::new(exists(&["b"]))
                )),
                Box::new(exists(&["c"]))
            ))
        );
    }

    #[test]
    fn anything_else_is_not_existence() {
        for src in [
            "a.exists() xor b.exists()",
            "code.where(system = 'x').exists()",
            "code.exists(system = 'x')",
            "a.exists() = true",
            "a.count() > 1",
            "Patient.name.exists()",
            "exists()",
            "$this.a.exists()",
            "a.first().exists()",
        ] {
            assert_eq!(of(src), None, "{src}");
        }
    }
}
