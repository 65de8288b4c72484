//! Shape limits for inbound content: how deep, how many elements, how long a string.
//!
//! The body-size limit alone does not bound the work a request causes: 16 MiB of `[[[[…`
//! or of one-character strings costs far more to validate and index than 16 MiB of
//! ordinary resources. These checks run once on the parsed body, before any stage sees it,
//! and name the element that broke the limit so the sender can find it.

use serde_json::Value;

use crate::{ErrorKind, FhirError, IssueCode};

/// Limits on one request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentLimits {
    /// Deepest nesting of objects and arrays, each counting one level as JSON parsers
    /// count them (the resource itself is depth 1; `Patient.name[0].given` is depth 3).
    /// Above 128 the JSON parser itself stops.
    pub max_depth: usize,
    /// Most JSON values (objects, arrays, primitives) in one body.
    pub max_elements: usize,
    /// Longest string value, in bytes (base64 attachments are the large ones).
    pub max_string_bytes: usize,
}

impl Default for ContentLimits {
    fn default() -> Self {
        // Depth: real resources stay below ~40 (a Questionnaire item nests two levels);
        // a transaction Bundle adds four. Elements: a 16 MiB Synthea transaction
        // holds ~400k values. Strings: attachments larger than this belong in Binary.
        ContentLimits {
            max_depth: 100,
            max_elements: 1_000_000,
            max_string_bytes: 8 * 1024 * 1024,
        }
    }
}

/// One step of the path to the current value, kept cheap: keys borrow from the value.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Checks `body` against `limits`; the error is a 400 (413 for the element count, which is
/// a size) whose issue names the offending element as a FHIRPath expression.
pub fn check_content(body: &Value, limits: &ContentLimits) -> Result<(), FhirError> {
    let root = body
        .get("resourceType")
        .and_then(Value::as_str)
        .filter(|t| crate::is_resource_type(t))
        .unwrap_or("$this");
    let mut path: Vec<Step<'_>> = Vec::new();
    let mut elements = 0usize;
    walk(body, 1, limits, &mut path, &mut elements).map_err(|breach| breach.into_error(root))
}

/// A broken limit, located; turned into the answer once the root's name is known.
struct Breach<'a> {
    kind: ErrorKind,
    code: IssueCode,
    path: Vec<Step<'a>>,
    diagnostics: String,
}

impl Breach<'_> {
    fn into_error(self, root: &str) -> FhirError {
        FhirError::at(self.kind, expression(root, &self.path), self.diagnostics)
            .with_code(self.code)
    }
}

fn walk<'a>(
    value: &'a Value,
    depth: usize,
    limits: &ContentLimits,
    path: &mut Vec<Step<'a>>,
    elements: &mut usize,
) -> Result<(), Breach<'a>> {
    *elements += 1;
    if *elements > limits.max_elements {
        return Err(Breach {
            kind: ErrorKind::PayloadTooLarge,
            code: IssueCode::TooCostly,
            path: std::mem::take(path),
            diagnostics: format!(
                "The body holds more than {} elements; split it into smaller requests",
                limits.max_elements
            ),
        });
    }
    match value {
        Value::Object(map) => {
            if depth > limits.max_depth {
                return Err(too_deep(path, limits));
            }
            for (key, child) in map {
                path.push(Step::Key(key));
                walk(child, depth + 1, limits, path, elements)?;
                path.pop();
            }
        }
        Value::Array(items) => {
            if depth > limits.max_depth {
                return Err(too_deep(path, limits));
            }
            for (i, child) in items.iter().enumerate() {
                path.push(Step::Index(i));
                walk(child, depth + 1, limits, path, elements)?;
                path.pop();
            }
        }
        Value::String(s) if s.len() > limits.max_string_bytes => {
            return Err(Breach {
                kind: ErrorKind::BadRequest,
                code: IssueCode::TooLong,
                path: std::mem::take(path),
                diagnostics: format!(
                    "A string of {} bytes exceeds the limit of {} bytes; send large attachments as Binary",
                    s.len(),
                    limits.max_string_bytes
                ),
            });
        }
        _ => {}
    }
    Ok(())
}

fn too_deep<'a>(path: &mut Vec<Step<'a>>, limits: &ContentLimits) -> Breach<'a> {
    Breach {
        kind: ErrorKind::BadRequest,
        code: IssueCode::TooCostly,
        path: std::mem::take(path),
        diagnostics: format!("The content nests deeper than {} levels", limits.max_depth),
    }
}

