//! The client's cache under capabilities: for each inode the session
//! holds a cap on, its attributes (as of an MDS version), the cap, the
//! size and mtime of writes not yet reported (under Exclusive), and for a
//! directory the entries it has seen (names to inodes, or known absent).
//! Nothing is answered from here without a cap; a cap that goes takes
//! what it covered along.
//!
//! This module is the bookkeeping only (no I/O): the VFS asks it, feeds it
//! the MDS's answers, and tells it what a revocation left.

use std::collections::{BTreeSet, HashMap};

use aspen_proto::InodeId;
use aspen_proto::caps::{CapGrant, CapMode, CapReply, Revoke};
use aspen_proto::fs::{Attr, Caller, Timestamp};

/// How many inodes the cache keeps caps on before it gives the least
/// recently used back.
pub const MAX_CACHED_INODES: usize = 65_536;
/// How many it gives back at once when over the limit.
pub const TRIM_BATCH: usize = 1024;
/// How many revocations of uncached inodes it remembers (those of the
/// oldest grants are forgotten first).
pub const MAX_LATE_REVOCATIONS: usize = 4096;

/// A cap as the client holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldCap {
    pub mode: CapMode,
    pub seq: u64,
}

/// A revocation under way, from [`CapCache::begin_revoke`] to
/// [`CapCache::finish_revoke`].
#[derive(Debug)]
#[must_use]
pub struct Revoking {
    revoke: Revoke,
    /// The cap it takes down (none: gone already, or granted after it).
    pub held: Option<HeldCap>,
    /// Whether the inode was cached, and so counts it as under way.
    counted: bool,
}

impl Revoking {
    /// Whether it takes a held cap away: the kernel's pages go with it.
    pub fn drops_pages(&self) -> bool {
        self.held.is_some() && self.revoke.to.is_none()
    }
}

/// Writes made under Exclusive that the MDS has not heard of yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreported {
    pub size: u64,
    pub mtime: Timestamp,
    /// Who wrote last (setuid and setgid go unless root wrote).
    pub writer: Caller,
}

/// A directory entry as last seen: the inode (or absent) and the version
/// of the answer that said so.
type Entry = (Option<InodeId>, u64);

#[derive(Debug, Default)]
struct DirCache {
    names: HashMap<Vec<u8>, Entry>,
    /// Every entry is in `names` (a directory this session made, kept
    /// under its cap since).
    complete: bool,
}

#[derive(Debug)]
struct Cached {
    attr: Attr,
    version: u64,
    cap: Option<HeldCap>,
    /// The newest revocation seen: grants up to its seq are cut down to
    /// its mode (a grant's answer can arrive after its revocation).
    revoked: Option<Revoked>,
    unreported: Option<Unreported>,
    dir: DirCache,
    /// Set while a revocation is being carried out.
    revoking: usize,
    /// Set while one that takes the cap away (the kernel's pages go) is.
    dropping: usize,
    /// Acks on their way that carry this client's writes. Until they are
    /// answered the MDS may answer (and grant) with the size from before
    /// them, so neither a cap nor the attributes answer here.
    acking: usize,
    used: u64,
    /// The inode has no `security.capability` xattr (the kernel asks
    /// before every write).
    no_file_caps: bool,
}

impl Cached {
    /// `attr` as of `version`, with no cap yet.
    fn new(attr: Attr, version: u64, used: u64) -> Cached {
        Cached {
            attr,
            version,
            cap: None,
            revoked: None,
            unreported: None,
            dir: DirCache::default(),
            revoking: 0,
            dropping: 0,
            acking: 0,
            used,
            no_file_caps: false,
        }
    }

    fn shown(&self) -> Attr {
        let mut attr = self.attr.clone();
        if let Some(written) = &self.unreported {
            attr.size = written.size;
            attr.mtime = written.mtime;
            attr.ctime = written.mtime.max(attr.ctime);
            if !written.writer.is_root() {
                attr.perm = aspen_proto::perm::drop_privileges(attr.kind, attr.perm);
            }
        }
        attr
    }

    /// The Exclusive cap went, and with it the right to override the MDS's
    /// attributes: this client's unreported writes become its cached
    /// attributes (the ack or release carries them to the MDS), so a newer
    /// answer replaces them rather than being overridden by them.
    fn hand_over_unreported(&mut self) -> bool {
        if self.unreported.is_none() {
            return false;
        }
        self.attr = self.shown();
        self.unreported = None;
        true
    }

    fn drop_cached(&mut self) {
        self.dir = DirCache::default();
        self.no_file_caps = false;
    }
}

