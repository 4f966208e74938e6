//! Running `aspen` processes from tests: one-shot commands, and daemons
//! that are killed (and resumed, if stopped) when the test ends.

#![allow(dead_code)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn aspen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(args)
        .output()
        .expect("aspen runs")
}

/// The standard output of a command that must succeed.
pub fn ok(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A free UDP address on 127.0.0.1 (for an iroh endpoint to bind).
pub fn free_addr() -> String {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// Daemons killed when the test ends, however it ends.
pub struct Daemons(Vec<(u64, Child)>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Daemons {
    pub fn new() -> Daemons {
        Daemons(Vec::new())
    }

    /// Starts `aspen ARGS` as daemon `id`, logging to `log`.
    pub fn spawn(&mut self, id: u64, args: &[&str], log: &Path) {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_aspen"))
            .args(args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.0.push((id, child));
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        let index = self.0.iter().position(|(i, _)| *i == id).unwrap();
        let (_, mut child) = self.0.remove(index);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends a signal (`-STOP`, `-CONT`, ...) to daemon `id` (with the
    /// system call: a process started now could hang closing a file of a
    /// stopped mount it inherited).
    pub fn signal(&self, id: u64, signal: &str) {
        use nix::sys::signal::{Signal, kill};
        let pid = self.0.iter().find(|(i, _)| *i == id).unwrap().1.id();
        let signal = match signal {
            "-STOP" => Signal::SIGSTOP,
            "-CONT" => Signal::SIGCONT,
            "-TERM" => Signal::SIGTERM,
            "-INT" => Signal::SIGINT,
            other => panic!("unknown signal {other}"),
        };
        kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
    }
}

/// Retries `check` until it returns `Some`, for at most `seconds`.
pub fn eventually<T>(what: &str, seconds: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `aspen status` as text (empty when it fails).
pub fn status(config: &str) -> String {
    String::from_utf8_lossy(&aspen(&["status", "--config", config]).stdout).into_owned()
}

/// Creates a one-member MDS group in `root/mds`, runs it as daemon 0 and
/// waits until it is healthy. Returns its cluster config's path.
pub fn start_mds(root: &Path, daemons: &mut Daemons) -> String {
    let mds = root.join("mds");
    ok(aspen(&[
        "mds",
        "init",
        "--data",
        mds.to_str().unwrap(),
        "--listen",
        &free_addr(),
    ]));
    let config = mds.join("cluster.json").to_str().unwrap().to_string();
    daemons.spawn(
        0,
        &["mds", "--data", mds.to_str().unwrap()],
        &root.join("mds.log"),
    );
    eventually("the MDS to lead", 60, || {
        status(&config).contains("HEALTH_OK").then_some(())
    });
    config
}

/// Creates an MDS group of `members` in `root/mdsN`, each run as daemon
/// `N` (1-based; `N` is also its raft id), and waits until it is healthy.
/// Returns the cluster config's path.
pub fn start_mds_group(root: &Path, daemons: &mut Daemons, members: u64) -> String {
    let dir = |id: u64| root.join(format!("mds{id}"));
    let listen = free_addr();
    let first = dir(1).to_str().unwrap().to_string();
    ok(aspen(&[
        "mds", "init", "--data", &first, "--listen", &listen,
    ]));
    let config = dir(1).join("cluster.json").to_str().unwrap().to_string();
    daemons.spawn(1, &["mds", "--data", &first], &root.join("mds1.log"));
    eventually("the first MDS to lead", 60, || {
        status(&config).contains("HEALTH_OK").then_some(())
    });
    for id in 2..=members {
        let (data, raft_id, listen) = (dir(id), id.to_string(), free_addr());
        let args = [
            "mds",
            "join",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            &listen,
            "--id",
            &raft_id,
            "--config",
            &config,
        ];
        daemons.spawn(id, &args, &root.join(format!("mds{id}.log")));
        let joined = format!("{id} of {id} members up");
        eventually("the member to join", 60, || {
            status(&config).contains(&joined).then_some(())
        });
    }
    config
}

/// The raft id of the MDS leader `aspen status` names.
pub fn mds_leader(config: &str) -> Option<u64> {
    let text = status(config);
    let line = text.lines().find(|l| l.starts_with("leader: mds."))?;
    line.trim_start_matches("leader: mds.").trim().parse().ok()
}

/// Creates OSDs `0..count` (each its own CRUSH host) as daemons `1..=count`
/// and waits until all are up and in.
pub fn start_osds(root: &Path, daemons: &mut Daemons, config: &str, count: u64) {
    start_osds_holding(root, daemons, config, count, None);
}

/// The daemon id of the first OSD when MDS members take ids from 1.
pub const OSD_DAEMONS: u64 = 10;

/// [`start_osds`] with each OSD's store limited to `capacity` bytes.
pub fn start_osds_holding(
    root: &Path,
    daemons: &mut Daemons,
    config: &str,
    count: u64,
    capacity: Option<u64>,
) {
    start_osds_with(root, daemons, config, (count, 1), capacity);
}

/// [`start_osds`] as daemons `first..first + count`.
pub fn start_osds_from(root: &Path, daemons: &mut Daemons, config: &str, count: u64, first: u64) {
    start_osds_with(root, daemons, config, (count, first), None);
}

fn start_osds_with(
    root: &Path,
    daemons: &mut Daemons,
    config: &str,
    (count, first): (u64, u64),
    capacity: Option<u64>,
) {
    for id in 0..count {
        let data = add_osd(root, config, id, capacity);
        daemons.spawn(
            first + id,
            &["osd", "--data", data.to_str().unwrap()],
            &root.join(format!("osd{id}.log")),
        );
    }
    let expected = format!("{count} osds: {count} up, {count} in");
    eventually("the OSDs up and in", 60, || {
        status(config).contains(&expected).then_some(())
    });
}

/// Fails loudly when this machine cannot mount FUSE filesystems.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the mount tests cannot run"
    );
}

/// Creates OSD `id` in `root/osdID`, its own CRUSH host `hostID`, with
/// `aspen osd add` (holding `capacity` bytes, or the default); returns its
/// data directory.
pub fn add_osd(root: &Path, config: &str, id: u64, capacity: Option<u64>) -> std::path::PathBuf {
    let data = root.join(format!("osd{id}"));
    let (id_text, host, listen) = (id.to_string(), format!("host{id}"), free_addr());
    let capacity = capacity.map(|bytes| bytes.to_string());
    let mut args = vec![
        "osd",
        "add",
        "--data",
        data.to_str().unwrap(),
        "--id",
        &id_text,
        "--config",
        config,
        "--host",
        &host,
        "--listen",
        &listen,
    ];
    if let Some(capacity) = &capacity {
        args.extend(["--capacity", capacity.as_str()]);
    }
    let out = ok(aspen(&args));
    assert!(out.contains(&format!("osd.{id} created")), "{out}");
    data
}

/// Creates pool `data` (pool 1): `pg_num` PGs, three copies, min_size 2.
pub fn create_data_pool(config: &str, pg_num: u32) {
    let pg_num = pg_num.to_string();
    ok(aspen(&[
        "pool",
        "create",
        "data",
        "--pg-num",
        &pg_num,
        "--size",
        "3",
        "--min-size",
        "2",
        "--config",
        config,
    ]));
}

/// One cluster (an MDS, three OSD processes, pool `data`) mounted twice,
/// by two `aspen mount` processes (daemons [`MOUNT_DAEMONS`] and the next).
pub struct TwoMounts {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub config: String,
    pub mounts: [PathBuf; 2],
    pub daemons: Daemons,
}

/// The daemon ids of the two mounts (A, then B).
pub const MOUNT_DAEMONS: u64 = 100;

impl TwoMounts {
    pub fn start() -> TwoMounts {
        TwoMounts::with_mds_members(1)
    }

    /// Two mounts of a cluster whose MDS group has `members` members
    /// (daemons `1..=members`).
    pub fn with_mds_members(members: u64) -> TwoMounts {
        require_fuse();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut daemons = Daemons::new();
        let config = if members == 1 {
            start_mds(&root, &mut daemons)
        } else {
            start_mds_group(&root, &mut daemons, members)
        };
        start_osds_from(&root, &mut daemons, &config, 3, OSD_DAEMONS);
        create_data_pool(&config, 16);
        let mounts = [root.join("a"), root.join("b")];
        for (n, mountpoint) in mounts.iter().enumerate() {
            std::fs::create_dir(mountpoint).unwrap();
            daemons.spawn(
                MOUNT_DAEMONS + n as u64,
                &["mount", mountpoint.to_str().unwrap(), "--config", &config],
                &root.join(format!("mount{n}.log")),
            );
        }
        for mountpoint in &mounts {
            eventually("the mounts", 60, || {
                aspen_fsclient::fuse::is_mounted(mountpoint).then_some(())
            });
        }
        TwoMounts {
            _dir: dir,
            root,
            config,
            mounts,
            daemons,
        }
    }
}

/// Names a directory into which a failed test copies its daemons' whole
/// logs (each test's under a directory of its own).
pub const KEEP_LOGS_ENV: &str = "ASPEN_TEST_KEEP_LOGS";

/// Copies the daemon logs under `root` whole to [`KEEP_LOGS_ENV`]'s
/// directory, when set.
fn keep_daemon_logs(root: &Path) {
    let Some(keep) = std::env::var_os(KEEP_LOGS_ENV) else {
        return;
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("test")
        .replace("::", "-");
    let into = PathBuf::from(keep).join(format!("{test}.{}", std::process::id()));
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let _ = std::fs::create_dir_all(&into);
    for path in entries.flatten().map(|entry| entry.path()) {
        if path.extension().is_some_and(|ext| ext == "log")
            && let Some(name) = path.file_name()
        {
            let _ = std::fs::copy(&path, into.join(name));
        }
    }
    eprintln!("==== the daemon logs are kept in {}", into.display());
}

/// How many closing lines of each daemon log a failed test prints.
const LOG_LINES_ON_FAILURE: usize = 40;

/// Prints the last lines of every daemon log under `root` to stderr (a
/// failed test's only record of what its daemons saw: its directory goes).
fn print_daemon_logs(root: &Path) {
    keep_daemon_logs(root);
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_LINES_ON_FAILURE)..];
        eprintln!("==== {} (last {} lines)", log.display(), tail.len());
        for line in tail {
            eprintln!("{line}");
        }
    }
}

impl Drop for TwoMounts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_daemon_logs(&self.root);
        }
        for mountpoint in &self.mounts {
            if aspen_fsclient::fuse::is_mounted(mountpoint) {
                let _ = Command::new("umount").arg("-l").arg(mountpoint).status();
            }
        }
    }
}
