//! SMART Backend Services end to end: discovery, the token endpoint with RS384 and ES384
//! client assertions (test keys in `tests/fixtures`), every assertion check, scope
//! intersection, access tokens at the REST API (expiry, scopes, purpose of use reaching the
//! consent decision) and keys fetched from a client's `jwks_url`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use caregate_server::smart::{AccessClaims, TokenKey};
use caregate_server::{ClientConfig, SmartConfig};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde_json::{json, Value};
use support::{client, TestServer};

const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct Key {
    signer: Signer,
    kid: String,
}

impl Key {
    fn rs384() -> Key {
        let der = PrivatePkcs8KeyDer::from_pem_file(fixture("smart-rs384-key.pem")).expect("pem");
        Key {
            signer: Signer::Rsa(RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("rsa")),
            kid: "rs384-test".into(),
        }
    }

    fn es384() -> Key {
        let der = PrivatePkcs8KeyDer::from_pem_file(fixture("smart-es384-key.pem")).expect("pem");
        Key {
            signer: Signer::Ec(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    der.secret_pkcs8_der(),
                    &SystemRandom::new(),
                )
                .expect("ec"),
            ),
            kid: "es384-test".into(),
        }
    }

    /// A fresh P-384 key (not registered anywhere), named `kid`.
    fn fresh_es384(kid: &str) -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .expect("generate");
        Key {
            signer: Signer::Ec(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                )
                .expect("ec"),
            ),
            kid: kid.into(),
        }
    }

    /// The public JWK (EC keys only; the RSA one is in the fixture JWKS).
    fn public_jwk(&self) -> Value {
        let Signer::Ec(k) = &self.signer else {
            panic!("EC keys only")
        };
        let point = k.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-384", "kid": self.kid,
               "x": URL_SAFE_NO_PAD.encode(&point[1..49]), "y": URL_SAFE_NO_PAD.encode(&point[49..])})
    }

    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Rsa(_) => "RS384",
            Signer::Ec(_) => "ES384",
        }
    }

    fn sign_jwt(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA384,
                    &rng,
                    message.as_bytes(),
                    &mut sig,
                )
                .expect("sign");
                sig
            }
            Signer::Ec(k) => k
                .sign(&rng, message.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
        };
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn assertion(&self, claims: &Value) -> String {
        self.sign_jwt(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Valid assertion claims for `client` at the server's token URL.
fn claims(s: &TestServer, client: &str) -> Value {
    json!({
        "iss": client, "sub": client, "aud": s.url("auth/token"),
        "exp": now() + 240, "jti": uuid::Uuid::new_v4().to_string()
    })
}

async fn token_request(s: &TestServer, params: &[(&str, &str)]) -> (u16, Value) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let r = s
        .http
        .post(s.url("auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn request_token(s: &TestServer, assertion: &str, scope: &str) -> (u16, Value) {
    request_token_with(s, assertion, scope, &[]).await
}

/// A client-credentials token request with `extra` form parameters (purpose of use,
/// practitioner).
async fn request_token_with(
    s: &TestServer,
    assertion: &str,
    scope: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut params = vec![
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
        ("scope", scope),
    ];
    params.extend_from_slice(extra);
    token_request(s, &params).await
}

/// An access token for `client` signed with `key`, asserting the requested scope.
async fn access_token(s: &TestServer, key: &Key, client: &str, scope: &str) -> String {
    let (status, body) = request_token(s, &key.assertion(&claims(s, client)), scope).await;
    assert_eq!(status, 200, "token request: {body}");
    body["access_token"].as_str().expect("token").to_string()
}

fn smart_client(id: &str, scopes: &[&str]) -> ClientConfig {
    ClientConfig {
        id: id.into(),
        organization: Some(format!("Organization/{id}")),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        jwks: Some(json!(
            std::fs::read_to_string(fixture("smart-jwks.json")).expect("fixture jwks")
        )),
        ..ClientConfig::default()
    }
}

async fn smart_server(extra: impl FnOnce(&mut caregate_server::ServerConfig)) -> TestServer {
    TestServer::start_with(|c| {
        c.clients = vec![
            client(
                "loader",
                "loader-token",
                &["system/*.*", "system/Consent.cud"],
            ),
            smart_client("hie", &["system/*.read", "system/CarePlan.cruds"]),
            client("auditor", "auditor-token", &["system/AuditEvent.rs"]),
        ];
        c.smart = Some(SmartConfig {
            token_secret: Some(SECRET.into()),
            ..SmartConfig::default()
        });
        extra(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn rs384_and_es384_assertions_get_tokens_that_work() {
    let s = smart_server(|_| {}).await;
    let config = s.get_json(".well-known/smart-configuration").await;
    assert_eq!(config["token_endpoint"], s.url("auth/token"));
    assert_eq!(
        config["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert_eq!(
        config["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
    assert_eq!(
        config["grant_types_supported"],
        json!(["client_credentials"])
    );
    assert!(config["capabilities"]
        .as_array()
        .expect("capabilities")
        .contains(&json!("client-confidential-asymmetric")));
    let metadata = s.get_json("metadata").await;
    let security = &metadata["rest"][0]["security"];
    assert_eq!(
        security["extension"][0]["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(
        security["extension"][0]["extension"][0]["valueUri"],
        s.url("auth/token")
    );
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");

    let pid = s
        .create_as(
            "loader-token",
            &json!({"resourceType": "Patient", "name": [{"family": "Smart"}]}),
        )
        .await;

    for key in [Key::rs384(), Key::es384()] {
        let (status, body) =
            request_token(&s, &key.assertion(&claims(&s, "hie")), "system/*.read").await;
        assert_eq!(status, 200, "{}: {body}", key.alg());
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["scope"], "system/*.read");
        let expires_in = body["expires_in"].as_i64().expect("expires_in");
        assert!(expires_in > 0 && expires_in <= 300);
        let token = body["access_token"].as_str().expect("token");
        let r = s.get_as(token, &format!("Patient/{pid}")).await;
        assert_eq!(r.status(), 200, "{} token reads", key.alg());
        // Read scopes do not create: 403 from the pipeline's scope check.
        let r = s
            .post_as(token, "Patient", &json!({"resourceType": "Patient"}))
            .await;
        assert_eq!(r.status(), 403);
    }
    // Each issued token is on the audit trail: who got it, with which scopes.
    let r = s
        .get_as("auditor-token", "AuditEvent?agent=hie&subtype=operation")
        .await;
    assert_eq!(r.status(), 200);
    let trail: Value = r.json().await.expect("json");
    let issued: Vec<&Value> = trail["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["resource"]["entity"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["role"]["code"] == "24")
        })
        .collect();
    assert_eq!(issued.len(), 2, "{trail}");
    assert_eq!(issued[0]["resource"]["outcome"], "0");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_assertions_are_refused() {
    let s = smart_server(|_| {}).await;
    let es = Key::es384();
    let scope = "system/*.read";
    let invalid_client = |(status, body): (u16, Value), what: &str| {
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_client", "{what}: {body}");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}"
        );
    };

    let mut c = claims(&s, "hie");
    c["exp"] = json!(now() - 120);
    invalid_client(request_token(&s, &es.assertion(&c), scope).await, "expired");

    let mut c = claims(&s, "hie");
    c["exp"] = json!(now() + 3600);
    invalid_client(
        request_token(&s, &es.assertion(&c), scope).await,
        "exp too far ahead",
    );

    for extreme in [
        json!(i64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!("soon"),
    ] {
        let mut c = claims(&s, "hie");
        c["exp"] = extreme;
        invalid_client(
            request_token(&s, &es.assertion(&c), scope).await,
            "extreme exp",
        );
    }

    let mut c = claims(&s, "hie");
    c.as_object_mut().expect("object").remove("exp");
    invalid_client(request_token(&s, &es.assertion(&c), scope).await, "no exp");

    let mut c = claims(&s, "hie");
    c["aud"] = json!("https://elsewhere.example.org/auth/token");
    invalid_client(
        request_token(&s, &es.assertion(&c), scope).await,
        "wrong aud",
    );

    let mut c = claims(&s, "hie");
    c["sub"] = json!("loader");
    invalid_client(
        request_token(&s, &es.assertion(&c), scope).await,
        "iss != sub",
    );

    let mut c = claims(&s, "hie");
    c.as_object_mut().expect("object").remove("jti");
    invalid_client(request_token(&s, &es.assertion(&c), scope).await, "no jti");

    // The same assertion twice: the second is a replay.
    let once = es.assertion(&claims(&s, "hie"));
    assert_eq!(request_token(&s, &once, scope).await.0, 200);
    invalid_client(request_token(&s, &once, scope).await, "replayed jti");

    // A key the client never registered, under an unknown kid and under a registered one.
    let stranger = Key::fresh_es384("stranger");
    invalid_client(
        request_token(&s, &stranger.assertion(&claims(&s, "hie")), scope).await,
        "unknown kid",
    );
    let impostor = Key::fresh_es384("es384-test");
    invalid_client(
        request_token(&s, &impostor.assertion(&claims(&s, "hie")), scope).await,
        "wrong key for the kid",
    );
    // The RSA key's kid with an EC signature; an unregistered client; alg none / HS256.
    let mismatched = es.sign_jwt(
        &json!({"alg": "ES384", "kid": "rs384-test", "typ": "JWT"}),
        &claims(&s, "hie"),
    );
    invalid_client(
        request_token(&s, &mismatched, scope).await,
        "alg/kid mismatch",
    );
    invalid_client(
        request_token(&s, &es.assertion(&claims(&s, "nobody")), scope).await,
        "unknown client",
    );
    for alg in ["none", "HS256", "RS256"] {
        let forged = es.sign_jwt(
            &json!({"alg": alg, "kid": "es384-test", "typ": "JWT"}),
            &claims(&s, "hie"),
        );
        invalid_client(request_token(&s, &forged, scope).await, alg);
    }
    invalid_client(
        request_token(&s, "not.a.jwt", scope).await,
        "malformed assertion",
    );

    // RFC 6749 error codes for the request itself.
    let (status, body) = token_request(
        &s,
        &[
            ("grant_type", "password"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &es.assertion(&claims(&s, "hie"))),
            ("scope", scope),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (status, body) = token_request(
        &s,
        &[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &es.assertion(&claims(&s, "hie"))),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = token_request(
        &s,
        &[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &es.assertion(&claims(&s, "hie"))),
            ("scope", "system/Patient.rs"),
            ("scope", "system/*.*"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "repeated parameter"
    );
    let (status, body) =
        request_token(&s, &es.assertion(&claims(&s, "hie")), "system/Patient.c").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn granted_scopes_are_the_intersection() {
    let s = smart_server(|_| {}).await;
    let es = Key::es384();
    let (status, body) = request_token(
        &s,
        &es.assertion(&claims(&s, "hie")),
        "system/Patient.cruds system/CarePlan.write system/AuditEvent.rs openid",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Patient narrowed to the registered read letters; CarePlan.write fully covered keeps
    // its v1 spelling; the wildcard registration does not reach AuditEvent.
    assert_eq!(body["scope"], "system/Patient.rs system/CarePlan.write");
    let token = body["access_token"].as_str().expect("token");
    let plan = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
                      "subject": {"reference": "Patient/nobody"}});
    let r = s.post_as(token, "CarePlan", &plan).await;
    assert_ne!(r.status(), 403, "CarePlan.write was granted");
    let r = s
        .post_as(token, "Patient", &json!({"resourceType": "Patient"}))
        .await;
    assert_eq!(r.status(), 403, "Patient create was not granted");
    assert_eq!(s.get_as(token, "Patient").await.status(), 200);
    assert_eq!(s.get_as(token, "Observation").await.status(), 403);
    assert_eq!(s.get_as(token, "AuditEvent").await.status(), 403);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn access_tokens_expire_and_cannot_be_forged() {
    let s = smart_server(|_| {}).await;
    let key = TokenKey::new(&hex::decode(SECRET).expect("hex"));
    let claims = |exp: i64| AccessClaims {
        sub: "hie".into(),
        scope: "system/*.read".into(),
        exp,
        purpose_of_use: None,
        practitioner: None,
    };
    let r = s.get_as(&key.sign(&claims(now() + 60)), "Patient").await;
    assert_eq!(
        r.status(),
        200,
        "a token from any node with the secret works"
    );
    let r = s.get_as(&key.sign(&claims(now() - 1)), "Patient").await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let oo: Value = r.json().await.expect("json");
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .is_some_and(|d| d.contains("expired")));
    let other = TokenKey::new(&[9u8; 32]);
    let r = s.get_as(&other.sign(&claims(now() + 60)), "Patient").await;
    assert_eq!(r.status(), 401, "a token signed with another secret");
    // A token for a client no longer registered.
    let gone = AccessClaims {
        sub: "removed".into(),
        ..claims(now() + 60)
    };
    assert_eq!(s.get_as(&key.sign(&gone), "Patient").await.status(), 401);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn purpose_of_use_in_the_token_reaches_consent() {
    let s = smart_server(|c| {
        c.clients[1].purposes = vec!["TREAT".into(), "HPAYMT".into()];
    })
    .await;
    // Only the HIE, only for treatment.
    let cid = condition_shared_only_with(
        &s,
        "Organization/hie",
        json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]),
    )
    .await;

    let es = Key::es384();
    let token_for = |purpose: Option<&'static str>| {
        let assertion = es.assertion(&claims(&s, "hie"));
        let s = &s;
        async move {
            let extra: Vec<(&str, &str)> =
                purpose.map(|p| ("purpose_of_use", p)).into_iter().collect();
            request_token_with(s, &assertion, "system/*.read", &extra).await
        }
    };
    let (status, treat) = token_for(Some("TREAT")).await;
    assert_eq!(status, 200, "{treat}");
    let treat = treat["access_token"].as_str().expect("token").to_string();
    let (_, none) = token_for(None).await;
    let none = none["access_token"].as_str().expect("token").to_string();
    let (_, payment) = token_for(Some("HPAYMT")).await;
    let payment = payment["access_token"].as_str().expect("token").to_string();

    let read = format!("Condition/{cid}");
    assert_eq!(s.get_as(&treat, &read).await.status(), 200);
    assert_eq!(
        s.get_as(&none, &read).await.status(),
        404,
        "no purpose: hidden"
    );
    assert_eq!(
        s.get_as(&payment, &read).await.status(),
        404,
        "payment: hidden"
    );
    // The header may repeat the token's purpose but not change it.
    let r = s
        .http
        .get(s.url(&read))
        .bearer_auth(&payment)
        .header("x-purpose-of-use", "TREAT")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 403);
    // A purpose the client is not registered for is refused at the token endpoint.
    let (status, body) = token_for(Some("ETREAT")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    s.stop().await;
}

/// A Patient with one Condition, and a Consent that denies everything but access by
/// `actor` (for the given `purpose` codings, or any purpose when empty). Returns the
/// Condition's id.
async fn condition_shared_only_with(s: &TestServer, actor: &str, purpose: Value) -> String {
    let pid = s
        .create_as(
            "loader-token",
            &json!({"resourceType": "Patient", "name": [{"family": "Consenting"}]}),
        )
        .await;
    let patient = format!("Patient/{pid}");
    let cid = s.create_as("loader-token", &json!({"resourceType": "Condition",
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                    "code": {"text": "asthma"}, "subject": {"reference": patient}})).await;
    let mut permit = json!({"type": "permit",
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                   "reference": {"reference": actor}}],
        "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}]});
    if purpose.as_array().is_some_and(|p| !p.is_empty()) {
        permit["purpose"] = purpose;
    }
    let consent = json!({
        "resourceType": "Consent", "status": "active", "dateTime": "2024-01-01",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "patient": {"reference": patient},
        "provision": {"type": "deny", "provision": [permit]}
    });
    let r = s.post_as("loader-token", "Consent", &consent).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    cid
}

#[tokio::test(flavor = "multi_thread")]
async fn the_acting_practitioner_in_the_token_reaches_consent() {
    let s = smart_server(|_| {}).await;
    let cid = condition_shared_only_with(&s, "Practitioner/dr-lee", json!([])).await;
    let es = Key::es384();
    let token = |practitioner: &'static str| {
        let assertion = es.assertion(&claims(&s, "hie"));
        let s = &s;
        async move {
            let extra: Vec<(&str, &str)> = (!practitioner.is_empty())
                .then_some(("practitioner", practitioner))
                .into_iter()
                .collect();
            request_token_with(s, &assertion, "system/*.read", &extra).await
        }
    };
    let read = format!("Condition/{cid}");
    let (status, body) = token("Practitioner/dr-lee").await;
    assert_eq!(status, 200, "{body}");
    let lee = body["access_token"].as_str().expect("token").to_string();
    assert_eq!(s.get_as(&lee, &read).await.status(), 200);
    let (_, body) = token("Practitioner/dr-other").await;
    let other = body["access_token"].as_str().expect("token").to_string();
    assert_eq!(s.get_as(&other, &read).await.status(), 404);
    let (_, body) = token("").await;
    let nobody = body["access_token"].as_str().expect("token").to_string();
    assert_eq!(s.get_as(&nobody, &read).await.status(), 404);
    let (status, body) = token("Patient/dr-lee").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    s.stop().await;
}

/// A tiny HTTP server answering every request with the current JWKS, counting requests.
async fn jwks_host(jwks: Arc<Mutex<Value>>, hits: Arc<AtomicUsize>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let jwks = jwks.clone();
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let body = jwks.lock().expect("lock").to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/jwks.json")
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_url_is_fetched_cached_and_refetched_for_a_new_kid() {
    let first = Key::fresh_es384("k1");
    let second = Key::fresh_es384("k2");
    let jwks = Arc::new(Mutex::new(json!({"keys": [first.public_jwk()]})));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = jwks_host(jwks.clone(), hits.clone()).await;
    let s = TestServer::start_with(|c| {
        c.clients = vec![ClientConfig {
            id: "remote".into(),
            scopes: vec!["system/*.read".into()],
            jwks_url: Some(url),
            ..ClientConfig::default()
        }];
        c.smart = Some(SmartConfig {
            token_secret: Some(SECRET.into()),
            jwks_min_refetch_secs: Some(0),
            ..SmartConfig::default()
        });
    })
    .await;
    let token = access_token(&s, &first, "remote", "system/*.read").await;
    assert_eq!(s.get_as(&token, "Patient").await.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    access_token(&s, &first, "remote", "system/*.read").await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the key set is cached");
    // The client rotates in a new key: the unknown kid triggers one refetch.
    jwks.lock()
        .expect("lock")
        .as_object_mut()
        .expect("object")
        .insert(
            "keys".into(),
            json!([first.public_jwk(), second.public_jwk()]),
        );
    access_token(&s, &second, "remote", "system/*.read").await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // A kid the host does not publish: refetched, still unknown → invalid_client.
    let stranger = Key::fresh_es384("k3");
    let (status, body) = request_token(
        &s,
        &stranger.assertion(&claims(&s, "remote")),
        "system/*.read",
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client"))
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    s.stop().await;
}
