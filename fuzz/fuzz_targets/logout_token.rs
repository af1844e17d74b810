//! Back-channel logout tokens (OIDC Back-Channel Logout 1.0 §2.6 steps 1-6) through the
//! login's own check (`Login::check_logout_token`, via `fuzz_api::LogoutTokens`): the header
//! read before verification, key selection, signature, `iss`, `aud`, `exp`/`nbf` by the
//! ID-token validator, then the logout token's own claims. The provider's keys are fixed
//! (the `jwt` target's RSA, P-256 and Ed25519 JWKS), installed without any fetch, and the
//! login's clock is fixed. The replay check (step 7) writes and is not part of it.
//!
//! Properties:
//! - a mutated token is never accepted: whatever the bytes, the ones that pass consist of a
//!   signing input this target signed, with a signature in canonical base64url (and, for
//!   the deterministic algorithms, the very signature it made) — a flipped bit, swapped
//!   parts, `alg: none`, HS256 keyed with the public key or the JWKS, another `kid`, a
//!   dropped signature all fail;
//! - for tokens the provider's keys really signed, with any header and claims: one that is
//!   accepted has exactly one `alg`, the signing key's; a `typ` that is `logout+jwt` or
//!   `JWT` (case-insensitive, the `application/` prefix allowed) or none; no `crit`; `iss`
//!   (every copy) exactly the issuer; `aud` naming the client id and nothing but the client
//!   id and the trusted audiences; a numeric `iat` at most `logout_token_max_age` old and
//!   not ahead of the clock by more than the leeway; `exp`, when present, not past and
//!   `nbf`, when present, not ahead (leeway included); a non-empty string `sid` or `sub`;
//!   `events` an object whose back-channel logout event is an object; no `nonce` at all
//!   (not even null); a non-empty string `jti`. What the check returns is what the claims
//!   say (issuer, `sub`, `sid`, `jti`, `iat`).
//!
//! The oracle is written from the spec and the module doc of `backchannel.rs`, not from the
//! checking code. Time is compared at whole seconds (an `iat` of `now + leeway + 0.5` is not
//! "ahead by more than the leeway").
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;
use portcullis::fuzz_api::{CheckedLogout, LogoutTokens};
use portcullis_fuzz::token_mutation::{mutate_token, signed_among};
use portcullis_fuzz::{jwks, members, sign_jwt, Input, Signer};
use serde_json::{json, Value};

const ISS: &str = "https://issuer.example";
const CLIENT: &str = "portcullis";
const TRUSTED: &str = "trusted-api";
/// The login's clock (year 2096): ahead of the system clock, so that jsonwebtoken's own
/// `exp`/`nbf` checks (on the system clock) never accept what this clock refuses.
const NOW: u64 = 4_000_000_000;
/// The ID-token validator's default leeway and `provider.logout_token_max_age`.
const LEEWAY: u64 = 30;
const MAX_AGE: u64 = 300;
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// The signers whose keys are in the provider's JWKS (the ID-token validator takes no HS*).
const SIGNERS: [Signer; 3] = [Signer::Rs256, Signer::Es256, Signer::EdDsa];

struct Fixture {
    rt: tokio::runtime::Runtime,
    checker: LogoutTokens,
    /// (signer, token) of every valid token signed here at start.
    tokens: Vec<(Signer, String)>,
}

fn config() -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:4180\"\n\
         [provider]\nissuer = \"{ISS}\"\nclient_id = \"{CLIENT}\"\n\
         client_secret = \"secret\"\ntrusted_audiences = [\"{TRUSTED}\"]\n\
         logout_token_max_age = \"{MAX_AGE}s\"\n\
         [session]\nsecrets = [\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"]\n\
         [[upstream]]\nname = \"app\"\nurl = \"http://127.0.0.1:9\"\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\nauth = \"login\"\n"
    );
    Config::from_toml(&text, std::path::Path::new(".")).expect("fixture config")
}

