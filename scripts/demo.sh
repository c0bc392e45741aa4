#!/usr/bin/env bash
# Starts a local 3-node shoal cluster: three `shoal up` processes, each in its own network
# namespace on a shared bridge (the netns rig of hil-tests), with the test images imported,
# and prints how to reach it with kubectl. `./scripts/demo.sh down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DIR=${SHOAL_DEMO_DIR:-/tmp/shoal-demo}
NODES=${SHOAL_DEMO_NODES:-3}

if [ "$(id -u)" != 0 ]; then
  echo "the demo creates network namespaces and runs containers: run it as root" >&2
  exit 1
fi

target=$(cargo_target)
if [ "${1:-}" = down ]; then
  if [ -x "$target/debug/shoal-hil" ]; then
    "$target/debug/shoal-hil" rig down --dir "$DIR"
  fi
  echo "demo cluster stopped"
  exit 0
fi

ensure_packages "${BASE_PACKAGES[@]}"
command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }

echo "== build"
cargo build -p shoal -p shoal-hil
echo "== test images"
./scripts/images.sh

"$target/debug/shoal-hil" rig down --dir "$DIR" >/dev/null 2>&1 || true
echo "== starting $NODES nodes"
# Images go into every node's import dir before the nodes start.
for i in $(seq 1 "$NODES"); do
  mkdir -p "$DIR/n$i/data/images/import"
  cp out/images/*.tar "$DIR/n$i/data/images/import/"
done
"$target/debug/shoal-hil" rig up --nodes "$NODES" --dir "$DIR" --shoal-bin "$target/debug/shoal"

cat <<EOM

The cluster runs. Try:
  export KUBECONFIG=$DIR/kubeconfig
  kubectl get nodes
  kubectl apply -f ../shared/manifests/nginx_deployment_k8s.yaml
  kubectl get all -o wide
Node status:   $target/debug/shoal status --data-dir $DIR/n1/data
Stop it with:  ./scripts/demo.sh down
EOM
