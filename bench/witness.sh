#!/usr/bin/env bash
# Two workload nodes and a witness: RUNS times (fresh rig each), the hil scenario `witness`
# forms the cluster (the third host runs `shoal up --witness`), puts a 3-replica Deployment
# behind a LoadBalancer Service, powers off the workload node announcing the IP, and measures
# on the survivor: the first kubectl write that succeeds (write gap), the IP answering the
# client again (VIP failover), and 3 pods Running there (pods back). The witness's resident
# memory is read from its `shoal status --json` (rss_bytes) once the workload runs.
#
#   bench/witness.sh              # RUNS=5
#   RUNS=2 bench/witness.sh
#
# Prints witness_pods_back_p95_s, witness_vip_failover_p95_ms, witness_write_gap_p95_ms,
# witness_idle_rss_mib (the largest seen), witness_runs. Debug build unless PROFILE=release.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-5}
work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench-witness.XXXXXX")
cleanup() {
  rig_down "$work/rigs/witness"
  rm -rf "$work"
}
trap cleanup EXIT
build
ls out/images/*.tar >/dev/null 2>&1 || scripts/images.sh >&2

: >"$work/pods" ; : >"$work/vip" ; : >"$work/write" ; : >"$work/rss"
for r in $(seq 1 "$RUNS"); do
  if ! "$HIL" run witness --shoal-bin "$SHOAL" --dir "$work/rigs" --out "$work/out" >"$work/run-$r" 2>"$work/log-$r"; then
    log "run $r failed:"; cat "$work/run-$r" >&2
    continue
  fi
  fig() { awk -v k="$1:" '$1 == k {print $2}' "$work/run-$r"; }
  fig witness_pods_back_s >>"$work/pods"
  fig witness_vip_failover_ms >>"$work/vip"
  fig witness_write_gap_ms >>"$work/write"
  fig witness_rss_mib >>"$work/rss"
  log "run $r: pods back $(fig witness_pods_back_s) s, vip $(fig witness_vip_failover_ms) ms, write gap $(fig witness_write_gap_ms) ms"
done
echo "witness_pods_back_p95_s: $(percentile 95 "$work/pods")"
echo "witness_vip_failover_p95_ms: $(percentile 95 "$work/vip")"
echo "witness_write_gap_p95_ms: $(percentile 95 "$work/write")"
echo "witness_idle_rss_mib: $(percentile 100 "$work/rss")"
echo "witness_runs: $(wc -l <"$work/pods")"
