//! The one module that imports redb: a node's key-value data and its
//! replication log in one file.
//!
//! Synchronous; no async, no executor types. A primary's write stores the
//! data change and its log entry in one transaction; a replica's apply
//! stores the data change, its log entry and its applied sequence in one
//! transaction (so a replica promoted after a failover can serve the
//! entries it applied to the other replicas; it trims its own log in the
//! same transactions, see [`Store::apply_entries`]).
//! Transactions never outlive a call (read snapshots handed out by
//! [`Store::snapshot`] do, see below). Layout of the file:
//!
//! ```text
//! data: key bytes -> [seq: u64 LE][value bytes]   seq = the write that set it
//!                  | [seq | 2^63][len: u64 LE][first piece]   (a large value)
//! data_pieces: key ++ i (u32 BE) -> piece i >= 1 of a large value
//! log : seq u64   -> [op: u8][key len: u32 LE][key][value]
//!                  | [0x80][len: u64 LE][first piece]   (a large record)
//! log_pieces: seq (u64 BE) ++ i (u32 BE) -> piece i >= 1 of a large record
//! meta: "seq"     -> last committed (primary) / last applied (replica)
//!       "reseed"  -> 1 while a replica re-seed is incomplete
//!       "data_bytes", "log_bytes" -> keys + values in `data`, records in
//!                  `log` (kept in the same transactions; counted at open
//!                  when missing)
//! ```
//!
//! Space: an entry that does not fit a 4 KiB page is kept in page-sized
//! pieces (`pieces.rs`: redb rounds a large entry's page up to a power of
//! two, which doubled the space of 64 KiB values). Files written before
//! pieces existed read as they are (their entries are whole). The log is
//! bounded by bytes as well as by entries: a primary's by
//! [`Store::trim_log`] and its group commits, a replica's by its applies
//! (to at most the data's size, so its file stays within about twice it).
//!
//! Journal (opt-in, `journal.rs`, [`Store::attach_journal`]): a primary's
//! group commit appends its entries to `<file>.journal` and flushes that,
//! and redb commits the batch with `Durability::None`; every other commit
//! stays durable and retires the journal (META `journal_gen`). Replay on
//! open and in [`Store::reopen`] brings back what redb's last durable commit
//! lacks.
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
mod journal;
mod pieces;
mod types;

pub use epochs::{EpochStart, end_of, epoch_of};

pub use types::{
    Cond, LogEntry, LogRead, Outcome, SnapshotPage, StorageError, Tags, Versioned, Write, WriteOp,
};
use types::{
    RECORD_HEAD, Stored, VALUE_HEAD, encode_record_head, encode_value, encode_value_head,
    parse_record, parse_value,
};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition,
};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DATA_PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data_pieces");
const LOG_PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("log_pieces");
const META_SEQ: &str = "seq";
const META_RESEED: &str = "reseed";
const META_DATA_BYTES: &str = "data_bytes";
const META_LOG_BYTES: &str = "log_bytes";
const META_JOURNAL: &str = "journal_gen";

/// Where a node's bytes are (see [`Store::space`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    /// Keys and values stored (the logical bytes).
    pub data_bytes: u64,
    /// Log records kept for replicas.
    pub log_bytes: u64,
    pub log_entries: u64,
    /// The committed (primary) or applied (replica) seq these figures
    /// were read at.
    pub seq: u64,
    /// The file's length.
    pub file_bytes: u64,
    /// Disk space the file takes (allocated blocks; less than its length
    /// where redb has grown it without writing yet).
    pub disk_bytes: u64,
}

/// How much log a replica keeps ([`Store::apply_entries`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogKeep {
    /// Records behind the applied seq.
    pub entries: u64,
    /// Bytes of records, at most (and at most the data's own size).
    pub bytes: u64,
}

/// Running byte counts of a write transaction (META `data_bytes`,
/// `log_bytes`).
struct Usage {
    data: u64,
    log: u64,
}

impl Usage {
    fn load(meta: &Table<&str, u64>) -> Result<Self, StorageError> {
        Ok(Self {
            data: meta.get(META_DATA_BYTES)?.map_or(0, |v| v.value()),
            log: meta.get(META_LOG_BYTES)?.map_or(0, |v| v.value()),
        })
    }

    fn save(&self, meta: &mut Table<&str, u64>) -> Result<(), StorageError> {
        meta.insert(META_DATA_BYTES, self.data)?;
        meta.insert(META_LOG_BYTES, self.log)?;
        Ok(())
    }
}

/// The data tables of a write transaction.
struct DataTables<'t> {
    data: Table<'t, &'static [u8], &'static [u8]>,
    pieces: Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> DataTables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StorageError> {
        Ok(Self {
            data: txn.open_table(DATA)?,
            pieces: txn.open_table(DATA_PIECES)?,
        })
    }

    /// The version of `key`, without reading a large value's pieces.
    fn version(&self, key: &[u8]) -> Result<Option<u64>, StorageError> {
        match self.data.get(key)? {
            Some(v) => Ok(Some(parse_value(v.value())?.0)),
            None => Ok(None),
        }
    }

    /// Stores `value` as `key`'s value at `seq` (in pieces when large),
    /// replacing and accounting for the old one.
    fn put(
        &mut self,
        usage: &mut Usage,
        key: &[u8],
        seq: u64,
        value: &[u8],
    ) -> Result<(), StorageError> {
        let sizes = pieces::split(value.len(), key.len() + VALUE_HEAD, key.len() + 4);
        let main = if sizes.len() == 1 {
            encode_value(seq, value)
        } else {
            encode_value_head(seq, value.len(), &value[..sizes[0]])
        };
        let old = self
            .data
            .insert(key, main.as_slice())?
            .map(|g| old_value(g.value()))
            .transpose()?;
        self.forget(usage, key, old)?;
        if sizes.len() > 1 {
            pieces::put(&mut self.pieces, key, &sizes, value)?;
        }
        usage.data += (key.len() + value.len()) as u64;
        Ok(())
    }

    /// Removes `key` and its value's pieces.
    fn remove(&mut self, usage: &mut Usage, key: &[u8]) -> Result<(), StorageError> {
        let old = self
            .data
            .remove(key)?
            .map(|g| old_value(g.value()))
            .transpose()?;
        self.forget(usage, key, old)
    }

    fn forget(
        &mut self,
        usage: &mut Usage,
        key: &[u8],
        old: Option<(usize, Option<usize>)>,
    ) -> Result<(), StorageError> {
        if let Some((len, first)) = old {
            if let Some(first) = first {
                pieces::remove(&mut self.pieces, key, len, first)?;
            }
            usage.data = usage.data.saturating_sub((key.len() + len) as u64);
        }
        Ok(())
    }
}

