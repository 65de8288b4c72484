//! Recursive-descent parser producing the AST the evaluator walks. Everything the evaluator
//! cannot do is rejected here, so `Expression::compile` succeeding means evaluation is
//! meaningful; depth is bounded so hostile input cannot overflow the stack.

use std::sync::Arc;

use crate::lexer::{tokenize, Tok, Token};
use crate::FhirPathError;

/// Deepest AST accepted; SearchParameter expressions stay far below this.
const MAX_DEPTH: usize = 200;

#[derive(Debug, Clone)]
pub(crate) struct Ast {
    pub kind: Kind,
    depth: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    /// `%resource`, `%context`, `%rootResource`: the evaluated resource.
    Resource,
    /// `$this`: the current focus.
    This,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    Lt,
    Gt,
    Le,
    Ge,
    And,
    Or,
    Xor,
    Implies,
    In,
    Contains,
    Add,
    Sub,
    Mul,
    Div,
    Concat,
}

#[derive(Debug, Clone)]
pub(crate) enum Func {
    Where(Box<Ast>),
    Select(Box<Ast>),
    Exists(Option<Box<Ast>>),
    All(Box<Ast>),
    Empty,
    First,
    Last,
    Tail,
    Single,
    Skip(Box<Ast>),
    Take(Box<Ast>),
    Count,
    Distinct,
    Not,
    HasValue,
    Extension(Arc<str>),
    HasExtension(Arc<str>),
    OfType(TypeName),
    Is(TypeName),
    Resolve,
    Union(Box<Ast>),
    Combine(Box<Ast>),
    StartsWith(Box<Ast>),
    EndsWith(Box<Ast>),
    StrContains(Box<Ast>),
    Lower,
    Upper,
    Length,
    ToString,
    Iif(Box<Ast>, Box<Ast>, Option<Box<Ast>>),
}

/// A type specifier without its `FHIR.` / `System.` namespace.
#[derive(Debug, Clone)]
pub(crate) struct TypeName(pub Arc<str>);

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `{}`
    Empty,
    Str(Arc<str>),
    Bool(bool),
    Num(f64),
    Var(Var),
    /// Navigation to a child (or a type-name match on a resource). `None`: the focus.
    Member(Option<Box<Ast>>, Arc<str>),
    Call(Option<Box<Ast>>, Func),
    Index(Box<Ast>, Box<Ast>),
    Neg(Box<Ast>),
    Union(Vec<Ast>),
    Binary(BinOp, Box<Ast>, Box<Ast>),
    /// `x is T`
    Is(Box<Ast>, TypeName),
    /// `x as T`
    As(Box<Ast>, TypeName),
}

impl Ast {
    fn leaf(kind: Kind) -> Ast {
        Ast { kind, depth: 1 }
    }

    /// Builds a node over children of the given depths, refusing to exceed `MAX_DEPTH`.
    fn node(kind: Kind, child_depths: &[usize], pos: usize) -> Result<Ast, FhirPathError> {
        let depth = 1 + child_depths.iter().copied().max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(FhirPathError::new(pos, "expression is nested too deeply"));
        }
        Ok(Ast { kind, depth })
    }
}

