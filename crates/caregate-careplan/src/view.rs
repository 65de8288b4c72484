//! The shared care-plan view: one synthesized CarePlan for a person, merged from every
//! contributor's resources, with provenance per item and flags for conflicts and gaps.
//!
//! [`build_view`] is pure: the pipeline gathers the (consent-filtered) resources of the
//! person's linked Patients and passes them in as [`Source`]s. The output is a `collection`
//! Bundle whose bytes depend only on the inputs (never on their order), so the server can
//! derive a strong ETag from it:
//!
//! 1. the synthesized `CarePlan` (status `active`, intent `plan`, subject = first member of
//!    the person; `addresses`, `goal`, `activity`, `careTeam` point at the entries below);
//!    followed by the person as a synthesized `Patient` whose `link`s (`seealso`) name every
//!    linked source Patient and why it belongs ([`LINK_BASIS_EXTENSION`]);
//! 2. `DetectedIssue` flags (conflicts and gaps), computed over every source even with `since`;
//! 3. merged `Condition`s, `Goal`s, activities (`ServiceRequest`, `MedicationRequest`, `Task`,
//!    `Appointment`), one merged `CareTeam`;
//! 4. one `Provenance` per merged item;
//! 5. an `OperationOutcome` "withheld" marker when [`ViewOptions::withheld`] is set.
//!
//! Every item carries one [`ITEM_SOURCE_EXTENSION`] per contributing source resource, with
//! sub-extensions `organization` (valueReference), `system` (valueString),
//! `originalReference` (valueReference), `lastUpdated` (valueInstant) and, when the
//! contributor has one, `status` (valueCode) — so disagreeing statuses stay visible.
//!
//! Entries reference each other with `urn:uuid:` fullUrls; ids are derived (SHA-256) from the
//! original references of the contributors. `DetectedIssue.implicated` uses the original
//! references (`MedicationRequest/rx1`), which stay resolvable on the server and match the
//! `originalReference` sub-extension of the view item.
//!
//! Merge rules: within one resource type, items sharing a coding (system + code) of `code`
//! (Condition, ServiceRequest, Task), `description` (Goal), `medicationCodeableConcept`
//! (MedicationRequest, together with an identical structured dose/frequency so that
//! different dosing is never hidden) or `serviceType` (Appointment) become one item; uncoded
//! items stay separate. Inline `CarePlan.activity.detail`s merge by `detail.code`; plan
//! activities pointing at resources not among the sources are kept as they are. Encounters
//! and source Provenances feed the flags and the generated Provenances; they are not
//! entries of their own.

use crate::disjoint::{find, union};
use std::collections::{BTreeMap, BTreeSet};

use caregate_core::parse_date_range;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::linking::Person;

/// Where an item came from (one per contributing source resource).
pub const ITEM_SOURCE_EXTENSION: &str =
    "https://caregate.example.org/fhir/StructureDefinition/item-source";
/// Why a source Patient belongs to the person (`Patient.link.extension` on the view's
/// synthesized Patient): `manual`, `certain` or `probable`.
pub const LINK_BASIS_EXTENSION: &str =
    "https://caregate.example.org/fhir/StructureDefinition/link-basis";
/// caregate's CodeSystem for care-plan flags (`DetectedIssue.code`).
pub const FLAG_SYSTEM: &str = "https://caregate.example.org/fhir/CodeSystem/care-plan-flag";
/// v3 ActCode (`DUPTHPY`), used alongside the caregate code where it applies.
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// Diagnostics of the neutral withheld marker.
pub const WITHHELD_TEXT: &str =
    "Some information was withheld in accordance with the patient's consent";

/// Flag codes in [`FLAG_SYSTEM`].
pub mod flag {
    pub const MEDICATION_DOSE_CONFLICT: &str = "medication-dose-conflict";
    pub const STATUS_CONFLICT: &str = "status-conflict";
    pub const GOAL_WITHOUT_ACTIVITY: &str = "goal-without-activity";
    pub const OVERDUE_ACTIVITY: &str = "overdue-activity";
    pub const DISCHARGE_WITHOUT_FOLLOW_UP: &str = "discharge-without-follow-up";
    pub const REFERRAL_WITHOUT_RESPONSE: &str = "referral-without-response";
}

/// Days after an inpatient discharge within which a follow-up must be authored or scheduled.
pub const FOLLOW_UP_DAYS: i64 = 7;
/// Discharges older than this (relative to `now`) are history, not gaps.
pub const DISCHARGE_LOOKBACK_DAYS: i64 = 90;
/// Days a referral may stay active/draft without any Task or Encounter responding to it.
pub const REFERRAL_RESPONSE_DAYS: i64 = 14;

const DAY_MS: i64 = 86_400_000;

/// One resource of the person, as visible to the reader.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub resource: &'a Value,
    /// The contributing organisation: a reference (`Organization/x`) or a name.
    pub source_org: Option<String>,
    /// The source system (client id or endpoint).
    pub source_system: Option<String>,
    /// The stored version's `meta.lastUpdated` (FHIR instant).
    pub last_updated: String,
}

/// How to build the view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewOptions {
    /// The instant the view is computed for (overdue and response-time rules).
    pub now: String,
    /// `_since`: keep only items with a contributor updated at or after this instant.
    pub since: Option<String>,
    /// Add the neutral "withheld" OperationOutcome entry.
    pub withheld: bool,
}

struct Entry<'a> {
    r: &'a Value,
    rtype: &'a str,
    reference: String,
    org: Option<&'a str>,
    system: Option<&'a str>,
    last_updated: &'a str,
    updated: Option<i64>,
}

impl Entry<'_> {
    fn source_key(&self) -> (Option<&str>, Option<&str>) {
        (self.org, self.system)
    }
}

/// A merged view item: entries (indices, ascending) of one resource type.
struct Item {
    rtype: String,
    members: Vec<usize>,
    id: String,
    included: bool,
}

/// An activity written inline in (or only referenced from) a source CarePlan.
struct PlanActivity<'a> {
    plan: usize,
    value: &'a Value,
}

struct Flag {
    code: &'static str,
    display: &'static str,
    act_code: Option<(&'static str, &'static str)>,
    severity: &'static str,
    implicated: Vec<String>,
    detail: String,
}

const ACTIVITY_TYPES: [&str; 4] = ["ServiceRequest", "MedicationRequest", "Task", "Appointment"];

