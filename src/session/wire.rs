//! The compact serialized form of a [`Session`] inside the seal (cookie store) or the Redis
//! entry. A small binary layout rather than JSON: on a 2 KB session, serde_json spent about
//! 22k instructions each way, more than AES-GCM and base64 together (measured with callgrind
//! on `benches/session.rs`); this layout is a few memcpys and UTF-8 checks.
//!
//! ```text
//! format   u8 = 3 (1 and 2 are still read: see below)
//! flags    u8: 1 email, 2 email_verified, 4 preferred_username, 8 name,
//!              16 refresh_token, 32 id_token, 64 access_expires_at, 128 sid
//! flags2   u8: 1 login_claims, 2 login_claims.azp, 4 login_claims.auth_time   (format ≥ 2)
//! created_at, last_seen, expires_at     u64 LE (Unix seconds)
//! id                                    16 bytes: the session id      (format 3)
//! access_expires_at                     u64 LE            (if flag 64)
//! auth_time                             u64 LE            (if flag2 4)
//! issuer, sub, access_token             str
//! email, preferred_username, name, refresh_token, id_token, sid   str (each if its flag)
//! azp                                   str               (if flag2 2)
//! groups, scopes                        varint count, then str each
//! aud                                   varint count, then str each   (if flag2 1)
//! claims                                varint count, then (str name, str value) each
//! str = varint byte length (LEB128, ≤ u32) + UTF-8 bytes; nothing may follow the claims.
//! ```
//!
//! Format 2 is format 3 without the session `id`: the sessions of the release before
//! revocation open with an id derived from what identifies them (issuer, `sub`, login
//! time: see [`derived_id`]), the same every time they are read, so that signing one out
//! revokes every copy of its cookie. Format 1 is format 2 without `flags2` and what it
//! announces (the release before the login claims were kept, OIDC Core 12.2): it opens
//! with `login_claims: None`. Sessions are always written in format 3, which older
//! releases read as no session (a browser whose cookie a not-yet-upgraded replica reads
//! logs in again). A change of layout must use a new format byte; an unknown one reads as
//! no session.

use super::seal::{from_unix, unix};
use super::{LoginClaims, Session, SessionError};
use crate::config::Secret;

