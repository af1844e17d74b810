//! Test knobs: per-endpoint request counts and forced failures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// The provider's endpoints, as counted and as targets of forced failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Discovery,
    Jwks,
    Authorize,
    /// The login form's POST.
    Login,
    Token,
    Userinfo,
    Introspect,
    Revoke,
    EndSession,
}

impl Endpoint {
    pub const ALL: [Endpoint; 9] = [
        Endpoint::Discovery,
        Endpoint::Jwks,
        Endpoint::Authorize,
        Endpoint::Login,
        Endpoint::Token,
        Endpoint::Userinfo,
        Endpoint::Introspect,
        Endpoint::Revoke,
        Endpoint::EndSession,
    ];

    /// The name used as key of [`DevIdp::counts`](super::DevIdp::counts).
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Discovery => "discovery",
            Endpoint::Jwks => "jwks",
            Endpoint::Authorize => "authorize",
            Endpoint::Login => "login",
            Endpoint::Token => "token",
            Endpoint::Userinfo => "userinfo",
            Endpoint::Introspect => "introspect",
            Endpoint::Revoke => "revoke",
            Endpoint::EndSession => "end_session",
        }
    }

    /// The path it is served at.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Discovery => "/.well-known/openid-configuration",
            Endpoint::Jwks => "/jwks",
            Endpoint::Authorize => "/authorize",
            Endpoint::Login => "/authorize/login",
            Endpoint::Token => "/token",
            Endpoint::Userinfo => "/userinfo",
            Endpoint::Introspect => "/introspect",
            Endpoint::Revoke => "/revoke",
            Endpoint::EndSession => "/end_session",
        }
    }

    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A forced failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// Answer with this status and a JSON `server_error` body, without doing anything.
    Status(u16),
    /// Wait this long, then answer normally (for client timeouts).
    Slow(Duration),
    /// Answer 200 with `Content-Type: application/json` and a body that is not JSON.
    BadJson,
    /// Close the connection without an answer.
    Disconnect,
}

/// How many calls a forced failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// The next N calls of the endpoint, then normal again.
    Next(u64),
    /// Every call until cleared.
    Always,
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    fail: Fail,
    remaining: Option<u64>,
}

#[derive(Default)]
pub(crate) struct Knobs {
    counts: [AtomicU64; Endpoint::ALL.len()],
    fails: Mutex<HashMap<Endpoint, Rule>>,
}

impl Knobs {
    /// Counts a call and returns the failure to apply to it, if any.
    pub fn on_request(&self, ep: Endpoint) -> Option<Fail> {
        self.counts[ep.index()].fetch_add(1, Relaxed);
        let mut fails = self.fails.lock().unwrap_or_else(|e| e.into_inner());
        let rule = fails.get_mut(&ep)?;
        let fail = rule.fail;
        match &mut rule.remaining {
            None => {}
            Some(n) => {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    fails.remove(&ep);
                }
            }
        }
        Some(fail)
    }

    pub fn set(&self, ep: Endpoint, fail: Fail, times: Times) {
        let mut fails = self.fails.lock().unwrap_or_else(|e| e.into_inner());
        match times {
            Times::Next(0) => {
                fails.remove(&ep);
            }
            Times::Next(n) => {
                fails.insert(
                    ep,
                    Rule {
                        fail,
                        remaining: Some(n),
                    },
                );
            }
            Times::Always => {
                fails.insert(
                    ep,
                    Rule {
                        fail,
                        remaining: None,
                    },
                );
            }
        }
    }

    pub fn clear(&self, ep: Option<Endpoint>) {
        let mut fails = self.fails.lock().unwrap_or_else(|e| e.into_inner());
        match ep {
            Some(ep) => {
                fails.remove(&ep);
            }
            None => fails.clear(),
        }
    }

    pub fn counts(&self) -> HashMap<&'static str, u64> {
        Endpoint::ALL
            .into_iter()
            .map(|e| (e.as_str(), self.counts[e.index()].load(Relaxed)))
            .collect()
    }

    pub fn reset_counts(&self) {
        for c in &self.counts {
            c.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_n_failures_then_normal() {
        let k = Knobs::default();
        k.set(Endpoint::Token, Fail::Status(500), Times::Next(2));
        assert_eq!(k.on_request(Endpoint::Token), Some(Fail::Status(500)));
        assert_eq!(k.on_request(Endpoint::Jwks), None);
        assert_eq!(k.on_request(Endpoint::Token), Some(Fail::Status(500)));
        assert_eq!(k.on_request(Endpoint::Token), None);
        assert_eq!(k.counts()["token"], 3);
        assert_eq!(k.counts()["jwks"], 1);
        assert_eq!(k.counts()["userinfo"], 0);
    }

    #[test]
    fn always_until_cleared() {
        let k = Knobs::default();
        k.set(Endpoint::Jwks, Fail::BadJson, Times::Always);
        for _ in 0..5 {
            assert_eq!(k.on_request(Endpoint::Jwks), Some(Fail::BadJson));
        }
        k.clear(Some(Endpoint::Jwks));
        assert_eq!(k.on_request(Endpoint::Jwks), None);
    }

    #[test]
    fn endpoint_paths_round_trip() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
        }
    }
}
