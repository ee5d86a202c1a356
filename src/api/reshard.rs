//! `/admin/reshard*`: the steps `corekv reshard` drives a running cluster
//! through (see `reshard` for the order and why it is safe), the state it
//! reads, and the background purge each primary runs after its pair's
//! cutover. The token is required when one is configured.
//!
//! - `GET /admin/reshard`: this process's view (JSON).
//! - `POST /admin/reshard/prepare` (body: the new layout's TOML): record
//!   the reshard, start the new shards' local nodes (they follow their old
//!   shard). Idempotent.
//! - `POST /admin/reshard/hold?pair=I&ms=M` on old shard I's primary:
//!   commit what is queued, hold its writes, answer the seq.
//! - `POST /admin/reshard/promote?pair=I&seq=S`: new shard I+N's primary
//!   (which must be at seq S) stops following and may write; with
//!   `--etcd`, through the control plane (its leader key, a new epoch).
//! - `POST /admin/reshard/split?pair=I`: on old shard I's held primary, the
//!   cutover's commit point (recorded while nothing commits); elsewhere,
//!   record it in this process.
//! - `POST /admin/reshard/release?pair=I`: the held primary takes writes
//!   again (writes for keys that moved go to their new owner).
//! - `POST /admin/reshard/finish`, `POST /admin/reshard/abort`.
//!
//! Depends on `layout`, `roles`, `nodestore`, `control` (its client) and
//! the API's helpers.

use super::query::take_param;
use super::{Api, ApiError};
use crate::control::{ControlError, outcome};
use crate::http::encode::{JSON, Response};
use crate::http::form;
use crate::http::parse::{Method, Request};
use crate::layout::{State, Stored};
use crate::log::Level;
use crate::log_at;
use crate::nodestore::{HoldCtl, NodeStore};
use serde_json::{Value, json};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest hold a reshard command may ask for.
const MAX_HOLD: Duration = Duration::from_secs(10);
/// How often a node checks whether it has keys to purge.
const PURGE_CHECK: Duration = Duration::from_millis(200);
/// Keys scanned (and at most deleted) per purge step.
const PURGE_PAGE: usize = 512;

fn refused(status: u16, why: impl Into<String>) -> ApiError {
    ApiError::Reshard {
        status,
        why: why.into(),
    }
}

fn json_ok(v: &Value) -> Response {
    let mut bytes = v.to_string().into_bytes();
    bytes.push(b'\n');
    Response::new(200, JSON, bytes)
}

