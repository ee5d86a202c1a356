//! Executor scheduling: how a task waits for the executor's next I/O poll.
//!
//! Per executor, not `Send`. Depends only on glommio's timer.
//!
//! # Why this exists
//!
//! A glommio 0.9 executor runs runnable tasks until its run queue is empty,
//! or until its preempt timer (or another latency-ring completion) fires;
//! only then does it look at `io_uring` again: submit the reads it queued,
//! reap completions, wake the tasks they belong to. A task that calls
//! `yield_now` goes to the back of the run queue, so tasks that keep
//! yielding keep the queue non-empty and a connection that is waiting for
//! a completion waits for the preempt timer (100 ms by default): that was
//! the p99 of tens of milliseconds under wrk.
//!
//! A short preempt timer is no cure: glommio arms it in `poll_io` and, if
//! it has already fired when the executor first checks it (the thread was
//! descheduled in between, common with more executors than cores), the
//! executor concludes that it ran nothing and parks with runnable tasks,
//! until some unrelated completion wakes it. On the very first turn no task
//! has run yet, nothing can wake it, and the node never comes up (the rare
//! start-up hang, reproduced under CPU load with short timers). corekv
//! therefore keeps the preempt timer long (see `node::DEFAULT_PREEMPT`)
//! and, instead of yielding, lets a task wait for the *next I/O poll* with
//! [`NextPoll::wait`]: the run queue drains, the executor polls `io_uring`,
//! and every waiter runs again right after. One glommio timer per round
//! does it; nothing here is copied from glommio.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Tasks of one executor waiting for its next I/O poll.
#[derive(Debug, Default)]
pub struct NextPoll {
    /// Completed rounds; a waiter is done once this moves past its own.
    round: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
    /// A task that ends the current round is scheduled.
    armed: Cell<bool>,
}

impl NextPoll {
    /// Resolves after the executor has polled for I/O at least once.
    ///
    /// Must be awaited on the executor that owns `self`.
    #[must_use]
    pub fn wait(self: &Rc<Self>) -> WaitNextPoll {
        WaitNextPoll {
            np: self.clone(),
            round: None,
        }
    }
}

/// Ends the current round at the executor's next I/O poll.
///
/// glommio fires expired timers while it polls for I/O; a timer that is
/// still in the future when it is registered therefore fires at the first
/// poll after it expires. One microsecond is far shorter than any round;
/// a timer found already expired at its first poll is replaced.
async fn end_round(np: Rc<NextPoll>) {
    AfterPoll { timer: None }.await;
    np.round.set(np.round.get().wrapping_add(1));
    np.armed.set(false);
    let waiters = std::mem::take(&mut *np.waiters.borrow_mut());
    for w in waiters {
        w.wake();
    }
}

/// Resolves the first time it is polled again after registering a timer
/// with glommio's reactor, i.e. once that timer fired at an I/O poll.
/// glommio's `Timer` alone would not do: it is ready whenever it is polled
/// after its deadline, and a timer whose one microsecond ran out before its
/// first poll (the thread was descheduled in between) would fire at once.
struct AfterPoll {
    /// The timer registered by the first poll (kept: dropping it would
    /// deregister it).
    timer: Option<glommio::timer::Timer>,
}

impl Future for AfterPoll {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.timer.is_some() {
            // Only the registered timer wakes this task.
            return Poll::Ready(());
        }
        loop {
            let mut timer = glommio::timer::Timer::new(Duration::from_micros(1));
            if Pin::new(&mut timer).poll(cx).is_pending() {
                this.timer = Some(timer);
                return Poll::Pending;
            }
        }
    }
}

/// Future returned by [`NextPoll::wait`].
#[derive(Debug)]
pub struct WaitNextPoll {
    np: Rc<NextPoll>,
    /// The round this waiter joined (`None` before the first poll).
    round: Option<u64>,
}

impl Future for WaitNextPoll {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let np = &this.np;
        match this.round {
            Some(r) if r != np.round.get() => Poll::Ready(()),
            Some(_) => {
                // Polled again within the same round (not by `end_round`):
                // keep the newest waker.
                np.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
            None => {
                this.round = Some(np.round.get());
                np.waiters.borrow_mut().push(cx.waker().clone());
                if !np.armed.replace(true) {
                    glommio::spawn_local(end_round(np.clone())).detach();
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    #[test]
    fn waiters_resume_after_the_next_poll_not_before() {
        // A long preempt timer: with glommio's 100 ms, a test thread
        // descheduled for that long during the yields below would let the
        // executor poll (and the waiters finish) early.
        LocalExecutorBuilder::default()
            .preempt_timer(Duration::from_secs(10))
            .make()
            .expect("executor")
            .run(async {
                let np = Rc::new(NextPoll::default());
                let done = Rc::new(Cell::new(0));
                for _ in 0..10 {
                    let (np, done) = (np.clone(), done.clone());
                    glommio::spawn_local(async move {
                        np.wait().await;
                        done.set(done.get() + 1);
                    })
                    .detach();
                }
                // Yielding keeps this task runnable: the waiters must not
                // finish while the run queue never empties...
                for _ in 0..100 {
                    futures_lite::future::yield_now().await;
                }
                assert_eq!(done.get(), 0);
                // ...and all finish once the executor polled (this task
                // waits for the same round).
                np.wait().await;
                futures_lite::future::yield_now().await;
                assert_eq!(done.get(), 10);
                assert_eq!(np.round.get(), 1);
            });
    }
}
