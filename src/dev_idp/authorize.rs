//! `GET|POST /authorize` (RFC 6749 §4.1.1, OIDC Core §3.1.2) and the login form it shows;
//! `POST /authorize/login` signs the user in and answers the client with a one-time code
//! (RFC 6749 §4.1.2) and the issuer (RFC 9207).

use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use url::Url;

use super::config::{DevClient, Grant};
use super::html::{escape, idp_page, message_page};
use super::store::{AuthRequest, CodeRecord, SessionRecord, Store};
use super::web::{digest_key, html, method_not_allowed, random_token, redirect, Req, Resp};
use super::State;

/// The provider's login session cookie.
pub(crate) const SESSION_COOKIE: &str = "portcullis_dev_idp_session";

/// Errors before the client and its redirect URI are known good are shown to the user,
/// never sent to an unverified redirect URI (RFC 6749 §4.1.2.1).
fn error_page(message: &str) -> Resp {
    html(
        StatusCode::BAD_REQUEST,
        message_page("Cannot sign in", message),
    )
}

/// A redirect to the client's (validated) `redirect_uri` with `params` added to its query.
fn redirect_to_client(
    state: &State,
    status: StatusCode,
    redirect_uri: &str,
    params: &[(&str, Option<&str>)],
) -> Resp {
    let Ok(mut url) = Url::parse(redirect_uri) else {
        return error_page("The redirect URI is not a valid URL.");
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        // RFC 9207 §2: iss in every authorization response, success or error.
        q.append_pair("iss", &state.issuer);
    }
    redirect(status, url.as_str())
}

/// An RFC 6749 §4.1.2.1 error response.
fn error_redirect(
    state: &State,
    status: StatusCode,
    req: &AuthRequest,
    error: &str,
    description: &str,
) -> Resp {
    redirect_to_client(
        state,
        status,
        &req.redirect_uri,
        &[
            ("error", Some(error)),
            ("error_description", Some(description)),
            ("state", req.state.as_deref()),
        ],
    )
}

