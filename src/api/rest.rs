//! The RESTful API beside the query-string endpoints: `/v1/kv/{key}` (GET, HEAD,
//! PUT, DELETE with raw bodies, ETags and conditional requests, whose
//! headers `headers` reads),
//! `POST /v1/batch` (many keys in one request) and `GET /v1/kv?prefix=`
//! (a listing across all shards with a limit and a cursor).
//!
//! Depends on the parent module's routing and on `serde_json` for the batch
//! and listing bodies.

use super::headers;
use super::query::{check_key, read_wait, take_param};
use super::{Api, ApiError};
use crate::http::client::ClientResponse;
use crate::http::encode::{JSON, Response};
use crate::http::form;
use crate::http::parse::{Method, Request};
use crate::protocol::{KvOp, KvRequest, PullReply, Scan, Style, decode_reply};
use crate::storage::{Cond, SnapshotPage};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::rc::Rc;

/// Most operations in one batch.
pub const MAX_BATCH_OPS: usize = 1000;
/// Default and largest page of a listing.
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;

/// `/v1/kv/{key}`.
pub(super) fn parse_kv(req: &Request, max_key: usize) -> Result<KvRequest, ApiError> {
    let raw_key = &req.path()[b"/v1/kv/".len()..];
    let key = form::decode_path(raw_key).map_err(|_| ApiError::BadEncoding("path"))?;
    let key = check_key(key, max_key)?;
    let op = match req.method {
        Method::Get | Method::Head => KvOp::Get,
        Method::Put => KvOp::Set(req.body().to_vec()),
        Method::Delete => KvOp::Delete,
        _ => return Err(ApiError::MethodNotAllowed("GET, HEAD, PUT, DELETE")),
    };
    let cond = headers::condition(req)?;
    let mut params = form::parse_pairs(req.query()).map_err(|_| ApiError::BadEncoding("query"))?;
    let mut take = |name: &str| take_param(&mut params, name);
    let (min_seq, wait_ms) = read_wait(&mut take)?;
    Ok(KvRequest {
        op,
        key,
        min_seq,
        wait_ms,
        cond,
        style: Style::Rest,
    })
}

pub(super) fn decode_scan_reply(
    resp: &ClientResponse,
    owner: &str,
) -> Result<SnapshotPage, ApiError> {
    if resp.status == 503 && resp.header("retry-after").is_some() {
        // The remote owner's read queue (or mailbox) was full.
        return Err(ApiError::ReadsOverloaded {
            node: owner.to_string(),
            why: format!(
                "it answered: {}",
                String::from_utf8_lossy(&resp.body).trim()
            ),
        });
    }
    if resp.status != 200 {
        return Err(ApiError::Storage(format!(
            "remote scan answered {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body).trim()
        )));
    }
    match decode_reply(&resp.body) {
        Ok(PullReply::Snapshot { pairs, .. }) => Ok(pairs),
        Ok(_) => Err(ApiError::Storage(
            "remote scan answered something else".into(),
        )),
        Err(e) => Err(ApiError::Storage(e.to_string())),
    }
}

