//! `ElementDefinition.minValue[x]` / `maxValue[x]` held against an instance value: numbers,
//! dates and times (compared at their common precision), Quantities in the same units, and
//! Durations on dates (a bound relative to today, as the reference validator reads them:
//! `minValueDuration` 100 a on `birthDate` puts the minimum at today minus 100 years).

use serde_json::Value;

/// Why `value` breaks the bound (`is_min`: a minimum), or `None` when it keeps it or the
/// two cannot be compared here (units other than metric prefixes of one base need a UCUM
/// service, which caregate does not have; that is never reported as a violation).
pub(crate) fn violation(t: &str, bound: &Value, value: &Value, is_min: bool) -> Option<String> {
    let word = if is_min { "minimum" } else { "maximum" };
    let broken = |ord: std::cmp::Ordering| {
        if is_min {
            ord == std::cmp::Ordering::Less
        } else {
            ord == std::cmp::Ordering::Greater
        }
    };
    match (t, value) {
        ("Integer" | "Decimal" | "PositiveInt" | "UnsignedInt", Value::Number(n)) => {
            let (a, b) = (n.as_f64()?, bound.as_f64()?);
            broken(a.partial_cmp(&b)?)
                .then(|| format!("The value {n} is outside the {word} {bound}"))
        }
        ("Date" | "DateTime" | "Instant" | "Time", Value::String(s)) => {
            let b = bound.as_str()?;
            broken(common_precision_cmp(s, b))
                .then(|| format!("The value {s} is outside the {word} {b}"))
        }
        ("Quantity" | "Duration" | "Age" | "Distance" | "Count", Value::Object(q)) => {
            if q.get("system") != bound.get("system") {
                return None;
            }
            let mut a = q.get("value")?.as_f64()?;
            let mut b = bound.get("value")?.as_f64()?;
            if q.get("code") != bound.get("code") {
                // Different UCUM units: comparable when both are the same base unit with
                // metric prefixes (g and kg); anything else needs a UCUM service.
                if q.get("system").and_then(Value::as_str) != Some(UCUM) {
                    return None;
                }
                let (fa, ba) = ucum_prefixed(q.get("code")?.as_str()?)?;
                let (fb, bb) = ucum_prefixed(bound.get("code")?.as_str()?)?;
                if ba != bb {
                    return None;
                }
                a *= fa;
                b *= fb;
            }
            broken(a.partial_cmp(&b)?).then(|| {
                format!(
                    "The quantity {} is outside the {word} {}",
                    q.get("value").map(Value::to_string).unwrap_or_default(),
                    bound.get("value").map(Value::to_string).unwrap_or_default()
                )
            })
        }
        ("Duration" | "Quantity", Value::String(s)) => {
            let limit = relative_date(bound, is_min)?;
            broken(common_precision_cmp(s, &limit)).then(|| {
                format!(
                    "The date {s} is outside the {word} {limit} (today {} the stated duration)",
                    if is_min { "minus" } else { "plus" }
                )
            })
        }
        _ => None,
    }
}

const UCUM: &str = "http://unitsofmeasure.org";

/// A UCUM unit code as (factor, base unit) when it is a metric-prefixed base unit (`kg` →
/// (1000, `g`), `mL` → (0.001, `L`)); `None` for anything else.
fn ucum_prefixed(code: &str) -> Option<(f64, &str)> {
    const BASES: &[&str] = &[
        "g", "m", "L", "l", "s", "mol", "Pa", "J", "W", "Hz", "eq", "U",
    ];
    const PREFIXES: &[(&str, f64)] = &[
        ("k", 1e3),
        ("h", 1e2),
        ("d", 1e-1),
        ("c", 1e-2),
        ("m", 1e-3),
        ("u", 1e-6),
        ("n", 1e-9),
        ("p", 1e-12),
    ];
    if BASES.contains(&code) {
        return Some((1.0, code));
    }
    PREFIXES.iter().find_map(|(p, f)| {
        let base = code.strip_prefix(p)?;
        BASES.contains(&base).then_some((*f, base))
    })
}

/// Compares two FHIR date/time strings on the characters both have (`2022-06-30` against
/// `2022-06` compares `2022-06`, equal), then a longer value after an equal shorter bound
/// counts as within it.
fn common_precision_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let n = a.len().min(b.len());
    match (a.get(..n), b.get(..n)) {
        (Some(x), Some(y)) => x.cmp(y),
        _ => a.cmp(b),
    }
}

/// Today shifted back (`is_min`) or forward by a UCUM duration (`a`, `mo`, `wk`, `d`), as
/// `YYYY-MM-DD`; `None` for other units.
fn relative_date(duration: &Value, is_min: bool) -> Option<String> {
    let amount = duration.get("value")?.as_f64()?;
    let unit = duration
        .get("code")
        .or_else(|| duration.get("unit"))?
        .as_str()?;
    let sign = if is_min { -1.0 } else { 1.0 };
    let days_now = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs()
        / 86_400) as i64;
    let (y, m, d) = civil_from_days(days_now);
    let (y, m, d) = match unit {
        "a" => (y + (sign * amount) as i64, m, d),
        "mo" => {
            let total = y * 12 + (m as i64 - 1) + (sign * amount) as i64;
            (total.div_euclid(12), (total.rem_euclid(12) + 1) as u32, d)
        }
        "wk" => civil_from_days(days_now + (sign * amount * 7.0) as i64),
        "d" => civil_from_days(days_now + (sign * amount) as i64),
        _ => return None,
    };
    // Day 29-31 of a shifted month may not exist; the 28th is close enough for a bound
    // stated in months or years.
    Some(format!("{y:04}-{m:02}-{:02}", d.min(28)))
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn bounds() {
        let kg = |v: i64| json!({"value": v, "system": "http://unitsofmeasure.org", "code": "kg"});
        assert!(violation("Quantity", &kg(0), &kg(-1), true).is_some());
        assert!(violation("Quantity", &kg(0), &kg(1), true).is_none());
        // Prefixed units of one base compare after conversion: 11000 g > 10 kg.
        let g = |v: i64| json!({"value": v, "system": "http://unitsofmeasure.org", "code": "g"});
        assert!(violation("Quantity", &kg(0), &g(-1), true).is_some());
        assert!(violation("Quantity", &kg(10), &g(11_000), false).is_some());
        assert!(violation("Quantity", &kg(10), &g(9_000), false).is_none());
        // Other units: not comparable without UCUM, not a violation.
        let lb = json!({"value": -1, "system": "http://unitsofmeasure.org", "code": "[lb_av]"});
        assert!(violation("Quantity", &kg(0), &lb, true).is_none());
        assert!(violation("Integer", &json!(3), &json!(2), true).is_some());
        assert!(violation("Integer", &json!(3), &json!(4), false).is_some());
        assert!(violation("Date", &json!("2020"), &json!("2019-12-31"), true).is_some());
        assert!(violation("Date", &json!("2020"), &json!("2020-06-01"), true).is_none());
        let century = json!({"value": 100, "system": "http://unitsofmeasure.org", "code": "a"});
        assert!(violation("Duration", &century, &json!("1850-01-01"), true).is_some());
        assert!(violation("Duration", &century, &json!("1900-01-01"), false).is_none());
        let decade = json!({"value": 10, "system": "http://unitsofmeasure.org", "code": "a"});
        assert!(violation("Duration", &decade, &json!("2100-01-01"), false).is_some());
        assert!(violation("Duration", &decade, &json!("2020-01-01"), false).is_none());
    }
}
