//! Snapshot generation against known answers: the US Core 3.1.0 profiles regenerated from
//! their differentials and compared with the published snapshots (element ids, min/max,
//! types with profiles and target profiles, bindings, constraint keys). Then US Core 6.1.0
//! and MCC 1.0.0, which ship differentials only, must all generate.
//!
//! `SNAPSHOT_VERBOSE=1` prints every difference.
//!
//! Known differences from the published US Core 3.1.0 snapshots (all from the 2019 IG
//! Publisher's own habits, none changes what an instance must satisfy):
//! * us-core-race / us-core-ethnicity: the publisher also expanded the children of the
//!   nested `extension` element inside each extension slice (`...:ombCategory.extension.id`,
//!   `.url`, ...), which no differential element asks for; we do not (24 elements).
//! * us-core-pulse-oximetry: `component:FlowRate.valueQuantity` was applied in place to
//!   `component:FlowRate.value[x]` there, while every other profile of the same package
//!   (bmi, weight-for-height, smokingstatus, goal, race, birthsex, direct) got a type slice
//!   `value[x]:valueQuantity`; we always make the type slice (14 missing, 16 extra).
//! * us-core-patient `extension:birthsex`: the differential puts a binding on the
//!   Extension-typed slice; the publisher dropped it, we keep it (1 binding).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use caregate_validation::Registry;
use serde_json::Value;

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/profiles")
}

fn strip_version(s: &str) -> &str {
    s.split('|').next().unwrap_or(s)
}

/// What is compared per element.
fn facts(e: &Value) -> BTreeMap<&'static str, String> {
    let mut f = BTreeMap::new();
    f.insert("min", e["min"].to_string());
    f.insert("max", e["max"].to_string());
    let types: BTreeSet<String> = e["type"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let list = |k: &str| -> Vec<String> {
                t[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str().map(|p| strip_version(p).to_string()))
                    .collect()
            };
            format!(
                "{}{:?}{:?}",
                t["code"].as_str().unwrap_or(""),
                list("profile"),
                list("targetProfile")
            )
        })
        .collect();
    f.insert("type", format!("{types:?}"));
    f.insert(
        "binding",
        format!(
            "{} {}",
            e["binding"]["strength"].as_str().unwrap_or("-"),
            strip_version(e["binding"]["valueSet"].as_str().unwrap_or("-"))
        ),
    );
    let keys: BTreeSet<&str> = e["constraint"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["key"].as_str())
        .collect();
    f.insert("constraint", format!("{keys:?}"));
    f
}

#[test]
fn us_core_3_1_snapshots_match_published() {
    let dir = profiles_dir().join("hl7.fhir.us.core-3.1.0");
    if !dir.is_dir() {
        eprintln!("US Core 3.1.0 not present, skipped");
        return;
    }
    let mut b = Registry::builder();
    b.load_path(&dir).expect("US Core 3.1.0 loads");
    let reg = b.build();
    let verbose = std::env::var_os("SNAPSHOT_VERBOSE").is_some();

    let (mut published_total, mut matched, mut missing, mut extra) =
        (0usize, 0usize, 0usize, 0usize);
    let mut by_fact: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut profiles = 0;
    for sd in reg.structure_definitions() {
        let url = sd["url"].as_str().unwrap_or("");
        if !url.starts_with("http://hl7.org/fhir/us/core/") {
            continue;
        }
        profiles += 1;
        let ours = match reg.generate_snapshot(sd) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{url}: {e}"));
                continue;
            }
        };
        let published = sd["snapshot"]["element"]
            .as_array()
            .expect("published snapshot");
        let ours_by_id: BTreeMap<&str, &Value> = ours
            .iter()
            .filter_map(|e| Some((e["id"].as_str()?, e)))
            .collect();
        let theirs: BTreeSet<&str> = published.iter().filter_map(|e| e["id"].as_str()).collect();
        for e in published {
            published_total += 1;
            let id = e["id"].as_str().unwrap_or("");
            let Some(o) = ours_by_id.get(id) else {
                missing += 1;
                if verbose {
                    eprintln!("{url}: missing {id}");
                }
                continue;
            };
            let (a, b) = (facts(e), facts(o));
            let mut same = true;
            for (k, v) in &a {
                if b.get(k) != Some(v) {
                    same = false;
                    *by_fact.entry(k).or_default() += 1;
                    if verbose {
                        eprintln!("{url}: {id} {k}: published {v} ours {:?}", b.get(k));
                    }
                }
            }
            matched += usize::from(same);
        }
        for id in ours_by_id.keys() {
            if !theirs.contains(id) {
                extra += 1;
                if verbose {
                    eprintln!("{url}: extra {id}");
                }
            }
        }
    }
    let rate = matched as f64 / published_total.max(1) as f64;
    eprintln!(
        "US Core 3.1.0: {profiles} profiles, {published_total} published elements, {matched} match ({:.1}%), \
         {missing} missing, {extra} extra, differing facts {by_fact:?}, failures {failures:?}",
        rate * 100.0
    );
    assert!(profiles >= 29, "{profiles}");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(rate >= 0.97, "match rate {rate}");
}

fn load_differential_registry() -> Option<Registry> {
    let us6 = profiles_dir().join("hl7.fhir.us.core-6.1.0-differential");
    let mcc = profiles_dir().join("hl7.fhir.us.mcc-1.0.0");
    if !us6.is_dir() || !mcc.is_dir() {
        return None;
    }
    let mut b = Registry::builder();
    b.load_path(&us6).expect("US Core 6.1.0 loads");
    b.load_path(&mcc).expect("MCC loads");
    Some(b.build())
}

#[test]
fn us_core_6_1_and_mcc_generate_from_differentials() {
    let Some(reg) = load_differential_registry() else {
        eprintln!("US Core 6.1.0 / MCC not present, skipped");
        return;
    };
    let mut ok = 0;
    let mut failures = Vec::new();
    for sd in reg.structure_definitions() {
        let url = sd["url"].as_str().unwrap_or("").to_string();
        if !(url.starts_with("http://hl7.org/fhir/us/core/")
            || url.starts_with("http://hl7.org/fhir/us/mcc/"))
        {
            continue;
        }
        assert!(sd.get("snapshot").is_none(), "{url} ships a snapshot");
        match reg.snapshot(&url) {
            Ok(s) => {
                assert!(s.len() > 1, "{url}");
                ok += 1;
            }
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    eprintln!("US Core 6.1.0 + MCC: {ok} snapshots generated, failures {failures:#?}");
    assert!(ok >= 80, "{ok}");
    // The QuestionnaireResponse profiles derive from the SDC IG, which is not in the
    // corpora: those (and only those) cannot be generated.
    let unexpected: Vec<&String> = failures
        .iter()
        .filter(|f| !f.contains("http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaireresponse is not loaded"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    assert!(failures.len() <= 2, "{failures:#?}");
}
