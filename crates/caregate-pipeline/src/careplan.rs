//! The shared care-plan view and `Patient/$match`: gathers a person's linked Patients and
//! the resources the reader may see, and hands them to `caregate-careplan`.

use caregate_audit::{patient_of, Subtype};
use caregate_careplan::{
    build_view, group_people, match_candidates, view_etag, LinkConfig, Person, Source, ViewOptions,
};
use caregate_core::{parse_date_range, ErrorKind, FhirError, FhirResult};
use caregate_store::VersionRecord;
use serde_json::{json, Value};

use crate::write::parse_record;
use crate::{check_resource_type, store_error, Caller, Permission, Pipeline};

/// The resource types a shared care plan draws on, with the parameter naming their patient.
const VIEW_SOURCES: [(&str, &str); 10] = [
    ("CarePlan", "subject"),
    ("Goal", "subject"),
    ("Condition", "subject"),
    ("ServiceRequest", "subject"),
    ("MedicationRequest", "subject"),
    ("Task", "patient"),
    ("Appointment", "patient"),
    ("CareTeam", "subject"),
    ("Encounter", "subject"),
    ("Provenance", "patient"),
];

/// A computed view and its ETag.
#[derive(Debug, Clone)]
pub struct CarePlanView {
    pub bundle: Value,
    pub etag: String,
}

impl Pipeline {
    fn search_all(
        &self,
        resource_type: &str,
        params: Vec<(String, String)>,
        limit: usize,
    ) -> FhirResult<Vec<VersionRecord>> {
        let mut parsed = self.search.parse(Some(resource_type), &params, true)?;
        parsed.query.count = limit;
        parsed.query.total = false;
        Ok(self
            .store
            .search(&parsed.query)
            .map_err(store_error)?
            .matches)
    }

