//! `EchoUpstream`: a real hyper HTTP/1.1 + h2c server on 127.0.0.1:0 that answers with what
//! it received, so tests can assert exactly what the proxy forwarded.
//!
//! Every answer is JSON `{method, path, version, headers: [[name, value]...], body_len}`
//! (`path` is the raw path and query as received). Special paths:
//! - `/slow?ms=N`: sleeps N ms, then answers;
//! - `/download?bytes=N`: streams N bytes in 64 KiB chunks (never buffered);
//! - `/upload`: counts a streamed request body without buffering it (`body_len`);
//! - `/ws`: WebSocket echo on the upgraded connection;
//! - `/status/N`: answers with status N;
//! - `/response-hop`: answers with hop-by-hop headers (`Connection: x-up-hop`, `X-Up-Hop`,
//!   `Keep-Alive`, `Proxy-Authenticate`) and `X-Up-Kept`.
//!
//! The special paths match at the end of the path (`/api/slow` is slow too), so they work
//! behind any route prefix. Requests are recorded when their head arrives (before the body
//! or any sleep).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

pub const CHUNK: usize = 64 * 1024;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct EchoUpstream {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoUpstream {
    pub async fn start() -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let rec = recorded.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, rec.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        EchoUpstream {
            addr,
            recorded,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` (plus `base`, e.g. "/via-api").
    pub fn url(&self, base: &str) -> String {
        format!("http://{}{}", self.addr, base)
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }
}

fn query_u64(path: &str, key: &str) -> Option<u64> {
    let q = path.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn handle(
    req: Request<Incoming>,
    rec: Arc<Mutex<Vec<Recorded>>>,
) -> Result<Response<EchoBody>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let recorded = Recorded {
        method: req.method().to_string(),
        path: path.clone(),
        headers: headers.clone(),
    };
    rec.lock().unwrap().push(recorded);
    let bare = path.split('?').next().unwrap_or("");

    if bare.ends_with("/ws") {
        return Ok(websocket(req));
    }
    if bare.ends_with("/download") {
        let n = query_u64(&path, "bytes").unwrap_or(0);
        let mut r = Response::new(EchoBody::Stream {
            remaining: n,
            chunk: Bytes::from(vec![b'x'; CHUNK]),
        });
        r.headers_mut()
            .insert("content-type", "application/octet-stream".parse().unwrap());
        return Ok(r);
    }
    if bare.ends_with("/slow") {
        let ms = query_u64(&path, "ms").unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let version = format!("{:?}", req.version());
    let method = req.method().to_string();
    let status = bare
        .rsplit_once("/status/")
        .and_then(|(_, n)| n.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    // Count the body frame by frame: never buffered (the 1 GiB upload goes through here).
    let mut body = req.into_body();
    let mut body_len: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let json = serde_json::json!({
        "method": method,
        "path": path,
        "version": version,
        "headers": headers,
        "body_len": body_len,
    });
    let mut r = Response::new(EchoBody::full(json.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    if bare.ends_with("/response-hop") {
        h.insert("connection", "x-up-hop".parse().unwrap());
        h.insert("x-up-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic realm=\"up\"".parse().unwrap());
        h.insert("x-up-kept", "1".parse().unwrap());
    }
    Ok(r)
}

fn websocket(mut req: Request<Incoming>) -> Response<EchoBody> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let upgrade_ok = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = key.filter(|_| upgrade_ok) else {
        let mut r = Response::new(EchoBody::full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                let _ = ws.close(None).await;
                return;
            }
            let data = matches!(msg, Message::Text(_) | Message::Binary(_));
            if data && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(EchoBody::full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "Upgrade".parse().unwrap());
    h.insert("sec-websocket-accept", accept.parse().unwrap());
    r
}

/// A complete body, or `remaining` bytes streamed as clones of one 64 KiB chunk.
pub enum EchoBody {
    Full(Option<Bytes>),
    Stream { remaining: u64, chunk: Bytes },
}

impl EchoBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b: Bytes = b.into();
        EchoBody::Full((!b.is_empty()).then_some(b))
    }
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            EchoBody::Full(d) => Poll::Ready(d.take().map(|d| Ok(Frame::data(d)))),
            EchoBody::Stream { remaining, chunk } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(chunk.len() as u64) as usize;
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EchoBody::Full(d) => d.is_none(),
            EchoBody::Stream { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EchoBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            EchoBody::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}
