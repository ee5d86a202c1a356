//! The HTTP API: the only place that knows URLs, parameters and status
//! codes. Turns a parsed request into a [`KvRequest`], routes it (this
//! node, an executor of this process, a remote host), executes it against
//! the node's store when it is the owner, and maps every outcome and error
//! to a [`Response`] in one place each.
//!
//! Layout: `headers` says what the request header fields the API reads
//! mean (the http layer only finds them by name); `query` parses `/get`,
//! `/set`, `/delete`; `rest` parses `/v1/kv/{key}`, `/v1/batch` and
//! listings; `ops` answers `/status`,
//! `/health`, `/ready` and `/metrics`; this file holds routing, execution,
//! authorisation and the error-to-status mapping.
//!
//! Per executor. Depends on `router`, `nodestore`, `replication`, `protocol`,
//! `metrics`, `topology` and `http`. Invariants: a request that arrived
//! forwarded is never forwarded again; replicas refuse writes with 403
//! naming the primary; every data response carries `X-Shard` and
//! `X-Served-By`; reads say `Cache-Control: no-cache`, answers to writes
//! and the operational endpoints `no-store`; a full commit queue, read
//! queue or mailbox is a 503 with `Retry-After`, never a wait. Single-key
//! reads run on the executor (microseconds); listing pages are read on the
//! node's reader thread (`NodeStore::scan_prefix`), never on the executor.
//!
//! Writes and their statuses (README, "What a status means for a write"):
//! a write that fails without reaching its owner is 503 ("not applied"; a
//! full commit queue or mailbox is one of those, with `Retry-After`); one
//! whose bytes were sent and got no valid answer is 502, or 504 on a
//! timeout ("outcome unknown: may have been applied"). A write forwarded
//! over HTTP carries a deadline (the moment the forwarder stops waiting,
//! by its clock); the owner applies it only if its own clock plus
//! `--clock-skew-ms` is not past that deadline when the write's commit
//! starts, and answers 503 ("deadline passed, not applied") otherwise.
//! A write refused by a node whose store is not healthy is 507 (disk full)
//! or 503 ("not applied", both with `Retry-After`); one whose commit failed
//! and could not be checked after the store's reopen is 500 ("outcome
//! unknown"); a read while the store is being reopened is 503.

mod admin;
mod headers;
mod ops;
mod query;
pub mod reshard;
mod rest;

use crate::control::ControlClient;
use crate::http::client::{ClientError, ClientResponse, Resend};
use crate::http::encode::{BYTES, JSON, Response, TEXT};
use crate::http::parse::Request;
use crate::metrics::{Endpoint, Metrics};
use crate::nodestore::{HoldCtl, NodeStats, NodeStore, Reader, StorageHealth, StoreError};
use crate::protocol::{KvOp, KvRequest, Scan, Style, encode_kv_with_deadline, encode_scan};
use crate::replication::{PrimaryLog, SeqWatch};
use crate::router::{ForwardError, Route, Router};
use crate::storage::{Cond, Outcome, SnapshotPage, StorageError, Write, WriteOp};
use crate::topology::NodeInfo;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest accepted key by default, in bytes (`--max-key`).
pub const DEFAULT_MAX_KEY: usize = 8 * 1024;
/// Default and largest wait for `min_seq`, in milliseconds.
pub const MIN_SEQ_WAIT_MS: u64 = 2_000;
pub const MAX_MIN_SEQ_WAIT_MS: u64 = 10_000;
/// How long a node waits for another host's answer to a forwarded request
/// by default, connect included (`--forward-timeout-ms`); also the
/// deadline a forwarded write carries.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How far another host's clock may be ahead of or behind this one's by
/// default (`--clock-skew-ms`); see [`ApiConfig::clock_skew`].
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_millis(500);

/// Request limits and forwarding settings of a node's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest key in bytes (`--max-key`).
    pub max_key: usize,
    /// The largest difference assumed between this host's clock and any
    /// other host's (`--clock-skew-ms`). A forwarded write is applied only
    /// while this node's clock plus this allowance has not passed the
    /// sender's deadline, so it is never applied after the sender stopped
    /// waiting as long as the clocks differ by less than this.
    pub clock_skew: Duration,
    /// Replicas that must have applied a write before it is acknowledged
    /// (`--sync-replicas`), and how long a write waits for them.
    pub sync_replicas: usize,
    pub sync_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_key: DEFAULT_MAX_KEY,
            clock_skew: DEFAULT_CLOCK_SKEW,
            sync_replicas: 0,
            sync_timeout: Duration::from_secs(5),
        }
    }
}

/// Milliseconds since the unix epoch of `t` (0 before the epoch).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What `/status`, `/ready` and `/metrics` show: every node of this process.
pub type LocalNodes = Arc<arc_swap::ArcSwap<Vec<LocalNode>>>;

/// Hands a reshard's new layout (TOML text) to the process's main thread,
/// which starts the new nodes and answers on the returned channel (`None`:
/// the process is shutting down).
pub type Prepare = Arc<dyn Fn(String) -> Option<flume::Receiver<Result<(), String>>> + Send + Sync>;

