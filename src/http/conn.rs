//! The server side of one HTTP/1.1 connection, generic over the handler.
//!
//! Depends on glommio's `TcpStream`, on [`super::parse`] /
//! [`super::encode`] and on [`crate::ready`] / [`crate::sched`] (waiting). Invariants: responses go out in request order; all
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
//! Reading: a connection reads with a non-blocking `recv` until a read
//! finds the socket empty, or returns less than it asked for while epoll
//! has not reported the peer's end of the stream; then it waits until the
//! executor's epoll instance reports the socket readable ([`crate::ready`]:
//! one `io_uring` poll for all waiting connections of the executor, instead
//! of glommio's one per waiting read). A connection whose reads filled the
//! buffer [`FAIR_STREAK`] times in a row waits for the executor's next I/O
//! poll ([`NextPoll`]) before it reads again, so a client that always has
//! more to send cannot monopolise the executor.

use super::date;
use super::encode::{Response, encode};
use super::parse::{Limits, Method, Parsed, Request, parse};
use crate::ready::{Readiness, Registration, recv_now};
use crate::sched::NextPoll;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::cell::Cell;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Per-executor connection bookkeeping (not `Send`).
#[derive(Debug)]
pub struct Tracker {
    open: Cell<usize>,
    in_flight: Cell<usize>,
    draining: Cell<bool>,
    /// Connections waiting for the executor's next I/O poll.
    next_poll: Rc<NextPoll>,
    /// The executor's epoll instance, which tells connections their socket
    /// is readable.
    readiness: Rc<Readiness>,
}

impl Tracker {
    /// Bookkeeping for one executor, with its epoll instance.
    ///
    /// # Errors
    /// When the kernel refuses an epoll instance.
    pub fn new() -> std::io::Result<Self> {
        let next_poll = Rc::new(NextPoll::default());
        Ok(Self {
            open: Cell::new(0),
            in_flight: Cell::new(0),
            draining: Cell::new(false),
            readiness: Rc::new(Readiness::new(next_poll.clone())?),
            next_poll,
        })
    }

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
    /// Longest wait for the first byte of the next request (noticed up to
    /// `ready::SWEEP`, 100 ms, late).
    pub idle_timeout: Duration,
    /// Longest time from the first byte of a request to its last (noticed
    /// up to `ready::SWEEP` late).
    pub request_timeout: Duration,
    /// Most open connections per executor; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            idle_timeout: Duration::from_mins(1),
            request_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// A new connection's input and output buffers; each grows as a request
/// or response needs (input up to the largest request the limits allow).
const INITIAL_BUF: usize = 4 * 1024;

/// Once a request is answered and written, a buffer grown past this goes
/// back to [`INITIAL_BUF`]: an idle keep-alive connection must not keep
/// the largest request or response it ever carried (10,000 connections
/// that each once sent an 8 MiB body would hold 80 GB).
const KEEP_BUF: usize = 64 * 1024;

/// Reads in a row that did not empty the socket, after which a connection
/// lets the executor poll for I/O before it reads again.
pub const FAIR_STREAK: u32 = 16;

/// Whether a newly accepted connection fits under the cap.
#[must_use]
pub fn has_room(cfg: &ConnConfig, tracker: &Tracker) -> bool {
    tracker.open() < cfg.max_connections
}

/// Answers a connection over the cap with 503 and closes it.
pub async fn refuse(mut stream: TcpStream) {
    answer_last(
        &mut stream,
        503,
        "too many open connections; try again later",
    )
    .await;
}

/// Writes a plain-text answer with `Connection: close`, the connection's
/// last (the caller closes it).
async fn answer_last(stream: &mut TcpStream, status: u16, message: &str) {
    let mut out = Vec::new();
    encode(
        &Response::text(status, message),
        false,
        false,
        &date::now(),
        &mut out,
    );
    let _ = stream.write_all(&out).await;
}

/// Serves requests on `stream` until the peer closes, an error, a timeout,
/// or a request asks to close.
///
/// Each turn: answer every request already buffered, write the answers,
/// make room for the next read, and read more.
pub async fn serve<F, Fut>(mut stream: TcpStream, cfg: ConnConfig, tracker: &Tracker, handler: F)
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let _open = Count::new(&tracker.open);
    let _ = stream.set_nodelay(true);
    let reg = match tracker.readiness.register(stream.as_raw_fd()) {
        Ok(reg) => reg,
        Err(e) => {
            // The kernel's epoll limit (fs.epoll.max_user_watches) or memory.
            log::warn!("cannot register a connection with epoll: {e}");
            answer_last(
                &mut stream,
                503,
                &format!("cannot watch this connection ({e}); try again later"),
            )
            .await;
            return;
        }
    };
    let mut conn = Conn {
        input: Input::new(cfg.limits.max_head + cfg.limits.max_body + INITIAL_BUF),
        out: Vec::with_capacity(INITIAL_BUF),
        request_started: None,
        streak: 0,
        drained: false,
        reg,
        stream,
        cfg,
        tracker,
        handler,
    };
    loop {
        let batch = conn.answer_buffered().await;
        if !conn.write_out().await || batch.close {
            return;
        }
        conn.make_room(batch.answered);
        let Some(timeout) = conn.read_timeout() else {
            timed_out(&mut conn.stream).await;
            return;
        };
        match conn.read_more(timeout).await {
            Read::Data(n) => conn.input.filled(n),
            Read::TimedOut => {
                if conn.request_started.is_some() {
                    timed_out(&mut conn.stream).await;
                }
                return;
            }
            Read::End => return,
        }
    }
}

