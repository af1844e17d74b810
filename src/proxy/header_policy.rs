//! Which client headers may reach an upstream (DESIGN §1 step 4; README "Header hygiene").
//! Names are compared normalized: lowercase, `_` as `-` (CGI, WSGI and PHP read
//! `X-Foo_Bar` as `X-Foo-Bar`).
//!
//! | family | from an untrusted peer | from `trusted_proxies` |
//! |---|---|---|
//! | the proxy's own identity headers (every preset and configured name) | dropped | dropped |
//! | path and method rewrites (`X-Original-URL`, `X-Envoy-Original-Path`, method overrides) | dropped | dropped |
//! | identity headers of other proxies (built-in list) and `[headers] strip` | dropped | dropped, unless named in `[headers] keep_from_trusted` |
//! | client-IP headers (`True-Client-IP`, `CF-Connecting-IP`, `X-Client-IP`, ...) | dropped | kept |
//! | W3C trace context (`traceparent`, `tracestate`) | dropped | kept (with tracing on, the proxy's own `traceparent` is sent) |
//! | forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`) | dropped, rebuilt | kept (`X-Forwarded-For` extended) |
//!
//! Underscore spellings of client-IP and forwarding headers are dropped even from trusted
//! proxies (they are ambiguous). `X-Forwarded-Client-Cert` belongs to the forwarding family.

use std::collections::HashMap;

use crate::config::{HeadersConfig, NamePattern};

/// Headers that rewrite the path or method a backend believes it serves (IIS, Symfony,
/// Spring, Envoy, Rails/Express method overrides, forward-auth): the upstream must see
/// only the path and method that were authorized (a GET with `X-HTTP-Method-Override:
/// DELETE` would otherwise dodge `method_scopes`). Never forwarded, whoever sent them.
const REWRITES: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "x-envoy-original-host",
    "x-envoy-original-method",
    "x-original-path",
    "x-original-host",
];

/// Identity headers of other proxies and auth gateways, which an app moved from behind
/// one of them may still trust.
const FOREIGN: &[&str] = &[
    // oauth2-proxy (beside the presets portcullis shares with it)
    "x-auth-request-access-token",
    "x-forwarded-access-token",
    "gap-auth",
    "gap-signature",
    // Authelia
    "remote-user",
    "remote-groups",
    "remote-name",
    "remote-email",
    // Google IAP
    "x-goog-iap-jwt-assertion",
    // Kong
    "x-authenticated-userid",
    "x-authenticated-scope",
    "x-authenticated-groups",
    "x-credential-identifier",
    "x-credential-username",
    // Envoy / Istio JWT filters
    "x-jwt-payload",
    "x-jwt-assertion",
    // Grafana auth proxy and generic names
    "x-webauth-user",
    "x-webauth-email",
    "x-webauth-name",
    "x-webauth-groups",
    "x-user",
    "x-user-id",
    "x-user-email",
    "x-username",
    "x-email",
    "x-groups",
    "x-roles",
    "x-remote-user",
    "x-remote-email",
    "x-remote-group",
    "x-remote-groups",
    "x-auth-user",
    "x-auth-email",
    "x-authenticated-user",
    "x-userinfo",
    "x-id-token",
    "x-access-token",
];

/// Prefixes of other proxies' identity header families.
const FOREIGN_PREFIXES: &[&str] = &[
    "x-pomerium-",           // Pomerium: X-Pomerium-Jwt-Assertion, X-Pomerium-Claim-*
    "x-vouch-",              // Vouch: X-Vouch-User, X-Vouch-Idp-Claims-*
    "oidc-",                 // mod_auth_openidc: OIDC_CLAIM_*, OIDC_access_token, OIDC_id_token*
    "cf-access-", // Cloudflare Access: Cf-Access-Authenticated-User-Email, -Jwt-Assertion
    "x-goog-authenticated-", // Google IAP: X-Goog-Authenticated-User-Email, -Id
    "x-amzn-oidc-", // AWS ALB: X-Amzn-Oidc-Data, -Identity, -Accesstoken
    "x-ms-client-principal", // Azure App Service: X-MS-CLIENT-PRINCIPAL, -NAME, -ID, -IDP
    "x-ms-token-", // Azure App Service: X-MS-TOKEN-*-ACCESS-TOKEN
    "x-consumer-", // Kong: X-Consumer-Id, -Username, -Custom-Id
];

/// Client-IP headers: believed by apps for allow-lists and audit, so only a trusted proxy
/// may send them.
const CLIENT_IP: &[&str] = &[
    "true-client-ip",
    "x-true-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "cf-pseudo-ipv4",
    "x-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-azure-clientip",
    "x-azure-socketip",
    "x-appengine-user-ip",
    "x-envoy-external-address",
];

/// W3C Trace Context: a client that is not a trusted proxy must not choose the trace (or
/// its sampling) the upstream joins (W3C Trace Context, "Security considerations":
/// denial of service by callers that set the sampled flag, information exposure).
const TRACE_CONTEXT: &[&str] = &["traceparent", "tracestate"];

/// What a header name is to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Dropped whoever sent it: the proxy's own identity headers, rewrite hints.
    Drop,
    /// Another proxy's identity header: dropped unless a trusted proxy sent it and
    /// `keep_from_trusted` names it.
    Foreign { keep: bool },
    /// Client-IP and forwarding headers: dropped unless a trusted proxy sent them.
    Peer,
}

/// FNV-1a: the names are fixed when the policy is built and only looked up per request
/// (nothing a client sends is ever inserted), so a keyed hash buys nothing here.
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FnvBuild = std::hash::BuildHasherDefault<Fnv>;

