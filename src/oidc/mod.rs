//! OpenID Connect with the provider: discovery, the HTTP transport every provider call
//! goes through, and the browser login flow.

pub mod discovery;
pub mod endpoints;
pub mod login;
pub mod redirect;
pub mod transport;
