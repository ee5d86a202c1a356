//! The control plane: who is primary of each shard, decided through etcd
//! (`--etcd`), on the control plane's own OS threads (never on a glommio
//! executor). It moves roles in the shared [`Roles`] and nothing else; the
//! data plane reads `Roles` (primary, epoch, write deadline per node).
//!
//! Files: this one (configuration, public handle, status, errors, thread
//! start-up), `etcd` (a blocking etcd v3 client over the JSON gateway),
//! `lease` (the lease thread and the per-node write deadlines), `engine`
//! (the state machine thread: watch events, elections, handovers) and
//! `engine/reshard` (its part in an online reshard). Depends
//! on `roles`, `topology`, `log`, `flume`, `ureq`, `serde_json`; nothing in
//! the data plane.
//!
//! # Protocol
//!
//! Every host gets the same `--etcd` list, `--etcd-prefix` (`P`, default
//! `/corekv`) and `sharding.toml`. Keys, for shard index `s`:
//!
//! - `P/shards/s/leader` = `{"node": NAME, "epoch": E}`, attached to the
//!   holder process's lease: the primary of `s` and its epoch.
//! - `P/shards/s/epoch` = `E`, no lease: the last epoch handed out. The
//!   epoch is the fencing token the data plane puts in every write and
//!   replication message.
//! - `P/shards/s/candidates/NAME` = `{"epoch": E, "seq": S}`, leased: a node
//!   of `s` standing for election with the (epoch, seq) of the last entry
//!   it applied.
//! - `P/shards/s/handover` = `{"to": NAME, "from_epoch": E[, "seq": S]}`,
//!   leased by the requester: a planned switchover in progress.
//!
//! **Lease.** Each process holds one lease (`--lease-ttl-ms`, default 2 s,
//! granted in whole seconds) and renews it every TTL/4, one POST each.
//! When a renewal sent at monotonic time `t` succeeds, every local node
//! that holds a leader key on this lease may write until
//! `t + TTL − margin`, margin = max(TTL/4, 250 ms). etcd counts the TTL
//! from when *it* received the renewal, later than `t`, so the deadline
//! always ends before etcd can let the lease expire; the margin covers a
//! difference in clock rates between the hosts and a commit that checked
//! the deadline just before it passed. A renewal answered "lease gone"
//! fences every local primary at once, and a fresh lease is granted (the
//! process is a candidate again). Renewals that keep failing (etcd
//! unreachable) let the deadline pass: the local primaries stop taking
//! writes; the lease id is kept, because etcd restarts reset lease TTLs,
//! so when etcd comes back the same lease (and the leader keys on it) is
//! still valid and writes resume with the next renewal.
//!
//! **Watch.** One thread watches `P/shards/` from the revision of the
//! initial range read + 1, reconnecting (next endpoint) and resuming from
//! the last revision seen; after a compaction the state is read again. On
//! a leader PUT every host records the new (primary, epoch) in `Roles`
//! (local nodes that lost the role are fenced first); on a leader DELETE
//! it forgets the primary (keeping the epoch) and an election starts.
//!
//! **Election** (a shard without leader key, at start or after a DELETE):
//! every process writes a candidate key for each node of the shard it
//! runs, waits a collection window (300 ms), reads all candidates and
//! ranks them: highest (epoch, seq) first, ties by position in the config
//! (configured primary, then replicas in order), so **the replica with the
//! most applied data wins**. The best campaigns at once; a candidate of
//! rank r campaigns only if the leader is still absent after
//! window + r × 500 ms (the best may have died). Campaign = one txn:
//! `leader.create_revision == 0` and `epoch.mod_revision` unchanged since
//! read → put leader `{node, E+1}` with our lease, put epoch `E+1`. The
//! new epoch is also above any epoch this process has seen for the shard,
//! so a lost epoch key cannot reissue an epoch. Candidate keys are deleted
//! when the shard has a leader again. A process that finds a leader key of
//! one of its own nodes on someone else's lease (it restarted within the
//! TTL) does not take the role: it waits for the DELETE like everyone.
//!
//! **etcd unreachable**: roles stay as they are, no election happens,
//! local primaries stop writing when their deadline passes;
//! [`ControlStatus`] says "etcd unreachable since …" (for `/ready`).
//!
//! **Reshard** (N → 2N shards, see `reshard` and `layout`): the state
//! machine learns the new shards when the topology grows. A new shard
//! whose pair has not split has no leader key and no election; its `Roles`
//! entry mirrors the old shard's (so its nodes follow whichever node is the
//! old shard's primary now). At the pair's cutover the new shard's
//! configured primary, caught up to the held seq, takes the role with the
//! election's txn (leader absent, epoch unchanged → leader on its lease,
//! epoch E+1) where E is at least the old shard's epoch; a cutover that
//! does not commit deletes that leader key again. The commit point is
//! `P/shards/i/split-to-2N` = `{"to": 2N}` (no lease), put by the held
//! primary's process in a txn that succeeds only while that node still
//! leads shard i; every process records the split from the watch (or the
//! first read after a restart), and a campaign for old shard i whose pair
//! has not split in its view succeeds only while that key is absent, so no
//! node can lead shard i without knowing of its split. Once split, the new
//! shard is like any other.
//!
//! **Planned switchover** ([`ControlClient::promote`]): the requester puts
//! `handover {to, from_epoch}` (only if none exists and the leader is
//! unchanged). The current primary's process fences its node, waits until
//! its seq has stopped moving, and adds `seq: S`. The target's process
//! waits until its node applied S, then in one txn (leader and handover
//! unchanged) puts leader `{target, E+1}` with its own lease, epoch `E+1`,
//! and deletes the handover. If that does not happen within the handover
//! timeout the requester deletes the handover and reports a timeout, and
//! the old primary takes its role back (a txn that succeeds only if the
//! leader is still its own and removes the handover, so the target can no
//! longer win).

