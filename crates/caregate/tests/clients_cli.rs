//! `caregate clients add|list|remove` edits the configuration; the printed token works.

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

#[test]
fn add_list_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("caregate.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:8080\"\n").expect("write config");
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
