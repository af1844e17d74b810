//! `GET|POST /oauth2/sign_out?rd=/x`: clears the session here (and the browser's login
//! transactions) and puts its id in the revocation set until the session would have
//! expired, so that a copy of its cookie taken before is refused too, by every replica
//! that shares the set; then RP-initiated logout at the provider when it offers it (OIDC
//! RP-Initiated Logout 1.0 §2, with `id_token_hint`), else `provider.logout_url` (Auth0's
//! `/v2/logout`), else straight to `rd`. When the revocation cannot be recorded (Redis
//! unreachable) the browser's cookies are still expired, but the answer is a 503 page:
//! the sign-out is not complete. Doing it by GET can only log the user out and land
//! on a validated `rd`: nothing else a forged link could make happen.

use http::HeaderMap;

use super::pages::LoginError;
use super::params::Params;
use super::Login;
use crate::body::Resp;
use crate::error::redirect;
use crate::oidc::transport::form_urlencode;
use crate::revocation::Target;

impl Login {
    /// `GET|POST /oauth2/sign_out`
    pub async fn sign_out(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        request_id: &str,
    ) -> Resp {
        let t = self.now();
        let params = Params::parse(query);
        let session = self.store.load(headers, t).await.ok().flatten();
        let mut cookies = match self.store.clear(headers, t).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(request_id, error = %e, "session store unavailable at sign-out");
                self.store.expire_cookies(headers)
            }
        };
        cookies.extend(self.tx.expire_all(headers));
        if let Some(s) = &session {
            let until = s.session.ends_at(self.lifetime);
            if let Err(e) = self
                .revocations
                .revoke(Target::Session(&s.session.id), until, t)
                .await
            {
                return self.fail(LoginError::RevocationUnavailable(e), request_id, cookies);
            }
            tracing::info!(request_id, user = %s.session.sub, "signed out");
        }
        // RFC 6749 §3.1: with two `rd`s there is no knowing where to land. The session is
        // cleared all the same (signing out is what was asked), but the browser goes
        // nowhere: a page, not a redirect.
        if let Some(name) = params.repeated(Some(&["rd"])) {
            return self.fail(LoginError::RepeatedParameter(name), request_id, cookies);
        }
        let rd = self.safe_rd(params.get("rd"));
        let return_to = absolute(&self.public_url, &rd);
        let meta = self.id_validator.metadata(0);
        if let Some(end) = meta.as_ref().and_then(|m| m.end_session_endpoint.clone()) {
            // OIDC RP-Initiated Logout 1.0 §2.
            let mut url = end;
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("client_id={}", form_urlencode(&self.client_id)));
            url.push_str(&format!(
                "&post_logout_redirect_uri={}",
                form_urlencode(&return_to)
            ));
            if let Some(idt) = session.as_ref().and_then(|s| s.session.id_token.as_ref()) {
                url.push_str(&format!("&id_token_hint={}", form_urlencode(idt.expose())));
            }
            return redirect(&url, cookies);
        }
        if let Some(tpl) = &self.logout_url {
            // e.g. Auth0's /v2/logout?client_id={client_id}&returnTo={return_to}
            let url = tpl
                .replace("{client_id}", &form_urlencode(&self.client_id))
                .replace("{return_to}", &form_urlencode(&return_to));
            return redirect(&url, cookies);
        }
        redirect(&rd, cookies)
    }
}

/// `rd` (a path or an allowed absolute URL) as an absolute URL on `base`.
fn absolute(base: &url::Url, rd: &str) -> String {
    base.join(rd)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| base.to_string())
}
