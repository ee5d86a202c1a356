//! Integration tests that start real corekv clusters on ephemeral ports and
//! talk HTTP/1.1 to every node: routing and forwarding, replica write
//! refusal, error statuses, form bodies and percent-decoding, keep-alive and
//! pipelining, durability across kill -9, replica catch-up, a cluster split
//! over two processes (owner killed or stalled), and start-up errors.
//!
//! Every test owns its ports, temp dir and processes (tests run in
//! parallel); every wait is on a deadline.

#![allow(
    clippy::too_many_lines, // a scenario reads top to bottom
)]

mod common;

use common::{
    Cluster, Conn, NodeAddr, delete_target, free_ports, get, get_target, http, keys_for_shard,
    port_is_free, request_bytes, run_to_exit, set_target, shard_of, status_nodes, wait_until,
};
use std::time::{Duration, Instant};

/// How long replication may take to show a write on a replica.
const REPLICATION: Duration = Duration::from_secs(10);

/// Asserts a data response came from `served_by` for shard `shard`.
fn assert_tagged(r: &common::Resp, shard: usize, served_by: &str, ctx: &str) {
    assert_eq!(
        r.header("X-Shard"),
        Some(shard.to_string().as_str()),
        "{ctx}: X-Shard: {r}"
    );
    assert_eq!(
        r.header("X-Served-By"),
        Some(served_by),
        "{ctx}: X-Served-By: {r}"
    );
}

/// Who should answer a read of a key of `shard` asked at `node`: the
/// node itself when it is that shard's replica, else the shard's primary.
fn reader_for(c: &Cluster, node: &NodeAddr, shard: usize) -> String {
    if !node.primary && node.shard == shard {
        c.shards[shard].replica_name()
    } else {
        c.shards[shard].primary_name()
    }
}

/// Reads `key` at `node` and checks the value (or absence) and tags. On
/// the key's own replica, waits for replication on a deadline.
fn check_read(c: &Cluster, node: &NodeAddr, key: &[u8], want: Option<&[u8]>) {
    let shard = c.shard_of(key);
    let ctx = format!(
        "GET {:?} at {} ({})",
        String::from_utf8_lossy(key),
        node.name,
        node.addr
    );
    let matches = |r: &common::Resp| match want {
        Some(v) => r.status == 200 && r.body == v,
        None => r.status == 404,
    };
    let mut last = get(node.addr, &get_target(key));
    if !node.primary && node.shard == shard {
        wait_until(REPLICATION, || {
            last = get(node.addr, &get_target(key));
            matches(&last)
        });
    }
    assert!(matches(&last), "{ctx}: want {want:?}, got {last}");
    assert_tagged(&last, shard, &reader_for(c, node, shard), &ctx);
}

#[test]
fn harness_placement_matches_golden_vectors() {
    // README "Architecture", Placement: the harness hash must agree with the server's.
    assert_eq!(common::fnv1_64(b"k"), 0xaf63_bd4c_8601_b7b4);
    let three: [(&[u8], usize); 9] = [
        (b"a", 0),
        (b"b", 2),
        (b"c", 1),
        (b"k", 2),
        (b"foo", 0),
        (b"exampleKey", 1),
        (b"hello", 2),
        (b"key-1", 0),
        (b"", 2),
    ];
    for (key, want) in three {
        assert_eq!(shard_of(key, 3), want, "{:?}", String::from_utf8_lossy(key));
    }
    assert_eq!(
        (
            shard_of(b"k", 4),
            shard_of(b"a", 4),
            shard_of(b"missing", 4)
        ),
        (0, 2, 3)
    );
}

#[test]
fn every_node_routes_every_shard() {
    let c = Cluster::start(3);
    let nodes = c.nodes();
    assert_eq!(nodes.len(), 6);
    for shard in 0..3 {
        for key in keys_for_shard("route-", shard, 3, 2) {
            let key = key.as_bytes();
            assert_eq!(c.shard_of(key), shard);
            for writer in &nodes {
                let value = format!("v-{}-{}", writer.name, String::from_utf8_lossy(key));
                let r = get(writer.addr, &set_target(key, value.as_bytes()));
                let ctx = format!("set {:?} at {}", String::from_utf8_lossy(key), writer.name);
                if !writer.primary {
                    // Replicas refuse writes, naming the key's primary, and
                    // say who answered like every other response.
                    assert_eq!(r.status, 403, "{ctx}: {r}");
                    assert_eq!(
                        r.header("X-Served-By"),
                        Some(writer.name.as_str()),
                        "{ctx}: {r}"
                    );
                    assert!(r.header("X-Shard").is_some(), "{ctx}: X-Shard: {r}");
                    let primary = c.shards[shard].primary.to_string();
                    assert!(
                        r.text().contains(&primary),
                        "{ctx}: body should name {primary}: {r}"
                    );
                    let d = get(writer.addr, &delete_target(key));
                    assert_eq!(d.status, 403, "delete at {}: {d}", writer.name);
                    assert!(
                        d.text().contains(&primary),
                        "delete at {}: {d}",
                        writer.name
                    );
                    continue;
                }
                assert_eq!(r.status, 200, "{ctx}: {r}");
                assert_tagged(&r, shard, &c.shards[shard].primary_name(), &ctx);
                for reader in &nodes {
                    check_read(&c, reader, key, Some(value.as_bytes()));
                }
                let d = get(writer.addr, &delete_target(key));
                assert_eq!(d.status, 200, "delete at {}: {d}", writer.name);
                assert_tagged(&d, shard, &c.shards[shard].primary_name(), "delete");
                for reader in &nodes {
                    check_read(&c, reader, key, None);
                }
                // Delete is idempotent.
                let d = get(writer.addr, &delete_target(key));
                assert_eq!(d.status, 200, "second delete at {}: {d}", writer.name);
            }
        }
    }
}

