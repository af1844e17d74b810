//! The normalization table through the real proxy: the exact path (and query) that the
//! upstream received, and 400 for every ambiguous path, which never reaches the upstream.

use crate::support::raw;
use crate::support::*;

#[tokio::test]
async fn upstream_receives_the_canonical_path_and_the_original_query() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let table: &[(&str, &str)] = &[
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/./../b", "/b"),
        ("//x", "/x"),
        ("/a//b///c", "/a/b/c"),
        ("/a/./b", "/a/b"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/b/", "/a/b/"),
        ("/x/%2e%2e/y", "/y"),
        ("/x/%2E%2e/y", "/y"),
        ("/a%2e/b", "/a./b"),
        // Unreserved characters are decoded, whatever the case of the hex digits.
        ("/%7e", "/~"),
        ("/%7E", "/~"),
        ("/%7euser/%7Ehome", "/~user/~home"),
        ("/%41%62c", "/Abc"),
        ("/a/b%2dc", "/a/b-c"),
        // Reserved ones stay encoded, with upper-case hex.
        ("/a%3bb", "/a%3Bb"),
        ("/a%3Bb", "/a%3Bb"),
        ("/a%20b", "/a%20b"),
        ("/%25", "/%25"),
        ("/%2541", "/%2541"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/admin;jsessionid=1", "/admin;jsessionid=1"),
        // The query is passed through byte for byte, never normalized.
        ("/q?x=1&y=%2F&z=../..", "/q?x=1&y=%2F&z=../.."),
        ("/a/../b?q=/../x#", "/b?q=/../x"),
        ("//a/./b/../c?%7e=%7E", "/a/c?%7e=%7E"),
        ("/p?", "/p?"),
    ];
    let mut failures = Vec::new();
    for (raw_path, want) in table {
        let r = raw::get(p.addr, raw_path).await.unwrap();
        if r.status != 200 {
            failures.push(format!("{raw_path}: status {} {}", r.status, r.text()));
            continue;
        }
        let got = r.json()["path"].as_str().unwrap().to_string();
        if got != *want {
            failures.push(format!("{raw_path}: upstream got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "normalization failures:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn ambiguous_paths_are_400_and_never_reach_the_upstream() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let bad = [
        "/%2e%2e/x",
        "/../x",
        "/a/../../x",
        "/..",
        "/a%2Fb",
        "/a%2fb",
        "/a%5cb",
        "/a%5Cb",
        "/a\\b",
        "/a%23b",
        "/a%00b",
        "/%c0%af",
        "/%e0%80%af",
        "/%ff",
        "/%zz",
        "/%4",
        "/public/..;/admin",
        "/a/.;x/b",
        "/a/%2e%2e;/b",
    ];
    let mut failures = Vec::new();
    for target in bad {
        let r = raw::get(p.addr, target).await.unwrap();
        if r.status != 400 {
            failures.push(format!("{target}: status {} (want 400)", r.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        echo.count(),
        0,
        "ambiguous requests reached the upstream: {:?}",
        echo.recorded().iter().map(|r| &r.path).collect::<Vec<_>>()
    );
}