/// Builds the shared care-plan view of `person` from `resources` (see the module docs).
pub fn build_view(person: &Person, resources: &[Source<'_>], opts: &ViewOptions) -> Value {
    let entries = collect_entries(resources);
    let now = parse_date_range(&opts.now).map(|r| r.start);
    let since = opts
        .since
        .as_deref()
        .and_then(parse_date_range)
        .map(|r| r.start);
    let subject = person.subject().unwrap_or_default().to_string();

    let of_type = |t: &str| -> Vec<usize> {
        entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.rtype == t)
            .map(|(i, _)| i)
            .collect()
    };

    // Merge groups.
    let mut items: Vec<Item> = Vec::new();
    let push_groups = |rtype: &str, groups: Vec<Vec<usize>>, items: &mut Vec<Item>| {
        for members in groups {
            let refs: Vec<&str> = members
                .iter()
                .map(|&m| entries[m].reference.as_str())
                .collect();
            let included = since.is_none_or(|s| {
                members
                    .iter()
                    .any(|&m| entries[m].updated.is_none_or(|u| u >= s))
            });
            items.push(Item {
                rtype: rtype.to_string(),
                id: hash_id("item", &refs),
                members,
                included,
            });
        }
    };
    for (rtype, field) in [
        ("Condition", "code"),
        ("Goal", "description"),
        ("ServiceRequest", "code"),
        ("Task", "code"),
        ("Appointment", "serviceType"),
    ] {
        let groups = group(&of_type(rtype), |i| codings(entries[i].r.get(field)));
        push_groups(rtype, groups, &mut items);
    }
    let groups = group(&of_type("MedicationRequest"), |i| {
        let sig = dose_signature(entries[i].r);
        codings(entries[i].r.get("medicationCodeableConcept"))
            .into_iter()
            .map(|c| format!("{c}#{sig}"))
            .collect()
    });
    push_groups("MedicationRequest", groups, &mut items);
    let teams = of_type("CareTeam");
    if !teams.is_empty() {
        push_groups("CareTeam", vec![teams], &mut items);
    }

    // original reference → urn of the included item holding it.
    let mut urns: BTreeMap<String, String> = BTreeMap::new();
    for item in items.iter().filter(|i| i.included) {
        for &m in &item.members {
            urns.insert(entries[m].reference.clone(), urn(&item.id));
        }
    }

    // Plan activities that are not (resolvable) references to source resources.
    let known: BTreeSet<&str> = entries.iter().map(|e| e.reference.as_str()).collect();
    let plans = of_type("CarePlan");
    let mut inline: Vec<PlanActivity<'_>> = Vec::new();
    let mut unresolved: Vec<PlanActivity<'_>> = Vec::new();
    // Plan activities pointing at source resources: their outcomes and progress notes.
    let mut resolved: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for &p in &plans {
        for act in array(entries[p].r, "activity") {
            let target = act
                .get("reference")
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str)
                .map(local_ref);
            if let Some(t) = target.as_ref().filter(|t| known.contains(t.as_str())) {
                resolved.entry(t.clone()).or_default().push(act);
                continue;
            }
            let pa = PlanActivity {
                plan: p,
                value: act,
            };
            if target.is_none() && act.get("detail").is_some() {
                inline.push(pa);
            } else {
                unresolved.push(pa);
            }
        }
    }
    let positions: Vec<usize> = (0..inline.len()).collect();
    let inline_groups = group(&positions, |i| {
        codings(inline[i].value.get("detail").and_then(|d| d.get("code")))
    });

    let flags = compute_flags(&entries, &items, &inline, now);

    // Assemble.
    let mut out: Vec<Value> = Vec::new();
    let plan_id = hash_id(
        "careplan",
        &person
            .members
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let mut plan = Map::new();
    plan.insert("resourceType".into(), json!("CarePlan"));
    plan.insert("id".into(), json!(plan_id));
    let plan_sources: Vec<Value> = plans
        .iter()
        .map(|&p| source_extension(&entries[p], &entries[p].reference, status_of(entries[p].r)))
        .collect();
    if !plan_sources.is_empty() {
        plan.insert("extension".into(), Value::Array(plan_sources));
    }
    plan.insert("status".into(), json!("active"));
    plan.insert("intent".into(), json!("plan"));
    plan.insert("title".into(), json!("Shared care plan"));
    if !subject.is_empty() {
        plan.insert("subject".into(), json!({ "reference": subject }));
    }
    let refs_of = |rtypes: &[&str]| -> Vec<Value> {
        rtypes
            .iter()
            .flat_map(|t| items.iter().filter(move |i| i.included && i.rtype == *t))
            .map(|i| {
                let mut r = Map::new();
                r.insert("reference".into(), json!(urn(&i.id)));
                if let Some(d) = item_display(&entries, i) {
                    r.insert("display".into(), json!(d));
                }
                Value::Object(r)
            })
            .collect()
    };
    let team_refs = refs_of(&["CareTeam"]);
    if !team_refs.is_empty() {
        plan.insert("careTeam".into(), Value::Array(team_refs));
    }
    let addresses = refs_of(&["Condition"]);
    if !addresses.is_empty() {
        plan.insert("addresses".into(), Value::Array(addresses));
    }
    let goals = refs_of(&["Goal"]);
    if !goals.is_empty() {
        plan.insert("goal".into(), Value::Array(goals));
    }
    let mut activities: Vec<Value> = Vec::new();
    for t in ACTIVITY_TYPES {
        for item in items.iter().filter(|i| i.included && i.rtype == t) {
            let mut reference = Map::new();
            reference.insert("reference".into(), json!(urn(&item.id)));
            if let Some(d) = item_display(&entries, item) {
                reference.insert("display".into(), json!(d));
            }
            let mut act = Map::new();
            // What the source plans recorded about this activity is kept, merged.
            for key in ["outcomeCodeableConcept", "outcomeReference", "progress"] {
                let mut values: Vec<Value> = Vec::new();
                for &m in &item.members {
                    for pa in resolved.get(&entries[m].reference).into_iter().flatten() {
                        for v in array(pa, key) {
                            let mut v = v.clone();
                            rewrite_references(&mut v, &urns);
                            if !values.contains(&v) {
                                values.push(v);
                            }
                        }
                    }
                }
                if !values.is_empty() {
                    act.insert(key.into(), Value::Array(values));
                }
            }
            act.insert("reference".into(), Value::Object(reference));
            activities.push(Value::Object(act));
        }
    }
    for g in &inline_groups {
        let included = since.is_none_or(|s| {
            g.iter()
                .any(|&i| entries[inline[i].plan].updated.is_none_or(|u| u >= s))
        });
        if !included {
            continue;
        }
        // Representative: the most recently updated plan's activity.
        let rep = representative(g.iter().map(|&i| (i, entries[inline[i].plan].updated)));
        let mut act = inline[rep].value.clone();
        rewrite_references(&mut act, &urns);
        let exts = g
            .iter()
            .map(|&i| {
                let e = &entries[inline[i].plan];
                let status = inline[i]
                    .value
                    .get("detail")
                    .and_then(|d| d.get("status"))
                    .and_then(Value::as_str);
                source_extension(e, &e.reference, status)
            })
            .collect();
        set_sources(&mut act, exts);
        activities.push(act);
    }
    for pa in &unresolved {
        let e = &entries[pa.plan];
        if since.is_some_and(|s| e.updated.is_some_and(|u| u < s)) {
            continue;
        }
        let mut act = pa.value.clone();
        rewrite_references(&mut act, &urns);
        set_sources(&mut act, vec![source_extension(e, &e.reference, None)]);
        activities.push(act);
    }
    if !activities.is_empty() {
        plan.insert("activity".into(), Value::Array(activities));
    }
    out.push(Value::Object(plan));
    if !person.members.is_empty() {
        out.push(person_patient(person));
    }

    for f in &flags {
        out.push(detected_issue(f, &subject));
    }
    let provenance_agents = provenance_agents(&entries);
    let mut provenances = Vec::new();
    for t in ["Condition", "Goal"]
        .iter()
        .chain(ACTIVITY_TYPES.iter())
        .chain(["CareTeam"].iter())
    {
        for item in items.iter().filter(|i| i.included && i.rtype == *t) {
            let resource = if item.rtype == "CareTeam" {
                merged_care_team(&entries, item, &subject, &urns)
            } else {
                merged_resource(&entries, item, &urns)
            };
            out.push(resource);
            provenances.push(provenance(&entries, item, &provenance_agents));
        }
    }
    out.extend(provenances);
    if opts.withheld {
        out.push(json!({
            "resourceType": "OperationOutcome",
            "id": hash_id("withheld", &[subject.as_str()]),
            "issue": [{
                "severity": "information",
                "code": "suppressed",
                "diagnostics": WITHHELD_TEXT,
            }],
        }));
    }

    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert(
        "id".into(),
        json!(hash_id(
            "bundle",
            &person
                .members
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        )),
    );
    if let Some(latest) = entries
        .iter()
        .max_by_key(|e| (e.updated, e.last_updated))
        .map(|e| e.last_updated)
    {
        bundle.insert("meta".into(), json!({ "lastUpdated": latest }));
    }
    bundle.insert("type".into(), json!("collection"));
    bundle.insert(
        "entry".into(),
        Value::Array(
            out.into_iter()
                .map(|r| {
                    let full = urn(r.get("id").and_then(Value::as_str).unwrap_or_default());
                    obj([("fullUrl", Value::String(full)), ("resource", r)])
                })
                .collect(),
        ),
    );
    Value::Object(bundle)
}

