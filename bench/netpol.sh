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
# - netpol_enforced_all_nodes_p99_ms: a DaemonSet's nginx pod on every node, probed from the
#   client host (each pod routed via its own node) by new TCP connections every few ms; from
#   `kubectl apply` of a deny policy selecting them all starting to the last node refusing
#   (and from `kubectl delete` to the last node accepting again), CHANGES times each way.
#   The kubectl round trip is included (netpol_kubectl_change_p50_ms: kubectl alone); the
#   probes' resolution is about 20 ms.
# - node_rss_kib: RSS of the pod's node daemon at the end.
# - At scale (1,000 pods, 200 policies), computed offline by the engine and the renderer
#   (the test `netpol::tests::scale_figures`): netpol_scale_rules, netpol_scale_chains,
#   netpol_scale_sets, netpol_scale_set_elements (the largest node's table, 1,000 pods over 3
#   nodes) and netpol_scale_compute_p99_ms (engine and rendering of one node's table).
# - SCALE=1: the same shape on a real rig instead of the wrk and one-node rounds: NODES (10,
#   as 1,000 pods need 10 nodes of 110) nodes, PODS pods (1,000: 20 namespaces of 10
#   Deployments, busybox) and the offline test's 200 policies; then the every-node change above
#   with all of them in place (netpol_scale_enforced_all_nodes_p50/p99_ms), each node's nft
#   table counted (netpol_scale_nft_rules_max, _chains_max, _sets_max, _set_elements_max), and
#   the daemons' RSS with the pods alone and with the policies (netpol_scale_node_rss_kib_max,
#   netpol_scale_node_rss_delta_kib_max).
#
#   bench/netpol.sh                      # DURATION=10s CONNECTIONS=16 THREADS=2 ROUNDS=3 CHANGES=10 OFFLINE=1
#   SCALE=1 OFFLINE=0 bench/netpol.sh    # NODES=10 PODS=1000 CHANGES=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
CHANGES=${CHANGES:-10}
SCALE=${SCALE:-0}
if [[ $SCALE == 1 ]]; then NODES=${NODES:-10}; else NODES=${NODES:-3}; fi
PODS=${PODS:-1000}
export SHOAL_HIL_TMPFS_MB=${SHOAL_HIL_TMPFS_MB:-3072}
work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench-netpol.XXXXXX")
rig="$work/rig"
# KEEP=DIR keeps the daemons' logs and the change times (epoch ms when each kubectl started) there.
cleanup() {
  if [[ -n ${KEEP:-} ]]; then
    mkdir -p "$KEEP"
    for d in "$rig"/n*/; do [[ -f $d/daemon.log ]] && cp "$d/daemon.log" "$KEEP/$(basename "$d").log"; done
    cp "$work"/all-nodes* "$work"/changes "$KEEP/" 2>/dev/null || true
  fi
  rig_down "$rig"
  rm -rf "$work"
}
trap cleanup EXIT

# Offline figures first (no root needed for these); OFFLINE=0 skips them.
if [[ ${OFFLINE:-1} != 0 ]]; then
  log "engine figures at 1,000 pods and 200 policies"
  NETPOL_SCALE_FIGURES=1 cargo test -q -p shoal --lib netpol::tests::scale_figures -- --nocapture 2>/dev/null |
    grep -E '^netpol_scale_[a-z0-9_]+: ' || log "scale figures unavailable"
fi

build
apt_need wrk wrk
"$HIL" rig down --dir "$rig" >/dev/null 2>&1 || true
"$HIL" rig up --nodes "$NODES" --client --dir "$rig" --shoal-bin "$SHOAL" >&2 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
import_images "$rig" "$NODES"
k() { kubectl --kubeconfig "$rig/kubeconfig" --request-timeout=10s "$@"; }
on() { local h=$1; shift; "$HIL" rig exec "$h" --dir "$rig" -- "$@"; }

# max_rss_kib: the largest RSS of the NODES daemons; each node's figure kept in rss_<label>_<i>.
max_rss_kib() {
  local label=$1 i pid r max=0
  for i in $(seq 1 "$NODES"); do
    pid=$(daemon_pid "$rig" "n$i") || true
    r=$(rss_kib "${pid:-0}")
    echo "$r" >"$work/rss_${label}_$i"
    ((r > max)) && max=$r
  done
  echo "$max"
}

