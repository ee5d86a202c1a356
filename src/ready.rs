//! Readiness of one executor's client sockets, through one epoll instance.
//!
//! Per executor, not `Send`. Depends on [`crate::sched`] (waiting for the
//! executor's next I/O poll), nix's epoll, glommio's `TcpStream` (see
//! below) and glommio's timer (the sweeper); nothing above it.
//!
//! # Why this exists
//!
//! glommio 0.9 learns that a socket has data through one `io_uring` poll
//! per read that has to wait, and it sets its rings up without
//! `IORING_SETUP_COOP_TASKRUN`: every poll that completes while the
//! executor thread runs interrupts it (a reschedule IPI, then the ring's
//! task work). At a moderate request rate most requests are waited for that
//! way, so most requests cost the executor an interrupt: measured at
//! `oha -q 20000 -c 64`, 0.70 reschedule IPIs per request against nginx's
//! 0.01, and twice nginx's CPU per request.
//!
//! Here every connection is registered once, edge-triggered, with the
//! executor's epoll instance, and a connection that found its socket empty
//! waits on a flag that one poller task sets. The poller asks epoll for
//! what became readable (`epoll_wait` with a zero timeout: it never blocks
//! the executor) once per round of the executor and, only when nothing is,
//! sleeps until the epoll instance itself becomes readable: one `io_uring`
//! poll for all waiting connections, armed only while there is nothing to
//! do. This is nginx's way of waiting, and it keeps glommio's reactor for
//! everything else (timers, writes, files, the listeners). glommio still
//! arms one poll for each accepted socket when it wraps it (it completes
//! with the connection's first bytes, or its close): one per connection,
//! not one per request.
//!
//! glommio has no public way to wait for an arbitrary file descriptor. A
//! glommio `TcpStream` arms one readability poll for its descriptor when it
//! is built, and its first `read` resolves once that poll fired (with the
//! error of the non-blocking `recv` it tries then: an epoll descriptor is
//! not a socket). The poller builds such a stream on a duplicate of the
//! epoll descriptor for each sleep; the duplicate is closed with it. That
//! is the only thing this module asks of glommio, and it is our own code:
//! nothing here is copied from glommio.
//!
//! A wait may have a deadline (the connection's idle or request timeout).
//! Deadlines are kept in the connection's slot and one sweeper task per
//! executor wakes the expired ones every [`SWEEP`], instead of one glommio
//! timer per wait: that timer cost every request an insert and a removal
//! in glommio's timer `BTreeMap`, more clock reads and a race of two
//! futures. A timeout is therefore noticed up to [`SWEEP`] late.

use crate::sched::NextPoll;
use futures_lite::AsyncReadExt;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Events taken from epoll per `epoll_wait`.
const EVENTS: usize = 256;

/// How often the sweeper looks for waits past their deadline (the idle
/// and request timeouts are whole seconds: a timeout fires up to this late).
pub const SWEEP: Duration = Duration::from_millis(100);

/// The poller's timer while epoll fails: first and longest wait.
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// One executor's epoll instance and the connections registered with it.
#[derive(Debug)]
pub struct Readiness {
    epoll: Epoll,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    /// The poller task is running.
    polling: Cell<bool>,
    /// The sweeper task is running.
    sweeping: Cell<bool>,
    next_poll: Rc<NextPoll>,
}

/// One registered socket.
#[derive(Debug, Default)]
struct Slot {
    /// epoll said readable since the connection last waited.
    ready: bool,
    /// epoll reported the peer's end of the stream (or an error): a short
    /// read no longer means the socket is empty (the end is still to read).
    closed: bool,
    /// The connection waiting for it.
    waker: Option<Waker>,
    /// Until when that connection waits (`None`: for ever).
    deadline: Option<Instant>,
    /// The sweeper found `deadline` passed while the connection waited.
    expired: bool,
}