#[test]
fn error_statuses() {
    let c = Cluster::start(3);
    let nodes = c.nodes();
    for node in &nodes {
        let at = format!("{} ({})", node.name, node.addr);
        // Missing keys of every shard: 404 from the owner, passed through.
        for shard in 0..3 {
            let key = &keys_for_shard("absent-", shard, 3, 1)[0];
            let r = get(node.addr, &get_target(key.as_bytes()));
            assert_eq!(r.status, 404, "missing {key} at {at}: {r}");
            assert_tagged(
                &r,
                shard,
                &reader_for(&c, node, shard),
                &format!("missing {key} at {at}"),
            );
        }
        for target in [
            "/get",
            "/get?value=1",
            "/get?",
            "/delete",
            "/set?value=1",
            "/get?keyx=1",
        ] {
            let r = get(node.addr, target);
            assert_eq!(r.status, 400, "{target} at {at}: {r}");
            assert!(
                r.text().contains("key"),
                "{target} at {at}: message should name `key`: {r}"
            );
        }
        for target in ["/get?key=", "/set?key=&value=1", "/delete?key="] {
            let r = get(node.addr, target);
            assert_eq!(r.status, 400, "{target} at {at}: {r}");
            assert!(!r.body.is_empty(), "{target} at {at}: needs a message");
        }
        let r = get(node.addr, "/set?key=k");
        assert_eq!(r.status, 400, "/set without value at {at}: {r}");
        assert!(
            r.text().contains("value"),
            "/set without value at {at}: {r}"
        );
        let r = get(node.addr, "/get?key=%zz");
        assert_eq!(r.status, 400, "bad escape at {at}: {r}");
        for target in ["/nope", "/", "/get/extra?key=a", "/GET?key=a"] {
            let r = get(node.addr, target);
            assert_eq!(r.status, 404, "{target} at {at}: {r}");
            assert!(!r.body.is_empty(), "{target} at {at}: needs a message");
        }
        for (method, target) in [
            ("PATCH", "/get?key=a"),
            ("DELETE", "/set?key=a&value=1"),
            ("PUT", "/delete?key=a"),
        ] {
            let r = http(node.addr, method, target, &[], b"");
            assert_eq!(r.status, 405, "{method} {target} at {at}: {r}");
            assert!(
                r.header("Allow").is_some(),
                "{method} {target} at {at}: 405 needs Allow: {r}"
            );
        }
        let big = "k".repeat(8 * 1024 + 1);
        let r = get(node.addr, &format!("/get?key={big}"));
        assert_eq!(r.status, 413, "oversized key at {at}: {r}");
        let r = get(node.addr, "/health");
        assert_eq!(r.status, 200, "/health at {at}: {r}");
        let r = get(node.addr, "/status");
        assert_eq!(r.status, 200, "/status at {at}: {r}");
        assert!(
            r.header("Content-Type").is_some_and(|t| t.contains("json")),
            "/status at {at}: {r}"
        );
        assert!(
            r.text().contains(&node.name),
            "/status at {at} should name the node: {r}"
        );
        // HEAD on /get: headers of the GET, no body.
        let mut conn = Conn::connect(node.addr).expect("connect");
        let h = conn
            .request("HEAD", &get_target(b"a"), &[], b"")
            .expect("HEAD");
        assert_eq!(h.status, 404, "HEAD at {at}: {h}");
        // The connection is still usable: the HEAD response had no body.
        let r = conn.get("/health").expect("request after HEAD");
        assert_eq!(r.status, 200, "after HEAD at {at}: {r}");
    }
}

