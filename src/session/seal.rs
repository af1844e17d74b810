//! Sealing: authenticated encryption of small values (session and login-transaction
//! cookies, Redis tickets) with keys derived from `session.secrets`.
//!
//! # Format (version 1)
//!
//! ```text
//! sealed    = base64url-nopad( version(1) || kid(1) || nonce(12) || ciphertext || tag(16) )
//! plaintext = issued_at(u64 BE, unix s) || expires_at(u64 BE, unix s) || payload
//! aad       = version || kid || logical cookie name
//! ```
//!
//! - AES-256-GCM (NIST SP 800-38D) with a fresh random 96-bit nonce per seal. Random nonces
//!   are safe for about 2^32 seals per key (SP 800-38D §8.3); rotate `session.secrets` long
//!   before that.
//! - One key per (secret, purpose), derived with HKDF-SHA256 (RFC 5869): IKM = the configured
//!   32-byte secret, a fixed salt, `info` = the purpose label ([`SESSION`], [`TRANSACTION`],
//!   [`TICKET`]). A value sealed for one purpose never opens under another.
//! - The cookie's logical name (without the `__Host-`/`__Secure-` prefix) is the AAD: a value
//!   cannot be replayed under another cookie name (a transaction cookie as a session cookie).
//! - `kid` is one byte derived by HKDF from the secret (not from the key), so opening tries
//!   the matching key first; on a kid collision between two secrets every matching key is
//!   tried. The first secret seals, all open (rotation).
//! - `issued_at`/`expires_at` are inside the authenticated plaintext: a copied value stops
//!   opening at its expiry, whatever `Max-Age` the browser was told.
//!
//! Opening never panics and never reports why it failed to the caller: any malformed,
//! tampered, truncated, foreign-key, wrong-name or expired input is `None`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::SessionError;
use crate::config::Secret;

/// HKDF `info` for session cookies (cookie store).
pub const SESSION: &[u8] = b"portcullis session v1";
/// HKDF `info` for login-transaction cookies (state, nonce, PKCE verifier).
pub const TRANSACTION: &[u8] = b"portcullis login transaction v1";
/// HKDF `info` for the Redis store's ticket cookie (session id + per-session key).
pub const TICKET: &[u8] = b"portcullis session ticket v1";

const KID_INFO: &[u8] = b"portcullis key id v1";
const SALT: &[u8] = b"portcullis hkdf salt v1";
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const TIMES_LEN: usize = 16;
/// version + kid.
const HEADER_LEN: usize = 2;
/// Bytes a sealed value adds to its payload, before base64.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TIMES_LEN + TAG_LEN;
/// An `issued_at` this far in the future is accepted (replicas' clocks differ a little).
const MAX_CLOCK_SKEW: u64 = 300;

/// Seconds since the Unix epoch (0 for earlier times).
pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The time `s` seconds after the epoch; the epoch itself if that is not representable
/// (an "expired long ago" value: fail closed, never panic).
pub(crate) fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH)
}

