//! A jsonwebtoken [`CryptoProvider`] that verifies asymmetric signatures with pre-parsed
//! aws-lc keys.
//!
//! jsonwebtoken's stock aws-lc provider rebuilds the public key (and, for RSA, its
//! Montgomery context) on every verification, which costs about as much as the RSA
//! verification itself. This provider keeps the parsed key per (algorithm, exact key
//! bytes) and otherwise delegates to the stock provider: HMAC, signing and key utilities
//! are unchanged, and a key of the wrong family is refused exactly as before.
//! jsonwebtoken still does all claim validation.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use jsonwebtoken::crypto::{aws_lc, CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

/// Parsed keys kept at most; beyond that the map is emptied (keys are parsed again).
const MAX_PARSED_KEYS: usize = 256;

/// Parsed keys by (algorithm, kind of key material) then by the key bytes (the RSA
/// modulus, or the DER / raw public key); the RSA exponent is compared on lookup. Exact
/// bytes, so two keys can never share an entry; the kind tag keeps `(n, e)` components and
/// DER bytes apart.
type ParsedKeys = HashMap<(Algorithm, u8), HashMap<Box<[u8]>, (Box<[u8]>, Arc<ParsedPublicKey>)>>;

fn parsed_keys() -> &'static RwLock<ParsedKeys> {
    static KEYS: OnceLock<RwLock<ParsedKeys>> = OnceLock::new();
    KEYS.get_or_init(|| RwLock::new(HashMap::new()))
}

fn provider() -> &'static CryptoProvider {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    PROVIDER.get_or_init(|| CryptoProvider {
        signer_factory: aws_lc::DEFAULT_PROVIDER.signer_factory,
        verifier_factory: new_verifier,
        key_utils: aws_lc::DEFAULT_PROVIDER.key_utils.clone(),
    })
}

/// Installs this provider as jsonwebtoken's process default. Call it at the top of
/// `main`, instead of installing jsonwebtoken's own aws-lc provider. Idempotent; returns
/// `false` if another provider was installed (or used) first, in which case tokens are
/// still verified correctly by that provider, only slower.
pub fn install_jwt_crypto_provider() -> bool {
    let ours = provider();
    match ours.install_default() {
        Ok(()) => true,
        Err(current) => std::ptr::eq(current, ours),
    }
}

/// The aws-lc verification algorithm jsonwebtoken's stock provider uses for `alg`
/// (RFC 7518 §3.3 RSA ≥ 2048 bits, §3.4 ECDSA fixed-size signatures, RFC 8037 Ed25519).
fn verification_algorithm(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &sig::ED25519,
        _ => return None,
    })
}

/// (kind tag, main bytes, RSA exponent or empty).
fn key_material(key: &DecodingKey) -> (u8, &[u8], &[u8]) {
    match key.kind() {
        DecodingKeyKind::SecretOrDer(b) => (0, b, &[]),
        DecodingKeyKind::RsaModulusExponent { n, e } => (1, n, e),
    }
}

fn parse(params: &'static dyn VerificationAlgorithm, key: &DecodingKey) -> Option<ParsedPublicKey> {
    match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => ParsedPublicKey::new(params, bytes).ok(),
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            let der = sig::RsaPublicKeyComponents { n, e }.as_der().ok()?;
            ParsedPublicKey::new(params, der.as_ref()).ok()
        }
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let stock = aws_lc::DEFAULT_PROVIDER.verifier_factory;
    // HMAC, and any key whose family does not fit the algorithm: the stock provider
    // decides (and refuses the mismatch with InvalidKeyFormat), RFC 8725 §3.1.
    let Some(params) = verification_algorithm(*alg) else {
        return stock(alg, key);
    };
    if key.family() != alg.family() {
        return stock(alg, key);
    }
    let (kind, main, exponent) = key_material(key);
    let cached = parsed_keys()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(*alg, kind))
        .and_then(|m| m.get(main))
        .filter(|(e, _)| &**e == exponent)
        .map(|(_, p)| p.clone());
    let parsed = match cached {
        Some(p) => p,
        None => {
            let Some(p) = parse(params, key) else {
                return Err(ErrorKind::InvalidKeyFormat.into());
            };
            let p = Arc::new(p);
            let mut map = parsed_keys().write().unwrap_or_else(|e| e.into_inner());
            if map.values().map(HashMap::len).sum::<usize>() >= MAX_PARSED_KEYS {
                map.clear();
            }
            map.entry((*alg, kind))
                .or_default()
                .insert(main.into(), (exponent.into(), p.clone()));
            p
        }
    };
    Ok(Box::new(ParsedVerifier {
        alg: *alg,
        key: parsed,
    }))
}

