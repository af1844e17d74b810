//! The Redis store (`session.store = "redis"`): the browser holds only a ticket, Redis holds
//! the session encrypted under a key that only the ticket carries.
//!
//! # Scheme
//! - **Ticket**: a random 128-bit `id` and a random 256-bit per-session `key`, and the
//!   session's revocation keys (its session id and the digests of its subject and provider
//!   session: see `crate::revocation`), sealed (see `seal.rs`, purpose
//!   [`TICKET`](super::seal::TICKET), AAD = the cookie's logical name, sealed expiry = the
//!   session's lifetime) into the session cookie. A forged or altered ticket does not
//!   open, so Redis is never asked about it. Tickets issued before revocation keys existed
//!   (48 bytes) still open; their check costs a second round trip.
//! - **Entry**: key `portcullis:session:<hex SHA-256(id)>`, value
//!   `version || nonce || AES-256-GCM(key, session, aad = the Redis key)`. Redis (and its
//!   backups, replicas, `MONITOR`) never sees a usable token, the ticket's `id`, or the key:
//!   reading Redis alone opens no session.
//! - **TTL** = `min(idle_timeout, remaining lifetime)`. `load` is one round trip: `GETEX key
//!   EX ttl` (Redis ≥ 6.2) returns the entry and pushes its TTL forward, so Redis enforces the
//!   idle timeout and no write-back is needed on ordinary requests. `load_checked` sends the
//!   revocation check (`MGET`, see `crate::revocation::redis`) in the same pipeline: still
//!   one round trip. `save` is `SET .. EX`
//!   (with `XX` when re-saving a loaded session, so that a session cleared meanwhile on
//!   another replica is not resurrected by a refresh); `clear` is `DEL`.
//! - No local cache: every replica that shares the Redis and `session.secrets` opens the
//!   same sessions, and after `clear` on any of them, all refuse it.
//! - Any Redis error is [`SessionError::Unavailable`]: the caller answers 503 (fail closed).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::redis::aio::ConnectionManager;
use ::redis::Value;
use aws_lc_rs::digest;
use http::{HeaderMap, HeaderValue};

use super::cookie::CookieSettings;
use super::opened::OpenedSession;
use super::seal::{self, random, unix, RawKey, Sealer};
use super::{wire, Session, SessionError};
use crate::config::Secret;
use crate::revocation::{self, Facts, Keys, Revocations, Verdict};

const KEY_PREFIX: &str = "portcullis:session:";
const ID_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// Where a session lives in Redis, the key that opens it, and the keys it is revoked by.
/// Never printed.
#[derive(Clone)]
pub(crate) struct Ticket {
    id: Secret<[u8; ID_LEN]>,
    key: Secret<[u8; KEY_LEN]>,
    /// `None` in tickets issued before revocation keys were kept in them.
    revocation: Option<Keys>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket(<redacted>)")
    }
}

impl Ticket {
    fn generate(revocation: Keys) -> Result<Ticket, SessionError> {
        Ok(Ticket {
            id: Secret::new(random::<ID_LEN>()?),
            key: Secret::new(random::<KEY_LEN>()?),
            revocation: Some(revocation),
        })
    }

