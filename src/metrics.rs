//! Per-node request metrics (atomics written by the node's executor, read
//! by any executor) and their Prometheus text rendering for `/metrics`.
//!
//! The hot path only bumps atomics ([`Metrics::record`] and the
//! `shard::NodeStats` counters). A scrape renders them through the
//! `prometheus-client` crate: [`render`] registers a [`Collector`] that
//! reads the atomics at encode time and writes each family with the crate's
//! descriptor and metric encoders (`ConstCounter`, `ConstGauge`, and the
//! metric encoder's `encode_histogram` for the two pre-bucketed histograms),
//! in the Prometheus text format 0.0.4 (`prometheus_text::encode`, served
//! as `text/plain; version=0.0.4`). `# HELP` text and label values (node
//! names may hold `"`, `\` or newlines) are therefore escaped by the crate,
//! not here; the crate also appends `_total` to counter names and writes
//! `le` bounds as Go clients do (`5e-05`, `0.0001`, ..., `+Inf`).
//!
//! Depends on `shard::NodeStats` (commit and replication counters) and
//! `topology::NodeInfo` only.

use crate::control::ControlStatus;
use crate::nodestore::{BATCH_BUCKETS, NodeStats};
use crate::roles::Roles;
use crate::topology::NodeInfo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The endpoints requests are counted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Get,
    Set,
    Delete,
    Kv,
    Batch,
    List,
    Status,
    Metrics,
    Health,
    Ready,
    Internal,
    Admin,
    Other,
}

impl Endpoint {
    /// Every endpoint, in the order of their `endpoint` label values.
    pub const ALL: [Self; 13] = [
        Self::Get,
        Self::Set,
        Self::Delete,
        Self::Kv,
        Self::Batch,
        Self::List,
        Self::Status,
        Self::Metrics,
        Self::Health,
        Self::Ready,
        Self::Internal,
        Self::Admin,
        Self::Other,
    ];

    /// The `endpoint` label value.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Set => "set",
            Self::Delete => "delete",
            Self::Kv => "kv",
            Self::Batch => "batch",
            Self::List => "list",
            Self::Status => "status",
            Self::Metrics => "metrics",
            Self::Health => "health",
            Self::Ready => "ready",
            Self::Internal => "internal",
            Self::Admin => "admin",
            Self::Other => "other",
        }
    }
}

/// Status codes counted separately; anything else counts as "other".
const STATUSES: [u16; 21] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 408, 412, 413, 414, 421, 431, 500, 501, 502, 503,
    504, 505,
];

/// Latency histogram upper bounds, in microseconds.
const LATENCY_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// One node's request counters.
pub struct Metrics {
    requests: Vec<AtomicU64>,
    latency: [AtomicU64; LATENCY_US.len() + 1],
    latency_sum_us: AtomicU64,
    pub forwarded_peer: AtomicU64,
    pub forwarded_remote: AtomicU64,
    pub open_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: (0..Endpoint::ALL.len() * (STATUSES.len() + 1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            forwarded_peer: AtomicU64::new(0),
            forwarded_remote: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn record(&self, endpoint: Endpoint, status: u16, micros: u64) {
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len());
        let idx = endpoint as usize * (STATUSES.len() + 1) + s;
        self.requests[idx].fetch_add(1, Ordering::Relaxed);
        let b = LATENCY_US
            .iter()
            .position(|&x| micros <= x)
            .unwrap_or(LATENCY_US.len());
        self.latency[b].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }
}

/// One local node as the API holds it: its place in the topology, its
/// storage counters and its request counters.
pub type LocalNode = (NodeInfo, Arc<NodeStats>, Arc<Metrics>);

/// Renders every local node's metrics in the Prometheus text format 0.0.4.
#[must_use]
pub fn render(nodes: &[LocalNode], roles: &Roles, control: Option<&Arc<ControlStatus>>) -> String {
    let mut registry = Registry::default();
    let primary = nodes
        .iter()
        .map(|(n, _, _)| roles.is_primary(n.shard, n.id))
        .collect();
    registry.register_collector(Box::new(Scrape {
        nodes: nodes.to_vec(),
        primary,
        control: control.cloned(),
    }));
    let mut out = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        // Writing to a `String` does not fail and `Scrape` only forwards the
        // writer's errors; keep whatever was rendered.
        log::error!("rendering /metrics: {e}");
    }
    out
}

