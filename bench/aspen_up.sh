# Shared by the benchmark scripts that mount Aspen: `aspen up` in the
# background until it has mounted, its stop (also on exit: the caller traps
# stop_aspen), the disk's trim and the kernel's caches dropped before a
# measured run, the aspen process's CPU time and the 1 GiB sequential fio
# pass.
# Usage: source bench/aspen_up.sh; start_aspen BIN DATA_DIR MOUNT_DIR LOG; stop_aspen; trim_disk;
#        drop_caches; cpu_ticks PID; ticks_to_seconds TICKS DECIMALS; seq_mibs DIR RW [FIO_ARG...]

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

# Writes back and drops the kernel's page, dentry and inode caches: the
# next read through the mount is cold.
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# cpu_ticks PID: the CPU time (user and system) of process PID, in clock
# ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# ticks_to_seconds TICKS DECIMALS: clock ticks as seconds.
ticks_to_seconds() {
  awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v d="$2" 'BEGIN { printf "%.*f", d, t / hz }'
}

# seq_mibs DIR RW [FIO_ARG...]: MiB/s of a 1 GiB fio pass, RW write or
# read, in DIR as bench/mount.sh runs it (bs 1M, end_fsync, psync, no
# fallocate). A read's caller drops the caches first when it wants it cold.
seq_mibs() {
  local dir=$1 rw=$2 field=48
  [[ $rw == read ]] && field=7
  timeout 900 fio --name=s --directory="$dir" --rw="$rw" --bs=1M --size=1G \
    --end_fsync=1 --fallocate=none --ioengine=psync --output-format=terse "${@:3}" |
    awk -F';' -v f=$field '$1 == 3 { printf "%.1f", $f / 1024 }'
}