pub(crate) fn authorize(state: &State, req: &Req) -> Resp {
    if req.method != Method::GET && req.method != Method::POST {
        return method_not_allowed("GET, POST");
    }
    let params = match req.params() {
        Ok(p) => p,
        Err(e) => return error_page(&format!("Invalid authorization request: {e}.")),
    };
    // RFC 6749 §4.1.2.1: client_id and redirect_uri are checked first; their errors are
    // not redirected.
    let Some(client_id) = params.get("client_id") else {
        return error_page("The authorization request has no client_id.");
    };
    let Some(client) = state.client(client_id) else {
        return error_page(&format!("Unknown client {client_id:?}."));
    };
    // OIDC Core §3.1.2.1: redirect_uri is required and must exactly match a registered one.
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return error_page("The authorization request has no redirect_uri.");
    };
    if !client.redirect_uris.iter().any(|r| r.matches(redirect_uri)) {
        return error_page(&format!(
            "The redirect_uri {redirect_uri:?} is not registered for client {client_id:?}."
        ));
    }
    let state_param = params.get("state");
    let found = StatusCode::FOUND;
    let fail = |error: &str, description: &str| {
        redirect_to_client(
            state,
            found,
            redirect_uri,
            &[
                ("error", Some(error)),
                ("error_description", Some(description)),
                ("state", state_param),
            ],
        )
    };
    if !client.has_grant(Grant::AuthorizationCode) {
        return fail(
            "unauthorized_client",
            "this client may not use the authorization code flow",
        );
    }
    if params.get("request").is_some() {
        return fail("request_not_supported", "request objects are not supported");
    }
    if params.get("request_uri").is_some() {
        return fail("request_uri_not_supported", "request_uri is not supported");
    }
    match params.get("response_type") {
        None => return fail("invalid_request", "response_type is required"),
        Some("code") => {}
        Some(_) => {
            return fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            )
        }
    }
    if params.get("response_mode").is_some_and(|m| m != "query") {
        return fail("invalid_request", "only response_mode=query is supported");
    }
    let scopes = match parse_scopes(client, params.get("scope")) {
        Ok(s) => s,
        Err(msg) => return fail("invalid_scope", &msg),
    };
    // RFC 7636 §4.3, OAuth 2.0 Security BCP §2.1.1: PKCE with S256 is required; the
    // default method (plain) is refused.
    let Some(challenge) = params.get("code_challenge") else {
        return fail(
            "invalid_request",
            "code_challenge is required (PKCE with S256)",
        );
    };
    match params.get("code_challenge_method") {
        Some("S256") => {}
        None | Some("plain") => {
            return fail(
                "invalid_request",
                "code_challenge_method=S256 is required; plain is not allowed",
            )
        }
        Some(_) => {
            return fail(
                "invalid_request",
                "unsupported code_challenge_method; use S256",
            )
        }
    }
    // BASE64URL(SHA256(verifier)): 43 characters of the base64url alphabet.
    if challenge.len() != 43
        || !challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return fail("invalid_request", "code_challenge is not an S256 challenge");
    }
    let prompt: Vec<&str> = params
        .get("prompt")
        .map(|p| p.split_ascii_whitespace().collect())
        .unwrap_or_default();
    if prompt
        .iter()
        .any(|p| !matches!(*p, "none" | "login" | "consent" | "select_account"))
    {
        return fail("invalid_request", "unknown prompt value");
    }
    // OIDC Core §3.1.2.1: none must stand alone.
    if prompt.contains(&"none") && prompt.len() > 1 {
        return fail("invalid_request", "prompt=none cannot be combined");
    }
    let max_age = match params.get("max_age").map(str::parse::<u64>) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(_)) => return fail("invalid_request", "max_age must be a number of seconds"),
    };
    let now = state.now();
    let lifetimes = state.settings().lifetimes;
    let auth = AuthRequest {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_string(),
        scopes,
        state: state_param.map(str::to_string),
        nonce: params.get("nonce").map(str::to_string),
        code_challenge: challenge.to_string(),
        expires: now + lifetimes.login_transaction.as_secs().max(1),
    };

    let mut store = state.store();
    // An existing login session at the provider answers at once, unless the client asks
    // for a fresh login (prompt=login, or max_age exceeded: OIDC Core §3.1.2.1).
    if state.sso_session && !prompt.contains(&"login") {
        let session = req
            .cookie(SESSION_COOKIE)
            .and_then(|c| store.sessions.get(&digest_key(&c)).cloned())
            .filter(|s| s.expires > now)
            .filter(|s| max_age.is_none_or(|m| now.saturating_sub(s.auth_time) <= m));
        if let Some(s) = session {
            let code = new_code(state, &mut store, &auth, &s.username, s.auth_time, &s.sid);
            return code_redirect(state, found, &auth, &code);
        }
    }
    if prompt.contains(&"none") {
        return fail("login_required", "no login session at the provider");
    }
    let tx = random_token(24);
    store.login_txs.insert(tx.clone(), auth.clone());
    store.maybe_gc(now);
    drop(store);
    html(
        StatusCode::OK,
        login_page(state, &client.client_id, &tx, "", None),
    )
}

