//! Endpoints that judge tokens: `GET|POST /userinfo` (OIDC Core §5.3, RFC 6750),
//! `POST /introspect` (RFC 7662) and `POST /revoke` (RFC 7009).

use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use jsonwebtoken::Validation;
use serde_json::{json, Map, Value};

use super::keys;
use super::store::AccessRecord;
use super::token::{authenticate_client, user_claims};
use super::web::{digest_key, json, method_not_allowed, no_store, oauth_error, text, Req, Resp};
use super::State;

/// An access token this provider issued and still honours: (jti, record).
pub(crate) fn live_access_token(state: &State, token: &str) -> Option<(String, AccessRecord)> {
    let jti = access_token_jti(state, token)?;
    let now = state.now();
    let rec = state.store().live_access(&jti, now)?.clone();
    Some((jti, rec))
}

/// The jti of a token that is one of ours (signature and type checked for JWTs; expiry
/// and revocation are the store's business).
fn access_token_jti(state: &State, token: &str) -> Option<String> {
    if token.split('.').count() == 3 {
        let mut v = Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_issuer(&[&state.issuer]);
        v.validate_aud = false;
        // Expiry is judged against the provider's clock (which tests may move), below.
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let data = keys::verify::<Value>(&state.keys(), token, v)?;
        // RFC 9068 §4: only `at+jwt` is an access token (an ID token is not).
        if data.header.typ.as_deref() != Some("at+jwt") {
            return None;
        }
        data.claims.get("jti")?.as_str().map(str::to_string)
    } else {
        state.store().opaque.get(&digest_key(token)).cloned()
    }
}

fn bearer_challenge(status: StatusCode, challenge: String, error: Option<&str>) -> Resp {
    let mut r = match error {
        Some(e) => oauth_error(status, e, "the access token is missing, invalid or expired"),
        None => no_store(json(status, &json!({"error": "invalid_token"}))),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

pub(crate) fn userinfo(state: &State, req: &Req) -> Resp {
    if req.method != Method::GET && req.method != Method::POST {
        return method_not_allowed("GET, POST");
    }
    // RFC 6750 §2.1 (header) or §2.2 (form body); not both.
    let from_header = req.header(header::AUTHORIZATION).and_then(|h| {
        let (scheme, token) = h.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    let from_body = if req.method == Method::POST && req.is_form() {
        match req.params() {
            Ok(p) => p.get("access_token").map(str::to_string),
            Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &e),
        }
    } else {
        None
    };
    let token = match (from_header, from_body) {
        (Some(_), Some(_)) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send the access token once",
            )
        }
        (Some(t), None) | (None, Some(t)) => t,
        // RFC 6750 §3.1: no credentials, no error code.
        (None, None) => {
            return bearer_challenge(
                StatusCode::UNAUTHORIZED,
                "Bearer realm=\"portcullis-dev-idp\"".into(),
                None,
            )
        }
    };
    let invalid = || {
        bearer_challenge(
            StatusCode::UNAUTHORIZED,
            "Bearer realm=\"portcullis-dev-idp\", error=\"invalid_token\", \
             error_description=\"the access token is invalid or expired\""
                .into(),
            Some("invalid_token"),
        )
    };
    let Some((_, rec)) = live_access_token(state, &token) else {
        return invalid();
    };
    // OIDC Core §5.3: userinfo needs a token with the openid scope (and a user).
    let user = match &rec.username {
        Some(u) if rec.scopes.iter().any(|s| s == "openid") => state.user(u),
        _ => return bearer_challenge(
            StatusCode::FORBIDDEN,
            "Bearer realm=\"portcullis-dev-idp\", error=\"insufficient_scope\", scope=\"openid\""
                .into(),
            Some("insufficient_scope"),
        ),
    };
    let Some(user) = user else {
        return invalid();
    };
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(user.sub));
    claims.extend(user_claims(user, &rec.scopes));
    no_store(json(StatusCode::OK, &Value::Object(claims)))
}

pub(crate) fn introspect(state: &State, req: &Req) -> Resp {
    if req.method != Method::POST {
        return method_not_allowed("POST");
    }
    let params = match req.params() {
        Ok(p) => p,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &e),
    };
    // RFC 7662 §2.1: the caller must be authorized; here, any confidential client.
    if let Err(e) = authenticate_client(state, req, &params, false) {
        return e.into_response();
    }
    let Some(token) = params.get("token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    let body = introspection(state, token, params.get("token_type_hint"));
    no_store(json(StatusCode::OK, &body))
}

/// RFC 7662 §2.2: `{"active": false}` and nothing else for anything not currently valid.
fn introspection(state: &State, token: &str, hint: Option<&str>) -> Value {
    let as_access = || {
        live_access_token(state, token).map(|(jti, a)| {
            let mut m = json!({
                "active": true,
                "scope": a.scopes.join(" "),
                "client_id": a.client_id,
                "sub": a.sub,
                "exp": a.exp,
                "iat": a.iat,
                "iss": state.issuer,
                "aud": a.aud,
                "token_type": "Bearer",
                "jti": jti,
            });
            if let Some(user) = a.username.as_deref().and_then(|u| state.user(u)) {
                m["username"] = json!(user.username);
                if let Some(obj) = m.as_object_mut() {
                    obj.extend(user_claims(user, &a.scopes));
                }
            }
            m
        })
    };
    let as_refresh = || {
        let now = state.now();
        let store = state.store();
        let r = store.refresh.get(&digest_key(token))?;
        if r.used || r.exp <= now || store.grant_revoked(&r.grant_id) {
            return None;
        }
        let sub = state.user(&r.username).map(|u| u.sub.clone())?;
        Some(json!({
            "active": true,
            "scope": r.scopes.join(" "),
            "client_id": r.client_id,
            "username": r.username,
            "sub": sub,
            "exp": r.exp,
            "iat": r.iat,
            "iss": state.issuer,
            "token_type": "refresh_token",
        }))
    };
    // RFC 7662 §2.1: the hint orders the search; it does not limit it.
    let found = if hint == Some("refresh_token") {
        as_refresh().or_else(as_access)
    } else {
        as_access().or_else(as_refresh)
    };
    found.unwrap_or_else(|| json!({"active": false}))
}

pub(crate) fn revoke(state: &State, req: &Req) -> Resp {
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
    let Some(token) = params.get("token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    // RFC 7009 §2.1: only the client the token was issued to may revoke it; a refresh
    // token takes the access tokens of its grant with it. §2.2: 200 whether or not the
    // token was known (an unknown hint is ignored, the search goes on).
    let jti = access_token_jti(state, token);
    let mut store = state.store();
    let key = digest_key(token);
    if let Some(r) = store.refresh.get(&key) {
        if r.client_id == client.client_id {
            let grant = r.grant_id.clone();
            store.revoke_grant(&grant);
        }
    } else if let Some(a) = jti.and_then(|j| store.access.get_mut(&j)) {
        if a.client_id == client.client_id {
            a.revoked = true;
        }
    }
    drop(store);
    no_store(text(StatusCode::OK, ""))
}
