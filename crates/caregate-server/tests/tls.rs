//! HTTPS with mutual TLS: a client certificate from the configured CA is accepted, a client
//! without one is refused in the handshake; registered certificates identify clients.

use caregate_server::tls::{write_dev_certs, TlsConfig};
use caregate_server::{ClientConfig, ServerConfig};

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
    let (port, handle) = serve(&config);

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

/// Starts the server in the background: its port and the handle that stops it.
fn serve(config: &ServerConfig) -> (u16, actix_web::dev::ServerHandle) {
    let running = caregate_server::start(config).expect("server starts");
    let handle = running.handle.clone();
    tokio::spawn(running.server);
    (running.addr.port(), handle)
}

fn https_client(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).expect("ca")).expect("ca pem");
    let mut identity_pem = std::fs::read(cert).expect("client cert");
    identity_pem.extend(std::fs::read(key).expect("client key"));
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&identity_pem).expect("identity"))
        .build()
        .expect("client")
}

/// A certificate registered to a client (`cert_sha256`) authenticates as that client
/// without a bearer token; a certificate the CA issued but no client registered is 401;
/// a token over another client's certificate is 401.
#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_identify_registered_clients() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = caregate_server::tls::write_dev_certs_for(
        &dir.path().join("certs"),
        &["psych-ehr", "unregistered", "lab", "expired"],
        &["expired"],
    )
    .expect("dev certs");
    let fingerprint = |i: usize| {
        caregate_server::tls::certificate_sha256(&certs.clients[i].1).expect("fingerprint")
    };
    let psych_fp = fingerprint(0);
    // Written with colons, as `openssl x509 -fingerprint -sha256` prints it.
    let lab_fp = fingerprint(2)
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).expect("hex"))
        .collect::<Vec<_>>()
        .join(":")
        .to_uppercase();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data: dir.path().join("data"),
        workers: Some(1),
        tls: Some(TlsConfig {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            client_ca: Some(certs.ca.clone()),
        }),
        clients: vec![
            ClientConfig {
                id: "psych-ehr".into(),
                organization: Some("Organization/psych".into()),
                scopes: vec!["system/*.*".into()],
                cert_sha256: Some(psych_fp),
                ..ClientConfig::default()
            },
            ClientConfig {
                id: "lab".into(),
                scopes: vec!["system/Observation.rs".into()],
                cert_sha256: Some(lab_fp),
                token_sha256: caregate_server::token_hash_hex("lab-token"),
                ..ClientConfig::default()
            },
        ],
        ..ServerConfig::default()
    };
    let (port, handle) = serve(&config);
    let url = |path: &str| format!("https://localhost:{port}/{path}");

    let psych = https_client(&certs.ca, &certs.clients[0].1, &certs.clients[0].2);
    let r = psych
        .post(url("Patient"))
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType":"Patient","name":[{"family":"Mtls"}]}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 201, "the certificate alone authenticates");
    let id = r.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = psych
        .get(url(&format!("Patient/{id}")))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);

    // The lab's certificate maps to the lab and its scopes: no Patient reads.
    let lab = https_client(&certs.ca, &certs.clients[2].1, &certs.clients[2].2);
    let r = lab
        .get(url(&format!("Patient/{id}")))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 403);
    assert_eq!(
        lab.get(url("Observation"))
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
    // Its own token over its own certificate is fine; over the psychiatry EHR's
    // certificate it is refused.
    let r = lab
        .get(url("Observation"))
        .bearer_auth("lab-token")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let r = psych
        .get(url("Observation"))
        .bearer_auth("lab-token")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);

    // A certificate from another CA is refused in the handshake, registered or not.
    let elsewhere = caregate_server::tls::write_dev_certs(&dir.path().join("other"), "psych-ehr")
        .expect("other CA");
    let foreign = https_client(&certs.ca, &elsewhere.client_cert, &elsewhere.client_key);
    assert!(
        foreign.get(url("Patient")).send().await.is_err(),
        "a certificate from an unknown CA"
    );

    // An expired certificate from the right CA is refused in the handshake too.
    let expired = https_client(&certs.ca, &certs.clients[3].1, &certs.clients[3].2);
    assert!(
        expired.get(url("Patient")).send().await.is_err(),
        "an expired certificate"
    );

    // Verified by the CA, registered to nobody: 401 with an OperationOutcome.
    let stranger = https_client(&certs.ca, &certs.clients[1].1, &certs.clients[1].2);
    let r = stranger
        .get(url("Patient"))
        .send()
        .await
        .expect("handshake succeeds");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.expect("json")["resourceType"],
        "OperationOutcome"
    );
    handle.stop(true).await;
}

/// The SMART Backend Services flow over real TLS: the assertion's `aud` is the https token
/// URL, and the access token reads over the same connection type.
#[tokio::test(flavor = "multi_thread")]
async fn smart_backend_services_over_tls() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    use rustls::pki_types::pem::PemObject;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = write_dev_certs(&dir.path().join("certs"), "unused").expect("dev certs");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data: dir.path().join("data"),
        workers: Some(1),
        tls: Some(TlsConfig {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            client_ca: None,
        }),
        clients: vec![ClientConfig {
            id: "hie".into(),
            scopes: vec!["system/*.rs".into()],
            jwks: Some(serde_json::json!(std::fs::read_to_string(
                fixtures.join("smart-jwks.json")
            )
            .expect("jwks"))),
            ..ClientConfig::default()
        }],
        ..ServerConfig::default()
    };
    let (port, handle) = serve(&config);
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).expect("ca")).expect("ca pem");
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let token_url = format!("https://localhost:{port}/auth/token");

    let discovery: serde_json::Value = http
        .get(format!(
            "https://localhost:{port}/.well-known/smart-configuration"
        ))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(discovery["token_endpoint"], token_url.as_str());

    let key_der =
        rustls::pki_types::PrivatePkcs8KeyDer::from_pem_file(fixtures.join("smart-es384-key.pem"))
            .expect("pem");
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P384_SHA384_FIXED_SIGNING,
        key_der.secret_pkcs8_der(),
        &rng,
    )
    .expect("key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES384","kid":"es384-test","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(
            serde_json::json!({"iss": "hie", "sub": "hie", "aud": token_url,
                               "exp": now + 120, "jti": "tls-1"})
            .to_string()
        )
    );
    let sig = key.sign(&rng, message.as_bytes()).expect("sign");
    let assertion = format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .append_pair("client_assertion", &assertion)
        .append_pair("scope", "system/Patient.rs")
        .finish();
    let r = http
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("token request");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.expect("json");
    let token = body["access_token"].as_str().expect("token");
    let r = http
        .get(format!("https://localhost:{port}/Patient"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("https://localhost:{port}/Observation"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 403, "only Patient was granted");
    handle.stop(true).await;
}