/// The path as FHIRPath: `Bundle.entry[0].resource.contained[1]`. The root is named by its
/// `resourceType` when it has one.
fn expression(root: &str, path: &[Step<'_>]) -> String {
    let mut out = String::from(root);
    for step in path {
        match step {
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// The deepest element nesting of an XML document, counted without parsing it, so that a
/// document too deep for the XML reader's recursion is refused before the reader sees it.
/// Comments, processing instructions, CDATA and declarations do not count.
pub fn xml_depth(text: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        if rest.starts_with(b"<!--") {
            i += find(rest, b"-->").map_or(text.len(), |e| e + 3);
            continue;
        }
        if rest.starts_with(b"<![CDATA[") {
            i += find(rest, b"]]>").map_or(text.len(), |e| e + 3);
            continue;
        }
        if rest.starts_with(b"<?") || rest.starts_with(b"<!") {
            i += find(rest, b">").map_or(text.len(), |e| e + 1);
            continue;
        }
        let end = tag_end(rest).map_or(text.len() - i, |e| e + 1);
        let tag = &rest[..end];
        if tag.starts_with(b"</") {
            depth = depth.saturating_sub(1);
        } else if !tag.ends_with(b"/>") {
            depth += 1;
            deepest = deepest.max(depth);
        }
        i += end;
    }
    deepest
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The index of the `>` closing the tag at the start of `tag`, skipping quoted attribute
/// values (which may contain `>`).
fn tag_end(tag: &[u8]) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (i, &b) in tag.iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return Some(i),
            None => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut v = json!({"valueString": "x"});
        for _ in 0..levels {
            v = json!({ "extension": [v] });
        }
        v
    }

    #[test]
    fn ordinary_resources_pass() {
        let patient = json!({
            "resourceType": "Patient",
            "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
            "contact": [{"name": {"given": ["Bénédicte"]}}]
        });
        assert!(check_content(&patient, &ContentLimits::default()).is_ok());
        assert!(check_content(&nested(45), &ContentLimits::default()).is_ok());
    }

    #[test]
    fn too_deep_names_the_element() {
        let e = check_content(&nested(55), &ContentLimits::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let issue = &e.issues[0];
        assert_eq!(issue.code, IssueCode::TooCostly);
        assert!(issue.expression[0].starts_with("$this.extension[0].extension[0]"));
        let mut bundle = json!({"resourceType": "Bundle", "entry": [{"resource": nested(55)}]});
        bundle["entry"][0]["resource"]["resourceType"] = json!("Basic");
        let e = check_content(&bundle, &ContentLimits::default()).unwrap_err();
        assert!(e.issues[0].expression[0].starts_with("Bundle.entry[0].resource.extension[0]"));
        assert!(issue.diagnostics.contains("100"), "{}", issue.diagnostics);
    }

    #[test]
    fn element_count_and_string_length() {
        let limits = ContentLimits {
            max_depth: 100,
            max_elements: 10,
            max_string_bytes: 5,
        };
        let many = json!({"resourceType": "Basic", "a": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]});
        let e = check_content(&many, &limits).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PayloadTooLarge);
        assert_eq!(e.issues[0].expression[0], "Basic.a[7]");

        let long = json!({"resourceType": "Basic", "text": {"div": "123456"}});
        let e = check_content(&long, &limits).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(e.issues[0].code, IssueCode::TooLong);
        assert_eq!(e.issues[0].expression[0], "Basic.text.div");
        assert!(check_content(&json!({"a": "12345"}), &limits).is_ok());
    }

    #[test]
    fn xml_depth_counts_elements_only() {
        let xml = br#"<?xml version="1.0"?><!-- <a><b> --><Patient xmlns="http://hl7.org/fhir"><name><family value="a&gt;b"/><given value='x>y'/></name><text><div><![CDATA[<p><p>]]></div></text></Patient>"#;
        assert_eq!(xml_depth(xml), 3);
        let deep = format!(
            "{}{}",
            "<extension>".repeat(500),
            "</extension>".repeat(500)
        );
        assert_eq!(xml_depth(deep.as_bytes()), 500);
        assert_eq!(xml_depth(b"<a"), 1);
        assert_eq!(xml_depth(b""), 0);
    }
}
