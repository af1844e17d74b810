//! What the provider remembers: login transactions, authorization codes, issued tokens
//! (grouped by grant, so that a replayed code or a reused refresh token can revoke them
//! all) and its own login sessions. Secrets (codes, refresh tokens, opaque access tokens,
//! session cookies) are keyed by their SHA-256, never stored as such.

use std::collections::HashMap;

/// An authorization request waiting for the user to sign in.
#[derive(Debug, Clone)]
pub(crate) struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub expires: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct CodeRecord {
    pub req: AuthRequest,
    pub username: String,
    pub auth_time: u64,
    pub sid: String,
    pub expires: u64,
    /// Set once redeemed: the grant whose tokens a replay revokes (RFC 6749 §4.1.2).
    pub grant_id: Option<String>,
    pub used: bool,
}

/// One authorization: what a code exchange (or a client credentials request) started.
/// Refresh tokens and access tokens from it share its fate.
#[derive(Debug, Clone, Default)]
pub(crate) struct GrantRecord {
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct AccessRecord {
    pub client_id: String,
    pub sub: String,
    pub username: Option<String>,
    pub scopes: Vec<String>,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub grant_id: String,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct RefreshRecord {
    pub client_id: String,
    pub username: String,
    pub scopes: Vec<String>,
    pub auth_time: u64,
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
    pub grant_id: String,
    /// Rotated away (or revoked): presenting it again is a reuse.
    pub used: bool,
}

/// The provider's own login session (its SSO cookie).
#[derive(Debug, Clone)]
pub(crate) struct SessionRecord {
    pub username: String,
    pub auth_time: u64,
    pub sid: String,
    pub expires: u64,
}

#[derive(Default)]
pub(crate) struct Store {
    /// Login transaction id -> the request it will answer.
    pub login_txs: HashMap<String, AuthRequest>,
    pub codes: HashMap<String, CodeRecord>,
    pub grants: HashMap<String, GrantRecord>,
    /// jti -> access token.
    pub access: HashMap<String, AccessRecord>,
    /// Opaque access token digest -> jti.
    pub opaque: HashMap<String, String>,
    pub refresh: HashMap<String, RefreshRecord>,
    pub sessions: HashMap<String, SessionRecord>,
    writes: u64,
}

impl Store {
    /// Revokes a grant: every access and refresh token issued under it stops working.
    pub fn revoke_grant(&mut self, grant_id: &str) {
        self.grants.entry(grant_id.to_string()).or_default().revoked = true;
        for r in self.refresh.values_mut() {
            if r.grant_id == grant_id {
                r.used = true;
            }
        }
        for a in self.access.values_mut() {
            if a.grant_id == grant_id {
                a.revoked = true;
            }
        }
    }

    pub fn grant_revoked(&self, grant_id: &str) -> bool {
        self.grants.get(grant_id).is_some_and(|g| g.revoked)
    }

    /// The access token with this jti, if it is still good at `now`.
    pub fn live_access(&self, jti: &str, now: u64) -> Option<&AccessRecord> {
        let a = self.access.get(jti)?;
        (!a.revoked && a.exp > now && !self.grant_revoked(&a.grant_id)).then_some(a)
    }

    /// Counts a write and collects garbage every 256 of them.
    pub fn maybe_gc(&mut self, now: u64) {
        self.writes = self.writes.wrapping_add(1);
        if self.writes.is_multiple_of(256) {
            self.gc(now);
        }
    }

    /// Forgets what has expired, so that a long-running demo does not grow without bound.
    /// Used codes are kept until they expire, to recognise a replay.
    pub fn gc(&mut self, now: u64) {
        self.login_txs.retain(|_, t| t.expires > now);
        self.codes.retain(|_, c| c.expires > now);
        self.access.retain(|_, a| a.exp > now);
        let access = &self.access;
        self.opaque.retain(|_, jti| access.contains_key(jti));
        self.refresh.retain(|_, r| r.exp > now);
        self.sessions.retain(|_, s| s.expires > now);
        let live: std::collections::HashSet<&str> = self
            .codes
            .values()
            .filter_map(|c| c.grant_id.as_deref())
            .chain(self.access.values().map(|a| a.grant_id.as_str()))
            .chain(self.refresh.values().map(|r| r.grant_id.as_str()))
            .collect();
        let keep: std::collections::HashSet<String> =
            live.into_iter().map(str::to_string).collect();
        self.grants.retain(|id, _| keep.contains(id));
    }
}
