//! Small scanners over XML text. They are not XML parsers: fhirbolt (quick-xml) parses;
//! these only find what it does not report (line numbers for errors) and the raw extent
//! of narrative `<div>` elements.

/// One piece of markup found by [`Tags`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Markup<'a> {
    /// `<name ...>`: name, and whether it is self-closing (`<name/>`).
    Start { name: &'a str, empty: bool },
    /// `</name>`
    End { name: &'a str },
    /// Comments, CDATA, processing instructions, declarations.
    Other,
    /// An unterminated construct: the scan stops here.
    Unterminated,
}

/// Iterates over the markup of an XML text: `(byte offset of '<', byte offset after the
/// closing '>', markup)`. Quotes in tags are honoured, so `>` inside attribute values is
/// not mistaken for the end of a tag.
pub(crate) struct Tags<'a> {
    text: &'a str,
    pos: usize,
    done: bool,
}

impl<'a> Tags<'a> {
    pub fn new(text: &'a str) -> Self {
        Tags {
            text,
            pos: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for Tags<'a> {
    type Item = (usize, usize, Markup<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let start = self.pos + self.text.get(self.pos..)?.find('<')?;
        let rest = &self.text[start..];
        let after = |marker: &str| rest.find(marker).map(|e| start + e + marker.len());
        let (end, markup) = if rest.starts_with("<!--") {
            (after("-->"), Markup::Other)
        } else if rest.starts_with("<![CDATA[") {
            (after("]]>"), Markup::Other)
        } else if rest.starts_with("<?") {
            (after("?>"), Markup::Other)
        } else if rest.starts_with("<!") {
            (after(">"), Markup::Other)
        } else {
            match tag_end(rest) {
                Some(len) => {
                    let end = start + len;
                    let inner = &self.text[start + 1..end - 1];
                    let markup = if let Some(name) = inner.strip_prefix('/') {
                        Markup::End { name: name.trim() }
                    } else {
                        let empty = inner.ends_with('/');
                        let inner = inner.strip_suffix('/').unwrap_or(inner);
                        let name = inner
                            .split(|c: char| c.is_whitespace())
                            .next()
                            .unwrap_or("");
                        Markup::Start { name, empty }
                    };
                    (Some(end), markup)
                }
                None => (None, Markup::Unterminated),
            }
        };
        match end {
            Some(end) => {
                self.pos = end;
                Some((start, end, markup))
            }
            None => {
                self.done = true;
                Some((start, self.text.len(), Markup::Unterminated))
            }
        }
    }
}

/// Length of the tag at the start of `rest` (which begins with `<`), up to and including
/// its `>`, skipping quoted attribute values.
fn tag_end(rest: &str) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (i, b) in rest.bytes().enumerate().skip(1) {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return Some(i + 1),
            (None, b'<') => return None,
            (None, _) => {}
        }
    }
    None
}

pub(crate) fn line_of(text: &str, byte_pos: usize) -> usize {
    text.as_bytes()[..byte_pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// 1-based line of the first `<name` start tag.
pub(crate) fn element_line(xml: &str, name: &str) -> Option<usize> {
    if name.is_empty() {
        return None;
    }
    Tags::new(xml).find_map(|(at, _, markup)| match markup {
        Markup::Start { name: n, .. } if n == name => Some(line_of(xml, at)),
        _ => None,
    })
}

/// The line of the first unterminated construct, mismatched end tag, or unclosed element;
/// `None` when the markup is balanced.
pub(crate) fn first_syntax_error_line(xml: &str) -> Option<usize> {
    let mut open: Vec<(&str, usize)> = Vec::new();
    for (at, _, markup) in Tags::new(xml) {
        match markup {
            Markup::Start { name, empty } => {
                if name.is_empty() {
                    return Some(line_of(xml, at));
                }
                if !empty {
                    open.push((name, at));
                }
            }
            Markup::End { name } => match open.pop() {
                Some((expected, _)) if expected == name => {}
                _ => return Some(line_of(xml, at)),
            },
            Markup::Other => {}
            Markup::Unterminated => return Some(line_of(xml, at)),
        }
    }
    open.last().map(|&(_, at)| line_of(xml, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_scan_finds_the_line() {
        assert_eq!(first_syntax_error_line("<a>\n<b>\n</c>\n</a>"), Some(3));
        assert_eq!(first_syntax_error_line("<a>\n<b/>\n<!-- x -->\n</a>"), None);
        assert_eq!(
            first_syntax_error_line("<?xml version=\"1.0\"?>\n<a>\n<b>"),
            Some(3)
        );
        assert_eq!(first_syntax_error_line("<a>\n<b"), Some(2));
        assert_eq!(first_syntax_error_line("<a t=\"x>y\">\n</a>"), None);
    }

    #[test]
    fn element_lines() {
        assert_eq!(
            element_line("<a>\n  <foo value=\"1\"/>\n</a>", "foo"),
            Some(2)
        );
        assert_eq!(element_line("<a>\n  <foobar/>\n</a>", "foo"), None);
        assert_eq!(element_line("<a>\n  <foo>\n</foo></a>", "foo"), Some(2));
    }
}
