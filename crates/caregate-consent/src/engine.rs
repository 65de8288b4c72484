//! The Consent engine.
//!
//! Matching a provision against a request (each present element is a condition):
//! - `period`: the decision time lies inside it;
//! - `actor`: one actor's `reference` is the caller's organization, practitioner, or a
//!   CareTeam the caller belongs to. The entry's `role` (required by R4) is not a condition:
//!   a request carries no role to compare it with, and Consents in the field name recipients
//!   with `IRCP`/`PRCP` for contributions too;
//! - `action`: one coding equals the request's `consentaction`;
//! - `purpose`: one coding equals the caller's purpose of use;
//! - `securityLabel`: one label is on the resource. Confidentiality codes are a high-water
//!   mark: a *permit* at level N covers data labelled up to N; a *deny* at level R covers
//!   data labelled R or above. Obligation codes (v3-ActCode `REDACT`, `MASK`) are not
//!   conditions: a permit that carries one releases the data redacted (see [`crate::redact`]);
//! - `class`: the resource type (`resource-types`) or one of its `meta.profile`s;
//! - `code`: a coding of the resource's `code` (or `medicationCodeableConcept`, `vaccineCode`);
//! - `dataPeriod`: the resource's clinical date lies inside it;
//! - `data`: `instance` (this resource), `related`/`dependents` (it references the data),
//!   `authoredby` (the data authored it).
//!
//! Within one Consent the root provision's type is the base decision and the deepest
//! matching nested provision wins; between matching provisions at the same depth a deny wins,
//! and between permits one that names every sensitivity category of the data wins.
//!
//! Combining Consents: by default the most recent `dateTime` wins for ordinary data (see
//! [`Combiner`]); for data labelled 42CFRPart2, SUD or ETH any deny wins. Without an
//! applicable Consent the configured default applies — but data labelled PSY, PSYTHPN,
//! ETH/SUD/42CFRPart2 or HIV is only released by a permit whose provision (or an enclosing
//! one) names each of those sensitivity categories the data carries.
//!
//! A patient's Consents are compiled once into a [`ConsentSet`] (dates parsed, references
//! normalised, explanations prepared, inapplicable Consents dropped), so deciding walks
//! small structs rather than JSON; [`ConsentSet::for_request`] further evaluates the
//! request-level conditions (period, actor, action, purpose) once for a caller, leaving
//! only the data conditions to each resource. A Consent nested deeper than 32 levels fails
//! closed (denies).

use std::cell::OnceCell;

use caregate_core::parse_date_range;
use serde_json::Value;

use crate::labels::{self, CONFIDENTIALITY};
use crate::{
    Actor, ConsentAction, ConsentPolicy, ConsentRequest, Decision, DecisionSource, Obligation,
    Verdict,
};

/// What happens when no Consent applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Share unless the patient objected (sensitive data still needs an explicit permit).
    OptOut,
    /// Share only what the patient permitted.
    OptIn,
}

/// How the outcomes of several applicable Consents combine for ordinary data. Data labelled
/// 42CFRPart2, SUD or ETH always combines by [`Combiner::DenyOverrides`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Combiner {
    /// The Consent with the latest `dateTime` decides (a deny wins a tie).
    #[default]
    MostRecent,
    /// Any deny wins.
    DenyOverrides,
}

/// A configured redaction: data carrying `label` is released only redacted, except to the
/// actors listed (e.g. psychotherapy notes, PSYTHPN, whole only to the psychiatry practice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactionRule {
    pub label: String,
    /// References (`Organization/…`, `Practitioner/…`, `CareTeam/…`) that see the data whole.
    pub except: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ConsentEngine {
    pub default: DefaultPolicy,
    /// Purposes of use that break the glass (emergency access), if the caller may assert them.
    pub break_glass_purposes: Vec<String>,
    pub combiner: Combiner,
    pub redaction: Vec<RedactionRule>,
}

impl Default for ConsentEngine {
    fn default() -> Self {
        ConsentEngine {
            default: DefaultPolicy::OptOut,
            break_glass_purposes: vec!["ETREAT".into(), "BTG".into()],
            combiner: Combiner::MostRecent,
            redaction: Vec::new(),
        }
    }
}

/// Sensitivity categories as bits: a permit must name every category the data carries.
/// ETH, SUD and 42CFRPart2 are one category (substance use).
fn sensitivity_bit(code: &str) -> u8 {
    match code {
        "PSY" => 1,
        "PSYTHPN" => 2,
        "ETH" | "SUD" | "42CFRPart2" => 4,
        "HIV" => 8,
        _ => 0,
    }
}

const SUBSTANCE_USE: u8 = 4;

/// Obligation codes that may appear in `provision.securityLabel` (v3-ActCode
/// ObligationPolicy): both mean "release only redacted" here.
const REDACT_CODES: [&str; 2] = ["REDACT", "MASK"];

fn is_obligation(system: &str, code: &str) -> bool {
    REDACT_CODES.contains(&code) && (system.is_empty() || system == labels::OBLIGATION)
}

// ---- compiled Consents ----------------------------------------------------------------

/// `[start, end)` in epoch millis; an absent or unreadable bound is open.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: Option<i64>,
    end: Option<i64>,
}

impl Span {
    fn of(period: &Value) -> Span {
        let bound = |k: &str| {
            period
                .get(k)
                .and_then(Value::as_str)
                .and_then(parse_date_range)
        };
        Span {
            start: bound("start").map(|r| r.start),
            end: bound("end").map(|r| r.end),
        }
    }

