"""The recording proxy's cost (issue 12 §5): the same client workload against a real
virtiofsd directly and through ``fuseproto capture proxy``, in the same run.

Per daemon: GETATTR with 1 and 32 in flight (round trips/s) and READ of 128 KiB with 16
in flight (MB/s), from fuseproto's own frontend and client. The proxy is the CLI, as a
user runs it (its own process, starting the daemon, writing the pcap). Printed: each
figure direct and through the proxy, their ratio, and for GETATTR x1 the microseconds the
proxy adds to each request (1/rate through the proxy minus 1/rate direct). After each
proxied run the capture is checked: records written, annotations (replies the proxy lost
to a driver that reused a buffer first would show there).

The frontend waits for calls (``mode="interrupt"``, as a guest driver does): the proxy
reads the rings before it forwards each kick and call, which is what it costs. (A
frontend that busy-polls the used ring never waits for a call, so a proxy in that path
would add only the kick's delay, and could not record reliably.)

The READs are measured once more with ``--snaplen 256`` (the proxy then reads and writes
256 bytes of each 128 KiB reply, as tcpdump -s would). Run:
``.venv/bin/python benchmarks/bench_proxy.py [--seconds 2] [--daemon c|rust]
[--repeat N]``. Target (issue 12): through the proxy >= 0.7x direct for GETATTR x32 and
READ x16. Figures on a shared 2-CPU machine are noisy: the best of ``--repeat`` runs is
kept for each.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from construct import Container

from fuseproto import daemons
from fuseproto.capture import decode_capture
from fuseproto.client import Client
from fuseproto.transport.vhost_user import VhostUserTransport
from fuseproto.wire.constants import FUSE_ROOT_ID, fuse_opcode

READ_SIZE = 128 << 10
FILE_SIZE = 16 << 20
GETATTR = Container(getattr_flags=0, dummy=0, fh=0)
KEYS = ("getattr x1", "getattr x32", "read 128k x16")
SNAP = "  --snaplen 256"  # the same READs, the proxy recording 256 bytes of each
TARGETS = {"getattr x32": 0.7, "read 128k x16": 0.7}


def _timed(seconds: float, batch: Callable[[], int]) -> float:
    n, start = 0, time.perf_counter()
    while True:
        n += batch()
        now = time.perf_counter()
        if now - start >= seconds:
            return n / (now - start)


def workload(c: Client, seconds: float, keys: tuple[str, ...] = KEYS) -> dict[str, float]:
    e = c.lookup(FUSE_ROOT_ID, "data")
    fh = c.open(e.nodeid).fh
    out = {}

    def x1(n: int = 32) -> int:
        for _ in range(n):
            c.getattr(FUSE_ROOT_ID)
        return n

    def x32() -> int:
        pend = [c.submit(fuse_opcode.FUSE_GETATTR, GETATTR, nodeid=FUSE_ROOT_ID, kick=False)
                for _ in range(32)]
        c.kick()
        for p in pend:
            c.result(p)
        return 32

    offsets = iter(range(0, 1 << 62, READ_SIZE))

    def reads() -> int:
        pend = [c.submit_read(e.nodeid, fh, next(offsets) % FILE_SIZE, READ_SIZE, kick=False)
                for _ in range(16)]
        c.kick()
        return sum(len(c.result(p).data) for p in pend)

    for key, batch in (("getattr x1", x1), ("getattr x32", x32), ("read 128k x16", reads)):
        if key not in keys:
            continue
        batch()
        out[key] = _timed(seconds, batch)
    return out


def direct(inst: daemons.Installation, share: str, seconds: float) -> dict[str, float]:
    with VhostUserTransport.spawn(inst, share, mode="interrupt", memory_size=64 << 20) as t:
        c = Client(t)
        c.init()
        return workload(c, seconds)


def proxied(daemon: str, share: str, seconds: float, scratch: str,
            extra: tuple[str, ...] = (), keys: tuple[str, ...] = KEYS) -> tuple[dict, dict]:
    listen = os.path.join(scratch, "vmm.sock")
    pcap = os.path.join(scratch, "bench.pcap")
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fuseproto", "capture", "proxy", "--listen", listen,
         "--daemon", daemon, "--shared-dir", share, "-w", pcap, "--ready-fd", str(w),
         "--quiet", *extra], pass_fds=(w,))
    os.close(w)
    try:
        if not select.select([r], [], [], 30)[0] or os.read(r, 10) != b"ready\n":
            raise RuntimeError("the proxy did not become ready")
        with VhostUserTransport(listen, mode="interrupt", memory_size=64 << 20,
                                timeout=10) as t:
            c = Client(t)
            c.init()
            cpu0 = _cpu_seconds(proc.pid)
            figures = workload(c, seconds, keys)
            cpu = _cpu_seconds(proc.pid) - cpu0
        if proc.wait(30) != 0:
            raise RuntimeError(f"the proxy exited with {proc.returncode}")
    finally:
        os.close(r)
        if proc.poll() is None:
            proc.kill()  # by PID
            proc.wait()
    kinds: dict[str, int] = {}
    for m in decode_capture(pcap):
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
        if m.error is not None:
            kinds["errors"] = kinds.get("errors", 0) + 1
    os.unlink(pcap)
    kinds["cpu_us_per_request"] = round(cpu / max(1, kinds.get("request", 1)) * 1e6)
    return figures, kinds


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/PID/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per figure (default 2)")
    ap.add_argument("--daemon", choices=("c", "rust"), action="append",
                    help="daemon(s) to measure (default both)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate direct and proxied N times, keep the best of each")
    args = ap.parse_args()
    for kind in args.daemon or ["c", "rust"]:
        inst = daemons.install(kind)
        scratch = tempfile.mkdtemp(prefix="fuseproto-bench-proxy-")
        try:
            share = os.path.join(scratch, "share")
            os.mkdir(share)
            with open(os.path.join(share, "data"), "wb") as f:
                f.write(os.urandom(1 << 20) * (FILE_SIZE >> 20))
            best_d: dict[str, float] = {}
            best_p: dict[str, float] = {}
            kinds: dict[str, int] = {}
            for _ in range(args.repeat):
                d = direct(inst, share, args.seconds)
                p, kinds = proxied(kind, share, args.seconds, scratch)
                cut, _ = proxied(kind, share, args.seconds, scratch, ("--snaplen", "256"),
                                 ("read 128k x16",))
                p[SNAP] = cut["read 128k x16"]
                d[SNAP] = d["read 128k x16"]
                for k in (*KEYS, SNAP):
                    best_d[k] = max(best_d.get(k, 0.0), d[k])
                    best_p[k] = max(best_p.get(k, 0.0), p[k])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"{kind} virtiofsd {inst.version} (mode=interrupt, best of {args.repeat}, "
              f"{args.seconds:g} s each)")
        print(f"  {'':<16}{'direct':>14}{'via proxy':>14}{'ratio':>8}  target")
        for k in (*KEYS, SNAP):
            unit, scale = ("MB/s", 1e-6) if k in (KEYS[2], SNAP) else ("/s", 1.0)
            ratio = best_p[k] / best_d[k]
            target = TARGETS.get(k)
            verdict = "" if target is None else (
                f">= {target}x {'ok' if ratio >= target else 'MISSED'}")
            print(f"  {k:<16}{best_d[k] * scale:>10.0f}{unit:<4}{best_p[k] * scale:>10.0f}"
                  f"{unit:<4}{ratio:>7.2f}x  {verdict}")
        added = (1 / best_p["getattr x1"] - 1 / best_d["getattr x1"]) * 1e6
        print(f"  per request (getattr x1): direct {1e6 / best_d['getattr x1']:.1f} us, "
              f"via proxy {1e6 / best_p['getattr x1']:.1f} us: the proxy adds {added:.1f} us")
        print(f"  last capture: {kinds.get('request', 0)} requests, {kinds.get('reply', 0)} "
              f"replies, {kinds.get('annotation', 0)} annotations, "
              f"{kinds.get('errors', 0)} decode/protocol errors; the proxy's CPU time "
              f"{kinds['cpu_us_per_request']} us per request (all three workloads)")
        print(f"  machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
