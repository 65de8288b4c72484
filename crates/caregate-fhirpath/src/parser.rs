//! Recursive-descent parser producing the AST the evaluator walks. Function names are
//! resolved to [`Fun`] ids and arities checked here, so a typo in an invariant is a compile
//! error with a position rather than an empty result at run time. Depth is bounded so
//! hostile input cannot overflow the stack.

use std::sync::Arc;

use crate::decimal::Decimal;
use crate::lexer::{tokenize, Tok, Token};
use crate::quantity::{calendar_keyword, Quantity};
use crate::temporal::Temporal;
use crate::FhirPathError;

/// Deepest nesting accepted (parentheses, invocations, operators).
const MAX_DEPTH: usize = 48;

/// A literal value in the source.
#[derive(Debug, Clone)]
pub(crate) enum Lit {
    Bool(bool),
    Int(i64),
    Dec(Decimal),
    Str(Arc<str>),
    Temporal(Temporal),
    Quantity(Arc<Quantity>),
}

/// Environment variables (`%name`).
#[derive(Debug, Clone)]
pub(crate) enum VarRef {
    Resource,
    RootResource,
    Context,
    /// Anything else: a user-supplied variable, looked up at evaluation.
    User(Arc<str>),
}

/// A type specifier: `Quantity`, `FHIR.string`, `System.Integer`.
#[derive(Debug, Clone)]
pub(crate) struct TypeSpec {
    pub namespace: Option<Arc<str>>,
    pub name: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
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
    IntDiv,
    Mod,
    Concat,
    Union,
}

macro_rules! functions {
    ($($name:literal => $var:ident ($min:expr, $max:expr)),* $(,)?) => {
        /// Every supported function, resolved at compile time.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Fun { $($var),* }

        fn lookup_function(name: &str) -> Option<(Fun, usize, usize)> {
            match name {
                $($name => Some((Fun::$var, $min, $max)),)*
                _ => None,
            }
        }

        impl Fun {
            pub(crate) fn name(self) -> &'static str {
                match self { $(Fun::$var => $name),* }
            }
        }
    };
}

