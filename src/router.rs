//! Where a request for a shard goes: this node, another executor of this
//! process (flume mailbox, or a direct read of its store), or a node on
//! another host (HTTP), and the transports that carry it there.
//!
//! Per executor. Depends on `topology`, `protocol`, `nodestore` (readers of
//! in-process nodes' stores) and `http::client`; it knows no URLs or status
//! codes (the caller, `api`, builds the bytes of a remote request and maps
//! failures to statuses).
//!
//! A plain read for a node of this process is served by this executor from
//! that node's redb file ([`Router::peer_reader`]): a redb read transaction
//! is an MVCC snapshot that any thread may take, and the owner publishes its
//! seq only after the commit that an acknowledgement follows, so the read
//! sees every acknowledged write, exactly as if the owner had answered, and
//! waits for no other executor to be scheduled. Writes and reads that must
//! wait (`min_seq`) still go to the owner's mailbox.
//!
//! A forwarded request's failure says whether the owner may have acted on
//! it ([`ForwardError::is_unsent`]); `api` turns that into a status that
//! tells a client whether its write may have been applied.

use crate::http::client::{Client, ClientError, ClientResponse, PeerState, Resend};
use crate::http::encode::Response;
use crate::layout::Layout;
use crate::nodestore::{NodeStats, Reader, StoreError};
use crate::protocol::{KvRequest, MAILBOX_CAPACITY, Mail, MailError, Scan, ask, node_request};
use crate::roles::Roles;
use crate::storage::{SnapshotPage, Store};
use crate::topology::{MAX_NODES, NodeInfo, Topology};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A node of this process as other executors reach it.
#[derive(Clone)]
pub struct Peer {
    pub mail: flume::Sender<Mail>,
    store: Arc<Store>,
    stats: Arc<NodeStats>,
}

impl Peer {
    #[must_use]
    pub fn new(mail: flume::Sender<Mail>, (store, stats): (Arc<Store>, Arc<NodeStats>)) -> Self {
        Self { mail, store, stats }
    }
}

/// The nodes of this process, indexed by node id (empty for nodes on
/// other hosts). Write-once slots: a reshard starts new nodes while
/// executors route through the table.
pub struct PeerTable {
    slots: Box<[OnceLock<Peer>]>,
}

