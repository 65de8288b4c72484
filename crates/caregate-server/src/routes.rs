//! The FHIR REST routes (http.html). Each handler establishes the caller and the response
//! format, hands the request to the pipeline on the blocking pool, and turns the answer
//! into HTTP — nothing more.

use std::time::{Duration, UNIX_EPOCH};

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use caregate_core::{ErrorKind, FhirError, OperationOutcome};
use caregate_pipeline::{parse_etag, Caller, HistoryRequest, ReturnPreference, WriteOutcome};
use caregate_store::{HistoryScope, VersionRecord};
use futures_util::StreamExt;
use serde_json::Value;

use crate::format::{error_response, negotiate, parse_body, resource_response, Format, Rendering};
use crate::AppState;

/// The id of one request: the client's `X-Request-Id` when it is a sane token, else new.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn from_header(value: Option<&str>) -> RequestId {
        match value {
            Some(v)
                if !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) =>
            {
                RequestId(v.to_string())
            }
            _ => RequestId(uuid::Uuid::new_v4().to_string()),
        }
    }
}

/// Per-request context shared by the handlers.
struct Ctx {
    caller: Caller,
    rendering: Rendering,
    query: Vec<(String, String)>,
    base: String,
    prefer_return: ReturnPreference,
    strict: bool,
}

const JSON_DEFAULT: Rendering = Rendering {
    format: Format::Json,
    pretty: false,
};

fn prefer(headers: &HeaderMap) -> (ReturnPreference, bool) {
    let mut ret = ReturnPreference::Representation;
    let mut strict = false;
    for value in headers.get_all("prefer").filter_map(|v| v.to_str().ok()) {
        for part in value.split([',', ';']) {
            match part
                .trim()
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            {
                Some(("return", "minimal")) => ret = ReturnPreference::Minimal,
                Some(("return", "representation")) => ret = ReturnPreference::Representation,
                Some(("return", "OperationOutcome")) => ret = ReturnPreference::OperationOutcome,
                Some(("handling", "strict")) => strict = true,
                Some(("handling", "lenient")) => strict = false,
                _ => {}
            }
        }
    }
    (ret, strict)
}

/// The base URL for links and Location headers: configured, or this request's own.
pub(crate) fn base_url(req: &HttpRequest, state: &AppState) -> String {
    match &state.base_url {
        Some(b) => b.clone(),
        None => {
            let info = req.connection_info();
            format!("{}://{}", info.scheme(), info.host())
        }
    }
}

/// Authenticates the request's caller (auditing refused credentials).
pub(crate) fn caller_of(req: &HttpRequest, state: &AppState) -> Result<Caller, FhirError> {
    let purpose = req
        .headers()
        .get("x-purpose-of-use")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let network_address = req.peer_addr().map(|a| a.ip().to_string());
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    // The client certificate verified in a mutual-TLS handshake (tls::on_connect).
    let client_cert = req
        .conn_data::<crate::tls::PeerCertificate>()
        .map(|c| c.sha256);
    let authenticated =
        state
            .clients
            .authenticate_request(authorization, purpose, client_cert.as_ref());
    let mut caller = match authenticated {
        Ok(c) => c,
        Err(e) => {
            state
                .pipeline
                .audit_rejected_credentials(network_address, request_id, &e);
            return Err(e);
        }
    };
    caller.network_address = network_address;
    caller.request_id = request_id;
    Ok(caller)
}

impl Ctx {
    // The error is the finished response, built once per refused request.
    #[allow(clippy::result_large_err)]
    fn new(req: &HttpRequest, state: &AppState) -> Result<Ctx, HttpResponse> {
        let query: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
            .into_owned()
            .collect();
        let rendering =
            negotiate(req.headers(), &query).map_err(|e| error_response(&e, JSON_DEFAULT))?;
        let caller = caller_of(req, state).map_err(|e| error_response(&e, rendering))?;
        let base = base_url(req, state);
        let (prefer_return, strict) = prefer(req.headers());
        Ok(Ctx {
            caller,
            rendering,
            query,
            base,
            prefer_return,
            strict,
        })
    }

