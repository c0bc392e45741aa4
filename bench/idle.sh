#!/usr/bin/env bash
# Idle cost: 3 nodes doing nothing for IDLE_SECS (default 300): RSS per node, the CPU each daemon
# used (user + system, % of one core) and the bytes it wrote to storage (/proc/PID/io write_bytes)
# after the first minute. Gossip is sealed with the cluster gossip key, as in production.
#
#   bench/idle.sh
#   IDLE_SECS=90 bench/idle.sh
#   PROFILE=release bench/idle.sh   # what a board runs; debug builds inflate RSS with their binary
set -euo pipefail
source "$(dirname "$0")/lib.sh"
IDLE_SECS=${IDLE_SECS:-300}
WARMUP=${WARMUP:-60}
(( IDLE_SECS > WARMUP )) || WARMUP=$((IDLE_SECS / 2))
work=$(mktemp -d /tmp/shoal-bench-idle.XXXXXX)
cleanup() { rig_down "$work/rig"; rm -rf "$work"; }
trap cleanup EXIT
build
rig_up "$work/rig" 3
declare -A pid w0 c0
# cpu_ticks PID: user + system clock ticks of a process (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for h in n1 n2 n3; do pid[$h]=$(daemon_pid "$work/rig" "$h"); done
log "pids: ${pid[*]}; warming up ${WARMUP}s"
sleep "$WARMUP"
for h in n1 n2 n3; do w0[$h]=$(write_bytes "${pid[$h]}"); c0[$h]=$(cpu_ticks "${pid[$h]}"); done
sleep $((IDLE_SECS - WARMUP))
max_rss=0 max_w=0 total_w=0 max_anon=0
for h in n1 n2 n3; do
  r=$(rss_kib "${pid[$h]}")
  a=$(anon_kib "${pid[$h]}")
  (( a > max_anon )) && max_anon=$a
  w=$(( $(write_bytes "${pid[$h]}") - ${w0[$h]} ))
  echo "idle_rss_mib_$h: $(awk -v r="$r" 'BEGIN {printf "%.1f", r / 1024}')"
  echo "idle_bytes_written_$h: $w"
  c=$(( $(cpu_ticks "${pid[$h]}") - ${c0[$h]} ))
  echo "idle_cpu_percent_$h: $(awk -v c="$c" -v hz="$hz" -v s=$((IDLE_SECS - WARMUP)) 'BEGIN {printf "%.2f", 100 * c / hz / s}')"
  (( r > max_rss )) && max_rss=$r
  (( w > max_w )) && max_w=$w
  total_w=$((total_w + w))
done
echo "idle_secs: $IDLE_SECS"
echo "load_average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "shoal_profile: $PROFILE"
echo "idle_metrics: on (the default; /metrics counted and served)"
# RSS counts the pages of the binary that were touched; a debug build maps far more of them.
echo "idle_rss_anon_mib_max: $(awk -v r="$max_anon" 'BEGIN {printf "%.1f", r / 1024}')"
echo "idle_bytes_written_after_1min_total: $total_w"
echo "idle_rss_mib_max: $(awk -v r="$max_rss" 'BEGIN {printf "%.1f", r / 1024}')"
echo "idle_bytes_written_after_1min: $max_w"
