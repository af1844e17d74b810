//! Body types of the request path: what goes upstream and what comes back to the client.
//! Enums rather than boxes, so the hot path allocates nothing for them.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response of the request path.
pub type Resp = http::Response<RespBody>;

pin_project! {
    /// The body of a response sent to the client.
    #[project = RespProj]
    pub enum RespBody {
        /// Streamed from the upstream as it arrives.
        Upstream { #[pin] inner: Incoming },
        /// A complete body the proxy made itself (error pages, probes).
        Full { data: Option<Bytes> },
        // Any other body (one that is watched on its way out: the access log's).
        Boxed { inner: Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>> },
    }
}

impl RespBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        RespBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    pub fn empty() -> Self {
        RespBody::Full { data: None }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            RespProj::Upstream { inner } => inner.poll_frame(cx).map_err(Into::into),
            RespProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RespProj::Boxed { inner } => inner.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream { inner } => inner.is_end_stream(),
            RespBody::Full { data } => data.is_none(),
            RespBody::Boxed { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream { inner } => inner.size_hint(),
            RespBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RespBody::Boxed { inner } => inner.size_hint(),
        }
    }
}

/// The client's body failed on its way in (malformed chunked framing, a reset): the
/// client's fault, whatever the upstream makes of the truncated body.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// The body is paused for longer than the body read timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body read timed out")]
pub struct BodyTimeout;

pin_project! {
    /// The body of a request sent upstream: the client's, streamed, with a timeout on
    /// every pause (a client that stops sending mid-body is cut off).
    pub struct ReqBody {
        #[pin]
        inner: Option<Incoming>,
        timeout: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
        // Counts the bytes passed (for the access log), when set.
        counted: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    }
}

impl ReqBody {
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        if inner.is_end_stream() {
            return Self::empty();
        }
        ReqBody {
            inner: Some(inner),
            timeout,
            sleep: None,
            counted: None,
        }
    }

    /// Counts the bytes that pass into `counter`.
    pub fn counted(
        mut self,
        counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> Self {
        self.counted = counter;
        self
    }

    pub fn empty() -> Self {
        ReqBody {
            inner: None,
            timeout: Duration::ZERO,
            sleep: None,
            counted: None,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.sleep = None;
                if let (Some(c), Some(Ok(f))) = (this.counted.as_ref(), &frame) {
                    if let Some(d) = f.data_ref() {
                        c.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(ClientBodyError(e)) as BoxError)))
            }
            Poll::Pending => {
                let timeout = *this.timeout;
                let sleep = this.sleep.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + timeout))
                });
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(BodyTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

use std::future::Future;

/// A request body that the proxy's own endpoints read whole (back-channel logout's form):
/// hyper's in production, none in the stack tests. At most `limit` bytes, each pause at
/// most `timeout`; `Err` otherwise (or when the client's body fails).
pub trait EndpointBody: Send + 'static {
    fn read_all(
        self,
        limit: usize,
        timeout: Duration,
    ) -> impl Future<Output = Result<Bytes, ()>> + Send;
}

impl EndpointBody for Incoming {
    async fn read_all(self, limit: usize, timeout: Duration) -> Result<Bytes, ()> {
        use http_body_util::BodyExt;
        let limited = http_body_util::Limited::new(ReqBody::new(self, timeout), limit);
        match limited.collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(_) => Err(()),
        }
    }
}

impl EndpointBody for () {
    async fn read_all(self, _limit: usize, _timeout: Duration) -> Result<Bytes, ()> {
        Ok(Bytes::new())
    }
}
