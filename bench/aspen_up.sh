# Shared by the benchmark scripts that mount Aspen: `aspen up` in the
# background until it has mounted, its stop (also on exit: the caller traps
# stop_aspen), and the disk's trim before a measured run.
# Usage: source bench/aspen_up.sh; start_aspen BIN DATA_DIR MOUNT_DIR LOG; stop_aspen; trim_disk

# Trims the freed space of the filesystem holding the current directory.
# Deletes on a filesystem mounted with `discard` leave discards behind that
# slow the disk's next reads (a cold 1 GiB read through the mount: 292-309
# MiB/s right after another run's deletes, 410-415 with a trim first):
# benchmarks call it before each measured run.
trim_disk() {
  command -v fstrim >/dev/null || return 0
  sync
  fstrim "$(df --output=target . | tail -n1)" 2>/dev/null || true
}

aspen_pid=
start_aspen() {
  local bin=$1 data=$2 mnt=$3 log=$4
  mkdir -p "$mnt"
  "$bin" up --data "$data" --mount "$mnt" >"$log" 2>&1 &
  aspen_pid=$!
  for _ in $(seq 600); do
    grep -q "mounted at" "$log" && mountpoint -q "$mnt" && return 0
    kill -0 "$aspen_pid" 2>/dev/null || break
    sleep 0.2
  done
  cat "$log" >&2
  echo "aspen up did not mount" >&2
  exit 1
}

stop_aspen() {
  [[ -n $aspen_pid ]] || return 0
  kill -INT "$aspen_pid" 2>/dev/null || true
  wait "$aspen_pid" 2>/dev/null || true
  aspen_pid=
}
