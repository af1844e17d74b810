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

/// HTTP/2 SETTINGS frames (not acknowledgements) a client may send within
/// [`CONTROL_WINDOW_MS`]: each one must be acknowledged and applied. Past this the
/// connection is closed (a SETTINGS flood). Ordinary clients send a handful per connection.
/// PINGs are not counted: h2 keeps one answer pending at most, and gRPC clients may ping
/// often while they receive data.
pub const CONTROL_FRAME_BUDGET: u32 = 1000;
pub const CONTROL_WINDOW_MS: u64 = 10_000;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Follows the frame headers of a client's HTTP/2 byte stream (after the preface) to count
/// its control frames. Not HTTP/2 (no preface): it stops looking.
#[derive(Default)]
struct FrameScan {
    /// Bytes of the preface matched so far; `None` once past it or not HTTP/2.
    preface: Option<usize>,
    off: bool,
    head: [u8; 9],
    head_len: usize,
    skip: usize,
    window_start: u64,
    in_window: u32,
}

impl FrameScan {
    fn new() -> FrameScan {
        FrameScan {
            preface: Some(0),
            ..FrameScan::default()
        }
    }

    /// Looks at bytes just read; false once the connection has sent too many control
    /// frames.
    fn feed(&mut self, mut b: &[u8], now: u64) -> bool {
        while !b.is_empty() && !self.off {
            if let Some(n) = self.preface {
                let take = (PREFACE.len() - n).min(b.len());
                if b[..take] != PREFACE[n..n + take] {
                    self.off = true;
                    return true;
                }
                b = &b[take..];
                self.preface = (n + take < PREFACE.len()).then_some(n + take);
                continue;
            }
            if self.skip > 0 {
                let take = self.skip.min(b.len());
                self.skip -= take;
                b = &b[take..];
                continue;
            }
            let take = (9 - self.head_len).min(b.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&b[..take]);
            self.head_len += take;
            b = &b[take..];
            if self.head_len < 9 {
                continue;
            }
            self.head_len = 0;
            let h = self.head;
            self.skip = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
            let (kind, ack) = (h[3], h[4] & 0x1 != 0);
            if kind == 0x4 && !ack {
                if now.saturating_sub(self.window_start) >= CONTROL_WINDOW_MS {
                    self.window_start = now;
                    self.in_window = 0;
                }
                self.in_window += 1;
                if self.in_window > CONTROL_FRAME_BUDGET {
                    return false;
                }
            }
        }
        true
    }
}

pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Bytes read since the socket last had nothing to give, or since the last yield.
    read_in_turn: usize,
    frames: FrameScan,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        activity.last_io.store(now_ms(), Relaxed);
        Tracked {
            inner,
            activity,
            read_in_turn: 0,
            frames: FrameScan::new(),
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
                let now = now_ms();
                this.activity.on_read(now);
                if !this.frames.feed(&buf.filled()[before..], now) {
                    tracing::debug!("closing connection: HTTP/2 SETTINGS flood");
                    return Poll::Ready(Err(io::Error::other("HTTP/2 SETTINGS flood")));
                }
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

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn an_http2_settings_flood_is_cut_off_and_acks_pings_and_http1_are_not_counted() {
        let mut scan = FrameScan::new();
        let mut first = PREFACE.to_vec();
        first.extend(frame(0x4, 0, &[0, 4, 0, 0, 0xff, 0xff]));
        assert!(scan.feed(&first, 1));
        // Acknowledgements, PINGs and other frames, split across reads at odd places, are
        // free.
        let mut other: Vec<u8> = Vec::new();
        for _ in 0..3000 {
            other.extend(frame(0x6, 0, &[0; 8]));
            other.extend(frame(0x4, 0x1, &[]));
            other.extend(frame(0x6, 0x1, &[0; 8]));
            other.extend(frame(0x0, 0x0, &[1; 20]));
        }
        for chunk in other.chunks(7) {
            assert!(scan.feed(chunk, 2));
        }
        // SETTINGS up to the budget pass; the next one within the window does not.
        let settings = frame(0x4, 0, &[0, 1, 0, 0, 0x10, 0]);
        for _ in 1..CONTROL_FRAME_BUDGET {
            assert!(scan.feed(&settings, 3));
        }
        assert!(!scan.feed(&settings, 4));
        // A new window starts the count again.
        let mut later = FrameScan::new();
        assert!(later.feed(PREFACE, 0));
        for i in 0..3 * CONTROL_FRAME_BUDGET as u64 {
            assert!(later.feed(&settings, i * 20));
        }
        // HTTP/1.1 is never looked at.
        let mut h1 = FrameScan::new();
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5000);
        assert!(h1.feed(&get, 1));
    }
}