#[test]
fn post_form_bodies_and_percent_decoding() {
    let c = Cluster::start(3);
    let nodes = c.nodes();
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    // (how the key is written on the wire, its decoded bytes)
    let keys: [(&str, &[u8]); 5] = [
        ("hello+world", b"hello world"),
        ("a%2Bb", b"a+b"),
        ("dir%2Fsub%2Ffile", b"dir/sub/file"),
        ("%E2%9C%93%20ok", "\u{2713} ok".as_bytes()),
        ("bin%00%FFkey", b"bin\x00\xffkey"),
    ];
    let value_wire = "%00%FF%0D%0Aend+%26%3D";
    let value: &[u8] = b"\x00\xff\r\nend &=";
    for (i, (wire, key)) in keys.iter().enumerate() {
        let shard = shard_of(key, 3);
        let primary = &c.shards[shard];
        // Write through a primary of another shard (forwarded) by POST form.
        let via = nodes[(shard + 1 + i % 2) % 3].addr;
        let body = format!("key={wire}&value={value_wire}");
        let r = http(via, "POST", "/set", &form, body.as_bytes());
        assert_eq!(r.status, 200, "POST /set {body:?}: {r}");
        // X-Shard proves the key was decoded before hashing.
        assert_tagged(
            &r,
            shard,
            &primary.primary_name(),
            &format!("POST /set {body:?}"),
        );
        for node in &nodes {
            check_read(&c, node, key, Some(value));
        }
        // Reading with a different encoding of the same bytes finds it.
        let r = get(nodes[0].addr, &get_target(key));
        assert_eq!(r.status, 200, "GET re-encoded {key:?}: {r}");
        assert_eq!(r.body, value);
        let r = http(
            nodes[1].addr,
            "POST",
            "/get",
            &form,
            format!("key={wire}").as_bytes(),
        );
        assert_eq!(r.status, 200, "POST /get {wire}: {r}");
        assert_eq!(r.body, value, "POST /get {wire}");
    }
    // Query and body together: the key from the query, the value from the body.
    let r = http(
        nodes[2].addr,
        "POST",
        "/set?key=mixed",
        &form,
        b"value=from+body",
    );
    assert_eq!(r.status, 200, "POST query+body: {r}");
    let r = get(nodes[0].addr, "/get?key=mixed");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"from body"[..]),
        "{r}"
    );
    // PUT /set and DELETE /delete work like GET/POST.
    let r = http(nodes[0].addr, "PUT", "/set", &form, b"key=putkey&value=p");
    assert_eq!(r.status, 200, "PUT /set: {r}");
    assert_eq!(get(nodes[1].addr, "/get?key=putkey").body, b"p");
    let r = http(nodes[2].addr, "DELETE", "/delete?key=putkey", &[], b"");
    assert_eq!(r.status, 200, "DELETE /delete: {r}");
    assert_eq!(get(nodes[1].addr, "/get?key=putkey").status, 404);
    // A form body that is not valid percent-encoding is a 400.
    let r = http(nodes[0].addr, "POST", "/set", &form, b"key=a%G0&value=1");
    assert_eq!(r.status, 400, "bad escape in body: {r}");
    // An empty value is a value.
    let r = get(nodes[0].addr, "/set?key=emptyval&value=");
    assert_eq!(r.status, 200, "{r}");
    let r = get(nodes[2].addr, "/get?key=emptyval");
    assert_eq!((r.status, r.body.len()), (200, 0), "{r}");
}

