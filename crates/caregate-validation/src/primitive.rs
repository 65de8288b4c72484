//! The FHIR R4 primitive types and hand-written matchers for their lexical forms.
//!
//! The matchers follow the `regex` extensions of the R4 primitive StructureDefinitions
//! (plus calendar validity for dates, which no regex states). They are written by hand
//! because the workspace has no regex engine and because a byte-level matcher is far
//! cheaper than a general one on the write path, where every primitive of every inbound
//! resource passes through here.

/// A FHIR R4 primitive type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

/// How a primitive is represented in FHIR JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonForm {
    Bool,
    Integer,
    Number,
    String,
}

/// The longest FHIR `string` allowed (R4 `string.value` maxLength, in characters).
const MAX_STRING_CHARS: usize = 1_048_576;

impl Primitive {
    /// The primitive named by a StructureDefinition type code (`dateTime`, `positiveInt`, ...).
    pub fn from_name(name: &str) -> Option<Primitive> {
        Some(match name {
            "base64Binary" => Primitive::Base64Binary,
            "boolean" => Primitive::Boolean,
            "canonical" => Primitive::Canonical,
            "code" => Primitive::Code,
            "date" => Primitive::Date,
            "dateTime" => Primitive::DateTime,
            "decimal" => Primitive::Decimal,
            "id" => Primitive::Id,
            "instant" => Primitive::Instant,
            "integer" => Primitive::Integer,
            "markdown" => Primitive::Markdown,
            "oid" => Primitive::Oid,
            "positiveInt" => Primitive::PositiveInt,
            "string" => Primitive::String,
            "time" => Primitive::Time,
            "unsignedInt" => Primitive::UnsignedInt,
            "uri" => Primitive::Uri,
            "url" => Primitive::Url,
            "uuid" => Primitive::Uuid,
            "xhtml" => Primitive::Xhtml,
            _ => return None,
        })
    }

    /// The FHIR type code.
    pub fn name(self) -> &'static str {
        match self {
            Primitive::Base64Binary => "base64Binary",
            Primitive::Boolean => "boolean",
            Primitive::Canonical => "canonical",
            Primitive::Code => "code",
            Primitive::Date => "date",
            Primitive::DateTime => "dateTime",
            Primitive::Decimal => "decimal",
            Primitive::Id => "id",
            Primitive::Instant => "instant",
            Primitive::Integer => "integer",
            Primitive::Markdown => "markdown",
            Primitive::Oid => "oid",
            Primitive::PositiveInt => "positiveInt",
            Primitive::String => "string",
            Primitive::Time => "time",
            Primitive::UnsignedInt => "unsignedInt",
            Primitive::Uri => "uri",
            Primitive::Url => "url",
            Primitive::Uuid => "uuid",
            Primitive::Xhtml => "xhtml",
        }
    }

    pub(crate) fn json_form(self) -> JsonForm {
        match self {
            Primitive::Boolean => JsonForm::Bool,
            Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt => {
                JsonForm::Integer
            }
            Primitive::Decimal => JsonForm::Number,
            _ => JsonForm::String,
        }
    }

    /// The smallest value an integer type allows (`positiveInt` ≥ 1, `unsignedInt` ≥ 0).
    pub(crate) fn min_integer(self) -> i64 {
        match self {
            Primitive::PositiveInt => 1,
            Primitive::UnsignedInt => 0,
            _ => i64::from(i32::MIN),
        }
    }
}

