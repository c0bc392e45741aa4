#!/bin/sh
# Time from a Service/endpoint change to the node's Service rules being live, with 1,000
# Services (3 endpoints each, NodePort): list from the replica, build the table, apply it with
# `nft -f -` in a scratch network namespace, plus the 50 ms debounce of the running proxy. The
# figure is an in-place update of the table, as the running proxy applies a change; the
# replace of the whole table (its first apply after start) is printed beside it.
# Needs root and nft. Prints `proxy_sync_ms_1000_services: N`.
set -eu
cd "$(dirname "$0")/.."
cargo test -p shoal --lib proxy::tests::root::bench_sync_1000_services -- --ignored --nocapture 2>/dev/null \
    | grep '^proxy_sync'