    /// Patients that could be the same person as `patient`: sharing an identifier, or the
    /// same family name and birth date.
    fn candidates_for(&self, patient: &Value) -> FhirResult<Vec<Value>> {
        let mut found: Vec<Value> = Vec::new();
        let mut add = |records: Vec<VersionRecord>| -> FhirResult<()> {
            for r in records {
                let v = parse_record(&r)?;
                if !found.iter().any(|f| f.get("id") == v.get("id")) {
                    found.push(v);
                }
            }
            Ok(())
        };
        for ident in patient
            .get("identifier")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let (Some(system), Some(value)) = (
                ident.get("system").and_then(Value::as_str),
                ident.get("value").and_then(Value::as_str),
            ) {
                let token = format!("{}|{}", escape(system), escape(value));
                add(self.search_all("Patient", vec![("identifier".into(), token)], 50)?)?;
            }
        }
        let family = patient.pointer("/name/0/family").and_then(Value::as_str);
        let birth = patient.get("birthDate").and_then(Value::as_str);
        if let (Some(family), Some(birth)) = (family, birth) {
            add(self.search_all(
                "Patient",
                vec![
                    ("family".into(), escape(family)),
                    ("birthdate".into(), birth.to_string()),
                ],
                50,
            )?)?;
        }
        Ok(found)
    }

    /// The person `Patient/{id}` belongs to, from the configured linking rules.
    fn person_of(&self, patient: &Value, id: &str) -> FhirResult<Person> {
        let mut candidates = self.candidates_for(patient)?;
        if !candidates
            .iter()
            .any(|c| c.get("id").and_then(Value::as_str) == Some(id))
        {
            candidates.push(patient.clone());
        }
        let cfg = LinkConfig {
            trusted_systems: self.options.trusted_identifier_systems.clone(),
        };
        let me = format!("Patient/{id}");
        Ok(group_people(&candidates, &cfg)
            .into_iter()
            .find(|p| p.members.contains(&me))
            .unwrap_or(Person {
                members: vec![me],
                links: Vec::new(),
            }))
    }

    /// `GET /Patient/{id}/$care-plan`: one synthesized CarePlan for the person, from every
    /// linked Patient's resources that this reader may see.
    pub fn care_plan(
        &self,
        caller: &Caller,
        id: &str,
        since: Option<&str>,
    ) -> FhirResult<CarePlanView> {
        self.audited(
            caller,
            Subtype::Operation,
            Some(format!("Patient/{id}")),
            || self.care_plan_inner(caller, id, since),
        )
    }

    fn care_plan_inner(
        &self,
        caller: &Caller,
        id: &str,
        since: Option<&str>,
    ) -> FhirResult<CarePlanView> {
        check_resource_type("Patient")?;
        caller.require("Patient", Permission::Read)?;
        caller.require("CarePlan", Permission::Search)?;
        if let Some(s) = since {
            if parse_date_range(s).is_none() {
                return Err(FhirError::at(
                    ErrorKind::BadRequest,
                    "_since",
                    format!("'_since' must be an instant, not '{s}'"),
                ));
            }
        }
        let record = self
            .store
            .read("Patient", id)
            .map_err(store_error)?
            .filter(|r| !r.is_deleted())
            .ok_or_else(|| FhirError::not_found(format!("Patient/{id} is not known")))?;
        let mut scope = self.consent_scope(caller)?;
        let patient = parse_record(&record)?;
        if !scope.readable(&patient)? {
            return Err(FhirError::not_found(format!("Patient/{id} is not known")));
        }
        let person = self.person_of(&patient, id)?;
        let mut gathered: Vec<(Value, String)> = Vec::new();
        let mut withheld = false;
        for member in &person.members {
            for (rtype, param) in VIEW_SOURCES {
                if self.search.param(rtype, param).is_none() {
                    continue;
                }
                for r in self.search_all(rtype, vec![(param.to_string(), member.clone())], 1000)? {
                    if gathered.iter().any(|(v, _)| {
                        v.get("id").and_then(Value::as_str) == Some(&r.id)
                            && v.get("resourceType").and_then(Value::as_str)
                                == Some(&r.resource_type)
                    }) {
                        continue;
                    }
                    let v = parse_record(&r)?;
                    if scope.readable(&v)? {
                        gathered.push((v, r.last_updated.clone()));
                    } else {
                        withheld = true;
                    }
                }
            }
        }
        let sources: Vec<Source<'_>> = gathered
            .iter()
            .map(|(v, last_updated)| Source {
                resource: v,
                source_org: v
                    .pointer("/meta/tag")
                    .and_then(Value::as_array)
                    .and_then(|tags| {
                        tags.iter().find(|t| {
                            t.get("system").and_then(Value::as_str)
                                == Some(crate::write::CONTRIBUTOR_SYSTEM)
                        })
                    })
                    .and_then(|t| t.get("code").and_then(Value::as_str))
                    .map(str::to_string),
                source_system: v
                    .pointer("/meta/source")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                last_updated: last_updated.clone(),
            })
            .collect();
        let bundle = build_view(
            &person,
            &sources,
            &ViewOptions {
                now: caregate_core::now_instant().1,
                since: since.map(str::to_string),
                withheld,
            },
        );
        let etag = view_etag(&bundle);
        let touched: Vec<(String, Option<String>)> = gathered
            .iter()
            .map(|(v, _)| {
                (
                    format!(
                        "{}/{}",
                        v.get("resourceType")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                        v.get("id").and_then(Value::as_str).unwrap_or_default()
                    ),
                    patient_of(v),
                )
            })
            .collect();
        scope.audit_alerts(caller, Subtype::Operation);
        self.audit_async(&self.per_patient_entries(
            caller,
            Subtype::Operation,
            touched,
            Some(format!("Patient/{id}/$care-plan")),
        ));
        Ok(CarePlanView { bundle, etag })
    }

    /// `POST /Patient/$match` (R4 operation): candidates for the given Patient, graded.
    pub fn patient_match(
        &self,
        caller: &Caller,
        parameters: &Value,
        base: &str,
    ) -> FhirResult<Value> {
        caller.require("Patient", Permission::Search)?;
        let params = parameters
            .get("parameter")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let resource = params
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
            .and_then(|p| p.get("resource"))
            .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Patient"))
            .ok_or_else(|| {
                FhirError::at(
                    ErrorKind::BadRequest,
                    "Parameters.parameter",
                    "$match needs a 'resource' parameter holding a Patient",
                )
            })?;
        let only_certain = params
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some("onlyCertainMatches"))
            .and_then(|p| p.get("valueBoolean"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let count = params
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some("count"))
            .and_then(|p| p.get("valueInteger"))
            .and_then(Value::as_u64)
            .map_or(usize::MAX, |c| c as usize);
        let mut scope = self.consent_scope(caller)?;
        let mut candidates = Vec::new();
        for c in self.candidates_for(resource)? {
            if scope.readable(&c)? {
                candidates.push(c);
            }
        }
        let cfg = LinkConfig {
            trusted_systems: self.options.trusted_identifier_systems.clone(),
        };
        let matches = match_candidates(resource, &candidates, &cfg, only_certain, count);
        let entries: Vec<Value> = matches
            .iter()
            .filter_map(|(reference, m)| {
                let id = reference.strip_prefix("Patient/")?;
                let patient = candidates.iter().find(|c| c.get("id").and_then(Value::as_str) == Some(id))?;
                Some(json!({"fullUrl": format!("{base}/{reference}"), "resource": patient, "search": m.search_element()}))
            })
            .collect();
        let mut entry = self.audit_entry(caller, Subtype::Operation);
        entry.query = Some("Patient/$match".into());
        entry.entities = matches.iter().map(|(r, _)| r.clone()).collect();
        self.audit_async(&[entry]);
        Ok(json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "searchset",
            "total": entries.len(),
            "entry": entries
        }))
    }
}

/// Escapes a search value (`,` `|` `$` `\`).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('|', "\\|")
        .replace('$', "\\$")
}

