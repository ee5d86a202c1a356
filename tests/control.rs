//! The control plane against a real etcd: several `control::start`
//! instances in this test process, each with its own `Roles` and its own
//! local nodes, stand for the processes of a cluster. Bootstrap, ranking by
//! (epoch, seq), failover after a process stops renewing its lease (with
//! the old primary fenced before the new epoch exists), an etcd kill -9 +
//! restart with no election, and planned switchovers; then two real
//! corekv processes with `--etcd` (kill -9 of one, SIGTERM of the other).
//!
//! Every wait is on a deadline. Tests skip (printing why) when there is no
//! etcd binary, unless `COREKV_REQUIRE_ETCD=1`.

mod common;

use common::etcd::Etcd;
use corekv::config::parse;
use corekv::control::{self, ControlConfig, ControlError, ControlHandle, Progress};
use corekv::roles::Roles;
use corekv::topology::Topology;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Two shards, a primary and a replica each. Node ids: 0 shard0/primary,
/// 1 shard0/replica, 2 shard1/primary, 3 shard1/replica.
const CONFIG: &str = "[[shards]]\nname = \"shard0\"\nidx = 0\naddress = \"127.0.0.1:1\"\nreplica = \"127.0.0.1:2\"\n\
                      [[shards]]\nname = \"shard1\"\nidx = 1\naddress = \"127.0.0.1:3\"\nreplica = \"127.0.0.1:4\"\n";
/// Process A runs shard0's primary and shard1's replica.
const A: &[&str] = &["127.0.0.1:1", "127.0.0.1:4"];
/// Process B runs shard1's primary and shard0's replica.
const B: &[&str] = &["127.0.0.1:3", "127.0.0.1:2"];

const TTL: Duration = Duration::from_secs(1);
/// Generous bound for anything that should take one election.
const ELECTION: Duration = Duration::from_secs(6);

/// One simulated corekv process.
struct Sim {
    roles: Arc<Roles>,
    /// (epoch, seq) per node id, as the data plane would report it.
    progress: Arc<Vec<(AtomicU64, AtomicU64)>>,
    handle: Option<ControlHandle>,
}

impl Sim {
    fn start(etcd: &Etcd, prefix: &str, serve: &[&str], progress: &[(u64, u64)]) -> Self {
        let cfg = parse(Path::new("t.toml"), CONFIG).expect("config");
        let serve: Vec<String> = serve.iter().map(|s| (*s).to_string()).collect();
        let topo = Arc::new(Topology::new(&cfg, Some(&serve)).expect("topology"));
        let roles = Arc::new(Roles::controlled(&topo));
        let prog: Arc<Vec<(AtomicU64, AtomicU64)>> = Arc::new(
            (0..topo.node_count())
                .map(|i| {
                    let (e, s) = progress.get(i).copied().unwrap_or((0, 0));
                    (AtomicU64::new(e), AtomicU64::new(s))
                })
                .collect(),
        );
        let p = prog.clone();
        let f: Progress = Arc::new(move |n| {
            p.get(n).map_or((0, 0), |(e, s)| {
                (e.load(Ordering::Acquire), s.load(Ordering::Acquire))
            })
        });
        // No reshard: every shard owns keys.
        let handle = control::start(
            topo,
            roles.clone(),
            f,
            Arc::new(control::NoReshard),
            config(etcd, prefix),
        )
        .expect("start");
        Self {
            roles,
            progress: prog,
            handle: Some(handle),
        }
    }

    fn handle(&self) -> &ControlHandle {
        self.handle.as_ref().expect("running")
    }

    fn set_seq(&self, node: usize, seq: u64) {
        self.progress[node].1.store(seq, Ordering::Release);
    }

    /// Stops renewing without revoking, as a hung or cut-off process.
    fn abandon(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abandon();
        }
    }
}

fn config(etcd: &Etcd, prefix: &str) -> ControlConfig {
    let mut c = ControlConfig::new(vec![etcd.url.clone()]);
    c.prefix = prefix.to_string();
    c.lease_ttl = TTL;
    c.handover_timeout = Duration::from_secs(2);
    c
}

