#!/usr/bin/env bash
# Scheduler throughput: SIM_NODES Node objects without agents (created through the API), PODS
# pods selecting a label those nodes do not have yet (all pending), then the label is added to
# every simulated node: pods bound over time from that moment, as seen by a watch.
#
#   bench/scheduler.sh               # SIM_NODES=50 PODS=1000
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SIM_NODES=${SIM_NODES:-50}
PODS=${PODS:-1000}
work=$(mktemp -d /tmp/shoal-bench-sched.XXXXXX)
cleanup() { rig_down "$work/rig"; rm -rf "$work"; }
trap cleanup EXIT
build
rig_up "$work/rig" 3
"$HIL" load scheduler --kubeconfig "$work/rig/kubeconfig" --nodes "$SIM_NODES" --pods "$PODS"
