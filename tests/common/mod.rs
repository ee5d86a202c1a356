//! Test harness for integration tests that start real corekv processes.
//!
//! What lives here: ephemeral port allocation, config files in a temporary
//! directory, spawning `corekv` with its output captured to files, waiting
//! for readiness on a deadline, a [`Cluster`] that kills and reaps exactly
//! the children it started (in `Drop`), a kill -9 + restart helper, and a
//! tiny blocking HTTP/1.1 client over `std::net::TcpStream` (keep-alive,
//! pipelining, raw bytes).
//!
//! Depends on std, `tempfile` and `libc` (for `PR_SET_PDEATHSIG`). Invariants: every wait has a
//! deadline (no fixed sleeps as the only wait); only 127.0.0.1 is used;
//! a port handed out once is never handed out again by this test binary.

#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(
    clippy::cast_possible_truncation, // a clock seed, random ports below 65536 and shard indices below n
)]

pub mod etcd;
pub mod failover;
pub mod reshard;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a process may take to answer `/health` on every port.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// Poll interval of every wait.
pub const POLL: Duration = Duration::from_millis(20);
/// Read/write timeout of the test HTTP client: a hang fails the test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Requests slower than this are reported on stderr (shown on failure).
pub const SLOW: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Keys and placement

/// 64-bit FNV-1 (multiply, then xor), the placement hash (README, Architecture).
#[must_use]
pub fn fnv1_64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        h ^= u64::from(b);
    }
    h
}

/// The shard owning `key` among `n` shards.
#[must_use]
pub fn shard_of(key: &[u8], n: usize) -> usize {
    (fnv1_64(key) % n as u64) as usize
}

/// `count` distinct keys `{prefix}{i}` that land on `shard` of `n`.
#[must_use]
pub fn keys_for_shard(prefix: &str, shard: usize, n: usize, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| shard_of(k.as_bytes(), n) == shard)
        .take(count)
        .collect()
}

/// Percent-encodes every byte that is not unreserved (RFC 3986).
#[must_use]
pub fn enc(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Waiting

/// Polls `cond` every [`POLL`] until it is true or `deadline` has passed.
/// Returns whether it became true.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// Ports

/// Ports this process handed out, and the lock files that reserve them
/// against other test processes (held until this process exits).
struct Handed {
    ports: HashSet<u16>,
    locks: Vec<File>,
}

static HANDED_OUT: Mutex<Option<Handed>> = Mutex::new(None);

/// Reserves `port` against other processes using this harness at the same
/// time: an exclusive lock on `$TMPDIR/corekv-test-ports/PORT.lock`.
/// corekv listens with `SO_REUSEPORT`, so two test binaries that picked the
/// same port would both bind it and share its connections.
fn lock_port(port: u16) -> Option<File> {
    let dir = std::env::temp_dir().join("corekv-test-ports");
    std::fs::create_dir_all(&dir).ok()?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{port}.lock")))
        .ok()?;
    f.try_lock().ok()?;
    Some(f)
}

/// The kernel's ephemeral port range (outgoing connections take their
/// local port from it).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A small xorshift generator seeded from the clock, the pid and a counter.
fn next_random() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        x = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x
}

/// `n` distinct free ports on 127.0.0.1, never handed out before by this
/// process and reserved against other test processes ([`lock_port`]).
/// Each is checked by binding it; all are held until every port is picked.
/// Ports come from below the kernel's ephemeral range when there is room
/// (so that the test's own outgoing connections cannot take a port between
/// picking and the server binding it), else from binding port 0.
#[must_use]
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut guard = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let handed = guard.get_or_insert_with(|| Handed {
        ports: HashSet::new(),
        locks: Vec::new(),
    });
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let (lo, _) = ephemeral_range();
    let pool_start: u16 = 20000;
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        let l = if lo > pool_start + 1000 && tries < 10_000 {
            let port = pool_start + (next_random() % u64::from(lo - pool_start)) as u16;
            if handed.ports.contains(&port) {
                continue;
            }
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => l,
                Err(_) => continue,
            }
        } else {
            TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port")
        };
        let port = l.local_addr().expect("local addr").port();
        held.push(l);
        if handed.ports.contains(&port) {
            continue;
        }
        let Some(lock) = lock_port(port) else {
            continue; // another test process reserved it
        };
        handed.ports.insert(port);
        handed.locks.push(lock);
        ports.push(port);
    }
    drop(held);
    ports
}

