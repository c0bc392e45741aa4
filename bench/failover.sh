#!/usr/bin/env bash
# Leader failover: 3 nodes in netns rigs; a writer writes through the survivors, the leader's
# host is powered off (kill -9 of its whole pid namespace); time from the kill until a write is
# acknowledged again. Runs shoal-hil's `leader-killed` scenario RUNS times on fresh rigs.
#
#   bench/failover.sh               # 10 runs
#   RUNS=3 bench/failover.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-10}
work=$(mktemp -d /tmp/shoal-bench-failover.XXXXXX)
cleanup() {
  "$HIL" rig down --dir "$work/rigs/leader-killed" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
build
ms=$work/failover_ms
lead=$work/new_leader_ms
: >"$ms"
: >"$lead"
for r in $(seq 1 "$RUNS"); do
  out=$work/out$r
  if ! "$HIL" run leader-killed --dir "$work/rigs" --out "$out" >"$work/run$r.log" 2>&1; then
    log "run $r failed: $(tail -3 "$work/run$r.log" | tr '\n' ' ')"
  fi
  # results.json holds the scenario's figures; pull out the two we report.
  python3 - "$out/results.json" "$ms" "$lead" <<'PY' || log "run $r: no figures"
import json, sys
data = json.load(open(sys.argv[1]))
def walk(o):
    if isinstance(o, dict):
        yield o
        for v in o.values():
            yield from walk(v)
    elif isinstance(o, list):
        for v in o:
            yield from walk(v)
for d in walk(data):
    if "failover_write_ms" in d:
        open(sys.argv[2], "a").write(f"{d['failover_write_ms']}\n")
    if "new_leader_ms" in d:
        open(sys.argv[3], "a").write(f"{d['new_leader_ms']}\n")
PY
  log "run $r: failover $(tail -1 "$ms" 2>/dev/null) ms"
done
echo "failover_runs: $(wc -l <"$ms")"
echo "new_leader_p50_ms: $(percentile 50 "$lead")"
echo "failover_p50_ms: $(percentile 50 "$ms")"
echo "failover_p95_ms: $(percentile 95 "$ms")"
