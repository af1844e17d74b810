//! portcullis: an authenticating reverse proxy.
//!
//! ```text
//! client ──TLS/TCP──▶ listener ─▶ request span ─▶ route match ─▶ authenticate ─▶ authorize ─▶ identity headers ─▶ upstream
//!                                                     │                │
//!                                                     │                └─ no identity: browser → 302 to login; API → 401
//!                                                     └─ /oauth2/* endpoints
//! ```
//!
//! The request path is assembled once, in [`stack`]; each concern is a tower layer.

pub mod identity;
pub mod oidc;
pub mod policy;
pub mod token;

#[cfg(test)]
pub(crate) mod testutil;
