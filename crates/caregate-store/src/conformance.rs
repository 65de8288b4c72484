//! Conformance statistics per source system: for each day, client, resource type and
//! profile, how many resources arrived, were accepted, rejected or accepted with warnings,
//! and which issues (by element and kind) were most frequent.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Transaction};

use crate::StoreError;

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS conformance_count (
    day TEXT NOT NULL, client TEXT NOT NULL, rtype TEXT NOT NULL, profile TEXT NOT NULL,
    received INTEGER NOT NULL, accepted INTEGER NOT NULL, rejected INTEGER NOT NULL, warned INTEGER NOT NULL,
    PRIMARY KEY (day, client, rtype, profile)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conformance_issue (
    day TEXT NOT NULL, client TEXT NOT NULL, rtype TEXT NOT NULL, profile TEXT NOT NULL,
    severity TEXT NOT NULL, code TEXT NOT NULL, element TEXT NOT NULL,
    example TEXT NOT NULL, occurrences INTEGER NOT NULL,
    PRIMARY KEY (day, client, rtype, profile, severity, code, element)
) WITHOUT ROWID;
"#;

/// One inbound resource's validation outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct ConformanceRecord {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// The client id (`local` in development mode).
    pub client: String,
    pub resource_type: String,
    /// The profile validated against (`base` for the core definition only).
    pub profile: String,
    pub accepted: bool,
    /// (severity, issue code, element path without indexes, example message).
    pub issues: Vec<(String, String, String, String)>,
}

/// Adds a request's records to the statistics. Records are summed per key first, so a
/// Bundle of 300 resources of a dozen types costs a dozen upserts, not 300.
pub(crate) fn record(
    tx: &Transaction<'_>,
    records: &[ConformanceRecord],
) -> Result<(), StoreError> {
    type CountKey<'r> = (&'r str, &'r str, &'r str, &'r str);
    type IssueKey<'r> = (CountKey<'r>, &'r str, &'r str, &'r str);
    let mut counts: BTreeMap<CountKey<'_>, [i64; 4]> = BTreeMap::new();
    let mut issues: BTreeMap<IssueKey<'_>, (&str, i64)> = BTreeMap::new();
    for r in records {
        let key = (&*r.day, &*r.client, &*r.resource_type, &*r.profile);
        let warned = r.accepted && r.issues.iter().any(|(s, ..)| s == "warning");
        let c = counts.entry(key).or_default();
        c[0] += 1;
        c[1] += i64::from(r.accepted);
        c[2] += i64::from(!r.accepted);
        c[3] += i64::from(warned);
        for (severity, code, element, example) in &r.issues {
            issues
                .entry((key, severity, code, element))
                .or_insert((example, 0))
                .1 += 1;
        }
    }
    let mut upsert_count = tx.prepare_cached(
        "INSERT INTO conformance_count (day, client, rtype, profile, received, accepted, rejected, warned)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (day, client, rtype, profile) DO UPDATE SET
           received = received + ?5, accepted = accepted + ?6, rejected = rejected + ?7, warned = warned + ?8",
    )?;
    for ((day, client, rtype, profile), [received, accepted, rejected, warned]) in counts {
        upsert_count.execute(params![
            day, client, rtype, profile, received, accepted, rejected, warned
        ])?;
    }
    let mut upsert_issue = tx.prepare_cached(
        "INSERT INTO conformance_issue (day, client, rtype, profile, severity, code, element, example, occurrences)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (day, client, rtype, profile, severity, code, element) DO UPDATE SET occurrences = occurrences + ?9",
    )?;
    for (((day, client, rtype, profile), severity, code, element), (example, n)) in issues {
        upsert_issue.execute(params![
            day, client, rtype, profile, severity, code, element, example, n
        ])?;
    }
    Ok(())
}

/// Counts per (client, type, profile), summed over the days selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceCount {
    pub client: String,
    pub resource_type: String,
    pub profile: String,
    pub received: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub warned: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceIssue {
    pub client: String,
    pub resource_type: String,
    pub severity: String,
    pub code: String,
    pub element: String,
    pub example: String,
    pub occurrences: u64,
}

/// (day, client, received, rejected)
pub type DailyTrend = (String, String, u64, u64);

#[derive(Debug, Clone, Default)]
pub struct ConformanceReport {
    pub counts: Vec<ConformanceCount>,
    /// Most frequent first.
    pub top_issues: Vec<ConformanceIssue>,
    pub trend: Vec<DailyTrend>,
}

