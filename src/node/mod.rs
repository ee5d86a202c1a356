//! Wiring: start-up checks, one glommio executor per local node (pinned to
//! a CPU, round-robin when there are more nodes than CPUs), mailboxes,
//! listeners, and the wait for a shutdown signal.
//!
//! Depends on every layer below. Start-up order is fixed so that nothing
//! binds a port before the whole configuration, the system limits and
//! every redb file have been checked: config → topology → preflight
//! (`io_uring`, `RLIMIT_MEMLOCK`) → address resolution → stores → listeners
//! (all bound here, so a port in use fails before any executor runs) →
//! executors (each reports) → ready. Any failure returns an error and the
//! process exits non-zero, except a remote node's address that does not
//! resolve: the other host may come later, so that is a warning naming
//! the node, and `/status` lists the node as unresolved until it answers.
//! Mailboxes between executors and each node's commit queue are bounded
//! (`protocol::MAILBOX_CAPACITY`, `--commit-queue`).

// `executor`: one node's thread, executor and tasks; `system`: sockets,
// limits, CPUs and signals. This file: options, errors and the start-up
// sequence.
mod executor;
mod grow;
mod system;

use crate::api::{ApiConfig, LocalNode, LocalNodes, Prepare};
use crate::config::{self, ClusterConfig, ConfigError};
use crate::control::{self as control_plane, ControlClient, ControlConfig, ControlError};
use crate::http::client::{PeerState, Reachability};
use crate::http::conn::ConnConfig;
use crate::layout::Layout;
use crate::log::Level;
use crate::log_at;
use crate::metrics::Metrics;
use crate::nodestore::{Fence, NodeStats, NodeStore, StartError};
use crate::protocol::MAILBOX_CAPACITY;
use crate::roles::Roles;
use crate::router::{Mailboxes, Peer, PeerTable};
use crate::storage::Store;
use crate::topology::{NodeInfo, Topology, TopologyError};
use executor::{NodeContext, run_executor};
use nix::sys::signal::SigSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use system::{
    allowed_cpus, block_signals, cpu_placement, install_kick, kick, listen, preflight, resolve,
    wait_signal,
};

/// glommio's preempt timer (`--preempt-us`): the longest run of tasks
/// before an executor polls for I/O again even though tasks are still
/// runnable. corekv does not rely on it: connections wait for the next I/O
/// poll instead of yielding (see `sched`), so the run queue drains every
/// round. It is kept long on purpose: glommio 0.9 parks an executor that
/// finds this timer already expired before it ran any task (see `sched`),
/// and on an executor's first turn nothing would ever wake it again; the
/// longer the timer, the longer a thread must be descheduled for that.
/// glommio's own default is 100 ms; 1 ms and 50 µs made the hang
/// reproducible under CPU load (bench/README.md).
pub const DEFAULT_PREEMPT: Duration = Duration::from_secs(1);

/// How long an executor spins before it parks (`--spin-us`). Parking costs
/// a `membarrier` (an IPI to every CPU running the process) and the next
/// wake-up an eventfd write and a context switch; spinning 50 µs measured
/// +20% on forwarded GETs, but six spinning executors on two cores starve
/// each other under mixed load (the integration tests turned flaky), so
/// the default parks at once. See bench/README.md.
pub const DEFAULT_SPIN: Duration = Duration::ZERO;

