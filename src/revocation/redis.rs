//! The Redis revocation set (`session.revocation = "redis"`, in `session.redis_url`):
//! shared by every replica that uses the same Redis, and kept across restarts.
//!
//! # Keys
//! - `portcullis:revoked:<tag>:<32 hex>`: one entry (`tag` as in the memory journal: `s`
//!   session id, `p` provider session, `u` subject, `j` replay set), value its not-before
//!   time (`0` but for subjects), expiring at its `until` (`EXAT`).
//! - `portcullis:revoked:global`: the global not-before time (no expiry).
//! - `portcullis:revoked:index`: a sorted set of the entry keys by `until`, which counts
//!   the entries against `revocation_capacity`.
//!
//! A check is one `MGET` (global, session, subject, provider session). Every insert is one
//! Lua script, atomic: it drops index members past their time, and when the index holds
//! `revocation_capacity` live entries it fails closed (global time = now, every entry
//! unlinked, the index deleted) before storing. Scripts name keys outside `KEYS` when they
//! unlink, so this needs a single Redis (not a Redis Cluster), like the session store.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Client;

use super::{
    hex, log_raised, Entry, Facts, FirstUse, Key, Keys, Reason, Recorded, RevocationError, Verdict,
};
use crate::config::Secret;

const PREFIX: &str = "portcullis:revoked:";
const GLOBAL: &str = "portcullis:revoked:global";
const INDEX: &str = "portcullis:revoked:index";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// KEYS: entry, index, global. ARGV: now, until, not-before, capacity, mode ("put" or
/// "once"), issued-at (once). Answers "stored", "raised", "replayed" or "before-reset".
const INSERT: &str = r#"
local now = tonumber(ARGV[1])
local untl = tonumber(ARGV[2])
local nbf = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local once = ARGV[5] == 'once'
if once then
  local g = tonumber(redis.call('GET', KEYS[3]) or '0')
  if g ~= 0 and tonumber(ARGV[6]) <= g then return 'before-reset' end
  if redis.call('EXISTS', KEYS[1]) == 1 then return 'replayed' end
end
local old_until = redis.call('ZSCORE', KEYS[2], KEYS[1])
local live = old_until and tonumber(old_until) > now and redis.call('EXISTS', KEYS[1]) == 1
local raised = false
if not live then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= cap then
    local g = tonumber(redis.call('GET', KEYS[3]) or '0')
    if now > g then redis.call('SET', KEYS[3], now) end
    local members = redis.call('ZRANGE', KEYS[2], 0, -1)
    for i = 1, #members, 500 do
      redis.call('UNLINK', unpack(members, i, math.min(i + 499, #members)))
    end
    redis.call('DEL', KEYS[2])
    raised = true
    if not once then return 'raised' end
  end
else
  local old = tonumber(redis.call('GET', KEYS[1]) or '0')
  if old > nbf then nbf = old end
  if tonumber(old_until) > untl then untl = tonumber(old_until) end
end
redis.call('SET', KEYS[1], nbf, 'EXAT', untl)
redis.call('ZADD', KEYS[2], untl, KEYS[1])
if raised then return 'raised' end
return 'stored'
"#;

/// The Redis set.
pub struct RedisSet {
    conn: ConnectionManager,
    url: Secret<String>,
    capacity: AtomicUsize,
}

impl RedisSet {
    /// Does not connect: the connection is made on first use. Inside a Tokio runtime.
    pub fn new(url: &Secret<String>, capacity: usize) -> Result<RedisSet, RevocationError> {
        let conn = connect(url).map_err(RevocationError::Config)?;
        Ok(RedisSet {
            conn,
            url: url.clone(),
            capacity: AtomicUsize::new(capacity.max(1)),
        })
    }

    pub(super) fn url_is(&self, url: &Secret<String>) -> bool {
        self.url == *url
    }

    pub(super) fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), SeqCst);
    }

    /// One `MGET`.
    pub(super) async fn check(&self, facts: &Facts) -> Result<Verdict, RevocationError> {
        let keys = probe_keys(&facts.keys);
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = ::redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(RevocationError::Unavailable)?;
        judge(&values, facts)
    }

    /// Runs the insert script; logs a raise.
    async fn run(
        &self,
        kind: Entry,
        key: &Key,
        args: (u64, u64, u64, &str, u64),
    ) -> Result<Answer, RevocationError> {
        let (now, until, not_before, mode, issued_at) = args;
        let capacity = self.capacity.load(SeqCst);
        let mut conn = self.conn.clone();
        let answer: String = ::redis::cmd("EVAL")
            .arg(INSERT)
            .arg(3)
            .arg(entry_key(kind, key))
            .arg(INDEX)
            .arg(GLOBAL)
            .arg(now)
            .arg(until)
            .arg(not_before)
            .arg(capacity)
            .arg(mode)
            .arg(issued_at)
            .query_async(&mut conn)
            .await
            .map_err(RevocationError::Unavailable)?;
        let answer = match answer.as_str() {
            "stored" => Answer::Stored,
            "raised" => Answer::Raised,
            "replayed" => Answer::Replayed,
            "before-reset" => Answer::BeforeReset,
            _ => return Err(RevocationError::Protocol),
        };
        if answer == Answer::Raised {
            log_raised(capacity, now, "redis");
        }
        Ok(answer)
    }

    pub(super) async fn insert(
        &self,
        kind: Entry,
        key: &Key,
        not_before: u64,
        until: u64,
        now: u64,
    ) -> Result<Recorded, RevocationError> {
        if until <= now {
            return Ok(Recorded::Stored);
        }
        match self
            .run(kind, key, (now, until, not_before, "put", 0))
            .await?
        {
            Answer::Stored => Ok(Recorded::Stored),
            Answer::Raised => Ok(Recorded::Raised),
            Answer::Replayed | Answer::BeforeReset => Err(RevocationError::Protocol),
        }
    }

    pub(super) async fn first_use(
        &self,
        key: &Key,
        issued_at: u64,
        until: u64,
        now: u64,
    ) -> Result<FirstUse, RevocationError> {
        let until = until.max(now + 1);
        let args = (now, until, 0, "once", issued_at);
        Ok(match self.run(Entry::Jti, key, args).await? {
            Answer::Stored => FirstUse::Fresh,
            Answer::Raised => FirstUse::FreshAfterReset,
            Answer::Replayed => FirstUse::Replayed,
            Answer::BeforeReset => FirstUse::IssuedBeforeReset,
        })
    }
}

