#!/usr/bin/env bash
# NetworkPolicy cost, on a 3-node rig and offline.
#
# - netpol_rps_ratio: wrk from the client host to an nginx pod (routed via the pod's node, so it
#   crosses that node's forward hook as traffic from a pod of another node does) with a policy
#   that isolates the pod and allows the client, over the same without any policy. ROUNDS
#   rounds, the two cases interleaved; medians count.
# - netpol_change_enforced_p99_ms: from `kubectl apply` of a deny policy (or `delete` of it)
#   starting to the pod's node holding the change in its nft table, CHANGES times each way;
#   the kubectl round trip and the polling of `nft list` are included.
# - node_rss_kib: RSS of the pod's node daemon at the end.
# - At scale (1,000 pods, 200 policies), computed offline by the engine and the renderer
#   (the test `netpol::tests::scale_figures`): netpol_scale_rules, netpol_scale_chains,
#   netpol_scale_sets, netpol_scale_set_elements (the largest node's table, 1,000 pods over 3
#   nodes) and netpol_scale_compute_p99_ms (engine and rendering of one node's table). A real
#   rig of 1,000 pods does not fit on one machine.
#
#   bench/netpol.sh                      # DURATION=10s CONNECTIONS=16 THREADS=2 ROUNDS=3 CHANGES=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
CHANGES=${CHANGES:-10}
export SHOAL_HIL_TMPFS_MB=${SHOAL_HIL_TMPFS_MB:-3072}
work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench-netpol.XXXXXX")
rig="$work/rig"
cleanup() { rig_down "$rig"; rm -rf "$work"; }
trap cleanup EXIT

# Offline figures first (no root needed for these).
log "engine figures at 1,000 pods and 200 policies"
NETPOL_SCALE_FIGURES=1 cargo test -q -p shoal --lib netpol::tests::scale_figures -- --nocapture 2>/dev/null |
  grep -E '^netpol_scale_[a-z0-9_]+: ' || log "scale figures unavailable"

build
apt_need wrk wrk
"$HIL" rig down --dir "$rig" >/dev/null 2>&1 || true
"$HIL" rig up --nodes 3 --client --dir "$rig" --shoal-bin "$SHOAL" >&2 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
import_images "$rig" 3
k() { kubectl --kubeconfig "$rig/kubeconfig" --request-timeout=10s "$@"; }
on() { local h=$1; shift; "$HIL" rig exec "$h" --dir "$rig" -- "$@"; }

cat >"$work/app.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: web
    image: nginx
    imagePullPolicy: IfNotPresent
    ports:
    - {name: http, containerPort: 80}
YAML
cat >"$work/allow.yaml" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.77.0.0/16}
    - podSelector: {}
    ports:
    - {port: http}
YAML
cat >"$work/deny.yaml" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all}
spec:
  podSelector: {}
  policyTypes: [Ingress]
YAML
sleep 12 # the image import dir is rescanned every 10 s
k apply -f "$work/app.yaml" >&2
for _ in $(seq 1 240); do
  [[ $(k get pod web -o jsonpath='{.status.phase}' 2>/dev/null) == Running ]] && break
  sleep 1
done
pod_ip=$(k get pod web -o jsonpath='{.status.podIP}')
node=$(k get pod web -o jsonpath='{.spec.nodeName}')
node_ip=10.77.0.${node#n}
on client ip route replace "$pod_ip/32" via "$node_ip" >&2
url="http://$pod_ip/"
for _ in $(seq 1 60); do on client curl -s -o /dev/null -m 1 "$url" && break; sleep 0.5; done

load_before=$(cut -d' ' -f1 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
  k delete networkpolicy allow-client --ignore-not-found >&2
  sleep 0.5
  wrk_round none "$url"
  k apply -f "$work/allow.yaml" >&2
  sleep 0.5
  wrk_round allowed "$url"
done
echo "netpol_none_rps: $(median_col 1 "$work/none")"
echo "netpol_allowed_rps: $(median_col 1 "$work/allowed")"
echo "netpol_rps_ratio: $(ratio "$(median_col 1 "$work/allowed")" "$(median_col 1 "$work/none")")"
echo "load_average_before: $load_before"

# Policy change to enforced: from `kubectl apply`/`delete` starting to the pod's node holding
# (or no longer holding) the pod's ingress jump in its table.
k delete networkpolicy allow-client --ignore-not-found >&2
now_ms() { date +%s%3N; }
has_jump() { on "$node" nft list chain inet shoal-netpol forward 2>/dev/null | grep -q "$pod_ip : jump"; }
: >"$work/changes"
for _ in $(seq 1 "$CHANGES"); do
  t0=$(now_ms)
  k apply -f "$work/deny.yaml" >/dev/null
  for _ in $(seq 1 500); do has_jump && break; done
  echo $(($(now_ms) - t0)) >>"$work/changes"
  t0=$(now_ms)
  k delete -f "$work/deny.yaml" >/dev/null
  for _ in $(seq 1 500); do has_jump || break; done
  echo $(($(now_ms) - t0)) >>"$work/changes"
done
echo "netpol_change_enforced_p99_ms: $(percentile 99 "$work/changes")"
pid=$(daemon_pid "$rig" "$node") || true
echo "node_rss_kib: $(rss_kib "${pid:-0}")"
echo "node_netpol_table_lines: $(on "$node" nft list table inet shoal-netpol | wc -l)"
load_line after
