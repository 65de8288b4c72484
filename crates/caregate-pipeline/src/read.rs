//! Reads: read, vread, search and history, with the consent filter applied to everything
//! returned (including `_include`d resources and history entries).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use crate::consent::{ConsentScope, Release};
use caregate_audit::{patient_of, Subtype};
use caregate_core::{parse_date_range, ErrorKind, FhirError, FhirResult};
use caregate_search::Summary;
use caregate_store::{AuditQuery, HistoryQuery, HistoryScope, Key, VersionRecord, WriteMethod};
use serde_json::{json, Map, Value};

use crate::write::parse_record;
use crate::{check_resource_type, store_error, Caller, Permission, Pipeline};

/// The members of a stored resource a read's consent decision and audit look at when the
/// patient has no Consent (see [`caregate_audit::patient_of`] for the subject elements).
const RELEASE_MEMBERS: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "patient",
    "subject",
    "beneficiary",
    "individual",
    "for",
];

/// A finished search: the searchset Bundle.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub bundle: Value,
    /// Ids of the matches (not includes), for auditing.
    pub match_ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct HistoryRequest {
    pub scope: HistoryScope,
    pub params: Vec<(String, String)>,
}

impl Pipeline {
    /// `GET [type]/[id]`: the current version; 404 if it never existed, 410 if deleted.
    pub fn read(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
    ) -> FhirResult<VersionRecord> {
        self.audited(
            caller,
            Subtype::Read,
            Some(format!("{resource_type}/{id}")),
            || self.read_inner(caller, resource_type, id),
        )
    }

    fn read_inner(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
    ) -> FhirResult<VersionRecord> {
        check_resource_type(resource_type)?;
        caller.require(resource_type, Permission::Read)?;
        if resource_type == "AuditEvent" {
            return self.read_audit_event(caller, id);
        }
        let mut record = self
            .store
            .read(resource_type, id)
            .map_err(store_error)?
            .ok_or_else(|| FhirError::not_found(format!("{resource_type}/{id} is not known")))?;
        if record.is_deleted() {
            return Err(FhirError::new(
                ErrorKind::Gone,
                format!(
                    "{resource_type}/{id} was deleted (version {})",
                    record.version
                ),
            ));
        }
        if let Some(redacted) = self.release(caller, Subtype::Read, &record)? {
            record.content = Some(redacted);
        }
        Ok(record)
    }

    /// One AuditEvent for a read of one version, naming its patient.
    fn audit_read(&self, caller: &Caller, subtype: Subtype, record: &VersionRecord) {
        let resource = record
            .content
            .as_deref()
            .and_then(|c| caregate_core::json::parse_value(c).ok());
        self.audit_read_of(caller, subtype, record, resource.as_ref());
    }

    /// The read's AuditEvent, naming the patient of the (already parsed) resource.
    fn audit_read_of(
        &self,
        caller: &Caller,
        subtype: Subtype,
        record: &VersionRecord,
        resource: Option<&Value>,
    ) {
        let patient = resource.and_then(patient_of);
        let reference = format!(
            "{}/{}/_history/{}",
            record.resource_type, record.id, record.version
        );
        self.audit_async(&self.per_patient_entries(caller, subtype, [(reference, patient)], None));
    }

    fn read_audit_event(&self, caller: &Caller, id: &str) -> FhirResult<VersionRecord> {
        let (found, _) = self
            .store
            .audit_search(&AuditQuery {
                id: Some(id.to_string()),
                count: 1,
                ..AuditQuery::default()
            })
            .map_err(store_error)?;
        let content = found
            .into_iter()
            .next()
            .ok_or_else(|| FhirError::not_found(format!("AuditEvent/{id} is not known")))?;
        // The trail keeps a compact record; readers get the rendered BALP AuditEvent.
        let event = caregate_audit::render_stored(&content)
            .map_err(|e| FhirError::internal(e.to_string()))?;
        let recorded = event
            .get("recorded")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_default();
        let content = serde_json::to_vec(&event)
            .map_err(|e| FhirError::internal(format!("cannot write AuditEvent: {e}")))?;
        let record = VersionRecord {
            resource_type: "AuditEvent".into(),
            id: id.to_string(),
            version: 1,
            last_updated_ms: parse_date_range(&recorded).map_or(0, |r| r.start),
            last_updated: recorded,
            method: WriteMethod::Post,
            hash: caregate_store::content_hash(Some(&content)),
            content: Some(content),
        };
        self.audit_read(caller, Subtype::Read, &record);
        Ok(record)
    }

