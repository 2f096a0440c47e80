"""The DAX fuzz target's rate: inputs/s against the 2,000/s goal, with baselines measured
in the same run.

Garbage collection is tuned as the harness tunes it (:func:`~fuseproto.fuzz.dax_target.
tune_gc`). The inputs are what the fuzzer runs: the seeds and structure-aware mutants of them
(``dax_mutator``, fixed seed), the same list for every mode:

* ``incremental`` -- the target as it runs (:data:`~fuseproto.fuzz.dax_run.FULL_EVERY`:
  message, access and refusal checks at every step, the full state checks every
  FULL_EVERY steps, after any refusal and at the end);
* ``full`` -- every check after every step (the baseline the incremental mode replaces);
* ``unchecked`` -- the operations with no checker at all (the managers' and devices' own
  cost: what no checking scheme can go below);
* ``atheris`` -- ``fuzz/dax_fuzzer.py`` under libFuzzer for a few seconds (its
  ``average_exec_per_sec``: the instrumented rate a campaign reports), and the operations
  per input of what it kept: libFuzzer keeps and mutates longer programs than the inputs
  here (~21 operations against ~13), which is most of the gap to ``instrumented`` (the
  same instrumented process runs libFuzzer's kept inputs at about the same operations per
  second as these);
* ``instrumented`` -- the incremental mode in a process whose managers are instrumented
  as ``fuzz/dax_fuzzer.py`` instruments them (atheris, no libFuzzer): what the
  instrumentation alone costs;
* ``live`` -- ``FUSEPROTO_DAX_DEVICE=c-dax``: the same kind of inputs against the real
  daemon and window, one daemon for all of them (skipped when c-dax is not built).

Run: ``.venv/bin/python benchmarks/bench_dax_target.py [--inputs N] [--atheris SECONDS]
[--live N]``. On a shared machine the absolute numbers move with the load; the ratios
between modes of one run are what to compare.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from fuseproto.fuzz import dax_target
from fuseproto.fuzz.dax_ops import decode_program
from fuseproto.fuzz.dax_run import FULL_EVERY, run_program

GOAL = 2000.0
ROOT = Path(__file__).resolve().parents[1]


def fuzz_inputs(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    corpus = [d for _name, d in dax_target.dax_inputs()]
    out = list(corpus)
    while len(out) < n:
        d = dax_target.dax_mutator(rng.choice(corpus), 4096, rng)
        out.append(d)
        if rng.random() < 0.3:
            corpus.append(d)
    return out[:n]


def _run_model(data: bytes, mode: str) -> None:
    program = decode_program(data)
    if program is None:
        return
    stage = dax_target.ModelStage(program)
    try:
        run_program(program, stage, full_every=1 if mode == "full" else FULL_EVERY,
                    checked=mode != "unchecked")
    except AssertionError:
        pass  # a finding (none expected on clean managers): counted like any input


def rates(inputs: list[bytes], mode: str, repeat: int = 2) -> tuple[float, float]:
    """(inputs per wall-clock second, inputs per CPU second of this process), best of
    ``repeat``: on a loaded machine the CPU figure is what a quiet one would show."""
    best = best_cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        for d in inputs:
            _run_model(d, mode)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return len(inputs) / best, len(inputs) / max(best_cpu, 1e-9)


def rate(inputs: list[bytes], mode: str, repeat: int = 2) -> float:
    return rates(inputs, mode, repeat)[0]


class AtherisRun(NamedTuple):
    stderr: str
    cpu: float  # CPU seconds of the harness
    ops: float  # operations per input of the corpus libFuzzer kept (0: none kept)


def _atheris(*flags: str) -> AtherisRun:
    """libFuzzer's report of ``fuzz/dax_fuzzer.py`` run with ``flags``, the CPU seconds it
    used, and the size of the inputs it kept (operations per input)."""
    harness = ROOT / "fuzz" / "dax_fuzzer.py"
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.run(
            [sys.executable, str(harness), *flags, "-seed=1", "-print_final_stats=1",
             f"-dict={ROOT / 'fuzz' / 'dax.dict'}", work, str(ROOT / "corpus" / "dax")],
            capture_output=True, text=True, timeout=600)
        kept = [decode_program(p.read_bytes()) for p in Path(work).iterdir()]
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    progs = [p for p in kept if p is not None]
    ops = sum(len(p.ops) for p in progs) / len(progs) if progs else 0.0
    return AtherisRun(proc.stderr, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime),
                      ops)


def _stat(out: str, name: str) -> int | None:
    m = re.search(rf"{name}:\s+(\d+)", out)
    return int(m.group(1)) if m else None


def atheris_rate(seconds: int) -> tuple[float, float, float] | None:
    """libFuzzer's average_exec_per_sec (its clock starts once Python has imported and
    instrumented the harness), the executions per CPU second of the harness less a
    ``-runs=0`` start-up (imports, instrumentation, the seeds), and the operations per
    input of what libFuzzer kept."""
    start = _atheris("-runs=0")
    run = _atheris(f"-max_total_time={seconds}")
    avg = _stat(run.stderr, "average_exec_per_sec")
    runs = _stat(run.stderr, "number_of_executed_units") or 0
    if avg is None:
        return None
    runs -= _stat(start.stderr, "number_of_executed_units") or 0  # the seeds, run at start
    return float(avg), runs / max(1e-3, run.cpu - start.cpu), run.ops


def instrumented_rate(n: int) -> float | None:
    """The incremental rate in a process that imported the harness (its instrumentation
    of the managers), without libFuzzer."""
    code = (f"import sys; sys.path[:0] = [{str(ROOT / 'fuzz')!r}, {str(ROOT / 'benchmarks')!r}]\n"
            "import dax_fuzzer  # noqa: F401 -- instruments as a campaign does\n"
            "import bench_dax_target as b\n"
            "b.dax_target.tune_gc()\n"
            f"print(b.rate(b.fuzz_inputs({n}), 'incremental'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None


def live_rate(inputs: list[bytes], device: str = "c-dax") -> float | None:
    from fuseproto.daemons import find
    from fuseproto.fuzz import dax_live

    if find(device) is None:
        return None
    try:
        dax_live.check_live(inputs[0], device)  # the daemon starts: not counted
        t0 = time.perf_counter()
        for d in inputs:
            try:
                dax_live.check_live(d, device)
            except AssertionError:
                pass
        return len(inputs) / (time.perf_counter() - t0)
    finally:
        dax_live.close_session()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=600)
    ap.add_argument("--atheris", type=int, default=10, metavar="SECONDS",
                    help="seconds of the atheris harness (0: skip)")
    ap.add_argument("--instrumented", type=int, default=1, metavar="0|1",
                    help="measure the incremental mode with the harness's instrumentation")
    ap.add_argument("--live", type=int, default=60, metavar="N",
                    help="inputs against c-dax (0: skip)")
    args = ap.parse_args()
    dax_target.tune_gc()  # as the atheris harness runs (every mode below alike)
    inputs = fuzz_inputs(args.inputs)
    ops = sum(len(p.ops) for p in map(decode_program, inputs) if p is not None)
    print(f"{len(inputs)} inputs (seeds + mutants), {ops / len(inputs):.1f} operations each "
          f"on average; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    got = {m: rates(inputs, m) for m in ("unchecked", "incremental", "full")}
    inc = got["incremental"][0]
    for mode, (r, per_cpu) in got.items():
        print(f"  {mode:12s} {r:8.0f} inputs/s   {r / GOAL:5.2f}x the goal   "
              f"{r / inc:5.2f}x incremental   {per_cpu:8.0f} per CPU second")
    print(f"incremental vs full checks: {inc / got['full'][0]:.2f}x; the checks cost "
          f"{got['unchecked'][0] / inc:.2f}x the operations alone")
    if args.instrumented:
        ir = instrumented_rate(args.inputs) or 0.0
        print(f"  {'instrumented':12s} {ir:8.0f} inputs/s   {ir / GOAL:5.2f}x the goal   "
              f"{ir / inc:5.2f}x incremental (atheris-instrumented managers, "
              "no libFuzzer)")
    if args.atheris:
        a, a_cpu, a_ops = atheris_rate(args.atheris) or (0.0, 0.0, 0.0)
        print(f"  {'atheris':12s} {a:8.0f} inputs/s   {a / GOAL:5.2f}x the goal   "
              f"{a_cpu:8.0f} per CPU second less start-up (instrumented managers, "
              f"libFuzzer, {args.atheris} s)")
        print(f"  {'':12s} the inputs libFuzzer kept: {a_ops:.1f} operations each (here: "
              f"{ops / len(inputs):.1f}): its inputs are longer, not its executions slower")
    if args.live:
        lr = live_rate(fuzz_inputs(args.live, seed=2))
        if lr is None:
            print("  live         skipped (c-dax not built: fuseproto daemons build c-dax)")
        else:
            print(f"  {'live c-dax':12s} {lr:8.1f} inputs/s   {lr / inc:5.3f}x incremental "
                  f"(one daemon, real window, backend record checked per input)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