impl Api {
    pub(super) async fn reshard(&self, req: &Request) -> Result<Response, ApiError> {
        self.authorize(req)?;
        let step = req
            .path()
            .strip_prefix(b"/admin/reshard")
            .unwrap_or_default();
        if step.is_empty() {
            return match req.method {
                Method::Get | Method::Head => Ok(json_ok(&self.reshard_state())),
                _ => Err(ApiError::MethodNotAllowed("GET, HEAD")),
            };
        }
        if req.method != Method::Post {
            return Err(ApiError::MethodNotAllowed("POST"));
        }
        let mut params =
            form::parse_pairs(req.query()).map_err(|_| ApiError::BadEncoding("query"))?;
        let mut number = |name: &'static str| -> Result<u64, ApiError> {
            let raw = take_param(&mut params, name).ok_or(ApiError::MissingParam(name))?;
            std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(ApiError::BadParam(name, "not a number"))
        };
        match step {
            b"/prepare" => self.reshard_prepare(req).await,
            b"/hold" => {
                let pair = index(number("pair")?);
                let ms = number("ms")?;
                self.reshard_hold(pair, Duration::from_millis(ms).min(MAX_HOLD))
                    .await
            }
            b"/promote" => {
                let pair = index(number("pair")?);
                let seq = number("seq")?;
                self.reshard_promote(pair, seq).await
            }
            b"/split" => {
                let pair = index(number("pair")?);
                self.reshard_split(pair).await
            }
            b"/release" => {
                let held = self.hold.borrow_mut().take();
                if let Some(ctl) = held {
                    let _ = ctl.send(HoldCtl::Release);
                }
                Ok(json_ok(&json!({"released": true})))
            }
            b"/finish" => self.reshard_end(State::Done),
            b"/abort" => self.reshard_end(State::Aborted),
            _ => Err(ApiError::UnknownPath),
        }
    }

    /// This process's view of the reshard (`GET /admin/reshard`).
    fn reshard_state(&self) -> Value {
        let layout = self.router.layout();
        let placement = layout.placement();
        let Some(stored) = layout.stored() else {
            return json!({"state": "idle", "shards": placement.shards(), "pairs": []});
        };
        let state = match stored.state {
            State::Resharding => "resharding",
            State::Done => "done",
            State::Aborted => "aborted",
        };
        let topo = self.router.topology();
        let roles = self.router.roles();
        let locals = self.locals.load();
        // The current primary (with `--etcd` it moves), else the
        // configured one.
        let primary = |shard: usize| {
            roles
                .primary(shard)
                .and_then(|(id, _)| topo.node(id))
                .unwrap_or_else(|| topo.primary_of(shard))
        };
        let stats_of = |id: usize| {
            locals
                .iter()
                .find(|(n, _, _)| n.id == id)
                .map(|(_, s, _)| s.clone())
        };
        let pairs: Vec<Value> = (0..stored.from)
            .map(|i| {
                let new = i + stored.from;
                let source_node = primary(i);
                // Until the split, the node the cutover makes the new
                // shard's primary: its configured primary.
                let target_node = if stored.split[i] {
                    primary(new)
                } else {
                    topo.primary_of(new)
                };
                let (source, target) = (stats_of(source_node.id), stats_of(target_node.id));
                let purged = stored.purged.get(i).copied().unwrap_or(false)
                    && stored.purged.get(new).copied().unwrap_or(false);
                let held = source
                    .as_ref()
                    .is_some_and(|s| s.held.load(Ordering::Acquire));
                let phase = match (stored.state, stored.split[i]) {
                    (State::Done, _) => "purged",
                    (_, true) if purged => "purged",
                    (_, true) => "split",
                    (_, false) if held => "held",
                    (_, false) => "copying",
                };
                let load = |s: &Option<std::sync::Arc<crate::nodestore::NodeStats>>,
                            f: fn(&crate::nodestore::NodeStats) -> u64| {
                    s.as_ref().map(|s| f(s))
                };
                json!({
                    "shard": i,
                    "to": new,
                    "phase": phase,
                    "source": source_node.address,
                    "target": target_node.address,
                    "source_seq": load(&source, |s| s.seq.load(Ordering::Acquire)),
                    "target_seq": load(&target, |s| s.seq.load(Ordering::Acquire)),
                    "source_keys": load(&source, |s| s.keys.load(Ordering::Relaxed)),
                    "target_keys": load(&target, |s| s.keys.load(Ordering::Relaxed)),
                    "source_purged": stored.purged.get(i).copied().unwrap_or(false),
                    "target_purged": stored.purged.get(new).copied().unwrap_or(false),
                    "purged_keys": load(&source, |s| s.purged_keys.load(Ordering::Relaxed)).unwrap_or(0)
                        + load(&target, |s| s.purged_keys.load(Ordering::Relaxed)).unwrap_or(0),
                })
            })
            .collect();
        json!({
            "state": state,
            // From the stored state, not the placement read above: they
            // change together, and this answer must be one of them.
            "shards": stored.placement().shards(),
            "from": stored.from,
            "to": 2 * stored.from,
            "pairs": pairs,
        })
    }

    async fn reshard_prepare(&self, req: &Request) -> Result<Response, ApiError> {
        let text = std::str::from_utf8(req.body())
            .map_err(|_| ApiError::BadBody("the layout must be UTF-8 TOML".into()))?
            .to_string();
        let prepare = self
            .prepare
            .as_ref()
            .ok_or_else(|| refused(503, "this node cannot start nodes"))?;
        let answer = prepare(text)
            .ok_or_else(|| refused(503, "the process is shutting down"))?
            .recv_async()
            .await
            .map_err(|_| {
                refused(
                    503,
                    "the process did not answer (busy with another prepare, or shutting down)",
                )
            })?;
        answer.map_err(|why| refused(409, why))?;
        Ok(json_ok(&self.reshard_state()))
    }

    /// Holds this primary's writes for the cutover of its pair.
    async fn reshard_hold(&self, pair: usize, max: Duration) -> Result<Response, ApiError> {
        let me = self.me();
        let stored = self.router.layout().stored();
        let Some(stored) = stored.filter(|s| s.state == State::Resharding) else {
            return Err(refused(409, "no reshard is under way"));
        };
        if me.shard != pair || !self.router.is_primary() {
            return Err(refused(
                409,
                format!("{} is not the primary of shard {pair}", me.name),
            ));
        }
        if stored.is_split(pair) {
            return Err(refused(409, format!("shard {pair} has split already")));
        }
        if let Some(old) = self.hold.borrow_mut().take() {
            let _ = old.send(HoldCtl::Release);
        }
        let (seq, ctl) = self
            .shard
            .hold(max)
            .await
            .map_err(|e| refused(503, format!("cannot hold writes: {e}")))?;
        *self.hold.borrow_mut() = Some(ctl);
        Ok(json_ok(&json!({"pair": pair, "seq": seq})))
    }

    /// New shard `pair + N`'s primary, caught up to `seq`, takes writes.
    async fn reshard_promote(&self, pair: usize, seq: u64) -> Result<Response, ApiError> {
        let (stored, new) = self.pair_of(pair)?;
        if stored.is_split(pair) {
            return Ok(json_ok(&json!({"pair": pair, "promoted": true})));
        }
        let topo = self.router.topology();
        let target = topo.primary_of(new);
        let locals = self.locals.load();
        let Some((_, stats, _)) = locals.iter().find(|(n, _, _)| n.id == target.id) else {
            return Err(refused(
                409,
                format!("{} does not run in this process", target.name),
            ));
        };
        let at = stats.seq.load(Ordering::Acquire);
        if at != seq {
            return Err(refused(
                409,
                format!("{} is at seq {at}, not {seq}", target.name),
            ));
        }
        let Some(control) = self.control.as_ref() else {
            self.router.roles().take_over(new, target.id);
            log_at!(
                Level::Info,
                &target.name,
                "reshard: primary of new shard {new} from seq {seq}"
            );
            return Ok(json_ok(&json!({"pair": pair, "promoted": true})));
        };
        // With `--etcd`: the new shard's leader key, in a new epoch, on
        // this process's lease (the control plane's thread runs the txn).
        let failed = |e: ControlError| refused(503, format!("promote through etcd: {e}"));
        let promoted = outcome(control.request_reshard_promote(new, target.id))
            .await
            .map_err(failed)?;
        Ok(json_ok(
            &json!({"pair": pair, "promoted": true, "epoch": promoted.epoch}),
        ))
    }

    /// The cutover's commit point on the held primary of `pair`; anywhere
    /// else, records it in this process.
    async fn reshard_split(&self, pair: usize) -> Result<Response, ApiError> {
        let (stored, new) = self.pair_of(pair)?;
        let committed = stored.is_split(pair);
        // Once recorded, a split is answered from the record (a re-run
        // may ask after the hold that took it ended on its own).
        let held = self.hold.borrow().clone();
        let held = held.filter(|_| !committed && self.me().shard == pair);
        let seq = if let Some(ctl) = held {
            if let Some(control) = self.control.as_ref() {
                // With `--etcd` the commit point is the split key in etcd,
                // put while this node still leads the shard; the held
                // committer then records it here.
                let failed = |e: ControlError| refused(409, format!("split through etcd: {e}"));
                outcome(control.request_reshard_split(pair, self.me().id))
                    .await
                    .map_err(failed)?;
            }
            let (tx, rx) = flume::bounded(1);
            if ctl
                .send_async(HoldCtl::Split { pair, reply: tx })
                .await
                .is_err()
            {
                let mut hold = self.hold.borrow_mut();
                if hold.as_ref().is_some_and(|h| h.same_channel(&ctl)) {
                    hold.take();
                }
                return Err(refused(409, "the hold ended before the split"));
            }
            let seq = rx
                .recv_async()
                .await
                .map_err(|_| refused(409, "the hold ended before the split"))?
                .map_err(|why| refused(500, why))?;
            Some(seq)
        } else {
            // Where shard `pair`'s primary runs, only its held committer
            // may take the split (the commit point): recorded anywhere
            // else first, the writes it still takes would be sent away.
            let primary = self.router.topology().primary_of(pair);
            if !committed && primary.local {
                return Err(refused(
                    409,
                    format!(
                        "shard {pair}'s split is taken on its held primary {} first",
                        primary.address
                    ),
                ));
            }
            self.router
                .layout()
                .set_split(pair)
                .map_err(|e| refused(409, e.0))?;
            None
        };
        if self.control.is_none() {
            // With `--etcd` the new shard's primary is its leader key's.
            let topo = self.router.topology();
            self.router.roles().take_over(new, topo.primary_of(new).id);
        }
        Ok(json_ok(&json!({"pair": pair, "split": true, "seq": seq})))
    }

    /// The stored reshard and new shard of `pair`.
    fn pair_of(&self, pair: usize) -> Result<(Stored, usize), ApiError> {
        let stored = self
            .router
            .layout()
            .stored()
            .filter(|s| s.state == State::Resharding)
            .ok_or_else(|| refused(409, "no reshard is under way"))?;
        if pair >= stored.from {
            return Err(refused(400, format!("no pair {pair}")));
        }
        let new = pair + stored.from;
        if new >= self.router.topology().shard_count() {
            return Err(refused(409, "this process has not prepared the reshard"));
        }
        Ok((stored, new))
    }

    /// Finishes (every pair split) or aborts (no pair split) the reshard.
    fn reshard_end(&self, to: State) -> Result<Response, ApiError> {
        self.router
            .layout()
            .update(|s| match s {
                Some(s) if s.state == to => Ok(false),
                Some(s) if s.state == State::Resharding => {
                    let split = s.split.iter().filter(|&&x| x).count();
                    match to {
                        State::Done if split < s.from => Err(crate::layout::LayoutError(format!(
                            "{} of {} pairs have not split",
                            s.from - split,
                            s.from
                        ))),
                        State::Aborted if split > 0 => Err(crate::layout::LayoutError(format!(
                            "{split} pair(s) have split already: the reshard can only be finished"
                        ))),
                        _ => {
                            s.state = to;
                            if to == State::Done {
                                // The command finishes once both sides
                                // of every pair purged (each process saw
                                // its own sides only).
                                s.purged.iter_mut().for_each(|p| *p = true);
                            }
                            Ok(true)
                        }
                    }
                }
                _ => Err(crate::layout::LayoutError("no reshard is under way".into())),
            })
            .map_err(|e| refused(409, e.0))?;
        Ok(json_ok(&self.reshard_state()))
    }
}

