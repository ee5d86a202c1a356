//! A keep-alive HTTP/1.1 client for talking to corekv nodes on other hosts
//! (forwarded requests, replication pulls).
//!
//! Per executor (`!Send`); depends on glommio's `TcpStream` and httparse.
//! Invariants: connections are pooled per address and reused only after a
//! complete response without `Connection: close`; a request that fails on a
//! reused connection before any response byte arrived is retried once on a
//! fresh connection (the callers only send idempotent requests); every
//! connect, read and write is bounded by a timeout. What each exchange
//! shows about reaching a node (resolved, connected, answered) is recorded
//! in the process-wide [`Reachability`] table that `/status` shows.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What this process last learned about reaching a node on another host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Nothing was sent to it yet (its address resolved at start-up).
    Unknown = 0,
    /// The last exchange got an answer.
    Reachable = 1,
    /// Its address does not resolve.
    Unresolved = 2,
    /// Connecting failed (refused, unreachable, timed out).
    Unreachable = 3,
}

impl PeerState {
    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Reachable,
            2 => Self::Unresolved,
            3 => Self::Unreachable,
            _ => Self::Unknown,
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Reachable => "reachable",
            Self::Unresolved => "unresolved",
            Self::Unreachable => "unreachable",
        }
    }
}

struct PeerHealth {
    state: AtomicU8,
    /// Why it is unresolved or unreachable (empty otherwise).
    detail: Mutex<String>,
}

/// Reachability of every node on another host, by configured address;
/// shared by all executors of the process (`Send + Sync`). Fixed at
/// start-up: it holds exactly the configured remote addresses.
pub struct Reachability {
    peers: HashMap<String, PeerHealth>,
}

impl Reachability {
    /// A table of `addrs`, all [`PeerState::Unknown`].
    #[must_use]
    pub fn new(addrs: impl IntoIterator<Item = String>) -> Self {
        Self {
            peers: addrs
                .into_iter()
                .map(|a| {
                    let health = PeerHealth {
                        state: AtomicU8::new(PeerState::Unknown as u8),
                        detail: Mutex::new(String::new()),
                    };
                    (a, health)
                })
                .collect(),
        }
    }

    /// Records what was learned about `addr` (ignored for addresses not in
    /// the table). Cheap when nothing changes: an answer from a reachable
    /// node touches one atomic.
    pub fn record(&self, addr: &str, state: PeerState, detail: &str) {
        let Some(h) = self.peers.get(addr) else {
            return;
        };
        if state == PeerState::Reachable
            && h.state.load(Ordering::Relaxed) == PeerState::Reachable as u8
        {
            return;
        }
        let mut d = h.detail.lock().unwrap_or_else(PoisonError::into_inner);
        d.clear();
        d.push_str(detail);
        h.state.store(state as u8, Ordering::Relaxed);
    }

    /// The state of `addr` and why, when it is in the table.
    #[must_use]
    pub fn get(&self, addr: &str) -> Option<(PeerState, String)> {
        let h = self.peers.get(addr)?;
        let detail = h
            .detail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Some((
            PeerState::from_code(h.state.load(Ordering::Relaxed)),
            detail,
        ))
    }
}

