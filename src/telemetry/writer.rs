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

/// The `MakeWriter` of the `fmt` layer (every line but the access lines, which
/// `access_layer` appends with [`append_line`]): written at once, after the access lines
/// buffered before it.
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
pub struct Line;

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        write_out(&mut pending());
        io::stderr().lock().write(data)
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        write_out(&mut pending());
        io::stderr().lock().write_all(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_wait_for_a_full_buffer_or_another_line() {
        append_line(|b| b.extend_from_slice(b"one access line\n"));
        assert!(pending().ends_with(b"one access line\n"));
        // A line of the fmt layer writes the buffered ones out first.
        LogWriter.make_writer().write_all(b"").unwrap();
        assert!(!pending()
            .windows(b"one access line".len())
            .any(|w| w == b"one access line"));
        // A full buffer leaves at once.
        let big = vec![b'x'; BUFFER];
        append_line(|b| b.extend_from_slice(&big));
        assert!(pending().len() < BUFFER);
    }
}
