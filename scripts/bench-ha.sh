#!/usr/bin/env bash
# Replication cost on this machine: one broker group with 0, 1 and 2 replicas, ASYNC and SYNC
# replication, through one proxy, driven by rmq-bench. Builds the release binaries, then runs
# scripts/bench_ha.py (see its header). Writes bench-results/ha-*.md and .json.
#   scripts/bench-ha.sh                 # 15 s per run, about 4 min
#   scripts/bench-ha.sh --secs 30
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rocketmq-k8s/target}"
cargo build --locked --release -p broker --bin rmq-broker --bin rmq-bench >&2
exec python3 scripts/bench_ha.py --bin "$CARGO_TARGET_DIR/release" "$@"