/// Reads the local nodes' atomics when the registry is encoded (once per
/// scrape; the clones are of a few `Arc`s and names).
struct Scrape {
    nodes: Vec<LocalNode>,
    /// Per node (same order): its shard's primary at render time.
    primary: Vec<bool>,
    /// The etcd control plane's counters (`--etcd` only).
    control: Option<Arc<ControlStatus>>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.nodes.iter().map(|(n, _, _)| &n.name))
            .finish()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_requests(&mut encoder)?;
        self.encode_latency(&mut encoder)?;
        for value in NODE_VALUES {
            self.encode_node_value(&mut encoder, &value)?;
        }
        self.encode_replication_lag(&mut encoder)?;
        self.encode_batch_sizes(&mut encoder)?;
        self.encode_control(&mut encoder)
    }
}

impl Scrape {
    /// The control plane's process-wide counters (no `node` label).
    fn encode_control(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(c) = &self.control else {
            return Ok(());
        };
        let counters = [
            (
                "corekv_elections_won",
                "Elections and switchovers this process won.",
                c.elections_won.load(R),
            ),
            (
                "corekv_elections_observed",
                "New epochs this process observed (its own wins included).",
                c.elections_observed.load(R),
            ),
            (
                "corekv_primary_fenced",
                "Times a local primary stopped taking writes (lease lost or not renewed in time, role moved, switchover).",
                c.fenced.load(R),
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            encode_value(&mut family, MetricType::Counter, &[], value)?;
        }
        Ok(())
    }
}

/// A counter or gauge with one sample per node, labelled `node` only.
struct NodeValue {
    /// The family name; the encoder appends `_total` to counters.
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    read: fn(&NodeStats, &Metrics) -> u64,
}

const R: Ordering = Ordering::Relaxed;

/// The per-node counters and gauges, in exposition order.
const NODE_VALUES: [NodeValue; 16] = [
    NodeValue {
        name: "corekv_epoch",
        help: "The epoch of the newest entry the node holds (failovers start new epochs).",
        kind: MetricType::Gauge,
        read: |s, _| s.epoch.load(R),
    },
    NodeValue {
        name: "corekv_fenced_writes",
        help: "Client writes refused because the node was not the primary with a valid lease.",
        kind: MetricType::Counter,
        read: |s, _| s.fenced_writes.load(R),
    },
    NodeValue {
        name: "corekv_lease_lost_writes",
        help: "Writes committed while the node's lease ran out (answered outcome unknown).",
        kind: MetricType::Counter,
        read: |s, _| s.lease_lost_writes.load(R),
    },
    NodeValue {
        name: "corekv_discarded_writes",
        help: "Entries discarded when the node rejoined a new primary that never had them.",
        kind: MetricType::Counter,
        read: |s, _| s.discarded_writes.load(R),
    },
    NodeValue {
        name: "corekv_forwarded",
        help: "Requests forwarded to the owner (in-process or remote).",
        kind: MetricType::Counter,
        read: |_, m| m.forwarded_peer.load(R) + m.forwarded_remote.load(R),
    },
    NodeValue {
        name: "corekv_forwarded_remote",
        help: "Requests forwarded over HTTP to another host.",
        kind: MetricType::Counter,
        read: |_, m| m.forwarded_remote.load(R),
    },
    NodeValue {
        name: "corekv_open_connections",
        help: "Open client connections.",
        kind: MetricType::Gauge,
        read: |_, m| m.open_connections.load(R),
    },
    NodeValue {
        name: "corekv_rejected_connections",
        help: "Connections refused at the connection cap.",
        kind: MetricType::Counter,
        read: |_, m| m.rejected_connections.load(R),
    },
    NodeValue {
        name: "corekv_commits",
        help: "Storage transactions committed.",
        kind: MetricType::Counter,
        read: |s, _| s.commits.load(R),
    },
    NodeValue {
        name: "corekv_committed_writes",
        help: "Writes committed by group commit.",
        kind: MetricType::Counter,
        read: |s, _| s.committed_writes.load(R),
    },
    NodeValue {
        name: "corekv_seq_waiters",
        help: "Live waits for the node's seq (replica long polls, min_seq reads).",
        kind: MetricType::Gauge,
        read: |s, _| s.seq_waiters.load(R),
    },
    NodeValue {
        name: "corekv_overloaded_writes",
        help: "Writes answered 503 because the node's commit queue was full.",
        kind: MetricType::Counter,
        read: |s, _| s.overloaded_writes.load(R),
    },
    NodeValue {
        name: "corekv_storage_healthy",
        help: "1 while the node's store takes writes, 0 after a storage failure (full disk) until it recovers.",
        kind: MetricType::Gauge,
        read: |s, _| u64::from(s.storage.load(R) == 0),
    },
    NodeValue {
        name: "corekv_storage_failures",
        help: "I/O failures of the node's store (each one reopened it).",
        kind: MetricType::Counter,
        read: |s, _| s.storage_failures.load(R),
    },
    NodeValue {
        name: "corekv_keys",
        help: "Keys stored.",
        kind: MetricType::Gauge,
        read: |s, _| s.keys.load(R),
    },
    NodeValue {
        name: "corekv_seq",
        help: "Last committed (primary) or applied (replica) sequence number.",
        kind: MetricType::Gauge,
        read: |s, _| s.seq.load(R),
    },
];

/// Writes one sample of `value` (a counter or a gauge) labelled `labels`.
fn encode_value(
    family: &mut MetricEncoder,
    kind: MetricType,
    labels: &[(&str, &str)],
    value: u64,
) -> Result<(), std::fmt::Error> {
    let sample = family.encode_family(&labels)?;
    if kind == MetricType::Counter {
        ConstCounter::new(value).encode(sample)
    } else {
        ConstGauge::new(value).encode(sample)
    }
}

/// Writes one node's histogram from per-bucket (not cumulative) counts,
/// `(upper bound, count)`, the last bound being `+Inf`.
fn encode_histogram(
    family: &mut MetricEncoder,
    node: &str,
    sum: f64,
    buckets: &[(f64, u64)],
) -> Result<(), std::fmt::Error> {
    let count = buckets.iter().map(|&(_, c)| c).sum();
    family
        .encode_family(&[("node", node)])?
        .encode_histogram::<NoLabelSet>(sum, count, buckets, None)
}

impl Scrape {
    /// `corekv_requests_total{node,endpoint,status}`, non-zero series only.
    fn encode_requests(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "corekv_requests",
            "Requests answered, by endpoint and status.",
            None,
            MetricType::Counter,
        )?;
        for (n, _, m) in &self.nodes {
            for (e, endpoint) in Endpoint::ALL.iter().map(|e| e.name()).enumerate() {
                for s in 0..=STATUSES.len() {
                    let v = m.requests[e * (STATUSES.len() + 1) + s].load(R);
                    if v == 0 {
                        continue;
                    }
                    let status = STATUSES.get(s).map_or("other".to_string(), u16::to_string);
                    let labels = [
                        ("node", n.name.as_str()),
                        ("endpoint", endpoint),
                        ("status", status.as_str()),
                    ];
                    encode_value(&mut family, MetricType::Counter, &labels, v)?;
                }
            }
        }
        Ok(())
    }