functions! {
    "empty" => Empty(0, 0),
    "exists" => Exists(0, 1),
    "all" => All(1, 1),
    "allTrue" => AllTrue(0, 0),
    "anyTrue" => AnyTrue(0, 0),
    "allFalse" => AllFalse(0, 0),
    "anyFalse" => AnyFalse(0, 0),
    "subsetOf" => SubsetOf(1, 1),
    "supersetOf" => SupersetOf(1, 1),
    "count" => Count(0, 0),
    "distinct" => Distinct(0, 0),
    "isDistinct" => IsDistinct(0, 0),
    "where" => Where(1, 1),
    "select" => Select(1, 1),
    "repeat" => Repeat(1, 1),
    "ofType" => OfType(1, 1),
    "single" => Single(0, 0),
    "first" => First(0, 0),
    "last" => Last(0, 0),
    "tail" => Tail(0, 0),
    "skip" => Skip(1, 1),
    "take" => Take(1, 1),
    "intersect" => Intersect(1, 1),
    "exclude" => Exclude(1, 1),
    "union" => Union(1, 1),
    "combine" => Combine(1, 1),
    "iif" => Iif(2, 3),
    "toBoolean" => ToBoolean(0, 0),
    "convertsToBoolean" => ConvertsToBoolean(0, 0),
    "toInteger" => ToInteger(0, 0),
    "convertsToInteger" => ConvertsToInteger(0, 0),
    "toDate" => ToDate(0, 0),
    "convertsToDate" => ConvertsToDate(0, 0),
    "toDateTime" => ToDateTime(0, 0),
    "convertsToDateTime" => ConvertsToDateTime(0, 0),
    "toDecimal" => ToDecimal(0, 0),
    "convertsToDecimal" => ConvertsToDecimal(0, 0),
    "toQuantity" => ToQuantity(0, 1),
    "convertsToQuantity" => ConvertsToQuantity(0, 1),
    "toString" => ToString(0, 0),
    "convertsToString" => ConvertsToString(0, 0),
    "toTime" => ToTime(0, 0),
    "convertsToTime" => ConvertsToTime(0, 0),
    "indexOf" => IndexOf(1, 1),
    "lastIndexOf" => LastIndexOf(1, 1),
    "substring" => Substring(1, 2),
    "startsWith" => StartsWith(1, 1),
    "endsWith" => EndsWith(1, 1),
    "contains" => Contains(1, 1),
    "upper" => Upper(0, 0),
    "lower" => Lower(0, 0),
    "replace" => Replace(2, 2),
    "matches" => Matches(1, 1),
    "matchesFull" => MatchesFull(1, 1),
    "replaceMatches" => ReplaceMatches(2, 2),
    "length" => Length(0, 0),
    "toChars" => ToChars(0, 0),
    "trim" => Trim(0, 0),
    "split" => Split(1, 1),
    "join" => Join(0, 1),
    "encode" => Encode(1, 1),
    "decode" => Decode(1, 1),
    "escape" => Escape(1, 1),
    "unescape" => Unescape(1, 1),
    "abs" => Abs(0, 0),
    "ceiling" => Ceiling(0, 0),
    "exp" => Exp(0, 0),
    "floor" => Floor(0, 0),
    "ln" => Ln(0, 0),
    "log" => Log(1, 1),
    "power" => Power(1, 1),
    "round" => Round(0, 1),
    "sqrt" => Sqrt(0, 0),
    "truncate" => Truncate(0, 0),
    "children" => Children(0, 0),
    "descendants" => Descendants(0, 0),
    "trace" => Trace(1, 2),
    "now" => Now(0, 0),
    "timeOfDay" => TimeOfDay(0, 0),
    "today" => Today(0, 0),
    "aggregate" => Aggregate(1, 2),
    "sort" => Sort(0, 8),
    "is" => Is(1, 1),
    "as" => As(1, 1),
    "type" => Type(0, 0),
    "not" => Not(0, 0),
    "extension" => Extension(1, 1),
    "hasExtension" => HasExtension(1, 1),
    "hasValue" => HasValue(0, 0),
    "getValue" => GetValue(0, 0),
    "resolve" => Resolve(0, 0),
    "memberOf" => MemberOf(1, 1),
    "conformsTo" => ConformsTo(1, 1),
    "htmlChecks" => HtmlChecks(0, 0),
    "htmlChecks2" => HtmlChecks2(0, 0),
    "subsumes" => Subsumes(1, 1),
    "subsumedBy" => SubsumedBy(1, 1),
    "lowBoundary" => LowBoundary(0, 1),
    "highBoundary" => HighBoundary(0, 1),
    "precision" => Precision(0, 0),
    "comparable" => Comparable(1, 1),
    "hasTemplateIdOf" => HasTemplateIdOf(1, 1),
}

impl Fun {
    /// Functions whose argument is a type specifier.
    fn takes_type(self) -> bool {
        matches!(self, Fun::OfType | Fun::Is | Fun::As)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// `{}`
    Empty,
    Lit(Lit),
    This,
    Index,
    Total,
    Var(VarRef),
    /// An identifier starting a path: a child of `$this`, or a type name matching it. The
    /// second field is the name's type in the R4 model, looked up once at compile time.
    Ident(Arc<str>, Option<crate::model::TypeId>),
    /// `receiver.name`
    Member(Box<Expr>, Arc<str>),
    /// `receiver.f(args)`; no receiver means the function applies to `$this`.
    Call(Box<Call>),
    Indexer(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, TypeSpec),
    As(Box<Expr>, TypeSpec),
}

#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub recv: Option<Expr>,
    pub fun: Fun,
    pub args: Vec<Expr>,
    pub ty: Option<TypeSpec>,
    /// A regular expression given as a literal, compiled once.
    pub regex: Option<Arc<regex_lite::Regex>>,
    /// Source position, for evaluation error messages.
    pub pos: usize,
}

pub(crate) fn parse(src: &str) -> Result<Expr, FhirPathError> {
    let tokens = tokenize(src)?;
    let mut p = Parser {
        tokens,
        at: 0,
        depth: 0,
        ops: 0,
    };
    if matches!(p.peek().tok, Tok::End) {
        return Err(FhirPathError::new(0, "empty expression"));
    }
    let e = p.expression()?;
    match &p.peek().tok {
        Tok::End => {}
        other => {
            return Err(FhirPathError::new(
                p.peek().pos,
                format!("unexpected {}", describe(other)),
            ))
        }
    }
    if tree_depth(&e) > MAX_TREE_DEPTH {
        return Err(FhirPathError::new(0, "expression is nested too deeply"));
    }
    Ok(e)
}