impl Readiness {
    /// A new epoll instance; the poller starts with the first registration.
    ///
    /// # Errors
    /// When the kernel refuses an epoll instance (out of descriptors).
    pub fn new(next_poll: Rc<NextPoll>) -> std::io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(Self {
            epoll,
            slots: RefCell::default(),
            free: RefCell::default(),
            polling: Cell::new(false),
            sweeping: Cell::new(false),
            next_poll,
        })
    }

    /// Registers a socket (edge-triggered, read side); deregistered when
    /// the returned handle is dropped, which must happen before the socket
    /// is closed. Must be called on the executor that owns `self`.
    ///
    /// # Errors
    /// When epoll refuses the descriptor.
    pub fn register(self: &Rc<Self>, fd: RawFd) -> std::io::Result<Registration> {
        let token = {
            let mut slots = self.slots.borrow_mut();
            if let Some(t) = self.free.borrow_mut().pop() {
                slots[t] = Slot::default();
                t
            } else {
                slots.push(Slot::default());
                slots.len() - 1
            }
        };
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        // SAFETY: the caller's socket is open while this call runs.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Err(e) = self
            .epoll
            .add(borrowed, EpollEvent::new(flags, token as u64))
        {
            self.free.borrow_mut().push(token);
            return Err(e.into());
        }
        if !self.polling.replace(true) {
            glommio::spawn_local(poll_loop(self.clone())).detach();
        }
        Ok(Registration {
            readiness: self.clone(),
            token,
            fd,
        })
    }

    /// Takes what became readable without waiting; returns how many
    /// sockets it marked.
    fn harvest(&self, events: &mut [EpollEvent]) -> std::io::Result<usize> {
        let n = match self.epoll.wait(events, 0) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        let mut slots = self.slots.borrow_mut();
        for ev in &events[..n] {
            let Ok(token) = usize::try_from(ev.data()) else {
                continue;
            };
            if let Some(slot) = slots.get_mut(token) {
                slot.ready = true;
                slot.closed |= ev.events().intersects(
                    EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR,
                );
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
        }
        Ok(n)
    }

    /// Wakes every connection whose wait passed its deadline; returns
    /// whether any connection still waits with a deadline.
    fn sweep(&self, now: Instant) -> bool {
        let mut waiting = false;
        for slot in self.slots.borrow_mut().iter_mut() {
            match slot.deadline {
                Some(d) if d <= now => {
                    slot.deadline = None;
                    slot.expired = true;
                    if let Some(w) = slot.waker.take() {
                        w.wake();
                    }
                }
                Some(_) => waiting = true,
                None => {}
            }
        }
        waiting
    }

    /// Sleeps until the epoll instance has something to report (see the
    /// module doc for how glommio is asked to wait for it).
    async fn sleep(&self) -> std::io::Result<()> {
        let dup = self.epoll.0.try_clone()?;
        // SAFETY: `dup` is a descriptor this function owns; the stream takes
        // it over and closes it when dropped below.
        let mut stream = unsafe { glommio::net::TcpStream::from_raw_fd(dup.into_raw_fd()) };
        let mut byte = [0u8; 1];
        // Resolves once glommio's poll for the descriptor fired; the error
        // (not a socket) of its follow-up `recv` is expected.
        let _ = stream.read(&mut byte).await;
        Ok(())
    }
}

/// The poller: hands out what epoll reports once per executor round and
/// sleeps on the epoll instance when nothing is readable.
///
/// If epoll or the descriptor duplicate for a sleep fails (out of
/// descriptors), it polls on a timer instead, backing off from 1 to 50 ms,
/// and logs the first failure of each streak and its end.
async fn poll_loop(r: Rc<Readiness>) {
    let mut events = vec![EpollEvent::empty(); EVENTS];
    let mut backoff = Duration::ZERO;
    loop {
        let step = match r.harvest(&mut events) {
            Ok(0) => r.sleep().await.map(|()| false),
            Ok(_) => Ok(true),
            Err(e) => Err(e),
        };
        match step {
            Ok(found) => {
                if !backoff.is_zero() {
                    log::warn!("epoll readiness works again");
                    backoff = Duration::ZERO;
                }
                if found {
                    // Let the woken connections run; look again after the
                    // executor's next I/O poll.
                    r.next_poll.wait().await;
                }
            }
            Err(e) => {
                if backoff.is_zero() {
                    log::error!(
                        "epoll readiness failed ({e}); polling every few ms until it works"
                    );
                }
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                glommio::timer::sleep(backoff).await;
            }
        }
    }
}

/// The sweeper: every [`SWEEP`], wakes the connections whose wait ran
/// past its deadline; ends once no connection waits with one (the next
/// such wait starts it again). Connections between requests wait with
/// their idle timeout, so it runs while an executor has connections and
/// stops once it has none.
async fn sweep_loop(r: Rc<Readiness>) {
    loop {
        glommio::timer::sleep(SWEEP).await;
        if !r.sweep(Instant::now()) {
            r.sweeping.set(false);
            return;
        }
    }
}

