#!/usr/bin/env python3
"""Loopback TCP proxy that logs every RocketMQ remoting frame passing through it.

Usage: remoting_trace.py LOG LISTEN_HOST:PORT=TARGET_HOST:PORT[=NAME] ...

Each frame is: int32 total length, int32 (serializeType << 24 | headerLength), header
(JSON, or the ROCKETMQ binary layout when serializeType is 1), body. One JSON line per frame is
appended to LOG with the connection, direction, code, flag, opaque, extFields, remark and the
first bytes of the body; responses carry the request code matched by opaque. If the file named
by $TRACE_LABEL_FILE exists, its content is stored as "label" on every line (write a scenario
name there before running it). Bytes are forwarded unchanged. Stdlib only.
"""
import asyncio
import itertools
import json
import os
import struct
import sys
import time

LOG = None
conn_ids = itertools.count(1)
CONN_PREFIX = "%d." % os.getpid()  # connection ids stay unique across proxy restarts


def label():
    path = os.environ.get("TRACE_LABEL_FILE")
    if path:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            pass
    return ""


def decode_rocketmq_header(h):
    code, lang, version, opaque, flag = struct.unpack(">hbhii", h[:13])
    pos = 13
    (rlen,) = struct.unpack(">i", h[pos:pos + 4])
    pos += 4
    remark = h[pos:pos + rlen].decode("utf-8", "replace") if rlen > 0 else None
    pos += max(rlen, 0)
    (elen,) = struct.unpack(">i", h[pos:pos + 4])
    pos += 4
    ext = {}
    end = pos + elen
    while pos < end:
        (kl,) = struct.unpack(">h", h[pos:pos + 2])
        pos += 2
        k = h[pos:pos + kl].decode()
        pos += kl
        (vl,) = struct.unpack(">i", h[pos:pos + 4])
        pos += 4
        ext[k] = h[pos:pos + vl].decode("utf-8", "replace")
        pos += vl
    return {"code": code, "language": lang, "version": version, "opaque": opaque, "flag": flag,
            "remark": remark, "extFields": ext}


class Side:
    def __init__(self, name, cid, direction, pending):
        self.buf = bytearray()
        self.name, self.cid, self.direction, self.pending = name, cid, direction, pending

    def feed(self, data):
        self.buf += data
        while len(self.buf) >= 8:
            (total,) = struct.unpack(">i", self.buf[:4])
            if len(self.buf) < 4 + total:
                return
            frame = bytes(self.buf[4:4 + total])
            del self.buf[:4 + total]
            self.log(frame)

    def log(self, frame):
        (mark,) = struct.unpack(">I", frame[:4])
        stype, hlen = mark >> 24, mark & 0xFFFFFF
        header = frame[4:4 + hlen]
        body = frame[4 + hlen:]
        try:
            if stype == 0:
                h = json.loads(header.decode("utf-8"))
            else:
                h = decode_rocketmq_header(header)
        except Exception as e:  # keep going: the bytes are forwarded anyway
            h = {"decode_error": str(e), "raw": header[:200].decode("latin-1")}
        flag = h.get("flag", 0)
        is_resp = bool(flag & 1)
        rec = {"t": round(time.time(), 3), "label": label(), "peer": self.name, "conn": CONN_PREFIX + str(self.cid),
               "dir": self.direction, "serialize": "JSON" if stype == 0 else "ROCKETMQ",
               "kind": "response" if is_resp else ("oneway" if flag & 2 else "request")}
        rec.update(h)
        key = (self.cid, h.get("opaque"))
        if is_resp:
            rec["request_code"] = self.pending.pop(key, None)
        else:
            self.pending[key] = h.get("code")
        rec["body_len"] = len(body)
        if body:
            rec["body_head"] = body[:2000].decode("utf-8", "replace")
        LOG.write(json.dumps(rec, ensure_ascii=False) + "\n")
        LOG.flush()


async def pipe(reader, writer, side):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            try:
                side.feed(data)
            except Exception as e:
                LOG.write(json.dumps({"peer": side.name, "conn": CONN_PREFIX + str(side.cid), "parse_error": str(e)}) + "\n")
                side.buf.clear()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


def handler(target, name):
    async def handle(creader, cwriter):
        cid = next(conn_ids)
        try:
            sreader, swriter = await asyncio.open_connection(*target)
        except OSError:
            cwriter.close()
            return
        pending = {}
        client = "%s:%s" % cwriter.get_extra_info("peername")[:2]
        LOG.write(json.dumps({"t": round(time.time(), 3), "label": label(), "peer": name, "conn": CONN_PREFIX + str(cid),
                              "event": "connect", "client": client}) + "\n")
        await asyncio.gather(pipe(creader, swriter, Side(name, cid, "c2s", pending)),
                             pipe(sreader, cwriter, Side(name, cid, "s2c", pending)))
    return handle


async def main():
    global LOG
    LOG = open(sys.argv[1], "a", buffering=1)
    servers = []
    for spec in sys.argv[2:]:
        parts = spec.split("=")
        lh, lp = parts[0].rsplit(":", 1)
        th, tp = parts[1].rsplit(":", 1)
        name = parts[2] if len(parts) > 2 else parts[0]
        servers.append(await asyncio.start_server(handler((th, int(tp)), name), lh, int(lp)))
    print("remoting_trace: listening", file=sys.stderr, flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
