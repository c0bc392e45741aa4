#!/usr/bin/env bash
# Pods back after a node dies: a Deployment of 6 pods on 3 nodes; one node that runs some of
# them is powered off (kill -9 of everything of it); time until 6 pods are Running on the
# surviving nodes, as kubectl sees it through a survivor. The node comes back between runs.
#
#   bench/failover-pods.sh            # RUNS=5
#   RUNS=2 bench/failover-pods.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-5}
IMAGE=${IMAGE:-nginx}
# The rig's data dirs on a tmpfs: a nearly full disk here must not put the nodes under DiskPressure.
export SHOAL_HIL_TMPFS_MB=${SHOAL_HIL_TMPFS_MB:-3072}
work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench-fopods.XXXXXX")
cleanup() { rig_down "$work/rig"; rm -rf "$work"; }
trap cleanup EXIT
build
rig_up "$work/rig" 3
import_images "$work/rig" 3
kc="$work/rig/kubeconfig"
k() { kubectl --kubeconfig "$kc" --request-timeout=5s "$@"; }
cat >"$work/deploy.yaml" <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bench-failover
spec:
  replicas: 6
  selector:
    matchLabels: {app: bench-failover}
  template:
    metadata:
      labels: {app: bench-failover}
    spec:
      containers:
      - name: web
        image: $IMAGE
        imagePullPolicy: IfNotPresent
        resources:
          requests: {cpu: 10m, memory: 16Mi}
YAML
sleep 12   # the image import dir is rescanned every 10 s
k apply -f "$work/deploy.yaml" >&2
# running_on_others SERVER VICTIM: pods of the Deployment Running on a node other than VICTIM.
running_on_others() {
  k --server "$1" get pods -l app=bench-failover \
    -o jsonpath='{range .items[*]}{.status.phase} {.spec.nodeName} {.metadata.deletionTimestamp}{"\n"}{end}' 2>/dev/null |
    awk -v v="$2" '$1 == "Running" && $2 != v && $3 == "" {n++} END {print n + 0}'
}
wait_all() {  # wait_all SERVER TIMEOUT_S: 6 Running pods, none on a dead node
  local t=0
  while (( t < $2 * 4 )); do
    [[ $(running_on_others "$1" none) -ge 6 ]] && return 0
    sleep 0.25; t=$((t + 1))
  done
  return 1
}
times=$work/times
: >"$times"
for r in $(seq 1 "$RUNS"); do
  wait_all https://10.77.0.1:6443 180 || { log "run $r: the Deployment never had 6 Running pods"; k get pods -o wide >&2 || true; continue; }
  # The victim: the node (not n1, which serves kubectl) running the most of the pods.
  victim=$(k get pods -l app=bench-failover -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' |
    grep -v '^n1$' | sort | uniq -c | sort -rn | awk 'NR == 1 {print $2}')
  victim=${victim:-n3}
  survivor=https://10.77.0.1:6443
  on_victim=$(k get pods -l app=bench-failover -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | grep -c "^$victim$" || true)
  t0=$(date +%s.%N)
  "$HIL" rig power-off "$victim" --dir "$work/rig"
  back=""
  while :; do
    now=$(date +%s.%N)
    if [[ $(running_on_others "$survivor" "$victim") -ge 6 ]]; then back=$now; break; fi
    if awk -v a="$t0" -v b="$now" 'BEGIN {exit !(b - a > 180)}'; then break; fi
    sleep 0.25
  done
  if [[ -n $back ]]; then
    s=$(awk -v a="$t0" -v b="$back" 'BEGIN {printf "%.2f", b - a}')
    echo "$s" >>"$times"
    log "run $r: $victim off ($on_victim pods on it): 6 pods Running again after $s s"
  else
    log "run $r: $victim off ($on_victim pods on it): pods not back within 180 s"
    k get pods -o wide >&2 || true
  fi
  "$HIL" rig restart "$victim" --dir "$work/rig"
  for _ in $(seq 1 120); do
    [[ $(k get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l) -ge 3 ]] && break
    sleep 1
  done
done
echo "pods_back_runs: $(wc -l <"$times")"
echo "pods_back_p50_s: $(percentile 50 "$times")"
echo "pods_back_p95_s: $(percentile 95 "$times")"
