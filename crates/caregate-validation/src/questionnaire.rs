//! A QuestionnaireResponse checked against its Questionnaire (when the registry holds it):
//! linkIds, required items and groups, answer types, repeats and `questionnaire-maxOccurs`,
//! the value constraints (`maxLength`, `minLength`, `regex`, `minValue`/`maxValue`,
//! `maxDecimalPlaces`, SDC `minQuantity`/`maxQuantity`), exclusive options and reference
//! target types (`questionnaire-referenceResource`).
//!
//! Items made conditional by `enableWhen` (or inside such an item) are not required: whether
//! they are enabled depends on other answers, which the reference validator evaluates but
//! caregate does not yet; requiring them would reject valid responses.

use caregate_core::{Issue, IssueCode, Severity};
use serde_json::Value;

use crate::registry::Registry;
use crate::StructureModel;

const EXT: &str = "http://hl7.org/fhir/StructureDefinition/";
const SDC: &str = "http://hl7.org/fhir/uv/sdc/StructureDefinition/";

/// Checks `qr` (at `loc`) against the Questionnaire it names; nothing when that
/// Questionnaire is not loaded (the reference validator only warns then).
pub(crate) fn check(
    reg: &Registry,
    model: &StructureModel,
    qr: &Value,
    loc: &str,
    out: &mut Vec<Issue>,
) {
    let Some(canonical) = qr.get("questionnaire").and_then(Value::as_str) else {
        return;
    };
    let Some(q) = reg.resolve(canonical) else {
        return;
    };
    let rt = q.get("resourceType").and_then(Value::as_str).unwrap_or("");
    if rt != "Questionnaire" {
        out.push(
            Issue::new(
                Severity::Error,
                IssueCode::Invalid,
                format!("Canonical URL '{canonical}' refers to a {rt}, not a Questionnaire"),
            )
            .at(format!("{loc}.questionnaire")),
        );
        return;
    }
    let mut ck = Checker { model, out };
    ck.items(arr(q, "item"), arr(qr, "item"), loc, false);
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn ext<'a>(def: &'a Value, url: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let url = url.to_string();
    arr(def, "extension")
        .iter()
        .filter(move |e| e.get("url").and_then(Value::as_str) == Some(url.as_str()))
}

/// The `value[x]` of an element: (type suffix, value).
fn value_x(v: &Value) -> Option<(&str, &Value)> {
    v.as_object()?
        .iter()
        .find_map(|(k, val)| Some((k.strip_prefix("value")?, val)))
        .filter(|(t, _)| t.starts_with(|c: char| c.is_ascii_uppercase()))
}

fn ext_value<'a>(def: &'a Value, url: &str) -> Option<(&'a str, &'a Value)> {
    ext(def, url).next().and_then(value_x)
}

/// The answer types an item type accepts (R4 `QuestionnaireResponse.item.answer.value[x]`
/// suffixes); `None` for item types that take no answers or are not known.
fn answer_types(item_type: &str) -> Option<&'static [&'static str]> {
    Some(match item_type {
        "boolean" => &["Boolean"],
        "decimal" => &["Decimal"],
        "integer" => &["Integer"],
        "date" => &["Date"],
        "dateTime" => &["DateTime"],
        "time" => &["Time"],
        "string" | "text" => &["String"],
        "url" => &["Uri"],
        "attachment" => &["Attachment"],
        "reference" => &["Reference"],
        "quantity" => &["Quantity"],
        "choice" => &["Coding"],
        "open-choice" => &["Coding", "String"],
        _ => return None,
    })
}

