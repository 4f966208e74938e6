//! Namespace behaviour beyond the model test: times, xattrs, open
//! handles, strays, the purge queue, readdir offsets and persistence.

mod common;

use aspen_mds::namespace::{Namespace, NsOp, NsReply, SessionId};
use aspen_proto::acl::{self, AclEntry, PosixAcl, tag};
use aspen_proto::fs::{
    Caller, FileType, SetAttr, TimeSet, Timestamp, mode, open_flags, rename_flags, xattr_flags,
};
use aspen_proto::{Errno, InodeId};
use common::*;

fn root() -> Caller {
    Caller::root()
}

#[test]
fn mkdir_and_mknod_set_links_owner_and_times() {
    let mut fs = Fs::new();
    let alice = user(1000);
    let dir = fs.mkdir(&alice, ROOT, "d", 0o755).unwrap();
    assert_eq!(
        (dir.kind, dir.nlink, dir.uid, dir.gid, dir.perm),
        (FileType::Directory, 2, 1000, 1000, 0o755)
    );
    assert_eq!(fs.getattr(ROOT).unwrap().nlink, 3);
    assert_eq!(
        fs.getattr(ROOT).unwrap().mtime,
        dir.ctime,
        "parent mtime moves with the entry"
    );
    let fifo = fs
        .mknod(&alice, dir.ino, "f", mode::S_IFIFO | 0o644)
        .unwrap();
    assert_eq!(fifo.kind, FileType::Fifo);
    assert_eq!(
        fs.mknod(&alice, dir.ino, "c", mode::S_IFCHR | 0o644),
        Err(Errno::EPERM)
    );
    assert_eq!(
        fs.mknod(&root(), dir.ino, "c", mode::S_IFCHR | 0o644)
            .unwrap()
            .kind,
        FileType::CharDevice
    );
    assert_eq!(fs.mknod(&alice, dir.ino, "f", 0o644), Err(Errno::EEXIST));
    assert_eq!(
        fs.mknod(&alice, dir.ino, &"x".repeat(256), 0o644),
        Err(Errno::ENAMETOOLONG)
    );
    assert_eq!(
        fs.mknod(&user(1001), dir.ino, "g", 0o644),
        Err(Errno::EACCES)
    );
    assert_eq!(fs.mknod(&alice, fifo.ino, "g", 0o644), Err(Errno::ENOTDIR));
    assert_eq!(fs.names(dir.ino), vec!["f", "c"]);
}

#[test]
fn umask_applies_and_setgid_directories_are_inherited() {
    let mut fs = Fs::new();
    let op = NsOp::Mkdir {
        parent: ROOT,
        name: b"g".to_vec(),
        mode: 0o2777,
        umask: 0o022,
    };
    fs.op(&root(), op).unwrap();
    let dir = fs.lookup(&root(), ROOT, "g").unwrap();
    assert_eq!(
        dir.perm, 0o755,
        "mkdir drops setgid from the mode and applies the umask"
    );
    fs.setattr(
        &root(),
        dir.ino,
        SetAttr {
            mode: Some(0o2777),
            gid: Some(50),
            ..Default::default()
        },
    )
    .unwrap();
    let sub = fs.mkdir(&user(7), dir.ino, "sub", 0o755).unwrap();
    assert_eq!((sub.gid, sub.perm), (50, 0o2755));
    let file = fs.mknod(&user(7), dir.ino, "f", 0o2644).unwrap();
    assert_eq!(
        (file.gid, file.perm),
        (50, 0o644),
        "not in group 50: no setgid file"
    );
}

#[test]
fn symlinks_and_hard_links() {
    let mut fs = Fs::new();
    let link = fs.symlink(&root(), ROOT, "l", "target/path").unwrap();
    assert_eq!(
        (link.kind, link.size, link.perm),
        (FileType::Symlink, 11, 0o777)
    );
    assert_eq!(
        fs.ns.readlink(link.ino).unwrap(),
        Ok(b"target/path".to_vec())
    );
    assert_eq!(
        fs.symlink(&root(), ROOT, "long", &"x".repeat(4096)),
        Err(Errno::ENAMETOOLONG)
    );
    let file = fs.mknod(&root(), ROOT, "f", 0o644).unwrap();
    assert_eq!(fs.ns.readlink(file.ino).unwrap(), Err(Errno::EINVAL));
    let linked = fs.link(&root(), file.ino, ROOT, "f2").unwrap();
    assert_eq!(linked.nlink, 2);
    assert!(linked.ctime > file.ctime);
    let dir = fs.mkdir(&root(), ROOT, "d", 0o755).unwrap();
    assert_eq!(fs.link(&root(), dir.ino, ROOT, "d2"), Err(Errno::EPERM));
    fs.unlink(&root(), ROOT, "f").unwrap();
    assert_eq!(fs.getattr(file.ino).unwrap().nlink, 1);
    assert_eq!(fs.lookup(&root(), ROOT, "f2").unwrap().ino, file.ino);
}

