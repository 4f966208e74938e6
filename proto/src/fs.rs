//! The filesystem vocabulary shared by the MDS, the client and the views:
//! inode attributes, callers, attribute changes and the flags of namespace
//! operations, with Linux's values and limits.

use serde::{Deserialize, Serialize};

use crate::errno::Errno;
use crate::ids::InodeId;
use crate::layout::FileLayout;

/// The longest name of a directory entry, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// The longest symlink target, in bytes (PATH_MAX less its NUL).
pub const MAX_SYMLINK_LEN: usize = 4095;
/// The longest xattr name (with its namespace prefix), in bytes.
pub const MAX_XATTR_NAME_LEN: usize = 255;
/// The largest xattr value, in bytes.
pub const MAX_XATTR_VALUE_LEN: usize = 65536;
/// The most supplementary groups a caller may present.
pub const MAX_GROUPS: usize = 256;
/// The most hard links to one inode (and subdirectories of one directory), as ext4.
pub const MAX_NLINK: u32 = 65000;

/// Mode bits (`st_mode`).
pub mod mode {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
    pub const S_ISUID: u32 = 0o4000;
    pub const S_ISGID: u32 = 0o2000;
    pub const S_ISVTX: u32 = 0o1000;
    pub const S_IXGRP: u32 = 0o0010;
    /// Permission bits plus setuid, setgid and sticky.
    pub const PERMISSIONS: u32 = 0o7777;
}

/// `access(2)` masks.
pub mod access {
    pub const F_OK: u32 = 0;
    pub const X_OK: u32 = 1;
    pub const W_OK: u32 = 2;
    pub const R_OK: u32 = 4;
}

/// `open(2)` flags, Linux values.
pub mod open_flags {
    pub const O_ACCMODE: u32 = 0o3;
    pub const O_RDONLY: u32 = 0o0;
    pub const O_WRONLY: u32 = 0o1;
    pub const O_RDWR: u32 = 0o2;
    pub const O_CREAT: u32 = 0o100;
    pub const O_EXCL: u32 = 0o200;
    pub const O_TRUNC: u32 = 0o1000;
    pub const O_APPEND: u32 = 0o2000;
    pub const O_DIRECT: u32 = 0o40000;
    pub const O_DIRECTORY: u32 = 0o200000;
}

/// `renameat2(2)` flags, Linux values.
pub mod rename_flags {
    pub const RENAME_NOREPLACE: u32 = 1;
    pub const RENAME_EXCHANGE: u32 = 2;
}

/// `setxattr(2)` flags, Linux values.
pub mod xattr_flags {
    pub const XATTR_CREATE: u32 = 1;
    pub const XATTR_REPLACE: u32 = 2;
}

/// The kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileType {
    /// The type encoded in a mode's `S_IFMT` bits.
    pub fn from_mode(bits: u32) -> Option<FileType> {
        Some(match bits & mode::S_IFMT {
            mode::S_IFREG => FileType::Regular,
            mode::S_IFDIR => FileType::Directory,
            mode::S_IFLNK => FileType::Symlink,
            mode::S_IFIFO => FileType::Fifo,
            mode::S_IFSOCK => FileType::Socket,
            mode::S_IFCHR => FileType::CharDevice,
            mode::S_IFBLK => FileType::BlockDevice,
            _ => return None,
        })
    }

    /// The type's `S_IFMT` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => mode::S_IFREG,
            FileType::Directory => mode::S_IFDIR,
            FileType::Symlink => mode::S_IFLNK,
            FileType::Fifo => mode::S_IFIFO,
            FileType::Socket => mode::S_IFSOCK,
            FileType::CharDevice => mode::S_IFCHR,
            FileType::BlockDevice => mode::S_IFBLK,
        }
    }
}

/// A point in time: seconds and nanoseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub const fn new(sec: i64, nsec: u32) -> Timestamp {
        Timestamp { sec, nsec }
    }

    /// The current time of this machine's clock.
    pub fn now() -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::new(since.as_secs() as i64, since.subsec_nanos())
    }
}

/// Who is asking: the credentials every namespace operation is checked with.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (at most [`MAX_GROUPS`]).
    pub groups: Vec<u32>,
}

impl Caller {
    pub fn root() -> Caller {
        Caller {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    pub fn new(uid: u32, gid: u32, groups: Vec<u32>) -> Caller {
        Caller { uid, gid, groups }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether `gid` is the caller's group or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Rejects more than [`MAX_GROUPS`] supplementary groups.
    pub fn validate(&self) -> Result<(), Errno> {
        if self.groups.len() > MAX_GROUPS {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }
}

/// An inode's attributes, as `stat(2)` reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: InodeId,
    pub kind: FileType,
    /// Permission bits with setuid, setgid and sticky (`mode & 07777`).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u64,
    pub generation: u64,
    pub layout: FileLayout,
    /// The access ACL, when it says more than `perm` (whose group bits are
    /// then the ACL's mask).
    pub acl: Option<crate::acl::PosixAcl>,
}

impl Attr {
    /// The full `st_mode`.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm
    }
}

/// A time to set: a given instant or the server's "now" (`UTIME_NOW`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// The attributes a `setattr` changes; `None` leaves one alone (`UTIME_OMIT`, `-1`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// Set when the size change comes through a handle opened for writing
    /// (`ftruncate`), which needs no write permission on the file.
    pub through_writable_handle: bool,
    /// Set when the caller wrote data: setuid and setgid are cleared unless
    /// the caller is root.
    pub wrote: bool,
}

impl SetAttr {
    /// Whether the request changes nothing.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
            && !self.wrote
    }
}

/// One directory entry, with the offset to resume reading after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub kind: FileType,
    pub offset: u64,
}

/// Filesystem totals, as `statfs(2)` reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// Checks a directory entry name: 1..=255 bytes, no `/` and no NUL.
pub fn validate_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > MAX_NAME_LEN {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name(b"file").is_ok());
        assert!(validate_name(&[b'a'; 255]).is_ok());
        assert_eq!(validate_name(&[b'a'; 256]), Err(Errno::ENAMETOOLONG));
        assert_eq!(validate_name(b""), Err(Errno::EINVAL));
        assert_eq!(validate_name(b"a/b"), Err(Errno::EINVAL));
        assert_eq!(validate_name(b"a\0b"), Err(Errno::EINVAL));
    }

    #[test]
    fn file_types_round_trip_through_mode_bits() {
        for kind in [
            FileType::Regular,
            FileType::Directory,
            FileType::Symlink,
            FileType::Fifo,
            FileType::Socket,
            FileType::CharDevice,
            FileType::BlockDevice,
        ] {
            assert_eq!(FileType::from_mode(kind.mode_bits() | 0o644), Some(kind));
        }
        assert_eq!(FileType::from_mode(0o644), None);
    }
}
