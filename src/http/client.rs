//! A keep-alive HTTP/1.1 client for talking to corekv nodes on other hosts
//! (forwarded requests, replication pulls, listings).
//!
//! Per executor (`!Send`); depends on glommio's `TcpStream`, httparse and
//! libc (a non-blocking peek) and socket2 (`SO_LINGER`). Invariants:
//! - connections are pooled per address and reused only after a complete
//!   response without `Connection: close`; a pooled connection the peer
//!   has closed (or sent stray bytes on) is discarded before any byte is
//!   written to it;
//! - every exchange ends by a deadline covering connect, write and read;
//! - a request goes out a second time only if that cannot repeat it: when
//!   no byte of it was written, or, for a [`Resend::Idempotent`] request
//!   (a read), when a reused connection failed before any response byte;
//! - [`ClientError::is_unsent`] tells a failure where the peer certainly
//!   got nothing from one where it may have acted on the request;
//! - a connection is never closed with request bytes possibly still
//!   queued for the peer: after a failure it is reset (`SO_LINGER` 0, then
//!   close: the kernel discards unsent bytes and sends RST instead of
//!   retransmitting them later);
//! - what each exchange shows about reaching a node (resolved, connected,
//!   answered) is recorded in the process-wide [`Reachability`] table that
//!   `/status` shows.

