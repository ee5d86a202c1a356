//! The one module that imports redb: a node's key-value data and its
//! replication log in one file.
//!
//! Synchronous; no async, no executor types. A primary's write stores the
//! data change and its log entry in one transaction; a replica's apply
//! stores the data change and its applied sequence in one transaction.
//! Transactions never outlive a call (read snapshots handed out by
//! [`Store::snapshot`] do, see below). Layout of the file:
//!
//! ```text
//! data: key bytes -> [seq: u64 LE][value bytes]   seq = the write that set it
//! log : seq u64   -> [op: u8][key len: u32 LE][key][value]   (primary only)
//! meta: "seq"     -> last committed (primary) / last applied (replica)
//!       "reseed"  -> 1 while a replica re-seed is incomplete
//! ```
//!
//! Reopening. After one I/O error (a full disk: `ENOSPC`) redb latches the
//! database: every later operation fails with "Previous I/O error
//! occurred" until it is closed and opened again. [`Store::reopen`] does
//! that behind `&self`, so the `Arc<Store>` that executors, the reader
//! thread and the committer share stays the same object for the life of
//! the process: the `Database` lives in an `RwLock<Option<Database>>` that
//! every call holds only to begin a transaction (a read transaction does
//! not borrow the `Database`). `reopen` takes the `Database` out (calls
//! meanwhile get [`StorageError::Reopening`]), closes it (redb 4 closes the
//! file and releases its locks even while read transactions of it are
//! alive; those then fail with "database closed"), opens the file again
//! (redb repairs it: it keeps the last commit whose pages are all intact,
//! which needs no free space) and puts it back. Each reopen bumps
//! [`Store::generation`], so a caller that caches a snapshot knows it must
//! take a new one. Only one thread may call `reopen` (the node's
//! committer, which is also the only writer).
//!
//! A commit that failed with an I/O error may or may not be in the file
//! after the reopen: redb writes the new header before the final flush, so
//! the outcome is decided by which pages reached the disk. Callers find out
//! by reading the committed seq after the reopen ([`Store::seq`]); see
//! [`Store::commit_writes`].

mod epochs;
mod types;

pub use epochs::{EpochStart, end_of, epoch_of};

pub use types::{
    Cond, LogEntry, LogRead, Outcome, SnapshotPage, StorageError, Tags, Versioned, Write, WriteOp,
};
use types::{decode_value, encode_value};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_SEQ: &str = "seq";
const META_RESEED: &str = "reseed";

/// Page cache per node file by default (`--cache-mb`).
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A read-only snapshot of a node's data (see [`Store::snapshot`]).
pub struct ReadView {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl ReadView {
    /// The value of `key` in this snapshot.
    ///
    /// # Errors
    /// Storage failures.
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StorageError> {
        self.table
            .get(key)?
            .map(|v| decode_value(v.value()))
            .transpose()
    }
}

/// One node's redb file.
pub struct Store {
    /// `None` only while [`Store::reopen`] runs, or after a reopen failed.
    db: RwLock<Option<Database>>,
    /// Bumped by every [`Store::reopen`] (when the old `Database` is taken
    /// out and again when the new one is in place).
    generation: AtomicU64,
    path: PathBuf,
    cache_bytes: usize,
    durability: Durability,
}

impl Store {
    /// Opens (or creates) the file at `path` with redb's default cache.
    /// `durable` selects fsync on every commit (`Durability::Immediate`);
    /// off only for tests that must show the crash test can detect loss.
    ///
    /// # Errors
    /// The file cannot be created, opened or locked.
    pub fn open(path: &Path, durable: bool) -> Result<Self, StorageError> {
        Self::open_with_cache(path, durable, DEFAULT_CACHE_BYTES)
    }