/// What a lookup in the cache found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Entry(Attr),
    Absent,
}

/// The cache. Callers hold it behind a lock.
#[derive(Debug, Default)]
pub struct CapCache {
    inodes: HashMap<InodeId, Cached>,
    /// Revocations of inodes the cache had no entry for, held against the
    /// answers of grants still on their way.
    late: LateRevocations,
    clock: u64,
    /// The newest MDS version absorbed (what a change made here is as new
    /// as).
    latest: u64,
}

/// A revocation as held against grants: the grant it names and the mode
/// it leaves.
type Revoked = (u64, Option<CapMode>);

/// The revocations of uncached inodes, at most [`MAX_LATE_REVOCATIONS`];
/// beyond that, those of the oldest grants go (grant numbers grow: an old
/// grant's answer has long arrived).
#[derive(Debug, Default)]
struct LateRevocations {
    by_inode: HashMap<InodeId, Revoked>,
    by_grant: BTreeSet<(u64, InodeId)>,
}

impl LateRevocations {
    fn get(&self, ino: InodeId) -> Option<Revoked> {
        self.by_inode.get(&ino).copied()
    }

    fn take(&mut self, ino: InodeId) -> Option<Revoked> {
        let revoked = self.by_inode.remove(&ino)?;
        self.by_grant.remove(&(revoked.0, ino));
        Some(revoked)
    }

    fn put(&mut self, ino: InodeId, revoked: Revoked) {
        if let Some((seq, _)) = self.by_inode.insert(ino, revoked) {
            self.by_grant.remove(&(seq, ino));
        }
        self.by_grant.insert((revoked.0, ino));
        while self.by_inode.len() > MAX_LATE_REVOCATIONS {
            let Some((_, oldest)) = self.by_grant.pop_first() else {
                break;
            };
            self.by_inode.remove(&oldest);
        }
    }

    fn clear(&mut self) {
        self.by_inode.clear();
        self.by_grant.clear();
    }
}

