#!/usr/bin/env bash
# The built-in Ingress against Debian's nginx as the same reverse proxy: two nginx pods behind a
# Service and an Ingress (host bench.test, path /) on a 3-node rig; Debian's nginx started in n1's
# network namespace on port 8081, proxying to the same two pod addresses with a keep-alive
# upstream. wrk on the client host against n1:80 (shoal) and n1:8081 (nginx), same Host header,
# alternating ROUNDS times; the median round of each counts.
#
#   bench/ingress.sh                     # DURATION=10s CONNECTIONS=16 THREADS=2 ROUNDS=3
#   PERF_DATA=/tmp/ingress.perf bench/ingress.sh   # also a perf profile of n1 in round 1
#
# Prints shoal_ingress_rps, nginx_rps, their p99s, ingress_rps_ratio_vs_nginx (goal >= 1) and
# ingress_p99_ratio_vs_nginx (goal <= 1) for plain HTTP keep-alive, and the same with a _tls
# suffix for HTTPS keep-alive (n1:443 against nginx on n1:8443, both with an ECDSA P-256
# certificate; wrk sends no SNI, so shoal serves its default certificate, nginx its only one).
# PROFILE=release (or SHOAL=/path/to/shoal) for the figures that count.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
export SHOAL_HIL_TMPFS_MB=${SHOAL_HIL_TMPFS_MB:-3072}
work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench-ingress.XXXXXX")
rig="$work/rig"
nginx_pid=""
cleanup() {
  # Never let a failing kill stop the cleanup (errexit applies inside the trap too).
  if [[ -n $nginx_pid ]]; then kill "$nginx_pid" 2>/dev/null || true; fi
  rig_down "$rig"
  rm -rf "$work"
}
trap cleanup EXIT
build
apt_need wrk wrk
apt_need nginx nginx

"$HIL" rig down --dir "$rig" >/dev/null 2>&1 || true
"$HIL" rig up --nodes 3 --client --dir "$rig" --shoal-bin "$SHOAL" >&2 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
import_images "$rig" 3
k() { kubectl --kubeconfig "$rig/kubeconfig" --request-timeout=10s "$@"; }
on() { local h=$1; shift; "$HIL" rig exec "$h" --dir "$rig" -- "$@"; }

cat >"$work/app.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
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
  name: web
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
spec:
  rules:
  - host: bench.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port: {number: 80}
YAML
sleep 12 # the image import dir is rescanned every 10 s
for _ in $(seq 1 60); do k apply -f "$work/app.yaml" >&2 && break; sleep 1; done
for _ in $(seq 1 240); do
  [[ $(k get deploy web -o jsonpath='{.status.readyReplicas}' 2>/dev/null) == 2 ]] && break
  sleep 1
done
mapfile -t pods < <(k get pods -l app=web -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}')
[[ ${#pods[@]} -eq 2 ]] || { log "want 2 pod IPs, got ${pods[*]}"; exit 1; }
node_ip=10.77.0.1
log "pods ${pods[*]}; proxies on n1 $node_ip"

# nginx in n1's network namespace, the same routes as the Ingress.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -keyout "$work/tls.key" \
  -out "$work/tls.crt" -subj /CN=bench.test -addext subjectAltName=DNS:bench.test 2>/dev/null
cat >"$work/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
# wrk keeps its connections; so does the Ingress, so nginx must not close them every 1,000 requests.
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  upstream web { server ${pods[0]}:80; server ${pods[1]}:80; keepalive 64; }
  server {
    listen 8081;
    listen 8443 ssl;
    ssl_certificate $work/tls.crt;
    ssl_certificate_key $work/tls.key;
    server_name bench.test;
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_pass http://web;
    }
  }
}
EOF
"$HIL" rig exec n1 --dir "$rig" -- nginx -c "$work/nginx.conf" >&2 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
nginx_pid=$!

load_before=$(cut -d' ' -f1 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
  if [[ -n ${PERF_DATA:-} && $round == 1 ]]; then
    # A CPU profile of n1's daemon during the first plain-HTTP round (perf report -i PERF_DATA).
    perf record -F 499 -g -p "$(daemon_pid "$rig" n1)" -o "$PERF_DATA" -- sleep "${DURATION%s}" >&2 2>/dev/null &
  fi
  wrk_round shoal_ingress "http://$node_ip/" bench.test
  wrk_round nginx "http://$node_ip:8081/" bench.test
  wrk_round shoal_ingress_tls "https://$node_ip/" bench.test
  wrk_round nginx_tls "https://$node_ip:8443/" bench.test
done
for p in shoal_ingress nginx shoal_ingress_tls nginx_tls; do
  echo "${p}_rps: $(median_col 1 "$work/$p")"
  echo "${p}_rps_min: $(min_col 1 "$work/$p")"
  echo "${p}_p99_ms: $(median_col 2 "$work/$p")"
done
for sfx in "" _tls; do
  echo "ingress_rps_ratio_vs_nginx$sfx: $(ratio "$(median_col 1 "$work/shoal_ingress$sfx")" "$(median_col 1 "$work/nginx$sfx")")"
  echo "ingress_p99_ratio_vs_nginx$sfx: $(ratio "$(median_col 2 "$work/shoal_ingress$sfx")" "$(median_col 2 "$work/nginx$sfx")")"
done
echo "load_average_before: $load_before"
load_line after
