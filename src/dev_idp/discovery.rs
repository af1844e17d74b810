//! `GET /.well-known/openid-configuration` (OIDC Discovery 1.0 §3, RFC 8414, RFC 9207 §3)
//! and `GET /jwks` (RFC 7517).

use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use serde_json::json;

use super::knobs::Endpoint;
use super::web::{json, method_not_allowed, Req, Resp};
use super::State;

const CLAIMS: [&str; 16] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "azp",
    "sid",
    "at_hash",
    "amr",
    "email",
    "email_verified",
    "name",
    "preferred_username",
    "groups",
];

/// Metadata and keys are public and may be fetched from browsers.
fn public(mut r: Resp) -> Resp {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

pub(crate) fn configuration(state: &State, req: &Req) -> Resp {
    if req.method != Method::GET {
        return method_not_allowed("GET");
    }
    let mut auth_methods = vec!["client_secret_basic", "client_secret_post"];
    if state.clients.iter().any(|c| c.secret.is_none()) {
        auth_methods.push("none");
    }
    let mut claims: Vec<String> = CLAIMS.iter().map(|s| s.to_string()).collect();
    for u in &state.users {
        for k in u.extra_claims.keys() {
            if !claims.contains(k) {
                claims.push(k.clone());
            }
        }
    }
    let url = |ep| state.endpoint_url(ep);
    let doc = json!({
        "issuer": state.issuer,
        "authorization_endpoint": url(Endpoint::Authorize),
        "token_endpoint": url(Endpoint::Token),
        "userinfo_endpoint": url(Endpoint::Userinfo),
        "jwks_uri": url(Endpoint::Jwks),
        "introspection_endpoint": url(Endpoint::Introspect),
        "revocation_endpoint": url(Endpoint::Revoke),
        "end_session_endpoint": url(Endpoint::EndSession),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": state.scopes_supported,
        "claims_supported": claims,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "authorization_response_iss_parameter_supported": true,
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "frontchannel_logout_supported": false,
        "backchannel_logout_supported": false,
    });
    public(json(StatusCode::OK, &doc))
}

pub(crate) fn jwks(state: &State, req: &Req) -> Resp {
    if req.method != Method::GET {
        return method_not_allowed("GET");
    }
    let doc = state.keys().jwks();
    let mut r = public(json(StatusCode::OK, &doc));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    r
}
