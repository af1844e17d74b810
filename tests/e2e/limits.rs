//! Connection limits: header read timeout (slowloris), a silent connection, the idle
//! keep-alive timeout, and the connection cap.

use std::time::{Duration, Instant};

use crate::support::raw;
use crate::support::raw::{RawConn, ReadEnd};
use crate::support::*;

const KEEPALIVE_GET: &[u8] = b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test]
async fn slowloris_partial_head_is_disconnected_after_header_read_timeout() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(
        &echo.url(""),
        "[server.limits]\nheader_read_timeout = \"1s\"\n",
    ))
    .await;
    let mut c = RawConn::connect(p.addr).await.unwrap();
    let started = Instant::now();
    c.send(b"GET /slowloris HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    // Trickle one header byte every 200 ms, as a slowloris client does, until cut off.
    let closed_at = loop {
        if c.wait_closed(Duration::from_millis(200)).await == ReadEnd::Closed {
            break started.elapsed();
        }
        if c.send(b"X").await.is_err() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "slowloris connection still open after 8 s"
        );
    };
    assert!(
        closed_at >= Duration::from_millis(900),
        "closed after {closed_at:?}: before the 1 s header read timeout"
    );
    assert!(
        closed_at < Duration::from_secs(5),
        "closed only after {closed_at:?}"
    );
    // Nothing of it reached the upstream; the proxy still serves others.
    assert_eq!(echo.count(), 0);
    assert_eq!(raw::get(p.addr, "/after").await.unwrap().status, 200);
}

#[tokio::test]
async fn connection_that_sends_nothing_is_closed_after_header_read_timeout() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(
        &echo.url(""),
        "[server.limits]\nheader_read_timeout = \"1s\"\n",
    ))
    .await;
    let mut c = RawConn::connect(p.addr).await.unwrap();
    let started = Instant::now();
    let end = c.wait_closed(Duration::from_secs(8)).await;
    let took = started.elapsed();
    assert_eq!(
        end,
        ReadEnd::Closed,
        "silent connection still open after 8 s"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}: too early"
    );
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed_after_idle_timeout() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(
        &echo.url(""),
        "[server.limits]\nidle_timeout = \"1s\"\nheader_read_timeout = \"10s\"\n",
    ))
    .await;
    let mut c = RawConn::connect(p.addr).await.unwrap();
    // A busy connection is not idle: requests 400 ms apart for 2 s all use it.
    for _ in 0..5 {
        c.send(KEEPALIVE_GET).await.unwrap();
        let r = c.read_response(Duration::from_secs(10)).await.unwrap();
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    c.send(KEEPALIVE_GET).await.unwrap();
    assert_eq!(
        c.read_response(Duration::from_secs(10))
            .await
            .unwrap()
            .status,
        200
    );
    let idle_from = Instant::now();
    let end = c.wait_closed(Duration::from_secs(5)).await;
    let took = idle_from.elapsed();
    assert_eq!(
        end,
        ReadEnd::Closed,
        "connection still open after 5 s idle with idle_timeout = 1s"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}: too early"
    );
    assert!(
        took < Duration::from_secs(5),
        "closed only after {took:?} idle"
    );
    assert!(
        c.pending().is_empty(),
        "unexpected bytes: {:?}",
        c.pending()
    );
}

