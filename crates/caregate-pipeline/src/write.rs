//! Single writes: create, update, delete and their conditional forms.

use caregate_audit::{patient_of, Subtype};
use caregate_careplan::Committed;
use caregate_consent::{ConsentAction, DecisionSource};
use caregate_core::{
    format_instant, is_valid_id, ErrorKind, FhirError, FhirResult, Issue, IssueCode, Severity,
};
use caregate_store::{IndexEntry, StoreError, VersionRecord, WriteMethod, WriteOp};
use serde_json::{Map, Value};

use crate::{check_resource_type, store_error, Caller, Permission, Pipeline, WithoutConsent};

/// The result of a create or update.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub record: VersionRecord,
    /// The stored resource, with `id` and `meta` as stored.
    pub resource: Value,
    /// A new resource was created (201) rather than an existing one updated (200).
    pub created: bool,
    /// A conditional create matched an existing resource: nothing was written.
    pub matched_existing: bool,
    /// Warnings and information from validation, for `Prefer: return=OperationOutcome`.
    pub issues: Vec<Issue>,
}

#[derive(Debug, Clone)]
pub struct DeleteOutcome {
    /// The deletion's version, or `None` when there was nothing (left) to delete.
    pub version: Option<u64>,
    pub deleted_ids: Vec<String>,
}

/// A resource that passed admission and is ready to be stored.
pub(crate) struct Admitted {
    pub resource: Value,
    pub issues: Vec<Issue>,
}

/// Everything for one store write except the version bookkeeping.
pub(crate) struct Prepared {
    pub op: WriteOp,
    pub resource: Option<Value>,
}

impl Pipeline {
    /// `$validate` (type or instance level): the resource checked against the core
    /// definitions, the profiles it claims and `profiles`, nothing stored. Needs read
    /// permission on the type. Returns every issue (an empty list means valid).
    pub fn validate_resource(
        &self,
        caller: &Caller,
        resource_type: &str,
        resource: &Value,
        profiles: &[String],
    ) -> FhirResult<Vec<caregate_core::Issue>> {
        check_resource_type(resource_type)?;
        caller.require(resource_type, crate::Permission::Read)?;
        check_body_type(resource, resource_type)?;
        Ok(self.stages.validator.validate_against(resource, profiles))
    }

    /// The inbound half of every write: type check, validation, labelling and the consent
    /// question "may this caller contribute this resource?".
    pub(crate) fn admit(
        &self,
        caller: &Caller,
        resource_type: &str,
        mut resource: Value,
    ) -> FhirResult<Admitted> {
        check_resource_type(resource_type)?;
        if !resource.is_object() {
            return Err(FhirError::bad_request(
                "The request body must be a JSON object holding a FHIR resource",
            ));
        }
        check_body_type(&resource, resource_type)?;
        let verdict = self
            .stages
            .validator
            .validate_write(caller.actor.client_id.as_deref(), &resource);
        let issues = verdict.issues;
        if issues.iter().any(|i| i.severity.is_error()) {
            let kind = if verdict.unprocessable {
                ErrorKind::Unprocessable
            } else {
                ErrorKind::BadRequest
            };
            return Err(FhirError::with_issues(kind, issues));
        }
        self.stages.labeler.label(&mut resource);
        stamp_contributor(&mut resource, caller);
        if self.check_contribution(caller, ConsentAction::Collect, &resource)? == Contribution::Hold
        {
            crate::consent::mark_held(&mut resource, &caller.actor);
        }
        Ok(Admitted { resource, issues })
    }

