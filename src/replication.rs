//! Asynchronous, ordered replication by pull: each replica asks its primary
//! for log entries after its applied seq (a long poll), applies them in one
//! transaction per batch, and re-seeds from a snapshot when the primary has
//! trimmed past it.
//!
//! Per executor (`!Send`). Depends on `nodestore`, `protocol` and
//! `http::client`. The same [`follow`] loop runs over both transports: a
//! flume mailbox to a primary in this process, or HTTP to a primary on
//! another host (`GET /internal/pull`, body in `protocol`'s encoding).
//! Invariants: a replica applies entries strictly in seq order and stores
//! its applied seq in the same transaction as the data; the primary trims
//! only entries every configured replica has applied, or beyond the
//! retention bounds (entries, and bytes: the larger of `--log-retention-mb`
//! and the data's size; a replica behind a trimmed log re-seeds, with
//! snapshot pages bounded by pairs and by bytes). Nothing a puller sends can grow the primary's state:
//! progress is kept only for configured replicas, and a [`SeqWatch`] holds
//! only the waits that are still live (timed-out or dropped waits are
//! removed at once). The primary reads log and snapshot pages on its
//! node's reader thread (see `nodestore`), so serving a pull or a re-seed
//! never blocks the executor; a full read queue refuses the pull (503 over
//! HTTP, a `Failed` reply over the mailbox) and the replica retries after
//! its back-off. The seq has one source, `NodeStats::seq`, published by
//! the committer before it acknowledges a commit; [`SeqWatch`] waits on it.

use crate::http::client::{Client, Resend};
use crate::log::Level;
use crate::log_at;
use crate::nodestore::{NodeStats, NodeStore, StoreError};
use crate::protocol::{
    Mail, MailError, Pull, PullKind, PullReply, ask, decode_reply, encode_pull, node_request,
};
use crate::storage::{EpochStart, LogKeep, LogRead, end_of};
use futures_lite::future;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Entries per pull reply, at most.
const PULL_MAX_ENTRIES: usize = 10_000;
/// Payload bytes per pull reply, about.
const PULL_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Pairs per snapshot page, at most.
const SNAPSHOT_PAGE: usize = 10_000;
/// Bytes of keys and values per snapshot page, about (at least one pair).
const SNAPSHOT_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// How long a primary holds a log pull open when there is nothing new.
pub const LONG_POLL: Duration = Duration::from_secs(2);
/// Longest hold a pull may ask for.
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(30);

pub use crate::nodestore::ReplicaState;

/// How long a replica waits, after applying a batch smaller than
/// [`LINGER_BELOW`] entries, before it pulls again (not with
/// `--sync-replicas`, whose writes wait for the replicas): at a few
/// thousand writes per second every batch was one or two entries, and each
/// costs a pull (three thread hand-offs) and a commit with its fsync on the
/// replica, ~90 µs of CPU. Replication lag grows by at most this much.
pub const APPLY_LINGER: Duration = Duration::from_millis(2);
/// Batches at least this large pull again at once.
const LINGER_BELOW: usize = 32;

/// How long a log pull from a replica that is ahead of the published seq
/// waits for the publication (see [`PrimaryLog::serve`]).
const BEHIND_WAIT: Duration = Duration::from_millis(200);

/// Longest wait [`SeqWatch::wait_for`] accepts; longer timeouts are cut
/// to it (an `Instant` plus a huge `Duration` would overflow).
const MAX_SEQ_WAIT: Duration = Duration::from_hours(1);

