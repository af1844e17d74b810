//! The identity cache: key = SHA-256 of the token (the token itself is never a key),
//! value = the validated identity. An entry never outlives the token's `exp` and is capped
//! by `cache_ttl`; concurrent misses on one token share one validation (moka
//! `try_get_with`). Refusals are remembered briefly in a separate negative cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use moka::Expiry;

use super::clock::Clock;
use super::error::TokenError;
use crate::identity::Identity;

pub(crate) type TokenKey = [u8; 32];

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

struct IdentityExpiry {
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl Expiry<TokenKey, Arc<Identity>> for IdentityExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        value: &Arc<Identity>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry_lifetime(value, self.ttl, &*self.clock))
    }
}

pub(crate) struct TokenCache {
    pub positive: moka::future::Cache<TokenKey, Arc<Identity>>,
    negative: Option<moka::sync::Cache<TokenKey, TokenError>>,
    clock: Arc<dyn Clock>,
}

impl TokenCache {
    pub fn new(
        capacity: u64,
        ttl: Duration,
        negative_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let positive = moka::future::Cache::builder()
            .max_capacity(capacity)
            .expire_after(IdentityExpiry {
                ttl,
                clock: clock.clone(),
            })
            .build();
        let negative = (!negative_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity((capacity / 4).max(1024))
                .time_to_live(negative_ttl)
                .build()
        });
        Self {
            positive,
            negative,
            clock,
        }
    }

    /// A cached identity that has not expired by our clock. An entry found past its `exp`
    /// (clock moved, or moka has not evicted it yet) is dropped.
    pub async fn get_fresh(&self, key: &TokenKey) -> Option<Arc<Identity>> {
        let id = self.positive.get(key).await?;
        match id.expires_at {
            Some(exp) if exp <= self.clock.now() => {
                self.positive.invalidate(key).await;
                None
            }
            _ => Some(id),
        }
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

    pub fn entry_count(&self) -> u64 {
        self.positive.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::clock::ManualClock;
    use std::time::SystemTime;

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
        let mut id = Identity {
            issuer: Arc::from("i"),
            subject: "s".into(),
            email: None,
            email_verified: false,
            preferred_username: None,
            name: None,
            groups: Arc::from(Vec::new()),
            scopes: Arc::from(Vec::new()),
            claims: Box::new([]),
            expires_at: Some(t0 + Duration::from_secs(60)),
        };
        let ttl = Duration::from_secs(300);
        assert_eq!(entry_lifetime(&id, ttl, &clock), Duration::from_secs(60));
        id.expires_at = Some(t0 + Duration::from_secs(3600));
        assert_eq!(entry_lifetime(&id, ttl, &clock), ttl);
        id.expires_at = Some(t0 - Duration::from_secs(1));
        assert_eq!(entry_lifetime(&id, ttl, &clock), Duration::ZERO);
        id.expires_at = None;
        assert_eq!(entry_lifetime(&id, ttl, &clock), ttl);
    }
}
