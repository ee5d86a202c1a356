//! The server side of one HTTP/1.1 connection, generic over the handler.
//!
//! Depends on glommio's `TcpStream` and on [`super::parse`] /
//! [`super::encode`]. Invariants: responses go out in request order; all
//! responses to requests found in one read are written with one write
//! (pipelining); after a parse error the error is answered and the
//! connection closed; a connection idle for longer than `idle_timeout`, or
//! that takes longer than `request_timeout` to deliver a started request,
//! is closed (the latter with a 408). Every response written here, the
//! connection layer's own refusals (400, 408, 413, 431, 501, 505, 503 at
//! the connection cap) included, carries `Date` ([`super::date`]). A
//! [`Tracker`] shared by the connections of one executor counts open
//! connections and requests in flight, and asks connections to close after
//! their current response while the server drains for shutdown.
//!
//! Reading: a connection first tries a non-blocking `recv`; when nothing is
//! there yet it waits for the executor's next I/O poll ([`NextPoll`]) and
//! tries once more, and only then arms an `io_uring` poll. A connection that
//! found data [`FAIR_STREAK`] times in a row waits for the next poll too,
//! so a client that always has a request ready cannot monopolise the
//! executor (and I/O is polled at least once per round of connections).

use super::date;
use super::encode::{Response, encode};
use super::parse::{Limits, Method, Parsed, Request, parse};
use crate::sched::NextPoll;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Per-executor connection bookkeeping (not `Send`).
#[derive(Debug, Default)]
pub struct Tracker {
    open: Cell<usize>,
    in_flight: Cell<usize>,
    draining: Cell<bool>,
    /// Connections waiting for the executor's next I/O poll.
    next_poll: Rc<NextPoll>,
}

impl Tracker {
    #[must_use]
    pub fn open(&self) -> usize {
        self.open.get()
    }

    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// The executor's next-I/O-poll barrier, for other tasks that must not
    /// keep the run queue busy.
    #[must_use]
    pub fn next_poll(&self) -> &Rc<NextPoll> {
        &self.next_poll
    }

    /// From now on every connection closes after its current response.
    pub fn drain(&self) {
        self.draining.set(true);
    }
}

/// Decrements a counter when dropped (also if the future is cancelled).
struct Count<'a>(&'a Cell<usize>);

impl<'a> Count<'a> {
    fn new(c: &'a Cell<usize>) -> Self {
        c.set(c.get() + 1);
        Self(c)
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Per-connection settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnConfig {
    pub limits: Limits,
    /// Longest wait for the first byte of the next request.
    pub idle_timeout: Duration,
    /// Longest time from the first byte of a request to its last.
    pub request_timeout: Duration,
    /// Most open connections per executor; more are answered 503 and closed.
    pub max_connections: usize,
    /// Wait for the executor's next I/O poll once before arming an `io_uring`
    /// poll for a connection's next request (most reads then succeed
    /// without a poll; off: arm the poll at once, a benchmark comparison).
    pub yield_before_read: bool,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            idle_timeout: Duration::from_mins(1),
            request_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            yield_before_read: true,
        }
    }
}

const INITIAL_BUF: usize = 16 * 1024;

/// Reads in a row that found a request waiting, after which a connection
/// lets the executor poll for I/O before it reads again.
pub const FAIR_STREAK: u32 = 16;

/// Whether a newly accepted connection fits under the cap.
#[must_use]
pub fn has_room(cfg: &ConnConfig, tracker: &Tracker) -> bool {
    tracker.open() < cfg.max_connections
}

/// Answers a connection over the cap with 503 and closes it.
pub async fn refuse(mut stream: TcpStream) {
    let mut out = Vec::new();
    let resp = Response::text(503, "too many open connections; try again later");
    encode(&resp, false, false, &date::now(), &mut out);
    let _ = stream.write_all(&out).await;
}

