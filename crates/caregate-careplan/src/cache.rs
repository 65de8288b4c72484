//! Built shared views kept in memory until something they draw on changes.
//!
//! Reading a view costs a few dozen index searches and the merge; an unchanged person's
//! view is served from here instead. Validity is tracked with generation counters, not by
//! rebuilding anything on ingest (ingesting one resource never rebuilds a view):
//!
//! - one counter per *bucket* of patients (a patient reference hashes to one of
//!   [`BUCKETS`] buckets, so memory stays bounded however many patients there are; two
//!   patients sharing a bucket only cost each other a spurious rebuild), bumped for every
//!   `Patient/{id}` a committed resource references anywhere (subject, `for`, Appointment
//!   participants, Consent.patient, Provenance targets, ...);
//! - one counter per bucket of *linking keys* ([`crate::linking::linking_keys`]: each
//!   identifier, each normalised family name with the birth date), bumped for the keys of
//!   every Patient written: a new or changed Patient can only join a person whose members
//!   share one of its keys, so registering an unrelated Patient invalidates nothing;
//! - one global counter, bumped by commits that can change who belongs to which person or
//!   what any reader may see in ways the buckets cannot follow (Linkages, CareTeams —
//!   CareTeam membership counts as the reader in consent decisions — and deletions, whose
//!   content is not at hand);
//! - a count of Patient writes, so a view whose read overlapped one is not stored.
//!
//! A reader calls [`ViewCache::begin`] *before* reading anything, takes the [`Stamp`] of the
//! members and their linking keys once it knows the person and before gathering their
//! resources, and stores the view under it. A commit racing with the read bumps a counter
//! after the snapshot, so the stored view is simply never served. Entries also expire after
//! a time to live, because the view's gap flags (overdue, no follow-up) depend on the clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Committed, SharedView};

/// Number of patient buckets (a power of two).
pub const BUCKETS: usize = 4096;

/// Where a read began (see [`ViewCache::begin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    global: u64,
    patient_writes: u64,
}

/// The generations a cached view was built under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    begin: Begin,
    members: Vec<(usize, u64)>,
    keys: Vec<(usize, u64)>,
}

struct Cached<V> {
    stamp: Stamp,
    at: Instant,
    value: V,
}

/// See the module docs. `V` is whatever the caller keeps per view (cheap to clone: wrap
/// large values in an `Arc`).
pub struct ViewCache<V> {
    enabled: AtomicBool,
    global: AtomicU64,
    patient_writes: AtomicU64,
    buckets: Box<[AtomicU64]>,
    key_buckets: Box<[AtomicU64]>,
    entries: Mutex<HashMap<String, Cached<V>>>,
    ttl: Duration,
    capacity: usize,
}

