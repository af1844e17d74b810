//! Path and host canonicalization (DESIGN §1.1), with no imports from the rest of the
//! crate: the one reading of a request's path and host that routes are matched against
//! and that upstreams receive, so the proxy and the application cannot disagree about
//! which path was authorized. Anything ambiguous is refused.
//!
//! Also here, because they work on canonical paths only: prefix matching at segment
//! boundaries ([`prefix_matches`]) and the path left after a route prefix is stripped
//! ([`strip_route_prefix`]).

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not origin-form (does not start with `/`).
    NotAbsolute,
    /// `%2F`, `%5C`, `%23` or `%00`: an encoded separator or terminator.
    EncodedSeparator,
    /// The same, encoded twice (`%252F`, `%255C`, `%2523`, `%2500`): one more decoding
    /// by the upstream or its framework makes it a separator.
    DoubleEncodedSeparator,
    /// A raw `\`, which some servers read as `/`.
    Backslash,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8 (including overlong forms).
    InvalidUtf8,
    /// `..` segments that climb above `/`.
    AboveRoot,
    /// A dot segment carrying path parameters (`..;x`), read as `..` by some servers.
    DotSegmentParams,
    /// A raw control character or space.
    ControlChar,
    /// A raw `?` or `#`: every other parser ends the path there (a fragment or query), so
    /// the rest of it would be judged by us and ignored by the upstream.
    Delimiter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path must start with '/'",
            PathError::EncodedSeparator => "encoded '/', '\\', '#' or NUL in path",
            PathError::DoubleEncodedSeparator => "double-encoded '/', '\\', '#' or NUL in path",
            PathError::Backslash => "backslash in path",
            PathError::BadEscape => "malformed percent-encoding in path",
            PathError::InvalidUtf8 => "path is not valid UTF-8",
            PathError::AboveRoot => "path climbs above the root",
            PathError::DotSegmentParams => "dot segment with parameters in path",
            PathError::ControlChar => "control character in path",
            PathError::Delimiter => "'?' or '#' in path",
        })
    }
}

impl std::error::Error for PathError {}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Canonical form of a raw request path (without the query):
/// - percent-encodings of unreserved characters decoded, all others kept with upper-case hex
///   (RFC 3986 §6.2.2.1-2), so `%2e` is `.` and `%41` is `A`, but `%3B` stays `%3B`;
/// - refused: `%2F` `%5C` `%23` `%00`, the same encoded twice (`%252F`, also when the
///   second encoding is itself spelled with escapes, `%25%32%46`), a raw `\`, `?` or `#`,
///   bad escapes, invalid/overlong UTF-8 once decoded, control characters, `..` above the
///   root, dot segments with `;` parameters;
/// - empty segments merged (`//x` is `/x`), dot segments removed (RFC 3986 §5.2.4);
/// - raw non-ASCII bytes percent-encoded.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain_canonical(bytes) {
        // The common case: already canonical, borrowed as it is.
        return Ok(Cow::Borrowed(raw));
    }
    let mut decoded_all: Vec<u8> = Vec::new(); // for the UTF-8 check of escaped bytes
    let mut has_escaped_high = false;
    // Pass 1: split into segments, canonicalizing each one's encoding.
    let mut segments: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut i = 0;
    let mut trailing_slash = false;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' => {
                push_segment(&mut segments, &mut current)?;
                // The separator takes part in the UTF-8 check: an escaped character cut in
                // two by it (`%C3/%A9`) is no character at all.
                decoded_all.push(b'/');
                trailing_slash = true;
                i += 1;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b'?' | b'#' => return Err(PathError::Delimiter),
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h << 4 | l;
                if matches!(v, b'/' | b'\\' | b'#' | 0) {
                    return Err(PathError::EncodedSeparator);
                }
                // `%25` followed by an escape of a separator is checked on the output, once
                // the digits after it are decoded too (`%25%32%46` is `%252F`).
                if is_unreserved(v) {
                    current.push(v as char);
                } else {
                    current.push('%');
                    current.push(HEX_UPPER[(v >> 4) as usize] as char);
                    current.push(HEX_UPPER[(v & 15) as usize] as char);
                }
                if v >= 0x80 {
                    has_escaped_high = true;
                }
                decoded_all.push(v);
                i += 3;
            }
            0..=0x20 | 0x7f => return Err(PathError::ControlChar),
            0x80.. => {
                // Raw UTF-8 (the input is a &str, so it is valid): encode it.
                current.push('%');
                current.push(HEX_UPPER[(b >> 4) as usize] as char);
                current.push(HEX_UPPER[(b & 15) as usize] as char);
                decoded_all.push(b);
                i += 1;
            }
            _ => {
                current.push(b as char);
                decoded_all.push(b);
                i += 1;
            }
        }
        trailing_slash = false;
    }
    if has_escaped_high && std::str::from_utf8(&decoded_all).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    let last_was_dot = !current.is_empty() && (current == "." || current == "..");
    push_segment(&mut segments, &mut current)?;
    if last_was_dot {
        trailing_slash = true;
    }
    let mut out = String::with_capacity(raw.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    if has_double_encoded_separator(out.as_bytes()) {
        return Err(PathError::DoubleEncodedSeparator);
    }
    Ok(Cow::Owned(out))
}

