//! The shared care-plan view, `Patient/$match`, and manual `$link` / `$unlink`: gathers a
//! person's linked Patients and the resources the reader may see, and hands them to
//! `caregate-careplan`.
//!
//! Manual linking decisions are R4 `Linkage` resources written through the ordinary update
//! path (validated, versioned, audited); one Linkage per pair of Patients, with an id derived
//! from the pair, so its history is the pair's decision log. A link is `active: true`, an
//! unlink `active: false`; both carry a `caregate` tag, and only tagged Linkages are
//! applied. Unlinks beat every rule. No source's Patient is ever changed, so undoing a wrong
//! link loses nothing: each Patient's view again draws on its own sources only.
//!
//! Linking is as sensitive as consent management (a wrong link shows one person's record
//! to another person's team), so `$link`/`$unlink` need an explicit Linkage write grant
//! (`system/Linkage.cu`, `.cud`, `.write` or `.*`): the wildcard `system/*.*` does not
//! reach Linkage writes (see `scopes.rs`).
//!
//! Built views are kept in a [`ViewCache`] keyed by reader, Patient and `_since`, and
//! served while nothing they draw on has changed (see `caregate_careplan::cache`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use caregate_audit::{patient_of, Subtype};
use caregate_careplan::{
    build_view, etag_of_json, group_people_with, linkage_resource, linking_keys, match_candidates,
    override_from_linkage, view_etag, LinkConfig, LinkOverride, Person, Source, ViewCache,
    ViewOptions,
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
    /// Shared with the view cache: serving a cached view copies nothing.
    pub bundle: Arc<Value>,
    pub etag: String,
    /// The compact JSON of `bundle`, rendered once per built view (cached views share it).
    json: Arc<std::sync::OnceLock<Vec<u8>>>,
}

impl CarePlanView {
    /// The view, its ETag and compact JSON from one serialisation.
    fn new(bundle: Value) -> CarePlanView {
        let json = std::sync::OnceLock::new();
        let etag = match serde_json::to_vec(&bundle) {
            Ok(bytes) => {
                let etag = etag_of_json(&bytes);
                let _ = json.set(bytes);
                etag
            }
            Err(_) => view_etag(&bundle),
        };
        CarePlanView {
            bundle: Arc::new(bundle),
            etag,
            json: Arc::new(json),
        }
    }

    /// The Bundle as compact JSON (what `serde_json::to_vec` gives), rendered on first use.
    pub fn json(&self) -> &[u8] {
        self.json
            .get_or_init(|| serde_json::to_vec(&*self.bundle).unwrap_or_default())
    }
}

/// What the cache keeps per view: the view and what each read of it must audit.
#[derive(Debug)]
pub(crate) struct CachedCarePlan {
    view: CarePlanView,
    touched: Vec<(String, Option<String>)>,
}

/// The pipeline's view cache.
pub(crate) type CarePlanCache = ViewCache<Arc<CachedCarePlan>>;

/// How long a built view may be served (its gap flags depend on the clock).
const VIEW_TTL: Duration = Duration::from_secs(30);
/// Views kept at most.
const VIEW_CAPACITY: usize = 4096;
/// Resources of one type a view draws on at most.
const MAX_ITEMS: usize = 20_000;
/// Patients gathered into one person at most (bounds the work a chain of links can cause).
const MAX_PERSON_PATIENTS: usize = 256;

pub(crate) fn new_view_cache() -> CarePlanCache {
    ViewCache::new(VIEW_TTL, VIEW_CAPACITY)
}

