//! JWT access tokens (RFC 7519, RFC 9068), checked with the rules of RFC 8725 (JWT Best
//! Current Practices): the header is read by us before anything else, the algorithm comes
//! from the issuer's allow-list, the key from the issuer's own JWKS, and jsonwebtoken is
//! configured explicitly (`exp`, `iss`, `aud` required; `nbf` validated).

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::claims::numeric_date;
use super::clock::unix_seconds;
use super::error::{InvalidReason, TokenError};

/// What we learn from a JWT before verifying it: only used to pick the issuer and key.
#[derive(Debug)]
pub(crate) struct Unverified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// The unverified `iss`: selects which configured issuer verifies the token.
    pub iss: Option<String>,
}

fn b64(part: &str) -> Result<Vec<u8>, TokenError> {
    if part.is_empty() {
        return Err(TokenError::Malformed);
    }
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)
}

/// The JOSE header members we act on. Strings borrow from the decoded bytes; a member of
/// the wrong type, or a member given twice, makes the header malformed (RFC 7515 §4: names
/// must be unique; we refuse rather than pick one).
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow, default)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    typ: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    /// Present at all (even `null`).
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Only `iss`, to pick the issuer; every other claim is skipped without allocating.
#[derive(Deserialize)]
struct IssPeek<'a> {
    #[serde(borrow, default)]
    iss: Option<Cow<'a, str>>,
}

/// Whether the first part is a base64url JSON object: what tells a JWS from an opaque
/// token that merely has two dots in it.
pub(crate) fn has_json_header(token: &str) -> bool {
    let first = token.split('.').next().unwrap_or("");
    let Ok(bytes) = b64(first) else {
        return false;
    };
    bytes.trim_ascii_start().first() == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok()
}

/// The `typ` values of an access token (RFC 8725 §3.11 / RFC 9068 §4): plain JWT (Auth0)
/// and `at+jwt`.
pub(crate) const ACCESS_TOKEN_TYPES: &[&str] = &["JWT", "at+jwt", "application/at+jwt"];

/// Reads the header and the unverified `iss` of a JWT access token.
pub(crate) fn parse_unverified(token: &str) -> Result<Unverified, TokenError> {
    parse_unverified_typed(token, ACCESS_TOKEN_TYPES)
}

/// Reads the header and the unverified `iss` of a JWT whose `typ`, when present, must be
/// one of `types`.
pub(crate) fn parse_unverified_typed(
    token: &str,
    types: &[&str],
) -> Result<Unverified, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header_bytes = b64(h)?;
    let header: RawHeader<'_> =
        serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;

    let alg = header.alg.as_deref().ok_or(TokenError::Malformed)?;
    // RFC 8725 §3.1 / RFC 7518 §3.6: unsecured JWTs refused, whatever the spelling.
    if alg.trim().eq_ignore_ascii_case("none") {
        return Err(TokenError::Invalid(InvalidReason::AlgNone));
    }
    let alg: Algorithm = alg
        .parse()
        .map_err(|_| TokenError::Invalid(InvalidReason::UnsupportedAlgorithm))?;
    if s.is_empty() {
        // RFC 7518 §3.6: only an unsecured JWT has an empty signature.
        return Err(TokenError::Invalid(InvalidReason::BadSignature));
    }

    // RFC 8725 §3.11 / RFC 9068 §4: explicit typing. Access tokens: plain JWT (Auth0) and
    // at+jwt accepted; other types (ID-token-as-typed, logout+jwt, dpop+jwt, ...) refused.
    // Media types are case-insensitive (RFC 7515 §4.1.9).
    if let Some(t) = header.typ.as_deref() {
        if !types.iter().any(|ok| t.eq_ignore_ascii_case(ok)) {
            return Err(TokenError::Invalid(InvalidReason::WrongType));
        }
    }
    // RFC 7515 §4.1.11: we understand no critical extensions, so any `crit` is refused.
    if header.crit {
        return Err(TokenError::Invalid(InvalidReason::UnsupportedCritical));
    }
    // `jwk`, `jku`, `x5u`, `x5c` are deliberately ignored: keys come only from the issuer's
    // configured JWKS (RFC 8725 §3.10, RFC 7515 §10.3).
    let kid = header.kid.map(Cow::into_owned);

    let payload = b64(p)?;
    let peek: IssPeek<'_> = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    Ok(Unverified {
        alg,
        kid,
        iss: peek.iss.map(Cow::into_owned),
    })
}

