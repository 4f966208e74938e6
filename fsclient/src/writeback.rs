//! Buffered writes, as bytes: the extents of a file written under an
//! Exclusive cap and not yet sent to the OSDs. Extents never overlap;
//! a write over buffered bytes replaces them, and a write that continues
//! an extent grows it in place (sequential writes do not copy what is
//! already buffered). Reads lay these bytes over what the OSDs return.
//!
//! Write-back takes them out as [`SendingExtents`]: frozen, so the object
//! writes send slices of them without a copy while reads still lay them
//! over what the OSDs return.
//!
//! Pure bookkeeping: when to send them is the VFS's decision.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Buffered bytes of one file.
#[derive(Debug, Default)]
pub struct DirtyExtents {
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: u64,
}

impl DirtyExtents {
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// How many bytes are buffered.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Buffers `data` at `offset`, over whatever was buffered there.
    pub fn insert(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        if self.append_in_place(offset, data) || self.overwrite_in_place(offset, data) {
            return;
        }
        // Every extent that overlaps or touches [offset, end) merges.
        // Extents do not overlap, so their ends rise with their starts: walk
        // back from `end` and stop at the first that ends before `offset`.
        let touching: Vec<u64> = self
            .extents
            .range(..=end)
            .rev()
            .take_while(|(start, bytes)| **start + bytes.len() as u64 >= offset)
            .map(|(start, _)| *start)
            .collect();
        if touching.is_empty() {
            self.bytes += data.len() as u64;
            self.extents.insert(offset, data.to_vec());
            return;
        }
        let mut start = offset;
        let mut stop = end;
        for key in &touching {
            start = start.min(*key);
            stop = stop.max(key + self.extents[key].len() as u64);
        }
        let mut merged = vec![0u8; (stop - start) as usize];
        for key in touching {
            let old = self.extents.remove(&key).expect("listed above");
            self.bytes -= old.len() as u64;
            let at = (key - start) as usize;
            merged[at..at + old.len()].copy_from_slice(&old);
        }
        let at = (offset - start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len() as u64;
        self.extents.insert(start, merged);
    }

    /// The write continues the extent before it and touches no other.
    fn append_in_place(&mut self, offset: u64, data: &[u8]) -> bool {
        let end = offset + data.len() as u64;
        let Some((&start, _)) = self.extents.range(..offset).next_back() else {
            return false;
        };
        let next_free = self
            .extents
            .range(offset..)
            .next()
            .is_none_or(|(next, _)| *next > end);
        let extent = self.extents.get_mut(&start).expect("found above");
        if start + extent.len() as u64 != offset || !next_free {
            return false;
        }
        extent.extend_from_slice(data);
        self.bytes += data.len() as u64;
        true
    }

    /// The write falls inside one extent.
    fn overwrite_in_place(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some((&start, extent)) = self.extents.range_mut(..=offset).next_back() else {
            return false;
        };
        let at = (offset - start) as usize;
        if at + data.len() > extent.len() {
            return false;
        }
        extent[at..at + data.len()].copy_from_slice(data);
        true
    }

    /// Whether the buffered bytes cover all of `offset .. offset + len`.
    pub fn covers(&self, offset: u64, len: u64) -> bool {
        self.extents
            .range(..=offset)
            .next_back()
            .is_some_and(|(start, bytes)| start + bytes.len() as u64 >= offset + len)
    }

    /// Lays the buffered bytes over `buf`, which holds the file's bytes
    /// from `offset`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        overlay(&self.extents, offset, buf);
    }

    /// Where the last buffered byte ends.
    pub fn end(&self) -> u64 {
        self.extents
            .iter()
            .next_back()
            .map_or(0, |(start, bytes)| start + bytes.len() as u64)
    }

    /// Drops what lies at or beyond `size` (a truncation).
    pub fn truncate(&mut self, size: u64) {
        let beyond: Vec<u64> = self.extents.range(size..).map(|(s, _)| *s).collect();
        for start in beyond {
            let gone = self.extents.remove(&start).expect("listed above");
            self.bytes -= gone.len() as u64;
        }
        if let Some((&start, extent)) = self.extents.range_mut(..size).next_back() {
            let keep = (size - start) as usize;
            if extent.len() > keep {
                self.bytes -= (extent.len() - keep) as u64;
                extent.truncate(keep);
            }
        }
    }

    /// Moves every extent into a new set, leaving this one empty.
    pub fn take_all(&mut self) -> DirtyExtents {
        std::mem::take(self)
    }

    /// Takes every extent out to be sent, leaving this set empty.
    pub fn take_for_sending(&mut self) -> SendingExtents {
        let taken = self.take_all();
        SendingExtents {
            bytes: taken.bytes,
            extents: taken
                .extents
                .into_iter()
                .map(|(start, bytes)| (start, Bytes::from(bytes)))
                .collect(),
        }
    }

