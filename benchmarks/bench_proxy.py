"""The recording proxy's cost (issue 12 §5): the same client workload against a real
virtiofsd directly and through ``fuseproto capture proxy``, in the same run.

Per daemon: GETATTR with 1 and 32 in flight (round trips/s) and READ of 128 KiB with 16
in flight (MB/s), from fuseproto's own frontend and client. The proxy is the CLI, as a
user runs it (its own process, starting the daemon, writing the pcap). Printed: each
figure direct and through the proxy, their ratio, and for GETATTR x1 the microseconds the
proxy adds to each request (1/rate through the proxy minus 1/rate direct). After the run
the captures are checked: records written, annotations (replies the proxy lost to a
driver that reused a buffer first would show there), and the proxy's CPU time (its
Python control plane and its relay, the C data plane) per request.

Interleaved: the direct connection and the proxied ones (whole records, and
``--snaplen 256`` for the READs: the proxy then records 256 bytes of each 128 KiB reply,
as tcpdump -s would) stay open side by side, and each figure is measured in short slices
taken in turn from each connection (``--rounds`` of them, the order alternating). Each
round gives a ratio of neighbouring slices; the median ratio is printed with the spread
of the middle half. On a shared machine whose load changes from second to second this is
what keeps the comparison fair: whole runs one after the other compared the proxy at one
load with the direct path at another.

The frontend waits for calls (``mode="interrupt"``, as a guest driver does): the proxy
reads the rings before it forwards each kick and call, which is what it costs. (A
frontend that busy-polls the used ring never waits for a call, so a proxy in that path
would add only the kick's delay, and could not record reliably.)

Run: ``.venv/bin/python benchmarks/bench_proxy.py [--seconds 2] [--rounds 10]
[--daemon c|rust] [--repeat N]`` (``--seconds``: per figure and connection, in all;
``--repeat N`` multiplies the rounds). Target (issue 12): through the proxy >= 0.7x
direct for GETATTR x32 and READ x16.

For READ x16 with whole replies the run also prints what bounds any recorder of whole
replies on this machine: the rate at which new page-cache pages of the capture's file
system are filled (every recorded byte lands in one), the CPU that costs beside the
direct path's own CPU per byte, and the disk's own rate (O_DIRECT): past the kernel's
dirty-page limit a recording can go no faster than the disk takes it.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import shutil
import statistics
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


def batches(c: Client) -> dict[str, Callable[[], int]]:
    """Each workload as one batch (returns requests made, or bytes read)."""
    e = c.lookup(FUSE_ROOT_ID, "data")
    fh = c.open(e.nodeid).fh

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

    return {"getattr x1": x1, "getattr x32": x32, "read 128k x16": reads}


class Proxied:
    """``fuseproto capture proxy`` (the CLI) starting a daemon, and our client on it."""

    def __init__(self, daemon: str, share: str, scratch: str, name: str,
                 extra: tuple[str, ...] = (), capture_dir: str | None = None) -> None:
        listen = os.path.join(scratch, f"{name}.sock")
        self.pcap = os.path.join(capture_dir or scratch, f"{name}.pcap")
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fuseproto", "capture", "proxy", "--listen", listen,
             "--daemon", daemon, "--shared-dir", share, "-w", self.pcap, "--ready-fd",
             str(w), "--quiet", *extra], pass_fds=(w,))
        os.close(w)
        try:
            if not select.select([r], [], [], 60)[0] or os.read(r, 10) != b"ready\n":
                raise RuntimeError("the proxy did not become ready")
        finally:
            os.close(r)
        self.t = VhostUserTransport(listen, mode="interrupt", memory_size=64 << 20,
                                    timeout=10)
        self.client = Client(self.t)
        self.client.init()
        self.relay = _relay_of(self.proc.pid)
        self.cpu = 0.0  # CPU seconds of the proxy and its relay during the timed slices
        self.requests = 0

    def cpu_now(self) -> float:
        relay = 0.0 if self.relay is None else _cpu_seconds(self.relay)
        return _cpu_seconds(self.proc.pid) + relay

    def writer_cpu(self) -> float:
        """CPU seconds of the relay's threads other than its event loop: the writer that
        copies the records into the capture's page cache (0 without a relay)."""
        if self.relay is None:
            return 0.0
        return sum(_cpu_seconds(self.relay, int(t)) for t in os.listdir(
            f"/proc/{self.relay}/task") if int(t) != self.relay)

    def close(self) -> dict[str, int]:
        """Disconnect (the proxy exits), then what the capture holds."""
        self.t.close()
        try:
            if self.proc.wait(60) != 0:
                raise RuntimeError(f"the proxy exited with {self.proc.returncode}")
        finally:
            if self.proc.poll() is None:
                self.proc.kill()  # by PID
                self.proc.wait()
        kinds: dict[str, int] = {}
        for m in decode_capture(self.pcap):
            kinds[m.kind] = kinds.get(m.kind, 0) + 1
            if m.error is not None:
                kinds["errors"] = kinds.get("errors", 0) + 1
        os.unlink(self.pcap)
        return kinds