/// The jsonwebtoken validation for one issuer and one algorithm, set explicitly rather
/// than from defaults (which check `iss`/`aud` only when present and skip `nbf`).
pub(crate) fn validation_for(
    alg: Algorithm,
    issuer: &str,
    audiences: &[String],
    leeway_secs: u64,
) -> Validation {
    let mut v = Validation::new(alg);
    // RFC 9068 §2.2: exp, iss, aud are required in a JWT access token.
    v.required_spec_claims = ["exp", "iss", "aud"]
        .into_iter()
        .map(String::from)
        .collect::<HashSet<_>>();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.leeway = leeway_secs;
    v.reject_tokens_expiring_in_less_than = 0;
    // RFC 7519 §4.1.1 / RFC 9068 §4 step 2: iss must match exactly.
    v.set_issuer(&[issuer]);
    // RFC 7519 §4.1.3 / RFC 9068 §4 step 3: aud must contain one of ours (string or array).
    // An empty list leaves an empty set: every token is refused.
    v.set_audience(audiences);
    v
}

/// Verifies signature and registered claims with jsonwebtoken, then `exp`/`nbf` again with
/// our (injectable) clock. A `cnf` claim is not judged here: it becomes the identity's
/// binding, checked against each request's proof by the gate (RFC 9449 §7.1).
pub(crate) fn decode_verified(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    now: SystemTime,
) -> Result<Map<String, Value>, TokenError> {
    decode_timed(token, key, validation, now, true)
}

/// The jsonwebtoken validation of a signed JWT that is not an access token (a logout
/// token): signature, `iss` exact and `aud` one of ours, both required; times are checked
/// with our clock by [`decode_signed`] (`exp` only when present).
pub(crate) fn signed_validation(
    alg: Algorithm,
    issuer: &str,
    audiences: &[String],
    leeway_secs: u64,
) -> Validation {
    let mut v = validation_for(alg, issuer, audiences, leeway_secs);
    v.required_spec_claims = ["iss", "aud"]
        .into_iter()
        .map(String::from)
        .collect::<HashSet<_>>();
    v.validate_exp = false;
    v.validate_nbf = false;
    v
}

/// Verifies a signed JWT with jsonwebtoken (see [`signed_validation`]), then `exp` (when
/// present) and `nbf` with our clock. No `cnf` rule: that is for bearer tokens.
pub(crate) fn decode_signed(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    now: SystemTime,
) -> Result<Map<String, Value>, TokenError> {
    decode_timed(token, key, validation, now, false)
}

/// jsonwebtoken's verification, then [`check_times`] with our clock.
fn decode_timed(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    now: SystemTime,
    exp_required: bool,
) -> Result<Map<String, Value>, TokenError> {
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map_err(|e| map_jwt_error(e.into_kind()))?;
    check_times(&data.claims, now, validation.leeway, exp_required)?;
    Ok(data.claims)
}

/// `exp` (RFC 7519 §4.1.4: now must be before exp, plus leeway) and `nbf` (§4.1.5: now
/// must be at or after nbf, minus leeway), with our clock.
pub(crate) fn check_times(
    claims: &Map<String, Value>,
    now: SystemTime,
    leeway_secs: u64,
    exp_required: bool,
) -> Result<(), TokenError> {
    let now = unix_seconds(now);
    let bad = |_| TokenError::Invalid(InvalidReason::BadClaim);
    match numeric_date(claims, "exp").map_err(bad)? {
        Some(exp) if now >= exp.saturating_add(leeway_secs) => return Err(TokenError::Expired),
        Some(_) => {}
        None if exp_required => return Err(TokenError::Invalid(InvalidReason::MissingClaim)),
        None => {}
    }
    if let Some(nbf) = numeric_date(claims, "nbf").map_err(bad)? {
        if nbf > now.saturating_add(leeway_secs) {
            return Err(TokenError::Invalid(InvalidReason::NotYetValid));
        }
    }
    Ok(())
}

