//! The control plane's state machine, on its own thread: it reads the
//! shards' keys once, then follows the watch (a helper thread turns the
//! stream into [`Msg`]s), runs elections and switchovers as timed stages
//! (never blocking on anything but one etcd call), and records every
//! change of primary in `Roles`. The protocol is described in
//! `control/mod.rs`; a reshard's new shards are handled in `reshard`.
//!
//! Depends on `roles`, `topology`, `control::{etcd, lease}`, `log`, and on
//! the layout only through a [`ReshardView`].

use super::etcd::{
    self, Client, EtcdError, Kv, WatchItem, cmp_create, cmp_mod, op_delete, op_get, op_put,
};
use super::lease::Shared;
use super::{ControlConfig, ControlError, ControlStatus, Progress, Promoted, ReshardView};
use crate::log::Level;
use crate::log_at;
use crate::roles::Roles;
use crate::topology::{NodeInfo, Topology};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod reshard;

/// Retry interval after a failed etcd call.
const RETRY: Duration = Duration::from_millis(200);
/// How often progress is polled during a switchover.
const POLL: Duration = Duration::from_millis(10);
/// A fenced primary's seq must stay put this long before it hands over.
const QUIET: Duration = Duration::from_millis(50);
/// How often the state machine looks at the layout (a reshard's new
/// shards, splits) when nothing else wakes it.
const LAYOUT_CHECK: Duration = Duration::from_millis(50);

/// What the control thread is told.
pub(super) enum Msg {
    Watch(WatchItem),
    LeaseGranted(i64),
    LeaseLost(i64),
    Promote {
        shard: usize,
        to: Option<usize>,
        reply: flume::Sender<Result<Promoted, ControlError>>,
    },
    /// A reshard's cutover: local `node` becomes new shard `shard`'s first
    /// primary.
    ReshardPromote {
        shard: usize,
        node: usize,
        reply: flume::Sender<Result<Promoted, ControlError>>,
    },
    /// A reshard's cutover that did not commit: new shard `shard` follows
    /// its old shard again.
    ReshardUndo {
        shard: usize,
        reply: flume::Sender<Result<(), ControlError>>,
    },
    /// A reshard's commit point: old shard `shard`, led by local `node`,
    /// splits (recorded in etcd, then here).
    ReshardSplit {
        shard: usize,
        node: usize,
        reply: flume::Sender<Result<(), ControlError>>,
    },
    Stop,
}

/// The leader key of a shard.
#[derive(Debug, Clone)]
struct Leader {
    name: String,
    /// The node it names (`None`: a name this config does not know).
    node: Option<usize>,
    epoch: u64,
    lease: i64,
    mod_rev: i64,
}

/// The handover key of a shard.
#[derive(Debug, Clone)]
struct Handover {
    to: String,
    from_epoch: u64,
    seq: Option<u64>,
    lease: i64,
    mod_rev: i64,
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Write the candidate keys.
    Announce,
    /// Read the candidates and rank them.
    Collect,
    /// The best local node campaigns (at `Election::next`).
    Campaign(usize),
}

#[derive(Debug)]
struct Election {
    started: Instant,
    next: Instant,
    stage: Stage,
}

/// This process's primary of a shard during a switchover away from it.
#[derive(Debug)]
struct OldSide {
    node: usize,
    deadline: Instant,
    stage: OldStage,
}

#[derive(Debug)]
enum OldStage {
    /// Fenced; waiting for the seq to stop moving.
    Quiesce { seq: u64, since: Instant },
    /// The seq is published; waiting for the target.
    Published,
    /// Taking the role back (timeout or handover withdrawn).
    Resume,
}

/// This process's target node of a switchover.
#[derive(Debug)]
struct NewSide {
    node: usize,
    seq: u64,
    handover_rev: i64,
    leader_rev: i64,
    from_epoch: u64,
    deadline: Instant,
}

/// A switchover this process asked for.
struct Pending {
    shard: usize,
    target: usize,
    from_epoch: u64,
    handover_rev: i64,
    deadline: Instant,
    reply: flume::Sender<Result<Promoted, ControlError>>,
}

#[derive(Debug, Default)]
struct ShardState {
    leader: Option<Leader>,
    /// Revision of the last leader event applied (put or delete).
    leader_rev: i64,
    /// Highest epoch seen in etcd for the shard.
    epoch_seen: u64,
    handover: Option<Handover>,
    handover_rev: i64,
    election: Option<Election>,
    /// Candidate keys were written (to delete once a leader exists).
    announced: bool,
    old_side: Option<OldSide>,
    new_side: Option<NewSide>,
}

/// What a key under `P/shards/` is.
enum KeyKind {
    Leader,
    Epoch,
    Handover,
    /// `split-to-T`: the shard split in the reshard to T shards.
    Split(usize),
    Other,
}