mod engine;
pub mod etcd;
mod lease;

use crate::log::Level;
use crate::log_at;
use crate::roles::Roles;
use crate::topology::Topology;
use etcd::EtcdError;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/corekv";
/// Default `--lease-ttl-ms`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(2);
/// Shortest lease TTL accepted (etcd grants whole seconds).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// The smallest fencing margin.
const MIN_MARGIN: Duration = Duration::from_millis(250);

/// The (epoch, seq) of the last entry a local node applied or committed,
/// by node id: how far its data goes (elections, handovers).
pub type Progress = Arc<dyn Fn(usize) -> (u64, u64) + Send + Sync>;

/// What the control plane knows of a reshard (N → 2N shards): the
/// process's layout (`layout::Layout` behind it).
pub trait ReshardView: Send + Sync {
    /// The old shard that shard `s` copies: a new shard whose pair has not
    /// split (it has no primary of its own, its nodes follow that old
    /// shard's primary); `None` for a shard that owns keys.
    fn copies(&self, s: usize) -> Option<usize>;
    /// `Some(2N)` while old shard `s` has a pair that has not split in a
    /// reshard to 2N shards.
    fn unsplit_to(&self, s: usize) -> Option<usize>;
    /// Records that old shard `s` split in the reshard to `to` shards, as
    /// etcd says (idempotent; ignored unless that reshard is under way).
    ///
    /// # Errors
    /// The record could not be written.
    fn record_split(&self, s: usize, to: usize) -> Result<(), String>;
}

/// No reshard (a control plane on its own: tools, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReshard;

impl ReshardView for NoReshard {
    fn copies(&self, _: usize) -> Option<usize> {
        None
    }
    fn unsplit_to(&self, _: usize) -> Option<usize> {
        None
    }
    fn record_split(&self, _: usize, _: usize) -> Result<(), String> {
        Ok(())
    }
}

/// How the control plane runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlConfig {
    /// etcd client URLs, tried in order on transport errors.
    pub endpoints: Vec<String>,
    /// Key prefix (`--etcd-prefix`), without a trailing slash.
    pub prefix: String,
    /// The lease TTL (`--lease-ttl-ms`).
    pub lease_ttl: Duration,
    /// How long candidates are collected before the best campaigns.
    pub collect_window: Duration,
    /// Extra wait per rank before a worse candidate campaigns anyway.
    pub rank_delay: Duration,
    /// How long a planned switchover may take.
    pub handover_timeout: Duration,
    /// A watch stream silent for longer is reconnected.
    pub watch_idle: Duration,
    /// Longest etcd call (other than lease renewals: TTL/4).
    pub request_timeout: Duration,
}