/// What a successful [`Sealer::open`] yields: the decrypted buffer and where the payload
/// lies in it (kept in place: no copy).
pub(crate) struct Opened {
    pub expires_at: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Opened {
    pub fn payload(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

struct DerivedKey {
    kid: u8,
    key: RandomizedNonceKey,
}

/// `hkdf::KeyType` for an output of `n` bytes.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf_expand(secret: &[u8; 32], info: &[u8], out: &mut [u8]) -> Result<(), SessionError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
    let info = [info];
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| SessionError::Crypto)
}

/// The keys of one purpose: the first seals, all open.
pub struct Sealer {
    keys: Vec<DerivedKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Sealer {
    /// Derives one key per secret for `purpose` (one of [`SESSION`], [`TRANSACTION`],
    /// [`TICKET`]). Needs at least one secret.
    pub fn new(secrets: &[Secret<[u8; 32]>], purpose: &[u8]) -> Result<Sealer, SessionError> {
        if secrets.is_empty() {
            return Err(SessionError::Config(
                "session.secrets: at least one secret is required",
            ));
        }
        let mut keys = Vec::with_capacity(secrets.len());
        for s in secrets {
            let mut k = [0u8; 32];
            hkdf_expand(s.expose(), purpose, &mut k)?;
            let mut kid = [0u8; 1];
            hkdf_expand(s.expose(), KID_INFO, &mut kid)?;
            let key =
                RandomizedNonceKey::new(&AES_256_GCM, &k).map_err(|_| SessionError::Crypto)?;
            keys.push(DerivedKey { kid: kid[0], key });
        }
        Ok(Sealer { keys })
    }

    /// Seals `payload` for the cookie logically named `name`, valid until `expires_at`.
    /// Returns the base64url (no padding) text.
    pub fn seal(
        &self,
        name: &str,
        payload: &[u8],
        issued_at: u64,
        expires_at: u64,
    ) -> Result<String, SessionError> {
        self.seal_with(name, issued_at, expires_at, payload.len(), |buf| {
            buf.extend_from_slice(payload);
            Ok(())
        })
    }

    /// Like [`Sealer::seal`], with the payload written by `write` straight into the buffer
    /// that is then encrypted in place (no copy).
    pub(crate) fn seal_with(
        &self,
        name: &str,
        issued_at: u64,
        expires_at: u64,
        size_hint: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), SessionError>,
    ) -> Result<String, SessionError> {
        let k = self.keys.first().ok_or(SessionError::Crypto)?;
        let mut buf = Vec::with_capacity(OVERHEAD + size_hint);
        buf.push(VERSION);
        buf.push(k.kid);
        buf.extend_from_slice(&[0u8; NONCE_LEN]);
        buf.extend_from_slice(&issued_at.to_be_bytes());
        buf.extend_from_slice(&expires_at.to_be_bytes());
        write(&mut buf)?;
        let (nonce, tag) = k
            .key
            .seal_in_place_separate_tag(
                Aad::from(aad(k.kid, name)),
                &mut buf[HEADER_LEN + NONCE_LEN..],
            )
            .map_err(|_| SessionError::Crypto)?;
        buf[HEADER_LEN..HEADER_LEN + NONCE_LEN].copy_from_slice(nonce.as_ref());
        buf.extend_from_slice(tag.as_ref());
        Ok(URL_SAFE_NO_PAD.encode(&buf))
    }

    /// Opens a value sealed by [`Sealer::seal`] for `name`; `None` unless it is authentic,
    /// sealed for this name and purpose by a configured secret, and not expired at `now`.
    pub(crate) fn open(&self, name: &str, sealed: &[u8], now: u64) -> Option<Opened> {
        // Bound the work an attacker can ask for before authentication.
        if sealed.len() > 64 * 1024 {
            return None;
        }
        let mut raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() < OVERHEAD || raw[0] != VERSION {
            return None;
        }
        let kid = raw[1];
        let nonce: [u8; NONCE_LEN] = raw[HEADER_LEN..HEADER_LEN + NONCE_LEN].try_into().ok()?;
        let aad = aad(kid, name);
        let body = HEADER_LEN + NONCE_LEN;
        let candidates = self.keys.iter().filter(|k| k.kid == kid).count();
        for (i, k) in self.keys.iter().filter(|k| k.kid == kid).enumerate() {
            let nonce = Nonce::assume_unique_for_key(nonce);
            if i + 1 == candidates {
                // The last (usually the only) key to try: open in place, no copy.
                let n = k
                    .key
                    .open_in_place(nonce, Aad::from(&aad), &mut raw[body..])
                    .ok()?
                    .len();
                return finish(raw, body, n, now);
            }
            // A failed open may scramble its buffer: earlier candidates work on a copy.
            let mut copy = raw[body..].to_vec();
            if let Ok(p) = k.key.open_in_place(nonce, Aad::from(&aad), &mut copy) {
                let n = p.len();
                return finish(copy, 0, n, now);
            }
        }
        None
    }
}

/// Checks the sealed times of a plaintext at `buf[at..at + len]`.
fn finish(buf: Vec<u8>, at: usize, len: usize, now: u64) -> Option<Opened> {
    let plain = buf.get(at..at + len)?;
    let issued_at = u64::from_be_bytes(plain.get(0..8)?.try_into().ok()?);
    let expires_at = u64::from_be_bytes(plain.get(8..16)?.try_into().ok()?);
    if now >= expires_at || issued_at > now.saturating_add(MAX_CLOCK_SKEW) {
        return None;
    }
    Some(Opened {
        expires_at,
        start: at + TIMES_LEN,
        end: at + len,
        buf,
    })
}

fn aad(kid: u8, name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(HEADER_LEN + name.len());
    a.push(VERSION);
    a.push(kid);
    a.extend_from_slice(name.as_bytes());
    a
}

/// A single AES-256-GCM key used directly (the Redis store's per-session key).
/// Format: `version(1) || nonce(12) || ciphertext || tag(16)`, raw bytes.
pub(crate) struct RawKey(RandomizedNonceKey);

impl RawKey {
    pub fn new(key: &[u8; 32]) -> Result<RawKey, SessionError> {
        RandomizedNonceKey::new(&AES_256_GCM, key)
            .map(RawKey)
            .map_err(|_| SessionError::Crypto)
    }