impl CapCache {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The cap held on `ino` (none while an ack of its writes is on its
    /// way).
    pub fn cap(&self, ino: InodeId) -> Option<HeldCap> {
        self.inodes
            .get(&ino)
            .filter(|c| c.acking == 0)
            .and_then(|c| c.cap)
    }

    /// Whether the attributes of `ino` stay right until a revocation (or
    /// the cache) says otherwise: a cap covers them and none is going.
    pub fn attrs_held(&self, ino: InodeId) -> bool {
        self.inodes
            .get(&ino)
            .is_some_and(|c| c.cap.is_some() && c.revoking == 0 && c.acking == 0)
    }

    /// Whether a revocation of `ino` is being carried out.
    pub fn revoking(&self, ino: InodeId) -> bool {
        self.inodes.get(&ino).is_some_and(|c| c.revoking > 0)
    }

    /// Whether a revocation that takes the cap on `ino` away (and so has
    /// the kernel drop its pages) is being carried out.
    pub fn dropping_pages(&self, ino: InodeId) -> bool {
        self.inodes.get(&ino).is_some_and(|c| c.dropping > 0)
    }

    /// The attributes of `ino`, if a cap covers them (with unreported
    /// writes shown); during a revocation, the last ones known.
    pub fn attr(&mut self, ino: InodeId) -> Option<Attr> {
        let now = self.tick();
        let cached = self.inodes.get_mut(&ino)?;
        if cached.acking > 0 || (cached.cap.is_none() && cached.revoking == 0) {
            return None;
        }
        cached.used = now;
        Some(cached.shown())
    }

    /// Resolves `name` in `parent` from what the parent's cap covers:
    /// `None` when the cache cannot tell.
    pub fn lookup(&mut self, parent: InodeId, name: &[u8]) -> Option<Found> {
        let cached = self.inodes.get(&parent)?;
        cached.cap?;
        let found = match cached.dir.names.get(name) {
            Some((Some(ino), _)) => *ino,
            Some((None, _)) => return Some(Found::Absent),
            None if cached.dir.complete => return Some(Found::Absent),
            None => return None,
        };
        self.attr(found).map(Found::Entry)
    }

    /// Takes in an MDS answer: newer attributes, and the grants (cut down
    /// by any revocation that overtook them).
    pub fn absorb(&mut self, reply: &CapReply) {
        let now = self.tick();
        self.latest = self.latest.max(reply.version);
        for attr in &reply.attrs {
            let late = &mut self.late;
            let cached = self.inodes.entry(attr.ino).or_insert_with(|| Cached {
                revoked: late.take(attr.ino),
                ..Cached::new(attr.clone(), 0, now)
            });
            let newer = reply.version >= cached.version;
            if newer {
                cached.attr = attr.clone();
                cached.version = reply.version;
            }
            tracing::debug!(
                ino = attr.ino.0,
                version = reply.version,
                size = attr.size,
                newer,
                "absorbed attributes"
            );
            cached.used = now;
        }
        for grant in &reply.grants {
            self.take_grant(*grant);
        }
    }

    fn take_grant(&mut self, grant: CapGrant) {
        let Some(cached) = self.inodes.get_mut(&grant.ino) else {
            return;
        };
        if cached.cap.is_some_and(|held| held.seq >= grant.seq) {
            return;
        }
        let mode = match cached.revoked {
            Some((seq, to)) if grant.seq <= seq => to.map(|to| to.min(grant.mode)),
            _ => Some(grant.mode),
        };
        cached.cap = mode.map(|mode| HeldCap {
            mode,
            seq: grant.seq,
        });
        tracing::debug!(
            ino = grant.ino.0,
            seq = grant.seq,
            mode = ?grant.mode,
            held = ?cached.cap,
            revoked = ?cached.revoked,
            "took a grant"
        );
    }

    /// Records that `name` in `parent` is `ino` (or absent), as of
    /// `version`; kept only under the parent's cap.
    pub fn note_entry(&mut self, parent: InodeId, name: &[u8], ino: Option<InodeId>, version: u64) {
        let Some(cached) = self.inodes.get_mut(&parent) else {
            return;
        };
        if cached.cap.is_none() {
            return;
        }
        let entry = cached.dir.names.entry(name.to_vec()).or_insert((ino, 0));
        if version >= entry.1 {
            *entry = (ino, version);
        }
    }

    /// Records a regular file this client created itself as `name` in
    /// `parent` (Exclusive on it, until the MDS's grant replaces the
    /// placeholder), and moves the parent's times to the file's.
    pub fn note_created(&mut self, parent: InodeId, name: &[u8], attr: &Attr) {
        let now = self.tick();
        let version = self.latest;
        self.inodes.insert(
            attr.ino,
            Cached {
                cap: Some(HeldCap {
                    mode: CapMode::Exclusive,
                    seq: 0,
                }),
                no_file_caps: true,
                ..Cached::new(attr.clone(), version, now)
            },
        );
        self.note_entry(parent, name, Some(attr.ino), version);
        self.touch_at_least(parent, attr.ctime);
    }

    /// Records that this client unlinked `name` (file `ino`, its last
    /// link) from `parent` itself at `at`: the name is free, the file and
    /// its cap are gone.
    pub fn note_unlinked(&mut self, parent: InodeId, name: &[u8], ino: InodeId, at: Timestamp) {
        let version = self.latest;
        self.note_entry(parent, name, None, version);
        self.touch_at_least(parent, at);
        self.inodes.remove(&ino);
    }

    /// Whether a cap covers the knowledge that `ino` has no
    /// `security.capability` xattr.
    pub fn lacks_file_caps(&self, ino: InodeId) -> bool {
        self.inodes
            .get(&ino)
            .is_some_and(|c| c.cap.is_some() && c.no_file_caps)
    }

    /// The MDS said `ino` has no `security.capability` xattr, asked while
    /// this client held grant `seq` on it: kept if that grant still
    /// stands (another client's change would have revoked it first).
    pub fn note_no_file_caps(&mut self, ino: InodeId, seq: u64) {
        if let Some(cached) = self.inodes.get_mut(&ino)
            && cached.revoking == 0
            && cached.cap.is_some_and(|held| held.seq == seq)
        {
            cached.no_file_caps = true;
        }
    }

    /// This client changes `ino`'s xattrs: what was known of them goes.
    pub fn forget_xattrs(&mut self, ino: InodeId) {
        if let Some(cached) = self.inodes.get_mut(&ino) {
            cached.no_file_caps = false;
        }
    }

    /// Moves `dir`'s mtime and ctime up to `at` (a change made here that
    /// an older MDS answer does not show yet).
    pub fn touch_at_least(&mut self, dir: InodeId, at: Timestamp) {
        if let Some(cached) = self.inodes.get_mut(&dir) {
            cached.attr.mtime = cached.attr.mtime.max(at);
            cached.attr.ctime = cached.attr.ctime.max(at);
        }
    }

    /// Forgets what the cache knows of `name` in `parent`.
    pub fn forget_entry(&mut self, parent: InodeId, name: &[u8]) {
        if let Some(cached) = self.inodes.get_mut(&parent) {
            cached.dir.names.remove(name);
            cached.dir.complete = false;
        }
    }

    /// `dir` was just made by this session and is empty.
    pub fn note_complete(&mut self, dir: InodeId) {
        if let Some(cached) = self.inodes.get_mut(&dir)
            && cached.cap.is_some()
        {
            cached.dir.complete = true;
        }
    }

    /// The inode `name` in `parent` is known to be.
    pub fn entry(&self, parent: InodeId, name: &[u8]) -> Option<InodeId> {
        let cached = self.inodes.get(&parent)?;
        cached.cap?;
        cached.dir.names.get(name).and_then(|(ino, _)| *ino)
    }

    /// Records a write under Exclusive: the size grows to `end`.
    pub fn note_write(&mut self, ino: InodeId, end: u64, writer: &Caller) {
        let Some(cached) = self.inodes.get_mut(&ino) else {
            return;
        };
        let size = cached
            .unreported
            .as_ref()
            .map_or(cached.attr.size, |u| u.size);
        tracing::debug!(ino = ino.0, end, size, cap = ?cached.cap, "noted a write");
        cached.unreported = Some(Unreported {
            size: size.max(end),
            mtime: Timestamp::now(),
            writer: writer.clone(),
        });
        if cached
            .cap
            .is_none_or(|held| held.mode != CapMode::Exclusive)
        {
            // A write's cap outlasts it (revocations wait for writes in
            // flight): this is a bug. Its size must not override the
            // answers of grants to come.
            tracing::error!(
                ino = ino.0,
                end,
                "a write finished without its Exclusive cap"
            );
            cached.hand_over_unreported();
        }
    }

    /// Unreported writes of `ino`.
    pub fn unreported(&self, ino: InodeId) -> Option<Unreported> {
        self.inodes.get(&ino).and_then(|c| c.unreported.clone())
    }

    /// The MDS now has `reported`: it stops overriding the attributes
    /// unless written again since.
    pub fn reported(&mut self, ino: InodeId, reported: &Unreported) {
        if let Some(cached) = self.inodes.get_mut(&ino)
            && cached.unreported.as_ref() == Some(reported)
        {
            tracing::debug!(ino = ino.0, size = reported.size, "reported");
            cached.unreported = None;
        }
    }

    /// Inodes with writes the MDS has not heard of, made before `cutoff`.
    pub fn unreported_inodes(&self, cutoff: Timestamp) -> Vec<InodeId> {
        self.inodes
            .iter()
            .filter(|(_, c)| c.unreported.as_ref().is_some_and(|u| u.mtime < cutoff))
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// Forgets unreported writes (they were lost with the session).
    pub fn drop_unreported(&mut self, ino: InodeId) {
        if let Some(cached) = self.inodes.get_mut(&ino) {
            cached.unreported = None;
        }
    }

    /// A revocation starts: until [`CapCache::finish_revoke`], the last
    /// known attributes still answer (the MDS holds back whoever asked
    /// for it, so they are still right). It counts from now: a grant it
    /// covers whose answer arrives meanwhile is cut down at once, so no
    /// write starts under a cap the revocation has already passed over.
    pub fn begin_revoke(&mut self, revoke: &Revoke) -> Revoking {
        self.remember_revocation(revoke);
        let Some(cached) = self.inodes.get_mut(&revoke.ino) else {
            return Revoking {
                revoke: *revoke,
                held: None,
                counted: false,
            };
        };
        tracing::debug!(?revoke, cap = ?cached.cap, "begins a revocation");
        let revoking = Revoking {
            revoke: *revoke,
            held: cached.cap.filter(|held| held.seq <= revoke.seq),
            counted: true,
        };
        cached.revoking += 1;
        cached.dropping += usize::from(revoking.drops_pages());
        revoking
    }

    /// Holds `revoke` against grants it covers, whether or not their
    /// answers have arrived.
    fn remember_revocation(&mut self, revoke: &Revoke) {
        // Of two revocations of one grant, the one leaving less counts
        // (`None`, no cap, orders first).
        let merged = |seen: Option<Revoked>| match seen {
            Some((seq, to)) if seq == revoke.seq => (seq, to.min(revoke.to)),
            Some((seq, to)) if seq > revoke.seq => (seq, to),
            _ => (revoke.seq, revoke.to),
        };
        match self.inodes.get_mut(&revoke.ino) {
            Some(cached) => cached.revoked = Some(merged(cached.revoked)),
            None => {
                let seen = self.late.get(revoke.ino);
                self.late.put(revoke.ino, merged(seen));
            }
        }
    }

    /// A revocation is carried out: the cap is down to what it asked,
    /// and what a lost cap covered goes. True when the ack carries this
    /// client's writes: then the inode shows no cap and no attributes
    /// until [`CapCache::acked`].
    #[must_use]
    pub fn finish_revoke(&mut self, revoking: Revoking) -> bool {
        let revoke = revoking.revoke;
        let Some(cached) = self.inodes.get_mut(&revoke.ino) else {
            return false;
        };
        if revoking.counted {
            cached.revoking = cached.revoking.saturating_sub(1);
            cached.dropping = cached
                .dropping
                .saturating_sub(usize::from(revoking.drops_pages()));
        }
        if let Some(held) = cached.cap
            && held.seq <= revoke.seq
        {
            cached.cap = revoke.to.map(|to| HeldCap {
                mode: to.min(held.mode),
                seq: held.seq,
            });
        }
        let handed_over = cached
            .cap
            .is_none_or(|held| held.mode != CapMode::Exclusive)
            && cached.hand_over_unreported();
        cached.acking += usize::from(handed_over);
        if cached.cap.is_none() {
            cached.drop_cached();
        }
        tracing::debug!(
            ?revoke,
            cap = ?cached.cap,
            size = cached.shown().size,
            handed_over,
            "finished a revocation"
        );
        handed_over
    }

    /// The ack that carried this client's writes to `ino` is answered.
    pub fn acked(&mut self, ino: InodeId) {
        if let Some(cached) = self.inodes.get_mut(&ino) {
            cached.acking = cached.acking.saturating_sub(1);
        }
    }

    /// Drops `ino`'s cap (given back to the MDS) and what it covered.
    pub fn release(&mut self, ino: InodeId) -> Option<HeldCap> {
        let cached = self.inodes.get_mut(&ino)?;
        let held = cached.cap.take();
        cached.hand_over_unreported();
        cached.drop_cached();
        held
    }

    /// Forgets every cap (the session ended); the inodes that had one.
    pub fn clear(&mut self) -> Vec<InodeId> {
        let inodes = self.inodes.keys().copied().collect();
        self.inodes.clear();
        self.late.clear();
        inodes
    }

    /// Least recently used inodes with a cap, beyond the limit, that
    /// `busy` does not keep; at most [`TRIM_BATCH`].
    pub fn trim_candidates(&self, busy: impl Fn(InodeId) -> bool) -> Vec<(InodeId, u64)> {
        if self.inodes.len() <= MAX_CACHED_INODES {
            return Vec::new();
        }
        let mut idle: Vec<(u64, InodeId, u64)> = self
            .inodes
            .iter()
            .filter(|(ino, c)| c.revoking == 0 && c.unreported.is_none() && !busy(**ino))
            .filter_map(|(ino, c)| c.cap.map(|held| (c.used, *ino, held.seq)))
            .collect();
        idle.sort_unstable();
        let excess = (self.inodes.len() - MAX_CACHED_INODES).max(TRIM_BATCH);
        idle.into_iter()
            .take(excess.min(TRIM_BATCH))
            .map(|(_, ino, seq)| (ino, seq))
            .collect()
    }

    /// Forgets inodes that hold no cap and are not being revoked; their
    /// last revocations stay, held against grants still on their way.
    pub fn forget_uncapped(&mut self) {
        let mut forgotten = Vec::new();
        self.inodes.retain(|ino, c| {
            let keep = c.cap.is_some() || c.revoking > 0 || c.acking > 0 || c.unreported.is_some();
            if !keep && let Some(revoked) = c.revoked {
                forgotten.push((*ino, revoked));
            }
            keep
        });
        for (ino, (seq, to)) in forgotten {
            self.remember_revocation(&Revoke { ino, seq, to });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_proto::fs::FileType;
    use aspen_proto::mds::NsReply;

    fn attr(ino: u64, size: u64) -> Attr {
        Attr {
            ino: InodeId(ino),
            kind: FileType::Regular,
            perm: 0o6755,
            nlink: 1,
            uid: 1,
            gid: 1,
            size,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            rdev: 0,
            generation: 1,
            layout: Default::default(),
            acl: None,
        }
    }

    fn reply(attrs: Vec<Attr>, grants: Vec<CapGrant>, version: u64) -> CapReply {
        CapReply {
            result: Ok(NsReply::Done),
            grants,
            attrs,
            version,
            barrier: 0,
        }
    }

    /// A reply granting `mode` (seq `seq`) on a file of `size` bytes.
    fn granted(ino: u64, size: u64, mode: CapMode, seq: u64, version: u64) -> CapReply {
        reply(vec![attr(ino, size)], vec![grant(ino, mode, seq)], version)
    }

    fn revocation(ino: u64, seq: u64, to: Option<CapMode>) -> Revoke {
        Revoke {
            ino: InodeId(ino),
            seq,
            to,
        }
    }

    fn grant(ino: u64, mode: CapMode, seq: u64) -> CapGrant {
        CapGrant {
            ino: InodeId(ino),
            mode,
            seq,
        }
    }

    /// Writes made under an Exclusive cap that a revocation took: once the
    /// ack is answered and the cap granted again, the MDS's newer size
    /// (another client appended meanwhile) is the size here, not the size
    /// those writes reached.
    #[test]
    fn writes_handed_over_with_a_revoked_cap_do_not_override_a_later_grant() {
        let mut cache = CapCache::default();
        let writer = Caller::root();
        cache.absorb(&granted(5, 0, CapMode::Exclusive, 1, 1));
        cache.note_write(InodeId(5), 5000, &writer);
        let revoke = revocation(5, 1, None);
        let revoking = cache.begin_revoke(&revoke);
        assert!(cache.finish_revoke(revoking), "the ack carries the writes");
        cache.absorb(&reply(vec![attr(5, 5000)], vec![], 3));
        cache.acked(InodeId(5));
        cache.absorb(&granted(5, 8000, CapMode::Exclusive, 2, 5));
        assert_eq!(cache.attr(InodeId(5)).unwrap().size, 8000);
        cache.note_write(InodeId(5), 8064, &writer);
        assert_eq!(cache.attr(InodeId(5)).unwrap().size, 8064);
    }

    /// While the ack that carries this client's writes is on its way, a
    /// grant made before the MDS had it (asked for by a lookup or an open
    /// of this client's) comes with the size from before those writes:
    /// neither it nor the attributes answer until the ack's answer, which
    /// brings the size the writes reached.
    #[test]
    fn nothing_answers_while_an_ack_carrying_writes_is_on_its_way() {
        let mut cache = CapCache::default();
        cache.absorb(&granted(5, 0, CapMode::Exclusive, 1, 1));
        cache.note_write(InodeId(5), 5000, &Caller::root());
        let revoke = revocation(5, 1, Some(CapMode::Shared));
        let revoking = cache.begin_revoke(&revoke);
        assert!(cache.finish_revoke(revoking));
        assert_eq!(cache.unreported(InodeId(5)), None, "the ack carries them");
        cache.absorb(&granted(5, 0, CapMode::Exclusive, 2, 2));
        assert_eq!(cache.cap(InodeId(5)), None, "a grant from before the ack");
        assert_eq!(cache.attr(InodeId(5)), None, "a size from before the ack");
        assert!(!cache.attrs_held(InodeId(5)));
        cache.absorb(&reply(vec![attr(5, 5000)], vec![], 3));
        cache.acked(InodeId(5));
        assert_eq!(cache.cap(InodeId(5)).unwrap().mode, CapMode::Exclusive);
        assert_eq!(cache.attr(InodeId(5)).unwrap().size, 5000);
        cache.absorb(&reply(vec![attr(5, 900)], vec![], 4));
        assert_eq!(
            cache.attr(InodeId(5)).unwrap().size,
            900,
            "newer answers win"
        );
    }

    #[test]
    fn nothing_is_answered_without_a_cap_and_older_answers_lose() {
        let mut cache = CapCache::default();
        cache.absorb(&reply(vec![attr(5, 10)], vec![], 3));
        assert_eq!(cache.attr(InodeId(5)), None, "no cap, no answer");
        cache.absorb(&granted(5, 20, CapMode::Shared, 1, 9));
        assert_eq!(cache.attr(InodeId(5)).unwrap().size, 20);
        cache.absorb(&reply(vec![attr(5, 15)], vec![], 4));
        assert_eq!(cache.attr(InodeId(5)).unwrap().size, 20, "an older answer");
    }

    #[test]
    fn attributes_are_held_only_under_a_cap_no_revocation_is_taking() {
        let mut cache = CapCache::default();
        cache.absorb(&reply(vec![attr(5, 10)], vec![], 1));
        assert!(!cache.attrs_held(InodeId(5)), "no cap");
        cache.absorb(&reply(vec![], vec![grant(5, CapMode::Shared, 1)], 2));
        assert!(cache.attrs_held(InodeId(5)));
        let revoke = revocation(5, 1, None);
        let revoking = cache.begin_revoke(&revoke);
        assert!(cache.attr(InodeId(5)).is_some(), "still answered");
        assert!(!cache.attrs_held(InodeId(5)), "but not to be kept");
        assert!(!cache.finish_revoke(revoking));
        assert!(!cache.attrs_held(InodeId(5)));
        cache.absorb(&reply(vec![], vec![grant(5, CapMode::Exclusive, 2)], 3));
        assert!(cache.attrs_held(InodeId(5)));
        cache.release(InodeId(5));
        assert!(!cache.attrs_held(InodeId(5)), "given back");
    }

    #[test]
    fn a_revocation_that_overtakes_its_grant_still_counts() {
        let mut cache = CapCache::default();
        cache.absorb(&granted(5, 10, CapMode::Shared, 1, 1));
        let revoke = revocation(5, 4, None);
        let revoking = cache.begin_revoke(&revoke);
        assert!(revoking.held.is_some());
        assert!(cache.attr(InodeId(5)).is_some(), "answers while revoking");
        assert!(!cache.finish_revoke(revoking));
        assert_eq!(cache.cap(InodeId(5)), None);
        cache.absorb(&granted(5, 10, CapMode::Exclusive, 4, 2));
        assert_eq!(cache.cap(InodeId(5)), None, "grant 4 was revoked");
        cache.absorb(&granted(5, 10, CapMode::Shared, 6, 3));
        assert_eq!(cache.cap(InodeId(5)).unwrap().mode, CapMode::Shared);

        let unknown = revocation(8, 3, Some(CapMode::Shared));
        let unknown_revoking = cache.begin_revoke(&unknown);
        assert!(unknown_revoking.held.is_none());
        assert!(!cache.finish_revoke(unknown_revoking));
        cache.absorb(&granted(8, 1, CapMode::Exclusive, 3, 4));
        assert_eq!(
            cache.cap(InodeId(8)).unwrap().mode,
            CapMode::Shared,
            "a revocation that came before anything else of the inode"
        );
    }

    /// The revocation's event can arrive before the answer of the grant it
    /// covers. That grant is cut down the moment its answer arrives, even
    /// while the revocation is still being carried out: a writer must not
    /// start under a cap whose revocation has already passed it over.
    #[test]
    fn a_grant_answered_while_its_revocation_is_carried_out_is_cut_at_once() {
        let mut cache = CapCache::default();
        cache.absorb(&reply(vec![attr(5, 10)], vec![], 1));
        let revoke = revocation(5, 52, None);
        let revoking = cache.begin_revoke(&revoke);
        assert_eq!(revoking.held, None, "its grant has not arrived yet");
        cache.absorb(&granted(5, 10, CapMode::Exclusive, 52, 2));
        assert_eq!(cache.cap(InodeId(5)), None, "grant 52 is being revoked");
        assert!(!cache.finish_revoke(revoking));
        cache.absorb(&granted(5, 10, CapMode::Exclusive, 53, 3));
        assert_eq!(cache.cap(InodeId(5)).unwrap().mode, CapMode::Exclusive);

        let uncached = revocation(8, 3, Some(CapMode::Shared));
        let revoking = cache.begin_revoke(&uncached);
        cache.absorb(&granted(8, 1, CapMode::Exclusive, 3, 4));
        assert_eq!(
            cache.cap(InodeId(8)).unwrap().mode,
            CapMode::Shared,
            "an inode first cached during the revocation"
        );
        assert!(!cache.finish_revoke(revoking));
        assert_eq!(cache.cap(InodeId(8)).unwrap().mode, CapMode::Shared);

        // Two revocations of one grant: the one leaving less counts.
        let to_none = revocation(9, 7, None);
        let to_shared = Revoke {
            to: Some(CapMode::Shared),
            ..to_none
        };
        let first = cache.begin_revoke(&to_none);
        let second = cache.begin_revoke(&to_shared);
        cache.absorb(&granted(9, 1, CapMode::Exclusive, 7, 5));
        assert_eq!(cache.cap(InodeId(9)), None);
        assert!(!cache.finish_revoke(second));
        assert!(!cache.finish_revoke(first));
        assert_eq!(cache.cap(InodeId(9)), None);
    }

    /// An inode forgotten for room keeps its last revocation: a grant it
    /// covered whose answer arrives later is still cut down.
    #[test]
    fn a_forgotten_inode_keeps_its_last_revocation() {
        let mut cache = CapCache::default();
        cache.absorb(&reply(vec![attr(5, 10)], vec![], 1));
        let revoke = revocation(5, 4, None);
        let revoking = cache.begin_revoke(&revoke);
        assert!(!cache.finish_revoke(revoking));
        cache.forget_uncapped();
        cache.absorb(&granted(5, 10, CapMode::Exclusive, 4, 2));
        assert_eq!(cache.cap(InodeId(5)), None, "grant 4 was revoked");
    }

    /// Past [`MAX_LATE_REVOCATIONS`] the revocations of the oldest grants
    /// go, not one still being carried out (they were all dropped at once).
    #[test]
    fn late_revocations_beyond_the_limit_forget_the_oldest_grants() {
        let mut cache = CapCache::default();
        let limit = MAX_LATE_REVOCATIONS as u64;
        let recent = revocation(1, 10 * limit, None);
        let revoking = cache.begin_revoke(&recent);
        for n in 0..limit {
            let revoking = cache.begin_revoke(&revocation(100 + n, 1 + n, None));
            assert!(!cache.finish_revoke(revoking));
        }
        assert!(!cache.finish_revoke(revoking));
        assert_eq!(cache.late.by_inode.len(), MAX_LATE_REVOCATIONS);
        assert_eq!(cache.late.by_grant.len(), MAX_LATE_REVOCATIONS);
        // The first grant's revocation went; the recent one stays.
        cache.absorb(&granted(100, 10, CapMode::Exclusive, 1, 2));
        assert!(cache.cap(InodeId(100)).is_some());
        cache.absorb(&granted(1, 10, CapMode::Exclusive, 10 * limit, 2));
        assert_eq!(
            cache.cap(InodeId(1)),
            None,
            "the recent revocation was forgotten"
        );
        // One taken by its grant's answer leaves both indexes.
        assert_eq!(cache.late.by_inode.len(), MAX_LATE_REVOCATIONS - 1);
        assert_eq!(cache.late.by_grant.len(), MAX_LATE_REVOCATIONS - 1);
    }

    /// A write that ends without an Exclusive cap is a bug. Its size must
    /// not then override what later grants say.
    #[test]
    fn a_write_noted_without_its_cap_does_not_override_later_answers() {
        let mut cache = CapCache::default();
        cache.absorb(&reply(vec![attr(5, 100)], vec![], 1));
        cache.note_write(InodeId(5), 164, &Caller::root());
        assert_eq!(cache.unreported(InodeId(5)), None);
        cache.absorb(&granted(5, 500, CapMode::Exclusive, 2, 2));
        assert_eq!(cache.attr(InodeId(5)).unwrap().size, 500);
    }

    #[test]
    fn entries_need_the_directory_cap_and_keep_the_newest_answer() {
        let mut cache = CapCache::default();
        let dir = Attr {
            kind: FileType::Directory,
            ..attr(2, 0)
        };
        cache.absorb(&reply(vec![dir.clone(), attr(5, 1)], vec![], 1));
        cache.note_entry(InodeId(2), b"a", Some(InodeId(5)), 1);
        assert_eq!(cache.lookup(InodeId(2), b"a"), None, "no directory cap");
        let grants = vec![grant(2, CapMode::Shared, 1), grant(5, CapMode::Shared, 2)];
        cache.absorb(&reply(vec![dir, attr(5, 1)], grants, 2));
        cache.note_entry(InodeId(2), b"a", Some(InodeId(5)), 5);
        cache.note_entry(InodeId(2), b"a", None, 4);
        assert!(
            matches!(cache.lookup(InodeId(2), b"a"), Some(Found::Entry(a)) if a.ino == InodeId(5))
        );
        cache.note_entry(InodeId(2), b"a", None, 6);
        assert_eq!(cache.lookup(InodeId(2), b"a"), Some(Found::Absent));
        assert_eq!(cache.lookup(InodeId(2), b"b"), None);
        cache.note_complete(InodeId(2));
        assert_eq!(cache.lookup(InodeId(2), b"b"), Some(Found::Absent));
        let revoke = revocation(2, 1, None);
        let revoking = cache.begin_revoke(&revoke);
        assert!(!cache.finish_revoke(revoking));
        assert_eq!(
            cache.lookup(InodeId(2), b"b"),
            None,
            "the cap took the entries"
        );
    }

    #[test]
    fn unreported_writes_show_until_reported() {
        let mut cache = CapCache::default();
        cache.absorb(&granted(5, 10, CapMode::Exclusive, 1, 1));
        let writer = Caller::new(7, 7, vec![]);
        cache.note_write(InodeId(5), 100, &writer);
        let shown = cache.attr(InodeId(5)).unwrap();
        assert_eq!(shown.size, 100);
        assert_eq!(
            shown.perm, 0o755,
            "a write by a non-root caller drops setuid and setgid"
        );
        let unreported = cache.unreported(InodeId(5)).unwrap();
        cache.note_write(InodeId(5), 50, &writer);
        cache.reported(InodeId(5), &unreported);
        assert!(
            cache.unreported(InodeId(5)).is_some(),
            "written again since"
        );
    }
}
