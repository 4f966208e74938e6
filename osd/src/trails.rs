//! Tells an object's sequential readers from scattered ones, so that a
//! segment read asks the kernel for readahead only where it pays (see
//! [`ReadPattern`]). The kernel cannot tell by itself: one open segment
//! file serves every reader of every object stored in it, so the reads it
//! sees interleave.

use std::collections::HashMap;

use crate::content::{MAX_CHUNK, ReadPattern};

/// Reads up to this long that do not continue the object's previous read
/// are taken as scattered; longer ones always stream.
pub const SCATTERED_READ_MAX: u64 = MAX_CHUNK as u64;
/// Objects whose last read is remembered; past this many, all are
/// forgotten (a forgotten sequential reader loses readahead for one read).
pub const MAX_TRAILS: usize = 4096;

/// Where each recently read object's last read ended.
#[derive(Debug, Default)]
pub struct ReadTrails {
    ends: HashMap<i64, u64>,
}

impl ReadTrails {
    /// The pattern of a read of `len` bytes at `offset` of `object`, which
    /// is remembered for the next read. A read from the start of an object
    /// (a whole-object read, or the next object of a file read in order)
    /// or from where the last one ended streams.
    pub fn classify(&mut self, object: i64, offset: u64, len: u64) -> ReadPattern {
        let continues = offset == 0 || self.ends.get(&object) == Some(&offset);
        if self.ends.len() >= MAX_TRAILS && !self.ends.contains_key(&object) {
            self.ends.clear();
        }
        self.ends.insert(object, offset.saturating_add(len));
        if continues || len > SCATTERED_READ_MAX {
            ReadPattern::Streaming
        } else {
            ReadPattern::Scattered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: u64 = 4096;

    #[test]
    fn short_reads_at_scattered_offsets_are_scattered() {
        let mut trails = ReadTrails::default();
        assert_eq!(trails.classify(1, 40960, SMALL), ReadPattern::Scattered);
        assert_eq!(trails.classify(1, 8192, SMALL), ReadPattern::Scattered);
        assert_eq!(
            trails.classify(1, 81920, SCATTERED_READ_MAX),
            ReadPattern::Scattered
        );
    }

    #[test]
    fn long_reads_from_the_start_and_continuing_reads_stream() {
        let mut trails = ReadTrails::default();
        assert_eq!(
            trails.classify(1, 8192, SCATTERED_READ_MAX + 1),
            ReadPattern::Streaming
        );
        assert_eq!(trails.classify(2, 0, SMALL), ReadPattern::Streaming);
        assert_eq!(trails.classify(2, SMALL, SMALL), ReadPattern::Streaming);
        assert_eq!(trails.classify(3, 40960, SMALL), ReadPattern::Scattered);
        assert_eq!(
            trails.classify(3, 40960 + SMALL, SMALL),
            ReadPattern::Streaming,
            "a direct-I/O reader going in order at 4 KiB"
        );
        assert_eq!(
            trails.classify(2, 3 * SMALL, SMALL),
            ReadPattern::Scattered,
            "object 2's trail is its own"
        );
    }

    #[test]
    fn the_remembered_objects_stay_bounded() {
        let mut trails = ReadTrails::default();
        for object in 0..(3 * MAX_TRAILS as i64) {
            trails.classify(object, 4096, SMALL);
            assert!(trails.ends.len() <= MAX_TRAILS);
        }
    }
}
