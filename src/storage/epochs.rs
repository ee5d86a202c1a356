//! The epoch history of a node's file: for every epoch this node has seen
//! (as primary or by replication), the first seq written in it. A failover
//! starts a new epoch; comparing histories tells a returning node which of
//! its entries the new primary never had (see `replication`).
//!
//! Part of `storage` (the only redb importer); synchronous. Table layout:
//!
//! ```text
//! epochs: epoch u64 -> first seq of the epoch u64
//! ```
//!
//! Entries with a seq below an epoch's first seq belong to earlier
//! epochs; seqs before the first recorded epoch belong to epoch 0 (files
//! written before epochs existed, or before any primary began one).

use super::{META, META_SEQ, StorageError, Store};
use redb::{ReadableTable, TableDefinition};

pub(super) const EPOCHS: TableDefinition<u64, u64> = TableDefinition::new("epochs");

/// An epoch and the first seq written in it.
pub type EpochStart = (u64, u64);

impl Store {
    /// The whole epoch history, oldest first.
    ///
    /// # Errors
    /// Storage failures.
    pub fn epochs(&self) -> Result<Vec<EpochStart>, StorageError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(EPOCHS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (e, s) = item?;
            out.push((e.value(), s.value()));
        }
        Ok(out)
    }

    /// The epoch of the last entry this file holds: the newest epoch whose
    /// first seq is at or below the file's seq (0 if none).
    ///
    /// # Errors
    /// Storage failures.
    pub fn last_epoch(&self) -> Result<u64, StorageError> {
        let seq = self.seq()?;
        Ok(epoch_of(&self.epochs()?, seq))
    }

    /// Primary: starts `epoch` at the next seq, unless an epoch at least as
    /// new is already recorded. Returns the epoch's first seq.
    ///
    /// # Errors
    /// Storage failures.
    pub fn begin_epoch(&self, epoch: u64) -> Result<u64, StorageError> {
        let txn = self.begin_write()?;
        let start = {
            let seq = txn
                .open_table(META)?
                .get(META_SEQ)?
                .map_or(0, |v| v.value());
            let mut table = txn.open_table(EPOCHS)?;
            let newest = table.last()?.map(|(e, s)| (e.value(), s.value()));
            match newest {
                Some((e, s)) if e >= epoch => s,
                _ => {
                    table.insert(epoch, seq + 1)?;
                    seq + 1
                }
            }
        };
        self.commit(txn)?;
        Ok(start)
    }
}

/// Records `history` entries this table does not have yet (a replica
/// copying its primary's history, inside the transaction that applies the
/// entries they describe). `replace`: drop the old history first (re-seed).
pub(super) fn record(
    txn: &redb::WriteTransaction,
    history: &[EpochStart],
    replace: bool,
) -> Result<(), StorageError> {
    if history.is_empty() && !replace {
        return Ok(());
    }
    if replace {
        txn.delete_table(EPOCHS)?;
    }
    let mut table = txn.open_table(EPOCHS)?;
    for &(e, s) in history {
        if table.get(e)?.is_none() {
            table.insert(e, s)?;
        }
    }
    Ok(())
}

/// The epoch `seq` was written in, by `history` (oldest first).
#[must_use]
pub fn epoch_of(history: &[EpochStart], seq: u64) -> u64 {
    history
        .iter()
        .take_while(|&&(_, start)| start <= seq)
        .last()
        .map_or(0, |&(e, _)| e)
}

/// The last seq of `epoch` by `history`: one before the first seq of the
/// next newer epoch; `None` when no newer epoch is recorded (it is still
/// running, or this history has not seen its end).
#[must_use]
pub fn end_of(history: &[EpochStart], epoch: u64) -> Option<u64> {
    history
        .iter()
        .find(|&&(e, _)| e > epoch)
        .map(|&(_, start)| start.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_arithmetic() {
        let h = [(1, 1), (2, 96), (4, 200)];
        assert_eq!(epoch_of(&h, 0), 0);
        assert_eq!(epoch_of(&h, 95), 1);
        assert_eq!(epoch_of(&h, 96), 2);
        assert_eq!(epoch_of(&h, 500), 4);
        assert_eq!(end_of(&h, 1), Some(95));
        assert_eq!(end_of(&h, 0), Some(0));
        assert_eq!(end_of(&h, 3), Some(199));
        assert_eq!(end_of(&h, 4), None);
    }

    #[test]
    fn begin_epoch_is_idempotent_and_ordered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("e.redb"), false).expect("open");
        assert_eq!(store.begin_epoch(1).expect("begin"), 1);
        assert_eq!(store.begin_epoch(1).expect("again"), 1);
        assert_eq!(store.epochs().expect("epochs"), vec![(1, 1)]);
        assert_eq!(store.last_epoch().expect("last"), 0, "nothing written yet");
    }
}
