"""The live single-request fuzzer's rate against issue 11's goal (>= 1,000 requests/s per
daemon kind), the C and the Rust daemon side by side in one run.

Each round runs, for each daemon kind, :func:`~fuseproto.fuzz.virtiofsd.fuzz_daemon`
for ``--seconds`` as the campaign runs it (warm spares, muting of known findings:
:mod:`fuseproto.fuzz.mute`), and with ``--control`` also with ``mute=False`` (every
mutant sent: the baseline the muting is measured against, in the same round). Per run:

* requests/s (wall clock; and over the run's second half alone: the first seconds are
  the muting's learning, a daemon restart per few dozen requests, a campaign's
  minutes are mostly the second kind) and requests per CPU second (this process plus every daemon
  it started and reaped: on a shared machine the wall clock moves with everyone's load;
  CPU seconds much less);
* panics (Rust worker panics: outcome classes ``...:panic``), restarts (daemons started
  after the first) and mutants skipped, each per 1,000 requests sent;
* the load average (1 minute) before and after.

Run: ``.venv/bin/python benchmarks/bench_live_rate.py [--seconds S] [--rounds N]
[--daemons c,rust] [--control]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

from fuseproto import daemons
from fuseproto.fuzz import virtiofsd
from fuseproto.fuzz.findings import FindingStore

GOAL = 1_000.0


def _cpu() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _load() -> float:
    return os.getloadavg()[0]


def one(kind: str, seconds: float, seed: int, mute: bool) -> dict[str, float]:
    inst = daemons.resolve(kind)
    load0, cpu0, t0 = _load(), _cpu(), time.perf_counter()
    half = t0 + seconds / 2
    late = [0]

    def on_send(_h: object, _data: bytes) -> None:  # requests sent in the second half
        if time.perf_counter() >= half:
            late[0] += 1

    with tempfile.TemporaryDirectory() as tmp:
        st = virtiofsd.fuzz_daemon(inst, seconds=seconds, store=FindingStore(tmp), seed=seed,
                                   mute=mute, on_send=on_send)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    n = max(1, st.requests)
    panics = sum(c for cls, c in st.classes.items() if cls.endswith(":panic"))
    return {"rate": st.requests / st.seconds,
            "late": late[0] / max(1e-9, time.perf_counter() - half), "per_cpu": st.requests / cpu if cpu else 0.0,
            "cpu_share": cpu / wall, "panics": 1000 * panics / n,
            "restarts": 1000 * (st.starts - 1) / n, "skipped": 1000 * st.skipped / n,
            "requests": st.requests, "findings": len(st.findings),
            "load": (load0 + _load()) / 2}


def _row(label: str, r: dict[str, float]) -> str:
    return (f"  {label:<16} {r['rate']:>7,.0f} req/s ({r['rate'] / GOAL:4.2f}x goal), "
            f"2nd half {r['late']:>6,.0f}  "
            f"{r['per_cpu']:>7,.0f} req/CPU-s  CPU {r['cpu_share']:4.2f}  "
            f"panics {r['panics']:5.1f}  restarts {r['restarts']:5.1f}  "
            f"skipped {r['skipped']:6.0f} /1000 req  {r['findings']:.0f} findings  "
            f"load {r['load']:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--daemons", default="c,rust")
    ap.add_argument("--control", action="store_true",
                    help="also run with mute=False (every mutant sent) each round")
    a = ap.parse_args()
    kinds = [k for k in a.daemons.split(",") if daemons.find(k) is not None]
    modes = [("muted", True)] + ([("unmuted", False)] if a.control else [])
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    print(f"live fuzz rate, {a.seconds:g} s per run, {a.rounds} rounds, goal "
          f"{GOAL:,.0f} req/s; load {_load():.1f} at start")
    for rnd in range(a.rounds):
        print(f"round {rnd + 1}")
        for kind in kinds:
            for mode, mute in modes:
                r = one(kind, a.seconds, seed=5 + rnd, mute=mute)
                results.setdefault((kind, mode), []).append(r)
                print(_row(f"{kind} {mode}", r), flush=True)
    print("medians")
    for (kind, mode), rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        line = _row(f"{kind} {mode}", med)
        if mode == "muted" and (kind, "unmuted") in results:
            base = statistics.median(r["rate"] for r in results[(kind, "unmuted")])
            line += f"  {med['rate'] / base:4.2f}x unmuted"
        print(line)
    if ("c", "muted") in results and ("rust", "muted") in results:
        c = statistics.median(r["rate"] for r in results[("c", "muted")])
        rust = statistics.median(r["rate"] for r in results[("rust", "muted")])
        print(f"rust / c: {rust / c:.2f}x (wall clock)")
    print(f"load {_load():.1f} at end")


if __name__ == "__main__":
    main()
