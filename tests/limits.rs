//! Limits on what outside traffic can make a node hold: waiters for a seq
//! (timed-out `min_seq` reads and replica long polls on an idle primary),
//! the bounded commit queue (`--commit-queue`: a flood gets 503 with
//! `Retry-After`, never a hang), checks on `/internal/*` input (token on
//! every path, replica names, lengths, `after` overflow), and a remote
//! node whose address does not resolve at start-up (a warning, and
//! `/status` lists it).
//!
//! Every test owns its ports, temp dir and processes (killed by PID in
//! `Drop`); every wait has a deadline. Local helpers only: `tests/common`
//! is shared and not edited here.

#![allow(
    clippy::cast_possible_truncation, // Prometheus samples (f64) read back as counts
    clippy::cast_sign_loss, // Prometheus samples (f64) read back as counts
    clippy::too_many_lines, // a scenario reads top to bottom
)]

mod common;

use common::{
    Cluster, Conn, Resp, ShardAddrs, config_text, free_ports, get, get_target, health_ok, http,
    keys_for_shard, sample, set_target, spawn_corekv, status_nodes, wait_until,
};
use corekv::protocol::{
    KvOp, KvRequest, Pull, PullKind, PullReply, Scan, Style, decode_reply, encode_kv, encode_pull,
    encode_scan,
};
use corekv::storage::Cond;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OCTETS: (&str, &str) = ("Content-Type", "application/octet-stream");

// ---------------------------------------------------------------------------
// Local helpers

/// `corekv_seq_waiters` of `node` as `/metrics` on `addr` reports it.
fn seq_waiters(addr: SocketAddr, node: &str) -> u64 {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "/metrics: {r}");
    let series = format!("corekv_seq_waiters{{node=\"{node}\"}}");
    sample(&r.text(), &series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", r.text()))
        as u64
}

/// A node's numeric `/status` field.
fn status_num(addr: SocketAddr, node: &str, field: &str) -> u64 {
    status_nodes(addr)
        .into_iter()
        .find(|(n, _)| n == node)
        .and_then(|(_, s)| s.num(field))
        .unwrap_or_else(|| panic!("/status on {addr} has no {field} for {node}"))
}

/// POSTs an internal request body.
fn internal(addr: SocketAddr, path: &str, auth: Option<&str>, body: &[u8]) -> Resp {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let mut headers = vec![OCTETS];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    http(addr, "POST", path, &headers, body)
}

fn pull_body(replica: &str, kind: PullKind, wait: Duration) -> Vec<u8> {
    encode_pull(&Pull {
        replica: replica.to_string(),
        kind,
        wait,
        // A static cluster runs in epoch 1: a pull under a replica's name
        // with an older epoch would be told to discard its entries.
        epoch: 1,
    })
}

/// One corekv process started by a test, killed by its PID on drop.
struct Solo {
    child: Option<Child>,
    dir: tempfile::TempDir,
    stderr: std::path::PathBuf,
}