/// A node of this process with its counters.
pub type LocalNode = (NodeInfo, Arc<NodeStats>, Arc<Metrics>);

/// A request-level failure; [`ApiError::response`] is the one place that
/// maps these to status codes.
#[derive(Debug)]
pub enum ApiError {
    UnknownPath,
    MethodNotAllowed(&'static str),
    BadEncoding(&'static str),
    MissingParam(&'static str),
    BadParam(&'static str, &'static str),
    EmptyKey,
    KeyTooLarge {
        len: usize,
        max: usize,
    },
    TooManyOps(usize),
    BadBody(String),
    /// A switchover (`/admin/promote`) failed or is not possible.
    /// A reshard step that cannot be taken (`status`, `why`).
    Reshard {
        status: u16,
        why: String,
    },
    Switchover {
        status: u16,
        why: String,
    },
    Unauthorized,
    Forbidden,
    ReadOnlyReplica {
        node: String,
        shard: usize,
        /// The current primary's address; `None` during an election.
        primary: Option<String>,
    },
    /// No primary is known for `shard` (an election is under way), or a
    /// write forwarded here found that this node is no longer the primary,
    /// or the committer refused it for that reason: not applied, 503 +
    /// `Retry-After`.
    NoPrimary {
        node: String,
        shard: usize,
        why: &'static str,
    },
    /// Committed on a primary whose lease ran out during the commit.
    LeaseLost {
        node: String,
    },
    /// Committed on the primary as `seq`, but fewer than `wanted`
    /// replicas applied it in time (`--sync-replicas`): 504, unknown.
    NotReplicated {
        node: String,
        seq: u64,
        wanted: usize,
    },
    Misdirected {
        node: String,
        shard: usize,
    },
    /// A reshard moved the key away from this node's shard as its write
    /// waited: not applied (normally routed again, see `dispatch_via`).
    Moved {
        node: String,
    },
    Behind {
        node: String,
        applied: u64,
        wanted: u64,
        waited_ms: u64,
    },
    Storage(String),
    /// A forwarded write reached the point of being applied after its
    /// sender's deadline (less the clock-skew allowance); not applied.
    DeadlinePassed {
        node: String,
        late_ms: u128,
    },
    /// The owner of the key's shard did not answer; `write` says whether
    /// the request was a write (its status then says if it may have been
    /// applied).
    Owner {
        owner: String,
        error: ForwardError,
        write: bool,
    },
    /// A bounded queue on the way to the disk was full: 503 + `Retry-After`.
    Overloaded {
        node: String,
        why: String,
    },
    /// A node's read queue (listings, replication pulls) was full: 503 +
    /// `Retry-After`.
    ReadsOverloaded {
        node: String,
        why: String,
    },
    /// An internal pull under the name of a configured node that is not a
    /// replica of this shard (the hosts disagree about `sharding.toml`).
    NotAReplica {
        node: String,
        name: String,
    },
    /// The node's store is not healthy and the write was not applied:
    /// 507 when its disk is full (`no_space`), else 503; both with
    /// `Retry-After`.
    StorageRefused {
        node: String,
        why: String,
        no_space: bool,
    },
    /// A read found the node's store closed while it is reopened: 503 +
    /// `Retry-After`.
    StorageReopening {
        node: String,
    },
    /// A write's commit failed and the store could not be reopened to
    /// check whether it reached the disk: 500, outcome unknown.
    OutcomeUnknown {
        node: String,
        why: String,
    },
}

/// How long a request whose owner moved during a reshard is routed again
/// (see `Api::dispatch_via`), and the pause before asking a remote owner
/// again.
const REROUTE_FOR: Duration = Duration::from_secs(1);
const REROUTE_PAUSE: Duration = Duration::from_millis(5);

/// Seconds a client is asked to wait (`Retry-After`) when a node is
/// overloaded.
pub const RETRY_AFTER_SECS: u32 = 1;

fn overloaded(msg: &str) -> Response {
    Response::text(503, msg).with_header("Retry-After", RETRY_AFTER_SECS.to_string())
}

impl ApiError {
    #[must_use]
    #[expect(
        clippy::too_many_lines,
        reason = "one arm per error: the single place errors become statuses"
    )]
    pub fn response(&self) -> Response {
        let (status, msg) = match self {
            Self::UnknownPath => (
                404,
                "unknown path; see README.md for the endpoints (/get, /set, /delete, /v1/kv/KEY, /status, ...)".to_string(),
            ),
            Self::MethodNotAllowed(allow) => {
                return Response::text(405, &format!("method not allowed; use {allow}"))
                    .with_header("Allow", (*allow).to_string());
            }
            Self::BadEncoding(what) => (400, format!("bad percent-encoding in {what}")),
            Self::MissingParam(p) => (400, format!("missing required parameter `{p}`")),
            Self::BadParam(p, why) => (400, format!("bad `{p}`: {why}")),
            Self::EmptyKey => (400, "empty key: a key must be at least one byte".into()),
            Self::KeyTooLarge { len, max } => (
                413,
                format!("key too large: {len} bytes, the limit is {max} (--max-key)"),
            ),
            Self::TooManyOps(n) => (
                413,
                format!("batch too large: {n} operations, the limit is {}", rest::MAX_BATCH_OPS),
            ),
            Self::BadBody(why) => (400, format!("bad request body: {why}")),
            Self::Switchover { status, why } => (*status, format!("switchover: {why}")),
            Self::Reshard { status, why } => (*status, format!("reshard: {why}")),
            Self::Unauthorized => {
                return Response::text(401, "this request needs a token: send `Authorization: Bearer <token>`")
                    .with_header("WWW-Authenticate", "Bearer".to_string());
            }
            Self::Forbidden => (403, "wrong token".into()),
            Self::ReadOnlyReplica {
                node,
                shard,
                primary,
            } => {
                let primary = primary.as_deref().unwrap_or("(none known: an election is under way)");
                return Response::text(
                    403,
                    &format!(
                        "{node} is a read-only replica; send writes to the primary at {primary}"
                    ),
                )
                .with_header("X-Shard", *shard)
                .with_header("X-Served-By", node.clone());
            }
            Self::Moved { node } => {
                return overloaded(&format!(
                    "{node}: a reshard moved the key to another shard while the write waited; not applied, retry"
                ));
            }
            Self::Misdirected { node, shard } => (
                421,
                format!(
                    "{node} does not own shard {shard} and does not forward forwarded requests (do all hosts use the same sharding.toml?)"
                ),
            ),
            Self::Behind {
                node,
                applied,
                wanted,
                waited_ms,
            } => (
                504,
                format!("{node} has applied seq {applied}, not yet {wanted}, after waiting {waited_ms} ms"),
            ),
            Self::Storage(e) => (500, format!("storage failure: {e}")),
            Self::DeadlinePassed { node, late_ms } => (
                503,
                format!(
                    "deadline passed, not applied: this forwarded write reached {node} {late_ms} ms after its sender's deadline (less the clock-skew allowance); the sender has stopped waiting for it"
                ),
            ),
            Self::Owner {
                owner,
                error,
                write,
            } => {
                let outcome = if !write {
                    ""
                } else if error.is_unsent() {
                    "; the write was not applied"
                } else {
                    "; outcome unknown: the write may have been applied (read the key back, or retry with If-Match / If-None-Match)"
                };
                if matches!(error, ForwardError::PeerBusy) {
                    // Nothing was sent: "not applied", and worth a retry.
                    return overloaded(&format!(
                        "node {owner} is overloaded, retry later: {error}{outcome}"
                    ));
                }
                let (status, what) = if error.is_unsent() {
                    (503, "unreachable")
                } else if matches!(error, ForwardError::Remote(ClientError::Timeout)) {
                    (504, "did not answer in time")
                } else {
                    (502, "failed to answer")
                };
                (status, format!("owner {owner} {what}: {error}{outcome}"))
            }
            // Only writes are refused this way, before they were queued.
            Self::Overloaded { node, why } => {
                return overloaded(&format!(
                    "node {node} is overloaded, retry later: {why}; the write was not applied"
                ));
            }
            Self::ReadsOverloaded { node, why } => {
                return overloaded(&format!("node {node} is overloaded, retry later: {why}"));
            }
            Self::StorageRefused {
                node,
                why,
                no_space,
            } => {
                let status = if *no_space { 507 } else { 503 };
                return Response::text(
                    status,
                    &format!("{node} cannot write now: {why}; the write was not applied"),
                )
                .with_header("Retry-After", RETRY_AFTER_SECS.to_string());
            }
            Self::StorageReopening { node } => {
                return overloaded(&format!(
                    "{node}'s storage is being reopened after a failure, retry later"
                ));
            }
            Self::NoPrimary { node, shard, why } => {
                return overloaded(&format!(
                    "{node}: no primary for shard {shard} now ({why}); the write was not applied, retry shortly"
                ))
                .with_header("X-Shard", *shard);
            }
            Self::NotReplicated { node, seq, wanted } => (
                504,
                format!(
                    "{node} committed the write as seq {seq} but {wanted} replica(s) did not apply it in time (--sync-replicas); outcome unknown: the write may have been applied, and may be lost if the primary fails now"
                ),
            ),
            Self::LeaseLost { node } => (
                504,
                format!(
                    "{node} committed the write but its lease ran out during the commit (a new primary may be taking over without it); outcome unknown: the write may have been applied"
                ),
            ),
            Self::OutcomeUnknown { node, why } => (
                500,
                format!(
                    "storage failure on {node}: {why}; outcome unknown: the write may have been applied (read the key back, or retry with If-Match / If-None-Match)"
                ),
            ),
            Self::NotAReplica { node, name } => (
                403,
                format!(
                    "{name:?} is a configured node but not a replica of {node}'s shard (do all hosts use the same sharding.toml?)"
                ),
            ),
        };
        Response::text(status, &msg)
    }
}

/// What executing a request against the owner's store produced.
enum Executed {
    Value {
        value: Vec<u8>,
        version: u64,
    },
    NotFound,
    /// A conditional read whose `If-None-Match` matched the version.
    NotModified {
        version: u64,
    },
    Written {
        seq: u64,
    },
    ConditionFailed {
        current: Option<u64>,
    },
}

/// One node's request handler.
pub struct Api {
    router: Router,
    shard: Rc<NodeStore>,
    /// The control plane's client (`--etcd`), for `/admin/promote` and its
    /// status in `/status`, `/ready` and `/metrics`.
    control: Option<ControlClient>,
    /// This node's log while it is its shard's primary (set and cleared by
    /// the executor's role task as the role moves).
    primary: RefCell<Option<Rc<PrimaryLog>>>,
    /// Committed (primary) or applied (replica) seq of this node.
    seq: Rc<SeqWatch>,
    locals: LocalNodes,
    metrics: Arc<Metrics>,
    token: Option<Arc<str>>,
    cfg: ApiConfig,
    /// Asks the process to start a reshard's new nodes (main thread).
    prepare: Option<Prepare>,
    /// While this primary's writes are held for a reshard's cutover: the
    /// committer's control channel (see `reshard`).
    hold: RefCell<Option<flume::Sender<HoldCtl>>>,
}

impl Api {
    #[must_use]
    pub fn new(
        router: Router,
        shard: Rc<NodeStore>,
        seq: Rc<SeqWatch>,
        locals: LocalNodes,
        token: Option<Arc<str>>,
        cfg: ApiConfig,
    ) -> Self {
        let me = router.me().id;
        let metrics = locals
            .load()
            .iter()
            .find(|(n, _, _)| n.id == me)
            .map_or_else(|| Arc::new(Metrics::default()), |(_, _, m)| m.clone());
        Self {
            router,
            shard,
            primary: RefCell::new(None),
            control: None,
            seq,
            locals,
            metrics,
            token,
            cfg,
            prepare: None,
            hold: RefCell::new(None),
        }
    }

