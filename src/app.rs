//! Builds the first config generation, spawns the proxy workers and the admin server, and owns
//! shutdown (SIGTERM/SIGINT) and reload (SIGHUP). Also the one revocation store of the
//! process ([`RevocationHub`]): built at start, handed to every generation, kept by reloads.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};

use crate::admin::{Metrics, ReadyCheck};
use crate::config::Config;
use crate::generation::{BuildError, Fresh, Generation};
use crate::revocation::{RevocationError, Revocations};
use crate::server::Current;
use crate::telemetry::Telemetry;
use crate::token::TokenValidator;

/// The revocation store in use: built once at start and handed to every generation, so
/// that signed-out sessions stay signed out across reloads. A reload that changes only
/// its capacity or file applies them in place; one that changes its backend (memory or
/// Redis) or Redis URL builds a new store (what the old one held is not carried over:
/// logged).
pub struct RevocationHub(Mutex<Revocations>);

impl RevocationHub {
    fn current(&self) -> Revocations {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The store for `c`: the running one if it serves these settings, else a new one
    /// (not installed until [`RevocationHub::commit`]).
    fn for_config(&self, c: &Config) -> Result<(Revocations, bool), RevocationError> {
        let settings = c.revocation_settings();
        let current = self.current();
        if current.serves(&settings) {
            Ok((current, false))
        } else {
            Ok((Revocations::new(&settings)?, true))
        }
    }

    /// Installs the store of a generation that was built: applies its settings in place,
    /// or makes a new store the current one.
    fn commit(&self, c: &Config, store: &Revocations, new: bool) {
        let settings = c.revocation_settings();
        if new {
            tracing::warn!(
                kind = ?settings.kind,
                "session.revocation changed: a new revocation store; what the previous one held is not carried over"
            );
            store.spawn_sweeper();
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = store.clone();
        } else {
            store.reconfigure(&settings);
        }
    }
}

fn log_warnings(c: &Config) {
    for w in c.warnings() {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    /// Building the config's parts (TLS, upstream clients, provider client, login).
    #[error(transparent)]
    Build(Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start runtime: {0}")]
    Runtime(std::io::Error),
    #[error("session.revocation: {0}")]
    Revocation(#[from] RevocationError),
}

impl From<BuildError> for StartError {
    fn from(e: BuildError) -> Self {
        StartError::Build(Box::new(e))
    }
}

/// Ready once listening and, when tokens or logins are configured, once every issuer's
/// metadata and keys are loaded (what `/readyz` reports).
fn is_ready(current: &Current) -> bool {
    let g = current.load();
    g.metrics.ready.load(Relaxed) && g.is_ready()
}

/// A running proxy: addresses it listens on, and the handle that stops it.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub admin_addr: Option<std::net::SocketAddr>,
    pub(crate) current: Current,
    revocations: Arc<RevocationHub>,
    telemetry: Arc<Telemetry>,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    control: Option<tokio::runtime::Runtime>,
}

impl Running {
    /// Listening, and every issuer's metadata and keys loaded (what `/readyz` says).
    pub fn is_ready(&self) -> bool {
        is_ready(&self.current)
    }

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
        let _g = self.control.as_ref().map(|rt| rt.enter());
        reload(&self.current, &self.revocations, &self.telemetry, path)
    }
}

/// Reloads the config file into a new generation; on any error the running one stays.
/// Must run inside the control runtime (validators start there).
pub fn reload(
    current: &Current,
    hub: &RevocationHub,
    telemetry: &Arc<Telemetry>,
    path: &Path,
) -> Result<(), StartError> {
    let running = current.load_full();
    let metrics = running.metrics.clone();
    let result = Config::load(path)
        .map_err(StartError::from)
        .and_then(|c| {
            let old = &running.config.server;
            if c.server.listen != old.listen
                || c.server.admin_listen != old.admin_listen
                || c.server.workers != old.workers
                || c.server.tls.is_some() != old.tls.is_some()
            {
                tracing::warn!(
                    "server.listen, admin_listen, workers and turning TLS on or off take effect on restart only"
                );
            }
            let longest = largest_timeout(&c).as_secs_f64();
            if longest > metrics.largest_bucket() {
                tracing::warn!(
                    longest_timeout_s = longest,
                    largest_bucket_s = metrics.largest_bucket(),
                    "a timeout is now longer than the request histogram's largest bucket; its buckets follow on restart"
                );
            }
            let (store, new) = hub.for_config(&c)?;
            let built = Generation::build(
                c,
                metrics.clone(),
                telemetry,
                running.workers(),
                Some(&running),
                &store,
            )?;
            Ok((built, store, new))
        });
    match result {
        Ok(((generation, fresh), store, new)) => {
            hub.commit(&generation.config, &store, new);
            log_warnings(&generation.config);
            // Before the new validators start: their first provider calls are traced (or
            // not) by the new config.
            telemetry.apply(&generation.config.telemetry);
            start_validators(fresh);
            current.store(Arc::new(generation));
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

/// The longest a request may take before the proxy answers it (the request histogram's
/// buckets reach it).
fn largest_timeout(config: &Config) -> std::time::Duration {
    config
        .routes
        .iter()
        .map(|r| r.timeout)
        .chain([config.server.limits.request_timeout])
        .max()
        .unwrap_or_default()
}

/// Starts the proxy workers and the admin listener. Returns once they are listening.
pub fn start(config: Config, config_path: Option<PathBuf>) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new(largest_timeout(&config)));
    let workers = config.server.workers;
    let listen = config.server.listen;
    let admin_listen = config.server.admin_listen;
    let max_conns = config.server.limits.max_connections;
    metrics.connections_max.store(max_conns as u64, Relaxed);
    // The control runtime first: some state (the Redis session store) needs a runtime
    // to be built in.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("portcullis-control")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    // Randomness is set up now, not on a worker's first request: the request-id seed, and
    // aws-lc's generator (its first use seeds itself from CPU jitter, ~30 ms of CPU; later
    // uses on any thread are cheap).
    crate::exchange::process_seed();
    let mut warm = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut warm).is_err() {
        tracing::warn!("the system random generator failed a first draw");
    }
    log_warnings(&config);
    let telemetry = Telemetry::new(&metrics);
    let (generation, fresh, hub) = {
        let _g = control.enter();
        let store = Revocations::new(&config.revocation_settings())?;
        store.spawn_sweeper();
        let (generation, fresh) =
            Generation::build(config, metrics.clone(), &telemetry, workers, None, &store)?;
        (
            generation,
            fresh,
            Arc::new(RevocationHub(Mutex::new(store))),
        )
    };
    telemetry.apply(&generation.config.telemetry);
    let current: Current = Arc::new(ArcSwap::from_pointee(generation));
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
            let current = current.clone();
            Arc::new(move || is_ready(&current))
        };
        let actions: crate::admin::Actions = {
            let (current, hub) = (current.clone(), hub.clone());
            Arc::new(move || {
                let g = current.load();
                crate::admin::ActionSettings {
                    revocations: hub.current(),
                    token_file: g.config.server.admin_token_file.clone(),
                    sessions: g
                        .config
                        .provider
                        .as_ref()
                        .zip(g.config.session.as_ref())
                        .map(|(p, s)| (p.issuer.clone(), s.lifetime)),
                }
            })
        };
        control.spawn(crate::admin::serve(
            listener,
            metrics.clone(),
            ready,
            actions,
            shutdown_rx.clone(),
        ));
    }
    metrics.ready.store(true, Relaxed);
    {
        let current = current.clone();
        metrics.add_source(Arc::new(move |out: &mut String| {
            if let Some(v) = current.load().tokens() {
                out.push_str(&v.render_metrics());
            }
        }));
        let hub = hub.clone();
        metrics.add_source(Arc::new(move |out: &mut String| {
            out.push_str(&hub.current().render_metrics());
        }));
    }
    {
        let _g = control.enter();
        start_validators(fresh);
    }

