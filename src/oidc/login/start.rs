//! `GET /oauth2/start?rd=/x`: a new login transaction (`state`, `nonce`, PKCE S256
//! verifier, `rd`) sealed in its own cookie, and the redirect to the provider's
//! authorization endpoint (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC Core 3.1.2.1).

use http::HeaderMap;

use super::pages::LoginError;
use super::params::Params;
use super::Login;
use crate::body::Resp;
use crate::error::redirect;
use crate::oidc::transport::form_urlencode;
use crate::session::transaction::LoginTransaction;

impl Login {
    /// `GET /oauth2/start`
    pub fn start(&self, query: Option<&str>, headers: &HeaderMap, request_id: &str) -> Resp {
        match self.begin(query, headers) {
            Ok(to_provider) => to_provider,
            Err(e) => self.fail(e, request_id, Vec::new()),
        }
    }

    fn begin(&self, query: Option<&str>, headers: &HeaderMap) -> Result<Resp, LoginError> {
        let params = Params::parse(query);
        // RFC 6749 §3.1: which of two `rd`s is meant is not for us to guess.
        if let Some(name) = params.repeated(Some(&["rd"])) {
            return Err(LoginError::RepeatedParameter(name));
        }
        let rd = self.safe_rd(params.get("rd"));
        let meta = self
            .id_validator
            .metadata(0)
            .ok_or(LoginError::ProviderNotReady)?;
        let authz = meta
            .authorization_endpoint
            .clone()
            .ok_or(LoginError::NoAuthorizationEndpoint)?;
        let now = self.now();
        let tx = LoginTransaction::new(rd, now).map_err(LoginError::Transaction)?;
        let cookies = self
            .tx
            .begin(&tx, headers, now)
            .map_err(LoginError::Transaction)?;
        let mut params: Vec<(&str, String)> = vec![
            ("response_type", "code".into()),
            ("client_id", self.client_id.clone()),
            ("redirect_uri", self.redirect_uri()),
            ("scope", self.scopes.clone()),
            ("state", tx.state.expose().clone()),
            ("nonce", tx.nonce.expose().clone()),
            ("code_challenge", tx.pkce_challenge()),
            ("code_challenge_method", "S256".into()),
        ];
        for (k, v) in &self.extra_auth_params {
            // The protocol parameters above are not for configuration to override (nor to
            // repeat: RFC 6749 §3.1).
            if !params.iter().any(|(p, _)| p == k) {
                params.push((k.as_str(), v.clone()));
            }
        }
        let mut url = authz;
        url.push(if url.contains('?') { '&' } else { '?' });
        let q: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", form_urlencode(k), form_urlencode(v)))
            .collect();
        url.push_str(&q.join("&"));
        Ok(redirect(&url, cookies))
    }
}
