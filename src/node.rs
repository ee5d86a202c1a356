//! Wiring: start-up checks, one glommio executor per local node (pinned to
//! a CPU, round-robin when there are more nodes than CPUs), mailboxes,
//! listeners, and the wait for a shutdown signal.
//!
//! Depends on every layer below. Start-up order is fixed so that nothing
//! binds a port before the whole configuration, the system limits and
//! every redb file have been checked: config → topology → preflight
//! (io_uring, `RLIMIT_MEMLOCK`) → address resolution → stores → executors
//! (each binds its listener and reports) → ready. Any failure returns an
//! error and the process exits non-zero.

use crate::api::{Api, LocalNodes};
use crate::config::{self, ConfigError};
use crate::http::client::Client;
use crate::http::conn::{self, ConnConfig, Tracker};
use crate::log::Level;
use crate::log_at;
use crate::metrics::Metrics;
use crate::protocol::Mail;
use crate::replication::{self, PrimaryLog, SeqWatch, Upstream};
use crate::router::{Mailboxes, Router};
use crate::shard::{Shard, StartError};
use crate::storage::Store;
use crate::topology::{NodeInfo, Role, Topology, TopologyError};
use futures_lite::future;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long an executor runs tasks before it polls for I/O again
/// (`--preempt-us`; glommio's default). 1 ms cut the p99 of local GETs
/// (connections yielding before their next read keep the run queue busy)
/// but 250 µs stalled forwarded requests, and runs with 1 ms saw an
/// executor fail to come up, so the default stays. See bench/README.md.
pub const DEFAULT_PREEMPT: Duration = Duration::from_millis(100);

/// How long an executor spins before it parks (`--spin-us`). Parking costs
/// a `membarrier` (an IPI to every CPU running the process) and the next
/// wake-up an eventfd write and a context switch; spinning 50 µs measured
/// +20% on forwarded GETs, but six spinning executors on two cores starve
/// each other under mixed load (the integration tests turned flaky), so
/// the default parks at once. See bench/README.md.
pub const DEFAULT_SPIN: Duration = Duration::ZERO;

