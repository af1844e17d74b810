//! The one transport seam for calls to the provider (discovery, JWKS, token,
//! introspection, userinfo): our own hyper-util client over rustls (aws-lc-rs), a timeout
//! on the whole call, a cap on the response size, and no redirects followed. Each call
//! names its issuer and endpoint ([`Call`]): with [`Telemetry`] attached it is timed into
//! the provider histograms and, while tracing, gets a client span whose id the provider
//! is sent in `traceparent`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use crate::admin::provider::Endpoint;
use crate::telemetry::provider::ProviderCall;
use crate::telemetry::Telemetry;

/// What a provider call is, for its histogram and span: the issuer it belongs to and the
/// endpoint it goes to.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub issuer: &'a str,
    pub endpoint: Endpoint,
}

impl<'a> Call<'a> {
    pub fn new(issuer: &'a str, endpoint: Endpoint) -> Call<'a> {
        Call { issuer, endpoint }
    }
}

/// Default cap on a provider response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// How to build a [`HttpTransport`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Applies to each whole call: connect, TLS, request and reading the body.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) trusted for the provider, beside the system roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// A provider response, body read in full (up to the size cap).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a provider call failed. Display never includes secrets, tokens or bodies.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid provider URL")]
    InvalidUrl,
    #[error("plain http is only allowed to a loopback address (provider URL must be https)")]
    InsecureScheme,
    #[error("provider call timed out after {0:?}")]
    Timeout(Duration),
    #[error("provider connection failed")]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("reading the provider response failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("provider response larger than {0} bytes")]
    TooLarge(usize),
    #[error("building the request failed")]
    Request(#[source] http::Error),
    #[error("loading CA certificates from {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("a request header value is not valid")]
    InvalidHeader,
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("the issuer's token_file")]
    Credential(#[source] Box<super::credential::CredentialError>),
}

impl From<super::credential::CredentialError> for TransportError {
    fn from(e: super::credential::CredentialError) -> Self {
        TransportError::Credential(Box::new(e))
    }
}

/// Calls to the provider. Cheap to clone (the client pool is shared).
#[derive(Clone)]
pub struct HttpTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
    user_agent: HeaderValue,
    /// Histograms and spans of the calls (none for the OTLP exporter's own client).
    telemetry: Option<Arc<Telemetry>>,
}

