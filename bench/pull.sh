#!/usr/bin/env bash
# Pull and unpack the nginx test image from a local registry, cold (empty store) and warm
# (everything present: only the manifest is fetched).
#
#   bench/pull.sh                 # prints pull_cold_ms: N and pull_warm_ms: N
#   RUNS=5 bench/pull.sh          # best of 5 for each
#   SHOAL=target/release/shoal bench/pull.sh   # measure `shoal image pull` instead of the example
#
# Needs Debian's docker-registry and skopeo (apt-get install -y docker-registry skopeo) and the
# test images (scripts/images.sh, run when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-3}
PROFILE=${PROFILE:-release}

for tool in docker-registry skopeo; do
  command -v "$tool" >/dev/null || { echo "pull.sh: $tool is missing (apt-get install -y docker-registry skopeo)" >&2; exit 1; }
done
[[ -f out/images/nginx_latest.tar ]] || scripts/images.sh >&2

work=$(mktemp -d)
registry_pid=""
cleanup() {
  if [[ -n $registry_pid ]]; then kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: $addr
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
skopeo copy --quiet --all --dest-tls-verify=false oci-archive:out/images/nginx_latest.tar \
  "docker://$addr/library/nginx:latest" >&2

# `nginx` resolves to docker.io/library/nginx:latest and goes to the local mirror.
cat >"$work/registries.toml" <<EOF
version = 1
[registry."docker.io"]
mirrors = ["$addr"]
[registry."$addr"]
insecure = true
EOF

if [[ -n ${SHOAL:-} ]]; then
  pull() { "$SHOAL" image --data-dir "$1" pull --registries "$work/registries.toml" nginx >/dev/null; }
else
  flag=()
  [[ $PROFILE == release ]] && flag=(--release)
  cargo build -q "${flag[@]}" -p shoal-images --example pull >&2
  bin=target/$PROFILE/examples/pull
  pull() { "$bin" "$1" nginx "$work/registries.toml" >/dev/null; }
fi

now_ms() { echo $(($(date +%s%N) / 1000000)); }

best_cold=""
best_warm=""
for run in $(seq 1 "$RUNS"); do
  data=$work/data-$run
  t0=$(now_ms)
  pull "$data"
  t1=$(now_ms)
  pull "$data"
  t2=$(now_ms)
  cold=$((t1 - t0))
  warm=$((t2 - t1))
  [[ -z $best_cold || $cold -lt $best_cold ]] && best_cold=$cold
  [[ -z $best_warm || $warm -lt $best_warm ]] && best_warm=$warm
  rm -rf "$data"
done
echo "image: nginx ($(du -h out/images/nginx_latest.tar | cut -f1) archive, all platforms), runs: $RUNS, best of each"
echo "pull_cold_ms: $best_cold"
echo "pull_warm_ms: $best_warm"
