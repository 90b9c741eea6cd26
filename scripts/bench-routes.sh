#!/usr/bin/env bash
# Route scale on loopback: one name server holding 12,500 topics over 20 store nodes, and a
# proxy answering QueryRoute and QueryAssignment for 2,000 clients that start at once.
#   scripts/bench-routes.sh                                  # about 1 minute
#   scripts/bench-routes.sh --nodes 50 --grpc-clients 5000 --duration 30
# Starts a release name server, one store node and a proxy, then runs rmq-bench-routes (its
# header says what is measured): the simulated nodes register the topics; the real store node
# answers the proxy's group lookups. Arguments go to rmq-bench-routes. Prints the figures, the
# name server's and proxy's RSS, and writes them under bench-results/routes-<time>.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rocketmq-k8s/target}"
cargo build --locked --release -p broker --bin rmq-broker --bin rmq-bench-routes >&2
target="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench-routes: nothing listens on $1; logs:" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
}

ns="127.0.0.1:$(port)"
"$target/rmq-broker" namesrv --listen "$ns" --http-listen "127.0.0.1:$(port)" >"$work/ns.log" 2>&1 &
pids+=($!)
namesrv=$!
wait_port "$ns"
store="127.0.0.1:$(port)"
"$target/rmq-broker" store --broker-name store-0 --listen "$store" --http-listen "127.0.0.1:$(port)" \
  --namesrv "$ns" --data-dir "$work/store" >"$work/store.log" 2>&1 &
pids+=($!)
wait_port "$store"
grpc="127.0.0.1:$(port)"
"$target/rmq-broker" proxy --grpc-listen "$grpc" --http-listen "127.0.0.1:$(port)" \
  --namesrv "$ns" --no-tls >"$work/proxy.log" 2>&1 &
pids+=($!)
proxy=$!
wait_port "$grpc"
ns_idle=$(rss_mib "$namesrv")
proxy_idle=$(rss_mib "$proxy")

"$target/rmq-bench-routes" --namesrv "$ns" --proxy "$grpc" --json "$work/routes.json" "$@" | tee "$work/routes.txt"
ns_after=$(rss_mib "$namesrv")
proxy_after=$(rss_mib "$proxy")
echo "name server RSS ${ns_idle} -> ${ns_after} MiB; proxy RSS ${proxy_idle} -> ${proxy_after} MiB"

mkdir -p bench-results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 - "$work/routes.json" "$ns_idle" "$ns_after" "$proxy_idle" "$proxy_after" \
  "bench-results/routes-$stamp.json" "bench-results/routes-$stamp.md" "$work/routes.txt" <<'PY'
import json, os, sys
src, ns0, ns1, px0, px1, out_json, out_md, txt = sys.argv[1:]
r = json.load(open(src))
r["rssMiB"] = {"namesrvIdle": float(ns0), "namesrv": float(ns1), "proxyIdle": float(px0), "proxy": float(px1)}
r["machine"] = {"cpus": os.cpu_count()}
json.dump(r, open(out_json, "w"), indent=2)
c = r["config"]
lines = [f"Route scale: {c['nodes']} store nodes x {c['topics']:,} topics of {c['queues']} queues on one name "
         f"server; {c['grpcClients']:,} clients at once on one proxy ({c['groups']:,} groups)", "", "```"]
lines += open(txt).read().strip().splitlines()
lines += [f"name server RSS {ns0} -> {ns1} MiB; proxy RSS {px0} -> {px1} MiB", "```"]
open(out_md, "w").write("\n".join(lines) + "\n")
print(f"written to {out_md} and {out_json}")
PY
