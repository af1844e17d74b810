//! The one `Identity` type: made by `token/` and `session/`, judged by `policy/`,
//! written into upstream headers by `auth/`.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// Who the request is, as established by a validated token or session.
///
/// Kept compact: a hundred thousand of these live in the token cache (≈ 200 bytes each
/// for a typical access token). `sub`, `email`, `preferred_username` and `name` share one
/// allocation and are read through accessors; groups and scopes are shared lists.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// `iss`: with `sub` the only stable key for a user. Shared by all identities of an
    /// issuer.
    pub issuer: Arc<str>,
    /// `sub`, `email`, `preferred_username`, `name`, one after the other.
    text: Box<str>,
    /// End offsets in `text` of `sub`, `email` and `preferred_username`; `name` runs to the
    /// end. An empty part is an absent claim.
    ends: [u32; 3],
    /// `email_verified`; email rules in policy count only verified addresses.
    pub email_verified: bool,
    /// From the configured groups claim.
    ///
    /// A shared slice: the token validator interns identical lists, so a hundred thousand
    /// cached identities of a few dozen distinct group sets cost one pointer each.
    pub groups: Arc<[Arc<str>]>,
    /// From `scope` (space separated) / `scp` (array) or the configured scope claims.
    /// Shared and interned like `groups`.
    pub scopes: Arc<[Arc<str>]>,
    /// Only the claims that configuration refers to (`headers.claims`, `allow.claims`),
    /// rendered as strings: (claim name or dotted path, value).
    pub claims: Box<[(Arc<str>, Box<str>)]>,
    /// When the identity stops being valid (`exp`).
    pub expires_at: Option<SystemTime>,
    /// What the token's `cnf` claim (RFC 7800) binds it to: 0 nothing, 1 a DPoP key (its
    /// 43-character `jkt` ends `text`), 2 something not verified here, 3 a client
    /// certificate (its `x5t#S256` ends `text`), 4 both (`jkt` then `x5t#S256`). In a byte of padding:
    /// the identity stays as small as before (see [`Identity::binding`]).
    binding: u8,
    /// Its identity headers as last rendered (by `auth::identity_headers`), so that an
    /// identity served from a cache is rendered once per header configuration; with them
    /// its signed assertions, signed once per route audience and generation.
    pub rendered: RenderCache,
}

