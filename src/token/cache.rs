//! The identity cache. Key = a keyed 128-bit hash of the token ([`KeyHasher`]: SipHash-1-3
//! under a per-validator random key; the token itself is never a key or a log field);
//! value = the validated identity.
//!
//! # Why the key is SipHash-1-3-128 under a secret random key, and why that is safe
//!
//! A cache hit hands out the identity stored under the key, with no further check of the
//! token (no signature, no syntax scan). So two tokens whose keys are equal are one token
//! to the proxy: anyone who can make a token of theirs collide with someone else's cached
//! token gets that identity. The key function must therefore be collision-resistant
//! *against the people who send tokens*; it need not be against the process itself.
//!
//! A keyed pseudo-random function (PRF) gives exactly that at a fraction of the cost of
//! SHA-256 (measured with callgrind, per ~700-byte access token: SHA-256 ~23k instructions;
//! keyed BLAKE3, one chunk, SIMD ~5.5k, pure Rust ~5.9k; SipHash-2-4-128 ~3.2k;
//! SipHash-1-3-128 ~1.9k; see `examples/token_cost.rs`):
//! - **the key** is 128 bits drawn from the operating system's CSPRNG (aws-lc's
//!   `RAND_bytes`, seeded from the OS) once, when the validator is built (at startup, and
//!   at a reload that changes the bearer settings; never per request, never lazily on a
//!   worker). It is not derived from the configuration, a secret in it or anything else an
//!   attacker could know or guess; it is never logged, printed (no `Debug`), written or
//!   sent anywhere; it lives as long as the validator and its cache, and the keys made
//!   under it never leave the process either (a new validator: fresh key, empty cache).
//! - **without the key** an attacker can neither compute a token's cache key nor observe
//!   one. All they can do is send tokens and see whether one is accepted (or answered
//!   from the negative cache): an online guess. For a PRF, the 128-bit key of a token the
//!   attacker has not had validated is uniformly random to them, so each token sent
//!   matches one of the `N` cached keys with probability at most `N / 2^128`: with a
//!   million cached identities and 2^40 attempts, below 2^-68 in all. Recovering the
//!   key is a 2^128 search with nothing to test guesses against offline.
//! - **accidental collisions** between honest tokens follow the birthday bound, about
//!   `n^2 / 2^129` for `n` distinct tokens seen under one key: for `n = 2^32`, 2^-65. (A
//!   64-bit output would not do: 2^32 tokens would then collide with probability about
//!   1/2, and a blind online guess would need only about `2^64 / N` attempts.)
//! - **the function**: SipHash is a PRF for short inputs under a secret 128-bit key
//!   (Aumasson & Bernstein, "SipHash: a fast short-input PRF", 2012). SipHash-1-3 is its
//!   reduced-round variant (one round per 8-byte block, three to finish), the one Rust's
//!   standard `HashMap` keys with per-process random bits against hash flooding, with its
//!   designer's agreement (rust-lang/rust#29754). Its margin is thinner than the original
//!   2-4: the one published weakness near it is a statistical distinguisher on four
//!   rounds (Dobraunig, Mendel, Schläffer, "Differential Cryptanalysis of SipHash", SAC
//!   2014), which needs a difference pattern in the whole state that message blocks cannot
//!   inject, and which, its designer notes, would not be exploitable even then. No
//!   published attack finds two inputs with equal SipHash-1-3 outputs under an unknown
//!   key, or predicts an output, with less than ~2^128 work. The setting here is also weaker for an attacker than a
//!   MAC's: a forger of MACs sees valid tags, while here no output is ever shown, only
//!   whether a token was accepted. SipHash-1-3 is what fits the budget (a cached bearer
//!   request should cost at most ~3k instructions more than a public one); SipHash-2-4
//!   (swap `SipHasher13` for `SipHasher24`) would add ~1.3k per 700 bytes, keyed BLAKE3
//!   ~3.6k.
//!
//! What the keyed PRF does *not* protect against: someone who can read the process's
//! memory (they can read the identities, and the tokens in flight, just as well).
//!
//! The shard is chosen by the key's first byte, the bucket in a shard by bytes 8..16 (the
//! key is already a uniform, secret-keyed hash, so the maps do not hash it again; an
//! attacker cannot aim tokens at one shard or bucket either).
//!
//! Why not one moka cache: moka costs about 440 bytes per entry (measured: 100,000
//! entries with an `Expiry` = 42 MiB), more than the whole budget (100,000 identities in
//! ≤ 40 MiB RSS), and its `try_get_with` about 4 µs per miss (measured with perf on the
//! RS256 bench: 12 % of an uncached validation). So:
//! - **store**: a compact sharded map (≈ 65 bytes per entry plus the identity, measured
//!   with 32-byte keys: the 16-byte keys now save 16 more) that holds
//!   identities until `min(exp, insertion + cache_ttl)` by our clock, bounded by
//!   `cache_capacity` (when a shard is full, expired entries go first, then the ones that
//!   expire soonest);
//! - **in flight**: a single-flight map, so that concurrent misses on one token cause one
//!   validation / introspection (the "`try_get_with` or equal"); it holds only work
//!   in progress.
//!
//! Refusals are remembered briefly in a separate negative cache (never `Unavailable`, never
//! a syntax refusal: those are answered before the negative cache is looked at).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use siphasher::sip128::SipHasher13;