    /// Attaches the way to ask the process to start a reshard's nodes.
    #[must_use]
    pub fn with_prepare(mut self, prepare: Prepare) -> Self {
        self.prepare = Some(prepare);
        self
    }

    /// Attaches the control plane's client (`--etcd`).
    #[must_use]
    pub fn with_control(mut self, control: Option<ControlClient>) -> Self {
        self.control = control;
        self
    }

    /// This node's primary log, while it is the primary.
    #[must_use]
    pub fn primary_log(&self) -> Option<Rc<PrimaryLog>> {
        self.primary.borrow().clone()
    }

    /// Sets (promotion) or clears (the role moved away) the primary log.
    pub fn set_primary_log(&self, log: Option<Rc<PrimaryLog>>) {
        *self.primary.borrow_mut() = log;
    }

    fn me(&self) -> &NodeInfo {
        self.router.me()
    }

    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers a request from a client connection and counts it.
    pub async fn handle(self: &Rc<Self>, req: Request) -> Response {
        let started = Instant::now();
        let (endpoint, result) = self.route_path(req).await;
        let resp = result.unwrap_or_else(|e| e.response());
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.metrics.record(endpoint, resp.status, micros);
        resp
    }

    async fn route_path(self: &Rc<Self>, req: Request) -> (Endpoint, Result<Response, ApiError>) {
        match req.path() {
            b"/get" | b"/set" | b"/delete" => {
                let endpoint = match req.path() {
                    b"/get" => Endpoint::Get,
                    b"/set" => Endpoint::Set,
                    _ => Endpoint::Delete,
                };
                let result = match query::parse(&req, self.cfg.max_key) {
                    Ok(kv) => self.authorized_kv(&req, kv).await,
                    Err(e) => Err(e),
                };
                (endpoint, result)
            }
            b"/v1/batch" => (Endpoint::Batch, Box::pin(self.batch(&req)).await),
            b"/v1/kv" => (Endpoint::List, Box::pin(self.list(&req)).await),
            p if p.starts_with(b"/v1/kv/") => {
                let result = match rest::parse_kv(&req, self.cfg.max_key) {
                    Ok(kv) => self.authorized_kv(&req, kv).await,
                    Err(e) => Err(e),
                };
                (Endpoint::Kv, result)
            }
            b"/status" => (Endpoint::Status, Ok(no_store(self.status()))),
            b"/admin/promote" => (
                Endpoint::Admin,
                Box::pin(self.promote(&req)).await.map(no_store),
            ),
            p if p == b"/admin/reshard" || p.starts_with(b"/admin/reshard/") => (
                Endpoint::Admin,
                Box::pin(self.reshard(&req)).await.map(no_store),
            ),
            b"/metrics" => (Endpoint::Metrics, Ok(no_store(self.metrics_text()))),
            b"/health" => (Endpoint::Health, Ok(no_store(Response::text(200, "ok")))),
            b"/ready" => (Endpoint::Ready, Ok(no_store(self.ready()))),
            // Every /internal/ path, known or not, checks the token first.
            p if p.starts_with(b"/internal/") => {
                (Endpoint::Internal, Box::pin(self.internal(&req)).await)
            }
            _ => (Endpoint::Other, Err(ApiError::UnknownPath)),
        }
    }

