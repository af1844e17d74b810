//! The cookie store (`session.store = "cookie"`): the whole session, sealed (see `seal.rs`),
//! in the browser's cookie; plus the cookie names, `Set-Cookie` rendering and `Cookie`
//! parsing shared by every cookie the proxy sets.
//!
//! # Names and attributes
//! Every cookie is `Path=/; HttpOnly; SameSite=Lax` with `Max-Age`, plus `Secure` when
//! `server.public_url` is https, plus `Domain` when `session.domain` is set. Over https the
//! name carries a prefix that the browser enforces (RFC 6265bis §4.1.3): `__Host-` without
//! `Domain` (the cookie is then `Secure`, host-only and `Path=/`, so a sibling subdomain or a
//! plain-http page cannot plant or overwrite it), `__Secure-` with `Domain`. Over plain http
//! the name is bare. The *logical* name (without prefix) is what the seal binds as AAD.
//!
//! # Chunking
//! Browsers keep at least 4096 bytes of name + value per cookie (RFC 6265bis §5.6,
//! "Storage Limits"). A sealed value longer than [`CHUNK_LEN`] (3,800) characters is cut
//! into pieces of at most [`CHUNK_LEN`] characters sent as `NAME_0`, `NAME_1`, …, `NAME_{n-1}`
//! (same prefix and attributes); the value is their concatenation in index order, and the
//! unchunked `NAME` is then not set. At most [`MAX_CHUNKS`] chunks: a bigger session is
//! [`SessionError::TooLarge`] (use the Redis store). On reading, the chunk indexes must be
//! exactly `0..n` with no duplicate, no gap and no extra; since the whole concatenation is
//! authenticated, a missing, extra, altered or reordered chunk means no session. Saving
//! expires every chunk (or unchunked cookie) the browser sent that the new value does not
//! overwrite, so a shrinking session leaves no stale chunk behind.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use super::opened::{OpenedCache, OpenedSession};
use super::seal::{self, unix, Sealer};
use super::{wire, Session, SessionError};
use crate::config::{Secret, SessionConfig};

/// Longest value of one cookie before chunking (characters of base64url).
pub const CHUNK_LEN: usize = 3800;
/// Most chunks a session cookie may use (about 15 KB of `Cookie` header).
pub const MAX_CHUNKS: usize = 4;
/// Unchunked values of the same name tried before giving up (a browser may send a name
/// twice, e.g. a host-only and a `Domain` cookie).
const MAX_DUPLICATES: usize = 4;
/// RFC 6265bis §5.6.1: user agents cap Max-Age at 400 days.
const MAX_AGE_CAP: u64 = 400 * 24 * 3600;

/// `RFC 6265bis` cookie-name prefixes, as the browser compares them (case-insensitively,
/// §5.7 step 19-20).
pub(crate) const PREFIXES: [&str; 2] = ["__Host-", "__Secure-"];

/// How the proxy's cookies are named and which attributes they carry.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    /// Logical name (`session.cookie_name`).
    name: String,
    secure: bool,
    /// Without a leading dot, lowercase.
    domain: Option<String>,
}

