#!/usr/bin/env bash
# A/B of two aspen binaries on bench/mount.sh's random-I/O sequence, where
# each phase inherits what the one before left in the OSDs' stores: for
# each round and each binary, `aspen up` (1 MDS + 3 OSDs, pool size 3, FUSE
# mount, one process) in a fresh folder, four 256 MiB files laid out, then
# buffered 4 KiB random writes (end_fsync), cold random reads, O_DIRECT
# random writes and cold O_DIRECT random reads (drop_caches before each
# read and before the O_DIRECT writes). fio: psync, 4 jobs, bs 4k, RUNTIME
# seconds each (default 20). Also records one OSD's store size at the end.
# Rounds alternate the order of the binaries (AB, BA, ...). Appends a dated
# table to bench/RESULTS.md.
#
# Usage: bench/randwrite_ab.sh BASE_BIN NEW_BIN [ROUNDS]     (ROUNDS default 2)
source "$(dirname "$0")/ab.sh" randwrite_ab "$@"
ROUNDS=${3:-2}
RUNTIME=${RUNTIME:-20}

# One round of one binary: appends "INDEX write read direct-write
# direct-read store-MiB" to $OUT/rows.
run_one() {
  local index=$1 dir=$2 row=("$1")
  start_with_rand_files "$index" "$dir"
  row+=("$(rand_iops "$dir/mnt/b" 49 --rw=randwrite --end_fsync=1)")
  drop_caches
  row+=("$(rand_iops "$dir/mnt/b" 8 --rw=randread)")
  drop_caches
  row+=("$(rand_iops "$dir/mnt/b" 49 --rw=randwrite --direct=1)")
  drop_caches
  row+=("$(rand_iops "$dir/mnt/b" 8 --rw=randread --direct=1)")
  row+=("$(du -sm "$dir/data/osd.0" | cut -f1)")
  stop_aspen
  rm -rf "$dir"
  ab_record "$OUT" "${row[@]}"
}

ab_rounds "$ROUNDS" run_one "$OUT"

{
  ab_preamble "Random write A/B through the mount — 4 KiB random I/O in bench/mount.sh's order" "\`bench/randwrite_ab.sh $1 $2 $ROUNDS\` (aspen up: 1 MDS + 3 OSDs, pool size 3, FUSE; fio 4 jobs x 256 MiB, bs 4k, psync, ${RUNTIME} s per phase; IOPS, and osd.0's store in MiB at the end)."
  ab_table "$OUT" "0 0 0 0 0" "write, buffered" "read, cold" "write, O_DIRECT" "read, O_DIRECT" "osd.0 MiB"
} | tee -a "$REPO/bench/RESULTS.md"
