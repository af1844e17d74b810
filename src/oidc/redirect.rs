//! The `rd` validator: where the browser may be sent after login or sign-out.
//!
//! [`validate_redirect`] returns a target that is safe to put in a `Location` header: a path
//! on this origin, or an absolute `http(s)` URL on a host of `login.allowed_redirect_hosts`
//! (or on `server.public_url`'s own origin). Everything else becomes `/`.
//!
//! The input is judged as a browser would read it (WHATWG URL Standard, "basic URL parser"):
//! leading and trailing C0 controls and spaces are stripped, ASCII tab and newline are
//! removed anywhere, and `\` is read as `/` (http and https are "special" schemes). On top of
//! that it is conservative: any other control character, a scheme without `//`
//! (`https:evil.com`), a scheme other than http/https (`javascript:`, `data:`), userinfo
//! (`https://allowed@evil.com`), `%` or non-ASCII in the host (IDN lookalikes: only hosts
//! written exactly, in ASCII or punycode, as listed are accepted), and a path that starts
//! with `//` or `/\` — as given, after path normalization (`/.//evil.com`), or after any
//! number of percent-decodings (`/%2F%2Fevil.com`, `/%5Cevil.com`, `/%09/evil.com`) — is
//! refused. The result is re-serialized by the URL parser, so it holds no raw control or
//! non-ASCII character.
//!
//! Allowed-host entries (lowercase): `host` (exact host, default port only), `host:8080`,
//! `host:*` (any port), `.example.com` or `*.example.com` (example.com itself and any
//! subdomain of it, as oauth2-proxy reads them), IPv6 as `[::1]:8080`.

use url::{Position, Url};

/// Longest `rd` considered; longer ones fall back to `/`.
const MAX_LEN: usize = 4096;
/// Percent-decoding rounds tried before calling an input ambiguous.
const MAX_DECODES: usize = 4;

/// A safe redirect target for `rd`; `/` when `rd` is anything but a same-origin path or an
/// http(s) URL on an allowed host.
///
/// `public_origin` is `server.public_url`; `allowed_hosts` is
/// `login.allowed_redirect_hosts` (already lowercase).
pub fn validate_redirect(rd: &str, allowed_hosts: &[String], public_origin: &Url) -> String {
    match check(rd, allowed_hosts, public_origin) {
        Some(target) => target,
        None => {
            tracing::debug!("redirect target refused, using /");
            "/".to_string()
        }
    }
}

fn check(rd: &str, allowed: &[String], origin: &Url) -> Option<String> {
    if rd.len() > MAX_LEN {
        return None;
    }
    let s = browser_clean(rd)?;
    if s.starts_with('/') {
        relative(&s, origin)
    } else {
        absolute(&s, allowed, origin)
    }
}

