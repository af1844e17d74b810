//! The proxy's own endpoints under `server.proxy_prefix` (default `/oauth2`), answered
//! before header hygiene (forward-auth reads `X-Forwarded-*` from trusted proxies):
//! `/ping`, `/auth` (forward auth), and with logins configured `/start`, `/callback`,
//! `/sign_out`, `/userinfo` and `POST /backchannel_logout` (OIDC Back-Channel Logout 1.0,
//! the only one that reads a body: a form of at most [`BACKCHANNEL_BODY_LIMIT`] bytes);
//! outside the prefix, `/.well-known/portcullis/jwks.json` (the identity assertion's keys)
//! when a route uses assertions.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use http::{Method, Response, StatusCode};
use tower_service::Service;

use super::login::Login;
use crate::admin::metrics::{Flow, Metrics, Mode, RouteMetrics};
use crate::auth::client_cert::ClientCert;
use crate::auth::gate::{self, Judged};
use crate::auth::identity_headers::{self, HeaderSettings};
use crate::body::{EndpointBody, Resp, RespBody};
use crate::error::{Fault, Reason, Refusal};
use crate::exchange::Answer;
use crate::path::{normalize_host, normalize_path};
use crate::proxy::hygiene::TrustedProxies;
use crate::routing::layer::AMBIGUOUS_READINGS;
use crate::routing::{OwnEndpoint, RouteTable};

/// What the endpoints need: the login (when configured), and for forward auth the route
/// table, the trusted proxies and the identity header settings.
#[derive(Clone)]
pub struct Endpoints {
    login: Option<Arc<Login>>,
    table: Arc<RouteTable>,
    trusted: TrustedProxies,
    headers: Arc<HeaderSettings>,
    /// Login step counters; the no-route counters take forward-auth requests refused
    /// before a route was found.
    metrics: Arc<Metrics>,
    unrouted: Arc<RouteMetrics>,
}

impl Endpoints {
    pub fn new(
        login: Option<Arc<Login>>,
        table: Arc<RouteTable>,
        trusted: TrustedProxies,
        headers: Arc<HeaderSettings>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Endpoints {
            login,
            table,
            trusted,
            headers,
            unrouted: metrics.route(&Arc::from("-")),
            metrics,
        }
    }
}

/// The largest back-channel logout request read (a logout token is a few KiB).
pub const BACKCHANNEL_BODY_LIMIT: usize = 64 * 1024;
/// Longest pause while reading it.
const BACKCHANNEL_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl<B: EndpointBody> Service<OwnEndpoint<B>> for Endpoints {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, e: OwnEndpoint<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(e).await) })
    }
}

impl Endpoints {
    async fn handle<B: EndpointBody>(&self, e: OwnEndpoint<B>) -> Answer {
        // Only back-channel logout reads the body (sign-out's POST carries none it needs).
        let (parts, body) = e.req.into_parts();
        let rid = e.id.as_str();
        let method = &parts.method;
        let headers = &parts.headers;
        let query = parts.uri.query();
        let get = matches!(*method, Method::GET | Method::HEAD);
        let resp = match (&*e.rest, self.login.as_ref()) {
            ("/ping", _) if get => {
                let mut r = Response::new(RespBody::full("OK"));
                r.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            // Any method: nginx's auth_request and Traefik's forwardAuth send the
            // subrequest with the original request's method. Envoy's HTTP ext_authz
            // appends the original path to its path prefix: `/oauth2/auth/orig/path`.
            ("/auth", _) => return self.forward_auth(&parts, None, e.conn.peer_ip(), rid).await,
            (rest, _) if rest.starts_with("/auth/") => {
                let suffix = &rest["/auth".len()..];
                return self
                    .forward_auth(&parts, Some(suffix), e.conn.peer_ip(), rid)
                    .await;
            }
            (crate::routing::layer::JWKS_ENDPOINT, _) if get => {
                match self.table.asserter() {
                    Some(a) => {
                        let mut r = Response::new(RespBody::full(a.jwks().clone()));
                        r.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static("application/jwk-set+json"),
                        );
                        // Short: verifiers also refetch on an unknown kid (rotation).
                        r.headers_mut().insert(
                            CACHE_CONTROL,
                            HeaderValue::from_static("public, max-age=300"),
                        );
                        r
                    }
                    None => Refusal::NotFound.respond(rid, method, headers),
                }
            }
            ("/start", Some(l)) if get => {
                counted(&self.metrics, Flow::Start, l.start(query, headers, rid))
            }
            ("/callback", Some(l)) if get => counted(
                &self.metrics,
                Flow::Callback,
                l.callback(query, headers, rid).await,
            ),
            ("/sign_out", Some(l)) if get || method == Method::POST => counted(
                &self.metrics,
                Flow::SignOut,
                l.sign_out(query, headers, rid).await,
            ),
            ("/userinfo", Some(l)) if get => l.userinfo(headers, rid).await,
            ("/backchannel_logout", Some(l)) if method == Method::POST => {
                let body = body
                    .read_all(BACKCHANNEL_BODY_LIMIT, BACKCHANNEL_BODY_TIMEOUT)
                    .await;
                counted(
                    &self.metrics,
                    Flow::BackchannelLogout,
                    l.backchannel_logout(headers, body, rid).await,
                )
            }
            _ => Refusal::NotFound.respond(rid, method, headers),
        };
        resp.into()
    }

