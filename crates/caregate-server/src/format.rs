//! Content negotiation: request bodies in FHIR JSON or XML, responses in the format asked
//! for by `_format` or `Accept` (http.html#mime-type).

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use caregate_core::json::{parse_value, parse_within, ParseFailure};
use caregate_core::{
    check_content, xml_depth, ContentLimits, ErrorKind, FhirError, IssueCode, OperationOutcome,
};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        }
    }
}

/// How a response should be written.
#[derive(Debug, Clone, Copy)]
pub struct Rendering {
    pub format: Format,
    pub pretty: bool,
}

fn format_from_mime(mime: &str) -> Option<Format> {
    let m = mime
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match m.as_str() {
        "json"
        | "application/fhir+json"
        | "application/json"
        | "application/json+fhir"
        | "text/json" => Some(Format::Json),
        "xml"
        | "application/fhir+xml"
        | "application/xml"
        | "application/xml+fhir"
        | "text/xml" => Some(Format::Xml),
        _ => None,
    }
}

/// Picks the response format from `_format` (which wins) or `Accept`.
pub fn negotiate(headers: &HeaderMap, query: &[(String, String)]) -> Result<Rendering, FhirError> {
    let pretty = query.iter().any(|(k, v)| k == "_pretty" && v == "true");
    if let Some((_, f)) = query.iter().find(|(k, _)| k == "_format") {
        return format_from_mime(f)
            .map(|format| Rendering { format, pretty })
            .ok_or_else(|| {
                FhirError::at(
                    ErrorKind::NotAcceptable,
                    "_format",
                    format!("_format '{f}' is not supported; use json or xml"),
                )
            });
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Rendering {
            format: Format::Json,
            pretty,
        });
    };
    // Honour the first listed type we can produce; a wildcard means JSON.
    let mut any_wildcard = false;
    for part in accept.split(',') {
        let mime = part.split(';').next().unwrap_or_default().trim();
        if let Some(format) = format_from_mime(mime) {
            return Ok(Rendering { format, pretty });
        }
        if mime == "*/*" || mime == "application/*" || mime.is_empty() {
            any_wildcard = true;
        }
    }
    if any_wildcard || accept.contains("text/html") {
        Ok(Rendering {
            format: Format::Json,
            pretty,
        })
    } else {
        Err(FhirError::new(
            ErrorKind::NotAcceptable,
            format!(
                "Cannot answer in '{accept}'; use application/fhir+json or application/fhir+xml"
            ),
        ))
    }
}

/// Parses a request body by its `Content-Type` into JSON, refusing content beyond `limits`
/// (too deep, too many elements, too long a string) before any stage works on it.
pub fn parse_body(
    headers: &HeaderMap,
    body: &[u8],
    limits: &ContentLimits,
) -> Result<Value, FhirError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = match content_type {
        None => Format::Json,
        Some(ct) => format_from_mime(ct).ok_or_else(|| {
            FhirError::new(
                ErrorKind::UnsupportedMediaType,
                format!("Content-Type '{ct}' is not supported; send application/fhir+json or application/fhir+xml"),
            )
        })?,
    };
    if body.is_empty() {
        return Err(FhirError::bad_request(
            "The request body is empty; a FHIR resource is required",
        ));
    }
    let json_error = |e: serde_json::Error| {
        let message = json_error_message(&e);
        // serde_json stops at 128 levels on its own; say which limit it was.
        let (message, code) = if message.contains("recursion limit") {
            (
                format!("The content nests deeper than {} levels", limits.max_depth),
                IssueCode::TooCostly,
            )
        } else {
            (
                format!("The body is not valid JSON: {message}"),
                IssueCode::Invalid,
            )
        };
        FhirError::bad_request(format!(
            "{message} at line {} column {}",
            e.line(),
            e.column()
        ))
        .with_code(code)
    };
    let value = match format {
        // The limits are applied while parsing; only a body past one is walked again, to
        // name the element that broke it. (With repeated member names the walk may find
        // none broken, as it sees only the last value of each name: then it is accepted,
        // as before the limits moved into the parse.)
        Format::Json => match parse_within(body, limits) {
            Ok(value) => return Ok(value),
            Err(ParseFailure::Json(e)) => return Err(json_error(e)),
            Err(ParseFailure::OverLimit) => parse_value(body).map_err(json_error)?,
        },
        Format::Xml => {
            let text = std::str::from_utf8(body)
                .map_err(|_| FhirError::bad_request("The XML body is not UTF-8"))?;
            // The XML reader recurses per element: refuse deep documents before it runs.
            if xml_depth(body) > limits.max_depth {
                return Err(FhirError::bad_request(format!(
                    "The XML content nests deeper than {} elements",
                    limits.max_depth
                ))
                .with_code(IssueCode::TooCostly));
            }
            caregate_format::xml_to_json(text).map_err(|e| {
                FhirError::bad_request(format!("The XML body is not a valid FHIR resource: {e}"))
            })?
        }
    };
    check_content(&value, limits)?;
    Ok(value)
}

fn json_error_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    // serde_json appends " at line X column Y"; we report the position ourselves.
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Serialises a resource in the negotiated format.
pub fn render(value: &Value, rendering: Rendering) -> Result<Vec<u8>, FhirError> {
    match rendering.format {
        Format::Json => {
            let r = if rendering.pretty {
                serde_json::to_vec_pretty(value)
            } else {
                serde_json::to_vec(value)
            };
            r.map_err(|e| FhirError::internal(format!("cannot write JSON: {e}")))
        }
        Format::Xml => caregate_format::json_to_xml(value)
            .map(String::into_bytes)
            .map_err(|e| FhirError::internal(format!("cannot write XML: {e}"))),
    }
}

/// A response carrying a FHIR resource.
pub fn resource_response(status: StatusCode, value: &Value, rendering: Rendering) -> HttpResponse {
    match render(value, rendering) {
        Ok(body) => HttpResponse::build(status)
            .insert_header((header::CONTENT_TYPE, rendering.format.content_type()))
            .body(body),
        Err(e) => error_response(&e, rendering),
    }
}

/// Every error leaves as an OperationOutcome with the status its kind maps to.
pub fn error_response(error: &FhirError, rendering: Rendering) -> HttpResponse {
    let status =
        StatusCode::from_u16(error.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let outcome = OperationOutcome {
        issues: error.issues.clone(),
    }
    .to_json();
    let body = render(&outcome, rendering)
        .or_else(|_| {
            render(
                &outcome,
                Rendering {
                    format: Format::Json,
                    pretty: false,
                },
            )
        })
        .unwrap_or_default();
    let format = if body.first() == Some(&b'<') {
        Format::Xml
    } else {
        Format::Json
    };
    let mut response = HttpResponse::build(status);
    response.insert_header((header::CONTENT_TYPE, format.content_type()));
    if error.kind == ErrorKind::Unauthorized {
        response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"caregate\""));
    }
    response.body(body)
}
