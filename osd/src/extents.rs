//! The extent map of one object: which byte ranges hold data, and where
//! that data is (a range of a stored content chunk). Ranges not covered
//! are holes and read as zeros. Pure: the store loads the extents an
//! operation touches, applies it here and writes back the difference, and
//! the [`RefChange`] each operation returns keeps content reference counts
//! right.

use std::collections::BTreeMap;

/// The BLAKE3 hash naming a content chunk.
pub type ChunkId = [u8; 32];

/// `len` bytes of the object at `offset`, stored at `chunk_offset` in
/// chunk `chunk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub chunk: ChunkId,
    pub chunk_offset: u64,
}

impl Extent {
    fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// The part of this extent inside `[start, end)`, if any.
    fn clip(&self, start: u64, end: u64) -> Option<Extent> {
        let from = self.offset.max(start);
        let to = self.end().min(end);
        (from < to).then(|| Extent {
            offset: from,
            len: to - from,
            chunk: self.chunk,
            chunk_offset: self.chunk_offset + (from - self.offset),
        })
    }
}

/// How an operation changed which chunks are referenced: one entry per
/// extent that now points at a chunk, or no longer does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RefChange {
    pub added: Vec<ChunkId>,
    pub removed: Vec<ChunkId>,
}

impl RefChange {
    /// The same change with what cancels out taken away: a write inside an
    /// extent removes its chunk once and adds it back for each piece left
    /// on either side, a net gain of at most one reference.
    pub fn netted(self) -> RefChange {
        let mut net: std::collections::BTreeMap<ChunkId, i64> = Default::default();
        for id in self.added {
            *net.entry(id).or_default() += 1;
        }
        for id in self.removed {
            *net.entry(id).or_default() -= 1;
        }
        let mut netted = RefChange::default();
        for (id, count) in net {
            let side = if count > 0 {
                &mut netted.added
            } else {
                &mut netted.removed
            };
            side.extend(std::iter::repeat_n(id, count.unsigned_abs() as usize));
        }
        netted
    }
}

/// A piece of a read: data from a chunk, or a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPiece {
    Hole {
        len: u64,
    },
    Data {
        chunk: ChunkId,
        chunk_offset: u64,
        len: u64,
    },
}

/// Non-overlapping extents by offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentMap {
    extents: BTreeMap<u64, Extent>,
}

impl ExtentMap {
    /// A map of `extents`, which must not overlap (as stored ones never do).
    pub fn from_extents(extents: impl IntoIterator<Item = Extent>) -> ExtentMap {
        ExtentMap {
            extents: extents.into_iter().map(|e| (e.offset, e)).collect(),
        }
    }

    pub fn extents(&self) -> impl Iterator<Item = &Extent> {
        self.extents.values()
    }

    /// The extents overlapping `[start, end)`.
    fn overlapping(&self, start: u64, end: u64) -> Vec<Extent> {
        let first = self
            .extents
            .range(..=start)
            .next_back()
            .filter(|(_, e)| e.end() > start)
            .map(|(&offset, _)| offset)
            .unwrap_or(start);
        self.extents
            .range(first..end)
            .map(|(_, e)| *e)
            .filter(|e| e.end() > start)
            .collect()
    }

    /// Leaves `[start, end)` a hole, trimming or splitting what covered it.
    pub fn clear(&mut self, start: u64, end: u64) -> RefChange {
        let mut change = RefChange::default();
        if start >= end {
            return change;
        }
        for old in self.overlapping(start, end) {
            self.extents.remove(&old.offset);
            change.removed.push(old.chunk);
            for kept in [old.clip(0, start), old.clip(end, u64::MAX)]
                .into_iter()
                .flatten()
            {
                self.extents.insert(kept.offset, kept);
                change.added.push(kept.chunk);
            }
        }
        change
    }

    /// Points `[extent.offset, extent.end())` at `extent`'s chunk range.
    pub fn write(&mut self, extent: Extent) -> RefChange {
        let mut change = self.clear(extent.offset, extent.end());
        if extent.len > 0 {
            self.extents.insert(extent.offset, extent);
            change.added.push(extent.chunk);
        }
        change
    }

    /// Drops everything at or beyond `size`.
    pub fn truncate(&mut self, size: u64) -> RefChange {
        self.clear(size, u64::MAX)
    }

    /// How to assemble `[offset, offset + len)`: data pieces and holes, in
    /// order, exactly covering the range.
    pub fn read(&self, offset: u64, len: u64) -> Vec<ReadPiece> {
        let end = offset.saturating_add(len);
        let mut pieces = Vec::new();
        let mut at = offset;
        for extent in self.overlapping(offset, end) {
            let Some(part) = extent.clip(offset, end) else {
                continue;
            };
            if part.offset > at {
                pieces.push(ReadPiece::Hole {
                    len: part.offset - at,
                });
            }
            pieces.push(ReadPiece::Data {
                chunk: part.chunk,
                chunk_offset: part.chunk_offset,
                len: part.len,
            });
            at = part.end();
        }
        if at < end {
            pieces.push(ReadPiece::Hole { len: end - at });
        }
        pieces
    }

    /// The first data byte at or after `offset` (SEEK_DATA), if any.
    pub fn next_data(&self, offset: u64) -> Option<u64> {
        self.overlapping(offset, u64::MAX)
            .first()
            .map(|e| e.offset.max(offset))
    }
}