/// Minimum `RLIMIT_MEMLOCK` glommio needs per executor.
const MEMLOCK_PER_EXECUTOR: u64 = 512 * 1024;

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
    /// Most writes per commit (1 disables group commit; for benchmarks).
    pub commit_batch: usize,
    /// Shared token required for writes and internal endpoints.
    pub token: Option<String>,
    /// HTTP limits and timeouts per connection.
    pub conn: ConnConfig,
    /// Largest key in bytes.
    pub max_key: usize,
    pub log_level: Level,
    /// glommio `spin_before_park` (zero: park at once).
    pub spin_before_park: Duration,
    /// redb page cache per node file.
    pub cache_bytes: usize,
    /// glommio `preempt_timer`: longest run of tasks before the executor
    /// polls for I/O again.
    pub preempt_timer: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: PathBuf::from("sharding.toml"),
            data_dir: PathBuf::from("data"),
            serve: None,
            durable: true,
            log_retention: 1_000_000,
            commit_batch: crate::shard::DEFAULT_MAX_BATCH,
            token: None,
            conn: ConnConfig::default(),
            max_key: crate::api::DEFAULT_MAX_KEY,
            log_level: Level::Info,
            spin_before_park: DEFAULT_SPIN,
            cache_bytes: crate::storage::DEFAULT_CACHE_BYTES,
            preempt_timer: DEFAULT_PREEMPT,
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
    crate::log::set_level(opts.log_level);
    // Before any thread exists, so that every thread inherits the mask and
    // SIGINT/SIGTERM reach only the signal-waiting thread.
    let signals = block_signals()?;
    let cfg = config::load(&opts.config).map_err(NodeError::Config)?;
    let topo = Arc::new(Topology::new(&cfg, opts.serve.as_deref()).map_err(NodeError::Topology)?);
    let locals: Vec<NodeInfo> = topo.local_nodes().cloned().collect();
    preflight(locals.len())?;
    let addrs = locals
        .iter()
        .map(|n| resolve(&n.address))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&opts.data_dir).map_err(|error| NodeError::DataDir {
        path: opts.data_dir.clone(),
        error,
    })?;
    let mut shards = Vec::new();
    for n in &locals {
        let path = opts.data_dir.join(format!("{}.redb", n.file_stem()));
        let storage = |error| NodeError::Storage {
            node: n.name.clone(),
            path: path.clone(),
            error: Box::new(error),
        };
        let store = Store::open_with_cache(&path, opts.durable, opts.cache_bytes)
            .map_err(|e| storage(StartError::Storage(e)))?;
        shards.push(Shard::start(store, &n.name, opts.commit_batch).map_err(storage)?);
    }
    // Listeners are bound here, after every check, with std (SO_REUSEADDR,
    // no SO_REUSEPORT): a port another process listens on fails the start,
    // while connections of an earlier run left in TIME_WAIT do not. glommio's
    // own bind would set SO_REUSEPORT and silently share a port.
    let mut listeners = Vec::new();
    for (n, addr) in locals.iter().zip(&addrs) {
        listeners.push(listen(addr).map_err(|e| NodeError::Bind {
            node: n.name.clone(),
            addr: n.address.clone(),
            error: e.to_string(),
        })?);
    }
    let mut txs: Vec<Option<flume::Sender<Mail>>> = vec![None; topo.nodes.len()];
    let mut rxs = Vec::new();
    for n in &locals {
        let (tx, rx) = flume::unbounded();
        txs[n.id] = Some(tx);
        rxs.push(rx);
    }
    let mailboxes: Mailboxes = Arc::new(txs);
    let nodes: LocalNodes = Arc::new(
        locals
            .iter()
            .zip(&shards)
            .map(|(n, s)| (n.clone(), s.stats.clone(), Arc::new(Metrics::default())))
            .collect(),
    );
    let token: Option<Arc<str>> = opts.token.as_deref().map(Arc::from);
    let cpus = allowed_cpus();
    let (events_tx, events_rx) = std::sync::mpsc::channel::<Event>();
    let mut stops = Vec::new();
    let placement = cpu_placement(&locals, &cpus);
    for (((node, shard), (mailbox, listener)), cpu) in locals
        .iter()
        .cloned()
        .zip(shards)
        .zip(rxs.into_iter().zip(listeners))
        .zip(placement)
    {
        let (stop_tx, stop_rx) = flume::bounded(1);
        stops.push(stop_tx);
        let name = node.name.clone();
        let ctx = NodeContext {
            node,
            topo: topo.clone(),
            shard,
            mailbox,
            mailboxes: mailboxes.clone(),
            nodes: nodes.clone(),
            retain: opts.log_retention,
            token: token.clone(),
            conn: opts.conn,
            max_key: opts.max_key,
            stop: stop_rx,
            spin_before_park: opts.spin_before_park,
            preempt_timer: opts.preempt_timer,
        };
        let events = events_tx.clone();
        std::thread::Builder::new()
            .name(format!("exec {name}"))
            .spawn(move || run_executor(ctx, cpu, listener, &events))
            .map_err(|e| NodeError::Executor {
                node: name,
                error: e.to_string(),
            })?;
    }
    drop(events_tx);
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..locals.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match events_rx.recv_timeout(left) {
            Ok(Event::Ready { node, cpu }) => {
                let address = &topo.nodes[node].address;
                let name = &topo.nodes[node].name;
                log_at!(
                    Level::Info,
                    name,
                    "listening on http://{address} (cpu {cpu})"
                );
            }
            Ok(Event::Failed(e)) => return Err(e),
            Ok(Event::Stopped(node)) => {
                return Err(NodeError::ExecutorDied(topo.nodes[node].name.clone()));
            }
            Err(_) => return Err(NodeError::StartTimeout),
        }
    }
    log_at!(
        Level::Info,
        "corekv",
        "ready: {} node(s) of {} shard(s), data in {}",
        locals.len(),
        topo.shard_count(),
        opts.data_dir.display()
    );
    // A watcher thread turns a signal into an event, so that an executor
    // dying and a signal arriving are waited for in one place.
    let signal_events = {
        let (tx, rx) = std::sync::mpsc::channel::<Result<i32, NodeError>>();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let _ = tx.send(wait_signal(&signals));
            })
            .map_err(NodeError::Signal)?;
        rx
    };
    loop {
        if let Ok(sig) = signal_events.try_recv() {
            let sig = sig?;
            log_at!(
                Level::Info,
                "corekv",
                "signal {sig}: draining and shutting down"
            );
            break;
        }
        match events_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Stopped(node) | Event::Ready { node, .. }) => {
                return Err(NodeError::ExecutorDied(topo.nodes[node].name.clone()));
            }
            Ok(Event::Failed(e)) => return Err(e),
            Err(_) => {}
        }
    }
    let (done_tx, done_rx) = flume::unbounded::<()>();
    for stop in &stops {
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
    Ok(())
}

/// Longest wait for requests in flight at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What executors tell the main thread.
enum Event {
    Ready { node: usize, cpu: usize },
    Failed(NodeError),
    Stopped(usize),
}

