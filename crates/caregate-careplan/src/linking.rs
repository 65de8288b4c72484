//! Patient linking: which source Patients are the same person.
//!
//! Pure functions over `serde_json::Value` Patients. Rules, strongest first:
//!
//! 1. **certain** — both Patients carry the same identifier (system and value equal) from a
//!    system listed in [`LinkConfig::trusted_systems`].
//! 2. **probable** — normalised family and first given name equal (case, accents, punctuation
//!    and whitespace folded), `birthDate` and `gender` equal, plus at least one of phone,
//!    email or address (first line + postal code) equal.
//! 3. **possible** — normalised name and `birthDate` equal, nothing more.
//!
//! Two Patients that carry *different* values from the same trusted system are never matched
//! (the trusted identifier says they are different people), whatever their demographics.

use crate::disjoint::{find, union};
use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `http://hl7.org/fhir/StructureDefinition/match-grade` (R4 `Patient/$match` results).
pub const MATCH_GRADE_EXTENSION: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";

/// Linking configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkConfig {
    /// Identifier systems shared across sources that identify a person (national id,
    /// insurer member id, ...). Source MRN systems do not belong here.
    pub trusted_systems: Vec<String>,
}

/// The grade of a match, strongest first (so `Ord` sorts certain before possible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchGrade {
    Certain,
    Probable,
    Possible,
}

impl MatchGrade {
    /// The code from the R4 `match-grade` value set.
    pub fn code(self) -> &'static str {
        match self {
            MatchGrade::Certain => "certain",
            MatchGrade::Probable => "probable",
            MatchGrade::Possible => "possible",
        }
    }

    /// Certain and probable matches join a person; possible ones are only reported.
    pub fn joins(self) -> bool {
        matches!(self, MatchGrade::Certain | MatchGrade::Probable)
    }
}

/// One match between two Patients.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub grade: MatchGrade,
    /// `1.0` certain, `0.8`–`0.95` probable (more agreeing contact kinds score higher),
    /// `0.5` possible. Used as `Bundle.entry.search.score`.
    pub score: f64,
    /// Why (rule names and the kinds of data that agreed; never the identifying values).
    pub reasons: Vec<String>,
}

impl Match {
    /// The R4 match-grade extension for `Bundle.entry.search.extension`.
    pub fn grade_extension(&self) -> Value {
        json!({ "url": MATCH_GRADE_EXTENSION, "valueCode": self.grade.code() })
    }

    /// `Bundle.entry.search` for a `Patient/$match` result entry.
    pub fn search_element(&self) -> Value {
        json!({
            "extension": [self.grade_extension()],
            "mode": "match",
            "score": self.score,
        })
    }
}

/// One person: the linked Patients (`Patient/{id}`, sorted) and the links found.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub members: Vec<String>,
    /// `(a, b, match)` with `a < b`. Certain and probable links join the members; possible
    /// links are reported here (on the persons of both Patients) but do not join.
    pub links: Vec<(String, String, Match)>,
}

impl Person {
    /// The Patient the shared view is about (the first member).
    pub fn subject(&self) -> Option<&str> {
        self.members.first().map(String::as_str)
    }
}

/// A manual correction by an authorised client: force a link between two Patients
/// (`link: true`) or forbid one (`link: false`, an unlink). Unlinks win over every rule, so
/// a wrong link is undone without touching any source's Patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOverride {
    /// `Patient/{id}`
    pub a: String,
    /// `Patient/{id}`
    pub b: String,
    pub link: bool,
}

impl Person {
    /// `Patient.link` entries for `member` on the caregate view of that Patient: one
    /// `seealso` per other member (the sources' own resources are never rewritten).
    pub fn patient_links(&self, member: &str) -> Vec<Value> {
        if !self.members.iter().any(|m| m == member) {
            return Vec::new();
        }
        self.members
            .iter()
            .filter(|m| m.as_str() != member)
            .map(|m| json!({ "other": { "reference": m }, "type": "seealso" }))
            .collect()
    }
}

