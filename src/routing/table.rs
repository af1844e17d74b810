//! The route table: the config's `[[route]]`s compiled once per generation, for one
//! worker (each entry holds that worker's upstream client). An entry carries everything a
//! request on it needs (name, host, prefix, policy, auth mode with its validator or login
//! object, upstream, timeout, counters), so no layer looks anything up by index and "a
//! bearer route without a validator" cannot be built.

use std::sync::Arc;
use std::time::Duration;

use crate::admin::metrics::{Metrics, RouteMetrics};
use crate::assertion::{Asserter, RouteAssertion};
use crate::auth::dpop::{DpopVerifier, HtuBase};
use crate::config::{AuthMode, RouteConfig};
use crate::oidc::login::Login;
use crate::path::{
    has_other_readings, plain_prefix_matches, prefix_matches, readings, strip_route_prefix, Reading,
};
use crate::policy::{Allow, RoutePolicy};
use crate::proxy::upstream::Upstream;
use crate::token::TokenValidator;

/// How a route authenticates, with what it needs to do so.
#[derive(Clone)]
pub enum RouteAuth {
    /// No identity needed (identity headers are still stripped).
    Public,
    /// `Authorization: Bearer` only.
    Bearer(TokenValidator),
    /// The session cookie; browsers without one are sent to the login.
    Login(Arc<Login>),
    /// A request with a bearer token is judged on it alone; otherwise on the session.
    Either {
        tokens: TokenValidator,
        login: Arc<Login>,
    },
}

impl RouteAuth {
    pub fn mode(&self) -> AuthMode {
        match self {
            RouteAuth::Public => AuthMode::Public,
            RouteAuth::Bearer(_) => AuthMode::Bearer,
            RouteAuth::Login(_) => AuthMode::Login,
            RouteAuth::Either { .. } => AuthMode::Either,
        }
    }
}

pub struct Route {
    /// Label in logs and metrics.
    pub name: Arc<str>,
    /// Lowercase host without port; `None` matches any host.
    pub host: Option<Box<str>>,
    /// Canonical prefix: starts with `/`, no trailing slash unless it is `/`.
    pub prefix: Box<str>,
    /// The prefix in ASCII lower case, for case-folded readings of a path.
    prefix_folded: Box<str>,
    /// The prefix has a `;` (validation allows it; matching then ignores parameters).
    prefix_has_params: bool,
    pub strip_prefix: bool,
    pub policy: RoutePolicy,
    pub auth: RouteAuth,
    pub upstream: Arc<Upstream>,
    /// The whole proxied exchange up to the response head (504 after).
    pub timeout: Duration,
    pub metrics: Arc<RouteMetrics>,
    /// `require_sender_constraint`: plain bearer tokens are refused here.
    pub require_sender_constraint: bool,
    /// Where this route's requests are as clients see them (DPoP `htu`); `None`: DPoP
    /// tokens are refused here.
    pub htu_base: Option<HtuBase>,
    /// Checks DPoP proofs (with the replay set), on routes that take tokens.
    pub dpop: Option<Arc<DpopVerifier>>,
    /// `bearer.client_cert_header`: the client certificate of mTLS-bound tokens is read
    /// from `X-Forwarded-Client-Cert` when a trusted proxy sent the request.
    pub client_cert_header: bool,
    /// `assertion = true`: the signed identity assertion added upstream.
    pub assertion: Option<Arc<RouteAssertion>>,
}

impl Route {
    /// The path sent upstream: the canonical path, minus the prefix when stripped.
    pub fn upstream_path<'p>(&self, path: &'p str) -> &'p str {
        strip_route_prefix(&self.prefix, self.strip_prefix, path)
    }

    /// `plain`: the path has no `;` (no path parameters), so a byte comparison decides.
    /// `folded`: `path` is in lower case and is compared with the folded prefix.
    fn matches(&self, host: Option<&str>, path: &str, plain: bool, folded: bool) -> bool {
        let prefix = if folded {
            &self.prefix_folded
        } else {
            &self.prefix
        };
        self.host.as_deref().is_none_or(|h| Some(h) == host)
            && if plain && !self.prefix_has_params {
                plain_prefix_matches(prefix, path)
            } else {
                prefix_matches(prefix, path)
            }
    }
}