struct ParsedVerifier {
    alg: Algorithm,
    key: Arc<ParsedPublicKey>,
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for ParsedVerifier {
    fn verify(
        &self,
        msg: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), jsonwebtoken::signature::Error> {
        self.key
            .verify_sig(msg, signature)
            .map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtVerifier for ParsedVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestKey;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn decoding_key(k: &TestKey) -> DecodingKey {
        let jwk = k.jwk("k");
        let b = |f: &str| URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
        match jwk["kty"].as_str().unwrap() {
            "RSA" => DecodingKey::from_rsa_raw_components(&b("n"), &b("e")),
            "EC" => {
                let mut p = vec![4u8];
                p.extend(b("x"));
                p.extend(b("y"));
                DecodingKey::from_ec_der(&p)
            }
            _ => DecodingKey::from_ed_der(&b("x")),
        }
    }

    #[test]
    fn parsed_verifier_agrees_with_the_stock_provider() {
        let cases: [(&TestKey, Algorithm, &str); 5] = [
            (TestKey::rsa(), Algorithm::RS256, "RS256"),
            (TestKey::rsa(), Algorithm::PS512, "PS512"),
            (TestKey::p256(), Algorithm::ES256, "ES256"),
            (TestKey::p384(), Algorithm::ES384, "ES384"),
            (TestKey::ed25519(), Algorithm::EdDSA, "EdDSA"),
        ];
        let stock = aws_lc::DEFAULT_PROVIDER.verifier_factory;
        for (k, alg, name) in cases {
            let dk = decoding_key(k);
            let msg = b"header.payload";
            let good = k.sign(name, msg);
            let mut bad = good.clone();
            bad[5] ^= 1;
            for _ in 0..2 {
                // Second round: from the parsed-key cache.
                let ours = new_verifier(&alg, &dk).unwrap();
                let theirs = stock(&alg, &dk).unwrap();
                assert!(ours.verify(msg, &good).is_ok(), "{name}");
                assert!(theirs.verify(msg, &good).is_ok(), "{name}");
                assert!(ours.verify(msg, &bad).is_err(), "{name}");
                assert!(ours.verify(b"header.other", &good).is_err(), "{name}");
            }
        }
    }

    #[test]
    fn wrong_family_and_other_keys_are_refused() {
        let rsa = decoding_key(TestKey::rsa());
        // An RSA key for ES256 / EdDSA / HS256: refused, never reinterpreted.
        for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::HS256] {
            assert!(new_verifier(&alg, &rsa).is_err(), "{alg:?}");
        }
        // A P-256 key for ES384: the curve does not parse for that algorithm.
        let ec = decoding_key(TestKey::p256());
        let v = new_verifier(&Algorithm::ES384, &ec);
        assert!(v.is_err() || v.unwrap().verify(b"m", &vec![0u8; 96]).is_err());
        // Another RSA key's signature does not verify under the cached first key.
        let other = TestKey::rsa_other().sign("RS256", b"m");
        let v = new_verifier(&Algorithm::RS256, &rsa).unwrap();
        assert!(v.verify(b"m", &other).is_err());
    }
}
