#!/usr/bin/env python3
"""Replication cost: send TPS and latency of one broker group with 0, 1 and 2 replicas, ASYNC
and SYNC replication, through one proxy, driven by rmq-bench (gRPC). Run by scripts/bench-ha.sh.

Each configuration starts fresh: a controller, a name server, the group's store nodes (each its
own process and data folder, ASYNC_FLUSH) and a proxy; a warm-up run, then the measured run.
CPU and peak RSS are those of the store nodes plus the proxy. Results go to
bench-results/ha-<time>.md and .json. Failover times are measured by the failover test
(`cargo test -p broker --test ha_failover -- --nocapture` prints min/median/max over its kills).
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compare import Procs, free_port, log, rmq_bench, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class Group:
    """A controller, a name server, one group of `1 + replicas` store nodes and a proxy."""

    def __init__(self, cfg, replicas, replication):
        self.cfg, self.replicas, self.replication = cfg, replicas, replication
        self.name = f"1+{replicas} {replication}" if replicas else "no replicas"
        self.work = cfg.work / self.name.replace(" ", "-").replace("+", "p")
        self.work.mkdir(parents=True)
        self.procs = Procs(self.work)
        self.endpoint = f"127.0.0.1:{free_port()}"

    def start(self, topics):
        b = str(self.cfg.bin / "rmq-broker")
        http = lambda: f"127.0.0.1:{free_port()}"
        ctrl = f"127.0.0.1:{free_port()}"
        if self.replicas:
            p, lf = self.procs.start("controller", [
                b, "controller", "--id", "1", "--peer", f"1={ctrl}", "--listen", ctrl,
                "--data-dir", str(self.work / "controller"), "--node-timeout-ms", "3000"])
            wait_port(int(ctrl.split(":")[1]), 30, "controller", p, lf)
        namesrv = f"127.0.0.1:{free_port()}"
        p, lf = self.procs.start("namesrv", [b, "namesrv", "--listen", namesrv, "--http-listen", http()])
        wait_port(int(namesrv.split(":")[1]), 30, "name server", p, lf)
        self.stores = []
        for i in range(1, self.replicas + 2):
            listen = f"127.0.0.1:{free_port()}"
            # Without controllers the single node is the primary (id 0); with them every node
            # has its own id and registers as 0 while primary.
            argv = [b, "store", "--broker-name", "broker-a",
                    "--broker-id", str(i if self.replicas else 0),
                    "--listen", listen, "--http-listen", http(), "--namesrv", namesrv,
                    "--data-dir", str(self.work / f"store-{i}"), "--flush-policy", "ASYNC_FLUSH",
                    "--segment-size", str(self.cfg.segment_bytes)]
            if self.replicas:
                conf = self.work / f"store-{i}.yaml"
                conf.write_text(
                    f"ha:\n  listen: 127.0.0.1:{free_port()}\n  controllers: [{ctrl}]\n"
                    f"  replication: {self.replication}\n  allAckInSyncStateSet: true\n"
                    f"  minInSyncReplicas: 1\n  heartbeatEvery: 300\n")
                argv += ["--config", str(conf)]
            for t, q in topics:
                argv += ["--topic", f"{t}:{q}"]
            p, lf = self.procs.start(f"store-{i}", argv)
            wait_port(int(listen.split(":")[1]), 60, "store node", p, lf)
            self.stores.append(p)
        if self.replicas:
            # Until every replica is in the in-sync set, SYNC sends would measure a smaller group.
            deadline = time.time() + 60
            while True:
                try:
                    s = json.load(urllib.request.urlopen(f"http://{ctrl}/controller/state", timeout=2))
                    g = s["groups"].get("broker-a", {})
                    if len(g.get("inSync", [])) == self.replicas + 1:
                        break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise SystemExit(f"{self.name}: the group did not get {self.replicas + 1} in-sync nodes")
                time.sleep(0.2)
        self.proxy_p, lf = self.procs.start("proxy", [
            b, "proxy", "--grpc-listen", self.endpoint, "--http-listen", http(),
            "--namesrv", namesrv, "--no-tls"])
        wait_port(int(self.endpoint.split(":")[1]), 30, "proxy", self.proxy_p, lf)
        time.sleep(3)  # the primary's registration as id 0 reaches the name server

    def pids(self):
        return [p.pid for p in self.stores] + [self.proxy_p.pid]

    def stop(self):
        self.procs.stop_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path, required=True)
    ap.add_argument("--secs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--producers", type=int, default=32)
    cfg = ap.parse_args()
    cfg.segment_bytes = 1 << 30
    cfg.work = Path(tempfile.mkdtemp(prefix="rmq-ha-bench-"))
    started = time.time()
    rows = []
    try:
        for replicas, replication in [(0, "-"), (1, "ASYNC"), (1, "SYNC"), (2, "ASYNC"), (2, "SYNC")]:
            g = Group(cfg, replicas, replication)
            g.start([("Bench", 8), ("Warm", 8)])
            try:
                rmq_bench(cfg, g, "warm-up", topic="Warm", producers=cfg.producers, consumers=2, duration=cfg.warmup)
                r = rmq_bench(cfg, g, "run", topic="Bench", producers=cfg.producers, consumers=2, duration=cfg.secs)
                rows.append({"config": g.name, **r})
            finally:
                g.stop()
    finally:
        shutil.rmtree(cfg.work, ignore_errors=True)
    base = rows[0]["sendTps"] if rows and rows[0]["sendTps"] else 1
    lines = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M')}, {cfg.secs} s per run, {cfg.producers} producers, "
        f"2 consumers, 1 KiB, ASYNC_FLUSH, every node on this machine; whole run {(time.time() - started) / 60:.1f} min.",
        "",
        "| group | send msg/s | vs no replicas | send p99 ms | end-to-end p50 / p99 ms | consume msg/s | CPU s per M msgs (all nodes + proxy) | peak RSS MiB (all) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['sendTps']:.0f} | {r['sendTps'] / base:.2f} | {r['sendP99Ms']:.2f} | "
            f"{r['e2eP50Ms']:.2f} / {r['e2eP99Ms']:.2f} | {r['consumeTps']:.0f} | "
            f"{r.get('cpuSecsPerMillion', 0):.1f} | {r.get('peakRssMiB', 0)} |")
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"ha-{stamp}.md").write_text(text + "\n")
    (out / f"ha-{stamp}.json").write_text(json.dumps(rows, indent=2))
    log(f"written to bench-results/ha-{stamp}.md and .json")


if __name__ == "__main__":
    main()
