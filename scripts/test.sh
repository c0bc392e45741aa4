#!/usr/bin/env bash
# Runs every test of shoal: unit and property tests, root tests (namespaces, cgroups, mounts,
# nftables), in-process clusters, the kubectl acceptance tests and the multi-node scenarios of
# hil-tests (one real `shoal` per network namespace). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh runs root tests (namespaces, cgroups, nftables): run it as root" >&2
  exit 1
fi
ensure_packages "${BASE_PACKAGES[@]}" runc skopeo docker-registry openssl
command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }

echo "== build"
cargo build --workspace --all-targets --locked
target=$(cargo_target)
export SHOAL_BIN="$target/debug/shoal"
export SHOAL_HIL_BIN="$target/debug/shoal-hil"

echo "== test images"
./scripts/images.sh

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
