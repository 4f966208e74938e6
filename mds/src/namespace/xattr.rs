//! Extended attributes: the `user.`, `trusted.` and `security.`
//! namespaces with Linux's permission rules, `XATTR_CREATE` and
//! `XATTR_REPLACE`, and size limits.
//!
//! POSIX ACLs travel as the `system.posix_acl_access` and
//! `system.posix_acl_default` xattrs, as on ext4: the access ACL lives on
//! the inode beside the mode (dropped when the mode says it all), the
//! default ACL of a directory is a stored xattr that creation inherits.

use aspen_proto::acl::{self, PosixAcl};
use aspen_proto::fs::{
    Attr, Caller, FileType, MAX_XATTR_NAME_LEN, MAX_XATTR_VALUE_LEN, access, mode, xattr_flags,
};
use aspen_proto::layout::LAYOUT_XATTR;
use aspen_proto::{Errno, InodeId};
use rusqlite::{Connection, OptionalExtension, params};

use super::store;
use super::{OpContext, OpResult, perm};
use crate::sql::CachedStatements;

/// The most bytes of names and values one inode may hold.
pub const MAX_XATTR_BYTES_PER_INODE: usize = 1 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Namespace {
    User,
    Trusted,
    Security,
}

fn namespace_of(name: &[u8]) -> OpResult<Namespace> {
    if name.len() > MAX_XATTR_NAME_LEN {
        return Err(Errno::ERANGE.into());
    }
    let (namespace, rest) = if let Some(rest) = name.strip_prefix(b"user.") {
        (Namespace::User, rest)
    } else if let Some(rest) = name.strip_prefix(b"trusted.") {
        (Namespace::Trusted, rest)
    } else if let Some(rest) = name.strip_prefix(b"security.") {
        (Namespace::Security, rest)
    } else {
        return Err(Errno::EOPNOTSUPP.into());
    };
    if rest.is_empty() || name.contains(&0) {
        return Err(Errno::EINVAL.into());
    }
    Ok(namespace)
}

/// Linux's `xattr_permission` for reading (`write` false) or writing.
fn check(attr: &Attr, caller: &Caller, namespace: Namespace, write: bool) -> OpResult<()> {
    let denied = if write { Errno::EPERM } else { Errno::ENODATA };
    match namespace {
        Namespace::Trusted if !caller.is_root() => Err(denied.into()),
        Namespace::Trusted => Ok(()),
        Namespace::Security if write && !caller.is_root() => Err(Errno::EPERM.into()),
        Namespace::Security => Ok(()),
        Namespace::User => {
            if !matches!(attr.kind, FileType::Regular | FileType::Directory) {
                return Err(denied.into());
            }
            let sticky_dir = attr.kind == FileType::Directory && attr.perm & mode::S_ISVTX != 0;
            if write && sticky_dir {
                perm::check_owner(attr, caller)?;
            }
            let mask = if write { access::W_OK } else { access::R_OK };
            Ok(perm::check(attr, caller, mask)?)
        }
    }
}

fn stored(conn: &Connection, ino: InodeId, name: &[u8]) -> OpResult<Option<Vec<u8>>> {
    Ok(conn
        .query_row_cached(
            "SELECT value FROM xattrs WHERE ino = ?1 AND name = ?2",
            params![ino.0 as i64, name],
            |r| r.get(0),
        )
        .optional()?)
}

fn bytes_used(conn: &Connection, ino: InodeId) -> OpResult<usize> {
    let used: i64 = conn.query_row_cached(
        "SELECT COALESCE(SUM(LENGTH(name) + LENGTH(value)), 0) FROM xattrs WHERE ino = ?1",
        [ino.0 as i64],
        |r| r.get(0),
    )?;
    Ok(used as usize)
}

