//! Route selection with the path-reading rule (README "Path readings"): route tables made
//! from configs that the loader accepts, requests with any path, host, method and
//! identity.
//!
//! Property: every request the router accepts (and the auth gate lets through with the
//! policies of the route and of the routes its `also` list names) satisfies the policy of
//! every route that any reading of its path selects, as an independent matcher written
//! from the README finds them: the same auth mode, the same upstream, and scopes, method
//! scopes, `allow` rules or a CORS preflight that let it through. Readings are skipped
//! only where the route's upstream asks for it (`path_readings = "exact"`). Also: the
//! route chosen is the first one the canonical path matches.
#![no_main]

use std::sync::{Arc, OnceLock};

use http::Method;
use libfuzzer_sys::fuzz_target;
use portcullis::config::{AuthMode, Config, PathReadings};
use portcullis::fuzz_api::{normalize_path, readings, Router, Table};
use portcullis::identity::Identity;
use portcullis_fuzz::{oracle_first, toml_str, Input, OracleRoute};

const HEAD: &str = r#"
[server]
listen = "127.0.0.1:0"
public_url = "https://app.example"

[provider]
issuer = "https://idp.example"
client_id = "portcullis"
client_secret = "secret"

[bearer]
audiences = ["api"]

[session]
secrets = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]

[[upstream]]
name = "a"
url = "http://127.0.0.1:9"

[[upstream]]
name = "b"
url = "http://127.0.0.1:9"

[[upstream]]
name = "x"
url = "http://127.0.0.1:9"
path_readings = "exact"
"#;

const PATHS: [&str; 12] = [
    "/",
    "/admin",
    "/api",
    "/api/admin",
    "/Admin",
    "/public",
    "/a/b",
    "/admin;x",
    "/API",
    "/static",
    "/a",
    "/api/v1",
];
const HOSTS: [Option<&str>; 4] = [
    None,
    Some("a.example"),
    Some("b.example"),
    Some("other.example"),
];
const SCOPES: [&str; 3] = ["read", "write", "admin"];
const GROUPS: [&str; 2] = ["staff", "ops"];
const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::OPTIONS, Method::DELETE];

fn router() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(|| {
        let base = std::env::temp_dir();
        // A route of each mode, so that the bearer validator and the login are both built
        // (the tables below may use either).
        let routes = "\n[[route]]\npath = \"/b\"\nupstream = \"a\"\nauth = \"bearer\"\n\n[[route]]\npath = \"/\"\nupstream = \"a\"\nauth = \"login\"\n";
        let config = Config::from_toml(&format!("{HEAD}{routes}"), &base).expect("fixed config");
        Router::new(&config).expect("router")
    })
}

fn bits<'a>(b: u8, names: &[&'a str]) -> Vec<&'a str> {
    names
        .iter()
        .enumerate()
        .filter(|(i, _)| b & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

fn list(items: &[&str]) -> String {
    let v: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", v.join(", "))
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    // The config: up to 5 routes.
    let mut text = String::from(HEAD);
    for _ in 0..1 + inp.below(5) {
        let path = match inp.below(4) {
            0 => String::from_utf8_lossy(inp.field(24)).into_owned(),
            _ => PATHS[inp.below(PATHS.len())].to_string(),
        };
        text.push_str(&format!("\n[[route]]\npath = {}\n", toml_str(&path)));
        if let Some(h) = HOSTS[inp.below(3)] {
            text.push_str(&format!("host = {}\n", toml_str(h)));
        }
        text.push_str(&format!(
            "upstream = \"{}\"\n",
            ["a", "b", "x"][inp.below(3)]
        ));
        let auth = ["public", "bearer", "login", "either"][inp.below(4)];
        text.push_str(&format!("auth = \"{auth}\"\n"));
        if auth != "public" {
            let flags = inp.u8();
            let scopes = bits(flags, &SCOPES);
            if !scopes.is_empty() {
                text.push_str(&format!("scopes = {}\n", list(&scopes)));
            }
            if flags & 8 != 0 {
                text.push_str("method_scopes = { POST = [\"write\"], DELETE = [\"admin\"] }\n");
            }
            if flags & 16 != 0 {
                text.push_str("allow = { groups = [\"staff\"] }\n");
            }
            if flags & 32 != 0 {
                text.push_str("allow_preflight = true\n");
            }
        }
        if inp.bool() {
            text.push_str("strip_prefix = true\n");
        }
    }
    let Ok(config) = Config::from_toml(&text, &std::env::temp_dir()) else {
        return;
    };
    let table: Table = router()
        .table(&config.routes)
        .expect("a loaded config compiles");

    // The request.
    let host = HOSTS[inp.below(HOSTS.len())];
    let method = METHODS[inp.below(METHODS.len())].clone();
    let preflight = method == Method::OPTIONS && inp.bool();
    let (scope_bits, group_bits) = (inp.u8(), inp.u8());
    let mut id = Identity::new(Arc::from("https://idp.example"), "user", None, None, None);
    id.scopes = bits(scope_bits, &SCOPES)
        .into_iter()
        .map(Arc::from)
        .collect();
    id.groups = bits(group_bits, &GROUPS)
        .into_iter()
        .map(Arc::from)
        .collect();
    let Ok(raw) = std::str::from_utf8(inp.rest()) else {
        return;
    };
    let Ok(path) = normalize_path(raw) else {
        return;
    };

    let routes = OracleRoute::all(&config);
    let Ok(Some((route, also))) = table.select(host, &path) else {
        return;
    };
    assert_eq!(
        oracle_first(&routes, host, &path, false),
        Some(route),
        "{path:?} on {host:?}: not the first matching route\n{text}"
    );
    let mode = |ix: usize| config.routes[ix].auth;
    let upstream = |ix: usize| config.routes[ix].upstream;
    for a in &also {
        assert!(
            mode(*a) == mode(route) && upstream(*a) == upstream(route),
            "{path:?}: also {a} differs\n{text}"
        );
    }

    // The auth gate (src/auth/gate.rs): public, or every selected route passes the
    // preflight, or the identity passes every selected route's policy.
    let selected: Vec<usize> = std::iter::once(route).chain(also.iter().copied()).collect();
    let anonymous = mode(route) == AuthMode::Public
        || selected
            .iter()
            .all(|r| table.policy_passes(*r, &method, preflight, None));
    let accepted = anonymous
        || selected
            .iter()
            .all(|r| table.policy_passes(*r, &method, false, Some(&id)));
    if !accepted {
        return;
    }
    if config.upstreams[upstream(route)].path_readings == PathReadings::Exact {
        return;
    }
    let mut all = readings(&path);
    all.push(portcullis::fuzz_api::Reading {
        path: path.to_ascii_lowercase(),
        folded: true,
    });
    for r in all {
        let Some(o) = oracle_first(&routes, host, &r.path, r.folded) else {
            continue;
        };
        let ok = mode(o) == mode(route)
            && upstream(o) == upstream(route)
            && (mode(o) == AuthMode::Public
                || table.policy_passes(o, &method, preflight, None)
                || (!anonymous && table.policy_passes(o, &method, false, Some(&id))));
        assert!(
            ok,
            "{method} {path:?} on {host:?} went through route {route} (also {also:?}), but its \
             reading {:?} (folded {}) selects route {o}, whose policy it does not satisfy\n{text}",
            r.path, r.folded
        );
    }
});
