//! The process's etcd lease and the write deadlines it backs: the lease
//! thread grants the lease, renews it every TTL/4 and, after each renewal
//! sent at monotonic time t, lets every local node that holds a leader key
//! on it write until t + TTL − margin (`Roles::extend_lease`). [`Shared`]
//! records which local node holds its role on which lease; the state
//! machine (`engine`) changes it, under the same lock, when a node wins,
//! loses or hands over its role.
//!
//! Depends on `roles`, `topology`, `control::etcd`, `log`.

use super::etcd::Client;
use super::{ControlConfig, ControlStatus, engine::Msg};
use crate::log::Level;
use crate::log_at;
use crate::roles::Roles;
use crate::topology::Topology;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Retry interval while etcd does not answer.
const RETRY: Duration = Duration::from_millis(100);

/// The lease as both control threads see it.
#[derive(Debug)]
pub(super) struct Shared {
    inner: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Current lease (0: none).
    id: i64,
    /// Monotonic ms (`Roles::now_ms`) when the last successful grant or
    /// renewal of `id` was sent.
    sent_ms: u64,
    /// How long after `sent_ms` local primaries may write.
    valid_ms: u64,
    /// Per node id: the lease its leader key is attached to, when this
    /// process holds the role on it (0: not held).
    held: Vec<i64>,
    /// The deadline passed without a renewal and the holders were fenced.
    lapsed: bool,
}

