//! A node's store handle ([`NodeStore`]): its committer thread (group
//! commit, `committer.rs`), its reader thread and the executor-side
//! [`Reader`] (`reader.rs`), its counters and its error enum.
//!
//! Depends on `storage`, `log` and flume. The executor reads single keys directly
//! ([`Reader`]: microseconds, redb reads run beside a commit) but never
//! writes the store: every write goes to the node's committer thread as a
//! `Job`. The committer takes every job waiting in its queue, commits all
//! queued writes in one transaction (one fsync), then answers each writer;
//! writes that arrive during a commit form the next batch.
//!
//! Reads that walk many pages (a replication log page of up to 4 MiB, a
//! re-seed snapshot page of 10,000 pairs, a prefix listing page) go to the
//! node's reader thread instead ([`NodeStore::read_log`],
//! [`NodeStore::snapshot_chunk`], [`NodeStore::scan_prefix`]): one OS thread per
//! node, not pinned, fed by a bounded flume queue of [`READ_QUEUE`] jobs;
//! each job answers on its own one-slot channel that the executor awaits
//! (`recv_async`). A full queue refuses the read at once
//! ([`StoreError::ReadsOverloaded`], answered 503 with `Retry-After`),
//! never a wait. Blocking disk work therefore never runs on an executor's
//! network loop, and one node's large reads run one at a time.
//!
//! Why a thread of our own rather than glommio's `spawn_blocking`: glommio's
//! blocking pool is one thread per executor by default, placed like the
//! executor (`Placement::Fixed(cpu)` pins it to the executor's own CPU, so
//! a 10 MB snapshot page would still compete with that core's connections
//! for the one CPU), it also carries glommio's own blocking file
//! operations, and its 4096-entry queue waits for room (`send_async`)
//! instead of refusing. Our thread is unpinned (the kernel runs it on an
//! idle CPU when there is one), serves only these reads, and its queue
//! refuses when full, like the commit queue.
//!
//! A write may carry an apply-by time (a forwarded write whose sender
//! stops waiting then): the committer checks it just before the
//! transaction that would apply the write, and answers
//! [`StoreError::DeadlinePassed`] instead of applying it when it is past.
//!
//! Storage failures (a full disk). After an I/O error redb refuses every
//! later call until the file is closed and opened again. The committer
//! thread owns that: it is the only writer, so no write transaction can be
//! live while it reopens ([`Store::reopen`] swaps the `Database` inside the
//! one `Arc<Store>` everybody shares; executors' cached snapshots notice
//! the store's generation change and take a new one, see [`Reader`]). On an
//! I/O error the committer reopens at once (redb's repair keeps the last
//! intact commit and needs no free space, so reads work again while the
//! disk is still full), then decides the failed batch by the committed seq
//! it finds: below the batch's first seq, not applied
//! ([`StoreError::Unavailable`]); at or past its last seq, applied (the
//! writers get their outcomes); if the reopen itself failed,
//! [`StoreError::OutcomeUnknown`]. It then publishes the node's
//! [`StorageHealth`] (`no-space`, `failed`, `reopening`) and cause in
//! [`NodeStats`], and until it is healthy again every write is refused
//! before it is queued ([`NodeStore::write`] checks the published health:
//! fail fast, not applied) and every other job (replica applies, trims,
//! re-seed steps) is answered with the same error. It retries with
//! back-off ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]): reopen if the
//! store is still closed, then, after a full disk, write and sync a probe
//! file of [`PROBE_BYTES`] next to the store; once that works the node is
//! healthy and takes writes again (a commit that still fails starts the
//! cycle again, with a longer back-off).
//!
//! Space: each group commit also removes the log entries every replica has
//! applied ([`NodeStats::trim_upto`], published by the primary's
//! replication side), so the log costs no extra fsync and its pages are
//! reused at once; the committer publishes the store's space figures
//! (`storage::Space`) in [`NodeStats`] about once a second after a job.

mod committer;
mod reader;

pub use reader::Reader;

