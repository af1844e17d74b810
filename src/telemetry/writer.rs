//! Where log lines go: standard error. Access lines (target `access`, one per request)
//! are buffered, up to [`BUFFER`] bytes and at most [`FLUSH_EVERY`], as nginx's
//! `access_log ... buffer=32k flush=1s` does: at volume one `write(2)` carries about a
//! hundred lines instead of one each. Every other line (start, reloads, warnings, errors)
//! is written at once, after the access lines buffered before it, so the order holds.
//!
//! What a crash (not a clean stop) can lose: the access lines of the last
//! [`FLUSH_EVERY`]. A clean stop calls [`flush`].

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// Buffered access lines are written out when they reach this size.
const BUFFER: usize = 32 * 1024;
/// ... or when they are this old (the flusher thread's period).
const FLUSH_EVERY: Duration = Duration::from_millis(250);

static PENDING: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

fn pending() -> MutexGuard<'static, Vec<u8>> {
    PENDING
        .get_or_init(|| Mutex::new(Vec::with_capacity(BUFFER)))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        // Nowhere to report a failed write to standard error; the lines are dropped.
        let _ = io::stderr().lock().write_all(buf);
        buf.clear();
    }
}

/// Appends one access line, rendered by `render` straight into the buffer.
pub fn append_line(render: impl FnOnce(&mut Vec<u8>)) {
    let mut buf = pending();
    render(&mut buf);
    if buf.len() >= BUFFER {
        write_out(&mut buf);
    }
}

/// Writes out the buffered access lines (a clean stop calls this last).
pub fn flush() {
    write_out(&mut pending());
}

/// The `MakeWriter` of the subscriber: buffered for access lines, direct for the rest.
#[derive(Clone, Copy)]
pub struct LogWriter;

impl LogWriter {
    /// Starts the thread that writes out buffered lines every [`FLUSH_EVERY`].
    pub fn start() -> LogWriter {
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            });
        if spawned.is_err() {
            // Without the thread, lines still leave when the buffer fills or another line
            // is written; say so once.
            eprintln!("portcullis: could not start the log flusher thread");
        }
        LogWriter
    }
}

/// One line's writer. The formatter writes a whole line with one `write_all`.
pub enum Line {
    Buffered,
    Direct,
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut buf = pending();
        match self {
            Line::Buffered => {
                drop(buf);
                append_line(|b| b.extend_from_slice(data));
                Ok(data.len())
            }
            Line::Direct => {
                write_out(&mut buf);
                io::stderr().lock().write(data)
            }
        }
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Line::Buffered => self.write(data).map(|_| ()),
            Line::Direct => {
                let mut buf = pending();
                write_out(&mut buf);
                io::stderr().lock().write_all(data)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line::Direct
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        if meta.target() == "access" && *meta.level() >= tracing::Level::INFO {
            Line::Buffered
        } else {
            Line::Direct
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_wait_for_a_full_buffer_or_another_line() {
        let w = LogWriter;
        let access = tracing::Metadata::new(
            "access",
            "access",
            tracing::Level::INFO,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        let mut line = w.make_writer_for(&access);
        assert!(matches!(line, Line::Buffered));
        line.write_all(b"one access line\n").unwrap();
        assert!(pending().ends_with(b"one access line\n"));
        // A line of another target writes the buffered ones out first.
        let mut other = w.make_writer();
        assert!(matches!(other, Line::Direct));
        other.write_all(b"").unwrap();
        assert!(!pending()
            .windows(b"one access line".len())
            .any(|w| w == b"one access line"));
        // A full buffer leaves at once.
        let big = vec![b'x'; BUFFER];
        w.make_writer_for(&access).write_all(&big).unwrap();
        assert!(pending().len() < BUFFER);
    }

    struct Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unimplemented!("not registered")
        }
    }
    static CALLSITE: Callsite = Callsite;
}