impl Shared {
    pub(super) fn new(nodes: usize) -> Self {
        Self {
            inner: Mutex::new(State {
                id: 0,
                sent_ms: 0,
                valid_ms: 0,
                held: vec![0; nodes],
                lapsed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current lease id (0: none).
    pub(super) fn id(&self) -> i64 {
        self.lock().id
    }

    /// `node` holds its role on `lease`: it may write until the current
    /// renewal's deadline. False (and nothing changes) when `lease` is not
    /// the current lease.
    pub(super) fn hold(&self, roles: &Roles, node: usize, lease: i64) -> bool {
        let mut s = self.lock();
        if lease == 0 || s.id != lease || node >= s.held.len() {
            return false;
        }
        s.held[node] = lease;
        if !s.lapsed {
            roles.extend_lease(node, s.sent_ms.saturating_add(s.valid_ms));
        }
        true
    }

    /// `node` no longer holds a role here: fenced at once. Returns whether
    /// it was holding one.
    pub(super) fn release(&self, roles: &Roles, node: usize) -> bool {
        let mut s = self.lock();
        roles.fence(node);
        s.held
            .get_mut(node)
            .is_some_and(|h| std::mem::replace(h, 0) != 0)
    }
}

/// The lease thread's context.
pub(super) struct LeaseThread {
    pub(super) cfg: ControlConfig,
    pub(super) roles: Arc<Roles>,
    pub(super) topo: Arc<Topology>,
    pub(super) status: Arc<ControlStatus>,
    pub(super) shared: Arc<Shared>,
    /// Tells the state machine about new and lost leases.
    pub(super) events: flume::Sender<Msg>,
    /// `true`: stop and revoke; `false`: stop without revoking.
    pub(super) stop: flume::Receiver<bool>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl LeaseThread {
    pub(super) fn run(self) {
        let timeout = self.cfg.renew_every().max(Duration::from_millis(100));
        let client = Client::new(self.cfg.endpoints.clone(), timeout);
        let ttl_ms = millis(self.cfg.lease_ttl);
        let ttl_secs = i64::try_from(ttl_ms.div_ceil(1000)).unwrap_or(i64::MAX);
        let margin_ms = millis(self.cfg.margin());
        let mut wait = Duration::ZERO;
        loop {
            match self.stop.recv_timeout(wait) {
                Ok(revoke) => return self.shutdown(&client, revoke),
                Err(flume::RecvTimeoutError::Disconnected) => return self.shutdown(&client, true),
                Err(flume::RecvTimeoutError::Timeout) => {}
            }
            let id = self.shared.id();
            let sent = self.roles.now_ms();
            if id == 0 {
                wait = match client.lease_grant(ttl_secs) {
                    Ok((id, granted)) => {
                        self.status.record_ok();
                        let granted_ms = u64::try_from(granted).unwrap_or(0).saturating_mul(1000);
                        let valid = ttl_ms.min(granted_ms).saturating_sub(margin_ms);
                        {
                            let mut s = self.shared.lock();
                            s.id = id;
                            s.sent_ms = sent;
                            s.valid_ms = valid;
                            s.lapsed = false;
                        }
                        self.status.lease_id.store(id, Ordering::Release);
                        log_at!(
                            Level::Info,
                            "control",
                            "etcd lease {id:x} granted (TTL {granted} s)"
                        );
                        let _ = self.events.send(Msg::LeaseGranted(id));
                        self.cfg.renew_every()
                    }
                    Err(e) => {
                        self.status.record_error(&e);
                        log_at!(Level::Debug, "control", "lease grant failed: {e}");
                        RETRY
                    }
                };
                continue;
            }
            wait = match client.lease_keepalive(id) {
                Ok(ttl) if ttl > 0 => {
                    self.status.record_ok();
                    self.renewed(id, sent, ttl, ttl_ms, margin_ms);
                    self.cfg.renew_every()
                }
                Ok(_) => {
                    self.status.record_ok();
                    self.lost(id);
                    Duration::ZERO
                }
                Err(e) => {
                    self.status.record_error(&e);
                    log_at!(Level::Debug, "control", "lease renewal failed: {e}");
                    self.check_deadline();
                    RETRY
                }
            };
        }
    }

    /// A renewal sent at `sent` succeeded: move the holders' deadlines.
    fn renewed(&self, id: i64, sent: u64, ttl_secs: i64, ttl_ms: u64, margin_ms: u64) {
        let granted_ms = u64::try_from(ttl_secs).unwrap_or(0).saturating_mul(1000);
        let valid = ttl_ms.min(granted_ms).saturating_sub(margin_ms);
        let mut s = self.shared.lock();
        if s.id != id {
            return;
        }
        if s.lapsed {
            log_at!(
                Level::Info,
                "control",
                "etcd lease {id:x} renewed again: local primaries resume writing"
            );
        }
        s.sent_ms = sent;
        s.valid_ms = valid;
        s.lapsed = false;
        let until = sent.saturating_add(valid);
        for (node, held) in s.held.iter().enumerate() {
            if *held == id {
                self.roles.extend_lease(node, until);
            }
        }
    }

    /// etcd says the lease is gone: fence every holder, forget the lease
    /// (a new one is granted next).
    fn lost(&self, id: i64) {
        let mut fenced = Vec::new();
        {
            let mut s = self.shared.lock();
            s.id = 0;
            for (node, held) in s.held.iter_mut().enumerate() {
                if *held != 0 {
                    *held = 0;
                    self.roles.fence(node);
                    fenced.push(node);
                }
            }
        }
        self.status.lease_id.store(0, Ordering::Release);
        self.count_fenced(&fenced, &format!("etcd lease {id:x} is gone"));
        log_at!(
            Level::Warn,
            "control",
            "etcd lease {id:x} expired or was revoked; granting a new one"
        );
        let _ = self.events.send(Msg::LeaseLost(id));
    }

    /// Renewals keep failing: once the deadline passes, fence the holders
    /// explicitly (their deadline already stops them) and count it once.
    fn check_deadline(&self) {
        let mut fenced = Vec::new();
        {
            let mut s = self.shared.lock();
            if s.lapsed || self.roles.now_ms() < s.sent_ms.saturating_add(s.valid_ms) {
                return;
            }
            s.lapsed = true;
            for (node, held) in s.held.iter().enumerate() {
                if *held != 0 {
                    self.roles.fence(node);
                    fenced.push(node);
                }
            }
        }
        self.count_fenced(&fenced, "the etcd lease could not be renewed in time");
    }

    fn count_fenced(&self, nodes: &[usize], why: &str) {
        for &node in nodes {
            self.status.fenced.fetch_add(1, Ordering::Relaxed);
            let name = self.topo.node(node).map_or("?", |n| n.name.as_str());
            log_at!(Level::Warn, name, "stops taking writes: {why} (fenced)");
        }
    }

    /// `revoke`: a planned stop (fence, revoke). Otherwise the thread just
    /// stops renewing, as if the process hung: the holders' deadlines run
    /// out on their own and etcd lets the lease expire.
    fn shutdown(&self, client: &Client, revoke: bool) {
        if !revoke {
            return;
        }
        let id = {
            let mut s = self.shared.lock();
            for (node, held) in s.held.iter_mut().enumerate() {
                if *held != 0 {
                    *held = 0;
                    self.roles.fence(node);
                }
            }
            std::mem::replace(&mut s.id, 0)
        };
        self.status.lease_id.store(0, Ordering::Release);
        if id != 0 {
            match client.lease_revoke(id) {
                Ok(()) => log_at!(Level::Info, "control", "etcd lease {id:x} revoked"),
                Err(e) => log_at!(Level::Warn, "control", "revoking lease {id:x}: {e}"),
            }
        }
    }
}
