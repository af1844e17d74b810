//! `Idp`: the real OpenID provider of `tests/idp/` (npm `oidc-provider`) as a child process,
//! on an ephemeral 127.0.0.1 port, in its `standard` or `auth0` profile; plus [`forge`], to
//! sign tokens with our own keys or with the provider's private keys.
//!
//! The provider is started with `--watch-stdin` and a piped stdin, so it ends with the test
//! process even if `Drop` never runs; `Drop` kills it by PID. Its request log (stderr) goes
//! to a file in the provider's temporary directory ([`Idp::logs`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::Request;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{json, Value};

use super::agent::{redirect_target, Agent};
use super::client::{empty, full, Http, Resp};

pub const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/idp/server.mjs");
pub const SELFTEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/idp/selftest.mjs");

/// The API resource / audience that yields JWT access tokens.
pub const API: &str = "https://api.example.test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Standard,
    Auth0,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Standard => "standard",
            Profile::Auth0 => "auth0",
        }
    }

    /// The token request parameter that selects an API: RFC 8707 `resource`, or Auth0's
    /// `audience`.
    pub fn resource_param(self) -> &'static str {
        match self {
            Profile::Standard => "resource",
            Profile::Auth0 => "audience",
        }
    }
}

pub struct Idp {
    pub profile: Profile,
    /// Exactly as the ready line gives it (auth0: with a trailing slash).
    pub issuer: String,
    pub port: u16,
    /// The discovery document.
    pub meta: Value,
    child: Option<Child>,
    dir: tempfile::TempDir,
    keys_generation: u32,
    http: Http,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

pub fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// `try_spawn`'s code for a process that printed no ready line in time (killed).
const HUNG: i32 = -1000;

impl Idp {
    pub async fn start(profile: Profile) -> Idp {
        Self::start_with(profile, &[]).await
    }

    /// Starts with extra command line options (e.g. `--access-token-ttl 5`).
    pub async fn start_with(profile: Profile, extra: &[&str]) -> Idp {
        Self::start_on(profile, 0, extra).await
    }

    /// Starts on a given port (0: ephemeral), e.g. one a proxy is already configured for.
    pub async fn start_on(profile: Profile, port: u16, extra: &[&str]) -> Idp {
        let dir = tempfile::tempdir().unwrap();
        let mut idp = Idp {
            profile,
            issuer: String::new(),
            port: 0,
            meta: Value::Null,
            child: None,
            dir,
            keys_generation: 1,
            http: Http::new(),
        };
        idp.spawn(port, extra).await;
        idp
    }

    fn keys_dir(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("keys-{}", self.keys_generation))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("idp.log")
    }

