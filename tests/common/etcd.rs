//! A real single-member etcd for tests: two free loopback ports, a
//! temporary data directory, test tuning (25 ms heartbeats, 250 ms
//! election timeout), a wait on `/health` with a deadline, and `stop`,
//! `kill9` and `restart` (same ports and data). `Drop` kills exactly the
//! process it started.
//!
//! When the `etcd` binary is missing, [`Etcd::start`] returns `None` after
//! printing why (the test then skips), unless `COREKV_REQUIRE_ETCD=1`
//! (CI), when it panics. Depends on std, `tempfile`, `libc` and the
//! harness's port allocation.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to report healthy.
pub const ETCD_START: Duration = Duration::from_secs(15);

/// A running (or stopped) etcd of this test.
pub struct Etcd {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    client_port: u16,
    peer_port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The etcd binary: `etcd` on `PATH`, else `/usr/bin/etcd`.
fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .chain(std::iter::once(PathBuf::from("/usr/bin/etcd")))
        .find(|p| p.is_file())
}

impl Etcd {
    /// Starts etcd and waits until it is healthy. `None`: no etcd binary
    /// here and `COREKV_REQUIRE_ETCD` is not `1` (the caller skips).
    ///
    /// # Panics
    /// etcd required but missing, or not healthy in time.
    #[must_use]
    pub fn start() -> Option<Self> {
        let Some(bin) = find_etcd() else {
            let required = std::env::var("COREKV_REQUIRE_ETCD").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "COREKV_REQUIRE_ETCD=1 but no etcd binary (apt-get install etcd-server)"
            );
            eprintln!(
                "SKIPPED: no etcd binary on PATH or at /usr/bin/etcd (apt-get install etcd-server)"
            );
            return None;
        };
        let ports = super::free_ports(2);
        let mut e = Self {
            url: format!("http://127.0.0.1:{}", ports[0]),
            client_port: ports[0],
            peer_port: ports[1],
            bin,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        e.spawn();
        Some(e)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// etcd's output (for failure messages).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--name", "n0", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n0={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "corekv-test"])
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .args(["--log-level", "warn", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn etcd"));
        let end = Instant::now() + ETCD_START;
        while !self.healthy() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "etcd not healthy within {ETCD_START:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True when `/health` says so.
    #[must_use]
    pub fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.client_port
        );
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"")
    }

    /// The process id (while running).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&mut self, sig: i32) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on the pid of our own unreaped child.
                unsafe {
                    libc::kill(pid, sig);
                }
            }
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for it to exit.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// Starts it again on the same ports and data (after `stop`/`kill9`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is still running");
        self.spawn();
    }

    /// The data directory (kept across restarts).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
    }
}
