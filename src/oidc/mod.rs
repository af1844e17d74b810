//! OpenID Connect with the provider: discovery and the HTTP transport every provider call
//! goes through.

pub mod discovery;
pub mod transport;