/// Waiters for a node's durable seq (committed on a primary, applied on a
/// replica) to reach a target. The seq itself lives in one place,
/// `NodeStats::seq`, which the committer publishes after a commit and
/// before acknowledging it; this watch only reads it. Whoever receives an
/// acknowledgement on the node's executor calls [`SeqWatch::notify`],
/// which wakes the waiters the published seq now reaches.
///
/// Every waiter is an entry of `waiters` only while its `wait_for` future
/// is alive: it is removed when the target is reached, when the wait
/// times out and when the future is dropped (a client that went away).
/// The map therefore never holds more entries than there are live waits,
/// however many long polls and `min_seq` reads time out on an idle node.
/// Their number is published as `NodeStats::seq_waiters`.
pub struct SeqWatch {
    next_id: Cell<u64>,
    /// Live waits: id → (target seq, waker).
    waiters: RefCell<HashMap<u64, (u64, Waker)>>,
    source: Source,
}

/// Where a [`SeqWatch`] reads its value.
enum Source {
    /// The node's published seq; the waiter count goes to `seq_waiters`.
    Node(Arc<NodeStats>),
    /// A value kept on this executor (a primary's replicated watermark).
    Local(Rc<Cell<u64>>),
}

/// Removes a wait's entry when its `wait_for` future ends or is dropped.
struct Deregister<'a> {
    watch: &'a SeqWatch,
    id: u64,
}

impl Drop for Deregister<'_> {
    fn drop(&mut self) {
        let mut waiters = self.watch.waiters.borrow_mut();
        waiters.remove(&self.id);
        self.watch.publish(waiters.len());
    }
}

impl SeqWatch {
    /// A watch on `stats.seq` that publishes its number of waiters in
    /// `stats.seq_waiters`.
    #[must_use]
    pub fn new(stats: Arc<NodeStats>) -> Self {
        Self {
            next_id: Cell::new(0),
            waiters: RefCell::new(HashMap::new()),
            source: Source::Node(stats),
        }
    }

    /// A watch on a value this executor keeps in `value` (whoever changes
    /// it calls [`SeqWatch::notify`]).
    #[must_use]
    pub fn local(value: Rc<Cell<u64>>) -> Self {
        Self {
            next_id: Cell::new(0),
            waiters: RefCell::new(HashMap::new()),
            source: Source::Local(value),
        }
    }

    #[must_use]
    pub fn get(&self) -> u64 {
        match &self.source {
            Source::Node(stats) => stats.seq.load(Ordering::Acquire),
            Source::Local(value) => value.get(),
        }
    }

    /// Live waits right now.
    #[must_use]
    pub fn waiters(&self) -> usize {
        self.waiters.borrow().len()
    }

    fn publish(&self, waiters: usize) {
        if let Source::Node(stats) = &self.source {
            stats.seq_waiters.store(waiters as u64, Ordering::Relaxed);
        }
    }

    /// Wakes the waiters whose target the published seq reaches (and
    /// forgets them): called after an acknowledged commit, which the
    /// committer publishes before acknowledging.
    pub fn notify(&self) {
        let seq = self.get();
        if !self.waiters.borrow().is_empty() {
            let mut woken = Vec::new();
            {
                let mut waiters = self.waiters.borrow_mut();
                waiters.retain(|_, (target, waker)| {
                    if *target <= seq {
                        woken.push(waker.clone());
                        false
                    } else {
                        true
                    }
                });
                self.publish(waiters.len());
            }
            for w in woken {
                w.wake();
            }
        }
    }

    /// Waits until the seq is at least `target` or `timeout` passes;
    /// returns whether the target was reached.
    pub async fn wait_for(&self, target: u64, timeout: Duration) -> bool {
        if self.get() >= target {
            return true;
        }
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let _entry = Deregister { watch: self, id };
        let reached = std::future::poll_fn(|cx| {
            if self.get() >= target {
                return Poll::Ready(true);
            }
            let mut waiters = self.waiters.borrow_mut();
            waiters.insert(id, (target, cx.waker().clone()));
            self.publish(waiters.len());
            Poll::Pending
        });
        future::or(reached, async {
            glommio::timer::sleep(timeout.min(MAX_SEQ_WAIT)).await;
            self.get() >= target
        })
        .await
    }
}

