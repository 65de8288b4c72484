use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};

/// A FHIR instant (`2024-05-01T10:00:00.123Z`): millisecond precision, always UTC.
pub fn format_instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn now_instant() -> (DateTime<Utc>, String) {
    let now = Utc::now();
    (now, format_instant(now))
}

/// The span of time a FHIR date, dateTime or instant value covers, in milliseconds since
/// the epoch: `[start, end)`. `2024` covers the whole year, `2024-05-01T10:00Z` one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub start: i64,
    pub end: i64,
}

/// Parses a FHIR date/dateTime/instant (any precision) into the range it covers.
/// Values without a timezone are read as UTC. `None` when the text is not a FHIR date.
pub fn parse_date_range(text: &str) -> Option<DateRange> {
    let t = text.trim();
    let bytes = t.as_bytes();
    let year: i32 = t.get(0..4)?.parse().ok()?;
    if bytes.len() == 4 {
        return span(ymd(year, 1, 1)?, ymd(year + 1, 1, 1)?);
    }
    if bytes.get(4) != Some(&b'-') {
        return None;
    }
    let month: u32 = t.get(5..7)?.parse().ok()?;
    if bytes.len() == 7 {
        let (ny, nm) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        return span(ymd(year, month, 1)?, ymd(ny, nm, 1)?);
    }
    if bytes.get(7) != Some(&b'-') {
        return None;
    }
    let day: u32 = t.get(8..10)?.parse().ok()?;
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    if bytes.len() == 10 {
        let start = Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?);
        return Some(DateRange {
            start: start.timestamp_millis(),
            end: start.timestamp_millis() + 86_400_000,
        });
    }
    if bytes.get(10) != Some(&b'T') {
        return None;
    }
    let rest = &t[11..];
    // Split the clock part from the zone (Z, +hh:mm, -hh:mm or none).
    let zone_at = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let offset_secs = match zone {
        "" | "Z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let h: i32 = z.get(1..3)?.parse().ok()?;
            let m: i32 = z.get(4..6)?.parse().ok()?;
            if z.len() != 6 || z.as_bytes()[3] != b':' {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let hour: u32 = parts.first()?.parse().ok()?;
    let minute: u32 = parts.get(1)?.parse().ok()?;
    let (second, frac, precision_ms): (u32, u32, i64) = match parts.get(2) {
        None => (0, 0, 60_000),
        Some(s) => {
            let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
            let second: u32 = whole.parse().ok()?;
            if fraction.is_empty() {
                (second, 0, 1000)
            } else {
                if !fraction.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let mut ms = String::from(fraction);
                ms.truncate(3);
                while ms.len() < 3 {
                    ms.push('0');
                }
                (second, ms.parse().ok()?, 1)
            }
        }
    };
    if parts.len() > 3 {
        return None;
    }
    let naive = NaiveDateTime::new(
        date,
        chrono::NaiveTime::from_hms_milli_opt(hour, minute, second.min(59), frac)?,
    );
    let start = naive.and_utc().timestamp_millis() - i64::from(offset_secs) * 1000;
    Some(DateRange {
        start,
        end: start + precision_ms,
    })
}

fn ymd(y: i32, m: u32, d: u32) -> Option<DateTime<Utc>> {
    let date = NaiveDate::from_ymd_opt(y, m, d)?;
    let _ = date.year();
    Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?))
}

fn span(a: DateTime<Utc>, b: DateTime<Utc>) -> Option<DateRange> {
    Some(DateRange {
        start: a.timestamp_millis(),
        end: b.timestamp_millis(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_precision() {
        let y = parse_date_range("2024").unwrap();
        assert_eq!(y.end - y.start, 366 * 86_400_000);
        let m = parse_date_range("2023-02").unwrap();
        assert_eq!(m.end - m.start, 28 * 86_400_000);
        let d = parse_date_range("2024-05-01").unwrap();
        assert_eq!(d.end - d.start, 86_400_000);
        let t = parse_date_range("2024-05-01T10:00:00Z").unwrap();
        assert_eq!(t.end - t.start, 1000);
        let tz = parse_date_range("2024-05-01T12:00:00+02:00").unwrap();
        assert_eq!(tz.start, t.start);
        let ms = parse_date_range("2024-05-01T10:00:00.5Z").unwrap();
        assert_eq!(ms.start, t.start + 500);
        assert!(parse_date_range("2024-13-01").is_none());
        assert!(parse_date_range("hello").is_none());
        assert!(parse_date_range("2024-05-01T10:00:00+2").is_none());
    }
}
