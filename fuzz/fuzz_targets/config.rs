//! The config loader (`Config::from_toml`, the one door): any TOML text, and generated
//! files whose routes are built from the fuzzer's bytes.
//!
//! Properties, for every file it accepts:
//! - no route shadows another: for each route, a request for its own prefix (on its host,
//!   or a host no route names) is routed to it by an independent first-match matcher, i.e.
//!   no earlier route catches every request it would;
//! - every route path is canonical (`normalize_path` leaves it as it is) with no trailing
//!   slash but `/`; every route host is one a request host can equal (`normalize_host`
//!   leaves it as it is), so that its requests are not left to later routes;
//! - a public route has no scopes, method scopes or `allow` rules; every route names an
//!   existing upstream.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::config::{AuthMode, Config};
use portcullis::fuzz_api::{normalize_host, normalize_path};
use portcullis_fuzz::{oracle_first, toml_str, Input, OracleRoute};

const HEAD: &str = r#"
[server]
listen = "127.0.0.1:0"

[bearer]
audiences = ["api"]

[provider]
issuer = "https://idp.example"

[[upstream]]
name = "a"
url = "http://127.0.0.1:9"

[[upstream]]
name = "b"
url = "http://127.0.0.1:9"
"#;

const PATHS: [&str; 10] = [
    "/", "/api", "/api/", "/api/v1", "/Api", "/a;x", "/a", "/a/b", "/static/", "/x/../y",
];
const HOSTS: [&str; 6] = [
    "a.example",
    "A.example",
    "a.example.",
    "b.example",
    "[::1]",
    "a b",
];

/// An empty folder: relative `*_file` names resolve there and find nothing.
fn base_dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("portcullis-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let text = match inp.below(2) {
        0 => {
            let Ok(t) = std::str::from_utf8(inp.rest()) else {
                return;
            };
            t.to_string()
        }
        _ => {
            let mut text = String::from(HEAD);
            for _ in 0..1 + inp.below(5) {
                let path = match inp.below(3) {
                    0 => String::from_utf8_lossy(inp.field(24)).into_owned(),
                    _ => PATHS[inp.below(PATHS.len())].to_string(),
                };
                text.push_str(&format!("\n[[route]]\npath = {}\n", toml_str(&path)));
                match inp.below(4) {
                    0 => text.push_str(&format!(
                        "host = {}\n",
                        toml_str(&String::from_utf8_lossy(inp.field(24)))
                    )),
                    1 => text.push_str(&format!(
                        "host = {}\n",
                        toml_str(HOSTS[inp.below(HOSTS.len())])
                    )),
                    _ => {}
                }
                text.push_str(&format!("upstream = \"{}\"\n", ["a", "b"][inp.below(2)]));
                let auth = ["public", "bearer"][inp.below(2)];
                text.push_str(&format!("auth = \"{auth}\"\n"));
                if auth == "bearer" && inp.bool() {
                    text.push_str("scopes = [\"read\"]\n");
                }
            }
            text
        }
    };
    // Keep the loader away from files that never end or block (`/dev/zero`, fifos): it
    // reads `*_file` secrets whole, as an operator's config asks.
    if ["/dev", "/proc", "/sys", "/run", "..", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    let Ok(config) = Config::from_toml(&text, base_dir()) else {
        return;
    };

    let routes = OracleRoute::all(&config);
    for (i, r) in config.routes.iter().enumerate() {
        assert_eq!(
            normalize_path(&r.path).map(|p| p.into_owned()).as_deref(),
            Ok(r.path.as_str()),
            "route[{i}].path {:?} not canonical\n{text}",
            r.path
        );
        assert!(
            r.path == "/" || !r.path.ends_with('/'),
            "route[{i}].path {:?}\n{text}",
            r.path
        );
        if let Some(h) = &r.host {
            assert_eq!(
                normalize_host(h).as_deref(),
                Some(h.as_str()),
                "route[{i}].host {h:?}: no request host can equal it\n{text}"
            );
        }
        assert!(r.upstream < config.upstreams.len());
        if r.auth == AuthMode::Public {
            assert!(
                r.scopes.is_empty() && r.method_scopes.is_empty() && r.allow.is_none(),
                "route[{i}]\n{text}"
            );
        }
        let probe_host = r.host.as_deref().or(Some("probe.invalid"));
        assert_eq!(
            oracle_first(&routes, probe_host, &r.path, false),
            Some(i),
            "route[{i}] ({:?} on {:?}) is shadowed by an earlier route\n{text}",
            r.path,
            r.host
        );
    }
});
