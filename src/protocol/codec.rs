//! Binary bodies of forwarded requests (`/internal/kv`), replication pulls
//! and scans when they travel over HTTP, and their decoders (framing
//! checks only).
//!
//! Depends on the message types (`super`) and `storage` (entry types).

use super::{ForwardedKv, KvOp, KvRequest, Pull, PullKind, PullReply, Scan, Style};
use crate::storage::{Cond, EpochStart, LogEntry, StorageError, Tags, Versioned, WriteOp};
use std::time::Duration;

/// Encodes a forwarded request for the HTTP transport (`/internal/kv`),
/// without a deadline.
#[must_use]
pub fn encode_kv(kv: &KvRequest) -> Vec<u8> {
    encode_kv_with_deadline(kv, None)
}

/// Encodes a forwarded request for the HTTP transport (`/internal/kv`)
/// with its sender's deadline (unix milliseconds), if any.
#[must_use]
pub fn encode_kv_with_deadline(kv: &KvRequest, deadline_ms: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + kv.key.len());
    out.push(match kv.style {
        Style::Query => 0,
        Style::Rest => 1,
    });
    let (op, value): (u8, &[u8]) = match &kv.op {
        KvOp::Get => (0, &[]),
        KvOp::Set(v) => (1, v),
        KvOp::Delete => (2, &[]),
    };
    out.push(op);
    let (cond, version) = match kv.cond {
        Cond::Always => (0, 0),
        Cond::Absent => (1, 0),
        Cond::Present => (2, 0),
        Cond::Version(v) => (3, v),
        Cond::Http { .. } => (4, 0),
    };
    out.push(cond);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&kv.min_seq.to_le_bytes());
    out.extend_from_slice(&kv.wait_ms.to_le_bytes());
    put_bytes(&mut out, &kv.key);
    put_bytes(&mut out, value);
    if let Cond::Http {
        if_match,
        if_none_match,
    } = &kv.cond
    {
        put_tags(&mut out, if_match.as_ref());
        put_tags(&mut out, if_none_match.as_ref());
    }
    if let Some(deadline) = deadline_ms {
        out.push(FIELD_DEADLINE);
        out.extend_from_slice(&deadline.to_le_bytes());
    }
    out
}

/// Optional trailing field of an encoded [`KvRequest`]: the deadline (u64,
/// unix milliseconds).
const FIELD_DEADLINE: u8 = 1;