pub(crate) fn report(
    conn: &Connection,
    client: Option<&str>,
    since_day: Option<&str>,
) -> Result<ConformanceReport, StoreError> {
    let client = client.unwrap_or("");
    let since = since_day.unwrap_or("");
    let filter = "(?1 = '' OR client = ?1) AND day >= ?2";
    let mut counts = Vec::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT client, rtype, profile, SUM(received), SUM(accepted), SUM(rejected), SUM(warned)
         FROM conformance_count WHERE {filter} GROUP BY client, rtype, profile ORDER BY client, rtype, profile"
    ))?;
    let rows = stmt.query_map(params![client, since], |r| {
        Ok(ConformanceCount {
            client: r.get(0)?,
            resource_type: r.get(1)?,
            profile: r.get(2)?,
            received: r.get::<_, i64>(3)? as u64,
            accepted: r.get::<_, i64>(4)? as u64,
            rejected: r.get::<_, i64>(5)? as u64,
            warned: r.get::<_, i64>(6)? as u64,
        })
    })?;
    for row in rows {
        counts.push(row?);
    }
    let mut top_issues = Vec::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT client, rtype, severity, code, element, MAX(example), SUM(occurrences) AS n
         FROM conformance_issue WHERE {filter} GROUP BY client, rtype, severity, code, element ORDER BY n DESC, element LIMIT 50"
    ))?;
    let rows = stmt.query_map(params![client, since], |r| {
        Ok(ConformanceIssue {
            client: r.get(0)?,
            resource_type: r.get(1)?,
            severity: r.get(2)?,
            code: r.get(3)?,
            element: r.get(4)?,
            example: r.get(5)?,
            occurrences: r.get::<_, i64>(6)? as u64,
        })
    })?;
    for row in rows {
        top_issues.push(row?);
    }
    let mut trend = Vec::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT day, client, SUM(received), SUM(rejected) FROM conformance_count WHERE {filter} GROUP BY day, client ORDER BY day, client"
    ))?;
    let rows = stmt.query_map(params![client, since], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
        ))
    })?;
    for row in rows {
        trend.push(row?);
    }
    Ok(ConformanceReport {
        counts,
        top_issues,
        trend,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rtype: &str, accepted: bool, issues: &[(&str, &str, &str)]) -> ConformanceRecord {
        ConformanceRecord {
            day: "2026-11-27".into(),
            client: "ehr-a".into(),
            resource_type: rtype.into(),
            profile: "base".into(),
            accepted,
            issues: issues
                .iter()
                .map(|(sev, el, ex)| {
                    (
                        sev.to_string(),
                        "invalid".into(),
                        el.to_string(),
                        ex.to_string(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_adds_up_like_single_records() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let tx = conn.transaction().unwrap();
        record(
            &tx,
            &[
                rec(
                    "Observation",
                    true,
                    &[("warning", "Observation.code", "first")],
                ),
                rec("Observation", true, &[]),
                rec(
                    "Observation",
                    false,
                    &[("error", "Observation.status", "bad")],
                ),
                rec("Patient", true, &[]),
                rec(
                    "Observation",
                    true,
                    &[("warning", "Observation.code", "second")],
                ),
            ],
        )
        .unwrap();
        // A later request adds to the same rows; the first example seen is kept.
        record(
            &tx,
            &[rec(
                "Observation",
                true,
                &[("warning", "Observation.code", "third")],
            )],
        )
        .unwrap();
        tx.commit().unwrap();
        let report = report(&conn, Some("ehr-a"), None).unwrap();
        let obs = report
            .counts
            .iter()
            .find(|c| c.resource_type == "Observation")
            .unwrap();
        assert_eq!(
            (obs.received, obs.accepted, obs.rejected, obs.warned),
            (5, 4, 1, 3)
        );
        let patient = report
            .counts
            .iter()
            .find(|c| c.resource_type == "Patient")
            .unwrap();
        assert_eq!((patient.received, patient.accepted), (1, 1));
        let code = report
            .top_issues
            .iter()
            .find(|i| i.element == "Observation.code")
            .unwrap();
        assert_eq!((code.occurrences, code.example.as_str()), (3, "first"));
        let status = report
            .top_issues
            .iter()
            .find(|i| i.element == "Observation.status")
            .unwrap();
        assert_eq!((status.occurrences, status.severity.as_str()), (1, "error"));
        assert_eq!(
            report.trend,
            vec![("2026-11-27".into(), "ehr-a".into(), 6, 1)]
        );
    }
}
