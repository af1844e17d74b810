//! portcullis: an authenticating reverse proxy.
//!
//! The request path, and the module that does each step:
//!
//! ```text
//!             server          telemetry   routing          proxy::       auth          proxy::
//!             (accept, TLS,   ::trace     (limits, host,   hygiene       (gate:        forward
//!              limits)        (id, log,    path, route)    (headers)     token or      (upstream,
//!                              metrics)        │                          session,      streaming,
//! client ──TLS/TCP──▶ listener ─▶ request ─▶ route match ─▶ clean ─▶ authenticate ─▶ upgrades)
//!                                  span          │                  ─▶ authorize ─▶ identity headers ─▶ upstream
//!                                                │                        │
//!                                                │                        └─ no identity: browser → 302 to login;
//!                                                │                           API → 401 (error: the one rescue)
//!                                                └─ /oauth2/* (oidc::endpoints: ping, forward auth, login,
//!                                                   callback, sign-out, userinfo, back-channel logout)
//! ```
//!
//! - `stack` writes the layer order once; `generation` builds one stack per worker
//!   from a config and carries what outlives a reload; [`app`] starts the workers and the
//!   admin listener and owns reload and shutdown (nothing imports it).
//! - [`config`] reads and validates the file (it imports no behaviour); `path`
//!   canonicalizes paths and hosts (it imports nothing of the crate).
//! - [`token`] validates bearer tokens (JWKS, introspection, cache); `session` keeps
//!   browser sessions; `revocation` is what ends them early (sign-outs, provider logouts,
//!   and the replay sets), built once and kept across reloads; `oidc` is discovery, the
//!   login flow (back-channel logout included) and the provider transport; [`identity`]
//!   is the one identity type they make; `policy` judges it.
//! - `assertion` signs the identity assertion that routes with `assertion = true` add
//!   upstream, and holds the keys published at `/.well-known/portcullis/jwks.json`.
//! - `error` renders every refusal; `exchange` is what travels with a request.
//! - `fuzz_api` (cargo feature `fuzzing`, hidden) is what the fuzz targets in `fuzz/` call;
//!   nothing else enables it.
//! - `admin` serves `/healthz`, `/readyz`, `/metrics` and `POST /sessions/revoke`;
//!   `dev_idp` is the development provider and sample app of `portcullis demo` (cargo
//!   feature `demo`, on by default).

pub mod app;
pub mod config;
#[cfg(feature = "demo")]
pub mod dev_idp;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_api;
pub mod identity;
pub mod oidc;
pub mod telemetry;
pub mod token;

pub(crate) mod admin;
pub(crate) mod assertion;
pub(crate) mod auth;
pub(crate) mod body;
pub(crate) mod error;
pub(crate) mod exchange;
pub(crate) mod generation;
pub(crate) mod path;
pub(crate) mod policy;
pub(crate) mod proxy;
pub(crate) mod revocation;
pub(crate) mod routing;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod stack;

#[cfg(test)]
mod import_graph;
#[cfg(test)]
pub(crate) mod testutil;