/// One connection's state between turns of [`serve`].
struct Conn<'t, F> {
    /// Declared before `stream`: deregistered before the socket closes.
    reg: Registration,
    stream: TcpStream,
    cfg: ConnConfig,
    tracker: &'t Tracker,
    handler: F,
    input: Input,
    /// Encoded responses not written yet.
    out: Vec<u8>,
    /// When the request buffered in `input` started arriving (`None`: no
    /// partial request is buffered).
    request_started: Option<Instant>,
    /// Reads in a row that did not empty the socket (see [`FAIR_STREAK`]).
    streak: u32,
    /// The last `recv` found the socket empty or did not fill the buffer:
    /// wait for epoll before the next one.
    drained: bool,
}

/// What [`Conn::answer_buffered`] did.
struct Batch {
    /// At least one request was answered.
    answered: bool,
    /// The connection closes once the responses are written.
    close: bool,
}

/// How [`Conn::read_more`] ended.
enum Read {
    /// This many bytes arrived.
    Data(usize),
    /// The read timed out.
    TimedOut,
    /// The peer closed, or the socket failed.
    End,
}

impl<F, Fut> Conn<'_, F>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    /// Answers every complete request in `input`, in order, encoding the
    /// responses into `out`; stops at a partial request, at a response
    /// that closes the connection, or at a parse error (answered, then
    /// the connection closes).
    async fn answer_buffered(&mut self) -> Batch {
        let mut answered = false;
        loop {
            match parse(self.input.unparsed(), &self.cfg.limits) {
                Ok(Parsed::Complete(req, used)) => {
                    self.input.consume(used);
                    answered = true;
                    let head_only = req.method == Method::Head;
                    let keep_alive = req.keep_alive;
                    let resp = {
                        let _busy = Count::new(&self.tracker.in_flight);
                        (self.handler)(req).await
                    };
                    let keep_alive = keep_alive && !resp.close && !self.tracker.draining.get();
                    encode(&resp, head_only, keep_alive, &date::now(), &mut self.out);
                    if !keep_alive {
                        return Batch {
                            answered,
                            close: true,
                        };
                    }
                }
                Ok(Parsed::Partial) => {
                    return Batch {
                        answered,
                        close: false,
                    };
                }
                Err(e) => {
                    encode(
                        &Response::text(e.status(), &e.message(&self.cfg.limits)),
                        false,
                        false,
                        &date::now(),
                        &mut self.out,
                    );
                    return Batch {
                        answered,
                        close: true,
                    };
                }
            }
        }
    }

    /// Writes the encoded responses with one write; `false` if that failed.
    async fn write_out(&mut self) -> bool {
        if !self.out.is_empty() {
            if self.stream.write_all(&self.out).await.is_err() {
                return false;
            }
            self.out.clear();
            if self.out.capacity() > KEEP_BUF {
                self.out.shrink_to(INITIAL_BUF);
            }
        }
        true
    }

    /// Makes room for the next read and keeps the clock of a buffered
    /// partial request.
    fn make_room(&mut self, answered: bool) {
        if self.input.is_empty() {
            self.input.clear();
            self.request_started = None;
        } else {
            // A partial request is buffered: its clock starts when its first
            // bytes arrived, at the latest now if a request just completed.
            if answered || self.request_started.is_none() {
                self.request_started = Some(Instant::now());
            }
            self.input.compact_or_grow();
        }
    }

    /// How long the next read may wait: the idle timeout between requests,
    /// what is left of the request timeout within one; `None` when that is
    /// used up.
    fn read_timeout(&self) -> Option<Duration> {
        match self.request_started {
            None => Some(self.cfg.idle_timeout),
            Some(t) => match self.cfg.request_timeout.checked_sub(t.elapsed()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => None,
            },
        }
    }

    /// Reads more of the peer's requests into `input`, fairly (see the
    /// module doc): a non-blocking `recv` while the socket may hold more,
    /// else a wait of up to `timeout` (from the first wait; a timeout too
    /// large for the clock waits for ever) for epoll to report it readable;
    /// the executor's next I/O poll first when the streak is long.
    async fn read_more(&mut self, timeout: Duration) -> Read {
        if self.streak >= FAIR_STREAK {
            self.streak = 0;
            self.tracker.next_poll.wait().await;
        }
        let mut deadline = None;
        loop {
            if self.drained {
                let by = *deadline.get_or_insert_with(|| Instant::now().checked_add(timeout));
                if !self.reg.readable(by).await {
                    return Read::TimedOut;
                }
            }
            let spare = self.input.spare();
            let want = spare.len();
            match recv_now(self.stream.as_raw_fd(), spare) {
                None => {
                    self.drained = true;
                    self.streak = 0;
                }
                Some(Ok(0) | Err(_)) => return Read::End,
                Some(Ok(n)) => {
                    // A read that did not fill the buffer emptied the socket,
                    // unless the peer's end of the stream is still to read.
                    self.drained = n < want && !self.reg.peer_closed();
                    self.streak = if self.drained { 0 } else { self.streak + 1 };
                    return Read::Data(n);
                }
            }
        }
    }
}

