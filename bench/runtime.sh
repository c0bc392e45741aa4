#!/usr/bin/env bash
# The container runtime against runc and crun (Debian's), on the same busybox bundle in the same
# run, in interleaved rounds (shoal, runc, crun, shoal, runc, crun, ...) so that a change in the
# machine's load hits every runtime alike:
#   - cycle: create -> start -> wait -> delete of /bin/true, N in a row per round (`run` of each
#     runtime);
#   - start: create + start of a `sleep` container (time until the process is released to run),
#     S per round;
#   - shim RSS of one running container and of MANY.
# Prints `name: value` lines: the median over ROUNDS rounds (`shoal_cycle_ms`) and the best round
# (`shoal_cycle_min_ms`) of each, then cycle_ratio_vs_crun and start_ratio_vs_crun (shoal / crun
# of the medians; under 1 means faster than crun) and the load average before and after.
#
#   bench/runtime.sh                  # ROUNDS=5 rounds of N=20 cycles and S=10 starts; 100 containers for RSS
#   N=30 MANY=20 bench/runtime.sh
#
# Needs root, busybox-static, runc and crun (apt-get install -y busybox-static runc crun).
# crun refuses a hybrid cgroup layout, so it runs in a mount namespace without
# /sys/fs/cgroup/unified. The shoal side is target/release/shoal-runtime-shim (the runtime crate's
# standalone front end), built when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-20}
S=${S:-10}
ROUNDS=${ROUNDS:-5}
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
ms() { python3 -c "print(f'{($2 - $1) / 1e6 / $3:.2f}')" "$@"; }

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
    python3 -c "print(f\"{($t1 - $t0) / 1e6 / '"$N"':.2f}\")"'
}
# create + start of a sleeping container (until start returns), averaged over 20; teardown untimed.
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
    python3 -c "print(f\"{$total / 1e6 / '"$S"':.2f}\")"'
}
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "load_before: $(load)"
cycles_shoal=() cycles_runc=() cycles_crun=() starts_shoal=() starts_runc=() starts_crun=()
for r in $(seq "$ROUNDS"); do
  spec /bin/true
  cycles_shoal+=("$(cycle_shoal)"); cycles_runc+=("$(cycle_runc)"); cycles_crun+=("$(cycle_crun)")
  spec /bin/sleep 1000
  starts_shoal+=("$(start_shoal)"); starts_runc+=("$(start_runc)"); starts_crun+=("$(start_crun)")
  echo "round $r: cycle shoal ${cycles_shoal[-1]} runc ${cycles_runc[-1]} crun ${cycles_crun[-1]};" \
    "start shoal ${starts_shoal[-1]} runc ${starts_runc[-1]} crun ${starts_crun[-1]}" >&2
done
stats() { # NAME VALUES... -> NAME_ms (median) and NAME_min_ms lines
  python3 - "$@" <<'PY'
import statistics, sys
name, vals = sys.argv[1], [float(v) for v in sys.argv[2:]]
print(f"{name}_ms: {statistics.median(vals):.2f}")
print(f"{name}_min_ms: {min(vals):.2f}")
PY
}
med() { python3 -c 'import statistics, sys; print(statistics.median(float(v) for v in sys.argv[1:]))' "$@"; }
stats shoal_cycle "${cycles_shoal[@]}"; stats runc_cycle "${cycles_runc[@]}"; stats crun_cycle "${cycles_crun[@]}"
stats shoal_start "${starts_shoal[@]}"; stats runc_start "${starts_runc[@]}"; stats crun_start "${starts_crun[@]}"
shoal_cycle=$(med "${cycles_shoal[@]}") crun_cycle=$(med "${cycles_crun[@]}")
shoal_start=$(med "${starts_shoal[@]}") crun_start=$(med "${starts_crun[@]}")

# Shim memory: RSS of the shims of 1 and of MANY running containers.
shim_rss_kb() {
  local sum=0
  for pid in $(pgrep -f "shoal-runtime-shim __shim create $work/shoal-state" || true); do
    sum=$((sum + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo "$sum"
}
spec /bin/sleep 1000
"$SHOAL_RT" up "$work/shoal-state" rss-1 "$bundle" >/dev/null
echo "shim_rss_kb_1: $(shim_rss_kb)"
for i in $(seq 2 "$MANY"); do "$SHOAL_RT" up "$work/shoal-state" "rss-$i" "$bundle" >/dev/null; done
echo "shim_rss_kb_$MANY: $(shim_rss_kb)"
for i in $(seq "$MANY"); do "$SHOAL_RT" rm "$work/shoal-state" "rss-$i"; done

python3 -c "print(f'cycle_ratio_vs_crun: {$shoal_cycle / $crun_cycle:.2f}')"
python3 -c "print(f'start_ratio_vs_crun: {$shoal_start / $crun_start:.2f}')"
echo "load_after: $(load)"
