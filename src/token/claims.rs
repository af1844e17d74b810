//! From verified claims (a JWT payload, an introspection or userinfo response) to the
//! compact [`Identity`]: only what configuration asks for is kept.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::error::{InvalidReason, TokenError};
#[cfg(test)]
use crate::identity::is_well_formed_email;
use crate::identity::Identity;

/// What to read from the claims.
#[derive(Debug)]
pub(crate) struct ClaimRules {
    pub scopes_claims: Vec<String>,
    pub groups_claim: String,
    pub wanted: Vec<Arc<str>>,
}

/// Interns lists of scopes and groups: the same list in many tokens is stored once.
/// Looked up by a hash of the items and then compared item by item (no allocation on a
/// hit); bounded (the table is emptied when full, lists made afterwards are shared anew).
pub(crate) struct Interner {
    lists: std::sync::Mutex<HashMap<u64, Arc<[Arc<str>]>>>,
    hasher: std::collections::hash_map::RandomState,
    capacity: usize,
    empty: Arc<[Arc<str>]>,
}

impl Interner {
    pub fn new(capacity: usize) -> Self {
        Self {
            lists: std::sync::Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
            capacity,
            empty: Arc::from(Vec::new()),
        }
    }

    pub fn intern(&self, items: Vec<&str>) -> Arc<[Arc<str>]> {
        if items.is_empty() {
            return self.empty.clone();
        }
        // `[&str]` hashes each item with its length: unambiguous whatever the bytes.
        let h = self.hasher.hash_one(&items);
        let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = lists.get(&h) {
            if found.len() == items.len() && found.iter().zip(&items).all(|(a, b)| &**a == *b) {
                return found.clone();
            }
            // A hash collision: correct but not shared.
            return items.into_iter().map(Arc::from).collect();
        }
        let list: Arc<[Arc<str>]> = items.into_iter().map(Arc::from).collect();
        if lists.len() >= self.capacity {
            lists.clear();
        }
        lists.insert(h, list.clone());
        list
    }
}

/// A claim by exact name first (Auth0's `https://example.com/roles`), else by dotted
/// path through nested objects (Keycloak's `realm_access.roles`).
pub(crate) fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_object()?.get(part)?;
    }
    Some(cur)
}

/// Strings of a claim that is an array of strings, or a space separated string
/// (RFC 6749 §3.3 `scope`; also Entra's `scp` string).
fn push_strings<'a>(v: &'a Value, split_spaces: bool, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) if split_spaces => {
            out.extend(s.split(' ').filter(|p| !p.is_empty()));
        }
        Value::String(s) if !s.is_empty() => out.push(s),
        Value::Array(items) => {
            out.extend(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|s| !s.is_empty()),
            );
        }
        _ => {}
    }
}

fn dedup_in_order(items: &mut Vec<&str>) {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.retain(|s| seen.insert(*s));
}

/// A claim rendered for a header or an `allow.claims` rule: strings as is, numbers and
/// booleans in JSON form, arrays of those joined with `,`; objects and null are absent.
pub(crate) fn render_claim(v: &Value) -> Option<String> {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match v {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar).collect();
            Some(parts.join(","))
        }
        other => scalar(other),
    }
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds. `Err` if present but not a
/// non-negative number.
pub(crate) fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, ()> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                        Ok(Some(f as u64))
                    }
                    _ => Err(()),
                }
            }
        }
        Some(_) => Err(()),
    }
}