/// Puts bytes into a JSON object as `name` (UTF-8) or `name_hex`.
fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(name.to_string(), Value::String(s.to_string())),
        Err(_) => obj.insert(format!("{name}_hex"), Value::String(hex(bytes))),
    };
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Unpadded base64url: listing cursors (a key of the largest size still
/// fits in a request line).
fn cursor_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The key a cursor names; `None` for anything but a canonical unpadded
/// base64url string.
fn cursor_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchIn {
    ops: Vec<OpIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpIn {
    op: String,
    key: String,
    value: Option<String>,
    /// Write only if the key's version is this (If-Match).
    if_version: Option<u64>,
    /// Write only if the key does not exist (If-None-Match: *).
    #[serde(default)]
    if_absent: bool,
}

fn json_response(status: u16, v: &Value) -> Response {
    let mut body = v.to_string().into_bytes();
    body.push(b'\n');
    Response::new(status, JSON, body)
}

impl Api {
    /// `POST /v1/batch`: runs every operation (concurrently, each routed to
    /// its owner; not atomic across keys) and answers their results in order.
    pub(super) async fn batch(self: &Rc<Self>, req: &Request) -> Result<Response, ApiError> {
        if req.method != Method::Post {
            return Err(ApiError::MethodNotAllowed("POST"));
        }
        let input: BatchIn =
            serde_json::from_slice(req.body()).map_err(|e| ApiError::BadBody(e.to_string()))?;
        if input.ops.len() > MAX_BATCH_OPS {
            return Err(ApiError::TooManyOps(input.ops.len()));
        }
        let kvs = input
            .ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| batch_op(i, op, self.cfg.max_key))
            .collect::<Result<Vec<_>, _>>()?;
        if kvs.iter().any(|kv| kv.op != KvOp::Get) {
            self.authorize(req)?;
        }
        let responses = self.run_batch(&kvs, headers::forwarded(req)).await;
        let results: Vec<Value> = kvs
            .iter()
            .zip(&responses)
            .map(|(kv, resp)| batch_result(kv, resp))
            .collect();
        Ok(json_response(200, &json!({ "results": results })))
    }

    /// Runs a batch's operations: those on one key in request order,
    /// different keys concurrently (so writes share group commits). Round r
    /// holds each key's r-th operation. One response per operation, in order.
    async fn run_batch(self: &Rc<Self>, kvs: &[KvRequest], forwarded: bool) -> Vec<Response> {
        let mut rounds: Vec<usize> = Vec::with_capacity(kvs.len());
        let mut last_round: HashMap<&[u8], usize> = HashMap::with_capacity(kvs.len());
        for kv in kvs {
            let round = last_round.get(kv.key.as_slice()).map_or(0, |r| r + 1);
            last_round.insert(&kv.key, round);
            rounds.push(round);
        }
        let mut responses: Vec<Option<Response>> = vec![None; kvs.len()];
        for round in 0..=rounds.iter().copied().max().unwrap_or(0) {
            let tasks: Vec<_> = (0..kvs.len())
                .filter(|&i| rounds[i] == round)
                .map(|i| {
                    let api = self.clone();
                    let kv = kvs[i].clone();
                    let task = glommio::spawn_local(async move {
                        api.dispatch(kv, forwarded, None)
                            .await
                            .unwrap_or_else(|e| e.response())
                    });
                    (i, task)
                })
                .collect();
            for (i, task) in tasks {
                responses[i] = Some(task.await);
            }
        }
        // Every index belongs to exactly one round.
        responses.into_iter().flatten().collect()
    }

    /// `GET /v1/kv?prefix=P&limit=N&cursor=C`: keys with a prefix across
    /// all shards in key order, `limit` at a time; `next_cursor` resumes.
    pub(super) async fn list(self: &Rc<Self>, req: &Request) -> Result<Response, ApiError> {
        if !matches!(req.method, Method::Get | Method::Head) {
            return Err(ApiError::MethodNotAllowed("GET, HEAD"));
        }
        let params = form::parse_pairs(req.query()).map_err(|_| ApiError::BadEncoding("query"))?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name.as_bytes())
                .map(|(_, v)| v.clone())
        };
        let prefix = get("prefix").unwrap_or_default();
        let limit = match get("limit") {
            None => DEFAULT_LIST_LIMIT,
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|t| t.parse::<usize>().ok())
                .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                .ok_or(ApiError::BadParam("limit", "must be 1..1000"))?,
        };
        let after = match get("cursor") {
            None => None,
            Some(c) if c.is_empty() => None,
            Some(c) => Some(
                std::str::from_utf8(&c)
                    .ok()
                    .and_then(cursor_decode)
                    .ok_or(ApiError::BadParam("cursor", "not a cursor from a listing"))?,
            ),
        };
        let scan = Scan {
            prefix,
            after,
            limit,
        };
        // The shards that own keys now; during a reshard a shard may still
        // hold keys it gave away (until its purge), so each page keeps only
        // the keys its shard owns.
        let placement = self.router.layout().placement();
        let tasks: Vec<_> = placement
            .owning_shards()
            .map(|shard| {
                let api = self.clone();
                let scan = scan.clone();
                (
                    shard,
                    glommio::spawn_local(async move { api.scan_shard(shard, scan).await }),
                )
            })
            .collect();
        let mut all = Vec::new();
        // The smallest last key of a full page: beyond it that shard may
        // have keys this listing has not seen.
        let mut bound: Option<Vec<u8>> = None;
        for (shard, t) in tasks {
            let mut page = t.await?;
            if page.len() >= limit
                && let Some((last, _)) = page.last()
                && bound.as_ref().is_none_or(|b| last < b)
            {
                bound = Some(last.clone());
            }
            page.retain(|(k, _)| placement.owner(k) == shard);
            all.extend(page);
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(b) = &bound {
            all.retain(|(k, _)| k <= b);
        }
        let more = bound.is_some() || all.len() > limit;
        all.truncate(limit);
        let next = if more {
            all.last()
                .map(|(k, _)| k.clone())
                .or(bound)
                .map(|k| Value::String(cursor_encode(&k)))
        } else {
            None
        };
        let items: Vec<Value> = all
            .iter()
            .map(|(k, v)| {
                let mut obj = Map::new();
                put_bytes(&mut obj, "key", k);
                put_bytes(&mut obj, "value", &v.value);
                obj.insert("version".into(), json!(v.seq));
                Value::Object(obj)
            })
            .collect();
        // A data read without a validator: caches must ask again each time.
        Ok(json_response(
            200,
            &json!({ "items": items, "next_cursor": next.unwrap_or(Value::Null) }),
        )
        .with_header("Cache-Control", "no-cache"))
    }
}

