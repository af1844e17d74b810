//! Forwarding to upstreams: header hygiene and `X-Forwarded-*` ([`hygiene`], [`headers`]),
//! pooled clients per worker ([`client`], [`upstream`]), and the innermost service that
//! sends the request and streams the answer back, upgrades included ([`forward`]).

pub mod client;
pub mod forward;
pub mod header_policy;
pub mod headers;
pub mod hygiene;
pub mod pool;
pub mod upstream;
