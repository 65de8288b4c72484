//! Batch and transaction Bundles (http.html#transaction).
//!
//! A transaction is planned in full before anything is written — identities resolved
//! (conditional create/update/delete), `fullUrl` references rewritten, every resource
//! admitted — and then committed as one store transaction: all entries or none.

use std::collections::{HashMap, HashSet};

use caregate_core::json::member;
use caregate_core::{ErrorKind, FhirError, FhirResult, Issue, IssueCode};
use caregate_store::{HistoryScope, StoreError, VersionRecord, WriteMethod, WriteOp};
use serde_json::{json, Map, Value};

use crate::conformance::StatsSource;
use crate::references::ReferenceSites;
use crate::write::{parse_record, precondition_failed, refuse_audit_writes, Written};
use crate::{check_resource_type, store_error, Caller, HistoryRequest, Permission, Pipeline};
use caregate_audit::{patient_of, Subtype};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Batch,
    Transaction,
}

/// The client's `Prefer: return=` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    // Declaration order is the transaction processing order (http.html#trules).
    Delete,
    Post,
    Put,
    Get,
}

struct EntryRequest {
    index: usize,
    method: Method,
    url: String,
    full_url: Option<String>,
    resource: Option<Value>,
    if_match: Option<u64>,
    if_none_exist: Option<String>,
}

/// What a transaction entry turned out to do, once identities are resolved.
enum Plan {
    Create {
        rtype: String,
        id: String,
    },
    /// A conditional create whose criteria matched: nothing to write.
    Existing {
        record: VersionRecord,
    },
    Update {
        rtype: String,
        id: String,
    },
    Delete {
        rtype: String,
        id: Option<String>,
    },
    Read,
}

/// Parses `W/"3"`, `"3"` or `3` into a version number.
pub fn parse_etag(etag: &str) -> Option<u64> {
    let t = etag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.trim_matches('"').parse().ok()
}

fn entry_error(
    index: usize,
    element: &str,
    kind: ErrorKind,
    message: impl Into<String>,
) -> FhirError {
    FhirError::at(kind, format!("Bundle.entry[{index}].{element}"), message)
}

/// Splits `Type/id`, `Type?query`, `Type` (relative to the base) into parts.
fn split_url<'a>(url: &'a str, base: &str) -> (&'a str, Option<&'a str>, Option<&'a str>) {
    let url = url
        .strip_prefix(base)
        .map(|u| u.trim_start_matches('/'))
        .unwrap_or(url);
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let mut parts = path.splitn(2, '/');
    let ty = parts.next().unwrap_or_default();
    let rest = parts.next().filter(|r| !r.is_empty());
    (ty, rest, query)
}

