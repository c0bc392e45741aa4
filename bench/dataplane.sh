#!/usr/bin/env bash
# Service data plane overhead: one nginx pod behind a Service of type LoadBalancer on a 3-node
# rig; wrk on the client host against the pod directly, through its ClusterIP, its NodePort and
# its LoadBalancer IP, one after the other in the same run, ROUNDS times over (the four paths
# interleaved, so a slow moment of this machine does not land on one path); the median round
# of each path counts. The client reaches the pod IP and
# the ClusterIP through a route via the pod's node (as a router in front of the cluster would);
# the NodePort on the pod's node; the LoadBalancer IP wherever it is announced.
#
#   bench/dataplane.sh                   # DURATION=10s CONNECTIONS=16 THREADS=2 ROUNDS=3
#
# Prints, per path, <path>_rps and <path>_p99_ms, and clusterip_ratio, nodeport_ratio,
# loadbalancer_ratio (requests/s relative to direct).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
POOL=${POOL:-10.77.0.240-10.77.0.249}
# The rig's data dirs on a tmpfs: a nearly full disk here must not put the nodes under DiskPressure.
export SHOAL_HIL_TMPFS_MB=${SHOAL_HIL_TMPFS_MB:-3072}
work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench-dataplane.XXXXXX")
rig="$work/rig"
cleanup() { rig_down "$rig"; rm -rf "$work"; }
trap cleanup EXIT
build
apt_need wrk wrk

printf 'version = 1\n[lb]\ndefault_pool = ["%s"]\n' "$POOL" >"$work/config.toml"
"$HIL" rig down --dir "$rig" >/dev/null 2>&1 || true
"$HIL" rig up --nodes 3 --client --dir "$rig" --shoal-bin "$SHOAL" --config "$work/config.toml" >&2 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
import_images "$rig" 3
k() { kubectl --kubeconfig "$rig/kubeconfig" --request-timeout=10s "$@"; }
on() { local h=$1; shift; "$HIL" rig exec "$h" --dir "$rig" -- "$@"; }

cat >"$work/app.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: dataplane
spec:
  replicas: 1
  selector:
    matchLabels: {app: dataplane}
  template:
    metadata:
      labels: {app: dataplane}
    spec:
      containers:
      - name: web
        image: nginx
        imagePullPolicy: IfNotPresent
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: dataplane
spec:
  type: LoadBalancer
  selector: {app: dataplane}
  ports:
  - port: 80
    targetPort: 80
YAML
sleep 12 # the image import dir is rescanned every 10 s
k apply -f "$work/app.yaml" >&2
for _ in $(seq 1 240); do
  [[ $(k get deploy dataplane -o jsonpath='{.status.readyReplicas}' 2>/dev/null) == 1 ]] && break
  sleep 1
done
pod_ip=$(k get pods -l app=dataplane -o jsonpath='{.items[0].status.podIP}')
node=$(k get pods -l app=dataplane -o jsonpath='{.items[0].spec.nodeName}')
node_ip=10.77.0.${node#n}
cluster_ip=$(k get svc dataplane -o jsonpath='{.spec.clusterIP}')
node_port=$(k get svc dataplane -o jsonpath='{.spec.ports[0].nodePort}')
lb_ip=""
for _ in $(seq 1 120); do
  lb_ip=$(k get svc dataplane -o jsonpath='{.status.loadBalancer.ingress[0].ip}' 2>/dev/null || true)
  [[ -n $lb_ip ]] && break
  sleep 0.5
done
[[ -n $pod_ip && -n $cluster_ip && -n $node_port && -n $lb_ip ]] ||
  { log "missing an address: pod $pod_ip clusterIP $cluster_ip nodePort $node_port lb $lb_ip"; exit 1; }
log "pod $pod_ip on $node, clusterIP $cluster_ip, nodePort $node_ip:$node_port, loadBalancer $lb_ip"
on client ip route replace "$pod_ip/32" via "$node_ip" >&2
on client ip route replace "$cluster_ip/32" via "$node_ip" >&2

paths=(direct clusterip nodeport loadbalancer)
declare -A urls=([direct]="http://$pod_ip/" [clusterip]="http://$cluster_ip/"
  [nodeport]="http://$node_ip:$node_port/" [loadbalancer]="http://$lb_ip/")
load_before=$(cut -d' ' -f1 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
  for p in "${paths[@]}"; do wrk_round "$p" "${urls[$p]}"; done
done
for p in "${paths[@]}"; do
  echo "${p}_rps: $(median_col 1 "$work/$p")"
  echo "${p}_rps_min: $(min_col 1 "$work/$p")"
  echo "${p}_p99_ms: $(median_col 2 "$work/$p")"
done
for p in clusterip nodeport loadbalancer; do
  echo "${p}_ratio: $(ratio "$(median_col 1 "$work/$p")" "$(median_col 1 "$work/direct")")"
done
echo "load_average_before: $load_before"
load_line after
