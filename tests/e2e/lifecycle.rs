//! Process lifecycle: graceful shutdown on SIGTERM, config reload on SIGHUP (good and bad
//! files), and refusing to start with a route this build cannot protect.

use std::time::{Duration, Instant};

use crate::support::raw;
use crate::support::*;

#[tokio::test]
async fn sigterm_finishes_the_in_flight_request_refuses_new_connections_and_exits_0() {
    let echo = EchoUpstream::start().await;
    let mut p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let addr = p.addr;
    let in_flight = tokio::spawn(async move { raw::get(addr, "/slow?ms=1500").await });
    eventually(
        Duration::from_secs(10),
        "slow request reached the upstream",
        || async {
            echo.recorded()
                .iter()
                .any(|r| r.path.starts_with("/slow"))
                .then_some(())
        },
    )
    .await;
    let signalled = Instant::now();
    p.signal(Signal::Term).await;
    // New connections are refused while the slow request is still being served.
    eventually(
        Duration::from_secs(5),
        "new connections refused",
        || async {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let refused_after = signalled.elapsed();
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended before the listener closed ({refused_after:?})"
    );
    let r = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("in-flight request never completed")
        .unwrap()
        .expect("in-flight request was dropped");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["path"].as_str().unwrap().starts_with("/slow"));
    let status = p.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        p.logs()
    );
}

#[tokio::test]
async fn sigterm_closes_idle_keepalive_connections_without_waiting_for_the_drain_timeout() {
    let echo = EchoUpstream::start().await;
    let mut p = TestProxy::start(&simple_config(
        &echo.url(""),
        "[server.limits]\ndrain_timeout = \"60s\"\nidle_timeout = \"60s\"\nheader_read_timeout = \"60s\"\n",
    ))
    .await;
    // An idle HTTP/1.1 keep-alive connection and an idle HTTP/2 connection.
    let mut h1 = raw::RawConn::connect(p.addr).await.unwrap();
    h1.send(b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        h1.read_response(Duration::from_secs(10))
            .await
            .unwrap()
            .status,
        200
    );
    let mut h2 = crate::support::client::h2c_conn(p.addr).await;
    let r = crate::support::client::h2_send(
        &mut h2,
        http::Request::get(p.url("/h2"))
            .body(crate::support::client::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let signalled = Instant::now();
    p.signal(Signal::Term).await;
    assert_eq!(
        h1.wait_closed(Duration::from_secs(10)).await,
        raw::ReadEnd::Closed,
        "idle keep-alive connection kept open during shutdown"
    );
    let status = p.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "shutdown with idle connections took {:?}",
        signalled.elapsed()
    );
}

fn reload_config(echo: &EchoUpstream, extra_route: &str) -> String {
    format!(
        r#"{}
[[upstream]]
name = "app"
url = "{}"
[[upstream]]
name = "new"
url = "{}"
[[route]]
name = "old"
path = "/old"
upstream = "app"
auth = "public"
{extra_route}
"#,
        server_section(""),
        echo.url(""),
        echo.url("/via-new"),
    )
}

const NEW_ROUTE: &str =
    "[[route]]\nname = \"new\"\npath = \"/new\"\nupstream = \"new\"\nauth = \"public\"\n";

async fn reloads(p: &TestProxy, result: &str) -> Option<u64> {
    let m = raw::get(p.admin, "/metrics").await.ok()?;
    let prefix = format!("portcullis_config_reloads_total{{result=\"{result}\"}} ");
    m.text()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn sighup_with_a_good_file_adds_the_new_route_without_dropping_in_flight_requests() {
    let echo = EchoUpstream::start().await;
    let mut p = TestProxy::start(&reload_config(&echo, "")).await;
    assert_eq!(raw::get(p.addr, "/new/x").await.unwrap().status, 404);
    let addr = p.addr;
    let in_flight = tokio::spawn(async move { raw::get(addr, "/old/slow?ms=1000").await });
    eventually(
        Duration::from_secs(10),
        "slow request in flight",
        || async {
            echo.recorded()
                .iter()
                .any(|r| r.path.starts_with("/old/slow"))
                .then_some(())
        },
    )
    .await;
    p.write_config(&reload_config(&echo, NEW_ROUTE));
    p.signal(Signal::Hup).await;
    let r = eventually(Duration::from_secs(10), "new route served", || async {
        raw::get(addr, "/new/x?y=1")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(r.json()["path"], "/via-new/new/x?y=1");
    assert_eq!(raw::get(addr, "/old/z").await.unwrap().status, 200);
    let slow = in_flight
        .await
        .unwrap()
        .expect("in-flight request dropped by the reload");
    assert_eq!(slow.status, 200);
    assert_eq!(reloads(&p, "ok").await, Some(1));
    assert!(p.logs().contains("configuration reloaded"));
    assert!(p.exit_status().is_none(), "proxy exited");
}

#[tokio::test]
async fn sighup_with_a_bad_file_keeps_the_old_config_and_logs_the_key() {
    let echo = EchoUpstream::start().await;
    let mut p = TestProxy::start(&reload_config(&echo, "")).await;
    let bad = reload_config(&echo, NEW_ROUTE).replace("upstream = \"new\"", "upstream = \"ap\"");
    p.write_config(&bad);
    p.signal(Signal::Hup).await;
    let line = eventually(Duration::from_secs(10), "reload failure logged", || async {
        p.log_json().into_iter().find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("reload failed"))
        })
    })
    .await;
    assert_eq!(line["level"], "ERROR", "{line}");
    let err = line["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("route[1].upstream: no upstream named \"ap\""),
        "error does not name the key: {line}"
    );
    // The old config keeps serving: /old works, /new is still unknown.
    assert_eq!(raw::get(p.addr, "/old/a").await.unwrap().status, 200);
    assert_eq!(raw::get(p.addr, "/new/a").await.unwrap().status, 404);
    assert_eq!(reloads(&p, "error").await, Some(1));
    assert_eq!(reloads(&p, "ok").await, Some(0));
    assert!(p.exit_status().is_none(), "proxy exited after a bad reload");
    // Fixing the file and reloading again works.
    p.write_config(&reload_config(&echo, NEW_ROUTE));
    p.signal(Signal::Hup).await;
    eventually(Duration::from_secs(10), "fixed config served", || async {
        raw::get(p.addr, "/new/a")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
}

#[tokio::test]
/// A bearer route without the settings it needs is a config error at start: it is
/// never served as if it were public.
async fn proxy_refuses_to_start_with_a_bearer_route_it_cannot_enforce() {
    let echo = EchoUpstream::start().await;
    let config = simple_config(&echo.url(""), "").replace("auth = \"public\"", "auth = \"bearer\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        config
            .replace(
                "@LISTEN@",
                &format!("127.0.0.1:{}", crate::support::proxy::free_port()),
            )
            .replace(
                "@ADMIN@",
                &format!("127.0.0.1:{}", crate::support::proxy::free_port()),
            ),
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(crate::support::proxy::BIN)
                .arg("--config")
                .arg(&path)
                .output()
                .unwrap()
        }),
    )
    .await
    .expect("proxy kept running with an unsupported auth mode")
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("route[0].auth: bearer tokens need a [bearer] section"),
        "{stderr}"
    );
}
