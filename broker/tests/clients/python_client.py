"""Drives a running broker with the official Python client (PyPI rocketmq-python-client).

Usage: python_client.py SCENARIO ENDPOINT TOPIC GROUP
Prints one JSON object per line; the Rust test harness (tests/clients.rs) checks them.
Scenarios:
  send_receive_ack  send 10 messages with tags/keys/properties, receive and ack them all
  send N            send N messages, print their ids
  receive_ack N     receive until N messages arrived, ack them, print their ids
  receive_no_ack N  receive N messages and do not ack them
  receive_some N K  receive N messages, ack only the first K
Environment: RMQ_INVISIBLE_SECS sets the invisible duration of receives (default 15).
  unknown_topic     send to a topic that does not exist, print the error
  oversized         send a 5 MiB body, print the error
"""
import json
import os
import sys
import time

from rocketmq import ClientConfiguration, Credentials, FilterExpression, Message, Producer, SimpleConsumer


def out(**kw):
    print(json.dumps(kw), flush=True)


def config(endpoint):
    return ClientConfiguration(endpoint, Credentials(), request_timeout=10)


def producer(endpoint, topic):
    p = Producer(config(endpoint), (topic,))
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
    c = SimpleConsumer(config(endpoint), group, {topic: FilterExpression(expr)}, await_duration=5)
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
        except Exception as e:  # the client raises on MESSAGE_NOT_FOUND in some versions
            out(event="receive_error", error=str(e))
            msgs = []
        for m in msgs or []:
            got.append(m)
            if ack:
                c.ack(m)
    return got


def main():
    scenario, endpoint, topic, group = sys.argv[1:5]
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    if scenario == "send_receive_ack":
        p = producer(endpoint, topic)
        ids = []
        for i in range(10):
            r = p.send(message(topic, f"hello-{i}".encode(), tag="TagA", keys=(f"key-{i}",), props={"idx": str(i)}))
            ids.append(r.message_id)
        p.shutdown()
        c = consumer(endpoint, topic, group)
        got = receive(c, 10, ack=True)
        c.shutdown()
        out(sent=ids, received=[{
            "id": m.message_id, "body": m.body.decode(), "tag": m.tag, "keys": list(m.keys),
            "props": dict(m.properties), "attempt": m.delivery_attempt,
        } for m in got])
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
