//! HTTP/1 framing and request smuggling at the listener, over raw sockets on both sides: a
//! client that writes exact bytes, and an upstream ([`raw::RawUpstream`]) that records
//! every byte it receives and frames requests strictly itself. Whatever the client's
//! framing, the upstream receives exactly one unambiguous request per request the proxy
//! accepted (CRLF lines, at most one framing header, a body that matches it), or nothing;
//! a request hidden in a body (`GET /smuggled`) never reaches it as a request.

use std::time::Duration;

use crate::support::raw::{RawConn, RawUpstream};
use crate::support::{server_section, TestProxy};

/// `/admin` needs a bearer token (none is ever sent: 401 without any provider call);
/// everything else is public. Both go to the raw upstream.
fn config(up: &RawUpstream) -> String {
    format!(
        "{}\n[provider]\nissuer = \"http://127.0.0.1:9\"\n\n[bearer]\naudiences = [\"api\"]\n\n\
         [[upstream]]\nname = \"raw\"\nurl = \"{}\"\n\n\
         [[route]]\nname = \"admin\"\npath = \"/admin\"\nupstream = \"raw\"\nauth = \"bearer\"\n\n\
         [[route]]\nname = \"pub\"\npath = \"/\"\nupstream = \"raw\"\nauth = \"public\"\n",
        server_section(""),
        up.url()
    )
}

struct Fixture {
    up: RawUpstream,
    proxy: TestProxy,
}

async fn fixture() -> Fixture {
    let up = RawUpstream::start().await;
    let proxy = TestProxy::start(&config(&up)).await;
    Fixture { up, proxy }
}

/// A request smuggled in a body: it must never reach the upstream as a request.
const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";

/// What the client got: a status, or `None` when the connection closed without one.
async fn send(f: &Fixture, bytes: &[u8]) -> Option<u16> {
    let mut c = RawConn::connect(f.proxy.addr).await.unwrap();
    c.send(bytes).await.unwrap();
    c.read_response(Duration::from_secs(10))
        .await
        .ok()
        .map(|r| r.status)
}