    fn contains(&self, at: i64) -> bool {
        self.start.is_none_or(|s| at >= s) && self.end.is_none_or(|e| at < e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    Instance,
    Related,
    AuthoredBy,
    /// A meaning caregate does not know: never matches.
    Unknown,
}

#[derive(Debug, Clone)]
struct Coding {
    system: String,
    code: String,
}

/// One provision, compiled. `None` for an element means it is absent (a wildcard).
#[derive(Debug, Clone)]
struct Provision {
    /// Preorder position within its Consent.
    index: usize,
    /// Levels below the root provision.
    depth: usize,
    /// `Consent.provision.provision[i]…`, for explanations.
    path: String,
    /// "Consent/x permits at …" and "… denies at …", prepared so that deciding formats
    /// nothing.
    basis_permit: String,
    basis_deny: String,
    verdict: Option<Verdict>,
    period: Option<Span>,
    actors: Option<Vec<String>>,
    actions: Option<Vec<String>>,
    purposes: Option<Vec<String>>,
    /// Confidentiality ranks named in `securityLabel`.
    levels: Vec<u8>,
    /// Other labels named in `securityLabel` (obligation codes excluded).
    labels: Vec<Coding>,
    /// Whether `securityLabel` sets a condition (anything besides obligation codes).
    label_condition: bool,
    /// Sensitivity categories this provision names.
    named: u8,
    /// Carries a redaction obligation.
    redact: bool,
    classes: Option<Vec<String>>,
    codes: Option<Vec<Coding>>,
    data_period: Option<Span>,
    data: Option<Vec<(Meaning, String)>>,
    children: Vec<Provision>,
}

/// (system, code) of each Coding in an array of Codings or of CodeableConcepts.
fn codings(v: &Value, key: &str) -> Option<Vec<Coding>> {
    let items = v.get(key)?.as_array()?;
    let mut out = Vec::new();
    for item in items {
        let list: Vec<&Value> = match item.get("coding").and_then(Value::as_array) {
            Some(c) => c.iter().collect(),
            None => vec![item],
        };
        for c in list {
            if let Some(code) = c.get("code").and_then(Value::as_str) {
                out.push(Coding {
                    system: c
                        .get("system")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    code: code.to_string(),
                });
            }
        }
    }
    Some(out)
}

fn codes_only(v: &Value, key: &str) -> Option<Vec<String>> {
    codings(v, key).map(|c| c.into_iter().map(|c| c.code).collect())
}

impl Provision {
    fn names_care_teams(&self) -> bool {
        self.actors
            .iter()
            .flatten()
            .any(|a| a.starts_with("CareTeam/"))
            || self.children.iter().any(Provision::names_care_teams)
    }

    /// Levels of nesting below this provision.
    fn depth(&self) -> usize {
        self.children
            .iter()
            .map(|c| 1 + c.depth())
            .max()
            .unwrap_or(0)
    }

    /// Compiles `p` (found at `path` in `consent`), numbering provisions in preorder from
    /// `next`.
    fn compile(
        p: &Value,
        consent: &str,
        path: String,
        depth: usize,
        next: &mut usize,
    ) -> Provision {
        let index = *next;
        *next += 1;
        let verdict = match p.get("type").and_then(Value::as_str) {
            Some("permit") => Some(Verdict::Permit),
            Some("deny") => Some(Verdict::Deny),
            _ => None,
        };
        let children = p
            .get("provision")
            .and_then(Value::as_array)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let child = format!("{path}.provision[{i}]");
                        Provision::compile(c, consent, child, depth + 1, next)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut levels = Vec::new();
        let mut labels = Vec::new();
        let mut label_condition = false;
        let mut named = 0;
        let mut redact = false;
        for c in codings(p, "securityLabel").unwrap_or_default() {
            if is_obligation(&c.system, &c.code) {
                redact = true;
                continue;
            }
            label_condition = true;
            named |= sensitivity_bit(&c.code);
            match labels::confidentiality_rank(&c.code)
                .filter(|_| c.system.is_empty() || c.system == CONFIDENTIALITY)
            {
                Some(rank) => levels.push(rank),
                None => labels.push(c),
            }
        }
        Provision {
            index,
            depth,
            basis_permit: format!("{consent} permits at {path}"),
            basis_deny: format!("{consent} denies at {path}"),
            verdict,
            period: p.get("period").map(Span::of),
            actors: p.get("actor").and_then(Value::as_array).map(|actors| {
                actors
                    .iter()
                    .filter_map(|a| a.pointer("/reference/reference").and_then(Value::as_str))
                    .map(|r| strip_base(r).to_string())
                    .collect()
            }),
            actions: codes_only(p, "action"),
            purposes: codes_only(p, "purpose"),
            levels,
            labels,
            label_condition,
            named,
            redact,
            classes: codes_only(p, "class")
                .map(|c| c.into_iter().map(|c| unversioned(&c).to_string()).collect()),
            codes: codings(p, "code"),
            data_period: p.get("dataPeriod").map(Span::of),
            data: p.get("data").and_then(Value::as_array).map(|data| {
                data.iter()
                    .filter_map(|d| {
                        let target = d.pointer("/reference/reference")?.as_str()?;
                        let meaning = match d.get("meaning").and_then(Value::as_str) {
                            Some("instance") => Meaning::Instance,
                            Some("related") | Some("dependents") => Meaning::Related,
                            Some("authoredby") => Meaning::AuthoredBy,
                            _ => Meaning::Unknown,
                        };
                        Some((meaning, strip_base(target).to_string()))
                    })
                    .collect()
            }),
            children,
            path,
        }
    }
}

/// Provisions nested deeper than this make a Consent fail closed (it denies everything),
/// which bounds the engine's recursion; real Consents nest two or three levels.
const MAX_DEPTH: usize = 32;

/// One Consent compiled for deciding. Compile once ([`PreparedConsent::prepare`]) and share
/// (the pipeline caches them by content hash across requests).
#[derive(Debug, Clone)]
pub struct PreparedConsent {
    /// `Consent/{id}`.
    reference: String,
    /// `dateTime`, epoch millis (`i64::MIN` when absent: the oldest).
    when: i64,
    root: Provision,
    /// Nested deeper than [`MAX_DEPTH`]: decides deny at the root.
    too_deep: bool,
    /// A provision names a CareTeam as actor.
    names_care_teams: bool,
}

impl PreparedConsent {
    /// `None` when the Consent never applies (not active, not `patient-privacy`, or
    /// without a provision).
    pub fn prepare(consent: &Value) -> Option<PreparedConsent> {
        if !applicable(consent) {
            return None;
        }
        let reference = resource_reference(consent).unwrap_or_else(|| "Consent (no id)".into());
        let root = Provision::compile(
            consent.get("provision")?,
            &reference,
            "Consent.provision".into(),
            0,
            &mut 0,
        );
        Some(PreparedConsent {
            reference,
            when: consent
                .get("dateTime")
                .and_then(Value::as_str)
                .and_then(parse_date_range)
                .map_or(i64::MIN, |r| r.start),
            too_deep: root.depth() > MAX_DEPTH,
            names_care_teams: root.names_care_teams(),
            root,
        })
    }
}

/// A patient's Consents, compiled for deciding: only active `patient-privacy` Consents
/// with a provision are kept.
#[derive(Debug, Clone, Default)]
pub struct ConsentSet {
    consents: Vec<std::sync::Arc<PreparedConsent>>,
    /// Indices into `consents`, most recent `dateTime` first (stable: equal dates keep
    /// their order), so a most-recent-wins decision can stop at the first that applies.
    recency: Vec<usize>,
    /// What is already known for one caller, action and time ([`ConsentSet::for_request`]).
    statics: Option<Box<Statics>>,
}

/// The request-level conditions (period, actor, action, purpose) of every provision,
/// evaluated once for one caller, action and time: a page of decisions then tests only
/// what depends on the resource.
#[derive(Debug, Clone)]
struct Statics {
    action: ConsentAction,
    purpose: Option<String>,
    now_ms: i64,
    actor_refs: Vec<String>,
    /// Per Consent, per provision (preorder): whether its request-level conditions hold.
    admits: Vec<Vec<bool>>,
}

impl Statics {
    fn applies_to(&self, who: &Who<'_>) -> bool {
        self.action == who.action
            && self.now_ms == who.now_ms
            && self.purpose.as_deref() == who.purpose
            && self.actor_refs.len() == who.actor_refs.len()
            && self
                .actor_refs
                .iter()
                .zip(&who.actor_refs)
                .all(|(a, b)| a == b)
    }
}

impl ConsentSet {
    pub fn new(resources: &[Value]) -> ConsentSet {
        ConsentSet::from_prepared(
            resources
                .iter()
                .filter_map(PreparedConsent::prepare)
                .map(std::sync::Arc::new)
                .collect(),
        )
    }

    /// From Consents compiled earlier.
    pub fn from_prepared(consents: Vec<std::sync::Arc<PreparedConsent>>) -> ConsentSet {
        let mut recency: Vec<usize> = (0..consents.len()).collect();
        recency.sort_by_key(|&i| std::cmp::Reverse(consents[i].when));
        ConsentSet {
            consents,
            recency,
            statics: None,
        }
    }

    /// The same Consents with their request-level conditions evaluated for this caller,
    /// action and time. Decisions for other requests ignore that and evaluate everything.
    pub fn for_request(&self, actor: &Actor, action: ConsentAction, now_ms: i64) -> ConsentSet {
        let who = Who::of(actor, action, now_ms);
        fn walk(p: &Provision, who: &Who<'_>, admits: &mut Vec<bool>) {
            if admits.len() <= p.index {
                admits.resize(p.index + 1, false);
            }
            admits[p.index] = static_matches(p, who);
            for c in &p.children {
                walk(c, who, admits);
            }
        }
        let admits = self
            .consents
            .iter()
            .map(|c| {
                let mut admits = Vec::new();
                walk(&c.root, &who, &mut admits);
                admits
            })
            .collect();
        ConsentSet {
            consents: self.consents.clone(),
            recency: self.recency.clone(),
            statics: Some(Box::new(Statics {
                action,
                purpose: who.purpose.map(str::to_string),
                now_ms,
                actor_refs: who.actor_refs.iter().map(|r| r.to_string()).collect(),
                admits,
            })),
        }
    }

    /// Whether a provision names a CareTeam as actor (then the caller's CareTeam membership
    /// matters and must be in [`Actor::care_teams`]).
    pub fn names_care_teams(&self) -> bool {
        self.consents.iter().any(|c| c.names_care_teams)
    }

    /// How many applicable Consents the set holds.
    pub fn len(&self) -> usize {
        self.consents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.consents.is_empty()
    }
}

fn applicable(consent: &Value) -> bool {
    consent.get("resourceType").and_then(Value::as_str) == Some("Consent")
        && consent.get("status").and_then(Value::as_str) == Some("active")
        && consent
            .pointer("/scope/coding")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.get("code").and_then(Value::as_str) == Some("patient-privacy"))
            })
}

