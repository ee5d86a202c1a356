//! Who is primary of each shard right now, in which epoch, and until when
//! each local node may accept writes: the one piece of state the control
//! plane (`control`, its own thread) shares with the data plane (every
//! executor, every committer thread).
//!
//! Pure shared state: atomics only, no I/O, no locks; depends on
//! `topology`. Without a control plane ([`Roles::fixed`]) the configured
//! primaries hold their role for ever in epoch 1 and may always write, so a
//! static cluster behaves exactly as before failover existed. With one
//! ([`Roles::controlled`]) nothing may write until the control plane has
//! granted a lease (`extend_lease`), and it moves the primary role with
//! [`Roles::set_primary`].
//!
//! Each shard's (primary node id, epoch) pair is one packed `AtomicU64`, so
//! a reader never sees the node of one epoch with the number of another.
//! [`Roles::generation`] changes after every change of any pair; executors
//! compare it to the value they last acted on to notice a change cheaply.
//!
//! A node's write permission is a deadline on a process-wide monotonic
//! clock ([`Roles::now_ms`]): the control plane moves it forward after
//! each lease renewal, to "when the renewal was sent + lease TTL − margin",
//! so it always ends before etcd can let the lease expire; the committer
//! checks it right before and right after each commit (see `nodestore`).

use crate::topology::{MAX_NODES, MAX_SHARDS, Topology};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Node ids are packed into 16 bits next to a 48-bit epoch.
const NODE_BITS: u32 = 16;
const NODE_MASK: u64 = (1 << NODE_BITS) - 1;
/// No primary known (packed node field).
const NO_NODE: u64 = NODE_MASK;
/// "May write for ever" (static clusters).
const FOREVER: u64 = u64::MAX;

/// The current roles of the cluster as this process knows them (share it
/// as `Arc<Roles>`).
#[derive(Debug)]
pub struct Roles {
    /// Per shard: `epoch << 16 | primary node id` (`NO_NODE`: unknown).
    shards: Vec<AtomicU64>,
    /// Per node (by node id): write permission deadline in [`Roles::now_ms`]
    /// milliseconds; 0 = may not write. Only local nodes' entries are used.
    writable_until: Vec<AtomicU64>,
    generation: AtomicU64,
    /// Base of [`Roles::now_ms`].
    base: Instant,
    /// True when a control plane moves roles (not a static cluster).
    controlled: bool,
}

impl Roles {
    /// A static cluster: the configured primaries, epoch 1, writable for
    /// ever.
    #[must_use]
    pub fn fixed(topo: &Topology) -> Self {
        let roles = Self::new(topo, false);
        for shard in 0..topo.shard_count() {
            let p = topo.primary_of(shard).id;
            roles.shards[shard].store(pack(p, 1), Ordering::Release);
            roles.writable_until[p].store(FOREVER, Ordering::Release);
        }
        roles
    }

    /// One shard whose only node (id 0) is primary in epoch 1 for ever: a
    /// store used on its own (unit tests, tools).
    #[must_use]
    pub fn standalone() -> Self {
        Self {
            shards: vec![AtomicU64::new(pack(0, 1))],
            writable_until: vec![AtomicU64::new(FOREVER)],
            generation: AtomicU64::new(1),
            base: Instant::now(),
            controlled: false,
        }
    }

    /// A cluster whose roles a control plane sets: no primary known, no
    /// node writable, until the control plane says otherwise.
    #[must_use]
    pub fn controlled(topo: &Topology) -> Self {
        Self::new(topo, true)
    }

    fn new(topo: &Topology, controlled: bool) -> Self {
        Self {
            // Sized for every shard and node a topology can grow to (an
            // online reshard adds shards while executors read these).
            shards: (0..MAX_SHARDS.max(topo.shard_count()))
                .map(|_| AtomicU64::new(NO_NODE))
                .collect(),
            writable_until: (0..MAX_NODES.max(topo.node_count()))
                .map(|_| AtomicU64::new(0))
                .collect(),
            generation: AtomicU64::new(1),
            base: Instant::now(),
            controlled,
        }
    }

    /// True when a control plane (etcd) moves roles.
    #[must_use]
    pub fn is_controlled(&self) -> bool {
        self.controlled
    }

    /// The primary node id of `shard` and its epoch; `None` while no
    /// primary is known (an election is under way, or the control plane
    /// has not answered yet).
    #[must_use]
    pub fn primary(&self, shard: usize) -> Option<(usize, u64)> {
        let word = self.shards.get(shard)?.load(Ordering::Acquire);
        unpack(word)
    }

