"""Transport throughput against each real virtiofsd.

Per daemon: GETATTR round trips per second with 1 and 32 requests in flight, and READ
MB/s with 128 KiB reads with 1 and 16 in flight. Two layers are measured:

* ``client``: the full stack, every request built by the Session (codec encode plus the
  session's own decode check) and every reply paired and decoded by it;
* ``transport``: bytes built once by the codec and replayed; replies are copied out of
  guest memory but not decoded. This is what the vhost-user/virtqueue layer can move.

Two ways to have 1 GETATTR in flight through the client: ``x1`` (``client.getattr()`` in
a loop: build, send, wait, decode, repeat) and ``x1 chained`` (the next request is built
while the current one is with the daemon and sent as soon as its reply is in, before that
reply is decoded: ``Client.prepare`` + ``Client.result(p, then=next)``); the daemon never
holds more than one. ``x32``: 32 requests built and published, one kick, then all 32
collected, in a loop.

Each daemon is measured in two placements (``--placement``): ``spread`` (the scheduler
puts the daemon and the frontend where it likes: on 2 CPUs, usually apart) and
``colocated`` (``VhostUserTransport.spawn(colocate=True)``: both pinned to one CPU). With
one request in flight the spread placement pays a cross-CPU wake-up per request: in a VM
whose idle vCPUs halt, more than the whole round trip costs otherwise.

``--breakdown`` prints the per-operation Python cost of each layer, measured in-process
with the real VhostUserTransport/virtqueue code and a loopback device played in Python
(its own time subtracted): what one core can do at best, whatever the daemon; and raw
transport x1 with a busy pause of 0-20 us after each reply, which shows the price of any
work between a reply and the next kick (the daemon's thread goes to sleep).

Run: ``.venv/bin/python benchmarks/bench_transport.py [--seconds 2] [--daemon c|rust]
[--virtiofsd PATH] [--repeat N] [--placement spread|colocated|both] [--breakdown]
[--indirect]``. ``--indirect`` negotiates
VIRTIO_RING_F_INDIRECT_DESC: every request of two or more segments then goes through an
indirect table (one ring slot each).
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

from fuseproto import daemons
from fuseproto.client import OUT_HEADER_SIZE, Client
from fuseproto.errors import DaemonError
from fuseproto.session import Session
from fuseproto.transport.vhost_user import Negotiated, VhostUserTransport
from fuseproto.transport.virtqueue import (
    U16,
    VIRTQ_DESC,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_ELEM,
    GuestMemory,
    SplitVirtqueue,
)
from fuseproto.wire import codec
from fuseproto.wire.constants import FUSE_ROOT_ID, fuse_opcode

READ_SIZE = 128 << 10
FILE_SIZE = 64 << 20
TARGETS = {"getattr x1": 25_000, "getattr x1 chained": 25_000, "getattr x32": 100_000,
           "read x16": 1.5e9}
KEYS = ["getattr x1", "getattr x1 chained", "getattr x32", "read x1", "read x16"]
GETATTR_BODY = Container(getattr_flags=0, dummy=0, fh=0)


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
    getattr_body = GETATTR_BODY

    def sync(n=64):  # one in flight: the plain synchronous call
        for _ in range(n):
            c.getattr(FUSE_ROOT_ID)
        return n
    sync()
    n, dt = _timed(seconds, sync)
    out["getattr x1"] = n / dt

    def batch(depth=32):  # 32 in flight: built, published, one kick, then collected
        pend = [c.submit(fuse_opcode.FUSE_GETATTR, getattr_body, nodeid=FUSE_ROOT_ID,
                         kick=False) for _ in range(depth)]
        c.kick()
        for p in pend:
            c.result(p)
        return depth
    batch()
    n, dt = _timed(seconds, batch)
    out["getattr x32"] = n / dt
    # One in flight, the next built while it is with the daemon.
    cur = [c.submit(fuse_opcode.FUSE_GETATTR, getattr_body, nodeid=FUSE_ROOT_ID)]

    def chained(n=64):
        p = cur[0]
        for _ in range(n):
            nxt = c.prepare(fuse_opcode.FUSE_GETATTR, getattr_body, nodeid=FUSE_ROOT_ID)
            c.result(p, then=nxt)
            p = nxt
        cur[0] = p
        return n
    n, dt = _timed(seconds, chained)
    c.result(cur[0])
    out["getattr x1 chained"] = n / dt
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


PAUSES_US = (0, 2, 5, 10, 20)


def bench_pauses(t: VhostUserTransport, minor: int, seconds: float) -> dict[int, tuple]:
    """Raw GETATTR x1 with a busy pause of P us between each reply and the next request:
    (round trips/s, us per kick, us per wait). Shows what any work between a reply and
    the next kick costs: past a few us the daemon's thread sleeps and waking it is dear."""
    req = codec.encode_request(fuse_opcode.FUSE_GETATTR, GETATTR_BODY, unique=1 << 40,
                               nodeid=FUSE_ROOT_ID, minor=minor)
    size = OUT_HEADER_SIZE + 4096
    pc = time.perf_counter
    out = {}
    for pause in PAUSES_US:
        n, kick_s, wait_s = 0, 0.0, 0.0
        start = pc()
        end = start + seconds
        while True:
            tok = t.submit(req, size, kick=False)
            a = pc()
            t.kick(1)
            b = pc()
            t.wait(tok)
            now = pc()
            kick_s += b - a
            wait_s += now - b
            n += 1
            if now >= end:
                break
            until = now + pause * 1e-6
            while pc() < until:
                pass
        out[pause] = (n / (now - start), kick_s / n * 1e6, wait_s / n * 1e6)
    return out