/// `Parameters.parameter` named `name`.
fn parameter<'a>(parameters: &'a Value, name: &str) -> Option<&'a Value> {
    parameters
        .get("parameter")
        .and_then(Value::as_array)?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
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

    /// The manual decisions recorded for any of `patients`, by Linkage id, with the
    /// decision's `lastUpdated`.
    fn link_decisions(
        &self,
        patients: &[String],
        out: &mut BTreeMap<String, (String, LinkOverride)>,
    ) -> FhirResult<()> {
        if patients.is_empty() || self.search.param("Linkage", "item").is_none() {
            return Ok(());
        }
        // One search for all of them (comma = OR), in chunks to keep the query small.
        for chunk in patients.chunks(50) {
            let value = chunk
                .iter()
                .map(|p| escape(p))
                .collect::<Vec<_>>()
                .join(",");
            for r in self.search_all("Linkage", vec![("item".into(), value)], 1000)? {
                if out.contains_key(&r.id) {
                    continue;
                }
                if let Some(o) = override_from_linkage(&parse_record(&r)?) {
                    out.insert(r.id.clone(), (r.last_updated.clone(), o));
                }
            }
        }
        Ok(())
    }

    /// The person `Patient/{id}` belongs to: the configured linking rules over the Patients
    /// that could match, with the manual decisions applied. Patients joined by a manual
    /// link bring their own candidates (a link may join records no rule would find).
    /// Also returns the linking keys of the person's members (for the view cache).
    fn person_of(&self, patient: &Value, id: &str) -> FhirResult<(Person, Vec<String>)> {
        let me = format!("Patient/{id}");
        let mut known: Vec<Value> = self.candidates_for(patient)?;
        let has = |known: &[Value], r: &str| {
            known
                .iter()
                .any(|c| c.get("id").and_then(Value::as_str) == r.strip_prefix("Patient/"))
        };
        if !has(&known, &me) {
            known.push(patient.clone());
        }
        let mut decisions: BTreeMap<String, (String, LinkOverride)> = BTreeMap::new();
        let mut asked: Vec<String> = Vec::new();
        loop {
            let refs: Vec<String> = known
                .iter()
                .filter_map(|c| c.get("id").and_then(Value::as_str))
                .map(|i| format!("Patient/{i}"))
                .filter(|r| !asked.contains(r))
                .collect();
            if refs.is_empty() || known.len() >= MAX_PERSON_PATIENTS {
                break;
            }
            asked.extend(refs.iter().cloned());
            let before = decisions.len();
            self.link_decisions(&refs, &mut decisions)?;
            if decisions.len() == before {
                break;
            }
            let links: Vec<LinkOverride> = decisions
                .values()
                .map(|(_, o)| o.clone())
                .filter(|o| o.link)
                .collect();
            for o in &links {
                for other in [&o.a, &o.b] {
                    if has(&known, other) || known.len() >= MAX_PERSON_PATIENTS {
                        continue;
                    }
                    let Some(oid) = other.strip_prefix("Patient/") else {
                        continue;
                    };
                    let Some(record) = self
                        .store
                        .read("Patient", oid)
                        .map_err(store_error)?
                        .filter(|r| !r.is_deleted())
                    else {
                        continue;
                    };
                    let linked = parse_record(&record)?;
                    for c in self.candidates_for(&linked)? {
                        let cid = c.get("id").and_then(Value::as_str).unwrap_or_default();
                        if !has(&known, &format!("Patient/{cid}")) {
                            known.push(c);
                        }
                    }
                    if !has(&known, other) {
                        known.push(linked);
                    }
                }
            }
        }
        // Oldest first, so that the newest decision about a pair wins.
        let mut ordered: Vec<(String, LinkOverride)> = decisions.into_values().collect();
        ordered.sort_by(|a, b| a.0.cmp(&b.0));
        let overrides: Vec<LinkOverride> = ordered.into_iter().map(|(_, o)| o).collect();
        let cfg = LinkConfig {
            trusted_systems: self.options.trusted_identifier_systems.clone(),
        };
        let person = group_people_with(&known, &cfg, &overrides)
            .into_iter()
            .find(|p| p.members.contains(&me))
            .unwrap_or(Person {
                members: vec![me],
                links: Vec::new(),
            });
        let mut keys: Vec<String> = known
            .iter()
            .filter(|k| {
                k.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|i| person.members.contains(&format!("Patient/{i}")))
            })
            .flat_map(linking_keys)
            .collect();
        keys.sort();
        keys.dedup();
        Ok((person, keys))
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
        // The reader decides what the view may hold: who they are, for whom they act and
        // why (consent), for which Patient and since when.
        let actor = &caller.actor;
        let key = format!(
            "{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{id}\u{0}{since:?}",
            actor.client_id,
            actor.organization,
            actor.practitioner,
            actor.care_teams,
            actor.purpose_of_use
        );
        // Under emergency access every read is decided (and alerted) afresh.
        let emergency = self.emergency_access_open(caller);
        if !emergency {
            if let Some(hit) = self.views.get(&key) {
                self.audit_view_read(caller, id, &hit.touched);
                return Ok(hit.view.clone());
            }
        }
        let begin = self.views.begin();
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
        let (person, link_keys) = self.person_of(&patient, id)?;
        let stamp = self.views.stamp(begin, &person.members, &link_keys);
        let mut gathered: Vec<(Value, String)> = Vec::new();
        let mut seen: std::collections::HashSet<(String, String)> = Default::default();
        let mut withheld = false;
        // One search per resource type for all members (a comma is OR): each search has a
        // fixed cost (SQL preparation), so 8 sources cost 10 searches, not 80.
        let types: Vec<(&str, &str)> = VIEW_SOURCES
            .into_iter()
            .filter(|(rtype, param)| self.search.param(rtype, param).is_some())
            .collect();
        for members in person.members.chunks(50) {
            let value = members
                .iter()
                .map(|m| escape(m))
                .collect::<Vec<_>>()
                .join(",");
            let search = |part: &[(&str, &str)]| -> FhirResult<Vec<VersionRecord>> {
                let mut out = Vec::new();
                for (rtype, param) in part {
                    let found = self.search_all(
                        rtype,
                        vec![(param.to_string(), value.clone())],
                        MAX_ITEMS,
                    )?;
                    if found.len() >= MAX_ITEMS {
                        // Never drop items silently: a person this large needs paging first.
                        return Err(FhirError::new(
                            ErrorKind::Unprocessable,
                            format!("This person has more than {MAX_ITEMS} {rtype} resources; the shared view cannot be built"),
                        )
                        .with_code(caregate_core::IssueCode::TooCostly));
                    }
                    out.extend(found);
                }
                Ok(out)
            };
            for r in search(&types)? {
                if !seen.insert((r.resource_type.clone(), r.id.clone())) {
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
                withheld: withheld && self.options.withheld_notice,
            },
        );
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
        self.audit_view_read(caller, id, &touched);
        let view = CarePlanView::new(bundle);
        // Views the consent trimmed, or read under emergency access, are built afresh each
        // time: their security alerts must be raised on every read.
        if !withheld && !emergency && !self.emergency_access_open(caller) {
            self.views.put(
                key,
                stamp,
                Arc::new(CachedCarePlan {
                    view: view.clone(),
                    touched,
                }),
            );
        }
        Ok(view)
    }

    /// The read AuditEvents of one view (one per patient whose data it drew on).
    fn audit_view_read(&self, caller: &Caller, id: &str, touched: &[(String, Option<String>)]) {
        self.audit_async(&self.per_patient_entries(
            caller,
            Subtype::Operation,
            touched.iter().cloned(),
            Some(format!("Patient/{id}/$care-plan")),
        ));
    }

    /// Whether the caller asserts an emergency purpose or holds an open break-the-glass
    /// grant for any patient.
    fn emergency_access_open(&self, caller: &Caller) -> bool {
        if matches!(
            caller.actor.purpose_of_use.as_deref(),
            Some("ETREAT" | "BTG")
        ) {
            return true;
        }
        let who = caller
            .actor
            .organization
            .clone()
            .or_else(|| caller.actor.client_id.clone())
            .unwrap_or_else(|| "local".into());
        let now = chrono::Utc::now().timestamp_millis();
        self.emergency_grants
            .lock()
            .iter()
            .any(|((w, _), until)| *w == who && *until > now)
    }

    /// Turns the view cache (and its bookkeeping on every commit) on or off.
    pub fn set_view_cache(&self, enabled: bool) {
        self.views.set_enabled(enabled);
    }

    /// `POST /Patient/{id}/$link` (`link` true) or `$unlink`: records that `Patient/{id}`
    /// and the Parameters' `other` Patient are (or are not) the same person, as a versioned
    /// `Linkage`, and returns it. Both Patients must exist and be visible to the caller.
    pub fn link_patients(
        &self,
        caller: &Caller,
        id: &str,
        parameters: &Value,
        link: bool,
    ) -> FhirResult<Value> {
        self.audited(
            caller,
            Subtype::Operation,
            Some(format!("Patient/{id}")),
            || self.link_patients_inner(caller, id, parameters, link),
        )
    }

    fn link_patients_inner(
        &self,
        caller: &Caller,
        id: &str,
        parameters: &Value,
        link: bool,
    ) -> FhirResult<Value> {
        let op = if link { "$link" } else { "$unlink" };
        caller.require("Patient", Permission::Read)?;
        caller.require("Linkage", Permission::Create)?;
        caller.require("Linkage", Permission::Update)?;
        if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(FhirError::at(
                ErrorKind::BadRequest,
                "Parameters",
                format!("{op} takes a Parameters resource with an 'other' parameter"),
            ));
        }
        const OTHER: &str = "Parameters.parameter.where(name='other').valueReference";
        let other_ref = parameter(parameters, "other")
            .and_then(|p| p.pointer("/valueReference/reference"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                FhirError::at(
                    ErrorKind::BadRequest,
                    OTHER,
                    format!("{op} needs an 'other' parameter: a Reference to the other Patient"),
                )
            })?;
        let other = patient_reference_id(other_ref).ok_or_else(|| {
            FhirError::at(
                ErrorKind::BadRequest,
                OTHER,
                format!("'{other_ref}' is not a reference to a Patient"),
            )
        })?;
        if other == id {
            return Err(FhirError::at(
                ErrorKind::BadRequest,
                OTHER,
                format!("{op} needs two different Patients; both are Patient/{id}"),
            ));
        }
        let mut scope = self.consent_scope(caller)?;
        for pid in [id, other] {
            let record = self
                .store
                .read("Patient", pid)
                .map_err(store_error)?
                .filter(|r| !r.is_deleted())
                .ok_or_else(|| FhirError::not_found(format!("Patient/{pid} is not known")))?;
            if !scope.readable(&parse_record(&record)?)? {
                return Err(FhirError::not_found(format!("Patient/{pid} is not known")));
            }
        }
        scope.audit_alerts(caller, Subtype::Operation);
        let (a, b) = (format!("Patient/{id}"), format!("Patient/{other}"));
        let author = caller
            .actor
            .organization
            .as_deref()
            .filter(|o| o.starts_with("Organization/"));
        let linkage = linkage_resource(&a, &b, link, author);
        let linkage_id = linkage
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // The ordinary update path: validated, versioned, audited, and seen by the view
        // cache's invalidation like any other commit.
        let outcome = self.update(caller, "Linkage", &linkage_id, linkage, None)?;
        let decision = format!(
            "Linkage/{}/_history/{}",
            outcome.record.id, outcome.record.version
        );
        let entries: Vec<_> = [&a, &b]
            .into_iter()
            .map(|p| {
                let mut e = self.audit_entry(caller, Subtype::Operation);
                e.patient = Some(p.clone());
                e.entities = vec![a.clone(), b.clone(), decision.clone()];
                e.query = Some(format!("Patient/{id}/{op}"));
                e
            })
            .collect();
        self.audit_async(&entries);
        Ok(outcome.resource)
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

