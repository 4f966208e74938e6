#!/usr/bin/env bash
# Aspen's whole test suite: installs what it needs, then checks formatting,
# lints, and runs every test. This is the README's test command and what
# .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# Debian packages the build and the tests need: a C compiler for blake3 and
# SQLite; fuse3 (fusermount3) for mounts; libacl1-dev to build pjdfstest.
DEBIAN_PACKAGES=(gcc libc6-dev pkg-config fuse3 libacl1-dev)
# Test programs from the crates registry (the POSIX suite's pjdfstest and fsx).
CARGO_TOOLS=(pjdfstest fsx)

install_debian_packages() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

require_rust_components() {
  for tool in cargo rustfmt cargo-clippy; do
    command -v "$tool" >/dev/null || { echo "missing $tool (rustup component add ${tool#cargo-})" >&2; exit 1; }
  done
}

install_cargo_tools() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || cargo install --locked "$tool"
  done
}

install_debian_packages "${DEBIAN_PACKAGES[@]}"
require_rust_components
install_cargo_tools "${CARGO_TOOLS[@]}"

# The free space the run starts with: the mount tests keep three copies of
# what they write, so a short disk shows up as ENOSPC there.
echo "== free disk"
df -h . "${TMPDIR:-/tmp}"
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# --show-output prints the figures the property and distribution tests report.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked -- --show-output 2>&1 | tee "$log"
# One closing line for the whole run (cargo's last line is its last target's).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
echo "== POSIX conformance through a mount (pjdfstest, fsx)"
posix-tests/run.sh target/debug/aspen
