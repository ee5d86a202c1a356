//! Harness of the online resharding tests (`tests/reshard.rs`): one corekv
//! process running every node (no `--serve`), started from an OLD config
//! (2 shards, one replica each) with a NEW config next to it (the same 2
//! shards plus 2 appended ones); `corekv reshard` run as a child with a
//! deadline; `GET /admin/reshard` parsed with `serde_json`; a ledger of
//! every acknowledged write ([`Book`]); a load of 90 % GET / 10 % SET with
//! a number of connections per node that records every request ([`Load`]);
//! and the checks of what every node serves against the ledger.
//!
//! With `--etcd` (`tests/reshard_etcd.rs`: [`RsCluster::start_with_args`]
//! with [`etcd_args`]), the start and every restart also wait until each
//! shard that owns keys has a primary that takes writes
//! ([`RsCluster::wait_primaries`]: `/status` roles plus a probe write that
//! stores nothing); [`EtcdView`] reads the leader, epoch and candidate
//! keys from etcd's JSON gateway, [`ElectionWatch`] samples them during a
//! reshard; the new shards' nodes can be split over several joining
//! processes ([`RsCluster::start_joining_groups`]), each killed and
//! restarted on its own.
//!
//! Keys are `rs-{i}` for `i < nkeys`; the value of write `seq` of key `i` is
//! `rs-{i}#{seq}`, unique per write. Each key has one writer at a time (the
//! preload, then one load connection, then the test thread), so "the last
//! acknowledged value" is well defined. Keys `rs-absent-{n}` are never
//! written: a GET of one must answer 404.
//!
//! Depends on the harness in `mod.rs` (ports, spawning, HTTP client),
//! `serde_json`, `base64` and `libc` (via `spawn_corekv`). Invariants:
//! every wait has a deadline; only the processes this harness spawned are
//! killed (by their own `Child`), in `Drop` too.

#![allow(
    clippy::cast_possible_truncation, // milliseconds and microseconds of a test fit in u32; key numbers fit in u32
)]