impl CookieSettings {
    /// `name`: letters, digits, `_`, `-`, `.`; `domain`: a host name (a leading `.` is
    /// dropped, as browsers do, RFC 6265bis §5.6.3).
    pub fn new(name: &str, secure: bool, domain: Option<&str>) -> Result<Self, SessionError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(SessionError::Config(
                "session.cookie_name: must be letters, digits, '_', '-' or '.'",
            ));
        }
        let domain = match domain {
            None => None,
            Some(d) => {
                let d = d.strip_prefix('.').unwrap_or(d).to_ascii_lowercase();
                if d.is_empty()
                    || d.starts_with('.')
                    || d.ends_with('.')
                    || !d
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
                {
                    return Err(SessionError::Config(
                        "session.domain: must be a host name like example.com",
                    ));
                }
                Some(d)
            }
        };
        Ok(CookieSettings {
            name: name.to_string(),
            secure,
            domain,
        })
    }

    /// From `[session]`; `Secure` (and the name prefixes) when `public_url` is https.
    pub fn from_config(cfg: &SessionConfig, public_url: &url::Url) -> Result<Self, SessionError> {
        Self::new(
            &cfg.cookie_name,
            public_url.scheme() == "https",
            cfg.domain.as_deref(),
        )
    }

    /// The same settings for a host-only cookie (no `Domain`), e.g. login transactions.
    pub(crate) fn host_only(&self) -> CookieSettings {
        CookieSettings {
            domain: None,
            ..self.clone()
        }
    }

    /// The logical session cookie name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn secure(&self) -> bool {
        self.secure
    }

    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// RFC 6265bis §4.1.3: `__Host-` (https, no Domain), `__Secure-` (https with Domain),
    /// nothing over plain http (the browser would refuse a prefixed cookie without Secure).
    pub fn prefix(&self) -> &'static str {
        match (self.secure, &self.domain) {
            (true, None) => "__Host-",
            (true, Some(_)) => "__Secure-",
            (false, _) => "",
        }
    }

    /// The name as sent to the browser, for a logical name.
    pub fn wire_name(&self, logical: &str) -> String {
        let p = self.prefix();
        let mut s = String::with_capacity(p.len() + logical.len());
        s.push_str(p);
        s.push_str(logical);
        s
    }

    fn attributes(&self, out: &mut String) {
        out.push_str("; Path=/");
        if let Some(d) = &self.domain {
            out.push_str("; Domain=");
            out.push_str(d);
        }
        if self.secure {
            out.push_str("; Secure");
        }
        out.push_str("; HttpOnly; SameSite=Lax");
    }

    /// `Set-Cookie: wire_name=value; Path=/; Max-Age=..; [Domain=..;] [Secure;] HttpOnly; SameSite=Lax`.
    pub(crate) fn set_cookie(
        &self,
        wire_name: &str,
        value: &str,
        max_age: u64,
    ) -> Result<HeaderValue, SessionError> {
        let mut s = String::with_capacity(wire_name.len() + value.len() + 96);
        s.push_str(wire_name);
        s.push('=');
        s.push_str(value);
        s.push_str("; Max-Age=");
        s.push_str(&max_age.min(MAX_AGE_CAP).to_string());
        self.attributes(&mut s);
        HeaderValue::from_str(&s)
            .map_err(|_| SessionError::Config("cookie value not a header value"))
    }

    /// A `Set-Cookie` that deletes `wire_name` (same Path/Domain/Secure, so it replaces the
    /// cookie, RFC 6265bis §5.7 step 22-23; `Max-Age=0` and a past `Expires`).
    pub(crate) fn delete_cookie(&self, wire_name: &[u8]) -> Option<HeaderValue> {
        let mut s = String::with_capacity(wire_name.len() + 120);
        s.push_str(std::str::from_utf8(wire_name).ok()?);
        s.push_str("=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        self.attributes(&mut s);
        HeaderValue::from_str(&s).ok()
    }

    /// The session cookies (unchunked and chunks) that a request carries.
    pub(crate) fn session_cookies<'a>(&self, request: &'a HeaderMap) -> Family<'a> {
        Family::collect(request, self.wire_name(&self.name).as_bytes())
    }

    /// Does the request bring a session cookie (whole or in chunks), usable or not?
    pub fn carries_session(&self, request: &HeaderMap) -> bool {
        let base = self.wire_name(&self.name);
        let fam = Family::collect(request, base.as_bytes());
        !fam.singles.is_empty() || !fam.chunks.is_empty()
    }

    /// `Set-Cookie` values expiring the unchunked session cookie and every session chunk
    /// the browser sent.
    pub fn expire_session_cookies(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        let base = self.wire_name(&self.name);
        let fam = Family::collect(request, base.as_bytes());
        let mut out = Vec::with_capacity(1 + fam.chunks.len());
        out.extend(self.delete_cookie(base.as_bytes()));
        let mut seen: Vec<&[u8]> = Vec::new();
        for (name, _, _) in &fam.chunks {
            if !seen.contains(name) {
                seen.push(name);
                out.extend(self.delete_cookie(name));
            }
        }
        out
    }
}

/// Every `(name, value)` cookie pair of a request's `Cookie` header(s), in order.
/// Pairs are split at `;`, trimmed of spaces and tabs, and split at the first `=`; a pair
/// without `=` has an empty name (RFC 6265bis §5.7 step 4-5, as browsers store it).
pub(crate) fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| cookie_pairs(v.as_bytes()))
        .filter_map(|pair| {
            let pair = trim_ows(pair);
            if pair.is_empty() {
                return None;
            }
            Some(match memchr::memchr(b'=', pair) {
                Some(i) => (trim_ows(&pair[..i]), trim_ows(&pair[i + 1..])),
                None => (&b""[..], pair),
            })
        })
}