    fn fail(&self, e: &FhirError) -> HttpResponse {
        error_response(e, self.rendering)
    }
}

/// Runs pipeline work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FhirError> + Send + 'static,
) -> Result<T, FhirError> {
    web::block(f)
        .await
        .map_err(|_| FhirError::internal("the request could not be processed"))?
}

/// Reads the body with the configured limit, answering 413 with an OperationOutcome, and
/// 408 when the client takes longer than `[limits] body_timeout_ms` to send it (a slow
/// sender holds a connection, not a worker: the read is asynchronous).
pub(crate) async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, FhirError> {
    let too_large = || {
        tracing::warn!(target: "caregate::limits", limit, "request body over the size limit");
        FhirError::new(
            ErrorKind::PayloadTooLarge,
            format!("The request body is larger than the configured limit of {limit} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let timeout = req
        .app_data::<web::Data<AppState>>()
        .map_or(Duration::from_secs(30), |s| s.body_timeout);
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                FhirError::bad_request(format!("Reading the request body failed: {e}"))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    match actix_web::rt::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(target: "caregate::limits", timeout_ms = timeout.as_millis() as u64, "request body not received in time");
            Err(FhirError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "The request body was not received within {} ms",
                    timeout.as_millis()
                ),
            ))
        }
    }
}

async fn body_json(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Value, FhirError> {
    let body = read_body(req, payload, state.max_body_bytes).await?;
    parse_body(req.headers(), &body, &state.content_limits)
}

/// Reads the body here, then parses it and runs `write` with it on the blocking pool: the
/// parsed tree is freed on the thread that allocated it, which is mimalloc's fast path.
/// Parsed on the HTTP worker and dropped by the blocking thread, a Synthea import's
/// hundreds of thousands of nodes were each freed across threads, about 4 % of the
/// server's CPU.
async fn with_body<T: Send + 'static>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    write: impl FnOnce(Value) -> Result<T, FhirError> + Send + 'static,
) -> Result<T, FhirError> {
    let body = read_body(req, payload, state.max_body_bytes).await?;
    let headers = req.headers().clone();
    let limits = state.content_limits;
    blocking(move || write(parse_body(&headers, &body, &limits)?)).await
}

fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

fn version_headers(resp: &mut actix_web::HttpResponseBuilder, record: &VersionRecord) {
    resp.insert_header((header::ETAG, format!("W/\"{}\"", record.version)));
    resp.insert_header((header::LAST_MODIFIED, http_date(record.last_updated_ms)));
}

/// A stored version as the response body: JSON straight from storage when possible.
fn record_response(status: StatusCode, record: &VersionRecord, ctx: &Ctx) -> HttpResponse {
    let mut resp = HttpResponse::build(status);
    version_headers(&mut resp, record);
    match (&record.content, ctx.rendering.format, ctx.rendering.pretty) {
        (Some(bytes), Format::Json, false) => resp
            .insert_header((header::CONTENT_TYPE, Format::Json.content_type()))
            .body(bytes.clone()),
        (Some(bytes), _, _) => match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => match crate::format::render(&v, ctx.rendering) {
                Ok(body) => resp
                    .insert_header((header::CONTENT_TYPE, ctx.rendering.format.content_type()))
                    .body(body),
                Err(e) => ctx.fail(&e),
            },
            Err(_) => ctx.fail(&FhirError::internal("stored resource is unreadable")),
        },
        (None, _, _) => ctx.fail(&FhirError::new(ErrorKind::Gone, "deleted")),
    }
}