/// Polls every 2 ms until `cond` or `deadline`; returns the time it took.
fn wait(deadline: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until both processes agree on `want` as (primary, epoch) of each
/// shard and the local primaries may write.
fn settled(a: &Sim, b: &Sim, want: [(usize, u64); 2]) {
    let ok = wait(ELECTION, || {
        (0..2).all(|s| a.roles.primary(s) == Some(want[s]) && b.roles.primary(s) == Some(want[s]))
            && want
                .iter()
                .enumerate()
                .all(|(s, &(n, e))| a.roles.may_write(s, n, e) || b.roles.may_write(s, n, e))
    });
    assert!(
        ok.is_some(),
        "roles did not settle on {want:?}: A {:?}/{:?}, B {:?}/{:?}",
        a.roles.primary(0),
        a.roles.primary(1),
        b.roles.primary(0),
        b.roles.primary(1)
    );
}

fn wins(s: &Sim) -> u64 {
    s.handle().status().elections_won.load(Ordering::Relaxed)
}

#[test]
fn bootstrap_elects_the_configured_primaries_in_epoch_1() {
    let Some(etcd) = Etcd::start() else { return };
    let a = Sim::start(&etcd, "/t1", A, &[]);
    let b = Sim::start(&etcd, "/t1", B, &[]);
    settled(&a, &b, [(0, 1), (2, 1)]);
    assert!(a.roles.lease_valid(0) && !a.roles.lease_valid(3));
    assert!(b.roles.lease_valid(2) && !b.roles.lease_valid(1));
    assert_eq!(wins(&a), 1);
    assert_eq!(wins(&b), 1);
    assert!(a.handle().status().reachable());
    assert!(a.handle().status().ready_problem().is_none());
    assert_ne!(a.handle().status().lease_id.load(Ordering::Relaxed), 0);
}

#[test]
fn the_candidate_with_the_most_applied_data_wins_over_config_order() {
    let Some(etcd) = Etcd::start() else { return };
    // shard0's replica (B's node 1) has applied more than its primary.
    let a = Sim::start(&etcd, "/t2", A, &[(3, 50), (0, 0), (3, 9), (3, 9)]);
    let b = Sim::start(&etcd, "/t2", B, &[(0, 0), (3, 80), (3, 9), (3, 9)]);
    // shard1: equal (epoch, seq): config order, the primary.
    settled(&a, &b, [(1, 4), (2, 4)]);
}

#[test]
fn a_higher_epoch_beats_a_higher_seq() {
    let Some(etcd) = Etcd::start() else { return };
    let a = Sim::start(&etcd, "/t2b", A, &[(5, 10), (0, 0), (0, 0), (0, 0)]);
    let b = Sim::start(&etcd, "/t2b", B, &[(0, 0), (4, 900), (0, 0), (0, 0)]);
    settled(&a, &b, [(0, 6), (2, 1)]);
}

#[test]
fn a_silent_primary_is_fenced_before_its_replica_takes_over() {
    let Some(etcd) = Etcd::start() else { return };
    let mut times = Vec::new();
    for trial in 0..5 {
        let prefix = format!("/t3/{trial}");
        let mut a = Sim::start(&etcd, &prefix, A, &[]);
        let b = Sim::start(&etcd, &prefix, B, &[]);
        settled(&a, &b, [(0, 1), (2, 1)]);
        let a_roles = a.roles.clone();
        let t0 = Instant::now();
        a.abandon();
        let mut fenced_at = None;
        let took = wait(ELECTION, || {
            if fenced_at.is_none() && !a_roles.lease_valid(0) {
                fenced_at = Some(t0.elapsed());
            }
            b.roles.primary(0) == Some((1, 2))
        })
        .unwrap_or_else(|| {
            panic!(
                "trial {trial}: no new primary; B sees {:?}",
                b.roles.primary(0)
            )
        });
        let fenced_at = fenced_at.unwrap_or_else(|| {
            panic!("trial {trial}: the old primary could still write when the new one was elected")
        });
        assert!(fenced_at < took);
        assert!(!a_roles.lease_valid(0));
        assert!(b.roles.may_write(0, 1, 2), "the new primary may write");
        // B's shard1 primary was never disturbed.
        assert_eq!(b.roles.primary(1), Some((2, 1)));
        assert!(b.roles.lease_valid(2));
        eprintln!(
            "trial {trial}: old primary fenced after {fenced_at:?}, new primary after {took:?}"
        );
        times.push(took);
        assert!(
            took < TTL + Duration::from_millis(1500),
            "trial {trial}: election took {took:?}"
        );
    }
    times.sort();
    eprintln!(
        "failover with TTL {TTL:?}: p50 {:?}, max {:?} over {} trials",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
}

#[test]
fn a_planned_stop_revokes_and_the_replica_takes_over_at_once() {
    let Some(etcd) = Etcd::start() else { return };
    let mut a = Sim::start(&etcd, "/t3b", A, &[]);
    let b = Sim::start(&etcd, "/t3b", B, &[]);
    settled(&a, &b, [(0, 1), (2, 1)]);
    let a_roles = a.roles.clone();
    let t0 = Instant::now();
    a.handle.take().expect("running").stop();
    assert!(!a_roles.lease_valid(0), "stop fences before it revokes");
    let took = wait(ELECTION, || b.roles.primary(0) == Some((1, 2))).expect("new primary");
    eprintln!(
        "new primary {took:?} after a planned stop (stop took part of {:?})",
        t0.elapsed()
    );
    assert!(took < TTL, "revoking should not wait for the TTL: {took:?}");
    drop(a);
}

#[test]
fn etcd_kill9_and_restart_keeps_roles_without_an_election() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let a = Sim::start(&etcd, "/t4", A, &[]);
    let b = Sim::start(&etcd, "/t4", B, &[]);
    settled(&a, &b, [(0, 1), (2, 1)]);
    let won = wins(&a) + wins(&b);
    etcd.kill9();
    let down = Instant::now();
    assert!(
        wait(Duration::from_secs(3), || !a.handle().status().reachable()).is_some(),
        "A notices etcd is gone"
    );
    assert!(a.handle().status().ready_problem().is_some());
    // The deadline runs out: no primary writes while the lease is unrenewed.
    let fenced = wait(Duration::from_secs(3), || {
        !a.roles.lease_valid(0) && !b.roles.lease_valid(2)
    })
    .expect("primaries stop writing when their lease cannot be renewed");
    eprintln!("primaries fenced {fenced:?} after etcd was killed");
    assert!(fenced <= TTL, "fenced after {fenced:?}");
    // Roles are kept.
    assert_eq!(a.roles.primary(0), Some((0, 1)));
    assert_eq!(b.roles.primary(0), Some((0, 1)));
    std::thread::sleep(Duration::from_millis(300)); // etcd stays down past the TTL
    etcd.restart();
    let back = wait(ELECTION, || {
        a.roles.may_write(0, 0, 1) && b.roles.may_write(1, 2, 1)
    })
    .expect("writes resume on the same lease");
    eprintln!(
        "writable again {back:?} after etcd was healthy ({:?} down in all)",
        down.elapsed()
    );
    assert!(a.handle().status().reachable());
    assert!(a.handle().status().ready_problem().is_none());
    assert_eq!(wins(&a) + wins(&b), won, "no election happened");
    for s in [&a, &b] {
        assert_eq!(s.roles.primary(0), Some((0, 1)));
        assert_eq!(s.roles.primary(1), Some((2, 1)));
    }
    // The watch resumed: a change after the restart is still seen.
    let mut a = a;
    a.abandon();
    assert!(
        wait(ELECTION, || b.roles.primary(0) == Some((1, 2))).is_some(),
        "B elects after the restart"
    );
}

#[test]
fn a_process_restarted_within_the_ttl_waits_for_its_old_lease() {
    let Some(etcd) = Etcd::start() else { return };
    let mut a = Sim::start(&etcd, "/t6", A, &[(0, 5), (0, 0), (0, 0), (0, 9)]);
    let b = Sim::start(&etcd, "/t6", B, &[(0, 0), (0, 5), (0, 9), (0, 0)]);
    settled(&a, &b, [(0, 1), (2, 1)]);
    a.abandon();
    // A comes back at once: its old leader key is still there, on the old
    // lease; it must not write on it.
    let a2 = Sim::start(&etcd, "/t6", A, &[(1, 5), (0, 0), (0, 0), (1, 9)]);
    let saw_old = wait(Duration::from_millis(500), || {
        a2.roles.primary(0) == Some((0, 1))
    });
    assert!(saw_old.is_some(), "A sees its old key");
    assert!(!a2.roles.lease_valid(0), "not on another process's lease");
    // When the old lease expires, an election runs; the configured primary
    // has the same data as the replica and wins on config order.
    settled(&a2, &b, [(0, 2), (2, 1)]);
}

#[test]
fn promote_hands_over_after_the_target_caught_up() {
    let Some(etcd) = Etcd::start() else { return };
    let a = Sim::start(&etcd, "/t5", A, &[(0, 0), (0, 0), (0, 0), (0, 0)]);
    let b = Sim::start(&etcd, "/t5", B, &[]);
    settled(&a, &b, [(0, 1), (2, 1)]);
    a.set_seq(0, 7);
    b.set_seq(1, 3);
    // The replica catches up a little later.
    let prog = b.progress.clone();
    let catch_up = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        prog[1].1.store(7, Ordering::Release);
    });
    let t0 = Instant::now();
    let r = b.handle().promote(0, Some(1)).expect("switchover");
    eprintln!("switchover took {:?}", t0.elapsed());
    catch_up.join().expect("thread");
    assert_eq!((r.shard, r.node, r.epoch), (0, 1, 2));
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "waited for the target"
    );
    assert!(!a.roles.lease_valid(0), "the old primary is fenced");
    settled(&a, &b, [(1, 2), (2, 1)]);
    assert!(b.roles.may_write(0, 1, 2));
    // And back, requested from the other process, default target.
    let r = a.handle().promote(0, None).expect("switchover back");
    assert_eq!((r.node, r.epoch), (0, 3));
    settled(&a, &b, [(0, 3), (2, 1)]);
    assert!(!b.roles.lease_valid(1));
    // Promoting the primary itself is a no-op.
    assert_eq!(a.handle().promote(0, Some(0)).expect("no-op").epoch, 3);
    assert_eq!(
        a.handle().promote(7, None),
        Err(ControlError::UnknownShard(7))
    );
    assert_eq!(
        a.handle().promote(0, Some(2)),
        Err(ControlError::UnknownNode(2))
    );
}

