//! OTLP/HTTP export of finished spans: the protobuf encoding of an
//! `ExportTraceServiceRequest` (the fields portcullis fills), and the background exporter
//! that batches the span queue and POSTs it over the provider client stack (hyper-util,
//! rustls on aws-lc-rs).
//!
//! Why the encoding is written here rather than taken from `opentelemetry-proto` (the
//! OpenTelemetry project's prost-generated types) and `prost`: that crate always depends on
//! `opentelemetry` and `opentelemetry_sdk`, and its trace messages need the SDK's `trace`
//! feature; with `prost`/`prost-derive` that is 15 more crates in every build of the
//! binary (a second `rand`/`getrandom` among them), about 17 s of CPU and 33 s on the
//! 2-core build machine for a release build. What it would replace is encode-only code
//! of fixed shape: a dozen fields of six messages, written with three wire types, never
//! parsing anything from the network. The tests decode its output with
//! `opentelemetry-proto` + `prost` (dev-dependencies only), so the encoding is checked
//! against the project's generated types, not against itself. Field numbers are those of
//! `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto` (OTLP 1.x).
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

/// The exporter's client could not be built (its TLS roots).
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter client: {0}")]
pub struct StartError(#[source] crate::oidc::transport::TransportError);

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
    /// Starts the exporter task (on the current Tokio runtime) sending to `url`. Its own
    /// client: the exports are not provider calls (no spans of their own, no histogram).
    pub fn start(
        url: http::Uri,
        sample_ratio: f64,
        stats: Arc<ExportStats>,
    ) -> Result<Exporting, StartError> {
        let transport = HttpTransport::new(TransportConfig::default()).map_err(StartError)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let tracer = Arc::new(Tracer::new(sample_ratio, tx, stats.clone()));
        let target = Arc::new(Target {
            url: ArcSwap::from_pointee(url),
        });
        tokio::spawn(run(
            rx,
            transport,
            target.clone(),
            stats,
            Resource::from_env(),
        ));
        Ok(Exporting { tracer, target })
    }

    /// A reload: the new endpoint and ratio (the queue and counters stay).
    pub fn configure(&self, url: &http::Uri, sample_ratio: f64) {
        self.tracer.set_ratio(sample_ratio);
        self.target.url.store(Arc::new(url.clone()));
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
            let room = BATCH - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
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

#[cfg(test)]
mod tests {
    use super::super::span::{Kind, SpanContext, SpanRecord, Value};
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
    use prost::Message;

    fn record(parent: Option<[u8; 8]>, remote: bool, error: bool) -> SpanRecord {
        SpanRecord {
            context: SpanContext {
                trace_id: [0x4b; 16],
                span_id: [7; 8],
                sampled: true,
            },
            parent,
            remote_parent: remote,
            name: "GET api".into(),
            kind: Kind::Server,
            start: 1_700_000_000_000_000_000,
            end: 1_700_000_000_250_000_000,
            attributes: vec![
                ("http.route", Value::from("api")),
                ("http.response.status_code", Value::Int(403)),
                ("neg", Value::Int(-5)),
            ],
            error,
            trace_state: Some("rojo=00f067aa0ba902b7".into()),
        }
    }

    #[test]
    fn the_export_decodes_with_the_opentelemetry_types() {
        let spans = [
            record(Some([9; 8]), true, false),
            SpanRecord {
                kind: Kind::Client,
                trace_state: None,
                ..record(None, false, true)
            },
        ];
        let resource = Resource {
            service_name: "edge-proxy".into(),
        };
        let bytes = encode(&resource, &spans);
        let req = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs[0].key, "service.name");
        assert_eq!(
            attrs[0].value.as_ref().unwrap().value,
            Some(Any::StringValue("edge-proxy".into()))
        );
        assert_eq!(attrs[1].key, "service.version");
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "portcullis");
        assert_eq!(ss.spans.len(), 2);
        let s = &ss.spans[0];
        assert_eq!(s.trace_id, vec![0x4b; 16]);
        assert_eq!(s.span_id, vec![7; 8]);
        assert_eq!(s.parent_span_id, vec![9; 8]);
        assert_eq!(s.trace_state, "rojo=00f067aa0ba902b7");
        assert_eq!(s.name, "GET api");
        assert_eq!(s.kind, SpanKind::Server as i32);
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(s.end_time_unix_nano, 1_700_000_000_250_000_000);
        // Sampled, and the parent is remote (SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE | IS_REMOTE).
        assert_eq!(s.flags, 0x301);
        let attr = |s: &opentelemetry_proto::tonic::trace::v1::Span, k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(attr(s, "http.route"), Some(Any::StringValue("api".into())));
        assert_eq!(
            attr(s, "http.response.status_code"),
            Some(Any::IntValue(403))
        );
        assert_eq!(attr(s, "neg"), Some(Any::IntValue(-5)));
        assert!(s.status.is_none());
        let c = &ss.spans[1];
        assert!(c.parent_span_id.is_empty());
        assert_eq!(c.kind, SpanKind::Client as i32);
        assert_eq!(c.trace_state, "");
        assert_eq!(c.flags, 1);
        assert_eq!(
            c.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
    }

    #[test]
    fn an_empty_batch_is_still_a_valid_request() {
        let bytes = encode(&Resource::from_env(), &[]);
        let req = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        assert!(req.resource_spans[0].scope_spans[0].spans.is_empty());
    }
}