# scale_up (SCALE=1): PODS busybox pods in 20 namespaces of 10 Deployments and the 200
# policies of the offline test (netpol::tests::scale_figures): per namespace a default deny,
# an allow-DNS and eight allows from labelled pods, other namespaces' web tier, ports by name
# and range, and ipBlocks with an except.
scale_up() {
  python3 - "$PODS" >"$work/scale-pods.json" <<'PY'
import json, sys
per = max(1, int(sys.argv[1]) // 200)
items = [{"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": f"ns{n}", "labels": {"team": f"t{n % 4}"}}} for n in range(20)]
for n in range(20):
    for a in range(10):
        labels = {"app": f"app{a}", "tier": "web" if a % 2 == 0 else "db"}
        items.append({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"app{a}", "namespace": f"ns{n}"},
            "spec": {"replicas": per, "selector": {"matchLabels": {"app": f"app{a}"}},
                "template": {"metadata": {"labels": labels}, "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": "busybox:1.25", "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "1000000"], "ports": [{"name": "http", "containerPort": 80}]}]}}}})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
PY
  python3 - >"$work/scale-policies.json" <<'PY'
import json
items = []
def pol(ns, name, spec):
    items.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"name": name, "namespace": ns}, "spec": spec})
for n in range(20):
    ns = f"ns{n}"
    pol(ns, "deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    pol(ns, "dns", {"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]})
    for a in range(8):
        pol(ns, f"allow-{a}", {"podSelector": {"matchLabels": {"app": f"app{a}"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"app{(a + 1) % 10}"}}},
                {"namespaceSelector": {"matchLabels": {"team": f"t{a % 4}"}},
                 "podSelector": {"matchLabels": {"tier": "web"}}}],
                "ports": [{"port": "http"}, {"port": 9000 + a, "endPort": 9010 + a}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"port": 5432}]},
                {"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": [f"192.168.{a}.0/24"]}}]}]})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
PY
  local t0 running=0
  t0=$(now_ms)
  k apply -f "$work/scale-pods.json" >/dev/null
  for _ in $(seq 1 180); do
    running=$(k get pods -A -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' 2>/dev/null | grep -c '^Running$' || true)
    ((running >= PODS)) && break
    sleep 5
  done
  echo "netpol_scale_pods_running: $running"
  echo "netpol_scale_pods_running_after_s: $((($(now_ms) - t0) / 1000))"
  sleep 10
  echo "netpol_scale_node_rss_kib_pods_only_max: $(max_rss_kib pods)"
  k apply -f "$work/scale-policies.json" >/dev/null
  echo "netpol_scale_policies: $(k get networkpolicies -A --no-headers 2>/dev/null | wc -l)"
  sleep 15
  echo "netpol_scale_node_rss_kib_max: $(max_rss_kib policies)"
  local i d dmax=0
  for i in $(seq 1 "$NODES"); do
    d=$(($(cat "$work/rss_policies_$i") - $(cat "$work/rss_pods_$i")))
    ((d > dmax)) && dmax=$d
  done
  echo "netpol_scale_node_rss_delta_kib_max: $dmax"
}

# scale_report (SCALE=1): every node's nft table counted; the largest figures printed.
scale_report() {
  local i
  for i in $(seq 1 "$NODES"); do
    on "n$i" nft -j list table inet shoal-netpol >"$work/nft-n$i.json" 2>/dev/null || true
  done
  python3 - "$work"/nft-n*.json <<'PY'
import json, sys
best = {}
for f in sys.argv[1:]:
    try:
        objs = json.load(open(f))["nftables"]
    except (OSError, ValueError, KeyError):
        continue
    c = {"rules": 0, "chains": 0, "sets": 0, "set_elements": 0}
    for o in objs:
        if "rule" in o:
            c["rules"] += 1
        elif "chain" in o:
            c["chains"] += 1
        elif "set" in o or "map" in o:
            s = o.get("set") or o.get("map")
            c["sets"] += 1
            c["set_elements"] += len(s.get("elem", []))
    for k, v in c.items():
        best[k] = max(best.get(k, 0), v)
for k in ("rules", "chains", "sets", "set_elements"):
    print(f"netpol_scale_nft_{k}_max: {best.get(k, 0)}")
PY
}

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
now_ms() { date +%s%3N; }
if [[ $SCALE != 1 ]]; then
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
else
  scale_up
fi

# Enforced on every node: a pod of a DaemonSet on each node, a deny policy selecting all of them.
cat >"$work/spread.yaml" <<'YAML'
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: spread}
spec:
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      containers:
      - {name: web, image: nginx, imagePullPolicy: IfNotPresent}
