//! Which shard owns a key right now, and the state of an online reshard
//! (N → 2N shards) as this process knows it, kept in
//! `<data-dir>/layout.json` so that a restart (even after kill -9) routes
//! exactly as before it.
//!
//! Placement is `FNV-1(key) % N`. Doubling N moves a key of shard i only to
//! shard i or i+N, so a reshard splits each shard i on its own: until the
//! pair's cutover ("split") its keys are placed by `% N`, after it by
//! `% 2N`. A [`Placement`] is immutable; the current one is swapped in
//! whole (`arc_swap`), so every request reads one consistent placement
//! with one atomic load, whatever changes meanwhile.
//!
//! Shared by every executor and committer thread as `Arc<Layout>`.
//! Depends on `topology` (the hash) and serde; its only I/O is writing
//! `layout.json` (write to a temporary file, fsync, rename, fsync the
//! directory) whenever the stored state changes.

use crate::topology::fnv1_64;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The file in the data directory that holds the layout.
pub const FILE_NAME: &str = "layout.json";

/// How keys are placed: `% base`, except in the shards of a reshard from
/// `base` to `2 × base` that have split, where it is `% (2 × base)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    base: usize,
    /// Per old shard (length `base`) while a reshard is under way; empty
    /// otherwise.
    split: Vec<bool>,
}

impl Placement {
    /// Plain `% shards` placement.
    #[must_use]
    pub fn plain(shards: usize) -> Self {
        Self {
            base: shards.max(1),
            split: Vec::new(),
        }
    }

    /// The shard that owns a key with hash `h`.
    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "remainders are below 2 × base, a usize"
    )]
    pub fn owner_of_hash(&self, h: u64) -> usize {
        let base = self.base as u64;
        let s = (h % base) as usize;
        if self.split.get(s).copied().unwrap_or(false) {
            (h % (2 * base)) as usize
        } else {
            s
        }
    }

    /// The shard that owns `key`.
    #[must_use]
    pub fn owner(&self, key: &[u8]) -> usize {
        self.owner_of_hash(fnv1_64(key))
    }

    /// Shards that own keys now (`base`, or `2 × base` once every shard
    /// has split).
    #[must_use]
    pub fn shards(&self) -> usize {
        if !self.split.is_empty() && self.split.iter().all(|&s| s) {
            2 * self.base
        } else {
            self.base
        }
    }

    /// True while a reshard is under way.
    #[must_use]
    pub fn resharding(&self) -> bool {
        !self.split.is_empty()
    }

    /// The new shard that copies old shard `shard` now (a reshard is
    /// under way and that pair has not split).
    #[must_use]
    pub fn follows(&self, shard: usize) -> Option<usize> {
        (self.split.get(shard) == Some(&false)).then_some(shard + self.base)
    }

    /// The old shard that shard `shard` copies instead of owning keys: a
    /// new shard whose pair has not split (or of an aborted reshard, until
    /// the process restarts). Its nodes follow that shard's primary and it
    /// has no primary of its own (no election with `--etcd`).
    #[must_use]
    pub fn copies(&self, shard: usize) -> Option<usize> {
        let pair = shard.checked_sub(self.base).filter(|&p| p < self.base)?;
        (self.split.get(pair) != Some(&true)).then_some(pair)
    }

    /// The old shard whose keys new shard `shard` took in a split (a
    /// reshard is under way and that pair has split).
    #[must_use]
    pub fn pair_of_new(&self, shard: usize) -> Option<usize> {
        let pair = shard.checked_sub(self.base)?;
        (self.split.get(pair) == Some(&true)).then_some(pair)
    }

    /// The shards that own keys now.
    pub fn owning_shards(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.base).chain(
            self.split
                .iter()
                .enumerate()
                .filter(|(_, s)| **s)
                .map(|(i, _)| i + self.base),
        )
    }
}

/// Where a reshard stands, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// New shards exist and copy their old shard; some pairs may have split.
    Resharding,
    /// Every pair split and purged; placement is `% to`.
    Done,
    /// Rolled back before any pair split; placement stays `% from`.
    Aborted,
}

