//! OpenID Connect with the provider: discovery, the HTTP transport every provider call
//! goes through (and the `token_file` credential of metadata calls), and the browser
//! login flow.

pub mod credential;
pub mod discovery;
pub(crate) mod endpoints;
pub(crate) mod login;
pub(crate) mod redirect;
pub mod transport;