const FORMAT: u8 = 3;
/// The layout before the session id: still read.
const FORMAT_2: u8 = 2;
/// The layout before `flags2`: still read.
const FORMAT_1: u8 = 1;
const F_EMAIL: u8 = 1;
const F_EMAIL_VERIFIED: u8 = 2;
const F_USERNAME: u8 = 4;
const F_NAME: u8 = 8;
const F_REFRESH: u8 = 16;
const F_ID_TOKEN: u8 = 32;
const F_ACCESS_EXP: u8 = 64;
const F_SID: u8 = 128;
const F2_LOGIN_CLAIMS: u8 = 1;
const F2_AZP: u8 = 2;
const F2_AUTH_TIME: u8 = 4;

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Appends the serialized session to `out`.
pub(crate) fn write(s: &Session, out: &mut Vec<u8>) -> Result<(), SessionError> {
    let mut flags = 0u8;
    let mut flag = |cond: bool, f: u8| {
        if cond {
            flags |= f;
        }
    };
    flag(s.email.is_some(), F_EMAIL);
    flag(s.email_verified, F_EMAIL_VERIFIED);
    flag(s.preferred_username.is_some(), F_USERNAME);
    flag(s.name.is_some(), F_NAME);
    flag(s.refresh_token.is_some(), F_REFRESH);
    flag(s.id_token.is_some(), F_ID_TOKEN);
    flag(s.access_expires_at.is_some(), F_ACCESS_EXP);
    flag(s.sid.is_some(), F_SID);
    let lc = s.login_claims.as_ref();
    let mut flags2 = 0u8;
    if let Some(lc) = lc {
        flags2 |= F2_LOGIN_CLAIMS;
        if lc.azp.is_some() {
            flags2 |= F2_AZP;
        }
        if lc.auth_time.is_some() {
            flags2 |= F2_AUTH_TIME;
        }
    }
    out.reserve(size_hint(s));
    out.push(FORMAT);
    out.push(flags);
    out.push(flags2);
    out.extend_from_slice(&unix(s.created_at).to_le_bytes());
    out.extend_from_slice(&unix(s.last_seen).to_le_bytes());
    out.extend_from_slice(&unix(s.expires_at).to_le_bytes());
    out.extend_from_slice(&s.id);
    if let Some(t) = s.access_expires_at {
        out.extend_from_slice(&unix(t).to_le_bytes());
    }
    if let Some(t) = lc.and_then(|l| l.auth_time) {
        out.extend_from_slice(&t.to_le_bytes());
    }
    put_str(out, &s.issuer);
    put_str(out, &s.sub);
    put_str(out, s.access_token.expose());
    for v in [&s.email, &s.preferred_username, &s.name]
        .into_iter()
        .flatten()
    {
        put_str(out, v);
    }
    for v in [&s.refresh_token, &s.id_token].into_iter().flatten() {
        put_str(out, v.expose());
    }
    if let Some(v) = &s.sid {
        put_str(out, v);
    }
    if let Some(v) = lc.and_then(|l| l.azp.as_ref()) {
        put_str(out, v);
    }
    put_varint(out, s.groups.len());
    for g in &s.groups {
        put_str(out, g);
    }
    put_varint(out, s.scopes.len());
    for g in &s.scopes {
        put_str(out, g);
    }
    if let Some(lc) = lc {
        put_varint(out, lc.aud.len());
        for a in &lc.aud {
            put_str(out, a);
        }
    }
    put_varint(out, s.claims.len());
    for (k, v) in &s.claims {
        put_str(out, k);
        put_str(out, v);
    }
    Ok(())
}

/// An upper bound of the serialized size, to size buffers.
pub(crate) fn size_hint(s: &Session) -> usize {
    let opt = |o: &Option<String>| o.as_ref().map_or(0, |v| v.len() + 5);
    let sec = |o: &Option<Secret<String>>| o.as_ref().map_or(0, |v| v.expose().len() + 5);
    let lc = s.login_claims.as_ref().map_or(0, |l| {
        8 + opt(&l.azp) + 5 + l.aud.iter().map(|a| a.len() + 5).sum::<usize>()
    });
    lc + 3
        + 32
        + 16
        + 15
        + 15
        + s.issuer.len()
        + s.sub.len()
        + s.access_token.expose().len()
        + opt(&s.email)
        + opt(&s.preferred_username)
        + opt(&s.name)
        + opt(&s.sid)
        + sec(&s.refresh_token)
        + sec(&s.id_token)
        + s.groups.iter().map(|g| g.len() + 5).sum::<usize>()
        + s.scopes.iter().map(|g| g.len() + 5).sum::<usize>()
        + s.claims
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum::<usize>()
}

/// A bounds-checked reader; every failure is `None`.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.b.split_first()?;
        self.b = rest;
        Some(v)
    }

    fn id(&mut self) -> Option<[u8; 16]> {
        let (head, rest) = self.b.split_at_checked(16)?;
        self.b = rest;
        head.try_into().ok()
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.b.split_at_checked(8)?;
        self.b = rest;
        Some(u64::from_le_bytes(head.try_into().ok()?))
    }

    fn varint(&mut self) -> Option<usize> {
        let mut v: u64 = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.u8()?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return usize::try_from(u32::try_from(v).ok()?).ok();
            }
        }
        None
    }

    fn str(&mut self) -> Option<String> {
        let n = self.varint()?;
        let (head, rest) = self.b.split_at_checked(n)?;
        self.b = rest;
        Some(std::str::from_utf8(head).ok()?.to_owned())
    }

    /// A count of items that each take at least one byte: never more than what remains.
    fn count(&mut self) -> Option<usize> {
        let n = self.varint()?;
        (n <= self.b.len()).then_some(n)
    }

    fn strs(&mut self) -> Option<Vec<String>> {
        let n = self.count()?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.str()?);
        }
        Some(v)
    }
}

