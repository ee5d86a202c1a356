//! A small blocking etcd v3 client over etcd's JSON gRPC gateway
//! (HTTP/1.1, `ureq`): leases, range reads, puts, deletes, transactions and
//! a prefix watch that reconnects and resumes.
//!
//! Runs on the control plane's own OS threads, never on a glommio executor
//! (every call blocks). Depends on `ureq`, `serde_json`, `base64` and std.
//! Works with etcd 3.4 (Debian bookworm's `etcd-server`) and later: the
//! paths are `/v3/kv/*`, `/v3/lease/*` and `/v3/watch`.
//!
//! The JSON mapping has pitfalls, all handled here: keys and values are
//! standard base64; int64 fields (revisions, lease ids, TTLs) are JSON
//! strings; fields with default values are omitted (a PUT event has no
//! `type`, a keepalive on a lease that is gone has no `TTL`, a failed
//! transaction no `succeeded`). Each keepalive is one POST (the gateway maps
//! one request body to one stream message). Endpoints are tried in order on
//! transport errors, starting from the last one that answered.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::fmt;
use std::io::BufReader;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// gRPC status "not found" (e.g. "requested lease not found").
const NOT_FOUND: i64 = 5;
/// gRPC status "unavailable": another endpoint may serve the call.
const UNAVAILABLE: i64 = 14;
/// How long to wait for a TCP connection to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why an etcd call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoint answered (refused, reset, timed out): etcd unreachable.
    Transport(String),
    /// etcd answered with an error (gRPC code and message).
    Etcd { code: i64, message: String },
    /// The answer was not the JSON expected.
    Decode(String),
}

impl EtcdError {
    /// True when etcd could not be reached at all (as opposed to etcd
    /// refusing the request).
    #[must_use]
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::Transport(_))
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "etcd unreachable: {e}"),
            Self::Etcd { code, message } => write!(f, "etcd error {code}: {message}"),
            Self::Decode(e) => write!(f, "unexpected etcd answer: {e}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// Standard base64 of `bytes` (keys and values on the wire).
#[must_use]
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
}

/// An int64 field: a JSON string (or number); absent means 0.
#[must_use]
pub fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The `range_end` that selects every key starting with `prefix`.
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One key-value pair as etcd stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

impl Kv {
    fn from_json(v: &Value) -> Self {
        Self {
            key: unb64(&v["key"]),
            value: unb64(&v["value"]),
            create_revision: int(&v["create_revision"]),
            mod_revision: int(&v["mod_revision"]),
            lease: int(&v["lease"]),
        }
    }
}

fn kvs(v: &Value) -> Vec<Kv> {
    v["kvs"]
        .as_array()
        .map(|a| a.iter().map(Kv::from_json).collect())
        .unwrap_or_default()
}

/// A transaction's comparison: `key`'s create revision equals `rev` (0:
/// the key does not exist).
#[must_use]
pub fn cmp_create(key: &[u8], rev: i64) -> Value {
    json!({"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": rev.to_string()})
}

