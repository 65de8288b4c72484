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
    /// The literal as written, parsed later (integers and decimals alike).
    Num(f64),
    /// `@2020-01-01`, `@T10:00`: kept as text.
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

pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, FhirPathError> {
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
            let text: String = chars[start..i].iter().collect();
            let n = text
                .parse::<f64>()
                .map_err(|_| FhirPathError::new(start, format!("invalid number '{text}'")))?;
            Tok::Num(n)
        } else if c == '@' {
            i += 1;
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '-' | ':' | '.' | '+'))
            {
                i += 1;
            }
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
        assert_eq!(toks[2], Tok::Num(0.0));
        assert_eq!(toks[4], Tok::Punct("."));
        assert_eq!(toks[6], Tok::Num(1.5));
    }
}