/// True when `port` can be bound on 127.0.0.1 right now.
#[must_use]
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

// ---------------------------------------------------------------------------
// Topology

/// Addresses of one shard: its primary and its replica.
#[derive(Clone, Debug)]
pub struct ShardAddrs {
    pub idx: usize,
    /// Config name, `shard{idx+1}`.
    pub name: String,
    pub primary: SocketAddr,
    pub replica: SocketAddr,
}

impl ShardAddrs {
    #[must_use]
    pub fn primary_name(&self) -> String {
        format!("{}/primary", self.name)
    }
    #[must_use]
    pub fn replica_name(&self) -> String {
        format!("{}/replica", self.name)
    }
}

/// One node (primary or replica) of the cluster.
#[derive(Clone, Debug)]
pub struct NodeAddr {
    pub shard: usize,
    pub primary: bool,
    pub name: String,
    pub addr: SocketAddr,
}

/// The text of a sharding.toml for `shards`.
#[must_use]
pub fn config_text(shards: &[ShardAddrs]) -> String {
    let mut s = String::new();
    for sh in shards {
        let _ = write!(
            s,
            "[[shards]]\nname = \"{}\"\nidx = {}\naddress = \"{}\"\nreplica = \"{}\"\n\n",
            sh.name, sh.idx, sh.primary, sh.replica
        );
    }
    s
}

// ---------------------------------------------------------------------------
// Processes

/// Writes `DIR/sharding.toml` for `n` shards, each with one replica, on
/// free loopback ports; returns its path and the addresses.
#[must_use]
pub fn write_local_config(dir: &Path, n: usize) -> (PathBuf, Vec<ShardAddrs>) {
    let ports = free_ports(2 * n);
    let shards: Vec<ShardAddrs> = (0..n)
        .map(|i| ShardAddrs {
            idx: i,
            name: format!("shard{}", i + 1),
            primary: SocketAddr::from(([127, 0, 0, 1], ports[i])),
            replica: SocketAddr::from(([127, 0, 0, 1], ports[n + i])),
        })
        .collect();
    let config = dir.join("sharding.toml");
    std::fs::write(&config, config_text(&shards)).expect("write config");
    (config, shards)
}

/// One corekv process of a cluster.
pub struct Proc {
    pub label: String,
    /// `--serve` list; `None` = all nodes.
    pub serve: Option<Vec<SocketAddr>>,
    pub data_dir: PathBuf,
    /// Ports answering `/health` once the process is ready.
    pub ports: Vec<SocketAddr>,
    /// Extra command-line options, used on every (re)start.
    pub extra_args: Vec<String>,
    child: Option<Child>,
    generation: usize,
    logs: Vec<(PathBuf, PathBuf)>,
}

impl Proc {
    /// The child's pid while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills (SIGKILL) and reaps the child, if running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Everything the process wrote, every generation, for failure reports.
    #[must_use]
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (g, (out, err)) in self.logs.iter().enumerate() {
            let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
            let _ = write!(
                s,
                "---- {} (generation {g}) stdout ----\n{}---- {} (generation {g}) stderr ----\n{}",
                self.label,
                read(out),
                self.label,
                read(err)
            );
        }
        s
    }
}

