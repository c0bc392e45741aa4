#!/usr/bin/env bash
# Kubernetes API latency and throughput through one node (n1) of a 3-node cluster: create, get,
# list (COUNT ConfigMaps), patch, watch delivery; then RSS of n1 holding FILL objects.
#
#   bench/api.sh                     # COUNT=1000 FILL=10000 CLIENTS=8
#   COUNT=300 FILL=2000 bench/api.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COUNT=${COUNT:-1000}
FILL=${FILL:-10000}
CLIENTS=${CLIENTS:-8}
work=$(mktemp -d /tmp/shoal-bench-api.XXXXXX)
cleanup() { rig_down "$work/rig"; rm -rf "$work"; }
trap cleanup EXIT
build
rig_up "$work/rig" 3
pid=$(daemon_pid "$work/rig" n1)
rss0=$(rss_kib "$pid")
"$HIL" load api --kubeconfig "$work/rig/kubeconfig" --server https://10.77.0.1:6443 \
  --count "$COUNT" --fill "$FILL" --clients "$CLIENTS" >"$work/figures"
rss1=$(rss_kib "$pid")
grep -v '^mutating_' "$work/figures"
echo "api_rss_mib_empty: $(awk -v r="$rss0" 'BEGIN {printf "%.1f", r / 1024}')"
echo "api_rss_mib_with_objects: $(awk -v r="$rss1" 'BEGIN {printf "%.1f", r / 1024}')"
grep '^mutating_' "$work/figures"