/// How much log a primary keeps for replicas that have not applied it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Entries beyond what every replica applied (`--log-retention`).
    pub entries: u64,
    /// Bytes of log records, at least (`--log-retention-mb`): the log is
    /// kept to the larger of this and the data's size; a replica further
    /// behind is re-seeded (see `storage::Store::trim_log`).
    pub bytes: u64,
}

/// Who a puller is for a reshard (see `PrimaryLog::followers`).
pub type Followers = Box<dyn Fn(&str) -> Option<bool>>;

/// The primary side: knows the committed seq, holds long polls, serves
/// log pages and snapshot pages, and trims the log.
pub struct PrimaryLog {
    shard: Rc<NodeStore>,
    committed: Rc<SeqWatch>,
    /// Applied seq last reported by each replica (by node name).
    progress: RefCell<HashMap<String, u64>>,
    replicas: Vec<String>,
    /// Who a puller is, by name: `Some(true)` for a node that follows this
    /// shard for a reshard now (the new shard's nodes, until the cutover:
    /// tracked like replicas, so the log they read is kept for them),
    /// `Some(false)` for any other node of another shard (refused: after
    /// its cutover a new shard's node must not take one more entry of the
    /// old shard, whose history goes on without it), `None` for a name of
    /// no node (an observer).
    followers: Followers,
    retain: Retention,
    /// `--sync-replicas`: how many replicas must have applied a write
    /// before it is acknowledged.
    sync: usize,
    /// The highest seq at least `sync` replicas have applied.
    replicated_at: Rc<Cell<u64>>,
    replicated: SeqWatch,
}

impl PrimaryLog {
    /// `replicas` are the names of the shard's configured replicas; the log
    /// keeps at most `retain.entries` entries beyond what all of them
    /// applied, and about the larger of `retain.bytes` and the data's size.
    /// `committed` is the node's one [`SeqWatch`] (the API notifies it
    /// after each acknowledged write, which wakes the long polls).
    #[must_use]
    pub fn new(
        shard: Rc<NodeStore>,
        committed: Rc<SeqWatch>,
        replicas: Vec<String>,
        retain: Retention,
        sync: usize,
    ) -> Self {
        let replicated_at = Rc::new(Cell::new(0));
        Self {
            shard,
            committed,
            progress: RefCell::new(HashMap::new()),
            replicas,
            followers: Box::new(|_| None),
            retain,
            sync,
            replicated: SeqWatch::local(replicated_at.clone()),
            replicated_at,
        }
    }

    /// Sets who follows this shard for a reshard (see `followers`).
    #[must_use]
    pub fn with_followers(mut self, followers: Followers) -> Self {
        self.followers = followers;
        self
    }

    /// True when `name`'s progress decides the trim point: a configured
    /// replica, or a reshard follower.
    #[must_use]
    pub fn tracked(&self, name: &str) -> bool {
        self.is_replica(name) || (self.followers)(name) == Some(true)
    }

    /// True when `name` is a node of another shard that does not follow
    /// this one (any more): it gets no entry and no snapshot page.
    fn refused(&self, name: &str) -> bool {
        !self.is_replica(name) && (self.followers)(name) == Some(false)
    }

    /// The committed seq; the API notifies it after each durable write.
    #[must_use]
    pub fn committed(&self) -> &Rc<SeqWatch> {
        &self.committed
    }

    /// Waits until `--sync-replicas` replicas have applied `seq` (at once
    /// when that is 0); false when `timeout` passed first.
    pub async fn replicated(&self, seq: u64, timeout: Duration) -> bool {
        self.sync == 0 || self.replicated.wait_for(seq, timeout).await
    }