/// How the process runs (from the command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// Addresses of the nodes this process runs; `None` = all.
    pub serve: Option<Vec<String>>,
    /// fsync every commit (off only for tests that show loss is detected).
    pub durable: bool,
    /// Replication log entries kept beyond what every replica applied.
    pub log_retention: u64,
    /// Replication log bytes kept at least (the bound is the larger of
    /// this and the data's size; see `replication::Retention`).
    pub log_retention_bytes: u64,
    /// Most writes per commit (1 disables group commit; for benchmarks).
    pub commit_batch: usize,
    /// Most jobs waiting in a node's commit queue; client writes beyond
    /// it are answered 503 (see `nodestore::DEFAULT_COMMIT_QUEUE`).
    pub commit_queue: usize,
    /// Shared token required for writes and internal endpoints.
    pub token: Option<String>,
    /// HTTP limits and timeouts per connection.
    pub conn: ConnConfig,
    /// Largest key in bytes.
    pub max_key: usize,
    /// How long a forwarded request to another host may take, connect
    /// included; also the deadline a forwarded write carries.
    pub forward_timeout: Duration,
    /// Assumed largest clock difference between hosts (see
    /// `api::ApiConfig::clock_skew`).
    pub clock_skew: Duration,
    pub log_level: Level,
    /// glommio `spin_before_park` (zero: park at once).
    pub spin_before_park: Duration,
    /// redb page cache per node file.
    pub cache_bytes: usize,
    /// Write-ahead journal per node file (0: none; see
    /// `storage::Store::attach_journal`).
    pub journal_bytes: u64,
    /// glommio `preempt_timer`: longest run of tasks before the executor
    /// polls for I/O again.
    pub preempt_timer: Duration,
    /// etcd client URLs: the control plane is on (`None`: static roles).
    pub etcd: Option<Vec<String>>,
    /// Prefix of corekv's keys in etcd.
    pub etcd_prefix: String,
    /// The control plane's lease TTL.
    pub lease_ttl: Duration,
    /// Replicas that must have applied a write before it is acknowledged
    /// (`--sync-replicas`; 0: asynchronous replication).
    pub sync_replicas: usize,
    /// The nodes of this process belong to shards a reshard is adding
    /// (`--joining`): they follow their old shards until the cutover.
    pub joining: bool,
}

impl Options {
    /// The control plane's options, when `--etcd` is given.
    #[must_use]
    pub fn control(&self) -> Option<ControlConfig> {
        let endpoints = self.etcd.clone()?;
        let mut c = ControlConfig::new(endpoints);
        c.prefix.clone_from(&self.etcd_prefix);
        c.lease_ttl = self.lease_ttl;
        Some(c)
    }
}

/// What the data plane gets from the control plane (for the executors).
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// Who is primary in which epoch, and each local node's write deadline.
    pub roles: Arc<Roles>,
    /// Status and switchovers; `None` in a static cluster.
    pub control: Option<ControlClient>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: PathBuf::from("sharding.toml"),
            data_dir: PathBuf::from("data"),
            serve: None,
            durable: true,
            log_retention: 1_000_000,
            log_retention_bytes: 64 << 20,
            commit_batch: crate::nodestore::DEFAULT_MAX_BATCH,
            commit_queue: crate::nodestore::DEFAULT_COMMIT_QUEUE,
            token: None,
            conn: ConnConfig::default(),
            max_key: crate::api::DEFAULT_MAX_KEY,
            forward_timeout: crate::api::DEFAULT_FORWARD_TIMEOUT,
            clock_skew: crate::api::DEFAULT_CLOCK_SKEW,
            log_level: Level::Info,
            spin_before_park: DEFAULT_SPIN,
            cache_bytes: crate::storage::DEFAULT_CACHE_BYTES,
            journal_bytes: 0,
            preempt_timer: DEFAULT_PREEMPT,
            etcd: None,
            etcd_prefix: crate::control::DEFAULT_PREFIX.to_string(),
            lease_ttl: crate::control::DEFAULT_LEASE_TTL,
            sync_replicas: 0,
            joining: false,
        }
    }
}

/// Why the process could not start (or keep) running.
#[derive(Debug)]
pub enum NodeError {
    Config(ConfigError),
    Topology(TopologyError),
    IoUring(String),
    MemLock {
        have: u64,
        need: u64,
    },
    Address {
        addr: String,
        error: String,
    },
    DataDir {
        path: PathBuf,
        error: std::io::Error,
    },
    Storage {
        node: String,
        path: PathBuf,
        error: Box<StartError>,
    },
    Executor {
        node: String,
        error: String,
    },
    Bind {
        node: String,
        addr: String,
        error: String,
    },
    Signal(std::io::Error),
    StartTimeout,
    /// The etcd control plane could not start.
    Control(ControlError),
    /// `--sync-replicas` asks for more replicas than `shard` has.
    SyncReplicas {
        wanted: usize,
        shard: String,
        replicas: usize,
    },
    /// An executor stopped while the process was running.
    ExecutorDied(String),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
            Self::Topology(e) => e.fmt(f),
            Self::IoUring(why) => write!(f, "io_uring is not usable: {why}"),
            Self::MemLock { have, need } => write!(
                f,
                "RLIMIT_MEMLOCK is {} KiB but glommio needs at least {} KiB; raise it (e.g. `ulimit -l {}` or LimitMEMLOCK= in a systemd unit)",
                have / 1024,
                need / 1024,
                need / 1024
            ),
            Self::Address { addr, error } => write!(f, "cannot resolve address {addr}: {error}"),
            Self::DataDir { path, error } => {
                write!(
                    f,
                    "cannot create data directory {}: {error}",
                    path.display()
                )
            }
            Self::Storage { node, path, error } => {
                write!(f, "{node}: cannot open {}: {error}", path.display())
            }
            Self::Executor { node, error } => write!(
                f,
                "{node}: cannot start its glommio executor: {error} (glommio needs io_uring and RLIMIT_MEMLOCK >= 512 KiB)"
            ),
            Self::Bind { node, addr, error } => {
                write!(f, "{node}: cannot listen on {addr}: {error}")
            }
            Self::Signal(e) => write!(f, "cannot wait for signals: {e}"),
            Self::StartTimeout => write!(f, "executors did not come up within 30 s"),
            Self::Control(e) => e.fmt(f),
            Self::SyncReplicas {
                wanted,
                shard,
                replicas,
            } => write!(
                f,
                "--sync-replicas {wanted}: {shard}'s shard has only {replicas} replica(s); no write could ever be acknowledged"
            ),
            Self::ExecutorDied(node) => write!(f, "{node}: executor stopped unexpectedly"),
        }
    }
}

