//! The access lines' own formatter: a `tracing` layer that writes events of target
//! `access` straight into the log buffer ([`super::writer`]), in the same shape as the
//! subscriber's JSON or text lines, while the `fmt` layer writes everything else.
//!
//! Why not `fmt` for these too: measured with `benches/cost.sh --log info`, `fmt`'s text
//! formatter spent ~24k instructions per access line (the field visitor's `Debug`
//! quoting, styling even with colour off, `f64` printing), more than the rest of a public
//! request. Here a line is one pass over the fields with escaping by hand.
//!
//! The event still goes through `tracing` (the filter of `RUST_LOG` decides, and any
//! other subscriber sees the same fields).

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::writer;

/// Formats access events as JSON objects (`json`) or as the text formatter's lines.
pub struct AccessLayer {
    pub json: bool,
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != "access" {
            return;
        }
        writer::append_line(|buf| render(buf, self.json, SystemTime::now(), event));
    }
}

/// One line: the timestamp, the level and the target, then the event's fields.
fn render(buf: &mut Vec<u8>, json: bool, now: SystemTime, event: &Event<'_>) {
    let mut out = Out(buf);
    let stamp = humantime::format_rfc3339_micros(now);
    let level = event.metadata().level().as_str();
    if json {
        let _ = write!(out, "{{\"timestamp\":\"{stamp}\",\"level\":\"{level}\"");
    } else {
        let _ = write!(out, "{stamp} {level:>5} access:");
    }
    let mut v = Fields { out, json };
    event.record(&mut v);
    if json {
        v.out.0.extend_from_slice(b",\"target\":\"access\"}\n");
    } else {
        v.out.0.push(b'\n');
    }
}

struct Out<'a>(&'a mut Vec<u8>);

impl fmt::Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Writes `s` quoted: JSON's escapes, which the text format shares for `"`, `\` and
/// control characters (the text formatter's `Debug` quoting reads the same for these
/// fields: header values are visible ASCII).
fn quoted(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

fn integer(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

struct Fields<'a> {
    out: Out<'a>,
    json: bool,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        let b = &mut self.out.0;
        if self.json {
            b.extend_from_slice(b",\"");
            b.extend_from_slice(field.name().as_bytes());
            b.extend_from_slice(b"\":");
        } else {
            b.push(b' ');
            b.extend_from_slice(field.name().as_bytes());
            b.push(b'=');
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        quoted(self.out.0, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        integer(self.out.0, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        if value < 0 {
            self.out.0.push(b'-');
        }
        integer(self.out.0, value.unsigned_abs());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let v: &[u8] = if value { b"true" } else { b"false" };
        self.out.0.extend_from_slice(v);
    }

    /// Milliseconds to the microsecond (`ms` of the access line): at most three
    /// decimals, without trailing zeros.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if !(0.0..1e15).contains(&value) {
            // Not a duration the access line makes; printed plainly (JSON has no NaN).
            if self.json && !value.is_finite() {
                self.out.0.extend_from_slice(b"null");
            } else {
                let _ = write!(self.out, "{value}");
            }
            return;
        }
        let thousandths = (value * 1e3).round() as u64;
        integer(self.out.0, thousandths / 1000);
        let frac = thousandths % 1000;
        if frac != 0 {
            let digits = [
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ];
            let keep = if frac.is_multiple_of(100) {
                1
            } else if frac.is_multiple_of(10) {
                2
            } else {
                3
            };
            self.out.0.push(b'.');
            self.out.0.extend_from_slice(&digits[..keep]);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields (the client address) arrive here: printed, then quoted.
        let mut s = String::with_capacity(48);
        let _ = write!(s, "{value:?}");
        self.key(field);
        quoted(self.out.0, &s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tracing_subscriber::layer::SubscriberExt;

    /// Captures what the layer renders, by rendering into a vector instead of the log
    /// buffer.
    struct Capture {
        json: bool,
        lines: Arc<Mutex<Vec<u8>>>,
    }

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_micros(1_765_000_000_123_456);
            render(&mut self.lines.lock().unwrap(), self.json, now, event);
        }
    }

    fn line(json: bool) -> String {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry().with(Capture {
            json,
            lines: lines.clone(),
        });
        tracing::subscriber::with_default(sub, || {
            let client: std::net::IpAddr = "2001:db8::1".parse().unwrap();
            tracing::info!(
                target: "access",
                method = "GET",
                user_agent = "quote \" back\\slash \u{1} tab\t é",
                status = 403u16,
                client = %client,
                upstream_ms = Option::<f64>::None,
                total_ms = 12.5,
                small_ms = 0.001,
                whole_ms = 7.0,
                reason = Some("policy:group"),
            );
        });
        let bytes = lines.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_parse_with_every_field_and_its_type() {
        let text = line(true);
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["timestamp"], "2025-12-06T05:46:40.123456Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["user_agent"], "quote \" back\\slash \u{1} tab\t é");
        assert_eq!(v["status"], 403);
        assert_eq!(v["client"], "2001:db8::1");
        assert!(v.get("upstream_ms").is_none(), "None fields are left out");
        assert_eq!(v["total_ms"], 12.5);
        assert_eq!(v["small_ms"], 0.001);
        assert_eq!(v["whole_ms"], 7);
        assert_eq!(v["reason"], "policy:group");
    }

    #[test]
    fn text_lines_read_like_the_fmt_formatter() {
        let text = line(false);
        assert_eq!(
            text,
            "2025-12-06T05:46:40.123456Z  INFO access: method=\"GET\" \
             user_agent=\"quote \\\" back\\\\slash \\u0001 tab\\t é\" status=403 \
             client=\"2001:db8::1\" total_ms=12.5 small_ms=0.001 whole_ms=7 \
             reason=\"policy:group\"\n"
        );
    }
}