/// Serves requests on `stream` until the peer closes, an error, a timeout,
/// or a request asks to close.
#[expect(
    clippy::too_many_lines,
    reason = "not split yet (issue 10, \"long functions split by what they do\")"
)]
pub async fn serve<F, Fut>(mut stream: TcpStream, cfg: ConnConfig, tracker: &Tracker, handler: F)
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let _open = Count::new(&tracker.open);
    let _ = stream.set_nodelay(true);
    let max_buf = cfg.limits.max_head + cfg.limits.max_body + INITIAL_BUF;
    let mut buf = vec![0u8; INITIAL_BUF];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out: Vec<u8> = Vec::with_capacity(INITIAL_BUF);
    let mut request_started: Option<Instant> = None;
    let mut streak = 0u32;
    loop {
        let mut close = false;
        let mut answered = false;
        loop {
            match parse(&buf[start..end], &cfg.limits) {
                Ok(Parsed::Complete(req, used)) => {
                    start += used;
                    answered = true;
                    let head_only = req.method == Method::Head;
                    let keep_alive = req.keep_alive;
                    let resp = {
                        let _busy = Count::new(&tracker.in_flight);
                        handler(req).await
                    };
                    let keep_alive = keep_alive && !resp.close && !tracker.draining.get();
                    encode(&resp, head_only, keep_alive, &date::now(), &mut out);
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Ok(Parsed::Partial) => break,
                Err(e) => {
                    encode(
                        &Response::text(e.status(), &e.message(&cfg.limits)),
                        false,
                        false,
                        &date::now(),
                        &mut out,
                    );
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            return;
        }
        // Make room for the next read.
        if start == end {
            start = 0;
            end = 0;
            request_started = None;
        } else {
            // A partial request is buffered: its clock starts when its first
            // bytes arrived, at the latest now if a request just completed.
            if answered || request_started.is_none() {
                request_started = Some(Instant::now());
            }
            if end == buf.len() {
                if start > 0 {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                } else if buf.len() < max_buf {
                    buf.resize((buf.len() * 2).min(max_buf), 0);
                }
            }
        }
        let timeout = match request_started {
            None => cfg.idle_timeout,
            Some(t) => match cfg.request_timeout.checked_sub(t.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => {
                    timed_out(&mut stream).await;
                    return;
                }
            },
        };
        // Fast path: read what is already there without arming an io_uring
        // poll (see `recv_now`); when nothing is there, let the executor
        // poll for I/O once (the other connections run meanwhile) so the
        // peer's next request has time to arrive.
        let mut ready = if streak < FAIR_STREAK {
            recv_now(&stream, &mut buf[end..])
        } else {
            None
        };
        let waits = ready.is_none() && (cfg.yield_before_read || streak >= FAIR_STREAK);
        if waits {
            tracker.next_poll.wait().await;
            ready = recv_now(&stream, &mut buf[end..]);
        }
        // Reads in a row that found a request without the executor polling.
        streak = if waits || ready.is_none() {
            0
        } else {
            streak + 1
        };
        let read = if let Some(r) = ready {
            r
        } else {
            if stream.set_read_timeout(Some(timeout)).is_err() {
                return;
            }
            stream.read(&mut buf[end..]).await
        };
        match read {
            Ok(0) => return,
            Ok(n) => end += n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                if request_started.is_some() {
                    timed_out(&mut stream).await;
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// A non-blocking `recv` on the socket: `None` when no data is there yet.
///
/// glommio's own read arms an `io_uring` poll after every read that does not
/// fill the buffer; without `IORING_SETUP_COOP_TASKRUN` each completed poll
/// interrupts the executor thread. Reading directly first means a poll is
/// armed only when the executor really has to wait for data.
fn recv_now(stream: &TcpStream, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
    use std::os::fd::AsRawFd;
    // SAFETY: recv writes at most buf.len() bytes into buf; fd is open for
    // the lifetime of `stream`.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Some(Ok(n.unsigned_abs()));
    }
    let err = std::io::Error::last_os_error();
    match err.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
        _ => Some(Err(err)),
    }
}

async fn timed_out(stream: &mut TcpStream) {
    let mut out = Vec::new();
    let resp = Response::text(408, "request not completed in time; closing the connection");
    encode(&resp, false, false, &date::now(), &mut out);
    let _ = stream.write_all(&out).await;
}