/// Operation `i` of a batch as a request, or why it is refused.
fn batch_op(i: usize, op: OpIn, max_key: usize) -> Result<KvRequest, ApiError> {
    let bad = |why: &str| ApiError::BadBody(format!("ops[{i}]: {why}"));
    let kind = match (op.op.as_str(), op.value) {
        ("get", None) => KvOp::Get,
        ("set", Some(v)) => KvOp::Set(v.into_bytes()),
        ("delete", None) => KvOp::Delete,
        ("set", None) => return Err(bad("`set` needs a `value`")),
        ("get" | "delete", Some(_)) => return Err(bad("only `set` takes a `value`")),
        _ => return Err(bad("`op` must be get, set or delete")),
    };
    let cond = match (op.if_version, op.if_absent) {
        (Some(_), true) => return Err(bad("if_version and if_absent exclude each other")),
        (Some(v), false) => Cond::Version(v),
        (None, true) => Cond::Absent,
        (None, false) => Cond::Always,
    };
    if kind == KvOp::Get && cond != Cond::Always {
        return Err(bad("conditions apply to set and delete only"));
    }
    let key = check_key(op.key.into_bytes(), max_key).map_err(|e| match e {
        ApiError::EmptyKey => bad("empty key"),
        other => other,
    })?;
    Ok(KvRequest {
        op: kind,
        key,
        min_seq: 0,
        wait_ms: 0,
        cond,
        style: Style::Rest,
    })
}

/// One operation's entry in a batch's `results`: op, key, status, the
/// version (from the ETag), the value of a read or the error text.
fn batch_result(kv: &KvRequest, resp: &Response) -> Value {
    let mut obj = Map::new();
    let op = match kv.op {
        KvOp::Get => "get",
        KvOp::Set(_) => "set",
        KvOp::Delete => "delete",
    };
    obj.insert("op".into(), json!(op));
    put_bytes(&mut obj, "key", &kv.key);
    obj.insert("status".into(), json!(resp.status));
    if let Some(v) = resp
        .header("ETag")
        .and_then(|e| e.trim_matches('"').parse::<u64>().ok())
    {
        obj.insert("version".into(), json!(v));
    }
    if resp.status == 200 && kv.op == KvOp::Get {
        put_bytes(&mut obj, "value", &resp.body);
    } else if resp.status >= 400 {
        obj.insert(
            "error".into(),
            json!(String::from_utf8_lossy(&resp.body).trim()),
        );
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_cursors() {
        assert_eq!(hex(b"\x00ab\xff"), "006162ff");
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len)
                .map(|i: u8| i.wrapping_mul(37).wrapping_add(11))
                .collect();
            let c = cursor_encode(&bytes);
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(cursor_decode(&c), Some(bytes), "len {len}");
        }
        assert_eq!(cursor_encode(b"pre1"), "cHJlMQ");
        assert_eq!(cursor_decode("cHJlMR"), None);
        assert_eq!(cursor_decode("a"), None);
        assert_eq!(cursor_decode("*"), None);
    }
}