use super::clock::Clock;
use super::error::TokenError;
use crate::identity::Identity;

/// The cache key of a token: SipHash-1-3-128 of its bytes under the validator's secret key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenKey([u8; 16]);

impl TokenKey {
    /// Which of the `SHARDS` shards holds it.
    fn shard(&self) -> usize {
        usize::from(self.0[0]) % SHARDS
    }
}

impl Hash for TokenKey {
    /// Already a uniform secret-keyed hash: bytes 8..16 are the map hash as they are
    /// (byte 0 picks the shard, so the bucket hash does not repeat it).
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut lo = [0u8; 8];
        lo.copy_from_slice(&self.0[8..]);
        state.write_u64(u64::from_le_bytes(lo));
    }
}

/// The hasher of the maps keyed by [`TokenKey`]: passes its one `u64` through.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `TokenKey`; fold anything else in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyMap<V> = HashMap<TokenKey, V, BuildHasherDefault<PassThrough>>;

/// Makes the cache keys: SipHash-1-3-128 under 128 secret random bits (see the module
/// documentation for why this is safe). Deliberately not `Debug` nor `Clone`.
pub(crate) struct KeyHasher(SipHasher13);

impl KeyHasher {
    /// A fresh secret key from the OS random source (called once per validator).
    pub fn random() -> Self {
        let mut key = [0u8; 16];
        // aws-lc's RAND_bytes does not fail on a supported OS; if it ever did, there is no
        // safe fallback (a guessable key would let tokens be aimed at other identities).
        aws_lc_rs::rand::fill(&mut key).expect("the OS random source failed");
        Self(SipHasher13::new_with_key(&key))
    }

    pub fn key(&self, token: &str) -> TokenKey {
        self.key_bytes(token.as_bytes())
    }

    pub fn key_bytes(&self, token: &[u8]) -> TokenKey {
        TokenKey(self.0.hash(token).as_bytes())
    }
}

const SHARDS: usize = 64;
const NEGATIVE_CAPACITY: u64 = 10_000;

