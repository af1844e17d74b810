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

pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod config;
pub mod ctx;
pub mod demo;
pub mod dev_idp;
pub mod error;
pub mod identity;
pub mod oidc;
pub mod policy;
pub mod proxy;
pub mod router;
pub mod routing;
pub mod server;
pub mod session;
pub mod stack;
pub mod telemetry;
pub mod token;

#[cfg(test)]
pub(crate) mod testutil;