/// Spawns corekv with stdout/stderr going to files; returns the child and
/// the two log paths.
pub fn spawn_corekv(
    dir: &Path,
    label: &str,
    args: &[String],
) -> io::Result<(Child, PathBuf, PathBuf)> {
    let mut n = 0;
    let (out, err) = loop {
        let out = dir.join(format!("{label}-{n}.stdout"));
        let err = dir.join(format!("{label}-{n}.stderr"));
        if !out.exists() {
            break (out, err);
        }
        n += 1;
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corekv"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(File::create(&err)?);
    // If the test process dies without running Drop (killed by a timeout),
    // the kernel kills the server too: no orphans holding ports.
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok((child, out, err))
}

/// Runs corekv to completion (it is expected to fail fast); kills it if it
/// is still running after `deadline`. Returns the exit status (None when
/// it had to be killed), stdout, stderr and the elapsed time.
pub fn run_to_exit(
    dir: &Path,
    label: &str,
    args: &[String],
    deadline: Duration,
) -> (Option<ExitStatus>, String, String, Duration) {
    let start = Instant::now();
    let (mut child, out, err) = spawn_corekv(dir, label, args).expect("spawn corekv");
    let mut status = None;
    wait_until(deadline, || match child.try_wait() {
        Ok(Some(s)) => {
            status = Some(s);
            true
        }
        _ => false,
    });
    let elapsed = start.elapsed();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status, read(&out), read(&err), elapsed)
}

/// True when every thread of `pid` is in the stopped state (`T`/`t` in
/// `/proc/PID/task/TID/stat`).
#[must_use]
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // the thread exited
        };
        // The state follows the last ')' (the command name may contain spaces).
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        match state {
            Some('T' | 't') => any = true,
            Some('Z' | 'X') | None => {}
            Some(_) => return false,
        }
    }
    any
}

/// Why a start attempt failed.
enum StartFailure {
    /// A port was taken between picking and binding: retry with new ports.
    PortTaken(String),
    Other(String),
}

/// A running corekv cluster of one or more processes sharing one config.
/// Drop kills and reaps exactly the children it started.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub shards: Vec<ShardAddrs>,
    pub procs: Vec<Proc>,
}

impl Cluster {
    /// `n` shards, each with one replica, all served by one process.
    #[must_use]
    pub fn start(n: usize) -> Self {
        Self::start_groups(n, &[(0..n).collect()])
    }

    /// `n` shards; one process per group, serving the primary and the
    /// replica of each shard in its group (`--serve`).
    #[must_use]
    pub fn start_groups(n: usize, groups: &[Vec<usize>]) -> Self {
        let serve: Vec<Option<Vec<(usize, bool)>>> = if groups.len() == 1 && groups[0].len() == n {
            vec![None]
        } else {
            groups
                .iter()
                .map(|g| Some(g.iter().flat_map(|&s| [(s, true), (s, false)]).collect()))
                .collect()
        };
        Self::start_with(n, &serve)
    }

    /// `n` shards; one process per entry of `serve`, each serving the listed
    /// `(shard, is_primary)` nodes, or every node for `None`.
    #[must_use]
    pub fn start_with(n: usize, serve: &[Option<Vec<(usize, bool)>>]) -> Self {
        Self::start_with_args(n, serve, &[])
    }

    /// As [`Cluster::start_with`], every process also getting `extra`
    /// command-line options (e.g. `--token`, `--log-retention`).
    #[must_use]
    pub fn start_with_args(n: usize, serve: &[Option<Vec<(usize, bool)>>], extra: &[&str]) -> Self {
        let mut last = String::new();
        for _attempt in 0..4 {
            match Self::try_start(n, serve, extra) {
                Ok(c) => return c,
                Err(StartFailure::PortTaken(logs)) => last = logs,
                Err(StartFailure::Other(msg)) => panic!("{msg}"),
            }
        }
        panic!("corekv could not bind its ports after 4 attempts:\n{last}");
    }

