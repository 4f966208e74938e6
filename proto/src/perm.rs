//! Permission rules, as Linux applies them on ext4: owner/group/other
//! bits and POSIX ACLs, root's exceptions, the sticky bit, and what chmod, chown and
//! creation do to setuid/setgid. Pure functions over attributes.

use crate::fs::{Attr, Caller, FileType, access, mode};
use crate::{Errno, acl};

/// Whether `caller` may access `attr` for `mask` (a combination of
/// `R_OK`, `W_OK`, `X_OK`). Root may do anything but execute a file that
/// has no execute bit at all.
pub fn allowed(attr: &Attr, caller: &Caller, mask: u32) -> bool {
    if caller.is_root() {
        let needs_exec = mask & access::X_OK != 0;
        let any_exec = attr.perm & 0o111 != 0 || attr.kind == FileType::Directory;
        return !needs_exec || any_exec;
    }
    if caller.uid == attr.uid {
        return (attr.perm >> 6) & mask == mask;
    }
    if let Some(acl) = attr.acl.as_ref().filter(|_| acl::consulted(attr.perm)) {
        return acl.permits(attr.gid, caller, mask);
    }
    let granted = if caller.in_group(attr.gid) {
        (attr.perm >> 3) & 0o7
    } else {
        attr.perm & 0o7
    };
    granted & mask == mask
}

