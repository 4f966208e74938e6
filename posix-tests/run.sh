#!/usr/bin/env bash
# POSIX conformance of an Aspen mount: pjdfstest and fsx against a fresh
# `aspen up` cluster (one MDS, three OSDs, pool size 3) mounted with FUSE.
#
#   posix-tests/run.sh [ASPEN_BINARY]
#
# Needs root, /dev/fuse, and pjdfstest and fsx on PATH (scripts/test.sh
# installs them). Fails if any pjdfstest test fails (there is no exclude
# list) or fsx reports a miscompare. Env: FSX_OPS (default 100000),
# KEEP=1 keeps the work directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
aspen=${1:-$here/../target/debug/aspen}
export PATH="$HOME/.cargo/bin:$PATH"

[ "$(id -u)" = 0 ] || { echo "posix-tests: must run as root (pjdfstest switches users)" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "posix-tests: /dev/fuse is missing: cannot mount" >&2; exit 1; }
for tool in pjdfstest fsx; do
  command -v "$tool" >/dev/null || { echo "posix-tests: $tool is not installed" >&2; exit 1; }
done

work=$(mktemp -d /tmp/aspen-posix.XXXXXX)
chmod 755 "$work"   # the users pjdfstest switches to must reach the mount
mnt=$work/mnt
second=$(mktemp -d /dev/shm/aspen-posix-second.XXXXXX)   # another filesystem, for EXDEV
up_pid=""
finish() {
  local status=$?
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"; wait "$up_pid" 2>/dev/null || true
  fi
  umount -l "$mnt" 2>/dev/null || true
  rm -rf "$second"
  if [ "$status" != 0 ] || [ "${KEEP:-0}" = 1 ]; then echo "posix-tests: logs kept in $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap finish EXIT

"$aspen" up --data "$work/cluster" --mount "$mnt" > "$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 600); do
  grep -q " $mnt fuse" /proc/mounts && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$work/up.log"; echo "posix-tests: aspen up exited" >&2; exit 1; }
  sleep 0.2
done
grep -q " $mnt fuse" /proc/mounts || { cat "$work/up.log"; echo "posix-tests: no mount" >&2; exit 1; }
echo "posix-tests: cluster up, mounted at $mnt"

# pjdfstest's second user and group (nobody/nogroup exist on Debian).
getent passwd tests >/dev/null ||
  useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin tests
nobody_group=$(id -gn nobody)
cat > "$work/pjdfstest.toml" <<TOML
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "$nobody_group"], ["tests", "tests"]]
TOML
mkdir -p "$mnt/pjdfstest"
echo "posix-tests: pjdfstest"
started=$(date +%s)
if ! RUST_BACKTRACE=0 NO_COLOR=1 pjdfstest -c "$work/pjdfstest.toml" -p "$mnt/pjdfstest" -s "$second" \
    > "$work/pjdfstest.log" 2>&1; then
  grep -E 'FAILED' -A3 "$work/pjdfstest.log" | head -60
  grep -E '^Summary:' "$work/pjdfstest.log"
  echo "posix-tests: pjdfstest failed" >&2
  exit 1
fi
echo "$(grep -E '^Summary:' "$work/pjdfstest.log") ($(( $(date +%s) - started )) s)"
# Linux's pathconf reports LINK_MAX 127 ("unknown") for every FUSE
# filesystem, so pjdfstest skips link_count_max on any FUSE mount; the
# rest of the skips are the erofs tests, skipped on ext4 too.
skipped=$(grep -E ' skipped$' "$work/pjdfstest.log" | awk '{print $1}')
unexpected=$(echo "$skipped" | grep -vE '(erofs_|^link::link_count_max$)' || true)
[ -z "$unexpected" ] || { echo "posix-tests: unexpected skips: $unexpected" >&2; exit 1; }

cat > "$work/fsx.toml" <<'TOML'
flen = 1048576
[opsize]
max = 131072
[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 2
punch_hole = 2
sendfile = 2
posix_fadvise = 1
copy_file_range = 2
TOML
ops=${FSX_OPS:-100000}
echo "posix-tests: fsx, $ops operations, every operation enabled"
started=$(date +%s)
mkdir -p "$work/fsx"
if ! fsx -N "$ops" -S 42 -P "$work/fsx" -f "$work/fsx.toml" "$mnt/fsx.dat" > "$work/fsx.log" 2>&1; then
  tail -40 "$work/fsx.log"
  echo "posix-tests: fsx failed" >&2
  exit 1
fi
echo "fsx: $ops operations, $(tail -1 "$work/fsx.log") ($(( $(date +%s) - started )) s)"

kill -INT "$up_pid"
wait "$up_pid" || { tail -20 "$work/up.log"; echo "posix-tests: aspen up did not stop cleanly" >&2; exit 1; }
up_pid=""
! grep -q " $mnt fuse" /proc/mounts || { echo "posix-tests: still mounted after stop" >&2; exit 1; }
echo "posix-tests: passed"
