//! Reading a node's store: [`Reader`] (single keys, on any executor of
//! the process, from a cached MVCC snapshot) and the node's reader thread
//! (large reads handed over as [`ReadJob`]s; see the `nodestore` header).
//!
//! Depends on `storage` only.

use super::NodeStats;
use crate::storage::{ReadView, StorageError, Store, Versioned};
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A large read for the reader thread; it answers on its own channel.
pub(super) type ReadJob = Box<dyn FnOnce(&Store) + Send>;

/// Reads one node's store from any executor of the process.
///
/// Not `Send`: each executor makes its own from [`super::NodeStore::reader_parts`].
/// Reads share one read transaction until the node's committer publishes a
/// new seq or reopens the store (a new [`Store::generation`]: the cached
/// snapshot belongs to the closed `Database` and is dropped; a read that
/// raced with the reopen is retried once on a new snapshot). The committer publishes after a commit and before it
/// acknowledges any write of it, and the seq is loaded before the snapshot
/// is taken, so a reused snapshot holds every acknowledged write. redb read
/// transactions are MVCC snapshots, safe from any thread, and never wait
/// for a commit.
pub struct Reader {
    store: Arc<Store>,
    stats: Arc<NodeStats>,
    /// The cached snapshot, with the store generation and the seq it was
    /// taken at.
    view: RefCell<Option<(u64, u64, ReadView)>>,
    /// A read happened since the last [`Reader::sweep`].
    used: Cell<bool>,
}

impl Reader {
    #[must_use]
    pub fn new(store: Arc<Store>, stats: Arc<NodeStats>) -> Self {
        Self {
            store,
            stats,
            view: RefCell::new(None),
            used: Cell::new(false),
        }
    }

    /// Reads `key` on the calling thread.
    ///
    /// # Errors
    /// Storage failures.
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StorageError> {
        let generation = self.store.generation();
        let seq = self.stats.seq.load(Ordering::Acquire);
        self.used.set(true);
        let mut cached = self.view.borrow_mut();
        if let Some((g, at, view)) = &*cached
            && *g == generation
            && *at == seq
            && !self.stats.reseeding()
        {
            match view.get(key) {
                // Reopened meanwhile: the snapshot's file is closed.
                Err(_) if self.store.generation() != generation => {}
                found => return found,
            }
        }
        cached.take();
        let generation = self.store.generation();
        let view = self.store.snapshot()?;
        let found = view.get(key);
        *cached = Some((generation, seq, view));
        found
    }

    /// Closes the cached snapshot. An old snapshot kept open stops redb
    /// from reusing the pages later commits free (the file only grows).
    pub fn forget(&self) {
        self.view.borrow_mut().take();
    }

    /// Closes the cached snapshot if the node has committed since it was
    /// taken or nothing read it since the last sweep; returns whether a
    /// snapshot is still open. For readers of another executor's node,
    /// whose commits do not pass through this executor.
    pub fn sweep(&self) -> bool {
        let seq = self.stats.seq.load(Ordering::Acquire);
        let generation = self.store.generation();
        let mut cached = self.view.borrow_mut();
        if !self.used.replace(false)
            || matches!(&*cached, Some((g, at, _)) if *at != seq || *g != generation)
        {
            cached.take();
        }
        cached.is_some()
    }
}

/// The reader thread's loop; ends when the [`super::NodeStore`] (the only
/// sender) is dropped.
pub(super) fn serve(store: &Store, jobs: &flume::Receiver<ReadJob>) {
    while let Ok(job) = jobs.recv() {
        job(store);
    }
}
