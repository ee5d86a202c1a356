//! Per-node request metrics (atomics written by the node's executor, read
//! by any executor) and their Prometheus text rendering for `/metrics`.
//!
//! Depends on `shard::NodeStats` (commit and replication counters) and
//! `topology::NodeInfo` only.

use crate::shard::{BATCH_BUCKETS, NodeStats};
use crate::topology::{NodeInfo, Role};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Endpoints counted separately.
pub const ENDPOINTS: [&str; 12] = [
    "get", "set", "delete", "kv", "batch", "list", "status", "metrics", "health", "ready",
    "internal", "other",
];

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
            requests: (0..ENDPOINTS.len() * (STATUSES.len() + 1))
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
    pub fn record(&self, endpoint: usize, status: u16, micros: u64) {
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len());
        let idx = endpoint.min(ENDPOINTS.len() - 1) * (STATUSES.len() + 1) + s;
        self.requests[idx].fetch_add(1, Ordering::Relaxed);
        let b = LATENCY_US
            .iter()
            .position(|&x| micros <= x)
            .unwrap_or(LATENCY_US.len());
        self.latency[b].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Renders every local node's metrics in the Prometheus text format.
#[must_use]
pub fn render(nodes: &[(NodeInfo, std::sync::Arc<NodeStats>, std::sync::Arc<Metrics>)]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let _ = writeln!(
        out,
        "# HELP corekv_requests_total Requests answered, by endpoint and status."
    );
    let _ = writeln!(out, "# TYPE corekv_requests_total counter");
    for (n, _, m) in nodes {
        for (e, ep) in ENDPOINTS.iter().enumerate() {
            for s in 0..=STATUSES.len() {
                let v = m.requests[e * (STATUSES.len() + 1) + s].load(Ordering::Relaxed);
                if v > 0 {
                    let status = STATUSES.get(s).map_or("other".to_string(), u16::to_string);
                    let _ = writeln!(
                        out,
                        "corekv_requests_total{{node=\"{}\",endpoint=\"{ep}\",status=\"{status}\"}} {v}",
                        n.name
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP corekv_request_duration_seconds Time to answer a request."
    );
    let _ = writeln!(out, "# TYPE corekv_request_duration_seconds histogram");
    for (n, _, m) in nodes {
        let mut cumulative = 0;
        for (i, bound) in LATENCY_US.iter().enumerate() {
            cumulative += m.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "corekv_request_duration_seconds_bucket{{node=\"{}\",le=\"{}\"}} {cumulative}",
                n.name,
                *bound as f64 / 1e6
            );
        }
        cumulative += m.latency[LATENCY_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "corekv_request_duration_seconds_bucket{{node=\"{}\",le=\"+Inf\"}} {cumulative}",
            n.name
        );
        let _ = writeln!(
            out,
            "corekv_request_duration_seconds_sum{{node=\"{}\"}} {}",
            n.name,
            m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "corekv_request_duration_seconds_count{{node=\"{}\"}} {cumulative}",
            n.name
        );
    }
    let gauge = |out: &mut String,
                 name: &str,
                 kind: &str,
                 help: &str,
                 f: &dyn Fn(&NodeStats, &Metrics) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (n, s, m) in nodes {
            let _ = writeln!(out, "{name}{{node=\"{}\"}} {}", n.name, f(s, m));
        }
    };
    let r = Ordering::Relaxed;
    gauge(
        &mut out,
        "corekv_forwarded_total",
        "counter",
        "Requests forwarded to the owner (in-process or remote).",
        &|_, m| m.forwarded_peer.load(r) + m.forwarded_remote.load(r),
    );
    gauge(
        &mut out,
        "corekv_forwarded_remote_total",
        "counter",
        "Requests forwarded over HTTP to another host.",
        &|_, m| m.forwarded_remote.load(r),
    );
    gauge(
        &mut out,
        "corekv_open_connections",
        "gauge",
        "Open client connections.",
        &|_, m| m.open_connections.load(r),
    );
    gauge(
        &mut out,
        "corekv_rejected_connections_total",
        "counter",
        "Connections refused at the connection cap.",
        &|_, m| m.rejected_connections.load(r),
    );
    gauge(
        &mut out,
        "corekv_commits_total",
        "counter",
        "Storage transactions committed.",
        &|s, _| s.commits.load(r),
    );
    gauge(
        &mut out,
        "corekv_committed_writes_total",
        "counter",
        "Writes committed by group commit.",
        &|s, _| s.committed_writes.load(r),
    );
    gauge(
        &mut out,
        "corekv_seq_waiters",
        "gauge",
        "Live waits for the node's seq (replica long polls, min_seq reads).",
        &|s, _| s.seq_waiters.load(r),
    );
    gauge(
        &mut out,
        "corekv_overloaded_writes_total",
        "counter",
        "Writes answered 503 because the node's commit queue was full.",
        &|s, _| s.overloaded_writes.load(r),
    );
    gauge(&mut out, "corekv_keys", "gauge", "Keys stored.", &|s, _| {
        s.keys.load(r)
    });
    gauge(
        &mut out,
        "corekv_seq",
        "gauge",
        "Last committed (primary) or applied (replica) sequence number.",
        &|s, _| s.seq.load(r),
    );
    let _ = writeln!(
        out,
        "# HELP corekv_replication_lag Entries the replica has not applied yet."
    );
    let _ = writeln!(out, "# TYPE corekv_replication_lag gauge");
    for (n, s, _) in nodes {
        if matches!(n.role, Role::Replica(_)) {
            let lag = s.primary_seq.load(r).saturating_sub(s.seq.load(r));
            let _ = writeln!(out, "corekv_replication_lag{{node=\"{}\"}} {lag}", n.name);
        }
    }
    let _ = writeln!(
        out,
        "# HELP corekv_commit_batch_size Writes per group commit."
    );
    let _ = writeln!(out, "# TYPE corekv_commit_batch_size histogram");
    for (n, s, _) in nodes {
        if n.role != Role::Primary {
            continue;
        }
        let mut cumulative = 0;
        for b in 0..BATCH_BUCKETS {
            cumulative += s.batch_sizes[b].load(r);
            let le = if b + 1 == BATCH_BUCKETS {
                "+Inf".to_string()
            } else {
                (1u64 << b).to_string()
            };
            let _ = writeln!(
                out,
                "corekv_commit_batch_size_bucket{{node=\"{}\",le=\"{le}\"}} {cumulative}",
                n.name
            );
        }
        let _ = writeln!(
            out,
            "corekv_commit_batch_size_sum{{node=\"{}\"}} {}",
            n.name,
            s.committed_writes.load(r)
        );
        let _ = writeln!(
            out,
            "corekv_commit_batch_size_count{{node=\"{}\"}} {cumulative}",
            n.name
        );
    }
    out
}
