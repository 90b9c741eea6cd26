#!/usr/bin/env python3
"""Replication cost: send TPS and latency of one broker group with 0, 1 and 2 replicas, ASYNC
and SYNC replication, through one proxy, driven by rmq-bench (gRPC); optionally the same on
Apache RocketMQ 5.4.0 in controller mode, and Apache's failover time. Run by scripts/bench-ha.sh.

Ours. Each configuration (no replicas, 1+1 ASYNC, 1+1 SYNC, 1+2 ASYNC, 1+2 SYNC) starts fresh: a
controller, a name server, the group's store nodes (each its own process and data folder,
ASYNC_FLUSH) and a proxy; a warm-up run (--warmup, 10 s), then the measured run (--secs, 15 s).
CPU and peak RSS are those of the store nodes plus the proxy.

Apache (--apache; --apache-only skips ours). After ours, the four replicated configurations on
Apache RocketMQ 5.4.0 in controller mode, each started fresh by scripts/apache-ha.sh (a name
server JVM with the controller embedded, 1+R broker JVMs of broker-a, a proxy JVM in cluster
mode; SYNC = allAckInSyncStateSet=true, ASYNC = inSyncReplicas=1, see its header). The topics
Bench and Warm (8 queues) and rmq-bench's consumer groups G-warm-up and G-run are created first;
then the same warm-up (--apache-warmup: 20 s unless --warmup is given, as four JVMs compile on
two cores; bench_compare.py gives Apache 20 s too) and measured run, through the proxy's gRPC
port. CPU and peak RSS are those of the broker JVMs plus the proxy JVM (the name server +
controller JVM is left out, as ours leaves out the controller and name server). The results are
a second table ("Apache 5.4.0 1+R MODE"). apache-ha.sh's default ports are used unless one is
taken (APACHE_HA_* from the environment win); then free ones are picked.

Apache failover (--apache-failover-rounds N; 0, the default, skips it). Starts Apache 1+2 SYNC
and scripts/ApacheHaWatch.java (compiled at run time against the jars scripts/setup-apache.sh
installs), which polls the controller every 50 ms (DefaultMQAdminExt.getInSyncStateData) and
prints a timestamped line whenever broker-a's master address, master epoch or number of live
in-sync replicas changes. N times: `apache-ha.sh kill-master` (kill -9; it logs the time of the
kill), the time from the kill to the first line naming a new master with a higher epoch, and to
the first one where that master also has another live in-sync replica; then `apache-ha.sh
restart` of the killed broker and a wait until all three are in sync again. No load runs
meanwhile. Reported as min / median / max. Our own figure comes from the failover test
(`cargo test -p broker --test ha_failover -- --nocapture`): SIGKILL of the primary, under load,
to the controllers showing a new primary with a higher epoch and at least 2 in-sync nodes, the
event of Apache's second figure.

--configs picks configurations by name ("1+1 SYNC,1+2 SYNC"; "none" runs only the failover),
for ours and Apache alike. Results go to bench-results/ha-<time>.md and .json ({"rows": [...],
"apacheFailover": {...}}); --no-save only prints them. Everything runs in one temp folder, which
is removed at the end, with any process still running from it.

  scripts/bench-ha.sh                                          # ours only, about 4 min
  scripts/bench-ha.sh --apache --apache-failover-rounds 20     # the full comparison, about 30 min
  python3 scripts/bench_ha.py --bin DIR --apache-only --configs "1+1 SYNC" --secs 5 --warmup 3 \\
      --apache-failover-rounds 2 --no-save                       # smoke test, about 4.5 min
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # no scripts/__pycache__ from the import below
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compare import Procs, free_port, log, rmq_bench, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [(0, "-"), (1, "ASYNC"), (1, "SYNC"), (2, "ASYNC"), (2, "SYNC")]
TOPICS = [("Bench", 8), ("Warm", 8)]
# rmq_bench (bench_compare.py) consumes with the group G-<label>; the labels used below.
LABELS = ("warm-up", "run")
APACHE = "Apache 5.4.0"


def config_name(replicas, replication):
    return f"1+{replicas} {replication}" if replicas else "no replicas"


class Group:
    """A controller, a name server, one group of `1 + replicas` store nodes and a proxy."""

    def __init__(self, cfg, replicas, replication):
        self.cfg, self.replicas, self.replication = cfg, replicas, replication
        self.name = config_name(replicas, replication)
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


def port_free(port):
    """Nothing listens on the port (connections in TIME_WAIT do not count: the JVMs' servers
    set SO_REUSEADDR, so does this check)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def apache_ports(replicas):
    """APACHE_HA_* port settings for scripts/apache-ha.sh: its defaults (or what the environment
    sets), except that a port already in use is replaced by a free one."""
    defaults = {"APACHE_HA_NAMESRV_PORT": 19876, "APACHE_HA_CONTROLLER_PORT": 19878,
                "APACHE_HA_GRPC_PORT": 18081, "APACHE_HA_REMOTING_PORT": 18080}
    ports = {k: int(os.environ.get(k, v)) for k, v in defaults.items()}
    # Broker N listens on PORT+10N, and on that -2 ("fast" channel) and +1 (HA).
    broker_ports = lambda base: [base + 10 * n + d for n in range(replicas + 1) for d in (-2, 0, 1)]
    taken = set()
    for k, p in ports.items():
        if not port_free(p) or p in taken:
            p = free_port()
            log(f"apache: port {ports[k]} ({k}) is in use, taking {p}")
            ports[k] = p
        taken.add(p)
    base = int(os.environ.get("APACHE_HA_BROKER_PORT", 20911))
    if not all(port_free(p) and p not in taken for p in broker_ports(base)):
        old = base
        for _ in range(200):
            base = free_port() + 2
            if all(port_free(p) and p not in taken for p in broker_ports(base)):
                break
        else:
            raise SystemExit("no free ports for Apache's brokers")
        log(f"apache: a port of the brokers at {old} is in use, taking {base}")
    ports["APACHE_HA_BROKER_PORT"] = base
    return {k: str(v) for k, v in ports.items()}


