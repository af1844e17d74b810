//! Revocations: what ends a session before its own expiry, and the replay sets that the
//! protocol checks share. Built once at start and handed to every config generation (a
//! reload keeps it, whatever changed), in this process or in Redis (`session.revocation`).
//!
//! # What it holds
//!
//! | entry | written by | a session is refused when | kept until |
//! |---|---|---|---|
//! | session id | sign-out | its id is in the set | the session's `expires_at` |
//! | provider session (`iss`, `sid`) | back-channel logout with `sid` | its `sid` is in the set | now + `session.lifetime` |
//! | subject (`iss`, `sub`) → not-before time | back-channel logout with `sub` only, `POST /sessions/revoke` | it was issued at or before that time | now + `session.lifetime` |
//! | global not-before time | the set reaching `revocation_capacity` | it was issued at or before that time | forever (it is one number) |
//! | replay sets (logout-token `jti`, later DPoP proof `jti`) | [`Revocations::first_use`] | - (a token seen before, or issued at or before the global time, is refused) | the token's acceptance window |
//!
//! Session ids are random (see `session::Session::id`); `sid`, `sub` and `jti` are kept as
//! 128-bit truncated SHA-256 digests with their issuer (no user names in the set, its file or
//! Redis). "Kept until" is the latest moment the entry can matter: a session never outlives
//! `created_at + session.lifetime` (the stores cap it so, even for a session created under a
//! longer lifetime), so an entry is never forgotten while a session it ends could still open.
//!
//! # Never forgetting early
//!
//! Nothing is evicted before its time. When an insert finds `revocation_capacity` entries
//! (after dropping expired ones), the set **fails closed**: it raises the global not-before
//! time to now, which ends every session issued until now (and refuses every token issued
//! until now, for the replay sets), so every entry it holds is redundant and is dropped.
//! This is logged once per raise.
//!
//! # Cost on the request path
//!
//! - memory: two atomic loads while the set is empty; otherwise up to three lookups in
//!   sharded hash maps (read locks) keyed by digests computed when the session was opened
//!   (the cookie store caches them with the opened session).
//! - Redis: one `MGET` (global time, session id, subject, provider session), pipelined with
//!   the session's `GETEX` when the Redis session store is used (its ticket carries the
//!   keys): no extra round trip there; one round trip per request with the cookie store.

mod memory;
pub(crate) mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{RevocationKind, RevocationSettings};

pub use memory::MemorySet;
pub use redis::RedisSet;

/// A 128-bit key: a session id, or the truncated digest of an (issuer, value) pair.
pub type Key = [u8; 16];

/// What a session presents to the revocation check, computed once when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub keys: Keys,
    /// When the session was issued (its login), Unix seconds.
    pub issued_at: u64,
}

/// The keys under which a session can be revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// The session's own id.
    pub session: Key,
    /// [`subject_key`] of its issuer and `sub`.
    pub subject: Key,
    /// [`provider_session_key`] of its issuer and the provider's `sid`, if it has one.
    pub provider_sid: Option<Key>,
}

impl Keys {
    /// 33 or 49 bytes: session id, subject, a flag, the provider session when flagged.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(49);
        out.extend_from_slice(&self.session);
        out.extend_from_slice(&self.subject);
        match &self.provider_sid {
            Some(k) => {
                out.push(1);
                out.extend_from_slice(k);
            }
            None => out.push(0),
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Keys> {
        let key = |r: &[u8]| -> Option<Key> { r.try_into().ok() };
        match (b.len(), b.get(32)) {
            (33, Some(0)) => Some(Keys {
                session: key(&b[..16])?,
                subject: key(&b[16..32])?,
                provider_sid: None,
            }),
            (49, Some(1)) => Some(Keys {
                session: key(&b[..16])?,
                subject: key(&b[16..32])?,
                provider_sid: Some(key(&b[33..])?),
            }),
            _ => None,
        }
    }
}

/// Truncated SHA-256 over length-prefixed parts, after a purpose label.
fn digest(purpose: &[u8], parts: &[&[u8]]) -> Key {
    let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    d.update(purpose);
    for p in parts {
        d.update(&(p.len() as u64).to_be_bytes());
        d.update(p);
    }
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.finish().as_ref()[..16]);
    k
}

/// The key of a subject (`sub` of issuer `iss`).
pub fn subject_key(iss: &str, sub: &str) -> Key {
    digest(
        b"portcullis revocation subject v1",
        &[iss.as_bytes(), sub.as_bytes()],
    )
}

/// The key of a provider session (`sid` of issuer `iss`).
pub fn provider_session_key(iss: &str, sid: &str) -> Key {
    digest(
        b"portcullis revocation sid v1",
        &[iss.as_bytes(), sid.as_bytes()],
    )
}

/// A replay set: tokens that may be accepted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaySet {
    /// OIDC Back-Channel Logout 1.0 §2.6 step 6: logout tokens' `jti`.
    LogoutToken,
    /// RFC 9449 §11.1: DPoP proofs' `jti` (for the DPoP issue).
    DpopProof,
}

