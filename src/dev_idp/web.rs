//! The small HTTP server under the provider and the sample app (hyper, HTTP/1.1 and h2,
//! on whatever tokio runtime calls `start`), and the request and response helpers the
//! endpoints share.

use std::collections::HashMap;
use std::future::Future;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub(crate) type Resp = Response<Full<Bytes>>;

/// Largest request body read (forms are small).
const MAX_BODY: usize = 64 * 1024;

/// Returned by a handler to close the connection without answering.
#[derive(Debug)]
pub(crate) struct Disconnect;

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed on purpose")
    }
}

impl std::error::Error for Disconnect {}

/// A request with its body read.
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    /// Reads the body (up to 64 KiB); `Err` is the response to send instead.
    pub async fn read(req: Request<Incoming>) -> Result<Req, Resp> {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return Err(text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large or unreadable\n",
                ))
            }
        };
        Ok(Req {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            headers: parts.headers,
            body,
        })
    }

    pub fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the body is `application/x-www-form-urlencoded`.
    pub fn is_form(&self) -> bool {
        self.header(header::CONTENT_TYPE).is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        })
    }

    /// The parameters of a GET (query) or a form POST (body).
    pub fn params(&self) -> Result<Params, String> {
        if self.method == Method::POST {
            if !self.is_form() {
                return Err("the body must be application/x-www-form-urlencoded".into());
            }
            Params::parse(&self.body)
        } else {
            Params::parse(self.query.as_bytes())
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Request parameters. RFC 6749 §3.1: a parameter sent without a value is treated as
/// omitted, and none may be sent more than once.
#[derive(Debug, Default)]
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(input: &[u8]) -> Result<Params, String> {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(input) {
            if v.is_empty() {
                continue;
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("parameter {k} is repeated"));
            }
        }
        Ok(Params(map))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte.
pub(crate) fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `n` random bytes, base64url without padding.
pub(crate) fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // The system RNG failing is not something a dev server can recover from.
    aws_lc_rs::rand::fill(&mut buf).expect("system random number generator failed");
    URL_SAFE_NO_PAD.encode(buf)
}

pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// The key under which a secret value is stored: its SHA-256, base64url.
pub(crate) fn digest_key(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha256(secret.as_bytes()))
}

pub(crate) fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn base(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) fn no_store(mut r: Resp) -> Resp {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    base(status, "text/plain; charset=utf-8", body)
}

pub(crate) fn json_raw(status: StatusCode, body: &'static str) -> Resp {
    base(status, "application/json", body)
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    base(status, "application/json", value.to_string())
}

/// An HTML page, with headers that keep it out of frames and caches.
pub(crate) fn html(status: StatusCode, page: String) -> Resp {
    let mut r = no_store(base(status, "text/html; charset=utf-8", page));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// An RFC 6749 §5.2 error: `{"error", "error_description"}`, never cached.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Resp {
    no_store(json(
        status,
        &serde_json::json!({ "error": error, "error_description": description }),
    ))
}

/// 302 (or 303 after a POST) to `location`, which the caller has validated.
pub(crate) fn redirect(status: StatusCode, location: &str) -> Resp {
    let mut r = no_store(base(status, "text/plain; charset=utf-8", Bytes::new()));
    match HeaderValue::from_str(location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "invalid redirect target\n"),
    }
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = oauth_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "method not allowed",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Resolves once the shutdown flag is true (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serves `handler` on `listener` on the current tokio runtime until `shutdown` turns
/// true; then stops accepting and closes the open connections.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Disconnect>> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(handler);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameter_is_refused_and_empty_is_omitted() {
        assert!(Params::parse(b"a=1&a=2").is_err());
        let p = Params::parse(b"a=1&b=&c=x+y%21").unwrap();
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None);
        assert_eq!(p.get("c"), Some("x y!"));
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a%3Ab+c").as_deref(), Some("a:b c"));
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("%4"), None);
        assert_eq!(form_decode("%FF"), None);
    }
}
