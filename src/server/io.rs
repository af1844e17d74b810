//! A connection's IO, wrapped to record when bytes last moved (for the idle timeout) and
//! to make a busy connection take turns with the others on its worker (a read budget).

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

/// Bytes a connection may read in one turn: once it has read this much without its socket
/// running dry, its next read yields (the task is woken again and goes to the back of the
/// worker's run queue). A worker is one thread serving many connections; without this, a
/// client that keeps the socket full (HTTP/2 SETTINGS, PING, CONTINUATION or
/// HEADERS + RST_STREAM floods) has tokio's whole cooperative budget of reads (128) per
/// turn, a megabyte or more of tiny frames, while every other connection of the worker
/// waits. Large enough that an ordinary request head or body chunk never meets it.
pub const READ_BUDGET: usize = 32 * 1024;

pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Bytes read since the socket last had nothing to give, or since the last yield.
    read_in_turn: usize,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        activity.last_io.store(now_ms(), Relaxed);
        Tracked {
            inner,
            activity,
            read_in_turn: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_in_turn >= READ_BUDGET {
            this.read_in_turn = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        match r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.read_in_turn += buf.filled().len() - before;
                this.activity.on_read(now_ms());
            }
            Poll::Pending => this.read_in_turn = 0,
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn a_connection_that_always_has_bytes_yields_after_its_read_budget() {
        let data = vec![7u8; READ_BUDGET * 3];
        let mut io = Tracked::new(&data[..], Arc::new(Activity::default()));
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut chunk = [0u8; 4096];
        let (mut read, mut yields) = (0, 0);
        while read < data.len() {
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut io).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) => read += buf.filled().len(),
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => {
                    yields += 1;
                    assert_eq!(read % READ_BUDGET, 0, "yielded after {read} bytes");
                }
            }
        }
        // One yield per budget's worth of bytes, each with the task woken again at once
        // (a yield, not a stall).
        assert_eq!(yields, 2);
        assert_eq!(wakes.0.load(Relaxed), 2);
    }
}
