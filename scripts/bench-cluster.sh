#!/usr/bin/env bash
# Cluster-mode benchmark on loopback: one name server, two store nodes, one proxy.
#  1. rmq-bench (gRPC) through the proxy to both store nodes.
#  2. A Java rocketmq-client 4.9.8 load driver (tests/clients/RemotingClient.java `bench`; Apache's
#     own rocketmq-example benchmark is not on Maven Central) against the store nodes directly.
# Prints throughput, latency percentiles, and each process's RSS and CPU seconds per million
# messages. Usage: scripts/bench-cluster.sh [SECONDS] (default 15). Needs release binaries
# (cargo build --release -p broker) and scripts/setup-clients.sh. Every process it starts is
# stopped on exit; data goes to a temporary folder that is removed.
set -euo pipefail
duration="${1:-15}"
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}/release"
cache="${RMQ_CLIENT_CACHE:-$HOME/.cache/rocketmq-k8s}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mib() { awk '/^VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }

ns="127.0.0.1:$(port)"
"$target/rmq-broker" namesrv --listen "$ns" --http-listen "127.0.0.1:$(port)" >"$work/ns.log" 2>&1 &
pids+=($!)
stores=()
for b in a b; do
  "$target/rmq-broker" store --broker-name "broker-$b" --listen "127.0.0.1:$(port)" \
    --http-listen "127.0.0.1:$(port)" --namesrv "$ns" --data-dir "$work/$b" \
    --topic BenchTopic:8 --topic BenchRemoting:8 >"$work/store-$b.log" 2>&1 &
  pids+=($!)
  stores+=($!)
done
grpc="127.0.0.1:$(port)"
"$target/rmq-broker" proxy --grpc-listen "$grpc" --http-listen "127.0.0.1:$(port)" \
  --namesrv "$ns" --no-tls >"$work/proxy.log" 2>&1 &
pids+=($!)
proxy=$!
sleep 2

report() { # label pid ticks_before messages
  local ticks=$(( $(cpu_ticks "$2") - $3 ))
  local hz; hz=$(getconf CLK_TCK)
  python3 -c "print(f'  {\"$1\":10} RSS {$(rss_mib "$2")} MiB, CPU {$ticks/$hz:.1f} s, {($ticks/$hz)/max($4,1)*1e6:.1f} CPU s per million messages')"
}

echo "== rmq-bench through the proxy to 2 store nodes: 16 producers, 2 consumers, ${duration} s, 1 KiB"
before=("$(cpu_ticks "$proxy")" "$(cpu_ticks "${stores[0]}")" "$(cpu_ticks "${stores[1]}")")
"$target/rmq-bench" --endpoint "$grpc" --topic BenchTopic --queues 8 --producers 16 --consumers 2 \
  --duration "$duration" | tee "$work/grpc.txt"
sent=$(awk '/^send:/ {print $2}' "$work/grpc.txt" | head -1)
sent=${sent:-0}
report proxy "$proxy" "${before[0]}" "$sent"
report broker-a "${stores[0]}" "${before[1]}" "$sent"
report broker-b "${stores[1]}" "${before[2]}" "$sent"

echo "== Java rocketmq-client 4.9.8 DefaultMQProducer, 32 threads sending synchronously to the store nodes, ${duration} s, 1 KiB"
classes="$work/classes"
mkdir -p "$classes"
javac -d "$classes" -cp "$cache/remoting-client-4.9.8/lib/*" "$root/broker/tests/clients/RemotingClient.java"
before=("$(cpu_ticks "${stores[0]}")" "$(cpu_ticks "${stores[1]}")")
java -Duser.home="$work" -cp "$classes:$cache/remoting-client-4.9.8/lib/*" RemotingClient "$ns" bench \
  BenchRemoting BenchRemotingGroup 32 "$duration" 1024 | tee "$work/remoting.json"
sent=$(python3 -c "import json,sys; print(json.load(open('$work/remoting.json'))['sent'])")
report broker-a "${stores[0]}" "${before[0]}" "$sent"
report broker-b "${stores[1]}" "${before[1]}" "$sent"
