#!/usr/bin/env bash
# Send TPS and latency with TLS + authentication on vs off, in one run:
#   scripts/bench-security.sh                  # 2 rounds of 15 s per configuration (about 4 minutes)
#   scripts/bench-security.sh --secs 30 --rounds 3 --producers 64
# Builds the release binaries and runs scripts/bench_security.py (see its header for what is
# measured and how). Prints a table and writes it, with the raw numbers, under bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rocketmq-k8s/target}"
cargo build --locked --release -p broker --bin rmq-broker --bin rmq-bench >&2
exec python3 scripts/bench_security.py --bin "$CARGO_TARGET_DIR/release" "$@"