// ---- the request ------------------------------------------------------------------------

/// The request-level facts: who asks, for what action and purpose, when.
struct Who<'a> {
    action: ConsentAction,
    action_code: &'static str,
    /// The caller's organization, practitioner and CareTeams, base URLs stripped.
    actor_refs: Vec<&'a str>,
    purpose: Option<&'a str>,
    now_ms: i64,
}

impl<'a> Who<'a> {
    fn of(actor: &'a Actor, action: ConsentAction, now_ms: i64) -> Who<'a> {
        Who {
            action,
            action_code: action.code(),
            actor_refs: actor.references().map(strip_base).collect(),
            purpose: actor.purpose_of_use.as_deref(),
            now_ms,
        }
    }
}

/// Everything about the request the provisions test, extracted once per decision in one
/// pass over the resource's top-level elements (no hashed lookups); what few provisions
/// need (codes, profiles, references, dates) is extracted on first use.
struct Facts<'a> {
    resource: &'a Value,
    who: Who<'a>,
    rtype: &'a str,
    id: &'a str,
    meta: Option<&'a Value>,
    labels: Vec<(&'a str, &'a str)>,
    level: u8,
    /// Sensitivity categories a release must be explicitly permitted for.
    required: u8,
    /// The first clinical date element, by priority (see [`date_rank`]).
    date: Option<&'a Value>,
    codes: OnceCell<Vec<(&'a str, &'a str)>>,
    profiles: OnceCell<Vec<&'a str>>,
    clinical_date: OnceCell<Option<i64>>,
    refs: OnceCell<Vec<&'a str>>,
    authors: OnceCell<Vec<&'a str>>,
}

