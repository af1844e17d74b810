//! `GET|POST /end_session`: OpenID Connect RP-Initiated Logout 1.0. Ends the provider's
//! login session (and with it the refresh tokens issued under it), then redirects to a
//! registered `post_logout_redirect_uri` or shows a "signed out" page.

use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use jsonwebtoken::Validation;
use serde_json::Value;
use url::Url;

use super::authorize::SESSION_COOKIE;
use super::html::message_page;
use super::keys;
use super::web::{digest_key, html, method_not_allowed, redirect, Req, Resp};
use super::State;

fn error_page(message: &str) -> Resp {
    html(
        StatusCode::BAD_REQUEST,
        message_page("Cannot sign out", message),
    )
}

/// The claims of an ID token this provider signed. RP-Initiated Logout §2: an expired
/// ID token is still a good hint, so only the signature and `iss` are checked.
fn id_token_hint(state: &State, token: &str) -> Option<Value> {
    let mut v = Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_issuer(&[&state.issuer]);
    v.validate_aud = false;
    v.validate_exp = false;
    v.required_spec_claims.clear();
    let data = keys::verify::<Value>(&state.keys(), token, v)?;
    // An access token (typ at+jwt) is not an ID token.
    if data.header.typ.as_deref() == Some("at+jwt") {
        return None;
    }
    Some(data.claims)
}

fn audiences(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn end_session(state: &State, req: &Req) -> Resp {
    if req.method != Method::GET && req.method != Method::POST {
        return method_not_allowed("GET, POST");
    }
    let params = match req.params() {
        Ok(p) => p,
        Err(e) => return error_page(&format!("Invalid logout request: {e}.")),
    };
    let hint = match params.get("id_token_hint") {
        None => None,
        Some(t) => match id_token_hint(state, t) {
            Some(c) => Some(c),
            None => return error_page("The id_token_hint is not an ID token issued here."),
        },
    };
    // The client: from client_id, or the hint's audience; both must agree (§2).
    let hint_aud = hint.as_ref().map(audiences).unwrap_or_default();
    let client_id = match (params.get("client_id"), hint_aud.as_slice()) {
        (Some(c), []) => Some(c.to_string()),
        (Some(c), auds) if auds.iter().any(|a| a == c) => Some(c.to_string()),
        (Some(_), _) => return error_page("client_id does not match the id_token_hint audience."),
        (None, [one]) => Some(one.clone()),
        (None, _) => None,
    };
    // §2: post_logout_redirect_uri must have been registered for the client; unverified,
    // no redirect at all.
    let target = match params.get("post_logout_redirect_uri") {
        None => None,
        Some(uri) => {
            let Some(client) = client_id.as_deref().and_then(|c| state.client(c)) else {
                return error_page(
                    "post_logout_redirect_uri needs an id_token_hint or a known client_id.",
                );
            };
            if !client
                .post_logout_redirect_uris
                .iter()
                .any(|r| r.matches(uri))
            {
                return error_page(&format!(
                    "The post_logout_redirect_uri {uri:?} is not registered for client {:?}.",
                    client.client_id
                ));
            }
            Some(uri.to_string())
        }
    };

    // End the session: the cookie's, and the one the hint names (sid).
    let hint_sid = hint
        .as_ref()
        .and_then(|c| c.get("sid"))
        .and_then(Value::as_str)
        .map(str::to_string);
    {
        let mut store = state.store();
        let mut sids: Vec<String> = hint_sid.into_iter().collect();
        if let Some(c) = req.cookie(SESSION_COOKIE) {
            if let Some(s) = store.sessions.remove(&digest_key(&c)) {
                sids.push(s.sid);
            }
        }
        store.sessions.retain(|_, s| !sids.contains(&s.sid));
        let grants: Vec<String> = store
            .refresh
            .values()
            .filter(|r| sids.contains(&r.sid))
            .map(|r| r.grant_id.clone())
            .collect();
        for g in grants {
            store.revoke_grant(&g);
        }
    }
    tracing::info!(
        client_id = client_id.as_deref().unwrap_or("-"),
        "dev provider: signed out"
    );

    let mut resp = match target {
        Some(uri) => {
            let Ok(mut url) = Url::parse(&uri) else {
                return error_page("The post_logout_redirect_uri is not a valid URL.");
            };
            if let Some(s) = params.get("state") {
                url.query_pairs_mut().append_pair("state", s);
            }
            redirect(StatusCode::FOUND, url.as_str())
        }
        None => html(
            StatusCode::OK,
            message_page(
                "Signed out",
                "You are signed out of the development provider. You can close this window.",
            ),
        ),
    };
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "portcullis_dev_idp_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
        ),
    );
    resp
}
