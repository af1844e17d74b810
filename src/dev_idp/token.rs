//! `POST /token` (RFC 6749 §3.2): the authorization code grant with PKCE (RFC 7636),
//! refresh with rotation and reuse detection, client credentials; client authentication
//! (RFC 6749 §2.3.1) shared with introspection and revocation; and the issuing of access
//! tokens (RFC 9068 JWTs or opaque), ID tokens (OIDC Core §2) and refresh tokens.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::config::{AccessTokenFormat, DevClient, DevUser, Grant};
use super::keys::KeyError;
use super::store::{AccessRecord, RefreshRecord, Store};
use super::web::{
    b64url, digest_key, form_decode, json, method_not_allowed, no_store, oauth_error, random_token,
    sha256, Params, Req, Resp,
};
use super::State;

/// Who an access token is about.
pub(crate) enum Subject<'a> {
    User(&'a DevUser),
    /// Client credentials: the client itself (`sub` = client id).
    Client,
}

pub(crate) fn token(state: &State, req: &Req) -> Resp {
    if req.method != Method::POST {
        return method_not_allowed("POST");
    }
    let params = match req.params() {
        Ok(p) => p,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &e),
    };
    let client = match authenticate_client(state, req, &params, true) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let result = match params.get("grant_type") {
        None => Err(bad("invalid_request", "grant_type is required")),
        Some("authorization_code") => code_grant(state, client, &params),
        Some("refresh_token") => refresh_grant(state, client, &params),
        Some("client_credentials") => client_credentials_grant(state, client, &params),
        Some(_) => Err(bad(
            "unsupported_grant_type",
            "grant_type must be authorization_code, refresh_token or client_credentials",
        )),
    };
    match result {
        Ok(body) => no_store(json(StatusCode::OK, &body)),
        Err(e) => e.into_response(),
    }
}

/// An RFC 6749 §5.2 error, turned into a response where it is sent.
pub(crate) struct TokenError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// 401 with a `WWW-Authenticate: Basic` challenge.
    challenge: Option<&'static str>,
}

impl TokenError {
    pub fn into_response(self) -> Resp {
        let mut r = oauth_error(self.status, self.error, &self.description);
        if let Some(c) = self.challenge {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        r
    }
}

fn bad(error: &'static str, description: impl Into<String>) -> TokenError {
    TokenError {
        status: StatusCode::BAD_REQUEST,
        error,
        description: description.into(),
        challenge: None,
    }
}

fn key_failure(e: KeyError) -> TokenError {
    tracing::error!(error = %e, "dev provider could not sign a token");
    TokenError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        error: "server_error",
        description: "could not sign the token".into(),
        challenge: None,
    }
}

/// RFC 6749 §2.3.1 client authentication: HTTP Basic (id and secret each
/// form-urlencoded, then joined by `:`) or `client_id`/`client_secret` in the body, never
/// both. A public client (no secret registered) identifies itself with `client_id` only,
/// where `allow_public`. Failures are 401 `invalid_client` (§5.2).
pub(crate) fn authenticate_client<'s>(
    state: &'s State,
    req: &Req,
    params: &Params,
    allow_public: bool,
) -> Result<&'s DevClient, TokenError> {
    let basic = match req.header(header::AUTHORIZATION) {
        None => None,
        Some(h) => {
            let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(invalid_client(
                    "unsupported Authorization scheme; use Basic",
                    true,
                ));
            }
            let decoded = STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            let parts = decoded.as_deref().and_then(|d| d.split_once(':'));
            let Some((id, secret)) = parts else {
                return Err(invalid_client("malformed Basic credentials", true));
            };
            match (form_decode(id), form_decode(secret)) {
                (Some(id), Some(secret)) => Some((id, secret)),
                _ => return Err(invalid_client("malformed Basic credentials", true)),
            }
        }
    };
    let (id, secret, via_basic) = match basic {
        Some((id, secret)) => {
            if params.get("client_secret").is_some() {
                return Err(bad(
                    "invalid_request",
                    "use one client authentication method, not two",
                ));
            }
            if params.get("client_id").is_some_and(|b| b != id) {
                return Err(bad(
                    "invalid_request",
                    "client_id differs from the authenticated client",
                ));
            }
            (id, Some(secret), true)
        }
        None => match params.get("client_id") {
            None => return Err(invalid_client("client authentication is required", false)),
            Some(id) => (
                id.to_string(),
                params.get("client_secret").map(str::to_string),
                false,
            ),
        },
    };
    let Some(client) = state.client(&id) else {
        return Err(invalid_client("unknown client or wrong secret", via_basic));
    };
    match (&client.secret, secret) {
        (Some(expected), Some(given)) if expected.ct_eq(given.as_bytes()) => Ok(client),
        (None, None) if allow_public => Ok(client),
        _ => Err(invalid_client("unknown client or wrong secret", via_basic)),
    }
}