/// The rank of an element that dates a resource's content, most specific first.
fn date_rank(element: &str) -> Option<usize> {
    Some(match element {
        "effectiveDateTime" => 0,
        "effectivePeriod" => 1,
        "onsetDateTime" => 2,
        "authoredOn" => 3,
        "recordedDate" => 4,
        "occurrenceDateTime" => 5,
        "performedDateTime" => 6,
        "period" => 7,
        "issued" => 8,
        "date" => 9,
        "created" => 10,
        _ => return None,
    })
}

impl<'a> Facts<'a> {
    fn of(req: &ConsentRequest<'a>) -> Facts<'a> {
        let resource = req.resource;
        let (mut rtype, mut id, mut meta) = ("", "", None);
        let mut date: Option<(usize, &Value)> = None;
        if let Some(obj) = resource.as_object() {
            for (k, v) in obj {
                match k.as_str() {
                    "resourceType" => rtype = v.as_str().unwrap_or(""),
                    "id" => id = v.as_str().unwrap_or(""),
                    "meta" => meta = Some(v),
                    other => {
                        if let Some(rank) = date_rank(other) {
                            if date.is_none_or(|(r, _)| rank < r) {
                                date = Some((rank, v));
                            }
                        }
                    }
                }
            }
        }
        let mut labels = Vec::new();
        for l in meta
            .and_then(|m| field(m, "security"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(code) = field_str(l, "code") {
                labels.push((field_str(l, "system").unwrap_or(""), code));
            }
        }
        let required = if is_release(req.action) {
            labels.iter().fold(0, |m, (_, c)| m | sensitivity_bit(c))
        } else {
            0
        };
        let level = labels
            .iter()
            .filter(|(s, _)| *s == CONFIDENTIALITY || s.is_empty())
            .filter_map(|(_, c)| labels::confidentiality_rank(c))
            .max()
            .unwrap_or(3);
        Facts {
            resource,
            who: Who::of(req.actor, req.action, req.now_ms),
            rtype,
            id,
            meta,
            labels,
            level,
            required,
            date: date.map(|(_, v)| v),
            codes: OnceCell::new(),
            profiles: OnceCell::new(),
            clinical_date: OnceCell::new(),
            refs: OnceCell::new(),
            authors: OnceCell::new(),
        }
    }

    fn has_profile(&self, canonical: &str) -> bool {
        self.profiles
            .get_or_init(|| {
                self.meta
                    .and_then(|m| field(m, "profile"))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(unversioned)
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .contains(&canonical)
    }

    fn codes(&self) -> &[(&'a str, &'a str)] {
        self.codes.get_or_init(|| {
            let mut codes = Vec::new();
            for key in ["code", "medicationCodeableConcept", "vaccineCode"] {
                if let Some(list) = field(self.resource, key)
                    .and_then(|cc| field(cc, "coding"))
                    .and_then(Value::as_array)
                {
                    for c in list {
                        if let Some(code) = field_str(c, "code") {
                            codes.push((field_str(c, "system").unwrap_or(""), code));
                        }
                    }
                }
            }
            codes
        })
    }

    /// Whether `reference` (`Type/id`) names this resource.
    fn is_me(&self, reference: &str) -> bool {
        !self.id.is_empty()
            && reference.len() == self.rtype.len() + 1 + self.id.len()
            && reference.starts_with(self.rtype)
            && reference.ends_with(self.id)
            && reference.as_bytes().get(self.rtype.len()) == Some(&b'/')
    }

    fn clinical_date(&self) -> Option<i64> {
        *self.clinical_date.get_or_init(|| {
            self.date
                .and_then(|v| v.as_str().or_else(|| field_str(v, "start")))
                .or_else(|| self.meta.and_then(|m| field_str(m, "lastUpdated")))
                .and_then(parse_date_range)
                .map(|r| r.start)
        })
    }

    fn refs(&self) -> &[&'a str] {
        self.refs.get_or_init(|| {
            let mut out = Vec::with_capacity(16);
            all_references(self.resource, &mut out);
            out
        })
    }

    fn authors(&self) -> &[&'a str] {
        self.authors.get_or_init(|| {
            let mut out = Vec::new();
            for k in ["author", "recorder", "requester", "asserter", "performer"] {
                if let Some(v) = field(self.resource, k) {
                    all_references(v, &mut out);
                }
            }
            out
        })
    }

    fn sensitive_codes(&self) -> Vec<&'a str> {
        self.labels
            .iter()
            .map(|(_, c)| *c)
            .filter(|c| sensitivity_bit(c) & self.required != 0)
            .collect()
    }
}

use caregate_core::json::field;

fn field_str<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    field(v, key).and_then(Value::as_str)
}

fn is_release(action: ConsentAction) -> bool {
    matches!(
        action,
        ConsentAction::Access | ConsentAction::Use | ConsentAction::Disclose
    )
}

fn unversioned(canonical: &str) -> &str {
    canonical.split('|').next().unwrap_or(canonical)
}

fn strip_base(reference: &str) -> &str {
    // `https://x/fhir/Organization/1` and `Organization/1` name the same thing here.
    if !reference.contains("://") {
        return reference;
    }
    let mut slashes = reference.rmatch_indices('/');
    match (slashes.next(), slashes.next()) {
        (Some(_), Some((i, _))) => &reference[i + 1..],
        _ => reference,
    }
}

fn resource_reference(resource: &Value) -> Option<String> {
    Some(format!(
        "{}/{}",
        resource.get("resourceType")?.as_str()?,
        resource.get("id")?.as_str()?
    ))
}

/// Every `reference` string inside `v` (base URLs stripped), borrowed from the resource.
fn all_references<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x {
                    Value::String(s) if k == "reference" => out.push(strip_base(s)),
                    // Narrative and metadata hold no references worth following.
                    Value::Object(_) if k == "text" || k == "meta" => {}
                    _ => all_references(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| all_references(x, out)),
        _ => {}
    }
}

// ---- matching ---------------------------------------------------------------------------

/// What a provision inherits from the one enclosing it.
#[derive(Clone, Copy)]
struct Parent {
    verdict: Verdict,
    named: u8,
}

/// The outcome of one provision tree.
#[derive(Clone, Copy)]
struct Matched<'c> {
    verdict: Verdict,
    /// The deciding provision.
    provision: &'c Provision,
    /// Sensitivity categories named by the deciding provision or an enclosing one.
    named: u8,
}