impl std::error::Error for NodeError {}

/// Runs the local nodes until SIGINT or SIGTERM, then shuts down
/// gracefully: stop accepting, finish requests in flight, exit.
///
/// # Errors
/// Any start-up failure (see the module doc for the order of checks).
pub fn run(opts: &Options) -> Result<(), NodeError> {
    crate::log::install(opts.log_level);
    // Before any thread exists, so that every thread inherits the mask and
    // SIGINT/SIGTERM reach only the signal-waiting thread.
    let signals = block_signals()?;
    install_kick()?;
    let cfg = config::load(&opts.config).map_err(NodeError::Config)?;
    // A reshard's layout stored in the data directory wins over the
    // older layout of --config (see `grow`).
    if opts.joining {
        grow::join(opts, &cfg)?;
    }
    let (cfg, stored) = grow::effective_layout(opts, cfg)?;
    let topo = Arc::new(Topology::new(&cfg, opts.serve.as_deref()).map_err(NodeError::Topology)?);
    let layout = Arc::new(Layout::open(
        &opts.data_dir,
        topo.shard_count(),
        stored.clone(),
    ));
    check_sync_replicas(&cfg, opts.sync_replicas)?;
    let locals: Vec<NodeInfo> = topo.local_nodes().cloned().collect();
    preflight(locals.len())?;
    let addrs = locals
        .iter()
        .map(|n| resolve(&n.address))
        .collect::<Result<Vec<_>, _>>()?;
    let reach = Arc::new(check_remotes(&topo));
    // Who is primary of each shard: the configuration's primaries for ever
    // in a static cluster; with `--etcd`, nobody until the control plane
    // (started below, once the stores are open) says so.
    let roles = Arc::new(if opts.control().is_some() {
        Roles::controlled(&topo)
    } else {
        Roles::fixed(&topo)
    });
    if let Some(stored) = &stored {
        grow::follow_unsplit(&roles, &topo, stored);
    }
    let stores = open_stores(opts, &locals, &roles, &layout)?;
    let listeners = bind_listeners(&locals, &addrs)?;
    let nodes: LocalNodes = Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new()));
    let (plane, control) = start_control(opts, &topo, roles, &layout, &nodes, &stores)?;
    // The executors and the signal watcher (started after start-up, with
    // `events_tx`) report here, so that an executor dying and a signal
    // arriving are waited for in one place.
    let (events_tx, events_rx) = std::sync::mpsc::channel::<Event>();
    let shared = Shared {
        topo: topo.clone(),
        plane,
        layout,
        reach,
        mailboxes: Arc::new(PeerTable::new()),
        nodes,
        prepare: grow::prepare_sender(&events_tx),
    };
    let (contexts, mut stops) = node_contexts(opts, &shared, &locals, stores);
    let placement = cpu_placement(&locals, &allowed_cpus());
    let mut threads = spawn_executors(contexts, listeners, placement, &events_tx)?;
    let mut stash = Vec::new();
    await_ready(&topo, &events_rx, &threads, &mut stash)?;
    log_at!(
        Level::Info,
        "corekv",
        "ready: {} node(s) of {} shard(s), data in {}",
        locals.len(),
        topo.shard_count(),
        opts.data_dir.display()
    );
    let grower = grow::Grower {
        opts,
        shared: &shared,
        events: &events_tx,
    };
    let result = wait_for_signal(
        &grower,
        signals,
        (&events_rx, stash),
        &mut threads,
        &mut stops,
    );
    shut_down(control, &stops);
    result
}

