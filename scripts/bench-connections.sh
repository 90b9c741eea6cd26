#!/usr/bin/env bash
# Connection scale on one proxy: 10,000 idle long-polling gRPC clients, each on its own
# connection, opened at once (and again, as a reconnect storm), next to 4 producers:
#   scripts/bench-connections.sh                   # 3 runs of 30 s, about 3 minutes
#   scripts/bench-connections.sh --clients 5000 --secs 60
# Builds the release binaries and runs scripts/bench_connections.py (see its header for what
# is measured and how). Prints a table and writes it, with the raw numbers, under bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rocketmq-k8s/target}"
cargo build --locked --release -p broker --bin rmq-broker --bin rmq-bench >&2
exec python3 scripts/bench_connections.py --bin "$CARGO_TARGET_DIR/release" "$@"
