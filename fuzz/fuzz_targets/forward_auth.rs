//! Forward auth's original request (`/oauth2/auth`, src/oidc/endpoints.rs): the URI from
//! `X-Forwarded-Uri`, `X-Original-URI`, `X-Original-URL` (absolute or a path) or the path
//! suffix after `/oauth2/auth`, the host from there or `X-Forwarded-Host`.
//!
//! Properties, when it names a request:
//! - its path is canonical (as `normalize_path` makes it) and its host normalized;
//! - every source agrees with it: each path-form value, read alone, canonicalizes to the
//!   same path and query; an absolute `X-Original-URL` names the path that its raw text
//!   names (the same bytes a path-form header would carry, not a URL library's
//!   reinterpretation of them: backslashes, tabs and `%2e` must not move the request to
//!   another route), and its host;
//! - a source header whose value is not visible ASCII, a URI with a `#` (fragment), or
//!   sources that disagree, are refused.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::fuzz_api::{normalize_host, normalize_path, original_request};
use portcullis_fuzz::Input;

const NAMES: [&str; 5] = [
    "x-forwarded-uri",
    "x-original-uri",
    "x-original-url",
    "x-forwarded-host",
    "x-other",
];

/// The path and query of a path-form value, canonicalized (`Err`: refused).
fn path_form(v: &str) -> Result<(String, Option<String>), ()> {
    let (p, q) = match v.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (v, None),
    };
    let p = normalize_path(p).map_err(|_| ())?.into_owned();
    Ok((p, q))
}

/// `scheme://authority` and the raw rest of an absolute URL, split by hand.
fn split_absolute(v: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = v.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((scheme, &rest[..end], &rest[end..]))
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let mut h = HeaderMap::new();
    let mut pairs: Vec<(&str, Vec<u8>)> = Vec::new();
    for _ in 0..inp.below(4) {
        let name = NAMES[inp.below(NAMES.len())];
        let value = inp.field(300).to_vec();
        let Ok(v) = HeaderValue::from_bytes(&value) else {
            return;
        };
        h.append(HeaderName::from_static(name), v);
        pairs.push((name, value));
    }
    // The suffix after `/oauth2/auth` comes from the request's canonical path.
    let suffix = if inp.bool() {
        let s = String::from_utf8_lossy(inp.field(200)).into_owned();
        match normalize_path(&s) {
            Ok(c) => Some(c.into_owned()),
            Err(_) => return,
        }
    } else {
        None
    };
    let query = if inp.bool() {
        Some(String::from_utf8_lossy(inp.field(50)).into_owned())
    } else {
        None
    };
    let got = original_request(&h, suffix.as_deref(), query.as_deref());
    let Ok(Some(o)) = got else {
        return;
    };
    assert_eq!(
        normalize_path(&o.path).map(|p| p.into_owned()).as_deref(),
        Ok(o.path.as_str()),
        "original path not canonical: {o:?}"
    );
    if let Some(host) = &o.host {
        assert_eq!(
            normalize_host(host).as_deref(),
            Some(host.as_str()),
            "{o:?}"
        );
    }
    let want = (o.path.clone(), o.query.clone());
    for (name, value) in &pairs {
        if *name == "x-other" {
            continue; // not a source: any bytes
        }
        let v = std::str::from_utf8(value).expect("accepted values are visible ASCII");
        assert!(
            v.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t'),
            "{name}: {v:?}"
        );
        if *name != "x-forwarded-host" {
            assert!(
                !v.contains('#'),
                "{name}: {v:?}: a fragment in an original URI"
            );
        }
        match *name {
            "x-forwarded-uri" | "x-original-uri" => {
                assert_eq!(path_form(v), Ok(want.clone()), "{name}: {v:?} vs {o:?}");
            }
            "x-original-url" if v.starts_with('/') => {
                assert_eq!(path_form(v), Ok(want.clone()), "{name}: {v:?} vs {o:?}");
            }
            "x-original-url" => {
                let (scheme, authority, rest) =
                    split_absolute(v).unwrap_or_else(|| panic!("accepted {v:?}: not scheme://..."));
                assert!(
                    scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"),
                    "{v:?}"
                );
                // The raw path of the URL names the same request as a path-form value.
                let raw = if rest.is_empty() || rest.starts_with('?') {
                    format!("/{rest}")
                } else {
                    rest.to_string()
                };
                assert!(!raw.contains('#'), "{v:?}: a fragment in an original URL");
                assert_eq!(path_form(&raw), Ok(want.clone()), "{name}: {v:?} vs {o:?}");
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                assert_eq!(
                    normalize_host(host).map(|h| h.into_owned()),
                    o.host.clone(),
                    "{v:?}: host"
                );
            }
            "x-forwarded-host" => {
                assert_eq!(
                    normalize_host(v).map(|h| h.into_owned()),
                    o.host.clone(),
                    "{v:?}"
                );
            }
            _ => {}
        }
    }
    if let Some(s) = &suffix {
        assert_eq!(s, &o.path, "suffix");
        assert_eq!(
            o.query, query,
            "the subrequest's query goes with the suffix"
        );
    }
});