/// The id in `Patient/{id}` or `https://base/Patient/{id}` (a history suffix ignored).
fn patient_reference_id(reference: &str) -> Option<&str> {
    let r = reference.split("/_history/").next().unwrap_or(reference);
    let (head, id) = r.rsplit_once('/')?;
    let rtype = head.rsplit('/').next().unwrap_or(head);
    (rtype == "Patient" && caregate_core::is_valid_id(id)).then_some(id)
}

/// Escapes a search value (`,` `|` `$` `\`).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('|', "\\|")
        .replace('$', "\\$")
}

/// The shared care-plan view as a page for clinicians: flags first, then problems → goals
/// → activities (each with who is responsible, its status and where it came from), the
/// care team, what changed recently and which records were linked. Self-contained: no
/// scripts, fonts or style sheets from elsewhere.
pub fn care_plan_html(patient_id: &str, view: &Value) -> String {
    let resources: Vec<&Value> = view
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.get("resource"))
        .collect();
    let of_type = |types: &[&str]| -> Vec<&Value> {
        resources
            .iter()
            .copied()
            .filter(|r| types.contains(&str_of(r, "/resourceType")))
            .collect()
    };
    let section = |title: &str, types: &[&str]| -> String {
        let rows: Vec<String> = of_type(types)
            .into_iter()
            .map(|r| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    html_escape(str_of(r, "/resourceType")),
                    html_escape(&item_label(r)),
                    html_escape(&responsible(r)),
                    html_escape(&item_status(r)),
                    item_sources(r)
                        .iter()
                        .map(|(who, _)| html_escape(who))
                        .collect::<Vec<_>>()
                        .join("<br>")
                )
            })
            .collect();
        if rows.is_empty() {
            return format!("<h2>{title}</h2><p>None recorded.</p>");
        }
        format!(
            "<h2>{title}</h2><table><thead><tr><th>Kind</th><th>Item</th><th>Responsible</th><th>Status</th><th>From</th></tr></thead><tbody>{}</tbody></table>",
            rows.join("\n")
        )
    };
    let team: Vec<String> = of_type(&["CareTeam"])
        .into_iter()
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
            let roles: Vec<&str> = p
                .get("role")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|r| {
                    r.get("text")
                        .or_else(|| r.pointer("/coding/0/display"))
                        .and_then(Value::as_str)
                })
                .collect();
            let from: Vec<String> = item_sources(&p).into_iter().map(|(who, _)| who).collect();
            format!(
                "<li>{} — {}{}</li>",
                html_escape(who),
                html_escape(&roles.join(", ")),
                if from.is_empty() {
                    String::new()
                } else {
                    format!(" <small>({})</small>", html_escape(&from.join(", ")))
                }
            )
        })
        .collect();
    let flags: Vec<String> = of_type(&["DetectedIssue"])
        .into_iter()
        .map(|r| {
            format!(
                "<li class=\"flag {}\"><strong>{}</strong>: {}</li>",
                html_escape(str_of(r, "/severity")),
                html_escape(str_of(r, "/code/text")),
                html_escape(r.get("detail").and_then(Value::as_str).unwrap_or("flag"))
            )
        })
        .collect();
    // What changed recently: items by their newest contributing version.
    let mut recent: Vec<(String, String, String)> = of_type(&[
        "Condition",
        "Goal",
        "ServiceRequest",
        "MedicationRequest",
        "Task",
        "Appointment",
    ])
    .into_iter()
    .filter_map(|r| {
        let (who, when) = item_sources(r).into_iter().max_by(|a, b| a.1.cmp(&b.1))?;
        Some((when, item_label(r), who))
    })
    .collect();
    recent.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    recent.truncate(10);
    let recent: Vec<String> = recent
        .iter()
        .map(|(when, what, who)| {
            format!(
                "<li><time>{}</time> {} <small>({})</small></li>",
                html_escape(when.get(..10).unwrap_or(when)),
                html_escape(what),
                html_escape(who)
            )
        })
        .collect();
    let linked: Vec<String> = of_type(&["Patient"])
        .into_iter()
        .flat_map(|p| {
            p.get("link")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .map(|l| {
            let basis = l
                .pointer("/extension/0/valueCode")
                .and_then(Value::as_str)
                .map(|b| format!(" ({b})"))
                .unwrap_or_default();
            format!(
                "<li>{}{}</li>",
                html_escape(str_of(&l, "/other/reference")),
                html_escape(&basis)
            )
        })
        .collect();
    let withheld = resources
        .iter()
        .any(|r| str_of(r, "/resourceType") == "OperationOutcome");
    let list = |items: &[String], empty: &str| {
        if items.is_empty() {
            format!("<p>{empty}</p>")
        } else {
            format!("<ul>{}</ul>", items.join(""))
        }
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Shared care plan: Patient/{id}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:75em;color:#222}}table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #999;padding:4px 8px;text-align:left;vertical-align:top}}\
         th{{background:#eee}}.flag{{color:#8a1c1c;margin-bottom:.3em}}.flag.high{{font-weight:bold}}.notice{{background:#eef;padding:.5em}}small{{color:#555}}</style></head><body>\
         <h1>Shared care plan</h1><p>Patient/{id}: one view of the plans every contributing team keeps.</p>\
         {withheld}<h2>Flags</h2>{flags}{problems}{goals}{activities}<h2>Care team</h2>{team}<h2>Recently changed</h2>{recent}<h2>Linked records</h2>{linked}</body></html>\n",
        id = html_escape(patient_id),
        withheld = if withheld { "<p class=\"notice\">Some information was withheld in accordance with the patient's consent.</p>" } else { "" },
        flags = list(&flags, "No conflicts or gaps found."),
        problems = section("Problems", &["Condition"]),
        goals = section("Goals", &["Goal"]),
        activities = section("Activities", &["ServiceRequest", "MedicationRequest", "Task", "Appointment"]),
        team = list(&team, "No care team recorded."),
        recent = list(&recent, "Nothing recorded yet."),
        linked = list(&linked, "None."),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// What a clinician calls the item; medication orders with their dose and frequency.
fn item_label(r: &Value) -> String {
    let mut label = None;
    for pointer in [
        "/code/text",
        "/code/coding/0/display",
        "/description/text",
        "/description/coding/0/display",
        "/medicationCodeableConcept/text",
        "/medicationCodeableConcept/coding/0/display",
        "/serviceType/0/text",
        "/serviceType/0/coding/0/display",
        "/detail",
        "/title",
        "/name",
    ] {
        if let Some(t) = r.pointer(pointer).and_then(Value::as_str) {
            label = Some(t.to_string());
            break;
        }
    }
    let mut label = label.unwrap_or_else(|| {
        r.pointer("/code/coding/0/code")
            .or_else(|| r.pointer("/description/coding/0/code"))
            .or_else(|| r.pointer("/medicationCodeableConcept/coding/0/code"))
            .and_then(Value::as_str)
            .unwrap_or("(not coded)")
            .to_string()
    });
    if let Some(dosage) = r.pointer("/dosageInstruction/0") {
        let dose = dosage.pointer("/doseAndRate/0/doseQuantity");
        let value = dose.and_then(|d| d.get("value")).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let unit = dose
            .and_then(|d| d.get("unit").or_else(|| d.get("code")))
            .and_then(Value::as_str);
        let repeat = dosage.pointer("/timing/repeat");
        let freq = repeat
            .and_then(|t| t.get("frequency"))
            .map(Value::to_string);
        let period = repeat.and_then(|t| t.get("period")).map(Value::to_string);
        let period_unit = repeat
            .and_then(|t| t.get("periodUnit"))
            .and_then(Value::as_str);
        let mut parts = Vec::new();
        if let Some(v) = value {
            parts.push(format!("{v} {}", unit.unwrap_or("")).trim().to_string());
        }
        if let (Some(f), Some(p), Some(u)) = (freq, period, period_unit) {
            parts.push(format!("{f}× per {p} {u}"));
        }
        if let Some(text) = dosage.get("text").and_then(Value::as_str) {
            parts.push(text.to_string());
        }
        if !parts.is_empty() {
            label = format!("{label} — {}", parts.join(", "));
        }
    }
    label
}

/// Who is responsible for an item, from the element each type uses for it.
fn responsible(r: &Value) -> String {
    let who = |v: &Value| -> Option<String> {
        v.get("display")
            .or_else(|| v.get("reference"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let first_of = |pointers: &[&str]| -> Option<String> {
        pointers.iter().find_map(|p| r.pointer(p).and_then(who))
    };
    match str_of(r, "/resourceType") {
        "MedicationRequest" => first_of(&["/requester", "/performer"]),
        "ServiceRequest" => first_of(&["/performer/0", "/requester"]),
        "Task" => first_of(&["/owner", "/requester"]),
        "Goal" => first_of(&["/expressedBy"]),
        "Condition" => first_of(&["/asserter", "/recorder"]),
        "Appointment" => r
            .get("participant")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.get("actor"))
            .filter(|a| !str_of(a, "/reference").starts_with("Patient/"))
            .find_map(who),
        _ => None,
    }
    .unwrap_or_default()
}

fn item_status(r: &Value) -> String {
    r.get("status")
        .or_else(|| r.get("lifecycleStatus"))
        .and_then(Value::as_str)
        .or_else(|| {
            r.pointer("/clinicalStatus/coding/0/code")
                .and_then(Value::as_str)
        })
        .unwrap_or("")
        .to_string()
}

/// `(organisation or system or original reference, lastUpdated)` per contributing source.
fn item_sources(r: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for ext in r
        .get("extension")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| str_of(e, "/url") == caregate_careplan::ITEM_SOURCE_EXTENSION)
    {
        let (mut who, mut when) = (String::new(), String::new());
        for part in ext
            .get("extension")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let value = part
                .get("valueString")
                .or_else(|| part.get("valueInstant"))
                .or_else(|| part.pointer("/valueReference/reference"))
                .or_else(|| part.pointer("/valueReference/display"))
                .and_then(Value::as_str)
                .unwrap_or("");
            match str_of(part, "/url") {
                "organization" | "system" | "originalReference" if who.is_empty() => {
                    who = value.to_string()
                }
                "lastUpdated" => when = value.to_string(),
                _ => {}
            }
        }
        out.push((who, when));
    }
    out
}
