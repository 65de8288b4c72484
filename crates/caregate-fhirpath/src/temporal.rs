//! FHIRPath `Date`, `DateTime` and `Time` with partial precision.
//!
//! FHIR dates are often partial (`1974`, `1974-12`), and FHIRPath's comparison rules depend on
//! that: values are compared component by component and the answer is *unknown* (empty) when
//! one side runs out of components before a difference is found. Timezones are normalised
//! to UTC when both sides carry one; comparing a zoned and an unzoned time of day is unknown.

use std::cmp::Ordering;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemporalKind {
    Date,
    DateTime,
    Time,
}

/// How far a value is specified. Seconds and milliseconds count as one precision when
/// comparing (`@T10:30:00 = @T10:30:00.0`), but are kept apart for output and `precision()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

impl Precision {
    fn comparable_level(self) -> u8 {
        match self {
            Precision::Year => 0,
            Precision::Month => 1,
            Precision::Day => 2,
            Precision::Hour => 3,
            Precision::Minute => 4,
            Precision::Second | Precision::Millisecond => 5,
        }
    }
}

/// A date, date-time or time value. Fields below the precision are zero. `==` is structural
/// (same fields, same precision); use [`Temporal::compare`] for FHIRPath semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Temporal {
    pub kind: TemporalKind,
    pub precision: Precision,
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub millis: u16,
    /// Offset from UTC in minutes, when given.
    pub tz: Option<i16>,
    /// The offset was written `Z` (kept for output).
    pub zulu: bool,
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub(crate) fn days_in_month(y: i32, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 (proleptic Gregorian), after Howard Hinnant's algorithm.
fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> Option<(i32, u8, u8)> {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    Some((
        i32::try_from(y).ok()?,
        u8::try_from(m).ok()?,
        u8::try_from(d).ok()?,
    ))
}

struct Cursor<'s> {
    b: &'s [u8],
    i: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let s = self.b.get(self.i..self.i + n)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += n;
        Some(s.iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0')))
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
}

impl Temporal {
    fn empty(kind: TemporalKind) -> Temporal {
        Temporal {
            kind,
            precision: Precision::Year,
            year: 0,
            month: 0,
            day: 0,
            hour: 0,
            minute: 0,
            second: 0,
            millis: 0,
            tz: None,
            zulu: false,
        }
    }

    /// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
    pub fn parse_date(s: &str) -> Option<Temporal> {
        let mut c = Cursor {
            b: s.as_bytes(),
            i: 0,
        };
        let mut t = Temporal::empty(TemporalKind::Date);
        t.parse_date_part(&mut c)?;
        c.done().then_some(t)
    }

    fn parse_date_part(&mut self, c: &mut Cursor<'_>) -> Option<()> {
        self.year = i32::try_from(c.digits(4)?).ok()?;
        self.precision = Precision::Year;
        if c.eat(b'-') {
            let m = u8::try_from(c.digits(2)?).ok()?;
            if !(1..=12).contains(&m) {
                return None;
            }
            self.month = m;
            self.precision = Precision::Month;
            if c.eat(b'-') {
                let d = u8::try_from(c.digits(2)?).ok()?;
                if d == 0 || d > days_in_month(self.year, m) {
                    return None;
                }
                self.day = d;
                self.precision = Precision::Day;
            }
        }
        Some(())
    }

    fn parse_time_part(&mut self, c: &mut Cursor<'_>) -> Option<()> {
        let h = u8::try_from(c.digits(2)?).ok()?;
        if h > 23 {
            return None;
        }
        self.hour = h;
        self.precision = Precision::Hour;
        if c.eat(b':') {
            let m = u8::try_from(c.digits(2)?).ok()?;
            if m > 59 {
                return None;
            }
            self.minute = m;
            self.precision = Precision::Minute;
            if c.eat(b':') {
                let s = u8::try_from(c.digits(2)?).ok()?;
                if s > 59 {
                    return None;
                }
                self.second = s;
                self.precision = Precision::Second;
                if c.eat(b'.') {
                    let start = c.i;
                    while c.b.get(c.i).is_some_and(u8::is_ascii_digit) {
                        c.i += 1;
                    }
                    let frac = &c.b[start..c.i];
                    if frac.is_empty() {
                        return None;
                    }
                    let mut ms = 0u16;
                    for k in 0..3 {
                        ms = ms * 10 + frac.get(k).map_or(0, |d| u16::from(d - b'0'));
                    }
                    self.millis = ms;
                    self.precision = Precision::Millisecond;
                }
            }
        }
        Some(())
    }

    fn parse_tz(&mut self, c: &mut Cursor<'_>) -> Option<()> {
        if c.eat(b'Z') {
            self.tz = Some(0);
            self.zulu = true;
            return Some(());
        }
        let sign = if c.eat(b'+') {
            1
        } else if c.eat(b'-') {
            -1
        } else {
            return Some(());
        };
        let h = i16::try_from(c.digits(2)?).ok()?;
        if !c.eat(b':') {
            return None;
        }
        let m = i16::try_from(c.digits(2)?).ok()?;
        if h > 14 || m > 59 {
            return None;
        }
        self.tz = Some(sign * (h * 60 + m));
        Some(())
    }

    /// A FHIR `dateTime`/`instant` or a FHIRPath DateTime literal body: `2015`, `2015T`,
    /// `2015-02-04T14`, `2015-02-04T14:34:28.123+10:00`.
    pub fn parse_datetime(s: &str) -> Option<Temporal> {
        let mut c = Cursor {
            b: s.as_bytes(),
            i: 0,
        };
        let mut t = Temporal::empty(TemporalKind::DateTime);
        t.parse_date_part(&mut c)?;
        if c.eat(b'T') {
            if !c.done() && t.precision == Precision::Day {
                if matches!(c.b.get(c.i), Some(b'Z' | b'+' | b'-')) {
                    t.parse_tz(&mut c)?;
                } else {
                    t.parse_time_part(&mut c)?;
                    t.parse_tz(&mut c)?;
                }
            }
        } else if t.precision == Precision::Day {
            t.parse_tz(&mut c)?;
        }
        c.done().then_some(t)
    }

    /// `HH`, `HH:MM`, `HH:MM:SS(.fff)`; no timezone (FHIRPath times have none).
    pub fn parse_time(s: &str) -> Option<Temporal> {
        let mut c = Cursor {
            b: s.as_bytes(),
            i: 0,
        };
        let mut t = Temporal::empty(TemporalKind::Time);
        t.parse_time_part(&mut c)?;
        c.done().then_some(t)
    }

    /// The current instant (UTC, millisecond precision) — `now()`.
    pub fn now() -> Temporal {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ms = i64::try_from(since.as_millis()).unwrap_or(0);
        let days = ms.div_euclid(86_400_000);
        let rem = ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days).unwrap_or((1970, 1, 1));
        Temporal {
            kind: TemporalKind::DateTime,
            precision: Precision::Millisecond,
            year,
            month,
            day,
            hour: (rem / 3_600_000) as u8,
            minute: (rem / 60_000 % 60) as u8,
            second: (rem / 1000 % 60) as u8,
            millis: (rem % 1000) as u16,
            tz: Some(0),
            zulu: true,
        }
    }

    /// Today's date — `today()`.
    pub fn today() -> Temporal {
        let mut t = Temporal::now();
        t.kind = TemporalKind::Date;
        t.precision = Precision::Day;
        t.truncate_fields();
        t.tz = None;
        t.zulu = false;
        t
    }

    fn truncate_fields(&mut self) {
        let p = self.precision;
        if p < Precision::Month && self.kind != TemporalKind::Time {
            self.month = 0;
        }
        if p < Precision::Day && self.kind != TemporalKind::Time {
            self.day = 0;
        }
        if p < Precision::Hour {
            self.hour = 0;
        }
        if p < Precision::Minute {
            self.minute = 0;
        }
        if p < Precision::Second {
            self.second = 0;
        }
        if p < Precision::Millisecond {
            self.millis = 0;
        }
    }

    /// The value as a DateTime (a Date compares with a DateTime at day precision or less).
    pub fn as_datetime(&self) -> Temporal {
        let mut t = *self;
        if t.kind == TemporalKind::Date {
            t.kind = TemporalKind::DateTime;
        }
        t
    }

    fn components(&self) -> [i64; 6] {
        if self.kind == TemporalKind::Time {
            [
                0,
                0,
                0,
                i64::from(self.hour),
                i64::from(self.minute),
                i64::from(self.second) * 1000 + i64::from(self.millis),
            ]
        } else {
            [
                i64::from(self.year),
                i64::from(self.month),
                i64::from(self.day),
                i64::from(self.hour),
                i64::from(self.minute),
                i64::from(self.second) * 1000 + i64::from(self.millis),
            ]
        }
    }

    /// This value shifted to UTC (only meaningful with an hour or finer and an offset).
    fn in_utc(self) -> Option<Temporal> {
        let off = i64::from(self.tz?);
        if off == 0 {
            return Some(self);
        }
        let mut t = self;
        let mins = days_from_civil(t.year, t.month.max(1), t.day.max(1)) * 1440
            + i64::from(t.hour) * 60
            + i64::from(t.minute)
            - off;
        let (y, m, d) = civil_from_days(mins.div_euclid(1440))?;
        let rem = mins.rem_euclid(1440);
        t.year = y;
        t.month = m;
        t.day = d;
        t.hour = u8::try_from(rem / 60).ok()?;
        t.minute = u8::try_from(rem % 60).ok()?;
        t.tz = Some(0);
        Some(t)
    }

    /// FHIRPath ordering: `None` when the values are not comparable (different kinds) *or*
    /// when the answer is unknown because of differing precision or missing timezones.
    pub fn compare(&self, other: &Temporal) -> Option<Ordering> {
        let (a, b) = match (self.kind, other.kind) {
            (TemporalKind::Time, TemporalKind::Time) => (*self, *other),
            (TemporalKind::Time, _) | (_, TemporalKind::Time) => return None,
            _ => (self.as_datetime(), other.as_datetime()),
        };
        let timed = a.precision >= Precision::Hour && b.precision >= Precision::Hour;
        let (a, b) = match (a.tz, b.tz) {
            (Some(_), Some(_)) if timed => (a.in_utc()?, b.in_utc()?),
            (Some(_), None) | (None, Some(_)) if timed => return None,
            _ => (a, b),
        };
        let (la, lb) = (
            a.precision.comparable_level(),
            b.precision.comparable_level(),
        );
        let start = if a.kind == TemporalKind::Time { 3 } else { 0 };
        let (ca, cb) = (a.components(), b.components());
        for level in start..6u8 {
            let (ha, hb) = (level <= la, level <= lb);
            match (ha, hb) {
                (true, true) => match ca[level as usize].cmp(&cb[level as usize]) {
                    Ordering::Equal => {}
                    o => return Some(o),
                },
                (false, false) => return Some(Ordering::Equal),
                _ => return None,
            }
        }
        Some(Ordering::Equal)
    }

    pub fn same_kind(&self, other: &Temporal) -> bool {
        (self.kind == TemporalKind::Time) == (other.kind == TemporalKind::Time)
    }

    /// `~`: equal, with values of different precision simply not equivalent.
    pub fn equivalent(&self, other: &Temporal) -> bool {
        self.precision.comparable_level() == other.precision.comparable_level()
            && self.compare(other) == Some(Ordering::Equal)
    }

    /// `precision()`: the number of digits the value is written with (`@2014` → 4).
    pub fn digits(&self) -> u32 {
        let date = match self.precision {
            Precision::Year => 4,
            Precision::Month => 6,
            _ => 8,
        };
        let time = match self.precision {
            Precision::Hour => 2,
            Precision::Minute => 4,
            Precision::Second => 6,
            Precision::Millisecond => 9,
            _ => 0,
        };
        match self.kind {
            TemporalKind::Time => time,
            TemporalKind::Date => date,
            TemporalKind::DateTime => date + time,
        }
    }

    /// `lowBoundary(digits)` / `highBoundary(digits)`: the earliest/latest value this one can
    /// stand for, at the precision given by a digit count (6 = month, 17 = milliseconds).
    pub fn boundary(&self, digits: Option<u32>, high: bool) -> Option<Temporal> {
        let target = match self.kind {
            TemporalKind::Time => match digits.unwrap_or(9) {
                2 => Precision::Hour,
                4 => Precision::Minute,
                6 => Precision::Second,
                9 => Precision::Millisecond,
                _ => return None,
            },
            _ => match digits.unwrap_or(if self.kind == TemporalKind::Date {
                8
            } else {
                17
            }) {
                4 => Precision::Year,
                6 => Precision::Month,
                8 => Precision::Day,
                10 => Precision::Hour,
                12 => Precision::Minute,
                14 => Precision::Second,
                17 => Precision::Millisecond,
                _ => return None,
            },
        };
        let mut t = *self;
        if self.kind == TemporalKind::Date && target > Precision::Day {
            return None;
        }
        let fill = |p: Precision, cur: Precision| p > cur;
        let cur = self.precision;
        if self.kind != TemporalKind::Time {
            if fill(Precision::Month, cur) {
                t.month = if high { 12 } else { 1 };
            }
            if fill(Precision::Day, cur) {
                t.day = if high {
                    days_in_month(t.year, t.month.max(1))
                } else {
                    1
                };
            }
        }
        if fill(Precision::Hour, cur) {
            t.hour = if high { 23 } else { 0 };
        }
        if fill(Precision::Minute, cur) {
            t.minute = if high { 59 } else { 0 };
        }
        if fill(Precision::Second, cur) {
            t.second = if high { 59 } else { 0 };
        }
        if fill(Precision::Millisecond, cur) {
            t.millis = if high { 999 } else { 0 };
        }
        if self.kind == TemporalKind::DateTime && target >= Precision::Hour && t.tz.is_none() {
            // Without an offset the value could be in any zone: widen to the extremes.
            t.tz = Some(if high { -12 * 60 } else { 14 * 60 });
        }
        t.precision = target;
        t.truncate_fields();
        if target < Precision::Hour && t.kind == TemporalKind::DateTime {
            t.kind = TemporalKind::Date;
            t.tz = None;
        }
        Some(t)
    }

    /// Adds `amount` of a calendar unit (`year`, `month`, `week`, `day`, `hour`, `minute`,
    /// `second`, `millisecond`). Units finer than the value's precision are converted to its
    /// precision and truncated, as the spec says (`@2019-01-01 + 25 hours` adds one day).
    pub fn add(&self, amount: i64, unit: CalendarUnit) -> Option<Temporal> {
        let mut t = *self;
        let (amount, unit) = match (unit, self.kind) {
            (CalendarUnit::Week, _) => (amount.checked_mul(7)?, CalendarUnit::Day),
            _ => (amount, unit),
        };
        if self.kind == TemporalKind::Time {
            let ms = match unit {
                CalendarUnit::Hour => amount.checked_mul(3_600_000)?,
                CalendarUnit::Minute => amount.checked_mul(60_000)?,
                CalendarUnit::Second => amount.checked_mul(1000)?,
                CalendarUnit::Millisecond => amount,
                _ => return None,
            };
            let cur = i64::from(t.hour) * 3_600_000
                + i64::from(t.minute) * 60_000
                + i64::from(t.second) * 1000
                + i64::from(t.millis);
            let v = (cur + ms).rem_euclid(86_400_000);
            t.hour = (v / 3_600_000) as u8;
            t.minute = (v / 60_000 % 60) as u8;
            t.second = (v / 1000 % 60) as u8;
            t.millis = (v % 1000) as u16;
            t.truncate_fields();
            return Some(t);
        }
        match unit {
            CalendarUnit::Year => {
                t.year = t.year.checked_add(i32::try_from(amount).ok()?)?;
                if t.precision >= Precision::Day {
                    t.day = t.day.min(days_in_month(t.year, t.month));
                }
            }
            CalendarUnit::Month => {
                if t.precision < Precision::Month {
                    t.year = t.year.checked_add(i32::try_from(amount / 12).ok()?)?;
                } else {
                    let total = i64::from(t.year) * 12 + i64::from(t.month) - 1 + amount;
                    t.year = i32::try_from(total.div_euclid(12)).ok()?;
                    t.month = u8::try_from(total.rem_euclid(12) + 1).ok()?;
                    if t.precision >= Precision::Day {
                        t.day = t.day.min(days_in_month(t.year, t.month));
                    }
                }
            }
            _ => {
                let ms_per = match unit {
                    CalendarUnit::Day => 86_400_000i64,
                    CalendarUnit::Hour => 3_600_000,
                    CalendarUnit::Minute => 60_000,
                    CalendarUnit::Second => 1000,
                    _ => 1,
                };
                let delta = amount.checked_mul(ms_per)?;
                if t.precision < Precision::Day {
                    // Days on a year/month value: whole months only.
                    let months = delta / (86_400_000 * 30);
                    return t.add(months, CalendarUnit::Month);
                }
                let granule = match t.precision {
                    Precision::Day => 86_400_000,
                    Precision::Hour => 3_600_000,
                    Precision::Minute => 60_000,
                    Precision::Second => 1000,
                    _ => 1,
                };
                let delta = delta / granule * granule;
                let cur = days_from_civil(t.year, t.month, t.day)
                    .checked_mul(86_400_000)?
                    .checked_add(
                        i64::from(t.hour) * 3_600_000
                            + i64::from(t.minute) * 60_000
                            + i64::from(t.second) * 1000
                            + i64::from(t.millis),
                    )?
                    .checked_add(delta)?;
                let (y, m, d) = civil_from_days(cur.div_euclid(86_400_000))?;
                let rem = cur.rem_euclid(86_400_000);
                t.year = y;
                t.month = m;
                t.day = d;
                t.hour = (rem / 3_600_000) as u8;
                t.minute = (rem / 60_000 % 60) as u8;
                t.second = (rem / 1000 % 60) as u8;
                t.millis = (rem % 1000) as u16;
            }
        }
        if !(1..=9999).contains(&t.year) {
            return None;
        }
        t.truncate_fields();
        Some(t)
    }
}

