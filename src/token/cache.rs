//! The identity cache. Key = SHA-256 of the token (the token itself is never a key or a
//! log field); value = the validated identity.
//!
//! Why not one moka cache: moka costs about 440 bytes per entry (measured: 100,000
//! entries with an `Expiry` = 42 MiB), more than the whole budget (100,000 identities in
//! ≤ 40 MiB RSS), and its `try_get_with` about 4 µs per miss (measured with perf on the
//! RS256 bench: 12 % of an uncached validation). So:
//! - **store**: a compact sharded map (≈ 65 bytes per entry plus the identity) that holds
//!   identities until `min(exp, insertion + cache_ttl)` by our clock, bounded by
//!   `cache_capacity` (when a shard is full, expired entries go first, then the ones that
//!   expire soonest);
//! - **in flight**: a single-flight map, so that concurrent misses on one token cause one
//!   validation / introspection (the "`try_get_with` or equal"); it holds only work
//!   in progress.
//!
//! Refusals are remembered briefly in a separate negative cache (never `Unavailable`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;

use super::clock::Clock;
use super::error::TokenError;
use crate::identity::Identity;

pub(crate) type TokenKey = [u8; 32];

const SHARDS: usize = 64;
const NEGATIVE_CAPACITY: u64 = 10_000;

/// SHA-256 of the token: what the caches are keyed by.
pub(crate) fn token_key(token: &str) -> TokenKey {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(d.as_ref());
    key
}

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

type Shard = HashMap<TokenKey, Slot>;

pub(crate) struct TokenCache {
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
    flights: std::sync::Mutex<HashMap<TokenKey, Flight>>,
}

struct Boarding<'a> {
    flights: &'a std::sync::Mutex<HashMap<TokenKey, Flight>>,
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
        let shards = (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect();
        let in_flight = InFlight::default();
        let negative = (!negative_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(NEGATIVE_CAPACITY)
                .time_to_live(negative_ttl)
                .build()
        });
        Self {
            shards,
            shard_capacity,
            ttl,
            in_flight,
            negative,
            clock,
            purge_cursor: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &TokenKey) -> &RwLock<Shard> {
        &self.shards[key[0] as usize % SHARDS]
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
        token_key(&format!("token-{n}"))
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
    fn key_is_sha256() {
        let k = token_key("abc");
        assert_eq!(
            k[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts with ba7816bf"
        );
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
