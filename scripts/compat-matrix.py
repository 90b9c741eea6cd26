#!/usr/bin/env python3
"""Builds the README's client compatibility matrix from what the client tests recorded.

Each passing client test writes an empty marker file <dir>/<client>/<feature> (see
broker/tests/common/clients.rs). Usage:
  compat-matrix.py MARKER_DIR            print the table
  compat-matrix.py MARKER_DIR --check    also fail if README.md's table differs
"""
import os
import sys

CLIENTS = [
    ("java", "Java `rocketmq-client-java` 5.2.0", "TLS"),
    ("go", "Go `rocketmq-clients/golang/v5` v5.1.4", "TLS"),
    ("python", "Python `rocketmq-python-client` 5.1.2", "plaintext"),
    ("node", "Node.js `rocketmq-client-nodejs` 1.0.8", "plaintext"),
    ("rust", "Rust `rocketmq` 5.0.0", "plaintext"),
]
FEATURES = [
    ("send", "send"),
    ("simple", "simple consumer receive + ack"),
    ("push", "push consumer"),
    ("fifo", "FIFO order"),
    ("delay", "delay"),
    ("transaction", "transaction commit / rollback / check-back"),
    ("dlq", "redelivery + DLQ"),
    ("restart", "ack survives broker SIGKILL"),
    ("errors", "errors (unknown topic, 5 MiB body)"),
    ("auth", "TLS + ACL 2.0 credentials"),
]
BEGIN, END = "<!-- compat-matrix:begin -->", "<!-- compat-matrix:end -->"


def table(marker_dir):
    lines = [
        "| client (version) | transport | " + " | ".join(f for _, f in FEATURES) + " |",
        "|---|---|" + "---|" * len(FEATURES),
    ]
    for key, name, transport in CLIENTS:
        cells = ["yes" if os.path.exists(os.path.join(marker_dir, key, f)) else "-" for f, _ in FEATURES]
        lines.append(f"| {name} | {transport} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    marker_dir = sys.argv[1]
    generated = table(marker_dir)
    print(generated)
    if "--check" in sys.argv:
        readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
        current = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
        if current != generated:
            print("\nREADME.md's compatibility matrix differs from what the tests ran; replace the "
                  f"part between {BEGIN} and {END} with the table above.", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
