//! FHIR R4 XML ↔ JSON conversion.
//!
//! caregate stores and validates JSON; XML is accepted and produced at the HTTP edge only.
//! The conversion goes through fhirbolt's generic element model
//! (`fhirbolt::element::Element<R4>`): it knows from the R4 definitions which elements
//! repeat (XML cannot say) and the order XML requires, and it keeps decimals as text, so
//! `1.50` survives both ways. Using the element model rather than the typed resource
//! structs keeps compile time and binary size down, and the two entry points are plain
//! functions so fhirbolt's generic code is instantiated in this crate only.

mod narrative;
mod scan;

use fhirbolt::element::Element;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use fhirbolt::FhirReleases;
use serde_json::Value;

use scan::{element_line, first_syntax_error_line};

type R4Element = Element<{ FhirReleases::R4 }>;

/// Why a resource could not be converted. The message is meant for an
/// `OperationOutcome.issue.diagnostics`: it names the problem and, where it can be found,
/// the line and the element.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The XML is not well-formed (or not UTF-8).
    #[error("malformed XML{}: {message}", at_line(*.line))]
    MalformedXml {
        message: String,
        line: Option<usize>,
    },
    /// Well-formed XML that is not a FHIR R4 resource (unknown element, wrong namespace,
    /// a repeating element where one is allowed, ...).
    #[error("invalid FHIR XML{}: {message}", at_line(*.line))]
    InvalidXml {
        message: String,
        line: Option<usize>,
    },
    /// JSON that is not a FHIR R4 resource, so it has no XML form.
    #[error("invalid FHIR JSON: {message}")]
    InvalidJson { message: String },
    /// fhirbolt could not write the result (should not happen for a resource it read).
    #[error("cannot write {format}: {message}")]
    Write {
        format: &'static str,
        message: String,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

fn strict() -> Option<DeserializationConfig> {
    Some(DeserializationConfig {
        mode: DeserializationMode::Strict,
    })
}

/// Converts one FHIR R4 resource from XML to its JSON form.
pub fn xml_to_json(xml: &str) -> Result<Value, FormatError> {
    let element: R4Element =
        fhirbolt::xml::from_str(xml, strict()).map_err(|e| xml_error(xml, &e))?;
    let mut json =
        fhirbolt::json::to_json_value(element, None).map_err(|e| FormatError::Write {
            format: "JSON",
            message: e.to_string(),
        })?;
    if let Err((message, name)) = check_resource_types(&json) {
        return Err(FormatError::InvalidXml {
            line: element_line(xml, &name),
            message,
        });
    }
    narrative::restore_from_xml(xml, &mut json);
    Ok(json)
}

/// Converts one FHIR R4 resource from JSON to XML (with an XML declaration, in the
/// `http://hl7.org/fhir` namespace).
pub fn json_to_xml(resource: &Value) -> Result<String, FormatError> {
    if let Err((message, _)) = check_resource_types(resource) {
        return Err(FormatError::InvalidJson { message });
    }
    let mut copy = resource.clone();
    let divs = narrative::stash_for_xml(&mut copy)
        .map_err(|message| FormatError::InvalidJson { message })?;
    let element: R4Element =
        fhirbolt::json::from_json_value(copy, strict()).map_err(|e| FormatError::InvalidJson {
            message: tidy(e.to_string()),
        })?;
    let xml = fhirbolt::xml::to_string(&element, None).map_err(|e| FormatError::Write {
        format: "XML",
        message: e.to_string(),
    })?;
    narrative::restore_into_xml(&xml, &divs).map_err(|message| FormatError::Write {
        format: "XML",
        message,
    })
}

/// fhirbolt maps any element name to a resource (`<Patinet/>` becomes `{"resourceType":
/// "Patinet"}`), so the root and every nested resource (contained, `Bundle.entry.resource`,
/// `Parameters.parameter.resource`, `Bundle.entry.response.outcome`) must name an R4 type.
/// The error carries the offending name, to locate it in XML input.
fn check_resource_types(value: &Value) -> Result<(), (String, String)> {
    match value.get("resourceType") {
        Some(Value::String(rt)) if caregate_core::is_resource_type(rt) => {}
        Some(Value::String(rt)) => {
            return Err((format!("unknown resource type '{rt}'"), rt.clone()))
        }
        _ => {
            return Err((
                "not a resource: expected a JSON object with a string resourceType".into(),
                String::new(),
            ))
        }
    }
    fn nested(value: &Value) -> Result<(), (String, String)> {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let holds_resources =
                        matches!(key.as_str(), "contained" | "resource" | "outcome");
                    let items: &[Value] = match child {
                        Value::Array(items) => items,
                        other => std::slice::from_ref(other),
                    };
                    for item in items {
                        if holds_resources && item.get("resourceType").is_some_and(Value::is_string)
                        {
                            check_resource_types(item)?;
                        } else {
                            nested(item)?;
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    nested(value)
}

/// Classifies a fhirbolt XML error and finds the line it is about: fhirbolt reports no
/// positions, so the line is recovered from the input (the first syntax error for
/// malformed XML, the first use of the offending element name otherwise). This runs only
/// on the error path.
fn xml_error(xml: &str, err: &fhirbolt::xml::Error) -> FormatError {
    use fhirbolt::xml::Error as E;
    let message = err.to_string();
    match err {
        E::InvalidXml(_) | E::InvalidXmlAttribute(_) | E::Utf8Error(_) | E::InvalidXmlEvent(_) => {
            FormatError::MalformedXml {
                line: first_syntax_error_line(xml),
                message,
            }
        }
        _ => {
            // A syntax error found while already building elements also surfaces here.
            if let Some(line) = first_syntax_error_line(xml) {
                return FormatError::MalformedXml {
                    message,
                    line: Some(line),
                };
            }
            let line = unknown_field(&message).and_then(|name| element_line(xml, name));
            FormatError::InvalidXml {
                message: tidy(message),
                line,
            }
        }
    }
}

/// fhirbolt lists every allowed field after an unknown one; an OperationOutcome needs only
/// the name: `unknown field `foo`, expected one of [...]` → `unknown element 'foo'`.
fn tidy(message: String) -> String {
    match unknown_field(&message) {
        Some(name) => format!("unknown element '{name}'"),
        None => message,
    }
}

/// `unknown field `foo`, expected ...` → `foo`.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_names() {
        assert_eq!(
            unknown_field("unknown field `foo`, expected one of [..]"),
            Some("foo")
        );
        assert_eq!(unknown_field("something else"), None);
        assert_eq!(
            tidy("unknown field `foo`, expected one of [\"a\"]".into()),
            "unknown element 'foo'"
        );
    }
}
