//! Header hygiene for requests going upstream and responses coming back.
//!
//! One pass over the request's header names decides what goes (DESIGN §1 step 4):
//! headers named in `Connection` and the hop-by-hop set; every identity header the proxy
//! may set (names compared case-insensitively with `_` and `-` alike); headers that
//! rewrite the path or method; forwarding headers from untrusted peers. Only then does the
//! proxy add its own. Names are compared as `HeaderName`s or bytes: nothing is parsed or
//! formatted per request.

use super::header_policy::{Class, HeaderPolicy};
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// RFC 9110 §7.6.1 and the usual extras: never forwarded by a proxy.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == CONNECTION
        || n == TE
        || n == TRAILER
        || n == TRANSFER_ENCODING
        || n == UPGRADE
        || n == PROXY_AUTHORIZATION
        || n == PROXY_AUTHENTICATE
        || n.as_str() == "keep-alive"
        || n.as_str() == "proxy-connection"
}

/// What the hop-by-hop pass took out that the forwarder must restore on its own terms.
#[derive(Debug, Default, Clone)]
pub struct HopByHop {
    /// The `Upgrade` value of an HTTP/1.1 upgrade request (WebSocket), to be forwarded.
    pub upgrade: Option<HeaderValue>,
    /// `te: trailers` was sent (gRPC needs it upstream).
    pub te_trailers: bool,
}

fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// What the `Connection` header says, read in one pass over its tokens.
#[derive(Default)]
struct ConnectionFacts {
    /// `upgrade` is among the tokens.
    upgrade: bool,
    /// It names headers beyond the hop-by-hop set itself (the usual `keep-alive`,
    /// `close`, `upgrade`): only then must every header name be checked against it.
    names_others: bool,
}

fn connection_facts(h: &HeaderMap) -> ConnectionFacts {
    let mut f = ConnectionFacts::default();
    let mut values = h.get_all(CONNECTION).iter();
    match (values.next(), values.next()) {
        (None, _) => return f,
        // The usual single `keep-alive` or `close`: nothing more to read.
        (Some(v), None)
            if v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
                || v.as_bytes().eq_ignore_ascii_case(b"close") =>
        {
            return f
        }
        _ => {}
    }
    for t in connection_tokens(h) {
        if t.eq_ignore_ascii_case("upgrade") {
            f.upgrade = true;
        } else if !["keep-alive", "close", "te", "trailer", "transfer-encoding"]
            .iter()
            .any(|k| t.eq_ignore_ascii_case(k))
        {
            f.names_others = true;
        }
    }
    f
}

/// Named in a `Connection` header (RFC 9110 §7.6.1)? `Host` never counts.
fn named_in_connection(h: &HeaderMap, n: &HeaderName) -> bool {
    n != HOST && connection_tokens(h).any(|t| t.eq_ignore_ascii_case(n.as_str()))
}

/// The names to remove as hop-by-hop: the fixed set, and what `Connection` names.
fn hop_by_hop_names(h: &HeaderMap, facts: &ConnectionFacts) -> Vec<HeaderName> {
    h.keys()
        .filter(|n| is_hop_by_hop(n) || (facts.names_others && named_in_connection(h, n)))
        .cloned()
        .collect()
}

/// Removes the headers a client's `Connection` header names (RFC 9110 §7.6.1) at once,
/// before anything reads them (the request id, forward auth's `X-Forwarded-Uri`): a
/// nominated header is the hop's, never the request's. The hop-by-hop set itself (and
/// `Connection`) goes in [`clean_request`].
pub fn remove_connection_named(h: &mut HeaderMap) {
    if !connection_facts(h).names_others {
        return;
    }
    let doomed: Vec<HeaderName> = h
        .keys()
        .filter(|n| !is_hop_by_hop(n) && named_in_connection(h, n))
        .cloned()
        .collect();
    for n in doomed {
        h.remove(n);
    }
}

/// Removes `Connection`-named and hop-by-hop headers from an upstream's response.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let facts = connection_facts(h);
    for n in hop_by_hop_names(h, &facts) {
        h.remove(n);
    }
}

/// `X-Foo_Bar` and `x-foo-bar` are the same header to many backends (CGI, WSGI, PHP).
fn normalized(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let s = name.as_str(); // already lower case
    if s.contains('_') {
        s.replace('_', "-").into()
    } else {
        s.into()
    }
}

/// Cleans a request from a client in one pass over its header names (see the module
/// doc), then sets the forwarding headers: from an untrusted peer every copy is discarded
/// and rebuilt from the connection; a trusted proxy's are kept (underscore spellings
/// excepted) and the peer appended to `X-Forwarded-For`.
pub fn clean_request(
    h: &mut HeaderMap,
    policy: &HeaderPolicy,
    forwarded: &Forwarded<'_>,
) -> HopByHop {
    let facts = connection_facts(h);
    let hop = HopByHop {
        upgrade: if facts.upgrade {
            h.get(UPGRADE).cloned()
        } else {
            None
        },
        te_trailers: h.get_all(TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        }),
    };
    let mut doomed: Vec<HeaderName> = Vec::new();
    for n in h.keys() {
        if is_hop_by_hop(n) || (facts.names_others && named_in_connection(h, n)) {
            doomed.push(n.clone());
            continue;
        }
        let drop = match policy.class(&normalized(n)) {
            None => false,
            Some(Class::Drop) => true,
            Some(Class::Foreign { keep }) => !(keep && forwarded.trusted),
            // Underscore spellings are ambiguous even from a trusted proxy.
            Some(Class::Peer) => !forwarded.trusted || n.as_str().contains('_'),
        };
        if drop {
            tracing::debug!(header = %n, "dropped a client header");
            doomed.push(n.clone());
        }
    }
    for n in doomed {
        h.remove(n);
    }
    set_forwarded(h, forwarded);
    hop
}