class ApacheGroup:
    """Apache RocketMQ 5.4.0 in controller mode, run by scripts/apache-ha.sh: a name server with
    the controller embedded, 1 + `replicas` broker JVMs and a proxy JVM (cluster mode)."""

    def __init__(self, cfg, replicas, mode, suffix=""):
        self.cfg, self.replicas, self.mode = cfg, replicas, mode
        self.name = f"{APACHE} {config_name(replicas, mode)}"
        self.work = cfg.work / f"apache-1p{replicas}-{mode}{suffix}"
        self.work.mkdir(parents=True)
        self.ports = apache_ports(replicas)
        self.env = {
            **os.environ, **self.ports,
            "APACHE_HA_SEGMENT_BYTES": str(cfg.segment_bytes),
            # A throwaway group: no need to wait long for the JVMs' shutdown hooks.
            "APACHE_HA_STOP_SECONDS": os.environ.get("APACHE_HA_STOP_SECONDS", "3"),
        }
        self.endpoint = f"127.0.0.1:{self.ports['APACHE_HA_GRPC_PORT']}"
        self.controller = f"127.0.0.1:{self.ports['APACHE_HA_CONTROLLER_PORT']}"
        self.namesrv = f"127.0.0.1:{self.ports['APACHE_HA_NAMESRV_PORT']}"

    def sh(self, *args, capture=False):
        """Run apache-ha.sh CMD WORKDIR ARGS...; with capture, return (stdout, stderr) (stderr is
        also passed on)."""
        argv = ["bash", str(ROOT / "scripts/apache-ha.sh"), args[0], str(self.work), *map(str, args[1:])]
        if not capture:
            subprocess.run(argv, check=True, env=self.env, stdout=sys.stderr)
            return None
        r = subprocess.run(argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(r.stderr)
        if r.returncode != 0:
            raise SystemExit(f"apache-ha.sh {args[0]} failed ({r.returncode})")
        return r.stdout, r.stderr

    def start(self, topics=(), groups=()):
        t = time.time()
        log(f"starting {self.name} (scripts/apache-ha.sh, ports {self.ports})")
        self.sh("start", self.replicas, self.mode)
        for topic, queues in topics:
            self.sh("topic", topic, queues)
        for group in groups:
            self.sh("group", group)
        log(f"{self.name} ready after {time.time() - t:.0f} s")

    def pids(self):
        names = [f"broker-{n}" for n in range(self.replicas + 1)] + ["proxy"]
        return [int((self.work / f"{n}.pid").read_text()) for n in names]

    def stop(self):
        t = time.time()
        self.sh("stop")
        log(f"{self.name} stopped after {time.time() - t:.0f} s")


class Watcher:
    """scripts/ApacheHaWatch.java on a controller: the (ms, master, epoch, inSync) lines it prints."""

    def __init__(self, cfg, group, poll_ms=50):
        lib = subprocess.run(["bash", str(ROOT / "scripts/setup-apache.sh")], check=True,
                             stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
        classes = cfg.work / "watch-classes"
        subprocess.run(["javac", "-d", str(classes), "-cp", f"{lib}/*",
                        str(ROOT / "scripts/ApacheHaWatch.java")], check=True)
        home = cfg.work / "watch-home"
        home.mkdir(exist_ok=True)
        self.errlog = cfg.work / "watch.err"
        self.p = subprocess.Popen(
            ["java", "-Xmx128m", f"-Duser.home={home}", "-Drmq.logback.configurationFile=rmq.tools.logback.xml",
             "-cp", f"{classes}:{lib}/*", "ApacheHaWatch", group.controller, group.namesrv, "broker-a", str(poll_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.errlog, "ab"), text=True)
        self.events = []  # (ms, master, epoch, inSync)
        self.cond = threading.Condition()
        self.t = threading.Thread(target=self.read, daemon=True)
        self.t.start()

    def read(self):
        for line in self.p.stdout:
            line = line.strip()
            m = re.match(r"(\d+) master=(\S+) epoch=(-?\d+) inSync=(\d+)", line)
            if not m:
                if line:
                    log(f"watcher: {line}")
                continue
            ev = (int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)))
            with self.cond:
                self.events.append(ev)
                self.cond.notify_all()

    def wait(self, what, pred, timeout, since=0):
        """The first event at or after index `since` that satisfies pred, and its index."""
        deadline = time.time() + timeout
        with self.cond:
            i = since
            while True:
                while i < len(self.events):
                    if pred(self.events[i]):
                        return self.events[i], i
                    i += 1
                left = deadline - time.time()
                if left <= 0 or self.p.poll() is not None:
                    err = self.errlog.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"watcher: no {what} within {timeout} s; last: "
                                     f"{self.events[-1] if self.events else None}\n{err}")
                self.cond.wait(min(left, 1))

    def stop(self):
        if self.p.poll() is None:
            self.p.stdin.close()  # it exits when its stdin closes
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def apache_failover(cfg, rounds):
    """Kill -9 Apache's master `rounds` times; the times (ms) from each kill to the controller
    naming a new master, and to a new master with another live in-sync replica."""
    g = ApacheGroup(cfg, 2, "SYNC", suffix="-failover")
    res = {"newMasterMs": [], "newMasterInSyncMs": [], "roundSecs": []}
    watcher = None
    try:
        g.start()
        watcher = Watcher(cfg, g)
        full = lambda e: e[1] != "-" and e[3] == 3
        watcher.wait("master with 3 in sync", full, 60)
        for rnd in range(rounds):
            try:
                failover_round(g, watcher, res, rnd, rounds, full)
            except (Exception, SystemExit) as e:  # keep the rounds done so far
                log(f"apache failover round {rnd + 1} failed: {e}")
                res["error"] = f"round {rnd + 1}: {str(e)[:300]}"
                break
    finally:
        if watcher:
            watcher.stop()
        g.stop()
    return res


