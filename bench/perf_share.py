#!/usr/bin/env python3
"""The share of a perf profile's samples that the QUIC transport costs.

Reads `perf script -F comm,ip,sym` output of a profile recorded with call
graphs and prints one JSON object: the samples, and per part of Aspen the
share of them. A sample belongs to the part named by the frame nearest
its leaf that names one (a memcpy that noq calls is transport; a
`sendmsg` under noq's UDP socket too). "transport" is iroh and noq (the
QUIC connection and endpoint drivers, their UDP system calls) with the
AEAD and header protection they run (ring).

Usage: perf script -i FILE -F comm,ip,sym | bench/perf_share.py
"""
import collections
import json
import re
import sys

# Checked in this order on each frame, from the leaf outwards.
PARTS = [
    ("sqlite", re.compile(r"sqlite3|rusqlite")),
    ("blake3", re.compile(r"blake3")),
    ("transport", re.compile(r"ring::|ring_core|aes_|gcm|noq|iroh|quinn")),
    ("fuse", re.compile(r"fuser|aspen_fsclient::fuse|aspen::mount|fuse_")),
    ("osd", re.compile(r"aspen_osd")),
    ("client", re.compile(r"aspen_fsclient")),
    ("mds", re.compile(r"aspen_mds|openraft")),
    ("tokio", re.compile(r"tokio")),
]


def part_of(frames):
    for frame in frames:
        for name, pattern in PARTS:
            if pattern.search(frame):
                return name
    return "other"


def samples(lines):
    """Each sample's frames, leaf first."""
    frames = []
    for line in lines:
        if not line.strip():
            if frames:
                yield frames
            frames = []
        elif line.startswith((" ", "\t")):
            fields = line.split(None, 1)
            if len(fields) == 2:
                frames.append(fields[1])
    if frames:
        yield frames


def main():
    counts = collections.Counter(part_of(frames) for frames in samples(sys.stdin))
    total = sum(counts.values())
    if total == 0:
        sys.exit("no samples with call graphs in the input")
    shares = {name: round(count / total, 4) for name, count in counts.most_common()}
    print(json.dumps({"samples": total, "shares": shares}))


if __name__ == "__main__":
    main()