#[test]
fn keep_alive_pipelining_http10_and_close() {
    let c = Cluster::start(3);
    let addr = c.shards[0].primary;
    // Keep-alive: several requests on one connection, keys of every shard.
    let mut conn = Conn::connect(addr).expect("connect");
    for i in 0..9 {
        let key = format!("ka-{i}");
        let r = conn
            .get(&set_target(key.as_bytes(), format!("val-{i}").as_bytes()))
            .expect("set");
        assert_eq!(r.status, 200, "keep-alive set {i}: {r}");
        assert!(!r.closes(), "keep-alive set {i} must not close: {r}");
        let r = conn.get(&get_target(key.as_bytes())).expect("get");
        assert_eq!(r.status, 200, "keep-alive get {i}: {r}");
        assert_eq!(r.text(), format!("val-{i}"));
    }
    let r = conn.get("/nope").expect("404 on keep-alive");
    assert_eq!(r.status, 404);
    let r = conn.get("/health").expect("connection survives a 404");
    assert_eq!(r.status, 200);

    // Pipelining: 10 requests in one write, answers in order (on a
    // replica too, once it has every write).
    wait_caught_up(&c);
    for node in [c.shards[0].primary, c.shards[1].replica] {
        let mut conn = Conn::connect(node).expect("connect");
        let mut batch = Vec::new();
        for i in 0..10 {
            batch.extend(request_bytes(
                "GET",
                &get_target(format!("ka-{}", i % 9).as_bytes()),
                &[],
                b"",
            ));
        }
        conn.send_raw(&batch).expect("write pipeline");
        for i in 0..10 {
            let r = conn
                .read_response()
                .unwrap_or_else(|e| panic!("pipelined response {i} at {node}: {e}"));
            assert_eq!(r.status, 200, "pipelined {i} at {node}: {r}");
            assert_eq!(
                r.text(),
                format!("val-{}", i % 9),
                "pipelined response {i} out of order at {node}"
            );
            let key = format!("ka-{}", i % 9);
            assert_eq!(
                r.header("X-Shard"),
                Some(shard_of(key.as_bytes(), 3).to_string().as_str())
            );
        }
        // Mixed writes and reads in one pipeline: the read sees the write.
        let mut batch = Vec::new();
        batch.extend(request_bytes("GET", "/set?key=pipe&value=one", &[], b""));
        batch.extend(request_bytes("GET", "/get?key=pipe", &[], b""));
        batch.extend(request_bytes("GET", "/set?key=pipe&value=two", &[], b""));
        batch.extend(request_bytes("GET", "/get?key=pipe", &[], b""));
        if node == c.shards[0].primary {
            conn.send_raw(&batch).expect("write pipeline");
            let got: Vec<(u16, String)> = (0..4)
                .map(|_| {
                    conn.read_response()
                        .map(|r| (r.status, r.text()))
                        .expect("read")
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    (200, "OK\n".into()),
                    (200, "one".into()),
                    (200, "OK\n".into()),
                    (200, "two".into())
                ],
                "pipelined set/get/set/get"
            );
        }
    }

    // Pipelined request split at an awkward point still works.
    let mut conn = Conn::connect(addr).expect("connect");
    let bytes = request_bytes("GET", "/get?key=ka-1", &[], b"");
    let (a, b) = bytes.split_at(7);
    conn.send_raw(a).expect("first half");
    std::thread::sleep(Duration::from_millis(30));
    conn.send_raw(b).expect("second half");
    let r = conn.read_response().expect("split request");
    assert_eq!((r.status, r.text()), (200, "val-1".to_string()), "{r}");

    // HTTP/1.0: answered, then the server closes.
    for target in ["/get?key=ka-2", "/health", "/nope"] {
        let mut conn = Conn::connect(addr).expect("connect");
        conn.send_raw(format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes())
            .expect("write");
        let r = conn.read_response().expect("HTTP/1.0 response");
        assert!(matches!(r.status, 200 | 404), "HTTP/1.0 {target}: {r}");
        assert!(
            conn.closed_by_peer(Duration::from_secs(5)),
            "HTTP/1.0 {target}: server must close"
        );
    }
    let mut conn = Conn::connect(addr).expect("connect");
    conn.send_raw(b"GET /get?key=ka-2 HTTP/1.0\r\n\r\n")
        .expect("write");
    let r = conn.read_response().expect("HTTP/1.0 response");
    assert_eq!(
        (r.status, r.text()),
        (200, "val-2".to_string()),
        "HTTP/1.0 get: {r}"
    );

    // HTTP/1.1 with Connection: close, also for a forwarded request.
    for key in ["ka-0", "ka-1", "ka-2"] {
        let mut conn = Conn::connect(addr).expect("connect");
        let r = conn
            .request(
                "GET",
                &get_target(key.as_bytes()),
                &[("Connection", "close")],
                b"",
            )
            .expect("Connection: close");
        assert_eq!(r.status, 200, "{r}");
        assert!(r.closes(), "response should say Connection: close: {r}");
        assert!(
            conn.closed_by_peer(Duration::from_secs(5)),
            "server must close after Connection: close"
        );
    }
    // Connection: close in a pipeline: the requests after it are not answered.
    let mut conn = Conn::connect(addr).expect("connect");
    let mut batch = request_bytes("GET", "/health", &[], b"");
    batch.extend(request_bytes(
        "GET",
        "/health",
        &[("Connection", "close")],
        b"",
    ));
    batch.extend(request_bytes("GET", "/health", &[], b""));
    conn.send_raw(&batch).expect("write");
    assert_eq!(conn.read_response().expect("first").status, 200);
    let r = conn.read_response().expect("second");
    assert!(r.closes(), "{r}");
    assert!(
        conn.closed_by_peer(Duration::from_secs(5)),
        "nothing after Connection: close"
    );
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut c = Cluster::start(3);
    let nodes = c.nodes();
    let n = 200;
    let value = |i: usize| format!("durable-{i}-{}", "x".repeat(i % 37)).into_bytes();
    // Write through keep-alive connections on every primary (some writes
    // are forwarded to their owner), every one acknowledged with 200.
    let mut conns: Vec<Conn> = nodes[..3]
        .iter()
        .map(|nd| Conn::connect(nd.addr).expect("connect"))
        .collect();
    for i in 0..n {
        let key = format!("dur-{i}");
        let conn = &mut conns[i % 3];
        let r = conn
            .get(&set_target(key.as_bytes(), &value(i)))
            .expect("set");
        assert_eq!(r.status, 200, "set {key}: {r}");
    }
    // Deletes are durable too.
    for i in (0..n).step_by(10) {
        let r = conns[0]
            .get(&delete_target(format!("dur-{i}").as_bytes()))
            .expect("delete");
        assert_eq!(r.status, 200, "delete dur-{i}: {r}");
    }
    drop(conns);
    c.restart(0);
    let expect = |i: usize| {
        if i.is_multiple_of(10) {
            None
        } else {
            Some(value(i))
        }
    };
    // Every primary (forwarding or owning) answers every key.
    for nd in &nodes[..3] {
        let mut conn = Conn::connect(nd.addr).expect("connect");
        for i in 0..n {
            let key = format!("dur-{i}");
            let r = conn.get(&get_target(key.as_bytes())).expect("get");
            match expect(i) {
                Some(v) => {
                    assert_eq!(r.status, 200, "after kill -9, {key} via {}: {r}", nd.name);
                    assert_eq!(r.body, v, "after kill -9, {key} via {}", nd.name);
                }
                None => assert_eq!(
                    r.status, 404,
                    "after kill -9, deleted {key} via {}: {r}",
                    nd.name
                ),
            }
        }
    }
    // Replicas converge on the same data.
    for i in 0..n {
        let key = format!("dur-{i}");
        let shard = c.shard_of(key.as_bytes());
        let replica = nodes
            .iter()
            .find(|nd| !nd.primary && nd.shard == shard)
            .expect("replica")
            .clone();
        check_read(&c, &replica, key.as_bytes(), expect(i).as_deref());
    }
}

