//! A `redis-server` of a test's own, on a free loopback port (Debian's
//! `redis-server`, installed by the README's test command; set `REDIS_SERVER`
//! to use another binary).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback port (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `redis-server` of this test's own; killed when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &["--save", "", "--appendonly", "no"])
    }

    /// One that keeps its data in `dir` through a restart: every write is in
    /// its append-only file before it answers (`appendfsync always`).
    pub fn start_persistent(port: u16, dir: &std::path::Path) -> Self {
        let dir = dir.to_str().expect("utf-8 dir");
        Self::start_with(
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                dir,
            ],
        )
    }

    /// One that writes a snapshot of its data to `dir` only when told (`SAVE`,
    /// see [`Self::cli`]) and loads it at start: a restart goes back to the
    /// last snapshot, losing what came after (as a failover to a lagging
    /// replica does).
    pub fn start_snapshotting(port: u16, dir: &std::path::Path) -> Self {
        let dir = dir.to_str().expect("utf-8 dir");
        Self::start_with(port, &["--save", "", "--appendonly", "no", "--dir", dir])
    }

    /// One that speaks only TLS on `port`, with this certificate and key (PEM
    /// files); clients need no certificate of their own.
    pub fn start_tls(port: u16, cert: &std::path::Path, key: &std::path::Path) -> Self {
        let (cert, key) = (
            cert.to_str().expect("utf-8 path"),
            key.to_str().expect("utf-8 path"),
        );
        let mut r = Self::start_with_at(
            0,
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "no",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                cert,
                "--tls-auth-clients",
                "no",
            ],
        );
        r.port = port;
        r
    }

    /// Runs `redis-cli` against it; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn start_with(port: u16, args: &[&str]) -> Self {
        Self::start_with_at(port, port, args)
    }

    /// Starts with `--port plain` and waits for `port` to listen.
    fn start_with_at(plain: u16, port: u16, args: &[&str]) -> Self {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &plain.to_string(), "--bind", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin} ({e}): run the README's test command, which installs it, or set REDIS_SERVER")
            });
        // Owned at once, so a failure below still kills and reaps it.
        let server = Self { child, port };
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server never listened on {port}");
    }

    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal_quietly();
        self.kill();
    }
}

impl RedisServer {
    pub fn signal_quietly(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
}
