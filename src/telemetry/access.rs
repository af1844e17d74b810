//! The access log: one line per request (target `access`), written when the response has
//! been sent, so that it can say how many bytes went each way. Built only when the log
//! filter lets the line through; otherwise nothing here runs.
//!
//! Fields: `method`, `host`, `path` (canonical, never the query; `-` when it is not a
//! path), `version`, `status`, `route`, `user`, `client` (the peer, or when the peer is a
//! trusted proxy the address it forwarded for), `user_agent`, `bytes_in` (request body),
//! `bytes_out` (response body), `upstream_ms` (to the upstream's response head),
//! `total_ms` (to the end of the response), `request_id`, and for answers of the proxy's
//! own the `reason` (`no_token`, `invalid_token:expired`, `policy:group`, ...).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use http_body::{Body, Frame, SizeHint};

use crate::admin::metrics::RouteMetrics;
use crate::body::{BoxError, RespBody};
use crate::error::{Reason, UpstreamBodyError};
use crate::exchange::{BytesIn, ConnInfo, RequestId};
use crate::identity::Identity;
use crate::proxy::hygiene::TrustedProxies;

/// What the line needs of the request, captured before the request moves on.
pub struct AccessFacts {
    method: Method,
    version: Version,
    uri: Uri,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    client: IpAddr,
    pub bytes_in: BytesIn,
}

impl AccessFacts {
    pub fn capture<B>(
        req: &http::Request<B>,
        conn: &ConnInfo,
        trusted: &TrustedProxies,
    ) -> AccessFacts {
        let h = req.headers();
        AccessFacts {
            method: req.method().clone(),
            version: req.version(),
            uri: req.uri().clone(),
            host: req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .or_else(|| h.get(http::header::HOST).cloned()),
            user_agent: h.get(http::header::USER_AGENT).cloned(),
            client: client_address(conn.peer_ip(), h, trusted),
            bytes_in: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// The client as far as it can be trusted: the peer, unless the peer is a trusted proxy;
/// then the right-most `X-Forwarded-For` address that is not one of the trusted proxies.
fn client_address(peer: IpAddr, h: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|a| !trusted.contains(a.to_canonical()))
        .unwrap_or(peer)
}

/// Everything the line says, once the response head is known.
pub struct AccessLine {
    pub facts: AccessFacts,
    pub start: Instant,
    pub id: RequestId,
    pub status: u16,
    pub route: Option<Arc<RouteMetrics>>,
    pub user: Option<Arc<Identity>>,
    pub reason: Option<Reason>,
    pub upstream: Option<Duration>,
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn text(v: &Option<HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-")
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

impl AccessLine {
    fn write(&self, bytes_out: u64) {
        let f = &self.facts;
        // The canonical path (as matched and sent upstream); the query never.
        let path = crate::path::normalize_path(f.uri.path()).ok();
        let reason = self.reason.map(|r| r.to_string());
        tracing::info!(
            target: "access",
            method = f.method.as_str(),
            host = text(&f.host),
            path = path.as_deref().unwrap_or("-"),
            version = version(f.version),
            status = self.status,
            route = self.route.as_ref().map_or("-", |r| &*r.name),
            user = self.user.as_ref().map_or("-", |u| u.subject()),
            client = %f.client,
            user_agent = text(&f.user_agent),
            bytes_in = f.bytes_in.load(Relaxed),
            bytes_out,
            upstream_ms = self.upstream.map(ms),
            total_ms = ms(self.start.elapsed()),
            request_id = self.id.as_str(),
            reason = reason.as_deref(),
        );
    }
}

/// A response body that counts what it sends and writes the access line at its end (or
/// when the client goes away first).
pub struct LoggedBody {
    body: RespBody,
    sent: u64,
    line: Option<Box<AccessLine>>,
}

impl LoggedBody {
    pub fn new(body: RespBody, line: AccessLine) -> LoggedBody {
        LoggedBody {
            body,
            sent: 0,
            line: Some(Box::new(line)),
        }
    }

    fn finish(&mut self) {
        if let Some(line) = self.line.take() {
            line.write(self.sent);
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.body.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(e))) => {
                // The answer went out as the upstream's, and its body failed on the way:
                // the line says so (its status stays the upstream's).
                if e.downcast_ref::<UpstreamBodyError>().is_some() {
                    if let Some(line) = this.line.as_mut() {
                        line.reason.get_or_insert(UpstreamBodyError::REASON);
                    }
                }
                this.finish()
            }
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_behind_trusted_proxies() {
        let trusted = TrustedProxies::new(&["10.0.0.0/8".parse().unwrap()]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.1, 203.0.113.5, 10.0.0.2"),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            client_address(ip("10.0.0.9"), &h, &trusted),
            ip("203.0.113.5")
        );
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            client_address(ip("192.0.2.7"), &h, &trusted),
            ip("192.0.2.7")
        );
        // A trusted peer that forwarded nothing usable is the client.
        assert_eq!(
            client_address(ip("10.0.0.9"), &HeaderMap::new(), &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(ms(Duration::from_micros(1234)), 1.234);
    }
}
