//! `corekv reshard --config NEW.toml`: drives a running cluster from N to
//! 2N shards over HTTP (`/admin/reshard*`, see `api::reshard`), printing
//! progress; exits 0 once every key lives only on its new owner.
//!
//! The order of steps, and why no acknowledged write is lost and no
//! request fails:
//! 1. prepare (every process): the reshard is recorded in each process's
//!    `layout.json`, and the new shards' nodes start as followers of their
//!    old shard (re-seed snapshot + log, the replication path). Placement
//!    is still `% N`; a new node's committer refuses every client write
//!    (it owns no key yet).
//! 2. copy: wait until each new primary is close to its old primary.
//! 3. cutover, one pair (i, i+N) at a time: hold old primary i's writes
//!    (queued writes wait in its commit queue, none fails) and take its
//!    seq S; wait until new primary i+N has applied exactly S; promote it
//!    (it stops following and may write the keys it will own); split on
//!    old primary i — the commit point, recorded while nothing can commit
//!    there; then every process records the split; release: each held
//!    write whose key moved is refused by the committer ("moved", nothing
//!    applied) and the API sends it to shard i+N. A failure before the
//!    commit point releases the hold and puts i+N back to following: the
//!    old layout keeps serving, and a re-run starts the cutover again.
//! 4. purge: each side of a split pair deletes, in small steps, the keys it
//!    no longer owns (replicated deletes); listings and reads already
//!    ignore them.
//! 5. finish: every process records the reshard as done.
//!
//! Re-running the command after a crash (of a process or of the command)
//! continues from what the processes recorded; `--abort` rolls back a
//! reshard in which no pair has split.
//!
//! Runs on the calling thread with blocking HTTP (`ureq`); no executor.
//! Depends on `config` and `topology` (placement figures for messages).

use crate::config::{self, ClusterConfig};
use serde_json::Value;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `corekv reshard` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReshardOptions {
    /// The new layout: the current shards, then as many new ones.
    pub config: PathBuf,
    pub token: Option<String>,
    /// Roll back instead (only before any pair split).
    pub abort: bool,
    /// Pause between steps (tests and demonstrations).
    pub pause: Duration,
    /// Longest wait for the new shards to catch up before a cutover.
    pub copy_timeout: Duration,
}

/// Why the reshard stopped; the cluster keeps serving (with the old layout
/// unless a pair split, which a re-run finishes).
#[derive(Debug)]
pub struct ReshardError(pub String);

impl fmt::Display for ReshardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReshardError {}

fn fail<T>(msg: impl Into<String>) -> Result<T, ReshardError> {
    Err(ReshardError(msg.into()))
}

/// How long a cutover waits for the new primary to reach the held seq
/// (it starts within [`CLOSE_ENOUGH`] entries; usually a few ms).
const CATCH_UP: Duration = Duration::from_millis(1500);
/// How long old primaries hold writes at most without a word from here:
/// if this command dies during a cutover, no write waits much longer than
/// the 2 s a request may take.
const HOLD_MS: u64 = 2000;
/// Cutover attempts per pair.
const ATTEMPTS: usize = 3;
/// Lag (in log entries) at which a pair is close enough for a cutover.
const CLOSE_ENOUGH: u64 = 1000;

struct Cluster {
    agent: ureq::Agent,
    token: Option<String>,
    new: ClusterConfig,
    text: String,
    from: usize,
}

