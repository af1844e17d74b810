//! `GET /oauth2/callback`: the end of a login, in the order of OIDC Core 3.1.2.7 and
//! 3.1.3:
//!
//! 1. every parameter at most once (RFC 6749 §3.1); a response with one given twice ends
//!    the transactions any of its `state`s names, and makes no session;
//! 2. `state` names a transaction this browser started (RFC 6749 §10.12); from here on its
//!    cookie is removed whatever happens (one-time use);
//! 3. an `error` from the provider is shown (RFC 6749 §4.1.2.1);
//! 4. `iss` is the provider's when sent, and required when advertised (RFC 9207 §2.4);
//! 5. the code is exchanged with the PKCE verifier (RFC 6749 §4.1.3, RFC 7636 §4.5);
//! 6. the ID token is validated (3.1.3.7: signature, `iss`, `aud`, `azp`, `exp`, `nonce`;
//!    3.1.3.8: `at_hash`);
//! 7. a new session is saved (never the one the browser brought: no fixation), and the
//!    browser goes to its validated `rd`.

use std::sync::Arc;

use http::header::HeaderValue;
use http::HeaderMap;

use super::id_token::{self, IdTokenClaims, IdTokenError};
use super::pages::LoginError;
use super::params::Params;
use super::token_endpoint::{access_expiry, TokenCallError, TokenResponse};
use super::Login;
use crate::body::Resp;
use crate::config::Secret;
use crate::error::redirect;
use crate::identity::Identity;
use crate::session::transaction::LoginTransaction;
use crate::session::{Session, SessionError};

/// The most `state` values of one response that are looked up to end their transactions.
const MAX_STATES: usize = 8;

impl Login {
    /// `GET /oauth2/callback`
    pub async fn callback(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        request_id: &str,
    ) -> Resp {
        let params = Params::parse(query);
        let now = self.now();
        // 1. RFC 6749 §3.1: a response that names a parameter twice is not one we read.
        // Whichever transaction one of its states names is spent with it: it came back in
        // a response that someone tampered with.
        if let Some(name) = params.repeated(None) {
            let spent: Vec<HeaderValue> = params
                .all("state")
                .take(MAX_STATES)
                .filter_map(|state| self.tx.take(headers, state, now))
                .map(|taken| taken.delete)
                .collect();
            return self.fail(LoginError::RepeatedParameter(name), request_id, spent);
        }
        // 2. RFC 6749 §10.12: the state must match a login this browser started. Without
        // one there is no transaction to remove (other tabs' logins are left alone).
        let Some(state) = params.get("state") else {
            return self.fail(LoginError::NoState, request_id, Vec::new());
        };
        let Some(taken) = self.tx.take(headers, state, now) else {
            return self.fail(LoginError::UnknownTransaction, request_id, Vec::new());
        };
        let mut cookies = vec![taken.delete];
        match self.finish(&params, &taken.tx, headers, request_id).await {
            Ok((session_cookies, rd)) => {
                cookies.extend(session_cookies);
                redirect(&rd, cookies)
            }
            Err(e) => self.fail(e, request_id, cookies),
        }
    }

    /// Steps 3 to 7: the session's `Set-Cookie` values and where to go.
    async fn finish(
        &self,
        params: &Params<'_>,
        tx: &LoginTransaction,
        headers: &HeaderMap,
        request_id: &str,
    ) -> Result<(Vec<HeaderValue>, String), LoginError> {
        // 3. RFC 6749 §4.1.2.1
        if let Some(error) = params.get("error") {
            return Err(LoginError::ProviderRefused {
                error: error.to_string(),
                description: params.get("error_description").map(String::from),
            });
        }
        // 4. RFC 9207 §2.4: check `iss` when sent, and require it when advertised.
        match params.get("iss") {
            Some(iss) if iss != self.issuer => return Err(LoginError::WrongIssuer),
            None if self
                .id_validator
                .metadata(0)
                .is_some_and(|m| m.authorization_response_iss_parameter_supported) =>
            {
                return Err(LoginError::MissingIssuer)
            }
            _ => {}
        }
        // 5.
        let code = params.get("code").ok_or(LoginError::NoCode)?;
        let tokens = self
            .exchange(code, tx)
            .await
            .map_err(LoginError::Exchange)?;
        // 6.
        let id_token = tokens.id_token.as_deref().ok_or(LoginError::NoIdToken)?;
        let (identity, claims) = self
            .validate_id_token(id_token, &tokens.access_token)
            .await
            .map_err(LoginError::IdToken)?;
        // 3.1.3.7 step 11: the nonce this login sent.
        id_token::nonce(&claims, tx.nonce.expose()).map_err(LoginError::IdToken)?;
        // 7.
        let mut session = self.new_session(&identity, &claims, &tokens);
        let cookies = self.save_new(&mut session, headers, request_id).await?;
        tracing::info!(request_id, user = %identity.subject(), "login");
        Ok((cookies, self.safe_rd(Some(&tx.rd))))
    }

