#!/usr/bin/env bash
# Scheduler throughput: SIM_NODES Node objects without agents (created through the API), PODS
# pods selecting a label those nodes do not have yet (all pending), then the label is added to
# every simulated node: pods bound over time from that moment, as seen by a watch.
#
#   bench/scheduler.sh               # SIM_NODES=50 PODS=1000, debug build
#   PROFILE=release bench/scheduler.sh
#   NO_BUILD=1 bench/scheduler.sh    # measure the binaries already in target/$PROFILE
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIM_NODES=${SIM_NODES:-50}
PODS=${PODS:-1000}
# BENCH_TMP=/dev/shm keeps the rig (and its Raft log) off a slow or full disk.
work=$(mktemp -d "${BENCH_TMP:-/tmp}/shoal-bench-sched.XXXXXX")
cleanup() { rig_down "$work/rig"; rm -rf "$work"; }
trap cleanup EXIT
# Always build (lib.sh's build() skips existing binaries, which would measure a stale
# scheduler), unless NO_BUILD=1 says the binaries in target/ are the ones to measure.
if [[ ${NO_BUILD:-0} == 1 ]]; then
  [[ -x $SHOAL && -x $HIL ]] || { log "NO_BUILD=1 but $SHOAL or $HIL is missing"; exit 1; }
else
  flag=""
  [[ $PROFILE == release ]] && flag="--release"
  log "building shoal and shoal-hil ($PROFILE)"
  cargo build $flag -p shoal -p shoal-hil >&2
fi
rig_up "$work/rig" 3
"$HIL" load scheduler --kubeconfig "$work/rig/kubeconfig" --nodes "$SIM_NODES" --pods "$PODS"
