use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }

    pub fn is_error(self) -> bool {
        matches!(self, Severity::Fatal | Severity::Error)
    }
}

/// The R4 `issue-type` codes caregate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    TooCostly,
    Timeout,
    CodeInvalid,
    Extension,
    BusinessRule,
    Conflict,
    Transient,
    Exception,
    Informational,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invariant => "invariant",
            IssueCode::Security => "security",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Processing => "processing",
            IssueCode::NotSupported => "not-supported",
            IssueCode::Duplicate => "duplicate",
            IssueCode::MultipleMatches => "multiple-matches",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::TooLong => "too-long",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Timeout => "timeout",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::Extension => "extension",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Conflict => "conflict",
            IssueCode::Transient => "transient",
            IssueCode::Exception => "exception",
            IssueCode::Informational => "informational",
        }
    }
}

/// One `OperationOutcome.issue`. `expression` holds FHIRPath locations such as
/// `Patient.name[0].given[1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    pub diagnostics: String,
    pub expression: Vec<String>,
}

impl Issue {
    pub fn new(severity: Severity, code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity,
            code,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, diagnostics)
    }

    pub fn warning(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, diagnostics)
    }

    pub fn information(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self::new(Severity::Information, code, diagnostics)
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    /// Re-roots locations that start with `resource_type` under `prefix`
    /// (`Patient.name` → `Bundle.entry[2].resource.name`); others get the prefix alone.
    pub fn relocate(&mut self, prefix: &str, resource_type: &str) {
        if self.expression.is_empty() {
            self.expression.push(prefix.to_string());
            return;
        }
        for expr in &mut self.expression {
            let rest = expr
                .strip_prefix(resource_type)
                .filter(|r| r.is_empty() || r.starts_with('.') || r.starts_with('['));
            *expr = match rest {
                Some(rest) => format!("{prefix}{rest}"),
                None => format!("{prefix}.{expr}"),
            };
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("severity".into(), json!(self.severity.as_str()));
        m.insert("code".into(), json!(self.code.as_str()));
        if !self.diagnostics.is_empty() {
            m.insert("diagnostics".into(), json!(self.diagnostics));
        }
        if !self.expression.is_empty() {
            m.insert("expression".into(), json!(self.expression));
        }
        Value::Object(m)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperationOutcome {
    pub issues: Vec<Issue>,
}

impl OperationOutcome {
    pub fn single(issue: Issue) -> Self {
        OperationOutcome {
            issues: vec![issue],
        }
    }

    pub fn has_errors(&self) -> bool {
        self.issues.iter().any(|i| i.severity.is_error())
    }

    pub fn to_json(&self) -> Value {
        let issues: Vec<Value> = if self.issues.is_empty() {
            // An OperationOutcome needs at least one issue; "all ok" is said explicitly.
            vec![Issue::information(IssueCode::Informational, "All OK").to_json()]
        } else {
            self.issues.iter().map(Issue::to_json).collect()
        };
        json!({ "resourceType": "OperationOutcome", "issue": issues })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocates_issue_paths_into_bundle_entries() {
        let mut issue = Issue::error(IssueCode::Structure, "x").at("Patient.name[0]");
        issue.relocate("Bundle.entry[2].resource", "Patient");
        assert_eq!(issue.expression, vec!["Bundle.entry[2].resource.name[0]"]);
        let mut other = Issue::error(IssueCode::Structure, "x").at("PatientX.a");
        other.relocate("Bundle.entry[0].resource", "Patient");
        assert_eq!(
            other.expression,
            vec!["Bundle.entry[0].resource.PatientX.a"]
        );
    }

    #[test]
    fn outcome_json_shape() {
        let oo =
            OperationOutcome::single(Issue::error(IssueCode::Invalid, "bad").at("Patient.gender"));
        let v = oo.to_json();
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["severity"], "error");
        assert_eq!(v["issue"][0]["code"], "invalid");
        assert_eq!(v["issue"][0]["expression"][0], "Patient.gender");
        assert_eq!(
            OperationOutcome::default().to_json()["issue"][0]["severity"],
            "information"
        );
    }
}
