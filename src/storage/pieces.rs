//! Large entries stored in page-sized pieces: the space layout of
//! `storage` for values and log records that do not fit a 4 KiB page.
//!
//! redb gives an entry larger than a page a page of its own whose size is a
//! power of two: a 64 KiB value plus its key and seq took a 128 KiB page, so
//! half of every such page was empty (measured: 2.0x the logical bytes for
//! 64 KiB values, before any copy-on-write or log). [`split`] cuts such an
//! entry instead: each piece but the last fills the largest power-of-two
//! page it can fill completely (less redb's leaf overhead, [`LEAF_OVERHEAD`]),
//! and the last one, smaller than a 4 KiB page, shares a leaf with other
//! small entries. The first piece stays in the main entry after a header
//! that says the entry is in pieces and how long it is; piece `i >= 1` is an
//! entry of a chunk table under `base key ++ i` (u32 big-endian). Keys of
//! different lengths never collide there, and pieces are always found,
//! read and removed by their exact key, never by a range.
//!
//! Depends on redb only (called by `storage` with its tables).

use super::StorageError;
use redb::{ReadableTable, Table};

/// Entries up to this size (with key and overhead) are stored whole.
pub(super) const MIN_PAGE: usize = 4096;
/// Largest page a piece fills.
const MAX_PAGE: usize = 1 << 20;
/// Bytes of a leaf page a single entry cannot use: redb 4 writes a 4-byte
/// page header and a 4-byte end offset for a variable-length key and one
/// for the value (measured: 12 bytes); 16 leaves room.
pub(super) const LEAF_OVERHEAD: usize = 16;

/// Sizes of the pieces a blob of `len` bytes is stored in. Piece 0 shares
/// its entry with `first_extra` other bytes (its key and the header), the
/// others with `later_extra` (their chunk key). One piece: store it whole.
pub(super) fn split(len: usize, first_extra: usize, later_extra: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = len;
    loop {
        let extra = LEAF_OVERHEAD
            + if sizes.is_empty() {
                first_extra
            } else {
                later_extra
            };
        if left + extra <= MIN_PAGE {
            // Small: shares a leaf with other small entries.
            sizes.push(left);
            return sizes;
        }
        // The largest page this piece can fill completely.
        let mut page = MAX_PAGE;
        while page > MIN_PAGE && page.saturating_sub(extra) > left {
            page /= 2;
        }
        let cap = page.saturating_sub(extra);
        if cap == 0 || cap > left {
            // A key too large for a small page: the rest in one entry.
            sizes.push(left);
            return sizes;
        }
        sizes.push(cap);
        left -= cap;
        if left == 0 {
            return sizes;
        }
    }
}

/// The chunk-table key of piece `idx` of the entry under `base`.
pub(super) fn chunk_key(base: &[u8], idx: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(base.len() + 4);
    k.extend_from_slice(base);
    k.extend_from_slice(&idx.to_be_bytes());
    k
}

/// Stores pieces 1.. of `blob` (cut as `sizes` says) under `base`.
pub(super) fn put(
    chunks: &mut Table<&[u8], &[u8]>,
    base: &[u8],
    sizes: &[usize],
    blob: &[u8],
) -> Result<(), StorageError> {
    let mut at = sizes.first().copied().unwrap_or(0);
    for (i, &n) in sizes.iter().enumerate().skip(1) {
        let idx = u32::try_from(i).map_err(|_| StorageError::Corrupt("piece count"))?;
        chunks.insert(chunk_key(base, idx).as_slice(), &blob[at..at + n])?;
        at += n;
    }
    Ok(())
}

/// Removes pieces 1.. of an entry of `len` bytes under `base` whose first
/// piece held `first` bytes.
pub(super) fn remove(
    chunks: &mut Table<&[u8], &[u8]>,
    base: &[u8],
    len: usize,
    first: usize,
) -> Result<(), StorageError> {
    let mut left = len.saturating_sub(first);
    let mut idx = 1u32;
    while left > 0 {
        let got = chunks
            .remove(chunk_key(base, idx).as_slice())?
            .map(|g| g.value().len());
        match got {
            Some(n) if n > 0 => left = left.saturating_sub(n),
            _ => return Err(StorageError::Corrupt("missing piece of a stored entry")),
        }
        idx += 1;
    }
    Ok(())
}

/// The whole entry of `len` bytes under `base` whose first piece is `first`.
pub(super) fn read(
    chunks: &impl ReadableTable<&'static [u8], &'static [u8]>,
    base: &[u8],
    len: usize,
    first: &[u8],
) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(first);
    let mut idx = 1u32;
    while out.len() < len {
        let piece = chunks
            .get(chunk_key(base, idx).as_slice())?
            .ok_or(StorageError::Corrupt("missing piece of a stored entry"))?;
        let piece = piece.value();
        if piece.is_empty() {
            return Err(StorageError::Corrupt("empty piece of a stored entry"));
        }
        out.extend_from_slice(piece);
        idx += 1;
    }
    if out.len() != len {
        return Err(StorageError::Corrupt(
            "stored entry longer than its header says",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_fill_pages_and_add_up() {
        // A 64 KiB value under a short key: one 64 KiB page and a tail.
        let s = split(65536, 5 + 16, 5 + 4);
        assert_eq!(s.iter().sum::<usize>(), 65536);
        assert_eq!(s[0], 65536 - 5 - 16 - LEAF_OVERHEAD);
        assert_eq!(s.len(), 2);
        // Small entries stay whole.
        assert_eq!(split(100, 21, 9), vec![100]);
        assert_eq!(split(0, 21, 9), vec![0]);
        for len in [4000, 4096, 5000, 70_000, 1 << 20, 3 << 20, 8 << 20] {
            for key in [1, 100, 8192] {
                let s = split(len, key + 16, key + 4);
                assert_eq!(s.iter().sum::<usize>(), len, "{len} {key}");
                assert!(s.iter().all(|&n| n > 0 || len == 0), "{len} {key}: {s:?}");
            }
        }
    }
}