    fn from_bytes(b: &[u8]) -> Option<Ticket> {
        if b.len() < ID_LEN + KEY_LEN {
            return None;
        }
        let (head, rest) = b.split_at(ID_LEN + KEY_LEN);
        let revocation = match rest.len() {
            0 => None,
            _ => Some(Keys::from_bytes(rest)?),
        };
        Some(Ticket {
            id: Secret::new(head[..ID_LEN].try_into().ok()?),
            key: Secret::new(head[ID_LEN..].try_into().ok()?),
            revocation,
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ID_LEN + KEY_LEN + 49);
        b.extend_from_slice(self.id.expose());
        b.extend_from_slice(self.key.expose());
        if let Some(k) = &self.revocation {
            b.extend_from_slice(&k.to_bytes());
        }
        b
    }

    /// `portcullis:session:<hex SHA-256(id)>`: the id itself never reaches Redis.
    fn redis_key(&self) -> String {
        let d = digest::digest(&digest::SHA256, self.id.expose());
        let mut s = String::with_capacity(KEY_PREFIX.len() + 64);
        s.push_str(KEY_PREFIX);
        for b in d.as_ref() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn same_as(&self, other: &Ticket) -> bool {
        self.id.ct_eq(other.id.expose())
    }
}

/// `GETEX key EX ttl`: the entry, its TTL pushed forward (Redis enforces the idle timeout).
fn getex(key: &str, ttl: u64) -> ::redis::Cmd {
    let mut c = ::redis::cmd("GETEX");
    c.arg(key).arg("EX").arg(ttl);
    c
}

/// The Redis-backed session store.
pub struct RedisStore {
    settings: Arc<CookieSettings>,
    tickets: Sealer,
    conn: ConnectionManager,
    lifetime: Duration,
    idle_timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("settings", &self.settings)
            .field("lifetime", &self.lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Does not connect: the connection is made on first use and re-made after errors.
    /// Must be called inside a Tokio runtime.
    pub fn new(
        settings: Arc<CookieSettings>,
        secrets: &[Secret<[u8; 32]>],
        redis_url: &Secret<String>,
        lifetime: Duration,
        idle_timeout: Duration,
    ) -> Result<RedisStore, SessionError> {
        let conn = revocation::redis::connect(redis_url).map_err(SessionError::Config)?;
        Ok(RedisStore {
            settings,
            tickets: Sealer::new(secrets, seal::TICKET)?,
            conn,
            lifetime,
            idle_timeout,
        })
    }

    pub fn settings(&self) -> &CookieSettings {
        &self.settings
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The ticket in the request's session cookie, if one opens (first that does).
    fn ticket(&self, request: &HeaderMap, now: SystemTime) -> Option<(Ticket, u64)> {
        let fam = self.settings.session_cookies(request);
        fam.singles.iter().take(4).find_map(|v| {
            let o = self.tickets.open(self.settings.name(), v, unix(now))?;
            Some((Ticket::from_bytes(o.payload())?, o.expires_at))
        })
    }

    /// Seconds Redis keeps an entry: the idle timeout, capped by the remaining lifetime.
    fn ttl(&self, expires_at: u64, now: u64) -> Option<u64> {
        let remaining = expires_at.checked_sub(now).filter(|&r| r > 0)?;
        Some(remaining.min(self.idle_timeout.as_secs().max(1)))
    }

    /// See [`super::SessionStore::load`]. One round trip (`GETEX`).
    pub async fn load(
        &self,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Result<Option<Session>, SessionError> {
        let Some((ticket, key, ttl)) = self.locate(request, now) else {
            return Ok(None);
        };
        let mut conn = self.conn.clone();
        let value: Option<Vec<u8>> = getex(&key, ttl)
            .query_async(&mut conn)
            .await
            .map_err(SessionError::Unavailable)?;
        self.open_entry(ticket, &key, value, now)
    }

    /// The request's ticket, its Redis key and the TTL a use pushes the entry to.
    fn locate(&self, request: &HeaderMap, now: SystemTime) -> Option<(Ticket, String, u64)> {
        let (ticket, ticket_exp) = self.ticket(request, now)?;
        let ttl = self.ttl(ticket_exp, unix(now))?;
        let key = ticket.redis_key();
        Some((ticket, key, ttl))
    }

    /// See [`super::SessionStore::load_checked`]: `GETEX` and the revocation `MGET` in one
    /// pipeline (one round trip) when the ticket carries the revocation keys and
    /// revocations are in Redis; otherwise the check follows the load.
    pub async fn load_checked(
        &self,
        request: &HeaderMap,
        now: SystemTime,
        revocations: &Revocations,
    ) -> Result<Option<(OpenedSession, Verdict)>, SessionError> {
        let Some((ticket, key, ttl)) = self.locate(request, now) else {
            return Ok(None);
        };
        let mut conn = self.conn.clone();
        let keys = ticket.revocation.filter(|_| revocations.redis().is_some());
        let mut pipe = ::redis::pipe();
        pipe.add_command(getex(&key, ttl));
        if let Some(k) = &keys {
            pipe.cmd("MGET").arg(revocation::redis::probe_keys(k));
        }
        let (value, probed): (Option<Vec<u8>>, Option<Vec<Option<String>>>) = if keys.is_some() {
            let (v, p): (Option<Vec<u8>>, Vec<Option<String>>) = pipe
                .query_async(&mut conn)
                .await
                .map_err(SessionError::Unavailable)?;
            (v, Some(p))
        } else {
            let (v,): (Option<Vec<u8>>,) = pipe
                .query_async(&mut conn)
                .await
                .map_err(SessionError::Unavailable)?;
            (v, None)
        };
        let Some(s) = self.open_entry(ticket, &key, value, now)? else {
            return Ok(None);
        };
        match (keys, probed) {
            (Some(k), Some(values)) => {
                // The keys were sealed into the ticket with this session (its iss, sub and
                // sid never change): no digest to compute again.
                let issued_at = unix(s.created_at);
                let opened = OpenedSession::with_facts(s, Facts { keys: k, issued_at });
                let verdict = revocation::redis::judge(&values, &opened.facts)
                    .map_err(SessionError::Revocation)?;
                Ok(Some((opened, verdict)))
            }
            _ => {
                let opened = OpenedSession::new(s);
                let verdict = revocations
                    .check(&opened.facts, now)
                    .await
                    .map_err(SessionError::Revocation)?;
                Ok(Some((opened, verdict)))
            }
        }
    }

    /// The session of a `GETEX` answer, if it opens with the ticket and has not ended.
    fn open_entry(
        &self,
        ticket: Ticket,
        key: &str,
        value: Option<Vec<u8>>,
        now: SystemTime,
    ) -> Result<Option<Session>, SessionError> {
        let Some(value) = value else {
            tracing::debug!("session ticket has no Redis entry (ended or idle)");
            return Ok(None);
        };
        let Some(plain) = RawKey::new(ticket.key.expose())?.open(key.as_bytes(), &value) else {
            tracing::warn!("Redis session entry does not open with its ticket");
            return Ok(None);
        };
        let Some(mut s) = wire::read(&plain) else {
            return Ok(None);
        };
        if now >= s.ends_at(self.lifetime) {
            return Ok(None);
        }
        // Redis's TTL enforces the idle timeout; this request is a use.
        s.last_seen = now;
        s.ticket = Some(ticket);
        Ok(Some(s))
    }

    /// See [`super::SessionStore::save`].
    pub async fn save(
        &self,
        s: &mut Session,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let now_s = unix(now);
        let exp = unix(s.ends_at(self.lifetime));
        let Some(ttl) = self.ttl(exp, now_s) else {
            return Err(SessionError::Ended);
        };
        let (ticket, fresh) = match &s.ticket {
            Some(t) => (t.clone(), false),
            None => (Ticket::generate(s.revocation_facts().keys)?, true),
        };
        let key = ticket.redis_key();
        let mut plain = Vec::with_capacity(wire::size_hint(s));
        wire::write(s, &mut plain)?;
        let sealed = RawKey::new(ticket.key.expose())?.seal(key.as_bytes(), plain)?;
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        if fresh {
            // A new login: a new ticket, whatever the browser brought (no session fixation);
            // the previous session it carried, if any, is deleted in the same round trip.
            let mut pipe = ::redis::pipe();
            pipe.atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&sealed)
                .arg("EX")
                .arg(ttl)
                .ignore();
            if let Some((old, _)) = self.ticket(request, now) {
                if !old.same_as(&ticket) {
                    pipe.cmd("DEL").arg(old.redis_key()).ignore();
                }
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(SessionError::Unavailable)?;
            let value = self
                .tickets
                .seal(self.settings.name(), &ticket.to_bytes(), now_s, exp)?;
            let base = self.settings.wire_name(self.settings.name());
            out.push(self.settings.set_cookie(&base, &value, exp - now_s)?);
            // Chunks left from the cookie store, if the store was switched.
            let fam = self.settings.session_cookies(request);
            for name in fam.names(base.as_bytes()) {
                if name != base.as_bytes() {
                    out.extend(self.settings.delete_cookie(name));
                }
            }
            s.ticket = Some(ticket);
        } else {
            // Re-save of a loaded session: only if it still exists (XX), so that a sign-out
            // on another replica during a refresh is not undone.
            let r: Value = ::redis::cmd("SET")
                .arg(&key)
                .arg(&sealed)
                .arg("EX")
                .arg(ttl)
                .arg("XX")
                .query_async(&mut conn)
                .await
                .map_err(SessionError::Unavailable)?;
            if matches!(r, Value::Nil) {
                return Err(SessionError::Ended);
            }
        }
        Ok(out)
    }

    /// See [`super::SessionStore::clear`].
    pub async fn clear(
        &self,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        // A ticket past its sealed expiry needs no DEL: its entry's TTL ended no later.
        if let Some((ticket, _)) = self.ticket(request, now) {
            let mut conn = self.conn.clone();
            ::redis::cmd("DEL")
                .arg(ticket.redis_key())
                .query_async::<i64>(&mut conn)
                .await
                .map_err(SessionError::Unavailable)?;
        }
        Ok(self.settings.expire_session_cookies(request))
    }
}

#[cfg(test)]
mod tests {
    use http::header::COOKIE;

    use super::super::wire::tests::{assert_same, full_session};
    use super::*;
    use crate::testutil::RedisServer;

    fn store(url: &Secret<String>, secrets: &[Secret<[u8; 32]>]) -> RedisStore {
        let settings = Arc::new(CookieSettings::new("_portcullis", true, None).unwrap());
        RedisStore::new(
            settings,
            secrets,
            url,
            Duration::from_secs(8 * 3600),
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    fn secret(b: u8) -> Secret<[u8; 32]> {
        Secret::new([b; 32])
    }

    fn cookie_header(set: &[HeaderValue]) -> HeaderMap {
        let pairs: Vec<&str> = set
            .iter()
            .map(|v| v.to_str().unwrap())
            .filter(|v| !v.contains("Max-Age=0"))
            .map(|v| v.split(';').next().unwrap())
            .collect();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&pairs.join("; ")).unwrap());
        h
    }

    #[tokio::test]
    async fn two_replicas_share_sessions_and_sign_out_everywhere() {
        let redis = RedisServer::start();
        let a = store(&redis.url(), &[secret(1)]);
        let b = store(&redis.url(), &[secret(1)]);
        let now = SystemTime::now();
        let mut s = full_session(now);
        let set = a.save(&mut s, &HeaderMap::new(), now).await.unwrap();
        assert_eq!(set.len(), 1);
        let v = set[0].to_str().unwrap();
        assert!(
            v.starts_with("__Host-_portcullis=") && v.contains("Max-Age=28800;"),
            "{v}"
        );
        // The ticket cookie is small whatever the session's size (id, key and the
        // revocation keys: 97 bytes sealed).
        assert!(v.len() < 300, "{}", v.len());
        let h = cookie_header(&set);

        let on_b = b.load(&h, now).await.unwrap().expect("replica b serves it");
        assert_same(&on_b, &s);
        assert!(a.load(&h, now).await.unwrap().is_some());

        // Sign out on b: a refuses at once.
        let cleared = b.clear(&h, now).await.unwrap();
        assert!(cleared[0].to_str().unwrap().contains("Max-Age=0"));
        assert!(a.load(&h, now).await.unwrap().is_none());
        assert!(b.load(&h, now).await.unwrap().is_none());
        assert!(redis.dump().is_empty());
    }

    #[tokio::test]
    async fn redis_holds_no_plaintext_token_nor_key() {
        let redis = RedisServer::start();
        let st = store(&redis.url(), &[secret(1)]);
        let now = SystemTime::now();
        let mut s = full_session(now);
        st.save(&mut s, &HeaderMap::new(), now).await.unwrap();
        let dump = redis.dump();
        assert_eq!(dump.len(), 1);
        let (key, value) = &dump[0];
        assert!(
            key.starts_with("portcullis:session:") && key.len() == 19 + 64,
            "{key}"
        );
        let ticket = s.ticket.as_ref().unwrap();
        for needle in [
            &b"at-secret-value"[..],
            b"rt-secret-value",
            b"it.secret.value",
            b"ada@example.com",
            &ticket.key.expose()[..],
            &ticket.id.expose()[..],
        ] {
            assert!(!value.windows(needle.len()).any(|w| w == needle));
            assert!(!key.as_bytes().windows(needle.len()).any(|w| w == needle));
        }
        // TTL = idle timeout (shorter than the lifetime).
        let ttl = redis.ttl(key);
        assert!((3590..=3600).contains(&ttl), "{ttl}");
    }

    #[tokio::test]
    async fn new_login_gets_a_new_ticket_and_drops_the_old_entry() {
        let redis = RedisServer::start();
        let st = store(&redis.url(), &[secret(1)]);
        let now = SystemTime::now();
        let mut first = full_session(now);
        let h1 = cookie_header(&st.save(&mut first, &HeaderMap::new(), now).await.unwrap());
        // Log in again with the old cookie present: fresh ticket, old entry deleted.
        let mut second = full_session(now);
        second.sub = "someone-else".into();
        let h2 = cookie_header(&st.save(&mut second, &h1, now).await.unwrap());
        assert_ne!(h1[COOKIE], h2[COOKIE]);
        assert!(st.load(&h1, now).await.unwrap().is_none());
        assert_eq!(
            st.load(&h2, now).await.unwrap().unwrap().sub,
            "someone-else"
        );
        assert_eq!(redis.dump().len(), 1);
    }

    #[tokio::test]
    async fn refresh_keeps_the_ticket_and_does_not_resurrect() {
        let redis = RedisServer::start();
        let a = store(&redis.url(), &[secret(1)]);
        let b = store(&redis.url(), &[secret(1)]);
        let now = SystemTime::now();
        let mut s = full_session(now);
        let h = cookie_header(&a.save(&mut s, &HeaderMap::new(), now).await.unwrap());
        let mut loaded = a.load(&h, now).await.unwrap().unwrap();
        loaded.access_token = Secret::new("refreshed".into());
        let set = a.save(&mut loaded, &h, now).await.unwrap();
        assert!(set.is_empty(), "same ticket: no new cookie");
        assert_eq!(
            b.load(&h, now)
                .await
                .unwrap()
                .unwrap()
                .access_token
                .expose(),
            "refreshed"
        );
        // Signed out on b while a refreshes: a's save must not bring it back.
        b.clear(&h, now).await.unwrap();
        loaded.access_token = Secret::new("refreshed-again".into());
        assert!(matches!(
            a.save(&mut loaded, &h, now).await,
            Err(SessionError::Ended)
        ));
        assert!(redis.dump().is_empty());
    }

    #[tokio::test]
    async fn forged_foreign_and_expired_tickets() {
        let redis = RedisServer::start();
        let st = store(&redis.url(), &[secret(1)]);
        let other = store(&redis.url(), &[secret(2)]);
        let now = SystemTime::now();
        let mut s = full_session(now);
        let h = cookie_header(&st.save(&mut s, &HeaderMap::new(), now).await.unwrap());
        assert!(
            other.load(&h, now).await.unwrap().is_none(),
            "other secrets"
        );
        let mut tampered = h[COOKIE].to_str().unwrap().to_string();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        let mut th = HeaderMap::new();
        th.insert(COOKIE, HeaderValue::from_str(&tampered).unwrap());
        assert!(st.load(&th, now).await.unwrap().is_none());
        // Past the lifetime.
        let later = now + Duration::from_secs(8 * 3600 + 1);
        assert!(st.load(&h, later).await.unwrap().is_none());
        // A rotated-in secret still opens old tickets.
        let rotated = store(&redis.url(), &[secret(3), secret(1)]);
        assert!(rotated.load(&h, now).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn idle_timeout_is_enforced_by_the_ttl() {
        let redis = RedisServer::start();
        let settings = Arc::new(CookieSettings::new("_p", false, None).unwrap());
        let st = RedisStore::new(
            settings,
            &[secret(1)],
            &redis.url(),
            Duration::from_secs(3600),
            Duration::from_secs(1),
        )
        .unwrap();
        let now = SystemTime::now();
        let mut s = full_session(now);
        s.expires_at = now + Duration::from_secs(3600);
        let h = cookie_header(&st.save(&mut s, &HeaderMap::new(), now).await.unwrap());
        assert!(st.load(&h, now).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(st.load(&h, SystemTime::now()).await.unwrap().is_none());
    }

    fn redis_revocations(url: &Secret<String>) -> Revocations {
        Revocations::new(&crate::config::RevocationSettings {
            kind: crate::config::RevocationKind::Redis,
            redis_url: Some(url.clone()),
            file: None,
            capacity: 1000,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn the_revocation_check_rides_with_the_load_and_old_tickets_still_open() {
        use crate::revocation::{Reason, Target};
        let redis = RedisServer::start();
        let st = store(&redis.url(), &[secret(1)]);
        let revocations = redis_revocations(&redis.url());
        let now = SystemTime::now();
        let mut s = full_session(now);
        let h = cookie_header(&st.save(&mut s, &HeaderMap::new(), now).await.unwrap());
        let (o, v) = st
            .load_checked(&h, now, &revocations)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v, Verdict::Live);
        assert_eq!(
            o.facts,
            s.revocation_facts(),
            "the ticket's keys are the session's"
        );
        // Another session of the same user, saved before this ticket format: a 48-byte
        // ticket (no revocation keys) still opens, checked after the load.
        let mut old = full_session(now);
        let set = st.save(&mut old, &HeaderMap::new(), now).await.unwrap();
        let t = old.ticket.clone().unwrap();
        let legacy = Ticket {
            revocation: None,
            ..t
        };
        let exp = unix(old.expires_at);
        let value = st
            .tickets
            .seal(st.settings.name(), &legacy.to_bytes(), unix(now), exp)
            .unwrap();
        assert_eq!(legacy.to_bytes().len(), 48);
        let mut lh = HeaderMap::new();
        lh.insert(
            COOKIE,
            HeaderValue::from_str(&format!("__Host-_portcullis={value}")).unwrap(),
        );
        drop(set);
        let (_, v) = st
            .load_checked(&lh, now, &revocations)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v, Verdict::Live);
        // Revoke the user: both refused, with the new ticket in one round trip.
        revocations
            .revoke(
                Target::Subject {
                    iss: &s.issuer,
                    sub: &s.sub,
                },
                now + Duration::from_secs(60),
                now + Duration::from_secs(1),
            )
            .await
            .unwrap();
        for headers in [&h, &lh] {
            let (_, v) = st
                .load_checked(headers, now, &revocations)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(v, Verdict::Revoked(Reason::Subject));
        }
        // With the memory set, the Redis store asks it after the load.
        let memory = Revocations::memory(10);
        memory
            .revoke(Target::Session(&s.id), now + Duration::from_secs(60), now)
            .await
            .unwrap();
        let (_, v) = st.load_checked(&h, now, &memory).await.unwrap().unwrap();
        assert_eq!(v, Verdict::Revoked(Reason::SignedOut));
        // Redis down: unavailable, never "live".
        drop(redis);
        assert!(st.load_checked(&h, now, &revocations).await.is_err());
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let settings = Arc::new(CookieSettings::new("_p", false, None).unwrap());
        let r = RedisStore::new(
            settings,
            &[secret(1)],
            &Secret::new("redis://127.0.0.1:1/".into()),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        assert!(matches!(r, Err(SessionError::Config(_))));
        let bad = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                RedisStore::new(
                    Arc::new(CookieSettings::new("_p", false, None).unwrap()),
                    &[secret(1)],
                    &Secret::new("http://user:hunter2@x/".into()),
                    Duration::from_secs(60),
                    Duration::from_secs(60),
                )
            });
        let err = bad.unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn redis_down_is_unavailable() {
        let redis = RedisServer::start();
        let url = redis.url();
        let st = store(&url, &[secret(1)]);
        let now = SystemTime::now();
        let mut s = full_session(now);
        let h = cookie_header(&st.save(&mut s, &HeaderMap::new(), now).await.unwrap());
        drop(redis);
        let started = std::time::Instant::now();
        assert!(matches!(
            st.load(&h, now).await,
            Err(SessionError::Unavailable(_))
        ));
        assert!(matches!(
            st.clear(&h, now).await,
            Err(SessionError::Unavailable(_))
        ));
        let mut fresh = full_session(now);
        assert!(matches!(
            st.save(&mut fresh, &HeaderMap::new(), now).await,
            Err(SessionError::Unavailable(_))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        // Without a cookie there is nothing to ask Redis: no session, no error.
        assert!(st.load(&HeaderMap::new(), now).await.unwrap().is_none());
        // Never connected at all.
        let never = store(&url, &[secret(1)]);
        assert!(matches!(
            never.load(&h, now).await,
            Err(SessionError::Unavailable(_))
        ));
    }
}
