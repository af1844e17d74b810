//! The harness: an echo upstream, the real proxy binary, HTTP clients (hyper-util and raw),
//! the one scripted browser ([`agent::Agent`]), the login fixtures ([`login`]) and the
//! example assertion verifier ([`verifier`]), a killable `redis-server` ([`redis_server`]).

#![allow(dead_code)]

pub mod agent;
pub mod browser;
pub mod client;
pub mod cookies;
pub mod echo;
pub mod idp;
pub mod login;
pub mod otlp;
pub mod proxy;
pub mod raw;
pub mod redis_server;
pub mod verifier;

pub use client::{echo_header, echo_headers, Http};
pub use echo::EchoUpstream;
pub use proxy::{server_section, simple_config, Signal, TestProxy};
pub use raw::eventually;