    /// `corekv_request_duration_seconds{node}`, a histogram in seconds.
    fn encode_latency(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "corekv_request_duration_seconds",
            "Time to answer a request.",
            None,
            MetricType::Histogram,
        )?;
        for (n, _, m) in &self.nodes {
            let buckets: Vec<(f64, u64)> = LATENCY_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain([f64::INFINITY])
                .zip(m.latency.iter().map(|c| c.load(R)))
                .collect();
            let sum = m.latency_sum_us.load(R) as f64 / 1e6;
            encode_histogram(&mut family, &n.name, sum, &buckets)?;
        }
        Ok(())
    }

    /// One of [`NODE_VALUES`], for every node.
    fn encode_node_value(
        &self,
        encoder: &mut DescriptorEncoder,
        value: &NodeValue,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(value.name, value.help, None, value.kind)?;
        for (n, s, m) in &self.nodes {
            let v = (value.read)(s, m);
            encode_value(&mut family, value.kind, &[("node", n.name.as_str())], v)?;
        }
        Ok(())
    }

    /// `corekv_replication_lag{node}`, replicas only.
    fn encode_replication_lag(
        &self,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "corekv_replication_lag",
            "Entries the replica has not applied yet.",
            None,
            MetricType::Gauge,
        )?;
        for ((n, s, _), &primary) in self.nodes.iter().zip(&self.primary) {
            if !primary {
                let lag = s.primary_seq.load(R).saturating_sub(s.seq.load(R));
                encode_value(&mut family, MetricType::Gauge, &[("node", &n.name)], lag)?;
            }
        }
        Ok(())
    }

    /// `corekv_commit_batch_size{node}`, primaries only: buckets 1, 2, 4,
    /// ... and `+Inf`; the sum is the writes committed.
    fn encode_batch_sizes(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "corekv_commit_batch_size",
            "Writes per group commit.",
            None,
            MetricType::Histogram,
        )?;
        for ((n, s, _), &primary) in self.nodes.iter().zip(&self.primary) {
            if !primary {
                continue;
            }
            let buckets: Vec<(f64, u64)> = (0..BATCH_BUCKETS)
                .map(|b| {
                    let le = if b + 1 == BATCH_BUCKETS {
                        f64::INFINITY
                    } else {
                        (1u64 << b) as f64
                    };
                    (le, s.batch_sizes[b].load(R))
                })
                .collect();
            let sum = s.committed_writes.load(R) as f64;
            encode_histogram(&mut family, &n.name, sum, &buckets)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Role;

    /// A node name holding every character the exposition must escape.
    const NASTY: &str = "shard\"1\\pri\nmary";

    fn node(name: &str, role: Role) -> LocalNode {
        let info = NodeInfo {
            id: usize::from(role != Role::Primary),
            shard: 0,
            role,
            name: name.to_string(),
            address: "127.0.0.1:7000".to_string(),
            local: true,
        };
        (info, Arc::default(), Arc::default())
    }

    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Parses `{name="value",...}` at the start of `s` (after the `{`),
    /// unescaping values; returns the labels and the rest after the `}`.
    fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
        let mut labels = Vec::new();
        loop {
            if let Some(rest) = s.strip_prefix('}') {
                return Ok((labels, rest));
            }
            let (name, rest) = s.split_once("=\"").ok_or("label without =\"")?;
            if !is_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((name.to_string(), value));
            s = &rest[end + 1..];
            s = s.strip_prefix(',').unwrap_or(s);
        }
    }

    /// Label names and (unescaped) values, in order.
    type Labels = Vec<(String, String)>;

    /// One sample line: name, labels, value.
    type Sample = (String, Labels, f64);

    /// Parses the text format 0.0.4 line by line: `# HELP`/`# TYPE` lines
    /// and samples. Returns the `# TYPE`s and the samples.
    fn parse(text: &str) -> Result<(Labels, Vec<Sample>), String> {
        let mut types = Vec::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            let bad = |why: &str| format!("{why}: {line:?}");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').ok_or_else(|| bad("no help"))?;
                if !is_name(name) {
                    return Err(bad("bad name"));
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or_else(|| bad("no type"))?;
                if !is_name(name) || !["counter", "gauge", "histogram"].contains(&kind) {
                    return Err(bad("bad type line"));
                }
                types.push((name.to_string(), kind.to_string()));
            } else {
                let end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
                let name = &line[..end];
                if !is_name(name) {
                    return Err(bad("bad name"));
                }
                let (labels, rest) = match line[end..].strip_prefix('{') {
                    Some(rest) => parse_labels(rest).map_err(|e| bad(&e))?,
                    None => (Vec::new(), &line[end..]),
                };
                let value = rest.strip_prefix(' ').ok_or_else(|| bad("no space"))?;
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().map_err(|_| bad("bad value"))?,
                };
                samples.push((name.to_string(), labels, value));
            }
        }
        Ok((types, samples))
    }

    #[test]
    fn node_names_are_escaped_and_every_family_is_present() {
        let nodes = [
            node(NASTY, Role::Primary),
            node(&format!("{NASTY}/replica"), Role::Replica(0)),
        ];
        let (primary, stats, metrics) = &nodes[0];
        metrics.record(Endpoint::Get, 200, 120);
        metrics.record(Endpoint::Set, 999, 7_000_000);
        metrics.forwarded_remote.fetch_add(2, R);
        stats.batch_sizes[2].fetch_add(1, R); // one batch of 3 writes
        stats.commits.fetch_add(1, R);
        stats.committed_writes.fetch_add(3, R);
        nodes[1].1.primary_seq.fetch_add(5, R);

        let text = render(&nodes, &Roles::standalone(), None);
        let (types, samples) = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        let expected = [
            ("corekv_requests_total", "counter"),
            ("corekv_request_duration_seconds", "histogram"),
            ("corekv_epoch", "gauge"),
            ("corekv_fenced_writes_total", "counter"),
            ("corekv_lease_lost_writes_total", "counter"),
            ("corekv_discarded_writes_total", "counter"),
            ("corekv_forwarded_total", "counter"),
            ("corekv_forwarded_remote_total", "counter"),
            ("corekv_open_connections", "gauge"),
            ("corekv_rejected_connections_total", "counter"),
            ("corekv_commits_total", "counter"),
            ("corekv_committed_writes_total", "counter"),
            ("corekv_seq_waiters", "gauge"),
            ("corekv_overloaded_writes_total", "counter"),
            ("corekv_storage_healthy", "gauge"),
            ("corekv_storage_failures_total", "counter"),
            ("corekv_keys", "gauge"),
            ("corekv_seq", "gauge"),
            ("corekv_replication_lag", "gauge"),
            ("corekv_commit_batch_size", "histogram"),
        ];
        let types: Vec<(&str, &str)> = types
            .iter()
            .map(|(n, k)| (n.as_str(), k.as_str()))
            .collect();
        assert_eq!(types, expected, "{text}");

        let value = |name: &str, labels: &[(&str, &str)]| {
            samples
                .iter()
                .find(|(n, l, _)| {
                    n == name
                        && l.len() == labels.len()
                        && l.iter().zip(labels).all(|(a, b)| a.0 == b.0 && a.1 == b.1)
                })
                .map(|s| s.2)
        };
        let p = primary.name.as_str();
        let r = nodes[1].0.name.as_str();
        let get = [("node", p), ("endpoint", "get"), ("status", "200")];
        assert_eq!(value("corekv_requests_total", &get), Some(1.0), "{text}");
        let set = [("node", p), ("endpoint", "set"), ("status", "other")];
        assert_eq!(value("corekv_requests_total", &set), Some(1.0), "{text}");
        let le = |b: &'static str| [("node", p), ("le", b)];
        let latency = "corekv_request_duration_seconds_bucket";
        assert_eq!(value(latency, &le("0.00025")), Some(1.0), "{text}");
        assert_eq!(value(latency, &le("5")), Some(1.0), "{text}");
        assert_eq!(value(latency, &le("+Inf")), Some(2.0), "{text}");
        let sum = value("corekv_request_duration_seconds_sum", &[("node", p)]);
        assert!(sum.is_some_and(|s| (s - 7.00012).abs() < 1e-9), "{text}");
        let node = [("node", p)];
        assert_eq!(value("corekv_forwarded_total", &node), Some(2.0));
        assert_eq!(value("corekv_forwarded_remote_total", &node), Some(2.0));
        assert_eq!(value("corekv_commits_total", &node), Some(1.0));
        assert_eq!(value("corekv_seq", &[("node", r)]), Some(0.0));
        assert_eq!(value("corekv_replication_lag", &[("node", r)]), Some(5.0));
        assert_eq!(value("corekv_replication_lag", &node), None);
        let batch = "corekv_commit_batch_size_bucket";
        assert_eq!(value(batch, &le("2")), Some(0.0), "{text}");
        assert_eq!(value(batch, &le("4")), Some(1.0), "{text}");
        assert_eq!(value(batch, &le("+Inf")), Some(1.0), "{text}");
        assert_eq!(value("corekv_commit_batch_size_count", &node), Some(1.0));
        assert_eq!(value("corekv_commit_batch_size_sum", &node), Some(3.0));
        assert_eq!(value(batch, &[("node", r), ("le", "+Inf")]), None);
    }
}