/// `%25` followed by two hex digits that spell `/`, `\`, `#` or NUL (any case): one more
/// decoding makes it a separator.
fn has_double_encoded_separator(out: &[u8]) -> bool {
    out.windows(5).any(|w| {
        w[..3].eq_ignore_ascii_case(b"%25")
            && matches!(
                (hex(w[3]), hex(w[4])),
                (Some(h), Some(l)) if matches!(h << 4 | l, b'/' | b'\\' | b'#' | 0)
            )
    })
}

/// Already canonical: printable ASCII without `%`, `\`, `?` or `#`, no empty, `.` or `..`
/// segment.
fn is_plain_canonical(b: &[u8]) -> bool {
    let mut prev_slash = false;
    let mut seg_start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c <= 0x20 || c >= 0x7f || matches!(c, b'%' | b'\\' | b'?' | b'#') {
            return false;
        }
        if c == b'/' {
            if prev_slash || is_dot_segment(&b[seg_start..i]) {
                return false;
            }
            prev_slash = true;
            seg_start = i + 1;
        } else {
            prev_slash = false;
        }
    }
    !is_dot_segment(&b[seg_start..])
}

fn is_dot_segment(seg: &[u8]) -> bool {
    // Also catches `.;x` and `..;x` so the slow path refuses them.
    seg.first() == Some(&b'.') && (seg.len() == 1 || seg[1] == b'.' || seg[1] == b';')
}

/// Appends a finished segment, applying dot-segment removal.
fn push_segment(segments: &mut Vec<String>, current: &mut String) -> Result<(), PathError> {
    let seg = std::mem::take(current);
    match seg.as_str() {
        "" | "." => {}
        ".." => {
            if segments.pop().is_none() {
                return Err(PathError::AboveRoot);
            }
        }
        s => {
            // `..;jsessionid` is `..` to Tomcat and others: ambiguous, refuse.
            let base = s.split(';').next().unwrap_or("");
            if base == "." || base == ".." {
                return Err(PathError::DotSegmentParams);
            }
            segments.push(seg);
        }
    }
    Ok(())
}

/// The segment as servers that honour path parameters see it: `admin;x` is `admin`.
fn seg_key(seg: &str) -> &str {
    seg.split(';').next().unwrap_or("")
}

/// Does route prefix `prefix` (canonical, no trailing slash unless `/`) cover `path`
/// (canonical)? At segment boundaries only; path parameters (`;x`) are ignored when
/// comparing, so `/admin;x` cannot slip past a route for `/admin`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    matched_segments(prefix, path).is_some()
}

/// [`prefix_matches`] when neither `prefix` nor `path` has a `;` (no path parameters to
/// ignore): a byte comparison at a segment boundary.
pub fn plain_prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && path.as_bytes().get(prefix.len()).is_none_or(|b| *b == b'/'))
}

