#!/usr/bin/env bash
# Kubernetes API latency and throughput through one node (n1) of a 3-node cluster: create, get,
# list (COUNT ConfigMaps), patch, watch delivery; then RSS of n1 holding FILL objects.
# The cost of metrics: with METRICS=both (the default) a second round runs on a fresh rig with
# `[metrics] enabled = false`, and the mutating p99 of both rounds and their ratio are printed.
#
#   bench/api.sh                     # COUNT=1000 FILL=10000 CLIENTS=8 METRICS=both
#   COUNT=300 FILL=2000 bench/api.sh
#   METRICS=on bench/api.sh          # one round, metrics on (METRICS=off: one round, off)
#
# The cost of an admission webhook: with WEBHOOK=1 (the default) one more round runs on a fresh
# rig with a ValidatingWebhookConfiguration for ConfigMap creates and updates (failurePolicy
# Fail) served by a small HTTPS server (python3 on this machine, reached by the nodes at the
# rig's host address 10.77.0.250), and `webhook_added_p99_ms` is its mutating p99 minus the
# metrics-on round's (every create and patch of the workload passes the webhook).
#   WEBHOOK=0 bench/api.sh           # without the webhook round
#   RBAC=only bench/api.sh           # the RBAC round alone (RBAC=0: without it)
#   EXTRA_CONFIG=$'[store]\ncache_mb = 64' bench/api.sh   # config.toml lines for every node
# The RBAC round (on by default, see rbac_round below) runs on a rig of its own after the others.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COUNT=${COUNT:-1000}
FILL=${FILL:-10000}
CLIENTS=${CLIENTS:-8}
METRICS=${METRICS:-both}
WEBHOOK=${WEBHOOK:-1}
RBAC=${RBAC:-1}
work=$(mktemp -d /tmp/shoal-bench-api.XXXXXX)
cleanup() {
  [[ -f $work/hook.pid ]] && kill "$(cat "$work/hook.pid")" 2>/dev/null
  rig_down "$work/rig"
  rm -rf "$work"
}
trap cleanup EXIT
build
# EXTRA_CONFIG: config.toml lines given to every node of every round, for example
# EXTRA_CONFIG=$'[store]\ncache_mb = 64'.
printf 'version = 1\n%s\n' "${EXTRA_CONFIG:-}" >"$work/base.toml"
printf 'version = 1\n[metrics]\nenabled = false\n%s\n' "${EXTRA_CONFIG:-}" >"$work/metrics-off.toml"

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

