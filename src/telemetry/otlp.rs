//! OTLP/HTTP export of finished spans: the protobuf encoding of an
//! `ExportTraceServiceRequest` (the fields portcullis fills, written by hand: protobuf's
//! wire format is varints and length-prefixed fields), and the background exporter that
//! batches the span queue and POSTs it over the provider client stack (hyper-util, rustls
//! on aws-lc-rs).
//!
//! The exporter never slows a request down: requests only `try_send` into a bounded
//! queue (a full queue drops the span, counted); batches of up to 512 spans leave at most
//! a second after their first span; a failed export drops its batch (counted) and is
//! logged at `warn` at most once a minute. No retries: a collector that is down loses
//! those spans, never the proxy's memory.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::span::{ExportStats, SpanRecord, Tracer, Value, QUEUE};
use crate::admin::metrics::Metrics;
use crate::config::TelemetryConfig;
use crate::oidc::transport::{HttpTransport, TransportConfig};

/// Spans per export request at most (the OpenTelemetry SDKs' default).
const BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Failed exports are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

// ---- protobuf wire format ----------------------------------------------------------------

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn message(out: &mut Vec<u8>, field: u32, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    fill(&mut inner);
    bytes_field(out, field, &inner);
}

/// `opentelemetry.proto.common.v1.KeyValue` (key = 1, value = 2: `AnyValue` with
/// string_value = 1 or int_value = 3).
fn attribute(out: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    message(out, field, |kv| {
        bytes_field(kv, 1, k.as_bytes());
        message(kv, 2, |any| match v {
            Value::Str(s) => bytes_field(any, 1, s.as_bytes()),
            Value::Int(i) => {
                key(any, 3, VARINT);
                varint(any, *i as u64);
            }
        });
    });
}

/// `opentelemetry.proto.trace.v1.Span`.
fn span(out: &mut Vec<u8>, s: &SpanRecord) {
    bytes_field(out, 1, &s.context.trace_id);
    bytes_field(out, 2, &s.context.span_id);
    if let Some(ts) = s.trace_state.as_deref().filter(|t| !t.is_empty()) {
        bytes_field(out, 3, ts.as_bytes());
    }
    if let Some(p) = &s.parent {
        bytes_field(out, 4, p);
    }
    bytes_field(out, 5, s.name.as_bytes());
    key(out, 6, VARINT);
    varint(out, s.kind as u64);
    key(out, 7, FIXED64);
    out.extend_from_slice(&s.start.to_le_bytes());
    key(out, 8, FIXED64);
    out.extend_from_slice(&s.end.max(s.start).to_le_bytes());
    for (k, v) in &s.attributes {
        attribute(out, 9, k, v);
    }
    if s.error {
        // Status { code = 3: STATUS_CODE_ERROR (2) }
        message(out, 15, |st| {
            key(st, 3, VARINT);
            varint(st, 2);
        });
    }
    // flags = 16: the W3C trace flags (bit 0 sampled), and whether the parent is remote
    // (SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK 0x100, _IS_REMOTE_MASK 0x200).
    let remote = if s.parent.is_some() {
        0x100 | if s.remote_parent { 0x200 } else { 0 }
    } else {
        0
    };
    key(out, 16, FIXED32);
    out.extend_from_slice(&(u32::from(s.context.sampled) | remote).to_le_bytes());
}

/// The `Resource` of every span: `service.name` (`OTEL_SERVICE_NAME` when set, else
/// `portcullis`) and `service.version`.
#[derive(Debug, Clone)]
pub struct Resource {
    pub service_name: String,
}

impl Resource {
    pub fn from_env() -> Resource {
        Resource {
            service_name: std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "portcullis".into()),
        }
    }
}

