//! Spans of the OpenTelemetry traces: ids, the sampler, the finished-span queue, and the
//! request's trace context while its future is polled.
//!
//! Nothing here runs when tracing is off: the layers hold `Option<Arc<Tracer>>` and branch
//! on it. When it is on, the request's context travels in a thread-local set while the
//! request's future is polled ([`Scoped`]), so that the auth decision, the upstream call
//! and provider calls made deep in a validator find their parent without every signature
//! carrying it (the way `tracing`'s `Instrumented` futures work).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use pin_project_lite::pin_project;
use tokio::sync::mpsc;

pub use super::traceparent::{SpanId, TraceId};

/// The trace a span belongs to and its own id: what a child names as its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// Recorded and exported (else only propagated).
    pub sampled: bool,
}

impl SpanContext {
    /// A new span in the same trace.
    pub fn child(&self) -> SpanContext {
        SpanContext {
            span_id: span_id(),
            ..*self
        }
    }

    /// The `traceparent` header value that names this span as the parent.
    pub fn traceparent(&self) -> http::HeaderValue {
        let v = super::traceparent::format(&self.trace_id, &self.span_id, self.sampled);
        http::HeaderValue::from_bytes(&v).unwrap_or(http::HeaderValue::from_static(""))
    }
}

/// The trace of the request being polled on this thread: what its spans need.
pub struct Scope {
    pub tracer: Arc<Tracer>,
    /// The request's (server) span: the upstream call's parent.
    pub request: SpanContext,
    /// The span new spans are children of: the request's, or the auth decision's inside it.
    pub parent: SpanContext,
    /// The W3C `tracestate` of a trace continued from a trusted proxy, passed on with the
    /// proxy's `traceparent`.
    pub trace_state: Option<http::HeaderValue>,
}

/// The current scope (shared by the request's future and the spans inside it).
pub type Current = Arc<Scope>;

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// The scope of the request whose future is being polled on this thread, if traced. With
/// tracing off this is one thread-local read that finds nothing.
pub fn current() -> Option<Current> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Sets the current scope until dropped (then the previous one is back).
pub struct Entered(Option<Current>);

pub fn enter(c: Current) -> Entered {
    Entered(CURRENT.with(|cell| cell.replace(Some(c))))
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|cell| *cell.borrow_mut() = previous);
    }
}

pin_project! {
    /// A future polled with `current` set (when there is one: with tracing off it is the
    /// future and a `None`).
    pub struct Scoped<F> {
        current: Option<Current>,
        #[pin]
        inner: F,
    }
}

pub fn scoped<F: Future>(current: Option<Current>, inner: F) -> Scoped<F> {
    Scoped { current, inner }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.current.as_ref().map(|c| enter(c.clone()));
        this.inner.poll(cx)
    }
}

/// A span of the current request's trace being timed: a child of the current parent, or
/// (outside any request: background key refreshes) the root of a new trace.
pub struct Child {
    pub tracer: Arc<Tracer>,
    pub started: Started,
    pub trace_state: Option<http::HeaderValue>,
}

impl Child {
    /// A child of the current scope's parent span, if a request is being traced here.
    pub fn of_current() -> Option<Child> {
        let c = current()?;
        Some(Child {
            tracer: c.tracer.clone(),
            started: Started::child_of(&c.parent),
            trace_state: c.trace_state.clone(),
        })
    }

    /// A child of the current scope, or else a new trace's root span of `tracer`.
    pub fn of_current_or_root(tracer: &Arc<Tracer>) -> Child {
        Child::of_current().unwrap_or_else(|| Child {
            tracer: tracer.clone(),
            started: Started {
                context: tracer.root(),
                parent: None,
                start: now_nanos(),
            },
            trace_state: None,
        })
    }

    /// Ends a client span (a call to the provider or the upstream) by how the call went:
    /// the answer's status, or why there was none. Error status without an answer or
    /// with a 5xx.
    pub fn end_call(
        self,
        name: String,
        mut attributes: Vec<(&'static str, Value)>,
        status: Option<u16>,
        error: Option<Value>,
    ) {
        let failed = error.is_some() || status.is_some_and(|s| s >= 500);
        if let Some(s) = status {
            attributes.push(("http.response.status_code", Value::Int(i64::from(s))));
        }
        if let Some(e) = error {
            attributes.push(("error.type", e));
        }
        self.end(name, Kind::Client, attributes, failed);
    }

    /// The `traceparent` that names this span as the parent.
    pub fn traceparent(&self) -> http::HeaderValue {
        self.started.context.traceparent()
    }

    /// Ends the span now and queues it when its trace is sampled.
    pub fn end(
        self,
        name: impl Into<Cow<'static, str>>,
        kind: Kind,
        attributes: Vec<(&'static str, Value)>,
        error: bool,
    ) {
        if self.started.context.sampled {
            let mut rec = self.started.end(name, kind, attributes, error);
            rec.trace_state = self
                .trace_state
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            self.tracer.submit(rec);
        }
    }
}

/// Random, non-zero ids from a per-thread generator (SplitMix64) seeded from the standard
/// library's per-thread random hash keys: ids must be unique and unguessable enough for
/// sampling, not secret.
fn next_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            );
            h.finish()
        });
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