/// The request-level conditions: period, actor, action, purpose.
fn static_matches(p: &Provision, who: &Who<'_>) -> bool {
    if p.period.is_some_and(|s| !s.contains(who.now_ms)) {
        return false;
    }
    if let Some(actors) = &p.actors {
        if !actors.iter().any(|a| who.actor_refs.contains(&a.as_str())) {
            return false;
        }
    }
    if let Some(actions) = &p.actions {
        if !actions.iter().any(|a| a == who.action_code) {
            return false;
        }
    }
    if let Some(purposes) = &p.purposes {
        match who.purpose {
            Some(purpose) if purposes.iter().any(|x| x == purpose) => {}
            _ => return false,
        }
    }
    true
}

/// The conditions on the data: labels, class, code, dataPeriod, data references.
fn data_matches(p: &Provision, f: &Facts<'_>, verdict: Verdict) -> bool {
    if p.label_condition {
        // The high-water mark follows the provision's effective type.
        let level_hit = p.levels.iter().any(|rank| match verdict {
            Verdict::Deny => f.level >= *rank,
            Verdict::Permit => f.level <= *rank,
        });
        let label_hit = || {
            p.labels.iter().any(|l| {
                f.labels.iter().any(|(s, c)| {
                    *c == l.code && (l.system.is_empty() || s.is_empty() || *s == l.system)
                })
            })
        };
        if !level_hit && !label_hit() {
            return false;
        }
    }
    if let Some(classes) = &p.classes {
        if !classes.iter().any(|c| c == f.rtype || f.has_profile(c)) {
            return false;
        }
    }
    if let Some(codes) = &p.codes {
        let hit = codes.iter().any(|c| {
            f.codes()
                .iter()
                .any(|(rs, rc)| *rc == c.code && (c.system.is_empty() || *rs == c.system))
        });
        if !hit {
            return false;
        }
    }
    if let Some(span) = &p.data_period {
        match f.clinical_date() {
            Some(at) if span.contains(at) => {}
            _ => return false,
        }
    }
    if let Some(data) = &p.data {
        let hit = data.iter().any(|(meaning, target)| match meaning {
            Meaning::Instance => f.is_me(target),
            Meaning::Related => f.is_me(target) || f.refs().contains(&target.as_str()),
            Meaning::AuthoredBy => f.authors().contains(&target.as_str()),
            Meaning::Unknown => false,
        });
        if !hit {
            return false;
        }
    }
    true
}

/// The deepest matching provision under (and including) `p`.
fn evaluate<'c>(
    p: &'c Provision,
    parent: Parent,
    f: &Facts<'_>,
    admits: Option<&[bool]>,
) -> Option<Matched<'c>> {
    // An untyped nested provision refines its parent's type.
    let verdict = p.verdict.unwrap_or(parent.verdict);
    let admitted = match admits.and_then(|a| a.get(p.index)) {
        Some(known) => *known,
        None => static_matches(p, &f.who),
    };
    if !admitted || !data_matches(p, f, verdict) {
        return None;
    }
    let named = parent.named | p.named;
    let mut best = Matched {
        verdict,
        provision: p,
        named,
    };
    let inner = Parent { verdict, named };
    // Whether a permit names every sensitivity category the data carries (only such a
    // permit releases sensitive data).
    let releases = |m: &Matched<'_>| f.required & !m.named == 0;
    for child in &p.children {
        if let Some(m) = evaluate(child, inner, f, admits) {
            // Deeper wins; at equal depth a deny wins, and between permits one that can
            // release the data wins over one that cannot (sibling order does not matter).
            let same_depth = m.provision.depth == best.provision.depth;
            if m.provision.depth > best.provision.depth
                || (same_depth && m.verdict == Verdict::Deny && best.verdict == Verdict::Permit)
                || (same_depth
                    && m.verdict == Verdict::Permit
                    && best.verdict == Verdict::Permit
                    && releases(&m)
                    && !releases(&best))
            {
                best = m;
            }
        }
    }
    Some(best)
}