/// A socket registered with a [`Readiness`].
#[derive(Debug)]
pub struct Registration {
    readiness: Rc<Readiness>,
    token: usize,
    fd: RawFd,
}

impl Registration {
    /// Resolves `true` once epoll reported the socket readable since the
    /// last wait, or `false` once `deadline` (if any) passed first, noticed
    /// by the sweeper up to [`SWEEP`] late. Call only after a `recv` found
    /// the socket empty, or returned less than it asked for while
    /// [`Self::peer_closed`] was false (edge-triggered: what was already
    /// there is not reported again).
    #[must_use]
    pub fn readable(&self, deadline: Option<Instant>) -> Readable<'_> {
        Readable {
            reg: self,
            deadline,
            armed: false,
        }
    }

    /// epoll reported that the peer closed its end (or an error): read
    /// until `recv` says so instead of trusting a short read.
    #[must_use]
    pub fn peer_closed(&self) -> bool {
        self.readiness
            .slots
            .borrow()
            .get(self.token)
            .is_some_and(|s| s.closed)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: the socket is still open (see `Readiness::register`).
        let borrowed = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = self.readiness.epoll.delete(borrowed);
        if let Some(slot) = self.readiness.slots.borrow_mut().get_mut(self.token) {
            *slot = Slot::default();
        }
        self.readiness.free.borrow_mut().push(self.token);
    }
}

/// A non-blocking `recv` on socket `fd`: `None` when nothing is there yet
/// (the caller then waits with [`Registration::readable`]); retried when
/// interrupted (waiting for an edge would wait for data already there).
pub fn recv_now(fd: RawFd, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf; the caller
        // keeps fd open for the duration of the call.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Some(Ok(n.unsigned_abs()));
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => return None,
            _ => return Some(Err(err)),
        }
    }
}

/// Future returned by [`Registration::readable`]: `true` when readable,
/// `false` when the deadline passed first.
#[derive(Debug)]
pub struct Readable<'a> {
    reg: &'a Registration,
    deadline: Option<Instant>,
    /// The deadline is in the slot (set at the first poll that waits).
    armed: bool,
}

impl Future for Readable<'_> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let this = self.get_mut();
        let readiness = &this.reg.readiness;
        let mut slots = readiness.slots.borrow_mut();
        let Some(slot) = slots.get_mut(this.reg.token) else {
            return Poll::Ready(true);
        };
        if std::mem::take(&mut slot.ready) {
            slot.waker = None;
            slot.deadline = None;
            return Poll::Ready(true);
        }
        if std::mem::take(&mut slot.expired) {
            slot.waker = None;
            return Poll::Ready(false);
        }
        slot.waker = Some(cx.waker().clone());
        if let (false, Some(d)) = (this.armed, this.deadline) {
            if d <= Instant::now() {
                slot.waker = None;
                return Poll::Ready(false);
            }
            this.armed = true;
            slot.deadline = Some(d);
            drop(slots);
            if !readiness.sweeping.replace(true) {
                glommio::spawn_local(sweep_loop(readiness.clone())).detach();
            }
        }
        Poll::Pending
    }
}

