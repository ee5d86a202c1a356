//! Disk space under an overwrite workload, and the replication log's
//! bound in bytes.
//!
//! Real processes, real redb files in a temporary directory, real HTTP on
//! loopback; every wait has a deadline; only the PIDs started here are
//! killed (the harness's `Cluster` reaps its children in `Drop`). Local
//! helpers only: `tests/common` is shared and not edited here.

#![allow(
    clippy::cast_possible_truncation, // a round number and byte counts far below 2^32
)]

mod common;

use common::{Cluster, enc, get, http, status_nodes, wait_until};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

const VALUE: usize = 64 * 1024;
const SETTLE: Duration = Duration::from_secs(30);

fn value_for(key: &str, round: usize) -> Vec<u8> {
    let mut v = vec![0u8; VALUE];
    let mut x = key.bytes().fold(round as u32 ^ 0x9e37_79b9, |h, b| {
        h.rotate_left(5) ^ u32::from(b)
    });
    for chunk in v.chunks_mut(4) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    v
}

fn put(addr: SocketAddr, key: &str, value: &[u8]) {
    let r = http(
        addr,
        "PUT",
        &format!("/v1/kv/{}", enc(key.as_bytes())),
        &[("Content-Type", "application/octet-stream")],
        value,
    );
    assert_eq!(r.status, 200, "PUT {key}: {r}");
}

fn field(addr: SocketAddr, node: &str, name: &str) -> Option<u64> {
    status_nodes(addr)
        .into_iter()
        .find(|(n, _)| n == node)
        .and_then(|(_, s)| s.num(name))
}

/// (disk blocks in bytes, length) of a file.
fn file_size(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.blocks() * 512, m.len())
}

/// 150 keys of 64 KiB written four times (one create, three overwrites)
/// by four writers: once the replica has applied everything and the log is
/// trimmed, the two redb files (primary + replica) take at most 2.5 times
/// the logical bytes of primary + replica on disk. Before large entries
/// were kept in pieces, each 64 KiB value took a 128 KiB page: 6.1 times
/// on disk, 9.7 times in length.
///
/// Length: redb grows a small file by doubling it, and whether the
/// primary's file doubles once more during the writes depends on how far
/// the replica lagged (the primary's log may hold up to its data's size
/// meanwhile, by design: README "Disk space"). The two files usually end at
/// 1.96 times the logical bytes in length (primary 12.8 MB, replica 25.7
/// MB); about one run in fifteen, with the other test of this file beside
/// it, at 2.29 or 2.61 times (the primary's file doubled; the bytes on disk
/// stayed under 1.9 times). The length bound, 4 times, leaves room for one
/// more doubling of either file and still fails the layout before pieces.
#[test]
fn overwrites_stay_within_the_space_bound() {
    const KEYS: usize = 150;
    const ROUNDS: usize = 4;
    let c = Cluster::start(1);
    let sh = c.shards[0].clone();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("space-{i:03}")).collect();
    for round in 0..ROUNDS {
        std::thread::scope(|s| {
            for part in keys.chunks(KEYS.div_ceil(4)) {
                s.spawn(move || {
                    for k in part {
                        put(sh.primary, k, &value_for(k, round));
                    }
                });
            }
        });
    }
    let (pname, rname) = (sh.primary_name(), sh.replica_name());
    let settled = wait_until(SETTLE, || {
        let committed = field(sh.primary, &pname, "committed_seq");
        committed == Some((KEYS * ROUNDS) as u64)
            && field(sh.primary, &rname, "applied_seq") == committed
            && field(sh.primary, &pname, "log_entries").is_none_or(|n| n == 0)
            && field(sh.primary, &pname, "space_seq").is_none_or(|s| Some(s) == committed)
    });
    assert!(settled, "did not settle: {:?}", status_nodes(sh.primary));
    // Every value is the last round's, on both nodes.
    for k in keys.iter().step_by(7) {
        for addr in [sh.primary, sh.replica] {
            let r = get(addr, &format!("/v1/kv/{}", enc(k.as_bytes())));
            assert_eq!(r.status, 200, "{r}");
            assert!(r.body == value_for(k, ROUNDS - 1), "{k} on {addr}");
        }
    }
    let logical: u64 = keys.iter().map(|k| (k.len() + VALUE) as u64).sum();
    if let Some(data) = field(sh.primary, &pname, "data_bytes") {
        // The published figures may lag the last commit by a second.
        assert!(
            wait_until(SETTLE, || {
                field(sh.primary, &pname, "data_bytes") == Some(logical)
                    && field(sh.primary, &rname, "data_bytes") == Some(logical)
            }),
            "data_bytes {data}, logical {logical}"
        );
    }
    // The replica logs what it applies (so that, promoted, it could serve
    // it), within the smaller of the byte bound and its data's size.
    let replica_log = |name: &str| field(sh.primary, &rname, name);
    assert!(
        wait_until(SETTLE, || replica_log("log_entries").is_some_and(|n| n > 0)
            && replica_log("space_seq") == Some((KEYS * ROUNDS) as u64)),
        "the replica logs nothing: {:?}",
        status_nodes(sh.primary)
    );
    let (rlog, rentries) = (
        replica_log("log_bytes").expect("log_bytes"),
        replica_log("log_entries").expect("log_entries"),
    );
    eprintln!("replica log: {rentries} entries, {rlog} bytes (data {logical})");
    assert!(rlog <= logical, "replica log {rlog} bytes, data {logical}");
    assert!(
        rentries < (KEYS * ROUNDS) as u64,
        "replica log not trimmed: {rentries}"
    );
    let dir = &c.procs[0].data_dir;
    let (pdisk, plen) = file_size(&dir.join("shard1-primary.redb"));
    let (rdisk, rlen) = file_size(&dir.join("shard1-replica.redb"));
    let both = 2 * logical;
    let (disk, len) = (
        (pdisk + rdisk) as f64 / both as f64,
        (plen + rlen) as f64 / both as f64,
    );
    eprintln!(
        "logical {logical} per node; primary {pdisk} on disk / {plen} long, replica {rdisk} / {rlen}: \
         {disk:.2}x on disk, {len:.2}x in length"
    );
    assert!(disk <= 2.5, "disk use {disk:.2}x the logical bytes");
    assert!(len <= 4.0, "file length {len:.2}x the logical bytes");
}