use super::framing::{FramingError, framing};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// The bytes of a request with a `Content-Length` body: `method target`,
/// `Host`, then each of `fields` (name, value) in order.
#[must_use]
pub fn request_bytes(
    method: &str,
    target: &[u8],
    host: &str,
    fields: &[(&str, &[u8])],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + target.len() + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
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

/// Whether a request may be sent again after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// Repeating it is harmless (a read): it is sent again on a fresh
    /// connection when a reused one fails before any response byte.
    Idempotent,
    /// A write: it is sent again only when no byte of it was written.
    IfUnsent,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum ClientError {
    /// The address does not resolve. Nothing was sent.
    Resolve(String),
    /// No connection could be made (refused, unreachable). Nothing was sent.
    Connect(io::Error),
    /// No connection was made before the deadline. Nothing was sent.
    ConnectTimeout,
    /// The connection failed before any byte of the request was written.
    Unsent(io::Error),
    /// Bytes of the request were written but no complete answer came by
    /// the deadline; the connection was reset. The peer may have acted on it.
    Timeout,
    /// The connection broke after bytes of the request were written. The
    /// peer may have acted on it.
    Io(io::Error),
    /// The peer answered something that is not a valid response.
    BadResponse(&'static str),
}

impl ClientError {
    /// True when no byte of the request left this node: the peer certainly
    /// did not act on it.
    #[must_use]
    pub fn is_unsent(&self) -> bool {
        matches!(
            self,
            Self::Resolve(_) | Self::Connect(_) | Self::ConnectTimeout | Self::Unsent(_)
        )
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resolve(a) => write!(f, "cannot resolve {a}"),
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::ConnectTimeout => write!(f, "connect timed out"),
            Self::Unsent(e) => write!(f, "connection failed before the request was sent: {e}"),
            Self::Timeout => write!(f, "no answer in time"),
            Self::Io(e) => write!(f, "connection failed after the request was sent: {e}"),
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
    /// No byte of the request was written: any request may go again.
    Unsent(ClientError),
    /// The request was written, the connection failed before any response
    /// byte: an idempotent request may go again.
    NoAnswer(ClientError),
    Failed(ClientError),
}

impl Failure {
    fn into_error(self) -> ClientError {
        match self {
            Self::Unsent(e) | Self::NoAnswer(e) | Self::Failed(e) => e,
        }
    }
}

const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Time left until `deadline`, or `None` once it has passed.
fn left(deadline: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
}

/// Closes `stream` with a reset: `SO_LINGER` 0 makes the kernel drop any
/// bytes still queued for the peer and send RST, so nothing of an
/// abandoned request is delivered later.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// True when a pooled connection still looks usable: the peer has neither
/// closed it nor sent anything unasked (a non-blocking `MSG_PEEK`).
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: recv writes at most 1 byte into `byte`; the fd is open for
    // the lifetime of `stream`.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

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
    /// `connect_timeout` bounds each connect; `io_timeout` is the default
    /// time a caller allows for a whole exchange ([`Client::timeout`]).
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

    /// The default time allowed for a whole exchange.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.io_timeout
    }

    /// A pooled connection to `addr` that the peer has not closed.
    fn pooled(&self, addr: &str) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(addr)?;
        while let Some(stream) = list.pop() {
            if still_open(&stream) {
                return Some(stream);
            }
            reset(stream);
        }
        None
    }

    /// Sends the complete request bytes `request` to `addr` and reads the
    /// response, all by `deadline`. `resend` says whether the request may
    /// be sent again after a failure (see [`Resend`]).
    ///
    /// # Errors
    /// See [`ClientError`]; [`ClientError::is_unsent`] says whether the
    /// peer may have received the request.
    pub async fn send(
        &self,
        addr: &str,
        request: &[u8],
        deadline: Instant,
        resend: Resend,
    ) -> Result<ClientResponse, ClientError> {
        let result = self.send_once(addr, request, deadline, resend).await;
        if result.is_ok() {
            self.note(addr, PeerState::Reachable, &"");
        }
        result
    }

    async fn send_once(
        &self,
        addr: &str,
        request: &[u8],
        deadline: Instant,
        resend: Resend,
    ) -> Result<ClientResponse, ClientError> {
        if let Some(stream) = self.pooled(addr) {
            match self.exchange(addr, stream, request, deadline).await {
                Ok(resp) => return Ok(resp),
                Err(Failure::Unsent(_)) => {}
                Err(Failure::NoAnswer(_)) if resend == Resend::Idempotent => {}
                Err(f) => return Err(f.into_error()),
            }
        }
        let stream = self.connect(addr, deadline).await?;
        self.exchange(addr, stream, request, deadline)
            .await
            .map_err(Failure::into_error)
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

    async fn connect(&self, addr: &str, deadline: Instant) -> Result<TcpStream, ClientError> {
        let sock = self.resolve(addr).inspect_err(|e| {
            self.note(addr, PeerState::Unresolved, e);
        })?;
        // A deadline that passed before connecting says nothing about the
        // peer: only a connect that was tried is recorded.
        let limit = left(deadline)
            .ok_or(ClientError::ConnectTimeout)?
            .min(self.connect_timeout);
        let stream = TcpStream::connect_timeout(sock, limit)
            .await
            .map_err(|e| match e {
                glommio::GlommioError::TimedOut(_) => ClientError::ConnectTimeout,
                other => {
                    let e: io::Error = other.into();
                    if e.kind() == io::ErrorKind::TimedOut {
                        ClientError::ConnectTimeout
                    } else {
                        ClientError::Connect(e)
                    }
                }
            })
            .inspect_err(|e| {
                self.note(addr, PeerState::Unreachable, e);
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// One request and its response on `stream`. On any failure the
    /// connection is reset, never returned to the pool.
    async fn exchange(
        &self,
        addr: &str,
        mut stream: TcpStream,
        request: &[u8],
        deadline: Instant,
    ) -> Result<ClientResponse, Failure> {
        match exchange_on(&mut stream, request, deadline).await {
            Ok((resp, reusable)) => {
                if reusable {
                    let mut idle = self.idle.borrow_mut();
                    let list = idle.entry(addr.to_string()).or_default();
                    if list.len() < self.max_idle_per_host {
                        list.push(stream);
                    }
                }
                Ok(resp)
            }
            Err(f) => {
                reset(stream);
                Err(f)
            }
        }
    }
}

/// Writes `request` and reads one response from `stream` by `deadline`;
/// the response and whether the connection may be reused.
async fn exchange_on(
    stream: &mut TcpStream,
    request: &[u8],
    deadline: Instant,
) -> Result<(ClientResponse, bool), Failure> {
    let mut sent = 0;
    while sent < request.len() {
        let written = match left(deadline) {
            None => Err(io::ErrorKind::TimedOut.into()),
            Some(t) => match stream.set_write_timeout(Some(t)) {
                Ok(()) => stream.write(&request[sent..]).await,
                Err(e) => Err(e.into()),
            },
        };
        match written {
            Ok(0) => {
                let e = io::ErrorKind::WriteZero.into();
                return Err(if sent == 0 {
                    Failure::Unsent(ClientError::Unsent(e))
                } else {
                    Failure::Failed(ClientError::Io(e))
                });
            }
            Ok(n) => sent += n,
            Err(e) if sent == 0 => return Err(Failure::Unsent(ClientError::Unsent(e))),
            Err(e) => return Err(Failure::Failed(classify(e))),
        }
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
        let Some(t) = left(deadline) else {
            return Err(Failure::Failed(ClientError::Timeout));
        };
        if let Err(e) = stream.set_read_timeout(Some(t)) {
            return Err(Failure::Failed(ClientError::Io(e.into())));
        }
        let n = match stream.read(&mut buf[end..]).await {
            Ok(0) if end == 0 => {
                return Err(Failure::NoAnswer(ClientError::Io(
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
                return Err(Failure::NoAnswer(classify(e)));
            }
            Err(e) => return Err(Failure::Failed(classify(e))),
        };
        end += n;
        match parse_response(&buf[..end]) {
            Ok(Some((resp, used, reusable))) => return Ok((resp, reusable && used == end)),
            Ok(None) => {}
            Err(why) => return Err(Failure::Failed(ClientError::BadResponse(why))),
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
    let framed = framing(resp.headers).map_err(FramingError::message)?;
    let len = framed.content_length;
    let reusable = resp.version == Some(1) && !framed.close;
    let out_headers = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
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
