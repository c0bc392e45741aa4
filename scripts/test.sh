#!/usr/bin/env bash
# Runs every test of shoal: unit and property tests, root tests (namespaces, cgroups, mounts,
# nftables), in-process clusters, the kubectl acceptance tests and the multi-node scenarios of
# hil-tests (one real `shoal` per network namespace, and the ssh rig against sshd in namespaces).
# Installs what is missing first.
#
# Then the aarch64 step: a cross build for aarch64-unknown-linux-musl (profile `cross`: debug without
# debug info, about 6 min cold on 2 cores), the unit tests of the libraries whose code depends on
# the architecture most (shoal-kube, shoal-store, shoal-gossip and shoal-images) under
# qemu-aarch64-static, and a one-node smoke (the aarch64 `shoal up` under qemu: leader, kv write
# and read). The daemon crate's own unit tests run on x86_64 only: building them a second time
# for aarch64 took CI close to its time limit, and the smoke runs that daemon.
# SHOAL_CI_AARCH64=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh runs root tests (namespaces, cgroups, nftables): run it as root" >&2
  exit 1
fi
ensure_packages "${BASE_PACKAGES[@]}" runc skopeo docker-registry openssl openssh-server openssh-client binutils faketime
# The pods-back scenario runs its own prometheus (temp config and data dir) on the rig; the
# package's service is not wanted.
ensure_packages prometheus
stop_service prometheus
# ... and opens the status page in Debian's headless chromium (Playwright from PyPI drives it).
ensure_packages chromium
command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }

echo "== build"
cargo build --workspace --all-targets --locked
target=$(cargo_target)
export SHOAL_BIN="$target/debug/shoal"
export SHOAL_HIL_BIN="$target/debug/shoal-hil"

# The rolling-upgrade scenario starts its nodes on the previous release (the newest tag before
# HEAD: SHOAL_UPGRADE_FROM=release) and upgrades them to this build. That binary is built here,
# once (only the workspace crates compile; the dependencies are linked from this build), so the
# scenario never builds under its test timeout. Without a tag (a shallow clone) the scenario
# reinstalls the same build and says so in its notes.
if [ -z "${SHOAL_UPGRADE_FROM:-}${SHOAL_UPGRADE_FROM_BIN:-}" ]; then
  export SHOAL_UPGRADE_FROM=release
fi
if [ -n "${SHOAL_UPGRADE_FROM:-}" ] && [ -z "${SHOAL_UPGRADE_FROM_BIN:-}" ]; then
  echo "== previous release for the rolling upgrade ($SHOAL_UPGRADE_FROM)"
  start=$(date +%s)
  if prev=$("$SHOAL_HIL_BIN" build-previous "$SHOAL_UPGRADE_FROM"); then
    export SHOAL_UPGRADE_FROM_BIN="$prev"
    echo "previous build: $prev, $(( $(date +%s) - start )) s"
  else
    echo "no previous build: the rolling-upgrade scenario reinstalls this build" >&2
    unset SHOAL_UPGRADE_FROM
  fi
fi
echo "== test images"
./scripts/images.sh

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# aarch64_smoke BIN: the aarch64 shoal under qemu, alone in fresh network and pid namespaces (so
# nothing of it outlives the step): it becomes leader of a new one-node cluster and serves a write.
aarch64_smoke() {
  local bin=$1 dir
  dir=$(mktemp -d /tmp/shoal-aarch64-smoke.XXXXXX)
  local script='
    set -eu
    bin=$1 dir=$2
    ip link set lo up
    run() { qemu-aarch64-static "$bin" "$@"; }
    run up --data-dir "$dir/data" --name arm1 --advertise 127.0.0.1 >"$dir/shoal.log" 2>&1 &
    leader() { st=$(run status --data-dir "$dir/data" --json 2>/dev/null) && echo "$st" | grep -q "\"leader\": *\"arm1\""; }
    for _ in $(seq 1 300); do leader && break; sleep 1; done
    leader || { echo "arm1 never became leader"; tail -n 30 "$dir/shoal.log"; exit 1; }
    run kv put --data-dir "$dir/data" smoke/arch aarch64 >/dev/null
    got=$(run kv get --data-dir "$dir/data" smoke/arch)
    [ "$got" = aarch64 ] || { echo "kv get returned \"$got\""; exit 1; }
    echo "aarch64 smoke: arm1 is leader, kv write and read ok"
  '
  local rc=0
  unshare --net --pid --fork --kill-child --mount-proc bash -c "$script" smoke "$bin" "$dir" || rc=$?
  for c in /sys/fs/cgroup/shoal-arm1 /sys/fs/cgroup/*/shoal-arm1; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  rm -rf "$dir"
  return $rc
}

if [ "${SHOAL_CI_AARCH64:-1}" = 1 ]; then
  echo "== aarch64 (cross build, unit tests and a one-node smoke under qemu-aarch64-static)"
  start=$(date +%s)
  ensure_packages gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
  rustup target list --installed | grep -qx aarch64-unknown-linux-musl || rustup target add aarch64-unknown-linux-musl
  cross_env aarch64
  cargo build --locked --profile cross --target aarch64-unknown-linux-musl -p shoal
  cargo test --locked --profile cross --target aarch64-unknown-linux-musl \
    -p shoal-kube -p shoal-store -p shoal-gossip -p shoal-images --lib -- --skip root::
  aarch64_smoke "$target/aarch64-unknown-linux-musl/cross/shoal"
  echo "aarch64 step: $(( $(date +%s) - start )) s"
else
  echo "== aarch64 step skipped (SHOAL_CI_AARCH64=0)"
fi
