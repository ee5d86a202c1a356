//! Online resharding, 2 shards → 4, of a cluster whose primaries etcd
//! decides (`--etcd URL --lease-ttl-ms 2000 --etcd-prefix /rsetcd`, a real
//! single-member etcd on loopback), driven by the same `corekv reshard
//! --config NEW.toml` as a static cluster, and checked in etcd itself
//! (leader, epoch and candidate keys read over its JSON gateway):
//!
//! - under load (as `reshard_under_load` in `tests/reshard.rs`, one
//!   process): no request fails or takes more than 2 s; no election key
//!   (`leader`, `candidates/`) exists for new shard i + 2 while pair i has
//!   not split and no cutover runs; afterwards every node serves every
//!   key (value, `X-Shard` = hash % 4), and shards 2 and 3 have leader keys
//!   naming their configured primaries, in an epoch above that of shards 0
//!   and 1, which `/status` shows too;
//! - after a reshard across processes (the new shards' nodes in two
//!   joining processes, crossed: each runs one new shard's configured
//!   primary and the other's replica), kill -9 of one joining process: new
//!   shard 2's replica is elected in a higher epoch, shard 3 keeps its
//!   leader, every acknowledged write is served, writes to keys of shards 2
//!   and 3 succeed; the killed process, restarted, rejoins without an
//!   election and the cluster is whole;
//! - kill -9 of the one process during the copy, restart with the OLD
//!   config (etcd running): shards 0 and 1 elect again, no election for the
//!   new shards, every acknowledged write is served, writes work, and
//!   re-running the command finishes the reshard;
//! - a switchover of old shard 0 during the copy: new shard 2 follows the
//!   new primary (no election for it), the re-run holds the new primary
//!   and finishes; shard 2's first epoch is above shard 0's new one;
//! - a process that missed a split (down during the announcement, its own
//!   record gone) learns it from etcd's split key before any request.
//!
//! The tests run one at a time (a lock), as in `tests/reshard.rs`. They
//! skip (printing why) when there is no etcd binary, unless
//! `COREKV_REQUIRE_ETCD=1`. Every wait is on a deadline.

#![allow(
    clippy::too_many_lines, // a scenario reads top to bottom
    clippy::cast_possible_truncation, // shard indices below 4
)]

mod common;

use common::etcd::Etcd;
use common::reshard::{
    Book, ElectionWatch, EtcdLeader, EtcdView, ISSUE_LOAD, Load, LoadCfg, NEW_SHARDS, Node,
    OLD_SHARDS, PAUSE_MS, REPLICA_LAG, RESHARD_DEADLINE, RoleView, RsCluster, RsStatus,
    assert_load_served, check_reads, etcd_args, key_name, kill9_restart_resumes, preload, serial,
    set_keys,
};
use common::{START_DEADLINE, fnv1_64, wait_until};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `--etcd-prefix` of every test.
const PREFIX: &str = "/rsetcd";
/// How long a new primary may take after its predecessor's process died:
/// the lease (2 s) runs out, etcd notices (up to 0.5 s), the election
/// (300 ms window), with room for a loaded machine.
const FAILOVER: Duration = Duration::from_secs(15);
/// How long "no election for the new shards" is watched once processes
/// that run their nodes are up: the lease TTL. An election starts at once
/// for a shard without a leader key and takes 300 ms + rank × 500 ms.
const QUIET: Duration = Duration::from_secs(2);

/// A cluster of `two_hosts` kind controlled by `etcd` under [`PREFIX`].
fn start(etcd: &Etcd, two_hosts: bool) -> (RsCluster, EtcdView) {
    let c = RsCluster::start_with_args(None, two_hosts, &etcd_args(&etcd.url, PREFIX));
    let e = c.etcd().expect("a cluster started with --etcd has an etcd");
    (c, e)
}

fn old_owner(h: u64) -> usize {
    (h % OLD_SHARDS as u64) as usize
}

fn new_owner(h: u64) -> usize {
    (h % NEW_SHARDS as u64) as usize
}

