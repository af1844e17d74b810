//! Authentication and authorization of routed requests: the gate decides by the route's
//! auth mode and policy ([`gate`]), bearer tokens are read per RFC 6750 ([`bearer`]), DPoP-bound ones with their proofs
//! (RFC 9449, [`dpop`]), certificate-bound ones against the client certificate (RFC 8705,
//! [`client_cert`]), and
//! the layer ([`layer`]) writes the identity headers and removes the proxy's cookies and the
//! token's `Authorization` header before forwarding ([`identity_headers`]).

pub mod bearer;
pub mod client_cert;
pub mod dpop;
pub mod gate;
pub mod identity_headers;
pub mod layer;

pub use layer::{Auth, AuthLayer};
