#!/usr/bin/env python3
"""Turns bench/mount.sh results into a markdown table with ratios.

Usage: mount_table.py RESULTS_DIR TARGET...   (targets as run: local aspen ceph)
"""
import json
import os
import sys

# (row label, result file stem, how to read the number, unit)
ROWS = [
    ("1 GiB sequential write", "seqwrite", ("fio", "write", "bw_mib"), "MiB/s"),
    ("1 GiB sequential read (cold)", "seqread", ("fio", "read", "bw_mib"), "MiB/s"),
    ("4 KiB random write, buffered", "randwrite", ("fio", "write", "iops"), "IOPS"),
    ("4 KiB random read, cold", "randread", ("fio", "read", "iops"), "IOPS"),
    ("4 KiB random write, O_DIRECT", "randwrite_direct", ("fio", "write", "iops"), "IOPS"),
    ("4 KiB random read, O_DIRECT", "randread_direct", ("fio", "read", "iops"), "IOPS"),
    ("create, 1 process", "meta_p1", ("ops", "create_per_s"), "files/s"),
    ("stat, 1 process", "meta_p1", ("ops", "stat_per_s"), "files/s"),
    ("unlink, 1 process", "meta_p1", ("ops", "unlink_per_s"), "files/s"),
    ("create, 4 processes", "meta_p4", ("ops", "create_per_s"), "files/s"),
    ("stat, 4 processes", "meta_p4", ("ops", "stat_per_s"), "files/s"),
    ("unlink, 4 processes", "meta_p4", ("ops", "unlink_per_s"), "files/s"),
    ("64 KiB files written", "smallw", ("ops", "files_per_s"), "files/s"),
    ("64 KiB files read (cold)", "smallr", ("ops", "files_per_s"), "files/s"),
]


def value(results, target, stem, how):
    path = os.path.join(results, f"{target}.{stem}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    if how[0] == "ops":
        return data[how[1]]
    job = data["jobs"][0][how[1]]
    return job["bw"] / 1024 if how[2] == "bw_mib" else job["iops"]


def fmt(number):
    return "—" if number is None else f"{number:,.0f}"


def ratio(a, b):
    return "—" if a is None or not b else f"{a / b:.2f}"


def main():
    results, targets = sys.argv[1], sys.argv[2:]
    ratios = [(t, "local") for t in targets if t != "local" and "local" in targets]
    if "aspen" in targets and "ceph" in targets:
        ratios.append(("aspen", "ceph"))
    head = ["workload", "unit", *targets, *(f"{a}/{b}" for a, b in ratios)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, stem, how, unit in ROWS:
        numbers = {t: value(results, t, stem, how) for t in targets}
        cells = [label, unit, *(fmt(numbers[t]) for t in targets)]
        cells += [ratio(numbers[a], numbers[b]) for a, b in ratios]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
