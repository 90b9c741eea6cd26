#!/usr/bin/env python3
"""Connection scale on one proxy: N gRPC clients, each on its own TCP connection, holding
long-polling receives, while a few producers and consumers move messages.

A name server, one store node and one `rmq-broker proxy` (release builds, loopback, ASYNC_FLUSH),
then `rmq-bench`:

1. baseline: 4 producers and 2 consumers on 8 connections, no idle clients; the proxy's RSS;
2. N idle clients: `--connections N+8 --idle-consumers N`, every connection opened at once (a
   reconnect storm); time to open them, the proxy's RSS with N held receives (memory per
   connection), the send rate and latency of the same 4 producers meanwhile, receive errors;
3. the storm again: a second rmq-bench run straight after the first (every client reconnects
   at once to a proxy that just dropped N connections).

Prints a table and writes it, with the raw numbers, under bench-results/.
"""
import argparse
import datetime
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_compare import free_port, log, wait_port  # noqa: E402




def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))




def rss(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, type=pathlib.Path, help="folder with rmq-broker and rmq-bench")
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--secs", type=int, default=30)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench-results")
    cfg = ap.parse_args()
    raise_nofile()
    b = str(cfg.bin / "rmq-broker")
    procs = []
    res = {"clients": cfg.clients, "secs": cfg.secs}
    with tempfile.TemporaryDirectory(prefix="rmq-bench-conn-") as tmp:
        work = pathlib.Path(tmp)

        def start(name, argv):
            lf = work / f"{name}.log"
            p = subprocess.Popen(argv, stdout=open(lf, "w"), stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, preexec_fn=raise_nofile)
            procs.append(p)
            return p, lf

        try:
            ns_port, store_port, grpc_port = free_port(), free_port(), free_port()
            store_http, proxy_http = free_port(), free_port()
            p, lf = start("namesrv", [b, "namesrv", "--listen", f"127.0.0.1:{ns_port}",
                                      "--http-listen", f"127.0.0.1:{free_port()}"])
            wait_port(ns_port, 60, "name server", p, lf)
            p, lf = start("store", [b, "store", "--broker-name", "broker-a", "--broker-id", "0",
                                    "--listen", f"127.0.0.1:{store_port}", "--http-listen", f"127.0.0.1:{store_http}",
                                    "--namesrv", f"127.0.0.1:{ns_port}", "--data-dir", str(work / "store"),
                                    "--flush-policy", "ASYNC_FLUSH", "--topic", "BenchTopic:8", "--topic", "IdleTopic:8"])
            wait_port(store_port, 60, "store node", p, lf)
            proxy, lf = start("proxy", [b, "proxy", "--grpc-listen", f"127.0.0.1:{grpc_port}",
                                        "--http-listen", f"127.0.0.1:{proxy_http}",
                                        "--namesrv", f"127.0.0.1:{ns_port}", "--no-tls"])
            wait_port(grpc_port, 60, "proxy", proxy, lf)
            time.sleep(3)
            res["proxyIdleRssMiB"] = rss(proxy.pid)

            def bench(label, idle):
                out = work / f"{label}.json"
                argv = [str(cfg.bin / "rmq-bench"), "--endpoint", f"127.0.0.1:{grpc_port}",
                        "--producers", "4", "--consumers", "2", "--duration", str(cfg.secs),
                        "--connections", str(idle + 8), "--idle-consumers", str(idle),
                        "--long-polling-ms", "20000", "--broker-pid", str(proxy.pid), "--json", str(out)]
                log(f"{label}: {' '.join(argv[1:])}")
                bp = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      preexec_fn=raise_nofile)
                # The proxy's RSS once the idle receives are held (middle of the run).
                time.sleep(min(cfg.secs / 2, 20))
                mid = rss(proxy.pid)
                stdout, stderr = bp.communicate(timeout=cfg.secs + 300)
                log(stdout)
                if bp.returncode != 0:
                    raise SystemExit(f"rmq-bench failed ({label}):\n{stdout}\n{stderr}")
                r = json.loads(out.read_text())
                r["midRunProxyRssMiB"] = mid
                return r

            res["baseline"] = bench("baseline", 0)
            res["idle"] = bench("idle", cfg.clients)
            res["storm"] = bench("storm", cfg.clients)
            res["proxyAfterRssMiB"] = rss(proxy.pid)
            res["proxyAlive"] = proxy.poll() is None
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
    base, idle, storm = res["baseline"], res["idle"], res["storm"]
    per_conn = (idle["midRunProxyRssMiB"] - base["midRunProxyRssMiB"]) * 1024 / cfg.clients
    lines = [
        f"Connections on one proxy: {cfg.clients:,} idle long-polling clients, each on its own connection, "
        f"plus 4 producers and 2 consumers ({cfg.secs} s per run, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        "| run | connections opened at once | open time s | send msg/s | send p99 ms | idle receive errors | proxy RSS MiB mid-run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("no idle clients", base), (f"{cfg.clients:,} idle clients", idle),
                    (f"{cfg.clients:,} idle clients, reconnect storm", storm)):
        lines.append(f"| {name} | {r['connections']:,} | {r['connectSecs']:.2f} | {r['send']['perSec']:,.0f} | "
                     f"{r['send']['p99Ms']:.2f} | {r['idleErrors']} | {r['midRunProxyRssMiB']:.0f} |")
    lines += [
        "",
        f"- **Proxy memory per held connection:** {per_conn:.1f} KiB "
        f"(RSS {base['midRunProxyRssMiB']:.0f} -> {idle['midRunProxyRssMiB']:.0f} MiB)",
        f"- **Proxy after the runs:** {'alive' if res['proxyAlive'] else 'DEAD'}, RSS {res['proxyAfterRssMiB']:.0f} MiB",
    ]
    table = "\n".join(lines)
    print(table)
    cfg.out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (cfg.out / f"connections-{stamp}.md").write_text(table + "\n")
    (cfg.out / f"connections-{stamp}.json").write_text(json.dumps(res, indent=1))
    log(f"written to {cfg.out}/connections-{stamp}.md and .json")


if __name__ == "__main__":
    main()