/// Refuses `--sync-replicas` larger than some shard's replica count in
/// `cfg` (at start-up, and for a reshard's new layout): no write to that
/// shard could ever be acknowledged.
fn check_sync_replicas(cfg: &ClusterConfig, sync_replicas: usize) -> Result<(), NodeError> {
    if let Some(s) = cfg.shards.iter().find(|s| s.replicas.len() < sync_replicas) {
        return Err(NodeError::SyncReplicas {
            wanted: sync_replicas,
            shard: format!("{}/primary", s.name),
            replicas: s.replicas.len(),
        });
    }
    Ok(())
}

/// Creates the data directory, then opens each local node's redb file and
/// starts its committer, fenced by `roles`; in the order of `locals`.
fn open_stores(
    opts: &Options,
    locals: &[NodeInfo],
    roles: &Arc<Roles>,
    layout: &Arc<Layout>,
) -> Result<Vec<NodeStore>, NodeError> {
    std::fs::create_dir_all(&opts.data_dir).map_err(|error| NodeError::DataDir {
        path: opts.data_dir.clone(),
        error,
    })?;
    let mut stores = Vec::new();
    for n in locals {
        let path = opts.data_dir.join(format!("{}.redb", n.file_stem()));
        let storage = |error| NodeError::Storage {
            node: n.name.clone(),
            path: path.clone(),
            error: Box::new(error),
        };
        let open = || Store::open_with_cache(&path, opts.durable, opts.cache_bytes);
        let store = match open() {
            Ok(store) => store,
            // A node of a reshard's new shard that has not split holds only
            // a copy of its old shard (re-seeded from it on start): a file
            // it cannot open (a kill -9 while the file was being created)
            // is removed and the copy starts again.
            Err(e) if path.exists() && layout.placement().copies(n.shard).is_some() => {
                let old = layout.placement().copies(n.shard).unwrap_or_default();
                log_at!(
                    Level::Warn,
                    &n.name,
                    "cannot open {} ({e}); it only copies shard {old} for a reshard: removing it and copying again",
                    path.display()
                );
                std::fs::remove_file(&path).map_err(|e| storage(StartError::Storage(e.into())))?;
                open().map_err(|e| storage(StartError::Storage(e)))?
            }
            Err(e) => return Err(storage(StartError::Storage(e))),
        };
        let mut store = store;
        let replayed = store
            .attach_journal(opts.journal_bytes)
            .map_err(|e| storage(StartError::Storage(e)))?;
        if replayed > 0 {
            log_at!(
                Level::Info,
                &n.name,
                "replayed {replayed} journaled writes past the last durable commit"
            );
        }
        stores.push(
            NodeStore::start(
                store,
                &n.name,
                opts.commit_batch,
                opts.commit_queue,
                Fence::new(roles.clone(), layout.clone(), n.id, n.shard),
            )
            .map_err(storage)?,
        );
    }
    Ok(stores)
}

/// Binds each local node's listener.
///
/// Listeners are bound here, after every check, with std (`SO_REUSEADDR`,
/// no `SO_REUSEPORT`): a port another process listens on fails the start,
/// while connections of an earlier run left in `TIME_WAIT` do not. glommio's
/// own bind would set `SO_REUSEPORT` and silently share a port.
fn bind_listeners(
    locals: &[NodeInfo],
    addrs: &[SocketAddr],
) -> Result<Vec<std::net::TcpListener>, NodeError> {
    let mut listeners = Vec::new();
    for (n, addr) in locals.iter().zip(addrs) {
        listeners.push(listen(addr).map_err(|e| NodeError::Bind {
            node: n.name.clone(),
            addr: n.address.clone(),
            error: e.to_string(),
        })?);
    }
    Ok(listeners)
}

/// Sends a shutdown request to one executor; it answers on the enclosed
/// channel once drained.
type Stop = flume::Sender<flume::Sender<()>>;

