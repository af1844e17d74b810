//! Bearer token validation: JWTs verified against each issuer's JWKS ([`jwks`], [`jwt`]),
//! opaque tokens checked at the provider ([`introspection`]), results cached ([`cache`]).
//!
//! ```text
//! validate(token)
//!   ├─ empty → Missing; > max_token_len → TooLong (Syntax if not a b64token either)
//!   ├─ SipHash-1-3-128(secret key, token) in the identity cache (and not past exp by
//!   │   our clock) → hit: no syntax scan (only validated tokens are stored)
//!   ├─ not an RFC 6750 b64token → Syntax (the proxy's 400), never cached
//!   ├─ in the negative cache → the remembered refusal
//!   └─ miss: one validation per token however many callers (single flight)
//!        ├─ three parts: header read by us (alg none / allow-list / typ / crit),
//!        │   issuer picked by the unverified iss, key by kid from *that* issuer's JWKS,
//!        │   then jsonwebtoken + our clock; `cnf` kept as the identity's binding (the
//!        │   gate checks it against each request's DPoP proof)
//!        │   (introspection = "always": at the introspection endpoint instead)
//!        └─ opaque: RFC 7662 introspection or userinfo at the primary issuer, or refused
//! ```
//!
//! Scopes are the union of every claim in `scopes_claims` that is present, in that order
//! (Auth0: `scope` plus `permissions`). Opaque tokens go to the *primary* issuer: the first
//! configured issuer that has an introspection (or, in `userinfo` mode, a userinfo)
//! endpoint. A token's text never appears in errors, logs or metrics.
//!
//! Use from the proxy:
//!
//! ```ignore
//! portcullis::token::install_jwt_crypto_provider(); // top of main, before any JWT use
//! let transport = HttpTransport::new(TransportConfig { timeout, ca_file })?;
//! let validator = TokenValidator::new(bearer_config, transport);
//! if let Err(e) = validator.start().await { warn!(error = %e, "not ready yet") }
//! let _refresh = validator.spawn_refresh();           // keys, metadata, cache sweep
//! // per request (token = the text after "Bearer "):
//! match validator.validate(token).await {
//!     Ok(identity) => policy::decide(&route.policy, &method, &identity),
//!     Err(e) if e.is_unavailable() => /* 503 */,
//!     Err(e) if e.is_syntax() => /* 400, error="invalid_request" */,
//!     Err(e) => /* 401, error="invalid_token", error_description=e.description() */,
//! }
//! // /readyz: validator.is_ready(); /metrics: validator.render_metrics()
//! ```

pub mod cache;
pub mod claims;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod dpop;
pub mod error;
mod from_config;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod metrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

pub use self::clock::{Clock, ManualClock, SystemClock};
pub use self::config::{BearerConfig, ClientAuth, IntrospectionMode, IssuerConfig, Secret};
pub use self::crypto::install_jwt_crypto_provider;
pub use self::error::{InvalidReason, TokenError, Unavailable};
pub use self::from_config::token_config;
pub use self::metrics::TokenMetrics;

use self::cache::TokenCache;
use self::claims::{identity_from_claims, ClaimRules, Interner};
use self::introspection::IntrospectionClient;
use self::jwks::{JwksError, KeyLookup, KeySet, Refetch};
use self::metrics::bump;
use crate::identity::{Binding, Identity};
use crate::oidc::discovery::{self, Backoff, DiscoveryError, ProviderMetadata};
use crate::oidc::transport::HttpTransport;

/// Why [`TokenValidator::start`] could not make the validator ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("discovery for issuer {issuer} failed")]
    Discovery {
        issuer: String,
        #[source]
        source: DiscoveryError,
    },
    #[error("loading the JWKS of issuer {issuer} failed")]
    Jwks {
        issuer: String,
        #[source]
        source: JwksError,
    },
}

/// Validates bearer tokens and caches the identities. Cheap to clone.
#[derive(Clone)]
pub struct TokenValidator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenValidator")
            .field("issuers", &self.inner.issuers.len())
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

struct Inner {
    issuers: Vec<IssuerState>,
    mode: IntrospectionMode,
    leeway_secs: u64,
    max_token_len: usize,
    start_timeout: Duration,
    metadata_refresh: Duration,
    rules: ClaimRules,
    interner: Interner,
    cache: TokenCache,
    metrics: Arc<TokenMetrics>,
    clock: Arc<dyn Clock>,
    transport: HttpTransport,
}

