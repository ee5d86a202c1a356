//! Key placement and cluster membership: who owns which key, which node is
//! where, and which nodes this process serves.
//!
//! Pure: no I/O. Depends only on `config`. Invariants: shard ids are dense
//! `0..shard_count`; node ids are dense `0..nodes.len()`; every shard has
//! exactly one primary node.

use crate::config::ClusterConfig;
use std::fmt;

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
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownAddress(a) => write!(
                f,
                "--serve names {a:?}, which is not a primary or replica address in the config"
            ),
            Self::NothingToServe => write!(f, "--serve selects no node to run"),
        }
    }
}

impl std::error::Error for TopologyError {}

/// The whole cluster as this process sees it.
#[derive(Clone, Debug)]
pub struct Topology {
    pub nodes: Vec<NodeInfo>,
    primaries: Vec<usize>,
    replicas: Vec<Vec<usize>>,
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
        let is_local = |addr: &str| serve.is_none_or(|list| list.iter().any(|a| a == addr));
        let mut nodes = Vec::new();
        let mut primaries = Vec::new();
        let mut replicas = Vec::new();
        for shard in &cfg.shards {
            primaries.push(nodes.len());
            nodes.push(NodeInfo {
                id: nodes.len(),
                shard: shard.idx,
                role: Role::Primary,
                name: format!("{}/primary", shard.name),
                address: shard.address.clone(),
                local: is_local(&shard.address),
            });
            let mut ids = Vec::new();
            for (k, addr) in shard.replicas.iter().enumerate() {
                ids.push(nodes.len());
                let name = if k == 0 {
                    format!("{}/replica", shard.name)
                } else {
                    format!("{}/replica{}", shard.name, k + 1)
                };
                nodes.push(NodeInfo {
                    id: nodes.len(),
                    shard: shard.idx,
                    role: Role::Replica(k),
                    name,
                    address: addr.clone(),
                    local: is_local(addr),
                });
            }
            replicas.push(ids);
        }
        if !nodes.iter().any(|n| n.local) {
            return Err(TopologyError::NothingToServe);
        }
        Ok(Self {
            nodes,
            primaries,
            replicas,
        })
    }

    #[must_use]
    pub fn shard_count(&self) -> usize {
        self.primaries.len()
    }

    /// The primary node of `shard`. Panics never: shard ids come from `shard_for`.
    #[must_use]
    pub fn primary_of(&self, shard: usize) -> &NodeInfo {
        &self.nodes[self.primaries[shard % self.primaries.len()]]
    }

    /// The replica nodes of `shard`, in configured order.
    pub fn replicas_of(&self, shard: usize) -> impl Iterator<Item = &NodeInfo> {
        self.replicas[shard % self.replicas.len()]
            .iter()
            .map(|&id| &self.nodes[id])
    }

    #[must_use]
    pub fn shard_for(&self, key: &[u8]) -> usize {
        shard_for(key, self.shard_count())
    }

    pub fn local_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.local)
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