#[test]
fn unlink_and_rmdir_errors() {
    let mut fs = Fs::new();
    let dir = fs.mkdir(&root(), ROOT, "d", 0o755).unwrap();
    fs.mknod(&root(), dir.ino, "f", 0o644).unwrap();
    assert_eq!(fs.unlink(&root(), ROOT, "d"), Err(Errno::EISDIR));
    assert_eq!(fs.rmdir(&root(), dir.ino, "f"), Err(Errno::ENOTDIR));
    assert_eq!(fs.rmdir(&root(), ROOT, "d"), Err(Errno::ENOTEMPTY));
    assert_eq!(fs.rmdir(&root(), dir.ino, "."), Err(Errno::EINVAL));
    assert_eq!(fs.rmdir(&root(), dir.ino, ".."), Err(Errno::ENOTEMPTY));
    assert_eq!(fs.unlink(&root(), dir.ino, "missing"), Err(Errno::ENOENT));
    assert_eq!(fs.unlink(&user(5), dir.ino, "f"), Err(Errno::EACCES));
    fs.unlink(&root(), dir.ino, "f").unwrap();
    fs.rmdir(&root(), ROOT, "d").unwrap();
    assert_eq!(fs.getattr(dir.ino), Err(Errno::ENOENT));
    assert_eq!(fs.getattr(ROOT).unwrap().nlink, 2);
}

#[test]
fn sticky_directories_keep_other_users_files() {
    let mut fs = Fs::new();
    let tmp = fs.mkdir(&root(), ROOT, "tmp", 0o1777).unwrap();
    fs.mknod(&user(1), tmp.ino, "mine", 0o644).unwrap();
    assert_eq!(fs.unlink(&user(2), tmp.ino, "mine"), Err(Errno::EPERM));
    assert_eq!(
        fs.rename(&user(2), tmp.ino, "mine", tmp.ino, "theirs", 0),
        Err(Errno::EPERM)
    );
    fs.unlink(&user(1), tmp.ino, "mine").unwrap();
}

#[test]
fn rename_overwrites_and_moves_directories() {
    let mut fs = Fs::new();
    let a = fs.mkdir(&root(), ROOT, "a", 0o755).unwrap();
    let b = fs.mkdir(&root(), ROOT, "b", 0o755).unwrap();
    let f = fs.mknod(&root(), a.ino, "f", 0o644).unwrap();
    let g = fs.mknod(&root(), b.ino, "g", 0o644).unwrap();
    fs.rename(&root(), a.ino, "f", b.ino, "g", 0).unwrap();
    assert_eq!(fs.lookup(&root(), b.ino, "g").unwrap().ino, f.ino);
    assert_eq!(
        fs.getattr(g.ino),
        Err(Errno::ENOENT),
        "the replaced file is gone"
    );
    assert!(
        fs.getattr(f.ino).unwrap().ctime > f.ctime,
        "rename moves ctime"
    );

    let sub = fs.mkdir(&root(), a.ino, "sub", 0o755).unwrap();
    fs.rename(&root(), a.ino, "sub", b.ino, "sub", 0).unwrap();
    assert_eq!(
        (
            fs.getattr(a.ino).unwrap().nlink,
            fs.getattr(b.ino).unwrap().nlink
        ),
        (2, 3)
    );
    assert_eq!(fs.lookup(&root(), sub.ino, "..").unwrap().ino, b.ino);
    assert_eq!(
        fs.rename(&root(), ROOT, "b", sub.ino, "x", 0),
        Err(Errno::EINVAL),
        "into its own subtree"
    );
    assert_eq!(
        fs.rename(&root(), b.ino, "g", b.ino, "sub", 0),
        Err(Errno::EISDIR)
    );
    assert_eq!(
        fs.rename(&root(), b.ino, "sub", b.ino, "g", 0),
        Err(Errno::ENOTDIR)
    );
    fs.mknod(&root(), sub.ino, "inner", 0o644).unwrap();
    assert_eq!(
        fs.rename(&root(), ROOT, "a", b.ino, "sub", 0),
        Err(Errno::ENOTEMPTY)
    );
    assert_eq!(
        fs.rename(
            &root(),
            b.ino,
            "g",
            b.ino,
            "sub",
            rename_flags::RENAME_NOREPLACE
        ),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        fs.rename(
            &root(),
            b.ino,
            "g",
            b.ino,
            "nope",
            rename_flags::RENAME_EXCHANGE
        ),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        fs.rename(&root(), b.ino, "g", b.ino, "x", 3),
        Err(Errno::EINVAL)
    );
    // An empty directory over an empty directory.
    fs.mkdir(&root(), a.ino, "empty1", 0o755).unwrap();
    let e2 = fs.mkdir(&root(), b.ino, "empty2", 0o755).unwrap();
    fs.rename(&root(), a.ino, "empty1", b.ino, "empty2", 0)
        .unwrap();
    assert_eq!(fs.getattr(e2.ino), Err(Errno::ENOENT));
    assert_eq!(
        (
            fs.getattr(a.ino).unwrap().nlink,
            fs.getattr(b.ino).unwrap().nlink
        ),
        (2, 4)
    );
}

