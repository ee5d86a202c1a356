//! Storage types shared with the layers above: write operations and their
//! log-record encoding, conditions and outcomes, versioned values, and the
//! storage error enum. Pure apart from converting redb's errors.

use std::fmt;

const OP_SET: u8 = 1;
const OP_DELETE: u8 = 2;

/// A storage failure. Every redb error kind collapses into `Db`; the other
/// variants are protocol violations that callers handle differently.
#[derive(Debug)]
pub enum StorageError {
    Db(redb::Error),
    /// A replica was handed an entry that does not follow its applied seq.
    Gap {
        applied: u64,
        got: u64,
    },
    /// A stored value or log entry does not decode.
    Corrupt(&'static str),
    /// The store is closed while it is being reopened (`Store::reopen`),
    /// or its last reopen failed.
    Reopening,
}

impl StorageError {
    /// True for the failures after which redb must be closed and opened
    /// again before it works (an I/O error, which redb latches: every
    /// later call fails with "Previous I/O error occurred"), and for a
    /// store that is closed.
    #[must_use]
    pub fn needs_reopen(&self) -> bool {
        matches!(
            self,
            Self::Db(redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed)
                | Self::Reopening
        )
    }

    /// True when the disk (or the user's quota) is full: `ENOSPC`, `EDQUOT`.
    #[must_use]
    pub fn no_space(&self) -> bool {
        match self {
            Self::Db(redb::Error::Io(e)) => {
                e.kind() == std::io::ErrorKind::StorageFull
                    || e.kind() == std::io::ErrorKind::QuotaExceeded
                    || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            _ => false,
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Db(e) => write!(f, "storage error: {e}"),
            Self::Gap { applied, got } => {
                write!(f, "replication gap: applied {applied}, next entry is {got}")
            }
            Self::Corrupt(what) => write!(f, "corrupt {what}"),
            Self::Reopening => write!(f, "storage is being reopened"),
        }
    }
}

impl std::error::Error for StorageError {}

impl<E: Into<redb::Error>> From<E> for StorageError {
    fn from(e: E) -> Self {
        Self::Db(e.into())
    }
}

/// A change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Set { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl WriteOp {
    #[must_use]
    pub fn key(&self) -> &[u8] {
        match self {
            Self::Set { key, .. } | Self::Delete { key } => key,
        }
    }

    /// Encodes as a log record.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let (op, key, value): (u8, &[u8], &[u8]) = match self {
            Self::Set { key, value } => (OP_SET, key, value),
            Self::Delete { key } => (OP_DELETE, key, &[]),
        };
        out.push(op);
        out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    }

    /// Decodes a log record written by [`WriteOp::encode_into`].
    ///
    /// # Errors
    /// Truncated or unknown records.
    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        let bad = StorageError::Corrupt("log entry");
        let (&op, rest) = bytes
            .split_first()
            .ok_or(StorageError::Corrupt("log entry"))?;
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(StorageError::Corrupt("log entry"))?;
        let klen = u32::from_le_bytes(len_bytes) as usize;
        let key = rest
            .get(4..4 + klen)
            .ok_or(StorageError::Corrupt("log entry"))?;
        let value = &rest[4 + klen..];
        match op {
            OP_SET => Ok(Self::Set {
                key: key.to_vec(),
                value: value.to_vec(),
            }),
            OP_DELETE if value.is_empty() => Ok(Self::Delete { key: key.to_vec() }),
            _ => Err(bad),
        }
    }
}

/// The entity tags of an `If-Match` or `If-None-Match` header, as the
/// versions they name (corekv's ETags are `"<version>"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tags {
    /// `*`: any current version.
    Any,
    /// The versions named by the header's tags. Tags that name no version
    /// are left out, so an empty list matches nothing.
    Versions(Vec<u64>),
}

impl Tags {
    /// Whether a key whose version is `current` (`None`: absent) matches.
    #[must_use]
    pub fn matches(&self, current: Option<u64>) -> bool {
        match (self, current) {
            (_, None) => false,
            (Self::Any, Some(_)) => true,
            (Self::Versions(vs), Some(c)) => vs.contains(&c),
        }
    }
}

/// When a request may proceed, judged on the key's current version. Checked
/// inside the commit transaction for writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cond {
    Always,
    /// Only if the key does not exist (`If-None-Match: *`).
    Absent,
    /// Only if the key exists (`If-Match: *`).
    Present,
    /// Only if the key's version is exactly this seq (`If-Match: "seq"`).
    Version(u64),
    /// HTTP preconditions (RFC 9110 §13.2.2): the key must match
    /// `if_match` (when given) and must not match `if_none_match` (when
    /// given). The REST API puts only versions a tag names under the
    /// comparison the header asks for (strong for If-Match, weak for
    /// If-None-Match) in these lists.
    Http {
        if_match: Option<Tags>,
        if_none_match: Option<Tags>,
    },
}

