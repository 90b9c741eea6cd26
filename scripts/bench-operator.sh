#!/usr/bin/env bash
# Operator at scale on a real control plane (KWOK nodes): one RocketMQCluster of 100 store
# nodes next to 49 clusters of one node each, in one namespace.
#   scripts/bench-operator.sh                        # 100 store nodes, 50 clusters, ~8 minutes
#   E2E_STORE_NODES=200 E2E_CLUSTERS=20 scripts/bench-operator.sh
# Runs the whole e2e suite (e2e/run.sh) with its scale step enlarged; that step measures the
# time until every cluster is Ready, then 30 s of steady state: reconciles, Kubernetes API
# requests (the operator's own counter) and the leading operator's RSS. It fails, as the e2e
# step does, on status churn or a request rate above what the resyncs need. Prints the figures
# and writes them under bench-results/operator-<time>.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rocketmq-k8s/target}"
nodes="${E2E_STORE_NODES:-100}"
clusters="${E2E_CLUSTERS:-50}"
# Every store node claims a PersistentVolume; leave room for the suite's other clusters.
pvs="${E2E_PVS:-$((nodes + clusters + 60))}"
mkdir -p bench-results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=$(mktemp "${TMPDIR:-/tmp}/bench-operator.XXXXXX")
E2E_STORE_NODES="$nodes" E2E_CLUSTERS="$clusters" E2E_PVS="$pvs" e2e/run.sh 2>&1 | tee "$log" >&2
line=$(grep -m1 '^e2e-scale: ' "$log" | sed 's/^e2e-scale: //')
[ -n "$line" ] || { echo "bench-operator: no e2e-scale line in $log" >&2; exit 1; }
python3 - "$line" "bench-results/operator-$stamp.json" "bench-results/operator-$stamp.md" <<'PY'
import json, os, sys
r = json.loads(sys.argv.pop(1))
r["machine"] = {"cpus": os.cpu_count()}
json.dump(r, open(sys.argv[1], "w"), indent=2)
mib = lambda v: "n/a" if v is None else f"{v:.1f} MiB"
rows = [
    ("store nodes in the big cluster", r["store_nodes"]),
    ("clusters (all namespaces)", r["clusters"]),
    ("time until all are Ready", f"{r['ready_seconds']:.1f} s"),
    (f"reconciles in {r['steady_window_seconds']} s of steady state", f"{r['reconciles']:.0f}"),
    ("API requests per minute at steady state", f"{r['api_requests_per_minute']:.1f}"),
    ("operator RSS before / after / peak",
     f"{mib(r['operator_rss_mib_before'])} / {mib(r['operator_rss_mib'])} / {mib(r['operator_peak_rss_mib'])}"),
]
text = "| figure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
open(sys.argv[2], "w").write(text)
print(text)
PY
rm -f "$log"