/// Parses a serialized session; `None` when it is not one.
pub(crate) fn read(bytes: &[u8]) -> Option<Session> {
    let mut r = Reader { b: bytes };
    let format = r.u8()?;
    if ![FORMAT, FORMAT_2, FORMAT_1].contains(&format) {
        return None;
    }
    let flags = r.u8()?;
    let flags2 = if format == FORMAT_1 { 0 } else { r.u8()? };
    let has = |f: u8| flags & f != 0;
    let has2 = |f: u8| flags2 & f != 0;
    if flags2 & !(F2_LOGIN_CLAIMS | F2_AZP | F2_AUTH_TIME) != 0
        || (!has2(F2_LOGIN_CLAIMS) && flags2 != 0)
    {
        return None;
    }
    let created_at = r.u64()?;
    let last_seen = r.u64()?;
    let expires_at = r.u64()?;
    let id = if format == FORMAT {
        Some(r.id()?)
    } else {
        None
    };
    let access_expires_at = if has(F_ACCESS_EXP) {
        Some(r.u64()?)
    } else {
        None
    };
    let auth_time = if has2(F2_AUTH_TIME) {
        Some(r.u64()?)
    } else {
        None
    };
    let issuer = r.str()?;
    let sub = r.str()?;
    let access_token = r.str()?;
    let mut opt = |f: u8| -> Option<Option<String>> {
        if has(f) {
            Some(Some(r.str()?))
        } else {
            Some(None)
        }
    };
    let email = opt(F_EMAIL)?;
    let preferred_username = opt(F_USERNAME)?;
    let name = opt(F_NAME)?;
    let refresh_token = opt(F_REFRESH)?;
    let id_token = opt(F_ID_TOKEN)?;
    let sid = opt(F_SID)?;
    let azp = if has2(F2_AZP) { Some(r.str()?) } else { None };
    let groups = r.strs()?;
    let scopes = r.strs()?;
    let login_claims = if has2(F2_LOGIN_CLAIMS) {
        Some(LoginClaims {
            aud: r.strs()?,
            azp,
            auth_time,
        })
    } else {
        None
    };
    let n = r.count()?;
    let mut claims = Vec::with_capacity(n);
    for _ in 0..n {
        claims.push((r.str()?, r.str()?));
    }
    if !r.b.is_empty() {
        return None;
    }
    let id = id.unwrap_or_else(|| derived_id(&issuer, &sub, created_at));
    Some(Session {
        id,
        issuer,
        sub,
        email,
        email_verified: has(F_EMAIL_VERIFIED),
        preferred_username,
        name,
        groups,
        scopes,
        claims,
        access_token: Secret::new(access_token),
        refresh_token: refresh_token.map(Secret::new),
        id_token: id_token.map(Secret::new),
        access_expires_at: access_expires_at.map(from_unix),
        sid,
        login_claims,
        created_at: from_unix(created_at),
        last_seen: from_unix(last_seen),
        expires_at: from_unix(expires_at),
        ticket: None,
    })
}