    /// Checks the shared token, when one is configured.
    fn authorize(&self, req: &Request) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let Some(given) = headers::credentials(req) else {
            return Err(ApiError::Unauthorized);
        };
        if constant_time_eq(given, token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    async fn authorized_kv(&self, req: &Request, kv: KvRequest) -> Result<Response, ApiError> {
        if kv.op != KvOp::Get {
            self.authorize(req)?;
        }
        self.dispatch(kv, headers::forwarded(req), None).await
    }

    /// Answers a request another executor of this process forwarded here.
    pub async fn handle_forwarded(&self, kv: KvRequest) -> Response {
        self.dispatch_via(kv, true, None, true)
            .await
            .unwrap_or_else(|e| e.response())
    }

    /// Serves `kv` here or sends it to its owner. `forwarded`: it came from
    /// another node (never forwarded again); `deadline_ms`: the sender's
    /// deadline of a write forwarded over HTTP.
    async fn dispatch(
        &self,
        kv: KvRequest,
        forwarded: bool,
        deadline_ms: Option<u64>,
    ) -> Result<Response, ApiError> {
        self.dispatch_via(kv, forwarded, deadline_ms, false).await
    }

    /// [`Api::dispatch`], which during a reshard routes a request once more
    /// when the key's owner moved under it: a write this node's committer
    /// refused because the key moved (a write held through a cutover), or,
    /// with `same_layout` (another executor of this process sent it, by the
    /// same layout, a moment before it changed), a request for a key this
    /// node no longer owns. Across processes a misdirected request stays an
    /// error: two views of the layout could send it back and forth.
    async fn dispatch_via(
        &self,
        kv: KvRequest,
        forwarded: bool,
        deadline_ms: Option<u64>,
        same_layout: bool,
    ) -> Result<Response, ApiError> {
        // One read of the placement for the common case.
        let (shard, resharding) = self.router.layout().owner_and_resharding(&kv.key);
        if !resharding {
            return self.dispatch_once(kv, shard, forwarded, deadline_ms).await;
        }
        // Boxed: the common case above keeps its future small.
        Box::pin(self.dispatch_rerouting(kv, shard, forwarded, deadline_ms, same_layout)).await
    }

    /// [`Api::dispatch_via`] while a reshard runs: routes once more while
    /// the key's owner moves.
    async fn dispatch_rerouting(
        &self,
        kv: KvRequest,
        shard: usize,
        forwarded: bool,
        deadline_ms: Option<u64>,
        same_layout: bool,
    ) -> Result<Response, ApiError> {
        let again = kv.clone();
        let mut result = self.dispatch_once(kv, shard, forwarded, deadline_ms).await;
        let until = Instant::now() + REROUTE_FOR;
        loop {
            let wait = match &result {
                Err(ApiError::Moved { .. }) => false,
                Err(ApiError::Misdirected { .. }) if same_layout => false,
                // The new owner on another host has not heard of the split
                // yet (it hears right after the commit point): nothing was
                // applied there; ask again in a moment.
                Ok(resp) if resp.status == 421 => true,
                _ => return result,
            };
            if Instant::now() >= until {
                return result;
            }
            if wait {
                self.tell_split(&again.key).await;
                glommio::timer::sleep(REROUTE_PAUSE).await;
            }
            let shard = self.router.layout().owner(&again.key);
            result = self.dispatch_once(again.clone(), shard, false, None).await;
        }
    }

    /// A remote owner answered 421 for `key`, which this process places on
    /// a new shard whose pair split: that process missed the split (it was
    /// down when the command announced it, say); tell it, as the command
    /// does (idempotent), so it serves the key instead of refusing it until
    /// the command is re-run.
    async fn tell_split(&self, key: &[u8]) {
        let placement = self.router.layout().placement();
        let owner = placement.owner(key);
        let Some(pair) = placement.pair_of_new(owner) else {
            return;
        };
        let Some(node) = self.router.primary_of(owner) else {
            return;
        };
        if let Route::Remote(addr) = self.router.route_to(node) {
            let path = format!("/admin/reshard/split?pair={pair}");
            let deadline = Instant::now() + REROUTE_FOR;
            let _ = self
                .router
                .to_remote(&addr, path.as_bytes(), b"", deadline, Resend::Idempotent)
                .await;
        }
    }

    /// Serves `kv`, owned by `shard` now, here or sends it to its owner.
    async fn dispatch_once(
        &self,
        kv: KvRequest,
        shard: usize,
        forwarded: bool,
        deadline_ms: Option<u64>,
    ) -> Result<Response, ApiError> {
        let me = self.me();
        let write = kv.op != KvOp::Get;
        if write && !self.router.is_primary() {
            if forwarded {
                // The sender thought this node was the primary: the role
                // moved (or is moving); it retries with the new one.
                return Err(ApiError::NoPrimary {
                    node: me.name.clone(),
                    shard,
                    why: "this node is not the primary any more",
                });
            }
            return Err(ApiError::ReadOnlyReplica {
                node: me.name.clone(),
                shard: me.shard,
                primary: self.router.primary_of(shard).map(|p| p.address.clone()),
            });
        }
        if shard == me.shard {
            return self.execute(kv, deadline_ms).await;
        }
        if forwarded {
            return Err(ApiError::Misdirected {
                node: me.name.clone(),
                shard,
            });
        }
        let owner = self.router.primary_of(shard).ok_or(ApiError::NoPrimary {
            node: me.name.clone(),
            shard,
            why: "an election is under way",
        })?;
        let owner_err = |error| ApiError::Owner {
            owner: format!("{} ({})", owner.name, owner.address),
            error,
            write,
        };
        match self.router.route_to(owner) {
            Route::Local => self.execute(kv, None).await,
            Route::Peer(tx) => {
                self.metrics.forwarded_peer.fetch_add(1, Ordering::Relaxed);
                // Only a plain read asks for the reader (which also schedules
                // the sweep of its snapshot); writes never open one.
                let plain_read = kv.op == KvOp::Get && kv.min_seq == 0;
                match plain_read.then(|| self.router.peer_reader(owner)).flatten() {
                    Some(reader) => read(&reader, &kv, owner, None),
                    None => self.router.to_peer(&tx, kv).await.map_err(owner_err),
                }
            }
            Route::Remote(addr) => {
                self.metrics
                    .forwarded_remote
                    .fetch_add(1, Ordering::Relaxed);
                let mut budget = self.router.remote_timeout();
                let (wall_deadline, resend) = if write {
                    // The wall clock is read before the deadline this node
                    // keeps, so the owner's deadline is never the later one.
                    (Some(unix_ms(SystemTime::now() + budget)), Resend::IfUnsent)
                } else {
                    budget += Duration::from_millis(kv.wait_ms);
                    (None, Resend::Idempotent)
                };
                let deadline = Instant::now() + budget;
                let body = encode_kv_with_deadline(&kv, wall_deadline);
                let resp = Box::pin(self.router.to_remote(
                    &addr,
                    b"/internal/kv",
                    &body,
                    deadline,
                    resend,
                ))
                .await
                .map_err(owner_err)?;
                Ok(from_remote(resp))
            }
        }
    }

    /// Runs `kv` against this node's own store and formats the answer; a
    /// write with a `deadline_ms` (its sender's, unix milliseconds) is
    /// applied only if its commit starts before that deadline less the
    /// clock-skew allowance.
    async fn execute(&self, kv: KvRequest, deadline_ms: Option<u64>) -> Result<Response, ApiError> {
        // `wait_ms` of a request forwarded from another host is not capped
        // by the parser: cap it here.
        let wait_ms = kv.wait_ms.min(MAX_MIN_SEQ_WAIT_MS);
        if kv.min_seq > 0
            && !self
                .seq
                .wait_for(kv.min_seq, Duration::from_millis(wait_ms))
                .await
        {
            return Err(ApiError::Behind {
                node: self.me().name.clone(),
                applied: self.seq.get(),
                wanted: kv.min_seq,
                waited_ms: wait_ms,
            });
        }
        let style = kv.style;
        let (op, is_delete) = match kv.op {
            KvOp::Get => return self.read_local(&kv),
            KvOp::Set(value) => (WriteOp::Set { key: kv.key, value }, false),
            KvOp::Delete => (WriteOp::Delete { key: kv.key }, true),
        };
        // The sender's deadline, moved earlier by the clock-skew allowance.
        let apply_by = deadline_ms
            .map(|d| UNIX_EPOCH + Duration::from_millis(d).saturating_sub(self.cfg.clock_skew));
        let executed = Box::pin(self.write(op, kv.cond, apply_by)).await?;
        // `/set` and `/delete` also answer GET: no cache may store the
        // answer (and skip the write next time).
        Ok(self.tag(no_store(format(style, is_delete, executed))))
    }

    /// A read of this node's own store (never waits).
    fn read_local(&self, kv: &KvRequest) -> Result<Response, ApiError> {
        let applied = (!self.router.is_primary()).then(|| self.seq.get());
        read(self.shard.reader(), kv, self.me(), applied)
    }

    async fn write(
        &self,
        op: WriteOp,
        cond: Cond,
        apply_by: Option<SystemTime>,
    ) -> Result<Executed, ApiError> {
        let outcome = self.shard.write(Write { op, cond }, apply_by).await;
        // Whatever the answer, the committer may have published a new seq
        // (a batch committed as the lease ran out is in the store, and the
        // replicas' long polls must hear of it now, not at their timeout).
        self.seq.notify();
        let outcome = outcome.map_err(|e| match e {
            StoreError::DeadlinePassed { late } => ApiError::DeadlinePassed {
                node: self.me().name.clone(),
                late_ms: late.as_millis(),
            },
            StoreError::Overloaded { .. } => ApiError::Overloaded {
                node: self.me().name.clone(),
                why: e.to_string(),
            },
            StoreError::Unavailable { health, .. } => ApiError::StorageRefused {
                node: self.me().name.clone(),
                why: e.to_string(),
                no_space: health == StorageHealth::NoSpace,
            },
            StoreError::NotPrimary => ApiError::NoPrimary {
                node: self.me().name.clone(),
                shard: self.me().shard,
                why: "this node is not the primary with a valid lease",
            },
            StoreError::LeaseLost => ApiError::LeaseLost {
                node: self.me().name.clone(),
            },
            StoreError::Moved => ApiError::Moved {
                node: self.me().name.clone(),
            },
            StoreError::OutcomeUnknown { .. } => ApiError::OutcomeUnknown {
                node: self.me().name.clone(),
                why: e.to_string(),
            },
            other => ApiError::Storage(other.to_string()),
        })?;
        Ok(match outcome {
            Outcome::Committed(seq) => {
                self.replicated(seq).await?;
                // The committer checked the lease right after the commit;
                // this task may run much later (the process was stopped, or
                // the executor was busy): a 200 must not leave a node whose
                // lease has run out meanwhile, since a new primary may
                // already be writing without this write.
                if self.shard.fence().writable_epoch().is_none() {
                    return Err(ApiError::LeaseLost {
                        node: self.me().name.clone(),
                    });
                }
                Executed::Written { seq }
            }
            Outcome::ConditionFailed { current } => Executed::ConditionFailed { current },
        })
    }

    /// With `--sync-replicas N`: waits until N replicas have applied `seq`.
    async fn replicated(&self, seq: u64) -> Result<(), ApiError> {
        if self.cfg.sync_replicas == 0 {
            return Ok(());
        }
        let log = self.primary_log();
        let done = match log {
            Some(log) => log.replicated(seq, self.cfg.sync_timeout).await,
            None => false,
        };
        if done {
            Ok(())
        } else {
            Err(ApiError::NotReplicated {
                node: self.me().name.clone(),
                seq,
                wanted: self.cfg.sync_replicas,
            })
        }
    }

    fn tag(&self, resp: Response) -> Response {
        let applied = (!self.router.is_primary()).then(|| self.seq.get());
        tag(resp, self.me(), applied)
    }

    /// One page of keys with `prefix` after `after` from `shard`'s primary.
    async fn scan_shard(&self, shard: usize, scan: Scan) -> Result<SnapshotPage, ApiError> {
        let owner = self.router.primary_of(shard).ok_or(ApiError::NoPrimary {
            node: self.me().name.clone(),
            shard,
            why: "an election is under way",
        })?;
        let owner_err = |error| ApiError::Owner {
            owner: format!("{} ({})", owner.name, owner.address),
            error,
            write: false,
        };
        match self.router.route_to(owner) {
            Route::Local => self.scan_local(scan).await,
            Route::Peer(tx) => self
                .router
                .scan_peer(&tx, scan)
                .await
                .map_err(owner_err)?
                .map_err(|e| scan_error(&owner.name, e)),
            Route::Remote(addr) => {
                let deadline = Instant::now() + self.router.remote_timeout();
                let resp = self
                    .router
                    .to_remote(
                        &addr,
                        b"/internal/scan",
                        &encode_scan(&scan),
                        deadline,
                        Resend::Idempotent,
                    )
                    .await
                    .map_err(owner_err)?;
                rest::decode_scan_reply(&resp, &owner.name)
            }
        }
    }

    /// Scans this node's own store (primaries only) on the node's reader
    /// thread: the executor awaits the page, it never reads it.
    ///
    /// # Errors
    /// Storage failures; a full read queue ([`StoreError::ReadsOverloaded`]).
    pub async fn scan_page(&self, scan: Scan) -> Result<SnapshotPage, StoreError> {
        self.shard
            .scan_prefix(scan.prefix, scan.after, scan.limit)
            .await
    }

    /// [`Api::scan_page`] with its failure as a request error (503 with
    /// `Retry-After` for a full read queue, 500 for storage).
    ///
    /// # Errors
    /// Storage failures; a full read queue.
    pub async fn scan_local(&self, scan: Scan) -> Result<SnapshotPage, ApiError> {
        self.scan_page(scan)
            .await
            .map_err(|e| scan_error(&self.me().name, e))
    }
}

/// A failed page read of `node` as a request error.
fn scan_error(node: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::ReadsOverloaded { .. } => ApiError::ReadsOverloaded {
            node: node.to_string(),
            why: e.to_string(),
        },
        StoreError::Storage(e) => read_error(node, &e),
        other => ApiError::Storage(other.to_string()),
    }
}

/// A failed read of `node`'s store as a request error: 503 while the
/// store is closed for a reopen, 500 otherwise.
fn read_error(node: &str, e: &StorageError) -> ApiError {
    match e {
        StorageError::Reopening => ApiError::StorageReopening {
            node: node.to_string(),
        },
        other => ApiError::Storage(other.to_string()),
    }
}

/// A read of `node`'s store through `reader` (never waits). `applied` is a
/// replica's applied seq, for `X-Applied-Seq`.
fn read(
    reader: &Reader,
    kv: &KvRequest,
    node: &NodeInfo,
    applied: Option<u64>,
) -> Result<Response, ApiError> {
    let executed = match reader
        .get(&kv.key)
        .map_err(|e| read_error(&node.name, &e))?
    {
        // Preconditions are ignored when the answer would be a 404 (RFC
        // 9110 §13.2.1); otherwise If-Match first (412), then If-None-Match
        // (304), RFC 9110 §13.2.2.
        None => Executed::NotFound,
        Some(v) => {
            let current = Some(v.seq);
            let (if_match, if_none_match) = match &kv.cond {
                Cond::Http {
                    if_match,
                    if_none_match,
                } => (if_match.as_ref(), if_none_match.as_ref()),
                _ => (None, None),
            };
            if if_match.is_some_and(|t| !t.matches(current)) {
                Executed::ConditionFailed { current }
            } else if if_none_match.is_some_and(|t| t.matches(current)) {
                Executed::NotModified { version: v.seq }
            } else {
                Executed::Value {
                    value: v.value,
                    version: v.seq,
                }
            }
        }
    };
    Ok(tag(format(kv.style, false, executed), node, applied))
}

/// Says who served a data response: `X-Shard`, `X-Served-By` and, on a
/// replica, `X-Applied-Seq`.
fn tag(resp: Response, node: &NodeInfo, applied: Option<u64>) -> Response {
    let resp = resp
        .with_header("X-Shard", node.shard)
        .with_header("X-Served-By", node.name.clone());
    match applied {
        Some(seq) => resp.with_header("X-Applied-Seq", seq),
        None => resp,
    }
}

/// Marks an answer that no cache may store (RFC 9111 §5.2.2.5): the
/// operational endpoints and the answers to writes, which GET requests
/// would otherwise let a cache store and reuse heuristically.
fn no_store(resp: Response) -> Response {
    resp.with_header("Cache-Control", "no-store")
}

/// `Cache-Control` of data reads: caches may store them but must
/// revalidate before reuse (RFC 9111 §5.2.2.4); a value changes at any time.
const READ_CACHE_CONTROL: &str = "no-cache";

/// Formats an execution result in the style of the API it came in on.
fn format(style: Style, is_delete: bool, executed: Executed) -> Response {
    let etag = |v: u64| format!("\"{v}\"");
    match (style, executed) {
        (Style::Query, Executed::Value { value, version }) => Response::new(200, BYTES, value)
            .with_header("X-Version", version)
            .with_header("Cache-Control", READ_CACHE_CONTROL),
        (Style::Rest, Executed::Value { value, version }) => Response::new(200, BYTES, value)
            .with_header("ETag", etag(version))
            .with_header("X-Version", version)
            .with_header("Cache-Control", READ_CACHE_CONTROL),
        // Only reads find nothing.
        (_, Executed::NotFound) => {
            Response::text(404, "key not found").with_header("Cache-Control", READ_CACHE_CONTROL)
        }
        (Style::Rest, Executed::Written { seq }) if is_delete => {
            Response::new(204, TEXT, Vec::new()).with_header("X-Seq", seq)
        }
        (Style::Query, Executed::Written { seq }) => {
            Response::text(200, "OK").with_header("X-Seq", seq)
        }
        (Style::Rest, Executed::Written { seq }) => Response::text(200, "OK")
            .with_header("ETag", etag(seq))
            .with_header("X-Seq", seq),
        // A 304 repeats the ETag and Cache-Control of the 200 (RFC 9110
        // §15.4.5); it has no content, so no Content-Type either.
        (_, Executed::NotModified { version }) => Response::new(304, TEXT, Vec::new())
            .with_header("ETag", etag(version))
            .with_header("X-Version", version)
            .with_header("Cache-Control", READ_CACHE_CONTROL),
        (_, Executed::ConditionFailed { current }) => {
            let msg = match current {
                Some(v) => format!("precondition failed: the key's current version is {v}"),
                None => "precondition failed: the key does not exist".to_string(),
            };
            let resp = Response::text(412, &msg);
            match current {
                Some(v) => resp.with_header("ETag", etag(v)),
                None => resp,
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Passes a remote owner's answer through: status, body and our headers.
fn from_remote(resp: ClientResponse) -> Response {
    let content_type = match resp.header("content-type") {
        Some(t) if t.starts_with("application/octet-stream") => BYTES,
        Some(t) if t.starts_with("application/json") => JSON,
        _ => TEXT,
    };
    let mut out = Response::new(resp.status, content_type, Vec::new());
    for name in [
        "X-Shard",
        "X-Served-By",
        "X-Seq",
        "X-Version",
        "X-Applied-Seq",
        "ETag",
        "Cache-Control",
        "Allow",
        "WWW-Authenticate",
        "Retry-After",
    ] {
        if let Some(v) = resp.header(name) {
            out.headers.push((name, v.to_string().into()));
        }
    }
    out.body = resp.body;
    out
}
