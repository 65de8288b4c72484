//! caregate's HTTP face: the actix-web FHIR REST server. It authenticates the caller,
//! negotiates formats and maps [`caregate_pipeline`] answers to HTTP; every interaction
//! itself happens in the pipeline.

pub mod auth;
pub mod capability;
pub mod config;
pub mod format;
pub mod limits;
mod notify;
mod operations;
mod routes;
pub mod smart;
pub mod tls;

pub use routes::RequestId;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use caregate_consent::{ConsentEngine, DefaultPolicy};
use caregate_core::Severity;
use caregate_pipeline::{Pipeline, PipelineOptions, Stages, Validator, Verdict};
use caregate_search::SearchRegistry;
use caregate_store::{SqliteOptions, SqliteStore, Store};
use caregate_validation::{Package, Registry, ValidationOptions};
use serde_json::Value;

pub use auth::{token_hash_hex, ClientRegistry};
pub use config::{
    ClientConfig, ConfigError, ConsentConfig, RedactConfig, RequiredProfile, ServerConfig,
    SmartConfig, ValidationConfig,
};

/// What every handler shares.
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub clients: ClientRegistry,
    pub capability: Value,
    pub base_url: Option<String>,
    pub max_body_bytes: usize,
    pub content_limits: caregate_core::ContentLimits,
    pub body_timeout: std::time::Duration,
    /// SMART Backend Services, when configured.
    pub smart: Option<Arc<smart::SmartService>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("refusing to listen on {0}: without registered clients (local development mode) caregate only listens on a loopback address; add [[client]] entries to the configuration to serve a network")]
    NotLoopback(SocketAddr),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("opening the store: {0}")]
    Store(#[from] caregate_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The full validator (`caregate_validation::Validator` with FHIRPath invariants) as the
/// pipeline's validation stage: structure first (its errors answer 400), then the core
/// definitions, invariants, bindings, claimed `meta.profile`s and the profiles configured
/// for the client and type (their errors answer 422).
pub struct FullValidator {
    validator: caregate_validation::Validator,
    unknown_profile: Severity,
    unknown_extension: Severity,
    require: Vec<config::RequiredProfile>,
}

fn severity(s: &str) -> Severity {
    if s == "warning" {
        Severity::Warning
    } else {
        Severity::Error
    }
}

impl FullValidator {
    /// Over the core package and caregate's profiles plus the configured packages.
    pub fn from_config(cfg: &config::ValidationConfig) -> Result<FullValidator, String> {
        let registry = if cfg.ig.is_empty() {
            Registry::standard().clone()
        } else {
            let mut b = Registry::builder();
            for path in &cfg.ig {
                b.load_path(path)
                    .map_err(|e| format!("validation.ig {}: {e}", path.display()))?;
            }
            Arc::new(b.build())
        };
        Ok(FullValidator {
            validator: caregate_validation::Validator::with_fhirpath(registry),
            unknown_profile: severity(&cfg.unknown_profile),
            unknown_extension: severity(&cfg.unknown_extension),
            require: cfg.require.clone(),
        })
    }

    fn options(&self, profiles: Vec<String>) -> ValidationOptions {
        ValidationOptions {
            profiles,
            meta_profiles: true,
            unknown_profile: self.unknown_profile,
            unknown_extension: Some(self.unknown_extension),
            structure: false,
        }
    }

    fn check(&self, resource: &Value, profiles: Vec<String>) -> (Vec<caregate_core::Issue>, bool) {
        // One structural walk: it also tells the profile passes whether the resource has
        // extensions, which lets them skip what cannot hold anything to check.
        let (mut issues, sound) = self
            .validator
            .validate_staged(resource, &self.options(profiles));
        if sound {
            // Errors first (what refused the resource), then warnings; walk order within each.
            issues.sort_by_key(|i| !i.severity.is_error());
        }
        (issues, sound)
    }
}

impl Validator for FullValidator {
    fn validate(&self, resource: &Value) -> Vec<caregate_core::Issue> {
        self.check(resource, Vec::new()).0
    }

    fn validate_write(&self, client: Option<&str>, resource: &Value) -> Verdict {
        self.validate_write_also(client, resource, &[])
    }

    /// One pass over the configured profiles and `also` together.
    fn validate_write_also(
        &self,
        client: Option<&str>,
        resource: &Value,
        also: &[String],
    ) -> Verdict {
        let rt = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut profiles: Vec<String> = self
            .require
            .iter()
            .filter(|r| r.resource == rt && r.client.as_deref().is_none_or(|c| Some(c) == client))
            .map(|r| r.profile.clone())
            .collect();
        for p in also {
            if !profiles.contains(p) {
                profiles.push(p.clone());
            }
        }
        let (issues, unprocessable) = self.check(resource, profiles);
        Verdict {
            issues,
            unprocessable,
        }
    }

    fn validate_against(&self, resource: &Value, profiles: &[String]) -> Vec<caregate_core::Issue> {
        self.check(resource, profiles.to_vec()).0
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
    // The default validation configuration loads no files, so it cannot fail.
    let validator = FullValidator::from_config(&config::ValidationConfig::default())
        .map(|v| Arc::new(v) as Arc<dyn Validator>)
        .unwrap_or_else(|e| {
            tracing::error!("{e}");
            Arc::new(caregate_pipeline::AcceptAll)
        });
    build_pipeline_full(store, consent, validator)
}

/// As [`build_pipeline_with`], with the given validation stage.
pub fn build_pipeline_full(
    store: Arc<dyn Store>,
    consent: &config::ConsentConfig,
    validator: Arc<dyn Validator>,
) -> Pipeline {
    let search = Arc::new(SearchRegistry::from_definitions(
        Package::r4_core().of_type("SearchParameter"),
    ));
    let mut stages = Stages::with_validator(validator);
    match caregate_consent::LabelRules::default_rules() {
        Ok(rules) => stages.labeler = Arc::new(RuleLabeler(rules)),
        Err(e) => tracing::error!("labelling rules not loaded: {e}"),
    }
    if consent.enforce {
        stages.consent = Arc::new(ConsentEngine {
            default: if consent.default == "opt-in" {
                DefaultPolicy::OptIn
            } else {
                DefaultPolicy::OptOut
            },
            redaction: consent
                .redact
                .iter()
                .map(|r| caregate_consent::RedactionRule {
                    label: r.label.clone(),
                    except: r.except.clone(),
                })
                .collect(),
            ..ConsentEngine::default()
        });
    }
    let options = PipelineOptions {
        explain_hidden_reads: consent.explain_denials,
        without_consent: match consent.without_consent.as_str() {
            "hold" => caregate_pipeline::WithoutConsent::Hold,
            "reject" => caregate_pipeline::WithoutConsent::Reject,
            _ => caregate_pipeline::WithoutConsent::Accept,
        },
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

/// `/{type}/{id}` for a resource type name and a valid FHIR id only.
const HOT_INSTANCE: &str = "/{type:[A-Z][A-Za-z]+}/{id:[A-Za-z0-9.-]{1,64}}";
/// `/{type}` for a resource type name only.
const HOT_TYPE: &str = "/{type:[A-Z][A-Za-z]+}";

/// One line per request on target `caregate::access`: method, the matched route pattern
/// (`/{type}/{id}`, never the concrete path), resource type, status, duration and request id.
/// Paths and query strings are left out on purpose: ids and search values (names, MRNs,
/// birth dates) are patient data, and logs must never hold any.
struct AccessLog {
    method: actix_web::http::Method,
    request_id: String,
    started: std::time::Instant,
}

impl AccessLog {
    fn start(req: &actix_web::dev::ServiceRequest, id: &RequestId) -> AccessLog {
        AccessLog {
            method: req.method().clone(),
            request_id: id.0.clone(),
            started: std::time::Instant::now(),
        }
    }

    /// Logs the finished request; the route is known only once routing has happened.
    fn finish<B>(self, response: &actix_web::dev::ServiceResponse<B>) {
        let req = response.request();
        // The hot routes' segment patterns are left out: `/{type}/{id}` either way.
        let route = req.match_pattern().map(|r| match r.as_str() {
            HOT_INSTANCE => "/{type}/{id}".to_string(),
            HOT_TYPE => "/{type}".to_string(),
            _ => r,
        });
        let resource_type = req
            .match_info()
            .get("type")
            .filter(|t| caregate_core::is_resource_type(t))
            .or_else(|| {
                // Fixed routes such as `/Patient/{id}/$care-plan` name their type literally.
                route
                    .as_deref()
                    .and_then(|r| r.trim_start_matches('/').split('/').next())
                    .filter(|t| caregate_core::is_resource_type(t))
            });
        tracing::info!(
            target: "caregate::access",
            method = %self.method,
            route = %route.as_deref().unwrap_or("(unmatched)"),
            resource_type = %resource_type.unwrap_or("-"),
            status = response.status().as_u16(),
            ms = self.started.elapsed().as_secs_f64() * 1000.0,
            request_id = %self.request_id,
        );
    }
}

/// Opens the store under `config.data`, binds and returns the server (not yet awaited).
pub fn start(config: &ServerConfig) -> Result<RunningServer, StartError> {
    config
        .check()
        .map_err(|e| StartError::Config(e.to_string()))?;
    if config.development_mode() && !config.listen.ip().is_loopback() {
        return Err(StartError::NotLoopback(config.listen));
    }
    std::fs::create_dir_all(&config.data).map_err(|source| StartError::DataDir {
        path: config.data.display().to_string(),
        source,
    })?;
    let store = SqliteStore::open(
        &config.data.join("caregate.sqlite"),
        SqliteOptions::default(),
    )?;
    let validator = FullValidator::from_config(&config.validation).map_err(StartError::Config)?;
    let notifier = Arc::new(notify::SubscriptionNotifier::start());
    let pipeline = Arc::new(
        build_pipeline_full(store, &config.consent, Arc::new(validator))
            .with_trusted_identifier_systems(config.linking.trusted_systems.clone())
            .with_notifier(notifier.clone()),
    );
    notifier.attach(&pipeline);
    let mut clients = ClientRegistry::new(&config.clients).map_err(StartError::Config)?;
    let smart = if config.smart_enabled() {
        let secret = config
            .smart
            .as_ref()
            .and_then(|s| s.token_secret.as_deref());
        let key = Arc::new(smart::TokenKey::from_config(secret).map_err(StartError::Config)?);
        clients = clients.with_token_key(key.clone());
        Some(Arc::new(
            smart::SmartService::new(config, key).map_err(StartError::Config)?,
        ))
    } else {
        None
    };
    let mut capability = capability::capability_statement(
        pipeline.search_registry(),
        config.base_url.as_deref(),
        config.development_mode(),
    );
    // Without base_url the token URL depends on the request; /metadata adds it then.
    if let (Some(_), Some(base)) = (&smart, &config.base_url) {
        capability::add_smart_security(
            &mut capability,
            &format!("{}/auth/token", base.trim_end_matches('/')),
        );
    }
    let state = web::Data::new(AppState {
        pipeline,
        clients,
        capability,
        base_url: config
            .base_url
            .clone()
            .map(|b| b.trim_end_matches('/').to_string()),
        max_body_bytes: config.max_body_bytes,
        content_limits: config.limits.content(),
        body_timeout: config.limits.body_timeout(),
        smart,
    });
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap_fn(|req, srv| {
                use actix_web::dev::Service;
                use actix_web::HttpMessage;
                let id = RequestId::from_header(
                    req.headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok()),
                );
                let header_value = actix_web::http::header::HeaderValue::from_str(&id.0).ok();
                let access = AccessLog::start(&req, &id);
                req.extensions_mut().insert(id);
                let response = srv.call(req);
                async move {
                    let mut response = response.await?;
                    access.finish(&response);
                    if let Some(v) = header_value {
                        response.headers_mut().insert(
                            actix_web::http::header::HeaderName::from_static("x-request-id"),
                            v,
                        );
                    }
                    Ok(response)
                }
            })
            // actix tries routes in order, each dynamic pattern a regex match: the hot
            // interactions come first, with patterns that cannot take the special paths
            // (`_history`, `$validate`, `metadata`, `ui`…) below. Anything they do not
            // match falls through to the full list.
            .route(HOT_INSTANCE, web::get().to(routes::read))
            .route(HOT_TYPE, web::get().to(routes::search_type))
            .route(HOT_TYPE, web::post().to(routes::create))
            .route(HOT_INSTANCE, web::put().to(routes::update))
            .route("/metadata", web::get().to(routes::metadata))
            .route(
                "/.well-known/smart-configuration",
                web::get().to(smart::smart_configuration),
            )
            .route("/auth/token", web::post().to(smart::token))
            .route("/", web::post().to(routes::bundle))
            .route("/", web::get().to(routes::search_system))
            .route("/_history", web::get().to(routes::history_system))
            .route("/{type}/_history", web::get().to(routes::history_type))
            .route("/{type}/_search", web::post().to(routes::search_post))
            .route("/{type}/$validate", web::post().to(routes::validate_type))
            .route(
                "/{type}/{id}/$validate",
                web::post().to(routes::validate_instance),
            )
            .route("/{type}/{id}/_history/{vid}", web::get().to(routes::vread))
            .route(
                "/{type}/{id}/_history",
                web::get().to(routes::history_instance),
            )
            .route(
                "/Patient/{id}/$disclosures",
                web::get().to(operations::disclosures),
            )
            .route("/Patient/$match", web::post().to(operations::patient_match))
            .route(
                "/Patient/{id}/$link",
                web::post().to(operations::patient_link),
            )
            .route(
                "/Patient/{id}/$unlink",
                web::post().to(operations::patient_unlink),
            )
            .route(
                "/Consent/$evaluate",
                web::post().to(operations::consent_evaluate),
            )
            .route(
                "/Patient/{id}/$care-plan",
                web::get().to(operations::care_plan),
            )
            .route(
                "/ui/patients/{id}/care-plan",
                web::get().to(operations::care_plan),
            )
            .route(
                "/conformance/report",
                web::get().to(operations::conformance_report),
            )
            .route(
                "/emergency-access",
                web::get().to(operations::emergency_access),
            )
            .route(
                "/ui/conformance",
                web::get().to(operations::conformance_report),
            )
            .route("/{type}/{id}", web::get().to(routes::read))
            .route("/{type}/{id}", web::put().to(routes::update))
            .route("/{type}/{id}", web::delete().to(routes::delete))
            .route("/{type}", web::get().to(routes::search_type))
            .route("/{type}", web::post().to(routes::create))
            .route("/{type}", web::put().to(routes::conditional_update))
            .route("/{type}", web::delete().to(routes::conditional_delete))
            .default_service(web::to(routes::fallback))
    })
    .on_connect(tls::on_connect)
    .disable_signals()
    .shutdown_timeout(5)
    .client_request_timeout(config.limits.header_timeout())
    .client_disconnect_timeout(std::time::Duration::from_secs(2))
    .keep_alive(std::time::Duration::from_secs(config.limits.keep_alive_s))
    .max_connections(config.limits.max_connections_per_worker);
    if let Some(w) = config.workers {
        server = server.workers(w.max(1));
    }
    let bound = match &config.tls {
        Some(tls) => {
            let tls_config =
                tls::server_config(tls).map_err(|e| StartError::Config(e.to_string()))?;
            server.bind_rustls_0_23(config.listen, tls_config)
        }
        None => server.bind(config.listen),
    };
    let server = bound.map_err(|source| StartError::Bind {
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
