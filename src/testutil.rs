//! Test helpers: a tiny HTTP stub server on 127.0.0.1:0 that counts its requests,
//! signing keys generated in the test with a JWT forger, and a throwaway `redis-server`.

use std::convert::Infallible;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::config::Secret;

/// What the stub saw.
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `http://127.0.0.1:PORT` of this stub.
    pub base: String,
}

impl StubRequest {
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

#[derive(Debug, Clone)]
pub struct StubResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Option<Duration>,
}

impl StubResponse {
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: None,
        }
    }

    pub fn json(v: Value) -> Self {
        Self::status(200, v.to_string()).header("content-type", "application/json")
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }
}

impl From<String> for StubResponse {
    fn from(body: String) -> Self {
        StubResponse::status(200, body).header("content-type", "application/json")
    }
}

impl From<Value> for StubResponse {
    fn from(v: Value) -> Self {
        StubResponse::json(v)
    }
}

type Handler = dyn Fn(StubRequest) -> StubResponse + Send + Sync;

/// An HTTP/1.1 server on an ephemeral loopback port; stops when dropped.
pub struct StubServer {
    base: String,
    hits: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<StubRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StubServer {
    pub async fn start<R, F>(handler: F) -> Self
    where
        R: Into<StubResponse>,
        F: Fn(StubRequest) -> R + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(move |r| handler(r).into());
        let task = tokio::spawn({
            let base = base.clone();
            let hits = hits.clone();
            let requests = requests.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let handler = handler.clone();
                    let base = base.clone();
                    let hits = hits.clone();
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let handler = handler.clone();
                            let base = base.clone();
                            let hits = hits.clone();
                            let requests = requests.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let seen = StubRequest {
                                    method: parts.method.to_string(),
                                    path: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    headers: parts.headers,
                                    body,
                                    base,
                                };
                                hits.fetch_add(1, Ordering::SeqCst);
                                requests.lock().unwrap().push(seen.clone());
                                let out = handler(seen);
                                if let Some(d) = out.delay {
                                    tokio::time::sleep(d).await;
                                }
                                let mut resp = http::Response::builder().status(out.status);
                                for (k, v) in &out.headers {
                                    resp = resp.header(k, v);
                                }
                                Ok::<_, Infallible>(
                                    resp.body(Full::new(Bytes::from(out.body))).unwrap(),
                                )
                            }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    });
                }
            }
        });
        Self {
            base,
            hits,
            requests,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<StubRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last_path(&self) -> Option<String> {
        self.requests.lock().unwrap().last().map(|r| r.path.clone())
    }
}

/// A signing key generated in the test.
pub enum TestKey {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
    P384(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    pub fn rsa() -> &'static TestKey {
        static K: OnceLock<TestKey> = OnceLock::new();
        K.get_or_init(|| {
            TestKey::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap())
        })
    }

    pub fn rsa_other() -> &'static TestKey {
        static K: OnceLock<TestKey> = OnceLock::new();
        K.get_or_init(|| {
            TestKey::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap())
        })
    }

    pub fn p256() -> &'static TestKey {
        static K: OnceLock<TestKey> = OnceLock::new();
        K.get_or_init(|| {
            TestKey::P256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
        })
    }

    pub fn p384() -> &'static TestKey {
        static K: OnceLock<TestKey> = OnceLock::new();
        K.get_or_init(|| {
            TestKey::P384(EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap())
        })
    }

    pub fn ed25519() -> &'static TestKey {
        static K: OnceLock<TestKey> = OnceLock::new();
        K.get_or_init(|| TestKey::Ed25519(Ed25519KeyPair::generate().unwrap()))
    }

    /// The public JWK with `kid` (no `alg`, as many providers publish them).
    pub fn jwk(&self, kid: &str) -> Value {
        match self {
            TestKey::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
            }
            TestKey::P256(k) | TestKey::P384(k) => {
                let point = k.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                let crv = if len == 32 { "P-256" } else { "P-384" };
                json!({"kty": "EC", "kid": kid, "crv": crv,
                    "x": b64(&point[1..1 + len]), "y": b64(&point[1 + len..])})
            }
            TestKey::Ed25519(k) => {
                json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
        }
    }

    /// The RSA public key as SubjectPublicKeyInfo DER and PEM (for the HS256 confusion test).
    pub fn rsa_public_der_and_pem(&self) -> (Vec<u8>, String) {
        use aws_lc_rs::encoding::AsDer;
        let TestKey::Rsa(k) = self else {
            panic!("not RSA")
        };
        let der = k.public_key().as_der().unwrap().as_ref().to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        (der, pem)
    }

    /// Signs `header.payload` with the algorithm named `alg`.
    pub fn sign(&self, alg: &str, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            TestKey::Rsa(k) => {
                let enc: &'static dyn signature::RsaEncoding = match alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    other => panic!("RSA cannot sign {other}"),
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(enc, &rng, message, &mut sig).unwrap();
                sig
            }
            TestKey::P256(k) | TestKey::P384(k) => k.sign(&rng, message).unwrap().as_ref().to_vec(),
            TestKey::Ed25519(k) => k.sign(message).as_ref().to_vec(),
        }
    }
}

/// `b64url(header).b64url(claims).b64url(sig(header.claims))`, with `header` as given.
pub fn forge(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(msg.as_bytes());
    format!("{msg}.{}", b64(&sig))
}

/// A token signed by `key` with `alg`, header `{"alg", "kid", "typ": "JWT"}`.
pub fn sign_jwt(key: &TestKey, alg: &str, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    forge(&header, claims, |m| key.sign(alg, m))
}

/// HMAC-SHA256 with an arbitrary secret (for the key-confusion tests).
pub fn hs256(secret: &[u8], message: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::sign(&key, message).as_ref().to_vec()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A throwaway `redis-server` on a free loopback port, killed (by PID) on drop.
pub(crate) struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub(crate) fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {port}");
    }

    pub(crate) fn url(&self) -> Secret<String> {
        Secret::new(format!("redis://127.0.0.1:{}/", self.port))
    }

    /// Every raw string value in the database (other types left out).
    pub(crate) fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let client = redis::Client::open(self.url().expose().as_str()).unwrap();
        let mut c = client.get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
        let mut out = Vec::new();
        for k in keys {
            let t: String = redis::cmd("TYPE").arg(&k).query(&mut c).unwrap();
            if t == "string" {
                let v: Vec<u8> = redis::cmd("GET").arg(&k).query(&mut c).unwrap();
                out.push((k, v));
            }
        }
        out
    }

    pub(crate) fn ttl(&self, key: &str) -> i64 {
        let client = redis::Client::open(self.url().expose().as_str()).unwrap();
        let mut c = client.get_connection().unwrap();
        redis::cmd("TTL").arg(key).query(&mut c).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
