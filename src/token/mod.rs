//! Bearer token validation.
