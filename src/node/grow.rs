//! A process's part in an online reshard: which layout it starts with
//! (the one stored in the data directory wins over an older `--config`),
//! who the new shards' nodes follow until their pair's cutover, and the
//! start of the new layout's local nodes while the process runs
//! (`POST /admin/reshard/prepare`, handled on the main thread, which owns
//! start-up).
//!
//! Depends on `layout`, `topology`, `roles`, `config` and the start-up
//! steps of `node`. A process with `--serve` starts the new nodes its list
//! names; new nodes on another host run in a process the operator starts
//! with the new layout and `--joining` ([`join`]). With `--etcd` the
//! control plane moves the new shards' roles (`control::engine::reshard`).

use super::{
    Event, NodeError, Options, Shared, Stop, await_ready, bind_listeners, node_contexts,
    open_stores, spawn_executors,
};
use crate::api::Prepare;
use crate::config::{self, ClusterConfig};
use crate::layout::{self, Layout, State, Stored};
use crate::log::Level;
use crate::log_at;
use crate::roles::Roles;
use crate::topology::{NodeInfo, Topology};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

/// The layout to start with: `cfg` (from `--config`), unless the data
/// directory holds a reshard's layout that `cfg` is the start of (the
/// operator restarted with the old file); the stored state comes along.
///
/// # Errors
/// The stored layout cannot be read, or it does not fit `--config`.
pub(super) fn effective_layout(
    opts: &Options,
    cfg: ClusterConfig,
) -> Result<(ClusterConfig, Option<Stored>), NodeError> {
    let bad = |message: String| {
        NodeError::Config(config::ConfigError {
            file: opts.data_dir.join(layout::FILE_NAME),
            line: None,
            message,
        })
    };
    let Some(stored) = layout::read_stored(&opts.data_dir).map_err(|e| bad(e.0))? else {
        return Ok((cfg, None));
    };
    if stored.state == State::Aborted {
        return Ok((cfg, None));
    }
    let path = opts.data_dir.join(layout::FILE_NAME);
    let new = config::parse(&path, &stored.config).map_err(NodeError::Config)?;
    if cfg.shards == new.shards {
        return Ok((cfg, Some(stored)));
    }
    if cfg.shards.len() == stored.from && new.shards.starts_with(&cfg.shards) {
        log_at!(
            Level::Info,
            "corekv",
            "using the layout stored in {} ({} shards, reshard {}) instead of the {} shards of {}",
            path.display(),
            new.shards.len(),
            state_name(stored.state),
            cfg.shards.len(),
            opts.config.display()
        );
        return Ok((new, Some(stored)));
    }
    Err(bad(format!(
        "holds a layout of {} shards (reshard from {}) that {} ({} shards) is neither equal to nor the start of; start with that layout, or move the file away",
        new.shards.len(),
        stored.from,
        opts.config.display(),
        cfg.shards.len()
    )))
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Resharding => "under way",
        State::Done => "done",
        State::Aborted => "aborted",
    }
}

/// `--joining`: a process of the new layout's second half records the
/// reshard (N = half of `cfg`'s shards) before it starts, unless its data
/// directory has a layout already (a restart), so that its nodes follow
/// their old shards instead of taking writes as empty primaries.
///
/// # Errors
/// An odd layout, a `--serve` node among the first half, or the file.
pub(super) fn join(opts: &Options, cfg: &ClusterConfig) -> Result<(), NodeError> {
    let bad = |message: String| {
        NodeError::Config(config::ConfigError {
            file: opts.config.clone(),
            line: None,
            message,
        })
    };
    if layout::read_stored(&opts.data_dir)
        .map_err(|e| bad(e.0))?
        .is_some()
    {
        return Ok(());
    }
    let n = cfg.shards.len();
    if !n.is_multiple_of(2) {
        return Err(bad(format!(
            "--joining: the new layout has {n} shards, not twice the old count"
        )));
    }
    let serve = opts.serve.as_deref().unwrap_or_default();
    let old = cfg.shards[..n / 2].iter().find(|s| {
        serve
            .iter()
            .any(|a| *a == s.address || s.replicas.contains(a))
    });
    if let Some(s) = old {
        return Err(bad(format!(
            "--joining: --serve names a node of shard {} of the old layout; a joining process runs only the new shards' nodes",
            s.name
        )));
    }
    let text = std::fs::read_to_string(&opts.config)
        .map_err(|e| bad(format!("cannot read the config: {e}")))?;
    std::fs::create_dir_all(&opts.data_dir).map_err(|error| NodeError::DataDir {
        path: opts.data_dir.clone(),
        error,
    })?;
    Layout::open(&opts.data_dir, n / 2, None)
        .update(|s| {
            *s = Some(Stored::begin(text, n / 2));
            Ok(true)
        })
        .map_err(|e| bad(e.0))
}