use super::failover::Rng;
use super::{
    Conn, POLL, Resp, START_DEADLINE, ShardAddrs, config_text, enc, fnv1_64, free_ports, health_ok,
    request_bytes, spawn_corekv, wait_until,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shards before the reshard.
pub const OLD_SHARDS: usize = 2;
/// Shards after it.
pub const NEW_SHARDS: usize = 4;
/// The start of a [`RsCluster::reshard_status_at`] error when
/// `/admin/reshard` answered 200 with another shape than the contract's.
pub const BAD_SHAPE: &str = "/admin/reshard answered another shape: ";
/// "Never acknowledged" in [`Book`].
const NONE: u32 = u32::MAX;

// ---------------------------------------------------------------------------
// Topology

/// A node of the NEW layout (the OLD layout's nodes are those of shards
/// below [`OLD_SHARDS`]).
#[derive(Clone, Debug)]
pub struct Node {
    /// e.g. `shard3/primary`.
    pub name: String,
    pub shard: usize,
    pub primary: bool,
    pub addr: SocketAddr,
}

fn nodes_of(shards: &[ShardAddrs]) -> Vec<Node> {
    let mut v: Vec<Node> = shards
        .iter()
        .map(|s| Node {
            name: s.primary_name(),
            shard: s.idx,
            primary: true,
            addr: s.primary,
        })
        .collect();
    v.extend(shards.iter().map(|s| Node {
        name: s.replica_name(),
        shard: s.idx,
        primary: false,
        addr: s.replica,
    }));
    v
}

/// Shards `from..to` on fresh loopback ports (`shard{idx+1}`, one replica).
#[must_use]
pub fn fresh_shards(from: usize, to: usize) -> Vec<ShardAddrs> {
    let n = to - from;
    let ports = free_ports(2 * n);
    (0..n)
        .map(|k| ShardAddrs {
            idx: from + k,
            name: format!("shard{}", from + k + 1),
            primary: SocketAddr::from(([127, 0, 0, 1], ports[k])),
            replica: SocketAddr::from(([127, 0, 0, 1], ports[n + k])),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// /admin/reshard

/// One pair of `GET /admin/reshard`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub shard: u64,
    pub to: u64,
    pub phase: String,
    /// `None` when the node does not run in the answering process (or has
    /// not started yet).
    pub source_seq: Option<u64>,
    pub target_seq: Option<u64>,
    /// Keys the purge deleted so far, on both sides.
    pub purged_keys: u64,
    pub source_purged: bool,
    pub target_purged: bool,
}

/// `GET /admin/reshard`, parsed.
#[derive(Clone, Debug)]
pub struct RsStatus {
    pub state: String,
    pub shards: u64,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub pairs: Vec<Pair>,
    /// The body as it came.
    pub raw: String,
}

impl RsStatus {
    /// Parses the JSON body.
    ///
    /// # Errors
    /// Not JSON, or a field of the contract missing or of another type.
    pub fn parse(body: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body:?}"))?;
        let bad = |what: &str| format!("/admin/reshard: {what} in {body}");
        let state = v["state"]
            .as_str()
            .ok_or_else(|| bad("no string \"state\""))?
            .to_string();
        let shards = v["shards"]
            .as_u64()
            .ok_or_else(|| bad("no integer \"shards\""))?;
        let pairs_v = v["pairs"]
            .as_array()
            .ok_or_else(|| bad("no array \"pairs\""))?;
        let mut pairs = Vec::new();
        for p in pairs_v {
            let num = |f: &str| {
                p[f].as_u64()
                    .ok_or_else(|| bad(&format!("pair without integer {f:?}")))
            };
            pairs.push(Pair {
                shard: num("shard")?,
                to: num("to")?,
                phase: p["phase"]
                    .as_str()
                    .ok_or_else(|| bad("pair without string \"phase\""))?
                    .to_string(),
                source_seq: p["source_seq"].as_u64(),
                target_seq: p["target_seq"].as_u64(),
                purged_keys: num("purged_keys")?,
                source_purged: p["source_purged"]
                    .as_bool()
                    .ok_or_else(|| bad("pair without bool \"source_purged\""))?,
                target_purged: p["target_purged"]
                    .as_bool()
                    .ok_or_else(|| bad("pair without bool \"target_purged\""))?,
            });
        }
        Ok(Self {
            state,
            shards,
            from: v["from"].as_u64(),
            to: v["to"].as_u64(),
            pairs,
            raw: body.to_string(),
        })
    }

    /// The pair whose source is old shard `s`.
    #[must_use]
    pub fn pair(&self, s: usize) -> Option<&Pair> {
        self.pairs.iter().find(|p| p.shard == s as u64)
    }

    /// True when pair `p` has cut over (its keys are served by the new
    /// shard from now on).
    #[must_use]
    pub fn is_cut_over(p: &Pair) -> bool {
        p.phase == "split" || p.phase == "purged"
    }

    /// The shard that must answer for a key of hash `h` in this state:
    /// the new shard for a pair that has cut over, else the old one.
    #[must_use]
    pub fn owner(&self, h: u64) -> usize {
        if self.state != "resharding" || self.pairs.is_empty() {
            return (h % self.shards.max(1)) as usize;
        }
        let from = self.from.unwrap_or(OLD_SHARDS as u64).max(1);
        let to = self.to.unwrap_or(2 * from).max(1);
        let s = (h % from) as usize;
        match self.pair(s) {
            Some(p) if Self::is_cut_over(p) => (h % to) as usize,
            _ => s,
        }
    }

    /// `state phases` in one short line, e.g.
    /// `resharding/2 [0->2 copying 10/7 left 0, ...]`.
    #[must_use]
    pub fn brief(&self) -> String {
        let mut s = format!("{}/{}", self.state, self.shards);
        if !self.pairs.is_empty() {
            s.push_str(" [");
            for (i, p) in self.pairs.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                let _ = write!(
                    s,
                    "{}->{} {} seq {:?}/{:?} purged {}",
                    p.shard, p.to, p.phase, p.source_seq, p.target_seq, p.purged_keys
                );
            }
            s.push(']');
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Keys, values and the ledger of acknowledged writes

/// The key of number `i`.
#[must_use]
pub fn key_name(i: u32) -> String {
    format!("rs-{i}")
}

/// A key that is never written.
#[must_use]
pub fn absent_key(n: u64) -> String {
    format!("rs-absent-{n}")
}

/// The value of write `seq` of key `i`.
#[must_use]
pub fn value_of(i: u32, seq: u32) -> String {
    format!("rs-{i}#{seq}")
}

/// `(key number, seq)` of a value written by [`value_of`].
#[must_use]
pub fn parse_value(v: &[u8]) -> Option<(u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (k, seq) = s.strip_prefix("rs-")?.split_once('#')?;
    Some((k.parse().ok()?, seq.parse().ok()?))
}

/// What was written: per key the last acknowledged seq, the next seq to
/// use, and the writes whose outcome is unknown (I/O error, 5xx).
pub struct Book {
    pub nkeys: u32,
    acked: Vec<AtomicU32>,
    next: Vec<AtomicU32>,
    unknown: Mutex<HashSet<(u32, u32)>>,
}

impl Book {
    #[must_use]
    pub fn new(nkeys: u32) -> Arc<Self> {
        Arc::new(Self {
            nkeys,
            acked: (0..nkeys).map(|_| AtomicU32::new(NONE)).collect(),
            next: (0..nkeys).map(|_| AtomicU32::new(0)).collect(),
            unknown: Mutex::new(HashSet::new()),
        })
    }

    /// The last acknowledged seq of key `i`.
    #[must_use]
    pub fn acked(&self, i: u32) -> Option<u32> {
        let v = self.acked[i as usize].load(Ordering::SeqCst);
        (v != NONE).then_some(v)
    }

    /// A new seq for a write of key `i`.
    pub fn next_seq(&self, i: u32) -> u32 {
        self.next[i as usize].fetch_add(1, Ordering::SeqCst)
    }

    /// Write `seq` of key `i` was answered 200.
    pub fn ack(&self, i: u32, seq: u32) {
        // One writer per key at a time, its writes in order: the last
        // acknowledgement is the newest.
        self.acked[i as usize].store(seq, Ordering::SeqCst);
    }

    /// Write `seq` of key `i` may or may not have been applied.
    pub fn unknown(&self, i: u32, seq: u32) {
        self.unknown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((i, seq));
    }

    /// Keys with at least one acknowledged write.
    #[must_use]
    pub fn written(&self) -> u64 {
        (0..self.nkeys).filter(|&i| self.acked(i).is_some()).count() as u64
    }

    /// Whether a read of key `i` that found `found` (None: 404) agrees
    /// with the ledger once no write of it is in flight: the last
    /// acknowledged value, or a later write whose outcome is unknown.
    #[must_use]
    pub fn accepts(&self, i: u32, found: Option<u32>) -> bool {
        match (self.acked(i), found) {
            (None, None) => true,
            (Some(a), Some(f)) if f == a => true,
            (a, Some(f)) if a.is_none_or(|a| f > a) => self
                .unknown
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&(i, f)),
            _ => false,
        }
    }
}

/// `Authorization` header for `token`.
#[must_use]
pub fn auth(token: Option<&str>) -> Vec<(&'static str, String)> {
    token
        .map(|t| vec![("Authorization", format!("Bearer {t}"))])
        .unwrap_or_default()
}

/// Sends `targets` as pipelined GETs (batches of 64) on one connection
/// and returns the answers in order.
///
/// # Errors
/// Connect or I/O failure.
pub fn get_many(
    addr: SocketAddr,
    targets: &[String],
    token: Option<&str>,
) -> std::io::Result<Vec<Resp>> {
    let hdrs = auth(token);
    let hdrs: Vec<(&str, &str)> = hdrs.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut c = Conn::connect(addr)?;
    let mut out = Vec::with_capacity(targets.len());
    for chunk in targets.chunks(64) {
        let mut bytes = Vec::new();
        for t in chunk {
            bytes.extend(request_bytes("GET", t, &hdrs, b""));
        }
        c.send_raw(&bytes)?;
        for _ in chunk {
            let r = c.read_response()?;
            let closes = r.closes();
            out.push(r);
            if closes && out.len() < targets.len() {
                // The server ends the connection: start over from there.
                let rest = get_many(addr, &targets[out.len()..], token)?;
                out.extend(rest);
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Writes a new value of every key of `keys` through `via` (any node that
/// takes writes: it forwards to the owner), recording in `book`. Returns
/// the failures (`key: status body`).
#[must_use]
pub fn set_keys(via: SocketAddr, book: &Book, keys: &[u32], token: Option<&str>) -> Vec<String> {
    let targets: Vec<(u32, u32, String)> = keys
        .iter()
        .map(|&i| {
            let seq = book.next_seq(i);
            let t = format!(
                "/set?key={}&value={}",
                enc(key_name(i).as_bytes()),
                enc(value_of(i, seq).as_bytes())
            );
            (i, seq, t)
        })
        .collect();
    let list: Vec<String> = targets.iter().map(|(_, _, t)| t.clone()).collect();
    let mut failures = Vec::new();
    // A SET answers GET too: pipelined like reads.
    match get_many(via, &list, token) {
        Ok(resps) => {
            for ((i, seq, _), r) in targets.iter().zip(&resps) {
                if r.status == 200 {
                    book.ack(*i, *seq);
                } else {
                    if r.status >= 500 {
                        book.unknown(*i, *seq);
                    }
                    failures.push(format!("{}: {} {}", key_name(*i), r.status, r.text()));
                }
            }
            for (i, seq, _) in &targets[resps.len()..] {
                book.unknown(*i, *seq);
                failures.push(format!("{}: no answer", key_name(*i)));
            }
        }
        Err(e) => {
            for (i, seq, _) in &targets {
                book.unknown(*i, *seq);
            }
            failures.push(format!("SETs via {via}: {e}"));
        }
    }
    failures
}

/// What a read of every key from one node found wrong.
#[derive(Debug, Default)]
pub struct ReadCheck {
    /// One line per problem.
    pub problems: Vec<String>,
    /// Keys read.
    pub reads: usize,
}

/// Reads every key of `book` from `node` and checks the answer: 200 with
/// the value [`Book::accepts`], `X-Shard` == `owner(hash)`. Returns the
/// key numbers that failed, with a line each.
fn check_node(
    node: &Node,
    book: &Book,
    keys: &[u32],
    owner: &dyn Fn(u64) -> usize,
    token: Option<&str>,
) -> Vec<(u32, String)> {
    let targets: Vec<String> = keys
        .iter()
        .map(|&i| format!("/get?key={}", enc(key_name(i).as_bytes())))
        .collect();
    let resps = match get_many(node.addr, &targets, token) {
        Ok(r) => r,
        Err(e) => {
            return keys
                .iter()
                .map(|&i| (i, format!("{} ({}): I/O error {e}", node.name, node.addr)))
                .collect();
        }
    };
    let mut bad = Vec::new();
    for (&i, r) in keys.iter().zip(&resps) {
        let key = key_name(i);
        let want_shard = owner(fnv1_64(key.as_bytes()));
        let found = match r.status {
            200 => match parse_value(&r.body) {
                Some((k, seq)) if k == i => Some(seq),
                _ => {
                    bad.push((
                        i,
                        format!("{key} on {}: foreign value {:?}", node.name, r.text()),
                    ));
                    continue;
                }
            },
            404 => None,
            s => {
                bad.push((
                    i,
                    format!("{key} on {}: status {s} {:?}", node.name, r.text()),
                ));
                continue;
            }
        };
        if !book.accepts(i, found) {
            bad.push((
                i,
                format!(
                    "{key} on {}: found {found:?}, last acknowledged {:?} (X-Served-By {:?})",
                    node.name,
                    book.acked(i),
                    r.header("x-served-by")
                ),
            ));
            continue;
        }
        let shard = r.header("x-shard").and_then(|s| s.parse::<usize>().ok());
        if shard != Some(want_shard) {
            bad.push((
                i,
                format!(
                    "{key} on {}: X-Shard {:?}, expected {want_shard} (X-Served-By {:?})",
                    node.name,
                    r.header("x-shard"),
                    r.header("x-served-by")
                ),
            ));
        }
    }
    bad
}

/// Reads every key of `book` from every node of `nodes` and checks value
/// and `X-Shard` (see [`Book::accepts`]; `owner` maps a key's hash to the
/// shard that must answer). Primaries must be right at once; a replica
/// may lag, so its failing keys are read again until `replica_deadline`.
///
/// # Errors
/// Every problem left, one a line (at most 30 shown) with counts.
pub fn check_reads(
    nodes: &[Node],
    book: &Book,
    owner: &dyn Fn(u64) -> usize,
    token: Option<&str>,
    replica_deadline: Duration,
) -> Result<ReadCheck, String> {
    let all: Vec<u32> = (0..book.nkeys)
        .filter(|&i| book.acked(i).is_some())
        .collect();
    let mut problems = Vec::new();
    let mut reads = 0;
    for node in nodes {
        reads += all.len();
        let mut bad = check_node(node, book, &all, owner, token);
        if !node.primary {
            let end = Instant::now() + replica_deadline;
            while !bad.is_empty() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
                let keys: Vec<u32> = bad.iter().map(|(i, _)| *i).collect();
                reads += keys.len();
                bad = check_node(node, book, &keys, owner, token);
            }
        }
        problems.extend(bad.into_iter().map(|(_, l)| l));
    }
    if problems.is_empty() {
        Ok(ReadCheck { problems, reads })
    } else {
        let n = problems.len();
        let shown: Vec<String> = problems.into_iter().take(30).collect();
        Err(format!(
            "{n} bad reads of {} keys on {} nodes:\n  {}",
            all.len(),
            nodes.len(),
            shown.join("\n  ")
        ))
    }
}

// ---------------------------------------------------------------------------
// The cluster: one process, all nodes

/// The outcome of a `corekv reshard` run.
#[derive(Debug)]
pub struct RunOutcome {
    /// None: still running at the deadline (then killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub args: Vec<String>,
}

impl RunOutcome {
    #[must_use]
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "corekv {} -> {} after {:.1?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args.join(" "),
            self.status.map_or_else(
                || "still running at the deadline (killed)".to_string(),
                |s| s.to_string()
            ),
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

/// A `corekv reshard` child.
pub struct ReshardCmd {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
    pub args: Vec<String>,
}

impl ReshardCmd {
    fn read(&self, elapsed: Duration, status: Option<ExitStatus>) -> RunOutcome {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        RunOutcome {
            status,
            stdout: read(&self.out),
            stderr: read(&self.err),
            elapsed,
            args: self.args.clone(),
        }
    }

    /// Its exit status if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for it to exit within `deadline` (from now); kills it after.
    pub fn wait(mut self, deadline: Duration) -> RunOutcome {
        let mut status = None;
        wait_until(deadline, || {
            status = self.try_status();
            status.is_some()
        });
        if status.is_none() {
            self.kill();
        }
        self.child = None;
        self.read(self.started.elapsed(), status)
    }

    /// kill -9 and reap; returns what it printed.
    pub fn kill(&mut self) -> RunOutcome {
        let mut status = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            status = c.wait().ok();
        }
        self.read(self.started.elapsed(), status)
    }

    /// What it printed so far.
    #[must_use]
    pub fn output(&self) -> RunOutcome {
        self.read(self.started.elapsed(), None)
    }
}

impl Drop for ReshardCmd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One corekv process serving every node of the layout, started from the
/// OLD config; the NEW config written next to it. `Drop` kills and reaps
/// exactly the process it started (and prints every log on a panic).
pub struct RsCluster {
    pub dir: tempfile::TempDir,
    pub old_config: PathBuf,
    pub new_config: PathBuf,
    /// The OLD layout (shards 0..2).
    pub old: Vec<ShardAddrs>,
    /// The NEW layout (shards 0..4, the first two equal to `old`).
    pub new: Vec<ShardAddrs>,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    child: Option<Child>,
    /// stdout/stderr of every generation of the server.
    logs: Vec<(PathBuf, PathBuf)>,
    /// Two processes ("hosts"): the first runs the OLD nodes
    /// (`--serve`), the second, started by [`RsCluster::start_joining`],
    /// the new shards' nodes (`--config NEW --serve ... --joining`); or
    /// several joining processes ([`RsCluster::start_joining_groups`]).
    two_hosts: bool,
    /// The joining processes (none until started).
    joining: Vec<JoinProc>,
    /// Extra server options (e.g. `--etcd URL ...`), given to every
    /// process on every (re)start.
    extra: Vec<String>,
}

/// One joining process: the new shards' nodes it serves.
struct JoinProc {
    /// Log file prefix: `joining` (the only one) or `joining-{g}`.
    label: String,
    /// Names of the nodes it serves (`--serve` their addresses).
    names: Vec<String>,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl RsCluster {
    /// Starts the process (with `--token` when given) and waits until the
    /// OLD layout's nodes answer `/health`.
    ///
    /// # Panics
    /// When it does not start (with its logs).
    #[must_use]
    pub fn start(token: Option<&str>) -> Self {
        Self::start_with(token, false)
    }

    /// [`RsCluster::start`] with the OLD nodes in a process of their own
    /// (`--serve`); the new shards' nodes come with
    /// [`RsCluster::start_joining`].
    #[must_use]
    pub fn start_two_hosts(token: Option<&str>) -> Self {
        Self::start_with(token, true)
    }

    fn start_with(token: Option<&str>, two_hosts: bool) -> Self {
        Self::start_with_args(token, two_hosts, &[])
    }

    /// [`RsCluster::start`] (`two_hosts` false) or
    /// [`RsCluster::start_two_hosts`] (true) with `extra` server options,
    /// given to every process of the cluster (joining ones too) on every
    /// start and restart, e.g. [`etcd_args`]. With `--etcd` the start
    /// waits until each shard has a primary that takes writes
    /// ([`RsCluster::wait_primaries`]).
    ///
    /// # Panics
    /// When it does not start (with its logs).
    #[must_use]
    pub fn start_with_args(token: Option<&str>, two_hosts: bool, extra: &[String]) -> Self {
        let mut last = String::new();
        for _attempt in 0..4 {
            let dir = tempfile::tempdir().expect("temp dir");
            let old = fresh_shards(0, OLD_SHARDS);
            let mut new = old.clone();
            new.extend(fresh_shards(OLD_SHARDS, NEW_SHARDS));
            let old_config = dir.path().join("sharding.toml");
            let new_config = dir.path().join("sharding-new.toml");
            std::fs::write(&old_config, config_text(&old)).expect("write old config");
            std::fs::write(&new_config, config_text(&new)).expect("write new config");
            let data_dir = dir.path().join("data");
            let mut c = Self {
                dir,
                old_config,
                new_config,
                old,
                new,
                data_dir,
                token: token.map(String::from),
                child: None,
                logs: Vec::new(),
                two_hosts,
                joining: Vec::new(),
                extra: extra.to_vec(),
            };
            match c.launch() {
                Ok(()) => return c,
                Err(e) => {
                    let logs = c.server_logs();
                    assert!(
                        logs.contains("Address already in use"),
                        "corekv did not start: {e}\n{logs}"
                    );
                    last = logs;
                }
            }
        }
        panic!("corekv could not bind its ports after 4 attempts:\n{last}");
    }

    fn server_args(&self) -> Vec<String> {
        let mut args = vec![
            "--config".to_string(),
            self.old_config.display().to_string(),
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
        ];
        if let Some(t) = &self.token {
            args.push("--token".into());
            args.push(t.clone());
        }
        if self.two_hosts {
            let serve: Vec<String> = self
                .old_nodes()
                .iter()
                .map(|n| n.addr.to_string())
                .collect();
            args.push("--serve".into());
            args.push(serve.join(","));
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// The second "host": the new shards' nodes in their own process
    /// (`--config NEW --serve <their addresses> --joining`, its own data
    /// directory `data-joining`); waits until they answer `/health` (with
    /// `--etcd`, also until every shard that a running process serves has
    /// a primary that takes writes). Also restarts it (or every joining
    /// process of [`RsCluster::start_joining_groups`] that is down) after
    /// [`RsCluster::kill9_joining`].
    ///
    /// # Panics
    /// When it does not start.
    pub fn start_joining(&mut self) {
        if self.joining.is_empty() {
            let names = self.added_nodes().into_iter().map(|n| n.name).collect();
            self.joining.push(JoinProc {
                label: "joining".to_string(),
                names,
                data_dir: self.dir.path().join("data-joining"),
                child: None,
            });
        }
        for g in 0..self.joining.len() {
            if self.joining[g].child.is_none() {
                self.launch_joining(g);
            }
        }
    }

    /// The new shards' nodes in several joining processes, one per entry
    /// of `groups` (node names, e.g. `["shard3/primary",
    /// "shard4/replica"]`), process `g` with data directory
    /// `data-joining-{g}` and logs `joining-{g}-*`; started in order, each
    /// waited for as in [`RsCluster::start_joining`]. Together the groups
    /// must name every added node once.
    ///
    /// # Panics
    /// Joining processes already configured, a name that is not an added
    /// node, a node named twice or left out, or a process that does not
    /// start.
    pub fn start_joining_groups(&mut self, groups: &[&[&str]]) {
        assert!(
            self.joining.is_empty(),
            "the joining processes are configured already"
        );
        let added: Vec<String> = self.added_nodes().into_iter().map(|n| n.name).collect();
        let mut named: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
        named.sort_unstable();
        let mut want: Vec<&str> = added.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(
            named, want,
            "the joining groups must name every added node once"
        );
        for (g, names) in groups.iter().enumerate() {
            self.joining.push(JoinProc {
                label: format!("joining-{g}"),
                names: names.iter().map(|n| (*n).to_string()).collect(),
                data_dir: self.dir.path().join(format!("data-joining-{g}")),
                child: None,
            });
        }
        for g in 0..self.joining.len() {
            self.launch_joining(g);
        }
    }

    /// Starts joining process `g` (see [`RsCluster::start_joining`]);
    /// retries while a port of a killed generation is still taken.
    fn launch_joining(&mut self, g: usize) {
        let nodes: Vec<Node> = self
            .new_nodes()
            .into_iter()
            .filter(|n| self.joining[g].names.contains(&n.name))
            .collect();
        let serve: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        let mut args = vec![
            "--config".to_string(),
            self.new_config.display().to_string(),
            "--data-dir".to_string(),
            self.joining[g].data_dir.display().to_string(),
            "--serve".to_string(),
            serve.join(","),
            "--joining".to_string(),
        ];
        if let Some(t) = &self.token {
            args.push("--token".into());
            args.push(t.clone());
        }
        args.extend(self.extra.iter().cloned());
        let label = self.joining[g].label.clone();
        let end = Instant::now() + START_DEADLINE;
        loop {
            let (child, out, err) = spawn_corekv(self.dir.path(), &label, &args)
                .unwrap_or_else(|e| panic!("spawn the joining process {label}: {e}"));
            self.joining[g].child = Some(child);
            self.logs.push((out, err.clone()));
            let mut pending: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
            let joining = &mut self.joining[g].child;
            let mut exited = false;
            let ok = wait_until(START_DEADLINE, || {
                if let Some(Ok(Some(_))) = joining.as_mut().map(Child::try_wait) {
                    exited = true;
                    return true;
                }
                pending.retain(|a| !health_ok(*a));
                pending.is_empty()
            });
            if ok && !exited {
                if self.is_etcd() {
                    let ready = self.wait_primaries_of(START_DEADLINE, true);
                    if let Err(e) = ready {
                        panic!(
                            "{label} started, but not every served shard has a primary: {e}\n{}",
                            self.server_logs()
                        );
                    }
                }
                return;
            }
            self.kill9_joining_group(g);
            let in_use =
                std::fs::read_to_string(&err).is_ok_and(|s| s.contains("Address already in use"));
            assert!(
                in_use && Instant::now() < end,
                "the joining process {label} did not start\n{}",
                self.server_logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kill -9 of every joining process, reaped.
    pub fn kill9_joining(&mut self) {
        for g in 0..self.joining.len() {
            self.kill9_joining_group(g);
        }
    }

    /// kill -9 of joining process `g` (of [`RsCluster::start_joining_groups`];
    /// 0 is the only one of [`RsCluster::start_joining`]), reaped.
    pub fn kill9_joining_group(&mut self, g: usize) {
        if let Some(mut c) = self.joining.get_mut(g).and_then(|j| j.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts joining process `g` again after
    /// [`RsCluster::kill9_joining_group`] (same command line and data).
    ///
    /// # Panics
    /// When it is running, or does not start.
    pub fn restart_joining_group(&mut self, g: usize) {
        assert!(
            self.joining[g].child.is_none(),
            "joining process {g} is still running"
        );
        self.launch_joining(g);
    }

    /// Spawns the server with the same command line as always and waits
    /// until every OLD node answers `/health`; with `--etcd`, also until
    /// every shard that a running process serves has a primary that takes
    /// writes.
    fn launch(&mut self) -> Result<(), String> {
        let args = self.server_args();
        let (child, out, err) = spawn_corekv(self.dir.path(), "server", &args)
            .map_err(|e| format!("cannot spawn corekv: {e}"))?;
        self.child = Some(child);
        self.logs.push((out, err));
        let mut pending: Vec<SocketAddr> = self.old_nodes().iter().map(|n| n.addr).collect();
        let mut exited = None;
        let child = &mut self.child;
        let ok = wait_until(START_DEADLINE, || {
            if let Some(Ok(Some(st))) = child.as_mut().map(Child::try_wait) {
                exited = Some(st);
                return true;
            }
            pending.retain(|a| !health_ok(*a));
            pending.is_empty()
        });
        if let Some(st) = exited {
            self.child = None;
            return Err(format!("the server exited during start-up with {st}"));
        }
        if !ok {
            return Err(format!("not ready; still waiting for {pending:?}"));
        }
        if self.is_etcd() {
            self.wait_primaries_of(START_DEADLINE, true)
                .map_err(|e| format!("up, but not every shard has a primary: {e}"))?;
        }
        Ok(())
    }

    /// The server's pid while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9 of the server, reaped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9 (if running), then the same command line again (the OLD
    /// config, the same data dir); retries while a port of the killed
    /// process is still taken.
    ///
    /// # Panics
    /// When it does not start within the deadline.
    pub fn restart(&mut self) {
        self.kill9();
        let end = Instant::now() + START_DEADLINE;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(e) => {
                    let in_use = self
                        .logs
                        .last()
                        .and_then(|(_, err)| std::fs::read_to_string(err).ok())
                        .is_some_and(|s| s.contains("Address already in use"));
                    self.kill9();
                    assert!(
                        in_use && Instant::now() < end,
                        "restart failed: {e}\n{}",
                        self.server_logs()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// kill -9 of the joining process, then its record of every split is
    /// rewritten as "not split" (what a process down during the
    /// announcements would have); restart it with
    /// [`RsCluster::start_joining`].
    ///
    /// # Panics
    /// When its `layout.json` cannot be read or written.
    pub fn kill9_joining_forgetting_splits(&mut self) {
        self.kill9_joining();
        let stored = self.dir.path().join("data-joining").join("layout.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&stored).expect("joining layout.json"))
                .expect("layout.json is JSON");
        v["split"] = serde_json::json!(vec![false; OLD_SHARDS]);
        std::fs::write(&stored, v.to_string()).expect("rewrite layout.json");
    }

    /// Nodes of the OLD layout.
    #[must_use]
    pub fn old_nodes(&self) -> Vec<Node> {
        nodes_of(&self.old)
    }

    /// Nodes of the NEW layout (the OLD ones included).
    #[must_use]
    pub fn new_nodes(&self) -> Vec<Node> {
        nodes_of(&self.new)
    }

    /// Nodes of the NEW layout that the OLD one does not have.
    #[must_use]
    pub fn added_nodes(&self) -> Vec<Node> {
        nodes_of(&self.new[OLD_SHARDS..])
    }

    /// Primary of OLD shard `s`.
    #[must_use]
    pub fn primary(&self, s: usize) -> SocketAddr {
        self.new[s].primary
    }

    /// Writes `name` in the cluster's directory with `shards`; its path.
    #[must_use]
    pub fn write_config(&self, name: &str, shards: &[ShardAddrs]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, config_text(shards)).expect("write config");
        p
    }

    /// `reshard --config NEW [--token T]` followed by `extra`.
    #[must_use]
    pub fn reshard_args(&self, config: &Path, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "reshard".to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ];
        if let Some(t) = &self.token {
            args.push("--token".into());
            args.push(t.clone());
        }
        args.extend(extra.iter().map(|s| (*s).to_string()));
        args
    }

    /// Starts `corekv` with `args` (e.g. from [`RsCluster::reshard_args`])
    /// in the background.
    ///
    /// # Panics
    /// When it cannot be spawned.
    #[must_use]
    pub fn spawn_cmd(&self, args: Vec<String>) -> ReshardCmd {
        let (child, out, err) =
            spawn_corekv(self.dir.path(), "reshard", &args).expect("spawn corekv reshard");
        ReshardCmd {
            child: Some(child),
            out,
            err,
            started: Instant::now(),
            args,
        }
    }

    /// `corekv reshard --config NEW.toml` + `extra`, in the background.
    #[must_use]
    pub fn spawn_reshard(&self, extra: &[&str]) -> ReshardCmd {
        self.spawn_cmd(self.reshard_args(&self.new_config, extra))
    }

    /// `corekv reshard --config NEW.toml` + `extra` to its exit (killed
    /// after `deadline`).
    #[must_use]
    pub fn run_reshard(&self, extra: &[&str], deadline: Duration) -> RunOutcome {
        let out = self.spawn_reshard(extra).wait(deadline);
        eprintln!("{out}");
        out
    }

    /// `GET /admin/reshard` on `addr`.
    ///
    /// # Errors
    /// I/O failure, a status other than 200 or a body of another shape.
    pub fn reshard_status_at(&self, addr: SocketAddr) -> Result<RsStatus, String> {
        let hdrs = auth(self.token.as_deref());
        let hdrs: Vec<(&str, &str)> = hdrs.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut c = Conn::connect_timeout(addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let r = c
            .request("GET", "/admin/reshard", &hdrs, b"")
            .map_err(|e| format!("GET /admin/reshard on {addr}: {e}"))?;
        if r.status != 200 {
            return Err(format!("GET /admin/reshard on {addr}: {r}"));
        }
        RsStatus::parse(&r.text()).map_err(|e| format!("{BAD_SHAPE}{e}"))
    }

    /// `GET /admin/reshard` on the primary of shard 0.
    ///
    /// # Panics
    /// When it fails.
    #[must_use]
    pub fn reshard_status(&self) -> RsStatus {
        self.reshard_status_at(self.primary(0))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Polls `GET /admin/reshard` (every [`POLL`]) until `pred` holds;
    /// returns that status. `cmd`, when given, is the reshard command
    /// running meanwhile: its exit ends the wait too.
    ///
    /// # Errors
    /// The deadline passed, or the command exited first; with every
    /// distinct status seen.
    pub fn wait_reshard(
        &self,
        deadline: Duration,
        mut cmd: Option<&mut ReshardCmd>,
        mut pred: impl FnMut(&RsStatus) -> bool,
    ) -> Result<RsStatus, String> {
        let end = Instant::now() + deadline;
        let t0 = Instant::now();
        let mut seen: Vec<String> = Vec::new();
        let mut last_phases = String::new();
        loop {
            match self.reshard_status_at(self.primary(0)) {
                Ok(st) => {
                    // Seqs move all the time: log when a phase changes.
                    let phases = format!(
                        "{}/{} {:?}",
                        st.state,
                        st.shards,
                        st.pairs
                            .iter()
                            .map(|p| p.phase.as_str())
                            .collect::<Vec<_>>()
                    );
                    if last_phases != phases {
                        eprintln!("[{:>6.2?}] /admin/reshard: {}", t0.elapsed(), st.brief());
                        seen.push(st.brief());
                        last_phases = phases;
                    }
                    if pred(&st) {
                        return Ok(st);
                    }
                }
                Err(e) if e.starts_with(BAD_SHAPE) => return Err(e),
                Err(e) => {
                    if seen.last() != Some(&e) {
                        seen.push(e.clone());
                    }
                }
            }
            if let Some(c) = cmd.as_deref_mut()
                && let Some(st) = c.try_status()
            {
                // One last look: the wanted state may be the final one.
                if let Ok(s) = self.reshard_status_at(self.primary(0))
                    && pred(&s)
                {
                    return Ok(s);
                }
                return Err(format!(
                    "the reshard command exited ({st}) before the wanted state; seen:\n  {}\n{}",
                    seen.join("\n  "),
                    c.output()
                ));
            }
            if Instant::now() >= end {
                return Err(format!(
                    "the wanted state did not come within {deadline:?}; seen:\n  {}",
                    seen.join("\n  ")
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Every server log (stdout and stderr, every generation).
    #[must_use]
    pub fn server_logs(&self) -> String {
        let mut s = String::new();
        for (g, (out, err)) in self.logs.iter().enumerate() {
            let read = |p: &Path| {
                let t = std::fs::read_to_string(p).unwrap_or_default();
                let mut from = t.len().saturating_sub(64 * 1024);
                while !t.is_char_boundary(from) {
                    from += 1;
                }
                t[from..].to_string()
            };
            let _ = write!(
                s,
                "---- server generation {g} stdout ----\n{}---- server generation {g} stderr ----\n{}",
                read(out),
                read(err)
            );
        }
        s
    }

    /// The stderr and stdout of the current (last) server generation.
    #[must_use]
    pub fn last_generation_log(&self) -> String {
        self.logs.last().map_or_else(String::new, |(out, err)| {
            std::fs::read_to_string(out).unwrap_or_default()
                + &std::fs::read_to_string(err).unwrap_or_default()
        })
    }

    /// Every acknowledged write of `book`, read from every node of the new
    /// layout (with `--etcd`, as the role it holds now: a replica may be
    /// primary after a failover), placed by `owner`; panics with `ctx`.
    pub fn assert_reads(&self, book: &Book, owner: &dyn Fn(u64) -> usize, ctx: &str) {
        check_reads(
            &self.with_current_roles(self.new_nodes()),
            book,
            owner,
            self.token.as_deref(),
            REPLICA_LAG,
        )
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    }

    /// The final state of a finished reshard: `/admin/reshard` done with 4
    /// shards and every pair purged; every key in `book` read from every
    /// node of the NEW layout with its last acknowledged value and
    /// `X-Shard` = hash % 4; the primaries' `keys` sum to the keys
    /// written, each replica holds as many keys as its primary;
    /// `layout.json` in the data dir.
    ///
    /// # Panics
    /// On the first failing check, naming it.
    pub fn assert_finished(&self, book: &Book, ctx: &str) {
        // Every node of the NEW layout serves.
        let added: Vec<SocketAddr> = self.added_nodes().iter().map(|n| n.addr).collect();
        let mut pending = added.clone();
        let up = wait_until(START_DEADLINE, || {
            pending.retain(|a| !health_ok(*a));
            pending.is_empty()
        });
        assert!(up, "{ctx}: new nodes {pending:?} do not answer /health");
        for n in self.new_nodes() {
            let st = self
                .reshard_status_at(n.addr)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert!(
                st.state == "done" && st.shards == NEW_SHARDS as u64,
                "{ctx}: /admin/reshard on {} is not done with 4 shards: {}",
                n.name,
                st.raw
            );
            assert_eq!(
                (st.from, st.to),
                (Some(OLD_SHARDS as u64), Some(NEW_SHARDS as u64)),
                "{ctx}: from/to on {}: {}",
                n.name,
                st.raw
            );
            for p in &st.pairs {
                assert!(
                    p.phase == "purged"
                        && p.source_purged
                        && p.target_purged
                        && p.to == p.shard + OLD_SHARDS as u64,
                    "{ctx}: pair not purged on {}: {}",
                    n.name,
                    st.raw
                );
            }
        }
        self.assert_reads(book, &|h| (h % NEW_SHARDS as u64) as usize, ctx);
        // Key counts: each key only on its owner (and the owner's replica).
        let written = book.written();
        let mut last = BTreeMap::new();
        let ok = wait_until(Duration::from_secs(15), || {
            // One process, or (two hosts) the joining ones too.
            let Ok(mut k) = node_keys(self.primary(0)) else {
                return false;
            };
            if self.two_hosts {
                for addr in self.joining_addrs() {
                    let Ok(more) = node_keys(addr) else {
                        return false;
                    };
                    k.extend(more);
                }
            }
            last = k;
            let prim: u64 = (0..NEW_SHARDS)
                .map(|s| {
                    last.get(&format!("shard{}/primary", s + 1))
                        .copied()
                        .unwrap_or(u64::MAX / 8)
                })
                .sum();
            let replicas_match = (0..NEW_SHARDS).all(|s| {
                last.get(&format!("shard{}/primary", s + 1))
                    == last.get(&format!("shard{}/replica", s + 1))
            });
            prim == written && replicas_match
        });
        assert!(
            ok,
            "{ctx}: /status keys per node {last:?}: the 4 primaries should hold {written} keys in \
             all (each key on its owner only) and each replica as many as its primary"
        );
        let layout = self.data_dir.join("layout.json");
        let text = std::fs::read_to_string(&layout)
            .unwrap_or_else(|e| panic!("{ctx}: {}: {e}", layout.display()));
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("{ctx}: {} is not JSON ({e}): {text}", layout.display()));
    }
}

// ---------------------------------------------------------------------------
// With --etcd: roles, primaries, and what etcd holds

/// A node as the `/status` of its process shows it.
#[derive(Clone, Debug)]
pub struct RoleView {
    /// e.g. `shard3/replica`.
    pub name: String,
    /// The node's shard in the NEW layout (from its name).
    pub shard: usize,
    pub addr: SocketAddr,
    /// `primary` or `replica`.
    pub role: String,
    pub epoch: u64,
    /// A replica's state (`following`, `catching-up`, ...); empty for a
    /// primary.
    pub state: String,
}

impl std::fmt::Display for RoleView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}) {} epoch {}{}",
            self.name,
            self.addr,
            self.role,
            self.epoch,
            if self.state.is_empty() {
                String::new()
            } else {
                format!(" {}", self.state)
            }
        )
    }
}

/// The server options of a cluster controlled by the etcd at `url` under
/// `prefix`: `--etcd URL --lease-ttl-ms 2000 --etcd-prefix PREFIX`.
#[must_use]
pub fn etcd_args(url: &str, prefix: &str) -> Vec<String> {
    [
        "--etcd",
        url,
        "--lease-ttl-ms",
        "2000",
        "--etcd-prefix",
        prefix,
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect()
}

/// The shards that own keys under `st`: the old ones, plus the new shard
/// of every pair that cut over (all of them once done).
#[must_use]
pub fn owning_shards(st: &RsStatus) -> Vec<usize> {
    if st.state == "resharding" && !st.pairs.is_empty() {
        let from = st.from.unwrap_or(OLD_SHARDS as u64) as usize;
        let mut v: Vec<usize> = (0..from).collect();
        v.extend(
            st.pairs
                .iter()
                .filter(|p| RsStatus::is_cut_over(p))
                .map(|p| p.to as usize),
        );
        v
    } else {
        (0..st.shards as usize).collect()
    }
}

impl RsCluster {
    /// True when the cluster runs with `--etcd`.
    #[must_use]
    pub fn is_etcd(&self) -> bool {
        self.extra.iter().any(|a| a == "--etcd")
    }

    /// The etcd of a cluster started with `--etcd` (its first URL and
    /// `--etcd-prefix`, default `/corekv`).
    #[must_use]
    pub fn etcd(&self) -> Option<EtcdView> {
        let after = |opt: &str| {
            self.extra
                .iter()
                .position(|a| a == opt)
                .and_then(|i| self.extra.get(i + 1))
                .cloned()
        };
        let url = after("--etcd")?;
        let url = url.split(',').next().unwrap_or_default().to_string();
        let prefix = after("--etcd-prefix").unwrap_or_else(|| "/corekv".to_string());
        Some(EtcdView { url, prefix })
    }

    /// The address of the first node of every joining process (its
    /// `/status` lists all of its nodes).
    fn joining_addrs(&self) -> Vec<SocketAddr> {
        let nodes = self.new_nodes();
        self.joining
            .iter()
            .filter_map(|j| {
                nodes
                    .iter()
                    .find(|n| j.names.first() == Some(&n.name))
                    .map(|n| n.addr)
            })
            .collect()
    }

    /// Names of the nodes of the processes that run now (the server's
    /// nodes: the OLD ones, plus, in one process, the new shards' while a
    /// reshard is under way or done; each running joining process's).
    fn running_names(&self, st: &RsStatus) -> HashSet<String> {
        let mut out = HashSet::new();
        if self.child.is_some() {
            out.extend(self.old_nodes().into_iter().map(|n| n.name));
            if !self.two_hosts && (st.state == "resharding" || st.state == "done") {
                out.extend(self.added_nodes().into_iter().map(|n| n.name));
            }
        }
        for j in self.joining.iter().filter(|j| j.child.is_some()) {
            out.extend(j.names.iter().cloned());
        }
        out
    }

    /// Every node of every running process as its `/status` shows it
    /// (processes that do not answer are left out).
    #[must_use]
    pub fn views(&self) -> Vec<RoleView> {
        let nodes = self.new_nodes();
        let mut addrs = Vec::new();
        if self.child.is_some() {
            addrs.push(self.primary(0));
        }
        for (j, addr) in self.joining.iter().zip(self.joining_addrs()) {
            if j.child.is_some() {
                addrs.push(addr);
            }
        }
        let mut out: Vec<RoleView> = Vec::new();
        for addr in addrs {
            let Ok(v) = status_json(addr, Duration::from_millis(500)) else {
                continue;
            };
            let Some(list) = v["nodes"].as_array() else {
                continue;
            };
            for n in list {
                let Some(name) = n["name"].as_str() else {
                    continue;
                };
                let Some(node) = nodes.iter().find(|x| x.name == name) else {
                    continue;
                };
                if out.iter().any(|o| o.name == name) {
                    continue;
                }
                out.push(RoleView {
                    name: name.to_string(),
                    shard: node.shard,
                    addr: node.addr,
                    role: n["role"].as_str().unwrap_or_default().to_string(),
                    epoch: n["epoch"].as_u64().unwrap_or(0),
                    state: n["state"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
        out
    }

    /// `nodes` with `primary` set from the roles `/status` shows (with
    /// `--etcd` a configured replica may be the primary now); unchanged in
    /// a static cluster or for a node no running process shows.
    #[must_use]
    pub fn with_current_roles(&self, mut nodes: Vec<Node>) -> Vec<Node> {
        if !self.is_etcd() {
            return nodes;
        }
        let views = self.views();
        for n in &mut nodes {
            if let Some(v) = views.iter().find(|v| v.name == n.name) {
                n.primary = v.role == "primary";
            }
        }
        nodes
    }

    /// Writes nothing but goes through the commit path of `shard`: a
    /// `/delete` of a never-written key that `st` places on `shard`, sent
    /// to `via`; it must answer 200 with `X-Shard: shard`.
    ///
    /// # Errors
    /// Another answer, or an I/O failure.
    pub fn probe_write(&self, st: &RsStatus, via: SocketAddr, shard: usize) -> Result<(), String> {
        let key = (0..100_000u32)
            .map(|n| format!("rs-probe-{n}"))
            .find(|k| st.owner(fnv1_64(k.as_bytes())) == shard)
            .ok_or_else(|| format!("no probe key for shard {shard} under {}", st.brief()))?;
        let hdrs = auth(self.token.as_deref());
        let hdrs: Vec<(&str, &str)> = hdrs.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let target = format!("/delete?key={}", enc(key.as_bytes()));
        let r = Conn::connect_timeout(via, Duration::from_secs(2))
            .and_then(|mut c| c.request("GET", &target, &hdrs, b""))
            .map_err(|e| format!("probe write {target} via {via}: {e}"))?;
        let x_shard = r.header("x-shard").and_then(|s| s.parse::<usize>().ok());
        if r.status == 200 && x_shard == Some(shard) {
            Ok(())
        } else {
            Err(format!(
                "probe write of shard {shard} via {via}: {} {:?} (X-Shard {:?}, X-Served-By {:?})",
                r.status,
                r.text(),
                r.header("x-shard"),
                r.header("x-served-by")
            ))
        }
    }

    /// Each shard that owns keys now ([`owning_shards`]) and (when
    /// `only_running`) has a node in a running process: its primary, when
    /// every one of its nodes in a running process shows in `/status`,
    /// exactly one is `primary`, all show its epoch, every replica is
    /// `following` or `catching-up`, and the primary takes a write
    /// ([`RsCluster::probe_write`]).
    fn primaries_now(&self, only_running: bool) -> Result<BTreeMap<usize, RoleView>, String> {
        let st = self.reshard_status_at(self.primary(0))?;
        let running = self.running_names(&st);
        let views = self.views();
        let nodes = self.new_nodes();
        let mut out = BTreeMap::new();
        for s in owning_shards(&st) {
            let up: Vec<&Node> = nodes
                .iter()
                .filter(|n| n.shard == s && running.contains(&n.name))
                .collect();
            if up.is_empty() {
                if only_running {
                    continue;
                }
                return Err(format!("shard {s}: no node of it runs"));
            }
            let of: Vec<&RoleView> = views.iter().filter(|v| v.shard == s).collect();
            if let Some(n) = up.iter().find(|n| !of.iter().any(|v| v.name == n.name)) {
                return Err(format!("shard {s}: {} does not show in /status", n.name));
            }
            let prims: Vec<&&RoleView> = of.iter().filter(|v| v.role == "primary").collect();
            let [p] = prims[..] else {
                return Err(format!(
                    "shard {s}: {} primaries among {}",
                    prims.len(),
                    of.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            if let Some(v) = of.iter().find(|v| {
                v.epoch != p.epoch
                    || (v.role != "primary" && v.state != "following" && v.state != "catching-up")
            }) {
                return Err(format!("shard {s}: {v} (primary {p}) has not settled"));
            }
            self.probe_write(&st, p.addr, s)?;
            out.insert(s, (*p).clone());
        }
        Ok(out)
    }

    /// Waits until every shard that owns keys now has a primary that takes
    /// writes, its replicas following it (see [`owning_shards`]); returns
    /// them by shard. A shard none of whose nodes runs fails the wait.
    ///
    /// # Errors
    /// Not so within `deadline`: why, with every node's role.
    pub fn wait_primaries(&self, deadline: Duration) -> Result<BTreeMap<usize, RoleView>, String> {
        self.wait_primaries_of(deadline, false)
    }

    fn wait_primaries_of(
        &self,
        deadline: Duration,
        only_running: bool,
    ) -> Result<BTreeMap<usize, RoleView>, String> {
        let mut last = Err("not asked yet".to_string());
        wait_until(deadline, || {
            last = self.primaries_now(only_running);
            last.is_ok()
        });
        last.map_err(|e| {
            let views: Vec<String> = self.views().iter().map(ToString::to_string).collect();
            let etcd = self.etcd().map(|e| e.dump()).unwrap_or_default();
            format!(
                "no primary that takes writes for every shard within {deadline:?}: {e}\n  nodes: \
                 {}\n  etcd: {etcd}",
                views.join("\n         ")
            )
        })
    }
}

/// `GET /status` on `addr`, parsed (`timeout` on connect and read).
fn status_json(addr: SocketAddr, timeout: Duration) -> Result<serde_json::Value, String> {
    let mut c = Conn::connect_timeout(addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let r = c
        .get("/status")
        .map_err(|e| format!("/status on {addr}: {e}"))?;
    if r.status != 200 {
        return Err(format!("/status on {addr}: {r}"));
    }
    serde_json::from_str(&r.text()).map_err(|e| format!("/status on {addr} not JSON: {e}"))
}

/// A shard's leader key in etcd: `{"node": NAME, "epoch": E}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdLeader {
    pub node: String,
    pub epoch: u64,
}

/// A leader key's value, `{"node": NAME, "epoch": E}`.
fn parse_leader(v: &str) -> Option<EtcdLeader> {
    let j: serde_json::Value = serde_json::from_str(v).ok()?;
    Some(EtcdLeader {
        node: j["node"].as_str()?.to_string(),
        epoch: j["epoch"].as_u64()?,
    })
}

/// Reads corekv's keys from an etcd, over its v3 JSON gateway
/// (`POST /v3/kv/range`, keys and values base64) with a plain
/// HTTP/1.0 request on a `TcpStream`: nothing of corekv's own client.
#[derive(Clone, Debug)]
pub struct EtcdView {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `--etcd-prefix`.
    pub prefix: String,
}

impl EtcdView {
    /// The keys (and values) from `key`, or with prefix `key` when
    /// `prefix`.
    ///
    /// # Errors
    /// I/O failure, a status other than 200 or another shape.
    pub fn range(&self, key: &str, prefix: bool) -> Result<Vec<(String, String)>, String> {
        use base64::Engine as _;
        use std::io::{Read as _, Write as _};
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut body = serde_json::json!({ "key": b64.encode(key) });
        if prefix {
            // The range end of a prefix: its last byte + 1 (keys are ASCII).
            let mut end = key.as_bytes().to_vec();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            body["range_end"] = serde_json::Value::String(b64.encode(&end));
        }
        let body = body.to_string();
        let hostport = self
            .url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|e| format!("etcd URL {:?}: {e}", self.url))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect etcd {addr}: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "POST /v3/kv/range HTTP/1.0\r\nHost: {hostport}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .map_err(|e| format!("etcd range {key:?}: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .map_err(|e| format!("etcd range {key:?}: {e}"))?;
        let raw = String::from_utf8_lossy(&raw);
        let (head, answer) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("etcd range {key:?}: no complete answer: {raw:?}"))?;
        if head.split(' ').nth(1) != Some("200") {
            return Err(format!("etcd range {key:?}: {head:?} {answer:?}"));
        }
        let v: serde_json::Value = serde_json::from_str(answer)
            .map_err(|e| format!("etcd range {key:?}: not JSON ({e}): {answer:?}"))?;
        let dec = |x: &serde_json::Value| {
            x.as_str()
                .and_then(|t| b64.decode(t).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        Ok(v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| {
                        Some((dec(&kv["key"])?, dec(&kv["value"]).unwrap_or_default()))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `PREFIX/shards/{shard}/{name}`.
    #[must_use]
    pub fn shard_key(&self, shard: usize, name: &str) -> String {
        format!("{}/shards/{shard}/{name}", self.prefix)
    }

    /// The leader key of `shard`, if any.
    ///
    /// # Errors
    /// etcd failed, or the value is not `{"node": NAME, "epoch": E}`.
    pub fn leader(&self, shard: usize) -> Result<Option<EtcdLeader>, String> {
        let key = self.shard_key(shard, "leader");
        let Some((_, v)) = self.range(&key, false)?.into_iter().next() else {
            return Ok(None);
        };
        parse_leader(&v)
            .map(Some)
            .ok_or_else(|| format!("{key} = {v:?}: not {{\"node\": NAME, \"epoch\": E}}"))
    }

    /// The epoch key of `shard` (last epoch handed out), if any.
    ///
    /// # Errors
    /// etcd failed, or the value is not an integer.
    pub fn epoch(&self, shard: usize) -> Result<Option<u64>, String> {
        let key = self.shard_key(shard, "epoch");
        match self.range(&key, false)?.into_iter().next() {
            None => Ok(None),
            Some((_, v)) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| format!("{key} = {v:?}: {e}")),
        }
    }

    /// The keys of an election of `shard` that exist now: its leader key
    /// and its candidate keys (`PREFIX/shards/{shard}/candidates/...`).
    ///
    /// # Errors
    /// etcd failed.
    pub fn election_keys(&self, shard: usize) -> Result<Vec<(String, String)>, String> {
        let mut v = self.range(&self.shard_key(shard, "leader"), false)?;
        v.extend(self.range(&self.shard_key(shard, "candidates/"), true)?);
        Ok(v)
    }

    /// Every key under the prefix, one `key = value` a line (for failure
    /// messages).
    #[must_use]
    pub fn dump(&self) -> String {
        match self.range(&format!("{}/", self.prefix), true) {
            Ok(kvs) => {
                let mut s = String::new();
                for (k, v) in &kvs {
                    let _ = write!(s, "\n    {k} = {v}");
                }
                s
            }
            Err(e) => format!("(etcd unreadable: {e})"),
        }
    }
}

/// Watches, while a reshard runs, that no election is held for a new
/// shard whose pair has not cut over: samples `/admin/reshard`, then the
/// new shards' election keys in etcd ([`EtcdView::election_keys`]), then
/// `/admin/reshard` again; a key of new shard `i + N` while pair `i` was
/// `copying` in both samples (no hold or cutover around it) is a
/// violation. Also remembers when each new shard's leader key first
/// appeared and which phases surrounded it.
pub struct ElectionWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ElectionLog>>,
}

/// What an [`ElectionWatch`] saw.
#[derive(Debug, Default)]
pub struct ElectionLog {
    /// Samples taken (both `/admin/reshard` reads answered).
    pub samples: u64,
    /// One line per violation.
    pub violations: Vec<String>,
    /// Per new shard: the first leader key seen, with the phases of its
    /// pair before and after the read.
    pub first_leader: BTreeMap<usize, (EtcdLeader, String, String)>,
}

impl ElectionWatch {
    /// Starts sampling (every 50 ms) against `c`'s etcd and the primary
    /// of shard 0.
    ///
    /// # Panics
    /// When `c` does not run with `--etcd`.
    #[must_use]
    pub fn start(c: &RsCluster) -> Self {
        let etcd = c.etcd().expect("ElectionWatch needs a cluster with --etcd");
        let addr = c.primary(0);
        let token = c.token.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut log = ElectionLog::default();
            let status = |t: &Option<String>| -> Option<RsStatus> {
                let hdrs = auth(t.as_deref());
                let hdrs: Vec<(&str, &str)> = hdrs.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let mut c = Conn::connect_timeout(addr, Duration::from_secs(1)).ok()?;
                let r = c.request("GET", "/admin/reshard", &hdrs, b"").ok()?;
                (r.status == 200)
                    .then(|| RsStatus::parse(&r.text()).ok())
                    .flatten()
            };
            while !stop2.load(Ordering::Relaxed) {
                let sample = (|| {
                    let before = status(&token)?;
                    // One range read of every shard's keys per sample.
                    let all = etcd.range(&format!("{}/shards/", etcd.prefix), true).ok()?;
                    let after = status(&token)?;
                    let mut keys = Vec::new();
                    let mut leaders = Vec::new();
                    for s in OLD_SHARDS..NEW_SHARDS {
                        let (leader, cand) = (
                            etcd.shard_key(s, "leader"),
                            etcd.shard_key(s, "candidates/"),
                        );
                        let kvs: Vec<(String, String)> = all
                            .iter()
                            .filter(|(k, _)| *k == leader || k.starts_with(&cand))
                            .cloned()
                            .collect();
                        let l = all
                            .iter()
                            .find(|(k, _)| *k == leader)
                            .and_then(|(_, v)| parse_leader(v));
                        keys.push((s, kvs));
                        leaders.push((s, l));
                    }
                    Some((before, keys, leaders, after))
                })();
                if let Some((before, keys, leaders, after)) = sample {
                    log.samples += 1;
                    let phase = |st: &RsStatus, s: usize| {
                        if st.state != "resharding" {
                            return st.state.clone();
                        }
                        st.pair(s - OLD_SHARDS)
                            .map_or_else(|| "-".to_string(), |p| p.phase.clone())
                    };
                    for (s, kvs) in keys {
                        let (b, a) = (phase(&before, s), phase(&after, s));
                        let unsplit = |p: &str| p == "idle" || p == "copying";
                        if !kvs.is_empty() && unsplit(&b) && unsplit(&a) {
                            log.violations.push(format!(
                                "new shard {s}: election keys {kvs:?} while pair {} had not \
                                 split and no cutover ran (before: {}; after: {})",
                                s - OLD_SHARDS,
                                before.brief(),
                                after.brief()
                            ));
                        }
                    }
                    for (s, l) in leaders {
                        if let Some(l) = l {
                            log.first_leader
                                .entry(s)
                                .or_insert_with(|| (l, phase(&before, s), phase(&after, s)));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            log
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; what was seen.
    ///
    /// # Panics
    /// When the sampling thread panicked.
    #[must_use]
    pub fn finish(mut self) -> ElectionLog {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().expect("election watch thread"))
            .unwrap_or_default()
    }
}

impl Drop for ElectionWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `keys` of every node in `/status` of `addr`, by node name.
///
/// # Errors
/// I/O failure or another shape.
pub fn node_keys(addr: SocketAddr) -> Result<BTreeMap<String, u64>, String> {
    let v = status_json(addr, Duration::from_secs(2))?;
    let nodes = v["nodes"]
        .as_array()
        .ok_or_else(|| format!("/status on {addr} without \"nodes\": {v}"))?;
    Ok(nodes
        .iter()
        .filter_map(|n| Some((n["name"].as_str()?.to_string(), n["keys"].as_u64()?)))
        .collect())
}

impl Drop for RsCluster {
    fn drop(&mut self) {
        self.kill9();
        self.kill9_joining();
        if std::thread::panicking() {
            eprintln!(
                "==== corekv logs ({}) ====\n{}",
                self.dir.path().display(),
                self.server_logs()
            );
        }
        if std::env::var_os("COREKV_KEEP_TEST_DIR").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("kept the cluster's directory {}", dir.keep().display());
        }
    }
}

/// Writes the first value (or a new one) of every key of `book` through
/// the primaries of the OLD layout (each key via the primary of its old
/// shard, one pipelined connection each; with `--etcd`, the primaries
/// elected, once every shard has one).
///
/// # Panics
/// When a write is not answered 200.
pub fn preload(c: &RsCluster, book: &Book) {
    // With --etcd: through the primaries elected (writes need them).
    let vias: Vec<SocketAddr> = if c.is_etcd() {
        let p = c
            .wait_primaries(START_DEADLINE)
            .unwrap_or_else(|e| panic!("before the preload: {e}"));
        (0..OLD_SHARDS)
            .map(|s| p.get(&s).map_or_else(|| c.primary(s), |v| v.addr))
            .collect()
    } else {
        (0..OLD_SHARDS).map(|s| c.primary(s)).collect()
    };
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..OLD_SHARDS)
            .map(|s| {
                let keys: Vec<u32> = (0..book.nkeys)
                    .filter(|&i| super::shard_of(key_name(i).as_bytes(), OLD_SHARDS) == s)
                    .collect();
                let via = vias[s];
                let token = c.token.as_deref();
                scope.spawn(move || set_keys(via, book, &keys, token))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("preload thread"))
            .collect()
    });
    assert!(failures.is_empty(), "preload failed: {failures:?}");
}

// ---------------------------------------------------------------------------
// Load

/// What a load request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// GET of a written key.
    Get,
    /// GET of a never-written key.
    GetAbsent,
    /// SET.
    Set,
}

/// One request of the load.
#[derive(Clone, Copy, Debug)]
pub struct Rec {
    /// Sent, ms since the load's start.
    pub at_ms: u32,
    pub lat_us: u32,
    /// 0: I/O error.
    pub status: u16,
    /// Index into the load's nodes.
    pub node: u8,
    pub op: Op,
}

/// A request of the load that went wrong.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Sent and answered, since the load's start.
    pub sent: Duration,
    pub done: Duration,
    pub node: String,
    pub op: Op,
    pub key: String,
    pub status: u16,
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:.3?}..{:.3?}] {:?} {} on {}: status {} {}",
            self.sent, self.done, self.op, self.key, self.node, self.status, self.what
        )
    }
}

/// How a [`Load`] runs.
#[derive(Clone, Copy, Debug)]
pub struct LoadCfg {
    /// Connections (threads) per node.
    pub conns_per_node: usize,
    /// % of SETs on connections to primaries (replicas get none: they
    /// answer writes 403). 20 with as many primaries as replicas = 10 %.
    pub set_pct: u32,
    /// % of GETs of never-written keys (on every connection).
    pub absent_pct: u32,
    /// Pause after each request of a connection.
    pub pause: Duration,
}

/// The load the reshard issue asks for: 16 connections per node, 90 % GET
/// / 10 % SET over primaries and replicas, 10 % of GETs for absent keys.
pub const ISSUE_LOAD: LoadCfg = LoadCfg {
    conns_per_node: 16,
    set_pct: 20, // primaries only: 10 % of all requests
    absent_pct: 10,
    pause: Duration::from_millis(1),
};

/// Connection threads against a list of nodes. Writers own disjoint sets
/// of keys (key `i` belongs to writer `i % writers`), so each key's writes
/// are sequential and its last acknowledged value is well defined.
pub struct Load {
    t0: Instant,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    threads: Vec<JoinHandle<(Vec<Rec>, Vec<Failure>)>>,
    pub nodes: Vec<Node>,
}

/// What a finished load recorded.
pub struct LoadResult {
    pub recs: Vec<Rec>,
    pub failures: Vec<Failure>,
    pub nodes: Vec<Node>,
}

struct Worker {
    node_idx: usize,
    node: Node,
    /// Writer number among the primary connections (None: reads only).
    writer: Option<(usize, usize)>,
    cfg: LoadCfg,
    book: Arc<Book>,
    seed: u64,
}

impl Load {
    /// [`Load::start`], then waits until the load runs (500 requests and
    /// a second on its clock).
    ///
    /// # Panics
    /// When it does not within 10 s.
    #[must_use]
    pub fn start_running(nodes: &[Node], book: &Arc<Book>, cfg: LoadCfg) -> Self {
        let load = Self::start(nodes, book, cfg);
        assert!(
            wait_until(Duration::from_secs(10), || load.requests() >= 500
                && load.now() >= Duration::from_secs(1)),
            "the load does not run: {} requests",
            load.requests()
        );
        load
    }

    /// Starts `cfg.conns_per_node` connection threads per node of `nodes`.
    #[must_use]
    pub fn start(nodes: &[Node], book: &Arc<Book>, cfg: LoadCfg) -> Self {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let writers = nodes.iter().filter(|n| n.primary).count() * cfg.conns_per_node;
        let mut w = 0;
        let mut threads = Vec::new();
        for (ni, node) in nodes.iter().enumerate() {
            for k in 0..cfg.conns_per_node {
                let writer = if node.primary && cfg.set_pct > 0 {
                    w += 1;
                    Some((w - 1, writers))
                } else {
                    None
                };
                let wk = Worker {
                    node_idx: ni,
                    node: node.clone(),
                    writer,
                    cfg,
                    book: book.clone(),
                    seed: (ni * 1000 + k + 1) as u64,
                };
                let (stop, count) = (stop.clone(), count.clone());
                threads.push(std::thread::spawn(move || wk.run(t0, &stop, &count)));
            }
        }
        Self {
            t0,
            stop,
            count,
            threads,
            nodes: nodes.to_vec(),
        }
    }

    /// Time since the start.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Requests answered (or failed) so far.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops every thread; what they recorded.
    ///
    /// # Panics
    /// When a thread panicked.
    #[must_use]
    pub fn finish(mut self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        let mut recs = Vec::new();
        let mut failures = Vec::new();
        for h in self.threads.drain(..) {
            let (r, f) = h.join().expect("load thread");
            recs.extend(r);
            failures.extend(f);
        }
        failures.sort_by_key(|f| f.sent);
        LoadResult {
            recs,
            failures,
            nodes: std::mem::take(&mut self.nodes),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One request of a worker, chosen and built.
struct Req {
    op: Op,
    /// Key number (Get, Set).
    i: u32,
    key: String,
    target: String,
    /// The seq a Set writes.
    seq: u32,
    /// The key's last acknowledged seq when a Get was built.
    acked_before: Option<u32>,
}

impl Worker {
    fn next_req(&self, rng: &mut Rng, own: &[u32], absent_n: &mut u64) -> Req {
        let r = rng.below(100) as u32;
        if !own.is_empty() && r < self.cfg.set_pct {
            let i = own[rng.below(own.len())];
            let seq = self.book.next_seq(i);
            let key = key_name(i);
            let target = format!(
                "/set?key={}&value={}",
                enc(key.as_bytes()),
                enc(value_of(i, seq).as_bytes())
            );
            Req {
                op: Op::Set,
                i,
                key,
                target,
                seq,
                acked_before: None,
            }
        } else if r >= 100 - self.cfg.absent_pct {
            *absent_n += 1;
            let key = absent_key(*absent_n);
            let target = format!("/get?key={}", enc(key.as_bytes()));
            Req {
                op: Op::GetAbsent,
                i: 0,
                key,
                target,
                seq: 0,
                acked_before: None,
            }
        } else {
            let i = rng.below(self.book.nkeys as usize) as u32;
            let acked_before = self.book.acked(i);
            let key = key_name(i);
            let target = format!("/get?key={}", enc(key.as_bytes()));
            Req {
                op: Op::Get,
                i,
                key,
                target,
                seq: 0,
                acked_before,
            }
        }
    }

    /// Records the outcome of `req` in the book; what is wrong with the
    /// answer, if anything.
    fn judge(&self, req: &Req, res: &std::io::Result<Resp>) -> Vec<String> {
        let resp = match res {
            Err(e) => {
                if req.op == Op::Set {
                    self.book.unknown(req.i, req.seq);
                }
                return vec![format!("I/O error: {e}")];
            }
            Ok(r) => r,
        };
        let mut wrong = Vec::new();
        match req.op {
            Op::Set if resp.status == 200 => self.book.ack(req.i, req.seq),
            Op::Set => {
                if resp.status >= 500 {
                    self.book.unknown(req.i, req.seq);
                }
                return vec![resp.text()];
            }
            Op::GetAbsent if resp.status != 404 => wrong.push(resp.text()),
            Op::Get if resp.status != 200 => wrong.push(resp.text()),
            Op::Get => match parse_value(&resp.body) {
                Some((k, _)) if k != req.i => {
                    wrong.push(format!("value of another key: {:?}", resp.text()));
                }
                None => wrong.push(format!("foreign value {:?}", resp.text())),
                // A primary forwards to the owner's primary: a write
                // acknowledged before the read was sent must be visible
                // (replicas may lag).
                Some((_, s)) if self.node.primary && req.acked_before.is_some_and(|a| s < a) => {
                    wrong.push(format!(
                        "stale read: seq {s}, but seq {} was acknowledged before the read was \
                         sent (X-Served-By {:?})",
                        req.acked_before.unwrap_or_default(),
                        resp.header("x-served-by")
                    ));
                }
                Some(_) => {}
            },
            Op::GetAbsent => {}
        }
        let h = fnv1_64(req.key.as_bytes());
        let shard = resp.header("x-shard").and_then(|s| s.parse::<u64>().ok());
        if !shard.is_some_and(|s| s == h % OLD_SHARDS as u64 || s == h % NEW_SHARDS as u64) {
            wrong.push(format!(
                "X-Shard {:?} is neither hash % 2 = {} nor hash % 4 = {}",
                resp.header("x-shard"),
                h % OLD_SHARDS as u64,
                h % NEW_SHARDS as u64
            ));
        }
        wrong
    }

    fn run(self, t0: Instant, stop: &AtomicBool, count: &AtomicU64) -> (Vec<Rec>, Vec<Failure>) {
        let mut rng = Rng::new(self.seed);
        let mut conn: Option<Conn> = None;
        let mut recs = Vec::new();
        let mut failures = Vec::new();
        let own: Vec<u32> = match self.writer {
            Some((w, n)) => (0..self.book.nkeys)
                .filter(|i| *i as usize % n == w)
                .collect(),
            None => Vec::new(),
        };
        let mut absent_n: u64 = self.seed << 32;
        while !stop.load(Ordering::Relaxed) {
            let req = self.next_req(&mut rng, &own, &mut absent_n);
            let sent = t0.elapsed();
            let res = (|| {
                if conn.is_none() {
                    let mut c = Conn::connect_timeout(self.node.addr, Duration::from_secs(2))?;
                    c.set_read_timeout(Duration::from_secs(10))?;
                    conn = Some(c);
                }
                conn.as_mut().expect("connected").get(&req.target)
            })();
            let done = t0.elapsed();
            count.fetch_add(1, Ordering::Relaxed);
            if !matches!(&res, Ok(r) if !r.closes()) {
                conn = None;
            }
            let status = res.as_ref().map_or(0, |r| r.status);
            recs.push(Rec {
                at_ms: sent.as_millis() as u32,
                lat_us: done.saturating_sub(sent).as_micros() as u32,
                status,
                node: self.node_idx as u8,
                op: req.op,
            });
            for what in self.judge(&req, &res) {
                failures.push(Failure {
                    sent,
                    done,
                    node: format!("{} ({})", self.node.name, self.node.addr),
                    op: req.op,
                    key: req.key.clone(),
                    status,
                    what,
                });
            }
            if !self.cfg.pause.is_zero() {
                std::thread::sleep(self.cfg.pause);
            }
        }
        (recs, failures)
    }
}

impl LoadResult {
    /// The slowest request.
    #[must_use]
    pub fn max_latency(&self) -> Duration {
        self.recs
            .iter()
            .map(|r| Duration::from_micros(u64::from(r.lat_us)))
            .max()
            .unwrap_or_default()
    }

    /// The `n` slowest requests, one a line.
    #[must_use]
    pub fn slowest(&self, n: usize) -> String {
        let mut v: Vec<&Rec> = self.recs.iter().collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.lat_us));
        v.iter()
            .take(n)
            .map(|r| {
                format!(
                    "{:?} on {} sent at {} ms: {} ms, status {}",
                    r.op,
                    self.nodes[r.node as usize].name,
                    r.at_ms,
                    r.lat_us / 1000,
                    r.status
                )
            })
            .collect::<Vec<_>>()
            .join("\n  ")
    }

    /// Counts and latencies per operation and status, one a line.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut by: HashMap<(Op, u16), Vec<u32>> = HashMap::new();
        for r in &self.recs {
            by.entry((r.op, r.status)).or_default().push(r.lat_us);
        }
        let mut keys: Vec<(Op, u16)> = by.keys().copied().collect();
        keys.sort();
        let mut s = format!(
            "{} requests, {} failures, max latency {:?}",
            self.recs.len(),
            self.failures.len(),
            self.max_latency()
        );
        for k in keys {
            let v = by.get_mut(&k).expect("present");
            v.sort_unstable();
            let p = |permille: usize| v[(v.len() - 1) * permille / 1000] / 1000;
            let _ = write!(
                s,
                "\n  {:?} {}: {} requests, p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
                k.0,
                k.1,
                v.len(),
                p(500),
                p(990),
                p(999),
                v[v.len() - 1] / 1000
            );
        }
        s
    }
}

/// The first `n` of `failures`, one a line, with the total.
#[must_use]
pub fn failures_text(failures: &[&Failure], n: usize) -> String {
    {
        let mut s = format!("{} failed requests; the first {n}:", failures.len());
        for f in failures.iter().take(n) {
            let _ = write!(s, "\n  {f}");
        }
        s
    }
}

/// How long a whole reshard of a few thousand keys may take.
pub const RESHARD_DEADLINE: Duration = Duration::from_mins(2);
/// `--pause-ms` of the runs whose phases a test catches.
pub const PAUSE_MS: &str = "1500";
/// The slowest request allowed under load.
pub const MAX_LATENCY: Duration = Duration::from_secs(2);
/// How long a replica may take to show a write.
pub const REPLICA_LAG: Duration = Duration::from_secs(15);

static SERIAL: Mutex<()> = Mutex::new(());

/// The reshard tests of one binary run one at a time (fixed layouts, a
/// shared machine); hold the guard for the whole test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every pair that had cut over in `caught` still has in `st` (after a
/// kill and restart, `ctx`).
///
/// # Panics
/// When one has not.
pub fn assert_cutovers_kept(caught: &RsStatus, st: &RsStatus, ctx: &str) {
    for p in caught.pairs.iter().filter(|p| RsStatus::is_cut_over(p)) {
        assert!(
            st.pair(p.shard as usize).is_some_and(RsStatus::is_cut_over),
            "pair {} had cut over before {ctx}, not after the restart: {}",
            p.shard,
            st.raw
        );
    }
}

/// What a load that ran through a whole reshard (from `started` to `ended`
/// on the load's clock) must show: requests during it, none failed, none
/// slower than [`MAX_LATENCY`].
///
/// # Panics
/// When one of those does not hold.
pub fn assert_load_served(res: &LoadResult, started: Duration, ended: Duration) {
    let during = res
        .recs
        .iter()
        .filter(|r| {
            let at = Duration::from_millis(u64::from(r.at_ms));
            at >= started && at <= ended
        })
        .count();
    assert!(during > 0, "no request of the load ran during the reshard");
    assert_load_clean(res);
}

/// No request of the load failed or took longer than [`MAX_LATENCY`].
///
/// # Panics
/// When one did.
pub fn assert_load_clean(res: &LoadResult) {
    let fails: Vec<&Failure> = res.failures.iter().collect();
    assert!(fails.is_empty(), "{}", failures_text(&fails, 40));
    assert!(
        res.max_latency() <= MAX_LATENCY,
        "a request took {:?} (> {MAX_LATENCY:?}); the slowest:\n  {}",
        res.max_latency(),
        res.slowest(10)
    );
}

/// kill -9 of the server (after `caught` was seen) and of the command, then
/// a restart with the OLD config: nothing of `load` failed before the
/// kill; the restarted process is still resharding, every pair that had
/// cut over still has, it logs that it uses the stored layout, and the new
/// shards' nodes answer. The state after the restart.
///
/// # Panics
/// When one of those does not hold.
pub fn kill9_restart_resumes(
    c: &mut RsCluster,
    cmd: &mut ReshardCmd,
    load: Load,
    caught: &RsStatus,
    ctx: &str,
) -> RsStatus {
    let kill_at = load.now();
    c.kill9();
    let out = cmd.kill();
    eprintln!("killed at {ctx}: {}\n{out}", caught.brief());
    let res = load.finish();
    eprintln!("load until the kill: {}", res.summary());
    // Before the kill nothing may fail; afterwards I/O errors are expected.
    let before: Vec<&Failure> = res.failures.iter().filter(|f| f.done < kill_at).collect();
    assert!(
        before.is_empty(),
        "before the kill at {ctx}: {}",
        failures_text(&before, 40)
    );
    c.restart();
    let st = c.reshard_status();
    eprintln!("after the restart: {}", st.brief());
    assert_eq!(
        st.state, "resharding",
        "after a kill -9 at {ctx} the restarted process should still be resharding: {}",
        st.raw
    );
    assert_cutovers_kept(caught, &st, &format!("the kill at {ctx}"));
    let log = c.last_generation_log().to_lowercase();
    assert!(
        log.contains("layout"),
        "the restarted process should log that it uses the stored layout:\n{log}"
    );
    // The stored layout has the new shards: the process runs their nodes
    // again.
    let mut pending: Vec<SocketAddr> = c.added_nodes().iter().map(|n| n.addr).collect();
    let up = wait_until(START_DEADLINE, || {
        pending.retain(|a| !health_ok(*a));
        pending.is_empty()
    });
    assert!(
        up,
        "after the restart at {ctx} the new shards' nodes {pending:?} do not answer /health"
    );
    st
}