    /// `/oauth2/auth` for nginx `auth_request`, Traefik `forwardAuth`, Caddy
    /// `forward_auth`, Envoy `ext_authz` and ingress-nginx: 202 with identity headers, 401
    /// or 403; never a redirect. The original request is described by the headers that
    /// [`original_request`] reads and `X-Forwarded-Method` / `X-Original-Method`, believed
    /// only from `trusted_proxies`: a client that could set them would choose its own
    /// policy. Without them the answer is 403; with conflicting ones, 400.
    async fn forward_auth(
        &self,
        req: &http::request::Parts,
        suffix: Option<&str>,
        peer: std::net::IpAddr,
        rid: &str,
    ) -> Answer {
        let h = &req.headers;
        // Refusals here are always JSON: the front proxy reads only the status.
        let refuse = |r: Refusal| Answer::from(r.respond_as(rid, false));
        let refuse_unrouted = |r: Refusal| {
            self.unrouted
                .refused(Mode::ForwardAuth, r.fault() == Fault::Client, r.reason());
            refuse(r)
        };
        let trusted = self.trusted.contains(peer);
        let header = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| h.get(*n).and_then(|v| v.to_str().ok()))
                .map(str::to_string)
        };
        if !trusted {
            tracing::warn!(request_id = rid, %peer, "forward-auth request from a peer outside trusted_proxies; denied");
            return refuse_unrouted(Refusal::Forbidden {
                rule: "forward_auth_untrusted",
            });
        }
        let original = match original_request(h, suffix, req.uri.query()) {
            Ok(Some(o)) => o,
            Ok(None) => {
                tracing::warn!(request_id = rid, %peer, "forward-auth request without X-Forwarded-Uri (or another original URI); denied");
                return refuse_unrouted(Refusal::Forbidden {
                    rule: "forward_auth_no_uri",
                });
            }
            Err(why) => {
                tracing::debug!(request_id = rid, %peer, reason = why, "forward-auth original URI refused");
                return refuse_unrouted(Refusal::BadRequest(why));
            }
        };
        // The original method: named by the front proxy, else the subrequest's own (nginx
        // auth_request keeps the original method).
        let method = header(&["x-forwarded-method", "x-original-method"])
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or_else(|| req.method.clone());
        let host = original
            .host
            .or_else(|| header(&["host"]).and_then(|h| normalize_host(&h).map(|h| h.into_owned())));
        let path = original.path;
        let query = original.query;
        // The path-reading rule, as for a proxied request.
        let selected = match self.table.select(host.as_deref(), &path) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return refuse_unrouted(Refusal::Forbidden {
                    rule: "forward_auth_no_route",
                })
            }
            Err(conflict) => {
                tracing::debug!(reason = %conflict, "forward auth: a path its readings make ambiguous");
                return refuse_unrouted(Refusal::BadRequest(AMBIGUOUS_READINGS));
            }
        };
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let judged = Judged {
            method: &method,
            headers: h,
            path_and_query: &pq,
            // The original request's host was read without its port: a DPoP `htu` is
            // checked against `server.public_url` or the route host's default port.
            authority: host.as_deref(),
            request_id: rid,
            forward_auth: true,
            // The connection is the front proxy's (trusted, see above): the client's
            // certificate can only be known from the header it sets.
            client_cert: ClientCert::of(selected.route.client_cert_header, None, h),
        };
        let passed = match gate::authenticate(&selected.route, &selected.also, &judged).await {
            Ok(p) => p,
            Err(denied) => {
                let resp = denied
                    .refusal
                    .respond_with_cookies(rid, &method, h, denied.set_cookies);
                let mut a = Answer::from(resp);
                a.user = denied.user;
                a.route = Some(selected.route.metrics.clone());
                return a;
            }
        };
        let mut r: Resp = Response::new(RespBody::empty());
        *r.status_mut() = StatusCode::ACCEPTED;
        // Every configured identity header is on the answer, empty when the identity has
        // no value for it (or on a public route): front proxies that copy named headers
        // (Caddy's `copy_headers`) then set an empty value, never a stale client copy or
        // an unexpanded placeholder.
        for name in self.headers.cfg.configured_names() {
            r.headers_mut()
                .insert(name.clone(), HeaderValue::from_static(""));
        }
        if let Some(a) = &selected.route.assertion {
            r.headers_mut()
                .insert(a.header().clone(), HeaderValue::from_static(""));
        }
        if let Some(id) = &passed.identity {
            // The front proxy copies these onto the upstream request; never the
            // Authorization header itself.
            let token = match self.headers.cfg.access_token {
                Some(_) => passed.token_for(h, &self.headers.cfg),
                None => None,
            };
            let rendered = match identity_headers::apply(
                r.headers_mut(),
                &self.headers,
                id,
                token.as_deref(),
                false,
            ) {
                Ok(rendered) => rendered,
                Err(err) => {
                    let mut a = refuse(Refusal::UnsafeIdentity(err));
                    a.user = passed.identity;
                    a.route = Some(selected.route.metrics.clone());
                    return a;
                }
            };
            // The route's signed assertion, for the front proxy to copy upstream.
            if let Some(assertion) = &selected.route.assertion {
                match assertion.value(id, &rendered, std::time::SystemTime::now()) {
                    Some(v) => {
                        r.headers_mut().insert(assertion.header().clone(), v);
                    }
                    None => {
                        let mut a = refuse(Refusal::Internal(
                            "the identity assertion could not be signed",
                        ));
                        a.user = passed.identity;
                        a.route = Some(selected.route.metrics.clone());
                        return a;
                    }
                }
            }
        }
        for c in passed.set_cookies {
            r.headers_mut().append(SET_COOKIE, c);
        }
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let mut a = Answer::from(r);
        a.user = passed.identity;
        // Counted and logged as a request of the route it checked.
        a.route = Some(selected.route.metrics.clone());
        a
    }
}

