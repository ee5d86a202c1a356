//! The in-process mailboxes between executors: what they carry ([`Mail`]),
//! how many they hold and the one way to send ([`ask`]).
//!
//! Depends on the message types (`super`), `nodestore::StoreError` and
//! `http::encode::Response`.

use super::{KvRequest, Pull, PullReply, Scan};
use crate::http::encode::Response;
use crate::nodestore::StoreError;
use crate::storage::SnapshotPage;

/// What executors send each other.
pub enum Mail {
    /// A forwarded key-value request; the owner answers on the channel.
    Kv(KvRequest, flume::Sender<Response>),
    /// A replication pull from a replica in this process.
    Pull(Pull, flume::Sender<PullReply>),
    /// A prefix scan for a listing; answered with the page or why not
    /// (a full read queue included).
    Scan(Scan, flume::Sender<Result<SnapshotPage, StoreError>>),
}

/// Mail an executor's mailbox holds (created in `node`). An executor
/// serves its mailbox by spawning a task per mail, so the queue only fills
/// when the executor cannot keep up at all (or is stopped); a few thousand
/// covers every burst the connection caps allow in practice, while each
/// queued mail (a forwarded write carries its value) stays in memory. A
/// sender that finds the mailbox full gets [`MailError::Full`] at once
/// (answered 503 with `Retry-After`) and never waits.
pub const MAILBOX_CAPACITY: usize = 4096;

/// Why a mail got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailError {
    /// The receiving executor's mailbox is full; nothing was sent.
    Full,
    /// The mail was not delivered: the executor behind the mailbox is gone
    /// and never saw it.
    Closed,
    /// The mail was delivered but the executor stopped before it answered:
    /// it may have been acted on.
    NoAnswer,
}

/// Sends the mail built by `make` (around a fresh reply channel) to
/// `mailbox` and waits for the answer. Never waits for room: a full
/// mailbox fails at once.
///
/// # Errors
/// The mailbox is full, or the receiving executor is gone.
pub async fn ask<T>(
    mailbox: &flume::Sender<Mail>,
    make: impl FnOnce(flume::Sender<T>) -> Mail,
) -> Result<T, MailError> {
    let (tx, rx) = flume::bounded(1);
    mailbox.try_send(make(tx)).map_err(|e| match e {
        flume::TrySendError::Full(_) => MailError::Full,
        flume::TrySendError::Disconnected(_) => MailError::Closed,
    })?;
    rx.recv_async().await.map_err(|_| MailError::NoAnswer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ask_fails_at_once_on_a_full_or_closed_mailbox() {
        let (tx, rx) = flume::bounded::<Mail>(1);
        let scan = || Scan {
            prefix: Vec::new(),
            after: None,
            limit: 1,
        };
        // Fill the mailbox; the first mail stays unanswered in it.
        let (first, _first_rx) = flume::bounded(1);
        tx.try_send(Mail::Scan(scan(), first))
            .expect("room for one");
        let full = futures_lite::future::block_on(ask(&tx, |r| Mail::Scan(scan(), r)));
        assert_eq!(full.err(), Some(MailError::Full));
        drop(rx);
        let closed = futures_lite::future::block_on(ask(&tx, |r| Mail::Scan(scan(), r)));
        assert_eq!(closed.err(), Some(MailError::Closed));
    }
}