def run(inst: daemons.Installation, seconds: float, mode: str,
        repeat: int = 1, pauses: bool = False, indirect: bool = False,
        colocate: bool = False) -> dict[str, dict]:
    root = tempfile.mkdtemp(prefix="fuseproto-bench-")
    try:
        with open(os.path.join(root, "data"), "wb") as f:
            f.write(os.urandom(1 << 20) * (FILE_SIZE >> 20))
        t = VhostUserTransport.spawn(inst, root, mode=mode, queue_size=256,
                                     memory_size=64 << 20, indirect=indirect,
                                     colocate=colocate)
        if indirect and not t.negotiated.indirect_desc:
            print(f"{inst.kind}: the daemon does not offer indirect descriptors",
                  file=sys.stderr)
        try:
            c = Client(t)
            c.init()
            e = c.lookup(FUSE_ROOT_ID, "data")
            o = c.open(e.nodeid)
            c.read(e.nodeid, o.fh, 0, READ_SIZE)
            # Layers alternate, back to back, `repeat` times; the best figure of each is
            # kept (other load on the machine only ever lowers a figure).
            out: dict[str, dict[str, float]] = {"client": {}, "transport": {}}
            for _ in range(repeat):
                for layer, figures in (
                    ("client", bench_client(c, e.nodeid, o.fh, seconds)),
                    ("transport", bench_transport(t, e.nodeid, o.fh, c.session.minor,
                                                  seconds)),
                ):
                    for k, v in figures.items():
                        out[layer][k] = max(v, out[layer].get(k, 0.0))
            if pauses:
                out["pauses"] = bench_pauses(t, c.session.minor, min(seconds, 0.5))
            return out
        finally:
            t.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


class LoopbackTransport(VhostUserTransport):
    """The real submit/kick/wait/virtqueue code with no daemon: ``kick`` plays the device
    in-process (walks each new chain, writes ``reply_for(request)`` into its writable
    area, publishes it in the used ring) and adds its own time to ``device_s``, which the
    breakdown subtracts. Measurement only: it skips the vhost-user handshake."""

    def __init__(self, reply_for, queue_size: int = 256):  # noqa: D107 -- no super(): no socket
        self.socket_path, self.daemon, self.own_daemon = "<loopback>", None, False
        self.queue_size, self.request_queues, self.mode = queue_size, 1, "poll"
        self.spin_s, self.timeout, self.backend_handler, self.tap = 0.0005, 5.0, None, None
        self.negotiated, self.kick_fds, self.call_fds = Negotiated(), [], []
        self.sock, self.backend, self._broken, self._closed = None, None, None, False
        self._next_queue, self._tmpdir, self._restore_affinity = 0, None, None
        self.mem = GuestMemory(8 << 20)
        self.queues = [SplitVirtqueue(self.mem, i, queue_size) for i in range(2)]
        self._dev = [[0, 0], [0, 0]]  # per queue: device's last avail, used index
        self.reply_for = reply_for
        self.device_s = 0.0

    def kick(self, queue: int = 1) -> None:
        t0 = time.perf_counter()
        vq = self.queues[queue]
        # The ring as the device sees it (virtio 1.x 2.7.6 / 2.7.8): avail flags, idx,
        # ring[]; used flags, idx, ring[].
        mm, mask, gpa = self.mem.mm, vq.size - 1, self.mem.gpa_base
        avail = U16.unpack_from(mm, vq.avail_off + 2)[0]
        last, used = self._dev[queue]
        while last != avail:
            head = U16.unpack_from(mm, vq.avail_off + 4 + 2 * (last & mask))[0]
            last = (last + 1) & 0xFFFF
            i, req, area = head, b"", None
            while True:
                addr, ln, fl, nxt = VIRTQ_DESC.unpack_from(mm, vq.desc_off + 16 * i)
                if fl & VIRTQ_DESC_F_WRITE:
                    area = area or addr - gpa
                else:
                    req += mm[addr - gpa:addr - gpa + ln]
                if not fl & VIRTQ_DESC_F_NEXT:
                    break
                i = nxt
            n = 0
            if area is not None:
                reply = self.reply_for(req)
                n = len(reply)
                mm[area:area + n] = reply
            VIRTQ_USED_ELEM.pack_into(mm, vq.used_off + 4 + 8 * (used & mask), head, n)
            used = (used + 1) & 0xFFFF
        U16.pack_into(mm, vq.used_off + 2, used)
        self._dev[queue] = [last, used]
        self.device_s += time.perf_counter() - t0


