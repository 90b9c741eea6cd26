#!/usr/bin/env bash
# The e2e suite: builds (or takes from the cache) a real control plane (scripts/setup-k8s.sh),
# starts it on loopback (e2e/cluster.sh), and runs operator/tests/e2e.rs against it: helm
# install, invalid resources, the example cluster, a data plane started from the rendered
# config with the official Python client, scale out, drain-then-scale-in, ordered rollout,
# operator kill, API server restart, garbage collection. Always tears down; prints the component
# logs on failure.
#   E2E_KEEP=1 e2e/run.sh   # keep the work folder after success
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$SECONDS
bin=$(scripts/setup-k8s.sh)
scripts/setup-clients.sh >/dev/null
echo "e2e: control plane binaries ready in $((SECONDS - t0)) s"

# The binaries the test runs (the test profile cargo test uses; cached under CARGO_TARGET_DIR).
cargo build --locked -p broker --bin rmq-broker -p operator --bin rmq-operator

wd=$(mktemp -d "${TMPDIR:-/tmp}/rmq-e2e.XXXXXX")
ok=0
finish() {
  if [ "$ok" != 1 ]; then
    echo "e2e: FAILED; work folder kept in $wd" >&2
    if [ -f "$wd/kubeconfig" ]; then
      "$bin/kubectl" --kubeconfig "$wd/kubeconfig" get rmq,sts,deploy,pods,pvc,events -A -o wide >&2 2>&1 || true
    fi
    e2e/cluster.sh logs "$wd" >&2 || true
  fi
  e2e/cluster.sh down "$wd" || true
  if [ "$ok" = 1 ] && [ -z "${E2E_KEEP:-}" ]; then rm -rf "$wd"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM

t1=$SECONDS
kubeconfig=$(K8S_BIN="$bin" e2e/cluster.sh up "$wd")
echo "e2e: control plane up in $((SECONDS - t1)) s"

RMQ_E2E_KUBECONFIG="$kubeconfig" RMQ_E2E_K8S_BIN="$bin" RMQ_E2E_WORKDIR="$wd" \
  cargo test --locked -p operator --test e2e -- --nocapture
ok=1
echo "e2e: passed in $((SECONDS - t0)) s"
