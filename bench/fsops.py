#!/usr/bin/env python3
"""Metadata and small-file workloads for bench/mount.sh; prints one JSON line.

  fsops.py meta DIR -n N --procs P     create, stat, unlink N empty files in one
                                       directory, split over P processes; each
                                       phase starts together (a barrier) and is
                                       timed from the first start to the last end
  fsops.py smallw DIR -n N --size S [--fsync]
                                       write N files of S bytes (random, each its
                                       own), then syncfs and
                                       fsync each (a FUSE daemon never sees
                                       syncfs: the kernel sends FUSE_SYNCFS to
                                       virtiofs only, so a client that buffers
                                       writes would still hold them); or fsync
                                       each file as it is written (--fsync)
  fsops.py smallr DIR -n N             read the N files back
  fsops.py smallrm DIR -n N            remove them
"""
import argparse
import json
import multiprocessing as mp
import os
import time


def meta_worker(directory, proc, count, barrier, results):
    names = [os.path.join(directory, f"f.{proc}.{i}") for i in range(count)]
    timings = {}
    for phase in ("create", "stat", "unlink"):
        barrier.wait()
        start = time.monotonic()
        for name in names:
            if phase == "create":
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            elif phase == "stat":
                os.stat(name)
            else:
                os.unlink(name)
        timings[phase] = (start, time.monotonic())
    results.put(timings)


def meta(args):
    os.makedirs(args.dir, exist_ok=True)
    per_proc = args.n // args.procs
    barrier = mp.Barrier(args.procs)
    results = mp.Queue()
    workers = [
        mp.Process(target=meta_worker, args=(args.dir, p, per_proc, barrier, results))
        for p in range(args.procs)
    ]
    for w in workers:
        w.start()
    timings = [results.get() for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise SystemExit(f"worker failed with {w.exitcode}")
    total = per_proc * args.procs
    out = {"files": total, "procs": args.procs}
    for phase in ("create", "stat", "unlink"):
        first = min(t[phase][0] for t in timings)
        last = max(t[phase][1] for t in timings)
        out[phase + "_per_s"] = total / (last - first)
    os.rmdir(args.dir)
    return out


def small_write(args):
    os.makedirs(args.dir, exist_ok=True)
    # Each file its own bytes: one payload for all would let a store that
    # deduplicates content keep a single copy.
    payloads = [os.urandom(args.size) for _ in range(args.n)]
    start = time.monotonic()
    for i, payload in enumerate(payloads):
        fd = os.open(os.path.join(args.dir, f"s.{i}"), os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        os.write(fd, payload)
        if args.fsync:
            os.fsync(fd)
        os.close(fd)
    if not args.fsync:
        fd = os.open(args.dir, os.O_RDONLY)
        os.syncfs(fd) if hasattr(os, "syncfs") else os.sync()
        os.close(fd)
        for i in range(args.n):
            fd = os.open(os.path.join(args.dir, f"s.{i}"), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    elapsed = time.monotonic() - start
    return {"files": args.n, "files_per_s": args.n / elapsed, "mib_per_s": args.n * args.size / elapsed / 2**20}


def small_read(args):
    total = 0
    start = time.monotonic()
    for i in range(args.n):
        with open(os.path.join(args.dir, f"s.{i}"), "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    elapsed = time.monotonic() - start
    return {"files": args.n, "files_per_s": args.n / elapsed, "mib_per_s": total / elapsed / 2**20}


def small_remove(args):
    start = time.monotonic()
    for i in range(args.n):
        os.unlink(os.path.join(args.dir, f"s.{i}"))
    elapsed = time.monotonic() - start
    os.rmdir(args.dir)
    return {"files": args.n, "files_per_s": args.n / elapsed}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["meta", "smallw", "smallr", "smallrm"])
    parser.add_argument("dir")
    parser.add_argument("-n", type=int, default=10000)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--size", type=int, default=65536)
    parser.add_argument("--fsync", action="store_true")
    args = parser.parse_args()
    run = {"meta": meta, "smallw": small_write, "smallr": small_read, "smallrm": small_remove}
    print(json.dumps(run[args.workload](args)))


if __name__ == "__main__":
    main()
