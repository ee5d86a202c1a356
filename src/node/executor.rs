//! One node's executor: its thread, its glommio `LocalExecutor` (pinned to
//! a CPU), the node's tasks (replication, log trimming, the mailbox of
//! requests from other executors) and its accept loop with graceful drain.
//!
//! Depends on `api`, `replication`, `router`, `nodestore`, `http::conn`.

use super::{Event, NodeError, SHUTDOWN_GRACE};
use crate::api::{Api, ApiConfig, LocalNodes};
use crate::http::client::{Client, Reachability};
use crate::http::conn::{self, ConnConfig, Tracker};
use crate::log::Level;
use crate::log_at;
use crate::nodestore::NodeStore;
use crate::protocol::Mail;
use crate::replication::{self, PrimaryLog, SeqWatch, Upstream};
use crate::router::{Mailboxes, Router};
use crate::sched::NextPoll;
use crate::topology::{NodeInfo, Role, Topology};
use futures_lite::future;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Everything one executor needs; `Send`, moved into its thread.
pub(super) struct NodeContext {
    pub(super) node: NodeInfo,
    pub(super) topo: Arc<Topology>,
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
                Some(Some(peer)) => Upstream::Local(peer.mail.clone()),
                _ => Upstream::Remote {
                    client: client.clone(),
                    addr: owner.address.clone(),
                    token: token.clone(),
                },
            };
            let applied = Rc::new(SeqWatch::new(
                shard.stats.seq.load(Ordering::Acquire),
                shard.stats.clone(),
            ));
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
        api_config,
    ));
    let tracker = Rc::new(Tracker::default());
    glommio::spawn_local(drain_mailbox(
        api.clone(),
        primary,
        mailbox,
        tracker.next_poll().clone(),
    ))
    .detach();
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

/// Mails served in a row before the mailbox lets the executor poll for I/O
/// (a mailbox that never runs dry must not starve the connections).
const MAILS_PER_ROUND: u32 = 64;

/// Serves requests other executors of this process send here.
async fn drain_mailbox(
    api: Rc<Api>,
    primary: Option<Rc<PrimaryLog>>,
    rx: flume::Receiver<Mail>,
    next_poll: Rc<NextPoll>,
) {
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
                let primary = primary.clone();
                glommio::spawn_local(async move {
                    let answer = match primary {
                        Some(p) => p.serve(pull).await.unwrap_or_else(|e| {
                            crate::protocol::PullReply::Failed(format!("primary overloaded: {e}"))
                        }),
                        None => crate::protocol::PullReply::Failed(
                            "pull sent to a node that is not a primary".into(),
                        ),
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
