//! Hardening tests against real corekv processes: request limits (431 /
//! 413), malformed framing and versions (400 / 501 / 505, connection
//! closed), pipelines ending in a bad request, request and idle timeouts,
//! the connection cap, slowloris clients, every split point of a pipeline
//! and random bytes (no hang, no crash), graceful shutdown on SIGTERM /
//! SIGINT, the shared token, and `/metrics`, `/ready`, `/health`.
//!
//! Every test owns its ports, temp dir and processes; every wait has a
//! deadline. Local helpers only: `tests/common` is shared and not edited
//! here.

#![allow(
    clippy::cast_possible_truncation, // random numbers cut to bytes and indices, on purpose
    clippy::too_many_lines, // a scenario reads top to bottom
)]

mod common;

use common::{
    Cluster, Conn, Resp, ShardAddrs, config_text, delete_target, free_ports, get, get_target,
    health_ok, http, keys_for_shard, request_bytes, sample, set_target, spawn_corekv, wait_until,
    write_local_config,
};
use corekv::protocol::{
    KvOp, KvRequest, Pull, PullKind, PullReply, Scan, Style, decode_reply, encode_kv, encode_pull,
    encode_scan,
};
use corekv::storage::Cond;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Small limits used by the limit tests.
const SMALL_LIMITS: [&str; 8] = [
    "--max-body",
    "1024",
    "--max-header-bytes",
    "2048",
    "--max-headers",
    "8",
    "--max-key",
    "64",
];

/// How long replication may take to show a write on a replica.
const REPLICATION: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Local helpers

/// A tiny deterministic xorshift64* generator (std only).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn printable(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| 0x20 + self.below(0x5f) as u8).collect()
    }
}

/// Bytes for a failure message: escaped, at most `max` of them.
fn show(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let mut s: String = cut.escape_ascii().to_string();
    if bytes.len() > max {
        s.push_str(&["... (", &bytes.len().to_string(), " bytes)"].concat());
    }
    s
}

/// Sends `bytes` on a fresh connection and expects one error answer with
/// `status`, `Connection: close`, then the server closing the connection;
/// afterwards the node still answers new connections.
fn expect_refused(addr: SocketAddr, bytes: &[u8], status: u16, ctx: &str) -> Resp {
    let mut conn = Conn::connect(addr).unwrap_or_else(|e| panic!("{ctx}: connect: {e}"));
    conn.send_raw(bytes)
        .unwrap_or_else(|e| panic!("{ctx}: write: {e}"));
    let r = conn
        .read_response()
        .unwrap_or_else(|e| panic!("{ctx}: no response to {}: {e}", show(bytes, 200)));
    assert_eq!(r.status, status, "{ctx}: request {}: {r}", show(bytes, 200));
    assert!(
        r.closes(),
        "{ctx}: an error that ends the connection says Connection: close: {r}"
    );
    assert!(!r.body.is_empty(), "{ctx}: the error needs a message: {r}");
    assert!(
        conn.closed_by_peer(Duration::from_secs(5)),
        "{ctx}: the server must close the connection after {status}"
    );
    assert!(
        health_ok(addr),
        "{ctx}: node stopped serving new connections"
    );
    r
}

/// Sends `bytes` on a fresh connection, optionally half-closes, then reads
/// until the server closes. `Err` on a read timeout (a hang); a reset
/// counts as a close.
fn exchange_to_eof(
    addr: SocketAddr,
    bytes: &[u8],
    half_close: bool,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    // The server may close early (an error after part of the bytes); a
    // failed write is not a failure of the server.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return Ok(out);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "no close within {timeout:?}; got {} bytes: {}",
                    out.len(),
                    show(&out, 200)
                ));
            }
            Err(e) => return Err(format!("read: {e}")),
        }
        if Instant::now() > end {
            return Err(format!(
                "still sending after {timeout:?}: {}",
                show(&out, 200)
            ));
        }
    }
}

/// Status codes of every response in `bytes` (a concatenation of
/// responses to non-HEAD requests). `Err` when the bytes are not a
/// sequence of well-formed responses.
fn statuses_of(mut bytes: &[u8]) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let head_end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("incomplete response head: {}", show(bytes, 200)))?;
        let head = std::str::from_utf8(&bytes[..head_end])
            .map_err(|_| format!("response head is not UTF-8: {}", show(bytes, 200)))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (100..600).contains(s))
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let len = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .ok_or_else(|| format!("response without Content-Length: {head:?}"))?;
        let total = head_end + 4 + len;
        if bytes.len() < total {
            return Err(format!("truncated response body: {head:?}"));
        }
        out.push(status);
        bytes = &bytes[total..];
    }
    Ok(out)
}

/// Opens a connection to `addr` that the server serves (a `/health` on it
/// answers 200), retrying on a deadline while the node is at its cap.
fn open_served(addr: SocketAddr) -> Conn {
    let mut got = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let Ok(mut c) = Conn::connect_timeout(addr, Duration::from_secs(5)) else {
            return false;
        };
        match c.get("/health") {
            Ok(r) if r.status == 200 && !r.closes() => {
                got = Some(c);
                true
            }
            _ => false,
        }
    });
    assert!(ok, "no served connection to {addr} within 10 s");
    got.expect("connection")
}

/// A corekv process this test spawns and reaps itself (the shared
/// harness does not expose exit statuses). Drop kills and reaps it.
struct Solo {
    dir: tempfile::TempDir,
    config: PathBuf,
    shards: Vec<ShardAddrs>,
    extra: Vec<String>,
    child: Option<Child>,
    logs: Vec<(PathBuf, PathBuf)>,
}

