//! The one path every request walks.
//!
//! Writes — single interactions and both Bundle types alike — go
//! parse → validate → label → consent → link patient → store → refresh shared view → audit
//! → notify; reads go store → consent filter → audit. The HTTP server only translates
//! between HTTP and these calls, so no route can skip a stage. Stages that are not built yet
//! are named no-ops from their own crates ([`caregate_consent::ConsentNotEnforced`], ...).
//!
//! Everything here is synchronous: the server runs it on a blocking thread pool.

mod bundle;
mod careplan;
mod conformance;
mod consent;
mod disclosures;
mod read;
mod references;
mod scopes;
mod write;

use std::sync::Arc;

use caregate_audit::{AuditEntry, Outcome, Subtype};
use caregate_careplan::{NoPatientLinking, NoSharedView, PatientLinker, SharedView};
use caregate_consent::{Actor, ConsentNotEnforced, ConsentPolicy};
use caregate_core::{ErrorKind, FhirError, FhirResult, Issue};
use caregate_search::SearchRegistry;
use caregate_store::{AuditRecord, Store, StoreError};
use serde_json::Value;

pub use bundle::{parse_etag, reason, BundleKind, ReturnPreference};
pub use careplan::{care_plan_html, CarePlanView};
pub use conformance::{conformance_html, conformance_json};
pub use disclosures::{disclosures_html, disclosures_parameters, Disclosure};
pub use read::{HistoryRequest, SearchOutcome};
pub use scopes::{Permission, ScopeError, Scopes};
pub use write::{DeleteOutcome, WriteOutcome};

/// Structural/profile validation of one inbound resource.
pub trait Validator: Send + Sync {
    /// All issues found; any error-severity issue rejects the resource.
    fn validate(&self, resource: &Value) -> Vec<Issue>;

    /// The check of a write by `client` (its id; `None` in development mode), which may
    /// require profiles configured for that client and resource type. The default is
    /// [`Validator::validate`], every error answered 400.
    fn validate_write(&self, client: Option<&str>, resource: &Value) -> Verdict {
        let _ = client;
        Verdict {
            issues: self.validate(resource),
            unprocessable: false,
        }
    }

    /// `$validate`: the resource against the definitions, its claimed profiles and
    /// `profiles` (the operation's `profile` parameter).
    fn validate_against(&self, resource: &Value, profiles: &[String]) -> Vec<Issue> {
        let _ = profiles;
        self.validate(resource)
    }

    /// [`Validator::validate_write`] with `also` required besides what is configured (the
    /// pipeline's own rules, such as the caregate Consent profile). The default runs the
    /// write check and then `validate_against(also)` unless the structure already failed;
    /// a validator that can take the profiles into one pass should.
    fn validate_write_also(
        &self,
        client: Option<&str>,
        resource: &Value,
        also: &[String],
    ) -> Verdict {
        let mut verdict = self.validate_write(client, resource);
        // A structurally broken resource already answers 400; profiles add nothing.
        if also.is_empty() || verdict.issues.iter().any(|i| i.severity.is_error()) {
            return verdict;
        }
        for issue in self.validate_against(resource, also) {
            if !verdict.issues.contains(&issue) {
                verdict.unprocessable |= issue.severity.is_error();
                verdict.issues.push(issue);
            }
        }
        // Errors first (what refused the resource), then warnings.
        verdict.issues.sort_by_key(|i| !i.severity.is_error());
        verdict
    }
}

/// What [`Validator::validate_write`] found.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub issues: Vec<Issue>,
    /// The resource is well-formed but breaks a profile, an invariant or a business rule:
    /// its errors are answered 422 Unprocessable Entity rather than 400.
    pub unprocessable: bool,
}

/// Adds security labels (`meta.security`) on ingest; the consent work supplies the rules.
pub trait Labeler: Send + Sync {
    fn label(&self, resource: &mut Value);
}

/// No labelling rules configured: resources keep exactly the labels their source sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLabels;

impl Labeler for NoLabels {
    fn label(&self, _resource: &mut Value) {}
}

