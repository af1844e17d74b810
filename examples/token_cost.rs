//! Instruction counts of the cached-bearer path, for callgrind (instructions, not time).
//!
//! ```text
//! cargo build --release --example token_cost
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/token_cost hit 1000     # then hit 10000
//! ```
//!
//! `hit N`: one validation of a ~700-byte HS256 access token (a miss, which stores it),
//! then N `TokenValidator::validate` calls on the same token (cache hits). The per-hit
//! cost is (I(hit 10000) - I(hit 1000)) / 9000. `scan N`: N RFC 6750 b64token checks of
//! the same token (`portcullis::token::is_b64token`), the same way. `none N`: only the
//! setup.
//! (The first OS random draw of the process, when the validator is built, runs aws-lc's
//! jitter-entropy initialization: ~0.4G instructions once, in the setup.)

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use portcullis::oidc::transport::{HttpTransport, TransportConfig};
use portcullis::token::{BearerConfig, IssuerConfig, Secret, TokenValidator};
use serde_json::json;

const ISS: &str = "https://tenant.example.com/";
const API: &str = "https://api.example.com";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// An Auth0-shaped HS256 access token of about 700 bytes.
fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": ISS,
        "sub": "auth0|0123456789abcdef01234567",
        "aud": [API, format!("{ISS}userinfo")],
        "iat": now,
        "exp": now + 3600,
        "azp": "hT5xq1yVbB0Kz0A1pGAnPcBs",
        "scope": "openid profile email read:items write:items",
        "permissions": ["read:items", "write:items", "delete:items", "admin:reports"],
        "https://example.com/roles": ["staff", "reviewers"],
        "email": "user@example.com",
        "email_verified": true,
    });
    let header = b64(json!({"alg": "HS256", "typ": "JWT"}).to_string().as_bytes());
    let msg = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
    let sig = aws_lc_rs::hmac::sign(&key, msg.as_bytes());
    format!("{msg}.{}", b64(sig.as_ref()))
}

fn validator() -> TokenValidator {
    let mut ic = IssuerConfig::new(ISS, vec![API.to_string()]);
    ic.discovery = false;
    ic.algorithms = vec![Algorithm::HS256];
    ic.hs_secret = Some(Secret::new(SECRET.to_vec()));
    let config = BearerConfig {
        issuers: vec![ic],
        scopes_claims: vec!["scope".into(), "permissions".into()],
        groups_claim: "https://example.com/roles".into(),
        ..BearerConfig::default()
    };
    let transport = HttpTransport::new(TransportConfig {
        timeout: Duration::from_secs(5),
        ca_file: None,
    })
    .unwrap();
    TokenValidator::new(config, transport)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "hit".into());
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let token = token();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let v = validator();
    rt.block_on(async {
        v.validate(&token).await.expect("the token validates");
        match mode.as_str() {
            "hit" => {
                for _ in 0..n {
                    black_box(v.validate(black_box(&token)).await.unwrap());
                }
            }
            "scan" => {
                for _ in 0..n {
                    black_box(portcullis::token::is_b64token(black_box(&token)));
                }
            }
            _ => {}
        }
    });
    eprintln!(
        "{mode} {n}: token {} bytes, {} cached",
        token.len(),
        v.cache_entries()
    );
}
