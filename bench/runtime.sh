#!/usr/bin/env bash
# The container runtime against runc and crun (Debian's), on the same busybox bundle in the same
# run:
#   - cycle: create -> start -> wait -> delete of /bin/true, N in a row (`run` of each runtime);
#   - start: create + start of a `sleep` container (time until the process is released to run);
#   - shim RSS of one running container and of 100.
# Prints `name: value` lines, then cycle_ratio_vs_crun and start_ratio_vs_crun (shoal / crun;
# under 1 means faster than crun).
#
#   bench/runtime.sh                  # N=100 cycles, 100 containers for the RSS figure
#   N=20 MANY=10 bench/runtime.sh
#
# Needs root, busybox-static, runc and crun (apt-get install -y busybox-static runc crun).
# crun refuses a hybrid cgroup layout, so it runs in a mount namespace without
# /sys/fs/cgroup/unified. The shoal side is target/release/shoal-runtime-shim (the runtime crate's
# standalone front end), built when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-100}
MANY=${MANY:-100}
SHOAL_RT=${SHOAL_RT:-$ROOT/target/release/shoal-runtime-shim}

for tool in runc crun busybox python3; do
  command -v "$tool" >/dev/null || { echo "runtime.sh: $tool is missing (apt-get install -y busybox-static runc crun)" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "runtime.sh: needs root" >&2; exit 1; }
[[ -x $SHOAL_RT ]] || (cd "$ROOT" && cargo build --release -p shoal-runtime --bins >&2)

work=$(mktemp -d)
cleanup() {
  for id in $(ls "$work/shoal-state" 2>/dev/null); do "$SHOAL_RT" rm "$work/shoal-state" "$id" >/dev/null 2>&1 || true; done
  for id in $(runc list -q 2>/dev/null | grep '^bench-' || true); do runc delete -f "$id" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# One bundle for all three: busybox rootfs, `runc spec` defaults.
bundle=$work/bundle
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/dev" "$bundle/rootfs/sys" "$bundle/rootfs/tmp" "$bundle/rootfs/etc"
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
for a in sh true sleep echo; do ln -s busybox "$bundle/rootfs/bin/$a"; done
(cd "$bundle" && runc spec)
spec() { # ARGS... -> config.json running ARGS
  python3 - "$bundle/config.json" "$@" <<'PY'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = args
json.dump(c, open(path, "w"), indent=1)
PY
}

now_ns() { date +%s%N; }
ms() { python3 -c "print(f'{($2 - $1) / 1e6 / $3:.1f}')" "$@"; }

# Each runtime's `run` of /bin/true, N times; per-cycle milliseconds.
spec /bin/true
cycle_shoal() {
  local t0 t1; t0=$(now_ns)
  for i in $(seq "$N"); do "$SHOAL_RT" run "$work/shoal-state" "bench-$i" "$bundle" >/dev/null; done
  t1=$(now_ns); ms "$t0" "$t1" "$N"
}
cycle_runc() {
  local t0 t1; t0=$(now_ns)
  for i in $(seq "$N"); do runc run --bundle "$bundle" "bench-$i" >/dev/null; done
  t1=$(now_ns); ms "$t0" "$t1" "$N"
}
cycle_crun() {
  unshare -m bash -c '
    umount /sys/fs/cgroup/unified 2>/dev/null || true
    t0=$(date +%s%N)
    for i in $(seq '"$N"'); do crun run --bundle '"$bundle"' "bench-$i" >/dev/null; done
    t1=$(date +%s%N)
    python3 -c "print(f\"{($t1 - $t0) / 1e6 / '"$N"':.1f}\")"'
}
shoal_cycle=$(cycle_shoal); echo "shoal_cycle_ms: $shoal_cycle"
runc_cycle=$(cycle_runc); echo "runc_cycle_ms: $runc_cycle"
crun_cycle=$(cycle_crun); echo "crun_cycle_ms: $crun_cycle"

# create + start of a sleeping container (until start returns), averaged over 20; teardown untimed.
spec /bin/sleep 1000
S=20
start_shoal() {
  local total=0 t0 t1
  for i in $(seq "$S"); do
    t0=$(now_ns); "$SHOAL_RT" up "$work/shoal-state" "start-$i" "$bundle" >/dev/null; t1=$(now_ns)
    total=$((total + t1 - t0)); "$SHOAL_RT" rm "$work/shoal-state" "start-$i"
  done
  ms 0 "$total" "$S"
}
start_runc() {
  local total=0 t0 t1
  for i in $(seq "$S"); do
    t0=$(now_ns); runc create --bundle "$bundle" "bench-s$i" </dev/null >/dev/null 2>&1; runc start "bench-s$i"; t1=$(now_ns)
    total=$((total + t1 - t0)); runc delete -f "bench-s$i"
  done
  ms 0 "$total" "$S"
}
start_crun() {
  unshare -m bash -c '
    umount /sys/fs/cgroup/unified 2>/dev/null || true
    total=0
    for i in $(seq '"$S"'); do
      t0=$(date +%s%N); crun create --bundle '"$bundle"' "bench-s$i" </dev/null >/dev/null 2>&1; crun start "bench-s$i"; t1=$(date +%s%N)
      total=$((total + t1 - t0)); crun delete -f "bench-s$i"
    done
    python3 -c "print(f\"{$total / 1e6 / '"$S"':.1f}\")"'
}
shoal_start=$(start_shoal); echo "shoal_start_ms: $shoal_start"
runc_start=$(start_runc); echo "runc_start_ms: $runc_start"
crun_start=$(start_crun); echo "crun_start_ms: $crun_start"

# Shim memory: RSS of the shims of 1 and of MANY running containers.
shim_rss_kb() {
  local sum=0
  for pid in $(pgrep -f "shoal-runtime-shim __shim create $work/shoal-state" || true); do
    sum=$((sum + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo "$sum"
}
"$SHOAL_RT" up "$work/shoal-state" rss-1 "$bundle" >/dev/null
echo "shim_rss_kb_1: $(shim_rss_kb)"
for i in $(seq 2 "$MANY"); do "$SHOAL_RT" up "$work/shoal-state" "rss-$i" "$bundle" >/dev/null; done
echo "shim_rss_kb_$MANY: $(shim_rss_kb)"
for i in $(seq "$MANY"); do "$SHOAL_RT" rm "$work/shoal-state" "rss-$i"; done

python3 -c "print(f'cycle_ratio_vs_crun: {$shoal_cycle / $crun_cycle:.2f}')"
python3 -c "print(f'start_ratio_vs_crun: {$shoal_start / $crun_start:.2f}')"
