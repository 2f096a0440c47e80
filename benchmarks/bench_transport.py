"""Transport throughput against each real virtiofsd.

Per daemon: GETATTR round trips per second with 1 and 32 requests in flight, and READ
MB/s with 128 KiB reads with 1 and 16 in flight. Two layers are measured:

* ``client``: the full stack, every request built by the Session (codec encode plus the
  session's own decode check) and every reply paired and decoded by it;
* ``transport``: bytes built once by the codec and replayed; replies are copied out of
  guest memory but not decoded. This is what the vhost-user/virtqueue layer can move.

Run: ``.venv/bin/python benchmarks/bench_transport.py [--seconds 2] [--daemon c|rust]``.
Targets (issue 3): >= 25k/s with 1 in flight, >= 100k/s with 32, >= 1.5 GB/s reading.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from construct import Container

from fuseproto.client import OUT_HEADER_SIZE, Client
from fuseproto.transport import daemons
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.wire import codec
from fuseproto.wire.constants import FUSE_ROOT_ID, fuse_opcode

READ_SIZE = 128 << 10
FILE_SIZE = 64 << 20
TARGETS = {"getattr x1": 25_000, "getattr x32": 100_000, "read x16": 1.5e9}


def _timed(seconds: float, batch) -> tuple[int, float]:
    """Run ``batch()`` (returns operations done) until ``seconds`` pass."""
    n, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        n += batch()
        now = time.perf_counter()
        if now >= end:
            return n, now - start


def bench_client(c: Client, nodeid: int, fh: int, seconds: float) -> dict[str, float]:
    out = {}
    getattr_body = Container(getattr_flags=0, dummy=0, fh=0)
    for depth in (1, 32):
        def batch(depth=depth):
            pend = [c.submit(fuse_opcode.FUSE_GETATTR, getattr_body, nodeid=FUSE_ROOT_ID,
                             kick=False) for _ in range(depth)]
            c.kick()
            for p in pend:
                c.result(p)
            return depth
        batch()
        n, dt = _timed(seconds, batch)
        out[f"getattr x{depth}"] = n / dt
    for depth in (1, 16):
        offsets = iter(range(0, 1 << 62, READ_SIZE))

        def rbatch(depth=depth, offsets=offsets):
            pend = [c.submit_read(nodeid, fh, next(offsets) % FILE_SIZE, READ_SIZE, kick=False)
                    for _ in range(depth)]
            c.kick()
            got = 0
            for p in pend:
                got += len(c.result(p).data)
            return got
        rbatch()
        n, dt = _timed(seconds, rbatch)
        out[f"read x{depth}"] = n / dt
    return out


def bench_transport(t: VhostUserTransport, nodeid: int, fh: int, minor: int,
                    seconds: float) -> dict[str, float]:
    out = {}
    req = codec.encode_request(fuse_opcode.FUSE_GETATTR, Container(getattr_flags=0, dummy=0,
                               fh=0), unique=1 << 40, nodeid=FUSE_ROOT_ID, minor=minor)
    reply_size = OUT_HEADER_SIZE + 4096
    for depth in (1, 32):
        def batch(depth=depth):
            toks = [t.submit(req, reply_size, kick=False) for _ in range(depth)]
            t.kick(1)
            for tok in toks:
                t.wait(tok)
            return depth
        batch()
        n, dt = _timed(seconds, batch)
        out[f"getattr x{depth}"] = n / dt
    reads = [codec.encode_request(fuse_opcode.FUSE_READ, Container(
        fh=fh, offset=off, size=READ_SIZE, read_flags=0, lock_owner=0, flags=0, padding=0),
        unique=(1 << 40) + 2 + 2 * i, nodeid=nodeid, minor=minor)
        for i, off in enumerate(range(0, FILE_SIZE, READ_SIZE))]
    for depth in (1, 16):
        it = iter(range(1 << 62))

        def rbatch(depth=depth, it=it):
            toks = [t.submit(reads[next(it) % len(reads)], OUT_HEADER_SIZE + READ_SIZE,
                             kick=False) for _ in range(depth)]
            t.kick(1)
            return sum(len(t.wait(tok)) - OUT_HEADER_SIZE for tok in toks)
        rbatch()
        n, dt = _timed(seconds, rbatch)
        out[f"read x{depth}"] = n / dt
    return out


def run(kind: str, seconds: float, mode: str) -> dict[str, dict[str, float]]:
    inst = daemons.install(kind)
    root = tempfile.mkdtemp(prefix="fuseproto-bench-")
    try:
        with open(os.path.join(root, "data"), "wb") as f:
            f.write(os.urandom(1 << 20) * (FILE_SIZE >> 20))
        t = VhostUserTransport.spawn(inst, root, mode=mode, queue_size=256,
                                     memory_size=64 << 20)
        try:
            c = Client(t)
            c.init()
            e = c.lookup(FUSE_ROOT_ID, "data")
            o = c.open(e.nodeid)
            c.read(e.nodeid, o.fh, 0, READ_SIZE)
            return {
                "client": bench_client(c, e.nodeid, o.fh, seconds),
                "transport": bench_transport(t, e.nodeid, o.fh, c.session.minor, seconds),
            }
        finally:
            t.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _fmt(key: str, value: float) -> str:
    if key.startswith("read"):
        return f"{value / 1e9:6.2f} GB/s"
    return f"{value / 1e3:6.1f} k/s "


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--daemon", choices=daemons.KINDS, action="append")
    ap.add_argument("--mode", choices=["poll", "eventfd"], default="poll")
    args = ap.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, mode={args.mode}, "
          f"{args.seconds} s per figure")
    keys = ["getattr x1", "getattr x32", "read x1", "read x16"]
    print(f"{'daemon':6} {'layer':10} " + " ".join(f"{k:>13}" for k in keys))
    for kind in args.daemon or daemons.KINDS:
        res = run(kind, args.seconds, args.mode)
        for layer, figures in res.items():
            print(f"{kind:6} {layer:10} " + " ".join(f"{_fmt(k, figures[k]):>13}" for k in keys))
    print("targets:          " + " ".join(
        f"{('>= ' + _fmt(k, TARGETS[k]).strip()) if k in TARGETS else '':>13}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
