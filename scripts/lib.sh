# Shared helpers of the scripts. Source it: `. "$(dirname "$0")/lib.sh"`.

# ensure_packages PKG...: installs the Debian packages that are missing (apt-get update once).
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${missing[*]} (run as root so they can be installed)" >&2
    return 1
  fi
  if [ -z "${SHOAL_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    export SHOAL_APT_UPDATED=1
  fi
  echo "installing: ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# stop_service NAME: stops and disables a service a package started (systemd or sysv init).
stop_service() {
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now "$1" >/dev/null 2>&1 || true
  else
    service "$1" stop >/dev/null 2>&1 || true
    command -v update-rc.d >/dev/null && update-rc.d "$1" disable >/dev/null 2>&1 || true
  fi
}

# The packages every node and test rig needs.
BASE_PACKAGES=(iproute2 nftables util-linux procps kmod busybox-static ca-certificates curl)

# cargo_target: the target dir cargo uses.
cargo_target() {
  echo "${CARGO_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target}"
}

# cross_env ARCH: exports the C compiler, linker and runner cargo needs for ARCH-unknown-linux-musl
# (static binaries; aarch64 ones run here under qemu-aarch64-static).
cross_env() {
  case "$1" in
    x86_64) export CC_x86_64_unknown_linux_musl=musl-gcc ;;
    aarch64)
      export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static
      ;;
    *) echo "unknown arch $1 (x86_64 or aarch64)" >&2; return 1 ;;
  esac
}
