# Shared helpers of the bench/ scripts (sourced, not run): build, netns rigs, pids, figures.
# shellcheck shell=bash
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PROFILE=${PROFILE:-debug}
SHOAL=${SHOAL:-$ROOT/target/$PROFILE/shoal}
HIL=${HIL:-$ROOT/target/$PROFILE/shoal-hil}
export SHOAL_BIN=$SHOAL

log() { echo "$(basename "$0"): $*" >&2; }

build() {
  if [[ ! -x $SHOAL || ! -x $HIL ]]; then
    local flag=""
    [[ $PROFILE == release ]] && flag="--release"
    log "building shoal and shoal-hil ($PROFILE)"
    cargo build $flag -p shoal -p shoal-hil >&2
  fi
}

# apt_need CMD PACKAGE: installs PACKAGE from Debian when CMD is missing.
apt_need() {
  command -v "$1" >/dev/null && return 0
  log "installing $2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >&2 || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >&2; }
}

# rig_up DIR NODES [CONFIG]: a fresh netns rig of NODES shoal nodes in DIR. File descriptors 3-9
# are closed for it, so that the rig's long-lived processes never hold a lock the script was
# started under (`flock /tmp/shoal-rig.lock bench/...` passes its lock down as fd 3).
rig_up() {
  local dir=$1 n=$2 cfg=${3:-}
  "$HIL" rig down --dir "$dir" >/dev/null 2>&1 || true
  local extra=()
  [[ -n $cfg ]] && extra=(--config "$cfg")
  "$HIL" rig up --nodes "$n" --dir "$dir" --shoal-bin "$SHOAL" "${extra[@]}" >&2 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
}

rig_down() { "$HIL" rig down --dir "$1" >/dev/null 2>&1 || true; }

# daemon_pid DIR HOST: pid of the shoal daemon of HOST (n1, n2, ...), empty when none.
daemon_pid() {
  local data="$1/$2/data" p exe
  for p in $(pgrep -f -- "--data-dir $data" || true); do
    exe=$(readlink "/proc/$p/exe" 2>/dev/null || true)
    [[ $exe == */shoal || $exe == */shoal-x86_64 || $exe == */shoal-aarch64 ]] && { echo "$p"; return; }
  done
}

# rss_kib PID: resident set size in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# anon_kib PID: anonymous resident memory in KiB (heap and stacks, without the mapped binary).
anon_kib() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# write_bytes PID: bytes the process caused to be written to storage.
write_bytes() { awk '/^write_bytes:/ {print $2}' "/proc/$1/io" 2>/dev/null || echo 0; }

# tree_rss_kib ROOTPID: RSS of a process and all its descendants.
tree_rss_kib() {
  local total=0 p
  for p in $1 $(descendants "$1"); do total=$((total + $(rss_kib "$p"))); done
  echo "$total"
}
# ns_rss_kib PID: RSS of every process in PID's pid namespace (a rig host: daemon, shims, containers).
ns_rss_kib() {
  local ns total=0 p
  ns=$(readlink "/proc/$1/ns/pid") || { echo 0; return; }
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/ns/pid" 2>/dev/null) == "$ns" ]] && total=$((total + $(rss_kib "${p#/proc/}")))
  done
  echo "$total"
}
descendants() {
  local c
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done
}

# percentile P FILE: the P-th percentile (0-100) of the numbers in FILE, one per line.
percentile() {
  sort -g "$2" | awk -v p="$1" '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} i=int((p/100)*NR+0.999999); if (i<1) i=1; if (i>NR) i=NR; print a[i]}'
}

# import_images DIR NODES: drops the test image tarballs into every node's import dir.
import_images() {
  local dir=$1 n=$2 i
  ls out/images/*.tar >/dev/null 2>&1 || scripts/images.sh >&2
  for i in $(seq 1 "$n"); do
    mkdir -p "$dir/n$i/data/images/import"
    cp out/images/*.tar "$dir/n$i/data/images/import/"
  done
}

# wrk_round NAME URL [HOST]: one wrk run from the rig's client host (THREADS, CONNECTIONS,
# DURATION; HOST as the Host header), after waiting up to 30 s for URL to answer 200; appends
# "rps p99_ms" to $work/NAME and logs the round ($round) with wrk's error counts, if any.
wrk_round() {
  local name=$1 url=$2 host=${3:-} out rps p99
  local hdr=()
  [[ -n $host ]] && hdr=(-H "Host: $host")
  for _ in $(seq 1 60); do
    [[ $("$HIL" rig exec client --dir "$rig" -- curl -sk -o /dev/null -w '%{http_code}' -m 1 "${hdr[@]}" "$url") == 200 ]] && break
    sleep 0.5
  done
  out=$("$HIL" rig exec client --dir "$rig" -- wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${hdr[@]}" "$url")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v *= 1000}; print v}' <<<"$out")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then log "$name: $(grep -E 'Non-2xx|Socket errors' <<<"$out")"; fi
  log "round ${round:-?}: $name ${rps:-0} req/s, p99 ${p99:-nan} ms"
  echo "${rps:-0} ${p99:-nan}" >>"$work/$name"
}

# median_col COLUMN FILE / min_col COLUMN FILE: the median (lower middle) or the minimum of a
# column of numbers.
median_col() { awk -v c="$1" '{print $c}' "$2" | sort -g | awk '{v[NR] = $1} END {print (NR ? v[int((NR + 1) / 2)] : "nan")}'; }
min_col() { awk -v c="$1" '{print $c}' "$2" | sort -g | awk 'NR == 1 {print; found = 1} END {if (!found) print "nan"}'; }

# ratio A B: A / B with three decimals, nan when B is 0 or not a number.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.3f\n", a / b; else print "nan" }'; }

# load_line WHEN: "load_average_WHEN: 1-minute load" (print one before and one after the rounds).
load_line() { echo "load_average_$1: $(cut -d' ' -f1 /proc/loadavg)"; }
