//! FHIR R4 vocabulary every caregate crate speaks: resource type names, ids, instants and
//! the `OperationOutcome` issues that carry errors (with a FHIRPath location) from the crate
//! that found them to the HTTP edge.

pub mod bench;
pub mod cpu_time;
mod error;
pub mod json;
pub mod keys;
mod limits;
pub mod memory;
mod outcome;
mod resource_types;
mod text;
mod time;

pub use error::{ErrorKind, FhirError, FhirResult};
pub use limits::{check_content, xml_depth, ContentLimits};
pub use outcome::{Issue, IssueCode, OperationOutcome, Severity};
pub use resource_types::{is_resource_type, RESOURCE_TYPES};
pub use text::fold_latin;
pub use time::{format_instant, now_instant, parse_date_range, DateRange};

/// True when `id` is a valid FHIR logical id: 1–64 of `A-Z a-z 0-9 - .`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("abc-1.2"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(is_valid_id(&"a".repeat(64)));
    }
}
