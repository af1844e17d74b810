//! The `Cookie` header parser, session unsealing (chunk join included), cookie stripping,
//! and the session wire format inside the seal.
//!
//! Properties:
//! - unsealing a mutated cookie never yields a session: whatever the `Cookie` headers,
//!   a session comes back only if they carry, byte for byte, a value this store sealed
//!   (unchunked under the session name, or chunks `NAME_0..NAME_{n-1}`, each exactly once,
//!   joining to it, however it is cut), and it is that value's session. Values sealed under another secret
//!   never open;
//! - after `strip_proxy_cookies`, the proxy's parser finds none of its cookies, and no
//!   header it emptied is left;
//! - the wire format reads back what it writes, and writing what it read is stable.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::config::Secret;
use portcullis::fuzz_api::{
    is_proxy_cookie, request_cookies, session_read, session_write, strip_proxy_cookies, Cookies,
    Session,
};
use portcullis_fuzz::Input;

const NOW: u64 = 1_700_000_000;

/// A sealed value cut into cookies: (name, value) each.
type Pieces = Vec<(String, String)>;

struct Fixture {
    store: Cookies,
    name: String,
    /// (sealed value, its pieces, sub of its session)
    sealed: Vec<(String, Pieces, &'static str)>,
    /// Sealed by another secret with the same cookie name.
    foreign: String,
}

fn session(sub: &str, groups: usize) -> Session {
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let mut s = Session::new(
        "https://idp.example",
        sub,
        Secret::new("access-token".to_string()),
        now,
        Duration::from_secs(8 * 3600),
    );
    s.groups = (0..groups)
        .map(|i| format!("group-{i:03}-engineering-platform"))
        .collect();
    s.email = Some(format!("{sub}@example.com"));
    s
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        let store = Cookies::new(&[[7; 32], [9; 32]], true, now);
        let name = store.wire_name();
        let mut sealed = Vec::new();
        for (sub, groups) in [("small", 1), ("big", 200)] {
            let v = store.seal(&session(sub, groups));
            let pieces = store.pieces(&v);
            sealed.push((v, pieces, sub));
        }
        assert_eq!(sealed[0].1.len(), 1, "the small session is one cookie");
        assert!(sealed[1].1.len() > 1, "the big session is chunked");
        let other = Cookies::new(&[[8; 32]], true, now);
        let foreign = other.seal(&session("foreign", 1));
        Fixture {
            store,
            name,
            sealed,
            foreign,
        }
    })
}

/// The pairs of the `Cookie` headers, parsed here independently (RFC 6265bis §5.7).
fn pairs(values: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let trim = |s: &[u8]| -> Vec<u8> {
        let start = s
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .unwrap_or(s.len());
        let end = s
            .iter()
            .rposition(|b| *b != b' ' && *b != b'\t')
            .map_or(start, |i| i + 1);
        s[start..end.max(start)].to_vec()
    };
    let mut out = Vec::new();
    for v in values {
        for p in v.split(|b| *b == b';') {
            let p = trim(p);
            if p.is_empty() {
                continue;
            }
            match p.iter().position(|b| *b == b'=') {
                Some(i) => out.push((trim(&p[..i]), trim(&p[i + 1..]))),
                None => out.push((Vec::new(), p)),
            }
        }
    }
    out
}

/// Which sealed values (by sub) the headers carry, byte for byte: as the value of a cookie
/// with the session name, or as the chunk-named cookies `NAME_0..NAME_{n-1}` (each index
/// once, written without leading zeros) joined in index order. How a sealed value is cut
/// into chunks does not matter: the seal, not the cut, is what is authenticated.
fn carried(f: &Fixture, values: &[Vec<u8>]) -> Vec<&'static str> {
    let ps = pairs(values);
    let mut chunks: Vec<(usize, &[u8])> = Vec::new();
    let mut bad_index = false;
    for (n, val) in &ps {
        let Some(digits) = n
            .strip_prefix(f.name.as_bytes())
            .and_then(|r| r.strip_prefix(b"_"))
        else {
            continue;
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            continue;
        }
        match std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<usize>().ok())
        {
            Some(i) if digits.len() <= 3 && (digits.len() == 1 || digits[0] != b'0') => {
                chunks.push((i, val))
            }
            _ => bad_index = true,
        }
    }
    chunks.sort_by_key(|(i, _)| *i);
    let joined: Option<Vec<u8>> =
        (!bad_index && !chunks.is_empty() && chunks.iter().enumerate().all(|(k, (i, _))| k == *i))
            .then(|| chunks.iter().flat_map(|(_, v)| v.iter().copied()).collect());
    let mut subs = Vec::new();
    for (v, _, sub) in &f.sealed {
        let single = ps
            .iter()
            .any(|(n, val)| n == f.name.as_bytes() && val == v.as_bytes());
        if single || joined.as_deref() == Some(v.as_bytes()) {
            subs.push(*sub);
        }
    }
    subs
}