impl ControlConfig {
    /// The defaults for `endpoints`.
    #[must_use]
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
            collect_window: Duration::from_millis(300),
            rank_delay: Duration::from_millis(500),
            handover_timeout: Duration::from_secs(5),
            watch_idle: Duration::from_secs(5),
            request_timeout: Duration::from_secs(1),
        }
    }

    /// How long before etcd could let the lease expire the local primaries
    /// stop writing: max(TTL/4, 250 ms).
    #[must_use]
    pub fn margin(&self) -> Duration {
        (self.lease_ttl / 4).max(MIN_MARGIN)
    }

    /// How often the lease is renewed: TTL/4.
    #[must_use]
    pub fn renew_every(&self) -> Duration {
        self.lease_ttl / 4
    }

    /// Checks the options (the command line reports these as usage
    /// errors).
    ///
    /// # Errors
    /// No endpoint, an endpoint that is not an `http://` URL, a TTL under
    /// 1 s, a prefix that does not start with `/` or ends with one.
    pub fn validate(&self) -> Result<(), ControlError> {
        if self.endpoints.is_empty() {
            return Err(ControlError::Config("--etcd needs at least one URL".into()));
        }
        if let Some(bad) = self
            .endpoints
            .iter()
            .find(|e| !e.starts_with("http://") || e.len() <= "http://".len())
        {
            return Err(ControlError::Config(format!(
                "--etcd {bad:?}: endpoints are http://HOST:PORT URLs (TLS is not supported)"
            )));
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            return Err(ControlError::Config(format!(
                "--lease-ttl-ms {} is below the minimum of {} ms",
                self.lease_ttl.as_millis(),
                MIN_LEASE_TTL.as_millis()
            )));
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return Err(ControlError::Config(format!(
                "--etcd-prefix {:?} must start with '/' and not end with one",
                self.prefix
            )));
        }
        Ok(())
    }
}

/// Why the control plane could not start, or a switchover failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// Invalid options.
    Config(String),
    /// A control thread could not be started.
    Spawn(String),
    /// `promote` named a shard that does not exist.
    UnknownShard(usize),
    /// `promote` named a node that is not part of the shard.
    UnknownNode(usize),
    /// The shard has no primary right now (an election is under way).
    NoPrimary(usize),
    /// Another switchover of the shard is in progress.
    Busy(usize),
    /// The switchover did not complete in time; the old primary resumes.
    Timeout(String),
    /// The primary changed otherwise while the switchover ran.
    Conflict(String),
    /// etcd failed.
    Etcd(EtcdError),
    /// The control plane has stopped.
    Stopped,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => write!(f, "invalid control plane option: {e}"),
            Self::Spawn(e) => write!(f, "cannot start the control plane thread: {e}"),
            Self::UnknownShard(s) => write!(f, "no shard {s}"),
            Self::UnknownNode(n) => write!(f, "node {n} is not a node of that shard"),
            Self::NoPrimary(s) => write!(f, "shard {s} has no primary right now"),
            Self::Busy(s) => write!(f, "a switchover of shard {s} is already in progress"),
            Self::Timeout(e) => write!(f, "switchover timed out: {e}"),
            Self::Conflict(e) => write!(f, "switchover abandoned: {e}"),
            Self::Etcd(e) => e.fmt(f),
            Self::Stopped => write!(f, "the control plane has stopped"),
        }
    }
}

impl std::error::Error for ControlError {}

impl From<EtcdError> for ControlError {
    fn from(e: EtcdError) -> Self {
        Self::Etcd(e)
    }
}

/// A completed switchover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    pub shard: usize,
    /// The new primary's node id.
    pub node: usize,
    pub epoch: u64,
}

/// What the control plane reports for `/status`, `/ready` and `/metrics`
/// (share it as `Arc`; all fields are read without blocking the control
/// threads, except `last_error`).
#[derive(Debug, Default)]
pub struct ControlStatus {
    /// True while etcd answers.
    reachable: AtomicBool,
    /// Unix ms since which etcd has not answered (0: it answers).
    unreachable_since_ms: AtomicU64,
    /// Elections (and switchovers) this process won.
    pub elections_won: AtomicU64,
    /// New epochs this process observed (its own wins included).
    pub elections_observed: AtomicU64,
    /// The process's current lease id (0: none).
    pub lease_id: AtomicI64,
    /// Times a local primary was fenced (lease lost or not renewed in
    /// time, role moved away, switchover).
    pub fenced: AtomicU64,
    /// The last etcd error, with the time it happened.
    last_error: Mutex<String>,
}