impl fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport")
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// Builds the client: system roots (rustls-native-certs) plus `ca_file`, rustls on
    /// aws-lc-rs, HTTP/1.1 and HTTP/2 by ALPN.
    pub fn new(config: TransportConfig) -> Result<Self, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        // A system store may hold a few certificates rustls cannot parse; skip them.
        roots.add_parsable_certificates(crate::proxy::client::native_roots().iter().cloned());
        if let Some(path) = &config.ca_file {
            let certs =
                crate::proxy::client::load_certs(path).map_err(|e| TransportError::CaFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            for cert in certs {
                roots.add(cert).map_err(|e| TransportError::CaFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        if roots.is_empty() {
            // Only plain-http loopback providers can be reached; every https call will fail
            // certificate verification (fail closed).
            tracing::warn!("no trusted root certificates: system store empty and no ca_file");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TransportError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(8)
            .build(connector);
        Ok(Self {
            client,
            timeout: config.timeout,
            max_body: DEFAULT_MAX_RESPONSE_BYTES,
            user_agent: HeaderValue::from_static(concat!("portcullis/", env!("CARGO_PKG_VERSION"))),
            telemetry: None,
        })
    }

    /// Times (and while tracing, traces) every call into `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Changes the response size cap (default 1 MiB).
    pub fn with_max_response_bytes(mut self, max: usize) -> Self {
        self.max_body = max;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET url` with `Accept: application/json`.
    pub async fn get(&self, call: Call<'_>, url: &str) -> Result<Response, TransportError> {
        self.get_with_bearer(call, url, None).await
    }

    /// `GET url`, optionally with `Authorization: Bearer <token>` (userinfo).
    pub async fn get_with_bearer(
        &self,
        call: Call<'_>,
        url: &str,
        bearer: Option<&str>,
    ) -> Result<Response, TransportError> {
        let uri = checked_uri(url)?;
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(ACCEPT, "application/json")
            .header(http::header::USER_AGENT, self.user_agent.clone());
        if let Some(token) = bearer {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| TransportError::InvalidHeader)?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        let req = builder
            .body(Full::new(Bytes::new()))
            .map_err(TransportError::Request)?;
        self.send(req, Some(call)).await
    }

    /// `POST url` with an `application/x-www-form-urlencoded` body and optional HTTP Basic
    /// client authentication (RFC 6749 §2.3.1: id and secret form-urlencoded first).
    pub async fn post_form(
        &self,
        call: Call<'_>,
        url: &str,
        form: &[(&str, &str)],
        basic_auth: Option<(&str, &str)>,
    ) -> Result<Response, TransportError> {
        let uri = checked_uri(url)?;
        let body = form_urlencode_pairs(form);
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(CONTENT_LENGTH, body.len())
            .header(http::header::USER_AGENT, self.user_agent.clone());
        if let Some((id, secret)) = basic_auth {
            let mut value = HeaderValue::from_str(&basic_auth_value(id, secret))
                .map_err(|_| TransportError::InvalidHeader)?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        let req = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(TransportError::Request)?;
        self.send(req, Some(call)).await
    }

    /// `POST url` of an OTLP/HTTP protobuf export (the exporter's own client). Plain http
    /// is allowed to any host: spans carry no secrets, and a collector is often reached
    /// that way on a node's or pod's network.
    pub async fn post_otlp(&self, url: &Uri, body: Bytes) -> Result<Response, TransportError> {
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(TransportError::InvalidUrl);
        }
        let req = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header(CONTENT_LENGTH, body.len())
            .header(http::header::USER_AGENT, self.user_agent.clone())
            .body(Full::new(body))
            .map_err(TransportError::Request)?;
        self.send(req, None).await
    }

    async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
        call: Option<Call<'_>>,
    ) -> Result<Response, TransportError> {
        let watched = match (&self.telemetry, call) {
            (Some(t), Some(c)) => Some(ProviderCall::start(
                t,
                c.issuer,
                c.endpoint,
                req.method(),
                req.uri(),
            )),
            _ => None,
        };
        // W3C Trace Context §3: the provider is told the call's own span as its parent.
        if let Some((parent, state)) = watched.as_ref().and_then(ProviderCall::propagation) {
            req.headers_mut().insert(TRACEPARENT, parent);
            if let Some(s) = state {
                req.headers_mut().insert(TRACESTATE, s);
            }
        }
        let result = self.exchange(req).await;
        if let Some(w) = watched {
            match &result {
                Ok(r) => w.finish(Some(r.status.as_u16()), None),
                Err(e) => w.finish(None, Some(e.to_string())),
            }
        }
        result
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<Response, TransportError> {
        let max = self.max_body;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(TransportError::Connect)?;
            let (parts, body) = resp.into_parts();
            if let Some(len) = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                if len > max as u64 {
                    return Err(TransportError::TooLarge(max));
                }
            }
            let collected = Limited::new(body, max).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    TransportError::TooLarge(max)
                } else {
                    TransportError::Body(e)
                }
            })?;
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body: collected.to_bytes(),
            })
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout(self.timeout)),
        }
    }
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Parses `url` and refuses plain http except to a loopback host (tests, sidecars).
pub(crate) fn checked_uri(url: &str) -> Result<Uri, TransportError> {
    let uri: Uri = url.parse().map_err(|_| TransportError::InvalidUrl)?;
    let host = uri.host().ok_or(TransportError::InvalidUrl)?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        Some("http") => Err(TransportError::InsecureScheme),
        _ => Err(TransportError::InvalidUrl),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// `application/x-www-form-urlencoded` byte serializer (WHATWG URL §5.2): ASCII
/// alphanumerics and `*-._` as is, space as `+`, every other byte percent-encoded.
pub fn form_urlencode(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0x0f) as usize] as char);
            }
        }
    }
    out
}

/// `k1=v1&k2=v2`, each name and value form-urlencoded.
pub fn form_urlencode_pairs(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&form_urlencode(k));
        out.push('=');
        out.push_str(&form_urlencode(v));
    }
    out
}

/// RFC 6749 §2.3.1: the client identifier and password are encoded with
/// `application/x-www-form-urlencoded` before being used as the RFC 7617 user-id and
/// password.
pub fn basic_auth_value(id: &str, secret: &str) -> String {
    let raw = format!("{}:{}", form_urlencode(id), form_urlencode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_urlencoding_escapes_reserved_bytes() {
        assert_eq!(form_urlencode("abc-._*XYZ09"), "abc-._*XYZ09");
        assert_eq!(form_urlencode("a b"), "a+b");
        assert_eq!(form_urlencode("a+b&c=d/é%"), "a%2Bb%26c%3Dd%2F%C3%A9%25");
        assert_eq!(
            form_urlencode_pairs(&[("token", "x y"), ("token_type_hint", "access_token")]),
            "token=x+y&token_type_hint=access_token"
        );
    }

    #[test]
    fn basic_auth_encodes_id_and_secret_first() {
        // "my:id" / "p@ss w+rd" → "my%3Aid:p%40ss+w%2Brd"
        let v = basic_auth_value("my:id", "p@ss w+rd");
        let b64 = v.strip_prefix("Basic ").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(raw, b"my%3Aid:p%40ss+w%2Brd");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(checked_uri("http://127.0.0.1:8080/x").is_ok());
        assert!(checked_uri("http://[::1]:8080/x").is_ok());
        assert!(checked_uri("http://localhost/x").is_ok());
        assert!(checked_uri("https://idp.example.com/x").is_ok());
        assert!(matches!(
            checked_uri("http://idp.example.com/x"),
            Err(TransportError::InsecureScheme)
        ));
        assert!(matches!(
            checked_uri("ftp://idp.example.com/x"),
            Err(TransportError::InvalidUrl)
        ));
        assert!(matches!(
            checked_uri("not a url"),
            Err(TransportError::InvalidUrl)
        ));
    }
}
