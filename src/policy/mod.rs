//! Pure authorization decisions: (route policy, method, identity) → allow, insufficient
//! scope, or forbidden. No I/O, no clocks; DESIGN §1 step 3.

use http::{HeaderMap, Method};

use crate::identity::{is_well_formed_email, Identity};

/// What a route requires of an identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// All required, for every method.
    pub scopes: Vec<String>,
    /// Added to `scopes` for a request with this method (exact method match).
    pub method_scopes: Vec<(Method, Vec<String>)>,
    /// Who may pass; `None` lets any authenticated identity through.
    pub allow: Option<Allow>,
    /// A CORS preflight passes without identity.
    pub allow_preflight: bool,
}

/// Every kind that is given (non-empty) must pass; within a kind one listed value is
/// enough. The config loader refuses empty lists, so "empty" here means "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    /// Exact, case-sensitive group names.
    pub groups: Vec<String>,
    /// Whole addresses, ASCII case-insensitive; only a verified, well-formed email counts.
    pub emails: Vec<String>,
    /// The part after `@`, exactly (ASCII case-insensitive; no suffix matching); only a
    /// verified, well-formed email counts.
    pub email_domains: Vec<String>,
    /// (claim name or dotted path, accepted values): the claim's whole rendered value must
    /// equal one of the values (an array claim renders as `a,b` and is not split; use
    /// `groups` for membership tests).
    pub claims: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The identity lacks scopes (403 with `WWW-Authenticate: Bearer
    /// error="insufficient_scope", scope="..."`, RFC 6750 §3.1). `required` is every scope
    /// the request needs, space separated (what the client should ask for).
    InsufficientScope {
        required: String,
    },
    /// The identity fails the route's `allow` rules (403); `rule` is the kind that failed
    /// (`group`, `email`, `email_domain`, `claim`), for logs and metrics.
    Forbidden {
        rule: &'static str,
    },
}

/// The scopes a request with `method` needs: route `scopes` plus `method_scopes[method]`.
pub fn required_scopes<'a>(policy: &'a RoutePolicy, method: &Method) -> Vec<&'a str> {
    let mut out: Vec<&str> = policy.scopes.iter().map(String::as_str).collect();
    for (m, scopes) in &policy.method_scopes {
        if m == method {
            for s in scopes {
                if !out.contains(&s.as_str()) {
                    out.push(s);
                }
            }
        }
    }
    out
}

/// Judges `identity` for a request with `method` on a route with `policy`.
pub fn decide(policy: &RoutePolicy, method: &Method, identity: &Identity) -> Decision {
    let required = required_scopes(policy, method);
    // RFC 6749 §3.3: scopes are case-sensitive strings.
    if !required.iter().all(|s| identity.has_scope(s)) {
        return Decision::InsufficientScope {
            required: required.join(" "),
        };
    }
    match policy.allow.as_ref().and_then(|a| failed_rule(a, identity)) {
        Some(rule) => Decision::Forbidden { rule },
        None => Decision::Allow,
    }
}

/// The first kind of `allow` rule the identity fails, if any.
fn failed_rule(allow: &Allow, identity: &Identity) -> Option<&'static str> {
    if !allow.groups.is_empty() && !allow.groups.iter().any(|g| identity.in_group(g)) {
        return Some("group");
    }
    // Email rules only count a verified, well-formed address.
    let email = identity
        .verified_email()
        .filter(|e| is_well_formed_email(e));
    if !allow.emails.is_empty() {
        let Some(email) = email else {
            return Some("email");
        };
        if !allow.emails.iter().any(|e| e.eq_ignore_ascii_case(email)) {
            return Some("email");
        }
    }
    if !allow.email_domains.is_empty() {
        // Exactly one '@' (checked above): the domain is everything after it, compared
        // whole, so `evil-example.com` or `example.com.evil` never match `example.com`.
        let Some(domain) = email.and_then(|e| e.split_once('@')).map(|(_, d)| d) else {
            return Some("email_domain");
        };
        if !allow
            .email_domains
            .iter()
            .any(|d| d.trim_start_matches('@').eq_ignore_ascii_case(domain))
        {
            return Some("email_domain");
        }
    }
    for (name, values) in &allow.claims {
        let Some(v) = identity.claim(name) else {
            return Some("claim");
        };
        if !values.iter().any(|ok| ok == v) {
            return Some("claim");
        }
    }
    None
}