/// Replicas `(name, applied_seq, lag, state)` and primaries
/// `(name, committed_seq)` from `/status` of every process of `c`.
type Lags = (Vec<(String, u64, u64, String)>, Vec<(String, u64)>);

fn replica_lags(c: &Cluster) -> Lags {
    let mut replicas = Vec::new();
    let mut primaries = Vec::new();
    for p in &c.procs {
        for (name, st) in status_nodes(p.ports[0]) {
            match st.str("role").as_deref() {
                Some("replica") => replicas.push((
                    name,
                    st.num("applied_seq").unwrap_or(0),
                    st.num("lag").unwrap_or(u64::MAX),
                    st.str("state").unwrap_or_default(),
                )),
                Some("primary") => primaries.push((name, st.num("committed_seq").unwrap_or(0))),
                _ => {}
            }
        }
    }
    (replicas, primaries)
}

/// Waits until every replica has applied exactly its primary's committed
/// sequence (both from `/status`) and reports lag 0.
fn wait_caught_up(c: &Cluster) -> Lags {
    let mut last: Lags = Default::default();
    let ok = wait_until(REPLICATION, || {
        last = replica_lags(c);
        let (replicas, primaries) = &last;
        replicas.len() == c.shards.len()
            && primaries.len() == c.shards.len()
            && replicas.iter().all(|(name, applied, lag, _)| {
                let shard = name.trim_end_matches("/replica");
                let want = primaries
                    .iter()
                    .find(|(p, _)| p.trim_end_matches("/primary") == shard)
                    .map(|(_, s)| *s);
                *lag == 0 && want.is_some_and(|w| w == *applied)
            })
    });
    assert!(ok, "replicas did not catch up: {last:?}\n{}", c.all_logs());
    last
}

#[test]
fn replicas_catch_up_and_survive_restart() {
    let mut c = Cluster::start(3);
    let p = c.shards[0].primary;
    let mut conn = Conn::connect(p).expect("connect");
    let n = 60;
    for i in 0..n {
        let r = conn
            .get(&set_target(
                format!("rep-{i}").as_bytes(),
                format!("a{i}").as_bytes(),
            ))
            .expect("set");
        assert_eq!(r.status, 200, "{r}");
    }
    let (replicas, primaries) = wait_caught_up(&c);
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    assert!(
        primaries.iter().all(|(_, s)| *s > 0),
        "every shard got writes: {primaries:?}"
    );
    let sum: u64 = primaries.iter().map(|(_, s)| *s).sum();
    assert_eq!(sum, n, "one committed write per set: {primaries:?}");
    // Every key is on its replica, read without waiting.
    let nodes = c.nodes();
    let replica_of = |k: &str| {
        let shard = shard_of(k.as_bytes(), 3);
        nodes
            .iter()
            .find(|nd| !nd.primary && nd.shard == shard)
            .expect("replica")
            .clone()
    };
    for i in 0..n {
        let key = format!("rep-{i}");
        let r = get(replica_of(&key).addr, &get_target(key.as_bytes()));
        assert_eq!(
            (r.status, r.text()),
            (200, format!("a{i}")),
            "{key} on its replica: {r}"
        );
        assert_tagged(&r, c.shard_of(key.as_bytes()), &replica_of(&key).name, &key);
    }
    drop(conn);
    c.restart(0);
    // After the restart the replicas still serve the data.
    for i in 0..n {
        let key = format!("rep-{i}");
        check_read(
            &c,
            &replica_of(&key),
            key.as_bytes(),
            Some(format!("a{i}").as_bytes()),
        );
    }
    // New writes after the restart replicate too (overwrites and deletes).
    let mut conn = Conn::connect(c.shards[2].primary).expect("connect");
    for i in 0..n {
        let key = format!("rep-{i}");
        let r = if i % 3 == 0 {
            conn.get(&delete_target(key.as_bytes()))
        } else {
            conn.get(&set_target(key.as_bytes(), format!("b{i}").as_bytes()))
        }
        .expect("write");
        assert_eq!(r.status, 200, "{r}");
    }
    wait_caught_up(&c);
    for i in 0..n {
        let key = format!("rep-{i}");
        let want = (i % 3 != 0).then(|| format!("b{i}"));
        let r = get(replica_of(&key).addr, &get_target(key.as_bytes()));
        match want {
            Some(v) => assert_eq!((r.status, r.text()), (200, v), "{key} after restart: {r}"),
            None => assert_eq!(r.status, 404, "deleted {key} after restart: {r}"),
        }
    }
}

