//! The auth layer: asks the gate about every routed request, answers refusals, and on a
//! pass writes the identity headers (after hygiene removed every client-sent copy) and
//! removes the proxy's cookies and the token's `Authorization` header.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::header::{HeaderValue, SET_COOKIE};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::bearer;
use super::client_cert::ClientCert;
use super::gate::{self, Denied, Judged};
use super::identity_headers::{self, HeaderSettings};
use crate::error::Refusal;
use crate::exchange::Answer;
use crate::routing::{RouteAuth, Routed};

/// The proxy's own cookie name (session, its chunks, login transactions), when logins are
/// configured: stripped from every request before it goes upstream.
pub type OwnCookie = Option<Arc<str>>;

#[derive(Clone)]
pub struct AuthLayer {
    headers: Arc<HeaderSettings>,
    own_cookie: OwnCookie,
}

impl AuthLayer {
    pub fn new(headers: Arc<HeaderSettings>, own_cookie: OwnCookie) -> Self {
        AuthLayer {
            headers,
            own_cookie,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            headers: self.headers.clone(),
            own_cookie: self.own_cookie.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    headers: Arc<HeaderSettings>,
    own_cookie: OwnCookie,
}

fn strip_own_cookies(own: &OwnCookie, h: &mut http::HeaderMap) {
    if let Some(base) = own {
        crate::session::strip::strip_proxy_cookies(h, &[base]);
    }
}

type BoxAnswer = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

pin_project! {
    /// Public routes go straight through (no await, no box); the others wait for the gate.
    #[project = AuthProj]
    pub enum AuthFuture<F> {
        Public { #[pin] fut: F },
        Gated { fut: BoxAnswer },
    }
}

impl<F: Future<Output = Result<Answer, Infallible>>> Future for AuthFuture<F> {
    type Output = Result<Answer, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthProj::Public { fut } => fut.poll(cx),
            AuthProj::Gated { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S, B> Service<Routed<B>> for Auth<S>
where
    S: Service<Routed<B>, Response = Answer, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = AuthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut r: Routed<B>) -> Self::Future {
        if let Err(refusal) = token_placement(&mut r) {
            return AuthFuture::Gated {
                fut: Box::pin(std::future::ready(Ok(refuse(refusal.into(), &r)))),
            };
        }
        if let RouteAuth::Public = r.route.auth {
            // Nothing to prove; the proxy's cookies still go no further.
            strip_own_cookies(&self.own_cookie, r.req.headers_mut());
            return AuthFuture::Public {
                fut: self.inner.call(r),
            };
        }
        // The ready service goes into the future; a fresh clone stays (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let headers = self.headers.clone();
        let own_cookie = self.own_cookie.clone();
        let fut = async move {
            let judged = Judged {
                method: r.req.method(),
                headers: r.req.headers(),
                path_and_query: r.req.uri().path_and_query().map_or("/", |p| p.as_str()),
                authority: r.req.uri().authority().map(|a| a.as_str()).or_else(|| {
                    r.req
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                }),
                request_id: r.id.as_str(),
                forward_auth: false,
                // From a trusted proxy the header is the client's certificate (the
                // hygiene layer dropped it from anyone else); else the connection's.
                client_cert: ClientCert::of(
                    r.route.client_cert_header && r.trusted_peer,
                    r.conn.client_cert(),
                    r.req.headers(),
                ),
            };
            let mut passed = match gate::authenticate(&r.route, &r.also, &judged).await {
                Ok(p) => p,
                Err(denied) => return Ok(refuse(denied, &r)),
            };
            // Authentication has read the session: the proxy's cookies go no further.
            strip_own_cookies(&own_cookie, r.req.headers_mut());
            // A DPoP proof (RFC 9449) is for this hop only, like the token's header.
            if !headers.cfg.pass_authorization {
                r.req.headers_mut().remove("dpop");
            }
            let Some(identity) = passed.identity.take() else {
                // A CORS preflight let through by allow_preflight.
                return inner.call(r).await;
            };
            let token = passed.token_for(r.req.headers(), &headers.cfg);
            let applied = identity_headers::apply(
                r.req.headers_mut(),
                &headers,
                &identity,
                token.as_deref(),
                headers.cfg.pass_authorization,
            );
            let rendered = match applied {
                Ok(rendered) => rendered,
                Err(e) => {
                    return Ok(refuse(
                        Denied {
                            refusal: Refusal::UnsafeIdentity(e),
                            set_cookies: Vec::new(),
                            user: Some(identity),
                            page: None,
                        },
                        &r,
                    ))
                }
            };
            // The signed assertion (hygiene removed any client-sent copy), cached on the
            // identity's rendering.
            if let Some(assertion) = &r.route.assertion {
                match assertion.value(&identity, &rendered, SystemTime::now()) {
                    Some(v) => {
                        r.req.headers_mut().insert(assertion.header().clone(), v);
                    }
                    None => {
                        return Ok(refuse(
                            Denied {
                                refusal: Refusal::Internal(
                                    "the identity assertion could not be signed",
                                ),
                                set_cookies: Vec::new(),
                                user: Some(identity),
                                page: None,
                            },
                            &r,
                        ))
                    }
                }
            }
            let mut answer = inner.call(r).await?;
            append_cookies(&mut answer, passed.set_cookies);
            answer.user = Some(identity);
            Ok(answer)
        };
        AuthFuture::Gated { fut: Box::pin(fut) }
    }
}

/// RFC 6750 §2, on routes that take tokens: a token in the `Authorization` header and
/// another in the `access_token` query parameter is a malformed request (400); a query
/// token alone is no credential here, and is taken out of the query so that it never
/// reaches the upstream (or its logs). Form bodies are not read.
fn token_placement<B>(r: &mut Routed<B>) -> Result<(), Refusal> {
    if !matches!(
        r.route.auth,
        RouteAuth::Bearer(_) | RouteAuth::Either { .. }
    ) {
        return Ok(());
    }
    let Some(query) = r.req.uri().query().filter(|q| bearer::query_has_token(q)) else {
        return Ok(());
    };
    if !matches!(bearer::extract(r.req.headers()), bearer::Extracted::Missing) {
        return Err(Refusal::TokenTwice);
    }
    let path = r.req.uri().path();
    let pq = match bearer::query_without_token(query) {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = r.req.uri().clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::from_maybe_shared(pq)
            .map_err(|_| Refusal::BadRequest("malformed request target"))?,
    );
    *r.req.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| Refusal::BadRequest("malformed request target"))?;
    tracing::debug!("removed an access_token query parameter");
    Ok(())
}

fn append_cookies(answer: &mut Answer, cookies: Vec<HeaderValue>) {
    for c in cookies {
        answer.resp.headers_mut().append(SET_COOKIE, c);
    }
}

fn refuse<B>(denied: Denied, r: &Routed<B>) -> Answer {
    let (id, headers) = (r.id.as_str(), r.req.headers());
    let mut resp = match &denied.page {
        Some(page) => denied
            .refusal
            .respond_page(id, crate::error::wants_html(headers), page),
        None => denied.refusal.respond(id, r.req.method(), headers),
    };
    for c in denied.set_cookies {
        resp.headers_mut().append(SET_COOKIE, c);
    }
    let mut answer = Answer::from(resp);
    answer.user = denied.user;
    answer
}
