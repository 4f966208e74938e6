//! The extent map against a byte-array model: after any sequence of writes,
//! punches and truncations, every read assembles exactly the model's bytes,
//! and the reference changes reported add up to the references the map
//! holds.

use std::collections::HashMap;

use aspen_osd::extents::{ChunkId, Extent, ExtentMap, ReadPiece};
use proptest::prelude::*;

const SPAN: u64 = 400;

fn chunk(n: u8) -> ChunkId {
    [n; 32]
}

/// The byte at `position` of synthetic chunk `n` (never 0, so holes show).
fn chunk_byte(n: u8, position: u64) -> u8 {
    ((u64::from(n) * 31 + position * 7) % 251 + 1) as u8
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: u64,
        len: u64,
        chunk_offset: u64,
    },
    Punch {
        start: u64,
        len: u64,
    },
    Truncate {
        size: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..300u64, 0..100u64, 0..50u64)
            .prop_map(|(offset, len, chunk_offset)| Op::Write { offset, len, chunk_offset }),
        1 => (0..300u64, 0..100u64).prop_map(|(start, len)| Op::Punch { start, len }),
        1 => (0..SPAN).prop_map(|size| Op::Truncate { size }),
    ]
}

fn assemble(map: &ExtentMap, offset: u64, len: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for piece in map.read(offset, len) {
        match piece {
            ReadPiece::Hole { len } => bytes.extend(std::iter::repeat_n(0, len as usize)),
            ReadPiece::Data {
                chunk,
                chunk_offset,
                len,
            } => bytes.extend((0..len).map(|k| chunk_byte(chunk[0], chunk_offset + k))),
        }
    }
    bytes
}

proptest! {
    #[test]
    fn reads_match_the_model_and_references_add_up(
        ops in proptest::collection::vec(op(), 1..40),
        reads in proptest::collection::vec((0..SPAN, 0..SPAN), 1..8),
    ) {
        let mut map = ExtentMap::default();
        let mut model = vec![0u8; SPAN as usize * 2];
        let mut refs: HashMap<ChunkId, i64> = HashMap::new();
        for (n, op) in ops.iter().enumerate() {
            let change = match *op {
                Op::Write { offset, len, chunk_offset } => {
                    let id = n as u8 + 1;
                    for k in 0..len {
                        model[(offset + k) as usize] = chunk_byte(id, chunk_offset + k);
                    }
                    map.write(Extent { offset, len, chunk: chunk(id), chunk_offset })
                }
                Op::Punch { start, len } => {
                    model[start as usize..(start + len) as usize].fill(0);
                    map.clear(start, start + len)
                }
                Op::Truncate { size } => {
                    model[size as usize..].fill(0);
                    map.truncate(size)
                }
            };
            let mut raw: HashMap<ChunkId, i64> = HashMap::new();
            for id in &change.added {
                *raw.entry(*id).or_default() += 1;
            }
            for id in &change.removed {
                *raw.entry(*id).or_default() -= 1;
            }
            raw.retain(|_, count| *count != 0);
            let netted = change.netted();
            prop_assert!(
                netted.added.iter().all(|id| !netted.removed.contains(id)),
                "a netted change names a chunk on both sides"
            );
            let mut net: HashMap<ChunkId, i64> = HashMap::new();
            for id in netted.added {
                *net.entry(id).or_default() += 1;
            }
            for id in netted.removed {
                *net.entry(id).or_default() -= 1;
            }
            prop_assert_eq!(&net, &raw, "netting changes the counts");
            for (id, count) in net {
                *refs.entry(id).or_default() += count;
            }
        }
        for (offset, len) in reads {
            let want = &model[offset as usize..(offset + len) as usize];
            prop_assert_eq!(assemble(&map, offset, len), want.to_vec());
        }
        let mut held: HashMap<ChunkId, i64> = HashMap::new();
        for extent in map.extents() {
            *held.entry(extent.chunk).or_default() += 1;
        }
        refs.retain(|_, count| *count != 0);
        prop_assert_eq!(refs, held);
        let mut last_end = 0;
        for extent in map.extents() {
            prop_assert!(extent.offset >= last_end, "extents overlap");
            prop_assert!(extent.len > 0);
            last_end = extent.offset + extent.len;
        }
    }
}

#[test]
fn seek_data_finds_the_next_extent() {
    let mut map = ExtentMap::default();
    map.write(Extent {
        offset: 100,
        len: 10,
        chunk: chunk(1),
        chunk_offset: 0,
    });
    assert_eq!(map.next_data(0), Some(100));
    assert_eq!(map.next_data(105), Some(105));
    assert_eq!(map.next_data(110), None);
}