#[test]
fn replica_process_down_catches_up_over_http() {
    // Process 0 runs every primary, process 1 every replica: replication
    // goes over HTTP, and the replicas can be killed alone.
    let primaries: Vec<(usize, bool)> = (0..3).map(|s| (s, true)).collect();
    let replicas: Vec<(usize, bool)> = (0..3).map(|s| (s, false)).collect();
    let mut c = Cluster::start_with(3, &[Some(primaries), Some(replicas)]);
    let nodes = c.nodes();
    let write = |c: &Cluster, tag: &str| {
        let mut conn = Conn::connect(c.shards[1].primary).expect("connect");
        for i in 0..30 {
            let r = conn
                .get(&set_target(
                    format!("cu-{i}").as_bytes(),
                    format!("{tag}{i}").as_bytes(),
                ))
                .expect("set");
            assert_eq!(r.status, 200, "{r}");
        }
    };
    write(&c, "first");
    // The replica of key `cu-{i}`'s shard.
    let shards = c.shards.len();
    let replica_of = |key: &str| {
        nodes
            .iter()
            .find(|nd| !nd.primary && nd.shard == common::shard_of(key.as_bytes(), shards))
            .expect("replica")
            .clone()
    };
    for i in 0..30 {
        let key = format!("cu-{i}");
        let rep = replica_of(&key);
        check_read(
            &c,
            &rep,
            key.as_bytes(),
            Some(format!("first{i}").as_bytes()),
        );
    }
    c.kill(1);
    // Writes keep working while the replicas are down.
    write(&c, "second");
    c.start_proc(1);
    wait_caught_up(&c);
    for i in 0..30 {
        let key = format!("cu-{i}");
        let rep = replica_of(&key);
        check_read(
            &c,
            &rep,
            key.as_bytes(),
            Some(format!("second{i}").as_bytes()),
        );
        // A replica of another shard forwards to the owner over HTTP.
        let other = nodes
            .iter()
            .find(|nd| !nd.primary && nd.shard != rep.shard)
            .expect("other replica");
        check_read(
            &c,
            other,
            key.as_bytes(),
            Some(format!("second{i}").as_bytes()),
        );
    }
}

