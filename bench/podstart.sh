#!/usr/bin/env bash
# Pod startup latency: PODS1 pods (image present) pinned to one node, then PODS3 pods over 3
# nodes; each timed from its create request until a watch shows it Running (p50/p99), split at
# the watch event that shows it bound (`_scheduled_`: create to bound; `_on_node_`: bound to
# Running). These runs are bursts: CLIENTS connections create as fast as the API answers, so
# they measure throughput as much as latency. Then PODS3 more over 3 nodes created at RATE pods
# per second (`podstart_paced_*`), the way a latency SLO is measured. Also the RSS of n1 at 0,
# PODS1/2 and PODS1 pods: the daemon, the daemon and its descendants, every process of the host
# (containers included). `podstart_p99_ms` (last) is the 3-node burst's.
#
#   bench/podstart.sh                      # PODS1=100 PODS3=300 RATE=10
#   PODS1=20 PODS3=30 bench/podstart.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PODS1=${PODS1:-100}
PODS3=${PODS3:-300}
IMAGE=${IMAGE:-nginx}
CLIENTS=${CLIENTS:-8}
RATE=${RATE:-10}
work=$(mktemp -d /tmp/shoal-bench-podstart.XXXXXX)
cleanup() { rig_down "$work/rig"; rm -rf "$work"; }
trap cleanup EXIT
build
rig_up "$work/rig" 3
import_images "$work/rig" 3
kc="$work/rig/kubeconfig"
log "waiting for the image import and 3 Ready nodes"
for _ in $(seq 1 60); do
  ready=$(kubectl --kubeconfig "$kc" get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l)
  [[ $ready -ge 3 ]] && break
  sleep 1
done
sleep 12   # the import dir is rescanned every 10 s
pid=$(daemon_pid "$work/rig" n1)
rss() {  # rss N: the daemon, the daemon and its descendants, the whole host, at N pods
  mib() { awk -v r="$1" 'BEGIN {printf "%.1f", r / 1024}'; }
  echo "podstart_rss_mib_daemon_$1_pods: $(mib "$(rss_kib "$pid")")"
  echo "podstart_rss_mib_daemon_children_$1_pods: $(mib "$(tree_rss_kib "$pid")")"
  echo "podstart_rss_mib_host_$1_pods: $(mib "$(ns_rss_kib "$pid")")"
}
node1=$(kubectl --kubeconfig "$kc" get nodes -o jsonpath='{.items[0].metadata.labels.kubernetes\.io/hostname}' 2>/dev/null || echo n1)
rss 0
half=$((PODS1 / 2))
"$HIL" load pods --kubeconfig "$kc" --count "$half" --clients "$CLIENTS" --image "$IMAGE" --node "$node1" \
  --namespace bench-1a --name podstart_1n_first_half >"$work/f1a"
rss "$half"
"$HIL" load pods --kubeconfig "$kc" --count "$((PODS1 - half))" --clients "$CLIENTS" --image "$IMAGE" --node "$node1" \
  --namespace bench-1b --name podstart_1n_second_half >"$work/f1b"
rss "$PODS1"
cat "$work/f1a" "$work/f1b"
kubectl --kubeconfig "$kc" delete namespace bench-1a bench-1b --wait=false >/dev/null 2>&1 || true
wait_gone() {  # wait_gone PREFIX: until no pod of a namespace starting with PREFIX is left
  for _ in $(seq 1 180); do
    [[ $(kubectl --kubeconfig "$kc" get pods -A --no-headers 2>/dev/null | grep -c "^$1" || true) -eq 0 ]] && return
    sleep 1
  done
}
log "waiting for the first pods to go"
wait_gone bench-1
"$HIL" load pods --kubeconfig "$kc" --count "$PODS3" --clients "$CLIENTS" --image "$IMAGE" \
  --namespace bench-3 --name podstart_3n >"$work/f3"
kubectl --kubeconfig "$kc" delete namespace bench-3 --wait=false >/dev/null 2>&1 || true
log "waiting for the 3-node burst's pods to go"
wait_gone bench-3
"$HIL" load pods --kubeconfig "$kc" --count "$PODS3" --clients "$CLIENTS" --image "$IMAGE" --rate "$RATE" \
  --namespace bench-paced --name podstart_paced >"$work/fp"
cat "$work/fp" "$work/f3"
# p99 over every pod of both runs is not derivable from the parts; report the 3-node run's.
echo "podstart_p50_ms: $(awk '$1 == "podstart_3n_p50_ms:" {print $2}' "$work/f3")"
echo "podstart_p99_ms: $(awk '$1 == "podstart_3n_p99_ms:" {print $2}' "$work/f3")"
