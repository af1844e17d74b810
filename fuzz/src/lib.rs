//! Helpers shared by the fuzz targets of `fuzz_targets/`: a reader of structured choices
//! from the fuzzer's bytes, the fixed signing keys, JSON with duplicate members kept,
//! TOML string quoting, and the independent route matcher that oracles use.

pub mod keys;
pub mod token_mutation;

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// Structured choices read from fuzz bytes; past the end every read is zero / empty, so
/// any input is a valid program.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }

    /// A number below `n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::from(self.u8()) % n
        }
    }

    /// Bytes up to the next `0xFF` separator (not included) or the end, at most `max`.
    pub fn field(&mut self, max: usize) -> &'a [u8] {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let end = rest.iter().position(|b| *b == 0xFF).unwrap_or(rest.len());
        let end = end.min(max);
        let skip = if rest.get(end) == Some(&0xFF) { 1 } else { 0 };
        self.pos += end + skip;
        &rest[..end]
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        self.pos = self.data.len();
        rest
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// A TOML basic string holding `s` exactly.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn der(pieces: &[&str]) -> Vec<u8> {
    STANDARD.decode(pieces.concat()).expect("key base64")
}

fn rsa() -> &'static RsaKeyPair {
    static K: OnceLock<RsaKeyPair> = OnceLock::new();
    K.get_or_init(|| RsaKeyPair::from_der(&der(keys::RSA_DER)).expect("RSA key"))
}

fn p256() -> &'static EcdsaKeyPair {
    static K: OnceLock<EcdsaKeyPair> = OnceLock::new();
    K.get_or_init(|| {
        EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der(keys::P256_DER))
            .expect("P-256 key")
    })
}

fn ed25519() -> &'static Ed25519KeyPair {
    static K: OnceLock<Ed25519KeyPair> = OnceLock::new();
    K.get_or_init(|| Ed25519KeyPair::from_seed_unchecked(&keys::ED25519_SEED).expect("Ed25519"))
}

/// The signing keys the JWT target's issuer trusts, by the algorithm they sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Rs256,
    Es256,
    EdDsa,
    Hs256,
}

impl Signer {
    pub const ALL: [Signer; 4] = [Signer::Rs256, Signer::Es256, Signer::EdDsa, Signer::Hs256];

    pub fn alg(self) -> &'static str {
        match self {
            Signer::Rs256 => "RS256",
            Signer::Es256 => "ES256",
            Signer::EdDsa => "EdDSA",
            Signer::Hs256 => "HS256",
        }
    }

    pub fn kid(self) -> &'static str {
        match self {
            Signer::Rs256 => "rsa1",
            Signer::Es256 => "ec1",
            Signer::EdDsa => "ed1",
            Signer::Hs256 => "hs1",
        }
    }

    /// Whether two signatures of one message are the same bytes (ECDSA's are not).
    pub fn deterministic(self) -> bool {
        !matches!(self, Signer::Es256)
    }

    pub fn sign(self, message: &[u8]) -> Vec<u8> {
        match self {
            Signer::Rs256 => {
                let k = rsa();
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .expect("RSA sign");
                sig
            }
            Signer::Es256 => p256()
                .sign(&SystemRandom::new(), message)
                .expect("ECDSA sign")
                .as_ref()
                .to_vec(),
            Signer::EdDsa => ed25519().sign(message).as_ref().to_vec(),
            Signer::Hs256 => hmac(keys::HS_SECRET, message),
        }
    }
}

pub fn hmac(secret: &[u8], message: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::sign(&key, message).as_ref().to_vec()
}

/// The issuer's JWKS: the public halves of the RSA, P-256 and Ed25519 keys, with kids.
pub fn jwks() -> String {
    let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa().public_key());
    let point = p256().public_key().as_ref();
    serde_json::json!({"keys": [
        {"kty": "RSA", "kid": Signer::Rs256.kid(), "use": "sig", "n": b64url(&c.n), "e": b64url(&c.e)},
        {"kty": "EC", "kid": Signer::Es256.kid(), "crv": "P-256",
         "x": b64url(&point[1..33]), "y": b64url(&point[33..65])},
        {"kty": "OKP", "kid": Signer::EdDsa.kid(), "crv": "Ed25519",
         "x": b64url(ed25519().public_key().as_ref())},
    ]})
    .to_string()
}

/// The RSA public key's modulus, as an attacker who read the JWKS knows it (for the
/// HS256-with-the-public-key confusion).
pub fn rsa_public_bytes() -> Vec<u8> {
    rsa().public_key().as_ref().to_vec()
}

/// `b64url(header).b64url(claims).b64url(sig)` signed by `signer`.
pub fn sign_jwt(signer: Signer, header: &[u8], claims: &[u8]) -> String {
    let msg = format!("{}.{}", b64url(header), b64url(claims));
    let sig = signer.sign(msg.as_bytes());
    format!("{msg}.{}", b64url(&sig))
}

/// A JSON object's members in document order, duplicates kept (`None`: not an object).
pub fn members(bytes: &[u8]) -> Option<Vec<(String, serde_json::Value)>> {
    use serde::de::{Deserializer as _, MapAccess, Visitor};
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<(String, serde_json::Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = de.deserialize_map(V).ok()?;
    de.end().ok()?;
    Some(v)
}

/// One route as the oracles see it: host (lower case, `None` for any), canonical prefix.
pub struct OracleRoute<'a> {
    pub host: Option<&'a str>,
    pub prefix: &'a str,
}

impl<'a> OracleRoute<'a> {
    /// The routes of a loaded config, in order.
    pub fn all(config: &'a portcullis::config::Config) -> Vec<OracleRoute<'a>> {
        config
            .routes
            .iter()
            .map(|r| OracleRoute {
                host: r.host.as_deref(),
                prefix: &r.path,
            })
            .collect()
    }
}

/// The segment without its `;` parameters (servers that honour them read `a;x` as `a`).
fn seg_key(s: &str) -> &str {
    s.split(';').next().unwrap_or("")
}

/// README "How a request is handled": the first route whose host (if set) equals the
/// request's and whose prefix covers the path at segment boundaries, parameters ignored;
/// `folded`: prefix and path compared in ASCII lower case. Written from the README, not
/// from the router's code.
pub fn oracle_first(
    routes: &[OracleRoute<'_>],
    host: Option<&str>,
    path: &str,
    folded: bool,
) -> Option<usize> {
    let fold = |s: &str| {
        if folded {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let path = fold(path);
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    routes.iter().position(|r| {
        if let Some(h) = r.host {
            if Some(h) != host {
                return false;
            }
        }
        if r.prefix == "/" {
            return true;
        }
        let prefix = fold(r.prefix);
        let want: Vec<&str> = prefix.split('/').skip(1).collect();
        want.len() <= segs.len()
            && want
                .iter()
                .zip(&segs)
                .all(|(a, b)| seg_key(a) == seg_key(b))
    })
}