use crate::layout::Layout;
use crate::roles::Roles;
use crate::storage::{
    EpochStart, LogEntry, LogKeep, LogRead, Outcome, SnapshotPage, StorageError, Store, Versioned,
    Write,
};
pub use committer::HoldCtl;
use committer::Job;
use reader::ReadJob;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// First pause before the committer retries a failed store (see the
/// module header); doubled after each failed attempt up to [`RETRY_MAX`],
/// and reset by a successful commit.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between two attempts to bring a failed store back.
pub const RETRY_MAX: Duration = Duration::from_secs(2);
/// Bytes the committer writes (and syncs, then removes) next to a store
/// whose disk was full, before it lets writes try again.
pub const PROBE_BYTES: usize = 1024 * 1024;

/// Most writes committed in one transaction, by default.
pub const DEFAULT_MAX_BATCH: usize = 4096;

/// Jobs a node's commit queue holds, by default (`--commit-queue`): twice
/// the largest batch. The committer takes at most one batch per
/// transaction, so a full queue is one batch committing plus one batch
/// gathering; a write queued behind more than that would wait several
/// fsyncs for nothing but latency, and every queued write holds its value
/// in memory. A client write finding the queue full is refused at once
/// ([`StoreError::Overloaded`], answered 503 with `Retry-After`) instead of
/// queueing without bound.
pub const DEFAULT_COMMIT_QUEUE: usize = 2 * DEFAULT_MAX_BATCH;

/// Large reads a node's read queue holds (see the module header); more are
/// refused with [`StoreError::ReadsOverloaded`]. A replica pulls one page
/// at a time, a listing asks each shard for one page: 64 is far more than
/// normal traffic needs, and each queued job is a few bytes (the page is
/// read only when its job runs).
pub const READ_QUEUE: usize = 64;

/// Counters a node publishes for `/status` (read by any executor).
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Last committed (primary) or applied (replica) seq.
    pub seq: AtomicU64,
    /// The primary's last seq as last seen by a replica.
    pub primary_seq: AtomicU64,
    pub keys: AtomicU64,
    pub commits: AtomicU64,
    pub committed_writes: AtomicU64,
    /// Replica state, see `replication::ReplicaState`.
    pub state: AtomicU64,
    /// Live waits for this node's seq (replica long polls on a primary,
    /// `min_seq` reads), see `replication::SeqWatch`.
    pub seq_waiters: AtomicU64,
    /// Client writes refused because the commit queue was full.
    pub overloaded_writes: AtomicU64,
    /// Large reads (pulls, listings) refused because the read queue was full.
    pub overloaded_reads: AtomicU64,
    /// A reshard's cutover holds this node's writes.
    pub held: std::sync::atomic::AtomicBool,
    /// Keys a reshard's purge deleted here (they moved to another shard).
    pub purged_keys: AtomicU64,
    /// Commit batch sizes: counts of batches with size <= 1, 2, 4, ... 4096, more.
    pub batch_sizes: [AtomicU64; BATCH_BUCKETS],
    /// The store's [`StorageHealth`], as a code.
    pub storage: AtomicU64,
    /// Why the store is not healthy (empty while it is).
    pub storage_error: Mutex<String>,
    /// I/O failures of the store (each one reopened it).
    pub storage_failures: AtomicU64,
    /// Successful reopens of the store.
    pub reopens: AtomicU64,
    /// The epoch of the newest entry this node holds (see `storage::epochs`).
    pub epoch: AtomicU64,
    /// Client writes refused because this node was not the primary with a
    /// valid lease when their batch was about to commit.
    pub fenced_writes: AtomicU64,
    /// Writes committed here whose lease ran out during the commit
    /// (answered "outcome unknown").
    pub lease_lost_writes: AtomicU64,
    /// Entries this node held that its shard's new primary never had,
    /// discarded when it rejoined as a replica (see `replication`).
    pub discarded_writes: AtomicU64,
    /// Where the store's bytes are (`storage::Space`), refreshed by the
    /// committer at most once a second after a job.
    pub data_bytes: AtomicU64,
    pub log_bytes: AtomicU64,
    pub log_entries: AtomicU64,
    pub file_bytes: AtomicU64,
    pub disk_bytes: AtomicU64,
    /// The seq the space figures were read at.
    pub space_seq: AtomicU64,
    /// Primary: log entries up to this seq may go (every replica applied
    /// them; published by `replication::PrimaryLog`); each group commit
    /// removes some in its own transaction.
    pub trim_upto: AtomicU64,
}