impl Pipeline {
    /// `POST [base]` with a batch or transaction Bundle; answers the response Bundle.
    pub fn process_bundle(
        &self,
        caller: &Caller,
        bundle: Value,
        prefer: ReturnPreference,
        base: &str,
    ) -> FhirResult<Value> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(FhirError::bad_request(
                "POST to the base URL takes a Bundle of type batch or transaction",
            ));
        }
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => BundleKind::Transaction,
            Some("batch") => BundleKind::Batch,
            Some(other) => {
                return Err(FhirError::at(
                    ErrorKind::BadRequest,
                    "Bundle.type",
                    format!(
                        "Bundle type '{other}' cannot be processed; use 'batch' or 'transaction'"
                    ),
                ))
            }
            None => {
                return Err(FhirError::at(
                    ErrorKind::BadRequest,
                    "Bundle.type",
                    "Bundle.type is missing",
                ))
            }
        };
        let Value::Object(mut bundle) = bundle else {
            return Err(FhirError::bad_request("Bundle must be a JSON object"));
        };
        let entries = match bundle.shift_remove("entry") {
            None => Vec::new(),
            Some(Value::Array(e)) => e,
            Some(_) => {
                return Err(FhirError::at(
                    ErrorKind::BadRequest,
                    "Bundle.entry",
                    "Bundle.entry must be an array",
                ))
            }
        };
        if entries.len() > self.options.max_bundle_entries {
            return Err(FhirError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "The Bundle has {} entries; at most {} are accepted",
                    entries.len(),
                    self.options.max_bundle_entries
                ),
            ));
        }
        match kind {
            BundleKind::Transaction => {
                let requests = entries
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| parse_entry(i, e, base))
                    .collect::<FhirResult<Vec<_>>>()?;
                self.audited(caller, Subtype::Transaction, None, || {
                    self.transaction(caller, requests, prefer, base)
                })
            }
            BundleKind::Batch => Ok(self.batch(caller, entries, prefer, base)),
        }
    }

    fn batch(
        &self,
        caller: &Caller,
        entries: Vec<Value>,
        prefer: ReturnPreference,
        base: &str,
    ) -> Value {
        let mut out = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let result = parse_entry(i, entry, base)
                .and_then(|req| self.batch_entry(caller, req, prefer, base));
            out.push(match result {
                Ok(v) => v,
                Err(e) => error_entry(&e),
            });
        }
        response_bundle("batch-response", out)
    }

    fn batch_entry(
        &self,
        caller: &Caller,
        req: EntryRequest,
        prefer: ReturnPreference,
        base: &str,
    ) -> FhirResult<Value> {
        let (rtype, id, query) = split_url(&req.url, base);
        let (rtype, id) = (rtype.to_string(), id.map(str::to_string));
        match req.method {
            Method::Get => self.get_entry(caller, &req.url, base),
            Method::Post => {
                let resource = req.resource.ok_or_else(|| {
                    entry_error(
                        req.index,
                        "resource",
                        ErrorKind::BadRequest,
                        "POST needs a resource",
                    )
                })?;
                let out = self
                    .create(caller, &rtype, resource, req.if_none_exist.as_deref())
                    .map_err(|e| {
                        e.located_under(&format!("Bundle.entry[{}].resource", req.index), &rtype)
                    })?;
                let status = if out.matched_existing {
                    "200 OK"
                } else {
                    "201 Created"
                };
                Ok(write_entry(
                    base,
                    &out.record,
                    Some(&out.resource),
                    status,
                    prefer,
                    &out.issues,
                ))
            }
            Method::Put => {
                let resource = req.resource.ok_or_else(|| {
                    entry_error(
                        req.index,
                        "resource",
                        ErrorKind::BadRequest,
                        "PUT needs a resource",
                    )
                })?;
                let out = match (id, query) {
                    (Some(id), _) => self.update(caller, &rtype, &id, resource, req.if_match),
                    (None, Some(q)) => {
                        self.conditional_update(caller, &rtype, q, resource, req.if_match)
                    }
                    (None, None) => Err(entry_error(
                        req.index,
                        "request.url",
                        ErrorKind::BadRequest,
                        "PUT needs Type/id or Type?criteria",
                    )),
                }
                .map_err(|e| {
                    e.located_under(&format!("Bundle.entry[{}].resource", req.index), &rtype)
                })?;
                let status = if out.created { "201 Created" } else { "200 OK" };
                Ok(write_entry(
                    base,
                    &out.record,
                    Some(&out.resource),
                    status,
                    prefer,
                    &out.issues,
                ))
            }
            Method::Delete => {
                let out = match (id, query) {
                    (Some(id), _) => self.delete(caller, &rtype, &id, req.if_match),
                    (None, Some(q)) => self.conditional_delete(caller, &rtype, q),
                    (None, None) => Err(entry_error(
                        req.index,
                        "request.url",
                        ErrorKind::BadRequest,
                        "DELETE needs Type/id or Type?criteria",
                    )),
                }?;
                let mut response = Map::new();
                response.insert("status".into(), json!("204 No Content"));
                if let Some(v) = out.version {
                    response.insert("etag".into(), json!(format!("W/\"{v}\"")));
                }
                Ok(json!({ "response": response }))
            }
        }
    }

    /// A GET inside a Bundle: read, vread, history or search.
    fn get_entry(&self, caller: &Caller, url: &str, base: &str) -> FhirResult<Value> {
        let (rtype, rest, query) = split_url(url, base);
        let params: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let segments: Vec<&str> = rest.map(|r| r.split('/').collect()).unwrap_or_default();
        let (resource, etag) = match segments.as_slice() {
            [] => (
                self.search(caller, Some(rtype), &params, false, base)?
                    .bundle,
                None,
            ),
            [id] => {
                let rec = self.read(caller, rtype, id)?;
                (parse_record(&rec)?, Some(rec.version))
            }
            [id, "_history"] => (
                self.history(
                    caller,
                    &HistoryRequest {
                        scope: HistoryScope::Instance(rtype.to_string(), id.to_string()),
                        params,
                    },
                    base,
                )?,
                None,
            ),
            [id, "_history", vid] => {
                let rec = self.vread(caller, rtype, id, vid)?;
                (parse_record(&rec)?, Some(rec.version))
            }
            _ => {
                return Err(FhirError::bad_request(format!(
                    "Unsupported GET '{url}' in a Bundle"
                )))
            }
        };
        let mut response = Map::new();
        response.insert("status".into(), json!("200 OK"));
        if let Some(v) = etag {
            response.insert("etag".into(), json!(format!("W/\"{v}\"")));
        }
        Ok(json!({ "resource": resource, "response": response }))
    }

    fn transaction(
        &self,
        caller: &Caller,
        mut requests: Vec<EntryRequest>,
        prefer: ReturnPreference,
        base: &str,
    ) -> FhirResult<Value> {
        let count = requests.len();
        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by_key(|&i| requests[i].method);

        // 1. Resolve identities and the fullUrl → Type/id map.
        let mut plans: Vec<Option<Plan>> = (0..count).map(|_| None).collect();
        let mut id_map: HashMap<String, String> = HashMap::new();
        let mut targets: HashSet<(String, String)> = HashSet::new();
        for &i in &order {
            let req = &requests[i];
            let (rtype, id, query) = split_url(&req.url, base);
            if req.method != Method::Get {
                check_resource_type(rtype).map_err(|e| {
                    e.located_under(&format!("Bundle.entry[{i}].request.url"), rtype)
                })?;
                refuse_audit_writes(rtype).map_err(|e| {
                    e.located_under(&format!("Bundle.entry[{i}].request.url"), rtype)
                })?;
                let permission = match req.method {
                    Method::Delete => Permission::Delete,
                    Method::Post => Permission::Create,
                    _ => Permission::Update,
                };
                caller
                    .require(rtype, permission)
                    .map_err(|e| e.located_under(&format!("Bundle.entry[{i}].request"), rtype))?;
            }
            let plan = match req.method {
                Method::Get => Plan::Read,
                Method::Delete => {
                    let id = match (id, query) {
                        (Some(id), _) => Some(id.to_string()),
                        (None, Some(q)) => {
                            let found = self.find_matches(rtype, q, 2)?;
                            match found.as_slice() {
                                [] => None,
                                [one] => Some(one.id.clone()),
                                _ => return Err(multiple_matches(i, q, rtype)),
                            }
                        }
                        (None, None) => {
                            return Err(entry_error(
                                i,
                                "request.url",
                                ErrorKind::BadRequest,
                                "DELETE needs Type/id or Type?criteria",
                            ))
                        }
                    };
                    Plan::Delete {
                        rtype: rtype.to_string(),
                        id,
                    }
                }
                Method::Post => {
                    let existing = match &req.if_none_exist {
                        Some(q) => {
                            let found = self.find_matches(rtype, q, 2)?;
                            if found.len() > 1 {
                                return Err(multiple_matches(i, q, rtype));
                            }
                            found.into_iter().next()
                        }
                        None => None,
                    };
                    match existing {
                        Some(record) => Plan::Existing { record },
                        // Time-ordered ids, as for a single create (see `create`).
                        None => Plan::Create {
                            rtype: rtype.to_string(),
                            id: uuid::Uuid::now_v7().to_string(),
                        },
                    }
                }
                Method::Put => {
                    let id = match (id, query) {
                        (Some(id), _) => id.to_string(),
                        (None, Some(q)) => {
                            let found = self.find_matches(rtype, q, 2)?;
                            match found.as_slice() {
                                [] => req
                                    .resource
                                    .as_ref()
                                    .and_then(|r| r.get("id"))
                                    .and_then(Value::as_str)
                                    .map(str::to_string)
                                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                                [one] => one.id.clone(),
                                _ => return Err(multiple_matches(i, q, rtype)),
                            }
                        }
                        (None, None) => {
                            return Err(entry_error(
                                i,
                                "request.url",
                                ErrorKind::BadRequest,
                                "PUT needs Type/id or Type?criteria",
                            ))
                        }
                    };
                    if !caregate_core::is_valid_id(&id) {
                        return Err(entry_error(
                            i,
                            "request.url",
                            ErrorKind::BadRequest,
                            format!("'{id}' is not a valid id"),
                        ));
                    }
                    Plan::Update {
                        rtype: rtype.to_string(),
                        id,
                    }
                }
            };
            let key = match &plan {
                Plan::Create { rtype, id } | Plan::Update { rtype, id } => {
                    Some((rtype.clone(), id.clone()))
                }
                Plan::Delete {
                    rtype,
                    id: Some(id),
                } => Some((rtype.clone(), id.clone())),
                Plan::Existing { record } => {
                    Some((record.resource_type.clone(), record.id.clone()))
                }
                _ => None,
            };
            if let Some((t, id)) = key {
                if !matches!(plan, Plan::Existing { .. })
                    && !targets.insert((t.clone(), id.clone()))
                {
                    return Err(entry_error(
                        i,
                        "request",
                        ErrorKind::BadRequest,
                        format!(
                            "{t}/{id} is the target of more than one entry in this transaction"
                        ),
                    ));
                }
                if let Some(full_url) = &req.full_url {
                    id_map.insert(full_url.clone(), format!("{t}/{id}"));
                }
            }
            plans[i] = Some(plan);
        }

        // 2. Rewrite references, resolve conditional references, admit every resource.
        let sites: Vec<ReferenceSites> = requests
            .iter()
            .map(|req| {
                req.resource
                    .as_ref()
                    .map(ReferenceSites::scan)
                    .unwrap_or_default()
            })
            .collect();
        let mut conditional_refs = Vec::new();
        for (req, sites) in requests.iter().zip(&sites) {
            if let Some(r) = &req.resource {
                sites.conditional_references(r, &mut conditional_refs);
            }
        }
        for reference in conditional_refs {
            let (ty, query) = reference.split_once('?').unwrap_or((&reference, ""));
            let found = self.find_matches(ty, query, 2)?;
            match found.as_slice() {
                [one] => {
                    id_map.insert(reference.clone(), format!("{ty}/{}", one.id));
                }
                [] => {
                    return Err(FhirError::new(
                        ErrorKind::PreconditionFailed,
                        format!("The conditional reference '{reference}' matches no resource"),
                    ))
                }
                _ => {
                    return Err(FhirError::new(
                        ErrorKind::PreconditionFailed,
                        format!(
                        "The conditional reference '{reference}' matches more than one resource"
                    ),
                    )
                    .with_code(IssueCode::MultipleMatches))
                }
            }
        }
        let mut admitted: Vec<Option<Value>> = (0..count).map(|_| None).collect();
        let mut issues_by_entry: Vec<Vec<Issue>> = (0..count).map(|_| Vec::new()).collect();
        let mut references_by_entry: Vec<Vec<String>> = (0..count).map(|_| Vec::new()).collect();
        let mut errors: Vec<Issue> = Vec::new();
        for (i, req) in requests.iter_mut().enumerate() {
            let Some(Plan::Create { rtype, id } | Plan::Update { rtype, id }) = &plans[i] else {
                continue;
            };
            let Some(mut resource) = req.resource.take() else {
                return Err(entry_error(
                    i,
                    "resource",
                    ErrorKind::BadRequest,
                    "This entry needs a resource",
                ));
            };
            if let Some(obj) = resource.as_object_mut() {
                if matches!(plans[i], Some(Plan::Update { .. })) {
                    match obj.get("id").and_then(Value::as_str) {
                        Some(body) if body != id => {
                            return Err(entry_error(
                                i,
                                "resource.id",
                                ErrorKind::BadRequest,
                                format!(
                                    "The resource id '{body}' does not match '{id}' in request.url"
                                ),
                            ));
                        }
                        _ => {}
                    }
                }
                obj.insert("id".into(), Value::String(id.clone()));
            }
            references_by_entry[i] = sites[i].rewrite(&mut resource, &id_map);
            match self.admit(caller, rtype, resource) {
                Ok(a) => {
                    issues_by_entry[i] = a.issues;
                    admitted[i] = Some(a.resource);
                }
                Err(e) => {
                    let e = e.located_under(&format!("Bundle.entry[{i}].resource"), rtype);
                    errors.extend(e.issues);
                }
            }
        }
        if !errors.is_empty() {
            return Err(FhirError::with_issues(ErrorKind::BadRequest, errors));
        }

        // 3. Build the writes against current versions and commit them together.
        let mut attempts = 0;
        let (ops, resources, created) = loop {
            let now = chrono::Utc::now();
            let mut ops: Vec<WriteOp> = Vec::new();
            let mut op_of_entry: Vec<Option<usize>> = vec![None; count];
            let mut created = vec![false; count];
            let mut touched: Vec<(String, Option<String>)> = Vec::new();
            for &i in &order {
                let if_match = requests[i].if_match;
                match &plans[i] {
                    Some(Plan::Create { id, .. }) => {
                        let resource = admitted[i].take().unwrap_or(Value::Null);
                        let prepared = self.prepare(resource, id, None, WriteMethod::Post, now)?;
                        admitted[i] = prepared.resource;
                        touched.push((
                            format!(
                                "{}/{}/_history/{}",
                                prepared.op.resource_type, id, prepared.op.version
                            ),
                            admitted[i].as_ref().and_then(patient_of),
                        ));
                        op_of_entry[i] = Some(ops.len());
                        created[i] = true;
                        ops.push(prepared.op);
                    }
                    Some(Plan::Update { rtype, id }) => {
                        let current = self.store.read(rtype, id).map_err(store_error)?;
                        let version = current.as_ref().map(|c| c.version);
                        if let Some(expected) = if_match {
                            if version != Some(expected) {
                                return Err(precondition_failed(rtype, id, expected, version)
                                    .located_under(
                                        &format!("Bundle.entry[{i}].request.ifMatch"),
                                        rtype,
                                    ));
                            }
                        }
                        created[i] = current.as_ref().is_none_or(VersionRecord::is_deleted);
                        let resource = admitted[i].take().unwrap_or(Value::Null);
                        let prepared =
                            self.prepare(resource, id, version, WriteMethod::Put, now)?;
                        admitted[i] = prepared.resource;
                        touched.push((
                            format!("{rtype}/{id}/_history/{}", prepared.op.version),
                            admitted[i].as_ref().and_then(patient_of),
                        ));
                        op_of_entry[i] = Some(ops.len());
                        ops.push(prepared.op);
                    }
                    Some(Plan::Delete {
                        rtype,
                        id: Some(id),
                    }) => {
                        let current = self.store.read(rtype, id).map_err(store_error)?;
                        match current {
                            None => {
                                return Err(entry_error(
                                    i,
                                    "request.url",
                                    ErrorKind::NotFound,
                                    format!("{rtype}/{id} does not exist"),
                                ))
                            }
                            Some(c) if c.is_deleted() => {}
                            Some(c) => {
                                if let Some(expected) = if_match {
                                    if c.version != expected {
                                        return Err(precondition_failed(
                                            rtype,
                                            id,
                                            expected,
                                            Some(c.version),
                                        ));
                                    }
                                }
                                let patient = parse_record(&c).ok().as_ref().and_then(patient_of);
                                touched.push((
                                    format!("{rtype}/{id}/_history/{}", c.version + 1),
                                    patient,
                                ));
                                op_of_entry[i] = Some(ops.len());
                                ops.push(Self::tombstone(rtype, id, c.version, now));
                            }
                        }
                    }
                    _ => {}
                }
            }
            let records = self
                .per_patient_entries(caller, Subtype::Transaction, touched, None)
                .iter()
                .map(Self::audit_record)
                .collect();
            // The store takes the writes; what the response and the later stages need of
            // them is kept without the content and index (the resources live in `admitted`).
            let echo: Vec<WriteOp> = ops.iter().map(WriteOp::summary).collect();
            match self.store.commit(ops, records) {
                Ok(()) => break (echo, op_of_entry, created),
                Err(StoreError::Conflict { op_index, .. }) => {
                    let entry = op_of_entry.iter().position(|o| *o == Some(op_index));
                    let guarded = entry.is_some_and(|e| requests[e].if_match.is_some());
                    if guarded || attempts >= self.options.write_retries {
                        let at = entry
                            .map_or_else(|| "Bundle".to_string(), |e| format!("Bundle.entry[{e}]"));
                        return Err(FhirError::at(
                            if guarded { ErrorKind::PreconditionFailed } else { ErrorKind::Conflict },
                            at,
                            "A resource in this transaction was changed by another request; nothing was written",
                        ));
                    }
                    attempts += 1;
                }
                Err(e) => return Err(store_error(e)),
            }
        };
        // `admitted` now holds each written resource as stored (id and meta stamped).
        let mut written: Vec<Written<'_>> = ops
            .iter()
            .map(|op| Written {
                op,
                resource: None,
                references: None,
            })
            .collect();
        for (i, op_index) in resources.iter().enumerate() {
            if let Some(o) = op_index {
                written[*o].resource = admitted[i].as_ref();
                written[*o].references = Some(&references_by_entry[i]);
            }
        }
        self.after_commit(&written);
        // One statistics request for the whole Bundle, not one per entry.
        let source = StatsSource::of(caller);
        self.record_stats(
            plans
                .iter()
                .enumerate()
                .filter_map(|(i, plan)| match plan {
                    Some(Plan::Create { rtype, .. } | Plan::Update { rtype, .. }) => {
                        Some(Self::conformance_record(
                            &source,
                            rtype,
                            admitted[i].as_ref(),
                            true,
                            &issues_by_entry[i],
                        ))
                    }
                    _ => None,
                })
                .collect(),
        );

        // 4. Reads run after the writes, then the response in request order.
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let entry = match &plans[i] {
                Some(Plan::Read) => self.get_entry(caller, &requests[i].url, base)?,
                Some(Plan::Existing { record }) => {
                    let resource = parse_record(record)?;
                    write_entry(base, record, Some(&resource), "200 OK", prefer, &[])
                }
                Some(Plan::Delete { .. }) => match resources[i] {
                    Some(o) => {
                        json!({ "response": { "status": "204 No Content", "etag": format!("W/\"{}\"", ops[o].version) } })
                    }
                    None => json!({ "response": { "status": "204 No Content" } }),
                },
                Some(Plan::Create { .. } | Plan::Update { .. }) => {
                    let Some(o) = resources[i] else {
                        return Err(FhirError::internal("transaction entry lost its write"));
                    };
                    let op = &ops[o];
                    let record = VersionRecord {
                        resource_type: op.resource_type.clone(),
                        id: op.id.clone(),
                        version: op.version,
                        last_updated: op.last_updated.clone(),
                        last_updated_ms: op.last_updated_ms,
                        method: op.method,
                        content: None,
                        hash: String::new(),
                    };
                    let status = if created[i] { "201 Created" } else { "200 OK" };
                    write_entry(
                        base,
                        &record,
                        admitted[i].as_ref(),
                        status,
                        prefer,
                        &issues_by_entry[i],
                    )
                }
                None => return Err(FhirError::internal("transaction entry without a plan")),
            };
            out.push(entry);
        }
        Ok(response_bundle("transaction-response", out))
    }
}