/// The routes in file order: the first match wins.
pub struct RouteTable {
    routes: Box<[Arc<Route>]>,
    /// Some prefix has an upper-case letter: a case-folded reading of any path may then
    /// select another route.
    upper_prefixes: bool,
    /// The assertion signer, when any route asks for assertions (its keys are published).
    asserter: Option<Arc<Asserter>>,
}

/// The routes a request is subject to: the one its canonical path selects (it decides
/// the upstream, `strip_prefix` and timeouts) and those other readings of the path select
/// (their policies must pass too).
pub struct Selected {
    pub route: Arc<Route>,
    pub also: Vec<Arc<Route>>,
}

/// The readings of a path select routes that cannot be enforced together.
#[derive(Debug, thiserror::Error)]
#[error("read as {reading:?} the path selects route {other:?} (another upstream or auth mode than {route:?})")]
pub struct ReadingConflict {
    pub reading: String,
    pub route: Arc<str>,
    pub other: Arc<str>,
}

/// A config that validation accepted but that cannot be compiled: a bug in validation,
/// reported instead of served.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("route[{index}] ({name}): auth = \"{mode}\" but no {what} was built")]
    MissingAuth {
        index: usize,
        name: Arc<str>,
        mode: &'static str,
        what: &'static str,
    },
    #[error("route[{index}] ({name}): no upstream number {upstream}")]
    MissingUpstream {
        index: usize,
        name: Arc<str>,
        upstream: usize,
    },
}

/// What routes are built from besides their own config.
pub struct Parts<'a> {
    /// Validates bearer tokens, when any route takes them.
    pub tokens: Option<&'a TokenValidator>,
    /// Browser login and sessions, when any route uses them.
    pub login: Option<&'a Arc<Login>>,
    /// This worker's upstreams, in config order.
    pub upstreams: &'a [Arc<Upstream>],
    pub metrics: &'a Metrics,
    /// Checks DPoP proofs, when any route takes tokens.
    pub dpop: Option<&'a Arc<DpopVerifier>>,
    /// `server.public_url`: the origin DPoP proofs name.
    pub public_url: Option<&'a url::Url>,
    /// The listener speaks TLS (the scheme of a route's `host` for DPoP).
    pub tls: bool,
    /// `bearer.client_cert_header` is set.
    pub client_cert_header: bool,
    /// The assertion signer, when any route asks for assertions.
    pub asserter: Option<&'a Arc<Asserter>>,
    /// Per route index, its assertion (`assertion::for_routes`); shorter: none.
    pub assertions: &'a [Option<Arc<RouteAssertion>>],
}

impl RouteTable {
    pub fn compile(routes: &[RouteConfig], parts: &Parts<'_>) -> Result<RouteTable, CompileError> {
        let mut out = Vec::with_capacity(routes.len());
        for (index, r) in routes.iter().enumerate() {
            let missing = |what| CompileError::MissingAuth {
                index,
                name: r.name.clone(),
                mode: r.auth.as_str(),
                what,
            };
            let auth = match r.auth {
                AuthMode::Public => RouteAuth::Public,
                AuthMode::Bearer => {
                    RouteAuth::Bearer(parts.tokens.cloned().ok_or(missing("token validator"))?)
                }
                AuthMode::Login => RouteAuth::Login(parts.login.cloned().ok_or(missing("login"))?),
                AuthMode::Either => RouteAuth::Either {
                    tokens: parts.tokens.cloned().ok_or(missing("token validator"))?,
                    login: parts.login.cloned().ok_or(missing("login"))?,
                },
            };
            let upstream =
                parts
                    .upstreams
                    .get(r.upstream)
                    .cloned()
                    .ok_or(CompileError::MissingUpstream {
                        index,
                        name: r.name.clone(),
                        upstream: r.upstream,
                    })?;
            out.push(Arc::new(Route {
                name: r.name.clone(),
                host: r.host.as_deref().map(Box::from),
                prefix: r.path.as_str().into(),
                prefix_folded: r.path.to_ascii_lowercase().into(),
                prefix_has_params: r.path.contains(';'),
                strip_prefix: r.strip_prefix,
                policy: policy(r),
                auth,
                upstream,
                timeout: r.timeout,
                metrics: parts.metrics.route(&r.name),
                require_sender_constraint: r.require_sender_constraint,
                htu_base: HtuBase::for_route(parts.public_url, r.host.as_deref(), parts.tls),
                dpop: parts.dpop.cloned(),
                client_cert_header: parts.client_cert_header,
                assertion: parts.assertions.get(index).cloned().flatten(),
            }));
        }
        Ok(RouteTable {
            upper_prefixes: routes
                .iter()
                .any(|r| r.path.bytes().any(|b| b.is_ascii_uppercase())),
            routes: out.into_boxed_slice(),
            asserter: parts.asserter.cloned(),
        })
    }