/// An optional tag set: 0 = none, 1 = `*`, 2 = a u32 count and u64 versions.
fn put_tags(out: &mut Vec<u8>, tags: Option<&Tags>) {
    match tags {
        None => out.push(0),
        Some(Tags::Any) => out.push(1),
        Some(Tags::Versions(vs)) => {
            out.push(2);
            out.extend_from_slice(&u32::try_from(vs.len()).unwrap_or(u32::MAX).to_le_bytes());
            for v in vs {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

fn take_tags(r: &mut Reader<'_>) -> Result<Option<Tags>, StorageError> {
    match r.take(1)?[0] {
        0 => Ok(None),
        1 => Ok(Some(Tags::Any)),
        2 => {
            let n: [u8; 4] = r
                .take(4)?
                .try_into()
                .map_err(|_| StorageError::Corrupt("forwarded request"))?;
            let n = u32::from_le_bytes(n) as usize;
            // Every version takes 8 bytes: a count beyond the message is corrupt.
            if n > r.0.len() / 8 {
                return Err(StorageError::Corrupt("forwarded request"));
            }
            (0..n)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()
                .map(|vs| Some(Tags::Versions(vs)))
        }
        _ => Err(StorageError::Corrupt("forwarded request")),
    }
}

/// Decodes a request encoded by [`encode_kv`] or
/// [`encode_kv_with_deadline`]: the fixed head, key and value, then the
/// tag sets when the condition is `Cond::Http` (cond code 4), then the
/// optional trailing fields.
///
/// # Errors
/// Truncated or unknown messages, unknown or repeated trailing fields.
pub fn decode_kv(bytes: &[u8]) -> Result<ForwardedKv, StorageError> {
    let bad = || StorageError::Corrupt("forwarded request");
    let mut r = Reader(bytes);
    let head = r.take(3)?;
    let style = match head[0] {
        0 => Style::Query,
        1 => Style::Rest,
        _ => return Err(bad()),
    };
    let version = r.u64()?;
    let cond = match head[2] {
        0 => Cond::Always,
        1 => Cond::Absent,
        2 => Cond::Present,
        3 => Cond::Version(version),
        4 => Cond::Http {
            if_match: None,
            if_none_match: None,
        },
        _ => return Err(bad()),
    };
    let min_seq = r.u64()?;
    let wait_ms = r.u64()?;
    let key = r.bytes()?.to_vec();
    let value = r.bytes()?;
    let op = match head[1] {
        0 => KvOp::Get,
        1 => KvOp::Set(value.to_vec()),
        2 => KvOp::Delete,
        _ => return Err(bad()),
    };
    let cond = match cond {
        Cond::Http { .. } => Cond::Http {
            if_match: take_tags(&mut r)?,
            if_none_match: take_tags(&mut r)?,
        },
        other => other,
    };
    let mut deadline_ms = None;
    while !r.0.is_empty() {
        match r.take(1)?[0] {
            FIELD_DEADLINE if deadline_ms.is_none() => deadline_ms = Some(r.u64()?),
            _ => return Err(bad()),
        }
    }
    Ok(ForwardedKv {
        kv: KvRequest {
            op,
            key,
            min_seq,
            wait_ms,
            cond,
            style,
        },
        deadline_ms,
    })
}

/// Encodes a pull for the HTTP transport (`/internal/pull`).
#[must_use]
pub fn encode_pull(pull: &Pull) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, pull.replica.as_bytes());
    out.extend_from_slice(
        &u64::try_from(pull.wait.as_millis())
            .unwrap_or(u64::MAX)
            .to_le_bytes(),
    );
    match &pull.kind {
        PullKind::Log { after } => {
            out.push(0);
            out.extend_from_slice(&after.to_le_bytes());
        }
        PullKind::Snapshot { after_key: None } => out.push(1),
        PullKind::Snapshot { after_key: Some(k) } => {
            out.push(2);
            put_bytes(&mut out, k);
        }
    }
    out.extend_from_slice(&pull.epoch.to_le_bytes());
    out
}

/// Decodes a pull encoded by [`encode_pull`].
///
/// # Errors
/// Truncated or unknown messages.
pub fn decode_pull(bytes: &[u8]) -> Result<Pull, StorageError> {
    let mut r = Reader(bytes);
    let replica = String::from_utf8_lossy(r.bytes()?).into_owned();
    let wait = Duration::from_millis(r.u64()?);
    let kind = match r.take(1)?[0] {
        0 => PullKind::Log { after: r.u64()? },
        1 => PullKind::Snapshot { after_key: None },
        2 => PullKind::Snapshot {
            after_key: Some(r.bytes()?.to_vec()),
        },
        _ => return Err(StorageError::Corrupt("pull request")),
    };
    let epoch = r.u64()?;
    Ok(Pull {
        replica,
        kind,
        wait,
        epoch,
    })
}

/// Encodes a scan for the HTTP transport (`/internal/scan`).
#[must_use]
pub fn encode_scan(scan: &Scan) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(scan.limit as u64).to_le_bytes());
    put_bytes(&mut out, &scan.prefix);
    if let Some(a) = &scan.after {
        out.push(1);
        put_bytes(&mut out, a);
    } else {
        out.push(0);
    }
    out
}

/// Decodes a scan encoded by [`encode_scan`].
///
/// # Errors
/// Truncated or unknown messages.
pub fn decode_scan(bytes: &[u8]) -> Result<Scan, StorageError> {
    let mut r = Reader(bytes);
    let limit = usize::try_from(r.u64()?).unwrap_or(usize::MAX);
    let prefix = r.bytes()?.to_vec();
    let after = match r.take(1)?[0] {
        0 => None,
        1 => Some(r.bytes()?.to_vec()),
        _ => return Err(StorageError::Corrupt("scan request")),
    };
    Ok(Scan {
        prefix,
        after,
        limit,
    })
}

