//! Operational endpoints: `/status` (JSON), `/ready`, `/metrics`
//! (Prometheus text) and the internal endpoints other nodes call
//! (`/internal/kv` for forwarded requests, with a write's deadline;
//! `/internal/pull` for replication, `/internal/scan` for listings).
//!
//! Reads every local node's published counters and the reachability of
//! nodes on other hosts; never blocks. The internal pull and scan pages are
//! read on the node's reader thread (a full read queue is a 503). Everything an internal request
//! carries is checked before use: the token (always, when configured),
//! lengths of names and keys, the puller's name against the configured
//! replicas, and arithmetic on numbers from the network (checked, 400).

use super::{Api, ApiError};
use crate::control::ControlClient;
use crate::http::encode::{BYTES, JSON, Response};
use crate::http::parse::{Method, Request};
use crate::metrics;
use crate::nodestore::StorageHealth;
use crate::protocol::{
    MAX_NODE_NAME, Pull, PullKind, PullReply, decode_kv, decode_pull, decode_scan, encode_reply,
};
use crate::replication::ReplicaState;
use serde::Serialize;
use std::sync::atomic::Ordering;

/// A replica further behind than this many entries is not ready.
pub const READY_MAX_LAG: u64 = 1000;

/// `/status`: which node answered, every local node, every remote peer.
#[derive(Serialize)]
struct Status<'a> {
    served_by: &'a str,
    nodes: Vec<NodeJson<'a>>,
    peers: Vec<PeerJson>,
    /// The etcd control plane (`--etcd` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    control: Option<ControlJson>,
}

/// The control plane's state in `/status`.
#[derive(Serialize)]
struct ControlJson {
    etcd_reachable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    etcd_unreachable_since: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    last_error: String,
    lease_id: i64,
    elections_won: u64,
    elections_observed: u64,
    fenced: u64,
}

/// One local node in `/status`; `name` comes first (clients and the test
/// harness find node objects by it).
#[derive(Serialize)]
struct NodeJson<'a> {
    name: &'a str,
    address: &'a str,
    shard: usize,
    keys: u64,
    commits: u64,
    committed_writes: u64,
    open_connections: u64,
    seq_waiters: u64,
    overloaded_writes: u64,
    overloaded_reads: u64,
    /// `ok`, `no-space`, `failed` or `reopening` (see `nodestore`).
    storage: &'static str,
    /// Why the store is not `ok`.
    #[serde(skip_serializing_if = "String::is_empty")]
    storage_error: String,
    storage_failures: u64,
    reopens: u64,
    /// Keys and values stored; log records kept; the file's length and the
    /// disk space it takes (refreshed about once a second).
    data_bytes: u64,
    log_bytes: u64,
    log_entries: u64,
    file_bytes: u64,
    disk_bytes: u64,
    /// The seq `data_bytes` .. `disk_bytes` were read at.
    space_seq: u64,
    role: &'static str,
    /// The shard's epoch as this process knows it (1 in a static cluster).
    epoch: u64,
    /// The epoch of the newest entry this node holds.
    data_epoch: u64,
    /// Client writes refused because this node was not the primary with a
    /// valid lease; writes whose lease ran out during their commit;
    /// entries discarded when the node rejoined a new primary.
    fenced_writes: u64,
    lease_lost_writes: u64,
    discarded_writes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    committed_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lag: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
}

/// A node on another host in `/status`: `peer`, not `name`, comes first,
/// since it is not a local node.
#[derive(Serialize)]
struct PeerJson {
    peer: String,
    address: String,
    reachability: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
}

