#!/bin/bash
# A stand-in for the shoal CLI, used only by the harness's own tests (tests/fake_shoal.rs).
# Every node of a rig shares one store directory next to the hosts' dirs (RIG/fake-store), so it
# behaves like a cluster whose store never loses a write but also never notices a partition.
# Liveness is a heartbeat file each `up` touches; the leader is the first live member by name.
set -u
sub=${1:-}; shift || true
if [ "$sub" = kv ]; then sub="kv-${1:-}"; shift || true; fi
dd="" name="" adv="" join=""
pos=()
while [ $# -gt 0 ]; do
  case $1 in
    --data-dir) dd=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --advertise) adv=$2; shift 2 ;;
    --join) join=$2; shift 2 ;;
    --token|--config|--server) shift 2 ;;
    --json) shift ;;
    *) pos+=("$1"); shift ;;
  esac
done
[ -n "$dd" ] || { echo "--data-dir is required" >&2; exit 2; }
store=$(dirname "$(dirname "$dd")")/fake-store
mkdir -p "$store/kv" "$store/members"
alive() { [ -n "$(find "$store/members/$1.beat" -newermt '-1 second' 2>/dev/null)" ]; }
me() { cat "$dd/name" 2>/dev/null; }
case $sub in
  up)
    mkdir -p "$dd"; echo "$name" > "$dd/name"
    if [ -z "$join" ] && [ ! -f "$store/token" ]; then echo "fake-token" > "$store/token"; echo "join token: fake-token"; fi
    echo "$adv" > "$store/members/$name.addr"
    trap 'exit 0' TERM
    while :; do touch "$store/members/$name.beat"; sleep 0.2; done ;;
  token) cat "$store/token" ;;
  kubeconfig) printf 'apiVersion: v1\nkind: Config\nclusters: []\n' ;;
  status)
    self=$(me); alive "$self" || { echo "shoal is not running" >&2; exit 1; }
    leader=null; voters=0; out=""
    for f in $(ls "$store"/members/*.addr | sort); do
      n=$(basename "$f" .addr)
      if alive "$n"; then a=true; else a=false; fi
      role=learner
      if [ $a = true ] && [ $voters -lt 3 ]; then role=voter; voters=$((voters + 1)); fi
      [ $a = true ] && [ "$leader" = null ] && leader="\"$n\""
      out="$out${out:+,}{\"name\":\"$n\",\"addr\":\"$(cat "$f"):7443\",\"role\":\"$role\",\"alive\":$a}"
    done
    echo "{\"name\":\"$self\",\"leader\":$leader,\"term\":1,\"applied_index\":0,\"members\":[$out]}" ;;
  kv-put)
    alive "$(me)" || exit 3
    f="$store/kv/$(echo "${pos[0]}" | tr / _)"
    printf '%s' "${pos[1]}" > "$f.$$" && mv "$f.$$" "$f" ;;
  kv-get)
    alive "$(me)" || exit 1
    f="$store/kv/$(echo "${pos[0]}" | tr / _)"
    if [ -f "$f" ]; then cat "$f"; echo; fi ;;
  *) echo "unknown command $sub" >&2; exit 2 ;;
esac
