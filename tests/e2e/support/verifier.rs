//! The example assertion verifier (`examples/assertion_verifier.py`, PyJWT) as a child
//! process on 127.0.0.1: an upstream that answers 200 with the identity of a verified
//! assertion, else 401 naming why. Its python is the venv of `scripts/verifier-venv.sh`
//! (`PORTCULLIS_VERIFIER_PYTHON`, set by `scripts/test.sh`); killed by PID on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/assertion_verifier.py"
);

pub struct Verifier {
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv python with PyJWT and cryptography installed.
pub fn python() -> PathBuf {
    let p = match std::env::var_os("PORTCULLIS_VERIFIER_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("portcullis/assertion-verifier/bin/python")
        }
    };
    assert!(
        p.exists(),
        "{} does not exist: run scripts/verifier-venv.sh (scripts/test.sh does) to install \
         the verifier's pinned PyJWT and cryptography",
        p.display()
    );
    p
}

impl Verifier {
    /// Starts the verifier on `port` for the proxy's JWKS at `jwks`.
    pub async fn start(port: u16, jwks: &str, issuer: &str, audience: &str) -> Verifier {
        Self::start_with(port, jwks, issuer, audience, &[]).await
    }

    /// ... with more arguments (`--jwks-lifespan 2`).
    pub async fn start_with(
        port: u16,
        jwks: &str,
        issuer: &str,
        audience: &str,
        extra: &[&str],
    ) -> Verifier {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("verifier.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(python())
            .arg(SCRIPT)
            .args(["--port", &port.to_string(), "--jwks", jwks])
            .args(["--issuer", issuer, "--audience", audience, "--leeway", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn the verifier");
        let mut v = Verifier {
            port,
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = v.child.try_wait() {
                panic!("verifier exited ({st}):\n{}", v.logs());
            }
            if v.logs().contains("listening on") {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "verifier not listening:\n{}",
                v.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
