//! `auth = "bearer"`: the request is judged on its `Authorization: Bearer` token alone
//! (RFC 6750), validated by the `TokenValidator` (JWKS or introspection, cached). The
//! refusals and their challenges are `crate::error::Refusal`s.

use http::header::AUTHORIZATION;
use http::HeaderMap;

/// The token of `Authorization: Bearer <token>`, or why there is none.
pub enum Extracted<'a> {
    /// The token's bytes as sent; their characters are the validator's to check (once,
    /// on a cache miss).
    Token(&'a [u8]),
    /// `Authorization: DPoP <token>` (RFC 9449 §7.1): a token whose proof is in the
    /// `DPoP` header.
    Dpop(&'a [u8]),
    /// No Authorization header, or another scheme: a plain challenge.
    Missing,
    /// Several Authorization headers, or `Bearer` with nothing usable after it.
    Malformed,
}

/// Does the query carry an `access_token` parameter (RFC 6750 §2.3), its name decoded as
/// a form decoder would (`access%5Ftoken` too)?
pub fn query_has_token(query: &str) -> bool {
    // Cheap filter first: the name, or an escape that could spell it.
    (query.contains("token") || query.contains('%'))
        && url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "access_token")
}

/// The query without its `access_token` parameters (the other pairs kept as they were);
/// `None` when nothing is left.
pub fn query_without_token(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            !url::form_urlencoded::parse(name.as_bytes()).any(|(k, _)| k == "access_token")
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Spaces (only) around the token.
fn trim_spaces(mut t: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = t {
        t = rest;
    }
    while let [rest @ .., b' '] = t {
        t = rest;
    }
    t
}

/// RFC 6750 §2.1. The scheme is case-insensitive (RFC 9110 §11.1); exactly one header.
pub fn extract(headers: &HeaderMap) -> Extracted<'_> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return if headers.contains_key(AUTHORIZATION) {
            Extracted::Malformed
        } else {
            Extracted::Missing
        };
    };
    let v = v.as_bytes();
    // Another scheme is no token at all, unless the header is not plain text.
    let other = |v: &[u8]| {
        if v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            Extracted::Missing
        } else {
            Extracted::Malformed
        }
    };
    let Some(space) = memchr::memchr(b' ', v) else {
        return if v.eq_ignore_ascii_case(b"bearer") || v.eq_ignore_ascii_case(b"dpop") {
            Extracted::Malformed
        } else {
            other(v)
        };
    };
    let scheme = &v[..space];
    let dpop = scheme.eq_ignore_ascii_case(b"dpop");
    if !dpop && !scheme.eq_ignore_ascii_case(b"bearer") {
        return other(v);
    }
    let token = trim_spaces(&v[space + 1..]);
    if token.is_empty() {
        return Extracted::Malformed;
    }
    if dpop {
        Extracted::Dpop(token)
    } else {
        Extracted::Token(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(v: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for x in v {
            m.append(AUTHORIZATION, HeaderValue::from_str(x).unwrap());
        }
        m
    }

    #[test]
    fn extraction() {
        assert!(matches!(
            extract(&h(&["Bearer abc.def-_~+/="])),
            Extracted::Token(b"abc.def-_~+/=")
        ));
        assert!(matches!(
            extract(&h(&["bearer abc"])),
            Extracted::Token(b"abc")
        ));
        assert!(matches!(extract(&h(&[])), Extracted::Missing));
        assert!(matches!(
            extract(&h(&["Basic dXNlcjpwYXNz"])),
            Extracted::Missing
        ));
        assert!(matches!(extract(&h(&["Bearer"])), Extracted::Malformed));
        // RFC 9449 §7.1: the DPoP scheme, case-insensitive like any scheme.
        assert!(matches!(
            extract(&h(&["DPoP abc.def"])),
            Extracted::Dpop(b"abc.def")
        ));
        assert!(matches!(
            extract(&h(&["dpop abc"])),
            Extracted::Dpop(b"abc")
        ));
        assert!(matches!(extract(&h(&["DPoP"])), Extracted::Malformed));
        assert!(matches!(extract(&h(&["DPoP  "])), Extracted::Malformed));
        assert!(matches!(extract(&h(&["Bearer   "])), Extracted::Malformed));
        assert!(matches!(
            extract(&h(&["Bearer a", "Bearer b"])),
            Extracted::Malformed
        ));
        // The characters are the validator's to check (on a miss: TokenError::Syntax).
        assert!(matches!(
            extract(&h(&["Bearer a\"b"])),
            Extracted::Token(b"a\"b")
        ));
        assert!(matches!(
            extract(&h(&["Bearer a b"])),
            Extracted::Token(b"a b")
        ));
        // Another scheme with bytes that are not plain text: malformed, as before.
        let mut m = HeaderMap::new();
        m.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Basic \xc3\xa9t\xc3\xa9").unwrap(),
        );
        assert!(matches!(extract(&m), Extracted::Malformed));
    }

    #[test]
    fn query_tokens() {
        for q in [
            "access_token=x",
            "a=1&access_token=x",
            "access%5Ftoken=x",
            "access%5ftoken",
            "b=2&access_token&c=3",
        ] {
            assert!(query_has_token(q), "{q}");
        }
        for q in [
            "a=1",
            "access_tokens=x",
            "xaccess_token=1",
            "token=1",
            "a=access_token",
        ] {
            assert!(!query_has_token(q), "{q}");
        }
        assert_eq!(
            query_without_token("a=1&access_token=x&b=%41&access%5Ftoken=y").as_deref(),
            Some("a=1&b=%41")
        );
        assert_eq!(query_without_token("access_token=x"), None);
    }
}
