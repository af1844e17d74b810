//! TLS termination: rustls server config from PEM files, ALPN h2 and http/1.1.

use std::sync::Arc;

use crate::config::TlsFiles;
use crate::proxy::client::{load_certs, load_key, ClientBuildError};

pub fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ClientBuildError> {
    let certs = load_certs(&files.cert_file)?;
    let key = load_key(&files.key_file)?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}