/// What a token's `cnf` claim (RFC 7800 §3.1) binds it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding<'a> {
    /// RFC 9449 §6.1 `cnf.jkt`: the base64url SHA-256 thumbprint (RFC 7638) of the DPoP key.
    Dpop(&'a str),
    /// RFC 8705 §3.1 `cnf.x5t#S256`: the base64url SHA-256 of the client certificate (DER).
    Certificate(&'a str),
    /// Both: the request needs the DPoP proof and the client certificate.
    Both { jkt: &'a str, x5t: &'a str },
    /// Another confirmation method or a malformed `cnf`: never accepted.
    Unsupported,
}

/// A SHA-256 thumbprint is 43 base64url characters.
const THUMBPRINT_LEN: usize = 43;

fn thumbprint(v: &serde_json::Value) -> Option<&str> {
    v.as_str().filter(|t| {
        t.len() == THUMBPRINT_LEN
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

impl<'a> Binding<'a> {
    /// The binding a `cnf` claim value states: `jkt`, `x5t#S256` or both, and nothing
    /// else (a member not verified here makes the whole `cnf` unsupported).
    pub fn from_cnf(cnf: &serde_json::Value) -> Binding<'_> {
        let Some(o) = cnf.as_object() else {
            return Binding::Unsupported;
        };
        let (mut jkt, mut x5t) = (None, None);
        for (k, v) in o {
            match (k.as_str(), thumbprint(v)) {
                ("jkt", Some(t)) => jkt = Some(t),
                ("x5t#S256", Some(t)) => x5t = Some(t),
                _ => return Binding::Unsupported,
            }
        }
        match (jkt, x5t) {
            (Some(jkt), None) => Binding::Dpop(jkt),
            (None, Some(x5t)) => Binding::Certificate(x5t),
            (Some(jkt), Some(x5t)) => Binding::Both { jkt, x5t },
            (None, None) => Binding::Unsupported,
        }
    }

    /// The DPoP key's thumbprint the token is bound to.
    pub fn jkt(&self) -> Option<&'a str> {
        match *self {
            Binding::Dpop(j) | Binding::Both { jkt: j, .. } => Some(j),
            _ => None,
        }
    }

    /// The client certificate's thumbprint the token is bound to.
    pub fn x5t(&self) -> Option<&'a str> {
        match *self {
            Binding::Certificate(x) | Binding::Both { x5t: x, .. } => Some(x),
            _ => None,
        }
    }
}

/// Identity header values rendered for one header configuration (`config`): the headers,
/// or the name of the header whose value could not be sent; and the signed identity
/// assertions of this generation (`assertion::RouteAssertion`), once made.
pub struct Rendered {
    pub config: u64,
    pub headers: Result<Box<[(http::HeaderName, http::HeaderValue)]>, http::HeaderName>,
    pub assertions: arc_swap::ArcSwapOption<Vec<SignedAssertion>>,
}

/// A signed identity assertion kept for reuse: for the route assertion numbered `key`,
/// until `renew_after` (unix seconds).
#[derive(Clone)]
pub struct SignedAssertion {
    pub key: u64,
    pub value: http::HeaderValue,
    pub renew_after: u64,
}

/// An identity's last rendering. Identities are shared read-only (in an `Arc`) once
/// built; a clone starts empty, so changing a clone never reuses a stale rendering.
#[derive(Default)]
pub struct RenderCache(arc_swap::ArcSwapOption<Rendered>);

impl RenderCache {
    /// The rendering for header configuration `config`, if it is the one kept.
    pub fn get(&self, config: u64) -> Option<Arc<Rendered>> {
        self.0.load_full().filter(|r| r.config == config)
    }

    pub fn set(&self, r: Arc<Rendered>) {
        self.0.store(Some(r));
    }
}

impl Clone for RenderCache {
    fn clone(&self) -> Self {
        RenderCache::default()
    }
}

/// A cache: never part of what an identity is.
impl PartialEq for RenderCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RenderCache {}

/// An address with exactly one `@`, a non-empty local part and domain, and no spaces or
/// control characters: the only kind of `email` an identity keeps.
pub fn is_well_formed_email(s: &str) -> bool {
    let mut parts = s.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) => {
            !local.is_empty()
                && !domain.is_empty()
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        _ => false,
    }
}

