#!/usr/bin/env python3
"""Side by side with Apache RocketMQ 5.4.0 on this machine, in one run.

Started by scripts/bench-compare.sh, which builds and fetches what this needs. Three systems:

  apache         Apache RocketMQ 5.4.0: name server + broker and proxy in one JVM (proxy local
                 mode), started by scripts/apache.sh
  ours           rmq-broker standalone (one process)
  ours-cluster   rmq-broker namesrv + store + proxy (compute and storage separated)

The same load generators drive all of them: rmq-bench over gRPC (each producer sends
synchronously, one message per call; consumers receive up to 32 and ack them in one call), and
a Java rocketmq-client 4.9.8 DefaultMQProducer driver over remoting (Apache's own
rocketmq-example benchmark is not on Maven Central). Each system gets a warm-up run after it
starts. Broker memory and CPU are those of the broker processes (Apache: the broker+proxy JVM;
ours-cluster: store node + proxy); name servers are left out on both sides.

Writes <out>/compare-<time>.json and .md and prints the table.
"""

import argparse
import datetime
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
KIB = 1024


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def free_port():
    """A loopback port below the ephemeral range (see broker/tests/common/ports.rs)."""
    lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    lo, hi = (10000, lo) if lo >= 12000 else (hi + 1, 65536)
    for port in random.sample(range(lo, hi - 3), 500):
        ok = True
        for p in (port, port + 1, port + 2):  # some callers need neighbours
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return port
    raise SystemExit("no free loopback port")


def wait_port(port, secs, what, proc=None, logfile=None):
    deadline = time.time() + secs
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    tail = ""
    if logfile and os.path.exists(logfile):
        tail = "".join(open(logfile, errors="replace").readlines()[-30:])
    raise SystemExit(f"{what} did not listen on {port} within {secs} s\n{tail}")


def proc_stats(pid):
    """(RSS KiB, anonymous RSS KiB, CPU seconds) of a process, or None once it is gone."""
    try:
        status = open(f"/proc/{pid}/status").read()
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    field = lambda n: int(re.search(rf"^{n}:\s+(\d+)", status, re.M).group(1))
    rest = stat.rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return field("VmRSS"), field("RssAnon"), (int(rest[11]) + int(rest[12])) / hz


class Watch:
    """Peak summed RSS and CPU seconds of some processes while a load runs."""

    def __init__(self, pids):
        self.pids = pids
        self.peak = (0, 0)
        self.stop = threading.Event()
        self.cpu0 = self.cpu()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def cpu(self):
        return sum(s[2] for s in map(proc_stats, self.pids) if s)

    def run(self):
        while not self.stop.is_set():
            stats = [s for s in map(proc_stats, self.pids) if s]
            rss, anon = sum(s[0] for s in stats), sum(s[1] for s in stats)
            self.peak = (max(self.peak[0], rss), max(self.peak[1], anon))
            self.stop.wait(0.1)

    def done(self):
        self.stop.set()
        self.t.join()
        return {
            "peakRssMiB": self.peak[0] // 1024,
            "peakAnonMiB": self.peak[1] // 1024,
            "cpuSecs": self.cpu() - self.cpu0,
        }