def _relay_of(pid: int) -> int | None:
    """The proxy's data plane: its child process named relay-<hash> (None: a proxy
    without one, e.g. an older tree's, measured for comparison)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        for child in f.read().split():
            with open(f"/proc/{child}/comm") as c:
                if c.read().startswith("relay-"):
                    return int(child)
    return None


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and all its descendants (the proxy: its Python control
    plane, its relay and the daemon it started)."""
    total = _cpu_seconds(pid)
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            total += sum(_tree_cpu(int(c)) for c in f.read().split())
    return total


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of process ``pid`` (or its thread ``tid``) so far (the stat
    file's fields 14, 15)."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def page_cache_rate(folder: str, seconds: float = 0.5) -> float:
    """Bytes/s this machine writes into new page-cache pages of a file in ``folder`` (where
    the captures go), 128 KiB per write() as the relay's writer does: the ceiling of the
    whole-reply READs through the proxy."""
    path = os.path.join(folder, "page-cache-probe")
    block = os.urandom(READ_SIZE)
    done = 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while time.perf_counter() - t0 < seconds:
            done += os.write(fd, block)
    finally:
        os.close(fd)
        os.unlink(path)
    return done / (time.perf_counter() - t0)


def disk_rate(folder: str, seconds: float = 0.5) -> float | None:
    """Bytes/s the device under ``folder`` takes with O_DIRECT (1 MiB writes, the page
    cache bypassed): what a recorder of whole replies can keep up once the dirty page
    cache is full. None where O_DIRECT is refused (a memory file system: no disk)."""
    import mmap

    path = os.path.join(folder, "disk-probe")
    buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT wants
    buf.write(os.urandom(1 << 20))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    except OSError:
        return None
    done = 0
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            done += os.write(fd, buf)
    except OSError:
        return None
    finally:
        os.close(fd)
        os.unlink(path)
        buf.close()
    return done / (time.perf_counter() - t0)


def dirty_limit() -> int:
    """Bytes of dirty page cache the kernel lets a writer build up before it makes the
    writer wait for the disk (vm.dirty_bytes, else vm.dirty_ratio of available memory)."""
    with open("/proc/sys/vm/dirty_bytes") as f:
        limit = int(f.read())
    if limit:
        return limit
    with open("/proc/sys/vm/dirty_ratio") as f:
        ratio = int(f.read())
    with open("/proc/meminfo") as f:
        avail = next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable:"))
    return avail * 1024 * ratio // 100


def measure(kind: str, inst: daemons.Installation, share: str, scratch: str, seconds: float,
            rounds: int, capture_dir: str
            ) -> tuple[dict[str, tuple[float, float, list[float]]], dict[str, int], float,
                       dict[str, list[float]]]:
    """{figure: (median direct rate, median proxied rate, ratios)}, the full capture's
    contents, the proxy's CPU microseconds per request (whole records), and for the
    whole-reply READs per side (direct, proxy) [CPU seconds of the client process plus
    the daemon (direct) or the proxy with its relay and daemon, wall seconds, bytes]."""
    slice_s = seconds / rounds
    direct_t = VhostUserTransport.spawn(inst, share, mode="interrupt", memory_size=64 << 20)
    full = cut = None
    try:
        direct = Client(direct_t)
        direct.init()
        full = Proxied(kind, share, scratch, "full", capture_dir=capture_dir)
        cut = Proxied(kind, share, scratch, "cut", ("--snaplen", "256"), capture_dir)
        work = {"direct": batches(direct), "full": batches(full.client),
                "cut": batches(cut.client)}
        out = {}
        cpu_use: dict[str, list[float]] = {}  # READ x16 per side: CPU s, wall s, bytes
        for key in (*KEYS, SNAP):
            workload = KEYS[2] if key == SNAP else key
            name = "cut" if key == SNAP else "full"
            via = cut if key == SNAP else full
            sides = {"direct": work["direct"][workload], "proxy": work[name][workload]}
            for b in sides.values():
                b()  # warm up
            rates: dict[str, list[float]] = {"direct": [], "proxy": []}
            trees = {"direct": direct_t.daemon.pid if direct_t.daemon else None,
                     "proxy": via.proc.pid}
            for i in range(rounds):
                order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
                for side in order:
                    if side == "proxy":
                        cpu0, writer0 = via.cpu_now(), via.writer_cpu()
                    tree = trees[side]
                    busy0 = _self_cpu() + (_tree_cpu(tree) if tree else 0.0)
                    t0 = time.perf_counter()
                    rate = _timed(slice_s, sides[side])
                    wall = time.perf_counter() - t0
                    busy = _self_cpu() + (_tree_cpu(tree) if tree else 0.0) - busy0
                    if key == KEYS[2]:
                        acc = cpu_use.setdefault(side, [0.0, 0.0, 0.0, 0.0])
                        acc[0] += busy
                        acc[1] += wall
                        acc[2] += rate * wall
                        if side == "proxy":
                            acc[3] += via.writer_cpu() - writer0
                    rates[side].append(rate)
                    if side == "proxy" and via is full:
                        via.cpu += via.cpu_now() - cpu0
                        via.requests += round(rate * slice_s / (
                            READ_SIZE if workload == KEYS[2] else 1))
            ratios = [p / d for p, d in zip(rates["proxy"], rates["direct"], strict=True)]
            out[key] = (statistics.median(rates["direct"]), statistics.median(rates["proxy"]),
                        ratios)
        cpu_us = full.cpu / max(1, full.requests) * 1e6
        kinds = full.close()
        full = None
        cut.close()
        cut = None
        return out, kinds, cpu_us, cpu_use
    finally:
        direct_t.close()
        for p in (full, cut):
            if p is not None and p.proc.poll() is None:
                p.proc.kill()  # by PID
                p.proc.wait()


def cpu_bound(use: dict[str, list[float]], cache_rate: float, cpus: int) -> str:
    """What the CPU time says about READ x16 with whole replies recorded. Direct, the
    client and the daemon spend D CPU seconds per byte and keep U CPUs busy; a recorder of
    whole replies must also copy every byte into the capture's page cache once, at least
    1/cache_rate seconds per byte. With ``cpus`` CPUs no recorder, however built, moves
    more than cpus / (D + 1/cache_rate) bytes/s; the proxy's own CPU per byte P gives its
    bound cpus / P the same way. The relay's writer thread's own CPU per byte (W: its
    copy into the capture's page cache as the recording runs) is printed beside the
    probe's copy: where W is several times 1/cache_rate, the capture's new pages cost more
    than the probe's (the probe writes into pages the kernel freed a moment before; a
    growing capture takes pages nobody touched for a while, which on a VM whose free
    memory goes back to the host must first be backed again). A recorder that paid W
    per byte and nothing else, on every CPU at once, stays below cpus / (D + W)."""
    (dc, dw, db, _), (pc, pw, pb, wc) = use["direct"], use["proxy"]
    d_rate, d_per, p_per, w_per = db / dw, dc / db, pc / pb, wc / pb
    best = cpus / (d_per + 1 / cache_rate) / d_rate
    line = (f"  READ x16 CPU: direct {d_per * 1e9:.2f} CPU-ms per MB keeping "
            f"{dc / dw:.2f} of {cpus} CPUs busy; via proxy {p_per * 1e9:.2f} CPU-ms "
            f"per MB ({pc / pw:.2f} CPUs busy); one copy into the page cache "
            f"{1e9 / cache_rate:.2f} CPU-ms per MB (probe)")
    if not w_per:  # a proxy without a relay writer thread (an older tree's)
        return (f"{line}. Bounds on {cpus} CPUs: any whole-reply recorder <= {best:.2f}x "
                f"direct, this proxy's CPU per byte <= {cpus / p_per / d_rate:.2f}x")
    return (f"{line}, the relay's writer {w_per * 1e9:.2f} ({w_per * cache_rate:.1f}x the "
            f"probe; {wc / pw:.2f} CPU busy). Bounds on {cpus} CPUs: any whole-reply "
            f"recorder <= {best:.2f}x direct ({cpus / (d_per + w_per) / d_rate:.2f}x paying "
            f"what the writer's pages cost), this proxy's CPU per byte <= "
            f"{cpus / p_per / d_rate:.2f}x, its writer alone <= {1 / w_per / d_rate:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0,
                    help="per figure and connection, in all (default 2)")
    ap.add_argument("--rounds", type=int, default=10,
                    help="slices per figure and connection (default 10)")
    ap.add_argument("--daemon", choices=("c", "rust"), action="append",
                    help="daemon(s) to measure (default both)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="N times the rounds (and the seconds): steadier medians")
    ap.add_argument("--capture-dir", default=None,
                    help="where the captures go (default: a folder in the temp dir; e.g. "
                         "/dev/shm to see what the page cache of a disk costs)")
    args = ap.parse_args()
    rounds = args.rounds * args.repeat
    seconds = args.seconds * args.repeat
    for kind in args.daemon or ["c", "rust"]:
        inst = daemons.install(kind)
        scratch = tempfile.mkdtemp(prefix="fuseproto-bench-proxy-")
        load0 = os.getloadavg()[0]
        try:
            share = os.path.join(scratch, "share")
            os.mkdir(share)
            with open(os.path.join(share, "data"), "wb") as f:
                f.write(os.urandom(1 << 20) * (FILE_SIZE >> 20))
            captures = args.capture_dir or scratch
            cache0 = page_cache_rate(captures)
            figures, kinds, cpu_us, cpu_use = measure(kind, inst, share, scratch, seconds, rounds,
                                             captures)
            cache1 = page_cache_rate(captures)
            disk = disk_rate(captures)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"{kind} virtiofsd {inst.version} (mode=interrupt, {rounds} interleaved rounds, "
              f"{seconds / rounds:g} s slices; medians, ratio spread = middle half; captures "
              f"in {args.capture_dir or 'the temp dir'})")
        print(f"  {'':<16}{'direct':>14}{'via proxy':>14}{'ratio':>8}  {'spread':<13} target")
        for k in (*KEYS, SNAP):
            d, p, ratios = figures[k]
            unit, scale = ("MB/s", 1e-6) if k in (KEYS[2], SNAP) else ("/s", 1.0)
            ratio = statistics.median(ratios)
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratio] * 3
            target = TARGETS.get(k)
            verdict = "" if target is None else (
                f">= {target}x {'ok' if ratio >= target else 'MISSED'}")
            print(f"  {k:<16}{d * scale:>10.0f}{unit:<4}{p * scale:>10.0f}"
                  f"{unit:<4}{ratio:>7.2f}x  {q[0]:.2f}-{q[2]:.2f}x    {verdict}")
        d1, p1, _ = figures["getattr x1"]
        added = (1 / p1 - 1 / d1) * 1e6
        print(f"  per request (getattr x1): direct {1e6 / d1:.1f} us, via proxy {1e6 / p1:.1f} "
              f"us: the proxy adds {added:.1f} us")
        print(f"  capture (whole records): {kinds.get('request', 0)} requests, "
              f"{kinds.get('reply', 0)} replies, {kinds.get('annotation', 0)} annotations, "
              f"{kinds.get('errors', 0)} decode/protocol errors; the proxy's CPU time (Python "
              f"+ relay) {cpu_us:.0f} us per request (all three workloads)")
        d, p, ratios = figures[KEYS[2]]
        print(f"  READ x16 whole replies: {statistics.median(ratios):.2f}x direct (target "
              f"0.7x); the capture's page cache took {cache0 * 1e-6:.0f} / {cache1 * 1e-6:.0f}"
              f" MB/s (before / after) = {min(cache0, cache1) / d:.2f}-"
              f"{max(cache0, cache1) / d:.2f}x the direct READ rate ({d * 1e-6:.0f} MB/s)")
        print(cpu_bound(cpu_use, min(cache0, cache1), os.cpu_count() or 1))
        if disk is None:
            print("  sustained: the captures go to a memory file system (no disk behind it)")
        else:
            limit = dirty_limit()
            print(f"  sustained: the captures' disk takes {disk * 1e-6:.0f} MB/s (O_DIRECT) = "
                  f"{disk / d:.2f}x the direct READ rate; a whole-reply recording at 0.7x "
                  f"({0.7 * d * 1e-6:.0f} MB/s) fills the {limit >> 20} MiB dirty limit in "
                  f"{limit / max(1.0, 0.7 * d - disk):.0f} s, then runs at the disk's rate")
        print(f"  machine load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
