//! Listeners and connections: one single-threaded runtime per worker thread, each with its
//! own `SO_REUSEPORT` listener, so a connection and everything it does stays on one core.
//! Limits (header read timeout, idle timeout, connection cap, header sizes) are applied
//! here; graceful shutdown stops accepting and lets in-flight requests finish.

pub mod io;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

use crate::body::Resp;
use crate::exchange::{Arrival, ConnInfo};
use crate::generation::Generation;
use io::{Activity, Tracked};

/// HTTP/2: response bytes buffered per stream awaiting the client's flow-control window.
const H2_MAX_SEND_BUF: usize = 64 * 1024;
/// HTTP/2: streams a client may reset before they are accepted, at once (hyper's default).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// HTTP/2: streams reset for the client's protocol errors over a connection's life
/// (hyper's default is 1024).
const H2_MAX_LOCAL_ERROR_RESETS: Option<usize> = Some(256);

/// The generation currently serving; swapped whole by a reload.
pub type Current = Arc<ArcSwap<Generation>>;

/// Binds `workers` listening sockets on one address (the first decides the port when
/// `addr` has port 0).
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if workers > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        let l: std::net::TcpListener = socket.into();
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Runs one worker's accept loop until `shutdown` turns true, then drains its connections
/// for up to the drain timeout.
pub async fn worker(
    id: usize,
    listener: std::net::TcpListener,
    current: Current,
    limit: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot use listener");
            return;
        }
    };
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // The connection cap is shared by all workers. A permit is taken after accept (a
        // worker waiting for a permit must not sit on connections another worker could
        // serve); while none is free this worker accepts nothing more, so further clients
        // wait in the kernel backlog.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                current
                    .load()
                    .metrics
                    .connections_limit_waits
                    .fetch_add(1, Relaxed);
                tracing::debug!(%peer, "max_connections reached: waiting for a free slot");
                tokio::select! {
                    p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    _ = shutdown.changed() => break,
                }
            }
        };
        let current = current.clone();
        let drain = drain_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, id, current, drain).await;
        });
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let drain_timeout = current.load().limits().drain_timeout;
    if tokio::time::timeout(drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            worker = id,
            open = conns.len(),
            "drain timeout: closing remaining connections"
        );
        conns.abort_all();
    }
}