fn invalid_client(description: &str, via_basic: bool) -> TokenError {
    TokenError {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description: description.into(),
        challenge: Some(if via_basic {
            "Basic realm=\"portcullis-dev-idp\""
        } else {
            "Basic realm=\"portcullis-dev-idp\", error=\"invalid_client\""
        }),
    }
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn code_grant(state: &State, client: &DevClient, params: &Params) -> Result<Value, TokenError> {
    if !client.has_grant(Grant::AuthorizationCode) {
        return Err(bad(
            "unauthorized_client",
            "this client may not use the authorization_code grant",
        ));
    }
    let Some(code) = params.get("code") else {
        return Err(bad("invalid_request", "code is required"));
    };
    let now = state.now();
    let mut store = state.store();
    let Some(rec) = store.codes.get_mut(&digest_key(code)) else {
        return Err(bad("invalid_grant", "unknown or expired code"));
    };
    if rec.expires <= now {
        return Err(bad("invalid_grant", "unknown or expired code"));
    }
    // RFC 6749 §4.1.3: the code must have been issued to the authenticated client.
    if rec.req.client_id != client.client_id {
        return Err(bad(
            "invalid_grant",
            "the code was issued to another client",
        ));
    }
    // RFC 6749 §4.1.2: a code is used once; a second use revokes what the first produced.
    if rec.used {
        let grant = rec.grant_id.clone();
        if let Some(g) = grant {
            store.revoke_grant(&g);
        }
        tracing::warn!(
            client_id = %client.client_id,
            "authorization code replayed: tokens issued from it are revoked"
        );
        return Err(bad("invalid_grant", "the code was already used"));
    }
    // From here on the code is spent, whatever the outcome (no guessing the verifier).
    rec.used = true;
    // RFC 6749 §4.1.3: redirect_uri must be present and identical to the one authorized.
    if params.get("redirect_uri") != Some(rec.req.redirect_uri.as_str()) {
        return Err(bad(
            "invalid_grant",
            "redirect_uri does not match the authorization request",
        ));
    }
    // RFC 7636 §4.6: BASE64URL(SHA256(code_verifier)) must equal the code_challenge.
    let Some(verifier) = params.get("code_verifier") else {
        return Err(bad("invalid_grant", "code_verifier is required (PKCE)"));
    };
    if !valid_verifier(verifier) || b64url(&sha256(verifier.as_bytes())) != rec.req.code_challenge {
        return Err(bad("invalid_grant", "PKCE verification failed"));
    }
    let grant_id = random_token(16);
    rec.grant_id = Some(grant_id.clone());
    let rec = rec.clone();
    let Some(user) = state.user(&rec.username) else {
        return Err(bad("invalid_grant", "the user no longer exists"));
    };
    let scopes = rec.req.scopes;
    let (access_token, expires_in) = issue_access(
        state,
        &mut store,
        Subject::User(user),
        client,
        &scopes,
        Some(rec.auth_time),
        &grant_id,
    )
    .map_err(key_failure)?;
    let mut body = token_body(&access_token, expires_in, &scopes);
    if scopes.iter().any(|s| s == "openid") {
        let id_token = issue_id_token(
            state,
            client,
            user,
            &scopes,
            IdTokenContext {
                grant: Grant::AuthorizationCode,
                auth_time: rec.auth_time,
                sid: &rec.sid,
                nonce: rec.req.nonce.as_deref(),
                access_token: &access_token,
            },
        )
        .map_err(key_failure)?;
        body["id_token"] = Value::String(id_token);
    }
    if scopes.iter().any(|s| s == "offline_access") && client.has_grant(Grant::RefreshToken) {
        let rt = issue_refresh(
            state,
            &mut store,
            client,
            &user.username,
            &scopes,
            rec.auth_time,
            &rec.sid,
            &grant_id,
        );
        body["refresh_token"] = Value::String(rt);
    }
    store.maybe_gc(now);
    Ok(body)
}

fn refresh_grant(state: &State, client: &DevClient, params: &Params) -> Result<Value, TokenError> {
    if !client.has_grant(Grant::RefreshToken) {
        return Err(bad(
            "unauthorized_client",
            "this client may not use the refresh_token grant",
        ));
    }
    let Some(rt) = params.get("refresh_token") else {
        return Err(bad("invalid_request", "refresh_token is required"));
    };
    let now = state.now();
    let settings = state.settings();
    let mut store = state.store();
    let key = digest_key(rt);
    let Some(rec) = store.refresh.get(&key).cloned() else {
        return Err(bad("invalid_grant", "unknown refresh token"));
    };
    // RFC 6749 §6: the refresh token is bound to the client it was issued to.
    if rec.client_id != client.client_id {
        return Err(bad(
            "invalid_grant",
            "the refresh token was issued to another client",
        ));
    }
    // OAuth 2.0 Security BCP §4.14.2: a rotated-away token presented again means it leaked;
    // revoke the whole grant so that neither party can go on with it.
    if rec.used {
        store.revoke_grant(&rec.grant_id);
        tracing::warn!(
            client_id = %client.client_id,
            "refresh token reused: its grant is revoked"
        );
        return Err(bad(
            "invalid_grant",
            "the refresh token was already used; the grant is revoked",
        ));
    }
    if rec.exp <= now || store.grant_revoked(&rec.grant_id) {
        return Err(bad(
            "invalid_grant",
            "the refresh token expired or was revoked",
        ));
    }
    // RFC 6749 §6: a narrower scope may be asked for, never a wider one.
    let scopes = narrow_scopes(params, &rec.scopes, "was not granted originally")?;
    let Some(user) = state.user(&rec.username) else {
        return Err(bad("invalid_grant", "the user no longer exists"));
    };
    let (access_token, expires_in) = issue_access(
        state,
        &mut store,
        Subject::User(user),
        client,
        &scopes,
        Some(rec.auth_time),
        &rec.grant_id,
    )
    .map_err(key_failure)?;
    let mut body = token_body(&access_token, expires_in, &scopes);
    if scopes.iter().any(|s| s == "openid") {
        // OIDC Core §12.2: same iss, sub, aud, azp and auth_time as the original; no nonce.
        let id_token = issue_id_token(
            state,
            client,
            user,
            &scopes,
            IdTokenContext {
                grant: Grant::RefreshToken,
                auth_time: rec.auth_time,
                sid: &rec.sid,
                nonce: None,
                access_token: &access_token,
            },
        )
        .map_err(key_failure)?;
        body["id_token"] = Value::String(id_token);
    }
    if settings.refresh_rotation {
        if let Some(old) = store.refresh.get_mut(&key) {
            old.used = true;
        }
        let new_rt = issue_refresh(
            state,
            &mut store,
            client,
            &rec.username,
            &rec.scopes,
            rec.auth_time,
            &rec.sid,
            &rec.grant_id,
        );
        body["refresh_token"] = Value::String(new_rt);
    }
    store.maybe_gc(now);
    Ok(body)
}

fn client_credentials_grant(
    state: &State,
    client: &DevClient,
    params: &Params,
) -> Result<Value, TokenError> {
    // RFC 6749 §4.4: confidential clients only.
    if !client.has_grant(Grant::ClientCredentials) || client.secret.is_none() {
        return Err(bad(
            "unauthorized_client",
            "this client may not use the client_credentials grant",
        ));
    }
    // RFC 6749 §3.3: no scope asked for means the client's default (all it may have).
    let scopes = narrow_scopes(params, &client.scopes, "is not allowed for this client")?;
    let now = state.now();
    let mut store = state.store();
    let grant_id = random_token(16);
    let (access_token, expires_in) = issue_access(
        state,
        &mut store,
        Subject::Client,
        client,
        &scopes,
        None,
        &grant_id,
    )
    .map_err(key_failure)?;
    store.maybe_gc(now);
    Ok(token_body(&access_token, expires_in, &scopes))
}

/// RFC 6749 §5.1 successful response.
fn token_body(access_token: &str, expires_in: u64, scopes: &[String]) -> Value {
    json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": scopes.join(" "),
    })
}

