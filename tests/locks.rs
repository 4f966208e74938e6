//! fcntl and flock locks across two mounts of one cluster (an MDS, three
//! OSD processes, two `aspen mount` processes): F_GETLK on one mount reports
//! the other's lock and pid, F_SETLK is refused while it is held, F_SETLKW
//! waits and is woken when it goes, a close drops the closer's locks, two
//! owners waiting for each other get EDEADLK, a client killed with
//! kill -9 loses its locks when its session times out, and a lock outlives
//! kill -9 of the MDS leader (three MDS members). A flock holds across the
//! mounts too and lasts until the last close of its open file description;
//! a process waiting for a lock can be interrupted by a signal or killed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use aspen_mds::server::sessions::SESSION_TIMEOUT;
use common::{MOUNT_DAEMONS, TwoMounts};

/// A Python process that runs lock commands read from stdin, one per line
/// (`lock|trylock|unlock|getlk START LEN`, `flock|tryflock|tryshflock|unflock`,
/// `flockalarm SECONDS` (a blocking flock that SIGALRM interrupts),
/// `openclose` (another descriptor of the file opened and closed), `close`,
/// `reopen`), and answers each with one line.
const LOCKER: &str = r#"
import fcntl, os, signal, struct, sys
path = sys.argv[1]
FLOCKS = {"flock": fcntl.LOCK_EX, "tryflock": fcntl.LOCK_EX | fcntl.LOCK_NB,
          "tryshflock": fcntl.LOCK_SH | fcntl.LOCK_NB, "unflock": fcntl.LOCK_UN}
fd = os.open(path, os.O_RDWR)
print("pid", os.getpid(), flush=True)
for line in sys.stdin:
    word = line.split()
    try:
        if word[0] == "lock":
            fcntl.lockf(fd, fcntl.LOCK_EX, int(word[2]), int(word[1]))
        elif word[0] == "trylock":
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, int(word[2]), int(word[1]))
        elif word[0] == "unlock":
            fcntl.lockf(fd, fcntl.LOCK_UN, int(word[2]), int(word[1]))
        elif word[0] == "getlk":
            query = struct.pack("hhqqi", fcntl.F_WRLCK, 0, int(word[1]), int(word[2]), 0)
            kind, _, start, length, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))
            print("getlk", kind, start, length, pid, flush=True)
            continue
        elif word[0] in FLOCKS:
            fcntl.flock(fd, FLOCKS[word[0]])
        elif word[0] == "flockalarm":
            def on_alarm(signum, frame):
                raise TimeoutError()
            signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(int(word[1]))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except TimeoutError:
                print("interrupted", flush=True)
                continue
            finally:
                signal.alarm(0)
        elif word[0] == "openclose":
            os.close(os.open(path, os.O_RDWR))
        elif word[0] == "close":
            os.close(fd)
        elif word[0] == "reopen":
            fd = os.open(path, os.O_RDWR)
        print("ok", flush=True)
    except OSError as e:
        print("error", e.errno, flush=True)
"#;

/// The locker's answer to a call that failed with `errno`.
fn refused(errno: i32) -> String {
    format!("error {errno}")
}

struct Locker {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    pid: u32,
}

impl Locker {
    fn start(script: &Path, file: &Path) -> Locker {
        let mut child = Command::new("python3")
            .arg(script)
            .arg(file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                if send.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(30)).unwrap();
        let pid = first.strip_prefix("pid ").unwrap().parse().unwrap();
        Locker {
            child,
            stdin,
            lines,
            pid,
        }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
    }

    fn answer_within(&self, seconds: u64) -> Option<String> {
        self.lines.recv_timeout(Duration::from_secs(seconds)).ok()
    }

    fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.answer_within(30)
            .unwrap_or_else(|| panic!("no answer to {command}"))
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the locker script and a file `shared` into `cluster`; the
/// answer starts a locker on that file through mount 0 or 1.
fn lockers(cluster: &TwoMounts) -> impl Fn(usize) -> Locker + use<> {
    let script = cluster.root.join("locker.py");
    std::fs::write(&script, LOCKER).unwrap();
    std::fs::write(cluster.mounts[0].join("shared"), vec![7u8; 4096]).unwrap();
    let files: Vec<_> = cluster.mounts.iter().map(|m| m.join("shared")).collect();
    move |mount| Locker::start(&script, &files[mount])
}

#[test]
fn fcntl_locks_hold_across_two_mounts() {
    let cluster = TwoMounts::start();
    let locker = lockers(&cluster);
    let mut a = locker(0);
    let mut b = locker(1);

    // A holds bytes 0..100: B sees it with A's pid and cannot take it.
    assert_eq!(a.ask("lock 0 100"), "ok");
    let getlk = b.ask("getlk 50 10");
    let expected = format!("getlk {} 0 100 {}", nix::libc::F_WRLCK, a.pid);
    assert_eq!(getlk, expected, "F_GETLK on B");
    assert_eq!(b.ask("trylock 0 10"), refused(nix::libc::EAGAIN));
    assert_eq!(b.ask("trylock 100 10"), "ok", "a range A does not hold");

    // B waits for A's range; A's unlock wakes it promptly.
    b.send("lock 0 10");
    assert_eq!(b.answer_within(2), None, "B got a lock A holds");
    let unlocked = Instant::now();
    assert_eq!(a.ask("unlock 0 100"), "ok");
    assert_eq!(b.answer_within(30).as_deref(), Some("ok"));
    assert!(
        unlocked.elapsed() < Duration::from_secs(1),
        "B woke {:?} after the unlock",
        unlocked.elapsed()
    );

    // A and B each hold a range and wait for the other's: one is refused.
    assert_eq!(a.ask("lock 200 10"), "ok");
    a.send("lock 0 10");
    assert_eq!(a.answer_within(2), None, "A got a lock B holds");
    assert_eq!(b.ask("lock 200 10"), refused(nix::libc::EDEADLK));

    // B's close drops its locks (POSIX): A's waiting lock is granted.
    assert_eq!(b.ask("close"), "ok");
    assert_eq!(a.answer_within(30).as_deref(), Some("ok"));
    assert_eq!(b.ask("reopen"), "ok");
    assert_eq!(b.ask("trylock 0 10"), refused(nix::libc::EAGAIN));
}

#[test]
fn flock_holds_across_two_mounts_until_its_last_close() {
    let cluster = TwoMounts::start();
    let locker = lockers(&cluster);
    let mut a = locker(0);
    let mut b = locker(1);
    let mut a2 = locker(0);
    let busy = refused(nix::libc::EWOULDBLOCK);

    assert_eq!(a.ask("flock"), "ok");
    assert_eq!(b.ask("tryflock"), busy, "B's mount");
    assert_eq!(a2.ask("tryshflock"), busy, "another process on A's mount");
    // Unlike an fcntl lock, a flock outlives the close of another
    // descriptor of the file.
    assert_eq!(a.ask("openclose"), "ok");
    assert_eq!(b.ask("tryflock"), busy, "after A closed another descriptor");

    // B waits; the last close of A's descriptor wakes it.
    b.send("flock");
    assert_eq!(b.answer_within(2), None, "B got a flock A holds");
    assert_eq!(a.ask("close"), "ok");
    assert_eq!(b.answer_within(30).as_deref(), Some("ok"));
    assert_eq!(a.ask("reopen"), "ok");
    assert_eq!(a.ask("tryshflock"), busy);

    // Shared flocks on both mounts; neither can make its own exclusive.
    assert_eq!(b.ask("unflock"), "ok");
    assert_eq!(a.ask("tryshflock"), "ok");
    assert_eq!(b.ask("tryshflock"), "ok");
    assert_eq!(a2.ask("tryshflock"), "ok");
    assert_eq!(b.ask("tryflock"), busy, "B upgrades while A shares");
    assert_eq!(a.ask("unflock"), "ok");
    assert_eq!(a2.ask("unflock"), "ok");
    assert_eq!(b.ask("tryflock"), "ok", "B upgrades once alone");
}

#[test]
fn a_blocked_lock_wait_gives_way_to_a_signal() {
    let cluster = TwoMounts::start();
    let locker = lockers(&cluster);
    let mut a = locker(0);
    let mut b = locker(1);
    let mut c = locker(0);
    assert_eq!(a.ask("flock"), "ok");

    // B's wait is interrupted by its alarm, and B holds nothing after.
    let asked = Instant::now();
    b.send("flockalarm 1");
    assert_eq!(b.answer_within(15).as_deref(), Some("interrupted"));
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "the interrupted wait took {:?}",
        asked.elapsed()
    );
    assert_eq!(a.ask("unflock"), "ok");
    assert_eq!(
        c.ask("tryflock"),
        "ok",
        "the interrupted waiter got the lock"
    );

    // kill -9 of a waiting process ends it (it does not wait for the lock).
    b.send("flock");
    assert_eq!(b.answer_within(2), None, "B got a flock C holds");
    b.child.kill().unwrap();
    let killed = Instant::now();
    while b.child.try_wait().unwrap().is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "a waiter killed with kill -9 is still there"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.ask("unflock"), "ok");
    assert_eq!(a.ask("tryflock"), "ok", "the killed waiter got the lock");
}

#[test]
fn a_dead_clients_locks_go_with_its_session() {
    let mut cluster = TwoMounts::start();
    let locker = lockers(&cluster);
    let mut a = locker(0);
    let mut b = locker(1);
    assert_eq!(a.ask("lock 0 0"), "ok", "A locks the whole file");
    b.send("lock 0 0");
    assert_eq!(b.answer_within(2), None, "B got a lock A holds");

    // kill -9 of A's client: its session times out and its lock goes.
    cluster.daemons.kill(MOUNT_DAEMONS);
    let granted = b.answer_within(SESSION_TIMEOUT.as_secs() + 60);
    assert_eq!(
        granted.as_deref(),
        Some("ok"),
        "B never got the dead client's lock"
    );
}

#[test]
fn a_lock_survives_kill_9_of_the_mds_leader() {
    let mut cluster = TwoMounts::with_mds_members(3);
    let locker = lockers(&cluster);
    let mut a = locker(0);
    let mut b = locker(1);
    assert_eq!(a.ask("lock 0 100"), "ok");

    let leader = common::mds_leader(&cluster.config).expect("a leader");
    cluster.daemons.kill(leader);
    common::eventually("a new leader", 60, || {
        common::mds_leader(&cluster.config).filter(|id| *id != leader)
    });

    // The lock is replicated state: the new leader still has it.
    assert_eq!(b.ask("trylock 0 10"), refused(nix::libc::EAGAIN));
    let getlk = b.ask("getlk 0 10");
    assert_eq!(
        getlk,
        format!("getlk {} 0 100 {}", nix::libc::F_WRLCK, a.pid)
    );
    b.send("lock 0 10");
    assert_eq!(b.answer_within(2), None, "B got a lock A holds");
    assert_eq!(a.ask("unlock 0 100"), "ok");
    assert_eq!(b.answer_within(30).as_deref(), Some("ok"));
}
