//! caregate's HTTP face: the actix-web FHIR REST server. It authenticates the caller,
//! negotiates formats and maps [`caregate_pipeline`] answers to HTTP; every interaction
//! itself happens in the pipeline.

pub mod auth;
pub mod capability;
pub mod config;
pub mod format;
mod operations;
mod routes;

pub use routes::RequestId;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use caregate_pipeline::{Pipeline, PipelineOptions, Stages, Validator};
use caregate_consent::{ConsentEngine, DefaultPolicy};
use caregate_search::SearchRegistry;
use caregate_store::{SqliteOptions, SqliteStore, Store};
use caregate_validation::{Package, StructureModel};
use serde_json::Value;

pub use auth::{token_hash_hex, ClientRegistry};
pub use config::{ClientConfig, ConfigError, ConsentConfig, ServerConfig};

/// What every handler shares.
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub clients: ClientRegistry,
    pub capability: Value,
    pub base_url: Option<String>,
    pub max_body_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("refusing to listen on {0}: without registered clients (local development mode) caregate only listens on a loopback address; add [[client]] entries to the configuration to serve a network")]
    NotLoopback(SocketAddr),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("opening the store: {0}")]
    Store(#[from] caregate_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The structural validator from the R4 core definitions, as a pipeline stage.
struct StructureValidator(&'static StructureModel);

impl Validator for StructureValidator {
    fn validate(&self, resource: &Value) -> Vec<caregate_core::Issue> {
        self.0.validate(resource)
    }
}

/// DS4P labelling rules as the pipeline's labelling stage.
struct RuleLabeler(caregate_consent::LabelRules);

impl caregate_pipeline::Labeler for RuleLabeler {
    fn label(&self, resource: &mut Value) {
        self.0.label(resource);
    }
}

/// Assembles the pipeline over a store: the search registry from the R4 core
/// SearchParameters, structural validation, and the named no-op stages not yet built.
pub fn build_pipeline(store: Arc<dyn Store>) -> Pipeline {
    build_pipeline_with(store, &config::ConsentConfig::default())
}

/// As [`build_pipeline`], with the configured consent policy.
pub fn build_pipeline_with(store: Arc<dyn Store>, consent: &config::ConsentConfig) -> Pipeline {
    let search = Arc::new(SearchRegistry::from_definitions(Package::r4_core().of_type("SearchParameter")));
    let mut stages = Stages::with_validator(Arc::new(StructureValidator(StructureModel::r4_core())));
    match caregate_consent::LabelRules::default_rules() {
        Ok(rules) => stages.labeler = Arc::new(RuleLabeler(rules)),
        Err(e) => tracing::error!("labelling rules not loaded: {e}"),
    }
    if consent.enforce {
        stages.consent = Arc::new(ConsentEngine {
            default: if consent.default == "opt-in" { DefaultPolicy::OptIn } else { DefaultPolicy::OptOut },
            ..ConsentEngine::default()
        });
    }
    let options = PipelineOptions {
        explain_hidden_reads: consent.explain_denials,
        withheld_notice: consent.withheld_notice,
        ..PipelineOptions::default()
    };
    Pipeline::new(store, search, stages, options)
}

/// A started server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub server: actix_web::dev::Server,
}

/// Opens the store under `config.data`, binds and returns the server (not yet awaited).
pub fn start(config: &ServerConfig) -> Result<RunningServer, StartError> {
    config.check().map_err(|e| StartError::Config(e.to_string()))?;
    if config.development_mode() && !config.listen.ip().is_loopback() {
        return Err(StartError::NotLoopback(config.listen));
    }
    std::fs::create_dir_all(&config.data).map_err(|source| StartError::DataDir {
        path: config.data.display().to_string(),
        source,
    })?;
    let store = SqliteStore::open(&config.data.join("caregate.sqlite"), SqliteOptions::default())?;
    let pipeline = Arc::new(build_pipeline_with(store, &config.consent));
    let clients = ClientRegistry::new(&config.clients).map_err(StartError::Config)?;
    let capability = capability::capability_statement(pipeline.search_registry(), config.base_url.as_deref(), config.development_mode());
    let state = web::Data::new(AppState {
        pipeline,
        clients,
        capability,
        base_url: config.base_url.clone().map(|b| b.trim_end_matches('/').to_string()),
        max_body_bytes: config.max_body_bytes,
    });
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap_fn(|req, srv| {
                use actix_web::dev::Service;
                use actix_web::HttpMessage;
                let id = RequestId::from_header(req.headers().get("x-request-id").and_then(|v| v.to_str().ok()));
                let header_value = actix_web::http::header::HeaderValue::from_str(&id.0).ok();
                req.extensions_mut().insert(id);
                let response = srv.call(req);
                async move {
                    let mut response = response.await?;
                    if let Some(v) = header_value {
                        response.headers_mut().insert(actix_web::http::header::HeaderName::from_static("x-request-id"), v);
                    }
                    Ok(response)
                }
            })
            .route("/metadata", web::get().to(routes::metadata))
            .route("/", web::post().to(routes::bundle))
            .route("/", web::get().to(routes::search_system))
            .route("/_history", web::get().to(routes::history_system))
            .route("/{type}/_history", web::get().to(routes::history_type))
            .route("/{type}/_search", web::post().to(routes::search_post))
            .route("/{type}/{id}/_history/{vid}", web::get().to(routes::vread))
            .route("/{type}/{id}/_history", web::get().to(routes::history_instance))
            .route("/Patient/{id}/$disclosures", web::get().to(operations::disclosures))
            .route("/{type}/{id}", web::get().to(routes::read))
            .route("/{type}/{id}", web::put().to(routes::update))
            .route("/{type}/{id}", web::delete().to(routes::delete))
            .route("/{type}", web::get().to(routes::search_type))
            .route("/{type}", web::post().to(routes::create))
            .route("/{type}", web::put().to(routes::conditional_update))
            .route("/{type}", web::delete().to(routes::conditional_delete))
            .default_service(web::to(routes::fallback))
    })
    .disable_signals()
    .shutdown_timeout(5);
    if let Some(w) = config.workers {
        server = server.workers(w.max(1));
    }
    let server = server
        .bind(config.listen)
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = server.addrs().first().copied().unwrap_or(config.listen);
    let server = server.run();
    Ok(RunningServer {
        addr,
        handle: server.handle(),
        server,
    })
}