    /// Recomputes the seq at least `sync` replicas have applied after a
    /// replica reported its progress, and wakes the writes it reaches.
    fn replica_progressed(&self) {
        if self.sync == 0 {
            return;
        }
        let progress = self.progress.borrow();
        let mut applied: Vec<u64> = self
            .replicas
            .iter()
            .map(|r| progress.get(r).copied().unwrap_or(0))
            .collect();
        applied.sort_unstable_by(|a, b| b.cmp(a));
        let at = applied.get(self.sync - 1).copied().unwrap_or(0);
        if at > self.replicated_at.get() {
            self.replicated_at.set(at);
            self.replicated.notify();
        }
    }

    /// Answers one pull. Log and snapshot pages are read on the node's
    /// reader thread (`NodeStore::read_log`, `NodeStore::snapshot_chunk`), never
    /// on the executor.
    ///
    /// # Errors
    /// [`StoreError::ReadsOverloaded`] when the node's read queue is full
    /// (the caller answers 503); other failures are a
    /// [`PullReply::Failed`].
    pub async fn serve(&self, pull: Pull) -> Result<PullReply, StoreError> {
        if !self.shard.fence().is_primary() || self.refused(&pull.replica) {
            return Ok(PullReply::NotPrimary);
        }
        // One record per failover: a small table, read here (on demand: a
        // long poll must send the history as of its entries, not as of its
        // start).
        let epochs = || self.shard.store().epochs();
        let history = match epochs() {
            Ok(h) => h,
            Err(e) => return Ok(PullReply::Failed(e.to_string())),
        };
        match pull.kind {
            PullKind::Log { after } => {
                let Some(next) = after.checked_add(1) else {
                    return Ok(PullReply::Failed(format!(
                        "no entry can follow seq {after}"
                    )));
                };
                // Entries of the replica's newest epoch past the point where
                // this primary's history moved to a newer epoch were never
                // replicated here: the replica must discard them.
                // (Only for the shard's nodes: anyone else is an observer
                // reading the log, with no entries of its own.)
                if let Some(end) = end_of(&history, pull.epoch)
                    && after > end
                    && self.is_replica(&pull.replica)
                {
                    return Ok(PullReply::Diverged {
                        common: end,
                        primary_seq: self.committed.get(),
                    });
                }
                // Only configured replicas are tracked (they decide the
                // trim point); anyone else is answered and forgotten, so
                // the map cannot grow past the configured replicas.
                if self.tracked(&pull.replica) {
                    self.progress
                        .borrow_mut()
                        .insert(pull.replica.clone(), after);
                    self.replica_progressed();
                    // The next group commit removes what every replica has.
                    self.shard
                        .stats
                        .trim_upto
                        .store(self.trim_point(), Ordering::Release);
                }
                let wait = pull.wait.min(MAX_PULL_WAIT);
                self.committed.wait_for(next, wait).await;
                // Read on the node's reader thread: a page is up to 4 MiB.
                let read = self
                    .shard
                    .read_log(after, PULL_MAX_ENTRIES, PULL_MAX_BYTES)
                    .await;
                // A commit is in the log a moment before the committer
                // publishes it. A replica that already holds `after` saw
                // it there: wait for its publication rather than report
                // a seq below it (the replica would take it for a lost
                // primary and re-seed). A primary really behind the
                // replica answers with its seq once the wait ends.
                if self.committed.get() < after {
                    self.committed.wait_for(after, BEHIND_WAIT).await;
                }
                // Checked again after the wait and the read: a reshard's
                // cutover may have happened meanwhile (the entries were read
                // before it, so none is past the held seq).
                if self.refused(&pull.replica) {
                    return Ok(PullReply::NotPrimary);
                }
                let primary_seq = self.committed.get();
                // Read after the entries: it covers every epoch they are in.
                let epochs = match epochs() {
                    Ok(h) => h,
                    Err(e) => return Ok(PullReply::Failed(e.to_string())),
                };
                match read {
                    Ok(LogRead::Entries(entries)) => Ok(PullReply::Entries {
                        primary_seq: primary_seq.max(entries.last().map_or(0, |e| e.seq)),
                        entries,
                        epochs,
                    }),
                    Ok(LogRead::Trimmed) => Ok(PullReply::Trimmed { primary_seq }),
                    Err(e) => failed(e),
                }
            }
            // Read on the node's reader thread: a page is 10,000 pairs.
            PullKind::Snapshot { after_key } => {
                let after_key_was_none = after_key.is_none();
                match self
                    .shard
                    .snapshot_chunk(after_key, SNAPSHOT_PAGE, SNAPSHOT_PAGE_BYTES)
                    .await
                {
                    Ok(_) if self.refused(&pull.replica) => Ok(PullReply::NotPrimary),
                    Ok((seq, pairs, done)) => {
                        // A reshard follower starts from a snapshot: keep
                        // the log from its first page's seq for it (a
                        // configured replica's last progress holds it).
                        if after_key_was_none
                            && !self.is_replica(&pull.replica)
                            && (self.followers)(&pull.replica) == Some(true)
                        {
                            self.progress.borrow_mut().insert(pull.replica, seq);
                            self.shard
                                .stats
                                .trim_upto
                                .store(self.trim_point(), Ordering::Release);
                        }
                        Ok(PullReply::Snapshot {
                            seq,
                            pairs,
                            done,
                            epochs: history,
                        })
                    }
                    Err(e) => failed(e),
                }
            }
        }
    }

