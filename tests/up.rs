//! `aspen up`, the README's run command: one command starts an MDS and
//! three OSDs and mounts the filesystem; Ctrl-C unmounts and stops it all
//! cleanly; a second `aspen up` on the same data directory finds every
//! file again.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use aspen_fsclient::fuse::is_mounted;
use common::{eventually, require_fuse};

fn up(data: &Path, mountpoint: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["up", "--data", data.to_str().unwrap(), "--mount"])
        .arg(mountpoint)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

/// Ctrl-C, then the process must exit successfully and leave no mount.
fn interrupt(mut child: Child, mountpoint: &Path, log: &Path) {
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
    // The mount can show before `aspen up` has written its line about it.
    let log_says_mounted =
        || std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("mounted at"));
    eventually("the first mount", 120, || {
        (is_mounted(&mountpoint) && log_says_mounted()).then_some(())
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("osd.2") && log.contains("mounted at"), "{log}");
    std::fs::create_dir(mountpoint.join("dir")).unwrap();
    let content: Vec<u8> = (0..5_000_000u32).map(|n| (n % 251) as u8).collect();
    std::fs::write(mountpoint.join("dir/file"), &content).unwrap();
    std::os::unix::fs::symlink("dir/file", mountpoint.join("link")).unwrap();
    interrupt(first, &mountpoint, &root.path().join("up1.log"));

    let second = up(&data, &mountpoint, &root.path().join("up2.log"));
    eventually("the second mount", 120, || {
        is_mounted(&mountpoint).then_some(())
    });
    assert_eq!(std::fs::read(mountpoint.join("link")).unwrap(), content);
    interrupt(second, &mountpoint, &root.path().join("up2.log"));
}
