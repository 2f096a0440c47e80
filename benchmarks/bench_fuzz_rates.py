"""The fuzz targets' rates against issue 11's goals, each beside baselines measured in the
same run (on a shared machine the absolute numbers move with the load; the ratios are
what to compare).

Goals: ``wire_decode`` >= 10,000 inputs/s, ``session`` >= 2,000, the live single-request
target >= 1,000 requests/s per daemon kind (``dax``: benchmarks/bench_dax_target.py).

In-process (``wire_decode``, ``session``), on one fixed list of inputs (the seeds and
structure-aware mutants of them, fixed seed):

* ``floor`` -- the code under test alone on those inputs: the decoders
  (``decode_request`` / ``decode_reply`` / ``decode_notification``) for wire, a
  ``Session`` fed every record for session; no oracle. What no oracle can go below.
* ``oracle full`` -- the oracle with the construct differential on every body
  (``FUSEPROTO_FUZZ_DIFF_EVERY=1``: what the target did before);
* ``oracle`` -- the oracle as it runs (the differential on every new body shape and one
  body in :data:`~fuseproto.fuzz.oracles.DIFF_EVERY` of the others);
* ``engine full`` / ``engine`` -- the in-process fuzz loop (:func:`~fuseproto.fuzz.engine.
  run_loop`: mutation, oracle, corpus) for the same number of inputs, both ways;
* ``atheris full`` / ``atheris`` -- ``fuzz/<target>_fuzzer.py`` under libFuzzer for a few
  seconds each (``average_exec_per_sec``; the code under test instrumented), and the
  executions per CPU second of the harness (its CPU time less a ``-runs=0`` start-up):
  what a quiet machine would show when other load stretches the wall clock.

Live (``c``, ``rust``; each skipped when its daemon is not installed):

* ``no restarts`` -- the harness sending the read-only seed requests (LOOKUP, GETATTR,
  READ, READDIR, STATFS, ...) round and round to one daemon (setup done): the
  per-request cost with nothing to restart;
* ``fuzz, restarts in line`` -- :func:`~fuseproto.fuzz.virtiofsd.fuzz_daemon` with
  ``spare=False``: every crash, exit or hang waits for a fresh daemon;
* ``fuzz, warm spare`` -- the same loop as it runs (``spare=True``, :mod:`fuseproto.fuzz.
  spare`): the next daemon is made in the background.

Run: ``.venv/bin/python benchmarks/bench_fuzz_rates.py [--inputs N] [--atheris S] [--live
S] [--daemons c,rust] [--seeds 3 | 1,2,3,4,5]`` (``--atheris 0`` / ``--live 0`` skip those
parts; ``--seeds``: libFuzzer's ``-seed`` per atheris run, each seed's rate then the mean,
with the load average beside each: a run's rate depends on the path its seed takes through
the corpus, e.g. how many long READDIR replies it grows).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fuseproto.errors import DecodeError, ProtocolError
from fuseproto.fuzz import campaign, engine, inputs, oracles, registry
from fuseproto.fuzz.findings import FindingStore
from fuseproto.session import Session
from fuseproto.wire import codec, structs
from fuseproto.wire.constants import fuse_opcode

GOALS = {"wire_decode": 10_000.0, "session": 2_000.0, "live": 1_000.0}
_IN = structs.FAST["fuse_in_header"]
_O = fuse_opcode
READ_ONLY = frozenset(int(o) for o in (
    _O.FUSE_LOOKUP, _O.FUSE_GETATTR, _O.FUSE_READLINK, _O.FUSE_READ, _O.FUSE_STATFS,
    _O.FUSE_GETXATTR, _O.FUSE_LISTXATTR, _O.FUSE_ACCESS, _O.FUSE_READDIR,
    _O.FUSE_READDIRPLUS, _O.FUSE_LSEEK, _O.FUSE_STATX))


def fuzz_inputs(target: Any, n: int, seed: int = 1) -> list[bytes]:
    """The seeds, then structure-aware mutants of the seeds and of earlier mutants."""
    rng = random.Random(seed)
    corpus = [d for _name, d in target.corpus()]
    out = list(corpus)
    while len(out) < n:
        d = target.mutate(rng.choice(corpus), 1 << 14, rng)
        out.append(d)
        if rng.random() < 0.2:
            corpus.append(d)
    return out[:n]


def wire_floor(data: bytes) -> None:
    w = inputs.parse_wire_input(data)
    if w is None:
        return
    flags = oracles.SETXATTR_EXT if w.setxattr_ext else 0
    try:
        if w.kind == inputs.WIRE_REQUEST:
            codec.decode_request(w.message, w.minor, flags=flags)
        elif w.kind == inputs.WIRE_REPLY:
            codec.decode_reply(w.message, w.opcode, w.minor)
        elif w.kind == inputs.WIRE_NOTIFICATION:
            codec.decode_notification(w.message)
        else:
            req: Any = w.opcode
            try:
                req = codec.decode_request(w.request, w.minor, flags=flags)
            except DecodeError:
                pass
            codec.decode_reply(w.message, req, w.minor)
    except DecodeError:
        pass


def session_floor(data: bytes) -> None:
    s = Session(max_pending=oracles.SESSION_MAX_PENDING)
    for rec in inputs.parse_session_input(data):
        try:
            if rec.is_reply:
                s.feed_reply(rec.data)
            else:
                s.feed_request(rec.data)
        except (DecodeError, ProtocolError):
            pass


def _quiet(fn: Callable[[bytes], Any]) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        try:
            fn(data)
        except Exception:  # noqa: BLE001 -- a finding counts as an input like any other
            pass
    return run


def rate(fn: Callable[[bytes], None], data: list[bytes], rounds: int) -> float:
    """Inputs/s, the best of ``rounds`` passes (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for d in data:
            fn(d)
        best = min(best, time.perf_counter() - t0)
    return len(data) / best


def engine_rate(target: Any, n: int, rounds: int) -> tuple[float, dict[str, int]]:
    seeds = tuple(target.corpus())
    best, stats = 0.0, {}
    for r in range(rounds):
        oracles.set_diff_every(oracles.DIFF_EVERY)  # a fresh process's shapes
        before = oracles.diff_stats()
        with tempfile.TemporaryDirectory() as tmp:
            st = engine.run_loop(dataclasses.replace(target, corpus=lambda: iter(seeds)),
                                 iterations=n, seed=11 + r, store=FindingStore(tmp))
        after = oracles.diff_stats()
        stats = {k: after[k] - before[k] for k in after}
        best = max(best, st.per_second)
    return best, stats


def _line(label: str, value: float, unit: str, base: float | None = None,
          goal: float | None = None, extra: str = "") -> None:
    parts = [f"  {label:<28} {value:>9,.0f} {unit}"]
    if base:
        parts.append(f"{value / base:5.2f}x floor")
    if goal:
        parts.append(f"{value / goal:5.2f}x goal")
    print("   ".join(parts) + (f"   {extra}" if extra else ""))


def in_process(name: str, n: int, rounds: int, atheris_s: int,
               seeds: tuple[int, ...] = (3,)) -> None:
    target = registry.TARGETS[name]
    goal = GOALS[name]
    data = fuzz_inputs(target, n)
    floor_fn = wire_floor if name == "wire_decode" else session_floor
    print(f"{name}: {len(data)} inputs (seeds + mutants), goal {goal:,.0f} inputs/s")
    every = oracles.DIFF_EVERY
    diff = name == "wire_decode"  # the session oracle has no construct differential
    floor = rate(floor_fn, data, rounds)
    _line("floor (code under test)", floor, "inputs/s")
    full = e_full = 0.0
    if diff:
        oracles.set_diff_every(1)
        full = rate(_quiet(target.check), data, rounds)
        e_full, _ = engine_rate(target, n, rounds)
        oracles.set_diff_every(every)
        _line("oracle full (diff every)", full, "inputs/s", floor, goal)
    sampled = rate(_quiet(target.check), data, rounds)
    e_now, st = engine_rate(target, n, rounds)
    _line(f"oracle (diff 1/{every} + shapes)" if diff else "oracle", sampled, "inputs/s",
          floor, goal, f"{sampled / full:.2f}x full" if diff else "")
    if diff:
        _line("engine full", e_full, "inputs/s", floor, goal)
        share = st.get("compared", 0) / max(1, st.get("bodies", 0))
        _line("engine", e_now, "inputs/s", floor, goal,
              f"{e_now / e_full:.2f}x engine full; construct ran on {share:.0%} of bodies")
    else:
        _line("engine", e_now, "inputs/s", floor, goal)
    if atheris_s and campaign.fuzz_dir() is not None:
        runs = [("atheris full", {"FUSEPROTO_FUZZ_DIFF_EVERY": "1"})] if diff else []
        start_cpu = None
        for label, env in (*runs, ("atheris", {})):
            if start_cpu is None:  # the harness's start-up (imports, instrumentation, seeds)
                start_cpu = _child_cpu(lambda tmp: campaign.run_atheris(
                    name, 1, Path(tmp), seed=seeds[0], extra=["-runs=0"]))[1]
            rates = []
            for seed in seeds:
                run, cpu = _child_cpu(lambda tmp, env=env, seed=seed: campaign.run_atheris(
                    name, atheris_s, Path(tmp), seed=seed, env=env))
                per_cpu = run.executions / max(1e-3, cpu - start_cpu)
                rates.append(run.exec_per_sec)
                tag = f"{label} (seed {seed})" if len(seeds) > 1 else label
                _line(tag, run.exec_per_sec, "exec/s", floor, goal,
                      f"{run.executions:,} execs, cov {run.cov}; {per_cpu:,.0f} exec per CPU-s "
                      f"({per_cpu / goal:.2f}x goal); load {_load()}")
            if len(seeds) > 1:
                _line(f"{label} (mean of {len(seeds)} seeds)", statistics.mean(rates), "exec/s",
                      floor, goal)


def _load() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def _child_cpu(start: Callable[[str], Any]) -> tuple[Any, float]:
    """``start(tmpdir)``'s result and the CPU seconds its child processes used: the
    harness's own rate on a shared machine (libFuzzer's exec/s is wall-clock time, which
    other load stretches)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        out = start(tmp)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return out, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def live(kind: str, seconds: float) -> None:
    from fuseproto import daemons
    from fuseproto.fuzz import virtiofsd
    from fuseproto.fuzz.harness import DaemonHarness

    if daemons.find(kind) is None:
        print(f"live {kind}: not installed, skipped")
        return
    inst = daemons.resolve(kind)
    print(f"live {kind}: {seconds:g} s each, goal {GOALS['live']:,.0f} requests/s")
    with DaemonHarness(inst) as h:
        # The seeds that change nothing (a repeated FORGET or RELEASE would kill the daemon
        # in the end): the per-request cost with nothing to restart.
        reqs = [r for r in h.seed_requests() if _IN.parse(r, 0)["opcode"] in READ_ONLY]
        n, t0 = 0, time.perf_counter()
        restarts = 0
        while time.perf_counter() - t0 < seconds:
            out = h.send(reqs[n % len(reqs)])
            n += 1
            if out.finding is not None:  # not expected
                h.start()
                restarts += 1
        base = n / (time.perf_counter() - t0)
    _line("no restarts (seeds)", base, "req/s", None, GOALS["live"],
          f"{restarts} restarts" if restarts else "")
    for label, spare in (("fuzz, restarts in line", False), ("fuzz, warm spare", True)):
        with tempfile.TemporaryDirectory() as tmp:
            st = virtiofsd.fuzz_daemon(inst, seconds=seconds, store=FindingStore(tmp), seed=5,
                                       spare=spare)
        per = st.requests / max(1, st.starts)
        print(f"  {label:<28} {st.per_second:>9,.0f} req/s   {st.per_second / base:5.2f}x no "
              f"restarts   {st.per_second / GOALS['live']:5.2f}x goal   {st.starts} starts "
              f"({per:.0f} requests each)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--atheris", type=int, default=10, help="seconds per atheris run; 0: skip")
    ap.add_argument("--live", type=float, default=10.0, help="seconds per live run; 0: skip")
    ap.add_argument("--daemons", default="c,rust")
    ap.add_argument("--only", default="wire_decode,session,live")
    ap.add_argument("--seeds", default="3",
                    help="libFuzzer -seed of each atheris run, comma-separated (a mean line "
                         "follows several): one seed's run is one path through the corpus")
    a = ap.parse_args()
    only = a.only.split(",")
    loads = [_load()]
    for name in ("wire_decode", "session"):
        if name in only:
            in_process(name, a.inputs, a.rounds, a.atheris,
                       tuple(int(x) for x in a.seeds.split(",")))
    if "live" in only and a.live:
        for kind in a.daemons.split(","):
            live(kind, a.live)
    loads.append(_load())
    print(f"load average (1 min) at start / end: {' / '.join(loads)}; "
          f"median {statistics.median(float(x) for x in loads):.1f}")


if __name__ == "__main__":
    main()