struct IssuerState {
    /// Shared by every identity from this issuer.
    name: Arc<str>,
    config: IssuerConfig,
    metadata: ArcSwapOption<ProviderMetadata>,
    /// When discovery last succeeded / may next be tried.
    metadata_fetched: Mutex<Option<Instant>>,
    metadata_next_try: Mutex<Option<Instant>>,
    keys: KeySet,
    hs_key: Option<DecodingKey>,
    validations: HashMap<Algorithm, Validation>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IssuerState {
    fn needs_keys(&self) -> bool {
        self.config
            .algorithms
            .iter()
            .any(|a| a.family() != AlgorithmFamily::Hmac)
    }

    fn is_ready(&self) -> bool {
        (!self.config.discovery || self.metadata.load().is_some())
            && (!self.needs_keys() || self.keys.is_loaded())
    }

    fn introspection_endpoint(&self) -> Option<String> {
        self.config.introspection_endpoint.clone().or_else(|| {
            self.metadata
                .load()
                .as_ref()
                .and_then(|m| m.introspection_endpoint.clone())
        })
    }

    fn userinfo_endpoint(&self) -> Option<String> {
        self.config.userinfo_endpoint.clone().or_else(|| {
            self.metadata
                .load()
                .as_ref()
                .and_then(|m| m.userinfo_endpoint.clone())
        })
    }

    fn set_metadata(&self, meta: ProviderMetadata) {
        // A configured jwks_uri wins over discovery.
        if self.config.jwks_uri.is_none() {
            self.keys.set_uri(meta.jwks_uri.clone());
        }
        self.metadata.store(Some(Arc::new(meta)));
        *lock(&self.metadata_fetched) = Some(Instant::now());
    }
}

/// RFC 7800 §3.1: the key a token's `cnf` claim binds it to (RFC 9449 §6: `jkt`).
fn binding_of(claims: &Map<String, Value>) -> Option<Binding<'_>> {
    claims.get("cnf").map(Binding::from_cnf)
}

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_b64token(token: &str) -> bool {
    scan_token(token).is_some()
}

/// Lanes of the b64token scan: 16 bytes, one SSE2 register on x86-64 (the baseline), so
/// the compiler turns each block into a handful of vector instructions.
const LANES: usize = 16;

/// 0xFF for a byte outside the b64token alphabet (`=` excluded), else 0. Branch-free and
/// lane-wise so that it vectorizes: a range test is one wrapping add and one signed compare.
#[inline(always)]
fn not_b64(b: u8) -> u8 {
    // 'A'..='Z' and 'a'..='z' (clearing bit 5 folds lower case onto upper case; no other
    // byte lands in 'A'..='Z' that way).
    let letter = ((b & 0xDF).wrapping_add(0x80 - b'A') as i8) < i8::MIN + 26;
    // '-' '.' '/' and '0'..='9' are contiguous: 0x2D..=0x39.
    let dash_to_nine = (b.wrapping_add(0x80 - b'-') as i8) < i8::MIN + 13;
    let ok = letter | dash_to_nine | (b == b'+') | (b == b'_') | (b == b'~');
    u8::from(!ok).wrapping_neg()
}

/// The sum of 16 byte lanes.
#[inline(always)]
fn lane_sum(lanes: [u8; LANES]) -> usize {
    const EVEN: u128 = 0x00FF_00FF_00FF_00FF_00FF_00FF_00FF_00FF;
    let x = u128::from_le_bytes(lanes);
    // Pairs of lanes into 8 u16 lanes, halves into 4 (each at most 4 × 255), then all 4.
    let pairs = (x & EVEN) + ((x >> 8) & EVEN);
    let quads = (pairs as u64) + ((pairs >> 64) as u64);
    (quads.wrapping_mul(0x0001_0001_0001_0001) >> 48) as usize
}

/// One block of the scan: ORs its out-of-alphabet mask into `bad`, counts its dots per lane.
#[inline(always)]
fn scan_block(block: &[u8; LANES], bad: &mut [u8; LANES], dots: &mut [u8; LANES]) {
    for i in 0..LANES {
        bad[i] |= not_b64(block[i]);
        dots[i] += u8::from(block[i] == b'.');
    }
}

