//! Harness of the failover tests (`tests/failover.rs`): a cluster of three
//! corekv processes with `--etcd`, each serving one shard's primary and a
//! replica of each of the other two shards (3 shards × (primary + 2
//! replicas)); kill -9, SIGSTOP/SIGCONT and restart of one process by its
//! own pid; the roles as `/status` reports them; a load of writer threads
//! that follow the primaries (403 answers and `/status`) and record every
//! write's outcome with a per-key sequence; and the final check of those
//! records against what the primaries hold.
//!
//! Depends on the harness in `mod.rs` (ports, spawning, HTTP client) and
//! `libc`. Invariants: every wait has a deadline; only the processes this
//! harness spawned are signalled; a stopped process is resumed before it
//! is killed (in `Drop` too).

#![allow(
    clippy::cast_possible_truncation, // nanoseconds since a test's start fit in u64
)]

use super::{Conn, START_DEADLINE, all_threads_stopped, enc, free_ports, health_ok, spawn_corekv};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shards of the cluster (and processes: one primary each at the start).
pub const SHARDS: usize = 3;
/// Lease TTL of every process, in milliseconds.
pub const TTL_MS: u64 = 1000;

/// A node of the config.
#[derive(Clone, Debug)]
pub struct Node {
    /// e.g. `shard2/replica2`.
    pub name: String,
    pub shard: usize,
    pub addr: SocketAddr,
    /// The process serving it.
    pub proc_idx: usize,
}

/// One corekv process.
pub struct Proc {
    pub label: String,
    /// Indices into [`FoCluster::nodes`].
    pub nodes: Vec<usize>,
    data_dir: PathBuf,
    child: Option<Child>,
    stopped: bool,
    /// stderr files of every generation.
    logs: Vec<PathBuf>,
}

impl Proc {
    /// The pid while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on the pid of our own unreaped child.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
}

/// The three-process cluster. `Drop` resumes, kills and reaps exactly the
/// processes it started.
pub struct FoCluster {
    pub dir: tempfile::TempDir,
    config: PathBuf,
    pub nodes: Vec<Node>,
    pub procs: Vec<Proc>,
    args: Vec<String>,
}

/// A node as its process's `/status` shows it.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    pub node: usize,
    pub role: String,
    pub epoch: u64,
    pub data_epoch: u64,
    pub state: String,
    pub seq: u64,
    pub discarded: u64,
    pub fenced: u64,
}