impl Cond {
    #[must_use]
    pub fn holds(&self, current: Option<u64>) -> bool {
        match self {
            Self::Always => true,
            Self::Absent => current.is_none(),
            Self::Present => current.is_some(),
            Self::Version(v) => current == Some(*v),
            Self::Http {
                if_match,
                if_none_match,
            } => {
                if_match.as_ref().is_none_or(|t| t.matches(current))
                    && !if_none_match.as_ref().is_some_and(|t| t.matches(current))
            }
        }
    }
}

/// A write as submitted to a primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub op: WriteOp,
    pub cond: Cond,
}

/// What happened to one write of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Durable with this seq (also the key's new version).
    Committed(u64),
    /// The condition did not hold; `current` is the key's version.
    ConditionFailed { current: Option<u64> },
}

/// A write with its position in the shard's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: u64,
    pub op: WriteOp,
}

/// What a replica asked for, as the primary's log can answer it.
#[derive(Debug, PartialEq, Eq)]
pub enum LogRead {
    /// Entries after the requested seq, in order (possibly none yet).
    Entries(Vec<LogEntry>),
    /// The log no longer holds the entry after the requested seq.
    Trimmed,
}

/// A value with the sequence number of the write that stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub seq: u64,
    pub value: Vec<u8>,
}

/// Set in the stored seq of a value kept in pieces (seqs stay below 2^63).
const VALUE_IN_PIECES: u64 = 1 << 63;
/// First byte of a log record kept in pieces (a whole one starts with an op).
const RECORD_IN_PIECES: u8 = 0x80;

/// A stored entry as its main table holds it: whole, or the header and
/// first piece of an entry kept in pieces (see `pieces`).
pub(super) enum Stored<'a> {
    Whole(&'a [u8]),
    Pieces { len: usize, first: &'a [u8] },
}

impl Stored<'_> {
    /// Length of the whole entry.
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Whole(b) => b.len(),
            Self::Pieces { len, .. } => *len,
        }
    }
}

fn u64_at(raw: &[u8], at: usize, what: &'static str) -> Result<u64, StorageError> {
    let b: [u8; 8] = raw
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .ok_or(StorageError::Corrupt(what))?;
    Ok(u64::from_le_bytes(b))
}

fn usize_at(raw: &[u8], at: usize, what: &'static str) -> Result<usize, StorageError> {
    usize::try_from(u64_at(raw, at, what)?).map_err(|_| StorageError::Corrupt(what))
}

/// A whole stored value: `[seq u64 LE][value]`.
pub(super) fn encode_value(seq: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// The main entry of a value kept in pieces: `[seq | 2^63][len u64 LE][first piece]`.
pub(super) fn encode_value_head(seq: u64, len: usize, first: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + first.len());
    v.extend_from_slice(&(seq | VALUE_IN_PIECES).to_le_bytes());
    v.extend_from_slice(&(len as u64).to_le_bytes());
    v.extend_from_slice(first);
    v
}

/// Header bytes of a value's main entry kept in pieces.
pub(super) const VALUE_HEAD: usize = 16;

/// The seq of a stored value and what its main entry holds.
pub(super) fn parse_value(raw: &[u8]) -> Result<(u64, Stored<'_>), StorageError> {
    let what = "stored value";
    let seq = u64_at(raw, 0, what)?;
    if seq & VALUE_IN_PIECES == 0 {
        return Ok((seq, Stored::Whole(&raw[8..])));
    }
    let len = usize_at(raw, 8, what)?;
    let first = &raw[VALUE_HEAD..];
    if first.len() > len {
        return Err(StorageError::Corrupt(what));
    }
    Ok((seq & !VALUE_IN_PIECES, Stored::Pieces { len, first }))
}

/// The main entry of a log record kept in pieces: `[0x80][len u64 LE][first piece]`.
pub(super) fn encode_record_head(len: usize, first: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(RECORD_HEAD + first.len());
    v.push(RECORD_IN_PIECES);
    v.extend_from_slice(&(len as u64).to_le_bytes());
    v.extend_from_slice(first);
    v
}

/// Header bytes of a log record's main entry kept in pieces.
pub(super) const RECORD_HEAD: usize = 9;

/// What a log table entry holds.
pub(super) fn parse_record(raw: &[u8]) -> Result<Stored<'_>, StorageError> {
    if raw.first() != Some(&RECORD_IN_PIECES) {
        return Ok(Stored::Whole(raw));
    }
    let what = "log entry";
    let len = usize_at(raw, 1, what)?;
    let first = &raw[RECORD_HEAD..];
    if first.len() > len {
        return Err(StorageError::Corrupt(what));
    }
    Ok(Stored::Pieces { len, first })
}

/// A page of `(key, value)` pairs copied for a re-seed.
pub type SnapshotPage = Vec<(Vec<u8>, Versioned)>;
