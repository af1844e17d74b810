//! The authenticated side of `benches/load.sh`: runs the built-in development provider on
//! 127.0.0.1 and, on commands read from stdin (one per line), mints valid RS256 access
//! tokens and logs in through a running portcullis to obtain a session cookie.
//!
//! ```text
//! cargo build --release --example bench_env
//! target/release/examples/bench_env            # prints: ready <issuer> <audience>
//!   token FILE                 -> one valid access token (the cached-bearer token) in FILE
//!   mint N FILE                -> N distinct, valid, never-used access tokens, one a line
//!                                 (signed on all cores); answers: ok N <seconds>
//!   dpop-token FILE            -> one valid DPoP-bound access token (RFC 9449: `cnf.jkt` of
//!                                 this process's ES256 proof key) in FILE
//!   dpop-proofs N HTU TOKEN_FILE FILE
//!                              -> N fresh DPoP proofs (distinct `jti`, `iat` now) of GET
//!                                 HTU for the token in TOKEN_FILE, one a line
//!   mint N FILE RATE LIFETIME  -> the same, for use in order at RATE a second: the token
//!                                 of line k expires LIFETIME seconds after k / RATE
//!                                 seconds from now (benches/soak.sh: identity-cache
//!                                 entries, which never outlive `exp`, come and go)
//!   login PROXY_URL PATH FILE  -> browser login as alice through PROXY_URL (a portcullis
//!                                 whose provider is this one), landing on PATH; writes the
//!                                 `Cookie` header value of the session to FILE
//! ```
//!
//! Every answer is one line, `ok ...` or `err <message>`. End of stdin (or SIGTERM) stops
//! it. Tokens: `iss` = the provider, `aud` = its audience, `scope` = `read:items`,
//! `exp` = now + 1 h, distinct `sub` and `jti`, header `typ: at+jwt`, signed with the
//! provider's active RS256 key (the one its JWKS publishes). The provider's own access and
//! ID tokens live 2 h here, so a session made before the run needs no refresh during it.
//! For benchmarks only: the provider lists its users' passwords and well-known secrets.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::dev_idp::{DevIdp, DevIdpConfig, Lifetimes, SigningAlg, MACHINE_CLIENT_ID};
use serde_json::json;

/// The DPoP key of this process (ES256) and its public JWK.
struct DpopKey {
    pair: aws_lc_rs::signature::EcdsaKeyPair,
    jwk: serde_json::Map<String, serde_json::Value>,
}

