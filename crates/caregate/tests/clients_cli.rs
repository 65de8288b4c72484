//! `caregate clients add|list|remove` edits the configuration; the printed token works;
//! SMART keys and mutual-TLS certificates can be registered, and `list` shows how each
//! client authenticates.

use std::process::Command;

fn caregate(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_caregate"))
        .args(args)
        .output()
        .expect("run caregate");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A config file with only a listen address, in a folder of its own.
fn fresh_config() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("caregate.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:8080\"\n").expect("write config");
    (dir, config)
}

#[test]
fn add_list_remove() {
    let (_dir, config) = fresh_config();
    let path = config.to_str().expect("utf-8 path");
    let (code, out) = caregate(&[
        "clients",
        "add",
        "--config",
        path,
        "--id",
        "psych",
        "--organization",
        "Organization/psych",
        "--scope",
        "system/*.read",
        "--scope",
        "system/CarePlan.cruds",
        "--purpose",
        "TREAT",
    ]);
    assert_eq!(code, 0, "{out}");
    let token = out.lines().last().expect("token line").trim().to_string();
    assert_eq!(token.len(), 64);
    let text = std::fs::read_to_string(&config).expect("read config");
    assert!(!text.contains(&token), "only the hash is stored");
    let parsed = caregate_server::ServerConfig::from_toml(&text).expect("still a valid config");
    assert_eq!(parsed.clients.len(), 1);
    assert_eq!(
        parsed.clients[0].token_sha256,
        caregate_server::token_hash_hex(&token)
    );
    assert_eq!(
        caregate(&[
            "clients",
            "add",
            "--config",
            path,
            "--id",
            "psych",
            "--scope",
            "system/*.read"
        ])
        .0,
        2,
        "duplicate ids are refused"
    );
    assert_ne!(
        caregate(&[
            "clients",
            "add",
            "--config",
            path,
            "--id",
            "x",
            "--scope",
            "system/Nope.read"
        ])
        .0,
        0,
        "bad scopes are refused"
    );
    let (code, out) = caregate(&["clients", "list", "--config", path]);
    assert_eq!(code, 0);
    assert!(out.contains("psych\torganization=Organization/psych\tscopes=system/*.read system/CarePlan.cruds\tpurposes=TREAT"), "{out}");
    assert_eq!(
        caregate(&["clients", "remove", "--config", path, "--id", "psych"]).0,
        0
    );
    assert!(caregate(&["clients", "list", "--config", path])
        .1
        .contains("no clients registered"));
}

#[test]
fn smart_and_certificate_clients() {
    let (dir, config) = fresh_config();
    let path = config.to_str().expect("utf-8 path");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        r#"{"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}"#,
    )
    .expect("write jwks");
    let certs =
        caregate_server::tls::write_dev_certs(&dir.path().join("certs"), "lab").expect("dev certs");

    let (code, out) = caregate(&[
        "clients",
        "add",
        "--config",
        path,
        "--id",
        "hie",
        "--scope",
        "system/*.rs",
        "--jwks-url",
        "https://hie.example.org/jwks.json",
        "--jwks-file",
        jwks.to_str().expect("utf-8"),
        "--no-token",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no static bearer token"), "{out}");
    let (code, out) = caregate(&[
        "clients",
        "add",
        "--config",
        path,
        "--id",
        "lab",
        "--scope",
        "system/Observation.cruds",
        "--cert-file",
        certs.client_cert.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{out}");

    let parsed =
        caregate_server::ServerConfig::from_toml(&std::fs::read_to_string(&config).expect("read"))
            .expect("still a valid config");
    let hie = &parsed.clients[0];
    assert!(hie.token_sha256.is_empty());
    assert_eq!(
        hie.jwks_url.as_deref(),
        Some("https://hie.example.org/jwks.json")
    );
    assert!(hie.jwks.is_some());
    let lab = &parsed.clients[1];
    assert_eq!(
        lab.cert_sha256.as_deref(),
        Some(
            caregate_server::tls::certificate_sha256(&certs.client_cert)
                .expect("fingerprint")
                .as_str()
        )
    );
    assert_eq!(
        lab.token_sha256.len(),
        64,
        "a static token unless --no-token"
    );

    let (code, out) = caregate(&["clients", "list", "--config", path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("credentials=jwks,jwks_url=https://hie.example.org/jwks.json"),
        "{out}"
    );
    assert!(out.contains("credentials=token,cert="), "{out}");

    // A client with no credential at all is refused, and the file is unchanged.
    let before = std::fs::read_to_string(&config).expect("read");
    let (code, _) = caregate(&[
        "clients",
        "add",
        "--config",
        path,
        "--id",
        "ghost",
        "--scope",
        "system/*.rs",
        "--no-token",
    ]);
    assert_ne!(code, 0);
    assert_eq!(std::fs::read_to_string(&config).expect("read"), before);
}