impl ReplaySet {
    fn label(self) -> &'static str {
        match self {
            ReplaySet::LogoutToken => "logout",
            ReplaySet::DpopProof => "dpop",
        }
    }
}

/// The key of a token `jti` of issuer `iss` in `set`.
pub fn jti_key(set: ReplaySet, iss: &str, jti: &str) -> Key {
    digest(
        b"portcullis replay jti v1",
        &[set.label().as_bytes(), iss.as_bytes(), jti.as_bytes()],
    )
}

/// The outcome of checking a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Live,
    Revoked(Reason),
}

/// Why a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Signed out (its id is in the set).
    SignedOut,
    /// Its provider session ended (back-channel logout by `sid`).
    ProviderLogout,
    /// Issued at or before its subject's not-before time.
    Subject,
    /// Issued at or before the global not-before time (the set filled up).
    Global,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SignedOut => "signed out",
            Reason::ProviderLogout => "provider logout",
            Reason::Subject => "subject revoked",
            Reason::Global => "revocation store reset",
        }
    }
}

/// What [`Revocations::revoke`] ends.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Sign-out: one session, by its id.
    Session(&'a Key),
    /// Back-channel logout by `sid`: the sessions of that provider session.
    ProviderSession { iss: &'a str, sid: &'a str },
    /// Back-channel logout by `sub`, the admin endpoint: every session of that user
    /// issued until now.
    Subject { iss: &'a str, sub: &'a str },
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The entry is in the set.
    Stored,
    /// The set was full: the global not-before time was raised to now instead, which ends
    /// (or refuses) everything the entry would have.
    Raised,
}

/// What [`Revocations::first_use`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUse {
    /// Not seen before: now recorded.
    Fresh,
    /// Not seen before, and recorded, but only after the set was full and was reset to
    /// make room (the global not-before time raised to now). A caller that must refuse
    /// rather than reset its checks (DPoP proofs) refuses this one too.
    FreshAfterReset,
    /// Seen before: a replay.
    Replayed,
    /// Issued at or before the global not-before time: whether it was seen before is no
    /// longer known, so it is refused as a replay would be.
    IssuedBeforeReset,
}

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// Redis could not be asked: fail closed (the request is refused, 503).
    #[error("revocation store unavailable")]
    Unavailable(#[source] ::redis::RedisError),
    /// Redis answered something this code did not send for (a bug or a foreign key).
    #[error("revocation store answered unexpectedly")]
    Protocol,
    #[error("{0}")]
    Config(&'static str),
}

/// The revocation store. Cheap to clone (an `Arc` inside); shared by every generation.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Backend>,
}

