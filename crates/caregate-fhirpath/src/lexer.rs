//! Splits FHIRPath source into tokens. Positions are character offsets so error messages
//! point at the right column even in non-ASCII input.

use crate::FhirPathError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A plain or `` `delimited` `` identifier; `delimited` ones are never keywords.
    Ident {
        name: String,
        delimited: bool,
    },
    Str(String),
    /// A number as written (`1`, `1.50`), parsed by the parser so decimals stay exact.
    Num(String),
    /// `@2020-01-01`, `@2020T`, `@T10:00`: the text after `@`.
    DateTime(String),
    /// `%resource`, `%'x'`, ``%`x` ``.
    Var(String),
    /// `$this`, `$index`, `$total`.
    Special(String),
    Punct(&'static str),
    End,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    /// Character offset of the token's first character.
    pub pos: usize,
}

const PUNCTS: &[&str] = &[
    "!=", "!~", "<=", ">=", ".", "(", ")", "[", "]", "{", "}", ",", "|", "=", "~", "<", ">", "+",
    "-", "*", "/", "&",
];

/// Longest source accepted; FHIR invariants are a few hundred characters.
const MAX_SOURCE: usize = 64 * 1024;

pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, FhirPathError> {
    if src.len() > MAX_SOURCE {
        return Err(FhirPathError::new(0, "expression is too long"));
    }
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // Comments: `// ...` to end of line and `/* ... */`.
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'*') {
            let start = i;
            i += 2;
            loop {
                if i + 1 >= chars.len() {
                    return Err(FhirPathError::new(start, "unterminated comment"));
                }
                if chars[i] == '*' && chars[i + 1] == '/' {
                    i += 2;
                    break;
                }
                i += 1;
            }
            continue;
        }
        let pos = i;
        let tok = if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            Tok::Ident {
                name: chars[start..i].iter().collect(),
                delimited: false,
            }
        } else if c == '`' {
            let (name, next) = quoted(&chars, i, '`')?;
            i = next;
            Tok::Ident {
                name,
                delimited: true,
            }
        } else if c == '\'' {
            let (s, next) = quoted(&chars, i, '\'')?;
            i = next;
            Tok::Str(s)
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            // A decimal point only when a digit follows (`1.5`), so `x[0].y` still works.
            if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            Tok::Num(chars[start..i].iter().collect())
        } else if c == '@' {
            i += 1;
            let start = i;
            i = date_literal_end(&chars, i);
            if start == i {
                return Err(FhirPathError::new(pos, "empty date/time literal"));
            }
            Tok::DateTime(chars[start..i].iter().collect())
        } else if c == '%' {
            i += 1;
            match chars.get(i) {
                Some('`') | Some('\'') => {
                    let (name, next) = quoted(&chars, i, chars[i])?;
                    i = next;
                    Tok::Var(name)
                }
                Some(ch) if ch.is_ascii_alphabetic() || *ch == '_' => {
                    let start = i;
                    while i < chars.len()
                        && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                    {
                        i += 1;
                    }
                    Tok::Var(chars[start..i].iter().collect())
                }
                _ => return Err(FhirPathError::new(pos, "expected a name after '%'")),
            }
        } else if c == '$' {
            i += 1;
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
            Tok::Special(chars[start..i].iter().collect())
        } else {
            let rest_starts = |p: &str| {
                p.chars()
                    .enumerate()
                    .all(|(k, pc)| chars.get(i + k) == Some(&pc))
            };
            match PUNCTS.iter().find(|p| rest_starts(p)) {
                Some(p) => {
                    i += p.chars().count();
                    Tok::Punct(p)
                }
                None => {
                    return Err(FhirPathError::new(
                        pos,
                        format!("unexpected character '{c}'"),
                    ))
                }
            }
        };
        out.push(Token { tok, pos });
    }
    out.push(Token {
        tok: Tok::End,
        pos: chars.len(),
    });
    Ok(out)
}