    /// `GET [type]/[id]/_history/[vid]`.
    pub fn vread(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> FhirResult<VersionRecord> {
        self.audited(
            caller,
            Subtype::Vread,
            Some(format!("{resource_type}/{id}/_history/{version}")),
            || self.vread_inner(caller, resource_type, id, version),
        )
    }

    fn vread_inner(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> FhirResult<VersionRecord> {
        check_resource_type(resource_type)?;
        caller.require(resource_type, Permission::Read)?;
        if resource_type == "AuditEvent" {
            return match version {
                "1" => self.read_audit_event(caller, id),
                _ => Err(FhirError::not_found(format!(
                    "AuditEvent/{id} has only version 1"
                ))),
            };
        }
        let version: u64 = version.parse().map_err(|_| {
            FhirError::not_found(format!(
                "'{version}' is not a version of {resource_type}/{id}"
            ))
        })?;
        let mut record = self
            .store
            .vread(resource_type, id, version)
            .map_err(store_error)?
            .ok_or_else(|| {
                FhirError::not_found(format!("{resource_type}/{id} has no version {version}"))
            })?;
        if record.is_deleted() {
            return Err(FhirError::new(
                ErrorKind::Gone,
                format!("Version {version} of {resource_type}/{id} is a deletion"),
            ));
        }
        if let Some(redacted) = self.release(caller, Subtype::Vread, &record)? {
            record.content = Some(redacted);
        }
        Ok(record)
    }

    /// Releases one stored version to the caller: the consent decision (a hidden resource
    /// answers 404 like a missing one, or 403 with the reason when configured) and the
    /// AuditEvent, parsing the stored JSON once for both. Returns the serialized redacted
    /// copy when the permit carries a redaction obligation.
    fn release(
        &self,
        caller: &Caller,
        subtype: Subtype,
        record: &VersionRecord,
    ) -> FhirResult<Option<Vec<u8>>> {
        // The decision and the audit need the type, id, `meta` and the subject; the rest of
        // the resource matters only to the provisions of a patient's Consents.
        let mut resource = match &record.content {
            Some(bytes) => {
                caregate_core::json::parse_members(bytes, RELEASE_MEMBERS).map_err(|e| {
                    FhirError::internal(format!(
                        "stored {}/{} is unreadable: {e}",
                        record.resource_type, record.id
                    ))
                })?
            }
            None => parse_record(record)?,
        };
        // Whether `resource` is the whole stored resource rather than the members above.
        let mut whole = record.content.is_none();
        let mut redacted = None;
        if self.stages.consent.filters_reads() {
            let mut scope = self.consent_scope(caller)?;
            if scope.patient_has_consents(&resource)? {
                resource = parse_record(record)?;
                whole = true;
            }
            // `release_of` also applies the held-data rule, which a bare decision does not.
            let release = scope.release_of(&resource)?;
            let visible = release != Release::Hidden;
            let basis = if visible || !self.options.explain_hidden_reads {
                String::new()
            } else {
                scope
                    .decide(caregate_consent::ConsentAction::Access, &resource)?
                    .basis
            };
            scope.audit_alerts(caller, subtype);
            if !visible {
                return Err(if self.options.explain_hidden_reads {
                    FhirError::new(
                        ErrorKind::Forbidden,
                        format!("The patient's consent does not allow this access: {basis}"),
                    )
                } else {
                    // Indistinguishable from a resource that does not exist: hiding must not leak.
                    FhirError::not_found(format!(
                        "{}/{} is not known",
                        record.resource_type, record.id
                    ))
                });
            }
            if release == Release::Redacted {
                let mut copy = if whole {
                    resource.clone()
                } else {
                    parse_record(record)?
                };
                caregate_consent::redact::redact(&mut copy);
                redacted = Some(serde_json::to_vec(&copy).map_err(|e| {
                    FhirError::internal(format!("redacted copy not serializable: {e}"))
                })?);
            }
        }
        self.audit_read_of(caller, subtype, record, Some(&resource));
        Ok(redacted)
    }

    /// Type-level (`resource_type` given) or system-level search, answered as a searchset
    /// Bundle whose links are rooted at `base`.
    pub fn search(
        &self,
        caller: &Caller,
        resource_type: Option<&str>,
        params: &[(String, String)],
        strict: bool,
        base: &str,
    ) -> FhirResult<SearchOutcome> {
        let subtype = if resource_type.is_some() {
            Subtype::SearchType
        } else {
            Subtype::SearchSystem
        };
        self.audited(caller, subtype, resource_type.map(str::to_string), || {
            self.search_inner(caller, resource_type, params, strict, base)
        })
    }

    fn search_inner(
        &self,
        caller: &Caller,
        resource_type: Option<&str>,
        params: &[(String, String)],
        strict: bool,
        base: &str,
    ) -> FhirResult<SearchOutcome> {
        match resource_type {
            Some(t) => {
                check_resource_type(t)?;
                caller.require(t, Permission::Search)?;
            }
            None => caller.require("*", Permission::Search)?,
        }
        if resource_type == Some("AuditEvent") {
            return self.search_audit_events(caller, params, base);
        }
        let mut parsed = self.search.parse(resource_type, params, strict)?;
        parsed.query.count = parsed.query.count.min(self.options.max_page_size);
        let count_only = matches!(parsed.summary, Some(Summary::Count));
        let requested = parsed.query.count;
        if count_only {
            parsed.query.count = 0;
            parsed.query.total = true;
        }
        let mut scope = self.consent_scope(caller)?;
        if count_only && scope.enforced() {
            // Counts must not reveal hidden resources: count only what this caller may see.
            let raw = self
                .store
                .search(&parsed.query)
                .map_err(store_error)?
                .total
                .unwrap_or(0);
            let total = self.visible_total(&mut scope, &parsed.query, raw)?;
            scope.audit_alerts(caller, Subtype::SearchType);
            let path = match resource_type {
                Some(t) => format!("{base}/{t}"),
                None => base.to_string(),
            };
            return Ok(SearchOutcome {
                bundle: json!({
                    "resourceType": "Bundle",
                    "id": uuid::Uuid::new_v4().to_string(),
                    "type": "searchset",
                    "total": total,
                    "link": [link("self", &path, &parsed.self_params, None, requested)],
                }),
                match_ids: Vec::new(),
            });
        }
        let page = self.store.search(&parsed.query).map_err(store_error)?;

        let mut entries = Vec::new();
        let mut match_ids = Vec::new();
        let mut touched: Vec<(String, Option<String>)> = Vec::new();
        let mut hidden_includes = 0usize;
        let mut seen: HashSet<Key> = HashSet::new();
        let mut match_keys: Vec<Key> = Vec::new();
        for record in &page.matches {
            let Some(resource) = scope.visible(parse_record(record)?)? else {
                continue;
            };
            let key = (record.resource_type.clone(), record.id.clone());
            touched.push((
                format!(
                    "{}/{}/_history/{}",
                    record.resource_type, record.id, record.version
                ),
                patient_of(&resource),
            ));
            seen.insert(key.clone());
            match_keys.push(key);
            match_ids.push(record.id.clone());
            entries.push(self.search_entry(
                base,
                record,
                resource,
                "match",
                &parsed.summary,
                &parsed.elements,
            ));
        }
        // _include / _revinclude; `:iterate` ones run again over what was included.
        let mut frontier = match_keys;
        for round in 0..3 {
            let mut next = Vec::new();
            for spec in &parsed.includes {
                if round > 0 && !spec.iterate {
                    continue;
                }
                for record in self.store.include(&frontier, spec).map_err(store_error)? {
                    let key = (record.resource_type.clone(), record.id.clone());
                    if !seen.insert(key.clone()) {
                        continue;
                    }
                    let Some(resource) = scope.visible(parse_record(&record)?)? else {
                        hidden_includes += 1;
                        continue;
                    };
                    next.push(key);
                    touched.push((
                        format!(
                            "{}/{}/_history/{}",
                            record.resource_type, record.id, record.version
                        ),
                        patient_of(&resource),
                    ));
                    entries.push(self.search_entry(
                        base,
                        &record,
                        resource,
                        "include",
                        &parsed.summary,
                        &parsed.elements,
                    ));
                }
            }
            if next.is_empty() || !parsed.includes.iter().any(|s| s.iterate) {
                break;
            }
            frontier = next;
        }

        let path = match resource_type {
            Some(t) => format!("{base}/{t}"),
            None => base.to_string(),
        };
        let mut links = vec![link(
            "self",
            &path,
            &parsed.self_params,
            Some(parsed.query.offset),
            requested,
        )];
        let returned = page.matches.len();
        let more = match page.total {
            Some(total) => (parsed.query.offset + returned) < total as usize,
            None => returned == requested && requested > 0,
        };
        // A next link promises more matches: with consent enforced it is given only when a
        // match this reader may see follows, so paging cannot reveal hidden data.
        let more = more
            && (!scope.enforced()
                || self.visible_after(
                    &mut scope,
                    &parsed.query,
                    parsed.query.offset + returned,
                )?);
        if !count_only && more {
            links.push(link(
                "next",
                &path,
                &parsed.self_params,
                Some(parsed.query.offset + requested),
                requested,
            ));
        }
        if !count_only && parsed.query.offset > 0 {
            links.push(link(
                "previous",
                &path,
                &parsed.self_params,
                Some(parsed.query.offset.saturating_sub(requested)),
                requested,
            ));
        }
        let hidden = page.matches.len() - match_ids.len() + hidden_includes;
        let mut bundle = Map::new();
        bundle.insert("resourceType".into(), json!("Bundle"));
        bundle.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
        bundle.insert(
            "meta".into(),
            json!({ "lastUpdated": caregate_core::now_instant().1 }),
        );
        bundle.insert("type".into(), json!("searchset"));
        match page.total {
            // Resources hidden by consent must not show through the count: with consent
            // enforced the total counts what this caller may see, checking each match (up
            // to VISIBLE_COUNT_LIMIT matches; beyond that no total is given).
            Some(total) if !scope.enforced() => {
                bundle.insert("total".into(), json!(total));
            }
            Some(total) if parsed.query.offset == 0 && (total as usize) == page.matches.len() => {
                bundle.insert("total".into(), json!(total - hidden as u64));
            }
            Some(total) => {
                if let Some(visible) = self.visible_total(&mut scope, &parsed.query, total)? {
                    bundle.insert("total".into(), json!(visible));
                }
            }
            None => {}
        }
        bundle.insert("link".into(), Value::Array(links));
        if hidden > 0 && self.options.withheld_notice {
            entries.push(json!({
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{
                        "severity": "information",
                        "code": "suppressed",
                        "diagnostics": "Some information was withheld in accordance with the patient's consent."
                    }]
                },
                "search": { "mode": "outcome" }
            }));
        }
        if !ignored_is_empty(&parsed.ignored) {
            entries.push(json!({
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{
                        "severity": "warning",
                        "code": "not-supported",
                        "diagnostics": format!("Ignored unknown or unsupported search parameters: {}", parsed.ignored.join(", ")),
                        "expression": parsed.ignored,
                    }]
                },
                "search": { "mode": "outcome" }
            }));
        }
        if !entries.is_empty() {
            bundle.insert("entry".into(), Value::Array(entries));
        }
        let query = query_string(resource_type, params);
        let subtype = if resource_type.is_some() {
            Subtype::SearchType
        } else {
            Subtype::SearchSystem
        };
        scope.audit_alerts(caller, subtype);
        self.audit_async(&self.per_patient_entries(caller, subtype, touched, Some(query)));
        Ok(SearchOutcome {
            bundle: Value::Object(bundle),
            match_ids,
        })
    }

    fn search_entry(
        &self,
        base: &str,
        record: &VersionRecord,
        resource: Value,
        mode: &str,
        summary: &Option<Summary>,
        elements: &Option<Vec<String>>,
    ) -> Value {
        let resource = shape(resource, summary, elements);
        json!({
            "fullUrl": format!("{base}/{}/{}", record.resource_type, record.id),
            "resource": resource,
            "search": { "mode": mode }
        })
    }

    /// How many matches of `query` this caller may see. When no patient has a Consent, the
    /// decision depends only on the default policy and the sensitivity labels, which the
    /// index can count; otherwise each match is decided (up to VISIBLE_COUNT_LIMIT).
    /// Whether a match this reader may see comes at or after raw position `from`. Scans at
    /// most VISIBLE_COUNT_LIMIT matches; beyond that it answers yes (as the total is then
    /// not given either).
    fn visible_after(
        &self,
        scope: &mut ConsentScope<'_>,
        query: &caregate_store::SearchQuery,
        from: usize,
    ) -> FhirResult<bool> {
        if self.stages.consent.overrides_for(scope.actor()) {
            return Ok(true);
        }
        let mut q = query.clone();
        q.total = false;
        q.count = 100;
        q.offset = from;
        while q.offset < from + VISIBLE_COUNT_LIMIT as usize {
            let page = self.store.search(&q).map_err(store_error)?;
            for record in &page.matches {
                if scope.release_of(&parse_record(record)?)? != Release::Hidden {
                    return Ok(true);
                }
            }
            if page.matches.len() < q.count {
                return Ok(false);
            }
            q.offset += q.count;
        }
        Ok(true)
    }

    fn visible_total(
        &self,
        scope: &mut ConsentScope<'_>,
        query: &caregate_store::SearchQuery,
        raw_total: u64,
    ) -> FhirResult<Option<u64>> {
        let policy = &self.stages.consent;
        if policy.overrides_for(scope.actor()) {
            return Ok(Some(raw_total));
        }
        if scope.no_consents_anywhere()? {
            if !policy.permits_without_consent() {
                return Ok(Some(0));
            }
            let mut labelled = query.clone();
            let sensitive = vec![(
                "_security".to_string(),
                caregate_consent::labels::SENSITIVE.join(","),
            )];
            let parsed = self
                .search
                .parse(query.resource_type.as_deref(), &sensitive, true)?;
            labelled.filters.extend(parsed.query.filters);
            labelled.count = 0;
            labelled.offset = 0;
            labelled.total = true;
            let hidden = self
                .store
                .search(&labelled)
                .map_err(store_error)?
                .total
                .unwrap_or(0);
            return Ok(Some(raw_total.saturating_sub(hidden)));
        }
        if raw_total > VISIBLE_COUNT_LIMIT {
            return Ok(None);
        }
        let mut q = query.clone();
        q.total = false;
        q.count = 500;
        q.offset = 0;
        let mut visible = 0u64;
        loop {
            let page = self.store.search(&q).map_err(store_error)?;
            for record in &page.matches {
                if scope.release_of(&parse_record(record)?)? != Release::Hidden {
                    visible += 1;
                }
            }
            if page.matches.len() < q.count {
                return Ok(Some(visible));
            }
            q.offset += q.count;
        }
    }

    /// `GET /AuditEvent?...`: served from the audit trail, which only clients granted
    /// AuditEvent access (an auditor scope) reach.
    fn search_audit_events(
        &self,
        caller: &Caller,
        params: &[(String, String)],
        base: &str,
    ) -> FhirResult<SearchOutcome> {
        let mut q = AuditQuery {
            count: 20,
            ..AuditQuery::default()
        };
        let bad = |name: &str, value: &str, why: &str| {
            FhirError::at(
                ErrorKind::BadRequest,
                name,
                format!("'{name}={value}': {why}"),
            )
        };
        let code = |v: &str| v.rsplit('|').next().unwrap_or(v).to_string();
        for (name, value) in params {
            match name.as_str() {
                "patient" => {
                    q.patient = Some(if value.starts_with("Patient/") { value.clone() } else { format!("Patient/{value}") })
                }
                "agent" => q.client = Some(value.clone()),
                "entity" => q.entity = Some(value.clone()),
                "_id" => q.id = Some(value.clone()),
                "type" => q.event_type = Some(code(value)),
                "subtype" => q.subtype = Some(code(value)),
                "outcome" => q.outcome = Some(code(value)),
                "purpose" => q.purpose = Some(code(value)),
                "date" => {
                    let (prefix, date) = match value.get(..2) {
                        Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &value[2..]),
                        _ => ("eq", value.as_str()),
                    };
                    let range = parse_date_range(date).ok_or_else(|| bad("date", value, "not a FHIR date"))?;
                    match prefix {
                        "ge" => q.from_ms = Some(range.start),
                        "gt" => q.from_ms = Some(range.end),
                        "le" => q.to_ms = Some(range.end),
                        "lt" => q.to_ms = Some(range.start),
                        _ => {
                            q.from_ms = Some(range.start);
                            q.to_ms = Some(range.end);
                        }
                    }
                }
                "_count" => q.count = value.parse().map_err(|_| bad("_count", value, "not a whole number"))?,
                "_offset" => q.offset = value.parse().map_err(|_| bad("_offset", value, "not a whole number"))?,
                "_format" | "_pretty" => {}
                other => {
                    return Err(FhirError::at(
                        ErrorKind::BadRequest,
                        other,
                        format!("'{other}' is not supported on AuditEvent (patient, agent, entity, date, type, subtype, outcome, purpose, _id, _count)"),
                    ))
                }
            }
        }
        q.count = q.count.min(self.options.max_page_size);
        let (events, total) = self.store.audit_search(&q).map_err(store_error)?;
        let mut entries = Vec::with_capacity(events.len());
        let mut match_ids = Vec::new();
        for content in &events {
            let event = caregate_audit::render_stored(content)
                .map_err(|e| FhirError::internal(e.to_string()))?;
            let id = event
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            entries.push(json!({
                "fullUrl": format!("{base}/AuditEvent/{id}"),
                "resource": event,
                "search": {"mode": "match"}
            }));
            match_ids.push(id);
        }
        let path = format!("{base}/AuditEvent");
        let mut own: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != "_offset")
            .cloned()
            .collect();
        own.retain(|(k, _)| k != "_count");
        let mut links = vec![link("self", &path, &own, Some(q.offset), q.count)];
        if q.offset + events.len() < total as usize {
            links.push(link("next", &path, &own, Some(q.offset + q.count), q.count));
        }
        let mut entry = self.audit_entry(caller, Subtype::SearchType);
        entry.query = Some(query_string(Some("AuditEvent"), params));
        self.audit_async(&[entry]);
        Ok(SearchOutcome {
            bundle: json!({
                "resourceType": "Bundle",
                "id": uuid::Uuid::new_v4().to_string(),
                "type": "searchset",
                "total": total,
                "link": links,
                "entry": entries,
            }),
            match_ids,
        })
    }

    /// Instance, type or system history, newest first, as a history Bundle.
    pub fn history(
        &self,
        caller: &Caller,
        request: &HistoryRequest,
        base: &str,
    ) -> FhirResult<Value> {
        let subtype = match request.scope {
            HistoryScope::System => Subtype::HistorySystem,
            HistoryScope::Type(_) => Subtype::HistoryType,
            HistoryScope::Instance(..) => Subtype::HistoryInstance,
        };
        self.audited(caller, subtype, None, || {
            self.history_inner(caller, request, base)
        })
    }

    fn history_inner(
        &self,
        caller: &Caller,
        request: &HistoryRequest,
        base: &str,
    ) -> FhirResult<Value> {
        if matches!(&request.scope, HistoryScope::Type(t) | HistoryScope::Instance(t, _) if t == "AuditEvent")
        {
            return Err(FhirError::new(
                ErrorKind::MethodNotAllowed,
                "AuditEvents have no history: each is written once and never changed",
            ));
        }
        let mut since = None;
        let mut before = None;
        let mut count = 20usize;
        let mut offset = 0usize;
        for (name, value) in &request.params {
            match name.as_str() {
                "_since" => {
                    since = Some(
                        parse_date_range(value)
                            .ok_or_else(|| {
                                FhirError::at(
                                    ErrorKind::BadRequest,
                                    "_since",
                                    format!("'_since' must be an instant, not '{value}'"),
                                )
                            })?
                            .start,
                    )
                }
                "_at" => {
                    before = Some(
                        parse_date_range(value)
                            .ok_or_else(|| {
                                FhirError::at(
                                    ErrorKind::BadRequest,
                                    "_at",
                                    format!("'_at' must be a date, not '{value}'"),
                                )
                            })?
                            .end,
                    )
                }
                "_count" => {
                    count = value.parse().map_err(|_| {
                        FhirError::at(
                            ErrorKind::BadRequest,
                            "_count",
                            format!("'_count' must be a whole number, not '{value}'"),
                        )
                    })?
                }
                "_offset" => {
                    offset = value.parse().map_err(|_| {
                        FhirError::at(
                            ErrorKind::BadRequest,
                            "_offset",
                            format!("'_offset' must be a whole number, not '{value}'"),
                        )
                    })?
                }
                "_format" | "_pretty" => {}
                other => {
                    return Err(FhirError::at(
                        ErrorKind::BadRequest,
                        other,
                        format!("'{other}' is not a history parameter (use _since, _at, _count)"),
                    ))
                }
            }
        }
        count = count.min(self.options.max_page_size);
        let (path, resource_type) = match &request.scope {
            HistoryScope::System => {
                caller.require("*", Permission::Search)?;
                (format!("{base}/_history"), None)
            }
            HistoryScope::Type(t) => {
                check_resource_type(t)?;
                caller.require(t, Permission::Search)?;
                (format!("{base}/{t}/_history"), Some(t.as_str()))
            }
            HistoryScope::Instance(t, id) => {
                check_resource_type(t)?;
                caller.require(t, Permission::Read)?;
                (format!("{base}/{t}/{id}/_history"), Some(t.as_str()))
            }
        };
        let page = self
            .store
            .history(&HistoryQuery {
                scope: request.scope.clone(),
                since,
                before,
                count,
                offset,
            })
            .map_err(store_error)?;
        if let HistoryScope::Instance(t, id) = &request.scope {
            if page.total == 0 && since.is_none() && before.is_none() {
                return Err(FhirError::not_found(format!("{t}/{id} is not known")));
            }
        }
        let mut scope = self.consent_scope(caller)?;
        let mut entries = Vec::new();
        let mut hidden = 0u64;
        for v in &page.versions {
            let mut entry = Map::new();
            entry.insert(
                "fullUrl".into(),
                json!(format!("{base}/{}/{}", v.resource_type, v.id)),
            );
            if v.content.is_some() {
                let Some(resource) = scope.visible(parse_record(v)?)? else {
                    hidden += 1;
                    continue;
                };
                entry.insert("resource".into(), resource);
            }
            let (method, url, status) = match v.method {
                WriteMethod::Post => ("POST", v.resource_type.clone(), "201 Created"),
                WriteMethod::Put if v.version == 1 => (
                    "PUT",
                    format!("{}/{}", v.resource_type, v.id),
                    "201 Created",
                ),
                WriteMethod::Put => ("PUT", format!("{}/{}", v.resource_type, v.id), "200 OK"),
                WriteMethod::Delete => (
                    "DELETE",
                    format!("{}/{}", v.resource_type, v.id),
                    "204 No Content",
                ),
            };
            entry.insert("request".into(), json!({ "method": method, "url": url }));
            entry.insert(
                "response".into(),
                json!({
                    "status": status,
                    "etag": format!("W/\"{}\"", v.version),
                    "lastModified": v.last_updated,
                }),
            );
            entries.push(Value::Object(entry));
        }
        // An instance history whose every version is hidden from this reader answers like
        // a read of it: as if the resource did not exist (or 403 when explaining), so the
        // history cannot reveal what a read would not.
        if let HistoryScope::Instance(t, id) = &request.scope {
            let visible = entries.iter().any(|e| e.get("resource").is_some());
            if hidden > 0 && !visible && offset == 0 {
                scope.audit_alerts(caller, Subtype::HistoryInstance);
                return Err(if self.options.explain_hidden_reads {
                    FhirError::new(
                        ErrorKind::Forbidden,
                        "The patient's consent does not allow this access",
                    )
                } else {
                    FhirError::not_found(format!("{t}/{id} is not known"))
                });
            }
        }
        let mut params: Vec<(String, String)> = request
            .params
            .iter()
            .filter(|(k, _)| k != "_offset" && k != "_count" && k != "_format")
            .cloned()
            .collect();
        params.sort();
        let mut links = vec![link("self", &path, &params, Some(offset), count)];
        if (offset + page.versions.len()) < page.total as usize {
            links.push(link("next", &path, &params, Some(offset + count), count));
        }
        if offset > 0 {
            links.push(link(
                "previous",
                &path,
                &params,
                Some(offset.saturating_sub(count)),
                count,
            ));
        }
        let mut bundle = Map::new();
        bundle.insert("resourceType".into(), json!("Bundle"));
        bundle.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
        bundle.insert("type".into(), json!("history"));
        // With consent enforced a total could reveal hidden versions; it is given only when
        // this page holds the whole history.
        if !scope.enforced() || (offset == 0 && page.versions.len() as u64 == page.total) {
            bundle.insert("total".into(), json!(page.total.saturating_sub(hidden)));
        } else if page.total <= VISIBLE_COUNT_LIMIT {
            let mut q = HistoryQuery {
                scope: request.scope.clone(),
                since,
                before,
                count: 500,
                offset: 0,
            };
            let mut visible = 0u64;
            loop {
                let chunk = self.store.history(&q).map_err(store_error)?;
                for v in &chunk.versions {
                    // Deletions carry no content and are visible as such.
                    if v.content.is_none()
                        || scope.release_of(&parse_record(v)?)? != Release::Hidden
                    {
                        visible += 1;
                    }
                }
                if chunk.versions.len() < q.count {
                    break;
                }
                q.offset += q.count;
            }
            bundle.insert("total".into(), json!(visible));
        }
        scope.audit_alerts(caller, Subtype::HistoryInstance);
        bundle.insert("link".into(), Value::Array(links));
        if !entries.is_empty() {
            bundle.insert("entry".into(), Value::Array(entries));
        }
        let mut entry = self.audit_entry(
            caller,
            match request.scope {
                HistoryScope::System => Subtype::HistorySystem,
                HistoryScope::Type(_) => Subtype::HistoryType,
                HistoryScope::Instance(..) => Subtype::HistoryInstance,
            },
        );
        if let HistoryScope::Instance(t, id) = &request.scope {
            entry.entities.push(format!("{t}/{id}"));
        }
        entry.query = Some(format!("{}/_history", resource_type.unwrap_or("")));
        self.audit_async(&[entry]);
        Ok(Value::Object(bundle))
    }
}