def failover_round(g, watcher, res, rnd, rounds, full):
    t_round = time.time()
    with watcher.cond:
        since = len(watcher.events)
        epoch = watcher.events[-1][2]
    _, err = g.sh("kill-master", capture=True)
    m = re.search(r"killed broker (\d+) \((\S+), epoch (\d+)\) at (\d+\.\d+)", err)
    if not m:
        raise SystemExit(f"kill-master did not log what it killed: {err}")
    n, addr, epoch = int(m.group(1)), m.group(2), max(epoch, int(m.group(3)))
    kill_ms = float(m.group(4)) * 1000
    newer = lambda e: e[1] not in ("-", addr) and e[2] > epoch
    (t1, new_master, new_epoch, in_sync), _ = watcher.wait("new master", newer, 60, since)
    (t2, *_), _ = watcher.wait("new master with an in-sync replica",
                               lambda e: newer(e) and e[3] >= 2, 60, since)
    res["newMasterMs"].append(t1 - kill_ms)
    res["newMasterInSyncMs"].append(t2 - kill_ms)
    log(f"apache failover round {rnd + 1}/{rounds}: killed broker {n} ({addr}, epoch {epoch}); "
        f"new master {new_master} epoch {new_epoch} after {t1 - kill_ms:.0f} ms "
        f"({in_sync} in sync), with an in-sync replica after {t2 - kill_ms:.0f} ms")
    since = len(watcher.events)
    g.sh("restart", n)
    watcher.wait("all 3 in sync again", full, 120, max(0, since - 1))
    res["roundSecs"].append(time.time() - t_round)


def kill_leftovers(work):
    """Kill -9 any process still running from our temp dir (its command line names it)."""
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(work) in cmd:
            log(f"killing leftover pid {d}: {cmd[:150]}")
            try:
                os.kill(int(d), signal.SIGKILL)
            except OSError:
                pass


