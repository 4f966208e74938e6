# Shared by every benchmark script: the "Machine:" line that heads a
# results section (cores, CPU model, memory, and the disk under DIR when
# one is given), so every section describes its machine the same way.
# Usage: source bench/machine.sh; machine_line [DIR]
machine_line() {
  local line
  line="Machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(free -g | awk '/Mem:/ { print $2 }') GiB"
  if [[ -n ${1:-} ]]; then
    line+="; disk under $(df --output=source "$1" | tail -1)"
  fi
  echo "$line."
}
