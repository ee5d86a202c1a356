//! `--sync-replicas N`: a write is answered 200 only once N replicas have
//! applied it, so it is on the replica the moment the client hears 200;
//! when no replica can apply it in time the answer is 504 (outcome
//! unknown), never 200. A start asking for more replicas than a shard has
//! fails with a clear message.
//!
//! Real processes (primary and replica in separate processes, so the
//! replica pulls over HTTP), real files, real HTTP on loopback; every wait
//! has a deadline and only the PIDs started here are killed.

mod common;

use common::{Cluster, get, get_target, set_target, wait_until, write_local_config};
use std::time::{Duration, Instant};

#[test]
fn a_write_is_on_the_replica_when_it_is_acknowledged() {
    // Shard 0: primary in process 0, replica in process 1.
    let mut c = Cluster::start_with_args(
        1,
        &[Some(vec![(0, true)]), Some(vec![(0, false)])],
        &["--sync-replicas", "1", "--forward-timeout-ms", "1500"],
    );
    let (p, r) = (c.shards[0].primary, c.shards[0].replica);
    for i in 0..50 {
        let key = format!("sync-{i}");
        let value = format!("v{i}");
        let w = get(p, &set_target(key.as_bytes(), value.as_bytes()));
        assert_eq!(w.status, 200, "{w}");
        // No min_seq, no waiting: the replica applied it before the 200.
        let g = get(r, &get_target(key.as_bytes()));
        assert_eq!(
            g.status, 200,
            "{key} not on the replica right after its 200: {g}"
        );
        assert_eq!(g.text().trim_end(), value, "{g}");
    }
    // The replica's process goes away: nothing can be replicated.
    c.kill(1);
    let started = Instant::now();
    let w = get(p, &set_target(b"sync-unreplicated", b"x"));
    assert_eq!(w.status, 504, "a write no replica applied: {w}");
    assert!(w.text().contains("outcome unknown"), "{w}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the 504 took {:?}",
        started.elapsed()
    );
    // The replica comes back and catches up: writes are acknowledged again.
    c.start_proc(1);
    assert!(
        wait_until(Duration::from_secs(20), || {
            get(p, &set_target(b"sync-again", b"y")).status == 200
        }),
        "writes not acknowledged after the replica returned\n{}",
        c.all_logs()
    );
    let g = get(r, &get_target(b"sync-again"));
    assert_eq!(g.text().trim_end(), "y", "{g}");
}

#[test]
fn more_sync_replicas_than_a_shard_has_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _) = write_local_config(dir.path(), 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corekv"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--sync-replicas", "2"])
        .output()
        .expect("run corekv");
    assert!(!out.status.success(), "started with too many sync replicas");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--sync-replicas 2"), "{err}");
}
