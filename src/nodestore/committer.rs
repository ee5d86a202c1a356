//! A node's committer thread: takes every job waiting in the commit queue,
//! commits all queued writes in one transaction (one fsync), answers each
//! writer, and runs the node's own jobs (replica applies, log trims,
//! re-seed steps) in queue order. Each group commit also trims the log up
//! to [`NodeStats::trim_upto`]; after jobs it publishes the store's space
//! figures, at most once a second.
//!
//! It also owns the store's recovery from I/O errors (a full disk): it
//! reopens the store, decides what a failed batch became, publishes the
//! node's storage health, refuses jobs while the store is not healthy and
//! retries with back-off (see the `nodestore` header for the whole story).
//!
//! Depends on `storage`, `log` and flume only; [`super::NodeStore`] is the
//! only sender.

use super::{
    Fence, NodeStats, PROBE_BYTES, RETRY_FIRST, RETRY_MAX, Reply, StorageHealth, StoreError,
    storage_err,
};
use crate::log::Level;
use crate::log_at;
use crate::storage::{
    Cond, EpochStart, LogEntry, LogKeep, Outcome, StorageError, Store, Versioned, Write, WriteOp,
};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// How often the committer publishes the store's space figures (after a
/// job; an idle store does not change).
const SPACE_EVERY: Duration = Duration::from_secs(1);

/// Work for the committer thread.
pub(super) enum Job {
    /// A write, its apply-by time (if any) and where to answer.
    Write(Write, Option<SystemTime>, Reply<Outcome>),
    /// Replicated entries and the epoch history that covers them.
    Apply(Vec<LogEntry>, Vec<EpochStart>, LogKeep, Reply<u64>),
    Trim(u64, u64, Reply<usize>),
    ReseedBegin(Reply<()>),
    ReseedChunk(Vec<(Vec<u8>, Versioned)>, Reply<()>),
    ReseedFinish(u64, Vec<EpochStart>, Reply<()>),
    /// A reshard's cutover: commit what is queued, answer the committed
    /// seq, then take no job until [`HoldCtl::Release`], the sender's end
    /// of the control channel is dropped, or `max` passes without a
    /// control message (a reshard command that died must not hold writes
    /// for ever).
    Hold {
        max: Duration,
        reply: Reply<u64>,
        ctl: flume::Receiver<HoldCtl>,
    },
    /// Deletes keys this node's shard no longer owns (after a reshard's
    /// cutover): logged and replicated like client deletes, but not
    /// subject to the ownership check. Answers how many were deleted.
    Purge(Vec<Vec<u8>>, Reply<usize>),
}

/// What a held committer can be told (see `Job::Hold`).
pub enum HoldCtl {
    /// The cutover's commit point: record in the layout that old shard
    /// `pair`'s keys moved, while nothing can commit here. Keeps holding.
    Split {
        pair: usize,
        reply: flume::Sender<Result<u64, String>>,
    },
    /// Take jobs again.
    Release,
}

/// Writes waiting for the next commit, with their apply-by times and
/// where to answer (the three vectors are index-aligned).
#[derive(Default)]
struct Pending {
    ops: Vec<Write>,
    apply_by: Vec<Option<SystemTime>>,
    replies: Vec<Reply<Outcome>>,
}

impl Pending {
    /// Answers and removes the writes whose apply-by time is before `now`.
    fn drop_expired(&mut self, now: SystemTime) {
        let expired = |by: &Option<SystemTime>| by.is_some_and(|by| now > by);
        if !self.apply_by.iter().any(expired) {
            return;
        }
        let ops = std::mem::take(&mut self.ops);
        let apply_by = std::mem::take(&mut self.apply_by);
        let replies = std::mem::take(&mut self.replies);
        for ((op, by), reply) in ops.into_iter().zip(apply_by).zip(replies) {
            match by {
                Some(by) if now > by => {
                    let late = now.duration_since(by).unwrap_or_default();
                    let _ = reply.send(Err(StoreError::DeadlinePassed { late }));
                }
                _ => {
                    self.ops.push(op);
                    self.apply_by.push(by);
                    self.replies.push(reply);
                }
            }
        }
    }
}

/// The store failed and is not taking jobs yet.
struct Failure {
    /// The disk was full: a probe must find space before writes retry.
    no_space: bool,
    /// The store is open again (the reopen after the failure worked).
    reopened: bool,
    /// The failure, for `/status` and the errors jobs get.
    cause: String,
    /// When to try to bring the store back.
    retry_at: Instant,
}