/// One pass over the token: `None` if it is not a b64token (RFC 6750 §2.1), else the
/// number of `.` in it (2 for a JWS compact serialization).
///
/// 16 bytes at a time without branching on the data: each block ORs its out-of-alphabet
/// mask into an accumulator and adds its dots to per-lane counters (drained every 255
/// blocks, before one could overflow); the short tail is padded with `A` and done as one
/// more block. 1.25k instructions for a 671-byte token, where a byte-at-a-time table
/// lookup took 4.73k (callgrind, `examples/token_cost.rs scan`).
fn scan_token(token: &str) -> Option<usize> {
    let bytes = token.as_bytes();
    let body_end = bytes.iter().rposition(|b| *b != b'=').map_or(0, |i| i + 1);
    if body_end == 0 {
        return None;
    }
    let mut blocks = bytes[..body_end].chunks_exact(LANES);
    let mut bad = [0u8; LANES];
    let mut lane_dots = [0u8; LANES];
    let mut dots = 0;
    let mut counted = 0u8;
    for block in &mut blocks {
        // Always exactly LANES bytes; a zero block (not b64) would fail closed.
        scan_block(
            block.try_into().unwrap_or(&[0; LANES]),
            &mut bad,
            &mut lane_dots,
        );
        counted += 1;
        if counted == u8::MAX {
            dots += lane_sum(lane_dots);
            lane_dots = [0; LANES];
            counted = 0;
        }
    }
    let rest = blocks.remainder();
    let mut tail = [b'A'; LANES];
    tail[..rest.len()].copy_from_slice(rest);
    scan_block(&tail, &mut bad, &mut lane_dots);
    dots += lane_sum(lane_dots);
    (u128::from_le_bytes(bad) == 0).then_some(dots)
}

impl TokenValidator {
    /// A validator on the system clock. Nothing is fetched until [`TokenValidator::start`]
    /// or the refresh task runs (or a token needs keys).
    pub fn new(config: BearerConfig, transport: HttpTransport) -> Self {
        Self::with_clock(config, transport, Arc::new(SystemClock))
    }