#[derive(Debug, Clone, Copy)]
enum Want {
    /// 400 (or closed) and nothing upstream.
    Refused,
    /// Refused, or forwarded with this body.
    Either(&'static str),
    /// Forwarded with this body.
    Forwarded(&'static str),
}

/// Sends `bytes` for `path` and checks what reached the upstream.
async fn case(f: &Fixture, name: &str, path: &str, bytes: &[u8], want: Want) {
    let before = f.up.requests().len();
    let status = send(f, bytes).await;
    // A refusal leaves the upstream alone: give a stray request time to arrive anyway.
    if status != Some(200) {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let got: Vec<_> = f.up.requests().into_iter().skip(before).collect();
    // The outcome, for the record (`--nocapture`): refused or forwarded, and how.
    eprintln!(
        "framing case {name:?}: status {status:?}, upstream framed {} request(s){}",
        got.len(),
        got.first()
            .map(|r| format!(", framing {:?}", r.framing()))
            .unwrap_or_default()
    );
    let forwarded = match (want, status) {
        (Want::Refused, s) => {
            assert!(
                s.is_none() || s == Some(400),
                "{name}: refusal expected, got {s:?}"
            );
            false
        }
        (Want::Either(_), Some(200)) | (Want::Forwarded(_), Some(200)) => true,
        (Want::Either(_), s) => {
            assert!(s.is_none() || s == Some(400), "{name}: got {s:?}");
            false
        }
        (Want::Forwarded(_), s) => panic!("{name}: forwarding expected, got {s:?}"),
    };
    if !forwarded {
        assert!(
            got.is_empty(),
            "{name}: refused, yet the upstream got {got:?}"
        );
        return;
    }
    assert_eq!(got.len(), 1, "{name}: the upstream got {got:?}");
    let r = &got[0];
    assert!(
        r.line.starts_with(&format!("POST {path} ")) || r.line.starts_with(&format!("GET {path} ")),
        "{name}: {}",
        r.line
    );
    assert!(
        r.crlf_only,
        "{name}: bare CR or LF in the forwarded head: {r:?}"
    );
    let framing = r.framing();
    assert!(
        framing.len() <= 1,
        "{name}: more than one framing header: {framing:?}"
    );
    if let Some((n, v)) = framing.first() {
        if n.eq_ignore_ascii_case("content-length") {
            assert_eq!(v.parse::<usize>().ok(), Some(r.body.len()), "{name}: {r:?}");
        } else {
            assert!(v.eq_ignore_ascii_case("chunked"), "{name}: {n}: {v}");
        }
    }
    let body = match want {
        Want::Either(b) | Want::Forwarded(b) => b,
        Want::Refused => unreachable!(),
    };
    assert_eq!(String::from_utf8_lossy(&r.body), body, "{name}: body");
}

/// After all cases: every upstream connection held only whole, framed requests (or a body
/// cut short), none of them the hidden one.
async fn nothing_smuggled(f: &Fixture) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, c) in f.up.conns().iter().enumerate() {
        assert!(
            !c.garbage,
            "upstream connection {i} got bytes that are no request: {:?}",
            String::from_utf8_lossy(&c.bytes)
        );
        for r in &c.requests {
            assert!(
                !r.line.contains("/smuggled"),
                "hidden request reached the upstream: {r:?}"
            );
        }
        // Unframed bytes are the rest of a request whose body never ended (its chunk data
        // may hold anything), never the start of the hidden one.
        assert!(
            !c.rest.starts_with(b"GET /smuggled"),
            "hidden request in unframed bytes: {:?}",
            String::from_utf8_lossy(&c.rest)
        );
    }
}

fn post(path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n{body}")
        .into_bytes()
}

#[tokio::test]
async fn content_length_with_transfer_encoding_in_either_order_is_one_chunked_request() {
    let f = fixture().await;
    let hidden_after_last_chunk = format!("0\r\n\r\n{HIDDEN}");
    let cl = hidden_after_last_chunk.len();
    for (name, headers) in [
        (
            "CL then TE",
            format!("Content-Length: {cl}\r\nTransfer-Encoding: chunked\r\n"),
        ),
        (
            "TE then CL",
            format!("Transfer-Encoding: chunked\r\nContent-Length: {cl}\r\n"),
        ),
    ] {
        let path = if name.starts_with("CL") {
            "/cl-te"
        } else {
            "/te-cl"
        };
        case(
            &f,
            name,
            path,
            &post(path, &headers, &hidden_after_last_chunk),
            Want::Either(""),
        )
        .await;
    }
    // The chunked body wins over a shorter Content-Length, which is not forwarded.
    let body = "8\r\nSMUGGLED\r\n0\r\n\r\n";
    case(
        &f,
        "TE with a short CL",
        "/te-short-cl",
        &post(
            "/te-short-cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            body,
        ),
        Want::Either("SMUGGLED"),
    )
    .await;
    nothing_smuggled(&f).await;
}

#[tokio::test]
async fn duplicated_or_comma_joined_content_length_is_refused_or_made_one() {
    let f = fixture().await;
    let same = "Content-Length: 5\r\nContent-Length: 5\r\n";
    case(
        &f,
        "same CL twice",
        "/cl-twice",
        &post("/cl-twice", same, "hello"),
        Want::Either("hello"),
    )
    .await;
    let differ = format!(
        "Content-Length: 5\r\nContent-Length: {}\r\n",
        5 + HIDDEN.len()
    );
    case(
        &f,
        "two CLs",
        "/cl-differ",
        &post("/cl-differ", &differ, &format!("hello{HIDDEN}")),
        Want::Refused,
    )
    .await;
    case(
        &f,
        "CL 5, 5",
        "/cl-list",
        &post("/cl-list", "Content-Length: 5, 5\r\n", "hello"),
        Want::Either("hello"),
    )
    .await;
    let list = format!("Content-Length: 5, {}\r\n", 5 + HIDDEN.len());
    case(
        &f,
        "CL 5, N",
        "/cl-list2",
        &post("/cl-list2", &list, &format!("hello{HIDDEN}")),
        Want::Refused,
    )
    .await;
    case(
        &f,
        "CL +5",
        "/cl-plus",
        &post("/cl-plus", "Content-Length: +5\r\n", "hello"),
        Want::Refused,
    )
    .await;
    nothing_smuggled(&f).await;
}

#[tokio::test]
async fn obfuscated_transfer_encoding_is_refused() {
    let f = fixture().await;
    let body = format!("0\r\n\r\n{HIDDEN}");
    let cl = body.len();
    for (name, te) in [
        ("xchunked", "Transfer-Encoding: xchunked\r\n".to_string()),
        (
            "chunked, identity",
            "Transfer-Encoding: chunked, identity\r\n".to_string(),
        ),
        (
            "chunked then identity lines",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n".to_string(),
        ),
        (
            "space before colon",
            "Transfer-Encoding : chunked\r\n".to_string(),
        ),
        ("obs-fold", "Transfer-Encoding:\r\n chunked\r\n".to_string()),
        (
            "tab before colon",
            "Transfer-Encoding\t: chunked\r\n".to_string(),
        ),
        (
            "obs-fold elsewhere",
            "X-Folded: a\r\n b\r\nTransfer-Encoding: chunked\r\n".to_string(),
        ),
    ] {
        let headers = format!("{te}Content-Length: {cl}\r\n");
        case(
            &f,
            name,
            "/te",
            &post("/te", &headers, &body),
            Want::Refused,
        )
        .await;
    }
    // `identity, chunked` ends in chunked: read as chunked, forwarded with one framing.
    let headers = format!(
        "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\nContent-Length: {cl}\r\n"
    );
    case(
        &f,
        "identity then chunked",
        "/te-last",
        &post("/te-last", &headers, &body),
        Want::Either(""),
    )
    .await;
    nothing_smuggled(&f).await;
}

#[tokio::test]
async fn http10_with_transfer_encoding_is_refused() {
    let f = fixture().await;
    let req = format!("POST /h10 HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{HIDDEN}");
    case(&f, "HTTP/1.0 + TE", "/h10", req.as_bytes(), Want::Refused).await;
    // Without Transfer-Encoding an HTTP/1.0 request is fine, and goes out as HTTP/1.1.
    case(
        &f,
        "HTTP/1.0 + CL",
        "/h10cl",
        b"POST /h10cl HTTP/1.0\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        Want::Forwarded("hello"),
    )
    .await;
    nothing_smuggled(&f).await;
}

#[tokio::test]
async fn bare_cr_lf_only_lines_and_nul_are_refused_or_normalized() {
    let f = fixture().await;
    // LF-only lines (RFC 9112 §2.2 lets a recipient accept them): forwarded with CRLF.
    case(
        &f,
        "LF-only",
        "/lf",
        b"POST /lf HTTP/1.1\nHost: t\nConnection: close\nContent-Length: 5\n\nhello",
        Want::Either("hello"),
    )
    .await;
    for (name, req) in [
        (
            "bare CR in a value",
            &b"POST /cr HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n"[..],
        ),
        (
            "bare CR ending a line",
            b"POST /cr HTTP/1.1\r\nHost: t\rContent-Length: 0\r\n\r\n",
        ),
        (
            "bare CR ending the request line",
            b"POST /cr HTTP/1.1\rHost: t\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "NUL in a value",
            b"POST /nul HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "NUL in a name",
            b"POST /nul HTTP/1.1\r\nHost: t\r\nX-\0A: b\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "NUL in the target",
            b"POST /n\0ul HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "NUL in Content-Length",
            b"POST /nul HTTP/1.1\r\nHost: t\r\nContent-Length: 5\0\r\n\r\nhello",
        ),
    ] {
        case(&f, name, "/x", req, Want::Refused).await;
    }
    nothing_smuggled(&f).await;
}

#[tokio::test]
async fn overflowing_or_malformed_chunk_sizes_never_let_a_hidden_request_through() {
    let f = fixture().await;
    for (name, body) in [
        (
            "overflow",
            format!("ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n{HIDDEN}"),
        ),
        // The largest size that fits: a body that never ends (the hidden request is chunk
        // data), never a request of its own.
        (
            "u64 max",
            format!("ffffffffffffffff\r\nhello\r\n0\r\n\r\n{HIDDEN}"),
        ),
        ("negative", format!("-5\r\nhello\r\n0\r\n\r\n{HIDDEN}")),
        ("0x prefix", format!("0x5\r\nhello\r\n0\r\n\r\n{HIDDEN}")),
        (
            "size then garbage",
            format!("5 z\r\nhello\r\n0\r\n\r\n{HIDDEN}"),
        ),
    ] {
        let before = f.up.requests().len();
        let status = send(
            &f,
            &post("/chunks", "Transfer-Encoding: chunked\r\n", &body),
        )
        .await;
        assert!(
            status.is_none() || status == Some(400),
            "{name}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The head may have gone out before the body failed; its body then never ends,
        // and nothing after it is a request.
        let got: Vec<_> = f.up.requests().into_iter().skip(before).collect();
        assert!(got.is_empty(), "{name}: the upstream framed {got:?}");
    }
    nothing_smuggled(&f).await;
}

#[tokio::test]
async fn a_pipelined_request_is_judged_on_its_own() {
    let f = fixture().await;
    let mut c = RawConn::connect(f.proxy.addr).await.unwrap();
    // A public request with an empty body, then one for the bearer route on the same
    // connection: the second is a request of its own, refused without a token.
    c.send(b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let first = c.read_response(Duration::from_secs(10)).await.unwrap();
    assert_eq!(first.status, 200);
    let second = c.read_response(Duration::from_secs(10)).await.unwrap();
    assert_eq!(second.status, 401);
    // A body that holds a request is forwarded as that body, never as a request.
    let inner = "GET /admin/x HTTP/1.1\r\nHost: t\r\n\r\n";
    case(
        &f,
        "request in a GET body",
        "/get-body",
        format!("GET /get-body HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{inner}", inner.len()).as_bytes(),
        Want::Forwarded(inner),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines: Vec<String> = f.up.requests().into_iter().map(|r| r.line).collect();
    assert_eq!(
        lines,
        ["POST /first HTTP/1.1", "GET /get-body HTTP/1.1"],
        "{lines:?}"
    );
    nothing_smuggled(&f).await;
}
