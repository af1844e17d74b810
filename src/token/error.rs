//! Why a bearer token was refused, in words that are safe to show the client.

use std::sync::Arc;

use crate::oidc::transport::TransportError;

/// Why a token is not accepted. `Display` and `Debug` never contain the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// No token in the request (the proxy's extraction found none).
    #[error("no bearer token")]
    Missing,
    /// Not an RFC 6750 §2.1 `b64token` (a character outside the token alphabet, or `=`
    /// other than trailing padding): the `Authorization` header itself is malformed, so
    /// the proxy answers 400 `invalid_request` (`Refusal::TokenMalformed`), not 401. Checked
    /// on a cache miss only (a hit is a token that passed this check when it was
    /// validated); never remembered in the negative cache.
    #[error("token is not a b64token")]
    Syntax,
    /// A b64token that is not a well-formed token (JWT structure, base64, JSON).
    #[error("malformed token")]
    Malformed,
    /// Longer than `max_token_len`; refused before any parsing.
    #[error("token too long")]
    TooLong,
    #[error("invalid token: {0}")]
    Invalid(InvalidReason),
    /// `exp` has passed (RFC 7519 §4.1.4).
    #[error("token expired")]
    Expired,
    /// A `cnf` claim (RFC 7800): DPoP (RFC 9449) or mTLS-bound (RFC 8705) tokens cannot be
    /// accepted as plain bearer tokens.
    #[error("sender-constrained token presented as a bearer token")]
    SenderConstrained,
    /// RFC 8705 §3: the token is bound to a client certificate (`cnf.x5t#S256`) that the
    /// request did not come with (none, another one, or a malformed forwarded one). Made
    /// by the gate on each request, never by the validator (so never cached).
    #[error("certificate binding failed")]
    CertificateBinding,
    /// The token names an issuer that is not configured.
    #[error("token issuer not trusted")]
    UnknownIssuer,
    /// The provider (JWKS, introspection, userinfo) could not give an answer: fail closed
    /// (the proxy answers 503), never a pass.
    #[error("token could not be checked")]
    Unavailable(#[source] Unavailable),
}

/// The specific check that refused an otherwise well-formed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// `alg: none` in any spelling (RFC 8725 §3.1).
    AlgNone,
    /// An `alg` this build does not know.
    UnsupportedAlgorithm,
    /// A known `alg` not in the issuer's allow-list (RFC 8725 §3.1).
    AlgorithmNotAllowed,
    /// The key found for `kid` does not fit the token's `alg` (RFC 8725 §3.1, §2.1).
    KeyAlgorithmMismatch,
    /// No key with this `kid` in the issuer's JWKS, even after a refetch.
    UnknownKey,
    /// A `typ` header other than JWT / at+jwt (RFC 8725 §3.11, RFC 9068 §4).
    WrongType,
    /// A `crit` header naming extensions we do not understand (RFC 7515 §4.1.11).
    UnsupportedCritical,
    BadSignature,
    /// `iss` differs from the issuer (RFC 7519 §4.1.1).
    WrongIssuer,
    /// `aud` names none of the configured audiences (RFC 7519 §4.1.3).
    WrongAudience,
    /// `nbf` in the future (RFC 7519 §4.1.5).
    NotYetValid,
    /// A required claim (`exp`, `iss`, `aud`, `sub`) is missing.
    MissingClaim,
    /// A registered claim has the wrong type.
    BadClaim,
    /// Introspection `active: false`, or userinfo refused the token.
    Inactive,
    /// Introspection says this is not an access token.
    NotAnAccessToken,
    /// An opaque token while introspection is off.
    OpaqueNotAccepted,
}

