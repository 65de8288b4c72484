//! Notifications: R4 Subscriptions with a rest-hook channel.
//!
//! After every commit the pipeline hands the version to [`SubscriptionNotifier`], which
//! queues it for a delivery thread (the write path never waits on a subscriber). The thread
//! finds the active Subscriptions whose `criteria` match the new version (by running the
//! criteria as a search restricted to that resource), checks that the subscriber — the
//! organisation that created the Subscription, from the audit trail — may see it under the
//! patient's consent, and POSTs to `channel.endpoint` (the resource when `channel.payload`
//! is set, else an empty body), with `channel.header`s. Failed deliveries are retried with
//! back-off; after the last attempt the Subscription's `status` becomes `error`, and the
//! next successful delivery sets it back to `active`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use caregate_careplan::Committed;
use caregate_consent::Actor;
use caregate_pipeline::{Caller, Notifier, Pipeline};
use caregate_store::{AuditQuery, Condition, Filter, Store};
use serde_json::Value;

/// Delays between delivery attempts.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1600),
];

struct Event {
    resource_type: String,
    id: String,
    resource: Value,
}

pub struct SubscriptionNotifier {
    queue: crossbeam_channel::Sender<Event>,
    pipeline: Arc<OnceLock<Weak<Pipeline>>>,
    /// Set when a Subscription changes, so the delivery thread reloads its list instead of
    /// searching for Subscriptions on every commit.
    subscriptions_changed: Arc<AtomicBool>,
    /// Some Subscription may want this commit (false once the delivery thread found none
    /// and none has changed since): without one, commits are not copied and queued.
    listening: Arc<AtomicBool>,
}

impl SubscriptionNotifier {
    /// Starts the delivery thread. The pipeline is attached later with [`Self::attach`]
    /// (it owns this notifier, so it cannot exist yet).
    pub fn start() -> SubscriptionNotifier {
        let (queue, events) = crossbeam_channel::unbounded::<Event>();
        let pipeline: Arc<OnceLock<Weak<Pipeline>>> = Arc::new(OnceLock::new());
        let subscriptions_changed = Arc::new(AtomicBool::new(true));
        let listening = Arc::new(AtomicBool::new(true));
        let (shared, changed, listens) = (
            pipeline.clone(),
            subscriptions_changed.clone(),
            listening.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("caregate-notify".into())
            .spawn(move || deliver_loop(events, shared, changed, listens));
        if let Err(e) = spawned {
            tracing::error!(target: "caregate::notify", error = %e, "cannot start the notification thread");
        }
        SubscriptionNotifier {
            queue,
            pipeline,
            subscriptions_changed,
            listening,
        }
    }

    pub fn attach(&self, pipeline: &Arc<Pipeline>) {
        let _ = self.pipeline.set(Arc::downgrade(pipeline));
    }
}

impl Notifier for SubscriptionNotifier {
    fn notify(&self, committed: &Committed<'_>) {
        // Subscriptions themselves and audit records never trigger notifications.
        if committed.resource_type == "Subscription" {
            self.subscriptions_changed.store(true, Ordering::Release);
            self.listening.store(true, Ordering::Release);
            return;
        }
        if committed.resource_type == "AuditEvent" || !self.listening.load(Ordering::Acquire) {
            return;
        }
        if let Some(resource) = committed.resource {
            let _ = self.queue.send(Event {
                resource_type: committed.resource_type.to_string(),
                id: committed.id.to_string(),
                resource: resource.clone(),
            });
        }
    }
}

fn deliver_loop(
    events: crossbeam_channel::Receiver<Event>,
    pipeline: Arc<OnceLock<Weak<Pipeline>>>,
    subscriptions_changed: Arc<AtomicBool>,
    listening: Arc<AtomicBool>,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(target: "caregate::notify", error = %e, "no runtime for notifications");
            return;
        }
    };
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target: "caregate::notify", error = %e, "no HTTP client for notifications");
            return;
        }
    };
    let mut subscriptions: Vec<(String, Value)> = Vec::new();
    while let Ok(event) = events.recv() {
        let Some(pipeline) = pipeline.get().and_then(Weak::upgrade) else {
            continue;
        };
        if subscriptions_changed.swap(false, Ordering::AcqRel) {
            subscriptions = load_subscriptions(&pipeline);
            listening.store(!subscriptions.is_empty(), Ordering::Release);
            // A Subscription written while loading: keep listening until it is loaded.
            if subscriptions_changed.load(Ordering::Acquire) {
                listening.store(true, Ordering::Release);
            }
        }
        if subscriptions.is_empty() {
            continue;
        }
        for subscription in matching_subscriptions(&pipeline, &subscriptions, &event) {
            runtime.block_on(deliver(&pipeline, &http, &subscription, &event));
        }
    }
}

