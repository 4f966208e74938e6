//! Verified hash trees of chunks, kept in memory by chunk id, so a small
//! read of a chunk in a segment file reads only the pieces it returns, not
//! the chunk's stored tree before them as well.
//!
//! A chunk id is the BLAKE3 hash of the chunk's bytes, and its tree is a
//! function of those bytes: an entry can never go stale, whatever moves or
//! rewrites the chunk (compaction, deletes, a new write of the same bytes).
//! Only trees whose root matched the id go in, each with the chunk length
//! it was checked for. Whole-chunk reads (scrub, recovery) do not use it:
//! they read the stored tree, so damage to it is still found.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::extents::ChunkId;

/// The most trees one store keeps (a 64 KiB chunk's is 256 bytes: about
/// 12 MiB at most, for the trees of 2 GiB of chunks read in small pieces).
pub const MAX_CACHED_TREES: usize = 32 * 1024;

/// The trees, shared by every read of one content store.
#[derive(Debug, Default)]
pub struct TreeCache {
    trees: Mutex<HashMap<ChunkId, CachedTree>>,
}

#[derive(Debug)]
struct CachedTree {
    chunk_len: usize,
    values: Arc<[u8]>,
}

impl TreeCache {
    /// The tree of chunk `id` checked for a chunk of `chunk_len` bytes, if
    /// one is kept.
    pub fn get(&self, id: &ChunkId, chunk_len: usize) -> Option<Arc<[u8]>> {
        let trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        trees
            .get(id)
            .filter(|tree| tree.chunk_len == chunk_len)
            .map(|tree| tree.values.clone())
    }

    /// Keeps `values`, the tree of chunk `id` of `chunk_len` bytes, which
    /// the caller checked against `id`. A full cache starts afresh.
    pub fn insert(&self, id: ChunkId, chunk_len: usize, values: Arc<[u8]>) {
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        if trees.len() >= MAX_CACHED_TREES {
            trees.clear();
        }
        trees.insert(id, CachedTree { chunk_len, values });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.trees.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_found_only_for_the_length_it_was_checked_for() {
        let cache = TreeCache::default();
        let values: Arc<[u8]> = Arc::from(vec![7u8; 64]);
        cache.insert([1; 32], 20_000, values.clone());
        assert_eq!(cache.get(&[1; 32], 20_000).as_deref(), Some(&values[..]));
        assert!(cache.get(&[1; 32], 20_001).is_none());
        assert!(cache.get(&[2; 32], 20_000).is_none());
    }

    #[test]
    fn a_full_cache_starts_afresh_and_keeps_the_new_tree() {
        let cache = TreeCache::default();
        let values: Arc<[u8]> = Arc::from(vec![0u8; 64]);
        for i in 0..MAX_CACHED_TREES as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(id, 20_000, values.clone());
        }
        assert_eq!(cache.len(), MAX_CACHED_TREES);
        cache.insert([0xff; 32], 20_000, values);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&[0xff; 32], 20_000).is_some());
    }
}
