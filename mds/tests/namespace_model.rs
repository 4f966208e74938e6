//! Model-based test: random sequences of namespace operations run against
//! the SQLite state machine and against a small in-memory model of POSIX
//! namespace semantics. Every result, errno and the resulting tree must
//! match.

mod common;

use std::collections::{BTreeMap, HashMap};

use aspen_mds::namespace::{Namespace, NsOp, NsReply};
use aspen_proto::fs::{Attr, Caller, FileType, SetAttr, mode, rename_flags};
use aspen_proto::{Errno, InodeId};
use common::Fs;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

// ---------------- the model ----------------

#[derive(Clone, Debug)]
struct Node {
    kind: FileType,
    perm: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    entries: BTreeMap<Vec<u8>, u64>,
    parent: u64,
}

/// POSIX namespace semantics, kept as simple as possible: a map of inodes.
struct Model {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

type Outcome = Result<Option<(u64, FileType, u32, u32, u32, u32)>, Errno>;

fn may(node: &Node, c: &Caller, mask: u32) -> bool {
    if c.uid == 0 {
        return mask & 1 == 0 || node.perm & 0o111 != 0 || node.kind == FileType::Directory;
    }
    let bits = if c.uid == node.uid {
        node.perm >> 6
    } else if c.gid == node.gid || c.groups.contains(&node.gid) {
        node.perm >> 3
    } else {
        node.perm
    } & 7;
    bits & mask == mask
}

impl Model {
    fn new() -> Model {
        let root = Node {
            kind: FileType::Directory,
            perm: 0o777,
            uid: 0,
            gid: 0,
            nlink: 2,
            entries: BTreeMap::new(),
            parent: 1,
        };
        Model {
            nodes: HashMap::from([(1, root)]),
            next_ino: 2,
        }
    }

