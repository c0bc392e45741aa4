#!/usr/bin/env bash
# The built-in Ingress against Debian's nginx as the same reverse proxy: two nginx pods behind a
# Service and an Ingress (host bench.test, path /) on a 3-node rig; Debian's nginx started in n1's
# network namespace on port 8081, proxying to the same two pod addresses with a keep-alive
# upstream. wrk on the client host against n1:80 (shoal) and n1:8081 (nginx), same Host header,
# alternating ROUNDS times; the median round of each counts.
#
#   bench/ingress.sh                     # DURATION=10s CONNECTIONS=16 THREADS=2 ROUNDS=3
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
  [[ -n $nginx_pid ]] && kill "$nginx_pid" 2>/dev/null
  rig_down "$rig"
  rm -rf "$work"
}
trap cleanup EXIT
build
apt_need wrk wrk
apt_need nginx nginx

"$HIL" rig down --dir "$rig" >/dev/null 2>&1 || true
"$HIL" rig up --nodes 3 --client --dir "$rig" --shoal-bin "$SHOAL" >&2
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
http {
  access_log off;
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
"$HIL" rig exec n1 --dir "$rig" -- nginx -c "$work/nginx.conf" >&2 &
nginx_pid=$!

# bench NAME URL: one wrk run from the client; appends "rps p99_ms" to $work/NAME.
bench() {
  local name=$1 url=$2 out rps p99
  for _ in $(seq 1 60); do
    [[ $(on client curl -sk -o /dev/null -w '%{http_code}' -m 1 -H 'Host: bench.test' "$url") == 200 ]] && break
    sleep 0.5
  done
  out=$(on client wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H 'Host: bench.test' "$url")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v *= 1000}; print v}' <<<"$out")
  grep -q "Non-2xx\|Socket errors" <<<"$out" && log "$name: $(grep -E 'Non-2xx|Socket errors' <<<"$out")"
  log "round $round: $name ${rps:-0} req/s, p99 ${p99:-nan} ms"
  echo "${rps:-0} ${p99:-nan}" >>"$work/$name"
}
for round in $(seq 1 "$ROUNDS"); do
  bench shoal_ingress "http://$node_ip/"
  bench nginx "http://$node_ip:8081/"
  bench shoal_ingress_tls "https://$node_ip/"
  bench nginx_tls "https://$node_ip:8443/"
done
median() { awk -v c="$1" '{print $c}' "$2" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for p in shoal_ingress nginx shoal_ingress_tls nginx_tls; do
  echo "${p}_rps: $(median 1 "$work/$p")"
  echo "${p}_p99_ms: $(median 2 "$work/$p")"
done
for sfx in "" _tls; do
  awk -v s="$sfx" -v a="$(median 1 "$work/shoal_ingress$sfx")" -v b="$(median 1 "$work/nginx$sfx")" \
    'BEGIN { if (b > 0) printf "ingress_rps_ratio_vs_nginx%s: %.3f\n", s, a / b; else printf "ingress_rps_ratio_vs_nginx%s: nan\n", s }'
  awk -v s="$sfx" -v a="$(median 2 "$work/shoal_ingress$sfx")" -v b="$(median 2 "$work/nginx$sfx")" \
    'BEGIN { if (b > 0) printf "ingress_p99_ratio_vs_nginx%s: %.3f\n", s, a / b; else printf "ingress_p99_ratio_vs_nginx%s: nan\n", s }'
done
echo "load_average: $(cut -d' ' -f1 /proc/loadavg)"
