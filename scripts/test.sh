#!/usr/bin/env bash
# The whole test suite, exactly what CI runs: formatting, lints (warnings are errors) and every
# test (unit, property, black-box, SIGKILL crash and corruption tests). Exits non-zero on any
# failure.
#
#   scripts/test.sh                         # CI mode: 50 SIGKILLs under SYNC_FLUSH, 20 under ASYNC
#   RMQ_CRASH_KILLS=500 scripts/test.sh     # long mode: 500 SIGKILLs per flush policy
#   RMQ_TEST_SEED=N scripts/test.sh         # replay the random choices of a failed run
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/setup-clients.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
target_dir="${CARGO_TARGET_DIR:-target}"
rm -rf "$target_dir/tmp/compat"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"

echo "== client compatibility matrix (from what the client tests recorded)"
python3 scripts/compat-matrix.py "$target_dir/tmp/compat" --check

# One closing line for the whole run (cargo prints one per test binary, the last being doc tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