    /// True when `name` is one of this shard's configured replicas.
    #[must_use]
    pub fn is_replica(&self, name: &str) -> bool {
        self.replicas.iter().any(|r| r == name)
    }

    /// The seq up to which the log may be trimmed now.
    #[must_use]
    pub fn trim_point(&self) -> u64 {
        let committed = self.committed.get();
        let progress = self.progress.borrow();
        let followers = progress
            .iter()
            .filter(|(name, _)| !self.is_replica(name) && (self.followers)(name) == Some(true))
            .map(|(_, &seq)| seq);
        let slowest = self
            .replicas
            .iter()
            .map(|r| progress.get(r).copied().unwrap_or(0))
            .chain(followers)
            .min()
            .unwrap_or(committed);
        slowest
            .max(committed.saturating_sub(self.retain.entries))
            .min(committed)
    }

    /// Trims the log once a second, forever: what every replica applied,
    /// and the oldest entries while the log is over its byte bound.
    pub async fn trim_forever(self: Rc<Self>) {
        let mut trimmed = 0;
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            let upto = self.trim_point();
            let stats = &self.shard.stats;
            let bound = self
                .retain
                .bytes
                .max(stats.data_bytes.load(Ordering::Relaxed));
            let over = stats.log_bytes.load(Ordering::Relaxed) > bound;
            if upto > trimmed || over {
                match self.shard.trim(upto, self.retain.bytes).await {
                    Ok(_) => trimmed = upto,
                    Err(e) => log_at!(Level::Error, "primary", "log trim failed: {e}"),
                }
            }
        }
    }
}

/// A failed page read as a pull's answer: an overloaded read queue stays
/// an error (a 503 for the caller), anything else is a `Failed` reply.
fn failed(e: StoreError) -> Result<PullReply, StoreError> {
    match e {
        StoreError::ReadsOverloaded { .. } => Err(e),
        other => Ok(PullReply::Failed(other.to_string())),
    }
}

/// How a replica reaches its primary.
pub enum Upstream {
    /// The primary runs in this process: its executor's mailbox.
    Local(flume::Sender<Mail>),
    /// The primary runs on another host; `token` authorises the pulls.
    Remote {
        client: Rc<Client>,
        addr: String,
        token: Option<std::sync::Arc<str>>,
    },
}

