//! Login-transaction cookies: what `/oauth2/start` must remember until `/oauth2/callback`
//! (`state`, `nonce`, PKCE verifier, `rd`), sealed with its own purpose key.
//!
//! # Scheme
//! - One cookie per login in progress, named `<cookie_name>_tx_<h>` where `<h>` is the first
//!   8 hex digits of SHA-256(state), with the same `__Host-` prefix rule as the session cookie
//!   (always host-only: the callback is on `server.public_url`'s host). Several tabs can log
//!   in at once, each finding its own cookie by the `state` the provider sends back.
//! - Sealed with the [`TRANSACTION`](super::seal::TRANSACTION) key and the logical cookie
//!   name as AAD: it can never be read as a session cookie, nor a session cookie as one.
//! - `Max-Age` and the sealed expiry are [`TX_MAX_AGE`] (10 minutes).
//! - At most [`MAX_TRANSACTIONS`] (5) such cookies: when a 6th login starts, the oldest (by
//!   `created_at`), and any that no longer open, are expired in the same response, so a loop
//!   of `/oauth2/start` cannot grow the `Cookie` header past the server's limits.
//! - [`TransactionCookies::take`] finds the cookie for a `state`, checks the state inside it
//!   (constant time), and returns the `Set-Cookie` that deletes it. The *caller* must send
//!   that deletion (one-time use). A browser (or attacker) that replays the old cookie with
//!   the same callback URL is stopped by the provider, which accepts an authorization code
//!   only once (RFC 6749 §4.1.2, RFC 9700 §4.5), and by the PKCE verifier bound to it.

use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::cookie::{request_cookies, CookieSettings};
use super::seal::{self, from_unix, random, unix, Sealer};
use super::SessionError;
use crate::config::{Secret, SessionConfig};

/// Lifetime of a login transaction.
pub const TX_MAX_AGE: Duration = Duration::from_secs(600);
/// Most login-transaction cookies a browser holds at once.
pub const MAX_TRANSACTIONS: usize = 5;
/// Longest `state` accepted at the callback.
const MAX_STATE_LEN: usize = 512;

/// One login in progress.
#[derive(Clone)]
pub struct LoginTransaction {
    /// The `state` parameter (RFC 6749 §10.12: CSRF protection of the callback).
    pub state: Secret<String>,
    /// The OIDC `nonce` (OIDC Core 3.1.2.1), checked in the ID token.
    pub nonce: Secret<String>,
    /// The PKCE `code_verifier` (RFC 7636 §4.1).
    pub pkce_verifier: Secret<String>,
    /// Where to go after login; already validated by `oidc::redirect::validate_redirect`.
    pub rd: String,
    pub created_at: SystemTime,
}

impl std::fmt::Debug for LoginTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginTransaction")
            .field("state", &self.state)
            .field("nonce", &self.nonce)
            .field("pkce_verifier", &self.pkce_verifier)
            .field("rd", &self.rd)
            .field("created_at", &self.created_at)
            .finish()
    }
}

fn random_token() -> Result<String, SessionError> {
    Ok(URL_SAFE_NO_PAD.encode(random::<32>()?))
}

impl LoginTransaction {
    /// A new transaction with fresh 256-bit random `state`, `nonce` and PKCE verifier
    /// (43 base64url characters: RFC 7636 §4.1 asks for 43-128 unreserved characters).
    pub fn new(rd: impl Into<String>, now: SystemTime) -> Result<LoginTransaction, SessionError> {
        Ok(LoginTransaction {
            state: Secret::new(random_token()?),
            nonce: Secret::new(random_token()?),
            pkce_verifier: Secret::new(random_token()?),
            rd: rd.into(),
            created_at: now,
        })
    }

    /// `code_challenge` for `code_challenge_method=S256`:
    /// BASE64URL(SHA256(ASCII(code_verifier))) (RFC 7636 §4.2).
    pub fn pkce_challenge(&self) -> String {
        let d = digest::digest(&digest::SHA256, self.pkce_verifier.expose().as_bytes());
        URL_SAFE_NO_PAD.encode(d.as_ref())
    }
}

#[derive(Serialize)]
struct TxRef<'a> {
    s: &'a str,
    n: &'a str,
    v: &'a str,
    r: &'a str,
    c: u64,
}

#[derive(Deserialize)]
struct TxOwned {
    s: String,
    n: String,
    v: String,
    r: String,
    c: u64,
}

/// A transaction taken at the callback, with the `Set-Cookie` that deletes its cookie
/// (send it on every answer of the callback, success or error).
#[derive(Debug)]
pub struct Taken {
    pub tx: LoginTransaction,
    pub delete: HeaderValue,
}

/// Reads and writes login-transaction cookies.
pub struct TransactionCookies {
    settings: CookieSettings,
    sealer: Sealer,
}

