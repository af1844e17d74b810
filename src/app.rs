//! Builds the shared state, spawns the proxy workers and the admin server, and owns
//! shutdown (SIGTERM/SIGINT) and reload (SIGHUP).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};

use crate::admin::metrics::RouteMetrics;
use crate::admin::{Metrics, ReadyCheck};
use crate::config::Config;
use crate::policy::{Allow, RoutePolicy};
use crate::proxy::client::{self, UpstreamClient};
use crate::proxy::headers::IdentityStrip;
use crate::token::TokenValidator;

/// One config generation and everything derived from it. Requests hold the `Arc` they
/// started with, so a reload never changes a request half-way.
pub struct State {
    pub config: Config,
    pub strip: IdentityStrip,
    /// `[worker][upstream]`
    pub clients: Arc<Vec<Vec<UpstreamClient>>>,
    pub route_metrics: Vec<Arc<RouteMetrics>>,
    pub unmatched_metrics: Arc<RouteMetrics>,
    pub metrics: Arc<Metrics>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The route policies, by route index.
    pub policies: Vec<RoutePolicy>,
    /// Validates bearer tokens when any route needs them.
    pub validator: Option<TokenValidator>,
    /// The bearer config the validator was built from (to reuse it across reloads).
    pub validator_key: Option<String>,
    /// Browser login and sessions, when any route needs them.
    pub login: Option<Arc<crate::oidc::login::Login>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error("server.tls: {0}")]
    Tls(crate::proxy::client::ClientBuildError),
    #[error("upstream TLS: {0}")]
    Upstream(crate::proxy::client::ClientBuildError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start runtime: {0}")]
    Runtime(std::io::Error),
    #[error("provider client: {0}")]
    Transport(#[from] crate::oidc::transport::TransportError),
    #[error("login: {0}")]
    Login(#[from] crate::oidc::login::LoginBuildError),
}

impl State {
    /// Everything a config needs before it can serve: TLS material, upstream clients.
    pub fn build(
        config: Config,
        metrics: Arc<Metrics>,
        workers: usize,
        previous: Option<&State>,
    ) -> Result<State, StartError> {
        let tls = match &config.server.tls {
            Some(files) => Some(crate::server::tls::acceptor(files).map_err(StartError::Tls)?),
            None => None,
        };
        let clients =
            client::build_all(&config.upstreams, workers).map_err(StartError::Upstream)?;
        let route_metrics = config
            .routes
            .iter()
            .map(|r| metrics.route(&r.name))
            .collect();
        let unmatched_metrics = metrics.route(&Arc::from("-"));
        let policies = config.routes.iter().map(route_policy).collect();
        let (validator, validator_key) = match crate::config::token_config(&config) {
            None => (None, None),
            Some((bearer, transport, secrets)) => {
                let key = format!("{bearer:?}{transport:?}{secrets}");
                match previous.filter(|p| p.validator_key.as_deref() == Some(key.as_str())) {
                    // Same bearer settings: keep the loaded keys and the token cache.
                    Some(p) => (p.validator.clone(), Some(key)),
                    None => {
                        let transport = crate::oidc::transport::HttpTransport::new(transport)?;
                        (Some(TokenValidator::new(bearer, transport)), Some(key))
                    }
                }
            }
        };
        let login = crate::oidc::login::Login::build(&config)?.map(Arc::new);
        Ok(State {
            login,
            policies,
            validator,
            validator_key,
            strip: IdentityStrip::new(&config.headers.strip),
            config,
            clients,
            route_metrics,
            unmatched_metrics,
            metrics,
            tls,
        })
    }
}

/// Process-wide: the current config generation.
pub struct Shared {
    pub state: ArcSwap<State>,
}

impl Shared {
    /// Ready once listening and, when tokens or logins are configured, once every
    /// issuer's metadata and keys are loaded (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        let state = self.state.load();
        state.metrics.ready.load(Relaxed)
            && state.validator.as_ref().is_none_or(|v| v.is_ready())
            && state
                .login
                .as_ref()
                .is_none_or(|l| l.id_validator.is_ready())
    }
}

/// A running proxy: addresses it listens on, and the handle that stops it.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub admin_addr: Option<std::net::SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    control: Option<tokio::runtime::Runtime>,
}

impl Running {
    /// Stops accepting, drains in-flight requests (up to the drain timeout), and waits.
    pub fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(rt) = self.control.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
        }
    }

    pub fn shutdown_sender(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Blocks until every worker has stopped (after a shutdown signal).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(rt) = self.control.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
        }
    }

    /// Reloads the config file; on any error the running config stays.
    pub fn reload(&self, path: &Path) -> Result<(), StartError> {
        reload(&self.shared, path)
    }
}