    /// As [`Store::open`], with a page cache of `cache_bytes`.
    ///
    /// # Errors
    /// The file cannot be created, opened or locked.
    pub fn open_with_cache(
        path: &Path,
        durable: bool,
        cache_bytes: usize,
    ) -> Result<Self, StorageError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(DATA)?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.open_table(epochs::EPOCHS)?;
        txn.commit()?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            generation: AtomicU64::new(0),
            path: path.to_path_buf(),
            cache_bytes,
            durability: if durable {
                Durability::Immediate
            } else {
                Durability::None
            },
        })
    }

    /// The file this store keeps its data in.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes with every [`Store::reopen`]: a snapshot taken under another
    /// generation belongs to a closed `Database` and must be dropped.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs `f` on the open `Database`; the lock is held only for `f`,
    /// which begins a transaction (it does not borrow the `Database`).
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        f(db.as_ref().ok_or(StorageError::Reopening)?)
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StorageError> {
        self.with_db(|db| Ok(db.begin_read()?))
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        self.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(self.durability)?;
            Ok(txn)
        })
    }

    /// Closes the file and opens it again (see the module header). Calls on
    /// other threads meanwhile get [`StorageError::Reopening`]; snapshots
    /// of the old `Database` fail from now on. On failure the store stays
    /// closed and `reopen` may be called again.
    ///
    /// Only one thread may call this (the node's committer).
    ///
    /// # Errors
    /// The file cannot be opened (or repaired).
    pub fn reopen(&self) -> Result<(), StorageError> {
        let old = self
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Outside the lock: a close of a healthy database writes (allocator
        // state, header) and readers must not wait for it. A latched one
        // only releases the file. Its error (the latched one) is known.
        if let Some(db) = old {
            let _ = db.close();
        }
        let db = Database::builder()
            .set_cache_size(self.cache_bytes)
            .create(&self.path)?;
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(db);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Whether `bytes` can be written next to the store's file right now:
    /// writes a probe file of that size, syncs it and removes it. A full
    /// disk answers `Err` (`ENOSPC`) without touching the store.
    ///
    /// # Errors
    /// The probe could not be written.
    pub fn probe_space(&self, bytes: usize) -> std::io::Result<()> {
        let mut probe = self.path.clone().into_os_string();
        probe.push(".space-probe");
        let probe = PathBuf::from(probe);
        let written = (|| {
            let mut f = std::fs::File::create(&probe)?;
            let chunk = vec![0u8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                f.write_all(&chunk[..n])?;
                left -= n;
            }
            f.sync_all()
        })();
        let _ = std::fs::remove_file(&probe);
        written
    }

    /// The current value of `key`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StorageError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(DATA)?;
        let found = table.get(key)?;
        found.map(|v| decode_value(v.value())).transpose()
    }

    /// A snapshot of the data table for any number of reads (one read
    /// transaction; writes committed later are not visible in it).
    ///
    /// # Errors
    /// Storage failures.
    pub fn snapshot(&self) -> Result<ReadView, StorageError> {
        let txn = self.begin_read()?;
        Ok(ReadView {
            table: txn.open_table(DATA)?,
        })
    }

    /// Last committed (primary) or applied (replica) sequence number.
    ///
    /// # Errors
    /// Storage failures.
    pub fn seq(&self) -> Result<u64, StorageError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(META_SEQ)?.map_or(0, |v| v.value()))
    }

    /// Number of keys stored.
    ///
    /// # Errors
    /// Storage failures.
    pub fn key_count(&self) -> Result<u64, StorageError> {
        let txn = self.begin_read()?;
        Ok(txn.open_table(DATA)?.len()?)
    }

    /// Primary: commits `writes` in one transaction. Each write whose
    /// condition holds (checked in order, so a write sees the ones before
    /// it) gets the next sequence number and a log record; the others
    /// change nothing. Returns one outcome per write, in order.
    ///
    /// # Errors
    /// Storage failures; see [`Store::commit_writes_into`] for what is
    /// committed then.
    pub fn commit_writes(&self, writes: &[Write]) -> Result<Vec<Outcome>, StorageError> {
        let mut outcomes = Vec::with_capacity(writes.len());
        self.commit_writes_into(writes, &mut outcomes)?;
        Ok(outcomes)
    }

    /// As [`Store::commit_writes`], filling `outcomes` (cleared first)
    /// before the commit, so that they are known when the commit itself
    /// fails.
    ///
    /// # Errors
    /// Storage failures. If `outcomes` then holds one outcome per write,
    /// the failure came from the commit itself: with an I/O error
    /// ([`StorageError::needs_reopen`]) the batch may or may not be in the
    /// file once it is reopened, and it is there exactly when the committed
    /// seq ([`Store::seq`]) has reached the last `Committed` seq. Otherwise
    /// the transaction was dropped before its commit and nothing of it is
    /// in the file.
    pub fn commit_writes_into(
        &self,
        writes: &[Write],
        outcomes: &mut Vec<Outcome>,
    ) -> Result<(), StorageError> {
        outcomes.clear();
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mut data = txn.open_table(DATA)?;
            let mut log = txn.open_table(LOG)?;
            let mut seq = meta.get(META_SEQ)?.map_or(0, |v| v.value());
            let mut record = Vec::new();
            for w in writes {
                if w.cond != Cond::Always {
                    let current = match data.get(w.op.key())? {
                        Some(v) => Some(decode_value(v.value())?.seq),
                        None => None,
                    };
                    if !w.cond.holds(current) {
                        outcomes.push(Outcome::ConditionFailed { current });
                        continue;
                    }
                }
                seq += 1;
                match &w.op {
                    WriteOp::Set { key, value } => {
                        data.insert(key.as_slice(), encode_value(seq, value).as_slice())?;
                    }
                    WriteOp::Delete { key } => {
                        data.remove(key.as_slice())?;
                    }
                }
                record.clear();
                w.op.encode_into(&mut record);
                log.insert(seq, record.as_slice())?;
                outcomes.push(Outcome::Committed(seq));
            }
            meta.insert(META_SEQ, seq)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Up to `limit` pairs whose keys start with `prefix` and sort after
    /// `after` (from the first such key when `None`).
    ///
    /// # Errors
    /// Storage failures.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<SnapshotPage, StorageError> {
        use std::ops::Bound;
        let txn = self.begin_read()?;
        let data = txn.open_table(DATA)?;
        let lower = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for item in data.range::<&[u8]>((lower, Bound::Unbounded))? {
            let (k, v) = item?;
            let k = k.value();
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), decode_value(v.value())?));
        }
        Ok(out)
    }

    /// Primary: log entries after `after`, at most `max_entries` and about
    /// `max_bytes` of payload (always at least one entry when any exists).
    ///
    /// # Errors
    /// Storage failures.
    pub fn read_log(
        &self,
        after: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<LogRead, StorageError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        let last = meta.get(META_SEQ)?.map_or(0, |v| v.value());
        if after >= last {
            return Ok(LogRead::Entries(Vec::new()));
        }
        let log = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        for item in log.range(after + 1..)? {
            let (seq, raw) = item?;
            let seq = seq.value();
            if entries.is_empty() && seq != after + 1 {
                return Ok(LogRead::Trimmed);
            }
            let raw = raw.value();
            bytes += raw.len();
            entries.push(LogEntry {
                seq,
                op: WriteOp::decode(raw)?,
            });
            if entries.len() >= max_entries || bytes >= max_bytes {
                break;
            }
        }
        if entries.is_empty() {
            // after < last but nothing is logged past it: trimmed away.
            return Ok(LogRead::Trimmed);
        }
        Ok(LogRead::Entries(entries))
    }

    /// Primary: removes log entries with seq `<= upto`, at most `max` of them
    /// (so one call stays short). Returns how many were removed.
    ///
    /// # Errors
    /// Storage failures.
    pub fn trim_log(&self, upto: u64, max: usize) -> Result<usize, StorageError> {
        let txn = self.begin_write()?;
        let removed = {
            let mut log = txn.open_table(LOG)?;
            let mut keys = Vec::new();
            for item in log.range(..=upto)? {
                keys.push(item?.0.value());
                if keys.len() >= max {
                    break;
                }
            }
            for k in &keys {
                log.remove(*k)?;
            }
            keys.len()
        };
        txn.commit()?;
        Ok(removed)
    }

    /// Replica: applies `entries` in order in one transaction and records
    /// the last one as applied. Entries at or below the applied seq are
    /// skipped (re-delivery is harmless); a gap is an error.
    ///
    /// # Errors
    /// [`StorageError::Gap`] or storage failures; nothing is applied then.
    pub fn apply_entries(
        &self,
        entries: &[LogEntry],
        history: &[EpochStart],
    ) -> Result<u64, StorageError> {
        let txn = self.begin_write()?;
        epochs::record(&txn, history, false)?;
        let applied = {
            let mut meta = txn.open_table(META)?;
            let mut data = txn.open_table(DATA)?;
            let mut applied = meta.get(META_SEQ)?.map_or(0, |v| v.value());
            for e in entries {
                if e.seq <= applied {
                    continue;
                }
                if e.seq != applied + 1 {
                    return Err(StorageError::Gap {
                        applied,
                        got: e.seq,
                    });
                }
                match &e.op {
                    WriteOp::Set { key, value } => {
                        data.insert(key.as_slice(), encode_value(e.seq, value).as_slice())?;
                    }
                    WriteOp::Delete { key } => {
                        data.remove(key.as_slice())?;
                    }
                }
                applied = e.seq;
            }
            meta.insert(META_SEQ, applied)?;
            applied
        };
        txn.commit()?;
        Ok(applied)
    }

    /// Primary: up to `max` stored pairs with keys strictly after `after`
    /// (from the start when `None`), as `(key, seq, value)`, plus the
    /// committed seq of the snapshot they were read from.
    ///
    /// # Errors
    /// Storage failures.
    pub fn snapshot_chunk(
        &self,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<(u64, SnapshotPage), StorageError> {
        let txn = self.begin_read()?;
        let seq = txn
            .open_table(META)?
            .get(META_SEQ)?
            .map_or(0, |v| v.value());
        let data = txn.open_table(DATA)?;
        let mut out = Vec::new();
        let iter = match after {
            Some(k) => {
                data.range::<&[u8]>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))?
            }
            None => data.range::<&[u8]>(..)?,
        };
        for item in iter {
            let (k, v) = item?;
            out.push((k.value().to_vec(), decode_value(v.value())?));
            if out.len() >= max {
                break;
            }
        }
        Ok((seq, out))
    }

    /// Replica: true while a re-seed was started and not finished.
    ///
    /// # Errors
    /// Storage failures.
    pub fn reseed_pending(&self) -> Result<bool, StorageError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(META_RESEED)?.is_some_and(|v| v.value() == 1))
    }

    /// Replica: starts a re-seed: drops every key and marks the re-seed as
    /// pending, so a crash in the middle restarts it.
    ///
    /// # Errors
    /// Storage failures.
    pub fn reseed_begin(&self) -> Result<(), StorageError> {
        let txn = self.begin_write()?;
        txn.delete_table(DATA)?;
        txn.open_table(DATA)?;
        txn.open_table(META)?.insert(META_RESEED, 1)?;
        txn.commit()?;
        Ok(())
    }

    /// Replica: stores one chunk of a re-seed snapshot.
    ///
    /// # Errors
    /// Storage failures.
    pub fn reseed_chunk(&self, pairs: &[(Vec<u8>, Versioned)]) -> Result<(), StorageError> {
        let txn = self.begin_write()?;
        {
            let mut data = txn.open_table(DATA)?;
            for (k, v) in pairs {
                data.insert(k.as_slice(), encode_value(v.seq, &v.value).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Replica: ends a re-seed whose first chunk was read at `seq`; the log
    /// is followed from there (entries after `seq` re-apply idempotently).
    ///
    /// # Errors
    /// Storage failures.
    pub fn reseed_finish(&self, seq: u64, history: &[EpochStart]) -> Result<(), StorageError> {
        let txn = self.begin_write()?;
        epochs::record(&txn, history, true)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_SEQ, seq)?;
            meta.remove(META_RESEED)?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> WriteOp {
        WriteOp::Set {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }
    }

    fn w(op: WriteOp) -> Write {
        Write {
            op,
            cond: Cond::Always,
        }
    }

    #[test]
    fn http_conditions_hold_in_the_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Store::open(&dir.path().join("p.redb"), true).expect("open");
        let http = |m: Option<Tags>, n: Option<Tags>| Cond::Http {
            if_match: m,
            if_none_match: n,
        };
        let list = |v: &[u64]| Some(Tags::Versions(v.to_vec()));
        let c = |op, cond| Write { op, cond };
        let got = p
            .commit_writes(&[
                // If-Match on a missing key fails; If-None-Match: * creates.
                c(set("k", "1"), http(list(&[1]), None)),
                c(set("k", "1"), http(None, Some(Tags::Any))),
                // Version 1 now: a list naming it matches, one not naming it fails.
                c(set("k", "2"), http(list(&[5, 1]), None)),
                c(set("k", "3"), http(list(&[1, 5]), None)),
                c(set("k", "3"), http(list(&[]), None)),
                // If-None-Match with the current version fails, another holds.
                c(set("k", "3"), http(None, list(&[2]))),
                c(set("k", "3"), http(Some(Tags::Any), list(&[9]))),
            ])
            .expect("commit");
        assert_eq!(
            got,
            vec![
                Outcome::ConditionFailed { current: None },
                Outcome::Committed(1),
                Outcome::Committed(2),
                Outcome::ConditionFailed { current: Some(2) },
                Outcome::ConditionFailed { current: Some(2) },
                Outcome::ConditionFailed { current: Some(2) },
                Outcome::Committed(3),
            ]
        );
    }

    #[test]
    fn conditional_writes_and_prefix_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Store::open(&dir.path().join("p.redb"), true).expect("open");
        let c = |op, cond| Write { op, cond };
        let got = p
            .commit_writes(&[
                c(set("k", "1"), Cond::Absent),
                c(set("k", "2"), Cond::Absent),
                c(set("k", "3"), Cond::Version(1)),
                c(set("k", "4"), Cond::Version(1)),
                c(WriteOp::Delete { key: b"x".to_vec() }, Cond::Present),
                c(set("ka", "5"), Cond::Always),
                c(set("l", "6"), Cond::Always),
            ])
            .expect("commit");
        assert_eq!(
            got,
            vec![
                Outcome::Committed(1),
                Outcome::ConditionFailed { current: Some(1) },
                Outcome::Committed(2),
                Outcome::ConditionFailed { current: Some(2) },
                Outcome::ConditionFailed { current: None },
                Outcome::Committed(3),
                Outcome::Committed(4),
            ]
        );
        assert_eq!(
            p.get(b"k").expect("get").map(|v| v.value),
            Some(b"3".to_vec())
        );
        // Failed writes leave no log record: the log is exactly seqs 1..=4.
        let LogRead::Entries(log) = p.read_log(0, 100, 1 << 20).expect("log") else {
            panic!("trimmed");
        };
        assert_eq!(
            log.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        let keys = |page: SnapshotPage| page.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(p.scan_prefix(b"k", None, 10).expect("scan")),
            vec![b"k".to_vec(), b"ka".to_vec()]
        );
        assert_eq!(
            keys(p.scan_prefix(b"k", Some(b"k"), 10).expect("scan")),
            vec![b"ka".to_vec()]
        );
        assert_eq!(
            keys(p.scan_prefix(b"k", None, 1).expect("scan")),
            vec![b"k".to_vec()]
        );
        assert_eq!(
            keys(p.scan_prefix(b"", Some(b"ka"), 10).expect("scan")),
            vec![b"l".to_vec()]
        );
    }

    #[test]
    fn log_record_roundtrip() {
        for op in [
            set("k", "v"),
            set("", ""),
            WriteOp::Delete { key: b"x".to_vec() },
        ] {
            let mut buf = Vec::new();
            op.encode_into(&mut buf);
            assert_eq!(WriteOp::decode(&buf).expect("decode"), op);
        }
        assert!(WriteOp::decode(&[9, 0, 0, 0, 0]).is_err());
        assert!(WriteOp::decode(&[1, 5, 0, 0, 0, b'a']).is_err());
    }

    #[test]
    fn primary_commit_log_and_replica_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Store::open(&dir.path().join("p.redb"), true).expect("open");
        assert_eq!(
            p.commit_writes(&[w(set("a", "1")), w(set("b", "2"))])
                .expect("c"),
            vec![Outcome::Committed(1), Outcome::Committed(2)]
        );
        assert_eq!(
            p.commit_writes(&[w(WriteOp::Delete { key: b"a".to_vec() })])
                .expect("c"),
            vec![Outcome::Committed(3)]
        );
        assert_eq!(p.get(b"a").expect("get"), None);
        assert_eq!(
            p.get(b"b").expect("get").map(|v| (v.seq, v.value)),
            Some((2, b"2".to_vec()))
        );
        assert_eq!(p.key_count().expect("count"), 1);

        let LogRead::Entries(entries) = p.read_log(0, 100, 1 << 20).expect("log") else {
            panic!("log trimmed unexpectedly");
        };
        assert_eq!(entries.len(), 3);
        let r = Store::open(&dir.path().join("r.redb"), true).expect("open");
        assert_eq!(r.apply_entries(&entries[..2], &[]).expect("apply"), 2);
        // Re-delivery is skipped; the rest applies.
        assert_eq!(r.apply_entries(&entries, &[]).expect("apply"), 3);
        assert_eq!(r.get(b"a").expect("get"), None);
        assert_eq!(r.seq().expect("seq"), 3);
        // A gap is refused.
        let gap = LogEntry {
            seq: 5,
            op: set("z", "z"),
        };
        assert!(matches!(
            r.apply_entries(&[gap], &[]),
            Err(StorageError::Gap { applied: 3, got: 5 })
        ));

        assert_eq!(p.trim_log(2, 100).expect("trim"), 2);
        assert_eq!(p.read_log(0, 100, 1 << 20).expect("log"), LogRead::Trimmed);
        assert!(
            matches!(p.read_log(2, 100, 1 << 20).expect("log"), LogRead::Entries(e) if e.len() == 1)
        );
        assert_eq!(
            p.read_log(3, 100, 1 << 20).expect("log"),
            LogRead::Entries(vec![])
        );
    }

    #[test]
    fn reopen_swaps_the_database_under_live_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Store::open(&dir.path().join("p.redb"), true).expect("open");
        p.commit_writes(&[w(set("a", "1"))]).expect("c");
        let old = p.snapshot().expect("snapshot");
        let generation = p.generation();
        p.reopen().expect("reopen");
        assert_ne!(p.generation(), generation);
        // The old snapshot did not keep the reopen from happening; it
        // answers from pages it had cached or fails ("database closed").
        let _ = old.get(b"a");
        drop(old);
        assert_eq!(
            p.snapshot()
                .expect("snapshot")
                .get(b"a")
                .expect("get")
                .map(|v| v.value),
            Some(b"1".to_vec())
        );
        assert_eq!(
            p.commit_writes(&[w(set("b", "2"))]).expect("c"),
            vec![Outcome::Committed(2)]
        );
        assert_eq!(p.seq().expect("seq"), 2);
        p.probe_space(4096).expect("probe");
        assert!(!dir.path().join("p.redb.space-probe").exists());
    }

    #[test]
    fn reseed_replaces_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Store::open(&dir.path().join("p.redb"), true).expect("open");
        p.commit_writes(&[w(set("a", "1")), w(set("b", "2")), w(set("c", "3"))])
            .expect("c");
        let r = Store::open(&dir.path().join("r.redb"), true).expect("open");
        r.apply_entries(
            &[LogEntry {
                seq: 1,
                op: set("stale", "x"),
            }],
            &[],
        )
        .expect("apply");
        r.reseed_begin().expect("begin");
        assert!(r.reseed_pending().expect("pending"));
        let (seq, first) = p.snapshot_chunk(None, 2).expect("chunk");
        assert_eq!((seq, first.len()), (3, 2));
        r.reseed_chunk(&first).expect("chunk");
        let (_, rest) = p.snapshot_chunk(Some(&first[1].0), 2).expect("chunk");
        assert_eq!(rest.len(), 1);
        r.reseed_chunk(&rest).expect("chunk");
        r.reseed_finish(seq, &[]).expect("finish");
        assert!(!r.reseed_pending().expect("pending"));
        assert_eq!(r.get(b"stale").expect("get"), None);
        assert_eq!(r.key_count().expect("count"), 3);
        assert_eq!(r.seq().expect("seq"), 3);
    }
}