struct Committer<'a> {
    store: &'a Store,
    stats: &'a NodeStats,
    name: &'a str,
    max_batch: usize,
    pending: Pending,
    /// Reused for every batch's outcomes.
    outcomes: Vec<Outcome>,
    failure: Option<Failure>,
    /// The pause before the next retry after a failure.
    backoff: Duration,
    fence: &'a Fence,
    /// The newest epoch begun in the store (`Store::begin_epoch`).
    begun: u64,
    /// When the store's space figures were last published.
    space_at: Instant,
    /// A job ran since then.
    space_dirty: bool,
}

pub(super) fn committer(
    store: &Store,
    rx: &flume::Receiver<Job>,
    stats: &NodeStats,
    max_batch: usize,
    name: &str,
    fence: &Fence,
) {
    let begun = store.epochs().ok().and_then(|h| h.last().map(|&(e, _)| e));
    let mut c = Committer {
        fence,
        begun: begun.unwrap_or(0),
        store,
        stats,
        name,
        max_batch,
        pending: Pending::default(),
        outcomes: Vec::new(),
        failure: None,
        backoff: RETRY_FIRST,
        space_at: Instant::now(),
        space_dirty: false,
    };
    loop {
        let job = match c.failure.as_ref().map(|f| f.retry_at) {
            // Healthy with nothing gathered: sleep until a job comes (or
            // until the space figures of the last jobs are due).
            None if c.pending.ops.is_empty() && c.space_dirty => {
                match rx.recv_deadline(c.space_at + SPACE_EVERY) {
                    Ok(job) => job,
                    Err(flume::RecvTimeoutError::Timeout) => {
                        c.refresh_space();
                        continue;
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
            }
            None if c.pending.ops.is_empty() => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            // Healthy: gather what is queued, commit when nothing more is.
            None => match rx.try_recv() {
                Ok(job) => job,
                Err(flume::TryRecvError::Empty) => {
                    c.flush();
                    continue;
                }
                Err(flume::TryRecvError::Disconnected) => break,
            },
            // Failed: refuse jobs until it is time to retry.
            Some(at) => {
                if Instant::now() >= at {
                    c.recover();
                    continue;
                }
                match rx.recv_deadline(at) {
                    Ok(job) => job,
                    Err(flume::RecvTimeoutError::Timeout) => continue,
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        c.take(job);
        c.space_dirty = true;
        c.refresh_space();
    }
    c.flush();
}

impl Committer<'_> {
    /// Publishes the store's space figures, at most once a second.
    fn refresh_space(&mut self) {
        if self.failure.is_some() || self.space_at.elapsed() < SPACE_EVERY {
            return;
        }
        self.space_at = Instant::now();
        self.space_dirty = false;
        if let Ok(space) = self.store.space() {
            self.stats.publish_space(&space);
        }
    }

    fn take(&mut self, job: Job) {
        if let Some(f) = &self.failure {
            let health = if f.reopened {
                if f.no_space {
                    StorageHealth::NoSpace
                } else {
                    StorageHealth::Failed
                }
            } else {
                StorageHealth::Reopening
            };
            refuse(
                job,
                &StoreError::Unavailable {
                    health,
                    cause: f.cause.clone(),
                },
            );
            return;
        }
        match job {
            Job::Write(op, _, reply) if !self.fence.owns(op.op.key()) => {
                // A reshard moved the key to another shard: nothing of it is
                // applied here; the API sends it to the new owner.
                let _ = reply.send(Err(StoreError::Moved));
            }
            Job::Write(op, apply_by, reply) => {
                self.pending.ops.push(op);
                self.pending.apply_by.push(apply_by);
                self.pending.replies.push(reply);
                if self.pending.ops.len() >= self.max_batch {
                    self.flush();
                }
            }
            other => {
                // Keep queue order: writes queued before this job commit first.
                self.flush();
                if self.failure.is_some() {
                    self.take(other);
                } else {
                    self.run_other(other);
                }
            }
        }
    }

    fn flush(&mut self) {
        // The last moment before the transaction that applies these writes.
        self.pending.drop_expired(SystemTime::now());
        self.pending.apply_by.clear();
        if self.pending.ops.is_empty() {
            return;
        }
        let Some(epoch) = self.writable_epoch() else {
            self.refuse_batch(&StoreError::NotPrimary);
            return;
        };
        let trim_upto = self.stats.trim_upto.load(Ordering::Acquire);
        let result =
            self.store
                .commit_writes_into(&self.pending.ops, trim_upto, &mut self.outcomes);
        let batch = self.pending.ops.len();
        let answer: Result<(), StoreError> = match result {
            Ok(()) => {
                self.backoff = RETRY_FIRST;
                Ok(())
            }
            Err(e) if e.needs_reopen() => {
                let after = self.fail(&e);
                self.verdict(batch, after)
            }
            Err(e) => Err(storage_err(e)),
        };
        // The lease must still hold now that the commit is over: otherwise a
        // new primary may have started without these writes.
        let answer = answer.and_then(|()| {
            if self.fence.writable_epoch() == Some(epoch) {
                Ok(())
            } else {
                self.lease_lost();
                Err(StoreError::LeaseLost)
            }
        });
        let replies = self.pending.replies.drain(..);
        match answer {
            Ok(()) => {
                let (committed, last) = committed(&self.outcomes);
                if let Some(seq) = last {
                    publish(self.store, self.stats, seq);
                }
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .committed_writes
                    .fetch_add(committed, Ordering::Relaxed);
                self.stats.record_batch(batch);
                for (o, reply) in self.outcomes.iter().zip(replies) {
                    let _ = reply.send(Ok(*o));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        self.pending.ops.clear();
    }

    /// The epoch the next batch may commit in, after starting it in the
    /// store if it is new; `None` when this node may not write now.
    fn writable_epoch(&mut self) -> Option<u64> {
        let epoch = self.fence.writable_epoch()?;
        if epoch > self.begun {
            match self.store.begin_epoch(epoch) {
                Ok(start) => {
                    log_at!(
                        Level::Info,
                        self.name,
                        "primary in epoch {epoch}, from seq {start}"
                    );
                    self.begun = epoch;
                    self.stats.epoch.store(epoch, Ordering::Release);
                }
                Err(e) => {
                    let e = self.check::<()>(Err(e));
                    if let Err(e) = e {
                        self.refuse_batch(&e);
                    }
                    return None;
                }
            }
        }
        Some(epoch)
    }

    /// Answers every gathered write with `e` (nothing was applied).
    fn refuse_batch(&mut self, e: &StoreError) {
        if matches!(e, StoreError::NotPrimary) {
            self.stats
                .fenced_writes
                .fetch_add(self.pending.ops.len() as u64, Ordering::Relaxed);
        }
        for reply in self.pending.replies.drain(..) {
            let _ = reply.send(Err(e.clone()));
        }
        self.pending.ops.clear();
        self.pending.apply_by.clear();
    }

    /// The batch just committed outlived the lease: publish what is in the
    /// store (it is there) and count the writes; their writers hear
    /// [`StoreError::LeaseLost`].
    fn lease_lost(&self) {
        let last = self.outcomes.iter().rev().find_map(|o| match o {
            Outcome::Committed(seq) => Some(*seq),
            Outcome::ConditionFailed { .. } => None,
        });
        if let Some(seq) = last {
            publish(self.store, self.stats, seq);
        }
        self.stats
            .lease_lost_writes
            .fetch_add(self.outcomes.len() as u64, Ordering::Relaxed);
        log_at!(
            Level::Warn,
            self.name,
            "the lease ran out during a commit of {} writes: answered as outcome unknown",
            self.outcomes.len()
        );
    }

    /// What a batch whose commit failed with an I/O error became, judged by
    /// the committed seq `after` found once the store was reopened (`None`:
    /// it could not be). `Ok` means applied, with `self.outcomes`.
    fn verdict(&self, batch: usize, after: Option<u64>) -> Result<(), StoreError> {
        let seqs = || {
            self.outcomes.iter().filter_map(|o| match o {
                Outcome::Committed(seq) => Some(*seq),
                Outcome::ConditionFailed { .. } => None,
            })
        };
        let not_applied = || {
            let health = if self.stats.health() == StorageHealth::NoSpace {
                StorageHealth::NoSpace
            } else {
                StorageHealth::Failed
            };
            Err(StoreError::Unavailable {
                health,
                cause: self.stats.storage_error(),
            })
        };
        if self.outcomes.len() != batch {
            // The transaction failed before its commit: it was dropped.
            return not_applied();
        }
        let (Some(first), Some(last)) = (seqs().next(), seqs().next_back()) else {
            // Every condition failed: the batch changed nothing, whatever
            // happened to its commit, and the outcomes hold.
            return Ok(());
        };
        match after {
            Some(seq) if seq >= last => {
                log_at!(
                    Level::Warn,
                    self.name,
                    "the failed commit of seqs {first}..={last} is in the store after the reopen: answered as applied"
                );
                Ok(())
            }
            Some(seq) if seq < first => not_applied(),
            _ => Err(StoreError::OutcomeUnknown {
                cause: self.stats.storage_error(),
            }),
        }
    }

    /// Records an I/O failure and reopens the store at once; returns the
    /// committed seq found after the reopen (`None` when it failed).
    fn fail(&mut self, e: &StorageError) -> Option<u64> {
        self.stats.storage_failures.fetch_add(1, Ordering::Relaxed);
        let (no_space, cause) = (e.no_space(), e.to_string());
        log_at!(
            Level::Error,
            self.name,
            "storage failed: {cause}; reopening the store (writes are refused until it recovers)"
        );
        self.stats.set_health(StorageHealth::Reopening, &cause);
        let retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        self.failure = Some(Failure {
            no_space,
            reopened: false,
            cause,
            retry_at,
        });
        self.reopen()
    }

    /// Reopens the store after a failure; returns the committed seq then.
    fn reopen(&mut self) -> Option<u64> {
        let f = self.failure.as_mut()?;
        match self.store.reopen() {
            Ok(()) => {
                self.stats.reopens.fetch_add(1, Ordering::Relaxed);
                f.reopened = true;
                let health = if f.no_space {
                    StorageHealth::NoSpace
                } else {
                    StorageHealth::Failed
                };
                self.stats.set_health(health, &f.cause);
                let seq = self.store.seq().ok();
                if let Some(seq) = seq {
                    publish(self.store, self.stats, seq);
                }
                log_at!(
                    Level::Info,
                    self.name,
                    "store reopened at seq {}; reads work, writes wait for the store to recover",
                    seq.map_or_else(|| "?".to_string(), |s| s.to_string())
                );
                seq
            }
            Err(e) => {
                log_at!(
                    Level::Error,
                    self.name,
                    "cannot reopen the store: {e}; retrying"
                );
                None
            }
        }
    }

    /// Tries to bring a failed store back: reopens it if it is still
    /// closed, probes for space after a full disk, and takes jobs again
    /// once both work; otherwise waits longer.
    fn recover(&mut self) {
        let Some(f) = &self.failure else {
            return;
        };
        let (reopened, no_space) = (f.reopened, f.no_space);
        let ready = (reopened || self.reopen().is_some())
            && (!no_space || self.store.probe_space(PROBE_BYTES).is_ok());
        let Some(f) = &mut self.failure else {
            return;
        };
        if ready {
            log_at!(
                Level::Info,
                self.name,
                "storage recovered (after: {}); taking writes again",
                f.cause
            );
            self.failure = None;
            self.stats.set_health(StorageHealth::Ok, "");
        } else {
            f.retry_at = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(RETRY_MAX);
        }
    }

    /// The result of a job that is not a client write; an I/O failure
    /// reopens the store (the job's caller retries it: applies, trims and
    /// re-seed steps are idempotent).
    fn check<T>(&mut self, r: Result<T, StorageError>) -> Result<T, StoreError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) if e.needs_reopen() => {
                self.fail(&e);
                Err(storage_err(e))
            }
            Err(e) => Err(storage_err(e)),
        }
    }

    /// Holds every job (see [`Job::Hold`]); the queue before it has been
    /// committed by `take`.
    fn hold(&mut self, max: Duration, reply: &Reply<u64>, ctl: &flume::Receiver<HoldCtl>) {
        let seq = self.stats.seq.load(Ordering::Acquire);
        let Some(epoch) = self.fence.writable_epoch() else {
            let _ = reply.send(Err(StoreError::NotPrimary));
            return;
        };
        if reply.send(Ok(seq)).is_err() {
            return;
        }
        log_at!(
            Level::Info,
            self.name,
            "writes held at seq {seq} (reshard cutover)"
        );
        self.stats.held.store(true, Ordering::Release);
        let started = Instant::now();
        let mut until = Instant::now() + max;
        loop {
            match ctl.recv_deadline(until) {
                Ok(HoldCtl::Split { pair, reply }) => {
                    // The commit point only while this node still holds its
                    // role in the epoch it was held in (with `--etcd` a
                    // failover may have moved it meanwhile).
                    let r = if self.fence.writable_epoch() == Some(epoch) {
                        self.fence
                            .split(pair)
                            .map(|()| self.stats.seq.load(Ordering::Acquire))
                    } else {
                        Err(format!(
                            "{} lost its role (epoch {epoch}) during the hold",
                            self.name
                        ))
                    };
                    let _ = reply.send(r);
                    until = Instant::now() + max;
                }
                Ok(HoldCtl::Release) | Err(flume::RecvTimeoutError::Disconnected) => break,
                Err(flume::RecvTimeoutError::Timeout) => {
                    log_at!(
                        Level::Warn,
                        self.name,
                        "writes were held for {} ms without a word from the reshard; taking writes again",
                        max.as_millis()
                    );
                    break;
                }
            }
        }
        self.stats.held.store(false, Ordering::Release);
        log_at!(
            Level::Info,
            self.name,
            "writes released after {} ms",
            started.elapsed().as_millis()
        );
    }

    /// Deletes `keys` (those still present) in one transaction.
    fn purge(&mut self, keys: Vec<Vec<u8>>) -> Result<usize, StoreError> {
        if self.fence.writable_epoch().is_none() {
            return Err(StoreError::NotPrimary);
        }
        let writes: Vec<Write> = keys
            .into_iter()
            .map(|key| Write {
                op: WriteOp::Delete { key },
                cond: Cond::Present,
            })
            .collect();
        let trim_upto = self.stats.trim_upto.load(Ordering::Acquire);
        let mut outcomes = Vec::new();
        let r = self
            .store
            .commit_writes_into(&writes, trim_upto, &mut outcomes);
        self.check(r)?;
        let (deleted, last) = committed(&outcomes);
        if let Some(seq) = last {
            publish(self.store, self.stats, seq);
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.purged_keys.fetch_add(deleted, Ordering::Relaxed);
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    fn run_other(&mut self, job: Job) {
        let (store, stats) = (self.store, self.stats);
        match job {
            Job::Write(..) => {}
            Job::Apply(entries, history, keep, reply) => {
                if self.fence.is_primary() {
                    let _ = reply.send(Err(StoreError::IsPrimary));
                    return;
                }
                let r = self.check(store.apply_entries(&entries, &history, keep));
                if let Ok(seq) = r {
                    publish(store, stats, seq);
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    if let Ok(e) = store.last_epoch() {
                        stats.epoch.store(e, Ordering::Release);
                    }
                }
                let _ = reply.send(r);
            }
            Job::Trim(upto, keep_bytes, reply) => {
                let _ = reply.send(self.check(store.trim_log(upto, 100_000, keep_bytes)));
            }
            Job::ReseedBegin(reply) => {
                let r = self.check(store.reseed_begin());
                if r.is_ok() {
                    stats.keys.store(0, Ordering::Relaxed);
                }
                let _ = reply.send(r);
            }
            Job::ReseedChunk(pairs, reply) => {
                let r = self.check(store.reseed_chunk(&pairs));
                if let Ok(k) = store.key_count() {
                    stats.keys.store(k, Ordering::Relaxed);
                }
                let _ = reply.send(r);
            }
            Job::Hold { max, reply, ctl } => self.hold(max, &reply, &ctl),
            Job::Purge(keys, reply) => {
                let r = self.purge(keys);
                let _ = reply.send(r);
            }
            Job::ReseedFinish(seq, history, reply) => {
                let r = self.check(store.reseed_finish(seq, &history));
                if r.is_ok() {
                    publish(store, stats, seq);
                    if let Ok(e) = store.last_epoch() {
                        stats.epoch.store(e, Ordering::Release);
                    }
                }
                let _ = reply.send(r);
            }
        }
    }
}

/// Answers `job` with `e` without running it.
fn refuse(job: Job, e: &StoreError) {
    match job {
        Job::Write(_, _, reply) => {
            let _ = reply.send(Err(e.clone()));
        }
        Job::Apply(_, _, _, reply) | Job::Hold { reply, .. } => {
            let _ = reply.send(Err(e.clone()));
        }
        Job::Trim(_, _, reply) | Job::Purge(_, reply) => {
            let _ = reply.send(Err(e.clone()));
        }
        Job::ReseedBegin(reply) | Job::ReseedChunk(_, reply) | Job::ReseedFinish(_, _, reply) => {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

/// How many of a batch's `outcomes` committed, and the last seq.
fn committed(outcomes: &[Outcome]) -> (u64, Option<u64>) {
    outcomes.iter().fold((0, None), |(n, last), o| match o {
        Outcome::Committed(seq) => (n + 1, Some(*seq)),
        Outcome::ConditionFailed { .. } => (n, last),
    })
}

fn publish(store: &Store, stats: &NodeStats, seq: u64) {
    stats.seq.store(seq, Ordering::Release);
    if let Ok(k) = store.key_count() {
        stats.keys.store(k, Ordering::Relaxed);
    }
}
