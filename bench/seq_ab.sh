#!/usr/bin/env bash
# A/B of two aspen binaries on the mount's sequential rows: for each round
# and each binary, `aspen up` (1 MDS + 3 OSDs, pool size 3, FUSE mount, one
# process) in a fresh folder, fio 1 GiB sequential write (bs 1M, end_fsync)
# and, after drop_caches, the cold read. Besides MiB/s it records the CPU
# time of the aspen process per GiB and the UDP datagrams the machine took
# in. Rounds alternate the order of the binaries (bench/ab.sh), so a
# machine that speeds up or slows down during the run weighs on both alike.
# fio runs as in bench/mount.sh (psync, no fallocate).
# Appends a dated table to bench/RESULTS.md.
#
# Usage: bench/seq_ab.sh BASE_BIN NEW_BIN [ROUNDS]     (ROUNDS default 5)
source "$(dirname "$0")/ab.sh" seq_ab "$@"
ROUNDS=${3:-5}

udp_in() { awk '/^Udp:/ { n++; if (n == 2) print $2 }' /proc/net/snmp; }

# One round of one binary: appends "INDEX write_mibs write_cpu_s write_udp
# read_mibs read_cpu_s read_udp" to $OUT/rows.
run_one() {
  local index=$1 dir=$2 c0 u0 mibs row=("$1")
  start_aspen "${BINS[$index]}" "$dir/data" "$dir/mnt" "$dir/up.log"
  mkdir -p "$dir/mnt/b"
  for rw in write read; do
    [[ $rw == read ]] && drop_caches
    c0=$(cpu_ticks "$aspen_pid")
    u0=$(udp_in)
    mibs=$(seq_mibs "$dir/mnt/b" $rw)
    row+=("$mibs" "$(ticks_to_seconds $(( $(cpu_ticks "$aspen_pid") - c0 )) 1)")
    row+=("$(( $(udp_in) - u0 ))")
  done
  stop_aspen
  rm -rf "$dir"
  ab_record "$OUT" "${row[@]}"
}

ab_rounds "$ROUNDS" run_one "$OUT"

{
  ab_preamble "Sequential A/B through the mount" "\`bench/seq_ab.sh $1 $2 $ROUNDS\` (aspen up: 1 MDS + 3 OSDs, pool size 3, FUSE; fio 1 GiB bs 1M; CPU = the aspen process; UDP = datagrams taken in, after GRO)."
  ab_table "$OUT" "1 1 0 1 1 0" "write MiB/s" "write CPU s" "write UDP" "read MiB/s" "read CPU s" "read UDP"
} | tee -a "$REPO/bench/RESULTS.md"