/// Number of path segments covered by `prefix`, if it matches.
fn matched_segments(prefix: &str, path: &str) -> Option<usize> {
    if prefix == "/" {
        return Some(0);
    }
    let mut p = prefix.split('/').skip(1);
    let mut s = path.split('/').skip(1);
    let mut n = 0;
    loop {
        match p.next() {
            None => return Some(n),
            Some(ps) => match s.next() {
                Some(ss) if seg_key(ss) == seg_key(ps) => n += 1,
                _ => return None,
            },
        }
    }
}

/// The path sent upstream for a route with prefix `prefix` (canonical): `path` itself, or
/// with `strip = true` the rest after the prefix's segments (`/a/b/c` under `/a` is
/// `/b/c`; nothing left is `/`).
pub fn strip_route_prefix<'p>(prefix: &str, strip: bool, path: &'p str) -> &'p str {
    if !strip || prefix == "/" {
        return path;
    }
    let n = matched_segments(prefix, path).unwrap_or(0);
    let mut rest = path;
    for _ in 0..n {
        rest = match rest[1..].find('/') {
            Some(ix) => &rest[ix + 1..],
            None => "",
        };
    }
    if rest.is_empty() {
        "/"
    } else {
        rest
    }
}

/// Can an upstream read canonical path `p` other than as it is (see [`readings`])? Only
/// if it has an escape, a `;`, an upper-case letter or a segment ending in `.`: one pass,
/// and false for most paths.
pub fn has_other_readings(p: &str) -> bool {
    let b = p.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            || c == b';'
            || c.is_ascii_uppercase()
            || (c == b'.' && b.get(i + 1).is_none_or(|n| *n == b'/'))
    })
}

/// One way a common upstream may read a path: canonical again, and whether route prefixes
/// are to be compared with it case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub path: String,
    pub folded: bool,
}

/// The readings of canonical path `p` by common upstreams that differ from `p`, each
/// canonicalized again (dot segments removed); a reading that is not a valid path after
/// its change is left out:
/// - servlet containers (Tomcat, Jetty, Spring): `%3B` decoded to `;` and path
///   parameters (`;...` in a segment) dropped;
/// - trailing spaces (`%20`) and dots of each segment dropped (Windows/IIS, older Spring
///   matchers);
/// - case folded (IIS, case-insensitive apps);
/// - decoded once more (an app that decodes what its server decoded): `%25` read as `%`;
/// - and all of these together.
pub fn readings(p: &str) -> Vec<Reading> {
    let mut out: Vec<Reading> = Vec::new();
    let mut push = |path: String, folded: bool| {
        let differs = if folded {
            !path.eq_ignore_ascii_case(p) || p.bytes().any(|b| b.is_ascii_uppercase())
        } else {
            path != p
        };
        if differs && !out.iter().any(|r| r.path == path && r.folded == folded) {
            out.push(Reading { path, folded });
        }
    };
    let params = without_params(p);
    let trimmed = trimmed_segments(p);
    let decoded = decoded_once(p);
    if let Some(r) = &params {
        push(r.clone(), false);
    }
    if let Some(r) = &trimmed {
        push(r.clone(), false);
    }
    if p.bytes().any(|b| b.is_ascii_uppercase()) {
        push(p.to_ascii_lowercase(), true);
    }
    if let Some(r) = &decoded {
        push(r.clone(), false);
    }
    // All together, each step kept only when it yields a valid path.
    let mut all = decoded.unwrap_or_else(|| p.to_string());
    if let Some(r) = without_params(&all) {
        all = r;
    }
    if let Some(r) = trimmed_segments(&all) {
        all = r;
    }
    push(all.to_ascii_lowercase(), true);
    push(all, false);
    out
}

fn canonical_again(raw: &str) -> Option<String> {
    normalize_path(raw).ok().map(Cow::into_owned)
}

/// `%3B` read as `;`, then every segment's `;...` parameters dropped.
fn without_params(p: &str) -> Option<String> {
    if !p.contains(';') && !p.contains("%3B") && !p.contains("%3b") {
        return None;
    }
    let decoded = p.replace("%3B", ";").replace("%3b", ";");
    let mut out = String::with_capacity(decoded.len());
    for seg in decoded.split('/').skip(1) {
        out.push('/');
        out.push_str(seg.split(';').next().unwrap_or(""));
    }
    canonical_again(&out)
}