    fn try_start(
        n: usize,
        serve: &[Option<Vec<(usize, bool)>>],
        extra: &[&str],
    ) -> Result<Self, StartFailure> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, shards) = write_local_config(dir.path(), n);
        let mut cluster = Cluster {
            dir,
            config,
            shards,
            procs: Vec::new(),
        };
        for (i, sel) in serve.iter().enumerate() {
            let serve_addrs = sel.as_ref().map(|nodes| {
                nodes
                    .iter()
                    .map(|&(s, p)| {
                        let sh = &cluster.shards[s];
                        if p { sh.primary } else { sh.replica }
                    })
                    .collect::<Vec<_>>()
            });
            let ports = serve_addrs
                .clone()
                .unwrap_or_else(|| cluster.nodes().iter().map(|nd| nd.addr).collect());
            let data_dir = cluster.dir.path().join(format!("data-{i}"));
            cluster.procs.push(Proc {
                label: format!("proc{i}"),
                serve: serve_addrs,
                data_dir,
                ports,
                extra_args: extra.iter().map(|a| (*a).to_string()).collect(),
                child: None,
                generation: 0,
                logs: Vec::new(),
            });
        }
        for i in 0..cluster.procs.len() {
            if let Err(e) = cluster.launch(i) {
                let logs = cluster.all_logs();
                return Err(if logs.contains("Address already in use") {
                    StartFailure::PortTaken(logs)
                } else {
                    StartFailure::Other(format!("{e}\n{logs}"))
                });
            }
        }
        Ok(cluster)
    }

    /// Spawns process `i` and waits until every one of its ports answers
    /// `/health` with 200.
    fn launch(&mut self, i: usize) -> Result<(), String> {
        let config = self.config.clone();
        let dir = self.dir.path().to_path_buf();
        let p = &mut self.procs[i];
        let mut args = vec![
            "--config".to_string(),
            config.display().to_string(),
            "--data-dir".to_string(),
            p.data_dir.display().to_string(),
        ];
        args.extend(p.extra_args.iter().cloned());
        if let Some(list) = &p.serve {
            args.push("--serve".into());
            args.push(
                list.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        let (child, out, err) =
            spawn_corekv(&dir, &p.label, &args).map_err(|e| format!("cannot spawn corekv: {e}"))?;
        p.child = Some(child);
        p.logs.push((out, err));
        p.generation += 1;
        let start = Instant::now();
        let ports = p.ports.clone();
        let mut pending: Vec<SocketAddr> = ports;
        let mut exited = None;
        let ok = wait_until(START_DEADLINE, || {
            if let Some(Ok(Some(st))) = p.child.as_mut().map(Child::try_wait) {
                exited = Some(st);
                return true;
            }
            pending.retain(|a| !health_ok(*a));
            pending.is_empty()
        });
        if let Some(st) = exited {
            p.child = None;
            return Err(format!("{} exited during start-up with {st}", p.label));
        }
        if !ok {
            return Err(format!(
                "{} not ready after {:?}; still waiting for {pending:?}",
                p.label,
                start.elapsed()
            ));
        }
        Ok(())
    }

    /// Every node of the config, primaries first (in shard order), then
    /// replicas.
    #[must_use]
    pub fn nodes(&self) -> Vec<NodeAddr> {
        let mut v: Vec<NodeAddr> = self
            .shards
            .iter()
            .map(|s| NodeAddr {
                shard: s.idx,
                primary: true,
                name: s.primary_name(),
                addr: s.primary,
            })
            .collect();
        v.extend(self.shards.iter().map(|s| NodeAddr {
            shard: s.idx,
            primary: false,
            name: s.replica_name(),
            addr: s.replica,
        }));
        v
    }

    /// Nodes served by process `i`.
    #[must_use]
    pub fn nodes_of(&self, i: usize) -> Vec<NodeAddr> {
        let ports = &self.procs[i].ports;
        self.nodes()
            .into_iter()
            .filter(|n| ports.contains(&n.addr))
            .collect()
    }

    /// Shard of `key` in this cluster.
    #[must_use]
    pub fn shard_of(&self, key: &[u8]) -> usize {
        shard_of(key, self.shards.len())
    }

    /// kill -9 process `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        self.procs[i].kill();
    }

    /// Starts process `i` again (same config, same data dir) and waits for
    /// readiness. Panics with the logs on failure.
    pub fn start_proc(&mut self, i: usize) {
        // A listening port of the killed process can take a moment to be
        // released; retry the start on "address in use" within a deadline.
        let end = Instant::now() + START_DEADLINE;
        loop {
            match self.launch(i) {
                Ok(()) => return,
                Err(e) => {
                    let logs = self.procs[i].logs();
                    let in_use = self.procs[i]
                        .logs
                        .last()
                        .and_then(|(_, err)| std::fs::read_to_string(err).ok())
                        .is_some_and(|s| s.contains("Address already in use"));
                    if !in_use || Instant::now() >= end {
                        self.procs[i].kill();
                        panic!("restart of {} failed: {e}\n{logs}", self.procs[i].label);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to process `i`, by its pid.
    ///
    /// # Panics
    /// When the process is not running or `kill` fails.
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.procs[i].pid().expect("process is running");
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid} failed");
        if signal == "STOP" {
            // The group stop takes effect lazily, in the context of a thread
            // of the target; on a loaded machine other threads can run on
            // for a while. Wait until every thread is stopped.
            let stopped = wait_until(START_DEADLINE, || all_threads_stopped(pid));
            assert!(stopped, "process {pid} did not stop after SIGSTOP");
        }
    }

    /// kill -9 process `i`, then start it again with the same data dir.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start_proc(i);
    }

    /// Logs of every process, for failure messages.
    #[must_use]
    pub fn all_logs(&self) -> String {
        self.procs.iter().map(Proc::logs).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "==== corekv logs (config {}) ====\n{}",
                self.config.display(),
                self.all_logs()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP client

/// A parsed HTTP response.
#[derive(Clone, Debug)]
pub struct Resp {
    /// e.g. `HTTP/1.1`
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// First header named `name`, case-insensitively.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Body as (lossy) text.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// True when the server announced it closes the connection.
    #[must_use]
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.version, self.status)?;
        for (n, v) in &self.headers {
            write!(f, " | {n}: {v}")?;
        }
        write!(f, " | body {:?}", self.text())
    }
}

/// One client connection; responses are read in order (keep-alive,
/// pipelining).
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pub addr: SocketAddr,
}

impl Conn {
    /// Connects with [`IO_TIMEOUT`] on connect, reads and writes.
    ///
    /// # Errors
    /// Connect failure.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        Self::connect_timeout(addr, IO_TIMEOUT)
    }

    /// Connects with `timeout` on connect, reads and writes.
    ///
    /// # Errors
    /// Connect failure.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            addr,
        })
    }

    /// Writes raw bytes.
    ///
    /// # Errors
    /// Write failure.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sets the read timeout of the connection.
    ///
    /// # Errors
    /// Socket failure.
    pub fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(t))
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response. `head_only`: the response to a HEAD request
    /// (no body despite Content-Length). 1xx, 204 and 304 responses have no
    /// body either.
    ///
    /// # Errors
    /// I/O failure, timeout, EOF before a complete response, or a
    /// malformed response.
    pub fn read_response_for(&mut self, head_only: bool) -> io::Result<Resp> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head ({} bytes)",
                        self.buf.len()
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().ok_or_else(|| bad("empty head"))?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        if !version.starts_with("HTTP/1.") {
            return Err(bad(&format!("bad status line {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        for line in lines {
            let (n, v) = line
                .split_once(':')
                .ok_or_else(|| bad(&format!("bad header line {line:?}")))?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        self.buf.drain(..head_end + 4);
        let mut resp = Resp {
            version,
            status,
            headers,
            body: Vec::new(),
        };
        let len = resp.header("content-length").map(str::parse::<usize>);
        // Answers to HEAD and 1xx, 204 and 304 answers end with their head
        // (RFC 9112 §6.3).
        if head_only || resp.status < 200 || resp.status == 204 || resp.status == 304 {
            return Ok(resp);
        }
        match len {
            Some(Ok(len)) => {
                while self.buf.len() < len {
                    if self.fill()? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed inside a response body",
                        ));
                    }
                }
                resp.body = self.buf.drain(..len).collect();
            }
            Some(Err(_)) => return Err(bad("bad Content-Length")),
            None => {
                // Close-delimited body.
                while self.fill()? > 0 {}
                resp.body = std::mem::take(&mut self.buf);
            }
        }
        Ok(resp)
    }

    /// Reads one response to a non-HEAD request.
    ///
    /// # Errors
    /// See [`Conn::read_response_for`].
    pub fn read_response(&mut self) -> io::Result<Resp> {
        self.read_response_for(false)
    }

    /// Sends an HTTP/1.1 request and reads its response.
    ///
    /// # Errors
    /// I/O failure or a malformed response.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Resp> {
        let bytes = request_bytes(method, target, headers, body);
        let start = Instant::now();
        self.send_raw(&bytes)?;
        let r = self.read_response_for(method == "HEAD");
        if start.elapsed() > SLOW {
            eprintln!(
                "slow request: {method} {target} on {} took {:?}",
                self.addr,
                start.elapsed()
            );
        }
        r
    }

    /// `GET target` on this connection.
    ///
    /// # Errors
    /// See [`Conn::request`].
    pub fn get(&mut self, target: &str) -> io::Result<Resp> {
        self.request("GET", target, &[], b"")
    }

    /// Waits for the server to close the connection (EOF) with no further
    /// bytes; returns false on a timeout or unexpected data.
    pub fn closed_by_peer(&mut self, within: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let _ = self.stream.set_read_timeout(Some(within));
        let mut b = [0u8; 64];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }
}