/// The shared care-plan view as a page for clinicians: problems, goals, activities, the care
/// team and flags, each item with where it came from.
pub fn care_plan_html(patient_id: &str, view: &Value) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let entries = view
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let label = |r: &Value| -> String {
        for pointer in [
            "/code/text",
            "/code/coding/0/display",
            "/description/text",
            "/description/coding/0/display",
            "/medicationCodeableConcept/coding/0/display",
            "/medicationCodeableConcept/text",
            "/detail",
            "/title",
            "/name",
        ] {
            if let Some(t) = r.pointer(pointer).and_then(Value::as_str) {
                return t.to_string();
            }
        }
        r.pointer("/code/coding/0/code")
            .or_else(|| r.pointer("/description/coding/0/code"))
            .and_then(Value::as_str)
            .unwrap_or("(not coded)")
            .to_string()
    };
    let sources = |r: &Value| -> String {
        let mut out = Vec::new();
        for ext in r
            .get("extension")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if ext.get("url").and_then(Value::as_str)
                != Some(caregate_careplan::ITEM_SOURCE_EXTENSION)
            {
                continue;
            }
            let mut who = String::new();
            for part in ext
                .get("extension")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let value = part
                    .get("valueString")
                    .and_then(Value::as_str)
                    .or_else(|| {
                        part.pointer("/valueReference/reference")
                            .and_then(Value::as_str)
                    })
                    .or_else(|| {
                        part.pointer("/valueReference/display")
                            .and_then(Value::as_str)
                    })
                    .unwrap_or("");
                match part.get("url").and_then(Value::as_str) {
                    Some("organization") | Some("system") if who.is_empty() => {
                        who = value.to_string()
                    }
                    Some("originalReference") if who.is_empty() => who = value.to_string(),
                    _ => {}
                }
            }
            out.push(esc(&who));
        }
        out.join("<br>")
    };
    let status = |r: &Value| -> String {
        r.get("status")
            .or_else(|| r.get("lifecycleStatus"))
            .and_then(Value::as_str)
            .or_else(|| {
                r.pointer("/clinicalStatus/coding/0/code")
                    .and_then(Value::as_str)
            })
            .unwrap_or("")
            .to_string()
    };
    let section = |title: &str, types: &[&str]| -> String {
        let rows: Vec<String> = entries
            .iter()
            .filter_map(|e| e.get("resource"))
            .filter(|r| {
                types.contains(&r.get("resourceType").and_then(Value::as_str).unwrap_or(""))
            })
            .map(|r| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(r.get("resourceType").and_then(Value::as_str).unwrap_or("")),
                    esc(&label(r)),
                    esc(&status(r)),
                    sources(r)
                )
            })
            .collect();
        if rows.is_empty() {
            return format!("<h2>{title}</h2><p>None recorded.</p>");
        }
        format!(
            "<h2>{title}</h2><table><thead><tr><th>Kind</th><th>Item</th><th>Status</th><th>From</th></tr></thead><tbody>{}</tbody></table>",
            rows.join("\n")
        )
    };
    let team: Vec<String> = entries
        .iter()
        .filter_map(|e| e.get("resource"))
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("CareTeam"))
        .flat_map(|t| {
            t.get("participant")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .map(|p| {
            let who = p
                .pointer("/member/display")
                .or_else(|| p.pointer("/member/reference"))
                .and_then(Value::as_str)
                .unwrap_or("(unnamed)");
            let role = p
                .pointer("/role/0/text")
                .or_else(|| p.pointer("/role/0/coding/0/display"))
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("<li>{} — {}</li>", esc(who), esc(role))
        })
        .collect();
    let flags: Vec<String> = entries
        .iter()
        .filter_map(|e| e.get("resource"))
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("DetectedIssue"))
        .map(|r| {
            format!(
                "<li class=\"flag\">{}</li>",
                esc(r.get("detail").and_then(Value::as_str).unwrap_or("flag"))
            )
        })
        .collect();
    let withheld = entries.iter().any(|e| {
        e.pointer("/resource/resourceType").and_then(Value::as_str) == Some("OperationOutcome")
    });
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Shared care plan: Patient/{id}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #999;padding:4px 8px;text-align:left;vertical-align:top}}\
         .flag{{color:#8a1c1c}}.notice{{background:#eef;padding:.5em}}</style></head><body>\
         <h1>Shared care plan</h1><p>Patient/{id}: one view of the plans every contributing team keeps.</p>\
         {withheld}<h2>Flags</h2>{flags}{problems}{goals}{activities}<h2>Care team</h2>{team}</body></html>\n",
        id = esc(patient_id),
        withheld = if withheld { "<p class=\"notice\">Some information was withheld in accordance with the patient's consent.</p>" } else { "" },
        flags = if flags.is_empty() { "<p>No conflicts or gaps found.</p>".to_string() } else { format!("<ul>{}</ul>", flags.join("")) },
        problems = section("Problems", &["Condition"]),
        goals = section("Goals", &["Goal"]),
        activities = section("Activities", &["ServiceRequest", "MedicationRequest", "Task", "Appointment"]),
        team = if team.is_empty() { "<p>No care team recorded.</p>".to_string() } else { format!("<ul>{}</ul>", team.join("")) },
    )
}