    /// A copy of the buffered bytes that fall in `offset .. offset + len`.
    pub fn slice(&self, offset: u64, len: u64) -> DirtyExtents {
        let mut copy = DirtyExtents::default();
        let end = offset + len;
        let first = self
            .extents
            .range(..=offset)
            .next_back()
            .map_or(offset, |(start, _)| *start);
        for (start, bytes) in self.extents.range(first..end) {
            let from = offset.max(*start);
            let to = end.min(start + bytes.len() as u64);
            if from < to {
                copy.insert(from, &bytes[(from - start) as usize..(to - start) as usize]);
            }
        }
        copy
    }
}

/// Buffered extents taken out for sending (see the module doc).
#[derive(Debug, Default)]
pub struct SendingExtents {
    extents: BTreeMap<u64, Bytes>,
    bytes: u64,
}

impl SendingExtents {
    /// How many bytes are being sent.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The extent that starts at `start`.
    pub fn get(&self, start: u64) -> Option<&Bytes> {
        self.extents.get(&start)
    }

    /// The extents, by offset.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.extents
            .iter()
            .map(|(start, bytes)| (*start, bytes.as_ref()))
    }

    /// Lays the bytes being sent over `buf`, which holds the file's bytes
    /// from `offset`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        overlay(&self.extents, offset, buf);
    }
}

/// Lays non-overlapping `extents` (keyed by their start) over `buf`, which
/// holds the file's bytes from `offset`.
fn overlay<B: AsRef<[u8]>>(extents: &BTreeMap<u64, B>, offset: u64, buf: &mut [u8]) {
    let end = offset + buf.len() as u64;
    let first = extents
        .range(..=offset)
        .next_back()
        .map_or(offset, |(start, _)| *start);
    for (start, bytes) in extents.range(first..end) {
        let bytes = bytes.as_ref();
        let from = offset.max(*start);
        let to = end.min(start + bytes.len() as u64);
        if from >= to {
            continue;
        }
        let src = &bytes[(from - start) as usize..(to - start) as usize];
        buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Write(u64, Vec<u8>),
        Truncate(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..200u64, proptest::collection::vec(any::<u8>(), 1..40))
                .prop_map(|(o, d)| Step::Write(o, d)),
            1 => (0..240u64).prop_map(Step::Truncate),
        ]
    }

    proptest! {
        /// Against a byte-by-byte model: what reads see, what is taken for
        /// sending (and what reads see of it), the byte counts, and that
        /// extents never overlap.
        #[test]
        fn matches_a_byte_model(steps in proptest::collection::vec(step(), 1..40)) {
            let mut dirty = DirtyExtents::default();
            let mut model: Vec<Option<u8>> = vec![None; 256];
            for step in steps {
                match step {
                    Step::Write(offset, data) => {
                        dirty.insert(offset, &data);
                        for (i, b) in data.iter().enumerate() {
                            model[offset as usize + i] = Some(*b);
                        }
                    }
                    Step::Truncate(size) => {
                        dirty.truncate(size);
                        for byte in &mut model[size as usize..] {
                            *byte = None;
                        }
                    }
                }
                let mut seen = vec![0xEEu8; 256];
                dirty.overlay(0, &mut seen);
                for (i, byte) in model.iter().enumerate() {
                    prop_assert_eq!(seen[i], byte.unwrap_or(0xEE), "byte {}", i);
                }
                prop_assert_eq!(dirty.bytes(), model.iter().flatten().count() as u64);
            }
            let sending = dirty.take_for_sending();
            prop_assert!(dirty.is_empty());
            prop_assert_eq!(dirty.bytes(), 0);
            prop_assert_eq!(sending.bytes(), model.iter().flatten().count() as u64);
            let mut seen = vec![0xEEu8; 256];
            sending.overlay(0, &mut seen);
            for (i, byte) in model.iter().enumerate() {
                prop_assert_eq!(seen[i], byte.unwrap_or(0xEE), "byte {} being sent", i);
            }
            let mut last_end = 0;
            for (start, bytes) in sending.iter() {
                prop_assert!(start >= last_end, "extents overlap");
                prop_assert_eq!(sending.get(start).map(|b| b.as_ref()), Some(bytes));
                last_end = start + bytes.len() as u64;
                for (i, b) in bytes.iter().enumerate() {
                    prop_assert_eq!(model[start as usize + i], Some(*b));
                }
            }
        }
    }

    #[test]
    fn sequential_writes_grow_one_extent() {
        let mut dirty = DirtyExtents::default();
        for i in 0..100u64 {
            dirty.insert(i * 4, &[i as u8; 4]);
        }
        assert!(dirty.covers(0, 400));
        assert!(!dirty.covers(0, 401));
        assert_eq!(dirty.take_for_sending().iter().count(), 1);
    }
}
