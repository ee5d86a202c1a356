//! A node whose disk fills up: writes fail fast with 507 and are not
//! applied, reads keep working, `/ready` and `/status` name the storage
//! error, and once space is back writes (on a primary) and replication (on
//! a replica) resume without a restart, with every acknowledged write
//! present.
//!
//! Real processes, real files on small tmpfs mounts made by the test (it
//! must run as root; otherwise it prints why and skips), real HTTP on
//! loopback. Every wait has a deadline; only the PIDs started here are
//! killed, and the mounts are unmounted in `Drop`, also when the test fails.
//! Local helpers only: `tests/common` is shared and not edited here.

mod common;

use common::{
    Resp, ShardAddrs, config_text, enc, free_ports, get, health_ok, http, spawn_corekv,
    status_nodes, wait_until,
};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Size of each value: large enough that a few commits need new pages.
const VALUE: usize = 64 * 1024;
/// How long a node may take to take writes again once space is back.
const RESUME: Duration = Duration::from_secs(30);

/// A tmpfs mounted by this test; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "8m") on `dir`, or says why not.
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes a filler file until the file system is full.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0x5a_u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // Whatever is left is smaller than a chunk: take it byte-sized.
        let small = [0x5a_u8; 512];
        while f.write_all(&small).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// The processes of the test (killed and reaped by PID on drop, before the
/// mounts they use are unmounted) and the mounts.
struct Fixture {
    children: Vec<(Child, PathBuf)>,
    mounts: Vec<Tmpfs>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(_, err)| std::fs::read_to_string(err).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for (c, _) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("==== corekv logs ====\n{}", self.logs());
        }
        self.mounts.clear();
    }
}

