//! A namespace with a clock, and shorthands for its operations.

#![allow(dead_code)]

use aspen_mds::namespace::{HandleId, Namespace, NsOp, NsReply, OpContext, SessionId};
use aspen_proto::fs::{Attr, Caller, DirEntry, SetAttr, Timestamp};
use aspen_proto::{Errno, FileLayout, InodeId};

pub const ROOT: InodeId = InodeId::ROOT;

pub fn user(uid: u32) -> Caller {
    Caller::new(uid, uid, vec![])
}

pub struct Fs {
    pub ns: Namespace,
    pub clock: i64,
    pub session: SessionId,
}

impl Fs {
    /// A formatted namespace whose root is `0o777` (so tests can act as users).
    pub fn new() -> Fs {
        Fs::with(Namespace::open_in_memory().unwrap(), 0o777)
    }

    pub fn with(ns: Namespace, root_mode: u32) -> Fs {
        let mut fs = Fs {
            ns,
            clock: 1_000,
            session: SessionId(1),
        };
        let format = NsOp::Format {
            mode: root_mode,
            uid: 0,
            gid: 0,
            layout: FileLayout::default(),
        };
        fs.op(&Caller::root(), format).unwrap();
        fs
    }

    pub fn now(&self) -> Timestamp {
        Timestamp::new(self.clock, 0)
    }

    pub fn op(&mut self, caller: &Caller, op: NsOp) -> Result<NsReply, Errno> {
        self.clock += 1;
        let ctx = OpContext {
            caller: caller.clone(),
            now: self.now(),
            session: self.session,
        };
        self.ns.apply(&op, &ctx).expect("storage works")
    }

    fn attr(reply: Result<NsReply, Errno>) -> Result<Attr, Errno> {
        match reply? {
            NsReply::Attr(attr) | NsReply::Opened { attr, .. } => Ok(attr),
            NsReply::Done | NsReply::Reserved(_) | NsReply::Reported(_) | NsReply::Mutated(_) => {
                panic!("expected attributes")
            }
        }
    }

    pub fn mkdir(
        &mut self,
        c: &Caller,
        parent: InodeId,
        name: &str,
        mode: u32,
    ) -> Result<Attr, Errno> {
        Fs::attr(self.op(
            c,
            NsOp::Mkdir {
                parent,
                name: name.into(),
                mode,
                umask: 0,
            },
        ))
    }

    pub fn mknod(
        &mut self,
        c: &Caller,
        parent: InodeId,
        name: &str,
        mode: u32,
    ) -> Result<Attr, Errno> {
        Fs::attr(self.op(
            c,
            NsOp::Mknod {
                parent,
                name: name.into(),
                mode,
                umask: 0,
                rdev: 0,
            },
        ))
    }

    pub fn symlink(
        &mut self,
        c: &Caller,
        parent: InodeId,
        name: &str,
        target: &str,
    ) -> Result<Attr, Errno> {
        Fs::attr(self.op(
            c,
            NsOp::Symlink {
                parent,
                name: name.into(),
                target: target.into(),
            },
        ))
    }

    pub fn link(
        &mut self,
        c: &Caller,
        ino: InodeId,
        parent: InodeId,
        name: &str,
    ) -> Result<Attr, Errno> {
        Fs::attr(self.op(
            c,
            NsOp::Link {
                ino,
                new_parent: parent,
                new_name: name.into(),
            },
        ))
    }

    pub fn unlink(&mut self, c: &Caller, parent: InodeId, name: &str) -> Result<(), Errno> {
        self.op(
            c,
            NsOp::Unlink {
                parent,
                name: name.into(),
            },
        )
        .map(drop)
    }

    pub fn rmdir(&mut self, c: &Caller, parent: InodeId, name: &str) -> Result<(), Errno> {
        self.op(
            c,
            NsOp::Rmdir {
                parent,
                name: name.into(),
            },
        )
        .map(drop)
    }

    pub fn rename(
        &mut self,
        c: &Caller,
        parent: InodeId,
        name: &str,
        new_parent: InodeId,
        new_name: &str,
        flags: u32,
    ) -> Result<(), Errno> {
        let op = NsOp::Rename {
            parent,
            name: name.into(),
            new_parent,
            new_name: new_name.into(),
            flags,
        };
        self.op(c, op).map(drop)
    }

    pub fn setattr(&mut self, c: &Caller, ino: InodeId, changes: SetAttr) -> Result<Attr, Errno> {
        Fs::attr(self.op(c, NsOp::SetAttr { ino, changes }))
    }

    /// Sets the size as `truncate(2)` does.
    pub fn truncate(&mut self, c: &Caller, ino: InodeId, size: u64) -> Result<Attr, Errno> {
        let changes = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        self.setattr(c, ino, changes)
    }

    pub fn open(&mut self, c: &Caller, ino: InodeId, flags: u32) -> Result<HandleId, Errno> {
        match self.op(c, NsOp::Open { ino, flags })? {
            NsReply::Opened { handle, .. } => Ok(handle),
            other => panic!("{other:?}"),
        }
    }

    pub fn create(
        &mut self,
        c: &Caller,
        parent: InodeId,
        name: &str,
        mode: u32,
        flags: u32,
    ) -> Result<(Attr, HandleId), Errno> {
        match self.op(
            c,
            NsOp::Create {
                parent,
                name: name.into(),
                mode,
                umask: 0,
                flags,
            },
        )? {
            NsReply::Opened { attr, handle } => Ok((attr, handle)),
            other => panic!("{other:?}"),
        }
    }

    pub fn release(&mut self, handle: HandleId) -> Result<(), Errno> {
        self.op(&Caller::root(), NsOp::Release { handle }).map(drop)
    }

    pub fn getattr(&self, ino: InodeId) -> Result<Attr, Errno> {
        self.ns.getattr(ino).unwrap()
    }

    pub fn lookup(&self, c: &Caller, parent: InodeId, name: &str) -> Result<Attr, Errno> {
        self.ns.lookup(parent, name.as_bytes(), c).unwrap()
    }

    pub fn readdir(
        &self,
        c: &Caller,
        ino: InodeId,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<DirEntry>, Errno> {
        self.ns.readdir(ino, offset, limit, c).unwrap()
    }

    /// Every name in a directory, `.` and `..` excluded.
    pub fn names(&self, ino: InodeId) -> Vec<String> {
        self.readdir(&Caller::root(), ino, 0, 1024)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .filter(|n| n != "." && n != "..")
            .collect()
    }
}