const TAG_ENTRIES: u8 = 1;
const TAG_TRIMMED: u8 = 2;
const TAG_SNAPSHOT: u8 = 3;
const TAG_FAILED: u8 = 4;
const TAG_DIVERGED: u8 = 5;
const TAG_NOT_PRIMARY: u8 = 6;

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
            epochs,
        } => {
            out.push(TAG_ENTRIES);
            put_epochs(&mut out, epochs);
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
        PullReply::Snapshot {
            seq,
            pairs,
            done,
            epochs,
        } => {
            out.push(TAG_SNAPSHOT);
            put_epochs(&mut out, epochs);
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
        PullReply::Diverged {
            common,
            primary_seq,
        } => {
            out.push(TAG_DIVERGED);
            out.extend_from_slice(&common.to_le_bytes());
            out.extend_from_slice(&primary_seq.to_le_bytes());
        }
        PullReply::NotPrimary => out.push(TAG_NOT_PRIMARY),
    }
    out
}

fn put_epochs(out: &mut Vec<u8>, epochs: &[EpochStart]) {
    out.extend_from_slice(&(epochs.len() as u64).to_le_bytes());
    for &(e, s) in epochs {
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Most epoch records a reply may carry (one per failover of a shard).
const MAX_EPOCHS: u64 = 1 << 16;

fn take_epochs(r: &mut Reader<'_>) -> Result<Vec<EpochStart>, StorageError> {
    let n = r.u64()?;
    if n > MAX_EPOCHS {
        return Err(StorageError::Corrupt("epoch history"));
    }
    (0..n).map(|_| Ok((r.u64()?, r.u64()?))).collect()
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
            let epochs = take_epochs(&mut r)?;
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
                epochs,
            })
        }
        TAG_TRIMMED => Ok(PullReply::Trimmed {
            primary_seq: r.u64()?,
        }),
        TAG_SNAPSHOT => {
            let epochs = take_epochs(&mut r)?;
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
            Ok(PullReply::Snapshot {
                seq,
                pairs,
                done,
                epochs,
            })
        }
        TAG_DIVERGED => Ok(PullReply::Diverged {
            common: r.u64()?,
            primary_seq: r.u64()?,
        }),
        TAG_NOT_PRIMARY => Ok(PullReply::NotPrimary),
        TAG_FAILED => Ok(PullReply::Failed(String::from_utf8_lossy(r.0).into_owned())),
        _ => Err(StorageError::Corrupt("replication message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::too_many_lines)] // one case per request kind, a table
    fn requests_roundtrip() {
        let kvs = [
            KvRequest {
                op: KvOp::Set(b"\x00v".to_vec()),
                key: b"k\xff".to_vec(),
                min_seq: 0,
                wait_ms: 0,
                cond: Cond::Version(7),
                style: Style::Rest,
            },
            KvRequest {
                op: KvOp::Get,
                key: b"a".to_vec(),
                min_seq: 9,
                wait_ms: 100,
                cond: Cond::Present,
                style: Style::Query,
            },
            KvRequest {
                op: KvOp::Delete,
                key: vec![b'x'; 9000],
                min_seq: 0,
                wait_ms: 0,
                cond: Cond::Absent,
                style: Style::Rest,
            },
            KvRequest {
                op: KvOp::Get,
                key: b"h".to_vec(),
                min_seq: 0,
                wait_ms: 0,
                cond: Cond::Http {
                    if_match: Some(Tags::Versions(vec![1, 7, u64::MAX])),
                    if_none_match: Some(Tags::Any),
                },
                style: Style::Rest,
            },
            KvRequest {
                op: KvOp::Delete,
                key: b"h".to_vec(),
                min_seq: 0,
                wait_ms: 0,
                cond: Cond::Http {
                    if_match: None,
                    if_none_match: Some(Tags::Versions(Vec::new())),
                },
                style: Style::Rest,
            },
        ];
        for kv in kvs {
            for deadline_ms in [None, Some(0), Some(1_764_000_000_123)] {
                let bytes = encode_kv_with_deadline(&kv, deadline_ms);
                let want = ForwardedKv {
                    kv: kv.clone(),
                    deadline_ms,
                };
                assert_eq!(decode_kv(&bytes).expect("decode"), want);
                assert!(decode_kv(&bytes[..bytes.len() - 1]).is_err());
            }
        }
        // A body without the deadline field (an older sender) decodes with
        // no deadline; an unknown or repeated trailing field is refused.
        let kv = KvRequest {
            op: KvOp::Set(b"v".to_vec()),
            key: b"k".to_vec(),
            min_seq: 0,
            wait_ms: 0,
            cond: Cond::Always,
            style: Style::Query,
        };
        let old = encode_kv(&kv);
        assert_eq!(old.len(), 3 + 8 * 3 + 4 + 1 + 4 + 1, "pre-deadline layout");
        assert_eq!(decode_kv(&old).expect("decode").deadline_ms, None);
        let new = encode_kv_with_deadline(&kv, Some(42));
        assert_eq!(&new[..old.len()], &old[..], "the deadline is appended");
        assert_eq!(decode_kv(&new).expect("decode").deadline_ms, Some(42));
        let mut unknown = old.clone();
        unknown.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(decode_kv(&unknown).is_err());
        let mut twice = new.clone();
        twice.extend_from_slice(&new[old.len()..]);
        assert!(decode_kv(&twice).is_err());
        // A deadline with an RFC 9110 condition: value, then the two tag
        // sets (cond code 4), then the deadline field; the tags are read
        // before the trailing fields, so neither is taken for the other.
        let http = KvRequest {
            op: KvOp::Set(b"v".to_vec()),
            key: b"k".to_vec(),
            min_seq: 3,
            wait_ms: 0,
            cond: Cond::Http {
                if_match: Some(Tags::Versions(vec![1, u64::from(FIELD_DEADLINE), 9])),
                if_none_match: Some(Tags::Any),
            },
            style: Style::Rest,
        };
        let plain = encode_kv(&http);
        let tags = 1 + 4 + 3 * 8 + 1;
        assert_eq!(plain.len(), old.len() + tags, "tags follow the value");
        assert_eq!(plain[2], 4, "cond code 4");
        let with = encode_kv_with_deadline(&http, Some(1_764_000_000_123));
        assert_eq!(
            &with[..plain.len()],
            &plain[..],
            "the deadline follows the tags"
        );
        assert_eq!(with[plain.len()], FIELD_DEADLINE);
        assert_eq!(with.len(), plain.len() + 1 + 8);
        assert_eq!(
            decode_kv(&with).expect("decode"),
            ForwardedKv {
                kv: http.clone(),
                deadline_ms: Some(1_764_000_000_123),
            }
        );
        assert_eq!(
            decode_kv(&plain).expect("decode"),
            ForwardedKv {
                kv: http,
                deadline_ms: None,
            }
        );
        for cut in (1..=8).chain(10..=10 + tags) {
            assert!(decode_kv(&with[..with.len() - cut]).is_err(), "cut {cut}");
        }
        for pull in [
            Pull {
                replica: "s/replica".into(),
                kind: PullKind::Log { after: 5 },
                wait: Duration::from_secs(2),
                epoch: 3,
            },
            Pull {
                replica: "r".into(),
                kind: PullKind::Snapshot { after_key: None },
                wait: Duration::ZERO,
                epoch: 0,
            },
            Pull {
                replica: "r".into(),
                kind: PullKind::Snapshot {
                    after_key: Some(vec![0; 9000]),
                },
                wait: Duration::ZERO,
                epoch: u64::MAX,
            },
        ] {
            assert_eq!(decode_pull(&encode_pull(&pull)).expect("decode"), pull);
        }
        for scan in [
            Scan {
                prefix: b"p".to_vec(),
                after: None,
                limit: 10,
            },
            Scan {
                prefix: Vec::new(),
                after: Some(vec![0xff; 100]),
                limit: 1,
            },
        ] {
            assert_eq!(decode_scan(&encode_scan(&scan)).expect("decode"), scan);
        }
    }

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
                epochs: vec![(1, 1), (2, 9)],
            },
            PullReply::Entries {
                primary_seq: 0,
                entries: vec![],
                epochs: vec![],
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
                epochs: vec![(4, 2)],
            },
            PullReply::Diverged {
                common: 7,
                primary_seq: 12,
            },
            PullReply::NotPrimary,
            PullReply::Failed("disk on fire".into()),
        ];
        for r in replies {
            let bytes = encode_reply(&r);
            assert_eq!(decode_reply(&bytes).expect("decode"), r);
            if bytes.len() > 1 && !matches!(r, PullReply::Failed(_)) {
                // Every other reply has a fixed-size tail: cutting it fails.
                assert!(decode_reply(&bytes[..bytes.len() - 1]).is_err());
            }
        }
    }
}