/// Accepts everything; for tests of the pipeline itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl Validator for AcceptAll {
    fn validate(&self, _resource: &Value) -> Vec<Issue> {
        Vec::new()
    }
}

/// Told about every committed version (subscriptions, webhooks).
pub trait Notifier: Send + Sync {
    /// Called after each committed version; must not block (deliveries happen elsewhere).
    fn notify(&self, committed: &caregate_careplan::Committed<'_>);
}

/// No subscribers yet.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNotifications;

impl Notifier for NoNotifications {
    fn notify(&self, _committed: &caregate_careplan::Committed<'_>) {}
}

/// Ingest of data whose patient has no applicable Consent yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WithoutConsent {
    /// Store it; reads follow the default policy.
    #[default]
    Accept,
    /// Store it visible only to its source, released to others once a Consent permits.
    Hold,
    /// Refuse it (403).
    Reject,
}

/// The caller of one request, as established by the server's authentication.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub actor: Actor,
    /// The client's network address, for AuditEvent.agent.network.
    pub network_address: Option<String>,
    /// The request's id (`X-Request-Id`), recorded in AuditEvents.
    pub request_id: Option<String>,
    /// What the client may do; `None` in local development mode (no client registry).
    pub scopes: Option<Scopes>,
}

impl Caller {
    pub(crate) fn require(&self, resource_type: &str, permission: Permission) -> FhirResult<()> {
        scopes::require(self.scopes.as_ref(), resource_type, permission)
    }
}

/// The stages, each behind its interface.
pub struct Stages {
    pub validator: Arc<dyn Validator>,
    pub labeler: Arc<dyn Labeler>,
    pub consent: Arc<dyn ConsentPolicy>,
    pub linker: Arc<dyn PatientLinker>,
    pub shared_view: Arc<dyn SharedView>,
    pub notifier: Arc<dyn Notifier>,
}

impl Stages {
    /// The given validator with every not-yet-built stage as its named no-op.
    pub fn with_validator(validator: Arc<dyn Validator>) -> Stages {
        Stages {
            validator,
            labeler: Arc::new(NoLabels),
            consent: Arc::new(ConsentNotEnforced),
            linker: Arc::new(NoPatientLinking),
            shared_view: Arc::new(NoSharedView),
            notifier: Arc::new(NoNotifications),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Largest page a search returns (`_count` is capped to it).
    pub max_page_size: usize,
    /// Retries of a write that lost a race without `If-Match`.
    pub write_retries: usize,
    /// Largest number of entries accepted in one Bundle.
    pub max_bundle_entries: usize,
    /// A read of a resource the consent hides answers 403 with the reason instead of a
    /// 404 indistinguishable from a missing resource.
    pub explain_hidden_reads: bool,
    /// Search Bundles say (neutrally, without counts) when consent withheld something.
    pub withheld_notice: bool,
    /// What ingest does with data for a patient who has no Consent on file.
    pub without_consent: WithoutConsent,
    /// Identifier systems trusted to name one person across sources (national or insurer
    /// ids); a shared identifier from one of them links Patients with certainty.
    pub trusted_identifier_systems: Vec<String>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            max_page_size: 1000,
            write_retries: 8,
            max_bundle_entries: 20_000,
            explain_hidden_reads: false,
            withheld_notice: true,
            trusted_identifier_systems: Vec::new(),
            without_consent: WithoutConsent::Accept,
        }
    }
}

pub struct Pipeline {
    store: Arc<dyn Store>,
    search: Arc<SearchRegistry>,
    stages: Stages,
    options: PipelineOptions,
    /// Whether any Consent has been stored: 0 not yet known, 1 none, 2 some. Consent
    /// decisions without any Consent depend only on policy and labels, so reads skip the
    /// per-patient lookups. Only ever moves to "some" within a process; with several
    /// gateway nodes sharing a database this must become a store-side signal.
    consents_exist: std::sync::atomic::AtomicU8,
    /// Open break-the-glass grants: (who, patient) → open until (epoch ms). In memory: a
    /// restart closes them, which errs on the side of privacy.
    emergency_grants: parking_lot::Mutex<std::collections::HashMap<(String, String), i64>>,
    /// Patients' compiled Consents across requests, dropped whenever a Consent is written.
    consent_sets: consent::ConsentSets,
    /// Built shared care-plan views, invalidated by every commit (a shared-view stage).
    views: Arc<careplan::CarePlanCache>,
}