class Procs:
    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, name, argv, env=None):
        logfile = self.work / f"{name}.log"
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=open(logfile, "ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.procs.append(p)
        return p, logfile

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


class Apache:
    name = "apache"
    remoting = True

    def __init__(self, cfg, work, flush):
        self.cfg, self.work, self.flush = cfg, work / f"apache-{flush}", flush
        self.work.mkdir(parents=True)
        base = free_port()
        self.namesrv_port = free_port()
        self.ports = {
            "APACHE_NAMESRV_PORT": str(self.namesrv_port),
            "APACHE_REMOTING_PORT": str(free_port()),
            "APACHE_GRPC_PORT": str(free_port()),
            # The broker also takes listenPort-2 (fast port) and +1 (HA).
            "APACHE_BROKER_PORT": str(base + 2),
            "APACHE_FLUSH": flush,
            "APACHE_SEGMENT_BYTES": str(cfg.segment_bytes),
        }
        self.endpoint = f"127.0.0.1:{self.ports['APACHE_GRPC_PORT']}"
        self.namesrv = f"127.0.0.1:{self.namesrv_port}"

    def sh(self, *args):
        subprocess.run(
            ["bash", str(ROOT / "scripts/apache.sh"), *args],
            check=True,
            env={**os.environ, **self.ports},
            stdout=sys.stderr,
        )

    def start(self, topics):
        log(f"starting Apache RocketMQ 5.4.0 ({self.flush})")
        self.sh("start", str(self.work))
        self.sh("topics", str(self.work), *[f"{t}:{q}" for t, q in topics])

    def pids(self):
        return [int((self.work / "broker.pid").read_text())]

    def stop(self):
        self.sh("stop", str(self.work))


class Ours:
    name = "ours"
    remoting = False

    def __init__(self, cfg, work, flush, tier_yaml=None, env=None, segment_bytes=None):
        self.cfg, self.flush = cfg, flush
        self.segment_bytes = segment_bytes or cfg.segment_bytes
        self.work = work / f"ours-{flush}-{random.randrange(1 << 30)}"
        self.work.mkdir(parents=True)
        self.procs = Procs(self.work)
        self.port = free_port()
        self.http = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.tier_yaml, self.env = tier_yaml, env

    def start(self, topics):
        log(f"starting rmq-broker standalone ({self.flush})")
        argv = [
            str(self.cfg.bin / "rmq-broker"), "standalone",
            "--data-dir", str(self.work / "data"),
            "--grpc-listen", self.endpoint,
            "--http-listen", f"127.0.0.1:{self.http}",
            "--no-tls",
            "--flush-policy", self.flush,
            "--segment-size", str(self.segment_bytes),
        ]
        if self.tier_yaml:
            path = self.work / "broker.yaml"
            path.write_text(self.tier_yaml)
            argv += ["--config", str(path)]
        for t, q in topics:
            argv += ["--topic", f"{t}:{q}"]
        self.p, logfile = self.procs.start("standalone", argv, self.env)
        wait_port(self.port, 60, "rmq-broker standalone", self.p, logfile)

    def pids(self):
        return [self.p.pid]

    def metric(self, name):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics").read().decode()
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def stop(self):
        self.procs.stop_all()


class OursCluster:
    name = "ours-cluster"
    remoting = True

    def __init__(self, cfg, work, flush):
        self.cfg, self.flush = cfg, flush
        self.work = work / f"cluster-{flush}"
        self.work.mkdir(parents=True)
        self.procs = Procs(self.work)
        self.namesrv = f"127.0.0.1:{free_port()}"
        self.store = f"127.0.0.1:{free_port()}"
        self.endpoint = f"127.0.0.1:{free_port()}"

    def start(self, topics):
        log(f"starting rmq-broker namesrv + store + proxy ({self.flush})")
        b = str(self.cfg.bin / "rmq-broker")
        http = lambda: f"127.0.0.1:{free_port()}"
        p, lf = self.procs.start(
            "namesrv", [b, "namesrv", "--listen", self.namesrv, "--http-listen", http()]
        )
        wait_port(int(self.namesrv.split(":")[1]), 30, "name server", p, lf)
        argv = [
            b, "store", "--broker-name", "broker-a",
            "--listen", self.store, "--http-listen", http(),
            "--namesrv", self.namesrv, "--data-dir", str(self.work / "store"),
            "--flush-policy", self.flush, "--segment-size", str(self.cfg.segment_bytes),
        ]
        for t, q in topics:
            argv += ["--topic", f"{t}:{q}"]
        self.store_p, lf = self.procs.start("store", argv)
        wait_port(int(self.store.split(":")[1]), 60, "store node", self.store_p, lf)
        self.proxy_p, lf = self.procs.start(
            "proxy",
            [b, "proxy", "--grpc-listen", self.endpoint, "--http-listen", http(),
             "--namesrv", self.namesrv, "--no-tls"],
        )
        wait_port(int(self.endpoint.split(":")[1]), 30, "proxy", self.proxy_p, lf)
        time.sleep(2)  # the store node's first registration reaches the name server

    def pids(self):
        return [self.store_p.pid, self.proxy_p.pid]

    def stop(self):
        self.procs.stop_all()


def rmq_bench(cfg, system, label, **kw):
    out = cfg.work / f"{system.name}-{label}-{random.randrange(1 << 30)}.json"
    argv = [
        str(cfg.bin / "rmq-bench"), "--endpoint", system.endpoint,
        "--json", str(out), "--group", f"G-{label}",
    ]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    for pid in system.pids():
        argv += ["--broker-pid", str(pid)]
    log(f"{system.name}: rmq-bench {label}: {' '.join(argv[3:])}")
    r = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=kw.get("duration", 20) + 120)
    print(r.stdout, file=sys.stderr)
    if r.returncode != 0:
        raise SystemExit(f"rmq-bench failed against {system.name}")
    j = json.loads(out.read_text())
    if j.get("firstError"):
        log(f"WARNING: {system.name} {label}: {j['sendErrors']} send and {j['receiveErrors']} receive errors, first: {j['firstError']}")
    return {
        "receiveErrors": j["receiveErrors"],
        "sendTps": j["send"]["perSec"],
        "sendP99Ms": j["send"]["p99Ms"],
        "sendErrors": j["sendErrors"],
        "e2eP50Ms": j["endToEnd"]["p50Ms"],
        "e2eP99Ms": j["endToEnd"]["p99Ms"],
        "e2eP999Ms": j["endToEnd"]["p999Ms"],
        "consumeTps": j["endToEnd"]["perSec"],
        "received": j["endToEnd"]["count"],
        "sent": j["send"]["count"],
        "size": j["size"],
        **{k: v for k, v in (j["broker"] or {}).items()},
    }