/// The keys through which a Patient can be linked to others: each identifier
/// (`id|system|value`, trusted or not: a superset is safe) and each normalised family name
/// with the birth date (`name|family|birthDate`). Two Patients that share no key never
/// match by any rule (see [`match_grade`]), which lets the view cache ignore Patients
/// written elsewhere.
pub fn linking_keys(patient: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    for ident in array(patient, "identifier") {
        if let (Some(system), Some(value)) = (str_at(ident, "system"), str_at(ident, "value")) {
            keys.push(format!("id|{system}|{}", value.trim()));
        }
    }
    if let Some(birth) = str_at(patient, "birthDate").map(str::trim) {
        for name in array(patient, "name") {
            let family = str_at(name, "family").map(normalize_name);
            if let Some(family) = family.filter(|f| !f.is_empty()) {
                keys.push(format!("name|{family}|{birth}"));
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Grades how likely `a` and `b` are the same person; `None` when no rule matches.
pub fn match_grade(a: &Value, b: &Value, cfg: &LinkConfig) -> Option<Match> {
    // Rule 1: trusted identifiers.
    let ids_a = trusted_identifiers(a, cfg);
    let ids_b = trusted_identifiers(b, cfg);
    let mut shared: Vec<&str> = Vec::new();
    let mut contradicting = false;
    for (system, values_a) in &ids_a {
        if let Some(values_b) = ids_b.get(system) {
            if values_a.iter().any(|v| values_b.contains(v)) {
                shared.push(system.as_str());
            } else {
                contradicting = true;
            }
        }
    }
    if !shared.is_empty() {
        shared.sort_unstable();
        shared.dedup();
        return Some(Match {
            grade: MatchGrade::Certain,
            score: 1.0,
            reasons: shared
                .iter()
                .map(|s| format!("shared identifier from trusted system {s}"))
                .collect(),
        });
    }
    if contradicting {
        return None;
    }

    // Rules 2 and 3: demographics.
    let names_a = names(a);
    let names_b = names(b);
    if !names_a.iter().any(|n| names_b.contains(n)) {
        return None;
    }
    let birth_a = str_at(a, "birthDate").map(str::trim);
    let birth_b = str_at(b, "birthDate").map(str::trim);
    match (birth_a, birth_b) {
        (Some(x), Some(y)) if !x.is_empty() && x == y => {}
        _ => return None,
    }
    let mut reasons = vec!["name".to_string(), "birthDate".to_string()];
    let gender_a = str_at(a, "gender");
    let gender_equal = gender_a.is_some() && gender_a == str_at(b, "gender");
    let mut contacts = Vec::new();
    if intersects(&telecoms(a, "phone"), &telecoms(b, "phone")) {
        contacts.push("phone");
    }
    if intersects(&telecoms(a, "email"), &telecoms(b, "email")) {
        contacts.push("email");
    }
    if intersects(&addresses(a), &addresses(b)) {
        contacts.push("address");
    }
    if gender_equal && !contacts.is_empty() {
        reasons.push("gender".into());
        reasons.extend(contacts.iter().map(|c| c.to_string()));
        let extra = (contacts.len() - 1) as f64;
        return Some(Match {
            grade: MatchGrade::Probable,
            score: (80.0 + 5.0 * extra.min(3.0)) / 100.0,
            reasons,
        });
    }
    Some(Match {
        grade: MatchGrade::Possible,
        score: 0.5,
        reasons,
    })
}

/// Groups Patients into persons. Patients without an id are skipped (they cannot be
/// referenced). Output is deterministic: members sorted, persons sorted by first member.
pub fn group_people(patients: &[Value], cfg: &LinkConfig) -> Vec<Person> {
    group_people_with(patients, cfg, &[])
}

/// [`group_people`] with manual corrections applied. A manual link joins (grade certain,
/// reason "manual link"). A manual unlink beats every rule: the two Patients never end up in
/// the same person, not even through other members (a join that would bring an unlinked pair
/// together is skipped, and reported in `links` like a possible match). Joins are made
/// strongest first — manual links, then certain, then probable — so a rule never outvotes a
/// manual decision. When several overrides name one pair the last one wins (pass them
/// oldest first). Overrides naming Patients not in `patients` are ignored.
pub fn group_people_with(
    patients: &[Value],
    cfg: &LinkConfig,
    overrides: &[LinkOverride],
) -> Vec<Person> {
    let mut by_ref: BTreeMap<String, &Value> = BTreeMap::new();
    for p in patients {
        if let Some(r) = patient_ref(p) {
            by_ref.entry(r).or_insert(p);
        }
    }
    let refs: Vec<&String> = by_ref.keys().collect();
    let index: BTreeMap<&str, usize> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| (r.as_str(), i))
        .collect();
    // The current decision per pair (indices ascending), last override winning.
    let mut decisions: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    for o in overrides {
        let (Some(&x), Some(&y)) = (index.get(o.a.as_str()), index.get(o.b.as_str())) else {
            continue;
        };
        if x != y {
            decisions.insert((x.min(y), x.max(y)), o.link);
        }
    }
    let forbidden: Vec<(usize, usize)> = decisions
        .iter()
        .filter(|(_, link)| !**link)
        .map(|(pair, _)| *pair)
        .collect();
    let n = refs.len();
    let mut links: Vec<(usize, usize, Match)> = Vec::new();
    for i in 0..n {
        for j in (i + 1)..n {
            let (Some(a), Some(b)) = (by_ref.get(refs[i]), by_ref.get(refs[j])) else {
                continue;
            };
            let found = match decisions.get(&(i, j)) {
                Some(false) => None,
                Some(true) => Some(Match {
                    grade: MatchGrade::Certain,
                    score: 1.0,
                    reasons: vec![MANUAL_LINK_REASON.into()],
                }),
                None => match_grade(a, b, cfg),
            };
            if let Some(m) = found {
                links.push((i, j, m));
            }
        }
    }
    // Strongest first: manual links, then by grade; ties in pair order (deterministic).
    let mut order: Vec<usize> = (0..links.len()).collect();
    order.sort_by_key(|&k| {
        let (i, j, m) = &links[k];
        (
            m.reasons.first().map(String::as_str) != Some(MANUAL_LINK_REASON),
            m.grade,
            *i,
            *j,
        )
    });
    let mut parent: Vec<usize> = (0..n).collect();
    for k in order {
        let (i, j, m) = &links[k];
        if !m.grade.joins() {
            continue;
        }
        let (ri, rj) = (find(&mut parent, *i), find(&mut parent, *j));
        if ri == rj {
            continue;
        }
        let separates = forbidden.iter().any(|&(x, y)| {
            let (rx, ry) = (find(&mut parent, x), find(&mut parent, y));
            (rx == ri && ry == rj) || (rx == rj && ry == ri)
        });
        if !separates {
            union(&mut parent, *i, *j);
        }
    }
    let root_of: Vec<usize> = (0..n).map(|i| find(&mut parent, i)).collect();
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, root) in root_of.iter().enumerate() {
        groups.entry(*root).or_default().push(i);
    }
    let mut people: Vec<Person> = groups
        .into_iter()
        .map(|(root, members)| Person {
            members: members.iter().map(|&i| refs[i].clone()).collect(),
            links: links
                .iter()
                .filter(|(i, j, _)| root_of[*i] == root || root_of[*j] == root)
                .map(|(i, j, m)| (refs[*i].clone(), refs[*j].clone(), m.clone()))
                .collect(),
        })
        .collect();
    people.sort_by(|x, y| x.members.cmp(&y.members));
    people
}

/// The reason recorded on a [`Match`] made by a manual link.
pub const MANUAL_LINK_REASON: &str = "manual link";

/// `meta.tag` system marking a `Linkage` as a manual linking decision recorded by caregate
/// (`$link` / `$unlink`); codes `link` and `unlink`.
pub const LINK_DECISION_SYSTEM: &str = "https://caregate.example.org/fhir/CodeSystem/link-decision";

/// The id of the `Linkage` recording the decision about one pair of Patients: derived from
/// the pair (order-independent), so every later decision about the pair is a new version
/// of the same resource and its history is the pair's decision log.
pub fn linkage_id(a: &str, b: &str) -> String {
    use sha2::{Digest, Sha256};
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha256::new();
    h.update(lo.as_bytes());
    h.update([0u8]);
    h.update(hi.as_bytes());
    format!("patient-link-{}", &hex::encode(h.finalize())[..32])
}

/// The R4 `Linkage` recording a manual decision: both Patients as `alternate` items (neither
/// is the source of truth; the sources keep their own records), `active` true for a link
/// and false for an unlink, tagged with [`LINK_DECISION_SYSTEM`] so that only decisions
/// made through caregate's operations are applied. `author` is the deciding organisation.
pub fn linkage_resource(a: &str, b: &str, link: bool, author: Option<&str>) -> Value {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut v = json!({
        "resourceType": "Linkage",
        "id": linkage_id(a, b),
        "meta": {"tag": [{
            "system": LINK_DECISION_SYSTEM,
            "code": if link { "link" } else { "unlink" },
            "display": if link { "Same person (manual link)" } else { "Not the same person (manual unlink)" },
        }]},
        "active": link,
        "item": [
            {"type": "alternate", "resource": {"reference": lo}},
            {"type": "alternate", "resource": {"reference": hi}},
        ],
    });
    if let (Some(author), Some(obj)) = (author, v.as_object_mut()) {
        obj.insert("author".into(), json!({ "reference": author }));
    }
    v
}

/// The decision a stored `Linkage` records, when it is one of caregate's (tagged with
/// [`LINK_DECISION_SYSTEM`]) between exactly two Patients. An `unlink` tag or
/// `active: false` is an unlink.
pub fn override_from_linkage(linkage: &Value) -> Option<LinkOverride> {
    let code = array(linkage.get("meta").unwrap_or(&Value::Null), "tag")
        .iter()
        .find(|t| str_at(t, "system") == Some(LINK_DECISION_SYSTEM))
        .and_then(|t| str_at(t, "code"))?;
    let patients: Vec<String> = array(linkage, "item")
        .iter()
        .filter_map(|i| i.get("resource").and_then(|r| str_at(r, "reference")))
        .map(|r| r.split("/_history/").next().unwrap_or(r))
        .filter_map(|r| {
            let at = r.rfind("Patient/")?;
            let id = &r[at + "Patient/".len()..];
            (!id.is_empty() && !id.contains('/')).then(|| format!("Patient/{id}"))
        })
        .collect();
    let [a, b] = <[String; 2]>::try_from(patients).ok()?;
    if a == b {
        return None;
    }
    let active = linkage.get("active").and_then(Value::as_bool) != Some(false);
    Some(LinkOverride {
        a,
        b,
        link: code == "link" && active,
    })
}

/// `Patient/$match`: the Patients matching `candidate`, best first (score descending, then
/// reference). `only_certain` keeps certain matches only (R4 `onlyCertainMatches`); at most
/// `count` results. A stored Patient with the candidate's own id is not matched with itself.
pub fn match_candidates(
    candidate: &Value,
    patients: &[Value],
    cfg: &LinkConfig,
    only_certain: bool,
    count: usize,
) -> Vec<(String, Match)> {
    let own = patient_ref(candidate);
    let mut out: Vec<(String, Match)> = patients
        .iter()
        .filter_map(|p| {
            let r = patient_ref(p)?;
            if own.as_deref() == Some(r.as_str()) {
                return None;
            }
            let m = match_grade(candidate, p, cfg)?;
            if only_certain && m.grade != MatchGrade::Certain {
                return None;
            }
            Some((r, m))
        })
        .collect();
    out.sort_by(|(ra, a), (rb, b)| {
        b.score
            .total_cmp(&a.score)
            .then(a.grade.cmp(&b.grade))
            .then(ra.cmp(rb))
    });
    out.dedup_by(|x, y| x.0 == y.0);
    out.truncate(count);
    out
}

/// Folds case, accents, punctuation and whitespace: `"  García-López "` → `"garcia lopez"`.
pub fn normalize_name(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        let mut buf = [0u8; 4];
        let folded = caregate_core::fold_latin(c).unwrap_or_else(|| c.encode_utf8(&mut buf));
        for f in folded.chars() {
            if f.is_alphanumeric() {
                out.push(f);
            } else if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
        }
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

fn patient_ref(p: &Value) -> Option<String> {
    let id = str_at(p, "id")?;
    if id.is_empty() {
        return None;
    }
    Some(format!("Patient/{id}"))
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

fn trusted_identifiers(p: &Value, cfg: &LinkConfig) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ident in array(p, "identifier") {
        let (Some(system), Some(value)) = (str_at(ident, "system"), str_at(ident, "value")) else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() || !cfg.trusted_systems.iter().any(|t| t == system) {
            continue;
        }
        out.entry(system.to_string())
            .or_default()
            .push(value.to_string());
    }
    out
}

/// `(family, first given)` pairs, normalised; names lacking either part are ignored.
fn names(p: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in array(p, "name") {
        if str_at(name, "use") == Some("old") {
            continue;
        }
        let family = str_at(name, "family")
            .map(normalize_name)
            .unwrap_or_default();
        let given = array(name, "given")
            .first()
            .and_then(Value::as_str)
            .map(normalize_name)
            .unwrap_or_default();
        if !family.is_empty() && !given.is_empty() {
            out.push((family, given));
        }
    }
    out
}

fn telecoms(p: &Value, system: &str) -> Vec<String> {
    array(p, "telecom")
        .iter()
        .filter(|t| str_at(t, "system") == Some(system))
        .filter_map(|t| str_at(t, "value"))
        .filter_map(|v| {
            if system == "phone" {
                let digits: String = v.chars().filter(char::is_ascii_digit).collect();
                if digits.len() < 7 {
                    return None;
                }
                // Last ten digits: "+1 (555) 555-5555" and "555.555.5555" agree.
                let skip = digits.len().saturating_sub(10);
                Some(digits[skip..].to_string())
            } else {
                let e = v.trim().to_lowercase();
                let e = e.strip_prefix("mailto:").unwrap_or(&e).to_string();
                (!e.is_empty()).then_some(e)
            }
        })
        .collect()
}

/// `first line | postal code`, normalised; addresses lacking either are ignored.
fn addresses(p: &Value) -> Vec<String> {
    array(p, "address")
        .iter()
        .filter(|a| str_at(a, "use") != Some("old"))
        .filter_map(|a| {
            let line = array(a, "line").first().and_then(Value::as_str)?;
            let line = normalize_name(line)
                .split(' ')
                .map(abbreviate)
                .collect::<Vec<_>>()
                .join(" ");
            let postal: String = str_at(a, "postalCode")?
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            // US ZIP+4 compares on the first five digits.
            let postal = if postal.len() == 9 && postal.bytes().all(|b| b.is_ascii_digit()) {
                postal[..5].to_string()
            } else {
                postal
            };
            (!line.is_empty() && !postal.is_empty()).then(|| format!("{line}|{postal}"))
        })
        .collect()
}

fn abbreviate(word: &str) -> &str {
    match word {
        "street" => "st",
        "avenue" => "ave",
        "road" => "rd",
        "drive" => "dr",
        "boulevard" => "blvd",
        "lane" => "ln",
        "court" => "ct",
        "place" => "pl",
        "apartment" => "apt",
        other => other,
    }
}

fn intersects(a: &[String], b: &[String]) -> bool {
    a.iter().any(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LinkConfig {
        LinkConfig {
            trusted_systems: vec!["urn:oid:2.16.840.1.113883.4.1".into()],
        }
    }

    fn patient(id: &str, mrn_system: &str, family: &str, given: &str) -> Value {
        json!({
            "resourceType": "Patient",
            "id": id,
            "identifier": [{"system": mrn_system, "value": format!("MRN-{id}")}],
            "name": [{"family": family, "given": [given]}],
            "gender": "female",
            "birthDate": "1980-03-04",
        })
    }

    fn with_ssn(mut p: Value, ssn: &str) -> Value {
        if let Some(ids) = p.get_mut("identifier").and_then(Value::as_array_mut) {
            ids.push(json!({"system": "urn:oid:2.16.840.1.113883.4.1", "value": ssn}));
        }
        p
    }

    fn with(mut p: Value, key: &str, v: Value) -> Value {
        if let Some(o) = p.as_object_mut() {
            o.insert(key.into(), v);
        }
        p
    }

    #[test]
    fn certain_by_trusted_identifier_across_two_mrn_systems() {
        let a = with_ssn(patient("a", "urn:ehr:psych", "Doe", "Jane"), "123-45-6789");
        // Different name spelling and birth date: the identifier alone decides.
        let b = with(
            with_ssn(patient("b", "urn:ehr:pcp", "Smith", "J"), "123-45-6789"),
            "birthDate",
            json!("1980-03-05"),
        );
        let m = match_grade(&a, &b, &cfg()).expect("match");
        assert_eq!(m.grade, MatchGrade::Certain);
        assert_eq!(m.score, 1.0);
        assert!(m.reasons[0].contains("trusted system"));
        // MRNs from untrusted systems never make a certain match.
        let c = with(
            patient("c", "urn:ehr:psych", "Other", "Person"),
            "identifier",
            json!([{"system": "urn:ehr:psych", "value": "MRN-a"}]),
        );
        assert_eq!(match_grade(&a, &c, &LinkConfig::default()), None);
        let people = group_people(&[a, b], &cfg());
        assert_eq!(people.len(), 1);
        assert_eq!(people[0].members, vec!["Patient/a", "Patient/b"]);
        assert_eq!(people[0].subject(), Some("Patient/a"));
        assert_eq!(people[0].links.len(), 1);
    }

    #[test]
    fn probable_by_demographics() {
        let a = with(
            patient("a", "urn:ehr:psych", "Doe", "Jane"),
            "telecom",
            json!([{"system": "phone", "value": "+1 (555) 123-4567"}]),
        );
        let b = with(
            patient("b", "urn:ehr:pcp", "DOE", "jane"),
            "telecom",
            json!([{"system": "phone", "value": "555.123.4567"}, {"system": "email", "value": "x@y.org"}]),
        );
        let m = match_grade(&a, &b, &cfg()).expect("match");
        assert_eq!(m.grade, MatchGrade::Probable);
        assert!(m.reasons.contains(&"phone".to_string()));
        assert_eq!(group_people(&[b.clone(), a.clone()], &cfg()).len(), 1);

        let c = with(
            patient("c", "urn:ehr:cm", "Doe", "Jane"),
            "address",
            json!([{"line": ["12 Main Street"], "postalCode": "02139-1234"}]),
        );
        let d = with(
            patient("d", "urn:ehr:peer", "Doe", "Jane"),
            "address",
            json!([{"line": ["12  main st"], "postalCode": "02139"}]),
        );
        assert_eq!(
            match_grade(&c, &d, &cfg()).map(|m| m.grade),
            Some(MatchGrade::Probable)
        );
        // Gender disagreeing → only possible.
        let e = with(d.clone(), "gender", json!("male"));
        assert_eq!(
            match_grade(&c, &e, &cfg()).map(|m| m.grade),
            Some(MatchGrade::Possible)
        );
    }

    #[test]
    fn possible_is_reported_not_joined() {
        let a = patient("a", "urn:ehr:psych", "Doe", "Jane");
        let b = patient("b", "urn:ehr:pcp", "Doe", "Jane");
        let m = match_grade(&a, &b, &cfg()).expect("match");
        assert_eq!(m.grade, MatchGrade::Possible);
        assert_eq!(m.score, 0.5);
        let people = group_people(&[a, b], &cfg());
        assert_eq!(people.len(), 2);
        for p in &people {
            assert_eq!(p.members.len(), 1);
            assert_eq!(p.links.len(), 1);
            assert_eq!(p.links[0].2.grade, MatchGrade::Possible);
        }
    }

    #[test]
    fn wrong_link_not_joined() {
        // Same demographics and phone, but the trusted identifier says different people
        // (e.g. twins sharing a phone number).
        let tel = json!([{"system": "phone", "value": "5551234567"}]);
        let a = with(
            with_ssn(patient("a", "urn:ehr:psych", "Doe", "Jane"), "111-11-1111"),
            "telecom",
            tel.clone(),
        );
        let b = with(
            with_ssn(patient("b", "urn:ehr:pcp", "Doe", "Jane"), "222-22-2222"),
            "telecom",
            tel,
        );
        assert_eq!(match_grade(&a, &b, &cfg()), None);
        assert_eq!(group_people(&[a, b], &cfg()).len(), 2);
        // Different birth dates → no match at all.
        let c = patient("c", "urn:ehr:psych", "Doe", "Jane");
        let d = with(
            patient("d", "urn:ehr:pcp", "Doe", "Jane"),
            "birthDate",
            json!("1981-03-04"),
        );
        assert_eq!(match_grade(&c, &d, &cfg()), None);
        // Different given name → no match.
        let e = patient("e", "urn:ehr:pcp", "Doe", "Joan");
        assert_eq!(match_grade(&c, &e, &cfg()), None);
    }

    #[test]
    fn manual_link_and_unlink() {
        let tel = json!([{"system": "phone", "value": "5551234567"}]);
        let a = with(
            patient("a", "urn:ehr:psych", "Doe", "Jane"),
            "telecom",
            tel.clone(),
        );
        let b = with(patient("b", "urn:ehr:pcp", "Doe", "Jane"), "telecom", tel);
        let c = patient("c", "urn:ehr:cm", "Roe", "Janet");
        let pats = [a, b, c];
        assert_eq!(group_people(&pats, &cfg()).len(), 2);
        // Undo the wrong probable link: both Patients stand alone again, nothing is lost.
        let unlink = LinkOverride {
            a: "Patient/b".into(),
            b: "Patient/a".into(),
            link: false,
        };
        let people = group_people_with(&pats, &cfg(), std::slice::from_ref(&unlink));
        assert_eq!(people.len(), 3);
        assert!(people.iter().all(|p| p.links.is_empty()));
        // A manual link joins what no rule would.
        let link = LinkOverride {
            a: "Patient/a".into(),
            b: "Patient/c".into(),
            link: true,
        };
        let people = group_people_with(&pats, &cfg(), &[unlink, link]);
        assert_eq!(people.len(), 2);
        assert_eq!(people[0].members, vec!["Patient/a", "Patient/c"]);
        assert_eq!(people[0].links[0].2.reasons, vec!["manual link"]);
        assert_eq!(
            people[0].patient_links("Patient/a"),
            vec![json!({"other": {"reference": "Patient/c"}, "type": "seealso"})]
        );
        assert!(people[0].patient_links("Patient/b").is_empty());
    }

    #[test]
    fn unlink_beats_every_rule_even_through_other_members() {
        // a, b and c share the insurer id: one person by rule.
        let a = with_ssn(patient("a", "urn:ehr:psych", "Doe", "Jane"), "123");
        let b = with_ssn(patient("b", "urn:ehr:pcp", "Doe", "Jane"), "123");
        let c = with_ssn(patient("c", "urn:ehr:cm", "Doe", "Jane"), "123");
        let pats = [a, b, c];
        assert_eq!(group_people(&pats, &cfg()).len(), 1);
        let unlink = |x: &str, y: &str| LinkOverride {
            a: format!("Patient/{x}"),
            b: format!("Patient/{y}"),
            link: false,
        };
        // Unlinking a–c: c may no longer join a through b either.
        let people = group_people_with(&pats, &cfg(), &[unlink("c", "a")]);
        assert_eq!(people.len(), 2, "{people:?}");
        let of = |r: &str| people.iter().find(|p| p.members.iter().any(|m| m == r));
        assert_ne!(of("Patient/a"), of("Patient/c"));
        // A later link of the same pair replaces the unlink (last decision wins).
        let relink = LinkOverride {
            link: true,
            ..unlink("a", "c")
        };
        let people = group_people_with(&pats, &cfg(), &[unlink("c", "a"), relink]);
        assert_eq!(people.len(), 1);
        // A manual link outranks the rules: a–b linked by hand, b–c unlinked, so c stands
        // alone although its identifier matches both.
        let link_ab = LinkOverride {
            link: true,
            ..unlink("a", "b")
        };
        let people = group_people_with(&pats, &cfg(), &[link_ab, unlink("b", "c")]);
        let members: Vec<Vec<String>> = people.iter().map(|p| p.members.clone()).collect();
        assert_eq!(
            members,
            vec![
                vec!["Patient/a".to_string(), "Patient/b".to_string()],
                vec!["Patient/c".to_string()]
            ]
        );
    }

    #[test]
    fn linkage_records_a_decision() {
        let l = linkage_resource("Patient/b", "Patient/a", false, Some("Organization/cm"));
        assert_eq!(l["resourceType"], "Linkage");
        assert_eq!(l["id"], linkage_id("Patient/a", "Patient/b"));
        assert_eq!(
            linkage_id("Patient/a", "Patient/b"),
            linkage_id("Patient/b", "Patient/a")
        );
        assert!(caregate_core::is_valid_id(l["id"].as_str().unwrap()));
        assert_eq!(l["active"], false);
        assert_eq!(l["item"][0]["resource"]["reference"], "Patient/a");
        assert_eq!(l["author"]["reference"], "Organization/cm");
        assert_eq!(
            override_from_linkage(&l),
            Some(LinkOverride {
                a: "Patient/a".into(),
                b: "Patient/b".into(),
                link: false
            })
        );
        let link = linkage_resource("Patient/a", "Patient/b", true, None);
        assert_eq!(override_from_linkage(&link).map(|o| o.link), Some(true));
        // Linkages not recorded by caregate, or not between two Patients, are not decisions.
        let mut foreign = link.clone();
        foreign["meta"] = json!({});
        assert_eq!(override_from_linkage(&foreign), None);
        let mut three = link.clone();
        three["item"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "alternate", "resource": {"reference": "Patient/c"}}));
        assert_eq!(override_from_linkage(&three), None);
        let mut absolute = link;
        absolute["item"][1]["resource"]["reference"] =
            json!("https://x.org/fhir/Patient/b/_history/2");
        assert_eq!(
            override_from_linkage(&absolute).map(|o| o.b),
            Some("Patient/b".into())
        );
    }

    #[test]
    fn name_folding() {
        assert_eq!(normalize_name("  García-López "), "garcia lopez");
        assert_eq!(normalize_name("O'BRIEN"), "o brien");
        assert_eq!(normalize_name("Zoë\tSmith"), "zoe smith");
        assert_eq!(normalize_name("Straße"), "strasse");
        let a = patient("a", "urn:ehr:psych", "Muñoz  Pérez", "José");
        let b = patient("b", "urn:ehr:pcp", "munoz perez", "JOSE");
        assert_eq!(
            match_grade(&a, &b, &cfg()).map(|m| m.grade),
            Some(MatchGrade::Possible)
        );
    }

    #[test]
    fn match_operation() {
        let tel = json!([{"system": "email", "value": "Jane@Example.org"}]);
        let certain = with_ssn(patient("z1", "urn:ehr:pcp", "Doe", "Jane"), "123");
        let probable = with(
            patient("p1", "urn:ehr:psych", "Doe", "Jane"),
            "telecom",
            tel.clone(),
        );
        let possible = patient("q1", "urn:ehr:cm", "Doe", "Jane");
        let other = patient("o1", "urn:ehr:cm", "Roe", "Richard");
        let no_id =
            json!({"resourceType": "Patient", "name": [{"family": "Doe", "given": ["Jane"]}]});
        let candidate = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.1", "value": "123"}],
            "name": [{"family": "Doe", "given": ["Jane"]}],
            "gender": "female",
            "birthDate": "1980-03-04",
            "telecom": [{"system": "email", "value": "jane@example.org "}],
        });
        let stored = [possible, other, probable, certain, no_id];
        let all = match_candidates(&candidate, &stored, &cfg(), false, 10);
        let refs: Vec<&str> = all.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(refs, vec!["Patient/z1", "Patient/p1", "Patient/q1"]);
        let grades: Vec<&str> = all.iter().map(|(_, m)| m.grade.code()).collect();
        assert_eq!(grades, vec!["certain", "probable", "possible"]);
        assert_eq!(
            all[1].1.search_element()["extension"][0],
            json!({"url": MATCH_GRADE_EXTENSION, "valueCode": "probable"})
        );
        let only = match_candidates(&candidate, &stored, &cfg(), true, 10);
        assert_eq!(only.len(), 1);
        assert_eq!(
            match_candidates(&candidate, &stored, &cfg(), false, 2).len(),
            2
        );
    }
}
