//! Capabilities in the namespace: the cap table, and requests applied
//! under it. A mutation runs first and is kept only if no other session
//! caches an inode it changed (the inodes it touched are recorded by
//! triggers on the inode table, so no write path can be missed); a read
//! that grants caps is kept only if no other session buffers changes to
//! what it read. Otherwise nothing changes and the conflicting caps are
//! named, for the server to revoke before it asks again. The rules are in
//! [`crate::caps`].
//!
//! A cap is not a reference: an unlinked inode goes (with every cap on it)
//! once no handle holds it. A client finishes its buffered writes to a
//! file before it unlinks it and drops them once an unlinked file's last
//! handle goes.

use aspen_proto::caps::{CapGrant, CapMode, CapOp, CapReply, Flushed};
use aspen_proto::fs::{Attr, open_flags};
use aspen_proto::{Errno, InodeId};
use rusqlite::{Connection, params};

use super::store::{self, NEXT_CAP};
use super::{NsOp, NsReply, OpContext, OpResult, SessionId, StoreError, setattr, split};
use crate::caps::{self, CapOutcome, HeldCap, Need};
use crate::sql::CachedStatements;

/// Per-connection tracking of the inodes a statement sequence touched.
pub(super) const TRACKING: &str = "
CREATE TEMP TABLE IF NOT EXISTS touched (ino INTEGER PRIMARY KEY);
CREATE TEMP TRIGGER IF NOT EXISTS touched_by_insert AFTER INSERT ON main.inodes
    BEGIN INSERT OR IGNORE INTO touched VALUES (new.ino); END;
CREATE TEMP TRIGGER IF NOT EXISTS touched_by_update AFTER UPDATE ON main.inodes
    BEGIN INSERT OR IGNORE INTO touched VALUES (new.ino); END;
CREATE TEMP TRIGGER IF NOT EXISTS touched_by_delete AFTER DELETE ON main.inodes
    BEGIN INSERT OR IGNORE INTO touched VALUES (old.ino); END;
";

fn mode_code(mode: CapMode) -> i64 {
    match mode {
        CapMode::Shared => 1,
        CapMode::Exclusive => 2,
    }
}

fn mode_from_code(code: i64) -> Result<CapMode, StoreError> {
    match code {
        1 => Ok(CapMode::Shared),
        2 => Ok(CapMode::Exclusive),
        other => Err(StoreError::Corrupt(format!("cap mode {other}"))),
    }
}