/// Active (or failing) rest-hook Subscriptions, with their ids.
fn load_subscriptions(pipeline: &Pipeline) -> Vec<(String, Value)> {
    let registry = pipeline.search_registry();
    let Ok(mut parsed) = registry.parse(
        Some("Subscription"),
        &[
            ("status".to_string(), "active,error".to_string()),
            ("type".to_string(), "rest-hook".to_string()),
        ],
        true,
    ) else {
        return Vec::new();
    };
    parsed.query.count = 1000;
    parsed.query.total = false;
    let Ok(page) = pipeline.store().search(&parsed.query) else {
        return Vec::new();
    };
    page.matches
        .into_iter()
        .filter_map(|r| {
            let v = r
                .content
                .as_deref()
                .and_then(|c| serde_json::from_slice::<Value>(c).ok())?;
            Some((r.id, v))
        })
        .collect()
}

/// The Subscriptions whose criteria select this version and whose subscriber may see it.
fn matching_subscriptions(
    pipeline: &Pipeline,
    subscriptions: &[(String, Value)],
    event: &Event,
) -> Vec<Value> {
    let store = pipeline.store();
    let registry = pipeline.search_registry();
    let mut out = Vec::new();
    for (subscription_id, subscription) in subscriptions {
        let criteria = subscription
            .get("criteria")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (ty, query) = criteria.split_once('?').unwrap_or((criteria, ""));
        if ty != event.resource_type {
            continue;
        }
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let Ok(mut q) = registry.parse(Some(ty), &params, true) else {
            continue;
        };
        q.query.filters.push(Filter {
            any_of: vec![Condition::Id(event.id.clone())],
        });
        q.query.count = 1;
        q.query.total = false;
        let selected = store
            .search(&q.query)
            .map(|p| !p.matches.is_empty())
            .unwrap_or(false);
        if selected
            && subscriber_may_see(pipeline, store.as_ref(), subscription_id, &event.resource)
        {
            out.push(subscription.clone());
        }
    }
    out
}

/// The subscriber is the organisation that created the Subscription (from the audit trail);
/// the patient's consent decides whether it may see the resource.
fn subscriber_may_see(
    pipeline: &Pipeline,
    store: &dyn Store,
    subscription_id: &str,
    resource: &Value,
) -> bool {
    let created = store
        .audit_search(&AuditQuery {
            entity: Some(format!("Subscription/{subscription_id}")),
            subtype: Some("create".into()),
            outcome: Some("0".into()),
            count: 1,
            ..AuditQuery::default()
        })
        .ok()
        .and_then(|(events, _)| events.into_iter().next())
        .and_then(|c| caregate_audit::render_stored(&c).ok());
    let organization = created.as_ref().and_then(|e| {
        e.get("agent")?
            .as_array()?
            .iter()
            .filter_map(|a| a.pointer("/who/reference").and_then(Value::as_str))
            .find(|r| r.starts_with("Organization/"))
            .map(str::to_string)
    });
    let client_id = created
        .as_ref()
        .and_then(|e| e.pointer("/agent/0/who/identifier/value"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let caller = Caller {
        actor: Actor {
            client_id,
            organization,
            purpose_of_use: Some("TREAT".into()),
            ..Actor::default()
        },
        ..Caller::default()
    };
    pipeline.may_see(&caller, resource).unwrap_or(false)
}

async fn deliver(pipeline: &Pipeline, http: &reqwest::Client, subscription: &Value, event: &Event) {
    let Some(endpoint) = subscription
        .pointer("/channel/endpoint")
        .and_then(Value::as_str)
    else {
        return;
    };
    let with_payload = subscription
        .pointer("/channel/payload")
        .and_then(Value::as_str)
        .is_some();
    let mut last_error = String::new();
    for (attempt, delay) in std::iter::once(Duration::ZERO).chain(BACKOFF).enumerate() {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
        }
        let mut request = http.post(endpoint);
        for header in subscription
            .pointer("/channel/header")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some((name, value)) = header.as_str().and_then(|h| h.split_once(':')) {
                request = request.header(name.trim(), value.trim());
            }
        }
        if with_payload {
            request = request
                .header("content-type", "application/fhir+json")
                .body(serde_json::to_vec(&event.resource).unwrap_or_default());
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                if subscription.get("status").and_then(Value::as_str) == Some("error") {
                    set_status(pipeline, subscription, "active", None);
                }
                tracing::debug!(target: "caregate::notify", resource_type = %event.resource_type, "notification delivered");
                return;
            }
            Ok(r) => last_error = format!("endpoint answered HTTP {}", r.status().as_u16()),
            Err(e) => last_error = format!("endpoint unreachable: {e}"),
        }
    }
    tracing::warn!(target: "caregate::notify", error = %last_error, "notification failed after retries");
    if subscription.get("status").and_then(Value::as_str) != Some("error") {
        set_status(pipeline, subscription, "error", Some(&last_error));
    }
}

fn set_status(pipeline: &Pipeline, subscription: &Value, status: &str, error: Option<&str>) {
    let Some(id) = subscription.get("id").and_then(Value::as_str) else {
        return;
    };
    let mut updated = subscription.clone();
    updated["status"] = Value::String(status.to_string());
    match (error, updated.as_object_mut()) {
        (Some(e), _) => updated["error"] = Value::String(e.to_string()),
        (None, Some(obj)) => {
            obj.shift_remove("error");
        }
        _ => {}
    }
    if let Err(e) = pipeline.update(&Caller::default(), "Subscription", id, updated, None) {
        tracing::warn!(target: "caregate::notify", error = %e, "could not update the Subscription's status");
    }
}