#[test]
fn rename_exchange_swaps_a_file_and_a_directory() {
    let mut fs = Fs::new();
    let a = fs.mkdir(&root(), ROOT, "a", 0o755).unwrap();
    let b = fs.mkdir(&root(), ROOT, "b", 0o755).unwrap();
    let file = fs.mknod(&root(), a.ino, "x", 0o644).unwrap();
    let dir = fs.mkdir(&root(), b.ino, "y", 0o755).unwrap();
    fs.rename(
        &root(),
        a.ino,
        "x",
        b.ino,
        "y",
        rename_flags::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(fs.lookup(&root(), a.ino, "x").unwrap().ino, dir.ino);
    assert_eq!(fs.lookup(&root(), b.ino, "y").unwrap().ino, file.ino);
    assert_eq!(
        (
            fs.getattr(a.ino).unwrap().nlink,
            fs.getattr(b.ino).unwrap().nlink
        ),
        (3, 2)
    );
    assert_eq!(fs.lookup(&root(), dir.ino, "..").unwrap().ino, a.ino);
}

#[test]
fn hard_links_renamed_onto_each_other_stay() {
    let mut fs = Fs::new();
    let f = fs.mknod(&root(), ROOT, "f", 0o644).unwrap();
    fs.link(&root(), f.ino, ROOT, "g").unwrap();
    fs.rename(&root(), ROOT, "f", ROOT, "g", 0).unwrap();
    assert_eq!(fs.names(ROOT), vec!["f", "g"]);
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 2);
}