impl<V> std::fmt::Debug for ViewCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewCache")
            .field("enabled", &self.enabled.load(Ordering::Relaxed))
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<V: Clone> ViewCache<V> {
    /// A cache keeping at most `capacity` views, each for at most `ttl`.
    pub fn new(ttl: Duration, capacity: usize) -> ViewCache<V> {
        ViewCache {
            enabled: AtomicBool::new(true),
            global: AtomicU64::new(0),
            patient_writes: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            key_buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Turns caching and invalidation on or off (off: every read builds its view and
    /// commits do no bookkeeping; for measuring what the cache costs and saves).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
        self.global.fetch_add(1, Ordering::AcqRel);
        self.lock().clear();
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Call before reading anything for a view.
    pub fn begin(&self) -> Begin {
        Begin {
            global: self.global.load(Ordering::Acquire),
            patient_writes: self.patient_writes.load(Ordering::Acquire),
        }
    }

    /// The stamp for a view of `members` (`Patient/{id}`) whose Patients have the given
    /// linking keys, begun at `begin`; take it before gathering the members' resources.
    pub fn stamp(&self, begin: Begin, members: &[String], link_keys: &[String]) -> Stamp {
        let snapshot = |buckets: &[AtomicU64], indices: Vec<usize>| {
            let mut out: Vec<(usize, u64)> = indices
                .into_iter()
                .map(|b| (b, buckets[b].load(Ordering::Acquire)))
                .collect();
            out.sort_unstable();
            out.dedup();
            out
        };
        Stamp {
            begin,
            members: snapshot(&self.buckets, members.iter().map(|m| bucket(m)).collect()),
            keys: snapshot(
                &self.key_buckets,
                link_keys.iter().map(|k| key_bucket(k)).collect(),
            ),
        }
    }

    fn current(&self, stamp: &Stamp) -> bool {
        let same = |buckets: &[AtomicU64], list: &[(usize, u64)]| {
            list.iter()
                .all(|&(b, g)| buckets[b].load(Ordering::Acquire) == g)
        };
        stamp.begin.global == self.global.load(Ordering::Acquire)
            && same(&self.buckets, &stamp.members)
            && same(&self.key_buckets, &stamp.keys)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached<V>>> {
        // A panic while holding the lock leaves at worst a stale map, which the stamps
        // still guard; keep serving.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The view stored under `key`, if nothing it was built from has changed since.
    pub fn get(&self, key: &str) -> Option<V> {
        if !self.enabled() {
            return None;
        }
        let mut entries = self.lock();
        let fresh = entries
            .get(key)
            .map(|c| c.at.elapsed() < self.ttl && self.current(&c.stamp))?;
        if fresh {
            entries.get(key).map(|c| c.value.clone())
        } else {
            entries.remove(key);
            None
        }
    }

    /// Stores a view built under `stamp` (ignored when it is already out of date).
    pub fn put(&self, key: String, stamp: Stamp, value: V) {
        // A Patient written while the view was read may have joined the person after the
        // candidates were searched but before the keys were stamped: do not keep it.
        if !self.enabled()
            || !self.current(&stamp)
            || self.patient_writes.load(Ordering::Acquire) != stamp.begin.patient_writes
        {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let ttl = self.ttl;
            entries.retain(|_, c| c.at.elapsed() < ttl && self.current(&c.stamp));
            if entries.len() >= self.capacity {
                // Still full of live views: start over rather than track recency.
                entries.clear();
            }
        }
        entries.insert(
            key,
            Cached {
                stamp,
                at: Instant::now(),
                value,
            },
        );
    }

    /// Records what a commit changed (see the module docs).
    pub fn invalidate(&self, committed: &[Committed<'_>]) {
        if !self.enabled() {
            return;
        }
        for c in committed {
            let Some(resource) = c.resource else {
                self.global.fetch_add(1, Ordering::AcqRel);
                continue;
            };
            if matches!(c.resource_type, "Linkage" | "CareTeam") {
                self.global.fetch_add(1, Ordering::AcqRel);
            }
            if c.resource_type == "Patient" {
                self.patient_writes.fetch_add(1, Ordering::AcqRel);
                self.bump(&format!("Patient/{}", c.id));
                for k in crate::linking::linking_keys(resource) {
                    self.key_buckets[key_bucket(&k)].fetch_add(1, Ordering::AcqRel);
                }
            }
            let mut seen: Vec<usize> = Vec::new();
            for id in c.references.iter().filter_map(|r| patient_id(r)) {
                let b = fnv(id);
                if !seen.contains(&b) {
                    seen.push(b);
                    self.buckets[b].fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    fn bump(&self, patient: &str) {
        self.buckets[bucket(patient)].fetch_add(1, Ordering::AcqRel);
    }
}

impl<V: Clone + Send> SharedView for ViewCache<V> {
    fn refresh(&self, committed: &[Committed<'_>]) {
        self.invalidate(committed);
    }
}

/// Calls two shared-view stages in turn.
pub struct BothViews(
    pub std::sync::Arc<dyn SharedView>,
    pub std::sync::Arc<dyn SharedView>,
);

impl SharedView for BothViews {
    fn refresh(&self, committed: &[Committed<'_>]) {
        self.0.refresh(committed);
        self.1.refresh(committed);
    }
}

/// The bucket of `Patient/{id}` (a base or history suffix ignored).
fn bucket(reference: &str) -> usize {
    fnv(patient_id(reference).unwrap_or(reference))
}

fn key_bucket(key: &str) -> usize {
    fnv(key)
}

/// FNV-1a, reduced to a bucket index.
fn fnv(text: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h as usize) & (BUCKETS - 1)
}

/// The id in `Patient/{id}`, `https://x/fhir/Patient/{id}` or `Patient/{id}/_history/2`.
fn patient_id(reference: &str) -> Option<&str> {
    let r = reference.split("/_history/").next().unwrap_or(reference);
    let at = r.rfind("Patient/")?;
    if at > 0 && !r[..at].ends_with('/') {
        return None;
    }
    let id = &r[at + "Patient/".len()..];
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use serde_json::Value;

    fn committed<'a>(rtype: &'a str, id: &'a str, r: Option<&'a Value>) -> Committed<'a> {
        Committed {
            resource_type: rtype,
            id,
            version: 1,
            resource: r,
            references: r
                .map(caregate_core::json::reference_values)
                .unwrap_or_default(),
        }
    }

    fn cache() -> ViewCache<u32> {
        ViewCache::new(Duration::from_secs(60), 8)
    }

    #[test]
    fn served_until_a_member_changes() {
        let c = cache();
        let members = vec!["Patient/a".to_string(), "Patient/b".to_string()];
        let g = c.begin();
        c.put("k".into(), c.stamp(g, &members, &[]), 7);
        assert_eq!(c.get("k"), Some(7));
        // Another patient's data does not invalidate this view.
        let other = json!({"resourceType": "Goal", "subject": {"reference": "Patient/zz-other"}});
        assert_ne!(bucket("Patient/zz-other"), bucket("Patient/a"));
        assert_ne!(bucket("Patient/zz-other"), bucket("Patient/b"));
        c.invalidate(&[committed("Goal", "g1", Some(&other))]);
        assert_eq!(c.get("k"), Some(7));
        // A member's Appointment (patient named only as a participant) does.
        let appt = json!({"resourceType": "Appointment",
            "participant": [{"actor": {"reference": "https://gw.example/fhir/Patient/b"}}]});
        c.invalidate(&[committed("Appointment", "x", Some(&appt))]);
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn linking_changes_and_deletions_invalidate_everything() {
        let c = cache();
        let members = vec!["Patient/a".to_string()];
        for (rtype, resource) in [
            ("Linkage", Some(json!({"resourceType": "Linkage"}))),
            ("CareTeam", Some(json!({"resourceType": "CareTeam"}))),
            ("Goal", None),
        ] {
            let g = c.begin();
            c.put("k".into(), c.stamp(g, &members, &[]), 1);
            assert_eq!(c.get("k"), Some(1));
            c.invalidate(&[committed(rtype, "z", resource.as_ref())]);
            assert_eq!(c.get("k"), None, "{rtype}");
        }
    }

    #[test]
    fn a_view_built_across_a_commit_is_not_stored() {
        let c = cache();
        let members = vec!["Patient/a".to_string()];
        let g = c.begin();
        let stamp = c.stamp(g, &members, &[]);
        let goal = json!({"resourceType": "Goal", "subject": {"reference": "Patient/a"}});
        c.invalidate(&[committed("Goal", "g", Some(&goal))]);
        c.put("k".into(), stamp, 1);
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn bounded_expiring_and_switchable() {
        let c: ViewCache<u32> = ViewCache::new(Duration::from_millis(0), 2);
        let g = c.begin();
        c.put("k".into(), c.stamp(g, &[], &[]), 1);
        assert_eq!(c.get("k"), None, "expired");
        let c = cache();
        for i in 0..20 {
            let g = c.begin();
            c.put(format!("k{i}"), c.stamp(g, &[], &[]), i);
        }
        assert!(c.lock().len() <= 8);
        c.set_enabled(false);
        let g = c.begin();
        c.put("off".into(), c.stamp(g, &[], &[]), 1);
        assert_eq!(c.get("off"), None);
    }

    #[test]
    fn only_patients_sharing_a_linking_key_invalidate() {
        use crate::linking::linking_keys;
        let c = cache();
        let member = json!({"resourceType": "Patient", "id": "a",
            "identifier": [{"system": "urn:insurer", "value": "M-1"}],
            "name": [{"family": "Rivera", "given": ["Alex"]}], "birthDate": "1990-06-01"});
        let keys = linking_keys(&member);
        let members = vec!["Patient/a".to_string()];
        let store = |c: &ViewCache<u32>| {
            let g = c.begin();
            c.put("k".into(), c.stamp(g, &members, &keys), 1);
            assert_eq!(c.get("k"), Some(1));
        };
        store(&c);
        // An unrelated registration leaves the view alone.
        let stranger = json!({"resourceType": "Patient", "id": "z",
            "identifier": [{"system": "urn:insurer", "value": "M-999"}],
            "name": [{"family": "Okafor", "given": ["Tom"]}], "birthDate": "1971-01-01"});
        c.invalidate(&[committed("Patient", "z", Some(&stranger))]);
        assert_eq!(c.get("k"), Some(1));
        // A Patient sharing the insurer id, or the name and birth date, may join: invalidated.
        let same_id = json!({"resourceType": "Patient", "id": "b",
            "identifier": [{"system": "urn:insurer", "value": "M-1"}]});
        c.invalidate(&[committed("Patient", "b", Some(&same_id))]);
        assert_eq!(c.get("k"), None);
        store(&c);
        let same_name = json!({"resourceType": "Patient", "id": "d",
            "name": [{"family": "RIVERA", "given": ["A"]}], "birthDate": "1990-06-01"});
        c.invalidate(&[committed("Patient", "d", Some(&same_name))]);
        assert_eq!(c.get("k"), None);
        // A change to the member itself invalidates.
        store(&c);
        c.invalidate(&[committed("Patient", "a", Some(&member))]);
        assert_eq!(c.get("k"), None);
        // A view whose read overlapped any Patient write is not stored.
        let g = c.begin();
        c.invalidate(&[committed("Patient", "z", Some(&stranger))]);
        c.put("k".into(), c.stamp(g, &members, &keys), 1);
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn patient_ids_from_references() {
        assert_eq!(patient_id("Patient/a"), Some("a"));
        assert_eq!(patient_id("https://x/fhir/Patient/a/_history/3"), Some("a"));
        assert_eq!(patient_id("Group/Patient/a"), Some("a"));
        assert_eq!(patient_id("RelatedPatient/a"), None);
        assert_eq!(patient_id("Patient/"), None);
    }
}