impl ConsentEngine {
    /// The configured redaction rules this release falls under.
    fn redaction_rules<'r>(
        &'r self,
        f: &'r Facts<'r>,
        actor: &'r Actor,
    ) -> impl Iterator<Item = &'r RedactionRule> + 'r {
        self.redaction
            .iter()
            .filter(|r| f.labels.iter().any(|(_, c)| *c == r.label))
            .filter(|r| {
                !actor
                    .references()
                    .any(|a| r.except.iter().any(|e| strip_base(e) == strip_base(a)))
            })
    }
}

/// One Consent's outcome.
#[derive(Clone, Copy)]
struct Outcome<'c> {
    when: i64,
    consent: &'c str,
    m: Matched<'c>,
}

impl ConsentPolicy for ConsentEngine {
    fn permits_without_consent(&self) -> bool {
        self.default == DefaultPolicy::OptOut
    }

    fn overrides_for(&self, actor: &crate::Actor) -> bool {
        actor
            .purpose_of_use
            .as_deref()
            .is_some_and(|p| self.break_glass_purposes.iter().any(|b| b == p))
    }

    fn decide(&self, req: &ConsentRequest<'_>) -> Decision {
        let f = Facts::of(req);
        match self.judge(req, &f) {
            Judged::BreakTheGlass(purpose) => Decision {
                verdict: Verdict::Permit,
                source: DecisionSource::BreakTheGlass,
                basis: format!("emergency access (purpose {purpose}) overrides the patient's consent; this access raises a security alert"),
                obligations: Vec::new(),
            },
            Judged::Consent { outcome: o, part2, explicit } => {
                let path = &o.m.provision.path;
                if o.m.verdict == Verdict::Permit && !explicit {
                    return Decision {
                        verdict: Verdict::Deny,
                        basis: format!(
                            "{} permits at {path}, but the data is labelled {} and no provision names that label explicitly",
                            o.consent,
                            f.sensitive_codes().join(", ")
                        ),
                        source: DecisionSource::Consent {
                            consent: o.consent.to_string(),
                            provision: path.clone(),
                        },
                        obligations: Vec::new(),
                    };
                }
                let mut obligations = Vec::new();
                if o.m.verdict == Verdict::Permit && is_release(req.action) {
                    if o.m.provision.redact {
                        obligations.push(Obligation::Redact {
                            reason: format!(
                                "{} at {path} permits this data only redacted",
                                o.consent
                            ),
                        });
                    }
                    obligations.extend(self.redaction_rules(&f, req.actor).map(|r| {
                        Obligation::Redact {
                            reason: format!(
                                "data labelled {} is released to this reader only redacted",
                                r.label
                            ),
                        }
                    }));
                }
                let mut basis = match o.m.verdict {
                    Verdict::Permit => o.m.provision.basis_permit.clone(),
                    Verdict::Deny => o.m.provision.basis_deny.clone(),
                };
                if part2 {
                    basis.push_str(" (42 CFR Part 2 data: deny overrides)");
                }
                Decision {
                    verdict: o.m.verdict,
                    basis,
                    source: DecisionSource::Consent {
                        consent: o.consent.to_string(),
                        provision: path.clone(),
                    },
                    obligations,
                }
            }
            Judged::NoConsent if f.required != 0 => Decision {
                verdict: Verdict::Deny,
                source: DecisionSource::NoApplicableConsent,
                basis: format!(
                    "no consent applies and the data is labelled {}, which needs the patient's explicit permit",
                    f.sensitive_codes().join(", ")
                ),
                obligations: Vec::new(),
            },
            Judged::NoConsent => {
                let permit = self.default == DefaultPolicy::OptOut;
                Decision {
                    verdict: if permit { Verdict::Permit } else { Verdict::Deny },
                    source: DecisionSource::NoApplicableConsent,
                    basis: format!(
                        "no consent applies; the gateway's default policy is {}",
                        if permit {
                            "opt-out (share)"
                        } else {
                            "opt-in (do not share)"
                        }
                    ),
                    obligations: if permit && is_release(req.action) {
                        self.redaction_rules(&f, req.actor)
                            .map(|r| Obligation::Redact {
                                reason: format!(
                                    "data labelled {} is released to this reader only redacted",
                                    r.label
                                ),
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                }
            }
        }
    }

    fn quiet_permit(&self, req: &ConsentRequest<'_>) -> Option<bool> {
        let f = Facts::of(req);
        let redact = |provision: bool| {
            is_release(req.action)
                && (provision || self.redaction_rules(&f, req.actor).next().is_some())
        };
        match self.judge(req, &f) {
            Judged::BreakTheGlass(_) => None,
            Judged::Consent {
                outcome, explicit, ..
            } => (outcome.m.verdict == Verdict::Permit && explicit)
                .then(|| redact(outcome.m.provision.redact)),
            Judged::NoConsent => {
                (f.required == 0 && self.default == DefaultPolicy::OptOut).then(|| redact(false))
            }
        }
    }
}

/// What decided a request, borrowed from the compiled Consents; [`ConsentPolicy::decide`]
/// turns it into an explained [`Decision`], [`ConsentPolicy::quiet_permit`] into a bare
/// answer without building any text.
enum Judged<'c> {
    /// Emergency access with this purpose of use.
    BreakTheGlass(&'c str),
    Consent {
        outcome: Outcome<'c>,
        /// Deny-overrides applied (42 CFR Part 2 / SUD / ETH data).
        part2: bool,
        /// The deciding provision (or an enclosing one) names every sensitivity category
        /// the data carries; a permit that does not is a deny.
        explicit: bool,
    },
    NoConsent,
}

impl ConsentEngine {
    fn judge<'c>(&'c self, req: &'c ConsentRequest<'c>, f: &Facts<'_>) -> Judged<'c> {
        if let Some(purpose) = req.actor.purpose_of_use.as_deref() {
            if self.break_glass_purposes.iter().any(|p| p == purpose)
                && matches!(req.action, ConsentAction::Access | ConsentAction::Use)
            {
                return Judged::BreakTheGlass(purpose);
            }
        }
        // Sensitivity rules govern release; collecting or correcting labelled data is
        // decided like any other data.
        let part2 = f.required & SUBSTANCE_USE != 0;
        let combiner = if part2 {
            Combiner::DenyOverrides
        } else {
            self.combiner
        };
        // For data without sensitivity labels, most-recent-wins never looks past the most
        // recent Consent that applies (and any of the same date, where a deny wins): the
        // Consents are visited newest first and older ones skipped from there.
        let newest_only = combiner == Combiner::MostRecent && f.required == 0;
        let mut decided_at: Option<i64> = None;
        let mut outcomes: Vec<Outcome<'c>> = Vec::with_capacity(req.consents.len());
        let statics = req
            .consents
            .statics
            .as_deref()
            .filter(|s| s.applies_to(&f.who));
        for &i in &req.consents.recency {
            let consent = &req.consents.consents[i];
            if newest_only && decided_at.is_some_and(|when| consent.when < when) {
                break;
            }
            let base = consent.root.verdict.unwrap_or(Verdict::Deny);
            if consent.too_deep {
                // Fail closed: a Consent the engine cannot walk denies.
                outcomes.push(Outcome {
                    when: consent.when,
                    consent: &consent.reference,
                    m: Matched {
                        verdict: Verdict::Deny,
                        provision: &consent.root,
                        named: 0,
                    },
                });
                decided_at.get_or_insert(consent.when);
                continue;
            }
            let parent = Parent {
                verdict: base,
                named: 0,
            };
            let admits = statics.and_then(|s| s.admits.get(i)).map(Vec::as_slice);
            if let Some(m) = evaluate(&consent.root, parent, f, admits) {
                outcomes.push(Outcome {
                    when: consent.when,
                    consent: &consent.reference,
                    m,
                });
                decided_at.get_or_insert(consent.when);
            }
        }
        let latest = |o: &&Outcome<'_>| o.when;
        let latest_deny = outcomes
            .iter()
            .filter(|o| o.m.verdict == Verdict::Deny)
            .max_by_key(latest);
        let chosen = match combiner {
            Combiner::DenyOverrides => latest_deny.or_else(|| outcomes.iter().max_by_key(latest)),
            // Most recent wins; on equal dateTime a deny wins.
            Combiner::MostRecent => outcomes.iter().max_by(|a, b| {
                a.when
                    .cmp(&b.when)
                    .then((a.m.verdict == Verdict::Deny).cmp(&(b.m.verdict == Verdict::Deny)))
            }),
        };
        let explicit = |o: &Outcome<'_>| f.required & !o.m.named == 0;
        // A permit that does not name the data's sensitivity yields to one (not overruled by
        // a later deny) that does: both permit, and only the latter covers this data.
        let chosen = match chosen {
            Some(c) if c.m.verdict == Verdict::Permit && !explicit(c) => Some(
                outcomes
                    .iter()
                    .filter(|o| o.m.verdict == Verdict::Permit && explicit(o))
                    .filter(|o| latest_deny.is_none_or(|d| o.when >= d.when))
                    .max_by_key(latest)
                    .unwrap_or(c),
            ),
            other => other,
        };
        match chosen {
            Some(o) => Judged::Consent {
                outcome: *o,
                part2,
                explicit: explicit(o),
            },
            None => Judged::NoConsent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Actor;
    use serde_json::json;

    const NOW: &str = "2025-06-01T00:00:00Z";

    fn now() -> i64 {
        parse_date_range(NOW).map(|r| r.start).unwrap_or_default()
    }

    fn consent(id: &str, date: &str, provision: Value) -> Value {
        json!({
            "resourceType": "Consent", "id": id, "status": "active", "dateTime": date,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient/p"},
            "provision": provision
        })
    }

    fn clinic() -> Actor {
        Actor {
            organization: Some("Organization/clinic".into()),
            purpose_of_use: Some("TREAT".into()),
            care_teams: vec!["CareTeam/team".into()],
            ..Actor::default()
        }
    }

    fn decide(
        engine: &ConsentEngine,
        actor: &Actor,
        resource: &Value,
        consents: &[Value],
    ) -> Decision {
        engine.decide(&ConsentRequest {
            actor,
            action: ConsentAction::Access,
            resource,
            consents: &ConsentSet::new(consents),
            now_ms: now(),
        })
    }

    fn condition(labels: &[&str]) -> Value {
        let security: Vec<Value> = labels
            .iter()
            .map(|c| json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": c}))
            .collect();
        json!({"resourceType": "Condition", "id": "c1", "meta": {"security": security},
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]},
               "subject": {"reference": "Patient/p"}, "recordedDate": "2024-02-01"})
    }

    #[test]
    fn root_deny_with_nested_permit_for_an_actor() {
        let c = consent(
            "c",
            "2025-01-01",
            json!({"type": "deny", "provision": [
                {"type": "permit", "actor": [{"role": {"text": "recipient"}, "reference": {"reference": "Organization/clinic"}}],
                 "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}]}
            ]}),
        );
        let e = ConsentEngine::default();
        let d = decide(&e, &clinic(), &condition(&[]), std::slice::from_ref(&c));
        assert!(d.is_permit(), "{d:?}");
        assert_eq!(
            d.source,
            DecisionSource::Consent {
                consent: "Consent/c".into(),
                provision: "Consent.provision.provision[0]".into()
            }
        );
        let other = Actor {
            organization: Some("Organization/other".into()),
            ..Actor::default()
        };
        let d = decide(&e, &other, &condition(&[]), &[c]);
        assert!(!d.is_permit());
        assert_eq!(
            d.source,
            DecisionSource::Consent {
                consent: "Consent/c".into(),
                provision: "Consent.provision".into()
            }
        );
    }

    #[test]
    fn care_team_membership_and_purpose() {
        let c = consent(
            "c",
            "2025-01-01",
            json!({"type": "deny", "provision": [
                {"type": "permit", "actor": [{"reference": {"reference": "CareTeam/team"}}],
                 "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}
            ]}),
        );
        let e = ConsentEngine::default();
        assert!(decide(&e, &clinic(), &condition(&[]), std::slice::from_ref(&c)).is_permit());
        let mut payer = clinic();
        payer.purpose_of_use = Some("HPAYMT".into());
        assert!(!decide(&e, &payer, &condition(&[]), &[c]).is_permit());
    }

    #[test]
    fn sensitive_data_needs_an_explicit_permit() {
        let e = ConsentEngine::default();
        // No consent: ordinary data follows opt-out, SUD data stays hidden.
        assert!(decide(&e, &clinic(), &condition(&[]), &[]).is_permit());
        let d = decide(&e, &clinic(), &condition(&["SUD", "42CFRPart2"]), &[]);
        assert!(!d.is_permit());
        assert_eq!(d.source, DecisionSource::NoApplicableConsent);
        // A blanket permit does not release it; one naming the label does.
        let blanket = consent("b", "2025-01-01", json!({"type": "permit"}));
        assert!(!decide(
            &e,
            &clinic(),
            &condition(&["SUD"]),
            std::slice::from_ref(&blanket)
        )
        .is_permit());
        let explicit = consent(
            "x",
            "2025-02-01",
            json!({"type": "deny", "provision": [
                {"type": "permit", "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUD"}],
                 "actor": [{"reference": {"reference": "Organization/clinic"}}]}
            ]}),
        );
        assert!(decide(
            &e,
            &clinic(),
            &condition(&["SUD"]),
            std::slice::from_ref(&explicit)
        )
        .is_permit());
        // For Part 2 data any deny wins, even an older one.
        let older_deny = consent("d", "2024-01-01", json!({"type": "deny"}));
        assert!(!decide(
            &e,
            &clinic(),
            &condition(&["SUD", "42CFRPart2"]),
            &[explicit.clone(), older_deny.clone()]
        )
        .is_permit());
        // For ordinary data the most recent wins.
        assert!(decide(&e, &clinic(), &condition(&[]), &[blanket, older_deny]).is_permit());
    }

    #[test]
    fn opt_in_periods_classes_and_inactive_consents() {
        let e = ConsentEngine {
            default: DefaultPolicy::OptIn,
            ..ConsentEngine::default()
        };
        assert!(!decide(&e, &clinic(), &condition(&[]), &[]).is_permit());
        let expired = consent(
            "e",
            "2024-01-01",
            json!({"type": "permit", "period": {"end": "2024-12-31"}}),
        );
        assert!(!decide(
            &e,
            &clinic(),
            &condition(&[]),
            std::slice::from_ref(&expired)
        )
        .is_permit());
        let mut inactive = consent("i", "2025-01-01", json!({"type": "permit"}));
        inactive["status"] = json!("inactive");
        assert!(!decide(&e, &clinic(), &condition(&[]), &[inactive]).is_permit());
        let conditions_only = consent(
            "k",
            "2025-01-01",
            json!({"type": "deny", "provision": [
                {"type": "permit", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]}
            ]}),
        );
        assert!(decide(
            &e,
            &clinic(),
            &condition(&[]),
            std::slice::from_ref(&conditions_only)
        )
        .is_permit());
        let plan =
            json!({"resourceType": "CarePlan", "id": "cp", "subject": {"reference": "Patient/p"}});
        assert!(!decide(&e, &clinic(), &plan, &[conditions_only]).is_permit());
    }

    #[test]
    fn confidentiality_is_a_high_water_mark_and_data_periods_apply() {
        let e = ConsentEngine::default();
        let up_to_normal = consent(
            "n",
            "2025-01-01",
            json!({"type": "deny", "provision": [
                {"type": "permit", "securityLabel": [{"system": CONFIDENTIALITY, "code": "N"}]}
            ]}),
        );
        let mut restricted = condition(&[]);
        restricted["meta"]["security"] = json!([{"system": CONFIDENTIALITY, "code": "R"}]);
        let mut normal = condition(&[]);
        normal["meta"]["security"] = json!([{"system": CONFIDENTIALITY, "code": "M"}]);
        assert!(decide(&e, &clinic(), &normal, std::slice::from_ref(&up_to_normal)).is_permit());
        assert!(!decide(&e, &clinic(), &restricted, &[up_to_normal]).is_permit());
        let old_data_hidden = consent(
            "dp",
            "2025-01-01",
            json!({"type": "permit", "provision": [
                {"type": "deny", "dataPeriod": {"end": "2023-12-31"}}
            ]}),
        );
        let mut old = condition(&[]);
        old["recordedDate"] = json!("2020-01-01");
        assert!(!decide(&e, &clinic(), &old, std::slice::from_ref(&old_data_hidden)).is_permit());
        assert!(decide(&e, &clinic(), &condition(&[]), &[old_data_hidden]).is_permit());
    }

    #[test]
    fn break_the_glass() {
        let e = ConsentEngine::default();
        let deny = consent("d", "2025-01-01", json!({"type": "deny"}));
        let mut er = clinic();
        er.purpose_of_use = Some("ETREAT".into());
        let d = decide(&e, &er, &condition(&["PSY"]), &[deny]);
        assert!(d.is_permit());
        assert_eq!(d.source, DecisionSource::BreakTheGlass);
    }
}