fn header_map(values: &[Vec<u8>]) -> Option<HeaderMap> {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(http::header::COOKIE, HeaderValue::from_bytes(v).ok()?);
    }
    Some(h)
}

/// Applies one mutation to the text of a cookie value.
fn mutate(inp: &mut Input<'_>, v: &mut Vec<u8>) {
    let at = usize::from(inp.u16()) % (v.len() + 1);
    match inp.below(5) {
        0 if at < v.len() => v[at] ^= inp.u8().max(1),
        1 => v.insert(at, inp.u8()),
        2 if at < v.len() => {
            v.remove(at);
        }
        3 => v.truncate(at),
        _ => {
            let b = inp.u8();
            if at < v.len() {
                v[at] = b;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut inp = Input::new(data);
    let values: Vec<Vec<u8>> = match inp.below(4) {
        // Raw `Cookie` headers (split at 0xFF); `@S@`, `@B@`, `@F@` and `@0@`..`@9@` stand
        // for the small, the big and the foreign sealed value and the big one's chunks.
        0 => {
            let mut out = Vec::new();
            while !inp.is_empty() {
                let mut s = String::from_utf8_lossy(inp.field(40_000)).into_owned();
                s = s
                    .replace("@S@", &f.sealed[0].0)
                    .replace("@B@", &f.sealed[1].0)
                    .replace("@F@", &f.foreign);
                for (i, (_, piece)) in f.sealed[1].1.iter().enumerate() {
                    s = s.replace(&format!("@{i}@"), piece);
                }
                s = s.replace("@N@", &f.name);
                out.push(s.into_bytes());
            }
            out
        }
        // A sealed value, unchunked or chunked, with mutations of its text, names and order.
        1 => {
            let which = inp.below(3);
            let mut cookies: Vec<(Vec<u8>, Vec<u8>)> = match which {
                0 => vec![(
                    f.name.clone().into_bytes(),
                    f.sealed[0].0.clone().into_bytes(),
                )],
                1 => f.sealed[1]
                    .1
                    .iter()
                    .map(|(n, v)| (n.clone().into_bytes(), v.clone().into_bytes()))
                    .collect(),
                _ => vec![(f.name.clone().into_bytes(), f.foreign.clone().into_bytes())],
            };
            for _ in 0..inp.below(4) {
                let k = inp
                    .below(cookies.len().max(1))
                    .min(cookies.len().saturating_sub(1));
                match inp.below(6) {
                    0 | 1 => mutate(&mut inp, &mut cookies[k].1),
                    2 => mutate(&mut inp, &mut cookies[k].0),
                    3 => {
                        let c = cookies[k].clone();
                        cookies.push(c);
                    }
                    4 if cookies.len() > 1 => {
                        cookies.remove(k);
                    }
                    _ => {
                        let j = inp.below(cookies.len());
                        cookies.swap(j, k);
                    }
                }
            }
            let mut header = Vec::new();
            for (i, (n, v)) in cookies.iter().enumerate() {
                if i > 0 {
                    header.extend_from_slice(b"; ");
                }
                header.extend_from_slice(n);
                header.push(b'=');
                header.extend_from_slice(v);
            }
            vec![header]
        }
        // The wire format read from raw bytes.
        2 => {
            let bytes = inp.rest();
            if let Some(s) = session_read(bytes) {
                let once = session_write(&s);
                let again = session_read(&once).expect("written session reads back");
                assert_eq!(session_write(&again), once, "wire format not stable");
            }
            return;
        }
        // Stripping the proxy's cookies.
        _ => {
            let values: Vec<Vec<u8>> = (0..1 + inp.below(3))
                .map(|_| inp.field(300).to_vec())
                .collect();
            let Some(mut h) = header_map(&values) else {
                return;
            };
            let bases = ["_portcullis"];
            strip_proxy_cookies(&mut h, &bases);
            for (n, _) in request_cookies(&h) {
                assert!(
                    !is_proxy_cookie(&n, &bases),
                    "cookie {:?} left after stripping",
                    String::from_utf8_lossy(&n)
                );
            }
            // A header emptied by stripping is removed; one that came empty is left as it
            // was (no proxy cookie in it: untouched).
            let empty_in = values.iter().filter(|v| v.is_empty()).count();
            let empty_out = h
                .get_all(http::header::COOKIE)
                .iter()
                .filter(|v| v.is_empty())
                .count();
            assert!(
                empty_out <= empty_in,
                "a Cookie header emptied by stripping was left"
            );
            return;
        }
    };
    let Some(h) = header_map(&values) else {
        return;
    };
    let loaded = f.store.load(&h);
    let legit = carried(f, &values);
    match loaded {
        None => {}
        Some(s) => {
            assert!(
                legit.contains(&s.sub.as_str()),
                "a session ({}) from cookies that do not carry its sealed value: {:?}",
                s.sub,
                values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v)
                        .chars()
                        .take(300)
                        .collect::<String>())
                    .collect::<Vec<_>>()
            );
        }
    }
});