/// [`allowed`], as an `EACCES` error.
pub fn check(attr: &Attr, caller: &Caller, mask: u32) -> Result<(), Errno> {
    if allowed(attr, caller, mask) {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

/// Searching a directory (resolving a name in it).
pub fn check_search(dir: &Attr, caller: &Caller) -> Result<(), Errno> {
    if dir.kind != FileType::Directory {
        return Err(Errno::ENOTDIR);
    }
    check(dir, caller, access::X_OK)
}

/// Adding or removing entries of a directory.
pub fn check_modify_dir(dir: &Attr, caller: &Caller) -> Result<(), Errno> {
    if dir.kind != FileType::Directory {
        return Err(Errno::ENOTDIR);
    }
    check(dir, caller, access::W_OK | access::X_OK)
}

/// The sticky-bit rule: in a sticky directory only the owner of the entry,
/// the owner of the directory or root may remove or rename it.
pub fn check_sticky(dir: &Attr, victim: &Attr, caller: &Caller) -> Result<(), Errno> {
    let sticky = dir.perm & mode::S_ISVTX != 0;
    if sticky && !caller.is_root() && caller.uid != dir.uid && caller.uid != victim.uid {
        return Err(Errno::EPERM);
    }
    Ok(())
}

/// Only the owner or root may change mode, times explicitly, or xattrs of
/// some namespaces.
pub fn check_owner(attr: &Attr, caller: &Caller) -> Result<(), Errno> {
    if caller.is_root() || caller.uid == attr.uid {
        Ok(())
    } else {
        Err(Errno::EPERM)
    }
}

/// The permission bits a chmod to `requested` really sets: an unprivileged
/// caller outside the file's group cannot set setgid (it is dropped
/// silently, as Linux does).
pub fn chmod_bits(attr: &Attr, caller: &Caller, requested: u32) -> u32 {
    let mut perm = requested & mode::PERMISSIONS;
    if !caller.is_root() && !caller.in_group(attr.gid) {
        perm &= !mode::S_ISGID;
    }
    perm
}

/// Checks a chown: root may set anything; the owner may only give the file
/// to one of its own groups, keeping itself as owner.
pub fn check_chown(
    attr: &Attr,
    caller: &Caller,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), Errno> {
    if caller.is_root() {
        return Ok(());
    }
    let changes_owner = uid.is_some_and(|u| u != attr.uid);
    let group_ok = gid.is_none_or(|g| g == attr.gid || caller.in_group(g));
    if caller.uid != attr.uid || changes_owner || !group_ok {
        return Err(Errno::EPERM);
    }
    Ok(())
}

/// What a chown or a write does to setuid/setgid: setuid goes; setgid goes
/// only with group execute (without it, setgid marks mandatory locking).
/// Directories keep both.
pub fn drop_privileges(kind: FileType, perm: u32) -> u32 {
    if kind == FileType::Directory {
        return perm;
    }
    let mut perm = perm & !mode::S_ISUID;
    if perm & mode::S_IXGRP != 0 {
        perm &= !mode::S_ISGID;
    }
    perm
}

/// The access an open with `flags` asks for.
pub fn open_access(flags: u32) -> u32 {
    use crate::fs::open_flags;
    let mut mask = match flags & open_flags::O_ACCMODE {
        open_flags::O_RDONLY => access::R_OK,
        open_flags::O_WRONLY => access::W_OK,
        _ => access::R_OK | access::W_OK,
    };
    if flags & open_flags::O_TRUNC != 0 {
        mask |= access::W_OK;
    }
    mask
}

/// Whether `caller` may open `attr` with `flags`, as Linux decides.
pub fn check_open(attr: &Attr, caller: &Caller, flags: u32) -> Result<(), Errno> {
    use crate::fs::open_flags;
    if flags & open_flags::O_ACCMODE == open_flags::O_ACCMODE {
        return Err(Errno::EINVAL);
    }
    let writes = open_access(flags) & access::W_OK != 0;
    match attr.kind {
        FileType::Directory if writes => return Err(Errno::EISDIR),
        FileType::Symlink => return Err(Errno::ELOOP),
        kind if kind != FileType::Directory && flags & open_flags::O_DIRECTORY != 0 => {
            return Err(Errno::ENOTDIR);
        }
        _ => {}
    }
    check(attr, caller, open_access(flags))
}

/// Owner, group and setgid of a new inode in `parent`: the caller owns it;
/// in a setgid directory it takes the directory's group (and a new
/// directory stays setgid); a caller outside the resulting group cannot
/// create a setgid file.
pub fn new_inode_owner(
    parent: &Attr,
    caller: &Caller,
    kind: FileType,
    perm: u32,
) -> (u32, u32, u32) {
    let mut perm = perm & mode::PERMISSIONS;
    let gid = if parent.perm & mode::S_ISGID != 0 {
        if kind == FileType::Directory {
            perm |= mode::S_ISGID;
        }
        parent.gid
    } else {
        caller.gid
    };
    if kind != FileType::Directory && !caller.is_root() && !caller.in_group(gid) {
        perm &= !mode::S_ISGID;
    }
    (caller.uid, gid, perm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InodeId;
    use crate::fs::Timestamp;

    fn attr(kind: FileType, perm: u32, uid: u32, gid: u32) -> Attr {
        Attr {
            ino: InodeId(2),
            kind,
            perm,
            nlink: 1,
            uid,
            gid,
            size: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            rdev: 0,
            generation: 1,
            layout: Default::default(),
            acl: None,
        }
    }

    #[test]
    fn owner_group_other_bits() {
        let file = attr(FileType::Regular, 0o640, 10, 20);
        assert!(allowed(
            &file,
            &Caller::new(10, 99, vec![]),
            access::R_OK | access::W_OK
        ));
        assert!(allowed(&file, &Caller::new(11, 20, vec![]), access::R_OK));
        assert!(!allowed(&file, &Caller::new(11, 20, vec![]), access::W_OK));
        assert!(allowed(&file, &Caller::new(11, 5, vec![20]), access::R_OK));
        assert!(!allowed(&file, &Caller::new(11, 5, vec![]), access::R_OK));
        // The owner class applies even when it grants less than group.
        let odd = attr(FileType::Regular, 0o070, 10, 20);
        assert!(!allowed(&odd, &Caller::new(10, 20, vec![]), access::R_OK));
    }

    #[test]
    fn root_needs_some_execute_bit() {
        let root = Caller::root();
        assert!(allowed(
            &attr(FileType::Regular, 0, 1, 1),
            &root,
            access::R_OK | access::W_OK
        ));
        assert!(!allowed(
            &attr(FileType::Regular, 0o644, 1, 1),
            &root,
            access::X_OK
        ));
        assert!(allowed(
            &attr(FileType::Regular, 0o001, 1, 1),
            &root,
            access::X_OK
        ));
        assert!(allowed(
            &attr(FileType::Directory, 0, 1, 1),
            &root,
            access::X_OK
        ));
    }

    #[test]
    fn sticky_directories_protect_other_users_entries() {
        let dir = attr(FileType::Directory, 0o1777, 1, 1);
        let file = attr(FileType::Regular, 0o644, 2, 2);
        assert_eq!(
            check_sticky(&dir, &file, &Caller::new(3, 3, vec![])),
            Err(Errno::EPERM)
        );
        assert!(check_sticky(&dir, &file, &Caller::new(2, 3, vec![])).is_ok());
        assert!(check_sticky(&dir, &file, &Caller::new(1, 3, vec![])).is_ok());
        assert!(check_sticky(&dir, &file, &Caller::root()).is_ok());
    }

    #[test]
    fn chown_and_chmod_rules() {
        let file = attr(FileType::Regular, 0o6755, 10, 20);
        let owner = Caller::new(10, 20, vec![30]);
        assert!(check_chown(&file, &owner, None, Some(30)).is_ok());
        assert!(check_chown(&file, &owner, Some(10), Some(20)).is_ok());
        assert_eq!(
            check_chown(&file, &owner, Some(11), None),
            Err(Errno::EPERM)
        );
        assert_eq!(
            check_chown(&file, &owner, None, Some(40)),
            Err(Errno::EPERM)
        );
        assert_eq!(
            check_chown(&file, &Caller::new(11, 20, vec![]), None, Some(20)),
            Err(Errno::EPERM)
        );
        assert_eq!(drop_privileges(FileType::Regular, 0o6755), 0o0755);
        assert_eq!(drop_privileges(FileType::Regular, 0o6745), 0o2745);
        assert_eq!(drop_privileges(FileType::Directory, 0o6755), 0o6755);
        assert_eq!(
            chmod_bits(&file, &Caller::new(10, 1, vec![]), 0o2755),
            0o0755
        );
        assert_eq!(chmod_bits(&file, &owner, 0o2755), 0o2755);
    }

    #[test]
    fn setgid_directories_pass_their_group_on() {
        let dir = attr(FileType::Directory, 0o2775, 1, 50);
        let caller = Caller::new(7, 7, vec![]);
        assert_eq!(
            new_inode_owner(&dir, &caller, FileType::Directory, 0o755),
            (7, 50, 0o2755)
        );
        assert_eq!(
            new_inode_owner(&dir, &caller, FileType::Regular, 0o2644),
            (7, 50, 0o0644)
        );
        let plain = attr(FileType::Directory, 0o775, 1, 50);
        assert_eq!(
            new_inode_owner(&plain, &caller, FileType::Regular, 0o2644),
            (7, 7, 0o2644)
        );
    }
}