/// The user's claims that `scopes` release: `email` gives email and email_verified;
/// `profile` gives name and preferred_username; `profile` or `groups` gives groups.
/// Configured extra claims always come along.
pub(crate) fn user_claims(user: &DevUser, scopes: &[String]) -> Map<String, Value> {
    let has = |s: &str| scopes.iter().any(|x| x == s);
    let mut m = Map::new();
    if has("email") {
        m.insert("email".into(), json!(user.email));
        m.insert("email_verified".into(), json!(user.email_verified));
    }
    if has("profile") {
        m.insert("name".into(), json!(user.name));
        m.insert("preferred_username".into(), json!(user.username));
    }
    if has("profile") || has("groups") {
        m.insert("groups".into(), json!(user.groups));
    }
    for (k, v) in &user.extra_claims {
        m.insert(k.clone(), v.clone());
    }
    m
}

/// Issues and records an access token; returns it and its `expires_in`.
pub(crate) fn issue_access(
    state: &State,
    store: &mut Store,
    subject: Subject<'_>,
    client: &DevClient,
    scopes: &[String],
    auth_time: Option<u64>,
    grant_id: &str,
) -> Result<(String, u64), KeyError> {
    let settings = state.settings();
    let now = state.now();
    let ttl = settings.lifetimes.access_token.as_secs().max(1);
    let exp = now + ttl;
    let jti = random_token(16);
    let (sub, username) = match subject {
        Subject::User(u) => (u.sub.clone(), Some(u.username.clone())),
        Subject::Client => (client.client_id.clone(), None),
    };
    let token = match settings.access_token_format {
        AccessTokenFormat::Opaque => {
            let t = random_token(32);
            store.opaque.insert(digest_key(&t), jti.clone());
            t
        }
        AccessTokenFormat::Jwt => {
            // RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat, jti (+ scope, auth_time).
            let mut claims = json!({
                "iss": state.issuer,
                "sub": sub,
                "aud": state.audience,
                "client_id": client.client_id,
                "scope": scopes.join(" "),
                "iat": now,
                "exp": exp,
                "jti": jti,
            });
            if let Some(at) = auth_time {
                claims["auth_time"] = json!(at);
            }
            if let (Subject::User(u), Some(obj)) = (&subject, claims.as_object_mut()) {
                obj.extend(user_claims(u, scopes));
            }
            // RFC 9068 §2.1: typ "at+jwt", so an ID token cannot pass as an access token.
            state.signing_key().sign("at+jwt", &claims)?
        }
    };
    store.access.insert(
        jti,
        AccessRecord {
            client_id: client.client_id.clone(),
            sub,
            username,
            scopes: scopes.to_vec(),
            aud: state.audience.clone(),
            iat: now,
            exp,
            grant_id: grant_id.to_string(),
            revoked: false,
        },
    );
    Ok((token, ttl))
}

