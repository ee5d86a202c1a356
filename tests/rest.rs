//! Integration tests of the REST API against real corekv processes:
//! `/v1/kv/{key}` (raw binary bodies, ETags, HEAD, DELETE, conditional
//! requests, percent-encoded keys, 405), the same through a non-owner
//! node, a replica and another process; `POST /v1/batch` (results in
//! order, conditions, limits); and `GET /v1/kv?prefix=` listings paged by
//! cursor from every node, also across two processes.
//!
//! Every test owns its ports, temp dir and processes; every wait has a
//! deadline. Local helpers only: `tests/common` is shared and not edited
//! here.

#![allow(
    clippy::too_many_lines, // a scenario reads top to bottom
)]

mod common;

use common::{
    Cluster, Conn, Resp, enc, get, get_target, http, keys_for_shard, request_bytes, shard_of,
    wait_until,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// How long replication may take to show a write on a replica.
const REPLICATION: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Local helpers

/// `"12"` → 12.
fn etag(r: &Resp) -> u64 {
    r.header("ETag")
        .and_then(|e| e.strip_prefix('"')?.strip_suffix('"')?.parse().ok())
        .unwrap_or_else(|| panic!("no ETag of the form \"<n>\": {r}"))
}

fn quoted(v: u64) -> String {
    format!("\"{v}\"")
}

fn json(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {r}"))
}

/// `/v1/kv/{key}` with the key percent-encoded.
fn kv_path(key: &[u8]) -> String {
    format!("/v1/kv/{}", enc(key))
}

/// A request on a fresh connection.
fn req(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    http(addr, method, target, headers, body)
}

/// Every byte value once.
fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

/// Who answers a read of `shard` asked at a node: the shard's replica
/// itself, else the shard's primary.
fn reader_name(c: &Cluster, via: SocketAddr, shard: usize) -> String {
    if c.shards[shard].replica == via {
        c.shards[shard].replica_name()
    } else {
        c.shards[shard].primary_name()
    }
}

/// GETs `target` at `via` until `ok` holds (replicas lag), returning the
/// last answer.
fn read_until(
    via: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
    ok: impl Fn(&Resp) -> bool,
) -> Resp {
    let mut last = req(via, "GET", target, headers, b"");
    wait_until(REPLICATION, || {
        last = req(via, "GET", target, headers, b"");
        ok(&last)
    });
    last
}

/// The whole `/v1/kv/{key}` story through `via`, a primary (the owner, a
/// non-owner in the same process or one in another process).
fn rest_story(c: &Cluster, via: SocketAddr, key: &[u8]) {
    let shard = shard_of(key, c.shards.len());
    let owner = c.shards[shard].primary_name();
    let path = kv_path(key);
    let ctx = format!("{} via {via}", String::from_utf8_lossy(key));
    let body = all_bytes();

    // PUT a raw binary body: 200 with the new version as ETag and X-Seq.
    let r = req(via, "PUT", &path, &[], &body);
    assert_eq!(r.status, 200, "{ctx}: PUT: {r}");
    let v1 = etag(&r);
    assert!(v1 > 0, "{ctx}: {r}");
    assert_eq!(
        r.header("X-Seq"),
        Some(v1.to_string().as_str()),
        "{ctx}: {r}"
    );
    assert_eq!(
        r.header("X-Shard"),
        Some(shard.to_string().as_str()),
        "{ctx}: {r}"
    );
    assert_eq!(r.header("X-Served-By"), Some(owner.as_str()), "{ctx}: {r}");

    // GET returns it byte for byte.
    let r = req(via, "GET", &path, &[], b"");
    assert_eq!(r.status, 200, "{ctx}: GET: {r}");
    assert_eq!(r.body, body, "{ctx}: GET body differs");
    assert_eq!(etag(&r), v1, "{ctx}: {r}");
    assert_eq!(
        r.header("Content-Type"),
        Some("application/octet-stream"),
        "{ctx}: {r}"
    );
    // The seed endpoint sees the same value and version.
    let s = get(via, &get_target(key));
    assert_eq!((s.status, &s.body), (200, &body), "{ctx}: /get: {s}");
    assert_eq!(
        s.header("X-Version"),
        Some(v1.to_string().as_str()),
        "{ctx}: {s}"
    );

    // HEAD: the headers of a GET, no body (the next answer on the same
    // connection is intact).
    let mut conn = Conn::connect(via).expect("connect");
    let r = conn.request("HEAD", &path, &[], b"").expect("HEAD");
    assert_eq!(r.status, 200, "{ctx}: HEAD: {r}");
    assert_eq!(r.header("Content-Length"), Some("256"), "{ctx}: HEAD: {r}");
    assert_eq!(etag(&r), v1, "{ctx}: HEAD: {r}");
    let r = conn.get("/health").expect("after HEAD");
    assert_eq!(
        (r.status, r.text()),
        (200, "ok\n".to_string()),
        "{ctx}: HEAD left a body behind"
    );

    // Conditional reads.
    let r = req(via, "GET", &path, &[("If-None-Match", &quoted(v1))], b"");
    assert_eq!(r.status, 304, "{ctx}: If-None-Match current: {r}");
    assert!(r.body.is_empty(), "{ctx}: 304 has no body: {r}");
    assert_eq!(etag(&r), v1, "{ctx}: {r}");
    let r = req(
        via,
        "GET",
        &path,
        &[("If-None-Match", &quoted(v1 + 1000))],
        b"",
    );
    assert_eq!(
        (r.status, &r.body),
        (200, &body),
        "{ctx}: If-None-Match other: {r}"
    );

    // Conditional writes.
    let r = req(via, "PUT", &path, &[("If-Match", &quoted(v1))], b"second");
    assert_eq!(r.status, 200, "{ctx}: If-Match current: {r}");
    let v2 = etag(&r);
    assert!(v2 > v1, "{ctx}: new version {v2} after {v1}");
    let r = req(via, "PUT", &path, &[("If-Match", &quoted(v1))], b"stale");
    assert_eq!(r.status, 412, "{ctx}: If-Match stale: {r}");
    assert_eq!(etag(&r), v2, "{ctx}: 412 shows the current version: {r}");
    let r = req(via, "PUT", &path, &[("If-None-Match", "*")], b"create");
    assert_eq!(
        r.status, 412,
        "{ctx}: If-None-Match * on an existing key: {r}"
    );
    assert_eq!(etag(&r), v2, "{ctx}: {r}");
    let r = req(via, "PUT", &path, &[("If-Match", "*")], b"third");
    assert_eq!(r.status, 200, "{ctx}: If-Match * on an existing key: {r}");
    let v3 = etag(&r);
    let r = req(via, "GET", &path, &[], b"");
    assert_eq!(
        (r.status, r.text(), etag(&r)),
        (200, "third".into(), v3),
        "{ctx}: {r}"
    );
    let r = req(via, "DELETE", &path, &[("If-Match", &quoted(v2))], b"");
    assert_eq!(r.status, 412, "{ctx}: DELETE If-Match stale: {r}");
    assert_eq!(etag(&r), v3, "{ctx}: {r}");
    let r = req(via, "GET", &path, &[], b"");
    assert_eq!(
        r.status, 200,
        "{ctx}: a failed conditional delete deletes nothing: {r}"
    );

    // DELETE: 204, then 404; idempotent.
    let r = req(via, "DELETE", &path, &[("If-Match", &quoted(v3))], b"");
    assert_eq!(r.status, 204, "{ctx}: DELETE If-Match current: {r}");
    assert!(r.body.is_empty(), "{ctx}: 204 has no body: {r}");
    let r = req(via, "GET", &path, &[], b"");
    assert_eq!(r.status, 404, "{ctx}: GET after DELETE: {r}");
    let mut conn = Conn::connect(via).expect("connect");
    let r = conn.request("HEAD", &path, &[], b"").expect("HEAD");
    assert_eq!(r.status, 404, "{ctx}: HEAD after DELETE: {r}");
    assert_eq!(conn.get("/health").expect("after HEAD").status, 200);
    let r = req(via, "DELETE", &path, &[], b"");
    assert_eq!(r.status, 204, "{ctx}: DELETE is idempotent: {r}");

    // Conditions on a missing key.
    let r = req(via, "PUT", &path, &[("If-Match", "*")], b"x");
    assert_eq!(r.status, 412, "{ctx}: If-Match * on a missing key: {r}");
    let r = req(via, "PUT", &path, &[("If-Match", &quoted(v3))], b"x");
    assert_eq!(
        r.status, 412,
        "{ctx}: If-Match version on a missing key: {r}"
    );
    let r = req(via, "DELETE", &path, &[("If-Match", "*")], b"");
    assert_eq!(
        r.status, 412,
        "{ctx}: DELETE If-Match * on a missing key: {r}"
    );
    let r = req(via, "PUT", &path, &[("If-None-Match", "*")], b"");
    assert_eq!(r.status, 200, "{ctx}: If-None-Match * on a new key: {r}");
    let v4 = etag(&r);
    // An empty body is a value.
    let r = req(via, "GET", &path, &[], b"");
    assert_eq!(
        (r.status, r.body.len(), etag(&r)),
        (200, 0, v4),
        "{ctx}: empty value: {r}"
    );

    // Bad conditions and methods.
    // A weak tag never matches under If-Match's strong comparison (RFC
    // 9110 §13.1.1): 412, not 400.
    let r = req(via, "PUT", &path, &[("If-Match", "W/\"1\"")], b"x");
    assert_eq!(r.status, 412, "{ctx}: weak ETag: {r}");
    let r = req(
        via,
        "PUT",
        &path,
        &[("If-Match", "*"), ("If-None-Match", "*")],
        b"x",
    );
    // Both are evaluated (RFC 9110 §13.2.2): the key exists, so
    // `If-None-Match: *` fails.
    assert_eq!(r.status, 412, "{ctx}: If-Match with If-None-Match: {r}");
    for method in ["POST", "PATCH", "OPTIONS"] {
        let r = req(via, method, &path, &[], b"x");
        assert_eq!(r.status, 405, "{ctx}: {method}: {r}");
        let allow = r.header("Allow").unwrap_or_default();
        for m in ["GET", "HEAD", "PUT", "DELETE"] {
            assert!(allow.contains(m), "{ctx}: {method}: Allow lists {m}: {r}");
        }
    }
    // The value is unchanged by all of that.
    let r = req(via, "GET", &path, &[], b"");
    assert_eq!((r.status, etag(&r)), (200, v4), "{ctx}: {r}");
}

/// Reads of `key` (currently `value` at `version`) through a replica, and
/// writes refused there.
fn replica_story(c: &Cluster, via: SocketAddr, key: &[u8], value: &[u8], version: u64) {
    let shard = shard_of(key, c.shards.len());
    let path = kv_path(key);
    let ctx = format!("{} via replica {via}", String::from_utf8_lossy(key));
    let r = read_until(via, &path, &[], |r| r.status == 200 && r.body == value);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, value),
        "{ctx}: GET: {r}"
    );
    assert_eq!(etag(&r), version, "{ctx}: {r}");
    assert_eq!(
        r.header("X-Served-By"),
        Some(reader_name(c, via, shard).as_str()),
        "{ctx}: {r}"
    );
    let mut conn = Conn::connect(via).expect("connect");
    let r = conn.request("HEAD", &path, &[], b"").expect("HEAD");
    assert_eq!(r.status, 200, "{ctx}: HEAD: {r}");
    assert_eq!(
        r.header("Content-Length"),
        Some(value.len().to_string().as_str())
    );
    assert_eq!(conn.get("/health").expect("after HEAD").status, 200);
    let r = req(
        via,
        "GET",
        &path,
        &[("If-None-Match", &quoted(version))],
        b"",
    );
    assert_eq!(r.status, 304, "{ctx}: If-None-Match: {r}");
    let primary = c.shards[shard].primary.to_string();
    for (method, headers) in [
        ("PUT", vec![]),
        ("PUT", vec![("If-Match", quoted(version))]),
        ("PUT", vec![("If-None-Match", "*".to_string())]),
        ("DELETE", vec![]),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = req(via, method, &path, &h, b"nope");
        assert_eq!(
            r.status, 403,
            "{ctx}: {method} {headers:?} on a replica: {r}"
        );
        assert!(
            r.text().contains(&primary),
            "{ctx}: 403 names the primary {primary}: {r}"
        );
    }
    let r = req(via, "POST", &path, &[], b"x");
    assert_eq!(r.status, 405, "{ctx}: POST: {r}");
    // Nothing changed.
    let r = req(via, "GET", &path, &[], b"");
    assert_eq!((r.status, etag(&r)), (200, version), "{ctx}: {r}");
}

