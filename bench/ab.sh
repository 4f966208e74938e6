# Shared by the A/B scripts (seq_ab.sh, randread_ab.sh, randwrite_ab.sh):
# the two binaries, the checks, rounds in alternating order, the random-I/O
# files and fio jobs, and the table they append (headed by
# bench/machine.sh's machine_line).
# Usage: source "$(dirname "$0")/ab.sh" NAME "$@"
#   (sets -euo pipefail and inherit_errexit; checks BASE_BIN NEW_BIN; sets
#   BINS, REPO and OUT=bench/out/NAME; cds to the repository; stops aspen
#   on exit)

set -euo pipefail
shopt -s inherit_errexit
(($# >= 3)) || { echo "usage: $0 BASE_BIN NEW_BIN [ROUNDS]" >&2; exit 2; }
BINS=("$(realpath "$2")" "$(realpath "$3")")
for bin in "${BINS[@]}"; do [[ -x $bin ]] || { echo "$bin: not an executable" >&2; exit 2; }; done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
[[ $(id -u) == 0 ]] || { echo "run as root (drop_caches, mounts)" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is not installed" >&2; exit 1; }
OUT=$REPO/bench/out/$1
rm -rf "$OUT" && mkdir -p "$OUT"
source bench/aspen_up.sh
source bench/machine.sh
trap stop_aspen EXIT

# ab_rounds ROUNDS RUN_ONE OUT: calls RUN_ONE INDEX DIR for each binary in
# each round, each on a trimmed disk (the round before deleted its data);
# rounds alternate the order (AB, BA, AB, ...), so a machine that speeds up
# or slows down during the run weighs on both alike.
ab_rounds() {
  local rounds=$1 run_one=$2 out=$3 round i order
  for round in $(seq "$rounds"); do
    order=(0 1); ((round % 2)) || order=(1 0)
    for i in "${order[@]}"; do
      echo "round $round: ${BINS[$i]}" >&2
      trim_disk
      "$run_one" "$i" "$out/r$round.$i"
    done
  done
}

# ab_preamble TITLE COMMAND: the heading, machine, command and binaries.
ab_preamble() {
  echo
  echo "## $1 — $(date +%F)"
  echo
  machine_line "$PWD"
  echo "Command: $2"
  echo
  echo "A = ${BINS[0]}, B = ${BINS[1]}."
  echo
}

# ab_record OUT INDEX VALUE...: appends one round's row to OUT/rows, after
# checking every value is a number.
ab_record() {
  local out=$1 row=("${@:2}")
  [[ "${row[*]}" =~ ^[01]( [0-9.]+)+$ ]] || { echo "a bad row: ${row[*]}" >&2; exit 1; }
  echo "${row[*]}" >>"$out/rows"
}

# ab_table OUT DECIMALS HEADER...: the markdown table of OUT/rows, one line
# per round and a mean per binary, its columns HEADER... and each mean
# printed with the decimals of DECIMALS (space-separated, one per column).
ab_table() {
  local out=$1 decimals=$2 headers=("${@:3}") line
  line="| binary | round |"; for h in "${headers[@]}"; do line+=" $h |"; done; echo "$line"
  line="|---|---|"; for _ in "${headers[@]}"; do line+="---|"; done; echo "$line"
  awk -v decimals="$decimals" '
    BEGIN { n = split(decimals, places, " ") }
    { name = ($1 == 0) ? "A" : "B"; r[$1]++
      line = sprintf("| %s | %d |", name, r[$1])
      for (k = 1; k <= n; k++) { line = line " " $(k + 1) " |"; sum[$1, k] += $(k + 1) }
      print line }
    END { for (i = 0; i <= 1; i++) {
            line = sprintf("| %s | mean |", (i == 0) ? "A" : "B")
            for (k = 1; k <= n; k++) line = line sprintf(" %." places[k] "f |", sum[i, k] / r[i])
            print line } }
  ' "$out/rows"
}

# The random-I/O files of bench/mount.sh: 4 x 256 MiB, fio psync.
RAND_FILES=(--name=rand --size=256M --numjobs=4 --group_reporting --fallocate=none --ioengine=psync)

# lay_out_rand_files DIR: writes them (bs 1M, end_fsync).
lay_out_rand_files() {
  timeout 600 fio "${RAND_FILES[@]}" --directory="$1" --rw=write --bs=1M --end_fsync=1 \
    --output-format=terse >/dev/null
}

# rand_iops DIR COLUMN fio-args...: IOPS of a 4 KiB random job over them,
# RUNTIME seconds (terse column 8 for reads, 49 for writes).
rand_iops() {
  timeout 300 fio "${RAND_FILES[@]}" --directory="$1" --bs=4k --time_based --runtime="$RUNTIME" \
    --randrepeat=0 "${@:3}" --output-format=terse | awk -F';' -v column="$2" '$1 == 3 { print $column }'
}

# start_with_rand_files INDEX DIR: `aspen up` of binary INDEX in DIR, with
# the random-I/O files laid out in DIR/mnt/b.
start_with_rand_files() {
  start_aspen "${BINS[$1]}" "$2/data" "$2/mnt" "$2/up.log"
  mkdir -p "$2/mnt/b"
  lay_out_rand_files "$2/mnt/b"
}