/// `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest` with one
/// `ResourceSpans` holding one `ScopeSpans` (scope `portcullis`).
pub fn encode(resource: &Resource, spans: &[SpanRecord]) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let mut out = Vec::with_capacity(256 + spans.len() * 256);
    message(&mut out, 1, |rs| {
        message(rs, 1, |r| {
            attribute(
                r,
                1,
                "service.name",
                &Value::from(resource.service_name.clone()),
            );
            attribute(r, 1, "service.version", &Value::from(version));
        });
        message(rs, 2, |ss| {
            message(ss, 1, |scope| {
                bytes_field(scope, 1, b"portcullis");
                bytes_field(scope, 2, version.as_bytes());
            });
            for s in spans {
                message(ss, 2, |m| span(m, s));
            }
        });
    });
    out
}

// ---- the exporter ------------------------------------------------------------------------

/// Where the exporter sends (a reload may change it).
struct Target {
    url: ArcSwap<http::Uri>,
}

/// The process's tracer and what steers its exporter.
pub struct Exporting {
    pub tracer: Arc<Tracer>,
    target: Arc<Target>,
}

impl Exporting {
    /// Starts the exporter task (on the current Tokio runtime) sending to `url`, and
    /// registers its counters with `/metrics`.
    pub fn start(
        url: http::Uri,
        sample_ratio: f64,
        metrics: &Metrics,
    ) -> Result<Exporting, crate::oidc::transport::TransportError> {
        let transport = HttpTransport::new(TransportConfig::default())?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(ExportStats::default());
        let tracer = Arc::new(Tracer::new(sample_ratio, tx, stats.clone()));
        let target = Arc::new(Target {
            url: ArcSwap::from_pointee(url),
        });
        {
            let stats = stats.clone();
            metrics.add_source(Arc::new(move |out: &mut String| render(&stats, out)));
        }
        tokio::spawn(run(rx, transport, target.clone(), stats, Resource::from_env()));
        Ok(Exporting { tracer, target })
    }

    /// A reload: the new endpoint and ratio (the queue and counters stay).
    pub fn configure(&self, cfg: &TelemetryConfig) {
        self.tracer.set_ratio(cfg.sample_ratio);
        if let Some(u) = &cfg.otlp_traces_url {
            self.target.url.store(Arc::new(u.clone()));
        }
    }
}

fn render(stats: &ExportStats, o: &mut String) {
    use std::fmt::Write;
    o.push_str("# HELP portcullis_trace_spans_total Finished spans, by what became of them: exported, dropped (queue full) or failed (export refused or unreachable).\n");
    o.push_str("# TYPE portcullis_trace_spans_total counter\n");
    for (result, c) in [
        ("exported", &stats.exported),
        ("dropped", &stats.dropped),
        ("failed", &stats.failed),
    ] {
        let _ = writeln!(
            o,
            "portcullis_trace_spans_total{{result=\"{result}\"}} {}",
            c.load(Relaxed)
        );
    }
}

async fn run(
    mut rx: mpsc::Receiver<SpanRecord>,
    transport: HttpTransport,
    target: Arc<Target>,
    stats: Arc<ExportStats>,
    resource: Resource,
) {
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(BATCH);
    let mut last_warn: Option<Instant> = None;
    let mut failed_since_warn = 0u64;
    loop {
        // Wait (idle) for a first span, then up to BATCH_DELAY for the batch to fill.
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, BATCH - batch.len()))
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let n = batch.len() as u64;
        let body = Bytes::from(encode(&resource, &batch));
        batch.clear();
        let url = target.url.load_full();
        let outcome = match transport.post_otlp(&url, body).await {
            Ok(r) if r.status.is_success() => Ok(()),
            Ok(r) => Err(format!("the collector answered {}", r.status)),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                stats.exported.fetch_add(n, Relaxed);
            }
            Err(error) => {
                stats.failed.fetch_add(n, Relaxed);
                failed_since_warn += n;
                if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        url = %url,
                        error = %error,
                        spans_lost = failed_since_warn,
                        "OTLP trace export failed; spans dropped (this warning repeats at most once a minute)"
                    );
                    last_warn = Some(Instant::now());
                    failed_since_warn = 0;
                }
            }
        }
    }
}