fn value_for(key: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE);
    let mut x = key.bytes().fold(0x9e37_79b9_u32, |h, b| {
        h.rotate_left(5) ^ u32::from(b).wrapping_mul(0x0100_0193)
    });
    while v.len() < VALUE {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn put(addr: SocketAddr, key: &str) -> (Resp, Duration) {
    let start = Instant::now();
    let r = http(
        addr,
        "PUT",
        &format!("/v1/kv/{}", enc(key.as_bytes())),
        &[("Content-Type", "application/octet-stream")],
        &value_for(key),
    );
    (r, start.elapsed())
}

fn status_of(addr: SocketAddr, node: &str) -> common::NodeStatus {
    status_nodes(addr)
        .into_iter()
        .find(|(n, _)| n == node)
        .map_or_else(|| panic!("/status on {addr} has no {node}"), |(_, s)| s)
}

fn assert_present(addr: SocketAddr, acked: &[String], what: &str) {
    for key in acked {
        let r = get(addr, &format!("/v1/kv/{}", enc(key.as_bytes())));
        assert_eq!(r.status, 200, "{what}: acknowledged {key} on {addr}: {r}");
        assert!(
            r.body == value_for(key),
            "{what}: acknowledged {key} on {addr} has another value"
        );
    }
}

/// Mounts two tmpfs (primary: 48 MiB, replica: 8 MiB) and starts one
/// process for the primary and one for the replica of a single shard,
/// each with its data dir on its own mount. `None` when mounting is not
/// possible (the reason is printed).
fn start() -> Option<(Fixture, ShardAddrs)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a tmpfs needs root (this test fills a small disk)");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mounts = Vec::new();
    for (name, size) in [("disk-primary", "48m"), ("disk-replica", "8m")] {
        match Tmpfs::mount(&dir.path().join(name), size) {
            Ok(m) => mounts.push(m),
            Err(why) => {
                eprintln!("SKIPPED: cannot mount a tmpfs: {why}");
                return None;
            }
        }
    }
    let ports = free_ports(2);
    let shard = ShardAddrs {
        idx: 0,
        name: "shard1".into(),
        primary: SocketAddr::from(([127, 0, 0, 1], ports[0])),
        replica: SocketAddr::from(([127, 0, 0, 1], ports[1])),
    };
    let config = dir.path().join("sharding.toml");
    std::fs::write(&config, config_text(std::slice::from_ref(&shard))).expect("config");
    let mut fx = Fixture {
        children: Vec::new(),
        mounts,
        dir,
    };
    for (i, addr) in [shard.primary, shard.replica].into_iter().enumerate() {
        let data = fx.mounts[i].dir.join("data");
        let args: Vec<String> = [
            "--config",
            &config.display().to_string(),
            "--data-dir",
            &data.display().to_string(),
            "--serve",
            &addr.to_string(),
            "--cache-mb",
            "4",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        let logs = fx.dir.path().to_path_buf();
        let (child, _out, err) =
            spawn_corekv(&logs, &format!("proc{i}"), &args).expect("spawn corekv");
        fx.children.push((child, err));
    }
    let up = wait_until(Duration::from_secs(20), || {
        health_ok(shard.primary) && health_ok(shard.replica)
    });
    assert!(up, "corekv did not start:\n{}", fx.logs());
    Some((fx, shard))
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: fill, refuse, free, resume, on primary then replica"
)]
fn full_disk_on_primary_and_replica_recovers_without_restart() {
    let Some((fx, shard)) = start() else {
        return;
    };
    let (p, r) = (shard.primary, shard.replica);
    let (pname, rname) = (shard.primary_name(), shard.replica_name());
    let mut acked: Vec<String> = Vec::new();
    for i in 0..5 {
        let key = format!("base-{i}");
        let (resp, _) = put(p, &key);
        assert_eq!(resp.status, 200, "{resp}");
        acked.push(key);
    }
    let caught_up = |fx: &Fixture| {
        let ok = wait_until(RESUME, || {
            let primary = status_of(p, &pname).num("committed_seq");
            let replica = status_of(r, &rname);
            replica.num("applied_seq") == primary
                && replica.str("state").as_deref() == Some("following")
                && replica.str("storage").as_deref() == Some("ok")
        });
        assert!(
            ok,
            "replica did not catch up: {:?} / {:?}\n{}",
            status_of(p, &pname).raw,
            status_of(r, &rname).raw,
            fx.logs()
        );
    };
    caught_up(&fx);

    // ---- The primary's disk fills up.
    let filler = fx.mounts[0].fill();
    let mut refused = None;
    let mut unknown = Vec::new();
    for i in 0..400 {
        let key = format!("full-{i}");
        let (resp, _) = put(p, &key);
        match resp.status {
            200 => acked.push(key),
            507 => {
                refused = Some(resp);
                break;
            }
            // Refused while the store was being reopened: not applied.
            503 => {}
            // Outcome unknown: allowed, but not counted as acknowledged.
            500 => unknown.push(key),
            _ => panic!("unexpected answer to a write on a full disk: {resp}"),
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("no 507 on a full disk\n{}", fx.logs()));
    assert!(
        refused.text().contains("not applied") && refused.text().contains("No space left"),
        "{refused}"
    );
    // Later writes are refused at once, without touching the disk.
    for i in 0..3 {
        let (resp, took) = put(p, &format!("refused-{i}"));
        assert_eq!(resp.status, 507, "{resp}");
        assert!(resp.header("retry-after").is_some(), "{resp}");
        assert!(took < Duration::from_secs(1), "a refusal took {took:?}");
    }
    // Reads keep working; /ready and /status name the cause.
    assert_present(p, &acked, "primary with a full disk");
    let ready = get(p, "/ready");
    assert_eq!(ready.status, 503, "{ready}");
    assert!(
        ready.text().contains(&pname) && ready.text().contains("no-space"),
        "{ready}"
    );
    let st = status_of(p, &pname);
    assert_eq!(st.str("storage").as_deref(), Some("no-space"), "{}", st.raw);
    assert!(
        st.str("storage_error")
            .is_some_and(|e| e.contains("No space left")),
        "{}",
        st.raw
    );
    assert!(st.num("reopens").is_some_and(|n| n >= 1), "{}", st.raw);

    // ---- Space is back: writes resume on their own.
    std::fs::remove_file(&filler).expect("remove filler");
    let key = "after-primary-disk".to_string();
    let resumed = wait_until(RESUME, || put(p, &key).0.status == 200);
    assert!(resumed, "writes did not resume\n{}", fx.logs());
    acked.push(key);
    assert!(
        wait_until(RESUME, || get(p, "/ready").status == 200),
        "{}",
        get(p, "/ready")
    );
    assert_eq!(status_of(p, &pname).str("storage").as_deref(), Some("ok"));
    caught_up(&fx);
    assert_present(p, &acked, "primary after recovery");
    assert_present(r, &acked, "replica after the primary's recovery");

    // ---- The replica's disk fills up; the primary keeps taking writes.
    let filler = fx.mounts[1].fill();
    let mut stuck = false;
    for i in 0..300 {
        let key = format!("while-replica-full-{i}");
        let (resp, _) = put(p, &key);
        assert_eq!(resp.status, 200, "{resp}");
        acked.push(key);
        if status_of(r, &rname).str("storage").as_deref() != Some("ok") {
            stuck = true;
            break;
        }
    }
    assert!(
        stuck,
        "the replica never reported its full disk\n{}",
        fx.logs()
    );
    // Give the primary a few more writes the replica cannot apply yet.
    for i in 0..3 {
        let key = format!("behind-{i}");
        let (resp, _) = put(p, &key);
        assert_eq!(resp.status, 200, "{resp}");
        acked.push(key);
    }
    let ready = get(r, "/ready");
    assert_eq!(ready.status, 503, "{ready}");
    assert!(
        ready.text().contains(&rname) && ready.text().contains("no-space"),
        "{ready}"
    );
    let st = status_of(r, &rname);
    assert!(
        st.str("storage_error")
            .is_some_and(|e| e.contains("No space left")),
        "{}",
        st.raw
    );
    // The replica still serves what it has (the first keys).
    assert_present(r, &acked[..5], "replica with a full disk");
    assert_eq!(get(p, "/ready").status, 200);

    // ---- Space is back: the replica follows again, without a restart.
    std::fs::remove_file(&filler).expect("remove filler");
    caught_up(&fx);
    assert!(
        wait_until(RESUME, || get(r, "/ready").status == 200),
        "{}",
        get(r, "/ready")
    );
    assert_present(r, &acked, "replica after recovery");
    assert_present(p, &acked, "primary at the end");
    eprintln!(
        "acknowledged {} writes; {} answered 500 (outcome unknown)",
        acked.len(),
        unknown.len()
    );
    if std::env::var_os("STORAGE_FAULTS_LOGS").is_some() {
        eprintln!("{}", fx.logs());
    }
}