/// Everything each local node's executor needs, in the order of the local
/// nodes: its store, its mailbox (and every local node's sender), the
/// shared tables and settings, and the receiving end of its [`Stop`].
fn node_contexts(
    opts: &Options,
    shared: &Shared,
    locals: &[NodeInfo],
    stores: Vec<NodeStore>,
) -> (Vec<NodeContext>, Vec<Stop>) {
    let mut rxs = Vec::new();
    for (n, shard) in locals.iter().zip(&stores) {
        let (tx, rx) = flume::bounded(MAILBOX_CAPACITY);
        shared
            .mailboxes
            .insert(n.id, Peer::new(tx, shard.reader_parts()));
        rxs.push(rx);
    }
    let added: Vec<LocalNode> = locals
        .iter()
        .zip(&stores)
        .map(|(n, s)| (n.clone(), s.stats.clone(), Arc::new(Metrics::default())))
        .collect();
    shared.nodes.rcu(|old| {
        let mut all = Vec::clone(old);
        all.extend(added.iter().cloned());
        all
    });
    let (topo, plane, reach) = (&shared.topo, &shared.plane, &shared.reach);
    let (mailboxes, nodes) = (&shared.mailboxes, &shared.nodes);
    let token: Option<Arc<str>> = opts.token.as_deref().map(Arc::from);
    let mut contexts = Vec::new();
    let mut stops = Vec::new();
    for ((node, shard), mailbox) in locals.iter().cloned().zip(stores).zip(rxs) {
        let (stop_tx, stop_rx) = flume::bounded(1);
        stops.push(stop_tx);
        contexts.push(NodeContext {
            node,
            topo: topo.clone(),
            roles: plane.roles.clone(),
            control: plane.control.clone(),
            layout: shared.layout.clone(),
            prepare: shared.prepare.clone(),
            shard,
            mailbox,
            mailboxes: mailboxes.clone(),
            reach: reach.clone(),
            nodes: nodes.clone(),
            retain: crate::replication::Retention {
                entries: opts.log_retention,
                bytes: opts.log_retention_bytes,
            },
            token: token.clone(),
            conn: opts.conn,
            api: ApiConfig {
                max_key: opts.max_key,
                clock_skew: opts.clock_skew,
                sync_replicas: opts.sync_replicas,
                sync_timeout: opts.forward_timeout,
            },
            forward_timeout: opts.forward_timeout,
            stop: stop_rx,
            spin_before_park: opts.spin_before_park,
            preempt_timer: opts.preempt_timer,
        });
    }
    (contexts, stops)
}

/// Starts one thread per local node that runs its executor on its CPU;
/// returns each thread with its node's id.
fn spawn_executors(
    contexts: Vec<NodeContext>,
    listeners: Vec<std::net::TcpListener>,
    placement: Vec<usize>,
    events: &std::sync::mpsc::Sender<Event>,
) -> Result<Vec<(usize, std::thread::JoinHandle<()>)>, NodeError> {
    let mut threads = Vec::new();
    for ((ctx, listener), cpu) in contexts.into_iter().zip(listeners).zip(placement) {
        let name = ctx.node.name.clone();
        let events = events.clone();
        let id = ctx.node.id;
        let thread = std::thread::Builder::new()
            .name(format!("exec {name}"))
            .spawn(move || run_executor(ctx, cpu, listener, &events))
            .map_err(|e| NodeError::Executor {
                node: name,
                error: e.to_string(),
            })?;
        threads.push((id, thread));
    }
    Ok(threads)
}

