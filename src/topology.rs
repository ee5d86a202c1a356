//! Key placement and cluster membership: who owns which key, which node is
//! where, and which nodes this process serves.
//!
//! Pure: no I/O. Depends only on `config`. Invariants: shard ids are dense
//! `0..shard_count`; node ids are dense `0..nodes.len()`; every shard has
//! exactly one primary node.

use crate::config::ClusterConfig;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1 (multiply, then xor), as the seed's Go implementation uses.
#[must_use]
pub fn fnv1_64(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &b in bytes {
        hash = hash.wrapping_mul(FNV_PRIME);
        hash ^= u64::from(b);
    }
    hash
}

/// The shard index that owns `key` in a cluster of `shard_count` shards.
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the remainder is below shard_count, a usize"
)]
pub fn shard_for(key: &[u8], shard_count: usize) -> usize {
    // shard_count is at least 1 (validated config).
    (fnv1_64(key) % shard_count.max(1) as u64) as usize
}

/// What a node does for its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// Read-only replica; the number is its position in the shard's replica list.
    Replica(usize),
}

/// One primary or replica of the cluster.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: usize,
    pub shard: usize,
    pub role: Role,
    /// Human name used in `X-Served-By`, logs and file names, e.g. `shard1/primary`.
    pub name: String,
    /// The configured address, exactly as written in the config file.
    pub address: String,
    /// True when this process runs the node.
    pub local: bool,
}

impl NodeInfo {
    /// File-system friendly name, e.g. `shard1-primary`, `shard1-replica1`.
    #[must_use]
    pub fn file_stem(&self) -> String {
        self.name.replace('/', "-")
    }
}

/// Why a `--serve` selection does not fit the configuration.
#[derive(Debug)]
pub enum TopologyError {
    UnknownAddress(String),
    NothingToServe,
    /// More shards or nodes than a process can know.
    TooLarge,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownAddress(a) => write!(
                f,
                "--serve names {a:?}, which is not a primary or replica address in the config"
            ),
            Self::NothingToServe => write!(f, "--serve selects no node to run"),
            Self::TooLarge => write!(
                f,
                "the layout has more than {MAX_SHARDS} shards or {MAX_NODES} nodes"
            ),
        }
    }
}

impl std::error::Error for TopologyError {}

/// Most nodes and shards a process can know (the tables are allocated
/// once at this size so that they can grow while executors read them).
pub const MAX_NODES: usize = 4096;
pub const MAX_SHARDS: usize = 1024;

/// The whole cluster as this process sees it.
///
/// Append-only: an online reshard adds shards (and their nodes) at the end
/// while every executor keeps reading, so the tables are fixed-size arrays
/// of write-once cells with a published length; ids never change and a
/// `&NodeInfo` stays valid for the topology's life.
#[derive(Debug)]
pub struct Topology {
    nodes: Box<[OnceLock<NodeInfo>]>,
    node_count: AtomicUsize,
    primaries: Box<[OnceLock<usize>]>,
    replicas: Box<[OnceLock<Vec<usize>>]>,
    shard_count: AtomicUsize,
    /// Serializes [`Topology::grow`].
    growing: Mutex<()>,
}

impl Topology {
    /// Builds the node table. `serve` lists the addresses this process runs;
    /// `None` means all of them (a local cluster).
    ///
    /// # Errors
    /// An address in `serve` that is not configured, or an empty selection.
    pub fn new(cfg: &ClusterConfig, serve: Option<&[String]>) -> Result<Self, TopologyError> {
        if let Some(list) = serve {
            for a in list {
                let known = cfg
                    .shards
                    .iter()
                    .any(|s| &s.address == a || s.replicas.iter().any(|r| r == a));
                if !known {
                    return Err(TopologyError::UnknownAddress(a.clone()));
                }
            }
        }
        let topo = Self {
            nodes: (0..MAX_NODES).map(|_| OnceLock::new()).collect(),
            node_count: AtomicUsize::new(0),
            primaries: (0..MAX_SHARDS).map(|_| OnceLock::new()).collect(),
            replicas: (0..MAX_SHARDS).map(|_| OnceLock::new()).collect(),
            shard_count: AtomicUsize::new(0),
            growing: Mutex::new(()),
        };
        let added = topo.grow(cfg, serve)?;
        if !added.iter().any(|n| n.local) {
            return Err(TopologyError::NothingToServe);
        }
        Ok(topo)
    }