/// The caps held on `ino`.
pub(crate) fn held(conn: &Connection, ino: InodeId) -> Result<Vec<HeldCap>, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT session, mode, seq FROM caps WHERE ino = ?1")?;
    let rows = statement.query_map([ino.0 as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut caps = Vec::new();
    for row in rows {
        let (session, mode, seq) = row?;
        caps.push(HeldCap {
            session: SessionId(session as u64),
            mode: mode_from_code(mode)?,
            seq: seq as u64,
        });
    }
    Ok(caps)
}

fn own(conn: &Connection, session: SessionId, ino: InodeId) -> OpResult<Option<HeldCap>> {
    Ok(held(conn, ino)?
        .into_iter()
        .find(|cap| cap.session == session))
}

/// Grants `session` `wanted` on `ino` (on top of what it holds).
fn grant(
    conn: &Connection,
    session: SessionId,
    ino: InodeId,
    wanted: CapMode,
) -> OpResult<CapGrant> {
    let mode = caps::merge(own(conn, session, ino)?.map(|c| c.mode), wanted);
    let seq = store::next_counter(conn, NEXT_CAP)?;
    conn.execute_cached(
        "INSERT INTO caps (ino, session, mode, seq) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (ino, session) DO UPDATE SET mode = ?3, seq = ?4",
        params![ino.0 as i64, session.0 as i64, mode_code(mode), seq as i64],
    )?;
    tracing::debug!(session = session.0, ino = ino.0, seq, ?mode, "granted");
    Ok(CapGrant { ino, mode, seq })
}

/// Sets `session`'s cap on `ino` to `mode`, or drops it.
fn set(conn: &Connection, session: SessionId, ino: InodeId, mode: Option<CapMode>) -> OpResult<()> {
    match mode {
        Some(mode) => {
            conn.execute_cached(
                "UPDATE caps SET mode = ?3 WHERE ino = ?1 AND session = ?2",
                params![ino.0 as i64, session.0 as i64, mode_code(mode)],
            )?;
        }
        None => {
            conn.execute_cached(
                "DELETE FROM caps WHERE ino = ?1 AND session = ?2",
                params![ino.0 as i64, session.0 as i64],
            )?;
        }
    }
    Ok(())
}

/// Drops every cap of `session` (it ended), and every cap on `released`
/// inodes that went with its handles.
pub(crate) fn end_session(
    conn: &Connection,
    session: SessionId,
    released: &[InodeId],
) -> OpResult<()> {
    conn.execute_cached("DELETE FROM caps WHERE session = ?1", [session.0 as i64])?;
    forget_gone(conn, released)?;
    Ok(())
}

/// Drops the caps on those of `inodes` that no longer exist.
fn forget_gone(conn: &Connection, inodes: &[InodeId]) -> Result<(), StoreError> {
    for ino in inodes {
        conn.execute_cached(
            "DELETE FROM caps WHERE ino = ?1 AND NOT EXISTS (SELECT 1 FROM inodes WHERE ino = ?1)",
            [ino.0 as i64],
        )?;
    }
    Ok(())
}

/// Starts recording the inodes the next statements touch.
fn start_tracking(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_cached("DELETE FROM temp.touched", [])?;
    Ok(())
}

/// The inodes touched since [`start_tracking`].
fn touched(conn: &Connection) -> Result<Vec<InodeId>, StoreError> {
    let mut statement = conn.prepare_cached("SELECT ino FROM temp.touched ORDER BY ino")?;
    let rows = statement.query_map([], |r| Ok(InodeId(r.get::<_, i64>(0)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The session a request speaks for (session 0 is none).
fn requester(ctx: &OpContext) -> Option<SessionId> {
    (ctx.session.0 != 0).then_some(ctx.session)
}

/// Conflicts of `needs` with other sessions' caps.
fn conflicts_of(
    conn: &Connection,
    ctx: &OpContext,
    needs: &[(InodeId, Need)],
) -> Result<Vec<(SessionId, aspen_proto::caps::Revoke)>, StoreError> {
    let mut found = Vec::new();
    let mut known: Vec<(InodeId, Vec<HeldCap>)> = Vec::new();
    for (ino, need) in needs {
        let caps_on = match known.iter().position(|(known, _)| known == ino) {
            Some(at) => at,
            None => {
                known.push((*ino, held(conn, *ino)?));
                known.len() - 1
            }
        };
        for conflict in caps::conflicts(*ino, &known[caps_on].1, requester(ctx), *need) {
            if !found.contains(&conflict) {
                found.push(conflict);
            }
        }
    }
    Ok(found)
}

/// Grants `wanted` to the requester and builds the answer: the grants and
/// the attributes of every inode named that still exists.
fn answer(
    conn: &Connection,
    ctx: &OpContext,
    result: Result<NsReply, Errno>,
    wanted: &[(InodeId, CapMode)],
    shown: &[InodeId],
    version: u64,
) -> Result<CapReply, StoreError> {
    let mut grants = Vec::new();
    let mut attrs: Vec<Attr> = Vec::new();
    for ino in wanted.iter().map(|(ino, _)| ino).chain(shown) {
        if attrs.iter().any(|a| a.ino == *ino) {
            continue;
        }
        if let Ok(attr) = split(store::load(conn, *ino))? {
            tracing::debug!(
                session = ctx.session.0,
                ino = ino.0,
                size = attr.size,
                version,
                "answered with"
            );
            attrs.push(attr);
        }
    }
    if let Some(session) = requester(ctx) {
        for (ino, mode) in wanted {
            if attrs.iter().any(|a| a.ino == *ino) {
                grants.push(split(grant(conn, session, *ino, *mode))?.map_err(corrupt)?);
            }
        }
    }
    Ok(CapReply {
        result,
        grants,
        attrs,
        version,
        barrier: 0,
    })
}

fn corrupt(errno: Errno) -> StoreError {
    StoreError::Corrupt(format!("cap table: {errno}"))
}

/// The caps a mutation's requester takes beyond Shared on what it changed:
/// Exclusive on a file it opens for writing or creates, and on a directory
/// it makes (so it may create in it on its own) unless the directory has a
/// default ACL (whose inheritance the MDS alone works out).
fn wanted_by(
    conn: &Connection,
    op: &NsOp,
    reply: &NsReply,
) -> Result<Option<(InodeId, CapMode)>, StoreError> {
    match (op, reply) {
        (NsOp::CreateAs { .. }, NsReply::Attr(attr)) => {
            return Ok(Some((attr.ino, CapMode::Exclusive)));
        }
        (NsOp::Mkdir { .. }, NsReply::Attr(attr)) => {
            let inherits = split(super::xattr::default_acl(conn, attr.ino))?
                .map_err(corrupt)?
                .is_some();
            return Ok((!inherits).then_some((attr.ino, CapMode::Exclusive)));
        }
        _ => {}
    }
    Ok(opened_wants(op, reply))
}

/// Exclusive on a file opened (or created) for writing, else Shared.
fn opened_wants(op: &NsOp, reply: &NsReply) -> Option<(InodeId, CapMode)> {
    let NsReply::Opened { attr, .. } = reply else {
        return None;
    };
    let flags = match op {
        NsOp::Open { flags, .. } | NsOp::Create { flags, .. } => *flags,
        _ => return None,
    };
    let writes = flags & open_flags::O_ACCMODE != open_flags::O_RDONLY;
    let mode = if writes {
        CapMode::Exclusive
    } else {
        CapMode::Shared
    };
    Some((attr.ino, mode))
}

/// Runs `work` under a savepoint that is kept only if it answers.
fn guarded(
    conn: &Connection,
    work: impl FnOnce() -> Result<CapOutcome, StoreError>,
) -> Result<CapOutcome, StoreError> {
    conn.execute_cached("SAVEPOINT cap_op", [])?;
    let outcome = work();
    if !matches!(outcome, Ok(CapOutcome::Answer(_))) {
        conn.execute_cached("ROLLBACK TO cap_op", [])?;
    }
    conn.execute_cached("RELEASE cap_op", [])?;
    outcome
}

/// Applies a mutation unless another session caches what it changes;
/// with `grants`, the requester gets Shared on every inode it changed
/// (Exclusive on a file it opened for writing).
pub(crate) fn mutate(
    conn: &Connection,
    op: &NsOp,
    ctx: &OpContext,
    grants: bool,
    version: u64,
) -> Result<CapOutcome, StoreError> {
    mutate_noting_gone(conn, op, ctx, grants, version).map(|(outcome, _)| outcome)
}

/// [`mutate`], with the inodes it changed that no longer exist.
fn mutate_noting_gone(
    conn: &Connection,
    op: &NsOp,
    ctx: &OpContext,
    grants: bool,
    version: u64,
) -> Result<(CapOutcome, Vec<InodeId>), StoreError> {
    let mut gone = Vec::new();
    let outcome = guarded(conn, || {
        start_tracking(conn)?;
        let result = super::apply_within(conn, op, ctx)?;
        let changed = touched(conn)?;
        let mut wanted: Vec<(InodeId, CapMode)> = Vec::new();
        if grants && let Ok(reply) = &result {
            wanted.extend(changed.iter().map(|ino| (*ino, CapMode::Shared)));
            if let Some((ino, mode)) = wanted_by(conn, op, reply)? {
                wanted.retain(|(i, _)| *i != ino);
                wanted.push((ino, mode));
            }
        }
        let needs: Vec<(InodeId, Need)> = changed
            .iter()
            .map(|ino| (*ino, Need::Change))
            .chain(
                wanted
                    .iter()
                    .map(|(ino, mode)| (*ino, Need::to_hold(*mode))),
            )
            .collect();
        let conflicts = conflicts_of(conn, ctx, &needs)?;
        if !conflicts.is_empty() {
            return Ok(CapOutcome::Conflict(conflicts));
        }
        let reply = answer(conn, ctx, result, &wanted, &changed, version)?;
        // The answer shows every changed inode that still exists.
        gone = changed
            .into_iter()
            .filter(|ino| !reply.attrs.iter().any(|attr| attr.ino == *ino))
            .collect();
        forget_gone(conn, &gone)?;
        Ok(CapOutcome::Answer(reply))
    })?;
    Ok((outcome, gone))
}

/// Each op as its own [`mutate`] (with grants) would be, in order,
/// stopping before the first that conflicts with another session's caps;
/// a conflict of the first is the outcome. One answer carries the grants
/// and attributes of every op applied, as they stand after the last.
fn mutate_many(
    conn: &Connection,
    ctx: &OpContext,
    version: u64,
    ops: &[NsOp],
) -> Result<CapOutcome, StoreError> {
    if !CapOp::valid_batch(ops) {
        let reply = answer(conn, ctx, Err(Errno::EINVAL), &[], &[], version)?;
        return Ok(CapOutcome::Answer(reply));
    }
    let mut merged = CapReply {
        result: Ok(NsReply::Done),
        grants: Vec::new(),
        attrs: Vec::new(),
        version,
        barrier: 0,
    };
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let reply = match mutate_noting_gone(conn, op, ctx, true, version)? {
            (CapOutcome::Answer(reply), gone) => {
                let newer = |ino: &InodeId| {
                    gone.contains(ino) || reply.attrs.iter().any(|attr| attr.ino == *ino)
                };
                merged.attrs.retain(|attr| !newer(&attr.ino));
                merged.grants.retain(|grant| !newer(&grant.ino));
                reply
            }
            (conflict, _) if results.is_empty() => return Ok(conflict),
            _ => break,
        };
        merged.attrs.extend(reply.attrs);
        merged.grants.extend(reply.grants);
        results.push(reply.result);
    }
    merged.result = Ok(NsReply::Mutated(results));
    Ok(CapOutcome::Answer(merged))
}

/// A read that grants Shared on what it read: `parent` and `found` (a
/// missing name still grants the directory).
fn read_granting(
    conn: &Connection,
    ctx: &OpContext,
    read: &[InodeId],
    result: Result<NsReply, Errno>,
    version: u64,
) -> Result<CapOutcome, StoreError> {
    let mut read = read.to_vec();
    read.dedup();
    let wanted: Vec<(InodeId, CapMode)> = read.iter().map(|i| (*i, CapMode::Shared)).collect();
    let needs: Vec<(InodeId, Need)> = read.iter().map(|i| (*i, Need::Read)).collect();
    let conflicts = conflicts_of(conn, ctx, &needs)?;
    if !conflicts.is_empty() {
        return Ok(CapOutcome::Conflict(conflicts));
    }
    Ok(CapOutcome::Answer(answer(
        conn,
        ctx,
        result,
        &wanted,
        &[],
        version,
    )?))
}

/// Applies a request under capabilities (mutations go through [`mutate`]).
pub(crate) fn apply(
    conn: &Connection,
    op: &CapOp,
    ctx: &OpContext,
    version: u64,
) -> Result<CapOutcome, StoreError> {
    match op {
        CapOp::Mutate(op) => mutate(conn, op, ctx, true, version),
        CapOp::MutateMany(ops) => mutate_many(conn, ctx, version, ops),
        CapOp::Lookup { parent, name } => guarded(conn, || {
            let result = split(super::read::lookup(conn, *parent, name, &ctx.caller))?;
            let mut read = Vec::new();
            if split(store::load(conn, *parent))?.is_ok() {
                read.push(*parent);
            }
            if let Ok(attr) = &result {
                read.push(attr.ino);
            }
            read_granting(conn, ctx, &read, result.map(NsReply::Attr), version)
        }),
        CapOp::GetAttr { ino } => guarded(conn, || {
            let result = split(store::load(conn, *ino))?;
            let read: Vec<InodeId> = result.iter().map(|a| a.ino).collect();
            read_granting(conn, ctx, &read, result.map(NsReply::Attr), version)
        }),
        CapOp::Want { ino, mode } => guarded(conn, || {
            let result = split(store::load(conn, *ino))?;
            if result.is_err() {
                return Ok(CapOutcome::Answer(answer(
                    conn,
                    ctx,
                    result.map(NsReply::Attr),
                    &[],
                    &[],
                    version,
                )?));
            }
            let conflicts = conflicts_of(conn, ctx, &[(*ino, Need::to_hold(*mode))])?;
            if !conflicts.is_empty() {
                return Ok(CapOutcome::Conflict(conflicts));
            }
            let reply = answer(
                conn,
                ctx,
                result.map(NsReply::Attr),
                &[(*ino, *mode)],
                &[],
                version,
            )?;
            Ok(CapOutcome::Answer(reply))
        }),
        CapOp::Ack {
            ino,
            seq,
            to,
            flushed,
            pin,
        } => own_op(conn, ctx, version, *ino, |conn, cap| {
            if let Some(flushed) = flushed {
                report(conn, ctx, cap, *ino, *flushed)?;
            }
            let pinned = match pin {
                true => Some(super::open::pin(conn, ctx, *ino)?),
                false => None,
            };
            let after = caps::after_ack(cap, *seq, *to);
            tracing::debug!(
                session = cap.session.0,
                ino = ino.0,
                seq,
                ?to,
                ?flushed,
                held = cap.seq,
                ?after,
                "acked"
            );
            set(conn, cap.session, *ino, after)?;
            Ok(pinned)
        }),
        CapOp::Pin { ino } => own_op(conn, ctx, version, *ino, |conn, _| {
            super::open::pin(conn, ctx, *ino).map(Some)
        }),
        CapOp::Flush { ino, flushed } => own_op(conn, ctx, version, *ino, |conn, cap| {
            report(conn, ctx, cap, *ino, *flushed).map(|()| None)
        }),
        CapOp::FlushMany { reports } => flush_many(conn, ctx, version, reports),
        CapOp::Reserve { count } => guarded(conn, || {
            let result = split(super::create::reserve(conn, ctx, *count))?;
            Ok(CapOutcome::Answer(answer(
                conn,
                ctx,
                result.map(NsReply::Reserved),
                &[],
                &[],
                version,
            )?))
        }),
        CapOp::Release { caps: released } => {
            let Some(session) = requester(ctx) else {
                return Ok(CapOutcome::Answer(answer(
                    conn,
                    ctx,
                    Err(Errno::EBADF),
                    &[],
                    &[],
                    version,
                )?));
            };
            for (ino, seq) in released.iter().take(aspen_proto::caps::MAX_RELEASE) {
                let cap = split(own(conn, session, *ino))?.map_err(corrupt)?;
                if cap.is_some_and(|cap| cap.seq <= *seq) {
                    split(set(conn, session, *ino, None))?.map_err(corrupt)?;
                }
            }
            Ok(CapOutcome::Answer(answer(
                conn,
                ctx,
                Ok(NsReply::Done),
                &[],
                &[],
                version,
            )?))
        }
    }
}

/// Each report as its own [`CapOp::Flush`] would be, in one answer: one
/// refused (its cap went, or its size is too large) leaves the rest applied.
fn flush_many(
    conn: &Connection,
    ctx: &OpContext,
    version: u64,
    reports: &[(InodeId, Flushed)],
) -> Result<CapOutcome, StoreError> {
    guarded(conn, || {
        if reports.len() > aspen_proto::caps::MAX_FLUSH_REPORTS {
            let reply = answer(conn, ctx, Err(Errno::EINVAL), &[], &[], version)?;
            return Ok(CapOutcome::Answer(reply));
        }
        let mut results = Vec::with_capacity(reports.len());
        for (ino, flushed) in reports {
            results.push(on_own_cap(conn, ctx, *ino, |conn, cap| {
                report(conn, ctx, cap, *ino, *flushed)
            })?);
        }
        let reported: Vec<InodeId> = reports.iter().map(|(ino, _)| *ino).collect();
        let reply = answer(
            conn,
            ctx,
            Ok(NsReply::Reported(results)),
            &[],
            &reported,
            version,
        )?;
        Ok(CapOutcome::Answer(reply))
    })
}

/// A request about the session's own cap on `ino`, which it must hold
/// (`EBADF` otherwise: it was revoked, or the session was evicted); `work`
/// may take a handle, which the answer names.
fn own_op(
    conn: &Connection,
    ctx: &OpContext,
    version: u64,
    ino: InodeId,
    work: impl FnOnce(&Connection, HeldCap) -> OpResult<Option<super::HandleId>>,
) -> Result<CapOutcome, StoreError> {
    guarded(conn, || {
        let result = match on_own_cap(conn, ctx, ino, work)? {
            Ok(Some(handle)) => {
                split(store::load(conn, ino))?.map(|attr| NsReply::Opened { attr, handle })
            }
            Ok(None) => Ok(NsReply::Done),
            Err(errno) => Err(errno),
        };
        let reply = answer(conn, ctx, result, &[], &[ino], version)?;
        Ok(CapOutcome::Answer(reply))
    })
}

/// `work` on the requester's own cap on `ino`, in a savepoint of its own;
/// `EBADF` when the requester holds none (it was revoked, or the session
/// was evicted).
fn on_own_cap<T>(
    conn: &Connection,
    ctx: &OpContext,
    ino: InodeId,
    work: impl FnOnce(&Connection, HeldCap) -> OpResult<T>,
) -> Result<Result<T, Errno>, StoreError> {
    let held = match requester(ctx) {
        Some(session) => split(own(conn, session, ino))?.map_err(corrupt)?,
        None => None,
    };
    match held {
        None => Ok(Err(Errno::EBADF)),
        Some(cap) => split(super::savepoint(conn, |conn| work(conn, cap))),
    }
}

/// Records the size and mtime the Exclusive holder's writes produced.
fn report(
    conn: &Connection,
    ctx: &OpContext,
    cap: HeldCap,
    ino: InodeId,
    flushed: Flushed,
) -> OpResult<()> {
    tracing::debug!(
        session = cap.session.0,
        ino = ino.0,
        size = flushed.size,
        seq = cap.seq,
        mode = ?cap.mode,
        "report"
    );
    if cap.mode != CapMode::Exclusive {
        return Err(Errno::EBADF.into());
    }
    setattr::flushed(conn, ctx, ino, flushed).map(drop)
}

/// The caps held on `ino`, for the server's conflict checks on reads that
/// grant nothing.
pub(crate) fn read_conflicts(
    conn: &Connection,
    inodes: &[InodeId],
) -> Result<Vec<(SessionId, aspen_proto::caps::Revoke)>, StoreError> {
    let ctx = OpContext {
        caller: aspen_proto::fs::Caller::root(),
        now: Default::default(),
        session: SessionId(0),
    };
    let needs: Vec<(InodeId, Need)> = inodes.iter().map(|i| (*i, Need::Read)).collect();
    conflicts_of(conn, &ctx, &needs)
}
