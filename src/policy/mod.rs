//! Pure authorization decisions.