/// Every segment without its trailing spaces (`%20`) and dots (a segment of dots alone
/// stays a dot segment: `..%20` is `..`).
fn trimmed_segments(p: &str) -> Option<String> {
    if !p.contains("%20") && !p.contains("./") && !p.ends_with('.') {
        return None;
    }
    let mut out = String::with_capacity(p.len());
    for seg in p.split('/').skip(1) {
        let mut t = seg;
        loop {
            if let Some(x) = t.strip_suffix("%20") {
                t = x;
            } else if let Some(x) = t.strip_suffix('.') {
                t = x;
            } else {
                break;
            }
        }
        if t.is_empty() && seg.starts_with("..") {
            t = "..";
        } else if t.is_empty() && seg.starts_with('.') {
            t = ".";
        }
        out.push('/');
        out.push_str(t);
    }
    canonical_again(&out)
}

/// One more percent-decoding: what was `%25` (a literal `%`) becomes the start of an
/// escape.
fn decoded_once(p: &str) -> Option<String> {
    if !p.contains("%25") {
        return None;
    }
    canonical_again(&p.replace("%25", "%"))
}

/// Request host for routing: lowercase, without port or trailing dot. A registered name
/// (letters, digits, `-`, `_` in non-empty labels between `.`s) or a bracketed IP literal
/// (hex digits, `:`, `.`), then nothing or `:port` (digits); anything else is refused
/// rather than cut short.
pub fn normalize_host(h: &str) -> Option<Cow<'_, str>> {
    let h = h.trim();
    let is_port = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
    };
    let (host, literal) = if h.starts_with('[') {
        // RFC 3986 §3.2.2 IP-literal, then nothing or `:port`.
        let end = h.find(']')?;
        let (lit, rest) = h.split_at(end + 1);
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        let inner = &lit[1..lit.len() - 1];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (lit, true)
    } else {
        let host = match h.rfind(':') {
            Some(ix) if is_port(&h[ix + 1..]) => &h[..ix],
            Some(_) => return None,
            None => h,
        };
        (host.strip_suffix('.').unwrap_or(host), false)
    };
    // One pass: every byte allowed, and whether any needs lowering.
    let mut upper = false;
    for b in host.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {}
            b'[' | b']' | b':' if literal => {}
            b'A'..=b'Z' => upper = true,
            _ => return None,
        }
    }
    // A name's labels are non-empty (`.a`, `a..b`, `a..` are refused: with one trailing
    // dot dropped, `a..` would read as `a.`, which reads as `a`, another host).
    let empty_label = !literal && host.split('.').any(str::is_empty);
    if host.is_empty() || empty_label || (!literal && host.contains(':')) {
        None
    } else if upper {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/../b", "/b"),
            ("//x", "/x"),
            ("/a//b///c", "/a/b/c"),
            ("/a/./b", "/a/b"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/b/", "/a/b/"),
            ("/%41%62c", "/Abc"),
            ("/%7euser", "/~user"),
            ("/a%2e/b", "/a./b"),
            ("/x/%2e%2e/y", "/y"),
            ("/x/%2E%2e/y", "/y"),
            ("/a%3bb", "/a%3Bb"),
            ("/a%3Bb", "/a%3Bb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/admin;jsessionid=1", "/admin;jsessionid=1"),
            ("/a/b%2dc", "/a/b-c"),
            ("/a%0ab", "/a%0Ab"),
            ("/%25", "/%25"),
            ("/%2541", "/%2541"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
        let bad = [
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/a%23b", PathError::EncodedSeparator),
            ("/a%00b", PathError::EncodedSeparator),
            ("/a%252Fb", PathError::DoubleEncodedSeparator),
            ("/a%252fb", PathError::DoubleEncodedSeparator),
            ("/a%255cb", PathError::DoubleEncodedSeparator),
            ("/a%2500b", PathError::DoubleEncodedSeparator),
            ("/a%2523b", PathError::DoubleEncodedSeparator),
            // Found by the `path` fuzz target: the second encoding spelled with escapes
            // decoded to `%252F`, which the old check (on the raw text) did not see and
            // which was then not canonical again.
            ("/a%25%32%46b", PathError::DoubleEncodedSeparator),
            ("/a%25%32fb", PathError::DoubleEncodedSeparator),
            ("/a%25%35%43b", PathError::DoubleEncodedSeparator),
            ("/a%25%30%30b", PathError::DoubleEncodedSeparator),
            ("/a%25%32%33b", PathError::DoubleEncodedSeparator),
            (
                "/public%25%32%46..%25%32%46admin",
                PathError::DoubleEncodedSeparator,
            ),
            // Found by the `path` fuzz target: a raw `#` or `?` (forward auth's original
            // URIs and config paths can carry them) ended the path for every other parser.
            ("/admin#/../public", PathError::Delimiter),
            ("/a#b", PathError::Delimiter),
            ("/a?b", PathError::Delimiter),
            ("/a/%2e%2e#/x", PathError::Delimiter),
            // Found by the `path` fuzz target: the UTF-8 check left out the `/`s, so `é`
            // cut in two by one (`%C3/%A9`) passed; stripping a route prefix then left
            // `/%A9..`, which is not canonical.
            ("/2%c3/%a9../", PathError::InvalidUtf8),
            ("/%C3/%A9", PathError::InvalidUtf8),
            ("/a%E2%82/%AC", PathError::InvalidUtf8),
            ("/a\\b", PathError::Backslash),
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/../x", PathError::AboveRoot),
            ("/a/../../x", PathError::AboveRoot),
            ("/%c0%af", PathError::InvalidUtf8),
            ("/%e0%80%af", PathError::InvalidUtf8),
            ("/%ff", PathError::InvalidUtf8),
            ("/%zz", PathError::BadEscape),
            ("/%4", PathError::BadEscape),
            ("/public/..;/admin", PathError::DotSegmentParams),
            ("/a/.;x/b", PathError::DotSegmentParams),
            ("/a b", PathError::ControlChar),
            ("a/b", PathError::NotAbsolute),
        ];
        for (raw, want) in bad {
            assert_eq!(
                normalize_path(raw).map(|p| p.into_owned()),
                Err(want),
                "{raw}"
            );
        }
    }

    #[test]
    fn plain_matching_agrees_with_segment_matching() {
        let prefixes = ["/", "/api", "/a/b", "/a", "/apiary"];
        let paths = [
            "/", "/api", "/api/", "/api/x", "/apiary", "/a/b/c", "/a/bc", "/a", "/b",
        ];
        for pre in prefixes {
            for p in paths {
                assert_eq!(
                    plain_prefix_matches(pre, p),
                    prefix_matches(pre, p),
                    "{pre} {p}"
                );
            }
        }
    }

    #[test]
    fn prefix_matches_at_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apiary"));
        assert!(!prefix_matches("/api", "/"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/admin", "/admin;x/y"));
        assert!(prefix_matches("/a/b", "/a/b/c"));
        assert!(!prefix_matches("/a/b", "/a/bc"));
    }

    #[test]
    fn hosts() {
        assert_eq!(
            normalize_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("a b"), None);
        assert_eq!(normalize_host("evil.com/x"), None);
        assert_eq!(normalize_host("t:99999"), None);
        assert_eq!(normalize_host("t:"), None);
        // Found by the `host` fuzz target: bytes after an IP literal, a `:` inside a
        // name, brackets in a name and an empty literal were accepted (and cut short).
        for bad in [
            "[::1]x",
            "[::1]:80x",
            "a:1:2",
            "x]--bample",
            "a[b]",
            "[]",
            "[::1]:",
            "a.com:+80",
            "[g::1]",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad}");
        }
        // Found by the `forward_auth` fuzz target: `...:8443` read as `..`, which read again
        // as `.`: not idempotent. Empty labels are refused.
        for bad in ["..", "...:8443", ".", "a..", "a..b", ".a", "a.example..:80"] {
            assert_eq!(normalize_host(bad), None, "{bad}");
        }
        assert_eq!(normalize_host("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(
            normalize_host("[FE80::1]:8443").as_deref(),
            Some("[fe80::1]")
        );
        assert_eq!(
            normalize_host("a_b.example:443").as_deref(),
            Some("a_b.example")
        );
    }
}

#[cfg(test)]
mod reading_tests {
    use super::*;

    /// The non-folded readings, and whether a folded one exists, of a canonical path.
    fn read(p: &str) -> (Vec<String>, Vec<String>) {
        let canonical = normalize_path(p).unwrap().into_owned();
        let r = readings(&canonical);
        let plain = r
            .iter()
            .filter(|r| !r.folded)
            .map(|r| r.path.clone())
            .collect();
        let folded = r
            .iter()
            .filter(|r| r.folded)
            .map(|r| r.path.clone())
            .collect();
        (plain, folded)
    }

    #[test]
    fn readings_table() {
        // (raw path, a reading that must be among them, folded?)
        let cases: &[(&str, &str, bool)] = &[
            ("/admin%3Bx/users", "/admin/users", false),
            ("/admin;jsessionid=1/users", "/admin/users", false),
            ("/public/..%3B/admin", "/admin", false),
            ("/public/..%3bx/admin", "/admin", false),
            ("/admin%20/users", "/admin/users", false),
            ("/admin%20%20/users", "/admin/users", false),
            ("/admin./users", "/admin/users", false),
            ("/admin.%20./users", "/admin/users", false),
            ("/public/..%20/admin", "/admin", false),
            ("/public/...%20/admin", "/admin", false),
            ("/ADMIN/users", "/admin/users", true),
            ("/Admin", "/admin", true),
            ("/public/%252e%252e/admin", "/admin", false),
            ("/public/%252E%252E/admin", "/admin", false),
            ("/public/%252e%252e%253b/admin", "/admin", false),
            ("/%2541dmin", "/Admin", false),
            ("/%2561dmin", "/admin", false),
            ("/public/.%252e/admin", "/admin", false),
            ("/ADMIN%20/x", "/admin/x", true),
            ("/Public/..%3B/ADMIN", "/admin", true),
            ("/public/%252E%252E/ADMIN%3B", "/admin", true),
        ];
        for (raw, want, folded) in cases {
            let (plain, fold) = read(raw);
            let list = if *folded { &fold } else { &plain };
            assert!(
                list.iter().any(|r| r == want),
                "{raw}: no reading {want:?} (folded {folded}) in {plain:?} / {fold:?}"
            );
        }
        // Paths nobody reads otherwise: no readings at all.
        for raw in [
            "/",
            "/admin/users",
            "/a/b.c/d",
            "/api/v1/items-2",
            "/x_y/z~",
        ] {
            let canonical = normalize_path(raw).unwrap();
            assert!(!has_other_readings(&canonical), "{raw}");
            assert!(readings(&canonical).is_empty(), "{raw}");
        }
        // A reading that is not a path after its change is left out, not refused.
        let (plain, _) = read("/public/%2525/x");
        assert!(plain.iter().all(|p| normalize_path(p).is_ok()));
        assert!(readings(&normalize_path("/%252e%252e/admin").unwrap()).is_empty());
    }
}

#[cfg(test)]
mod strip_tests {
    use super::strip_route_prefix;

    #[test]
    fn strips_whole_segments() {
        assert_eq!(strip_route_prefix("/a", true, "/a/b/c"), "/b/c");
        assert_eq!(strip_route_prefix("/a", true, "/a"), "/");
        assert_eq!(strip_route_prefix("/a", true, "/a/"), "/");
        assert_eq!(strip_route_prefix("/a/b", true, "/a/b/c/"), "/c/");
        assert_eq!(strip_route_prefix("/a", false, "/a/b"), "/a/b");
        assert_eq!(strip_route_prefix("/", true, "/a/b"), "/a/b");
        assert_eq!(strip_route_prefix("/admin", true, "/admin;x/y"), "/y");
    }
}
