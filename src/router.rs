//! Where a request for a shard goes: this node, another executor of this
//! process (flume mailbox), or a node on another host (HTTP), and the two
//! transports that carry it there.
//!
//! Per executor. Depends on `topology`, `protocol` and `http::client`; it
//! knows no URLs or status codes (the caller, `api`, builds the bytes of a
//! remote request and maps failures to statuses).

use crate::http::client::{Client, ClientError, ClientResponse, node_request};
use crate::http::encode::Response;
use crate::protocol::{KvRequest, Mail, Scan, ask};
use crate::storage::SnapshotPage;
use crate::topology::{NodeInfo, Topology};
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

/// Routing table and transports of one executor.
pub struct Router {
    topo: Arc<Topology>,
    me: usize,
    mailboxes: Mailboxes,
    client: Rc<Client>,
    /// The cluster token, sent with every request to another host.
    token: Option<Arc<str>>,
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
    /// # Errors
    /// The peer executor is gone.
    pub async fn to_peer(
        &self,
        peer: &flume::Sender<Mail>,
        req: KvRequest,
    ) -> Result<Response, ForwardError> {
        ask(peer, |tx| Mail::Kv(req, tx))
            .await
            .map_err(|_| ForwardError::PeerStopped)
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