#[tokio::test]
async fn idle_keepalive_connection_stays_open_until_idle_timeout() {
    // The header read timeout is for a request head being sent, not for a keep-alive
    // connection waiting between requests: that one has idle_timeout.
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(
        &echo.url(""),
        "[server.limits]\nidle_timeout = \"3s\"\nheader_read_timeout = \"1s\"\n",
    ))
    .await;
    let mut c = RawConn::connect(p.addr).await.unwrap();
    c.send(KEEPALIVE_GET).await.unwrap();
    assert_eq!(
        c.read_response(Duration::from_secs(10))
            .await
            .unwrap()
            .status,
        200
    );
    let idle_from = Instant::now();
    let end = c.wait_closed(Duration::from_millis(2000)).await;
    assert_eq!(
        end,
        ReadEnd::Open,
        "keep-alive connection closed after {:?} idle, before idle_timeout = 3s",
        idle_from.elapsed()
    );
    // Still usable.
    c.send(KEEPALIVE_GET).await.unwrap();
    assert_eq!(
        c.read_response(Duration::from_secs(10))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn stalled_request_body_is_408_after_body_read_timeout() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(
        &echo.url(""),
        "[server.limits]\nbody_read_timeout = \"1s\"\n",
    ))
    .await;
    let mut c = RawConn::connect(p.addr).await.unwrap();
    c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let r = c
        .read_response(Duration::from_secs(8))
        .await
        .expect("no answer to a stalled body");
    let took = started.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}: too early"
    );
    assert!(
        took < Duration::from_secs(5),
        "answered only after {took:?}"
    );
    // The rest of that body can never be read correctly: the connection is closed.
    assert_eq!(c.wait_closed(Duration::from_secs(5)).await, ReadEnd::Closed);
}

/// Opens a connection and completes one keep-alive request on it.
async fn served_conn(p: &TestProxy, round: usize, which: &str) -> RawConn {
    let mut c = RawConn::connect(p.addr).await.unwrap();
    c.send(KEEPALIVE_GET).await.unwrap();
    let r = c
        .read_response(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| {
            panic!("round {round}: connection {which} (within max_connections = 2) not served: {e}")
        });
    assert_eq!(r.status, 200);
    c
}

/// One unlabelled sample of the proxy's `/metrics`.
async fn sample(p: &TestProxy, name: &str) -> Option<i64> {
    let m = raw::get(p.admin, "/metrics").await.ok()?;
    let prefix = format!("{name} ");
    m.text()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// The proxy's `portcullis_connections_open` gauge.
async fn connections_open(p: &TestProxy) -> Option<i64> {
    sample(p, "portcullis_connections_open").await
}

async fn max_connections_case(workers: usize, rounds: usize) {
    let echo = EchoUpstream::start().await;
    // Long header/idle timeouts, so that no connection is closed behind the test's back.
    let p = TestProxy::start(&simple_config(
        &echo.url(""),
        &format!(
            "workers = {workers}\n[server.limits]\nmax_connections = 2\n\
             header_read_timeout = \"60s\"\nidle_timeout = \"60s\"\n"
        ),
    ))
    .await;
    // Several rounds: on a multi-worker proxy, which listener the kernel hands a new
    // connection to varies, and every placement must work.
    for round in 0..rounds {
        let a = served_conn(&p, round, "a").await;
        let b = served_conn(&p, round, "b").await;
        let mut third = RawConn::connect(p.addr).await.unwrap();
        third.send(KEEPALIVE_GET).await.unwrap();
        let early = third.read_response(Duration::from_millis(700)).await;
        assert!(
            early.is_err(),
            "round {round}: a third connection was served over max_connections = 2"
        );
        drop(a);
        let r = third
            .read_response(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| {
                panic!("round {round}: third connection not served after one closed: {e}")
            });
        assert_eq!(r.status, 200);
        // Over capacity is visible: the limit, and the connection that waited for a slot.
        assert_eq!(sample(&p, "portcullis_connections_max").await, Some(2));
        let waits = sample(&p, "portcullis_connections_limit_waits_total").await;
        assert!(
            waits >= Some(round as i64 + 1),
            "round {round}: limit waits counted: {waits:?}"
        );
        drop(b);
        drop(third);
        eventually(
            Duration::from_secs(10),
            "all connections closed",
            || async { (connections_open(&p).await == Some(0)).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn max_connections_holds_a_third_connection_until_one_closes() {
    max_connections_case(1, 2).await;
}

#[tokio::test]
async fn max_connections_with_several_workers_serves_every_connection_under_the_cap() {
    max_connections_case(2, 6).await;
}
