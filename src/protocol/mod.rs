//! Messages between nodes: the in-process [`Mail`] executors send each
//! other over flume, and the binary bodies of forwarded requests
//! (`/internal/kv`), replication pulls and scans when they travel over HTTP
//! instead.
//!
//! Here: the message types and [`node_request`], the HTTP request one node
//! sends another (marked with [`FORWARDED_HEADER`], with the cluster
//! token). `mailbox.rs`: [`Mail`] and [`ask`], the one way
//! to send a mail (it never waits for room in a full mailbox:
//! [`MailError::Full`]). `codec.rs`: the binary encoders and decoders.
//! Depends on `storage` (entry types), `nodestore::StoreError` (why a scan
//! was not served), `http::encode::Response` and
//! `http::client::request_bytes`. Every type that crosses
//! executors is `Send`. Decoders only check framing; the limits on what a
//! decoded message may carry are checked by `api` at the boundary.
//!
//! A forwarded write over HTTP carries its sender's deadline
//! ([`ForwardedKv::deadline_ms`], unix milliseconds):
//! [`encode_kv_with_deadline`] appends it to the [`encode_kv`] layout as an
//! optional trailing field (after the value and, for a `Cond::Http`
//! condition, its tag sets), so bodies without it (older senders, reads)
//! decode as before. An unknown trailing field is an error, never skipped:
//! an owner must not apply a write whose constraints it does not
//! understand. (An owner older than the field refuses a body with it: 400,
//! nothing applied; upgrade owners before senders.)

mod codec;
mod mailbox;

pub use codec::{
    decode_kv, decode_pull, decode_reply, decode_scan, encode_kv, encode_kv_with_deadline,
    encode_pull, encode_reply, encode_scan,
};
pub use mailbox::{MAILBOX_CAPACITY, Mail, MailError, ask};

use crate::http::client::request_bytes;
use crate::storage::{Cond, EpochStart, LogEntry, Versioned};
use std::time::Duration;

/// The header field that marks a request one corekv node sends another
/// (the receiver never forwards it again).
pub const FORWARDED_HEADER: &str = "X-Corekv-Forwarded";

/// The bytes of a request from one corekv node to another: marked with
/// [`FORWARDED_HEADER`], with the cluster token when one is set.
#[must_use]
pub fn node_request(
    method: &str,
    target: &[u8],
    host: &str,
    token: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let forwarded = (FORWARDED_HEADER, &b"1"[..]);
    match token {
        Some(t) => {
            let bearer = format!("Bearer {t}");
            let fields = [forwarded, ("Authorization", bearer.as_bytes())];
            request_bytes(method, target, host, &fields, body)
        }
        None => request_bytes(method, target, host, &[forwarded], body),
    }
}

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
    /// `/get`, `/set`, `/delete` (query-string API, as the seed project's).
    Query,
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

/// A [`KvRequest`] as it arrives over HTTP (`/internal/kv`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedKv {
    pub kv: KvRequest,
    /// A forwarded write's sender's wall-clock deadline in unix
    /// milliseconds: the sender stops waiting for the answer then, so the
    /// owner must not apply the write after it (README, "What a status
    /// means for a write"). `None`: no deadline (reads; older senders).
    pub deadline_ms: Option<u64>,
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
    /// The epoch of the replica's newest entry (see `storage::epochs`):
    /// the primary checks the replica's entries against its own history.
    pub epoch: u64,
}

/// The primary's answer to a [`Pull`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullReply {
    /// Entries in order after the requested seq (none: nothing new in time).
    Entries {
        primary_seq: u64,
        entries: Vec<LogEntry>,
        /// The primary's epoch history (one record per failover).
        epochs: Vec<EpochStart>,
    },
    /// The log was trimmed past the replica's position: re-seed.
    Trimmed { primary_seq: u64 },
    /// A page of a re-seed snapshot read at `seq`; `done` on the last page.
    Snapshot {
        seq: u64,
        pairs: Vec<(Vec<u8>, Versioned)>,
        done: bool,
        /// The primary's epoch history.
        epochs: Vec<EpochStart>,
    },
    /// The replica holds entries after seq `common` that this primary's
    /// history does not have (written by an earlier primary that lost its
    /// role before they were replicated): it must discard them (re-seed).
    Diverged { common: u64, primary_seq: u64 },
    /// The node asked is not its shard's primary (any more).
    NotPrimary,
    /// The primary could not answer (storage failure), with its message.
    Failed(String),
}

/// Longest node name accepted from the network (`Pull::replica`) unless it
/// names a configured node.
pub const MAX_NODE_NAME: usize = 256;
