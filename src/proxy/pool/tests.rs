//! The pool against real sockets: raw HTTP/1.1 servers on std threads (so that they act
//! while the client's current_thread runtime is blocked), hyper servers, TLS with a CA of
//! the test's own.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn config(scheme: Scheme, addr: SocketAddr) -> UpstreamConfig {
    UpstreamConfig {
        name: "app".into(),
        scheme,
        authority: addr.to_string().parse().unwrap(),
        base_path: String::new(),
        ca_file: None,
        client_cert: None,
        h2: false,
        preserve_host: false,
        connect_timeout: Duration::from_secs(5),
        pool_idle_timeout: Duration::from_secs(90),
        pool_max_idle: 16,
        path_readings: crate::config::PathReadings::Strict,
    }
}

fn get(scheme: &str, addr: SocketAddr, path: &str, h2: bool) -> Request<ReqBody> {
    Request::builder()
        .uri(format!("{scheme}://{addr}{path}"))
        .version(if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        })
        .body(ReqBody::empty())
        .unwrap()
}

async fn text(resp: Response<Incoming>) -> String {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Waits (up to 5 s) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

// ---- A raw HTTP/1.1 upstream on std threads ----

#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Keep the connection for the next request.
    KeepAlive,
    /// After a response, wait for the test's cue (`Seen::cue`), write a byte to
    /// `Seen::signal`, close the connection (no `Connection: close` was said) and report it
    /// (`Seen::closed`). Without a cue, close at once.
    CloseOnCue,
    /// Answer one request per connection; on reading a second one, close unanswered.
    CloseOnSecondRequest,
}

#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    /// Connections on which the server read EOF (closed by the client).
    client_closed: AtomicUsize,
    heads: Mutex<Vec<String>>,
    signal: Mutex<Option<StdStream>>,
    cue: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    closed: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// `GET /slow` sends half its body, then waits for this before sending the rest.
    gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl Seen {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn client_closed(&self) -> usize {
        self.client_closed.load(Ordering::SeqCst)
    }
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// Answers `conn=<index of the connection>` to every request (heads only, no bodies).
/// `hold`: the first answer on each connection waits until that many connections have a
/// request in.
fn raw_upstream(after: After, hold: Option<usize>) -> (SocketAddr, Arc<Seen>) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let barrier = hold.map(|n| Arc::new(std::sync::Barrier::new(n)));
    let s = seen.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let index = s.accepted.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || raw_connection(tcp, index, after, barrier, &s));
        }
    });
    (addr, seen)
}

fn raw_connection(
    mut tcp: StdStream,
    index: usize,
    after: After,
    barrier: Option<Arc<std::sync::Barrier>>,
    seen: &Seen,
) {
    let mut answered = 0;
    let mut buf = Vec::new();
    loop {
        // One request head.
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                buf.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    seen.client_closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let slow = head.starts_with("GET /slow ");
        seen.heads.lock().unwrap().push(head);
        if after == After::CloseOnSecondRequest && answered == 1 {
            return;
        }
        if let (Some(b), 0) = (&barrier, answered) {
            b.wait();
        }
        let body = format!("conn={index}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (first, rest) = if slow {
            resp.split_at(resp.len() - 3)
        } else {
            (resp.as_str(), "")
        };
        if tcp.write_all(first.as_bytes()).is_err() {
            return;
        }
        if !rest.is_empty() {
            let gate = seen.gate.lock().unwrap().take();
            if let Some(gate) = gate {
                let _ = gate.recv();
            }
            if tcp.write_all(rest.as_bytes()).is_err() {
                return;
            }
        }
        answered += 1;
        if after == After::CloseOnCue {
            let cue = seen.cue.lock().unwrap().take();
            if let Some(cue) = cue {
                let _ = cue.recv();
                if let Some(mut signal) = seen.signal.lock().unwrap().take() {
                    let _ = signal.write_all(b"!");
                }
                drop(tcp);
                if let Some(closed) = seen.closed.lock().unwrap().take() {
                    let _ = closed.send(());
                }
            }
            return;
        }
    }
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let (addr, seen) = raw_upstream(After::KeepAlive, None);
    let pool = UpstreamPool::new(&config(Scheme::HTTP, addr)).unwrap();
    for i in 0..5 {
        let resp = pool
            .send(get("http", addr, &format!("/r{i}"), false))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(text(resp).await, "conn=0", "request {i}");
    }
    assert_eq!(seen.accepted(), 1);
    assert_eq!(seen.heads().len(), 5);
    assert_eq!(pool.idle_len(), 1);
}

