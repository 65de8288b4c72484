//! Operations outside the core REST interactions.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caregate_core::FhirError;

use crate::format::{error_response, negotiate, resource_response, Format, Rendering};
use crate::AppState;

const JSON: Rendering = Rendering {
    format: Format::Json,
    pretty: false,
};

/// `GET /Patient/{id}/$disclosures?start=&end=`: the accounting of disclosures, as FHIR
/// Parameters, or as an HTML page for `_format=html` / a browser's `Accept: text/html`.
pub async fn disclosures(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let query: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let wants_html = query.iter().any(|(k, v)| k == "_format" && v == "html")
        || req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.starts_with("text/html"));
    let rendering = if wants_html {
        JSON
    } else {
        match negotiate(req.headers(), &query) {
            Ok(r) => r,
            Err(e) => return error_response(&e, JSON),
        }
    };
    let caller = match crate::routes::caller_of(&req, &state) {
        Ok(c) => c,
        Err(e) => return error_response(&e, rendering),
    };
    let patient = path.into_inner();
    let start = query
        .iter()
        .find(|(k, _)| k == "start")
        .map(|(_, v)| v.clone());
    let end = query
        .iter()
        .find(|(k, _)| k == "end")
        .map(|(_, v)| v.clone());
    let pipeline = state.pipeline.clone();
    let id = patient.clone();
    let result =
        web::block(move || pipeline.disclosures(&caller, &id, start.as_deref(), end.as_deref()))
            .await
            .map_err(|_| FhirError::internal("the request could not be processed"))
            .and_then(|r| r);
    match result {
        Ok(list) if wants_html => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
            .body(caregate_pipeline::disclosures_html(&patient, &list)),
        Ok(list) => resource_response(
            StatusCode::OK,
            &caregate_pipeline::disclosures_parameters(&patient, &list),
            rendering,
        ),
        Err(e) => error_response(&e, rendering),
    }
}

/// `GET /conformance/report?source=&since=` (JSON) and `GET /ui/conformance` (HTML):
/// validation outcomes per source system, for auditors.
pub async fn conformance_report(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let query: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let html = req.path().starts_with("/ui/");
    let caller = match crate::routes::caller_of(&req, &state) {
        Ok(c) => c,
        Err(e) => return error_response(&e, JSON),
    };
    let source = query
        .iter()
        .find(|(k, _)| k == "source")
        .map(|(_, v)| v.clone());
    let since = query
        .iter()
        .find(|(k, _)| k == "since")
        .map(|(_, v)| v.clone());
    let pipeline = state.pipeline.clone();
    let (s2, since2) = (source.clone(), since.clone());
    let result =
        web::block(move || pipeline.conformance_report(&caller, s2.as_deref(), since2.as_deref()))
            .await
            .map_err(|_| FhirError::internal("the request could not be processed"))
            .and_then(|r| r);
    match result {
        Ok(report) if html => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
            .body(caregate_pipeline::conformance_html(
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

/// `GET /Patient/{id}/$care-plan[?_since=]`: the shared care-plan view of the person, with
/// a strong ETag so clients can poll cheaply (`If-None-Match` → 304).
pub async fn care_plan(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let query: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let rendering = match negotiate(req.headers(), &query) {
        Ok(r) => r,
        Err(e) => return error_response(&e, JSON),
    };
    let caller = match crate::routes::caller_of(&req, &state) {
        Ok(c) => c,
        Err(e) => return error_response(&e, rendering),
    };
    let id = path.into_inner();
    let patient_id = id.clone();
    let since = query
        .iter()
        .find(|(k, _)| k == "_since")
        .map(|(_, v)| v.clone());
    let pipeline = state.pipeline.clone();
    let result = web::block(move || pipeline.care_plan(&caller, &id, since.as_deref()))
        .await
        .map_err(|_| FhirError::internal("the request could not be processed"))
        .and_then(|r| r);
    let page = req.path().starts_with("/ui/");
    match result {
        Ok(view) if page => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
            .insert_header((header::ETAG, view.etag.clone()))
            .body(caregate_pipeline::care_plan_html(&patient_id, &view.bundle)),
        Ok(view) => {
            let unchanged = req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() == view.etag);
            if unchanged {
                return HttpResponse::NotModified()
                    .insert_header((header::ETAG, view.etag))
                    .finish();
            }
            let mut resp = resource_response(StatusCode::OK, &view.bundle, rendering);
            if let Ok(v) = header::HeaderValue::from_str(&view.etag) {
                resp.headers_mut().insert(header::ETAG, v);
            }
            resp
        }
        Err(e) => error_response(&e, rendering),
    }
}

/// `POST /Patient/$match` with a Parameters body (resource, onlyCertainMatches, count).
pub async fn patient_match(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let query: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let rendering = match negotiate(req.headers(), &query) {
        Ok(r) => r,
        Err(e) => return error_response(&e, JSON),
    };
    let caller = match crate::routes::caller_of(&req, &state) {
        Ok(c) => c,
        Err(e) => return error_response(&e, rendering),
    };
    let parameters = match crate::format::parse_body(req.headers(), &body) {
        Ok(v) => v,
        Err(e) => return error_response(&e, rendering),
    };
    let base = match &state.base_url {
        Some(b) => b.clone(),
        None => {
            let info = req.connection_info();
            format!("{}://{}", info.scheme(), info.host())
        }
    };
    let pipeline = state.pipeline.clone();
    let result = web::block(move || pipeline.patient_match(&caller, &parameters, &base))
        .await
        .map_err(|_| FhirError::internal("the request could not be processed"))
        .and_then(|r| r);
    match result {
        Ok(bundle) => resource_response(StatusCode::OK, &bundle, rendering),
        Err(e) => error_response(&e, rendering),
    }
}