/// The claims of a valid logout token (by `sid` and `sub`).
fn good_claims() -> Value {
    json!({
        "iss": ISS, "aud": CLIENT, "iat": NOW - 10, "exp": NOW + 120, "jti": "jti-1",
        "sid": "sid-1", "sub": "alice", "events": { EVENT: {} },
    })
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let checker = {
            let _g = rt.enter();
            LogoutTokens::new(
                &config(),
                UNIX_EPOCH + Duration::from_secs(NOW),
                jwks().as_bytes(),
            )
            .expect("logout token checker")
        };
        let claims = good_claims().to_string();
        let tokens = SIGNERS
            .iter()
            .map(|s| {
                let header =
                    json!({"alg": s.alg(), "kid": s.kid(), "typ": "logout+jwt"}).to_string();
                (*s, sign_jwt(*s, header.as_bytes(), claims.as_bytes()))
            })
            .collect();
        let f = Fixture {
            rt,
            checker,
            tokens,
        };
        for (s, t) in &f.tokens {
            let r = check(&f, t.as_bytes());
            assert!(r.is_ok(), "{s:?} logout token refused: {r:?}");
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

fn check(f: &Fixture, token: &[u8]) -> Result<CheckedLogout, String> {
    // The endpoint reads the token from a form field: always text.
    let token = std::str::from_utf8(token).map_err(|_| "not UTF-8".to_string())?;
    f.rt.block_on(f.checker.check(token))
        .map_err(|e| e.to_string())
}

/// One mutation of a token's text (`portcullis_fuzz::token_mutation`), with the
/// replacement headers of this target.
fn mutate(inp: &mut Input<'_>, f: &Fixture, t: &mut Vec<u8>) {
    let headers = [
        json!({"alg": "none"}),
        json!({"alg": "none", "typ": "logout+jwt"}),
        json!({"alg": "HS256", "kid": "rsa1"}),
        json!({"alg": "HS256", "typ": "logout+jwt"}),
        json!({"alg": "RS256", "kid": "ec1"}),
        json!({"alg": "ES256", "kid": "rsa1"}),
        json!({"alg": "EdDSA", "kid": "rsa1"}),
        json!({"alg": "RS256", "kid": "other"}),
        json!({"alg": "RS256"}),
        json!({"alg": "PS256", "kid": "rsa1"}),
        json!({"alg": "RS256", "kid": "rsa1", "typ": "at+jwt"}),
        json!({"alg": "RS256", "kid": "rsa1", "jwk": {"kty": "oct", "k": "AAAA"}}),
    ];
    mutate_token(inp, &f.tokens, &headers, t);
}

/// A NumericDate (RFC 7519 §2) in whole seconds, if `v` is one.
fn seconds(v: &Value) -> Option<f64> {
    v.as_f64()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .map(f64::floor)
}

/// The rules an accepted token's header and claims must meet (see the module doc).
fn check_rules(signer: Signer, header: &[u8], claims: &[u8], got: &CheckedLogout) {
    let h = members(header).expect("accepted header is a JSON object");
    let c = members(claims).expect("accepted claims are a JSON object");
    let all = |m: &[(String, Value)], k: &str| -> Vec<Value> {
        m.iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let ctx = || {
        format!(
            "header {:?} claims {:?} → {got:?}",
            String::from_utf8_lossy(header),
            String::from_utf8_lossy(claims)
        )
    };
    // Steps 1-2: JWS with the key's algorithm; explicit typing (§2.4, RFC 8725 §3.11).
    assert_eq!(all(&h, "alg"), vec![json!(signer.alg())], "alg: {}", ctx());
    for typ in all(&h, "typ") {
        let t = typ.as_str().map(str::to_ascii_lowercase);
        let t = t
            .as_deref()
            .map(|t| t.strip_prefix("application/").unwrap_or(t));
        assert!(
            matches!(t, Some("logout+jwt" | "jwt")),
            "typ {typ}: {}",
            ctx()
        );
    }
    assert!(all(&h, "crit").is_empty(), "crit: {}", ctx());
    // Step 3: iss exact, aud has the client id and only trusted audiences.
    let iss = all(&c, "iss");
    assert!(
        !iss.is_empty() && iss.iter().all(|v| v == ISS),
        "iss: {}",
        ctx()
    );
    assert_eq!(got.iss, ISS, "returned iss: {}", ctx());
    let aud = all(&c, "aud");
    let trusted = |a: &Value| a == CLIENT || a == TRUSTED;
    assert!(
        !aud.is_empty()
            && aud.iter().all(|a| match a {
                Value::String(_) => a == CLIENT,
                Value::Array(items) =>
                    items.iter().any(|i| i == CLIENT) && items.iter().all(trusted),
                _ => false,
            }),
        "aud: {}",
        ctx()
    );
    // Step 3: iat within the max age, not ahead beyond the leeway; exp, nbf.
    let iat = all(&c, "iat");
    assert!(!iat.is_empty(), "no iat: {}", ctx());
    for v in &iat {
        let i = seconds(v).unwrap_or_else(|| panic!("iat not a NumericDate: {}", ctx()));
        assert!(
            i <= (NOW + LEEWAY) as f64 && i >= (NOW - MAX_AGE) as f64,
            "iat: {}",
            ctx()
        );
        assert_eq!(got.iat as f64, i, "returned iat: {}", ctx());
    }
    for v in all(&c, "exp") {
        assert!(
            seconds(&v).is_some_and(|e| e + LEEWAY as f64 >= NOW as f64),
            "exp: {}",
            ctx()
        );
    }
    for v in all(&c, "nbf") {
        assert!(
            v.as_f64().is_some_and(|n| n <= (NOW + LEEWAY) as f64),
            "nbf: {}",
            ctx()
        );
    }
    // Step 4: sid and/or sub, non-empty strings; returned as given.
    let text = |k: &str| -> Option<String> {
        let v = all(&c, k);
        for x in &v {
            assert!(x.is_string() || x.is_null(), "{k} not a string: {}", ctx());
        }
        v.last()
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let (sub, sid) = (text("sub"), text("sid"));
    assert!(
        sub.is_some() || sid.is_some(),
        "neither sid nor sub: {}",
        ctx()
    );
    assert_eq!(
        (&got.sub, &got.sid),
        (&sub, &sid),
        "returned sub/sid: {}",
        ctx()
    );
    // Step 5: the back-channel logout event, an object.
    let events = all(&c, "events");
    assert!(
        !events.is_empty()
            && events
                .iter()
                .all(|e| e.get(EVENT).is_some_and(Value::is_object)),
        "events: {}",
        ctx()
    );
    // Step 6: no nonce at all.
    assert!(all(&c, "nonce").is_empty(), "nonce: {}", ctx());
    // §2.4: jti, a non-empty string.
    let jti = all(&c, "jti");
    assert!(
        !jti.is_empty()
            && jti
                .iter()
                .all(|j| j.as_str().is_some_and(|j| !j.is_empty() && j == got.jti)),
        "jti: {}",
        ctx()
    );
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut inp = Input::new(data);
    match inp.below(3) {
        0 => {
            let token = inp.rest();
            if check(f, token).is_ok() {
                assert!(
                    signed_among(&f.tokens, token),
                    "forged logout token accepted: {:?}",
                    String::from_utf8_lossy(token)
                );
            }
        }
        1 => {
            let mut t = f.tokens[inp.below(f.tokens.len())].1.clone().into_bytes();
            for _ in 0..1 + inp.below(4) {
                mutate(&mut inp, f, &mut t);
            }
            if check(f, &t).is_ok() {
                assert!(
                    signed_among(&f.tokens, &t),
                    "mutated logout token accepted: {:?}",
                    String::from_utf8_lossy(&t)
                );
            }
        }
        _ => {
            // Any header and claims, really signed by one of the provider's keys (or by
            // the HS256 secret, which the ID-token validator must never take).
            let signer = Signer::ALL[inp.below(Signer::ALL.len())];
            let header = inp.field(300).to_vec();
            let claims = inp.rest().to_vec();
            let token = sign_jwt(signer, &header, &claims);
            if let Ok(got) = check(f, token.as_bytes()) {
                assert!(signer != Signer::Hs256, "HS256 accepted: {token}");
                check_rules(signer, &header, &claims, &got);
            }
        }
    }
});
