//! One config generation: everything built from one config file, ready to serve. A reload
//! builds a new generation and swaps it in atomically; each request is served by the
//! generation that was current when it arrived.
//!
//! What must outlive a generation is carried from the previous one when its settings did
//! not change ([`Carried`]): the token validator (its keys and token cache), the login
//! (its provider metadata, keys and refresh single-flight), and each upstream's pooled
//! clients (open connections stay open across a reload). The revocation store is not a
//! generation's at all: `app` builds it once and hands it to every build.

use std::collections::HashMap;
use std::sync::Arc;

use crate::admin::metrics::Metrics;
use crate::auth::dpop::DpopVerifier;
use crate::auth::identity_headers::HeaderSettings;
use crate::config::{Config, Limits, PathReadings, UpstreamConfig};
use crate::oidc::login::{Login, LoginBuildError};
use crate::proxy::client::ClientBuildError;
use crate::proxy::header_policy::HeaderPolicy;
use crate::proxy::hygiene::TrustedProxies;
use crate::proxy::pool::UpstreamPool;
use crate::proxy::upstream::Upstream;
use crate::revocation::Revocations;
use crate::routing::layer::HeadLimits;
use crate::routing::table::{CompileError, Parts as RouteParts};
use crate::routing::RouteTable;
use crate::stack::{self, Stack};
use crate::telemetry::Telemetry;
use crate::token::TokenValidator;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("server.tls: {0}")]
    Tls(#[source] ClientBuildError),
    #[error("upstream[{index}] ({name}): {source}")]
    Upstream {
        index: usize,
        name: String,
        #[source]
        source: ClientBuildError,
    },
    #[error("provider client: {0}")]
    Transport(#[from] crate::oidc::transport::TransportError),
    #[error("login: {0}")]
    Login(#[from] LoginBuildError),
    #[error("routes: {0}")]
    Routes(#[from] CompileError),
    #[error("bearer.dpop_nonce: the system random number generator failed")]
    DpopNonces,
    #[error("telemetry: {0}")]
    Telemetry(#[from] crate::telemetry::otlp::StartError),
    #[error("{0}")]
    Assertion(#[from] crate::assertion::AssertionBuildError),
}

/// What is handed from one generation to the next when its settings did not change.
/// Keys are fingerprints of the settings (secrets included, so a changed secret builds
/// anew; file contents included, so a replaced CA file does too).
#[derive(Default, Clone)]
pub struct Carried {
    tokens: Option<(String, TokenValidator)>,
    login: Option<(String, Arc<Login>)>,
    /// Per upstream settings: one client per worker.
    clients: HashMap<String, Arc<[Arc<UpstreamPool>]>>,
}

pub struct Generation {
    /// One stack per worker thread.
    stacks: Box<[Stack]>,
    pub config: Config,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub metrics: Arc<Metrics>,
    carried: Carried,
}

/// What a new generation needs started in the background (loading keys).
pub struct Fresh {
    pub validators: Vec<TokenValidator>,
}

impl Generation {
    /// Builds everything a config needs before it can serve, for `workers` threads,
    /// carrying over from `previous` what did not change. Must run inside a Tokio runtime
    /// (the Redis session store connects in the background).
    pub fn build(
        config: Config,
        metrics: Arc<Metrics>,
        telemetry: &Arc<Telemetry>,
        workers: usize,
        previous: Option<&Generation>,
        revocations: &Revocations,
    ) -> Result<(Generation, Fresh), BuildError> {
        let before = previous.map(|p| &p.carried);
        let mut fresh = Fresh {
            validators: Vec::new(),
        };
        let tls = match &config.server.tls {
            Some(files) => Some(crate::server::tls::acceptor(files).map_err(BuildError::Tls)?),
            None => None,
        };

        let tokens = match crate::token::token_config(&config) {
            None => None,
            Some((bearer, transport, secrets)) => {
                let key = format!("{bearer:?}{transport:?}{secrets}");
                match before
                    .and_then(|c| c.tokens.as_ref())
                    .filter(|(k, _)| *k == key)
                {
                    // Same bearer settings: keep the loaded keys and the token cache.
                    Some((_, v)) => Some((key, v.clone())),
                    None => {
                        let transport = crate::oidc::transport::HttpTransport::new(transport)?
                            .with_telemetry(telemetry.clone());
                        let v = TokenValidator::new(bearer, transport);
                        fresh.validators.push(v.clone());
                        Some((key, v))
                    }
                }
            }
        };

        let login = match Login::fingerprints(&config) {
            None => None,
            Some((_, key)) => {
                let running = before.and_then(|c| c.login.as_ref());
                let same = |(k, l): &&(String, Arc<Login>)| {
                    *k == key && l.revocations.same_store(revocations)
                };
                match running.filter(same) {
                    Some((_, l)) => Some((key, l.clone())),
                    None => match Login::build_traced(
                        &config,
                        running.map(|(_, l)| &**l),
                        revocations,
                        telemetry,
                    )? {
                        Some(l) => {
                            if !running.is_some_and(|(_, r)| l.shares_provider_with(r)) {
                                fresh.validators.push(l.id_validator.clone());
                            }
                            Some((key, Arc::new(l.counting_into(metrics.clone()))))
                        }
                        None => None,
                    },
                }
            }
        };

        let mut clients = HashMap::new();
        let mut per_worker: Vec<Vec<Arc<Upstream>>> = vec![Vec::new(); workers];
        for (index, u) in config.upstreams.iter().enumerate() {
            let key = upstream_key(u);
            let set = match before.and_then(|c| c.clients.get(&key)) {
                Some(set) if set.len() == workers => set.clone(),
                _ => {
                    let mut set = Vec::with_capacity(workers);
                    for _ in 0..workers {
                        let c = UpstreamPool::new(u).map_err(|source| BuildError::Upstream {
                            index,
                            name: u.name.clone(),
                            source,
                        })?;
                        set.push(Arc::new(c));
                    }
                    Arc::<[Arc<UpstreamPool>]>::from(set)
                }
            };
            let name: Arc<str> = u.name.as_str().into();
            for (w, list) in per_worker.iter_mut().enumerate() {
                list.push(Arc::new(Upstream {
                    name: name.clone(),
                    scheme: u.scheme.clone(),
                    authority: u.authority.clone(),
                    base_path: u.base_path.as_str().into(),
                    preserve_host: u.preserve_host,
                    h2: u.h2,
                    exact_readings: u.path_readings == PathReadings::Exact,
                    client: set[w].clone(),
                }));
            }
            clients.insert(key, set);
        }

        // DPoP proofs (RFC 9449): their `jti`s go to the shared replay set.
        let dpop = match &tokens {
            Some(_) => Some(Arc::new(
                DpopVerifier::new(
                    revocations.clone(),
                    config.bearer.as_ref().is_some_and(|b| b.dpop_nonce),
                    config
                        .session
                        .as_ref()
                        .and_then(|s| s.secrets.first())
                        .map(|s| s.expose()),
                )
                .map_err(|_| BuildError::DpopNonces)?,
            )),
            None => None,
        };
        let tracer = telemetry.tracer_for(&config.telemetry)?;
        let strip = Arc::new(HeaderPolicy::new(&config.headers));
        let trusted = TrustedProxies::new(&config.server.trusted_proxies);
        let headers = Arc::new(HeaderSettings::new(config.headers.clone()));
        let prefix: Arc<str> = config.server.proxy_prefix.as_str().into();
        let limits = head_limits(&config.server.limits);
        // Derived or read anew each generation (cheap): the keys follow the secrets.
        let asserter = crate::assertion::Asserter::build(&config)?;
        let assertions = crate::assertion::for_routes(&config, asserter.as_ref());
        let mut stacks = Vec::with_capacity(workers);
        for upstreams in &per_worker {
            let table = RouteTable::compile(
                &config.routes,
                &RouteParts {
                    tokens: tokens.as_ref().map(|(_, v)| v),
                    login: login.as_ref().map(|(_, l)| l),
                    upstreams,
                    metrics: &metrics,
                    dpop: dpop.as_ref(),
                    public_url: config.server.public_url.as_ref(),
                    tls: config.server.tls.is_some(),
                    client_cert_header: config
                        .bearer
                        .as_ref()
                        .is_some_and(|b| b.client_cert_header),
                    asserter: asserter.as_ref(),
                    assertions: &assertions,
                },
            )?;
            stacks.push(stack::build(&stack::Parts {
                table: Arc::new(table),
                limits,
                prefix: prefix.clone(),
                strip: strip.clone(),
                trusted: trusted.clone(),
                headers: headers.clone(),
                login: login.as_ref().map(|(_, l)| l.clone()),
                metrics: metrics.clone(),
                body_read_timeout: config.server.limits.body_read_timeout,
                tracer: tracer.clone(),
            }));
        }
        Ok((
            Generation {
                stacks: stacks.into_boxed_slice(),
                config,
                tls,
                metrics,
                carried: Carried {
                    tokens,
                    login,
                    clients,
                },
            },
            fresh,
        ))
    }

    /// The stack of worker `worker` (the last one if there are fewer, which a reload
    /// cannot cause: `workers` needs a restart).
    pub fn stack(&self, worker: usize) -> &Stack {
        &self.stacks[worker.min(self.stacks.len() - 1)]
    }

    pub fn workers(&self) -> usize {
        self.stacks.len()
    }

    pub fn limits(&self) -> &Limits {
        &self.config.server.limits
    }

    /// Ready once every issuer's metadata and keys are loaded (what `/readyz` reports,
    /// beside the listeners being up).
    pub fn is_ready(&self) -> bool {
        self.carried
            .tokens
            .as_ref()
            .is_none_or(|(_, v)| v.is_ready())
            && self
                .carried
                .login
                .as_ref()
                .is_none_or(|(_, l)| l.id_validator.is_ready())
    }

    /// The bearer token validator, when any route takes tokens (for its metrics).
    pub fn tokens(&self) -> Option<&TokenValidator> {
        self.carried.tokens.as_ref().map(|(_, v)| v)
    }
}

fn head_limits(l: &Limits) -> HeadLimits {
    HeadLimits {
        max_uri_length: l.max_uri_length,
        max_headers: l.max_headers,
        max_header_bytes: l.max_header_bytes,
    }
}

/// The settings of one upstream client, with the contents of its CA and certificate
/// files (a replaced file means a new client).
fn upstream_key(u: &UpstreamConfig) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(format!("{u:?}").as_bytes());
    let files = u
        .ca_file
        .iter()
        .chain(u.client_cert.iter().flat_map(|(c, k)| [c, k]));
    for f in files {
        // An unreadable file fails the build itself; here it only changes the key.
        ctx.update(&std::fs::read(f).unwrap_or_default());
        ctx.update(&[0]);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