    /// The code exchange at the token endpoint named by discovery.
    async fn exchange(
        &self,
        code: &str,
        tx: &LoginTransaction,
    ) -> Result<TokenResponse, Arc<TokenCallError>> {
        let endpoint = self.token_endpoint_url().map_err(Arc::new)?;
        self.token_endpoint
            .exchange(
                &endpoint,
                code,
                &self.redirect_uri(),
                tx.pkce_verifier.expose(),
            )
            .await
            .map_err(Arc::new)
    }

    /// The token endpoint of the discovered metadata.
    pub(super) fn token_endpoint_url(&self) -> Result<String, TokenCallError> {
        self.id_validator
            .metadata(0)
            .ok_or(TokenCallError::NotReady)?
            .token_endpoint
            .clone()
            .ok_or(TokenCallError::NoEndpoint)
    }

    /// An ID token as OIDC Core 3.1.3.7 (but for the nonce) and 3.1.3.8 have it, with the
    /// access token of the same token response. Used for the first ID token and for those
    /// that come with a refresh (12.2: "validated as in 3.1.3.7", no nonce).
    pub(super) async fn validate_id_token(
        &self,
        id_token: &str,
        access_token: &str,
    ) -> Result<(Arc<Identity>, IdTokenClaims), IdTokenError> {
        // Steps 1-3, 6-10: signature by the issuer's keys, iss, aud has the client id,
        // exp/nbf by our clock.
        let identity = self
            .id_validator
            .validate(id_token)
            .await
            .map_err(IdTokenError::from_validator)?;
        // An ID token bound to a key (`cnf`) is not one a browser login can use.
        if identity.binding().is_some() {
            return Err(IdTokenError::from_validator(
                crate::token::TokenError::SenderConstrained,
            ));
        }
        let claims = IdTokenClaims::read(id_token)?;
        // Steps 3-5 in full, and at_hash.
        self.id_token_rules().check(&claims, Some(access_token))?;
        Ok((identity, claims))
    }

    /// A new session from a validated ID token and its token response.
    fn new_session(
        &self,
        id: &Identity,
        claims: &IdTokenClaims,
        tokens: &TokenResponse,
    ) -> Session {
        let now = self.now();
        let mut s = Session::new(
            self.issuer.clone(),
            id.subject(),
            Secret::new(tokens.access_token.clone()),
            now,
            self.lifetime,
        );
        s.email = id.email().map(String::from);
        s.email_verified = id.email_verified;
        s.preferred_username = id.preferred_username().map(String::from);
        s.name = id.name().map(String::from);
        s.groups = id.groups.iter().map(|g| g.to_string()).collect();
        s.claims = id
            .claims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.sid = claims.sid.clone();
        s.login_claims = Some(claims.login_claims());
        s.scopes = tokens
            .scope
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect();
        s.refresh_token = tokens.refresh_token.clone().map(Secret::new);
        s.id_token = tokens.id_token.clone().map(Secret::new);
        s.access_expires_at = tokens.expires_in.map(|e| access_expiry(now, e));
        s
    }

    /// Saves a new session: a fresh cookie value or ticket whatever the browser brought
    /// (no session fixation). A session too large for the cookie store drops its ID token
    /// (kept only as `id_token_hint`, where `client_id` also serves) before giving up.
    async fn save_new(
        &self,
        session: &mut Session,
        headers: &HeaderMap,
        request_id: &str,
    ) -> Result<Vec<HeaderValue>, LoginError> {
        let now = self.now();
        let mut saved = self.store.save(session, headers, now).await;
        if matches!(saved, Err(SessionError::TooLarge { .. })) && session.id_token.is_some() {
            tracing::info!(
                request_id,
                "session too large for the cookie store; dropping the ID token"
            );
            session.id_token = None;
            saved = self.store.save(session, headers, now).await;
        }
        saved.map_err(|e| match e {
            SessionError::TooLarge { bytes } => LoginError::SessionTooLarge { bytes },
            SessionError::Unavailable(_) => LoginError::SessionStoreUnavailable(e),
            other => LoginError::SessionNotSaved(other),
        })
    }
}