    /// A validator with an injected clock (tests move time without sleeping).
    pub fn with_clock(
        config: BearerConfig,
        transport: HttpTransport,
        clock: Arc<dyn Clock>,
    ) -> Self {
        // Pre-parsed verification keys for jsonwebtoken; a no-op if main installed it, and
        // harmless (only slower) if another provider was installed first.
        install_jwt_crypto_provider();
        let metrics = Arc::new(TokenMetrics::default());
        let leeway_secs = config.leeway.as_secs();
        let issuers = config
            .issuers
            .iter()
            .map(|ic| {
                let hs_key = ic
                    .hs_secret
                    .as_ref()
                    .filter(|s| !s.is_empty())
                    .and_then(|s| DecodingKey::from_secret(s.expose()).ok());
                let validations = ic
                    .algorithms
                    .iter()
                    .map(|alg| {
                        (
                            *alg,
                            jwt::validation_for(*alg, &ic.issuer, &ic.audiences, leeway_secs),
                        )
                    })
                    .collect();
                IssuerState {
                    name: Arc::from(ic.issuer.as_str()),
                    config: ic.clone(),
                    metadata: ArcSwapOption::empty(),
                    metadata_fetched: Mutex::new(None),
                    metadata_next_try: Mutex::new(None),
                    keys: KeySet::new(
                        ic.jwks_uri.clone(),
                        config.jwks_min_refetch_interval,
                        transport.clone(),
                        metrics.clone(),
                    )
                    .with_credential(ic.credential())
                    .of_issuer(Arc::from(ic.issuer.as_str())),
                    hs_key,
                    validations,
                }
            })
            .collect();
        let cache = TokenCache::new(
            config.cache_capacity,
            config.cache_ttl,
            config.negative_ttl,
            clock.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                issuers,
                mode: config.introspection,
                leeway_secs,
                max_token_len: config.max_token_len,
                start_timeout: config.start_timeout,
                metadata_refresh: config.metadata_refresh,
                rules: ClaimRules {
                    scopes_claims: config.scopes_claims.clone(),
                    groups_claim: config.groups_claim.clone(),
                    wanted: config
                        .wanted_claims
                        .iter()
                        .map(|c| Arc::from(c.as_str()))
                        .collect(),
                },
                interner: Interner::new(4096),
                cache,
                metrics,
                clock,
                transport,
            }),
        }
    }

    /// Discovery and the first JWKS load of every issuer, retried with exponential backoff
    /// until `start_timeout`. The refresh task keeps trying afterwards if this fails.
    pub async fn start(&self) -> Result<(), StartError> {
        let deadline = tokio::time::Instant::now() + self.inner.start_timeout;
        let backoff = Backoff::default();
        for issuer in &self.inner.issuers {
            let name = issuer.config.issuer.clone();
            if issuer.config.discovery {
                let credential = issuer.config.credential();
                let meta = discovery::discover_with_retry(
                    &self.inner.transport,
                    &name,
                    credential.as_ref(),
                    deadline,
                    backoff,
                )
                .await
                .map_err(|source| StartError::Discovery {
                    issuer: name.clone(),
                    source,
                })?;
                issuer.set_metadata(meta);
            }
            if issuer.needs_keys() {
                discovery::retry_until(
                    deadline,
                    backoff,
                    |_: &JwksError| true,
                    || issuer.keys.fetch(),
                )
                .await
                .map_err(|(source, _)| StartError::Jwks {
                    issuer: name.clone(),
                    source,
                })?;
            }
            tracing::info!(issuer = %name, "token issuer ready");
        }
        Ok(())
    }

    /// Provider metadata (where discovered) and keys (where JWTs are expected) are loaded
    /// for every issuer: what `/readyz` reports.
    pub fn is_ready(&self) -> bool {
        self.inner.issuers.iter().all(IssuerState::is_ready)
    }

    /// Spawns the background task: keys refreshed when due (`max-age` within bounds, sooner
    /// after a failure), metadata every `metadata_refresh`, and anything not loaded yet
    /// retried. The task ends when the validator is dropped.
    pub fn spawn_refresh(&self) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.cache.purge_some();
                inner.refresh_once().await;
            }
        })
    }

    /// [`TokenValidator::validate`] for a token as it came in the header: a cache hit
    /// needs no check of its bytes at all (only validated tokens are stored); a miss is
    /// checked as text, then validated.
    pub async fn validate_bytes(&self, token: &[u8]) -> Result<Arc<Identity>, TokenError> {
        let inner = &*self.inner;
        if !token.is_empty() && token.len() <= inner.max_token_len {
            if let Some(id) = inner.cache.get_fresh(&inner.cache.key_bytes(token)) {
                bump(&inner.metrics.cache_hits);
                return Ok(id);
            }
        }
        match std::str::from_utf8(token) {
            Ok(t) => self.validate(t).await,
            // Not even text: not a b64token (RFC 6750 §2.1).
            Err(_) => {
                bump(&inner.metrics.validations_fail);
                Err(TokenError::Syntax)
            }
        }
    }

    /// Validates a bearer token (the text after `Bearer `), from the cache when possible.
    pub async fn validate(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        let inner = &*self.inner;
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        // RFC 8725 §3 hygiene, and DoS: the size is checked before hashing or parsing.
        // (A long token that is not even a b64token stays a malformed header: 400.)
        if token.len() > inner.max_token_len {
            bump(&inner.metrics.validations_fail);
            return Err(match scan_token(token) {
                None => TokenError::Syntax,
                Some(_) => TokenError::TooLong,
            });
        }
        let key = inner.cache.key(token);
        // Only validated tokens are stored, and the key is a secret-keyed 128-bit PRF of
        // the token's bytes, so a hit is a token that passed the syntax check already.
        if let Some(id) = inner.cache.get_fresh(&key) {
            bump(&inner.metrics.cache_hits);
            return Ok(id);
        }
        // The one scan of a token, on a miss; before the negative cache, so that a
        // remembered refusal never stands in for the 400 of a malformed header.
        let Some(dots) = scan_token(token) else {
            bump(&inner.metrics.validations_fail);
            return Err(TokenError::Syntax);
        };
        if let Some(err) = inner.cache.refused(&key) {
            bump(&inner.metrics.negative_hits);
            return Err(err);
        }
        bump(&inner.metrics.cache_misses);
        // One validation per token however many callers are waiting for it.
        let result = inner
            .cache
            .in_flight
            .run(key, || async {
                let id = Arc::new(inner.validate_uncached(token, dots == 2).await?);
                inner.cache.insert(key, id.clone());
                Ok(id)
            })
            .await;
        // A shared answer may have been produced just before this caller joined: it
        // must still be within exp (+ leeway) by our clock, as a fresh validation would.
        let leeway = Duration::from_secs(inner.leeway_secs);
        let result = match result {
            Ok(id)
                if id
                    .expires_at
                    .is_some_and(|exp| exp + leeway <= inner.clock.now()) =>
            {
                Err(TokenError::Expired)
            }
            other => other,
        };
        match result {
            Ok(id) => Ok(id),
            Err(err) => {
                inner.cache.remember_refusal(key, &err);
                Err(err)
            }
        }
    }

    /// Forgets every cached identity and refusal (config reload; benches).
    pub fn clear_cache(&self) {
        self.inner.cache.clear();
    }

    /// Number of identities in the cache (expired ones included until swept).
    pub fn cache_entries(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    pub fn metrics(&self) -> &TokenMetrics {
        &self.inner.metrics
    }

    /// The token metrics in the Prometheus text format, cache size included.
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render_prometheus(
            self.inner.cache.entry_count(),
            self.inner.cache.negative_entry_count(),
        )
    }

    /// Verifies a signed JWT of one of this validator's issuers that is not an access token
    /// (a back-channel logout token): the header read first (no `none`, the issuer's
    /// algorithms only, `typ` one of `types` when present, no `crit`), the issuer picked by
    /// the unverified `iss`, the key from that issuer's JWKS by `kid`, then the signature,
    /// `iss` (exact), `aud` (one of the issuer's audiences), `nbf` and, when present, `exp`
    /// by the validator's clock. Never cached. Returns the issuer and the claims.
    pub async fn verify_signed(
        &self,
        token: &str,
        types: &[&str],
    ) -> Result<(Arc<str>, Map<String, Value>), TokenError> {
        let inner = &*self.inner;
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > inner.max_token_len {
            return Err(TokenError::TooLong);
        }
        let parsed = jwt::parse_unverified_typed(token, types)?;
        let issuer = parsed
            .iss
            .as_deref()
            .and_then(|iss| inner.issuer_named(iss))
            .ok_or(TokenError::UnknownIssuer)?;
        if !issuer.config.algorithms.contains(&parsed.alg) {
            return Err(TokenError::Invalid(InvalidReason::AlgorithmNotAllowed));
        }
        let validation = jwt::signed_validation(
            parsed.alg,
            &issuer.config.issuer,
            &issuer.config.audiences,
            inner.leeway_secs,
        );
        let now = inner.clock.now();
        let claims = inner
            .with_key(issuer, &parsed, |key| {
                jwt::decode_signed(token, key, &validation, now)
            })
            .await?;
        Ok((issuer.name.clone(), claims))
    }

    /// The validator's clock.
    pub fn now(&self) -> std::time::SystemTime {
        self.inner.clock.now()
    }

    /// The leeway allowed on token times.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.inner.leeway_secs)
    }

    /// Discovered metadata of the issuer at `index` (0: the provider), if loaded.
    pub fn metadata(&self, index: usize) -> Option<Arc<ProviderMetadata>> {
        self.inner.issuers.get(index)?.metadata.load_full()
    }

    /// Fuzzing only (`fuzz_api::install_keys`): a JWKS document as issuer `index`'s keys.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn install_keys_for_fuzzing(&self, index: usize, jwks: &[u8]) -> Result<(), String> {
        let issuer = self.inner.issuers.get(index).ok_or("no such issuer")?;
        let keys = jwks::parse_jwks(jwks).map_err(|e| e.to_string())?;
        issuer.keys.install(keys);
        Ok(())
    }
}

