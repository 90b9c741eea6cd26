#!/usr/bin/env bash
# Replication cost on this machine: one broker group with 0, 1 and 2 replicas, ASYNC and SYNC
# replication, through one proxy, driven by rmq-bench; optionally the same four replicated
# configurations on Apache RocketMQ 5.4.0 in controller mode (scripts/apache-ha.sh) and Apache's
# failover time (kill -9 of the master, timed by scripts/ApacheHaWatch.java polling the
# controller). Builds the release binaries, then runs scripts/bench_ha.py (see its header).
# Writes bench-results/ha-*.md and .json. The Apache parts need java and javac (17) and fetch
# Apache's jars once through scripts/setup-apache.sh (Maven).
#   scripts/bench-ha.sh                                        # ours: 15 s per run, about 4 min
#   scripts/bench-ha.sh --secs 30
#   scripts/bench-ha.sh --apache --apache-failover-rounds 20   # full comparison, about 30 min:
#                                                              # + Apache's 4 configurations (about 9 min)
#                                                              # + 20 failovers (about 45 s each)
#   scripts/bench-ha.sh --apache-only --configs "1+2 SYNC"     # one Apache configuration
#   scripts/bench-ha.sh --apache-only --configs none --apache-failover-rounds 20   # failover only
# Other options: --warmup, --apache-warmup, --producers, --no-save (print only).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rocketmq-k8s/target}"
cargo build --locked --release -p broker --bin rmq-broker --bin rmq-bench >&2
exec python3 scripts/bench_ha.py --bin "$CARGO_TARGET_DIR/release" "$@"