    /// Starts the process on `port` (0: ephemeral) and reads its ready line.
    async fn spawn(&mut self, port: u16, extra: &[&str]) {
        // Over TLS (--tls-dir): the provider's certificate is from DIR/ca.pem.
        if let Some(i) = extra.iter().position(|a| *a == "--tls-dir") {
            let pem = std::fs::read(std::path::Path::new(extra[i + 1]).join("ca.pem")).unwrap();
            let ca = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                .next()
                .unwrap()
                .unwrap();
            self.http = Http::tls(&ca, None);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut hung = 0;
        loop {
            match self.try_spawn(port, extra).await {
                Ok(()) => break,
                // Status 1: the port is still taken (a restart on the same port); try again.
                Err(Some(1)) if port != 0 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // No ready line in time (seen about once in thirty starts on a loaded CI
                // machine, with nothing logged): the process was killed; start another.
                Err(Some(HUNG)) if hung < 2 => {
                    hung += 1;
                    eprintln!("provider start hung; retrying ({hung})");
                }
                Err(code) => panic!("provider did not start (exit {code:?}):\n{}", self.logs()),
            }
        }
        // Discovery: issuer without its trailing slash + /.well-known/openid-configuration.
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        // A provider started with --metadata-token-file wants that token on discovery.
        let mut req = Request::get(&url);
        if let Some(i) = extra.iter().position(|a| *a == "--metadata-token-file") {
            let token = std::fs::read_to_string(extra[i + 1]).unwrap();
            req = req.header("authorization", format!("Bearer {}", token.trim()));
        }
        let r = self.http.send(req.body(empty()).unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "discovery: {}", r.text());
        self.meta = r.json();
        assert_eq!(self.meta["issuer"].as_str(), Some(self.issuer.as_str()));
    }

    async fn try_spawn(&mut self, port: u16, extra: &[&str]) -> Result<(), Option<i32>> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut child = Command::new("node")
            .arg(SERVER)
            .arg("--port")
            .arg(port.to_string())
            .arg("--profile")
            .arg(self.profile.name())
            .arg("--keys-dir")
            .arg(self.keys_dir())
            .arg("--watch-stdin")
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn node tests/idp/server.mjs (is node installed?)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Generous: a loaded 2-core CI machine (Chromium and other providers starting in
        // parallel tests) slows node's start; past this the start is retried.
        let deadline = Instant::now() + Duration::from_secs(30);
        let line = loop {
            if let Ok(line) = rx.try_recv() {
                if !line.is_empty() {
                    break line;
                }
                // EOF without a ready line: the process is ending (a port still taken).
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(st.code());
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(Some(HUNG));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                // Let the reader see EOF; a line may still have been written.
                if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
                    if !line.is_empty() {
                        break line;
                    }
                }
                return Err(st.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("provider not ready after 30s:\n{}", self.logs());
                return Err(Some(HUNG));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ready: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("ready line is not JSON ({e}): {line:?}"));
        assert_eq!(ready["ready"], true, "{line}");
        self.issuer = ready["issuer"].as_str().unwrap().to_string();
        self.port = ready["port"].as_u64().unwrap() as u16;
        match self.profile {
            Profile::Standard => assert!(!self.issuer.ends_with('/'), "{}", self.issuer),
            Profile::Auth0 => assert!(self.issuer.ends_with('/'), "{}", self.issuer),
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the process (provider down). Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the provider and starts it again on the same port with a new `--keys-dir`:
    /// key rotation by restart (in-memory state, such as opaque tokens, is lost).
    pub async fn restart_with_new_keys(&mut self) {
        self.kill();
        self.keys_generation += 1;
        let port = self.port;
        let issuer = self.issuer.clone();
        self.spawn(port, &[]).await;
        assert_eq!(self.issuer, issuer, "same port, same issuer");
    }

    /// Stops the provider and starts it again on the same port with the same keys (and
    /// `extra` options): the provider back after an outage. In-memory state (grants,
    /// opaque tokens, sessions) is lost; JWTs it signed still verify.
    pub async fn restart(&mut self, extra: &[&str]) {
        self.kill();
        let port = self.port;
        let issuer = self.issuer.clone();
        self.spawn(port, extra).await;
        assert_eq!(self.issuer, issuer, "same port, same issuer");
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT{path}` (`path` starts with `/`); `https` over TLS.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.issuer.starts_with("https:") {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}{}", self.port, path)
    }

    pub fn endpoint(&self, name: &str) -> String {
        self.meta[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in discovery"))
            .to_string()
    }

    pub async fn post_form(&self, url: &str, auth: Option<&str>, body: &str) -> Resp {
        let mut b = Request::post(url).header("content-type", "application/x-www-form-urlencoded");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        self.http
            .send(b.body(full(body.to_string())).unwrap())
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }

    /// Client credentials grant. `resource`: the API (RFC 8707 `resource`, auth0 `audience`).
    pub async fn client_credentials_response(
        &self,
        client: &str,
        secret: &str,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> Resp {
        let mut pairs = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            pairs.push(("scope", s));
        }
        if let Some(r) = resource {
            pairs.push((self.profile.resource_param(), r));
        }
        self.post_form(
            &self.endpoint("token_endpoint"),
            Some(&basic(client, secret)),
            &form(&pairs),
        )
        .await
    }

    /// The access token of a client credentials grant (panics unless 200).
    pub async fn client_credentials(
        &self,
        client: &str,
        secret: &str,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> String {
        let r = self
            .client_credentials_response(client, secret, scope, resource)
            .await;
        assert_eq!(
            r.status,
            200,
            "client credentials for {client}: {}",
            r.text()
        );
        r.json()["access_token"].as_str().unwrap().to_string()
    }

    /// `machine` (read:items write:items) with the DPoP `proof` (for POST to the token
    /// endpoint): a DPoP-bound JWT for the API with `resource`, else an opaque token.
    /// Panics unless the provider answers 200 with `token_type` DPoP.
    pub async fn machine_dpop(&self, proof: &str, resource: Option<&str>) -> String {
        let mut pairs = vec![
            ("grant_type", "client_credentials"),
            ("scope", "read:items write:items"),
        ];
        if let Some(r) = resource {
            pairs.push(("resource", r));
        }
        let req = Request::post(self.endpoint("token_endpoint"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", basic("machine", "machine-secret"))
            .header("dpop", proof)
            .body(full(form(&pairs)))
            .unwrap();
        let r = self.http.send(req).await.unwrap();
        assert_eq!(r.status, 200, "DPoP token request: {}", r.text());
        let t = r.json();
        assert_eq!(t["token_type"], "DPoP", "{t}");
        t["access_token"].as_str().unwrap().to_string()
    }

    /// `machine` (read:items write:items): a JWT for the API.
    pub async fn machine_jwt(&self) -> String {
        self.client_credentials(
            "machine",
            "machine-secret",
            Some("read:items write:items"),
            Some(API),
        )
        .await
    }

    /// `machine` (read:items write:items): an opaque token (standard profile).
    pub async fn machine_opaque(&self) -> String {
        let t = self
            .client_credentials(
                "machine",
                "machine-secret",
                Some("read:items write:items"),
                None,
            )
            .await;
        assert!(!t.contains('.'), "expected an opaque token");
        t
    }

    /// RFC 7009 revocation by the `rs` client.
    pub async fn revoke(&self, token: &str) {
        let r = self
            .post_form(
                &self.endpoint("revocation_endpoint"),
                Some(&basic("rs", "rs-secret")),
                &form(&[("token", token)]),
            )
            .await;
        assert_eq!(r.status, 200, "revocation: {}", r.text());
    }

    /// RFC 7662 introspection by `rs`, as the provider answers it.
    pub async fn introspect(&self, token: &str) -> Value {
        let r = self
            .post_form(
                &self.endpoint("introspection_endpoint"),
                Some(&basic("rs", "rs-secret")),
                &form(&[("token", token)]),
            )
            .await;
        assert_eq!(r.status, 200, "introspection: {}", r.text());
        r.json()
    }

    async fn control(&self, method: &str, path_and_query: &str) -> Resp {
        let url = self.url(path_and_query);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .body(empty())
            .unwrap();
        let r = self
            .http
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        assert!(
            r.status.is_success(),
            "{method} {url}: {} {}",
            r.status,
            r.text()
        );
        r
    }

    /// Requests received per endpoint name (`jwks`, `introspection`, `userinfo`, ...).
    pub async fn counts(&self) -> Value {
        self.control("GET", "/__test/counts").await.json()
    }

    pub async fn count(&self, name: &str) -> u64 {
        let c = self.counts().await;
        c[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no count {name} in {c}"))
    }

    pub async fn reset_counts(&self) {
        self.control("POST", "/__test/reset-counts").await;
    }

    /// The next `count` requests (0: until cleared) to `path` fail with `mode`
    /// (`500`, `503`, `badjson`, `nokeys` (a JWKS without a usable key), `invalid_grant`
    /// (400 `invalid_grant`, as a token endpoint refuses a grant), `close`, `slow`).
    pub async fn fail(&self, path: &str, mode: &str, count: u32, ms: Option<u64>) {
        let mut q = form(&[("path", path), ("mode", mode)]);
        q.push_str(&format!("&count={count}"));
        if let Some(ms) = ms {
            q.push_str(&format!("&ms={ms}"));
        }
        self.control("POST", &format!("/__test/fail?{q}")).await;
    }

    pub async fn clear_fail(&self) {
        self.control("POST", "/__test/reset-fail").await;
    }

    /// The next `count` (0: until cleared) token responses of `grant`
    /// (`authorization_code` or `refresh_token`) carry an ID token with `claims` changed
    /// (`null` removes one), still signed by the provider's key: ID tokens no honest
    /// provider issues.
    pub async fn change_id_tokens(&self, grant: &str, claims: &Value, count: u32) {
        let q = form(&[
            ("grant", grant),
            ("claims", &claims.to_string()),
            ("count", &count.to_string()),
        ]);
        self.control("POST", &format!("/__test/id-token?{q}")).await;
    }

    /// The next `count` (0: until cleared) token responses of `grant` carry no ID token.
    pub async fn drop_id_tokens(&self, grant: &str, count: u32) {
        let q = form(&[
            ("grant", grant),
            ("drop", "1"),
            ("count", &count.to_string()),
        ]);
        self.control("POST", &format!("/__test/id-token?{q}")).await;
    }

    pub async fn clear_id_token_changes(&self) {
        self.control("DELETE", "/__test/id-token").await;
    }

    /// Registers `uri` as the `backchannel_logout_uri` of the `portcullis*` clients (with
    /// `backchannel_logout_session_required = session_required`: the logout tokens carry
    /// `sid` only then); `None` removes it.
    pub async fn set_backchannel_logout(&self, uri: Option<&str>, session_required: bool) {
        match uri {
            Some(u) => {
                let q = form(&[
                    ("uri", u),
                    ("session_required", if session_required { "1" } else { "0" }),
                ]);
                self.control("POST", &format!("/__test/backchannel-logout?{q}"))
                    .await;
            }
            None => {
                self.control("DELETE", "/__test/backchannel-logout").await;
            }
        }
    }

    /// Ends every provider session of `login` through oidc-provider's API (a logout token
    /// to each registered client, then the session destroyed): `{"sessions", "sent",
    /// "errors"}`.
    pub async fn end_sessions_of(&self, login: &str) -> Value {
        let q = form(&[("login", login)]);
        self.control("POST", &format!("/__test/end-session?{q}"))
            .await
            .json()
    }

    /// Logout token deliveries so far: `{"ok", "error", "last_error"}`.
    pub async fn backchannel_deliveries(&self) -> Value {
        self.control("GET", "/__test/backchannel").await.json()
    }

    /// New signing keys at once, same port, state kept.
    pub async fn rotate_keys(&self) {
        self.control("POST", "/__test/rotate-keys").await;
    }

    /// The private signing JWKs.
    pub async fn private_keys(&self) -> Vec<Value> {
        let v = self.control("GET", "/__test/keys").await.json();
        v["keys"].as_array().expect("keys").clone()
    }

    /// The public JWKS, as served at `jwks_uri`.
    pub async fn jwks(&self) -> Vec<Value> {
        let r = self.http.get(&self.endpoint("jwks_uri")).await;
        assert_eq!(r.status, 200);
        r.json()["keys"].as_array().expect("keys").clone()
    }

    /// The provider's current private key for `alg` (`RS256` or `ES256`), as a signer.
    pub async fn signer(&self, alg: &str) -> forge::Signer {
        let keys = self.private_keys().await;
        let jwk = keys
            .iter()
            .find(|k| k["alg"] == alg)
            .unwrap_or_else(|| panic!("no {alg} key in {keys:?}"));
        forge::Signer::from_private_jwk(jwk)
    }

    /// The scripted login of tests/idp/README.md (HTTP only, an [`Agent`] whose jar sends
    /// every cookie the provider set back on every request to it, `Path` ignored as the
    /// README has it; no redirects followed), then the code exchange by the `portcullis`
    /// client. `resource`: the API (standard `resource`, auth0 `audience`) for a JWT access
    /// token; none: opaque. Returns the token response.
    pub async fn login(&self, user: &str, scope: &str, resource: Option<&str>) -> Value {
        let mut agent = Agent::new().paths_ignored();
        agent.http = self.http.clone();
        let redirect_uri = "http://127.0.0.1:9/oauth2/callback";
        let verifier = forge::b64(&forge::random_bytes(32));
        let challenge = forge::b64(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
        );
        let state = forge::b64(&forge::random_bytes(12));
        let nonce = forge::b64(&forge::random_bytes(12));
        let mut pairs = vec![
            ("client_id", "portcullis"),
            ("response_type", "code"),
            ("redirect_uri", redirect_uri),
            ("scope", scope),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        if let Some(r) = resource {
            pairs.push((self.profile.resource_param(), r));
        }
        let start = format!(
            "{}?{}",
            self.endpoint("authorization_endpoint"),
            form(&pairs)
        );
        // 1. authorize -> 303 /interaction/{uid}
        let r = agent.get(&start, &[]).await;
        assert_eq!(r.status, 303, "authorize: {}", r.text());
        let interaction = redirect_target(&r, &start);
        // 2. the login form
        let r = agent.get(&interaction, &[]).await;
        assert_eq!(r.status, 200, "interaction: {}", r.text());
        assert!(r.text().contains("login-form"), "{}", r.text());
        // 3. submit it -> 303 to the resume URL
        let body = form(&[("login", user), ("password", &format!("{user}-pw"))]);
        let r = agent.request("POST", &interaction, &[], Some(body)).await;
        assert_eq!(r.status, 303, "login: {}", r.text());
        let resume = redirect_target(&r, &interaction);
        // 4. resume -> 303 to the redirect URI with the code
        let r = agent.get(&resume, &[]).await;
        assert_eq!(r.status, 303, "resume: {}", r.text());
        let callback = url::Url::parse(r.header("location").unwrap()).unwrap();
        let q: BTreeMap<String, String> = callback.query_pairs().into_owned().collect();
        assert_eq!(q.get("state"), Some(&state), "{callback}");
        let code = q
            .get("code")
            .unwrap_or_else(|| panic!("no code in {callback}"));
        // 5. code exchange
        let r = self
            .post_form(
                &self.endpoint("token_endpoint"),
                Some(&basic("portcullis", "portcullis-secret")),
                &form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", redirect_uri),
                    ("code_verifier", &verifier),
                ]),
            )
            .await;
        assert_eq!(r.status, 200, "code exchange: {}", r.text());
        r.json()
    }
}

/// Runs `node tests/idp/selftest.mjs`: (exit code, stdout + stderr).
pub fn selftest() -> (Option<i32>, String) {
    let out = Command::new("node")
        .arg(SELFTEST)
        .stdin(Stdio::null())
        .output()
        .expect("run node tests/idp/selftest.mjs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Token forging: JWS compact serialization by hand, signed with aws-lc-rs, so that the
/// tests control every byte (`alg: none`, odd headers, HMAC with a public key...).
pub mod forge {
    use super::*;
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    use aws_lc_rs::signature::{
        EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
    };

    pub fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn unb64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(s)
            .unwrap_or_else(|e| panic!("bad base64url {s:?}: {e}"))
    }

    pub fn random_bytes(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        SystemRandom::new().fill(&mut v).unwrap();
        v
    }

    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// `b64(header).b64(claims)`.
    pub fn signing_input(header: &Value, claims: &Value) -> String {
        format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    /// An unsecured JWT with the given signature part (usually empty).
    pub fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
        format!("{}.{signature}", signing_input(header, claims))
    }

    /// HS256 with `secret` as the HMAC key.
    pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
        let input = signing_input(header, claims);
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    }

    // --- minimal DER, for RSA keys given as JWK ---

    fn der_len(n: usize, out: &mut Vec<u8>) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        der_len(content.len(), &mut out);
        out.extend_from_slice(content);
        out
    }

    fn der_uint(bytes: &[u8]) -> Vec<u8> {
        let mut b: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        if b.is_empty() || b[0] & 0x80 != 0 {
            b.insert(0, 0);
        }
        der(0x02, &b)
    }

    fn jwk_bytes(jwk: &Value, name: &str) -> Vec<u8> {
        unb64(
            jwk[name]
                .as_str()
                .unwrap_or_else(|| panic!("JWK without {name}")),
        )
    }

    /// PKCS#1 `RSAPublicKey` DER of an RSA JWK.
    pub fn rsa_public_pkcs1_der(jwk: &Value) -> Vec<u8> {
        let mut c = der_uint(&jwk_bytes(jwk, "n"));
        c.extend(der_uint(&jwk_bytes(jwk, "e")));
        der(0x30, &c)
    }

    /// X.509 `SubjectPublicKeyInfo` DER of an RSA JWK (what `BEGIN PUBLIC KEY` holds).
    pub fn rsa_public_spki_der(jwk: &Value) -> Vec<u8> {
        let alg_id = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ];
        let mut bits = vec![0u8];
        bits.extend(rsa_public_pkcs1_der(jwk));
        let mut c = alg_id.to_vec();
        c.extend(der(0x03, &bits));
        der(0x30, &c)
    }

    /// PEM with 64-column lines and a final newline.
    pub fn pem(label: &str, der: &[u8]) -> String {
        let b = STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    fn rsa_private_pkcs1_der(jwk: &Value) -> Vec<u8> {
        let mut c = der_uint(&[0]);
        for name in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
            c.extend(der_uint(&jwk_bytes(jwk, name)));
        }
        der(0x30, &c)
    }

    enum Key {
        Rsa(RsaKeyPair),
        Ec(EcdsaKeyPair),
    }

    /// A signing key with its `kid` and `alg` (RS256 or ES256).
    pub struct Signer {
        pub kid: String,
        pub alg: &'static str,
        key: Key,
    }

    impl Signer {
        /// From a private JWK (the provider's `/__test/keys`).
        pub fn from_private_jwk(jwk: &Value) -> Signer {
            let kid = jwk["kid"].as_str().unwrap_or("").to_string();
            match jwk["kty"].as_str() {
                Some("RSA") => Signer {
                    kid,
                    alg: "RS256",
                    key: Key::Rsa(
                        RsaKeyPair::from_der(&rsa_private_pkcs1_der(jwk)).expect("RSA private JWK"),
                    ),
                },
                Some("EC") => {
                    let mut public = vec![4u8];
                    public.extend(jwk_bytes(jwk, "x"));
                    public.extend(jwk_bytes(jwk, "y"));
                    Signer {
                        kid,
                        alg: "ES256",
                        key: Key::Ec(
                            EcdsaKeyPair::from_private_key_and_public_key(
                                &ECDSA_P256_SHA256_FIXED_SIGNING,
                                &jwk_bytes(jwk, "d"),
                                &public,
                            )
                            .expect("EC private JWK"),
                        ),
                    }
                }
                other => panic!("unsupported kty {other:?}"),
            }
        }

        /// A fresh P-256 key of our own (never in the provider's JWKS).
        pub fn own_es256(kid: &str) -> Signer {
            Signer {
                kid: kid.to_string(),
                alg: "ES256",
                key: Key::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap()),
            }
        }

        /// A fresh RSA 2048 key of our own.
        pub fn own_rs256(kid: &str) -> Signer {
            Signer {
                kid: kid.to_string(),
                alg: "RS256",
                key: Key::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap()),
            }
        }

        /// `{"alg", "typ": "at+jwt", "kid"}`.
        pub fn header(&self) -> Value {
            json!({"alg": self.alg, "typ": "at+jwt", "kid": self.kid})
        }

        /// The public key as a JWK (for an embedded `jwk` header).
        pub fn public_jwk(&self) -> Value {
            match &self.key {
                Key::Ec(k) => {
                    let p = k.public_key().as_ref();
                    json!({"kty": "EC", "crv": "P-256", "kid": self.kid,
                        "x": b64(&p[1..33]), "y": b64(&p[33..65])})
                }
                Key::Rsa(k) => {
                    let p = k.public_key();
                    json!({"kty": "RSA", "kid": self.kid,
                        "n": b64(p.modulus().big_endian_without_leading_zero()),
                        "e": b64(p.exponent().big_endian_without_leading_zero())})
                }
            }
        }

        /// Signs `header.claims` with this key, whatever `alg` the header claims.
        pub fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = signing_input(header, claims);
            let rng = SystemRandom::new();
            let sig = match &self.key {
                Key::Rsa(k) => {
                    let mut sig = vec![0u8; k.public_modulus_len()];
                    k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                        .unwrap();
                    sig
                }
                Key::Ec(k) => k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            };
            format!("{input}.{}", b64(&sig))
        }

        /// Signs with this key's own header.
        pub fn token(&self, claims: &Value) -> String {
            self.sign(&self.header(), claims)
        }
    }
}
