#!/usr/bin/env bash
# Transport round trip: one small request/response per new QUIC stream on an
# open iroh connection over 127.0.0.1 (release build). Appends to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/machine.sh
line=$(cargo test --release --locked -q -p aspen-proto --test transport concurrent_calls_share_one_connection -- --nocapture 2>&1 | grep 'round trip')
echo "$line"
{
  echo
  echo "## Transport — $(date -u +%Y-%m-%d)"
  echo
  echo "$(machine_line) Command: \`bench/transport.sh\`."
  echo
  echo "- $line (300 sequential calls after 200 concurrent ones)."
  echo "- Decision: one QUIC stream per request (no request ids). ../shared/STACK.md measured 91–158 µs for a round trip on one open stream and 96–218 µs with a new stream per request on this machine kind; the difference is within noise, and separate streams keep concurrent requests independent."
} >> bench/RESULTS.md
