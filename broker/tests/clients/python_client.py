"""Drives a running broker with the official Python client (PyPI rocketmq-python-client).

Usage: python_client.py SCENARIO ENDPOINT TOPIC GROUP
Prints one JSON object per line; the Rust test harness (tests/clients.rs) checks them.
Scenarios:
  send_receive_ack  send 10 messages with tags/keys/properties, receive and ack them all
  send_only         the 10 messages of send_receive_ack; prints {"sent": [ids]}
  receive_only      receive and ack what arrives within RMQ_RECEIVE_DEADLINE_SECS (default 5) s;
                    prints {"received": [...]} (as send_receive_ack prints them)
  send N            send N messages, print their ids
  receive_ack N     receive until N messages arrived, ack them, print their ids
  receive_no_ack N  receive N messages and do not ack them
  receive_some N K  receive N messages, ack only the first K
  unknown_topic     send to a topic that does not exist, print the error
  oversized         send a 5 MiB body, print the error
Environment: RMQ_INVISIBLE_SECS sets the invisible duration of receives (default 15).
  RMQ_ACCESS_KEY and RMQ_SECRET_KEY sign requests with these credentials.
  RMQ_TLS=1 / RMQ_TLS=0 turns TLS on / off (default off); with TLS the client verifies the
  server certificate against gRPC's default roots (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names a
  PEM file to use instead).
A refused request (UNAUTHORIZED, FORBIDDEN) ends the script with a traceback and exit status 1.
"""
import json
import logging
import os
import re
import sys
import time

from rocketmq import ClientConfiguration, Credentials, FilterExpression, Message, Producer, SimpleConsumer
from rocketmq.v5.exception import ForbiddenException, UnauthorizedException
from rocketmq.v5.log import logger as client_logger

# RMQ_TLS: "1" on, "0" off, otherwise the client's default (off).
TLS = {"1": {"tls_enable": True}, "0": {"tls_enable": False}}.get(os.environ.get("RMQ_TLS"), {})


class ClientErrors(logging.Handler):
    """Repeats the client's error log (kept in ~/logs) on stderr, and remembers a refused
    request: a refused route query (status 40100 UNAUTHORIZED, 40300 FORBIDDEN) is only logged
    by the client, which then raises a bare "failed to fetch topic route"."""
    refused = None

    def emit(self, record):
        msg = record.getMessage()
        print(f"client error log: {msg}", file=sys.stderr, flush=True)
        if re.search(r"\b(40100|40300), ", msg):
            ClientErrors.refused = msg


client_logger.addHandler(ClientErrors(logging.ERROR))


def out(**kw):
    print(json.dumps(kw), flush=True)


def config(endpoint):
    if "RMQ_ACCESS_KEY" in os.environ:
        creds = Credentials(os.environ["RMQ_ACCESS_KEY"], os.environ.get("RMQ_SECRET_KEY", ""))
    else:
        creds = Credentials()
    return ClientConfiguration(endpoint, creds, request_timeout=10)


def producer(endpoint, topic):
    p = Producer(config(endpoint), (topic,), **TLS)
    p.startup()
    return p


def message(topic, body, tag="TagA", keys=("k1",), props=None):
    m = Message()
    m.topic = topic
    m.body = body
    m.tag = tag
    for k in keys:
        m.keys = k
    for k, v in (props or {}).items():
        m.add_property(k, v)
    return m


def consumer(endpoint, topic, group, expr="*"):
    c = SimpleConsumer(config(endpoint), group, {topic: FilterExpression(expr)}, await_duration=5, **TLS)
    c.startup()
    return c


def receive(c, want, ack, deadline_s=None):
    if deadline_s is None:
        deadline_s = int(os.environ.get("RMQ_RECEIVE_DEADLINE_SECS", "60"))
    got = []
    end = time.time() + deadline_s
    while len(got) < want and time.time() < end:
        try:
            msgs = c.receive(32, int(os.environ.get("RMQ_INVISIBLE_SECS", "15")))
        except (UnauthorizedException, ForbiddenException):
            raise
        except Exception as e:  # the client raises on MESSAGE_NOT_FOUND in some versions
            if ClientErrors.refused:
                raise
            out(event="receive_error", error=str(e))
            msgs = []
        for m in msgs or []:
            got.append(m)
            if ack:
                c.ack(m)
    return got


def view(m):
    return {
        "id": m.message_id, "body": m.body.decode(), "tag": m.tag, "keys": list(m.keys),
        "props": dict(m.properties), "attempt": m.delivery_attempt,
    }


def main():
    scenario, endpoint, topic, group = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    if scenario in ("send_receive_ack", "send_only"):
        p = producer(endpoint, topic)
        ids = []
        for i in range(10):
            r = p.send(message(topic, f"hello-{i}".encode(), tag="TagA", keys=(f"key-{i}",), props={"idx": str(i)}))
            ids.append(r.message_id)
        p.shutdown()
        if scenario == "send_only":
            out(sent=ids)
            return
        c = consumer(endpoint, topic, group)
        got = receive(c, 10, ack=True)
        c.shutdown()
        out(sent=ids, received=[view(m) for m in got])
    elif scenario == "receive_only":
        c = consumer(endpoint, topic, group)
        got = receive(c, float("inf"), ack=True, deadline_s=int(os.environ.get("RMQ_RECEIVE_DEADLINE_SECS", "5")))
        c.shutdown()
        out(received=[view(m) for m in got])
    elif scenario == "send":
        pad = "x" * (int(sys.argv[6]) if len(sys.argv) > 6 else 0)
        p = producer(endpoint, topic)
        ids = [p.send(message(topic, f"m-{i}{pad}".encode())).message_id for i in range(n)]
        p.shutdown()
        out(sent=ids)
    elif scenario in ("receive_ack", "receive_no_ack"):
        c = consumer(endpoint, topic, group)
        got = receive(c, n, ack=(scenario == "receive_ack"))
        c.shutdown()
        out(received=[{"id": m.message_id, "attempt": m.delivery_attempt} for m in got])
    elif scenario == "receive_some":
        k = int(sys.argv[6])
        c = consumer(endpoint, topic, group)
        got = receive(c, n, ack=False)
        for m in got[:k]:
            c.ack(m)
        c.shutdown()
        out(received=[m.message_id for m in got], acked=[m.message_id for m in got[:k]])
    elif scenario == "unknown_topic":
        try:
            p = producer(endpoint, topic)
            p.send(message(topic, b"x"))
            out(error=None)
        except Exception as e:
            out(error=str(e))
    elif scenario == "oversized":
        p = producer(endpoint, topic)
        try:
            p.send(message(topic, b"x" * (5 * 1024 * 1024)))
            out(error=None)
        except Exception as e:
            out(error=str(e))
        p.shutdown()
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