// ---------------------------------------------------------------------------
// /v1/kv/{key}

#[test]
fn kv_through_owner_non_owner_and_replicas() {
    let c = Cluster::start(2);
    for shard in 0..2 {
        let keys = keys_for_shard("rest-", shard, 2, 2);
        let owner = c.shards[shard].primary;
        let other = c.shards[1 - shard].primary;
        rest_story(&c, owner, keys[0].as_bytes());
        rest_story(&c, other, keys[1].as_bytes());
        // Through both replicas: the key's own (local read, once
        // replicated) and the other shard's (forwarded to the primary).
        let key = format!("{}-r", keys[0]);
        let r = req(owner, "PUT", &kv_path(key.as_bytes()), &[], &all_bytes());
        assert_eq!(r.status, 200, "{r}");
        let v = etag(&r);
        let key_shard = shard_of(key.as_bytes(), 2);
        for s in 0..2 {
            replica_story(&c, c.shards[s].replica, key.as_bytes(), &all_bytes(), v);
        }
        // A delete through a primary reaches the replicas too.
        let r = req(other, "DELETE", &kv_path(key.as_bytes()), &[], b"");
        assert_eq!(r.status, 204, "{r}");
        let rep = c.shards[key_shard].replica;
        let r = read_until(rep, &kv_path(key.as_bytes()), &[], |r| r.status == 404);
        assert_eq!(r.status, 404, "replica after delete: {r}");
    }
}

