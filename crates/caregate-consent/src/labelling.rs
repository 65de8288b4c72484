//! Labelling on ingest: rules that add DS4P security labels to `meta.security` when a coded
//! element of the resource matches a code list. Labels the source sent are kept; a label is
//! never added twice.
//!
//! The default rules (`profiles/labelling/default-rules.json`, embedded) cover substance
//! use (42 CFR Part 2), mental health, HIV and psychotherapy notes.

use std::collections::HashSet;

use serde_json::{json, Value};

static DEFAULT_RULES: &str = include_str!("../../../profiles/labelling/default-rules.json");

/// The top-level elements whose codings the rules look at.
const CODED_ELEMENTS: [&str; 10] = [
    "code",
    "category",
    "type",
    "medicationCodeableConcept",
    "reasonCode",
    "valueCodeableConcept",
    "class",
    "serviceType",
    "activity",
    "addresses",
];

#[derive(Debug, Clone)]
struct CodeList {
    system: String,
    codes: HashSet<String>,
    prefixes: Vec<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    resource_types: Vec<String>,
    codes: Vec<CodeList>,
    labels: Vec<Value>,
}

#[derive(Debug, Clone)]
pub struct LabelRules {
    rules: Vec<Rule>,
}

#[derive(Debug, thiserror::Error)]
#[error("labelling rules: {0}")]
pub struct RuleError(String);

impl LabelRules {
    /// The shipped default rule set.
    pub fn default_rules() -> Result<LabelRules, RuleError> {
        let v: Value = serde_json::from_str(DEFAULT_RULES).map_err(|e| RuleError(e.to_string()))?;
        LabelRules::from_json(&v)
    }

    /// Rules in the format of `profiles/labelling/default-rules.json`.
    pub fn from_json(v: &Value) -> Result<LabelRules, RuleError> {
        let mut rules = Vec::new();
        for (i, r) in v
            .get("rules")
            .and_then(Value::as_array)
            .ok_or_else(|| RuleError("missing 'rules' array".into()))?
            .iter()
            .enumerate()
        {
            let name = r
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("unnamed")
                .to_string();
            let strings = |key: &str, from: &Value| -> Vec<String> {
                from.get(key)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let codes = r
                .get("codes")
                .and_then(Value::as_array)
                .ok_or_else(|| RuleError(format!("rule {i} ({name}) has no 'codes'")))?
                .iter()
                .map(|c| {
                    Ok(CodeList {
                        system: c
                            .get("system")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                RuleError(format!("rule {i} ({name}): a code list has no system"))
                            })?
                            .to_string(),
                        codes: strings("codes", c).into_iter().collect(),
                        prefixes: strings("prefixes", c),
                    })
                })
                .collect::<Result<Vec<_>, RuleError>>()?;
            let labels = r
                .get("labels")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| RuleError(format!("rule {i} ({name}) has no 'labels'")))?;
            rules.push(Rule {
                name,
                resource_types: strings("resourceTypes", r),
                codes,
                labels,
            });
        }
        Ok(LabelRules { rules })
    }

    /// Adds the labels of every matching rule; returns the names of the rules that matched.
    pub fn label(&self, resource: &mut Value) -> Vec<String> {
        let rtype = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut codings = Vec::new();
        for key in CODED_ELEMENTS {
            if let Some(v) = resource.get(key) {
                collect_codings(v, &mut codings);
            }
        }
        let mut matched = Vec::new();
        let mut to_add: Vec<Value> = Vec::new();
        for rule in &self.rules {
            if !rule.resource_types.is_empty() && !rule.resource_types.contains(&rtype) {
                continue;
            }
            let hit = codings.iter().any(|(system, code)| {
                rule.codes.iter().any(|l| {
                    l.system == *system
                        && (l.codes.contains(code.as_str())
                            || l.prefixes.iter().any(|p| code.starts_with(p.as_str())))
                })
            });
            if hit {
                matched.push(rule.name.clone());
                to_add.extend(rule.labels.iter().cloned());
            }
        }
        if to_add.is_empty() {
            return matched;
        }
        let Some(obj) = resource.as_object_mut() else {
            return matched;
        };
        let meta = obj.entry("meta").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else {
            return matched;
        };
        let security = meta.entry("security").or_insert_with(|| json!([]));
        let Some(security) = security.as_array_mut() else {
            return matched;
        };
        for label in to_add {
            let same = |l: &Value| {
                l.get("system") == label.get("system") && l.get("code") == label.get("code")
            };
            if !security.iter().any(same) {
                security.push(label);
            }
        }
        matched
    }
}

/// Every Coding (system, code) inside a value, at any depth.
fn collect_codings(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(system)), Some(Value::String(code))) =
                (m.get("system"), m.get("code"))
            {
                out.push((system.clone(), code.replace('.', "")));
            }
            for x in m.values() {
                collect_codings(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_codings(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> LabelRules {
        LabelRules::default_rules().expect("default rules load")
    }

    fn codes_of(v: &Value) -> Vec<String> {
        v.pointer("/meta/security")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["code"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn sud_diagnosis_gets_part2_labels() {
        let mut c = json!({"resourceType": "Condition", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F11.20"}]}});
        let matched = rules().label(&mut c);
        assert_eq!(
            matched,
            vec!["substance use disorder (42 CFR Part 2)".to_string()]
        );
        let codes = codes_of(&c);
        for expected in ["ETH", "SUD", "42CFRPart2", "R", "NORDSCLCD"] {
            assert!(codes.contains(&expected.to_string()), "{codes:?}");
        }
    }

    #[test]
    fn keeps_source_labels_and_adds_no_duplicates() {
        let mut c = json!({"resourceType": "Condition",
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}, {"system": "urn:x", "code": "mine"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]}});
        rules().label(&mut c);
        let codes = codes_of(&c);
        assert_eq!(codes.iter().filter(|c| *c == "PSY").count(), 1);
        assert!(codes.contains(&"mine".to_string()));
        assert!(codes.contains(&"R".to_string()));
    }

    #[test]
    fn nicotine_and_unrelated_codes_are_not_labelled() {
        let mut nicotine = json!({"resourceType": "Condition", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F17.210"}]}});
        assert!(rules().label(&mut nicotine).is_empty());
        assert!(nicotine.get("meta").is_none());
        let mut flu = json!({"resourceType": "Condition", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "6142004"}]}});
        assert!(rules().label(&mut flu).is_empty());
    }

    #[test]
    fn rules_by_type_and_nested_codes() {
        let mut note = json!({"resourceType": "DocumentReference", "type": {"coding": [{"system": "urn:caregate:note-type", "code": "psychotherapy-note"}]}});
        rules().label(&mut note);
        assert!(codes_of(&note).contains(&"PSYTHPN".to_string()));
        let mut plan = json!({"resourceType": "CarePlan", "activity": [{"detail": {"code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1819"}]}}}]});
        rules().label(&mut plan);
        assert!(codes_of(&plan).contains(&"42CFRPart2".to_string()));
        assert!(LabelRules::from_json(&json!({"rules": [{"name": "x"}]})).is_err());
    }
}
