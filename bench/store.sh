#!/usr/bin/env bash
# Store write throughput and latency: shoal (1 and 3 nodes in netns rigs) against etcd 3.4 from
# Debian (1 and 3 members on loopback), 1 and 64 concurrent writers, 256-byte values.
#
#   bench/store.sh                  # 10 s per cell
#   SECS=5 bench/store.sh
#
# shoal is driven through each node's control socket (one kept-open session per writer), writers
# spread over the nodes; etcd through its HTTP gateway (/v3/kv/put, one keep-alive connection per
# writer): both sides keep their connection, so the figures compare the stores, not connects.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SECS=${SECS:-10}
work=$(mktemp -d /tmp/shoal-bench-store.XXXXXX)
etcd_pids=()
cleanup() {
  for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${etcd_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rig_down "$work/rig"
  rm -rf "$work"
}
trap cleanup EXIT

build
apt_need etcd etcd-server
apt_need etcdctl etcd-client
figures=$work/figures
: >"$figures"

run_shoal() {
  local n=$1
  rig_up "$work/rig" "$n"
  local socks=() i
  for i in $(seq 1 "$n"); do socks+=(--socket "$work/rig/n$i/data/shoal.sock"); done
  for w in 1 64; do
    log "shoal ${n}n ${w}c"
    "$HIL" load kv "${socks[@]}" --writers "$w" --duration "${SECS}s" --value-size 256 --name "shoal_${n}n_${w}c" | tee -a "$figures" >&2
  done
  rig_down "$work/rig"
}

run_etcd() {
  local n=$1 i cluster="" eps=()
  for i in $(seq 1 "$n"); do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((23800 + i))"; done
  for i in $(seq 1 "$n"); do
    etcd --name "e$i" --data-dir "$work/etcd$n-$i" \
      --listen-client-urls "http://127.0.0.1:$((23700 + i))" --advertise-client-urls "http://127.0.0.1:$((23700 + i))" \
      --listen-peer-urls "http://127.0.0.1:$((23800 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench$n" \
      --log-level error >"$work/etcd$n-$i.log" 2>&1 &
    etcd_pids+=($!)
    eps+=(--etcd "127.0.0.1:$((23700 + i))")
  done
  local ok=""
  for _ in $(seq 1 100); do
    if ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:23701" put bench/ready 1 >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  [[ -n $ok ]] || { log "etcd ${n}n did not start"; cat "$work"/etcd"$n"-*.log >&2; return 1; }
  for w in 1 64; do
    log "etcd ${n}n ${w}c"
    "$HIL" load kv "${eps[@]}" --writers "$w" --duration "${SECS}s" --value-size 256 --name "etcd_${n}n_${w}c" | tee -a "$figures" >&2
  done
  for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${etcd_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  etcd_pids=()
}

run_shoal 1
run_shoal 3
run_etcd 1
run_etcd 3

get() { awk -v k="$1:" '$1==k {print $2}' "$figures"; }
echo "etcd_version: $(etcd --version 2>/dev/null | awk '/etcd Version/ {print $3}')"
echo "shoal_profile: $PROFILE"
grep -v '_errors: 0$' "$figures"
s=$(get shoal_3n_64c_writes_per_s) e=$(get etcd_3n_64c_writes_per_s)
echo "write_ratio_vs_etcd_3n_64c: $(awk -v s="${s:-0}" -v e="${e:-0}" 'BEGIN {if (e > 0) printf "%.3f", s / e; else print "nan"}')"
