//! FHIR search for caregate: the registry of SearchParameters (compiled once), extraction of
//! index values from resources on write, and parsing of search requests into the store's
//! [`SearchQuery`](caregate_store::index::SearchQuery) vocabulary.
//!
//! The store never sees SearchParameter definitions or FHIRPath: this crate turns a resource
//! into `IndexEntry`s keyed `"{Type}:{code}"` and a query string into `Filter`s over the same
//! keys, so both sides must agree on value normalisation — see [`normalize_string`].

mod extract;
mod parse;
mod registry;
mod text;

pub use registry::{ParamInfo, ParamType, SearchRegistry};
pub use text::normalize_string;

use caregate_store::index::{IncludeSpec, SearchQuery};

/// Most results one page may hold; larger `_count` values are capped to this.
pub const MAX_COUNT: usize = 1000;
/// Page size when the client gives no `_count`.
pub const DEFAULT_COUNT: usize = 20;

/// `_summary` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    /// Only the total: the query asks for no matches and a total.
    Count,
    False,
}

impl Summary {
    pub fn as_str(self) -> &'static str {
        match self {
            Summary::True => "true",
            Summary::Text => "text",
            Summary::Data => "data",
            Summary::Count => "count",
            Summary::False => "false",
        }
    }
}

/// A parsed search request.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSearch {
    /// Filters, sort, `_count`, `_offset`, `_total` for the store.
    pub query: SearchQuery,
    /// `_include` and `_revinclude` (with `:iterate`).
    pub includes: Vec<IncludeSpec>,
    pub summary: Option<Summary>,
    pub elements: Option<Vec<String>>,
    /// Names of parameters ignored under lenient handling, as the client wrote them.
    pub ignored: Vec<String>,
    /// The parameters that were applied, normalised, for self/next links (never `_offset`,
    /// which the link builder sets per page).
    pub self_params: Vec<(String, String)>,
}

#[cfg(test)]
mod tests;
