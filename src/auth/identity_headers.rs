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
/// `extra` lists ASCII bytes to encode too (`,` inside a list item).
pub fn encode_value(v: &str, extra: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(v.len());
    for &b in v.as_bytes() {
        match b {
            0..=0x1f | 0x7f => return None,
            b'%' => out.push_str("%25"),
            0x80.. => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
            _ if extra.contains(&b) => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
            _ => out.push(b as char),
        }
    }
    Some(out)
}

fn set(
    h: &mut HeaderMap,
    name: &Option<HeaderName>,
    value: Option<&str>,
) -> Result<(), UnsafeValue> {
    let (Some(name), Some(value)) = (name, value) else {
        return Ok(());
    };
    let enc = encode_value(value, &[]).ok_or_else(|| UnsafeValue {
        header: name.clone(),
    })?;
    let hv = HeaderValue::from_str(&enc).map_err(|_| UnsafeValue {
        header: name.clone(),
    })?;
    h.insert(name.clone(), hv);
    Ok(())
}

fn join(items: &[std::sync::Arc<str>]) -> Option<String> {
    let mut out = String::new();
    for (i, g) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&encode_value(g, b",")?);
    }
    Some(out)
}

fn set_list(
    h: &mut HeaderMap,
    name: &Option<HeaderName>,
    items: &[std::sync::Arc<str>],
) -> Result<(), UnsafeValue> {
    let Some(name) = name else { return Ok(()) };
    if items.is_empty() {
        return Ok(());
    }
    let joined = join(items).ok_or_else(|| UnsafeValue {
        header: name.clone(),
    })?;
    let hv = HeaderValue::from_str(&joined).map_err(|_| UnsafeValue {
        header: name.clone(),
    })?;
    h.insert(name.clone(), hv);
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
    set_list(h, &cfg.groups, &id.groups)?;
    if let Some(name) = &cfg.scopes {
        // Scopes are joined with a space, as in the `scope` claim (RFC 6749 §3.3).
        if !id.scopes.is_empty() {
            let mut s = String::new();
            for (i, sc) in id.scopes.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                s.push_str(&encode_value(sc, b" ").ok_or_else(|| UnsafeValue {
                    header: name.clone(),
                })?);
            }
            let hv = HeaderValue::from_str(&s).map_err(|_| UnsafeValue {
                header: name.clone(),
            })?;
            h.insert(name.clone(), hv);
        }
    }
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
