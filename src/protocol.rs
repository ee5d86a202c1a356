//! Messages between nodes: the in-process [`Mail`] executors send each
//! other over flume, and the binary body of the replication pull exchange
//! when it travels over HTTP instead.
//!
//! Pure types and codecs; depends on `storage` (entry types) and
//! `http::encode::Response`. Every type that crosses executors is `Send`.

use crate::http::encode::Response;
use crate::storage::{Cond, LogEntry, SnapshotPage, StorageError, Versioned, WriteOp};
use std::time::Duration;

/// A key-value operation addressed to the node that owns the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Get,
    Set(Vec<u8>),
    Delete,
}

/// Which API a request came in on, so the owner answers in its form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `/get`, `/set`, `/delete`.
    Seed,
    /// `/v1/kv/{key}` (and the batch endpoint).
    Rest,
}

/// A key-value request as routed between nodes. A `KvRequest` that reaches
/// another node is "forwarded" and is never forwarded again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvRequest {
    pub op: KvOp,
    pub key: Vec<u8>,
    /// Read-your-writes: answer a get only once the serving node has
    /// applied at least this seq (0: no condition).
    pub min_seq: u64,
    /// How long to wait for `min_seq`, in milliseconds.
    pub wait_ms: u64,
    /// Condition on the key's current version (writes only).
    pub cond: Cond,
    pub style: Style,
}

/// A prefix scan of one shard's primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub prefix: Vec<u8>,
    /// Resume strictly after this key.
    pub after: Option<Vec<u8>>,
    pub limit: usize,
}

/// What a replica asks its primary for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullKind {
    /// Log entries after `after` (the replica's applied seq).
    Log { after: u64 },
    /// A page of the primary's data for a re-seed, keys after `after_key`.
    Snapshot { after_key: Option<Vec<u8>> },
}

/// A replica's pull request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pull {
    /// The replica's node name, so the primary can track its progress.
    pub replica: String,
    pub kind: PullKind,
    /// How long the primary may hold a log pull open waiting for writes.
    pub wait: Duration,
}

/// The primary's answer to a [`Pull`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullReply {
    /// Entries in order after the requested seq (none: nothing new in time).
    Entries {
        primary_seq: u64,
        entries: Vec<LogEntry>,
    },
    /// The log was trimmed past the replica's position: re-seed.
    Trimmed { primary_seq: u64 },
    /// A page of a re-seed snapshot read at `seq`; `done` on the last page.
    Snapshot {
        seq: u64,
        pairs: Vec<(Vec<u8>, Versioned)>,
        done: bool,
    },
    /// The primary could not answer (storage failure), with its message.
    Failed(String),
}

/// What executors send each other.
pub enum Mail {
    /// A forwarded key-value request; the owner answers on the channel.
    Kv(KvRequest, flume::Sender<Response>),
    /// A replication pull from a replica in this process.
    Pull(Pull, flume::Sender<PullReply>),
    /// A prefix scan for a listing; answered with the page or a message.
    Scan(Scan, flume::Sender<Result<SnapshotPage, String>>),
}

const TAG_ENTRIES: u8 = 1;
const TAG_TRIMMED: u8 = 2;
const TAG_SNAPSHOT: u8 = 3;
const TAG_FAILED: u8 = 4;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes a reply for the HTTP transport.
#[must_use]
pub fn encode_reply(reply: &PullReply) -> Vec<u8> {
    let mut out = Vec::new();
    match reply {
        PullReply::Entries {
            primary_seq,
            entries,
        } => {
            out.push(TAG_ENTRIES);
            out.extend_from_slice(&primary_seq.to_le_bytes());
            out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
            let mut rec = Vec::new();
            for e in entries {
                out.extend_from_slice(&e.seq.to_le_bytes());
                rec.clear();
                e.op.encode_into(&mut rec);
                put_bytes(&mut out, &rec);
            }
        }
        PullReply::Trimmed { primary_seq } => {
            out.push(TAG_TRIMMED);
            out.extend_from_slice(&primary_seq.to_le_bytes());
        }
        PullReply::Snapshot { seq, pairs, done } => {
            out.push(TAG_SNAPSHOT);
            out.extend_from_slice(&seq.to_le_bytes());
            out.push(u8::from(*done));
            out.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
            for (k, v) in pairs {
                put_bytes(&mut out, k);
                out.extend_from_slice(&v.seq.to_le_bytes());
                put_bytes(&mut out, &v.value);
            }
        }
        PullReply::Failed(msg) => {
            out.push(TAG_FAILED);
            out.extend_from_slice(msg.as_bytes());
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.0.len() < n {
            return Err(StorageError::Corrupt("replication message"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, StorageError> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| StorageError::Corrupt("replication message"))?;
        Ok(u64::from_le_bytes(b))
    }
    fn bytes(&mut self) -> Result<&'a [u8], StorageError> {
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| StorageError::Corrupt("replication message"))?;
        self.take(u32::from_le_bytes(b) as usize)
    }
}

/// Decodes a reply produced by [`encode_reply`].
///
/// # Errors
/// Truncated or unknown messages.
pub fn decode_reply(bytes: &[u8]) -> Result<PullReply, StorageError> {
    let mut r = Reader(bytes);
    let tag = r.take(1)?[0];
    match tag {
        TAG_ENTRIES => {
            let primary_seq = r.u64()?;
            let n = r.u64()?;
            let mut entries = Vec::new();
            for _ in 0..n {
                let seq = r.u64()?;
                let op = WriteOp::decode(r.bytes()?)?;
                entries.push(LogEntry { seq, op });
            }
            Ok(PullReply::Entries {
                primary_seq,
                entries,
            })
        }
        TAG_TRIMMED => Ok(PullReply::Trimmed {
            primary_seq: r.u64()?,
        }),
        TAG_SNAPSHOT => {
            let seq = r.u64()?;
            let done = r.take(1)?[0] == 1;
            let n = r.u64()?;
            let mut pairs = Vec::new();
            for _ in 0..n {
                let k = r.bytes()?.to_vec();
                let vseq = r.u64()?;
                let value = r.bytes()?.to_vec();
                pairs.push((k, Versioned { seq: vseq, value }));
            }
            Ok(PullReply::Snapshot { seq, pairs, done })
        }
        TAG_FAILED => Ok(PullReply::Failed(String::from_utf8_lossy(r.0).into_owned())),
        _ => Err(StorageError::Corrupt("replication message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_roundtrip() {
        let replies = vec![
            PullReply::Entries {
                primary_seq: 9,
                entries: vec![
                    LogEntry {
                        seq: 8,
                        op: WriteOp::Set {
                            key: b"k".to_vec(),
                            value: b"v".to_vec(),
                        },
                    },
                    LogEntry {
                        seq: 9,
                        op: WriteOp::Delete {
                            key: b"\x00".to_vec(),
                        },
                    },
                ],
            },
            PullReply::Entries {
                primary_seq: 0,
                entries: vec![],
            },
            PullReply::Trimmed { primary_seq: 77 },
            PullReply::Snapshot {
                seq: 5,
                pairs: vec![(
                    b"a".to_vec(),
                    Versioned {
                        seq: 3,
                        value: b"x".to_vec(),
                    },
                )],
                done: true,
            },
            PullReply::Failed("disk on fire".into()),
        ];
        for r in replies {
            let bytes = encode_reply(&r);
            assert_eq!(decode_reply(&bytes).expect("decode"), r);
            if bytes.len() > 1 && !matches!(r, PullReply::Failed(_)) {
                assert!(decode_reply(&bytes[..bytes.len() - 1]).is_err());
            }
        }
    }
}