/// Deepest AST accepted: evaluation recurses once per level, so this bounds its stack use
/// (long operator chains nest as deeply as parentheses do).
const MAX_TREE_DEPTH: usize = 128;

/// The AST's depth, computed without recursion so that measuring cannot overflow either.
fn tree_depth(root: &Expr) -> usize {
    let mut max = 0;
    let mut stack = vec![(root, 1usize)];
    while let Some((e, d)) = stack.pop() {
        max = max.max(d);
        match e {
            Expr::Member(r, _) | Expr::Neg(r) | Expr::Is(r, _) | Expr::As(r, _) => {
                stack.push((r, d + 1))
            }
            Expr::Indexer(a, b) | Expr::Bin(_, a, b) => {
                stack.push((a, d + 1));
                stack.push((b, d + 1));
            }
            Expr::Call(c) => {
                if let Some(r) = &c.recv {
                    stack.push((r, d + 1));
                }
                for a in &c.args {
                    stack.push((a, d + 1));
                }
            }
            _ => {}
        }
    }
    max
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

/// Compiles a regular expression the way FHIRPath wants it: single-line mode (`.` matches
/// newlines); `full` anchors it to the whole string (`matchesFull`).
pub(crate) fn compile_regex(pattern: &str, full: bool) -> Option<regex_lite::Regex> {
    let src = if full {
        format!("(?s)^(?:{pattern})$")
    } else {
        format!("(?s){pattern}")
    };
    regex_lite::RegexBuilder::new(&src)
        .size_limit(1 << 20)
        .build()
        .ok()
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
    ops: usize,
}

/// Most binary operators in one expression.
const MAX_OPERATORS: usize = 1000;

impl Parser {
    fn peek(&self) -> &Token {
        // `tokenize` always ends with `End`, and `bump` never moves past it.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn peek_at(&self, k: usize) -> &Tok {
        &self.tokens[(self.at + k).min(self.tokens.len() - 1)].tok
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if !matches!(t.tok, Tok::End) {
            self.at += 1;
        }
        t
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(&self.peek().tok, Tok::Punct(q) if *q == p)
    }

    fn is_keyword(&self, k: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident { name, delimited: false } if name == k)
    }

    fn expect_punct(&mut self, p: &str) -> Result<(), FhirPathError> {
        if self.is_punct(p) {
            self.bump();
            Ok(())
        } else {
            let t = self.peek();
            Err(FhirPathError::new(
                t.pos,
                format!("expected '{p}', found {}", describe(&t.tok)),
            ))
        }
    }

    fn enter(&mut self) -> Result<(), FhirPathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FhirPathError::new(
                self.peek().pos,
                "expression is nested too deeply",
            ));
        }
        Ok(())
    }

    fn expression(&mut self) -> Result<Expr, FhirPathError> {
        self.enter()?;
        let r = self.implies();
        self.depth -= 1;
        r
    }

    /// Builds a binary node, bounding the number of operators so that even a long flat
    /// chain (`1+1+1...`) cannot build a tree too deep to evaluate or drop.
    fn bin(&mut self, op: Op, l: Expr, r: Expr) -> Result<Expr, FhirPathError> {
        self.ops += 1;
        if self.ops > MAX_OPERATORS {
            return Err(FhirPathError::new(
                self.peek().pos,
                "expression has too many operators",
            ));
        }
        Ok(Expr::Bin(op, Box::new(l), Box::new(r)))
    }

    fn implies(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.or_expr()?;
        while self.is_keyword("implies") {
            self.bump();
            let r = self.or_expr()?;
            l = self.bin(Op::Implies, l, r)?;
        }
        Ok(l)
    }

    fn or_expr(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.and_expr()?;
        loop {
            let op = if self.is_keyword("or") {
                Op::Or
            } else if self.is_keyword("xor") {
                Op::Xor
            } else {
                return Ok(l);
            };
            self.bump();
            let r = self.and_expr()?;
            l = self.bin(op, l, r)?;
        }
    }

    fn and_expr(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.membership()?;
        while self.is_keyword("and") {
            self.bump();
            let r = self.membership()?;
            l = self.bin(Op::And, l, r)?;
        }
        Ok(l)
    }

    fn membership(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.equality()?;
        loop {
            let op = if self.is_keyword("in") {
                Op::In
            } else if self.is_keyword("contains") {
                Op::Contains
            } else {
                return Ok(l);
            };
            self.bump();
            let r = self.equality()?;
            l = self.bin(op, l, r)?;
        }
    }

    fn equality(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.comparison()?;
        loop {
            let op = match &self.peek().tok {
                Tok::Punct("=") => Op::Eq,
                Tok::Punct("!=") => Op::Ne,
                Tok::Punct("~") => Op::Equiv,
                Tok::Punct("!~") => Op::NotEquiv,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.comparison()?;
            l = self.bin(op, l, r)?;
        }
    }

    fn comparison(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.union()?;
        loop {
            let op = match &self.peek().tok {
                Tok::Punct("<") => Op::Lt,
                Tok::Punct(">") => Op::Gt,
                Tok::Punct("<=") => Op::Le,
                Tok::Punct(">=") => Op::Ge,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.union()?;
            l = self.bin(op, l, r)?;
        }
    }

    fn union(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.type_expr()?;
        while self.is_punct("|") {
            self.bump();
            let r = self.type_expr()?;
            l = self.bin(Op::Union, l, r)?;
        }
        Ok(l)
    }

    fn type_expr(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.additive()?;
        loop {
            if self.is_keyword("is") {
                self.bump();
                let t = self.type_spec()?;
                l = Expr::Is(Box::new(l), t);
            } else if self.is_keyword("as") {
                self.bump();
                let t = self.type_spec()?;
                l = Expr::As(Box::new(l), t);
            } else {
                return Ok(l);
            }
        }
    }

    fn additive(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.multiplicative()?;
        loop {
            let op = match &self.peek().tok {
                Tok::Punct("+") => Op::Add,
                Tok::Punct("-") => Op::Sub,
                Tok::Punct("&") => Op::Concat,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.multiplicative()?;
            l = self.bin(op, l, r)?;
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, FhirPathError> {
        let mut l = self.unary()?;
        loop {
            let op = match &self.peek().tok {
                Tok::Punct("*") => Op::Mul,
                Tok::Punct("/") => Op::Div,
                Tok::Ident {
                    name,
                    delimited: false,
                } if name == "div" => Op::IntDiv,
                Tok::Ident {
                    name,
                    delimited: false,
                } if name == "mod" => Op::Mod,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.unary()?;
            l = self.bin(op, l, r)?;
        }
    }

    fn unary(&mut self) -> Result<Expr, FhirPathError> {
        if self.is_punct("-") || self.is_punct("+") {
            let t = self.bump();
            self.enter()?;
            let inner = self.unary();
            self.depth -= 1;
            let inner = inner?;
            if t.tok == Tok::Punct("+") {
                return Ok(inner);
            }
            // Fold `-1`, `-1.5`, `-5 'mg'` into literals.
            return Ok(match inner {
                Expr::Lit(Lit::Int(n)) => Expr::Lit(Lit::Int(-n)),
                Expr::Lit(Lit::Dec(d)) => Expr::Lit(Lit::Dec(d.neg())),
                Expr::Lit(Lit::Quantity(q)) => Expr::Lit(Lit::Quantity(Arc::new(Quantity {
                    value: q.value.neg(),
                    unit: q.unit.clone(),
                }))),
                other => Expr::Neg(Box::new(other)),
            });
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, FhirPathError> {
        let mut e = self.term()?;
        let mut links = 0usize;
        loop {
            if self.is_punct(".") {
                self.bump();
                links += 1;
                if links > MAX_TREE_DEPTH {
                    return Err(FhirPathError::new(self.peek().pos, "path is too long"));
                }
                e = self.invocation(Some(e))?;
            } else if self.is_punct("[") {
                self.bump();
                let idx = self.expression()?;
                self.expect_punct("]")?;
                e = Expr::Indexer(Box::new(e), Box::new(idx));
            } else {
                return Ok(e);
            }
        }
    }

    fn term(&mut self) -> Result<Expr, FhirPathError> {
        let t = self.bump();
        match t.tok {
            Tok::Str(s) => Ok(Expr::Lit(Lit::Str(Arc::from(s.as_str())))),
            Tok::Num(n) => self.number(&n, t.pos),
            Tok::DateTime(d) => date_literal(&d, t.pos),
            Tok::Var(v) => Ok(variable(&v)),
            Tok::Special(s) => match s.as_str() {
                "this" => Ok(Expr::This),
                "index" => Ok(Expr::Index),
                "total" => Ok(Expr::Total),
                other => Err(FhirPathError::new(t.pos, format!("unknown ${other}"))),
            },
            Tok::Punct("(") => {
                let e = self.expression()?;
                self.expect_punct(")")?;
                Ok(e)
            }
            Tok::Punct("{") => {
                self.expect_punct("}")?;
                Ok(Expr::Empty)
            }
            Tok::Ident {
                ref name,
                delimited: false,
            } if (name == "true" || name == "false")
                && !matches!(self.peek().tok, Tok::Punct("(")) =>
            {
                Ok(Expr::Lit(Lit::Bool(name == "true")))
            }
            Tok::Ident { .. } => {
                self.at -= 1;
                self.invocation(None)
            }
            other => Err(FhirPathError::new(
                t.pos,
                format!("unexpected {}", describe(&other)),
            )),
        }
    }

    fn number(&mut self, text: &str, pos: usize) -> Result<Expr, FhirPathError> {
        let value = Decimal::parse(text)
            .ok_or_else(|| FhirPathError::new(pos, format!("invalid number '{text}'")))?;
        // A quantity: number followed by a unit string or a calendar keyword.
        match &self.peek().tok {
            Tok::Str(unit) => {
                let unit = unit.clone();
                self.bump();
                return Ok(Expr::Lit(Lit::Quantity(Arc::new(Quantity::new(
                    value, &unit,
                )))));
            }
            Tok::Ident {
                name,
                delimited: false,
            } if calendar_keyword(name).is_some() => {
                let unit = name.clone();
                self.bump();
                return Ok(Expr::Lit(Lit::Quantity(Arc::new(Quantity::new(
                    value, &unit,
                )))));
            }
            _ => {}
        }
        if text.contains('.') {
            Ok(Expr::Lit(Lit::Dec(value)))
        } else {
            match text.parse::<i64>() {
                Ok(n) => Ok(Expr::Lit(Lit::Int(n))),
                Err(_) => Ok(Expr::Lit(Lit::Dec(value))),
            }
        }
    }

    /// An identifier or function call, at the start of a path (`receiver` None) or after `.`.
    fn invocation(&mut self, receiver: Option<Expr>) -> Result<Expr, FhirPathError> {
        let t = self.bump();
        let name = match &t.tok {
            Tok::Ident { name, .. } => name.clone(),
            Tok::Special(s) if s == "this" => {
                return Ok(receiver.unwrap_or(Expr::This));
            }
            other => {
                return Err(FhirPathError::new(
                    t.pos,
                    format!("expected a name, found {}", describe(other)),
                ))
            }
        };
        if !self.is_punct("(") {
            return Ok(match receiver {
                Some(r) => Expr::Member(Box::new(r), Arc::from(name.as_str())),
                None => {
                    let r4 = name
                        .starts_with(|c: char| c.is_ascii_uppercase())
                        .then(|| crate::model::ModelInfo::r4().type_id(&name))
                        .flatten();
                    Expr::Ident(Arc::from(name.as_str()), r4)
                }
            });
        }
        self.bump();
        let Some((fun, min, max)) = lookup_function(&name) else {
            return Err(FhirPathError::new(
                t.pos,
                format!("unknown function '{name}'"),
            ));
        };
        self.enter()?;
        let mut args = Vec::new();
        let mut ty = None;
        if !self.is_punct(")") {
            loop {
                if fun.takes_type() && ty.is_none() {
                    ty = Some(self.type_spec()?);
                } else {
                    args.push(self.expression()?);
                }
                if self.is_punct(",") {
                    self.bump();
                    continue;
                }
                break;
            }
        }
        self.depth -= 1;
        self.expect_punct(")")?;
        let n = args.len() + usize::from(ty.is_some());
        if n < min || n > max {
            return Err(FhirPathError::new(
                t.pos,
                format!(
                    "{name}() takes {} argument(s), {n} given",
                    if min == max {
                        min.to_string()
                    } else {
                        format!("{min} to {max}")
                    }
                ),
            ));
        }
        let regex = match (fun, args.first()) {
            (
                Fun::Matches | Fun::ReplaceMatches | Fun::MatchesFull,
                Some(Expr::Lit(Lit::Str(p))),
            ) => {
                let re = compile_regex(p, fun == Fun::MatchesFull).ok_or_else(|| {
                    FhirPathError::new(t.pos, format!("invalid regular expression '{p}'"))
                })?;
                Some(Arc::new(re))
            }
            _ => None,
        };
        Ok(Expr::Call(Box::new(Call {
            recv: receiver,
            fun,
            args,
            ty,
            regex,
            pos: t.pos,
        })))
    }

    /// `Name`, `Namespace.Name`, with either part possibly `` `delimited` ``.
    fn type_spec(&mut self) -> Result<TypeSpec, FhirPathError> {
        let t = self.bump();
        let Tok::Ident { name, .. } = &t.tok else {
            return Err(FhirPathError::new(
                t.pos,
                format!("expected a type name, found {}", describe(&t.tok)),
            ));
        };
        if self.is_punct(".") && matches!(self.peek_at(1), Tok::Ident { .. }) {
            self.bump();
            let t2 = self.bump();
            if let Tok::Ident { name: n2, .. } = &t2.tok {
                return Ok(TypeSpec {
                    namespace: Some(Arc::from(name.as_str())),
                    name: Arc::from(n2.as_str()),
                });
            }
        }
        Ok(TypeSpec {
            namespace: None,
            name: Arc::from(name.as_str()),
        })
    }
}

fn date_literal(text: &str, pos: usize) -> Result<Expr, FhirPathError> {
    let parsed = match text.strip_prefix('T') {
        Some(time) => Temporal::parse_time(time),
        None if text.contains('T') => Temporal::parse_datetime(text),
        None => Temporal::parse_date(text).or_else(|| Temporal::parse_datetime(text)),
    };
    parsed
        .map(|t| Expr::Lit(Lit::Temporal(t)))
        .ok_or_else(|| FhirPathError::new(pos, format!("invalid date/time literal @{text}")))
}

/// `%name`: the well-known constants become literals, the resource variables get their own
/// node, anything else is a user variable.
fn variable(name: &str) -> Expr {
    let lit = |s: String| Expr::Lit(Lit::Str(Arc::from(s.as_str())));
    match name {
        "resource" => Expr::Var(VarRef::Resource),
        "rootResource" => Expr::Var(VarRef::RootResource),
        "context" => Expr::Var(VarRef::Context),
        "ucum" => lit("http://unitsofmeasure.org".into()),
        "sct" => lit("http://snomed.info/sct".into()),
        "loinc" => lit("http://loinc.org".into()),
        n if n.starts_with("vs-") => lit(format!("http://hl7.org/fhir/ValueSet/{}", &n[3..])),
        n if n.starts_with("ext-") => lit(format!(
            "http://hl7.org/fhir/StructureDefinition/{}",
            &n[4..]
        )),
        other => Expr::Var(VarRef::User(Arc::from(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        // `|` binds tighter than `=`; `is` tighter than `|`.
        let e = parse("a = b | c").unwrap();
        assert!(matches!(e, Expr::Bin(Op::Eq, _, _)));
        let e = parse("1 | 1 is Integer").unwrap();
        assert!(matches!(e, Expr::Bin(Op::Union, _, r) if matches!(*r, Expr::Is(..))));
        let e = parse("-1.convertsToInteger()").unwrap();
        assert!(matches!(e, Expr::Neg(_)));
        let e = parse("(-1).convertsToInteger()").unwrap();
        assert!(matches!(e, Expr::Call(_)));
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("name.foo(").unwrap_err();
        assert!(e.message.contains("unknown function"), "{e}");
        let e = parse("2 + 2 /").unwrap_err();
        assert_eq!(e.position, 7);
        assert!(parse("where()").is_err());
        assert!(parse("first(1)").is_err());
        assert!(parse("").is_err());
        assert!(parse("'a'.matches('(')").is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "(".repeat(5000) + "1" + &")".repeat(5000);
        assert!(parse(&deep).is_err());
        let long = "a".to_string() + &".b".repeat(5000);
        assert!(parse(&long).is_err());
        let chain = "1".to_string() + &" + 1".repeat(5000);
        assert!(parse(&chain).is_err());
        let neg = "-".repeat(5000) + "1";
        assert!(parse(&neg).is_err());
    }
}
