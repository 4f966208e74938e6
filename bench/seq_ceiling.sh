#!/usr/bin/env bash
# The ceiling the QUIC transport puts on the mount's sequential rows. For
# each round: `aspen up` (1 MDS + 3 OSDs, pool size 3, FUSE mount, one
# process) in a fresh folder; fio 1 GiB sequential write (bs 1M, end_fsync)
# and, after drop_caches, the cold read, with the CPU time of the aspen
# process per GiB; then the same write and read of a second file under
# `perf record --call-graph dwarf`, whose samples bench/perf_share.py
# splits by part of Aspen. The transport's CPU time per GiB is its share
# times the CPU time per GiB of the unprofiled pass; all the machine's cores
# spent on the transport alone would move (cores / that) GiB per second:
# the ceiling, however cheap everything else became. fio runs as in
# bench/mount.sh (psync, no fallocate).
# Appends a dated table to bench/RESULTS.md.
#
# Usage: bench/seq_ceiling.sh [ROUNDS]     (ROUNDS default 3; ASPEN=BIN runs
#        that binary instead of building one)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
REPO=$PWD
ROUNDS=${1:-3}
[[ $(id -u) == 0 ]] || { echo "run as root (drop_caches, mounts, perf)" >&2; exit 1; }
for tool in fio perf; do
  command -v $tool >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
if [[ -z ${ASPEN:-} ]]; then
  cargo build --release --locked -q
  ASPEN=$REPO/target/release/aspen
fi
OUT=$REPO/bench/out/seq_ceiling
rm -rf "$OUT" && mkdir -p "$OUT"
source bench/aspen_up.sh
source bench/machine.sh
trap stop_aspen EXIT
CORES=$(nproc)
# The profile covers this much of each pass, from a second into it (the
# write takes about 5 s here, the read about 2 s).
WRITE_PROFILE_S=3
READ_PROFILE_S=1

# fio_pass DIR FILE RW: MiB/s of a 1 GiB pass (a cold one for reads).
fio_pass() {
  [[ $3 == read ]] && drop_caches
  seq_mibs "$1" "$3" --filename="$2"
}

# transport_share DIR FILE RW SECONDS: the transport's share of the aspen
# process's samples during a 1 GiB pass.
transport_share() {
  local data=$OUT/$3.perf perf_pid
  (sleep 1; perf record -F 999 --call-graph dwarf,16384 -p "$aspen_pid" -o "$data" \
    -- sleep "$4" >/dev/null 2>&1) &
  perf_pid=$!
  fio_pass "$1" "$2" "$3" >/dev/null
  wait "$perf_pid"
  perf script -i "$data" -F comm,ip,sym 2>/dev/null | python3 bench/perf_share.py |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["shares"].get("transport", 0))'
  rm -f "$data"
}

run_round() {
  local dir=$1 row=() c0 mibs cpu share rw
  trim_disk
  start_aspen "$ASPEN" "$dir/data" "$dir/mnt" "$dir/up.log"
  for rw in write read; do
    c0=$(cpu_ticks "$aspen_pid")
    mibs=$(fio_pass "$dir/mnt" plain.dat $rw)
    cpu=$(ticks_to_seconds $(( $(cpu_ticks "$aspen_pid") - c0 )) 2)
    row+=("$mibs" "$cpu")
  done
  for rw in write read; do
    local seconds=$WRITE_PROFILE_S; [[ $rw == read ]] && seconds=$READ_PROFILE_S
    share=$(transport_share "$dir/mnt" profiled.dat $rw $seconds)
    row+=("$share")
  done
  stop_aspen
  rm -rf "$dir"
  [[ "${row[*]}" =~ ^[0-9.]+( [0-9.]+){5}$ ]] || { echo "a bad row: ${row[*]}" >&2; exit 1; }
  echo "${row[*]}" >>"$OUT/rows"
}

for round in $(seq "$ROUNDS"); do
  echo "round $round" >&2
  run_round "$OUT/r$round"
done

{
  echo
  echo "## The transport's ceiling on the sequential rows — $(date +%F)"
  echo
  machine_line "$PWD"
  echo "Command: \`bench/seq_ceiling.sh $ROUNDS\` on $(git rev-parse --short HEAD) ($ASPEN) (aspen up: 1 MDS + 3 OSDs, pool size 3, FUSE; fio 1 GiB bs 1M; CPU = the aspen process; transport = iroh and noq with their AEAD, as a share of the aspen process's samples; ceiling = $CORES cores / the transport's CPU s per GiB)."
  echo
  echo "| round | write MiB/s | CPU s/GiB | transport share | transport CPU s/GiB | write ceiling MiB/s | read MiB/s | CPU s/GiB | transport share | transport CPU s/GiB | read ceiling MiB/s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  awk -v cores="$CORES" '
    function cells(mibs, cpu, share,   t) {
      t = cpu * share
      return sprintf(" %.0f | %.2f | %.1f%% | %.2f | %.0f |", mibs, cpu, 100 * share, t, cores * 1024 / t)
    }
    { print "| " NR " |" cells($1, $2, $5) cells($3, $4, $6) }
  ' "$OUT/rows"
} | tee -a "$REPO/bench/RESULTS.md"
