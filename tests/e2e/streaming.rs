//! Streaming without buffering: 1 GiB up and 1 GiB down through the proxy while its RSS is
//! sampled. Run with `--nocapture` to see the figures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;

use crate::support::client::{drain_count, Generated};
use crate::support::*;

const GIB: u64 = 1 << 30;
/// The proxy's resident memory may grow by at most this much while streaming 1 GiB.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

/// Samples a process's VmRSS every 10 ms on its own thread; keeps the maximum.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(rss_of(pid)));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Relaxed) {
                m.fetch_max(rss_of(pid), Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Relaxed)
    }
}

fn streaming_config(echo: &EchoUpstream) -> String {
    simple_config(
        &echo.url(""),
        "[server.limits]\nrequest_timeout = \"600s\"\n",
    )
}

/// Warms the proxy up (connections, pools, allocator) so the baseline is fair.
async fn warm_up(p: &TestProxy, client: &Http) {
    for _ in 0..3 {
        let r = client.get(&p.url("/download?bytes=4194304")).await;
        assert_eq!(r.body.len(), 4 << 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_through_with_flat_memory() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&streaming_config(&echo)).await;
    let client = Http::new();
    warm_up(&p, &client).await;
    let baseline = p.rss_kib();
    let sampler = RssSampler::start(p.pid());
    let started = Instant::now();
    let req = Request::post(p.url("/upload"))
        .header("content-type", "application/octet-stream")
        .body(Generated::new(GIB).boxed())
        .unwrap();
    let resp = client.send(req).await.expect("upload through the proxy");
    let took = started.elapsed();
    let max = sampler.finish();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["body_len"],
        GIB,
        "upstream did not receive every byte"
    );
    let growth = max.saturating_sub(baseline);
    println!(
        "1 GiB upload: {:.1} s ({:.0} MiB/s); proxy RSS baseline {} KiB, max {} KiB, growth {} KiB",
        took.as_secs_f64(),
        1024.0 / took.as_secs_f64(),
        baseline,
        max,
        growth
    );
    assert!(
        growth < MAX_GROWTH_KIB,
        "proxy RSS grew by {growth} KiB while streaming 1 GiB up (baseline {baseline}, max {max})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams_through_with_flat_memory() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&streaming_config(&echo)).await;
    let client = Http::new();
    warm_up(&p, &client).await;
    let baseline = p.rss_kib();
    let sampler = RssSampler::start(p.pid());
    let started = Instant::now();
    let req = Request::get(p.url(&format!("/download?bytes={GIB}")))
        .body(crate::support::client::empty())
        .unwrap();
    let resp = client.send_streaming(req).await.expect("download head");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(GIB.to_string().as_str())
    );
    let n = drain_count(resp.into_body()).await.expect("download body");
    let took = started.elapsed();
    let max = sampler.finish();
    assert_eq!(n, GIB, "client did not receive every byte");
    let growth = max.saturating_sub(baseline);
    println!(
        "1 GiB download: {:.1} s ({:.0} MiB/s); proxy RSS baseline {} KiB, max {} KiB, growth {} KiB",
        took.as_secs_f64(),
        1024.0 / took.as_secs_f64(),
        baseline,
        max,
        growth
    );
    assert!(
        growth < MAX_GROWTH_KIB,
        "proxy RSS grew by {growth} KiB while streaming 1 GiB down (baseline {baseline}, max {max})"
    );
}