/// Until its pair's cutover, every node of new shard `i + from` follows
/// old shard `i`'s primary and may not write: the roles say shard
/// `i + from`'s primary is that node.
pub(super) fn follow_unsplit(roles: &Roles, topo: &Topology, stored: &Stored) {
    if stored.state != State::Resharding || roles.is_controlled() {
        // With `--etcd` the control plane keeps these roles in line with
        // the old shards' current primaries (`control::engine::reshard`).
        return;
    }
    for (i, &split) in stored.split.iter().enumerate() {
        let new = i + stored.from;
        if new >= topo.shard_count() {
            continue;
        }
        if split {
            // Fixed roles already made its configured primary writable.
            continue;
        }
        let source = topo.primary_of(i).id;
        roles.set_primary(new, Some((source, roles.epoch(i).max(1))));
        roles.fence(topo.primary_of(new).id);
    }
}

/// The function executors call to hand a prepare request to the main
/// thread (which answers on the returned channel).
pub(super) fn prepare_sender(events: &Sender<Event>) -> Prepare {
    let events = Mutex::new(events.clone());
    Arc::new(move |text: String| {
        let (tx, rx) = flume::bounded(1);
        let sent = events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(Event::Prepare(text, tx));
        sent.ok().map(|()| rx)
    })
}

/// Why a prepare request did not start the new layout.
pub(super) enum GrowError {
    /// The request does not fit (answered to the caller; nothing changed).
    Refused(String),
    /// The process cannot go on (a node failed to start).
    Fatal(NodeError),
}

type Started = (Vec<(usize, std::thread::JoinHandle<()>)>, Vec<Stop>);

/// What the main thread needs to start nodes while the process runs.
pub(super) struct Grower<'a> {
    pub(super) opts: &'a Options,
    pub(super) shared: &'a Shared,
    pub(super) events: &'a Sender<Event>,
}