/// Checks the lexical form of a string-valued primitive; `Err` carries a short reason.
pub(crate) fn check_string(p: Primitive, s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        // FHIR JSON has no empty primitives: an absent value is written by omitting it.
        return Err("empty strings are not allowed");
    }
    // Control characters other than tab/CR/LF are illegal in every FHIR string type
    // (XML 1.0 cannot carry them either, so accepting them breaks XML round trips).
    if s.bytes()
        .any(|b| b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n')
    {
        return Err("illegal control character");
    }
    let ok = match p {
        Primitive::String | Primitive::Markdown => {
            if s.len() > MAX_STRING_CHARS && s.chars().count() > MAX_STRING_CHARS {
                return Err("longer than 1048576 characters");
            }
            true
        }
        Primitive::Code => is_code(s),
        Primitive::Id => is_id(s),
        Primitive::Uri | Primitive::Url | Primitive::Canonical => {
            if s.bytes().any(is_java_space) {
                return Err("whitespace is not allowed");
            }
            // A urn:uuid: or urn:oid: URI must hold a valid (lowercase) UUID or OID, as the
            // uuid/oid types require; references to bundle entries rely on it.
            if s.starts_with("urn:uuid:") && !is_uuid(s) {
                return Err("urn:uuid: must be followed by a valid lowercase UUID");
            }
            if s.starts_with("urn:oid:") && !is_oid(s) {
                return Err("urn:oid: must be followed by a valid OID");
            }
            true
        }
        Primitive::Oid => is_oid(s),
        Primitive::Uuid => is_uuid(s),
        Primitive::Base64Binary => is_base64(s),
        Primitive::Date => is_date(s.as_bytes()),
        Primitive::DateTime => is_date_time(s.as_bytes()),
        Primitive::Instant => is_instant(s.as_bytes()),
        Primitive::Time => is_time(s.as_bytes()),
        Primitive::Xhtml => is_xhtml_div(s),
        // Not string-valued in JSON; callers only pass string primitives.
        Primitive::Boolean
        | Primitive::Integer
        | Primitive::PositiveInt
        | Primitive::UnsignedInt
        | Primitive::Decimal => true,
    };
    if ok {
        Ok(())
    } else {
        Err(match p {
            Primitive::Code => "codes have no leading, trailing or repeated whitespace",
            Primitive::Id => "ids are 1-64 characters of A-Z a-z 0-9 - .",
            Primitive::Uri | Primitive::Url | Primitive::Canonical => "whitespace is not allowed",
            Primitive::Oid => "expected urn:oid: followed by a dotted number",
            Primitive::Uuid => "expected urn:uuid: followed by a lowercase UUID",
            Primitive::Base64Binary => "not valid base64",
            Primitive::Date => "expected YYYY, YYYY-MM or YYYY-MM-DD (a real calendar date)",
            Primitive::DateTime => {
                "expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.sss)(Z|+hh:mm) (a real calendar date; a time needs a timezone)"
            }
            Primitive::Instant => "expected YYYY-MM-DDThh:mm:ss(.sss)(Z|+hh:mm)",
            Primitive::Time => "expected hh:mm:ss(.sss)",
            Primitive::Xhtml => {
                "narrative must be an XHTML <div> element with only basic formatting (txt-1, txt-2: no scripts, forms, frames, objects or event-handler attributes)"
            }
            _ => "invalid value",
        })
    }
}

/// Java's `\s` (the class the FHIR regexes are written against): space, \t, \n, \x0B, \f, \r.
fn is_java_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `[^\s]+(\s[^\s]+)*`
fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || is_java_space(b[0]) || is_java_space(b[b.len() - 1]) {
        return false;
    }
    !b.windows(2)
        .any(|w| is_java_space(w[0]) && is_java_space(w[1]))
}

/// `[A-Za-z0-9\-\.]{1,64}`
pub(crate) fn is_id(s: &str) -> bool {
    caregate_core::is_valid_id(s)
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = rest.split('.');
    match parts.next() {
        Some("0" | "1" | "2") => {}
        _ => return false,
    }
    let mut arcs = 0;
    for part in parts {
        let b = part.as_bytes();
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
            return false;
        }
        arcs += 1;
    }
    arcs > 0
}