pub(crate) fn parse(src: &str) -> Result<Ast, FhirPathError> {
    let tokens = tokenize(src)?;
    let mut p = Parser {
        tokens,
        at: 0,
        nesting: 0,
    };
    let ast = p.expression()?;
    match &p.peek().tok {
        Tok::End => Ok(ast),
        other => Err(FhirPathError::new(
            p.peek().pos,
            format!("unexpected {}", describe(other)),
        )),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident { name, .. } => format!("identifier '{name}'"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Num(n) => format!("number {n}"),
        Tok::DateTime(d) => format!("date/time @{d}"),
        Tok::Var(v) => format!("%{v}"),
        Tok::Special(s) => format!("${s}"),
        Tok::Punct(p) => format!("'{p}'"),
        Tok::End => "end of expression".to_string(),
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Recursion depth through parentheses and arguments.
    nesting: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        // The token list always ends with `End`, and `at` never passes it.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        t
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(&self.peek().tok, Tok::Punct(q) if *q == p)
    }

    /// An undelimited identifier used as an operator keyword (`and`, `is`, ...).
    fn is_keyword(&self, k: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident { name, delimited: false } if name == k)
    }

    fn expect_punct(&mut self, p: &str) -> Result<(), FhirPathError> {
        if self.is_punct(p) {
            self.bump();
            Ok(())
        } else {
            Err(FhirPathError::new(
                self.peek().pos,
                format!("expected '{p}', found {}", describe(&self.peek().tok)),
            ))
        }
    }

    fn enter(&mut self) -> Result<(), FhirPathError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH / 2 {
            return Err(FhirPathError::new(
                self.peek().pos,
                "expression is nested too deeply",
            ));
        }
        Ok(())
    }

    fn expression(&mut self) -> Result<Ast, FhirPathError> {
        self.enter()?;
        let r = self.implies();
        self.nesting -= 1;
        r
    }

    fn binary_level(
        &mut self,
        ops: &[(&str, BinOp, bool)],
        next: fn(&mut Self) -> Result<Ast, FhirPathError>,
    ) -> Result<Ast, FhirPathError> {
        let mut left = next(self)?;
        loop {
            let found = ops.iter().find(|(text, _, keyword)| {
                if *keyword {
                    self.is_keyword(text)
                } else {
                    self.is_punct(text)
                }
            });
            let Some(&(_, op, _)) = found else {
                return Ok(left);
            };
            let pos = self.bump().pos;
            let right = next(self)?;
            let depths = [left.depth, right.depth];
            left = Ast::node(
                Kind::Binary(op, Box::new(left), Box::new(right)),
                &depths,
                pos,
            )?;
        }
    }

    fn implies(&mut self) -> Result<Ast, FhirPathError> {
        self.binary_level(&[("implies", BinOp::Implies, true)], Self::or_expr)
    }

    fn or_expr(&mut self) -> Result<Ast, FhirPathError> {
        self.binary_level(
            &[("or", BinOp::Or, true), ("xor", BinOp::Xor, true)],
            Self::and_expr,
        )
    }

    fn and_expr(&mut self) -> Result<Ast, FhirPathError> {
        self.binary_level(&[("and", BinOp::And, true)], Self::membership)
    }

    fn membership(&mut self) -> Result<Ast, FhirPathError> {
        self.binary_level(
            &[("in", BinOp::In, true), ("contains", BinOp::Contains, true)],
            Self::equality,
        )
    }

    fn equality(&mut self) -> Result<Ast, FhirPathError> {
        self.binary_level(
            &[
                ("=", BinOp::Eq, false),
                ("!=", BinOp::Ne, false),
                ("~", BinOp::Equiv, false),
                ("!~", BinOp::NotEquiv, false),
            ],
            Self::comparison,
        )
    }

    fn comparison(&mut self) -> Result<Ast, FhirPathError> {
        self.binary_level(
            &[
                ("<=", BinOp::Le, false),
                (">=", BinOp::Ge, false),
                ("<", BinOp::Lt, false),
                (">", BinOp::Gt, false),
            ],
            Self::union,
        )
    }

    fn union(&mut self) -> Result<Ast, FhirPathError> {
        let first = self.type_expr()?;
        if !self.is_punct("|") {
            return Ok(first);
        }
        let mut branches = vec![first];
        while self.is_punct("|") {
            let pos = self.bump().pos;
            branches.push(self.type_expr()?);
            if branches.len() > 10_000 {
                return Err(FhirPathError::new(pos, "too many union branches"));
            }
        }
        let depth = 1 + branches.iter().map(|b| b.depth).max().unwrap_or(0);
        Ok(Ast {
            kind: Kind::Union(branches),
            depth,
        })
    }

    fn type_expr(&mut self) -> Result<Ast, FhirPathError> {
        let mut left = self.additive()?;
        loop {
            let is = self.is_keyword("is");
            if !is && !self.is_keyword("as") {
                return Ok(left);
            }
            let pos = self.bump().pos;
            let ty = self.type_name()?;
            let depths = [left.depth];
            let kind = if is {
                Kind::Is(Box::new(left), ty)
            } else {
                Kind::As(Box::new(left), ty)
            };
            left = Ast::node(kind, &depths, pos)?;
        }
    }

    fn additive(&mut self) -> Result<Ast, FhirPathError> {
        self.binary_level(
            &[
                ("+", BinOp::Add, false),
                ("-", BinOp::Sub, false),
                ("&", BinOp::Concat, false),
            ],
            Self::multiplicative,
        )
    }

    fn multiplicative(&mut self) -> Result<Ast, FhirPathError> {
        if self.is_keyword("div") || self.is_keyword("mod") {
            return Err(FhirPathError::new(
                self.peek().pos,
                "div and mod are not supported",
            ));
        }
        let r = self.binary_level(
            &[("*", BinOp::Mul, false), ("/", BinOp::Div, false)],
            Self::unary,
        )?;
        if self.is_keyword("div") || self.is_keyword("mod") {
            return Err(FhirPathError::new(
                self.peek().pos,
                "div and mod are not supported",
            ));
        }
        Ok(r)
    }

    fn unary(&mut self) -> Result<Ast, FhirPathError> {
        if self.is_punct("-") || self.is_punct("+") {
            let t = self.bump();
            self.enter()?;
            let inner = self.unary();
            self.nesting -= 1;
            let inner = inner?;
            if t.tok == Tok::Punct("+") {
                return Ok(inner);
            }
            let depths = [inner.depth];
            return Ast::node(Kind::Neg(Box::new(inner)), &depths, t.pos);
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Ast, FhirPathError> {
        let mut left = self.term()?;
        loop {
            if self.is_punct(".") {
                let pos = self.bump().pos;
                left = self.invocation(Some(left), pos)?;
            } else if self.is_punct("[") {
                let pos = self.bump().pos;
                let index = self.expression()?;
                self.expect_punct("]")?;
                let depths = [left.depth, index.depth];
                left = Ast::node(Kind::Index(Box::new(left), Box::new(index)), &depths, pos)?;
            } else {
                return Ok(left);
            }
        }
    }

    fn term(&mut self) -> Result<Ast, FhirPathError> {
        let t = self.peek().clone();
        match &t.tok {
            Tok::Str(s) => {
                self.bump();
                Ok(Ast::leaf(Kind::Str(Arc::from(s.as_str()))))
            }
            Tok::Num(n) => {
                let n = *n;
                self.bump();
                if matches!(&self.peek().tok, Tok::Str(_)) {
                    return Err(FhirPathError::new(
                        self.peek().pos,
                        "quantity literals are not supported",
                    ));
                }
                Ok(Ast::leaf(Kind::Num(n)))
            }
            Tok::DateTime(d) => {
                self.bump();
                Ok(Ast::leaf(Kind::Str(Arc::from(d.as_str()))))
            }
            Tok::Var(v) => {
                self.bump();
                match v.as_str() {
                    "resource" | "context" | "rootResource" => {
                        Ok(Ast::leaf(Kind::Var(Var::Resource)))
                    }
                    "ucum" => Ok(Ast::leaf(Kind::Str(Arc::from("http://unitsofmeasure.org")))),
                    "sct" => Ok(Ast::leaf(Kind::Str(Arc::from("http://snomed.info/sct")))),
                    "loinc" => Ok(Ast::leaf(Kind::Str(Arc::from("http://loinc.org")))),
                    other => Err(FhirPathError::new(
                        t.pos,
                        format!("unknown variable %{other}"),
                    )),
                }
            }
            Tok::Special(s) => {
                self.bump();
                match s.as_str() {
                    "this" => Ok(Ast::leaf(Kind::Var(Var::This))),
                    other => Err(FhirPathError::new(
                        t.pos,
                        format!("${other} is not supported"),
                    )),
                }
            }
            Tok::Punct("(") => {
                self.bump();
                let inner = self.expression()?;
                self.expect_punct(")")?;
                Ok(inner)
            }
            Tok::Punct("{") => {
                self.bump();
                self.expect_punct("}")?;
                Ok(Ast::leaf(Kind::Empty))
            }
            Tok::Ident { name, delimited } => {
                if !delimited {
                    match name.as_str() {
                        "true" => {
                            self.bump();
                            return Ok(Ast::leaf(Kind::Bool(true)));
                        }
                        "false" => {
                            self.bump();
                            return Ok(Ast::leaf(Kind::Bool(false)));
                        }
                        _ => {}
                    }
                }
                self.invocation(None, t.pos)
            }
            other => Err(FhirPathError::new(
                t.pos,
                format!("unexpected {}", describe(other)),
            )),
        }
    }

    /// A member name or function call, on `receiver` or (when `None`) on the focus.
    fn invocation(&mut self, receiver: Option<Ast>, pos: usize) -> Result<Ast, FhirPathError> {
        let t = self.bump();
        let name = match &t.tok {
            Tok::Ident { name, .. } => name.clone(),
            Tok::Special(s) if s == "this" && receiver.is_none() => {
                return Ok(Ast::leaf(Kind::Var(Var::This)))
            }
            other => {
                return Err(FhirPathError::new(
                    t.pos,
                    format!("expected a name, found {}", describe(other)),
                ))
            }
        };
        let receiver_depth = receiver.as_ref().map_or(0, |r| r.depth);
        if !self.is_punct("(") {
            let kind = Kind::Member(receiver.map(Box::new), Arc::from(name.as_str()));
            return Ast::node(kind, &[receiver_depth], pos);
        }
        self.bump();
        self.enter()?;
        let func = self.function(&name, t.pos);
        self.nesting -= 1;
        let (func, arg_depth) = func?;
        Ast::node(
            Kind::Call(receiver.map(Box::new), func),
            &[receiver_depth, arg_depth],
            pos,
        )
    }

    /// Parses a function's arguments (after `(`, through `)`); returns it with the depth of
    /// its deepest argument.
    fn function(&mut self, name: &str, pos: usize) -> Result<(Func, usize), FhirPathError> {
        let boxed = |a: Ast| Box::new(a);
        let (func, depth) = match name {
            "where" | "select" | "all" | "skip" | "take" | "union" | "combine" | "startsWith"
            | "endsWith" | "contains" => {
                let arg = self.expression()?;
                let d = arg.depth;
                let a = boxed(arg);
                let f = match name {
                    "where" => Func::Where(a),
                    "select" => Func::Select(a),
                    "all" => Func::All(a),
                    "skip" => Func::Skip(a),
                    "take" => Func::Take(a),
                    "union" => Func::Union(a),
                    "combine" => Func::Combine(a),
                    "startsWith" => Func::StartsWith(a),
                    "endsWith" => Func::EndsWith(a),
                    _ => Func::StrContains(a),
                };
                (f, d)
            }
            "exists" => {
                if self.is_punct(")") {
                    (Func::Exists(None), 0)
                } else {
                    let arg = self.expression()?;
                    let d = arg.depth;
                    (Func::Exists(Some(boxed(arg))), d)
                }
            }
            "iif" => {
                let cond = self.expression()?;
                self.expect_punct(",")?;
                let then = self.expression()?;
                let otherwise = if self.is_punct(",") {
                    self.bump();
                    Some(self.expression()?)
                } else {
                    None
                };
                let d = [Some(&cond), Some(&then), otherwise.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|a| a.depth)
                    .max()
                    .unwrap_or(0);
                (Func::Iif(boxed(cond), boxed(then), otherwise.map(boxed)), d)
            }
            "extension" | "hasExtension" => {
                let url = match &self.peek().tok {
                    Tok::Str(s) => Arc::from(s.as_str()),
                    _ => {
                        return Err(FhirPathError::new(
                            self.peek().pos,
                            format!("{name}() needs a string literal url"),
                        ))
                    }
                };
                self.bump();
                if name == "extension" {
                    (Func::Extension(url), 0)
                } else {
                    (Func::HasExtension(url), 0)
                }
            }
            "ofType" | "as" => (Func::OfType(self.type_name()?), 0),
            "is" => (Func::Is(self.type_name()?), 0),
            _ => {
                let f = match name {
                    "empty" => Func::Empty,
                    "first" => Func::First,
                    "last" => Func::Last,
                    "tail" => Func::Tail,
                    "single" => Func::Single,
                    "count" => Func::Count,
                    "distinct" => Func::Distinct,
                    "not" => Func::Not,
                    "hasValue" => Func::HasValue,
                    "resolve" => Func::Resolve,
                    "lower" => Func::Lower,
                    "upper" => Func::Upper,
                    "length" => Func::Length,
                    "toString" => Func::ToString,
                    _ => {
                        return Err(FhirPathError::new(
                            pos,
                            format!("unsupported function '{name}'"),
                        ))
                    }
                };
                if !self.is_punct(")") {
                    return Err(FhirPathError::new(
                        self.peek().pos,
                        format!("{name}() takes no arguments"),
                    ));
                }
                (f, 0)
            }
        };
        self.expect_punct(")")?;
        Ok((func, depth))
    }

    /// `Quantity`, `FHIR.Patient`, `System.String`, `` `dateTime` ``.
    fn type_name(&mut self) -> Result<TypeName, FhirPathError> {
        let t = self.bump();
        let Tok::Ident { name, .. } = &t.tok else {
            return Err(FhirPathError::new(
                t.pos,
                format!("expected a type name, found {}", describe(&t.tok)),
            ));
        };
        if (name == "FHIR" || name == "System") && self.is_punct(".") {
            self.bump();
            let t2 = self.bump();
            return match &t2.tok {
                Tok::Ident { name, .. } => Ok(TypeName(Arc::from(name.as_str()))),
                other => Err(FhirPathError::new(
                    t2.pos,
                    format!("expected a type name, found {}", describe(other)),
                )),
            };
        }
        Ok(TypeName(Arc::from(name.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_union_binds_tighter_than_equality() {
        let ast = parse("a | b = c").unwrap();
        assert!(matches!(ast.kind, Kind::Binary(BinOp::Eq, ..)));
        let ast = parse("a.exists() and b != false").unwrap();
        assert!(matches!(ast.kind, Kind::Binary(BinOp::And, ..)));
        let ast = parse("a | b as T").unwrap();
        match ast.kind {
            Kind::Union(b) => assert!(matches!(b[1].kind, Kind::As(..))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("{}a{}", "(".repeat(5000), ")".repeat(5000));
        assert!(parse(&deep).is_err());
        let long = format!("a{}", ".b".repeat(5000));
        assert!(parse(&long).is_err());
        let chain = format!("a{}", " and b".repeat(5000));
        assert!(parse(&chain).is_err());
        let neg = format!("{}1", "-".repeat(5000));
        assert!(parse(&neg).is_err());
    }
}
