"""Time to catch: how fast the in-process fuzz targets find each realistic bug variant.

For every mutant of ``tests/fuzz_mutants.py`` (a plausible mistake in the codec, the
session, the OSv/Linux DAX managers or the model window device) and each of several
seeds, the mutant's target runs through the in-process engine (the campaign's loop) with
the mutant planted until its first finding, or the cap. Reported per mutant: seeds that
caught it, inputs and seconds to catch (median and worst; a miss counts as the cap and
is marked ``>``), and the median seconds as a share of the clean baseline's time for the
same cap.

Baseline, measured in the same run: each target on the unmutated code, same seeds, the
cap's inputs: findings (must be 0) and inputs/s.

Run: ``.venv/bin/python benchmarks/bench_time_to_catch.py [--seeds N] [--quick]
[--only NAME ...]``. Timings on a shared machine are noisy; inputs are exact for a seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzz_mutants  # noqa: E402

from fuseproto.fuzz import engine, registry  # noqa: E402
from fuseproto.fuzz.findings import FindingStore  # noqa: E402

CAPS = {"wire_decode": 30000, "session": 20000, "dax": 4000}
QUICK_CAPS = {"wire_decode": 10000, "session": 4000, "dax": 2500}


def baseline(target: str, seeds: list[int], cap: int) -> dict:
    """The unmutated target: findings and inputs/s over the seeds, ``cap`` inputs each."""
    t = registry.TARGETS[target]
    corpus = tuple(t.corpus())
    frozen = dataclasses.replace(t, corpus=lambda: iter(corpus))
    n = secs = 0.0
    findings = 0
    for seed in seeds:
        with tempfile.TemporaryDirectory() as d:
            st = engine.run_loop(frozen, iterations=cap, seed=seed, store=FindingStore(d))
        n += st.iterations
        secs += st.seconds
        findings += len(st.findings)
    return {"target": target, "inputs": int(n), "seconds": secs, "per_s": n / secs,
            "findings": findings, "seconds_per_cap": secs / len(seeds)}


class Miss(float):
    """A hunt that gave up: sorts above every catch; ``ran`` inputs / seconds were spent."""

    def __new__(cls, ran: float) -> Miss:
        m = super().__new__(cls, float("inf"))
        m.ran = ran
        return m


def hunt_all(name: str, seeds: list[int], cap: int, max_seconds: float) -> dict:
    inputs: list[float] = []
    secs: list[float] = []
    caught, sigs = 0, set()
    for seed in seeds:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.monotonic()
            st = fuzz_mutants.hunt(name, seed=seed, cap=cap, store_dir=d, seconds=max_seconds)
            elapsed = time.monotonic() - t0
        if st.findings:
            caught += 1
            sigs.add(st.findings[0].signature)
            inputs.append(st.iterations)
            secs.append(elapsed)
        else:
            inputs.append(Miss(st.iterations))
            secs.append(Miss(elapsed))
    return {"name": name, "caught": caught, "inputs": inputs, "seconds": secs,
            "signatures": sorted(sigs)}


def _median(values: list[float]) -> float:
    return statistics.median_high(values)


def _fmt(v: float, values: list[float], digits: int = 0) -> str:
    """``v``, or for a miss ``>x`` with x the least any miss of ``values`` ran."""
    if isinstance(v, Miss):
        return f">{min(m.ran for m in values if isinstance(m, Miss)):.{digits}f}"
    return f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--quick", action="store_true", help="the test's budgets as caps")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="give up one hunt after this long (counted as a miss)")
    ap.add_argument("--only", nargs="*", help="mutant names")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the clean runs (re-measuring a few mutants)")
    args = ap.parse_args()
    caps = QUICK_CAPS if args.quick else CAPS
    seeds = list(range(args.seeds))
    names = args.only or list(fuzz_mutants.MUTANTS)
    targets = sorted({fuzz_mutants.MUTANTS[n].target for n in names})

    print(f"seeds {seeds}; caps {caps}; one hunt gives up after {args.max_seconds:.0f} s")
    if not args.no_baseline:
        print("\nbaseline: the unmutated targets, same seeds, cap inputs each")
        print(f"{'target':12s} {'inputs':>8s} {'seconds':>8s} {'inputs/s':>9s} "
              f"{'findings':>9s}")
    base = {}
    for t in [] if args.no_baseline else targets:
        b = base[t] = baseline(t, seeds, caps[t])
        print(f"{t:12s} {b['inputs']:8d} {b['seconds']:8.1f} {b['per_s']:9.0f} "
              f"{b['findings']:9d}")

    print("\ntime to catch (median / worst over the seeds; '>x': not caught, the least a "
          "missing hunt ran before the cap or the time limit)")
    head = (f"{'mutant':36s} {'target':11s} {'caught':>6s} {'inputs med':>10s} "
            f"{'worst':>7s} {'s med':>7s} {'s worst':>7s} {'med/clean':>9s}  finding")
    print(head)
    print("-" * len(head))
    rows = []
    for name in names:
        m = fuzz_mutants.MUTANTS[name]
        cap = caps[m.target]
        r = hunt_all(name, seeds, cap, args.max_seconds)
        rows.append(r)
        ins, ss = r["inputs"], r["seconds"]
        med_s = _median(ss)
        ratio = "-" if isinstance(med_s, Miss) else \
            f"{med_s / base[m.target]['seconds_per_cap']:.3f}" if m.target in base else "-"
        print(f"{name:36s} {m.target:11s} {r['caught']:>3d}/{len(seeds):<2d} "
              f"{_fmt(_median(ins), ins):>10s} {_fmt(max(ins), ins):>7s} "
              f"{_fmt(med_s, ss, 2):>7s} {_fmt(max(ss), ss, 2):>7s} {ratio:>9s}  "
              f"{', '.join(r['signatures'])[:60]}", flush=True)
    always = sum(1 for r in rows if r["caught"] == len(seeds))
    print(f"\n{always}/{len(rows)} mutants caught with every seed; "
          f"{sum(1 for r in rows if r['caught'])}/{len(rows)} with at least one; clean "
          f"baseline findings: {sum(b['findings'] for b in base.values())}")
    print("med/clean: median seconds to catch / seconds of one clean run of the cap "
          "(same target, same run)")


if __name__ == "__main__":
    main()
