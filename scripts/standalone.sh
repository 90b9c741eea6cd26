#!/usr/bin/env bash
# Builds and runs the broker in standalone mode with embedded defaults: all data under
# ./data/standalone (override with RMQ_DATA_DIR), no other service needed. Ctrl-C stops it
# cleanly. Extra arguments go to `rmq-broker standalone` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
exec cargo run --release --locked -p broker --bin rmq-broker -- standalone "$@"