/// Space-separated scopes, each one the client may have (RFC 6749 §3.3).
fn parse_scopes(client: &DevClient, scope: Option<&str>) -> Result<Vec<String>, String> {
    let Some(scope) = scope else {
        return Err("scope is required".into());
    };
    let mut out: Vec<String> = Vec::new();
    for s in scope.split_ascii_whitespace() {
        if !client.scopes.iter().any(|c| c == s) {
            return Err(format!("scope {s} is not allowed for this client"));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    if out.is_empty() {
        return Err("scope is required".into());
    }
    Ok(out)
}

fn new_code(
    state: &State,
    store: &mut Store,
    auth: &AuthRequest,
    username: &str,
    auth_time: u64,
    sid: &str,
) -> String {
    let now = state.now();
    let code = random_token(32);
    store.codes.insert(
        digest_key(&code),
        CodeRecord {
            req: auth.clone(),
            username: username.to_string(),
            auth_time,
            sid: sid.to_string(),
            expires: now + state.settings().lifetimes.code.as_secs().max(1),
            grant_id: None,
            used: false,
        },
    );
    code
}

fn code_redirect(state: &State, status: StatusCode, auth: &AuthRequest, code: &str) -> Resp {
    redirect_to_client(
        state,
        status,
        &auth.redirect_uri,
        &[("code", Some(code)), ("state", auth.state.as_deref())],
    )
}

/// The login form. The form carries only the login transaction id; the request it
/// answers stays on the server, out of reach of tampering.
fn login_page(
    state: &State,
    client_id: &str,
    tx: &str,
    username: &str,
    error: Option<&str>,
) -> String {
    let error = error
        .map(|e| format!("<div class=\"error\" role=\"alert\">{}</div>", escape(e)))
        .unwrap_or_default();
    let users = if state.show_users_on_form && !state.users.is_empty() {
        let rows: String = state
            .users
            .iter()
            .map(|u| {
                format!(
                    "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                    escape(&u.username),
                    escape(u.password.expose()),
                    escape(&u.name),
                    escape(&u.groups.join(", "))
                )
            })
            .collect();
        format!(
            "<div class=\"hint\"><strong>Demo users</strong><table><thead><tr><th>username</th>\
             <th>password</th><th>name</th><th>groups</th></tr></thead><tbody>{rows}</tbody>\
             </table></div>"
        )
    } else {
        String::new()
    };
    idp_page(
        "Sign in",
        &format!(
            "<div class=\"card\"><h1>Sign in</h1><p class=\"sub\">to continue to <strong>{client}</strong></p>\
             {error}<form method=\"post\" action=\"/authorize/login\">\
             <input type=\"hidden\" name=\"tx\" value=\"{tx}\">\
             <label for=\"username\">Username</label>\
             <input type=\"text\" id=\"username\" name=\"username\" value=\"{username}\" autocomplete=\"username\" autofocus required>\
             <label for=\"password\">Password</label>\
             <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
             <div class=\"actions\"><button type=\"submit\">Sign in</button>\
             <button type=\"submit\" name=\"cancel\" value=\"1\" class=\"secondary\" formnovalidate>Cancel</button></div>\
             </form>{users}</div>",
            client = escape(client_id),
            tx = escape(tx),
            username = escape(username),
        ),
    )
}

pub(crate) fn login(state: &State, req: &Req) -> Resp {
    if req.method != Method::POST {
        return method_not_allowed("POST");
    }
    let params = match req.params() {
        Ok(p) => p,
        Err(e) => return error_page(&format!("Invalid login form: {e}.")),
    };
    let expired = "This sign-in request has expired or was already used. \
                   Go back to the application and sign in again.";
    let Some(tx) = params.get("tx") else {
        return error_page(expired);
    };
    let now = state.now();
    let mut store = state.store();
    let Some(auth) = store.login_txs.get(tx).filter(|a| a.expires > now).cloned() else {
        return error_page(expired);
    };
    let see_other = StatusCode::SEE_OTHER;
    if params.get("cancel").is_some() {
        store.login_txs.remove(tx);
        return error_redirect(
            state,
            see_other,
            &auth,
            "access_denied",
            "the user cancelled the sign-in",
        );
    }
    let username = params.get("username").unwrap_or_default();
    let password = params.get("password").unwrap_or_default();
    let Some(user) = check_credentials(state, username, password) else {
        drop(store);
        tracing::info!("dev provider: failed sign-in");
        return html(
            StatusCode::UNAUTHORIZED,
            login_page(
                state,
                &auth.client_id,
                tx,
                username,
                Some("Wrong username or password."),
            ),
        );
    };
    store.login_txs.remove(tx);
    let lifetimes = state.settings().lifetimes;
    let sid = random_token(16);
    let mut cookie = None;
    if state.sso_session {
        let value = random_token(32);
        store.sessions.insert(
            digest_key(&value),
            SessionRecord {
                username: user.username.clone(),
                auth_time: now,
                sid: sid.clone(),
                expires: now + lifetimes.session.as_secs().max(1),
            },
        );
        cookie = Some(format!(
            "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
            lifetimes.session.as_secs()
        ));
    }
    let code = new_code(state, &mut store, &auth, &user.username, now, &sid);
    drop(store);
    tracing::info!(user = %user.username, client_id = %auth.client_id, "dev provider: signed in");
    let mut resp = code_redirect(state, see_other, &auth, &code);
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

fn check_credentials<'s>(
    state: &'s State,
    username: &str,
    password: &str,
) -> Option<&'s super::DevUser> {
    let user = state.user(username)?;
    user.password.ct_eq(password.as_bytes()).then_some(user)
}
