//! W3C Trace Context (Level 1) `traceparent`: reading a peer's, writing the proxy's. Pure
//! functions over bytes; imports nothing of the crate.
//!
//! `traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<trace-flags: 2 hex>`.

/// A trace id: 16 bytes, never all zero.
pub type TraceId = [u8; 16];
/// A span id: 8 bytes, never all zero.
pub type SpanId = [u8; 8];

/// What a valid `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    /// Bit 0: the caller sampled (recorded) the trace.
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Lowercase hex digits only (W3C Trace Context, "traceparent Header Field Values": `HEXDIGLC`; uppercase is invalid).
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_into(src: &[u8], out: &mut [u8]) -> Option<()> {
    if src.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(())
}

/// Parses one `traceparent` value. `None` for anything the spec calls invalid, and then the
/// receiver restarts the trace (W3C Trace Context, "Versioning of traceparent"):
/// - version `ff`, or a version that is not two lowercase hex digits;
/// - version `00` with anything but exactly 55 characters; a later version shorter than 55
///   or with more that does not follow a `-` (a higher version is read by the fields of
///   version 00, each followed by a dash or the end);
/// - an all-zero trace id or parent id ("trace-id", "parent-id": vendors MUST ignore the
///   header); uppercase hex.
///
/// Optional whitespace around the value is ignored.
pub fn parse(value: &[u8]) -> Option<TraceParent> {
    let v = value.trim_ascii();
    let mut version = [0u8; 1];
    hex_into(v.get(..2)?, &mut version)?;
    match version[0] {
        0xff => return None,
        0 if v.len() != 55 => return None,
        _ if v.len() < 55 || (v.len() > 55 && v[55] != b'-') => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut tp = TraceParent {
        trace_id: [0; 16],
        parent_id: [0; 8],
        flags: 0,
    };
    hex_into(&v[3..35], &mut tp.trace_id)?;
    hex_into(&v[36..52], &mut tp.parent_id)?;
    let mut flags = [0u8; 1];
    hex_into(&v[53..55], &mut flags)?;
    tp.flags = flags[0];
    if tp.trace_id == [0; 16] || tp.parent_id == [0; 8] {
        return None;
    }
    Some(tp)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_out(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
}

/// The proxy's `traceparent` (version 00): `span` is the parent the receiver is told; of
/// the flags only `sampled` is set (the others are not ours to pass on).
pub fn format(trace_id: &TraceId, span: &SpanId, sampled: bool) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    hex_out(trace_id, &mut out[3..35]);
    hex_out(span, &mut out[36..52]);
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

/// Lowercase hex of any id (for logs and tests).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_out(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_spec_example_and_writes_it_back() {
        let tp = parse(VALID.as_bytes()).unwrap();
        assert_eq!(hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert_eq!(
            &format(&tp.trace_id, &tp.parent_id, true)[..],
            VALID.as_bytes()
        );
        let unsampled = format(&tp.trace_id, &tp.parent_id, false);
        assert!(!parse(&unsampled).unwrap().sampled());
        // Surrounding whitespace is not part of the value.
        assert_eq!(parse(format!("  {VALID}\t").as_bytes()), Some(tp));
    }

    #[test]
    fn invalid_values_start_a_new_trace() {
        for bad in [
            "",
            "00",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff; version 00 with more after it; short; wrong separators.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7.01",
            // Not hex; a version that is not hex.
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // A later version with more that does not follow a dash.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn later_versions_are_read_by_the_fields_version_00_has() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert_eq!(
            parse(v.as_bytes()).map(|t| t.parent_id),
            parse(VALID.as_bytes()).map(|t| t.parent_id)
        );
        assert!(parse(&v.as_bytes()[..55]).is_some());
    }
}
