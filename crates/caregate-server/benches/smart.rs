//! SMART Backend Services costs: verifying a gateway access token (paid on every request
//! that carries one) and a whole token request with an RS384 or ES384 client assertion
//! (signature check, claims, replay cache, scope intersection, token minting).
//!
//!     cargo bench -p caregate-server --bench smart
//!
//! Single-threaded; the HTTP layer is not involved. Keys are the test fixtures.

use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use caregate_server::smart::{AccessClaims, SmartService, TokenKey, TokenRequest};
use caregate_server::{ClientConfig, ClientRegistry, ServerConfig, SmartConfig};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde_json::json;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn jwt(alg: &str, kid: &str, jti: usize, sign: &dyn Fn(&[u8]) -> Vec<u8>) -> String {
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let claims = json!({"iss": "hie", "sub": "hie", "aud": "https://gw.example.org/auth/token",
                        "exp": now() + 240, "jti": format!("{alg}-{jti}")});
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = sign(message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn main() {
    let key = std::sync::Arc::new(TokenKey::new(&[3u8; 32]));
    let client = ClientConfig {
        id: "hie".into(),
        organization: Some("Organization/hie".into()),
        scopes: vec!["system/*.read".into(), "system/CarePlan.cruds".into()],
        jwks: Some(json!(
            std::fs::read_to_string(fixture("smart-jwks.json")).expect("fixture jwks")
        )),
        ..ClientConfig::default()
    };
    let config = ServerConfig {
        clients: vec![client.clone()],
        smart: Some(SmartConfig::default()),
        ..ServerConfig::default()
    };

    // 1. Access-token verification, as every authenticated request does it.
    let registry = ClientRegistry::new(&[client])
        .expect("registry")
        .with_token_key(key.clone());
    let header = format!(
        "Bearer {}",
        key.sign(&AccessClaims {
            sub: "hie".into(),
            scope: "system/*.read system/CarePlan.cruds".into(),
            exp: now() + 300,
            purpose_of_use: Some("TREAT".into()),
            practitioner: None,
        })
    );
    let n = 200_000;
    let started = Instant::now();
    for _ in 0..n {
        let caller = registry
            .authenticate(Some(&header), None)
            .expect("valid token");
        std::hint::black_box(caller);
    }
    let per = started.elapsed().as_secs_f64() / n as f64;
    println!(
        "access token verify: {:.2} µs/request ({:.0}/s)",
        per * 1e6,
        1.0 / per
    );

    // 2. Token requests.
    let service = SmartService::new(&config, key).expect("service");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rng = SystemRandom::new();
    let rsa = RsaKeyPair::from_pkcs8(
        PrivatePkcs8KeyDer::from_pem_file(fixture("smart-rs384-key.pem"))
            .expect("pem")
            .secret_pkcs8_der(),
    )
    .expect("rsa");
    let ec = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        PrivatePkcs8KeyDer::from_pem_file(fixture("smart-es384-key.pem"))
            .expect("pem")
            .secret_pkcs8_der(),
        &rng,
    )
    .expect("ec");
    let sign_rsa = |m: &[u8]| {
        let mut sig = vec![0; rsa.public().modulus_len()];
        rsa.sign(&signature::RSA_PKCS1_SHA384, &rng, m, &mut sig)
            .expect("sign");
        sig
    };
    let sign_ec = |m: &[u8]| ec.sign(&rng, m).expect("sign").as_ref().to_vec();
    let rounds = 2_000;
    for (alg, kid, sign) in [
        (
            "RS384",
            "rs384-test",
            &sign_rsa as &dyn Fn(&[u8]) -> Vec<u8>,
        ),
        ("ES384", "es384-test", &sign_ec),
    ] {
        // Assertions are signed up front: only the gateway's side is timed.
        let assertions: Vec<String> = (0..rounds).map(|i| jwt(alg, kid, i, sign)).collect();
        let started = Instant::now();
        for a in &assertions {
            let form = vec![
                ("grant_type".to_string(), "client_credentials".to_string()),
                (
                    "client_assertion_type".to_string(),
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string(),
                ),
                ("client_assertion".to_string(), a.clone()),
                ("scope".to_string(), "system/*.read".to_string()),
            ];
            let granted = runtime
                .block_on(service.token(&TokenRequest {
                    form: &form,
                    token_url: "https://gw.example.org/auth/token",
                }))
                .expect("token granted");
            std::hint::black_box(granted);
        }
        let per = started.elapsed().as_secs_f64() / rounds as f64;
        println!(
            "token request {alg}: {:.1} µs/request ({:.0}/s)",
            per * 1e6,
            1.0 / per
        );
    }
}