pub fn span_id() -> SpanId {
    loop {
        let id = next_u64();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

pub fn trace_id() -> TraceId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&next_u64().to_be_bytes());
    id[8..].copy_from_slice(&span_id());
    id
}

/// Unix time in nanoseconds (OTLP's span times).
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Value {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(Cow::Owned(s))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

/// A finished span, as it is queued for export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub context: SpanContext,
    pub parent: Option<SpanId>,
    /// The parent is another process's (a trusted proxy's `traceparent`).
    pub remote_parent: bool,
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub start: u64,
    pub end: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// OTLP status ERROR (else UNSET).
    pub error: bool,
    /// The W3C `tracestate` the trace came with.
    pub trace_state: Option<String>,
}

/// A span being timed; becomes a [`SpanRecord`] when it ends.
pub struct Started {
    pub context: SpanContext,
    pub parent: Option<SpanId>,
    pub start: u64,
}

impl Started {
    /// A child of `parent` starting now.
    pub fn child_of(parent: &SpanContext) -> Started {
        Started {
            context: parent.child(),
            parent: Some(parent.span_id),
            start: now_nanos(),
        }
    }

    /// The record of this span, ending now.
    pub fn end(
        self,
        name: impl Into<Cow<'static, str>>,
        kind: Kind,
        attributes: Vec<(&'static str, Value)>,
        error: bool,
    ) -> SpanRecord {
        SpanRecord {
            context: self.context,
            parent: self.parent,
            remote_parent: false,
            name: name.into(),
            kind,
            start: self.start,
            end: now_nanos(),
            attributes,
            error,
            trace_state: None,
        }
    }
}

/// The finished-span queue's bound: beyond it spans are dropped (counted), never waited
/// for, and memory does not grow (the OpenTelemetry SDKs' default queue size).
pub const QUEUE: usize = 2048;

/// Counters of the export, for `/metrics` (kept for the life of the process).
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

/// Starts traces (ratio sampler), hands out ids, and queues finished spans for the
/// exporter. One per process once tracing has been on; a reload changes its ratio.
pub struct Tracer {
    /// Sample when the trace id's last 8 bytes, shifted right by one, are below this
    /// (the OpenTelemetry `TraceIdRatioBased` sampler): `ratio × 2^63`.
    threshold: AtomicU64,
    queue: mpsc::Sender<SpanRecord>,
    pub stats: std::sync::Arc<ExportStats>,
}

impl Tracer {
    pub fn new(
        sample_ratio: f64,
        queue: mpsc::Sender<SpanRecord>,
        stats: std::sync::Arc<ExportStats>,
    ) -> Tracer {
        let t = Tracer {
            threshold: AtomicU64::new(0),
            queue,
            stats,
        };
        t.set_ratio(sample_ratio);
        t
    }

    pub fn set_ratio(&self, ratio: f64) {
        let threshold = (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
        self.threshold.store(threshold, Relaxed);
    }

    /// Whether a new trace with this id is recorded: deterministic in the id, so every
    /// service that samples by the same ratio agrees.
    pub fn samples(&self, trace_id: &TraceId) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.threshold.load(Relaxed)
    }

    /// A new trace's root span context, sampled by the ratio.
    pub fn root(&self) -> SpanContext {
        let trace_id = trace_id();
        SpanContext {
            trace_id,
            span_id: span_id(),
            sampled: self.samples(&trace_id),
        }
    }

    /// The request span's context and its remote parent. A valid `traceparent` of a
    /// trusted proxy is continued: its trace id, and its sampled flag decides (the
    /// OpenTelemetry `ParentBased` sampler). Anything else, a client's header included
    /// (the caller passes `None` for untrusted peers), starts a new trace sampled by the
    /// ratio, so that clients cannot force sampling (W3C Trace Context, "Security
    /// considerations": denial of service by callers that set the sampled flag; an
    /// invalid value restarts the trace, "Versioning of traceparent").
    pub fn request_context(&self, traceparent: Option<&[u8]>) -> (SpanContext, Option<SpanId>) {
        match traceparent.and_then(super::traceparent::parse) {
            Some(tp) => (
                SpanContext {
                    trace_id: tp.trace_id,
                    span_id: span_id(),
                    sampled: tp.sampled(),
                },
                Some(tp.parent_id),
            ),
            None => (self.root(), None),
        }
    }

