//! Raw-socket HTTP/1.1: exact bytes on the wire (malformed paths, header floods,
//! slowloris), and a minimal response reader.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// How a read attempt on a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The peer closed (EOF or reset).
    Closed,
    /// Still open when the time ran out.
    Open,
}

pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one complete response from the front of `buf`; returns it and the bytes used.
/// `eof`: the connection has ended (a body without length runs to the end).
fn parse(buf: &[u8], eof: bool) -> Option<(RawResponse, usize)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let rest = &buf[head_end..];
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    if no_body {
        return Some((
            RawResponse {
                status,
                headers,
                body: Vec::new(),
            },
            head_end,
        ));
    }
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < len {
            return None;
        }
        let body = rest[..len].to_vec();
        return Some((
            RawResponse {
                status,
                headers,
                body,
            },
            head_end + len,
        ));
    }
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = find(&rest[pos..], b"\r\n")?;
            let size_text = String::from_utf8_lossy(&rest[pos..pos + line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            pos += line_end + 2;
            if size == 0 {
                // Trailers end with an empty line.
                let end = find(&rest[pos..], b"\r\n")?;
                pos += end + 2;
                return Some((
                    RawResponse {
                        status,
                        headers,
                        body,
                    },
                    head_end + pos,
                ));
            }
            if rest.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
    }
    if eof {
        return Some((
            RawResponse {
                status,
                headers,
                body: rest.to_vec(),
            },
            buf.len(),
        ));
    }
    None
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RawConn> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        Ok(RawConn {
            stream,
            buf: Vec::new(),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads one response, up to `timeout`. `Err` if the connection closed first or the
    /// time ran out.
    pub async fn read_response(&mut self, timeout: Duration) -> Result<RawResponse, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut eof = false;
        loop {
            if let Some((r, used)) = parse(&self.buf, eof) {
                self.buf.drain(..used);
                return Ok(r);
            }
            if eof {
                return Err(format!(
                    "connection closed before a complete response ({} bytes: {:?})",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                ));
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err("timed out waiting for a response".into()),
                Ok(Ok(0)) | Ok(Err(_)) => eof = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits up to `timeout` for the peer to close; bytes received meanwhile are kept.
    pub async fn wait_closed(&mut self, timeout: Duration) -> ReadEnd {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return ReadEnd::Open,
                Ok(Ok(0)) | Ok(Err(_)) => return ReadEnd::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Bytes received and not parsed as a response.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// Sends `request` on a new connection and reads one response.
pub async fn request(addr: SocketAddr, request: &[u8]) -> Result<RawResponse, String> {
    let mut c = RawConn::connect(addr).await.map_err(|e| e.to_string())?;
    c.send(request).await.map_err(|e| e.to_string())?;
    c.read_response(Duration::from_secs(30)).await
}

/// `GET {target}` with `Host: test.local` and `Connection: close`.
pub async fn get(addr: SocketAddr, target: &str) -> Result<RawResponse, String> {
    request(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
}

/// `GET {target}` with extra raw header lines (each without CRLF).
pub async fn get_with(
    addr: SocketAddr,
    target: &str,
    headers: &[&str],
) -> Result<RawResponse, String> {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    request(addr, req.as_bytes()).await
}

/// Retries `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "not true after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One request as a [`RawUpstream`] framed it from the bytes it received.
#[derive(Debug, Clone)]
pub struct UpRequest {
    /// The request line.
    pub line: String,
    /// Header lines as received (name, value), in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Every line of the head ended with CRLF (no bare CR or LF anywhere in it).
    pub crlf_only: bool,
    /// Its place among all the requests this upstream framed, over all connections.
    pub seq: usize,
}

impl UpRequest {
    /// Every value of header `name` (compared case-insensitively).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The framing headers: `Content-Length` and `Transfer-Encoding` lines.
    pub fn framing(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(n, _)| {
                n.eq_ignore_ascii_case("content-length")
                    || n.eq_ignore_ascii_case("transfer-encoding")
            })
            .cloned()
            .collect()
    }
}

/// What a [`RawUpstream`] connection received: every byte, the requests it framed, and
/// what it could not frame (a half-sent body, or bytes that are no request).
#[derive(Debug, Default, Clone)]
pub struct UpConn {
    pub bytes: Vec<u8>,
    pub requests: Vec<UpRequest>,
    /// Bytes after the last framed request (an aborted body, or garbage).
    pub rest: Vec<u8>,
    /// The bytes after the last request could never become a request (not a request
    /// line, a malformed head or chunk).
    pub garbage: bool,
}

/// An HTTP/1.1 upstream on a raw socket: records every byte each connection sends, frames
/// requests strictly itself (RFC 9112: `Transfer-Encoding: chunked` or `Content-Length`,
/// CRLF lines) and answers each with `200 OK` and the body `ok`. What the proxy sends is
/// seen as it is on the wire, not as a lenient HTTP library would read it.
pub struct RawUpstream {
    pub addr: SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<UpConn>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Frames one request from the front of `buf`: `Ok(None)` while incomplete, `Err` when
/// the bytes cannot be a request.
fn frame(buf: &[u8]) -> Result<Option<(UpRequest, usize)>, ()> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        // A request line must come first: anything else is no request.
        let first = buf.split(|b| *b == b'\n').next().unwrap_or(&[]);
        let first =
            String::from_utf8_lossy(first.strip_suffix(b"\r").unwrap_or(first)).into_owned();
        let request_line = first.split(' ').count() == 3 && first.ends_with(" HTTP/1.1");
        if buf.len() > 64 * 1024 || (buf.contains(&b'\n') && !request_line) {
            return Err(());
        }
        return Ok(None);
    };
    let head = &buf[..head_end];
    let crlf_only = head.iter().enumerate().all(|(i, b)| match b {
        b'\r' => head.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && head[i - 1] == b'\r',
        _ => true,
    });
    let text = String::from_utf8_lossy(head).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("").to_string();
    if line.split(' ').count() != 3 || !line.ends_with(" HTTP/1.1") {
        return Err(());
    }
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l.split_once(':').ok_or(())?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let mut req = UpRequest {
        line,
        headers,
        body: Vec::new(),
        crlf_only,
        seq: 0,
    };
    let te = req.all("transfer-encoding").join(",");
    let cl = req.all("content-length");
    let mut pos = head_end + 4;
    if !te.is_empty() {
        if !te.trim().eq_ignore_ascii_case("chunked") {
            return Err(());
        }
        loop {
            let Some(end) = find(&buf[pos..], b"\r\n") else {
                return Ok(None);
            };
            let size_text = String::from_utf8_lossy(&buf[pos..pos + end]).into_owned();
            let hex = size_text.split(';').next().unwrap_or("");
            if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(());
            }
            let size = usize::from_str_radix(hex, 16).map_err(|_| ())?;
            pos += end + 2;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let Some(end) = find(&buf[pos..], b"\r\n") else {
                        return Ok(None);
                    };
                    pos += end + 2;
                    if end == 0 {
                        return Ok(Some((req, pos)));
                    }
                }
            }
            if buf.len() < pos + size + 2 {
                return Ok(None);
            }
            req.body.extend_from_slice(&buf[pos..pos + size]);
            if &buf[pos + size..pos + size + 2] != b"\r\n" {
                return Err(());
            }
            pos += size + 2;
        }
    }
    if let Some(v) = cl.first() {
        let n: usize = v.parse().map_err(|_| ())?;
        if buf.len() < pos + n {
            return Ok(None);
        }
        req.body = buf[pos..pos + n].to_vec();
        pos += n;
    }
    Ok(Some((req, pos)))
}

impl RawUpstream {
    pub async fn start() -> RawUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<UpConn>>> = Default::default();
        let seq = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn({
            let conns = conns.clone();
            async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let ix = {
                        let mut c = conns.lock().unwrap();
                        c.push(UpConn::default());
                        c.len() - 1
                    };
                    let conns = conns.clone();
                    let seq = seq.clone();
                    tokio::spawn(async move {
                        let mut chunk = [0u8; 16 * 1024];
                        loop {
                            let n = match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let answers = {
                                let mut all = conns.lock().unwrap();
                                let c = &mut all[ix];
                                c.bytes.extend_from_slice(&chunk[..n]);
                                if c.garbage {
                                    c.rest.extend_from_slice(&chunk[..n]);
                                    continue;
                                }
                                c.rest.extend_from_slice(&chunk[..n]);
                                let mut answers = 0;
                                loop {
                                    match frame(&c.rest) {
                                        Ok(Some((mut req, used))) => {
                                            req.seq = seq
                                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                            c.requests.push(req);
                                            c.rest.drain(..used);
                                            answers += 1;
                                        }
                                        Ok(None) => break,
                                        Err(()) => {
                                            c.garbage = true;
                                            break;
                                        }
                                    }
                                }
                                answers
                            };
                            for _ in 0..answers {
                                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(ok).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
            }
        });
        RawUpstream { addr, conns, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every connection so far, in order of arrival.
    pub fn conns(&self) -> Vec<UpConn> {
        self.conns.lock().unwrap().clone()
    }

    /// Every request framed so far, over all connections, in the order they were framed
    /// (a pooled connection may carry a later request than a newer connection did).
    pub fn requests(&self) -> Vec<UpRequest> {
        let mut all: Vec<UpRequest> = self.conns().into_iter().flat_map(|c| c.requests).collect();
        all.sort_by_key(|r| r.seq);
        all
    }

    /// Every byte received so far, over all connections.
    pub fn bytes(&self) -> Vec<u8> {
        self.conns().into_iter().flat_map(|c| c.bytes).collect()
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// An HTTP/1.1 upstream that fails mid-exchange: on each connection it reads the request
/// head, writes `sent` (nothing, a response head, or a head and part of its body), then
/// resets the connection (`SO_LINGER` 0: an RST, not a FIN).
pub struct ResettingUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResettingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResettingUpstream {
    pub async fn start(sent: Vec<u8>) -> ResettingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = std::sync::Arc::new(sent);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let sent = sent.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while find(&head, b"\r\n\r\n").is_none() {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if !sent.is_empty() {
                        let _ = stream.write_all(&sent).await;
                        let _ = stream.flush().await;
                        // Let the bytes reach the proxy before the reset discards them.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    stream.set_zero_linger().unwrap();
                    drop(stream);
                });
            }
        });
        ResettingUpstream { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
