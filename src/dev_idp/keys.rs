//! Signing keys: an RS256 (RSA 2048) and an ES256 (P-256) key pair generated at start,
//! published as a JWKS (RFC 7517) with RFC 7638 thumbprints as `kid`; rotation keeps or
//! drops the retired keys.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, TokenData, Validation};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::config::SigningAlg;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("generated key could not be encoded")]
    Encode,
    #[error("JWT: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// One signing key pair.
pub(crate) struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub jwk: Jwk,
}

impl SigningKey {
    fn generate(alg: SigningAlg) -> Result<Self, KeyError> {
        let (encoding, alg) = match alg {
            SigningAlg::RS256 => {
                let kp = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| KeyError::Generate)?;
                let pkcs8 = kp.as_der().map_err(|_| KeyError::Encode)?;
                // jsonwebtoken's RSA keys are PKCS#1 `RSAPrivateKey`, the inside of PKCS#8.
                let pkcs1 = pkcs8_private_key(pkcs8.as_ref()).ok_or(KeyError::Encode)?;
                (EncodingKey::from_rsa_der(pkcs1), Algorithm::RS256)
            }
            SigningAlg::ES256 => {
                let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| KeyError::Generate)?;
                let pkcs8 = kp.to_pkcs8v1().map_err(|_| KeyError::Encode)?;
                (EncodingKey::from_ec_der(pkcs8.as_ref()), Algorithm::ES256)
            }
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg)?;
        // RFC 7638 thumbprint as the key id: stable for the key, distinct across keys.
        let kid = jwk.thumbprint(ThumbprintHash::SHA256)?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&jwk)?;
        Ok(SigningKey {
            kid,
            alg,
            encoding,
            decoding,
            jwk,
        })
    }

    /// Signs `claims` as a compact JWS with this key's `kid` and the given `typ`.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, KeyError> {
        let mut header = Header::new(self.alg);
        header.typ = Some(typ.to_string());
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }
}

/// The live keys: the active pair (what new tokens are signed with) and retired ones that
/// are still published.
pub(crate) struct KeySet {
    rsa: Arc<SigningKey>,
    ec: Arc<SigningKey>,
    retired: Vec<Arc<SigningKey>>,
}

impl KeySet {
    pub fn generate() -> Result<Self, KeyError> {
        Ok(KeySet {
            rsa: Arc::new(SigningKey::generate(SigningAlg::RS256)?),
            ec: Arc::new(SigningKey::generate(SigningAlg::ES256)?),
            retired: Vec::new(),
        })
    }

    /// Makes `fresh`'s keys the active ones. With `keep_old`, the previous keys stay in
    /// the JWKS (tokens they signed still verify); without, they are gone at once.
    pub fn rotate_to(&mut self, fresh: KeySet, keep_old: bool) {
        let old_rsa = std::mem::replace(&mut self.rsa, fresh.rsa);
        let old_ec = std::mem::replace(&mut self.ec, fresh.ec);
        if keep_old {
            self.retired.push(old_rsa);
            self.retired.push(old_ec);
        } else {
            self.retired.clear();
        }
    }

    pub fn active(&self, alg: SigningAlg) -> Arc<SigningKey> {
        match alg {
            SigningAlg::RS256 => self.rsa.clone(),
            SigningAlg::ES256 => self.ec.clone(),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<SigningKey>> {
        [&self.rsa, &self.ec].into_iter().chain(self.retired.iter())
    }

    pub fn kids(&self) -> Vec<String> {
        self.all().map(|k| k.kid.clone()).collect()
    }

    pub fn find(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.all().find(|k| k.kid == kid).cloned()
    }

    /// The JWKS document: active keys first.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<&Jwk> = self.all().map(|k| &k.jwk).collect();
        serde_json::json!({ "keys": keys })
    }
}

/// Verifies a JWT signed by one of the published keys (chosen by `kid`, with the key's own
/// algorithm: a token cannot pick a weaker one, RFC 8725 §3.1).
pub(crate) fn verify<T: DeserializeOwned>(
    keys: &KeySet,
    token: &str,
    mut validation: Validation,
) -> Option<TokenData<T>> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let key = keys.find(header.kid.as_deref()?)?;
    if header.alg != key.alg {
        return None;
    }
    validation.algorithms = vec![key.alg];
    jsonwebtoken::decode(token, &key.decoding, &validation).ok()
}

/// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo` (RFC 5208 §5):
/// `SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey, ... }`.
fn pkcs8_private_key(der: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, rest) = der_element(body)?;
    if tag != 0x02 {
        return None;
    }
    let (tag, _, rest) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, key, _) = der_element(rest)?;
    (tag == 0x04).then_some(key)
}

/// One DER element: (tag, contents, the bytes after it).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify() {
        let keys = KeySet::generate().unwrap();
        for alg in [SigningAlg::RS256, SigningAlg::ES256] {
            let key = keys.active(alg);
            let jwt = key
                .sign(
                    "JWT",
                    &serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}),
                )
                .unwrap();
            let data: TokenData<serde_json::Value> =
                verify(&keys, &jwt, Validation::new(key.alg)).unwrap();
            assert_eq!(data.claims["sub"], "x");
            assert_eq!(data.header.kid.as_deref(), Some(key.kid.as_str()));
        }
        let jwks = keys.jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn der_reader_refuses_truncated_input() {
        assert!(pkcs8_private_key(&[0x30, 0x82, 0x01]).is_none());
        assert!(pkcs8_private_key(&[]).is_none());
        assert!(pkcs8_private_key(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_none());
    }
}
