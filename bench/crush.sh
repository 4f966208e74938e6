#!/usr/bin/env bash
# CRUSH placement benchmark: Aspen's placement against Ceph's crushtool on
# equivalent maps (50 hosts x 20 OSDs, straw2, chooseleaf firstn 0 type host,
# size 3, 100,000 PGs). Measures time per mapping, the spread of PG replicas
# across OSDs, and the data moved by adding one host and by adding one OSD.
# Appends a dated section to bench/RESULTS.md.
#
# Usage: bench/crush.sh            (installs ceph-base for crushtool if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/machine.sh
PGS=100000
RUNS=5
OUT=bench/out/crush
mkdir -p "$OUT"

if ! command -v crushtool >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends ceph-base >/dev/null
fi
cargo build --release --locked -q
ASPEN=target/release/aspen

# ---- maps ----
$ASPEN crush build --hosts 50 --osds-per-host 20 > "$OUT/a50.json"
$ASPEN crush build --hosts 51 --osds-per-host 20 > "$OUT/a51.json"
python3 - "$OUT/a50.json" "$OUT/a50plus1.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["devices"].append({"id": 1000, "name": "osd.1000", "weight": 1.0})
next(b for b in m["buckets"] if b["name"] == "host7")["items"].append("osd.1000")
json.dump(m, open(sys.argv[2], "w"), indent=2)
PY
crushtool --build --num_osds 1000 -o "$OUT/c50.bin" host straw2 20 root straw2 0 >/dev/null
cp "$OUT/c50.bin" "$OUT/c51.bin"
crushtool -i "$OUT/c51.bin" --add-bucket host50 host --loc root root -o "$OUT/c51.bin" >/dev/null
for i in $(seq 0 19); do
  crushtool -i "$OUT/c51.bin" --add-item $((1000 + i)) 1.0 "osd.$((1000 + i))" --loc host host50 -o "$OUT/c51.bin" >/dev/null
done
crushtool -i "$OUT/c50.bin" --add-item 1000 1.0 osd.1000 --loc host host7 -o "$OUT/c50plus1.bin" >/dev/null

# ---- time per mapping (best of $RUNS whole-process runs, both tools) ----
best() { sort -g | head -n 1; }
# Wall time of one run in nanoseconds.
wall() { local s; s=$(date +%s%N); "$@" >/dev/null; echo $(( $(date +%s%N) - s )); }
aspen_wall=$(for _ in $(seq $RUNS); do wall $ASPEN crush test --map "$OUT/a50.json" --size 3 --pgs $PGS; done | best)
crush_wall=$(for _ in $(seq $RUNS); do wall crushtool -i "$OUT/c50.bin" --test --num-rep 3 --min-x 0 --max-x $((PGS - 1)) --show-utilization; done | best)
aspen_inner=$(for _ in $(seq $RUNS); do $ASPEN crush test --map "$OUT/a50.json" --size 3 --pgs $PGS | sed -n 's/.*(\([0-9.]*\) us each).*/\1/p'; done | best)

# ---- mappings, for spread and movement ----
for m in a50 a51 a50plus1; do
  $ASPEN crush test --map "$OUT/$m.json" --size 3 --pgs $PGS --show-mappings | grep '^x ' > "$OUT/$m.map"
done
for m in c50 c51 c50plus1; do
  crushtool -i "$OUT/$m.bin" --test --num-rep 3 --min-x 0 --max-x $((PGS - 1)) --show-mappings 2>&1 | grep '^CRUSH rule' > "$OUT/$m.map"
done

python3 - "$OUT" "$PGS" "$aspen_wall" "$crush_wall" "$aspen_inner" <<'PY' | tee "$OUT/table.md"
import re, statistics, sys
out, pgs, aspen_wall, crush_wall, aspen_inner = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
aspen_wall, crush_wall = aspen_wall / 1e9, crush_wall / 1e9

def load(path):
    sets = []
    for line in open(path):
        inner = re.search(r"\[([^\]]*)\]", line).group(1)
        sets.append([int(o) for o in inner.split(",") if o.strip() not in ("", "-")])
    return sets

def spread(sets, osds=1000):
    counts = [0] * osds
    for s in sets:
        for o in s:
            counts[o] += 1
    mean = sum(counts) / osds
    return statistics.pstdev(counts), min(counts), max(counts), mean

def moved(old, new):
    gained = sum(len(set(n) - set(o)) for o, n in zip(old, new))
    return gained / sum(len(o) for o in old)

rows = []
for name, prefix, wall, inner in [("Aspen", "a", aspen_wall, aspen_inner), ("crushtool", "c", crush_wall, None)]:
    base = load(f"{out}/{prefix}50.map")
    host = load(f"{out}/{prefix}51.map")
    one = load(f"{out}/{prefix}50plus1.map")
    sd, lo, hi, mean = spread(base)
    new_osd_share = sum((1000 in n) and (1000 not in o) for o, n in zip(base, one))
    rows.append((name, wall / pgs * 1e6, inner, sd, lo, hi, mean, moved(base, host), moved(base, one),
                 new_osd_share / max(1, sum(len(set(n) - set(o)) for o, n in zip(base, one)))))

print(f"| | time per mapping (whole run / {pgs:,}) | inner loop | PG replicas per OSD: stddev (min..max, mean) | moved by adding a host (optimum 1.961%) | moved by adding one OSD (optimum 0.100%) | of which to the new OSD |")
print("|---|---|---|---|---|---|---|")
for name, per, inner, sd, lo, hi, mean, mh, mo, share in rows:
    inner_text = f"{inner:.2f} us" if inner else "n/a"
    print(f"| {name} | {per:.2f} us | {inner_text} | {sd:.1f} ({lo}..{hi}, {mean:.0f}) | {mh*100:.3f}% | {mo*100:.3f}% | {share*100:.1f}% |")
a, c = rows
print()
print(f"Aspen / crushtool time per mapping: {a[1]/c[1]:.2f} (whole runs)")
PY

{
  echo
  echo "## CRUSH placement — $(date -u +%Y-%m-%d)"
  echo
  machine_line
  echo "Command: \`bench/crush.sh\` (crushtool from ceph-base $(dpkg-query -W -f '${Version}' ceph-base 2>/dev/null))."
  echo "Map: 50 hosts x 20 OSDs of weight 1, straw2, \`chooseleaf firstn 0 type host\`, size 3, $PGS PGs; best of $RUNS runs."
  echo
  cat "$OUT/table.md"
} >> bench/RESULTS.md
echo "appended to bench/RESULTS.md"
