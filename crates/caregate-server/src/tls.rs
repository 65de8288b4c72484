//! TLS (rustls; TLS 1.2 and 1.3 only, ring as the one crypto provider) and optional mutual
//! TLS, plus development certificates (`caregate dev-certs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[tls]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate they issued
    /// (mutual TLS); unknown or expired certificates are refused in the handshake.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("TLS: {0}")]
    Config(String),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(read("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The rustls server configuration for a `[tls]` section.
pub fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| TlsError::Read {
        path: tls.key.display().to_string(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("server certificate: {e}")))
}

/// Files written by [`write_dev_certs`].
pub struct DevCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Every client certificate written: (name, certificate, key), the first being
    /// `client_cert`/`client_key`.
    pub clients: Vec<(String, PathBuf, PathBuf)>,
}

/// A local CA, a server certificate for localhost/127.0.0.1 and one client certificate
/// (named `client_name`), all signed by the CA, as PEM files in `dir`. For development
/// and tests only.
pub fn write_dev_certs(dir: &Path, client_name: &str) -> Result<DevCerts, TlsError> {
    write_dev_certs_for(dir, &[client_name], &[])
}

/// As [`write_dev_certs`], with one client certificate per name (at least one), all from
/// the same CA. The certificates of the names in `expired` expired in 2020 (for testing
/// that the handshake refuses them).
pub fn write_dev_certs_for(
    dir: &Path,
    client_names: &[&str],
    expired: &[&str],
) -> Result<DevCerts, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let err = |e: rcgen::Error| TlsError::Config(format!("generating certificates: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| TlsError::Read {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "caregate development CA");
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(err)?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "caregate");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().map_err(err)?;
    let server_cert = server_params.signed_by(&server_key, &issuer).map_err(err)?;

    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let mut clients = Vec::new();
    for name in client_names {
        let mut client_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, *name);
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired.contains(name) {
            client_params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            client_params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let client_key = KeyPair::generate().map_err(err)?;
        let client_cert = client_params.signed_by(&client_key, &issuer).map_err(err)?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        write(&cert_path, client_cert.pem())?;
        write(&key_path, client_key.serialize_pem())?;
        clients.push((name.to_string(), cert_path, key_path));
    }
    let (_, client_cert, client_key) = clients
        .first()
        .cloned()
        .ok_or_else(|| TlsError::Config("at least one client certificate name".into()))?;
    let files = DevCerts {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert,
        client_key,
        clients,
    };
    write(&files.ca, ca_cert.pem())?;
    write(&files.server_cert, server_cert.pem())?;
    write(&files.server_key, server_key.serialize_pem())?;
    Ok(files)
}

/// SHA-256 (hex) of the first certificate in a PEM file: the `cert_sha256` that registers
/// it as a client's mutual-TLS identity.
pub fn certificate_sha256(path: &Path) -> Result<String, TlsError> {
    use sha2::{Digest, Sha256};
    let chain = certs(path)?;
    // `certs` refuses files without a certificate.
    Ok(chain
        .first()
        .map(|c| hex::encode(Sha256::digest(c.as_ref())))
        .unwrap_or_default())
}

/// The client certificate a mutual-TLS connection presented and the handshake verified
/// against `client_ca`, kept in the connection's data (`HttpRequest::conn_data`).
#[derive(Debug, Clone, Copy)]
pub struct PeerCertificate {
    /// SHA-256 of the end-entity certificate (DER), matched against `cert_sha256`.
    pub sha256: [u8; 32],
}

/// `HttpServer::on_connect`: records the verified client certificate of a TLS connection.
/// Plain TCP connections and TLS connections without a client certificate record nothing.
pub fn on_connect(connection: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    use sha2::{Digest, Sha256};
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(stream) = connection.downcast_ref::<Tls>() {
        let (_, session) = stream.get_ref();
        if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
            data.insert(PeerCertificate {
                sha256: Sha256::digest(cert.as_ref()).into(),
            });
        }
    }
}
