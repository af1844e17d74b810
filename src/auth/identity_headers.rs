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

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::config::HeadersConfig;
use crate::identity::{Identity, Rendered};

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
fn value_of(bytes: Vec<u8>, name: &HeaderName) -> Result<HeaderValue, HeaderName> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)).map_err(|_| name.clone())
}

/// The identity header settings of one config generation, numbered so that an identity
/// can keep its rendering for them ([`crate::identity::RenderCache`]).
pub struct HeaderSettings {
    id: u64,
    pub cfg: HeadersConfig,
}

impl HeaderSettings {
    pub fn new(cfg: HeadersConfig) -> HeaderSettings {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        HeaderSettings {
            id: NEXT.fetch_add(1, Relaxed),
            cfg,
        }
    }
}

type Pairs = Vec<(HeaderName, HeaderValue)>;

fn set(out: &mut Pairs, name: &Option<HeaderName>, value: Option<&str>) -> Result<(), HeaderName> {
    let (Some(name), Some(value)) = (name, value) else {
        return Ok(());
    };
    let mut enc = Vec::with_capacity(value.len());
    if !encode_into(&mut enc, value, &[]) {
        return Err(name.clone());
    }
    out.push((name.clone(), value_of(enc, name)?));
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
    out: &mut Pairs,
    name: &Option<HeaderName>,
    items: &[std::sync::Arc<str>],
    sep: u8,
) -> Result<(), HeaderName> {
    let Some(name) = name else { return Ok(()) };
    if items.is_empty() {
        return Ok(());
    }
    let joined = join(items, sep).ok_or_else(|| name.clone())?;
    out.push((name.clone(), value_of(joined, name)?));
    Ok(())
}

/// The identity headers of `id` under `cfg`, in the order they are set.
fn render(
    cfg: &HeadersConfig,
    id: &Identity,
) -> Result<Box<[(HeaderName, HeaderValue)]>, HeaderName> {
    let mut out = Pairs::with_capacity(8);
    set(&mut out, &cfg.user, Some(id.subject()))?;
    set(&mut out, &cfg.email, id.email())?;
    set(&mut out, &cfg.preferred_username, id.preferred_username())?;
    set(&mut out, &cfg.name, id.name())?;
    set_list(&mut out, &cfg.groups, &id.groups, b',')?;
    // Scopes are joined with a space, as in the `scope` claim (RFC 6749 §3.3).
    set_list(&mut out, &cfg.scopes, &id.scopes, b' ')?;
    for (claim, header) in &cfg.claims {
        set(&mut out, &Some(header.clone()), id.claim(claim))?;
    }
    Ok(out.into_boxed_slice())
}

/// Writes the identity headers (rendered once per identity and header settings), then the
/// access token where configured: `headers.access_token`, and `Authorization` when
/// `pass_authorization` (else the client's `Authorization` is removed). On an unsafe
/// value nothing is half-written that matters: the caller denies the request.
/// Returns the identity's rendering (where its signed assertions are kept too).
pub fn apply(
    h: &mut HeaderMap,
    settings: &HeaderSettings,
    id: &Identity,
    access_token: Option<&str>,
    pass_authorization: bool,
) -> Result<Arc<Rendered>, UnsafeValue> {
    let rendered = match id.rendered.get(settings.id) {
        Some(r) => r,
        None => {
            let r = Arc::new(Rendered {
                config: settings.id,
                headers: render(&settings.cfg, id),
                assertions: Default::default(),
            });
            id.rendered.set(r.clone());
            r
        }
    };
    let list = rendered.headers.as_ref().map_err(|name| UnsafeValue {
        header: name.clone(),
    })?;
    h.reserve(list.len() + 1);
    for (name, value) in list.iter() {
        h.insert(name.clone(), value.clone());
    }
    let cfg = &settings.cfg;
    match access_token {
        Some(tok) => {
            if let Some(name) = &cfg.access_token {
                if let Ok(mut v) = HeaderValue::from_str(tok) {
                    v.set_sensitive(true);
                    h.insert(name.clone(), v);
                }
            }
            if pass_authorization {
                if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {tok}")) {
                    v.set_sensitive(true);
                    h.insert(AUTHORIZATION, v);
                }
            } else {
                h.remove(AUTHORIZATION);
            }
        }
        None => {
            if !pass_authorization {
                h.remove(AUTHORIZATION);
            }
        }
    }
    Ok(rendered)
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

    fn settings(user: &str) -> HeaderSettings {
        let mut cfg = crate::config::Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n[[route]]\npath = \"/\"\nupstream = \"a\"\nauth = \"public\"\n",
            std::path::Path::new("."),
        )
        .unwrap()
        .headers;
        cfg.user = Some(HeaderName::from_bytes(user.as_bytes()).unwrap());
        HeaderSettings::new(cfg)
    }

    #[test]
    fn rendered_once_per_identity_and_settings() {
        let mut id = Identity::new(Arc::from("i"), "alice", Some("a@example.com"), None, None);
        id.groups = Arc::from(vec![Arc::<str>::from("a,b"), Arc::from("c")]);
        let s1 = settings("x-user");
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        apply(&mut h, &s1, &id, None, false).unwrap();
        assert_eq!(h["x-user"], "alice");
        assert!(!h.contains_key(AUTHORIZATION));
        let first = id.rendered.get(s1.id).unwrap();
        apply(&mut HeaderMap::new(), &s1, &id, None, false).unwrap();
        assert!(Arc::ptr_eq(&first, &id.rendered.get(s1.id).unwrap()));
        // Other settings (a reload): rendered anew, with their names.
        let s2 = settings("x-who");
        let mut h = HeaderMap::new();
        apply(&mut h, &s2, &id, None, false).unwrap();
        assert_eq!(h["x-who"], "alice");
        assert!(!h.contains_key("x-user"));
        // A clone never carries the rendering along.
        assert!(id.clone().rendered.get(s2.id).is_none());
    }

    #[test]
    fn an_unsafe_value_refuses_every_time() {
        let id = Identity::new(Arc::from("i"), "evil\r\nx-admin: 1", None, None, None);
        let s = settings("x-user");
        for _ in 0..2 {
            let mut h = HeaderMap::new();
            let Err(e) = apply(&mut h, &s, &id, None, false) else {
                panic!("an unsafe value was sent");
            };
            assert_eq!(e.header, "x-user");
            assert!(!h.contains_key("x-user"));
        }
    }
}