/// End of a date/time literal body starting at `i` (after `@`), following the grammar:
/// `YYYY(-MM(-DD)?)?(T(HH(:MM(:SS(.fff)?)?)?)?(Z|[+-]HH:MM)?)?` or `THH(:MM(:SS(.fff)?)?)?`.
/// A `.` is only part of the literal when a digit follows, so `@2015.is(Date)` works.
fn date_literal_end(chars: &[char], mut i: usize) -> usize {
    let digits = |i: &mut usize, n: usize| -> bool {
        if (0..n).all(|k| chars.get(*i + k).is_some_and(char::is_ascii_digit)) {
            *i += n;
            true
        } else {
            false
        }
    };
    let time = |i: &mut usize| {
        if !digits(i, 2) {
            return;
        }
        if chars.get(*i) == Some(&':') {
            let save = *i;
            *i += 1;
            if !digits(i, 2) {
                *i = save;
                return;
            }
            if chars.get(*i) == Some(&':') {
                let save = *i;
                *i += 1;
                if !digits(i, 2) {
                    *i = save;
                    return;
                }
                if chars.get(*i) == Some(&'.')
                    && chars.get(*i + 1).is_some_and(char::is_ascii_digit)
                {
                    *i += 1;
                    while chars.get(*i).is_some_and(char::is_ascii_digit) {
                        *i += 1;
                    }
                }
            }
        }
    };
    let tz = |i: &mut usize| match chars.get(*i) {
        Some('Z') => *i += 1,
        Some('+') | Some('-') => {
            let save = *i;
            *i += 1;
            if !(digits(i, 2) && chars.get(*i) == Some(&':') && {
                *i += 1;
                digits(i, 2)
            }) {
                *i = save;
            }
        }
        _ => {}
    };
    if chars.get(i) == Some(&'T') {
        i += 1;
        time(&mut i);
        tz(&mut i);
        return i;
    }
    if !digits(&mut i, 4) {
        return i;
    }
    for _ in 0..2 {
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
            let save = i;
            i += 1;
            if !digits(&mut i, 2) {
                i = save;
                break;
            }
        } else {
            break;
        }
    }
    if chars.get(i) == Some(&'T') {
        i += 1;
        time(&mut i);
        tz(&mut i);
    } else {
        tz(&mut i);
    }
    i
}

/// Reads a `'string'` or `` `identifier` `` starting at the opening quote; returns the
/// unescaped text and the index after the closing quote.
fn quoted(chars: &[char], open: usize, quote: char) -> Result<(String, usize), FhirPathError> {
    let mut s = String::new();
    let mut i = open + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(FhirPathError::new(
                open,
                "unterminated string or identifier",
            ));
        };
        i += 1;
        if c == quote {
            return Ok((s, i));
        }
        if c != '\\' {
            s.push(c);
            continue;
        }
        let Some(&e) = chars.get(i) else {
            return Err(FhirPathError::new(i - 1, "unterminated escape"));
        };
        i += 1;
        match e {
            '\'' | '"' | '`' | '\\' | '/' => s.push(e),
            'f' => s.push('\u{000C}'),
            'n' => s.push('\n'),
            'r' => s.push('\r'),
            't' => s.push('\t'),
            'u' => {
                let hex: String = chars
                    .get(i..i + 4)
                    .map(|h| h.iter().collect())
                    .unwrap_or_default();
                let ch = u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 4)
                    .and_then(char::from_u32)
                    .ok_or_else(|| FhirPathError::new(i - 2, "invalid \\u escape"))?;
                s.push(ch);
                i += 4;
            }
            other => {
                return Err(FhirPathError::new(
                    i - 2,
                    format!("invalid escape '\\{other}'"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_escapes() {
        let t = tokenize(r"'a\'b\\c\u0041\n'").unwrap();
        assert_eq!(t[0].tok, Tok::Str("a'b\\cA\n".into()));
        assert!(tokenize("'abc").is_err());
        assert!(tokenize(r"'\q'").is_err());
        assert!(tokenize(r"'\u12'").is_err());
    }

    #[test]
    fn numbers_do_not_eat_path_dots() {
        let t = tokenize("x[0].y 1.5").unwrap();
        let toks: Vec<_> = t.into_iter().map(|t| t.tok).collect();
        assert_eq!(toks[2], Tok::Num("0".into()));
        assert_eq!(toks[4], Tok::Punct("."));
        assert_eq!(toks[6], Tok::Num("1.5".into()));
    }

    #[test]
    fn date_literals_stop_before_invocations() {
        let first = |s: &str| tokenize(s).unwrap()[0].tok.clone();
        assert_eq!(first("@2015.is(Date)"), Tok::DateTime("2015".into()));
        assert_eq!(
            first("@2015-02-04T14:34:28.123.is(DateTime)"),
            Tok::DateTime("2015-02-04T14:34:28.123".into())
        );
        assert_eq!(
            first("@2017-11-05T01:30:00.0-04:00 > x"),
            Tok::DateTime("2017-11-05T01:30:00.0-04:00".into())
        );
        assert_eq!(first("@T14:34:28Z"), Tok::DateTime("T14:34:28Z".into()));
        assert_eq!(first("@2015T.is(DateTime)"), Tok::DateTime("2015T".into()));
        assert_eq!(
            first("@2014-12-14.toString()"),
            Tok::DateTime("2014-12-14".into())
        );
    }
}
