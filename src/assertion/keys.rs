//! The assertion's signing keys: ES256 keys derived from the session secrets, or keys read
//! from PEM files (ES256 or EdDSA), each with its public JWK and an RFC 7638 thumbprint as
//! its `kid`.
//!
//! Derivation (README "Identity assertion"): HKDF-SHA256 (RFC 5869) with a fixed salt and
//! label turns a 32-byte session secret into a P-256 private scalar. Every replica with
//! the same secrets thus holds the same keys, and publishes the same JWKS, with nothing
//! to distribute. The label separates this use of the secret from the session seal's;
//! the public key reveals nothing of the scalar (discrete logarithm), and the scalar
//! nothing of the secret (HKDF is one-way).

use aws_lc_rs::agreement;
use aws_lc_rs::digest;
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// HKDF salt and label of the derived assertion keys. Fixed forever: changing them changes
/// every derived key (and so every replica's JWKS) at once.
const SALT: &[u8] = b"portcullis identity assertion";
const LABEL: &[u8] = b"portcullis identity assertion ES256 key v1";

/// Why a key could not be made (never says anything of the key itself).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM private key (expected PKCS#8 \"PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\")")]
    NotPem,
    #[error("the key is neither a P-256 (ES256) nor an Ed25519 (EdDSA) private key")]
    Unsupported,
    #[error("no usable key could be derived from the secret")]
    Derivation,
}

/// The signature algorithm of a key, as named in JOSE (RFC 7518 §3.1, RFC 8037 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Es256,
    EdDsa,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

enum Pair {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// One signing key and its public half as a JWK.
pub struct AssertionKey {
    pair: Pair,
    pub kid: String,
    /// The public JWK, `kid`, `alg` and `use` included.
    pub jwk: serde_json::Value,
}

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionKey")
            .field("alg", &self.alg())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AssertionKey {
    /// The ES256 key derived from a session secret: HKDF-SHA256(salt, secret, label) gives
    /// 32 bytes; a counter appended to the label picks the next candidate in the (about
    /// 2^-32 likely) case that they are not a valid P-256 scalar (zero, or not below the
    /// group order).
    pub fn derive(secret: &[u8; 32]) -> Result<AssertionKey, KeyError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
        for counter in 0u8..16 {
            let mut scalar = [0u8; 32];
            let info = [LABEL, &[counter]];
            prk.expand(&info, hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut scalar))
                .map_err(|_| KeyError::Derivation)?;
            if let Ok(pair) = ec_from_scalar(&scalar) {
                return Ok(AssertionKey::new(Pair::Ec(pair)));
            }
        }
        Err(KeyError::Derivation)
    }

    /// A key from a PEM file's contents: PKCS#8 (P-256 or Ed25519) or SEC1 (P-256).
    pub fn from_pem(pem: &[u8]) -> Result<AssertionKey, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::NotPem)?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(k) => {
                let bytes = k.secret_pkcs8_der();
                match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, bytes) {
                    Ok(p) => Pair::Ec(p),
                    Err(_) => Pair::Ed(
                        Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                            .map_err(|_| KeyError::Unsupported)?,
                    ),
                }
            }
            PrivateKeyDer::Sec1(k) => Pair::Ec(
                EcdsaKeyPair::from_private_key_der(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    k.secret_sec1_der(),
                )
                .map_err(|_| KeyError::Unsupported)?,
            ),
            _ => return Err(KeyError::Unsupported),
        };
        Ok(AssertionKey::new(pair))
    }

    fn new(pair: Pair) -> AssertionKey {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        // RFC 7638 §3.2: the required members only, in lexicographic order, no spaces.
        let (mut jwk, thumbprint_input) = match &pair {
            Pair::Ec(p) => {
                // SEC1 uncompressed point: 0x04 || x || y.
                let point = p.public_key().as_ref();
                let (x, y) = (b64(&point[1..33]), b64(&point[33..65]));
                (
                    serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
                    format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                )
            }
            Pair::Ed(p) => {
                let x = b64(p.public_key().as_ref());
                (
                    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
                    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
                )
            }
        };
        let kid = b64(digest::digest(&digest::SHA256, thumbprint_input.as_bytes()).as_ref());
        let alg = match &pair {
            Pair::Ec(_) => Alg::Es256,
            Pair::Ed(_) => Alg::EdDsa,
        };
        jwk["kid"] = kid.clone().into();
        jwk["alg"] = alg.as_str().into();
        jwk["use"] = "sig".into();
        AssertionKey { pair, kid, jwk }
    }

    pub fn alg(&self) -> Alg {
        match self.pair {
            Pair::Ec(_) => Alg::Es256,
            Pair::Ed(_) => Alg::EdDsa,
        }
    }

    /// The JWS signature of `input` (RFC 7518 §3.4: ES256 as R || S, 64 bytes).
    pub fn sign(&self, rng: &SystemRandom, input: &[u8]) -> Option<Vec<u8>> {
        match &self.pair {
            Pair::Ec(p) => p.sign(rng, input).ok().map(|s| s.as_ref().to_vec()),
            Pair::Ed(p) => Some(p.sign(input).as_ref().to_vec()),
        }
    }
}

