#!/usr/bin/env bash
# Queue scale on one node: 8 queues vs 100,000 (12,500 topics x 8, 1,000 groups), memory,
# descriptors, clean restart and kill -9 recovery with 100,000 queues on disk:
#   scripts/bench-scale.sh                          # 30 s per run, about 6 minutes
#   scripts/bench-scale.sh --secs 60 --topics 25000 --consumers 128
#   scripts/bench-scale.sh --apache                 # then the same against Apache RocketMQ 5.4.0
#                                                   # (scripts/apache.sh; raises vm.max_map_count)
# Builds the release binaries and runs scripts/bench_scale.py (see its header for what is
# measured and how). Prints a table and writes it, with the raw numbers, under bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rocketmq-k8s/target}"
cargo build --locked --release -p broker --bin rmq-broker --bin rmq-bench >&2
exec python3 scripts/bench_scale.py --bin "$CARGO_TARGET_DIR/release" "$@"
