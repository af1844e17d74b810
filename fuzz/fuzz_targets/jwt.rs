//! JWT access tokens through the real validator (`TokenValidator::validate_bytes`): the
//! header read before verification, issuer and key selection by `iss`/`kid`/`alg`,
//! signature, registered claims with the injected clock, and the identity made from the
//! claims. The issuer's keys are fixed (RSA, P-256, Ed25519 in its JWKS, an HS256 shared
//! secret in its config) and installed without any fetch.
//!
//! Properties:
//! - a mutated token never validates: whatever the bytes, the ones that pass consist of a
//!   signing input this target signed, with a signature in canonical base64url (and, for
//!   the deterministic algorithms, the very signature it made) — a flipped bit, swapped
//!   parts, `alg: none`, HS256 keyed with the public key, another `kid` all fail;
//! - for tokens the issuer's keys really signed, with any header and claims: one that
//!   validates has exactly one `alg`, the one of the key that signed it, an accepted `typ`
//!   or none, no `crit`, `iss` (every copy) equal to the issuer, an `aud` naming the
//!   audience, a numeric `exp` not past (leeway included), an `nbf` not ahead, a `cnf`
//!   only with the identity bound to a key (the gate's to check), a non-empty string `sub`,
//!   which is the identity's subject.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use portcullis::fuzz_api::install_keys;
use portcullis::oidc::transport::{HttpTransport, TransportConfig};
use portcullis::token::{BearerConfig, IssuerConfig, ManualClock, Secret, TokenValidator};
use portcullis_fuzz::token_mutation::{mutate_token, signed_among};
use portcullis_fuzz::{jwks, keys, members, sign_jwt, Input, Signer};
use serde_json::{json, Value};

const ISS: &str = "https://issuer.example";
/// The validator's clock (year 2096). jsonwebtoken checks `exp` and `nbf` against the
/// system clock too (the validator then again with its own): with this clock ahead of the
/// system's, a token passes both only if it passes this one, whatever day it runs.
const NOW: u64 = 4_000_000_000;
const LEEWAY: u64 = 30;

struct Fixture {
    rt: tokio::runtime::Runtime,
    validator: TokenValidator,
    /// (signer, token) of every token signed here at start.
    tokens: Vec<(Signer, String)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut issuer = IssuerConfig::new(ISS, vec!["api".into()]);
        issuer.discovery = false;
        issuer.algorithms = vec![
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
            Algorithm::HS256,
        ];
        issuer.hs_secret = Some(Secret::new(keys::HS_SECRET));
        let config = BearerConfig {
            issuers: vec![issuer],
            leeway: Duration::from_secs(LEEWAY),
            negative_ttl: Duration::ZERO,
            ..BearerConfig::default()
        };
        let transport = HttpTransport::new(TransportConfig {
            timeout: Duration::from_secs(1),
            ca_file: None,
        })
        .unwrap();
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(NOW)));
        let validator = TokenValidator::with_clock(config, transport, clock);
        install_keys(&validator, 0, jwks().as_bytes()).expect("JWKS");
        let claims =
            json!({"iss": ISS, "aud": "api", "sub": "user", "exp": NOW + 3600, "scope": "read"})
                .to_string();
        let tokens = Signer::ALL
            .iter()
            .map(|s| {
                let header = json!({"alg": s.alg(), "kid": s.kid(), "typ": "JWT"}).to_string();
                (*s, sign_jwt(*s, header.as_bytes(), claims.as_bytes()))
            })
            .collect();
        let f = Fixture {
            rt,
            validator,
            tokens,
        };
        for (s, t) in &f.tokens {
            let r = validate(&f, t.as_bytes());
            assert!(r.is_ok(), "{s:?} token refused: {r:?}");
        }
        // `PORTCULLIS_FUZZ_SEEDS=DIR`: write the valid tokens as raw-mode seeds.
        if let Some(dir) = std::env::var_os("PORTCULLIS_FUZZ_SEEDS") {
            for (s, t) in &f.tokens {
                let mut seed = vec![0u8];
                seed.extend_from_slice(t.as_bytes());
                std::fs::write(
                    std::path::Path::new(&dir).join(format!("valid-{}", s.alg())),
                    seed,
                )
                .unwrap();
            }
        }
        f
    })
}

/// The subject of a validated token, and whether the identity is bound to a key (`cnf`).
fn validate(f: &Fixture, token: &[u8]) -> Result<(String, bool), String> {
    f.rt.block_on(f.validator.validate_bytes(token))
        .map(|id| (id.subject().to_string(), id.binding().is_some()))
        .map_err(|e| format!("{e:?}"))
}