impl Solo {
    /// `n` shards with one replica each, all in this one process.
    fn start(n: usize, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, shards) = write_local_config(dir.path(), n);
        let mut s = Self {
            dir,
            config,
            shards,
            extra: extra.iter().map(|a| (*a).to_string()).collect(),
            child: None,
            logs: Vec::new(),
        };
        s.launch();
        s
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.shards
            .iter()
            .flat_map(|s| [s.primary, s.replica])
            .collect()
    }

    /// Gives every node new ports (same shard names, so the same data
    /// files) and rewrites the config.
    fn move_to_new_ports(&mut self) {
        let n = self.shards.len();
        let ports = free_ports(2 * n);
        for (i, sh) in self.shards.iter_mut().enumerate() {
            sh.primary = SocketAddr::from(([127, 0, 0, 1], ports[i]));
            sh.replica = SocketAddr::from(([127, 0, 0, 1], ports[n + i]));
        }
        std::fs::write(&self.config, config_text(&self.shards)).expect("write config");
    }

    /// Spawns the process (same config and data) and waits for `/health`
    /// on every port; retries for up to 20 s while a port of a previous
    /// run is in use.
    fn launch(&mut self) {
        self.launch_within(Duration::from_secs(20));
    }

    /// [`Solo::launch`], retrying on "Address already in use" for `within`.
    fn launch_within(&mut self, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let mut args = vec![
                "--config".to_string(),
                self.config.display().to_string(),
                "--data-dir".to_string(),
                self.dir.path().join("data").display().to_string(),
            ];
            args.extend(self.extra.iter().cloned());
            let (child, out, err) =
                spawn_corekv(self.dir.path(), "solo", &args).expect("spawn corekv");
            self.child = Some(child);
            self.logs.push((out, err.clone()));
            let addrs = self.addrs();
            let mut exited = false;
            let ready = wait_until(Duration::from_secs(20), || {
                if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                    exited = true;
                    return true;
                }
                addrs.iter().all(|a| health_ok(*a))
            });
            if ready && !exited {
                return;
            }
            let in_use =
                std::fs::read_to_string(&err).is_ok_and(|s| s.contains("Address already in use"));
            self.kill();
            assert!(
                in_use && Instant::now() < end,
                "corekv did not start within {within:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("running").id()).expect("pid")
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Waits for the process to exit; `None` if it still runs after `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(within, || {
            status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn logs(&self) -> String {
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        self.logs
            .iter()
            .enumerate()
            .map(|(g, (o, e))| {
                format!(
                    "---- solo generation {g} stdout ----\n{}---- stderr ----\n{}",
                    read(o),
                    read(e)
                )
            })
            .collect::<Vec<_>>()
            .concat()
    }
}

impl Drop for Solo {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("==== corekv logs ====\n{}", self.logs());
        }
    }
}

// ---------------------------------------------------------------------------
// Limits

#[test]
fn request_size_limits_answer_431_and_413() {
    let c = Cluster::start_with_args(1, &[None], &SMALL_LIMITS);
    let addr = c.shards[0].primary;

    // Request line + headers: exactly 2048 bytes pass, 2049 are refused.
    let head_of = |total: usize| {
        let start = "GET /get?key=hk HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ";
        let pad = total - start.len() - 4;
        format!("{start}{}\r\n\r\n", "p".repeat(pad)).into_bytes()
    };
    let at_limit = head_of(2048);
    assert_eq!(at_limit.len(), 2048);
    let mut conn = Conn::connect(addr).expect("connect");
    conn.send_raw(&at_limit).expect("write");
    let r = conn.read_response().expect("head at the limit");
    assert_eq!(
        r.status, 404,
        "a 2048-byte head is within --max-header-bytes: {r}"
    );
    assert_eq!(conn.get("/health").expect("keep-alive").status, 200);
    expect_refused(addr, &head_of(2049), 431, "2049-byte head");
    // A long request line alone.
    let line = format!("GET /get?key={} HTTP/1.1\r\n\r\n", "a".repeat(3000));
    expect_refused(addr, line.as_bytes(), 431, "3000-byte request line");
    // A head over the limit that never ends is refused at once, without
    // waiting for the rest or for the request timeout.
    let start = Instant::now();
    let endless = format!("GET /get?key=a HTTP/1.1\r\nX-Pad: {}", "q".repeat(4000));
    expect_refused(addr, endless.as_bytes(), 431, "unterminated 4 KiB head");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "431 for an unterminated head took {:?}",
        start.elapsed()
    );
    // A huge head (several reads) as well.
    let huge = format!(
        "GET /get?key=a HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "h".repeat(100_000)
    );
    let r = exchange_to_eof(addr, huge.as_bytes(), false, Duration::from_secs(5))
        .expect("100 KB head: no hang");
    if !r.is_empty() {
        assert_eq!(
            statuses_of(&r),
            Ok(vec![431]),
            "100 KB head: {}",
            show(&r, 300)
        );
    }
    assert!(health_ok(addr));

    // Header count: Host + 7 = 8 fields pass, 9 are refused.
    let with_headers = |n: usize| {
        let mut s = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_string();
        for i in 1..n {
            s.push_str(&["X-H", &i.to_string(), ": ", &i.to_string(), "\r\n"].concat());
        }
        s.push_str("\r\n");
        s.into_bytes()
    };
    let mut conn = Conn::connect(addr).expect("connect");
    conn.send_raw(&with_headers(8)).expect("write");
    let r = conn.read_response().expect("8 headers");
    assert_eq!(
        r.status, 200,
        "8 header fields are within --max-headers: {r}"
    );
    let r = expect_refused(addr, &with_headers(9), 431, "9 header fields");
    assert!(
        r.text().contains("header") && r.text().contains("--max-headers"),
        "431 message names the limit's option: {r}"
    );
    expect_refused(addr, &with_headers(60), 431, "60 header fields");

    // Body: 1024 bytes pass, 1025 are refused (form body and REST body).
    let form = |len: usize| {
        let prefix = "key=bodykey&value=";
        let body = format!("{prefix}{}", "v".repeat(len - prefix.len()));
        request_bytes(
            "POST",
            "/set",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
    };
    let mut conn = Conn::connect(addr).expect("connect");
    conn.send_raw(&form(1024)).expect("write");
    let r = conn.read_response().expect("1024-byte body");
    assert_eq!(r.status, 200, "a 1024-byte body is within --max-body: {r}");
    let r = expect_refused(addr, &form(1025), 413, "1025-byte form body");
    assert!(
        r.text().contains("body") && r.text().contains("1024") && r.text().contains("--max-body"),
        "413 message names the limit and its option: {r}"
    );
    expect_refused(
        addr,
        &request_bytes("PUT", "/v1/kv/big", &[], &[b'x'; 1025]),
        413,
        "1025-byte PUT body",
    );
    // Announced but not sent: refused from the head alone.
    expect_refused(
        addr,
        b"PUT /v1/kv/big HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n",
        413,
        "Content-Length over the limit, no body sent",
    );
    expect_refused(
        addr,
        b"PUT /v1/kv/big HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
        413,
        "Content-Length that overflows",
    );

    // Key: 64 bytes pass, 65 are 413 (a request error: the connection stays).
    let mut conn = Conn::connect(addr).expect("connect");
    let k64 = "k".repeat(64);
    let r = conn
        .get(&set_target(k64.as_bytes(), b"v"))
        .expect("64-byte key");
    assert_eq!(r.status, 200, "64-byte key: {r}");
    // The limit applies to the decoded key (64 bytes sent as %XX).
    let r = conn
        .get(&format!("/get?key={}", "%6B".repeat(64)))
        .expect("encoded 64-byte key");
    assert_eq!((r.status, r.text()), (200, "v".to_string()), "{r}");
    let k65 = "k".repeat(65);
    for (method, target) in [
        ("GET", set_target(k65.as_bytes(), b"v")),
        ("GET", get_target(k65.as_bytes())),
        ("GET", delete_target(k65.as_bytes())),
        ("GET", format!("/v1/kv/{k65}")),
        ("PUT", format!("/v1/kv/{k65}")),
    ] {
        let r = conn
            .request(method, &target, &[], b"")
            .unwrap_or_else(|e| panic!("{method} 65-byte key: {e}"));
        assert_eq!(r.status, 413, "{method} {target}: {r}");
        assert!(r.text().contains("key"), "413 names the key: {r}");
        assert!(
            !r.closes(),
            "a key over the limit keeps the connection: {r}"
        );
    }
    let r = conn.get("/health").expect("connection still usable");
    assert_eq!(r.status, 200);
    // The replica of the same process is unaffected by all of this.
    assert!(health_ok(c.shards[0].replica));
}

#[test]
fn default_limits() {
    let c = Cluster::start_with_args(1, &[None], &["--no-fsync"]);
    let addr = c.shards[0].primary;
    // 64 header fields pass, 65 are refused.
    let with_headers = |n: usize| {
        let mut s = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_string();
        for i in 1..n {
            s.push_str(&["X-H", &i.to_string(), ": ", &i.to_string(), "\r\n"].concat());
        }
        s.push_str("\r\n");
        s.into_bytes()
    };
    let mut conn = Conn::connect(addr).expect("connect");
    conn.send_raw(&with_headers(64)).expect("write");
    assert_eq!(conn.read_response().expect("64 headers").status, 200);
    expect_refused(addr, &with_headers(65), 431, "65 header fields");
    // 16384 bytes of head pass, 16385 are refused.
    let head_of = |total: usize| {
        let start = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ";
        format!("{start}{}\r\n\r\n", "p".repeat(total - start.len() - 4)).into_bytes()
    };
    let mut conn = Conn::connect(addr).expect("connect");
    conn.send_raw(&head_of(16384)).expect("write");
    assert_eq!(conn.read_response().expect("16 KiB head").status, 200);
    expect_refused(addr, &head_of(16385), 431, "16385-byte head");
    // An 8 MiB body passes (and comes back intact), one byte more is 413.
    let mut rng = Rng::new(8);
    let big = rng.bytes(8 * 1024 * 1024);
    let mut conn = Conn::connect(addr).expect("connect");
    conn.set_read_timeout(Duration::from_secs(30))
        .expect("timeout");
    let r = conn
        .request("PUT", "/v1/kv/big", &[], &big)
        .expect("8 MiB PUT");
    assert_eq!(r.status, 200, "8 MiB body: {r}");
    let r = conn
        .request("GET", "/v1/kv/big", &[], b"")
        .expect("8 MiB GET");
    assert!(
        r.status == 200 && r.body == big,
        "8 MiB value differs: status {}",
        r.status
    );
    let over = format!(
        "PUT /v1/kv/big2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        big.len() + 1
    );
    expect_refused(addr, over.as_bytes(), 413, "8 MiB + 1 body");
}

#[test]
fn malformed_framing_and_versions_are_refused_and_closed() {
    let c = Cluster::start_with_args(1, &[None], &SMALL_LIMITS);
    for addr in [c.shards[0].primary, c.shards[0].replica] {
        let cases: &[(&[u8], u16, &str)] = &[
            (
                b"POST /set HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nkey=a",
                400,
                "Content-Length then Transfer-Encoding",
            ),
            (
                b"POST /set HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nkey=a",
                400,
                "Transfer-Encoding then Content-Length",
            ),
            (
                b"POST /set HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nkey=a",
                400,
                "duplicate equal Content-Length",
            ),
            (
                b"POST /set HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nkey=ab",
                400,
                "duplicate different Content-Length",
            ),
            (
                b"GET /health HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                400,
                "negative Content-Length",
            ),
            (
                b"GET /health HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
                400,
                "non-numeric Content-Length",
            ),
            (
                b"POST /set HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nkey=a\r\n0\r\n\r\n",
                501,
                "chunked body",
            ),
            (
                b"GET /health HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                501,
                "other Transfer-Encoding",
            ),
            (b"GARBAGE\r\n\r\n", 400, "one-word request line"),
            (b"GET /\r\n\r\n", 400, "request line without a version"),
            (b" / HTTP/1.1\r\n\r\n", 400, "empty method"),
            (b"GET /he\x00alth HTTP/1.1\r\n\r\n", 400, "NUL in the target"),
            (
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
                400,
                "a TLS ClientHello",
            ),
            (
                b"GET /health HTTP/1.1\r\nBad Header: x\r\n\r\n",
                400,
                "space in a header name",
            ),
            (
                b"GET /health HTTP/1.1\r\nX: a\x00b\r\n\r\n",
                400,
                "NUL in a header value",
            ),
            (b"GET /health HTTP/2.0\r\n\r\n", 505, "HTTP/2.0"),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                505,
                "the HTTP/2 connection preface",
            ),
            (b"GET /health HTTP/3.0\r\n\r\n", 505, "HTTP/3.0"),
        ];
        for (bytes, status, what) in cases {
            expect_refused(addr, bytes, *status, &format!("{what} at {addr}"));
        }
        // Sent in two parts: still refused once the head is complete.
        let mut conn = Conn::connect(addr).expect("connect");
        conn.send_raw(b"GET /health HTTP/1.1\r\nContent-Length: 0\r\n")
            .expect("write");
        std::thread::sleep(Duration::from_millis(20));
        conn.send_raw(b"Content-Length: 0\r\n\r\n").expect("write");
        let r = conn
            .read_response()
            .expect("split duplicate Content-Length");
        assert_eq!(r.status, 400, "{r}");
        assert!(conn.closed_by_peer(Duration::from_secs(5)));
    }
    // After all of that both nodes serve normally.
    let r = get(c.shards[0].primary, "/set?key=after&value=1");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(get(c.shards[0].primary, "/get?key=after").text(), "1");
}

/// A keep-alive client that sends its last request and closes its side in
/// one go, while the server waits for it, gets its answer and the close:
/// the server reads the request with a short read that leaves the end of
/// the stream still to read (it must not wait for another readiness report
/// that never comes).
#[test]
fn last_request_with_half_close_is_answered_then_closed() {
    let c = Cluster::start(1);
    let addr = c.shards[0].primary;
    let req = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    for round in 0..20 {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        s.write_all(req).expect("first request");
        // The first answer: the server is now waiting for the next request.
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while statuses_of(&got).map_or(true, |v| v.is_empty()) {
            let n = s.read(&mut chunk).expect("first answer");
            assert!(n > 0, "round {round}: closed before the first answer");
            got.extend_from_slice(&chunk[..n]);
        }
        s.write_all(req).expect("last request");
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut rest = Vec::new();
        let end = Instant::now() + Duration::from_secs(3);
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) => panic!(
                    "round {round}: no close after the last answer ({e}); got {}",
                    show(&rest, 200)
                ),
            }
            assert!(Instant::now() < end, "round {round}: no close within 3 s");
        }
        assert_eq!(
            statuses_of(&rest),
            Ok(vec![200]),
            "round {round}: {}",
            show(&rest, 200)
        );
    }
}

#[test]
fn pipeline_is_answered_in_order_up_to_a_bad_request() {
    let c = Cluster::start(2);
    for addr in [c.shards[0].primary, c.shards[1].primary] {
        let keys = [
            keys_for_shard("pipe-", 0, 2, 1).remove(0),
            keys_for_shard("pipe-", 1, 2, 1).remove(0),
        ];
        let mut bytes = Vec::new();
        bytes.extend(request_bytes(
            "GET",
            &set_target(keys[0].as_bytes(), b"one"),
            &[],
            b"",
        ));
        bytes.extend(request_bytes(
            "PUT",
            &format!("/v1/kv/{}", keys[1]),
            &[],
            b"two",
        ));
        bytes.extend(request_bytes(
            "GET",
            &get_target(keys[0].as_bytes()),
            &[],
            b"",
        ));
        bytes.extend(request_bytes(
            "HEAD",
            &format!("/v1/kv/{}", keys[1]),
            &[],
            b"",
        ));
        bytes.extend(request_bytes(
            "GET",
            &get_target(keys[1].as_bytes()),
            &[],
            b"",
        ));
        bytes.extend_from_slice(
            b"GET /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        );
        // Never answered: after the error the connection is closed.
        bytes.extend(request_bytes("GET", "/health", &[], b""));
        let mut conn = Conn::connect(addr).expect("connect");
        conn.send_raw(&bytes).expect("write pipeline");
        let want: [(u16, Option<&[u8]>, bool); 6] = [
            (200, Some(b"OK\n"), false),
            (200, Some(b"OK\n"), false),
            (200, Some(b"one"), false),
            (200, None, true),
            (200, Some(b"two"), false),
            (400, None, false),
        ];
        for (i, (status, body, head)) in want.iter().enumerate() {
            let r = conn
                .read_response_for(*head)
                .unwrap_or_else(|e| panic!("pipelined response {i} at {addr}: {e}"));
            assert_eq!(r.status, *status, "pipelined response {i} at {addr}: {r}");
            if let Some(b) = body {
                assert_eq!(r.body, *b, "pipelined response {i} at {addr}: {r}");
            }
            if *head {
                assert_eq!(r.header("Content-Length"), Some("3"), "HEAD: {r}");
            }
            assert_eq!(r.closes(), i == 5, "only the error closes: {r}");
        }
        assert!(
            conn.closed_by_peer(Duration::from_secs(5)),
            "nothing may follow the error at {addr}"
        );
    }
}

// ---------------------------------------------------------------------------
// Timeouts

#[test]
fn request_and_idle_timeouts() {
    let c = Cluster::start_with_args(
        1,
        &[None],
        &["--request-timeout", "1", "--idle-timeout", "1"],
    );
    let addr = c.shards[0].primary;
    let run = |what: &'static str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(what.into())
            .spawn(f)
            .expect("spawn")
    };
    let mut threads = Vec::new();
    // Half a head, then silence: 408 after about 1 s, then closed.
    threads.push(run(
        "half head",
        Box::new(move || {
            let mut conn = Conn::connect(addr).expect("connect");
            let start = Instant::now();
            conn.send_raw(b"GET /get?key=a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Sl")
                .expect("write");
            let r = conn.read_response().expect("408 for a stalled head");
            let took = start.elapsed();
            assert_eq!(r.status, 408, "{r}");
            assert!(r.closes(), "{r}");
            assert!(
                took >= Duration::from_millis(800) && took <= Duration::from_millis(2500),
                "408 after {took:?}, want about 1 s"
            );
            assert!(
                conn.closed_by_peer(Duration::from_secs(2)),
                "closed after 408"
            );
        }),
    ));
    // A complete head but half the body.
    threads.push(run(
        "half body",
        Box::new(move || {
            let mut conn = Conn::connect(addr).expect("connect");
            let start = Instant::now();
            conn.send_raw(b"PUT /v1/kv/slow HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
                .expect("write");
            let r = conn.read_response().expect("408 for a stalled body");
            assert_eq!(r.status, 408, "{r}");
            assert!(
                start.elapsed() <= Duration::from_millis(2500),
                "{:?}",
                start.elapsed()
            );
            assert!(conn.closed_by_peer(Duration::from_secs(2)));
        }),
    ));
    // A request trickled byte by byte keeps the 1 s budget from its first byte.
    threads.push(run(
        "trickle",
        Box::new(move || {
            let mut conn = Conn::connect(addr).expect("connect");
            let start = Instant::now();
            let bytes = b"GET /get?key=a HTTP/1.1\r\nX-Long-Header-Name: 0123456789\r\n\r\n";
            let mut sent = 0;
            while sent < bytes.len() && start.elapsed() < Duration::from_secs(3) {
                if conn.send_raw(&bytes[sent..=sent]).is_err() {
                    break;
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            let r = conn.read_response().expect("408 for a trickled request");
            assert_eq!(r.status, 408, "{r}");
            assert!(
                start.elapsed() <= Duration::from_millis(2500),
                "{:?}",
                start.elapsed()
            );
        }),
    ));
    // Idle after a request: the server closes without a response.
    threads.push(run(
        "idle after request",
        Box::new(move || {
            let mut conn = Conn::connect(addr).expect("connect");
            let r = conn.get("/health").expect("health");
            assert_eq!(r.status, 200);
            let start = Instant::now();
            assert!(
                conn.closed_by_peer(Duration::from_secs(4)),
                "idle keep-alive connection not closed (or got bytes) within 4 s"
            );
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(800) && took <= Duration::from_secs(3),
                "idle close after {took:?}, want about 1 s"
            );
        }),
    ));
    // Idle from the start: closed, no 408 (no request was started).
    threads.push(run(
        "idle from connect",
        Box::new(move || {
            let mut conn = Conn::connect(addr).expect("connect");
            let start = Instant::now();
            assert!(
                conn.closed_by_peer(Duration::from_secs(4)),
                "silent connection not closed (or got bytes) within 4 s"
            );
            assert!(
                start.elapsed() <= Duration::from_secs(3),
                "{:?}",
                start.elapsed()
            );
        }),
    ));
    // A busy keep-alive connection is not idle: a request every 400 ms for
    // 3 s is served on one connection.
    threads.push(run(
        "busy",
        Box::new(move || {
            let mut conn = Conn::connect(addr).expect("connect");
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed() < Duration::from_secs(3) {
                let r = conn
                    .get("/health")
                    .unwrap_or_else(|e| panic!("request {n} after {:?}: {e}", start.elapsed()));
                assert_eq!(r.status, 200);
                n += 1;
                std::thread::sleep(Duration::from_millis(400));
            }
        }),
    ));
    let mut failures = Vec::new();
    for t in threads {
        let name = t.thread().name().unwrap_or_default().to_string();
        if let Err(e) = t.join() {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            failures.push(format!("{name}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "timeout cases failed:\n{}",
        failures.join("\n")
    );
    assert!(health_ok(addr));
}

#[test]
fn request_timeout_restarts_for_each_pipelined_request() {
    // A client streaming pipelined requests whose writes do not line up
    // with request boundaries (each write ends one request and starts
    // the next) always has a partial request buffered. Every request is
    // delivered within 100 ms of its first byte, so none may time out,
    // however long the stream runs.
    let c = Cluster::start_with_args(1, &[None], &["--request-timeout", "1"]);
    let addr = c.shards[0].primary;
    let one = request_bytes("GET", "/health", &[], b"");
    let half = one.len() / 2;
    let mut conn = Conn::connect(addr).expect("connect");
    conn.send_raw(&one[..half]).expect("first half");
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
        // The rest of this request and the first half of the next one.
        let mut chunk = one[half..].to_vec();
        chunk.extend_from_slice(&one[..half]);
        conn.send_raw(&chunk).unwrap_or_else(|e| {
            panic!(
                "write after {answered} answers ({:?}): {e}",
                start.elapsed()
            )
        });
        let r = conn
            .read_response()
            .unwrap_or_else(|e| panic!("answer {answered} after {:?}: {e}", start.elapsed()));
        assert_eq!(
            r.status,
            200,
            "answer {answered} after {:?}: each request took < 100 ms to arrive, \
             yet the server timed out: {r}",
            start.elapsed()
        );
        answered += 1;
    }
    assert!(answered >= 20, "{answered}");
}

// ---------------------------------------------------------------------------
// Connection cap

#[test]
fn connection_cap_answers_503_and_recovers() {
    let c = Cluster::start_with_args(1, &[None], &["--max-connections", "20"]);
    let addr = c.shards[0].primary;
    let mut held: Vec<Conn> = (0..20).map(|_| open_served(addr)).collect();
    // The 21st: 503 at once, without sending anything, then closed.
    let mut extra = Conn::connect(addr).expect("connect 21st");
    let r = extra.read_response().expect("503 for the 21st connection");
    assert_eq!(r.status, 503, "{r}");
    assert!(r.text().contains("connections"), "503 message: {r}");
    assert!(r.closes(), "{r}");
    assert!(extra.closed_by_peer(Duration::from_secs(5)));
    // A client that sends its request at once also gets the 503.
    let mut eager = Conn::connect(addr).expect("connect 22nd");
    let r = eager.get("/health").expect("503 for an eager client");
    assert_eq!(r.status, 503, "{r}");
    // The cap is per node: the replica serves normally.
    assert!(health_ok(c.shards[0].replica));
    // The held connections still work.
    for (i, conn) in held.iter_mut().enumerate() {
        let r = conn
            .get("/health")
            .unwrap_or_else(|e| panic!("held {i}: {e}"));
        assert_eq!(r.status, 200);
    }
    // Close five: five new connections are served again...
    held.truncate(15);
    for _ in 0..5 {
        held.push(open_served(addr));
    }
    // ...and the cap holds again.
    let mut extra = Conn::connect(addr).expect("connect");
    let r = extra.read_response().expect("503 again");
    assert_eq!(r.status, 503, "{r}");
    drop(held);
    assert!(
        wait_until(Duration::from_secs(5), || health_ok(addr)),
        "node serves again once the connections are closed"
    );
}

#[test]
fn refused_connections_are_counted_in_metrics() {
    let c = Cluster::start_with_args(1, &[None], &["--max-connections", "3"]);
    let addr = c.shards[0].primary;
    let _held: Vec<Conn> = (0..3).map(|_| open_served(addr)).collect();
    for _ in 0..2 {
        let mut extra = Conn::connect(addr).expect("connect");
        assert_eq!(extra.read_response().expect("503").status, 503);
    }
    // Read the metrics from the replica (the primary is full). The primary
    // counts a refusal once its 503 is written, which can be just after the
    // client has read it: wait for the count (on a deadline).
    let mut m = String::new();
    let mut refused = None;
    wait_until(Duration::from_secs(5), || {
        m = get(c.shards[0].replica, "/metrics").text();
        refused = sample(
            &m,
            "corekv_rejected_connections_total{node=\"shard1/primary\"}",
        );
        refused.is_some_and(|v| v >= 2.0)
    });
    assert!(
        refused.is_some_and(|v| v >= 2.0),
        "two connections were refused at the cap, metrics say {refused:?}:\n{}",
        m.lines()
            .filter(|l| l.contains("connections"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------
// Slowloris

#[test]
fn slowloris_does_not_starve_normal_clients() {
    const SLOW: usize = 200;
    let c = Cluster::start_with_args(1, &[None], &["--request-timeout", "2"]);
    let addr = c.shards[0].primary;
    let start = Instant::now();
    let mut slow: Vec<(TcpStream, Vec<u8>, bool)> = (0..SLOW)
        .map(|i| {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("slow connection {i}: {e}"));
            s.set_nodelay(true).ok();
            (s, Vec::new(), false)
        })
        .collect();
    for (s, _, _) in &mut slow {
        s.write_all(b"GET /get?key=slow HTTP/1.1\r\nX-Slow: ")
            .expect("first bytes");
        s.set_nonblocking(true).expect("nonblocking");
    }
    let slow_thread = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(5);
        let mut chunk = [0u8; 4096];
        while Instant::now() < end && slow.iter().any(|(_, _, done)| !*done) {
            for (s, got, done) in &mut slow {
                if *done {
                    continue;
                }
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) => {
                            *done = true;
                            break;
                        }
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            *done = true;
                            break;
                        }
                    }
                }
                if !*done && got.is_empty() && s.write_all(b"a").is_err() {
                    *done = true;
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        slow.into_iter()
            .map(|(_, got, done)| (got, done))
            .collect::<Vec<_>>()
    });
    // Meanwhile a normal client: 200 sequential requests, each fast.
    let mut conn = Conn::connect(addr).expect("connect");
    let mut worst = Duration::ZERO;
    for i in 0..200 {
        if i % 25 == 0 {
            conn = Conn::connect(addr).expect("reconnect");
        }
        let key = format!("normal-{}", i / 2);
        let t = Instant::now();
        let r = if i % 2 == 0 {
            conn.get(&set_target(key.as_bytes(), b"v"))
        } else {
            conn.get(&get_target(key.as_bytes()))
        }
        .unwrap_or_else(|e| panic!("normal request {i}: {e}"));
        let took = t.elapsed();
        worst = worst.max(took);
        assert_eq!(r.status, 200, "normal request {i}: {r}");
        assert!(
            took < Duration::from_secs(1),
            "normal request {i} took {took:?}"
        );
    }
    let normal_done = start.elapsed();
    let results = slow_thread.join().expect("slow thread");
    let mut timed_out = 0;
    let mut other = Vec::new();
    for (i, (got, _)) in results.iter().enumerate() {
        match statuses_of(got) {
            Ok(s) if s == [408] => timed_out += 1,
            _ => other.push(format!("slow {i}: {}", show(got, 120))),
        }
    }
    eprintln!(
        "slowloris: normal client done after {normal_done:?}, worst latency {worst:?}; \
         {timed_out}/{SLOW} slow connections got 408 after {:?}",
        start.elapsed()
    );
    assert_eq!(
        timed_out,
        SLOW,
        "every slow connection gets 408 after --request-timeout:\n{}",
        other
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(health_ok(addr));
}

// ---------------------------------------------------------------------------
// Property test: split points and random bytes

/// One request of the split-point pipeline and what it must answer.
struct Step {
    bytes: Vec<u8>,
    head: bool,
    status: u16,
    body: Option<Vec<u8>>,
    content_length: Option<usize>,
}

/// A pipeline of 8 requests for keys tagged `t` (fixed width, so every
/// tag gives the same length).
fn split_pipeline(t: usize) -> Vec<Step> {
    let a = format!("sp{t:05}a");
    let b = format!("sp{t:05}b");
    let cc = format!("sp{t:05}c");
    let v = format!("v{t:05}");
    // A body that looks like the end of a head and another request.
    let tricky: &[u8] = b"x\r\n\r\nGET /health HTTP/1.1\r\n\r\n";
    let form = format!("key={cc}&value=x+y%21");
    let step = |bytes: Vec<u8>, head: bool, status: u16, body: Option<&[u8]>| Step {
        bytes,
        head,
        status,
        body: body.map(<[u8]>::to_vec),
        content_length: None,
    };
    vec![
        step(
            request_bytes("GET", &set_target(a.as_bytes(), v.as_bytes()), &[], b""),
            false,
            200,
            Some(b"OK\n"),
        ),
        step(
            request_bytes("GET", &get_target(a.as_bytes()), &[], b""),
            false,
            200,
            Some(v.as_bytes()),
        ),
        step(
            request_bytes("PUT", &format!("/v1/kv/{b}"), &[], tricky),
            false,
            200,
            Some(b"OK\n"),
        ),
        Step {
            content_length: Some(tricky.len()),
            ..step(
                request_bytes("HEAD", &format!("/v1/kv/{b}"), &[], b""),
                true,
                200,
                None,
            )
        },
        step(
            request_bytes(
                "POST",
                "/set",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                form.as_bytes(),
            ),
            false,
            200,
            Some(b"OK\n"),
        ),
        step(
            request_bytes("GET", &delete_target(a.as_bytes()), &[], b""),
            false,
            200,
            Some(b"OK\n"),
        ),
        step(
            request_bytes("GET", &get_target(a.as_bytes()), &[], b""),
            false,
            404,
            None,
        ),
        step(
            request_bytes("GET", &format!("/v1/kv/{cc}"), &[], b""),
            false,
            200,
            Some(b"x y!"),
        ),
    ]
}

#[test]
fn every_split_point_and_random_bytes() {
    let c = Cluster::start_with_args(2, &[None], &["--no-fsync"]);
    let primaries = [c.shards[0].primary, c.shards[1].primary];
    let started = Instant::now();

    // 1. Every split point of a valid pipeline, each on a fresh connection.
    let len = split_pipeline(0)
        .iter()
        .map(|s| s.bytes.len())
        .sum::<usize>();
    for k in 0..=len {
        let steps = split_pipeline(k);
        let bytes: Vec<u8> = steps.iter().flat_map(|s| s.bytes.clone()).collect();
        assert_eq!(bytes.len(), len);
        let ends: Vec<usize> = steps
            .iter()
            .scan(0, |acc, s| {
                *acc += s.bytes.len();
                Some(*acc)
            })
            .collect();
        let addr = primaries[k % 2];
        let mut conn = Conn::connect(addr).expect("connect");
        let ctx = |i: usize| format!("split at {k} of {len} (node {addr}), response {i}");
        conn.send_raw(&bytes[..k]).expect("first part");
        // Read the answers to the requests complete in the first part:
        // that proves the server holds the partial rest before it arrives.
        let complete = ends.iter().filter(|&&e| e <= k).count();
        let mut got = Vec::new();
        for (i, step) in steps.iter().enumerate().take(complete) {
            got.push(
                conn.read_response_for(step.head)
                    .unwrap_or_else(|e| panic!("{}: {e}", ctx(i))),
            );
        }
        if complete == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        conn.send_raw(&bytes[k..]).expect("second part");
        for (i, step) in steps.iter().enumerate().skip(complete) {
            got.push(
                conn.read_response_for(step.head)
                    .unwrap_or_else(|e| panic!("{}: {e}", ctx(i))),
            );
        }
        for (i, (r, step)) in got.iter().zip(&steps).enumerate() {
            assert_eq!(r.status, step.status, "{}: {r}", ctx(i));
            if let Some(b) = &step.body {
                assert_eq!(&r.body, b, "{}: {r}", ctx(i));
            }
            if let Some(n) = step.content_length {
                assert_eq!(
                    r.header("Content-Length"),
                    Some(n.to_string().as_str()),
                    "{}: {r}",
                    ctx(i)
                );
            }
            assert!(!r.closes(), "{}: {r}", ctx(i));
        }
        // Nothing extra on the connection: it still answers in sync.
        let r = conn.get("/health").expect("after the pipeline");
        assert_eq!(
            (r.status, r.text()),
            (200, "ok\n".to_string()),
            "split at {k}"
        );
    }
    let split_time = started.elapsed();

    // 2. Random byte strings: an error status or a close, never a hang.
    let mut rng = Rng::new(0x5eed_c0de_2026);
    // (Without the HEAD request: answers to HEAD have no body, which
    // `statuses_of` cannot tell apart.)
    let valid: Vec<u8> = split_pipeline(99_999)
        .iter()
        .filter(|s| !s.head)
        .flat_map(|s| s.bytes.clone())
        .collect();
    let cases = 400;
    let mut seen = std::collections::BTreeMap::new();
    let mut closed_silently = 0;
    for n in 0..cases {
        let kind = rng.below(9);
        let mut bytes = match kind {
            0 => {
                let l = rng.range(1, 64);
                rng.bytes(l)
            }
            1 => {
                let l = rng.range(64, 4096);
                rng.bytes(l)
            }
            2 => {
                let mut b = b"GET /get?key=".to_vec();
                let l = rng.range(0, 200);
                b.extend(rng.bytes(l));
                if rng.below(2) == 0 {
                    b.extend_from_slice(b" HTTP/1.1\r\n\r\n");
                }
                b
            }
            3 => {
                let mut b = b"GET /get?key=a HTTP/1.1\r\n".to_vec();
                let l = rng.range(0, 300);
                b.extend(rng.bytes(l));
                b.extend_from_slice(b"\r\n\r\n");
                b
            }
            4 => {
                let l = rng.range(1, 500);
                let mut b = rng.printable(l);
                for _ in 0..rng.below(6) {
                    let at = rng.below(b.len() + 1);
                    b.splice(at..at, *b"\r\n");
                }
                b.extend_from_slice(b"\r\n\r\n");
                b
            }
            5 => {
                // A mutated valid pipeline.
                let mut b = valid.clone();
                for _ in 0..rng.range(1, 6) {
                    let at = rng.below(b.len());
                    match rng.below(4) {
                        0 => b[at] = rng.next() as u8,
                        1 => b.insert(at, rng.next() as u8),
                        2 => {
                            b.remove(at);
                        }
                        _ => b.truncate(at.max(1)),
                    }
                }
                b
            }
            6 => {
                let mut b = b"GET /".to_vec();
                let l = rng.range(17_000, 40_000);
                b.extend(rng.printable(l));
                b
            }
            7 => {
                let mut b = b"POST /set?key=cl&value=1 HTTP/1.1\r\nContent-Length: ".to_vec();
                let l = rng.range(0, 12);
                b.extend((0..l).map(|_| {
                    if rng.below(4) == 0 {
                        rng.next() as u8
                    } else {
                        b'0' + rng.below(10) as u8
                    }
                }));
                b.extend_from_slice(b"\r\n\r\n");
                let l = rng.range(0, 50);
                b.extend(rng.bytes(l));
                b
            }
            _ => {
                // A valid prefix cut anywhere, then random bytes.
                let mut b = valid[..rng.below(valid.len())].to_vec();
                let l = rng.range(0, 100);
                b.extend(rng.bytes(l));
                b
            }
        };
        if bytes.is_empty() {
            bytes.push(b'\n');
        }
        let addr = primaries[n % 2];
        let got = exchange_to_eof(addr, &bytes, true, Duration::from_secs(3)).unwrap_or_else(|e| {
            panic!(
                "random case {n} (kind {kind}) to {addr} hung: {e}\nrequest: {}",
                show(&bytes, 400)
            )
        });
        if got.is_empty() {
            closed_silently += 1;
            continue; // closed without an answer: fine
        }
        let statuses = statuses_of(&got).unwrap_or_else(|e| {
            panic!(
                "random case {n} (kind {kind}): malformed answer: {e}\nrequest: {}\nanswer: {}",
                show(&bytes, 400),
                show(&got, 400)
            )
        });
        for &st in &statuses {
            *seen.entry(st).or_insert(0usize) += 1;
        }
        // Pure garbage can only be refused.
        if matches!(kind, 0 | 1 | 6) {
            assert!(
                statuses.iter().all(|&s| s >= 400),
                "random case {n} (kind {kind}): garbage answered {statuses:?}\nrequest: {}",
                show(&bytes, 400)
            );
        }
    }
    let random_time = started.elapsed().saturating_sub(split_time);
    eprintln!(
        "{len} split points in {split_time:?}, {cases} random cases in {random_time:?} \
         (statuses {seen:?}, {closed_silently} closed without an answer)"
    );
    // Still alive and serving on every node.
    for n in c.nodes() {
        assert!(health_ok(n.addr), "{} stopped serving", n.name);
    }
    let r = get(primaries[0], &set_target(b"after-fuzz", b"1"));
    assert_eq!(r.status, 200, "{r}");
    let pid = c.procs[0].pid().expect("running");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start().chars().next());
    assert!(
        !matches!(state, Some(Some('Z' | 'X')) | None),
        "corekv process is gone: {stat:?}"
    );
}

// ---------------------------------------------------------------------------
// Graceful shutdown

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let mut s = Solo::start(2, &[]);
    let sh = s.shards.clone();
    // Acknowledged writes before the signal.
    let keys: Vec<String> = (0..2)
        .flat_map(|shard| keys_for_shard("term-", shard, 2, 3))
        .collect();
    let mut max_seq = 0u64;
    for (i, k) in keys.iter().enumerate() {
        let r = if i % 2 == 0 {
            get(
                sh[0].primary,
                &set_target(k.as_bytes(), format!("val-{i}").as_bytes()),
            )
        } else {
            http(
                sh[1].primary,
                "PUT",
                &format!("/v1/kv/{k}"),
                &[],
                format!("val-{i}").as_bytes(),
            )
        };
        assert_eq!(r.status, 200, "write {k}: {r}");
        let seq: u64 = r
            .header("X-Seq")
            .and_then(|v| v.parse().ok())
            .expect("X-Seq");
        max_seq = max_seq.max(seq);
    }
    let key0 = keys_for_shard("term-", 0, 2, 1).remove(0);
    let far = max_seq + 1_000_000;
    // Slow requests in flight: each waits 1.5 s for a seq that never
    // comes, then answers 504. On the replica, on the primary, and
    // forwarded between executors.
    let target = format!("/get?key={key0}&min_seq={far}&wait_ms=1500");
    let in_flight: Vec<_> = [
        ("replica", sh[0].replica),
        ("primary", sh[0].primary),
        ("forwarded", sh[1].primary),
    ]
    .into_iter()
    .map(|(what, addr)| {
        let target = target.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let r = Conn::connect(addr).and_then(|mut c| {
                c.set_read_timeout(Duration::from_secs(10))?;
                c.get(&target)
            });
            (what, r, start.elapsed())
        })
    })
    .collect();
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    s.signal(libc::SIGTERM);
    let mut problems = Vec::new();
    for t in in_flight {
        let (what, r, took) = t.join().expect("in-flight thread");
        match r {
            Ok(r) if r.status == 504 && r.text().contains(&far.to_string()) => {
                if took < Duration::from_millis(1300) {
                    problems.push(format!(
                        "{what}: answered after {took:?}, before its 1.5 s wait"
                    ));
                }
            }
            Ok(r) => problems.push(format!("{what}: want the full 504 answer, got {r}")),
            Err(e) => problems.push(format!(
                "{what}: in-flight request lost at SIGTERM after {took:?}: {e}"
            )),
        }
    }
    let status = s.wait_exit(Duration::from_secs(8));
    let exited_after = signalled.elapsed();
    match status {
        Some(st) if st.success() => {}
        Some(st) => problems.push(format!(
            "exit status after SIGTERM: {st}, want 0 (killed by the signal: is SIGTERM \
             blocked in every thread of the process, including threads started early?)"
        )),
        None => problems.push("still running 8 s after SIGTERM".into()),
    }
    if status.is_some() && exited_after > Duration::from_secs(5) {
        problems.push(format!("exit took {exited_after:?} after SIGTERM"));
    }
    assert!(
        problems.is_empty(),
        "graceful shutdown on SIGTERM:\n{}\n{}",
        problems.join("\n"),
        s.logs()
    );
    // Nothing listens any more.
    for addr in s.addrs() {
        let e = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|_| ());
        assert!(
            matches!(&e, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
            "{addr} after exit: want connection refused, got {e:?}"
        );
    }
    // The acknowledged writes are there after a restart. (On new ports:
    // restarting on the same ports right after the server closed
    // connections is `restart_on_the_same_ports_right_after_exit`.)
    s.move_to_new_ports();
    s.launch();
    let sh = s.shards.clone();
    for (i, k) in keys.iter().enumerate() {
        let r = get(sh[1].primary, &get_target(k.as_bytes()));
        assert_eq!(
            (r.status, r.text()),
            (200, format!("val-{i}")),
            "{k} after restart: {r}"
        );
    }
    // SIGINT drains the same way, and so does SIGHUP (the terminal of
    // `scripts/launch.sh` closed; its default action would kill the
    // process), each on a fresh launch.
    for (i, (sig, name)) in [(libc::SIGINT, "SIGINT"), (libc::SIGHUP, "SIGHUP")]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            s.move_to_new_ports();
            s.launch();
        }
        s.signal(sig);
        let st = s.wait_exit(Duration::from_secs(5));
        assert!(
            st.is_some_and(|st| st.success()),
            "exit after {name}: {st:?}\n{}",
            s.logs()
        );
    }
}

#[test]
fn restart_on_the_same_ports_right_after_exit() {
    // The server closes connections itself all the time (Connection:
    // close, errors, 408, idle timeouts, draining at shutdown), which
    // leaves its side of each in TIME_WAIT for 60 s. A restart on the
    // same ports must not have to wait for those.
    let mut s = Solo::start(1, &[]);
    let addr = s.shards[0].primary;
    let mut conn = Conn::connect(addr).expect("connect");
    let r = conn
        .request("GET", "/health", &[("Connection", "close")], b"")
        .expect("health");
    assert!(r.closes(), "{r}");
    assert!(
        conn.closed_by_peer(Duration::from_secs(5)),
        "server closes first"
    );
    drop(conn);
    s.kill();
    let start = Instant::now();
    s.launch_within(Duration::from_secs(5));
    eprintln!("restarted after {:?}", start.elapsed());
    assert!(health_ok(addr));
}

// ---------------------------------------------------------------------------
// Token

#[test]
fn token_protects_writes_and_internal_endpoints() {
    // Two processes, each holding one primary and the other shard's
    // replica: forwarding and replication both cross the process boundary.
    let c = Cluster::start_with_args(
        2,
        &[
            Some(vec![(0, true), (1, false)]),
            Some(vec![(1, true), (0, false)]),
        ],
        &["--token", "secret"],
    );
    let a = c.shards[0].primary;
    let k0 = keys_for_shard("auth-", 0, 2, 2);
    let k1 = keys_for_shard("auth-", 1, 2, 2);
    let bearer = |t: &str| format!("Bearer {t}");
    let good = bearer("secret");
    let wrong = bearer("wrong");
    for key in [&k0[0], &k1[0]] {
        let t = set_target(key.as_bytes(), b"v1");
        let r = http(a, "GET", &t, &[], b"");
        assert_eq!(r.status, 401, "set {key} without a token: {r}");
        assert!(r.header("WWW-Authenticate").is_some(), "{r}");
        let r = http(a, "GET", &t, &[("Authorization", &wrong)], b"");
        assert_eq!(r.status, 403, "set {key} with a wrong token: {r}");
        let r = http(a, "GET", &t, &[("Authorization", "secret")], b"");
        assert!(matches!(r.status, 200 | 403), "bare token: {r}");
        let r = http(a, "GET", &t, &[("Authorization", &good)], b"");
        assert_eq!(r.status, 200, "set {key} with the token: {r}");
        // Reads stay open, also forwarded.
        let r = get(a, &get_target(key.as_bytes()));
        assert_eq!(
            (r.status, r.text()),
            (200, "v1".to_string()),
            "get {key}: {r}"
        );
        // Every kind of write needs it.
        for (method, target, body) in [
            ("GET", delete_target(key.as_bytes()), &b""[..]),
            ("POST", "/set".to_string(), &b""[..]),
            ("PUT", format!("/v1/kv/{key}"), &b"v2"[..]),
            ("DELETE", format!("/v1/kv/{key}"), &b""[..]),
        ] {
            let (target, body) = if method == "POST" {
                (target, format!("key={key}&value=v3").into_bytes())
            } else {
                (target, body.to_vec())
            };
            let r = http(a, method, &target, &[], &body);
            assert_eq!(r.status, 401, "{method} {target} without a token: {r}");
            let r = http(a, method, &target, &[("Authorization", &wrong)], &body);
            assert_eq!(r.status, 403, "{method} {target} with a wrong token: {r}");
        }
    }
    let batch_set = format!(
        r#"{{"ops":[{{"op":"set","key":"{}","value":"b"}}]}}"#,
        k1[1]
    );
    let r = http(a, "POST", "/v1/batch", &[], batch_set.as_bytes());
    assert_eq!(r.status, 401, "batch with a write, no token: {r}");
    let r = http(
        a,
        "POST",
        "/v1/batch",
        &[("Authorization", &good)],
        batch_set.as_bytes(),
    );
    assert_eq!(r.status, 200, "batch with the token: {r}");
    assert!(r.text().contains("\"status\":200"), "{r}");
    let batch_get = format!(r#"{{"ops":[{{"op":"get","key":"{}"}}]}}"#, k1[1]);
    let r = http(a, "POST", "/v1/batch", &[], batch_get.as_bytes());
    assert_eq!(r.status, 200, "read-only batch without a token: {r}");
    assert!(r.text().contains("\"value\":\"b\""), "{r}");

    // Internal endpoints: POST with a binary body (`corekv::protocol`).
    let pull = encode_pull(&Pull {
        replica: "auth-probe".into(),
        kind: PullKind::Log { after: 0 },
        wait: Duration::ZERO,
        epoch: 0,
    });
    let scan = encode_scan(&Scan {
        prefix: b"auth-".to_vec(),
        after: None,
        limit: 10,
    });
    let forwarded = encode_kv(&KvRequest {
        op: KvOp::Get,
        key: k0[0].as_bytes().to_vec(),
        min_seq: 0,
        wait_ms: 0,
        cond: Cond::Always,
        style: Style::Rest,
    });
    let octets = ("Content-Type", "application/octet-stream");
    for (target, body) in [
        ("/internal/pull", &pull),
        ("/internal/scan", &scan),
        ("/internal/kv", &forwarded),
    ] {
        let r = http(a, "POST", target, &[octets], body);
        assert_eq!(r.status, 401, "POST {target} without a token: {r}");
        let r = http(
            a,
            "POST",
            target,
            &[octets, ("Authorization", &wrong)],
            body,
        );
        assert_eq!(r.status, 403, "POST {target} with a wrong token: {r}");
        // GET: the token is checked first, then the method.
        let r = get(a, target);
        assert_eq!(r.status, 401, "GET {target} without a token: {r}");
        let r = http(a, "GET", target, &[("Authorization", &wrong)], b"");
        assert_eq!(r.status, 403, "GET {target} with a wrong token: {r}");
        let r = http(a, "GET", target, &[("Authorization", &good)], b"");
        assert_eq!(
            (r.status, r.header("Allow")),
            (405, Some("POST")),
            "GET {target} with the token: {r}"
        );
    }
    let r = http(
        a,
        "POST",
        "/internal/pull",
        &[octets, ("Authorization", &good)],
        &pull,
    );
    assert_eq!(r.status, 200, "/internal/pull with the token: {r}");
    match decode_reply(&r.body) {
        Ok(PullReply::Entries { primary_seq, .. } | PullReply::Trimmed { primary_seq }) => {
            assert!(primary_seq > 0, "/internal/pull after the writes: {r}");
        }
        other => panic!("/internal/pull with the token: {other:?}: {r}"),
    }
    let r = http(
        a,
        "POST",
        "/internal/scan",
        &[octets, ("Authorization", &good)],
        &scan,
    );
    assert_eq!(r.status, 200, "/internal/scan with the token: {r}");
    match decode_reply(&r.body) {
        Ok(PullReply::Snapshot { pairs, done, .. }) => {
            let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_slice()).collect();
            assert!(
                done && keys == [k0[0].as_bytes()],
                "/internal/scan of shard 0's auth- keys: {keys:?}"
            );
        }
        other => panic!("/internal/scan with the token: {other:?}: {r}"),
    }
    let r = http(
        a,
        "POST",
        "/internal/kv",
        &[octets, ("Authorization", &good)],
        &forwarded,
    );
    assert_eq!(
        (r.status, r.text()),
        (200, "v1".to_string()),
        "/internal/kv with the token: {r}"
    );

    // Replication across the processes carries the token: each replica
    // (in the other process) gets its primary's writes.
    for (shard, key) in [(0, &k0[0]), (1, &k1[0])] {
        let replica = c.shards[shard].replica;
        let ok = wait_until(REPLICATION, || {
            let r = get(replica, &get_target(key.as_bytes()));
            r.status == 200 && r.body == b"v1"
        });
        assert!(
            ok,
            "replica of shard {shard} never got {key}: {}",
            get(replica, &get_target(key.as_bytes()))
        );
    }
    // A listing from one process covers the other's shard (internal scan
    // with the token), without a client token.
    let r = get(c.shards[1].replica, "/v1/kv?prefix=auth-&limit=100");
    assert_eq!(r.status, 200, "listing: {r}");
    for key in [&k0[0], &k1[0], &k1[1]] {
        assert!(
            r.text().contains(&format!("\"{key}\"")),
            "listing lacks {key}: {r}"
        );
    }
    for n in c.nodes() {
        assert!(
            wait_until(REPLICATION, || get(n.addr, "/ready").status == 200),
            "{} not ready: {}",
            n.name,
            get(n.addr, "/ready")
        );
    }
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    // RFC 9110 section 11.1: the authentication scheme is case-insensitive.
    let c = Cluster::start_with_args(1, &[None], &["--token", "secret"]);
    let p = c.shards[0].primary;
    for auth in ["Bearer secret", "bearer secret", "BEARER secret"] {
        let r = http(
            p,
            "GET",
            "/set?key=case&value=1",
            &[("Authorization", auth)],
            b"",
        );
        assert_eq!(r.status, 200, "Authorization: {auth}: {r}");
    }
}

// ---------------------------------------------------------------------------
// Metrics, health, readiness

#[test]
fn metrics_health_and_ready() {
    const GETS: usize = 25;
    let c = Cluster::start(2);
    let p0 = c.shards[0].primary;
    for n in c.nodes() {
        let r = get(n.addr, "/health");
        assert_eq!(
            (r.status, r.text()),
            (200, "ok\n".to_string()),
            "{}: {r}",
            n.name
        );
        assert!(
            wait_until(REPLICATION, || get(n.addr, "/ready").status == 200),
            "{} never ready: {}",
            n.name,
            get(n.addr, "/ready")
        );
    }
    let own = keys_for_shard("met-", 0, 2, 3);
    let other = keys_for_shard("met-", 1, 2, 2);
    let mut conn = Conn::connect(p0).expect("connect");
    for k in own.iter().chain(&other) {
        assert_eq!(
            conn.get(&set_target(k.as_bytes(), b"v"))
                .expect("set")
                .status,
            200
        );
    }
    for i in 0..GETS {
        let k = if i % 2 == 0 {
            &own[i % 3]
        } else {
            &other[i % 2]
        };
        assert_eq!(
            conn.get(&get_target(k.as_bytes())).expect("get").status,
            200
        );
    }
    for i in 0..4 {
        assert_eq!(
            conn.get(&format!("/get?key=met-missing-{i}"))
                .expect("get")
                .status,
            404
        );
    }
    let m = conn.get("/metrics").expect("metrics");
    assert_eq!(m.status, 200, "{m}");
    assert!(
        m.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{m}"
    );
    let text = m.text();
    let node = "shard1/primary";
    let count = |endpoint: &str, status: &str| {
        sample(
            &text,
            &format!(
                "corekv_requests_total{{node=\"{node}\",endpoint=\"{endpoint}\",status=\"{status}\"}}"
            ),
        )
    };
    assert!(
        count("get", "200").is_some_and(|v| v >= GETS as f64),
        "get/200: {text}"
    );
    assert!(
        count("get", "404").is_some_and(|v| v >= 4.0),
        "get/404: {text}"
    );
    assert!(
        count("set", "200").is_some_and(|v| v >= 5.0),
        "set/200: {text}"
    );
    let inf = sample(
        &text,
        &format!("corekv_request_duration_seconds_bucket{{node=\"{node}\",le=\"+Inf\"}}"),
    );
    assert!(
        inf.is_some_and(|v| v >= (GETS + 9) as f64),
        "+Inf bucket {inf:?}: {text}"
    );
    // Buckets are cumulative.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "corekv_request_duration_seconds_bucket{{node=\"{node}\""
            ))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(buckets.len() > 3, "{text}");
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "not cumulative: {buckets:?}"
    );
    let commits = sample(&text, &format!("corekv_commits_total{{node=\"{node}\"}}"));
    assert!(
        commits.is_some_and(|v| v >= 1.0),
        "commits {commits:?}: {text}"
    );
    for shard in ["shard1", "shard2"] {
        let lag = sample(
            &text,
            &format!("corekv_replication_lag{{node=\"{shard}/replica\"}}"),
        );
        assert!(lag.is_some(), "replication lag of {shard}/replica: {text}");
    }
    let open = sample(
        &text,
        &format!("corekv_open_connections{{node=\"{node}\"}}"),
    );
    assert!(
        open.is_some_and(|v| v >= 1.0),
        "open connections {open:?} (this one is open): {text}"
    );
    let fwd = sample(&text, &format!("corekv_forwarded_total{{node=\"{node}\"}}"));
    assert!(fwd.is_some_and(|v| v >= 2.0), "forwarded {fwd:?}: {text}");
    // Every local node appears, from any node.
    let m2 = get(c.shards[1].replica, "/metrics").text();
    for n in c.nodes() {
        assert!(
            m2.contains(&format!("corekv_seq{{node=\"{}\"}}", n.name)),
            "{} missing from /metrics: {m2}",
            n.name
        );
    }
}