impl ControlStatus {
    /// True while etcd answers.
    #[must_use]
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    /// Since when etcd has been unreachable, if it is.
    #[must_use]
    pub fn unreachable_since(&self) -> Option<SystemTime> {
        match self.unreachable_since_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// The problem `/ready` should report, if any: `etcd unreachable
    /// since DATE (N ms)`.
    #[must_use]
    pub fn ready_problem(&self) -> Option<String> {
        let since = self.unreachable_since()?;
        let for_ms = SystemTime::now()
            .duration_since(since)
            .unwrap_or_default()
            .as_millis();
        Some(format!(
            "etcd unreachable since {} ({for_ms} ms): no elections, primaries stop writing when their lease runs out",
            httpdate::fmt_http_date(since)
        ))
    }

    /// The last etcd error ("" if none).
    #[must_use]
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn record_ok(&self) {
        self.reachable.store(true, Ordering::Release);
        let since = self.unreachable_since_ms.swap(0, Ordering::AcqRel);
        if since != 0 {
            log_at!(
                Level::Info,
                "control",
                "etcd answers again after {} ms",
                unix_ms().saturating_sub(since)
            );
        }
    }

    fn record_error(&self, e: &EtcdError) {
        if e.is_transport() {
            self.reachable.store(false, Ordering::Release);
            let first = self
                .unreachable_since_ms
                .compare_exchange(0, unix_ms().max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if first {
                log_at!(
                    Level::Warn,
                    "control",
                    "{e}; no elections until it answers, local primaries stop writing when their lease runs out"
                );
            }
        }
        self.note_error(&e.to_string());
    }

    fn note_error(&self, e: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = e.to_string();
        }
    }
}

/// What the data plane keeps of the control plane (clone it into every
/// executor): the status counters and the way to ask for a switchover.
#[derive(Clone)]
pub struct ControlClient {
    cmds: flume::Sender<engine::Msg>,
    status: Arc<ControlStatus>,
}

impl fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlClient")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl ControlClient {
    /// Sends the control thread the message `make` builds around a reply
    /// channel; the channel's receiving end.
    fn ask<T>(
        &self,
        make: impl FnOnce(flume::Sender<T>) -> engine::Msg,
    ) -> Result<flume::Receiver<T>, ControlError> {
        let (reply, rx) = flume::bounded(1);
        self.cmds
            .send(make(reply))
            .map_err(|_| ControlError::Stopped)?;
        Ok(rx)
    }

    /// The status counters (for `/status`, `/ready`, `/metrics`).
    #[must_use]
    pub fn status(&self) -> &Arc<ControlStatus> {
        &self.status
    }

    /// Starts a planned switchover of `shard` to node `to` (default: the
    /// first node of the shard in config order that is not the primary)
    /// and returns the channel its outcome will arrive on; an executor
    /// awaits it with `recv_async` (never blocks).
    ///
    /// # Errors
    /// [`ControlError::Stopped`] when the control plane is gone.
    pub fn request_promote(
        &self,
        shard: usize,
        to: Option<usize>,
    ) -> Result<flume::Receiver<Result<Promoted, ControlError>>, ControlError> {
        self.ask(|reply| engine::Msg::Promote { shard, to, reply })
    }

    /// A reshard's cutover: local node `node` becomes the first primary of
    /// new shard `shard` (an etcd txn in an epoch above the old shard's);
    /// the channel its outcome arrives on (await it with `recv_async`).
    ///
    /// # Errors
    /// [`ControlError::Stopped`] when the control plane is gone.
    pub fn request_reshard_promote(
        &self,
        shard: usize,
        node: usize,
    ) -> Result<flume::Receiver<Result<Promoted, ControlError>>, ControlError> {
        self.ask(|reply| engine::Msg::ReshardPromote { shard, node, reply })
    }

    /// A reshard's commit point for old shard `shard` (with `--etcd`): its
    /// split recorded in etcd while local node `node` still leads it, then
    /// in this process's layout; every other process learns it from the
    /// watch. The channel its outcome arrives on (await it with
    /// `recv_async`).
    ///
    /// # Errors
    /// [`ControlError::Stopped`] when the control plane is gone.
    pub fn request_reshard_split(
        &self,
        shard: usize,
        node: usize,
    ) -> Result<flume::Receiver<Result<(), ControlError>>, ControlError> {
        self.ask(|reply| engine::Msg::ReshardSplit { shard, node, reply })
    }

    /// Undoes a reshard's cutover that did not commit: this process's
    /// leader key of new shard `shard` goes, and its nodes follow their old
    /// shard again. Blocks (never call it on an executor).
    ///
    /// # Errors
    /// etcd errors, a leader that changed meanwhile, a stopped control
    /// plane.
    pub fn reshard_undo(&self, shard: usize) -> Result<(), ControlError> {
        self.ask(|reply| engine::Msg::ReshardUndo { shard, reply })?
            .recv()
            .map_err(|_| ControlError::Stopped)?
    }