    /// Records that `node` is primary of `shard` in `epoch` (`None`: no
    /// primary known). An older epoch than the one recorded is ignored
    /// (watch events may arrive late); returns whether anything changed.
    pub fn set_primary(&self, shard: usize, primary: Option<(usize, u64)>) -> bool {
        let Some(slot) = self.shards.get(shard) else {
            return false;
        };
        let new = if let Some((node, epoch)) = primary {
            pack(node, epoch)
        } else {
            // Keep the epoch, forget the node.
            let old = slot.load(Ordering::Acquire);
            (old & !NODE_MASK) | NO_NODE
        };
        let mut changed = false;
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
            if new == old || (new >> NODE_BITS) < (old >> NODE_BITS) {
                changed = false;
                None
            } else {
                changed = true;
                Some(new)
            }
        });
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    /// The highest epoch this process has seen for `shard` (0: none yet).
    #[must_use]
    pub fn epoch(&self, shard: usize) -> u64 {
        self.shards
            .get(shard)
            .map_or(0, |s| s.load(Ordering::Acquire) >> NODE_BITS)
    }

    /// Changes after every change of a shard's primary or epoch.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Milliseconds on this process's monotonic clock (the unit of
    /// [`Roles::extend_lease`]).
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(FOREVER - 1)
    }

    /// `node` may write until `until_ms` ([`Roles::now_ms`] clock); never
    /// moves the deadline backwards (use [`Roles::fence`] for that).
    pub fn extend_lease(&self, node: usize, until_ms: u64) {
        if let Some(w) = self.writable_until.get(node) {
            w.fetch_max(until_ms, Ordering::AcqRel);
        }
    }

    /// A static cluster's new shard after its reshard cutover: `node` is
    /// its primary (in the shard's epoch, at least 1) and may write for
    /// ever.
    pub fn take_over(&self, shard: usize, node: usize) {
        self.set_primary(shard, Some((node, self.epoch(shard).max(1))));
        self.grant_forever(node);
    }

    /// `node` may write for ever.
    pub fn grant_forever(&self, node: usize) {
        if let Some(w) = self.writable_until.get(node) {
            w.store(FOREVER, Ordering::Release);
        }
    }

    /// `node` may not write any more (lease lost, role moved, handover).
    pub fn fence(&self, node: usize) {
        if let Some(w) = self.writable_until.get(node) {
            w.store(0, Ordering::Release);
        }
    }

    /// True when `node` is the primary of `shard` now (lease or not).
    #[must_use]
    pub fn is_primary(&self, shard: usize, node: usize) -> bool {
        matches!(self.primary(shard), Some((n, _)) if n == node)
    }

    /// The epoch `node` may write in now: it is the primary of `shard` and
    /// its write permission has not run out.
    #[must_use]
    pub fn writable_epoch(&self, shard: usize, node: usize) -> Option<u64> {
        match self.primary(shard) {
            Some((n, e)) if n == node && self.lease_valid(node) => Some(e),
            _ => None,
        }
    }

    /// True when `node` may write in `epoch` now (see
    /// [`Roles::writable_epoch`]).
    #[must_use]
    pub fn may_write(&self, shard: usize, node: usize, epoch: u64) -> bool {
        self.writable_epoch(shard, node) == Some(epoch)
    }

    /// True while `node`'s write permission has not run out.
    #[must_use]
    pub fn lease_valid(&self, node: usize) -> bool {
        let until = self
            .writable_until
            .get(node)
            .map_or(0, |w| w.load(Ordering::Acquire));
        until == FOREVER || self.now_ms() < until
    }
}

fn pack(node: usize, epoch: u64) -> u64 {
    let node = u64::try_from(node).unwrap_or(NO_NODE).min(NO_NODE - 1);
    (epoch << NODE_BITS) | node
}

fn unpack(word: u64) -> Option<(usize, u64)> {
    let node = word & NODE_MASK;
    if node == NO_NODE {
        return None;
    }
    Some((usize::try_from(node).ok()?, word >> NODE_BITS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    fn topo() -> Topology {
        let cfg = parse(
            Path::new("t.toml"),
            "[[shards]]\nname = \"a\"\nidx = 0\naddress = \"127.0.0.1:1\"\nreplica = \"127.0.0.1:2\"\n\
             [[shards]]\nname = \"b\"\nidx = 1\naddress = \"127.0.0.1:3\"\nreplica = \"127.0.0.1:4\"\n",
        )
        .expect("config");
        Topology::new(&cfg, None).expect("topology")
    }

    #[test]
    fn a_static_cluster_keeps_its_configured_primaries_writable() {
        let t = topo();
        let r = Roles::fixed(&t);
        assert_eq!(r.primary(0), Some((0, 1)));
        assert_eq!(r.primary(1), Some((2, 1)));
        assert_eq!(r.writable_epoch(0, 0), Some(1));
        assert_eq!(r.writable_epoch(0, 1), None, "a replica may not write");
        assert!(r.is_primary(0, 0) && !r.is_primary(0, 1));
        assert!(!r.is_controlled());
    }

    #[test]
    fn epochs_only_move_forward_and_leases_fence() {
        let t = topo();
        let r = Roles::controlled(&t);
        assert_eq!(r.primary(0), None);
        assert_eq!(
            r.writable_epoch(0, 0),
            None,
            "nothing writes before a lease"
        );
        let g = r.generation();
        assert!(r.set_primary(0, Some((1, 3))));
        assert!(r.generation() > g);
        assert!(!r.set_primary(0, Some((0, 2))), "an older epoch is ignored");
        assert_eq!(r.primary(0), Some((1, 3)));
        r.extend_lease(1, r.now_ms() + 60_000);
        assert_eq!(r.writable_epoch(0, 1), Some(3));
        assert_ne!(r.writable_epoch(0, 1), Some(2), "not in an old epoch");
        r.fence(1);
        assert_eq!(r.writable_epoch(0, 1), None);
        assert!(r.set_primary(0, None));
        assert_eq!(r.primary(0), None);
        assert_eq!(r.epoch(0), 3, "forgetting the node keeps the epoch");
        r.extend_lease(1, 5);
        assert!(!r.lease_valid(1) || r.now_ms() < 5);
    }
}
