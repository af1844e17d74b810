//! The ID token checks of the relying party: OIDC Core 3.1.3.7 (at the callback), 3.1.3.8
//! (`at_hash`) and 12.2 (an ID token that comes with a refresh).
//!
//! The signature, `iss`, `exp`/`nbf` and "`aud` contains the client id" are checked by the
//! login's [`TokenValidator`](crate::token::TokenValidator) (the JWT code of bearer tokens,
//! with the client id as its one audience). Once it has passed, [`IdTokenClaims::read`]
//! reads the payload of that same, now trusted, token for the claims the rules below need;
//! a payload that names one of them twice is refused (RFC 7515 §4 / RFC 7519 §4: names are
//! unique; we refuse rather than pick one).

use std::collections::BTreeSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer};

use crate::session::{LoginClaims, Session};
use crate::token::TokenError;

/// Why an ID token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    /// The provider's keys could not be loaded: fail closed, try again later.
    #[error("the provider's keys are unavailable")]
    Unavailable(#[source] TokenError),
    /// Signature, `iss`, `aud` (the client id missing), `exp`, `nbf`, algorithm.
    #[error("the ID token is not valid")]
    Invalid(#[source] TokenError),
    /// Not a JWS with a readable payload, a claim of the wrong type, or one given twice.
    #[error("the ID token's claims cannot be read")]
    Unreadable,
    /// 3.1.3.7 step 3: an audience the configuration does not trust.
    #[error("the ID token names an audience this client does not trust")]
    UntrustedAudience,
    /// 3.1.3.7 step 4: several audiences and no `azp`.
    #[error("the ID token has several audiences and no azp")]
    MissingAzp,
    /// 3.1.3.7 step 5: `azp` is another client.
    #[error("the ID token was issued to another client (azp)")]
    OtherAzp,
    /// 3.1.3.8 step 3: `at_hash` does not match the access token it came with.
    #[error("the ID token's at_hash does not match the access token")]
    AtHash,
    /// 3.1.3.7 step 11: `nonce` is not the one this login sent.
    #[error("the ID token's nonce is not this login's")]
    Nonce,
    /// 12.2: a refreshed ID token changed a claim it must keep.
    #[error("the refreshed ID token changed {0}")]
    Changed(&'static str),
}

impl IdTokenError {
    pub fn from_validator(e: TokenError) -> IdTokenError {
        if e.is_unavailable() {
            IdTokenError::Unavailable(e)
        } else {
            IdTokenError::Invalid(e)
        }
    }
}

/// The claims of a validated ID token that the checks need (and that a session keeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IdTokenClaims {
    /// The JWS `alg` (for `at_hash`).
    pub alg: String,
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub azp: Option<String>,
    pub nonce: Option<String>,
    pub auth_time: Option<u64>,
    pub at_hash: Option<String>,
    pub sid: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Payload {
    iss: String,
    sub: String,
    #[serde(deserialize_with = "one_or_many")]
    aud: Vec<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    auth_time: Option<u64>,
    #[serde(default)]
    at_hash: Option<String>,
    #[serde(default)]
    sid: Option<String>,
}

/// RFC 7519 §4.1.3: `aud` is a string or an array of strings.
pub(super) fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// RFC 7519 §2 NumericDate: a non-negative JSON number (fractions allowed, dropped).
pub(super) fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    match n.as_u64() {
        Some(u) => Ok(Some(u)),
        None => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
            _ => Err(serde::de::Error::custom("not a NumericDate")),
        },
    }
}

impl IdTokenClaims {
    /// Reads the header `alg` and the claims of a compact JWS that the validator accepted.
    pub fn read(token: &str) -> Result<IdTokenClaims, IdTokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p)) = (parts.next(), parts.next()) else {
            return Err(IdTokenError::Unreadable);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| IdTokenError::Unreadable)
        };
        let header: Header =
            serde_json::from_slice(&decode(h)?).map_err(|_| IdTokenError::Unreadable)?;
        let p: Payload =
            serde_json::from_slice(&decode(p)?).map_err(|_| IdTokenError::Unreadable)?;
        Ok(IdTokenClaims {
            alg: header.alg,
            iss: p.iss,
            sub: p.sub,
            aud: p.aud,
            azp: p.azp,
            nonce: p.nonce,
            auth_time: p.auth_time,
            at_hash: p.at_hash,
            sid: p.sid,
        })
    }

    /// What a session keeps of its first ID token, for [`same_login`].
    pub fn login_claims(&self) -> LoginClaims {
        LoginClaims {
            aud: self.aud.clone(),
            azp: self.azp.clone(),
            auth_time: self.auth_time,
        }
    }
}

