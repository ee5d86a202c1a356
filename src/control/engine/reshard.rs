//! The control plane's part in an online reshard (N → 2N shards): the
//! state machine learns the new shards when the topology grows, keeps every
//! new shard whose pair has not split without a primary of its own (its
//! nodes follow the old shard's current primary: its `Roles` entry mirrors
//! the old shard's, through any failover of the old shard; no election is
//! held for it), and at the pair's cutover makes the new shard's target
//! node its first primary with one etcd txn, in an epoch above the old
//! shard's (so the divergence check of replication tells the new shard's
//! history from the old one's past the cutover seq). The cutover's commit
//! point is the old shard's split key, put only while its held primary
//! still leads it; every process records a split it sees in its layout.
//! Once the pair split, the new shard is an ordinary shard (elections,
//! switchovers).
//!
//! Part of `engine` (same state); depends on `control::etcd` and `roles`.

use super::super::etcd::{cmp_create, cmp_mod, op_delete, op_get, op_put};
use super::{Engine, Promoted};
use crate::control::ControlError;
use crate::log::Level;
use crate::log_at;
use serde_json::json;
use std::time::Instant;

impl Engine {
    /// The old shard that shard `s` copies (see `Placement::copies`).
    pub(super) fn copies(&self, s: usize) -> Option<usize> {
        self.reshard.copies(s)
    }

    /// `P/shards/s/split-to-T`: old shard `s` split in the reshard to `to`
    /// shards (the commit point of its cutover).
    pub(super) fn split_key(&self, s: usize, to: usize) -> Vec<u8> {
        self.key(s, &format!("split-to-{to}"))
    }

    /// A split key was seen (watch or read): record it in the layout.
    pub(super) fn split_seen(&mut self, s: usize, to: usize) {
        if self.reshard.unsplit_to(s) != Some(to) {
            return;
        }
        match self.reshard.record_split(s, to) {
            Ok(()) => log_at!(
                Level::Info,
                "control",
                "reshard: shard {s} split (etcd); its moved keys go to shard {}",
                s + to / 2
            ),
            Err(e) => {
                log_at!(
                    Level::Error,
                    "control",
                    "reshard: cannot record the split of shard {s}: {e}; reading etcd again"
                );
                // The next read of the shard keys tries again.
                self.synced = false;
            }
        }
    }

    /// The commit point of old shard `s`'s cutover: its split key, put only
    /// while local node `n` leads `s` (same leader key as known here), then
    /// recorded in this process's layout. Asked again, it answers Ok.
    pub(super) fn reshard_split(&mut self, s: usize, n: usize) -> Result<(), ControlError> {
        let Some(to) = self.reshard.unsplit_to(s) else {
            // Split already (or no reshard): the layout answers for it.
            return Ok(());
        };
        let Some(leader) = self.shards.get(s).and_then(|st| st.leader.clone()) else {
            return Err(ControlError::NoPrimary(s));
        };
        if leader.node != Some(n) || leader.lease != self.lease || self.lease == 0 {
            return Err(ControlError::Conflict(format!(
                "{} does not lead shard {s} on this process's lease",
                self.name(n)
            )));
        }
        let key = self.split_key(s, to);
        let value = json!({"to": to}).to_string();
        let r = self
            .client
            .txn(
                &[
                    cmp_mod(&self.leader_key(s), leader.mod_rev),
                    cmp_create(&key, 0),
                ],
                &[op_put(&key, value.as_bytes(), 0)],
                &[op_get(&key)],
            )
            .map_err(|e| {
                self.error("a reshard's split", &e);
                ControlError::Etcd(e)
            })?;
        if !r.succeeded && r.read.is_empty() {
            return Err(ControlError::Conflict(format!(
                "the leader of shard {s} changed; the split did not happen"
            )));
        }
        // Put now, or by an earlier attempt: the split is committed.
        self.split_seen(s, to);
        Ok(())
    }

    /// Learns the shards a reshard added (their keys are read again) and
    /// keeps the roles of the new shards that copy an old one in line.
    pub(super) fn follow_layout(&mut self) {
        let count = self.topo.shard_count();
        if count > self.shards.len() {
            self.shards.resize_with(count, Default::default);
            // Read every shard's keys again, the new ones included.
            self.synced = false;
        }
        for s in 0..self.shards.len() {
            let Some(old) = self.copies(s) else {
                if self.synced
                    && self.shards[s].leader.is_none()
                    && self.shards[s].election.is_none()
                    && !self.locals(s).is_empty()
                {
                    // A pair split while its new shard had no primary (the
                    // process that took the role died): elect one.
                    self.start_election(s);
                }
                continue;
            };
            self.shards[s].election = None;
            if self.shards[s].leader.is_none() {
                let want = self.roles.primary(old);
                if self.roles.primary(s) != want {
                    self.roles.set_primary(s, want);
                }
            }
        }
    }

