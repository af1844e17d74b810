//! OpenID Connect: the browser login flow and what it needs.

pub mod redirect;