impl Inner {
    fn issuer_named(&self, iss: &str) -> Option<&IssuerState> {
        // Exact string comparison (RFC 7519 §4.1.1, OIDC Core 3.1.3.7 step 2).
        self.issuers.iter().find(|i| &*i.name == iss)
    }

    /// The issuer that checks opaque tokens: the first, in configuration order, with an
    /// endpoint of that kind. An issuer whose discovery has not answered yet may turn out
    /// to have one, so the search stops there (NotReady) rather than sending the token to
    /// a later issuer's endpoint: a token is never shown to a party it may not be for.
    fn opaque_checker(
        &self,
        endpoint: impl Fn(&IssuerState) -> Option<String>,
    ) -> Result<(&IssuerState, String), TokenError> {
        for issuer in &self.issuers {
            if let Some(e) = endpoint(issuer) {
                return Ok((issuer, e));
            }
            if issuer.config.discovery && issuer.metadata.load().is_none() {
                return Err(TokenError::Unavailable(Unavailable::NotReady));
            }
        }
        Err(TokenError::Unavailable(Unavailable::NoEndpoint))
    }

    async fn validate_uncached(&self, token: &str, jws: bool) -> Result<Identity, TokenError> {
        // Three parts whose first is a JSON object: a JWS compact serialization (RFC 7515
        // §7.1). A JWE (five parts), or an opaque token that happens to hold two dots, is
        // opaque to us; with introspection off, a broken JWS is refused as malformed.
        let jws = jws && (self.mode == IntrospectionMode::Off || jwt::has_json_header(token));
        if jws {
            // Refused before any key is looked at: a failed validation all the same.
            let failed = |e: TokenError| {
                bump(&self.metrics.validations_fail);
                e
            };
            let parsed = jwt::parse_unverified(token).map_err(failed)?;
            let issuer = parsed
                .iss
                .as_deref()
                .and_then(|iss| self.issuer_named(iss))
                .ok_or(TokenError::UnknownIssuer)
                .map_err(failed)?;
            if self.mode == IntrospectionMode::Always {
                if let Some(endpoint) = issuer.introspection_endpoint() {
                    return self.introspect(issuer, &endpoint, token).await;
                }
            }
            let result = self.verify_jwt(issuer, &parsed, token).await;
            match &result {
                Ok(_) => bump(&self.metrics.validations_ok),
                Err(_) => bump(&self.metrics.validations_fail),
            }
            return result;
        }
        match self.mode {
            IntrospectionMode::Off => Err(TokenError::Invalid(InvalidReason::OpaqueNotAccepted)),
            IntrospectionMode::Opaque | IntrospectionMode::Always => {
                let (issuer, endpoint) =
                    self.opaque_checker(IssuerState::introspection_endpoint)?;
                self.introspect(issuer, &endpoint, token).await
            }
            IntrospectionMode::Userinfo => {
                let (issuer, endpoint) = self.opaque_checker(IssuerState::userinfo_endpoint)?;
                self.userinfo(issuer, &endpoint, token).await
            }
        }
    }