/// The stored layout (`layout.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The whole layout after the reshard (old shards, then new ones), as
    /// the TOML text the operator gave.
    pub config: String,
    /// Shards before the reshard.
    pub from: usize,
    pub state: State,
    /// Per old shard: its keys moved to shard `i + from` (the cutover).
    pub split: Vec<bool>,
    /// Per shard of the new layout: it no longer holds keys it does not own.
    pub purged: Vec<bool>,
}

impl Stored {
    /// A reshard from `from` shards to the layout `config`, nothing split.
    #[must_use]
    pub fn begin(config: String, from: usize) -> Self {
        Self {
            config,
            from,
            state: State::Resharding,
            split: vec![false; from],
            purged: vec![false; 2 * from],
        }
    }

    /// The placement this state implies.
    #[must_use]
    pub fn placement(&self) -> Placement {
        match self.state {
            State::Resharding => Placement {
                base: self.from.max(1),
                split: self.split.clone(),
            },
            State::Done => Placement::plain(2 * self.from),
            State::Aborted => Placement::plain(self.from),
        }
    }

    /// True when the pair of old shard `i` split.
    #[must_use]
    pub fn is_split(&self, shard: usize) -> bool {
        let old = if shard >= self.from {
            shard - self.from
        } else {
            shard
        };
        self.split.get(old).copied().unwrap_or(false)
    }
}

/// Why the stored layout could not be read or written.
#[derive(Debug)]
pub struct LayoutError(pub String);

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LayoutError {}

/// The placement in force and the stored reshard state of this process.
#[derive(Debug)]
pub struct Layout {
    placement: ArcSwap<Placement>,
    stored: Mutex<Option<Stored>>,
    /// `layout.json`; `None`: nothing is persisted (unit tests).
    path: Option<PathBuf>,
}

impl Layout {
    /// `% shards` placement, persisted nowhere (unit tests, tools).
    #[must_use]
    pub fn fixed(shards: usize) -> Self {
        Self::new(Placement::plain(shards), None, None)
    }

    /// The layout of a process whose data directory is `dir`: `stored` (read
    /// with [`read_stored`]) when there is one, else `% shards`.
    #[must_use]
    pub fn open(dir: &Path, shards: usize, stored: Option<Stored>) -> Self {
        let placement = stored
            .as_ref()
            .map_or_else(|| Placement::plain(shards), Stored::placement);
        Self::new(placement, stored, Some(dir.join(FILE_NAME)))
    }

    fn new(placement: Placement, stored: Option<Stored>, path: Option<PathBuf>) -> Self {
        Self {
            placement: ArcSwap::from_pointee(placement),
            stored: Mutex::new(stored),
            path,
        }
    }

    /// The shard that owns `key` now.
    #[must_use]
    pub fn owner(&self, key: &[u8]) -> usize {
        self.placement.load().owner(key)
    }

    /// The shard that owns `key` now and whether a reshard is under way,
    /// from one read of the placement.
    #[must_use]
    pub fn owner_and_resharding(&self, key: &[u8]) -> (usize, bool) {
        let p = self.placement.load();
        (p.owner(key), p.resharding())
    }

    /// True while a reshard is under way (one atomic load).
    #[must_use]
    pub fn resharding(&self) -> bool {
        self.placement.load().resharding()
    }

    /// The placement in force.
    #[must_use]
    pub fn placement(&self) -> Arc<Placement> {
        self.placement.load_full()
    }

