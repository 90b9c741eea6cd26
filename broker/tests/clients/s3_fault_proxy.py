"""An HTTP proxy in front of an S3-compatible server that injects faults: every FAULT_EVERY-th
request gets a 503 SlowDown or a 500 InternalError without reaching the server, and the one
after it is delayed by up to MAX_DELAY_MS (deterministic counts, so a test always sees faults).
Requests are forwarded byte for byte (Host included, so SigV4 signatures still verify).

Usage: s3_fault_proxy.py LISTEN_PORT UPSTREAM_PORT FAULT_EVERY MAX_DELAY_MS STATS_FILE
Writes "requests N faults F delayed D" to STATS_FILE after every request. Stops when killed.
"""
import http.client
import http.server
import random
import sys
import threading
import time

listen_port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
fault_every, max_delay_ms = int(sys.argv[3]), int(sys.argv[4])
seen = [0]
stats_file = sys.argv[5]
stats = {"requests": 0, "faults": 0, "delayed": 0}
lock = threading.Lock()


def record(key):
    with lock:
        stats["requests"] += 1
        if key:
            stats[key] += 1
        with open(stats_file, "w") as f:
            f.write(f"requests {stats['requests']} faults {stats['faults']} delayed {stats['delayed']}\n")


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with lock:
            seen[0] += 1
            n = seen[0]
        if n % fault_every == 0:
            code, name = random.choice([(503, "SlowDown"), (500, "InternalError")])
            payload = f"<?xml version=\"1.0\"?><Error><Code>{name}</Code><Message>injected</Message></Error>".encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            record("faults")
            return
        delayed = n % fault_every == 1
        if delayed:
            time.sleep(random.random() * max_delay_ms / 1000)
        conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
        headers = {k: v for k, v in self.headers.items()}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() in ("transfer-encoding", "connection", "content-length"):
                continue
            self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()
        record("delayed" if delayed else None)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


server = http.server.ThreadingHTTPServer(("127.0.0.1", listen_port), Proxy)
server.serve_forever()