    async fn verify_jwt(
        &self,
        issuer: &IssuerState,
        parsed: &jwt::Unverified,
        token: &str,
    ) -> Result<Identity, TokenError> {
        let alg = parsed.alg;
        // RFC 8725 §3.1: only algorithms this issuer is configured for.
        let validation = issuer
            .validations
            .get(&alg)
            .ok_or(TokenError::Invalid(InvalidReason::AlgorithmNotAllowed))?;
        let now = self.clock.now();
        let claims = self
            .with_key(issuer, parsed, |key| {
                jwt::decode_verified(token, key, validation, now)
            })
            .await?;
        let mut id =
            identity_from_claims(&claims, &issuer.name, &self.rules, &self.interner, None)?;
        id.set_binding(binding_of(&claims));
        Ok(id)
    }

    /// Runs `decode` with the key that verifies a token of `issuer` with the header
    /// `parsed`: the configured shared secret for HS*, else the key of that `kid` in the
    /// issuer's JWKS (refetched once, rate-limited, when unknown).
    async fn with_key<T>(
        &self,
        issuer: &IssuerState,
        parsed: &jwt::Unverified,
        decode: impl Fn(&DecodingKey) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let alg = parsed.alg;
        if alg.family() == AlgorithmFamily::Hmac {
            // RFC 8725 §2.1 / §3.1: HS* only with an explicitly configured shared secret,
            // never with a key from the JWKS (no public-key-as-HMAC-secret confusion).
            let key = issuer
                .hs_key
                .as_ref()
                .ok_or(TokenError::Invalid(InvalidReason::AlgorithmNotAllowed))?;
            decode(key)
        } else {
            let keyset = &issuer.keys;
            let mut refetched = false;
            loop {
                let generation = keyset.generation();
                let snapshot = keyset.snapshot_full();
                if let Some(keys) = &snapshot {
                    // The key comes from this issuer's JWKS only, chosen by `kid`; header
                    // `jwk`/`jku`/`x5u`/`x5c` are never used (RFC 8725 §3.10).
                    match keys.find(parsed.kid.as_deref(), alg) {
                        KeyLookup::Found(k) => {
                            return decode(&k.key);
                        }
                        // RFC 8725 §3.1: the key's type / curve / alg must fit the token's alg.
                        KeyLookup::Mismatch => {
                            return Err(TokenError::Invalid(InvalidReason::KeyAlgorithmMismatch));
                        }
                        KeyLookup::Unknown => {}
                    }
                }
                let loaded = snapshot.is_some();
                if refetched {
                    return Err(if loaded {
                        TokenError::Invalid(InvalidReason::UnknownKey)
                    } else {
                        TokenError::Unavailable(Unavailable::NotReady)
                    });
                }
                refetched = true;
                // Unknown kid (or no keys yet): one shared, rate-limited refetch.
                match keyset.refetch_unknown_kid(generation).await {
                    Refetch::Refreshed => continue,
                    Refetch::Failed => return Err(TokenError::Unavailable(Unavailable::Jwks)),
                    Refetch::RateLimited if !keyset.is_loaded() || keyset.last_fetch_failed() => {
                        return Err(TokenError::Unavailable(Unavailable::Jwks));
                    }
                    Refetch::RateLimited => {
                        return Err(TokenError::Invalid(InvalidReason::UnknownKey));
                    }
                }
            }
        }
    }