impl Api {
    pub(super) fn status(&self) -> Response {
        let roles = self.router.roles();
        let locals = self.locals.load();
        let nodes = locals
            .iter()
            .map(|(node, stats, m)| {
                let seq = stats.seq.load(Ordering::Acquire);
                let mut n = NodeJson {
                    name: &node.name,
                    address: &node.address,
                    shard: node.shard,
                    keys: stats.keys.load(Ordering::Relaxed),
                    commits: stats.commits.load(Ordering::Relaxed),
                    committed_writes: stats.committed_writes.load(Ordering::Relaxed),
                    open_connections: m.open_connections.load(Ordering::Relaxed),
                    seq_waiters: stats.seq_waiters.load(Ordering::Relaxed),
                    overloaded_writes: stats.overloaded_writes.load(Ordering::Relaxed),
                    overloaded_reads: stats.overloaded_reads.load(Ordering::Relaxed),
                    storage: stats.health().name(),
                    storage_error: stats.storage_error(),
                    storage_failures: stats.storage_failures.load(Ordering::Relaxed),
                    reopens: stats.reopens.load(Ordering::Relaxed),
                    data_bytes: stats.data_bytes.load(Ordering::Relaxed),
                    log_bytes: stats.log_bytes.load(Ordering::Relaxed),
                    log_entries: stats.log_entries.load(Ordering::Relaxed),
                    file_bytes: stats.file_bytes.load(Ordering::Relaxed),
                    disk_bytes: stats.disk_bytes.load(Ordering::Relaxed),
                    space_seq: stats.space_seq.load(Ordering::Relaxed),
                    role: "primary",
                    epoch: roles.epoch(node.shard),
                    data_epoch: stats.epoch.load(Ordering::Relaxed),
                    fenced_writes: stats.fenced_writes.load(Ordering::Relaxed),
                    lease_lost_writes: stats.lease_lost_writes.load(Ordering::Relaxed),
                    discarded_writes: stats.discarded_writes.load(Ordering::Relaxed),
                    committed_seq: None,
                    applied_seq: None,
                    primary_seq: None,
                    lag: None,
                    state: None,
                };
                if roles.is_primary(node.shard, node.id) {
                    n.committed_seq = Some(seq);
                } else {
                    {
                        let primary = stats.primary_seq.load(Ordering::Relaxed);
                        let state = ReplicaState::from_code(stats.state.load(Ordering::Relaxed));
                        n.role = "replica";
                        n.applied_seq = Some(seq);
                        n.primary_seq = Some(primary);
                        n.lag = Some(primary.saturating_sub(seq));
                        n.state = Some(state.name());
                    }
                }
                n
            })
            .collect();
        let peers = self
            .router
            .peers()
            .into_iter()
            .map(|(node, state, error)| PeerJson {
                peer: node.name.clone(),
                address: node.address.clone(),
                reachability: state.name(),
                error,
            })
            .collect();
        let control = self.control.as_ref().map(|c| {
            let st = c.status();
            ControlJson {
                etcd_reachable: st.reachable(),
                etcd_unreachable_since: st
                    .unreachable_since()
                    .map(httpdate::fmt_http_date)
                    .unwrap_or_default(),
                last_error: st.last_error(),
                lease_id: st.lease_id.load(Ordering::Relaxed),
                elections_won: st.elections_won.load(Ordering::Relaxed),
                elections_observed: st.elections_observed.load(Ordering::Relaxed),
                fenced: st.fenced.load(Ordering::Relaxed),
            }
        });
        let status = Status {
            served_by: &self.me().name,
            nodes,
            peers,
            control,
        };
        let mut body = serde_json::to_vec(&status).unwrap_or_default();
        body.push(b'\n');
        Response::new(200, JSON, body)
    }

    /// 200 when every local node's store is healthy and every local
    /// replica follows its primary within [`READY_MAX_LAG`] entries; 503
    /// naming the ones that do not (with the storage error).
    pub(super) fn ready(&self) -> Response {
        let roles = self.router.roles();
        let mut behind = Vec::new();
        if let Some(problem) = self
            .control
            .as_ref()
            .and_then(|c| c.status().ready_problem())
        {
            behind.push(problem);
        }
        for (node, stats, _) in self.locals.load().iter() {
            let health = stats.health();
            if health != StorageHealth::Ok {
                behind.push(format!(
                    "{} (storage {}: {})",
                    node.name,
                    health.name(),
                    stats.storage_error()
                ));
                continue;
            }
            if roles.is_primary(node.shard, node.id) {
                if !roles.lease_valid(node.id) {
                    behind.push(format!(
                        "{} (primary without a valid lease: writes refused until it is renewed)",
                        node.name
                    ));
                }
            } else {
                let state = ReplicaState::from_code(stats.state.load(Ordering::Relaxed));
                let lag = stats
                    .primary_seq
                    .load(Ordering::Relaxed)
                    .saturating_sub(stats.seq.load(Ordering::Acquire));
                if state != ReplicaState::Following || lag > READY_MAX_LAG {
                    behind.push(format!("{} ({}, lag {lag})", node.name, state.name()));
                }
            }
        }
        if behind.is_empty() {
            Response::text(200, "ready")
        } else {
            Response::text(503, &format!("not ready: {}", behind.join(", ")))
        }
    }