/// Everything one executor needs; `Send`, moved into its thread.
struct NodeContext {
    node: NodeInfo,
    topo: Arc<Topology>,
    shard: Shard,
    mailbox: flume::Receiver<Mail>,
    mailboxes: Mailboxes,
    nodes: LocalNodes,
    retain: u64,
    token: Option<Arc<str>>,
    conn: ConnConfig,
    max_key: usize,
    /// Shutdown request; the executor answers on the enclosed channel.
    stop: flume::Receiver<flume::Sender<()>>,
    spin_before_park: Duration,
    preempt_timer: Duration,
}

fn run_executor(
    ctx: NodeContext,
    cpu: usize,
    listener: std::net::TcpListener,
    events: &std::sync::mpsc::Sender<Event>,
) {
    let name = ctx.node.name.clone();
    let id = ctx.node.id;
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name(&name)
        // Network I/O does not use glommio's registered DMA memory.
        .io_memory(256 * 1024);
    if !ctx.spin_before_park.is_zero() {
        builder = builder.spin_before_park(ctx.spin_before_park);
    }
    if !ctx.preempt_timer.is_zero() {
        builder = builder.preempt_timer(ctx.preempt_timer);
    }
    let ex = match builder.make() {
        Ok(ex) => ex,
        Err(e) => {
            let _ = events.send(Event::Failed(NodeError::Executor {
                node: name,
                error: e.to_string(),
            }));
            return;
        }
    };
    ex.run(async move {
        // SAFETY: the fd is a bound, listening TCP socket that we own; the
        // glommio listener takes it over (and closes it).
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let _ = events.send(Event::Ready { node: id, cpu });
        serve_node(ctx, listener).await;
    });
    let _ = events.send(Event::Stopped(id));
}