/// FHIR type name for messages (`DateTime` → `dateTime`, `Uri` → `uri`).
fn fhir_name(suffix: &str) -> String {
    if matches!(
        suffix,
        "Coding" | "Quantity" | "Reference" | "Attachment" | "Period"
    ) {
        return suffix.to_string();
    }
    let mut c = suffix.chars();
    c.next()
        .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Decimal places as written (the workspace keeps numbers' text: `arbitrary_precision`).
fn decimal_places(v: &Value) -> usize {
    let s = v.to_string();
    let mantissa = s.split(['e', 'E']).next().unwrap_or("");
    mantissa.split_once('.').map_or(0, |(_, f)| f.len())
}

struct Checker<'a> {
    model: &'a StructureModel,
    out: &'a mut Vec<Issue>,
}

impl Checker<'_> {
    fn push(&mut self, severity: Severity, code: IssueCode, loc: &str, msg: String) {
        self.out.push(Issue::new(severity, code, msg).at(loc));
    }

    /// Response items `given` (under `loc`) against the definitions `defs`.
    fn items(&mut self, defs: &[Value], given: &[Value], loc: &str, conditional: bool) {
        for (i, item) in given.iter().enumerate() {
            let link = item.get("linkId").and_then(Value::as_str).unwrap_or("");
            let at = format!("{loc}.item[{i}]");
            match defs
                .iter()
                .find(|d| d.get("linkId").and_then(Value::as_str) == Some(link))
            {
                Some(def) => self.item(def, item, &at, conditional),
                None => self.push(
                    Severity::Error,
                    IssueCode::Structure,
                    &at,
                    format!("LinkId '{link}' not found in the questionnaire at this level"),
                ),
            }
        }
        for def in defs {
            let link = def.get("linkId").and_then(Value::as_str).unwrap_or("");
            let required = def.get("required").and_then(Value::as_bool) == Some(true);
            let cond = conditional || def.get("enableWhen").is_some();
            if !required || cond {
                continue;
            }
            let present = given
                .iter()
                .any(|g| g.get("linkId").and_then(Value::as_str) == Some(link));
            if !present {
                self.push(
                    Severity::Error,
                    IssueCode::Required,
                    loc,
                    format!("No response found for required item '{link}'"),
                );
            }
        }
    }

    fn item(&mut self, def: &Value, item: &Value, loc: &str, conditional: bool) {
        let link = def.get("linkId").and_then(Value::as_str).unwrap_or("");
        let item_type = def.get("type").and_then(Value::as_str).unwrap_or("");
        let conditional = conditional || def.get("enableWhen").is_some();
        let required = def.get("required").and_then(Value::as_bool) == Some(true);
        let answers = arr(item, "answer");
        let children = arr(item, "item");
        if item_type == "group" {
            if required && !conditional && children.is_empty() {
                self.push(
                    Severity::Error,
                    IssueCode::Required,
                    loc,
                    format!("No sub-items found for required group '{link}'"),
                );
            }
            if !answers.is_empty() {
                self.push(
                    Severity::Error,
                    IssueCode::Structure,
                    loc,
                    format!("Group '{link}' cannot have answers"),
                );
            }
            self.items(arr(def, "item"), children, loc, conditional);
            return;
        }
        if item_type == "display" {
            return;
        }
        if required && !conditional && answers.is_empty() {
            self.push(
                Severity::Error,
                IssueCode::Required,
                loc,
                format!("No response answer found for required item '{link}'"),
            );
        }
        let repeats = def.get("repeats").and_then(Value::as_bool) == Some(true);
        if !repeats && answers.len() > 1 {
            self.push(
                Severity::Error,
                IssueCode::Invalid,
                loc,
                format!("Only one answer is allowed for item '{link}' (it does not repeat)"),
            );
        }
        if let Some(max) =
            ext_value(def, &format!("{EXT}questionnaire-maxOccurs")).and_then(|(_, v)| v.as_u64())
        {
            if answers.len() as u64 > max {
                self.push(
                    Severity::Error,
                    IssueCode::Invalid,
                    loc,
                    format!(
                        "The maximum number of answers is {max} but this has {} answers",
                        answers.len()
                    ),
                );
            }
        }
        let allowed = answer_types(item_type);
        let options = arr(def, "answerOption");
        for (j, answer) in answers.iter().enumerate() {
            let aloc = format!("{loc}.answer[{j}]");
            if let Some((t, v)) = value_x(answer) {
                let vloc = format!("{aloc}.value.ofType({})", fhir_name(t));
                let option_type = options
                    .iter()
                    .any(|o| value_x(o).is_some_and(|(ot, _)| ot == t));
                match allowed {
                    Some(types) if !types.contains(&t) && !option_type => self.push(
                        Severity::Error,
                        IssueCode::Invariant,
                        &vloc,
                        format!(
                            "Answer value must be of the type {} not {}",
                            types
                                .iter()
                                .map(|t| fhir_name(t))
                                .collect::<Vec<_>>()
                                .join(" or "),
                            fhir_name(t)
                        ),
                    ),
                    _ => self.value(def, t, v, &vloc),
                }
                // Only the listed options (a choice item's answerOption; open-choice also
                // takes free text).
                let free_text = item_type == "open-choice" && t == "String";
                if !options.is_empty()
                    && !free_text
                    && !options.iter().any(|o| option_matches(o, t, v))
                {
                    self.push(
                        Severity::Error,
                        IssueCode::Invariant,
                        &aloc,
                        format!(
                            "The answer {} is not in the set of permitted values (answerOption)",
                            show_answer(t, v)
                        ),
                    );
                }
                if answers.len() > 1 && exclusive(options, t, v) {
                    self.push(
                        Severity::Error,
                        IssueCode::Invariant,
                        &aloc,
                        "The selected answer is an exclusive option: no other answer may be \
                         selected with it"
                            .to_string(),
                    );
                }
            }
            // Nested items under an answer belong to the item's children.
            let nested = arr(answer, "item");
            if !nested.is_empty() {
                self.items(arr(def, "item"), nested, &aloc, conditional);
            }
        }
        if !children.is_empty() {
            self.items(arr(def, "item"), children, loc, conditional);
        }
    }

    /// The constraints of item `def` on one answer value (type suffix `t`).
    fn value(&mut self, def: &Value, t: &str, v: &Value, loc: &str) {
        match t {
            "String" | "Uri" => {
                let s = v.as_str().unwrap_or("");
                let len = s.chars().count() as u64;
                if let Some(max) = def.get("maxLength").and_then(Value::as_u64) {
                    if len > max {
                        self.push(
                            Severity::Error,
                            IssueCode::Invariant,
                            loc,
                            format!("The answer '{s}' is longer than the allowed maximum length of {max}"),
                        );
                    }
                }
                if let Some(min) =
                    ext_value(def, &format!("{EXT}minLength")).and_then(|(_, m)| m.as_u64())
                {
                    if len < min {
                        self.push(
                            Severity::Error,
                            IssueCode::Invariant,
                            loc,
                            format!("The answer '{s}' is shorter than the required minimum length of {min}"),
                        );
                    }
                }
                if let Some(re) =
                    ext_value(def, &format!("{EXT}regex")).and_then(|(_, r)| r.as_str())
                {
                    // A Questionnaire with a regex that does not compile cannot be held
                    // against the answer; that is the Questionnaire's problem, not this one's.
                    if let Ok(regex) = regex_lite::Regex::new(re) {
                        if !regex.is_match(s) {
                            self.push(
                                Severity::Error,
                                IssueCode::Invariant,
                                loc,
                                format!("The answer '{s}' does not match the required format (regex '{re}')"),
                            );
                        }
                    }
                }
            }
            "Integer" | "Decimal" => {
                let n = number(v);
                let bound = |url: &str| ext_value(def, url).and_then(|(_, b)| number(b));
                if let (Some(n), Some(min)) = (n, bound(&format!("{EXT}minValue"))) {
                    if n < min {
                        self.push(
                            Severity::Error,
                            IssueCode::Invariant,
                            loc,
                            format!("The value {v} is less than the allowed minimum of {min}"),
                        );
                    }
                }
                if let (Some(n), Some(max)) = (n, bound(&format!("{EXT}maxValue"))) {
                    if n > max {
                        self.push(
                            Severity::Error,
                            IssueCode::Invariant,
                            loc,
                            format!("The value {v} is greater than the allowed maximum of {max}"),
                        );
                    }
                }
                if let Some(places) =
                    ext_value(def, &format!("{EXT}maxDecimalPlaces")).and_then(|(_, p)| p.as_u64())
                {
                    if decimal_places(v) as u64 > places {
                        self.push(
                            Severity::Error,
                            IssueCode::Invariant,
                            loc,
                            format!("The value {v} has too many decimal places (limit = {places})"),
                        );
                    }
                }
            }
            "Date" | "DateTime" | "Time" => {
                // Same-type FHIR date/time strings of the forms the item allows compare in
                // text order (a more precise value above a less precise bound counts as
                // after it, as the reference validator does).
                let s = v.as_str().unwrap_or("");
                let bound = |url: &str| {
                    ext_value(def, url).and_then(|(_, b)| b.as_str().map(str::to_string))
                };
                if let Some(min) = bound(&format!("{EXT}minValue")) {
                    if s < min.as_str() {
                        self.push(
                            Severity::Error,
                            IssueCode::Invariant,
                            loc,
                            format!("The value {s} is less than the allowed minimum of {min}"),
                        );
                    }
                }
                if let Some(max) = bound(&format!("{EXT}maxValue")) {
                    if s > max.as_str() {
                        self.push(
                            Severity::Error,
                            IssueCode::Invariant,
                            loc,
                            format!("The value {s} is greater than the allowed maximum of {max}"),
                        );
                    }
                }
            }
            "Quantity" => {
                let units: Vec<&Value> = ext(def, &format!("{EXT}questionnaire-unitOption"))
                    .filter_map(|e| e.get("valueCoding"))
                    .collect();
                let unit_ok = units.is_empty()
                    || units.iter().any(|u| {
                        u.get("system") == v.get("system")
                            && u.get("code").is_some()
                            && u.get("code") == v.get("code")
                    });
                if !unit_ok {
                    self.push(
                        Severity::Error,
                        IssueCode::Invariant,
                        loc,
                        format!(
                            "The unit of {} is not one of the allowed units (questionnaire-unitOption)",
                            show_answer(t, v)
                        ),
                    );
                }
                for (url, is_min) in [
                    (format!("{SDC}sdc-questionnaire-minQuantity"), true),
                    (format!("{SDC}sdc-questionnaire-maxQuantity"), false),
                ] {
                    let Some((_, limit)) = ext_value(def, &url) else {
                        continue;
                    };
                    self.quantity_bound(v, limit, is_min, loc);
                }
            }
            "Reference" => self.reference(def, v, loc),
            _ => {}
        }
    }

    fn quantity_bound(&mut self, v: &Value, limit: &Value, is_min: bool, loc: &str) {
        let word = if is_min { "minimum" } else { "maximum" };
        let formal = |q: &Value| {
            q.get("system").and_then(Value::as_str).is_some()
                && q.get("code").and_then(Value::as_str).is_some()
        };
        let show = |q: &Value| {
            format!(
                "{} {}",
                q.get("value").map(Value::to_string).unwrap_or_default(),
                q.get("unit")
                    .or(q.get("code"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            )
        };
        if !formal(v) || !formal(limit) {
            self.push(
                Severity::Error,
                IssueCode::Invariant,
                loc,
                format!(
                    "The quantity {} cannot be compared to the allowed {word} of {} because no \
                     formal units are specified",
                    show(v),
                    show(limit)
                ),
            );
            return;
        }
        let same_units =
            v.get("system") == limit.get("system") && v.get("code") == limit.get("code");
        if !same_units {
            // Converting between UCUM units needs a UCUM service caregate does not have; a
            // bound that cannot be checked is not met (as the reference validator holds).
            self.push(
                Severity::Error,
                IssueCode::Invariant,
                loc,
                format!(
                    "The quantity {} cannot be compared to the allowed {word} of {}: different units",
                    show(v),
                    show(limit)
                ),
            );
            return;
        }
        let (Some(a), Some(b)) = (
            v.get("value").and_then(number),
            limit.get("value").and_then(number),
        ) else {
            return;
        };
        if (is_min && a < b) || (!is_min && a > b) {
            self.push(
                Severity::Error,
                IssueCode::Invariant,
                loc,
                format!(
                    "The quantity {} is outside the allowed {word} of {}",
                    show(v),
                    show(limit)
                ),
            );
        }
    }

    fn reference(&mut self, def: &Value, v: &Value, loc: &str) {
        let Some(r) = v.get("reference").and_then(Value::as_str) else {
            return;
        };
        if r.starts_with('#') || r.starts_with("urn:") {
            return;
        }
        let Some(t) = crate::validator::reference_type(r) else {
            return;
        };
        // Only a segment shaped like a type name is a claim about the type (not `fhir` in
        // `http://x/fhir/1`).
        if !t.starts_with(|c: char| c.is_ascii_uppercase()) {
            return;
        }
        if !self.model.is_resource_type(t) {
            self.push(
                Severity::Error,
                IssueCode::Invariant,
                loc,
                format!("The resource type {t} in the reference {r} is not valid"),
            );
            return;
        }
        let allowed: Vec<&str> = ext(def, &format!("{EXT}questionnaire-referenceResource"))
            .filter_map(|e| e.get("valueCode").and_then(Value::as_str))
            .collect();
        if !allowed.is_empty() && !allowed.contains(&t) {
            self.push(
                Severity::Error,
                IssueCode::Invariant,
                loc,
                format!(
                    "The resource type '{t}' in the reference {r} is not allowed (allowed = {})",
                    allowed.join(",")
                ),
            );
        }
    }
}

/// The answer is that option: same type, and for Codings the same system and code.
fn option_matches(o: &Value, t: &str, v: &Value) -> bool {
    value_x(o).is_some_and(|(ot, ov)| {
        ot == t
            && if t == "Coding" {
                ov.get("system") == v.get("system") && ov.get("code") == v.get("code")
            } else {
                ov == v
            }
    })
}

fn show_answer(t: &str, v: &Value) -> String {
    match t {
        "Coding" => format!(
            "{}#{}",
            v.get("system").and_then(Value::as_str).unwrap_or(""),
            v.get("code").and_then(Value::as_str).unwrap_or("")
        ),
        "Quantity" => format!(
            "{} {}",
            v.get("value").map(Value::to_string).unwrap_or_default(),
            v.get("code")
                .or(v.get("unit"))
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        _ => v.to_string(),
    }
}

/// The answer matches an `answerOption` marked `questionnaire-optionExclusive`.
fn exclusive(options: &[Value], t: &str, v: &Value) -> bool {
    options.iter().any(|o| {
        let excl = ext_value(o, &format!("{EXT}questionnaire-optionExclusive"))
            .is_some_and(|(_, b)| b.as_bool() == Some(true));
        excl && option_matches(o, t, v)
    })
}
