//! Identity headers: written on the upstream request from a verified [`Identity`], after
//! the hygiene layer has removed every client-sent copy (CONVENTIONS §6).
//!
//! Encoding, as documented in the README:
//! - a value with a control character (CR, LF, NUL, any C0 or DEL) is refused: the
//!   request is denied (403) and logged, never split or forwarded;
//! - bytes outside printable ASCII (non-ASCII UTF-8) and `%` are percent-encoded
//!   (`José` → `Jos%C3%A9`); plain ASCII values are sent unchanged;
//! - groups and scopes are joined with `,`; inside one group name `,` is percent-encoded
//!   (`%2C`), so the list always splits back into the right names.

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::config::HeadersConfig;
use crate::identity::Identity;

/// A claim value that cannot be sent safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identity value for header {header} contains a control character")]
pub struct UnsafeValue {
    pub header: HeaderName,
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Percent-encodes what a header cannot carry plainly; refuses control characters.
/// `extra` lists ASCII bytes to encode too (`,` inside a list item). (The rules of
/// [`encode_into`], as a string, for the tests.)
#[cfg(test)]
fn encode_value(v: &str, extra: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(v.len());
    encode_into(&mut out, v, extra).then(|| String::from_utf8(out).ok())?
}

/// [`encode_value`] appending to `out`; `false` on a control character. Plain values
/// (the common case) are copied whole.
fn encode_into(out: &mut Vec<u8>, v: &str, extra: &[u8]) -> bool {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'%' && !extra.contains(&b);
    if v.bytes().all(plain) {
        out.extend_from_slice(v.as_bytes());
        return true;
    }
    for &b in v.as_bytes() {
        match b {
            0..=0x1f | 0x7f => return false,
            _ if plain(b) => out.push(b),
            _ => out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
        }
    }
    true
}

/// The header value of encoded bytes, without copying them again.
fn value_of(bytes: Vec<u8>, name: &HeaderName) -> Result<HeaderValue, UnsafeValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)).map_err(|_| UnsafeValue {
        header: name.clone(),
    })
}

fn set(
    h: &mut HeaderMap,
    name: &Option<HeaderName>,
    value: Option<&str>,
) -> Result<(), UnsafeValue> {
    let (Some(name), Some(value)) = (name, value) else {
        return Ok(());
    };
    let mut enc = Vec::with_capacity(value.len());
    if !encode_into(&mut enc, value, &[]) {
        return Err(UnsafeValue {
            header: name.clone(),
        });
    }
    h.insert(name.clone(), value_of(enc, name)?);
    Ok(())
}

/// `items` encoded and joined with `sep` (which each item then has encoded inside it).
fn join(items: &[std::sync::Arc<str>], sep: u8) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(items.iter().map(|g| g.len() + 1).sum());
    for (i, g) in items.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        if !encode_into(&mut out, g, &[sep]) {
            return None;
        }
    }
    Some(out)
}

fn set_list(
    h: &mut HeaderMap,
    name: &Option<HeaderName>,
    items: &[std::sync::Arc<str>],
    sep: u8,
) -> Result<(), UnsafeValue> {
    let Some(name) = name else { return Ok(()) };
    if items.is_empty() {
        return Ok(());
    }
    let joined = join(items, sep).ok_or_else(|| UnsafeValue {
        header: name.clone(),
    })?;
    h.insert(name.clone(), value_of(joined, name)?);
    Ok(())
}

/// Writes the identity headers. On an unsafe value nothing is half-written that matters:
/// the caller denies the request.
pub fn apply(
    h: &mut HeaderMap,
    cfg: &HeadersConfig,
    id: &Identity,
    access_token: Option<&str>,
) -> Result<(), UnsafeValue> {
    set(h, &cfg.user, Some(id.subject()))?;
    set(h, &cfg.email, id.email())?;
    set(h, &cfg.preferred_username, id.preferred_username())?;
    set(h, &cfg.name, id.name())?;
    set_list(h, &cfg.groups, &id.groups, b',')?;
    // Scopes are joined with a space, as in the `scope` claim (RFC 6749 §3.3).
    set_list(h, &cfg.scopes, &id.scopes, b' ')?;
    for (claim, header) in &cfg.claims {
        set(h, &Some(header.clone()), id.claim(claim))?;
    }
    match access_token {
        Some(tok) => {
            if let Some(name) = &cfg.access_token {
                if let Ok(v) = HeaderValue::from_str(tok) {
                    let mut v = v;
                    v.set_sensitive(true);
                    h.insert(name.clone(), v);
                }
            }
            if cfg.pass_authorization {
                if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {tok}")) {
                    v.set_sensitive(true);
                    h.insert(AUTHORIZATION, v);
                }
            } else {
                h.remove(AUTHORIZATION);
            }
        }
        None => {
            if !cfg.pass_authorization {
                h.remove(AUTHORIZATION);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_rules() {
        assert_eq!(
            encode_value("alice@example.com", &[]).as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(encode_value("José", &[]).as_deref(), Some("Jos%C3%A9"));
        assert_eq!(encode_value("100%", &[]).as_deref(), Some("100%25"));
        assert_eq!(encode_value("a,b", b",").as_deref(), Some("a%2Cb"));
        assert_eq!(encode_value("evil\r\nX-Admin: 1", &[]), None);
        assert_eq!(encode_value("nul\0", &[]), None);
        assert_eq!(encode_value("tab\t", &[]), None);
    }
}
