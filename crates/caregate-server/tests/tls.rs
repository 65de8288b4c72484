//! HTTPS with mutual TLS: a client certificate from the configured CA is accepted, a client
//! without one is refused in the handshake.

use caregate_server::tls::{write_dev_certs, TlsConfig};
use caregate_server::ServerConfig;

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_accepts_known_clients_only() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = write_dev_certs(&dir.path().join("certs"), "psych-ehr").expect("dev certs");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data: dir.path().join("data"),
        workers: Some(1),
        tls: Some(TlsConfig {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            client_ca: Some(certs.ca.clone()),
        }),
        ..ServerConfig::default()
    };
    let running = caregate_server::start(&config).expect("server starts");
    let port = running.addr.port();
    let handle = running.handle.clone();
    tokio::spawn(running.server);

    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).expect("ca")).expect("ca pem");
    let mut identity_pem = std::fs::read(&certs.client_cert).expect("client cert");
    identity_pem.extend(std::fs::read(&certs.client_key).expect("client key"));
    let identity = reqwest::Identity::from_pem(&identity_pem).expect("identity");
    let with_cert = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .identity(identity)
        .build()
        .expect("client");
    let url = format!("https://localhost:{port}/metadata");
    let r = with_cert
        .get(&url)
        .send()
        .await
        .expect("mutual TLS handshake");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.expect("json")["resourceType"],
        "CapabilityStatement"
    );

    let without_cert = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    assert!(
        without_cert.get(&url).send().await.is_err(),
        "a client without a certificate is refused"
    );
    let plain = reqwest::Client::new();
    let over_plain_http = plain
        .get(format!("http://localhost:{port}/metadata"))
        .send()
        .await;
    assert!(
        !over_plain_http.is_ok_and(|r| r.status().is_success()),
        "plain HTTP is not served on the TLS port"
    );
    handle.stop(true).await;
}