#[tokio::test]
async fn a_connection_returns_to_the_pool_when_its_response_body_has_finished() {
    let (addr, seen) = raw_upstream(After::KeepAlive, None);
    let (finish, gate) = std::sync::mpsc::channel();
    *seen.gate.lock().unwrap() = Some(gate);
    let pool = UpstreamPool::new(&config(Scheme::HTTP, addr)).unwrap();
    let slow = pool.send(get("http", addr, "/slow", false)).await.unwrap();
    assert_eq!(pool.idle_len(), 0, "not back at the response head");
    // Meanwhile another request needs a connection of its own.
    let resp = pool.send(get("http", addr, "/fast", false)).await.unwrap();
    assert_eq!(text(resp).await, "conn=1");
    assert_eq!(pool.idle_len(), 1);
    finish.send(()).unwrap();
    assert_eq!(text(slow).await, "conn=0");
    eventually("the first connection is back in the pool", || {
        pool.idle_len() == 2
    })
    .await;
    for _ in 0..3 {
        text(pool.send(get("http", addr, "/", false)).await.unwrap()).await;
    }
    assert_eq!(seen.accepted(), 2);
}

#[tokio::test]
async fn pool_max_idle_is_respected() {
    // Four requests at once (the upstream answers when all four are in): four connections.
    let (addr, seen) = raw_upstream(After::KeepAlive, Some(4));
    let mut cfg = config(Scheme::HTTP, addr);
    cfg.pool_max_idle = 2;
    let pool = UpstreamPool::new(&cfg).unwrap();
    let sends = (0..4).map(|i| {
        let pool = &pool;
        async move {
            let resp = pool
                .send(get("http", addr, &format!("/{i}"), false))
                .await
                .unwrap();
            text(resp).await
        }
    });
    let bodies = futures_util::future::join_all(sends).await;
    assert_eq!(bodies.len(), 4);
    assert_eq!(seen.accepted(), 4);
    // Two are kept; the other two are closed.
    eventually("two connections closed by the pool", || {
        seen.client_closed() == 2
    })
    .await;
    assert_eq!(pool.idle_len(), 2);
    // The kept ones serve the next requests.
    for _ in 0..3 {
        let resp = pool.send(get("http", addr, "/again", false)).await.unwrap();
        assert_eq!(resp.status(), 200);
        text(resp).await;
    }
    assert_eq!(seen.accepted(), 4);
}

#[tokio::test]
async fn idle_timeout_drops_connections() {
    let (addr, seen) = raw_upstream(After::KeepAlive, None);
    let mut cfg = config(Scheme::HTTP, addr);
    cfg.pool_idle_timeout = Duration::from_millis(100);
    let pool = UpstreamPool::new(&cfg).unwrap();
    let resp = pool.send(get("http", addr, "/1", false)).await.unwrap();
    assert_eq!(text(resp).await, "conn=0");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let resp = pool.send(get("http", addr, "/2", false)).await.unwrap();
    assert_eq!(text(resp).await, "conn=0", "still within the idle timeout");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let resp = pool.send(get("http", addr, "/3", false)).await.unwrap();
    assert_eq!(
        text(resp).await,
        "conn=1",
        "a new connection after the idle timeout"
    );
    assert_eq!(seen.accepted(), 2);
    eventually("the expired connection is closed", || {
        seen.client_closed() == 1
    })
    .await;
}