    pub fn seal(&self, aad: &[u8], mut plain: Vec<u8>) -> Result<Vec<u8>, SessionError> {
        let nonce = self
            .0
            .seal_in_place_append_tag(Aad::from(aad), &mut plain)
            .map_err(|_| SessionError::Crypto)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len());
        out.push(VERSION);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&plain);
        Ok(out)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().ok()?;
        let mut work = sealed[1 + NONCE_LEN..].to_vec();
        let n = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut work,
            )
            .ok()?
            .len();
        work.truncate(n);
        Some(work)
    }
}

/// `n` random bytes from the system CSPRNG.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], SessionError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| SessionError::Crypto)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret<[u8; 32]> {
        Secret::new([b; 32])
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn round_trip() {
        let s = Sealer::new(&[secret(1)], SESSION).unwrap();
        let v = s.seal("_p", b"hello", NOW, NOW + 60).unwrap();
        let o = s.open("_p", v.as_bytes(), NOW + 1).unwrap();
        assert_eq!(o.payload(), b"hello");
        assert_eq!(o.expires_at, NOW + 60);
        assert!(!v.contains('=') && !v.contains('+') && !v.contains('/'));
    }

    #[test]
    fn two_seals_differ() {
        let s = Sealer::new(&[secret(1)], SESSION).unwrap();
        let a = s.seal("_p", b"x", NOW, NOW + 60).unwrap();
        let b = s.seal("_p", b"x", NOW, NOW + 60).unwrap();
        assert_ne!(a, b, "fresh nonce every time");
    }

    #[test]
    fn every_flipped_character_is_refused() {
        let s = Sealer::new(&[secret(1)], SESSION).unwrap();
        let v = s.seal("_p", b"some payload", NOW, NOW + 60).unwrap();
        let bytes = v.as_bytes();
        for i in 0..bytes.len() {
            for repl in [b'A', b'z', b'-', b'_', b'0'] {
                if bytes[i] == repl {
                    continue;
                }
                let mut t = bytes.to_vec();
                t[i] = repl;
                assert!(s.open("_p", &t, NOW).is_none(), "flip at {i}");
            }
        }
    }

    #[test]
    fn truncated_and_extended_are_refused() {
        let s = Sealer::new(&[secret(1)], SESSION).unwrap();
        let v = s.seal("_p", b"some payload", NOW, NOW + 60).unwrap();
        for n in 0..v.len() {
            assert!(s.open("_p", &v.as_bytes()[..n], NOW).is_none(), "len {n}");
        }
        assert!(s.open("_p", format!("{v}A").as_bytes(), NOW).is_none());
        assert!(s.open("_p", format!("{v}AAAA").as_bytes(), NOW).is_none());
    }

    #[test]
    fn name_is_bound() {
        let s = Sealer::new(&[secret(1)], SESSION).unwrap();
        let v = s.seal("_p", b"x", NOW, NOW + 60).unwrap();
        assert!(s.open("_p_tx_1234", v.as_bytes(), NOW).is_none());
        assert!(s.open("_P", v.as_bytes(), NOW).is_none());
        assert!(s.open("", v.as_bytes(), NOW).is_none());
    }

    #[test]
    fn purpose_is_bound() {
        let session = Sealer::new(&[secret(1)], SESSION).unwrap();
        let tx = Sealer::new(&[secret(1)], TRANSACTION).unwrap();
        let v = tx.seal("_p", b"x", NOW, NOW + 60).unwrap();
        assert!(session.open("_p", v.as_bytes(), NOW).is_none());
        assert!(tx.open("_p", v.as_bytes(), NOW).is_some());
    }

    #[test]
    fn expiry_is_inside_the_seal() {
        let s = Sealer::new(&[secret(1)], SESSION).unwrap();
        let v = s.seal("_p", b"x", NOW, NOW + 60).unwrap();
        assert!(s.open("_p", v.as_bytes(), NOW + 59).is_some());
        assert!(s.open("_p", v.as_bytes(), NOW + 60).is_none());
        // Issued in the future beyond the allowed clock skew.
        assert!(s.open("_p", v.as_bytes(), NOW - MAX_CLOCK_SKEW).is_some());
        assert!(s
            .open("_p", v.as_bytes(), NOW - MAX_CLOCK_SKEW - 1)
            .is_none());
    }

    #[test]
    fn rotation() {
        let old = Sealer::new(&[secret(1)], SESSION).unwrap();
        let v = old.seal("_p", b"x", NOW, NOW + 60).unwrap();
        // New secret first, old still listed: old values open, new ones use the new key.
        let rotated = Sealer::new(&[secret(2), secret(1)], SESSION).unwrap();
        assert!(rotated.open("_p", v.as_bytes(), NOW).is_some());
        let w = rotated.seal("_p", b"y", NOW, NOW + 60).unwrap();
        assert!(old.open("_p", w.as_bytes(), NOW).is_none());
        // Old secret removed: old values no longer open.
        let only_new = Sealer::new(&[secret(2)], SESSION).unwrap();
        assert!(only_new.open("_p", v.as_bytes(), NOW).is_none());
        assert!(only_new.open("_p", w.as_bytes(), NOW).is_some());
    }

    #[test]
    fn kid_collision_still_opens() {
        // Find two secrets with the same kid byte; both keys must be tried.
        let kid = |b: u8| {
            let mut k = [0u8; 1];
            hkdf_expand(&[b; 32], KID_INFO, &mut k).unwrap();
            k[0]
        };
        let a = 1u8;
        let b = (2u8..=255).find(|&b| kid(b) == kid(a));
        if let Some(b) = b {
            let old = Sealer::new(&[secret(a)], SESSION).unwrap();
            let v = old.seal("_p", b"x", NOW, NOW + 60).unwrap();
            let both = Sealer::new(&[secret(b), secret(a)], SESSION).unwrap();
            assert!(both.open("_p", v.as_bytes(), NOW).is_some());
        }
    }

    #[test]
    fn garbage_is_refused() {
        let s = Sealer::new(&[secret(1)], SESSION).unwrap();
        for g in [
            &b""[..],
            b"=",
            b"AAAA",
            b"not base64!",
            &[0xff, 0xfe][..],
            &[b'A'; 200][..],
        ] {
            assert!(s.open("_p", g, NOW).is_none());
        }
    }

    #[test]
    fn raw_key_round_trip_and_aad() {
        let k = RawKey::new(&[7; 32]).unwrap();
        let c = k.seal(b"name", b"secret data".to_vec()).unwrap();
        assert_eq!(k.open(b"name", &c).unwrap(), b"secret data");
        assert!(k.open(b"other", &c).is_none());
        let mut t = c.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(k.open(b"name", &t).is_none());
        assert!(RawKey::new(&[8; 32]).unwrap().open(b"name", &c).is_none());
        assert!(k.open(b"name", &c[..10]).is_none());
    }
}
