//! One node's executor: its thread, its glommio `LocalExecutor` (pinned to
//! a CPU), the node's tasks (replication, log trimming, the mailbox of
//! requests from other executors, a reshard's purge) and its accept loop
//! with graceful drain. A node's role follows `Roles`: with a control
//! plane, and during a reshard (a new shard's nodes follow their old shard
//! until the cutover).
//!
//! Depends on `api`, `replication`, `router`, `nodestore`, `layout`,
//! `http::conn`.

use super::{Event, NodeError, SHUTDOWN_GRACE};
use crate::api::{Api, ApiConfig, LocalNodes, Prepare};
use crate::control::ControlClient;
use crate::http::client::{Client, Reachability};
use crate::http::conn::{self, ConnConfig, Tracker};
use crate::layout::Layout;
use crate::log::Level;
use crate::log_at;
use crate::nodestore::NodeStore;
use crate::protocol::Mail;
use crate::replication::{self, PrimaryLog, Retention, SeqWatch, Upstream};
use crate::roles::Roles;
use crate::router::{Mailboxes, Router};
use crate::sched::NextPoll;
use crate::topology::{NodeInfo, Topology};
use futures_lite::future;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement, Task};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Everything one executor needs; `Send`, moved into its thread.
pub(super) struct NodeContext {
    pub(super) node: NodeInfo,
    pub(super) topo: Arc<Topology>,
    pub(super) roles: Arc<Roles>,
    /// The control plane's client (`--etcd`); `None` in a static cluster.
    pub(super) control: Option<ControlClient>,
    /// Which shard owns which key (moves in a reshard).
    pub(super) layout: Arc<Layout>,
    /// Hands a reshard's prepare request to the main thread.
    pub(super) prepare: Prepare,
    pub(super) shard: NodeStore,
    pub(super) mailbox: flume::Receiver<Mail>,
    pub(super) mailboxes: Mailboxes,
    /// Reachability of the nodes on other hosts (shared, for `/status`).
    pub(super) reach: Arc<Reachability>,
    pub(super) nodes: LocalNodes,
    pub(super) retain: crate::replication::Retention,
    pub(super) token: Option<Arc<str>>,
    pub(super) conn: ConnConfig,
    pub(super) api: ApiConfig,
    /// Longest exchange with another host (`--forward-timeout-ms`).
    pub(super) forward_timeout: Duration,
    /// Shutdown request; the executor answers on the enclosed channel.
    pub(super) stop: flume::Receiver<flume::Sender<()>>,
    pub(super) spin_before_park: Duration,
    pub(super) preempt_timer: Duration,
}

pub(super) fn run_executor(
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
    // From here on the main thread may kick this thread (see `system::kick`).
    let _ = events.send(Event::Running(id));
    ex.run(async move {
        // SAFETY: the fd is a bound, listening TCP socket that we own; the
        // glommio listener takes it over (and closes it).
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let tracker = match Tracker::new() {
            Ok(t) => Rc::new(t),
            Err(e) => {
                let _ = events.send(Event::Failed(NodeError::Executor {
                    node: name,
                    error: format!("cannot create an epoll instance: {e}"),
                }));
                return;
            }
        };
        let _ = events.send(Event::Ready { node: id, cpu });
        serve_node(ctx, listener, tracker).await;
    });
    let _ = events.send(Event::Stopped(id));
}

/// The node's life on its executor: start its replication role, build its
/// API, serve connections until asked to stop, drain, then keep serving
/// mails and replication until the process exits.
async fn serve_node(ctx: NodeContext, listener: TcpListener, tracker: Rc<Tracker>) {
    let NodeContext {
        node,
        topo,
        roles,
        control,
        layout,
        prepare,
        shard,
        mailbox,
        mailboxes,
        reach,
        nodes,
        retain,
        token,
        conn: cfg,
        api: api_config,
        forward_timeout,
        stop,
        spin_before_park: _,
        preempt_timer: _,
    } = ctx;
    let shard = Rc::new(shard);
    let client =
        Rc::new(Client::new(Duration::from_secs(1), forward_timeout).with_reachability(reach));
    let seq = Rc::new(SeqWatch::new(shard.stats.clone()));
    let router = Router::new(
        (topo.clone(), roles.clone(), layout.clone()),
        node.id,
        mailboxes.clone(),
        client.clone(),
        token.clone(),
    );
    let api = Rc::new(
        Api::new(
            router,
            shard.clone(),
            seq.clone(),
            nodes,
            token.clone(),
            api_config,
        )
        .with_control(control)
        .with_prepare(prepare),
    );
    glommio::spawn_local(crate::api::reshard::purge_forever(
        api.clone(),
        shard.clone(),
    ))
    .detach();
    let duty = Duty {
        api: api.clone(),
        layout,
        shard,
        seq,
        node: node.clone(),
        topo,
        roles,
        mailboxes,
        client,
        token,
        retain,
        sync_replicas: api_config.sync_replicas,
    };
    glommio::spawn_local(duty.follow_roles()).detach();
    glommio::spawn_local(drain_mailbox(
        api.clone(),
        mailbox,
        tracker.next_poll().clone(),
    ))
    .detach();
    let done = accept_until_stopped(&listener, &stop, &api, &tracker, cfg, &node.name).await;
    // Shutdown: stop accepting, let connections finish what they started.
    drop(listener);
    drain_connections(&tracker).await;
    if let Some(done) = done {
        let _ = done.send(());
    }
    // Keep serving forwarded requests and replication until the process exits.
    future::pending::<()>().await;
}