impl Solo {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Solo {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "==== corekv stderr ({}) ====\n{}",
                self.dir.path().display(),
                self.stderr()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Seq waiters

#[test]
fn timed_out_waits_do_not_accumulate_on_an_idle_primary() {
    let c = Cluster::start(1);
    let p = c.shards[0].primary;
    let pname = c.shards[0].primary_name();
    let key = "waiters-key";
    let r = get(p, &set_target(key.as_bytes(), b"v0"));
    assert_eq!(r.status, 200, "first write: {r}");
    let seq: u64 = r
        .header("X-Seq")
        .and_then(|s| s.parse().ok())
        .expect("X-Seq");

    // min_seq reads that time out, from many connections at once and one
    // after another: each is a waiter until it times out.
    let far = 1_000_000_000_000u64;
    let target = format!("/get?key={key}&min_seq={far}&wait_ms=100");
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let target = target.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::connect(p).expect("connect");
                for _ in 0..5 {
                    let r = conn.get(&target).expect("min_seq read");
                    assert_eq!(r.status, 504, "min_seq far ahead: {r}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread");
    }
    // Replica long polls that time out on the idle primary: under an
    // observer name and under the configured replica's name.
    for name in ["limits-probe", c.shards[0].replica_name().as_str()] {
        for _ in 0..10 {
            let body = pull_body(
                name,
                PullKind::Log { after: seq },
                Duration::from_millis(50),
            );
            let r = internal(p, "/internal/pull", None, &body);
            assert_eq!(r.status, 200, "long poll as {name}: {r}");
            assert!(
                matches!(decode_reply(&r.body), Ok(PullReply::Entries { ref entries, .. }) if entries.is_empty()),
                "long poll as {name} on an idle primary: {r}"
            );
        }
    }
    // 100 waits timed out; only the real replica's own long poll may be
    // live now.
    let settled = wait_until(Duration::from_secs(5), || seq_waiters(p, &pname) <= 1);
    assert!(
        settled,
        "waiters after 100 timed-out waits: {} (metrics), {} (status)",
        seq_waiters(p, &pname),
        status_num(p, &pname, "seq_waiters")
    );
    assert!(status_num(p, &pname, "seq_waiters") <= 1);

    // Live waits are counted and all woken by the write they wait for.
    let next = seq + 1;
    let live: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                get(
                    p,
                    &format!("/get?key=waiters-key&min_seq={next}&wait_ms=10000"),
                )
            })
        })
        .collect();
    let counted = wait_until(Duration::from_secs(10), || seq_waiters(p, &pname) >= 8);
    assert!(counted, "8 live waits, waiters {}", seq_waiters(p, &pname));
    let r = get(p, &set_target(key.as_bytes(), b"v1"));
    assert_eq!(r.status, 200, "second write: {r}");
    for t in live {
        let r = t.join().expect("waiting reader");
        assert_eq!((r.status, r.text()), (200, "v1".to_string()), "{r}");
    }
    let settled = wait_until(Duration::from_secs(5), || seq_waiters(p, &pname) <= 1);
    assert!(
        settled,
        "waiters after the write: {}",
        seq_waiters(p, &pname)
    );
}

// ---------------------------------------------------------------------------
// Commit queue

fn check_overloaded(r: &Resp, ctx: &str) {
    assert!(
        r.header("Retry-After")
            .is_some_and(|v| v.parse::<u32>().is_ok()),
        "{ctx}: 503 without a Retry-After: {r}"
    );
    assert!(r.text().contains("overloaded"), "{ctx}: 503 body: {r}");
}

