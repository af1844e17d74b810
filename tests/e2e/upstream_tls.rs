//! Upstreams over https (system roots + `ca_file`, client certificates) and HTTP/2
//! upstreams (`h2 = true`, for gRPC): a real TLS server made in the test with a CA of its
//! own, reached through the real proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use crate::support::proxy::{server_section, TestProxy};
use crate::support::raw;

struct Pki {
    dir: tempfile::TempDir,
    ca_der: CertificateDer<'static>,
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
}

/// A CA, a server certificate for `localhost` and a client certificate, all from the CA;
/// PEM files `ca.pem`, `client.pem`, `client.key` in a temp dir (the proxy's side).
fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["portcullis-client".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
    Pki {
        dir,
        ca_der: ca_cert.der().clone(),
        server: (
            server_cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        ),
    }
}

/// A TLS upstream that requires a client certificate from the CA, and answers
/// `<version> <path> client-cert=<yes|no>`.
async fn tls_upstream(pki: &Pki) -> SocketAddr {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.0.clone()], pki.server.1.clone_key())
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let has_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = format!(
                        "{:?} {} client-cert={}",
                        req.version(),
                        req.uri().path(),
                        if has_cert { "yes" } else { "no" }
                    );
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(upstream: &str) -> String {
    format!(
        "{}\n{upstream}\n[[route]]\npath = \"/\"\nupstream = \"app\"\nauth = \"public\"\n",
        server_section("")
    )
}

#[tokio::test]
async fn https_upstream_with_custom_ca_and_client_certificate() {
    let pki = pki();
    let addr = tls_upstream(&pki).await;
    let d = pki.dir.path().display();
    let up = format!(
        "[[upstream]]\nname = \"app\"\nurl = \"https://localhost:{}\"\n\
         ca_file = \"{d}/ca.pem\"\nclient_cert_file = \"{d}/client.pem\"\nclient_key_file = \"{d}/client.key\"\n",
        addr.port()
    );
    let p = TestProxy::start(&config(&up)).await;
    let r = raw::get(p.addr, "/secure/path").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "HTTP/1.1 /secure/path client-cert=yes");
}

#[tokio::test]
async fn https_upstream_over_http2_when_h2_is_set() {
    let pki = pki();
    let addr = tls_upstream(&pki).await;
    let d = pki.dir.path().display();
    let up = format!(
        "[[upstream]]\nname = \"app\"\nurl = \"https://localhost:{}\"\nh2 = true\n\
         ca_file = \"{d}/ca.pem\"\nclient_cert_file = \"{d}/client.pem\"\nclient_key_file = \"{d}/client.key\"\n",
        addr.port()
    );
    let p = TestProxy::start(&config(&up)).await;
    let r = raw::get(p.addr, "/grpc.Service/Method").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "HTTP/2.0 /grpc.Service/Method client-cert=yes");
}

#[tokio::test]
async fn https_upstream_with_an_untrusted_certificate_is_502() {
    let pki = pki();
    let addr = tls_upstream(&pki).await;
    let d = pki.dir.path().display();
    // No ca_file: the test CA is not among the system roots.
    let up = format!(
        "[[upstream]]\nname = \"app\"\nurl = \"https://localhost:{}\"\n\
         client_cert_file = \"{d}/client.pem\"\nclient_key_file = \"{d}/client.key\"\n",
        addr.port()
    );
    let p = TestProxy::start(&config(&up)).await;
    let r = raw::get(p.addr, "/x").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
}

#[tokio::test]
async fn https_upstream_that_requires_a_client_certificate_refuses_the_proxy_without_one() {
    let pki = pki();
    let addr = tls_upstream(&pki).await;
    let d = pki.dir.path().display();
    let up = format!(
        "[[upstream]]\nname = \"app\"\nurl = \"https://localhost:{}\"\nca_file = \"{d}/ca.pem\"\n",
        addr.port()
    );
    let p = TestProxy::start(&config(&up)).await;
    let r = raw::get(p.addr, "/x").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
}

#[tokio::test]
async fn h2c_upstream_when_h2_is_set_on_plain_http() {
    // A plain-text upstream speaking HTTP/2 with prior knowledge (gRPC without TLS).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let body = format!("{:?} {}", req.version(), req.uri().path());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let up = format!("[[upstream]]\nname = \"app\"\nurl = \"http://{addr}\"\nh2 = true\n");
    let p = TestProxy::start(&config(&up)).await;
    let r = raw::get(p.addr, "/svc/Call").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "HTTP/2.0 /svc/Call");
}
