//! Starts a real caregate server on a free loopback port for end-to-end tests.
#![allow(dead_code)]

use caregate_server::{ClientConfig, ServerConfig};
use serde_json::Value;

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data: dir.path().join("data"),
            workers: Some(2),
            ..ServerConfig::default()
        };
        configure(&mut config);
        let running = caregate_server::start(&config).expect("server starts");
        let handle = running.handle.clone();
        tokio::spawn(running.server);
        TestServer {
            base: format!("http://{}", running.addr),
            http: reqwest::Client::new(),
            handle,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/fhir+json")
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// POSTs bytes as they are, with the given content type (malformed or oversized
    /// bodies, XML).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .put(self.url(path))
            .header("content-type", "application/fhir+json")
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// POST a resource as a registered client (bearer token).
    pub async fn post_as(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// GET as a registered client (bearer token).
    pub async fn get_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("request")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("json")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http
            .delete(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Creates a resource and returns its id.
    pub async fn create(&self, resource: Value) -> String {
        let ty = resource_type(&resource);
        created_id(&ty, self.post(&ty, &resource).await).await
    }

    /// Creates a resource as the client holding `token` and returns its id.
    pub async fn create_as(&self, token: &str, resource: &Value) -> String {
        let ty = resource_type(resource);
        created_id(&ty, self.post_as(token, &ty, resource).await).await
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// A client entry for the configuration, with the given plain token.
fn resource_type(resource: &Value) -> String {
    resource["resourceType"]
        .as_str()
        .expect("resourceType")
        .to_string()
}

/// The id of a resource the response says was created (201).
async fn created_id(ty: &str, r: reqwest::Response) -> String {
    assert_eq!(
        r.status(),
        201,
        "create {ty}: {}",
        r.text().await.unwrap_or_default()
    );
    let v: Value = r.json().await.expect("json");
    v["id"].as_str().expect("id").to_string()
}

pub fn client(id: &str, token: &str, scopes: &[&str]) -> ClientConfig {
    ClientConfig {
        id: id.into(),
        organization: Some(format!("Organization/{id}")),
        token_sha256: caregate_server::token_hash_hex(token),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        purposes: vec![],
        ..ClientConfig::default()
    }
}

pub fn shared(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(path)
}

/// The first OperationOutcome issue's expression, for asserting error locations.
pub fn first_expression(oo: &Value) -> String {
    oo["issue"][0]["expression"][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
