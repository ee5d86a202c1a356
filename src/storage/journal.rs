//! A primary's write-ahead journal (opt-in: `--journal-mb`): the entries of
//! each group commit, appended to a preallocated file and flushed with one
//! `fdatasync`, so that redb can commit the same batch without a flush of
//! its own (`Durability::None`, see [`super::Store`]).
//!
//! Why: a durable redb commit writes every page the transaction dirtied
//! (data, log and meta tables, redb's allocator tables, the header: 8
//! `pwrite`s per commit of one key, measured) before its `fdatasync`; here
//! a commit is one `pwrite` into blocks the file already has (no file-system
//! metadata changes, so the flush is the data alone) and one `fdatasync`.
//!
//! File: a sequence of records from offset 0, then whatever an earlier
//! generation left (ignored):
//!
//! ```text
//! record: [magic u32 LE][crc32 u32 LE of the rest][gen u64 LE][first seq u64 LE]
//!         [count u32 LE][payload len u32 LE][payload]
//! payload: count x ([len u32 LE][WriteOp::encode_into bytes]), seqs first, first + 1, ...
//! ```
//!
//! `gen` is the generation the store's META records: every durable redb
//! commit (a checkpoint) bumps it in the same transaction and starts the
//! journal again at offset 0, so records of an older generation, whose
//! entries the checkpoint holds, are never read again, even where a later
//! durable commit moved the store's seq backwards (a replica's re-seed).
//! A torn or foreign tail fails its checksum or generation: the scan stops
//! there (its batch was never acknowledged: the flush had not returned).
//!
//! Synchronous, no executor types; depends on `storage::types` and crc32fast.

use super::types::{StorageError, WriteOp};
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

const MAGIC: u32 = 0x434b_564a; // "CKVJ"
/// Bytes before a record's payload.
const HEAD: usize = 32;
/// Zeros written per call while the file is preallocated.
const FILL: usize = 1 << 20;

/// An open journal: where the next record goes and under which generation.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    capacity: u64,
    /// Offset of the next record.
    end: u64,
    /// Generation of the records written now (the store's META value).
    generation: u64,
    buf: Vec<u8>,
}

