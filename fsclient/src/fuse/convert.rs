//! Between FUSE's types and Aspen's: attributes, file types, times,
//! errnos, and the caller of a request (with its supplementary groups,
//! which FUSE does not carry: they are read from `/proc`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aspen_proto::fs::{Attr, Caller, FileType, MAX_GROUPS, TimeSet, Timestamp};
use aspen_proto::{Errno, InodeId};
use fuser::{FileAttr, INodeNo, Request, TimeOrNow};

/// The block size `stat` reports: the unit programs size their I/O by.
pub const PREFERRED_IO_SIZE: u32 = 1 << 20;

pub fn ino(node: INodeNo) -> InodeId {
    InodeId(node.0)
}

pub fn errno(errno: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(errno.code())
}

pub fn file_type(kind: FileType) -> fuser::FileType {
    match kind {
        FileType::Regular => fuser::FileType::RegularFile,
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
        FileType::CharDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
    }
}

fn system_time(at: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(at.nsec));
    if at.sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(at.sec as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(at.sec.unsigned_abs()) + nanos
    }
}

pub fn set_time(time: TimeOrNow) -> TimeSet {
    match time {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(at) => TimeSet::At(match at.duration_since(UNIX_EPOCH) {
            Ok(after) => Timestamp::new(after.as_secs() as i64, after.subsec_nanos()),
            Err(before) => {
                let before = before.duration();
                let (mut sec, mut nsec) = (-(before.as_secs() as i64), before.subsec_nanos());
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Timestamp::new(sec, nsec)
            }
        }),
    }
}

pub fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino.0),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: system_time(attr.atime),
        mtime: system_time(attr.mtime),
        ctime: system_time(attr.ctime),
        crtime: system_time(attr.ctime),
        kind: file_type(attr.kind),
        perm: attr.perm as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev as u32,
        blksize: PREFERRED_IO_SIZE,
        flags: 0,
    }
}

/// The caller of `req`: its uid and gid, and the supplementary groups of
/// the calling thread. Root's groups are never consulted (it passes every
/// group check), so they are not read.
pub fn caller_of(req: &Request) -> Caller {
    let groups = if req.uid() == 0 {
        Vec::new()
    } else {
        groups_of(req.pid())
    };
    Caller::new(req.uid(), req.gid(), groups)
}

/// The `Groups:` of a thread's `/proc` status (none if it is gone).
fn groups_of(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_ascii_whitespace()
                .filter_map(|g| g.parse().ok())
                .take(MAX_GROUPS)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_round_trip() {
        for at in [
            Timestamp::new(0, 0),
            Timestamp::new(1_700_000_000, 123),
            Timestamp::new(-1, 500_000_000),
            Timestamp::new(-86_400, 0),
        ] {
            let back = set_time(TimeOrNow::SpecificTime(system_time(at)));
            assert_eq!(back, TimeSet::At(at));
        }
    }

    #[test]
    fn this_threads_groups_are_read() {
        let groups = groups_of(std::process::id());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        assert_eq!(groups.len(), line.split_ascii_whitespace().count() - 1);
        assert!(groups_of(0).is_empty());
    }
}