/// A replaced value's length and, when it was in pieces, its first piece's.
fn old_value(raw: &[u8]) -> Result<(usize, Option<usize>), StorageError> {
    Ok(match parse_value(raw)?.1 {
        Stored::Whole(v) => (v.len(), None),
        Stored::Pieces { len, first } => (len, Some(first.len())),
    })
}

/// `key`'s value from its main entry `raw` (reading its pieces if any).
fn value_of(
    pieces: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
    raw: &[u8],
) -> Result<Versioned, StorageError> {
    let (seq, stored) = parse_value(raw)?;
    let value = match stored {
        Stored::Whole(v) => v.to_vec(),
        Stored::Pieces { len, first } => pieces::read(pieces, key, len, first)?,
    };
    Ok(Versioned { seq, value })
}

/// Appends log record `record` as `seq` (in pieces when large).
fn put_record(
    log: &mut Table<u64, &'static [u8]>,
    pieces: &mut Table<&'static [u8], &'static [u8]>,
    usage: &mut Usage,
    seq: u64,
    record: &[u8],
) -> Result<(), StorageError> {
    let base = seq.to_be_bytes();
    let sizes = pieces::split(record.len(), 8 + RECORD_HEAD, base.len() + 4);
    if sizes.len() == 1 {
        log.insert(seq, record)?;
    } else {
        log.insert(
            seq,
            encode_record_head(record.len(), &record[..sizes[0]]).as_slice(),
        )?;
        pieces::put(pieces, &base, &sizes, record)?;
    }
    usage.log += record.len() as u64;
    Ok(())
}

/// The tables of a transaction that stores entries (a primary's writes,
/// a replica's applies, a journal replay) and its running byte counts.
struct Entries<'t> {
    meta: Table<'t, &'static str, u64>,
    data: DataTables<'t>,
    log: Table<'t, u64, &'static [u8]>,
    log_pieces: Table<'t, &'static [u8], &'static [u8]>,
    usage: Usage,
    /// Scratch space for a record's encoding.
    record: Vec<u8>,
}

impl<'t> Entries<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StorageError> {
        let meta = txn.open_table(META)?;
        let usage = Usage::load(&meta)?;
        Ok(Self {
            meta,
            data: DataTables::open(txn)?,
            log: txn.open_table(LOG)?,
            log_pieces: txn.open_table(LOG_PIECES)?,
            usage,
            record: Vec::new(),
        })
    }

    /// The committed (primary) or applied (replica) seq.
    fn seq(&self) -> Result<u64, StorageError> {
        Ok(self.meta.get(META_SEQ)?.map_or(0, |v| v.value()))
    }

    /// Stores `op` as write `seq`: the data change and its log record.
    fn write(&mut self, seq: u64, op: &WriteOp) -> Result<(), StorageError> {
        match op {
            WriteOp::Set { key, value } => self.data.put(&mut self.usage, key, seq, value)?,
            WriteOp::Delete { key } => self.data.remove(&mut self.usage, key)?,
        }
        self.record.clear();
        op.encode_into(&mut self.record);
        put_record(
            &mut self.log,
            &mut self.log_pieces,
            &mut self.usage,
            seq,
            &self.record,
        )
    }

    /// The lowest seq still in the log.
    fn first_logged(&self) -> Result<Option<u64>, StorageError> {
        Ok(self.log.first()?.map(|(k, _)| k.value()))
    }

    /// Removes log record `seq` (see [`remove_record`]).
    fn remove_record(&mut self, seq: u64) -> Result<bool, StorageError> {
        remove_record(&mut self.log, &mut self.log_pieces, &mut self.usage, seq)
    }

    /// Records `seq` as the committed (applied) seq, and the byte counts.
    fn finish(mut self, seq: u64) -> Result<(), StorageError> {
        self.meta.insert(META_SEQ, seq)?;
        self.usage.save(&mut self.meta)
    }
}

/// Removes log record `seq` and its pieces; false when there was none.
fn remove_record(
    log: &mut Table<u64, &'static [u8]>,
    pieces: &mut Table<&'static [u8], &'static [u8]>,
    usage: &mut Usage,
    seq: u64,
) -> Result<bool, StorageError> {
    let old = log
        .remove(seq)?
        .map(|g| {
            parse_record(g.value()).map(|stored| match stored {
                Stored::Whole(r) => (r.len(), None),
                Stored::Pieces { len, first } => (len, Some(first.len())),
            })
        })
        .transpose()?;
    let Some((len, first)) = old else {
        return Ok(false);
    };
    if let Some(first) = first {
        pieces::remove(pieces, &seq.to_be_bytes(), len, first)?;
    }
    usage.log = usage.log.saturating_sub(len as u64);
    Ok(true)
}

/// The write of log record `seq` from its main entry `raw`.
fn record_of(
    pieces: &impl ReadableTable<&'static [u8], &'static [u8]>,
    seq: u64,
    raw: &[u8],
) -> Result<WriteOp, StorageError> {
    match parse_record(raw)? {
        Stored::Whole(r) => WriteOp::decode(r),
        Stored::Pieces { len, first } => {
            WriteOp::decode(&pieces::read(pieces, &seq.to_be_bytes(), len, first)?)
        }
    }
}

/// A write transaction of `db` with `durability`.
fn write_txn(
    db: &Database,
    durability: Durability,
) -> Result<redb::WriteTransaction, StorageError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    Ok(txn)
}

