//! Header hygiene for requests going upstream and responses coming back.
//!
//! Order (issue #2, DESIGN §1 step 4): headers named in `Connection` and the hop-by-hop set
//! go first; then every identity header the proxy may set (names compared
//! case-insensitively with `_` and `-` alike); then forwarding headers from untrusted peers;
//! only then does the proxy add its own.

use std::collections::HashSet;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, UPGRADE};

/// RFC 9110 §7.6.1 and the usual extras: never forwarded by a proxy.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that rewrite the path or method a backend believes it serves (IIS, Symfony,
/// Spring, Rails/Express method overrides, forward-auth): the upstream must see only the
/// path and method that were authorized (a GET with `X-HTTP-Method-Override: DELETE` would
/// otherwise dodge `method_scopes`). Never forwarded, whoever sent them.
const PATH_OVERRIDES: [&str; 10] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// `X-Foo_Bar` and `x-foo-bar` are the same header to many backends (CGI, WSGI, PHP).
fn normalized(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let s = name.as_str(); // already lower case
    if s.contains('_') {
        s.replace('_', "-").into()
    } else {
        s.into()
    }
}

/// What was learnt while cleaning a request.
#[derive(Debug, Default, Clone)]
pub struct Cleaned {
    /// The `Upgrade` value of an HTTP/1.1 upgrade request (WebSocket), to be forwarded.
    pub upgrade: Option<HeaderValue>,
    /// `te: trailers` was sent (gRPC needs it upstream).
    pub te_trailers: bool,
}

/// Removes `Connection`-named and hop-by-hop headers (request or response).
pub fn strip_hop_by_hop(h: &mut HeaderMap) -> Cleaned {
    let mut out = Cleaned::default();
    let wants_upgrade = connection_tokens(h).any(|t| t.eq_ignore_ascii_case("upgrade"));
    if wants_upgrade {
        out.upgrade = h.get(UPGRADE).cloned();
    }
    out.te_trailers = h.get_all(TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    // Headers named in Connection (RFC 9110 §7.6.1); Host is never one of them.
    let named: Vec<HeaderName> = connection_tokens(h)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| n != http::header::HOST)
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    out
}

fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The set of identity header names (normalized) that no client may send.
#[derive(Debug, Clone, Default)]
pub struct IdentityStrip {
    names: HashSet<Box<str>>,
}

impl IdentityStrip {
    pub fn new(names: &[String]) -> Self {
        IdentityStrip {
            names: names.iter().map(|n| n.as_str().into()).collect(),
        }
    }

    /// Removes every client-sent copy of every identity header and every path override.
    /// Returns how many were removed.
    pub fn strip(&self, h: &mut HeaderMap) -> usize {
        let mut doomed: Vec<HeaderName> = Vec::new();
        for name in h.keys() {
            let n = normalized(name);
            if self.names.contains(n.as_ref()) || PATH_OVERRIDES.contains(&n.as_ref()) {
                doomed.push(name.clone());
            }
        }
        let count = doomed.len();
        for n in doomed {
            tracing::debug!(header = %n, "stripped client-sent identity or path header");
            h.remove(n);
        }
        count
    }
}

/// Is this a forwarding header that only a trusted proxy may send?
fn is_forwarding(n: &str) -> bool {
    n.starts_with("x-forwarded-") || n == "forwarded" || n == "x-real-ip"
}

/// Rebuilds the forwarding headers. From an untrusted peer every copy is discarded and
/// rebuilt from the TCP connection; a trusted proxy's are kept and the peer appended.
pub fn set_forwarded(
    h: &mut HeaderMap,
    peer: IpAddr,
    trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    if !trusted {
        let doomed: Vec<HeaderName> = h
            .keys()
            .filter(|n| is_forwarding(&normalized(n)))
            .cloned()
            .collect();
        for n in doomed {
            h.remove(n);
        }
    } else {
        // Underscore spellings are ambiguous even from a trusted proxy: drop them.
        let doomed: Vec<HeaderName> = h
            .keys()
            .filter(|n| n.as_str().contains('_') && is_forwarding(&normalized(n)))
            .cloned()
            .collect();
        for n in doomed {
            h.remove(n);
        }
    }
    let peer_s = peer.to_string();
    let xff = HeaderName::from_static("x-forwarded-for");
    let xff_value = match (trusted, h.get(&xff).and_then(|v| v.to_str().ok())) {
        (true, Some(prev)) if !prev.trim().is_empty() => format!("{prev}, {peer_s}"),
        _ => peer_s.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff_value) {
        h.insert(xff, v);
    }
    let xfp = HeaderName::from_static("x-forwarded-proto");
    if !trusted || !h.contains_key(&xfp) {
        h.insert(xfp, HeaderValue::from_static(proto));
    }
    let xfh = HeaderName::from_static("x-forwarded-host");
    if !trusted || !h.contains_key(&xfh) {
        match host {
            Some(v) => {
                h.insert(xfh, v.clone());
            }
            None => {
                h.remove(xfh);
            }
        }
    }
    let xri = HeaderName::from_static("x-real-ip");
    if !trusted || !h.contains_key(&xri) {
        if let Ok(v) = HeaderValue::from_str(&peer_s) {
            h.insert(xri, v);
        }
    }
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
    fn strips_connection_named_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let c = strip_hop_by_hop(&mut h);
        assert_eq!(
            c.upgrade.as_ref().map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert!(c.te_trailers);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn strips_identity_in_every_spelling() {
        let s = IdentityStrip::new(&["x-auth-request-user".into()]);
        let mut h = HeaderMap::new();
        h.append("X-Auth-Request-User", HeaderValue::from_static("a"));
        h.append("x_auth_request_user", HeaderValue::from_static("b"));
        h.append("X_Auth-Request_User", HeaderValue::from_static("c"));
        h.append("x-original-url", HeaderValue::from_static("/admin"));
        h.append("X-HTTP-Method-Override", HeaderValue::from_static("DELETE"));
        h.append("x_http_method", HeaderValue::from_static("DELETE"));
        h.append("other", HeaderValue::from_static("x"));
        assert_eq!(s.strip(&mut h), 6);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_untrusted_is_rebuilt() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x_forwarded_host", HeaderValue::from_static("evil"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        let host = HeaderValue::from_static("app");
        set_forwarded(
            &mut h,
            "10.0.0.9".parse().unwrap(),
            false,
            "http",
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "app");
        assert!(!h.contains_key("forwarded"));
        assert!(!h.contains_key("x_forwarded_host"));
    }

    #[test]
    fn forwarded_trusted_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(&mut h, "10.0.0.9".parse().unwrap(), true, "http", None);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
