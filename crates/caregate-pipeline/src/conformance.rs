//! Per-source conformance statistics: every inbound resource's validation outcome, counted
//! by client, resource type and profile, with its issues grouped by element.

use caregate_core::json::field;
use caregate_core::{ErrorKind, FhirError, Issue, Severity};
use caregate_store::ConformanceRecord;
use serde_json::Value;

use crate::{Caller, Pipeline};

/// `Patient.name[0].given[1]` → `Patient.name.given`: issues group by element, not position.
pub(crate) fn element_of(expression: &str) -> String {
    let mut out = String::with_capacity(expression.len());
    let mut depth = 0;
    for c in expression.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn issue_rows(issues: &[Issue]) -> Vec<(String, String, String, String)> {
    issues
        .iter()
        .filter(|i| i.severity <= Severity::Warning)
        .map(|i| {
            (
                i.severity.as_str().to_string(),
                i.code.as_str().to_string(),
                i.expression
                    .first()
                    .map(|e| element_of(e))
                    .unwrap_or_default(),
                first_chars(&i.diagnostics, 300).to_string(),
            )
        })
        .collect()
}

/// The first `n` characters of `text`.
fn first_chars(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// What every conformance record of one request shares: the day and the sending client,
/// worked out once per request rather than once per Bundle entry.
pub(crate) struct StatsSource {
    day: String,
    client: String,
}

impl StatsSource {
    pub(crate) fn of(caller: &Caller) -> StatsSource {
        StatsSource {
            day: chrono::Utc::now().format("%Y-%m-%d").to_string(),
            client: caller
                .actor
                .client_id
                .clone()
                .unwrap_or_else(|| "local".into()),
        }
    }
}

impl Pipeline {
    pub(crate) fn conformance_record(
        source: &StatsSource,
        resource_type: &str,
        resource: Option<&Value>,
        accepted: bool,
        issues: &[Issue],
    ) -> ConformanceRecord {
        let profile = resource
            .and_then(|r| field(r, "meta"))
            .and_then(|m| field(m, "profile"))
            .and_then(|p| p.get(0))
            .and_then(Value::as_str)
            .unwrap_or("base")
            .to_string();
        ConformanceRecord {
            day: source.day.clone(),
            client: source.client.clone(),
            resource_type: resource_type.to_string(),
            profile,
            accepted,
            issues: issue_rows(issues),
        }
    }

    /// A resource accepted (possibly with warnings).
    pub(crate) fn count_accepted(
        &self,
        caller: &Caller,
        resource_type: &str,
        resource: Option<&Value>,
        issues: &[Issue],
    ) {
        self.record_stats(vec![Self::conformance_record(
            &StatsSource::of(caller),
            resource_type,
            resource,
            true,
            issues,
        )]);
    }

    /// A write refused for its content (validation or profile errors).
    pub(crate) fn count_rejected(&self, caller: &Caller, resource_type: &str, error: &FhirError) {
        if matches!(error.kind, ErrorKind::BadRequest | ErrorKind::Unprocessable)
            && error.issues.iter().any(|i| !i.expression.is_empty())
        {
            self.record_stats(vec![Self::conformance_record(
                &StatsSource::of(caller),
                resource_type,
                None,
                false,
                &error.issues,
            )]);
        }
    }

    pub(crate) fn record_stats(&self, stats: Vec<ConformanceRecord>) {
        if let Err(e) = self.store.record_conformance(stats) {
            tracing::warn!(target: "caregate::conformance", error = %e, "conformance statistics not recorded");
        }
    }
}

impl Pipeline {
    /// Conformance statistics for auditors (an explicit AuditEvent grant).
    pub fn conformance_report(
        &self,
        caller: &Caller,
        source: Option<&str>,
        since: Option<&str>,
    ) -> caregate_core::FhirResult<caregate_store::ConformanceReport> {
        caller.require("AuditEvent", crate::Permission::Read)?;
        let since_day = match since {
            Some(s) => Some(
                caregate_core::parse_date_range(s)
                    .and_then(|r| chrono::DateTime::from_timestamp_millis(r.start))
                    .map(|d| d.format("%Y-%m-%d").to_string())
                    .ok_or_else(|| {
                        FhirError::at(
                            ErrorKind::BadRequest,
                            "since",
                            format!("'since' must be a date, not '{s}'"),
                        )
                    })?,
            ),
            None => None,
        };
        self.store
            .conformance_report(source, since_day.as_deref())
            .map_err(crate::store_error)
    }
}

/// The report as JSON.
pub fn conformance_json(
    report: &caregate_store::ConformanceReport,
    source: Option<&str>,
    since: Option<&str>,
) -> Value {
    use serde_json::json;
    json!({
        "source": source,
        "since": since,
        "generated": caregate_core::now_instant().1,
        "bySource": report.counts.iter().map(|c| json!({
            "source": c.client, "resourceType": c.resource_type, "profile": c.profile,
            "received": c.received, "accepted": c.accepted, "rejected": c.rejected, "acceptedWithWarnings": c.warned
        })).collect::<Vec<_>>(),
        "topIssues": report.top_issues.iter().map(|i| json!({
            "source": i.client, "resourceType": i.resource_type, "severity": i.severity, "code": i.code,
            "element": i.element, "example": i.example, "occurrences": i.occurrences
        })).collect::<Vec<_>>(),
        "trend": report.trend.iter().map(|(day, client, received, rejected)| json!({
            "day": day, "source": client, "received": received, "rejected": rejected
        })).collect::<Vec<_>>()
    })
}

/// The report as a printable HTML page.
pub fn conformance_html(
    report: &caregate_store::ConformanceReport,
    source: Option<&str>,
    since: Option<&str>,
) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut counts = String::new();
    for c in &report.counts {
        let rate = if c.received > 0 {
            c.accepted as f64 * 100.0 / c.received as f64
        } else {
            0.0
        };
        counts.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{rate:.1}%</td></tr>\n",
            esc(&c.client), esc(&c.resource_type), esc(&c.profile), c.received, c.accepted, c.rejected, c.warned
        ));
    }
    let mut issues = String::new();
    for i in &report.top_issues {
        issues.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
            esc(&i.client), esc(&i.resource_type), esc(&i.severity), esc(&i.element), esc(&i.example), i.occurrences
        ));
    }
    let mut trend = String::new();
    for (day, client, received, rejected) in &report.trend {
        trend.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{received}</td><td>{rejected}</td></tr>\n",
            esc(day),
            esc(client)
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Conformance by source system</title><style>\
         body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}td,th{{border:1px solid #999;padding:4px 8px;text-align:left;vertical-align:top}}</style></head><body>\
         <h1>Conformance by source system</h1><p>Source: {}. Since: {}. Generated {}.</p>\
         <h2>Resources received</h2><table><thead><tr><th>Source</th><th>Type</th><th>Profile</th><th>Received</th><th>Accepted</th><th>Rejected</th><th>With warnings</th><th>Accepted</th></tr></thead><tbody>\n{counts}</tbody></table>\
         <h2>Most frequent issues</h2><table><thead><tr><th>Source</th><th>Type</th><th>Severity</th><th>Element</th><th>Example</th><th>Occurrences</th></tr></thead><tbody>\n{issues}</tbody></table>\
         <h2>By day</h2><table><thead><tr><th>Day</th><th>Source</th><th>Received</th><th>Rejected</th></tr></thead><tbody>\n{trend}</tbody></table></body></html>\n",
        esc(source.unwrap_or("all")),
        esc(since.unwrap_or("the beginning")),
        esc(&caregate_core::now_instant().1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_lose_their_indexes() {
        assert_eq!(
            element_of("Patient.name[0].given[12]"),
            "Patient.name.given"
        );
        assert_eq!(
            element_of("Bundle.entry[3].resource.birthDate"),
            "Bundle.entry.resource.birthDate"
        );
        assert_eq!(element_of(""), "");
    }
}