fn index(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A node's purge after its pair's cutover: while it is the primary of a
/// shard that split and holds keys it no longer owns, delete them in small
/// committed steps (replicated like any delete), reading pages on the
/// node's reader thread so reads are not stalled; a pass that finds none
/// records the shard as purged.
pub async fn purge_forever(api: Rc<Api>, shard: Rc<NodeStore>) {
    loop {
        glommio::timer::sleep(PURGE_CHECK).await;
        let layout = api.router.layout().clone();
        // One atomic load when no reshard is under way (the usual case).
        if !layout.resharding() {
            continue;
        }
        let me = api.me().shard;
        let due = layout.stored().is_some_and(|s| {
            s.state == State::Resharding
                && s.is_split(me)
                && !s.purged.get(me).copied().unwrap_or(true)
        });
        if !due || !api.router.is_primary() {
            continue;
        }
        match purge_pass(&api, &shard).await {
            Ok(0) => {
                if let Err(e) = layout.set_purged(me) {
                    log_at!(Level::Warn, &api.me().name, "reshard purge: {e}");
                } else {
                    log_at!(
                        Level::Info,
                        &api.me().name,
                        "reshard: shard {me} holds only its own keys"
                    );
                }
            }
            Ok(n) => log_at!(
                Level::Info,
                &api.me().name,
                "reshard: purged {n} keys that moved away"
            ),
            Err(e) => log_at!(Level::Warn, &api.me().name, "reshard purge: {e}"),
        }
    }
}

/// One pass over the node's keys; returns how many it deleted.
async fn purge_pass(api: &Api, shard: &NodeStore) -> Result<usize, crate::nodestore::StoreError> {
    let me = api.me().shard;
    let layout = api.router.layout().clone();
    let mut after: Option<Vec<u8>> = None;
    let mut deleted = 0;
    loop {
        let page = shard
            .scan_prefix(Vec::new(), after.clone(), PURGE_PAGE)
            .await?;
        let full = page.len() >= PURGE_PAGE;
        after = page.last().map(|(k, _)| k.clone());
        let moved: Vec<Vec<u8>> = page
            .into_iter()
            .filter(|(k, _)| layout.owner(k) != me)
            .map(|(k, _)| k)
            .collect();
        if !moved.is_empty() {
            deleted += shard.purge(moved).await?;
        }
        if !full {
            return Ok(deleted);
        }
        // Let the executor serve requests between steps.
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}