/// Waits for SIGINT, SIGTERM or SIGHUP; an executor that stops or fails
/// first is an error.
///
/// A watcher thread turns a signal into an event on `events_tx` (the last
/// sender this thread holds: without it the channel would close once every
/// executor has).
fn wait_for_signal(
    grower: &grow::Grower<'_>,
    signals: SigSet,
    (events, mut stash): (&std::sync::mpsc::Receiver<Event>, Vec<Event>),
    threads: &mut Vec<(usize, std::thread::JoinHandle<()>)>,
    stops: &mut Vec<Stop>,
) -> Result<(), NodeError> {
    let events_tx = grower.events.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let _ = events_tx.send(Event::Signal(wait_signal(&signals)));
        })
        .map_err(NodeError::Signal)?;
    let topo = &grower.shared.topo;
    loop {
        let next = if stash.is_empty() {
            events.recv()
        } else {
            Ok(stash.remove(0))
        };
        match next {
            Ok(Event::Signal(sig)) => {
                let sig = sig?;
                log_at!(
                    Level::Info,
                    "corekv",
                    "signal {sig}: draining and shutting down"
                );
                return Ok(());
            }
            Ok(Event::Prepare(text, reply)) => {
                let started = grower.prepare(&text, events, &mut stash);
                let answer = match started {
                    Ok((mut new_threads, mut new_stops)) => {
                        threads.append(&mut new_threads);
                        stops.append(&mut new_stops);
                        Ok(())
                    }
                    Err(grow::GrowError::Refused(why)) => Err(why),
                    Err(grow::GrowError::Fatal(e)) => return Err(e),
                };
                let _ = reply.send(answer);
            }
            Ok(Event::Stopped(node) | Event::Running(node) | Event::Ready { node, .. }) => {
                return Err(NodeError::ExecutorDied(node_name(topo, node)));
            }
            Ok(Event::Failed(e)) => return Err(e),
            Err(_) => return Err(NodeError::ExecutorDied("every executor".into())),
        }
    }
}

/// A planned stop: the local primaries stop writing and the lease is
/// revoked first, so the other hosts elect while this one drains; then
/// every executor drains, for at most the grace period.
fn shut_down(control: Option<control_plane::ControlHandle>, stops: &[Stop]) {
    if let Some(c) = control {
        c.stop();
    }
    let (done_tx, done_rx) = flume::unbounded::<()>();
    for stop in stops {
        let _ = stop.send(done_tx.clone());
    }
    let deadline = Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(1);
    for _ in 0..stops.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            log_at!(Level::Warn, "corekv", "shutdown grace period over; exiting");
            break;
        }
    }
    log_at!(Level::Info, "corekv", "stopped");
}

/// The roles (fixed, or moved by etcd with `--etcd`) and, with `--etcd`,
/// the running control plane; its threads start here.
fn start_control(
    opts: &Options,
    topo: &Arc<Topology>,
    roles: Arc<Roles>,
    layout: &Arc<Layout>,
    nodes: &LocalNodes,
    shards: &[NodeStore],
) -> Result<(ControlPlane, Option<control_plane::ControlHandle>), NodeError> {
    let Some(cfg) = opts.control() else {
        let plane = ControlPlane {
            roles,
            control: None,
        };
        return Ok((plane, None));
    };
    let mut stats = vec![None; topo.node_count()];
    for (n, s) in topo.local_nodes().zip(shards) {
        stats[n.id] = Some(s.stats.clone());
    }
    // (epoch, seq) of the last entry each local node applied: the nodes
    // of start-up, then those a reshard started (in `nodes` before their
    // executors run).
    let nodes = nodes.clone();
    let progress: control_plane::Progress = Arc::new(move |node| {
        let read = |s: &NodeStats| {
            (
                s.epoch.load(std::sync::atomic::Ordering::Acquire),
                s.seq.load(std::sync::atomic::Ordering::Acquire),
            )
        };
        match stats.get(node).and_then(Option::as_ref) {
            Some(s) => read(s),
            None => nodes
                .load()
                .iter()
                .find(|(n, _, _)| n.id == node)
                .map_or((0, 0), |(_, s, _)| read(s)),
        }
    });
    let reshard = Arc::new(LayoutView(layout.clone()));
    let handle = control_plane::start(topo.clone(), roles.clone(), progress, reshard, cfg)
        .map_err(NodeError::Control)?;
    log_at!(
        Level::Info,
        "corekv",
        "control plane: etcd at {}",
        opts.etcd.as_deref().unwrap_or_default().join(",")
    );
    let plane = ControlPlane {
        roles,
        control: Some(handle.client()),
    };
    Ok((plane, Some(handle)))
}

/// The layout as the control plane sees a reshard (see
/// `control::ReshardView`).
struct LayoutView(Arc<Layout>);

impl control_plane::ReshardView for LayoutView {
    fn copies(&self, s: usize) -> Option<usize> {
        self.0.placement().copies(s)
    }

    fn unsplit_to(&self, s: usize) -> Option<usize> {
        // The new shard `s + N` of a reshard to 2N shards.
        let new = self.0.placement().follows(s)?;
        Some(2 * (new - s))
    }

    fn record_split(&self, s: usize, to: usize) -> Result<(), String> {
        if self.unsplit_to(s) != Some(to) {
            return Ok(());
        }
        self.0.set_split(s).map_err(|e| e.0)
    }
}

