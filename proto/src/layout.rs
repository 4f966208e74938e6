//! File layouts: how a file's bytes map onto objects.
//!
//! A layout names the pool a file's objects live in (default
//! [`DEFAULT_DATA_POOL`], the first pool created) and the object size (a
//! power of two from [`MIN_OBJECT_SIZE`] to [`MAX_OBJECT_SIZE`], default
//! [`DEFAULT_OBJECT_SIZE`]). Object `n` holds file bytes
//! `n * object_size .. (n + 1) * object_size`. A directory's layout is
//! inherited by what is created in it; its text form (the `aspen.layout`
//! xattr) is `object_size=BYTES pool=ID`, and either field may be left out
//! when setting one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use aspen_placement::PoolId;

use crate::ids::ObjectNo;

pub const DEFAULT_OBJECT_SIZE: u32 = 4 << 20;
pub const MIN_OBJECT_SIZE: u32 = 64 << 10;
pub const MAX_OBJECT_SIZE: u32 = 64 << 20;
/// The virtual xattr that shows an inode's layout and sets a directory's.
pub const LAYOUT_XATTR: &[u8] = b"aspen.layout";
/// The pool file data goes to unless a layout names another: the first
/// pool a cluster creates.
pub const DEFAULT_DATA_POOL: PoolId = PoolId(1);
/// The largest file size (as Linux's `MAX_LFS_FILESIZE`).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// A layout that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("object size {0} must be a power of two from {MIN_OBJECT_SIZE} to {MAX_OBJECT_SIZE}")]
    BadObjectSize(u64),
    #[error("cannot parse layout {0:?}: expected object_size=BYTES pool=ID")]
    Malformed(String),
    #[error("byte range {offset}+{len} ends beyond the largest file size")]
    RangeTooLarge { offset: u64, len: u64 },
}

/// How a file is cut into objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "LayoutFields", into = "LayoutFields")]
pub struct FileLayout {
    object_size: u32,
    pool: PoolId,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutFields {
    object_size: u64,
    pool: u32,
}

impl TryFrom<LayoutFields> for FileLayout {
    type Error = LayoutError;
    fn try_from(fields: LayoutFields) -> Result<FileLayout, LayoutError> {
        Ok(FileLayout::new(fields.object_size)?.in_pool(PoolId(fields.pool)))
    }
}

impl From<FileLayout> for LayoutFields {
    fn from(layout: FileLayout) -> LayoutFields {
        LayoutFields {
            object_size: u64::from(layout.object_size),
            pool: layout.pool.0,
        }
    }
}

/// The part of one object that a file byte range covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectExtent {
    pub objno: ObjectNo,
    /// Offset within the object.
    pub offset: u64,
    pub len: u64,
    /// Offset of the extent's first byte within the file.
    pub file_offset: u64,
}

impl Default for FileLayout {
    fn default() -> Self {
        FileLayout {
            object_size: DEFAULT_OBJECT_SIZE,
            pool: DEFAULT_DATA_POOL,
        }
    }
}

impl FileLayout {
    /// A layout in the default pool.
    pub fn new(object_size: u64) -> Result<FileLayout, LayoutError> {
        let valid = object_size.is_power_of_two()
            && (u64::from(MIN_OBJECT_SIZE)..=u64::from(MAX_OBJECT_SIZE)).contains(&object_size);
        if !valid {
            return Err(LayoutError::BadObjectSize(object_size));
        }
        Ok(FileLayout {
            object_size: object_size as u32,
            pool: DEFAULT_DATA_POOL,
        })
    }

    /// The same layout with its objects in `pool`.
    pub fn in_pool(self, pool: PoolId) -> FileLayout {
        FileLayout { pool, ..self }
    }

    pub fn object_size(&self) -> u64 {
        u64::from(self.object_size)
    }

    pub fn pool(&self) -> PoolId {
        self.pool
    }

    /// The pool `text` names, if it names one.
    pub fn pool_in_text(text: &str) -> Option<PoolId> {
        text.split_ascii_whitespace()
            .find_map(|field| field.strip_prefix("pool="))
            .and_then(|id| id.parse().ok())
            .map(PoolId)
    }

