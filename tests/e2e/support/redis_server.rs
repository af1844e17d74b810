//! `RedisServer`: a throwaway `redis-server` on a free 127.0.0.1 port, killed by PID on
//! drop. For the fault tests it can be killed with SIGKILL and started again on the same
//! port and directory ([`RedisServer::kill`], [`RedisServer::restart`]); started with
//! [`RedisServer::start_persistent`] it keeps its data across that (append-only file,
//! fsync on every write).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::proxy::free_port;

pub struct RedisServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    persistent: bool,
    dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How one start attempt ended.
enum Started {
    Up(Child),
    /// The process exited (the port is taken).
    Exited,
}

impl RedisServer {
    /// No persistence: a restart starts empty.
    pub async fn start() -> RedisServer {
        Self::start_with(false).await
    }

    /// With an append-only file synced on every write: what was acknowledged survives a
    /// SIGKILL and a restart.
    pub async fn start_persistent() -> RedisServer {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> RedisServer {
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let dir = tempfile::tempdir().unwrap();
            if let Started::Up(child) = spawn(addr, dir.path(), persistent).await {
                return RedisServer {
                    child: Some(child),
                    addr,
                    persistent,
                    dir,
                };
            }
        }
        panic!("redis-server could not start");
    }

    /// SIGKILL (by the PID this harness started), then waits for the process to be gone.
    /// Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts redis-server again on the same port and directory (a persistent one reloads
    /// its append-only file). Retries while the port is still taken.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match spawn(self.addr, self.dir.path(), self.persistent).await {
                Started::Up(child) => {
                    self.child = Some(child);
                    return;
                }
                Started::Exited if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Started::Exited => panic!("redis-server did not restart on {}", self.addr),
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub async fn ping(addr: SocketAddr) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Every key holding a string, and its raw value (the revocation index, a sorted
    /// set, is left out).
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let client = redis::Client::open(self.url().as_str()).unwrap();
        let mut c = client.get_connection().unwrap();
        // A test database is small: one SCAN call sees it all.
        let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("COUNT")
            .arg(100_000)
            .arg("TYPE")
            .arg("string")
            .query(&mut c)
            .unwrap();
        if keys.is_empty() {
            return Vec::new();
        }
        let values: Vec<Vec<u8>> = redis::cmd("MGET").arg(&keys).query(&mut c).unwrap();
        keys.into_iter().zip(values).collect()
    }
}

/// One redis-server on `addr`, answering PING, or `Exited` if it quit (port taken).
async fn spawn(addr: SocketAddr, dir: &std::path::Path, persistent: bool) -> Started {
    let (appendonly, fsync) = if persistent {
        ("yes", "always")
    } else {
        ("no", "everysec")
    };
    let mut child = Command::new("/usr/bin/redis-server")
        .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", appendonly])
        .args(["--appendfsync", fsync, "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install -y redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return Started::Exited;
        }
        if RedisServer::ping(addr).await {
            return Started::Up(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server did not answer PING on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