impl PeerTable {
    #[must_use]
    pub fn new() -> Self {
        Self {
            slots: (0..MAX_NODES).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Node `id` of this process, when it runs here.
    #[must_use]
    pub fn get(&self, id: usize) -> Option<&Peer> {
        self.slots.get(id)?.get()
    }

    /// Records node `id`'s mailbox and store (once).
    pub fn insert(&self, id: usize, peer: Peer) {
        if let Some(slot) = self.slots.get(id) {
            let _ = slot.set(peer);
        }
    }
}

impl Default for PeerTable {
    fn default() -> Self {
        Self::new()
    }
}

/// The nodes of this process, shared by every executor.
pub type Mailboxes = Arc<PeerTable>;

/// How often an executor closes the snapshots it holds of other nodes'
/// stores when they went stale or unused (see [`Reader::sweep`]).
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// This executor's readers of the other nodes in this process.
struct PeerReaders {
    /// By node id; grows when a reshard starts nodes in this process.
    by_node: RefCell<Vec<Option<Rc<Reader>>>>,
    /// A sweep task is scheduled.
    sweeping: Cell<bool>,
}

impl PeerReaders {
    /// This executor's reader of node `id` when it runs in this process
    /// (not `me`); created on first use for nodes started after this
    /// executor (a reshard's).
    fn reader(&self, id: usize, me: usize, mailboxes: &PeerTable) -> Option<Rc<Reader>> {
        if id == me {
            return None;
        }
        if let Some(Some(r)) = self.by_node.borrow().get(id) {
            return Some(r.clone());
        }
        let peer = mailboxes.get(id)?;
        let reader = Rc::new(Reader::new(peer.store.clone(), peer.stats.clone()));
        let mut by_node = self.by_node.borrow_mut();
        if by_node.len() <= id {
            by_node.resize(id + 1, None);
        }
        by_node[id] = Some(reader.clone());
        Some(reader)
    }
}

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
    /// The owner executor in this process has stopped; it never saw the
    /// request.
    PeerStopped,
    /// The owner executor in this process took the request and stopped
    /// before answering.
    PeerNoAnswer,
    /// The owner executor's mailbox is full (it is overloaded); nothing
    /// was sent.
    PeerBusy,
    /// The remote owner did not answer.
    Remote(ClientError),
}

impl ForwardError {
    /// True when the owner certainly never received the request.
    #[must_use]
    pub fn is_unsent(&self) -> bool {
        match self {
            Self::PeerStopped | Self::PeerBusy => true,
            Self::PeerNoAnswer => false,
            Self::Remote(e) => e.is_unsent(),
        }
    }
}

impl From<MailError> for ForwardError {
    fn from(e: MailError) -> Self {
        match e {
            MailError::Full => Self::PeerBusy,
            MailError::Closed => Self::PeerStopped,
            MailError::NoAnswer => Self::PeerNoAnswer,
        }
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerStopped => write!(f, "owner executor is not running"),
            Self::PeerNoAnswer => write!(f, "owner executor stopped before it answered"),
            Self::PeerBusy => write!(
                f,
                "owner is overloaded: its mailbox is full ({MAILBOX_CAPACITY} requests waiting)"
            ),
            Self::Remote(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ForwardError {}

/// Routing table and transports of one executor.
pub struct Router {
    topo: Arc<Topology>,
    /// Who is primary of each shard now (fixed, or moved by the control
    /// plane).
    roles: Arc<Roles>,
    /// Which shard owns which key (moves in a reshard).
    layout: Arc<Layout>,
    me: usize,
    mailboxes: Mailboxes,
    client: Rc<Client>,
    /// The cluster token, sent with every request to another host.
    token: Option<Arc<str>>,
    readers: Rc<PeerReaders>,
}

impl Router {
    #[must_use]
    pub fn new(
        (topo, roles, layout): (Arc<Topology>, Arc<Roles>, Arc<Layout>),
        me: usize,
        mailboxes: Mailboxes,
        client: Rc<Client>,
        token: Option<Arc<str>>,
    ) -> Self {
        // Readers of the nodes running now; nodes a reshard starts later
        // are reached through their mailboxes.
        let by_node = (0..topo.node_count())
            .map(|id| match mailboxes.get(id) {
                Some(p) if id != me => Some(Rc::new(Reader::new(p.store.clone(), p.stats.clone()))),
                _ => None,
            })
            .collect();
        Self {
            topo,
            roles,
            layout,
            me,
            mailboxes,
            client,
            token,
            readers: Rc::new(PeerReaders {
                by_node: RefCell::new(by_node),
                sweeping: Cell::new(false),
            }),
        }
    }

    #[must_use]
    pub fn me(&self) -> &NodeInfo {
        self.topo
            .node(self.me)
            .unwrap_or_else(|| self.topo.primary_of(0))
    }

    /// Which shard owns which key now.
    #[must_use]
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    #[must_use]
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// The current primary of `shard`; `None` while none is known (an
    /// election is under way).
    #[must_use]
    pub fn primary_of(&self, shard: usize) -> Option<&NodeInfo> {
        let (node, _) = self.roles.primary(shard)?;
        self.topo.node(node)
    }

    /// True when this node is its shard's primary now.
    #[must_use]
    pub fn is_primary(&self) -> bool {
        self.roles.is_primary(self.me().shard, self.me)
    }

    /// Every node on another host, with what this process last learned
    /// about reaching it (see `http::client::Reachability`).
    #[must_use]
    pub fn peers(&self) -> Vec<(&NodeInfo, PeerState, String)> {
        self.topo
            .nodes()
            .filter(|n| !n.local)
            .map(|n| {
                let (state, detail) = self
                    .client
                    .reachability()
                    .and_then(|r| r.get(&n.address))
                    .unwrap_or((PeerState::Unknown, String::new()));
                (n, state, detail)
            })
            .collect()
    }

    /// The route to `node`.
    #[must_use]
    pub fn route_to(&self, node: &NodeInfo) -> Route {
        if node.id == self.me {
            return Route::Local;
        }
        match self.mailboxes.get(node.id) {
            Some(peer) => Route::Peer(peer.mail.clone()),
            _ => Route::Remote(node.address.clone()),
        }
    }

    /// This executor's reader of `node`'s store, when `node` runs in this
    /// process on another executor.
    #[must_use]
    pub fn peer_reader(&self, node: &NodeInfo) -> Option<Rc<Reader>> {
        let reader = self.readers.reader(node.id, self.me, &self.mailboxes)?;
        if !self.readers.sweeping.replace(true) {
            glommio::spawn_local(sweep(self.readers.clone())).detach();
        }
        Some(reader)
    }

    /// Sends `req` to an executor of this process and waits for its answer.
    ///
    /// # Errors
    /// The peer executor is gone or its mailbox is full.
    pub async fn to_peer(
        &self,
        peer: &flume::Sender<Mail>,
        req: KvRequest,
    ) -> Result<Response, ForwardError> {
        Ok(ask(peer, |tx| Mail::Kv(req, tx)).await?)
    }

    /// Asks an executor of this process for a page of a prefix scan.
    ///
    /// # Errors
    /// The peer executor is gone or its mailbox is full.
    pub async fn scan_peer(
        &self,
        peer: &flume::Sender<Mail>,
        scan: Scan,
    ) -> Result<Result<SnapshotPage, StoreError>, ForwardError> {
        Ok(ask(peer, |tx| Mail::Scan(scan, tx)).await?)
    }

    /// How long a request to another host may take by default, connect
    /// included (`--forward-timeout-ms`).
    #[must_use]
    pub fn remote_timeout(&self) -> Duration {
        self.client.timeout()
    }

    /// POSTs `body` to the internal endpoint `path` of a node on another
    /// host and waits for the answer until `deadline`; `resend` says
    /// whether the request may go out twice.
    ///
    /// # Errors
    /// Connect, timeout or protocol failures.
    pub async fn to_remote(
        &self,
        addr: &str,
        path: &[u8],
        body: &[u8],
        deadline: Instant,
        resend: Resend,
    ) -> Result<ClientResponse, ForwardError> {
        let request = node_request("POST", path, addr, self.token.as_deref(), body);
        self.client
            .send(addr, &request, deadline, resend)
            .await
            .map_err(ForwardError::Remote)
    }
}

/// Closes this executor's snapshots of other nodes' stores once they are
/// stale or unused, until none is open.
async fn sweep(readers: Rc<PeerReaders>) {
    loop {
        glommio::timer::sleep(SWEEP_EVERY).await;
        let open = readers
            .by_node
            .borrow()
            .iter()
            .flatten()
            .fold(false, |open, r| r.sweep() | open);
        if !open {
            readers.sweeping.set(false);
            return;
        }
    }
}
