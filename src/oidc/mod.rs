//! OpenID Connect with the provider: discovery, the HTTP transport every provider call
//! goes through, and the browser login flow.

pub mod discovery;
pub(crate) mod endpoints;
pub(crate) mod login;
pub(crate) mod redirect;
pub mod transport;
