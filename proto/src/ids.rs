//! Inode and object identifiers, and the object names file data is stored
//! under.
//!
//! Object `n` of inode `ino` is named `{ino:x}.{n:08x}` (hex), so the
//! objects of one file sort together and in order; the name is what
//! [`aspen_placement::pool::Pool::pg_of`] hashes.

use std::fmt;

use aspen_placement::{PgId, Pool, PoolId};
use serde::{Deserialize, Serialize};

/// An inode number, unique for the life of the filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InodeId(pub u64);

impl InodeId {
    /// The root directory.
    pub const ROOT: InodeId = InodeId(1);
}

impl fmt::Display for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// The index of an object within a file: object `n` holds bytes
/// `n * object_size .. (n + 1) * object_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ObjectNo(pub u64);

/// One object of file data: pool, inode and object number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId {
    pub pool: PoolId,
    pub ino: InodeId,
    pub objno: ObjectNo,
}

impl ObjectId {
    /// The object's name within its pool.
    pub fn name(&self) -> String {
        format!("{:x}.{:08x}", self.ino.0, self.objno.0)
    }

    /// The PG the object lives in.
    pub fn pg(&self, pool: &Pool) -> PgId {
        debug_assert_eq!(pool.id, self.pool);
        pool.pg_of(self.name().as_bytes())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool, self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_sort_by_object_number() {
        let id = |n| ObjectId {
            pool: PoolId(1),
            ino: InodeId(0x1000),
            objno: ObjectNo(n),
        };
        assert_eq!(id(0).name(), "1000.00000000");
        assert_eq!(id(0x2a).name(), "1000.0000002a");
        assert!(id(9).name() < id(10).name());
        assert_eq!(id(3).to_string(), "1/1000.00000003");
    }

    #[test]
    fn a_file_spreads_over_pgs() {
        let pool = Pool {
            id: PoolId(1),
            name: "data".into(),
            pg_num: 64,
            size: 3,
            min_size: 2,
            rule: "replicated_rule".into(),
        };
        let pgs: std::collections::HashSet<_> = (0..64)
            .map(|n| {
                ObjectId {
                    pool: PoolId(1),
                    ino: InodeId(77),
                    objno: ObjectNo(n),
                }
                .pg(&pool)
            })
            .collect();
        assert!(pgs.len() > 30, "{}", pgs.len());
    }
}
