//! Path canonicalization (DESIGN §1.1, README "Path readings"): `normalize_path`,
//! `readings`, `has_other_readings`, `strip_route_prefix`.
//!
//! Properties, for every raw path it accepts:
//! - the canonical path is canonical again, unchanged (idempotent);
//! - it starts with `/`, has no empty, `.` or `..` segment (none hidden behind `;x`
//!   parameters either), no encoded `/`, `\`, `#` or NUL (`%2F`, `%5C`, `%23`, `%00`, any
//!   case), no raw `\`, `?`, `#`, control character, space or non-ASCII byte;
//! - every reading is itself canonical (a folded one: in lower case, escapes included,
//!   the form route prefixes are compared in when folded), and a path that
//!   `has_other_readings` says nothing about has no reading (the router skips them then);
//! - what is left after stripping a prefix made of its own first segments is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::fuzz_api::{has_other_readings, normalize_path, readings, strip_route_prefix};

/// `folded`: `c` is a canonical path in ASCII lower case (escapes included), the form
/// folded readings are compared in.
fn assert_canonical(c: &str, what: &str, raw: &str, folded: bool) {
    assert!(c.starts_with('/'), "{what} {c:?} of {raw:?}: not absolute");
    let again = normalize_path(c).map(|x| {
        if folded {
            x.to_ascii_lowercase()
        } else {
            x.into_owned()
        }
    });
    assert_eq!(
        again.as_deref(),
        Ok(c),
        "{what} {c:?} of {raw:?}: not canonical again (idempotence)"
    );
    let segs: Vec<&str> = c.split('/').skip(1).collect();
    for (i, seg) in segs.iter().enumerate() {
        let base = seg.split(';').next().unwrap_or("");
        assert!(
            !(seg.is_empty() && i + 1 < segs.len()),
            "{what} {c:?} of {raw:?}: empty segment (//)"
        );
        assert!(
            base != "." && base != "..",
            "{what} {c:?} of {raw:?}: dot segment"
        );
    }
    let lower = c.to_ascii_lowercase();
    for enc in ["%2f", "%5c", "%23", "%00"] {
        assert!(!lower.contains(enc), "{what} {c:?} of {raw:?}: {enc}");
    }
    for b in c.bytes() {
        assert!(
            b > 0x20 && b < 0x7f && !matches!(b, b'\\' | b'?' | b'#'),
            "{what} {c:?} of {raw:?}: byte {b:#04x}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // Request targets and config values reach the canonicalizer as text.
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = normalize_path(raw) else {
        return;
    };
    let c = c.into_owned();
    assert_canonical(&c, "canonical path", raw, false);

    let rs = readings(&c);
    if !has_other_readings(&c) {
        assert!(
            rs.is_empty(),
            "{c:?}: readings {rs:?} though has_other_readings is false"
        );
    }
    for r in &rs {
        assert_canonical(&r.path, "reading", raw, r.folded);
        if r.folded {
            assert!(
                !r.path.bytes().any(|b| b.is_ascii_uppercase()),
                "{c:?}: folded reading {:?} has upper case",
                r.path
            );
        }
    }

    // Prefixes made of the path's own first segments (as a route prefix is written:
    // no trailing slash), stripped and not.
    let segs: Vec<&str> = c.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    for k in 0..=segs.len().min(4) {
        let prefix = if k == 0 {
            "/".to_string()
        } else {
            format!("/{}", segs[..k].join("/"))
        };
        for strip in [false, true] {
            let rest = strip_route_prefix(&prefix, strip, &c);
            assert_canonical(rest, "stripped path", raw, false);
            if !strip {
                assert_eq!(rest, c);
            }
        }
    }
});