/// The `;`-separated pairs of one `Cookie` header value, found with `memchr` (a session
/// cookie is kilobytes long: a byte-by-byte split costs more than everything else).
pub(crate) fn cookie_pairs(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(v);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b';', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// If `name` is `base_<digits>`, the digits (parsed; `None` for a non-canonical or huge
/// index such as `_007`, which is then still one of ours but never valid).
pub(crate) fn chunk_index(name: &[u8], base: &[u8]) -> Option<Option<usize>> {
    let rest = name.strip_prefix(base)?.strip_prefix(b"_")?;
    if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if rest.len() > 3 || (rest.len() > 1 && rest[0] == b'0') {
        return Some(None);
    }
    let n = std::str::from_utf8(rest).ok()?.parse().ok();
    Some(n)
}

/// The session cookies of one request.
pub(crate) struct Family<'a> {
    /// Values of the unchunked name, in order.
    pub singles: Vec<&'a [u8]>,
    /// (name, index, value) of every chunk-named cookie.
    pub chunks: Vec<(&'a [u8], Option<usize>, &'a [u8])>,
}

impl<'a> Family<'a> {
    fn collect(request: &'a HeaderMap, base: &[u8]) -> Family<'a> {
        let mut fam = Family {
            singles: Vec::new(),
            chunks: Vec::new(),
        };
        for (name, value) in request_cookies(request) {
            if name == base {
                fam.singles.push(value);
            } else if let Some(idx) = chunk_index(name, base) {
                fam.chunks.push((name, idx, value));
            }
        }
        fam
    }

    /// The chunks joined, if they are exactly `0..n` (n ≤ MAX_CHUNKS) without duplicates.
    pub fn joined(&self) -> Option<Vec<u8>> {
        let n = self.chunks.len();
        if n == 0 || n > MAX_CHUNKS {
            return None;
        }
        let mut parts: [Option<&[u8]>; MAX_CHUNKS] = [None; MAX_CHUNKS];
        for (_, idx, value) in &self.chunks {
            let i = (*idx)?;
            let slot = parts.get_mut(i)?;
            if slot.is_some() {
                return None;
            }
            *slot = Some(value);
        }
        // n distinct indexes all below n: exactly 0..n.
        let mut out = Vec::with_capacity(n * CHUNK_LEN);
        for p in parts.iter().take(n) {
            out.extend_from_slice((*p)?);
        }
        if parts.iter().skip(n).any(Option::is_some) {
            return None;
        }
        Some(out)
    }

    /// Every cookie name of the family, deduplicated.
    pub fn names(&self, base: &'a [u8]) -> Vec<&'a [u8]> {
        let mut v: Vec<&[u8]> = Vec::new();
        if !self.singles.is_empty() {
            v.push(base);
        }
        for (name, _, _) in &self.chunks {
            if !v.contains(name) {
                v.push(name);
            }
        }
        v
    }
}

/// Splits a sealed value into `(wire name, piece)` cookies: unchunked when it fits.
pub(crate) fn split(base_wire: &str, sealed: &str) -> Result<Vec<(String, String)>, SessionError> {
    if sealed.len() <= CHUNK_LEN {
        return Ok(vec![(base_wire.to_string(), sealed.to_string())]);
    }
    if sealed.len() > CHUNK_LEN * MAX_CHUNKS {
        return Err(SessionError::TooLarge {
            bytes: sealed.len(),
        });
    }
    // base64url is ASCII: any byte index is a char boundary.
    Ok(sealed
        .as_bytes()
        .chunks(CHUNK_LEN)
        .enumerate()
        .map(|(i, piece)| {
            (
                format!("{base_wire}_{i}"),
                String::from_utf8_lossy(piece).into_owned(),
            )
        })
        .collect())
}

/// The sealed-cookie session store.
pub struct CookieStore {
    settings: Arc<CookieSettings>,
    sealer: Sealer,
    /// Values opened before: a returning browser skips decoding and decryption.
    opened: OpenedCache,
    lifetime: Duration,
    idle_timeout: Duration,
}

impl std::fmt::Debug for CookieStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieStore")
            .field("settings", &self.settings)
            .field("lifetime", &self.lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl CookieStore {
    pub fn new(
        settings: Arc<CookieSettings>,
        secrets: &[Secret<[u8; 32]>],
        lifetime: Duration,
        idle_timeout: Duration,
    ) -> Result<CookieStore, SessionError> {
        Ok(CookieStore {
            settings,
            sealer: Sealer::new(secrets, seal::SESSION)?,
            opened: OpenedCache::default(),
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

    /// The request's session, or `None` (see [`super::SessionStore::load`]).
    pub fn load(&self, request: &HeaderMap, now: SystemTime) -> Option<OpenedSession> {
        let fam = self.settings.session_cookies(request);
        for v in fam.singles.iter().take(MAX_DUPLICATES) {
            if let Some(s) = self.open_cached(v, now) {
                return Some(s);
            }
        }
        if !fam.chunks.is_empty() {
            let Some(joined) = fam.joined() else {
                tracing::debug!("session cookie chunks incomplete or inconsistent");
                return None;
            };
            return self.open_cached(&joined, now);
        }
        None
    }

    /// [`CookieStore::open`] through the cache of values opened before.
    fn open_cached(&self, sealed: &[u8], now: SystemTime) -> Option<OpenedSession> {
        let opened = match self.opened.get(sealed, unix(now)) {
            Some(o) => o,
            None => {
                let (session, seal_expires) = self.open_sealed(sealed, now)?;
                let o = OpenedSession::new(session);
                self.opened.put(sealed, seal_expires, o.clone(), unix(now));
                o
            }
        };
        if !self.live(&opened.session, now) {
            tracing::debug!("session expired or idle");
            return None;
        }
        Some(opened)
    }

    /// Within its lifetime (capped by the configured one: [`Session::ends_at`]) and idle
    /// timeout?
    fn live(&self, s: &Session, now: SystemTime) -> bool {
        s.is_live(now, self.idle_timeout) && now < s.ends_at(self.lifetime)
    }

    /// Opens one sealed session value (exposed for benchmarks and tests).
    pub fn open(&self, sealed: &[u8], now: SystemTime) -> Option<Session> {
        let (s, _) = self.open_sealed(sealed, now)?;
        if !self.live(&s, now) {
            tracing::debug!("session expired or idle");
            return None;
        }
        Some(s)
    }

    /// The session of a sealed value and the seal's expiry, liveness not checked.
    fn open_sealed(&self, sealed: &[u8], now: SystemTime) -> Option<(Session, u64)> {
        let Some(opened) = self.sealer.open(&self.settings.name, sealed, unix(now)) else {
            tracing::debug!("session cookie refused (not authentic, foreign or expired)");
            return None;
        };
        let s = wire::read(opened.payload())?;
        Some((s, opened.expires_at))
    }

    /// Seals a session into one value (before chunking), valid until
    /// `min(expires_at, last_seen + idle_timeout)`; returns it with its remaining seconds.
    pub fn seal(&self, s: &Session, now: SystemTime) -> Result<(String, u64), SessionError> {
        let now_s = unix(now);
        let exp = unix(s.ends_at(self.lifetime))
            .min(unix(s.last_seen).saturating_add(self.idle_timeout.as_secs()));
        if exp <= now_s {
            return Err(SessionError::Ended);
        }
        let value =
            self.sealer
                .seal_with(&self.settings.name, now_s, exp, wire::size_hint(s), |buf| {
                    wire::write(s, buf)
                })?;
        Ok((value, exp - now_s))
    }

    /// See [`super::SessionStore::touch`].
    pub fn touch(&self, s: &mut Session, now: SystemTime) -> bool {
        if self.touch_due(s, now) {
            s.last_seen = now;
            true
        } else {
            false
        }
    }

    /// Is `last_seen` older than a tenth of the idle timeout (see [`CookieStore::touch`])?
    pub fn touch_due(&self, s: &Session, now: SystemTime) -> bool {
        let age = now.duration_since(s.last_seen).unwrap_or(Duration::ZERO);
        age >= self.idle_timeout / 10
    }

    /// See [`super::SessionStore::save`].
    pub fn save(
        &self,
        s: &Session,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let (sealed, max_age) = self.seal(s, now)?;
        let base = self.settings.wire_name(&self.settings.name);
        let pieces = split(&base, &sealed)?;
        let mut out = Vec::with_capacity(pieces.len() + 1);
        for (name, value) in &pieces {
            out.push(self.settings.set_cookie(name, value, max_age)?);
        }
        let fam = self.settings.session_cookies(request);
        for stale in fam.names(base.as_bytes()) {
            if !pieces.iter().any(|(n, _)| n.as_bytes() == stale) {
                out.extend(self.settings.delete_cookie(stale));
            }
        }
        Ok(out)
    }

    /// See [`super::SessionStore::clear`].
    pub fn clear(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        self.settings.expire_session_cookies(request)
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::tests::{assert_same, full_session, t};
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn secret(b: u8) -> Secret<[u8; 32]> {
        Secret::new([b; 32])
    }

    fn store_with(secrets: &[Secret<[u8; 32]>], secure: bool, domain: Option<&str>) -> CookieStore {
        let settings = Arc::new(CookieSettings::new("_portcullis", secure, domain).unwrap());
        CookieStore::new(settings, secrets, 8 * HOUR, HOUR).unwrap()
    }

    fn store() -> CookieStore {
        store_with(&[secret(1)], true, None)
    }

    /// The `Cookie` request header a browser would send back for these `Set-Cookie` values
    /// (deletions dropped).
    pub(crate) fn cookie_header(set_cookies: &[HeaderValue]) -> HeaderMap {
        let pairs: Vec<String> = set_cookies
            .iter()
            .map(|v| v.to_str().unwrap())
            .filter(|v| !v.contains("Max-Age=0"))
            .map(|v| v.split(';').next().unwrap().to_string())
            .collect();
        let mut h = HeaderMap::new();
        if !pairs.is_empty() {
            h.insert(COOKIE, HeaderValue::from_str(&pairs.join("; ")).unwrap());
        }
        h
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    fn big_session(now: SystemTime) -> Session {
        let mut s = full_session(now);
        s.groups = (0..200)
            .map(|i| format!("group-{i:03}-engineering-platform"))
            .collect();
        s
    }

    #[test]
    fn round_trip() {
        let st = store();
        let s = full_session(t(NOW));
        let set = st.save(&s, &HeaderMap::new(), t(NOW)).unwrap();
        assert_eq!(set.len(), 1);
        let loaded = st.load(&cookie_header(&set), t(NOW + 5)).unwrap();
        assert_same(&loaded.session, &s);
        assert_eq!(loaded.identity.subject(), "auth0|abc123");
        // Again: from the cache of opened values, the same session.
        let again = st.load(&cookie_header(&set), t(NOW + 6)).unwrap();
        assert!(Arc::ptr_eq(&again.session, &loaded.session));
        // Past the idle timeout the cached value is refused like an opened one.
        assert!(st.load(&cookie_header(&set), t(NOW + 3 * 3600)).is_none());
    }

    #[test]
    fn set_cookie_attributes_and_prefixes() {
        let s = full_session(t(NOW));
        // https, no Domain: __Host- (RFC 6265bis §4.1.3.2).
        let v = store().save(&s, &HeaderMap::new(), t(NOW)).unwrap();
        let v = v[0].to_str().unwrap();
        assert!(v.starts_with("__Host-_portcullis="), "{v}");
        assert!(
            v.ends_with("; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax"),
            "{v}"
        );
        assert!(!v.contains("Domain"));
        // https with Domain: __Secure- (RFC 6265bis §4.1.3.1).
        let v = store_with(&[secret(1)], true, Some(".Example.com"))
            .save(&s, &HeaderMap::new(), t(NOW))
            .unwrap();
        let v = v[0].to_str().unwrap();
        assert!(v.starts_with("__Secure-_portcullis="), "{v}");
        assert!(
            v.contains("; Path=/; Domain=example.com; Secure; HttpOnly; SameSite=Lax"),
            "{v}"
        );
        // http: bare name, no Secure.
        let v = store_with(&[secret(1)], false, None)
            .save(&s, &HeaderMap::new(), t(NOW))
            .unwrap();
        let v = v[0].to_str().unwrap();
        assert!(v.starts_with("_portcullis="), "{v}");
        assert!(!v.contains("Secure"));
        assert!(v.contains("HttpOnly; SameSite=Lax"));
    }

    #[test]
    fn max_age_is_the_nearer_of_lifetime_and_idle_timeout() {
        let st = store();
        let mut s = full_session(t(NOW));
        s.expires_at = t(NOW + 100);
        let v = st.save(&s, &HeaderMap::new(), t(NOW)).unwrap();
        assert!(v[0].to_str().unwrap().contains("Max-Age=100;"));
        s.expires_at = t(NOW + 8 * 3600);
        s.last_seen = t(NOW - 600);
        let v = st.save(&s, &HeaderMap::new(), t(NOW)).unwrap();
        assert!(v[0].to_str().unwrap().contains("Max-Age=3000;"));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(CookieSettings::new("", true, None).is_err());
        assert!(CookieSettings::new("a;b", true, None).is_err());
        assert!(CookieSettings::new("a=b", true, None).is_err());
        assert!(CookieSettings::new("ok", true, Some("a.com; HttpOnly")).is_err());
        assert!(CookieSettings::new("ok", true, Some("")).is_err());
        assert!(CookieSettings::new("ok", true, Some("a.com.")).is_err());
    }

    #[test]
    fn tampered_value_is_no_session() {
        let st = store();
        let set = st
            .save(&full_session(t(NOW)), &HeaderMap::new(), t(NOW))
            .unwrap();
        let pair = cookie_header(&set)[COOKIE].to_str().unwrap().to_string();
        let (name, value) = pair.split_once('=').unwrap();
        let bytes = value.as_bytes();
        for i in 0..bytes.len() {
            let mut t2 = bytes.to_vec();
            t2[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let h = headers(&format!("{name}={}", String::from_utf8(t2).unwrap()));
            assert!(st.load(&h, t(NOW)).is_none(), "flip at {i}");
        }
        // Truncations.
        for n in [0, 1, 10, value.len() / 2, value.len() - 1] {
            let h = headers(&format!("{name}={}", &value[..n]));
            assert!(st.load(&h, t(NOW)).is_none());
        }
    }

    #[test]
    fn wrong_name_is_no_session() {
        let st = store();
        let set = st
            .save(&full_session(t(NOW)), &HeaderMap::new(), t(NOW))
            .unwrap();
        let pair = cookie_header(&set)[COOKIE].to_str().unwrap().to_string();
        let (_, value) = pair.split_once('=').unwrap();
        // Same secret, other cookie name: AAD differs.
        let other = CookieStore::new(
            Arc::new(CookieSettings::new("_other", true, None).unwrap()),
            &[secret(1)],
            8 * HOUR,
            HOUR,
        )
        .unwrap();
        assert!(other
            .load(&headers(&format!("__Host-_other={value}")), t(NOW))
            .is_none());
        // Unprefixed name is not read when the prefixed one is configured.
        assert!(st
            .load(&headers(&format!("_portcullis={value}")), t(NOW))
            .is_none());
    }

    #[test]
    fn rotation_old_secret_kept_then_removed() {
        let old = store_with(&[secret(1)], true, None);
        let s = full_session(t(NOW));
        let h = cookie_header(&old.save(&s, &HeaderMap::new(), t(NOW)).unwrap());
        let rotated = store_with(&[secret(2), secret(1)], true, None);
        assert!(
            rotated.load(&h, t(NOW)).is_some(),
            "rotated-in: old cookies still open"
        );
        let new_h = cookie_header(&rotated.save(&s, &HeaderMap::new(), t(NOW)).unwrap());
        assert!(old.load(&new_h, t(NOW)).is_none(), "first secret encrypts");
        let only_new = store_with(&[secret(2)], true, None);
        assert!(only_new.load(&h, t(NOW)).is_none(), "rotated-out secret");
        assert!(only_new.load(&new_h, t(NOW)).is_some());
    }

    #[test]
    fn lifetime_and_idle_timeout() {
        let st = store();
        let s = full_session(t(NOW));
        let h = cookie_header(&st.save(&s, &HeaderMap::new(), t(NOW)).unwrap());
        assert!(st.load(&h, t(NOW + 3599)).is_some());
        assert!(
            st.load(&h, t(NOW + 3600)).is_none(),
            "idle for the idle timeout"
        );

        // Touched regularly, the session lives until its lifetime, then not a second more.
        let mut now = NOW;
        let mut h = h;
        let mut saves = 0;
        loop {
            now += 900; // a request every 15 min
            let Some(o) = st.load(&h, t(now)) else {
                break;
            };
            let mut s = (*o.session).clone();
            if st.touch(&mut s, t(now)) {
                h = cookie_header(&st.save(&s, &h, t(now)).unwrap());
                saves += 1;
            }
        }
        assert!(
            now > NOW + 8 * 3600 - 900 && now <= NOW + 8 * 3600,
            "{}",
            now - NOW
        );
        assert!(saves > 0);

        // A saved session past its lifetime cannot be re-issued.
        let mut old = full_session(t(NOW));
        old.expires_at = t(NOW + 10);
        assert!(matches!(
            st.save(&old, &HeaderMap::new(), t(NOW + 10)),
            Err(SessionError::Ended)
        ));
    }

    #[test]
    fn touch_only_after_a_tenth_of_the_idle_timeout() {
        let st = store();
        let mut s = full_session(t(NOW));
        assert!(!st.touch(&mut s, t(NOW + 359)));
        assert_eq!(s.last_seen, t(NOW));
        assert!(st.touch(&mut s, t(NOW + 360)));
        assert_eq!(s.last_seen, t(NOW + 360));
    }

    #[test]
    fn large_session_is_chunked_and_joined() {
        let st = store();
        let s = big_session(t(NOW));
        let set = st.save(&s, &HeaderMap::new(), t(NOW)).unwrap();
        assert!(set.len() >= 2, "{} cookies", set.len());
        for (i, v) in set.iter().enumerate() {
            let v = v.to_str().unwrap();
            assert!(v.starts_with(&format!("__Host-_portcullis_{i}=")));
            assert!(v.split(';').next().unwrap().len() <= 4096);
        }
        let h = cookie_header(&set);
        assert_same(&st.load(&h, t(NOW)).unwrap().session, &s);

        // Browsers may send cookies in any order.
        let mut pairs: Vec<&str> = h[COOKIE].to_str().unwrap().split("; ").collect();
        pairs.reverse();
        assert!(st.load(&headers(&pairs.join("; ")), t(NOW)).is_some());

        let all: Vec<String> = pairs.iter().map(|p| p.to_string()).collect();
        // Missing chunk (each one in turn).
        for skip in 0..all.len() {
            let rest: Vec<&str> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| p.as_str())
                .collect();
            assert!(
                st.load(&headers(&rest.join("; ")), t(NOW)).is_none(),
                "missing {skip}"
            );
        }
        // Extra chunk, gap, duplicate, swapped values.
        let n = all.len();
        let extra = format!("{}; __Host-_portcullis_{n}=AAAA", all.join("; "));
        assert!(st.load(&headers(&extra), t(NOW)).is_none());
        let dup = format!("{}; __Host-_portcullis_0=AAAA", all.join("; "));
        assert!(st.load(&headers(&dup), t(NOW)).is_none());
        let gap = format!("{}; __Host-_portcullis_{}=AAAA", all.join("; "), n + 1);
        assert!(st.load(&headers(&gap), t(NOW)).is_none());
        let lz = format!("{}; __Host-_portcullis_00=AAAA", all.join("; "));
        assert!(st.load(&headers(&lz), t(NOW)).is_none());
        let values: Vec<(&str, &str)> = all.iter().map(|p| p.split_once('=').unwrap()).collect();
        let swapped: Vec<String> = values
            .iter()
            .map(|(name, _)| {
                let idx: usize = name.rsplit('_').next().unwrap().parse().unwrap();
                let other = values
                    .iter()
                    .find(|(n2, _)| n2.ends_with(&format!("_{}", (idx + 1) % n)))
                    .unwrap()
                    .1;
                format!("{name}={other}")
            })
            .collect();
        assert!(st.load(&headers(&swapped.join("; ")), t(NOW)).is_none());
    }

    #[test]
    fn too_large_session_is_an_error() {
        let st = store();
        let mut s = full_session(t(NOW));
        s.groups = (0..2000)
            .map(|i| format!("g{i:06}-{}", "x".repeat(10)))
            .collect();
        assert!(matches!(
            st.save(&s, &HeaderMap::new(), t(NOW)),
            Err(SessionError::TooLarge { .. })
        ));
    }

    #[test]
    fn save_expires_stale_chunks_and_forms() {
        let st = store();
        let big = cookie_header(
            &st.save(&big_session(t(NOW)), &HeaderMap::new(), t(NOW))
                .unwrap(),
        );
        let n_chunks = big[COOKIE].to_str().unwrap().split("; ").count();
        // Shrinking to an unchunked cookie expires every chunk.
        let set = st.save(&full_session(t(NOW)), &big, t(NOW)).unwrap();
        let deletions: Vec<&str> = set
            .iter()
            .map(|v| v.to_str().unwrap())
            .filter(|v| v.contains("Max-Age=0"))
            .collect();
        assert_eq!(deletions.len(), n_chunks);
        assert!(deletions
            .iter()
            .all(|d| d.starts_with("__Host-_portcullis_")
                && d.contains("; Path=/; Secure; HttpOnly")));
        // Growing to chunks expires the unchunked name.
        let small = cookie_header(
            &st.save(&full_session(t(NOW)), &HeaderMap::new(), t(NOW))
                .unwrap(),
        );
        let set = st.save(&big_session(t(NOW)), &small, t(NOW)).unwrap();
        assert!(set.iter().any(|v| v
            .to_str()
            .unwrap()
            .starts_with("__Host-_portcullis=; Max-Age=0")));
    }

    #[test]
    fn clear_expires_everything_sent() {
        let st = store_with(&[secret(1)], true, Some("example.com"));
        let big = cookie_header(
            &st.save(&big_session(t(NOW)), &HeaderMap::new(), t(NOW))
                .unwrap(),
        );
        let mut h = big.clone();
        h.append(
            COOKIE,
            HeaderValue::from_static("other=1; __Secure-_portcullis_9=x"),
        );
        let set = st.clear(&h);
        let names: Vec<&str> = set
            .iter()
            .map(|v| v.to_str().unwrap().split('=').next().unwrap())
            .collect();
        let n_chunks = big[COOKIE].to_str().unwrap().split("; ").count();
        assert_eq!(names.len(), 1 + n_chunks + 1, "{names:?}");
        assert!(names.contains(&"__Secure-_portcullis"));
        assert!(names.contains(&"__Secure-_portcullis_9"));
        assert!(!names.contains(&"other"));
        for v in &set {
            let v = v.to_str().unwrap();
            assert!(
                v.contains("Max-Age=0") && v.contains("Domain=example.com") && v.contains("Secure")
            );
        }
        // Nothing sent: still expires the unchunked name.
        assert_eq!(st.clear(&HeaderMap::new()).len(), 1);
    }

    #[test]
    fn duplicate_names_try_each_value() {
        let st = store();
        let h = cookie_header(
            &st.save(&full_session(t(NOW)), &HeaderMap::new(), t(NOW))
                .unwrap(),
        );
        let good = h[COOKIE].to_str().unwrap();
        let both = headers(&format!("__Host-_portcullis=garbage; {good}"));
        assert!(st.load(&both, t(NOW)).is_some());
    }

    #[test]
    fn odd_cookie_headers_never_panic() {
        let st = store();
        for c in [
            "",
            ";",
            ";;;",
            "=",
            "__Host-_portcullis",
            "__Host-_portcullis=",
            "__Host-_portcullis==",
            "__Host-_portcullis_0=",
            "__Host-_portcullis_99999999999999999999=a",
            "__Host-_portcullis_=a",
            " __Host-_portcullis = AAAA ",
            "\t__Host-_portcullis=\u{7f}",
        ] {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(c) {
                h.insert(COOKIE, v);
            }
            assert!(st.load(&h, t(NOW)).is_none(), "{c:?}");
            let _ = st.clear(&h);
        }
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_bytes(b"__Host-_portcullis=\xff\xfe").unwrap(),
        );
        assert!(st.load(&h, t(NOW)).is_none());
    }

    #[test]
    fn request_cookie_parsing() {
        let mut h = headers("a=1;b = 2 ;  c=x=y; novalue; d=");
        h.append(COOKIE, HeaderValue::from_static("e=5"));
        let got: Vec<(String, String)> = request_cookies(&h)
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect();
        let want = [
            ("a", "1"),
            ("b", "2"),
            ("c", "x=y"),
            ("", "novalue"),
            ("d", ""),
            ("e", "5"),
        ];
        assert_eq!(
            got,
            want.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn sizes_of_typical_sessions() {
        // Informational: how large sealed sessions are (printed with --nocapture).
        let st = store();
        for (label, s) in [
            ("full", full_session(t(NOW))),
            ("200 groups", big_session(t(NOW))),
        ] {
            let (v, _) = st.seal(&s, t(NOW)).unwrap();
            let mut raw = Vec::new();
            wire::write(&s, &mut raw).unwrap();
            println!(
                "{label}: serialized {} bytes, sealed cookie {} chars",
                raw.len(),
                v.len()
            );
        }
    }
}
