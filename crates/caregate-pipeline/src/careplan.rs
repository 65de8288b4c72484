//! The shared care-plan view and `Patient/$match`: gathers a person's linked Patients and
//! the resources the reader may see, and hands them to `caregate-careplan`.

use caregate_audit::{patient_of, Subtype};
use caregate_careplan::{build_view, group_people, match_candidates, view_etag, LinkConfig, Person, Source, ViewOptions};
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
    fn search_all(&self, resource_type: &str, params: Vec<(String, String)>, limit: usize) -> FhirResult<Vec<VersionRecord>> {
        let mut parsed = self.search.parse(Some(resource_type), &params, true)?;
        parsed.query.count = limit;
        parsed.query.total = false;
        Ok(self.store.search(&parsed.query).map_err(store_error)?.matches)
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
        for ident in patient.get("identifier").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
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
                vec![("family".into(), escape(family)), ("birthdate".into(), birth.to_string())],
                50,
            )?)?;
        }
        Ok(found)
    }

    /// The person `Patient/{id}` belongs to, from the configured linking rules.
    fn person_of(&self, patient: &Value, id: &str) -> FhirResult<Person> {
        let mut candidates = self.candidates_for(patient)?;
        if !candidates.iter().any(|c| c.get("id").and_then(Value::as_str) == Some(id)) {
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
    pub fn care_plan(&self, caller: &Caller, id: &str, since: Option<&str>) -> FhirResult<CarePlanView> {
        self.audited(caller, Subtype::Operation, Some(format!("Patient/{id}")), || {
            self.care_plan_inner(caller, id, since)
        })
    }

    fn care_plan_inner(&self, caller: &Caller, id: &str, since: Option<&str>) -> FhirResult<CarePlanView> {
        check_resource_type("Patient")?;
        caller.require("Patient", Permission::Read)?;
        caller.require("CarePlan", Permission::Search)?;
        if let Some(s) = since {
            if parse_date_range(s).is_none() {
                return Err(FhirError::at(ErrorKind::BadRequest, "_since", format!("'_since' must be an instant, not '{s}'")));
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
                    if gathered.iter().any(|(v, _)| v.get("id").and_then(Value::as_str) == Some(&r.id) && v.get("resourceType").and_then(Value::as_str) == Some(&r.resource_type)) {
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
                source_org: None,
                source_system: v.pointer("/meta/source").and_then(Value::as_str).map(str::to_string),
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
                        v.get("resourceType").and_then(Value::as_str).unwrap_or_default(),
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
    pub fn patient_match(&self, caller: &Caller, parameters: &Value, base: &str) -> FhirResult<Value> {
        caller.require("Patient", Permission::Search)?;
        let params = parameters.get("parameter").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let resource = params
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
            .and_then(|p| p.get("resource"))
            .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Patient"))
            .ok_or_else(|| FhirError::at(ErrorKind::BadRequest, "Parameters.parameter", "$match needs a 'resource' parameter holding a Patient"))?;
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
    v.replace('\\', "\\\\").replace(',', "\\,").replace('|', "\\|").replace('$', "\\$")
}