    /// The assertion signer (its JWKS is served at `assertion::JWKS_PATH`), when any route
    /// asks for assertions.
    pub fn asserter(&self) -> Option<&Arc<Asserter>> {
        self.asserter.as_ref()
    }

    /// The first route whose host (if set) and path prefix match. `host` is lowercase
    /// without port; `path` canonical.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let plain = !path.contains(';');
        self.routes
            .iter()
            .find(|r| r.matches(host, path, plain, false))
    }

    /// The first route for a path in lower case, compared with folded prefixes.
    fn find_folded(&self, host: Option<&str>, lower: &str) -> Option<&Arc<Route>> {
        let plain = !lower.contains(';');
        self.routes
            .iter()
            .find(|r| r.matches(host, lower, plain, true))
    }

    /// The routes a request for `path` (canonical) is subject to, by the path-reading
    /// rule (README "Path readings"): every route that a common reading of the path
    /// selects must let the request through. Readings that select a route with another
    /// upstream or another auth mode cannot be enforced together: `Err`. Routes whose
    /// upstream reads paths exactly (`path_readings = "exact"`) consider the canonical
    /// path only. `None`: no route for the canonical path.
    pub fn select(
        &self,
        host: Option<&str>,
        path: &str,
    ) -> Result<Option<Selected>, ReadingConflict> {
        let Some(route) = self.find(host, path) else {
            return Ok(None);
        };
        let mut selected = Selected {
            route: route.clone(),
            also: Vec::new(),
        };
        if route.upstream.exact_readings || !(self.upper_prefixes || has_other_readings(path)) {
            return Ok(Some(selected));
        }
        let mut readings = readings(path);
        if self.upper_prefixes {
            readings.push(Reading {
                path: path.to_ascii_lowercase(),
                folded: true,
            });
        }
        for r in readings {
            let other = if r.folded {
                self.find_folded(host, &r.path)
            } else {
                self.find(host, &r.path)
            };
            let Some(other) = other else { continue };
            if Arc::ptr_eq(other, route) || selected.also.iter().any(|a| Arc::ptr_eq(a, other)) {
                continue;
            }
            if !Arc::ptr_eq(&other.upstream, &route.upstream)
                || other.auth.mode() != route.auth.mode()
            {
                return Err(ReadingConflict {
                    reading: r.path,
                    route: route.name.clone(),
                    other: other.name.clone(),
                });
            }
            selected.also.push(other.clone());
        }
        Ok(Some(selected))
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

fn policy(r: &RouteConfig) -> RoutePolicy {
    RoutePolicy {
        scopes: r.scopes.clone(),
        method_scopes: r.method_scopes.clone(),
        allow: r.allow.as_ref().map(|a| Allow {
            groups: a.groups.clone().unwrap_or_default(),
            emails: a.emails.clone().unwrap_or_default(),
            email_domains: a.email_domains.clone().unwrap_or_default(),
            claims: a.claims.clone().unwrap_or_default(),
        }),
        allow_preflight: r.allow_preflight,
    }
}