/// With the replica down, the primary's log is trimmed to
/// `--log-retention-mb` (1 MiB here; the data is smaller), not kept for
/// 1,000,000 entries; the replica re-seeds when it comes back and ends with
/// the primary's data.
#[test]
fn the_log_is_bounded_by_bytes_and_a_replica_behind_it_reseeds() {
    let mut c = Cluster::start_with_args(
        1,
        &[Some(vec![(0, true)]), Some(vec![(0, false)])],
        &["--log-retention-mb", "1"],
    );
    let sh = c.shards[0].clone();
    let pname = sh.primary_name();
    put(sh.primary, "first", &value_for("first", 0));
    assert!(
        wait_until(SETTLE, || field(
            sh.replica,
            &sh.replica_name(),
            "applied_seq"
        ) == Some(1)),
        "replica did not follow"
    );
    c.kill(1);
    // 40 writes of 64 KiB over 4 keys: 2.5 MiB of log, 256 KiB of data.
    for i in 0..40 {
        let k = format!("hot-{}", i % 4);
        put(sh.primary, &k, &value_for(&k, i));
    }
    // The space figures are published about once a second: wait for ones
    // read after the last write.
    let bounded = wait_until(SETTLE, || {
        field(sh.primary, &pname, "space_seq") == Some(41)
            && field(sh.primary, &pname, "log_bytes").is_some_and(|b| b <= 1 << 20)
    });
    assert!(
        bounded,
        "log not trimmed to 1 MiB: {:?}",
        status_nodes(sh.primary)
    );
    let entries = field(sh.primary, &pname, "log_entries").unwrap_or(0);
    assert!((1..40).contains(&entries), "{entries} log entries");
    c.start_proc(1);
    assert!(
        wait_until(SETTLE, || c.all_logs().contains("re-seeded at seq")),
        "the replica did not re-seed:\n{}",
        c.all_logs()
    );
    assert!(
        wait_until(SETTLE, || field(
            sh.replica,
            &sh.replica_name(),
            "applied_seq"
        ) == Some(41)),
        "replica did not catch up after its re-seed"
    );
    for k in ["first", "hot-0", "hot-1", "hot-2", "hot-3"] {
        let want = get(sh.primary, &format!("/v1/kv/{k}"));
        let got = get(sh.replica, &format!("/v1/kv/{k}"));
        assert_eq!((got.status, want.status), (200, 200), "{k}");
        assert!(got.body == want.body, "{k} differs on the replica");
    }
}
