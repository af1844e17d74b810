//! Cookie hygiene: the proxy's own cookies never reach an upstream (DESIGN §1.4).
//!
//! Removes, from every `Cookie` header of a request, each cookie that belongs to the proxy:
//! for each logical base name `N` (normally just `session.cookie_name`), the cookies named
//! `N`, `N_<digits>` (session chunks) and `N_tx_<anything>` (login transactions), with or
//! without a `__Host-` / `__Secure-` prefix (matched case-insensitively, as browsers do,
//! RFC 6265bis §5.7). Every other cookie pair is kept byte-for-byte, in order; a header that
//! holds no proxy cookie is left untouched, one left empty is removed.
//!
//! Each header is handled on its own (an HTTP/2 client may send one `Cookie` header per
//! cookie, RFC 9113 §8.2.3; joining them for an HTTP/1.1 upstream is the forwarder's job).

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use super::cookie::{chunk_index, cookie_pairs, trim_ows, PREFIXES};

/// Is `name` one of the proxy's cookies for one of the logical `bases`?
pub fn is_proxy_cookie(name: &[u8], bases: &[&str]) -> bool {
    let mut unprefixed = name;
    for p in PREFIXES {
        if name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p.as_bytes()) {
            unprefixed = &name[p.len()..];
            break;
        }
    }
    bases.iter().any(|base| {
        let base = base.as_bytes();
        !base.is_empty()
            && (unprefixed == base
                || chunk_index(unprefixed, base).is_some()
                || unprefixed
                    .strip_prefix(base)
                    .is_some_and(|r| r.starts_with(b"_tx_")))
    })
}

/// Removes the proxy's cookies (see the module doc) from the request's `Cookie` headers.
/// Returns how many cookie pairs were removed.
pub fn strip_proxy_cookies(headers: &mut HeaderMap, bases: &[&str]) -> usize {
    if !headers.contains_key(COOKIE) {
        return 0;
    }
    let mut removed = 0;
    let mut changed = false;
    let mut kept_headers: Vec<HeaderValue> = Vec::new();
    for value in headers.get_all(COOKIE) {
        let bytes = value.as_bytes();
        let mut kept: Vec<&[u8]> = Vec::new();
        let mut dropped_here = 0;
        for pair in cookie_pairs(bytes) {
            let t = trim_ows(pair);
            if t.is_empty() {
                continue;
            }
            let name = match memchr::memchr(b'=', t) {
                Some(i) => trim_ows(&t[..i]),
                // RFC 6265bis §5.7: a pair without '=' is a value with an empty name.
                None => &b""[..],
            };
            if is_proxy_cookie(name, bases) {
                dropped_here += 1;
            } else {
                kept.push(t);
            }
        }
        if dropped_here == 0 {
            kept_headers.push(value.clone());
            continue;
        }
        changed = true;
        removed += dropped_here;
        if kept.is_empty() {
            continue;
        }
        let joined = kept.join(&b"; "[..]);
        // The bytes came from a valid header value and only '; ' was added: this holds.
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            kept_headers.push(v);
        }
    }
    if changed {
        headers.remove(COOKIE);
        for v in kept_headers {
            headers.append(COOKIE, v);
        }
        tracing::debug!(removed, "stripped proxy cookies from the upstream request");
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[&str]) -> Vec<String> {
        let mut h = HeaderMap::new();
        h.insert("x-other", HeaderValue::from_static("1"));
        for c in input {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        strip_proxy_cookies(&mut h, &["_portcullis"]);
        assert_eq!(h["x-other"], "1");
        h.get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn table() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["a=1"], &["a=1"]),
            (&["a=1;b=2"], &["a=1;b=2"]), // untouched: odd spacing kept
            (&["_portcullis=x"], &[]),
            (&["__Host-_portcullis=x; a=1"], &["a=1"]),
            (&["a=1; __Secure-_portcullis=x"], &["a=1"]),
            (&["a=1;__host-_portcullis=x;b=2"], &["a=1; b=2"]),
            (&["__Host-_portcullis_0=x; __Host-_portcullis_1=y; keep=_portcullis"], &["keep=_portcullis"]),
            (&["_portcullis_12=x; _portcullis_tx_ab12cd34=y; z=3"], &["z=3"]),
            (&["__Host-_portcullis_tx_deadbeef=y"], &[]),
            // Not ours: similar names.
            (&["_portcullis2=x; _portcullisx=1; x_portcullis=2; _portcullis_a=3; _portcullis_=4"],
             &["_portcullis2=x; _portcullisx=1; x_portcullis=2; _portcullis_a=3; _portcullis_=4"]),
            (&["__Host-other=1; __Secure-_Portcullis=2"], &["__Host-other=1; __Secure-_Portcullis=2"]),
            // Cookie without '=' (empty name) is kept, even if its value looks like our name.
            (&["_portcullis; a=1; _portcullis=x"], &["_portcullis; a=1"]),
            // Values kept byte-for-byte, including quotes, '=' and spaces inside.
            (&["q=\"a b\";  _portcullis = x ;r=a=b==  "], &["q=\"a b\"; r=a=b=="]),
            // Several headers (HTTP/2): each handled; emptied ones removed.
            (&["a=1", "_portcullis=x", "b=2; _portcullis_0=y"], &["a=1", "b=2"]),
            (&["_portcullis=x", "_portcullis_tx_1=y"], &[]),
            (&[";;", "a=1;;_portcullis=1;;"], &[";;", "a=1"]),
        ];
        for (input, want) in cases {
            assert_eq!(&run(input), want, "input {input:?}");
        }
    }

    #[test]
    fn non_utf8_values_survive() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_bytes(b"a=\xe9t\xe9; _portcullis=x").unwrap(),
        );
        assert_eq!(strip_proxy_cookies(&mut h, &["_portcullis"]), 1);
        assert_eq!(h[COOKIE].as_bytes(), b"a=\xe9t\xe9");
    }

    #[test]
    fn no_cookie_header_is_fine() {
        let mut h = HeaderMap::new();
        assert_eq!(strip_proxy_cookies(&mut h, &["_portcullis"]), 0);
        assert!(h.is_empty());
    }
}