impl Upstream {
    async fn pull(&self, pull: Pull) -> Result<PullReply, String> {
        match self {
            Self::Local(mailbox) => {
                ask(mailbox, |tx| Mail::Pull(pull, tx))
                    .await
                    .map_err(|e| match e {
                        MailError::Full => "primary's mailbox is full (overloaded)".to_string(),
                        MailError::Closed | MailError::NoAnswer => {
                            "primary executor stopped".to_string()
                        }
                    })
            }
            Self::Remote {
                client,
                addr,
                token,
            } => {
                let req = node_request(
                    "POST",
                    b"/internal/pull",
                    addr,
                    token.as_deref(),
                    &encode_pull(&pull),
                );
                let deadline = Instant::now() + pull.wait + Duration::from_secs(5);
                let resp = client
                    .send(addr, &req, deadline, Resend::Idempotent)
                    .await
                    .map_err(|e| format!("{addr}: {e}"))?;
                if resp.status != 200 {
                    return Err(format!(
                        "{addr}: status {} {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body).trim()
                    ));
                }
                decode_reply(&resp.body).map_err(|e| format!("{addr}: {e}"))
            }
        }
    }
}

fn set_state(shard: &NodeStore, state: ReplicaState) {
    shard.stats.state.store(state as u64, Ordering::Relaxed);
}

