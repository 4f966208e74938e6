//! `aspen crush build|test|diff`, run as a user would: the real binary.

mod common;

use std::path::Path;
use std::process::Command;

use aspen_placement::crush::CrushMap;
use common::{aspen, ok as stdout};

fn build(dir: &Path, name: &str, hosts: u32, per_host: u32) -> String {
    let out = stdout(aspen(&[
        "crush",
        "build",
        "--hosts",
        &hosts.to_string(),
        "--osds-per-host",
        &per_host.to_string(),
    ]));
    let path = dir.join(name);
    std::fs::write(&path, out).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn build_writes_a_valid_map() {
    let out = stdout(aspen(&[
        "crush",
        "build",
        "--hosts",
        "10",
        "--osds-per-host",
        "4",
    ]));
    let map = CrushMap::from_json(&out).unwrap();
    map.validate().unwrap();
    assert_eq!(map.devices.len(), 40);
    assert_eq!(map.buckets.len(), 11);
}

#[test]
fn test_reports_utilization_and_mappings() {
    let dir = tempfile::tempdir().unwrap();
    let map = build(dir.path(), "map.json", 10, 4);
    let out = stdout(aspen(&[
        "crush",
        "test",
        "--map",
        &map,
        "--size",
        "3",
        "--pgs",
        "4096",
        "--show-utilization",
    ]));
    assert!(out.contains("4096 mappings"), "{out}");
    assert!(out.contains("mappings short of 3 devices: 0"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("osd."))
            .count(),
        40
    );

    let out = stdout(aspen(&[
        "crush",
        "test",
        "--map",
        &map,
        "--pgs",
        "100",
        "--show-mappings",
    ]));
    let mappings: Vec<&str> = out.lines().filter(|l| l.starts_with("x ")).collect();
    assert_eq!(mappings.len(), 100);
    for line in mappings {
        let set = line.split_once(": ").unwrap().1.trim_matches(['[', ']']);
        let osds: std::collections::HashSet<&str> = set.split(',').collect();
        assert_eq!(osds.len(), 3, "{line}");
    }
}

#[test]
fn test_reads_the_map_from_standard_input() {
    use std::io::Write;
    let map = stdout(aspen(&[
        "crush",
        "build",
        "--hosts",
        "4",
        "--osds-per-host",
        "2",
    ]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["crush", "test", "--map", "-", "--pgs", "64"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(map.as_bytes())
        .unwrap();
    let out = stdout(child.wait_with_output().unwrap());
    assert!(out.contains("64 mappings"), "{out}");
}

#[test]
fn diff_reports_movement_against_the_optimum() {
    let dir = tempfile::tempdir().unwrap();
    let old = build(dir.path(), "old.json", 10, 4);
    let new = build(dir.path(), "new.json", 11, 4);
    let out = stdout(aspen(&[
        "crush", "diff", &old, &new, "--size", "3", "--pgs", "20000",
    ]));
    let ratio: f64 = out
        .split("ratio ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no ratio in {out}"));
    assert!((0.8..=1.2).contains(&ratio), "{out}");
}

#[test]
fn bad_maps_and_impossible_rules_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{ \"types\": [").unwrap();
    let output = aspen(&["crush", "test", "--map", bad.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("malformed crush map"));

    let small = build(dir.path(), "small.json", 2, 2);
    let output = aspen(&["crush", "test", "--map", &small, "--size", "3"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("asks for 3 distinct \"host\" buckets, but only 2"),
        "{stderr}"
    );

    let output = aspen(&["crush", "test", "--map", "/nonexistent/map.json"]);
    assert!(!output.status.success());
}

#[test]
fn a_report_whose_reader_goes_ends_quietly_as_unix_tools_do() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let map = build(dir.path(), "map.json", 4, 2);
    // Far more than a pipe holds, so the writer meets the closed pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["crush", "test", "--map", &map, "--pgs", "200000"])
        .arg("--show-mappings")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let sigpipe = nix::sys::signal::Signal::SIGPIPE as i32;
    assert_eq!(output.status.signal(), Some(sigpipe), "{stderr}");
}