/// How often a node checks whether its role moved (only with a control
/// plane; a static cluster sets its roles once).
const ROLE_CHECK: Duration = Duration::from_millis(10);

/// What a node does for its shard right now, with the tasks doing it.
enum Mode {
    Idle,
    /// Primary in `epoch`: its log serves pulls and is trimmed by `trim`.
    Primary {
        epoch: u64,
        trim: Task<()>,
    },
    /// Replica following node `of`.
    Replica {
        of: usize,
        follow: Task<()>,
    },
}

/// A node's replication role, kept in line with [`Roles`]: becomes the
/// primary (stops following, opens its log to pulls, takes writes) or a
/// replica of the current primary (stops serving its log, follows) as the
/// control plane moves the role; in a static cluster it takes the
/// configured role once.
struct Duty {
    api: Rc<Api>,
    /// A reshard's new shards follow an old shard until their cutover.
    layout: Arc<Layout>,
    shard: Rc<NodeStore>,
    seq: Rc<SeqWatch>,
    node: NodeInfo,
    topo: Arc<Topology>,
    roles: Arc<Roles>,
    mailboxes: Mailboxes,
    client: Rc<Client>,
    token: Option<Arc<str>>,
    retain: Retention,
    /// `--sync-replicas`.
    sync_replicas: usize,
}

impl Duty {
    async fn follow_roles(self) {
        let mut mode = Mode::Idle;
        let mut seen = 0;
        loop {
            let generation = self.roles.generation();
            if generation != seen {
                seen = generation;
                mode = self.switch(mode).await;
            }
            if !self.roles.is_controlled() && !self.layout.resharding() {
                // Static roles change only in a reshard: keep the tasks
                // running.
                if let Mode::Primary { trim, .. } = mode {
                    trim.detach();
                } else if let Mode::Replica { follow, .. } = mode {
                    follow.detach();
                }
                return;
            }
            glommio::timer::sleep(ROLE_CHECK).await;
        }
    }

    /// Moves from `mode` to what [`Roles`] says now.
    async fn switch(&self, mode: Mode) -> Mode {
        let want = self.roles.primary(self.node.shard);
        match (mode, want) {
            (Mode::Primary { epoch, trim }, Some((p, e))) if p == self.node.id => {
                if e != epoch {
                    log_at!(Level::Info, &self.node.name, "primary, now in epoch {e}");
                }
                Mode::Primary { epoch: e, trim }
            }
            (Mode::Replica { of, follow }, Some((p, _))) if p == of && p != self.node.id => {
                Mode::Replica { of, follow }
            }
            (Mode::Replica { of, follow }, None) => Mode::Replica { of, follow },
            (mode, want) => {
                self.stop(mode).await;
                match want {
                    Some((p, e)) if p == self.node.id => self.start_primary(e),
                    Some((p, _)) => self.start_replica(p),
                    None => Mode::Idle,
                }
            }
        }
    }

    async fn stop(&self, mode: Mode) {
        match mode {
            Mode::Idle => {}
            Mode::Primary { trim, .. } => {
                self.api.set_primary_log(None);
                trim.cancel().await;
                log_at!(Level::Info, &self.node.name, "no longer the primary");
            }
            Mode::Replica { follow, .. } => {
                follow.cancel().await;
            }
        }
    }