/// The replica side: follows the primary forever. The replica logs what it
/// applies (so that, promoted, it can serve the others) and keeps
/// `retain.entries` entries behind its applied seq, and at most the smaller
/// of `retain.bytes` and its data's size (see `storage::Store::apply_entries`).
pub async fn follow(
    shard: Rc<NodeStore>,
    applied: Rc<SeqWatch>,
    upstream: Upstream,
    name: String,
    retain: Retention,
    linger: Duration,
) {
    let keep = LogKeep {
        entries: retain.entries,
        bytes: retain.bytes,
    };
    let mut backoff = Duration::from_millis(50);
    let mut last_error = String::new();
    loop {
        let step = match shard.store().reseed_pending() {
            Ok(true) => reseed(&shard, &upstream, &name).await.map(|()| 0),
            Ok(false) => pull_once(&shard, &upstream, &name, keep).await,
            Err(e) => Err(e.to_string()),
        };
        applied.notify();
        match step {
            Ok(n) => {
                backoff = Duration::from_millis(50);
                last_error.clear();
                if (1..LINGER_BELOW).contains(&n) && !linger.is_zero() {
                    glommio::timer::sleep(linger).await;
                }
            }
            Err(e) => {
                set_state(&shard, ReplicaState::Disconnected);
                if e != last_error {
                    log_at!(Level::Warn, &name, "replication: {e}; retrying");
                    last_error = e;
                }
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One log pull and its apply; returns how many entries it applied (0
/// after a re-seed).
async fn pull_once(
    shard: &NodeStore,
    upstream: &Upstream,
    name: &str,
    keep: LogKeep,
) -> Result<usize, String> {
    let applied = shard.stats.seq.load(Ordering::Acquire);
    // Until the replica has heard from its primary, ask without waiting, so
    // a caught-up replica reports itself as following at once.
    let state = ReplicaState::from_code(shard.stats.state.load(Ordering::Relaxed));
    let settled = matches!(state, ReplicaState::Following | ReplicaState::CatchingUp);
    let pull = Pull {
        replica: name.to_string(),
        kind: PullKind::Log { after: applied },
        wait: if settled { LONG_POLL } else { Duration::ZERO },
        epoch: shard.stats.epoch.load(Ordering::Acquire),
    };
    match upstream.pull(pull).await? {
        PullReply::Entries { primary_seq, .. } if primary_seq < applied => {
            // The primary is behind this replica: its data was lost or
            // replaced. Follow the primary as it is now.
            discard(
                shard,
                name,
                applied,
                primary_seq,
                "the primary is behind this replica",
            );
            reseed(shard, upstream, name).await.map(|()| 0)
        }
        PullReply::Diverged {
            common,
            primary_seq,
        } => {
            shard
                .stats
                .primary_seq
                .store(primary_seq, Ordering::Relaxed);
            discard(
                shard,
                name,
                applied,
                common,
                "written by an earlier primary, never replicated to the current one",
            );
            reseed(shard, upstream, name).await.map(|()| 0)
        }
        PullReply::NotPrimary => Err("the node asked is not the primary any more".into()),
        PullReply::Entries {
            primary_seq,
            entries,
            epochs,
        } => {
            let last = entries.last().map_or(applied, |e| e.seq);
            let primary_seq = primary_seq.max(last);
            shard
                .stats
                .primary_seq
                .store(primary_seq, Ordering::Relaxed);
            let state = if last >= primary_seq {
                ReplicaState::Following
            } else {
                ReplicaState::CatchingUp
            };
            let n = entries.len();
            if n > 0 {
                shard
                    .apply(entries, epochs, keep)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            set_state(shard, state);
            Ok(n)
        }
        PullReply::Trimmed { primary_seq } => {
            shard
                .stats
                .primary_seq
                .store(primary_seq, Ordering::Relaxed);
            log_at!(
                Level::Warn,
                name,
                "primary trimmed its log past seq {applied}; re-seeding"
            );
            reseed(shard, upstream, name).await.map(|()| 0)
        }
        PullReply::Snapshot { .. } => Err("primary answered a log pull with a snapshot".into()),
        PullReply::Failed(msg) => Err(format!("primary failed: {msg}")),
    }
}

/// Counts and logs the entries after `common` that this node is about to
/// drop by re-seeding from its primary: writes an earlier primary
/// acknowledged (possible only without `--sync-replicas`) that the
/// current primary never received. Never merged silently.
fn discard(shard: &NodeStore, name: &str, applied: u64, common: u64, why: &str) {
    let lost = applied.saturating_sub(common);
    shard
        .stats
        .discarded_writes
        .fetch_add(lost, Ordering::Relaxed);
    log_at!(
        Level::Warn,
        name,
        "discarding {lost} entries (seqs {}..={applied}): {why}; re-seeding",
        common + 1
    );
}

/// Copies the primary's data page by page (the store is already marked as
/// re-seeding and emptied), then follows the log from the first page's seq.
async fn reseed(shard: &NodeStore, upstream: &Upstream, name: &str) -> Result<(), String> {
    set_state(shard, ReplicaState::Reseeding);
    // A re-seed interrupted earlier starts again from an empty table.
    shard.reseed_begin().await.map_err(|e| e.to_string())?;
    let mut cursor: Option<Vec<u8>> = None;
    let mut start_seq: Option<u64> = None;
    let mut history: Vec<EpochStart>;
    loop {
        let pull = Pull {
            replica: name.to_string(),
            kind: PullKind::Snapshot {
                after_key: cursor.clone(),
            },
            wait: Duration::ZERO,
            epoch: 0,
        };
        match upstream.pull(pull).await? {
            PullReply::Snapshot {
                seq,
                pairs,
                done,
                epochs,
            } => {
                history = epochs;
                start_seq.get_or_insert(seq);
                shard.stats.primary_seq.store(seq, Ordering::Relaxed);
                if let Some((k, _)) = pairs.last() {
                    cursor = Some(k.clone());
                }
                shard.reseed_chunk(pairs).await.map_err(|e| e.to_string())?;
                if done {
                    break;
                }
            }
            PullReply::Failed(msg) => return Err(format!("primary failed: {msg}")),
            PullReply::NotPrimary => {
                return Err("the node asked is not the primary any more".into());
            }
            _ => return Err("primary answered a snapshot pull with log entries".into()),
        }
    }
    let seq = start_seq.unwrap_or(0);
    shard
        .reseed_finish(seq, history)
        .await
        .map_err(|e| e.to_string())?;
    log_at!(Level::Info, name, "re-seeded at seq {seq}");
    Ok(())
}
