//! Creating names: format (the root), mknod, mkdir, symlink and link.

use aspen_proto::acl::PosixAcl;
use aspen_proto::fs::{Attr, FileType, MAX_NLINK, MAX_SYMLINK_LEN, mode, validate_name};
use aspen_proto::{Errno, FileLayout, InodeId};
use rusqlite::{Connection, OptionalExtension};

use crate::sql::CachedStatements;

use super::store::{self, NEXT_GENERATION, NEXT_INO};
use super::{NsReply, OpContext, OpResult, perm, touch_dir, xattr};

/// Creates the root directory; fails with `EEXIST` once formatted.
pub(super) fn format(
    conn: &Connection,
    ctx: &OpContext,
    perm_bits: u32,
    uid: u32,
    gid: u32,
    layout: FileLayout,
) -> OpResult<NsReply> {
    if store::load(conn, InodeId::ROOT).is_ok() {
        return Err(Errno::EEXIST.into());
    }
    let root = Attr {
        ino: InodeId::ROOT,
        kind: FileType::Directory,
        perm: perm_bits & mode::PERMISSIONS,
        nlink: 2,
        uid,
        gid,
        size: 0,
        atime: ctx.now,
        mtime: ctx.now,
        ctime: ctx.now,
        rdev: 0,
        generation: store::next_counter(conn, NEXT_GENERATION)?,
        layout,
        acl: None,
    };
    store::insert(conn, &root, Some(InodeId::ROOT))?;
    store::set_counter(conn, NEXT_INO, InodeId::ROOT.0 + 1)?;
    Ok(NsReply::Attr(root))
}

/// The checks every creation shares, in Linux's order: the parent is a
/// searchable directory, the name is free, the parent is writable and alive.
fn check_create(conn: &Connection, ctx: &OpContext, parent: &Attr, name: &[u8]) -> OpResult<()> {
    validate_name(name)?;
    perm::check_search(parent, &ctx.caller)?;
    if store::lookup(conn, parent.ino, name)?.is_some() {
        return Err(Errno::EEXIST.into());
    }
    perm::check_modify_dir(parent, &ctx.caller)?;
    if parent.nlink == 0 {
        return Err(Errno::ENOENT.into());
    }
    Ok(())
}

/// The mode a new inode gets: `requested` under the umask, or, in a
/// directory with a default ACL, under that ACL instead (no umask) with the
/// access ACL it inherits; a new directory also inherits the default ACL.
struct Inherited {
    perm: u32,
    acl: Option<PosixAcl>,
    default_acl: Option<PosixAcl>,
}

fn inherit(
    conn: &Connection,
    parent: &Attr,
    kind: FileType,
    requested: u32,
    umask: u32,
) -> OpResult<Inherited> {
    let default_acl = match kind {
        FileType::Symlink => None,
        _ => xattr::default_acl(conn, parent.ino)?,
    };
    let Some(default_acl) = default_acl else {
        return Ok(Inherited {
            perm: requested & !umask,
            acl: None,
            default_acl: None,
        });
    };
    let mut acl = default_acl.clone();
    let perm = acl.create_masq(requested);
    Ok(Inherited {
        perm,
        acl: (!acl.is_minimal()).then_some(acl),
        default_acl: (kind == FileType::Directory).then_some(default_acl),
    })
}

/// Makes a new inode of `kind` named `name` in `parent`, with the
/// `requested` mode bits (before the umask); its number and generation are
/// `identity` (reserved by the session) or drawn from the counters.
#[allow(clippy::too_many_arguments)]
fn make(
    conn: &Connection,
    ctx: &OpContext,
    parent_ino: InodeId,
    name: &[u8],
    kind: FileType,
    requested: u32,
    umask: u32,
    rdev: u64,
    identity: Option<(InodeId, u64)>,
) -> OpResult<Attr> {
    let mut parent = store::load(conn, parent_ino)?;
    check_create(conn, ctx, &parent, name)?;
    if kind == FileType::Directory && parent.nlink >= MAX_NLINK {
        return Err(Errno::EMLINK.into());
    }
    let inherited = inherit(conn, &parent, kind, requested, umask)?;
    let (uid, gid, perm_bits) = perm::new_inode_owner(&parent, &ctx.caller, kind, inherited.perm);
    let (ino, generation) = match identity {
        Some(given) => given,
        None => (
            InodeId(store::next_counter(conn, NEXT_INO)?),
            store::next_counter(conn, NEXT_GENERATION)?,
        ),
    };
    let attr = Attr {
        ino,
        kind,
        perm: perm_bits,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        size: 0,
        atime: ctx.now,
        mtime: ctx.now,
        ctime: ctx.now,
        rdev,
        generation,
        layout: parent.layout,
        acl: inherited.acl,
    };
    let dir_parent = (kind == FileType::Directory).then_some(parent.ino);
    store::insert(conn, &attr, dir_parent)?;
    if let Some(default_acl) = &inherited.default_acl {
        xattr::set_default_acl(conn, attr.ino, default_acl)?;
    }
    store::add_entry(conn, parent.ino, name, attr.ino)?;
    if kind == FileType::Directory {
        parent.nlink += 1;
    }
    touch_dir(conn, &mut parent, ctx.now)?;
    Ok(attr)
}