/// The relying party's rules for one ID token, beyond what the validator checked.
pub(super) struct Rules<'a> {
    pub client_id: &'a str,
    /// `provider.trusted_audiences`: audiences accepted beside the client id.
    pub trusted_audiences: &'a [String],
}

impl Rules<'_> {
    /// OIDC Core 3.1.3.7 steps 3 to 5, and 3.1.3.8 for the `access_token` that came in the
    /// same token response. The nonce (step 11) is the callback's own check ([`nonce`]).
    pub fn check(&self, c: &IdTokenClaims, access_token: Option<&str>) -> Result<(), IdTokenError> {
        // Step 3: aud must contain the client id (the validator saw to it; again here, so
        // that this function states the whole rule) and nothing the client does not trust.
        if !c.aud.iter().any(|a| a == self.client_id) {
            return Err(IdTokenError::Invalid(TokenError::Invalid(
                crate::token::InvalidReason::WrongAudience,
            )));
        }
        let trusted = |a: &String| a == self.client_id || self.trusted_audiences.contains(a);
        if !c.aud.iter().all(trusted) {
            return Err(IdTokenError::UntrustedAudience);
        }
        // Step 4: with several audiences, azp is expected (and step 5 then holds it to the
        // client id).
        if c.aud.len() > 1 && c.azp.is_none() {
            return Err(IdTokenError::MissingAzp);
        }
        // Step 5: an azp, when present, must be this client.
        if c.azp.as_deref().is_some_and(|azp| azp != self.client_id) {
            return Err(IdTokenError::OtherAzp);
        }
        // 3.1.3.8 (3.2.2.9 for the implicit flow, 3.3.2.12 hybrid): at_hash, when present,
        // is the left half of the hash of the access token, the hash of the JWS alg.
        if let (Some(at_hash), Some(at)) = (&c.at_hash, access_token) {
            let ok = at_hash_of(&c.alg, at).is_some_and(|want| {
                aws_lc_rs::constant_time::verify_slices_are_equal(
                    want.as_bytes(),
                    at_hash.as_bytes(),
                )
                .is_ok()
            });
            if !ok {
                return Err(IdTokenError::AtHash);
            }
        }
        Ok(())
    }
}