/// The reachability table of every node on another host. Each address is
/// resolved once here: one that does not resolve does not stop the start
/// (the other host may come later, or DNS may catch up) but is logged as a
/// warning naming the node, and shown as `unresolved` in `/status`.
fn check_remotes(topo: &Topology) -> Reachability {
    let remotes: Vec<&NodeInfo> = topo.nodes().filter(|n| !n.local).collect();
    let reach = Reachability::new(remotes.iter().map(|n| n.address.clone()));
    for n in remotes {
        if let Err(e) = resolve(&n.address) {
            log_at!(
                Level::Warn,
                "corekv",
                "remote node {} at {} cannot be resolved ({e}); requests for its shard will get 503 until it resolves",
                n.name,
                n.address
            );
            reach.record(&n.address, PeerState::Unresolved, &e.to_string());
        }
    }
    reach
}

/// Longest wait for requests in flight at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long an executor may take from entering its run loop to running
/// its first task before the main thread kicks it (and again each period).
const KICK_AFTER: Duration = Duration::from_millis(200);

/// Waits until every executor reports that it serves, kicking those that
/// entered their run loop but have not run their first task: glommio can
/// park an executor on its first turn with that task still queued (see
/// `sched`), and only an outside wake-up gets it going.
fn await_ready(
    topo: &Topology,
    events: &std::sync::mpsc::Receiver<Event>,
    threads: &[(usize, std::thread::JoinHandle<()>)],
    stash: &mut Vec<Event>,
) -> Result<(), NodeError> {
    use std::os::unix::thread::JoinHandleExt;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut running: Vec<(usize, Instant)> = Vec::new();
    let mut ready = 0;
    while ready < threads.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NodeError::StartTimeout);
        }
        match events.recv_timeout(left.min(KICK_AFTER / 2)) {
            Ok(Event::Running(node)) => running.push((node, Instant::now())),
            Ok(Event::Ready { node, cpu }) => {
                running.retain(|(n, _)| *n != node);
                ready += 1;
                let (address, name) = topo
                    .node(node)
                    .map_or(("?", "?"), |n| (n.address.as_str(), n.name.as_str()));
                log_at!(
                    Level::Info,
                    name,
                    "listening on http://{address} (cpu {cpu})"
                );
            }
            Ok(Event::Failed(e)) => return Err(e),
            Ok(Event::Stopped(node)) => {
                return Err(NodeError::ExecutorDied(node_name(topo, node)));
            }
            // The signal watcher starts after start-up; a signal that came
            // earlier stays pending until it waits.
            // A signal or a reshard request that comes while nodes start
            // is handled once they run.
            Ok(e @ (Event::Signal(_) | Event::Prepare(..))) => stash.push(e),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(NodeError::StartTimeout);
            }
        }
        for (node, since) in &mut running {
            if since.elapsed() >= KICK_AFTER
                && let Some((_, thread)) = threads.iter().find(|(n, _)| n == node)
            {
                log_at!(
                    Level::Debug,
                    &node_name(topo, *node),
                    "executor has not run its first task after {} ms; kicking it",
                    KICK_AFTER.as_millis()
                );
                kick(thread.as_pthread_t());
                *since = Instant::now();
            }
        }
    }
    Ok(())
}

/// What executors (and the signal watcher) tell the main thread.
enum Event {
    /// SIGINT, SIGTERM or SIGHUP arrived (or waiting for them failed).
    Signal(Result<i32, NodeError>),
    /// The executor is about to enter its run loop.
    Running(usize),
    Ready {
        node: usize,
        cpu: usize,
    },
    Failed(NodeError),
    Stopped(usize),
    /// A reshard asks this process to start the new layout's nodes
    /// (`POST /admin/reshard/prepare`); the TOML text of the new layout.
    Prepare(String, flume::Sender<Result<(), String>>),
}

/// The tables every executor shares, kept by the main thread so that a
/// reshard can add nodes to them.
struct Shared {
    topo: Arc<Topology>,
    plane: ControlPlane,
    layout: Arc<Layout>,
    reach: Arc<Reachability>,
    mailboxes: Mailboxes,
    nodes: LocalNodes,
    prepare: Prepare,
}

/// The name of node `id`, for messages.
fn node_name(topo: &Topology, id: usize) -> String {
    topo.node(id)
        .map_or_else(|| format!("node {id}"), |n| n.name.clone())
}