pub fn reload(shared: &Shared, path: &Path) -> Result<(), StartError> {
    let current = shared.state.load_full();
    let metrics = current.metrics.clone();
    let result = Config::load(path)
        .map_err(StartError::from)
        .and_then(|c| {
            let old = &current.config.server;
            if c.server.listen != old.listen
                || c.server.admin_listen != old.admin_listen
                || c.server.workers != old.workers
                || c.server.tls.is_some() != old.tls.is_some()
            {
                tracing::warn!(
                    "server.listen, admin_listen, workers and turning TLS on or off take effect on restart only"
                );
            }
            State::build(c, metrics.clone(), current.clients.len(), Some(&current))
        });
    match result {
        Ok(state) => {
            let fresh = state.validator.is_some() && state.validator_key != current.validator_key;
            if fresh {
                if let Some(v) = state.validator.clone() {
                    start_validator(v);
                }
            }
            shared.state.store(Arc::new(state));
            metrics.reloads_ok.fetch_add(1, Relaxed);
            tracing::info!(config = %path.display(), "configuration reloaded");
            Ok(())
        }
        Err(e) => {
            metrics.reloads_failed.fetch_add(1, Relaxed);
            tracing::error!(config = %path.display(), error = %e, "reload failed; keeping the running configuration");
            Err(e)
        }
    }
}

/// Starts the proxy workers and the admin listener. Returns once they are listening.
pub fn start(config: Config, config_path: Option<PathBuf>) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::default());
    let workers = config.server.workers;
    let listen = config.server.listen;
    let admin_listen = config.server.admin_listen;
    let max_conns = config.server.limits.max_connections;
    // The control runtime first: some state (the Redis session store) needs a runtime
    // to be built in.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("portcullis-control")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let state = {
        let _g = control.enter();
        State::build(config, metrics.clone(), workers, None)?
    };
    let shared = Arc::new(Shared {
        state: ArcSwap::from_pointee(state),
    });
    let listeners = crate::server::bind(listen, workers).map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let addr = listeners[0]
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(max_conns));

    let mut admin_addr = None;
    if let Some(a) = admin_listen {
        let l = crate::server::bind(a, 1).map_err(|source| StartError::Bind { addr: a, source })?;
        let l = l.into_iter().next().ok_or(StartError::Bind {
            addr: a,
            source: std::io::Error::other("no listener"),
        })?;
        admin_addr = l.local_addr().ok();
        let listener = {
            let _g = control.enter();
            tokio::net::TcpListener::from_std(l)
                .map_err(|source| StartError::Bind { addr: a, source })?
        };
        let ready: ReadyCheck = {
            let shared = shared.clone();
            Arc::new(move || shared.is_ready())
        };
        control.spawn(crate::admin::serve(
            listener,
            metrics.clone(),
            ready,
            shutdown_rx.clone(),
        ));
    }
    metrics.ready.store(true, Relaxed);
    {
        let shared = shared.clone();
        metrics.add_source(Arc::new(move |out: &mut String| {
            if let Some(v) = &shared.state.load().validator {
                out.push_str(&v.render_metrics());
            }
        }));
    }
    {
        let _g = control.enter();
        if let Some(v) = shared.state.load().validator.clone() {
            start_validator(v);
        }
        if let Some(l) = shared.state.load().login.clone() {
            start_validator(l.id_validator.clone());
        }
    }

    if let Some(path) = config_path {
        let shared = shared.clone();
        let mut stop = shutdown_rx.clone();
        control.spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::error!("cannot install SIGHUP handler; reload disabled");
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading configuration");
                        let _ = reload(&shared, &path);
                    }
                    _ = stop.changed() => return,
                }
            }
        });
    }

    let mut threads = Vec::with_capacity(workers);
    for (id, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let limit = limit.clone();
        let shutdown = shutdown_rx.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let t = std::thread::Builder::new()
            .name(format!("portcullis-worker-{id}"))
            .spawn(move || {
                rt.block_on(crate::server::worker(id, listener, shared, limit, shutdown));
            })
            .map_err(StartError::Runtime)?;
        threads.push(t);
    }
    tracing::info!(%addr, workers, admin = ?admin_addr, "portcullis listening");
    Ok(Running {
        addr,
        admin_addr,
        shared,
        shutdown: shutdown_tx,
        threads,
        control: Some(control),
    })
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully.
pub fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), StartError> {
    let running = start(config, config_path)?;
    let stop = running.shutdown_sender();
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    signals.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    });
    let _ = stop.send(true);
    running.wait();
    tracing::info!("stopped");
    Ok(())
}

/// Loads provider metadata and keys in the background (requests that need them get 503
/// until then) and keeps them fresh.
fn start_validator(v: TokenValidator) {
    let refresh = v.clone();
    tokio::spawn(async move {
        match v.start().await {
            Ok(()) => tracing::info!("bearer token validation ready"),
            Err(e) => {
                tracing::error!(error = %e, cause = ?std::error::Error::source(&e).map(|s| s.to_string()), "token issuer not ready yet; retrying in the background")
            }
        }
    });
    refresh.spawn_refresh();
}

fn route_policy(r: &crate::config::RouteConfig) -> RoutePolicy {
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