/// WHATWG URL parser steps: strip leading/trailing C0 control or space, remove ASCII tab or
/// newline; `\` as `/`. `None` if any other C0 control, DEL or C1 control remains.
fn browser_clean(s: &str) -> Option<String> {
    let t = s.trim_matches(|c: char| c <= ' ');
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '\t' | '\n' | '\r' => {}
            '\\' => out.push('/'),
            c if c.is_control() => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// A path on this origin: `/` then not `/`, and still so when percent-decoded.
fn relative(s: &str, origin: &Url) -> Option<String> {
    if s.as_bytes().get(1) == Some(&b'/') {
        return None;
    }
    // What the path becomes if something decodes it again (a framework, the app, a
    // second proxy): fully percent-decoded, every whitespace or control removed, `\` as `/`.
    let decoded = fully_decode(s)?;
    let squeezed: String = decoded
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .map(|c| if c == '\\' { '/' } else { c })
        .collect();
    if !squeezed.starts_with('/') || squeezed.starts_with("//") {
        return None;
    }
    // Path normalization must not create a leading `//` either (`/.//evil.com`,
    // `/%2e%2e//evil.com`): it would serialize as a protocol-relative reference.
    same_origin_path(&squeezed, origin)?;
    let target = same_origin_path(s, origin)?;
    Some(target)
}

/// `origin.join(path)` as a browser would resolve it; its path+query+fragment if it stays on
/// the origin and does not begin with `//`.
fn same_origin_path(path: &str, origin: &Url) -> Option<String> {
    let u = origin.join(path).ok()?;
    if u.origin() != origin.origin() || u.path().starts_with("//") {
        return None;
    }
    let out = &u[Position::BeforePath..];
    if !out.starts_with('/') || out.starts_with("//") {
        return None;
    }
    Some(out.to_string())
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Percent-decodes until nothing changes; `None` if it still changes after a few rounds.
fn fully_decode(s: &str) -> Option<String> {
    let mut cur = s.as_bytes().to_vec();
    for _ in 0..MAX_DECODES {
        let next = percent_decode(&cur);
        if next == cur {
            return Some(String::from_utf8_lossy(&cur).into_owned());
        }
        cur = next;
    }
    None
}

/// An absolute http(s) URL on an allowed host (or on the public origin itself).
fn absolute(s: &str, allowed: &[String], origin: &Url) -> Option<String> {
    let rest = strip_prefix_ci(s, "https://").or_else(|| strip_prefix_ci(s, "http://"))?;
    // Exactly `//` then the authority (browsers skip extra slashes: refuse those).
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // No userinfo (`@`), no percent-encoding, no non-ASCII (IDN lookalikes) in the host.
    if authority.is_empty()
        || !authority.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']' | b'_')
        })
    {
        return None;
    }
    let u = Url::parse(s).ok()?;
    if !matches!(u.scheme(), "http" | "https")
        || !u.username().is_empty()
        || u.password().is_some()
        || u.cannot_be_a_base()
    {
        return None;
    }
    let host = u.host_str()?;
    if u.origin() == origin.origin()
        || host_allowed(host, u.port(), u.port_or_known_default()?, allowed)
    {
        return Some(u.to_string());
    }
    None
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Does `host` (lowercase, IPv6 in brackets) with `explicit_port` (None for the scheme's
/// default) match one of the allowed entries?
fn host_allowed(host: &str, explicit_port: Option<u16>, port: u16, allowed: &[String]) -> bool {
    allowed.iter().any(|entry| {
        let Some((rule_host, rule_port)) = split_entry(entry) else {
            return false;
        };
        let port_ok = match rule_port {
            PortRule::Default => explicit_port.is_none(),
            PortRule::Any => true,
            PortRule::Exact(p) => p == port,
        };
        if !port_ok {
            return false;
        }
        match rule_host
            .strip_prefix("*.")
            .or_else(|| rule_host.strip_prefix('.'))
        {
            Some(base) => {
                let Some(base) = ascii_host(base) else {
                    return false;
                };
                !base.is_empty()
                    && (host == base
                        || (host.len() > base.len() + 1
                            && host.ends_with(base.as_str())
                            && host.as_bytes()[host.len() - base.len() - 1] == b'.'))
            }
            None => ascii_host(rule_host).is_some_and(|h| h == host),
        }
    })
}

enum PortRule {
    Default,
    Any,
    Exact(u16),
}

fn split_entry(entry: &str) -> Option<(&str, PortRule)> {
    let entry = entry.trim();
    let (host, port) = if entry.starts_with('[') {
        let close = entry.find(']')?;
        let (h, rest) = entry.split_at(close + 1);
        match rest.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if rest.is_empty() => (h, None),
            None => return None,
        }
    } else {
        match entry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        }
    };
    let rule = match port {
        None => PortRule::Default,
        Some("*") => PortRule::Any,
        Some(p) => PortRule::Exact(p.parse().ok()?),
    };
    if host.is_empty() {
        return None;
    }
    Some((host, rule))
}