/// The bytes of an HTTP/1.1 request with a Host and (when there is a body
/// or the method usually has one) Content-Length header.
#[must_use]
pub fn request_bytes(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// One request on a fresh connection.
///
/// # Panics
/// On connection or protocol failure (a hang is a timeout failure).
#[must_use]
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut c = Conn::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.request(method, target, headers, body)
        .unwrap_or_else(|e| panic!("{method} {target} on {addr}: {e}"))
}

/// `GET target` on a fresh connection.
///
/// # Panics
/// See [`http`].
#[must_use]
pub fn get(addr: SocketAddr, target: &str) -> Resp {
    http(addr, "GET", target, &[], b"")
}

/// True when `GET /health` on `addr` answers 200 (short timeouts; for polling).
#[must_use]
pub fn health_ok(addr: SocketAddr) -> bool {
    Conn::connect_timeout(addr, Duration::from_millis(500))
        .and_then(|mut c| c.get("/health"))
        .is_ok_and(|r| r.status == 200)
}

/// `/get?key=K` target.
#[must_use]
pub fn get_target(key: &[u8]) -> String {
    format!("/get?key={}", enc(key))
}

/// `/set?key=K&value=V` target.
#[must_use]
pub fn set_target(key: &[u8], value: &[u8]) -> String {
    format!("/set?key={}&value={}", enc(key), enc(value))
}

