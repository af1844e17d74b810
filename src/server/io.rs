//! A connection's IO, wrapped to record when bytes last moved (for the idle timeout).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since process start: cheap to store in an atomic.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

pub fn at_ms(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms)
}

/// What the connection watchdog needs to know. Times are ms since process start; 0 is
/// "never".
#[derive(Default)]
pub struct Activity {
    /// When bytes last moved either way.
    pub last_io: AtomicU64,
    /// The first read after the connection last became idle: a request head under way.
    pub read_after_idle: AtomicU64,
    /// When the connection last became idle (the last response head was produced).
    pub idle_since: AtomicU64,
    /// Request heads received on this connection.
    pub requests: AtomicU64,
    /// Requests whose response head has not been produced yet.
    pub in_flight: AtomicU64,
    /// The connection speaks HTTP/2 (no head-by-head reading to time).
    pub h2: AtomicBool,
}

impl Activity {
    pub fn head_done(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        self.read_after_idle.store(0, Relaxed);
    }

    pub fn response_done(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.idle_since.store(now_ms(), Relaxed);
        }
    }

    fn on_read(&self, now: u64) {
        self.last_io.store(now, Relaxed);
        if self.in_flight.load(Relaxed) == 0 && self.read_after_idle.load(Relaxed) == 0 {
            self.read_after_idle.store(now, Relaxed);
        }
    }

    /// When the connection must be closed if nothing changes, or `None` while a request
    /// is being handled.
    /// - no request yet: `header_read_timeout` after accept (covers TLS, protocol
    ///   detection, an HTTP/2 preface, and slowloris on the first head);
    /// - HTTP/1.1, bytes of a new head arrived since the last response:
    ///   `header_read_timeout` after the first of them;
    /// - otherwise idle: `idle_timeout` after the last response or the last bytes moved.
    pub fn deadline(&self, accepted: Instant, limits: &crate::config::Limits) -> Option<Instant> {
        if self.in_flight.load(Relaxed) > 0 {
            return None;
        }
        if self.requests.load(Relaxed) == 0 {
            return Some(accepted + limits.header_read_timeout);
        }
        let idle_since = self.idle_since.load(Relaxed);
        let head_started = self.read_after_idle.load(Relaxed);
        if !self.h2.load(Relaxed) && head_started != 0 && head_started >= idle_since {
            return Some(at_ms(head_started) + limits.header_read_timeout);
        }
        let last = idle_since.max(self.last_io.load(Relaxed));
        Some(at_ms(last) + limits.idle_timeout)
    }
}

pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        activity.last_io.store(now_ms(), Relaxed);
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read(now_ms());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.last_io.store(now_ms(), Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.last_io.store(now_ms(), Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