/// The units date arithmetic accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalendarUnit {
    Year,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

impl fmt::Display for Temporal {
    /// FHIR JSON form (no `@`): `2015-02-04`, `2015-02-04T14:34:28.123+10:00`, `14:34`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.precision;
        if self.kind != TemporalKind::Time {
            write!(f, "{:04}", self.year)?;
            if p >= Precision::Month {
                write!(f, "-{:02}", self.month)?;
            }
            if p >= Precision::Day {
                write!(f, "-{:02}", self.day)?;
            }
            if self.kind == TemporalKind::Date {
                return Ok(());
            }
            if p < Precision::Hour {
                if p < Precision::Day {
                    f.write_str("T")?;
                }
                return Ok(());
            }
            f.write_str("T")?;
        }
        write!(f, "{:02}", self.hour)?;
        if p >= Precision::Minute {
            write!(f, ":{:02}", self.minute)?;
        }
        if p >= Precision::Second {
            write!(f, ":{:02}", self.second)?;
        }
        if p >= Precision::Millisecond {
            write!(f, ".{:03}", self.millis)?;
        }
        if self.kind == TemporalKind::DateTime {
            match self.tz {
                Some(0) if self.zulu => f.write_str("Z")?,
                Some(off) => {
                    let sign = if off < 0 { '-' } else { '+' };
                    let a = off.unsigned_abs();
                    write!(f, "{sign}{:02}:{:02}", a / 60, a % 60)?;
                }
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> Temporal {
        Temporal::parse_datetime(s).unwrap()
    }

    #[test]
    fn parsing_keeps_precision() {
        assert_eq!(dt("2015").precision, Precision::Year);
        assert_eq!(dt("2015T").precision, Precision::Year);
        assert_eq!(dt("2015-02-04T14").precision, Precision::Hour);
        assert_eq!(
            dt("2015-02-04T14:34:28.123+10:00").to_string(),
            "2015-02-04T14:34:28.123+10:00"
        );
        assert_eq!(
            dt("2015-02-04T14:34:28Z").to_string(),
            "2015-02-04T14:34:28Z"
        );
        assert!(Temporal::parse_datetime("2015-13").is_none());
        assert!(Temporal::parse_datetime("2015-02-30").is_none());
        assert!(Temporal::parse_date("2015-02-04T10").is_none());
        assert!(Temporal::parse_time("14:34:28Z").is_none());
        assert_eq!(Temporal::parse_time("14:34:28.5").unwrap().millis, 500);
    }

    #[test]
    fn comparison_follows_precision_and_timezones() {
        use Ordering::*;
        assert_eq!(dt("2018-03").compare(&dt("2018-03-01")), None);
        assert_eq!(dt("2018-02").compare(&dt("2018-03-01")), Some(Less));
        assert_eq!(
            dt("2012-04-15T15:30:31").compare(&dt("2012-04-15T15:30:31.0")),
            Some(Equal)
        );
        assert_eq!(
            dt("2012-04-15T15:00:00Z").compare(&dt("2012-04-15T10:00:00")),
            None
        );
        assert_eq!(
            dt("2012-04-15T15:00:00+02:00").compare(&dt("2012-04-15T16:00:00+03:00")),
            Some(Equal)
        );
        assert_eq!(
            dt("2017-11-05T01:30:00.0-04:00").compare(&dt("2017-11-05T01:15:00.0-05:00")),
            Some(Less)
        );
        let d = Temporal::parse_date("1974-12-25").unwrap();
        assert_eq!(d.compare(&dt("1974-12-25T12:34:00Z")), None);
        assert!(!d.equivalent(&dt("1974-12-25T12:34:00")));
        let t = Temporal::parse_time("10:30").unwrap();
        assert_eq!(t.compare(&Temporal::parse_time("10:30:00").unwrap()), None);
        assert_eq!(t.compare(&d), None);
    }

    #[test]
    fn arithmetic_clamps_and_carries() {
        let d = Temporal::parse_date("1973-12-25").unwrap();
        assert_eq!(
            d.add(7, CalendarUnit::Day).unwrap().to_string(),
            "1974-01-01"
        );
        assert_eq!(
            d.add(1, CalendarUnit::Month).unwrap().to_string(),
            "1974-01-25"
        );
        assert_eq!(
            d.add(-1, CalendarUnit::Month).unwrap().to_string(),
            "1973-11-25"
        );
        let jan31 = Temporal::parse_date("2024-01-31").unwrap();
        assert_eq!(
            jan31.add(1, CalendarUnit::Month).unwrap().to_string(),
            "2024-02-29"
        );
        let t = dt("1973-12-25T00:00:00.000+10:00");
        assert_eq!(
            t.add(10, CalendarUnit::Millisecond).unwrap().to_string(),
            "1973-12-25T00:00:00.010+10:00"
        );
        assert_eq!(
            t.add(-1, CalendarUnit::Hour).unwrap().to_string(),
            "1973-12-24T23:00:00.000+10:00"
        );
        assert_eq!(
            d.add(25, CalendarUnit::Hour).unwrap().to_string(),
            "1973-12-26"
        );
    }

    #[test]
    fn boundaries() {
        assert_eq!(
            Temporal::parse_date("2014")
                .unwrap()
                .boundary(Some(6), false)
                .unwrap()
                .to_string(),
            "2014-01"
        );
        assert_eq!(
            Temporal::parse_date("2014")
                .unwrap()
                .boundary(Some(6), true)
                .unwrap()
                .to_string(),
            "2014-12"
        );
        assert_eq!(
            dt("2014-01-01T08")
                .boundary(Some(17), false)
                .unwrap()
                .to_string(),
            "2014-01-01T08:00:00.000+14:00"
        );
        assert_eq!(
            dt("2014-01-01T08")
                .boundary(Some(8), false)
                .unwrap()
                .to_string(),
            "2014-01-01"
        );
        assert_eq!(
            Temporal::parse_time("10:30")
                .unwrap()
                .boundary(Some(9), true)
                .unwrap()
                .to_string(),
            "10:30:59.999"
        );
    }
}