YAML
cat >"$work/deny-spread.yaml" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-spread}
spec:
  podSelector: {matchLabels: {app: spread}}
  policyTypes: [Ingress]
YAML
# probe.py READY MODE IP...: one thread per address, a new TCP connection to port 80 every
# ~10 ms (50 ms timeout); once all answer, touches READY; then prints, per address, the epoch ms
# at which the first attempt that gave the MODE outcome (deny: no answer, allow: connected)
# started, and exits.
cat >"$work/probe.py" <<'PY'
import socket, sys, threading, time
ready, mode, ips = sys.argv[1], sys.argv[2], sys.argv[3:]
def attempt(ip):
    s = socket.socket()
    s.settimeout(0.05)
    try:
        s.connect((ip, 80))
        return True
    except OSError:
        return False
    finally:
        s.close()
deadline = time.time() + 60
for ip in ips:
    while attempt(ip) != (mode == 'deny'):
        if time.time() > deadline:
            sys.exit('%s never reached the start state' % ip)
        time.sleep(0.01)
open(ready, 'w').close()
got = {}
def watch(ip):
    while time.time() < deadline + 30:
        t = time.time()
        if attempt(ip) == (mode == 'allow'):
            got[ip] = int(t * 1000)
            return
        time.sleep(0.01)
ts = [threading.Thread(target=watch, args=(ip,)) for ip in ips]
for t in ts: t.start()
for t in ts: t.join()
for ip in ips: print(ip, got.get(ip, 0))
PY
k apply -f "$work/spread.yaml" >&2
spread_ips=()
for _ in $(seq 1 240); do
  mapfile -t spread_ips < <(k get pods -l app=spread -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.status.podIP}{" "}{.spec.nodeName}{"\n"}{end}' 2>/dev/null | awk 'NF == 2')
  ((${#spread_ips[@]} >= NODES)) && break
  sleep 1
done
targets=()
for line in "${spread_ips[@]}"; do
  ip=${line% *} n=${line#* }
  on client ip route replace "$ip/32" via "10.77.0.${n#n}" >&2
  targets+=("$ip")
done
log "probing ${#targets[@]} pods on $(printf '%s\n' "${spread_ips[@]}" | awk '{print $2}' | sort -u | tr '\n' ' ')"
: >"$work/all-nodes"
# change MODE FILE VERB: one change and its time to the last node (ms), appended to all-nodes.
change() {
  local mode=$1 verb=$2 t0 last
  rm -f "$work/ready"
  on client python3 "$work/probe.py" "$work/ready" "$mode" "${targets[@]}" >"$work/probe.out" &
  local probe=$!
  for _ in $(seq 1 600); do [[ -e $work/ready ]] && break; sleep 0.1; done
  t0=$(now_ms)
  echo "$mode $t0" >>"$work/all-nodes.t0"
  k "$verb" -f "$work/deny-spread.yaml" >/dev/null
  echo $(($(now_ms) - t0)) >>"$work/kubectl"
  wait "$probe" || { log "probe failed ($mode)"; return 0; }
  last=$(awk 'BEGIN {m = 0} {if ($2 == 0) {m = -1; exit} if ($2 > m) m = $2} END {print m}' "$work/probe.out")
  if ((last > 0)); then echo $((last - t0)) >>"$work/all-nodes"; else log "a node never changed ($mode)"; fi
}
if ((${#targets[@]} >= NODES)); then
  for _ in $(seq 1 "$CHANGES"); do
    change deny apply
    change allow delete
  done
  all=netpol_enforced_all_nodes
  [[ $SCALE == 1 ]] && all=netpol_scale_enforced_all_nodes
  echo "${all}_nodes: ${#targets[@]}"
  echo "${all}_p50_ms: $(percentile 50 "$work/all-nodes")"
  echo "${all}_p99_ms: $(percentile 99 "$work/all-nodes")"
  # The client's share: from the same start to the kubectl process exiting (its start-up, the
  # API round trips, the write's commit).
  echo "netpol_kubectl_change_p50_ms: $(percentile 50 "$work/kubectl")"
else
  log "the DaemonSet's pods did not run on $NODES nodes: ${spread_ips[*]}"
fi

if [[ $SCALE == 1 ]]; then
  scale_report
else
  pid=$(daemon_pid "$rig" "$node") || true
  echo "node_rss_kib: $(rss_kib "${pid:-0}")"
  echo "node_netpol_table_lines: $(on "$node" nft list table inet shoal-netpol | wc -l)"
fi
load_line after