fn ec_from_scalar(scalar: &[u8; 32]) -> Result<EcdsaKeyPair, ()> {
    if scalar.iter().all(|b| *b == 0) {
        return Err(());
    }
    let private =
        agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, scalar).map_err(|_| ())?;
    let public = private.compute_public_key().map_err(|_| ())?;
    EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        scalar,
        public.as_ref(),
    )
    .map_err(|_| ())
}

/// The JWKS document of `keys`, in their order.
pub fn jwks(keys: &[AssertionKey]) -> Vec<u8> {
    let keys: Vec<&serde_json::Value> = keys.iter().map(|k| &k.jwk).collect();
    serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};

    fn public_bytes(k: &AssertionKey) -> Vec<u8> {
        match &k.pair {
            Pair::Ec(p) => p.public_key().as_ref().to_vec(),
            Pair::Ed(p) => p.public_key().as_ref().to_vec(),
        }
    }

    #[test]
    fn derived_keys_are_deterministic_and_distinct_per_secret() {
        let a1 = AssertionKey::derive(&[7; 32]).unwrap();
        let a2 = AssertionKey::derive(&[7; 32]).unwrap();
        let b = AssertionKey::derive(&[8; 32]).unwrap();
        assert_eq!(a1.kid, a2.kid);
        assert_eq!(a1.jwk, a2.jwk);
        assert_ne!(a1.kid, b.kid);
        assert_eq!(a1.alg(), Alg::Es256);
        // The derived key signs, and its published half verifies.
        let rng = SystemRandom::new();
        let sig = a1.sign(&rng, b"msg").unwrap();
        assert_eq!(sig.len(), 64);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_bytes(&a2))
            .verify(b"msg", &sig)
            .unwrap();
        assert!(
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_bytes(&b))
                .verify(b"msg", &sig)
                .is_err()
        );
        // The secret's bytes appear nowhere in what is published or printed.
        let text = format!("{:?} {}", a1, a1.jwk);
        assert!(!text.contains(&URL_SAFE_NO_PAD.encode([7u8; 32])));
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 §3.1 computes over the RSA example; for EC, recompute from the JWK.
        let k = AssertionKey::derive(&[1; 32]).unwrap();
        let input = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            k.jwk["x"].as_str().unwrap(),
            k.jwk["y"].as_str().unwrap()
        );
        let want = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, input.as_bytes()));
        assert_eq!(k.kid, want);
        assert_eq!(k.jwk["kid"], want.as_str());
        assert_eq!(k.jwk["alg"], "ES256");
        assert!(k.jwk.get("d").is_none());
    }

    #[test]
    fn pem_keys_ec_and_ed25519() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let k = AssertionKey::from_pem(ec.serialize_pem().as_bytes()).unwrap();
        assert_eq!(k.alg(), Alg::Es256);
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let k = AssertionKey::from_pem(ed.serialize_pem().as_bytes()).unwrap();
        assert_eq!(k.alg(), Alg::EdDsa);
        assert_eq!(k.jwk["kty"], "OKP");
        let rng = SystemRandom::new();
        let sig = k.sign(&rng, b"m").unwrap();
        UnparsedPublicKey::new(&ED25519, public_bytes(&k))
            .verify(b"m", &sig)
            .unwrap();
        // Neither a PEM key nor a supported one: clear errors.
        assert!(matches!(
            AssertionKey::from_pem(b"not a key"),
            Err(KeyError::NotPem)
        ));
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            AssertionKey::from_pem(p384.serialize_pem().as_bytes()),
            Err(KeyError::Unsupported)
        ));
    }
}