    /// The cutover of a reshard's pair: local node `n` becomes the first
    /// primary of new shard `s`, in an epoch above every epoch of the old
    /// shard, through a txn that succeeds only while `s` has no leader.
    /// Asked again (a re-run), it answers what it did.
    pub(super) fn reshard_promote(&mut self, s: usize, n: usize) -> Result<Promoted, ControlError> {
        if s >= self.shards.len() || self.info(n).is_none_or(|i| i.shard != s) {
            return Err(ControlError::UnknownNode(n));
        }
        let held_by = |leader: &Option<super::Leader>| {
            leader
                .as_ref()
                .filter(|l| l.node == Some(n))
                .map(|l| Promoted {
                    shard: s,
                    node: n,
                    epoch: l.epoch,
                })
        };
        if let Some(done) = held_by(&self.shards[s].leader) {
            return Ok(done);
        }
        let Some(old) = self.copies(s) else {
            return Err(ControlError::Conflict(format!(
                "shard {s} has split already; its primary is elected"
            )));
        };
        if self.lease == 0 {
            return Err(ControlError::Etcd(super::EtcdError::Transport(
                "this process holds no etcd lease".into(),
            )));
        }
        let (epoch_key, leader_key) = (self.epoch_key(s), self.leader_key(s));
        let (cmp_epoch, etcd_epoch) = self.read_epoch(&epoch_key).map_err(|e| {
            self.error("reading the epoch", &e);
            ControlError::Etcd(e)
        })?;
        let epoch = etcd_epoch
            .max(self.shards[s].epoch_seen)
            .max(self.shards[old].epoch_seen)
            .max(self.roles.epoch(s))
            .max(self.roles.epoch(old))
            .max((self.progress)(n).0)
            + 1;
        let value = json!({"node": self.name(n), "epoch": epoch}).to_string();
        let r = self
            .client
            .txn(
                &[cmp_create(&leader_key, 0), cmp_epoch],
                &[
                    op_put(&leader_key, value.as_bytes(), self.lease),
                    op_put(&epoch_key, epoch.to_string().as_bytes(), 0),
                ],
                &[op_get(&leader_key)],
            )
            .map_err(|e| {
                self.error("a reshard's promote", &e);
                ControlError::Etcd(e)
            })?;
        if r.succeeded {
            log_at!(
                Level::Info,
                self.name(n),
                "reshard: first primary of new shard {s} in epoch {epoch} (shard {old} is in epoch {})",
                self.roles.epoch(old)
            );
            let kv = self.own_leader_kv(leader_key, value, r.revision);
            self.leader_put(s, &kv);
            return Ok(Promoted {
                shard: s,
                node: n,
                epoch,
            });
        }
        if let Some(kv) = r.read.first() {
            self.leader_put(s, kv);
        }
        held_by(&self.shards[s].leader).ok_or_else(|| {
            ControlError::Conflict(format!(
                "shard {s} got another leader, or its epoch moved; try again"
            ))
        })
    }

    /// A cutover that did not commit is undone: this process's leader key
    /// of new shard `s` (whose pair has not split) goes, and its nodes
    /// follow the old shard again. Nothing to do when it holds none.
    pub(super) fn reshard_undo(&mut self, s: usize) -> Result<(), ControlError> {
        let Some(old) = self.copies(s).filter(|_| s < self.shards.len()) else {
            return Ok(());
        };
        let Some(leader) = self.shards[s].leader.clone() else {
            return Ok(());
        };
        if leader.lease != self.lease || leader.node.is_none_or(|n| !self.is_local(n)) {
            return Ok(());
        }
        let key = self.leader_key(s);
        let r = self
            .client
            .txn(&[cmp_mod(&key, leader.mod_rev)], &[op_delete(&key)], &[])
            .map_err(|e| {
                self.error("undoing a reshard's promote", &e);
                ControlError::Etcd(e)
            })?;
        if r.succeeded {
            log_at!(
                Level::Info,
                "control",
                "reshard: shard {s} follows shard {old} again (cutover undone)"
            );
            self.leader_delete(s, r.revision);
            Ok(())
        } else {
            Err(ControlError::Conflict(format!(
                "the leader of shard {s} changed; try again"
            )))
        }
    }

    /// Starts an election for shard `s` now (no leader, local nodes).
    pub(super) fn start_election(&mut self, s: usize) {
        let now = Instant::now();
        self.shards[s].election = Some(super::Election {
            started: now,
            next: now,
            stage: super::Stage::Announce,
        });
    }
}