/// One mutation of a token's text (`portcullis_fuzz::token_mutation`), with the
/// replacement headers of this target.
fn mutate(inp: &mut Input<'_>, f: &Fixture, t: &mut Vec<u8>) {
    let headers = [
        json!({"alg": "none"}),
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "HS256", "kid": "rsa1"}),
        json!({"alg": "HS256"}),
        json!({"alg": "RS256", "kid": "ec1"}),
        json!({"alg": "ES256", "kid": "rsa1"}),
        json!({"alg": "EdDSA", "kid": "rsa1"}),
        json!({"alg": "RS256"}),
        json!({"alg": "PS256", "kid": "rsa1"}),
        json!({"alg": "RS256", "kid": "rsa1", "jwk": {"kty": "oct", "k": "AAAA"}}),
    ];
    mutate_token(inp, &f.tokens, &headers, t);
}

/// The rules a validated token's header and claims must meet (see the module doc).
fn check_rules(signer: Signer, header: &[u8], claims: &[u8], subject: &str, bound: bool) {
    let h = members(header).expect("validated header is a JSON object");
    let c = members(claims).expect("validated claims are a JSON object");
    let all = |m: &[(String, Value)], k: &str| -> Vec<Value> {
        m.iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let ctx = || {
        format!(
            "header {:?} claims {:?}",
            String::from_utf8_lossy(header),
            String::from_utf8_lossy(claims)
        )
    };
    assert_eq!(all(&h, "alg"), vec![json!(signer.alg())], "alg: {}", ctx());
    for typ in all(&h, "typ") {
        let t = typ.as_str().unwrap_or("<not a string>");
        assert!(
            ["JWT", "at+jwt", "application/at+jwt"]
                .iter()
                .any(|ok| t.eq_ignore_ascii_case(ok)),
            "typ {t:?}: {}",
            ctx()
        );
    }
    assert!(all(&h, "crit").is_empty(), "crit: {}", ctx());
    let iss = all(&c, "iss");
    assert!(
        !iss.is_empty() && iss.iter().all(|v| v == ISS),
        "iss: {}",
        ctx()
    );
    let aud = all(&c, "aud");
    assert!(
        !aud.is_empty()
            && aud.iter().all(|a| match a {
                Value::String(s) => s == "api",
                Value::Array(items) => items.iter().any(|i| i == "api"),
                _ => false,
            }),
        "aud: {}",
        ctx()
    );
    let exp = all(&c, "exp");
    assert!(
        !exp.is_empty()
            && exp.iter().all(|e| e
                .as_f64()
                .is_some_and(|e| e >= 0.0 && e + LEEWAY as f64 > NOW as f64)),
        "exp: {}",
        ctx()
    );
    for nbf in all(&c, "nbf") {
        assert!(
            nbf.as_f64().is_some_and(|n| n <= (NOW + LEEWAY) as f64),
            "nbf: {}",
            ctx()
        );
    }
    // A `cnf` claim (RFC 7800) binds the identity to a key: the gate then refuses it as a
    // bearer token and asks for a proof (RFC 9449).
    assert_eq!(
        !all(&c, "cnf").is_empty(),
        bound,
        "cnf / binding: {}",
        ctx()
    );
    let sub = all(&c, "sub");
    assert!(
        sub.len() == 1
            && sub[0]
                .as_str()
                .is_some_and(|s| !s.is_empty() && s == subject),
        "sub / subject {subject:?}: {}",
        ctx()
    );
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut inp = Input::new(data);
    match inp.below(3) {
        0 => {
            let token = inp.rest();
            if validate(f, token).is_ok() {
                assert!(
                    signed_among(&f.tokens, token),
                    "forged token validated: {:?}",
                    String::from_utf8_lossy(token)
                );
            }
        }
        1 => {
            let mut t = f.tokens[inp.below(f.tokens.len())].1.clone().into_bytes();
            for _ in 0..1 + inp.below(4) {
                mutate(&mut inp, f, &mut t);
            }
            if validate(f, &t).is_ok() {
                assert!(
                    signed_among(&f.tokens, &t),
                    "mutated token validated: {:?}",
                    String::from_utf8_lossy(&t)
                );
            }
        }
        _ => {
            let signer = Signer::ALL[inp.below(Signer::ALL.len())];
            let header = inp.field(300).to_vec();
            let claims = inp.rest().to_vec();
            let token = sign_jwt(signer, &header, &claims);
            if let Ok((subject, bound)) = validate(f, token.as_bytes()) {
                check_rules(signer, &header, &claims, &subject, bound);
            }
        }
    }
});
