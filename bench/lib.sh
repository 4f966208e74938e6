# Shared by the benchmark scripts that run daemons: a fresh output folder,
# the release binary, free ports, daemons stopped on exit, and
# bench/machine.sh's machine_line.
# Usage: source bench/lib.sh NAME   (sets OUT and ASPEN; ASPEN=BIN in the
# environment runs that binary instead of building one)

OUT=$PWD/bench/out/$1
source bench/machine.sh
rm -rf "$OUT" && mkdir -p "$OUT"
if [[ -z ${ASPEN:-} ]]; then
  cargo build --release --locked -q
  ASPEN=$PWD/target/release/aspen
fi

free_port() { python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Starts a one-member MDS group in $OUT/$1 and waits until it is healthy;
# its cluster config is $OUT/$1/cluster.json. MDS_WORKERS=N runs the member
# on N runtime threads (`aspen mds --workers`).
start_mds() {
  "$ASPEN" mds init --data "$OUT/$1" --listen "127.0.0.1:$(free_port)" >/dev/null
  "$ASPEN" mds --data "$OUT/$1" ${MDS_WORKERS:+--workers "$MDS_WORKERS"} >"$OUT/$1.log" 2>&1 & pids+=($!)
  until "$ASPEN" status --config "$OUT/$1/cluster.json" 2>/dev/null | grep -q HEALTH_OK; do sleep 0.3; done
}
