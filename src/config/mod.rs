//! Configuration: one TOML file, read in two stages behind one door.
//!
//! `file.rs` mirrors the TOML (unknown keys are errors); `validate.rs` expands `${ENV}`,
//! reads `*_file` secrets and turns the mirror into the typed [`Config`] that the rest of
//! the proxy uses. [`Config::load`] is the only way in, and it always validates. Every error
//! names the key path (`route[2].upstream: no upstream named "ap"`). The raw text is never
//! logged: it holds secrets.

pub mod file;
pub mod secret;
mod types;
mod validate;

use std::fmt;
use std::path::Path;

pub use secret::Secret;
pub use types::*;

/// One problem in a config file, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, `route[2].upstream`; empty for file-level problems.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// All the problems found in one file (validation does not stop at the first).
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    pub(crate) fn one(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            key: key.into(),
            message: message.into(),
        }])
    }
}

impl Config {
    /// Reads, expands and validates a config file. The only way to get a [`Config`].
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(
                "",
                format!("cannot read config file {}: {e}", path.display()),
            )
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml(&text, base)
    }

    /// Validates config text; relative `*_file` paths are resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        validate::from_toml(text, base_dir, &|name| std::env::var(name).ok())
    }

    /// What a valid config still deserves a word about (printed by `check`, logged at
    /// start): each names its key, as errors do.
    pub fn warnings(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let logins = self
            .routes
            .iter()
            .any(|r| matches!(r.auth, AuthMode::Login | AuthMode::Either));
        if let Some(s) = self.session.as_ref().filter(|_| logins) {
            if s.revocation == RevocationKind::Memory && s.revocation_file.is_none() {
                out.push(ConfigError {
                    key: "session.revocation".into(),
                    message: "\"memory\" without revocation_file: a restart forgets sign-outs and \
                              provider logouts (a cookie copied before them opens again until it \
                              expires); set session.revocation_file, or keep revocations in Redis \
                              (session.redis_url)"
                        .into(),
                });
            }
        }
        out
    }

    /// The claims (names or dotted paths) that `headers.claims` and the routes'
    /// `allow.claims` refer to, sorted, each once: what identities must keep.
    pub fn referenced_claims(&self) -> Vec<String> {
        let mut wanted: Vec<String> = self
            .headers
            .claims
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        for r in &self.routes {
            if let Some(claims) = r.allow.as_ref().and_then(|a| a.claims.as_ref()) {
                wanted.extend(claims.iter().map(|(k, _)| k.clone()));
            }
        }
        wanted.sort();
        wanted.dedup();
        wanted
    }
}
