//! corekv: a sharded, replicated key-value database spoken to over HTTP/1.1.
//!
//! # Layout
//!
//! Data flows one way: parse → route → shard/forward → storage → replication.
//! Nothing imports a module from a layer above it.
//!
//! - pure, no I/O: [`config`] (sharding.toml → `ClusterConfig`), [`topology`]
//!   (FNV-1 placement, who owns what), [`roles`] (who is primary of each
//!   shard now, in which epoch, and until when a node may write: atomics
//!   shared by the control plane and the data plane), [`http::parse`] and
//!   [`http::encode`].
//! - storage: [`storage`], the only module that imports redb (synchronous).
//! - per executor: [`nodestore`] (a node's store handle, its group-commit and reader threads),
//!   [`replication`] (primary and replica sides), [`http::conn`] (the
//!   connection loop), [`http::client`] (keep-alive client for forwarding
//!   and replication over the network), [`sched`] (waiting for the
//!   executor's next I/O poll), [`ready`] (the executor's epoll instance
//!   that tells connections their socket is readable).
//! - request path: [`router`] (local / in-process peer / remote host) and
//!   [`api`] (the only place that knows URLs and status codes).
//! - control plane (`--etcd` only, on its own threads, never an executor):
//!   [`control`] (etcd client, leases, elections, switchovers); it only
//!   writes [`roles`], which the data plane reads.
//! - wiring: [`node`] (executors, mailboxes, listeners, start-up checks);
//!   `main.rs` only parses the command line.

pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod http;
pub mod layout;
pub mod log;
pub mod metrics;
pub mod node;
pub mod nodestore;
pub mod protocol;
pub mod ready;
pub mod replication;
pub mod reshard;
pub mod roles;
pub mod router;
pub mod sched;
pub mod storage;
pub mod topology;