/// A field of one node object of `/status` (raw JSON text of that object
/// and what follows it).
fn field<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!("\"{name}\":");
    let at = raw.find(&pat)? + pat.len();
    let rest = &raw[at..];
    if let Some(s) = rest.strip_prefix('"') {
        return Some(&s[..s.find('"')?]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn num(raw: &str, name: &str) -> u64 {
    field(raw, name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `GET /status` on `addr` with short timeouts: the node objects by name.
#[must_use]
pub fn try_status(addr: SocketAddr, timeout: Duration) -> Option<Vec<(String, String)>> {
    let mut c = Conn::connect_timeout(addr, timeout).ok()?;
    let r = c.get("/status").ok()?;
    if r.status != 200 {
        return None;
    }
    let text = r.text();
    Some(
        text.split("{\"name\":")
            .skip(1)
            .map(|chunk| {
                let name = chunk.trim_start_matches('"');
                let name = name[..name.find('"').unwrap_or(0)].to_string();
                // Only this node's object: up to the next peer or control entry.
                let end = chunk.find("{\"peer\":").unwrap_or(chunk.len());
                (name, chunk[..end].to_string())
            })
            .collect(),
    )
}

fn config_text(nodes: &[Node]) -> String {
    let mut s = String::new();
    for shard in 0..SHARDS {
        let of: Vec<&Node> = nodes.iter().filter(|n| n.shard == shard).collect();
        let _ = write!(
            s,
            "[[shards]]\nname = \"shard{}\"\nidx = {shard}\naddress = \"{}\"\nreplicas = [\"{}\", \"{}\"]\n\n",
            shard + 1,
            of[0].addr,
            of[1].addr,
            of[2].addr
        );
    }
    s
}

impl FoCluster {
    /// Starts the three processes against `etcd_url` with `extra` options
    /// and waits until each shard has a primary that takes writes.
    ///
    /// # Panics
    /// When the cluster does not start (with its logs).
    #[must_use]
    pub fn start(etcd_url: &str, extra: &[&str]) -> Self {
        Self::start_ttl(etcd_url, TTL_MS, extra)
    }

    /// As [`FoCluster::start`] with another lease TTL.
    ///
    /// # Panics
    /// When the cluster does not start (with its logs).
    #[must_use]
    pub fn start_ttl(etcd_url: &str, ttl_ms: u64, extra: &[&str]) -> Self {
        let mut last = String::new();
        for _attempt in 0..4 {
            match Self::try_start(etcd_url, ttl_ms, extra) {
                Ok(c) => return c,
                Err((msg, port_taken)) if port_taken => last = msg,
                Err((msg, _)) => panic!("{msg}"),
            }
        }
        panic!("corekv could not bind its ports after 4 attempts:\n{last}");
    }

    fn try_start(etcd_url: &str, ttl_ms: u64, extra: &[&str]) -> Result<Self, (String, bool)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(SHARDS * 3);
        let mut nodes = Vec::new();
        for shard in 0..SHARDS {
            for k in 0..3 {
                let name = match k {
                    0 => format!("shard{}/primary", shard + 1),
                    1 => format!("shard{}/replica", shard + 1),
                    _ => format!("shard{}/replica2", shard + 1),
                };
                nodes.push(Node {
                    name,
                    shard,
                    addr: SocketAddr::from(([127, 0, 0, 1], ports[shard * 3 + k])),
                    proc_idx: (shard + k) % SHARDS,
                });
            }
        }
        let config = dir.path().join("sharding.toml");
        std::fs::write(&config, config_text(&nodes)).expect("write config");
        let procs = (0..SHARDS)
            .map(|p| Proc {
                label: format!("proc{p}"),
                nodes: (0..nodes.len())
                    .filter(|&i| nodes[i].proc_idx == p)
                    .collect(),
                data_dir: dir.path().join(format!("data-{p}")),
                child: None,
                stopped: false,
                logs: Vec::new(),
            })
            .collect();
        let mut args = vec![
            "--etcd".to_string(),
            etcd_url.to_string(),
            "--lease-ttl-ms".to_string(),
            ttl_ms.to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_string()));
        let mut c = Self {
            dir,
            config,
            nodes,
            procs,
            args,
        };
        for p in 0..SHARDS {
            if let Err(e) = c.launch(p) {
                let logs = c.all_logs();
                return Err((
                    format!("{e}\n{logs}"),
                    logs.contains("Address already in use"),
                ));
            }
        }
        let ok = super::wait_until(START_DEADLINE, || {
            let v = c.primaries();
            v.iter().all(Option::is_some) && c.settled()
        });
        if !ok {
            return Err((
                format!(
                    "no primaries within {START_DEADLINE:?}: {:?}\n{}",
                    c.views(),
                    c.all_logs()
                ),
                false,
            ));
        }
        Ok(c)
    }

    fn launch(&mut self, p: usize) -> Result<(), String> {
        let serve: Vec<String> = self.procs[p]
            .nodes
            .iter()
            .map(|&i| self.nodes[i].addr.to_string())
            .collect();
        let ports: Vec<SocketAddr> = self.procs[p]
            .nodes
            .iter()
            .map(|&i| self.nodes[i].addr)
            .collect();
        let mut args = vec![
            "--config".to_string(),
            self.config.display().to_string(),
            "--data-dir".to_string(),
            self.procs[p].data_dir.display().to_string(),
            "--serve".to_string(),
            serve.join(","),
        ];
        args.extend(self.args.iter().cloned());
        let label = self.procs[p].label.clone();
        let (child, _out, err) = spawn_corekv(self.dir.path(), &label, &args)
            .map_err(|e| format!("cannot spawn corekv: {e}"))?;
        let proc_ = &mut self.procs[p];
        proc_.child = Some(child);
        proc_.stopped = false;
        proc_.logs.push(err);
        let mut pending = ports;
        let mut exited = None;
        let ok = super::wait_until(START_DEADLINE, || {
            if let Some(Ok(Some(st))) = proc_.child.as_mut().map(Child::try_wait) {
                exited = Some(st);
                return true;
            }
            pending.retain(|a| !health_ok(*a));
            pending.is_empty()
        });
        if let Some(st) = exited {
            proc_.child = None;
            return Err(format!("{label} exited during start-up with {st}"));
        }
        if !ok {
            return Err(format!("{label} not ready; still waiting for {pending:?}"));
        }
        Ok(())
    }

    /// True while process `p` runs (and is not stopped).
    #[must_use]
    pub fn is_up(&self, p: usize) -> bool {
        self.procs[p].child.is_some() && !self.procs[p].stopped
    }

    /// kill -9 of process `p`, reaped.
    pub fn kill9(&mut self, p: usize) {
        let pr = &mut self.procs[p];
        if pr.stopped {
            pr.signal(libc::SIGCONT);
            pr.stopped = false;
        }
        if let Some(mut c) = pr.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts process `p` again with its data; retries while a port of the
    /// killed process is still taken.
    ///
    /// # Panics
    /// When it does not start within the deadline.
    pub fn restart(&mut self, p: usize) {
        let end = Instant::now() + START_DEADLINE;
        loop {
            match self.launch(p) {
                Ok(()) => return,
                Err(e) => {
                    let in_use = self.procs[p]
                        .logs
                        .last()
                        .and_then(|f| std::fs::read_to_string(f).ok())
                        .is_some_and(|s| s.contains("Address already in use"));
                    assert!(
                        in_use && Instant::now() < end,
                        "restart of proc{p} failed: {e}\n{}",
                        self.all_logs()
                    );
                    if let Some(mut c) = self.procs[p].child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// SIGSTOP of process `p`; waits until all its threads are stopped.
    ///
    /// # Panics
    /// When it does not stop in time.
    pub fn stop(&mut self, p: usize) {
        let pid = self.procs[p].pid().expect("running");
        self.procs[p].signal(libc::SIGSTOP);
        self.procs[p].stopped = true;
        assert!(
            super::wait_until(START_DEADLINE, || all_threads_stopped(pid)),
            "proc{p} did not stop"
        );
    }

    /// SIGCONT of process `p`.
    pub fn cont(&mut self, p: usize) {
        self.procs[p].signal(libc::SIGCONT);
        self.procs[p].stopped = false;
    }

    /// Every node of every running, not stopped process as its `/status`
    /// shows it.
    #[must_use]
    pub fn views(&self) -> Vec<NodeView> {
        let addrs: Vec<Vec<SocketAddr>> = (0..self.procs.len())
            .map(|p| {
                if self.is_up(p) {
                    self.procs[p]
                        .nodes
                        .iter()
                        .map(|&i| self.nodes[i].addr)
                        .collect()
                } else {
                    Vec::new()
                }
            })
            .collect();
        views_of(&self.nodes, &addrs)
    }

    /// Each shard's primary and epoch: the node reporting itself primary
    /// in the highest epoch.
    #[must_use]
    pub fn primaries(&self) -> [Option<(usize, u64)>; SHARDS] {
        primaries_of(&self.views())
    }

    /// Every process runs; each shard has one primary, all nodes agree on
    /// its epoch and every replica follows it (`following`, or
    /// `catching-up` under load; not `reseeding` or `disconnected`).
    #[must_use]
    pub fn settled(&self) -> bool {
        if !(0..self.procs.len()).all(|p| self.is_up(p)) {
            return false;
        }
        let v = self.views();
        if v.len() != self.nodes.len() {
            return false;
        }
        (0..SHARDS).all(|s| {
            let of: Vec<&NodeView> = v.iter().filter(|n| self.nodes[n.node].shard == s).collect();
            let primaries = of.iter().filter(|n| n.role == "primary").count();
            primaries == 1
                && of.iter().all(|n| n.epoch == of[0].epoch)
                && of
                    .iter()
                    .filter(|n| n.role == "replica")
                    .all(|n| n.state == "following" || n.state == "catching-up")
        })
    }

    /// Waits until [`FoCluster::settled`].
    ///
    /// # Panics
    /// When it does not settle within `deadline`.
    pub fn wait_settled(&self, deadline: Duration, ctx: &str) {
        assert!(
            super::wait_until(deadline, || self.settled()),
            "{ctx}: the cluster did not settle within {deadline:?}: {:#?}",
            self.views()
        );
    }

    /// The address of node `i`.
    #[must_use]
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Node addresses per process (for a [`Load`]'s monitor).
    #[must_use]
    pub fn proc_addrs(&self) -> Vec<Vec<SocketAddr>> {
        self.procs
            .iter()
            .map(|p| p.nodes.iter().map(|&i| self.nodes[i].addr).collect())
            .collect()
    }

    /// Entries discarded on rejoin, per shard, from every generation's log
    /// lines `discarding N entries`.
    #[must_use]
    pub fn discarded_from_logs(&self) -> [u64; SHARDS] {
        let mut out = [0; SHARDS];
        for p in &self.procs {
            for f in &p.logs {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                for line in text.lines() {
                    let Some(rest) = line.split("msg=\"discarding ").nth(1) else {
                        continue;
                    };
                    let n: u64 = rest
                        .split(' ')
                        .next()
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(0);
                    let node = line
                        .split("node=")
                        .nth(1)
                        .and_then(|s| s.split(' ').next())
                        .unwrap_or("");
                    if let Some(nd) = self.nodes.iter().find(|nd| nd.name == node) {
                        out[nd.shard] += n;
                    }
                }
            }
        }
        out
    }

    /// The lines of every process's logs (every generation, whole) that
    /// contain `pat`.
    #[must_use]
    pub fn log_lines(&self, pat: &str) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.procs {
            for f in &p.logs {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                out.extend(text.lines().filter(|l| l.contains(pat)).map(String::from));
            }
        }
        out
    }

    /// Every log (last 64 KiB of each), for failure messages.
    #[must_use]
    pub fn all_logs(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            for (g, f) in p.logs.iter().enumerate() {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                let mut from = text.len().saturating_sub(64 * 1024);
                while !text.is_char_boundary(from) {
                    from += 1;
                }
                let _ = write!(
                    s,
                    "---- {} generation {g} stderr ----\n{}",
                    p.label,
                    &text[from..]
                );
            }
        }
        s
    }

    /// The data directory of the cluster (logs live there).
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FoCluster {
    fn drop(&mut self) {
        for p in 0..self.procs.len() {
            self.kill9(p);
        }
        if std::thread::panicking() {
            eprintln!("==== corekv logs ====\n{}", self.all_logs());
        }
        if std::env::var_os("COREKV_KEEP_TEST_DIR").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("kept the cluster's directory {}", dir.keep().display());
        }
    }
}

/// The node views of the processes whose node addresses are `addrs`.
fn views_of(nodes: &[Node], addrs: &[Vec<SocketAddr>]) -> Vec<NodeView> {
    let mut out = Vec::new();
    for list in addrs {
        let Some(first) = list.first() else { continue };
        let Some(st) = try_status(*first, Duration::from_millis(500)) else {
            continue;
        };
        for (name, raw) in st {
            let Some(i) = nodes.iter().position(|n| n.name == name) else {
                continue;
            };
            let role = field(&raw, "role").unwrap_or("").to_string();
            let seq = if role == "primary" {
                num(&raw, "committed_seq")
            } else {
                num(&raw, "applied_seq")
            };
            out.push(NodeView {
                node: i,
                role,
                epoch: num(&raw, "epoch"),
                data_epoch: num(&raw, "data_epoch"),
                state: field(&raw, "state").unwrap_or("").to_string(),
                seq,
                discarded: num(&raw, "discarded_writes"),
                fenced: num(&raw, "fenced_writes"),
            });
        }
    }
    out
}

fn primaries_of(views: &[NodeView]) -> [Option<(usize, u64)>; SHARDS] {
    let mut out = [None; SHARDS];
    for v in views.iter().filter(|v| v.role == "primary") {
        // The node's shard is encoded in its index (3 nodes per shard).
        let s = v.node / 3;
        if out[s].is_none_or(|(_, e)| v.epoch > e) {
            out[s] = Some((v.node, v.epoch));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Load

/// What a write's answer says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200.
    Acked,
    /// 403 (replica) or 503 (not applied), or the connection failed.
    NotApplied,
    /// 500, 502, 504, a timeout or a connection lost after sending.
    Unknown,
}

/// One write attempt.
#[derive(Clone, Debug)]
pub struct Record {
    pub key: u32,
    pub seq: u32,
    pub shard: u8,
    /// 0: I/O error.
    pub status: u16,
    pub outcome: Outcome,
    /// Since the load's start.
    pub sent: Duration,
    pub done: Duration,
    pub target: SocketAddr,
    /// The body of an answer other than 200, 403 and 503.
    pub why: String,
}

/// One read attempt that did not answer 200 or 404.
#[derive(Clone, Debug)]
pub struct ReadFailure {
    pub status: u16,
    pub at: Duration,
    pub target: SocketAddr,
    pub what: String,
}

/// The key of number `k`.
#[must_use]
pub fn key_name(k: u32) -> String {
    format!("fo-{k}")
}

/// The value of write `seq` of key `k`.
#[must_use]
pub fn value_of(k: u32, seq: u32) -> String {
    format!("v{seq}-of-{k}")
}

/// The seq a value was written with.
#[must_use]
pub fn seq_of_value(v: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(v).ok()?;
    s.strip_prefix('v')?.split('-').next()?.parse().ok()
}

/// A small xorshift generator.
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The writers' belief about each shard's primary, shared.
pub struct View {
    primaries: RwLock<[Option<SocketAddr>; SHARDS]>,
    all: Vec<SocketAddr>,
}

/// First acknowledgement after a mark, per shard (see [`Load::mark`]).
struct Marks {
    since: [AtomicU64; SHARDS],
    first: [AtomicU64; SHARDS],
    /// Acknowledged writes so far.
    acks: AtomicU64,
}

/// How a [`Load`] runs.
#[derive(Clone, Copy, Debug)]
pub struct LoadCfg {
    pub writers: usize,
    /// Keys per writer (each writer owns its keys: per-key order is its
    /// order).
    pub keys_per_writer: u32,
    /// Pause between a writer's writes.
    pub pause: Duration,
    /// Reader threads (GET of random keys on random nodes).
    pub readers: usize,
    /// Key numbers start here (two loads on one cluster use distinct keys).
    pub key_base: u32,
}

impl Default for LoadCfg {
    fn default() -> Self {
        Self {
            writers: 16,
            keys_per_writer: 200,
            pause: Duration::ZERO,
            readers: 0,
            key_base: 0,
        }
    }
}

/// Writer and reader threads plus a monitor of the roles.
pub struct Load {
    pub t0: Instant,
    stop: Arc<AtomicBool>,
    view: Arc<View>,
    marks: Arc<Marks>,
    writers: Vec<JoinHandle<Vec<Record>>>,
    readers: Vec<JoinHandle<Vec<ReadFailure>>>,
    reads: Arc<AtomicU64>,
    monitor: Option<JoinHandle<()>>,
}

/// What a finished load recorded.
pub struct Recorded {
    pub records: Vec<Record>,
    pub read_failures: Vec<ReadFailure>,
    pub reads: u64,
}

impl Load {
    /// Starts the threads against the processes whose node addresses are
    /// `procs` (see [`FoCluster::proc_addrs`]).
    #[must_use]
    pub fn start(nodes: &[Node], procs: &[Vec<SocketAddr>], cfg: LoadCfg) -> Self {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let view = Arc::new(View {
            primaries: RwLock::new([None; SHARDS]),
            all: procs.iter().flatten().copied().collect(),
        });
        let marks = Arc::new(Marks {
            since: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            first: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
            acks: AtomicU64::new(0),
        });
        // The monitor: roles from /status every 50 ms.
        let monitor = {
            let (stop, view, nodes) = (stop.clone(), view.clone(), nodes.to_vec());
            let procs = procs.to_vec();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let p = primaries_of(&views_of(&nodes, &procs));
                    {
                        let mut w = view.primaries.write().expect("view");
                        for (s, v) in p.iter().enumerate() {
                            if let Some((n, _)) = v {
                                w[s] = Some(nodes[*n].addr);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let reads = Arc::new(AtomicU64::new(0));
        let writers = (0..cfg.writers)
            .map(|w| {
                let (stop, view, marks) = (stop.clone(), view.clone(), marks.clone());
                let first = cfg.key_base + w as u32 * cfg.keys_per_writer;
                let keys: Vec<u32> = (first..first + cfg.keys_per_writer).collect();
                std::thread::spawn(move || writer(w, &keys, cfg.pause, t0, &stop, &view, &marks))
            })
            .collect();
        let all_keys = cfg.key_base..cfg.key_base + cfg.writers as u32 * cfg.keys_per_writer;
        let readers = (0..cfg.readers)
            .map(|r| {
                let (stop, view, reads) = (stop.clone(), view.clone(), reads.clone());
                let keys = all_keys.clone();
                std::thread::spawn(move || reader(r, keys, t0, &stop, &view, &reads))
            })
            .collect();
        Self {
            t0,
            stop,
            view,
            marks,
            writers,
            readers,
            reads,
            monitor: Some(monitor),
        }
    }

    /// Time since the load started.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// From now on, remembers the first acknowledgement of a write to
    /// `shard` sent after this moment.
    pub fn mark(&self, shard: usize) -> Duration {
        let now = self.now();
        self.marks.first[shard].store(u64::MAX, Ordering::SeqCst);
        self.marks.since[shard].store(now.as_nanos() as u64, Ordering::SeqCst);
        now
    }

    /// When the first write to `shard` sent after its mark was
    /// acknowledged (since the load's start).
    #[must_use]
    pub fn first_ack_after_mark(&self, shard: usize) -> Option<Duration> {
        let v = self.marks.first[shard].load(Ordering::SeqCst);
        (v != u64::MAX).then(|| Duration::from_nanos(v))
    }

    /// Writes acknowledged so far.
    #[must_use]
    pub fn acks(&self) -> u64 {
        self.marks.acks.load(Ordering::Relaxed)
    }

    /// Stops every thread and returns what they recorded.
    ///
    /// # Panics
    /// When a thread panicked.
    #[must_use]
    pub fn finish(mut self) -> Recorded {
        self.stop.store(true, Ordering::SeqCst);
        let mut records = Vec::new();
        for h in self.writers.drain(..) {
            records.extend(h.join().expect("writer thread"));
        }
        let mut read_failures = Vec::new();
        for h in self.readers.drain(..) {
            let f = h.join().expect("reader thread");
            read_failures.extend(f);
        }
        if let Some(h) = self.monitor.take() {
            h.join().expect("monitor thread");
        }
        Recorded {
            records,
            read_failures,
            reads: self.reads.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A keep-alive connection per target.
struct Conns(HashMap<SocketAddr, Conn>);

impl Conns {
    /// Sends `GET target` to `addr`: the status, or `Err(sent)` (whether
    /// the request may have reached the server).
    fn get(&mut self, addr: SocketAddr, target: &str) -> Result<super::Resp, bool> {
        if let std::collections::hash_map::Entry::Vacant(v) = self.0.entry(addr) {
            let mut c = Conn::connect_timeout(addr, Duration::from_secs(1)).map_err(|_| false)?;
            let _ = c.set_read_timeout(Duration::from_secs(8));
            v.insert(c);
        }
        let r = self.0.get_mut(&addr).map(|c| c.get(target));
        if !matches!(&r, Some(Ok(resp)) if !resp.closes()) {
            self.0.remove(&addr);
        }
        r.and_then(Result::ok).ok_or(true)
    }
}

/// The address in a 403 answer: "... send writes to the primary at ADDR".
fn primary_in_403(body: &str) -> Option<SocketAddr> {
    body.split("primary at ").nth(1)?.trim().parse().ok()
}

fn writer(
    w: usize,
    keys: &[u32],
    pause: Duration,
    t0: Instant,
    stop: &AtomicBool,
    view: &View,
    marks: &Marks,
) -> Vec<Record> {
    let mut rng = Rng::new(w as u64 + 1);
    let mut seqs = vec![0u32; keys.len()];
    let mut conns = Conns(HashMap::new());
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let ki = rng.below(keys.len());
        let k = keys[ki];
        seqs[ki] += 1;
        let seq = seqs[ki];
        let key = key_name(k);
        let shard = super::shard_of(key.as_bytes(), SHARDS);
        let believed = *view.primaries.read().expect("view");
        // Mostly the key's primary; sometimes another primary (which
        // forwards to the owner); any node when none is known.
        let target = if rng.below(4) == 0 {
            believed[rng.below(SHARDS)]
        } else {
            believed[shard]
        }
        .unwrap_or_else(|| view.all[rng.below(view.all.len())]);
        let sent = t0.elapsed();
        let path = format!(
            "/set?key={}&value={}",
            enc(key.as_bytes()),
            value_of(k, seq)
        );
        let (status, outcome, body) = match conns.get(target, &path) {
            Ok(r) => {
                let outcome = match r.status {
                    200 => Outcome::Acked,
                    403 | 503 => Outcome::NotApplied,
                    _ => Outcome::Unknown,
                };
                (r.status, outcome, r.text())
            }
            Err(false) => (0, Outcome::NotApplied, String::new()),
            Err(true) => (0, Outcome::Unknown, String::new()),
        };
        let done = t0.elapsed();
        if outcome == Outcome::Acked {
            marks.acks.fetch_add(1, Ordering::Relaxed);
            let sent_ns = sent.as_nanos() as u64;
            if sent_ns > marks.since[shard].load(Ordering::SeqCst) {
                marks.first[shard].fetch_min(done.as_nanos() as u64, Ordering::SeqCst);
            }
        }
        match status {
            403 => {
                if let Some(p) = primary_in_403(&body) {
                    view.primaries.write().expect("view")[shard] = Some(p);
                } else {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            200 => {}
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
        let why = if matches!(status, 200 | 403 | 503) {
            String::new()
        } else {
            body
        };
        out.push(Record {
            key: k,
            seq,
            shard: shard as u8,
            status,
            outcome,
            sent,
            done,
            target,
            why,
        });
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    out
}

fn reader(
    r: usize,
    keys: std::ops::Range<u32>,
    t0: Instant,
    stop: &AtomicBool,
    view: &View,
    reads: &AtomicU64,
) -> Vec<ReadFailure> {
    let mut rng = Rng::new(1000 + r as u64);
    let mut conns = Conns(HashMap::new());
    let mut out = Vec::new();
    let n = (keys.end - keys.start) as usize;
    while !stop.load(Ordering::Relaxed) {
        let k = keys.start + rng.below(n) as u32;
        let target = view.all[rng.below(view.all.len())];
        let path = format!("/get?key={}", enc(key_name(k).as_bytes()));
        reads.fetch_add(1, Ordering::Relaxed);
        match conns.get(target, &path) {
            Ok(resp) if resp.status == 200 || resp.status == 404 => {}
            Ok(resp) => out.push(ReadFailure {
                status: resp.status,
                at: t0.elapsed(),
                target,
                what: resp.text(),
            }),
            Err(sent) => out.push(ReadFailure {
                status: 0,
                at: t0.elapsed(),
                target,
                what: format!("I/O error (sent: {sent})"),
            }),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

// ---------------------------------------------------------------------------
// Checking

/// One key whose last acknowledged write is not what the cluster holds.
#[derive(Clone, Debug)]
pub struct Lost {
    pub key: u32,
    pub shard: usize,
    pub acked_seq: u32,
    /// When that write was acknowledged.
    pub acked_done: Duration,
    pub acked_by: SocketAddr,
    /// The seq found (None: the key is missing).
    pub found: Option<u32>,
}

/// The final state against the records.
#[derive(Debug, Default)]
pub struct Verdict {
    pub keys: usize,
    pub acked: usize,
    pub unknown: usize,
    /// Keys whose last acknowledged value was replaced by an older one or
    /// is missing.
    pub lost: Vec<Lost>,
    /// Keys holding a value whose write was answered "not applied" (403,
    /// 503, connection refused) or never sent: must never happen.
    pub phantom: Vec<(u32, u32, u16)>,
    /// Status counts over every write.
    pub statuses: BTreeMap<u16, usize>,
}

impl Verdict {
    /// Lost keys per shard.
    #[must_use]
    pub fn lost_per_shard(&self) -> [u64; SHARDS] {
        let mut out = [0; SHARDS];
        for l in &self.lost {
            out[l.shard] += 1;
        }
        out
    }
}

/// Reads every written key from its shard's current primary and compares
/// with the records: the value must be the last acknowledged one or a
/// later write whose outcome is unknown.
///
/// # Panics
/// When a read fails.
#[must_use]
pub fn verify(c: &FoCluster, records: &[Record]) -> Verdict {
    let prim = c.primaries();
    let mut by_key: BTreeMap<u32, Vec<&Record>> = BTreeMap::new();
    let mut v = Verdict::default();
    for r in records {
        by_key.entry(r.key).or_default().push(r);
        *v.statuses.entry(r.status).or_default() += 1;
        match r.outcome {
            Outcome::Acked => v.acked += 1,
            Outcome::Unknown => v.unknown += 1,
            Outcome::NotApplied => {}
        }
    }
    v.keys = by_key.len();
    let mut conns = Conns(HashMap::new());
    for (k, recs) in &by_key {
        let shard = recs[0].shard as usize;
        let (node, _) = prim[shard].expect("a primary per shard");
        let target = c.addr(node);
        let path = format!("/get?key={}", enc(key_name(*k).as_bytes()));
        let r = conns
            .get(target, &path)
            .unwrap_or_else(|_| panic!("read of key {k} on {target} failed"));
        let found = match r.status {
            200 => Some(
                seq_of_value(&r.body)
                    .unwrap_or_else(|| panic!("key {k}: unexpected value {:?}", r.text())),
            ),
            404 => None,
            s => panic!("read of key {k} on {target}: {s} {}", r.text()),
        };
        let last_acked = recs
            .iter()
            .filter(|r| r.outcome == Outcome::Acked)
            .max_by_key(|r| r.seq);
        if let Some(f) = found {
            let rec = recs.iter().find(|r| r.seq == f);
            match rec {
                Some(r) if r.outcome != Outcome::NotApplied => {}
                other => v.phantom.push((*k, f, other.map_or(0, |r| r.status))),
            }
        }
        if let Some(a) = last_acked
            && found.is_none_or(|f| f < a.seq)
        {
            v.lost.push(Lost {
                key: *k,
                shard,
                acked_seq: a.seq,
                acked_done: a.done,
                acked_by: a.target,
                found,
            });
        }
    }
    v
}

/// p50 and max of `xs` (sorted in place).
#[must_use]
pub fn p50_max(xs: &mut [Duration]) -> (Duration, Duration) {
    xs.sort();
    (xs[xs.len() / 2], xs[xs.len() - 1])
}
