//! The search index vocabulary: what the search layer extracts from a resource on write
//! (`IndexEntry`) and what it asks for on read (`SearchQuery`). The store only persists
//! and evaluates these; it knows nothing about SearchParameter definitions or FHIRPath.

use caregate_core::DateRange;

/// A search parameter's key in the index: `"{ResourceType}:{code}"`, e.g. `"Patient:family"`.
/// Parameters defined on `Resource` (such as `_profile`) are keyed per concrete type too.
pub type ParamKey = String;

#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `normalized`: lower-cased, accents and punctuation folded, whitespace collapsed
    /// (what `name=` prefix search compares against); `exact`: the value as written.
    String {
        normalized: String,
        exact: String,
    },
    /// A code with its system (Coding, CodeableConcept, Identifier, code, boolean, ...).
    /// `text` carries display / CodeableConcept.text / Identifier.type.text for `:text`,
    /// lower-cased (by the extraction, so the store's writer thread does not).
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
    },
    /// A reference. Literal relative references fill `target_type` + `target_id`; absolute
    /// or canonical ones keep `url`.
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: Option<String>,
    },
    /// The time span a date, dateTime, instant, Period or Timing covers, in epoch millis.
    Date(DateRange),
    Number(f64),
    Quantity {
        value: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub param: ParamKey,
    pub value: IndexValue,
}

/// Which index table a parameter lives in (for `:missing` and sorting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    String,
    Token,
    Reference,
    Date,
    Number,
    Quantity,
    Uri,
}

/// FHIR search prefixes for ordered types (number, date, quantity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatch {
    /// Default string search: case- and accent-insensitive "starts with".
    StartsWith,
    /// `:exact`: case-sensitive whole-value equality.
    Exact,
    /// `:contains`: case-insensitive substring.
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TokenSystem {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    None,
    /// `system|code` or `system|`.
    Is(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMatch {
    Exact,
    /// `:below`: the stored uri starts with the given one.
    Below,
    /// `:above`: the given uri starts with the stored one.
    Above,
}

/// One condition on a resource; a `Filter` ORs several, a query ANDs filters.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `_id`
    Id(String),
    /// `_lastUpdated`, against the stored version's timestamp.
    LastUpdated { prefix: Prefix, range: DateRange },
    String {
        param: ParamKey,
        value: String,
        mode: StringMatch,
    },
    Token {
        param: ParamKey,
        system: TokenSystem,
        /// `None` for `system|` (any code in the system).
        code: Option<String>,
    },
    /// `:text` on a token parameter: starts-with on the display text, case-insensitive.
    TokenText { param: ParamKey, text: String },
    Reference {
        param: ParamKey,
        target_type: Option<String>,
        target_id: Option<String>,
        /// An absolute URL or canonical (then `target_*` are `None`).
        url: Option<String>,
    },
    Date {
        param: ParamKey,
        prefix: Prefix,
        range: DateRange,
    },
    /// `value` with the half-width of its precision, for `eq` (1.5 matches [1.45, 1.55)).
    Number {
        param: ParamKey,
        prefix: Prefix,
        value: f64,
        tolerance: f64,
    },
    Quantity {
        param: ParamKey,
        prefix: Prefix,
        value: f64,
        tolerance: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Uri {
        param: ParamKey,
        uri: String,
        mode: UriMatch,
    },
    /// `:missing=true|false`.
    Missing {
        param: ParamKey,
        kind: IndexKind,
        missing: bool,
    },
    /// `:not` and other negations: the resource has no value matching the inner condition.
    Not(Box<Condition>),
    /// Chaining: the reference parameter points at a `target_type` resource that satisfies `inner`.
    Chain {
        param: ParamKey,
        target_type: String,
        inner: Box<Condition>,
    },
    /// Reverse chaining (`_has:Type:param:inner`): some `source_type` resource refers to this
    /// one through `param` and satisfies `inner`.
    Has {
        source_type: String,
        param: ParamKey,
        inner: Box<Condition>,
    },
    /// Any of the conditions holds; none does when there are none. A parameter whose values
    /// are stored under other parameters' keys asks each of them this way.
    AnyOf(Vec<Condition>),
}

impl Condition {
    /// The condition asked of another parameter's rows (conditions without a parameter,
    /// and those that nest, come back unchanged).
    pub fn on_param(self, key: &str) -> Condition {
        let mut c = self;
        match &mut c {
            Condition::String { param, .. }
            | Condition::Token { param, .. }
            | Condition::TokenText { param, .. }
            | Condition::Reference { param, .. }
            | Condition::Date { param, .. }
            | Condition::Number { param, .. }
            | Condition::Quantity { param, .. }
            | Condition::Uri { param, .. }
            | Condition::Missing { param, .. } => *param = key.to_string(),
            Condition::Id(_)
            | Condition::LastUpdated { .. }
            | Condition::Not(_)
            | Condition::Chain { .. }
            | Condition::Has { .. }
            | Condition::AnyOf(_) => {}
        }
        c
    }
}

/// Conditions ORed together (a comma-separated parameter value).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub any_of: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SortField {
    Id,
    LastUpdated,
    /// By a parameter's values: the smallest ascending, the largest descending. `params`
    /// are the keys its rows are stored under (its own, or those it shares).
    Param {
        params: Vec<ParamKey>,
        kind: IndexKind,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub field: SortField,
    pub descending: bool,
}

/// A parsed search, ready for the store. Results are ordered by `sort`, then by insertion
/// order, which keeps paging stable.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// `None` for a system-level search across all types.
    pub resource_type: Option<String>,
    /// Restricts a system-level search to these types (`_type`); empty means all.
    pub types: Vec<String>,
    pub filters: Vec<Filter>,
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub offset: usize,
    /// Count all matches as well (`Bundle.total`).
    pub total: bool,
}

impl SearchQuery {
    pub fn new(resource_type: Option<&str>) -> Self {
        SearchQuery {
            resource_type: resource_type.map(str::to_string),
            types: Vec::new(),
            filters: Vec::new(),
            sort: Vec::new(),
            count: 20,
            offset: 0,
            total: true,
        }
    }
}

/// `_include` / `_revinclude`.
#[derive(Debug, Clone, PartialEq)]
pub struct IncludeSpec {
    /// The resource type holding the reference parameter.
    pub source_type: String,
    pub param: ParamKey,
    pub target_type: Option<String>,
    /// `_revinclude`: the reference points at a match rather than from it.
    pub reverse: bool,
    /// `:iterate` — apply to included resources too.
    pub iterate: bool,
}