#[tokio::test]
async fn a_request_the_closed_idle_connection_did_not_send_is_retried_on_a_new_one() {
    // The upstream closes the connection after its response, on cue, without saying so,
    // right after a byte on a signal connection.
    let (addr, seen) = raw_upstream(After::CloseOnCue, None);
    let (cue, cue_rx) = std::sync::mpsc::channel();
    let (closed_tx, closed) = std::sync::mpsc::channel();
    *seen.cue.lock().unwrap() = Some(cue_rx);
    *seen.closed.lock().unwrap() = Some(closed_tx);
    let signal_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let signal_addr = signal_listener.local_addr().unwrap();
    *seen.signal.lock().unwrap() = Some(StdStream::connect(signal_addr).unwrap());
    let (mut signal, _) = signal_listener.accept().await.unwrap();
    // Nothing to read yet: tokio forgets the socket's readiness, so the byte will only be
    // seen through the IO driver.
    assert!(signal.try_read(&mut [0u8; 1]).is_err());

    let pool = UpstreamPool::new(&config(Scheme::HTTP, addr)).unwrap();
    let resp = pool.send(get("http", addr, "/1", false)).await.unwrap();
    assert_eq!(text(resp).await, "conn=0");
    assert_eq!(pool.idle_len(), 1);
    // With the runtime blocked, the signal byte and then the upstream's FIN arrive. The
    // next turn of the runtime's IO driver sees both, in that order, and wakes this task
    // first: the pooled connection is taken while it still looks ready, and its task then
    // finds the FIN before writing the request, which it hands back unsent.
    cue.send(()).unwrap();
    closed.recv_timeout(Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut byte = [0u8; 1];
    signal.read_exact(&mut byte).await.unwrap();
    let resp = pool.send(get("http", addr, "/2", false)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(text(resp).await, "conn=1");
    assert_eq!(pool.retries(), 1, "sent once more, on a new connection");
    assert_eq!(seen.accepted(), 2);
    assert_eq!(
        seen.heads().len(),
        2,
        "each request reached the upstream once"
    );
}

#[tokio::test]
async fn a_request_that_was_sent_is_not_retried() {
    // The upstream reads the second request on a connection and closes without answering.
    let (addr, seen) = raw_upstream(After::CloseOnSecondRequest, None);
    let pool = UpstreamPool::new(&config(Scheme::HTTP, addr)).unwrap();
    let resp = pool.send(get("http", addr, "/1", false)).await.unwrap();
    assert_eq!(text(resp).await, "conn=0");
    let err = pool
        .send(get("http", addr, "/2", false))
        .await
        .expect_err("the upstream closed without answering");
    assert!(!err.is_connect(), "{err}");
    assert!(!err.is_body_timeout(), "{err}");
    assert_eq!(pool.retries(), 0);
    assert_eq!(seen.accepted(), 1);
    assert_eq!(seen.heads().len(), 2);
}

#[tokio::test]
async fn host_header_is_added_and_the_target_is_origin_form() {
    let (addr, seen) = raw_upstream(After::KeepAlive, None);
    let pool = UpstreamPool::new(&config(Scheme::HTTP, addr)).unwrap();
    let resp = pool
        .send(get("http", addr, "/a/b?x=1&y", false))
        .await
        .unwrap();
    text(resp).await;
    let heads = seen.heads();
    let head = heads[0].to_ascii_lowercase();
    assert!(head.starts_with("get /a/b?x=1&y http/1.1\r\n"), "{head}");
    let hosts: Vec<_> = head.lines().filter(|l| l.starts_with("host:")).collect();
    assert_eq!(hosts, [format!("host: {addr}")], "{head}");
}

#[tokio::test]
async fn a_given_host_header_is_kept() {
    let (addr, seen) = raw_upstream(After::KeepAlive, None);
    let pool = UpstreamPool::new(&config(Scheme::HTTP, addr)).unwrap();
    let mut req = get("http", addr, "/", false);
    req.headers_mut()
        .insert(HOST, HeaderValue::from_static("app.example"));
    text(pool.send(req).await.unwrap()).await;
    let heads = seen.heads();
    let head = heads[0].to_ascii_lowercase();
    assert!(head.starts_with("get / http/1.1\r\n"), "{head}");
    let hosts: Vec<_> = head.lines().filter(|l| l.starts_with("host:")).collect();
    assert_eq!(hosts, ["host: app.example"], "{head}");
}

#[test]
fn the_pool_is_send_and_sync_and_its_future_is_send() {
    // hyper's server needs Send futures; workers share nothing, but the types must allow it.
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<UpstreamPool>();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for h2 in [false, true] {
        let mut cfg = config(Scheme::HTTP, addr);
        cfg.h2 = h2;
        let pool = UpstreamPool::new(&cfg).unwrap();
        send(&pool.send(get("http", addr, "/", h2)));
    }
}

#[test]
fn host_header_leaves_out_a_default_port() {
    let a: Authority = "example.com:80".parse().unwrap();
    assert_eq!(host_header(&a, false).unwrap(), "example.com");
    assert_eq!(host_header(&a, true).unwrap(), "example.com:80");
    let a: Authority = "[::1]:443".parse().unwrap();
    assert_eq!(host_header(&a, true).unwrap(), "[::1]");
}

// ---- HTTP/2 ----

/// An h2c upstream answering `<version> <authority> <path>` once `in_flight` requests are
/// in; counts connections and can drop them all.
async fn h2c_upstream(
    in_flight: usize,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(tokio::sync::Barrier::new(in_flight));
    let (a, c) = (accepted.clone(), conns.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let barrier = barrier.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let barrier = barrier.clone();
                async move {
                    barrier.wait().await;
                    let body = format!(
                        "{:?} {} {}",
                        req.version(),
                        req.uri().authority().map_or("-", |a| a.as_str()),
                        req.uri().path()
                    );
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
            let task = tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
            c.lock().unwrap().push(task.abort_handle());
        }
    });
    (addr, accepted, conns)
}

#[tokio::test]
async fn h2c_concurrent_requests_share_one_connection() {
    // The upstream answers only once all five are in: they are in flight together.
    let (addr, accepted, _) = h2c_upstream(5).await;
    let mut cfg = config(Scheme::HTTP, addr);
    cfg.h2 = true;
    let pool = UpstreamPool::new(&cfg).unwrap();
    let sends = (0..5).map(|i| {
        let pool = &pool;
        async move {
            let resp = pool
                .send(get("http", addr, &format!("/s{i}"), true))
                .await
                .unwrap();
            text(resp).await
        }
    });
    let bodies = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(sends),
    )
    .await
    .expect("five requests in flight at once");
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(*b, format!("HTTP/2.0 {addr} /s{i}"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn h2_connection_is_opened_again_after_it_closes() {
    let (addr, accepted, conns) = h2c_upstream(1).await;
    let mut cfg = config(Scheme::HTTP, addr);
    cfg.h2 = true;
    let pool = UpstreamPool::new(&cfg).unwrap();
    let resp = pool.send(get("http", addr, "/1", true)).await.unwrap();
    assert_eq!(text(resp).await, format!("HTTP/2.0 {addr} /1"));
    for c in conns.lock().unwrap().drain(..) {
        c.abort();
    }
    eventually("the pool sees the connection closed", || {
        let Proto::H2 { conn, .. } = &pool.proto else {
            return false;
        };
        lock(&conn.state).live().is_none()
    })
    .await;
    let resp = pool.send(get("http", addr, "/2", true)).await.unwrap();
    assert_eq!(text(resp).await, format!("HTTP/2.0 {addr} /2"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

// ---- TLS ----

struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
}

/// A CA, a server certificate for the IP address 127.0.0.1, a client certificate; PEM
/// files `ca.pem`, `client.pem`, `client.key` in a temp dir.
fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["portcullis-client".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
    Pki {
        dir,
        ca: ca_cert.der().clone(),
        server: (
            server_cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        ),
    }
}

/// A TLS upstream (h2 and http/1.1 by ALPN) answering
/// `<version> alpn=<protocol> client-cert=<yes|no>`; counts connections.
async fn tls_upstream(pki: &Pki, require_client_cert: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
    let verifier = if require_client_cert {
        verifier.build().unwrap()
    } else {
        verifier.allow_unauthenticated().build().unwrap()
    };
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.0.clone()], pki.server.1.clone_key())
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let conn = tls.get_ref().1;
                let alpn = conn
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_else(|| "-".into());
                let cert = conn.peer_certificates().is_some_and(|c| !c.is_empty());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let body = format!(
                        "{:?} alpn={alpn} client-cert={}",
                        req.version(),
                        if cert { "yes" } else { "no" }
                    );
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

fn tls_config(pki: &Pki, addr: SocketAddr, h2: bool, client_cert: bool) -> UpstreamConfig {
    let mut cfg = config(Scheme::HTTPS, addr);
    cfg.h2 = h2;
    cfg.ca_file = Some(pki.dir.path().join("ca.pem"));
    if client_cert {
        cfg.client_cert = Some((
            pki.dir.path().join("client.pem"),
            pki.dir.path().join("client.key"),
        ));
    }
    cfg
}

#[tokio::test]
async fn https_http1_with_a_custom_ca_and_an_ip_address() {
    let pki = pki();
    let (addr, accepted) = tls_upstream(&pki, false).await;
    let pool = UpstreamPool::new(&tls_config(&pki, addr, false, false)).unwrap();
    for _ in 0..3 {
        let resp = pool.send(get("https", addr, "/", false)).await.unwrap();
        assert_eq!(text(resp).await, "HTTP/1.1 alpn=http/1.1 client-cert=no");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "kept alive");
}

#[tokio::test]
async fn https_http2_by_alpn_shares_one_connection() {
    let pki = pki();
    let (addr, accepted) = tls_upstream(&pki, false).await;
    let pool = UpstreamPool::new(&tls_config(&pki, addr, true, false)).unwrap();
    let sends = (0..3).map(|_| {
        let pool = &pool;
        async move { text(pool.send(get("https", addr, "/", true)).await.unwrap()).await }
    });
    for body in futures_util::future::join_all(sends).await {
        assert_eq!(body, "HTTP/2.0 alpn=h2 client-cert=no");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn https_untrusted_certificate_is_a_connect_error() {
    let pki = pki();
    let (addr, _) = tls_upstream(&pki, false).await;
    let mut cfg = tls_config(&pki, addr, false, false);
    cfg.ca_file = None;
    let pool = UpstreamPool::new(&cfg).unwrap();
    let err = pool.send(get("https", addr, "/", false)).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert!(
        matches!(err, PoolError::Connect(ConnectError::Tls(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_certificate_is_presented_when_configured() {
    let pki = pki();
    let (addr, _) = tls_upstream(&pki, true).await;
    for h2 in [false, true] {
        let pool = UpstreamPool::new(&tls_config(&pki, addr, h2, true)).unwrap();
        let resp = pool.send(get("https", addr, "/", h2)).await.unwrap();
        let body = text(resp).await;
        assert!(body.ends_with("client-cert=yes"), "{body}");
        // Without one, the upstream refuses the proxy.
        let pool = UpstreamPool::new(&tls_config(&pki, addr, h2, false)).unwrap();
        let res = pool.send(get("https", addr, "/", h2)).await;
        assert!(
            res.is_err(),
            "h2={h2}: answered without a client certificate"
        );
    }
}

// ---- Connect failures ----

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let addr = {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let pool = UpstreamPool::new(&config(Scheme::HTTP, addr)).unwrap();
    let err = pool.send(get("http", addr, "/", false)).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert!(!err.is_body_timeout());
    assert!(
        matches!(err, PoolError::Connect(ConnectError::Tcp(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn connect_timeout_is_a_connect_error() {
    // A listener that never accepts, its backlog full: further SYNs are dropped, so a
    // connect hangs (locally, without depending on any network).
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match StdStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "the backlog never filled up");
    let mut cfg = config(Scheme::HTTP, addr);
    cfg.connect_timeout = Duration::from_millis(300);
    let pool = UpstreamPool::new(&cfg).unwrap();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        pool.send(get("http", addr, "/", false)),
    )
    .await
    .expect("bounded by the connect timeout")
    .unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert!(
        matches!(err, PoolError::Connect(ConnectError::Timeout(_))),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(fillers);
}

// ---- Upgrades ----

#[tokio::test]
async fn upgrade_round_trip_and_the_connection_is_not_pooled() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                if req.headers().contains_key(http::header::UPGRADE) {
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(on.await.unwrap());
                        let mut buf = [0u8; 64];
                        loop {
                            let n = io.read(&mut buf).await.unwrap();
                            if n == 0 {
                                break;
                            }
                            io.write_all(&buf[..n]).await.unwrap();
                        }
                    });
                    let resp = Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header(http::header::CONNECTION, "upgrade")
                        .header(http::header::UPGRADE, "echo")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    return Ok::<_, std::convert::Infallible>(resp);
                }
                Ok(Response::new(Full::new(Bytes::from_static(b"plain"))))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    let pool = UpstreamPool::new(&config(Scheme::HTTP, addr)).unwrap();
    let mut req = get("http", addr, "/ws", false);
    req.headers_mut().insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    req.headers_mut()
        .insert(http::header::UPGRADE, HeaderValue::from_static("echo"));
    let mut resp = pool.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(&mut resp).await.unwrap());
    io.write_all(b"ping over the upgraded connection")
        .await
        .unwrap();
    let mut buf = vec![0u8; 33];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, b"ping over the upgraded connection");
    assert_eq!(pool.idle_len(), 0);
    // The next request gets a connection of its own.
    let resp = pool.send(get("http", addr, "/", false)).await.unwrap();
    assert_eq!(text(resp).await, "plain");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // And the tunnel still works.
    io.write_all(b"again").await.unwrap();
    let mut buf = [0u8; 5];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");
}

// ---- Request body timeout ----

#[tokio::test]
async fn a_request_body_timeout_is_classified_as_such() {
    // Upstream: reads the whole body before answering.
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = up.accept().await {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(Response::new(Full::new(body)))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc),
            );
        }
    });
    let pool = Arc::new(UpstreamPool::new(&config(Scheme::HTTP, up_addr)).unwrap());

    // Front: a hyper server passing its request body through the pool, as forward.rs does.
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = front.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (pool, tx) = (pool.clone(), tx.clone());
            async move {
                let (parts, body) = req.into_parts();
                let mut up = Request::new(ReqBody::new(body, Duration::from_millis(200)));
                *up.method_mut() = parts.method;
                *up.uri_mut() = format!("http://{up_addr}/upload").parse().unwrap();
                let res = pool.send(up).await;
                let status = if res.is_ok() { 200 } else { 502 };
                tx.send(res).unwrap();
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    });

    // A client that promises 10 bytes and sends 3.
    let mut client = tokio::net::TcpStream::connect(front_addr).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nhost: front\r\ncontent-length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the pool gave up on the body")
        .unwrap();
    let err = res.expect_err("the body never completed");
    assert!(err.is_body_timeout(), "{err:?}");
    assert!(!err.is_connect());
    drop(client);
}