fn write_response(out: &WriteOutcome, ctx: &Ctx) -> HttpResponse {
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let r = &out.record;
    let location = format!(
        "{}/{}/{}/_history/{}",
        ctx.base, r.resource_type, r.id, r.version
    );
    let mut resp = HttpResponse::build(status);
    version_headers(&mut resp, r);
    if out.created || out.matched_existing {
        resp.insert_header((header::LOCATION, location.clone()));
    }
    resp.insert_header((header::CONTENT_LOCATION, location));
    match ctx.prefer_return {
        ReturnPreference::Minimal => resp.finish(),
        ReturnPreference::OperationOutcome => {
            let oo = OperationOutcome {
                issues: out
                    .issues
                    .iter()
                    .filter(|i| !i.severity.is_error())
                    .cloned()
                    .collect(),
            }
            .to_json();
            match crate::format::render(&oo, ctx.rendering) {
                Ok(body) => resp
                    .insert_header((header::CONTENT_TYPE, ctx.rendering.format.content_type()))
                    .body(body),
                Err(e) => ctx.fail(&e),
            }
        }
        // The stored bytes are exactly the representation; no need to serialise again.
        ReturnPreference::Representation
            if ctx.rendering.format == Format::Json
                && !ctx.rendering.pretty
                && r.content.is_some() =>
        {
            resp.insert_header((header::CONTENT_TYPE, Format::Json.content_type()))
                .body(r.content.clone().unwrap_or_default())
        }
        ReturnPreference::Representation => {
            match crate::format::render(&out.resource, ctx.rendering) {
                Ok(body) => resp
                    .insert_header((header::CONTENT_TYPE, ctx.rendering.format.content_type()))
                    .body(body),
                Err(e) => ctx.fail(&e),
            }
        }
    }
}

macro_rules! ctx_or_return {
    ($req:expr, $state:expr) => {
        match Ctx::new(&$req, &$state) {
            Ok(c) => c,
            Err(resp) => return resp,
        }
    };
}

fn if_match(req: &HttpRequest) -> Result<Option<u64>, FhirError> {
    match req
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(None),
        Some(v) => parse_etag(v).map(Some).ok_or_else(|| {
            FhirError::bad_request(format!("If-Match '{v}' is not a version ETag like W/\"1\""))
        }),
    }
}

pub async fn metadata(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let query: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let rendering = match negotiate(req.headers(), &query) {
        Ok(r) => r,
        Err(e) => return error_response(&e, JSON_DEFAULT),
    };
    if state.smart.is_some() && state.base_url.is_none() {
        // The token URL is this request's own (see lib.rs: static when base_url is set).
        let mut capability = state.capability.clone();
        let token_url = format!("{}/auth/token", base_url(&req, &state));
        crate::capability::add_smart_security(&mut capability, &token_url);
        return resource_response(StatusCode::OK, &capability, rendering);
    }
    resource_response(StatusCode::OK, &state.capability, rendering)
}

pub async fn read(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let (rtype, id) = path.into_inner();
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    // A read by id is one indexed lookup: answered on the worker itself, where handing it
    // to the blocking pool would cost two thread switches for less work than that.
    match pipeline.read(&caller, &rtype, &id) {
        Ok(record) => {
            let etag_match = req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_etag)
                .is_some_and(|v| v == record.version);
            let not_modified_since = req
                .headers()
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .is_some_and(|since| record.last_updated_ms / 1000 <= since.as_secs() as i64);
            if etag_match || not_modified_since {
                let mut resp = HttpResponse::NotModified();
                version_headers(&mut resp, &record);
                return resp.finish();
            }
            record_response(StatusCode::OK, &record, &ctx)
        }
        Err(e) => ctx.fail(&e),
    }
}

pub async fn vread(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let (rtype, id, vid) = path.into_inner();
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    match blocking(move || pipeline.vread(&caller, &rtype, &id, &vid)).await {
        Ok(record) => record_response(StatusCode::OK, &record, &ctx),
        Err(e) => ctx.fail(&e),
    }
}

pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let rtype = path.into_inner();
    if let Err(e) = caregate_pipeline::check_resource_type(&rtype) {
        return ctx.fail(&e);
    }
    let if_none_exist = req
        .headers()
        .get("if-none-exist")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    match with_body(&req, payload, &state, move |resource| {
        pipeline.create(&caller, &rtype, resource, if_none_exist.as_deref())
    })
    .await
    {
        Ok(out) => write_response(&out, &ctx),
        Err(e) => ctx.fail(&e),
    }
}

pub async fn update(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let (rtype, id) = path.into_inner();
    if let Err(e) = caregate_pipeline::check_resource_type(&rtype) {
        return ctx.fail(&e);
    }
    let if_match = match if_match(&req) {
        Ok(v) => v,
        Err(e) => return ctx.fail(&e),
    };
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    match with_body(&req, payload, &state, move |resource| {
        pipeline.update(&caller, &rtype, &id, resource, if_match)
    })
    .await
    {
        Ok(out) => write_response(&out, &ctx),
        Err(e) => ctx.fail(&e),
    }
}

pub async fn conditional_update(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let rtype = path.into_inner();
    let if_match = match if_match(&req) {
        Ok(v) => v,
        Err(e) => return ctx.fail(&e),
    };
    let query = criteria(&ctx.query);
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    match with_body(&req, payload, &state, move |resource| {
        pipeline.conditional_update(&caller, &rtype, &query, resource, if_match)
    })
    .await
    {
        Ok(out) => write_response(&out, &ctx),
        Err(e) => ctx.fail(&e),
    }
}

/// The search criteria of a conditional interaction, without the result parameters.
fn criteria(query: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in query {
        if k != "_format" && k != "_pretty" {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let (rtype, id) = path.into_inner();
    let if_match = match if_match(&req) {
        Ok(v) => v,
        Err(e) => return ctx.fail(&e),
    };
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    match blocking(move || pipeline.delete(&caller, &rtype, &id, if_match)).await {
        Ok(out) => delete_response(out.version),
        Err(e) => ctx.fail(&e),
    }
}

fn delete_response(version: Option<u64>) -> HttpResponse {
    let mut resp = HttpResponse::NoContent();
    if let Some(v) = version {
        resp.insert_header((header::ETAG, format!("W/\"{v}\"")));
    }
    resp.finish()
}

pub async fn conditional_delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let rtype = path.into_inner();
    let query = criteria(&ctx.query);
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    match blocking(move || pipeline.conditional_delete(&caller, &rtype, &query)).await {
        Ok(out) => delete_response(out.version),
        Err(e) => ctx.fail(&e),
    }
}

async fn run_search(
    ctx: Ctx,
    state: &AppState,
    rtype: Option<String>,
    params: Vec<(String, String)>,
) -> HttpResponse {
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    let base = ctx.base.clone();
    let strict = ctx.strict;
    match blocking(move || pipeline.search(&caller, rtype.as_deref(), &params, strict, &base)).await
    {
        Ok(out) => resource_response(StatusCode::OK, &out.bundle, ctx.rendering),
        Err(e) => ctx.fail(&e),
    }
}

pub async fn search_type(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let params = ctx.query.clone();
    run_search(ctx, &state, Some(path.into_inner()), params).await
}

pub async fn search_system(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let params = ctx.query.clone();
    run_search(ctx, &state, None, params).await
}

/// `POST [type]/_search` with `application/x-www-form-urlencoded` parameters.
pub async fn search_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let body = match read_body(&req, payload, state.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return ctx.fail(&e),
    };
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return ctx.fail(&FhirError::new(
            ErrorKind::UnsupportedMediaType,
            "POST _search takes application/x-www-form-urlencoded parameters",
        ));
    }
    let mut params = ctx.query.clone();
    params.extend(form_urlencoded::parse(&body).into_owned());
    run_search(ctx, &state, Some(path.into_inner()), params).await
}