#[test]
fn a_switchover_that_times_out_gives_the_role_back() {
    let Some(etcd) = Etcd::start() else { return };
    let a = Sim::start(&etcd, "/t7", A, &[]);
    let b = Sim::start(&etcd, "/t7", B, &[]);
    settled(&a, &b, [(0, 1), (2, 1)]);
    a.set_seq(0, 10);
    b.set_seq(1, 4); // never catches up
    let r = a.handle().promote(0, Some(1));
    assert!(matches!(r, Err(ControlError::Timeout(_))), "{r:?}");
    let back = wait(ELECTION, || a.roles.may_write(0, 0, 1)).expect("old primary resumes");
    eprintln!("old primary writable again {back:?} after the timeout");
    assert_eq!(b.roles.primary(0), Some((0, 1)));
    // A later switchover works once the target has caught up.
    b.set_seq(1, 10);
    let r = a.handle().promote(0, Some(1)).expect("second try");
    assert_eq!((r.node, r.epoch), (1, 2));
}

/// The leader key of shard `s` under `/corekv` as (node name, epoch).
fn leader_of(client: &control::etcd::Client, s: usize) -> Option<(String, u64)> {
    let (_, kvs) = client
        .range(format!("/corekv/shards/{s}/leader").as_bytes(), false)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&kvs.first()?.value).ok()?;
    Some((v["node"].as_str()?.to_string(), v["epoch"].as_u64()?))
}