impl DpopKey {
    fn new() -> Result<DpopKey, String> {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| e.to_string())?;
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).map_err(|e| e.to_string())?;
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref().to_vec();
        let jwk = json!({"kty": "EC", "crv": "P-256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])});
        Ok(DpopKey {
            pair,
            jwk: jwk.as_object().cloned().unwrap_or_default(),
        })
    }

    fn jkt(&self) -> Result<String, String> {
        portcullis::token::dpop::thumbprint(&self.jwk).ok_or_else(|| "no thumbprint".into())
    }

    /// A proof of GET `htu` for `token`, numbered `n`.
    fn proof(&self, htu: &str, token: &str, run: &str, n: usize) -> Result<String, String> {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk});
        let claims = json!({"jti": format!("{run}-{n}"), "htm": "GET", "htu": htu,
            "iat": now(), "ath": portcullis::token::dpop::sha256_b64(token.as_bytes())});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self
            .pair
            .sign(&rng, input.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A valid access token bound to `key` (`cnf.jkt`).
fn dpop_token(idp: &DevIdp, run: &str, key: &DpopKey) -> Result<String, String> {
    let iat = now();
    let claims = json!({
        "iss": idp.issuer(),
        "sub": "bench-dpop",
        "aud": idp.audience(),
        "client_id": MACHINE_CLIENT_ID,
        "scope": "read:items",
        "iat": iat,
        "exp": iat + 3600,
        "jti": format!("{run}-dpop"),
        "cnf": {"jkt": key.jkt()?},
    });
    idp.sign_jwt("at+jwt", &claims).map_err(|e| e.to_string())
}

/// `n` proofs of GET `htu` for the token in `token_file`, one a line, into `file`.
fn dpop_proofs(
    key: &DpopKey,
    run: &str,
    n: usize,
    htu: &str,
    token_file: &str,
    file: &str,
) -> Result<String, String> {
    let token = std::fs::read_to_string(token_file).map_err(|e| format!("{token_file}: {e}"))?;
    let token = token.trim();
    let mut out = String::with_capacity(n * 600);
    for _ in 0..n {
        let k = SERIAL.fetch_add(1, Ordering::Relaxed) as usize;
        out.push_str(&key.proof(htu, token, run, k)?);
        out.push('\n');
    }
    std::fs::write(file, out).map_err(|e| format!("{file}: {e}"))?;
    Ok(n.to_string())
}

/// Distinct across all `mint` and `token` commands of one process.
static SERIAL: AtomicU64 = AtomicU64::new(0);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// One valid access token, distinct from every other one this process makes, expiring
/// at `exp` (seconds since the epoch).
fn mint_one(idp: &DevIdp, run: &str, exp: u64) -> Result<String, String> {
    let n = SERIAL.fetch_add(1, Ordering::Relaxed);
    let iat = now();
    let claims = json!({
        "iss": idp.issuer(),
        "sub": format!("bench-{n}"),
        "aud": idp.audience(),
        "client_id": MACHINE_CLIENT_ID,
        "scope": "read:items",
        "iat": iat,
        "exp": exp,
        "jti": format!("{run}-{n}"),
    });
    idp.sign_jwt("at+jwt", &claims).map_err(|e| e.to_string())
}

/// `pace`: (rate a second, lifetime in seconds) for tokens used in order; else all live 1 h.
fn mint(
    idp: &DevIdp,
    run: &str,
    n: usize,
    file: &str,
    pace: Option<(f64, u64)>,
) -> Result<String, String> {
    let t0 = Instant::now();
    let start = now();
    let exp = |k: usize| match pace {
        Some((rate, lifetime)) => start + (k as f64 / rate) as u64 + lifetime,
        None => start + 3600,
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let per = n.div_ceil(threads);
    let parts: Vec<Result<Vec<String>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let count = per.min(n.saturating_sub(i * per));
                s.spawn(move || {
                    (0..count)
                        .map(|j| mint_one(idp, run, exp(i * per + j)))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("minting thread panicked".into()))
            })
            .collect()
    });
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(file).map_err(|e| format!("{file}: {e}"))?);
    let mut written = 0usize;
    for part in parts {
        for t in part? {
            out.write_all(t.as_bytes())
                .and_then(|_| out.write_all(b"\n"))
                .map_err(|e| format!("{file}: {e}"))?;
            written += 1;
        }
    }
    out.flush().map_err(|e| format!("{file}: {e}"))?;
    Ok(format!("{written} {:.1}", t0.elapsed().as_secs_f64()))
}

/// A cookie jar for one host: name -> value.
#[derive(Default)]
struct Jar(HashMap<String, String>);

impl Jar {
    fn header(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let mut pairs: Vec<_> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        Some(pairs.join("; "))
    }