/// Counts a login step by how its answer ended: `ok`, or the refusal's code.
fn counted(metrics: &Metrics, flow: Flow, resp: Resp) -> Resp {
    let outcome = match resp.extensions().get::<Reason>() {
        None => "ok",
        Some(r) => r.detail.unwrap_or(r.kind),
    };
    metrics.flow(flow, outcome);
    resp
}

/// The original request, as the front proxy named it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Original {
    /// Canonical, like any request path.
    pub path: String,
    pub query: Option<String>,
    /// Lowercase, without port.
    pub host: Option<String>,
}

/// Headers that name the original URI, in the order they are read. `X-Original-URL` is
/// an absolute URL (ingress-nginx) or a path.
const ORIGINAL_URI_HEADERS: [&str; 3] = ["x-forwarded-uri", "x-original-uri", "x-original-url"];

/// The original request of a forward-auth call: its URI from `X-Forwarded-Uri` (Traefik,
/// Caddy, our nginx recipe), `X-Original-URI`, `X-Original-URL` (ingress-nginx; its host
/// too) or the path `suffix` after `/oauth2/auth` (Envoy, with the subrequest's `query`);
/// its host from there or `X-Forwarded-Host`. `None` when nothing names a URI. When more
/// than one source is present they must agree (after canonicalization): a client must
/// not pick the route by adding a header that its ingress passes through.
pub(crate) fn original_request(
    h: &http::HeaderMap,
    suffix: Option<&str>,
    query: Option<&str>,
) -> Result<Option<Original>, &'static str> {
    let mut uris: Vec<(String, Option<String>)> = Vec::new();
    let mut hosts: Vec<String> = Vec::new();
    let host_of = |v: &str| -> Result<String, &'static str> {
        normalize_host(v)
            .map(|h| h.into_owned())
            .ok_or("malformed original host")
    };
    for name in ORIGINAL_URI_HEADERS {
        for v in h.get_all(name) {
            let v = v.to_str().map_err(|_| "malformed original URI header")?;
            // A request target never carries a fragment: a raw `#` (in the path or the
            // query) is refused, as every other parser would end the URI there.
            if v.contains('#') {
                return Err("fragment in original URI header");
            }
            // An absolute X-Original-URL is split by hand, not by a URL library: WHATWG
            // parsing reads `\` as `/`, drops tabs and newlines and resolves `%2e`
            // segments, so it would name another path (or host) than the raw bytes the
            // application receives. Its path is then judged like any path-form value.
            let v = if name == "x-original-url" && !v.starts_with('/') {
                let (scheme, rest) = v.split_once("://").ok_or("malformed X-Original-URL")?;
                if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
                    return Err("malformed X-Original-URL");
                }
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let (authority, target) = rest.split_at(end);
                if authority.contains('@') {
                    return Err("malformed X-Original-URL");
                }
                hosts.push(host_of(authority)?);
                if target.starts_with('/') {
                    target.to_string()
                } else {
                    format!("/{target}")
                }
            } else {
                v.to_string()
            };
            let (p, q) = match v.split_once('?') {
                Some((p, q)) => (p, Some(q.to_string())),
                None => (v.as_str(), None),
            };
            uris.push((p.to_string(), q));
        }
    }
    if let Some(s) = suffix {
        uris.push((s.to_string(), query.map(str::to_string)));
    }
    for v in h.get_all("x-forwarded-host") {
        hosts.push(host_of(
            v.to_str().map_err(|_| "malformed X-Forwarded-Host")?,
        )?);
    }
    let mut canonical = Vec::with_capacity(uris.len());
    for (p, q) in uris {
        // The URI named is normalized like any request path.
        let p = normalize_path(&p).map_err(|_| "ambiguous or malformed path")?;
        canonical.push((p.into_owned(), q));
    }
    if canonical.windows(2).any(|w| w[0] != w[1]) {
        return Err("conflicting original URI headers");
    }
    if hosts.windows(2).any(|w| w[0] != w[1]) {
        return Err("conflicting original host headers");
    }
    Ok(canonical.into_iter().next().map(|(path, query)| Original {
        path,
        query,
        host: hosts.into_iter().next(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(
        pairs: &[(&str, &str)],
        suffix: Option<&str>,
        query: Option<&str>,
    ) -> Result<Option<Original>, &'static str> {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        original_request(&h, suffix, query)
    }

    fn orig(path: &str, query: Option<&str>, host: Option<&str>) -> Option<Original> {
        Some(Original {
            path: path.into(),
            query: query.map(Into::into),
            host: host.map(Into::into),
        })
    }

    #[test]
    fn each_source_names_the_original_uri() {
        assert_eq!(read(&[], None, None), Ok(None));
        assert_eq!(
            read(
                &[
                    ("x-forwarded-uri", "/a/./b?x=1"),
                    ("x-forwarded-host", "App.Example.com:8443")
                ],
                None,
                None
            ),
            Ok(orig("/a/b", Some("x=1"), Some("app.example.com")))
        );
        assert_eq!(
            read(&[("x-original-uri", "/admin")], None, None),
            Ok(orig("/admin", None, None))
        );
        assert_eq!(
            read(
                &[("x-original-url", "https://App.example.com/admin/x?y")],
                None,
                None
            ),
            Ok(orig("/admin/x", Some("y"), Some("app.example.com")))
        );
        assert_eq!(
            read(&[("x-original-url", "/iis/style")], None, None),
            Ok(orig("/iis/style", None, None))
        );
        // Envoy: the path after /oauth2/auth, the subrequest's own query.
        assert_eq!(
            read(&[], Some("/orders/1"), Some("q=2")),
            Ok(orig("/orders/1", Some("q=2"), None))
        );
    }

    #[test]
    fn sources_that_disagree_are_400() {
        let conflict = Err("conflicting original URI headers");
        assert_eq!(
            read(
                &[
                    ("x-forwarded-uri", "/public"),
                    ("x-original-url", "https://a.example/admin")
                ],
                None,
                None
            ),
            conflict
        );
        assert_eq!(
            read(
                &[("x-forwarded-uri", "/public"), ("x-original-uri", "/admin")],
                None,
                None
            ),
            conflict
        );
        assert_eq!(
            read(
                &[
                    ("x-forwarded-uri", "/public"),
                    ("x-forwarded-uri", "/admin")
                ],
                None,
                None
            ),
            conflict
        );
        assert_eq!(
            read(&[("x-forwarded-uri", "/public")], Some("/admin"), None),
            conflict
        );
        assert_eq!(
            read(
                &[("x-forwarded-uri", "/a?x=1"), ("x-original-uri", "/a?x=2")],
                None,
                None
            ),
            conflict
        );
        assert_eq!(
            read(
                &[
                    ("x-original-url", "https://a.example/x"),
                    ("x-forwarded-host", "b.example")
                ],
                None,
                None
            ),
            Err("conflicting original host headers")
        );
        // The same URI in two spellings agrees.
        assert_eq!(
            read(
                &[
                    ("x-forwarded-uri", "/a//b?x"),
                    ("x-original-url", "http://h.example/a/b?x")
                ],
                None,
                None
            ),
            Ok(orig("/a/b", Some("x"), Some("h.example")))
        );
    }

    #[test]
    fn malformed_sources_are_400() {
        assert!(read(&[("x-forwarded-uri", "/a/%2F/b")], None, None).is_err());
        assert!(read(&[("x-forwarded-uri", "relative")], None, None).is_err());
        assert!(read(&[("x-original-url", "ftp://h/x")], None, None).is_err());
        assert!(read(&[("x-original-url", "not a url")], None, None).is_err());
        // Found by the `forward_auth` fuzz target: a URL library reinterpreted the raw
        // bytes (backslashes as slashes, tabs dropped, `%2e` segments resolved), so the
        // path judged was not the one the application receives; judged raw, they are 400.
        for url in [
            "https://h.example/admin\\..\\public",
            "https://h.example/pub\tlic",
            "https://h.example/%2e%2e/x",
            "https://h.example/admin#/../public",
            "https://a.example\\@b.example/x",
            "https://user@h.example/x",
            "https://h.example:99999/x",
        ] {
            assert!(
                read(&[("x-original-url", url)], None, None).is_err(),
                "{url}"
            );
        }
        assert_eq!(
            read(&[("x-original-url", "https://h.example?q=1")], None, None),
            Ok(orig("/", Some("q=1"), Some("h.example")))
        );
        assert_eq!(
            read(
                &[("x-original-url", "http://[::1]:8080/a/../b")],
                None,
                None
            ),
            Ok(orig("/b", None, Some("[::1]")))
        );
        // A raw `#` in any source is refused too (the application's parser ends the path
        // there).
        assert!(read(&[("x-forwarded-uri", "/admin#/../public")], None, None).is_err());
        // Found by the `forward_auth` fuzz target: after the `?`, a `#` went into the query.
        assert!(read(
            &[("x-original-url", "https://h.example?q.com#x")],
            None,
            None
        )
        .is_err());
        assert!(read(&[("x-forwarded-uri", "/a?q=1#x")], None, None).is_err());
        assert!(read(
            &[
                ("x-forwarded-uri", "/x"),
                ("x-forwarded-host", "bad host:port")
            ],
            None,
            None
        )
        .is_err());
    }
}