/// Preloads `nkeys` keys and checks them on every OLD node; the cluster
/// must be idle with 2 shards.
fn preloaded(c: &RsCluster, nkeys: u32) -> Arc<Book> {
    let book = Book::new(nkeys);
    preload(c, &book);
    check_reads(
        &c.with_current_roles(c.old_nodes()),
        &book,
        &old_owner,
        None,
        REPLICA_LAG,
    )
    .unwrap_or_else(|e| panic!("after the preload: {e}"));
    let st = c.reshard_status();
    assert!(
        st.state == "idle" && st.shards == OLD_SHARDS as u64 && st.pairs.is_empty(),
        "before any reshard /admin/reshard should be idle with 2 shards: {}",
        st.raw
    );
    book
}

/// The primaries (every shard that owns keys has one that takes writes).
fn primaries(c: &RsCluster, deadline: Duration, ctx: &str) -> BTreeMap<usize, RoleView> {
    c.wait_primaries(deadline)
        .unwrap_or_else(|e| panic!("{ctx}: {e}"))
}

/// The load writes through the configured primaries (replicas answer
/// 403): they must hold the role (etcd ranks equal nodes in config order).
fn assert_configured_primaries(c: &RsCluster, prim: &BTreeMap<usize, RoleView>, ctx: &str) {
    for (s, p) in prim {
        assert_eq!(
            p.name,
            c.new[*s].primary_name(),
            "{ctx}: shard {s}'s primary should be its configured one; primaries: {prim:?}"
        );
    }
}

/// Shard `s`'s leader key, which must exist and agree with its epoch key.
fn leader(e: &EtcdView, s: usize, ctx: &str) -> EtcdLeader {
    let l = e
        .leader(s)
        .unwrap_or_else(|err| panic!("{ctx}: {err}"))
        .unwrap_or_else(|| panic!("{ctx}: no leader key for shard {s}; etcd:{}", e.dump()));
    let epoch = e.epoch(s).unwrap_or_else(|err| panic!("{ctx}: {err}"));
    assert_eq!(
        epoch,
        Some(l.epoch),
        "{ctx}: shard {s}'s epoch key should be its leader's epoch {l:?}; etcd:{}",
        e.dump()
    );
    l
}

/// The leader keys of the old shards, which must name the primaries
/// `/status` shows, in the epoch it shows.
fn old_leaders(e: &EtcdView, prim: &BTreeMap<usize, RoleView>, ctx: &str) -> Vec<EtcdLeader> {
    (0..OLD_SHARDS)
        .map(|s| {
            let l = leader(e, s, ctx);
            let p = &prim[&s];
            assert!(
                l.node == p.name && l.epoch == p.epoch,
                "{ctx}: etcd says shard {s}'s leader is {l:?}, /status says {p}"
            );
            l
        })
        .collect()
}

/// No election key of `shards` exists now, nor appears within `window`
/// (polled). Only for moments when no cutover can run (no command).
fn assert_no_election(e: &EtcdView, shards: &[usize], window: Duration, ctx: &str) {
    let end = Instant::now() + window;
    loop {
        for &s in shards {
            let keys = e
                .election_keys(s)
                .unwrap_or_else(|err| panic!("{ctx}: {err}"));
            assert!(
                keys.is_empty(),
                "{ctx}: new shard {s} has not split, yet etcd holds election keys for it: \
                 {keys:?}; etcd:{}",
                e.dump()
            );
        }
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(common::POLL);
    }
}

/// After a finished reshard: new shard `i + 2` has a leader key naming its
/// configured primary in an epoch above `old_epochs[i]` (old shard i's
/// epoch before the reshard), and `/status` agrees. Returns the two
/// leaders.
fn check_new_leaders(
    c: &RsCluster,
    e: &EtcdView,
    old_epochs: &[u64],
    ctx: &str,
) -> Vec<EtcdLeader> {
    let prim = primaries(c, START_DEADLINE, ctx);
    (OLD_SHARDS..NEW_SHARDS)
        .map(|s| {
            let l = leader(e, s, ctx);
            let i = s - OLD_SHARDS;
            assert_eq!(
                l.node,
                c.new[s].primary_name(),
                "{ctx}: new shard {s}'s leader should be its configured primary; etcd:{}",
                e.dump()
            );
            assert!(
                l.epoch > old_epochs[i],
                "{ctx}: new shard {s}'s epoch {} should be above old shard {i}'s {}; etcd:{}",
                l.epoch,
                old_epochs[i],
                e.dump()
            );
            let p = &prim[&s];
            assert!(
                p.name == l.node && p.epoch == l.epoch,
                "{ctx}: etcd says shard {s}'s leader is {l:?}, /status says {p}"
            );
            l
        })
        .collect()
}