    /// Appends the shards of `cfg` beyond the ones known (a reshard's new
    /// shards) and returns their nodes; `serve` as in [`Topology::new`].
    ///
    /// # Errors
    /// More shards or nodes than the tables hold.
    pub fn grow(
        &self,
        cfg: &ClusterConfig,
        serve: Option<&[String]>,
    ) -> Result<Vec<NodeInfo>, TopologyError> {
        let _only_one = self
            .growing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let is_local = |addr: &str| serve.is_none_or(|list| list.iter().any(|a| a == addr));
        let first_shard = self.shard_count();
        let mut next = self.node_count();
        let wanted: usize = cfg.shards[first_shard.min(cfg.shards.len())..]
            .iter()
            .map(|s| 1 + s.replicas.len())
            .sum();
        if cfg.shards.len() > MAX_SHARDS || next + wanted > MAX_NODES {
            return Err(TopologyError::TooLarge);
        }
        let mut added = Vec::new();
        for shard in cfg.shards.iter().skip(first_shard) {
            let _ = self.primaries[shard.idx].set(next);
            let mut push = |role: Role, name: String, address: &String| {
                let node = NodeInfo {
                    id: next,
                    shard: shard.idx,
                    role,
                    name,
                    address: address.clone(),
                    local: is_local(address),
                };
                let _ = self.nodes[next].set(node.clone());
                added.push(node);
                next += 1;
                next - 1
            };
            push(
                Role::Primary,
                format!("{}/primary", shard.name),
                &shard.address,
            );
            let mut ids = Vec::new();
            for (k, addr) in shard.replicas.iter().enumerate() {
                let name = if k == 0 {
                    format!("{}/replica", shard.name)
                } else {
                    format!("{}/replica{}", shard.name, k + 1)
                };
                ids.push(push(Role::Replica(k), name, addr));
            }
            let _ = self.replicas[shard.idx].set(ids);
        }
        // Publish the nodes before the shards that name them.
        self.node_count.store(next, Ordering::Release);
        self.shard_count
            .store(cfg.shards.len().max(first_shard), Ordering::Release);
        Ok(added)
    }

    /// Shards with nodes in the table (during a reshard, also the new ones
    /// that own no key yet: placement is `layout`'s business).
    #[must_use]
    pub fn shard_count(&self) -> usize {
        self.shard_count.load(Ordering::Acquire)
    }

    #[must_use]
    pub fn node_count(&self) -> usize {
        self.node_count.load(Ordering::Acquire)
    }

    /// Node `id`, if it exists.
    #[must_use]
    pub fn node(&self, id: usize) -> Option<&NodeInfo> {
        if id < self.node_count() {
            self.nodes[id].get()
        } else {
            None
        }
    }

    /// Every node, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes[..self.node_count()]
            .iter()
            .filter_map(OnceLock::get)
    }

    /// The configured primary node of `shard` (`shard` below
    /// [`Topology::shard_count`]; other values wrap).
    #[must_use]
    pub fn primary_of(&self, shard: usize) -> &NodeInfo {
        let count = self.shard_count().max(1);
        let id = self.primaries[shard % count].get().copied().unwrap_or(0);
        self.nodes[id]
            .get()
            .or_else(|| self.nodes[0].get())
            .expect("a topology has at least one node")
    }

    /// The configured replica nodes of `shard`, in configured order.
    pub fn replicas_of(&self, shard: usize) -> impl Iterator<Item = &NodeInfo> {
        let count = self.shard_count().max(1);
        self.replicas[shard % count]
            .get()
            .into_iter()
            .flatten()
            .filter_map(|&id| self.nodes[id].get())
    }

    pub fn local_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes().filter(|n| n.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1_raw_value() {
        assert_eq!(fnv1_64(b"k"), 0xaf63_bd4c_8601_b7b4);
        assert_eq!(fnv1_64(b""), FNV_OFFSET_BASIS);
    }

    #[test]
    fn golden_vectors_three_shards() {
        let cases: &[(&[u8], usize)] = &[
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
        for (key, want) in cases {
            assert_eq!(
                shard_for(key, 3),
                *want,
                "key {:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn golden_vectors_four_shards() {
        assert_eq!(shard_for(b"k", 4), 0);
        assert_eq!(shard_for(b"a", 4), 2);
        assert_eq!(shard_for(b"missing", 4), 3);
    }
}