impl Grower<'_> {
    /// Records the reshard to the layout `text` (N shards → 2N) and starts
    /// the new shards' local nodes, each following its old shard's
    /// primary. Idempotent: the same layout again changes nothing but the
    /// roles of pairs that have not split (they follow again, which a
    /// retried cutover needs).
    pub(super) fn prepare(
        &self,
        text: &str,
        events: &Receiver<Event>,
        stash: &mut Vec<Event>,
    ) -> Result<Started, GrowError> {
        let Shared {
            topo,
            plane,
            layout,
            ..
        } = self.shared;
        let refuse = |s: String| GrowError::Refused(s);
        let new = config::parse(std::path::Path::new("(reshard layout)"), text)
            .map_err(|e| refuse(e.to_string()))?;
        let placement = layout.placement();
        let from = placement.shards();
        let stored = layout.stored();
        let same_reshard = stored.as_ref().is_some_and(|s| {
            s.state == State::Resharding
                && config::parse(std::path::Path::new("layout.json"), &s.config)
                    .is_ok_and(|c| c.shards == new.shards)
        });
        if !same_reshard {
            if placement.resharding() {
                return Err(refuse(
                    "another reshard is under way (finish or abort it first)".into(),
                ));
            }
            check_doubles(topo, from, &new).map_err(refuse)?;
            super::check_sync_replicas(&new, self.opts.sync_replicas)
                .map_err(|e| refuse(e.to_string()))?;
            if topo.shard_count() != from {
                return Err(refuse(
                    "this process already knows other new shards (an aborted reshard): restart it before another reshard".into(),
                ));
            }
            layout
                .update(|s| {
                    *s = Some(Stored::begin(text.to_string(), from));
                    Ok(true)
                })
                .map_err(|e| refuse(e.0))?;
            log_at!(
                Level::Info,
                "corekv",
                "reshard: {from} → {} shards; starting the new shards' local nodes",
                new.shards.len()
            );
        }
        let added = topo
            .grow(&new, self.opts.serve.as_deref())
            .map_err(|e| refuse(e.to_string()))?;
        if let Some(s) = layout.stored() {
            follow_unsplit(&plane.roles, topo, &s);
            if let Some(control) = &plane.control {
                // A cutover retried after one that did not commit: the new
                // shard's first primary (if this process made one) steps
                // down, and its nodes follow the old shard again.
                for (i, _) in s.split.iter().enumerate().filter(|(_, split)| !**split) {
                    control
                        .reshard_undo(i + s.from)
                        .map_err(|e| refuse(format!("undoing the cutover of shard {i}: {e}")))?;
                }
            }
        }
        let locals: Vec<NodeInfo> = added.into_iter().filter(|n| n.local).collect();
        if locals.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        if !same_reshard {
            // A new shard's node starts empty and copies its old shard: a
            // file left by an aborted reshard may hold another shard's
            // history under the same name.
            for n in &locals {
                let path = self.opts.data_dir.join(format!("{}.redb", n.file_stem()));
                if path.exists() {
                    log_at!(
                        Level::Warn,
                        &n.name,
                        "removing {} left by an earlier reshard",
                        path.display()
                    );
                    std::fs::remove_file(&path)
                        .map_err(|e| refuse(format!("{}: {e}", path.display())))?;
                }
            }
        }
        self.start(&locals, events, stash).map_err(GrowError::Fatal)
    }

    /// Opens, binds and starts `locals` like start-up does.
    fn start(
        &self,
        locals: &[NodeInfo],
        events: &Receiver<Event>,
        stash: &mut Vec<Event>,
    ) -> Result<Started, NodeError> {
        let addrs = locals
            .iter()
            .map(|n| super::resolve(&n.address))
            .collect::<Result<Vec<_>, _>>()?;
        let stores = open_stores(
            self.opts,
            locals,
            &self.shared.plane.roles,
            &self.shared.layout,
        )?;
        let listeners = bind_listeners(locals, &addrs)?;
        let (contexts, stops) = node_contexts(self.opts, self.shared, locals, stores);
        let placement = super::cpu_placement(locals, &super::allowed_cpus());
        let threads = spawn_executors(contexts, listeners, placement, self.events)?;
        await_ready(&self.shared.topo, events, &threads, stash)?;
        Ok((threads, stops))
    }
}

/// `new` must be the `from` shards this process runs, in order and
/// unchanged, followed by as many new ones.
fn check_doubles(topo: &Topology, from: usize, new: &ClusterConfig) -> Result<(), String> {
    if new.shards.len() != 2 * from {
        return Err(format!(
            "the new layout has {} shards; a reshard doubles the {from} shards of the cluster to {}",
            new.shards.len(),
            2 * from
        ));
    }
    for (i, s) in new.shards.iter().take(from).enumerate() {
        let primary = topo.primary_of(i);
        let replicas: Vec<&str> = topo.replicas_of(i).map(|n| n.address.as_str()).collect();
        let same = primary.address == s.address
            && replicas == s.replicas.iter().map(String::as_str).collect::<Vec<_>>()
            && primary.name.split_once('/').map(|(n, _)| n) == Some(s.name.as_str());
        if !same {
            return Err(format!(
                "shard {i} of the new layout ({} at {}) is not the cluster's shard {i} ({}): the new layout must list the current shards unchanged, then the new ones",
                s.name, s.address, primary.name
            ));
        }
    }
    Ok(())
}