    /// May this caller add (or correct) this resource in the patient's record? Only an
    /// explicit deny in one of the patient's Consents refuses it: data that no Consent
    /// covers is stored, and the read side decides who sees it. Patients and Consents
    /// themselves are always accepted, so a patient can always state or change consent.
    fn check_contribution(
        &self,
        caller: &Caller,
        action: ConsentAction,
        resource: &Value,
    ) -> FhirResult<Contribution> {
        // A patient's Consent governs data about that patient; records about no patient
        // (Organization, Practitioner, Linkage, ...) are outside every Consent, so neither
        // `without_consent = "reject"` nor "hold" applies to them.
        if !self.stages.consent.filters_reads()
            || matches!(
                resource.get("resourceType").and_then(Value::as_str),
                Some("Patient" | "Consent")
            )
            || caregate_audit::patient_of(resource).is_none()
        {
            return Ok(Contribution::Shared);
        }
        let mut scope = self.consent_scope(caller)?;
        let decision = scope.decide(action, resource)?;
        let explicit_deny =
            !decision.is_permit() && matches!(decision.source, DecisionSource::Consent { .. });
        let subtype = if action == ConsentAction::Correct {
            Subtype::Delete
        } else {
            Subtype::Create
        };
        if explicit_deny {
            scope.audit_alerts(caller, subtype);
            return Err(FhirError::new(
                ErrorKind::Forbidden,
                format!(
                    "The patient's consent does not allow this contribution: {}",
                    decision.basis
                ),
            )
            .with_code(IssueCode::Forbidden));
        }
        if action == ConsentAction::Collect
            && decision.source == DecisionSource::NoApplicableConsent
        {
            match self.options.without_consent {
                WithoutConsent::Accept => {}
                WithoutConsent::Reject => {
                    return Err(FhirError::new(
                        ErrorKind::Forbidden,
                        "No consent of this patient is on file; this gateway accepts data only under a Consent",
                    )
                    .with_code(IssueCode::Forbidden))
                }
                WithoutConsent::Hold => return Ok(Contribution::Hold),
            }
        }
        Ok(Contribution::Shared)
    }

    /// Stamps id and meta, serialises, and extracts the search index.
    pub(crate) fn prepare(
        &self,
        mut resource: Value,
        id: &str,
        expected_version: Option<u64>,
        method: WriteMethod,
        now: chrono::DateTime<chrono::Utc>,
    ) -> FhirResult<Prepared> {
        let version = expected_version.map_or(1, |v| v + 1);
        let last_updated = format_instant(now);
        stamp(&mut resource, id, version, &last_updated);
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let index: Vec<IndexEntry> = self.search.extract(&resource);
        let content = serde_json::to_vec(&resource)
            .map_err(|e| FhirError::internal(format!("cannot serialise resource: {e}")))?;
        Ok(Prepared {
            op: WriteOp {
                resource_type,
                id: id.to_string(),
                expected_version,
                version,
                last_updated,
                last_updated_ms: now.timestamp_millis(),
                method,
                hash: caregate_store::content_hash(Some(&content)),
                content: Some(content),
                index,
            },
            resource: Some(resource),
        })
    }

