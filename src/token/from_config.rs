//! From the validated config to the token validator's own settings.

use std::str::FromStr;

use jsonwebtoken::Algorithm;

use crate::config::{AuthMode, Config, IntrospectionSetting, Secret as ConfigSecret};
use crate::oidc::transport::TransportConfig;
use crate::token::{self, BearerConfig, IssuerConfig};

fn algorithms(names: &[String]) -> Vec<Algorithm> {
    // Names were checked by validation; "none" cannot be among them.
    names
        .iter()
        .filter_map(|a| Algorithm::from_str(a).ok())
        .collect()
}

/// Settings for the token validator, when any route takes bearer tokens. The third value
/// is a fingerprint of the secrets (Debug output redacts them), so a reload that changes
/// only a secret still builds a new validator.
pub fn token_config(c: &Config) -> Option<(BearerConfig, TransportConfig, String)> {
    if !c
        .routes
        .iter()
        .any(|r| matches!(r.auth, AuthMode::Bearer | AuthMode::Either))
    {
        return None;
    }
    let b = c.bearer.as_ref()?;
    let mut fingerprint = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut issuers = Vec::new();
    let secret = |s: &Option<ConfigSecret<String>>, fp: &mut aws_lc_rs::digest::Context| {
        s.as_ref().map(|s| {
            fp.update(s.expose().as_bytes());
            fp.update(&[0]);
            token::Secret::new(s.expose().as_bytes().to_vec())
        })
    };
    if let Some(p) = &c.provider {
        let mut i = IssuerConfig::new(p.issuer.clone(), b.audiences.clone());
        i.algorithms = algorithms(&b.algorithms);
        i.token_file = p.token_file.clone();
        if let Some(hs) = &b.shared_secret {
            fingerprint.update(hs.expose());
            i.hs_secret = Some(token::Secret::new(hs.expose().clone()));
        }
        i.introspection_client_id = b
            .introspection_client_id
            .clone()
            .or_else(|| p.client_id.clone());
        i.introspection_client_secret = secret(&b.introspection_client_secret, &mut fingerprint)
            .or_else(|| secret(&p.client_secret, &mut fingerprint));
        i.introspection_auth = if b.introspection_auth_post {
            token::ClientAuth::Post
        } else {
            token::ClientAuth::Basic
        };
        issuers.push(i);
    }
    for e in &b.issuers {
        let mut i = IssuerConfig::new(e.issuer.clone(), e.audiences.clone());
        i.algorithms = algorithms(&e.algorithms);
        i.discovery = e.jwks_uri.is_none();
        i.jwks_uri = e.jwks_uri.clone();
        i.token_file = e.token_file.clone();
        i.introspection_client_id = e.introspection_client_id.clone();
        i.introspection_client_secret = secret(&e.introspection_client_secret, &mut fingerprint);
        issuers.push(i);
    }
    let wanted = c.referenced_claims();
    let bearer = BearerConfig {
        issuers,
        leeway: b.leeway,
        introspection: match b.introspection {
            IntrospectionSetting::Off => token::IntrospectionMode::Off,
            IntrospectionSetting::Opaque => token::IntrospectionMode::Opaque,
            IntrospectionSetting::Always => token::IntrospectionMode::Always,
            IntrospectionSetting::Userinfo => token::IntrospectionMode::Userinfo,
        },
        scopes_claims: b.scopes_claims.clone(),
        groups_claim: c
            .provider
            .as_ref()
            .map(|p| p.groups_claim.clone())
            .unwrap_or_else(|| "groups".into()),
        wanted_claims: wanted,
        cache_ttl: b.cache_ttl,
        cache_capacity: b.cache_capacity,
        ..BearerConfig::default()
    };
    let transport = TransportConfig {
        timeout: c
            .provider
            .as_ref()
            .map_or(std::time::Duration::from_secs(10), |p| p.timeout),
        ca_file: c
            .provider
            .as_ref()
            .and_then(|p| p.ca_file.clone())
            .or_else(|| b.issuers.iter().find_map(|i| i.ca_file.clone())),
    };
    let fp = fingerprint.finish();
    let fp: String = fp.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Some((bearer, transport, fp))
}