impl Drop for Readable<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self
            .reg
            .readiness
            .slots
            .borrow_mut()
            .get_mut(self.reg.token)
        {
            slot.waker = None;
            slot.deadline = None;
            slot.expired = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::poll_once;
    use glommio::LocalExecutorBuilder;
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn run(test: impl Future<Output = ()> + 'static) {
        LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(test);
    }

    /// `f`'s output, or `None` if it takes longer than 5 s (a broken wake-up
    /// fails the test instead of hanging it).
    async fn within_5s<T>(f: impl Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(f.await) }, async {
            glommio::timer::sleep(Duration::from_secs(5)).await;
            None
        })
        .await
    }

    fn readiness() -> (Rc<Readiness>, Rc<NextPoll>) {
        let np = Rc::new(NextPoll::default());
        let r = Rc::new(Readiness::new(np.clone()).expect("epoll"));
        (r, np)
    }

    #[test]
    fn readiness_seen_before_the_wait_is_kept_for_it() {
        run(async {
            let (r, _np) = readiness();
            let (a, mut b) = UnixStream::pair().expect("pair");
            let reg = r.register(a.as_raw_fd()).expect("register");
            let mut events = vec![EpollEvent::empty(); EVENTS];
            assert_eq!(r.harvest(&mut events).expect("harvest"), 0);
            assert!(
                poll_once(reg.readable(None)).await.is_none(),
                "nothing to read yet"
            );
            b.write_all(b"x").expect("write");
            // epoll reports it while nobody waits...
            assert_eq!(r.harvest(&mut events).expect("harvest"), 1);
            // ...and the next wait sees it at once, exactly once.
            assert!(poll_once(reg.readable(None)).await.is_some());
            assert!(poll_once(reg.readable(None)).await.is_none());
            assert!(!reg.peer_closed());
        });
    }

    #[test]
    fn a_waiting_socket_is_woken_through_the_poller_sleeping_on_epoll() {
        run(async {
            let (r, np) = readiness();
            let (a, mut b) = UnixStream::pair().expect("pair");
            let reg = Rc::new(r.register(a.as_raw_fd()).expect("register"));
            let woke = Rc::new(Cell::new(false));
            let waiter = {
                let (reg, woke) = (reg.clone(), woke.clone());
                glommio::spawn_local(async move {
                    reg.readable(None).await;
                    woke.set(true);
                })
            };
            // Several rounds with nothing readable: the poller goes to
            // sleep on the epoll descriptor.
            for _ in 0..5 {
                np.wait().await;
            }
            assert!(!woke.get());
            b.write_all(b"x").expect("write");
            let done = within_5s(waiter).await.is_some();
            assert!(
                done && woke.get(),
                "the waiting socket was not woken within 5 s"
            );
        });
    }

    #[test]
    fn a_reused_slot_starts_clean_and_the_peers_end_is_reported() {
        run(async {
            let (r, _np) = readiness();
            let mut events = vec![EpollEvent::empty(); EVENTS];
            let (a, mut b) = UnixStream::pair().expect("pair");
            let reg = r.register(a.as_raw_fd()).expect("register");
            let token = reg.token;
            b.write_all(b"x").expect("write");
            drop(b);
            assert_eq!(r.harvest(&mut events).expect("harvest"), 1);
            assert!(reg.peer_closed(), "the peer's end was reported");
            // Deregistered before the socket closes: no event is left for
            // the slot, which the next registration reuses, clean.
            drop(reg);
            drop(a);
            let (c, _d) = UnixStream::pair().expect("pair");
            let reg = r.register(c.as_raw_fd()).expect("register");
            assert_eq!(reg.token, token, "the slot is reused");
            assert_eq!(r.harvest(&mut events).expect("harvest"), 0);
            assert!(poll_once(reg.readable(None)).await.is_none());
            assert!(!reg.peer_closed());
        });
    }

    #[test]
    fn a_wait_past_its_deadline_ends_false_and_the_sweeper_then_stops() {
        run(async {
            let (r, _np) = readiness();
            let (a, mut b) = UnixStream::pair().expect("pair");
            let reg = r.register(a.as_raw_fd()).expect("register");
            // Nothing arrives: false, once the deadline passed and no
            // later than the sweeper's next look.
            let start = Instant::now();
            let deadline = start + Duration::from_millis(200);
            let ended = within_5s(reg.readable(Some(deadline))).await;
            assert_eq!(ended, Some(false), "the wait did not end false within 5 s");
            let took = start.elapsed();
            assert!(
                took >= Duration::from_millis(200) && took < Duration::from_millis(200) + SWEEP * 5,
                "timed out after {took:?}"
            );
            // A deadline already passed: false at once, no sweeper needed.
            assert_eq!(
                poll_once(reg.readable(Some(Instant::now()))).await,
                Some(false)
            );
            // Data before the deadline: true, and the sweeper stops once no
            // wait has a deadline left.
            b.write_all(b"x").expect("write");
            assert!(
                reg.readable(Some(Instant::now() + Duration::from_secs(10)))
                    .await
            );
            let stop_by = Instant::now() + SWEEP * 20;
            while r.sweeping.get() && Instant::now() < stop_by {
                glommio::timer::sleep(SWEEP / 2).await;
            }
            assert!(
                !r.sweeping.get(),
                "the sweeper still runs with no deadline left"
            );
        });
    }
}