    fn store(&mut self, headers: &HeaderMap) {
        for sc in headers.get_all(header::SET_COOKIE) {
            let Ok(sc) = sc.to_str() else { continue };
            let (pair, attrs) = sc.split_once(';').unwrap_or((sc, ""));
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let gone = value.is_empty() || attrs.to_ascii_lowercase().contains("max-age=0");
            if gone {
                self.0.remove(name.trim());
            } else {
                self.0
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> Result<String, String> {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "expected a redirect, got {}: {:.300}",
                    self.status, self.body
                )
            })
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    jar: &mut Jar,
    method: Method,
    url: &str,
    form: Option<&[(&str, &str)]>,
) -> Result<Resp, String> {
    let mut b = Request::builder()
        .method(method)
        .uri(url)
        .header(header::ACCEPT, "text/html")
        .header("sec-fetch-mode", "navigate");
    if let Some(c) = jar.header() {
        b = b.header(header::COOKIE, c);
    }
    let body = match form {
        Some(f) => {
            b = b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            let s: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(f)
                .finish();
            Bytes::from(s)
        }
        None => Bytes::new(),
    };
    let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    jar.store(&parts.headers);
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The browser login of a `login` route, scripted: proxy start -> provider form -> form
/// post -> proxy callback -> the page. Returns the session's `Cookie` header value.
async fn login(idp: &DevIdp, proxy: &str, path: &str) -> Result<String, String> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let (mut pjar, mut ijar) = (Jar::default(), Jar::default());
    let proxy = proxy.trim_end_matches('/');
    let start = format!(
        "{proxy}/oauth2/start?rd={}",
        url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>()
    );
    let r = send(&client, &mut pjar, Method::GET, &start, None).await?;
    let authorize = r.location()?;
    if !authorize.starts_with(&idp.issuer()) {
        return Err(format!(
            "start redirected to {authorize}, not to the provider"
        ));
    }
    let r = send(&client, &mut ijar, Method::GET, &authorize, None).await?;
    let marker = "name=\"tx\" value=\"";
    let tx = r
        .body
        .split_once(marker)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(tx, _)| tx.to_string())
        .ok_or_else(|| {
            format!(
                "no login form at the provider ({}): {:.300}",
                r.status, r.body
            )
        })?;
    let form = [
        ("tx", tx.as_str()),
        ("username", "alice"),
        ("password", "alice"),
    ];
    let url = format!("{}/authorize/login", idp.issuer());
    let r = send(&client, &mut ijar, Method::POST, &url, Some(&form)).await?;
    let callback = r.location()?;
    if !callback.starts_with(proxy) || !callback.contains("code=") {
        return Err(format!(
            "login answered {callback}, not a code for the proxy"
        ));
    }
    let r = send(&client, &mut pjar, Method::GET, &callback, None).await?;
    let landing = r.location()?;
    if r.status != StatusCode::FOUND && r.status != StatusCode::SEE_OTHER {
        return Err(format!("callback answered {}: {:.300}", r.status, r.body));
    }
    let cookie = pjar.header().ok_or("the callback set no session cookie")?;
    // The session must open as is, without being re-sealed (a Set-Cookie on every request
    // would be a different benchmark).
    let target = if landing.starts_with('/') {
        format!("{proxy}{landing}")
    } else {
        landing
    };
    let r = send(&client, &mut pjar, Method::GET, &target, None).await?;
    if r.status != StatusCode::OK {
        return Err(format!(
            "{target} with the session answered {}: {:.300}",
            r.status, r.body
        ));
    }
    if r.headers.contains_key(header::SET_COOKIE) {
        return Err(format!(
            "{target} re-set the session cookie on a plain request"
        ));
    }
    Ok(cookie)
}

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_env: runtime: {e}");
            std::process::exit(1);
        }
    };
    let long = Duration::from_secs(2 * 3600);
    let idp = rt.block_on(DevIdp::start(DevIdpConfig {
        signing_alg: SigningAlg::RS256,
        lifetimes: Lifetimes {
            access_token: long,
            id_token: long,
            ..Lifetimes::default()
        },
        ..DevIdpConfig::default()
    }));
    let idp = match idp {
        Ok(i) => i,
        Err(e) => {
            eprintln!("bench_env: development provider: {e}");
            std::process::exit(1);
        }
    };
    // Distinguishes this process's tokens from any other run's.
    let run = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let dpop_key = match DpopKey::new() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("bench_env: DPoP key: {e}");
            std::process::exit(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "ready {} {}", idp.issuer(), idp.audience());
    let _ = stdout.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            [] => continue,
            ["token", file] => mint_one(&idp, &run, now() + 3600)
                .and_then(|t| {
                    std::fs::write(file, format!("{t}\n")).map_err(|e| format!("{file}: {e}"))
                })
                .map(|_| String::new()),
            ["mint", n, file] => match n.parse::<usize>() {
                Ok(n) => mint(&idp, &run, n, file, None),
                Err(_) => Err(format!("not a count: {n}")),
            },
            ["dpop-token", file] => dpop_token(&idp, &run, &dpop_key)
                .and_then(|t| {
                    std::fs::write(file, format!("{t}\n")).map_err(|e| format!("{file}: {e}"))
                })
                .map(|_| String::new()),
            ["dpop-proofs", n, htu, token_file, file] => match n.parse::<usize>() {
                Ok(n) => dpop_proofs(&dpop_key, &run, n, htu, token_file, file),
                Err(_) => Err(format!("not a count: {n}")),
            },
            ["mint", n, file, rate, lifetime] => {
                match (
                    n.parse::<usize>(),
                    rate.parse::<f64>(),
                    lifetime.parse::<u64>(),
                ) {
                    (Ok(n), Ok(r), Ok(l)) if r > 0.0 => mint(&idp, &run, n, file, Some((r, l))),
                    _ => Err(format!(
                        "not a count, rate and lifetime: {n} {rate} {lifetime}"
                    )),
                }
            }
            ["login", proxy, path, file] => rt
                .block_on(login(&idp, proxy, path))
                .and_then(|c| {
                    std::fs::write(file, format!("{c}\n")).map_err(|e| format!("{file}: {e}"))
                })
                .map(|_| String::new()),
            _ => Err(format!("unknown command: {line}")),
        };
        let _ = match answer {
            Ok(a) => writeln!(stdout, "ok {a}"),
            Err(e) => writeln!(stdout, "err {}", e.replace('\n', " ")),
        };
        let _ = stdout.flush();
    }
    rt.block_on(idp.shutdown());
}