async fn run_history(ctx: Ctx, state: &AppState, scope: HistoryScope) -> HttpResponse {
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    let base = ctx.base.clone();
    let request = HistoryRequest {
        scope,
        params: ctx.query.clone(),
    };
    match blocking(move || pipeline.history(&caller, &request, &base)).await {
        Ok(bundle) => resource_response(StatusCode::OK, &bundle, ctx.rendering),
        Err(e) => ctx.fail(&e),
    }
}

pub async fn history_instance(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let (t, id) = path.into_inner();
    run_history(ctx, &state, HistoryScope::Instance(t, id)).await
}

pub async fn history_type(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    run_history(ctx, &state, HistoryScope::Type(path.into_inner())).await
}

pub async fn history_system(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    run_history(ctx, &state, HistoryScope::System).await
}

pub async fn bundle(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    let base = ctx.base.clone();
    let prefer = ctx.prefer_return;
    match with_body(&req, payload, &state, move |bundle| {
        pipeline.process_bundle(&caller, bundle, prefer, &base)
    })
    .await
    {
        Ok(response) => resource_response(StatusCode::OK, &response, ctx.rendering),
        Err(e) => ctx.fail(&e),
    }
}

/// Anything no route matched: 404 for unknown resource types and paths, 405 for a known
/// path with a method FHIR does not define there.
pub async fn fallback(req: HttpRequest) -> HttpResponse {
    let query: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let rendering = negotiate(req.headers(), &query).unwrap_or(JSON_DEFAULT);
    let segments: Vec<&str> = req
        .path()
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let known_type = segments
        .first()
        .is_some_and(|t| caregate_core::is_resource_type(t));
    let error = if segments.first().is_some_and(|t| {
        !t.starts_with('$')
            && !t.starts_with('_')
            && t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && !caregate_core::is_resource_type(t)
    }) {
        FhirError::not_found(format!("Unknown resource type '{}'", segments[0]))
    } else if known_type && segments.len() <= 2 {
        let allowed = if segments.len() == 1 {
            "GET, POST, PUT, DELETE"
        } else {
            "GET, PUT, DELETE"
        };
        let mut e = FhirError::new(
            ErrorKind::MethodNotAllowed,
            format!(
                "{} is not supported on {} (allowed: {allowed})",
                req.method(),
                req.path()
            ),
        );
        if req.method() == Method::PATCH {
            e = FhirError::new(
                ErrorKind::MethodNotAllowed,
                "PATCH is not supported yet; use PUT with the whole resource",
            );
        }
        let mut resp = error_response(&e, rendering);
        if let Ok(v) = header::HeaderValue::from_str(allowed) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    } else {
        FhirError::not_found(format!("No FHIR interaction is defined at {}", req.path()))
    };
    error_response(&error, rendering)
}

/// `POST [base]/[type]/$validate` (operation-resource-validate): the body is the resource,
/// or a Parameters with `resource` and optional `profile` and `mode` (also accepted as
/// query parameters). Always 200 with an OperationOutcome when the request itself is sound.
pub async fn validate_type(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    validate_operation(req, state, path.into_inner(), None, payload).await
}

