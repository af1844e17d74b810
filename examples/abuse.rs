//! The attacker and the steady client of `benches/abuse.sh`: floods a proxy on 127.0.0.1
//! with one kind of hostile traffic for a bounded time, or measures a steady client's
//! latency meanwhile.
//!
//! ```text
//! cargo build --release --example abuse
//! abuse MODE --addr 127.0.0.1:PORT --secs S [--conns N] [--rate R] [--path P]
//!   steady       N HTTP/1.1 keep-alive connections sending R requests/s in all to P
//!                (latency measured from each request's scheduled time, so a stalled
//!                request also delays the ones queued behind it: no coordinated omission)
//!   rapid-reset  N HTTP/2 connections: HEADERS then RST_STREAM, as fast as they go (h2);
//!                a connection the server closes (GOAWAY) is replaced at once
//!   continuation N raw HTTP/2 connections: one HEADERS without END_HEADERS, then
//!                CONTINUATION frames that never end the block
//!   settings     N raw HTTP/2 connections writing SETTINGS frames in a loop
//!   ping         N raw HTTP/2 connections writing PING frames in a loop, never reading
//!                the acknowledgements
//!   window       N HTTP/2 connections (h2) with a 1-byte stream window, each keeping its
//!                streams open by taking the response one byte at a time (WINDOW_UPDATE 1
//!                a second)
//!   idle         N HTTP/1.1 connections, each makes one request and then stays idle
//!   slowloris    N connections trickling a request head, one header byte a second;
//!                a connection the server closes is replaced
//!   bearer       R requests/s to P, each with a distinct junk bearer token
//!   cookie       R requests/s to P, each with a distinct junk session cookie
//!                (--cookie-name, default _portcullis)
//!   kid          R requests/s to P, each a well-formed ES256 JWT (--iss, --aud) signed
//!                by a key the provider never published, under a fresh kid
//! ```
//!
//! Raw floods write one frame per system call unless `--batch N` (N frames a write).
//!
//! Prints one line of `key=value` counts at the end (`steady` adds p50/p99/max in ms and
//! the status classes). Everything a mode sends goes to `--addr` only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone)]
struct Opts {
    mode: String,
    addr: SocketAddr,
    secs: f64,
    conns: usize,
    rate: f64,
    path: String,
    cookie_name: String,
    iss: String,
    aud: String,
    /// Raw floods: frames per write (1: one system call, and one loopback segment, each).
    batch: usize,
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .ok_or("usage: abuse MODE --addr A --secs S ...")?;
    let mut o = Opts {
        mode,
        addr: "127.0.0.1:8080".parse().map_err(|_| "addr")?,
        secs: 10.0,
        conns: 4,
        rate: 100.0,
        path: "/".into(),
        cookie_name: "_portcullis".into(),
        iss: String::new(),
        aud: String::new(),
        batch: 1,
    };
    while let Some(k) = args.next() {
        let v = args.next().ok_or(format!("{k} needs a value"))?;
        let bad = format!("bad value for {k}: {v}");
        match k.as_str() {
            "--addr" => o.addr = v.parse().map_err(|_| format!("bad address {v}"))?,
            "--secs" => o.secs = v.parse().map_err(|_| bad.clone())?,
            "--conns" => o.conns = v.parse().map_err(|_| bad.clone())?,
            "--rate" => o.rate = v.parse().map_err(|_| bad.clone())?,
            "--path" => o.path = v,
            "--cookie-name" => o.cookie_name = v,
            "--iss" => o.iss = v,
            "--aud" => o.aud = v,
            "--batch" => o.batch = v.parse().map_err(|_| bad.clone())?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if !o.addr.ip().is_loopback() {
        return Err("only loopback addresses".into());
    }
    Ok(o)
}

/// Counters a mode reports at the end, by name.
#[derive(Default)]
struct Counts(Mutex<HashMap<&'static str, u64>>);

impl Counts {
    fn add(&self, k: &'static str, n: u64) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(k)
            .or_default() += n;
    }
    fn line(&self) -> String {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, n)| format!("{k}={n}")).collect();
        v.sort();
        v.join(" ")
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut b);
    b
}

fn random_token(n: usize) -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(n))
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1, written and read by hand (enough for the answers of nginx and portcullis).