/// The bytes of a request from one corekv node to another: marked with
/// `X-Corekv-Forwarded`, with the cluster token when one is set.
#[must_use]
pub fn node_request(
    method: &str,
    target: &[u8],
    host: &str,
    token: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + target.len() + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nX-Corekv-Forwarded: 1\r\n");
    if let Some(t) = token {
        out.extend_from_slice(b"Authorization: Bearer ");
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// A response as received.
#[derive(Debug)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum ClientError {
    /// The address does not resolve.
    Resolve(String),
    /// No connection could be made (refused, unreachable).
    Connect(io::Error),
    /// Connect, write or read took longer than allowed.
    Timeout,
    /// The connection broke mid-exchange.
    Io(io::Error),
    /// The peer answered something that is not a valid response.
    BadResponse(&'static str),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resolve(a) => write!(f, "cannot resolve {a}"),
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Timeout => write!(f, "timed out"),
            Self::Io(e) => write!(f, "connection failed: {e}"),
            Self::BadResponse(why) => write!(f, "invalid response: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

fn classify(e: io::Error) -> ClientError {
    if e.kind() == io::ErrorKind::TimedOut {
        ClientError::Timeout
    } else {
        ClientError::Io(e)
    }
}

/// How an exchange on one connection ended badly.
enum Failure {
    /// Nothing was received: safe to retry on a fresh connection.
    Stale(ClientError),
    Failed(ClientError),
}

const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Pooled keep-alive client.
pub struct Client {
    connect_timeout: Duration,
    io_timeout: Duration,
    max_idle_per_host: usize,
    idle: RefCell<HashMap<String, Vec<TcpStream>>>,
    resolved: RefCell<HashMap<String, SocketAddr>>,
    reach: Option<Arc<Reachability>>,
}

impl Client {
    #[must_use]
    pub fn new(connect_timeout: Duration, io_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            io_timeout,
            max_idle_per_host: 64,
            idle: RefCell::new(HashMap::new()),
            resolved: RefCell::new(HashMap::new()),
            reach: None,
        }
    }

    /// Records what every exchange shows about reaching its node in `reach`.
    #[must_use]
    pub fn with_reachability(mut self, reach: Arc<Reachability>) -> Self {
        self.reach = Some(reach);
        self
    }

    /// The table given to [`Client::with_reachability`].
    #[must_use]
    pub fn reachability(&self) -> Option<&Arc<Reachability>> {
        self.reach.as_ref()
    }

    fn note(&self, addr: &str, state: PeerState, detail: &dyn fmt::Display) {
        if let Some(r) = &self.reach {
            r.record(addr, state, &detail.to_string());
        }
    }

    /// Sends the complete request bytes `request` to `addr` and reads the
    /// response. `io_timeout` overrides the client's read timeout (long polls).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn send(
        &self,
        addr: &str,
        request: &[u8],
        io_timeout: Option<Duration>,
    ) -> Result<ClientResponse, ClientError> {
        let result = self.send_once(addr, request, io_timeout).await;
        if result.is_ok() {
            self.note(addr, PeerState::Reachable, &"");
        }
        result
    }

    async fn send_once(
        &self,
        addr: &str,
        request: &[u8],
        io_timeout: Option<Duration>,
    ) -> Result<ClientResponse, ClientError> {
        let timeout = io_timeout.unwrap_or(self.io_timeout);
        let pooled = self.idle.borrow_mut().get_mut(addr).and_then(Vec::pop);
        if let Some(stream) = pooled {
            match self.exchange(addr, stream, request, timeout).await {
                Ok(resp) => return Ok(resp),
                Err(Failure::Failed(e)) => return Err(e),
                Err(Failure::Stale(_)) => {}
            }
        }
        let stream = self.connect(addr).await?;
        match self.exchange(addr, stream, request, timeout).await {
            Ok(resp) => Ok(resp),
            Err(Failure::Failed(e) | Failure::Stale(e)) => Err(e),
        }
    }

    fn resolve(&self, addr: &str) -> Result<SocketAddr, ClientError> {
        if let Some(a) = self.resolved.borrow().get(addr) {
            return Ok(*a);
        }
        let a = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| ClientError::Resolve(addr.to_string()))?;
        self.resolved.borrow_mut().insert(addr.to_string(), a);
        Ok(a)
    }

    async fn connect(&self, addr: &str) -> Result<TcpStream, ClientError> {
        let sock = self.resolve(addr).inspect_err(|e| {
            self.note(addr, PeerState::Unresolved, e);
        })?;
        let stream = TcpStream::connect_timeout(sock, self.connect_timeout)
            .await
            .map_err(|e| match e {
                glommio::GlommioError::TimedOut(_) => ClientError::Timeout,
                other => ClientError::Connect(other.into()),
            })
            .inspect_err(|e| {
                self.note(addr, PeerState::Unreachable, e);
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn exchange(
        &self,
        addr: &str,
        mut stream: TcpStream,
        request: &[u8],
        timeout: Duration,
    ) -> Result<ClientResponse, Failure> {
        let set = stream
            .set_write_timeout(Some(self.io_timeout))
            .and_then(|()| stream.set_read_timeout(Some(timeout)));
        if let Err(e) = set {
            return Err(Failure::Stale(ClientError::Io(e.into())));
        }
        if let Err(e) = stream.write_all(request).await {
            return Err(Failure::Stale(classify(e)));
        }
        let mut buf = vec![0u8; 8192];
        let mut end = 0;
        loop {
            if end == buf.len() {
                if buf.len() >= MAX_RESPONSE {
                    return Err(Failure::Failed(ClientError::BadResponse(
                        "response too large",
                    )));
                }
                buf.resize(buf.len() * 2, 0);
            }
            let n = match stream.read(&mut buf[end..]).await {
                Ok(0) if end == 0 => {
                    return Err(Failure::Stale(ClientError::Io(
                        io::ErrorKind::UnexpectedEof.into(),
                    )));
                }
                Ok(0) => {
                    return Err(Failure::Failed(ClientError::Io(
                        io::ErrorKind::UnexpectedEof.into(),
                    )));
                }
                Ok(n) => n,
                Err(e) if end == 0 && e.kind() != io::ErrorKind::TimedOut => {
                    return Err(Failure::Stale(classify(e)));
                }
                Err(e) => return Err(Failure::Failed(classify(e))),
            };
            end += n;
            match parse_response(&buf[..end]) {
                Ok(Some((resp, used, reusable))) => {
                    if reusable && used == end {
                        let mut idle = self.idle.borrow_mut();
                        let list = idle.entry(addr.to_string()).or_default();
                        if list.len() < self.max_idle_per_host {
                            list.push(stream);
                        }
                    }
                    return Ok(resp);
                }
                Ok(None) => {}
                Err(why) => return Err(Failure::Failed(ClientError::BadResponse(why))),
            }
        }
    }
}

/// Parses a complete response at the start of `buf`: the response, the
/// bytes it used and whether the connection may be reused.
fn parse_response(buf: &[u8]) -> Result<Option<(ClientResponse, usize, bool)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("unparseable status line or headers"),
    };
    let mut len = None;
    let mut reusable = resp.version == Some(1);
    let mut out_headers = Vec::new();
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value).into_owned();
        if h.name.eq_ignore_ascii_case("content-length") {
            len = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| "bad Content-Length")?,
            );
        } else if h.name.eq_ignore_ascii_case("connection") {
            reusable = reusable && !value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("Transfer-Encoding responses are not supported");
        }
        out_headers.push((h.name.to_string(), value));
    }
    let status = resp.code.unwrap_or(0);
    // 1xx, 204 and 304 have no content and no Content-Length (RFC 9112
    // §6.3); the client sends no HEAD requests.
    let len = if super::encode::bodiless(status) {
        0
    } else {
        len.ok_or("response without Content-Length")?
    };
    if len > MAX_RESPONSE {
        return Err("response too large");
    }
    if buf.len() < head + len {
        return Ok(None);
    }
    Ok(Some((
        ClientResponse {
            status,
            headers: out_headers,
            body: buf[head..head + len].to_vec(),
        },
        head + len,
        reusable,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachability_records_changes() {
        let r = Reachability::new(["h:1".to_string()]);
        assert_eq!(r.get("h:1"), Some((PeerState::Unknown, String::new())));
        r.record("h:1", PeerState::Unresolved, "cannot resolve h:1");
        assert_eq!(
            r.get("h:1"),
            Some((PeerState::Unresolved, "cannot resolve h:1".into()))
        );
        r.record("h:1", PeerState::Reachable, "");
        assert_eq!(r.get("h:1"), Some((PeerState::Reachable, String::new())));
        r.record("other:2", PeerState::Unreachable, "x");
        assert_eq!(r.get("other:2"), None);
    }

    #[test]
    fn parses_responses() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-Shard: 1\r\n\r\nabc";
        for cut in 0..raw.len() {
            assert!(matches!(parse_response(&raw[..cut]), Ok(None)), "cut {cut}");
        }
        let (r, used, reuse) = parse_response(raw).expect("ok").expect("complete");
        assert_eq!((r.status, used, reuse), (404, raw.len(), true));
        assert_eq!(r.header("x-shard"), Some("1"));
        assert_eq!(r.body, b"abc");
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(!parse_response(close).expect("ok").expect("complete").2);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        // 204 and 304 end with their head; what follows is the next response.
        for status in ["204 No Content", "304 Not Modified"] {
            let raw = format!("HTTP/1.1 {status}\r\nETag: \"3\"\r\n\r\nHTTP/1.1 200 OK\r\n");
            let (r, used, reuse) = parse_response(raw.as_bytes())
                .expect("ok")
                .expect("complete");
            assert_eq!((used, reuse), (raw.find("\r\n\r\n").unwrap_or(0) + 4, true));
            assert!(r.body.is_empty());
        }
    }
}
