# Shared by the A/B scripts (seq_ab.sh, randread_ab.sh): the two binaries,
# rounds in alternating order, and the preamble of the table they append.
# Usage: source bench/ab.sh BASE_BIN NEW_BIN   (sets BINS)

BINS=("$(realpath "$1")" "$(realpath "$2")")
for bin in "${BINS[@]}"; do [[ -x $bin ]] || { echo "$bin: not an executable" >&2; exit 2; }; done

# ab_rounds ROUNDS RUN_ONE OUT: calls RUN_ONE INDEX DIR for each binary in
# each round; rounds alternate the order (AB, BA, AB, ...), so a machine
# that speeds up or slows down during the run weighs on both alike.
ab_rounds() {
  local rounds=$1 run_one=$2 out=$3 round i order
  for round in $(seq "$rounds"); do
    order=(0 1); ((round % 2)) || order=(1 0)
    for i in "${order[@]}"; do
      echo "round $round: ${BINS[$i]}" >&2
      "$run_one" "$i" "$out/r$round.$i"
    done
  done
}

# ab_preamble TITLE COMMAND: the heading, machine, command and binaries.
ab_preamble() {
  echo
  echo "## $1 — $(date +%F)"
  echo
  echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(free -g | awk '/Mem:/ { print $2 }') GiB; disk under $(df --output=source "$PWD" | tail -1)."
  echo "Command: $2"
  echo
  echo "A = ${BINS[0]}, B = ${BINS[1]}."
  echo
}