/// A CORS preflight (Fetch standard §3.2.2): `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Whether this request may pass the route without identity as a CORS preflight.
pub fn preflight_passes(policy: &RoutePolicy, method: &Method, headers: &HeaderMap) -> bool {
    policy.allow_preflight && is_preflight(method, headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn identity(scopes: &[&str], groups: &[&str], email: Option<&str>, verified: bool) -> Identity {
        let mut id = Identity::new(Arc::from("https://issuer/"), "user-1", email, None, None);
        id.email_verified = verified;
        id.groups = groups.iter().map(|g| Arc::from(*g)).collect();
        id.scopes = scopes.iter().map(|s| Arc::from(*s)).collect();
        id.claims = vec![
            (Arc::from("tenant_id"), Box::from("t-1")),
            (Arc::from("org.tags"), Box::from("a,b")),
        ]
        .into_boxed_slice();
        id
    }

    fn api_policy() -> RoutePolicy {
        RoutePolicy {
            scopes: strs(&["read:items"]),
            method_scopes: vec![
                (Method::POST, strs(&["write:items"])),
                (Method::DELETE, strs(&["admin"])),
            ],
            allow: None,
            allow_preflight: true,
        }
    }

    fn allow(f: impl FnOnce(&mut Allow)) -> RoutePolicy {
        let mut a = Allow::default();
        f(&mut a);
        RoutePolicy {
            allow: Some(a),
            ..RoutePolicy::default()
        }
    }

    #[test]
    fn decision_table() {
        let reader = identity(&["read:items"], &[], None, false);
        let writer = identity(&["read:items", "write:items"], &[], None, false);
        let staff = identity(&[], &["staff"], Some("Ann@Example.com"), true);
        let staff_unverified = identity(&[], &["staff"], Some("ann@example.com"), false);
        let evil_dash = identity(&[], &["staff"], Some("ann@evil-example.com"), true);
        let evil_suffix = identity(&[], &["staff"], Some("ann@example.com.evil"), true);
        let sub_domain = identity(&[], &["staff"], Some("ann@sub.example.com"), true);
        let two_at = identity(&[], &["staff"], Some("ann@evil.com@example.com"), true);
        let no_email = identity(&[], &["staff"], None, true);
        let case_scope = identity(&["READ:items"], &[], None, false);
        let other_group = identity(&[], &["other"], Some("a@example.com"), true);
        let cased_group = identity(&[], &["Staff"], None, false);
        let open = RoutePolicy::default();

        let domain = allow(|a| a.email_domains = strs(&["example.com"]));
        let groups_and_domain = allow(|a| {
            a.groups = strs(&["staff"]);
            a.email_domains = strs(&["example.com"]);
        });
        let emails = allow(|a| a.emails = strs(&["ann@example.com", "bob@example.com"]));
        let groups = allow(|a| a.groups = strs(&["admins", "staff"]));
        let claim = allow(|a| a.claims = vec![("tenant_id".into(), strs(&["t-1", "t-2"]))]);
        let wrong_claim = allow(|a| a.claims = vec![("tenant_id".into(), strs(&["t-9"]))]);
        let array_claim = allow(|a| a.claims = vec![("org.tags".into(), strs(&["a"]))]);
        let missing_claim = allow(|a| a.claims = vec![("nope".into(), strs(&["x"]))]);
        let api = api_policy();
        let insufficient = |r: &str| Decision::InsufficientScope {
            required: r.to_string(),
        };

        let cases: Vec<(&str, &RoutePolicy, Method, &Identity, Decision)> = vec![
            (
                "GET with read scope",
                &api,
                Method::GET,
                &reader,
                Decision::Allow,
            ),
            (
                "POST needs write",
                &api,
                Method::POST,
                &reader,
                insufficient("read:items write:items"),
            ),
            (
                "POST with write",
                &api,
                Method::POST,
                &writer,
                Decision::Allow,
            ),
            (
                "DELETE needs admin",
                &api,
                Method::DELETE,
                &writer,
                insufficient("read:items admin"),
            ),
            (
                "scopes are case-sensitive",
                &api,
                Method::GET,
                &case_scope,
                insufficient("read:items"),
            ),
            (
                "no scopes at all",
                &api,
                Method::PUT,
                &staff,
                insufficient("read:items"),
            ),
            (
                "verified domain",
                &domain,
                Method::GET,
                &staff,
                Decision::Allow,
            ),
            (
                "unverified email",
                &domain,
                Method::GET,
                &staff_unverified,
                Decision::Forbidden {
                    rule: "email_domain",
                },
            ),
            (
                "dash suffix trick",
                &domain,
                Method::GET,
                &evil_dash,
                Decision::Forbidden {
                    rule: "email_domain",
                },
            ),
            (
                "dot suffix trick",
                &domain,
                Method::GET,
                &evil_suffix,
                Decision::Forbidden {
                    rule: "email_domain",
                },
            ),
            (
                "subdomain is not the domain",
                &domain,
                Method::GET,
                &sub_domain,
                Decision::Forbidden {
                    rule: "email_domain",
                },
            ),
            (
                "two @ never well-formed",
                &domain,
                Method::GET,
                &two_at,
                Decision::Forbidden {
                    rule: "email_domain",
                },
            ),
            (
                "no email",
                &domain,
                Method::GET,
                &no_email,
                Decision::Forbidden {
                    rule: "email_domain",
                },
            ),
            (
                "groups and domain both pass",
                &groups_and_domain,
                Method::GET,
                &staff,
                Decision::Allow,
            ),
            (
                "group passes, domain fails",
                &groups_and_domain,
                Method::GET,
                &evil_dash,
                Decision::Forbidden {
                    rule: "email_domain",
                },
            ),
            (
                "domain passes, group fails",
                &groups_and_domain,
                Method::GET,
                &other_group,
                Decision::Forbidden { rule: "group" },
            ),
            (
                "email case-insensitive",
                &emails,
                Method::GET,
                &staff,
                Decision::Allow,
            ),
            (
                "email unverified",
                &emails,
                Method::GET,
                &staff_unverified,
                Decision::Forbidden { rule: "email" },
            ),
            (
                "any one group",
                &groups,
                Method::GET,
                &staff,
                Decision::Allow,
            ),
            (
                "group names case-sensitive",
                &groups,
                Method::GET,
                &cased_group,
                Decision::Forbidden { rule: "group" },
            ),
            (
                "claim value listed",
                &claim,
                Method::GET,
                &reader,
                Decision::Allow,
            ),
            (
                "claim value not listed",
                &wrong_claim,
                Method::GET,
                &reader,
                Decision::Forbidden { rule: "claim" },
            ),
            (
                "array claim not split",
                &array_claim,
                Method::GET,
                &reader,
                Decision::Forbidden { rule: "claim" },
            ),
            (
                "claim missing",
                &missing_claim,
                Method::GET,
                &reader,
                Decision::Forbidden { rule: "claim" },
            ),
            (
                "no allow rules",
                &open,
                Method::GET,
                &reader,
                Decision::Allow,
            ),
        ];
        for (name, policy, method, id, want) in cases {
            assert_eq!(decide(policy, &method, id), want, "{name}");
        }
    }

    #[test]
    fn scopes_checked_before_allow() {
        let mut p = api_policy();
        p.allow = Some(Allow {
            groups: strs(&["admins"]),
            ..Allow::default()
        });
        let id = identity(&[], &[], None, false);
        assert!(matches!(
            decide(&p, &Method::GET, &id),
            Decision::InsufficientScope { .. }
        ));
        let id = identity(&["read:items"], &[], None, false);
        assert_eq!(
            decide(&p, &Method::GET, &id),
            Decision::Forbidden { rule: "group" }
        );
    }

    #[test]
    fn preflight_needs_options_origin_and_request_method() {
        let mut h = HeaderMap::new();
        h.insert(http::header::ORIGIN, "https://app".parse().unwrap());
        assert!(!is_preflight(&Method::OPTIONS, &h));
        h.insert(
            http::header::ACCESS_CONTROL_REQUEST_METHOD,
            "POST".parse().unwrap(),
        );
        assert!(is_preflight(&Method::OPTIONS, &h));
        assert!(!is_preflight(&Method::GET, &h));
        let p = api_policy();
        assert!(preflight_passes(&p, &Method::OPTIONS, &h));
        assert!(!preflight_passes(
            &RoutePolicy::default(),
            &Method::OPTIONS,
            &h
        ));
    }
}