/// An entry's host as the URL parser writes hosts (lowercase, punycode for IDN).
fn ascii_host(h: &str) -> Option<String> {
    if h.is_ascii() {
        return Some(h.to_ascii_lowercase());
    }
    match url::Host::parse(h).ok()? {
        url::Host::Domain(d) => Some(d),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Url {
        Url::parse("https://app.example.com/").unwrap()
    }

    fn allowed() -> Vec<String> {
        [
            "foo.bar",
            ".bar.foo",
            "port.bar:8080",
            ".sub.port.bar:8080",
            "anyport.bar:*",
            ".sub.anyport.bar:*",
            "www.whitelisteddomain.tld",
            "*.wildcard.sub.port.bar:8080",
            "*.wildcard.sub.anyport.bar:*",
            "*.wildcard.bar",
            "*.wildcard.proxy.foo.bar",
            "[::1]:9000",
            "bücher.example",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn v(rd: &str) -> String {
        validate_redirect(rd, &allowed(), &origin())
    }

    /// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte; a bad escape is an error.
    fn query_unescape(s: &str) -> Option<String> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' => {
                    let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(h, 16).ok()?);
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    /// Where a browser on `https://app.example.com/oauth2/callback` goes for `Location: t`.
    fn lands_on_this_origin(target: &str) -> bool {
        let here = Url::parse("https://app.example.com/oauth2/callback").unwrap();
        let base = origin();
        let a = here.join(target);
        let b = base.join(target);
        matches!((a, b), (Ok(a), Ok(b))
            if a.host_str() == Some("app.example.com") && b.host_str() == Some("app.example.com")
               && a.scheme() == "https")
    }

    const CORPUS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/openredirects.txt"
    ));

    #[test]
    fn open_redirect_corpus_stays_on_this_origin() {
        let only_whitelisted = vec!["www.whitelisteddomain.tld".to_string()];
        let lines: Vec<&str> = CORPUS.split('\n').collect();
        // 559 payload lines (the file ends with a newline).
        assert_eq!(lines.len(), 560);
        assert_eq!(lines[559], "");
        let mut checked = 0;
        for (n, raw) in lines[..559].iter().enumerate() {
            let unescaped = query_unescape(raw)
                .unwrap_or_else(|| panic!("line {}: not query-unescapable", n + 1));
            for (form, input) in [("unescaped", unescaped.as_str()), ("raw", raw)] {
                for list in [&only_whitelisted, &allowed()] {
                    let out = validate_redirect(input, list, &origin());
                    assert!(
                        lands_on_this_origin(&out),
                        "line {} ({form}) {input:?} -> {out:?}",
                        n + 1
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 559 * 4);
    }

    #[test]
    fn explicit_cases() {
        let cases: &[(&str, &str)] = &[
            // Same-origin paths are kept.
            ("/", "/"),
            ("/ok/path?x=1#f", "/ok/path?x=1#f"),
            ("/a/b/../c", "/a/c"),
            ("/search?q=a%20b&x=%2F%2F", "/search?q=a%20b&x=%2F%2F"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/a//b", "/a//b"),
            ("  /ok  ", "/ok"),
            ("/o\tk\n", "/ok"),
            ("/a%2Fb", "/a%2Fb"),
            // Protocol-relative and its disguises.
            ("//evil.com", "/"),
            ("/\\evil.com", "/"),
            ("\\\\evil.com", "/"),
            ("\\/evil.com", "/"),
            ("/\t/evil.com", "/"),
            ("/\r\n/evil.com", "/"),
            ("/ /evil.com", "/"),
            ("/\u{0b}/evil.com", "/"),
            ("\u{0}//evil.com", "/"),
            (" \u{1f}//evil.com", "/"),
            ("/./\\evil.com", "/"),
            ("/.//evil.com", "/"),
            ("/./../../\\evil.com", "/"),
            ("/..//evil.com", "/"),
            ("/%2e%2e//evil.com", "/"),
            ("/%2F%2Fevil.com", "/"),
            ("/%2f/evil.com", "/"),
            ("/%5Cevil.com", "/"),
            ("/%255Cevil.com", "/"),
            ("/%25252F%25252Fevil.com", "/"),
            ("/%09/evil.com", "/"),
            ("/%20/evil.com", "/"),
            ("/.%2F/evil.com", "/"),
            ("%2F%2Fevil.com", "/"),
            ("/\u{3000}/evil.com", "/"),
            // Schemes.
            ("javascript:alert(1)", "/"),
            ("JaVaScRiPt:alert(1)", "/"),
            ("java\tscript:alert(1)", "/"),
            ("data:text/html,<script>alert(1)</script>", "/"),
            ("https:evil.com", "/"),
            ("https:/evil.com", "/"),
            ("https:///evil.com", "/"),
            ("https:\\\\evil.com", "/"),
            ("ftp://foo.bar/", "/"),
            ("evil.com", "/"),
            ("foo.bar/redirect", "/"),
            ("", "/"),
            ("   ", "/"),
            // Allowed hosts.
            ("https://foo.bar/redirect", "https://foo.bar/redirect"),
            ("http://foo.bar/redirect", "http://foo.bar/redirect"),
            ("HTTPS://FOO.BAR/x", "https://foo.bar/x"),
            ("https:\\\\foo.bar\\x", "https://foo.bar/x"),
            ("https://foo.bar", "https://foo.bar/"),
            ("https://foo.bar:443/x", "https://foo.bar/x"),
            ("https://foo.bar:8443/x", "/"),
            ("https://baz.foo.bar/", "/"),
            ("https://foo.bar.evil.corp/", "/"),
            ("https://evil.corp/?rd=foo.bar", "/"),
            ("https://bar.foo/x", "https://bar.foo/x"),
            ("https://a.b.bar.foo/x", "https://a.b.bar.foo/x"),
            ("https://xbar.foo/x", "/"),
            ("http://port.bar:8080/r", "http://port.bar:8080/r"),
            ("http://port.bar:3838/r", "/"),
            ("http://port.bar/r", "/"),
            (
                "http://foo.sub.port.bar:8080/r",
                "http://foo.sub.port.bar:8080/r",
            ),
            ("http://foo.subport.bar:8080/r", "/"),
            ("http://anyport.bar:8081/r", "http://anyport.bar:8081/r"),
            ("http://anyport.bar/r", "http://anyport.bar/r"),
            (
                "http://a.sub.anyport.bar:1/r",
                "http://a.sub.anyport.bar:1/r",
            ),
            ("http://x.wildcard.bar/r", "http://x.wildcard.bar/r"),
            ("http://wildcard.bar/r", "http://wildcard.bar/r"),
            ("http://xwildcard.bar/r", "/"),
            (
                "http://foo.wildcard.sub.port.bar:8080/r",
                "http://foo.wildcard.sub.port.bar:8080/r",
            ),
            ("http://foo.wildcard.sub.port.bar:8081/r", "/"),
            ("http://[::1]:9000/r", "http://[::1]:9000/r"),
            ("http://[::1]/r", "/"),
            // Userinfo, encoded hosts, lookalikes.
            ("https://foo.bar@evil.com/", "/"),
            ("https://foo.bar:x@evil.com/", "/"),
            ("https://evil.com@foo.bar/", "/"),
            ("https://foo.bar%2F@evil.com/", "/"),
            ("https://foo.bar%2eevil.com/", "/"),
            ("https://evil.com%23.foo.bar/", "/"),
            ("https://foo.bar./", "/"),
            ("https://fοo.bar/", "/"),    // Greek omicron
            ("https://ｆｏｏ.bar/", "/"), // fullwidth
            ("https://foo。bar/", "/"),   // ideographic full stop
            (
                "https://xn--bcher-kva.example/x",
                "https://xn--bcher-kva.example/x",
            ),
            ("https://bücher.example/x", "/"),
            ("https://foo.bar\\@evil.com/", "https://foo.bar/@evil.com/"),
            // The public origin itself is always fine.
            (
                "https://app.example.com/x?y#z",
                "https://app.example.com/x?y#z",
            ),
            ("https://app.example.com:443/x", "https://app.example.com/x"),
            ("http://app.example.com/x", "/"),
            ("https://app.example.com.evil.com/", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(&v(input), want, "input {input:?}");
        }
    }

    #[test]
    fn outputs_are_clean_ascii() {
        for input in ["/a b", "/é?q=ü#ö", "/\"<>", "https://foo.bar/a b"] {
            let out = v(input);
            assert!(
                out.is_ascii() && !out.contains(' ') && !out.contains('"'),
                "{out}"
            );
        }
    }

    #[test]
    fn long_input_falls_back() {
        assert_eq!(v(&format!("/{}", "a".repeat(MAX_LEN))), "/");
        assert_eq!(
            v(&format!("/{}", "a".repeat(100))),
            format!("/{}", "a".repeat(100))
        );
    }

    #[test]
    fn bad_entries_never_match() {
        let list = vec![
            "foo.bar:notaport".to_string(),
            "*.".to_string(),
            ".".to_string(),
            "[::1".to_string(),
        ];
        for input in ["https://foo.bar/", "https://x.com/", "http://[::1]/"] {
            assert_eq!(validate_redirect(input, &list, &origin()), "/");
        }
    }
}
