//! The HTTP API: the only module that knows URLs, parameters and status
//! codes. Turns a parsed request into a [`KvRequest`], routes it (this
//! node, an executor of this process, a remote host) and turns every
//! outcome and error into a [`Response`] in one place each.
//!
//! Per executor. Depends on `router`, `shard`, `replication`, `protocol`,
//! `topology` and `http`. Invariants: a request that arrived forwarded is
//! never forwarded again; replicas refuse writes with 403 naming the
//! primary; every data response carries `X-Shard` and `X-Served-By`.

use crate::http::client::{ClientError, ClientResponse};
use crate::http::encode::{BYTES, JSON, Response, TEXT};
use crate::http::form;
use crate::http::parse::{Method, Request};
use crate::protocol::{KvOp, KvRequest, Pull, PullKind, encode_reply};
use crate::replication::{PrimaryLog, ReplicaState, SeqWatch};
use crate::router::{ForwardError, Route, Router};
use crate::shard::{NodeStats, Shard};
use crate::storage::WriteOp;
use crate::topology::{NodeInfo, Role};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Largest accepted key, in bytes.
pub const MAX_KEY: usize = 8 * 1024;
/// Default and largest wait for `min_seq`, in milliseconds.
pub const MIN_SEQ_WAIT_MS: u64 = 2_000;
pub const MAX_MIN_SEQ_WAIT_MS: u64 = 10_000;

/// Stats of every node this process runs, for `/status`.
pub type LocalStats = Arc<Vec<(NodeInfo, Arc<NodeStats>)>>;