/// `POST [base]/[type]/[id]/$validate`.
pub async fn validate_instance(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> HttpResponse {
    let (rtype, id) = path.into_inner();
    validate_operation(req, state, rtype, Some(id), payload).await
}

/// A `$validate` request taken apart.
struct ValidateRequest {
    resource: Option<Value>,
    profiles: Vec<String>,
    mode: Option<String>,
}

fn validate_request(
    rtype: &str,
    body: Value,
    query: &[(String, String)],
) -> Result<ValidateRequest, FhirError> {
    let mut out = ValidateRequest {
        resource: None,
        profiles: Vec::new(),
        mode: None,
    };
    let is_parameters = body.get("resourceType").and_then(Value::as_str) == Some("Parameters")
        && rtype != "Parameters";
    if is_parameters {
        let params = body
            .get("parameter")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, p) in params.into_iter().enumerate() {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            let text = || {
                [
                    "valueUri",
                    "valueCanonical",
                    "valueString",
                    "valueCode",
                    "valueUrl",
                ]
                .iter()
                .find_map(|k| p.get(*k).and_then(Value::as_str))
                .map(str::to_string)
            };
            match name {
                "resource" => match p.get("resource") {
                    Some(r) => out.resource = Some(r.clone()),
                    None => {
                        return Err(FhirError::at(
                            ErrorKind::BadRequest,
                            format!("Parameters.parameter[{i}]"),
                            "The 'resource' parameter must hold a resource",
                        ))
                    }
                },
                "profile" => out.profiles.extend(text()),
                "mode" => out.mode = text(),
                _ => {}
            }
        }
    } else {
        out.resource = Some(body);
    }
    for (k, v) in query {
        match k.as_str() {
            "profile" => out.profiles.push(v.clone()),
            "mode" => out.mode = Some(v.clone()),
            _ => {}
        }
    }
    Ok(out)
}

async fn validate_operation(
    req: HttpRequest,
    state: web::Data<AppState>,
    rtype: String,
    id: Option<String>,
    payload: web::Payload,
) -> HttpResponse {
    let ctx = ctx_or_return!(req, state);
    if let Err(e) = caregate_pipeline::check_resource_type(&rtype) {
        return ctx.fail(&e);
    }
    let body = match body_json(&req, payload, &state).await {
        Ok(v) => v,
        Err(e) => return ctx.fail(&e),
    };
    let request = match validate_request(&rtype, body, &ctx.query) {
        Ok(r) => r,
        Err(e) => return ctx.fail(&e),
    };
    match request.mode.as_deref() {
        None | Some("create" | "update" | "delete") => {}
        Some(m) => {
            return ctx.fail(&FhirError::bad_request(format!(
                "Unknown $validate mode '{m}' (create, update or delete)"
            )))
        }
    }
    let Some(resource) = request.resource else {
        if request.mode.as_deref() == Some("delete") {
            let ok = OperationOutcome::single(caregate_core::Issue::new(
                caregate_core::Severity::Information,
                caregate_core::IssueCode::Informational,
                "All OK",
            ));
            return resource_response(StatusCode::OK, &ok.to_json(), ctx.rendering);
        }
        return ctx.fail(&FhirError::bad_request(
            "$validate needs a resource to validate",
        ));
    };
    if request.mode.as_deref() == Some("update") || id.is_some() {
        let body_id = resource.get("id").and_then(Value::as_str);
        match (&id, body_id) {
            (Some(want), Some(got)) if want != got => {
                return ctx.fail(&FhirError::at(
                    ErrorKind::BadRequest,
                    format!("{rtype}.id"),
                    format!("The resource id '{got}' does not match the id '{want}' in the URL"),
                ))
            }
            (_, None) if request.mode.as_deref() == Some("update") => {
                return ctx.fail(&FhirError::at(
                    ErrorKind::BadRequest,
                    rtype.clone(),
                    "mode=update needs the resource's id",
                ))
            }
            _ => {}
        }
    }
    let pipeline = state.pipeline.clone();
    let caller = ctx.caller.clone();
    let profiles = request.profiles;
    match blocking(move || pipeline.validate_resource(&caller, &rtype, &resource, &profiles)).await
    {
        Ok(issues) => {
            let outcome = if issues.is_empty() {
                OperationOutcome::single(caregate_core::Issue::new(
                    caregate_core::Severity::Information,
                    caregate_core::IssueCode::Informational,
                    "All OK",
                ))
            } else {
                OperationOutcome { issues }
            };
            resource_response(StatusCode::OK, &outcome.to_json(), ctx.rendering)
        }
        Err(e) => ctx.fail(&e),
    }
}
