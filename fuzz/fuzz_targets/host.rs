//! Host and authority parsing: `normalize_host` (route hosts are compared with its output)
//! and the routing layer's host rule (absolute-form target or `:authority` versus `Host`).
//!
//! Properties:
//! - a host it accepts comes out non-empty, in lower case, canonical again (idempotent),
//!   either a registered name (`a-z 0-9 - . _`) or a bracketed IPv6 literal, with nothing
//!   of the input dropped but case, one trailing dot and a numeric port;
//! - the routing layer refuses two `Host` headers, a missing host in HTTP/1.1, and a
//!   `Host` that differs from the target's authority; the name it routes by is the
//!   normalized authority it forwards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::fuzz_api::{normalize_host, request_host};
use portcullis_fuzz::Input;

fn check_name(input: &str, n: &str) {
    assert!(!n.is_empty(), "{input:?}: empty host");
    assert_eq!(
        normalize_host(n).as_deref(),
        Some(n),
        "{input:?} -> {n:?}: not canonical again"
    );
    assert!(
        !n.bytes().any(|b| b.is_ascii_uppercase()),
        "{input:?} -> {n:?}: upper case"
    );
    let reg_name = n
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_'));
    let ip_literal = n.len() > 2
        && n.starts_with('[')
        && n.ends_with(']')
        && n[1..n.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
    assert!(
        reg_name || ip_literal,
        "{input:?} -> {n:?}: neither a registered name nor an IP literal"
    );
    // Nothing dropped but case, one trailing dot, and `:port`.
    let t = input.trim().to_ascii_lowercase();
    let without_port = match t.rfind(':') {
        Some(i)
            if !t[i + 1..].is_empty()
                && t[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && (reg_name || t[..i].ends_with(']')) =>
        {
            &t[..i]
        }
        _ => t.as_str(),
    };
    let without_dot = without_port.strip_suffix('.').unwrap_or(without_port);
    assert_eq!(
        without_dot, n,
        "{input:?} -> {n:?}: bytes of the input dropped"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    match inp.below(2) {
        0 => {
            let Ok(s) = std::str::from_utf8(inp.rest()) else {
                return;
            };
            if let Some(n) = normalize_host(s) {
                check_name(s, &n);
            }
        }
        _ => {
            let http10 = inp.bool();
            let target = inp.field(200);
            let hosts: Vec<&[u8]> = (0..inp.below(3)).map(|_| inp.field(100)).collect();
            let Ok(uri) = http::Uri::try_from(target) else {
                return;
            };
            let mut b = http::Request::builder()
                .uri(uri.clone())
                .version(if http10 {
                    http::Version::HTTP_10
                } else {
                    http::Version::HTTP_11
                });
            let mut values = Vec::new();
            for h in &hosts {
                let Ok(v) = http::HeaderValue::from_bytes(h) else {
                    return;
                };
                values.push(v.clone());
                b = b.header(http::header::HOST, v);
            }
            let Ok(req) = b.body(()) else {
                return;
            };
            let got = request_host(&req);
            if values.len() > 1 {
                assert!(got.is_err(), "two Host headers accepted: {values:?}");
            }
            if !http10 && values.is_empty() && uri.authority().is_none() {
                assert!(got.is_err(), "HTTP/1.1 without a host accepted");
            }
            let Ok((name, sent)) = got else {
                return;
            };
            if let (Some(a), Some(h)) = (uri.authority(), values.first()) {
                assert!(
                    h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()),
                    "Host {h:?} differs from the target's authority {a}"
                );
            }
            match (name, sent) {
                (Some(n), Some(sent)) => {
                    let sent = std::str::from_utf8(&sent).expect("authority is text");
                    check_name(sent, &n);
                    assert_eq!(normalize_host(sent).as_deref(), Some(n.as_str()));
                }
                (None, None) => assert!(http10 && values.is_empty() && uri.authority().is_none()),
                (n, s) => panic!("routing name {n:?} without authority {s:?} or the reverse"),
            }
        }
    }
});