async fn serve_node(ctx: NodeContext, listener: TcpListener) {
    let NodeContext {
        node,
        topo,
        shard,
        mailbox,
        mailboxes,
        nodes,
        retain,
        token,
        conn: cfg,
        max_key,
        stop,
        spin_before_park: _,
        preempt_timer: _,
    } = ctx;
    let shard = Rc::new(shard);
    let client = Rc::new(Client::new(Duration::from_secs(1), Duration::from_secs(5)));
    let (primary, seq) = match node.role {
        Role::Primary => {
            let replicas = topo
                .replicas_of(node.shard)
                .map(|r| r.name.clone())
                .collect();
            let log = Rc::new(PrimaryLog::new(shard.clone(), replicas, retain));
            glommio::spawn_local(log.clone().trim_forever()).detach();
            let seq = log.committed().clone();
            (Some(log), seq)
        }
        Role::Replica(_) => {
            let owner = topo.primary_of(node.shard);
            let upstream = match mailboxes.get(owner.id) {
                Some(Some(tx)) => Upstream::Local(tx.clone()),
                _ => Upstream::Remote {
                    client: client.clone(),
                    addr: owner.address.clone(),
                    token: token.clone(),
                },
            };
            let applied = Rc::new(SeqWatch::new(shard.stats.seq.load(Ordering::Acquire)));
            glommio::spawn_local(replication::follow(
                shard.clone(),
                applied.clone(),
                upstream,
                node.name.clone(),
            ))
            .detach();
            (None, applied)
        }
    };
    let router = Router::new(topo, node.id, mailboxes, client, token.clone());
    let api = Rc::new(Api::new(
        router,
        shard,
        primary.clone(),
        seq,
        nodes,
        token,
        max_key,
    ));
    glommio::spawn_local(drain_mailbox(api.clone(), primary, mailbox)).detach();
    let tracker = Rc::new(Tracker::default());
    let done = loop {
        let next = future::or(async { Ok(listener.accept().await) }, async {
            Err(stop.recv_async().await)
        })
        .await;
        match next {
            Ok(Ok(stream)) => {
                let api = api.clone();
                let tracker = tracker.clone();
                glommio::spawn_local(async move {
                    let metrics = api.metrics().clone();
                    if !conn::has_room(&cfg, &tracker) {
                        metrics.rejected_connections.fetch_add(1, Ordering::Relaxed);
                        conn::refuse(stream).await;
                        return;
                    }
                    metrics.open_connections.fetch_add(1, Ordering::Relaxed);
                    conn::serve(stream, cfg, &tracker, |req| {
                        let api = api.clone();
                        async move { api.handle(req).await }
                    })
                    .await;
                    metrics.open_connections.fetch_sub(1, Ordering::Relaxed);
                })
                .detach();
            }
            Ok(Err(e)) => {
                log_at!(Level::Warn, &node.name, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            Err(done) => break done.ok(),
        }
    };
    // Shutdown: stop accepting, let connections finish what they started.
    drop(listener);
    tracker.drain();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while tracker.in_flight() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if let Some(done) = done {
        let _ = done.send(());
    }
    // Keep serving forwarded requests and replication until the process exits.
    future::pending::<()>().await;
}

/// Serves requests other executors of this process send here.
async fn drain_mailbox(api: Rc<Api>, primary: Option<Rc<PrimaryLog>>, rx: flume::Receiver<Mail>) {
    while let Ok(mail) = rx.recv_async().await {
        match mail {
            Mail::Kv(req, reply) => match api.forwarded_read_now(req) {
                Ok(resp) => {
                    let _ = reply.send(resp);
                }
                Err(req) => {
                    let api = api.clone();
                    glommio::spawn_local(async move {
                        let _ = reply.send(api.handle_forwarded(req).await);
                    })
                    .detach();
                }
            },
            Mail::Pull(pull, reply) => {
                let primary = primary.clone();
                glommio::spawn_local(async move {
                    let answer = match primary {
                        Some(p) => p.serve(pull).await,
                        None => crate::protocol::PullReply::Failed(
                            "pull sent to a node that is not a primary".into(),
                        ),
                    };
                    let _ = reply.send(answer);
                })
                .detach();
            }
            Mail::Scan(scan, reply) => {
                let _ = reply.send(api.scan_local(&scan).map_err(|e| format!("{e:?}")));
            }
        }
    }
}

/// A listening socket on `addr` with a backlog of 1024.
///
/// An address in use is retried for up to 2 s: a predecessor killed with
/// SIGKILL releases its listening socket only once the kernel has torn down
/// its io_uring (asynchronously, after the process is gone).
fn listen(addr: &SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let l = loop {
        match std::net::TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other?,
        }
    };
    // SAFETY: listen on our own listening fd only raises its backlog.
    if unsafe { libc::listen(l.as_raw_fd(), 1024) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l)
}

fn resolve(addr: &str) -> Result<SocketAddr, NodeError> {
    let err = |error: String| NodeError::Address {
        addr: addr.to_string(),
        error,
    };
    addr.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        // Prefer IPv4 for names like localhost that resolve to both.
        .min_by_key(SocketAddr::is_ipv6)
        .ok_or_else(|| err("no addresses".into()))
}

/// Checks io_uring availability and raises `RLIMIT_MEMLOCK` if needed.
fn preflight(executors: usize) -> Result<(), NodeError> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        && v.trim() == "2"
    {
        return Err(NodeError::IoUring(
            "disabled by the kernel (sysctl kernel.io_uring_disabled=2)".into(),
        ));
    }
    let want = MEMLOCK_PER_EXECUTOR * executors.max(1) as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) != 0 {
            return Ok(());
        }
        if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: if lim.rlim_max == libc::RLIM_INFINITY {
                    want
                } else {
                    want.min(lim.rlim_max)
                },
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
                lim = raised;
            }
        }
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < MEMLOCK_PER_EXECUTOR {
        return Err(NodeError::MemLock {
            have: lim.rlim_cur,
            need: MEMLOCK_PER_EXECUTOR,
        });
    }
    Ok(())
}

/// The CPU of each local node: primaries first, round-robin, then
/// replicas continuing the rotation, so that primaries (which take every
/// write) spread over all CPUs before any CPU gets a second one.
fn cpu_placement(locals: &[NodeInfo], cpus: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..locals.len()).collect();
    order.sort_by_key(|&i| (locals[i].role != Role::Primary, i));
    let mut out = vec![0; locals.len()];
    for (slot, &i) in order.iter().enumerate() {
        out[i] = cpus[slot % cpus.len()];
    }
    out
}

/// CPUs this process may run on (its affinity mask), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut cpus = Vec::new();
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            for cpu in 0..libc::CPU_SETSIZE as usize {
                if libc::CPU_ISSET(cpu, &set) {
                    cpus.push(cpu);
                }
            }
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// Blocks SIGINT and SIGTERM in this thread (and every thread it spawns
/// later) so that [`wait_signal`] receives them.
fn block_signals() -> Result<libc::sigset_t, NodeError> {
    // SAFETY: sigset manipulation on a local, then pthread_sigmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(NodeError::Signal(std::io::Error::last_os_error()));
        }
        Ok(set)
    }
}

fn wait_signal(set: &libc::sigset_t) -> Result<i32, NodeError> {
    let mut sig: libc::c_int = 0;
    // SAFETY: set was initialised by block_signals.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 {
        return Err(NodeError::Signal(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(sig)
}
