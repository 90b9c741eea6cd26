#!/usr/bin/env python3
"""Send throughput and latency with TLS + authentication on vs off, in one run.

Every configuration runs the same release `rmq-broker standalone` (ASYNC_FLUSH, one topic of
8 queues) on a fresh data folder, driven by the same `rmq-bench` (N producers sending 1 KiB
messages synchronously, 2 consumers):

- plain: plaintext, authentication off;
- tls: TLS `enforcing` with a CA-signed certificate (rmq-bench verifies it), no
  authentication;
- auth: plaintext, authentication and authorization on, every request signed (HMAC-SHA1 per
  request, as the official clients do) by a normal user whose policy allows the topic and
  group;
- tls+auth: both.

The runs alternate (plain, tls, auth, tls+auth, plain, ...) so that drift in the machine hits
all alike. Client and broker share this machine's cores, so TLS costs are paid twice.

Prints a table and writes it, with the raw numbers, under bench-results/.
"""
import argparse
import datetime
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_compare import free_port, log  # noqa: E402




def pki(d: pathlib.Path):
    """A CA and a certificate it signed for 127.0.0.1 / localhost (openssl)."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "2", "-subj", "/CN=bench CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", d / "tls.key", "-out", d / "tls.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", d / "tls.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
        "-CAcreateserial", "-out", d / "tls.crt", "-days", "2", "-extfile", d / "ext.cnf")


KINDS = ("plain", "tls", "auth", "tls+auth")


def start(binary, work: pathlib.Path, kind: str):
    tls, auth = "tls" in kind, "auth" in kind
    port, http = free_port(), free_port()
    data = work / "data"
    args = [str(binary), "standalone", "--data-dir", str(data), "--grpc-listen", f"127.0.0.1:{port}",
            "--http-listen", f"127.0.0.1:{http}", "--topic", "BenchTopic:8", "--group", "BenchGroup"]
    config = ""
    if tls:
        config += f"tls: {{mode: enforcing, cert: {work.parent / 'tls.crt'}, key: {work.parent / 'tls.key'}}}\n"
    else:
        config += "tls: {mode: disabled}\n"
    if auth:
        (work / "users.yaml").write_text(
            "users:\n  bench: {password: bench-secret}\n"
            "policies:\n  bench:\n"
            "    - {resource: 'Topic:BenchTopic', actions: [Pub, Sub]}\n"
            "    - {resource: 'Group:BenchGroup', actions: [Sub]}\n")
        config += (f"auth:\n  authentication: true\n  authorization: true\n"
                   f"  admin: {{accessKey: root, secretKey: root-secret}}\n  initial: {work / 'users.yaml'}\n")
    (work / "broker.yaml").write_text(config)
    args += ["--config", str(work / "broker.yaml")]
    logf = open(work / "broker.log", "w")
    p = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or p.poll() is not None:
                raise SystemExit(f"the broker did not start: {(work / 'broker.log').read_text()}")
            time.sleep(0.1)
    return p, f"127.0.0.1:{port}"


def bench(cfg, binary_dir, work: pathlib.Path, kind: str, label: str):
    work.mkdir()
    p, endpoint = start(binary_dir / "rmq-broker", work, kind)
    out = work / "bench.json"
    argv = [str(binary_dir / "rmq-bench"), "--endpoint", endpoint, "--producers", str(cfg.producers),
            "--consumers", "2", "--size", "1024", "--duration", str(cfg.secs),
            "--broker-pid", str(p.pid), "--json", str(out)]
    if "tls" in kind:
        argv += ["--tls-ca", str(work.parent / "ca.crt")]
    if "auth" in kind:
        argv += ["--access-key", "bench", "--secret-key", "bench-secret"]
    log(f"{label}: {' '.join(argv[1:])}")
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=cfg.secs + 120)
        if r.returncode != 0:
            raise SystemExit(f"rmq-bench failed ({label}):\n{r.stdout}\n{r.stderr}\n{(work / 'broker.log').read_text()[-3000:]}")
        return json.loads(out.read_text())
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
        shutil.rmtree(work / "data", ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, type=pathlib.Path, help="folder with rmq-broker and rmq-bench")
    ap.add_argument("--secs", type=int, default=15)
    ap.add_argument("--producers", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench-results")
    cfg = ap.parse_args()
    results = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="rmq-bench-security-") as tmp:
        tmp = pathlib.Path(tmp)
        pki(tmp)
        for i in range(cfg.rounds):
            for kind in KINDS:
                results[kind].append(bench(cfg, cfg.bin, tmp / f"{kind.replace('+', '-')}-{i}", kind, f"{kind} #{i + 1}"))
    rows = []
    for kind in KINDS:
        for i, r in enumerate(results[kind]):
            s = r["send"]
            rows.append((kind, i + 1, s["perSec"], s["p50Ms"], s["p99Ms"], s["p999Ms"], r.get("sendErrors", 0),
                         (r.get("broker") or {}).get("peakRssMiB") or (r.get("broker") or {}).get("rssMiB")))
    def mean(kind, idx):
        vals = [row[idx] for row in rows if row[0] == kind]
        return sum(vals) / len(vals)
    lines = [
        f"Send with TLS and/or authentication vs plaintext without ({cfg.producers} producers, 1 KiB, "
        f"{cfg.secs} s per run, {cfg.rounds} rounds, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        "| run | send msg/s | p50 ms | p99 ms | p99.9 ms | send errors |",
        "|---|---|---|---|---|---|",
    ]
    for kind, i, tps, p50, p99, p999, errs, _ in rows:
        lines.append(f"| {kind} #{i} | {tps:,.0f} | {p50:.2f} | {p99:.2f} | {p999:.2f} | {errs} |")
    for kind in KINDS:
        lines.append(f"| **{kind} mean** | **{mean(kind, 2):,.0f}** | {mean(kind, 3):.2f} | **{mean(kind, 4):.2f}** | {mean(kind, 5):.2f} | |")
    lines.append("")
    for kind in KINDS[1:]:
        lines.append(f"- {kind} / plain send throughput: {mean(kind, 2) / mean('plain', 2):.1%}; "
                     f"p99 {mean('plain', 4):.2f} -> {mean(kind, 4):.2f} ms")
    table = "\n".join(lines)
    print(table)
    cfg.out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (cfg.out / f"security-{stamp}.md").write_text(table + "\n")
    (cfg.out / f"security-{stamp}.json").write_text(json.dumps(results, indent=1))
    log(f"written to {cfg.out}/security-{stamp}.md and .json")


if __name__ == "__main__":
    main()
