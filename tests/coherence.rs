//! Coherent caching across two mounts of one cluster (an MDS, three OSD
//! processes, two `aspen mount` processes), with the client caches and
//! write-back under capabilities:
//! - a write on A is read on B at once, even while A still has it open
//!   and buffered;
//! - a rename or unlink on A is seen by lookups on B that had cached the
//!   old name;
//! - a file open on B (opened under B's cap, without asking the MDS)
//!   keeps working after A unlinks it;
//! - files A creates on its own (in a directory it made) are seen by B
//!   at once, with the inode numbers and modes A answered with;
//! - O_APPEND from both mounts loses no byte;
//! - both mounts reading and writing one file at once go on without
//!   waiting for each other (neither waits to be evicted);
//! - pages B reads while its cap is being revoked do not outlive the
//!   revocation (B reads A's overwrite once it has returned);
//! - a reader on B and a writer on A that never pause both go on (each
//!   read and write takes a cap the other held, and none waits long);
//! - the size and mtime B sees right after A's close are A's, by path and
//!   through a file B holds open (whose attributes B's kernel keeps);
//! - kill -9 of A while it holds an Exclusive cap with unwritten data: B
//!   goes on after the eviction timeout, and what A had fsynced is intact;
//! - a stopped A whose session is evicted meanwhile has its late writes
//!   refused by the OSDs once it runs again.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use aspen_fsclient::vfs::STUCK_PAGE_DROP;
use aspen_mds::server::revoke::REVOKE_TIMEOUT;
use common::{MOUNT_DAEMONS, TwoMounts};

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn each_mount_sees_the_others_changes_at_once() {
    let cluster = TwoMounts::start();
    let [a, b] = &cluster.mounts;

    // A whole write and close on A, read on B.
    std::fs::write(a.join("note"), b"first").unwrap();
    assert_eq!(read(&b.join("note")), b"first");

    // Written on A and still open (buffered there): B reads it anyway.
    let mut open = OpenOptions::new().write(true).open(a.join("note")).unwrap();
    open.write_all(b"second").unwrap();
    assert_eq!(read(&b.join("note")), b"second", "B waits for A's buffer");
    // A writes again after B took a cap: B sees that too.
    open.write_all(b" and third").unwrap();
    assert_eq!(read(&b.join("note")), b"second and third");
    drop(open);

    // B cached the names; A renames and unlinks; B sees both at once.
    std::fs::create_dir(a.join("dir")).unwrap();
    std::fs::write(a.join("dir/old"), b"x").unwrap();
    std::fs::write(a.join("dir/doomed"), b"y").unwrap();
    assert!(b.join("dir/old").exists() && b.join("dir/doomed").exists());
    assert!(!b.join("dir/new").exists());
    std::fs::rename(a.join("dir/old"), a.join("dir/new")).unwrap();
    assert!(!b.join("dir/old").exists(), "B still sees the old name");
    assert_eq!(read(&b.join("dir/new")), b"x");
    std::fs::remove_file(a.join("dir/doomed")).unwrap();
    let gone = std::fs::metadata(b.join("dir/doomed")).unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::NotFound);
    let listed: Vec<String> = std::fs::read_dir(b.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, vec!["new".to_string()]);

    // B has the file's attributes cached; A writes and closes; B's stat
    // right after shows A's size and mtime.
    let before = std::fs::metadata(b.join("note")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(a.join("note"), vec![1u8; 1000]).unwrap();
    let on_b = std::fs::metadata(b.join("note")).unwrap();
    let on_a = std::fs::metadata(a.join("note")).unwrap();
    assert_eq!(on_b.len(), 1000);
    assert_eq!(
        (on_b.mtime(), on_b.mtime_nsec()),
        (on_a.mtime(), on_a.mtime_nsec())
    );
    assert!(
        (on_b.mtime(), on_b.mtime_nsec()) > (before.mtime(), before.mtime_nsec()),
        "the mtime moved"
    );
    // And a chmod on B is seen on A.
    std::fs::set_permissions(
        b.join("note"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(a.join("note")).unwrap().mode() & 0o777,
        0o600
    );

    // B's kernel keeps the attributes of a file B holds a cap on, and an
    // fstat asks no one: A's chmod and write still show at once, because
    // the cap's loss drops them.
    let held = File::open(b.join("note")).unwrap();
    assert_eq!(held.metadata().unwrap().len(), 1000);
    std::fs::set_permissions(
        a.join("note"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    assert_eq!(held.metadata().unwrap().mode() & 0o777, 0o640);
    std::fs::write(a.join("note"), vec![2u8; 3000]).unwrap();
    assert_eq!(held.metadata().unwrap().len(), 3000, "B's fstat is stale");
}

#[test]
fn a_file_open_on_one_mount_outlives_an_unlink_on_the_other() {
    let cluster = TwoMounts::start();
    let [a, b] = &cluster.mounts;
    // B wrote the file and holds its Exclusive cap, so this open stays on
    // B: the MDS knows of no handle on it.
    std::fs::write(b.join("kept"), b"contents").unwrap();
    let mut held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.join("kept"))
        .unwrap();
    std::fs::remove_file(a.join("kept")).unwrap();
    assert!(!b.join("kept").exists(), "B still sees the name");
    let mut text = String::new();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "contents");
    held.write_all(b" and more").unwrap();
    held.sync_all().unwrap();
    held.seek(SeekFrom::Start(0)).unwrap();
    text.clear();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "contents and more");
    drop(held);
    assert!(std::fs::read_dir(a).unwrap().next().is_none());

    // The same when the mount that has it open unlinks it itself.
    std::fs::write(a.join("own"), b"mine").unwrap();
    let mut held = OpenOptions::new()
        .read(true)
        .append(true)
        .open(a.join("own"))
        .unwrap();
    std::fs::remove_file(a.join("own")).unwrap();
    held.write_all(b" still").unwrap();
    held.sync_all().unwrap();
    held.seek(SeekFrom::Start(0)).unwrap();
    text.clear();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "mine still");
}

