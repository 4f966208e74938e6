#!/usr/bin/env bash
# A/B of two aspen binaries on 4 KiB random reads through the mount: for
# each round and each binary, `aspen up` (1 MDS + 3 OSDs, pool size 3, FUSE
# mount, one process) in a fresh folder, four 256 MiB files laid out as in
# bench/mount.sh, then after drop_caches three O_DIRECT random-read passes
# one after another (cold, then warmer as the OSDs' page cache fills), and
# after drop_caches again a buffered one. fio: psync, 4 jobs, bs 4k,
# RUNTIME seconds each (default 15). Rounds alternate the order of the
# binaries (AB, BA, ...). Appends a dated table to bench/RESULTS.md.
#
# Usage: bench/randread_ab.sh BASE_BIN NEW_BIN [ROUNDS]     (ROUNDS default 3)
source "$(dirname "$0")/ab.sh" randread_ab "$@"
ROUNDS=${3:-3}
RUNTIME=${RUNTIME:-15}

# One round of one binary: appends "INDEX cold warmer warm buffered" to $OUT/rows.
run_one() {
  local index=$1 dir=$2 row=("$1")
  start_with_rand_files "$index" "$dir"
  drop_caches
  for _ in 1 2 3; do row+=("$(rand_iops "$dir/mnt/b" 8 --rw=randread --direct=1)"); done
  drop_caches
  row+=("$(rand_iops "$dir/mnt/b" 8 --rw=randread)")
  stop_aspen
  rm -rf "$dir"
  ab_record "$OUT" "${row[@]}"
}

ab_rounds "$ROUNDS" run_one "$OUT"

{
  ab_preamble "Random read A/B through the mount" "\`bench/randread_ab.sh $1 $2 $ROUNDS\` (aspen up: 1 MDS + 3 OSDs, pool size 3, FUSE; fio 4 jobs x 256 MiB, bs 4k, psync, ${RUNTIME} s per pass; IOPS)."
  ab_table "$OUT" "0 0 0 0" "O_DIRECT, cold" "O_DIRECT, 2nd pass" "O_DIRECT, 3rd pass" "buffered, cold"
} | tee -a "$REPO/bench/RESULTS.md"