/// Reads one response; returns its status. The connection stays usable (keep-alive).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    buf.drain(..head_end);
    loop {
        let done = match len {
            Some(n) if buf.len() >= n => {
                buf.drain(..n);
                true
            }
            None if chunked => match find(buf, b"0\r\n\r\n") {
                Some(i) => {
                    buf.drain(..i + 5);
                    true
                }
                None => false,
            },
            None => true,
            _ => false,
        };
        if done {
            return Ok(status);
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n{extra}\r\n")
}

/// One keep-alive connection that reconnects when the server closes it.
struct H1 {
    addr: SocketAddr,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl H1 {
    fn new(addr: SocketAddr) -> H1 {
        H1 {
            addr,
            conn: None,
            buf: Vec::new(),
        }
    }
    /// Sends one request; the status, or the error (the connection is then dropped).
    async fn send(&mut self, req: &str) -> std::io::Result<u16> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            let _ = s.set_nodelay(true);
            self.conn = Some(s);
            self.buf.clear();
        }
        let Some(s) = self.conn.as_mut() else {
            return Err(std::io::Error::other("no connection"));
        };
        let r = async {
            s.write_all(req.as_bytes()).await?;
            read_response(s, &mut self.buf).await
        }
        .await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

fn status_key(r: &std::io::Result<u16>) -> &'static str {
    match r {
        Ok(200..=299) => "2xx",
        Ok(300..=399) => "3xx",
        Ok(400..=499) => "4xx",
        Ok(_) => "5xx",
        Err(_) => "io_errors",
    }
}

/// Runs `make(i)` requests at `rate` per second in all, over `conns` connections, until
/// `end`; returns the latencies (from the scheduled send time) in microseconds.
async fn paced<F>(o: &Opts, counts: Arc<Counts>, make: F) -> Vec<u64>
where
    F: Fn(u64) -> String + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(o.secs);
    let serial = Arc::new(AtomicU64::new(0));
    let conns = o.conns.max(1);
    let interval = Duration::from_secs_f64(conns as f64 / o.rate.max(0.001));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (make, counts, serial, addr) = (make.clone(), counts.clone(), serial.clone(), o.addr);
        tasks.push(tokio::spawn(async move {
            let mut h1 = H1::new(addr);
            let mut lat = Vec::new();
            let mut due = start + interval.mul_f64(c as f64 / conns as f64);
            while due < end {
                tokio::time::sleep_until(due.into()).await;
                let req = make(serial.fetch_add(1, Relaxed));
                let r = h1.send(&req).await;
                counts.add(status_key(&r), 1);
                lat.push(due.elapsed().as_micros() as u64);
                due += interval;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    all
}

async fn steady(o: &Opts, counts: Arc<Counts>) -> String {
    let req = get(&o.path, "");
    let mut lat = paced(o, counts.clone(), move |_| req.clone()).await;
    lat.sort_unstable();
    let q = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    format!(
        "requests={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        lat.len(),
        q(0.50),
        q(0.99),
        q(1.0)
    )
}

// ---------------------------------------------------------------------------------------
// HTTP/2 through the h2 crate.

async fn h2_client(
    addr: SocketAddr,
    builder: &h2::client::Builder,
) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = builder.handshake(tcp).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

fn h2_get(addr: SocketAddr, path: &str) -> http::Request<()> {
    let mut r = http::Request::new(());
    *r.uri_mut() = format!("http://{addr}{path}")
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("http://127.0.0.1/"));
    r
}

async fn rapid_reset(o: &Opts, counts: Arc<Counts>) {
    let end = Instant::now() + Duration::from_secs_f64(o.secs);
    let mut tasks = Vec::new();
    for _ in 0..o.conns {
        let (o, counts) = (o.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let builder = h2::client::Builder::new();
            while Instant::now() < end {
                let mut send = match h2_client(o.addr, &builder).await {
                    Ok(s) => s,
                    Err(_) => {
                        counts.add("connect_errors", 1);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                counts.add("connections", 1);
                let mut n = 0u64;
                while Instant::now() < end {
                    send = match send.ready().await {
                        Ok(s) => s,
                        Err(_) => break,
                    };
                    match send.send_request(h2_get(o.addr, &o.path), true) {
                        Ok((_resp, mut stream)) => {
                            stream.send_reset(h2::Reason::CANCEL);
                            n += 1;
                        }
                        Err(_) => break,
                    }
                    // Let the connection task write what was queued now and then.
                    if n.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                counts.add("resets", n);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn window(o: &Opts, counts: Arc<Counts>) {
    let end = Instant::now() + Duration::from_secs_f64(o.secs);
    let mut tasks = Vec::new();
    for _ in 0..o.conns {
        let (o, counts) = (o.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut builder = h2::client::Builder::new();
            builder.initial_window_size(1);
            while Instant::now() < end {
                let send = match h2_client(o.addr, &builder).await {
                    Ok(s) => s,
                    Err(_) => {
                        counts.add("connect_errors", 1);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                counts.add("connections", 1);
                let mut streams = tokio::task::JoinSet::new();
                let mut send = Some(send);
                // Open as many streams as the server allows, each read a byte a second.
                while let Some(s) = send.take() {
                    if Instant::now() >= end {
                        break;
                    }
                    let mut s = match s.ready().await {
                        Ok(s) => s,
                        Err(_) => break,
                    };
                    let Ok((resp, _)) = s.send_request(h2_get(o.addr, &o.path), true) else {
                        break;
                    };
                    counts.add("streams", 1);
                    let counts = counts.clone();
                    streams.spawn(async move {
                        let Ok(resp) = resp.await else { return };
                        let mut body = resp.into_body();
                        while Instant::now() < end {
                            match body.data().await {
                                Some(Ok(d)) => {
                                    counts.add("bytes", d.len() as u64);
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    let _ = body.flow_control().release_capacity(d.len());
                                }
                                _ => return,
                            }
                        }
                    });
                    send = Some(s);
                    // Streams beyond the server's limit wait in `ready()`.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let left = end.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, async {
                    while streams.join_next().await.is_some() {}
                })
                .await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/2 frames written by hand: what the h2 crate will not send.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

const DATA_SETTINGS: u8 = 0x4;
const DATA_PING: u8 = 0x6;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

/// HPACK: a literal header field without indexing, new name (RFC 7541 §6.2.2), short
/// strings only.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// One raw connection: writes `first`, then `next()` blocks until the deadline or the
/// server closes it; a reader drains (and discards) what the server sends, unless
/// `read` is false. Returns the bytes written.
async fn raw_conn<F>(
    addr: SocketAddr,
    end: Instant,
    first: Vec<u8>,
    read: bool,
    mut next: F,
) -> std::io::Result<u64>
where
    F: FnMut(u64) -> Vec<u8>,
{
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let (mut r, mut w) = tcp.into_split();
    let reader = read.then(|| {
        tokio::spawn(async move {
            let mut b = vec![0u8; 16384];
            while matches!(r.read(&mut b).await, Ok(n) if n > 0) {}
        })
    });
    w.write_all(&first).await?;
    let mut sent = first.len() as u64;
    let mut i = 0u64;
    let r = async {
        while Instant::now() < end {
            let b = next(i);
            i += 1;
            w.write_all(&b).await?;
            sent += b.len() as u64;
            if i.is_multiple_of(16) {
                tokio::task::yield_now().await;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let left = end.saturating_duration_since(Instant::now());
    let _ = tokio::time::timeout(left, r).await;
    if let Some(h) = reader {
        h.abort();
    }
    Ok(sent)
}

/// Runs `conns` raw connections until the deadline, each replaced when the server
/// closes it.
async fn raw_flood<F>(
    o: &Opts,
    counts: Arc<Counts>,
    read: bool,
    first: fn(&Opts) -> Vec<u8>,
    next: F,
) where
    F: Fn(u64) -> Vec<u8> + Send + Sync + Clone + 'static,
{
    let end = Instant::now() + Duration::from_secs_f64(o.secs);
    let mut tasks = Vec::new();
    for _ in 0..o.conns {
        let (o, counts, next) = (o.clone(), counts.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                counts.add("connections", 1);
                let batch = o.batch.max(1) as u64;
                let next = |i: u64| (i * batch..(i + 1) * batch).flat_map(&next).collect();
                match raw_conn(o.addr, end, first(&o), read, next).await {
                    Ok(n) => counts.add("bytes", n),
                    Err(_) => {
                        counts.add("connect_errors", 1);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn preface_and_settings(_: &Opts) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, DATA_SETTINGS, 0, 0, &[]);
    out
}

fn continuation_first(o: &Opts) -> Vec<u8> {
    let mut out = preface_and_settings(o);
    // :method GET, :scheme http, :path / (static table), :authority as a literal.
    let mut block = vec![0x82, 0x86, 0x84];
    literal(&mut block, b":authority", b"127.0.0.1");
    // HEADERS on stream 1 with END_STREAM, without END_HEADERS: a block that is never
    // finished.
    frame(&mut out, HEADERS, END_STREAM, 1, &block);
    out
}

fn continuation_next(i: u64) -> Vec<u8> {
    let mut block = Vec::with_capacity(1100);
    for j in 0..16 {
        let name = format!("x-c{i}-{j}");
        literal(&mut block, name.as_bytes(), &[b'v'; 48]);
    }
    let mut out = Vec::with_capacity(block.len() + 9);
    frame(&mut out, CONTINUATION, 0, 1, &block);
    out
}

fn settings_next(i: u64) -> Vec<u8> {
    // SETTINGS_HEADER_TABLE_SIZE (1) and SETTINGS_INITIAL_WINDOW_SIZE (4), changing
    // every frame so that each one must be applied.
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&(4096 - (i % 2) as u32 * 1024).to_be_bytes());
    p.extend_from_slice(&4u16.to_be_bytes());
    p.extend_from_slice(&(65535 - (i % 7) as u32).to_be_bytes());
    let mut out = Vec::with_capacity(32);
    frame(&mut out, DATA_SETTINGS, 0, 0, &p);
    out
}

fn ping_next(i: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    frame(&mut out, DATA_PING, 0, 0, &i.to_be_bytes());
    out
}

// ---------------------------------------------------------------------------------------
// Idle and slow connections.

async fn idle(o: &Opts, counts: Arc<Counts>) {
    let end = Instant::now() + Duration::from_secs_f64(o.secs);
    let mut held = Vec::with_capacity(o.conns);
    let req = get(&o.path, "");
    // Opened at up to 2,000 a second, each after one request: idle keep-alive connections
    // (a connection that never sends a request is closed at header_read_timeout).
    for i in 0..o.conns {
        if Instant::now() >= end {
            break;
        }
        let mut h1 = H1::new(o.addr);
        let r = tokio::time::timeout(Duration::from_secs(5), h1.send(&req)).await;
        match r {
            Ok(Ok(_)) => {
                counts.add("opened", 1);
                held.push(h1);
            }
            _ => counts.add("open_errors", 1),
        }
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    counts.add("held", held.len() as u64);
    tokio::time::sleep_until(end.into()).await;
    // Still open at the end: the server has not closed them (a read would see EOF).
    let mut open = 0;
    for h in &mut held {
        if let Some(s) = &h.conn {
            let mut b = [0u8; 1];
            if let Ok(Err(_)) = tokio::time::timeout(Duration::ZERO, s.peek(&mut b)).await {
                continue;
            }
            if matches!(
                tokio::time::timeout(Duration::from_millis(1), s.peek(&mut b)).await,
                Ok(Ok(0))
            ) {
                continue;
            }
            open += 1;
        }
    }
    counts.add("still_open", open);
}

async fn slowloris(o: &Opts, counts: Arc<Counts>) {
    let end = Instant::now() + Duration::from_secs_f64(o.secs);
    let mut tasks = Vec::new();
    for c in 0..o.conns {
        let (addr, counts, path) = (o.addr, counts.clone(), o.path.clone());
        tasks.push(tokio::spawn(async move {
            // Spread the connections over the first second.
            let stagger = Duration::from_micros(1_000_000 * c as u64 / 500);
            tokio::time::sleep(stagger).await;
            while Instant::now() < end {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    counts.add("connect_errors", 1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                counts.add("connections", 1);
                let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
                if s.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                let mut closed = false;
                while Instant::now() < end {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if s.write_all(b"a").await.is_err() {
                        closed = true;
                        break;
                    }
                    let mut b = [0u8; 256];
                    if let Ok(r) = tokio::time::timeout(Duration::ZERO, s.read(&mut b)).await {
                        if matches!(r, Ok(0) | Err(_)) {
                            closed = true;
                            break;
                        }
                    }
                }
                if closed {
                    counts.add("closed_by_server", 1);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

// ---------------------------------------------------------------------------------------
// Junk credentials at a rate.

fn es256_key() -> Result<EcdsaKeyPair, String> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| "cannot make a P-256 key")?;
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|_| "cannot read the P-256 key".into())
}

fn unknown_kid_jwt(key: &EcdsaKeyPair, o: &Opts, n: u64) -> String {
    let kid = format!("unknown-{}-{n}", random_token(6));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
    let claims = serde_json::json!({
        "iss": o.iss, "aud": o.aud, "sub": format!("mallory-{n}"), "scope": "read:items",
        "iat": now, "exp": now + 600, "jti": random_token(12),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let sig = key
        .sign(&rng, signing_input.as_bytes())
        .map(|s| URL_SAFE_NO_PAD.encode(s.as_ref()))
        .unwrap_or_default();
    format!("{signing_input}.{sig}")
}

// ---------------------------------------------------------------------------------------

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("abuse: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("abuse: runtime: {e}");
            std::process::exit(1);
        }
    };
    let counts = Arc::new(Counts::default());
    let t0 = Instant::now();
    let extra = rt.block_on(async {
        let c = counts.clone();
        match o.mode.as_str() {
            "steady" => Ok(steady(&o, c).await),
            "rapid-reset" => {
                rapid_reset(&o, c).await;
                Ok(String::new())
            }
            "window" => {
                window(&o, c).await;
                Ok(String::new())
            }
            "continuation" => {
                raw_flood(&o, c, true, continuation_first, continuation_next).await;
                Ok(String::new())
            }
            "settings" => {
                raw_flood(&o, c, true, preface_and_settings, settings_next).await;
                Ok(String::new())
            }
            "ping" => {
                raw_flood(&o, c, false, preface_and_settings, ping_next).await;
                Ok(String::new())
            }
            "idle" => {
                idle(&o, c).await;
                Ok(String::new())
            }
            "slowloris" => {
                slowloris(&o, c).await;
                Ok(String::new())
            }
            "bearer" => {
                let path = o.path.clone();
                paced(&o, c, move |_| {
                    get(
                        &path,
                        &format!("Authorization: Bearer {}\r\n", random_token(48)),
                    )
                })
                .await;
                Ok(String::new())
            }
            "cookie" => {
                let (name, path) = (o.cookie_name.clone(), o.path.clone());
                paced(&o, c, move |_| {
                    get(&path, &format!("Cookie: {name}={}\r\n", random_token(180)))
                })
                .await;
                Ok(String::new())
            }
            "kid" => {
                let key = Arc::new(es256_key()?);
                let (o2, path) = (o.clone(), o.path.clone());
                paced(&o, c, move |n| {
                    let t = unknown_kid_jwt(&key, &o2, n);
                    get(&path, &format!("Authorization: Bearer {t}\r\n"))
                })
                .await;
                Ok(String::new())
            }
            m => Err(format!("unknown mode {m}")),
        }
    });
    match extra {
        Ok(extra) => println!(
            "mode={} secs={:.1} {} {}",
            o.mode,
            t0.elapsed().as_secs_f64(),
            counts.line(),
            extra
        ),
        Err(e) => {
            eprintln!("abuse: {e}");
            std::process::exit(2);
        }
    }
}