pub(super) fn mknod(
    conn: &Connection,
    ctx: &OpContext,
    parent: InodeId,
    name: &[u8],
    mode_bits: u32,
    umask: u32,
    rdev: u64,
) -> OpResult<Attr> {
    let kind = match mode_bits & mode::S_IFMT {
        0 => FileType::Regular,
        bits => FileType::from_mode(bits).ok_or(Errno::EINVAL)?,
    };
    match kind {
        FileType::Directory | FileType::Symlink => return Err(Errno::EPERM.into()),
        FileType::CharDevice | FileType::BlockDevice if !ctx.caller.is_root() => {
            return Err(Errno::EPERM.into());
        }
        _ => {}
    }
    let rdev = if matches!(kind, FileType::CharDevice | FileType::BlockDevice) {
        rdev
    } else {
        0
    };
    make(
        conn,
        ctx,
        parent,
        name,
        kind,
        mode_bits & mode::PERMISSIONS,
        umask,
        rdev,
        None,
    )
}

/// Reserves up to `count` inode numbers, with their generations, for the
/// session of `ctx`.
pub(super) fn reserve(
    conn: &Connection,
    ctx: &OpContext,
    count: u32,
) -> OpResult<Vec<(InodeId, u64)>> {
    if ctx.session.0 == 0 {
        return Err(Errno::EINVAL.into());
    }
    let count = count.min(aspen_proto::caps::MAX_RESERVE);
    let mut reserved = Vec::with_capacity(count as usize);
    let first_ino = store::take_counters(conn, NEXT_INO, count.into())?;
    let first_generation = store::take_counters(conn, NEXT_GENERATION, count.into())?;
    for taken in 0..u64::from(count) {
        let ino = InodeId(first_ino + taken);
        let generation = first_generation + taken;
        conn.execute_cached(
            "INSERT INTO reserved_inodes (ino, session, generation) VALUES (?1, ?2, ?3)",
            rusqlite::params![ino.0 as i64, ctx.session.0 as i64, generation as i64],
        )?;
        reserved.push((ino, generation));
    }
    Ok(reserved)
}

/// Creates regular file `name` in `parent` as `ino`, which the session of
/// `ctx` reserved (`EINVAL` otherwise), as at `ctx.now`.
pub(super) fn create_reserved(
    conn: &Connection,
    ctx: &OpContext,
    parent: InodeId,
    name: &[u8],
    (mode_bits, umask): (u32, u32),
    ino: InodeId,
) -> OpResult<Attr> {
    // Taken whatever follows: a failed create rolls the whole op back.
    let generation: Option<i64> = conn
        .query_row_cached(
            "DELETE FROM reserved_inodes WHERE ino = ?1 AND session = ?2 RETURNING generation",
            rusqlite::params![ino.0 as i64, ctx.session.0 as i64],
            |r| r.get(0),
        )
        .optional()?;
    let Some(generation) = generation else {
        return Err(Errno::EINVAL.into());
    };
    make(
        conn,
        ctx,
        parent,
        name,
        FileType::Regular,
        mode_bits & mode::PERMISSIONS,
        umask,
        0,
        Some((ino, generation as u64)),
    )
}

pub(super) fn mkdir(
    conn: &Connection,
    ctx: &OpContext,
    parent: InodeId,
    name: &[u8],
    mode_bits: u32,
    umask: u32,
) -> OpResult<Attr> {
    let requested = mode_bits & (0o777 | mode::S_ISVTX);
    make(
        conn,
        ctx,
        parent,
        name,
        FileType::Directory,
        requested,
        umask,
        0,
        None,
    )
}

pub(super) fn symlink(
    conn: &Connection,
    ctx: &OpContext,
    parent: InodeId,
    name: &[u8],
    target: &[u8],
) -> OpResult<Attr> {
    if target.len() > MAX_SYMLINK_LEN {
        return Err(Errno::ENAMETOOLONG.into());
    }
    if target.is_empty() || target.contains(&0) {
        return Err(Errno::ENOENT.into());
    }
    let mut attr = make(
        conn,
        ctx,
        parent,
        name,
        FileType::Symlink,
        0o777,
        0,
        0,
        None,
    )?;
    store::set_symlink_target(conn, attr.ino, target)?;
    attr.size = target.len() as u64;
    store::save(conn, &attr)?;
    Ok(attr)
}

pub(super) fn link(
    conn: &Connection,
    ctx: &OpContext,
    ino: InodeId,
    new_parent: InodeId,
    new_name: &[u8],
) -> OpResult<Attr> {
    let mut source = store::load(conn, ino)?;
    let mut parent = store::load(conn, new_parent)?;
    check_create(conn, ctx, &parent, new_name)?;
    if source.kind == FileType::Directory {
        return Err(Errno::EPERM.into());
    }
    if source.nlink == 0 {
        return Err(Errno::ENOENT.into());
    }
    if source.nlink >= MAX_NLINK {
        return Err(Errno::EMLINK.into());
    }
    store::add_entry(conn, parent.ino, new_name, source.ino)?;
    source.nlink += 1;
    source.ctime = ctx.now;
    store::save(conn, &source)?;
    touch_dir(conn, &mut parent, ctx.now)?;
    Ok(source)
}
