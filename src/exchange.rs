//! What travels with a request through the stack, and what comes back to the outer layers.
//!
//! The connection hands each request over as an [`Arrival`] (the request and the facts of
//! its connection); the trace layer gives it a [`RequestId`] and passes an [`Exchange`] on;
//! the routing layer turns that into a `Routed` exchange (see `routing`). On the way back,
//! inner layers report through the [`Answer`]: the route's counters, who the user was,
//! how long the upstream took. Typed all the way: no layer looks anything up at call time
//! that could be missing.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};

use crate::admin::metrics::RouteMetrics;
use crate::body::Resp;
use crate::identity::Identity;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Facts of the connection a request came on, made once per connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The client connected over TLS.
    pub tls: bool,
    /// The peer's address as a header value (`X-Forwarded-For`, `X-Real-IP`), formatted
    /// once per connection rather than once per request.
    peer_ip_value: HeaderValue,
    /// The SHA-256 thumbprint (base64url) of the client certificate the peer presented in
    /// the TLS handshake (RFC 8705 `x5t#S256`), made once per connection.
    client_cert: Option<Box<str>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let ip = peer.ip().to_canonical();
        ConnInfo {
            peer,
            tls,
            peer_ip_value: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            client_cert: None,
        }
    }

    /// With the thumbprint of the client certificate of the TLS handshake.
    pub fn with_client_cert(mut self, thumbprint: Option<Box<str>>) -> ConnInfo {
        self.client_cert = thumbprint;
        self
    }

    /// base64url(SHA-256(DER)) of the TLS client certificate, when one was presented.
    pub fn client_cert(&self) -> Option<&str> {
        self.client_cert.as_deref()
    }

    /// The peer's IP, IPv4-mapped IPv6 addresses as IPv4.
    pub fn peer_ip(&self) -> IpAddr {
        self.peer.ip().to_canonical()
    }

    pub fn peer_ip_value(&self) -> &HeaderValue {
        &self.peer_ip_value
    }

    /// `https` over TLS, else `http`: what `X-Forwarded-Proto` says.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// Bytes of a request's body that went upstream, counted as they pass (only when the
/// access log is written).
pub type BytesIn = Arc<AtomicU64>;

/// A request as the connection hands it to the stack.
pub struct Arrival<B> {
    pub req: Request<B>,
    pub conn: Arc<ConnInfo>,
}

/// A request with its id: what the layers after the trace layer see until routing.
pub struct Exchange<B> {
    pub req: Request<B>,
    pub conn: Arc<ConnInfo>,
    pub id: RequestId,
    /// Where the forwarder counts the request body's bytes, when they are logged.
    pub bytes_in: Option<BytesIn>,
}

/// What comes back up the stack: the response and what the trace layer records of it.
pub struct Answer {
    pub resp: Resp,
    /// The counters of the route that served it (`None`: no route matched).
    pub route: Option<Arc<RouteMetrics>>,
    /// Who was authenticated, for the access log.
    pub user: Option<Arc<Identity>>,
    /// Time to the upstream's response head.
    pub upstream_latency: Option<Duration>,
}

impl From<Resp> for Answer {
    fn from(resp: Resp) -> Answer {
        Answer {
            resp,
            route: None,
            user: None,
            upstream_latency: None,
        }
    }
}

/// The id of one request: the client's `X-Request-Id` when it is short and plain, else a
/// fresh one. Returned in the response and sent upstream.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn for_request(headers: &HeaderMap) -> RequestId {
        match headers.get(X_REQUEST_ID) {
            Some(v) if valid_request_id(v) => RequestId(v.clone()),
            _ => RequestId::generate(),
        }
    }

    /// 32 hex digits, unique per process: a random 64-bit prefix drawn once per process
    /// (plus a per-thread offset) and a per-thread counter. Ids need to be unique, not
    /// secret, so the prefix comes from the standard library's hash seed (read once from
    /// the OS) rather than a cryptographic generator that would have to seed itself on each
    /// worker's first request.
    pub fn generate() -> RequestId {
        use std::cell::Cell;
        thread_local! {
            static NEXT: Cell<(u64, u64)> = Cell::new((thread_prefix(), 0));
        }
        let (prefix, n) = NEXT.with(|c| {
            let (prefix, n) = c.get();
            c.set((prefix, n.wrapping_add(1)));
            (prefix, n)
        });
        let mut s = [0u8; 32];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, v) in prefix
            .to_be_bytes()
            .iter()
            .chain(n.to_be_bytes().iter())
            .enumerate()
        {
            s[2 * i] = HEX[(v >> 4) as usize];
            s[2 * i + 1] = HEX[(v & 15) as usize];
        }
        RequestId(HeaderValue::from_bytes(&s).unwrap_or(HeaderValue::from_static("-")))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("-")
    }

    pub fn value(&self) -> &HeaderValue {
        &self.0
    }
}

/// Distinct for every thread of the process: the process seed plus a thread number (an
/// odd multiplier keeps distinct numbers distinct modulo 2^64).
fn thread_prefix() -> u64 {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    let n = THREADS.fetch_add(1, Relaxed);
    process_seed().wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Drawn once per process. Call it at start so no request pays for it.
pub fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        );
        h.finish()
    })
}

/// A request id from the client is kept when it is short and plain; else a new one is made.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_plain() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), 32);
        assert!(valid_request_id(a.value()));
        let other = std::thread::spawn(|| RequestId::generate().as_str().to_string())
            .join()
            .unwrap();
        assert_ne!(&other[..16], &a.as_str()[..16], "threads share a prefix");
    }

    #[test]
    fn client_ids_kept_only_when_plain() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(RequestId::for_request(&h).as_str(), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("a b"));
        assert_ne!(RequestId::for_request(&h).as_str(), "a b");
        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert_eq!(RequestId::for_request(&h).as_str().len(), 32);
    }

    #[test]
    fn conn_info_formats_the_peer_once() {
        let c = ConnInfo::new("[::ffff:10.0.0.9]:4000".parse().unwrap(), true);
        assert_eq!(c.peer_ip_value(), "10.0.0.9");
        assert_eq!(c.scheme(), "https");
    }
}