/// The insert script's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Stored,
    Raised,
    Replayed,
    BeforeReset,
}

/// The one way portcullis talks to Redis (the session store and the revocation set): a
/// connection made on first use and re-made after errors, with short timeouts so that a
/// dead Redis turns into a quick 503, not a hung request. Inside a Tokio runtime. The
/// errors never repeat the URL (it may hold a password).
pub(crate) fn connect(url: &Secret<String>) -> Result<ConnectionManager, &'static str> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err("Redis clients must be created inside the Tokio runtime");
    }
    let client = Client::open(url.expose().as_str())
        .map_err(|_| "session.redis_url: not a usable redis:// URL (rediss:// is not built in)")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|_| "session.redis_url: cannot set up the Redis client")
}

fn entry_key(kind: Entry, key: &Key) -> String {
    let mut s = String::with_capacity(PREFIX.len() + 2 + 32);
    s.push_str(PREFIX);
    s.push(kind.tag());
    s.push(':');
    s.push_str(&hex(key));
    s
}

/// The keys a check reads, in [`judge`]'s order: global, session, subject, provider
/// session (when the session has one).
pub fn probe_keys(keys: &Keys) -> Vec<String> {
    let mut v = Vec::with_capacity(4);
    v.push(GLOBAL.to_string());
    v.push(entry_key(Entry::Session, &keys.session));
    v.push(entry_key(Entry::Subject, &keys.subject));
    if let Some(p) = &keys.provider_sid {
        v.push(entry_key(Entry::ProviderSession, p));
    }
    v
}

/// The verdict on the values of [`probe_keys`] for a session issued at `facts.issued_at`.
pub fn judge(values: &[Option<String>], facts: &Facts) -> Result<Verdict, RevocationError> {
    let num = |v: &Option<String>| -> Result<Option<u64>, RevocationError> {
        match v {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| RevocationError::Protocol),
        }
    };
    let want = 3 + usize::from(facts.keys.provider_sid.is_some());
    if values.len() != want {
        return Err(RevocationError::Protocol);
    }
    if num(&values[0])?.is_some_and(|g| g != 0 && facts.issued_at <= g) {
        return Ok(Verdict::Revoked(Reason::Global));
    }
    if values[1].is_some() {
        return Ok(Verdict::Revoked(Reason::SignedOut));
    }
    if values.len() == 4 && values[3].is_some() {
        return Ok(Verdict::Revoked(Reason::ProviderLogout));
    }
    if num(&values[2])?.is_some_and(|nbf| facts.issued_at <= nbf) {
        return Ok(Verdict::Revoked(Reason::Subject));
    }
    Ok(Verdict::Live)
}