#[test]
fn creates_and_unlinks_answered_by_one_mount_are_seen_by_the_other_at_once() {
    let cluster = TwoMounts::start();
    let [a, b] = &cluster.mounts;
    // A made the directory, so it creates files in it on its own (numbers
    // it reserved, the MDS told afterwards). B sees every one at once,
    // with the inode, mode and owner A answered with.
    std::fs::create_dir(a.join("burst")).unwrap();
    let mut made = Vec::new();
    for i in 0..300 {
        let path = a.join(format!("burst/f{i}"));
        std::fs::write(&path, format!("file {i}")).unwrap();
        made.push(std::fs::metadata(&path).unwrap());
    }
    let mut listed: Vec<String> = std::fs::read_dir(b.join("burst"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = (0..300).map(|i| format!("f{i}")).collect();
    expected.sort();
    assert_eq!(listed, expected, "B lists every file A created");
    for (i, on_a) in made.iter().enumerate() {
        let on_b = std::fs::metadata(b.join(format!("burst/f{i}"))).unwrap();
        assert_eq!(
            (on_b.ino(), on_b.mode(), on_b.uid(), on_b.gid()),
            (on_a.ino(), on_a.mode(), on_a.uid(), on_a.gid())
        );
        assert_eq!(
            read(&b.join(format!("burst/f{i}"))),
            format!("file {i}").into_bytes()
        );
    }
    // B creates in A's directory now, and A sees it; A creating again
    // after that meets B's name.
    std::fs::write(b.join("burst/from_b"), b"b").unwrap();
    assert_eq!(read(&a.join("burst/from_b")), b"b");
    let clash = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(a.join("burst/from_b"))
        .unwrap_err();
    assert_eq!(clash.kind(), ErrorKind::AlreadyExists);
    // A created right before B looked the name up.
    std::fs::create_dir(a.join("race")).unwrap();
    File::create(a.join("race/new")).unwrap();
    assert!(b.join("race/new").exists(), "B sees A's create at once");

    // Unlinks A answers itself: B lists the directory right after and
    // finds exactly what is left; a name freed is free for A again at once.
    std::fs::create_dir(a.join("churn")).unwrap();
    for i in 0..200 {
        File::create(a.join(format!("churn/f{i}"))).unwrap();
    }
    for i in 0..200 {
        std::fs::metadata(a.join(format!("churn/f{i}"))).unwrap();
    }
    for i in (0..200).step_by(2) {
        std::fs::remove_file(a.join(format!("churn/f{i}"))).unwrap();
        let gone = std::fs::metadata(a.join(format!("churn/f{i}"))).unwrap_err();
        assert_eq!(gone.kind(), ErrorKind::NotFound, "A still finds f{i}");
    }
    std::fs::remove_file(a.join("churn/f1")).unwrap();
    std::fs::write(a.join("churn/f1"), b"again").unwrap();
    let mut listed: Vec<String> = std::fs::read_dir(b.join("churn"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = (1..200).step_by(2).map(|i| format!("f{i}")).collect();
    expected.sort();
    assert_eq!(listed, expected, "B lists what A left");
    let gone = std::fs::metadata(b.join("churn/f0")).unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::NotFound);
    assert_eq!(read(&b.join("churn/f1")), b"again");
}

#[test]
fn appends_from_both_mounts_lose_no_byte() {
    const RECORDS: usize = 150;
    const RECORD: usize = 64;
    let cluster = TwoMounts::start();
    File::create(cluster.mounts[0].join("log")).unwrap();
    let writers: Vec<_> = cluster
        .mounts
        .iter()
        .enumerate()
        .map(|(n, mount)| {
            let path = mount.join("log");
            std::thread::spawn(move || {
                let mut log = OpenOptions::new().append(true).open(path).unwrap();
                for i in 0..RECORDS {
                    let mut record = format!("{n}:{i:05}:").into_bytes();
                    record.resize(RECORD - 1, b'a' + n as u8);
                    record.push(b'\n');
                    log.write_all(&record).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let log = read(&cluster.mounts[1].join("log"));
    if log.len() != 2 * RECORDS * RECORD {
        let missing: Vec<String> = (0..2)
            .flat_map(|n| (0..RECORDS).map(move |i| format!("{n}:{i:05}:")))
            .filter(|id| !log.chunks(RECORD).any(|r| r.starts_with(id.as_bytes())))
            .collect();
        std::thread::sleep(std::time::Duration::from_secs(2));
        let later = [0, 1].map(|m| read(&cluster.mounts[m].join("log")).len());
        panic!(
            "bytes were lost or doubled: {} of {} bytes; records missing: {missing:?}; \
             read again 2 s later through each mount: {later:?} bytes",
            log.len(),
            2 * RECORDS * RECORD
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for record in log.chunks(RECORD) {
        let text = std::str::from_utf8(record).expect("a torn record");
        let (id, rest) = text.split_at(8);
        let n = id.as_bytes()[0] - b'0';
        assert!(
            rest.trim_end().bytes().all(|c| c == b'a' + n),
            "torn: {text:?}"
        );
        assert!(seen.insert(id.to_string()), "{id} twice");
    }
    assert_eq!(seen.len(), 2 * RECORDS);
}

/// A daemon stopped with SIGSTOP until this is dropped.
struct Stopped<'a> {
    cluster: &'a TwoMounts,
    daemon: u64,
}

impl<'a> Stopped<'a> {
    fn new(cluster: &'a TwoMounts, daemon: u64) -> Stopped<'a> {
        cluster.daemons.signal(daemon, "-STOP");
        Stopped { cluster, daemon }
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.cluster.daemons.signal(self.daemon, "-CONT");
    }
}

/// A Python process holding a file open on a mount: it writes `D` bytes
/// and fsyncs them, then writes `L` bytes it does not, and then answers
/// `fsync` and `close` commands. The file lives in its own process (not
/// the test's) so no other process this test starts inherits it: a file
/// of a stopped mount cannot be closed.
const WRITER: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
os.write(fd, b"D" * int(sys.argv[2]))
os.fsync(fd)
os.write(fd, b"L" * int(sys.argv[3]))
print("written", flush=True)
for line in sys.stdin:
    try:
        if line.strip() == "fsync":
            os.fsync(fd)
        else:
            os.close(fd)
        print("ok", flush=True)
    except OSError as e:
        print("error", e.errno, flush=True)
"#;

struct Writer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Writer {
    fn start(cluster: &TwoMounts, path: &Path, durable: usize, buffered: usize) -> Writer {
        let script = cluster.root.join("writer.py");
        std::fs::write(&script, WRITER).unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(path)
            .args([durable.to_string(), buffered.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "written");
        Writer {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_killed_writer_is_evicted_and_its_fsynced_data_stays() {
    let mut cluster = TwoMounts::start();
    let [a, b] = cluster.mounts.clone();
    // A answers creates in a directory it made itself; once the directory
    // is fsynced, they are at the MDS.
    std::fs::create_dir(a.join("made")).unwrap();
    File::create(a.join("made/kept")).unwrap();
    File::open(a.join("made")).unwrap().sync_all().unwrap();
    let writer = Writer::start(&cluster, &a.join("f"), 8192, 4096);
    cluster.daemons.kill(MOUNT_DAEMONS);
    drop(writer);

    let started = Instant::now();
    let seen = read(&b.join("f"));
    let waited = started.elapsed();
    assert!(
        waited >= REVOKE_TIMEOUT - Duration::from_secs(1),
        "B read after {waited:?}, before A could have been evicted"
    );
    assert!(
        waited < REVOKE_TIMEOUT + Duration::from_secs(30),
        "B waited {waited:?}"
    );
    assert!(
        seen.len() >= 8192,
        "fsynced bytes lost: {} left",
        seen.len()
    );
    assert!(
        seen[..8192].iter().all(|b| *b == b'D'),
        "fsynced bytes changed"
    );
    assert!(
        b.join("made/kept").exists(),
        "a create A answered and fsynced is lost"
    );
    let status = common::status(&cluster.config);
    assert!(status.contains("HEALTH_OK"), "{status}");
}

#[test]
fn an_evicted_writers_late_writes_are_refused() {
    let cluster = TwoMounts::start();
    let [a, b] = cluster.mounts.clone();
    // Buffered on A, and A stopped before its write-back timer fires (it
    // sends only bytes older than its interval).
    let mut writer = Writer::start(&cluster, &a.join("f"), 4096, 4096);
    let stopped = Stopped::new(&cluster, MOUNT_DAEMONS);
    let durable = vec![b'D'; 4096];
    let seen = read(&b.join("f"));
    assert_eq!(seen, durable, "B sees what A had written out, and no more");

    // A runs again: its buffered write must not land.
    drop(stopped);
    assert_eq!(writer.ask("fsync"), format!("error {}", nix::libc::EIO));
    writer.ask("close");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        read(&b.join("f")),
        durable,
        "a late write of the evicted session landed"
    );

    // A's mount goes on with a new session.
    std::fs::write(a.join("after"), b"ok").unwrap();
    assert_eq!(read(&b.join("after")), b"ok");
}

/// A barrier for two threads that gives up after [`Meeting::PATIENCE`],
/// so one thread's failure does not leave the other waiting for ever.
#[derive(Default)]
struct Meeting {
    arrived_and_round: std::sync::Mutex<(usize, u64)>,
    all_here: std::sync::Condvar,
}

impl Meeting {
    const PATIENCE: Duration = Duration::from_secs(60);

    fn wait(&self) {
        let mut state = self.arrived_and_round.lock().unwrap();
        let round = state.1;
        state.0 += 1;
        if state.0 == 2 {
            *state = (0, round + 1);
            self.all_here.notify_all();
            return;
        }
        let (_state, waited) = self
            .all_here
            .wait_timeout_while(state, Self::PATIENCE, |state| state.1 == round)
            .unwrap();
        assert!(!waited.timed_out(), "the other thread never came");
    }
}

/// A file mapped shared, read and written.
struct SharedMapping {
    base: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

impl SharedMapping {
    fn new(file: &File, len: usize) -> SharedMapping {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        let length = std::num::NonZeroUsize::new(len).unwrap();
        // SAFETY: a fresh mapping of a file this test owns; nothing else
        // in the process aliases it.
        let base = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file,
                0,
            )
        }
        .unwrap();
        SharedMapping { base, len }
    }

    /// Copies `bytes` in at `offset` and writes the mapping back (the
    /// kernel sends its dirty pages as a write from the page cache).
    fn write_back(&self, offset: usize, bytes: &[u8]) -> std::io::Result<()> {
        use nix::sys::mman::{MsFlags, msync};
        assert!(offset + bytes.len() <= self.len);
        // SAFETY: the range lies inside the mapping, which lives as long
        // as `self`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().cast::<u8>().add(offset),
                bytes.len(),
            );
            msync(self.base, self.len, MsFlags::MS_SYNC)?;
        }
        Ok(())
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        let _ = unsafe { nix::sys::mman::munmap(self.base, self.len) };
    }
}

/// Both mounts cache the file (Shared) and then write it at the same
/// moment, so each write waits for the other mount's revocation while the
/// kernel holds a page it writes: locked for a `write(2)`, under write-back
/// for a shared mapping's `msync`. Neither revocation may wait for those
/// pages: they did, until both sessions were evicted (20 s, EIO).
#[test]
fn both_mounts_reading_and_writing_one_file_at_once_never_stall() {
    const ROUNDS: usize = 40;
    // Records cross page boundaries: a write then holds two pages.
    const SLOT: usize = 3000;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .unwrap()
        .unwrap() as usize;
    // Then two pages per mount and round, written through a shared mapping
    // (whole pages: a mapping's write-back carries whole pages).
    let mapped = (2 * ROUNDS * SLOT).div_ceil(page_size) * page_size;
    let mapped_len = 2 * page_size;
    let mapped_at = move |round: usize, n: usize| mapped + (2 * round + n) * mapped_len;
    let len = mapped_at(ROUNDS, 0);
    let cluster = TwoMounts::start();
    std::fs::write(cluster.mounts[0].join("shared"), vec![0u8; len]).unwrap();
    let barrier = std::sync::Arc::new(Meeting::default());
    let workers: Vec<_> = cluster
        .mounts
        .iter()
        .enumerate()
        .map(|(n, mount)| {
            let path = mount.join("shared");
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .unwrap();
                let mapping = SharedMapping::new(&file, len);
                let mut waits = Vec::new();
                let mut pages = vec![0u8; mapped_len];
                let other = b'a' + (1 - n) as u8;
                for round in 0..ROUNDS {
                    // Both read (each mount caches the file under Shared)
                    // and see each other's writes of the rounds before.
                    barrier.wait();
                    let mut slots = vec![0u8; 2 * round * SLOT];
                    file.read_exact_at(&mut slots, 0).unwrap();
                    for (i, slot) in slots.chunks(SLOT).enumerate() {
                        let writer = b'a' + (i % 2) as u8;
                        assert!(
                            slot.iter().all(|&c| c == writer),
                            "round {round}: mount {n} reads slot {i} stale"
                        );
                    }
                    if round > 0 {
                        let at = mapped_at(round - 1, 1 - n) as u64;
                        file.read_exact_at(&mut pages, at).unwrap();
                        assert!(
                            pages.iter().all(|&c| c == other),
                            "round {round}: mount {n} reads the other's mapped page stale"
                        );
                    }
                    // Then both write at the same moment: with write(2),
                    // then through the mapping.
                    barrier.wait();
                    let started = Instant::now();
                    let slot = (2 * round + n) * SLOT;
                    file.write_all_at(&vec![b'a' + n as u8; SLOT], slot as u64)
                        .unwrap_or_else(|e| panic!("round {round}: mount {n} writes: {e}"));
                    waits.push(started.elapsed());
                    barrier.wait();
                    let started = Instant::now();
                    mapping
                        .write_back(mapped_at(round, n), &vec![b'a' + n as u8; mapped_len])
                        .unwrap_or_else(|e| panic!("round {round}: mount {n} msyncs: {e}"));
                    waits.push(started.elapsed());
                }
                waits
            })
        })
        .collect();
    let mut waits: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let data = read(&cluster.mounts[0].join("shared"));
    assert_eq!(data, read(&cluster.mounts[1].join("shared")));
    for (i, slot) in data[..2 * ROUNDS * SLOT].chunks(SLOT).enumerate() {
        let writer = b'a' + (i % 2) as u8;
        assert!(slot.iter().all(|&c| c == writer), "slot {i} lost its write");
    }
    for (i, page) in data[mapped..].chunks(mapped_len).enumerate() {
        let writer = b'a' + (i % 2) as u8;
        assert!(
            page.iter().all(|&c| c == writer),
            "mapped page {i} lost its write"
        );
    }
    // No write waited for its session's eviction, and most did not wait
    // for a revocation to give up on the kernel's pages.
    waits.sort();
    let (median, slowest) = (waits[waits.len() / 2], waits[waits.len() - 1]);
    assert!(slowest < REVOKE_TIMEOUT / 4, "a write waited {slowest:?}");
    assert!(
        median < STUCK_PAGE_DROP,
        "half the writes waited {median:?}"
    );
}

/// B reads a file without pause while A overwrites it (same size): each
/// of A's writes makes B's revocation drop B's pages while B's reads go
/// on. A page B read during the revocation must not outlive it: once A's
/// write has returned, B reads A's bytes.
#[test]
fn pages_read_while_a_revocation_drops_them_do_not_outlive_it() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    const ROUNDS: u8 = 40;
    const READERS: usize = 2;
    const LEN: usize = 256 * 1024;

    /// Stops the readers however the test ends.
    struct Stop(std::sync::Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    let cluster = TwoMounts::start();
    let [a, b] = &cluster.mounts;
    std::fs::write(a.join("hot"), vec![0u8; LEN]).unwrap();
    let stop = Stop(std::sync::Arc::new(AtomicBool::new(false)));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let file = File::open(b.join("hot")).unwrap();
            let stop = stop.0.clone();
            std::thread::spawn(move || {
                let mut bytes = vec![0u8; LEN];
                while !stop.load(Ordering::Relaxed) {
                    file.read_exact_at(&mut bytes, 0).unwrap();
                }
            })
        })
        .collect();
    let writer = OpenOptions::new().write(true).open(a.join("hot")).unwrap();
    let on_b = File::open(b.join("hot")).unwrap();
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let started = Instant::now();
        writer.write_all_at(&vec![round; LEN], 0).unwrap();
        let mut bytes = vec![0u8; LEN];
        on_b.read_exact_at(&mut bytes, 0).unwrap();
        rounds.push(started.elapsed());
        if let Some(at) = bytes.iter().position(|&c| c != round) {
            panic!(
                "round {round}: B reads byte {at} as {} after A's write returned",
                bytes[at]
            );
        }
    }
    drop(stop);
    for reader in readers {
        reader.join().unwrap();
    }
    // Most rounds did not wait for a revocation to give up on pages.
    rounds.sort();
    let median = rounds[rounds.len() / 2];
    assert!(median < STUCK_PAGE_DROP, "half the rounds took {median:?}");
}

#[test]
fn a_reader_and_a_writer_without_pause_on_two_mounts_both_go_on() {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    const LEN: u64 = 256 * 1024;
    const RUN: Duration = Duration::from_secs(8);
    /// Far fewer calls than either side makes in `RUN` (700 and more).
    const AT_LEAST: usize = 100;

    /// The waits of `step`, run without pause until `stop` is set; it is
    /// given the call's number and a 4 KiB-aligned offset.
    fn time_each(stop: &AtomicBool, mut step: impl FnMut(usize, u64)) -> Vec<Duration> {
        let mut waits = Vec::new();
        let mut at = 0;
        while !stop.load(Ordering::Relaxed) {
            let begun = Instant::now();
            step(waits.len(), at);
            waits.push(begun.elapsed());
            at = (at + 12 * 1024) % LEN;
        }
        waits.sort();
        waits
    }

    let cluster = TwoMounts::start();
    let [a, b] = &cluster.mounts;
    std::fs::write(a.join("hot"), vec![0u8; LEN as usize]).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let file = OpenOptions::new().write(true).open(a.join("hot")).unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            time_each(&stop, |n, at| {
                let byte = (n % 255) as u8 + 1;
                file.write_all_at(&[byte; 4096], at).unwrap()
            })
        })
    };
    let reader = {
        let file = File::open(b.join("hot")).unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            time_each(&stop, |_, at| {
                let mut bytes = [0u8; 4096];
                file.read_exact_at(&mut bytes, at).unwrap();
                assert!(bytes.iter().all(|&c| c == bytes[0]), "a torn 4 KiB read");
            })
        })
    };
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    for (name, waits) in [("B's reads", reader.join()), ("A's writes", writer.join())] {
        let waits = waits.unwrap();
        assert!(
            waits.len() >= AT_LEAST,
            "{name}: only {} in {RUN:?}",
            waits.len()
        );
        let (p99, max) = (waits[waits.len() * 99 / 100], waits[waits.len() - 1]);
        eprintln!(
            "{name}: {} in {RUN:?}, p99 {p99:?}, max {max:?}",
            waits.len()
        );
        assert!(p99 < STUCK_PAGE_DROP, "{name}: p99 {p99:?}");
        assert!(max < REVOKE_TIMEOUT / 4, "{name}: one waited {max:?}");
    }
}