enum Backend {
    Memory(MemorySet),
    Redis(RedisSet),
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*self.inner {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        };
        f.debug_struct("Revocations")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Revocations {
    /// Builds the store of `settings`. A memory store loads its file (a damaged one fails
    /// closed: see [`MemorySet::open`]); a Redis store connects lazily and must be built
    /// inside the Tokio runtime.
    pub fn new(settings: &RevocationSettings) -> Result<Revocations, RevocationError> {
        let backend = match settings.kind {
            RevocationKind::Memory => Backend::Memory(MemorySet::open(
                settings.file.as_deref(),
                settings.capacity,
                SystemTime::now(),
            )),
            RevocationKind::Redis => {
                let url = settings.redis_url.as_ref().ok_or(RevocationError::Config(
                    "session.revocation = \"redis\" needs session.redis_url",
                ))?;
                Backend::Redis(RedisSet::new(url, settings.capacity)?)
            }
        };
        Ok(Revocations {
            inner: Arc::new(backend),
        })
    }

    /// An in-memory store without a file (tests, configs without logins).
    pub fn memory(capacity: usize) -> Revocations {
        Revocations {
            inner: Arc::new(Backend::Memory(MemorySet::open(
                None,
                capacity,
                SystemTime::now(),
            ))),
        }
    }

    /// The same store (not merely the same settings)?
    pub fn same_store(&self, other: &Revocations) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Can this store serve `settings` (after [`Revocations::reconfigure`])? A memory store
    /// serves any memory settings (a new file or capacity is applied in place); a Redis
    /// store serves the same URL.
    pub fn serves(&self, settings: &RevocationSettings) -> bool {
        match (&*self.inner, settings.kind) {
            (Backend::Memory(_), RevocationKind::Memory) => true,
            (Backend::Redis(r), RevocationKind::Redis) => {
                settings.redis_url.as_ref().is_some_and(|u| r.url_is(u))
            }
            _ => false,
        }
    }

    /// Applies the capacity (and, for memory, the file) of `settings` to this store.
    pub fn reconfigure(&self, settings: &RevocationSettings) {
        match &*self.inner {
            Backend::Memory(m) => {
                m.set_capacity(settings.capacity);
                m.set_file(settings.file.as_deref(), SystemTime::now());
            }
            Backend::Redis(r) => r.set_capacity(settings.capacity),
        }
    }

    /// The Redis store, for the session store's pipelined check.
    pub fn redis(&self) -> Option<&RedisSet> {
        match &*self.inner {
            Backend::Redis(r) => Some(r),
            Backend::Memory(_) => None,
        }
    }

    /// Is the session of `facts` revoked? No wait with the in-process set (the future is
    /// ready at once); one round trip with Redis.
    pub async fn check(&self, facts: &Facts, now: SystemTime) -> Result<Verdict, RevocationError> {
        match &*self.inner {
            Backend::Memory(m) => Ok(m.check(facts, unix(now))),
            // Boxed: the Redis query's future, held inline, would make every caller's
            // future larger (the request path's with the in-process set too).
            Backend::Redis(r) => Box::pin(r.check(facts)).await,
        }
    }

    /// Records a revocation of `target` until `until` (the latest moment a session it
    /// ends could still open: a signed-out session's expiry; now + the session lifetime
    /// for provider sessions and subjects). A subject's not-before time is `now`; a later
    /// one never moves back.
    pub async fn revoke(
        &self,
        target: Target<'_>,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<Recorded, RevocationError> {
        let (kind, key, not_before) = match target {
            Target::Session(id) => (Entry::Session, *id, 0),
            Target::ProviderSession { iss, sid } => {
                (Entry::ProviderSession, provider_session_key(iss, sid), 0)
            }
            Target::Subject { iss, sub } => {
                (Entry::Subject, subject_key(iss, sub), unix(now).max(1))
            }
        };
        self.insert(kind, &key, not_before, until, now).await
    }

    async fn insert(
        &self,
        kind: Entry,
        key: &Key,
        not_before: u64,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<Recorded, RevocationError> {
        let (now, until) = (unix(now), unix(until));
        match &*self.inner {
            Backend::Memory(m) => Ok(m.insert(kind, key, not_before, until, now)),
            Backend::Redis(r) => r.insert(kind, key, not_before, until, now).await,
        }
    }

    /// A token of `set` (its `jti`, issued by `iss` at `issued_at`) is accepted once: the
    /// first call records it until `until` (the end of its acceptance window), later ones
    /// answer [`FirstUse::Replayed`].
    pub async fn first_use(
        &self,
        set: ReplaySet,
        iss: &str,
        jti: &str,
        issued_at: u64,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<FirstUse, RevocationError> {
        let key = jti_key(set, iss, jti);
        let (now, until) = (unix(now), unix(until));
        match &*self.inner {
            Backend::Memory(m) => Ok(m.first_use(&key, issued_at, until, now)),
            Backend::Redis(r) => r.first_use(&key, issued_at, until, now).await,
        }
    }

    /// Drops expired entries (memory; Redis expires its own). Run every minute.
    pub fn sweep(&self, now: SystemTime) {
        if let Backend::Memory(m) = &*self.inner {
            m.sweep(unix(now));
        }
    }

    /// Spawns the minute sweep; it ends when the last handle is dropped.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                Revocations { inner }.sweep(SystemTime::now());
            }
        })
    }

    /// Metrics in the Prometheus text format (memory: entries and the global time).
    pub fn render_metrics(&self) -> String {
        match &*self.inner {
            Backend::Memory(m) => {
                let (entries, global) = m.stats();
                format!(
                    "# HELP portcullis_revocation_entries Entries in the in-process revocation set.\n\
                     # TYPE portcullis_revocation_entries gauge\n\
                     portcullis_revocation_entries {entries}\n\
                     # HELP portcullis_revocation_not_before_seconds The global not-before time (0: never raised).\n\
                     # TYPE portcullis_revocation_not_before_seconds gauge\n\
                     portcullis_revocation_not_before_seconds {global}\n"
                )
            }
            Backend::Redis(_) => String::new(),
        }
    }
}

/// The kinds of entries, each its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Session,
    ProviderSession,
    Subject,
    Jti,
}

impl Entry {
    fn tag(self) -> char {
        match self {
            Entry::Session => 's',
            Entry::ProviderSession => 'p',
            Entry::Subject => 'u',
            Entry::Jti => 'j',
        }
    }

    fn from_tag(c: char) -> Option<Entry> {
        Some(match c {
            's' => Entry::Session,
            'p' => Entry::ProviderSession,
            'u' => Entry::Subject,
            'j' => Entry::Jti,
            _ => return None,
        })
    }
}

/// The one log line of a raise.
fn log_raised(capacity: usize, now: u64, store: &'static str) {
    tracing::warn!(
        capacity,
        not_before = now,
        store,
        "revocation set full: failing closed; every session issued until now must log in again"
    );
}

fn hex(k: &Key) -> String {
    let mut s = String::with_capacity(32);
    for b in k {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn unhex(s: &str) -> Option<Key> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut k = [0u8; 16];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

#[cfg(test)]
mod tests;
