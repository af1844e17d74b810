//! Token path benches: cached lookup, uncached RS256 / ES256 / EdDSA validation, one
//! introspection round trip against a local stub; plus the RSS of 100,000 cached
//! identities, printed before the benches run.
//!
//! `cargo bench --bench token -- --warm-up-time 1 --measurement-time 3`
//! (`RSS_ONLY=1`: only the memory figure; `SKIP_RSS=1`: only the timings.)

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use criterion::Criterion;
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use portcullis::oidc::transport::{HttpTransport, TransportConfig};
use portcullis::token::{BearerConfig, IntrospectionMode, IssuerConfig, Secret, TokenValidator};
use serde_json::{json, Value};

const API: &str = "https://api.example.com";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Key {
    fn alg(&self) -> &'static str {
        match self {
            Key::Rsa(_) => "RS256",
            Key::Ec(_) => "ES256",
            Key::Ed(_) => "EdDSA",
        }
    }

    fn jwk(&self) -> Value {
        match self {
            Key::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "kid": "k", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Key::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "kid": "k", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..])})
            }
            Key::Ed(k) => {
                json!({"kty": "OKP", "kid": "k", "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "kid": "k", "typ": "JWT"});
        let msg = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            Key::Rsa(k) => {
                let mut s = vec![0; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, msg.as_bytes(), &mut s)
                    .unwrap();
                s
            }
            Key::Ec(k) => k.sign(&rng, msg.as_bytes()).unwrap().as_ref().to_vec(),
            Key::Ed(k) => k.sign(msg.as_bytes()).as_ref().to_vec(),
        };
        format!("{msg}.{}", b64(&sig))
    }
}

/// Auth0-shaped access token claims; `n` makes each token distinct.
fn claims(iss: &str, n: u64) -> Value {
    let t = now();
    json!({
        "iss": iss,
        "sub": format!("auth0|{:024x}", n),
        "aud": [API, format!("{iss}userinfo")],
        "iat": t,
        "exp": t + 3600,
        "azp": "hT5xq1yVbB0Kz0A1pGAnPcBs",
        "scope": "openid profile email",
        "permissions": ["read:items", "write:items"],
        "https://example.com/roles": ["staff"],
        "email": format!("user{n}@example.com"),
        "email_verified": true,
    })
}