def ms_stats(v):
    return f"{min(v) / 1000:.2f} / {statistics.median(v) / 1000:.2f} / {max(v) / 1000:.2f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, required=True, help="folder with rmq-broker and rmq-bench")
    ap.add_argument("--secs", type=int, default=15, help="seconds of each measured run")
    ap.add_argument("--warmup", type=int, default=None, help="seconds of the warm-up run after each start (default 10)")
    ap.add_argument("--producers", type=int, default=32)
    ap.add_argument("--apache", action="store_true",
                    help="after ours, the replicated configurations on Apache RocketMQ 5.4.0 (controller mode)")
    ap.add_argument("--apache-only", action="store_true", help="Apache's configurations only, not ours")
    ap.add_argument("--apache-warmup", type=int, default=None, metavar="SECS",
                    help="warm-up of each Apache group (default: --warmup if given, else 20 s: four JVMs "
                         "compile on 2 cores; bench_compare.py gives Apache 20 s too)")
    ap.add_argument("--apache-failover-rounds", type=int, default=0, metavar="N",
                    help="kill Apache's master N times in a 1+2 SYNC group and report the failover time (0: skip)")
    ap.add_argument("--configs", default="",
                    help='comma-separated configurations to run, of "no replicas", "1+1 ASYNC", "1+1 SYNC", '
                         '"1+2 ASYNC", "1+2 SYNC" (default all; "none": no throughput runs)')
    ap.add_argument("--no-save", action="store_true", help="print the results only, write nothing to bench-results/")
    cfg = ap.parse_args()
    cfg.segment_bytes = 1 << 30
    if cfg.apache_warmup is None:
        cfg.apache_warmup = cfg.warmup if cfg.warmup is not None else 20
    if cfg.warmup is None:
        cfg.warmup = 10
    names = [config_name(*c) for c in CONFIGS]
    wanted = [s.strip() for s in cfg.configs.split(",") if s.strip()]
    if wanted == ["none"]:
        wanted = []
    elif not wanted:
        wanted = names
    for w in wanted:
        if w not in names:
            raise SystemExit(f"unknown configuration {w!r}; known: {', '.join(names)}")
    configs = [c for c in CONFIGS if config_name(*c) in wanted]
    run_ours = not cfg.apache_only
    run_apache = cfg.apache or cfg.apache_only
    cfg.work = Path(tempfile.mkdtemp(prefix="rmq-ha-bench-"))
    started = time.time()
    rows, failover, timings, failed = [], None, [], []
    groups = [f"G-{label}" for label in LABELS]
    try:
        plan = []
        if run_ours:
            plan += [lambda r=r, m=m: Group(cfg, r, m) for r, m in configs]
        if run_apache:
            plan += [lambda r=r, m=m: ApacheGroup(cfg, r, m) for r, m in configs if r]
        for make in plan:
            t = time.time()
            g = make()
            apache = isinstance(g, ApacheGroup)
            try:
                g.start(TOPICS, groups) if apache else g.start(TOPICS)
                rmq_bench(cfg, g, LABELS[0], topic="Warm", producers=cfg.producers, consumers=2,
                          duration=cfg.apache_warmup if apache else cfg.warmup)
                r = rmq_bench(cfg, g, LABELS[1], topic="Bench", producers=cfg.producers, consumers=2, duration=cfg.secs)
                rows.append({"config": g.name, "system": "apache" if apache else "ours", **r})
            except (Exception, SystemExit) as e:  # the other configurations still run
                log(f"{g.name} failed: {e}")
                failed.append(f"{g.name}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}")
            finally:
                try:
                    g.stop()
                except (Exception, SystemExit) as e:
                    log(f"{g.name}: stop failed: {e}")
            timings.append((g.name, time.time() - t))
            log(f"{g.name}: {time.time() - t:.0f} s in all")
        if cfg.apache_failover_rounds > 0:
            t = time.time()
            try:
                failover = apache_failover(cfg, cfg.apache_failover_rounds)
            except (Exception, SystemExit) as e:
                log(f"the Apache failover measurement failed: {e}")
                failover = {"newMasterMs": [], "newMasterInSyncMs": [], "roundSecs": [],
                            "error": f"start: {str(e)[:300]}"}
            timings.append(("Apache failover", time.time() - t))
    finally:
        kill_leftovers(cfg.work)
        shutil.rmtree(cfg.work, ignore_errors=True)
    for name, secs in timings:
        log(f"time: {name}: {secs:.0f} s")

    ours = {r["config"]: r for r in rows if r["system"] == "ours"}
    base = ours.get("no replicas", {}).get("sendTps")
    head = [
        "| group | send msg/s | vs no replicas | send p99 ms | end-to-end p50 / p99 ms | consume msg/s | CPU s per M msgs (all nodes + proxy) | peak RSS MiB (all) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def line(r):
        vs = f"{r['sendTps'] / base:.2f}" if base and r["system"] == "ours" else "-"
        return (f"| {r['config']} | {r['sendTps']:.0f} | {vs} | {r['sendP99Ms']:.2f} | "
                f"{r['e2eP50Ms']:.2f} / {r['e2eP99Ms']:.2f} | {r['consumeTps']:.0f} | "
                f"{r.get('cpuSecsPerMillion', 0):.1f} | {r.get('peakRssMiB', 0)} |")

    apache_rows = [r for r in rows if r["system"] == "apache"]
    lines = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M')}, {cfg.secs} s per run (warm-up {cfg.warmup} s"
        f"{f', Apache {cfg.apache_warmup} s' if apache_rows else ''}), "
        f"{cfg.producers} producers, 2 consumers, 1 KiB, ASYNC_FLUSH, every node on this machine; "
        f"whole run {(time.time() - started) / 60:.1f} min.",
    ]
    if ours:
        lines += ["", *head, *[line(r) for r in rows if r["system"] == "ours"]]
    if apache_rows:
        lines += [
            "",
            f"{APACHE} in controller mode (scripts/apache-ha.sh): a name server JVM with the controller "
            "embedded, the broker JVMs of broker-a (1 GiB heap each) and a proxy JVM in cluster mode "
            "(1 GiB heap); SYNC = allAckInSyncStateSet=true, ASYNC = inSyncReplicas=1. CPU and RSS "
            "add up the broker JVMs and the proxy JVM.",
            "",
            *head, *[line(r) for r in apache_rows],
        ]
        ratios = []
        for r in apache_rows:
            o = ours.get(r["config"][len(APACHE) + 1:])
            if o and r["sendTps"]:
                ratios.append(f"{o['config']} {o['sendTps'] / r['sendTps']:.2f}")
        if ratios:
            lines += ["", "Ours / Apache send msg/s: " + ", ".join(ratios) + "."]
    ours_failover = (
        "Ours is measured by tests/ha_failover.rs (`cargo test -p broker --test ha_failover -- --nocapture`): "
        "SIGKILL of the primary, under load, to the controllers' leader showing a new primary with a "
        "higher epoch and at least 2 in-sync nodes (polled every 100 ms; 3 controllers, node timeout "
        "1.5 s, heartbeats every 300 ms), the same event as the second Apache figure.")
    if failover and failover["newMasterMs"]:
        n = len(failover["newMasterMs"])
        lines += [
            "",
            f"{APACHE} failover, 1+2 SYNC (controllerHeartBeatTimeoutMills 3000, "
            f"scanNotActiveBrokerInterval 1000, one controller embedded in the name server, no load), "
            f"{n} kills (kill -9) of the master, min / median / max:",
            "",
            "| measure | min / median / max |",
            "|---|---|",
            f"| kill to the controller naming a new master (higher epoch) | {ms_stats(failover['newMasterMs'])} |",
            f"| kill to a new master with another live in-sync replica | {ms_stats(failover['newMasterInSyncMs'])} |",
            "",
            "Times from the kill (logged by apache-ha.sh right after kill -9) to the first line of "
            "scripts/ApacheHaWatch.java (getInSyncStateData every 50 ms) showing it. The controller "
            "sees the killed JVM's connection close, so it elects at once; the new SyncStateSet holds "
            "the new master alone (with minInSyncReplicas=1 it takes SYNC sends right away), and the "
            "other slave, told the new master's address but not its HA address, rejoins only after "
            "its next periodic name server registration (registerNameServerPeriod, 30 s by default). "
            + ours_failover,
        ]
    if failover and failover.get("error"):
        lines += ["", f"The failover measurement stopped early ({len(failover['newMasterMs'])} rounds done): "
                      f"{failover['error']}"]
    if failed:
        lines += ["", "Failed, not in the tables: " + "; ".join(failed) + "."]
    text = "\n".join(lines)
    print(text)
    if failover is None:
        log(ours_failover)
    if cfg.no_save:
        return
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"ha-{stamp}.md").write_text(text + "\n")
    (out / f"ha-{stamp}.json").write_text(json.dumps({"rows": rows, "apacheFailover": failover}, indent=2))
    log(f"written to bench-results/ha-{stamp}.md and .json")


if __name__ == "__main__":
    main()