    fn get(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn describe(&self, ino: u64) -> Outcome {
        let n = &self.nodes[&ino];
        Ok(Some((ino, n.kind, n.perm, n.nlink, n.uid, n.gid)))
    }

    fn search(&self, dir: u64, c: &Caller) -> Result<&Node, Errno> {
        let d = self.get(dir)?;
        if d.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if !may(d, c, 1) {
            return Err(Errno::EACCES);
        }
        Ok(d)
    }

    fn writable_dir(&self, dir: u64, c: &Caller) -> Result<(), Errno> {
        if !may(self.get(dir)?, c, 3) {
            return Err(Errno::EACCES);
        }
        Ok(())
    }

    fn sticky_ok(&self, dir: u64, victim: u64, c: &Caller) -> Result<(), Errno> {
        let (d, v) = (&self.nodes[&dir], &self.nodes[&victim]);
        if d.perm & 0o1000 != 0 && c.uid != 0 && c.uid != d.uid && c.uid != v.uid {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    fn check_name(name: &[u8]) -> Result<(), Errno> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(())
    }

    fn create(&mut self, c: &Caller, dir: u64, name: &[u8], kind: FileType, perm: u32) -> Outcome {
        Model::check_name(name)?;
        self.search(dir, c)?;
        if self.nodes[&dir].entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        self.writable_dir(dir, c)?;
        if self.nodes[&dir].nlink == 0 {
            return Err(Errno::ENOENT);
        }
        let parent = &self.nodes[&dir];
        let setgid_dir = parent.perm & 0o2000 != 0;
        let gid = if setgid_dir { parent.gid } else { c.gid };
        let mut perm = perm;
        if setgid_dir && kind == FileType::Directory {
            perm |= 0o2000;
        }
        if kind != FileType::Directory && c.uid != 0 && !(c.gid == gid || c.groups.contains(&gid)) {
            perm &= !0o2000;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let is_dir = kind == FileType::Directory;
        self.nodes.insert(
            ino,
            Node {
                kind,
                perm,
                uid: c.uid,
                gid,
                nlink: if is_dir { 2 } else { 1 },
                entries: BTreeMap::new(),
                parent: dir,
            },
        );
        let parent = self.nodes.get_mut(&dir).unwrap();
        parent.entries.insert(name.to_vec(), ino);
        if is_dir {
            parent.nlink += 1;
        }
        self.describe(ino)
    }

    fn link(&mut self, c: &Caller, ino: u64, dir: u64, name: &[u8]) -> Outcome {
        self.get(ino)?;
        self.get(dir)?;
        Model::check_name(name)?;
        self.search(dir, c)?;
        if self.nodes[&dir].entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        self.writable_dir(dir, c)?;
        if self.nodes[&dir].nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if self.nodes[&ino].kind == FileType::Directory {
            return Err(Errno::EPERM);
        }
        self.nodes
            .get_mut(&dir)
            .unwrap()
            .entries
            .insert(name.to_vec(), ino);
        self.nodes.get_mut(&ino).unwrap().nlink += 1;
        self.describe(ino)
    }

    fn may_delete(&self, c: &Caller, dir: u64, victim: u64, want_dir: bool) -> Result<(), Errno> {
        self.writable_dir(dir, c)?;
        self.sticky_ok(dir, victim, c)?;
        let is_dir = self.nodes[&victim].kind == FileType::Directory;
        match (want_dir, is_dir) {
            (true, false) => Err(Errno::ENOTDIR),
            (false, true) => Err(Errno::EISDIR),
            _ => Ok(()),
        }
    }

    fn drop_link(&mut self, victim: u64) {
        let node = self.nodes.get_mut(&victim).unwrap();
        node.nlink = if node.kind == FileType::Directory {
            0
        } else {
            node.nlink - 1
        };
        if node.nlink == 0 {
            self.nodes.remove(&victim);
        }
    }

    fn unlink(&mut self, c: &Caller, dir: u64, name: &[u8], want_dir: bool) -> Outcome {
        if want_dir && name == b"." {
            return Err(Errno::EINVAL);
        }
        if want_dir && name == b".." {
            return Err(Errno::ENOTEMPTY);
        }
        Model::check_name(name)?;
        self.search(dir, c)?;
        let victim = *self.nodes[&dir].entries.get(name).ok_or(Errno::ENOENT)?;
        self.may_delete(c, dir, victim, want_dir)?;
        if want_dir && !self.nodes[&victim].entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let parent = self.nodes.get_mut(&dir).unwrap();
        parent.entries.remove(name);
        if want_dir {
            parent.nlink -= 1;
        }
        self.drop_link(victim);
        Ok(None)
    }

    fn is_ancestor(&self, ancestor: u64, mut dir: u64) -> bool {
        loop {
            if dir == ancestor {
                return true;
            }
            if dir == 1 {
                return false;
            }
            dir = self.nodes[&dir].parent;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rename(
        &mut self,
        c: &Caller,
        od: u64,
        on: &[u8],
        nd: u64,
        nn: &[u8],
        flags: u32,
    ) -> Outcome {
        let exchange = flags & rename_flags::RENAME_EXCHANGE != 0;
        let noreplace = flags & rename_flags::RENAME_NOREPLACE != 0;
        if flags & !3 != 0 || (exchange && noreplace) {
            return Err(Errno::EINVAL);
        }
        Model::check_name(on)?;
        Model::check_name(nn)?;
        self.search(od, c)?;
        self.search(nd, c)?;
        let src = *self.nodes[&od].entries.get(on).ok_or(Errno::ENOENT)?;
        let dst = self.nodes[&nd].entries.get(nn).copied();
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        if noreplace && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        let src_dir = self.nodes[&src].kind == FileType::Directory;
        if src_dir && self.is_ancestor(src, nd) {
            return Err(Errno::EINVAL);
        }
        if let Some(dst) = dst
            && self.nodes[&dst].kind == FileType::Directory
            && self.is_ancestor(dst, od)
        {
            return Err(if exchange {
                Errno::EINVAL
            } else {
                Errno::ENOTEMPTY
            });
        }
        self.may_delete(c, od, src, src_dir)?;
        let reparent_ok = |m: &Model, moved: u64, from: u64, to: u64| -> Result<(), Errno> {
            let node = &m.nodes[&moved];
            if node.kind == FileType::Directory && from != to && !may(node, c, 2) {
                return Err(Errno::EACCES);
            }
            Ok(())
        };
        match dst {
            Some(dst) if exchange => {
                let dst_dir = self.nodes[&dst].kind == FileType::Directory;
                self.may_delete(c, nd, dst, dst_dir)?;
                reparent_ok(self, dst, nd, od)?;
            }
            Some(dst) => self.may_delete(c, nd, dst, src_dir)?,
            None => self.writable_dir(nd, c)?,
        }
        reparent_ok(self, src, od, nd)?;
        if dst == Some(src) {
            return Ok(None);
        }
        if exchange {
            let dst = dst.unwrap();
            self.nodes
                .get_mut(&od)
                .unwrap()
                .entries
                .insert(on.to_vec(), dst);
            self.nodes
                .get_mut(&nd)
                .unwrap()
                .entries
                .insert(nn.to_vec(), src);
            for (moved, to, from) in [(src, nd, od), (dst, od, nd)] {
                if self.nodes[&moved].kind == FileType::Directory && od != nd {
                    self.nodes.get_mut(&moved).unwrap().parent = to;
                    self.nodes.get_mut(&from).unwrap().nlink -= 1;
                    self.nodes.get_mut(&to).unwrap().nlink += 1;
                }
            }
            return Ok(None);
        }
        if let Some(dst) = dst {
            if self.nodes[&dst].kind == FileType::Directory {
                if !self.nodes[&dst].entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                self.nodes.get_mut(&nd).unwrap().nlink -= 1;
            }
            self.nodes.get_mut(&nd).unwrap().entries.remove(nn);
            self.drop_link(dst);
        }
        self.nodes.get_mut(&od).unwrap().entries.remove(on);
        self.nodes
            .get_mut(&nd)
            .unwrap()
            .entries
            .insert(nn.to_vec(), src);
        if src_dir && od != nd {
            self.nodes.get_mut(&src).unwrap().parent = nd;
            self.nodes.get_mut(&od).unwrap().nlink -= 1;
            self.nodes.get_mut(&nd).unwrap().nlink += 1;
        }
        Ok(None)
    }

    fn chmod(&mut self, c: &Caller, ino: u64, perm: u32) -> Outcome {
        let node = self.get(ino)?;
        if c.uid != 0 && c.uid != node.uid {
            return Err(Errno::EPERM);
        }
        let mut perm = perm & 0o7777;
        if c.uid != 0 && !(c.gid == node.gid || c.groups.contains(&node.gid)) {
            perm &= !0o2000;
        }
        self.nodes.get_mut(&ino).unwrap().perm = perm;
        self.describe(ino)
    }

    fn chown(&mut self, c: &Caller, ino: u64, uid: Option<u32>, gid: Option<u32>) -> Outcome {
        let node = self.get(ino)?;
        if uid.is_none() && gid.is_none() {
            return self.describe(ino);
        }
        if c.uid != 0 {
            let in_group = |g: u32| c.gid == g || c.groups.contains(&g);
            let bad_uid = uid.is_some_and(|u| u != node.uid);
            let bad_gid = gid.is_some_and(|g| g != node.gid && !in_group(g));
            if c.uid != node.uid || bad_uid || bad_gid {
                return Err(Errno::EPERM);
            }
        }
        let node = self.nodes.get_mut(&ino).unwrap();
        node.uid = uid.unwrap_or(node.uid);
        node.gid = gid.unwrap_or(node.gid);
        if (uid.is_some() || gid.is_some()) && node.kind != FileType::Directory {
            node.perm &= !0o4000;
            if node.perm & 0o010 != 0 {
                node.perm &= !0o2000;
            }
        }
        self.describe(ino)
    }

    fn lookup(&self, c: &Caller, dir: u64, name: &[u8]) -> Outcome {
        Model::check_name(name)?;
        self.search(dir, c)?;
        let ino = *self.nodes[&dir].entries.get(name).ok_or(Errno::ENOENT)?;
        self.describe(ino)
    }
}

// ---------------- operations ----------------

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Clone, Debug)]
enum Op {
    Mkdir {
        caller: u8,
        dir: u8,
        name: u8,
        perm: u32,
    },
    Mknod {
        caller: u8,
        dir: u8,
        name: u8,
        perm: u32,
    },
    Link {
        caller: u8,
        ino: u8,
        dir: u8,
        name: u8,
    },
    Unlink {
        caller: u8,
        dir: u8,
        name: u8,
    },
    Rmdir {
        caller: u8,
        dir: u8,
        name: u8,
    },
    Rename {
        caller: u8,
        dir: u8,
        name: u8,
        new_dir: u8,
        new_name: u8,
        flags: u32,
    },
    Chmod {
        caller: u8,
        ino: u8,
        perm: u32,
    },
    Chown {
        caller: u8,
        ino: u8,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Lookup {
        caller: u8,
        dir: u8,
        name: u8,
    },
}

fn caller(index: u8) -> Caller {
    match index % 4 {
        0 => Caller::root(),
        1 => Caller::new(1000, 1000, vec![]),
        2 => Caller::new(1001, 1001, vec![1000]),
        _ => Caller::new(1002, 1002, vec![]),
    }
}

fn arb_perm() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0o755),
        Just(0o777),
        Just(0o700),
        Just(0o1777),
        Just(0o2775),
        Just(0o500),
        0u32..0o7777
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let c = any::<u8>();
    let i = any::<u8>();
    let n = 0u8..4;
    let owner = prop_oneof![
        Just(None),
        Just(Some(0)),
        Just(Some(1000)),
        Just(Some(1001))
    ];
    prop_oneof![
        3 => (c, i, n.clone(), arb_perm()).prop_map(|(caller, dir, name, perm)| Op::Mkdir { caller, dir, name, perm }),
        3 => (c, i, n.clone(), arb_perm()).prop_map(|(caller, dir, name, perm)| Op::Mknod { caller, dir, name, perm }),
        1 => (c, i, i, n.clone()).prop_map(|(caller, ino, dir, name)| Op::Link { caller, ino, dir, name }),
        2 => (c, i, n.clone()).prop_map(|(caller, dir, name)| Op::Unlink { caller, dir, name }),
        2 => (c, i, n.clone()).prop_map(|(caller, dir, name)| Op::Rmdir { caller, dir, name }),
        4 => (c, i, n.clone(), i, n.clone(), prop_oneof![Just(0u32), Just(1), Just(2), Just(3), Just(8)])
            .prop_map(|(caller, dir, name, new_dir, new_name, flags)| Op::Rename { caller, dir, name, new_dir, new_name, flags }),
        1 => (c, i, arb_perm()).prop_map(|(caller, ino, perm)| Op::Chmod { caller, ino, perm }),
        1 => (c, i, owner.clone(), owner).prop_map(|(caller, ino, uid, gid)| Op::Chown { caller, ino, uid, gid }),
        2 => (c, i, n).prop_map(|(caller, dir, name)| Op::Lookup { caller, dir, name }),
    ]
}

/// Maps a generated index onto an inode number that exists or existed
/// (and sometimes one that never did).
fn ino_of(model: &Model, index: u8) -> u64 {
    1 + u64::from(index) % model.next_ino
}

fn summarize(reply: Result<NsReply, Errno>) -> Outcome {
    let attr: Attr = match reply? {
        NsReply::Attr(attr) | NsReply::Opened { attr, .. } => attr,
        NsReply::Done | NsReply::Reserved(_) | NsReply::Reported(_) | NsReply::Mutated(_) => {
            return Ok(None);
        }
    };
    Ok(Some((
        attr.ino.0, attr.kind, attr.perm, attr.nlink, attr.uid, attr.gid,
    )))
}

fn run(fs: &mut Fs, model: &mut Model, op: &Op) -> (Outcome, Outcome) {
    let name = |n: u8| NAMES[n as usize].as_bytes().to_vec();
    match op.clone() {
        Op::Mkdir {
            caller: c,
            dir,
            name: n,
            perm,
        } => {
            let dir = ino_of(model, dir);
            let real = fs.op(
                &caller(c),
                NsOp::Mkdir {
                    parent: InodeId(dir),
                    name: name(n),
                    mode: perm,
                    umask: 0,
                },
            );
            (
                summarize(real),
                model.create(
                    &caller(c),
                    dir,
                    &name(n),
                    FileType::Directory,
                    perm & 0o1777,
                ),
            )
        }
        Op::Mknod {
            caller: c,
            dir,
            name: n,
            perm,
        } => {
            let dir = ino_of(model, dir);
            let op = NsOp::Mknod {
                parent: InodeId(dir),
                name: name(n),
                mode: mode::S_IFREG | perm,
                umask: 0,
                rdev: 0,
            };
            (
                summarize(fs.op(&caller(c), op)),
                model.create(&caller(c), dir, &name(n), FileType::Regular, perm & 0o7777),
            )
        }
        Op::Link {
            caller: c,
            ino,
            dir,
            name: n,
        } => {
            let (ino, dir) = (ino_of(model, ino), ino_of(model, dir));
            let real = fs.op(
                &caller(c),
                NsOp::Link {
                    ino: InodeId(ino),
                    new_parent: InodeId(dir),
                    new_name: name(n),
                },
            );
            (summarize(real), model.link(&caller(c), ino, dir, &name(n)))
        }
        Op::Unlink {
            caller: c,
            dir,
            name: n,
        } => {
            let dir = ino_of(model, dir);
            let real = fs.op(
                &caller(c),
                NsOp::Unlink {
                    parent: InodeId(dir),
                    name: name(n),
                },
            );
            let expected = model
                .get(dir)
                .map(drop)
                .and_then(|_| model.unlink(&caller(c), dir, &name(n), false));
            (summarize(real), expected)
        }
        Op::Rmdir {
            caller: c,
            dir,
            name: n,
        } => {
            let dir = ino_of(model, dir);
            let real = fs.op(
                &caller(c),
                NsOp::Rmdir {
                    parent: InodeId(dir),
                    name: name(n),
                },
            );
            let expected = model
                .get(dir)
                .map(drop)
                .and_then(|_| model.unlink(&caller(c), dir, &name(n), true));
            (summarize(real), expected)
        }
        Op::Rename {
            caller: c,
            dir,
            name: n,
            new_dir,
            new_name,
            flags,
        } => {
            let (od, nd) = (ino_of(model, dir), ino_of(model, new_dir));
            let real = fs.op(
                &caller(c),
                NsOp::Rename {
                    parent: InodeId(od),
                    name: name(n),
                    new_parent: InodeId(nd),
                    new_name: name(new_name),
                    flags,
                },
            );
            (
                summarize(real),
                model.rename(&caller(c), od, &name(n), nd, &name(new_name), flags),
            )
        }
        Op::Chmod {
            caller: c,
            ino,
            perm,
        } => {
            let ino = ino_of(model, ino);
            let changes = SetAttr {
                mode: Some(perm),
                ..SetAttr::default()
            };
            (
                summarize(fs.op(
                    &caller(c),
                    NsOp::SetAttr {
                        ino: InodeId(ino),
                        changes,
                    },
                )),
                model.chmod(&caller(c), ino, perm),
            )
        }
        Op::Chown {
            caller: c,
            ino,
            uid,
            gid,
        } => {
            let ino = ino_of(model, ino);
            let changes = SetAttr {
                uid,
                gid,
                ..SetAttr::default()
            };
            (
                summarize(fs.op(
                    &caller(c),
                    NsOp::SetAttr {
                        ino: InodeId(ino),
                        changes,
                    },
                )),
                model.chown(&caller(c), ino, uid, gid),
            )
        }
        Op::Lookup {
            caller: c,
            dir,
            name: n,
        } => {
            let dir = ino_of(model, dir);
            let real = fs.ns.lookup(InodeId(dir), &name(n), &caller(c)).unwrap();
            let real = real.map(|a| Some((a.ino.0, a.kind, a.perm, a.nlink, a.uid, a.gid)));
            (
                real,
                model
                    .get(dir)
                    .map(drop)
                    .and_then(|_| model.lookup(&caller(c), dir, &name(n))),
            )
        }
    }
}

/// The whole tree must agree: every live inode's attributes and every
/// directory's entries; inodes the model dropped must be gone.
fn compare_trees(fs: &Fs, model: &Model) -> Result<(), TestCaseError> {
    for ino in 1..model.next_ino {
        let real = fs.ns.getattr(InodeId(ino)).unwrap();
        match model.nodes.get(&ino) {
            None => prop_assert_eq!(
                real.map(|a| a.ino),
                Err(Errno::ENOENT),
                "inode {} should be gone",
                ino
            ),
            Some(node) => {
                let attr = real.map_err(|e| TestCaseError::fail(format!("inode {ino}: {e}")))?;
                prop_assert_eq!(
                    (attr.kind, attr.perm, attr.nlink, attr.uid, attr.gid),
                    (node.kind, node.perm, node.nlink, node.uid, node.gid),
                    "inode {}",
                    ino
                );
                if node.kind == FileType::Directory {
                    let entries = fs
                        .ns
                        .readdir(InodeId(ino), 0, 1024, &Caller::root())
                        .unwrap()
                        .unwrap();
                    let real: BTreeMap<Vec<u8>, u64> = entries
                        .into_iter()
                        .filter(|e| e.name != b"." && e.name != b"..")
                        .map(|e| (e.name, e.ino.0))
                        .collect();
                    prop_assert_eq!(&real, &node.entries, "entries of {}", ino);
                    let parent = fs
                        .ns
                        .lookup(InodeId(ino), b"..", &Caller::root())
                        .unwrap()
                        .unwrap();
                    prop_assert_eq!(parent.ino.0, node.parent, "parent of {}", ino);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn state_machine_matches_the_posix_model(ops in prop::collection::vec(arb_op(), 1..80)) {
        let mut fs = Fs::with(Namespace::open_in_memory().unwrap(), 0o777);
        let mut model = Model::new();
        for (step, op) in ops.iter().enumerate() {
            let (real, expected) = run(&mut fs, &mut model, op);
            prop_assert_eq!(&real, &expected, "step {}: {:?}", step, op);
        }
        compare_trees(&fs, &model)?;
    }
}