pub(super) fn set(
    conn: &Connection,
    ctx: &OpContext,
    ino: InodeId,
    name: &[u8],
    value: &[u8],
    flags: u32,
) -> OpResult<()> {
    if flags & !(xattr_flags::XATTR_CREATE | xattr_flags::XATTR_REPLACE) != 0 {
        return Err(Errno::EINVAL.into());
    }
    if value.len() > MAX_XATTR_VALUE_LEN {
        return Err(Errno::E2BIG.into());
    }
    if let Some(kind) = AclKind::of(name) {
        return set_acl(conn, ctx, ino, kind, value);
    }
    if name == LAYOUT_XATTR {
        return set_layout(conn, ctx, ino, value);
    }
    let namespace = namespace_of(name)?;
    let mut attr = store::load(conn, ino)?;
    check(&attr, &ctx.caller, namespace, true)?;
    let existing = stored(conn, ino, name)?;
    if flags & xattr_flags::XATTR_CREATE != 0 && existing.is_some() {
        return Err(Errno::EEXIST.into());
    }
    if flags & xattr_flags::XATTR_REPLACE != 0 && existing.is_none() {
        return Err(Errno::ENODATA.into());
    }
    let freed = existing.map_or(0, |old| old.len() + name.len());
    if bytes_used(conn, ino)? - freed + name.len() + value.len() > MAX_XATTR_BYTES_PER_INODE {
        return Err(Errno::ENOSPC.into());
    }
    conn.execute_cached(
        "INSERT INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3) \
         ON CONFLICT (ino, name) DO UPDATE SET value = ?3",
        params![ino.0 as i64, name, value],
    )?;
    attr.ctime = ctx.now;
    store::save(conn, &attr)
}

pub(super) fn remove(
    conn: &Connection,
    ctx: &OpContext,
    ino: InodeId,
    name: &[u8],
) -> OpResult<()> {
    if let Some(kind) = AclKind::of(name) {
        return set_acl(conn, ctx, ino, kind, &[]);
    }
    let namespace = namespace_of(name)?;
    let mut attr = store::load(conn, ino)?;
    check(&attr, &ctx.caller, namespace, true)?;
    let removed = conn.execute_cached(
        "DELETE FROM xattrs WHERE ino = ?1 AND name = ?2",
        params![ino.0 as i64, name],
    )?;
    if removed == 0 {
        return Err(Errno::ENODATA.into());
    }
    attr.ctime = ctx.now;
    store::save(conn, &attr)
}

pub(super) fn get(
    conn: &Connection,
    ino: InodeId,
    name: &[u8],
    caller: &Caller,
) -> OpResult<Vec<u8>> {
    if let Some(kind) = AclKind::of(name) {
        let attr = store::load(conn, ino)?;
        let acl = match kind {
            AclKind::Access => attr.acl,
            AclKind::Default => default_acl(conn, ino)?,
        };
        return Ok(acl.ok_or(Errno::ENODATA)?.to_xattr());
    }
    if name == LAYOUT_XATTR {
        return Ok(store::load(conn, ino)?.layout.to_string().into_bytes());
    }
    let namespace = namespace_of(name)?;
    let attr = store::load(conn, ino)?;
    check(&attr, caller, namespace, false)?;
    Ok(stored(conn, ino, name)?.ok_or(Errno::ENODATA)?)
}

/// Sets a directory's layout (what is created in it from now on gets):
/// the owner or root may, with `object_size=BYTES` and/or `pool=ID`.
fn set_layout(conn: &Connection, ctx: &OpContext, ino: InodeId, value: &[u8]) -> OpResult<()> {
    let mut attr = store::load(conn, ino)?;
    if attr.kind != FileType::Directory {
        return Err(Errno::EINVAL.into());
    }
    perm::check_owner(&attr, &ctx.caller)?;
    let text = std::str::from_utf8(value).map_err(|_| Errno::EINVAL)?;
    attr.layout = attr.layout.with_text(text).map_err(|_| Errno::EINVAL)?;
    attr.ctime = ctx.now;
    store::save(conn, &attr)
}