    /// This layout with the fields `text` sets (`object_size=BYTES`,
    /// `pool=ID`, separated by spaces) changed.
    pub fn with_text(self, text: &str) -> Result<FileLayout, LayoutError> {
        let malformed = || LayoutError::Malformed(text.chars().take(64).collect());
        let mut layout = self;
        let mut fields = 0;
        for field in text.split_ascii_whitespace() {
            let (key, value) = field.split_once('=').ok_or_else(malformed)?;
            let number: u64 = value.parse().map_err(|_| malformed())?;
            layout = match key {
                "object_size" => FileLayout::new(number)?.in_pool(layout.pool),
                "pool" => layout.in_pool(PoolId(u32::try_from(number).map_err(|_| malformed())?)),
                _ => return Err(malformed()),
            };
            fields += 1;
        }
        if fields == 0 {
            return Err(malformed());
        }
        Ok(layout)
    }

    /// The object extents that file bytes `offset .. offset + len` cover,
    /// in file order.
    pub fn extents(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<impl Iterator<Item = ObjectExtent> + use<>, LayoutError> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= MAX_FILE_SIZE)
            .ok_or(LayoutError::RangeTooLarge { offset, len })?;
        let size = self.object_size();
        let mut position = offset;
        Ok(std::iter::from_fn(move || {
            if position >= end {
                return None;
            }
            let within = position % size;
            let len = (size - within).min(end - position);
            let extent = ObjectExtent {
                objno: ObjectNo(position / size),
                offset: within,
                len,
                file_offset: position,
            };
            position += len;
            Some(extent)
        }))
    }

    /// How many objects a file of `size` bytes can touch: the objects
    /// numbered from this one on hold no data.
    pub fn objects_for_size(&self, size: u64) -> u64 {
        size.div_ceil(self.object_size())
    }
}

impl fmt::Display for FileLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "object_size={} pool={}", self.object_size, self.pool.0)
    }
}

impl FromStr for FileLayout {
    type Err = LayoutError;

    /// Fields left out take their defaults.
    fn from_str(text: &str) -> Result<FileLayout, LayoutError> {
        FileLayout::default().with_text(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_form_round_trips_and_rejects_bad_input() {
        let layout: FileLayout = "object_size=1048576".parse().unwrap();
        assert_eq!(layout.object_size(), 1 << 20);
        assert_eq!(layout.pool(), DEFAULT_DATA_POOL);
        assert_eq!(layout.to_string().parse::<FileLayout>().unwrap(), layout);
        let moved = layout.with_text("pool=7").unwrap();
        assert_eq!((moved.pool(), moved.object_size()), (PoolId(7), 1 << 20));
        assert_eq!(moved.to_string(), "object_size=1048576 pool=7");
        for bad in [
            "pool=",
            "pool=-1",
            "pool=4294967296",
            "object_size=1048576 colour=blue",
            "",
            "object_size=",
            "object_size=abc",
            "size=4194304",
            "object_size=3000000",
            "object_size=4096",
            "object_size=134217728",
            "object_size=-1",
        ] {
            assert!(bad.parse::<FileLayout>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ranges_past_the_largest_file_are_errors() {
        let layout = FileLayout::default();
        assert!(layout.extents(MAX_FILE_SIZE, 1).is_err());
        assert!(layout.extents(u64::MAX, u64::MAX).is_err());
        assert_eq!(layout.extents(MAX_FILE_SIZE - 1, 1).unwrap().count(), 1);
        assert_eq!(layout.extents(5, 0).unwrap().count(), 0);
    }

    #[test]
    fn sizes_to_object_counts() {
        let layout = FileLayout::default();
        assert_eq!(layout.objects_for_size(0), 0);
        assert_eq!(layout.objects_for_size(1), 1);
        assert_eq!(layout.objects_for_size(4 << 20), 1);
        assert_eq!(layout.objects_for_size((4 << 20) + 1), 2);
    }

    proptest! {
        #[test]
        fn extents_tile_the_range_exactly(
            shift in 16u32..=26, offset in 0u64..(1 << 40), len in 0u64..(1 << 28),
        ) {
            let layout = FileLayout::new(1 << shift).unwrap();
            let size = layout.object_size();
            let mut position = offset;
            for extent in layout.extents(offset, len).unwrap() {
                prop_assert_eq!(extent.file_offset, position);
                prop_assert_eq!(extent.objno.0 * size + extent.offset, position);
                prop_assert!(extent.len > 0 && extent.offset + extent.len <= size);
                position += extent.len;
            }
            prop_assert_eq!(position, offset + len);
        }
    }
}
