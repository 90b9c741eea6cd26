#!/usr/bin/env python3
"""Queue scale on one node: 8 queues vs 100,000 queues (12,500 topics x 8), in one run.

One release `rmq-broker standalone` (ASYNC_FLUSH) on a fresh data folder, driven by
`rmq-bench` (N producers sending 1 KiB messages synchronously, C consumers acking):

1. idle: RSS (anonymous and file-backed) and open descriptors of the fresh broker;
2. 8 queues: one topic of 8 queues, one group - the reference; run twice, acking each
   receive's messages in one call, then each message in its own call (as the official
   clients do); then once with sends only (no consumers); each run prints the calls (sends, receives, acks) it took per message, and
   the broker's CPU time per message and per call;
3. topics: 12,500 topics of 8 queues created in batches through the HTTP admin API (timed);
   memory after creation;
4. 100,000 queues: sends spread evenly over every queue of every topic, consumed by
   `--groups` groups (topic i by group i % G) - throughput against the reference, whether
   the consumers kept up (received == sent), memory and descriptors after; again with one
   ack a message, and once with sends only; then sends only over 8 queues again on this same
   node (every topic in place) and over all queues again, for a comparison on one node;
   (one message is sent into every queue first, and read by the groups, so that the measured
   run neither creates queue files nor drains a backlog);
5. clean restart: SIGTERM, start again, time until `/readyz` answers and a send succeeds;
6. crash: 8 s of sends over every queue, `kill -9` under it, start again, time until ready
   (crash recovery: CommitLog scan from the checkpoint, queues repaired when first opened).

With --apache, steps 2 and 4 run again against Apache RocketMQ 5.4.0 (scripts/apache.sh: its
broker with the gRPC proxy in local mode, 12,500 topics created in one `mqadmin
updateTopicList`, groups auto-created) on the same machine and load generator, after ours has
stopped. Apache maps every ConsumeQueue file, so vm.max_map_count is raised first when allowed.

Prints a table and writes it, with the raw numbers, under bench-results/.
"""
import argparse
import datetime
import json
import os
import pathlib
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import SimpleNamespace

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_compare import free_port, log  # noqa: E402




def proc_mem(pid):
    """RSS, anonymous RSS and file-backed RSS in MiB, and open descriptors."""
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    kib = lambda k: int(fields.get(k, "0 kB").split()[0]) / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rssMiB": round(kib("VmRSS"), 1), "anonMiB": round(kib("RssAnon"), 1),
            "fileMiB": round(kib("RssFile"), 1), "fds": fds, "threads": int(fields.get("Threads", 0))}


def open_files_limit(pid):
    """The soft open files limit of a process (from /proc/<pid>/limits)."""
    for line in pathlib.Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


