//! A node's committer thread: takes every job waiting in the commit queue,
//! commits all queued writes in one transaction (one fsync), answers each
//! writer, and runs the node's own jobs (replica applies, log trims,
//! re-seed steps) in queue order.
//!
//! Depends on `storage` and flume only; [`super::NodeStore`] is the only
//! sender.

use super::{NodeStats, Reply, StoreError, storage_err};
use crate::storage::{LogEntry, Outcome, Store, Versioned, Write};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// Work for the committer thread.
pub(super) enum Job {
    /// A write, its apply-by time (if any) and where to answer.
    Write(Write, Option<SystemTime>, Reply<Outcome>),
    Apply(Vec<LogEntry>, Reply<u64>),
    Trim(u64, Reply<usize>),
    ReseedBegin(Reply<()>),
    ReseedChunk(Vec<(Vec<u8>, Versioned)>, Reply<()>),
    ReseedFinish(u64, Reply<()>),
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

pub(super) fn committer(
    store: &Store,
    rx: &flume::Receiver<Job>,
    stats: &NodeStats,
    max_batch: usize,
) {
    let mut pending = Pending::default();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write(op, apply_by, reply) => {
                    pending.ops.push(op);
                    pending.apply_by.push(apply_by);
                    pending.replies.push(reply);
                    if pending.ops.len() >= max_batch {
                        flush(store, stats, &mut pending);
                    }
                }
                other => {
                    // Keep queue order: writes queued before this job commit first.
                    flush(store, stats, &mut pending);
                    run_other(store, stats, other);
                }
            }
            next = rx.try_recv().ok();
        }
        flush(store, stats, &mut pending);
    }
}

fn flush(store: &Store, stats: &NodeStats, pending: &mut Pending) {
    // The last moment before the transaction that applies these writes.
    pending.drop_expired(SystemTime::now());
    let Pending {
        ops,
        apply_by,
        replies,
    } = pending;
    apply_by.clear();
    if ops.is_empty() {
        return;
    }
    match store.commit_writes(ops) {
        Ok(outcomes) => {
            let mut committed = 0;
            let mut last = None;
            for o in &outcomes {
                if let Outcome::Committed(seq) = o {
                    committed += 1;
                    last = Some(*seq);
                }
            }
            if let Some(seq) = last {
                publish(store, stats, seq);
            }
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .committed_writes
                .fetch_add(committed, Ordering::Relaxed);
            stats.record_batch(ops.len());
            for (o, reply) in outcomes.into_iter().zip(replies.drain(..)) {
                let _ = reply.send(Ok(o));
            }
        }
        Err(e) => {
            let e = storage_err(e);
            for reply in replies.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
    ops.clear();
}

fn publish(store: &Store, stats: &NodeStats, seq: u64) {
    stats.seq.store(seq, Ordering::Release);
    if let Ok(k) = store.key_count() {
        stats.keys.store(k, Ordering::Relaxed);
    }
}

fn run_other(store: &Store, stats: &NodeStats, job: Job) {
    match job {
        Job::Write(..) => {}
        Job::Apply(entries, reply) => {
            let r = store.apply_entries(&entries).map_err(storage_err);
            if let Ok(seq) = r {
                publish(store, stats, seq);
                stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            let _ = reply.send(r);
        }
        Job::Trim(upto, reply) => {
            let _ = reply.send(store.trim_log(upto, 100_000).map_err(storage_err));
        }
        Job::ReseedBegin(reply) => {
            let r = store.reseed_begin().map_err(storage_err);
            if r.is_ok() {
                stats.keys.store(0, Ordering::Relaxed);
            }
            let _ = reply.send(r);
        }
        Job::ReseedChunk(pairs, reply) => {
            let r = store.reseed_chunk(&pairs).map_err(storage_err);
            if let Ok(k) = store.key_count() {
                stats.keys.store(k, Ordering::Relaxed);
            }
            let _ = reply.send(r);
        }
        Job::ReseedFinish(seq, reply) => {
            let r = store.reseed_finish(seq).map_err(storage_err);
            if r.is_ok() {
                publish(store, stats, seq);
            }
            let _ = reply.send(r);
        }
    }
}