#[test]
fn two_processes_forward_over_http() {
    let mut c = Cluster::start_groups(3, &[vec![0, 1], vec![2]]);
    let a = c.nodes_of(0);
    let b = c.nodes_of(1);
    assert_eq!((a.len(), b.len()), (4, 2));
    // Each process serves only its own ports.
    let served: Vec<String> = status_nodes(a[0].addr)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        !served.iter().any(|n| n.starts_with("shard3/")),
        "A's /status lists B's nodes: {served:?}"
    );
    let k2 = keys_for_shard("two-", 2, 3, 3);
    let k0 = keys_for_shard("two-", 0, 3, 3);
    let k1 = keys_for_shard("two-", 1, 3, 2);
    // From A's ports, keys of shard 2 (owned by B, reached over HTTP).
    for (i, key) in k2.iter().enumerate() {
        let key = key.as_bytes();
        for node in &a {
            let r = get(
                node.addr,
                &set_target(key, format!("fromA-{i}-{}", node.name).as_bytes()),
            );
            if node.primary {
                assert_eq!(r.status, 200, "set shard-2 key via {}: {r}", node.name);
                assert_tagged(&r, 2, "shard3/primary", &format!("set via {}", node.name));
                for reader in a.iter().chain(&b) {
                    check_read(
                        &c,
                        reader,
                        key,
                        Some(format!("fromA-{i}-{}", node.name).as_bytes()),
                    );
                }
            } else {
                assert_eq!(r.status, 403, "set via replica {}: {r}", node.name);
                assert!(
                    r.text().contains(&c.shards[2].primary.to_string()),
                    "403 names B's primary: {r}"
                );
            }
        }
    }
    // From B's ports, keys of shards 0 and 1 (owned by A).
    for key in k0.iter().chain(&k1) {
        let key = key.as_bytes();
        let shard = c.shard_of(key);
        let r = get(b[0].addr, &set_target(key, b"fromB"));
        assert_eq!(r.status, 200, "set shard-{shard} key via B: {r}");
        assert_tagged(&r, shard, &c.shards[shard].primary_name(), "set via B");
        for reader in a.iter().chain(&b) {
            check_read(&c, reader, key, Some(b"fromB"));
        }
        let r = get(b[0].addr, &delete_target(key));
        assert_eq!(r.status, 200, "delete via B: {r}");
        for reader in a.iter().chain(&b) {
            check_read(&c, reader, key, None);
        }
    }
    // Pipelining on A for keys owned by B (forwarded over HTTP) and by A,
    // interleaved: answers come back in request order.
    let mut conn = Conn::connect(a[0].addr).expect("connect");
    let mut batch = Vec::new();
    let mut want = Vec::new();
    for i in 0..10 {
        let key = if i % 2 == 0 { &k2[i % 3] } else { &k0[i % 3] };
        let value = format!("pipe-{i}");
        batch.extend(request_bytes(
            "GET",
            &set_target(key.as_bytes(), value.as_bytes()),
            &[],
            b"",
        ));
        batch.extend(request_bytes("GET", &get_target(key.as_bytes()), &[], b""));
        want.push((200, "OK\n".to_string(), c.shard_of(key.as_bytes())));
        want.push((200, value, c.shard_of(key.as_bytes())));
    }
    conn.send_raw(&batch).expect("write pipeline");
    for (i, (status, body, shard)) in want.into_iter().enumerate() {
        let r = conn
            .read_response()
            .unwrap_or_else(|e| panic!("pipelined response {i} across processes: {e}"));
        assert_eq!(
            (r.status, r.text()),
            (status, body),
            "pipelined response {i} across processes: {r}"
        );
        assert_tagged(
            &r,
            shard,
            &c.shards[shard].primary_name(),
            &format!("pipelined {i}"),
        );
    }
    // Missing keys across the process boundary are 404, not an error.
    let r = get(
        a[0].addr,
        &get_target(keys_for_shard("nothere-", 2, 3, 1)[0].as_bytes()),
    );
    assert_eq!(r.status, 404, "{r}");
    // A forwarded request carrying the forwarded marker for a shard the node
    // does not own is refused, not forwarded again.
    let r = http(
        a[0].addr,
        "GET",
        &get_target(k2[0].as_bytes()),
        &[("X-Corekv-Forwarded", "1")],
        b"",
    );
    assert!(
        r.status >= 400 && r.status != 404,
        "re-forwarding must be refused: {r}"
    );

    // Kill B: A answers shard-2 requests quickly with a gateway error.
    c.kill(1);
    for node in &a {
        for target in [
            get_target(k2[0].as_bytes()),
            set_target(k2[1].as_bytes(), b"x"),
        ] {
            if !node.primary && target.starts_with("/set") {
                continue;
            }
            let start = Instant::now();
            let r = get(node.addr, &target);
            let took = start.elapsed();
            assert!(
                matches!(r.status, 502..=504),
                "{target} via {} with B down: {r}",
                node.name
            );
            assert!(
                took < Duration::from_secs(5),
                "{target} via {} took {took:?}",
                node.name
            );
            assert!(
                !r.text().trim().is_empty(),
                "gateway error needs a message: {r}"
            );
        }
    }
    // A still serves its own shards.
    let r = get(a[1].addr, &set_target(k0[0].as_bytes(), b"still"));
    assert_eq!(r.status, 200, "A's own shard with B down: {r}");
    // B comes back: forwarding from A recovers (stale pooled connections
    // must not leak a failure to the client).
    c.start_proc(1);
    for node in &a {
        let r = get(node.addr, &get_target(k2[0].as_bytes()));
        assert_eq!(
            r.status, 200,
            "shard-2 read via {} after B restarted: {r}",
            node.name
        );
        assert_tagged(&r, 2, "shard3/primary", "after B restart");
    }
}

#[test]
fn stalled_remote_owner_answers_within_a_timeout() {
    let c = Cluster::start_groups(3, &[vec![0, 1], vec![2]]);
    let a = c.nodes_of(0);
    let key = keys_for_shard("stall-", 2, 3, 1).remove(0);
    let r = get(a[0].addr, &set_target(key.as_bytes(), b"before"));
    assert_eq!(r.status, 200, "{r}");
    // B stops (SIGSTOP): its sockets still accept, nothing answers.
    c.signal(1, "STOP");
    let start = Instant::now();
    let r = get(a[1].addr, &get_target(key.as_bytes()));
    let took = start.elapsed();
    c.signal(1, "CONT");
    assert!(
        matches!(r.status, 502..=504),
        "read with the owner stalled: {r}"
    );
    assert!(!r.text().trim().is_empty(), "needs a message: {r}");
    assert!(
        took < Duration::from_secs(10),
        "read with the owner stalled took {took:?}"
    );
    // Once B runs again, forwarding works again.
    let mut last = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let r = get(a[1].addr, &get_target(key.as_bytes()));
        let good = r.status == 200 && r.body == b"before";
        last = Some(r);
        good
    });
    assert!(ok, "forwarding after SIGCONT: {last:?}");
}