/// Bytes read from the peer and not parsed yet: `buf[start..end]`.
struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The most `buf` grows to (the largest request plus a read's worth).
    max: usize,
}

impl Input {
    fn new(max: usize) -> Self {
        Self {
            buf: vec![0u8; INITIAL_BUF],
            start: 0,
            end: 0,
            max,
        }
    }

    fn unparsed(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The first `n` unparsed bytes were parsed.
    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Nothing is buffered: the next read starts at the front, and a
    /// buffer grown past [`KEEP_BUF`] shrinks back to [`INITIAL_BUF`].
    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        if self.buf.len() > KEEP_BUF {
            self.buf.truncate(INITIAL_BUF);
            self.buf.shrink_to_fit();
        }
    }

    /// When the buffer is full, moves the unparsed bytes to its front or,
    /// if they already start there, doubles it (up to `max`).
    fn compact_or_grow(&mut self) {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < self.max {
                self.buf.resize((self.buf.len() * 2).min(self.max), 0);
            }
        }
    }

    /// Where the next read goes.
    fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Self::spare`].
    fn filled(&mut self, n: usize) {
        self.end += n;
    }
}

async fn timed_out(stream: &mut TcpStream) {
    answer_last(
        stream,
        408,
        "request not completed in time; closing the connection",
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::{INITIAL_BUF, Input, KEEP_BUF};

    /// Fills the spare room of `input` as a read would.
    fn fill(input: &mut Input) {
        let n = input.spare().len();
        input.spare().fill(b'x');
        input.filled(n);
    }

    #[test]
    fn a_buffer_grown_for_a_large_request_shrinks_once_it_is_answered() {
        let max = 16 * KEEP_BUF;
        let mut input = Input::new(max);
        assert_eq!(input.buf.len(), INITIAL_BUF);
        // A partial request that never fits: the buffer doubles up to max.
        while input.buf.len() < max {
            fill(&mut input);
            input.compact_or_grow();
        }
        assert_eq!(input.buf.len(), max);
        fill(&mut input);
        input.compact_or_grow();
        assert_eq!(input.buf.len(), max, "never past max");
        // Answered: nothing is buffered, the next read starts small.
        input.consume(input.unparsed().len());
        assert!(input.is_empty());
        input.clear();
        assert_eq!(input.buf.len(), INITIAL_BUF);
        assert!(input.buf.capacity() <= KEEP_BUF);
        assert_eq!(input.spare().len(), INITIAL_BUF);
    }

    #[test]
    fn a_buffer_within_keep_buf_is_kept_as_it_is() {
        let mut input = Input::new(16 * KEEP_BUF);
        while input.buf.len() < KEEP_BUF {
            fill(&mut input);
            input.compact_or_grow();
        }
        input.consume(input.unparsed().len());
        input.clear();
        assert_eq!(
            input.buf.len(),
            KEEP_BUF,
            "kept: the next request of that size needs no regrowth"
        );
        assert_eq!(input.unparsed().len(), 0);
    }
}
