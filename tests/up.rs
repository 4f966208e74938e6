//! `aspen up`, the README's run command: one command starts an MDS and
//! three OSDs and mounts the filesystem; Ctrl-C unmounts and stops it all
//! cleanly; a second `aspen up` on the same data directory finds every
//! file again.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use aspen_fsclient::fuse::is_mounted;
use common::{eventually, require_fuse};

/// A running `aspen up`. Dropped while it still runs (a failed check), it
/// is killed and its mount detached, so the temporary directory's removal
/// does not wait on a mount nobody serves.
struct Running {
    child: Option<Child>,
    mountpoint: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Kills an `aspen up` still running; one that exited is only reaped.
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = aspen_fsclient::fuse::unmount(&self.mountpoint);
        }
    }
}

fn up(data: &Path, mountpoint: &Path, log: &Path) -> Running {
    up_with(
        Command::new(env!("CARGO_BIN_EXE_aspen")),
        data,
        mountpoint,
        log,
    )
}

fn up_with(mut command: Command, data: &Path, mountpoint: &Path, log: &Path) -> Running {
    let log = std::fs::File::create(log).unwrap();
    let child = command
        .args(["up", "--data", data.to_str().unwrap(), "--mount"])
        .arg(mountpoint)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    Running {
        child: Some(child),
        mountpoint: mountpoint.to_path_buf(),
    }
}

/// Waits until `aspen up` has mounted and its log says so (the mount can
/// show before `aspen up` has written its line about it).
fn wait_until_mounted(what: &str, seconds: u64, mountpoint: &Path, log: &Path) {
    let log_says_mounted =
        || std::fs::read_to_string(log).is_ok_and(|log| log.contains("mounted at"));
    eventually(what, seconds, || {
        (is_mounted(mountpoint) && log_says_mounted()).then_some(())
    });
}

/// Ctrl-C, then the process must exit successfully and leave no mount.
fn interrupt(mut running: Running, mountpoint: &Path, log: &Path) {
    let child = running.child.as_mut().unwrap();
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = eventually("aspen up to stop", 60, || child.try_wait().unwrap());
    assert!(
        status.success(),
        "aspen up exited with {status}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert!(!is_mounted(mountpoint), "still mounted after Ctrl-C");
}

#[test]
fn aspen_up_mounts_stops_cleanly_and_finds_its_files_again() {
    require_fuse();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mountpoint = root.path().join("mnt");
    let first = up(&data, &mountpoint, &root.path().join("up1.log"));
    let log_path = root.path().join("up1.log");
    wait_until_mounted("the first mount", 120, &mountpoint, &log_path);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("osd.2") && log.contains("mounted at"), "{log}");
    std::fs::create_dir(mountpoint.join("dir")).unwrap();
    let content: Vec<u8> = (0..5_000_000u32).map(|n| (n % 251) as u8).collect();
    std::fs::write(mountpoint.join("dir/file"), &content).unwrap();
    std::os::unix::fs::symlink("dir/file", mountpoint.join("link")).unwrap();
    interrupt(first, &mountpoint, &root.path().join("up1.log"));

    let second = up(&data, &mountpoint, &root.path().join("up2.log"));
    wait_until_mounted(
        "the second mount",
        120,
        &mountpoint,
        &root.path().join("up2.log"),
    );
    assert_eq!(std::fs::read(mountpoint.join("link")).unwrap(), content);
    interrupt(second, &mountpoint, &root.path().join("up2.log"));
}

/// As on a one-core machine, where tokio starts one runtime thread: the
/// mount must come up and serve without a second thread to answer the
/// requests its own setup makes of it.
#[test]
fn aspen_up_serves_on_a_single_runtime_thread() {
    require_fuse();
    let root = tempfile::tempdir().unwrap();
    let mountpoint = root.path().join("mnt");
    let log = root.path().join("up.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_aspen"));
    command.env("TOKIO_WORKER_THREADS", "1");
    let child = up_with(command, &root.path().join("data"), &mountpoint, &log);
    wait_until_mounted("the mount on one runtime thread", 60, &mountpoint, &log);
    let content: Vec<u8> = (0..3_000_000u32).map(|n| (n % 241) as u8).collect();
    std::fs::write(mountpoint.join("file"), &content).unwrap();
    assert_eq!(std::fs::read(mountpoint.join("file")).unwrap(), content);
    interrupt(child, &mountpoint, &log);
}

/// Ctrl-C while a process works inside the mount: `aspen up` says it
/// serves the mount's users still and keeps running; a second Ctrl-C ends
/// the mount's connection and `aspen up` stops cleanly.
#[test]
fn aspen_up_stops_on_a_second_ctrl_c_while_the_mount_is_in_use() {
    require_fuse();
    let root = tempfile::tempdir().unwrap();
    let mountpoint = root.path().join("mnt");
    let log = root.path().join("up.log");
    let mut running = up(&root.path().join("data"), &mountpoint, &log);
    wait_until_mounted("the mount", 120, &mountpoint, &log);
    let mut user = Command::new("sleep")
        .arg("600")
        .current_dir(&mountpoint)
        .spawn()
        .unwrap();
    let pid = running.child.as_ref().unwrap().id().to_string();
    let ctrl_c = || {
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    ctrl_c();
    eventually("the notice that the mount is in use", 30, || {
        std::fs::read_to_string(&log)
            .is_ok_and(|log| log.contains("still in use"))
            .then_some(())
    });
    let child = running.child.as_mut().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "aspen up stopped while its mount was in use"
    );
    ctrl_c();
    let status = eventually("aspen up to stop after a second Ctrl-C", 60, || {
        child.try_wait().unwrap()
    });
    let _ = user.kill();
    let _ = user.wait();
    assert!(
        status.success(),
        "aspen up exited with {status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        !is_mounted(&mountpoint),
        "still mounted after a second Ctrl-C"
    );
}