/// A transaction's comparison: `key`'s mod revision equals `rev`.
#[must_use]
pub fn cmp_mod(key: &[u8], rev: i64) -> Value {
    json!({"key": b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": rev.to_string()})
}

/// A transaction's put (`lease` 0: no lease).
#[must_use]
pub fn op_put(key: &[u8], value: &[u8], lease: i64) -> Value {
    json!({"request_put": {"key": b64(key), "value": b64(value), "lease": lease.to_string()}})
}

/// A transaction's delete of one key.
#[must_use]
pub fn op_delete(key: &[u8]) -> Value {
    json!({"request_delete_range": {"key": b64(key)}})
}

/// A transaction's read of one key.
#[must_use]
pub fn op_get(key: &[u8]) -> Value {
    json!({"request_range": {"key": b64(key)}})
}

/// What a transaction did.
#[derive(Debug, Clone)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    /// The key-value pairs the executed branch's range reads returned.
    pub read: Vec<Kv>,
}

/// A blocking client; cheap to share by reference between calls of one
/// thread (each thread makes its own for its own timeouts).
pub struct Client {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// The endpoint that answered last (tried first).
    preferred: AtomicUsize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `endpoints` (e.g. `http://127.0.0.1:2379`) whose unary
    /// calls each take at most `timeout`.
    #[must_use]
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(CONNECT_TIMEOUT.min(timeout)))
            .build()
            .into();
        Self {
            endpoints,
            agent,
            preferred: AtomicUsize::new(0),
        }
    }

    /// The configured endpoints.
    #[must_use]
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// One unary call, trying each endpoint (from the preferred one on) on
    /// transport errors and "unavailable".
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = EtcdError::Transport("no endpoints".into());
        for k in 0..n {
            let idx = (first + k) % n;
            let ep = &self.endpoints[idx];
            let mut resp = match self
                .agent
                .post(&format!("{ep}{path}"))
                .header("content-type", "application/json")
                .send(body.to_string())
            {
                Ok(r) => r,
                Err(e) => {
                    last = EtcdError::Transport(format!("{ep}: {e}"));
                    continue;
                }
            };
            let text = match resp.body_mut().read_to_string() {
                Ok(t) => t,
                Err(e) => {
                    last = EtcdError::Transport(format!("{ep}: {e}"));
                    continue;
                }
            };
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| EtcdError::Decode(format!("{e}: {text}")))?;
            let failed = !resp.status().is_success()
                || (v.get("error").is_some()
                    && v.get("result").is_none()
                    && v.get("code").is_some());
            if failed {
                let code = v["code"].as_i64().unwrap_or(-1);
                let message = v["message"]
                    .as_str()
                    .or_else(|| v["error"].as_str())
                    .unwrap_or(&text)
                    .to_string();
                last = EtcdError::Etcd { code, message };
                if code == UNAVAILABLE {
                    continue;
                }
                return Err(last);
            }
            self.preferred.store(idx, Ordering::Relaxed);
            return Ok(v);
        }
        Err(last)
    }

    /// Grants a lease of `ttl_secs`; returns (lease id, granted TTL in
    /// seconds; etcd may raise it to its minimum).
    ///
    /// # Errors
    /// etcd unreachable or refusing.
    pub fn lease_grant(&self, ttl_secs: i64) -> Result<(i64, i64), EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({ "TTL": ttl_secs.to_string() }))?;
        if let Some(e) = v["error"].as_str().filter(|e| !e.is_empty()) {
            return Err(EtcdError::Etcd {
                code: -1,
                message: e.to_string(),
            });
        }
        let id = int(&v["ID"]);
        if id == 0 {
            return Err(EtcdError::Decode(format!("lease grant without an ID: {v}")));
        }
        Ok((id, int(&v["TTL"])))
    }

    /// One keepalive round trip; returns the lease's new TTL in seconds, 0
    /// when the lease is gone (expired or revoked).
    ///
    /// # Errors
    /// etcd unreachable or refusing (other than "lease not found").
    pub fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        match self.call("/v3/lease/keepalive", &json!({ "ID": id.to_string() })) {
            Ok(v) => Ok(int(&v["result"]["TTL"])),
            Err(EtcdError::Etcd {
                code: NOT_FOUND, ..
            }) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Revokes a lease: every key attached to it is deleted at once.
    ///
    /// # Errors
    /// etcd unreachable or refusing (a lease already gone is not an error).
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() })) {
            Ok(_)
            | Err(EtcdError::Etcd {
                code: NOT_FOUND, ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads `key`, or every key under it when `prefix`; returns the
    /// store's revision and the pairs.
    ///
    /// # Errors
    /// etcd unreachable or refusing.
    pub fn range(&self, key: &[u8], prefix: bool) -> Result<(i64, Vec<Kv>), EtcdError> {
        let mut body = json!({ "key": b64(key) });
        if prefix {
            body["range_end"] = json!(b64(&prefix_end(key)));
        }
        let v = self.call("/v3/kv/range", &body)?;
        Ok((int(&v["header"]["revision"]), kvs(&v)))
    }

    /// Puts `key` = `value` (attached to `lease` unless 0); returns the
    /// new revision.
    ///
    /// # Errors
    /// etcd unreachable or refusing (e.g. the lease is gone).
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64(key), "value": b64(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        let v = self.call("/v3/kv/put", &body)?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// etcd unreachable or refusing.
    pub fn delete(&self, key: &[u8]) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", &json!({ "key": b64(key) }))
            .map(|_| ())
    }

    /// A transaction: if every comparison holds, run `success`, else
    /// `failure` (build them with [`cmp_create`], [`cmp_mod`], [`op_put`],
    /// [`op_delete`], [`op_get`]).
    ///
    /// # Errors
    /// etcd unreachable or refusing (e.g. a put's lease is gone).
    pub fn txn(
        &self,
        compare: &[Value],
        success: &[Value],
        failure: &[Value],
    ) -> Result<TxnResult, EtcdError> {
        let body = json!({ "compare": compare, "success": success, "failure": failure });
        let v = self.call("/v3/kv/txn", &body)?;
        let read = v["responses"]
            .as_array()
            .map(|rs| rs.iter().flat_map(|r| kvs(&r["response_range"])).collect())
            .unwrap_or_default();
        Ok(TxnResult {
            succeeded: v["succeeded"].as_bool().unwrap_or(false),
            revision: int(&v["header"]["revision"]),
            read,
        })
    }
}

/// What a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A key was put (its `mod_revision` is the event's revision).
    Put(Kv),
    /// A key was deleted (`mod_revision` is the deletion's revision).
    Delete(Kv),
    /// Events were compacted away before they could be delivered: the
    /// state must be read again; the watch goes on from now.
    Compacted,
    /// The stream is (re)connected and delivers events from here on.
    Connected,
    /// The stream broke (the text says why); it is retried.
    Broken(String),
}

/// Watches every key under `prefix` from revision `start` (0: from now)
/// on the calling thread until `stop` is set or `on` returns false.
/// Reconnects after any error, rotating endpoints and resuming from the
/// last revision seen + 1, so no event is lost across etcd restarts
/// unless it was compacted ([`WatchItem::Compacted`]). `idle` bounds each
/// read: a stream silent for longer is taken as broken and reconnected
/// (etcd sends progress notifications on quiet streams every
/// `--experimental-watch-progress-notify-interval`, 10 min by default).
pub fn watch(
    endpoints: &[String],
    prefix: &[u8],
    mut start: i64,
    idle: Duration,
    stop: &AtomicBool,
    mut on: impl FnMut(WatchItem) -> bool,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(idle))
        .build()
        .into();
    let mut next_ep = 0;
    let mut failures: u32 = 0;
    while !stop.load(Ordering::Relaxed) && !endpoints.is_empty() {
        if failures > 0 {
            // Back off a little after a broken stream, at most 200 ms.
            let wait = Duration::from_millis(u64::from(failures.min(4)) * 50);
            std::thread::sleep(wait);
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        let ep = &endpoints[next_ep % endpoints.len()];
        let mut req = json!({ "create_request": {
            "key": b64(prefix), "range_end": b64(&prefix_end(prefix)), "progress_notify": true } });
        if start > 0 {
            req["create_request"]["start_revision"] = json!(start.to_string());
        }
        let resp = agent
            .post(&format!("{ep}/v3/watch"))
            .header("content-type", "application/json")
            .send(req.to_string());
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                failures += 1;
                next_ep += 1;
                if !on(WatchItem::Broken(format!(
                    "{ep}: watch answered {}",
                    r.status()
                ))) {
                    return;
                }
                continue;
            }
            Err(e) => {
                failures += 1;
                next_ep += 1;
                if !on(WatchItem::Broken(format!("{ep}: {e}"))) {
                    return;
                }
                continue;
            }
        };
        let reader = BufReader::new(resp.into_body().into_reader());
        let Some(why) = read_events(reader, ep, &mut start, &mut failures, stop, &mut on) else {
            return;
        };
        failures += 1;
        next_ep += 1;
        if !on(WatchItem::Broken(why)) {
            return;
        }
    }
}

