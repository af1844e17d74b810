//! An HTTP client over hyper-util that never follows redirects: HTTP/1.1, h2c with prior
//! knowledge, and HTTP/2 over TLS (ALPN) to a self-signed certificate.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ReqBody = BoxBody<Bytes, BoxError>;

pub fn empty() -> ReqBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A response with its body read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// All values of header `name` in an echo answer (names compared case-insensitively).
pub fn echo_headers(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("echo headers")
        .iter()
        .filter(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|pair| pair[1].as_str().unwrap_or("").to_string())
        .collect()
}

pub fn echo_header(echo: &serde_json::Value, name: &str) -> Option<String> {
    echo_headers(echo, name).into_iter().next()
}

#[derive(Clone)]
pub struct Http {
    client: Inner,
}

#[derive(Clone)]
enum Inner {
    Plain(Client<HttpConnector, ReqBody>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, ReqBody>),
}

impl Inner {
    async fn request(
        &self,
        req: Request<ReqBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Inner::Plain(c) => c.request(req).await,
            Inner::Tls(c) => c.request(req).await,
        }
    }
}

/// A client certificate chain and its key.
pub type Identity = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

impl Http {
    /// HTTP/1.1, pooled.
    pub fn new() -> Http {
        Http {
            client: Inner::Plain(Client::builder(TokioExecutor::new()).build_http()),
        }
    }

    /// HTTP/2 over cleartext with prior knowledge (h2c).
    pub fn h2c() -> Http {
        Http {
            client: Inner::Plain(
                Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build_http(),
            ),
        }
    }

    /// HTTP/1.1 over TLS (plain http too), trusting only `ca_der`, presenting `identity`
    /// as the client certificate when given. Pooled: one client, one certificate.
    pub fn tls(ca_der: &[u8], identity: Option<Identity>) -> Http {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let cfg = match identity {
            Some((certs, key)) => builder.with_client_auth_cert(certs, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_or_http()
            .enable_http1()
            .build();
        Http {
            client: Inner::Tls(Client::builder(TokioExecutor::new()).build(connector)),
        }
    }

    pub async fn send(&self, req: Request<ReqBody>) -> Result<Resp, String> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&self, url: &str) -> Resp {
        self.send(Request::get(url).body(empty()).unwrap())
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// Sends and returns the response head with the body still streaming.
    pub async fn send_streaming(
        &self,
        req: Request<ReqBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.client.request(req).await.map_err(|e| format!("{e:?}"))
    }
}

/// A request body of `total` bytes in 64 KiB chunks, produced on demand (nothing buffered).
pub struct Generated {
    remaining: u64,
    chunk: Bytes,
}

impl Generated {
    pub fn new(total: u64) -> Self {
        Generated {
            remaining: total,
            chunk: Bytes::from(vec![b'u'; 64 * 1024]),
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = this.remaining.min(this.chunk.len() as u64) as usize;
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// One HTTP/2 connection over TLS to `addr`, trusting only `ca_der`; returns the sender
/// and the ALPN protocol the server chose.
pub async fn h2_tls(
    addr: SocketAddr,
    server_name: &str,
    ca_der: Vec<u8>,
) -> (
    hyper::client::conn::http2::SendRequest<ReqBody>,
    Option<Vec<u8>>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, alpn)
}

/// Reads a streamed response body to the end, counting bytes.
pub async fn drain_count(body: hyper::body::Incoming) -> Result<u64, String> {
    let mut body = body;
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| format!("{e:?}"))?;
        if let Some(d) = f.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

/// One h2c (prior knowledge) connection to `addr`, whatever host the request URIs name.
pub async fn h2c_conn(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ReqBody> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends on an HTTP/2 connection and reads the whole response.
pub async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<ReqBody>,
    req: Request<ReqBody>,
) -> Result<Resp, String> {
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}
