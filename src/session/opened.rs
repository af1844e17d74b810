//! Session cookies already opened, so that a browser's next request with the same cookie
//! costs a comparison instead of base64 decoding, AES-GCM and parsing.
//!
//! - **Only authentic values go in**: a value is stored after the sealer opened it (its
//!   AEAD tag verified under our key). A lookup returns a session only for a value equal
//!   to a stored one byte for byte, so a hit proves what opening would have proved. The
//!   seal's own expiry is stored and checked on every hit; the session's lifetime and idle
//!   timeout are checked by the caller on every request, as after opening.
//! - **No timing leak of stored values**: the comparison reads every byte whatever the
//!   differences (no early exit), so a client cannot learn a stored cookie byte by byte.
//! - **Bounded**: a fixed direct-mapped table ([`SLOTS`] entries, each up to one cookie's
//!   size plus its session), indexed by the last bytes of the value (part of the base64 of
//!   the AEAD tag, which nobody without the key can choose for an authentic value). A new
//!   value replaces whatever shared its slot; a miss costs one opening, as before.
//! - **Holds live sessions, not a high-water mark**: storing a value also empties the
//!   slots of its shard whose seal has expired, so the memory held follows the sessions
//!   in use rather than every session ever opened (`benches/soak.sh` watches this).
//! - **Rebuilt with the keys**: the cache belongs to the cookie store, which a change of
//!   `session.secrets` replaces.

use std::sync::{Arc, Mutex};

use super::Session;
use crate::identity::Identity;
use crate::revocation::Facts;

/// Entries in all. A session cookie is at most ~4 KiB, so the table holds a few MiB at
/// most; busier sites see more misses, not more memory.
pub const SLOTS: usize = 1024;
const SHARDS: usize = 16;

/// A session as opened from a cookie value, with the identity it stands for and its
/// revocation keys (built once).
#[derive(Clone)]
pub struct OpenedSession {
    pub session: Arc<Session>,
    pub identity: Arc<Identity>,
    pub facts: Facts,
}

impl OpenedSession {
    pub fn new(session: Session) -> OpenedSession {
        let identity = Arc::new(session.identity());
        let facts = session.revocation_facts();
        OpenedSession {
            session: Arc::new(session),
            identity,
            facts,
        }
    }

    /// [`OpenedSession::new`] with revocation facts known already (the Redis ticket's).
    pub fn with_facts(session: Session, facts: Facts) -> OpenedSession {
        OpenedSession {
            identity: Arc::new(session.identity()),
            session: Arc::new(session),
            facts,
        }
    }
}

struct Slot {
    sealed: Box<[u8]>,
    /// The seal's `expires_at` (unix seconds): past it the value does not open.
    seal_expires: u64,
    opened: OpenedSession,
}

pub struct OpenedCache {
    shards: Box<[Mutex<Vec<Option<Slot>>>]>,
}

impl Default for OpenedCache {
    fn default() -> Self {
        OpenedCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new((0..SLOTS / SHARDS).map(|_| None).collect()))
                .collect(),
        }
    }
}

impl std::fmt::Debug for OpenedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedCache").finish_non_exhaustive()
    }
}

/// (shard, slot) of a value: FNV-1a over its last 16 bytes.
fn place(sealed: &[u8]) -> (usize, usize) {
    let tail = &sealed[sealed.len().saturating_sub(16)..];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tail {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    let h = h as usize;
    (h % SHARDS, (h / SHARDS) % (SLOTS / SHARDS))
}

/// Equal, in time that depends only on the lengths. (32-byte blocks folded with `|`:
/// no early exit, and a loop the compiler turns into vector instructions.)
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0u8; 32];
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] |= x[i] ^ y[i];
        }
    }
    let mut diff = acc.iter().fold(0u8, |d, v| d | v);
    for (x, y) in ra.iter().zip(rb) {
        diff |= x ^ y;
    }
    diff == 0
}