def remoting_bench(cfg, system, threads, secs, size):
    classes = cfg.work / "classes"
    cp = f"{classes}:{cfg.remoting_lib}/*"
    watch = Watch(system.pids())
    log(f"{system.name}: Java remoting driver, {threads} threads, {secs} s, {size} B")
    r = subprocess.run(
        ["java", f"-Duser.home={cfg.work}", "-cp", cp, "RemotingClient", system.namesrv,
         "bench", "BenchRemoting", "BenchRemotingGroup", str(threads), str(secs), str(size)],
        stdout=subprocess.PIPE, text=True, timeout=secs + 120,
    )
    stats = watch.done()
    print(r.stdout, file=sys.stderr)
    if r.returncode != 0:
        raise SystemExit(f"the remoting driver failed against {system.name}")
    j = json.loads(r.stdout.strip().splitlines()[-1])
    sent = j["sent"]
    return {
        "sendTps": j.get("tps", sent / secs),
        "sendP50Ms": j.get("p50_ms"),
        "sendP99Ms": j.get("p99_ms"),
        "sendErrors": j.get("errors"),
        "sent": sent,
        "size": size,
        **stats,
        "cpuSecsPerMillion": stats["cpuSecs"] / max(sent, 1) * 1e6,
    }


def raw_disk_mb_s(folder, mb=1024):
    """Sequential write of `mb` MiB in 1 MiB writes with an fdatasync every 64 MiB (a log
    made durable as it goes), in the folder the brokers used; the best of three runs (the
    first touch of fresh memory in a VM is slow)."""
    path = folder / "raw-disk-test"
    block = os.urandom(1 << 20)
    best = 0.0
    for _ in range(3):
        t = time.time()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        for i in range(mb):
            os.write(fd, block)
            if (i + 1) % 64 == 0:
                os.fdatasync(fd)
        os.fsync(fd)
        os.close(fd)
        best = max(best, mb * 1.048576 / (time.time() - t))
        path.unlink()
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, type=pathlib.Path, help="folder with rmq-broker and rmq-bench")
    ap.add_argument("--remoting-lib", required=True, help="rocketmq-client 4.9.8 jars")
    ap.add_argument("--secs", type=int, default=15, help="seconds per run")
    ap.add_argument("--producers", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=20,
                    help="seconds of load each system gets after it starts, before any measured run (JIT, caches)")
    ap.add_argument("--segment-bytes", type=int, default=1 << 30)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench-results")
    ap.add_argument("--only", default="", help="comma-separated workload keys to run (default all)")
    cfg = ap.parse_args()
    cfg.work = pathlib.Path(tempfile.mkdtemp(prefix="rmq-compare-"))
    cfg.out.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, cfg.only.split(",")))
    want = lambda k: not only or k in only
    subprocess.run(
        ["javac", "-d", str(cfg.work / "classes"), "-cp", f"{cfg.remoting_lib}/*",
         str(ROOT / "broker/tests/clients/RemotingClient.java")],
        check=True, stderr=subprocess.DEVNULL,
    )
    secs, P = cfg.secs, cfg.producers
    multi = [(f"Multi-{i}", 8) for i in range(64)]
    topics = [("Warm", 8), ("Bench", 8), ("Bench16K", 8), ("BenchRate", 8), ("BenchSendOnly", 8), ("BenchCeiling", 8), ("BenchRemoting", 8), *multi]
    rows = []
    started = time.time()

    partial = cfg.out / "compare-partial.json"

    def row(key, workload, system, r):
        rows.append({"key": key, "workload": workload, "system": system.name, **r})
        partial.write_text(json.dumps(rows, indent=2))

    apache_max = None
    try:
        async_keys = {"async", "sendonly", "ceiling", "topics64", "16k", "rate", "remoting"}
        for flush in ("ASYNC_FLUSH", "SYNC_FLUSH"):
            if not any(map(want, async_keys if flush == "ASYNC_FLUSH" else {"sync"})):
                continue
            for make in (Apache, Ours, OursCluster):
                s = make(cfg, cfg.work, flush)
                s.start(topics)
                try:
                    rmq_bench(cfg, s, "warm-up", topic="Warm", producers=P, consumers=2, duration=cfg.warmup)
                    if flush == "SYNC_FLUSH":
                        if want("sync"):
                            r = rmq_bench(cfg, s, "sync", topic="Bench", producers=P, consumers=2, duration=secs)
                            row("sync", "1 KiB, SYNC_FLUSH, 1 topic x 8 queues", s, r)
                        continue
                    if want("async"):
                        r = rmq_bench(cfg, s, "async", topic="Bench", producers=P, consumers=2, duration=secs)
                        row("async", "1 KiB, ASYNC_FLUSH, 1 topic x 8 queues", s, r)
                        if s.name == "apache":
                            apache_max = r["sendTps"]
                    if want("sendonly"):
                        r = rmq_bench(cfg, s, "sendonly", topic="BenchSendOnly", producers=P, consumers=0, duration=secs)
                        row("sendonly", "1 KiB, ASYNC_FLUSH, 1 topic x 8 queues, no consumers", s, r)
                    if want("ceiling"):
                        r = rmq_bench(cfg, s, "ceiling", topic="BenchCeiling", size=64 * KIB, batch=8,
                                      producers=8, consumers=0, duration=secs)
                        row("ceiling", "64 KiB in batches of 8, ASYNC_FLUSH, 8 producers, no consumers", s, r)
                    if want("topics64"):
                        r = rmq_bench(cfg, s, "64topics", topic="Multi", topics=64, producers=P, consumers=64, duration=secs)
                        row("topics64", "1 KiB, ASYNC_FLUSH, 64 topics x 8 queues", s, r)
                    if want("16k"):
                        r = rmq_bench(cfg, s, "16k", topic="Bench16K", size=16 * KIB, producers=P, consumers=2, duration=secs)
                        row("16k", "16 KiB, ASYNC_FLUSH, 1 topic x 8 queues", s, r)
                    if want("rate") and apache_max:
                        rate = int(apache_max * 0.5)
                        r = rmq_bench(cfg, s, "rate", topic="BenchRate", producers=P, consumers=2, duration=secs, rate=rate)
                        row("rate", f"1 KiB, ASYNC_FLUSH, fixed {rate} msg/s (half of Apache's max)", s, r)
                    if want("remoting") and s.remoting:
                        r = remoting_bench(cfg, s, 32, secs, 1 * KIB)
                        row("remoting", "1 KiB, ASYNC_FLUSH, Java 4.9.8 remoting producer, 32 threads", s, r)
                finally:
                    s.stop()
        if want("cold"):
            try:
                cold_read(cfg, rows, secs, P)
            except (Exception, SystemExit) as e:
                log(f"the cold-read run failed: {e}")
        disk = raw_disk_mb_s(cfg.work)
    finally:
        shutil.rmtree(cfg.work, ignore_errors=True)

    report(cfg, rows, disk, time.time() - started)