/// Above this many matches, a consent-filtered total is not computed (it would mean
/// deciding every match); the Bundle then carries no total.
const VISIBLE_COUNT_LIMIT: u64 = 10_000;

/// The query as the client sent it, for AuditEvent.entity.query.
fn query_string(resource_type: Option<&str>, params: &[(String, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    format!("{}?{}", resource_type.unwrap_or(""), q.finish())
}

fn ignored_is_empty(ignored: &[String]) -> bool {
    ignored.is_empty()
}

fn link(
    relation: &str,
    path: &str,
    params: &[(String, String)],
    offset: Option<usize>,
    count: usize,
) -> Value {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if k == "_count" || k == "_offset" {
            continue;
        }
        query.append_pair(k, v);
    }
    query.append_pair("_count", &count.to_string());
    if let Some(o) = offset.filter(|o| *o > 0) {
        query.append_pair("_offset", &o.to_string());
    }
    json!({ "relation": relation, "url": format!("{path}?{}", query.finish()) })
}

/// Applies `_summary` and `_elements` to one resource, tagging it SUBSETTED when anything
/// was left out (search.html#summary).
fn shape(resource: Value, summary: &Option<Summary>, elements: &Option<Vec<String>>) -> Value {
    let Value::Object(obj) = resource else {
        return resource;
    };
    let resource_type = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let keep: Option<KeepElement<'_>> = match (summary, elements) {
        (Some(Summary::Text), _) => Some(Box::new(|k: &str| {
            matches!(k, "resourceType" | "id" | "meta" | "text") || is_mandatory(&resource_type, k)
        })),
        (Some(Summary::Data), _) => Some(Box::new(|k: &str| k != "text")),
        (Some(Summary::True), _) => {
            let set = summary_elements().get(resource_type.as_str());
            Some(Box::new(move |k: &str| {
                matches!(k, "resourceType" | "id" | "meta")
                    || set.is_some_and(|s| s.contains(k.trim_start_matches('_')))
            }))
        }
        (_, Some(list)) => {
            let list = list.clone();
            Some(Box::new(move |k: &str| {
                matches!(k, "resourceType" | "id" | "meta")
                    || list.iter().any(|e| e == k.trim_start_matches('_'))
            }))
        }
        _ => None,
    };
    let Some(keep) = keep else {
        return Value::Object(obj);
    };
    let before = obj.len();
    let mut kept: Map<String, Value> = obj.into_iter().filter(|(k, _)| keep(k)).collect();
    if kept.len() < before {
        let meta = kept.entry("meta").or_insert_with(|| json!({}));
        if let Value::Object(m) = meta {
            let tags = m.entry("tag").or_insert_with(|| json!([]));
            if let Value::Array(tags) = tags {
                tags.push(json!({
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED",
                    "display": "Resource encoded in summary mode"
                }));
            }
        }
    }
    Value::Object(kept)
}