impl Cluster {
    fn request(
        &self,
        method: &str,
        addr: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let url = format!("http://{addr}{path}");
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = if method == "GET" {
            let mut r = self.agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        } else {
            let mut r = self.agent.post(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body.unwrap_or_default().to_string())
        };
        let mut resp = result.map_err(|e| format!("{addr}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok((status, text))
    }

    /// A POST that must answer 200 with JSON.
    fn post(&self, addr: &str, path: &str, body: Option<&str>) -> Result<Value, String> {
        let (status, text) = self.request("POST", addr, path, body)?;
        if status != 200 {
            return Err(format!("{addr}{path}: {status} {}", text.trim()));
        }
        serde_json::from_str(&text).map_err(|e| format!("{addr}{path}: {e}"))
    }

    fn get(&self, addr: &str, path: &str) -> Result<Value, String> {
        let (status, text) = self.request("GET", addr, path, None)?;
        if status != 200 {
            return Err(format!("{addr}{path}: {status} {}", text.trim()));
        }
        serde_json::from_str(&text).map_err(|e| format!("{addr}{path}: {e}"))
    }

    /// Every node address of the old shards.
    fn old_addrs(&self) -> Vec<String> {
        self.addrs(0..self.from)
    }

    /// Every node address of the new layout.
    fn all_addrs(&self) -> Vec<String> {
        self.addrs(0..self.new.shards.len())
    }

    fn addrs(&self, shards: std::ops::Range<usize>) -> Vec<String> {
        self.new.shards[shards]
            .iter()
            .flat_map(|s| std::iter::once(s.address.clone()).chain(s.replicas.iter().cloned()))
            .collect()
    }

    fn primary(&self, shard: usize) -> &str {
        &self.new.shards[shard].address
    }

    /// Per pair, the addresses of its source (old shard's primary now) and
    /// target (the node the cutover makes the new shard's primary, or its
    /// primary since), as the first process that answers sees them (one
    /// request): with `--etcd` primaries move. The configured primaries
    /// where none says.
    fn pair_addrs(&self) -> Vec<(String, String)> {
        let answer = self.all_addrs().iter().find_map(|a| self.state(a).ok());
        (0..self.from)
            .map(|pair| {
                let p = answer.as_ref().map(|v| &v["pairs"][pair]);
                match p.map(|p| (p["source"].as_str(), p["target"].as_str())) {
                    Some((Some(s), Some(t))) => (s.to_string(), t.to_string()),
                    _ => (
                        self.primary(pair).to_string(),
                        self.primary(pair + self.from).to_string(),
                    ),
                }
            })
            .collect()
    }

    /// The seq and key count of the node at `addr` (its `/status` entry).
    fn node_seq(&self, addr: &str) -> Result<(u64, u64), String> {
        let (status, text) = self.request("GET", addr, "/status", None)?;
        if status != 200 {
            return Err(format!("{addr}/status: {status}"));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{addr}/status: {e}"))?;
        v["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["address"] == addr))
            .map(|n| {
                let seq = n["committed_seq"]
                    .as_u64()
                    .or_else(|| n["applied_seq"].as_u64())
                    .unwrap_or(0);
                (seq, n["keys"].as_u64().unwrap_or(0))
            })
            .ok_or_else(|| format!("{addr}/status does not list the node"))
    }

    /// The reshard state as the process of `addr` sees it.
    fn state(&self, addr: &str) -> Result<Value, String> {
        self.get(addr, "/admin/reshard")
    }

    /// POSTs to every address; the first error, if any.
    fn broadcast(&self, addrs: &[String], path: &str, body: Option<&str>) -> Result<(), String> {
        let mut first = None;
        for a in addrs {
            if let Err(e) = self.post(a, path, body) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Runs the reshard (or its abort); progress on stdout.
///
/// # Errors
/// Any step that fails, with what the operator can do.
pub fn run(opts: &ReshardOptions) -> Result<(), ReshardError> {
    let new = config::load(&opts.config).map_err(|e| ReshardError(e.to_string()))?;
    let text = std::fs::read_to_string(&opts.config)
        .map_err(|e| ReshardError(format!("{}: {e}", opts.config.display())))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .timeout_connect(Some(Duration::from_secs(2)))
        .build()
        .into();
    let mut cluster = Cluster {
        agent,
        token: opts.token.clone(),
        new,
        text,
        from: 0,
    };
    let state = current_state(&cluster)?;
    let (kind, shards) = (
        state["state"].as_str().unwrap_or("idle").to_string(),
        state["shards"].as_u64().unwrap_or(0),
    );
    let from = match kind.as_str() {
        "resharding" => state["from"].as_u64().unwrap_or(0),
        _ => shards,
    };
    cluster.from = usize::try_from(from).unwrap_or(0);
    if cluster.from == 0 || cluster.new.shards.len() != 2 * cluster.from {
        return fail(format!(
            "the cluster has {from} shards; {} lists {} (a reshard doubles: list the current {from} shards unchanged, then {from} new ones)",
            opts.config.display(),
            cluster.new.shards.len()
        ));
    }
    if opts.abort {
        return abort(&cluster, &kind);
    }
    if kind == "done" && shards == 2 * from {
        println!("reshard already done: {} shards", 2 * from);
        return Ok(());
    }
    println!(
        "reshard: {} → {} shards (phase: prepare)",
        cluster.from,
        2 * cluster.from
    );
    prepare(&cluster)?;
    pause(opts);
    copy(&cluster, opts.copy_timeout)?;
    pause(opts);
    for pair in 0..cluster.from {
        cutover(&cluster, pair)?;
        pause(opts);
    }
    purge(&cluster)?;
    pause(opts);
    cluster
        .broadcast(&cluster.all_addrs(), "/admin/reshard/finish", None)
        .map_err(|e| ReshardError(format!("finish: {e}; re-run the command")))?;
    println!(
        "reshard done: {} shards; every process keeps the layout in <data-dir>/layout.json (use {} as --config from now on)",
        2 * cluster.from,
        opts.config.display()
    );
    Ok(())
}

fn pause(opts: &ReshardOptions) {
    if !opts.pause.is_zero() {
        std::thread::sleep(opts.pause);
    }
}

/// The state of the first old shard's primary that answers.
fn current_state(cluster: &Cluster) -> Result<Value, ReshardError> {
    let mut errors = Vec::new();
    for s in &cluster.new.shards {
        match cluster.state(&s.address) {
            Ok(v) => return Ok(v),
            Err(e) => errors.push(e),
        }
    }
    fail(format!(
        "no node of the new layout answered /admin/reshard: {}",
        errors.join("; ")
    ))
}

fn abort(cluster: &Cluster, kind: &str) -> Result<(), ReshardError> {
    if kind != "resharding" {
        println!("no reshard under way (state {kind}); nothing to abort");
        return Ok(());
    }
    cluster
        .broadcast(&cluster.old_addrs(), "/admin/reshard/abort", None)
        .map_err(|e| ReshardError(format!("abort: {e}")))?;
    // Processes that run only new nodes (`--joining`), if any answer.
    let _ = cluster.broadcast(
        &cluster.addrs(cluster.from..2 * cluster.from),
        "/admin/reshard/abort",
        None,
    );
    println!(
        "reshard aborted: the cluster keeps {} shards (restart processes to stop the new shards' nodes)",
        cluster.from
    );
    Ok(())
}

fn prepare(cluster: &Cluster) -> Result<(), ReshardError> {
    cluster
        .broadcast(
            &cluster.old_addrs(),
            "/admin/reshard/prepare",
            Some(&cluster.text),
        )
        .map_err(|e| {
            ReshardError(format!(
                "prepare: {e}; the cluster keeps its layout (re-run, or run with --abort)"
            ))
        })?;
    // The new nodes answer once their executors run (in the processes
    // above, or in processes the operator started with `--joining`).
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_addrs = cluster.addrs(cluster.from..2 * cluster.from);
    for addr in &new_addrs {
        while cluster.request("GET", addr, "/health", None).is_err() {
            if Instant::now() > deadline {
                return fail(format!(
                    "new node {addr} does not answer: a node no running process serves must be started on its host first (`corekv --config NEW.toml --serve ADDR[,ADDR] --joining`); re-run, or --abort"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The processes of the new nodes record the same reshard (already
    // done for the ones prepared above).
    cluster
        .broadcast(&new_addrs, "/admin/reshard/prepare", Some(&cluster.text))
        .map_err(|e| ReshardError(format!("prepare of the new nodes: {e}; re-run, or --abort")))
}

/// Waits until every new primary is within [`CLOSE_ENOUGH`] entries of
/// its old primary, printing progress.
fn copy(cluster: &Cluster, timeout: Duration) -> Result<(), ReshardError> {
    let started = Instant::now();
    let mut last_print: Option<Instant> = None;
    loop {
        let mut behind = 0;
        let mut lines = Vec::new();
        for (pair, (src, dst)) in cluster.pair_addrs().into_iter().enumerate() {
            let (s, d) = match (cluster.node_seq(&src), cluster.node_seq(&dst)) {
                (Ok(s), Ok(d)) => (s, d),
                (Err(e), _) | (_, Err(e)) => return fail(format!("copy: {e}")),
            };
            if d.0 + CLOSE_ENOUGH < s.0 || (s.0 > 0 && d.0 == 0) {
                behind += 1;
            }
            lines.push(format!(
                "  shard {pair} → {}: seq {}/{} ({} of {} keys copied)",
                pair + cluster.from,
                d.0,
                s.0,
                d.1,
                s.1
            ));
        }
        if last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) || behind == 0 {
            println!("phase: copy");
            for l in &lines {
                println!("{l}");
            }
            last_print = Some(Instant::now());
        }
        if behind == 0 {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return fail(
                "copy: the new shards did not catch up in time; the cluster keeps its layout (re-run to continue, or --abort)",
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Moves pair `pair`'s keys to its new shard (see the module header).
fn cutover(cluster: &Cluster, pair: usize) -> Result<(), ReshardError> {
    let new = pair + cluster.from;
    let (src, _) = cluster.pair_addrs().swap_remove(pair);
    let state = cluster
        .state(&src)
        .map_err(|e| ReshardError(format!("cutover of shard {pair}: {e}")))?;
    let phase = state["pairs"][pair]["phase"].as_str().unwrap_or("");
    if phase == "split" || phase == "purged" {
        // Committed earlier (a re-run): make sure every process knows.
        return record_split(cluster, pair);
    }
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        // Asked each attempt: the old shard may have failed over.
        let (src, dst) = cluster.pair_addrs().swap_remove(pair);
        match try_cutover(cluster, pair, &src, &dst) {
            Ok(ms) => {
                println!("phase: cutover of shard {pair} → {new} done (writes held {ms} ms)");
                return record_split(cluster, pair);
            }
            Err(e) => {
                println!("cutover of shard {pair} → {new}, attempt {attempt}: {e}");
                last = e;
            }
        }
    }
    fail(format!(
        "cutover of shard {pair} failed {ATTEMPTS} times ({last}); the cluster keeps serving shard {pair} as before (re-run, or --abort)"
    ))
}

/// One cutover attempt; the hold's length in ms when it committed.
fn try_cutover(cluster: &Cluster, pair: usize, src: &str, dst: &str) -> Result<u128, String> {
    let started = Instant::now();
    let held = cluster.post(
        src,
        &format!("/admin/reshard/hold?pair={pair}&ms={HOLD_MS}"),
        None,
    )?;
    let seq = held["seq"].as_u64().ok_or("hold: no seq")?;
    let undo = |why: String| -> String {
        // Back to following, then writes flow again to the old shard.
        for addr in [dst, src] {
            let _ = cluster.post(addr, "/admin/reshard/prepare", Some(&cluster.text));
        }
        let _ = cluster.post(src, &format!("/admin/reshard/release?pair={pair}"), None);
        why
    };
    let deadline = Instant::now() + CATCH_UP;
    loop {
        match cluster.node_seq(dst) {
            Ok((at, _)) if at == seq => break,
            Ok((at, _)) if at > seq => return Err(undo(format!("{dst} is past seq {seq} ({at})"))),
            Ok(_) | Err(_) if Instant::now() > deadline => {
                return Err(undo(format!("{dst} did not reach seq {seq} in time")));
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    cluster
        .post(
            dst,
            &format!("/admin/reshard/promote?pair={pair}&seq={seq}"),
            None,
        )
        .map_err(|e| undo(format!("promote: {e}")))?;
    cluster
        .post(src, &format!("/admin/reshard/split?pair={pair}"), None)
        .map_err(|e| undo(format!("split: {e}")))?;
    let ms = started.elapsed().as_millis();
    // Committed: the rest only spreads the news and lets writes go; the
    // new shard's process first (the others route its keys to it).
    let mut others = cluster.addrs(pair + cluster.from..pair + cluster.from + 1);
    others.extend(cluster.all_addrs().into_iter().filter(|a| a != src));
    others.dedup();
    if let Err(e) = cluster.broadcast(&others, &format!("/admin/reshard/split?pair={pair}"), None) {
        println!("warning: split of shard {pair} not recorded everywhere yet: {e}");
    }
    let _ = cluster.post(src, &format!("/admin/reshard/release?pair={pair}"), None);
    Ok(ms)
}

/// Tells every process that pair `pair` split (idempotent).
fn record_split(cluster: &Cluster, pair: usize) -> Result<(), ReshardError> {
    cluster
        .broadcast(
            &cluster.all_addrs(),
            &format!("/admin/reshard/split?pair={pair}"),
            None,
        )
        .map_err(|e| ReshardError(format!("recording the split of shard {pair}: {e}; re-run")))
}

/// Waits until both sides of every pair hold only their own keys.
fn purge(cluster: &Cluster) -> Result<(), ReshardError> {
    let mut last_print: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_mins(10);
    loop {
        let mut left = Vec::new();
        let mut lines = Vec::new();
        for (pair, (src, dst)) in cluster.pair_addrs().into_iter().enumerate() {
            let new = pair + cluster.from;
            let src = cluster
                .state(&src)
                .map_err(|e| ReshardError(format!("purge: {e}")))?;
            let dst = cluster
                .state(&dst)
                .map_err(|e| ReshardError(format!("purge: {e}")))?;
            let a = &src["pairs"][pair];
            let b = &dst["pairs"][pair];
            let done = a["source_purged"] == true && b["target_purged"] == true;
            if !done {
                left.push(pair);
            }
            lines.push(format!(
                "  shard {pair}: {} keys, shard {new}: {} keys{}",
                a["source_keys"],
                b["target_keys"],
                if done { " (purged)" } else { "" }
            ));
        }
        if last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) || left.is_empty() {
            println!("phase: purge");
            for l in &lines {
                println!("{l}");
            }
            last_print = Some(Instant::now());
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return fail("purge did not finish in 10 minutes; re-run the command");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
