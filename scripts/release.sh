#!/usr/bin/env bash
# Builds static release binaries of shoal for x86_64 and aarch64 (musl) into out/release/:
# shoal-x86_64, shoal-aarch64 and SHA256SUMS. Each binary is checked to be static and to run
# (`--version`; the aarch64 one under qemu-aarch64-static). At the end, each binary's size as
# `name: value` lines (shoal_x86_64_bytes, shoal_x86_64_mib, ...).
# Usage: ./scripts/release.sh [x86_64|aarch64]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

arches=("$@")
[ ${#arches[@]} -eq 0 ] && arches=(x86_64 aarch64)
for arch in "${arches[@]}"; do
  case "$arch" in
    x86_64) ensure_packages musl-tools ;;
    aarch64) ensure_packages gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static ;;
    *) echo "unknown arch $arch (x86_64 or aarch64)" >&2; exit 1 ;;
  esac
done
command -v rustup >/dev/null || { echo "rustup not found: it installs the musl targets" >&2; exit 1; }
mkdir -p out/release
# The release profile (workspace Cargo.toml) strips symbols, links with LTO and one codegen unit.
sizes=()
for arch in "${arches[@]}"; do
  target="$arch-unknown-linux-musl"
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  cross_env "$arch"
  cargo build --release --locked -p shoal --target "$target"
  out="out/release/shoal-$arch"
  cp "$(cargo_target)/$target/release/shoal" "$out"
  if readelf -lW "$out" | grep -q 'Requesting program interpreter'; then
    echo "$out is dynamically linked; a release binary must be static" >&2
    exit 1
  fi
  case "$arch" in
    x86_64) version=$("$out" --version) ;;
    aarch64) version=$(qemu-aarch64-static "$out" --version) ;;
  esac
  echo "$out: $version, $(du -h "$out" | cut -f1)"
  bytes=$(stat -c %s "$out")
  sizes+=("shoal_${arch}_bytes: $bytes" "shoal_${arch}_mib: $(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}')")
done
(cd out/release && sha256sum shoal-* > SHA256SUMS)
echo "out/release/SHA256SUMS"
# one `name: value` line per figure, as the benchmarks print them
printf '%s\n' "${sizes[@]}"
