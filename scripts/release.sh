#!/usr/bin/env bash
# Builds static release binaries of shoal for x86_64 and aarch64 (musl) into out/release/.
# Usage: ./scripts/release.sh [x86_64|aarch64]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

arches=("$@")
[ ${#arches[@]} -eq 0 ] && arches=(x86_64 aarch64)
ensure_packages musl-tools gcc-aarch64-linux-gnu
mkdir -p out/release
for arch in "${arches[@]}"; do
  target="$arch-unknown-linux-musl"
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  case "$arch" in
    x86_64) export CC_x86_64_unknown_linux_musl=musl-gcc ;;
    aarch64)
      export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
      ;;
    *) echo "unknown arch $arch (x86_64 or aarch64)" >&2; exit 1 ;;
  esac
  cargo build --release --locked -p shoal --target "$target"
  cp "$(cargo_target)/$target/release/shoal" "out/release/shoal-$arch"
  echo "out/release/shoal-$arch"
done
