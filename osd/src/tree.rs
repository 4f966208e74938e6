//! The hash tree of a stored chunk: the BLAKE3 chaining values of its
//! [`PIECE`]-sized pieces. Stored beside the chunk, they let a read of a
//! few KiB hash only the pieces it returns (and combine the stored values
//! into the chunk's id) instead of hashing the whole chunk.
//!
//! The pieces are whole BLAKE3 subtrees, so the values combine exactly
//! as BLAKE3 itself does: a chunk's tree root is its ordinary
//! `blake3::hash`.

use blake3::hazmat::{self, ChainingValue, HasherExt, Mode};

use crate::extents::ChunkId;

/// The bytes one stored chaining value covers: a power-of-two number of
/// BLAKE3 chunks, large enough to keep its SIMD lanes full.
pub const PIECE: usize = 8 * 1024;
/// The size of one stored chaining value.
pub const VALUE_LEN: usize = 32;

/// How many pieces a chunk of `len` bytes has a stored value for: none
/// when the chunk is one piece (it is hashed whole).
pub fn pieces(len: usize) -> usize {
    if len <= PIECE { 0 } else { len.div_ceil(PIECE) }
}

/// The bytes of the stored tree of a chunk of `len` bytes.
pub fn tree_len(len: usize) -> usize {
    pieces(len) * VALUE_LEN
}

/// The chaining values of `bytes`' pieces, one after another (empty for a
/// chunk of one piece).
pub fn build(bytes: &[u8]) -> Vec<u8> {
    if pieces(bytes.len()) == 0 {
        return Vec::new();
    }
    bytes
        .chunks(PIECE)
        .enumerate()
        .flat_map(|(index, piece)| piece_value(index, piece))
        .collect()
}

/// The chaining value of piece `index`.
fn piece_value(index: usize, piece: &[u8]) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset((index * PIECE) as u64)
        .update(piece)
        .finalize_non_root()
}

/// The id of a chunk of `len` bytes (more than one piece) whose pieces
/// have the values in `tree`; `None` if `tree` is not that long.
pub fn root(tree: &[u8], len: usize) -> Option<ChunkId> {
    if pieces(len) < 2 || tree.len() != tree_len(len) {
        return None;
    }
    let left = hazmat::left_subtree_len(len as u64) as usize;
    let root = hazmat::merge_subtrees_root(
        &subtree(tree, 0, left),
        &subtree(tree, left, len - left),
        Mode::Hash,
    );
    Some(*root.as_bytes())
}

/// The chaining value of the subtree of `len` bytes at `offset` (a
/// multiple of [`PIECE`]) from the piece values under it.
fn subtree(tree: &[u8], offset: usize, len: usize) -> ChainingValue {
    if len <= PIECE {
        let at = offset / PIECE * VALUE_LEN;
        return tree[at..at + VALUE_LEN].try_into().expect("32 bytes");
    }
    let left = hazmat::left_subtree_len(len as u64) as usize;
    hazmat::merge_subtrees_non_root(
        &subtree(tree, offset, left),
        &subtree(tree, offset + left, len - left),
        Mode::Hash,
    )
}

/// Whether `bytes` are exactly the pieces `first..` of a chunk whose tree
/// is `tree` (the tree itself already checked against the chunk's id).
pub fn pieces_match(tree: &[u8], first: usize, bytes: &[u8]) -> bool {
    bytes.chunks(PIECE).enumerate().all(|(n, piece)| {
        let index = first + n;
        let at = index * VALUE_LEN;
        tree.get(at..at + VALUE_LEN) == Some(&piece_value(index, piece)[..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_root_of_the_piece_values_is_the_chunks_blake3_hash() {
        for len in [
            PIECE + 1,
            2 * PIECE,
            2 * PIECE + 1,
            3 * PIECE - 7,
            5 * PIECE,
            7 * PIECE + 1024,
            8 * PIECE,
            64 * 1024 - 1,
        ] {
            let data = bytes(len);
            let tree = build(&data);
            assert_eq!(tree.len(), tree_len(len));
            assert_eq!(
                root(&tree, len),
                Some(*blake3::hash(&data).as_bytes()),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn a_chunk_of_one_piece_has_no_tree() {
        assert!(build(&bytes(PIECE)).is_empty());
        assert_eq!(root(&[], PIECE), None);
    }

    #[test]
    fn a_changed_value_or_piece_no_longer_matches() {
        let data = bytes(5 * PIECE + 100);
        let tree = build(&data);
        let id = root(&tree, data.len()).unwrap();
        let mut bad_tree = tree.clone();
        bad_tree[3 * VALUE_LEN + 5] ^= 1;
        assert_ne!(root(&bad_tree, data.len()), Some(id));
        assert_eq!(root(&tree[1..], data.len()), None, "a short tree");

        let pieces = &data[2 * PIECE..4 * PIECE];
        assert!(pieces_match(&tree, 2, pieces));
        assert!(!pieces_match(&tree, 1, pieces), "values of other pieces");
        let mut bad = pieces.to_vec();
        bad[PIECE + 9] ^= 1;
        assert!(!pieces_match(&tree, 2, &bad));
        assert!(
            pieces_match(&tree, 5, &data[5 * PIECE..]),
            "the short last piece"
        );
    }
}
