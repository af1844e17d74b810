//! Forwarding to upstreams: pooled clients, header hygiene, X-Forwarded-*, upgrades.

pub mod client;
pub mod forward;
pub mod headers;
pub mod hygiene;