#[test]
fn kv_keys_are_percent_decoded_paths() {
    let c = Cluster::start(2);
    let p = c.shards[0].primary;
    // a%2Fb is the key "a/b".
    let r = req(p, "PUT", "/v1/kv/a%2Fb", &[], b"slash");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(get(p, "/get?key=a%2Fb").text(), "slash");
    let r = req(p, "GET", "/v1/kv/a%2fb", &[], b"");
    assert_eq!(
        (r.status, r.text()),
        (200, "slash".to_string()),
        "lower-case escape: {r}"
    );
    // `+` stays `+` in a path (it is a space only in a query or form).
    let r = req(p, "PUT", "/v1/kv/x+y", &[], b"plus");
    assert_eq!(r.status, 200, "{r}");
    let r = get(p, "/get?key=x%2By");
    assert_eq!(
        (r.status, r.text()),
        (200, "plus".to_string()),
        "key is x+y: {r}"
    );
    let r = get(p, "/get?key=x+y");
    assert_eq!(r.status, 404, "x+y in a query is \"x y\", another key: {r}");
    let r = req(p, "GET", "/v1/kv/x%2By", &[], b"");
    assert_eq!((r.status, r.text()), (200, "plus".to_string()), "{r}");
    // %20 is a space.
    let r = req(p, "PUT", "/v1/kv/sp%20ace", &[], b"space");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(get(p, "/get?key=sp+ace").text(), "space");
    // Seed writes are visible through REST, with the same version.
    let r = get(p, "/set?key=seed%26key&value=from+seed");
    assert_eq!(r.status, 200, "{r}");
    let seq: u64 = r
        .header("X-Seq")
        .and_then(|s| s.parse().ok())
        .expect("X-Seq");
    let r = req(p, "GET", "/v1/kv/seed%26key", &[], b"");
    assert_eq!(
        (r.status, r.text(), etag(&r)),
        (200, "from seed".into(), seq),
        "{r}"
    );
    // Binary and UTF-8 keys, through both primaries.
    for key in [&b"\x00\xff\r\n/bin"[..], "clé/ünïcode".as_bytes()] {
        for via in [c.shards[0].primary, c.shards[1].primary] {
            let r = req(via, "PUT", &kv_path(key), &[], key);
            assert_eq!(r.status, 200, "{key:?}: {r}");
            let r = req(via, "GET", &kv_path(key), &[], b"");
            assert_eq!((r.status, r.body.as_slice()), (200, key), "{key:?}: {r}");
            let r = get(via, &get_target(key));
            assert_eq!(
                (r.status, r.body.as_slice()),
                (200, key),
                "{key:?} via /get: {r}"
            );
        }
    }
    // Bad keys.
    for (target, status) in [("/v1/kv/a%zz", 400), ("/v1/kv/a%2", 400), ("/v1/kv/", 400)] {
        let r = req(p, "GET", target, &[], b"");
        assert_eq!(r.status, status, "{target}: {r}");
        let r = req(p, "PUT", target, &[], b"x");
        assert_eq!(r.status, status, "PUT {target}: {r}");
    }
    let big = "k".repeat(8193);
    let r = req(p, "PUT", &format!("/v1/kv/{big}"), &[], b"x");
    assert_eq!(r.status, 413, "8193-byte key: {r}");
    let r = req(p, "PUT", &format!("/v1/kv/{}", &big[1..]), &[], b"x");
    assert_eq!(r.status, 200, "8192-byte key: {r}");
}

