use crate::outcome::{Issue, IssueCode, OperationOutcome};

/// What went wrong, in the terms the FHIR REST API answers with; the HTTP edge maps each
/// kind to its status code so no library crate needs to know about HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed or invalid content, bad search parameters.
    BadRequest,
    /// 401: no or unknown credentials.
    Unauthorized,
    /// 403: authenticated but not allowed.
    Forbidden,
    /// 404: unknown resource type or id.
    NotFound,
    /// 405: the interaction is not allowed on this resource.
    MethodNotAllowed,
    /// 406: the requested response format cannot be produced.
    NotAcceptable,
    /// 408: the request was not received in time.
    RequestTimeout,
    /// 409: a version conflict detected without `If-Match`.
    Conflict,
    /// 410: the resource was deleted.
    Gone,
    /// 412: `If-Match` or a conditional interaction's precondition failed.
    PreconditionFailed,
    /// 413: request body over the configured limit.
    PayloadTooLarge,
    /// 415: request body in a format caregate does not read.
    UnsupportedMediaType,
    /// 422: well-formed content that breaks a profile or business rule.
    Unprocessable,
    /// 500: caregate's own fault.
    Internal,
    /// 501: a recognised but unimplemented feature.
    NotImplemented,
    /// 503: storage temporarily unavailable.
    Unavailable,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::NotAcceptable => 406,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::Conflict => 409,
            ErrorKind::Gone => 410,
            ErrorKind::PreconditionFailed => 412,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Unprocessable => 422,
            ErrorKind::Internal => 500,
            ErrorKind::NotImplemented => 501,
            ErrorKind::Unavailable => 503,
        }
    }

    fn default_code(self) -> IssueCode {
        match self {
            ErrorKind::BadRequest | ErrorKind::Unprocessable => IssueCode::Invalid,
            ErrorKind::Unauthorized => IssueCode::Login,
            ErrorKind::Forbidden => IssueCode::Forbidden,
            ErrorKind::NotFound => IssueCode::NotFound,
            ErrorKind::Gone => IssueCode::Deleted,
            ErrorKind::Conflict | ErrorKind::PreconditionFailed => IssueCode::Conflict,
            ErrorKind::PayloadTooLarge => IssueCode::TooLong,
            ErrorKind::MethodNotAllowed
            | ErrorKind::NotAcceptable
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::NotImplemented => IssueCode::NotSupported,
            ErrorKind::Internal => IssueCode::Exception,
            ErrorKind::Unavailable => IssueCode::Transient,
            ErrorKind::RequestTimeout => IssueCode::Timeout,
        }
    }
}

/// An error answered to a FHIR client: a kind (→ HTTP status) and the issues that explain it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {}", summary(.issues))]
pub struct FhirError {
    pub kind: ErrorKind,
    pub issues: Vec<Issue>,
}

fn summary(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| match i.expression.first() {
            Some(e) => format!("{} ({e})", i.diagnostics),
            None => i.diagnostics.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub type FhirResult<T> = Result<T, FhirError>;

impl FhirError {
    pub fn new(kind: ErrorKind, diagnostics: impl Into<String>) -> Self {
        FhirError {
            kind,
            issues: vec![Issue::error(kind.default_code(), diagnostics)],
        }
    }

    /// An error about one element, located by a FHIRPath expression.
    pub fn at(
        kind: ErrorKind,
        expression: impl Into<String>,
        diagnostics: impl Into<String>,
    ) -> Self {
        FhirError {
            kind,
            issues: vec![Issue::error(kind.default_code(), diagnostics).at(expression)],
        }
    }

    pub fn with_issues(kind: ErrorKind, issues: Vec<Issue>) -> Self {
        FhirError { kind, issues }
    }

    pub fn bad_request(diagnostics: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, diagnostics)
    }

    pub fn internal(diagnostics: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, diagnostics)
    }

    /// Replaces the code of every issue (e.g. `processing` for precondition failures).
    pub fn with_code(mut self, code: IssueCode) -> Self {
        for issue in &mut self.issues {
            issue.code = code;
        }
        self
    }

    /// Prefixes every issue location, e.g. with `Bundle.entry[3].resource` when a bundle entry failed.
    pub fn located_under(mut self, prefix: &str, resource_type: &str) -> Self {
        for issue in &mut self.issues {
            issue.relocate(prefix, resource_type);
        }
        self
    }

    pub fn outcome(&self) -> OperationOutcome {
        OperationOutcome {
            issues: self.issues.clone(),
        }
    }
}
