//! A lean per-worker connection pool for one upstream, on hyper's own `client::conn`.
//!
//! - HTTP/1.1: a LIFO list of idle connections (at most `pool_max_idle`, each dropped after
//!   `pool_idle_timeout`, checked lazily). A connection goes back to the list once its
//!   exchange is over, response body included: see `Checkout::release` and `H1Driver`.
//!   Upgrades (`101 Switching Protocols`) work; an upgraded connection never returns.
//! - HTTP/2 (`h2 = true`, ALPN `h2` over TLS, prior knowledge over plain TCP): one
//!   multiplexed connection shared by every request, opened again when it closes.
//!
//! A request that a reused connection did not send (the upstream had closed it while it
//! was idle) is sent once more, on a new connection. DNS, TCP and TLS together get
//! `connect_timeout`.
//!
//! Everything is per worker thread (a current_thread runtime): connections are spawned
//! with `tokio::spawn` on the runtime of the request that opened them.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{HeaderValue, HOST};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::client::{tls_client_config, ClientBuildError};
use crate::body::{BodyTimeout, ClientBodyError, ReqBody};
use crate::config::UpstreamConfig;

/// TCP keepalive probes start after this much silence (as the legacy client had it).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a request to the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made: DNS, TCP, TLS, the connect timeout, the handshake.
    #[error("cannot connect to the upstream")]
    Connect(#[source] ConnectError),
    /// The exchange failed on an established connection (this includes a request body
    /// that failed, e.g. [`BodyTimeout`]).
    #[error("the upstream request failed")]
    Request(#[source] hyper::Error),
}

impl PoolError {
    /// A connection to the upstream could not be established.
    pub fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect(_))
    }

    /// The request failed because the client's body paused for longer than the body read
    /// timeout ([`BodyTimeout`] is in the source chain).
    pub fn is_body_timeout(&self) -> bool {
        self.caused_by::<BodyTimeout>()
    }

    /// The request failed because the client's body did ([`ClientBodyError`]: malformed
    /// framing, a reset).
    pub fn is_client_body_error(&self) -> bool {
        self.caused_by::<ClientBodyError>()
    }

    fn caused_by<E: std::error::Error + 'static>(&self) -> bool {
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            if s.is::<E>() {
                return true;
            }
            source = s.source();
        }
        false
    }
}

/// How establishing a connection failed. The message carries the cause (the proxy logs
/// one level of source).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("resolving the upstream host: {0}")]
    Resolve(io::Error),
    #[error("the upstream host resolved to no address")]
    NoAddress,
    #[error("TCP connect: {0}")]
    Tcp(io::Error),
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP handshake: {0}")]
    Handshake(hyper::Error),
    /// Another request's attempt to open the shared HTTP/2 connection failed while this
    /// one waited for it.
    #[error("the HTTP/2 connection attempt this request waited for failed")]
    Shared,
}

/// One upstream's connections, for one worker thread.
pub struct UpstreamPool {
    target: Target,
    proto: Proto,
    #[cfg(test)]
    retries: std::sync::atomic::AtomicUsize,
}

/// Where and how to connect.
struct Target {
    /// Host to resolve (an IPv6 literal without its brackets).
    host: Box<str>,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    /// The configured authority and the `Host` header made from it (default port left
    /// out), added to HTTP/1.1 requests that have none.
    authority: Authority,
    host_header: HeaderValue,
}

enum Proto {
    H1 {
        builder: http1::Builder,
        idle: Arc<H1Idle>,
    },
    H2 {
        builder: http2::Builder<TokioExecutor>,
        conn: H2Conn,
    },
}