    if let Some(path) = config_path {
        let current = current.clone();
        let hub = hub.clone();
        let telemetry = telemetry.clone();
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
                        let _ = reload(&current, &hub, &telemetry, &path);
                    }
                    _ = stop.changed() => return,
                }
            }
        });
    }

    let mut threads = Vec::with_capacity(workers);
    for (id, listener) in listeners.into_iter().enumerate() {
        let current = current.clone();
        let limit = limit.clone();
        let shutdown = shutdown_rx.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let t = std::thread::Builder::new()
            .name(format!("portcullis-worker-{id}"))
            .spawn(move || {
                rt.block_on(crate::server::worker(
                    id, listener, current, limit, shutdown,
                ));
            })
            .map_err(StartError::Runtime)?;
        threads.push(t);
    }
    let admin = admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(%addr, workers, admin, "portcullis listening");
    Ok(Running {
        addr,
        admin_addr,
        current,
        revocations: hub,
        telemetry,
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

/// Loads provider metadata and keys of a new generation's validators in the background
/// (requests that need them get 503 until then) and keeps them fresh.
fn start_validators(fresh: Fresh) {
    for v in fresh.validators {
        start_validator(v);
    }
}

fn start_validator(v: TokenValidator) {
    let refresh = v.clone();
    tokio::spawn(async move {
        match v.start().await {
            Ok(()) => tracing::info!("token validation ready"),
            Err(e) => {
                let cause = std::error::Error::source(&e).map(|s| s.to_string());
                tracing::error!(error = %e, cause = cause.as_deref(), "token issuer not ready yet; retrying in the background")
            }
        }
    });
    refresh.spawn_refresh();
}