/// The facts the forwarding headers are built from.
pub struct Forwarded<'a> {
    /// The peer's address (as a header value).
    pub peer: &'a HeaderValue,
    /// The peer is one of `server.trusted_proxies`.
    pub trusted: bool,
    /// `http` or `https`: how the client reached the proxy.
    pub proto: &'static str,
    /// The authority the request was routed by.
    pub host: Option<&'a HeaderValue>,
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `X-Real-IP` (after [`clean_request`] removed
/// an untrusted peer's copies).
fn set_forwarded(h: &mut HeaderMap, f: &Forwarded<'_>) {
    let appended = match (f.trusted, h.get(X_FORWARDED_FOR)) {
        (true, Some(prev)) if prev.to_str().is_ok_and(|p| !p.trim().is_empty()) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + f.peer.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(f.peer.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        _ => None,
    };
    h.insert(X_FORWARDED_FOR, appended.unwrap_or_else(|| f.peer.clone()));
    if !f.trusted || !h.contains_key(X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
    }
    if !f.trusted || !h.contains_key(X_FORWARDED_HOST) {
        match f.host {
            Some(v) => {
                h.insert(X_FORWARDED_HOST, v.clone());
            }
            None => {
                h.remove(X_FORWARDED_HOST);
            }
        }
    }
    if !f.trusted || !h.contains_key(X_REAL_IP) {
        h.insert(X_REAL_IP, f.peer.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(own: &[&str]) -> HeaderPolicy {
        HeaderPolicy::new(&super::super::header_policy::test_config(own, &[], &[]))
    }

    fn untrusted<'a>(peer: &'a HeaderValue, host: Option<&'a HeaderValue>) -> Forwarded<'a> {
        Forwarded {
            peer,
            trusted: false,
            proto: "http",
            host,
        }
    }

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
        let mut response = h.clone();
        let peer = HeaderValue::from_static("10.0.0.9");
        let c = clean_request(&mut h, &policy(&[]), &untrusted(&peer, None));
        assert_eq!(
            c.upgrade.as_ref().map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert!(c.te_trailers);
        for gone in ["connection", "x-secret", "upgrade", "keep-alive", "te"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert!(h.contains_key("x-kept"));
        strip_hop_by_hop(&mut response);
        assert_eq!(response.len(), 1);
        assert!(response.contains_key("x-kept"));
    }

    #[test]
    fn connection_never_names_host() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("host, close"));
        h.insert("host", HeaderValue::from_static("app"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h["host"], "app");
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn strips_identity_in_every_spelling() {
        let s = policy(&["x-auth-request-user"]);
        let mut h = HeaderMap::new();
        h.append("X-Auth-Request-User", HeaderValue::from_static("a"));
        h.append("x_auth_request_user", HeaderValue::from_static("b"));
        h.append("X_Auth-Request_User", HeaderValue::from_static("c"));
        h.append("x-original-url", HeaderValue::from_static("/admin"));
        h.append("X-HTTP-Method-Override", HeaderValue::from_static("DELETE"));
        h.append("x_http_method", HeaderValue::from_static("DELETE"));
        h.append("other", HeaderValue::from_static("x"));
        // Same length as an identity name, not one of them.
        h.append("x-auth-request-usex", HeaderValue::from_static("kept"));
        let peer = HeaderValue::from_static("10.0.0.9");
        clean_request(&mut h, &s, &untrusted(&peer, None));
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "other",
                "x-auth-request-usex",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
    }

    #[test]
    fn clean_request_does_all_in_one_pass() {
        let s = policy(&["x-auth-request-user"]);
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x_auth_request_user", HeaderValue::from_static("b"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x_forwarded_host", HeaderValue::from_static("evil"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let peer = HeaderValue::from_static("10.0.0.9");
        let host = HeaderValue::from_static("app");
        clean_request(&mut h, &s, &untrusted(&peer, Some(&host)));
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "app");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["accept"], "*/*");
        for gone in [
            "forwarded",
            "x_forwarded_host",
            "x-hop",
            "connection",
            "x_auth_request_user",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn forwarded_trusted_is_appended() {
        let s = policy(&[]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x_forwarded_proto", HeaderValue::from_static("gopher"));
        let peer = HeaderValue::from_static("10.0.0.9");
        let f = Forwarded {
            peer: &peer,
            trusted: true,
            proto: "http",
            host: None,
        };
        clean_request(&mut h, &s, &f);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("x_forwarded_proto"));
    }

    #[test]
    fn trace_context_only_from_trusted_proxies() {
        let s = policy(&[]);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let given = || {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_static(tp));
            h.insert("tracestate", HeaderValue::from_static("rojo=1"));
            h
        };
        let peer = HeaderValue::from_static("10.0.0.9");
        // A client cannot choose the upstream's trace (or force it to be sampled).
        let mut h = given();
        clean_request(&mut h, &s, &untrusted(&peer, None));
        for gone in ["traceparent", "tracestate"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        // A trusted proxy's pass (the proxy's own replaces it when tracing is on).
        let mut h = given();
        let f = Forwarded {
            peer: &peer,
            trusted: true,
            proto: "http",
            host: None,
        };
        clean_request(&mut h, &s, &f);
        assert_eq!(h["traceparent"], tp);
        assert_eq!(h["tracestate"], "rojo=1");
    }
}
