//! TLS termination: rustls server config from PEM files, ALPN h2 and http/1.1; client
//! certificates (for mTLS-bound tokens, RFC 8705) when `client_ca_file` is set.

use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{TlsClientAuth, TlsFiles};
use crate::proxy::client::{load_certs, load_key, ClientBuildError};
use crate::token::dpop::sha256_b64;

pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ClientBuildError> {
    let certs = load_certs(&files.cert_file)?;
    let key = load_key(&files.key_file)?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some((ca, auth)) => builder.with_client_cert_verifier(client_verifier(ca, *auth)?),
    };
    let mut cfg = builder.with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Client certificates chained to the CAs of `ca`; with `Optional`, a client may also
/// connect without one.
fn client_verifier(
    ca: &std::path::Path,
    auth: TlsClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c)?;
    }
    let builder = WebPkiClientVerifier::builder(Arc::new(roots));
    let builder = match auth {
        TlsClientAuth::Optional => builder.allow_unauthenticated(),
        TlsClientAuth::Required => builder,
    };
    builder.build().map_err(|e| ClientBuildError::ClientCa {
        path: ca.display().to_string(),
        reason: e.to_string(),
    })
}

/// RFC 8705 §3.1: base64url(SHA-256(DER)) of the client's (end-entity) certificate, the
/// value a token's `cnf.x5t#S256` must have. Made once per connection, after the
/// handshake; `None` when the client sent none.
pub fn client_thumbprint<IO>(s: &TlsStream<IO>) -> Option<Box<str>> {
    let cert = s.get_ref().1.peer_certificates()?.first()?;
    Some(sha256_b64(cert.as_ref()).into_boxed_str())
}
