//! The traffic of `benches/soak.sh`: a paced mix of keep-alive HTTP/1.1 requests to a
//! running portcullis, counted exactly, so that the proxy's own request counters can be
//! compared with what was sent.
//!
//! ```text
//! soak_client --addr 127.0.0.1:PORT --connections N --rate R --seconds S \
//!     --cached-token FILE --tokens FILE --cookie FILE [--new-token-rate R]
//! ```
//!
//! Each connection sends, in turn, `GET /pub/x` (public), `GET /api/x` with the one token
//! of `--cached-token` (a token-cache hit) and `GET /app/x` with the session cookie read
//! from `--cookie` (re-read every second: the driver replaces the file with a fresh login
//! while this runs). Apart from those, `--new-token-rate` requests a second go to
//! `GET /api/x` with the next never-used token of `--tokens` (one a line; a full signature
//! check each), on connections of their own. `--rate` is the paced rate of the mix over
//! all connections (0: as fast as the proxy answers, which is how the driver measures
//! capacity). At the end each connection finishes the request it has in flight, so every
//! request counted here was answered.
//!
//! Prints one JSON line: `{"seconds": .., "requests": {"pub": n, "api": n, "app": n},
//! "answered": n, "unexpected": n, "transport_errors": n, "first_unexpected": ".."}`.
//! Every request should answer 200; anything else, or a broken connection, is counted as
//! unexpected (with the first one described), and makes the exit status 1.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

struct Args {
    addr: String,
    connections: usize,
    rate: f64,
    seconds: f64,
    cached_token: String,
    tokens: String,
    cookie: String,
    new_token_rate: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: String::new(),
        connections: 32,
        rate: 0.0,
        seconds: 10.0,
        cached_token: String::new(),
        tokens: String::new(),
        cookie: String::new(),
        new_token_rate: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--addr" => a.addr = value,
            "--connections" => a.connections = num(&value)? as usize,
            "--rate" => a.rate = num(&value)?,
            "--seconds" => a.seconds = num(&value)?,
            "--cached-token" => a.cached_token = value,
            "--tokens" => a.tokens = value,
            "--cookie" => a.cookie = value,
            "--new-token-rate" => a.new_token_rate = num(&value)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if a.addr.is_empty() || a.cached_token.is_empty() || a.cookie.is_empty() {
        return Err("--addr, --cached-token and --cookie are required".into());
    }
    if a.new_token_rate > 0.0 && a.tokens.is_empty() {
        return Err("--new-token-rate needs --tokens".into());
    }
    Ok(a)
}

#[derive(Clone, Copy)]
enum Kind {
    Pub,
    Cached,
    Session,
    NewToken,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Pub => "/pub/x",
            Kind::Cached | Kind::NewToken => "/api/x",
            Kind::Session => "/app/x",
        }
    }
}

/// What every connection shares: the credentials and the counts.
struct Shared {
    addr: String,
    cached: HeaderValue,
    cookie: RwLock<HeaderValue>,
    tokens: Vec<HeaderValue>,
    next_token: AtomicUsize,
    deadline: Instant,
    sent: [AtomicU64; 3],
    answered: AtomicU64,
    unexpected: AtomicU64,
    transport_errors: AtomicU64,
    first_unexpected: Mutex<Option<String>>,
}

impl Shared {
    fn unexpected(&self, what: String) {
        self.unexpected.fetch_add(1, Relaxed);
        let mut first = self.first_unexpected.lock().unwrap();
        first.get_or_insert(what);
    }

    fn request(&self, kind: Kind) -> Option<Request<Empty<Bytes>>> {
        let mut b = Request::get(kind.path()).header(HOST, "soak.test");
        b = match kind {
            Kind::Pub => b,
            Kind::Cached => b.header(AUTHORIZATION, self.cached.clone()),
            Kind::Session => b.header(COOKIE, self.cookie.read().unwrap().clone()),
            Kind::NewToken => {
                let i = self.next_token.fetch_add(1, Relaxed);
                b.header(AUTHORIZATION, self.tokens.get(i)?.clone())
            }
        };
        b.body(Empty::new()).ok()
    }
}