/// What a scan of the journal found past a store's seq.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Scan {
    /// Entries with seqs after the store's, in order, contiguous from it.
    pub entries: Vec<(u64, WriteOp)>,
    /// Offset just past the last valid record of the generation.
    pub end: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path`, preallocated to
    /// `capacity` bytes of zeros (written and synced once, with the
    /// directory entry), positioned at offset 0 of generation 0 until
    /// [`Journal::position`] says otherwise. What the file already holds is
    /// flushed first: a record written by a process that died before its
    /// own flush may be replayed, and must then be on disk before anyone
    /// reads it. A file this call created and could not fill is removed.
    ///
    /// # Errors
    /// The file cannot be created, written or synced.
    pub fn open(path: &Path, capacity: u64) -> std::io::Result<Self> {
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut len = file.metadata()?.len();
        file.sync_data()?;
        if len < capacity {
            let filled = (|| {
                let zeros = vec![0u8; FILL];
                while len < capacity {
                    let n = usize::try_from(capacity - len).map_or(FILL, |left| left.min(FILL));
                    file.write_all_at(&zeros[..n], len)?;
                    len += n as u64;
                }
                file.sync_all()?;
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
            })();
            if let Err(e) = filled {
                if !existed {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        }
        Ok(Self {
            file,
            capacity,
            end: 0,
            generation: 0,
            buf: Vec::new(),
        })
    }

    /// The generation records are written under now.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of records written in this generation.
    pub fn used(&self) -> u64 {
        self.end
    }

    /// Continues generation `generation` at offset `end` (after a scan).
    pub fn position(&mut self, generation: u64, end: u64) {
        self.generation = generation;
        self.end = end;
    }

    /// Reads the records of `generation` from the start (up to `limit`
    /// bytes when given) and returns the entries with seqs after `after`
    /// (stopping at the first record that is torn, of another generation,
    /// or leaves a gap in the seqs).
    ///
    /// # Errors
    /// The file cannot be read; an entry of a valid record does not decode.
    pub fn scan(
        &self,
        generation: u64,
        after: u64,
        limit: Option<u64>,
    ) -> Result<Scan, StorageError> {
        let io = |e: std::io::Error| StorageError::Db(e.into());
        let size = self.file.metadata().map_err(io)?.len();
        let len = limit.map_or(size, |l| l.min(size));
        let mut out = Scan::default();
        let mut off = 0u64;
        let mut head = [0u8; HEAD];
        let mut next = after.saturating_add(1);
        while off + HEAD as u64 <= len {
            self.file.read_exact_at(&mut head, off).map_err(io)?;
            let word =
                |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
            let long = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&head[i..i + 8]);
                u64::from_le_bytes(b)
            };
            let (magic, crc, g, first, count, plen) = (
                word(0),
                word(4),
                long(8),
                long(16),
                word(24),
                u64::from(word(28)),
            );
            if magic != MAGIC || g != generation || off + HEAD as u64 + plen > len {
                break;
            }
            let mut payload = vec![
                0u8;
                usize::try_from(plen)
                    .map_err(|_| StorageError::Corrupt("journal record"))?
            ];
            self.file
                .read_exact_at(&mut payload, off + HEAD as u64)
                .map_err(io)?;
            let mut h = crc32fast::Hasher::new();
            h.update(&head[8..]);
            h.update(&payload);
            if h.finalize() != crc {
                break;
            }
            let ops = decode_payload(&payload, count)?;
            let last = first.saturating_add(ops.len() as u64 - 1);
            if first > next {
                // A gap: the store lacks entries this journal does not hold.
                break;
            }
            for (i, op) in ops.into_iter().enumerate() {
                let seq = first.saturating_add(i as u64);
                if seq >= next {
                    out.entries.push((seq, op));
                }
            }
            next = next.max(last.saturating_add(1));
            off += HEAD as u64 + plen;
            out.end = off;
        }
        Ok(out)
    }

    /// Appends the entries of one commit (seqs `first`, `first + 1`, ...)
    /// and flushes them. `Ok(false)`: they do not fit in what is left of
    /// the file (nothing written; the caller checkpoints instead).
    ///
    /// # Errors
    /// The write or the flush failed: the batch must not be committed.
    pub fn append<'a>(
        &mut self,
        first: u64,
        ops: impl ExactSizeIterator<Item = &'a WriteOp>,
    ) -> std::io::Result<bool> {
        let count = u32::try_from(ops.len()).map_err(std::io::Error::other)?;
        self.buf.clear();
        self.buf.resize(HEAD, 0);
        for op in ops {
            let at = self.buf.len();
            self.buf.extend_from_slice(&[0; 4]);
            op.encode_into(&mut self.buf);
            let n = u32::try_from(self.buf.len() - at - 4).map_err(std::io::Error::other)?;
            self.buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
        }
        let plen = u32::try_from(self.buf.len() - HEAD).map_err(std::io::Error::other)?;
        if self.end + self.buf.len() as u64 > self.capacity {
            return Ok(false);
        }
        self.buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        self.buf[8..16].copy_from_slice(&self.generation.to_le_bytes());
        self.buf[16..24].copy_from_slice(&first.to_le_bytes());
        self.buf[24..28].copy_from_slice(&count.to_le_bytes());
        self.buf[28..32].copy_from_slice(&plen.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = self
            .file
            .write_all_at(&self.buf, self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // The record may be in the file anyway: it must never count
            // (its writers hear that it was not applied). `Store::reopen`
            // repeats this if it fails here.
            let _ = self.cut();
            return Err(e);
        }
        self.end += self.buf.len() as u64;
        Ok(true)
    }

    /// Makes the end of the records final: zeros over the header at the
    /// current end (where a write that failed may have left a record) and
    /// a flush.
    ///
    /// # Errors
    /// The write or the flush failed.
    pub fn cut(&self) -> std::io::Result<()> {
        if self.end + HEAD as u64 > self.capacity.max(self.file.metadata()?.len()) {
            return Ok(());
        }
        self.file.write_all_at(&[0u8; HEAD], self.end)?;
        self.file.sync_data()
    }
}

/// The `count` operations of a record's payload.
fn decode_payload(payload: &[u8], count: u32) -> Result<Vec<WriteOp>, StorageError> {
    let bad = || StorageError::Corrupt("journal record");
    let mut ops = Vec::with_capacity(count as usize);
    let mut rest = payload;
    for _ in 0..count {
        let (len, tail) = rest.split_at_checked(4).ok_or_else(bad)?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| bad())?) as usize;
        let (op, tail) = tail.split_at_checked(len).ok_or_else(bad)?;
        ops.push(WriteOp::decode(op)?);
        rest = tail;
    }
    if ops.is_empty() || !rest.is_empty() {
        return Err(bad());
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::set;

    #[test]
    fn appended_records_scan_back_after_the_given_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let mut j = Journal::open(&path, 64 * 1024).expect("open");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 64 * 1024);
        j.position(7, 0);
        let del = WriteOp::Delete { key: b"a".to_vec() };
        assert!(
            j.append(11, [set("a", "1"), set("b", "2")].iter())
                .expect("append")
        );
        assert!(j.append(13, [del.clone()].iter()).expect("append"));
        let all = j.scan(7, 10, None).expect("scan");
        assert_eq!(
            all.entries,
            vec![(11, set("a", "1")), (12, set("b", "2")), (13, del.clone())]
        );
        assert_eq!(all.end, j.used());
        // Entries the store already has are skipped, within a record too.
        assert_eq!(j.scan(7, 12, None).expect("scan").entries, vec![(13, del)]);
        assert!(j.scan(7, 13, None).expect("scan").entries.is_empty());
        // Another generation's records are not read; a gap stops the scan.
        assert_eq!(j.scan(8, 10, None).expect("scan"), Scan::default());
        assert!(j.scan(7, 9, None).expect("scan").entries.is_empty());
        // Reopened, the file keeps its records.
        drop(j);
        let j = Journal::open(&path, 64 * 1024).expect("reopen");
        assert_eq!(j.scan(7, 10, None).expect("scan").entries.len(), 3);
    }

    #[test]
    fn a_torn_or_overwritten_tail_ends_the_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let mut j = Journal::open(&path, 4096).expect("open");
        assert!(j.append(1, [set("a", "1")].iter()).expect("append"));
        let first = j.used();
        assert!(j.append(2, [set("b", "2")].iter()).expect("append"));
        // Flip a byte of the second record's payload.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.write_all_at(b"X", j.used() - 1).expect("write");
        let scan = j.scan(0, 0, None).expect("scan");
        assert_eq!(scan.entries, vec![(1, set("a", "1"))]);
        assert_eq!(scan.end, first);
        // A new generation from offset 0 hides what the old one left.
        j.position(1, 0);
        assert!(j.append(5, [set("c", "3")].iter()).expect("append"));
        assert_eq!(
            j.scan(1, 4, None).expect("scan").entries,
            vec![(5, set("c", "3"))]
        );
        assert_eq!(j.scan(0, 0, None).expect("scan"), Scan::default());
    }

    #[test]
    fn a_batch_that_does_not_fit_is_refused_unwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(&dir.path().join("j"), 100).expect("open");
        let big = set("k", &"v".repeat(80));
        assert!(!j.append(1, [big].iter()).expect("append"));
        assert_eq!(j.used(), 0);
        assert!(j.append(1, [set("k", "v")].iter()).expect("append"));
        assert_eq!(j.scan(0, 0, None).expect("scan").entries.len(), 1);
    }
}