impl Pipeline {
    pub fn new(
        store: Arc<dyn Store>,
        search: Arc<SearchRegistry>,
        mut stages: Stages,
        options: PipelineOptions,
    ) -> Pipeline {
        // Every Consent write is also held to the caregate Consent profile.
        stages.validator = consent::with_consent_profile(stages.validator);
        let views = Arc::new(careplan::new_view_cache());
        stages.shared_view = Arc::new(caregate_careplan::BothViews(
            views.clone(),
            stages.shared_view,
        ));
        Pipeline {
            store,
            search,
            stages,
            options,
            consents_exist: std::sync::atomic::AtomicU8::new(0),
            emergency_grants: parking_lot::Mutex::new(std::collections::HashMap::new()),
            consent_sets: Default::default(),
            views,
        }
    }

    /// Replaces the notification stage (subscriptions).
    pub fn with_notifier(mut self, notifier: Arc<dyn Notifier>) -> Pipeline {
        self.stages.notifier = notifier;
        self
    }

    /// Sets the identifier systems that link Patients across sources with certainty.
    pub fn with_trusted_identifier_systems(mut self, systems: Vec<String>) -> Pipeline {
        self.options.trusted_identifier_systems = systems;
        self
    }

    pub fn search_registry(&self) -> &SearchRegistry {
        &self.search
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// An AuditEvent entry for this caller.
    pub(crate) fn audit_entry(&self, caller: &Caller, subtype: Subtype) -> AuditEntry {
        let mut e = AuditEntry::new(subtype);
        e.client_id = caller.actor.client_id.clone();
        e.organization = caller.actor.organization.clone();
        e.purpose_of_use = caller.actor.purpose_of_use.clone();
        e.network_address = caller.network_address.clone();
        e.request_id = caller.request_id.clone();
        e
    }

    /// The stored form of an audit entry: its compact record (rendered as a BALP
    /// AuditEvent when read) plus the columns audit searches filter on.
    pub fn audit_record(entry: &AuditEntry) -> AuditRecord {
        let (now, recorded) = caregate_core::now_instant();
        // Time-ordered (UUIDv7): the trail's unique index on the id then grows at its end
        // instead of taking a random page per event.
        let id = uuid::Uuid::now_v7().to_string();
        let content = entry.to_stored(&id, &recorded);
        AuditRecord {
            id,
            recorded_ms: now.timestamp_millis(),
            patient: entry.patient.clone(),
            client: entry.client_id.clone(),
            event_type: if entry.security_alert.is_some() {
                "110113"
            } else {
                "rest"
            }
            .to_string(),
            subtype: entry.subtype.code().to_string(),
            outcome: entry.outcome.code().to_string(),
            purpose: entry.purpose_of_use.clone(),
            entities: entry.entities.clone(),
            content,
        }
    }

    /// Records AuditEvents for reads and failures without waiting for durability.
    pub(crate) fn audit_async(&self, entries: &[AuditEntry]) {
        let records: Vec<AuditRecord> = entries.iter().map(Self::audit_record).collect();
        if let Err(e) = self.store.record_audit(records) {
            tracing::error!(target: "caregate::audit", error = %e, "could not queue audit events");
        }
    }

    /// Records an access token issued to a client (SMART Backend Services): who got it,
    /// from where, with which scopes.
    pub fn audit_token_issued(
        &self,
        client_id: &str,
        organization: Option<String>,
        scope: &str,
        network_address: Option<String>,
        request_id: Option<String>,
    ) {
        let mut entry = AuditEntry::new(Subtype::Operation);
        entry.client_id = Some(client_id.to_string());
        entry.organization = organization;
        entry.network_address = network_address;
        entry.request_id = request_id;
        entry.query = Some(format!(
            "POST auth/token grant_type=client_credentials scope={scope}"
        ));
        self.audit_async(&[entry]);
    }

    /// Records a request refused for its credentials (BALP: security alert on login failure).
    pub fn audit_rejected_credentials(
        &self,
        network_address: Option<String>,
        request_id: Option<String>,
        error: &FhirError,
    ) {
        let mut entry = AuditEntry::new(Subtype::Operation);
        entry.network_address = network_address;
        entry.request_id = request_id;
        let reason = error
            .issues
            .first()
            .map(|i| i.diagnostics.clone())
            .unwrap_or_default();
        entry.outcome = Outcome::MinorFailure(reason.clone());
        entry.security_alert = Some(format!("request refused: {reason}"));
        self.audit_async(&[entry]);
    }

    /// Runs one interaction and, when it fails, records a failure AuditEvent (outcome 4
    /// for the client's errors, 8 for the server's).
    pub(crate) fn audited<T>(
        &self,
        caller: &Caller,
        subtype: Subtype,
        what: Option<String>,
        f: impl FnOnce() -> FhirResult<T>,
    ) -> FhirResult<T> {
        let result = f();
        if let Err(e) = &result {
            if matches!(
                subtype,
                Subtype::Create | Subtype::Update | Subtype::Transaction
            ) {
                let resource_type = match (&what, subtype) {
                    (_, Subtype::Transaction) => "Bundle",
                    (Some(w), _) => w.split('/').next().unwrap_or(w),
                    (None, _) => "unknown",
                };
                self.count_rejected(caller, resource_type, e);
            }
            let mut entry = self.audit_entry(caller, subtype);
            let description = e
                .issues
                .first()
                .map(|i| i.diagnostics.clone())
                .unwrap_or_else(|| format!("{:?}", e.kind));
            entry.outcome = if e.kind.http_status() >= 500 {
                Outcome::SeriousFailure(description)
            } else {
                Outcome::MinorFailure(description)
            };
            entry.entities.extend(what);
            self.audit_async(&[entry]);
        }
        result
    }

    /// One AuditEvent per patient the given resources belong to (BALP asks for one event
    /// per patient); resources that belong to no patient share one event.
    /// `touched` holds each resource's reference and the patient it belongs to.
    pub(crate) fn per_patient_entries(
        &self,
        caller: &Caller,
        subtype: Subtype,
        touched: impl IntoIterator<Item = (String, Option<String>)>,
        query: Option<String>,
    ) -> Vec<AuditEntry> {
        let mut by_patient: Vec<(Option<String>, Vec<String>)> = Vec::new();
        for (reference, patient) in touched {
            match by_patient.iter_mut().find(|(p, _)| *p == patient) {
                Some((_, refs)) => refs.push(reference),
                None => by_patient.push((patient, vec![reference])),
            }
        }
        if by_patient.is_empty() {
            by_patient.push((None, Vec::new()));
        }
        by_patient
            .into_iter()
            .map(|(patient, refs)| {
                let mut e = self.audit_entry(caller, subtype);
                e.patient = patient;
                e.entities = refs;
                e.query = query.clone();
                e
            })
            .collect()
    }
}

/// Store failures as FHIR errors. Conflicts are handled by callers before this.
pub(crate) fn store_error(e: StoreError) -> FhirError {
    match e {
        StoreError::Conflict {
            resource_type, id, ..
        } => FhirError::new(
            ErrorKind::Conflict,
            format!("{resource_type}/{id} was changed by another request at the same time; retry"),
        ),
        StoreError::Closed => FhirError::new(ErrorKind::Unavailable, "the store is shutting down"),
        StoreError::Database(msg) => {
            tracing::error!(target: "caregate::store", error = %msg, "storage failure");
            FhirError::internal("storage failure; the request was not applied")
        }
    }
}

/// Checks a path segment names a concrete R4 resource type (404 otherwise, per http.html).
pub fn check_resource_type(resource_type: &str) -> FhirResult<()> {
    if caregate_core::is_resource_type(resource_type) {
        Ok(())
    } else {
        Err(FhirError::not_found(format!(
            "Unknown resource type '{resource_type}'"
        )))
    }
}