/// Reads one watch stream until it breaks (returns why) or the watch is
/// to end (`None`).
fn read_events(
    mut reader: impl std::io::BufRead,
    ep: &str,
    start: &mut i64,
    failures: &mut u32,
    stop: &AtomicBool,
    on: &mut impl FnMut(WatchItem) -> bool,
) -> Option<String> {
    let mut line = String::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Some(format!("{ep}: watch stream ended")),
            Err(e) => return Some(format!("{ep}: {e}")),
            Ok(_) => {}
        }
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        if v.get("error").is_some() {
            return Some(format!("{ep}: watch error {}", v["error"]));
        }
        let r = &v["result"];
        if int(&r["compact_revision"]) > 0 {
            *start = 0;
            if !on(WatchItem::Compacted) {
                return None;
            }
            return Some(format!("{ep}: watch compacted"));
        }
        if r["canceled"].as_bool().unwrap_or(false) {
            return Some(format!("{ep}: watch canceled: {}", r["cancel_reason"]));
        }
        let header_rev = int(&r["header"]["revision"]);
        if r["created"].as_bool().unwrap_or(false) {
            *failures = 0;
            if *start == 0 {
                *start = header_rev + 1;
            }
            if !on(WatchItem::Connected) {
                return None;
            }
            continue;
        }
        if let Some(events) = r["events"].as_array() {
            for e in events {
                let kv = Kv::from_json(&e["kv"]);
                *start = (*start).max(kv.mod_revision + 1);
                let item = if e["type"].as_str() == Some("DELETE") {
                    WatchItem::Delete(kv)
                } else {
                    WatchItem::Put(kv)
                };
                if !on(item) {
                    return None;
                }
            }
        } else if header_rev > 0 {
            // A progress notification: everything up to here was sent.
            *start = (*start).max(header_rev + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn int64_fields_are_strings_and_absent_is_zero() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
    }

    #[test]
    fn kv_decodes_base64() {
        let kv = Kv::from_json(&json!({"key": b64(b"k"), "value": b64(b"v"), "mod_revision": "5"}));
        assert_eq!(kv.key, b"k");
        assert_eq!(kv.value, b"v");
        assert_eq!(kv.mod_revision, 5);
        assert_eq!(kv.lease, 0);
    }
}
