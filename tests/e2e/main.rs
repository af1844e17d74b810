//! End-to-end tests: the real `portcullis` binary in front of a real echo upstream, on
//! 127.0.0.1 ephemeral ports. One integration-test binary (`cargo test --test e2e NAME`).

mod support;

mod admin;
mod ambiguity;
mod assertion;
mod bearer;
mod check;
mod demo;
mod dpop;
mod errors;
mod faults;
mod forward_auth;
mod forwarding;
mod framing;
mod lifecycle;
mod limits;
mod login;
mod login_browser;
mod mtls;
mod normalization;
mod operate;
mod parity;
mod protocols;
mod revocation;
mod routing;
mod shipped_configs;
mod streaming;
mod telemetry;
mod upstream_tls;