/// A strong ETag for a view built by [`build_view`]: the quoted SHA-256 (hex) of its compact
/// JSON serialisation. Equal inputs give equal views and so equal ETags.
pub fn view_etag(view: &Value) -> String {
    etag_of_json(view.to_string().as_bytes())
}

/// [`view_etag`] from the view's compact JSON when it is at hand (serialising a large view
/// costs more than hashing it, so a caller that needs the bytes anyway serialises once).
pub fn etag_of_json(json: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(json);
    format!("\"{}\"", hex::encode(h.finalize()))
}

fn collect_entries<'a>(resources: &'a [Source<'_>]) -> Vec<Entry<'a>> {
    let mut entries: Vec<Entry<'a>> = resources
        .iter()
        .filter_map(|s| {
            let r: &'a Value = s.resource;
            let rtype = r.get("resourceType").and_then(Value::as_str)?;
            let reference = match r.get("id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => format!("{rtype}/{id}"),
                // Stored resources always have ids; hash the content otherwise.
                _ => format!("{rtype}/{}", hash_id("anonymous", &[&r.to_string()])),
            };
            Some(Entry {
                r,
                rtype,
                reference,
                org: s.source_org.as_deref(),
                system: s.source_system.as_deref(),
                last_updated: s.last_updated.as_str(),
                updated: parse_date_range(&s.last_updated).map(|d| d.start),
            })
        })
        .collect();
    entries.sort_by(|a, b| {
        a.reference
            .cmp(&b.reference)
            .then(b.updated.cmp(&a.updated))
            .then(a.org.cmp(&b.org))
            .then(a.system.cmp(&b.system))
    });
    // The same stored resource given twice counts once (the newest copy).
    entries.dedup_by(|later, first| later.reference == first.reference);
    entries
}

/// Groups `indices` so that any two sharing a key end up together; keyless ones stay alone.
/// Groups list members ascending and are ordered by their first member.
fn group(indices: &[usize], keys: impl Fn(usize) -> Vec<String>) -> Vec<Vec<usize>> {
    let n = indices.len();
    let mut parent: Vec<usize> = (0..n).collect();
    let mut first: BTreeMap<String, usize> = BTreeMap::new();
    for (pos, &i) in indices.iter().enumerate() {
        for k in keys(i) {
            match first.get(&k) {
                Some(&other) => union(&mut parent, other, pos),
                None => {
                    first.insert(k, pos);
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (pos, &index) in indices.iter().enumerate() {
        let root = find(&mut parent, pos);
        groups.entry(root).or_default().push(index);
    }
    let mut out: Vec<Vec<usize>> = groups
        .into_values()
        .map(|mut g| {
            g.sort_unstable();
            g
        })
        .collect();
    out.sort();
    out
}

/// `system|code` of every coding of a CodeableConcept (or an array of them).
fn codings(cc: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(cc) = cc else { return out };
    let concepts: Vec<&Value> = match cc.as_array() {
        Some(a) => a.iter().collect(),
        None => vec![cc],
    };
    for c in concepts {
        for coding in array(c, "coding") {
            let (Some(system), Some(code)) = (str_at(coding, "system"), str_at(coding, "code"))
            else {
                continue;
            };
            // Task.code from the task-code system says what the task does, not what it is about.
            if system == "http://hl7.org/fhir/CodeSystem/task-code" {
                continue;
            }
            out.push(format!("{system}|{code}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Structured dose and frequency of every dosage instruction; empty when none is structured.
fn dose_signature(mr: &Value) -> String {
    let mut parts = Vec::new();
    for d in array(mr, "dosageInstruction") {
        let mut p = Vec::new();
        for dr in array(d, "doseAndRate") {
            if let Some(q) = dr.get("doseQuantity") {
                p.push(format!(
                    "dose={}{}",
                    number(q.get("value")).unwrap_or_default(),
                    str_at(q, "code")
                        .or_else(|| str_at(q, "unit"))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(rep) = d.get("timing").and_then(|t| t.get("repeat")) {
            for key in ["frequency", "period"] {
                if let Some(n) = number(rep.get(key)) {
                    p.push(format!("{key}={n}"));
                }
            }
            if let Some(u) = str_at(rep, "periodUnit") {
                p.push(format!("periodUnit={u}"));
            }
        }
        if !p.is_empty() {
            parts.push(p.join(","));
        }
    }
    parts.join(";")
}

fn number(v: Option<&Value>) -> Option<String> {
    let v = v?;
    let f = v
        .as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))?;
    Some(format!("{f}"))
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// `Type/id` of a relative or absolute reference (history suffix removed). Absolute
/// references keep their base so that another server's `Goal/1` is not ours.
fn local_ref(reference: &str) -> String {
    let r = match reference.find("/_history/") {
        Some(at) => &reference[..at],
        None => reference,
    };
    r.to_string()
}

fn ref_of(v: &Value) -> Option<String> {
    v.get("reference").and_then(Value::as_str).map(local_ref)
}

fn urn(id: &str) -> String {
    format!("urn:uuid:{id}")
}

/// A UUID-shaped id from SHA-256 over `kind` and `parts`.
fn hash_id(kind: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

fn status_of(r: &Value) -> Option<&str> {
    str_at(r, "status")
        .or_else(|| str_at(r, "lifecycleStatus"))
        .or_else(|| {
            r.get("clinicalStatus")
                .map(|c| array(c, "coding"))
                .and_then(|c| c.first())
                .and_then(|c| str_at(c, "code"))
        })
}

/// An object from owned values (the `json!` macro would deep-copy interpolated `Value`s
/// through the serializer).
fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Map::with_capacity(N);
    for (k, v) in pairs {
        m.insert(k.to_string(), v);
    }
    Value::Object(m)
}

fn org_reference(org: &str) -> Value {
    let looks_like_ref = org.split_once('/').is_some_and(|(t, id)| {
        t.starts_with(|c: char| c.is_ascii_uppercase())
            && t.chars().all(|c| c.is_ascii_alphabetic())
            && caregate_core::is_valid_id(id)
    });
    if looks_like_ref {
        json!({ "reference": org })
    } else {
        json!({ "display": org })
    }
}

fn source_extension(e: &Entry<'_>, original: &str, status: Option<&str>) -> Value {
    let mut ext = Vec::new();
    if let Some(org) = e.org {
        ext.push(obj([
            ("url", json!("organization")),
            ("valueReference", org_reference(org)),
        ]));
    }
    if let Some(system) = e.system {
        ext.push(json!({ "url": "system", "valueString": system }));
    }
    ext.push(json!({ "url": "originalReference", "valueReference": { "reference": original } }));
    ext.push(json!({ "url": "lastUpdated", "valueInstant": e.last_updated }));
    if let Some(s) = status {
        ext.push(json!({ "url": "status", "valueCode": s }));
    }
    obj([
        ("url", json!(ITEM_SOURCE_EXTENSION)),
        ("extension", Value::Array(ext)),
    ])
}

/// Replaces any item-source extensions on `v` with `exts`, keeping other extensions.
fn set_sources(v: &mut Value, exts: Vec<Value>) {
    let Some(obj) = v.as_object_mut() else { return };
    let mut all: Vec<Value> = obj
        .get("extension")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|e| str_at(e, "url") != Some(ITEM_SOURCE_EXTENSION))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    all.extend(exts);
    obj.insert("extension".into(), Value::Array(all));
}

/// Points references at view items where the target is one.
fn rewrite_references(v: &mut Value, urns: &BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "reference" {
                    if let Some(target) = child.as_str().and_then(|s| urns.get(&local_ref(s))) {
                        *child = json!(target);
                    }
                } else {
                    rewrite_references(child, urns);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_references(c, urns)),
        _ => {}
    }
}

/// The newest member (ties: the first); `members` yields `(key, updated)`.
fn representative(members: impl Iterator<Item = (usize, Option<i64>)>) -> usize {
    let mut best: Option<(usize, Option<i64>)> = None;
    for (k, u) in members {
        match best {
            Some((_, bu)) if bu >= u => {}
            _ => best = Some((k, u)),
        }
    }
    best.map(|(k, _)| k).unwrap_or_default()
}

fn concept_display(cc: Option<&Value>) -> Option<String> {
    let cc = cc?;
    let cc = cc.as_array().and_then(|a| a.first()).unwrap_or(cc);
    str_at(cc, "text")
        .or_else(|| {
            array(cc, "coding")
                .iter()
                .find_map(|c| str_at(c, "display"))
        })
        .map(str::to_string)
}

fn resource_display(r: &Value) -> Option<String> {
    let field = match str_at(r, "resourceType")? {
        "Goal" => "description",
        "MedicationRequest" => "medicationCodeableConcept",
        "Appointment" => "serviceType",
        "CareTeam" => return str_at(r, "name").map(str::to_string),
        _ => "code",
    };
    concept_display(r.get(field)).or_else(|| str_at(r, "description").map(str::to_string))
}

fn item_display(entries: &[Entry<'_>], item: &Item) -> Option<String> {
    if item.rtype == "CareTeam" {
        return Some("Shared care team".into());
    }
    let rep = representative(item.members.iter().map(|&m| (m, entries[m].updated)));
    resource_display(entries[rep].r)
}

fn merged_resource(entries: &[Entry<'_>], item: &Item, urns: &BTreeMap<String, String>) -> Value {
    let rep = representative(item.members.iter().map(|&m| (m, entries[m].updated)));
    let mut r = entries[rep].r.clone();
    rewrite_references(&mut r, urns);
    if let Some(obj) = r.as_object_mut() {
        obj.insert("id".into(), json!(item.id));
        let mut meta = obj
            .get("meta")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        meta.remove("versionId");
        meta.remove("source");
        meta.insert("lastUpdated".into(), json!(entries[rep].last_updated));
        obj.insert("meta".into(), Value::Object(meta));
    }
    let exts = item
        .members
        .iter()
        .map(|&m| source_extension(&entries[m], &entries[m].reference, status_of(entries[m].r)))
        .collect();
    set_sources(&mut r, exts);
    r
}

/// One CareTeam whose participants are the de-duplicated members of every source CareTeam.
fn merged_care_team(
    entries: &[Entry<'_>],
    item: &Item,
    subject: &str,
    urns: &BTreeMap<String, String>,
) -> Value {
    struct Part<'a> {
        team: usize,
        value: &'a Value,
        contained: Option<&'a Value>,
    }
    let mut parts: Vec<Part<'_>> = Vec::new();
    for &t in &item.members {
        let team = entries[t].r;
        for p in array(team, "participant") {
            let member_ref = p.get("member").and_then(|m| str_at(m, "reference"));
            let contained = member_ref.and_then(|r| r.strip_prefix('#')).and_then(|id| {
                array(team, "contained")
                    .iter()
                    .find(|c| str_at(c, "id") == Some(id))
            });
            parts.push(Part {
                team: t,
                value: p,
                contained,
            });
        }
    }
    let positions: Vec<usize> = (0..parts.len()).collect();
    let groups = group(&positions, |i| {
        let p = &parts[i];
        let member = p.value.get("member");
        let mut keys = Vec::new();
        if let Some(r) = member
            .and_then(|m| str_at(m, "reference"))
            .filter(|r| !r.starts_with('#'))
        {
            keys.push(format!("ref|{}", local_ref(r)));
        }
        if let Some(ident) = member.and_then(|m| m.get("identifier")) {
            if let (Some(s), Some(v)) = (str_at(ident, "system"), str_at(ident, "value")) {
                keys.push(format!("id|{s}|{v}"));
            }
        }
        let name = member
            .and_then(|m| str_at(m, "display"))
            .map(crate::linking::normalize_name)
            .or_else(|| p.contained.and_then(contained_name))
            .unwrap_or_default();
        if !name.is_empty() {
            for t in p.contained.map(|c| array(c, "telecom")).unwrap_or(&[]) {
                if let Some(v) = str_at(t, "value") {
                    keys.push(format!("nt|{name}|{}", v.trim().to_lowercase()));
                }
            }
        }
        keys
    });
    let mut participants = Vec::new();
    let mut contained_out = Vec::new();
    for g in &groups {
        let Some(&rep) = g.first() else { continue };
        let mut p = parts[rep].value.clone();
        rewrite_references(&mut p, urns);
        // Roles: the union over the group, in first-seen order.
        let mut roles: Vec<Value> = Vec::new();
        for &i in g {
            for role in array(parts[i].value, "role") {
                if !roles.contains(role) {
                    roles.push(role.clone());
                }
            }
        }
        if let Some(obj) = p.as_object_mut() {
            if !roles.is_empty() {
                obj.insert("role".into(), Value::Array(roles));
            }
            if let Some(c) = parts[rep].contained {
                let cid = format!("m{}", contained_out.len() + 1);
                let mut c = c.clone();
                if let Some(co) = c.as_object_mut() {
                    co.insert("id".into(), json!(cid));
                }
                contained_out.push(c);
                if let Some(m) = obj.get_mut("member").and_then(Value::as_object_mut) {
                    m.insert("reference".into(), json!(format!("#{cid}")));
                }
            }
        }
        let mut seen = BTreeSet::new();
        let exts = g
            .iter()
            .filter(|&&i| seen.insert(parts[i].team))
            .map(|&i| {
                let e = &entries[parts[i].team];
                source_extension(e, &e.reference, None)
            })
            .collect();
        set_sources(&mut p, exts);
        participants.push(p);
    }
    let mut team = Map::new();
    team.insert("resourceType".into(), json!("CareTeam"));
    team.insert("id".into(), json!(item.id));
    if let Some(latest) = item
        .members
        .iter()
        .max_by_key(|&&m| entries[m].updated)
        .map(|&m| entries[m].last_updated)
    {
        team.insert("meta".into(), json!({ "lastUpdated": latest }));
    }
    if !contained_out.is_empty() {
        team.insert("contained".into(), Value::Array(contained_out));
    }
    team.insert(
        "extension".into(),
        Value::Array(
            item.members
                .iter()
                .map(|&m| {
                    source_extension(&entries[m], &entries[m].reference, status_of(entries[m].r))
                })
                .collect(),
        ),
    );
    team.insert("status".into(), json!("active"));
    team.insert("name".into(), json!("Shared care team"));
    if !subject.is_empty() {
        team.insert("subject".into(), json!({ "reference": subject }));
    }
    if !participants.is_empty() {
        team.insert("participant".into(), Value::Array(participants));
    }
    Value::Object(team)
}

fn contained_name(c: &Value) -> Option<String> {
    let name = array(c, "name").first()?;
    let text = match str_at(name, "text") {
        Some(t) => t.to_string(),
        None => {
            let mut words: Vec<&str> = array(name, "given")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            words.extend(str_at(name, "family"));
            words.join(" ")
        }
    };
    let n = crate::linking::normalize_name(&text);
    (!n.is_empty()).then_some(n)
}

/// Agents of source Provenances, by the (local) reference of each target.
fn provenance_agents(entries: &[Entry<'_>]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.rtype == "Provenance") {
        for target in array(e.r, "target") {
            if let Some(t) = ref_of(target) {
                let list = out.entry(t).or_default();
                for agent in array(e.r, "agent") {
                    if !list.contains(agent) {
                        list.push(agent.clone());
                    }
                }
            }
        }
    }
    out
}

fn provenance(entries: &[Entry<'_>], item: &Item, agents: &BTreeMap<String, Vec<Value>>) -> Value {
    let latest = item
        .members
        .iter()
        .max_by_key(|&&m| entries[m].updated)
        .map(|&m| entries[m].last_updated)
        .unwrap_or_default();
    let mut agent_list: Vec<Value> = Vec::new();
    for &m in &item.members {
        let e = &entries[m];
        let who = match (e.org, e.system) {
            (Some(org), _) => org_reference(org),
            (None, Some(system)) => json!({ "display": system }),
            (None, None) => json!({ "display": "unknown source" }),
        };
        let a = obj([
            (
                "type",
                json!({ "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "author",
                }]}),
            ),
            ("who", who),
        ]);
        if !agent_list.contains(&a) {
            agent_list.push(a);
        }
        for a in agents.get(&e.reference).into_iter().flatten() {
            if !agent_list.contains(a) {
                agent_list.push(a.clone());
            }
        }
    }
    let entity = item
        .members
        .iter()
        .map(|&m| json!({ "role": "source", "what": { "reference": entries[m].reference } }))
        .collect();
    obj([
        ("resourceType", json!("Provenance")),
        ("id", json!(hash_id("provenance", &[item.id.as_str()]))),
        ("target", json!([{ "reference": urn(&item.id) }])),
        ("recorded", json!(latest)),
        (
            "activity",
            json!({ "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                "code": "CREATE",
            }]}),
        ),
        ("agent", Value::Array(agent_list)),
        ("entity", Value::Array(entity)),
    ])
}

/// The person as a synthesized `Patient`: one `link` (type `seealso`: in use and holding
/// data about this person) per linked source Patient, each with a [`LINK_BASIS_EXTENSION`]
/// saying why it belongs (`manual`, `certain`, `probable`; none for a lone Patient). The
/// sources' own Patients are never changed; this entry exists only in the view.
fn person_patient(person: &Person) -> Value {
    let links: Vec<Value> = person
        .members
        .iter()
        .map(|m| {
            let basis = person
                .links
                .iter()
                .filter(|(a, b, l)| {
                    l.grade.joins()
                        && (a == m || b == m)
                        && person.members.contains(a)
                        && person.members.contains(b)
                })
                .map(|(_, _, l)| {
                    if l.reasons.first().map(String::as_str)
                        == Some(crate::linking::MANUAL_LINK_REASON)
                    {
                        (0, "manual")
                    } else {
                        (1 + l.grade as u8, l.grade.code())
                    }
                })
                .min()
                .map(|(_, code)| code);
            let mut link = Map::new();
            if let Some(code) = basis {
                link.insert(
                    "extension".into(),
                    json!([{ "url": LINK_BASIS_EXTENSION, "valueCode": code }]),
                );
            }
            link.insert("other".into(), json!({ "reference": m }));
            link.insert("type".into(), json!("seealso"));
            Value::Object(link)
        })
        .collect();
    let members: Vec<&str> = person.members.iter().map(String::as_str).collect();
    obj([
        ("resourceType", json!("Patient")),
        ("id", json!(hash_id("person", &members))),
        ("active", json!(true)),
        ("link", Value::Array(links)),
    ])
}

fn detected_issue(f: &Flag, subject: &str) -> Value {
    let mut coding = Vec::new();
    if let Some((code, display)) = f.act_code {
        coding.push(json!({ "system": ACT_CODE_SYSTEM, "code": code, "display": display }));
    }
    coding.push(json!({ "system": FLAG_SYSTEM, "code": f.code, "display": f.display }));
    let mut id_parts: Vec<&str> = vec![f.code];
    id_parts.extend(f.implicated.iter().map(String::as_str));
    let mut di = Map::new();
    di.insert("resourceType".into(), json!("DetectedIssue"));
    di.insert("id".into(), json!(hash_id("flag", &id_parts)));
    di.insert("status".into(), json!("preliminary"));
    di.insert(
        "code".into(),
        obj([("coding", Value::Array(coding)), ("text", json!(f.display))]),
    );
    di.insert("severity".into(), json!(f.severity));
    if !subject.is_empty() {
        di.insert("patient".into(), json!({ "reference": subject }));
    }
    di.insert(
        "implicated".into(),
        Value::Array(
            f.implicated
                .iter()
                .map(|r| json!({ "reference": r }))
                .collect(),
        ),
    );
    di.insert("detail".into(), json!(f.detail));
    Value::Object(di)
}

// ---------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------

const ACTIVE_STATUSES: [&str; 14] = [
    "active",
    "in-progress",
    "scheduled",
    "not-started",
    "on-hold",
    "requested",
    "received",
    "accepted",
    "ready",
    "booked",
    "pending",
    "proposed",
    "arrived",
    "checked-in",
];
const STOPPED_STATUSES: [&str; 4] = ["stopped", "revoked", "entered-in-error", "cancelled"];
const OPEN_STATUSES: [&str; 15] = [
    "draft",
    "active",
    "on-hold",
    "requested",
    "received",
    "accepted",
    "ready",
    "in-progress",
    "proposed",
    "pending",
    "booked",
    "arrived",
    "checked-in",
    "not-started",
    "scheduled",
];

fn compute_flags(
    entries: &[Entry<'_>],
    items: &[Item],
    inline: &[PlanActivity<'_>],
    now: Option<i64>,
) -> Vec<Flag> {
    let mut flags = Vec::new();
    medication_conflicts(entries, &mut flags);
    status_conflicts(entries, inline, &mut flags);
    goals_without_activity(entries, items, &mut flags);
    if let Some(now) = now {
        overdue_activities(entries, inline, now, &mut flags);
        discharges_without_follow_up(entries, inline, now, &mut flags);
        referrals_without_response(entries, now, &mut flags);
    }
    for f in &mut flags {
        f.implicated.sort();
        f.implicated.dedup();
    }
    flags.sort_by(|a, b| a.code.cmp(b.code).then(a.implicated.cmp(&b.implicated)));
    flags.dedup_by(|a, b| a.code == b.code && a.implicated == b.implicated);
    flags
}

fn medication_conflicts(entries: &[Entry<'_>], flags: &mut Vec<Flag>) {
    let mut by_code: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.rtype != "MedicationRequest"
            || !matches!(status_of(e.r), Some("active" | "draft" | "on-hold"))
        {
            continue;
        }
        for c in codings(e.r.get("medicationCodeableConcept")) {
            by_code.entry(c).or_default().push(i);
        }
    }
    for (code, list) in by_code {
        let mut implicated = BTreeSet::new();
        for (x, &a) in list.iter().enumerate() {
            for &b in &list[x + 1..] {
                let (sa, sb) = (dose_signature(entries[a].r), dose_signature(entries[b].r));
                if sa.is_empty() || sb.is_empty() || sa == sb {
                    continue;
                }
                if requester(&entries[a]) != requester(&entries[b]) {
                    implicated.insert(a);
                    implicated.insert(b);
                }
            }
        }
        if implicated.is_empty() {
            continue;
        }
        let name = implicated
            .iter()
            .find_map(|&i| concept_display(entries[i].r.get("medicationCodeableConcept")))
            .unwrap_or_else(|| code.clone());
        let doses: Vec<String> = implicated
            .iter()
            .map(|&i| {
                format!(
                    "{} ({})",
                    dose_signature(entries[i].r),
                    requester(&entries[i])
                )
            })
            .collect();
        flags.push(Flag {
            code: flag::MEDICATION_DOSE_CONFLICT,
            display: "Same medication ordered with different dosing",
            act_code: Some(("DUPTHPY", "Duplicate Therapy Alert")),
            severity: "high",
            implicated: implicated
                .iter()
                .map(|&i| entries[i].reference.clone())
                .collect(),
            detail: format!(
                "{name} is ordered by different prescribers with different dose or frequency: {}.",
                doses.join("; ")
            ),
        });
    }
}

/// Who ordered: the requester reference (or display), else the source.
fn requester(e: &Entry<'_>) -> String {
    e.r.get("requester")
        .and_then(|r| str_at(r, "reference").or_else(|| str_at(r, "display")))
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "{}|{}",
                e.org.unwrap_or_default(),
                e.system.unwrap_or_default()
            )
        })
}

fn activity_code_field(rtype: &str) -> Option<&'static str> {
    match rtype {
        "ServiceRequest" | "Task" => Some("code"),
        "MedicationRequest" => Some("medicationCodeableConcept"),
        "Appointment" => Some("serviceType"),
        _ => None,
    }
}

fn status_conflicts(entries: &[Entry<'_>], inline: &[PlanActivity<'_>], flags: &mut Vec<Flag>) {
    // code → (reference, source key, status)
    type Row<'a> = (String, (Option<&'a str>, Option<&'a str>), &'a str);
    let mut by_code: BTreeMap<String, Vec<Row<'_>>> = BTreeMap::new();
    for e in entries {
        let Some(field) = activity_code_field(e.rtype) else {
            continue;
        };
        let Some(status) = status_of(e.r) else {
            continue;
        };
        for c in codings(e.r.get(field)) {
            by_code
                .entry(c)
                .or_default()
                .push((e.reference.clone(), e.source_key(), status));
        }
    }
    for pa in inline {
        let Some(detail) = pa.value.get("detail") else {
            continue;
        };
        let Some(status) = str_at(detail, "status") else {
            continue;
        };
        let e = &entries[pa.plan];
        for c in codings(detail.get("code")) {
            by_code
                .entry(c)
                .or_default()
                .push((e.reference.clone(), e.source_key(), status));
        }
    }
    for (code, rows) in by_code {
        let active: Vec<&Row<'_>> = rows
            .iter()
            .filter(|r| ACTIVE_STATUSES.contains(&r.2))
            .collect();
        let stopped: Vec<&Row<'_>> = rows
            .iter()
            .filter(|r| STOPPED_STATUSES.contains(&r.2))
            .collect();
        let mut implicated = BTreeSet::new();
        let mut statuses = BTreeSet::new();
        for a in &active {
            for s in &stopped {
                if a.1 != s.1 {
                    implicated.insert(a.0.clone());
                    implicated.insert(s.0.clone());
                    statuses.insert(a.2);
                    statuses.insert(s.2);
                }
            }
        }
        if implicated.is_empty() {
            continue;
        }
        flags.push(Flag {
            code: flag::STATUS_CONFLICT,
            display: "Contradictory statuses for the same activity",
            act_code: None,
            severity: "high",
            implicated: implicated.into_iter().collect(),
            detail: format!(
                "The activity coded {code} is recorded with contradictory statuses by different sources: {}.",
                statuses.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
    }
}

fn goals_without_activity(entries: &[Entry<'_>], items: &[Item], flags: &mut Vec<Flag>) {
    let mut addressed: BTreeSet<String> = BTreeSet::new();
    for e in entries {
        match e.rtype {
            "CarePlan" => {
                let plan_goals: Vec<String> =
                    array(e.r, "goal").iter().filter_map(ref_of).collect();
                for act in array(e.r, "activity") {
                    let detail_goals: Vec<String> = act
                        .get("detail")
                        .map(|d| array(d, "goal").iter().filter_map(ref_of).collect())
                        .unwrap_or_default();
                    if detail_goals.is_empty() {
                        addressed.extend(plan_goals.iter().cloned());
                    } else {
                        addressed.extend(detail_goals);
                    }
                }
            }
            t if ACTIVITY_TYPES.contains(&t) => {
                if status_of(e.r) == Some("entered-in-error") {
                    continue;
                }
                let reasons = match e.r.get("reasonReference") {
                    Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
                    Some(v) => vec![v],
                    None => Vec::new(),
                };
                addressed.extend(reasons.into_iter().filter_map(ref_of));
                for ext in array(e.r, "extension") {
                    if str_at(ext, "url")
                        == Some("http://hl7.org/fhir/StructureDefinition/resource-pertainsToGoal")
                    {
                        addressed.extend(ext.get("valueReference").and_then(ref_of));
                    }
                }
            }
            _ => {}
        }
    }
    for item in items.iter().filter(|i| i.rtype == "Goal") {
        let live = item.members.iter().any(|&m| {
            !matches!(
                str_at(entries[m].r, "lifecycleStatus"),
                Some("completed" | "cancelled" | "entered-in-error" | "rejected")
            )
        });
        if !live
            || item
                .members
                .iter()
                .any(|&m| addressed.contains(&entries[m].reference))
        {
            continue;
        }
        let name = item_display(entries, item).unwrap_or_else(|| "A goal".into());
        flags.push(Flag {
            code: flag::GOAL_WITHOUT_ACTIVITY,
            display: "Goal without any activity",
            act_code: None,
            severity: "moderate",
            implicated: item
                .members
                .iter()
                .map(|&m| entries[m].reference.clone())
                .collect(),
            detail: format!("Goal \"{name}\" has no planned activity addressing it."),
        });
    }
}

fn range_end(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_str)
        .and_then(parse_date_range)
        .map(|r| r.end)
}

fn range_start(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_str)
        .and_then(parse_date_range)
        .map(|r| r.start)
}

fn timing_end(t: &Value) -> Option<i64> {
    let bounds = t
        .get("repeat")
        .and_then(|r| r.get("boundsPeriod"))
        .and_then(|p| range_end(p.get("end")));
    bounds.or_else(|| {
        array(t, "event")
            .iter()
            .filter_map(|e| range_end(Some(e)))
            .max()
    })
}

fn timing_start(t: &Value) -> Option<i64> {
    let bounds = t
        .get("repeat")
        .and_then(|r| r.get("boundsPeriod"))
        .and_then(|p| range_start(p.get("start")));
    bounds.or_else(|| {
        array(t, "event")
            .iter()
            .filter_map(|e| range_start(Some(e)))
            .min()
    })
}

/// When an activity was due to be done by (the end of its scheduled time).
fn scheduled_end(rtype: &str, r: &Value) -> Option<i64> {
    match rtype {
        "ServiceRequest" => range_end(r.get("occurrenceDateTime"))
            .or_else(|| {
                r.get("occurrencePeriod")
                    .and_then(|p| range_end(p.get("end")))
            })
            .or_else(|| r.get("occurrenceTiming").and_then(timing_end)),
        "Task" => r
            .get("executionPeriod")
            .and_then(|p| range_end(p.get("end")))
            .or_else(|| {
                r.get("restriction")
                    .and_then(|x| x.get("period"))
                    .and_then(|p| range_end(p.get("end")))
            }),
        "Appointment" => range_end(r.get("end")).or_else(|| range_end(r.get("start"))),
        "detail" => r
            .get("scheduledPeriod")
            .and_then(|p| range_end(p.get("end")))
            .or_else(|| r.get("scheduledTiming").and_then(timing_end)),
        _ => None,
    }
}

/// Dates at which an activity was authored or scheduled (`[start, end)` ranges).
fn activity_dates(rtype: &str, r: &Value) -> Vec<(i64, i64)> {
    let mut keys: Vec<Option<&Value>> = Vec::new();
    let mut out = Vec::new();
    match rtype {
        "ServiceRequest" => {
            keys.push(r.get("authoredOn"));
            keys.push(r.get("occurrenceDateTime"));
            keys.push(r.get("occurrencePeriod").and_then(|p| p.get("start")));
            if let Some(s) = r.get("occurrenceTiming").and_then(timing_start) {
                out.push((s, s + 1));
            }
        }
        "Task" => {
            keys.push(r.get("authoredOn"));
            keys.push(r.get("executionPeriod").and_then(|p| p.get("start")));
        }
        "Appointment" => {
            keys.push(r.get("start"));
            keys.push(r.get("created"));
        }
        "detail" => {
            keys.push(r.get("scheduledPeriod").and_then(|p| p.get("start")));
            if let Some(s) = r.get("scheduledTiming").and_then(timing_start) {
                out.push((s, s + 1));
            }
        }
        _ => {}
    }
    out.extend(
        keys.into_iter()
            .filter_map(|k| k.and_then(Value::as_str).and_then(parse_date_range))
            .map(|d| (d.start, d.end)),
    );
    out
}

fn overdue_activities(
    entries: &[Entry<'_>],
    inline: &[PlanActivity<'_>],
    now: i64,
    flags: &mut Vec<Flag>,
) {
    let mut push = |reference: &str, what: String, status: &str| {
        flags.push(Flag {
            code: flag::OVERDUE_ACTIVITY,
            display: "Activity past its scheduled date without an outcome",
            act_code: None,
            severity: "moderate",
            implicated: vec![reference.to_string()],
            detail: format!("{what} is past its scheduled date and still {status}."),
        });
    };
    for e in entries {
        if !matches!(e.rtype, "ServiceRequest" | "Task" | "Appointment") {
            continue;
        }
        let Some(status) = status_of(e.r).filter(|s| OPEN_STATUSES.contains(s)) else {
            continue;
        };
        if scheduled_end(e.rtype, e.r).is_some_and(|end| end <= now) {
            let what = resource_display(e.r).unwrap_or_else(|| e.rtype.to_string());
            push(&e.reference, what, status);
        }
    }
    for pa in inline {
        let Some(detail) = pa.value.get("detail") else {
            continue;
        };
        let Some(status) = str_at(detail, "status").filter(|s| OPEN_STATUSES.contains(s)) else {
            continue;
        };
        if scheduled_end("detail", detail).is_some_and(|end| end <= now) {
            let what = concept_display(detail.get("code"))
                .or_else(|| str_at(detail, "description").map(str::to_string))
                .unwrap_or_else(|| "A care-plan activity".into());
            push(&entries[pa.plan].reference, what, status);
        }
    }
}

fn discharges_without_follow_up(
    entries: &[Entry<'_>],
    inline: &[PlanActivity<'_>],
    now: i64,
    flags: &mut Vec<Flag>,
) {
    let cancelled =
        |s: Option<&str>| matches!(s, Some("cancelled" | "entered-in-error" | "revoked"));
    let mut follow_ups: Vec<(i64, i64)> = Vec::new();
    for e in entries {
        if matches!(e.rtype, "ServiceRequest" | "Task" | "Appointment")
            && !cancelled(status_of(e.r))
        {
            follow_ups.extend(activity_dates(e.rtype, e.r));
        }
    }
    for pa in inline {
        if let Some(d) = pa.value.get("detail") {
            if !cancelled(str_at(d, "status")) {
                follow_ups.extend(activity_dates("detail", d));
            }
        }
    }
    for e in entries.iter().filter(|e| e.rtype == "Encounter") {
        let class = e.r.get("class");
        let class_code = class
            .and_then(|c| c.as_array().and_then(|a| a.first()).or(Some(c)))
            .and_then(|c| {
                str_at(c, "code")
                    .or_else(|| array(c, "coding").first().and_then(|x| str_at(x, "code")))
            });
        if !matches!(class_code, Some("IMP" | "ACUTE")) || status_of(e.r) != Some("finished") {
            continue;
        }
        let Some(end_value) = e.r.get("period").and_then(|p| str_at(p, "end")) else {
            continue;
        };
        let Some(end) = parse_date_range(end_value) else {
            continue;
        };
        if end.start < now - DISCHARGE_LOOKBACK_DAYS * DAY_MS {
            continue;
        }
        let window = (end.start, end.end + FOLLOW_UP_DAYS * DAY_MS);
        if follow_ups
            .iter()
            .any(|&(s, en)| en > window.0 && s < window.1)
        {
            continue;
        }
        flags.push(Flag {
            code: flag::DISCHARGE_WITHOUT_FOLLOW_UP,
            display: "Inpatient discharge without follow-up",
            act_code: None,
            severity: "high",
            implicated: vec![e.reference.clone()],
            detail: format!(
                "Inpatient discharge on {end_value} has no follow-up activity (ServiceRequest, Appointment or Task) authored or scheduled within {FOLLOW_UP_DAYS} days."
            ),
        });
    }
}

fn is_referral(sr: &Value) -> bool {
    let is_ref = |code: &str| code == "referral" || code == "3457005";
    array(sr, "category")
        .iter()
        .chain(sr.get("code"))
        .flat_map(|cc| array(cc, "coding"))
        .filter_map(|c| str_at(c, "code"))
        .any(is_ref)
}

fn referrals_without_response(entries: &[Entry<'_>], now: i64, flags: &mut Vec<Flag>) {
    let mut responded: BTreeSet<String> = BTreeSet::new();
    for e in entries {
        let fields: &[&str] = match e.rtype {
            "Task" => &["basedOn", "focus"],
            "Encounter" | "Appointment" => &["basedOn"],
            _ => continue,
        };
        for f in fields {
            match e.r.get(*f) {
                Some(Value::Array(a)) => responded.extend(a.iter().filter_map(ref_of)),
                Some(v) => responded.extend(ref_of(v)),
                None => {}
            }
        }
    }
    for e in entries.iter().filter(|e| e.rtype == "ServiceRequest") {
        if !is_referral(e.r)
            || !matches!(status_of(e.r), Some("active" | "draft"))
            || responded.contains(&e.reference)
        {
            continue;
        }
        let authored = range_start(e.r.get("authoredOn")).or(e.updated);
        if authored.is_none_or(|a| a + REFERRAL_RESPONSE_DAYS * DAY_MS > now) {
            continue;
        }
        let what = resource_display(e.r).unwrap_or_else(|| "A referral".into());
        flags.push(Flag {
            code: flag::REFERRAL_WITHOUT_RESPONSE,
            display: "Referral without response",
            act_code: None,
            severity: "moderate",
            implicated: vec![e.reference.clone()],
            detail: format!(
                "Referral \"{what}\" has had no response (no Task or Encounter) for more than {REFERRAL_RESPONSE_DAYS} days."
            ),
        });
    }
}

#[cfg(test)]
mod tests;