def metric(http, name):
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def nofile_limit():
    """The broker gets the open files limit Kubernetes gives containers (1,048,576) when this
    user may raise it; it sizes its queue descriptor cache from it."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))
    except (ValueError, OSError):
        pass


class Broker:
    def __init__(self, binary, work: pathlib.Path, cq_sync_ms=None):
        self.binary, self.work, self.cq_sync_ms = binary, work, cq_sync_ms
        self.port, self.http = free_port(), free_port()
        self.p = None

    def start(self):
        """Starts the broker; returns seconds until /readyz answers 200."""
        # A shared test machine's disk is often more than 75% full by the store's measure
        # (free space over total, reserved blocks counted as used): the store would then
        # delete its oldest segments every 10 s, messages the groups have not read yet among
        # them (RocketMQ's diskMaxUsedSpaceRatio). The benchmark needs them kept; scripts/
        # apache.sh raises Apache's thresholds the same way.
        conf = self.work / "broker.yaml"
        conf.write_text("store:\n  diskMaxUsedRatio: 0.99\n"
                        + (f"  consumeQueueSyncInterval: {self.cq_sync_ms}\n" if self.cq_sync_ms else ""))
        args = [str(self.binary), "standalone", "--config", str(conf), "--data-dir", str(self.work / "data"),
                "--grpc-listen", f"127.0.0.1:{self.port}", "--http-listen", f"127.0.0.1:{self.http}",
                "--topic", "BenchTopic:8", "--group", "BenchGroup"]
        logf = open(self.work / "broker.log", "a")
        t0 = time.time()
        self.p = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  preexec_fn=nofile_limit)
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=1).status == 200:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return time.time() - t0
            except OSError:
                pass
            if self.p.poll() is not None or time.time() - t0 > 300:
                raise SystemExit(f"the broker did not start: {(self.work / 'broker.log').read_text()[-3000:]}")
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM):
        self.p.send_signal(sig)
        try:
            self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"


def disk_writes(path):
    """(writes completed, bytes written) so far on the block device holding `path`, from
    /proc/diskstats; None when it is not listed there."""
    dev = os.stat(path).st_dev
    with open("/proc/diskstats") as f:
        for line in f:
            x = line.split()
            if (int(x[0]), int(x[1])) == (os.major(dev), os.minor(dev)):
                return int(x[7]), int(x[9]) * 512
    return None


def bench(cfg, b, label, extra, secs, producers=None):
    """Runs rmq-bench against `b` (our Broker, or ApacheTarget) and returns its JSON, with the
    disk writes the machine made meanwhile."""
    out = b.work / f"{label}.json"
    producers = cfg.producers if producers is None else producers
    argv = [str(cfg.bin / "rmq-bench"), "--endpoint", b.endpoint, "--size", "1024",
            "--producers", str(producers), "--duration", str(secs),
            "--broker-pid", str(b.p.pid), "--json", str(out), *extra]
    log(f"{label}: {' '.join(argv[1:])}")
    d0, t0 = disk_writes(b.work), time.time()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 600)
    d1, t1 = disk_writes(b.work), time.time()
    log(r.stdout)
    if r.returncode != 0:
        raise SystemExit(f"rmq-bench failed ({label}):\n{r.stdout}\n{r.stderr}")
    res = json.loads(out.read_text())
    res["stdout"] = r.stdout
    if d0 and d1:
        res["disk"] = {"writesPerSec": (d1[0] - d0[0]) / (t1 - t0),
                       "mbPerSec": (d1[1] - d0[1]) / (t1 - t0) / 1e6}
    return res


class ApacheTarget:
    """Apache RocketMQ 5.4.0 (scripts/apache.sh: name server + broker with its proxy in local
    mode) as a target of `bench`."""

    def __init__(self, work: pathlib.Path):
        from bench_compare import Apache
        self.a = Apache(SimpleNamespace(segment_bytes=1 << 30), work, "ASYNC_FLUSH")
        self.work = self.a.work
        self.endpoint = self.a.endpoint

    def start(self, topics):
        t0 = time.time()
        self.a.start(topics)
        self.p = SimpleNamespace(pid=self.a.pids()[0])
        return time.time() - t0

    def stop(self):
        self.a.stop()


def raise_map_count(need):
    """Apache maps every ConsumeQueue file: 100,000 queues need more mappings than the usual
    65,530 (RocketMQ's deployment guide sets 655,360). Raises vm.max_map_count when allowed;
    returns the value in force."""
    path = pathlib.Path("/proc/sys/vm/max_map_count")
    have = int(path.read_text())
    if have < need:
        try:
            path.write_text(str(need))
            log(f"vm.max_map_count raised from {have} to {need} for Apache's mapped queue files")
        except OSError as e:
            log(f"vm.max_map_count is {have} and cannot be raised here ({e}); Apache may fail to map its queues")
    return int(path.read_text())


def wait_written(b, t0, limit):
    """Seconds from `t0` until no queue of our broker has entries waiting in memory for its
    file (`rocketmq_consumequeue_waiting_queues` 0), polled every 0.2 s for at most `limit`."""
    while time.time() - t0 < limit:
        if metric(f"127.0.0.1:{b.http}", "rocketmq_consumequeue_waiting_queues") == 0:
            return time.time() - t0
        time.sleep(0.2)
    raise SystemExit(f"queue entries still waiting for their files after {limit} s")


def scale_runs(cfg, b, queues, scale, res, prefix="", drain_secs=1200):
    """Warm-up (one message into every queue), drain (the groups read them, waiting at most
    `drain_secs`), measured run."""
    t0 = time.time()
    res[prefix + "warmup"] = bench(cfg, b, prefix + "warmup",
                                   scale[:6] + ["--consumers", "0", "--messages", str(queues)], 1200)
    res[prefix + "warmupSecs"] = time.time() - t0
    if not prefix:
        # Our store keeps the entries of a queue whose file is not among its cached descriptors
        # in memory until the next queue sync writes them, creating the files then: wait for
        # that, so that the measured runs do not pay for creating 100,000 files and folders.
        res["warmupWrittenSecs"] = wait_written(b, t0, 900)
    # The groups read those messages before the measured run, which then measures new
    # traffic only (not a backlog drained next to it).
    t0 = time.time()
    res[prefix + "drain"] = bench(cfg, b, prefix + "drain", scale + ["--expect", str(queues)], drain_secs,
                                  producers=0)
    res[prefix + "drainSecs"] = time.time() - t0
    res[prefix + "q100k"] = bench(cfg, b, prefix + "q100k", scale, cfg.secs)
    if not prefix:
        res["q100kEach"] = bench(cfg, b, "q100kEach", scale + ["--ack-each"], cfg.secs)
        res["q100kSend"] = bench(cfg, b, "q100kSend", scale[:6] + ["--consumers", "0"], cfg.secs)
        # Sends only again, 8 queues then all queues, on this same node (its 12,500 topics in
        # place), each after a pause that lets the queue files' write-back of the run before
        # settle: the first 8-queue reference ran on a fresh node, minutes earlier.
        time.sleep(12)
        res["q8sendAfter"] = bench(cfg, b, "q8sendAfter", ["--topic", "BenchTopic", "--consumers", "0"], cfg.secs)
        time.sleep(12)
        res["q100kSend2"] = bench(cfg, b, "q100kSend2", scale[:6] + ["--consumers", "0"], cfg.secs)


def create_topics(http, topics):
    """Creates ScaleTopic-0.. through POST /admin/topics, 2,000 a request; returns seconds."""
    t0 = time.time()
    for start in range(0, topics, 2000):
        body = json.dumps([{"name": f"ScaleTopic-{i}", "queues": 8}
                           for i in range(start, min(start + 2000, topics))]).encode()
        req = urllib.request.Request(f"http://{http}/admin/topics", data=body, method="POST",
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=120).read()
    return time.time() - t0


def create_groups(http, first, end):
    """Creates BenchGroup-first..end-1 through POST /admin/groups, 2,000 a request; returns
    seconds."""
    t0 = time.time()
    for start in range(first, end, 2000):
        body = json.dumps([{"name": f"BenchGroup-{i}"}
                           for i in range(start, min(start + 2000, end))]).encode()
        req = urllib.request.Request(f"http://{http}/admin/groups", data=body, method="POST",
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=120).read()
    return time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, type=pathlib.Path, help="folder with rmq-broker and rmq-bench")
    ap.add_argument("--secs", type=int, default=30)
    ap.add_argument("--producers", type=int, default=32)
    ap.add_argument("--consumers", type=int, default=64)
    ap.add_argument("--topics", type=int, default=12500)
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--created-groups", type=int, default=100000,
                    help="groups created (BenchGroup-0..) before the 100,000-queue runs, which use the "
                         "first --groups of them: memory per group, from the growth between the first "
                         "10,000 and the rest (the first requests also grow the allocator's pools)")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench-results")
    ap.add_argument("--long-polling-ms", type=int, default=None,
                    help="receive long polling of the 100,000-queue runs (default 1000; 5000 with --apache: "
                         "Apache's proxy refuses receives whose deadline leaves less than that)")
    ap.add_argument("--cq-sync-ms", type=int, default=None,
                    help="the broker's consumeQueueSyncInterval in ms (its default when not given)")
    ap.add_argument("--apache", action="store_true",
                    help="run the same steps against Apache RocketMQ 5.4.0 too (scripts/apache.sh; "
                         "raises vm.max_map_count when allowed)")
    cfg = ap.parse_args()
    if cfg.long_polling_ms is None:
        cfg.long_polling_ms = 5000 if cfg.apache else 1000
    queues = cfg.topics * 8
    res = {"config": vars(cfg) | {"bin": str(cfg.bin), "out": str(cfg.out)}}
    with tempfile.TemporaryDirectory(prefix="rmq-bench-scale-") as tmp:
        work = pathlib.Path(tmp)
        b = Broker(cfg.bin / "rmq-broker", work, cfg.cq_sync_ms)
        res["firstStartSecs"] = b.start()
        time.sleep(1)
        res["idle"] = proc_mem(b.p.pid)
        res["q8"] = bench(cfg, b, "q8", ["--topic", "BenchTopic", "--consumers", "8"], cfg.secs)
        # Acks one message a call, as the official clients send them (their ack API takes one
        # message); the runs above ack a whole receive in one call.
        res["q8each"] = bench(cfg, b, "q8each", ["--topic", "BenchTopic", "--consumers", "8", "--ack-each"],
                              cfg.secs)
        # Sends alone: what the queue count costs the send and storage path, apart from the
        # consumers' calls.
        res["q8send"] = bench(cfg, b, "q8send", ["--topic", "BenchTopic", "--consumers", "0"], cfg.secs)
        res["after8"] = proc_mem(b.p.pid)
        scale = ["--topic", "ScaleTopic", "--topics", str(cfg.topics), "--queues", "8",
                 "--groups", str(cfg.groups), "--consumers", str(cfg.consumers),
                 "--long-polling-ms", str(cfg.long_polling_ms)]
        res["createSecs"] = create_topics(f"127.0.0.1:{b.http}", cfg.topics)
        time.sleep(2)
        res["afterCreate"] = proc_mem(b.p.pid)
        first_groups = min(10000, cfg.created_groups)
        create_groups(f"127.0.0.1:{b.http}", 0, first_groups)
        time.sleep(2)
        res["afterFirstGroups"] = proc_mem(b.p.pid)
        res["createGroupsSecs"] = create_groups(f"127.0.0.1:{b.http}", first_groups, cfg.created_groups)
        time.sleep(2)
        res["afterGroups"] = proc_mem(b.p.pid)
        # Warm-up: one message into every queue, so the measured run is the steady state and
        # not the creation of 100,000 queue files (measured here on its own).
        scale_runs(cfg, b, queues, scale, res)
        res["after100k"] = proc_mem(b.p.pid)
        res["metrics"] = {k: metric(f"127.0.0.1:{b.http}", f"rocketmq_{k}") for k in
                          ("consumequeue_queues", "consumequeue_open_files", "consumequeue_file_opens",
                           "checkpoint_seconds")}
        b.stop()
        res["cleanRestartSecs"] = b.start()
        res["afterRestart"] = proc_mem(b.p.pid)
        load = subprocess.Popen([str(cfg.bin / "rmq-bench"), "--endpoint", b.endpoint, "--size", "1024",
                                 "--producers", str(cfg.producers), "--consumers", "0", "--expect", "1",
                                 "--topic", "ScaleTopic", "--topics", str(cfg.topics), "--queues", "8",
                                 "--duration", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(8)
        b.stop(signal.SIGKILL)
        load.kill()
        load.wait()
        res["crashRestartSecs"] = b.start()
        res["afterCrash"] = proc_mem(b.p.pid)
        recovered = [l for l in (work / "broker.log").read_text().splitlines() if "recover" in l]
        res["recoveryLog"] = recovered[-3:]
        b.stop()
        if cfg.apache:
            # The same runs against Apache RocketMQ 5.4.0 (its gRPC proxy in local mode), after
            # ours has stopped, on the same machine and load generator.
            res["apacheMapCount"] = raise_map_count(4 * queues)
            a = ApacheTarget(work)
            try:
                topics = [("BenchTopic", 8)] + [(f"ScaleTopic-{i}", 8) for i in range(cfg.topics)]
                res["apacheStartAndCreateSecs"] = a.start(topics)
                t0 = time.time()
                a.a.sh("groups", str(a.work), *[f"BenchGroup-{i}" for i in range(cfg.groups)])
                res["apacheGroupsSecs"] = time.time() - t0
                res["apacheIdle"] = proc_mem(a.p.pid)
                res["apache_q8"] = bench(cfg, a, "apache_q8", ["--topic", "BenchTopic", "--consumers", "8"], cfg.secs)
                res["apacheAfter8"] = proc_mem(a.p.pid)
                scale_runs(cfg, a, queues, scale, res, prefix="apache_", drain_secs=300)
                res["apacheAfter100k"] = proc_mem(a.p.pid)
                # Apache keeps a descriptor open per ConsumeQueue file: at its limit, queue
                # writes fail and its store stops taking messages.
                res["apacheOpenFilesLimit"] = open_files_limit(a.p.pid)
            finally:
                a.stop()
    s8, s100 = res["q8"]["send"], res["q100k"]["send"]
    mib = lambda a, z, k: res[z][k] - res[a][k]
    lines = [
        f"Queue scale on one node: {queues:,} queues ({cfg.topics:,} topics x 8, {cfg.groups} groups) vs 8 "
        f"({cfg.producers} producers, {cfg.consumers} consumers, 1 KiB, {cfg.secs} s, "
        + (f"consumeQueueSyncInterval {cfg.cq_sync_ms} ms, " if cfg.cq_sync_ms else "")
        + f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        "| run | send msg/s | p50 ms | p99 ms | received / sent | send errors | calls per message | "
        "broker CPU s per M messages | broker CPU us per call | RSS MiB (anon) | disk writes/s (MB/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("8 queues", res["q8"], "after8"), (f"{queues:,} queues", res["q100k"], "after100k"),
            ("8 queues, one ack a message", res["q8each"], "after8"),
            (f"{queues:,} queues, one ack a message", res["q100kEach"], "after100k"),
            ("8 queues, sends only", res["q8send"], "after8"),
            (f"{queues:,} queues, sends only", res["q100kSend"], "after100k"),
            (f"8 queues, sends only, same node after the {queues:,}-queue runs", res["q8sendAfter"], "after100k"),
            (f"{queues:,} queues, sends only, again", res["q100kSend2"], "after100k")]
    if cfg.apache:
        rows += [("Apache 5.4.0, 8 queues", res["apache_q8"], "apacheAfter8"),
                 (f"Apache 5.4.0, {queues:,} queues", res["apache_q100k"], "apacheAfter100k")]
    for name, r, mem in rows:
        s = r["send"]
        received = r["endToEnd"]["count"]
        calls = (s["count"] + r.get("receives", 0) + r.get("acks", 0)) / max(received or s["count"], 1)
        cpu = (r.get("broker") or {}).get("cpuSecsPerMillion", 0)
        lines.append(f"| {name} | {s['perSec']:,.0f} | {s['p50Ms']:.2f} | {s['p99Ms']:.2f} | "
                     f"{received:,} / {s['count']:,} | {r.get('sendErrors', 0)} | {calls:.2f} | {cpu:.1f} | "
                     f"{cpu / calls if calls else 0:.1f} | {res[mem]['rssMiB']:.0f} ({res[mem]['anonMiB']:.0f}) | "
                     + (f"{r['disk']['writesPerSec']:,.0f} ({r['disk']['mbPerSec']:.0f}) |" if "disk" in r else "n/a |"))
    e8, e100 = res["q8each"]["send"], res["q100kEach"]["send"]
    lines += [
        "",
        f"- **{queues:,}-queue send throughput / 8-queue:** {s100['perSec'] / s8['perSec']:.1%} "
        f"(one ack a message, as the official clients: {e100['perSec'] / e8['perSec']:.1%}; sends only, no "
        f"consumers: {res['q100kSend']['send']['perSec'] / res['q8send']['send']['perSec']:.1%}; sends only, "
        f"both on the same node with every topic in place, the two {queues:,}-queue runs around the 8-queue one: "
        f"{(res['q100kSend']['send']['perSec'] + res['q100kSend2']['send']['perSec']) / 2 / res['q8sendAfter']['send']['perSec']:.1%})",
        f"- **Topic creation:** {cfg.topics:,} topics in {res['createSecs']:.1f} s (HTTP admin API, 2,000 a request)",
        f"- **First message into each of the {queues:,} queues** (creates the queue): {res['warmupSecs']:.1f} s, "
        f"{res['warmup']['send']['perSec']:,.0f} msg/s; their files written (the queue sync after the "
        f"sends) {res['warmupWrittenSecs']:.1f} s after the first send",
        f"- **Those {queues:,} messages read by the {cfg.groups:,} groups** before the measured run: "
        f"{res['drainSecs']:.1f} s, {res['drain']['endToEnd']['count']:,} received",
        f"- **Memory:** anonymous RSS idle {res['idle']['anonMiB']:.0f} MiB, after creating the topics "
        f"{res['afterCreate']['anonMiB']:.0f} MiB, after traffic on every queue {res['after100k']['anonMiB']:.0f} MiB: "
        f"{(mib('after8', 'after100k', 'anonMiB') - mib('afterCreate', 'afterGroups', 'anonMiB')) / (queues / 10000):.1f} "
        f"MiB per 10,000 queues used ({mib('after8', 'afterCreate', 'anonMiB') / (cfg.topics / 1000):.2f} MiB per "
        f"1,000 topics created, {mib('afterFirstGroups', 'afterGroups', 'anonMiB') / max((cfg.created_groups - first_groups) / 1000, 1):.2f} "
        f"MiB per 1,000 groups created beyond the first {first_groups:,}: {cfg.created_groups - first_groups:,} in "
        f"{res['createGroupsSecs']:.1f} s)",
        f"- **Descriptors:** {res['idle']['fds']} idle, {res['after100k']['fds']} after traffic on {queues:,} queues "
        f"(ConsumeQueue files open: {res['metrics']['consumequeue_open_files']:.0f}, opened since start: "
        f"{res['metrics']['consumequeue_file_opens']:.0f}); threads {res['idle']['threads']} -> {res['after100k']['threads']}",
        f"- **Last checkpoint:** {res['metrics']['checkpoint_seconds'] * 1000:.1f} ms",
        f"- **Clean restart** with {queues:,} queues on disk: ready in {res['cleanRestartSecs']:.2f} s",
        f"- **Restart after kill -9** under load: ready in {res['crashRestartSecs']:.2f} s",
    ]
    if cfg.apache:
        a8, a100 = res["apache_q8"]["send"], res["apache_q100k"]["send"]
        lines += [
            f"- **Apache 5.4.0, {queues:,}-queue send throughput / its 8-queue:** {a100['perSec'] / a8['perSec']:.1%}; "
            f"ours / Apache's at {queues:,} queues: "
            + (f"{s100['perSec'] / a100['perSec']:.2f}x" if a100["perSec"] else "n/a (Apache sent nothing)"),
            f"- **Apache 5.4.0:** started and {cfg.topics:,} topics created (one mqadmin updateTopicList) in "
            f"{res['apacheStartAndCreateSecs']:.1f} s; first message into each queue {res['apache_warmupSecs']:.1f} s; "
            f"read by the groups: {res['apache_drain']['endToEnd']['count']:,} in {res['apache_drainSecs']:.1f} s; "
            f"{cfg.groups:,} groups created in {res['apacheGroupsSecs']:.1f} s; vm.max_map_count {res['apacheMapCount']}; "
            f"descriptors {res['apacheAfter100k']['fds']} (its open files limit: {res['apacheOpenFilesLimit']}), "
            f"threads {res['apacheAfter100k']['threads']}",
        ]
    table = "\n".join(lines)
    print(table)
    cfg.out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (cfg.out / f"scale-{stamp}.md").write_text(table + "\n")
    (cfg.out / f"scale-{stamp}.json").write_text(json.dumps(res, indent=1))
    log(f"written to {cfg.out}/scale-{stamp}.md and .json")


if __name__ == "__main__":
    main()