#[test]
fn kv_across_two_processes() {
    // Process 0 holds shard 0 (primary and replica), process 1 shard 1.
    let c = Cluster::start_groups(2, &[vec![0], vec![1]]);
    let remote_keys = keys_for_shard("far-", 1, 2, 3);
    let local_keys = keys_for_shard("far-", 0, 2, 2);
    // Through process 0's primary, keys owned by process 1 (over HTTP).
    rest_story(&c, c.shards[0].primary, remote_keys[0].as_bytes());
    // And the other way round.
    rest_story(&c, c.shards[1].primary, local_keys[0].as_bytes());
    // Through process 0's replica, reads of a remote key; writes refused.
    let key = remote_keys[1].as_bytes();
    let r = req(c.shards[1].primary, "PUT", &kv_path(key), &[], &all_bytes());
    assert_eq!(r.status, 200, "{r}");
    let v = etag(&r);
    replica_story(&c, c.shards[0].replica, key, &all_bytes(), v);
    replica_story(&c, c.shards[1].replica, key, &all_bytes(), v);
    // Pipelined REST requests to the remote owner, answered in order.
    let mut conn = Conn::connect(c.shards[0].primary).expect("connect");
    let k = remote_keys[2].as_bytes();
    let mut bytes = request_bytes("PUT", &kv_path(k), &[("If-None-Match", "*")], b"p1");
    bytes.extend(request_bytes(
        "PUT",
        &kv_path(k),
        &[("If-None-Match", "*")],
        b"p2",
    ));
    bytes.extend(request_bytes("GET", &kv_path(k), &[], b""));
    bytes.extend(request_bytes("HEAD", &kv_path(k), &[], b""));
    bytes.extend(request_bytes("DELETE", &kv_path(k), &[], b""));
    bytes.extend(request_bytes("GET", &kv_path(k), &[], b""));
    conn.send_raw(&bytes).expect("write");
    let mut got = Vec::new();
    for head in [false, false, false, true, false, false] {
        let r = conn.read_response_for(head).expect("pipelined answer");
        got.push((r.status, r.text()));
    }
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![200, 412, 200, 200, 204, 404],
        "{got:?}"
    );
    assert_eq!(got[2].1, "p1");
}

// ---------------------------------------------------------------------------
// /v1/batch

fn batch(addr: SocketAddr, body: &str) -> Resp {
    req(
        addr,
        "POST",
        "/v1/batch",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn results(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, 200, "batch: {r}");
    json(r)["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results array: {r}"))
        .clone()
}

fn statuses(results: &[Value]) -> Vec<u64> {
    results
        .iter()
        .map(|x| x["status"].as_u64().unwrap_or(0))
        .collect()
}