/// Whether a node's store takes writes (published in `/status` and
/// `/ready`; see the module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageHealth {
    Ok = 0,
    /// The disk was full at the last failure; writes are refused until a
    /// probe finds space again.
    NoSpace = 1,
    /// Another I/O error; writes are refused until the next retry.
    Failed = 2,
    /// The store is closed while it is reopened (or its reopen failed):
    /// reads are refused too.
    Reopening = 3,
}

impl StorageHealth {
    #[must_use]
    pub fn from_code(code: u64) -> Self {
        match code {
            1 => Self::NoSpace,
            2 => Self::Failed,
            3 => Self::Reopening,
            _ => Self::Ok,
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NoSpace => "no-space",
            Self::Failed => "failed",
            Self::Reopening => "reopening",
        }
    }
}

/// Where a replica is in following its primary (published in `/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    Connecting = 0,
    Following = 1,
    CatchingUp = 2,
    Reseeding = 3,
    Disconnected = 4,
}

impl ReplicaState {
    #[must_use]
    pub fn from_code(code: u64) -> Self {
        match code {
            1 => Self::Following,
            2 => Self::CatchingUp,
            3 => Self::Reseeding,
            4 => Self::Disconnected,
            _ => Self::Connecting,
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Following => "following",
            Self::CatchingUp => "catching-up",
            Self::Reseeding => "reseeding",
            Self::Disconnected => "disconnected",
        }
    }
}

/// Buckets of [`NodeStats::batch_sizes`]: powers of two 1..=4096, then +Inf.
pub const BATCH_BUCKETS: usize = 14;

impl NodeStats {
    /// True while a replica re-seed replaces the data under the same seq.
    fn reseeding(&self) -> bool {
        self.state.load(Ordering::Relaxed) == ReplicaState::Reseeding as u64
    }

    fn publish_space(&self, space: &crate::storage::Space) {
        self.data_bytes.store(space.data_bytes, Ordering::Relaxed);
        self.log_bytes.store(space.log_bytes, Ordering::Relaxed);
        self.log_entries.store(space.log_entries, Ordering::Relaxed);
        self.file_bytes.store(space.file_bytes, Ordering::Relaxed);
        self.disk_bytes.store(space.disk_bytes, Ordering::Relaxed);
        self.space_seq.store(space.seq, Ordering::Relaxed);
    }

    /// The store's health.
    #[must_use]
    pub fn health(&self) -> StorageHealth {
        StorageHealth::from_code(self.storage.load(Ordering::Acquire))
    }

