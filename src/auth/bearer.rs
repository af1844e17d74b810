//! `auth = "bearer"`: the request is judged on its `Authorization: Bearer` token alone
//! (RFC 6750), validated by the [`TokenValidator`] (JWKS or introspection, cached).

use http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, StatusCode};

use crate::ctx::Resp;
use crate::token::TokenError;

/// The RFC 6750 §1.2 realm named in challenges.
pub const REALM: &str = "portcullis";

/// The token of `Authorization: Bearer <token>`, or why there is none.
pub enum Extracted<'a> {
    Token(&'a str),
    /// No Authorization header, or another scheme: a plain challenge.
    Missing,
    /// Several Authorization headers, or `Bearer` with nothing usable after it.
    Malformed,
}

/// RFC 6750 §2.1. The scheme is case-insensitive (RFC 9110 §11.1); exactly one header.
pub fn extract(headers: &HeaderMap) -> Extracted<'_> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return if headers.contains_key(AUTHORIZATION) {
            Extracted::Malformed
        } else {
            Extracted::Missing
        };
    };
    let Ok(v) = v.to_str() else {
        return Extracted::Malformed;
    };
    let Some((scheme, rest)) = v.split_once(' ') else {
        return if v.eq_ignore_ascii_case("bearer") {
            Extracted::Malformed
        } else {
            Extracted::Missing
        };
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Extracted::Missing;
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() || !crate::token::is_b64token(token) {
        return Extracted::Malformed;
    }
    Extracted::Token(token)
}

fn json(
    status: StatusCode,
    error: &str,
    description: &str,
    request_id: &str,
    challenge: Option<String>,
) -> Resp {
    let mut r = crate::error::json_error(status, error, description, request_id);
    if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(WWW_AUTHENTICATE, c);
    }
    r
}

/// 401 without any token: a bare challenge (RFC 6750 §3.1: no error code).
pub fn missing(request_id: &str) -> Resp {
    json(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a bearer token is required",
        request_id,
        Some(format!("Bearer realm=\"{REALM}\"")),
    )
}

/// 400 for a malformed Authorization header (RFC 6750 §3.1 invalid_request).
pub fn malformed(request_id: &str) -> Resp {
    json(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "malformed Authorization header",
        request_id,
        Some(format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_request\""
        )),
    )
}

/// 401 invalid_token, or 503 when the provider could not be asked (fail closed).
pub fn refused(e: &TokenError, request_id: &str) -> Resp {
    if e.is_unavailable() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            e.description(),
            request_id,
            None,
        );
    }
    json(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        e.description(),
        request_id,
        Some(format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
            e.description()
        )),
    )
}

/// 403 insufficient_scope (RFC 6750 §3.1), naming every scope the request needs.
pub fn insufficient_scope(required: &str, request_id: &str) -> Resp {
    // Scope tokens cannot contain '"' or '\' (RFC 6749 §3.3), but be safe.
    let scope: String = required
        .chars()
        .filter(|c| *c != '"' && *c != '\\')
        .collect();
    json(
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        "the token lacks a scope this request needs",
        request_id,
        Some(format!(
            "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{scope}\""
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for x in v {
            m.append(AUTHORIZATION, HeaderValue::from_str(x).unwrap());
        }
        m
    }

    #[test]
    fn extraction() {
        assert!(matches!(
            extract(&h(&["Bearer abc.def-_~+/="])),
            Extracted::Token("abc.def-_~+/=")
        ));
        assert!(matches!(
            extract(&h(&["bearer abc"])),
            Extracted::Token("abc")
        ));
        assert!(matches!(extract(&h(&[])), Extracted::Missing));
        assert!(matches!(
            extract(&h(&["Basic dXNlcjpwYXNz"])),
            Extracted::Missing
        ));
        assert!(matches!(extract(&h(&["Bearer"])), Extracted::Malformed));
        assert!(matches!(extract(&h(&["Bearer a b"])), Extracted::Malformed));
        assert!(matches!(
            extract(&h(&["Bearer a", "Bearer b"])),
            Extracted::Malformed
        ));
        assert!(matches!(
            extract(&h(&["Bearer a\"b"])),
            Extracted::Malformed
        ));
    }
}