def cold_read(cfg, rows, secs, producers):
    """Our broker alone: consume from offset 0 once everything but the active segment is in
    object storage (s3s-fs on loopback), against the same consume from local disk."""
    s3bin = subprocess.run(["bash", str(ROOT / "scripts/setup-s3.sh")], check=True,
                           stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    s3root = cfg.work / "s3"
    (s3root / "tier").mkdir(parents=True)
    s3port = free_port()
    s3 = subprocess.Popen([s3bin, "--host", "127.0.0.1", "--port", str(s3port), "--access-key", "AK",
                           "--secret-key", "SK", str(s3root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(s3port, 20, "s3s-fs")
        segment = 64 << 20
        tier = (
            f"tier:\n  backend: {{type: s3, bucket: tier, endpoint: 'http://127.0.0.1:{s3port}', "
            "pathStyle: true, allowHttp: true}\n  prefix: bench\n  hotWindowBytes: 0\n  uploadInterval: 200\n"
        )
        for label, tier_yaml in (("hot", None), ("cold", tier)):
            s = Ours(cfg, cfg.work, "ASYNC_FLUSH", tier_yaml,
                     {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}, segment)
            s.start([("Cold", 8)])
            try:
                w = rmq_bench(cfg, s, f"{label}-fill", topic="Cold", producers=producers, consumers=0, duration=secs)
                if tier_yaml:
                    deadline = time.time() + 300
                    written = s.metric("rocketmq_commitlog_written_offset")
                    while s.metric("rocketmq_commitlog_min_offset") < written - segment:
                        if time.time() > deadline:
                            raise SystemExit("sealed segments were not evicted to the tier within 300 s")
                        time.sleep(0.5)
                    log(f"tiered: local CommitLog starts at {s.metric('rocketmq_commitlog_min_offset'):.0f} of {written:.0f}")
                subprocess.run(["sync"], check=True)
                # Drop the page cache where allowed, so "hot" reads the local disk too.
                try:
                    open("/proc/sys/vm/drop_caches", "w").write("1\n")
                except OSError:
                    pass
                r = rmq_bench(cfg, s, f"{label}-read", topic="Cold", producers=0,
                              consumers=8, expect=w["sent"], duration=300)
                r["sent"] = w["sent"]
                rows.append({"key": "cold", "workload": f"consume {w['sent']} x 1 KiB from offset 0",
                             "system": f"ours ({label}: {'tiered to S3, local copy evicted' if tier_yaml else 'local disk'})", **r})
            finally:
                s.stop()
    finally:
        s3.kill()
        s3.wait()


def fmt(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def report(cfg, rows, disk, elapsed):
    by = {(r["key"], r["system"]): r for r in rows}
    lines = [
        f"Run of {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {cfg.secs} s per run, "
        f"{cfg.producers} producers, segments {cfg.segment_bytes >> 20} MiB, {os.cpu_count()} cores; "
        f"raw disk write {disk:.0f} MB/s (1 GiB in 1 MiB writes, fdatasync every 64 MiB, best of 3); "
        f"whole run {elapsed / 60:.1f} min.",
        "",
        "| workload | system | send msg/s | send MB/s | send p99 ms | end-to-end p50 / p99 / p999 ms | consume msg/s | peak RSS MiB (anon) | CPU s per M msgs | ours/Apache: send, p99 e2e, RSS, CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ap = by.get((r["key"], "apache"))
        ratio = "-"
        if ap and r["system"] != "apache":
            q = lambda a, b: "-" if not a or not b else f"{a / b:.2f}"
            ratio = ", ".join([
                q(r.get("sendTps"), ap.get("sendTps")),
                q(r.get("e2eP99Ms"), ap.get("e2eP99Ms")),
                q(r.get("peakRssMiB"), ap.get("peakRssMiB")),
                q(r.get("cpuSecsPerMillion"), ap.get("cpuSecsPerMillion")),
            ])
        mbs = (r.get("sendTps") or 0) * r.get("size", 1024) / 1e6
        e2e = "-" if r.get("e2eP50Ms") is None else f"{r['e2eP50Ms']:.2f} / {r['e2eP99Ms']:.2f} / {r['e2eP999Ms']:.2f}"
        lines.append(
            f"| {r['workload']} | {r['system']} | {fmt(r.get('sendTps'))} | {mbs:.1f} | "
            f"{fmt(r.get('sendP99Ms'), '.2f')} | {e2e} | "
            f"{fmt(r.get('consumeTps'))} | {fmt(r.get('peakRssMiB'))} ({fmt(r.get('peakAnonMiB'))}) | "
            f"{fmt(r.get('cpuSecsPerMillion'), '.1f')} | {ratio} |"
        )
    best = max((r.get("sendTps", 0) * r.get("size", 1024) / 1e6 for r in rows if r["system"].startswith("ours")), default=0)
    lines += ["", f"Our best send rate: {best:.1f} MB/s = {best / disk:.2f} of the raw disk write bandwidth."]
    text = "\n".join(lines)
    print(text)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (cfg.out / f"compare-{stamp}.md").write_text(text + "\n")
    (cfg.out / f"compare-{stamp}.json").write_text(json.dumps({"rawDiskMBs": disk, "rows": rows}, indent=2))
    (cfg.out / "compare-partial.json").unlink(missing_ok=True)
    log(f"written to {cfg.out}/compare-{stamp}.md and .json")


if __name__ == "__main__":
    main()