/// The policy of one config generation, built once.
#[derive(Debug, Clone, Default)]
pub struct HeaderPolicy {
    exact: HashMap<Box<str>, Class, FnvBuild>,
    /// Bit `n` set: some exact name has length `n` (capped at 63). Most request headers
    /// are ruled out by their length alone, before any hashing.
    lengths: u64,
    prefixes: Vec<(Box<str>, Class)>,
    /// Bit `b` set: some prefix starts with byte `b` (`b < 128`).
    prefix_starts: u128,
    /// `[headers] keep_from_trusted`.
    keep: Vec<NamePattern>,
}

impl HeaderPolicy {
    pub fn new(cfg: &HeadersConfig) -> HeaderPolicy {
        let mut p = HeaderPolicy {
            keep: cfg.keep_from_trusted.clone(),
            ..HeaderPolicy::default()
        };
        let keep = |n: &str| cfg.keep_from_trusted.iter().any(|k| k.matches(n));
        // Later inserts win: own names and rewrites are never kept, whatever else.
        for n in CLIENT_IP.iter().chain(TRACE_CONTEXT) {
            p.exact_name(n, Class::Peer);
        }
        for n in FOREIGN {
            p.exact_name(n, Class::Foreign { keep: keep(n) });
        }
        for pre in FOREIGN_PREFIXES {
            // Whether a name of the family is kept depends on the name: see `class`.
            p.prefix(pre, Class::Foreign { keep: false });
        }
        for NamePattern { name, prefix } in &cfg.strip_extra {
            if *prefix {
                p.prefix(name, Class::Foreign { keep: false });
            } else {
                p.exact_name(name, Class::Foreign { keep: keep(name) });
            }
        }
        for n in REWRITES {
            p.exact_name(n, Class::Drop);
        }
        for n in &cfg.strip {
            p.exact_name(n, Class::Drop);
        }
        p
    }

    fn exact_name(&mut self, n: &str, class: Class) {
        self.lengths |= 1 << n.len().min(63);
        self.exact.insert(n.into(), class);
    }

    fn prefix(&mut self, pre: &str, class: Class) {
        if let Some(b) = pre.bytes().next().filter(|b| *b < 128) {
            self.prefix_starts |= 1 << b;
        }
        self.prefixes.push((pre.into(), class));
    }

    /// The class of a normalized header name, if the policy has a word on it. A name of a
    /// prefix family is kept when a `keep_from_trusted` pattern (`keep`) names it.
    pub fn class(&self, n: &str) -> Option<Class> {
        if self.lengths & (1 << n.len().min(63)) != 0 {
            if let Some(c) = self.exact.get(n) {
                return Some(*c);
            }
        }
        let first = *n.as_bytes().first()?;
        if first < 128 && self.prefix_starts & (1 << first) != 0 {
            for (pre, class) in &self.prefixes {
                if n.starts_with(&**pre) {
                    return Some(match class {
                        Class::Foreign { keep: false }
                            if self.keep.iter().any(|k| k.matches(n)) =>
                        {
                            Class::Foreign { keep: true }
                        }
                        c => *c,
                    });
                }
            }
        }
        is_forwarding(n).then_some(Class::Peer)
    }
}

/// Is this a forwarding header (`n` normalized)?
fn is_forwarding(n: &str) -> bool {
    n.starts_with("x-forwarded-") || n == "forwarded" || n == "x-real-ip"
}

/// A headers config with these own names, `strip` and `keep_from_trusted` patterns.
#[cfg(test)]
pub(crate) fn test_config(
    own: &[&str],
    strip: &[(&str, bool)],
    keep: &[(&str, bool)],
) -> HeadersConfig {
    let pat = |v: &[(&str, bool)]| {
        v.iter()
            .map(|(n, p)| NamePattern {
                name: n.to_string(),
                prefix: *p,
            })
            .collect()
    };
    HeadersConfig {
        user: None,
        email: None,
        groups: None,
        preferred_username: None,
        name: None,
        scopes: None,
        access_token: None,
        pass_authorization: false,
        claims: Vec::new(),
        strip: own.iter().map(|s| s.to_string()).collect(),
        strip_extra: pat(strip),
        keep_from_trusted: pat(keep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_config as cfg;

    #[test]
    fn families() {
        let c = cfg(
            &["x-auth-request-user"],
            &[("x-legacy-user", false), ("x-acme-", true)],
            &[("x-consumer-", true), ("x-webauth-user", false)],
        );
        let p = HeaderPolicy::new(&c);
        let class = |n: &str| p.class(n);
        assert_eq!(class("x-auth-request-user"), Some(Class::Drop));
        assert_eq!(class("x-envoy-original-path"), Some(Class::Drop));
        assert_eq!(class("x-user"), Some(Class::Foreign { keep: false }));
        assert_eq!(
            class("oidc-claim-email"),
            Some(Class::Foreign { keep: false })
        );
        assert_eq!(
            class("x-pomerium-claim-groups"),
            Some(Class::Foreign { keep: false })
        );
        assert_eq!(
            class("x-consumer-username"),
            Some(Class::Foreign { keep: true })
        );
        assert_eq!(class("x-webauth-user"), Some(Class::Foreign { keep: true }));
        assert_eq!(
            class("x-webauth-email"),
            Some(Class::Foreign { keep: false })
        );
        assert_eq!(class("x-legacy-user"), Some(Class::Foreign { keep: false }));
        assert_eq!(class("x-acme-role"), Some(Class::Foreign { keep: false }));
        assert_eq!(class("true-client-ip"), Some(Class::Peer));
        assert_eq!(class("x-forwarded-client-cert"), Some(Class::Peer));
        assert_eq!(class("x-forwarded-for"), Some(Class::Peer));
        assert_eq!(class("accept"), None);
        assert_eq!(class("x-request-id"), None);
        assert_eq!(class("user-agent"), None);
    }
}