/// `/delete?key=K` target.
#[must_use]
pub fn delete_target(key: &[u8]) -> String {
    format!("/delete?key={}", enc(key))
}

// ---------------------------------------------------------------------------
// /metrics

/// The value of the sample `series` (name and labels, e.g.
/// `corekv_seq{node="s1/primary"}`) in Prometheus text, if present.
#[must_use]
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------------------
// /status

/// One node entry of a `/status` JSON document, as raw `"field":value` text.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub raw: String,
}

impl NodeStatus {
    /// A numeric field.
    #[must_use]
    pub fn num(&self, field: &str) -> Option<u64> {
        let pat = format!("\"{field}\":");
        let at = self.raw.find(&pat)? + pat.len();
        let digits: String = self.raw[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    /// A string field.
    #[must_use]
    pub fn str(&self, field: &str) -> Option<String> {
        let pat = format!("\"{field}\":\"");
        let at = self.raw.find(&pat)? + pat.len();
        let rest = &self.raw[at..];
        Some(rest[..rest.find('"')?].to_string())
    }
}

/// The node entries of `/status` on `addr`, by node name. Minimal JSON
/// scanning: each node object starts with `{"name":`.
///
/// # Panics
/// When `/status` does not answer 200 with that shape.
#[must_use]
pub fn status_nodes(addr: SocketAddr) -> Vec<(String, NodeStatus)> {
    let r = get(addr, "/status");
    assert_eq!(r.status, 200, "/status on {addr}: {r}");
    let text = r.text();
    text.split("{\"name\":")
        .skip(1)
        .map(|chunk| {
            let name = chunk.trim_start_matches('"');
            let name = name[..name.find('"').unwrap_or(0)].to_string();
            (
                name,
                NodeStatus {
                    raw: chunk.to_string(),
                },
            )
        })
        .collect()
}