/// Applies the entries `j` holds past `db`'s seq in the generation `db`
/// records (read up to `limit` bytes, all when `None`), in one commit
/// without a flush, and positions `j` after its last valid record, cut
/// there (so that a record whose flush failed past `limit` never counts);
/// returns how many entries were applied. See [`Store::attach_journal`].
fn replay(
    db: &Database,
    j: &mut journal::Journal,
    limit: Option<u64>,
) -> Result<usize, StorageError> {
    let (generation, seq) = {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        (
            meta.get(META_JOURNAL)?.map_or(0, |v| v.value()),
            meta.get(META_SEQ)?.map_or(0, |v| v.value()),
        )
    };
    let scan = j.scan(generation, seq, limit)?;
    if let Some(&(last, _)) = scan.entries.last() {
        let txn = write_txn(db, Durability::None)?;
        let mut entries = Entries::open(&txn)?;
        for (seq, op) in &scan.entries {
            entries.write(*seq, op)?;
        }
        entries.finish(last)?;
        txn.commit()?;
    }
    j.position(generation, scan.end);
    j.cut().map_err(|e| StorageError::Db(e.into()))?;
    Ok(scan.entries.len())
}

/// Page cache per node file by default (`--cache-mb`).
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A read-only snapshot of a node's data (see [`Store::snapshot`]).
pub struct ReadView {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    pieces: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl ReadView {
    /// The value of `key` in this snapshot.
    ///
    /// # Errors
    /// Storage failures.
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StorageError> {
        self.table
            .get(key)?
            .map(|v| value_of(&self.pieces, key, v.value()))
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
    /// The write-ahead journal of group commits (`None`: every commit
    /// flushes redb itself). See [`Store::attach_journal`].
    journal: Option<Mutex<journal::Journal>>,
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
        {
            let data = txn.open_table(DATA)?;
            let log = txn.open_table(LOG)?;
            txn.open_table(DATA_PIECES)?;
            txn.open_table(LOG_PIECES)?;
            txn.open_table(epochs::EPOCHS)?;
            let mut meta = txn.open_table(META)?;
            if meta.get(META_DATA_BYTES)?.is_none() {
                // A file from before the counters: count once.
                let mut data_bytes = 0u64;
                for item in data.iter()? {
                    let (k, v) = item?;
                    data_bytes += (k.value().len() + parse_value(v.value())?.1.len()) as u64;
                }
                let mut log_bytes = 0u64;
                for item in log.iter()? {
                    log_bytes += parse_record(item?.1.value())?.len() as u64;
                }
                meta.insert(META_DATA_BYTES, data_bytes)?;
                meta.insert(META_LOG_BYTES, log_bytes)?;
            }
        }
        txn.commit()?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            generation: AtomicU64::new(0),
            path: path.to_path_buf(),
            cache_bytes,
            journal: None,
            durability: if durable {
                Durability::Immediate
            } else {
                Durability::None
            },
        })
    }

    /// Puts a write-ahead journal of `capacity` bytes beside the file
    /// (`<file>.journal`, preallocated) and replays what it holds past the
    /// store's seq; returns how many entries were replayed. From then on a
    /// primary's group commit ([`Store::commit_writes_into`]) appends its
    /// entries to the journal and flushes that alone, and redb commits the
    /// batch without a flush of its own (`Durability::None`: in memory until
    /// the next durable commit). A batch that does not fit in what is left
    /// of the journal commits durably instead (a checkpoint); so does every
    /// other transaction (replica applies, trims, re-seed steps, epochs),
    /// and each durable commit starts a new journal generation (META
    /// `journal_gen`, in the same transaction), which retires the older
    /// records: the checkpoint holds their entries. Replay (here and in
    /// [`Store::reopen`], before the store is readable again) applies the
    /// current generation's entries past the seq redb recovered to, without
    /// a flush (they stay in the journal). With `capacity` 0, or for a
    /// store opened without fsync, no journal is attached; one an earlier
    /// run left is replayed, committed durably and removed.
    ///
    /// # Errors
    /// The journal cannot be created or read, or the replay cannot commit.
    pub fn attach_journal(&mut self, capacity: u64) -> Result<usize, StorageError> {
        let mut path = self.path.clone().into_os_string();
        path.push(".journal");
        let path = PathBuf::from(path);
        let io = |e: std::io::Error| StorageError::Db(e.into());
        if capacity == 0 || !matches!(self.durability, Durability::Immediate) {
            // No journal from now on; one left by an earlier run may hold
            // acknowledged writes: replay it, make that durable, remove it.
            if !path.exists() {
                return Ok(0);
            }
            let len = std::fs::metadata(&path).map_err(io)?.len();
            let mut j = journal::Journal::open(&path, len).map_err(io)?;
            let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
            let db = db.as_ref().ok_or(StorageError::Reopening)?;
            let replayed = replay(db, &mut j, None)?;
            let txn = write_txn(db, Durability::Immediate)?;
            txn.open_table(META)?
                .insert(META_JOURNAL, j.generation() + 1)?;
            txn.commit()?;
            drop(j);
            std::fs::remove_file(&path).map_err(io)?;
            return Ok(replayed);
        }
        let mut j = journal::Journal::open(&path, capacity).map_err(io)?;
        let replayed = {
            let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
            let db = db.as_ref().ok_or(StorageError::Reopening)?;
            // A file without a generation (new, or from before journals)
            // starts at a random one, so that a journal left beside an
            // earlier file of the same name is never read into this one.
            let txn = db.begin_write()?;
            let fresh = txn.open_table(META)?.get(META_JOURNAL)?.is_none();
            if fresh {
                use std::hash::BuildHasher as _;
                let start = std::collections::hash_map::RandomState::new()
                    .hash_one(std::time::SystemTime::now())
                    >> 1;
                txn.open_table(META)?.insert(META_JOURNAL, start)?;
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            replay(db, &mut j, None)?
        };
        self.journal = Some(Mutex::new(j));
        Ok(replayed)
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

    /// A write transaction with the store's durability. With a journal it
    /// also starts the next journal generation (see
    /// [`Store::attach_journal`]); commit it with [`Store::commit`], which
    /// moves the journal to that generation (both compute it from the
    /// journal's current one: redb runs one write transaction at a time).
    fn begin_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        let txn = self.with_db(|db| write_txn(db, self.durability))?;
        if let Some(j) = &self.journal {
            let next = j
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .generation()
                + 1;
            txn.open_table(META)?.insert(META_JOURNAL, next)?;
        }
        Ok(txn)
    }

    /// Commits a transaction of [`Store::begin_write`]; with a journal,
    /// the journal then starts over in the generation it recorded.
    fn commit(&self, txn: redb::WriteTransaction) -> Result<(), StorageError> {
        txn.commit()?;
        if let Some(j) = &self.journal {
            let mut j = j.lock().unwrap_or_else(PoisonError::into_inner);
            let next = j.generation() + 1;
            j.position(next, 0);
        }
        Ok(())
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
        if let Some(j) = &self.journal {
            // Before anyone can read: redb is back at its last durable
            // commit. Only records whose flush returned (up to the journal's
            // end in this process) count.
            let mut j = j.lock().unwrap_or_else(PoisonError::into_inner);
            let end = j.used();
            replay(&db, &mut j, Some(end))?;
        }
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
        self.snapshot()?.get(key)
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
            pieces: txn.open_table(DATA_PIECES)?,
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

    /// Where the node's bytes are: data and log (counted in every
    /// transaction), the file's length and the disk space it takes.
    ///
    /// # Errors
    /// Storage failures; the file's metadata cannot be read.
    pub fn space(&self) -> Result<Space, StorageError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        let file = std::fs::metadata(&self.path).map_err(|e| StorageError::Db(e.into()))?;
        Ok(Space {
            data_bytes: meta.get(META_DATA_BYTES)?.map_or(0, |v| v.value()),
            log_bytes: meta.get(META_LOG_BYTES)?.map_or(0, |v| v.value()),
            log_entries: txn.open_table(LOG)?.len()?,
            seq: meta.get(META_SEQ)?.map_or(0, |v| v.value()),
            file_bytes: file.len(),
            disk_bytes: file.blocks() * 512,
        })
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
        self.commit_writes_into(writes, 0, &mut outcomes)?;
        Ok(outcomes)
    }

    /// As [`Store::commit_writes`], filling `outcomes` (cleared first)
    /// before the commit, so that they are known when the commit itself
    /// fails. The same transaction also removes log entries with seq
    /// `<= trim_upto` (what every replica has applied), a bounded number
    /// (twice the batch, plus 64): the log then holds only what replicas
    /// lack, without a commit of its own, and the pages it frees are
    /// reused by the next commits.
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
        trim_upto: u64,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<(), StorageError> {
        outcomes.clear();
        let mut txn = if self.journal.is_some() {
            // Flushed through the journal below.
            self.with_db(|db| write_txn(db, Durability::None))?
        } else {
            self.begin_write()?
        };
        {
            let mut entries = Entries::open(&txn)?;
            let mut seq = entries.seq()?;
            for w in writes {
                if w.cond != Cond::Always {
                    let current = entries.data.version(w.op.key())?;
                    if !w.cond.holds(current) {
                        outcomes.push(Outcome::ConditionFailed { current });
                        continue;
                    }
                }
                seq += 1;
                entries.write(seq, &w.op)?;
                outcomes.push(Outcome::Committed(seq));
            }
            for _ in 0..2 * writes.len() + 64 {
                match entries.first_logged()? {
                    Some(first) if first <= trim_upto => {
                        entries.remove_record(first)?;
                    }
                    _ => break,
                }
            }
            entries.finish(seq)?;
        }
        let Some(j) = &self.journal else {
            return self.commit(txn);
        };
        let mut j = j.lock().unwrap_or_else(PoisonError::into_inner);
        let committed: Vec<&WriteOp> = writes
            .iter()
            .zip(outcomes.iter())
            .filter(|(_, o)| matches!(o, Outcome::Committed(_)))
            .map(|(w, _)| &w.op)
            .collect();
        let first = outcomes.iter().find_map(|o| match o {
            Outcome::Committed(seq) => Some(*seq),
            Outcome::ConditionFailed { .. } => None,
        });
        let Some(first) = first else {
            // No entry (every condition failed): only trims, which a crash
            // may undo harmlessly.
            txn.commit()?;
            return Ok(());
        };
        if j.append(first, committed.iter().copied())
            .map_err(|e| StorageError::Db(e.into()))?
        {
            // The batch is durable in the journal: whatever stops redb's
            // commit now, a reopen (which replays it) must decide.
            txn.commit().map_err(|e| {
                StorageError::Db(
                    std::io::Error::other(format!("commit after the journal append: {e}")).into(),
                )
            })?;
        } else {
            // The journal is full: a durable commit (with everything before
            // it) and a new generation.
            let next = j.generation() + 1;
            txn.open_table(META)?.insert(META_JOURNAL, next)?;
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
            j.position(next, 0);
        }
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
        let pieces = txn.open_table(DATA_PIECES)?;
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
            out.push((k.to_vec(), value_of(&pieces, k, v.value())?));
        }
        Ok(out)
    }

    /// Log entries after `after` (a primary serves them), at most `max_entries` and about
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
        let pieces = txn.open_table(LOG_PIECES)?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        for item in log.range(after + 1..)? {
            let (seq, raw) = item?;
            let seq = seq.value();
            if entries.is_empty() && seq != after + 1 {
                return Ok(LogRead::Trimmed);
            }
            // The log can have a hole: files written before replicas logged
            // what they apply (a node that was primary kept the entries it
            // wrote, then applied others as a replica without logging them
            // before it became primary again). Entries past the
            // hole are not contiguous with these: stop at it (the next pull
            // finds the hole first and is answered `Trimmed`).
            if entries.last().is_some_and(|e: &LogEntry| e.seq + 1 != seq) {
                break;
            }
            let op = record_of(&pieces, seq, raw.value())?;
            bytes += match &op {
                WriteOp::Set { key, value } => key.len() + value.len(),
                WriteOp::Delete { key } => key.len(),
            };
            entries.push(LogEntry { seq, op });
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

    /// Primary: the lowest seq still in the log, if any.
    ///
    /// # Errors
    /// Storage failures.
    pub fn first_logged(&self) -> Result<Option<u64>, StorageError> {
        let txn = self.begin_read()?;
        let log = txn.open_table(LOG)?;
        Ok(log.first()?.map(|(k, _)| k.value()))
    }

    /// Primary: removes log entries with seq `<= upto`, then the oldest
    /// entries while the log holds more bytes than the larger of
    /// `keep_bytes` and the data's own size (a replica further behind than
    /// that is re-seeded: copying the data costs less than replaying more
    /// log than data); at most `max` entries per call (so one call stays
    /// short). Returns how many were removed.
    ///
    /// # Errors
    /// Storage failures.
    pub fn trim_log(&self, upto: u64, max: usize, keep_bytes: u64) -> Result<usize, StorageError> {
        let txn = self.begin_write()?;
        let removed = {
            let mut meta = txn.open_table(META)?;
            let mut log = txn.open_table(LOG)?;
            let mut pieces = txn.open_table(LOG_PIECES)?;
            let mut usage = Usage::load(&meta)?;
            let bound = keep_bytes.max(usage.data);
            let mut removed = 0;
            while removed < max {
                let Some(first) = log.first()?.map(|(k, _)| k.value()) else {
                    break;
                };
                if first > upto && usage.log <= bound {
                    break;
                }
                remove_record(&mut log, &mut pieces, &mut usage, first)?;
                removed += 1;
            }
            if removed > 0 {
                usage.save(&mut meta)?;
            }
            removed
        };
        if removed == 0 {
            txn.abort()?;
        } else {
            self.commit(txn)?;
        }
        Ok(removed)
    }

    /// Replica: applies `entries` in order in one transaction and records
    /// the last one as applied. Entries at or below the applied seq are
    /// skipped (re-delivery is harmless); a gap is an error.
    ///
    /// Each applied entry is also logged (as a primary logs its writes), so
    /// that once promoted the node can serve the entries it applied to the
    /// shard's other replicas instead of re-seeding them. The same
    /// transaction trims the oldest records, a bounded number (twice the
    /// batch, plus 64), while they are more than `keep.entries` behind the
    /// applied seq or the log holds more bytes than the smaller of
    /// `keep.bytes` and the data's own size. (A primary keeps the larger of
    /// the two, for replicas that are behind now; a replica's log serves
    /// only after a failover, when the others are usually close behind,
    /// and keeping it to the data's size bounds a replica's file to about
    /// twice its data.)
    ///
    /// # Errors
    /// [`StorageError::Gap`] or storage failures; nothing is applied then.
    pub fn apply_entries(
        &self,
        entries: &[LogEntry],
        history: &[EpochStart],
        keep: LogKeep,
    ) -> Result<u64, StorageError> {
        let txn = self.begin_write()?;
        epochs::record(&txn, history, false)?;
        let applied = {
            let mut w = Entries::open(&txn)?;
            let mut applied = w.seq()?;
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
                // The log holds nothing past the applied seq (both change in
                // the same transactions); a stale record would only be
                // replaced, with its pieces and bytes.
                w.remove_record(e.seq)?;
                w.write(e.seq, &e.op)?;
                applied = e.seq;
            }
            let upto = applied.saturating_sub(keep.entries);
            let bound = keep.bytes.min(w.usage.data);
            for _ in 0..2 * entries.len() + 64 {
                match w.first_logged()? {
                    Some(first) if first <= upto || w.usage.log > bound => {
                        w.remove_record(first)?;
                    }
                    _ => break,
                }
            }
            w.finish(applied)?;
            applied
        };
        self.commit(txn)?;
        Ok(applied)
    }

    /// Primary: up to `max` stored pairs and about `max_bytes` of keys
    /// and values (always at least one pair when any is left) with keys
    /// strictly after `after` (from the start when `None`), plus the
    /// committed seq of the snapshot they were read from and whether the
    /// page reaches the end of the data.
    ///
    /// # Errors
    /// Storage failures.
    pub fn snapshot_chunk(
        &self,
        after: Option<&[u8]>,
        max: usize,
        max_bytes: usize,
    ) -> Result<(u64, SnapshotPage, bool), StorageError> {
        let txn = self.begin_read()?;
        let seq = txn
            .open_table(META)?
            .get(META_SEQ)?
            .map_or(0, |v| v.value());
        let data = txn.open_table(DATA)?;
        let pieces = txn.open_table(DATA_PIECES)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut iter = match after {
            Some(k) => {
                data.range::<&[u8]>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))?
            }
            None => data.range::<&[u8]>(..)?,
        };
        for item in iter.by_ref() {
            let (k, v) = item?;
            let k = k.value();
            let value = value_of(&pieces, k, v.value())?;
            bytes += k.len() + value.value.len();
            out.push((k.to_vec(), value));
            if out.len() >= max || bytes >= max_bytes {
                break;
            }
        }
        let done = iter.next().is_none();
        Ok((seq, out, done))
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
        txn.delete_table(DATA_PIECES)?;
        txn.open_table(DATA)?;
        txn.open_table(DATA_PIECES)?;
        // A node that was a primary has a log of its own; after a failover
        // some of it may be from a history the cluster dropped. Nothing of
        // it may be served once the data is replaced.
        txn.delete_table(LOG)?;
        txn.delete_table(LOG_PIECES)?;
        txn.open_table(LOG)?;
        txn.open_table(LOG_PIECES)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_RESEED, 1)?;
            meta.insert(META_DATA_BYTES, 0)?;
            meta.insert(META_LOG_BYTES, 0)?;
        }
        self.commit(txn)?;
        Ok(())
    }

    /// Replica: stores one chunk of a re-seed snapshot.
    ///
    /// # Errors
    /// Storage failures.
    pub fn reseed_chunk(&self, pairs: &[(Vec<u8>, Versioned)]) -> Result<(), StorageError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mut data = DataTables::open(&txn)?;
            let mut usage = Usage::load(&meta)?;
            for (k, v) in pairs {
                data.put(&mut usage, k, v.seq, &v.value)?;
            }
            usage.save(&mut meta)?;
        }
        self.commit(txn)?;
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
        self.commit(txn)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn set(k: &str, v: &str) -> WriteOp {
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

    /// Keeps every record a replica applies.
    const KEEP_ALL: LogKeep = LogKeep {
        entries: u64::MAX,
        bytes: u64::MAX,
    };

    /// Adds `len` bytes of data outside the log (a re-seed chunk), so that
    /// a replica's log is not bounded by a small data set's size.
    fn pad(s: &Store, len: usize) {
        let pair = (
            b"pad".to_vec(),
            Versioned {
                seq: 0,
                value: vec![0; len],
            },
        );
        s.reseed_chunk(&[pair]).expect("pad");
    }

    /// Removes log records `seqs` (as files written before replicas logged
    /// what they apply lack them).
    fn unlog(s: &Store, seqs: &[u64]) {
        let txn = s.begin_write().expect("begin");
        {
            let mut meta = txn.open_table(META).expect("meta");
            let mut log = txn.open_table(LOG).expect("log");
            let mut pieces = txn.open_table(LOG_PIECES).expect("pieces");
            let mut usage = Usage::load(&meta).expect("usage");
            for &seq in seqs {
                assert!(remove_record(&mut log, &mut pieces, &mut usage, seq).expect("remove"));
            }
            usage.save(&mut meta).expect("save");
        }
        txn.commit().expect("commit");
    }

    #[test]
    fn a_replica_logs_what_it_applies_within_its_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Store::open(&dir.path().join("r.redb"), false).expect("open");
        pad(&r, 100_000);
        // Small and large (in pieces) records, logged as applied.
        let entries: Vec<LogEntry> = (1..=6)
            .map(|seq| LogEntry {
                seq,
                op: if seq % 2 == 0 {
                    big("k", 10_000, u8::try_from(seq).expect("small"))
                } else {
                    set(&format!("s{seq}"), "v")
                },
            })
            .collect();
        assert_eq!(r.apply_entries(&entries, &[], KEEP_ALL).expect("apply"), 6);
        // Re-delivery changes nothing.
        assert_eq!(r.apply_entries(&entries, &[], KEEP_ALL).expect("apply"), 6);
        let space = r.space().expect("space");
        assert_eq!(space.log_entries, 6, "{space:?}");
        let logical: u64 = entries
            .iter()
            .map(|e| {
                let mut rec = Vec::new();
                e.op.encode_into(&mut rec);
                rec.len() as u64
            })
            .sum();
        assert_eq!(space.log_bytes, logical);
        // Promoted, it serves what it applied, with the same writes.
        let LogRead::Entries(read) = r.read_log(0, 100, usize::MAX).expect("read") else {
            panic!("entries are logged");
        };
        assert_eq!(read, entries);
        // The entry bound: the last 2 up to the applied seq.
        let keep = LogKeep {
            entries: 2,
            bytes: u64::MAX,
        };
        let next = [LogEntry {
            seq: 7,
            op: set("s7", "v"),
        }];
        assert_eq!(r.apply_entries(&next, &[], keep).expect("apply"), 7);
        assert_eq!(r.first_logged().expect("first"), Some(6));
        assert_eq!(
            r.read_log(4, 100, usize::MAX).expect("read"),
            LogRead::Trimmed
        );
        let LogRead::Entries(read) = r.read_log(5, 100, usize::MAX).expect("read") else {
            panic!("6 and 7 are logged");
        };
        assert_eq!(read.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 7]);
        // The byte bound: at most the smaller of `bytes` and the data's size.
        let mut seq = 7;
        for i in 0..20u8 {
            seq += 1;
            let e = [LogEntry {
                seq,
                op: big(&format!("b{i}"), 10_000, i),
            }];
            let keep = LogKeep {
                entries: 1_000,
                bytes: 25_000,
            };
            r.apply_entries(&e, &[], keep).expect("apply");
            let space = r.space().expect("space");
            assert!(space.log_bytes <= 25_000.min(space.data_bytes), "{space:?}");
            assert!(space.log_entries >= 1, "{space:?}");
        }
        // Data smaller than `bytes`: the data's size bounds the log.
        seq += 1;
        let keep = LogKeep {
            entries: 1_000,
            bytes: u64::MAX,
        };
        r.apply_entries(
            &[LogEntry {
                seq,
                op: set("s", "v"),
            }],
            &[],
            keep,
        )
        .expect("apply");
        let space = r.space().expect("space");
        assert!(space.log_bytes <= space.data_bytes, "{space:?}");
        // The log is contiguous up to the applied seq.
        let first = r.first_logged().expect("first").expect("some");
        let LogRead::Entries(read) = r.read_log(first - 1, 1000, usize::MAX).expect("read") else {
            panic!("entries");
        };
        assert_eq!(read.last().map(|e| e.seq), Some(seq));
        assert_eq!(read.len() as u64, seq - first + 1);
        // A re-seed drops it.
        r.reseed_begin().expect("reseed");
        assert_eq!(r.first_logged().expect("first"), None);
        assert_eq!(r.space().expect("space").log_bytes, 0);
    }

    #[test]
    fn a_log_with_a_hole_stops_at_it_and_a_reseed_drops_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("h.redb"), false).expect("open");
        // Primary for seqs 1..=3, then a replica (applies 4..=5; a file
        // written before replicas logged what they apply has no record of
        // them), then primary again from 6.
        s.commit_writes(&[w(set("a", "1")), w(set("b", "2")), w(set("c", "3"))])
            .expect("commit");
        let applied = [4, 5].map(|seq| LogEntry {
            seq,
            op: set("r", "x"),
        });
        pad(&s, 10_000);
        assert_eq!(s.apply_entries(&applied, &[], KEEP_ALL).expect("apply"), 5);
        unlog(&s, &[4, 5]);
        s.commit_writes(&[w(set("d", "6"))]).expect("commit");
        let LogRead::Entries(first) = s.read_log(1, 100, 1 << 20).expect("read") else {
            panic!("entries after 1 are logged");
        };
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(s.read_log(3, 100, 1 << 20).expect("read"), LogRead::Trimmed);
        let LogRead::Entries(last) = s.read_log(5, 100, 1 << 20).expect("read") else {
            panic!("entry 6 is logged");
        };
        assert_eq!(last.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
        s.reseed_begin().expect("reseed");
        assert_eq!(
            s.first_logged().expect("first"),
            None,
            "the old log is gone"
        );
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
        assert_eq!(
            r.apply_entries(&entries[..2], &[], KEEP_ALL)
                .expect("apply"),
            2
        );
        // Re-delivery is skipped; the rest applies.
        assert_eq!(r.apply_entries(&entries, &[], KEEP_ALL).expect("apply"), 3);
        assert_eq!(r.get(b"a").expect("get"), None);
        assert_eq!(r.seq().expect("seq"), 3);
        // A gap is refused.
        let gap = LogEntry {
            seq: 5,
            op: set("z", "z"),
        };
        assert!(matches!(
            r.apply_entries(&[gap], &[], KEEP_ALL),
            Err(StorageError::Gap { applied: 3, got: 5 })
        ));

        assert_eq!(p.trim_log(2, 100, u64::MAX).expect("trim"), 2);
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

    fn big(k: &str, len: usize, fill: u8) -> WriteOp {
        WriteOp::Set {
            key: k.as_bytes().to_vec(),
            value: (0..len)
                .map(|i| fill ^ u8::try_from(i % 251).unwrap_or(0))
                .collect(),
        }
    }

    fn pieces_left(s: &Store) -> (u64, u64) {
        let txn = s.begin_read().expect("read");
        (
            txn.open_table(DATA_PIECES).expect("t").len().expect("len"),
            txn.open_table(LOG_PIECES).expect("t").len().expect("len"),
        )
    }

    #[test]
    fn large_values_and_records_are_kept_in_pieces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Store::open(&dir.path().join("p.redb"), false).expect("open");
        let r = Store::open(&dir.path().join("r.redb"), false).expect("open");
        let sizes = [0, 100, 4000, 4096, 65536, 200_000, (1 << 20) + 3];
        for (i, &len) in sizes.iter().enumerate() {
            let op = big("k", len, u8::try_from(i).unwrap_or(u8::MAX));
            p.commit_writes(&[w(op.clone())]).expect("commit");
            let WriteOp::Set { value, .. } = op else {
                unreachable!()
            };
            let got = p.get(b"k").expect("get").expect("present");
            assert_eq!((got.seq, got.value == value), (i as u64 + 1, true), "{len}");
            let space = p.space().expect("space");
            assert_eq!(space.data_bytes, 1 + len as u64, "{len}");
        }
        // The log replays to an identical replica, records in pieces too.
        let LogRead::Entries(entries) = p.read_log(0, 100, usize::MAX).expect("log") else {
            panic!("trimmed");
        };
        assert_eq!(entries.len(), sizes.len());
        r.apply_entries(&entries, &[], KEEP_ALL).expect("apply");
        assert_eq!(r.get(b"k").expect("get"), p.get(b"k").expect("get"));
        assert_eq!(
            r.space().expect("space").data_bytes,
            p.space().expect("space").data_bytes
        );
        assert!(pieces_left(&p).0 > 0 && pieces_left(&p).1 > 0);
        // Overwritten and deleted values and trimmed records leave no pieces.
        p.commit_writes(&[w(set("k", "small"))]).expect("commit");
        assert_eq!(pieces_left(&p).0, 0);
        p.commit_writes(&[
            w(big("k", 70_000, 9)),
            w(WriteOp::Delete { key: b"k".to_vec() }),
        ])
        .expect("commit");
        assert_eq!(pieces_left(&p).0, 0);
        assert_eq!(p.space().expect("space").data_bytes, 0);
        let n = p.trim_log(u64::MAX, 1000, u64::MAX).expect("trim");
        assert_eq!(n, sizes.len() + 3);
        assert_eq!(pieces_left(&p), (0, 0));
        assert_eq!(p.space().expect("space").log_bytes, 0);
        // Snapshot pages are bounded by bytes too (at least one pair).
        p.commit_writes(&[
            w(big("a", 65536, 1)),
            w(big("b", 65536, 2)),
            w(big("c", 65536, 3)),
        ])
        .expect("commit");
        let (_, page, done) = p.snapshot_chunk(None, 100, 100_000).expect("chunk");
        assert_eq!((page.len(), done), (2, false));
        let (_, page, done) = p.snapshot_chunk(Some(b"b"), 100, 1).expect("chunk");
        assert_eq!((page.len(), done), (1, true));
    }

    #[test]
    fn the_log_is_bounded_by_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Store::open(&dir.path().join("p.redb"), false).expect("open");
        for i in 0..20 {
            p.commit_writes(&[w(big("k", 10_000, i))]).expect("commit");
        }
        let space = p.space().expect("space");
        assert_eq!((space.log_entries, space.data_bytes), (20, 10_001));
        // Nothing applied by a replica (upto 0): the byte bound still trims,
        // down to the larger of 50,000 bytes and the data's 10,001.
        let removed = p.trim_log(0, 1000, 50_000).expect("trim");
        let space = p.space().expect("space");
        assert!(space.log_bytes <= 50_000, "{space:?}");
        assert_eq!(removed as u64, 20 - space.log_entries);
        assert_eq!(
            p.first_logged().expect("first"),
            Some(21 - space.log_entries)
        );
        assert_eq!(
            p.read_log(0, 10, usize::MAX).expect("log"),
            LogRead::Trimmed
        );
        // Within the bound: nothing more goes.
        assert_eq!(p.trim_log(0, 1000, 50_000).expect("trim"), 0);
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
            KEEP_ALL,
        )
        .expect("apply");
        r.reseed_begin().expect("begin");
        assert!(r.reseed_pending().expect("pending"));
        let (seq, first, done) = p.snapshot_chunk(None, 2, 1 << 20).expect("chunk");
        assert_eq!((seq, first.len(), done), (3, 2, false));
        r.reseed_chunk(&first).expect("chunk");
        let (_, rest, done) = p
            .snapshot_chunk(Some(&first[1].0), 2, 1 << 20)
            .expect("chunk");
        assert_eq!((rest.len(), done), (1, true));
        r.reseed_chunk(&rest).expect("chunk");
        r.reseed_finish(seq, &[]).expect("finish");
        assert!(!r.reseed_pending().expect("pending"));
        assert_eq!(r.get(b"stale").expect("get"), None);
        assert_eq!(r.key_count().expect("count"), 3);
        assert_eq!(r.seq().expect("seq"), 3);
    }

    /// The child side of the journal crash tests: does nothing unless
    /// `COREKV_JOURNAL_CHILD` names a directory; then runs the scenario in
    /// `COREKV_JOURNAL_SCENARIO` on a journaled store there, printing
    /// `ACK n` after each acknowledged commit, and aborts the process (no
    /// clean close: redb keeps only its last durable commit).
    #[test]
    fn journal_crash_child() {
        let Some(dir) = std::env::var_os("COREKV_JOURNAL_CHILD") else {
            return;
        };
        let scenario = std::env::var("COREKV_JOURNAL_SCENARIO").unwrap_or_default();
        let capacity: u64 = std::env::var("COREKV_JOURNAL_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64 * 1024);
        let mut s = Store::open(&Path::new(&dir).join("p.redb"), true).expect("open");
        s.attach_journal(capacity).expect("journal");
        for i in 0..200u64 {
            let key = format!("k{}", i % 20);
            s.commit_writes(&[w(set(&key, &format!("v{i}")))])
                .expect("commit");
            println!("ACK {i}");
        }
        if scenario == "reseed" {
            s.reseed_begin().expect("begin");
            let pair = (
                b"x".to_vec(),
                Versioned {
                    seq: 3,
                    value: b"seeded".to_vec(),
                },
            );
            s.reseed_chunk(&[pair]).expect("chunk");
            s.reseed_finish(3, &[]).expect("finish");
            println!("RESEEDED");
        }
        std::process::abort();
    }

    /// Runs [`journal_crash_child`] in a child process; returns its stdout.
    fn crash_child(dir: &Path, scenario: &str, capacity: u64) -> String {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "storage::tests::journal_crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("COREKV_JOURNAL_CHILD", dir)
            .env("COREKV_JOURNAL_SCENARIO", scenario)
            .env("COREKV_JOURNAL_BYTES", capacity.to_string())
            .output()
            .expect("spawn the child");
        assert!(
            !out.status.success(),
            "the child must end by abort: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// After the crash: every acknowledged write is there, at its seq.
    fn assert_all_acked(s: &Store, rounds: u64) {
        let last = 200 * rounds;
        assert_eq!(s.seq().expect("seq"), last);
        for k in 0..20u64 {
            // The last write of key k: i = 180 + k of the last round.
            let got = s
                .get(format!("k{k}").as_bytes())
                .expect("get")
                .expect("key");
            assert_eq!(got.value, format!("v{}", 180 + k).into_bytes());
            assert_eq!(got.seq, last - 19 + k);
        }
        match s.read_log(last - 5, 100, 1 << 20).expect("log") {
            LogRead::Entries(e) => assert_eq!(e.len(), 5),
            LogRead::Trimmed => panic!("the replayed entries are not in the log"),
        }
    }

    #[test]
    fn journaled_commits_survive_a_crash_through_replay() {
        for capacity in [64 * 1024, 2048] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("p.redb");
            for round in 1..=2u64 {
                let out = crash_child(dir.path(), "writes", capacity);
                assert_eq!(out.matches("ACK ").count(), 200, "{out}");
                let mut s = Store::open(&path, true).expect("reopen");
                let replayed = s.attach_journal(capacity).expect("replay");
                if capacity == 64 * 1024 && round == 1 {
                    // Nothing but the journal had the 200 commits (redb
                    // recovered to its last durable commit).
                    assert_eq!(replayed, 200);
                } else if capacity < 64 * 1024 {
                    // A 2 KiB journal checkpoints every few dozen commits:
                    // only the commits since the last one are replayed.
                    assert!(replayed < 200, "replayed {replayed}");
                }
                assert_all_acked(&s, round);
            }
        }
    }

    #[test]
    fn a_durable_commit_retires_the_journal_even_when_seq_moves_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = crash_child(dir.path(), "reseed", 64 * 1024);
        assert!(out.contains("RESEEDED"), "{out}");
        let mut s = Store::open(&dir.path().join("p.redb"), true).expect("reopen");
        // The re-seed set seq 3 durably: the journal's entries past 3 (of the
        // history the re-seed replaced) must not come back.
        assert_eq!(s.attach_journal(64 * 1024).expect("replay"), 0);
        assert_eq!(s.seq().expect("seq"), 3);
        assert_eq!(s.key_count().expect("count"), 1);
        assert_eq!(s.get(b"x").expect("get").expect("x").value, b"seeded");
    }

    #[test]
    fn a_new_file_ignores_a_journal_left_by_an_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = crash_child(dir.path(), "writes", 64 * 1024);
        assert_eq!(out.matches("ACK ").count(), 200);
        std::fs::remove_file(dir.path().join("p.redb")).expect("remove");
        let mut s = Store::open(&dir.path().join("p.redb"), true).expect("new file");
        assert_eq!(s.attach_journal(64 * 1024).expect("attach"), 0);
        assert_eq!(s.seq().expect("seq"), 0);
        assert_eq!(s.key_count().expect("count"), 0);
    }

    #[test]
    fn a_journal_left_when_the_journal_is_turned_off_is_replayed_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = crash_child(dir.path(), "writes", 64 * 1024);
        assert_eq!(out.matches("ACK ").count(), 200);
        let path = dir.path().join("p.redb");
        let journal = dir.path().join("p.redb.journal");
        {
            let mut s = Store::open(&path, true).expect("reopen");
            assert_eq!(s.attach_journal(0).expect("replay"), 200);
            assert!(!journal.exists(), "the journal is removed once replayed");
            assert_all_acked(&s, 1);
        }
        // Durable without it: a second open has everything, nothing to replay.
        let mut s = Store::open(&path, true).expect("reopen");
        assert_eq!(s.attach_journal(0).expect("nothing"), 0);
        assert_all_acked(&s, 1);
    }

    #[test]
    fn a_record_past_the_flushed_end_never_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.redb");
        let mut s = Store::open(&path, true).expect("open");
        s.attach_journal(64 * 1024).expect("journal");
        s.commit_writes(&[w(set("a", "1"))]).expect("commit");
        // A record whose write reached the file but whose flush failed: in
        // the file past the end the store counts.
        {
            let mut j = s.journal.as_ref().expect("journal").lock().expect("lock");
            let (generation, end) = (j.generation(), j.used());
            assert!(j.append(2, [set("b", "lost")].iter()).expect("append"));
            j.position(generation, end);
        }
        s.reopen().expect("reopen");
        assert_eq!(s.seq().expect("seq"), 1);
        assert_eq!(s.get(b"b").expect("get"), None);
        drop(s);
        // Nor after a restart (the reopen cut the journal at its end).
        let mut s = Store::open(&path, true).expect("open");
        assert_eq!(s.attach_journal(64 * 1024).expect("replay"), 0);
        assert_eq!(s.seq().expect("seq"), 1);
        assert_eq!(s.get(b"b").expect("get"), None);
        assert_eq!(s.get(b"a").expect("get").expect("a").value, b"1");
    }
}