/// Decides which top-level elements `_summary`/`_elements` keep.
type KeepElement<'a> = Box<dyn Fn(&str) -> bool + 'a>;

fn is_mandatory(resource_type: &str, element: &str) -> bool {
    mandatory_elements()
        .get(resource_type)
        .is_some_and(|s| s.contains(element))
}

type ElementSets = HashMap<String, HashSet<String>>;

/// Top-level elements flagged `isSummary` in each core resource definition.
fn summary_elements() -> &'static ElementSets {
    static SETS: OnceLock<ElementSets> = OnceLock::new();
    SETS.get_or_init(|| {
        top_level_elements(|e| e.get("isSummary").and_then(Value::as_bool) == Some(true))
    })
}

fn mandatory_elements() -> &'static ElementSets {
    static SETS: OnceLock<ElementSets> = OnceLock::new();
    SETS.get_or_init(|| {
        top_level_elements(|e| e.get("min").and_then(Value::as_u64).unwrap_or(0) > 0)
    })
}

fn top_level_elements(pick: impl Fn(&Value) -> bool) -> ElementSets {
    let mut out = ElementSets::new();
    for sd in caregate_validation::Package::r4_core().of_type("StructureDefinition") {
        if sd.get("kind").and_then(Value::as_str) != Some("resource") {
            continue;
        }
        let Some(ty) = sd.get("type").and_then(Value::as_str) else {
            continue;
        };
        let set = out.entry(ty.to_string()).or_default();
        let elements = sd
            .pointer("/snapshot/element")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for e in elements {
            let Some(path) = e.get("path").and_then(Value::as_str) else {
                continue;
            };
            let Some(rest) = path.strip_prefix(ty).and_then(|r| r.strip_prefix('.')) else {
                continue;
            };
            if rest.contains('.') || !pick(e) {
                continue;
            }
            match rest.strip_suffix("[x]") {
                // Choice elements appear in JSON as name + type; keep the stem for prefix tests.
                Some(stem) => {
                    for t in e
                        .get("type")
                        .and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                    {
                        if let Some(code) = t.get("code").and_then(Value::as_str) {
                            let mut chars = code.chars();
                            let cap: String = chars
                                .next()
                                .map(|c| c.to_ascii_uppercase())
                                .into_iter()
                                .chain(chars)
                                .collect();
                            set.insert(format!("{stem}{cap}"));
                        }
                    }
                }
                None => {
                    set.insert(rest.to_string());
                }
            }
        }
    }
    out
}