fn lock(m: &Mutex<Vec<Option<Slot>>>) -> std::sync::MutexGuard<'_, Vec<Option<Slot>>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OpenedCache {
    /// The session of `sealed` if it was opened before and its seal has not expired.
    pub fn get(&self, sealed: &[u8], now: u64) -> Option<OpenedSession> {
        if sealed.is_empty() {
            return None;
        }
        let (shard, slot) = place(sealed);
        let shard = lock(&self.shards[shard]);
        let s = shard[slot].as_ref()?;
        (now < s.seal_expires && same(&s.sealed, sealed)).then(|| s.opened.clone())
    }

    /// Remembers an authentic value (just opened) and its session, and forgets the
    /// values of its shard whose seal has expired by `now`. Only a miss stores, and a miss
    /// has just paid for an opening: the sweep of [`SLOTS`]` / 16` slots is small beside it.
    pub fn put(&self, sealed: &[u8], seal_expires: u64, opened: OpenedSession, now: u64) {
        if sealed.is_empty() {
            return;
        }
        let (shard, slot) = place(sealed);
        let mut shard = lock(&self.shards[shard]);
        for s in shard.iter_mut() {
            if s.as_ref().is_some_and(|s| now >= s.seal_expires) {
                *s = None;
            }
        }
        shard[slot] = Some(Slot {
            sealed: sealed.into(),
            seal_expires,
            opened,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn opened(sub: &str) -> OpenedSession {
        let now = SystemTime::now();
        OpenedSession::new(Session::new(
            "https://idp",
            sub,
            crate::config::Secret::new("at".into()),
            now,
            Duration::from_secs(60),
        ))
    }

    #[test]
    fn hits_only_the_same_bytes_before_the_seal_expires() {
        let c = OpenedCache::default();
        let v = b"AAAAbase64-of-a-sealed-session-value-with-its-tag-at-the-end".to_vec();
        c.put(&v, 100, opened("alice"), 0);
        assert_eq!(c.get(&v, 99).unwrap().session.sub, "alice");
        assert!(c.get(&v, 100).is_none(), "the seal expired");
        // Same tail (same slot), other bytes: a miss, never alice.
        let mut w = v.clone();
        w[0] = b'B';
        assert!(c.get(&w, 50).is_none());
        assert!(c.get(&v[1..], 50).is_none());
        assert!(c.get(b"", 50).is_none());
    }

    #[test]
    fn a_new_value_replaces_its_slot() {
        let c = OpenedCache::default();
        let v = b"value-one-with-the-same-tail-0123456789abcdef".to_vec();
        let w = b"value-two-with-the-same-tail-0123456789abcdef".to_vec();
        c.put(&v, 100, opened("alice"), 0);
        c.put(&w, 100, opened("bob"), 0);
        assert!(c.get(&v, 1).is_none());
        assert_eq!(c.get(&w, 1).unwrap().session.sub, "bob");
    }

    /// Count of stored values, all shards.
    fn stored(c: &OpenedCache) -> usize {
        c.shards
            .iter()
            .map(|s| lock(s).iter().flatten().count())
            .sum()
    }

    #[test]
    fn storing_forgets_expired_values_of_the_shard() {
        let c = OpenedCache::default();
        // Values in every shard, sealed until 100.
        let old: Vec<Vec<u8>> = (0..4000)
            .map(|i| format!("old-value-{i:08}").into_bytes())
            .collect();
        for v in &old {
            c.put(v, 100, opened("alice"), 0);
        }
        let before = stored(&c);
        assert!(before > SLOTS / 2, "{before}");
        // At 100 they have all expired: storing new values (sealed until 200) into every
        // shard leaves only those.
        let new: Vec<Vec<u8>> = (0..4000)
            .map(|i| format!("new-value-{i:08}").into_bytes())
            .collect();
        let mut shards_written = std::collections::HashSet::new();
        for v in &new {
            shards_written.insert(place(v).0);
            c.put(v, 200, opened("bob"), 100);
        }
        assert_eq!(shards_written.len(), SHARDS);
        for v in &old {
            assert!(c.get(v, 50).is_none(), "an expired value was kept");
        }
        let live = new.iter().filter(|v| c.get(v, 150).is_some()).count();
        assert_eq!(stored(&c), live);
        // A sweep keeps what has not expired: two values of one shard, other slots.
        let kept = b"kept-value-0123456789".to_vec();
        let (shard, slot) = place(&kept);
        let other = (0..)
            .map(|i| format!("other-value-{i:08}").into_bytes())
            .find(|o| place(o).0 == shard && place(o).1 != slot)
            .unwrap();
        c.put(&kept, 300, opened("carol"), 150);
        c.put(&other, 300, opened("dave"), 160);
        assert_eq!(c.get(&kept, 170).unwrap().session.sub, "carol");
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same(b"", b""));
        assert!(same(b"0123456789abcdefXYZ", b"0123456789abcdefXYZ"));
        assert!(!same(b"0123456789abcdefXYZ", b"0123456789abcdefXYz"));
        assert!(!same(b"0123456789abcdefXYZ", b"1123456789abcdefXYZ"));
        assert!(!same(b"abc", b"abcd"));
        let long: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        assert!(same(&long, &long.clone()));
        for at in [0, 31, 32, 2999] {
            let mut other = long.clone();
            other[at] ^= 1;
            assert!(!same(&long, &other), "{at}");
        }
    }
}
