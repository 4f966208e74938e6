//! The local object store on a real directory: reads match a byte-array
//! model after any sequence of writes, truncations, punches and deletes;
//! everything survives reopening; damaged content is an error, never
//! returned; space from overwritten data comes back.

use aspen_osd::content::COMPACT_STEP_BYTES;
use aspen_osd::store::{ObjectKey, ObjectStore, StoreError};
use aspen_placement::{PgId, PoolId};
use proptest::prelude::*;

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        pg: PgId {
            pool: PoolId(1),
            seed: 7,
        },
        name: name.as_bytes().to_vec(),
    }
}

/// Bytes that differ by position and by write (no period, so chunks of
/// one write do not deduplicate), never 0 so holes show.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 29) as u8 ^ seed) | 1)
        .collect()
}

#[test]
fn writes_reads_holes_truncation_and_punches() {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(dir.path()).unwrap();
    let k = key("1000.00000000");
    assert!(matches!(store.read(&k, 0, 10), Err(StoreError::NotFound)));
    let first = store.write(&k, 100_000, &pattern(1, 200_000)).unwrap();
    assert_eq!((first.size, first.version), (300_000, 1));
    let bytes = store.read(&k, 0, 400_000).unwrap();
    assert_eq!(bytes.len(), 300_000, "reads stop at the size");
    assert!(
        bytes[..100_000].iter().all(|b| *b == 0),
        "a hole reads as zeros"
    );
    assert_eq!(&bytes[100_000..], &pattern(1, 200_000)[..]);
    store.write(&k, 150_000, &pattern(2, 10)).unwrap();
    assert_eq!(store.read(&k, 150_000, 10).unwrap(), pattern(2, 10));
    assert_eq!(
        store.read(&k, 149_999, 1).unwrap(),
        vec![pattern(1, 50_000)[49_999]]
    );
    store.zero(&k, 200_000, 1_000).unwrap();
    assert_eq!(store.read(&k, 200_000, 1_000).unwrap(), vec![0; 1_000]);
    let truncated = store.truncate(&k, 120_000).unwrap();
    assert_eq!(truncated.size, 120_000);
    store.truncate(&k, 130_000).unwrap();
    assert_eq!(
        store.read(&k, 119_990, 20).unwrap(),
        [&pattern(1, 20_000)[19_990..], &[0; 10][..]].concat(),
        "a truncated tail does not come back when the object grows"
    );
    assert_eq!(store.stat(&k).unwrap().unwrap().version, 5);
    store.write(&key("other"), 0, b"x").unwrap();
    assert_eq!(
        store
            .list(PgId {
                pool: PoolId(1),
                seed: 7
            })
            .unwrap(),
        vec![b"1000.00000000".to_vec(), b"other".to_vec()]
    );
    store.set_attr(&k, b"layout", b"4M").unwrap();
    assert_eq!(store.get_attr(&k, b"layout").unwrap(), b"4M".to_vec());
    assert!(matches!(
        store.get_attr(&k, b"nope"),
        Err(StoreError::NoAttr)
    ));
    store.delete(&k).unwrap();
    assert!(store.stat(&k).unwrap().is_none());
    assert!(matches!(store.delete(&k), Err(StoreError::NotFound)));
    assert!(matches!(
        store.write(&key(""), 0, b"x"),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.write(&k, u64::MAX - 1, b"xy"),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn objects_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("persist");
    {
        let store = ObjectStore::open(dir.path()).unwrap();
        store.write(&k, 0, &pattern(3, 300_000)).unwrap();
        store.write(&k, 1_000, &pattern(4, 5_000)).unwrap();
    }
    let store = ObjectStore::open(dir.path()).unwrap();
    let mut want = pattern(3, 300_000);
    want[1_000..6_000].copy_from_slice(&pattern(4, 5_000));
    assert_eq!(store.read(&k, 0, 300_000).unwrap(), want);
    // Writing after reopening goes to a new segment; both read back.
    store.write(&k, 299_000, &pattern(5, 2_000)).unwrap();
    assert_eq!(store.read(&k, 299_000, 2_000).unwrap(), pattern(5, 2_000));
}

#[test]
fn inline_bytes_of_the_old_layout_move_to_their_own_table() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("small");
    {
        let store = ObjectStore::open(dir.path()).unwrap();
        store.write(&k, 0, &pattern(10, 4096)).unwrap();
    }
    // Put the store back in the layout where the chunk index held the
    // inline bytes.
    {
        let db = rusqlite::Connection::open(dir.path().join("objects.db")).unwrap();
        db.execute_batch(
            "ALTER TABLE chunks ADD COLUMN data BLOB;
             UPDATE chunks SET data = (SELECT data FROM inline_chunks i WHERE i.row = chunks.offset),
                 offset = 0;
             DROP TABLE inline_chunks;
             DROP TABLE inline_usage;",
        )
        .unwrap();
    }
    let store = ObjectStore::open(dir.path()).unwrap();
    assert_eq!(store.read(&k, 0, 4096).unwrap(), pattern(10, 4096));
    assert_eq!(store.used_bytes().unwrap(), 4096);
    store.write(&k, 0, &pattern(12, 4096)).unwrap();
    assert_eq!(store.used_bytes().unwrap(), 8192);
    store.collect_garbage().unwrap();
    assert_eq!(store.read(&k, 0, 4096).unwrap(), pattern(12, 4096));
    assert_eq!(
        store.used_bytes().unwrap(),
        4096,
        "the overwritten chunk's bytes are no longer counted"
    );
}

#[test]
fn small_chunks_of_a_small_write_are_stored_inline_the_rest_in_a_segment() {
    use aspen_osd::content::INLINE_CHUNK_MAX;
    use aspen_osd::tree::tree_len;
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(dir.path()).unwrap();
    let (small, one_chunk, large) = (key("small"), key("one_chunk"), key("large"));
    store
        .write(&small, 0, &pattern(13, INLINE_CHUNK_MAX))
        .unwrap();
    store.write(&one_chunk, 0, &pattern(16, 64 << 10)).unwrap();
    store
        .write(&large, 0, &pattern(14, (64 << 10) + 1))
        .unwrap();
    assert!(!store.segment_of(&small).unwrap().exists());
    assert!(
        store.segment_of(&one_chunk).unwrap().exists(),
        "a chunk over the inline limit goes to a segment, even in a small write"
    );
    assert!(store.segment_of(&large).unwrap().exists());
    assert_eq!(
        store.read(&small, 0, 64 << 10).unwrap(),
        pattern(13, INLINE_CHUNK_MAX)
    );
    assert_eq!(
        store.read(&one_chunk, 0, 64 << 10).unwrap(),
        pattern(16, 64 << 10)
    );
    // The segment also holds the hash tree of each chunk it keeps.
    let in_segments = (128 << 10) + 1 + 2 * tree_len(64 << 10) + tree_len(1);
    assert_eq!(
        store.used_bytes().unwrap(),
        (INLINE_CHUNK_MAX + in_segments) as u64
    );
}

#[test]
fn the_database_log_is_checkpointed_by_its_length_not_only_by_commits() {
    use aspen_osd::store::CHECKPOINT_EVERY_LOG_BYTES;
    use aspen_proto::osd::{LogEntry, LogVersion, MAX_WRITE_EXTENTS, ObjectOp};
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(dir.path()).unwrap();
    let file_len = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
    // Scattered 24-byte pieces: their bytes go to a segment, their index
    // rows (thousands per write) fill the log; far fewer commits than
    // CHECKPOINT_EVERY_COMMITS.
    let piece = 24usize;
    let extents: Vec<(u64, u64)> = (0..MAX_WRITE_EXTENTS as u64)
        .map(|i| (i * 64, piece as u64))
        .collect();
    let mut writes = 0;
    while file_len("objects.db") < (1 << 20) && writes < 1000 {
        writes += 1;
        let k = key(&format!("scattered.{writes}"));
        let body: Vec<u8> = (0..MAX_WRITE_EXTENTS)
            .flat_map(|i| {
                let mut bytes = [0u8; 24];
                bytes[..8].copy_from_slice(&(writes as u64).to_le_bytes());
                bytes[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                bytes
            })
            .collect();
        let entry = LogEntry {
            at: LogVersion {
                epoch: 1,
                version: writes as u64,
            },
            object: k.name.clone(),
            op: ObjectOp::WriteExtents {
                extents: extents.clone(),
            },
        };
        store.apply_logged(&k, &entry, &body).unwrap();
        assert!(
            file_len("objects.db-wal") <= CHECKPOINT_EVERY_LOG_BYTES + (16 << 20),
            "the log grew to {} bytes after {writes} writes",
            file_len("objects.db-wal")
        );
    }
    assert!(
        file_len("objects.db") >= 1 << 20,
        "no checkpoint after {writes} writes"
    );
}

#[test]
fn a_large_write_of_small_scattered_pieces_goes_to_a_segment_whole() {
    use aspen_proto::osd::{LogEntry, LogVersion, ObjectOp};
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(dir.path()).unwrap();
    let k = key("scattered");
    let piece = 4096u64;
    let extents: Vec<(u64, u64)> = (0..20).map(|i| (i * 3 * piece, piece)).collect();
    let body = pattern(15, 20 * piece as usize);
    let entry = LogEntry {
        at: LogVersion {
            epoch: 1,
            version: 1,
        },
        object: k.name.clone(),
        op: ObjectOp::WriteExtents {
            extents: extents.clone(),
        },
    };
    store.apply_logged(&k, &entry, &body).unwrap();
    assert!(
        store.segment_of(&k).unwrap().exists(),
        "4 KiB pieces of an 80 KiB write are in a segment, not inline"
    );
    for (index, (offset, len)) in extents.into_iter().enumerate() {
        let start = index * piece as usize;
        assert_eq!(
            store.read(&k, offset, len).unwrap(),
            &body[start..start + piece as usize]
        );
    }
    assert_eq!(
        store.used_bytes().unwrap(),
        20 * piece,
        "no tree for one-piece chunks"
    );
}

/// A store holding `name`: 128 KiB, larger than a small write, so its
/// bytes are in a segment file.
fn stored_in_a_segment(
    name: &str,
    seed: u8,
) -> (tempfile::TempDir, ObjectStore, ObjectKey, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(dir.path()).unwrap();
    let k = key(name);
    let data = pattern(seed, 128 << 10);
    store.write(&k, 0, &data).unwrap();
    (dir, store, k, data)
}

/// Flips bits `mask` of byte `at` of the segment file holding `k`.
fn damage_segment_of(store: &ObjectStore, k: &ObjectKey, at: usize, mask: u8) {
    let segment = store.segment_of(k).unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[at] ^= mask;
    std::fs::write(&segment, bytes).unwrap();
}

#[test]
fn a_damaged_byte_is_an_error_never_data() {
    let (_dir, store, k, _) = stored_in_a_segment("victim", 6);
    damage_segment_of(&store, &k, 100, 0x40);
    match store.read(&k, 0, 4096) {
        Err(StoreError::Corrupt(message)) => assert!(message.contains("does not match")),
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[test]
fn a_small_read_hashes_only_its_pieces_and_never_returns_a_damaged_one() {
    use aspen_osd::tree::{PIECE, tree_len};
    let (_dir, store, k, data) = stored_in_a_segment("pieces", 21);
    // A byte in the sixth piece of the first chunk (after its tree).
    let damaged = 5 * PIECE + 10;
    damage_segment_of(&store, &k, tree_len(64 << 10) + damaged, 0x10);

    assert_eq!(store.read(&k, 100, 4000).unwrap(), &data[100..4100]);
    let second_chunk = 64 << 10;
    assert_eq!(
        store.read(&k, second_chunk + 7, 9000).unwrap(),
        &data[second_chunk as usize + 7..][..9000]
    );
    for (offset, len) in [
        (damaged as u64, 1),
        (5 * PIECE as u64 - 3, 6),
        (0, 128 << 10),
    ] {
        match store.read(&k, offset, len) {
            Err(StoreError::Corrupt(message)) => assert!(message.contains("does not match")),
            other => panic!("a read of {len} at {offset}: expected corruption, got {other:?}"),
        }
    }
}

#[test]
fn a_damaged_hash_tree_fails_every_read_of_its_chunk() {
    let (_dir, store, k, _) = stored_in_a_segment("tree", 22);
    damage_segment_of(&store, &k, 40, 0x01);
    for (offset, len) in [(0, 10), (60_000, 4096)] {
        assert!(
            matches!(store.read(&k, offset, len), Err(StoreError::Corrupt(_))),
            "a read at {offset}"
        );
    }
}

#[test]
fn overwritten_space_is_reclaimed_and_live_data_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key("a"), key("b"));
    let first_segment = {
        let store = ObjectStore::open(dir.path()).unwrap();
        store.write(&a, 0, &pattern(7, 1 << 20)).unwrap();
        store.write(&b, 0, &pattern(8, 128 << 10)).unwrap();
        store.segment_of(&a).unwrap()
    };
    let store = ObjectStore::open(dir.path()).unwrap();
    store.write(&a, 0, &pattern(9, 1 << 20)).unwrap();
    let moved = store.collect_garbage().unwrap();
    assert_eq!(moved, 128 << 10, "only b's live chunks are copied");
    assert!(!first_segment.exists(), "the mostly dead segment is gone");
    assert_eq!(store.read(&a, 0, 1 << 20).unwrap(), pattern(9, 1 << 20));
    assert_eq!(store.read(&b, 0, 128 << 10).unwrap(), pattern(8, 128 << 10));
    drop(store);
    let store = ObjectStore::open(dir.path()).unwrap();
    assert_eq!(store.read(&b, 0, 128 << 10).unwrap(), pattern(8, 128 << 10));
}

#[test]
fn a_large_segment_is_compacted_a_step_at_a_time_and_keeps_every_live_chunk() {
    const OBJECT: usize = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let kept: Vec<ObjectKey> = (0..5).map(|i| key(&format!("kept{i}"))).collect();
    let dead: Vec<ObjectKey> = (0..15).map(|i| key(&format!("dead{i}"))).collect();
    let first_segment = {
        let store = ObjectStore::open(dir.path()).unwrap();
        for (i, k) in kept.iter().chain(&dead).enumerate() {
            // Even seeds: `pattern` gives seeds 2n and 2n + 1 the same bytes.
            store.write(k, 0, &pattern(2 * i as u8, OBJECT)).unwrap();
        }
        store.segment_of(&kept[0]).unwrap()
    };
    let store = ObjectStore::open(dir.path()).unwrap();
    for k in &dead {
        store.delete(k).unwrap();
    }
    let live = (kept.len() * OBJECT) as u64;
    assert!(
        live > 2 * COMPACT_STEP_BYTES,
        "the copy takes several steps"
    );
    assert_eq!(
        store.collect_garbage().unwrap(),
        live,
        "each live chunk is copied once"
    );
    assert!(!first_segment.exists(), "the emptied segment is gone");
    drop(store);
    let store = ObjectStore::open(dir.path()).unwrap();
    for (i, k) in kept.iter().enumerate() {
        assert_eq!(
            store.read(k, 0, OBJECT as u64).unwrap(),
            pattern(2 * i as u8, OBJECT)
        );
    }
    assert_eq!(
        store.collect_garbage().unwrap(),
        0,
        "nothing is left to move"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, len: usize, seed: u8 },
    Truncate { size: u64 },
    Zero { offset: u64, len: u64 },
    Delete,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..300_000u64, 1..150_000usize, any::<u8>())
            .prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        1 => (0..400_000u64).prop_map(|size| Op::Truncate { size }),
        1 => (0..300_000u64, 0..100_000u64).prop_map(|(offset, len)| Op::Zero { offset, len }),
        1 => Just(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn the_store_reads_what_the_model_holds(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let k = key("model");
        let mut model: Option<Vec<u8>> = None;
        for op in ops {
            match op {
                Op::Write { offset, len, seed } => {
                    store.write(&k, offset, &pattern(seed, len)).unwrap();
                    let bytes = model.get_or_insert_with(Vec::new);
                    let end = offset as usize + len;
                    if bytes.len() < end {
                        bytes.resize(end, 0);
                    }
                    bytes[offset as usize..end].copy_from_slice(&pattern(seed, len));
                }
                Op::Truncate { size } => {
                    store.truncate(&k, size).unwrap();
                    model.get_or_insert_with(Vec::new).resize(size as usize, 0);
                }
                Op::Zero { offset, len } => match &mut model {
                    None => prop_assert!(matches!(store.zero(&k, offset, len), Err(StoreError::NotFound))),
                    Some(bytes) => {
                        store.zero(&k, offset, len).unwrap();
                        let end = ((offset + len) as usize).min(bytes.len());
                        if (offset as usize) < end {
                            bytes[offset as usize..end].fill(0);
                        }
                    }
                },
                Op::Delete => {
                    let deleted = store.delete(&k);
                    prop_assert_eq!(deleted.is_ok(), model.take().is_some());
                }
            }
            match &model {
                None => prop_assert!(store.stat(&k).unwrap().is_none()),
                Some(bytes) => {
                    prop_assert_eq!(store.stat(&k).unwrap().unwrap().size, bytes.len() as u64);
                    prop_assert_eq!(&store.read(&k, 0, 1 << 20).unwrap(), bytes);
                }
            }
        }
        store.collect_garbage().unwrap();
        if let Some(bytes) = &model {
            prop_assert_eq!(&store.read(&k, 0, 1 << 20).unwrap(), bytes);
        }
    }
}

#[test]
fn logged_mutations_and_the_pg_log_commit_together() {
    use aspen_proto::osd::{LogEntry, LogVersion, ObjectOp};
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(dir.path()).unwrap();
    let k = key("logged");
    let at = |version| LogVersion { epoch: 3, version };
    let entry = |version, op| LogEntry {
        at: at(version),
        object: k.name.clone(),
        op,
    };
    store
        .apply_logged(&k, &entry(1, ObjectOp::Write { offset: 0 }), b"hello")
        .unwrap();
    store
        .apply_logged(&k, &entry(2, ObjectOp::Truncate { size: 4 }), b"")
        .unwrap();
    assert_eq!(store.read(&k, 0, 10).unwrap(), b"hell".to_vec());
    assert_eq!(store.pg_last(k.pg).unwrap(), at(2));
    // An op that fails logs nothing; an entry not after the last changes nothing.
    let missing = ObjectKey {
        name: b"missing".to_vec(),
        ..k.clone()
    };
    assert!(matches!(
        store.apply_logged(&missing, &entry(3, ObjectOp::Delete), b""),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.apply_logged(&k, &entry(2, ObjectOp::Write { offset: 0 }), b"J"),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.read(&k, 0, 10).unwrap(), b"hell".to_vec());
    let entries = store.pg_entries_after(k.pg, at(1)).unwrap();
    assert_eq!(entries, vec![entry(2, ObjectOp::Truncate { size: 4 })]);
    // A vectored write applies its pieces in order, as one entry.
    let pieces = ObjectOp::WriteExtents {
        extents: vec![(0, 2), (6, 3), (1, 1)],
    };
    store
        .apply_logged(&k, &entry(3, pieces), b"ABxyzC")
        .unwrap();
    assert_eq!(store.read(&k, 0, 10).unwrap(), b"ACll\0\0xyz".to_vec());
    assert_eq!(store.pg_last(k.pg).unwrap(), at(3));
    let short = ObjectOp::WriteExtents {
        extents: vec![(0, 4)],
    };
    assert!(matches!(
        store.apply_logged(&k, &entry(4, short), b"ab"),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.pg_last(k.pg).unwrap(), at(3));
}

#[test]
fn a_replica_takes_only_the_next_entry_of_a_pg_and_skips_a_resend() {
    use aspen_proto::osd::{LogEntry, LogVersion, ObjectOp};
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(dir.path()).unwrap();
    let k = key("replica");
    let entry = |version, offset| LogEntry {
        at: LogVersion { epoch: 2, version },
        object: k.name.clone(),
        op: ObjectOp::Write { offset },
    };
    let apply = |version, offset, data: &[u8]| {
        store
            .apply_replicated_each(&[(k.clone(), &entry(version, offset), data.into())])
            .pop()
            .unwrap()
    };
    assert!(apply(1, 0, b"one").unwrap(), "applied");
    assert!(
        matches!(apply(3, 0, b"three"), Err(StoreError::Gap(_))),
        "version 2 never came: 3 is refused"
    );
    assert_eq!(store.read(&k, 0, 10).unwrap(), b"one".to_vec());
    assert!(!apply(1, 0, b"one").unwrap(), "a resend changes nothing");
    assert!(
        matches!(apply(1, 5, b"one"), Err(StoreError::Diverged(_))),
        "another entry at a version already logged is refused"
    );
    assert_eq!(store.read(&k, 0, 10).unwrap(), b"one".to_vec());
    assert!(apply(2, 3, b"two").unwrap());
    assert!(apply(3, 0, b"ONE").unwrap());
    assert_eq!(store.read(&k, 0, 10).unwrap(), b"ONEtwo".to_vec());
    assert_eq!(store.pg_last(k.pg).unwrap().version, 3);
}

#[test]
fn staged_changes_are_seen_at_once_and_count_once_durable() {
    use aspen_proto::osd::{LogEntry, LogVersion, ObjectOp};
    let dir = tempfile::tempdir().unwrap();
    let k = key("staged");
    let entry = |version, offset| LogEntry {
        at: LogVersion { epoch: 1, version },
        object: k.name.clone(),
        op: ObjectOp::Write { offset },
    };
    {
        let store = ObjectStore::open(dir.path()).unwrap();
        let first = store.stage_logged(&k, &entry(1, 0), b"abc").unwrap();
        let second = store.stage_logged(&k, &entry(2, 3), b"def").unwrap();
        assert_eq!(store.read(&k, 0, 10).unwrap(), b"abcdef".to_vec());
        assert!(
            matches!(
                store.stage_logged(&k, &entry(2, 0), b"x"),
                Err(StoreError::Invalid(_))
            ),
            "a position already taken"
        );
        assert!(
            matches!(
                store.stage_logged(&k, &entry(4, 0), b"x"),
                Err(StoreError::Gap(_))
            ),
            "a primary's log has no hole either: version 3 is missing"
        );
        assert_eq!(store.read(&k, 0, 10).unwrap(), b"abcdef".to_vec());
        assert_eq!(store.durable(second).unwrap().unwrap().size, 6);
        assert_eq!(store.durable(first).unwrap().unwrap().size, 3);
    }
    let reopened = ObjectStore::open(dir.path()).unwrap();
    assert_eq!(reopened.read(&k, 0, 10).unwrap(), b"abcdef".to_vec());
    assert_eq!(reopened.pg_last(k.pg).unwrap().version, 2);
}

/// Concurrent mutations share commits (see `batch`): a change that fails
/// half-way through (here an install that deletes the old copy, then
/// finds its data too long) is undone alone, while the changes committed
/// beside it stay, durably.
#[test]
fn a_failed_change_among_concurrent_ones_undoes_only_itself() {
    use aspen_proto::osd::{LogVersion, ObjectCopy};
    use std::sync::Arc;
    const WRITERS: usize = 6;
    const WRITES_EACH: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let victim = key("victim");
    {
        let store = Arc::new(ObjectStore::open(dir.path()).unwrap());
        store.write(&victim, 0, &pattern(9, 10_000)).unwrap();
        let threads: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (store, victim) = (store.clone(), victim.clone());
                std::thread::spawn(move || {
                    for i in 0..WRITES_EACH {
                        if writer % 2 == 0 {
                            let too_short = ObjectCopy {
                                size: 1,
                                attrs: Vec::new(),
                                at: LogVersion::default(),
                            };
                            let failed = store.install_object(&victim, Some(&too_short), b"ab");
                            assert!(matches!(failed, Err(StoreError::Invalid(_))));
                        } else {
                            let k = key(&format!("w{writer}.{i}"));
                            store.write(&k, 0, &pattern(i as u8, 4_096)).unwrap();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }
    let store = ObjectStore::open(dir.path()).unwrap();
    assert_eq!(
        store.read(&victim, 0, 20_000).unwrap(),
        pattern(9, 10_000),
        "the failed installs deleted nothing"
    );
    for writer in (1..WRITERS).step_by(2) {
        for i in 0..WRITES_EACH {
            let k = key(&format!("w{writer}.{i}"));
            assert_eq!(store.read(&k, 0, 4_096).unwrap(), pattern(i as u8, 4_096));
        }
    }
}

#[test]
fn a_chunk_compaction_cannot_read_never_holds_back_the_released_references() {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(dir.path()).unwrap();
    let (kept, dropped, small) = (key("kept"), key("dropped"), key("small"));
    store.write(&kept, 0, &pattern(30, 128 << 10)).unwrap();
    store.write(&dropped, 0, &pattern(32, 1 << 20)).unwrap();
    store.write(&small, 0, &pattern(34, 4096)).unwrap();
    damage_segment_of(&store, &kept, 100, 0x40);
    store.delete(&dropped).unwrap();
    store.delete(&small).unwrap();
    let before = store.used_bytes().unwrap();
    assert!(
        store.collect_garbage().is_err(),
        "compaction cannot copy the damaged chunk"
    );
    assert_eq!(
        before - store.used_bytes().unwrap(),
        4096,
        "the small object's inline bytes come back all the same"
    );
}

/// Logged writes staged on async tasks (on the task's own thread when the
/// store is free) and awaited without holding a thread, among writes that
/// wait on blocking threads: every waiter resumes once its change is
/// durable, and every change is there after the store is reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_and_blocking_waiters_resume_once_durable_and_every_change_survives_reopening() {
    use aspen_proto::osd::{LogEntry, LogVersion, ObjectOp};
    use std::sync::Arc;
    const WRITERS: u32 = 32;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ObjectStore::open(dir.path()).unwrap());
    let in_pg = |seed: u32| ObjectKey {
        pg: PgId {
            pool: PoolId(1),
            seed,
        },
        name: format!("async.{seed}").into_bytes(),
    };
    let mut waits = Vec::new();
    for seed in 0..WRITERS {
        let store = store.clone();
        let k = in_pg(seed);
        waits.push(tokio::spawn(async move {
            let entry = LogEntry {
                at: LogVersion {
                    epoch: 1,
                    version: 1,
                },
                object: k.name.clone(),
                op: ObjectOp::Write { offset: 0 },
            };
            let data = pattern(seed as u8, 4096);
            let stat = if seed % 2 == 0 {
                let staged = match store.try_stage_logged(&k, &entry, &data) {
                    Some(staged) => staged,
                    None => store.stage_logged(&k, &entry, &data),
                };
                store.durable_async(staged.unwrap()).await.unwrap()
            } else {
                // A blocking waiter among the async ones: either may sync
                // the batch the other waits on.
                tokio::task::spawn_blocking(move || {
                    store.durable(store.stage_logged(&k, &entry, &data).unwrap())
                })
                .await
                .unwrap()
                .unwrap()
            };
            assert_eq!(stat.map(|s| s.size), Some(4096));
        }));
    }
    for wait in waits {
        wait.await.unwrap();
    }
    drop(store);
    let store = ObjectStore::open(dir.path()).unwrap();
    for seed in 0..WRITERS {
        let k = in_pg(seed);
        assert_eq!(store.read(&k, 0, 8192).unwrap(), pattern(seed as u8, 4096));
        assert_eq!(store.pg_last(k.pg).unwrap().version, 1);
    }
}

#[test]
fn a_replica_stores_a_large_write_under_the_primarys_hash_trees() {
    use aspen_osd::store::{Body, write_trees};
    use aspen_proto::osd::{LogEntry, LogVersion, ObjectOp};
    let entry = |name: &str, version| LogEntry {
        at: LogVersion { epoch: 1, version },
        object: name.as_bytes().to_vec(),
        op: ObjectOp::Write { offset: 4096 },
    };
    let replicate = |store: &ObjectStore, name: &str, version, body: Body| {
        store
            .apply_replicated_each(&[(key(name), &entry(name, version), body)])
            .pop()
            .unwrap()
    };
    let body = pattern(21, 300_000);
    let trees = write_trees(&entry("x", 1).op, &body);
    assert_eq!(
        trees.len(),
        4 * 8 * 32 + 5 * 32,
        "four full chunks, one of 37,856 bytes"
    );
    assert!(
        write_trees(&entry("x", 1).op, &body[..16_384]).is_empty(),
        "a small write of small chunks has none"
    );
    assert_eq!(
        write_trees(&entry("x", 1).op, &body[..65_536]).len(),
        8 * 32,
        "a small write's chunk over the inline limit has one"
    );

    let dir = tempfile::tempdir().unwrap();
    let hashed_here = ObjectStore::open(&dir.path().join("a")).unwrap();
    let given = ObjectStore::open(&dir.path().join("b")).unwrap();
    replicate(&hashed_here, "o", 1, Body::from(&body)).unwrap();
    let with_trees = Body {
        bytes: &body,
        trees: &trees,
    };
    replicate(&given, "o", 1, with_trees).unwrap();
    for store in [&hashed_here, &given] {
        assert_eq!(store.read(&key("o"), 4096, 300_000).unwrap(), body);
    }
    assert_eq!(
        hashed_here.used_bytes().unwrap(),
        given.used_bytes().unwrap()
    );

    let short = Body {
        bytes: &body,
        trees: &trees[32..],
    };
    assert!(
        matches!(
            replicate(&given, "short", 2, short),
            Err(StoreError::Invalid(_))
        ),
        "trees of the wrong length are refused"
    );
    assert!(matches!(
        given.read(&key("short"), 0, 10),
        Err(StoreError::NotFound)
    ));

    // Trees are taken as given, not recomputed: under those of other
    // bytes (on a store without the right chunks) the bytes are stored,
    // and the read refuses them rather than return them.
    let fresh = ObjectStore::open(&dir.path().join("c")).unwrap();
    let other = pattern(22, 300_000);
    let wrong = Body {
        bytes: &other,
        trees: &trees,
    };
    replicate(&fresh, "wrong", 1, wrong).unwrap();
    assert!(matches!(
        fresh.read(&key("wrong"), 4096, 4096),
        Err(StoreError::Corrupt(_))
    ));
}
