//! Asking the provider about a token: RFC 7662 introspection, or the OIDC userinfo endpoint
//! for providers without RFC 7662 (Auth0). Any failure to get a clear answer is
//! `Unavailable` (the proxy answers 503): fail closed, never a pass.

use std::time::SystemTime;

use serde_json::{Map, Value};

use super::config::{ClientAuth, Secret};
use super::error::{InvalidReason, TokenError, Unavailable};
use super::jwt::check_times;
use crate::oidc::transport::{Call, Endpoint, HttpTransport, Response};

/// The resource server's credentials at the introspection endpoint.
pub(crate) struct IntrospectionClient<'a> {
    pub client_id: Option<&'a str>,
    pub client_secret: Option<&'a Secret>,
    pub auth: ClientAuth,
}

fn parse_object(resp: &Response) -> Result<Map<String, Value>, TokenError> {
    match serde_json::from_slice::<Value>(&resp.body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Unavailable(Unavailable::BadResponse)),
    }
}

/// RFC 7662 §2.1: POST `token` with `token_type_hint=access_token`, authenticated as
/// configured. Returns the response members; the caller applies [`check_introspection`].
pub(crate) async fn introspect(
    transport: &HttpTransport,
    issuer: &str,
    endpoint: &str,
    token: &str,
    client: &IntrospectionClient<'_>,
) -> Result<Map<String, Value>, TokenError> {
    let secret = client.client_secret.and_then(Secret::expose_str);
    let mut form: Vec<(&str, &str)> = vec![("token", token), ("token_type_hint", "access_token")];
    let mut basic = None;
    match (client.client_id, secret, client.auth) {
        // RFC 6749 §2.3.1 client_secret_basic.
        (Some(id), Some(secret), ClientAuth::Basic) => basic = Some((id, secret)),
        // RFC 6749 §2.3.1 client_secret_post.
        (Some(id), Some(secret), ClientAuth::Post) => {
            form.push(("client_id", id));
            form.push(("client_secret", secret));
        }
        (Some(id), None, _) => form.push(("client_id", id)),
        (None, _, _) => {}
    }
    let resp = transport
        .post_form(
            Call::new(issuer, Endpoint::Introspection),
            endpoint,
            &form,
            basic,
        )
        .await?;
    match resp.status.as_u16() {
        200..=299 => {}
        // 401/403: our own credentials were refused, which says nothing about the token:
        // fail closed (503). 5xx and the rest: the provider cannot answer (503).
        401 | 403 => {
            tracing::error!(
                status = resp.status.as_u16(),
                "introspection refused our client credentials"
            );
            return Err(TokenError::Unavailable(Unavailable::Status(
                resp.status.as_u16(),
            )));
        }
        // Other 4xx (RFC 6749 §5.2 `invalid_request`, RFC 7009 `unsupported_token_type`):
        // the server will not introspect this token. That is the token's fault, not the
        // provider's: refuse it (401, remembered) rather than answer 503 to anyone who
        // sends junk.
        400..=499 => return Err(TokenError::Invalid(InvalidReason::Inactive)),
        other => return Err(TokenError::Unavailable(Unavailable::Status(other))),
    }
    parse_object(&resp)
}

/// RFC 7662 §2.2 and §4: `active` must be `true`; `exp`, `nbf`, `iss`, `aud` checked when
/// present; refresh tokens and sender-constrained tokens refused.
pub(crate) fn check_introspection(
    claims: &Map<String, Value>,
    issuer: &str,
    audiences: &[String],
    now: SystemTime,
    leeway_secs: u64,
) -> Result<(), TokenError> {
    // RFC 7662 §2.2: "active" REQUIRED boolean. Anything else is a broken answer.
    match claims.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Err(TokenError::Invalid(InvalidReason::Inactive)),
        _ => return Err(TokenError::Unavailable(Unavailable::BadResponse)),
    }
    // The server looks the token up in every store despite the hint: only an access token
    // may pass. RFC 7662 §2.2 `token_type` is the access token's type (RFC 6749 §7.1:
    // "Bearer"); Keycloak-style `typ` says "Bearer" or "Refresh". Without either, an
    // answer must at least name an audience: oidc-provider introspects refresh tokens
    // with neither, and a refresh token must never be a bearer credential.
    let bearer_type = |v: &Value| {
        v.as_str().is_some_and(|t| {
            // RFC 9449 §6.2: a DPoP-bound token is introspected as `token_type` "DPoP".
            t.eq_ignore_ascii_case("bearer")
                || t.eq_ignore_ascii_case("access_token")
                || t.eq_ignore_ascii_case("dpop")
        })
    };
    // Ory: `token_use`.
    let markers: Vec<&Value> = ["token_type", "typ", "token_use"]
        .iter()
        .filter_map(|k| claims.get(*k))
        .collect();
    let typed_ok = if markers.is_empty() {
        claims.contains_key("aud")
    } else {
        markers.iter().all(|v| bearer_type(v))
    };
    if !typed_ok {
        return Err(TokenError::Invalid(InvalidReason::NotAnAccessToken));
    }
    // RFC 7662 §2.2 `iss`: when present, the issuer we asked.
    match claims.get("iss") {
        None => {}
        Some(Value::String(s)) if s == issuer => {}
        Some(_) => return Err(TokenError::Invalid(InvalidReason::WrongIssuer)),
    }
    // RFC 7662 §2.2 `aud` (string or array): when present, one of ours.
    match claims.get("aud") {
        None => {}
        Some(Value::String(a)) if audiences.iter().any(|x| x == a) => {}
        Some(Value::Array(items))
            if items
                .iter()
                .filter_map(Value::as_str)
                .any(|a| audiences.iter().any(|x| x == a)) => {}
        Some(_) => return Err(TokenError::Invalid(InvalidReason::WrongAudience)),
    }
    // RFC 7662 §4: the protected resource checks the time window itself too.
    check_times(claims, now, leeway_secs, false)?;
    // RFC 7662 §2.2 / RFC 8705 §3.2 / RFC 9449 §6.2: `cnf` means sender-constrained; it
    // becomes the identity's binding (see `binding_of`), checked by the gate per request.
    Ok(())
}