struct ConnGuard(Arc<crate::admin::Metrics>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    worker: usize,
    current: Current,
    mut drain: watch::Receiver<bool>,
) {
    let generation = current.load_full();
    let metrics = generation.metrics.clone();
    metrics.connections_total.fetch_add(1, Relaxed);
    metrics.connections_open.fetch_add(1, Relaxed);
    let _guard = ConnGuard(metrics);
    let _ = stream.set_nodelay(true);
    let limits = generation.limits().clone();
    let tls = generation.tls.clone();
    // The connection does not hold on to a generation: each request takes the current one.
    drop(generation);
    let accepted = Instant::now();
    match tls {
        // Boxed: the handshake's and rustls' state would otherwise size every connection's
        // task, cleartext ones included.
        Some(acceptor) => {
            Box::pin(serve_tls(
                acceptor, stream, peer, worker, current, limits, accepted, drain,
            ))
            .await
        }
        None => {
            // Nothing sent before the header read timeout (covers slowloris on the first
            // bytes): closed, as the watchdog would.
            let deadline = accepted + limits.header_read_timeout;
            let proto = tokio::select! {
                r = tokio::time::timeout_at(deadline, sniff(&stream)) => match r {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "connection failed before a request");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "closing connection: header read timeout");
                        return;
                    }
                },
                _ = drain.changed() => return,
            };
            let activity = Arc::new(Activity::default());
            let io = Tracked::new(stream, activity.clone());
            let conn = ConnInfo::new(peer, false);
            drive(io, proto, conn, worker, current, activity, accepted, drain).await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    worker: usize,
    current: Current,
    limits: crate::config::Limits,
    accepted: Instant,
    drain: watch::Receiver<bool>,
) {
    // The handshake counts against the header read timeout (slowloris over TLS).
    let tls = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await;
    match tls {
        Ok(Ok(s)) => {
            // RFC 8705: the certificate's thumbprint, once for the connection.
            let conn = ConnInfo::new(peer, true).with_client_cert(tls::client_thumbprint(&s));
            // ALPN decides; a client that offered none is detected from its first bytes.
            let proto = match s.get_ref().1.alpn_protocol() {
                Some(b"h2") => Proto::H2,
                Some(b"http/1.1") => Proto::H1,
                _ => Proto::Detect,
            };
            let activity = Arc::new(Activity::default());
            let io = Tracked::new(s, activity.clone());
            drive(io, proto, conn, worker, current, activity, accepted, drain).await
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// The protocol a connection speaks, known before hyper takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
    /// TLS without ALPN, or a partial preface: hyper-util reads the first bytes to decide.
    Detect,
}

/// Cleartext: HTTP/2 with prior knowledge starts with the connection preface, anything
/// else is HTTP/1. The bytes are only peeked at, so hyper reads them itself: hyper-util's
/// detection reads them first and hands them over in a separate read, which makes
/// hyper's read buffer grow from 8 to 16 KiB on every HTTP/1.1 connection, for its life.
/// A first segment with only a part of the preface (real clients send it whole) is left
/// to hyper-util's detection rather than peeked at again and again.
async fn sniff(stream: &TcpStream) -> std::io::Result<Proto> {
    let mut buf = [0u8; io::PREFACE.len()];
    let n = stream.peek(&mut buf).await?;
    Ok(if n == 0 || buf[..n] != io::PREFACE[..n] {
        Proto::H1
    } else if n == io::PREFACE.len() {
        Proto::H2
    } else {
        Proto::Detect
    })
}

/// hyper's per-connection service: hands each request, with the connection's facts, to
/// this worker's stack of the current generation.
#[derive(Clone)]
struct ConnService {
    current: Current,
    conn: Arc<ConnInfo>,
    worker: usize,
    activity: Arc<Activity>,
}

struct InFlightGuard(Arc<Activity>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

type StackFuture = <crate::stack::Stack as Service<Arrival<Incoming>>>::Future;

pin_project! {
    /// The stack's answer; the connection counts the request done when it is dropped.
    pub struct ConnFuture {
        #[pin]
        inner: StackFuture,
        _guard: InFlightGuard,
    }
}

impl Future for ConnFuture {
    type Output = Result<Resp, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Resp;
    type Error = Infallible;
    type Future = ConnFuture;

    fn call(&self, req: Request<Incoming>) -> ConnFuture {
        self.activity.head_done();
        if req.version() == http::Version::HTTP_2 {
            self.activity.h2.store(true, Relaxed);
        }
        let guard = InFlightGuard(self.activity.clone());
        let mut stack = self.current.load().stack(self.worker).clone();
        // Every layer of the stack is always ready (none applies back-pressure), so the
        // readiness check cannot wait; it is made to keep tower's contract.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        debug_assert!(stack.poll_ready(&mut cx).is_ready());
        let _ = stack.poll_ready(&mut cx);
        let inner = stack.call(Arrival {
            req,
            conn: self.conn.clone(),
        });
        ConnFuture {
            inner,
            _guard: guard,
        }
    }
}

/// The HTTP/1.1 options (the same whether or not hyper-util detects the protocol).
macro_rules! http1_options {
    ($b:expr, $limits:expr) => {
        // hyper's own header read timer is off: on a keep-alive connection it also runs
        // while the connection waits for the next request, which would cut idle_timeout
        // down to header_read_timeout. The watchdog enforces both, separately.
        $b.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_headers($limits.max_headers)
            // Room for the configured head limits plus slack, so that RouteLayer can
            // answer 414 / 431 precisely; past this, hyper answers 431 itself.
            .max_buf_size(($limits.max_header_bytes + $limits.max_uri_length + 64 * 1024).max(8192))
            .keep_alive(true)
    };
}

/// The HTTP/2 options.
macro_rules! http2_options {
    ($b:expr, $limits:expr) => {
        $b.timer(TokioTimer::new())
            .max_concurrent_streams($limits.max_concurrent_streams)
            .max_header_list_size($limits.max_header_bytes as u32)
            // Response bytes buffered per stream for a client that does not open its
            // window (hyper's default is 400 KiB: 50 MiB a connection at 128 streams);
            // past this the upstream body is simply read more slowly.
            .max_send_buf_size(H2_MAX_SEND_BUF)
            // Streams the client resets before we take them (rapid reset, CVE-2023-44487)
            // and streams we reset for its protocol errors: past these, GOAWAY and close.
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
    };
}

#[allow(clippy::too_many_arguments)]
async fn drive<I>(
    io: I,
    proto: Proto,
    conn: ConnInfo,
    worker: usize,
    current: Current,
    activity: Arc<Activity>,
    accepted: Instant,
    drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = current.load().limits().clone();
    let peer = conn.peer;
    let svc = ConnService {
        current,
        conn: Arc::new(conn),
        worker,
        activity: activity.clone(),
    };
    let io = TokioIo::new(io);
    let watch = Watch {
        peer,
        activity,
        accepted,
        limits,
        drain,
    };
    let limits = &watch.limits;
    match proto {
        // HTTP/1.1 is served by hyper directly and in place: an idle keep-alive connection
        // is this task, hyper's 8 KiB read and write buffers and little else.
        Proto::H1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            http1_options!(b, limits);
            let conn = b.serve_connection(io, svc).with_upgrades();
            watch.supervise(conn, |c| c.graceful_shutdown()).await
        }
        // Boxed: HTTP/2's connection state is several times HTTP/1.1's and would size
        // every connection's task.
        Proto::H2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http2_options!(b, limits);
            let conn = b.serve_connection(io, svc);
            Box::pin(watch.supervise(conn, |c| c.graceful_shutdown())).await
        }
        Proto::Detect => {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            http1_options!(builder.http1(), limits);
            http2_options!(builder.http2(), limits);
            let conn = builder.serve_connection_with_upgrades(io, svc);
            Box::pin(watch.supervise(conn, |c| c.graceful_shutdown())).await
        }
    }
}

/// What watches a connection, whatever its protocol: its timeouts and the worker's drain.
struct Watch {
    peer: SocketAddr,
    activity: Arc<Activity>,
    accepted: Instant,
    limits: crate::config::Limits,
    drain: watch::Receiver<bool>,
}

impl Watch {
    /// Drives a hyper connection to its end and closes it at the header read or idle timeout,
    /// or gracefully when the worker drains.
    async fn supervise<C, E>(self, conn: C, shutdown: impl Fn(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let Watch {
            peer,
            activity,
            accepted,
            limits,
            mut drain,
        } = self;
        let mut conn = pin!(conn);
        let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let sleep = tokio::time::sleep_until(accepted + tick);
        let mut sleep = pin!(sleep);
        let mut draining = false;
        let mut closing = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                    return;
                }
                _ = sleep.as_mut() => {
                    let now = Instant::now();
                    if closing {
                        return;
                    }
                    match activity.deadline(accepted.into_std(), &limits) {
                        Some(deadline) if now.into_std() >= deadline => {
                            tracing::debug!(%peer, "closing connection: header read or idle timeout");
                            shutdown(conn.as_mut());
                            closing = true;
                            sleep.as_mut().reset(now + Duration::from_secs(1));
                        }
                        _ => sleep.as_mut().reset(now + tick),
                    }
                }
                _ = drain.changed(), if !draining => {
                    draining = true;
                    shutdown(conn.as_mut());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed(first: &[u8]) -> Proto {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(first).await.unwrap();
        let proto = sniff(&server).await.unwrap();
        // Peeked, not read: hyper still gets every byte.
        let mut buf = vec![0u8; first.len()];
        let n = server.peek(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &first[..n]);
        proto
    }

    #[tokio::test]
    async fn the_protocol_is_told_from_the_first_bytes_without_reading_them() {
        assert_eq!(
            sniffed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
            Proto::H1
        );
        assert_eq!(sniffed(b"POST / HTTP/1.1\r\n").await, Proto::H1);
        assert_eq!(sniffed(b"P").await, Proto::Detect);
        assert_eq!(sniffed(b"PRI * HTTP/2.0\r\n").await, Proto::Detect);
        let mut h2 = io::PREFACE.to_vec();
        h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(sniffed(&h2).await, Proto::H2);
    }
}