/// Builds the identity. `subject_fallback` (introspection of a machine token) is used when
/// there is no `sub`.
pub(crate) fn identity_from_claims(
    claims: &Map<String, Value>,
    issuer: &Arc<str>,
    rules: &ClaimRules,
    interner: &Interner,
    subject_fallback: Option<&str>,
) -> Result<Identity, TokenError> {
    // RFC 9068 §2.2 / OIDC Core 5.3.2: `sub` is required (with `iss`, the stable key).
    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        Some(Value::String(_)) | None => match subject_fallback {
            Some(s) if !s.is_empty() => s,
            _ => return Err(TokenError::Invalid(InvalidReason::MissingClaim)),
        },
        Some(_) => return Err(TokenError::Invalid(InvalidReason::BadClaim)),
    };

    // Kept only if well-formed (Identity::new checks it).
    let email = claims.get("email").and_then(Value::as_str);
    // OIDC Core 5.1: a boolean; some providers send the string "true".
    let email_verified = match claims.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    };
    let text = |name: &str| claims.get(name).and_then(Value::as_str);

    let mut groups = Vec::new();
    if let Some(v) = lookup(claims, &rules.groups_claim) {
        push_strings(v, false, &mut groups);
    }
    dedup_in_order(&mut groups);

    let mut scopes = Vec::new();
    for name in &rules.scopes_claims {
        if let Some(v) = lookup(claims, name) {
            // `scope` is a space separated string (RFC 6749 §3.3, RFC 7662 §2.2, RFC 9068
            // §2.2.3); other claims are arrays (`scp`, Auth0 `permissions`) or strings.
            push_strings(v, true, &mut scopes);
        }
    }
    dedup_in_order(&mut scopes);

    let claims_kept: Vec<(Arc<str>, Box<str>)> = rules
        .wanted
        .iter()
        .filter_map(|name| {
            let v = lookup(claims, name)?;
            Some((name.clone(), render_claim(v)?.into_boxed_str()))
        })
        .collect();

    // An `exp` past what a `SystemTime` holds is a bad claim, not a panic.
    let expires_at = numeric_date(claims, "exp")
        .map_err(|_| TokenError::Invalid(InvalidReason::BadClaim))?
        .map(|secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
        .map(|t| t.ok_or(TokenError::Invalid(InvalidReason::BadClaim)))
        .transpose()?;

    let mut id = Identity::new(
        issuer.clone(),
        subject,
        email,
        text("preferred_username"),
        text("name"),
    );
    id.email_verified = email_verified;
    id.groups = interner.intern(groups);
    id.scopes = interner.intern(scopes);
    id.claims = claims_kept.into_boxed_slice();
    id.expires_at = expires_at;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(scopes: &[&str], groups: &str, wanted: &[&str]) -> ClaimRules {
        ClaimRules {
            scopes_claims: scopes.iter().map(|s| s.to_string()).collect(),
            groups_claim: groups.into(),
            wanted: wanted.iter().map(|s| Arc::from(*s)).collect(),
        }
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn extracts_identity_fields() {
        let c = map(json!({
            "sub": "auth0|abc123",
            "email": "Ann@Example.com",
            "email_verified": "true",
            "preferred_username": "ann",
            "name": "Ann A",
            "https://example.com/roles": ["staff", "admin", "staff", 5],
            "scope": "openid  read:items profile",
            "permissions": ["read:items", "write:items"],
            "tenant_id": "t-1",
            "org": {"id": 42, "tags": ["a", "b"], "deep": {"x": true}},
            "updated_at": "2024-01-01T00:00:00.000Z",
            "exp": 2000000000u64
        }));
        let iss: Arc<str> = Arc::from("https://t.auth0.com/");
        let id = identity_from_claims(
            &c,
            &iss,
            &rules(
                &["scope", "permissions"],
                "https://example.com/roles",
                &["tenant_id", "org.id", "org.tags", "org.deep", "missing"],
            ),
            &Interner::new(100),
            None,
        )
        .unwrap();
        assert_eq!(id.subject(), "auth0|abc123");
        assert_eq!(id.email(), Some("Ann@Example.com"));
        assert!(id.email_verified);
        assert_eq!(id.preferred_username(), Some("ann"));
        assert_eq!(id.name(), Some("Ann A"));
        let groups: Vec<&str> = id.groups.iter().map(|g| &**g).collect();
        assert_eq!(groups, vec!["staff", "admin"]);
        let scopes: Vec<&str> = id.scopes.iter().map(|g| &**g).collect();
        assert_eq!(
            scopes,
            vec!["openid", "read:items", "profile", "write:items"]
        );
        assert_eq!(id.claim("tenant_id"), Some("t-1"));
        assert_eq!(id.claim("org.id"), Some("42"));
        assert_eq!(id.claim("org.tags"), Some("a,b"));
        assert_eq!(id.claim("org.deep"), None);
        assert_eq!(id.claim("missing"), None);
        assert_eq!(
            id.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
    }

    /// Found by the `provider_json` fuzz target: an `exp` past what a `SystemTime` holds
    /// (an introspection answer's, or a signed token's) panicked building the identity.
    #[test]
    fn exp_beyond_system_time_is_a_bad_claim_not_a_panic() {
        let iss: Arc<str> = Arc::from("i");
        let i = Interner::new(10);
        for exp in [json!(u64::MAX), json!(18_000_000_000_000_000_000_f64)] {
            let c = map(json!({"sub": "u", "exp": exp}));
            let r = identity_from_claims(&c, &iss, &rules(&[], "groups", &[]), &i, None);
            assert!(
                matches!(r, Err(TokenError::Invalid(InvalidReason::BadClaim))),
                "{exp}"
            );
        }
        let c = map(json!({"sub": "u", "exp": 4_000_000_000_u64}));
        let id = identity_from_claims(&c, &iss, &rules(&[], "groups", &[]), &i, None).unwrap();
        assert_eq!(
            id.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000))
        );
    }

    #[test]
    fn dotted_group_path_and_single_string() {
        let c = map(json!({"sub": "u", "realm_access": {"roles": ["r1", "r2"]}}));
        let iss: Arc<str> = Arc::from("i");
        let i = Interner::new(10);
        let id = identity_from_claims(
            &c,
            &iss,
            &rules(&["scp"], "realm_access.roles", &[]),
            &i,
            None,
        )
        .unwrap();
        assert_eq!(id.groups.len(), 2);
        let c = map(json!({"sub": "u", "groups": "one group", "scp": ["a", "b"]}));
        let id = identity_from_claims(&c, &iss, &rules(&["scp"], "groups", &[]), &i, None).unwrap();
        assert_eq!(&*id.groups[0], "one group");
        assert_eq!(id.scopes.len(), 2);
    }

    #[test]
    fn email_must_be_well_formed() {
        for bad in ["", "a", "a@@b", "a@b@c", "@b", "a@", "a b@c", "a@b\r\n"] {
            assert!(!is_well_formed_email(bad), "{bad:?}");
        }
        assert!(is_well_formed_email("a.b+c@example.com"));
        let c = map(json!({"sub": "u", "email": "x@y@z", "email_verified": true}));
        let iss: Arc<str> = Arc::from("i");
        let id =
            identity_from_claims(&c, &iss, &rules(&[], "g", &[]), &Interner::new(1), None).unwrap();
        assert_eq!(id.email(), None);
        assert_eq!(id.verified_email(), None);
    }

    #[test]
    fn email_verified_only_true_or_string_true() {
        let iss: Arc<str> = Arc::from("i");
        for (v, want) in [
            (json!(true), true),
            (json!("true"), true),
            (json!("TRUE"), false),
            (json!(1), false),
            (json!(false), false),
        ] {
            let c = map(json!({"sub": "u", "email": "a@b.c", "email_verified": v}));
            let id = identity_from_claims(&c, &iss, &rules(&[], "g", &[]), &Interner::new(1), None)
                .unwrap();
            assert_eq!(id.email_verified, want);
        }
    }

    #[test]
    fn sub_required_unless_fallback() {
        let iss: Arc<str> = Arc::from("i");
        let r = rules(&[], "g", &[]);
        let i = Interner::new(1);
        let c = map(json!({"client_id": "m2m"}));
        assert!(matches!(
            identity_from_claims(&c, &iss, &r, &i, None),
            Err(TokenError::Invalid(InvalidReason::MissingClaim))
        ));
        let id = identity_from_claims(&c, &iss, &r, &i, Some("m2m")).unwrap();
        assert_eq!(id.subject(), "m2m");
        let c = map(json!({"sub": 5}));
        assert!(identity_from_claims(&c, &iss, &r, &i, None).is_err());
    }

    #[test]
    fn interned_lists_are_shared_and_unambiguous() {
        let i = Interner::new(10);
        let a = i.intern(vec!["x", "y"]);
        let b = i.intern(vec!["x", "y"]);
        assert!(Arc::ptr_eq(&a, &b));
        let c = i.intern(vec!["1:x", "y"]);
        assert_eq!(c.len(), 2);
        let d = i.intern(vec!["x:1", "y"]);
        assert!(!Arc::ptr_eq(&c, &d));
        assert_eq!(&*d[0], "x:1");
    }
}