    /// Opens the node's log to pulls (every other node of the shard is a
    /// replica of it now) and trims it in the background.
    fn start_primary(&self, epoch: u64) -> Mode {
        let replicas = self
            .topo
            .nodes()
            .filter(|n| n.shard == self.node.shard && n.id != self.node.id)
            .map(|n| n.name.clone())
            .collect();
        // During a reshard, the new shard paired with this one follows it
        // until the cutover.
        let (topo, layout, shard) = (self.topo.clone(), self.layout.clone(), self.node.shard);
        let followers = Box::new(move |name: &str| {
            let node = topo.nodes().find(|n| n.name == name)?;
            let follows = layout.placement().follows(shard);
            Some(node.shard != shard && follows == Some(node.shard))
        });
        let log = Rc::new(
            PrimaryLog::new(
                self.shard.clone(),
                self.seq.clone(),
                replicas,
                self.retain,
                self.sync_replicas,
            )
            .with_followers(followers),
        );
        self.api.set_primary_log(Some(log.clone()));
        if self.roles.is_controlled() {
            log_at!(Level::Info, &self.node.name, "primary in epoch {epoch}");
        }
        Mode::Primary {
            epoch,
            trim: glommio::spawn_local(log.trim_forever()),
        }
    }

    /// Follows node `of`: its mailbox when it runs in this process, else
    /// HTTP.
    fn start_replica(&self, of: usize) -> Mode {
        let Some(owner) = self.topo.node(of) else {
            return Mode::Idle;
        };
        let upstream = match self.mailboxes.get(of) {
            Some(peer) => Upstream::Local(peer.mail.clone()),
            _ => Upstream::Remote {
                client: self.client.clone(),
                addr: owner.address.clone(),
                token: self.token.clone(),
            },
        };
        if self.roles.is_controlled() {
            log_at!(Level::Info, &self.node.name, "replica of {}", owner.name);
        }
        let follow = glommio::spawn_local(replication::follow(
            self.shard.clone(),
            self.seq.clone(),
            upstream,
            self.node.name.clone(),
            self.retain,
            if self.sync_replicas > 0 {
                Duration::ZERO
            } else {
                replication::APPLY_LINGER
            },
        ));
        Mode::Replica { of, follow }
    }
}

/// Accepts connections, each served on its own task, until a stop request
/// arrives; returns the channel to answer it on.
async fn accept_until_stopped(
    listener: &TcpListener,
    stop: &flume::Receiver<flume::Sender<()>>,
    api: &Rc<Api>,
    tracker: &Rc<Tracker>,
    cfg: ConnConfig,
    name: &str,
) -> Option<flume::Sender<()>> {
    loop {
        let next = future::or(async { Ok(listener.accept().await) }, async {
            Err(stop.recv_async().await)
        })
        .await;
        match next {
            Ok(Ok(stream)) => {
                glommio::spawn_local(serve_connection(stream, api.clone(), tracker.clone(), cfg))
                    .detach();
            }
            Ok(Err(e)) => {
                log_at!(Level::Warn, name, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            Err(done) => break done.ok(),
        }
    }
}

/// One client connection: refused with 503 when the executor has no room,
/// else served until it closes; counted in the metrics either way.
async fn serve_connection(
    stream: glommio::net::TcpStream,
    api: Rc<Api>,
    tracker: Rc<Tracker>,
    cfg: ConnConfig,
) {
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
}

/// Tells connections to close after their current request and waits for
/// them, up to [`SHUTDOWN_GRACE`].
async fn drain_connections(tracker: &Tracker) {
    tracker.drain();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while tracker.in_flight() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Mails served in a row before the mailbox lets the executor poll for I/O
/// (a mailbox that never runs dry must not starve the connections).
const MAILS_PER_ROUND: u32 = 64;

/// Serves requests other executors of this process send here.
async fn drain_mailbox(api: Rc<Api>, rx: flume::Receiver<Mail>, next_poll: Rc<NextPoll>) {
    let mut served = 0u32;
    while let Ok(mail) = rx.recv_async().await {
        served += 1;
        if served >= MAILS_PER_ROUND {
            served = 0;
            next_poll.wait().await;
        }
        match mail {
            Mail::Kv(req, reply) => {
                let api = api.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(api.handle_forwarded(req).await);
                })
                .detach();
            }
            Mail::Pull(pull, reply) => {
                let primary = api.primary_log();
                glommio::spawn_local(async move {
                    let answer = match primary {
                        Some(p) => p.serve(pull).await.unwrap_or_else(|e| {
                            crate::protocol::PullReply::Failed(format!("primary overloaded: {e}"))
                        }),
                        None => crate::protocol::PullReply::NotPrimary,
                    };
                    let _ = reply.send(answer);
                })
                .detach();
            }
            Mail::Scan(scan, reply) => {
                // The page is read on the node's reader thread.
                let api = api.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(api.scan_page(scan).await);
                })
                .detach();
            }
        }
    }
}
