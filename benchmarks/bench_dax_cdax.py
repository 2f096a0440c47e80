"""DAX through a real daemon: reads/s and hit ratio replaying a shipped trace against the
managers over ``c-dax`` (every SETUPMAPPING / REMOVEMAPPING goes to the daemon, which
maps the host file into the real window over the backend channel), beside the same
replay over the model device (``fuseproto.dax.simulator``). The decisions must be the
same (equal hit ratios and SETUPMAPPING counts); the difference in reads/s is the price
of the round trips and the mmap calls. Afterwards the backend-channel record is checked
(``check_backend_record``).

The trace's files are created sparse (their sizes only) in a temporary directory.

Run: ``.venv/bin/python benchmarks/bench_dax_cdax.py [--trace strace] [--reads N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from fuseproto.daemons import build
from fuseproto.dax import simulator, traces
from fuseproto.dax.linux import LinuxDaxManager
from fuseproto.dax.osv import OsvDaxManager
from fuseproto.dax.virtiofsd import ClientBackend, open_dax_daemon
from fuseproto.wire.constants import FUSE_ROOT_ID

MiB = 1 << 20
CHUNK = 2 * MiB
CONFIGS = {
    "osv": lambda dev, be: OsvDaxManager(dev, be, chunk_size=CHUNK),
    "osv-aggressive": lambda dev, be: OsvDaxManager(dev, be, chunk_size=CHUNK, aggressive=True),
    "linux": lambda dev, be: LinuxDaxManager(dev, be, range_shift=21),
}


def replay_live(trace: traces.Trace, config: str, window: int, shared: str,
                names: dict[int, str]) -> dict:
    live = open_dax_daemon(build("c-dax"), shared, window)
    try:
        ids = {}
        backend = ClientBackend(live.client)
        for n, name in names.items():
            entry = live.client.lookup(FUSE_ROOT_ID, name)
            ids[n] = entry.nodeid
            backend.note_size(entry.nodeid, entry.attr.size)
        fhs = {n: live.client.open(ids[n]).fh for n in {a.nodeid for a in trace.accesses}}
        mgr = CONFIGS[config](live.device, backend)
        accesses = hits = 0
        t0 = time.perf_counter()
        for a in trace.accesses:
            n, size = ids[a.nodeid], trace.files[a.nodeid]
            end = min(a.offset + a.size, size)
            if end <= a.offset:
                continue
            first_log = len(live.device.log)
            pos = a.offset
            while pos < end:
                res = mgr.read(n, pos, end - pos, fh=fhs[a.nodeid])
                if not res.data:
                    break
                pos += len(res.data)
            mapped = {c for e in live.device.log[first_log:] if e.msg.opcode == 48
                      and e.msg.nodeid == n
                      for c in range(e.msg.body.foffset // CHUNK,
                                     (e.msg.body.foffset + e.msg.body.len - 1) // CHUNK + 1)}
            for c in range(a.offset // CHUNK, (end - 1) // CHUNK + 1):
                accesses += 1
                hits += c not in mapped
        seconds = time.perf_counter() - t0
        violations = live.violations()
        return {"reads_per_s": round(len(trace.accesses) / seconds),
                "hit_ratio": round(hits / accesses, 3) if accesses else 0.0,
                "setupmapping": mgr.stats.setupmapping,
                "backend_requests": len(live.handler.events),
                "violations": len(violations)}
    finally:
        live.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="strace", choices=traces.TRACE_NAMES)
    ap.add_argument("--reads", type=int, default=0, help="only the first N reads")
    args = ap.parse_args(argv)
    trace = traces.make_trace(args.trace)
    if args.reads:
        trace.accesses = trace.accesses[: args.reads]
    window = max(2, trace.working_set // 4 // CHUNK) * CHUNK
    shared = tempfile.mkdtemp(prefix="bench-cdax-")
    try:
        names = {}
        for n in {a.nodeid for a in trace.accesses}:
            names[n] = f"f{n}"
            with open(os.path.join(shared, names[n]), "wb") as f:
                f.truncate(trace.files[n])
        print(f"trace {trace.name}: {len(trace.accesses)} reads, working set "
              f"{trace.working_set / MiB:.0f} MiB, window {window // MiB} MiB")
        print(f"{'manager':16} {'model reads/s':>14} {'model hit':>10} "
              f"{'c-dax reads/s':>14} {'c-dax hit':>10} {'SETUPMAPPING':>13} {'violations':>10}")
        for config in CONFIGS:
            opts = {"aggressive": True} if config == "osv-aggressive" else None
            model = simulator.simulate(trace, config.split("-")[0], window, chunk=CHUNK,
                                       options=opts)
            live = replay_live(trace, config, window, shared, names)
            print(f"{config:16} {model.reads_per_second:14.0f} {model.hit_ratio:10.3f} "
                  f"{live['reads_per_s']:14d} {live['hit_ratio']:10.3f} "
                  f"{live['setupmapping']:6d}/{model.setupmapping:<6d} {live['violations']:10d}")
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