    async fn introspect(
        &self,
        issuer: &IssuerState,
        endpoint: &str,
        token: &str,
    ) -> Result<Identity, TokenError> {
        let client = IntrospectionClient {
            client_id: issuer.config.introspection_client_id.as_deref(),
            client_secret: issuer.config.introspection_client_secret.as_ref(),
            auth: issuer.config.introspection_auth,
        };
        let result = async {
            let claims =
                introspection::introspect(&self.transport, &issuer.name, endpoint, token, &client)
                    .await?;
            introspection::check_introspection(
                &claims,
                &issuer.name,
                &issuer.config.audiences,
                self.clock.now(),
                self.leeway_secs,
            )?;
            // A machine token may carry no `sub`: its client is its subject
            // (RFC 7662 §2.2 `client_id`).
            let fallback = claims.get("client_id").and_then(Value::as_str);
            let mut id =
                identity_from_claims(&claims, &issuer.name, &self.rules, &self.interner, fallback)?;
            id.set_binding(binding_of(&claims));
            // RFC 9449 §6.2: a token introspected as DPoP with no `cnf.jkt` cannot be
            // checked against a proof; it is no bearer token either.
            let dpop_typed = claims
                .get("token_type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("dpop"));
            if dpop_typed && id.binding().is_none() {
                id.set_binding(Some(Binding::Unsupported));
            }
            Ok(id)
        }
        .await;
        self.count_provider_call(&result);
        result
    }

    async fn userinfo(
        &self,
        issuer: &IssuerState,
        endpoint: &str,
        token: &str,
    ) -> Result<Identity, TokenError> {
        let result = async {
            let claims: Map<String, Value> =
                introspection::userinfo(&self.transport, &issuer.name, endpoint, token).await?;
            identity_from_claims(&claims, &issuer.name, &self.rules, &self.interner, None)
        }
        .await;
        self.count_provider_call(&result);
        result
    }

    fn count_provider_call<T>(&self, result: &Result<T, TokenError>) {
        match result {
            Ok(_) => bump(&self.metrics.introspections_ok),
            Err(e) if e.is_unavailable() => bump(&self.metrics.introspections_error),
            Err(_) => bump(&self.metrics.introspections_fail),
        }
    }

    /// One pass of the refresh task.
    async fn refresh_once(&self) {
        let now = Instant::now();
        for issuer in &self.issuers {
            if issuer.config.discovery {
                let fetched = *lock(&issuer.metadata_fetched);
                let due = fetched.is_none_or(|at| now.duration_since(at) >= self.metadata_refresh);
                let may_try = lock(&issuer.metadata_next_try).is_none_or(|at| now >= at);
                if due && may_try {
                    let credential = issuer.config.credential();
                    let found = discovery::discover_as(
                        &self.transport,
                        &issuer.config.issuer,
                        credential.as_ref(),
                    )
                    .await;
                    match found {
                        Ok(meta) => issuer.set_metadata(meta),
                        Err(e) => {
                            let retry = if fetched.is_none() {
                                Duration::from_secs(2)
                            } else {
                                Duration::from_secs(60)
                            };
                            *lock(&issuer.metadata_next_try) = Some(Instant::now() + retry);
                            tracing::warn!(issuer = %issuer.name, error = %e, "discovery refresh failed");
                        }
                    }
                }
            }
            if issuer.needs_keys() && issuer.keys.uri().is_some() && issuer.keys.refresh_due(now) {
                // Failures are logged and counted by the key set; the old keys stay.
                let _ = issuer.keys.fetch().await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