/// The names a caller may see: `trusted.` ones only for root.
pub(super) fn list(conn: &Connection, ino: InodeId, caller: &Caller) -> OpResult<Vec<Vec<u8>>> {
    let attr = store::load(conn, ino)?;
    let mut statement =
        conn.prepare_cached("SELECT name FROM xattrs WHERE ino = ?1 ORDER BY name")?;
    let names = statement.query_map([ino.0 as i64], |r| r.get::<_, Vec<u8>>(0))?;
    let mut visible = Vec::new();
    if attr.acl.is_some() {
        visible.push(acl::XATTR_ACCESS.to_vec());
    }
    for name in names {
        let name = name?;
        if caller.is_root() || !name.starts_with(b"trusted.") {
            visible.push(name);
        }
    }
    Ok(visible)
}

/// Which ACL an xattr name stands for.
#[derive(Clone, Copy, PartialEq)]
enum AclKind {
    Access,
    Default,
}

impl AclKind {
    fn of(name: &[u8]) -> Option<AclKind> {
        match name {
            acl::XATTR_ACCESS => Some(AclKind::Access),
            acl::XATTR_DEFAULT => Some(AclKind::Default),
            _ => None,
        }
    }
}

/// Sets (or, with an empty value, removes) an ACL, in the order of Linux's
/// `set_posix_acl`: parse, a default ACL only on directories, owner only,
/// validate; an access ACL rewrites the mode's rwx bits.
fn set_acl(
    conn: &Connection,
    ctx: &OpContext,
    ino: InodeId,
    kind: AclKind,
    value: &[u8],
) -> OpResult<()> {
    let entries = acl::parse_xattr(value)?;
    let mut attr = store::load(conn, ino)?;
    // As Linux: symlinks carry no ACLs.
    if attr.kind == FileType::Symlink {
        return Err(Errno::EOPNOTSUPP.into());
    }
    if kind == AclKind::Default && attr.kind != FileType::Directory {
        return match entries {
            Some(_) => Err(Errno::EACCES.into()),
            None => Ok(()),
        };
    }
    perm::check_owner(&attr, &ctx.caller)?;
    let new_acl = entries.map(PosixAcl::new).transpose()?;
    match (kind, new_acl) {
        (AclKind::Access, Some(new_acl)) => {
            let requested = (attr.perm & !0o777) | new_acl.mode_bits();
            attr.perm = perm::chmod_bits(&attr, &ctx.caller, requested);
            attr.acl = (!new_acl.is_minimal()).then_some(new_acl);
        }
        (AclKind::Access, None) => attr.acl = None,
        (AclKind::Default, Some(new_acl)) => set_default_acl(conn, ino, &new_acl)?,
        (AclKind::Default, None) => {
            conn.execute_cached(
                "DELETE FROM xattrs WHERE ino = ?1 AND name = ?2",
                params![ino.0 as i64, acl::XATTR_DEFAULT],
            )?;
        }
    }
    attr.ctime = ctx.now;
    store::save(conn, &attr)
}

/// A directory's default ACL.
pub(super) fn default_acl(conn: &Connection, dir: InodeId) -> OpResult<Option<PosixAcl>> {
    let Some(bytes) = stored(conn, dir, acl::XATTR_DEFAULT)? else {
        return Ok(None);
    };
    PosixAcl::from_xattr(&bytes).map_err(|_| {
        super::StoreError::Corrupt(format!("inode {} has a bad default ACL", dir.0)).into()
    })
}

pub(super) fn set_default_acl(conn: &Connection, dir: InodeId, default: &PosixAcl) -> OpResult<()> {
    conn.execute_cached(
        "INSERT INTO xattrs (ino, name, value) VALUES (?1, ?2, ?3) \
         ON CONFLICT (ino, name) DO UPDATE SET value = ?3",
        params![dir.0 as i64, acl::XATTR_DEFAULT, default.to_xattr()],
    )?;
    Ok(())
}