/// What an [`ElectionWatch`] saw must hold no violation.
fn check_watch(watch: ElectionWatch, ctx: &str) {
    let log = watch.finish();
    eprintln!(
        "{ctx}: election watch: {} samples; first leader keys of the new shards (with the \
         pair's phase before/after): {:?}",
        log.samples, log.first_leader
    );
    assert!(
        log.violations.is_empty(),
        "{ctx}: {} violations; the first:\n  {}",
        log.violations.len(),
        log.violations
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn etcd_reshard_under_load() {
    let _serial = serial();
    let Some(etcd) = Etcd::start() else { return };
    let (c, e) = start(&etcd, false);
    let book = preloaded(&c, 2000);
    let prim = primaries(&c, START_DEADLINE, "before the reshard");
    assert_configured_primaries(&c, &prim, "before the reshard");
    let old_epochs: Vec<u64> = old_leaders(&e, &prim, "before the reshard")
        .iter()
        .map(|l| l.epoch)
        .collect();
    assert_no_election(
        &e,
        &[2, 3],
        Duration::ZERO,
        "before the reshard (one process)",
    );
    let load = Load::start_running(&c.old_nodes(), &book, ISSUE_LOAD);
    let watch = ElectionWatch::start(&c);
    let started = load.now();
    let run = c.run_reshard(&[], RESHARD_DEADLINE);
    let ended = load.now();
    let after = ended + Duration::from_secs(1);
    wait_until(Duration::from_secs(5), || load.now() >= after);
    let res = load.finish();
    eprintln!(
        "reshard ran from {started:.2?} to {ended:.2?} of the load\nload: {}",
        res.summary()
    );
    assert!(run.success(), "the reshard did not succeed:\n{run}");
    check_watch(watch, "during the reshard under load");
    assert_load_served(&res, started, ended);
    c.assert_finished(&book, "after the reshard under load");
    check_new_leaders(&c, &e, &old_epochs, "after the reshard under load");
    // The old shards still have a leader each.
    let prim = primaries(&c, START_DEADLINE, "after the reshard under load");
    old_leaders(&e, &prim, "after the reshard under load");
}

#[test]
fn etcd_new_shard_fails_over_after_reshard() {
    let _serial = serial();
    let Some(etcd) = Etcd::start() else { return };
    let (mut c, e) = start(&etcd, true);
    let book = preloaded(&c, 600);
    let prim = primaries(&c, START_DEADLINE, "before the reshard");
    let old_epochs: Vec<u64> = old_leaders(&e, &prim, "before the reshard")
        .iter()
        .map(|l| l.epoch)
        .collect();
    // Crossed: joining process 0 runs new shard 2's configured primary and
    // new shard 3's replica, process 1 the other two.
    let (p2, r2) = (c.new[2].primary_name(), c.new[2].replica_name());
    let (p3, r3) = (c.new[3].primary_name(), c.new[3].replica_name());
    c.start_joining_groups(&[&[p2.as_str(), r3.as_str()], &[r2.as_str(), p3.as_str()]]);
    // Their nodes follow the old shards; no election for the new shards.
    assert_no_election(
        &e,
        &[2, 3],
        QUIET,
        "the joining processes are up, before the reshard",
    );
    let watch = ElectionWatch::start(&c);
    let run = c.run_reshard(&[], RESHARD_DEADLINE);
    assert!(run.success(), "the reshard did not succeed:\n{run}");
    check_watch(watch, "during the reshard across processes");
    c.assert_finished(&book, "after the reshard across processes");
    let leaders = check_new_leaders(&c, &e, &old_epochs, "after the reshard across processes");
    let stays3 = leaders[1].clone();

    // kill -9 of joining process 0: new shard 2 loses its primary, new
    // shard 3 its replica.
    c.kill9_joining_group(0);
    let killed = Instant::now();
    let mut seen = None;
    let elected = wait_until(FAILOVER, || {
        seen = e.leader(2).ok().flatten();
        seen.as_ref()
            .is_some_and(|l| l.node == r2 && l.epoch > leaders[0].epoch)
    });
    assert!(
        elected,
        "new shard 2's replica {r2} was not elected within {FAILOVER:?} after its primary's \
         process died (before: {:?}); leader key now {seen:?}; etcd:{}",
        leaders[0],
        e.dump()
    );
    eprintln!(
        "new shard 2: {r2} elected {:.2?} after the kill: {seen:?}",
        killed.elapsed()
    );
    let failed_over = leader(&e, 2, "after the failover of new shard 2");
    assert_eq!(
        e.leader(3)
            .unwrap_or_else(|err| panic!("after the failover: {err}")),
        Some(stays3.clone()),
        "new shard 3 lost only its replica: its leader key should not change; etcd:{}",
        e.dump()
    );
    let prim = primaries(&c, FAILOVER, "after the failover of new shard 2");
    assert!(
        prim[&2].name == r2 && prim[&2].epoch == failed_over.epoch,
        "after the failover /status should show {r2} as shard 2's primary in epoch {}: {}",
        failed_over.epoch,
        prim[&2]
    );
    assert_eq!(prim[&3].name, p3, "new shard 3's primary should not change");
    // Every acknowledged write, from every node still running.
    let live: Vec<Node> = c
        .with_current_roles(c.new_nodes())
        .into_iter()
        .filter(|n| n.name != p2 && n.name != r3)
        .collect();
    check_reads(&live, &book, &new_owner, None, REPLICA_LAG)
        .unwrap_or_else(|err| panic!("after the failover of new shard 2: {err}"));
    // Writes to keys of shards 2 and 3: once the old primary of shard 0
    // forwards to the new primary, through it and through the new primary.
    let st = c.reshard_status();
    let mut last = Ok(());
    let forwards = wait_until(FAILOVER, || {
        last = c.probe_write(&st, c.primary(0), 2);
        last.is_ok()
    });
    assert!(
        forwards,
        "writes to new shard 2 through {} do not reach its new primary within {FAILOVER:?}: \
         {last:?}",
        c.primary(0)
    );
    let moved: Vec<u32> = (0..book.nkeys)
        .filter(|&i| new_owner(fnv1_64(key_name(i).as_bytes())) >= OLD_SHARDS)
        .collect();
    assert!(!moved.is_empty(), "no key of shards 2 and 3");
    let (a, b) = moved.split_at(moved.len() / 2);
    let mut failed = set_keys(c.primary(0), &book, a, None);
    failed.extend(set_keys(prim[&2].addr, &book, b, None));
    assert!(
        failed.is_empty(),
        "writes to keys of shards 2 and 3 after the failover failed ({}): {:?}",
        failed.len(),
        &failed[..failed.len().min(20)]
    );
    check_reads(&live, &book, &new_owner, None, REPLICA_LAG)
        .unwrap_or_else(|err| panic!("after the failover and new writes: {err}"));

    // The killed process comes back: its nodes rejoin as replicas, no
    // election.
    c.restart_joining_group(0);
    let prim = primaries(&c, START_DEADLINE, "after the restart of joining process 0");
    assert_eq!(
        prim[&2].name, r2,
        "new shard 2 should keep its elected primary when {p2} returns"
    );
    assert_eq!(
        leader(&e, 2, "after the restart of joining process 0"),
        failed_over,
        "new shard 2's leader key should not change when {p2} returns"
    );
    assert_eq!(
        leader(&e, 3, "after the restart of joining process 0"),
        stays3,
        "new shard 3's leader key should not change when {r3} returns"
    );
    c.assert_finished(
        &book,
        "after the failover of new shard 2 and the restart of its old primary",
    );
}

#[test]
fn etcd_kill9_during_copy_then_rerun_finishes() {
    let _serial = serial();
    let Some(etcd) = Etcd::start() else { return };
    let (mut c, e) = start(&etcd, false);
    let nkeys = 2000;
    let book = preloaded(&c, nkeys);
    let prim = primaries(&c, START_DEADLINE, "before the reshard");
    assert_configured_primaries(&c, &prim, "before the reshard");
    let before_kill = old_leaders(&e, &prim, "before the reshard");
    let load = Load::start(
        &c.old_nodes(),
        &book,
        LoadCfg {
            conns_per_node: 2,
            set_pct: 30,
            absent_pct: 10,
            pause: Duration::from_millis(5),
        },
    );
    let watch = ElectionWatch::start(&c);
    let mut cmd = c.spawn_reshard(&["--pause-ms", PAUSE_MS]);
    let caught = c.wait_reshard(RESHARD_DEADLINE, Some(&mut cmd), |st| {
        st.state == "resharding" && st.pairs.iter().any(|p| p.phase == "copying")
    });
    let caught = match caught {
        Ok(st) => st,
        Err(err) => {
            let out = cmd.kill();
            drop(load.finish());
            panic!("could not catch the copy: {err}\n{out}");
        }
    };
    check_watch(watch, "until the kill during the copy");
    // Same command line (OLD config), etcd still running: the restart
    // waits until shards 0 and 1 have primaries that take writes again.
    let st = kill9_restart_resumes(&mut c, &mut cmd, load, &caught, "the copy");
    let prim = primaries(&c, START_DEADLINE, "after the restart");
    // The restarted process could not keep the dead lease's leader keys:
    // shards 0 and 1 elected again, in higher epochs.
    let after_restart = old_leaders(&e, &prim, "after the restart");
    for s in 0..OLD_SHARDS {
        assert!(
            after_restart[s].epoch > before_kill[s].epoch,
            "shard {s} should have elected a primary in a new epoch after the restart: before \
             {:?}, now {:?}",
            before_kill[s],
            after_restart[s]
        );
    }
    // The new shards' nodes follow again; nothing elects for a pair that
    // has not split (no command runs now: no cutover can).
    let unsplit: Vec<usize> = st
        .pairs
        .iter()
        .filter(|p| !RsStatus::is_cut_over(p))
        .map(|p| p.to as usize)
        .collect();
    assert!(
        !unsplit.is_empty(),
        "a pair was copying before the kill: {}",
        st.raw
    );
    assert_no_election(&e, &unsplit, QUIET, "after the restart during the copy");
    // Every acknowledged write, on every node, with the owner the stored
    // layout implies; then writes through both primaries.
    c.assert_reads(&book, &|h| st.owner(h), "after the restart during the copy");
    let all: Vec<u32> = (0..nkeys).collect();
    let (a, b) = all.split_at(all.len() / 2);
    let mut failed = set_keys(prim[&0].addr, &book, a, None);
    failed.extend(set_keys(prim[&1].addr, &book, b, None));
    assert!(
        failed.is_empty(),
        "writes after the restart failed ({}): {:?}",
        failed.len(),
        &failed[..failed.len().min(20)]
    );
    let old_epochs: Vec<u64> = after_restart.iter().map(|l| l.epoch).collect();
    let watch = ElectionWatch::start(&c);
    let run = c.run_reshard(&[], RESHARD_DEADLINE);
    assert!(
        run.success(),
        "re-running the reshard after the kill during the copy did not succeed:\n{run}"
    );
    check_watch(watch, "during the re-run");
    c.assert_finished(&book, "after the kill during the copy and the re-run");
    check_new_leaders(
        &c,
        &e,
        &old_epochs,
        "after the kill during the copy and the re-run",
    );
}

/// A switchover of old shard 0 during the copy: new shard 2's nodes follow
/// the new primary of shard 0 (they copy whichever node is primary now),
/// no election is held for shard 2, and the command, re-run, finds the new
/// primary (`/admin/reshard` names each pair's source and target), holds
/// it and finishes; shard 2's first epoch is above shard 0's new one.
#[test]
fn etcd_old_shard_switchover_during_the_copy_then_the_reshard_finishes() {
    let _serial = serial();
    let Some(etcd) = Etcd::start() else { return };
    let (c, e) = start(&etcd, false);
    let book = preloaded(&c, 1000);
    let prim = primaries(&c, START_DEADLINE, "before the reshard");
    assert_configured_primaries(&c, &prim, "before the reshard");
    let mut cmd = c.spawn_reshard(&["--pause-ms", "60000"]);
    let caught = c.wait_reshard(RESHARD_DEADLINE, Some(&mut cmd), |st| {
        st.state == "resharding" && st.pairs.iter().all(|p| p.phase == "copying")
    });
    let out = cmd.kill();
    caught.unwrap_or_else(|err| panic!("could not catch the copy: {err}\n{out}"));

    let r = common::http(
        c.primary(0),
        "POST",
        &format!("/admin/promote?shard={}", c.new[0].name),
        &[],
        b"",
    );
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 200, "switchover of shard 0: {body}");
    let moved = leader(&e, 0, "after the switchover");
    assert_eq!(
        moved.node,
        format!("{}/replica", c.new[0].name),
        "after the switchover shard 0's leader should be its replica; etcd:{}",
        e.dump()
    );
    assert_no_election(&e, &[2, 3], Duration::from_secs(1), "after the switchover");

    // Writes to keys of shard 0 after the switchover reach new shard 2's
    // nodes: they follow the new primary.
    let keys: Vec<u32> = (0..1000u32)
        .filter(|&i| old_owner(fnv1_64(key_name(i).as_bytes())) == 0)
        .take(50)
        .collect();
    let failed = set_keys(c.primary(1), &book, &keys, None);
    assert!(failed.is_empty(), "writes after the switchover: {failed:?}");
    let replica0 = c.new[0].replica.to_string();
    let mut last = String::new();
    let followed = wait_until(REPLICA_LAG, || {
        let st = c.reshard_status();
        last.clone_from(&st.raw);
        let v: serde_json::Value = serde_json::from_str(&st.raw).unwrap_or_default();
        let p = &v["pairs"][0];
        p["source"] == replica0.as_str()
            && p["source_seq"].as_u64().is_some()
            && p["source_seq"] == p["target_seq"]
    });
    assert!(
        followed,
        "new shard 2 did not follow shard 0's new primary {replica0}: {last}"
    );

    let run = c.run_reshard(&[], RESHARD_DEADLINE);
    assert!(run.success(), "the re-run did not succeed:\n{run}");
    c.assert_finished(&book, "after a switchover of an old shard during the copy");
    check_new_leaders(&c, &e, &[moved.epoch, 1], "after the reshard");
}

/// With `--etcd` a pair's split is committed in etcd: a process that was
/// down when the command announced a split (and whose own record of it is
/// gone) learns it from etcd as soon as it is back, before any request
/// reaches it; the new shard it runs elects a primary again (it would not
/// for a pair it thought unsplit), and every acknowledged write is served.
#[test]
fn etcd_a_process_that_missed_a_split_learns_it_from_etcd() {
    let _serial = serial();
    let Some(etcd) = Etcd::start() else { return };
    let (mut c, e) = start(&etcd, true);
    let book = preloaded(&c, 600);
    c.start_joining();
    let mut cmd = c.spawn_reshard(&["--pause-ms", "3000"]);
    let caught = c.wait_reshard(RESHARD_DEADLINE, Some(&mut cmd), |st| {
        st.state == "resharding" && st.pair(0).is_some_and(RsStatus::is_cut_over)
    });
    let out = cmd.kill();
    let caught = caught.unwrap_or_else(|err| panic!("could not catch a cutover: {err}\n{out}"));
    let split = e
        .range(&e.shard_key(0, "split-to-4"), false)
        .unwrap_or_else(|err| panic!("etcd: {err}"));
    assert_eq!(
        split.len(),
        1,
        "pair 0 cut over, but etcd has no split key for it:{}",
        e.dump()
    );
    c.kill9_joining_forgetting_splits();
    c.start_joining();
    // No request has reached it: the split comes from etcd.
    let new_node = c.new[2].primary;
    let mut last = String::new();
    let learned = wait_until(START_DEADLINE, || {
        c.reshard_status_at(new_node)
            .inspect(|st| last.clone_from(&st.raw))
            .is_ok_and(|st| st.pair(0).is_some_and(RsStatus::is_cut_over))
    });
    assert!(
        learned,
        "the restarted process did not learn pair 0's split from etcd: {last}"
    );
    c.assert_reads(
        &book,
        &|h| caught.owner(h),
        "after the restart of the process that missed the split",
    );
    let run = c.run_reshard(&[], RESHARD_DEADLINE);
    assert!(run.success(), "the re-run did not succeed:\n{run}");
    c.assert_finished(&book, "after a split learned from etcd");
}