/// OIDC Core 5.3: GET userinfo with the token. 200 with a JSON object holding `sub` is an
/// identity; 401/403 is a refused token (RFC 6750 §3.1); anything else is `Unavailable`.
pub(crate) async fn userinfo(
    transport: &HttpTransport,
    issuer: &str,
    endpoint: &str,
    token: &str,
) -> Result<Map<String, Value>, TokenError> {
    let resp = transport
        .get_with_bearer(Call::new(issuer, Endpoint::Userinfo), endpoint, Some(token))
        .await?;
    match resp.status.as_u16() {
        200 => {}
        401 | 403 => return Err(TokenError::Invalid(InvalidReason::Inactive)),
        other => return Err(TokenError::Unavailable(Unavailable::Status(other))),
    }
    let claims = parse_object(&resp)?;
    // OIDC Core 5.3.2: `sub` MUST always be returned.
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => Ok(claims),
        _ => Err(TokenError::Unavailable(Unavailable::BadResponse)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn introspection_checks() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let aud = vec!["api".to_string()];
        let check = |v: Value| check_introspection(&m(v), "https://i", &aud, now, 0);
        assert!(check(json!({"active": true, "token_type": "Bearer"})).is_ok());
        assert!(check(json!({"active": true, "typ": "Bearer"})).is_ok());
        assert!(check(json!({"active": true, "token_use": "access_token"})).is_ok());
        // Nothing says it is an access token, and no audience: refused (a refresh token
        // introspected by oidc-provider looks exactly like this).
        for refresh in [
            json!({"active": true}),
            json!({"active": true, "sub": "u", "scope": "openid offline_access"}),
            json!({"active": true, "typ": "Refresh"}),
            json!({"active": true, "token_use": "refresh_token"}),
            json!({"active": true, "token_type": "refresh_token", "aud": "api"}),
        ] {
            assert!(matches!(
                check(refresh),
                Err(TokenError::Invalid(InvalidReason::NotAnAccessToken))
            ));
        }
        assert!(check(
            json!({"active": true, "aud": ["x", "api"], "iss": "https://i", "exp": 2000})
        )
        .is_ok());
        assert!(matches!(
            check(json!({"active": false})),
            Err(TokenError::Invalid(InvalidReason::Inactive))
        ));
        for broken in [json!({}), json!({"active": "true"}), json!({"active": 1})] {
            assert!(matches!(
                check(broken),
                Err(TokenError::Unavailable(Unavailable::BadResponse))
            ));
        }
        assert!(matches!(
            check(json!({"active": true, "token_type": "Bearer", "iss": "https://other"})),
            Err(TokenError::Invalid(InvalidReason::WrongIssuer))
        ));
        assert!(matches!(
            check(json!({"active": true, "token_type": "Bearer", "aud": "other"})),
            Err(TokenError::Invalid(InvalidReason::WrongAudience))
        ));
        assert!(matches!(
            check(json!({"active": true, "token_type": "Bearer", "exp": 999})),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            check(json!({"active": true, "token_type": "Bearer", "nbf": 5000})),
            Err(TokenError::Invalid(InvalidReason::NotYetValid))
        ));
        assert!(matches!(
            check(json!({"active": true, "token_type": "refresh_token"})),
            Err(TokenError::Invalid(InvalidReason::NotAnAccessToken))
        ));
        assert!(matches!(
            check(json!({"active": true, "token_type": "DPoP", "cnf": {"jkt": "x"}})),
            Ok(())
        ));
        assert!(matches!(
            check(json!({"active": true, "token_type": "N_A"})),
            Err(TokenError::Invalid(InvalidReason::NotAnAccessToken))
        ));
    }
}
