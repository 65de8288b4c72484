//! Accounting of disclosures (HIPAA §164.528, 42 CFR Part 2 §2.25): every release of a
//! person's data to a client organisation, read back from the audit trail.

use caregate_audit::Subtype;
use caregate_core::{parse_date_range, ErrorKind, FhirError, FhirResult};
use caregate_store::AuditQuery;
use serde_json::{json, Value};

use crate::{check_resource_type, store_error, Caller, Permission, Pipeline};

/// One disclosure: when, to whom, why, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Disclosure {
    pub date: String,
    pub recipient: String,
    pub client: Option<String>,
    pub purpose: Option<String>,
    pub interaction: String,
    pub data: Vec<String>,
    pub audit_event: String,
}

/// Interactions that release data to the caller.
const RELEASES: [&str; 7] = [
    "read",
    "vread",
    "search-type",
    "search-system",
    "history-instance",
    "history-type",
    "history-system",
];

impl Pipeline {
    /// `GET /Patient/{id}/$disclosures?start=&end=`: for auditors (an explicit AuditEvent grant).
    pub fn disclosures(
        &self,
        caller: &Caller,
        patient_id: &str,
        start: Option<&str>,
        end: Option<&str>,
    ) -> FhirResult<Vec<Disclosure>> {
        check_resource_type("AuditEvent")?;
        caller.require("AuditEvent", Permission::Read)?;
        let bound = |name: &str, v: Option<&str>, pick_end: bool| -> FhirResult<Option<i64>> {
            match v {
                None => Ok(None),
                Some(v) => parse_date_range(v)
                    .map(|r| Some(if pick_end { r.end } else { r.start }))
                    .ok_or_else(|| {
                        FhirError::at(
                            ErrorKind::BadRequest,
                            name,
                            format!("'{name}' must be a date, not '{v}'"),
                        )
                    }),
            }
        };
        let mut query = AuditQuery {
            patient: Some(format!("Patient/{patient_id}")),
            outcome: Some("0".into()),
            from_ms: bound("start", start, false)?,
            to_ms: bound("end", end, true)?,
            count: 1000,
            ..AuditQuery::default()
        };
        let mut out = Vec::new();
        loop {
            let (events, total) = self.store.audit_search(&query).map_err(store_error)?;
            for content in &events {
                let Ok(event) = caregate_audit::render_stored(content) else {
                    continue;
                };
                if let Some(d) = disclosure_of(&event) {
                    out.push(d);
                }
            }
            query.offset += events.len();
            if events.is_empty() || query.offset as u64 >= total {
                break;
            }
        }
        out.reverse();
        let mut entry = self.audit_entry(caller, Subtype::Operation);
        entry.patient = Some(format!("Patient/{patient_id}"));
        entry.query = Some(format!("Patient/{patient_id}/$disclosures"));
        self.audit_async(&[entry]);
        Ok(out)
    }
}

fn disclosure_of(event: &Value) -> Option<Disclosure> {
    let interaction = event.pointer("/subtype/0/code")?.as_str()?;
    if !RELEASES.contains(&interaction)
        || event.pointer("/type/code").and_then(Value::as_str) != Some("rest")
    {
        return None;
    }
    let agents = event.get("agent")?.as_array()?;
    let client = agents
        .iter()
        .find(|a| a.get("requestor").and_then(Value::as_bool) == Some(true))
        .and_then(|a| a.pointer("/who/identifier/value"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let organization = agents
        .iter()
        .filter_map(|a| a.pointer("/who/reference").and_then(Value::as_str))
        .find(|r| r.starts_with("Organization/"))
        .map(str::to_string);
    let recipient = organization
        .or_else(|| client.as_ref().map(|c| format!("client {c}")))
        .unwrap_or_else(|| "unauthenticated local development client".into());
    let purpose = agents
        .iter()
        .find_map(|a| a.pointer("/purposeOfUse/0/coding/0/code"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let data = event
        .get("entity")
        .and_then(Value::as_array)
        .map(|es| {
            es.iter()
                .filter(|e| e.pointer("/role/code").and_then(Value::as_str) == Some("4"))
                .filter_map(|e| {
                    e.pointer("/what/reference")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Disclosure {
        date: event.get("recorded")?.as_str()?.to_string(),
        recipient,
        client,
        purpose,
        interaction: interaction.to_string(),
        data,
        audit_event: format!("AuditEvent/{}", event.get("id")?.as_str()?),
    })
}

/// The accounting as FHIR Parameters (one `disclosure` part per release).
pub fn disclosures_parameters(patient_id: &str, list: &[Disclosure]) -> Value {
    let mut parameters = vec![
        json!({"name": "patient", "valueReference": {"reference": format!("Patient/{patient_id}")}}),
    ];
    for d in list {
        let mut part = vec![
            json!({"name": "date", "valueDateTime": d.date}),
            json!({"name": "recipient", "valueString": d.recipient}),
            json!({"name": "interaction", "valueCode": d.interaction}),
            json!({"name": "auditEvent", "valueReference": {"reference": d.audit_event}}),
        ];
        if let Some(p) = &d.purpose {
            part.push(json!({"name": "purpose", "valueCoding": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}}));
        }
        for r in &d.data {
            part.push(json!({"name": "data", "valueReference": {"reference": r}}));
        }
        parameters.push(json!({"name": "disclosure", "part": part}));
    }
    json!({"resourceType": "Parameters", "parameter": parameters})
}

/// The accounting as a printable HTML page.
pub fn disclosures_html(patient_id: &str, list: &[Disclosure]) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut rows = String::new();
    for d in list {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&d.date),
            esc(&d.recipient),
            esc(d.purpose.as_deref().unwrap_or("not stated")),
            esc(&d.interaction),
            esc(&d.data.join(", "))
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Accounting of disclosures: Patient/{id}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:4px 8px;text-align:left;vertical-align:top}}</style></head>\
         <body><h1>Accounting of disclosures</h1><p>Patient/{id} — {n} disclosures, oldest first, from caregate's audit trail.</p>\
         <table><thead><tr><th>Date</th><th>Recipient</th><th>Purpose</th><th>Interaction</th><th>What was disclosed</th></tr></thead><tbody>\n{rows}</tbody></table></body></html>\n",
        id = esc(patient_id),
        n = list.len()
    )
}