impl UpstreamPool {
    pub fn new(u: &UpstreamConfig) -> Result<UpstreamPool, ClientBuildError> {
        let https = u.scheme == Scheme::HTTPS;
        let raw_host = u.authority.host();
        let host = raw_host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(raw_host);
        let port = u
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut cfg = tls_client_config(
                u.ca_file.as_deref(),
                u.client_cert
                    .as_ref()
                    .map(|(c, k)| (c.as_path(), k.as_path())),
                true,
            )?;
            cfg.alpn_protocols = vec![if u.h2 {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }];
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| ClientBuildError::InvalidHost(host.to_owned()))?;
            Some((TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        let host_header = host_header(&u.authority, https)
            .ok_or_else(|| ClientBuildError::InvalidHost(u.authority.as_str().to_owned()))?;
        let proto = if u.h2 {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            Proto::H2 {
                builder,
                conn: H2Conn::default(),
            }
        } else {
            Proto::H1 {
                builder: http1::Builder::new(),
                idle: Arc::new(H1Idle {
                    list: Mutex::new(VecDeque::new()),
                    max_idle: u.pool_max_idle,
                    idle_timeout: u.pool_idle_timeout,
                }),
            }
        };
        Ok(UpstreamPool {
            target: Target {
                host: host.into(),
                port,
                tls,
                connect_timeout: u.connect_timeout,
                authority: u.authority.clone(),
                host_header,
            },
            proto,
            #[cfg(test)]
            retries: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Sends one request (absolute URI with the upstream's scheme and authority, or for
    /// HTTP/1.1 origin-form) and returns the response head with its streaming body.
    ///
    /// HTTP/1.1: the request goes out in origin-form (`/path?query`), with a `Host` header
    /// made from the URI's authority when it has none. HTTP/2: as given (hyper takes
    /// `:scheme` and `:authority` from the URI).
    pub async fn send(&self, req: Request<ReqBody>) -> Result<Response<Incoming>, PoolError> {
        match &self.proto {
            Proto::H1 { builder, idle } => self.send_h1(builder, idle, req).await,
            Proto::H2 { builder, conn } => self.send_h2(builder, conn, req).await,
        }
    }

    async fn send_h1(
        &self,
        builder: &http1::Builder,
        idle: &Arc<H1Idle>,
        mut req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        self.h1_request_target(&mut req);
        // Connecting is boxed: the connect and TLS futures are large, and the common path
        // (a pooled connection) should not carry (and move) them in every request's future.
        let (mut conn, mut reused) = match idle.checkout() {
            Some(c) => (c, true),
            None => (Box::pin(self.connect_h1(builder, idle)).await?, false),
        };
        loop {
            match conn.tx.try_send_request(req).await {
                Ok(resp) => {
                    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                        conn.release(idle);
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the pooled connection was closed under us. Once, on a new one.
                    Some(back) if reused => {
                        req = back;
                        reused = false;
                        drop(conn);
                        #[cfg(test)]
                        self.retries
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        conn = Box::pin(self.connect_h1(builder, idle)).await?;
                    }
                    _ => return Err(PoolError::Request(e.into_error())),
                },
            }
        }
    }

    /// Origin-form target and a `Host` header, as HTTP/1.1 wants them.
    fn h1_request_target(&self, req: &mut Request<ReqBody>) {
        if req.uri().authority().is_none() {
            // Already origin-form (the forwarder's way): only `Host` may be missing.
            if !req.headers().contains_key(HOST) {
                req.headers_mut()
                    .insert(HOST, self.target.host_header.clone());
            }
            return;
        }
        let parts = std::mem::take(req.uri_mut()).into_parts();
        if !req.headers().contains_key(HOST) {
            let host = match &parts.authority {
                Some(a) if *a != self.target.authority => {
                    let https = parts.scheme.as_ref() == Some(&Scheme::HTTPS);
                    host_header(a, https)
                }
                _ => Some(self.target.host_header.clone()),
            };
            if let Some(h) = host {
                req.headers_mut().insert(HOST, h);
            }
        }
        *req.uri_mut() = match parts.path_and_query {
            Some(pq) => Uri::from(pq),
            None => Uri::default(),
        };
    }

    async fn connect_h1(
        &self,
        builder: &http1::Builder,
        idle: &Arc<H1Idle>,
    ) -> Result<Checkout, PoolError> {
        let io = self.target.connect().await.map_err(PoolError::Connect)?;
        let (tx, conn) = builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| PoolError::Connect(ConnectError::Handshake(e)))?;
        let slot = Arc::new(Slot::default());
        tokio::spawn(H1Driver {
            conn: conn.with_upgrades(),
            slot: slot.clone(),
            pool: Arc::downgrade(idle),
        });
        Ok(Checkout { tx, slot })
    }

    async fn send_h2(
        &self,
        builder: &http2::Builder<TokioExecutor>,
        h2: &H2Conn,
        mut req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        let (mut tx, mut id, fresh) = match h2.live() {
            Some((tx, id)) => (tx, id, false),
            None => Box::pin(self.h2_sender(builder, h2)).await?,
        };
        let mut may_retry = !fresh;
        loop {
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    // Not sent: the shared connection was closing. Once, on a new one.
                    Some(back) if may_retry => {
                        req = back;
                        may_retry = false;
                        h2.forget(id);
                        #[cfg(test)]
                        self.retries
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        (tx, id, _) = Box::pin(self.h2_sender(builder, h2)).await?;
                    }
                    _ => return Err(PoolError::Request(e.into_error())),
                },
            }
        }
    }

    /// The shared HTTP/2 connection, opened if there is none alive. Only one request opens
    /// it; a burst waits for that one (and fails with it).
    async fn h2_sender(
        &self,
        builder: &http2::Builder<TokioExecutor>,
        h2: &H2Conn,
    ) -> Result<(http2::SendRequest<ReqBody>, u64, bool), PoolError> {
        let seen_failures = {
            let state = lock(&h2.state);
            if let Some(tx) = state.live() {
                return Ok((tx, state.id, false));
            }
            state.failures
        };
        let _gate = h2.gate.lock().await;
        {
            let state = lock(&h2.state);
            if let Some(tx) = state.live() {
                return Ok((tx, state.id, false));
            }
            if state.failures != seen_failures {
                return Err(PoolError::Connect(ConnectError::Shared));
            }
        }
        match self.connect_h2(builder).await {
            Ok(tx) => {
                let mut state = lock(&h2.state);
                state.id += 1;
                state.tx = Some(tx.clone());
                Ok((tx, state.id, true))
            }
            Err(e) => {
                lock(&h2.state).failures += 1;
                Err(e)
            }
        }
    }

    async fn connect_h2(
        &self,
        builder: &http2::Builder<TokioExecutor>,
    ) -> Result<http2::SendRequest<ReqBody>, PoolError> {
        let io = self.target.connect().await.map_err(PoolError::Connect)?;
        let (tx, conn) = builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| PoolError::Connect(ConnectError::Handshake(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(tx)
    }

    #[cfg(test)]
    fn idle_len(&self) -> usize {
        match &self.proto {
            Proto::H1 { idle, .. } => lock(&idle.list).len(),
            Proto::H2 { .. } => 0,
        }
    }

    #[cfg(test)]
    fn retries(&self) -> usize {
        self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `Host` as the legacy client made it: the authority, without a default port.
fn host_header(a: &Authority, https: bool) -> Option<HeaderValue> {
    let default_port = if https { 443 } else { 80 };
    let text = match a.port_u16() {
        Some(p) if p == default_port => a.host(),
        _ => a.as_str(),
    };
    HeaderValue::from_str(text).ok()
}

/// A poisoned lock only means a panic elsewhere; the pool's data stays consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- HTTP/1.1 ----

/// The idle HTTP/1.1 connections: most recently used at the back.
struct H1Idle {
    list: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    tx: http1::SendRequest<ReqBody>,
    slot: Arc<Slot>,
    since: Instant,
}

/// A connection's hand-back point: the sender of an exchange whose response body (or
/// request body) is still streaming waits here until the connection can take its next
/// request; its driver then moves it to the idle list.
#[derive(Default)]
struct Slot {
    parked: Mutex<Option<http1::SendRequest<ReqBody>>>,
}

/// A connection taken for one request.
struct Checkout {
    tx: http1::SendRequest<ReqBody>,
    slot: Arc<Slot>,
}

impl H1Idle {
    /// The most recently used idle connection that can take a request. An expired one
    /// means every older one is expired too: all are dropped.
    fn checkout(&self) -> Option<Checkout> {
        let now = Instant::now();
        loop {
            let entry = {
                let mut list = lock(&self.list);
                let entry = list.pop_back()?;
                if now.saturating_duration_since(entry.since) >= self.idle_timeout {
                    let expired = std::mem::take(&mut *list);
                    drop(list);
                    drop(expired);
                    return None;
                }
                entry
            };
            // Not ready means closed (by the upstream, or after an error): drop it.
            if entry.tx.is_ready() {
                return Some(Checkout {
                    tx: entry.tx,
                    slot: entry.slot,
                });
            }
        }
    }

    /// Adds a connection ready for its next request; evicts the oldest (beyond
    /// `pool_max_idle`, or expired) outside the lock.
    fn put(&self, tx: http1::SendRequest<ReqBody>, slot: Arc<Slot>) {
        if self.max_idle == 0 {
            return;
        }
        let since = Instant::now();
        let evicted = {
            let mut list = lock(&self.list);
            let full = list.len() >= self.max_idle;
            let evicted = match list.front() {
                Some(old) if full || since.duration_since(old.since) >= self.idle_timeout => {
                    list.pop_front()
                }
                _ => None,
            };
            list.push_back(Idle { tx, slot, since });
            evicted
        };
        drop(evicted);
    }
}

impl Checkout {
    /// After the response head: back to the idle list now if the exchange is already over
    /// (the response had no body, or all of it arrived with the head), else parked in the
    /// connection's slot for its driver to return once the body has finished. No task,
    /// no allocation per request.
    ///
    /// The readiness check and the parking happen under the slot's lock, which the driver
    /// also takes after each poll of the connection (where readiness changes): whichever
    /// of the two comes second sees the connection ready and returns it.
    fn release(self, idle: &H1Idle) {
        let Checkout { tx, slot } = self;
        let mut parked = lock(&slot.parked);
        if tx.is_ready() {
            drop(parked);
            idle.put(tx, slot);
        } else {
            *parked = Some(tx);
        }
    }
}

pin_project! {
    /// Drives one HTTP/1.1 connection (with upgrades) and returns its parked sender to the
    /// idle list when the connection becomes ready for another request.
    struct H1Driver<C> {
        #[pin]
        conn: C,
        slot: Arc<Slot>,
        pool: Weak<H1Idle>,
    }
}

impl<C> Future for H1Driver<C>
where
    C: Future<Output = hyper::Result<()>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        match this.conn.poll(cx) {
            Poll::Ready(res) => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
                let parked = lock(&this.slot.parked).take();
                drop(parked);
                Poll::Ready(())
            }
            Poll::Pending => {
                let ready = {
                    let mut parked = lock(&this.slot.parked);
                    if parked.as_ref().is_some_and(|tx| tx.is_ready()) {
                        parked.take()
                    } else {
                        None
                    }
                };
                if let Some(tx) = ready {
                    // A pool that is gone (configuration reloaded) lets the connection close.
                    if let Some(pool) = this.pool.upgrade() {
                        pool.put(tx, this.slot.clone());
                    }
                }
                Poll::Pending
            }
        }
    }
}

// ---- HTTP/2 ----

#[derive(Default)]
struct H2Conn {
    state: Mutex<H2State>,
    /// Held by the one request opening the connection.
    gate: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct H2State {
    tx: Option<http2::SendRequest<ReqBody>>,
    /// Which connection `tx` is (so that a request can retire exactly the one that
    /// failed it).
    id: u64,
    /// Failed attempts to open the connection, so far.
    failures: u64,
}

impl H2State {
    fn live(&self) -> Option<http2::SendRequest<ReqBody>> {
        self.tx.as_ref().filter(|tx| !tx.is_closed()).cloned()
    }
}

impl H2Conn {
    /// The live shared connection and its id, if there is one (no waiting).
    fn live(&self) -> Option<(http2::SendRequest<ReqBody>, u64)> {
        let state = lock(&self.state);
        state.live().map(|tx| (tx, state.id))
    }

    /// Stops handing out connection `id` (requests already on it carry on).
    fn forget(&self, id: u64) {
        let old = {
            let mut state = lock(&self.state);
            if state.id == id {
                state.tx.take()
            } else {
                None
            }
        };
        drop(old);
    }
}

// ---- Transport ----

impl Target {
    /// DNS, TCP and TLS, all within the connect timeout.
    async fn connect(&self) -> Result<Stream, ConnectError> {
        let attempt = async {
            let tcp = self.tcp().await?;
            match &self.tls {
                None => Ok(Stream::Plain(tcp)),
                Some((connector, name)) => connector
                    .connect(name.clone(), tcp)
                    .await
                    .map(|s| Stream::Tls(Box::new(s)))
                    .map_err(ConnectError::Tls),
            }
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
    }

    async fn tcp(&self) -> Result<TcpStream, ConnectError> {
        let addrs = tokio::net::lookup_host((&*self.host, self.port))
            .await
            .map_err(ConnectError::Resolve)?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
                    if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
                        tracing::debug!(error = %e, "cannot set TCP keepalive");
                    }
                    return Ok(tcp);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(ConnectError::NoAddress, ConnectError::Tcp))
    }
}

/// A connection's byte stream: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests;
