//! String folding shared by indexing and querying, and the search-value escape rules.

/// Folds a string for the default (`starts-with`, case- and accent-insensitive) string
/// search: lower-cases, maps common accented Latin letters to their base letters, drops
/// punctuation (so `O'Brien` and `obrien` meet) and collapses whitespace. Index values and
/// query values must go through the same function, which is why it is public.
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if is_punctuation(c) || ('\u{0300}'..='\u{036F}').contains(&c) {
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        match caregate_core::fold_latin(c) {
            Some(base) => out.push_str(base),
            None => out.push(c),
        }
    }
    out
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            c,
            '‘' | '’' | '‚' | '“' | '”' | '„' | '–' | '—' | '´' | '`' | '·'
        )
}

/// Splits on `sep` where it is not escaped with a backslash; pieces keep their escapes.
pub(crate) fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Splits at the first unescaped `sep`.
pub(crate) fn split_once_unescaped(s: &str, sep: char) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            return Some((&s[..i], &s[i + c.len_utf8()..]));
        }
    }
    None
}

/// Resolves the search escapes `\,` `\|` `\$` `\\`; any other backslash stays literal.
pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&next) = chars.peek() {
                if matches!(next, ',' | '|' | '$' | '\\') {
                    out.push(next);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_accents_punctuation_space() {
        assert_eq!(normalize_string("  Ça  Marche\tBIEN "), "ca marche bien");
        assert_eq!(
            normalize_string("Müller-Lüdenscheidt"),
            "mullerludenscheidt"
        );
        assert_eq!(normalize_string("O’Brien"), "obrien");
        assert_eq!(normalize_string("Straße Łódź Æsir"), "strasse lodz aesir");
        // Decomposed accents (e + combining acute) fold too.
        assert_eq!(normalize_string("Re\u{301}ne"), "rene");
        assert_eq!(normalize_string("日本"), "日本");
    }

    #[test]
    fn escapes() {
        assert_eq!(split_unescaped(r"a,b\,c,d", ','), vec!["a", r"b\,c", "d"]);
        assert_eq!(unescape(r"b\,c\|d\$e\\f\x"), r"b,c|d$e\f\x");
        assert_eq!(split_once_unescaped(r"s\|x|c", '|'), Some((r"s\|x", "c")));
        assert_eq!(split_unescaped(r"a\\,b", ','), vec![r"a\\", "b"]);
        assert_eq!(split_unescaped("", ','), vec![""]);
    }
}