    pub(super) fn metrics_text(&self) -> Response {
        let body = metrics::render(
            &self.locals.load(),
            self.router.roles(),
            self.control.as_ref().map(ControlClient::status),
        )
        .into_bytes();
        Response::new(200, "text/plain; version=0.0.4; charset=utf-8", body)
    }

    /// `/internal/kv` (a request forwarded from another host),
    /// `/internal/pull` (replication) and `/internal/scan` (listings):
    /// `POST` with a body in `protocol`'s encoding; the token is required
    /// when one is configured.
    pub(super) async fn internal(&self, req: &Request) -> Result<Response, ApiError> {
        self.authorize(req)?;
        if req.method != Method::Post {
            return Err(ApiError::MethodNotAllowed("POST"));
        }
        let bad = |e: crate::storage::StorageError| ApiError::BadBody(e.to_string());
        if req.path() == b"/internal/kv" {
            let mut forwarded = decode_kv(req.body()).map_err(bad)?;
            forwarded.kv.key = super::query::check_key(forwarded.kv.key, self.cfg.max_key)?;
            return self
                .dispatch(forwarded.kv, true, forwarded.deadline_ms)
                .await;
        }
        if req.path() != b"/internal/pull" && req.path() != b"/internal/scan" {
            return Err(ApiError::UnknownPath);
        }
        let primary = self.primary_log();
        if req.path() == b"/internal/scan" && primary.is_none() {
            return Err(ApiError::Misdirected {
                node: self.me().name.clone(),
                shard: self.me().shard,
            });
        }
        let reply = if req.path() == b"/internal/scan" {
            let mut scan = decode_scan(req.body()).map_err(bad)?;
            self.check_len("prefix", scan.prefix.len())?;
            if let Some(after) = &scan.after {
                self.check_len("after", after.len())?;
            }
            scan.limit = scan.limit.min(10_000);
            PullReply::Snapshot {
                seq: 0,
                pairs: self.scan_local(scan).await?,
                done: true,
                epochs: Vec::new(),
            }
        } else {
            let pull = decode_pull(req.body()).map_err(bad)?;
            let Some(primary) = primary else {
                // The role moved: the replica asks the new primary.
                return Ok(Response::new(
                    200,
                    BYTES,
                    encode_reply(&PullReply::NotPrimary),
                ));
            };
            self.check_pull(primary.tracked(&pull.replica), &pull)?;
            primary
                .serve(pull)
                .await
                .map_err(|e| ApiError::ReadsOverloaded {
                    node: self.me().name.clone(),
                    why: e.to_string(),
                })?
        };
        Ok(Response::new(200, BYTES, encode_reply(&reply)))
    }

    /// A key-sized field of an internal request: at most `--max-key` bytes.
    fn check_len(&self, field: &'static str, len: usize) -> Result<(), ApiError> {
        if len > self.cfg.max_key {
            return Err(ApiError::BadBody(format!(
                "`{field}` is {len} bytes, the limit is {}",
                self.cfg.max_key
            )));
        }
        Ok(())
    }

    /// Checks a pull from the network before it is served. A configured
    /// replica of this shard, or a node of the new shard that copies this
    /// one in a reshard (`configured`), is served and tracked. The
    /// name of any other configured node is refused (403): that node
    /// belongs to another shard, so the hosts disagree about the config.
    /// A name of no configured node, at most [`MAX_NODE_NAME`] bytes, is
    /// answered as an observer (monitoring probes use this): the primary
    /// records nothing for it, so it cannot hold back or grow anything.
    fn check_pull(&self, configured: bool, pull: &Pull) -> Result<(), ApiError> {
        if !configured {
            if pull.replica.len() > MAX_NODE_NAME {
                return Err(ApiError::BadBody(format!(
                    "replica name is {} bytes, the limit is {MAX_NODE_NAME}",
                    pull.replica.len()
                )));
            }
            if self
                .router
                .topology()
                .nodes()
                .any(|n| n.name == pull.replica)
            {
                return Err(ApiError::NotAReplica {
                    node: self.me().name.clone(),
                    name: pull.replica.clone(),
                });
            }
        }
        match &pull.kind {
            PullKind::Log { after } if after.checked_add(1).is_none() => Err(ApiError::BadBody(
                format!("`after` is {after}: no entry can follow it"),
            )),
            PullKind::Snapshot { after_key: Some(k) } => self.check_len("after_key", k.len()),
            _ => Ok(()),
        }
    }
}