/// OIDC Core 3.1.3.7 step 11: the nonce must equal the one the authorization request sent
/// (compared in constant time: it is a secret of this login until it comes back).
pub(super) fn nonce(c: &IdTokenClaims, sent: &str) -> Result<(), IdTokenError> {
    let ok = c.nonce.as_deref().is_some_and(|n| {
        aws_lc_rs::constant_time::verify_slices_are_equal(n.as_bytes(), sent.as_bytes()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(IdTokenError::Nonce)
    }
}

/// `at_hash` for an access token under JWS algorithm `alg` (OIDC Core 3.1.3.6): the
/// base64url of the left-most half of its hash, SHA-2 of the alg's size; EdDSA (Ed25519)
/// uses SHA-512. `None` for an algorithm with no defined hash.
pub(super) fn at_hash_of(alg: &str, access_token: &str) -> Option<String> {
    use aws_lc_rs::digest;
    let algorithm = match alg {
        "RS256" | "PS256" | "ES256" | "HS256" => &digest::SHA256,
        "RS384" | "PS384" | "ES384" | "HS384" => &digest::SHA384,
        "RS512" | "PS512" | "ES512" | "HS512" | "EdDSA" => &digest::SHA512,
        _ => return None,
    };
    let d = digest::digest(algorithm, access_token.as_bytes());
    let half = &d.as_ref()[..d.as_ref().len() / 2];
    Some(URL_SAFE_NO_PAD.encode(half))
}

/// OIDC Core 12.2: a refreshed ID token must keep the `iss` and `sub` of the session, and
/// the `aud`, `azp` and `auth_time` of the ID token the session began with. `aud` is
/// compared as a set (a one-element array is the string). `auth_time` may be left out of
/// the refreshed token, but never changed, nor added where the first token had none.
/// A session saved before these claims were kept (`login_claims` is `None`) can only be
/// held to `iss` and `sub` (and the validator's and [`Rules::check`]'s bounds on `aud`
/// and `azp`).
pub(super) fn same_login(session: &Session, c: &IdTokenClaims) -> Result<(), IdTokenError> {
    if c.iss != session.issuer {
        return Err(IdTokenError::Changed("iss"));
    }
    if c.sub != session.sub {
        return Err(IdTokenError::Changed("sub"));
    }
    let Some(first) = &session.login_claims else {
        return Ok(());
    };
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<String>>();
    if set(&c.aud) != set(&first.aud) {
        return Err(IdTokenError::Changed("aud"));
    }
    if c.azp != first.azp {
        return Err(IdTokenError::Changed("azp"));
    }
    if c.auth_time.is_some() && c.auth_time != first.auth_time {
        return Err(IdTokenError::Changed("auth_time"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::{json, Value};

    use super::*;
    use crate::config::Secret;

    fn token(header: Value, claims: Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(&header), enc(&claims))
    }

    fn claims(extra: Value) -> IdTokenClaims {
        let mut c = json!({"iss": "https://i", "sub": "u1", "aud": "client", "exp": 2});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        IdTokenClaims::read(&token(json!({"alg": "RS256"}), c)).unwrap()
    }

    const RULES: Rules<'static> = Rules {
        client_id: "client",
        trusted_audiences: &[],
    };

    #[test]
    fn reads_claims_and_refuses_duplicates_and_bad_types() {
        let c = claims(
            json!({"aud": ["client", "x"], "azp": "client", "auth_time": 1.5,
            "nonce": "n", "sid": "s", "at_hash": "h"}),
        );
        assert_eq!(c.alg, "RS256");
        assert_eq!(c.aud, ["client", "x"]);
        assert_eq!(c.azp.as_deref(), Some("client"));
        assert_eq!(c.auth_time, Some(1));
        assert_eq!(
            (c.nonce.as_deref(), c.sid.as_deref(), c.at_hash.as_deref()),
            (Some("n"), Some("s"), Some("h"))
        );
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        for payload in [
            r#"{"iss":"i","sub":"u","aud":"client","aud":"other"}"#,
            r#"{"iss":"i","sub":"u","aud":"client","azp":"client","azp":"x"}"#,
            r#"{"iss":"i","sub":"u","aud":"client","sub":"v"}"#,
            r#"{"iss":"i","sub":"u","aud":5}"#,
            r#"{"iss":"i","sub":"u","aud":"client","auth_time":"1"}"#,
            r#"{"iss":"i","sub":"u","aud":"client","auth_time":-1}"#,
            r#"{"iss":"i","aud":"client"}"#,
        ] {
            let t = format!("{h}.{}.c2ln", URL_SAFE_NO_PAD.encode(payload));
            assert!(
                matches!(IdTokenClaims::read(&t), Err(IdTokenError::Unreadable)),
                "{payload}"
            );
        }
        assert!(IdTokenClaims::read("not-a-jwt").is_err());
    }

    #[test]
    fn audiences_and_azp_follow_3_1_3_7_steps_3_to_5() {
        assert!(RULES.check(&claims(json!({})), None).is_ok());
        assert!(RULES
            .check(&claims(json!({"aud": ["client"]})), None)
            .is_ok());
        assert!(RULES.check(&claims(json!({"azp": "client"})), None).is_ok());
        assert!(matches!(
            RULES.check(
                &claims(json!({"aud": ["client", "x"], "azp": "client"})),
                None
            ),
            Err(IdTokenError::UntrustedAudience)
        ));
        assert!(matches!(
            RULES.check(&claims(json!({"aud": ["client", "x"]})), None),
            Err(IdTokenError::UntrustedAudience)
        ));
        assert!(matches!(
            RULES.check(&claims(json!({"aud": "x"})), None),
            Err(IdTokenError::Invalid(_))
        ));
        assert!(matches!(
            RULES.check(&claims(json!({"azp": "other"})), None),
            Err(IdTokenError::OtherAzp)
        ));
        let trusting = Rules {
            client_id: "client",
            trusted_audiences: &["x".to_string()],
        };
        assert!(trusting
            .check(
                &claims(json!({"aud": ["client", "x"], "azp": "client"})),
                None
            )
            .is_ok());
        assert!(matches!(
            trusting.check(&claims(json!({"aud": ["client", "x"]})), None),
            Err(IdTokenError::MissingAzp)
        ));
        assert!(matches!(
            trusting.check(&claims(json!({"aud": ["client", "x"], "azp": "x"})), None),
            Err(IdTokenError::OtherAzp)
        ));
        assert!(matches!(
            trusting.check(
                &claims(json!({"aud": ["client", "x", "y"], "azp": "client"})),
                None
            ),
            Err(IdTokenError::UntrustedAudience)
        ));
    }

    #[test]
    fn at_hash_is_checked_when_present_with_an_access_token() {
        // OIDC Core A.3 example: at_hash of "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"
        // under RS256 is "77QmUPtjPfzWtF2AnpK9RQ".
        let at = "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y";
        assert_eq!(at_hash_of("RS256", at).unwrap(), "77QmUPtjPfzWtF2AnpK9RQ");
        assert_eq!(at_hash_of("ES384", at).unwrap().len(), 32);
        assert_eq!(at_hash_of("EdDSA", at).unwrap().len(), 43);
        assert_eq!(at_hash_of("none", at), None);
        let good = claims(json!({"at_hash": "77QmUPtjPfzWtF2AnpK9RQ"}));
        assert!(RULES.check(&good, Some(at)).is_ok());
        assert!(matches!(
            RULES.check(&good, Some("another-access-token")),
            Err(IdTokenError::AtHash)
        ));
        // No access token to compare with (or no at_hash): nothing to check.
        assert!(RULES.check(&good, None).is_ok());
        assert!(RULES.check(&claims(json!({})), Some(at)).is_ok());
    }

    #[test]
    fn nonce_must_be_this_logins() {
        assert!(nonce(&claims(json!({"nonce": "n1"})), "n1").is_ok());
        assert!(matches!(
            nonce(&claims(json!({"nonce": "n2"})), "n1"),
            Err(IdTokenError::Nonce)
        ));
        assert!(matches!(
            nonce(&claims(json!({})), "n1"),
            Err(IdTokenError::Nonce)
        ));
    }

    fn session(login_claims: Option<LoginClaims>) -> Session {
        let mut s = Session::new(
            "https://i",
            "u1",
            Secret::new("at".into()),
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(60),
        );
        s.login_claims = login_claims;
        s
    }

    #[test]
    fn a_refreshed_id_token_keeps_what_12_2_asks() {
        let first = claims(json!({"aud": ["client", "x"], "azp": "client", "auth_time": 100}));
        let s = session(Some(first.login_claims()));
        assert!(same_login(&s, &first).is_ok());
        // aud as a set; auth_time may be left out.
        assert!(same_login(
            &s,
            &claims(json!({"aud": ["x", "client"], "azp": "client"}))
        )
        .is_ok());
        for (changed, c) in [
            (
                "iss",
                claims(json!({"iss": "https://other", "aud": ["client", "x"], "azp": "client"})),
            ),
            (
                "sub",
                claims(json!({"sub": "u2", "aud": ["client", "x"], "azp": "client"})),
            ),
            ("aud", claims(json!({"aud": "client", "azp": "client"}))),
            ("azp", claims(json!({"aud": ["client", "x"]}))),
            (
                "auth_time",
                claims(json!({"aud": ["client", "x"], "azp": "client", "auth_time": 101})),
            ),
        ] {
            assert!(
                matches!(same_login(&s, &c), Err(IdTokenError::Changed(n)) if n == changed),
                "{changed}"
            );
        }
        // A first token without auth_time: a refreshed one may not bring one.
        let s = session(Some(claims(json!({})).login_claims()));
        assert!(matches!(
            same_login(&s, &claims(json!({"auth_time": 5}))),
            Err(IdTokenError::Changed("auth_time"))
        ));
        // A session from before these were kept: iss and sub still bind it.
        let old = session(None);
        assert!(same_login(
            &old,
            &claims(json!({"aud": ["client", "x"], "auth_time": 9}))
        )
        .is_ok());
        assert!(matches!(
            same_login(&old, &claims(json!({"sub": "u2"}))),
            Err(IdTokenError::Changed("sub"))
        ));
    }
}
