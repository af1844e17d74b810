//! TLS for the proxy's clients: the rustls client config of upstream pools
//! ([`super::pool`]) and of the provider transport, system trust roots, and PEM loaders
//! (shared with the server's TLS).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::path::Path;
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: no PEM certificate found")]
    NoCert { path: String },
    #[error("{path}: no PEM private key found")]
    NoKey { path: String },
    #[error("{0}: not a valid host name for TLS or a Host header")]
    InvalidHost(String),
    #[error("{path}: cannot verify client certificates with these CAs: {reason}")]
    ClientCa { path: String, reason: String },
    #[error("TLS client setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// The system's trust roots, loaded once per process (upstream and provider clients).
pub fn native_roots() -> &'static Vec<CertificateDer<'static>> {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let res = rustls_native_certs::load_native_certs();
        for e in &res.errors {
            tracing::warn!(error = %e, "could not load some system trust roots");
        }
        res.certs
    })
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientBuildError> {
    let data = std::fs::read(path).map_err(|source| ClientBuildError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(ClientBuildError::NoCert {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientBuildError> {
    let data = std::fs::read(path).map_err(|source| ClientBuildError::Read {
        path: path.display().to_string(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|_| ClientBuildError::NoKey {
        path: path.display().to_string(),
    })
}

/// rustls client config for an upstream (or provider): system roots plus an optional CA
/// file, an optional client certificate, and ALPN as the upstream speaks.
pub fn tls_client_config(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
    system_roots: bool,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    if system_roots {
        roots.add_parsable_certificates(native_roots().iter().cloned());
    }
    if let Some(ca) = ca_file {
        for c in load_certs(ca)? {
            roots.add(c)?;
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = match client_cert {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(cfg)
}