fn map_jwt_error(kind: ErrorKind) -> TokenError {
    use InvalidReason as R;
    match kind {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => TokenError::Malformed,
        ErrorKind::InvalidSignature => TokenError::Invalid(R::BadSignature),
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidIssuer => TokenError::Invalid(R::WrongIssuer),
        ErrorKind::InvalidAudience => TokenError::Invalid(R::WrongAudience),
        ErrorKind::ImmatureSignature => TokenError::Invalid(R::NotYetValid),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::Invalid(R::KeyAlgorithmMismatch)
        }
        ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid(R::MissingClaim),
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::InvalidSubject => {
            TokenError::Invalid(R::BadClaim)
        }
        // Key format problems, missing crypto provider and future error kinds: the token is
        // not accepted (fail closed).
        _ => TokenError::Invalid(R::BadSignature),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn tok(h: Value, p: Value) -> String {
        format!("{}.{}.c2ln", enc(&h), enc(&p))
    }

    #[test]
    fn alg_none_refused_in_every_spelling() {
        for alg in ["none", "None", "NONE", "nOnE", " none"] {
            let t = tok(
                serde_json::json!({"alg": alg, "typ": "JWT"}),
                serde_json::json!({"iss": "x"}),
            );
            assert!(
                matches!(
                    parse_unverified(&t),
                    Err(TokenError::Invalid(InvalidReason::AlgNone))
                ),
                "{alg}"
            );
        }
        // An empty signature part under a real algorithm is no signature.
        let t = format!(
            "{}.{}.",
            enc(&serde_json::json!({"alg": "RS256"})),
            enc(&serde_json::json!({}))
        );
        assert!(matches!(
            parse_unverified(&t),
            Err(TokenError::Invalid(InvalidReason::BadSignature))
        ));
    }

    #[test]
    fn header_checks() {
        let p = serde_json::json!({"iss": "https://i/"});
        let ok = parse_unverified(&tok(
            serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "at+JWT"}),
            p.clone(),
        ))
        .unwrap();
        assert_eq!(ok.alg, Algorithm::ES256);
        assert_eq!(ok.kid.as_deref(), Some("k1"));
        assert_eq!(ok.iss.as_deref(), Some("https://i/"));
        for (h, want) in [
            (
                serde_json::json!({"alg": "RS1"}),
                TokenError::Invalid(InvalidReason::UnsupportedAlgorithm),
            ),
            (
                serde_json::json!({"alg": "rs256"}),
                TokenError::Invalid(InvalidReason::UnsupportedAlgorithm),
            ),
            (
                serde_json::json!({"alg": "RS256", "typ": "id_token+jwt"}),
                TokenError::Invalid(InvalidReason::WrongType),
            ),
            (
                serde_json::json!({"alg": "RS256", "typ": "dpop+jwt"}),
                TokenError::Invalid(InvalidReason::WrongType),
            ),
            (
                serde_json::json!({"alg": "RS256", "crit": ["exp"]}),
                TokenError::Invalid(InvalidReason::UnsupportedCritical),
            ),
            (serde_json::json!({"typ": "JWT"}), TokenError::Malformed),
            (serde_json::json!({"alg": 5}), TokenError::Malformed),
            (
                serde_json::json!({"alg": "RS256", "kid": 7}),
                TokenError::Malformed,
            ),
        ] {
            let got = parse_unverified(&tok(h.clone(), p.clone())).unwrap_err();
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{h}");
        }
    }

    #[test]
    fn duplicate_members_and_null_crit_are_refused() {
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","alg":"none"}"#);
        let t = format!("{h}.{}.c2ln", enc(&serde_json::json!({})));
        assert!(matches!(parse_unverified(&t), Err(TokenError::Malformed)));
        let t = tok(
            serde_json::json!({"alg": "RS256", "crit": null}),
            serde_json::json!({}),
        );
        assert!(matches!(
            parse_unverified(&t),
            Err(TokenError::Invalid(InvalidReason::UnsupportedCritical))
        ));
    }

    #[test]
    fn json_header_tells_a_jws_from_an_opaque_token() {
        assert!(has_json_header(&tok(
            serde_json::json!({"alg": "none"}),
            serde_json::json!({})
        )));
        assert!(!has_json_header("v2.local.c29tZXRoaW5n"));
        assert!(!has_json_header("WzFd.e30.sig")); // [1]: JSON, not an object
        assert!(!has_json_header("!!!.e30.sig"));
    }

    #[test]
    fn garbage_is_malformed() {
        for t in [
            "a.b.c",
            "!!!.???.###",
            "eyJhbGciOiJSUzI1NiJ9.%%%.sig",
            "e30.e30.sig",
            "..",
        ] {
            assert!(
                matches!(parse_unverified(t), Err(TokenError::Malformed)),
                "{t}"
            );
        }
    }

    #[test]
    fn times_use_the_given_clock() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let c = |v: Value| v.as_object().cloned().unwrap();
        assert!(check_times(&c(serde_json::json!({"exp": 1001})), now, 0, true).is_ok());
        assert!(matches!(
            check_times(&c(serde_json::json!({"exp": 1000})), now, 0, true),
            Err(TokenError::Expired)
        ));
        assert!(check_times(&c(serde_json::json!({"exp": 990})), now, 30, true).is_ok());
        assert!(matches!(
            check_times(
                &c(serde_json::json!({"exp": 2000, "nbf": 1001})),
                now,
                0,
                true
            ),
            Err(TokenError::Invalid(InvalidReason::NotYetValid))
        ));
        assert!(check_times(
            &c(serde_json::json!({"exp": 2000, "nbf": 1000})),
            now,
            0,
            true
        )
        .is_ok());
        assert!(matches!(
            check_times(&c(serde_json::json!({"exp": "2000"})), now, 0, true),
            Err(TokenError::Invalid(InvalidReason::BadClaim))
        ));
        assert!(matches!(
            check_times(&c(serde_json::json!({})), now, 0, true),
            Err(TokenError::Invalid(InvalidReason::MissingClaim))
        ));
        assert!(check_times(&c(serde_json::json!({})), now, 0, false).is_ok());
    }
}