/// A request-level failure; [`ApiError::response`] is the one place that
/// maps these to status codes.
#[derive(Debug)]
pub enum ApiError {
    UnknownPath,
    MethodNotAllowed(&'static str),
    BadEncoding(&'static str),
    MissingParam(&'static str),
    EmptyKey,
    KeyTooLarge(usize),
    ReadOnlyReplica {
        node: String,
        primary: String,
    },
    Misdirected {
        node: String,
        shard: usize,
    },
    BadNumber(&'static str),
    Behind {
        node: String,
        applied: u64,
        wanted: u64,
        waited_ms: u64,
    },
    Storage(String),
    Owner {
        owner: String,
        error: ForwardError,
    },
}

impl ApiError {
    #[must_use]
    pub fn response(&self) -> Response {
        let (status, msg) = match self {
            Self::UnknownPath => (
                404,
                "unknown path; use /get, /set, /delete, /status or /health".to_string(),
            ),
            Self::MethodNotAllowed(allow) => {
                return Response::text(405, &format!("method not allowed; use {allow}"))
                    .with_header("Allow", (*allow).to_string());
            }
            Self::BadEncoding(what) => (400, format!("bad percent-encoding in {what}")),
            Self::MissingParam(p) => (400, format!("missing required parameter `{p}`")),
            Self::EmptyKey => (400, "empty key: `key` must be at least one byte".into()),
            Self::KeyTooLarge(n) => (
                413,
                format!("key too large: {n} bytes, the limit is {MAX_KEY}"),
            ),
            Self::ReadOnlyReplica { node, primary } => (
                403,
                format!("{node} is a read-only replica; send writes to the primary at {primary}"),
            ),
            Self::Misdirected { node, shard } => (
                421,
                format!(
                    "{node} does not own shard {shard} and does not forward forwarded requests (do all hosts use the same sharding.toml?)"
                ),
            ),
            Self::BadNumber(p) => (400, format!("parameter `{p}` must be a whole number")),
            Self::Behind {
                node,
                applied,
                wanted,
                waited_ms,
            } => (
                504,
                format!(
                    "{node} has applied seq {applied}, not yet {wanted}, after waiting {waited_ms} ms"
                ),
            ),
            Self::Storage(e) => (500, format!("storage failure: {e}")),
            Self::Owner { owner, error } => {
                let status = match error {
                    ForwardError::Remote(ClientError::Timeout) => 504,
                    ForwardError::Remote(ClientError::Connect(_) | ClientError::Resolve(_))
                    | ForwardError::PeerStopped => 503,
                    ForwardError::Remote(_) => 502,
                };
                (status, format!("owner {owner} unreachable: {error}"))
            }
        };
        Response::text(status, &msg)
    }
}

/// One node's request handler.
pub struct Api {
    router: Router,
    shard: Rc<Shard>,
    primary: Option<Rc<PrimaryLog>>,
    /// Committed (primary) or applied (replica) seq of this node.
    seq: Rc<SeqWatch>,
    local_stats: LocalStats,
    shard_header: String,
}

impl Api {
    #[must_use]
    pub fn new(
        router: Router,
        shard: Rc<Shard>,
        primary: Option<Rc<PrimaryLog>>,
        seq: Rc<SeqWatch>,
        local_stats: LocalStats,
    ) -> Self {
        let shard_header = router.me().shard.to_string();
        Self {
            router,
            shard,
            primary,
            seq,
            local_stats,
            shard_header,
        }
    }

    fn me(&self) -> &NodeInfo {
        self.router.me()
    }

    /// Answers a request from a client connection.
    pub async fn handle(&self, req: Request) -> Response {
        let result = match req.path.as_slice() {
            b"/get" | b"/set" | b"/delete" => match kv_request(&req) {
                Ok(kv) => self.dispatch(kv, req.forwarded).await,
                Err(e) => Err(e),
            },
            b"/status" => Ok(self.status()),
            b"/health" => Ok(Response::text(200, "ok")),
            b"/internal/pull" => self.internal_pull(&req).await,
            _ => Err(ApiError::UnknownPath),
        };
        result.unwrap_or_else(|e| e.response())
    }

    /// Answers a request another executor of this process forwarded here.
    pub async fn handle_forwarded(&self, kv: KvRequest) -> Response {
        self.dispatch(kv, true)
            .await
            .unwrap_or_else(|e| e.response())
    }

    async fn dispatch(&self, kv: KvRequest, forwarded: bool) -> Result<Response, ApiError> {
        let topo = self.router.topology();
        let shard = topo.shard_for(&kv.key);
        let me = self.me();
        let write = kv.op != KvOp::Get;
        if write && matches!(me.role, Role::Replica(_)) {
            return Err(ApiError::ReadOnlyReplica {
                node: me.name.clone(),
                primary: topo.primary_of(shard).address.clone(),
            });
        }
        if shard == me.shard {
            return self.execute(kv).await;
        }
        if forwarded {
            return Err(ApiError::Misdirected {
                node: me.name.clone(),
                shard,
            });
        }
        let owner = topo.primary_of(shard);
        let owner_err = |error| ApiError::Owner {
            owner: format!("{} ({})", owner.name, owner.address),
            error,
        };
        match self.router.route_to(owner) {
            Route::Local => self.execute(kv).await,
            Route::Peer(tx) => self.router.to_peer(&tx, kv).await.map_err(owner_err),
            Route::Remote(addr) => {
                let bytes = forward_request_bytes(&addr, &kv);
                let resp = self
                    .router
                    .to_remote(&addr, &bytes)
                    .await
                    .map_err(owner_err)?;
                Ok(from_remote(resp))
            }
        }
    }

    fn tag(&self, resp: Response) -> Response {
        let mut resp = resp
            .with_header("X-Shard", self.shard_header.clone())
            .with_header("X-Served-By", self.me().name.clone());
        if matches!(self.me().role, Role::Replica(_)) {
            let applied = self.shard.stats.seq.load(Ordering::Acquire);
            resp = resp.with_header("X-Applied-Seq", applied.to_string());
        }
        resp
    }

    /// Runs `kv` against this node's own store.
    async fn execute(&self, kv: KvRequest) -> Result<Response, ApiError> {
        let storage = |e: &dyn std::fmt::Display| ApiError::Storage(e.to_string());
        if kv.min_seq > 0
            && !self
                .seq
                .wait_for(kv.min_seq, Duration::from_millis(kv.wait_ms))
                .await
        {
            return Err(ApiError::Behind {
                node: self.me().name.clone(),
                applied: self.seq.get(),
                wanted: kv.min_seq,
                waited_ms: kv.wait_ms,
            });
        }
        let resp = match kv.op {
            KvOp::Get => match self.shard.get(&kv.key).map_err(|e| storage(&e))? {
                Some(v) => {
                    Response::new(200, BYTES, v.value).with_header("X-Version", v.seq.to_string())
                }
                None => Response::text(404, "key not found"),
            },
            KvOp::Set(value) => {
                let seq = self.write(WriteOp::Set { key: kv.key, value }).await?;
                Response::text(200, "OK").with_header("X-Seq", seq.to_string())
            }
            KvOp::Delete => {
                let seq = self.write(WriteOp::Delete { key: kv.key }).await?;
                Response::text(200, "OK").with_header("X-Seq", seq.to_string())
            }
        };
        Ok(self.tag(resp))
    }

    async fn write(&self, op: WriteOp) -> Result<u64, ApiError> {
        let seq = self
            .shard
            .write(op)
            .await
            .map_err(|e| ApiError::Storage(e.to_string()))?;
        self.seq.advance(seq);
        Ok(seq)
    }

    async fn internal_pull(&self, req: &Request) -> Result<Response, ApiError> {
        let Some(primary) = &self.primary else {
            return Err(ApiError::Misdirected {
                node: self.me().name.clone(),
                shard: self.me().shard,
            });
        };
        let params = form::parse_pairs(&req.query).map_err(|_| ApiError::BadEncoding("query"))?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name.as_bytes())
                .map(|(_, v)| v.clone())
        };
        let num = |name: &'static str| -> Result<u64, ApiError> {
            get(name)
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .ok_or(ApiError::MissingParam(name))
        };
        let replica = get("replica")
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .ok_or(ApiError::MissingParam("replica"))?;
        let kind = if get("snapshot").is_some() {
            PullKind::Snapshot {
                after_key: get("after_key"),
            }
        } else {
            PullKind::Log {
                after: num("after")?,
            }
        };
        let wait = Duration::from_millis(num("wait_ms").unwrap_or(0));
        let reply = primary
            .serve(Pull {
                replica,
                kind,
                wait,
            })
            .await;
        Ok(Response::new(200, BYTES, encode_reply(&reply)))
    }

    fn status(&self) -> Response {
        let mut out = String::from("{\"served_by\":");
        json_str(&mut out, &self.me().name);
        out.push_str(",\"nodes\":[");
        for (i, (node, stats)) in self.local_stats.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let seq = stats.seq.load(Ordering::Acquire);
            out.push_str("{\"name\":");
            json_str(&mut out, &node.name);
            out.push_str(",\"address\":");
            json_str(&mut out, &node.address);
            let _ = write!(
                out,
                ",\"shard\":{},\"keys\":{},\"commits\":{},\"committed_writes\":{}",
                node.shard,
                stats.keys.load(Ordering::Relaxed),
                stats.commits.load(Ordering::Relaxed),
                stats.committed_writes.load(Ordering::Relaxed),
            );
            match node.role {
                Role::Primary => {
                    let _ = write!(out, ",\"role\":\"primary\",\"committed_seq\":{seq}");
                }
                Role::Replica(_) => {
                    let primary = stats.primary_seq.load(Ordering::Relaxed);
                    let state = ReplicaState::from_code(stats.state.load(Ordering::Relaxed));
                    let _ = write!(
                        out,
                        ",\"role\":\"replica\",\"applied_seq\":{seq},\"primary_seq\":{primary},\"lag\":{},\"state\":\"{}\"",
                        primary.saturating_sub(seq),
                        state.name()
                    );
                }
            }
            out.push('}');
        }
        out.push_str("]}\n");
        Response::new(200, JSON, out.into_bytes())
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parameters of a seed endpoint: the query, plus a form body on POST/PUT.
fn kv_request(req: &Request) -> Result<KvRequest, ApiError> {
    let allow = match req.path.as_slice() {
        b"/get" => "GET, HEAD, POST",
        b"/set" => "GET, POST, PUT",
        _ => "GET, POST, DELETE",
    };
    let ok = match req.path.as_slice() {
        b"/get" => matches!(req.method, Method::Get | Method::Head | Method::Post),
        b"/set" => matches!(req.method, Method::Get | Method::Post | Method::Put),
        _ => matches!(req.method, Method::Get | Method::Post | Method::Delete),
    };
    if !ok {
        return Err(ApiError::MethodNotAllowed(allow));
    }
    let mut params = form::parse_pairs(&req.query).map_err(|_| ApiError::BadEncoding("query"))?;
    if matches!(req.method, Method::Post | Method::Put) && (req.form_body || !req.body.is_empty()) {
        params
            .extend(form::parse_pairs(&req.body).map_err(|_| ApiError::BadEncoding("form body"))?);
    }
    let mut take = |name: &str| {
        params
            .iter()
            .position(|(n, _)| n == name.as_bytes())
            .map(|i| params.swap_remove(i).1)
    };
    let key = take("key").ok_or(ApiError::MissingParam("key"))?;
    if key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if key.len() > MAX_KEY {
        return Err(ApiError::KeyTooLarge(key.len()));
    }
    let op = match req.path.as_slice() {
        b"/get" => KvOp::Get,
        b"/set" => KvOp::Set(take("value").ok_or(ApiError::MissingParam("value"))?),
        _ => KvOp::Delete,
    };
    let mut number = |name: &'static str| -> Result<Option<u64>, ApiError> {
        take(name)
            .map(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or(ApiError::BadNumber(name))
            })
            .transpose()
    };
    let min_seq = number("min_seq")?.unwrap_or(0);
    let wait_ms = number("wait_ms")?
        .unwrap_or(MIN_SEQ_WAIT_MS)
        .min(MAX_MIN_SEQ_WAIT_MS);
    Ok(KvRequest {
        op,
        key,
        min_seq,
        wait_ms,
    })
}

/// The bytes of `kv` sent to its owner on another host.
fn forward_request_bytes(addr: &str, kv: &KvRequest) -> Vec<u8> {
    let mut body = b"key=".to_vec();
    form::encode_into(&kv.key, &mut body);
    let path = match &kv.op {
        KvOp::Get => "/get",
        KvOp::Set(value) => {
            body.extend_from_slice(b"&value=");
            form::encode_into(value, &mut body);
            "/set"
        }
        KvOp::Delete => "/delete",
    };
    if kv.min_seq > 0 {
        body.extend_from_slice(
            format!("&min_seq={}&wait_ms={}", kv.min_seq, kv.wait_ms).as_bytes(),
        );
    }
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Corekv-Forwarded: 1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
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
        "Allow",
    ] {
        if let Some(v) = resp.header(name) {
            out.headers.push((name, v.to_string()));
        }
    }
    out.body = resp.body;
    out
}