    /// Queues a finished span; a full queue drops it (counted).
    pub fn submit(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_sampler_follows_the_trace_id() {
        let (tx, _rx) = mpsc::channel(1);
        let t = Tracer::new(0.5, tx, Default::default());
        let mut id = [0u8; 16];
        id[8] = 0x7f; // (id >> 1) just under 2^62: sampled at 0.5
        assert!(t.samples(&id));
        id[8] = 0x80; // 2^63 >> 1 = 2^62: not sampled at 0.5
        assert!(!t.samples(&id));
        t.set_ratio(1.0);
        assert!(t.samples(&[0xff; 16]));
        t.set_ratio(0.0);
        assert!(!t.samples(&[0; 16]));
        // Roughly the ratio of random ids.
        t.set_ratio(0.25);
        let n = (0..4000).filter(|_| t.samples(&trace_id())).count();
        assert!((800..1200).contains(&n), "{n}");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, mut rx) = mpsc::channel(1);
        let t = Tracer::new(1.0, tx, Default::default());
        let ctx = t.root();
        assert!(ctx.sampled);
        let rec = || Started::child_of(&ctx).end("x", Kind::Internal, Vec::new(), false);
        t.submit(rec());
        t.submit(rec());
        assert_eq!(t.stats.dropped.load(Relaxed), 1);
        let got = rx.try_recv().unwrap();
        assert_eq!(got.parent, Some(ctx.span_id));
        assert_eq!(got.context.trace_id, ctx.trace_id);
        assert_ne!(got.context.span_id, ctx.span_id);
    }

    #[test]
    fn a_trusted_parent_decides_and_anything_else_starts_anew() {
        let (tx, _rx) = mpsc::channel(1);
        // Ratio 0: only a continued, sampled parent is recorded.
        let t = Tracer::new(0.0, tx, Default::default());
        let sampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (ctx, parent) = t.request_context(Some(sampled));
        assert!(ctx.sampled);
        assert_eq!(
            super::super::traceparent::hex(&ctx.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_ne!(ctx.span_id, parent.unwrap());
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!t.request_context(Some(unsampled)).0.sampled);
        // Ratio 1: a parent's "not sampled" still wins.
        t.set_ratio(1.0);
        assert!(!t.request_context(Some(unsampled)).0.sampled);
        // Invalid or absent: a new trace, sampled by the ratio.
        for v in [Some(&b"00-zz"[..]), None] {
            let (ctx, parent) = t.request_context(v);
            assert_eq!(parent, None);
            assert!(ctx.sampled);
            assert_ne!(
                super::super::traceparent::hex(&ctx.trace_id),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
        }
        t.set_ratio(0.0);
        assert!(!t.request_context(None).0.sampled);
    }

    #[test]
    fn the_current_scope_is_set_while_polled_only() {
        let (tx, mut rx) = mpsc::channel(8);
        let tracer = Arc::new(Tracer::new(1.0, tx, Default::default()));
        let request = tracer.root();
        let c: Current = Arc::new(Scope {
            tracer: tracer.clone(),
            request,
            parent: request,
            trace_state: None,
        });
        assert!(current().is_none());
        assert!(Child::of_current().is_none());
        let seen = futures_util::FutureExt::now_or_never(scoped(Some(c.clone()), async {
            let child = Child::of_current().unwrap();
            let id = child.started.context.span_id;
            child.end("inner", Kind::Internal, Vec::new(), false);
            (current().map(|c| c.request), id)
        }))
        .unwrap();
        assert_eq!(seen.0, Some(request));
        assert!(current().is_none());
        let rec = rx.try_recv().unwrap();
        assert_eq!(rec.parent, Some(request.span_id));
        assert_eq!(rec.context.trace_id, request.trace_id);
        assert_eq!(rec.context.span_id, seen.1);
        // No scope: a root span of its own trace.
        let root = Child::of_current_or_root(&tracer);
        assert_eq!(root.started.parent, None);
        assert_ne!(root.started.context.trace_id, request.trace_id);
        // Nested scopes restore the outer one.
        {
            let _outer = enter(c.clone());
            let inner = Arc::new(Scope {
                tracer: tracer.clone(),
                request,
                parent: request.child(),
                trace_state: None,
            });
            let g = enter(inner.clone());
            assert!(Arc::ptr_eq(&current().unwrap(), &inner));
            drop(g);
            assert!(Arc::ptr_eq(&current().unwrap(), &c));
        }
        assert!(current().is_none());
        // Unsampled spans are not queued.
        let off = Child {
            tracer: tracer.clone(),
            started: Started::child_of(&SpanContext {
                sampled: false,
                ..request
            }),
            trace_state: None,
        };
        off.end("x", Kind::Internal, Vec::new(), false);
        assert!(rx.try_recv().is_err());
    }
}