/// How long an identity may stay: until its `exp` (by our clock), at most `ttl`.
pub(crate) fn entry_lifetime(id: &Identity, ttl: Duration, clock: &dyn Clock) -> Duration {
    match id.expires_at {
        Some(exp) => exp
            .duration_since(clock.now())
            .unwrap_or(Duration::ZERO)
            .min(ttl),
        None => ttl,
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Slot {
    id: Arc<Identity>,
    /// Unix milliseconds after which the entry is not served.
    until_ms: u64,
}

type Shard = KeyMap<Slot>;

pub(crate) struct TokenCache {
    hasher: KeyHasher,
    shards: Box<[RwLock<Shard>]>,
    shard_capacity: usize,
    ttl: Duration,
    pub in_flight: InFlight,
    negative: Option<moka::sync::Cache<TokenKey, TokenError>>,
    clock: Arc<dyn Clock>,
    purge_cursor: AtomicUsize,
}

type Flight = Arc<tokio::sync::OnceCell<Result<Arc<Identity>, TokenError>>>;

/// Single flight: concurrent misses on one token share one validation / introspection,
/// and its result (error included). An entry lives only while its flight is awaited:
/// once it has landed, or when its last caller leaves (cancelled), it is forgotten, so the
/// map holds only work in progress and a failure is tried afresh by the next request.
/// (Equal to moka's `try_get_with` for this purpose, without moka's ~4 µs per miss.)
#[derive(Default)]
pub(crate) struct InFlight {
    flights: std::sync::Mutex<KeyMap<Flight>>,
}

struct Boarding<'a> {
    flights: &'a std::sync::Mutex<KeyMap<Flight>>,
    key: TokenKey,
    flight: Option<Flight>,
}

impl Drop for Boarding<'_> {
    fn drop(&mut self) {
        // Let go of our reference first, then look: whoever looks last sees every other
        // caller's reference gone. Removing an entry that has landed, or that nobody holds
        // but the map, is always safe (whichever flight it is).
        drop(self.flight.take());
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|f| f.initialized() || Arc::strong_count(f) == 1)
        {
            flights.remove(&self.key);
        }
    }
}

impl InFlight {
    /// Runs `init` for `key` unless a flight for it is already under way, in which case
    /// its result is awaited. If the caller running `init` is cancelled, a waiting caller
    /// runs it instead (tokio `OnceCell` semantics).
    pub async fn run<F, Fut>(&self, key: TokenKey, init: F) -> Result<Arc<Identity>, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Arc<Identity>, TokenError>>,
    {
        let mut boarding = Boarding {
            flights: &self.flights,
            key,
            flight: None,
        };
        boarding.flight = Some(
            self.flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_default()
                .clone(),
        );
        match boarding.flight.as_ref() {
            Some(flight) => flight.get_or_init(init).await.clone(),
            // Not reachable: set just above.
            None => Err(TokenError::Unavailable(super::error::Unavailable::NotReady)),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn read(s: &RwLock<Shard>) -> std::sync::RwLockReadGuard<'_, Shard> {
    s.read().unwrap_or_else(|p| p.into_inner())
}

fn write(s: &RwLock<Shard>) -> std::sync::RwLockWriteGuard<'_, Shard> {
    s.write().unwrap_or_else(|p| p.into_inner())
}

impl TokenCache {
    pub fn new(
        capacity: u64,
        ttl: Duration,
        negative_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let shard_capacity = (capacity as usize).div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| RwLock::new(KeyMap::default()))
            .collect();
        let in_flight = InFlight::default();
        let negative = (!negative_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(NEGATIVE_CAPACITY)
                .time_to_live(negative_ttl)
                .build()
        });
        Self {
            // Drawn here, when the validator is built: never on the request path.
            hasher: KeyHasher::random(),
            shards,
            shard_capacity,
            ttl,
            in_flight,
            negative,
            clock,
            purge_cursor: AtomicUsize::new(0),
        }
    }

    /// The cache key of `token` under this cache's secret key.
    pub fn key(&self, token: &str) -> TokenKey {
        self.hasher.key(token)
    }

    pub fn key_bytes(&self, token: &[u8]) -> TokenKey {
        self.hasher.key_bytes(token)
    }

    fn shard(&self, key: &TokenKey) -> &RwLock<Shard> {
        &self.shards[key.shard()]
    }

    /// A cached identity that has not expired by our clock.
    pub fn get_fresh(&self, key: &TokenKey) -> Option<Arc<Identity>> {
        let now = millis(self.clock.now());
        let shard = read(self.shard(key));
        let slot = shard.get(key)?;
        (slot.until_ms > now).then(|| slot.id.clone())
    }

    /// Keeps `id` until `min(exp, now + ttl)`; not at all if that is already past.
    pub fn insert(&self, key: TokenKey, id: Arc<Identity>) {
        let now = self.clock.now();
        let life = entry_lifetime(&id, self.ttl, &*self.clock);
        if life.is_zero() {
            return;
        }
        let now_ms = millis(now);
        let until_ms = millis(now + life);
        let mut shard = write(self.shard(&key));
        if shard.len() >= self.shard_capacity && !shard.contains_key(&key) {
            make_room(&mut shard, self.shard_capacity, now_ms);
        }
        shard.insert(key, Slot { id, until_ms });
    }

    /// Drops expired entries of one shard (the refresh task calls this every tick, so every
    /// shard is swept once per `SHARDS` ticks).
    pub fn purge_some(&self) {
        let i = self.purge_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let now = millis(self.clock.now());
        write(&self.shards[i]).retain(|_, s| s.until_ms > now);
    }

    pub fn refused(&self, key: &TokenKey) -> Option<TokenError> {
        self.negative.as_ref()?.get(key)
    }

    pub fn remember_refusal(&self, key: TokenKey, err: &TokenError) {
        if let Some(neg) = &self.negative {
            if err.is_negative_cacheable() {
                neg.insert(key, err.clone());
            }
        }
    }

    pub fn clear(&self) {
        for s in self.shards.iter() {
            write(s).clear();
        }
        if let Some(neg) = &self.negative {
            neg.invalidate_all();
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.shards.iter().map(|s| read(s).len() as u64).sum()
    }

    /// Refusals remembered in the negative cache (at most `NEGATIVE_CAPACITY`; moka's
    /// count, which lags inserts and evictions a little).
    pub fn negative_entry_count(&self) -> u64 {
        self.negative.as_ref().map_or(0, |n| n.entry_count())
    }
}