pub(crate) struct IdTokenContext<'a> {
    /// The grant issuing it (for the test knob that changes its claims).
    pub grant: Grant,
    pub auth_time: u64,
    pub sid: &'a str,
    pub nonce: Option<&'a str>,
    pub access_token: &'a str,
}

/// OIDC Core §2 ID token: iss, sub, aud = client_id, azp, exp, iat, auth_time, nonce (as
/// sent in the authorization request), sid, at_hash (§3.3.2.11), amr, and the user claims
/// the scopes release.
pub(crate) fn issue_id_token(
    state: &State,
    client: &DevClient,
    user: &DevUser,
    scopes: &[String],
    ctx: IdTokenContext<'_>,
) -> Result<String, KeyError> {
    let now = state.now();
    let ttl = state.settings().lifetimes.id_token.as_secs().max(1);
    let digest = sha256(ctx.access_token.as_bytes());
    let mut claims = json!({
        "iss": state.issuer,
        "sub": user.sub,
        "aud": client.client_id,
        "azp": client.client_id,
        "iat": now,
        "exp": now + ttl,
        "auth_time": ctx.auth_time,
        "sid": ctx.sid,
        "amr": ["pwd"],
        "at_hash": b64url(&digest[..16]),
    });
    if let Some(n) = ctx.nonce {
        claims["nonce"] = json!(n);
    }
    if let Some(obj) = claims.as_object_mut() {
        obj.extend(user_claims(user, scopes));
        // Test knob: claims a real provider would not send.
        for (k, v) in state.id_token_overrides(ctx.grant) {
            if v.is_null() {
                obj.remove(&k);
            } else {
                obj.insert(k, v);
            }
        }
    }
    state.signing_key().sign("JWT", &claims)
}

#[allow(clippy::too_many_arguments)]
fn issue_refresh(
    state: &State,
    store: &mut Store,
    client: &DevClient,
    username: &str,
    scopes: &[String],
    auth_time: u64,
    sid: &str,
    grant_id: &str,
) -> String {
    let now = state.now();
    let token = random_token(32);
    store.refresh.insert(
        digest_key(&token),
        RefreshRecord {
            client_id: client.client_id.clone(),
            username: username.to_string(),
            scopes: scopes.to_vec(),
            auth_time,
            sid: sid.to_string(),
            iat: now,
            exp: now + state.settings().lifetimes.refresh_token.as_secs().max(1),
            grant_id: grant_id.to_string(),
            used: false,
        },
    );
    token
}

/// The `scope` parameter, which may only narrow `allowed` (RFC 6749 §3.3, §6); absent, all
/// of `allowed`. A scope outside it is `invalid_scope`, named with `why`.
fn narrow_scopes(
    params: &Params,
    allowed: &[String],
    why: &str,
) -> Result<Vec<String>, TokenError> {
    let Some(s) = params.get("scope") else {
        return Ok(allowed.to_vec());
    };
    let asked: Vec<String> = s.split_ascii_whitespace().map(String::from).collect();
    if let Some(extra) = asked.iter().find(|a| !allowed.contains(a)) {
        return Err(bad("invalid_scope", format!("scope {extra} {why}")));
    }
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_syntax() {
        assert!(valid_verifier(&"a".repeat(43)));
        assert!(valid_verifier(&"a-._~".repeat(20)));
        assert!(!valid_verifier(&"a".repeat(42)));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}+", "a".repeat(43))));
    }
}
