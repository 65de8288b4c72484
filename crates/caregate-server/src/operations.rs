//! Operations outside the core REST interactions: `$disclosures`, `$care-plan` (and its
//! clinician page), `$match`, `$link`/`$unlink`, and the conformance reports.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caregate_core::FhirResult;
use caregate_pipeline::{Caller, Pipeline};

use crate::format::{error_response, negotiate, resource_response, Format, Rendering};
use crate::routes::{base_url, blocking, caller_of, read_body};
use crate::AppState;

const JSON: Rendering = Rendering {
    format: Format::Json,
    pretty: false,
};

/// What every operation handler starts from.
struct Op {
    query: Vec<(String, String)>,
    rendering: Rendering,
    caller: Caller,
    /// The caller asked for a page (`_format=html`, a browser's `Accept`, or a `/ui/` path).
    html: bool,
}

impl Op {
    fn new(req: &HttpRequest, state: &AppState) -> Result<Op, Box<HttpResponse>> {
        let query: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
            .into_owned()
            .collect();
        let html = req.path().starts_with("/ui/")
            || query.iter().any(|(k, v)| k == "_format" && v == "html")
            || req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.starts_with("text/html"));
        let rendering = if html {
            JSON
        } else {
            negotiate(req.headers(), &query).map_err(|e| Box::new(error_response(&e, JSON)))?
        };
        let caller = caller_of(req, state).map_err(|e| Box::new(error_response(&e, rendering)))?;
        Ok(Op {
            query,
            rendering,
            caller,
            html,
        })
    }

    fn param(&self, name: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn html_page(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .body(body)
}

macro_rules! op_or_return {
    ($req:expr, $state:expr) => {
        match Op::new(&$req, &$state) {
            Ok(op) => op,
            Err(resp) => return *resp,
        }
    };
}

/// `GET /Patient/{id}/$disclosures?start=&end=`: the accounting of disclosures, as FHIR
/// Parameters, or as an HTML page.
pub async fn disclosures(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let op = op_or_return!(req, state);
    let patient = path.into_inner();
    let (start, end) = (op.param("start"), op.param("end"));
    let (pipeline, caller, id) = (state.pipeline.clone(), op.caller.clone(), patient.clone());
    match blocking(move || pipeline.disclosures(&caller, &id, start.as_deref(), end.as_deref()))
        .await
    {
        Ok(list) if op.html => html_page(caregate_pipeline::disclosures_html(&patient, &list)),
        Ok(list) => resource_response(
            StatusCode::OK,
            &caregate_pipeline::disclosures_parameters(&patient, &list),
            op.rendering,
        ),
        Err(e) => error_response(&e, op.rendering),
    }
}

/// `GET /conformance/report?source=&since=` (JSON) and `GET /ui/conformance` (HTML):
/// validation outcomes per source system, for auditors.
pub async fn conformance_report(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let op = op_or_return!(req, state);
    let (source, since) = (op.param("source"), op.param("since"));
    let (pipeline, caller) = (state.pipeline.clone(), op.caller.clone());
    let (s, d) = (source.clone(), since.clone());
    match blocking(move || pipeline.conformance_report(&caller, s.as_deref(), d.as_deref())).await {
        Ok(report) if op.html => html_page(caregate_pipeline::conformance_html(
            &report,
            source.as_deref(),
            since.as_deref(),
        )),
        Ok(report) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .body(
                caregate_pipeline::conformance_json(&report, source.as_deref(), since.as_deref())
                    .to_string(),
            ),
        Err(e) => error_response(&e, JSON),
    }
}

/// `GET /Patient/{id}/$care-plan[?_since=]`: the person's shared care-plan view, with a
/// strong ETag so clients can poll cheaply (`If-None-Match` → 304). Under `/ui/` it is the
/// clinician page.
pub async fn care_plan(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let op = op_or_return!(req, state);
    let patient = path.into_inner();
    let since = op.param("_since");
    let (pipeline, caller, id) = (state.pipeline.clone(), op.caller.clone(), patient.clone());
    let view = match blocking(move || pipeline.care_plan(&caller, &id, since.as_deref())).await {
        Ok(view) => view,
        Err(e) => return error_response(&e, op.rendering),
    };
    let unchanged = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == view.etag);
    let mut resp = if unchanged {
        HttpResponse::NotModified().finish()
    } else if op.html {
        html_page(caregate_pipeline::care_plan_html(&patient, &view.bundle))
    } else if op.rendering.format == Format::Json && !op.rendering.pretty {
        // Rendered once per built view; polling readers of an unchanged view share it.
        HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, Format::Json.content_type()))
            .body(view.json().to_vec())
    } else {
        resource_response(StatusCode::OK, &view.bundle, op.rendering)
    };
    if let Ok(v) = header::HeaderValue::from_str(&view.etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// `POST /Patient/$match` with a Parameters body (resource, onlyCertainMatches, count).
pub async fn patient_match(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let base = base_url(&req, &state);
    body_operation(req, state, payload, move |pipeline, caller, parameters| {
        pipeline.patient_match(caller, &parameters, &base)
    })
    .await
}

/// A POST operation with a Parameters (or resource) body: the body is read and parsed
/// within the limits, `run` goes to the blocking pool, and its answer is the response.
async fn body_operation(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
    run: impl FnOnce(&Pipeline, &Caller, serde_json::Value) -> FhirResult<serde_json::Value>
        + Send
        + 'static,
) -> HttpResponse {
    let op = op_or_return!(req, state);
    let parameters = match read_body(&req, payload, state.max_body_bytes)
        .await
        .and_then(|body| crate::format::parse_body(req.headers(), &body, &state.content_limits))
    {
        Ok(v) => v,
        Err(e) => return error_response(&e, op.rendering),
    };
    let (pipeline, caller) = (state.pipeline.clone(), op.caller.clone());
    match blocking(move || run(&pipeline, &caller, parameters)).await {
        Ok(out) => resource_response(StatusCode::OK, &out, op.rendering),
        Err(e) => error_response(&e, op.rendering),
    }
}

/// `POST /Patient/{id}/$link` and `$unlink` with a Parameters body (`other`: Reference to
/// the other Patient): records the manual decision as a `Linkage` and answers it. Needs an
/// explicit Linkage write grant (`system/Linkage.cu`).
pub async fn patient_link(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    link_or_unlink(req, state, path.into_inner(), payload, true).await
}

/// See [`patient_link`].
pub async fn patient_unlink(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    link_or_unlink(req, state, path.into_inner(), payload, false).await
}

async fn link_or_unlink(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: String,
    payload: web::Payload,
    link: bool,
) -> HttpResponse {
    body_operation(req, state, payload, move |pipeline, caller, parameters| {
        pipeline.link_patients(caller, &id, &parameters, link)
    })
    .await
}

/// `POST /Consent/$evaluate`: what the consent engine decides for a described request, and
/// why.
pub async fn consent_evaluate(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    body_operation(req, state, payload, |pipeline, caller, parameters| {
        pipeline.evaluate_consent(caller, &parameters)
    })
    .await
}

/// `GET /emergency-access`: open break-the-glass grants, for auditors.
pub async fn emergency_access(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let op = op_or_return!(req, state);
    let (pipeline, caller) = (state.pipeline.clone(), op.caller.clone());
    match blocking(move || pipeline.emergency_grants_for(&caller)).await {
        Ok(grants) => {
            let list: Vec<serde_json::Value> = grants
                .into_iter()
                .map(|(who, patient, until)| {
                    let until = chrono::DateTime::from_timestamp_millis(until)
                        .map(caregate_core::format_instant)
                        .unwrap_or_default();
                    serde_json::json!({"grantee": who, "patient": patient, "openUntil": until})
                })
                .collect();
            HttpResponse::Ok()
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .body(serde_json::json!({ "emergencyAccess": list }).to_string())
        }
        Err(e) => error_response(&e, JSON),
    }
}