/// A full shard: drop what has expired; if that is not enough, drop the eighth of the
/// entries that expire soonest (amortised O(1) per insert).
fn make_room(shard: &mut Shard, capacity: usize, now_ms: u64) {
    shard.retain(|_, s| s.until_ms > now_ms);
    if shard.len() < capacity {
        return;
    }
    let mut untils: Vec<u64> = shard.values().map(|s| s.until_ms).collect();
    let k = (untils.len() / 8).max(1).min(untils.len() - 1);
    let (_, threshold, _) = untils.select_nth_unstable(k);
    let threshold = *threshold;
    shard.retain(|_, s| s.until_ms > threshold);
    // Ties at the threshold may leave the shard full: drop arbitrary entries then.
    while shard.len() >= capacity {
        let Some(k) = shard.keys().next().copied() else {
            break;
        };
        shard.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::clock::ManualClock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn identity(exp: Option<SystemTime>) -> Arc<Identity> {
        let mut id = Identity::new(Arc::from("i"), "s", None, None, None);
        id.expires_at = exp;
        Arc::new(id)
    }

    fn key(n: u32) -> TokenKey {
        thread_local!(static HASHER: KeyHasher = KeyHasher::random());
        HASHER.with(|h| h.key(&format!("token-{n}")))
    }

    #[tokio::test]
    async fn single_flight_shares_one_result_and_forgets_it() {
        let flights = Arc::new(InFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (flights, runs, mut rx) = (flights.clone(), runs.clone(), rx.clone());
                tokio::spawn(async move {
                    flights
                        .run(key(1), || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            let _ = rx.wait_for(|go| *go).await;
                            Err(TokenError::Invalid(super::super::InvalidReason::Inactive))
                        })
                        .await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0, "landed flights are forgotten");
        // A failure is not remembered: the next call runs again.
        let again = flights.run(key(1), || async { Ok(identity(None)) }).await;
        assert!(again.is_ok());
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_flight_is_taken_over_or_forgotten() {
        let flights = Arc::new(InFlight::default());
        // The only caller gives up: nothing is left behind.
        let pending = flights.run(key(2), std::future::pending);
        assert!(tokio::time::timeout(Duration::from_millis(10), pending)
            .await
            .is_err());
        assert_eq!(flights.len(), 0);
        // The leader gives up while another waits: the waiter runs init itself.
        let f2 = flights.clone();
        let leader = tokio::spawn(async move {
            f2.run(key(3), || {
                std::future::pending::<Result<Arc<Identity>, TokenError>>()
            })
            .await
        });
        tokio::task::yield_now().await;
        let f3 = flights.clone();
        let waiter =
            tokio::spawn(async move { f3.run(key(3), || async { Ok(identity(None)) }).await });
        tokio::task::yield_now().await;
        leader.abort();
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(flights.len(), 0);
    }

    #[test]
    fn key_is_siphash13_128_under_the_secret_key() {
        // The one-shot key is siphasher's streaming SipHash-1-3-128 of the whole token
        // under the secret key (here a known one).
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let h = KeyHasher(SipHasher13::new_with_key(&key));
        let mut reference = SipHasher13::new_with_key(&key);
        reference.write(b"abc");
        use siphasher::sip128::Hasher128;
        assert_eq!(h.key("abc").0, reference.finish128().as_bytes());
        // Length is part of the input: "abc" and "abc\0" differ.
        assert!(h.key("abc") != h.key("abc\0"));
    }

    #[test]
    fn keys_are_random_per_hasher_and_spread_over_the_shards() {
        let (a, b) = (KeyHasher::random(), KeyHasher::random());
        assert!(a.key("t") != b.key("t"), "a fresh secret key per validator");
        assert!(a.key("t") == a.key("t"));
        let mut used = [false; SHARDS];
        for n in 0..4096 {
            used[a.key(&format!("token-{n}")).shard()] = true;
        }
        assert!(used.iter().all(|u| *u), "every shard is used");
    }

    #[test]
    fn lifetime_is_min_of_exp_and_ttl() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = ManualClock::new(t0);
        let ttl = Duration::from_secs(300);
        let life = |exp| entry_lifetime(&identity(exp), ttl, &clock);
        assert_eq!(
            life(Some(t0 + Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(life(Some(t0 + Duration::from_secs(3600))), ttl);
        assert_eq!(life(Some(t0 - Duration::from_secs(1))), Duration::ZERO);
        assert_eq!(life(None), ttl);
    }

    #[test]
    fn entries_end_at_exp_or_ttl_by_the_injected_clock() {
        let t0 = SystemTime::now();
        let clock = ManualClock::new(t0);
        let cache = TokenCache::new(
            100,
            Duration::from_secs(300),
            Duration::from_secs(10),
            Arc::new(clock.clone()),
        );
        cache.insert(key(1), identity(Some(t0 + Duration::from_secs(60))));
        cache.insert(key(2), identity(None));
        cache.insert(key(3), identity(Some(t0 - Duration::from_secs(1))));
        assert!(cache.get_fresh(&key(1)).is_some());
        assert!(cache.get_fresh(&key(2)).is_some());
        assert!(
            cache.get_fresh(&key(3)).is_none(),
            "already expired: not kept"
        );
        clock.advance(Duration::from_secs(60));
        assert!(cache.get_fresh(&key(1)).is_none(), "ends at exp");
        assert!(cache.get_fresh(&key(2)).is_some());
        clock.advance(Duration::from_secs(240));
        assert!(cache.get_fresh(&key(2)).is_none(), "ends at the ttl cap");
        assert_eq!(cache.entry_count(), 2);
        for _ in 0..SHARDS {
            cache.purge_some();
        }
        assert_eq!(cache.entry_count(), 0);
    }

    #[test]
    fn capacity_is_a_bound_and_soonest_expiring_go_first() {
        let t0 = SystemTime::now();
        let clock = ManualClock::new(t0);
        let capacity = 640u64;
        let cache = TokenCache::new(
            capacity,
            Duration::from_secs(3600),
            Duration::ZERO,
            Arc::new(clock.clone()),
        );
        // A long-lived entry first, then many short-lived ones.
        cache.insert(key(0), identity(Some(t0 + Duration::from_secs(3000))));
        for n in 1..5000 {
            cache.insert(
                key(n),
                identity(Some(t0 + Duration::from_secs(60 + u64::from(n % 100)))),
            );
        }
        assert!(cache.entry_count() <= capacity, "{}", cache.entry_count());
        assert!(
            cache.get_fresh(&key(0)).is_some(),
            "latest-expiring entry kept"
        );
        assert!(cache.refused(&key(1)).is_none(), "negative cache disabled");
    }
}