def breakdown(n: int = 64 * 1024) -> list[tuple[str, float, float]]:
    """Per-GETATTR Python cost (us) of each layer at 1 and 32 per batch; best of 3."""
    attr = Container(attr_valid=1, attr_valid_nsec=0, dummy=0, attr=Container(
        ino=1, size=0, blocks=0, atime=0, mtime=0, ctime=0, atimensec=0, mtimensec=0,
        ctimensec=0, mode=0o40755, nlink=2, uid=0, gid=0, rdev=0, blksize=4096, flags=0))
    tmpl = codec.encode_reply(fuse_opcode.FUSE_GETATTR, attr, unique=2)

    def reply_for(req: bytes) -> bytes:  # the reply, with the request's unique
        return tmpl[:8] + req[8:16] + tmpl[16:]

    op, body, size = fuse_opcode.FUSE_GETATTR, GETATTR_BODY, OUT_HEADER_SIZE + 4096
    raw_req = codec.encode_request(op, body, unique=1 << 40, nodeid=FUSE_ROOT_ID)

    def best(fn) -> float:
        return min(fn() for _ in range(3))

    def codec_us(depth: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            req = codec.make_request(op, body, unique=2 + 2 * i, nodeid=FUSE_ROOT_ID)
            codec.decode_reply(reply_for(raw_req), req).body  # noqa: B018 -- decoded
        return (time.perf_counter() - t0) / n * 1e6

    def session_us(depth: int) -> float:
        s = Session()
        t0 = time.perf_counter()
        for _ in range(n // depth):
            datas = [s.build_request(op, body, nodeid=FUSE_ROOT_ID)[1] for _ in range(depth)]
            for d in datas:
                s.feed_reply(reply_for(d)).body  # noqa: B018
        return (time.perf_counter() - t0) / n * 1e6

    def transport_us(depth: int) -> float:
        t = LoopbackTransport(reply_for)
        try:
            t0 = time.perf_counter()
            for _ in range(n // depth):
                toks = [t.submit(raw_req, size, kick=False) for _ in range(depth)]
                t.kick(1)
                for tok in toks:
                    t.wait(tok)
            return (time.perf_counter() - t0 - t.device_s) / n * 1e6
        finally:
            t.close()

    def client_us(depth: int) -> float:
        t = LoopbackTransport(reply_for)
        c = Client(t)
        try:
            t0 = time.perf_counter()
            for _ in range(n // depth):
                pend = [c.submit(op, body, nodeid=FUSE_ROOT_ID, kick=False)
                        for _ in range(depth)]
                c.kick()
                for p in pend:
                    c.result(p)
            return (time.perf_counter() - t0 - t.device_s) / n * 1e6
        finally:
            t.close()

    rows = []
    for depth in (1, 32):
        cod, ses, tra, cli = (best(lambda f=f, d=depth: f(d)) for f in (
            codec_us, session_us, transport_us, client_us))
        rows.append((depth, cod, ses, tra, cli))
    return rows


def print_breakdown() -> None:
    print("per-GETATTR Python cost, in-process loopback device (us/op, best of 3):")
    print(f"{'batch':>5} {'codec':>7} {'session':>8} {'transport':>10} {'client':>7} "
          f"{'= total':>8} {'1-core ceiling':>15}")
    for depth, cod, ses, tra, cli in breakdown():
        # session includes the codec; the client over the loopback includes everything.
        own_client = max(0.0, cli - ses - tra)
        target = TARGETS["getattr x1" if depth == 1 else "getattr x32"]
        ceiling = 1e6 / cli
        print(f"{'x' + str(depth):>5} {cod:7.2f} {ses - cod:8.2f} {tra:10.2f} {own_client:7.2f} "
              f"{cli:8.2f} {ceiling / 1e3:9.1f} k/s ({ceiling / target:.2f}x target)")
    print("(codec: encode_request + decode_reply; session: its own checks on top; "
          "transport: submit/kick/wait\n on the real ring code; client: the rest. The ceiling "
          "ignores the daemon and the wake-up latency.)")


def _fmt(key: str, value: float) -> str:
    if key.startswith("read"):
        return f"{value / 1e9:.2f} GB/s"
    return f"{value / 1e3:.1f} k/s"


def _cell(key: str, figures: dict[str, float]) -> str:
    if key not in figures:
        return "-"
    text = _fmt(key, figures[key])
    if key in TARGETS:
        text += f" ({figures[key] / TARGETS[key]:.2f}x)"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--daemon", choices=daemons.KINDS, action="append")
    ap.add_argument("--virtiofsd", metavar="PATH", action="append", default=[],
                    help="benchmark this virtiofsd binary (kind guessed from --help); "
                         "repeatable; with it, --daemon adds installed ones")
    ap.add_argument("--mode", choices=["poll", "eventfd"], default="poll")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each figure this many times (layers alternating), keep the best")
    ap.add_argument("--indirect", action="store_true",
                    help="negotiate indirect descriptors (one ring slot per request)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also print the per-operation cost of each layer (in-process)")
    ap.add_argument("--placement", choices=["spread", "colocated", "both"], default="both",
                    help="spread: daemon and frontend wherever the scheduler puts them; "
                         "colocated: both pinned to one CPU (spawn(colocate=True)); "
                         "default both")
    args = ap.parse_args(argv)
    placements = ["spread", "colocated"] if args.placement == "both" else [args.placement]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, mode={args.mode}, "
          f"indirect={'on' if args.indirect else 'off'}, "
          f"{args.seconds} s per figure, best of {args.repeat}; (n.nnx) = ratio to the target")
    installs = []
    for path in args.virtiofsd:
        try:
            inst = daemons.Installation.from_path(path)
        except DaemonError as e:
            print(f"--virtiofsd {path}: {e}", file=sys.stderr)
            return 2
        installs.append((f"{inst.kind}:{os.path.basename(path)}", inst))
    if args.daemon or not args.virtiofsd:
        installs += [(kind, daemons.install(kind)) for kind in args.daemon or daemons.KINDS]
    width = max(6, *(len(label) for label, _ in installs))
    print(f"{'daemon':{width}} {'cpus':10} {'layer':10} " + " ".join(f"{k:>19}" for k in KEYS))
    pauses = {}
    client: dict[str, dict[str, tuple[float, str]]] = {}  # daemon -> key -> best, placement
    for label, inst in installs:
        for placement in placements:
            res = run(inst, args.seconds, args.mode, args.repeat,
                      pauses=args.breakdown and placement == placements[0],
                      indirect=args.indirect, colocate=placement == "colocated")
            if "pauses" in res:
                pauses[label] = res.pop("pauses")
            for layer, figures in res.items():
                print(f"{label:{width}} {placement:10} {layer:10} " + " ".join(
                    f"{_cell(k, figures):>19}" for k in KEYS))
            for k, v in res["client"].items():
                if v > client.setdefault(label, {}).get(k, (0.0, ""))[0]:
                    client[label][k] = (v, placement)
    print(f"{'targets':{width + 22}} " + " ".join(
        f"{('>= ' + _fmt(k, TARGETS[k])) if k in TARGETS else '':>19}" for k in KEYS))
    print("\nclient layer against the targets, each figure in its best placement:")
    for k in ("getattr x1", "getattr x32", "read x16"):
        cells = [f"{label} {_fmt(k, v)} ({where}) {v / TARGETS[k]:.2f}x "
                 f"{'met' if v >= TARGETS[k] else 'NOT met'}"
                 for label, figs in client.items() for v, where in [figs[k]]]
        print(f"  {k:12} " + "; ".join(cells))
    if args.breakdown:
        print()
        print_breakdown()
        print()
        print("raw GETATTR x1 (transport layer) with a busy pause after each reply: "
              "k/s, us per kick, us per wait")
        print(f"{'daemon':{width}} " + " ".join(f"{f'pause {p} us':>22}" for p in PAUSES_US))
        for label, res in pauses.items():
            print(f"{label:{width}} " + " ".join(
                f"{f'{r / 1e3:.1f}k {k:.1f} {w:.1f}':>22}" for r, k, w in
                (res[p] for p in PAUSES_US)))
        print("(the client puts its per-op Python time, above, between a reply and the "
              "next kick at x1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