fn multiple_matches(index: usize, query: &str, rtype: &str) -> FhirError {
    FhirError::at(
        ErrorKind::PreconditionFailed,
        format!("Bundle.entry[{index}].request"),
        format!("The criteria '{query}' match more than one {rtype}"),
    )
    .with_code(IssueCode::MultipleMatches)
}

fn parse_entry(index: usize, entry: Value, _base: &str) -> FhirResult<EntryRequest> {
    let Value::Object(mut entry) = entry else {
        return Err(FhirError::at(
            ErrorKind::BadRequest,
            format!("Bundle.entry[{index}]"),
            "A Bundle entry must be an object",
        ));
    };
    let request = member(&entry, "request")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            entry_error(
                index,
                "request",
                ErrorKind::BadRequest,
                "Each batch/transaction entry needs a request",
            )
        })?;
    let method = match member(request, "method").and_then(Value::as_str) {
        Some("GET") | Some("HEAD") => Method::Get,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("DELETE") => Method::Delete,
        Some("PATCH") => {
            return Err(entry_error(
                index,
                "request.method",
                ErrorKind::NotImplemented,
                "PATCH is not supported",
            ))
        }
        Some(other) => {
            return Err(entry_error(
                index,
                "request.method",
                ErrorKind::BadRequest,
                format!("Unknown method '{other}'"),
            ))
        }
        None => {
            return Err(entry_error(
                index,
                "request.method",
                ErrorKind::BadRequest,
                "request.method is missing",
            ))
        }
    };
    let url = member(request, "url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            entry_error(
                index,
                "request.url",
                ErrorKind::BadRequest,
                "request.url is missing",
            )
        })?
        .to_string();
    let if_match = match member(request, "ifMatch").and_then(Value::as_str) {
        Some(e) => Some(parse_etag(e).ok_or_else(|| {
            entry_error(
                index,
                "request.ifMatch",
                ErrorKind::BadRequest,
                format!("'{e}' is not an ETag like W/\"1\""),
            )
        })?),
        None => None,
    };
    let if_none_exist = member(request, "ifNoneExist")
        .and_then(Value::as_str)
        .map(str::to_string);
    let full_url = member(&entry, "fullUrl")
        .and_then(Value::as_str)
        .map(str::to_string);
    let resource = entry.shift_remove("resource");
    if matches!(method, Method::Post | Method::Put) {
        match &resource {
            Some(Value::Object(r)) => {
                let (ty, _, _) = split_url(&url, _base);
                match member(r, "resourceType").and_then(Value::as_str) {
                    Some(t) if t == ty => {}
                    Some(t) => {
                        return Err(entry_error(
                            index,
                            "resource.resourceType",
                            ErrorKind::BadRequest,
                            format!("Resource type '{t}' does not match request.url '{url}'"),
                        ))
                    }
                    None => {
                        return Err(entry_error(
                            index,
                            "resource",
                            ErrorKind::BadRequest,
                            "The resource has no resourceType",
                        ))
                    }
                }
            }
            _ => {
                return Err(entry_error(
                    index,
                    "resource",
                    ErrorKind::BadRequest,
                    "POST and PUT entries need a resource",
                ))
            }
        }
    }
    Ok(EntryRequest {
        index,
        method,
        url,
        full_url,
        resource,
        if_match,
        if_none_exist,
    })
}