/// A loopback stub: `/jwks` answers the given set, `/introspect` an active token.
async fn stub(jwks: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let jwks = Bytes::from(jwks.to_string());
    let active = Bytes::from(
        json!({"active": true, "sub": "svc-1", "scope": "read:items", "client_id": "c",
            "exp": now() + 3600})
        .to_string(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (jwks, active) = (jwks.clone(), active.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = if req.uri().path() == "/jwks" {
                            jwks.clone()
                        } else {
                            active.clone()
                        };
                        async move {
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(body))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    base
}

fn transport() -> HttpTransport {
    HttpTransport::new(TransportConfig {
        timeout: Duration::from_secs(5),
        ca_file: None,
    })
    .unwrap()
}

fn config(issuer: &str, jwks_uri: Option<String>, algs: Vec<Algorithm>) -> BearerConfig {
    let mut ic = IssuerConfig::new(issuer, vec![API.to_string()]);
    ic.discovery = false;
    ic.jwks_uri = jwks_uri;
    ic.algorithms = algs;
    BearerConfig {
        issuers: vec![ic],
        scopes_claims: vec!["scope".into(), "permissions".into()],
        groups_claim: "https://example.com/roles".into(),
        cache_capacity: 200_000,
        ..BearerConfig::default()
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// 100,000 distinct Auth0-shaped tokens (HS256: cheap to make) validated into the cache.
fn rss_of_100k_cached(rt: &tokio::runtime::Runtime) {
    let iss = "https://tenant.example.com/";
    let secret = b"0123456789abcdef0123456789abcdef";
    let mut cfg = config(iss, None, vec![Algorithm::HS256]);
    cfg.issuers[0].hs_secret = Some(Secret::new(secret.to_vec()));
    let v = TokenValidator::new(cfg, transport());
    let hkey = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let header = b64(json!({"alg": "HS256", "typ": "JWT"}).to_string().as_bytes());
    let before = rss_kib();
    rt.block_on(async {
        for n in 0..100_000u64 {
            let msg = format!("{header}.{}", b64(claims(iss, n).to_string().as_bytes()));
            let sig = aws_lc_rs::hmac::sign(&hkey, msg.as_bytes());
            let token = format!("{msg}.{}", b64(sig.as_ref()));
            v.validate(&token).await.unwrap();
        }
    });
    let after = rss_kib();
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    println!(
        "rss: 100000 cached identities: process RSS {:.1} MiB (before filling {:.1} MiB, delta {:.1} MiB, {} bytes/entry); cache entries {}",
        after as f64 / 1024.0,
        before as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / 1024.0,
        (after.saturating_sub(before)) * 1024 / 100_000,
        v.cache_entries()
    );
}

/// On-CPU time of the calling thread (Linux schedstat, nanoseconds). With
/// `BENCH_CPU_TIME=1` the token benches report this instead of wall time, so that other
/// work on a shared 2-core machine does not inflate the figures (the validation runs
/// entirely on the bench thread: no task is spawned on the cache or JWT path).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

struct Clock {
    cpu: bool,
    wall: Instant,
    on_cpu: Duration,
}

impl Clock {
    fn start() -> Self {
        let cpu = std::env::var_os("BENCH_CPU_TIME").is_some();
        Self {
            cpu,
            on_cpu: if cpu { thread_cpu() } else { Duration::ZERO },
            wall: Instant::now(),
        }
    }

    fn elapsed(&self) -> Duration {
        if self.cpu {
            thread_cpu().saturating_sub(self.on_cpu)
        } else {
            self.wall.elapsed()
        }
    }
}

fn benches(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let rng_keys = [
        Key::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap()),
        Key::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap()),
        Key::Ed(Ed25519KeyPair::generate().unwrap()),
    ];
    let iss = "https://tenant.example.com/";
    let cpu_mode = std::env::var_os("BENCH_CPU_TIME").is_some();

    // Baselines: the signature check alone, as jsonwebtoken does it (key rebuilt from the
    // JWK each call) and with a pre-parsed aws-lc key.
    let mut baseline = c.benchmark_group("baseline");
    if cpu_mode {
        baseline
            .sample_size(10)
            .sampling_mode(criterion::SamplingMode::Flat);
    }
    // A synchronous routine timed with the same clock as the token benches.
    fn timed(b: &mut criterion::Bencher<'_>, mut f: impl FnMut()) {
        b.iter_custom(|iters| {
            let clock = Clock::start();
            for _ in 0..iters {
                f();
            }
            clock.elapsed()
        })
    }
    use aws_lc_rs::encoding::AsDer;
    for key in &rng_keys {
        let token = key.sign(&claims(iss, 0));
        let (msg, sig) = token.rsplit_once('.').unwrap();
        let sig_bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let parsed = match key {
            Key::Rsa(k) => signature::ParsedPublicKey::new(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                k.public_key().as_der().unwrap().as_ref(),
            ),
            Key::Ec(k) => signature::ParsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                k.public_key().as_ref(),
            ),
            Key::Ed(k) => {
                signature::ParsedPublicKey::new(&signature::ED25519, k.public_key().as_ref())
            }
        }
        .unwrap();
        baseline.bench_function(format!("aws_lc_parsed_verify_{}", key.alg()), |b| {
            timed(b, || {
                parsed
                    .verify_sig(msg.as_bytes(), black_box(&sig_bytes))
                    .unwrap()
            })
        });
    }
    if let Key::Rsa(k) = &rng_keys[0] {
        let token = rng_keys[0].sign(&claims(iss, 0));
        let (msg, sig) = token.rsplit_once('.').unwrap();
        let comps = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
        let dk = jsonwebtoken::DecodingKey::from_rsa_raw_components(&comps.n, &comps.e);
        // Through jsonwebtoken's default provider (ours once a TokenValidator exists).
        baseline.bench_function("jsonwebtoken_verify_RS256", |b| {
            timed(b, || {
                jsonwebtoken::crypto::verify(black_box(sig), msg.as_bytes(), &dk, Algorithm::RS256)
                    .unwrap();
            })
        });
        let mut val = jsonwebtoken::Validation::new(Algorithm::RS256);
        val.set_audience(&[API]);
        val.set_issuer(&[iss]);
        baseline.bench_function("jsonwebtoken_decode_RS256", |b| {
            timed(b, || {
                jsonwebtoken::decode::<serde_json::Map<String, Value>>(
                    black_box(&token),
                    &dk,
                    &val,
                )
                .unwrap();
            })
        });
        println!("token length: {} bytes", token.len());
        baseline.bench_function("sha256_of_token", |b| {
            timed(b, || {
                black_box(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    black_box(token.as_bytes()),
                ));
            })
        });
    }
    baseline.finish();

    let mut g = c.benchmark_group("token");
    if cpu_mode {
        // schedstat moves in scheduler ticks: few, long, equal samples.
        g.sample_size(10)
            .sampling_mode(criterion::SamplingMode::Flat);
    }
    for key in &rng_keys {
        let base = rt.block_on(stub(json!({"keys": [key.jwk()]})));
        let alg: Algorithm = key.alg().parse().unwrap();
        let v: &'static TokenValidator = Box::leak(Box::new(TokenValidator::new(
            config(iss, Some(format!("{base}/jwks")), vec![alg]),
            transport(),
        )));
        rt.block_on(v.start()).unwrap();

        if key.alg() == "RS256" {
            // Cached lookup: SHA-256 of the token + moka hit (+ exp check).
            let token: &'static str = Box::leak(key.sign(&claims(iss, 0)).into_boxed_str());
            rt.block_on(v.validate(token)).unwrap();
            g.bench_function("cached_lookup", |b| {
                b.to_async(rt).iter_custom(|iters| async move {
                    let clock = Clock::start();
                    for _ in 0..iters {
                        black_box(v.validate(black_box(token)).await.unwrap());
                    }
                    clock.elapsed()
                })
            });
        }

        // Uncached: a pool of distinct tokens, the cache cleared whenever the pool is used up
        // (outside the timed part). Includes hashing, the cache miss and insert.
        let pool: &'static [String] = Box::leak(
            (0..1000u64)
                .map(|n| key.sign(&claims(iss, n + 1)))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        g.bench_function(format!("uncached_{}", key.alg()), |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    v.clear_cache();
                    tokio::task::yield_now().await;
                    let n = (iters - done).min(pool.len() as u64) as usize;
                    let clock = Clock::start();
                    for t in &pool[..n] {
                        black_box(v.validate(t).await.unwrap());
                    }
                    total += clock.elapsed();
                    done += n as u64;
                }
                total
            })
        });
    }

    // One introspection round trip (loopback HTTP/1.1, pooled connection): every
    // iteration a new opaque token, so every call reaches the stub.
    let base = rt.block_on(stub(json!({"keys": []})));
    let mut cfg = config(iss, None, vec![Algorithm::RS256]);
    cfg.introspection = IntrospectionMode::Opaque;
    cfg.issuers[0].introspection_endpoint = Some(format!("{base}/introspect"));
    cfg.issuers[0].introspection_client_id = Some("rs".into());
    cfg.issuers[0].introspection_client_secret = Some(Secret::new(b"secret".to_vec()));
    let v: &'static TokenValidator = Box::leak(Box::new(TokenValidator::new(cfg, transport())));
    static N: AtomicU64 = AtomicU64::new(0);
    g.bench_function("introspection_round_trip", |b| {
        b.to_async(rt).iter(|| async {
            let token = format!("opaque-{}", N.fetch_add(1, Ordering::Relaxed));
            black_box(v.validate(&token).await.unwrap())
        })
    });
    g.finish();
}

fn main() {
    // As main.rs should: before anything uses jsonwebtoken.
    assert!(portcullis::token::install_jwt_crypto_provider());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os("SKIP_RSS").is_none() {
        rss_of_100k_cached(&rt);
    }
    if std::env::var_os("RSS_ONLY").is_some() {
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &rt);
    c.final_summary();
}