#[test]
fn second_instance_on_the_same_ports_fails_to_start() {
    let c = Cluster::start(3);
    let args = vec![
        "--config".to_string(),
        c.config.display().to_string(),
        "--data-dir".to_string(),
        c.dir.path().join("second-data").display().to_string(),
    ];
    let (status, out, err, took) =
        run_to_exit(c.dir.path(), "second", &args, Duration::from_secs(5));
    let ctx = format!("status {status:?} after {took:?}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second instance must not start: {ctx}"
    );
    let first = c.shards[0].primary.to_string();
    assert!(
        err.contains("in use") || err.contains(&first),
        "stderr should say which address is taken: {ctx}"
    );
}

/// A config with three valid shards on fresh ports. Returns the file text
/// and the ports used. Shard k (0-based) starts at line 6k+1: name 6k+2,
/// idx 6k+3, address 6k+4, replica 6k+5.
fn three_shard_config() -> (String, Vec<u16>) {
    let ports = free_ports(6);
    let text = (0..3)
        .map(|i| {
            format!(
            "[[shards]]\nname = \"shard{}\"\nidx = {i}\naddress = \"127.0.0.1:{}\"\nreplica = \"127.0.0.1:{}\"\n\n",
            i + 1,
            ports[i],
            ports[3 + i]
            )
        })
        .collect::<Vec<_>>()
        .concat();
    (text, ports)
}

/// `text` with its 1-based line `line` replaced by `with`.
fn replace_line(text: &str, line: usize, with: &str) -> String {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| if i + 1 == line { with } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Binds `port` (retrying briefly: another test binary may be probing it).
fn hold_port(port: u16) -> std::net::TcpListener {
    let mut held = None;
    wait_until(Duration::from_secs(2), || {
        held = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
        held.is_some()
    });
    held.unwrap_or_else(|| panic!("cannot hold port {port}"))
}

/// `port` can be bound within a short deadline (another test binary may
/// be probing it for an instant).
fn port_is_free_soon(port: u16) -> bool {
    wait_until(Duration::from_secs(2), || port_is_free(port))
}

#[test]
fn config_errors_exit_early_naming_file_and_line() {
    // (case, line to replace, its new text, a word the message should contain)
    let cases = [
        ("duplicate idx", 15, "idx = 1", "idx"),
        ("gap in idx", 15, "idx = 3", "idx"),
        (
            "address without port",
            10,
            "address = \"127.0.0.1\"",
            "address",
        ),
        ("port zero", 17, "replica = \"127.0.0.1:0\"", "port"),
    ];
    for (name, line, with, word) in cases {
        let (text, ports) = three_shard_config();
        let text = replace_line(&text, line, with);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).expect("write config");
        // Hold the first valid port: a process that tried to bind before
        // validating would report a bind error instead of the config error.
        let held = hold_port(ports[0]);
        let args = vec![
            "--config".to_string(),
            path.display().to_string(),
            "--data-dir".to_string(),
            dir.path().join("data").display().to_string(),
        ];
        let (status, out, err, took) =
            run_to_exit(dir.path(), "bad", &args, Duration::from_secs(10));
        drop(held);
        let ctx = format!(
            "{name}: status {status:?} after {took:?}\nconfig:\n{text}\nstdout:\n{out}\nstderr:\n{err}"
        );
        let status = status.unwrap_or_else(|| panic!("{ctx}\ncorekv did not exit"));
        assert!(!status.success(), "{ctx}");
        assert!(took < Duration::from_secs(5), "{ctx}");
        let place = format!("{}:{line}", path.display());
        assert!(err.contains(&place), "{ctx}\nstderr should name {place}");
        assert!(
            err.to_lowercase().contains(word),
            "{ctx}\nstderr should mention {word}"
        );
        assert!(!out.contains("listening"), "{ctx}\nmust not listen");
        assert!(!err.contains("listen"), "{ctx}\nmust not try to listen");
        for p in &ports {
            assert!(port_is_free_soon(*p), "{ctx}\nport {p} not free after exit");
        }
        assert!(
            !dir.path().join("data").exists(),
            "{ctx}\ndata dir created before config validation"
        );
    }
    // --serve naming an address that is not in the config.
    let dir = tempfile::tempdir().expect("tempdir");
    let (text, ports) = three_shard_config();
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, &text).expect("write config");
    let unknown = free_ports(1)[0];
    let args = vec![
        "--config".to_string(),
        path.display().to_string(),
        "--data-dir".to_string(),
        dir.path().join("data").display().to_string(),
        "--serve".to_string(),
        format!("127.0.0.1:{unknown}"),
    ];
    let (status, out, err, _) = run_to_exit(dir.path(), "serve", &args, Duration::from_secs(10));
    let status = status.expect("corekv should exit");
    assert!(!status.success(), "--serve unknown: {out}{err}");
    assert!(
        err.contains(&unknown.to_string()),
        "--serve unknown should name the address: {err}"
    );
    assert!(ports.iter().all(|p| port_is_free_soon(*p)));
    // The usage error exit code differs from a start-up failure.
    let (status, _, err, _) = run_to_exit(
        dir.path(),
        "usage",
        &["--bogus".to_string()],
        Duration::from_secs(10),
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "--bogus must fail: {err}"
    );
}