/// The id of a session written before sessions had one (formats 1 and 2): a digest of its
/// issuer, `sub` and login time. Two sessions of one user that began in the same second
/// share it (signing one out ends both: fail closed).
pub(crate) fn derived_id(issuer: &str, sub: &str, created_at: u64) -> [u8; 16] {
    let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    d.update(b"portcullis derived session id v1");
    for part in [issuer.as_bytes(), sub.as_bytes()] {
        d.update(&(part.len() as u64).to_be_bytes());
        d.update(part);
    }
    d.update(&created_at.to_be_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&d.finish().as_ref()[..16]);
    id
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
        assert_eq!(x, y);
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
        s.login_claims = Some(LoginClaims {
            aud: vec!["portcullis".into()],
            azp: Some("portcullis".into()),
            auth_time: Some(1_699_999_000),
        });
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
        assert_eq!(buf.len(), 3 + 24 + 16 + 6 + 3);
        let back = read(&buf).unwrap();
        assert_same(&back, &m);
        assert!(back.email.is_none() && back.refresh_token.is_none() && back.groups.is_empty());

        // Long strings need multi-byte lengths.
        let mut l = full_session(now);
        l.groups = vec!["g".repeat(200), "h".repeat(20_000), String::new()];
        l.claims = vec![(String::new(), "ü".repeat(70))];
        let mut buf = Vec::new();
        write(&l, &mut buf).unwrap();
        assert_same(&read(&buf).unwrap(), &l);
    }

    #[test]
    fn malformed_input_is_refused() {
        let s = full_session(t(1_700_000_000));
        let mut buf = Vec::new();
        write(&s, &mut buf).unwrap();
        for n in 0..buf.len() {
            assert!(read(&buf[..n]).is_none(), "truncated at {n}");
        }
        let mut extra = buf.clone();
        extra.push(0);
        assert!(read(&extra).is_none(), "trailing byte");
        let mut fmt = buf.clone();
        fmt[0] = 4;
        assert!(read(&fmt).is_none(), "unknown format");
        let mut f2 = buf.clone();
        f2[2] = 8;
        assert!(read(&f2).is_none(), "unknown flags2 bit");
        // A count larger than the rest of the input, a non-UTF-8 string, an overlong varint.
        let m = Session::new(
            "i",
            "s",
            Secret::new("a".into()),
            t(0),
            Duration::from_secs(1),
        );
        let mut b = Vec::new();
        write(&m, &mut b).unwrap();
        let groups_at = b.len() - 3;
        let mut huge = b[..groups_at].to_vec();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0]);
        assert!(read(&huge).is_none());
        let mut bad = b.clone();
        let sub_at = 3 + 24 + 16 + 2 + 1; // "i" then len("s")
        bad[sub_at] = 0xff;
        assert!(read(&bad).is_none());
        let mut long = b[..groups_at].to_vec();
        long.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0, 0]);
        assert!(read(&long).is_none());
        assert!(read(b"").is_none());
        assert!(read(b"{\"i\":\"x\"}").is_none());
    }

    #[test]
    fn absurd_times_do_not_panic() {
        let mut b = vec![FORMAT, F_ACCESS_EXP, 0];
        for _ in 0..3 {
            b.extend_from_slice(&u64::MAX.to_le_bytes());
        }
        b.extend_from_slice(&[7; 16]);
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&[1, b'i', 1, b's', 1, b'a', 0, 0, 0]);
        let s = read(&b).unwrap();
        assert!(!s.is_live(t(1_700_000_000), Duration::MAX));
        let n = Session::new("i", "s", Secret::new("a".into()), t(5), Duration::MAX);
        assert!(!n.is_live(t(5), Duration::from_secs(1)));
    }

    /// The bytes of hex lines.
    fn unhex(lines: &[&str]) -> Vec<u8> {
        let hex = lines.concat();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `full_session(t(1_700_000_000))` without login claims, as the writer of format 1
    /// (the release before login claims were kept) wrote it: what a browser may still hold.
    const FORMAT_1_FULL_SESSION: [&str; 6] = [
        "01ff00f153650000000000f153650000000080615465000000002cf25365000000001d6874747073",
        "3a2f2f6578616d706c652e65752e61757468302e636f6d2f0c61757468307c6162633132330f6174",
        "2d7365637265742d76616c75650f616461406578616d706c652e636f6d036164611b416461202243",
        "6f756e7465737322204c6f76656c61636520e29c930f72742d7365637265742d76616c75650f6974",
        "2e7365637265742e76616c7565057369642d31020573746166660661646d696e7302066f70656e69",
        "6405656d61696c010974656e616e745f696404742d3432",
    ];

    #[test]
    fn format_1_sessions_still_open_without_login_claims() {
        let mut s = full_session(t(1_700_000_000));
        s.login_claims = None;
        s.id = derived_id(&s.issuer, &s.sub, 1_700_000_000);
        let old = unhex(&FORMAT_1_FULL_SESSION);
        let back = read(&old).expect("a format-1 session opens");
        assert!(back.login_claims.is_none());
        assert_same(&back, &s);
        // Written again, it is format 3 (flags2 and the id added).
        let mut new = Vec::new();
        write(&back, &mut new).unwrap();
        assert_eq!((new[0], new.len()), (FORMAT, old.len() + 1 + 16));
        // Format 1 has no flags2: its bytes are not read as one.
        for n in 0..old.len() {
            assert!(read(&old[..n]).is_none(), "truncated at {n}");
        }
    }

    /// `full_session(t(1_700_000_000))` as the writer of format 2 (the release before
    /// session ids) wrote it.
    const FORMAT_2_FULL_SESSION: [&str; 7] = [
        "02ff0700f153650000000000f153650000000080615465000000002cf253650000000018ed536500",
        "0000001d68747470733a2f2f6578616d706c652e65752e61757468302e636f6d2f0c61757468307c",
        "6162633132330f61742d7365637265742d76616c75650f616461406578616d706c652e636f6d0361",
        "64611b4164612022436f756e7465737322204c6f76656c61636520e29c930f72742d736563726574",
        "2d76616c75650f69742e7365637265742e76616c7565057369642d310a706f727463756c6c697302",
        "0573746166660661646d696e7302066f70656e696405656d61696c010a706f727463756c6c697301",
        "0974656e616e745f696404742d3432",
    ];

    #[test]
    fn format_2_sessions_open_with_a_stable_derived_id() {
        let old = unhex(&FORMAT_2_FULL_SESSION);
        let back = read(&old).expect("a format-2 session opens");
        let mut s = full_session(t(1_700_000_000));
        s.id = derived_id(&s.issuer, &s.sub, 1_700_000_000);
        assert_same(&back, &s);
        assert_eq!(read(&old).unwrap().id, back.id, "the same id at every read");
        // Another user, or another login time, another id.
        assert_ne!(derived_id(&s.issuer, "other", 1_700_000_000), s.id);
        assert_ne!(derived_id(&s.issuer, &s.sub, 1_700_000_001), s.id);
        // Written again, it is format 3 and keeps that id.
        let mut new = Vec::new();
        write(&back, &mut new).unwrap();
        assert_eq!((new[0], new.len()), (FORMAT, old.len() + 16));
        assert_eq!(read(&new).unwrap().id, s.id);
        for n in 0..old.len() {
            assert!(read(&old[..n]).is_none(), "truncated at {n}");
        }
    }

    #[test]
    fn new_sessions_get_distinct_random_ids() {
        let a = full_session(t(1_700_000_000));
        let b = full_session(t(1_700_000_000));
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, [0; 16]);
    }

    #[test]
    fn login_claims_round_trip_in_every_shape() {
        let now = t(1_700_000_000);
        for lc in [
            None,
            Some(LoginClaims {
                aud: vec!["c".into()],
                azp: None,
                auth_time: None,
            }),
            Some(LoginClaims {
                aud: vec!["c".into(), "https://api.example".into()],
                azp: Some("c".into()),
                auth_time: None,
            }),
            Some(LoginClaims {
                aud: vec![],
                azp: None,
                auth_time: Some(u64::MAX),
            }),
        ] {
            let mut s = full_session(now);
            s.login_claims = lc.clone();
            let mut buf = Vec::new();
            write(&s, &mut buf).unwrap();
            assert!(buf.len() <= size_hint(&s));
            let back = read(&buf).unwrap();
            assert_eq!(back.login_claims, lc);
            assert_same(&back, &s);
        }
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
