#!/usr/bin/env bash
# Our broker side by side with Apache RocketMQ 5.4.0 on this machine, in one run:
#   scripts/bench-compare.sh                       # every workload, 15 s per run (about 25 min)
#   scripts/bench-compare.sh --secs 30 --only async,rate
# Builds the release binaries, fetches Apache RocketMQ 5.4.0 from Maven Central
# (scripts/setup-apache.sh) and the Java remoting client (scripts/setup-clients.sh), then runs
# scripts/bench_compare.py (see its header for what runs and how it is measured). Prints a table
# and writes it, with the raw numbers as JSON, under bench-results/. Every process it starts is
# stopped at the end; data goes to a temporary folder that is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rocketmq-k8s/target}"
cache="${RMQ_CLIENT_CACHE:-$HOME/.cache/rocketmq-k8s}"
cargo build --locked --release -p broker --bin rmq-broker --bin rmq-bench >&2
scripts/setup-apache.sh >/dev/null
scripts/setup-clients.sh >/dev/null
scripts/setup-s3.sh >/dev/null
exec python3 scripts/bench_compare.py --bin "$CARGO_TARGET_DIR/release" \
  --remoting-lib "$cache/remoting-client-4.9.8/lib" "$@"
