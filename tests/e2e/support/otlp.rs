//! `OtlpReceiver`: an OTLP/HTTP trace receiver on 127.0.0.1:0 (`POST /v1/traces`,
//! `application/x-protobuf`) that decodes each export with the OpenTelemetry project's
//! generated types (`opentelemetry-proto` + `prost`), independently of the proxy's own
//! encoder, and keeps the spans for the test to look at.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// One received span with the resource it came with.
#[derive(Debug, Clone)]
pub struct Got {
    pub span: Span,
    pub service_name: Option<String>,
}

impl Got {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    pub fn name(&self) -> &str {
        &self.span.name
    }

    pub fn kind(&self) -> i32 {
        self.span.kind
    }

    /// A string or integer attribute, as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        let v = self
            .span
            .attributes
            .iter()
            .find(|a| a.key == key)?
            .value
            .clone()?
            .value?;
        match v {
            Any::StringValue(s) => Some(s),
            Any::IntValue(i) => Some(i.to_string()),
            Any::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
    /// Every request's path and content type, decodable or not.
    requests: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (spans.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| handle(req, s.clone(), r.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        OtlpReceiver {
            addr,
            spans,
            requests,
            task,
        }
    }

    /// The base endpoint, as `[telemetry] otlp_endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().unwrap().clone()
    }
}

async fn handle(
    req: Request<Incoming>,
    spans: Arc<Mutex<Vec<Got>>>,
    requests: Arc<Mutex<Vec<(String, String)>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    requests.lock().unwrap().push((path.clone(), ctype.clone()));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    if path != "/v1/traces" || ctype != "application/x-protobuf" {
        return Ok(status(StatusCode::NOT_FOUND));
    }
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let mut got = spans.lock().unwrap();
    for rs in export.resource_spans {
        let service_name = rs.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.clone()?.value)
                .and_then(|v| match v {
                    Any::StringValue(s) => Some(s),
                    _ => None,
                })
        });
        for ss in rs.scope_spans {
            for span in ss.spans {
                got.push(Got {
                    span,
                    service_name: service_name.clone(),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse.
    Ok(Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::new()))
        .unwrap())
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(s)
        .body(Full::new(Bytes::new()))
        .unwrap()
}
