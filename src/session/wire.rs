//! The compact serialized form of a [`Session`] (inside the seal): JSON with one- and
//! two-letter keys, absent fields left out, times as Unix seconds. Unknown keys are ignored
//! so that a newer version's cookies still open in an older one during a rolling update.

use serde::{Deserialize, Serialize};

use super::seal::{from_unix, unix};
use super::{Session, SessionError};
use crate::config::Secret;

#[derive(Serialize)]
struct WireRef<'a> {
    i: &'a str,
    s: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<&'a str>,
    #[serde(skip_serializing_if = "is_false")]
    ev: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    u: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    g: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    sc: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    c: &'a [(String, String)],
    at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    it: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ae: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
    ca: u64,
    ls: u64,
    ex: u64,
}

#[derive(Deserialize)]
struct WireOwned {
    i: String,
    s: String,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    ev: bool,
    #[serde(default)]
    u: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    g: Vec<String>,
    #[serde(default)]
    sc: Vec<String>,
    #[serde(default)]
    c: Vec<(String, String)>,
    at: String,
    #[serde(default)]
    rt: Option<String>,
    #[serde(default)]
    it: Option<String>,
    #[serde(default)]
    ae: Option<u64>,
    #[serde(default)]
    sid: Option<String>,
    ca: u64,
    ls: u64,
    ex: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Appends the serialized session to `out`.
pub(crate) fn write(s: &Session, out: &mut Vec<u8>) -> Result<(), SessionError> {
    let w = WireRef {
        i: &s.issuer,
        s: &s.sub,
        e: s.email.as_deref(),
        ev: s.email_verified,
        u: s.preferred_username.as_deref(),
        n: s.name.as_deref(),
        g: &s.groups,
        sc: &s.scopes,
        c: &s.claims,
        at: s.access_token.expose(),
        rt: s.refresh_token.as_ref().map(|t| t.expose().as_str()),
        it: s.id_token.as_ref().map(|t| t.expose().as_str()),
        ae: s.access_expires_at.map(unix),
        sid: s.sid.as_deref(),
        ca: unix(s.created_at),
        ls: unix(s.last_seen),
        ex: unix(s.expires_at),
    };
    serde_json::to_writer(out, &w).map_err(SessionError::Encode)
}

/// A rough upper bound of the serialized size, to size buffers.
pub(crate) fn size_hint(s: &Session) -> usize {
    let opt = |o: &Option<String>| o.as_ref().map_or(0, |v| v.len() + 8);
    let sec = |o: &Option<Secret<String>>| o.as_ref().map_or(0, |v| v.expose().len() + 8);
    160 + s.issuer.len()
        + s.sub.len()
        + opt(&s.email)
        + opt(&s.preferred_username)
        + opt(&s.name)
        + opt(&s.sid)
        + s.groups.iter().map(|g| g.len() + 3).sum::<usize>()
        + s.scopes.iter().map(|g| g.len() + 3).sum::<usize>()
        + s.claims
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
        + s.access_token.expose().len()
        + sec(&s.refresh_token)
        + sec(&s.id_token)
}

/// Parses a serialized session; `None` when it is not one.
pub(crate) fn read(bytes: &[u8]) -> Option<Session> {
    let w: WireOwned = serde_json::from_slice(bytes).ok()?;
    Some(Session {
        issuer: w.i,
        sub: w.s,
        email: w.e,
        email_verified: w.ev,
        preferred_username: w.u,
        name: w.n,
        groups: w.g,
        scopes: w.sc,
        claims: w.c,
        access_token: Secret::new(w.at),
        refresh_token: w.rt.map(Secret::new),
        id_token: w.it.map(Secret::new),
        access_expires_at: w.ae.map(from_unix),
        sid: w.sid,
        created_at: from_unix(w.ca),
        last_seen: from_unix(w.ls),
        expires_at: from_unix(w.ex),
        ticket: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;

    pub(crate) fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    /// Field-by-field equality (Session has no PartialEq: tokens compare through `expose`).
    pub(crate) fn assert_same(a: &Session, b: &Session) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        write(a, &mut x).unwrap();
        write(b, &mut y).unwrap();
        assert_eq!(String::from_utf8(x).unwrap(), String::from_utf8(y).unwrap());
    }

    pub(crate) fn full_session(now: SystemTime) -> Session {
        let mut s = Session::new(
            "https://example.eu.auth0.com/",
            "auth0|abc123",
            Secret::new("at-secret-value".into()),
            now,
            Duration::from_secs(8 * 3600),
        );
        s.email = Some("ada@example.com".into());
        s.email_verified = true;
        s.preferred_username = Some("ada".into());
        s.name = Some("Ada \"Countess\" Lovelace ✓".into());
        s.groups = vec!["staff".into(), "admins".into()];
        s.scopes = vec!["openid".into(), "email".into()];
        s.claims = vec![("tenant_id".into(), "t-42".into())];
        s.refresh_token = Some(Secret::new("rt-secret-value".into()));
        s.id_token = Some(Secret::new("it.secret.value".into()));
        s.access_expires_at = Some(now + Duration::from_secs(300));
        s.sid = Some("sid-1".into());
        s
    }

    #[test]
    fn round_trip_full_and_minimal() {
        let now = t(1_700_000_000);
        let s = full_session(now);
        let mut buf = Vec::new();
        write(&s, &mut buf).unwrap();
        assert!(buf.len() <= size_hint(&s));
        assert_same(&read(&buf).unwrap(), &s);

        let m = Session::new(
            "i",
            "s",
            Secret::new("a".into()),
            now,
            Duration::from_secs(1),
        );
        let mut buf = Vec::new();
        write(&m, &mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            r#"{"i":"i","s":"s","at":"a","ca":1700000000,"ls":1700000000,"ex":1700000001}"#
        );
        assert_same(&read(&buf).unwrap(), &m);
    }

    #[test]
    fn unknown_keys_are_ignored_and_garbage_refused() {
        assert!(read(br#"{"i":"i","s":"s","at":"a","ca":1,"ls":1,"ex":2,"zz":[1]}"#).is_some());
        assert!(read(br#"{"i":"i","s":"s"}"#).is_none());
        assert!(read(b"\xff\x00").is_none());
        assert!(read(b"").is_none());
    }

    #[test]
    fn absurd_times_do_not_panic() {
        let s = read(
            br#"{"i":"i","s":"s","at":"a","ca":18446744073709551615,"ls":18446744073709551615,"ex":18446744073709551615,"ae":18446744073709551615}"#,
        )
        .unwrap();
        assert!(!s.is_live(t(1_700_000_000), Duration::MAX));
        let n = Session::new("i", "s", Secret::new("a".into()), t(5), Duration::MAX);
        assert!(!n.is_live(t(5), Duration::from_secs(1)));
    }

    #[test]
    fn debug_never_shows_tokens() {
        let s = full_session(t(1_700_000_000));
        let d = format!("{s:?}");
        assert!(!d.contains("at-secret-value"));
        assert!(!d.contains("rt-secret-value"));
        assert!(!d.contains("it.secret.value"));
        assert!(d.contains("auth0|abc123"));
    }
}