    /// The stored reshard state, if any.
    #[must_use]
    pub fn stored(&self) -> Option<Stored> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Stored>> {
        self.stored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the stored state with `change` (which returns whether it
    /// changed anything), persists it, then publishes its placement.
    ///
    /// # Errors
    /// The file could not be written; nothing changed then.
    pub fn update(
        &self,
        change: impl FnOnce(&mut Option<Stored>) -> Result<bool, LayoutError>,
    ) -> Result<(), LayoutError> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        if !change(&mut next)? {
            return Ok(());
        }
        if let (Some(path), Some(s)) = (&self.path, &next) {
            write_stored(path, s)?;
        }
        if let Some(s) = &next {
            self.placement.store(Arc::new(s.placement()));
        }
        *guard = next;
        Ok(())
    }

    /// Records that old shard `i`'s keys moved to `i + from` (idempotent).
    ///
    /// # Errors
    /// No reshard is under way, or the file could not be written.
    pub fn set_split(&self, shard: usize) -> Result<(), LayoutError> {
        self.update(|s| match s {
            Some(s) if s.state == State::Resharding && shard < s.from => {
                let changed = !s.split[shard];
                s.split[shard] = true;
                Ok(changed)
            }
            Some(s) if s.state == State::Done && shard < s.from => Ok(false),
            _ => Err(LayoutError(format!(
                "shard {shard} cannot split: no reshard is under way"
            ))),
        })
    }

    /// Records that `shard` (of the new layout) holds only keys it owns.
    ///
    /// # Errors
    /// The file could not be written.
    pub fn set_purged(&self, shard: usize) -> Result<(), LayoutError> {
        self.update(|s| match s {
            Some(s) if s.state == State::Resharding && shard < s.purged.len() => {
                let changed = !s.purged[shard];
                s.purged[shard] = true;
                Ok(changed)
            }
            _ => Ok(false),
        })
    }
}

/// Reads `<dir>/layout.json`; `None` when there is none.
///
/// # Errors
/// The file exists but cannot be read or parsed.
pub fn read_stored(dir: &Path) -> Result<Option<Stored>, LayoutError> {
    let path = dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LayoutError(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LayoutError(format!("{}: {e}", path.display()))),
    }
}

/// Writes `stored` to `path` atomically and durably.
fn write_stored(path: &Path, stored: &Stored) -> Result<(), LayoutError> {
    let fail = |e: std::io::Error| LayoutError(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(stored).map_err(|e| LayoutError(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(&bytes).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::shard_for;

    #[test]
    fn placement_moves_keys_of_split_shards_only_to_i_or_i_plus_n() {
        let mut p = Placement {
            base: 3,
            split: vec![false, true, false],
        };
        for i in 0..2000 {
            let key = format!("k{i}");
            let old = shard_for(key.as_bytes(), 3);
            let new = shard_for(key.as_bytes(), 6);
            let want = if old == 1 { new } else { old };
            assert_eq!(p.owner(key.as_bytes()), want, "{key}");
            assert!(new == old || new == old + 3);
        }
        assert_eq!(p.shards(), 3);
        let copies: Vec<_> = (0..7).map(|s| p.copies(s)).collect();
        assert_eq!(copies, [None, None, None, Some(0), None, Some(2), None]);
        p.split = vec![true; 3];
        assert!((0..6).all(|s| p.copies(s).is_none()));
        assert_eq!(p.shards(), 6);
        for i in 0..500 {
            let key = format!("k{i}");
            assert_eq!(p.owner(key.as_bytes()), shard_for(key.as_bytes(), 6));
        }
    }

    #[test]
    fn stored_state_survives_a_reopen_and_drives_placement() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path(), 2, None);
        assert!(read_stored(dir.path()).unwrap().is_none());
        assert!(layout.set_split(0).is_err(), "no reshard under way");
        layout
            .update(|s| {
                *s = Some(Stored::begin("x".into(), 2));
                Ok(true)
            })
            .unwrap();
        layout.set_split(1).unwrap();
        let again = read_stored(dir.path()).unwrap().unwrap();
        assert_eq!(again.split, vec![false, true]);
        let reopened = Layout::open(dir.path(), 2, Some(again));
        for i in 0..300 {
            let key = format!("key{i}");
            assert_eq!(reopened.owner(key.as_bytes()), layout.owner(key.as_bytes()));
        }
        assert!(reopened.placement().resharding());
    }
}