    /// Why the store is not healthy (empty while it is).
    #[must_use]
    pub fn storage_error(&self) -> String {
        self.storage_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_health(&self, health: StorageHealth, cause: &str) {
        {
            let mut e = self
                .storage_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            e.clear();
            e.push_str(cause);
        }
        self.storage.store(health as u64, Ordering::Release);
    }

    /// The error a job gets while the store is not healthy.
    fn unavailable(&self) -> Option<StoreError> {
        match self.health() {
            StorageHealth::Ok => None,
            health => Some(StoreError::Unavailable {
                health,
                cause: self.storage_error(),
            }),
        }
    }

    fn record_batch(&self, size: usize) {
        let bucket = (usize::BITS - size.saturating_sub(1).leading_zeros()) as usize;
        self.batch_sizes[bucket.min(BATCH_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a write or apply did not complete.
#[derive(Debug, Clone)]
pub enum StoreError {
    Storage(Arc<StorageError>),
    /// The committer thread is gone (process shutting down).
    Stopped,
    /// The write's apply-by time had passed when its batch was about to
    /// commit, by `late`: it was not applied.
    DeadlinePassed {
        late: Duration,
    },
    /// The commit queue is full (`capacity` jobs); the write was not queued.
    Overloaded {
        capacity: usize,
    },
    /// The read queue is full (`capacity` jobs); the read was not queued.
    ReadsOverloaded {
        capacity: usize,
    },
    /// The store is not healthy (`health`, because of `cause`): the job
    /// was refused, or its commit failed and the committed seq found after
    /// the reopen shows it was not applied. Either way nothing of it is in
    /// the store.
    Unavailable {
        health: StorageHealth,
        cause: String,
    },
    /// The commit of this write failed with an I/O error and the store
    /// could not be reopened to find out whether it reached the disk: it
    /// may have been applied.
    OutcomeUnknown {
        cause: String,
    },
    /// This node is not the primary of its shard with a valid lease (the
    /// role moved, or the lease could not be renewed): the write was
    /// refused before its transaction, nothing of it is in the store.
    NotPrimary,
    /// The write was committed here, but the node's lease ran out before
    /// the commit ended: a new primary may not have it, and this node will
    /// discard it if so when it rejoins. It may or may not survive.
    LeaseLost,
    /// This node is the primary of its shard: it applies no replicated
    /// entries (a pull answer that arrived after a promotion).
    IsPrimary,
    /// A reshard moved the key to another shard: the write was not
    /// applied here.
    Moved,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Storage(e) => e.fmt(f),
            Self::Stopped => write!(f, "storage is shutting down"),
            Self::DeadlinePassed { late } => {
                write!(f, "deadline passed {} ms ago", late.as_millis())
            }
            Self::Overloaded { capacity } => {
                write!(f, "commit queue full ({capacity} writes waiting for disk)")
            }
            Self::ReadsOverloaded { capacity } => {
                write!(
                    f,
                    "read queue full ({capacity} large reads waiting for disk)"
                )
            }
            Self::Unavailable { health, cause } => match health {
                StorageHealth::NoSpace => write!(f, "insufficient storage: {cause}"),
                StorageHealth::Reopening => write!(f, "storage is being reopened after: {cause}"),
                StorageHealth::Failed | StorageHealth::Ok => {
                    write!(f, "storage failed: {cause}")
                }
            },
            Self::NotPrimary => write!(
                f,
                "this node is not the primary of its shard (the role moved or its lease lapsed)"
            ),
            Self::LeaseLost => write!(
                f,
                "committed, but this node's lease ran out before the commit ended: a new primary may not have the write"
            ),
            Self::IsPrimary => write!(
                f,
                "this node is the primary now; it applies no replicated entries"
            ),
            Self::Moved => write!(f, "a reshard moved the key to another shard"),
            Self::OutcomeUnknown { cause } => write!(
                f,
                "the commit failed ({cause}) and the store could not be reopened to check it"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

type Reply<T> = flume::Sender<Result<T, StoreError>>;

/// What decides whether this node may commit client writes: the shared
/// [`Roles`] (primary and epoch of each shard, lease deadlines) and who
/// this node is. The committer checks it right before each batch's
/// transaction and again after it (see the module header).
#[derive(Clone, Debug)]
pub struct Fence {
    roles: Arc<Roles>,
    /// Which shard owns which key (moves in a reshard).
    layout: Arc<Layout>,
    node: usize,
    shard: usize,
}

impl Fence {
    #[must_use]
    pub fn new(roles: Arc<Roles>, layout: Arc<Layout>, node: usize, shard: usize) -> Self {
        Self {
            roles,
            layout,
            node,
            shard,
        }
    }

    /// True when this node's shard owns `key` now.
    #[must_use]
    pub fn owns(&self, key: &[u8]) -> bool {
        self.layout.owner(key) == self.shard
    }

    /// Records a reshard's cutover of old shard `pair` (see
    /// `committer::HoldCtl::Split`).
    fn split(&self, pair: usize) -> Result<(), String> {
        self.layout.set_split(pair).map_err(|e| e.to_string())
    }

    /// The epoch this node may write in now: it is its shard's primary and
    /// its lease is valid.
    #[must_use]
    pub fn writable_epoch(&self) -> Option<u64> {
        self.roles.writable_epoch(self.shard, self.node)
    }

    /// True when this node is its shard's primary (lease or not).
    #[must_use]
    pub fn is_primary(&self) -> bool {
        self.roles.is_primary(self.shard, self.node)
    }
}

/// Handle to a node's storage; `Send`, created before the executor starts.
pub struct NodeStore {
    store: Arc<Store>,
    /// The committer's queue, bounded (see [`DEFAULT_COMMIT_QUEUE`]).
    jobs: flume::Sender<Job>,
    queue: usize,
    /// The reader thread's queue, bounded ([`READ_QUEUE`]).
    reads: flume::Sender<ReadJob>,
    pub stats: Arc<NodeStats>,
    /// This executor's reads of its own store.
    reader: Reader,
    /// Whether this node may write (the committer holds a clone).
    fence: Fence,
}

impl NodeStore {
    /// Starts the committer thread for `store`, committing at most
    /// `max_batch` writes per transaction (1 = one fsync per write), with
    /// a queue of at most `queue` jobs (see [`DEFAULT_COMMIT_QUEUE`]).
    ///
    /// # Errors
    /// The store cannot be read or the thread cannot be spawned.
    pub fn start(
        store: Store,
        name: &str,
        max_batch: usize,
        queue: usize,
        fence: Fence,
    ) -> Result<Self, StartError> {
        let stats = Arc::new(NodeStats::default());
        stats.seq.store(store.seq()?, Ordering::Relaxed);
        stats.epoch.store(store.last_epoch()?, Ordering::Relaxed);
        stats.keys.store(store.key_count()?, Ordering::Relaxed);
        stats.publish_space(&store.space()?);
        let store = Arc::new(store);
        let queue = queue.max(1);
        let (tx, rx) = flume::bounded(queue);
        let (s, st, n) = (store.clone(), stats.clone(), name.to_string());
        let own_fence = fence.clone();
        std::thread::Builder::new()
            .name(format!("commit {name}"))
            .spawn(move || committer::committer(&s, &rx, &st, max_batch.max(1), &n, &fence))
            .map_err(StartError::Thread)?;
        let (reads, read_rx) = flume::bounded::<ReadJob>(READ_QUEUE);
        let s = store.clone();
        std::thread::Builder::new()
            .name(format!("read {name}"))
            .spawn(move || reader::serve(&s, &read_rx))
            .map_err(StartError::Thread)?;
        Ok(Self {
            fence: own_fence,
            reader: Reader::new(store.clone(), stats.clone()),
            store,
            jobs: tx,
            queue,
            reads,
            stats,
        })
    }

    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether this node may write now (see [`Fence`]).
    #[must_use]
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// What another executor needs to build a [`Reader`] of this node.
    #[must_use]
    pub fn reader_parts(&self) -> (Arc<Store>, Arc<NodeStats>) {
        (self.store.clone(), self.stats.clone())
    }

    /// This executor's reader of its own store (see [`Reader`]).
    #[must_use]
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Queues a job and awaits its answer. A client write (`refuse_when_full`)
    /// is refused at once when the queue is full; the node's own jobs
    /// (replication, trimming) wait for room asynchronously: they come one
    /// at a time per node and must not be lost. Neither blocks the executor.
    async fn call<T>(
        &self,
        refuse_when_full: bool,
        make: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<T, StoreError> {
        let (tx, rx) = flume::bounded(1);
        let job = make(tx);
        if refuse_when_full {
            self.jobs.try_send(job).map_err(|e| match e {
                flume::TrySendError::Full(_) => {
                    self.stats.overloaded_writes.fetch_add(1, Ordering::Relaxed);
                    StoreError::Overloaded {
                        capacity: self.queue,
                    }
                }
                flume::TrySendError::Disconnected(_) => StoreError::Stopped,
            })?;
        } else {
            self.jobs
                .send_async(job)
                .await
                .map_err(|_| StoreError::Stopped)?;
        }
        let answer = rx.recv_async().await.map_err(|_| StoreError::Stopped)?;
        // Every job commits; see `Reader::forget`.
        self.reader.forget();
        answer
    }

    /// Runs `read` on the node's reader thread and awaits its answer
    /// without blocking the executor; refused at once when the read queue
    /// is full. If the caller stops waiting, the job still runs and its
    /// answer is dropped.
    async fn offload<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = flume::bounded(1);
        let job: ReadJob = Box::new(move |store| {
            let _ = tx.send(read(store).map_err(storage_err));
        });
        self.reads.try_send(job).map_err(|e| match e {
            flume::TrySendError::Full(_) => {
                self.stats.overloaded_reads.fetch_add(1, Ordering::Relaxed);
                StoreError::ReadsOverloaded {
                    capacity: READ_QUEUE,
                }
            }
            flume::TrySendError::Disconnected(_) => StoreError::Stopped,
        })?;
        rx.recv_async().await.map_err(|_| StoreError::Stopped)?
    }

    /// Primary: a page of the log after `after` (see `Store::read_log`),
    /// read on the reader thread.
    ///
    /// # Errors
    /// Storage failures; [`StoreError::ReadsOverloaded`].
    pub async fn read_log(
        &self,
        after: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<LogRead, StoreError> {
        self.offload(move |s| s.read_log(after, max_entries, max_bytes))
            .await
    }

    /// Primary: a snapshot page (see `Store::snapshot_chunk`), read on the
    /// reader thread.
    ///
    /// # Errors
    /// Storage failures; [`StoreError::ReadsOverloaded`].
    pub async fn snapshot_chunk(
        &self,
        after: Option<Vec<u8>>,
        max: usize,
        max_bytes: usize,
    ) -> Result<(u64, SnapshotPage, bool), StoreError> {
        self.offload(move |s| s.snapshot_chunk(after.as_deref(), max, max_bytes))
            .await
    }

    /// A page of keys with `prefix` (see `Store::scan_prefix`), read on
    /// the reader thread.
    ///
    /// # Errors
    /// Storage failures; [`StoreError::ReadsOverloaded`].
    pub async fn scan_prefix(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<SnapshotPage, StoreError> {
        self.offload(move |s| s.scan_prefix(&prefix, after.as_deref(), limit))
            .await
    }

    /// Primary: durably commits `write` if its condition holds; answers
    /// once the batch it joined is on disk. With `apply_by`, the write is
    /// applied only if the batch it joins starts to commit no later than
    /// that (the committer's clock).
    ///
    /// # Errors
    /// Storage failure of the batch this write was part of;
    /// [`StoreError::DeadlinePassed`] when `apply_by` had passed;
    /// [`StoreError::Overloaded`] when the commit queue is full;
    /// [`StoreError::Unavailable`] at once, without queueing, while the
    /// store is not healthy (not applied); [`StoreError::OutcomeUnknown`].
    pub async fn write(
        &self,
        write: Write,
        apply_by: Option<SystemTime>,
    ) -> Result<Outcome, StoreError> {
        if let Some(e) = self.stats.unavailable() {
            return Err(e);
        }
        self.call(true, |r| Job::Write(write, apply_by, r)).await
    }

    /// Replica: applies log entries in one transaction, logging them and
    /// trimming its log to `keep` (see `Store::apply_entries`); returns
    /// the applied seq.
    ///
    /// # Errors
    /// Storage failure or a gap in the entries.
    pub async fn apply(
        &self,
        entries: Vec<LogEntry>,
        history: Vec<EpochStart>,
        keep: LogKeep,
    ) -> Result<u64, StoreError> {
        self.call(false, |r| Job::Apply(entries, history, keep, r))
            .await
    }

    /// Primary: removes log entries up to `upto`, and the oldest beyond
    /// `keep_bytes` of log or the data's size, whichever is larger (a
    /// bounded amount per call; see `Store::trim_log`).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn trim(&self, upto: u64, keep_bytes: u64) -> Result<usize, StoreError> {
        self.call(false, |r| Job::Trim(upto, keep_bytes, r)).await
    }

    /// Reshard cutover: commits what is queued, then holds every job
    /// until the returned sender says [`HoldCtl::Release`] (or is dropped,
    /// or `max` passes without a message); returns the committed seq.
    ///
    /// # Errors
    /// This node may not write; the queue is full; storage failures.
    pub async fn hold(&self, max: Duration) -> Result<(u64, flume::Sender<HoldCtl>), StoreError> {
        let (ctl_tx, ctl) = flume::bounded(4);
        let seq = self
            .call(true, |reply| Job::Hold { max, reply, ctl })
            .await?;
        Ok((seq, ctl_tx))
    }

    /// Deletes `keys` this node's shard no longer owns (see `Job::Purge`).
    ///
    /// # Errors
    /// This node may not write; storage failures.
    pub async fn purge(&self, keys: Vec<Vec<u8>>) -> Result<usize, StoreError> {
        self.call(false, |r| Job::Purge(keys, r)).await
    }

    /// Replica re-seed steps; see `Store::reseed_*`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn reseed_begin(&self) -> Result<(), StoreError> {
        self.call(false, Job::ReseedBegin).await
    }

    /// # Errors
    /// Storage failures.
    pub async fn reseed_chunk(&self, pairs: Vec<(Vec<u8>, Versioned)>) -> Result<(), StoreError> {
        self.call(false, |r| Job::ReseedChunk(pairs, r)).await
    }

    /// # Errors
    /// Storage failures.
    pub async fn reseed_finish(
        &self,
        seq: u64,
        history: Vec<EpochStart>,
    ) -> Result<(), StoreError> {
        self.call(false, |r| Job::ReseedFinish(seq, history, r))
            .await
    }
}

/// Failure to bring up a node's storage.
#[derive(Debug)]
pub enum StartError {
    Storage(StorageError),
    Thread(std::io::Error),
}

impl From<StorageError> for StartError {
    fn from(e: StorageError) -> Self {
        Self::Storage(e)
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Storage(e) => e.fmt(f),
            Self::Thread(e) => write!(f, "cannot start a storage thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

fn storage_err(e: StorageError) -> StoreError {
    StoreError::Storage(Arc::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Cond, WriteOp};
    use futures_lite::future::block_on;

    fn standalone() -> Fence {
        Fence::new(
            Arc::new(Roles::standalone()),
            Arc::new(crate::layout::Layout::fixed(1)),
            0,
            0,
        )
    }

    #[test]
    fn a_full_read_queue_refuses_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.redb"), false).expect("open");
        let shard =
            NodeStore::start(store, "test", 16, DEFAULT_COMMIT_QUEUE, standalone()).expect("start");
        // Hold the reader thread in one job, then fill its queue.
        let (release, held) = flume::bounded::<()>(0);
        let (started_tx, started) = flume::bounded::<()>(1);
        let hold: ReadJob = Box::new(move |_| {
            let _ = started_tx.send(());
            let _ = held.recv();
        });
        assert!(shard.reads.try_send(hold).is_ok());
        started.recv().expect("reader thread runs jobs");
        for _ in 0..READ_QUEUE {
            let filler: ReadJob = Box::new(|_| {});
            assert!(shard.reads.try_send(filler).is_ok());
        }
        let refused = block_on(shard.scan_prefix(b"k".to_vec(), None, 10));
        assert!(
            matches!(
                refused,
                Err(StoreError::ReadsOverloaded {
                    capacity: READ_QUEUE
                })
            ),
            "{refused:?}"
        );
        assert_eq!(shard.stats.overloaded_reads.load(Ordering::Relaxed), 1);
        drop(release);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !shard.reads.is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        let page = block_on(shard.scan_prefix(b"k".to_vec(), None, 10));
        assert!(matches!(page, Ok(ref p) if p.is_empty()), "{page:?}");
    }

    #[test]
    fn writes_past_their_apply_by_time_are_not_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.redb"), false).expect("open");
        let shard =
            NodeStore::start(store, "test", 16, DEFAULT_COMMIT_QUEUE, standalone()).expect("start");
        let set = |v: &str| Write {
            op: WriteOp::Set {
                key: b"k".to_vec(),
                value: v.as_bytes().to_vec(),
            },
            cond: Cond::Always,
        };
        let now = SystemTime::now();
        let late = block_on(shard.write(set("late"), Some(now - Duration::from_secs(1))));
        assert!(
            matches!(late, Err(StoreError::DeadlinePassed { late }) if late >= Duration::from_secs(1)),
            "{late:?}"
        );
        assert_eq!(shard.store().get(b"k").expect("get"), None);
        let ok = block_on(shard.write(set("in time"), Some(now + Duration::from_mins(1))));
        assert!(matches!(ok, Ok(Outcome::Committed(1))), "{ok:?}");
        let ok = block_on(shard.write(set("no deadline"), None));
        assert!(matches!(ok, Ok(Outcome::Committed(2))), "{ok:?}");
        let v = shard.store().get(b"k").expect("get").expect("present");
        assert_eq!(v.value, b"no deadline");
    }
}