    /// [`ControlClient::request_promote`] and a blocking wait for the
    /// outcome (never call it on an executor).
    ///
    /// # Errors
    /// Unknown shard or node, no primary, another switchover running, etcd
    /// errors, timeout (see [`ControlError`]).
    pub fn promote(&self, shard: usize, to: Option<usize>) -> Result<Promoted, ControlError> {
        self.request_promote(shard, to)?
            .recv()
            .map_err(|_| ControlError::Stopped)?
    }
}

/// The outcome a `request_*` call of [`ControlClient`] sends back, awaited
/// without blocking (on an executor).
///
/// # Errors
/// The request's own error, or [`ControlError::Stopped`] when the control
/// plane went away before answering.
pub async fn outcome<T>(
    request: Result<flume::Receiver<Result<T, ControlError>>, ControlError>,
) -> Result<T, ControlError> {
    request?
        .recv_async()
        .await
        .map_err(|_| ControlError::Stopped)?
}

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// A running control plane (owned by the process's main thread).
/// [`ControlHandle::stop`] (or dropping it) fences the local primaries and
/// revokes the lease, so the other hosts elect at once.
pub struct ControlHandle {
    client: ControlClient,
    lease_stop: flume::Sender<bool>,
    watch_stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for ControlHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlHandle")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for ControlHandle {
    type Target = ControlClient;

    fn deref(&self) -> &ControlClient {
        &self.client
    }
}

impl ControlHandle {
    /// A clonable client for the executors.
    #[must_use]
    pub fn client(&self) -> ControlClient {
        self.client.clone()
    }

    /// Stops the control plane: fences every local primary, revokes the
    /// lease (its keys go at once, so the other hosts elect without
    /// waiting for the TTL), stops the threads.
    pub fn stop(mut self) {
        self.shutdown(true);
    }

    /// Stops the threads without revoking the lease, as a crash would
    /// (the lease runs out after its TTL; local deadlines run out on their
    /// own). For tests of failover.
    pub fn abandon(mut self) {
        self.shutdown(false);
    }

    fn shutdown(&mut self, revoke: bool) {
        let _ = self.client.cmds.send(engine::Msg::Stop);
        self.watch_stop.store(true, Ordering::Release);
        let _ = self.lease_stop.send(revoke);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown(true);
        }
    }
}

/// The shard whose nodes are named `NAME/...` (the config's shard name).
#[must_use]
pub fn shard_named(topo: &Topology, name: &str) -> Option<usize> {
    topo.nodes()
        .find(|n| n.name.split_once('/').is_some_and(|(s, _)| s == name))
        .map(|n| n.shard)
}

/// Starts the control plane's threads (lease, watch, state machine) for
/// the local nodes of `topo`; `roles` must be [`Roles::controlled`].
/// Returns at once: etcd being unreachable is not an error (the threads
/// keep trying; nothing is writable until a lease and a role exist).
///
/// # Errors
/// Invalid options ([`ControlError::Config`]) or a thread that cannot be
/// spawned.
pub fn start(
    topo: Arc<Topology>,
    roles: Arc<Roles>,
    progress: Progress,
    reshard: Arc<dyn ReshardView>,
    cfg: ControlConfig,
) -> Result<ControlHandle, ControlError> {
    cfg.validate()?;
    let status = Arc::new(ControlStatus::default());
    // Sized for the nodes a reshard may add.
    let shared = Arc::new(lease::Shared::new(crate::topology::MAX_NODES));
    let (cmds, msgs) = flume::unbounded();
    let (lease_stop, lease_stop_rx) = flume::bounded(1);
    let watch_stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let spawn_err = |e: std::io::Error| ControlError::Spawn(e.to_string());
    let lease_thread = lease::LeaseThread {
        cfg: cfg.clone(),
        roles: roles.clone(),
        topo: topo.clone(),
        status: status.clone(),
        shared: shared.clone(),
        events: cmds.clone(),
        stop: lease_stop_rx,
    };
    threads.push(
        std::thread::Builder::new()
            .name("control lease".into())
            .spawn(move || lease_thread.run())
            .map_err(spawn_err)?,
    );
    let eng = engine::Engine::new(
        cfg,
        topo,
        roles,
        progress,
        reshard,
        status.clone(),
        shared,
        cmds.clone(),
        watch_stop.clone(),
    );
    let mut handle = ControlHandle {
        client: ControlClient { cmds, status },
        lease_stop,
        watch_stop,
        threads,
    };
    match std::thread::Builder::new()
        .name("control".into())
        .spawn(move || eng.run(&msgs))
    {
        Ok(t) => handle.threads.push(t),
        Err(e) => {
            handle.shutdown(true);
            return Err(spawn_err(e));
        }
    }
    Ok(handle)
}