fn write_entry(
    base: &str,
    record: &VersionRecord,
    resource: Option<&Value>,
    status: &str,
    prefer: ReturnPreference,
    issues: &[Issue],
) -> Value {
    let mut entry = Map::new();
    entry.insert(
        "fullUrl".into(),
        json!(format!("{base}/{}/{}", record.resource_type, record.id)),
    );
    match (prefer, resource) {
        (ReturnPreference::Representation, Some(r)) => {
            entry.insert("resource".into(), r.clone());
        }
        (ReturnPreference::OperationOutcome, _) => {
            entry.insert(
                "resource".into(),
                caregate_core::OperationOutcome {
                    issues: crate::write::non_errors(issues),
                }
                .to_json(),
            );
        }
        _ => {}
    }
    entry.insert(
        "response".into(),
        json!({
            "status": status,
            "location": format!("{}/{}/_history/{}", record.resource_type, record.id, record.version),
            "etag": format!("W/\"{}\"", record.version),
            "lastModified": record.last_updated,
        }),
    );
    Value::Object(entry)
}

fn error_entry(e: &FhirError) -> Value {
    let status = e.kind.http_status();
    json!({
        "response": {
            "status": format!("{status} {}", reason(status)),
            "outcome": e.outcome().to_json(),
        }
    })
}

/// The HTTP reason phrase for the status codes caregate answers with.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn response_bundle(kind: &str, entries: Vec<Value>) -> Value {
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    bundle.insert("type".into(), json!(kind));
    bundle.insert("entry".into(), Value::Array(entries));
    Value::Object(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("7"), Some(7));
        assert_eq!(parse_etag("W/\"x\""), None);
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("Patient/1", "http://h/fhir"),
            ("Patient", Some("1"), None)
        );
        assert_eq!(
            split_url("http://h/fhir/Patient/1", "http://h/fhir"),
            ("Patient", Some("1"), None)
        );
        assert_eq!(
            split_url("Patient?identifier=a", "b"),
            ("Patient", None, Some("identifier=a"))
        );
        assert_eq!(split_url("Patient", "b"), ("Patient", None, None));
    }
}