# webhook_round: the workload with a validating webhook for ConfigMaps in the path; figures in
# $work/figures-webhook, plus the webhook's call count.
webhook_round() {
  local addr=10.77.0.250 port=18443
  # A CA and a server certificate it signs (a self-signed CA certificate cannot be the server's:
  # the API server's verifier refuses a CA certificate used as an end-entity one).
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bench-webhook-ca \
    -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=bench-webhook -keyout "$work/hook.key" -out "$work/hook.csr" 2>/dev/null
  printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$addr" >"$work/hook.ext"
  openssl x509 -req -in "$work/hook.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
    -extfile "$work/hook.ext" -out "$work/hook.crt" 2>/dev/null
  cat >"$work/hook.py" <<'PY'
import json, ssl, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
calls = 0
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a): pass
    def do_POST(self):
        global calls
        req = json.loads(self.rfile.read(int(self.headers.get('Content-Length', 0))))['request']
        with lock:
            calls += 1
            open(sys.argv[4], 'w').write(str(calls))
        body = json.dumps({'apiVersion': 'admission.k8s.io/v1', 'kind': 'AdmissionReview',
                           'response': {'uid': req['uid'], 'allowed': True}}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer.daemon_threads = True
srv = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3] + '.crt', sys.argv[3] + '.key')
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
PY
  rig_up "$work/rig" 3 "$work/base.toml"
  python3 "$work/hook.py" "$addr" "$port" "$work/hook" "$work/hook.calls" 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
  echo $! >"$work/hook.pid"
  cat >"$work/hook.json" <<JSON
{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
 "metadata": {"name": "bench"},
 "webhooks": [{"name": "bench.api.shoal", "sideEffects": "None", "admissionReviewVersions": ["v1"],
   "failurePolicy": "Fail", "timeoutSeconds": 5,
   "clientConfig": {"url": "https://$addr:$port/validate", "caBundle": "$(base64 -w0 "$work/ca.crt")"},
   "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]}]}
JSON
  kubectl --kubeconfig "$work/rig/kubeconfig" apply -f "$work/hook.json" >&2
  # The webhook answers before the workload starts (a configuration applies within a second).
  local ok=""
  for _ in $(seq 1 100); do
    if kubectl --kubeconfig "$work/rig/kubeconfig" create configmap hook-probe --dry-run=server -o name >/dev/null 2>&1 &&
      [[ -s $work/hook.calls ]]; then ok=1; break; fi
    sleep 0.2
  done
  if [[ -z $ok ]]; then
    log "the bench webhook never answered: $(kubectl --kubeconfig "$work/rig/kubeconfig" create configmap hook-probe --dry-run=server -o name 2>&1)"
    return 1
  fi
  local before
  before=$(cat "$work/hook.calls")
  "$HIL" load api --kubeconfig "$work/rig/kubeconfig" --server https://10.77.0.1:6443 \
    --count "$COUNT" --fill 0 --clients "$CLIENTS" >"$work/figures-webhook"
  echo "webhook_calls: $(($(cat "$work/hook.calls") - before))" >>"$work/figures-webhook"
  kill "$(cat "$work/hook.pid")" 2>/dev/null || true
  rm -f "$work/hook.pid"
  rig_down "$work/rig"
}

# --- RBAC round ------------------------------------------------------------------------------
# rbac_round: a fresh rig with 1,000 RoleBindings and 100 ClusterRoleBindings (in 20
# namespaces, for 1,000 users and 50 groups), one of the RoleBindings giving user `bench-user`
# `edit` in bench-rbac-user. Then the same mutating run (COUNT creates and patches, CLIENTS
# clients, no fill) as admin in bench-rbac-admin and as bench-user. Prints
# authz_decision_p99_us: p99 of n1's shoal_authorization_decision_duration_seconds over the
# user's run alone (interpolated within its bucket), and rbac_mutating_p99_ratio_vs_admin.
rbac_bindings() {
  local i
  for ns in bench-rbac-admin bench-rbac-user $(seq -f 'rbac-bench-%g' 0 19); do
    printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n' "$ns"
  done
  printf -- '---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: bench-user-edit, namespace: bench-rbac-user}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: bench-user}\n'
  for i in $(seq 1 999); do
    printf -- '---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: rb-%d, namespace: rbac-bench-%d}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: user-%d}\n- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: team-%d}\n' \
      "$i" $((i % 20)) "$i" $((i % 50))
  done
  for i in $(seq 0 99); do
    printf -- '---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: crb-%d}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: ops-%d}\n' "$i" "$i"
  done
}

# authz_buckets FILE: n1's decision-time histogram buckets, "LE COUNT" lines.
authz_buckets() {
  kubectl --kubeconfig "$work/rig/kubeconfig" --server https://10.77.0.1:6443 get --raw /metrics |
    sed -n 's/^shoal_authorization_decision_duration_seconds_bucket{le="\([^"]*\)"} \([0-9.e+]*\).*/\1 \2/p' >"$1"
}

# authz_p99_us BEFORE AFTER: p99 in µs of the decisions between two snapshots.
authz_p99_us() {
  paste -d' ' "$1" "$2" | awk '
    { le[NR] = ($1 == "+Inf") ? -1 : $1 + 0; n[NR] = $4 - $2 }
    END {
      total = n[NR]; if (total <= 0) { print "n/a"; exit }
      want = 0.99 * total; prev_le = 0; prev_n = 0
      for (i = 1; i <= NR; i++) {
        if (n[i] >= want) {
          if (le[i] < 0) { printf ">%.1f\n", prev_le * 1e6; exit }
          frac = (n[i] > prev_n) ? (want - prev_n) / (n[i] - prev_n) : 1
          printf "%.1f\n", (prev_le + frac * (le[i] - prev_le)) * 1e6; exit
        }
        prev_le = le[i]; prev_n = n[i]
      }
    }'
}

rbac_round() {
  local server=https://10.77.0.1:6443 started
  rig_up "$work/rig" 3
  "$HIL" rig exec n1 --dir "$work/rig" -- "$SHOAL" kubeconfig --user bench-user --ttl 2h \
    --data-dir "$work/rig/n1/data" --server "$server" >"$work/user.kubeconfig"
  rbac_bindings >"$work/rbac.yaml"
  started=$(date +%s)
  kubectl --kubeconfig "$work/rig/kubeconfig" --server "$server" create -f "$work/rbac.yaml" >/dev/null
  echo "rbac_objects_created_s: $(($(date +%s) - started))"
  echo "rbac_rolebindings: $(kubectl --kubeconfig "$work/rig/kubeconfig" --server "$server" get rolebindings -A --no-headers | grep -cE ' (rb-[0-9]+|bench-user-edit) ')"
  echo "rbac_clusterrolebindings: $(kubectl --kubeconfig "$work/rig/kubeconfig" --server "$server" get clusterrolebindings --no-headers | grep -c crb-)"
  "$HIL" load api --kubeconfig "$work/rig/kubeconfig" --server "$server" --namespace bench-rbac-admin \
    --count "$COUNT" --clients "$CLIENTS" >"$work/figures-rbac-admin"
  authz_buckets "$work/authz-before"
  "$HIL" load api --kubeconfig "$work/user.kubeconfig" --server "$server" --namespace bench-rbac-user \
    --count "$COUNT" --clients "$CLIENTS" >"$work/figures-rbac-user"
  authz_buckets "$work/authz-after"
  rig_down "$work/rig"
  local admin user
  admin=$(p99 rbac-admin) user=$(p99 rbac-user)
  echo "authz_decision_p99_us: $(authz_p99_us "$work/authz-before" "$work/authz-after")"
  echo "rbac_mutating_p99_ms_admin: $admin"
  echo "rbac_mutating_p99_ms_user: $user"
  echo "rbac_mutating_p99_ratio_vs_admin: $(awk -v a="$user" -v b="$admin" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}')"
}
# --- end of the RBAC round ---------------------------------------------------------------------

case $RBAC in
  0 | 1) ;;
  only) rbac_round; echo "load_average: $(cut -d' ' -f1-3 /proc/loadavg)"; exit 0 ;;
  *) echo "RBAC must be 1, 0 or only" >&2; exit 2 ;;
esac
case $METRICS in
  on | both) round on "$work/base.toml" ;;
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
if [[ $WEBHOOK == 1 ]]; then
  webhook_round
  base=$(p99 "$first") hooked=$(p99 webhook)
  echo "webhook_calls: $(awk '/^webhook_calls:/ {print $2}' "$work/figures-webhook")"
  echo "mutating_p99_ms_webhook: $hooked"
  echo "webhook_added_p99_ms: $(awk -v a="$hooked" -v b="$base" 'BEGIN {printf "%.2f", a - b}')"
fi
[[ $RBAC == 1 ]] && rbac_round
echo "load_average: $(cut -d' ' -f1-3 /proc/loadavg)"
