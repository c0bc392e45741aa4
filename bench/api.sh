#!/usr/bin/env bash
# Kubernetes API latency and throughput through one node (n1) of a 3-node cluster: create, get,
# list (COUNT ConfigMaps), patch, watch delivery; then RSS of n1 holding FILL objects.
# The cost of metrics: with METRICS=both (the default) a second round runs on a fresh rig with
# `[metrics] enabled = false`, and the mutating p99 of both rounds and their ratio are printed.
#
#   bench/api.sh                     # COUNT=1000 FILL=10000 CLIENTS=8 METRICS=both
#   COUNT=300 FILL=2000 bench/api.sh
#   METRICS=on bench/api.sh          # one round, metrics on (METRICS=off: one round, off)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COUNT=${COUNT:-1000}
FILL=${FILL:-10000}
CLIENTS=${CLIENTS:-8}
METRICS=${METRICS:-both}
work=$(mktemp -d /tmp/shoal-bench-api.XXXXXX)
cleanup() { rig_down "$work/rig"; rm -rf "$work"; }
trap cleanup EXIT
build
printf 'version = 1\n[metrics]\nenabled = false\n' >"$work/metrics-off.toml"

# round NAME [CONFIG]: one bench run on a fresh rig; figures in $work/figures-NAME.
round() {
  local name=$1 cfg=${2:-}
  rig_up "$work/rig" 3 "$cfg"
  local pid rss0 rss1
  pid=$(daemon_pid "$work/rig" n1)
  rss0=$(rss_kib "$pid")
  "$HIL" load api --kubeconfig "$work/rig/kubeconfig" --server https://10.77.0.1:6443 \
    --count "$COUNT" --fill "$FILL" --clients "$CLIENTS" >"$work/figures-$name"
  rss1=$(rss_kib "$pid")
  echo "api_rss_mib_empty: $(awk -v r="$rss0" 'BEGIN {printf "%.1f", r / 1024}')" >>"$work/figures-$name"
  echo "api_rss_mib_with_objects: $(awk -v r="$rss1" 'BEGIN {printf "%.1f", r / 1024}')" >>"$work/figures-$name"
  rig_down "$work/rig"
}

p99() { awk '/^mutating_p99_ms:/ {print $2}' "$work/figures-$1"; }

case $METRICS in
  on | both) round on ;;
  off) round off "$work/metrics-off.toml" ;;
  *) echo "METRICS must be on, off or both" >&2; exit 2 ;;
esac
first=on
[[ $METRICS == off ]] && first=off
grep -v '^mutating_' "$work/figures-$first"
grep '^mutating_' "$work/figures-$first"
if [[ $METRICS == both ]]; then
  round off "$work/metrics-off.toml"
  on=$(p99 on) off=$(p99 off)
  echo "mutating_p99_ms_metrics_on: $on"
  echo "mutating_p99_ms_metrics_off: $off"
  echo "mutating_p99_metrics_on_over_off: $(awk -v a="$on" -v b="$off" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}')"
fi
echo "load_average: $(cut -d' ' -f1-3 /proc/loadavg)"