/// One keep-alive connection sending `kinds` in turn, `per_second` requests a second
/// (0: unpaced), until the deadline; a broken connection is counted and made again.
async fn connection(shared: Arc<Shared>, kinds: &'static [Kind], per_second: f64) {
    let mut tick = (per_second > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut turn = 0usize;
    'connect: while Instant::now() < shared.deadline {
        let stream = match TcpStream::connect(&shared.addr).await {
            Ok(s) => s,
            Err(e) => {
                shared.transport_errors.fetch_add(1, Relaxed);
                shared.unexpected(format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut send, conn)) = http1::handshake(TokioIo::new(stream)).await else {
            shared.transport_errors.fetch_add(1, Relaxed);
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < shared.deadline {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            let kind = kinds[turn % kinds.len()];
            turn += 1;
            let Some(req) = shared.request(kind) else {
                // Out of never-used tokens: this connection's part is done.
                return;
            };
            let answer = send.send_request(req).await;
            match answer {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.into_body().collect().await;
                    if let Kind::Pub = kind {
                        shared.sent[0].fetch_add(1, Relaxed);
                    } else if let Kind::Session = kind {
                        shared.sent[2].fetch_add(1, Relaxed);
                    } else {
                        shared.sent[1].fetch_add(1, Relaxed);
                    }
                    shared.answered.fetch_add(1, Relaxed);
                    if status != StatusCode::OK || body.is_err() {
                        shared.unexpected(format!(
                            "{} answered {status}{}",
                            kind.path(),
                            if body.is_err() { " (body cut)" } else { "" }
                        ));
                    }
                }
                Err(e) => {
                    shared.transport_errors.fetch_add(1, Relaxed);
                    shared.unexpected(format!("{}: {e}", kind.path()));
                    continue 'connect;
                }
            }
        }
    }
}

/// Keeps the session cookie current: the driver swaps the file for a fresh login.
async fn follow_cookie(shared: Arc<Shared>, file: String) {
    while Instant::now() < shared.deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(v) = read_value(&file) {
            *shared.cookie.write().unwrap() = v;
        }
    }
}

fn read_value(file: &str) -> Result<HeaderValue, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    HeaderValue::from_str(text.trim()).map_err(|_| format!("{file}: not a header value"))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak_client: {e}");
            std::process::exit(2);
        }
    };
    let load = || -> Result<_, String> {
        let cached = read_value(&args.cached_token)?;
        let bearer = |t: &str| HeaderValue::from_str(&format!("Bearer {}", t.trim()));
        let tokens = if args.tokens.is_empty() {
            Vec::new()
        } else {
            std::fs::read_to_string(&args.tokens)
                .map_err(|e| format!("{}: {e}", args.tokens))?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(bearer)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("{}: a token is not a header value", args.tokens))?
        };
        let cached = bearer(cached.to_str().unwrap_or_default()).map_err(|e| e.to_string())?;
        Ok((cached, read_value(&args.cookie)?, tokens))
    };
    let (cached, cookie, tokens) = match load() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("soak_client: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let shared = Arc::new(Shared {
        addr: args.addr.clone(),
        cached,
        cookie: RwLock::new(cookie),
        tokens,
        next_token: AtomicUsize::new(0),
        deadline: started + Duration::from_secs_f64(args.seconds),
        sent: Default::default(),
        answered: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        transport_errors: AtomicU64::new(0),
        first_unexpected: Mutex::new(None),
    });
    const MIX: &[Kind] = &[Kind::Pub, Kind::Cached, Kind::Session];
    const NEW: &[Kind] = &[Kind::NewToken];
    rt.block_on(async {
        let mut tasks = Vec::new();
        let per = args.rate / args.connections.max(1) as f64;
        for _ in 0..args.connections {
            tasks.push(tokio::spawn(connection(shared.clone(), MIX, per)));
        }
        if args.new_token_rate > 0.0 {
            let n = 4;
            for _ in 0..n {
                let per = args.new_token_rate / n as f64;
                tasks.push(tokio::spawn(connection(shared.clone(), NEW, per)));
            }
        }
        tokio::spawn(follow_cookie(shared.clone(), args.cookie.clone()));
        for t in tasks {
            let _ = t.await;
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let s = &shared;
    let line = serde_json::json!({
        "seconds": seconds,
        "requests": {
            "pub": s.sent[0].load(Relaxed),
            "api": s.sent[1].load(Relaxed),
            "app": s.sent[2].load(Relaxed),
        },
        "answered": s.answered.load(Relaxed),
        "new_tokens_used": s.next_token.load(Relaxed).min(s.tokens.len()),
        "unexpected": s.unexpected.load(Relaxed),
        "transport_errors": s.transport_errors.load(Relaxed),
        "first_unexpected": s.first_unexpected.lock().unwrap().clone(),
    });
    println!("{line}");
    if s.unexpected.load(Relaxed) > 0 {
        std::process::exit(1);
    }
}