#[test]
fn real_processes_fail_over_after_kill9_and_hand_over_on_sigterm() {
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, shards) = common::write_local_config(dir.path(), 2);
    let spawn = |label: &str, serve: [std::net::SocketAddr; 2]| {
        let args: Vec<String> = [
            "--config",
            &config.display().to_string(),
            "--data-dir",
            &dir.path().join(label).display().to_string(),
            "--serve",
            &format!("{},{}", serve[0], serve[1]),
            "--etcd",
            &etcd.url,
            "--lease-ttl-ms",
            "1000",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        common::spawn_corekv(dir.path(), label, &args).expect("spawn corekv")
    };
    // A: shard1's primary and shard2's replica; B the other two.
    let (mut a, _, a_err) = spawn("a", [shards[0].primary, shards[1].replica]);
    let (mut b, _, b_err) = spawn("b", [shards[1].primary, shards[0].replica]);
    let logs = || {
        format!(
            "A:\n{}\nB:\n{}",
            std::fs::read_to_string(&a_err).unwrap_or_default(),
            std::fs::read_to_string(&b_err).unwrap_or_default()
        )
    };
    let client = control::etcd::Client::new(vec![etcd.url.clone()], Duration::from_secs(1));
    let want = |s: usize, name: &str, epoch: u64| {
        let l = leader_of(&client, s);
        l.as_ref().is_some_and(|(n, e)| n == name && *e == epoch)
    };
    assert!(
        wait(Duration::from_secs(20), || want(0, "shard1/primary", 1)
            && want(1, "shard2/primary", 1))
        .is_some(),
        "bootstrap: {:?} {:?}\n{}",
        leader_of(&client, 0),
        leader_of(&client, 1),
        logs()
    );
    a.kill().expect("kill -9 A");
    let _ = a.wait();
    let took = wait(ELECTION, || want(0, "shard1/replica", 2))
        .unwrap_or_else(|| panic!("no failover: {:?}\n{}", leader_of(&client, 0), logs()));
    eprintln!("kill -9 of a process: its shard has a new primary in etcd after {took:?}");
    assert!(want(1, "shard2/primary", 1), "the other shard is untouched");
    // SIGTERM: B revokes its lease at once, long before the TTL.
    // SAFETY: kill(2) on our own unreaped child.
    unsafe {
        libc::kill(i32::try_from(b.id()).expect("pid"), libc::SIGTERM);
    }
    let gone = wait(Duration::from_secs(5), || {
        leader_of(&client, 0).is_none() && leader_of(&client, 1).is_none()
    })
    .unwrap_or_else(|| panic!("leader keys stay after SIGTERM\n{}", logs()));
    eprintln!("SIGTERM: leader keys gone after {gone:?}");
    assert!(gone < TTL, "a planned stop revokes: {gone:?}");
    let _ = b.wait();
}