#[test]
fn setattr_rules() {
    let mut fs = Fs::new();
    let alice = user(1000);
    let file = fs.mknod(&alice, ROOT, "f", 0o6755).unwrap();
    assert_eq!(
        fs.setattr(
            &user(1001),
            file.ino,
            SetAttr {
                mode: Some(0o777),
                ..Default::default()
            }
        ),
        Err(Errno::EPERM)
    );
    assert_eq!(
        fs.setattr(
            &alice,
            file.ino,
            SetAttr {
                uid: Some(1001),
                ..Default::default()
            }
        ),
        Err(Errno::EPERM)
    );
    let changed = fs
        .setattr(
            &root(),
            file.ino,
            SetAttr {
                uid: Some(1001),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (changed.uid, changed.perm),
        (1001, 0o0755),
        "chown clears setuid and (group-exec) setgid"
    );
    assert!(changed.ctime > file.ctime);
    // Truncate needs write permission unless done through a writable handle.
    fs.setattr(
        &root(),
        file.ino,
        SetAttr {
            mode: Some(0o644),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fs.truncate(&user(5), file.ino, 10), Err(Errno::EACCES));
    let grown = fs
        .setattr(
            &user(5),
            file.ino,
            SetAttr {
                size: Some(10),
                through_writable_handle: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(grown.size, 10);
    assert_eq!(grown.mtime, grown.ctime);
    let dir = fs.mkdir(&root(), ROOT, "d", 0o755).unwrap();
    assert_eq!(fs.truncate(&root(), dir.ino, 0), Err(Errno::EISDIR));
    let fifo = fs.mknod(&root(), ROOT, "p", mode::S_IFIFO | 0o666).unwrap();
    assert_eq!(fs.truncate(&root(), fifo.ino, 0), Err(Errno::EINVAL));
    // Times: explicit values only by the owner; "now" by anyone who may write.
    let at = TimeSet::At(Timestamp::new(42, 7));
    assert_eq!(
        fs.setattr(
            &user(5),
            fifo.ino,
            SetAttr {
                mtime: Some(at),
                ..Default::default()
            }
        ),
        Err(Errno::EPERM)
    );
    let now = fs
        .setattr(
            &user(5),
            fifo.ino,
            SetAttr {
                atime: Some(TimeSet::Now),
                mtime: Some(TimeSet::Now),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(now.mtime, now.ctime);
    let set = fs
        .setattr(
            &root(),
            fifo.ino,
            SetAttr {
                mtime: Some(at),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(set.mtime, Timestamp::new(42, 7));
    assert_eq!(set.atime, now.atime, "UTIME_OMIT leaves atime");
}

#[test]
fn xattrs_follow_linux_rules() {
    let mut fs = Fs::new();
    let file = fs.mknod(&user(1000), ROOT, "f", 0o644).unwrap();
    let set = |fs: &mut Fs, c: &Caller, name: &str, value: &[u8], flags: u32| {
        fs.op(
            c,
            NsOp::SetXattr {
                ino: file.ino,
                name: name.into(),
                value: value.to_vec(),
                flags,
            },
        )
        .map(drop)
    };
    set(&mut fs, &user(1000), "user.color", b"blue", 0).unwrap();
    assert!(fs.getattr(file.ino).unwrap().ctime > file.ctime);
    assert_eq!(
        fs.ns
            .getxattr(file.ino, b"user.color", &user(1001))
            .unwrap(),
        Ok(b"blue".to_vec())
    );
    assert_eq!(
        set(
            &mut fs,
            &user(1000),
            "user.color",
            b"red",
            xattr_flags::XATTR_CREATE
        ),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        set(
            &mut fs,
            &user(1000),
            "user.size",
            b"1",
            xattr_flags::XATTR_REPLACE
        ),
        Err(Errno::ENODATA)
    );
    assert_eq!(
        set(&mut fs, &user(1001), "user.color", b"red", 0),
        Err(Errno::EACCES)
    );
    assert_eq!(
        set(&mut fs, &user(1000), "trusted.x", b"1", 0),
        Err(Errno::EPERM)
    );
    set(&mut fs, &root(), "trusted.x", b"1", 0).unwrap();
    assert_eq!(
        fs.ns.getxattr(file.ino, b"trusted.x", &user(1000)).unwrap(),
        Err(Errno::ENODATA)
    );
    assert_eq!(
        fs.ns.listxattr(file.ino, &user(1000)).unwrap(),
        Ok(vec![b"user.color".to_vec()])
    );
    assert_eq!(
        fs.ns.listxattr(file.ino, &root()).unwrap().unwrap().len(),
        2
    );
    assert_eq!(
        set(&mut fs, &root(), "user.big", &vec![0; 65537], 0),
        Err(Errno::E2BIG)
    );
    assert_eq!(
        set(&mut fs, &root(), "other.x", b"1", 0),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(set(&mut fs, &root(), "user.", b"1", 0), Err(Errno::EINVAL));
    assert_eq!(
        set(
            &mut fs,
            &root(),
            &format!("user.{}", "n".repeat(251)),
            b"1",
            0
        ),
        Err(Errno::ERANGE)
    );
    let link = fs.symlink(&root(), ROOT, "l", "f").unwrap();
    let on_link = NsOp::SetXattr {
        ino: link.ino,
        name: b"user.a".to_vec(),
        value: b"1".to_vec(),
        flags: 0,
    };
    assert_eq!(fs.op(&root(), on_link).map(drop), Err(Errno::EPERM));
    fs.op(
        &user(1000),
        NsOp::RemoveXattr {
            ino: file.ino,
            name: b"user.color".to_vec(),
        },
    )
    .unwrap();
    assert_eq!(
        fs.op(
            &user(1000),
            NsOp::RemoveXattr {
                ino: file.ino,
                name: b"user.color".to_vec()
            }
        )
        .map(drop),
        Err(Errno::ENODATA)
    );
}

#[test]
fn an_open_unlinked_file_stays_until_its_last_release() {
    let mut fs = Fs::new();
    let (file, handle) = fs
        .create(&root(), ROOT, "f", 0o644, open_flags::O_RDWR)
        .unwrap();
    fs.truncate(&root(), file.ino, 5 << 20).unwrap();
    let second = fs.open(&root(), file.ino, open_flags::O_RDONLY).unwrap();
    fs.unlink(&root(), ROOT, "f").unwrap();
    assert_eq!(fs.lookup(&root(), ROOT, "f"), Err(Errno::ENOENT));
    assert_eq!(
        fs.getattr(file.ino).unwrap().nlink,
        0,
        "still there while open"
    );
    assert_eq!(fs.ns.strays().unwrap(), vec![file.ino]);
    assert!(fs.ns.purge_queue().unwrap().is_empty());
    fs.release(handle).unwrap();
    assert_eq!(fs.ns.strays().unwrap(), vec![file.ino]);
    fs.release(second).unwrap();
    assert!(fs.ns.strays().unwrap().is_empty());
    assert_eq!(fs.getattr(file.ino), Err(Errno::ENOENT));
    let purge = fs.ns.purge_queue().unwrap();
    assert_eq!(purge.len(), 1);
    assert_eq!(
        (purge[0].ino, purge[0].keep_size, purge[0].old_size),
        (file.ino, 0, 5 << 20)
    );
    assert_eq!(fs.release(second), Err(Errno::EBADF));
}

#[test]
fn the_purge_of_a_deleted_file_covers_the_most_it_ever_held() {
    let mut fs = Fs::new();
    let file = fs.mknod(&root(), ROOT, "f", 0o644).unwrap();
    fs.truncate(&root(), file.ino, 9 << 20).unwrap();
    fs.truncate(&root(), file.ino, 1 << 20).unwrap();
    fs.truncate(&root(), file.ino, 2 << 20).unwrap();
    let handle = fs
        .open(
            &root(),
            file.ino,
            open_flags::O_WRONLY | open_flags::O_TRUNC,
        )
        .unwrap();
    assert_eq!(fs.getattr(file.ino).unwrap().size, 0);
    assert!(
        fs.ns.purge_queue().unwrap().is_empty(),
        "truncation is the client's to carry out"
    );
    fs.release(handle).unwrap();
    fs.unlink(&root(), ROOT, "f").unwrap();
    let purge: Vec<(u64, u64)> = fs
        .ns
        .purge_queue()
        .unwrap()
        .iter()
        .map(|p| (p.keep_size, p.old_size))
        .collect();
    assert_eq!(purge, vec![(0, 9 << 20)]);
}

#[test]
fn create_and_open_check_permissions_and_flags() {
    let mut fs = Fs::new();
    let (file, _) = fs
        .create(&user(1000), ROOT, "ro", 0o444, open_flags::O_WRONLY)
        .unwrap();
    assert_eq!(
        file.perm, 0o444,
        "the creator may write a file it made read-only"
    );
    assert_eq!(
        fs.open(&user(1000), file.ino, open_flags::O_WRONLY),
        Err(Errno::EACCES)
    );
    assert_eq!(
        fs.create(
            &user(1000),
            ROOT,
            "ro",
            0o644,
            open_flags::O_CREAT | open_flags::O_EXCL
        )
        .map(drop),
        Err(Errno::EEXIST)
    );
    let dir = fs.mkdir(&root(), ROOT, "d", 0o755).unwrap();
    assert_eq!(
        fs.open(&root(), dir.ino, open_flags::O_RDWR),
        Err(Errno::EISDIR)
    );
    assert_eq!(
        fs.open(&root(), file.ino, open_flags::O_DIRECTORY),
        Err(Errno::ENOTDIR)
    );
    assert!(
        fs.open(
            &root(),
            dir.ino,
            open_flags::O_RDONLY | open_flags::O_DIRECTORY
        )
        .is_ok()
    );
}

#[test]
fn ending_a_session_releases_its_handles() {
    let mut fs = Fs::new();
    fs.session = SessionId(7);
    let (file, _) = fs
        .create(&root(), ROOT, "f", 0o644, open_flags::O_RDWR)
        .unwrap();
    fs.unlink(&root(), ROOT, "f").unwrap();
    assert_eq!(fs.ns.strays().unwrap(), vec![file.ino]);
    fs.op(
        &root(),
        NsOp::EndSession {
            session: SessionId(7),
        },
    )
    .unwrap();
    assert!(fs.ns.strays().unwrap().is_empty());
    assert_eq!(fs.getattr(file.ino), Err(Errno::ENOENT));
}

#[test]
fn readdir_offsets_survive_changes_between_calls() {
    let mut fs = Fs::new();
    let dir = fs.mkdir(&root(), ROOT, "d", 0o755).unwrap();
    for i in 0..100 {
        fs.mknod(&root(), dir.ino, &format!("f{i:03}"), 0o644)
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut offset = 0;
    let mut round = 0;
    loop {
        let batch = fs.readdir(&root(), dir.ino, offset, 10).unwrap();
        if batch.is_empty() {
            break;
        }
        offset = batch.last().unwrap().offset;
        seen.extend(
            batch
                .into_iter()
                .map(|e| String::from_utf8(e.name).unwrap()),
        );
        // Between calls: remove an entry not yet read and one already read, add one.
        fs.unlink(&root(), dir.ino, &format!("f{:03}", 99 - round))
            .unwrap();
        if round > 0 {
            fs.unlink(&root(), dir.ino, &format!("f{:03}", round))
                .unwrap();
        }
        if round < 5 {
            fs.mknod(&root(), dir.ino, &format!("new{round}"), 0o644)
                .unwrap();
        }
        round += 1;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no entry twice");
    assert_eq!(&seen[..2], &[".", ".."]);
    for i in 0..5 {
        assert!(
            seen.contains(&format!("new{i}")),
            "entries added behind the cursor are seen"
        );
    }
    // Every entry that existed throughout was returned.
    for i in 0..100 {
        let name = format!("f{i:03}");
        let removed_unread = i > 99 - round;
        if !removed_unread {
            assert!(seen.contains(&name), "{name} skipped");
        }
    }
}

#[test]
fn a_failed_operation_changes_nothing() {
    let mut fs = Fs::new();
    let dir = fs.mkdir(&root(), ROOT, "d", 0o755).unwrap();
    fs.mknod(&root(), dir.ino, "f", 0o644).unwrap();
    let before = (
        fs.getattr(ROOT).unwrap(),
        fs.getattr(dir.ino).unwrap(),
        fs.names(dir.ino),
    );
    assert_eq!(
        fs.rename(&root(), ROOT, "d", dir.ino, "inside", 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(fs.mkdir(&user(9), dir.ino, "x", 0o755), Err(Errno::EACCES));
    let after = (
        fs.getattr(ROOT).unwrap(),
        fs.getattr(dir.ino).unwrap(),
        fs.names(dir.ino),
    );
    assert_eq!(before, after);
    // A failed creation does not use up an inode number.
    let next = fs.mknod(&root(), ROOT, "g", 0o644).unwrap();
    assert_eq!(next.ino, InodeId(dir.ino.0 + 2));
}

#[test]
fn the_namespace_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns.db");
    let ino = {
        let mut fs = Fs::with(Namespace::open(&path).unwrap(), 0o755);
        let d = fs.mkdir(&root(), ROOT, "kept", 0o700).unwrap();
        fs.op(
            &root(),
            NsOp::SetXattr {
                ino: d.ino,
                name: b"user.k".to_vec(),
                value: b"v".to_vec(),
                flags: 0,
            },
        )
        .unwrap();
        d.ino
    };
    let ns = Namespace::open(&path).unwrap();
    let found = ns.lookup(ROOT, b"kept", &root()).unwrap().unwrap();
    assert_eq!((found.ino, found.perm), (ino, 0o700));
    assert_eq!(
        ns.getxattr(ino, b"user.k", &root()).unwrap(),
        Ok(b"v".to_vec())
    );
    let format = NsOp::Format {
        mode: 0o755,
        uid: 0,
        gid: 0,
        layout: Default::default(),
    };
    let ctx = aspen_mds::namespace::OpContext {
        caller: root(),
        now: Timestamp::new(1, 0),
        session: SessionId(1),
    };
    let mut ns = ns;
    assert_eq!(
        ns.apply(&format, &ctx).unwrap(),
        Err(Errno::EEXIST),
        "format happens once"
    );
}

fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let entries = entries
        .iter()
        .map(|&(tag, perm, id)| AclEntry { tag, perm, id })
        .collect();
    PosixAcl::new(entries).unwrap().to_xattr()
}

fn set_xattr(
    fs: &mut Fs,
    c: &Caller,
    ino: InodeId,
    name: &[u8],
    value: Vec<u8>,
) -> Result<(), Errno> {
    fs.op(
        c,
        NsOp::SetXattr {
            ino,
            name: name.to_vec(),
            value,
            flags: 0,
        },
    )
    .map(drop)
}

const NONE: u32 = u32::MAX;

#[test]
fn symlinks_carry_no_acls() {
    let mut fs = Fs::new();
    let link = fs.symlink(&root(), ROOT, "l", "target").unwrap();
    let acl = acl_xattr(&[
        (tag::USER_OBJ, 6, NONE),
        (tag::GROUP_OBJ, 4, NONE),
        (tag::OTHER, 4, NONE),
    ]);
    assert_eq!(
        set_xattr(&mut fs, &root(), link.ino, acl::XATTR_ACCESS, acl),
        Err(Errno::EOPNOTSUPP)
    );
}

#[test]
fn an_access_acl_grants_named_users_and_groups_and_tracks_the_mode() {
    let mut fs = Fs::new();
    let file = fs.mknod(&user(1000), ROOT, "f", 0o600).unwrap();
    let acl = acl_xattr(&[
        (tag::USER_OBJ, 6, NONE),
        (tag::USER, 4, 2000),
        (tag::GROUP_OBJ, 0, NONE),
        (tag::GROUP, 6, 3000),
        (tag::MASK, 6, NONE),
        (tag::OTHER, 0, NONE),
    ]);
    assert_eq!(
        set_xattr(
            &mut fs,
            &user(1001),
            file.ino,
            acl::XATTR_ACCESS,
            acl.clone()
        ),
        Err(Errno::EPERM),
        "only the owner sets an ACL"
    );
    set_xattr(
        &mut fs,
        &user(1000),
        file.ino,
        acl::XATTR_ACCESS,
        acl.clone(),
    )
    .unwrap();
    let after = fs.getattr(file.ino).unwrap();
    assert_eq!(after.perm, 0o660, "the group bits are the mask");
    assert!(after.ctime > file.ctime);
    assert_eq!(
        fs.ns
            .getxattr(file.ino, acl::XATTR_ACCESS, &user(5))
            .unwrap(),
        Ok(acl)
    );
    assert_eq!(
        fs.ns.listxattr(file.ino, &user(5)).unwrap(),
        Ok(vec![acl::XATTR_ACCESS.to_vec()])
    );
    let read = aspen_proto::fs::access::R_OK;
    let write = aspen_proto::fs::access::W_OK;
    assert_eq!(fs.ns.access(file.ino, read, &user(2000)).unwrap(), Ok(()));
    assert_eq!(
        fs.ns.access(file.ino, write, &user(2000)).unwrap(),
        Err(Errno::EACCES)
    );
    let in_group = Caller::new(4000, 4000, vec![3000]);
    assert_eq!(
        fs.ns.access(file.ino, read | write, &in_group).unwrap(),
        Ok(())
    );
    assert_eq!(
        fs.ns.access(file.ino, read, &user(4001)).unwrap(),
        Err(Errno::EACCES)
    );
    // chmod g-w narrows the mask, and with it the named entries.
    let chmod = SetAttr {
        mode: Some(0o640),
        ..SetAttr::default()
    };
    fs.setattr(&user(1000), file.ino, chmod).unwrap();
    assert_eq!(
        fs.ns.access(file.ino, write, &in_group).unwrap(),
        Err(Errno::EACCES)
    );
    // chmod g-rwx: the ACL is not consulted at all.
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    fs.setattr(&user(1000), file.ino, chmod).unwrap();
    assert_eq!(
        fs.ns.access(file.ino, read, &user(2000)).unwrap(),
        Err(Errno::EACCES)
    );
    // A minimal ACL is just a mode: it sets the bits and is not kept.
    let minimal = acl_xattr(&[
        (tag::USER_OBJ, 7, NONE),
        (tag::GROUP_OBJ, 5, NONE),
        (tag::OTHER, 4, NONE),
    ]);
    set_xattr(&mut fs, &user(1000), file.ino, acl::XATTR_ACCESS, minimal).unwrap();
    let after = fs.getattr(file.ino).unwrap();
    assert_eq!((after.perm, after.acl), (0o754, None));
    assert_eq!(
        fs.ns
            .getxattr(file.ino, acl::XATTR_ACCESS, &user(5))
            .unwrap(),
        Err(Errno::ENODATA)
    );
}

#[test]
fn malformed_acls_and_misplaced_defaults_get_linux_errnos() {
    let mut fs = Fs::new();
    let file = fs.mknod(&user(1000), ROOT, "f", 0o644).unwrap();
    let needs_mask = acl_bytes_unchecked(&[
        (tag::USER_OBJ, 7, NONE),
        (tag::USER, 7, 5),
        (tag::GROUP_OBJ, 7, NONE),
        (tag::OTHER, 7, NONE),
    ]);
    assert_eq!(
        set_xattr(
            &mut fs,
            &user(1000),
            file.ino,
            acl::XATTR_ACCESS,
            needs_mask
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        set_xattr(
            &mut fs,
            &user(1000),
            file.ino,
            acl::XATTR_ACCESS,
            vec![2, 0, 0]
        ),
        Err(Errno::EINVAL)
    );
    let default = acl_xattr(&[
        (tag::USER_OBJ, 7, NONE),
        (tag::GROUP_OBJ, 5, NONE),
        (tag::OTHER, 0, NONE),
    ]);
    assert_eq!(
        set_xattr(&mut fs, &user(1000), file.ino, acl::XATTR_DEFAULT, default),
        Err(Errno::EACCES),
        "default ACLs are for directories"
    );
    assert_eq!(
        set_xattr(&mut fs, &user(1000), file.ino, acl::XATTR_DEFAULT, vec![]),
        Ok(()),
        "removing a file's default ACL is a no-op"
    );
}

fn acl_bytes_unchecked(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut bytes = acl::XATTR_VERSION.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        bytes.extend_from_slice(&tag.to_le_bytes());
        bytes.extend_from_slice(&perm.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    bytes
}

#[test]
fn new_inodes_inherit_a_default_acl_instead_of_the_umask() {
    let mut fs = Fs::new();
    let dir = fs.mkdir(&user(1000), ROOT, "d", 0o755).unwrap();
    let default = acl_xattr(&[
        (tag::USER_OBJ, 7, NONE),
        (tag::USER, 7, 2000),
        (tag::GROUP_OBJ, 5, NONE),
        (tag::MASK, 7, NONE),
        (tag::OTHER, 0, NONE),
    ]);
    set_xattr(
        &mut fs,
        &user(1000),
        dir.ino,
        acl::XATTR_DEFAULT,
        default.clone(),
    )
    .unwrap();
    let create = |fs: &mut Fs, name: &str, kind: u32, mode: u32| {
        let op = if kind == mode::S_IFDIR {
            NsOp::Mkdir {
                parent: dir.ino,
                name: name.into(),
                mode,
                umask: 0o077,
            }
        } else {
            NsOp::Mknod {
                parent: dir.ino,
                name: name.into(),
                mode: kind | mode,
                umask: 0o077,
                rdev: 0,
            }
        };
        match fs.op(&user(1000), op).unwrap() {
            NsReply::Attr(attr) => attr,
            other => panic!("{other:?}"),
        }
    };
    let file = create(&mut fs, "f", mode::S_IFREG, 0o664);
    // The umask (077) is ignored; the mask is limited to the mode's group bits.
    assert_eq!(file.perm, 0o660);
    assert!(file.acl.is_some());
    assert_eq!(
        fs.ns
            .access(file.ino, aspen_proto::fs::access::W_OK, &user(2000))
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        fs.ns
            .getxattr(file.ino, acl::XATTR_DEFAULT, &user(1000))
            .unwrap(),
        Err(Errno::ENODATA),
        "files get no default ACL"
    );
    let sub = create(&mut fs, "sub", mode::S_IFDIR, 0o777);
    assert_eq!(sub.perm, 0o770);
    assert_eq!(
        fs.ns
            .getxattr(sub.ino, acl::XATTR_DEFAULT, &user(1000))
            .unwrap(),
        Ok(default),
        "directories pass the default ACL on"
    );
    // Without a default ACL the umask applies as before.
    let plain = fs
        .op(
            &user(1000),
            NsOp::Mknod {
                parent: ROOT,
                name: "plain".into(),
                mode: mode::S_IFREG | 0o666,
                umask: 0o022,
                rdev: 0,
            },
        )
        .unwrap();
    match plain {
        NsReply::Attr(attr) => assert_eq!((attr.perm, attr.acl), (0o644, None)),
        other => panic!("{other:?}"),
    }
}