#[test]
fn batch_results_in_order() {
    let c = Cluster::start(2);
    let p = c.shards[0].primary;
    let r = batch(
        p,
        r#"{"ops":[{"op":"set","key":"a","value":"1"},{"op":"get","key":"a"},{"op":"delete","key":"a"},{"op":"get","key":"a"},{"op":"set","key":"b","value":"2","if_absent":true}]}"#,
    );
    let res = results(&r);
    assert_eq!(statuses(&res), vec![200, 200, 204, 404, 200], "{r}");
    assert_eq!(res[1]["value"], "1", "{r}");
    assert_eq!(res[0]["op"], "set", "{r}");
    assert_eq!(res[1]["key"], "a", "{r}");
    let v_a = res[0]["version"].as_u64().expect("version of the set");
    assert_eq!(res[1]["version"].as_u64(), Some(v_a), "{r}");
    assert!(res[3]["error"].is_string(), "404 carries an error: {r}");
    let v_b = res[4]["version"].as_u64().expect("version of b");
    assert_eq!(get(p, "/get?key=b").text(), "2");
    assert_eq!(get(p, "/get?key=a").status, 404);

    // Conditions inside a batch: 412 in the results, the batch is 200.
    let r = batch(
        p,
        &format!(
            r#"{{"ops":[
                {{"op":"set","key":"b","value":"3","if_version":{}}},
                {{"op":"set","key":"b","value":"4","if_version":{v_b}}},
                {{"op":"set","key":"b","value":"5","if_absent":true}},
                {{"op":"delete","key":"b","if_version":{}}},
                {{"op":"get","key":"b"}}
            ]}}"#,
            v_b + 1000,
            v_b + 1000
        ),
    );
    let res = results(&r);
    assert_eq!(statuses(&res), vec![412, 200, 412, 412, 200], "{r}");
    let v_b2 = res[1]["version"].as_u64().expect("new version");
    assert!(v_b2 > v_b, "{r}");
    assert_eq!(
        res[0]["version"].as_u64(),
        Some(v_b),
        "412 names the current version: {r}"
    );
    assert_eq!(res[4]["value"], "4", "{r}");

    // Many keys over both shards, through each primary and replica; the
    // same key's operations in order.
    let keys: Vec<String> = (0..40).map(|i| format!("bk-{i}")).collect();
    let mut ops: Vec<String> = keys
        .iter()
        .map(|k| format!(r#"{{"op":"set","key":"{k}","value":"v-{k}"}}"#))
        .collect();
    ops.extend(
        keys.iter()
            .map(|k| format!(r#"{{"op":"get","key":"{k}"}}"#)),
    );
    ops.push(r#"{"op":"set","key":"bk-0","value":"again"}"#.into());
    ops.push(r#"{"op":"get","key":"bk-0"}"#.into());
    let body = format!(r#"{{"ops":[{}]}}"#, ops.join(","));
    for via in [c.shards[0].primary, c.shards[1].primary] {
        let res = results(&batch(via, &body));
        assert_eq!(res.len(), 82);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(res[i]["status"], 200, "set {k}: {:?}", res[i]);
            assert_eq!(res[i]["key"], k.as_str());
            assert_eq!(
                res[40 + i]["value"],
                format!("v-{k}"),
                "get {k}: {:?}",
                res[40 + i]
            );
        }
        assert_eq!(res[81]["value"], "again");
    }
    // Through a replica: reads work, writes are refused per operation.
    let get_ops = format!(
        r#"{{"ops":[{}]}}"#,
        keys.iter()
            .map(|k| format!(r#"{{"op":"get","key":"{k}"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    for s in 0..2 {
        let rep = c.shards[s].replica;
        let ok = wait_until(REPLICATION, || {
            let res = results(&batch(rep, &get_ops));
            res.iter().enumerate().all(|(i, x)| {
                x["value"]
                    == if i == 0 {
                        "again".to_string()
                    } else {
                        format!("v-{}", keys[i])
                    }
            })
        });
        assert!(
            ok,
            "batch reads through replica {s}: {}",
            batch(rep, &get_ops)
        );
        let res = results(&batch(
            rep,
            r#"{"ops":[{"op":"set","key":"bk-1","value":"x"},{"op":"delete","key":"bk-2"}]}"#,
        ));
        assert_eq!(
            statuses(&res),
            vec![403, 403],
            "writes through a replica: {res:?}"
        );
    }
    // Binary values come back as value_hex.
    let r = req(p, "PUT", "/v1/kv/binval", &[], b"\xff\x00a");
    assert_eq!(r.status, 200);
    let res = results(&batch(p, r#"{"ops":[{"op":"get","key":"binval"}]}"#));
    assert_eq!(res[0]["value_hex"], "ff0061", "{res:?}");

    // Limits and malformed batches.
    let gets = |n: usize| {
        format!(
            r#"{{"ops":[{}]}}"#,
            (0..n)
                .map(|i| format!(r#"{{"op":"get","key":"k{}"}}"#, i % 50))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let res = results(&batch(p, &gets(1000)));
    assert_eq!(res.len(), 1000, "1000 operations are allowed");
    let r = batch(p, &gets(1001));
    assert_eq!(r.status, 413, "1001 operations: {r}");
    for bad in [
        "",
        "not json",
        "{",
        "[]",
        r#"{"ops":{}}"#,
        r#"{"ops":[{"op":"set","key":"a"}]}"#,
        r#"{"ops":[{"op":"get","key":"a","value":"1"}]}"#,
        r#"{"ops":[{"op":"frob","key":"a"}]}"#,
        r#"{"ops":[{"op":"get","key":""}]}"#,
        r#"{"ops":[{"op":"get"}]}"#,
        r#"{"ops":[{"op":"get","key":"a","extra":1}]}"#,
        r#"{"ops":[{"op":"set","key":"a","value":"1","if_version":1,"if_absent":true}]}"#,
        r#"{"ops":[{"op":"get","key":"a","if_absent":true}]}"#,
        r#"{"ops":[{"op":"set","key":"a","value":"1","if_version":-1}]}"#,
    ] {
        let r = batch(p, bad);
        assert_eq!(r.status, 400, "batch body {bad:?}: {r}");
    }
    // Nothing of a refused batch ran.
    assert_eq!(get(p, "/get?key=a").status, 404);
    let r = req(p, "GET", "/v1/batch", &[], b"");
    assert_eq!(r.status, 405, "{r}");
    assert!(r.header("Allow").is_some_and(|a| a.contains("POST")), "{r}");
    let r = batch(p, r#"{"ops":[]}"#);
    assert_eq!(results(&r).len(), 0, "{r}");
}

#[test]
fn batch_across_two_processes() {
    let c = Cluster::start_groups(2, &[vec![0], vec![1]]);
    let k0 = keys_for_shard("xb-", 0, 2, 3);
    let k1 = keys_for_shard("xb-", 1, 2, 3);
    let mut ops = Vec::new();
    for k in k0.iter().chain(&k1) {
        ops.push(format!(
            r#"{{"op":"set","key":"{k}","value":"v-{k}","if_absent":true}}"#
        ));
        ops.push(format!(r#"{{"op":"get","key":"{k}"}}"#));
        ops.push(format!(
            r#"{{"op":"set","key":"{k}","value":"w","if_absent":true}}"#
        ));
    }
    let body = format!(r#"{{"ops":[{}]}}"#, ops.join(","));
    let res = results(&batch(c.shards[0].primary, &body));
    for (i, k) in k0.iter().chain(&k1).enumerate() {
        assert_eq!(
            (
                res[3 * i]["status"].as_u64(),
                res[3 * i + 1]["value"].as_str(),
                res[3 * i + 2]["status"].as_u64()
            ),
            (Some(200), Some(format!("v-{k}").as_str()), Some(412)),
            "{k}: {:?}",
            &res[3 * i..3 * i + 3]
        );
    }
    // The other process sees the same data.
    for k in k0.iter().chain(&k1) {
        let r = req(c.shards[1].primary, "GET", &kv_path(k.as_bytes()), &[], b"");
        assert_eq!((r.status, r.text()), (200, format!("v-{k}")), "{r}");
    }
}

// ---------------------------------------------------------------------------
// Listing

/// Pages through `/v1/kv?prefix=...&limit=...` at `via`; returns every
/// item as (key, value, version) and the number of pages.
fn list_all(
    via: SocketAddr,
    prefix: &[u8],
    limit: Option<usize>,
) -> (Vec<(String, String, u64)>, usize) {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut target = format!("/v1/kv?prefix={}", enc(prefix));
        if let Some(l) = limit {
            target = format!("{target}&limit={l}");
        }
        if let Some(c) = &cursor {
            target = format!("{target}&cursor={}", enc(c.as_bytes()));
        }
        let r = get(via, &target);
        assert_eq!(
            r.status,
            200,
            "{} ({} bytes) at {via}: {r}",
            &target[..target.len().min(120)],
            target.len()
        );
        assert!(
            r.header("Content-Type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{r}"
        );
        let v = json(&r);
        let page = v["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {r}"));
        assert!(
            page.len() <= limit.unwrap_or(100),
            "page of {} over the limit {limit:?} at {via}",
            page.len()
        );
        for it in page {
            let key = it["key"]
                .as_str()
                .map(str::to_string)
                .or_else(|| it["key_hex"].as_str().map(|h| format!("hex:{h}")))
                .unwrap_or_else(|| panic!("item without key: {it}"));
            let value = it["value"]
                .as_str()
                .map(str::to_string)
                .or_else(|| it["value_hex"].as_str().map(|h| format!("hex:{h}")))
                .unwrap_or_else(|| panic!("item without value: {it}"));
            let version = it["version"]
                .as_u64()
                .unwrap_or_else(|| panic!("no version: {it}"));
            items.push((key, value, version));
        }
        pages += 1;
        assert!(pages < 1000, "listing never ends at {via}");
        match &v["next_cursor"] {
            Value::Null => break,
            Value::String(s) => {
                assert!(is_cursor(s), "next_cursor is not unpadded base64url: {r}");
                cursor = Some(s.clone());
            }
            other => panic!("next_cursor must be a string or null, not {other}: {r}"),
        }
    }
    (items, pages)
}

/// True when `s` is non-empty unpadded base64url (RFC 4648 section 5,
/// alphabet `A-Z a-z 0-9 - _`, no `=`), the form of listing cursors.
fn is_cursor(s: &str) -> bool {
    !s.is_empty()
        && s.len() % 4 != 1
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Unpadded base64url of `bytes`.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut n = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            n |= u32::from(*b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Writes `keys` (value `val-<key>`) with pipelines, one connection per
/// owning primary, in parallel.
fn write_keys(c: &Cluster, keys: &[String]) {
    let n = c.shards.len();
    std::thread::scope(|s| {
        for shard in 0..n {
            let mine: Vec<&String> = keys
                .iter()
                .filter(|k| shard_of(k.as_bytes(), n) == shard)
                .collect();
            let addr = c.shards[shard].primary;
            s.spawn(move || {
                let mut conn = Conn::connect(addr).expect("connect");
                let mut bytes = Vec::new();
                for k in &mine {
                    bytes.extend(request_bytes(
                        "PUT",
                        &kv_path(k.as_bytes()),
                        &[],
                        format!("val-{k}").as_bytes(),
                    ));
                }
                conn.send_raw(&bytes).expect("write");
                for k in &mine {
                    let r = conn.read_response().expect("answer");
                    assert_eq!(r.status, 200, "PUT {k}: {r}");
                }
            });
        }
    });
}

/// Checks a full listing of the 250 `list/` keys.
fn check_listing(items: &[(String, String, u64)], want: &BTreeSet<String>, ctx: &str) {
    let keys: Vec<&String> = items.iter().map(|(k, _, _)| k).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), keys.len(), "{ctx}: duplicates in the listing");
    assert_eq!(keys, sorted, "{ctx}: listing not in key order");
    let got: BTreeSet<String> = keys.into_iter().cloned().collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{ctx}: missing {missing:?}, unexpected {extra:?}"
    );
    for (k, v, version) in items {
        assert_eq!(v, &format!("val-{k}"), "{ctx}: value of {k}");
        assert!(*version > 0, "{ctx}: version of {k}");
    }
}

fn listing_keys() -> (Vec<String>, BTreeSet<String>) {
    let want: BTreeSet<String> = (0..250).map(|i| format!("list/{i:03}")).collect();
    let mut all: Vec<String> = want.iter().cloned().collect();
    // Neighbours that must not be listed.
    all.extend(
        [
            "list",
            "lisT/1",
            "list0",
            "lis",
            "lisu/1",
            "other/list/1",
            "LIST/2",
            "list.",
            "a",
            "zz",
        ]
        .iter()
        .map(|s| (*s).to_string()),
    );
    (all, want)
}

#[test]
fn listing_pages_by_cursor_from_every_node() {
    let c = Cluster::start(3);
    let (all, want) = listing_keys();
    // The keys are spread over every shard.
    for shard in 0..3 {
        let n = want
            .iter()
            .filter(|k| shard_of(k.as_bytes(), 3) == shard)
            .count();
        assert!(n >= 40, "only {n} list/ keys on shard {shard}");
    }
    write_keys(&c, &all);
    // A binary key under another prefix.
    let r = req(
        c.shards[0].primary,
        "PUT",
        &kv_path(b"bin/\xff\x00"),
        &[],
        b"\x01\xfe",
    );
    assert_eq!(r.status, 200);

    for node in c.nodes() {
        let (items, pages) = list_all(node.addr, b"list/", Some(100));
        check_listing(&items, &want, &format!("limit 100 at {}", node.name));
        assert_eq!(pages, 3, "250 keys by 100 at {}: {pages} pages", node.name);
    }
    let p = c.shards[1].replica;
    for limit in [
        Some(1),
        Some(7),
        Some(50),
        Some(249),
        Some(250),
        Some(251),
        Some(1000),
        None,
    ] {
        let (items, pages) = list_all(p, b"list/", limit);
        check_listing(&items, &want, &format!("limit {limit:?}"));
        let l = limit.unwrap_or(100);
        assert!(
            pages >= 250usize.div_ceil(l) && pages <= 250usize.div_ceil(l) + 1,
            "limit {limit:?}: {pages} pages"
        );
    }
    // A page in the middle: the cursor resumes right after the last key.
    let r = get(p, "/v1/kv?prefix=list%2F&limit=10");
    let v = json(&r);
    let cursor = v["next_cursor"].as_str().expect("a cursor").to_string();
    assert_eq!(v["items"][9]["key"], "list/009", "{r}");
    assert!(is_cursor(&cursor), "cursor {cursor:?}: {r}");
    let r = get(p, &format!("/v1/kv?prefix=list%2F&limit=2&cursor={cursor}"));
    let v = json(&r);
    assert_eq!(
        (v["items"][0]["key"].as_str(), v["items"][1]["key"].as_str()),
        (Some("list/010"), Some("list/011")),
        "{r}"
    );
    // A cursor is the base64url of the key to resume after: one made by
    // hand (any key, listed or not) works the same.
    for (after, first) in [
        (&b"list/009"[..], "list/010"),
        (b"list/0095", "list/010"),
        (b"list/", "list/000"),
        (b"a", "list/000"),
    ] {
        let c = b64url(after);
        let r = get(p, &format!("/v1/kv?prefix=list%2F&limit=2&cursor={c}"));
        assert_eq!(r.status, 200, "cursor {c:?} (after {after:?}): {r}");
        assert_eq!(
            json(&r)["items"][0]["key"].as_str(),
            Some(first),
            "cursor {c:?} (after {after:?}): {r}"
        );
    }
    // "abc" is well-formed base64url (two bytes, "i\xb7"): a valid cursor,
    // before every list/ key; "bWE" ("ma") is past them all. An empty
    // cursor is no cursor.
    for (cursor, items) in [("abc", 250), ("bWE", 0), ("", 250)] {
        let r = get(
            p,
            &format!("/v1/kv?prefix=list%2F&limit=1000&cursor={cursor}"),
        );
        assert_eq!(r.status, 200, "cursor {cursor:?}: {r}");
        assert_eq!(
            json(&r)["items"].as_array().map(Vec::len),
            Some(items),
            "cursor {cursor:?}: {r}"
        );
    }
    // Other prefixes.
    let (items, _) = list_all(p, b"bin/", None);
    assert_eq!(
        items,
        vec![(
            "hex:62696e2fff00".to_string(),
            "hex:01fe".to_string(),
            items[0].2
        )],
        "binary key and value"
    );
    let (items, pages) = list_all(p, b"nothing-here/", Some(10));
    assert_eq!((items.len(), pages), (0, 1));
    let (items, _) = list_all(p, b"", Some(1000));
    assert_eq!(items.len(), all.len() + 1, "listing without a prefix");
    // The last page says so.
    let r = get(p, "/v1/kv?prefix=list%2F&limit=1000");
    let v = json(&r);
    assert_eq!(v["items"].as_array().map(Vec::len), Some(250));
    assert!(v["next_cursor"].is_null(), "{r}");

    // Bad parameters.
    for target in [
        "/v1/kv?prefix=list%2F&limit=0",
        "/v1/kv?prefix=list%2F&limit=5000",
        "/v1/kv?prefix=list%2F&limit=1001",
        "/v1/kv?prefix=list%2F&limit=-1",
        "/v1/kv?prefix=list%2F&limit=ten",
        // Not base64url: leftover bits set, a length of 1 mod 4, bytes
        // outside the alphabet (space, standard base64's + and /, padding).
        "/v1/kv?prefix=list%2F&cursor=zz",
        "/v1/kv?prefix=list%2F&cursor=bGlzdC8wMDl",
        "/v1/kv?prefix=list%2F&cursor=a",
        "/v1/kv?prefix=list%2F&cursor=abcde",
        "/v1/kv?prefix=list%2F&cursor=not+a+cursor",
        "/v1/kv?prefix=list%2F&cursor=ab%2Bc",
        "/v1/kv?prefix=list%2F&cursor=ab%2Fc",
        "/v1/kv?prefix=list%2F&cursor=YQ%3D%3D",
        "/v1/kv?prefix=list%2F&cursor=%FF%FE",
        "/v1/kv?prefix=%zz",
    ] {
        for via in [c.shards[0].primary, c.shards[2].replica] {
            let r = get(via, target);
            assert_eq!(r.status, 400, "{target} at {via}: {r}");
        }
    }
    for method in ["POST", "PUT", "DELETE"] {
        let r = req(p, method, "/v1/kv?prefix=list%2F", &[], b"");
        assert_eq!(r.status, 405, "{method} /v1/kv: {r}");
    }
}

#[test]
fn listing_across_two_processes() {
    let c = Cluster::start_groups(3, &[vec![0, 1], vec![2]]);
    let (all, want) = listing_keys();
    write_keys(&c, &all);
    for node in c.nodes() {
        let (items, pages) = list_all(node.addr, b"list/", Some(100));
        check_listing(&items, &want, &format!("limit 100 at {}", node.name));
        assert_eq!(pages, 3, "at {}", node.name);
    }
    let (items, _) = list_all(c.shards[2].primary, b"list/", Some(33));
    check_listing(&items, &want, "limit 33 from the second process");
    // Deleting through one process shows in listings from the other.
    for i in 0..10 {
        let r = req(
            c.shards[2].replica,
            "DELETE",
            &format!("/v1/kv/list%2F{i:03}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 403, "{r}");
        let r = req(
            c.shards[2].primary,
            "DELETE",
            &format!("/v1/kv/list%2F{i:03}"),
            &[],
            b"",
        );
        assert_eq!(r.status, 204, "{r}");
    }
    let want: BTreeSet<String> = want.into_iter().skip(10).collect();
    let (items, _) = list_all(c.shards[0].replica, b"list/", Some(100));
    check_listing(&items, &want, "after deleting 10");
    // Binary keys and prefixes with form-special bytes: the cursor and the
    // prefix travel to the other process's primary intact.
    for prefix in [&b"bin/"[..], b"p&q+r =%/"] {
        let mut keys: Vec<Vec<u8>> = (0u8..30)
            .map(|i| {
                let mut k = prefix.to_vec();
                k.extend_from_slice(&[0xff - i, b'+', i, b'&', b' ']);
                k
            })
            .collect();
        keys.sort();
        for k in &keys {
            let r = req(c.shards[0].primary, "PUT", &kv_path(k), &[], b"b");
            assert_eq!(r.status, 200, "{r}");
        }
        for via in [c.shards[0].primary, c.shards[2].primary] {
            let (items, pages) = list_all(via, prefix, Some(4));
            let got: Vec<String> = items.iter().map(|(k, _, _)| k.clone()).collect();
            let want: Vec<String> = keys
                .iter()
                .map(|k| match std::str::from_utf8(k) {
                    Ok(s) => s.to_string(),
                    Err(_) => format!(
                        "hex:{}",
                        k.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .concat()
                    ),
                })
                .collect();
            assert_eq!(
                got,
                want,
                "prefix {:?} by 4 at {via} ({pages} pages)",
                String::from_utf8_lossy(prefix)
            );
        }
    }
}

/// A form-body `/set` (the key goes in the body, not the head, so keys up
/// to `--max-key` fit whatever their bytes).
fn form_set(addr: SocketAddr, key: &[u8], value: &[u8]) -> Resp {
    let body = format!("key={}&value={}", enc(key), enc(value));
    req(
        addr,
        "POST",
        "/set",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
}

#[test]
fn listing_pages_past_keys_of_the_largest_size() {
    // Keys may be 8192 bytes (--max-key); the cursor after such a key
    // must still be accepted back (request line within
    // --max-header-bytes).
    let c = Cluster::start(1);
    let p = c.shards[0].primary;
    let keys: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            let mut k = b"long/".to_vec();
            k.resize(8192 - 1, b'k');
            k.push(b'0' + i);
            k
        })
        .collect();
    for k in &keys {
        let r = form_set(p, k, b"v");
        assert_eq!(r.status, 200, "{r}");
    }
    let r = get(p, "/v1/kv?prefix=long%2F&limit=1");
    assert_eq!(r.status, 200, "{r}");
    let cursor = json(&r)["next_cursor"]
        .as_str()
        .expect("cursor")
        .to_string();
    let target = format!("/v1/kv?prefix=long%2F&limit=1&cursor={cursor}");
    let r = get(p, &target);
    assert_eq!(
        r.status,
        200,
        "second page: GET with a {}-byte request target (the cursor of an 8192-byte key): {r}",
        target.len()
    );
}

#[test]
fn listing_across_processes_with_long_binary_keys() {
    // Keys of 6000 non-ASCII bytes live on process 1; a listing from
    // process 0 pages through them. The client's cursor (base64url, 8000
    // chars) fits the head limit; the node's scan request to the other
    // process must too.
    let c = Cluster::start_groups(2, &[vec![0], vec![1]]);
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut i = 0u32;
    while keys.len() < 3 {
        let mut k = b"lb/".to_vec();
        k.resize(6000 - 4, 0xff);
        k.extend_from_slice(&i.to_be_bytes());
        i += 1;
        if shard_of(&k, 2) == 1 {
            keys.push(k);
        }
    }
    for k in &keys {
        let r = form_set(c.shards[1].primary, k, b"v");
        assert_eq!(r.status, 200, "{r}");
    }
    // In the owner's process: fine.
    let (items, _) = list_all(c.shards[1].primary, b"lb/", Some(1));
    assert_eq!(items.len(), 3, "listing at the owner's process");
    // From the other process: the same.
    let mut cursor: Option<String> = None;
    let mut seen = 0;
    for page in 0..4 {
        let mut target = "/v1/kv?prefix=lb%2F&limit=1".to_string();
        if let Some(c) = &cursor {
            target = format!("{target}&cursor={c}");
        }
        let r = get(c.shards[0].primary, &target);
        assert_eq!(r.status, 200, "page {page} from the other process: {r}");
        let v = json(&r);
        seen += v["items"].as_array().map_or(0, Vec::len);
        match v["next_cursor"].as_str() {
            Some(s) => cursor = Some(s.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, 3);
}

#[test]
fn batch_with_long_keys_across_processes() {
    // A batch carries its keys in the JSON body, so any key up to
    // --max-key (8192 bytes) is valid. Operations for a shard on another
    // process are forwarded there; a long non-ASCII key must work there
    // as it does in the owner's process.
    let c = Cluster::start_groups(2, &[vec![0], vec![1]]);
    let mut keys = Vec::new();
    let mut i = 0;
    while keys.len() < 2 {
        // 4095 two-byte characters + a distinguishing suffix: <= 8192 bytes.
        let k = format!("{}{i:02}", "é".repeat(4095));
        i += 1;
        if shard_of(k.as_bytes(), 2) == 1 {
            keys.push(k);
        }
    }
    assert!(keys.iter().all(|k| k.len() <= 8192));
    let ops = |k: &str| {
        format!(r#"{{"ops":[{{"op":"set","key":"{k}","value":"v"}},{{"op":"get","key":"{k}"}}]}}"#)
    };
    // In the owner's process.
    let res = results(&batch(c.shards[1].primary, &ops(&keys[0])));
    assert_eq!(
        statuses(&res),
        vec![200, 200],
        "at the owner's process: {res:?}"
    );
    // From the other process.
    let res = results(&batch(c.shards[0].primary, &ops(&keys[1])));
    let short: Vec<String> = res
        .iter()
        .map(|x| format!("status {} error {}", x["status"], x["error"]))
        .collect();
    assert_eq!(
        statuses(&res),
        vec![200, 200],
        "from the other process: {short:?}"
    );
}