impl std::fmt::Debug for TransactionCookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionCookies")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TransactionCookies {
    /// Uses the session cookie's name and `Secure` setting, always host-only.
    pub fn new(
        session: &CookieSettings,
        secrets: &[Secret<[u8; 32]>],
    ) -> Result<TransactionCookies, SessionError> {
        Ok(TransactionCookies {
            settings: session.host_only(),
            sealer: Sealer::new(secrets, seal::TRANSACTION)?,
        })
    }

    pub fn from_config(
        cfg: &SessionConfig,
        public_url: &url::Url,
    ) -> Result<TransactionCookies, SessionError> {
        Self::new(&CookieSettings::from_config(cfg, public_url)?, &cfg.secrets)
    }

    /// Logical cookie name for a state: `<name>_tx_<8 hex of SHA-256(state)>`.
    pub fn cookie_name(&self, state: &str) -> String {
        let d = digest::digest(&digest::SHA256, state.as_bytes());
        let mut s = String::with_capacity(self.settings.name().len() + 12);
        s.push_str(self.settings.name());
        s.push_str("_tx_");
        for b in &d.as_ref()[..4] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn wire_base(&self) -> String {
        let mut b = self.settings.wire_name(self.settings.name());
        b.push_str("_tx_");
        b
    }

    fn open(&self, logical: &str, value: &[u8], now: SystemTime) -> Option<LoginTransaction> {
        let opened = self.sealer.open(logical, value, unix(now))?;
        let t: TxOwned = serde_json::from_slice(opened.payload()).ok()?;
        Some(LoginTransaction {
            state: Secret::new(t.s),
            nonce: Secret::new(t.n),
            pkce_verifier: Secret::new(t.v),
            rd: t.r,
            created_at: from_unix(t.c),
        })
    }

    /// The `Set-Cookie` values for `/oauth2/start`: the new transaction's cookie, and the
    /// expiry of the oldest ones (and of any that no longer open) so that at most
    /// [`MAX_TRANSACTIONS`] remain.
    pub fn begin(
        &self,
        tx: &LoginTransaction,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        let logical = self.cookie_name(tx.state.expose());
        let wire = self.settings.wire_name(&logical);
        let payload = serde_json::to_vec(&TxRef {
            s: tx.state.expose(),
            n: tx.nonce.expose(),
            v: tx.pkce_verifier.expose(),
            r: &tx.rd,
            c: unix(tx.created_at),
        })
        .map_err(SessionError::Encode)?;
        let issued = unix(now);
        let exp = issued + TX_MAX_AGE.as_secs();
        let sealed = self.sealer.seal(&logical, &payload, issued, exp)?;

        // Existing transaction cookies: (wire name, created_at if it still opens).
        let base = self.wire_base();
        let prefix_len = self.settings.prefix().len();
        let mut existing: Vec<(&[u8], Option<SystemTime>)> = Vec::new();
        for (name, value) in request_cookies(request) {
            if !name.starts_with(base.as_bytes()) || name == wire.as_bytes() {
                continue;
            }
            let created = std::str::from_utf8(&name[prefix_len..])
                .ok()
                .and_then(|logical| self.open(logical, value, now))
                .map(|t| t.created_at);
            existing.push((name, created));
        }
        // Newest first; those that do not open sort last.
        existing.sort_by_key(|e| std::cmp::Reverse(e.1));
        let mut keep: Vec<&[u8]> = Vec::new();
        let mut out = Vec::new();
        for (name, created) in &existing {
            if created.is_some() && keep.len() < MAX_TRANSACTIONS - 1 && !keep.contains(name) {
                keep.push(name);
            }
        }
        let mut deleted: Vec<&[u8]> = Vec::new();
        for (name, _) in &existing {
            if !keep.contains(name) && !deleted.contains(name) {
                deleted.push(name);
                out.extend(self.settings.delete_cookie(name));
            }
        }
        out.push(
            self.settings
                .set_cookie(&wire, &sealed, TX_MAX_AGE.as_secs())?,
        );
        Ok(out)
    }

    /// The transaction for `state` (the callback's `state` parameter), if this browser holds
    /// an authentic, unexpired transaction cookie for exactly that state; with the
    /// `Set-Cookie` that deletes it. `None` → the callback answers 400 and sets no session.
    pub fn take(&self, request: &HeaderMap, state: &str, now: SystemTime) -> Option<Taken> {
        if state.is_empty() || state.len() > MAX_STATE_LEN {
            return None;
        }
        let logical = self.cookie_name(state);
        let wire = self.settings.wire_name(&logical);
        for (name, value) in request_cookies(request) {
            if name != wire.as_bytes() {
                continue;
            }
            let Some(tx) = self.open(&logical, value, now) else {
                continue;
            };
            // RFC 6749 §10.12: the state must be the one bound to this browser. Compared in
            // constant time (the cookie name only narrows the search).
            if tx.state.ct_eq(state.as_bytes()) {
                let delete = self.settings.delete_cookie(wire.as_bytes())?;
                return Some(Taken { tx, delete });
            }
        }
        tracing::debug!("no login transaction cookie for this state");
        None
    }

    /// `Set-Cookie` values expiring every login-transaction cookie the browser sent.
    pub fn expire_all(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        let base = self.wire_base();
        let mut seen: Vec<&[u8]> = Vec::new();
        let mut out = Vec::new();
        for (name, _) in request_cookies(request) {
            if name.starts_with(base.as_bytes()) && !seen.contains(&name) {
                seen.push(name);
                out.extend(self.settings.delete_cookie(name));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::header::COOKIE;

    use super::super::wire::tests::{full_session, t};
    use super::super::CookieStore;
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn secret(b: u8) -> Secret<[u8; 32]> {
        Secret::new([b; 32])
    }

    fn settings() -> CookieSettings {
        CookieSettings::new("_portcullis", true, Some("example.com")).unwrap()
    }

    fn txc() -> TransactionCookies {
        TransactionCookies::new(&settings(), &[secret(1)]).unwrap()
    }

    /// Applies Set-Cookie values to a browser's jar (name → value), like a browser would.
    fn apply(jar: &mut Vec<(String, String)>, set: &[HeaderValue]) {
        for v in set {
            let v = v.to_str().unwrap();
            let (pair, _) = v.split_once(';').unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            jar.retain(|(n, _)| n != name);
            if !v.contains("Max-Age=0") {
                jar.push((name.to_string(), value.to_string()));
            }
        }
    }

    fn header(jar: &[(String, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        if !jar.is_empty() {
            let s: Vec<String> = jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
            h.insert(COOKIE, HeaderValue::from_str(&s.join("; ")).unwrap());
        }
        h
    }

    #[test]
    fn begin_then_take_round_trip() {
        let c = txc();
        let tx = LoginTransaction::new("/after?x=1", t(NOW)).unwrap();
        let set = c.begin(&tx, &HeaderMap::new(), t(NOW)).unwrap();
        assert_eq!(set.len(), 1);
        let v = set[0].to_str().unwrap();
        // Host-only even when the session cookie has a Domain: __Host- prefix.
        assert!(v.starts_with("__Host-_portcullis_tx_"), "{v}");
        assert!(
            v.contains("Max-Age=600; Path=/; Secure; HttpOnly; SameSite=Lax"),
            "{v}"
        );
        assert!(!v.contains("Domain"));
        let mut jar = Vec::new();
        apply(&mut jar, &set);
        let taken = c
            .take(&header(&jar), tx.state.expose(), t(NOW + 30))
            .unwrap();
        assert_eq!(taken.tx.nonce.expose(), tx.nonce.expose());
        assert_eq!(taken.tx.pkce_verifier.expose(), tx.pkce_verifier.expose());
        assert_eq!(taken.tx.rd, "/after?x=1");
        assert_eq!(taken.tx.created_at, t(NOW));
        let d = taken.delete.to_str().unwrap();
        assert!(d.starts_with(&format!(
            "__Host-{}=; Max-Age=0",
            c.cookie_name(tx.state.expose())
        )));
        apply(&mut jar, &[taken.delete]);
        assert!(jar.is_empty());
        assert!(c
            .take(&header(&jar), tx.state.expose(), t(NOW + 31))
            .is_none());
    }

    #[test]
    fn wrong_state_missing_cookie_expired() {
        let c = txc();
        let tx = LoginTransaction::new("/", t(NOW)).unwrap();
        let mut jar = Vec::new();
        apply(&mut jar, &c.begin(&tx, &HeaderMap::new(), t(NOW)).unwrap());
        let h = header(&jar);
        assert!(c.take(&h, "other-state", t(NOW)).is_none());
        assert!(c.take(&h, "", t(NOW)).is_none());
        assert!(c.take(&h, &"x".repeat(10_000), t(NOW)).is_none());
        assert!(c
            .take(&HeaderMap::new(), tx.state.expose(), t(NOW))
            .is_none());
        assert!(c.take(&h, tx.state.expose(), t(NOW + 599)).is_some());
        assert!(
            c.take(&h, tx.state.expose(), t(NOW + 600)).is_none(),
            "expired"
        );
    }

    #[test]
    fn a_cookie_moved_to_another_states_name_is_refused() {
        let c = txc();
        let a = LoginTransaction::new("/a", t(NOW)).unwrap();
        let b = LoginTransaction::new("/b", t(NOW)).unwrap();
        let mut jar = Vec::new();
        apply(&mut jar, &c.begin(&a, &HeaderMap::new(), t(NOW)).unwrap());
        // a's value under b's name: AAD (name) mismatch.
        let value = jar[0].1.clone();
        let h = header(&[(format!("__Host-{}", c.cookie_name(b.state.expose())), value)]);
        assert!(c.take(&h, b.state.expose(), t(NOW)).is_none());
    }

    #[test]
    fn transaction_and_session_cookies_do_not_mix() {
        let c = txc();
        let tx = LoginTransaction::new("/", t(NOW)).unwrap();
        let mut jar = Vec::new();
        apply(&mut jar, &c.begin(&tx, &HeaderMap::new(), t(NOW)).unwrap());
        // The transaction value presented as the session cookie: other purpose key and name.
        let store = CookieStore::new(
            Arc::new(CookieSettings::new("_portcullis", true, None).unwrap()),
            &[secret(1)],
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )
        .unwrap();
        let h = header(&[("__Host-_portcullis".into(), jar[0].1.clone())]);
        assert!(store.load(&h, t(NOW)).is_none());
        // And a session value presented as a transaction cookie.
        let set = store
            .save(&full_session(t(NOW)), &HeaderMap::new(), t(NOW))
            .unwrap();
        let sv = set[0]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_string();
        let h = header(&[(format!("__Host-{}", c.cookie_name(tx.state.expose())), sv)]);
        assert!(c.take(&h, tx.state.expose(), t(NOW)).is_none());
    }

    #[test]
    fn several_tabs_each_complete() {
        let c = txc();
        let mut jar = Vec::new();
        let txs: Vec<LoginTransaction> = (0..3)
            .map(|i| LoginTransaction::new(format!("/tab{i}"), t(NOW + i)).unwrap())
            .collect();
        for (i, tx) in txs.iter().enumerate() {
            let set = c.begin(tx, &header(&jar), t(NOW + i as u64)).unwrap();
            apply(&mut jar, &set);
        }
        assert_eq!(jar.len(), 3);
        for (i, tx) in txs.iter().enumerate().rev() {
            let taken = c
                .take(&header(&jar), tx.state.expose(), t(NOW + 10))
                .unwrap();
            assert_eq!(taken.tx.rd, format!("/tab{i}"));
            apply(&mut jar, &[taken.delete]);
        }
        assert!(jar.is_empty());
    }

    #[test]
    fn cap_evicts_the_oldest() {
        let c = txc();
        let mut jar = Vec::new();
        let mut txs = Vec::new();
        for i in 0..12u64 {
            let tx = LoginTransaction::new(format!("/{i}"), t(NOW + i)).unwrap();
            let set = c.begin(&tx, &header(&jar), t(NOW + i)).unwrap();
            apply(&mut jar, &set);
            assert!(
                jar.len() <= MAX_TRANSACTIONS,
                "{} cookies after {i}",
                jar.len()
            );
            txs.push(tx);
        }
        assert_eq!(jar.len(), MAX_TRANSACTIONS);
        // The 5 newest survive, the older ones are gone.
        let h = header(&jar);
        for (i, tx) in txs.iter().enumerate() {
            let ok = c.take(&h, tx.state.expose(), t(NOW + 20)).is_some();
            assert_eq!(ok, i >= 12 - MAX_TRANSACTIONS, "tx {i}");
        }
    }

    #[test]
    fn garbage_transaction_cookies_are_evicted() {
        let c = txc();
        let mut jar: Vec<(String, String)> = (0..7)
            .map(|i| {
                (
                    format!("__Host-_portcullis_tx_0000000{i}"),
                    "garbage".to_string(),
                )
            })
            .collect();
        jar.push(("unrelated".into(), "1".into()));
        let tx = LoginTransaction::new("/", t(NOW)).unwrap();
        let set = c.begin(&tx, &header(&jar), t(NOW)).unwrap();
        apply(&mut jar, &set);
        assert_eq!(jar.len(), 2, "{jar:?}");
        assert!(jar.iter().any(|(n, _)| n == "unrelated"));
        assert_eq!(c.expire_all(&header(&jar)).len(), 1);
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let tx = LoginTransaction {
            state: Secret::new("s".into()),
            nonce: Secret::new("n".into()),
            pkce_verifier: Secret::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into()),
            rd: "/".into(),
            created_at: t(NOW),
        };
        assert_eq!(
            tx.pkce_challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let fresh = LoginTransaction::new("/", t(NOW)).unwrap();
        assert_eq!(fresh.pkce_verifier.expose().len(), 43);
        assert_ne!(fresh.state.expose(), fresh.nonce.expose());
        assert!(!format!("{fresh:?}").contains(fresh.state.expose().as_str()));
    }
}