pub(super) struct Engine {
    cfg: ControlConfig,
    topo: Arc<Topology>,
    roles: Arc<Roles>,
    progress: Progress,
    /// The reshard as the layout says (new shards that copy, splits).
    reshard: Arc<dyn ReshardView>,
    status: Arc<ControlStatus>,
    shared: Arc<Shared>,
    client: Client,
    /// For the watch thread.
    tx: flume::Sender<Msg>,
    watch_stop: Arc<AtomicBool>,
    watching: bool,
    /// `P/shards/`.
    root: String,
    lease: i64,
    synced: bool,
    shards: Vec<ShardState>,
    pending: Vec<Pending>,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn parse_json(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

fn field_u64(v: &Value, name: &str) -> Option<u64> {
    v.get(name).and_then(Value::as_u64)
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: ControlConfig,
        topo: Arc<Topology>,
        roles: Arc<Roles>,
        progress: Progress,
        reshard: Arc<dyn ReshardView>,
        status: Arc<ControlStatus>,
        shared: Arc<Shared>,
        tx: flume::Sender<Msg>,
        watch_stop: Arc<AtomicBool>,
    ) -> Self {
        let client = Client::new(cfg.endpoints.clone(), cfg.request_timeout);
        let root = format!("{}/shards/", cfg.prefix);
        let shards = (0..topo.shard_count())
            .map(|_| ShardState::default())
            .collect();
        Self {
            cfg,
            topo,
            roles,
            progress,
            reshard,
            status,
            shared,
            client,
            tx,
            watch_stop,
            watching: false,
            root,
            lease: 0,
            synced: false,
            shards,
            pending: Vec::new(),
        }
    }

    pub(super) fn run(mut self, msgs: &flume::Receiver<Msg>) {
        loop {
            if !self.synced {
                self.sync();
            }
            let msg = match self.next_wake() {
                Some(at) => msgs.recv_deadline(at),
                None => msgs
                    .recv()
                    .map_err(|_| flume::RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Stop) | Err(flume::RecvTimeoutError::Disconnected) => break,
                Ok(m) => self.handle(m),
                Err(flume::RecvTimeoutError::Timeout) => {}
            }
            self.tick();
        }
        self.watch_stop.store(true, Ordering::Release);
        for p in self.pending.drain(..) {
            let _ = p.reply.send(Err(ControlError::Stopped));
        }
    }

    // -----------------------------------------------------------------
    // Keys

    fn key(&self, shard: usize, suffix: &str) -> Vec<u8> {
        format!("{}{shard}/{suffix}", self.root).into_bytes()
    }

    fn leader_key(&self, shard: usize) -> Vec<u8> {
        self.key(shard, "leader")
    }

    fn epoch_key(&self, shard: usize) -> Vec<u8> {
        self.key(shard, "epoch")
    }

    fn handover_key(&self, shard: usize) -> Vec<u8> {
        self.key(shard, "handover")
    }

    fn candidate_key(&self, shard: usize, name: &str) -> Vec<u8> {
        self.key(shard, &format!("candidates/{name}"))
    }

    fn parse_key(&self, key: &[u8]) -> Option<(usize, KeyKind)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.root)?;
        let (shard, what) = rest.split_once('/')?;
        let shard: usize = shard.parse().ok()?;
        if shard >= self.shards.len() {
            return None;
        }
        let kind = match what {
            "leader" => KeyKind::Leader,
            "epoch" => KeyKind::Epoch,
            "handover" => KeyKind::Handover,
            other => match other.strip_prefix("split-to-").map(str::parse) {
                Some(Ok(to)) => KeyKind::Split(to),
                _ => KeyKind::Other,
            },
        };
        Some((shard, kind))
    }

    fn node_named(&self, shard: usize, name: &str) -> Option<usize> {
        self.topo
            .nodes()
            .find(|n| n.shard == shard && n.name == name)
            .map(|n| n.id)
    }

    fn locals(&self, shard: usize) -> Vec<usize> {
        self.topo
            .nodes()
            .filter(|n| n.local && n.shard == shard)
            .map(|n| n.id)
            .collect()
    }

    fn info(&self, node: usize) -> Option<&NodeInfo> {
        self.topo.node(node)
    }

    fn name(&self, node: usize) -> &str {
        self.info(node).map_or("?", |n| n.name.as_str())
    }

    fn is_local(&self, node: usize) -> bool {
        self.info(node).is_some_and(|n| n.local)
    }

    fn error(&self, what: &str, e: &EtcdError) {
        self.status.record_error(e);
        log_at!(Level::Debug, "control", "{what}: {e}");
    }

    // -----------------------------------------------------------------
    // Loop

    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        at(now + LAYOUT_CHECK);
        if !self.synced {
            at(now + RETRY);
        }
        for st in &self.shards {
            if let Some(e) = &st.election {
                at(e.next);
            }
            if let Some(o) = &st.old_side {
                match o.stage {
                    OldStage::Quiesce { .. } | OldStage::Resume => at(now + POLL),
                    OldStage::Published => at(o.deadline),
                }
            }
            if st.new_side.is_some() {
                at(now + POLL);
            }
        }
        for p in &self.pending {
            at(p.deadline);
        }
        wake
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Watch(item) => self.on_watch(item),
            Msg::LeaseGranted(id) => {
                self.lease = id;
                // Elections that waited for a lease go on at once.
                let now = Instant::now();
                for st in &mut self.shards {
                    if let Some(e) = &mut st.election {
                        e.next = now;
                    }
                }
            }
            Msg::LeaseLost(id) => {
                if self.lease == id {
                    self.lease = 0;
                }
                for st in &mut self.shards {
                    st.old_side = None;
                    st.new_side = None;
                    st.announced = false;
                    if let Some(e) = &mut st.election {
                        e.stage = Stage::Announce;
                    }
                }
            }
            Msg::Promote { shard, to, reply } => self.promote(shard, to, reply),
            Msg::ReshardPromote { shard, node, reply } => {
                let _ = reply.send(self.reshard_promote(shard, node));
            }
            Msg::ReshardUndo { shard, reply } => {
                let _ = reply.send(self.reshard_undo(shard));
            }
            Msg::ReshardSplit { shard, node, reply } => {
                let _ = reply.send(self.reshard_split(shard, node));
            }
            Msg::Stop => {}
        }
    }

    fn tick(&mut self) {
        self.follow_layout();
        let now = Instant::now();
        for s in 0..self.shards.len() {
            if self.shards[s]
                .election
                .as_ref()
                .is_some_and(|e| e.next <= now)
            {
                self.step_election(s);
            }
            if self.shards[s].old_side.is_some() {
                self.step_old_side(s);
            }
            if self.shards[s].new_side.is_some() {
                self.step_new_side(s);
            }
        }
        let (expired, live): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.pending = live;
        for p in expired {
            let key = self.handover_key(p.shard);
            let _ = self
                .client
                .txn(&[cmp_create(&key, p.handover_rev)], &[op_delete(&key)], &[]);
            let _ = p.reply.send(Err(ControlError::Timeout(format!(
                "{} did not take over shard {} within {} ms",
                self.name(p.target),
                p.shard,
                ms(self.cfg.handover_timeout)
            ))));
        }
    }

    /// Reads every shard key and brings the state up to date; starts the
    /// watch after the first read.
    fn sync(&mut self) {
        let (rev, kvs) = match self.client.range(self.root.as_bytes(), true) {
            Ok(r) => r,
            Err(e) => return self.error("reading the shard keys", &e),
        };
        self.status.record_ok();
        // Splits first: a leader below may be one that knew of them.
        for kv in &kvs {
            if let Some((s, KeyKind::Split(to))) = self.parse_key(&kv.key) {
                self.split_seen(s, to);
            }
        }
        for s in 0..self.shards.len() {
            let leader = self.leader_key(s);
            let handover = self.handover_key(s);
            let epoch = self.epoch_key(s);
            if let Some(e) = kvs
                .iter()
                .find(|kv| kv.key == epoch)
                .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u64>().ok())
            {
                self.shards[s].epoch_seen = self.shards[s].epoch_seen.max(e);
            }
            match kvs.iter().find(|kv| kv.key == leader) {
                Some(kv) => self.leader_put(s, kv),
                None => self.leader_delete(s, rev),
            }
            match kvs.iter().find(|kv| kv.key == handover) {
                Some(kv) => self.handover_put(s, kv),
                None => self.handover_delete(s, rev),
            }
        }
        self.synced = true;
        if !self.watching {
            self.start_watch(rev + 1);
        }
    }

    fn start_watch(&mut self, from: i64) {
        let endpoints = self.cfg.endpoints.clone();
        let prefix = self.root.clone().into_bytes();
        let idle = self.cfg.watch_idle;
        let stop = self.watch_stop.clone();
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("control watch".into())
            .spawn(move || {
                // After a compaction this watch ends: the state is read
                // again and a new watch starts from that read's revision.
                etcd::watch(&endpoints, &prefix, from, idle, &stop, |item| {
                    if stop.load(Ordering::Acquire) {
                        return false;
                    }
                    let last = item == WatchItem::Compacted;
                    tx.send(Msg::Watch(item)).is_ok() && !last
                });
            });
        match spawned {
            Ok(_) => self.watching = true,
            Err(e) => log_at!(
                Level::Error,
                "control",
                "cannot start the watch thread: {e}"
            ),
        }
    }

    fn on_watch(&mut self, item: WatchItem) {
        match item {
            WatchItem::Put(kv) => match self.parse_key(&kv.key) {
                Some((s, KeyKind::Leader)) => self.leader_put(s, &kv),
                Some((s, KeyKind::Handover)) => self.handover_put(s, &kv),
                Some((s, KeyKind::Epoch)) => {
                    if let Some(e) = std::str::from_utf8(&kv.value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        self.shards[s].epoch_seen = self.shards[s].epoch_seen.max(e);
                    }
                }
                Some((s, KeyKind::Split(to))) => self.split_seen(s, to),
                Some((_, KeyKind::Other)) | None => {}
            },
            WatchItem::Delete(kv) => match self.parse_key(&kv.key) {
                Some((s, KeyKind::Leader)) => self.leader_delete(s, kv.mod_revision),
                Some((s, KeyKind::Handover)) => self.handover_delete(s, kv.mod_revision),
                _ => {}
            },
            WatchItem::Compacted => {
                log_at!(
                    Level::Warn,
                    "control",
                    "watch fell behind a compaction; reading the shard keys again"
                );
                self.synced = false;
                self.watching = false;
            }
            WatchItem::Connected => {
                log_at!(Level::Debug, "control", "watching {}", self.root);
            }
            WatchItem::Broken(why) => {
                // Not counted as etcd unreachable: a quiet stream is also
                // reconnected; the lease thread tells whether etcd answers.
                log_at!(Level::Debug, "control", "watch reconnects: {why}");
                self.status.note_error(&why);
            }
        }
    }

    // -----------------------------------------------------------------
    // Leader changes

    /// The leader key our own successful transaction wrote at `revision`
    /// (on our lease), as the watch will report it.
    fn own_leader_kv(&self, key: Vec<u8>, value: String, revision: i64) -> Kv {
        Kv {
            key,
            value: value.into_bytes(),
            create_revision: revision,
            mod_revision: revision,
            lease: self.lease,
        }
    }

    /// A leader key was put (seen in the watch, a read, or our own txn).
    fn leader_put(&mut self, s: usize, kv: &Kv) {
        if kv.mod_revision <= self.shards[s].leader_rev {
            return;
        }
        self.shards[s].leader_rev = kv.mod_revision;
        let parsed = parse_json(&kv.value).and_then(|v| {
            let name = v.get("node")?.as_str()?.to_string();
            Some((name, field_u64(&v, "epoch")?))
        });
        let Some((name, epoch)) = parsed else {
            log_at!(
                Level::Warn,
                "control",
                "shard {s}: unreadable leader key {:?}",
                String::from_utf8_lossy(&kv.value)
            );
            return;
        };
        let node = self.node_named(s, &name);
        // Fence every local node that lost the role before the new
        // primary is published.
        for m in self.locals(s) {
            if Some(m) != node && self.shared.release(&self.roles, m) {
                self.status.fenced.fetch_add(1, Ordering::Relaxed);
                log_at!(
                    Level::Warn,
                    self.name(m),
                    "stops taking writes: {name} is primary in epoch {epoch} (fenced)"
                );
            }
        }
        let st = &mut self.shards[s];
        if st.old_side.as_ref().is_some_and(|o| Some(o.node) != node) {
            st.old_side = None;
        }
        st.new_side = None;
        st.epoch_seen = st.epoch_seen.max(epoch);
        let resuming = st.old_side.as_ref().map(|o| o.node);
        if let Some(n) = node.filter(|&n| self.is_local(n)) {
            let resuming = resuming == Some(n);
            if !resuming && !self.shared.hold(&self.roles, n, kv.lease) {
                log_at!(
                    Level::Warn,
                    self.name(n),
                    "the leader key names this node but is held by lease {:x}, not this process's; waiting for it to expire",
                    kv.lease
                );
            }
        }
        let previous = self.roles.primary(s);
        if node.is_none() {
            log_at!(
                Level::Warn,
                "control",
                "shard {s}: leader {name:?} is not a node of this shard in the config"
            );
        }
        self.roles.set_primary(s, node.map(|n| (n, epoch)));
        if previous.map(|(_, e)| e) != Some(epoch) {
            self.status
                .elections_observed
                .fetch_add(1, Ordering::Relaxed);
            log_at!(
                Level::Info,
                "control",
                "shard {s}: primary is {name} (epoch {epoch})"
            );
        }
        let st = &mut self.shards[s];
        st.leader = Some(Leader {
            name,
            node,
            epoch,
            lease: kv.lease,
            mod_rev: kv.mod_revision,
        });
        st.election = None;
        if std::mem::take(&mut st.announced) {
            for n in self.locals(s) {
                let key = self.candidate_key(s, self.name(n));
                let _ = self.client.delete(&key);
            }
        }
        self.resolve_pending(s, node, epoch);
    }

    /// The leader key is gone (lease expired or revoked, or it was never
    /// there): forget the primary, fence local holders, elect.
    fn leader_delete(&mut self, s: usize, rev: i64) {
        if rev <= self.shards[s].leader_rev {
            return;
        }
        self.shards[s].leader_rev = rev;
        let had = self.shards[s].leader.take();
        for m in self.locals(s) {
            if self.shared.release(&self.roles, m) {
                self.status.fenced.fetch_add(1, Ordering::Relaxed);
                log_at!(
                    Level::Warn,
                    self.name(m),
                    "stops taking writes: its leader key is gone (fenced)"
                );
            }
        }
        // A reshard's new shard that copies an old one follows that
        // shard's primary at once (see `reshard`); any other has none.
        let copied = self.copies(s).and_then(|old| self.roles.primary(old));
        self.roles.set_primary(s, copied);
        if let Some(l) = &had {
            log_at!(
                Level::Info,
                "control",
                "shard {s}: primary {} (epoch {}) is gone; electing",
                l.name,
                l.epoch
            );
        }
        let st = &mut self.shards[s];
        st.old_side = None;
        st.new_side = None;
        let now = Instant::now();
        // A reshard's new shard that copies an old one has no primary of
        // its own: no election (`follow_layout` mirrors the old shard).
        if self.shards[s].election.is_none()
            && self.copies(s).is_none()
            && !self.locals(s).is_empty()
        {
            self.start_election(s);
        }
        for p in &mut self.pending {
            if p.shard == s {
                p.deadline = now;
            }
        }
    }

    // -----------------------------------------------------------------
    // Elections

    fn step_election(&mut self, s: usize) {
        let now = Instant::now();
        if self.shards[s].leader.is_some() {
            self.shards[s].election = None;
            return;
        }
        if self.lease == 0 {
            if let Some(e) = &mut self.shards[s].election {
                e.stage = Stage::Announce;
                e.next = now + RETRY;
            }
            return;
        }
        let Some(stage) = self.shards[s].election.as_ref().map(|e| e.stage) else {
            return;
        };
        match stage {
            Stage::Announce => self.announce(s, now),
            Stage::Collect => self.collect(s, now),
            Stage::Campaign(n) => self.campaign(s, n, now),
        }
    }

    fn set_election(&mut self, s: usize, stage: Stage, next: Instant) {
        if let Some(e) = &mut self.shards[s].election {
            e.stage = stage;
            e.next = next;
        }
    }

    fn retry_election(&mut self, s: usize, now: Instant) {
        if let Some(e) = &mut self.shards[s].election {
            e.next = now + RETRY;
        }
    }

    /// Writes a candidate key for each local node of shard `s`.
    fn announce(&mut self, s: usize, now: Instant) {
        for n in self.locals(s) {
            let (epoch, seq) = (self.progress)(n);
            let key = self.candidate_key(s, self.name(n));
            let value = json!({"epoch": epoch, "seq": seq}).to_string();
            if let Err(e) = self.client.put(&key, value.as_bytes(), self.lease) {
                self.error("writing a candidate key", &e);
                return self.retry_election(s, now);
            }
        }
        self.shards[s].announced = true;
        self.set_election(s, Stage::Collect, now + self.cfg.collect_window);
    }

    /// Ranks every candidate of shard `s`; the best local node campaigns
    /// after window + rank × rank delay from the election's start.
    fn collect(&mut self, s: usize, now: Instant) {
        let prefix = self.key(s, "candidates/");
        let kvs = match self.client.range(&prefix, true) {
            Ok((_, kvs)) => kvs,
            Err(e) => {
                self.error("reading the candidates", &e);
                return self.retry_election(s, now);
            }
        };
        let mut ranked: Vec<(u64, u64, usize)> = Vec::new();
        for kv in &kvs {
            let name = String::from_utf8_lossy(&kv.key[prefix.len().min(kv.key.len())..]);
            let (Some(node), Some(v)) = (self.node_named(s, &name), parse_json(&kv.value)) else {
                continue;
            };
            let epoch = field_u64(&v, "epoch").unwrap_or(0);
            let seq = field_u64(&v, "seq").unwrap_or(0);
            ranked.push((epoch, seq, node));
        }
        let locals = self.locals(s);
        for &n in &locals {
            if !ranked.iter().any(|r| r.2 == n) {
                let (epoch, seq) = (self.progress)(n);
                ranked.push((epoch, seq, n));
            }
        }
        // Highest (epoch, seq) first, then config order (node ids follow
        // it: primary, then replicas).
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let Some((rank, best)) = ranked
            .iter()
            .enumerate()
            .find(|(_, r)| locals.contains(&r.2))
            .map(|(i, r)| (i, r.2))
        else {
            self.shards[s].election = None;
            return;
        };
        let started = self.shards[s].election.as_ref().map_or(now, |e| e.started);
        let rank_u32 = u32::try_from(rank).unwrap_or(u32::MAX);
        let at = started + self.cfg.collect_window + self.cfg.rank_delay.saturating_mul(rank_u32);
        log_at!(
            Level::Debug,
            "control",
            "shard {s}: candidates {:?}; {} is rank {rank}",
            ranked
                .iter()
                .map(|(e, q, n)| format!("{}@{e}/{q}", self.name(*n)))
                .collect::<Vec<_>>(),
            self.name(best)
        );
        self.set_election(s, Stage::Campaign(best), at.max(now));
    }

    /// The election txn for local node `n` of shard `s`.
    fn campaign(&mut self, s: usize, n: usize, now: Instant) {
        let epoch_key = self.epoch_key(s);
        let leader_key = self.leader_key(s);
        let (cmp_epoch, etcd_epoch) = match self.read_epoch(&epoch_key) {
            Ok(read) => read,
            Err(e) => {
                self.error("reading the epoch", &e);
                return self.retry_election(s, now);
            }
        };
        let epoch = etcd_epoch
            .max(self.shards[s].epoch_seen)
            .max(self.roles.epoch(s))
            .max((self.progress)(n).0)
            + 1;
        let value = json!({"node": self.name(n), "epoch": epoch}).to_string();
        let mut compare = vec![cmp_create(&leader_key, 0), cmp_epoch];
        if let Some(to) = self.reshard.unsplit_to(s) {
            // Lead an old shard only knowing whether it split (see the
            // protocol's Reshard paragraph): a split put since our last
            // look fails the txn, and the watch brings it before we retry.
            compare.push(cmp_create(&self.split_key(s, to), 0));
        }
        let res = self.client.txn(
            &compare,
            &[
                op_put(&leader_key, value.as_bytes(), self.lease),
                op_put(&epoch_key, epoch.to_string().as_bytes(), 0),
            ],
            &[op_get(&leader_key)],
        );
        match res {
            Ok(r) if r.succeeded => {
                self.status.elections_won.fetch_add(1, Ordering::Relaxed);
                let took = self.shards[s]
                    .election
                    .as_ref()
                    .map_or(0, |e| ms(e.started.elapsed()));
                log_at!(
                    Level::Info,
                    self.name(n),
                    "won the election for shard {s}: epoch {epoch} ({took} ms after it started)"
                );
                let kv = self.own_leader_kv(leader_key, value, r.revision);
                self.leader_put(s, &kv);
            }
            Ok(r) => {
                if let Some(kv) = r.read.first() {
                    self.leader_put(s, kv);
                } else {
                    // The epoch moved under us (another campaign that has
                    // already lost its lease?): try again.
                    self.set_election(s, Stage::Campaign(n), now + POLL);
                }
            }
            Err(e) => {
                self.error("campaigning", &e);
                self.retry_election(s, now);
            }
        }
    }

    /// The epoch key's value and a txn compare that it has not changed
    /// since (or that it does not exist).
    fn read_epoch(&self, epoch_key: &[u8]) -> Result<(Value, u64), EtcdError> {
        let (_, kvs) = self.client.range(epoch_key, false)?;
        Ok(match kvs.first() {
            Some(kv) => (
                cmp_mod(epoch_key, kv.mod_revision),
                std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0),
            ),
            None => (cmp_create(epoch_key, 0), 0),
        })
    }

    // -----------------------------------------------------------------
    // Switchovers

    fn promote(
        &mut self,
        s: usize,
        to: Option<usize>,
        reply: flume::Sender<Result<Promoted, ControlError>>,
    ) {
        let answer = |r: Result<Promoted, ControlError>| {
            let _ = reply.send(r);
        };
        if s >= self.shards.len() {
            return answer(Err(ControlError::UnknownShard(s)));
        }
        let Some(leader) = self.shards[s].leader.clone() else {
            return answer(Err(ControlError::NoPrimary(s)));
        };
        let Some(cur) = leader.node else {
            return answer(Err(ControlError::NoPrimary(s)));
        };
        let target = match to {
            Some(t) => t,
            None => match self.topo.nodes().find(|n| n.shard == s && n.id != cur) {
                Some(n) => n.id,
                None => return answer(Err(ControlError::UnknownNode(cur))),
            },
        };
        if self.info(target).is_none_or(|n| n.shard != s) {
            return answer(Err(ControlError::UnknownNode(target)));
        }
        if target == cur {
            return answer(Ok(Promoted {
                shard: s,
                node: cur,
                epoch: leader.epoch,
            }));
        }
        // Whether a handover exists is decided by the txn below (the
        // watch may not have delivered a finished one's deletion yet).
        if self.pending.iter().any(|p| p.shard == s) {
            return answer(Err(ControlError::Busy(s)));
        }
        if self.lease == 0 {
            return answer(Err(ControlError::Etcd(EtcdError::Transport(
                "this process holds no etcd lease".into(),
            ))));
        }
        let key = self.handover_key(s);
        let value = json!({"to": self.name(target), "from_epoch": leader.epoch}).to_string();
        let res = self.client.txn(
            &[
                cmp_create(&key, 0),
                cmp_mod(&self.leader_key(s), leader.mod_rev),
            ],
            &[op_put(&key, value.as_bytes(), self.lease)],
            &[op_get(&key)],
        );
        match res {
            Ok(r) if r.succeeded => {
                log_at!(
                    Level::Info,
                    "control",
                    "shard {s}: switchover from {} to {} requested",
                    leader.name,
                    self.name(target)
                );
                self.pending.push(Pending {
                    shard: s,
                    target,
                    from_epoch: leader.epoch,
                    handover_rev: r.revision,
                    deadline: Instant::now() + self.cfg.handover_timeout,
                    reply,
                });
                let kv = Kv {
                    key,
                    value: value.into_bytes(),
                    create_revision: r.revision,
                    mod_revision: r.revision,
                    lease: self.lease,
                };
                self.handover_put(s, &kv);
            }
            Ok(r) if !r.read.is_empty() => answer(Err(ControlError::Busy(s))),
            Ok(_) => answer(Err(ControlError::Conflict(format!(
                "the primary of shard {s} changed; try again"
            )))),
            Err(e) => {
                self.error("requesting a switchover", &e);
                answer(Err(ControlError::Etcd(e)));
            }
        }
    }

    fn resolve_pending(&mut self, s: usize, node: Option<usize>, epoch: u64) {
        let (done, live): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.shard == s && epoch > p.from_epoch);
        self.pending = live;
        for p in done {
            let r = if node == Some(p.target) {
                Ok(Promoted {
                    shard: s,
                    node: p.target,
                    epoch,
                })
            } else {
                Err(ControlError::Conflict(format!(
                    "shard {s} got another primary in epoch {epoch}"
                )))
            };
            let _ = p.reply.send(r);
        }
    }

    fn handover_put(&mut self, s: usize, kv: &Kv) {
        if kv.mod_revision <= self.shards[s].handover_rev {
            return;
        }
        self.shards[s].handover_rev = kv.mod_revision;
        let Some(v) = parse_json(&kv.value) else {
            return;
        };
        let h = Handover {
            to: v
                .get("to")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            from_epoch: field_u64(&v, "from_epoch").unwrap_or(0),
            seq: field_u64(&v, "seq"),
            lease: kv.lease,
            mod_rev: kv.mod_revision,
        };
        self.shards[s].handover = Some(h.clone());
        let Some(leader) = self.shards[s].leader.clone() else {
            return;
        };
        if leader.epoch != h.from_epoch {
            return;
        }
        let now = Instant::now();
        // The current primary's side: stop writing, wait for quiet.
        if let Some(cur) = leader.node
            && h.seq.is_none()
            && self.shards[s].old_side.is_none()
            && self.is_local(cur)
            && self.shared.release(&self.roles, cur)
        {
            self.status.fenced.fetch_add(1, Ordering::Relaxed);
            log_at!(
                Level::Info,
                self.name(cur),
                "stops taking writes for a switchover to {} (fenced)",
                h.to
            );
            let seq = (self.progress)(cur).1;
            self.shards[s].old_side = Some(OldSide {
                node: cur,
                deadline: now + self.cfg.handover_timeout,
                stage: OldStage::Quiesce { seq, since: now },
            });
        }
        // The target's side: catch up, then take over.
        if let (Some(seq), Some(t)) = (h.seq, self.node_named(s, &h.to))
            && self.is_local(t)
        {
            self.shards[s].new_side = Some(NewSide {
                node: t,
                seq,
                handover_rev: h.mod_rev,
                leader_rev: leader.mod_rev,
                from_epoch: h.from_epoch,
                deadline: now + self.cfg.handover_timeout,
            });
        }
    }

    fn handover_delete(&mut self, s: usize, rev: i64) {
        if rev <= self.shards[s].handover_rev {
            return;
        }
        self.shards[s].handover_rev = rev;
        let st = &mut self.shards[s];
        st.handover = None;
        st.new_side = None;
        if let Some(o) = &mut st.old_side {
            o.stage = OldStage::Resume;
        }
    }

    fn step_old_side(&mut self, s: usize) {
        let now = Instant::now();
        let Some(o) = &self.shards[s].old_side else {
            return;
        };
        let node = o.node;
        let timed_out = now >= o.deadline;
        let Some(leader) = self.shards[s].leader.clone() else {
            self.shards[s].old_side = None;
            return;
        };
        let next = match o.stage {
            OldStage::Quiesce { .. } | OldStage::Published if timed_out => OldStage::Resume,
            OldStage::Quiesce { seq, since } => {
                let cur = (self.progress)(node).1;
                if cur != seq {
                    OldStage::Quiesce {
                        seq: cur,
                        since: now,
                    }
                } else if now.duration_since(since) < QUIET {
                    return;
                } else {
                    self.publish_seq(s, &leader, cur)
                }
            }
            OldStage::Published => return,
            OldStage::Resume => {
                if self.resume(s, node, &leader) {
                    self.shards[s].old_side = None;
                }
                return;
            }
        };
        if let Some(o) = &mut self.shards[s].old_side {
            o.stage = next;
        }
    }

    /// Adds the fenced primary's final seq to the handover key.
    fn publish_seq(&mut self, s: usize, leader: &Leader, seq: u64) -> OldStage {
        let Some(h) = self.shards[s].handover.clone() else {
            return OldStage::Resume;
        };
        let key = self.handover_key(s);
        let value = json!({"to": h.to, "from_epoch": h.from_epoch, "seq": seq}).to_string();
        match self.client.txn(
            &[
                cmp_mod(&key, h.mod_rev),
                cmp_mod(&self.leader_key(s), leader.mod_rev),
            ],
            &[op_put(&key, value.as_bytes(), h.lease)],
            &[],
        ) {
            Ok(r) if r.succeeded => {
                log_at!(
                    Level::Info,
                    "control",
                    "shard {s}: primary quiet at seq {seq}; {} may take over",
                    h.to
                );
                let kv = Kv {
                    key,
                    value: value.into_bytes(),
                    create_revision: 0,
                    mod_revision: r.revision,
                    lease: h.lease,
                };
                self.handover_put(s, &kv);
                OldStage::Published
            }
            Ok(_) => OldStage::Resume,
            Err(e) => {
                self.error("publishing the handover seq", &e);
                OldStage::Quiesce {
                    seq,
                    since: Instant::now(),
                }
            }
        }
    }

    /// Takes the role back after a failed switchover: only if the leader
    /// key is still ours, and removing the handover in the same txn so
    /// the target can no longer take over. Returns whether it is settled.
    fn resume(&mut self, s: usize, node: usize, leader: &Leader) -> bool {
        if leader.node != Some(node) {
            return true;
        }
        let key = self.handover_key(s);
        let cmp_h = match &self.shards[s].handover {
            Some(h) => cmp_mod(&key, h.mod_rev),
            None => cmp_create(&key, 0),
        };
        match self.client.txn(
            &[cmp_mod(&self.leader_key(s), leader.mod_rev), cmp_h],
            &[op_delete(&key)],
            &[],
        ) {
            Ok(r) if r.succeeded => {
                if self.shared.hold(&self.roles, node, leader.lease) {
                    log_at!(
                        Level::Warn,
                        self.name(node),
                        "switchover did not complete; takes writes again (epoch {})",
                        leader.epoch
                    );
                }
                self.shards[s].handover = None;
                true
            }
            // The leader or the handover changed: the watch tells which.
            Ok(_) => false,
            Err(e) => {
                self.error("resuming after a switchover", &e);
                false
            }
        }
    }

    fn step_new_side(&mut self, s: usize) {
        let now = Instant::now();
        let Some(ns) = &self.shards[s].new_side else {
            return;
        };
        if now >= ns.deadline {
            log_at!(
                Level::Warn,
                self.name(ns.node),
                "did not reach seq {} in time for the switchover",
                ns.seq
            );
            self.shards[s].new_side = None;
            return;
        }
        if (self.progress)(ns.node).1 < ns.seq || self.lease == 0 {
            return;
        }
        let (n, handover_rev, leader_rev) = (ns.node, ns.handover_rev, ns.leader_rev);
        let epoch = ns
            .from_epoch
            .max(self.shards[s].epoch_seen)
            .max(self.roles.epoch(s))
            + 1;
        let leader_key = self.leader_key(s);
        let epoch_key = self.epoch_key(s);
        let handover_key = self.handover_key(s);
        let value = json!({"node": self.name(n), "epoch": epoch}).to_string();
        match self.client.txn(
            &[
                cmp_mod(&leader_key, leader_rev),
                cmp_mod(&handover_key, handover_rev),
            ],
            &[
                op_put(&leader_key, value.as_bytes(), self.lease),
                op_put(&epoch_key, epoch.to_string().as_bytes(), 0),
                op_delete(&handover_key),
            ],
            &[],
        ) {
            Ok(r) if r.succeeded => {
                self.status.elections_won.fetch_add(1, Ordering::Relaxed);
                log_at!(
                    Level::Info,
                    self.name(n),
                    "took over shard {s} by switchover: epoch {epoch}"
                );
                let kv = self.own_leader_kv(leader_key, value, r.revision);
                self.leader_put(s, &kv);
                self.handover_delete(s, r.revision);
            }
            Ok(_) => self.shards[s].new_side = None,
            Err(e) => self.error("taking over by switchover", &e),
        }
    }
}