/// `urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`
fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`: base64 alphabet, whitespace allowed between quads.
fn is_base64(s: &str) -> bool {
    let mut n = 0usize;
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=' {
            n += 1;
        } else if !is_java_space(b) {
            return false;
        }
    }
    n > 0 && n.is_multiple_of(4)
}

/// Narrative.div must be an XHTML `div` element (txt-2) holding only the basic formatting
/// elements (txt-1): no active content (scripts, forms, frames, objects, styles) and no
/// event-handler attributes. A scan of the tags, not a full XHTML parse.
fn is_xhtml_div(s: &str) -> bool {
    let t = s.trim_start();
    t.starts_with("<div")
        && matches!(
            t.as_bytes().get(4),
            Some(b' ' | b'>' | b'/' | b'\t' | b'\r' | b'\n')
        )
        && !has_active_xhtml(t)
}

/// Elements txt-1 leaves out that would make a narrative active or a page of its own.
const FORBIDDEN_XHTML: &[&str] = &[
    "script", "object", "applet", "embed", "iframe", "frame", "frameset", "form", "input",
    "button", "select", "textarea", "style", "link", "meta", "head", "body", "html", "base",
    "noscript",
];

fn has_active_xhtml(t: &str) -> bool {
    let b = t.as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'<') {
        let start = i + off + 1;
        // The tag ends at the first `>` outside a quoted attribute value.
        let mut end = b.len();
        let mut quote = None;
        for (k, &c) in b[start..].iter().enumerate() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None if c == b'>' => {
                    end = start + k;
                    break;
                }
                None => {}
            }
        }
        let tag = &t[start..end];
        i = end.min(b.len());
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        let tag = tag.strip_prefix('/').unwrap_or(tag);
        let name_end = tag
            .find(|c: char| c.is_ascii_whitespace() || c == '/')
            .unwrap_or(tag.len());
        let name = &tag[..name_end];
        // A namespace prefix (`h:script`) does not change the element.
        let local = name.rsplit(':').next().unwrap_or(name);
        if FORBIDDEN_XHTML
            .iter()
            .any(|f| f.eq_ignore_ascii_case(local))
        {
            return true;
        }
        // Event handlers: an attribute named on… (onclick, onload). Attributes are read
        // one after another — valueless ones (`<p hidden onclick=…>`) included — and names
        // are compared with `get`, as a name may start with a multi-byte character (found
        // by the ingest_json fuzz target).
        let mut rest = &tag[name_end..];
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
            if rest.is_empty() {
                break;
            }
            let attr_end = rest
                .find(|c: char| c == '=' || c.is_whitespace() || c == '/')
                .unwrap_or(rest.len());
            let attr = &rest[..attr_end];
            if attr.len() > 2 && attr.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("on")) {
                return true;
            }
            rest = rest[attr_end..].trim_start();
            if let Some(r) = rest.strip_prefix('=') {
                // Skip the value: quoted, or up to the next whitespace.
                let r = r.trim_start();
                rest = match r.chars().next() {
                    Some(q @ ('"' | '\'')) => r[1..].find(q).map_or("", |e| &r[e + 2..]),
                    _ => r.find(char::is_whitespace).map_or("", |e| &r[e..]),
                };
            }
        }
    }
    false
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let part = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in part {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `YYYY`, `YYYY-MM` or `YYYY-MM-DD` at the start of `b`; returns how many bytes it
/// used (4, 7 or 10) when the date is a real calendar date. Year 0000 is excluded, as in the
/// spec regex.
fn date_prefix(b: &[u8]) -> Option<usize> {
    let year = digits(b, 0, 4)?;
    if year == 0 {
        return None;
    }
    if b.get(4) != Some(&b'-') {
        return Some(4);
    }
    let month = digits(b, 5, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if b.get(7) != Some(&b'-') {
        return Some(7);
    }
    let day = digits(b, 8, 2)?;
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(10)
}

fn is_date(b: &[u8]) -> bool {
    date_prefix(b) == Some(b.len())
}

/// `hh:mm:ss(.s+)?` at the start of `b`; returns the bytes used.
fn time_prefix(b: &[u8]) -> Option<usize> {
    let h = digits(b, 0, 2)?;
    if h > 23 || b.get(2) != Some(&b':') {
        return None;
    }
    let m = digits(b, 3, 2)?;
    if m > 59 || b.get(5) != Some(&b':') {
        return None;
    }
    let s = digits(b, 6, 2)?;
    if s > 60 {
        return None;
    }
    let mut at = 8;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
    }
    Some(at)
}

/// `Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)`, the whole of `b`.
fn is_zone(b: &[u8]) -> bool {
    match b.first() {
        Some(b'Z') => b.len() == 1,
        Some(b'+' | b'-') => {
            if b.len() != 6 || b[3] != b':' {
                return false;
            }
            match (digits(b, 1, 2), digits(b, 4, 2)) {
                (Some(h), Some(m)) => (h <= 13 && m <= 59) || (h == 14 && m == 0),
                _ => false,
            }
        }
        _ => false,
    }
}

fn is_time(b: &[u8]) -> bool {
    time_prefix(b) == Some(b.len())
}

fn is_date_time(b: &[u8]) -> bool {
    match date_prefix(b) {
        Some(n) if n == b.len() => true,
        Some(10) if b.get(10) == Some(&b'T') => is_clock_and_zone(&b[11..]),
        _ => false,
    }
}

fn is_instant(b: &[u8]) -> bool {
    date_prefix(b) == Some(10) && b.get(10) == Some(&b'T') && is_clock_and_zone(&b[11..])
}

fn is_clock_and_zone(b: &[u8]) -> bool {
    match time_prefix(b) {
        Some(n) => is_zone(&b[n..]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: Primitive, s: &str) -> bool {
        check_string(p, s).is_ok()
    }

    /// Regression: fuzz/artifacts/ingest_json/crash-c674fc56… — a malformed tag whose
    /// "attribute" starts with a multi-byte character panicked on a byte slice.
    #[test]
    fn narrative_with_multibyte_attribute_names() {
        assert!(!has_active_xhtml("<td?住宅: 不详。工作: 18337177888</td>"));
        assert!(!has_active_xhtml("<p 不详=\"x\">a</p>"));
        assert!(has_active_xhtml("<p onclick=\"x\">a</p>"));
        assert!(has_active_xhtml("<p 不 onload=\"x\">a</p>"));
        assert!(has_active_xhtml("<p hidden onclick=\"x\">a</p>"));
        assert!(has_active_xhtml("<p title=x onmouseover=y>a</p>"));
        assert!(has_active_xhtml("<p title='a>b' onclick=\"x\">"));
        assert!(!has_active_xhtml(
            "<p title=\"onclick\" class=\"one\">a</p>"
        ));
    }

    #[test]
    fn dates() {
        for good in [
            "2023",
            "2023-02",
            "2023-02-28",
            "2024-02-29",
            "2000-02-29",
            "0001",
        ] {
            assert!(ok(Primitive::Date, good), "{good}");
        }
        for bad in [
            "2023-02-30",
            "1900-02-29",
            "2023-13",
            "2023-00",
            "0000",
            "23",
            "2023-1-01",
            "2023-01-01T10:00:00Z",
            "",
        ] {
            assert!(!ok(Primitive::Date, bad), "{bad}");
        }
    }

    #[test]
    fn date_times_and_instants() {
        for good in [
            "2023",
            "2023-05",
            "2023-05-01",
            "2023-05-01T10:00:00Z",
            "2023-05-01T23:59:60.123+14:00",
            "2015-02-07T13:28:17-05:00",
        ] {
            assert!(ok(Primitive::DateTime, good), "{good}");
        }
        for bad in [
            "2023-05-01T10:00:00",
            "2023-05-01T10:00Z",
            "2023-05-01T24:00:00Z",
            "2023-05-01T10:00:00+15:00",
            "2023-05-01T10:00:00.Z",
            "2023-05-01 10:00:00Z",
        ] {
            assert!(!ok(Primitive::DateTime, bad), "{bad}");
        }
        assert!(ok(Primitive::Instant, "2023-05-01T10:00:00.000Z"));
        assert!(!ok(Primitive::Instant, "2023-05-01"));
        assert!(ok(Primitive::Time, "10:00:00.5"));
        assert!(!ok(Primitive::Time, "10:00"));
    }

    #[test]
    fn string_like() {
        assert!(ok(Primitive::Code, "a b"));
        for bad in [" a", "a ", "a  b", ""] {
            assert!(!ok(Primitive::Code, bad), "{bad:?}");
        }
        assert!(ok(Primitive::String, "line\nbreak\ttab"));
        assert!(!ok(Primitive::String, "bell\u{7}"));
        assert!(ok(Primitive::Uri, "http://x/y"));
        assert!(!ok(Primitive::Uri, "http://x/ y"));
        assert!(ok(
            Primitive::Uri,
            "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"
        ));
        assert!(!ok(
            Primitive::Uri,
            "urn:uuid:c757873d-ec9a-4326-a141-556f43239520asdf"
        ));
        assert!(!ok(Primitive::Uri, "urn:oid:1.02"));
        assert!(ok(Primitive::Oid, "urn:oid:1.2.840.10008"));
        assert!(!ok(Primitive::Oid, "urn:oid:1"));
        assert!(!ok(Primitive::Oid, "urn:oid:1.02"));
        assert!(ok(
            Primitive::Uuid,
            "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"
        ));
        assert!(!ok(
            Primitive::Uuid,
            "urn:uuid:C757873D-ec9a-4326-a141-556f43239520"
        ));
        assert!(ok(Primitive::Base64Binary, "aGVsbG8="));
        assert!(!ok(Primitive::Base64Binary, "aGVsbG8"));
        assert!(ok(Primitive::Id, "a-b.C1"));
        assert!(!ok(Primitive::Id, "a_b"));
        assert!(ok(
            Primitive::Xhtml,
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"
        ));
        assert!(!ok(Primitive::Xhtml, "plain text"));
        // txt-1: active content is not narrative.
        assert!(!ok(
            Primitive::Xhtml,
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">hi <script>x()</script></div>"
        ));
        assert!(!ok(
            Primitive::Xhtml,
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onclick=\"x()\">hi</p></div>"
        ));
        assert!(ok(
            Primitive::Xhtml,
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><!-- c --><p class=\"one\" title='online'>on</p><a href=\"x\">l</a></div>"
        ));
    }
}
