//! Where a request for a shard goes: this node, another executor of this
//! process (flume mailbox), or a node on another host (HTTP), and the two
//! transports that carry it there.
//!
//! Per executor. Depends on `topology`, `protocol` and `http::client`; it
//! knows no URLs or status codes (the caller, `api`, builds the bytes of a
//! remote request and maps failures to statuses).

use crate::http::client::{Client, ClientError, ClientResponse, node_request};
use crate::http::encode::Response;
use crate::protocol::{KvOp, KvRequest, Mail, Scan, ask};
use crate::storage::SnapshotPage;
use crate::topology::{NodeInfo, Topology};
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

/// Mailboxes of the executors in this process, indexed by node id
/// (`None` for nodes on other hosts).
pub type Mailboxes = Arc<Vec<Option<flume::Sender<Mail>>>>;

/// Where to send a request.
pub enum Route {
    /// This node serves it.
    Local,
    /// Another executor in this process.
    Peer(flume::Sender<Mail>),
    /// A node on another host, by configured address.
    Remote(String),
}

/// Why a forwarded request got no answer.
#[derive(Debug)]
pub enum ForwardError {
    /// The owner executor in this process has stopped.
    PeerStopped,
    /// The remote owner did not answer.
    Remote(ClientError),
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerStopped => write!(f, "owner executor is not running"),
            Self::Remote(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ForwardError {}

/// Plain reads waiting to be sent to one peer executor, with their
/// callers' reply channels.
type Waiting = Vec<(KvRequest, flume::Sender<Response>)>;

/// Per-peer queues of reads this executor forwards in one batch.
#[derive(Default)]
struct Outbox {
    queues: RefCell<Vec<(flume::Sender<Mail>, Waiting)>>,
}

/// Routing table and transports of one executor.
pub struct Router {
    topo: Arc<Topology>,
    me: usize,
    mailboxes: Mailboxes,
    client: Rc<Client>,
    /// The cluster token, sent with every request to another host.
    token: Option<Arc<str>>,
    outbox: Rc<Outbox>,
}

impl Router {
    #[must_use]
    pub fn new(
        topo: Arc<Topology>,
        me: usize,
        mailboxes: Mailboxes,
        client: Rc<Client>,
        token: Option<Arc<str>>,
    ) -> Self {
        Self {
            topo,
            me,
            mailboxes,
            client,
            token,
            outbox: Rc::default(),
        }
    }

    #[must_use]
    pub fn me(&self) -> &NodeInfo {
        &self.topo.nodes[self.me]
    }

    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// The route to `node`.
    #[must_use]
    pub fn route_to(&self, node: &NodeInfo) -> Route {
        if node.id == self.me {
            return Route::Local;
        }
        match self.mailboxes.get(node.id) {
            Some(Some(tx)) => Route::Peer(tx.clone()),
            _ => Route::Remote(node.address.clone()),
        }
    }

    /// Sends `req` to an executor of this process and waits for its answer.
    ///
    /// Plain reads issued during one turn of this executor travel together
    /// in one [`Mail::KvBatch`]: one wake-up of the owner and one of this
    /// executor per batch instead of per request. Writes and conditional
    /// reads go alone, so a read never waits behind a commit.
    ///
    /// # Errors
    /// The peer executor is gone.
    pub async fn to_peer(
        &self,
        peer: &flume::Sender<Mail>,
        req: KvRequest,
    ) -> Result<Response, ForwardError> {
        if req.op != KvOp::Get || req.min_seq > 0 {
            return ask(peer, |tx| Mail::Kv(req, tx))
                .await
                .map_err(|_| ForwardError::PeerStopped);
        }
        let (tx, rx) = flume::bounded(1);
        let first = {
            let mut queues = self.outbox.queues.borrow_mut();
            match queues.iter_mut().find(|(p, _)| p.same_channel(peer)) {
                Some((_, waiting)) => {
                    waiting.push((req, tx));
                    waiting.len() == 1
                }
                None => {
                    queues.push((peer.clone(), vec![(req, tx)]));
                    true
                }
            }
        };
        if first {
            glommio::spawn_local(flush(self.outbox.clone(), peer.clone())).detach();
        }
        rx.recv_async().await.map_err(|_| ForwardError::PeerStopped)
    }

    /// Asks an executor of this process for a page of a prefix scan.
    ///
    /// # Errors
    /// The peer executor is gone.
    pub async fn scan_peer(
        &self,
        peer: &flume::Sender<Mail>,
        scan: Scan,
    ) -> Result<Result<SnapshotPage, String>, ForwardError> {
        ask(peer, |tx| Mail::Scan(scan, tx))
            .await
            .map_err(|_| ForwardError::PeerStopped)
    }

    /// POSTs `body` to the internal endpoint `path` of a node on another
    /// host.
    ///
    /// # Errors
    /// Connect, timeout or protocol failures.
    pub async fn to_remote(
        &self,
        addr: &str,
        path: &[u8],
        body: &[u8],
    ) -> Result<ClientResponse, ForwardError> {
        let request = node_request("POST", path, addr, self.token.as_deref(), body);
        self.client
            .send(addr, &request, None)
            .await
            .map_err(ForwardError::Remote)
    }
}

/// Sends the reads queued for `peer` once the other tasks of this turn
/// have had the chance to add theirs, and hands out the answers.
async fn flush(outbox: Rc<Outbox>, peer: flume::Sender<Mail>) {
    futures_lite::future::yield_now().await;
    let waiting = {
        let mut queues = outbox.queues.borrow_mut();
        queues
            .iter_mut()
            .find(|(p, _)| p.same_channel(&peer))
            .map(|(_, w)| std::mem::take(w))
            .unwrap_or_default()
    };
    if waiting.is_empty() {
        return;
    }
    let (reqs, replies): (Vec<_>, Vec<_>) = waiting.into_iter().unzip();
    // If the peer is gone the reply channels drop and every caller sees it.
    if let Ok(answers) = ask(&peer, |tx| Mail::KvBatch(reqs, tx)).await {
        for (answer, reply) in answers.into_iter().zip(replies) {
            let _ = reply.send(answer);
        }
    }
}