impl InvalidReason {
    /// A short code for logs and metrics (`invalid_token:<code>`).
    pub fn code(self) -> &'static str {
        match self {
            InvalidReason::AlgNone => "alg_none",
            InvalidReason::UnsupportedAlgorithm => "unsupported_alg",
            InvalidReason::AlgorithmNotAllowed => "alg_not_allowed",
            InvalidReason::KeyAlgorithmMismatch => "key_alg_mismatch",
            InvalidReason::UnknownKey => "unknown_key",
            InvalidReason::WrongType => "wrong_type",
            InvalidReason::UnsupportedCritical => "unsupported_crit",
            InvalidReason::BadSignature => "bad_signature",
            InvalidReason::WrongIssuer => "wrong_issuer",
            InvalidReason::WrongAudience => "wrong_audience",
            InvalidReason::NotYetValid => "not_yet_valid",
            InvalidReason::MissingClaim => "missing_claim",
            InvalidReason::BadClaim => "bad_claim",
            InvalidReason::Inactive => "inactive",
            InvalidReason::NotAnAccessToken => "not_an_access_token",
            InvalidReason::OpaqueNotAccepted => "opaque_not_accepted",
        }
    }

    /// A short description, safe to show the client as `error_description`.
    pub fn description(self) -> &'static str {
        match self {
            InvalidReason::AlgNone => "unsigned tokens are not accepted",
            InvalidReason::UnsupportedAlgorithm => "the token algorithm is not supported",
            InvalidReason::AlgorithmNotAllowed => "the token algorithm is not allowed",
            InvalidReason::KeyAlgorithmMismatch => "the token algorithm does not match its key",
            InvalidReason::UnknownKey => "the token signing key is unknown",
            InvalidReason::WrongType => "the token type is not accepted",
            InvalidReason::UnsupportedCritical => "the token has unsupported critical headers",
            InvalidReason::BadSignature => "the token signature is invalid",
            InvalidReason::WrongIssuer => "the token issuer is not accepted",
            InvalidReason::WrongAudience => "the token audience is not accepted",
            InvalidReason::NotYetValid => "the token is not valid yet",
            InvalidReason::MissingClaim => "the token lacks a required claim",
            InvalidReason::BadClaim => "the token has a malformed claim",
            InvalidReason::Inactive => "the token is not active",
            InvalidReason::NotAnAccessToken => "the token is not an access token",
            InvalidReason::OpaqueNotAccepted => "opaque tokens are not accepted",
        }
    }
}

impl std::fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

/// Why the provider could not answer. Kept cheap to clone (coalesced callers share it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    #[error("issuer metadata or keys not loaded yet")]
    NotReady,
    #[error("the issuer's JWKS could not be fetched")]
    Jwks,
    #[error("provider call failed")]
    Transport(#[source] Arc<TransportError>),
    #[error("provider answered HTTP {0}")]
    Status(u16),
    #[error("provider response is not valid JSON")]
    BadResponse,
    #[error("no introspection or userinfo endpoint known")]
    NoEndpoint,
}

impl TokenError {
    /// A short description, safe to show the client as `error_description`
    /// (RFC 6750 §3). Never includes token contents.
    pub fn description(&self) -> &'static str {
        match self {
            TokenError::Missing => "a bearer token is required",
            TokenError::Syntax => "malformed Authorization header",
            TokenError::Malformed => "the token is malformed",
            TokenError::TooLong => "the token is too long",
            TokenError::Invalid(r) => r.description(),
            TokenError::Expired => "the token has expired",
            TokenError::SenderConstrained => {
                "sender-constrained tokens are not accepted as bearer tokens"
            }
            TokenError::CertificateBinding => {
                "the certificate binding failed: the token is bound to another client certificate"
            }
            TokenError::UnknownIssuer => "the token issuer is not trusted",
            TokenError::Unavailable(_) => "the token could not be checked, try again later",
        }
    }

    /// Whether the provider was unreachable (the proxy answers 503, not 401).
    /// A short code for logs and metrics: `expired`, `bad_signature`, `unavailable`, ...
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Syntax => "syntax",
            TokenError::Malformed => "malformed",
            TokenError::TooLong => "too_long",
            TokenError::Invalid(r) => r.code(),
            TokenError::Expired => "expired",
            TokenError::SenderConstrained => "sender_constrained",
            TokenError::CertificateBinding => "cert_binding",
            TokenError::UnknownIssuer => "unknown_issuer",
            TokenError::Unavailable(_) => "unavailable",
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, TokenError::Unavailable(_))
    }

    /// Whether the token is not even a `b64token` (the proxy answers 400
    /// `invalid_request`, as for any malformed `Authorization` header).
    pub fn is_syntax(&self) -> bool {
        matches!(self, TokenError::Syntax)
    }

    /// Whether this refusal may be remembered for a while (the token will not become
    /// valid by itself). `Unavailable` is never cached; nor is `Missing`.
    pub(crate) fn is_negative_cacheable(&self) -> bool {
        match self {
            TokenError::Malformed
            | TokenError::TooLong
            | TokenError::Invalid(_)
            | TokenError::Expired
            | TokenError::SenderConstrained
            | TokenError::UnknownIssuer => true,
            // A syntax refusal is answered before the negative cache is consulted; not
            // remembering it keeps it from ever standing for another answer.
            TokenError::Missing | TokenError::Syntax | TokenError::Unavailable(_) => false,
            // A property of the request (its certificate), not of the token.
            TokenError::CertificateBinding => false,
        }
    }
}

impl From<TransportError> for TokenError {
    fn from(e: TransportError) -> Self {
        TokenError::Unavailable(Unavailable::Transport(Arc::new(e)))
    }
}