    pub(crate) fn tombstone(
        resource_type: &str,
        id: &str,
        current: u64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> WriteOp {
        WriteOp {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            expected_version: Some(current),
            version: current + 1,
            last_updated: format_instant(now),
            last_updated_ms: now.timestamp_millis(),
            method: WriteMethod::Delete,
            content: None,
            hash: caregate_store::content_hash(None),
            index: Vec::new(),
        }
    }

    /// The stages that follow a durable commit.
    pub(crate) fn after_commit(&self, written: &[Written<'_>]) {
        let committed: Vec<Committed<'_>> = written
            .iter()
            .map(|w| Committed {
                resource_type: &w.op.resource_type,
                id: &w.op.id,
                version: w.op.version,
                resource: w.resource,
                references: match (w.resource, w.references) {
                    (Some(resource), Some(given)) => {
                        debug_assert_eq!(
                            caregate_core::json::reference_values(resource),
                            given.iter().map(String::as_str).collect::<Vec<_>>(),
                            "admission changed a reference of {}/{}",
                            w.op.resource_type,
                            w.op.id
                        );
                        given.iter().map(String::as_str).collect()
                    }
                    (Some(resource), None) => caregate_core::json::reference_values(resource),
                    (None, _) => Vec::new(),
                },
            })
            .collect();
        for c in &committed {
            if c.resource_type == "Consent" {
                self.consent_written();
            }
            self.stages.linker.link(c);
        }
        self.stages.shared_view.refresh(&committed);
        for c in &committed {
            self.stages.notifier.notify(c);
        }
    }

    /// `POST [type]`, with `If-None-Exist` when `if_none_exist` is given.
    pub fn create(
        &self,
        caller: &Caller,
        resource_type: &str,
        resource: Value,
        if_none_exist: Option<&str>,
    ) -> FhirResult<WriteOutcome> {
        self.audited(
            caller,
            Subtype::Create,
            Some(resource_type.to_string()),
            || self.create_inner(caller, resource_type, resource, if_none_exist),
        )
    }

    fn create_inner(
        &self,
        caller: &Caller,
        resource_type: &str,
        resource: Value,
        if_none_exist: Option<&str>,
    ) -> FhirResult<WriteOutcome> {
        check_resource_type(resource_type)?;
        caller.require(resource_type, Permission::Create)?;
        refuse_audit_writes(resource_type)?;
        let admitted = self.admit(caller, resource_type, resource)?;
        if let Some(query) = if_none_exist {
            let found = self.find_matches(resource_type, query, 2)?;
            match found.len() {
                0 => {}
                1 => {
                    let record = found
                        .into_iter()
                        .next()
                        .ok_or_else(|| FhirError::internal("match vanished"))?;
                    let resource = parse_record(&record)?;
                    let reference = format!(
                        "{}/{}/_history/{}",
                        record.resource_type, record.id, record.version
                    );
                    self.audit_async(&self.per_patient_entries(
                        caller,
                        Subtype::Create,
                        [(reference, patient_of(&resource))],
                        Some(format!("If-None-Exist: {query}")),
                    ));
                    return Ok(WriteOutcome {
                        record,
                        resource,
                        created: false,
                        matched_existing: true,
                        issues: admitted.issues,
                    });
                }
                _ => {
                    return Err(FhirError::new(
                        ErrorKind::PreconditionFailed,
                        format!("If-None-Exist '{query}' matches more than one {resource_type}"),
                    )
                    .with_code(IssueCode::MultipleMatches))
                }
            }
        }
        // A create ignores any id the client sent (http.html#create): the server assigns it.
        // Time-ordered (UUIDv7), so the (type, id) index grows at its end rather than taking
        // a random page per create; the creation time it reveals is in meta.lastUpdated too.
        let id = uuid::Uuid::now_v7().to_string();
        let prepared = self.prepare(
            admitted.resource,
            &id,
            None,
            WriteMethod::Post,
            chrono::Utc::now(),
        )?;
        self.commit_one(caller, Subtype::Create, prepared, true, admitted.issues)
    }

    /// `PUT [type]/[id]`: update, or create with the client's id when it does not exist yet.
    pub fn update(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        resource: Value,
        if_match: Option<u64>,
    ) -> FhirResult<WriteOutcome> {
        self.audited(
            caller,
            Subtype::Update,
            Some(format!("{resource_type}/{id}")),
            || self.update_inner(caller, resource_type, id, resource, if_match),
        )
    }

    fn update_inner(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        resource: Value,
        if_match: Option<u64>,
    ) -> FhirResult<WriteOutcome> {
        check_resource_type(resource_type)?;
        caller.require(resource_type, Permission::Update)?;
        refuse_audit_writes(resource_type)?;
        if !is_valid_id(id) {
            return Err(FhirError::bad_request(format!(
                "'{id}' is not a valid resource id"
            )));
        }
        match resource.get("id") {
            Some(Value::String(body_id)) if body_id == id => {}
            Some(Value::String(body_id)) => {
                return Err(FhirError::at(
                    ErrorKind::BadRequest,
                    format!("{resource_type}.id"),
                    format!("The resource id '{body_id}' does not match the id '{id}' in the URL"),
                ))
            }
            _ => {
                return Err(FhirError::at(
                    ErrorKind::BadRequest,
                    format!("{resource_type}.id"),
                    "An update must carry the resource id in the body, equal to the id in the URL",
                ))
            }
        }
        let admitted = self.admit(caller, resource_type, resource)?;
        let mut attempts = 0;
        loop {
            let current = self.store.read(resource_type, id).map_err(store_error)?;
            let current_version = current.as_ref().map(|c| c.version);
            if let Some(expected) = if_match {
                if current_version != Some(expected)
                    || current.as_ref().is_some_and(VersionRecord::is_deleted)
                {
                    return Err(precondition_failed(
                        resource_type,
                        id,
                        expected,
                        current_version,
                    ));
                }
            }
            let created = current.as_ref().is_none_or(VersionRecord::is_deleted);
            let prepared = self.prepare(
                admitted.resource.clone(),
                id,
                current_version,
                WriteMethod::Put,
                chrono::Utc::now(),
            )?;
            let subtype = if created {
                Subtype::Create
            } else {
                Subtype::Update
            };
            match self.commit_one(caller, subtype, prepared, created, admitted.issues.clone()) {
                Err(e)
                    if e.kind == ErrorKind::Conflict
                        && if_match.is_none()
                        && attempts < self.options.write_retries =>
                {
                    attempts += 1;
                }
                Err(e) if e.kind == ErrorKind::Conflict && if_match.is_some() => {
                    return Err(precondition_failed(
                        resource_type,
                        id,
                        if_match.unwrap_or_default(),
                        None,
                    ))
                }
                other => return other,
            }
        }
    }

    /// `PUT [type]?[search]`.
    pub fn conditional_update(
        &self,
        caller: &Caller,
        resource_type: &str,
        query: &str,
        resource: Value,
        if_match: Option<u64>,
    ) -> FhirResult<WriteOutcome> {
        check_resource_type(resource_type)?;
        caller.require(resource_type, Permission::Update)?;
        caller.require(resource_type, Permission::Search)?;
        let found = self.find_matches(resource_type, query, 2)?;
        match found.as_slice() {
            [] => {
                // No match: create, keeping the client's id if it sent one.
                match resource.get("id").and_then(Value::as_str) {
                    Some(id) => {
                        let id = id.to_string();
                        self.update(caller, resource_type, &id, resource, if_match)
                    }
                    None => self.create(caller, resource_type, resource, None),
                }
            }
            [one] => {
                let mut resource = resource;
                match resource.get("id").and_then(Value::as_str) {
                    Some(body_id) if body_id != one.id => {
                        return Err(FhirError::at(
                            ErrorKind::BadRequest,
                            format!("{resource_type}.id"),
                            format!(
                            "The resource id '{body_id}' differs from the matching resource '{}'",
                            one.id
                        ),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        if let Some(obj) = resource.as_object_mut() {
                            obj.insert("id".into(), Value::String(one.id.clone()));
                        }
                    }
                }
                let id = one.id.clone();
                self.update(caller, resource_type, &id, resource, if_match)
            }
            _ => Err(FhirError::new(
                ErrorKind::PreconditionFailed,
                format!("The search '{query}' matches more than one {resource_type}"),
            )
            .with_code(IssueCode::MultipleMatches)),
        }
    }

    /// `DELETE [type]/[id]`. Deleting a deleted resource succeeds without a new version.
    pub fn delete(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        if_match: Option<u64>,
    ) -> FhirResult<DeleteOutcome> {
        self.audited(
            caller,
            Subtype::Delete,
            Some(format!("{resource_type}/{id}")),
            || self.delete_inner(caller, resource_type, id, if_match),
        )
    }

    fn delete_inner(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        if_match: Option<u64>,
    ) -> FhirResult<DeleteOutcome> {
        check_resource_type(resource_type)?;
        caller.require(resource_type, Permission::Delete)?;
        refuse_audit_writes(resource_type)?;
        let mut attempts = 0;
        loop {
            let Some(current) = self.store.read(resource_type, id).map_err(store_error)? else {
                return Err(FhirError::not_found(format!(
                    "{resource_type}/{id} does not exist"
                )));
            };
            if let Some(expected) = if_match {
                if current.version != expected {
                    return Err(precondition_failed(
                        resource_type,
                        id,
                        expected,
                        Some(current.version),
                    ));
                }
            }
            if current.is_deleted() {
                return Ok(DeleteOutcome {
                    version: None,
                    deleted_ids: Vec::new(),
                });
            }
            let current_resource = parse_record(&current)?;
            self.check_contribution(caller, ConsentAction::Correct, &current_resource)?;
            let op = Self::tombstone(resource_type, id, current.version, chrono::Utc::now());
            let version = op.version;
            let audit = self.per_patient_entries(
                caller,
                Subtype::Delete,
                [(
                    format!("{resource_type}/{id}/_history/{version}"),
                    patient_of(&current_resource),
                )],
                None,
            );
            let records = audit.iter().map(Self::audit_record).collect();
            match self.store.commit(vec![op.clone()], records) {
                Ok(()) => {
                    self.after_commit(&[Written {
                        op: &op,
                        resource: None,
                        references: None,
                    }]);
                    return Ok(DeleteOutcome {
                        version: Some(version),
                        deleted_ids: vec![id.to_string()],
                    });
                }
                Err(StoreError::Conflict { .. })
                    if if_match.is_none() && attempts < self.options.write_retries =>
                {
                    attempts += 1;
                }
                Err(StoreError::Conflict { actual, .. }) => {
                    return Err(precondition_failed(
                        resource_type,
                        id,
                        if_match.unwrap_or(current.version),
                        actual,
                    ))
                }
                Err(e) => return Err(store_error(e)),
            }
        }
    }

    /// `DELETE [type]?[search]`: deletes the single match; several matches are refused (412).
    pub fn conditional_delete(
        &self,
        caller: &Caller,
        resource_type: &str,
        query: &str,
    ) -> FhirResult<DeleteOutcome> {
        check_resource_type(resource_type)?;
        caller.require(resource_type, Permission::Delete)?;
        caller.require(resource_type, Permission::Search)?;
        if query.trim().is_empty() {
            return Err(FhirError::bad_request(
                "A conditional delete needs search criteria",
            ));
        }
        let found = self.find_matches(resource_type, query, 2)?;
        match found.as_slice() {
            [] => Ok(DeleteOutcome {
                version: None,
                deleted_ids: Vec::new(),
            }),
            [one] => {
                let id = one.id.clone();
                self.delete(caller, resource_type, &id, None)
            }
            _ => Err(FhirError::new(
                ErrorKind::PreconditionFailed,
                format!("The search '{query}' matches more than one {resource_type}; refine the criteria"),
            )
            .with_code(IssueCode::MultipleMatches)),
        }
    }

    fn commit_one(
        &self,
        caller: &Caller,
        subtype: Subtype,
        prepared: Prepared,
        created: bool,
        issues: Vec<Issue>,
    ) -> FhirResult<WriteOutcome> {
        let Prepared { op, resource } = prepared;
        let resource =
            resource.ok_or_else(|| FhirError::internal("prepared write without content"))?;
        let audit = self.per_patient_entries(
            caller,
            subtype,
            [(
                format!("{}/{}/_history/{}", op.resource_type, op.id, op.version),
                patient_of(&resource),
            )],
            None,
        );
        let records = audit.iter().map(Self::audit_record).collect();
        let content = op.content.clone();
        let mut echo = op.summary();
        match self.store.commit(vec![op], records) {
            Ok(()) => {
                let op = {
                    echo.content = content;
                    echo
                };
                self.after_commit(&[Written {
                    op: &op,
                    resource: Some(&resource),
                    references: None,
                }]);
                self.count_accepted(caller, &op.resource_type, Some(&resource), &issues);
                Ok(WriteOutcome {
                    record: VersionRecord {
                        resource_type: op.resource_type,
                        id: op.id,
                        version: op.version,
                        last_updated: op.last_updated,
                        last_updated_ms: op.last_updated_ms,
                        method: op.method,
                        content: op.content,
                        hash: op.hash,
                    },
                    resource,
                    created,
                    matched_existing: false,
                    issues,
                })
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// Resources matching a conditional interaction's criteria (`identifier=...`).
    /// Criteria are parsed strictly: an unknown parameter must not widen the match.
    pub(crate) fn find_matches(
        &self,
        resource_type: &str,
        query: &str,
        limit: usize,
    ) -> FhirResult<Vec<VersionRecord>> {
        let query = query.trim_start_matches('?');
        let query = query
            .strip_prefix(resource_type)
            .map(|q| q.trim_start_matches('?'))
            .unwrap_or(query);
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if params.is_empty() {
            return Err(FhirError::bad_request("Conditional criteria are empty"));
        }
        let mut parsed = self.search.parse(Some(resource_type), &params, true)?;
        parsed.query.count = limit;
        parsed.query.offset = 0;
        parsed.query.total = false;
        Ok(self
            .store
            .search(&parsed.query)
            .map_err(store_error)?
            .matches)
    }
}

/// Tags every stored version with the organisation (or client) that contributed it, so the
/// shared care-plan view can say where each item came from. A tag the sender supplied under
/// this system is replaced: only caregate says who contributed.
pub(crate) const CONTRIBUTOR_SYSTEM: &str =
    "https://caregate.example.org/fhir/CodeSystem/contributor";

fn stamp_contributor(resource: &mut Value, caller: &Caller) {
    let who = match (&caller.actor.organization, &caller.actor.client_id) {
        (Some(org), _) => org.clone(),
        (None, Some(client)) => format!("client/{client}"),
        (None, None) => return,
    };
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let tags = meta
        .entry("tag")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(tags) = tags.as_array_mut() else {
        return;
    };
    tags.retain(|t| t.get("system").and_then(Value::as_str) != Some(CONTRIBUTOR_SYSTEM));
    tags.push(serde_json::json!({"system": CONTRIBUTOR_SYSTEM, "code": who}));
}

/// What ingest does with a contribution the patient's consent allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contribution {
    /// Stored and shared as the read-side decisions allow.
    Shared,
    /// No Consent yet: stored, visible only to its source until a permitting Consent arrives.
    Hold,
}

/// The body's `resourceType` must be the type the request names.
fn check_body_type(resource: &Value, resource_type: &str) -> FhirResult<()> {
    match resource.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == resource_type => Ok(()),
        Some(t) => Err(FhirError::at(
            ErrorKind::BadRequest,
            format!("{t}.resourceType"),
            format!("Resource type '{t}' does not match the request's type '{resource_type}'"),
        )),
        None => Err(FhirError::bad_request("The resource has no 'resourceType'")),
    }
}

/// AuditEvents are written by caregate itself; the API never changes them.
pub(crate) fn refuse_audit_writes(resource_type: &str) -> FhirResult<()> {
    if resource_type == "AuditEvent" {
        Err(FhirError::new(
            ErrorKind::MethodNotAllowed,
            "AuditEvents are recorded by caregate itself and cannot be created, changed or deleted through the API",
        ))
    } else {
        Ok(())
    }
}

pub(crate) fn precondition_failed(
    resource_type: &str,
    id: &str,
    expected: u64,
    actual: Option<u64>,
) -> FhirError {
    let found = actual.map_or_else(|| "none".to_string(), |v| v.to_string());
    FhirError::new(
        ErrorKind::PreconditionFailed,
        format!("If-Match expected version {expected} of {resource_type}/{id}, but the current version is {found}"),
    )
    .with_code(IssueCode::Conflict)
}

/// A committed write as the stages after the commit see it.
pub(crate) struct Written<'a> {
    pub op: &'a WriteOp,
    /// `None` for a deletion.
    pub resource: Option<&'a Value>,
    /// The resource's `reference` values, when the caller already has them (a transaction
    /// keeps them from rewriting its references); otherwise the resource is walked for
    /// them.
    pub references: Option<&'a [String]>,
}

pub(crate) fn parse_record(record: &VersionRecord) -> FhirResult<Value> {
    match &record.content {
        Some(bytes) => caregate_core::json::parse_value(bytes).map_err(|e| {
            FhirError::internal(format!(
                "stored {}/{} is unreadable: {e}",
                record.resource_type, record.id
            ))
        }),
        None => Err(FhirError::new(
            ErrorKind::Gone,
            format!("{}/{} was deleted", record.resource_type, record.id),
        )),
    }
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated`, placing `resourceType`, `id` and
/// `meta` first as the FHIR JSON examples do.
pub(crate) fn stamp(resource: &mut Value, id: &str, version: u64, last_updated: &str) {
    let Value::Object(obj) = resource else { return };
    // Most senders already put `resourceType`, `id` and `meta` first: then the values are
    // replaced where they are. Moving a member shifts every member after it, and the map
    // re-indexes each one.
    let mut keys = obj.keys().map(String::as_str);
    if (keys.next(), keys.next(), keys.next()) == (Some("resourceType"), Some("id"), Some("meta")) {
        if let Some(Value::Object(meta)) = obj.get_mut("meta") {
            stamp_meta(meta, version, last_updated);
            obj.insert("id".into(), Value::String(id.to_string()));
            return;
        }
    }
    // Moved into place rather than the object rebuilt: rebuilding re-hashed every key of
    // every resource written.
    let mut meta = match obj.shift_remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    stamp_meta(&mut meta, version, last_updated);
    if obj.keys().next().is_some_and(|k| k != "resourceType") {
        if let Some(rt) = obj.shift_remove("resourceType") {
            obj.shift_insert(0, "resourceType".into(), rt);
        }
    }
    let at = usize::from(obj.keys().next().is_some_and(|k| k == "resourceType"));
    obj.shift_insert(at, "id".into(), Value::String(id.to_string()));
    obj.shift_insert(at + 1, "meta".into(), Value::Object(meta));
}

/// `versionId` and `lastUpdated`, first in `meta`.
fn stamp_meta(meta: &mut Map<String, Value>, version: u64, last_updated: &str) {
    meta.shift_insert(0, "versionId".into(), Value::String(version.to_string()));
    meta.shift_insert(
        1,
        "lastUpdated".into(),
        Value::String(last_updated.to_string()),
    );
}

/// Issues of warning severity or below, for responses that report them.
pub(crate) fn non_errors(issues: &[Issue]) -> Vec<Issue> {
    issues
        .iter()
        .filter(|i| i.severity > Severity::Error)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::stamp;
    use serde_json::json;

    #[test]
    fn stamp_puts_type_id_and_meta_first_and_keeps_the_rest_in_order() {
        let mut r = json!({"name": [{"family": "A"}], "id": "client-chosen",
            "meta": {"source": "x", "lastUpdated": "2000-01-01T00:00:00Z", "versionId": "9"},
            "resourceType": "Patient", "gender": "other"});
        stamp(&mut r, "p1", 3, "2026-01-01T00:00:00.000Z");
        let keys: Vec<&str> = r
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "name", "gender"]);
        assert_eq!(r["id"], "p1");
        let meta: Vec<(&str, &serde_json::Value)> = r["meta"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        assert_eq!(
            meta,
            [
                ("versionId", &json!("3")),
                ("lastUpdated", &json!("2026-01-01T00:00:00.000Z")),
                ("source", &json!("x"))
            ]
        );
        // Already in order (the common case, stamped in place): the same result.
        let mut ordered = json!({"resourceType": "Patient", "id": "old",
            "meta": {"tag": [{"code": "t"}], "versionId": "9"}, "gender": "other"});
        stamp(&mut ordered, "p2", 4, "2026-01-02T00:00:00.000Z");
        assert_eq!(
            serde_json::to_string(&ordered).expect("renders"),
            r#"{"resourceType":"Patient","id":"p2","meta":{"versionId":"4","lastUpdated":"2026-01-02T00:00:00.000Z","tag":[{"code":"t"}]},"gender":"other"}"#
        );
        // `meta` in third place but not an object: replaced like any other.
        let mut odd = json!({"resourceType": "Patient", "id": "x", "meta": 3, "gender": "other"});
        stamp(&mut odd, "p3", 1, "t");
        assert_eq!(
            serde_json::to_string(&odd).expect("renders"),
            r#"{"resourceType":"Patient","id":"p3","meta":{"versionId":"1","lastUpdated":"t"},"gender":"other"}"#
        );
        // Without resourceType or meta: id and meta lead.
        let mut bare = json!({"status": "final"});
        stamp(&mut bare, "o1", 1, "t");
        let keys: Vec<&str> = bare
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["id", "meta", "status"]);
    }
}
