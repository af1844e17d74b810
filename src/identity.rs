//! The one `Identity` type: made by `token/` and `session/`, judged by `policy/`,
//! written into upstream headers by `auth/`.

use std::sync::Arc;
use std::time::SystemTime;

/// Who the request is, as established by a validated token or session.
///
/// Kept compact: tens of thousands of these live in the token cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `iss`: with `sub` the only stable key for a user.
    pub issuer: Arc<str>,
    /// `sub`
    pub subject: Box<str>,
    /// `email`, only kept when well-formed (exactly one `@`).
    pub email: Option<Box<str>>,
    /// `email_verified`; email rules in policy count only verified addresses.
    pub email_verified: bool,
    pub preferred_username: Option<Box<str>>,
    pub name: Option<Box<str>>,
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
}

impl Identity {
    /// A verified email address, if any; what email policy rules may use.
    pub fn verified_email(&self) -> Option<&str> {
        if self.email_verified {
            self.email.as_deref()
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
