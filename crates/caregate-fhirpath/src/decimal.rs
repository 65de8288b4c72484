//! Exact decimal arithmetic for FHIRPath `Decimal`.
//!
//! FHIR decimals are lexical: `1.50` has two digits of precision and must not turn into
//! `1.5000000000000002` on the way through an invariant. A value is an `i128` mantissa and a
//! decimal scale (`value = mantissa / 10^scale`), which covers the 28 significant digits the
//! FHIRPath spec asks for. Every operation is checked: overflow yields `None` (the evaluator
//! turns that into an empty result), never a panic or a silently wrong number.

use std::cmp::Ordering;
use std::fmt;

/// Largest scale kept; results with more fractional digits are rounded (half away from zero).
pub const MAX_SCALE: u32 = 28;
/// Fractional digits kept by division, as the reference engines do (`1.2 / 1.8 = 0.66666667`).
const DIV_SCALE: u32 = 8;

/// A decimal number with its precision, e.g. `1.50` is `{ mantissa: 150, scale: 2 }`.
#[derive(Clone, Copy, Debug)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

impl Decimal {
    pub const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };
    pub const ONE: Decimal = Decimal {
        mantissa: 1,
        scale: 0,
    };

    /// `mantissa / 10^scale`; `None` when the scale exceeds [`MAX_SCALE`].
    pub fn new(mantissa: i128, scale: u32) -> Option<Decimal> {
        (scale <= MAX_SCALE).then_some(Decimal { mantissa, scale })
    }

    pub fn from_i64(n: i64) -> Decimal {
        Decimal {
            mantissa: i128::from(n),
            scale: 0,
        }
    }

    pub fn mantissa(&self) -> i128 {
        self.mantissa
    }

    /// Digits after the decimal point as written (`1.50` → 2).
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// Parses a JSON/FHIRPath number: `-12.340`, `1e3`, `2.5E-2`. Leading `+` is accepted.
    pub fn parse(text: &str) -> Option<Decimal> {
        let (mant_part, exp) = match text.find(['e', 'E']) {
            Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
            None => (text, 0),
        };
        let (neg, digits) = match mant_part.as_bytes().first()? {
            b'-' => (true, &mant_part[1..]),
            b'+' => (false, &mant_part[1..]),
            _ => (false, mant_part),
        };
        let (int, frac) = match digits.find('.') {
            Some(i) => (&digits[..i], &digits[i + 1..]),
            None => (digits, ""),
        };
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if digits.contains('.') && frac.is_empty() {
            return None;
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut m: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            m = m.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
        }
        let mut scale = i64::try_from(frac.len()).ok()? - i64::from(exp);
        if scale < 0 {
            m = m.checked_mul(pow10(u32::try_from(-scale).ok()?)?)?;
            scale = 0;
        }
        let scale = u32::try_from(scale).ok()?;
        let d = Decimal {
            mantissa: if neg { -m } else { m },
            scale,
        };
        if scale > MAX_SCALE {
            return d.round(MAX_SCALE);
        }
        Some(d)
    }

    /// Approximation for the transcendental functions (`sqrt`, `ln`, ...), which FHIRPath
    /// defines only approximately anyway.
    pub fn to_f64(&self) -> f64 {
        self.to_string().parse().unwrap_or(f64::NAN)
    }

    /// Back from a float result, keeping at most 8 fractional digits so `ln(1) = 0.0` and
    /// `16.log(2) = 4.0` compare exactly.
    pub fn from_f64(f: f64) -> Option<Decimal> {
        if !f.is_finite() {
            return None;
        }
        let d = Decimal::parse(&format!("{f:.12}"))?;
        Some(d.round(DIV_SCALE)?.trimmed())
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// The same value at a larger scale (`1.5` → `1.500`); `None` on overflow.
    pub fn rescale_up(&self, scale: u32) -> Option<Decimal> {
        if scale < self.scale {
            return None;
        }
        Some(Decimal {
            mantissa: self.mantissa.checked_mul(pow10(scale - self.scale)?)?,
            scale,
        })
    }

    /// Drops trailing fractional zeros (`2.500` → `2.5`, `1.0` → `1`).
    pub fn trimmed(&self) -> Decimal {
        let mut d = *self;
        while d.scale > 0 && d.mantissa % 10 == 0 {
            d.mantissa /= 10;
            d.scale -= 1;
        }
        d
    }

    fn align(a: &Decimal, b: &Decimal) -> Option<(i128, i128, u32)> {
        let s = a.scale.max(b.scale);
        Some((a.rescale_up(s)?.mantissa, b.rescale_up(s)?.mantissa, s))
    }

    pub fn checked_add(&self, o: &Decimal) -> Option<Decimal> {
        let (x, y, s) = Decimal::align(self, o)?;
        Decimal::new(x.checked_add(y)?, s)
    }

    pub fn checked_sub(&self, o: &Decimal) -> Option<Decimal> {
        let (x, y, s) = Decimal::align(self, o)?;
        Decimal::new(x.checked_sub(y)?, s)
    }

    pub fn checked_mul(&self, o: &Decimal) -> Option<Decimal> {
        let m = self.mantissa.checked_mul(o.mantissa)?;
        let d = Decimal {
            mantissa: m,
            scale: self.scale + o.scale,
        };
        if d.scale > MAX_SCALE {
            d.round(MAX_SCALE)
        } else {
            Some(d)
        }
    }

    /// Division to [`DIV_SCALE`] fractional digits, trailing zeros dropped; `None` for `/ 0`.
    pub fn checked_div(&self, o: &Decimal) -> Option<Decimal> {
        self.div_to_scale(o, DIV_SCALE.max(self.scale).max(o.scale))
            .map(|d| d.trimmed())
    }

    /// `self / o` rounded half away from zero at `scale` fractional digits.
    pub fn div_to_scale(&self, o: &Decimal, scale: u32) -> Option<Decimal> {
        if o.mantissa == 0 {
            return None;
        }
        // q = m1 * 10^(scale + s2 - s1) / m2, computed with one extra digit for rounding.
        let shift = i64::from(scale) + i64::from(o.scale) - i64::from(self.scale) + 1;
        let (num, den) = if shift >= 0 {
            (
                self.mantissa
                    .checked_mul(pow10(u32::try_from(shift).ok()?)?)?,
                o.mantissa,
            )
        } else {
            (
                self.mantissa,
                o.mantissa
                    .checked_mul(pow10(u32::try_from(-shift).ok()?)?)?,
            )
        };
        let q = num / den;
        let rounded = if q % 10 >= 5 {
            q / 10 + 1
        } else if q % 10 <= -5 {
            q / 10 - 1
        } else {
            q / 10
        };
        Decimal::new(rounded, scale)
    }

    /// Truncating division (`div`): the integer part of the quotient.
    pub fn div_trunc(&self, o: &Decimal) -> Option<Decimal> {
        let (x, y, _) = Decimal::align(self, o)?;
        if y == 0 {
            return None;
        }
        Some(Decimal::from_i128(x / y))
    }

    fn from_i128(m: i128) -> Decimal {
        Decimal {
            mantissa: m,
            scale: 0,
        }
    }

    /// Remainder of truncating division (`mod`), with the sign of the dividend.
    pub fn rem(&self, o: &Decimal) -> Option<Decimal> {
        let (x, y, s) = Decimal::align(self, o)?;
        if y == 0 {
            return None;
        }
        Decimal::new(x % y, s)
    }

    pub fn neg(&self) -> Decimal {
        Decimal {
            mantissa: -self.mantissa,
            scale: self.scale,
        }
    }

    pub fn abs(&self) -> Decimal {
        Decimal {
            mantissa: self.mantissa.abs(),
            scale: self.scale,
        }
    }

    /// Rounds half away from zero to `digits` fractional digits (more digits: unchanged).
    pub fn round(&self, digits: u32) -> Option<Decimal> {
        if digits >= self.scale {
            return Some(*self);
        }
        let p = pow10(self.scale - digits)?;
        let q = self.mantissa / p;
        let r = self.mantissa % p;
        let half = p / 2;
        let q = if r >= half && r > 0 {
            q + 1
        } else if -r >= half && r < 0 {
            q - 1
        } else {
            q
        };
        Decimal::new(q, digits)
    }

    /// Truncates toward zero to `digits` fractional digits.
    pub fn truncate_to(&self, digits: u32) -> Option<Decimal> {
        if digits >= self.scale {
            return self.rescale_up(digits);
        }
        let p = pow10(self.scale - digits)?;
        Decimal::new(self.mantissa / p, digits)
    }

    /// Integer part toward zero.
    pub fn trunc(&self) -> Option<i64> {
        let p = pow10(self.scale)?;
        i64::try_from(self.mantissa / p).ok()
    }

    pub fn floor(&self) -> Option<i64> {
        let p = pow10(self.scale)?;
        let q = self.mantissa.div_euclid(p);
        i64::try_from(q).ok()
    }

    pub fn ceiling(&self) -> Option<i64> {
        let p = pow10(self.scale)?;
        let q = self.mantissa.div_euclid(p);
        let q = if self.mantissa.rem_euclid(p) != 0 {
            q + 1
        } else {
            q
        };
        i64::try_from(q).ok()
    }

    /// The integer value when there is no fractional part (`2.0` → 2).
    pub fn to_integer(&self) -> Option<i64> {
        let p = pow10(self.scale)?;
        (self.mantissa % p == 0)
            .then(|| i64::try_from(self.mantissa / p).ok())
            .flatten()
    }

    /// Exact comparison by value (`1.10` = `1.1`).
    pub fn cmp_value(&self, o: &Decimal) -> Ordering {
        match Decimal::align(self, o) {
            Some((x, y, _)) => x.cmp(&y),
            // Only reachable with ~38-digit values; the float order is then good enough.
            None => self
                .to_f64()
                .partial_cmp(&o.to_f64())
                .unwrap_or(Ordering::Equal),
        }
    }

    pub fn eq_value(&self, o: &Decimal) -> bool {
        self.cmp_value(o) == Ordering::Equal
    }

    /// FHIRPath equivalence: equal after rounding both to the smaller precision.
    pub fn equivalent(&self, o: &Decimal) -> bool {
        let s = self.scale.min(o.scale);
        match (self.round(s), o.round(s)) {
            (Some(a), Some(b)) => a.eq_value(&b),
            _ => false,
        }
    }

    /// `lowBoundary(precision)` / `highBoundary(precision)`: the least/greatest value the
    /// written number may stand for (`1.587` → 1.5865 / 1.5875), truncated or rounded to
    /// `precision` digits the way HL7's test suite expects.
    pub fn boundary(&self, precision: u32, high: bool) -> Option<Decimal> {
        if precision > MAX_SCALE {
            return None;
        }
        if self.is_negative() {
            return self.neg().boundary(precision, !high).map(|d| d.neg());
        }
        let half = Decimal::new(5, self.scale + 1)?;
        let widened = if high {
            self.checked_add(&half)?
        } else {
            self.checked_sub(&half)?
        };
        if high {
            widened.round(precision)?.rescale_up(precision)
        } else {
            widened.truncate_to(precision)
        }
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.eq_value(other)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.mantissa < 0;
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        if neg {
            f.write_str("-")?;
        }
        if scale == 0 {
            return f.write_str(&digits);
        }
        if digits.len() <= scale {
            write!(f, "0.{}{}", "0".repeat(scale - digits.len()), digits)
        } else {
            let (i, fr) = digits.split_at(digits.len() - scale);
            write!(f, "{i}.{fr}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn parse_and_print_keep_lexical_form() {
        for s in ["0", "1.50", "-0.001", "1234567890987654321.0", "0.00000001"] {
            assert_eq!(d(s).to_string(), s);
        }
        assert_eq!(d("1e3").to_string(), "1000");
        assert_eq!(d("2.5E-2").to_string(), "0.025");
        assert!(Decimal::parse("1.").is_none());
        assert!(Decimal::parse(".5").is_none());
        assert!(Decimal::parse("1.a").is_none());
        assert!(Decimal::parse("").is_none());
        assert!(Decimal::parse("-").is_none());
        assert!(Decimal::parse("99999999999999999999999999999999999999999").is_none());
    }

    #[test]
    fn arithmetic_is_exact() {
        assert_eq!(d("0.1").checked_add(&d("0.2")).unwrap().to_string(), "0.3");
        assert_eq!(d("1.8").checked_sub(&d("1.2")).unwrap().to_string(), "0.6");
        assert_eq!(d("1.2").checked_mul(&d("1.8")).unwrap().to_string(), "2.16");
        assert_eq!(
            d("1.2").checked_div(&d("1.8")).unwrap().to_string(),
            "0.66666667"
        );
        assert_eq!(d("1").checked_div(&d("2")).unwrap().to_string(), "0.5");
        assert!(d("1").checked_div(&d("0")).is_none());
        assert_eq!(d("2.2").rem(&d("1.8")).unwrap().to_string(), "0.4");
        assert_eq!(d("2.2").div_trunc(&d("1.8")).unwrap().to_string(), "1");
        assert_eq!(d("-7").div_trunc(&d("2")).unwrap().to_string(), "-3");
    }

    #[test]
    fn rounding_and_comparison() {
        assert_eq!(d("3.14159").round(3).unwrap().to_string(), "3.142");
        assert_eq!(d("-2.5").round(0).unwrap().to_string(), "-3");
        assert_eq!(d("-2.1").floor(), Some(-3));
        assert_eq!(d("-1.1").ceiling(), Some(-1));
        assert_eq!(d("-1.56").trunc(), Some(-1));
        assert!(d("1.10") == d("1.1"));
        assert!(d("0.66666667").equivalent(&d("0.67")));
        assert!(!d("0.66666667").equivalent(&d("0.6")));
        assert_eq!(d("1.0").cmp_value(&d("1.2")), Ordering::Less);
    }

    #[test]
    fn boundaries_match_the_suite() {
        let b = |s: &str, p: u32, h: bool| d(s).boundary(p, h).map(|x| x.to_string());
        assert_eq!(b("1.587", 8, false).as_deref(), Some("1.58650000"));
        assert_eq!(b("1.587", 2, false).as_deref(), Some("1.58"));
        assert_eq!(b("1.587", 0, false).as_deref(), Some("1"));
        assert_eq!(b("-1.587", 2, false).as_deref(), Some("-1.59"));
        assert_eq!(b("-1.587", 0, false).as_deref(), Some("-2"));
        assert_eq!(b("1.587", 2, true).as_deref(), Some("1.59"));
        assert_eq!(b("-1.587", 2, true).as_deref(), Some("-1.58"));
        assert_eq!(b("1", 0, true).as_deref(), Some("2"));
        assert_eq!(b("120", 2, false).as_deref(), Some("119.50"));
        assert_eq!(b("12.500", 4, true).as_deref(), Some("12.5005"));
        assert_eq!(b("0.0034", 1, true).as_deref(), Some("0.0"));
        assert!(b("1.587", 32, false).is_none());
    }
}