#[test]
fn full_commit_queue_answers_503_with_retry_after() {
    // One write per commit and room for one waiting write: a few
    // concurrent writers fill the queue.
    let c = Cluster::start_with_args(2, &[None], &["--commit-queue", "1", "--commit-batch", "1"]);
    let owner = c.shards[0].primary;
    let other = c.shards[1].primary;
    let pname = c.shards[0].primary_name();
    let keys = keys_for_shard("flood-", 0, 2, 2000);

    // A batch runs its operations concurrently: most find the queue full.
    let ops: Vec<String> = keys[..500]
        .iter()
        .map(|k| format!(r#"{{"op":"set","key":"{k}","value":"b"}}"#))
        .collect();
    let body = format!(r#"{{"ops":[{}]}}"#, ops.join(","));
    let r = http(owner, "POST", "/v1/batch", &[], body.as_bytes());
    assert_eq!(r.status, 200, "batch: {r}");
    let text = r.text();
    assert!(
        text.contains("\"status\":200"),
        "no write of the batch succeeded: {text}"
    );
    assert!(
        text.contains("\"status\":503") && text.contains("overloaded"),
        "no write of the batch was refused: {text}"
    );

    // Plain writes from many connections, on the owner and forwarded from
    // another primary of the process (over its mailbox): some get 503.
    let direct_503 = Arc::new(AtomicUsize::new(0));
    let forwarded_503 = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let (direct_503, forwarded_503, ok, stop, failures) = (
                direct_503.clone(),
                forwarded_503.clone(),
                ok.clone(),
                stop.clone(),
                failures.clone(),
            );
            let keys = keys.clone();
            std::thread::spawn(move || {
                let forwarded = t % 2 == 1;
                let addr = if forwarded { other } else { owner };
                let mut conn = Conn::connect(addr).expect("connect");
                let mut i = t;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let key = &keys[i % keys.len()];
                    i += 32;
                    let r = match conn.get(&set_target(key.as_bytes(), b"f")) {
                        Ok(r) => r,
                        Err(e) => {
                            failures
                                .lock()
                                .expect("lock")
                                .push(format!("write {key} on {addr}: {e}"));
                            return;
                        }
                    };
                    match r.status {
                        200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        503 => {
                            check_overloaded(&r, if forwarded { "forwarded" } else { "direct" });
                            let n = if forwarded {
                                &forwarded_503
                            } else {
                                &direct_503
                            };
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failures
                                .lock()
                                .expect("lock")
                                .push(format!("write {key} on {addr}: {r}"));
                            return;
                        }
                    }
                    if direct_503.load(Ordering::Relaxed) >= 5
                        && forwarded_503.load(Ordering::Relaxed) >= 5
                    {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "writes without an answer: {failures:?}"
    );
    let (d, f, o) = (
        direct_503.load(Ordering::Relaxed),
        forwarded_503.load(Ordering::Relaxed),
        ok.load(Ordering::Relaxed),
    );
    eprintln!("flood: {o} written, {d} direct and {f} forwarded 503s");
    assert!(d >= 5 && f >= 5, "too few 503s: {d} direct, {f} forwarded");
    assert!(o > 0, "no write succeeded during the flood");

    // The node recovers: a write succeeds and is read back.
    let r = get(owner, &set_target(b"flood-after", b"ok"));
    assert_eq!(r.status, 200, "write after the flood: {r}");
    let r = get(other, &get_target(b"flood-after"));
    assert_eq!((r.status, r.text()), (200, "ok".to_string()), "{r}");
    assert!(status_num(owner, &pname, "overloaded_writes") >= 5);
    let m = get(owner, "/metrics").text();
    let series = format!("corekv_overloaded_writes_total{{node=\"{pname}\"}}");
    assert!(
        sample(&m, &series).is_some_and(|v| v >= 5.0),
        "{series} in /metrics:\n{m}"
    );
}

// ---------------------------------------------------------------------------
// /internal/* input

#[test]
fn internal_endpoints_check_token_names_lengths_and_overflow() {
    let c = Cluster::start_with_args(2, &[None], &["--token", "secret"]);
    let p = c.shards[0].primary;
    let tok = Some("secret");
    let k0 = keys_for_shard("int-", 0, 2, 1);
    let r = http(
        p,
        "GET",
        &set_target(k0[0].as_bytes(), b"v"),
        &[("Authorization", "Bearer secret")],
        b"",
    );
    assert_eq!(r.status, 200, "write: {r}");

    // The token guards every /internal path, known or not.
    let pull = pull_body("limits-probe", PullKind::Log { after: 0 }, Duration::ZERO);
    for path in [
        "/internal/pull",
        "/internal/scan",
        "/internal/kv",
        "/internal/nope",
    ] {
        let r = internal(p, path, None, &pull);
        assert_eq!(r.status, 401, "POST {path} without the token: {r}");
        let r = internal(p, path, Some("wrong"), &pull);
        assert_eq!(r.status, 403, "POST {path} with a wrong token: {r}");
    }
    let r = internal(p, "/internal/nope", tok, &pull);
    assert_eq!(r.status, 404, "unknown internal path with the token: {r}");

    // Names of configured nodes that are not this shard's replicas.
    for name in [
        c.shards[1].replica_name(),
        c.shards[1].primary_name(),
        c.shards[0].primary_name(),
    ] {
        for kind in [
            PullKind::Log { after: 0 },
            PullKind::Snapshot { after_key: None },
        ] {
            let body = pull_body(&name, kind.clone(), Duration::ZERO);
            let r = internal(p, "/internal/pull", tok, &body);
            assert_eq!(r.status, 403, "pull {kind:?} as {name}: {r}");
            assert!(r.text().contains("not a replica"), "{r}");
        }
    }
    // Over-long names and keys, `after` at the top of u64, garbage.
    let long_name = "n".repeat(300);
    let long_key = vec![b'k'; 9000];
    let bad_bodies: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "/internal/pull",
            pull_body(&long_name, PullKind::Log { after: 0 }, Duration::ZERO),
            400,
        ),
        (
            "/internal/pull",
            pull_body(
                "limits-probe",
                PullKind::Log { after: u64::MAX },
                Duration::from_millis(100),
            ),
            400,
        ),
        (
            "/internal/pull",
            pull_body(
                &c.shards[0].replica_name(),
                PullKind::Log { after: u64::MAX },
                Duration::ZERO,
            ),
            400,
        ),
        (
            "/internal/pull",
            pull_body(
                "limits-probe",
                PullKind::Snapshot {
                    after_key: Some(long_key.clone()),
                },
                Duration::ZERO,
            ),
            400,
        ),
        (
            "/internal/scan",
            encode_scan(&Scan {
                prefix: long_key.clone(),
                after: None,
                limit: 10,
            }),
            400,
        ),
        (
            "/internal/scan",
            encode_scan(&Scan {
                prefix: Vec::new(),
                after: Some(long_key.clone()),
                limit: 10,
            }),
            400,
        ),
        (
            "/internal/kv",
            encode_kv(&KvRequest {
                op: KvOp::Get,
                key: long_key.clone(),
                min_seq: 0,
                wait_ms: 0,
                cond: Cond::Always,
                style: Style::Rest,
            }),
            413,
        ),
        (
            "/internal/kv",
            encode_kv(&KvRequest {
                op: KvOp::Get,
                key: Vec::new(),
                min_seq: 0,
                wait_ms: 0,
                cond: Cond::Always,
                style: Style::Rest,
            }),
            400,
        ),
        ("/internal/pull", vec![0xff; 3], 400),
        ("/internal/scan", vec![1, 2], 400),
    ];
    for (path, body, want) in &bad_bodies {
        let r = internal(p, path, tok, body);
        assert_eq!(r.status, *want, "POST {path} ({} bytes): {r}", body.len());
    }

    // A forwarded read asking to wait u64::MAX ms is capped (504 after the
    // longest wait, 10 s), not a crash.
    let started = Instant::now();
    let r = internal(
        p,
        "/internal/kv",
        tok,
        &encode_kv(&KvRequest {
            op: KvOp::Get,
            key: k0[0].as_bytes().to_vec(),
            min_seq: u64::MAX,
            wait_ms: u64::MAX,
            cond: Cond::Always,
            style: Style::Query,
        }),
    );
    assert_eq!(r.status, 504, "min_seq u64::MAX with wait_ms u64::MAX: {r}");
    assert!(started.elapsed() < Duration::from_secs(14));

    // The configured replica and observers are still served.
    for name in ["limits-probe".to_string(), c.shards[0].replica_name()] {
        let body = pull_body(&name, PullKind::Log { after: 0 }, Duration::ZERO);
        let r = internal(p, "/internal/pull", tok, &body);
        assert_eq!(r.status, 200, "pull as {name}: {r}");
        assert!(
            matches!(
                decode_reply(&r.body),
                Ok(PullReply::Entries { primary_seq, .. } | PullReply::Trimmed { primary_seq })
                    if primary_seq >= 1
            ),
            "pull as {name}: {r}"
        );
    }
    // Nothing above hurt the node: it serves and replicates.
    assert!(health_ok(p));
    let replica = c.shards[0].replica;
    let ok = wait_until(Duration::from_secs(10), || {
        let r = get(replica, &get_target(k0[0].as_bytes()));
        r.status == 200 && r.body == b"v"
    });
    assert!(ok, "replica lost its primary after the bad pulls");
}

// ---------------------------------------------------------------------------
// Remote addresses that do not resolve

#[test]
fn unresolvable_remote_is_a_warning_and_listed_in_status() {
    // shard1 runs here; shard2's addresses do not resolve; shard3's
    // primary resolves but nothing listens there.
    let ports = free_ports(3);
    let local = ShardAddrs {
        idx: 0,
        name: "shard1".into(),
        primary: SocketAddr::from(([127, 0, 0, 1], ports[0])),
        replica: SocketAddr::from(([127, 0, 0, 1], ports[1])),
    };
    let mut text = config_text(std::slice::from_ref(&local));
    text.push_str(
        "[[shards]]\nname = \"shard2\"\nidx = 1\naddress = \"nohost.invalid:9000\"\nreplica = \"nohost.invalid:9001\"\n",
    );
    let silent = SocketAddr::from(([127, 0, 0, 1], ports[2]));
    text = format!("{text}\n[[shards]]\nname = \"shard3\"\nidx = 2\naddress = \"{silent}\"\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sharding.toml");
    std::fs::write(&config, text).expect("write config");
    let args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--serve",
        &format!("{},{}", local.primary, local.replica),
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    let (child, _out, err) = spawn_corekv(dir.path(), "unresolved", &args).expect("spawn corekv");
    let mut solo = Solo {
        child: Some(child),
        dir,
        stderr: err,
    };
    let mut exited = false;
    let up = wait_until(Duration::from_secs(20), || {
        if let Some(Ok(Some(_))) = solo.child.as_mut().map(Child::try_wait) {
            exited = true;
            return true;
        }
        health_ok(local.primary) && health_ok(local.replica)
    });
    assert!(up && !exited, "corekv did not start: {}", solo.stderr());

    let log = solo.stderr();
    for (name, addr) in [
        ("shard2/primary", "nohost.invalid:9000"),
        ("shard2/replica", "nohost.invalid:9001"),
    ] {
        assert!(
            log.lines().any(|l| l.contains("level=warn")
                && l.contains(name)
                && l.contains(addr)
                && l.contains("resolve")),
            "no start-up warning for {name} at {addr}:\n{log}"
        );
        let r = get(local.primary, "/status");
        assert_eq!(r.status, 200, "{r}");
        let status = r.text();
        let entry =
            format!("{{\"peer\":\"{name}\",\"address\":\"{addr}\",\"reachability\":\"unresolved\"");
        assert!(status.contains(&entry), "/status lacks {entry}:\n{status}");
    }
    // The local nodes are listed as before; requests for the remote
    // shard's keys get 503, and the peer stays listed as unresolved.
    let nodes = status_nodes(local.replica);
    assert_eq!(nodes.len(), 2, "local nodes in /status: {nodes:?}");
    let k1 = keys_for_shard("unres-", 1, 3, 1);
    let r = get(local.primary, &get_target(k1[0].as_bytes()));
    assert_eq!(r.status, 503, "read for the unresolved shard: {r}");
    assert!(r.text().contains("nohost.invalid:9000"), "{r}");
    let status = get(local.replica, "/status").text();
    assert!(
        status.contains("\"peer\":\"shard2/primary\"")
            && status.contains("\"reachability\":\"unresolved\""),
        "{status}"
    );
    let k0 = keys_for_shard("unres-", 0, 3, 1);
    let r = get(local.primary, &set_target(k0[0].as_bytes(), b"v"));
    assert_eq!(r.status, 200, "write for the local shard: {r}");

    // shard3 resolved at start-up (no warning, state unknown); once a
    // request failed to connect, it is listed as unreachable.
    let unknown = format!(
        "{{\"peer\":\"shard3/primary\",\"address\":\"{silent}\",\"reachability\":\"unknown\"}}"
    );
    let status = get(local.primary, "/status").text();
    assert!(
        status.contains(&unknown),
        "/status lacks {unknown}:\n{status}"
    );
    assert!(!solo.stderr().contains("shard3"), "{}", solo.stderr());
    let k2 = keys_for_shard("unres-", 2, 3, 1);
    let r = get(local.primary, &get_target(k2[0].as_bytes()));
    assert_eq!(r.status, 503, "read for the silent shard: {r}");
    let entry = format!(
        "{{\"peer\":\"shard3/primary\",\"address\":\"{silent}\",\"reachability\":\"unreachable\",\"error\":"
    );
    let status = get(local.primary, "/status").text();
    assert!(status.contains(&entry), "/status lacks {entry}:\n{status}");
}