fn offset(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl Identity {
    /// An identity with no groups, scopes, claims or expiry (set those fields after).
    /// An `email` that is not well-formed is dropped; empty strings count as absent.
    pub fn new(
        issuer: Arc<str>,
        subject: &str,
        email: Option<&str>,
        preferred_username: Option<&str>,
        name: Option<&str>,
    ) -> Self {
        let email = email.filter(|e| is_well_formed_email(e)).unwrap_or("");
        let username = preferred_username.unwrap_or("");
        let name = name.unwrap_or("");
        let mut text =
            String::with_capacity(subject.len() + email.len() + username.len() + name.len());
        text.push_str(subject);
        let e0 = offset(text.len());
        text.push_str(email);
        let e1 = offset(text.len());
        text.push_str(username);
        let e2 = offset(text.len());
        text.push_str(name);
        let mut ends = [e0, e1, e2];
        if text.len() > u32::MAX as usize {
            // Not reachable with the 16 KiB token / 1 MiB response caps: keep `sub` only
            // (and `part` reads with `get`, so no offset can panic).
            text.truncate(subject.len());
            ends = [offset(text.len()); 3];
        }
        Self {
            issuer,
            text: text.into_boxed_str(),
            ends,
            email_verified: false,
            groups: Arc::from(Vec::new()),
            scopes: Arc::from(Vec::new()),
            claims: Box::new([]),
            expires_at: None,
            binding: 0,
            rendered: RenderCache::default(),
        }
    }

    /// The `jkt` / `x5t#S256` kept at the end of `text` (SHA-256 thumbprints, base64url).
    const JKT_LEN: usize = THUMBPRINT_LEN;

    /// How many bytes of thumbprints end `text`.
    fn suffix_len(&self) -> usize {
        match self.binding {
            1 | 3 => Self::JKT_LEN,
            4 => 2 * Self::JKT_LEN,
            _ => 0,
        }
    }

    /// The key or certificate the token is bound to (its `cnf` claim), if any: such a
    /// token is accepted only with a proof of that key (RFC 9449) or over a connection
    /// with that certificate (RFC 8705).
    pub fn binding(&self) -> Option<Binding<'_>> {
        // The n-th thumbprint from the end.
        let tail = |n: usize| {
            let end = self.text.len().saturating_sub((n - 1) * Self::JKT_LEN);
            self.text
                .get(end.saturating_sub(Self::JKT_LEN)..end)
                .unwrap_or("")
        };
        match self.binding {
            0 => None,
            1 => Some(Binding::Dpop(tail(1))),
            3 => Some(Binding::Certificate(tail(1))),
            4 => Some(Binding::Both {
                jkt: tail(2),
                x5t: tail(1),
            }),
            _ => Some(Binding::Unsupported),
        }
    }

    /// Records the token's binding (once, when the identity is built).
    pub fn set_binding(&mut self, b: Option<Binding<'_>>) {
        let keep = self.text.len() - self.suffix_len();
        let mut t = String::with_capacity(keep + 2 * Self::JKT_LEN);
        t.push_str(&self.text[..keep]);
        let ok = |x: &str| x.len() == Self::JKT_LEN;
        self.binding = match b {
            None => 0,
            Some(Binding::Dpop(jkt)) if ok(jkt) => {
                t.push_str(jkt);
                1
            }
            Some(Binding::Certificate(x5t)) if ok(x5t) => {
                t.push_str(x5t);
                3
            }
            Some(Binding::Both { jkt, x5t }) if ok(jkt) && ok(x5t) => {
                t.push_str(jkt);
                t.push_str(x5t);
                4
            }
            Some(_) => 2,
        };
        self.text = t.into_boxed_str();
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = if i == 3 {
            self.text.len() - self.suffix_len()
        } else {
            self.ends[i] as usize
        };
        self.text.get(start..end).unwrap_or("")
    }

    fn optional(&self, i: usize) -> Option<&str> {
        Some(self.part(i)).filter(|s| !s.is_empty())
    }

    /// `sub`
    pub fn subject(&self) -> &str {
        self.part(0)
    }

    /// `email`, only kept when well-formed (exactly one `@`); verified or not.
    pub fn email(&self) -> Option<&str> {
        self.optional(1)
    }

    pub fn preferred_username(&self) -> Option<&str> {
        self.optional(2)
    }

    pub fn name(&self) -> Option<&str> {
        self.optional(3)
    }

    /// A verified email address, if any; what email policy rules may use.
    pub fn verified_email(&self) -> Option<&str> {
        if self.email_verified {
            self.email()
        } else {
            None
        }
    }

    /// Whether `group` is one of the identity's groups (exact, case-sensitive).
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| &**g == group)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }

    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| &**v)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject())
            .field("email", &self.email())
            .field("email_verified", &self.email_verified)
            .field("preferred_username", &self.preferred_username())
            .field("name", &self.name())
            .field("groups", &self.groups)
            .field("scopes", &self.scopes)
            .field("claims", &self.claims)
            .field("expires_at", &self.expires_at)
            .field("binding", &self.binding())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_parts_read_back() {
        let id = Identity::new(
            Arc::from("https://i/"),
            "auth0|abc",
            Some("ann@example.com"),
            None,
            Some("Ann Ä"),
        );
        assert_eq!(id.subject(), "auth0|abc");
        assert_eq!(id.email(), Some("ann@example.com"));
        assert_eq!(id.preferred_username(), None);
        assert_eq!(id.name(), Some("Ann Ä"));
        assert_eq!(id.verified_email(), None);
        let dbg = format!("{id:?}");
        assert!(dbg.contains("subject: \"auth0|abc\""), "{dbg}");
    }

    #[test]
    fn malformed_email_is_dropped() {
        for bad in ["", "a", "a@@b", "a@b@c", "@b", "a@", "a b@c", "a@b\r\n"] {
            assert!(!is_well_formed_email(bad), "{bad:?}");
            let id = Identity::new(Arc::from("i"), "s", Some(bad), Some("u"), None);
            assert_eq!(id.email(), None);
            assert_eq!(id.preferred_username(), Some("u"));
        }
        assert!(is_well_formed_email("a.b+c@example.com"));
    }

    #[test]
    fn a_binding_leaves_the_other_parts_alone() {
        let jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
        let mut id = Identity::new("i".into(), "sub", Some("a@b.c"), Some("u"), Some("Name"));
        assert_eq!(id.binding(), None);
        id.set_binding(Some(Binding::Dpop(jkt)));
        assert_eq!(id.binding(), Some(Binding::Dpop(jkt)));
        assert_eq!(
            (id.subject(), id.email(), id.preferred_username(), id.name()),
            ("sub", Some("a@b.c"), Some("u"), Some("Name"))
        );
        id.set_binding(Some(Binding::Unsupported));
        assert_eq!(id.binding(), Some(Binding::Unsupported));
        assert_eq!(id.name(), Some("Name"));
        // A jkt of another length is no SHA-256 thumbprint: unsupported, never matched.
        id.set_binding(Some(Binding::Dpop("short")));
        assert_eq!(id.binding(), Some(Binding::Unsupported));
        let mut none = Identity::new("i".into(), "sub", None, None, None);
        none.set_binding(Some(Binding::Dpop(jkt)));
        assert_eq!(none.name(), None);
        assert_eq!(none.binding(), Some(Binding::Dpop(jkt)));
    }

    #[test]
    fn certificate_and_double_bindings_read_back() {
        let jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
        let x5t = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2";
        let mut id = Identity::new("i".into(), "sub", Some("a@b.c"), Some("u"), Some("Name"));
        id.set_binding(Some(Binding::Certificate(x5t)));
        assert_eq!(id.binding(), Some(Binding::Certificate(x5t)));
        assert_eq!(id.name(), Some("Name"));
        id.set_binding(Some(Binding::Both { jkt, x5t }));
        let b = id.binding().unwrap();
        assert_eq!((b.jkt(), b.x5t()), (Some(jkt), Some(x5t)));
        assert_eq!(id.name(), Some("Name"));
        id.set_binding(None);
        assert_eq!((id.binding(), id.name()), (None, Some("Name")));
    }

    #[test]
    fn cnf_members_decide_the_binding() {
        let jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
        let x5t = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2";
        assert_eq!(
            Binding::from_cnf(&serde_json::json!({ "jkt": jkt })),
            Binding::Dpop(jkt)
        );
        assert_eq!(
            Binding::from_cnf(&serde_json::json!({ "x5t#S256": x5t })),
            Binding::Certificate(x5t)
        );
        assert_eq!(
            Binding::from_cnf(&serde_json::json!({ "x5t#S256": x5t, "jkt": jkt })),
            Binding::Both { jkt, x5t }
        );
        // Anything not verified here, or malformed, is never accepted.
        for cnf in [
            serde_json::json!({}),
            serde_json::json!({ "jwk": { "kty": "EC" } }),
            serde_json::json!({ "x5t#S256": x5t, "kid": "k" }),
            serde_json::json!({ "x5t#S256": "short" }),
            serde_json::json!({ "x5t#S256": format!("{}+", &x5t[..42]) }),
            serde_json::json!({ "jkt": 1 }),
            serde_json::json!("jkt"),
        ] {
            assert_eq!(Binding::from_cnf(&cnf), Binding::Unsupported, "{cnf}");
        }
    }

    #[test]
    fn stays_small() {
        assert!(std::mem::size_of::<Identity>() <= 120);
    }
}
